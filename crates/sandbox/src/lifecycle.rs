//! Namespace and CRD deletion finished the way a real control plane finishes it: after the DELETE has
//! returned, in the background.
//!
//! - A deleted namespace is `Terminating` (deletionTimestamp set, `spec.finalizers: [kubernetes]`); new
//!   content is refused by the create path. The namespace controller ([`sync_namespace`]) deletes all its
//!   content (each object's own finalizers still hold it), reports what remains in the namespace's
//!   conditions (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`, ...), and once nothing is left
//!   removes `kubernetes` through the `finalize` subresource; the namespace disappears when no finalizer
//!   (spec or metadata) remains.
//! - A deleted CRD gets the `customresourcecleanup.apiextensions.k8s.io` finalizer and condition
//!   `Terminating`; creating its custom resources is refused. The CRD finalizer ([`sync_crd`]) deletes all
//!   of them and, once none is left, removes its finalizer: the CRD disappears and only then are its kinds
//!   no longer served.
//!
//! [`spawn`] runs both controllers on the store's change stream, as the snapshot readiness task does: a
//! change to a terminating namespace or CRD, or to anything inside one, queues a pass. A pass runs on the
//! blocking pool, so a deleted namespace is usually gone a few milliseconds after the DELETE returned
//! (unless [`SandboxOptions::namespace_deletion_delay`] holds its first pass back, as a real controller
//! does for 5 s).
//!
//! [`SandboxOptions::namespace_deletion_delay`]: super::SandboxOptions::namespace_deletion_delay

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;

use super::cluster::{Cluster, DeleteOptions, Part, Work, WriteOptions, crd_id, now};
use super::controllers::{is_deleting, name, ns};
use super::registry::{ResourceId, ResourceType};
use super::store::{Change, ChangeKind};

/// The namespace controller's finalizer in a namespace's `spec.finalizers`.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// The apiextensions finalizer a deleted CRD carries until its custom resources are gone.
pub const CRD_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
/// Namespaces the NamespaceLifecycle admission plugin refuses to delete.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

const NAMESPACE_MANAGER: &str = "kube-controller-manager";

/// Where one pass of a finalizing controller left its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The object is gone, is not being deleted, or no longer carries this controller's finalizer.
    Idle,
    /// Objects remain (held by their own finalizers); a change to them queues the next pass.
    Waiting { remaining: usize },
    /// This controller removed its finalizer: the object is gone unless other finalizers remain.
    Finalized,
}

fn namespace_type(cluster: &Cluster) -> Arc<ResourceType> {
    cluster
        .find_type("", "v1", "namespaces")
        .expect("namespaces are always served")
}

fn crd_type(cluster: &Cluster) -> Arc<ResourceType> {
    cluster
        .find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("CRDs are always served")
}

fn has_finalizer(list: &Value, finalizer: &str) -> bool {
    list.as_array().is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// Set one condition as apimachinery's condition helpers do: a new one is appended; an existing one takes
/// the new status, reason and message, and a new `lastTransitionTime` only when its status changed.
fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    at: &str,
) {
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(at);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conditions.push(json!({"type": kind, "status": status, "lastTransitionTime": at,
            "reason": reason, "message": message})),
    }
}

fn conditions_of(obj: &Value) -> Vec<Value> {
    obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------
// Namespaces

/// One pass of the namespace controller over `namespace`: delete its content, record what remains in
/// its conditions, and finalize it once it is empty.
pub fn sync_namespace(cluster: &Cluster, namespace: &str) -> Progress {
    let ours = |n: &Value| is_deleting(n) && has_finalizer(&n["spec"]["finalizers"], NAMESPACE_FINALIZER);
    let nsrt = namespace_type(cluster);
    if !cluster
        .store
        .get(&nsrt.id(), "", namespace)
        .is_some_and(|n| ours(&n))
    {
        return Progress::Idle;
    }
    // Two requests: the first one's deletions let the controllers release what they hold (a claim's
    // pvc-protection goes once its pods are gone) before the second one counts what is left.
    cluster.request(|work| delete_namespace_content(cluster, work, namespace));
    cluster.request(|work| conclude_namespace(cluster, work, &nsrt, namespace))
}

fn delete_namespace_content(cluster: &Cluster, work: &mut Work, namespace: &str) {
    let registry = cluster.registry();
    for id in cluster.store.resources() {
        let Some(rt) = registry.preferred(&id) else {
            continue;
        };
        if !rt.namespaced {
            continue;
        }
        for obj in cluster.store.list(&id, Some(namespace)) {
            if is_deleting(&obj) {
                continue;
            }
            // Background propagation, as the namespace controller's deletecollection calls use.
            if let Err(e) = cluster.delete_in(work, &rt, namespace, name(&obj), &DeleteOptions::default())
                && e.code != 404
            {
                tracing::debug!(namespace, object = name(&obj), error = %e, "namespace content not deleted yet");
            }
        }
    }
}

/// What is left in a namespace: `<plural>.<group>` → count, and finalizer → count.
fn namespace_remains(
    cluster: &Cluster,
    namespace: &str,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let registry = cluster.registry();
    let mut resources = BTreeMap::new();
    let mut finalizers = BTreeMap::new();
    for id in cluster.store.resources() {
        if !registry.preferred(&id).is_some_and(|rt| rt.namespaced) {
            continue;
        }
        let objects = cluster.store.list(&id, Some(namespace));
        if objects.is_empty() {
            continue;
        }
        resources.insert(format!("{}.{}", id.plural, id.group), objects.len());
        for obj in &objects {
            for f in obj["metadata"]["finalizers"].as_array().into_iter().flatten() {
                *finalizers
                    .entry(f.as_str().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
        }
    }
    (resources, finalizers)
}

/// The conditions the namespace controller maintains, with their values for what remains.
fn namespace_conditions(
    resources: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let mut out = vec![
        (
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered".to_string(),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_string(),
        ),
        (
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_string(),
        ),
    ];
    out.push(if resources.is_empty() {
        (
            "NamespaceContentRemaining",
            "False",
            "ContentRemoved",
            "All content successfully removed".to_string(),
        )
    } else {
        let list: Vec<String> = resources
            .iter()
            .map(|(gr, n)| format!("{gr} has {n} resource instances"))
            .collect();
        (
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", list.join(", ")),
        )
    });
    out.push(if finalizers.is_empty() {
        (
            "NamespaceFinalizersRemaining",
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".to_string(),
        )
    } else {
        let list: Vec<String> = finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        (
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                list.join(", ")
            ),
        )
    });
    out
}

fn conclude_namespace(cluster: &Cluster, work: &mut Work, nsrt: &ResourceType, namespace: &str) -> Progress {
    let opts = WriteOptions {
        field_manager: Some(NAMESPACE_MANAGER.into()),
        ..Default::default()
    };
    let Some(current) = cluster.store.get(&nsrt.id(), "", namespace) else {
        return Progress::Idle;
    };
    if !is_deleting(&current) || !has_finalizer(&current["spec"]["finalizers"], NAMESPACE_FINALIZER) {
        return Progress::Idle;
    }
    let (resources, finalizers) = namespace_remains(cluster, namespace);
    let at = now();
    let mut conditions = conditions_of(&current);
    for (kind, status, reason, message) in namespace_conditions(&resources, &finalizers) {
        set_condition(&mut conditions, kind, status, reason, &message, &at);
    }
    if current["status"]["conditions"] != json!(conditions) {
        let mut next = (*current).clone();
        next["status"]["conditions"] = json!(conditions);
        if let Err(e) = cluster.update_in(work, nsrt, "", namespace, next, Part::Status, &opts) {
            // A concurrent write changed the namespace; that change queues the next pass.
            tracing::debug!(namespace, error = %e, "namespace conditions not written");
            return Progress::Waiting {
                remaining: resources.values().sum(),
            };
        }
    }
    let remaining: usize = resources.values().sum();
    if remaining > 0 {
        return Progress::Waiting { remaining };
    }
    let Some(current) = cluster.store.get(&nsrt.id(), "", namespace) else {
        return Progress::Idle;
    };
    let mut next = (*current).clone();
    if let Some(f) = next["spec"]["finalizers"].as_array_mut() {
        f.retain(|x| x != NAMESPACE_FINALIZER);
    }
    match cluster.update_in(work, nsrt, "", namespace, next, Part::Finalize, &opts) {
        Ok(_) => Progress::Finalized,
        Err(e) => {
            tracing::debug!(namespace, error = %e, "namespace not finalized yet");
            Progress::Waiting { remaining: 0 }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// CustomResourceDefinitions

/// Whether a CRD's `Terminating` condition is True (its custom resources cannot be created).
pub fn crd_is_terminating(crd: &Value) -> bool {
    crd["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Terminating" && c["status"] == "True")
    })
}

/// What the CRD storage does on the first DELETE: the cleanup finalizer and condition `Terminating`
/// (the caller sets deletionTimestamp).
pub fn mark_crd_terminating(crd: &mut Value) {
    if !has_finalizer(&crd["metadata"]["finalizers"], CRD_FINALIZER) {
        match crd["metadata"]["finalizers"].as_array_mut() {
            Some(f) => f.push(json!(CRD_FINALIZER)),
            None => crd["metadata"]["finalizers"] = json!([CRD_FINALIZER]),
        }
    }
    let mut conditions = conditions_of(crd);
    set_condition(
        &mut conditions,
        "Terminating",
        "True",
        "InstanceDeletionPending",
        "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
        &now(),
    );
    crd["status"]["conditions"] = json!(conditions);
}

/// The table of a CRD's custom resources.
fn custom_resources(crd: &Value) -> ResourceId {
    ResourceId::new(
        crd["spec"]["group"].as_str().unwrap_or_default(),
        crd["spec"]["names"]["plural"].as_str().unwrap_or_default(),
    )
}

/// One pass of the CRD finalizer over the CRD `crd_name`: delete its custom resources and, once none is
/// left, remove the cleanup finalizer.
pub fn sync_crd(cluster: &Cluster, crd_name: &str) -> Progress {
    let crt = crd_type(cluster);
    let ours = |c: &Value| is_deleting(c) && has_finalizer(&c["metadata"]["finalizers"], CRD_FINALIZER);
    if !cluster
        .store
        .get(&crd_id(), "", crd_name)
        .is_some_and(|c| ours(&c))
    {
        return Progress::Idle;
    }
    cluster.request(|work| {
        let Some(current) = cluster.store.get(&crd_id(), "", crd_name) else {
            return;
        };
        let mut next = (*current).clone();
        let mut conditions = conditions_of(&current);
        set_condition(
            &mut conditions,
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            &now(),
        );
        next["status"]["conditions"] = json!(conditions);
        if let Err(e) = cluster.commit_update(work, &crt, &current, next) {
            tracing::debug!(crd = crd_name, error = %e, "CRD condition not written");
        }
        let id = custom_resources(&current);
        let Some(rt) = cluster.registry().preferred(&id) else {
            return;
        };
        for obj in cluster.store.list(&id, None) {
            if is_deleting(&obj) {
                continue;
            }
            if let Err(e) = cluster.delete_in(work, &rt, ns(&obj), name(&obj), &DeleteOptions::default())
                && e.code != 404
            {
                tracing::debug!(crd = crd_name, object = name(&obj), error = %e, "custom resource not deleted yet");
            }
        }
    });
    cluster.request(|work| {
        let Some(current) = cluster.store.get(&crd_id(), "", crd_name) else {
            return Progress::Idle;
        };
        if !ours(&current) {
            return Progress::Idle;
        }
        let remaining = cluster.store.list(&custom_resources(&current), None).len();
        if remaining > 0 {
            return Progress::Waiting { remaining };
        }
        let mut next = (*current).clone();
        let mut conditions = conditions_of(&current);
        set_condition(
            &mut conditions,
            "Terminating",
            "False",
            "InstanceDeletionCompleted",
            "removed all instances",
            &now(),
        );
        next["status"]["conditions"] = json!(conditions);
        if let Some(f) = next["metadata"]["finalizers"].as_array_mut() {
            f.retain(|x| x != CRD_FINALIZER);
        }
        match cluster.commit_update(work, &crt, &current, next) {
            Ok(_) => Progress::Finalized,
            Err(e) => {
                tracing::debug!(crd = crd_name, error = %e, "CRD not finalized yet");
                Progress::Waiting { remaining: 0 }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------------
// The background task

/// Which namespaces and CRDs are terminating, and which need a pass.
#[derive(Default)]
struct Tracker {
    namespaces: HashSet<String>,
    /// Custom resource table → the terminating CRD that defines it.
    crds: HashMap<ResourceId, String>,
    dirty_namespaces: BTreeSet<String>,
    dirty_crds: BTreeSet<String>,
    /// How long a newly Terminating namespace waits before its first pass.
    delay: Duration,
    /// Namespaces still within that wait.
    held: HashMap<String, Instant>,
}

impl Tracker {
    fn new(delay: Duration) -> Self {
        Tracker {
            delay,
            ..Default::default()
        }
    }

    fn observe(&mut self, change: &Change) {
        let obj = &change.object;
        let gone = change.kind == ChangeKind::Deleted;
        if change.resource == ResourceId::new("", "namespaces") {
            let n = name(obj).to_string();
            if gone {
                self.namespaces.remove(&n);
                self.dirty_namespaces.remove(&n);
                self.held.remove(&n);
            } else if is_deleting(obj) {
                if self.namespaces.insert(n.clone()) && !self.delay.is_zero() {
                    self.held.insert(n.clone(), Instant::now() + self.delay);
                }
                self.dirty_namespaces.insert(n);
            }
            return;
        }
        if change.resource == crd_id() {
            let id = custom_resources(obj);
            if gone {
                self.crds.remove(&id);
                self.dirty_crds.remove(name(obj));
            } else if is_deleting(obj) {
                self.crds.insert(id, name(obj).to_string());
                self.dirty_crds.insert(name(obj).to_string());
            }
        }
        let namespace = ns(obj);
        if !namespace.is_empty() && self.namespaces.contains(namespace) {
            self.dirty_namespaces.insert(namespace.to_string());
        }
        if let Some(crd) = self.crds.get(&change.resource) {
            self.dirty_crds.insert(crd.clone());
        }
    }

    /// Find every terminating namespace and CRD from the store (at start, and after missed changes).
    fn rescan(&mut self, cluster: &Cluster) {
        for n in cluster.store.list(&ResourceId::new("", "namespaces"), None) {
            if is_deleting(&n) {
                self.namespaces.insert(name(&n).to_string());
                self.dirty_namespaces.insert(name(&n).to_string());
            }
        }
        for c in cluster.store.list(&crd_id(), None) {
            if is_deleting(&c) {
                self.crds.insert(custom_resources(&c), name(&c).to_string());
                self.dirty_crds.insert(name(&c).to_string());
            }
        }
    }

    /// Whether a pass is due now.
    fn has_work(&self, now: Instant) -> bool {
        !self.dirty_crds.is_empty()
            || self
                .dirty_namespaces
                .iter()
                .any(|n| self.held.get(n).is_none_or(|until| *until <= now))
    }

    /// When the earliest held namespace is due.
    fn next_due(&self) -> Option<Instant> {
        self.held.values().min().copied()
    }

    /// The namespaces and CRDs due for a pass (held namespaces stay queued).
    fn take_due(&mut self, now: Instant) -> (Vec<String>, Vec<String>) {
        self.held.retain(|_, until| *until > now);
        let held = &self.held;
        let (due, waiting): (BTreeSet<String>, BTreeSet<String>) = std::mem::take(&mut self.dirty_namespaces)
            .into_iter()
            .partition(|n| !held.contains_key(n));
        self.dirty_namespaces = waiting;
        (
            due.into_iter().collect(),
            std::mem::take(&mut self.dirty_crds).into_iter().collect(),
        )
    }
}

/// Start the namespace and CRD finalizers. They follow the store's change stream (subscribed before this
/// returns) and end with the cluster. A namespace's first pass waits `namespace_delay` after it was
/// marked (a real namespace controller waits 5 s, its `namespaceDeletionGracePeriod`).
pub fn spawn(cluster: &Arc<Cluster>, namespace_delay: Duration) {
    let Ok(start) = cluster.store.watch(None) else {
        return;
    };
    let mut live = start.live;
    let mut tracker = Tracker::new(namespace_delay);
    tracker.rescan(cluster);
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if !tracker.has_work(Instant::now()) {
                let due = tracker.next_due();
                let wake = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(change) => tracker.observe(&change),
                        Err(RecvError::Lagged(_)) => {
                            let Some(cluster) = weak.upgrade() else { return };
                            tracker.rescan(&cluster);
                        }
                        Err(RecvError::Closed) => return,
                    },
                    _ = wake => {}
                }
            }
            // Take in everything already queued, so one pass covers a burst of changes.
            loop {
                match live.try_recv() {
                    Ok(change) => tracker.observe(&change),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_)) => {
                        let Some(cluster) = weak.upgrade() else { return };
                        tracker.rescan(&cluster);
                    }
                    Err(TryRecvError::Closed) => return,
                }
            }
            let (namespaces, crds) = tracker.take_due(Instant::now());
            if namespaces.is_empty() && crds.is_empty() {
                continue;
            }
            let Some(cluster) = weak.upgrade() else { return };
            let pass = tokio::task::spawn_blocking(move || {
                for n in &namespaces {
                    sync_namespace(&cluster, n);
                }
                for c in &crds {
                    sync_crd(&cluster, c);
                }
            });
            if let Err(e) = pass.await {
                tracing::error!(error = %e, "namespace/CRD finalizer pass panicked");
            }
        }
    });
}

#[cfg(test)]
mod tests;
