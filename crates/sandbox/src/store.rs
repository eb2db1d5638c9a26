//! Object storage for the sandbox: versioned tables, watch history and list snapshots.
//!
//! Like etcd under a real API server, every write gets the next global revision (the objects'
//! `resourceVersion`). Tables are persistent ordered maps, so a list snapshot is an O(1) clone: paginated
//! lists are served from the snapshot taken by their first page, exactly as consistent as the real thing.
//! A bounded history of changes lets watches resume from a resourceVersion; older ones get `410 Gone`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use im::OrdMap;
use serde_json::Value;
use tokio::sync::broadcast;

use super::registry::ResourceId;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Orders like etcd keys.
pub type ObjKey = (String, String);
/// One resource's objects at one revision.
pub type Table = OrdMap<ObjKey, Arc<Value>>;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_watch_type(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One committed write.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub resource: ResourceId,
    pub kind: ChangeKind,
    /// The object after the change (for deletes: the last state, with the delete's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change (modifications and deletes).
    pub old: Option<Arc<Value>>,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A create found an object with the same key.
    #[error("object already exists")]
    AlreadyExists,
    /// An update or delete found no object.
    #[error("object not found")]
    NotFound,
    /// An update or delete carried a resourceVersion that is no longer current.
    #[error("resourceVersion precondition failed")]
    Conflict,
    /// A watch or list asked for a revision older than what is retained.
    #[error("revision {requested} is older than the oldest retained revision {oldest}")]
    Compacted { requested: u64, oldest: u64 },
}

/// Expectation on the current state for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Create: no object may exist.
    Absent,
    /// Update: the object must exist, and have this revision if given.
    Present(Option<u64>),
}

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Changes retained for watch resume.
    pub history: usize,
    /// List snapshots retained for `continue` tokens.
    pub snapshots: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            history: 50_000,
            snapshots: 256,
        }
    }
}

struct State {
    rv: u64,
    tables: HashMap<ResourceId, TableState>,
    history: VecDeque<Arc<Change>>,
    /// Watches may resume from any revision >= this one.
    oldest_resumable: u64,
    snapshots: VecDeque<(ResourceId, u64, Table)>,
    /// Owner uid → the objects whose ownerReferences name it (for garbage collection).
    dependents: HashMap<String, std::collections::BTreeSet<(ResourceId, String, String)>>,
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

impl State {
    fn index(&mut self, id: &ResourceId, old: Option<&Value>, new: Option<&Value>) {
        if let Some(old) = old {
            let key = key_of(old);
            for uid in owner_uids(old) {
                if let Some(set) = self.dependents.get_mut(uid) {
                    set.remove(&(id.clone(), key.0.clone(), key.1.clone()));
                    if set.is_empty() {
                        self.dependents.remove(uid);
                    }
                }
            }
        }
        if let Some(new) = new {
            let key = key_of(new);
            for uid in owner_uids(new) {
                self.dependents.entry(uid.to_string()).or_default().insert((
                    id.clone(),
                    key.0.clone(),
                    key.1.clone(),
                ));
            }
        }
    }
}

#[derive(Default, Clone)]
struct TableState {
    objects: Table,
    /// Revision of the last write to this table: a snapshot at any later revision equals `objects`.
    last_write: u64,
}

/// How a watch begins: the retained changes after the requested revision, then the live stream.
pub struct WatchStart {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    pub rv: u64,
}

/// The sandbox's storage.
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Change>>,
    limits: StoreLimits,
}

fn key_of(obj: &Value) -> ObjKey {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// The revision recorded in an object.
pub fn object_rv(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

impl Store {
    pub fn new(limits: StoreLimits) -> Self {
        let (tx, _) = broadcast::channel(16_384);
        Store {
            state: Mutex::new(State {
                rv: 1,
                tables: HashMap::new(),
                history: VecDeque::new(),
                oldest_resumable: 1,
                snapshots: VecDeque::new(),
                dependents: HashMap::new(),
            }),
            tx,
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current global revision.
    pub fn revision(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, id: &ResourceId, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let st = self.lock();
        st.tables
            .get(id)?
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The whole table now, remembered so `continue` tokens at this revision can be served.
    pub fn snapshot(&self, id: &ResourceId) -> (u64, Table) {
        let mut st = self.lock();
        let rv = st.rv;
        let table = st.tables.get(id).map(|t| t.objects.clone()).unwrap_or_default();
        if st.snapshots.len() >= self.limits.snapshots {
            st.snapshots.pop_front();
        }
        st.snapshots.push_back((id.clone(), rv, table.clone()));
        (rv, table)
    }

    /// The table as it was at revision `rv` (for `continue` tokens), if still known.
    pub fn snapshot_at(&self, id: &ResourceId, rv: u64) -> Result<Table, StoreError> {
        let st = self.lock();
        if let Some((_, _, t)) = st.snapshots.iter().rev().find(|(i, r, _)| i == id && *r == rv) {
            return Ok(t.clone());
        }
        match st.tables.get(id) {
            Some(t) if t.last_write <= rv && rv <= st.rv => Ok(t.objects.clone()),
            None if rv <= st.rv && rv >= st.oldest_resumable => Ok(Table::new()),
            _ => Err(StoreError::Compacted {
                requested: rv,
                oldest: st.oldest_resumable,
            }),
        }
    }

    /// Every object of a table in a namespace (all namespaces for `None`).
    pub fn list(&self, id: &ResourceId, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let st = self.lock();
        let Some(t) = st.tables.get(id) else { return vec![] };
        match namespace {
            None => t.objects.values().cloned().collect(),
            Some(ns) => namespace_range(&t.objects, ns).map(|(_, v)| v.clone()).collect(),
        }
    }

    /// Tables that hold at least one object.
    pub fn resources(&self) -> Vec<ResourceId> {
        self.lock()
            .tables
            .iter()
            .filter(|(_, t)| !t.objects.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Write an object (its metadata.namespace/name form the key); stamps the new resourceVersion.
    pub fn put(&self, id: &ResourceId, mut obj: Value, pre: Precondition) -> Result<Arc<Value>, StoreError> {
        let key = key_of(&obj);
        let mut st = self.lock();
        let current = st.tables.get(id).and_then(|t| t.objects.get(&key)).cloned();
        match (pre, &current) {
            (Precondition::Absent, Some(_)) => return Err(StoreError::AlreadyExists),
            (Precondition::Present(_), None) => return Err(StoreError::NotFound),
            (Precondition::Present(Some(rv)), Some(cur)) if object_rv(cur) != Some(rv) => {
                return Err(StoreError::Conflict);
            }
            _ => {}
        }
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let obj = Arc::new(obj);
        let table = st.tables.entry(id.clone()).or_default();
        table.objects.insert(key, obj.clone());
        table.last_write = rv;
        st.index(id, current.as_deref(), Some(&obj));
        let kind = if current.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(
            &mut st,
            Change {
                rv,
                resource: id.clone(),
                kind,
                object: obj.clone(),
                old: current,
            },
        );
        Ok(obj)
    }

    /// Remove an object, optionally only if it still has revision `rv`.
    pub fn remove(
        &self,
        id: &ResourceId,
        namespace: &str,
        name: &str,
        rv: Option<u64>,
    ) -> Result<Arc<Value>, StoreError> {
        let key = (namespace.to_string(), name.to_string());
        let mut st = self.lock();
        let current = st
            .tables
            .get(id)
            .and_then(|t| t.objects.get(&key))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if rv.is_some_and(|rv| object_rv(&current) != Some(rv)) {
            return Err(StoreError::Conflict);
        }
        st.rv += 1;
        let new_rv = st.rv;
        let table = st
            .tables
            .get_mut(id)
            .expect("table exists: object was found in it");
        table.objects.remove(&key);
        table.last_write = new_rv;
        st.index(id, Some(&current), None);
        let mut last = (*current).clone();
        last["metadata"]["resourceVersion"] = Value::String(new_rv.to_string());
        let change = Change {
            rv: new_rv,
            resource: id.clone(),
            kind: ChangeKind::Deleted,
            object: Arc::new(last),
            old: Some(current.clone()),
        };
        self.record(&mut st, change);
        Ok(current)
    }

    fn record(&self, st: &mut State, change: Change) {
        let change = Arc::new(change);
        st.history.push_back(change.clone());
        while st.history.len() > self.limits.history {
            if let Some(dropped) = st.history.pop_front() {
                st.oldest_resumable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Objects whose ownerReferences name the owner with `uid`: (resource, namespace, name).
    pub fn dependents(&self, uid: &str) -> Vec<(ResourceId, String, String)> {
        self.lock()
            .dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether no table holds an object in namespace `ns`.
    pub fn namespace_is_empty(&self, ns: &str) -> bool {
        let st = self.lock();
        st.tables
            .values()
            .all(|t| namespace_range(&t.objects, ns).next().is_none())
    }

    /// Start a watch on the changes after revision `from` (`None`: only changes from now on).
    pub fn watch(&self, from: Option<u64>) -> Result<WatchStart, StoreError> {
        let st = self.lock();
        let live = self.tx.subscribe();
        let rv = st.rv;
        let backlog = match from {
            None => vec![],
            Some(from) if from >= rv => vec![],
            Some(from) if from < st.oldest_resumable => {
                return Err(StoreError::Compacted {
                    requested: from,
                    oldest: st.oldest_resumable,
                });
            }
            Some(from) => {
                // history is sorted by rv: binary search for the first change after `from`.
                let start = st.history.partition_point(|c| c.rv <= from);
                st.history.range(start..).cloned().collect()
            }
        };
        Ok(WatchStart { backlog, live, rv })
    }

    /// Forget watch history and list snapshots, like an etcd compaction: older resourceVersions and
    /// continue tokens get `410`.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.snapshots.clear();
        st.oldest_resumable = st.rv;
    }
}

/// The objects of one namespace in a table (keys sort by namespace first).
pub fn namespace_range<'a>(table: &'a Table, ns: &str) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> {
    let start = (ns.to_string(), String::new());
    table.range(start..).take_while(move |((n, _), _)| n == ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": ns, "name": name}})
    }

    fn id() -> ResourceId {
        ResourceId::new("", "configmaps")
    }

    #[test]
    fn given_object_when_updated_with_stale_revision_then_conflict() {
        let s = Store::new(StoreLimits::default());
        let a = s.put(&id(), cm("a", "x"), Precondition::Absent).unwrap();
        let rv = object_rv(&a).unwrap();
        s.put(&id(), cm("a", "x"), Precondition::Present(Some(rv)))
            .unwrap();
        assert_eq!(
            s.put(&id(), cm("a", "x"), Precondition::Present(Some(rv))),
            Err(StoreError::Conflict)
        );
        assert_eq!(
            s.put(&id(), cm("a", "x"), Precondition::Absent),
            Err(StoreError::AlreadyExists)
        );
    }

    #[test]
    fn given_snapshot_when_table_changes_then_snapshot_is_unchanged() {
        let s = Store::new(StoreLimits::default());
        for i in 0..5 {
            s.put(&id(), cm("a", &format!("c{i}")), Precondition::Absent)
                .unwrap();
        }
        let (rv, snap) = s.snapshot(&id());
        s.remove(&id(), "a", "c0", None).unwrap();
        s.put(&id(), cm("a", "c9"), Precondition::Absent).unwrap();
        assert_eq!(snap.len(), 5);
        assert_eq!(s.snapshot_at(&id(), rv).unwrap().len(), 5);
        s.compact();
        assert!(matches!(
            s.snapshot_at(&id(), rv),
            Err(StoreError::Compacted { .. })
        ));
    }

    #[test]
    fn given_history_when_watch_resumes_then_only_later_changes_are_replayed() {
        let s = Store::new(StoreLimits {
            history: 3,
            snapshots: 4,
        });
        let first = s.put(&id(), cm("a", "x"), Precondition::Absent).unwrap();
        let rv = object_rv(&first).unwrap();
        s.put(&id(), cm("a", "y"), Precondition::Absent).unwrap();
        let w = s.watch(Some(rv)).unwrap();
        assert_eq!(w.backlog.len(), 1);
        assert_eq!(w.backlog[0].object["metadata"]["name"], "y");
        for n in ["p", "q", "r"] {
            s.put(&id(), cm("a", n), Precondition::Absent).unwrap();
        }
        assert!(matches!(s.watch(Some(rv)), Err(StoreError::Compacted { .. })));
    }

    #[test]
    fn given_owner_references_then_dependents_index_follows_writes_and_removals() {
        let s = Store::new(StoreLimits::default());
        let mut child = cm("a", "child");
        child["metadata"]["ownerReferences"] = json!([{"uid": "owner-1"}]);
        s.put(&id(), child.clone(), Precondition::Absent).unwrap();
        assert_eq!(
            s.dependents("owner-1"),
            vec![(id(), "a".to_string(), "child".to_string())]
        );
        child["metadata"]["ownerReferences"] = json!([{"uid": "owner-2"}]);
        s.put(&id(), child, Precondition::Present(None)).unwrap();
        assert!(s.dependents("owner-1").is_empty());
        s.remove(&id(), "a", "child", None).unwrap();
        assert!(s.dependents("owner-2").is_empty());
        assert!(s.namespace_is_empty("a"));
    }

    #[test]
    fn given_namespaces_when_listing_one_then_only_its_objects() {
        let s = Store::new(StoreLimits::default());
        for (ns, n) in [("a", "1"), ("ab", "2"), ("b", "3"), ("a", "4")] {
            s.put(&id(), cm(ns, n), Precondition::Absent).unwrap();
        }
        let names: Vec<_> = s
            .list(&id(), Some("a"))
            .iter()
            .map(|o| o["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("1"), json!("4")]);
        assert_eq!(s.list(&id(), None).len(), 4);
    }
}
