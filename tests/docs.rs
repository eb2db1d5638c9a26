//! The docs are a contract: the policy fields, webhook events, command lines and flags that README.md and
//! docs/*.md show are read at test time and checked against the parser, `WEBHOOK_EVENTS` and the CLI.
//!
//! Nothing here copies a list from the code or the docs: the docs' tables are parsed, the parser is asked
//! which fields it accepts (by probing each object with an unknown field and reading the `allowed:` list
//! of its error), and clap is asked which flags exist. A failure names the file, the line and the drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use freezeframe::cli::Cli;
use freezeframe::policy::raw::POLICY_SET_FIELDS;
use freezeframe::policy::{WEBHOOK_EVENTS, parse_str};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A markdown file: its path relative to the repository and its text.
struct Doc {
    path: String,
    text: String,
}

fn read(rel: &str) -> Doc {
    let text = std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Doc {
        path: rel.to_string(),
        text,
    }
}

/// README.md and every docs/*.md, in a stable order.
fn docs() -> Vec<Doc> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    names.sort();
    std::iter::once("README.md".to_string())
        .chain(names)
        .map(|n| read(&n))
        .collect()
}

fn assert_no_findings(what: &str, findings: &[String]) {
    assert!(findings.is_empty(), "{what}:\n  {}", findings.join("\n  "));
}

// ---------------------------------------------------------------------------------------------------
// Markdown: fenced blocks, tables, code spans.

/// A fenced code block; `start` is the line number (1-based) of its first content line.
struct Block {
    lang: String,
    start: usize,
    lines: Vec<String>,
}

fn fenced_blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("```") {
            match current.take() {
                Some(b) => out.push(b),
                None => {
                    current = Some(Block {
                        lang: rest.trim().to_string(),
                        start: i + 2,
                        lines: Vec::new(),
                    })
                }
            }
        } else if let Some(b) = &mut current {
            b.lines.push(line.to_string());
        }
    }
    out
}

/// The lines of a markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// A markdown table: the heading above it, the line of its header, header cells and rows (line, cells).
struct Table {
    heading: String,
    line: usize,
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

fn tables(text: &str) -> Vec<Table> {
    let lines = prose_lines(text);
    let mut out: Vec<Table> = Vec::new();
    let mut heading = String::new();
    let mut i = 0;
    while i < lines.len() {
        let (n, line) = lines[i];
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
        }
        let is_separator = |l: &str| l.starts_with('|') && l.chars().all(|c| "|-: ".contains(c));
        if line.starts_with('|') && lines.get(i + 1).is_some_and(|(_, l)| is_separator(l)) {
            let mut table = Table {
                heading: heading.clone(),
                line: n,
                header: cells(line),
                rows: Vec::new(),
            };
            i += 2;
            while let Some((n, l)) = lines.get(i).filter(|(_, l)| l.starts_with('|')) {
                table.rows.push((*n, cells(l)));
                i += 1;
            }
            out.push(table);
            continue;
        }
        i += 1;
    }
    out
}

/// The cells of a table row; `|` inside code spans or escaped as `\|` does not split.
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_string());
    // A row starts and ends with `|`: drop the empty first and last pieces.
    out.remove(0);
    out.pop();
    out
}

/// The code spans (`...`) of a piece of markdown.
fn spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

// ---------------------------------------------------------------------------------------------------
// 1. Policy fields: docs/policy.md's tables against the parser.

const POLICY_DOC: &str = "docs/policy.md";
/// A field name no object accepts: probing an object with it makes the parser list what it accepts.
const PROBE: &str = "zzNotAField";
/// Documents the policy language starts from (the section names in docs/policy.md).
const ROOTS: &[&str] = &["PolicySet", "Stork Rule"];

/// An object as documented: its fields by name.
#[derive(Debug, Default)]
struct Object {
    /// Line of the table (or row) that documents the object.
    line: usize,
    fields: BTreeMap<String, Field>,
}

#[derive(Debug)]
struct Field {
    line: usize,
    shape: Shape,
    value: Value,
}

/// How a field holds its value: one, a list of them, or a map from names to them.
#[derive(Debug, Clone, Copy)]
enum Shape {
    One,
    List,
    Map,
}

#[derive(Debug)]
enum Value {
    /// A scalar, a list of scalars or a free-form map.
    Leaf,
    /// An object documented in place (`s3.bucket`, `{name, key}`).
    Inline(Object),
    /// An object documented in its own section.
    Type(String),
    /// A plain label map or the named object type (a label map accepts any key).
    LabelMapOr(String),
}

/// The object types docs/policy.md documents, keyed by section name (the heading up to ` (`).
fn documented_types(doc: &Doc) -> BTreeMap<String, Object> {
    let field_tables: Vec<Table> = tables(&doc.text)
        .into_iter()
        .filter(|t| t.header.first().is_some_and(|h| h == "Field"))
        .collect();
    let names: BTreeSet<String> = field_tables.iter().map(type_name).collect();
    let mut types = BTreeMap::new();
    for table in &field_tables {
        let type_col = table.header.iter().position(|h| h == "Type");
        let mut object = Object {
            line: table.line,
            ..Object::default()
        };
        for (line, row) in &table.rows {
            let type_cell = type_col
                .and_then(|c| row.get(c))
                .map(String::as_str)
                .unwrap_or("");
            for name in spans(&row[0]) {
                let (shape, value) = field_value(type_cell, &names, *line);
                insert_field(&mut object, &name, *line, shape, value);
            }
        }
        types.insert(type_name(table), object);
    }
    types
}

fn type_name(table: &Table) -> String {
    table
        .heading
        .split(" (")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Insert `a.b.c`: `a` and `b` become inline objects.
fn insert_field(object: &mut Object, name: &str, line: usize, shape: Shape, value: Value) {
    match name.split_once('.') {
        None => {
            object
                .fields
                .insert(name.to_string(), Field { line, shape, value });
        }
        Some((head, rest)) => {
            let field = object.fields.entry(head.to_string()).or_insert(Field {
                line,
                shape: Shape::One,
                value: Value::Inline(Object {
                    line,
                    ..Object::default()
                }),
            });
            if let Value::Inline(inner) = &mut field.value {
                insert_field(inner, rest, line, shape, value);
            }
        }
    }
}

/// Read a Type cell: `list of Webhook`, `map name → Storage`, `` `{name, key}` ``, `label map or LabelSelector`.
fn field_value(cell: &str, types: &BTreeSet<String>, line: usize) -> (Shape, Value) {
    let shape = if cell.starts_with("list of") {
        Shape::List
    } else if cell.starts_with("map") && cell.contains('→') {
        Shape::Map
    } else {
        Shape::One
    };
    if let Some(inline) = spans(cell).into_iter().find(|s| s.starts_with('{')) {
        let mut object = Object {
            line,
            ..Object::default()
        };
        for name in inline.trim_matches(['{', '}']).split(',') {
            insert_field(&mut object, name.trim(), line, Shape::One, Value::Leaf);
        }
        return (shape, Value::Inline(object));
    }
    match types.iter().find(|t| contains_word(cell, t)) {
        Some(t) if cell.contains("label map or") => (shape, Value::LabelMapOr(t.clone())),
        Some(t) => (shape, Value::Type(t.clone())),
        None => (shape, Value::Leaf),
    }
}

/// One step from a document's root to an object.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Item,
    Entry,
}

fn describe(root: &str, steps: &[Step]) -> String {
    let mut s = root.to_string();
    for step in steps {
        match step {
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Item => s.push_str("[0]"),
            Step::Entry => s.push_str(".<name>"),
        }
    }
    s
}

/// The fields the parser accepts in the object at `steps` below `root`: a document holding only the path
/// and the probe field is parsed, and its `unknown field` problem lists what is allowed there.
fn accepted_fields(root: &str, steps: &[Step]) -> Result<BTreeSet<String>, String> {
    let mut value = serde_json::json!({ PROBE: 1 });
    for step in steps.iter().rev() {
        value = match step {
            Step::Key(k) => serde_json::json!({ k: value }),
            Step::Item => serde_json::json!([value]),
            Step::Entry => serde_json::json!({ "probe": value }),
        };
    }
    let (api_version, kind) = match root {
        "Stork Rule" => ("stork.libopenstorage.org/v1alpha1", "Rule"),
        _ => ("freezeframe.dev/v1alpha1", "PolicySet"),
    };
    let serde_json::Value::Object(mut top) = value else {
        unreachable!("a document is a mapping")
    };
    top.entry("apiVersion").or_insert(api_version.into());
    top.entry("kind").or_insert(kind.into());
    let text = serde_yaml::to_string(&top).expect("probe document");
    let set = parse_str("probe.yaml", &text);
    let prefix = format!("unknown field `{PROBE}`");
    let problem = set
        .problems
        .iter()
        .find(|p| p.message.starts_with(&prefix))
        .ok_or_else(|| {
            format!(
                "the parser does not report `{PROBE}` as an unknown field there, so it is not an object with \
                 fixed fields; problems of the probe:\n{text}{:#?}",
                set.problems
            )
        })?;
    let allowed = problem
        .message
        .split_once("allowed: ")
        .map(|(_, list)| spans(list))
        .unwrap_or_default();
    Ok(allowed.into_iter().collect())
}

struct Walk<'a> {
    types: &'a BTreeMap<String, Object>,
    reached: BTreeSet<String>,
    checked: usize,
    findings: Vec<String>,
}

impl Walk<'_> {
    fn object(&mut self, root: &str, type_name: &str, object: &Object, steps: &[Step]) {
        let at = describe(root, steps);
        match accepted_fields(root, steps) {
            Err(e) => self.findings.push(format!(
                "{POLICY_DOC}:{}: `{at}` (section {type_name}) is documented as an object: {e}",
                object.line
            )),
            Ok(accepted) => {
                self.checked += 1;
                for (name, field) in &object.fields {
                    if !accepted.contains(name) {
                        self.findings.push(format!(
                            "{POLICY_DOC}:{}: field `{name}` of {type_name} (at `{at}`) is documented but the \
                             parser rejects it; it accepts: {}",
                            field.line,
                            accepted.iter().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
                for name in accepted.iter().filter(|n| !object.fields.contains_key(*n)) {
                    self.findings.push(format!(
                        "{POLICY_DOC}:{}: the parser accepts field `{name}` at `{at}`, but section {type_name} \
                         does not document it",
                        object.line
                    ));
                }
            }
        }
        for (name, field) in &object.fields {
            let mut next = steps.to_vec();
            next.push(Step::Key(name.clone()));
            match field.shape {
                Shape::One => {}
                Shape::List => next.push(Step::Item),
                Shape::Map => next.push(Step::Entry),
            }
            match &field.value {
                Value::Leaf => {}
                Value::Inline(inner) => self.object(root, type_name, inner, &next),
                Value::Type(t) => self.typed(root, t, &next, field.line),
                // The plain label-map form accepts any key; the object form is checked where it is
                // the only form (e.g. `namespaceSelector`).
                Value::LabelMapOr(t) => {
                    self.reached.insert(t.clone());
                }
            }
        }
    }

    fn typed(&mut self, root: &str, type_name: &str, steps: &[Step], line: usize) {
        self.reached.insert(type_name.to_string());
        if steps.len() > 24 {
            self.findings.push(format!(
                "{POLICY_DOC}:{line}: section {type_name} nests itself without end"
            ));
            return;
        }
        match self.types.get(type_name) {
            Some(object) => self.object(root, type_name, object, steps),
            None => self.findings.push(format!(
                "{POLICY_DOC}:{line}: type {type_name} has no field table"
            )),
        }
    }
}

#[test]
fn given_policy_reference_when_compared_with_the_parser_then_every_field_is_documented_and_accepted() {
    let doc = read(POLICY_DOC);
    let types = documented_types(&doc);
    let mut walk = Walk {
        types: &types,
        reached: BTreeSet::new(),
        checked: 0,
        findings: Vec::new(),
    };
    for root in ROOTS {
        walk.typed(root, root, &[], 1);
    }
    for (name, object) in &types {
        if !walk.reached.contains(name) {
            walk.findings.push(format!(
                "{POLICY_DOC}:{}: section {name} is not reachable from {} through the Type columns \
                 (a field's Type must name it, as in `list of {name}`)",
                object.line,
                ROOTS.join(" or ")
            ));
        }
    }
    assert_no_findings("docs/policy.md and the policy parser disagree", &walk.findings);
    // The walk must have met every section (PolicySet, storages, ..., Retention), not a subset.
    assert!(
        walk.checked >= types.len(),
        "only {} objects checked for {} sections",
        walk.checked,
        types.len()
    );
}

#[test]
fn given_yaml_examples_in_docs_when_parsed_then_they_use_only_fields_and_events_the_parser_knows() {
    let mut findings = Vec::new();
    let mut checked = 0;
    for doc in docs() {
        for block in fenced_blocks(&doc.text).iter().filter(|b| b.lang == "yaml") {
            let text = block.lines.join("\n");
            let Ok(serde_yaml::Value::Mapping(top)) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
                findings.push(format!(
                    "{}:{}: this yaml block does not parse",
                    doc.path, block.start
                ));
                continue;
            };
            // Only fragments of a PolicySet: every top-level key is a PolicySet field.
            let is_policy = top
                .keys()
                .all(|k| k.as_str().is_some_and(|k| POLICY_SET_FIELDS.contains(&k)));
            if !is_policy {
                continue;
            }
            checked += 1;
            for p in parse_str(&doc.path, &text).problems {
                if p.message.starts_with("unknown field") || p.path.contains(".events[") {
                    let line = p.location.map_or(block.start, |l| block.start + l.line - 1);
                    findings.push(format!("{}:{line}: {}: {}", doc.path, p.path, p.message));
                }
            }
        }
    }
    assert_no_findings("policy examples in the docs use unknown names", &findings);
    assert!(
        checked > 0,
        "no PolicySet fragment found in the docs' yaml blocks"
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. Webhook events.

/// Code spans of a cell that look like event names (`backup.started`).
fn event_names(cell: &str) -> Vec<String> {
    spans(cell)
        .into_iter()
        .filter(|s| {
            s.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().all(|c| c.is_ascii_lowercase())
                    && b.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
        })
        .collect()
}

fn compare_events(place: &str, documented: &[String]) -> Vec<String> {
    let documented: BTreeSet<&str> = documented.iter().map(String::as_str).collect();
    let code: BTreeSet<&str> = WEBHOOK_EVENTS.iter().copied().collect();
    let mut findings = Vec::new();
    for e in documented.difference(&code) {
        findings.push(format!(
            "{place}: documents event `{e}`, which WEBHOOK_EVENTS does not have"
        ));
    }
    for e in code.difference(&documented) {
        findings.push(format!("{place}: does not list event `{e}` of WEBHOOK_EVENTS"));
    }
    findings
}

#[test]
fn given_webhook_event_lists_in_docs_then_they_equal_webhook_events() {
    let mut findings = Vec::new();

    let policy = read(POLICY_DOC);
    let row = tables(&policy.text)
        .into_iter()
        .filter(|t| t.heading == "Webhook")
        .flat_map(|t| t.rows)
        .find(|(_, cells)| cells[0] == "`events`");
    match row {
        Some((line, cells)) => findings.extend(compare_events(
            &format!("{POLICY_DOC}:{line} (Webhook `events`)"),
            &event_names(cells.last().expect("a meaning cell")),
        )),
        None => findings.push(format!("{POLICY_DOC}: no `events` row in the Webhook table")),
    }

    let webhooks = read("docs/webhooks.md");
    match tables(&webhooks.text)
        .into_iter()
        .find(|t| t.header.first().is_some_and(|h| h == "Event"))
    {
        Some(table) => {
            let names: Vec<String> = table.rows.iter().flat_map(|(_, c)| event_names(&c[0])).collect();
            findings.extend(compare_events(
                &format!("docs/webhooks.md:{} (Events table)", table.line),
                &names,
            ));
        }
        None => findings.push("docs/webhooks.md: no table whose first column is `Event`".into()),
    }
    assert_no_findings(
        "webhook events in the docs drifted from WEBHOOK_EVENTS",
        &findings,
    );
}

// ---------------------------------------------------------------------------------------------------
// 3. Command lines and flags.

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Op(String),
}

/// Split one shell line into words and operators (`|`, `&&`, `;`, redirections); a `#` starting a word
/// ends the line. Quotes and backslashes are honoured; expansions are left as written.
fn shell_tokens(line: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    out.push(Tok::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if chars.peek().is_some_and(|c| "\"\\$`".contains(*c)) => {
                            word.push(chars.next().expect("peeked"))
                        }
                        Some(c) => word.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '|' | '&' | ';' | '<' | '>' => {
                // `2>` is one redirection operator.
                let mut op = if in_word && word.chars().all(|c| c.is_ascii_digit()) && c == '>' {
                    in_word = false;
                    std::mem::take(&mut word)
                } else {
                    if in_word {
                        out.push(Tok::Word(std::mem::take(&mut word)));
                        in_word = false;
                    }
                    String::new()
                };
                op.push(c);
                if chars.peek() == Some(&c) || (c == '>' && chars.peek() == Some(&'&')) {
                    op.push(chars.next().expect("peeked"));
                }
                out.push(Tok::Op(op));
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(Tok::Word(word));
    }
    Ok(out)
}

/// The freezeframe argument vectors of one shell line: every command of a pipeline or list that runs
/// `freezeframe ...` or `cargo run [...] -- ...` (not `cargo run -p <other crate>`), with env prefixes and
/// redirections removed.
fn freezeframe_commands(line: &str) -> Result<Vec<Vec<String>>, String> {
    let tokens = shell_tokens(line)?;
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut redirect = false;
    for tok in tokens.into_iter().chain([Tok::Op(";".into())]) {
        match tok {
            Tok::Word(w) if redirect => {
                let _ = w;
                redirect = false;
            }
            Tok::Word(w) => words.push(w),
            Tok::Op(op) if op.contains(['<', '>']) => redirect = true,
            Tok::Op(_) => {
                let mut argv = std::mem::take(&mut words);
                let is_env = |w: &String| {
                    w.split_once('=').is_some_and(|(name, _)| {
                        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                };
                let env = argv.iter().take_while(|w| is_env(w)).count();
                argv.drain(..env);
                match argv.first().map(String::as_str) {
                    Some("freezeframe") => commands.push(argv),
                    Some("cargo")
                        if argv.get(1).is_some_and(|w| w == "run")
                            && !argv.windows(2).any(|w| w[0] == "-p" && w[1] != "freezeframe") =>
                    {
                        let at = argv
                            .iter()
                            .position(|w| w == "--")
                            .ok_or("`cargo run` without `--`")?;
                        let mut args = vec!["freezeframe".to_string()];
                        args.extend(argv.drain(at + 1..));
                        commands.push(args);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(commands)
}

/// Logical shell lines of a text: `\` continuations joined, `$ ` prompts removed; `prompt_only` keeps
/// only lines that had a prompt (for output blocks such as ```text).
fn shell_lines(lines: &[String], start: usize, prompt_only: bool) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // A line continued with `\`: where it started and the text so far.
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        let (n, mut text, body) = match current.take() {
            Some((n, text)) => (n, text, line),
            None => match line.strip_prefix("$ ") {
                Some(rest) => (start + i, String::new(), rest),
                None if prompt_only => continue,
                None => (start + i, String::new(), line),
            },
        };
        match body.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
                current = Some((n, text));
            }
            None => {
                text.push_str(body);
                out.push((n, text));
            }
        }
    }
    out.extend(current);
    out
}

/// Check every freezeframe command of `lines`; `place` formats a finding's location from a line number.
fn check_command_lines(
    lines: &[(usize, String)],
    place: &dyn Fn(usize) -> String,
    findings: &mut Vec<String>,
) -> usize {
    let mut checked = 0;
    for (n, line) in lines {
        let commands = match freezeframe_commands(line) {
            Ok(c) => c,
            Err(e) if line.contains("freezeframe ") || line.contains("cargo run") => {
                findings.push(format!(
                    "{}: cannot read `{line}` as a shell line: {e}",
                    place(*n)
                ));
                continue;
            }
            Err(_) => continue,
        };
        for argv in commands {
            checked += 1;
            if let Err(e) = Cli::try_parse_from(&argv) {
                use clap::error::ErrorKind::*;
                if !matches!(e.kind(), DisplayHelp | DisplayVersion) {
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    findings.push(format!(
                        "{}: `{}` is rejected by the CLI: {first}",
                        place(*n),
                        argv.join(" ")
                    ));
                }
            }
        }
    }
    checked
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "" | "sh" | "bash" | "shell" | "console" | "zsh")
}

#[test]
fn given_command_lines_in_readme_and_docs_when_parsed_then_the_cli_accepts_them() {
    let mut findings = Vec::new();
    let mut checked = 0;
    for doc in docs() {
        for block in fenced_blocks(&doc.text) {
            let lines = shell_lines(&block.lines, block.start, !is_shell(&block.lang));
            checked += check_command_lines(&lines, &|n| format!("{}:{n}", doc.path), &mut findings);
        }
    }
    assert_no_findings("command lines in the docs that the CLI rejects", &findings);
    assert!(
        checked >= 5,
        "only {checked} freezeframe command lines found in the docs"
    );
}

#[test]
fn given_examples_in_after_help_texts_when_parsed_then_the_cli_accepts_them() {
    let mut findings = Vec::new();
    let mut checked = 0;
    let cli = Cli::command();
    // Subcommands and the members of subcommand groups (`mover backup`), with their full names.
    let subs = cli.get_subcommands().flat_map(|sub| {
        std::iter::once((sub.get_name().to_string(), sub)).chain(
            sub.get_subcommands()
                .map(move |nested| (format!("{} {}", sub.get_name(), nested.get_name()), nested)),
        )
    });
    for (name, sub) in subs {
        for help in [sub.get_after_help(), sub.get_after_long_help()]
            .into_iter()
            .flatten()
        {
            let lines: Vec<String> = help.to_string().lines().map(str::to_string).collect();
            let lines: Vec<(usize, String)> = shell_lines(&lines, 1, false)
                .into_iter()
                .filter(|(_, l)| l.starts_with("freezeframe ") || l.starts_with("cargo run"))
                .collect();
            checked += check_command_lines(
                &lines,
                &|n| format!("`freezeframe {name} --help` (after_help line {n})"),
                &mut findings,
            );
        }
    }
    assert_no_findings("examples in --help texts that the CLI rejects", &findings);
    assert!(checked >= 3, "only {checked} examples found in after_help texts");
}

/// Every `--long` and `-s` flag of a subcommand (with aliases and `--help`).
fn flags_of(cmd: &clap::Command) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["--help", "-h"].map(String::from).into();
    for arg in cmd.get_arguments() {
        if let Some(l) = arg.get_long() {
            out.insert(format!("--{l}"));
        }
        for a in arg.get_all_aliases().unwrap_or_default() {
            out.insert(format!("--{a}"));
        }
        if let Some(s) = arg.get_short() {
            out.insert(format!("-{s}"));
        }
        for s in arg.get_all_short_aliases().unwrap_or_default() {
            out.insert(format!("-{s}"));
        }
    }
    out
}

/// Each subcommand's flags; a group of subcommands (`mover backup|restore`) counts with the flags of
/// all its members, as docs write `freezeframe mover backup --source DIR`.
fn subcommand_flags() -> BTreeMap<String, BTreeSet<String>> {
    let mut cli = Cli::command();
    cli.build();
    cli.get_subcommands()
        .map(|s| {
            let mut flags = flags_of(s);
            for nested in s.get_subcommands() {
                flags.extend(flags_of(nested));
            }
            (s.get_name().to_string(), flags)
        })
        .collect()
}

/// The flag a piece of text starts with (`--policy-file`, `-o`), without a value.
fn leading_flag(text: &str) -> Option<String> {
    let word = text.split([' ', '=', '[', ']', ',']).next()?;
    let is_long =
        word.len() > 2 && word.starts_with("--") && word[2..].starts_with(|c: char| c.is_ascii_lowercase());
    let is_short =
        word.len() == 2 && word.starts_with('-') && word[1..].starts_with(|c: char| c.is_ascii_alphabetic());
    (is_long || is_short).then(|| word.to_string())
}

/// Flags written in a usage synopsis such as `freezeframe validate [--policy-file F | --policies ns/name]`.
fn synopsis_flags(text: &str) -> Vec<String> {
    text.split([' ', '[', ']', '(', ')', '|'])
        .filter_map(leading_flag)
        .collect()
}

#[test]
fn given_flags_in_docs_prose_tables_and_synopses_then_each_exists_on_its_subcommand() {
    let flags = subcommand_flags();
    let all: BTreeSet<&String> = flags.values().flatten().collect();
    let mut findings = Vec::new();
    let mut checked = 0;
    let mut check = |place: String, sub: &str, flag: &str, findings: &mut Vec<String>| {
        checked += 1;
        match flags.get(sub) {
            Some(f) if f.contains(flag) => {}
            Some(f) => findings.push(format!(
                "{place}: `freezeframe {sub}` has no flag `{flag}` (it has: {})",
                f.iter().cloned().collect::<Vec<_>>().join(" ")
            )),
            None => findings.push(format!("{place}: `freezeframe {sub}` is not a subcommand")),
        }
    };
    for doc in docs() {
        // The subcommand a flag table belongs to: the last `freezeframe <subcommand>` written before it.
        let mut last_sub: Option<(usize, String)> = None;
        let lines = prose_lines(&doc.text);
        let tables = tables(&doc.text);
        let mut indented: Vec<(usize, String)> = Vec::new();
        for (n, line) in &lines {
            // Synopses: inline spans and indented blocks that start with `freezeframe <subcommand>`.
            let mut synopses: Vec<String> = spans(line);
            if let Some(body) = line.strip_prefix("    ") {
                match indented.last_mut() {
                    Some((m, text)) if *m + 1 == *n || body.starts_with(' ') && *m < *n => {
                        text.push(' ');
                        text.push_str(body.trim());
                        *m = *n;
                    }
                    _ => indented.push((*n, body.trim().to_string())),
                }
            }
            for span in synopses.drain(..) {
                let mut words = span.split_whitespace();
                if words.next() == Some("freezeframe")
                    && let Some(sub) = words.next().filter(|s| flags.contains_key(*s))
                {
                    last_sub = Some((*n, sub.to_string()));
                    for flag in synopsis_flags(&span) {
                        check(format!("{}:{n}", doc.path), sub, &flag, &mut findings);
                    }
                }
                // Any other span that is a flag must be a flag of some subcommand (kubectl's are
                // recognised by a `kubectl` on the same line).
                if let Some(flag) = leading_flag(&span)
                    && !line.contains("kubectl")
                    && !all.contains(&flag)
                {
                    findings.push(format!(
                        "{}:{n}: `{flag}` is not a flag of any freezeframe subcommand",
                        doc.path
                    ));
                }
            }
            for table in tables.iter().filter(|t| t.line == *n) {
                if table.header.first().is_none_or(|h| h != "Flag") {
                    continue;
                }
                let Some((_, sub)) = &last_sub else {
                    findings.push(format!(
                        "{}:{n}: flag table without a `freezeframe <subcommand>` before it",
                        doc.path
                    ));
                    continue;
                };
                for (row_line, cells) in &table.rows {
                    for flag in spans(&cells[0]).iter().filter_map(|s| leading_flag(s)) {
                        check(format!("{}:{row_line}", doc.path), sub, &flag, &mut findings);
                    }
                }
            }
            // An indented synopsis sets the subcommand for the table after it.
            if let Some((m, text)) = indented.last()
                && *m == *n
            {
                let mut words = text.split_whitespace();
                if words.next() == Some("freezeframe")
                    && let Some(sub) = words.next().filter(|s| flags.contains_key(*s))
                {
                    last_sub = Some((*m, sub.to_string()));
                }
            }
        }
        for (n, text) in indented {
            let mut words = text.split_whitespace();
            if words.next() == Some("freezeframe")
                && let Some(sub) = words.next().filter(|s| flags.contains_key(*s))
            {
                for flag in synopsis_flags(&text) {
                    check(format!("{}:{n}", doc.path), sub, &flag, &mut findings);
                }
            }
        }
    }
    assert_no_findings("flags in the docs that the CLI does not have", &findings);
    assert!(checked >= 10, "only {checked} documented flags found");
}

// ---------------------------------------------------------------------------------------------------
// 4. Example policies.

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn given_every_file_in_policies_when_validated_then_it_has_no_problem() {
    let mut files = Vec::new();
    yaml_files(&Path::new(ROOT).join("policies"), &mut files);
    files.sort();
    let mut findings = Vec::new();
    let mut validated = 0;
    for path in &files {
        let rel = path.strip_prefix(ROOT).unwrap_or(path).display().to_string();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if !text.contains("PolicySet") {
            // The demo's application manifest lives next to its policy; anything else is a stray file.
            if !rel.starts_with("policies/demo/") {
                findings.push(format!("{rel}: holds no PolicySet"));
            }
            continue;
        }
        validated += 1;
        let set = parse_str(&rel, &text);
        findings.extend(set.problems.iter().map(|p| p.to_string()));
        if set.policies.is_empty() {
            findings.push(format!("{rel}: no valid policy"));
        }
    }
    assert_no_findings("example policies that do not validate", &findings);
    assert!(
        validated >= 8,
        "only {validated} example policies found: {files:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// The readers themselves (a reader that finds nothing would make the checks above vacuous).

#[test]
fn given_shell_line_with_env_pipe_comment_and_cargo_run_then_freezeframe_argv_is_extracted() {
    let cmds = freezeframe_commands(
        "FREEZEFRAME_LOG=debug freezeframe policies -o json 2>/dev/null | jq '.a | .b' # note",
    )
    .unwrap();
    assert_eq!(cmds, [["freezeframe", "policies", "-o", "json"]]);
    let cmds = freezeframe_commands("cargo run --release -- validate --policy-file \"a b.yaml\" && echo ok")
        .unwrap();
    assert_eq!(cmds, [["freezeframe", "validate", "--policy-file", "a b.yaml"]]);
    let lines = shell_lines(
        &[
            "$ freezeframe prune \\".into(),
            "    --dry-run".into(),
            "output".into(),
        ],
        10,
        true,
    );
    assert_eq!(lines, [(10, "freezeframe prune  --dry-run".to_string())]);
}

#[test]
fn given_table_with_code_and_escaped_pipes_then_cells_split_only_on_real_separators() {
    assert_eq!(
        cells("| `a` | `x` \\| `y` | `-o json|yaml` |"),
        ["`a`", "`x` | `y`", "`-o json|yaml`"]
    );
    assert_eq!(
        synopsis_flags("freezeframe validate [--policy-file F | --policies ns/name] [-o table|json]"),
        ["--policy-file", "--policies", "-o"]
    );
}
