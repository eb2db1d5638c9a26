//! The sandbox's PersistentVolume binder: what kube-controller-manager's `persistentvolume-binder`
//! (pkg/controller/volume/persistentvolume/pv_controller.go) does, as far as a backup tool can see it.
//!
//! Claims (`syncClaim`):
//! - an unbound claim naming a volume (`spec.volumeName`) binds to it when the volume has no `claimRef`
//!   or a `claimRef` naming this claim (without uid, or with its uid); otherwise it stays Pending;
//! - an unbound claim naming no volume binds to a volume pre-bound to it (`claimRef` naming it, no uid),
//!   else to the smallest Available volume that fits (class, access modes, size, volume mode), else it
//!   is provisioned dynamically (`controllers::provision_claim`);
//! - a bound claim (`pv.kubernetes.io/bind-completed`) whose volume is missing, or whose volume's
//!   `claimRef` has another uid, is `Lost` (terminal): this is why a restore must not carry the binding
//!   annotations over to a pre-bound volume.
//!
//! Volumes (`syncVolume`):
//! - no `claimRef`, or a `claimRef` without uid (pre-bound): `Available`;
//! - a `claimRef` whose claim is gone (or was recreated with another uid): `Released`, and it stays
//!   Released until the `claimRef` is removed or changed; reclaim policy `Delete` then deletes the
//!   volume (and its data directory), `Retain` keeps it;
//! - a `claimRef` whose claim names this volume: `Bound`.
//!
//! Binding writes what the real controller writes: the volume's `claimRef` (with the claim's uid) and
//! phase Bound; the claim's `volumeName`, `pv.kubernetes.io/bind-completed`, `bound-by-controller` when
//! the controller chose the volume, and status Bound with the volume's capacity and access modes.
//! Where the real controller would wait for its periodic resync, the sandbox re-syncs at once: when a
//! volume's `claimRef` changes (or it is created), the unbound claims it could now serve are synced.

use std::sync::Arc;

use serde_json::{Value, json};

use super::cluster::{Cluster, DeleteOptions, Event, Part, Work, WriteOptions};
use super::controllers::{name, ns, uid, volume_dir};
use super::registry::{ResourceId, ResourceType};
use super::store::ChangeKind;

const MANAGER: &str = "sandbox-controller-manager";
/// On a claim: the binding is complete (set by the binder; makes the claim "bound" for good).
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim or volume: the binder (not a user) chose the other side of the binding.
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

fn volumes_rt(cluster: &Cluster) -> Arc<ResourceType> {
    cluster
        .find_type("", "v1", "persistentvolumes")
        .expect("built-in type is always served")
}

fn claims_rt(cluster: &Cluster) -> Arc<ResourceType> {
    cluster
        .find_type("", "v1", "persistentvolumeclaims")
        .expect("built-in type is always served")
}

fn is_deleting(o: &Value) -> bool {
    o["metadata"].get("deletionTimestamp").is_some()
}

fn has_annotation(o: &Value, key: &str) -> bool {
    o["metadata"]["annotations"].get(key).is_some()
}

fn volume_name(claim: &Value) -> Option<&str> {
    claim["spec"]["volumeName"].as_str().filter(|s| !s.is_empty())
}

/// Whether `volume`'s `claimRef` names `claim` (by namespace and name; uid empty or equal).
pub fn is_bound_to(volume: &Value, claim: &Value) -> bool {
    let r = &volume["spec"]["claimRef"];
    r["namespace"].as_str() == Some(ns(claim))
        && r["name"].as_str() == Some(name(claim))
        && r["uid"].as_str().is_none_or(|u| u.is_empty() || u == uid(claim))
}

/// React to a change of a claim or a volume.
pub fn react(cluster: &Cluster, ev: &Event, work: &mut Work) {
    let obj = &ev.object;
    match (ev.resource.plural.as_str(), ev.kind) {
        ("persistentvolumeclaims", ChangeKind::Added | ChangeKind::Modified) => {
            sync_claim(cluster, obj, work)
        }
        ("persistentvolumeclaims", ChangeKind::Deleted) => {
            if let Some(v) = volume_name(obj)
                && let Some(volume) = cluster.store.get(&volumes_rt(cluster).id(), "", v)
            {
                sync_volume(cluster, &volume, work);
            }
        }
        ("persistentvolumes", ChangeKind::Added | ChangeKind::Modified) => {
            sync_volume(cluster, obj, work);
            let claim_ref_changed = ev
                .old
                .as_ref()
                .is_none_or(|old| old["spec"]["claimRef"] != obj["spec"]["claimRef"]);
            if claim_ref_changed {
                resync_claims(cluster, obj, work);
            }
        }
        _ => {}
    }
}

/// The real controller's periodic resync, at once: unbound claims that `volume` could now serve (the
/// claim its `claimRef` names, claims naming it, and, while it is unclaimed, claims naming no volume).
fn resync_claims(cluster: &Cluster, volume: &Value, work: &mut Work) {
    let claim_ref = &volume["spec"]["claimRef"];
    let waiting: Vec<Arc<Value>> = cluster
        .store
        .list(&claims_rt(cluster).id(), None)
        .into_iter()
        .filter(|c| !has_annotation(c, BIND_COMPLETED) && !is_deleting(c))
        .filter(|c| {
            let named =
                claim_ref["namespace"].as_str() == Some(ns(c)) && claim_ref["name"].as_str() == Some(name(c));
            named || volume_name(c) == Some(name(volume)) || (claim_ref.is_null() && volume_name(c).is_none())
        })
        .collect();
    for claim in waiting {
        sync_claim(cluster, &claim, work);
    }
}

/// `syncClaim`: bind, provision, or leave Pending / mark Lost.
fn sync_claim(cluster: &Cluster, claim: &Value, work: &mut Work) {
    let Some(claim) = cluster
        .store
        .get(&claims_rt(cluster).id(), ns(claim), name(claim))
    else {
        return;
    };
    if is_deleting(&claim) {
        return;
    }
    let volumes = volumes_rt(cluster);
    if has_annotation(&claim, BIND_COMPLETED) {
        // syncBoundClaim.
        let volume = volume_name(&claim).and_then(|v| cluster.store.get(&volumes.id(), "", v));
        match volume {
            None => claim_phase(cluster, work, &claim, "Lost"),
            Some(v) if v["spec"]["claimRef"].is_null() => bind(cluster, work, &v, &claim),
            Some(v) if v["spec"]["claimRef"]["uid"].as_str() == Some(uid(&claim)) => {
                bind(cluster, work, &v, &claim)
            }
            Some(_) => claim_phase(cluster, work, &claim, "Lost"),
        }
        return;
    }
    match volume_name(&claim) {
        Some(v) => match cluster.store.get(&volumes.id(), "", v) {
            Some(volume)
                if !is_deleting(&volume)
                    && (volume["spec"]["claimRef"].is_null() || is_bound_to(&volume, &claim)) =>
            {
                bind(cluster, work, &volume, &claim)
            }
            // Missing, or bound to another claim: Pending until that changes.
            _ => claim_phase(cluster, work, &claim, "Pending"),
        },
        None => match find_volume(cluster, &claim) {
            Some(volume) => bind(cluster, work, &volume, &claim),
            None => super::controllers::provision_claim(cluster, &claim, work),
        },
    }
}

/// `syncVolume`: Available, Bound, or Released (and reclaimed).
fn sync_volume(cluster: &Cluster, volume: &Value, work: &mut Work) {
    let rt = volumes_rt(cluster);
    let Some(volume) = cluster.store.get(&rt.id(), "", name(volume)) else {
        return;
    };
    if is_deleting(&volume) {
        return;
    }
    let claim_ref = &volume["spec"]["claimRef"];
    let ref_uid = claim_ref["uid"].as_str().unwrap_or_default();
    if claim_ref.is_null() || ref_uid.is_empty() {
        return volume_phase(cluster, work, &volume, "Available");
    }
    let claim = cluster
        .store
        .get(
            &claims_rt(cluster).id(),
            claim_ref["namespace"].as_str().unwrap_or_default(),
            claim_ref["name"].as_str().unwrap_or_default(),
        )
        .filter(|c| uid(c) == ref_uid);
    match claim {
        None => {
            if !matches!(volume["status"]["phase"].as_str(), Some("Released" | "Failed")) {
                volume_phase(cluster, work, &volume, "Released");
            }
            if volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
                let _ = cluster.delete_in(work, &rt, "", name(&volume), &DeleteOptions::default());
                let _ = std::fs::remove_dir_all(volume_dir(cluster, name(&volume)));
            }
        }
        Some(claim) if volume_name(&claim).is_none() => sync_claim(cluster, &claim, work),
        Some(claim) if volume_name(&claim) == Some(name(&volume)) => {
            volume_phase(cluster, work, &volume, "Bound")
        }
        Some(_) => {
            // The claim is bound to another volume: unbind this one (keep a user's pre-binding).
            let mut next = (*volume).clone();
            if has_annotation(&volume, BOUND_BY_CONTROLLER) {
                next["spec"]["claimRef"] = Value::Null;
                if let Some(a) = next["metadata"]["annotations"].as_object_mut() {
                    a.remove(BOUND_BY_CONTROLLER);
                }
            } else if let Some(r) = next["spec"]["claimRef"].as_object_mut() {
                r.remove("uid");
                r.remove("resourceVersion");
            }
            let _ = cluster.update_in(work, &rt, "", name(&volume), next, Part::Main, &opts());
        }
    }
}

/// Bytes of a quantity (`1Gi`, `500M`, `1024`); 0 when unreadable.
fn bytes(q: &Value) -> i64 {
    super::snapshots::quantity_bytes(q)
}

/// The legacy annotation naming a claim's (or volume's) StorageClass; it wins over the spec field.
pub const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// The class a claim or volume names (`GetPersistentVolumeClaimClass`): the [`BETA_STORAGE_CLASS`]
/// annotation when set, else `spec.storageClassName`; `None` when neither is (`""` is "no class").
pub(super) fn named_class(obj: &Value) -> Option<&str> {
    obj["metadata"]["annotations"][BETA_STORAGE_CLASS]
        .as_str()
        .or_else(|| obj["spec"]["storageClassName"].as_str())
}

/// The storage class a claim asks for: its own, or (unset) the default class, as admission would set.
fn claim_class(cluster: &Cluster, claim: &Value) -> String {
    match named_class(claim) {
        Some(c) => c.to_string(),
        None => cluster
            .store
            .list(&ResourceId::new("storage.k8s.io", "storageclasses"), None)
            .into_iter()
            .find(|sc| sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true")
            .map(|sc| name(&sc).to_string())
            .unwrap_or_default(),
    }
}

/// `findMatchingVolume`: a volume pre-bound to the claim, else the smallest unclaimed one that fits.
fn find_volume(cluster: &Cluster, claim: &Value) -> Option<Arc<Value>> {
    let volumes: Vec<Arc<Value>> = cluster
        .store
        .list(&volumes_rt(cluster).id(), None)
        .into_iter()
        .filter(|v| !is_deleting(v))
        .collect();
    let want = bytes(&claim["spec"]["resources"]["requests"]["storage"]);
    let fits = |v: &Value| {
        let modes = v["spec"]["accessModes"].as_array().cloned().unwrap_or_default();
        let mode = |o: &Value| {
            o["spec"]["volumeMode"]
                .as_str()
                .unwrap_or("Filesystem")
                .to_string()
        };
        bytes(&v["spec"]["capacity"]["storage"]) >= want
            && claim["spec"]["accessModes"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|m| modes.contains(m))
            && mode(v) == mode(claim)
    };
    if let Some(v) = volumes
        .iter()
        .find(|v| !v["spec"]["claimRef"].is_null() && is_bound_to(v, claim) && fits(v))
    {
        return Some(v.clone());
    }
    let class = claim_class(cluster, claim);
    volumes
        .into_iter()
        .filter(|v| v["spec"]["claimRef"].is_null())
        .filter(|v| named_class(v).unwrap_or_default() == class)
        .filter(|v| {
            let selector = &claim["spec"]["selector"];
            selector.is_null() || super::controllers::selector_matches(selector, v)
        })
        .filter(|v| fits(v))
        .min_by_key(|v| bytes(&v["spec"]["capacity"]["storage"]))
}

/// Bind `volume` and `claim` to each other (`bind` in the real controller).
pub(super) fn bind(cluster: &Cluster, work: &mut Work, volume: &Value, claim: &Value) {
    let volumes = volumes_rt(cluster);
    let claims = claims_rt(cluster);
    // The volume first: claimRef with the claim's uid.
    let pre_bound = !volume["spec"]["claimRef"].is_null() && is_bound_to(volume, claim);
    let want_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns(claim),
                          "name": name(claim), "uid": uid(claim)});
    let mut volume = Arc::new(volume.clone());
    let same_ref = ["kind", "apiVersion", "namespace", "name", "uid"]
        .iter()
        .all(|k| volume["spec"]["claimRef"][*k] == want_ref[*k]);
    if !same_ref {
        let mut next = (*volume).clone();
        next["spec"]["claimRef"] = want_ref;
        if !pre_bound {
            next["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
        }
        match cluster.update_in(work, &volumes, "", name(&volume), next, Part::Main, &opts()) {
            Ok(v) => volume = Arc::new(v),
            Err(e) => {
                tracing::debug!(volume = name(&volume), error = %e, "binding lost a race; the next change retries");
                return;
            }
        }
    }
    volume_phase(cluster, work, &volume, "Bound");
    // Then the claim: volumeName, annotations, protection finalizer.
    let Some(current) = cluster.store.get(&claims.id(), ns(claim), name(claim)) else {
        return;
    };
    let mut next = (*current).clone();
    if volume_name(&current) != Some(name(&volume)) {
        next["spec"]["volumeName"] = json!(name(&volume));
        if !has_annotation(&current, BOUND_BY_CONTROLLER) {
            next["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
        }
    }
    next["metadata"]["annotations"][BIND_COMPLETED] = json!("yes");
    if named_class(&next).is_none()
        && let Some(class) = volume["spec"]["storageClassName"].as_str()
    {
        next["spec"]["storageClassName"] = json!(class);
    }
    let finalizers = next["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == "kubernetes.io/pvc-protection") {
        let mut f = finalizers;
        f.push(json!("kubernetes.io/pvc-protection"));
        next["metadata"]["finalizers"] = json!(f);
    }
    let updated = if next == *current {
        (*current).clone()
    } else {
        match cluster.update_in(work, &claims, ns(claim), name(claim), next, Part::Main, &opts()) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(claim = name(claim), error = %e, "binding lost a race; the next change retries");
                return;
            }
        }
    };
    let status = json!({"phase": "Bound", "accessModes": volume["spec"]["accessModes"].clone(),
                        "capacity": volume["spec"]["capacity"].clone()});
    write_status(cluster, work, &claims, &updated, status);
    super::controllers::mount_claim(cluster, &updated);
}

fn volume_phase(cluster: &Cluster, work: &mut Work, volume: &Value, phase: &str) {
    write_status(
        cluster,
        work,
        &volumes_rt(cluster),
        volume,
        json!({"phase": phase}),
    );
}

fn claim_phase(cluster: &Cluster, work: &mut Work, claim: &Value, phase: &str) {
    write_status(cluster, work, &claims_rt(cluster), claim, json!({"phase": phase}));
}

/// Merge `status` into the object's status; writes only when something changes.
fn write_status(cluster: &Cluster, work: &mut Work, rt: &ResourceType, obj: &Value, status: Value) {
    let Some(current) = cluster.store.get(&rt.id(), ns(obj), name(obj)) else {
        return;
    };
    let mut next = (*current).clone();
    if !next["status"].is_object() {
        next["status"] = json!({});
    }
    for (k, v) in status.as_object().into_iter().flatten() {
        next["status"][k.as_str()] = v.clone();
    }
    if next == *current {
        return;
    }
    if let Err(e) = cluster.update_in(work, rt, ns(obj), name(obj), next, Part::Status, &opts()) {
        tracing::debug!(object = name(obj), error = %e, "status update lost a race; the next change retries");
    }
}
