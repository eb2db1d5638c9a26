//! Every patch flavour the sandbox API server accepts (merge, JSON, strategic merge) and server-side apply
//! with `metadata.managedFields` bookkeeping, all as pure functions over `serde_json::Value` objects.
//!
//! # List strategies
//!
//! Strategic merge patch and server-side apply both need to know, per field path, how a list merges.
//! Kubernetes reads that from the Go struct tags (`patchMergeKey`, `listType`, `listMapKey`); the sandbox
//! uses a small table keyed on the field name and its parent field ("container" means the parent is
//! `containers`, `initContainers` or `ephemeralContainers`, "pod spec" means the parent is `spec`):
//!
//! | field                                   | where              | strategy                            |
//! |-----------------------------------------|--------------------|-------------------------------------|
//! | `containers`, `initContainers`, `ephemeralContainers` | pod spec | merge by `name`               |
//! | `volumes`, `imagePullSecrets`, `resourceClaims`, `schedulingGates` | pod spec | merge by `name`  |
//! | `hostAliases`                           | pod spec           | merge by `ip`                       |
//! | `readinessGates`                        | pod spec           | merge by `conditionType`            |
//! | `topologySpreadConstraints`             | pod spec           | merge by `topologyKey` (+`whenUnsatisfiable` for apply) |
//! | `podCIDRs`                              | node spec          | primitive set (union)               |
//! | `env`                                   | container          | merge by `name`                     |
//! | `volumeMounts`                          | container          | merge by `mountPath`                |
//! | `volumeDevices`                         | container          | merge by `devicePath`               |
//! | `ports`                                 | container          | merge by `containerPort` (+`protocol`, default `TCP`, for apply) |
//! | `ports`                                 | `spec.ports` (Service) | merge by `port` (+`protocol`, default `TCP`, for apply) |
//! | `ownerReferences`                       | `metadata`         | merge by `uid`                      |
//! | `finalizers`                            | `metadata`         | primitive set (union)               |
//! | `conditions`                            | `status`           | merge by `type`                     |
//! | `secrets`                               | top level (ServiceAccount) | merge by `name`             |
//! | anything else (`args`, `command`, `tolerations`, `envFrom`, `subsets`, `rules`, ...) | | atomic: replaced whole |
//!
//! For server-side apply, maps named `selector`, `nodeSelector`, `labelSelector` and `namespaceSelector`
//! are atomic (as `LabelSelector` and the Service selector are), every other map is granular.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};

/// A patch that could not be applied. [`status_code`](PatchError::status_code) tells 400 from 422.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body of a JSON patch is not a list of RFC 6902 operations.
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(#[source] serde_json::Error),
    /// A JSON patch operation failed (missing path, failed `test`, ...); the message is evanphx/json-patch's.
    #[error("{message}")]
    JsonPatchFailed {
        /// Human readable cause, e.g. `doc is missing path: "/spec/foo": missing value`.
        message: String,
    },
    /// A merge or strategic merge patch body is not a JSON object.
    #[error("{kind} patch body must be a JSON object")]
    NotAnObject {
        /// Which patch flavour was being applied.
        kind: &'static str,
    },
    /// `$patch` carries something other than `replace`, `merge` or `delete`.
    #[error("unknown patch type: {directive} in map: {map}")]
    BadPatchType {
        /// The directive value found.
        directive: String,
        /// The map that carried it.
        map: String,
    },
    /// An element of a list merged by key lacks the key.
    #[error("map: {item} does not contain declared merge key: {key}")]
    MissingMergeKey {
        /// The offending list element.
        item: String,
        /// The merge key of the list.
        key: &'static str,
    },
    /// A `$retainKeys`, `$setElementOrder/...` or `$deleteFromPrimitiveList/...` directive is malformed.
    #[error("invalid patch: {0}")]
    BadDirective(String),
}

impl PatchError {
    /// HTTP status the API server answers with: 400 for an unreadable patch, 422 when it cannot apply.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::InvalidJsonPatch(_) | PatchError::NotAnObject { .. } => 400,
            _ => 422,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// List strategy table (documented in the module header).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    /// Replaced whole.
    Atomic,
    /// Primitive set merged by union.
    Set,
    /// Merged element-wise; the first key is the strategic-merge key, all of them identify items for apply.
    Map(&'static [&'static str]),
}

/// Defaults applied to missing key fields when identifying list items (as the OpenAPI defaults do).
const KEY_DEFAULTS: &[(&str, &str)] = &[("protocol", "TCP")];

fn list_kind(path: &[String]) -> ListKind {
    let n = path.len();
    let Some(last) = path.last().map(String::as_str) else {
        return ListKind::Atomic;
    };
    let parent = if n >= 2 { path[n - 2].as_str() } else { "" };
    let in_container = matches!(parent, "containers" | "initContainers" | "ephemeralContainers");
    match (parent, last) {
        ("spec", "containers" | "initContainers" | "ephemeralContainers") => ListKind::Map(&["name"]),
        ("spec", "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates") => {
            ListKind::Map(&["name"])
        }
        ("spec", "hostAliases") => ListKind::Map(&["ip"]),
        ("spec", "readinessGates") => ListKind::Map(&["conditionType"]),
        ("spec", "topologySpreadConstraints") => ListKind::Map(&["topologyKey", "whenUnsatisfiable"]),
        ("spec", "podCIDRs") => ListKind::Set,
        (_, "env") if in_container => ListKind::Map(&["name"]),
        (_, "volumeMounts") if in_container => ListKind::Map(&["mountPath"]),
        (_, "volumeDevices") if in_container => ListKind::Map(&["devicePath"]),
        (_, "ports") if in_container => ListKind::Map(&["containerPort", "protocol"]),
        ("spec", "ports") if n == 2 => ListKind::Map(&["port", "protocol"]),
        ("metadata", "ownerReferences") => ListKind::Map(&["uid"]),
        ("metadata", "finalizers") => ListKind::Set,
        ("status", "conditions") => ListKind::Map(&["type"]),
        ("", "secrets") => ListKind::Map(&["name"]),
        _ => ListKind::Atomic,
    }
}

fn is_atomic_map(path: &[String]) -> bool {
    matches!(
        path.last().map(String::as_str),
        Some("selector" | "nodeSelector" | "labelSelector" | "namespaceSelector")
    )
}

fn child_path(path: &[String], key: &str) -> Vec<String> {
    let mut p = path.to_vec();
    p.push(key.to_string());
    p
}

// ---------------------------------------------------------------------------------------------
// JSON merge patch and JSON patch.

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, everything else
/// (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies an RFC 6902 JSON patch atomically: on error `target` is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(PatchError::InvalidJsonPatch)?;
    json_patch::patch(target, &ops).map_err(|e| {
        let message = match e.kind {
            json_patch::PatchErrorKind::TestFailed => format!("testing value {} failed: test failed", e.path),
            json_patch::PatchErrorKind::InvalidPointer => {
                format!("doc is missing path: \"{}\": missing value", e.path)
            }
            json_patch::PatchErrorKind::InvalidFromPointer => {
                format!(
                    "operation {}: \"from\" path is missing for \"{}\"",
                    e.operation, e.path
                )
            }
            _ => e.to_string(),
        };
        PatchError::JsonPatchFailed { message }
    })
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch.

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to a built-in object, atomically (on error `target` is unchanged).
///
/// Maps merge like a merge patch; lists merge according to the table in the module docs. Supported
/// directives: `$patch: replace|delete|merge` on maps and list items, `$setElementOrder/<list>`,
/// `$deleteFromPrimitiveList/<list>` and `$retainKeys`.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotAnObject {
            kind: "strategic merge",
        });
    };
    let original = target.as_object().cloned().unwrap_or_default();
    *target = Value::Object(smp_map(original, p.clone(), &[])?);
    Ok(())
}

fn bad_patch_type(directive: &Value, map: &Map<String, Value>) -> PatchError {
    PatchError::BadPatchType {
        directive: directive
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| directive.to_string()),
        map: Value::Object(map.clone()).to_string(),
    }
}

fn string_list(v: &Value, what: &str) -> Result<Vec<Value>, PatchError> {
    v.as_array()
        .cloned()
        .ok_or_else(|| PatchError::BadDirective(format!("{what} must be a list, got {v}")))
}

fn smp_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    path: &[String],
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.shift_remove(PATCH_DIRECTIVE) {
        match directive.as_str() {
            Some("replace") => return smp_map(Map::new(), patch, path),
            Some("delete") => return Ok(Map::new()),
            Some("merge") => {}
            _ => return Err(bad_patch_type(&directive, &patch)),
        }
    }
    if let Some(retain) = patch.shift_remove(RETAIN_KEYS) {
        let keys = string_list(&retain, RETAIN_KEYS)?;
        let retained = |k: &str| keys.iter().any(|r| r.as_str() == Some(k));
        for (k, v) in &patch {
            let directive = k.starts_with(SET_ELEMENT_ORDER) || k.starts_with(DELETE_FROM_PRIMITIVE_LIST);
            if !v.is_null() && !directive && !retained(k) {
                return Err(PatchError::BadDirective(format!(
                    "field {k:?} is not listed in $retainKeys"
                )));
            }
        }
        original.retain(|k, _| retained(k));
    }
    let mut orders = BTreeMap::new();
    let directive_keys: Vec<String> = patch.keys().filter(|k| k.starts_with('$')).cloned().collect();
    for k in directive_keys {
        let v = patch.shift_remove(&k).unwrap_or_default();
        if let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) {
            orders.insert(field.to_string(), string_list(&v, &k)?);
        } else if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let doomed = string_list(&v, &k)?;
            if let Some(Value::Array(items)) = original.get_mut(field) {
                items.retain(|i| !doomed.contains(i));
            }
        } else {
            return Err(PatchError::BadDirective(format!("unknown directive {k:?}")));
        }
    }
    for (k, pv) in patch {
        let cp = child_path(path, &k);
        if pv.is_null() {
            original.shift_remove(&k);
            continue;
        }
        let order = orders.remove(&k);
        match original.get_mut(&k) {
            None => {
                let v = smp_value(Value::Null, pv, &cp, order)?;
                original.insert(k, v);
            }
            Some(slot) => *slot = smp_value(slot.take(), pv, &cp, order)?,
        }
    }
    // `$setElementOrder` for lists the patch did not otherwise touch.
    for (field, order) in orders {
        let cp = child_path(path, &field);
        if let Some(Value::Array(items)) = original.get_mut(&field) {
            let server = items.clone();
            *items = normalize_order(std::mem::take(items), &order, &server, list_kind(&cp));
        }
    }
    Ok(original)
}

fn smp_value(
    original: Value,
    patch: Value,
    path: &[String],
    order: Option<Vec<Value>>,
) -> Result<Value, PatchError> {
    Ok(match (original, patch) {
        (Value::Object(o), Value::Object(p)) => Value::Object(smp_map(o, p, path)?),
        (Value::Array(o), Value::Array(p)) => Value::Array(smp_list(o, p, path, order)?),
        (_, Value::Object(p)) => Value::Object(smp_map(Map::new(), p, path)?),
        (_, Value::Array(p)) => Value::Array(smp_list(Vec::new(), p, path, order)?),
        (_, p) => p,
    })
}

fn smp_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &[String],
    order: Option<Vec<Value>>,
) -> Result<Vec<Value>, PatchError> {
    let kind = list_kind(path);
    let merged = match kind {
        ListKind::Atomic => return Ok(patch),
        ListKind::Set => {
            let mut merged = original.clone();
            for p in &patch {
                if !merged.contains(p) {
                    merged.push(p.clone());
                }
            }
            merged
        }
        ListKind::Map(keys) => {
            let key = keys[0];
            let mut merged = original.clone();
            let mut replace = false;
            let mut items = Vec::new();
            for item in &patch {
                let Value::Object(m) = item else {
                    return Err(PatchError::MissingMergeKey {
                        item: item.to_string(),
                        key,
                    });
                };
                match m.get(PATCH_DIRECTIVE) {
                    None => items.push(m.clone()),
                    Some(d) if d == "merge" => items.push(m.clone()),
                    Some(d) if d == "replace" => replace = true,
                    Some(d) if d == "delete" => {
                        let kv = m.get(key).ok_or_else(|| PatchError::MissingMergeKey {
                            item: item.to_string(),
                            key,
                        })?;
                        merged.retain(|o| o.get(key) != Some(kv));
                    }
                    Some(d) => return Err(bad_patch_type(d, m)),
                }
            }
            if replace {
                return items
                    .into_iter()
                    .map(|m| smp_map(Map::new(), m, path).map(Value::Object))
                    .collect();
            }
            for m in items {
                let kv = m.get(key).cloned().ok_or_else(|| PatchError::MissingMergeKey {
                    item: Value::Object(m.clone()).to_string(),
                    key,
                })?;
                match merged.iter().position(|o| o.get(key) == Some(&kv)) {
                    Some(pos) => {
                        let base = match merged[pos].take() {
                            Value::Object(o) => o,
                            _ => Map::new(),
                        };
                        merged[pos] = Value::Object(smp_map(base, m, path)?);
                    }
                    None => merged.push(Value::Object(smp_map(Map::new(), m, path)?)),
                }
            }
            merged
        }
    };
    let patch_order = order.unwrap_or(patch);
    Ok(normalize_order(merged, &patch_order, &original, kind))
}

/// Whether two list elements denote the same item under a list strategy.
fn same_item(kind: ListKind, a: &Value, b: &Value) -> bool {
    match kind {
        ListKind::Map(keys) => a.get(keys[0]).is_some() && a.get(keys[0]) == b.get(keys[0]),
        _ => a == b,
    }
}

/// Orders a merged list like apimachinery's `normalizeElementOrder`: items named by the patch (or by
/// `$setElementOrder`) follow that order, server-only items keep their relative order, and the two
/// sequences interleave by their positions in the original list.
fn normalize_order(
    merged: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    kind: ListKind,
) -> Vec<Value> {
    let position = |list: &[Value], x: &Value| list.iter().position(|p| same_item(kind, p, x));
    let (mut left, mut right): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|x| position(patch_order, x).is_some());
    left.sort_by_key(|x| position(patch_order, x));
    right.sort_by_key(|x| position(server_order, x).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (position(server_order, l), position(server_order, r)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Field sets (structured-merge-diff's `fieldpath.Set`, serialised as `fieldsV1`).

/// One step of a field path, as in `fieldsV1`: `f:name`, `k:{"name":"x"}`, `v:"x"`, `i:0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A map field: `f:<name>`.
    Field(String),
    /// An item of a keyed list, identified by its key fields as canonical (key-sorted) JSON: `k:{...}`.
    Key(String),
    /// An item of a primitive set list, as canonical JSON: `v:<json>`.
    Value(String),
    /// An item of a list by position (only read from foreign `fieldsV1`): `i:<n>`.
    Index(usize),
}

impl PathElement {
    fn encode(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(k) => format!("k:{k}"),
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (tag, rest) = s.split_at_checked(2)?;
        match tag {
            "f:" => Some(PathElement::Field(rest.to_string())),
            "k:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| PathElement::Key(canonical(&v))),
            "v:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| PathElement::Value(canonical(&v))),
            "i:" => rest.parse().ok().map(PathElement::Index),
            _ => None,
        }
    }
}

impl fmt::Display for PathElement {
    /// The form used in conflict messages: `.name`, `[name="x",protocol="TCP"]`, `[="x"]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(k) => {
                let fields = serde_json::from_str::<Map<String, Value>>(k).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Renders a field path as the API server does in conflict messages (`.spec.template.spec.containers[name="x"].image`).
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// JSON text with object keys sorted recursively, used to identify list items.
fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// A set of field paths: a tree whose nodes are members (owned) or merely lead to members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a `fieldsV1` object. `{}` marks a member leaf, `".": {}` marks a member with children;
    /// unreadable keys are skipped.
    pub fn from_fields_v1(v: &Value) -> Self {
        let mut set = FieldSet::new();
        if let Value::Object(m) = v {
            for (k, child) in m {
                if k == "." {
                    set.member = true;
                } else if let Some(pe) = PathElement::decode(k) {
                    let mut node = FieldSet::from_fields_v1(child);
                    if child.as_object().is_some_and(Map::is_empty) {
                        node.member = true;
                    }
                    set.children.insert(pe, node);
                }
            }
        }
        set
    }

    /// Writes the `fieldsV1` form: `.` first, then children in order (fields, keys, values, indices).
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".to_string(), json!({}));
        }
        for (pe, child) in &self.children {
            m.insert(pe.encode(), child.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Adds a path (and makes it a member).
    pub fn insert(&mut self, path: &[PathElement]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    /// Whether the path is a member.
    pub fn contains(&self, path: &[PathElement]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// Whether the path or anything below it is a member.
    pub fn has_any_under(&self, path: &[PathElement]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    fn node(&self, path: &[PathElement]) -> Option<&FieldSet> {
        let mut node = self;
        for pe in path {
            node = node.children.get(pe)?;
        }
        Some(node)
    }

    /// Removes one member path (members below it stay); prunes nodes left leading nowhere.
    pub fn remove(&mut self, path: &[PathElement]) {
        match path.split_first() {
            None => self.member = false,
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(first) {
                    child.remove(rest);
                    if child.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }

    /// True when no path is a member.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// All member paths, in tree order.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        fn walk(set: &FieldSet, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
            if set.member {
                out.push(prefix.clone());
            }
            for (pe, child) in &set.children {
                prefix.push(pe.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// Members of either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        for p in other.paths() {
            out.insert(&p);
        }
        out
    }

    /// Members of `self` that are not members of `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        for p in self.paths().into_iter().filter(|p| !other.contains(p)) {
            out.insert(&p);
        }
        out
    }

    /// Members of both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        for p in self.paths().into_iter().filter(|p| other.contains(p)) {
            out.insert(&p);
        }
        out
    }

    /// The field set of an object: its leaves, keyed-list items and set items, without the fields the
    /// API server never tracks (`apiVersion`, `kind`, `metadata.name`, `namespace`, `uid`, `resourceVersion`,
    /// `generation`, `creationTimestamp`, `managedFields`, ...).
    pub fn of_object(obj: &Value) -> FieldSet {
        let mut set = FieldSet::new();
        if let Value::Object(m) = tracked_view(obj) {
            for (k, v) in &m {
                walk_value(
                    v,
                    &mut vec![k.clone()],
                    &mut vec![PathElement::Field(k.clone())],
                    &mut set,
                );
            }
        }
        set
    }
}

const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// The object without the fields that are never tracked by field managers.
fn tracked_view(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.shift_remove("apiVersion");
        m.shift_remove("kind");
        if let Some(Value::Object(md)) = m.get_mut("metadata") {
            md.retain(|k, _| !UNTRACKED_METADATA.contains(&k.as_str()));
            if md.is_empty() {
                m.shift_remove("metadata");
            }
        }
    }
    v
}

/// The `k:` element identifying a keyed-list item, or `None` when a key field is missing.
fn item_key(item: &Value, keys: &[&str]) -> Option<PathElement> {
    let m = item.as_object()?;
    let mut key = Map::new();
    for k in keys {
        let v = match m.get(*k) {
            Some(v) => v.clone(),
            None => Value::String(KEY_DEFAULTS.iter().find(|(f, _)| f == k)?.1.to_string()),
        };
        key.insert(k.to_string(), v);
    }
    Some(PathElement::Key(canonical(&Value::Object(key))))
}

/// Keys of every item of a keyed list, or `None` if some item cannot be identified.
fn list_keys(items: &[Value], keys: &[&str]) -> Option<Vec<PathElement>> {
    items.iter().map(|i| item_key(i, keys)).collect()
}

/// Inserts the fields of `v` found at `fp` (`ctx` holds the field names leading there).
fn walk_value(v: &Value, ctx: &mut Vec<String>, fp: &mut Vec<PathElement>, set: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !is_atomic_map(ctx) => {
            for (k, c) in m {
                descend(ctx, fp, k, |ctx, fp| walk_value(c, ctx, fp, set));
            }
        }
        Value::Array(items) if !items.is_empty() => match list_kind(ctx) {
            ListKind::Map(keys) => match list_keys(items, keys) {
                Some(item_keys) => {
                    for (item, key) in items.iter().zip(item_keys) {
                        fp.push(key);
                        walk_item(item, ctx, fp, set);
                        fp.pop();
                    }
                }
                None => set.insert(fp),
            },
            ListKind::Set => {
                for item in items {
                    fp.push(PathElement::Value(canonical(item)));
                    set.insert(fp);
                    fp.pop();
                }
            }
            ListKind::Atomic => set.insert(fp),
        },
        _ => set.insert(fp),
    }
}

/// Inserts a keyed-list item at `fp` (already ending in its `k:` element) and its fields.
fn walk_item(item: &Value, ctx: &mut Vec<String>, fp: &mut Vec<PathElement>, set: &mut FieldSet) {
    set.insert(fp);
    if let Value::Object(m) = item {
        for (k, c) in m {
            descend(ctx, fp, k, |ctx, fp| walk_value(c, ctx, fp, set));
        }
    }
}

fn descend<R>(
    ctx: &mut Vec<String>,
    fp: &mut Vec<PathElement>,
    key: &str,
    f: impl FnOnce(&mut Vec<String>, &mut Vec<PathElement>) -> R,
) -> R {
    ctx.push(key.to_string());
    fp.push(PathElement::Field(key.to_string()));
    let r = f(ctx, fp);
    fp.pop();
    ctx.pop();
    r
}

/// Compares two tracked views: fields added or modified go to `changed`, fields removed to `removed`.
fn compare(
    before: &Value,
    after: &Value,
    ctx: &mut Vec<String>,
    fp: &mut Vec<PathElement>,
    changed: &mut FieldSet,
    removed: &mut FieldSet,
) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) if !is_atomic_map(ctx) && !a.is_empty() && !b.is_empty() => {
            for (k, av) in a {
                descend(ctx, fp, k, |ctx, fp| match b.get(k) {
                    Some(bv) => compare(bv, av, ctx, fp, changed, removed),
                    None => walk_value(av, ctx, fp, changed),
                });
            }
            for (k, bv) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                descend(ctx, fp, k, |ctx, fp| walk_value(bv, ctx, fp, removed));
            }
        }
        (Value::Array(b), Value::Array(a)) if !a.is_empty() && !b.is_empty() => match list_kind(ctx) {
            ListKind::Map(keys) => match (list_keys(b, keys), list_keys(a, keys)) {
                (Some(bk), Some(ak)) => {
                    for (item, key) in a.iter().zip(&ak) {
                        fp.push(key.clone());
                        match bk.iter().position(|k| k == key) {
                            Some(i) => compare(&b[i], item, ctx, fp, changed, removed),
                            None => walk_item(item, ctx, fp, changed),
                        }
                        fp.pop();
                    }
                    for (item, key) in b.iter().zip(&bk).filter(|(_, k)| !ak.contains(k)) {
                        fp.push(key.clone());
                        walk_item(item, ctx, fp, removed);
                        fp.pop();
                    }
                }
                _ if a != b => changed.insert(fp),
                _ => {}
            },
            ListKind::Set => {
                for (list, other, out) in [(a, b, &mut *changed), (b, a, &mut *removed)] {
                    for item in list.iter().filter(|i| !other.contains(i)) {
                        fp.push(PathElement::Value(canonical(item)));
                        out.insert(fp);
                        fp.pop();
                    }
                }
            }
            ListKind::Atomic if a != b => changed.insert(fp),
            ListKind::Atomic => {}
        },
        _ if before != after => {
            // Replaced wholesale (scalar change, type change, empty <-> non-empty container).
            let (mut added, mut gone) = (FieldSet::new(), FieldSet::new());
            walk_value(after, ctx, fp, &mut added);
            walk_value(before, ctx, fp, &mut gone);
            for p in gone.difference(&added).paths() {
                removed.insert(&p);
            }
            for p in added.paths() {
                changed.insert(&p);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Navigating objects by field path.

fn matches_key(item: &Value, key: &str) -> bool {
    let Ok(key) = serde_json::from_str::<Map<String, Value>>(key) else {
        return false;
    };
    key.iter().all(|(k, v)| match item.get(k) {
        Some(have) => have == v,
        None => KEY_DEFAULTS.iter().any(|(f, d)| f == k && v == d),
    })
}

fn child<'a>(v: &'a Value, pe: &PathElement) -> Option<&'a Value> {
    match pe {
        PathElement::Field(f) => v.get(f),
        PathElement::Key(k) => v.as_array()?.iter().find(|i| matches_key(i, k)),
        PathElement::Value(s) => v.as_array()?.iter().find(|i| canonical(i) == *s),
        PathElement::Index(i) => v.get(*i),
    }
}

fn get_path<'a>(v: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, pe| child(cur, pe))
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Position of the element of list `a` that `pe` designates.
fn list_position(a: &[Value], pe: &PathElement) -> Option<usize> {
    match pe {
        PathElement::Key(k) => a.iter().position(|i| matches_key(i, k)),
        PathElement::Value(s) => a.iter().position(|i| canonical(i) == *s),
        PathElement::Index(i) => (*i < a.len()).then_some(*i),
        PathElement::Field(_) => None,
    }
}

/// Removes the value at `path`; containers left empty by the removal are removed too (the root is kept).
fn remove_path(v: &mut Value, path: &[PathElement]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match v {
        Value::Object(m) => {
            let PathElement::Field(f) = first else {
                return false;
            };
            if rest.is_empty() {
                return m.shift_remove(f).is_some();
            }
            let Some(c) = m.get_mut(f) else { return false };
            let removed = remove_path(c, rest);
            if removed && is_empty_container(c) {
                m.shift_remove(f);
            }
            removed
        }
        Value::Array(a) => {
            let Some(i) = list_position(a, first) else {
                return false;
            };
            if rest.is_empty() {
                a.remove(i);
                return true;
            }
            let removed = remove_path(&mut a[i], rest);
            if removed && is_empty_container(&a[i]) {
                a.remove(i);
            }
            removed
        }
        _ => false,
    }
}

/// Whether the path names a key field of a keyed-list item (removed only together with the item).
fn is_key_field(path: &[PathElement]) -> bool {
    match path {
        [.., PathElement::Key(k), PathElement::Field(f)] => {
            serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|k| k.contains_key(f))
        }
        _ => false,
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// `live.Merge(config)` of structured-merge-diff: granular maps merge, keyed lists merge by item key,
/// sets union, everything else is replaced by the config. `null` in the config removes the field.
fn ssa_merge(live: &mut Value, config: &Value, ctx: &mut Vec<String>) {
    match (&mut *live, config) {
        (Value::Object(l), Value::Object(c)) if !is_atomic_map(ctx) => {
            for (k, cv) in c {
                ctx.push(k.clone());
                if cv.is_null() {
                    l.shift_remove(k);
                } else if let Some(lv) = l.get_mut(k) {
                    ssa_merge(lv, cv, ctx);
                } else {
                    l.insert(k.clone(), strip_nulls(cv));
                }
                ctx.pop();
            }
        }
        (Value::Array(l), Value::Array(c)) => match list_kind(ctx) {
            ListKind::Map(keys) if list_keys(l, keys).is_some() && list_keys(c, keys).is_some() => {
                for ci in c {
                    let key = item_key(ci, keys);
                    match l.iter_mut().find(|li| item_key(li, keys) == key) {
                        Some(li) => ssa_merge(li, ci, ctx),
                        None => l.push(strip_nulls(ci)),
                    }
                }
            }
            ListKind::Set => {
                for ci in c {
                    if !l.contains(ci) {
                        l.push(ci.clone());
                    }
                }
            }
            _ => *live = strip_nulls(config),
        },
        _ => *live = strip_nulls(config),
    }
}

// ---------------------------------------------------------------------------------------------
// Managed fields entries.

#[derive(Debug, Clone)]
struct ManagedEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl ManagedEntry {
    fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(ManagedEntry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation")?,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").filter(|s| !s.is_empty()),
            fields: v
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }

    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }

    /// How conflict messages name the manager (`printManager` in the API server).
    fn label(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn seconds(&self) -> i64 {
        self.time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp())
    }
}

fn read_managed_fields(obj: &Value) -> Vec<ManagedEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(ManagedEntry::from_json).collect())
        .unwrap_or_default()
}

/// Writes entries sorted as the API server sorts them (operation, time, manager, apiVersion, subresource),
/// dropping empty ones; no entries removes `metadata.managedFields`.
fn write_managed_fields(obj: &mut Value, mut entries: Vec<ManagedEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|p, q| {
        (
            p.operation.as_str(),
            p.seconds(),
            p.manager.as_str(),
            p.api_version.as_str(),
            &p.subresource,
        )
            .cmp(&(
                q.operation.as_str(),
                q.seconds(),
                q.manager.as_str(),
                q.api_version.as_str(),
                &q.subresource,
            ))
    });
    let Value::Object(root) = obj else { return };
    let md = root.entry("metadata").or_insert_with(|| json!({}));
    let Value::Object(md) = md else { return };
    if entries.is_empty() {
        md.shift_remove("managedFields");
    } else {
        md.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(ManagedEntry::to_json).collect()),
        );
    }
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(Value::Object(md)) = v.get_mut("metadata") {
        md.shift_remove("managedFields");
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Server-side apply.

/// Server-side apply refused because fields owned by other managers would change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ApplyConflict {
    /// `(manager, field path)` pairs, e.g. `("kubectl-client-side-apply", ".spec.replicas")`.
    pub conflicts: Vec<(String, String)>,
    /// How the API server names each conflict's manager (`"m" using apps/v1`), parallel to `conflicts`.
    labels: Vec<String>,
}

impl ApplyConflict {
    /// The API server's message: `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`.
    pub fn message(&self) -> String {
        let n = self.conflicts.len();
        let body = if n == 1 {
            format!("conflict with {}: {}", self.labels[0], self.conflicts[0].1)
        } else {
            let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (label, (_, path)) in self.labels.iter().zip(&self.conflicts) {
                by_manager.entry(label).or_default().push(path);
            }
            by_manager
                .iter()
                .map(|(label, paths)| format!("conflicts with {label}:\n- {}", paths.join("\n- ")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "Apply failed with {n} conflict{}: {body}",
            if n == 1 { "" } else { "s" }
        )
    }

    /// `details.causes` of the 409 `Status`: one `FieldManagerConflict` cause per conflict.
    pub fn causes(&self) -> Value {
        Value::Array(
            self.labels
                .iter()
                .zip(&self.conflicts)
                .map(|(label, (_, path))| {
                    json!({"type": "FieldManagerConflict", "message": format!("conflict with {label}"), "field": path})
                })
                .collect(),
        )
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (`None` creates), returning the new object with
/// `metadata.managedFields` updated; `now` is the RFC 3339 timestamp recorded in the entry.
///
/// A faithful simplification of structured-merge-diff: the applier's field set is the set of leaves,
/// keyed-list items and set items of `applied`. A field owned by another manager whose value would change
/// is a conflict unless `force`, which moves ownership to the applier. Fields the applier owned in its
/// previous apply and no longer specifies are removed unless some other manager owns them (or fields
/// below them). Untracked metadata in `applied` (`managedFields`, `resourceVersion`, `uid`, ...) is ignored.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyConflict> {
    let mut config = applied.clone();
    if let Some(Value::Object(md)) = config.get_mut("metadata") {
        md.retain(|k, _| k == "name" || k == "namespace" || !UNTRACKED_METADATA.contains(&k.as_str()));
    }
    let mut entries = live.map(read_managed_fields).unwrap_or_default();
    let live_plain = live.map(without_managed_fields).unwrap_or_else(|| json!({}));
    let mut merged = live_plain.clone();
    ssa_merge(&mut merged, &config, &mut Vec::new());

    let new_set = FieldSet::of_object(&config);
    let me = entries.iter().position(|e| e.is(manager, "Apply"));
    let last_set = me.map(|i| entries[i].fields.clone()).unwrap_or_default();

    let mut conflicts = Vec::new();
    for (i, entry) in entries.iter().enumerate().filter(|(i, _)| Some(*i) != me) {
        for path in entry.fields.intersection(&new_set).paths() {
            let is_item_node = new_set.node(&path).is_some_and(|n| !n.children.is_empty());
            if !is_item_node && get_path(&live_plain, &path) != get_path(&merged, &path) {
                conflicts.push((i, path));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyConflict {
            labels: conflicts.iter().map(|(i, _)| entries[*i].label()).collect(),
            conflicts: conflicts
                .iter()
                .map(|(i, p)| (entries[*i].manager.clone(), path_string(p)))
                .collect(),
        });
    }
    for (i, path) in &conflicts {
        entries[*i].fields.remove(path);
    }

    let others = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != me)
        .fold(FieldSet::new(), |acc, (_, e)| acc.union(&e.fields));
    for path in last_set.difference(&new_set).paths() {
        if !is_key_field(&path) && !new_set.has_any_under(&path) && !others.has_any_under(&path) {
            remove_path(&mut merged, &path);
        }
    }

    let entry = ManagedEntry {
        manager: manager.to_string(),
        operation: "Apply".to_string(),
        api_version: config
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        time: Some(now.to_string()),
        subresource: None,
        fields: new_set,
    };
    match me {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    write_managed_fields(&mut merged, entries);
    Ok(merged)
}

/// Records a non-apply write (create, update, patch) by `manager` in `after`'s `metadata.managedFields`:
/// fields added or changed relative to `before` become owned by `(manager, operation)` and are taken from
/// every other manager; removed fields are dropped from every manager.
///
/// Existing entries come from `after` when the client sent a non-empty list, otherwise from `before`;
/// a client sending `[{}]` strips managed fields entirely, as with the API server.
pub fn record_update(before: Option<&Value>, after: &mut Value, manager: &str, operation: &str, now: &str) {
    let sent = after
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned();
    let mut entries = match sent {
        Some(list) if list.len() == 1 && list[0] == json!({}) => {
            write_managed_fields(after, Vec::new());
            return;
        }
        Some(list) if !list.is_empty() => list.iter().filter_map(ManagedEntry::from_json).collect(),
        _ => before.map(read_managed_fields).unwrap_or_default(),
    };
    let before_view = before.map(tracked_view).unwrap_or_else(|| json!({}));
    let after_view = tracked_view(after);
    let (mut changed, mut removed) = (FieldSet::new(), FieldSet::new());
    compare(
        &before_view,
        &after_view,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut changed,
        &mut removed,
    );

    let mine = entries.iter().position(|e| e.is(manager, operation));
    for (i, e) in entries.iter_mut().enumerate() {
        e.fields = if Some(i) == mine {
            e.fields.union(&changed).difference(&removed)
        } else {
            e.fields.difference(&changed).difference(&removed)
        };
    }
    let api_version = after
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match mine {
        Some(i) if !changed.is_empty() => {
            entries[i].time = Some(now.to_string());
            entries[i].api_version = api_version;
        }
        None if !changed.is_empty() => entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version,
            time: Some(now.to_string()),
            subresource: None,
            fields: changed,
        }),
        _ => {}
    }
    write_managed_fields(after, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-01-01T00:01:00Z";

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "uid": "u-1", "resourceVersion": "7", "generation": 1,
                         "creationTimestamp": T0},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "nginx:1.25", "args": ["--a", "--b"],
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                             "ports": [{"containerPort": 80, "name": "http"}]},
                            {"name": "sidecar", "image": "busybox", "command": ["sleep", "3600"]}
                        ],
                        "tolerations": [{"key": "k", "operator": "Exists"}]
                    }
                }
            }
        })
    }

    fn service() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "finalizers": ["a", "b"]},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "https", "port": 443, "targetPort": 8443}
            ]}
        })
    }

    fn configmap(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cfg", "namespace": "default"}, "data": data})
    }

    fn containers(d: &Value) -> &Vec<Value> {
        d.pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .unwrap()
    }

    fn names(list: &[Value]) -> Vec<&str> {
        list.iter().map(|i| i["name"].as_str().unwrap()).collect()
    }

    fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
        obj.pointer("/metadata/managedFields")?
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
    }

    fn owns(obj: &Value, manager: &str, operation: &str, pointer: &str) -> bool {
        entry(obj, manager, operation)
            .and_then(|e| e["fieldsV1"].pointer(pointer))
            .is_some()
    }

    // --- merge patch and JSON patch -----------------------------------------------------------

    #[test]
    fn given_merge_patch_with_null_when_applied_then_key_deleted_and_others_kept() {
        let mut cm = configmap(json!({"a": "1", "b": "2"}));
        merge_patch(&mut cm, &json!({"data": {"a": null, "c": "3"}}));
        assert_eq!(cm["data"], json!({"b": "2", "c": "3"}));
    }

    #[test]
    fn given_merge_patch_with_list_when_applied_then_list_replaced() {
        let mut d = deployment();
        merge_patch(
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "only"}]}}}}),
        );
        assert_eq!(containers(&d), &vec![json!({"name": "only"})]);
    }

    #[test]
    fn given_json_patch_when_applied_then_operations_run_in_order() {
        let mut cm = configmap(json!({"a": "1"}));
        json_patch(
            &mut cm,
            &json!([
                {"op": "test", "path": "/data/a", "value": "1"},
                {"op": "add", "path": "/data/b", "value": "2"},
                {"op": "replace", "path": "/data/a", "value": "x"},
                {"op": "remove", "path": "/metadata/namespace"}
            ]),
        )
        .unwrap();
        assert_eq!(cm["data"], json!({"a": "x", "b": "2"}));
        assert!(cm["metadata"].get("namespace").is_none());
    }

    #[test]
    fn given_failing_json_patch_when_applied_then_422_and_target_unchanged() {
        let mut cm = configmap(json!({"a": "1"}));
        let before = cm.clone();
        let err = json_patch(
            &mut cm,
            &json!([{"op": "add", "path": "/data/b", "value": "2"}, {"op": "remove", "path": "/data/zz"}]),
        )
        .unwrap_err();
        assert_eq!(err.status_code(), 422);
        assert_eq!(
            err.to_string(),
            "doc is missing path: \"/data/zz\": missing value"
        );
        assert_eq!(cm, before);
        let err = json_patch(&mut cm, &json!([{"op": "test", "path": "/data/a", "value": "2"}])).unwrap_err();
        assert_eq!(err.to_string(), "testing value /data/a failed: test failed");
    }

    #[test]
    fn given_malformed_json_patch_when_applied_then_400() {
        let mut cm = configmap(json!({}));
        let err = json_patch(&mut cm, &json!({"op": "add"})).unwrap_err();
        assert_eq!(err.status_code(), 400);
        assert!(err.to_string().starts_with("invalid JSON patch: "), "{err}");
        let err = json_patch(&mut cm, &json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err();
        assert_eq!(err.status_code(), 400);
    }

    // --- strategic merge patch ----------------------------------------------------------------

    #[test]
    fn given_kubectl_patch_adding_env_var_when_applied_then_other_env_and_containers_kept() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                "env": [{"name": "C", "value": "3"}],
                "name": "app"
            }]
        }}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        let c = containers(&d);
        assert_eq!(names(c), vec!["app", "sidecar"]);
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(c[0]["image"], "nginx:1.25");
        assert_eq!(c[0]["ports"], json!([{"containerPort": 80, "name": "http"}]));
    }

    #[test]
    fn given_set_element_order_when_new_item_in_middle_then_list_follows_order() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "app",
            "$setElementOrder/env": [{"name": "A"}, {"name": "C"}, {"name": "B"}],
            "env": [{"name": "C", "value": "3"}, {"name": "B", "value": "two"}]
        }]}}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(
            containers(&d)[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}, {"name": "B", "value": "two"}])
        );
    }

    #[test]
    fn given_only_set_element_order_when_applied_then_existing_list_reordered() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(names(containers(&d)), vec!["sidecar", "app"]);
    }

    #[test]
    fn given_patch_delete_directive_on_container_when_applied_then_only_that_container_removed() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "containers": [{"$patch": "delete", "name": "sidecar"}]}}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(names(containers(&d)), vec!["app"]);
        assert_eq!(containers(&d)[0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn given_patch_replace_element_in_list_when_applied_then_list_is_exactly_the_patch() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "solo", "image": "alpine"}, {"$patch": "replace"}]}}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(containers(&d), &vec![json!({"name": "solo", "image": "alpine"})]);
    }

    #[test]
    fn given_patch_replace_on_map_when_applied_then_map_replaced() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"metadata": {"labels": {"$patch": "replace", "tier": "front"}}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"tier": "front"}));
        strategic_merge_patch(&mut d, &json!({"spec": {"strategy": {"$patch": "delete"}}})).unwrap();
        assert_eq!(d["spec"]["strategy"], json!({}));
        strategic_merge_patch(
            &mut d,
            &json!({"metadata": {"labels": {"$patch": "merge", "x": "y"}}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"tier": "front", "x": "y"}));
    }

    #[test]
    fn given_lists_without_merge_key_when_patched_then_replaced_atomically() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": "other", "operator": "Exists"}],
            "containers": [{"name": "app", "args": ["--c"]}]
        }}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "other", "operator": "Exists"}])
        );
        assert_eq!(containers(&d)[0]["args"], json!(["--c"]));
        assert_eq!(containers(&d)[1]["command"], json!(["sleep", "3600"]));
    }

    #[test]
    fn given_container_ports_and_service_ports_when_patched_then_merged_by_their_own_keys() {
        let mut d = deployment();
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 9090}]}
        ]}}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(
            containers(&d)[0]["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 9090}])
        );
        let mut s = service();
        strategic_merge_patch(
            &mut s,
            &json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}]}}),
        )
        .unwrap();
        assert_eq!(
            s["spec"]["ports"],
            json!([{"name": "http", "port": 80, "targetPort": 8080}, {"name": "https", "port": 443, "targetPort": 9443}])
        );
    }

    #[test]
    fn given_finalizers_when_patched_then_union_and_delete_from_primitive_list() {
        let mut s = service();
        let patch = json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}});
        strategic_merge_patch(&mut s, &patch).unwrap();
        assert_eq!(s["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn given_retain_keys_when_strategy_type_changes_then_stale_fields_cleared() {
        let mut d = deployment();
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        strategic_merge_patch(&mut d, &patch).unwrap();
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        let bad = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 2}}}});
        assert!(matches!(
            strategic_merge_patch(&mut d, &bad),
            Err(PatchError::BadDirective(_))
        ));
    }

    #[test]
    fn given_null_in_strategic_patch_when_applied_then_field_removed_and_nulls_not_stored() {
        let mut d = deployment();
        strategic_merge_patch(
            &mut d,
            &json!({"metadata": {"labels": {"app": null, "new": "1"},
            "annotations": {"a": "x", "gone": null}}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"new": "1"}));
        assert_eq!(d["metadata"]["annotations"], json!({"a": "x"}));
    }

    #[test]
    fn given_owner_references_and_conditions_when_patched_then_merged_by_uid_and_type() {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "ownerReferences": [{"uid": "1", "name": "rs-a"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]}});
        strategic_merge_patch(
            &mut p,
            &json!({
            "metadata": {"ownerReferences": [{"uid": "2", "name": "rs-b"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .unwrap();
        assert_eq!(p["metadata"]["ownerReferences"].as_array().unwrap().len(), 2);
        assert_eq!(
            p["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}])
        );
    }

    #[test]
    fn given_invalid_strategic_patch_when_applied_then_error_and_target_unchanged() {
        let mut d = deployment();
        let before = d.clone();
        let err = strategic_merge_patch(
            &mut d,
            &json!({"metadata": {"labels": {"x": "1"}}, "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "map: {\"image\":\"x\"} does not contain declared merge key: name"
        );
        assert_eq!(err.status_code(), 422);
        assert_eq!(d, before);
        let err = strategic_merge_patch(&mut d, &json!({"spec": {"$patch": "frob"}})).unwrap_err();
        assert_eq!(err.to_string(), "unknown patch type: frob in map: {}");
        let err = strategic_merge_patch(&mut d, &json!([1])).unwrap_err();
        assert_eq!(err.status_code(), 400);
    }

    // --- field sets ---------------------------------------------------------------------------

    #[test]
    fn given_fields_v1_when_parsed_and_written_then_round_trips() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}
        });
        let set = FieldSet::from_fields_v1(&v);
        assert_eq!(set.to_fields_v1(), v);
        let paths: Vec<String> = set.paths().iter().map(|p| path_string(p)).collect();
        assert_eq!(
            paths,
            vec![
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.template.spec.containers[name=\"nginx\"]",
                ".spec.template.spec.containers[name=\"nginx\"].image",
                ".spec.template.spec.containers[name=\"nginx\"].name",
            ]
        );
    }

    #[test]
    fn given_two_field_sets_when_combined_then_union_difference_intersection_hold() {
        let f = |s: &str| PathElement::Field(s.to_string());
        let mut a = FieldSet::new();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("data"), f("x")]);
        let mut b = FieldSet::new();
        b.insert(&[f("spec"), f("replicas")]);
        b.insert(&[f("data"), f("y")]);
        assert_eq!(a.union(&b).paths().len(), 3);
        assert_eq!(a.intersection(&b).paths(), vec![vec![f("spec"), f("replicas")]]);
        assert_eq!(a.difference(&b).paths(), vec![vec![f("data"), f("x")]]);
        assert!(a.has_any_under(&[f("data")]) && !a.contains(&[f("data")]));
        a.remove(&[f("data"), f("x")]);
        assert!(!a.has_any_under(&[f("data")]));
        assert!(a.difference(&b).is_empty());
    }

    #[test]
    fn given_deployment_when_field_set_computed_then_keys_atomics_and_untracked_fields_handled() {
        let set = FieldSet::of_object(&deployment());
        let fv = set.to_fields_v1();
        let c = &fv["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:args"], json!({}));
        assert_eq!(
            c["f:env"]["k:{\"name\":\"A\"}"],
            json!({".": {}, "f:name": {}, "f:value": {}})
        );
        assert_eq!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:name"],
            json!({})
        );
        assert_eq!(fv["f:spec"]["f:selector"], json!({}));
        assert_eq!(fv["f:spec"]["f:template"]["f:spec"]["f:tolerations"], json!({}));
        assert_eq!(fv["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        assert!(fv.get("f:apiVersion").is_none() && fv.get("f:kind").is_none());
        let path: Vec<String> = set.paths().iter().map(|p| path_string(p)).collect();
        assert!(
            path.contains(
                &".spec.template.spec.containers[name=\"app\"].ports[containerPort=80,protocol=\"TCP\"].name"
                    .to_string()
            )
        );
    }

    // --- server-side apply and update tracking ------------------------------------------------

    fn applied_deployment(replicas: i64, labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]}
                }
            }
        })
    }

    #[test]
    fn given_no_live_object_when_applied_then_created_with_apply_entry() {
        let obj = apply(
            None,
            &applied_deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            T0,
        )
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 2);
        assert_eq!(obj["metadata"]["name"], "web");
        let mf = obj["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1);
        assert_eq!(
            mf[0],
            json!({
                "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "time": T0,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:selector": {},
                        "f:template": {
                            "f:metadata": {"f:labels": {"f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn given_two_appliers_when_second_changes_owned_field_then_conflict_then_force_moves_ownership() {
        let live = apply(
            None,
            &applied_deployment(3, json!({"app": "web"})),
            "ci",
            false,
            T0,
        )
        .unwrap();
        let err = apply(
            Some(&live),
            &applied_deployment(5, json!({"app": "web"})),
            "ops",
            false,
            T1,
        )
        .unwrap_err();
        assert_eq!(
            err.conflicts,
            vec![("ci".to_string(), ".spec.replicas".to_string())]
        );
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"ci\": .spec.replicas"
        );
        assert_eq!(err.causes()[0]["field"], ".spec.replicas");

        let forced = apply(
            Some(&live),
            &applied_deployment(5, json!({"app": "web"})),
            "ops",
            true,
            T1,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        assert!(owns(&forced, "ops", "Apply", "/f:spec/f:replicas"));
        assert!(!owns(&forced, "ci", "Apply", "/f:spec/f:replicas"));
        // Unchanged fields stay shared.
        assert!(owns(&forced, "ci", "Apply", "/f:spec/f:template"));
        assert!(owns(&forced, "ops", "Apply", "/f:spec/f:template"));
    }

    #[test]
    fn given_two_appliers_with_same_values_when_applied_then_no_conflict_and_shared_ownership() {
        let live = apply(
            None,
            &applied_deployment(3, json!({"app": "web"})),
            "ci",
            false,
            T0,
        )
        .unwrap();
        let out = apply(
            Some(&live),
            &applied_deployment(3, json!({"app": "web"})),
            "ops",
            false,
            T1,
        )
        .unwrap();
        assert!(owns(&out, "ci", "Apply", "/f:spec/f:replicas"));
        assert!(owns(&out, "ops", "Apply", "/f:spec/f:replicas"));
    }

    #[test]
    fn given_field_owned_by_update_manager_when_applied_then_conflict_names_api_version() {
        let mut created = deployment();
        record_update(None, &mut created, "kubectl-client-side-apply", "Update", T0);
        let err = apply(
            Some(&created),
            &applied_deployment(5, json!({"app": "web"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn given_several_conflicts_when_applied_then_message_lists_them_per_manager() {
        let live = apply(
            None,
            &applied_deployment(3, json!({"app": "web"})),
            "ci",
            false,
            T0,
        )
        .unwrap();
        let mut next = applied_deployment(5, json!({"app": "web"}));
        next["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        let err = apply(Some(&live), &next, "ops", false, T1).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 2 conflicts: conflicts with \"ci\":\n- .spec.replicas\n\
             - .spec.template.spec.containers[name=\"app\"].image"
        );
    }

    #[test]
    fn given_reapply_without_a_label_when_applied_then_label_removed_unless_owned_by_another() {
        let live = apply(
            None,
            &applied_deployment(2, json!({"app": "web", "tier": "front", "team": "a"})),
            "ci",
            false,
            T0,
        )
        .unwrap();
        let mut with_other = live.clone();
        with_other["metadata"]["labels"]["owner"] = json!("ops");
        record_update(Some(&live), &mut with_other, "ops-tool", "Update", T0);
        // `ops-tool` also applies `team` with the same value: it becomes a co-owner.
        let with_other = apply(
            Some(&with_other),
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"team": "a"}}}),
            "ops-apply",
            false,
            T0,
        )
        .unwrap();
        let out = apply(
            Some(&with_other),
            &applied_deployment(2, json!({"app": "web"})),
            "ci",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "team": "a", "owner": "ops"})
        );
        assert!(!owns(&out, "ci", "Apply", "/f:metadata/f:labels/f:tier"));
        assert!(!owns(&out, "ci", "Apply", "/f:metadata/f:labels/f:team"));
        assert!(owns(&out, "ops-apply", "Apply", "/f:metadata/f:labels/f:team"));
    }

    #[test]
    fn given_reapply_without_a_container_or_config_key_when_applied_then_removed() {
        let mut two = applied_deployment(2, json!({"app": "web"}));
        two["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "app", "image": "nginx"}, {"name": "sidecar", "image": "busybox"}]);
        let live = apply(None, &two, "ci", false, T0).unwrap();
        let out = apply(
            Some(&live),
            &applied_deployment(2, json!({"app": "web"})),
            "ci",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(names(containers(&out)), vec!["app"]);
        assert_eq!(containers(&out)[0]["image"], "nginx:1.25");

        let cm = apply(None, &configmap(json!({"a": "1", "b": "2"})), "ci", false, T0).unwrap();
        let cm = apply(Some(&cm), &configmap(json!({"a": "1"})), "ci", false, T1).unwrap();
        assert_eq!(cm["data"], json!({"a": "1"}));
        assert_eq!(entry(&cm, "ci", "Apply").unwrap()["time"], T1);
    }

    #[test]
    fn given_apply_onto_live_object_when_applied_then_unmanaged_fields_and_metadata_preserved() {
        let mut live = deployment();
        record_update(None, &mut live, "kube-controller-manager", "Update", T0);
        let out = apply(
            Some(&live),
            &applied_deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(out["metadata"]["uid"], "u-1");
        assert_eq!(out["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(names(containers(&out)), vec!["app", "sidecar"]);
        assert_eq!(containers(&out)[0]["env"].as_array().unwrap().len(), 2);
        let mf = out["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf[0]["operation"], "Apply");
        assert_eq!(mf[1]["operation"], "Update");
    }

    #[test]
    fn given_create_when_recorded_then_manager_owns_all_tracked_fields() {
        let mut d = deployment();
        record_update(None, &mut d, "kubectl-create", "Update", T0);
        let e = entry(&d, "kubectl-create", "Update").unwrap();
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["time"], T0);
        let fv = &e["fieldsV1"];
        assert!(fv["f:metadata"].get("f:name").is_none());
        assert!(fv["f:metadata"].get("f:uid").is_none());
        assert!(fv["f:metadata"].get("f:resourceVersion").is_none());
        assert_eq!(fv["f:metadata"]["f:labels"], json!({"f:app": {}}));
        assert_eq!(fv["f:spec"]["f:replicas"], json!({}));
        assert_eq!(
            fv["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"sidecar\"}"]["."],
            json!({})
        );
    }

    #[test]
    fn given_scale_by_another_manager_when_recorded_then_replicas_change_owner() {
        let mut d = deployment();
        record_update(None, &mut d, "kubectl-create", "Update", T0);
        let before = d.clone();
        d["spec"]["replicas"] = json!(5);
        record_update(Some(&before), &mut d, "kubectl-scale", "Update", T1);
        assert!(owns(&d, "kubectl-scale", "Update", "/f:spec/f:replicas"));
        assert!(!owns(&d, "kubectl-create", "Update", "/f:spec/f:replicas"));
        assert!(owns(&d, "kubectl-create", "Update", "/f:spec/f:selector"));
        assert_eq!(
            entry(&d, "kubectl-scale", "Update").unwrap()["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
    }

    #[test]
    fn given_update_removing_a_field_when_recorded_then_dropped_from_owner() {
        let mut cm = configmap(json!({"a": "1", "b": "2"}));
        record_update(None, &mut cm, "writer", "Update", T0);
        let before = cm.clone();
        cm["data"].as_object_mut().unwrap().shift_remove("b");
        record_update(Some(&before), &mut cm, "editor", "Update", T1);
        assert!(!owns(&cm, "writer", "Update", "/f:data/f:b"));
        assert!(owns(&cm, "writer", "Update", "/f:data/f:a"));
        assert!(entry(&cm, "editor", "Update").is_none());
    }

    #[test]
    fn given_unchanged_update_when_recorded_then_no_entry_added() {
        let mut cm = configmap(json!({"a": "1"}));
        record_update(None, &mut cm, "writer", "Update", T0);
        let before = cm.clone();
        record_update(Some(&before), &mut cm, "noop", "Update", T1);
        assert_eq!(cm["metadata"]["managedFields"].as_array().unwrap().len(), 1);
        assert_eq!(cm, before);
    }

    #[test]
    fn given_client_sends_single_empty_entry_when_recorded_then_managed_fields_stripped() {
        let mut cm = configmap(json!({"a": "1"}));
        record_update(None, &mut cm, "writer", "Update", T0);
        let before = cm.clone();
        cm["metadata"]["managedFields"] = json!([{}]);
        record_update(Some(&before), &mut cm, "stripper", "Update", T1);
        assert!(cm["metadata"].get("managedFields").is_none());
    }
}
