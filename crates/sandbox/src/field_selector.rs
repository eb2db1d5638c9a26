//! Field selectors parsed and matched the way apimachinery does (`fields.ParseSelector`); API-server only.
//!
//! Label selectors are a product concept and live in [`freezeframe_selector`]; field selectors only exist
//! here because the sandbox serves `?fieldSelector=` on lists and watches. Which fields each kind
//! supports is decided by the API layer (`api.rs`), which also wraps these errors into a `BadRequest`.
//! Error messages follow the wording of the real API server.

use std::fmt;

use serde_json::Value;

/// A field selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldSelectorError {
    /// A field selector term has no operator (`invalid selector: 'x'; can't understand 'x'`).
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    Term {
        /// The whole selector as given.
        selector: String,
        /// The term that could not be split into field, operator and value.
        term: String,
    },
    /// A field selector value contains a backslash escape other than `\\`, `\,`, `\=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    Escape(String),
    /// A field selector value contains an unescaped `,` or `=`.
    #[error("invalid field selector: unescaped character in value: {0}")]
    Unescaped(char),
}

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
    pub fn parse(s: &str) -> Result<Self, FieldSelectorError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let (field, op, rhs) = split_term(part).ok_or_else(|| FieldSelectorError::Term {
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

fn unescape_value(s: &str) -> Result<String, FieldSelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(FieldSelectorError::Escape(format!("\\{c}")));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(FieldSelectorError::Unescaped(c)),
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(FieldSelectorError::Escape("\\".to_string()));
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

    fn pod(name: &str, ns: &str, phase: &str, lbls: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": lbls},
               "spec": {"nodeName": "node-1"}, "status": {"phase": phase}})
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
