//! The policy language: the ConfigMap users edit, parsed in two stages and validated with precise errors.
//!
//! Stage one ([`yaml`]) reads the text into a positional node tree (see that module for why), stage two
//! ([`validate`]) decodes each section into the [`raw`] serde structs and turns them into the [`model`]
//! the run uses. Parsing does no I/O and never fails as a whole: [`parse_str`] and
//! [`parse_configmap_data`] return a [`PolicySet`] holding the valid policies plus every [`Problem`]
//! (one invalid policy does not stop the valid ones). Loading from and writing schedule state to the
//! cluster is in [`store`]; the `validate` command in [`command`], the `policies` command in [`list`].

pub mod model;
pub mod raw;
pub mod schedule;
pub mod status;
pub mod store;
pub mod validate;
pub mod values;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;

pub use model::*;
pub use schedule::{Decision, DueInput, RunReason, Schedule, decide};
pub use yaml::Location;

use yaml::{Node, NodeKind};

/// The ConfigMap key holding the PolicySet.
pub const POLICIES_KEY: &str = "policies.yaml";
/// Default name of the policy ConfigMap.
pub const DEFAULT_CONFIGMAP: &str = "freezeframe-policies";

/// Errors of loading policies (reading files, talking to the cluster). Problems *in* the policies are
/// not errors: they are [`Problem`]s in the returned [`PolicySet`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file could not be read.
    #[error("cannot read policy file {path}")]
    ReadFile {
        /// The path given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The ConfigMap could not be read or patched.
    #[error("cannot {action} ConfigMap {namespace}/{name}")]
    Kube {
        /// What was attempted (`read`, `patch`).
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// One problem in the policies: where (source, policy, field path, line/column) and what (found/allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `policies.yaml`, a Stork rule key, or a file path.
    pub source: String,
    /// The policy concerned (`None`: shared parts such as storages or the document itself).
    pub policy: Option<String>,
    /// Field path such as `policies[0].retention.keepWithin`.
    pub path: String,
    /// Line and column in the source, when known.
    pub location: Option<Location>,
    /// What was found and what is allowed.
    pub message: String,
}

impl Problem {
    fn general(source: &str, message: &str) -> Self {
        Problem {
            source: source.into(),
            policy: None,
            path: "(document)".into(),
            location: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(l) => write!(f, "{}:{}:{}: ", self.source, l.line, l.column)?,
            None => write!(f, "{}: ", self.source)?,
        }
        if let Some(p) = &self.policy {
            write!(f, "policy `{p}`: ")?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The validated policies plus every problem found.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Valid policies, in document order.
    pub policies: Vec<Policy>,
    /// Names (or paths) of policies that are invalid: never run, never pruned.
    pub invalid_policies: Vec<String>,
    /// All problems.
    pub problems: Vec<Problem>,
    /// Valid combinations known to hang or fail at run time (printed by `validate`, never refused).
    pub warnings: Vec<Problem>,
    /// Valid storages.
    pub storages: BTreeMap<String, Storage>,
    /// Valid webhooks.
    pub webhooks: Vec<Webhook>,
    /// Valid Stork rules by name.
    pub stork_rules: StorkRules,
}

impl PolicySet {
    /// The valid policy called `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// True when nothing is wrong.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems grouped by policy (`None` = shared parts), in order of first appearance.
    pub fn problems_by_policy(&self) -> Vec<(Option<&str>, Vec<&Problem>)> {
        let mut out: Vec<(Option<&str>, Vec<&Problem>)> = Vec::new();
        for p in &self.problems {
            let key = p.policy.as_deref();
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(p),
                None => out.push((key, vec![p])),
            }
        }
        out
    }
}

fn kind_of(node: &Node) -> (Option<&str>, Option<&str>) {
    (
        node.field("apiVersion").and_then(Node::as_str),
        node.field("kind").and_then(Node::as_str),
    )
}

fn syntax_problem(source: &str, e: yaml::YamlError) -> Problem {
    let (location, message) = match e {
        yaml::YamlError::Syntax { location, message } => (Some(location), message),
        yaml::YamlError::Shape {
            location, message, ..
        } => (location, message),
    };
    Problem {
        source: source.into(),
        policy: None,
        path: "(document)".into(),
        location,
        message: format!("invalid YAML: {message}"),
    }
}

/// Parse policies from text: a PolicySet document, a ConfigMap manifest holding `policies.yaml` (and
/// Stork Rules in other keys), or several documents (a PolicySet and Stork Rules). `source` names the
/// text in problems (a file path, or `policies.yaml`).
pub fn parse_str(source: &str, text: &str) -> PolicySet {
    let docs = match yaml::parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            return PolicySet {
                problems: vec![syntax_problem(source, e)],
                ..Default::default()
            };
        }
    };
    // A ConfigMap manifest: read its data like the cluster loader does, keeping file positions for
    // literal block values (`policies.yaml: |`), the usual way to write them.
    if let [doc] = &docs[..]
        && kind_of(doc) == (Some("v1"), Some("ConfigMap"))
    {
        let mut data = Vec::new();
        if let Some(Node {
            kind: NodeKind::Map(entries),
            ..
        }) = doc.field("data")
        {
            for e in entries {
                let Some(v) = e.value.as_str() else { continue };
                // A literal block's node starts at its first content line; the key's line ends in `|`.
                let at = e.value.location;
                let key_line = text.lines().nth(e.key_location.line - 1).unwrap_or_default();
                let is_block = key_line
                    .get(e.key_location.column - 1 + e.key.len()..)
                    .is_some_and(|r| r.trim_start_matches([':', ' ', '"', '\'']).starts_with('|'))
                    && at.line > e.key_location.line;
                let (label, offset) = if is_block {
                    (
                        format!("{source} (data.{})", e.key),
                        Some((at.line - 1, at.column - 1)),
                    )
                } else {
                    (
                        format!("{source} (data.{}, positions within the value)", e.key),
                        None,
                    )
                };
                data.push(DataEntry {
                    key: e.key.clone(),
                    label,
                    text: v.to_string(),
                    offset,
                });
            }
        }
        return parse_data(data);
    }
    let mut policy_doc = None;
    let mut rules = Vec::new();
    let mut extra = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let source = if docs.len() > 1 {
            format!("{source} (document {})", i + 1)
        } else {
            source.to_string()
        };
        match kind_of(doc) {
            (_, Some("Rule")) => rules.push(validate::Doc {
                key: source.clone(),
                source,
                node: doc,
            }),
            _ if policy_doc.is_none() => {
                policy_doc = Some(validate::Doc {
                    key: source.clone(),
                    source,
                    node: doc,
                })
            }
            _ => extra.push(Problem::general(
                &source,
                "found a second PolicySet; allowed: one PolicySet per source",
            )),
        }
    }
    let mut set = validate::validate(policy_doc, &rules);
    set.problems.extend(extra);
    set
}

/// Parse a ConfigMap's `data`: the PolicySet under [`POLICIES_KEY`], Stork `Rule` documents in any other
/// key (keys whose document is not a Rule are ignored, so the ConfigMap may carry notes).
pub fn parse_configmap_data(data: &BTreeMap<String, String>) -> PolicySet {
    parse_data(
        data.iter()
            .map(|(k, v)| DataEntry {
                key: k.clone(),
                label: k.clone(),
                text: v.clone(),
                offset: None,
            })
            .collect(),
    )
}

/// One ConfigMap data entry; `offset` (lines, columns) maps positions in the value to the file.
struct DataEntry {
    key: String,
    label: String,
    text: String,
    offset: Option<(usize, usize)>,
}

fn parse_data(data: Vec<DataEntry>) -> PolicySet {
    let mut problems = Vec::new();
    let mut parsed: Vec<(&DataEntry, Node)> = Vec::new();
    for entry in &data {
        let (lines, cols) = entry.offset.unwrap_or((0, 0));
        match yaml::parse_documents(&entry.text) {
            Ok(mut docs) if docs.len() == 1 => {
                let mut node = docs.remove(0);
                node.shift(lines, cols);
                parsed.push((entry, node));
            }
            Ok(docs) if entry.key == POLICIES_KEY => problems.push(Problem::general(
                &entry.label,
                &format!("found {} documents; allowed: exactly one PolicySet", docs.len()),
            )),
            Ok(_) => {}
            Err(e) if entry.key == POLICIES_KEY || entry.text.contains("kind: Rule") => {
                let mut p = syntax_problem(&entry.label, e);
                if let Some(l) = &mut p.location {
                    l.line += lines;
                    l.column += cols;
                }
                problems.push(p);
            }
            Err(_) => {}
        }
    }
    let mut policy_doc = None;
    let mut rules = Vec::new();
    for (entry, node) in &parsed {
        if entry.key == POLICIES_KEY {
            policy_doc = Some(validate::Doc {
                source: entry.label.clone(),
                key: entry.key.clone(),
                node,
            });
        } else if kind_of(node).1 == Some("Rule") {
            let source = entry.label.clone();
            rules.push(validate::Doc {
                source,
                key: entry.key.clone(),
                node,
            });
        }
    }
    let had_syntax_error = data.iter().any(|e| e.key == POLICIES_KEY) && policy_doc.is_none();
    let mut set = validate::validate(policy_doc, &rules);
    if had_syntax_error {
        set.problems.retain(|p| p.source != "(none)");
    }
    problems.append(&mut set.problems);
    set.problems = problems;
    set
}

#[cfg(test)]
mod tests;
