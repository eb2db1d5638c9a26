//! Claims from snapshots: read `volumes.json` defensively and say where each claim's data comes from.
//!
//! `volumes.json` is written by the snapshot step (`src/snapshot/`), whose format is still being
//! defined. This module is the only place that reads it and accepts the shapes that format is likely
//! to take: a top-level array, or an object holding one under `volumes`, `snapshots` or `items`; each
//! entry naming the claim (`namespace` + `pvc`/`claim`/`persistentVolumeClaim`/`pvcName`, or a `pvc`
//! object with `namespace`/`name`), the `volumeSnapshot` (a name or an object with `name`), and
//! optionally `snapshotHandle`, `driver` and `volumeSnapshotClassName`, and `moved` (the mover's record:
//! with `status: Succeeded`, its `snapshotId` in the repository). Entries it cannot read are
//! ignored with a warning: a claim without a source is then provisioned empty, never failed.
//!
//! A restored claim gets `dataSource` → a VolumeSnapshot in its (target) namespace:
//! - when the snapshot handle is recorded, a pre-provisioned VolumeSnapshotContent (deletionPolicy
//!   Retain, so deleting the restore never deletes the backup's snapshot) and a VolumeSnapshot bound to
//!   it are created first; this works across namespaces and clusters;
//! - otherwise the recorded VolumeSnapshot is used by name, which only works where it still exists.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::Digest;

use super::source::Located;
use crate::store::{self, ObjectStore, layout};

/// The sources recorded for one claim: its CSI snapshot and, with `volumes.moveData`, its copy in the
/// storage's repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// VolumeSnapshot name in the claim's source namespace, if recorded.
    pub volume_snapshot: Option<String>,
    /// The CSI snapshot handle, if recorded.
    pub snapshot_handle: Option<String>,
    /// The CSI driver, if recorded.
    pub driver: Option<String>,
    /// The VolumeSnapshotClass, if recorded.
    pub class: Option<String>,
    /// The repository snapshot holding the claim's files (a mover that succeeded), if any.
    pub repository: Option<String>,
}

/// Snapshots by (source namespace, claim name).
pub type Snapshots = BTreeMap<(String, String), Snapshot>;

/// Read `volumes.json` if the (already verified) manifest lists it; problems only warn.
pub async fn read(store: &dyn ObjectStore, located: &Located) -> Snapshots {
    if !located.manifest.artifacts.contains_key(layout::VOLUMES) {
        return Snapshots::new();
    }
    match store::get_bytes(store, &located.keys.volumes()).await {
        Ok(bytes) => parse(&bytes),
        Err(error) => {
            tracing::warn!(%error, "volumes.json unreadable; claims are provisioned empty");
            Snapshots::new()
        }
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn first(entry: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        let v = &entry[*k];
        text(v).or_else(|| text(&v["name"]))
    })
}

/// Parse `volumes.json` in any of the accepted shapes (see the module doc). Pure.
pub fn parse(bytes: &[u8]) -> Snapshots {
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        tracing::warn!("volumes.json is not JSON; claims are provisioned empty");
        return Snapshots::new();
    };
    let entries = match &doc {
        Value::Array(a) => a.clone(),
        _ => ["volumes", "snapshots", "items"]
            .iter()
            .find_map(|k| doc[*k].as_array().cloned())
            .unwrap_or_default(),
    };
    let mut out = Snapshots::new();
    for entry in &entries {
        let namespace = text(&entry["namespace"])
            .or_else(|| text(&entry["pvc"]["namespace"]))
            .or_else(|| text(&entry["pvcNamespace"]));
        let claim = first(entry, &["pvc", "claim", "persistentVolumeClaim", "pvcName"]);
        let snapshot = Snapshot {
            volume_snapshot: first(entry, &["volumeSnapshot", "volumeSnapshotName", "snapshot"]),
            snapshot_handle: text(&entry["snapshotHandle"])
                .or_else(|| text(&entry["volumeSnapshotContent"]["snapshotHandle"])),
            driver: text(&entry["driver"]),
            class: text(&entry["volumeSnapshotClassName"]).or_else(|| text(&entry["class"])),
            repository: (entry["moved"]["status"] == "Succeeded")
                .then(|| text(&entry["moved"]["snapshotId"]))
                .flatten(),
        };
        match (namespace, claim) {
            (Some(ns), Some(claim))
                if snapshot.volume_snapshot.is_some()
                    || snapshot.snapshot_handle.is_some()
                    || snapshot.repository.is_some() =>
            {
                out.insert((ns, claim), snapshot);
            }
            _ => tracing::warn!(%entry, "volumes.json entry without claim or snapshot ignored"),
        }
    }
    out
}

/// How a restored claim gets its data.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimSource {
    /// The VolumeSnapshot (in the target namespace) the claim's `dataSource` names.
    pub volume_snapshot: String,
    /// Objects to create first (VolumeSnapshotContent, then VolumeSnapshot), if pre-provisioned.
    pub provision: Vec<Value>,
}

/// The source of claim `name` restored from `source_ns` into `target_ns`, if a snapshot is recorded. Pure.
pub fn claim_source(
    snapshots: &Snapshots,
    source_ns: &str,
    name: &str,
    target_ns: &str,
) -> Option<ClaimSource> {
    let snap = snapshots.get(&(source_ns.to_string(), name.to_string()))?;
    match (&snap.snapshot_handle, &snap.driver) {
        (Some(handle), Some(driver)) => {
            let digest = hex::encode(sha2::Sha256::digest(format!("{target_ns}/{name}/{handle}")));
            let content = format!("freezeframe-{}", &digest[..20]);
            let vs = format!("freezeframe-{name}");
            let vs = vs[..vs.len().min(253)].to_string();
            let mut content_spec = json!({
                "deletionPolicy": "Retain",
                "driver": driver,
                "source": {"snapshotHandle": handle},
                "volumeSnapshotRef": {"namespace": target_ns, "name": vs},
            });
            let mut vs_spec = json!({"source": {"volumeSnapshotContentName": content}});
            if let Some(class) = &snap.class {
                content_spec["volumeSnapshotClassName"] = json!(class);
                vs_spec["volumeSnapshotClassName"] = json!(class);
            }
            Some(ClaimSource {
                volume_snapshot: vs.clone(),
                provision: vec![
                    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                           "metadata": {"name": content, "labels": {"freezeframe.dev/restored": "true"}},
                           "spec": content_spec}),
                    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                           "metadata": {"name": vs, "namespace": target_ns,
                                        "labels": {"freezeframe.dev/restored": "true"}},
                           "spec": vs_spec}),
                ],
            })
        }
        _ => snap.volume_snapshot.clone().map(|vs| ClaimSource {
            volume_snapshot: vs,
            provision: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_several_plausible_shapes_then_claims_and_snapshots_are_read() {
        let a = parse(
            br#"{"volumes": [
                {"namespace": "shop", "pvc": "uploads", "volumeSnapshot": "uploads-snap",
                 "snapshotHandle": "h-1", "driver": "csi.example.com"},
                {"pvc": {"namespace": "shop", "name": "data-db-0"}, "volumeSnapshot": {"name": "db0"}},
                {"namespace": "shop", "pvc": "no-snapshot"}
            ]}"#,
        );
        assert_eq!(a.len(), 2, "{a:?}");
        let uploads = &a[&("shop".into(), "uploads".into())];
        assert_eq!(uploads.snapshot_handle.as_deref(), Some("h-1"));
        assert_eq!(
            a[&("shop".into(), "data-db-0".into())].volume_snapshot.as_deref(),
            Some("db0")
        );
        let b = parse(br#"[{"namespace": "x", "claim": "c", "snapshot": "s"}]"#);
        assert_eq!(b.len(), 1);
        assert!(parse(b"not json").is_empty());
        assert!(parse(br#"{"unknown": 1}"#).is_empty());
    }

    #[test]
    fn given_handle_and_driver_when_restored_elsewhere_then_retained_content_and_snapshot_are_pre_provisioned()
     {
        let snaps = parse(
            br#"[{"namespace": "shop", "pvc": "uploads", "volumeSnapshot": "s", "snapshotHandle": "h",
                  "driver": "d"}]"#,
        );
        let source = claim_source(&snaps, "shop", "uploads", "shop-dr").unwrap();
        assert_eq!(source.volume_snapshot, "freezeframe-uploads");
        let [content, snapshot] = &source.provision[..] else {
            panic!("{source:?}")
        };
        assert_eq!(content["spec"]["deletionPolicy"], "Retain");
        assert_eq!(content["spec"]["source"]["snapshotHandle"], "h");
        assert_eq!(content["spec"]["volumeSnapshotRef"]["namespace"], "shop-dr");
        assert_eq!(snapshot["metadata"]["namespace"], "shop-dr");
        assert_eq!(
            snapshot["spec"]["source"]["volumeSnapshotContentName"],
            content["metadata"]["name"]
        );
        assert!(claim_source(&snaps, "shop", "other", "shop-dr").is_none());
    }

    #[test]
    fn given_a_moved_volume_then_its_repository_snapshot_is_read_and_a_failed_move_is_not() {
        let snaps = parse(
            br#"[{"namespace": "shop", "pvc": "a", "name": "a-ff", "snapshotHandle": "h", "driver": "d",
                  "moved": {"status": "Succeeded", "snapshotId": "0123abcd"}},
                 {"namespace": "shop", "pvc": "b", "name": "b-ff", "snapshotHandle": "h2", "driver": "d",
                  "moved": {"status": "Failed", "error": "x"}},
                 {"namespace": "shop", "pvc": "c", "moved": {"status": "Succeeded", "snapshotId": "ffee"}}]"#,
        );
        assert_eq!(
            snaps[&("shop".into(), "a".into())].repository.as_deref(),
            Some("0123abcd")
        );
        assert_eq!(snaps[&("shop".into(), "b".into())].repository, None);
        let only_moved = &snaps[&("shop".into(), "c".into())];
        assert_eq!(only_moved.repository.as_deref(), Some("ffee"));
        assert!(claim_source(&snaps, "shop", "c", "shop").is_none());
    }

    #[test]
    fn given_only_a_snapshot_name_then_the_claim_uses_it_by_name() {
        let snaps = parse(br#"[{"namespace": "shop", "pvc": "uploads", "volumeSnapshot": "s"}]"#);
        let source = claim_source(&snaps, "shop", "uploads", "shop").unwrap();
        assert_eq!(source.volume_snapshot, "s");
        assert!(source.provision.is_empty());
    }
}
