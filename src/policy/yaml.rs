//! Positional YAML: a node tree that remembers where every key and value was written, and a serde
//! `Deserializer` over it whose errors carry the field path and the line/column.
//!
//! Why not `serde_yaml`? It reports a location for its own syntax and type errors, but the first error
//! stops the whole document and its `Value` forgets positions, so semantic errors found later
//! ("storage `primray` does not exist") could not point at the line. Here the text is read once with
//! `granit-parser` (a YAML 1.2 event parser with source spans, already in the build through kube) into a
//! small [`Node`] tree; each section (every storage, webhook and policy) is then deserialized on its own
//! from its subtree, so one bad policy does not hide the others, and the validator can look up the
//! position of any field by path with [`Node::get`]. The tree is bounded (depth, alias expansion, size)
//! so hostile input cannot exhaust the stack or memory.

use std::collections::BTreeMap;
use std::fmt;

use granit_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Deepest nesting accepted; policies need about eight levels.
const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to (aliases included): a guard against "billion laughs".
const MAX_NODES: usize = 200_000;

/// A position in the YAML text, both 1-based (as editors show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number, starting at 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One YAML node with the location it starts at.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub kind: NodeKind,
    /// Where the node starts.
    pub location: Location,
}

/// The three YAML node shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar; `plain` is false for quoted, block and `!!str`-tagged scalars (never resolved to
    /// null/bool/number).
    Scalar { value: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with scalar keys, in document order, without duplicates.
    Map(Vec<Entry>),
}

/// One key/value pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key as written.
    pub key: String,
    /// Where the key starts.
    pub key_location: Location,
    /// The value.
    pub value: Node,
}

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index (0-based, as in `policies[0]`).
    Index(usize),
}

/// A field path such as `policies[0].retention.keepDaily`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(pub Vec<Seg>);

impl Path {
    /// This path extended by a key.
    pub fn key(&self, k: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    /// This path extended by an index.
    pub fn index(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// This path followed by another one.
    pub fn join(&self, other: &Path) -> Path {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                // A key that would make the path ambiguous (empty, dotted, bracketed) is quoted.
                Seg::Key(k)
                    if k.is_empty() || k.contains(['.', '[', ']']) || k.contains(char::is_whitespace) =>
                {
                    write!(f, "[{k:?}]")?
                }
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn given_empty_or_dotted_key_when_displayed_then_quoted_so_the_path_is_never_empty() {
        assert_eq!(Path::default().key("").to_string(), "[\"\"]");
        assert_eq!(
            Path::default().key("policies").index(0).key("a.b").to_string(),
            "policies[0][\"a.b\"]"
        );
        assert_eq!(
            Path::default().key("retention").key("keepLast").to_string(),
            "retention.keepLast"
        );
    }
}

/// Errors of this module: the text is not YAML we accept, or a node does not fit the expected shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum YamlError {
    /// The text is not well-formed YAML (or uses a construct policies do not allow).
    #[error("{location}: {message}")]
    Syntax {
        /// Where the parser stopped.
        location: Location,
        /// What is wrong.
        message: String,
    },
    /// A node does not have the shape the program expects (wrong type, unknown or missing field).
    #[error("{path} ({}): {message}", location.map(|l| l.to_string()).unwrap_or_else(|| "unknown position".into()))]
    Shape {
        /// Path of the offending field, relative to the node that was decoded.
        path: Path,
        /// Where it is, when known.
        location: Option<Location>,
        /// What was found and what is allowed.
        message: String,
    },
}

impl YamlError {
    fn shape(message: String) -> Self {
        YamlError::Shape {
            path: Path::default(),
            location: None,
            message,
        }
    }
    fn at(mut self, loc: Location) -> Self {
        if let YamlError::Shape { location, .. } = &mut self
            && location.is_none()
        {
            *location = Some(loc);
        }
        self
    }
    fn under(mut self, seg: Seg) -> Self {
        if let YamlError::Shape { path, .. } = &mut self {
            path.0.insert(0, seg);
        }
        self
    }
}

impl de::Error for YamlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        YamlError::shape(msg.to_string())
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        YamlError::shape(format!(
            "unknown field `{field}`{}; allowed: {}",
            did_you_mean(field, expected)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default(),
            list(expected)
        ))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        YamlError::shape(format!(
            "found `{variant}`{}; allowed: {}",
            did_you_mean(variant, expected)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default(),
            list(expected)
        ))
    }
    fn missing_field(field: &'static str) -> Self {
        YamlError::shape(format!("missing required field `{field}`"))
    }
    fn duplicate_field(field: &'static str) -> Self {
        YamlError::shape(format!("field `{field}` given twice"))
    }
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        return "nothing here".into();
    }
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest candidate to `found`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(found: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace(['_', '-'], "");
    let f = norm(found);
    if let Some(exact) = candidates.iter().find(|c| norm(c) == f) {
        return Some(exact);
    }
    let limit = (found.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (levenshtein(&f, &norm(c)), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn loc(m: &granit_parser::Marker) -> Location {
    Location {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// Parse every document of `text`; an empty text yields no documents.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, YamlError> {
    enum Frame {
        Seq(Vec<Node>, Location, usize),
        Map(Vec<Entry>, Option<(String, Location)>, Location, usize),
    }
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: BTreeMap<usize, Node> = BTreeMap::new();
    let mut total = 0usize;
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|e| YamlError::Syntax {
            location: loc(e.marker()),
            message: e.info(),
        })?;
        let here = loc(&span.start);
        let finished: Option<(Node, usize)> = match event {
            Event::DocumentStart(..) => {
                anchors.clear();
                None
            }
            Event::Scalar(value, style, anchor, tag) => {
                let is_str_tag = tag.as_ref().is_some_and(|t| t.to_string().ends_with("str"));
                let plain = style == ScalarStyle::Plain && !is_str_tag;
                Some((
                    Node {
                        kind: NodeKind::Scalar {
                            value: value.into_owned(),
                            plain,
                        },
                        location: here,
                    },
                    anchor,
                ))
            }
            Event::SequenceStart(_, anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(here));
                }
                stack.push(Frame::Seq(Vec::new(), here, anchor));
                None
            }
            Event::MappingStart(_, anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(here));
                }
                stack.push(Frame::Map(Vec::new(), None, here, anchor));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(items, l, a)) => Some((
                    Node {
                        kind: NodeKind::Seq(items),
                        location: l,
                    },
                    a,
                )),
                _ => {
                    return Err(YamlError::Syntax {
                        location: here,
                        message: "unbalanced sequence".into(),
                    });
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(entries, None, l, a)) => Some((
                    Node {
                        kind: NodeKind::Map(entries),
                        location: l,
                    },
                    a,
                )),
                _ => {
                    return Err(YamlError::Syntax {
                        location: here,
                        message: "unbalanced mapping".into(),
                    });
                }
            },
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    let mut node = node.clone();
                    total += count(&node);
                    node.location = here;
                    Some((node, 0))
                }
                None => {
                    return Err(YamlError::Syntax {
                        location: here,
                        message: "unknown alias".into(),
                    });
                }
            },
            _ => None,
        };
        let Some((node, anchor)) = finished else { continue };
        total += 1;
        if total > MAX_NODES {
            return Err(YamlError::Syntax {
                location: here,
                message: format!("document too large (more than {MAX_NODES} nodes after expanding aliases)"),
            });
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, pending, ..)) => match pending.take() {
                None => match node.kind {
                    NodeKind::Scalar { value, .. } => {
                        if entries.iter().any(|e| e.key == value) {
                            return Err(YamlError::Syntax {
                                location: node.location,
                                message: format!("key `{value}` appears twice in this mapping"),
                            });
                        }
                        *pending = Some((value, node.location));
                    }
                    _ => {
                        return Err(YamlError::Syntax {
                            location: node.location,
                            message: "mapping keys must be plain strings".into(),
                        });
                    }
                },
                Some((key, key_location)) => entries.push(Entry {
                    key,
                    key_location,
                    value: node,
                }),
            },
        }
    }
    Ok(docs)
}

fn too_deep(location: Location) -> YamlError {
    YamlError::Syntax {
        location,
        message: format!("nesting deeper than {MAX_DEPTH} levels"),
    }
}

fn count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(entries) => 1 + entries.iter().map(|e| 1 + count(&e.value)).sum::<usize>(),
    }
}

impl Node {
    /// The entry for `key`, when this node is a mapping that has it.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The value for `key` in a mapping.
    pub fn field(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// The scalar text, when this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The node at `path` below this one.
    pub fn get(&self, path: &Path) -> Option<&Node> {
        let mut cur = self;
        for seg in &path.0 {
            cur = match (seg, &cur.kind) {
                (Seg::Key(k), NodeKind::Map(_)) => cur.field(k)?,
                (Seg::Index(i), NodeKind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Remove the mapping entry at `path` (a key path); true when something was removed.
    pub fn remove(&mut self, path: &Path) -> bool {
        let Some((Seg::Key(k), parent)) = path.0.split_last() else {
            return false;
        };
        let mut cur = self;
        for seg in parent {
            cur = match (seg, &mut cur.kind) {
                (Seg::Key(k), NodeKind::Map(entries)) => match entries.iter_mut().find(|e| &e.key == k) {
                    Some(e) => &mut e.value,
                    None => return false,
                },
                (Seg::Index(i), NodeKind::Seq(items)) => match items.get_mut(*i) {
                    Some(n) => n,
                    None => return false,
                },
                _ => return false,
            };
        }
        match &mut cur.kind {
            NodeKind::Map(entries) => {
                let before = entries.len();
                entries.retain(|e| &e.key != k);
                entries.len() < before
            }
            _ => false,
        }
    }

    /// Shift every location by `lines` and `columns` (for a document embedded in another one).
    pub fn shift(&mut self, lines: usize, columns: usize) {
        self.location.line += lines;
        self.location.column += columns;
        match &mut self.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq(items) => items.iter_mut().for_each(|n| n.shift(lines, columns)),
            NodeKind::Map(entries) => entries.iter_mut().for_each(|e| {
                e.key_location.line += lines;
                e.key_location.column += columns;
                e.value.shift(lines, columns);
            }),
        }
    }

    /// The best location for a problem at `path`: the value if it exists, else the deepest ancestor.
    pub fn locate(&self, path: &Path) -> Location {
        let mut cur = self;
        for seg in &path.0 {
            let next = match (seg, &cur.kind) {
                (Seg::Key(k), NodeKind::Map(_)) => cur.field(k),
                (Seg::Index(i), NodeKind::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        cur.location
    }

    /// The location of the key at the end of `path` (falls back to [`Node::locate`]).
    pub fn locate_key(&self, path: &Path) -> Location {
        if let Some((Seg::Key(k), parent)) = path.0.split_last()
            && let Some(e) = self.get(&Path(parent.to_vec())).and_then(|p| p.entry(k))
        {
            return e.key_location;
        }
        self.locate(path)
    }

    /// A short description of what was found, for "found X" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { value, .. } => format!("{value:?}"),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// Decode `node` into `T`; errors carry the path (relative to `node`) and location.
pub fn decode<T: de::DeserializeOwned>(node: &Node) -> Result<T, YamlError> {
    T::deserialize(node).map_err(|e| e.at(node.location))
}

fn unexpected(node: &Node) -> de::Unexpected<'_> {
    match &node.kind {
        NodeKind::Scalar { value, .. } => de::Unexpected::Str(value),
        NodeKind::Seq(_) => de::Unexpected::Seq,
        NodeKind::Map(_) => de::Unexpected::Map,
    }
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = YamlError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        let r = match &self.kind {
            NodeKind::Scalar { value, plain: true } => {
                let s = value.as_str();
                if self.is_null() {
                    v.visit_unit()
                } else if matches!(s, "true" | "True" | "TRUE") {
                    v.visit_bool(true)
                } else if matches!(s, "false" | "False" | "FALSE") {
                    v.visit_bool(false)
                } else if let Ok(n) = s.parse::<u64>() {
                    v.visit_u64(n)
                } else if let Ok(n) = s.parse::<i64>() {
                    v.visit_i64(n)
                } else if s
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
                    && let Ok(f) = s.parse::<f64>()
                {
                    v.visit_f64(f)
                } else {
                    v.visit_str(s)
                }
            }
            NodeKind::Scalar { value, plain: false } => v.visit_str(value),
            NodeKind::Seq(items) => v.visit_seq(SeqAccess {
                items: items.iter(),
                index: 0,
            }),
            NodeKind::Map(entries) => v.visit_map(MapAccess {
                entries: entries.iter(),
                current: None,
            }),
        };
        r.map_err(|e| e.at(self.location))
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        if self.is_null() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        let r: Result<V::Value, YamlError> = match &self.kind {
            NodeKind::Scalar { value, plain: true } if matches!(value.as_str(), "true" | "True" | "TRUE") => {
                v.visit_bool(true)
            }
            NodeKind::Scalar { value, plain: true }
                if matches!(value.as_str(), "false" | "False" | "FALSE") =>
            {
                v.visit_bool(false)
            }
            _ => Err(de::Error::invalid_type(unexpected(self), &"true or false")),
        };
        r.map_err(|e| e.at(self.location))
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        let r: Result<V::Value, YamlError> = match &self.kind {
            _ if self.is_null() => Err(de::Error::invalid_type(de::Unexpected::Unit, &v)),
            NodeKind::Scalar { value, .. } => v.visit_str(value),
            _ => Err(de::Error::invalid_type(unexpected(self), &v)),
        };
        r.map_err(|e| e.at(self.location))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, YamlError> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => v
                .visit_enum(value.as_str().into_deserializer())
                .map_err(|e: YamlError| e.at(self.location)),
            _ => Err(de::Error::invalid_type(
                unexpected(self),
                &"one of the allowed words",
            )),
        }
        .map_err(|e| e.at(self.location))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, YamlError> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map struct
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = YamlError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, YamlError> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let i = self.index;
        self.index += 1;
        seed.deserialize(node)
            .map(Some)
            .map_err(|e| e.at(node.location).under(Seg::Index(i)))
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, Entry>,
    current: Option<&'de Entry>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = YamlError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, YamlError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key: de::value::StrDeserializer<'de, YamlError> = entry.key.as_str().into_deserializer();
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| e.at(entry.key_location).under(Seg::Key(entry.key.clone())))
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, YamlError> {
        let entry = self
            .current
            .take()
            .ok_or_else(|| YamlError::shape("value without key".into()))?;
        seed.deserialize(&entry.value)
            .map_err(|e| e.at(entry.value.location).under(Seg::Key(entry.key.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Retention {
        keep_daily: Option<u32>,
        keep_weekly: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        retention: Retention,
    }

    fn one(text: &str) -> Node {
        parse_documents(text).unwrap().remove(0)
    }

    #[test]
    fn given_valid_doc_with_anchor_when_decoded_then_values_are_read() {
        let node = one("name: &n a\nretention: {keepDaily: 7, keepWeekly: 4}\n");
        let doc = decode::<Doc>(&node).unwrap();
        assert_eq!(
            (
                doc.name.as_str(),
                doc.retention.keep_daily,
                doc.retention.keep_weekly
            ),
            ("a", Some(7), Some(4))
        );
    }

    #[test]
    fn given_misspelt_field_when_decoded_then_error_has_path_location_and_suggestion() {
        let node = one("name: a\nretention:\n  keepDayly: 3\n");
        let err = decode::<Doc>(&node).unwrap_err();
        let YamlError::Shape {
            path,
            location,
            message,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(path.to_string(), "retention.keepDayly");
        assert_eq!(location, Some(Location { line: 3, column: 3 }));
        assert!(message.contains("did you mean `keepDaily`?"), "{message}");
        assert!(message.contains("`keepWeekly`"), "{message}");
    }

    #[test]
    fn given_wrong_type_when_decoded_then_error_points_at_the_value() {
        let node = one("name: a\nretention: {keepDaily: lots}\n");
        let err = decode::<Doc>(&node).unwrap_err();
        let YamlError::Shape {
            path,
            location,
            message,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(path.to_string(), "retention.keepDaily");
        assert_eq!(location, Some(Location { line: 2, column: 24 }));
        assert!(message.contains("lots"), "{message}");
    }

    #[test]
    fn given_duplicate_key_when_parsed_then_syntax_error_names_it() {
        let err = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert!(err.to_string().contains("key `a` appears twice"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn given_alias_bomb_when_parsed_then_rejected_as_too_large() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn given_deep_nesting_when_parsed_then_rejected_without_overflow() {
        let text = "[".repeat(10_000);
        assert!(parse_documents(&text).is_err());
    }

    #[test]
    fn given_path_when_located_then_key_and_value_positions_are_found() {
        let node = one("policies:\n  - name: x\n    retention: {keepLast: 3}\n");
        let p = Path::default()
            .key("policies")
            .index(0)
            .key("retention")
            .key("keepLast");
        assert_eq!(node.locate(&p), Location { line: 3, column: 27 });
        assert_eq!(node.locate_key(&p), Location { line: 3, column: 17 });
        assert_eq!(p.to_string(), "policies[0].retention.keepLast");
    }

    #[test]
    fn given_typo_candidates_then_did_you_mean_picks_nearest_or_none() {
        assert_eq!(
            did_you_mean("keep_daily", &["keepDaily", "keepLast"]),
            Some("keepDaily")
        );
        assert_eq!(
            did_you_mean("schedul", &["schedule", "storage"]),
            Some("schedule")
        );
        assert_eq!(did_you_mean("zzzzzz", &["schedule", "storage"]), None);
    }
}
