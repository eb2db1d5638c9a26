//! Label and field selectors parsed and matched the way apimachinery does (`labels.Parse`, `fields.ParseSelector`).
//!
//! Error messages follow the wording of the real API server so that `kubectl get -l 'bad selector'`
//! prints what users expect. The API layer wraps them into a `BadRequest` status.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// A selector that could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label selector string is malformed or contains invalid keys/values; the message is the
    /// apimachinery one (`unable to parse requirement: ...`, `found ',', expected: ...`).
    #[error("{0}")]
    Label(String),
    /// A `metav1.LabelSelector` object is malformed (unknown operator, wrong shape, invalid key/value).
    #[error("{0}")]
    LabelSelectorObject(String),
    /// A field selector term has no operator (`invalid selector: 'x'; can't understand 'x'`).
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    FieldTerm {
        /// The whole selector as given.
        selector: String,
        /// The term that could not be split into field, operator and value.
        term: String,
    },
    /// A field selector value contains a backslash escape other than `\\`, `\,`, `\=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    FieldEscape(String),
    /// A field selector value contains an unescaped `,` or `=`.
    #[error("invalid field selector: unescaped character in value: {0}")]
    FieldUnescaped(char),
}

/// Operator of one label requirement (`selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `a=b`
    Equals,
    /// `a==b`
    DoubleEquals,
    /// `a!=b` (also matches objects without the label)
    NotEquals,
    /// `a in (x,y)`
    In,
    /// `a notin (x,y)` (also matches objects without the label)
    NotIn,
    /// `a`
    Exists,
    /// `!a`
    DoesNotExist,
    /// `a>1`
    GreaterThan,
    /// `a<1`
    LessThan,
}

/// One requirement of a label selector: key, operator and (sorted, de-duplicated) values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    /// Validates like `labels.NewRequirement`: key syntax, value count for the operator, value syntax.
    pub fn new(key: &str, op: Operator, values: Vec<String>) -> Result<Self, String> {
        let mut errs = Vec::new();
        if let Some(e) = validate_label_key(key) {
            errs.push(e);
        }
        let n = values.len();
        match op {
            Operator::In | Operator::NotIn if n == 0 => errs.push(format!(
                "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                go_string_slice(&values)
            )),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if n != 1 => errs.push(format!(
                "values: Invalid value: {}: exact-match compatibility requires one single value",
                go_string_slice(&values)
            )),
            Operator::Exists | Operator::DoesNotExist if n != 0 => errs.push(format!(
                "values: Invalid value: {}: values set must be empty for exists and does not exist",
                go_string_slice(&values)
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if n != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        go_string_slice(&values)
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let msgs = label_value_errors(v);
            if !msgs.is_empty() {
                errs.push(format!(
                    "values[{i}][{key}]: Invalid value: {v:?}: {}",
                    msgs.join("; ")
                ));
            }
        }
        match errs.len() {
            0 => Ok(Requirement {
                key: key.to_string(),
                op,
                values: values.into_iter().collect(),
            }),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.op
    }

    /// The values, sorted.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(String::as_str)
    }

    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key)).and_then(Value::as_str);
        match self.op {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(have) = value.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(want) = self.values.iter().next().and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.op {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        let values = self
            .values
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(",");
        if matches!(self.op, Operator::In | Operator::NotIn) {
            write!(f, "{op}({values})")
        } else {
            write!(f, "{op}{values}")
        }
    }
}

/// A label selector: the conjunction of its requirements. No requirements selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the query-string form (`labels.Parse`): `a=b,c!=d,e in (f,g),!h,i>3`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s);
        let mut p = Parser { tokens, pos: 0 };
        let mut requirements = p.parse().map_err(SelectorError::Label)?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`),
    /// like `metav1.LabelSelectorAsSelector`. `{}` selects everything; what `null` means is up to the caller.
    pub fn from_label_selector(v: &Value) -> Result<Self, SelectorError> {
        let err = SelectorError::LabelSelectorObject;
        let obj = v
            .as_object()
            .ok_or_else(|| err(format!("label selector must be an object, got {v}")))?;
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, val) in m {
                    let val = val
                        .as_str()
                        .ok_or_else(|| err(format!("matchLabels[{k}]: value must be a string, got {val}")))?;
                    requirements
                        .push(Requirement::new(k, Operator::Equals, vec![val.to_string()]).map_err(err)?);
                }
            }
            Some(other) => return Err(err(format!("matchLabels must be an object, got {other}"))),
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for e in exprs {
                    requirements.push(expression_requirement(e).map_err(err)?);
                }
            }
            Some(other) => return Err(err(format!("matchExpressions must be a list, got {other}"))),
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Whether labels (the `metadata.labels` map of an object, `None` if absent) satisfy every requirement.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// [`matches`](Self::matches) applied to `metadata.labels` of a full JSON object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }

    /// True when the selector has no requirements and so selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

fn expression_requirement(e: &Value) -> Result<Requirement, String> {
    let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
    let op_name = e.get("operator").and_then(Value::as_str).unwrap_or_default();
    let op = match op_name {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => return Err(format!("{other:?} is not a valid label selector operator")),
    };
    let values = match e.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("values: must be strings, got {v}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("values: must be a list, got {other}")),
    };
    Requirement::new(key, op, values)
}

/// Renders a list the way Go's `%v` prints a `[]string` inside `field.Invalid`.
fn go_string_slice(values: &[String]) -> String {
    let inner = values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[]string{{{inner}}}")
}

// ---------------------------------------------------------------------------------------------
// Label selector lexer and parser (mirrors apimachinery's `labels.Parser`).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    fn literal(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::Bang => "!",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::Comma => ",",
            Tok::End => "",
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let tok = match c {
            '=' if chars.peek() == Some(&'=') => {
                chars.next();
                Tok::DoubleEq
            }
            '=' => Tok::Eq,
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                Tok::NotEq
            }
            '!' => Tok::Bang,
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            '>' => Tok::Gt,
            '<' => Tok::Lt,
            _ => {
                let mut ident = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || is_special(n) {
                        break;
                    }
                    ident.push(n);
                    chars.next();
                }
                Tok::Ident(ident)
            }
        };
        out.push(tok);
    }
    out.push(Tok::End);
    out
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.peek() {
                Tok::Ident(_) | Tok::Bang => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.next() {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let t = self.peek();
                            if !matches!(t, Tok::Ident(_) | Tok::Bang) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ));
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let mut op = None;
        let mut tok = self.next();
        if tok == Tok::Bang {
            op = Some(Operator::DoesNotExist);
            tok = self.next();
        }
        // In key position `in` and `notin` are keywords, not identifiers.
        let key = match tok {
            Tok::Ident(k) if k != "in" && k != "notin" => k,
            t => return Err(format!("found '{}', expected: identifier", t.literal())),
        };
        if let Some(e) = validate_label_key(&key) {
            return Err(e);
        }
        if op.is_none() && matches!(self.peek(), Tok::End | Tok::Comma) {
            op = Some(Operator::Exists);
        }
        if let Some(op) = op {
            return Requirement::new(&key, op, Vec::new());
        }
        let op = match self.next() {
            Tok::Ident(s) if s == "in" => Operator::In,
            Tok::Ident(s) if s == "notin" => Operator::NotIn,
            Tok::Eq => Operator::Equals,
            Tok::DoubleEq => Operator::DoubleEquals,
            Tok::NotEq => Operator::NotEquals,
            Tok::Gt => Operator::GreaterThan,
            Tok::Lt => Operator::LessThan,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ));
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values.into_iter().collect())
    }

    fn parse_values(&mut self) -> Result<BTreeSet<String>, String> {
        let t = self.next();
        if t != Tok::Open {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.peek() {
            Tok::Ident(_) | Tok::Comma => {
                let set = self.parse_identifiers_list()?;
                match self.next() {
                    Tok::Close => Ok(set),
                    t => Err(format!("found '{}', expected: ')'", t.literal())),
                }
            }
            Tok::Close => {
                self.next();
                Ok(BTreeSet::from([String::new()]))
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, String> {
        let mut set = BTreeSet::new();
        loop {
            match self.next() {
                Tok::Ident(v) => {
                    set.insert(v);
                    match self.peek() {
                        Tok::Comma => {}
                        Tok::Close => return Ok(set),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Tok::Comma => {
                    // `(,a)`, `(a,)` and `(a,,b)` all contribute an empty value.
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    match self.peek() {
                        Tok::Close => {
                            set.insert(String::new());
                            return Ok(set);
                        }
                        Tok::Comma => {
                            self.next();
                            set.insert(String::new());
                        }
                        _ => {}
                    }
                }
                t => return Err(format!("found '{}', expected: ',', or identifier", t.literal())),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        if matches!(self.peek(), Tok::End | Tok::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.next() {
            Tok::Ident(v) => Ok(BTreeSet::from([v])),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key and value validation (`validation.IsQualifiedName`, `validation.IsValidLabelValue`).

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and \
     end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for \
     validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
     characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex \
     used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, \
     '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  \
     or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty() && ok(&b[0]) && ok(&b[b.len() - 1]) && b.iter().all(|c| ok(c) || *c == b'-')
    })
}

fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !is_qualified_name_part(name) {
        errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    errs
}

fn validate_label_key(key: &str) -> Option<String> {
    let errs = qualified_name_errors(key);
    (!errs.is_empty()).then(|| format!("key: Invalid value: {key:?}: {}", errs.join("; ")))
}

fn label_value_errors(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Field selectors.

/// One `field=value` or `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    negated: bool,
    value: String,
}

/// A field selector: a conjunction of equality / inequality terms on dotted JSON paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses `fields.ParseSelector` syntax: `a=b`, `a==b`, `a!=b`, comma separated; values may escape
    /// `\,`, `\=` and `\\`. The empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let (field, op, rhs) = split_term(part).ok_or_else(|| SelectorError::FieldTerm {
                selector: s.to_string(),
                term: part.to_string(),
            })?;
            terms.push(FieldTerm {
                field: field.to_string(),
                negated: op == "!=",
                value: unescape_value(rhs)?,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the object satisfies every term. A field is read as a dotted path into the JSON object;
    /// a missing field reads as the empty string, numbers and booleans as their JSON text.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = field_value(obj, &t.field);
            (actual == t.value) != t.negated
        })
    }

    /// The field names used by the terms, so the caller can reject unsupported ones per kind.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|t| t.field.as_str())
    }

    /// True when the selector has no terms and so selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if t.negated { "!=" } else { "=" };
            write!(f, "{}{op}{}", t.field, escape_value(&t.value))?;
        }
        Ok(())
    }
}

fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits on commas that are not escaped by a backslash.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at the first operator, trying `!=`, `==` then `=` at each position.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::FieldEscape(format!("\\{c}")));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(SelectorError::FieldUnescaped(c)),
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::FieldEscape("\\".to_string()));
    }
    Ok(out)
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace(',', "\\,").replace('=', "\\=")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn pod(name: &str, ns: &str, phase: &str, lbls: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": lbls},
               "spec": {"nodeName": "node-1"}, "status": {"phase": phase}})
    }

    #[test]
    fn given_empty_string_when_parsed_then_selects_everything() {
        let s = LabelSelector::parse("").unwrap();
        assert!(s.is_empty());
        assert!(s.matches(None));
        assert!(s.matches(Some(&labels(json!({"a": "b"})))));
        assert_eq!(s.to_string(), "");
        assert!(LabelSelector::parse("   ").unwrap().is_empty());
    }

    #[test]
    fn given_equality_operators_when_matching_then_compare_values() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches(Some(&l)));
        assert!(LabelSelector::parse("app==web").unwrap().matches(Some(&l)));
        assert!(!LabelSelector::parse("app=db").unwrap().matches(Some(&l)));
        assert!(LabelSelector::parse("app!=db").unwrap().matches(Some(&l)));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(Some(&l)));
        assert!(
            LabelSelector::parse(" app = web , tier == front ")
                .unwrap()
                .matches(Some(&l))
        );
        assert!(
            !LabelSelector::parse("app=web,tier=back")
                .unwrap()
                .matches(Some(&l))
        );
    }

    #[test]
    fn given_not_equals_when_label_missing_then_matches() {
        let s = LabelSelector::parse("app!=web").unwrap();
        assert!(s.matches(None));
        assert!(s.matches(Some(&labels(json!({"other": "x"})))));
    }

    #[test]
    fn given_set_based_selector_when_label_missing_then_notin_matches() {
        let s = LabelSelector::parse("env notin (prod, staging)").unwrap();
        assert!(s.matches(Some(&labels(json!({"app": "x"})))));
        assert!(s.matches(Some(&labels(json!({"env": "dev"})))));
        assert!(!s.matches(Some(&labels(json!({"env": "prod"})))));
        let s = LabelSelector::parse("env in (prod,staging)").unwrap();
        assert!(!s.matches(Some(&labels(json!({"app": "x"})))));
        assert!(s.matches(Some(&labels(json!({"env": "staging"})))));
    }

    #[test]
    fn given_exists_and_does_not_exist_when_matching_then_check_presence() {
        let with = labels(json!({"canary": ""}));
        let without = labels(json!({"app": "x"}));
        let exists = LabelSelector::parse("canary").unwrap();
        let absent = LabelSelector::parse("!canary").unwrap();
        assert!(exists.matches(Some(&with)) && !exists.matches(Some(&without)));
        assert!(!absent.matches(Some(&with)) && absent.matches(Some(&without)) && absent.matches(None));
    }

    #[test]
    fn given_gt_and_lt_when_matching_then_compare_as_integers() {
        let l = labels(json!({"replicas": "10", "name": "abc"}));
        assert!(LabelSelector::parse("replicas>9").unwrap().matches(Some(&l)));
        assert!(!LabelSelector::parse("replicas>10").unwrap().matches(Some(&l)));
        assert!(LabelSelector::parse("replicas<11").unwrap().matches(Some(&l)));
        assert!(!LabelSelector::parse("name>1").unwrap().matches(Some(&l)));
        assert!(!LabelSelector::parse("missing<100").unwrap().matches(Some(&l)));
    }

    #[test]
    fn given_gt_with_non_integer_when_parsed_then_error_says_value_must_be_integer() {
        let e = LabelSelector::parse("a>b").unwrap_err().to_string();
        assert_eq!(
            e,
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, \
             the value must be an integer"
        );
    }

    #[test]
    fn given_mixed_requirements_when_displayed_then_canonical_form_sorted_by_key() {
        let s = LabelSelector::parse("z in (b, a), !y,x, w!=1 ,v==2,u>3,t notin (c),s=").unwrap();
        assert_eq!(s.to_string(), "s=,t notin (c),u>3,v==2,w!=1,x,!y,z in (a,b)");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn given_empty_values_in_set_when_parsed_then_empty_string_is_a_value() {
        let s = LabelSelector::parse("a in ()").unwrap();
        assert_eq!(s.to_string(), "a in ()");
        assert!(s.matches(Some(&labels(json!({"a": ""})))));
        let s = LabelSelector::parse("a in (x,,y)").unwrap();
        assert_eq!(
            s.requirements()[0].values().collect::<Vec<_>>(),
            vec!["", "x", "y"]
        );
        let s = LabelSelector::parse("a=").unwrap();
        assert!(s.matches(Some(&labels(json!({"a": ""})))));
    }

    #[test]
    fn given_prefixed_keys_when_parsed_then_accepted() {
        let s = LabelSelector::parse("app.kubernetes.io/name=web,example.com/Tier_1.x in (A-1)").unwrap();
        let l = labels(json!({"app.kubernetes.io/name": "web", "example.com/Tier_1.x": "A-1"}));
        assert!(s.matches(Some(&l)));
    }

    #[test]
    fn given_malformed_syntax_when_parsed_then_api_server_messages() {
        let cases = [
            (
                "a b",
                "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            ),
            ("a,", "found '', expected: identifier after ','"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("=a", "found '=', expected: !, identifier, or 'end of string'"),
            ("a in b", "unable to parse requirement: found 'b' expected: '('"),
            (
                "a in (b",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            ("!=a", "found '!=', expected: !, identifier, or 'end of string'"),
            ("!a=b", "found '=', expected: ',' or 'end of string'"),
            (
                "a=(b)",
                "unable to parse requirement: found '(', expected: identifier",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                LabelSelector::parse(input).unwrap_err().to_string(),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn given_invalid_key_or_value_when_parsed_then_validation_message() {
        let e = LabelSelector::parse("-bad=x").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "unable to parse requirement: key: Invalid value: \"-bad\": name part must consist of"
            ),
            "{e}"
        );
        let long = "a".repeat(64);
        let e = LabelSelector::parse(&long).unwrap_err().to_string();
        assert!(e.contains("name part must be no more than 63 characters"), "{e}");
        let e = LabelSelector::parse("Example.com/a=b").unwrap_err().to_string();
        assert!(e.contains("prefix part a lowercase RFC 1123 subdomain"), "{e}");
        let e = LabelSelector::parse("a/b/c").unwrap_err().to_string();
        assert!(e.contains("a qualified name must consist of"), "{e}");
        let e = LabelSelector::parse("a=b*c").unwrap_err().to_string();
        assert!(
            e.contains("Invalid value: \"b*c\": a valid label must be an empty string"),
            "{e}"
        );
        let e = LabelSelector::parse(&format!("a={long}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be no more than 63 characters"), "{e}");
    }

    #[test]
    fn given_metav1_label_selector_when_converted_then_match_labels_and_expressions_apply() {
        let s = LabelSelector::from_label_selector(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(
            s.to_string(),
            "app=web,env notin (prod),!legacy,team,tier in (edge,front)"
        );
        assert!(s.matches(Some(&labels(json!({"app": "web", "tier": "edge", "team": "a"})))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "team": "a", "legacy": "1"})
        ))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "env": "prod", "team": "a"})
        ))));
    }

    #[test]
    fn given_empty_metav1_label_selector_when_converted_then_selects_everything() {
        let s = LabelSelector::from_label_selector(&json!({})).unwrap();
        assert!(s.is_empty());
        assert!(s.matches_object(&pod("p", "default", "Running", json!({"a": "b"}))));
    }

    #[test]
    fn given_bad_metav1_label_selector_when_converted_then_error() {
        let e = LabelSelector::from_label_selector(&json!({"matchExpressions": [
            {"key": "a", "operator": "Gt", "values": ["1"]}]}))
        .unwrap_err();
        assert_eq!(e.to_string(), "\"Gt\" is not a valid label selector operator");
        let e = LabelSelector::from_label_selector(&json!({"matchExpressions": [
            {"key": "a", "operator": "In", "values": []}]}))
        .unwrap_err();
        assert!(e.to_string().contains("values set can't be empty"), "{e}");
        let e = LabelSelector::from_label_selector(&json!({"matchExpressions": [
            {"key": "a", "operator": "Exists", "values": ["x"]}]}))
        .unwrap_err();
        assert!(e.to_string().contains("values set must be empty"), "{e}");
    }

    #[test]
    fn given_object_when_matching_label_selector_then_reads_metadata_labels() {
        let s = LabelSelector::parse("app=web").unwrap();
        assert!(s.matches_object(&pod("p", "default", "Running", json!({"app": "web"}))));
        assert!(!s.matches_object(&json!({"metadata": {"name": "no-labels"}})));
    }

    #[test]
    fn given_field_selector_when_matching_then_reads_dotted_paths() {
        let p = pod("web-1", "prod", "Running", json!({}));
        let s = FieldSelector::parse("metadata.name=web-1,status.phase!=Failed").unwrap();
        assert!(s.matches_object(&p));
        assert!(
            FieldSelector::parse("spec.nodeName==node-1")
                .unwrap()
                .matches_object(&p)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace=default")
                .unwrap()
                .matches_object(&p)
        );
        assert_eq!(
            s.fields().collect::<Vec<_>>(),
            vec!["metadata.name", "status.phase"]
        );
    }

    #[test]
    fn given_missing_field_when_matching_then_reads_as_empty_string() {
        let p = json!({"metadata": {"name": "x"}});
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches_object(&p));
        assert!(
            FieldSelector::parse("spec.nodeName!=node-1")
                .unwrap()
                .matches_object(&p)
        );
        let ev = json!({"involvedObject": {"name": "web-1", "kind": "Pod"}});
        assert!(
            FieldSelector::parse("involvedObject.name=web-1")
                .unwrap()
                .matches_object(&ev)
        );
    }

    #[test]
    fn given_escaped_values_when_parsed_then_unescaped_and_rendered_back() {
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert!(s.matches_object(&json!({"metadata": {"name": r"a,b=c\d"}})));
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d");
    }

    #[test]
    fn given_field_selector_when_displayed_then_terms_sorted_and_double_equals_normalised() {
        let s = FieldSelector::parse("status.phase==Running,metadata.name!=x").unwrap();
        assert_eq!(s.to_string(), "metadata.name!=x,status.phase=Running");
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(FieldSelector::parse("").unwrap().matches_object(&json!({})));
    }

    #[test]
    fn given_bad_field_selector_when_parsed_then_api_server_messages() {
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\x").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().to_string(),
            "invalid field selector: unescaped character in value: ="
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \"
        );
    }
}
