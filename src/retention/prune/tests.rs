//! The prune executor against a directory store wrapped to record and fail deletions, and fake snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use super::*;
use crate::policy::Retention;
use crate::retention::{Error, prune};
use crate::store::fs::FsStore;
use crate::store::{ByteReader, Layout, ObjectInfo, ObjectStore, Written};

type Log = Arc<Mutex<Vec<String>>>;

/// A directory store that logs every delete (`delete <key>`) and fails deletes of keys containing one
/// of `fail` (and reads of `volumes.json` when `fail` holds `GET`).
#[derive(Debug)]
struct Store {
    inner: FsStore,
    log: Log,
    fail: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ObjectStore for Store {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(&self, key: &str, body: &mut (dyn AsyncRead + Send + Unpin)) -> store::Result<Written> {
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> store::Result<ByteReader> {
        if self
            .fail
            .lock()
            .unwrap()
            .iter()
            .any(|f| f == "GET" && key.ends_with("volumes.json"))
        {
            return Err(store::Error::Other(format!("injected: cannot read {key}")));
        }
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> store::Result<Option<u64>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> store::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, keys: &[String]) -> store::Result<()> {
        let fail = self.fail.lock().unwrap().clone();
        if let Some(key) = keys.iter().find(|k| fail.iter().any(|f| k.contains(f.as_str()))) {
            return Err(store::Error::Other(format!("injected: cannot delete {key}")));
        }
        self.log
            .lock()
            .unwrap()
            .extend(keys.iter().map(|k| format!("delete {k}")));
        self.inner.delete(keys).await
    }
}

/// Snapshot objects in a fake cluster: each with the (policy, backup id) labels it carries.
#[derive(Default)]
struct Cluster {
    objects: Mutex<BTreeMap<SnapshotRef, (String, String)>>,
    log: Log,
    /// Names whose deletion fails.
    fail: Mutex<Vec<String>>,
    /// Retained contents by name: the snapshot each is bound to.
    contents: Mutex<BTreeMap<String, SnapshotRef>>,
}

#[async_trait::async_trait]
impl Snapshots for Cluster {
    async fn labelled(&self, policy: &str, backup: &BackupId) -> Result<Vec<SnapshotRef>, SnapshotError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (p, b))| p == policy && b == backup.as_str())
            .map(|(r, _)| r.clone())
            .collect())
    }
    async fn delete(
        &self,
        snapshot: &SnapshotRef,
        policy: &str,
        backup: &BackupId,
    ) -> Result<Deletion, SnapshotError> {
        if self.fail.lock().unwrap().contains(&snapshot.name) {
            return Err(SnapshotError::Other("injected: forbidden".into()));
        }
        let mut objects = self.objects.lock().unwrap();
        let Some((p, b)) = objects.get(snapshot) else {
            return Ok(Deletion::Gone);
        };
        if p != policy || b != backup.as_str() {
            return Ok(Deletion::NotOurs);
        }
        objects.remove(snapshot);
        self.log.lock().unwrap().push(format!("delete {snapshot}"));
        Ok(Deletion::Deleted)
    }
    async fn delete_content(&self, content: &ContentRef) -> Result<Deletion, SnapshotError> {
        if self.fail.lock().unwrap().contains(&content.name) {
            return Err(SnapshotError::Other("injected: forbidden".into()));
        }
        let mut contents = self.contents.lock().unwrap();
        let Some(bound_to) = contents.get(&content.name) else {
            return Ok(Deletion::Gone);
        };
        if *bound_to != content.snapshot {
            return Ok(Deletion::NotOurs);
        }
        contents.remove(&content.name);
        self.log.lock().unwrap().push(format!("delete {content}"));
        Ok(Deletion::Deleted)
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    cluster: Cluster,
    log: Log,
    layout: Layout,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    World {
        store: Store {
            inner: FsStore::new(dir.path()),
            log: log.clone(),
            fail: Mutex::default(),
        },
        cluster: Cluster {
            log: log.clone(),
            ..Cluster::default()
        },
        _dir: dir,
        log,
        layout: Layout::new("pre/fix"),
    }
}

fn vs(ns: &str, name: &str) -> SnapshotRef {
    SnapshotRef {
        kind: SnapshotKind::VolumeSnapshot,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn vgs(ns: &str, name: &str) -> SnapshotRef {
    SnapshotRef {
        kind: SnapshotKind::VolumeGroupSnapshot,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

impl World {
    /// Store backup `id` of policy `app` (status `None` = no manifest) with a resources archive, a dump
    /// and, when `snapshots` is non-empty, a volumes.json recording them (and them in the cluster,
    /// labelled as this backup's).
    async fn backup(&self, id: &str, status: Option<&str>, snapshots: &[SnapshotRef]) {
        let keys = self.layout.backup("app", &BackupId::parse(id).unwrap());
        store::put_bytes(&self.store, &keys.resources(), b"tar")
            .await
            .unwrap();
        store::put_bytes(&self.store, &keys.dump("pg", "db", "db-0"), b"dump")
            .await
            .unwrap();
        if !snapshots.is_empty() {
            let entry = |s: &SnapshotRef| serde_json::json!({"namespace": s.namespace, "name": s.name});
            let volumes: Vec<_> = snapshots
                .iter()
                .filter(|s| s.kind == SnapshotKind::VolumeSnapshot)
                .map(entry)
                .collect();
            let groups: Vec<_> = snapshots
                .iter()
                .filter(|s| s.kind == SnapshotKind::VolumeGroupSnapshot)
                .map(entry)
                .collect();
            let json = serde_json::json!({"formatVersion": 1, "policy": "app", "backupId": id,
                "verdict": "Completed", "volumes": volumes, "groups": groups});
            store::put_bytes(&self.store, &keys.volumes(), json.to_string().as_bytes())
                .await
                .unwrap();
            let mut objects = self.cluster.objects.lock().unwrap();
            for s in snapshots {
                objects.insert(s.clone(), ("app".into(), id.into()));
            }
        }
        if let Some(status) = status {
            let manifest = serde_json::json!({"formatVersion": 1, "freezeframeVersion": "0.1.0",
                "backupId": id, "policy": "app", "cluster": {"kubeSystemUid": "u"},
                "namespaces": ["db"], "startedAt": BackupId::parse(id).unwrap().time(),
                "finishedAt": BackupId::parse(id).unwrap().time(), "status": status,
                "objects": {}, "clusterObjects": {}, "artifacts": {}});
            store::put_bytes(&self.store, &keys.manifest(), manifest.to_string().as_bytes())
                .await
                .unwrap();
        }
    }

    async fn prune(&self, keep_last: u32, now: &str, dry_run: bool) -> Result<PruneReport, Error> {
        let rules = Retention {
            keep_last: Some(keep_last),
            ..Retention::default()
        };
        let mode = if dry_run {
            Mode::DryRun
        } else {
            Mode::Delete(&self.cluster)
        };
        let target = Target {
            store: &self.store,
            layout: &self.layout,
            repository: None,
        };
        prune(target, "app", &rules, at(now), mode).await
    }

    async fn keys(&self) -> Vec<String> {
        self.store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

const NOW: &str = "2026-11-24T00:00:00Z";

#[tokio::test]
async fn given_a_pruned_backup_then_manifest_goes_first_then_snapshots_then_objects_and_volumes_json_last() {
    let w = world();
    w.backup(
        "20261120T000000Z",
        Some("Completed"),
        &[vs("db", "data-0"), vgs("db", "group-0")],
    )
    .await;
    w.backup("20261121T000000Z", Some("Completed"), &[vs("db", "data-1")])
        .await;

    let report = w.prune(1, NOW, false).await.unwrap();

    let root = "pre/fix/backups/app/20261120T000000Z";
    assert_eq!(
        w.log(),
        [
            format!("delete {root}/manifest.json"),
            "delete VolumeGroupSnapshot db/group-0".to_string(),
            "delete VolumeSnapshot db/data-0".to_string(),
            format!("delete {root}/dumps/pg/db/db-0"),
            format!("delete {root}/resources.tar.zst"),
            format!("delete {root}/volumes.json"),
        ]
    );
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.pruned.len(), 1);
    let p = &report.pruned[0];
    assert_eq!(
        (p.backup_id.as_str(), p.reason.as_str(), p.objects),
        ("20261120T000000Z", "kept by no rule", 4)
    );
    assert_eq!(
        p.snapshots,
        ["VolumeGroupSnapshot db/group-0", "VolumeSnapshot db/data-0"]
    );
    assert_eq!(report.kept[0].backup_id, "20261121T000000Z");
    assert_eq!(report.kept[0].reasons, ["last 1", "newest good backup"]);
    assert!(w.keys().await.iter().all(|k| !k.contains("20261120T000000Z")));
    assert_eq!(
        w.cluster
            .objects
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        [vs("db", "data-1")],
        "the kept backup's snapshot stays"
    );
    assert_eq!(report.outcome(), Outcome::Success);
}

#[tokio::test]
async fn given_a_snapshot_deletion_fails_then_the_rest_goes_on_and_volumes_json_is_kept_for_a_retry() {
    let w = world();
    w.backup(
        "20261118T000000Z",
        Some("Completed"),
        &[vs("db", "stuck"), vs("db", "fine")],
    )
    .await;
    w.backup("20261119T000000Z", Some("Failed"), &[]).await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    w.cluster.fail.lock().unwrap().push("stuck".into());

    let report = w.prune(1, NOW, false).await.unwrap();

    assert_eq!(report.outcome(), Outcome::PartiallyFailed);
    assert_eq!(report.failed.len(), 1);
    let f = &report.failed[0];
    assert_eq!(f.backup_id, "20261118T000000Z");
    assert_eq!(
        f.errors,
        [
            "deleting VolumeSnapshot db/stuck (check RBAC: delete on volumesnapshots/volumegroupsnapshots): \
          injected: forbidden"
        ]
    );
    assert_eq!(f.snapshots, ["VolumeSnapshot db/fine"], "the other snapshot went");
    assert!(f.notes[0].contains("volumes.json was kept"), "{:?}", f.notes);
    assert_eq!(
        report
            .pruned
            .iter()
            .map(|p| p.backup_id.as_str())
            .collect::<Vec<_>>(),
        ["20261119T000000Z"],
        "the next backup was still pruned"
    );
    let left: Vec<String> = w.keys().await;
    assert_eq!(
        left,
        [
            "pre/fix/backups/app/20261118T000000Z/volumes.json",
            "pre/fix/backups/app/20261121T000000Z/dumps/pg/db/db-0",
            "pre/fix/backups/app/20261121T000000Z/manifest.json",
            "pre/fix/backups/app/20261121T000000Z/resources.tar.zst",
        ]
    );

    // The half-pruned backup is now incomplete; once the cause is fixed, the next prune finishes it
    // (it started more than the grace period ago).
    w.cluster.fail.lock().unwrap().clear();
    let again = w.prune(1, NOW, false).await.unwrap();
    assert!(again.failed.is_empty(), "{again:?}");
    assert_eq!(again.pruned.len(), 1);
    assert_eq!(again.pruned[0].status, "Incomplete");
    assert_eq!(again.pruned[0].snapshots, ["VolumeSnapshot db/stuck"]);
    assert!(w.cluster.objects.lock().unwrap().is_empty());
    assert!(w.keys().await.iter().all(|k| k.contains("20261121T000000Z")));
}

#[tokio::test]
async fn given_manifest_deletion_fails_then_nothing_else_of_it_is_deleted_and_other_backups_are_pruned() {
    let w = world();
    w.backup("20261118T000000Z", Some("Completed"), &[vs("db", "a")])
        .await;
    w.backup("20261119T000000Z", Some("Completed"), &[]).await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    w.store
        .fail
        .lock()
        .unwrap()
        .push("20261118T000000Z/manifest.json".into());

    let report = w.prune(1, NOW, false).await.unwrap();

    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].errors[0].starts_with(
            "deleting pre/fix/backups/app/20261118T000000Z/manifest.json failed, so nothing else"
        ),
        "{:?}",
        report.failed[0].errors
    );
    assert_eq!(report.failed[0].objects, 0);
    assert_eq!(report.pruned[0].backup_id, "20261119T000000Z");
    assert_eq!(
        w.keys()
            .await
            .iter()
            .filter(|k| k.contains("20261118T000000Z"))
            .count(),
        4,
        "the backup is whole: still valid, retried next time"
    );
    assert!(w.cluster.objects.lock().unwrap().contains_key(&vs("db", "a")));
}

#[tokio::test]
async fn given_volumes_json_cannot_be_read_then_nothing_of_that_backup_is_deleted() {
    let w = world();
    w.backup("20261118T000000Z", Some("Completed"), &[vs("db", "a")])
        .await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    w.store.fail.lock().unwrap().push("GET".into());

    let report = w.prune(1, NOW, false).await.unwrap();

    assert!(
        report.failed[0].errors[0].contains("volumes.json failed, so nothing of this backup was deleted")
    );
    assert!(w.log().is_empty(), "{:?}", w.log());
}

#[tokio::test]
async fn given_a_recorded_snapshot_that_is_not_ours_or_already_gone_then_it_is_left_alone() {
    let w = world();
    w.backup(
        "20261118T000000Z",
        Some("Completed"),
        &[vs("db", "same-name"), vs("db", "gone")],
    )
    .await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    {
        let mut objects = w.cluster.objects.lock().unwrap();
        objects.remove(&vs("db", "gone"));
        // Another run's object that happens to have the recorded name.
        objects.insert(vs("db", "same-name"), ("app".into(), "20261231T000000Z".into()));
    }

    let report = w.prune(1, NOW, false).await.unwrap();

    assert!(report.failed.is_empty(), "{report:?}");
    let p = &report.pruned[0];
    assert!(p.snapshots.is_empty());
    assert!(
        p.notes[0].starts_with("VolumeSnapshot db/same-name was left alone"),
        "{:?}",
        p.notes
    );
    assert!(
        w.cluster
            .objects
            .lock()
            .unwrap()
            .contains_key(&vs("db", "same-name"))
    );
}

#[tokio::test]
async fn given_a_crashed_run_without_volumes_json_then_its_labelled_snapshots_are_found_and_deleted() {
    let w = world();
    w.backup("20261118T000000Z", None, &[]).await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    w.cluster
        .objects
        .lock()
        .unwrap()
        .insert(vs("db", "orphan"), ("app".into(), "20261118T000000Z".into()));

    let report = w.prune(1, NOW, false).await.unwrap();

    let p = &report.pruned[0];
    assert_eq!(p.status, "Incomplete");
    assert_eq!(p.snapshots, ["VolumeSnapshot db/orphan"]);
    assert!(w.cluster.objects.lock().unwrap().is_empty());
}

#[tokio::test]
async fn given_group_members_in_volumes_json_then_only_the_group_is_deleted_by_name() {
    let w = world();
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    let keys = w
        .layout
        .backup("app", &BackupId::parse("20261118T000000Z").unwrap());
    let json = serde_json::json!({"volumes": [
            {"namespace": "db", "name": "member-0", "group": "g"},
            {"namespace": "db", "name": "single"}],
        "groups": [{"namespace": "db", "name": "g"}], "extraField": true});
    store::put_bytes(&w.store, &keys.volumes(), json.to_string().as_bytes())
        .await
        .unwrap();
    for s in [vgs("db", "g"), vs("db", "single")] {
        w.cluster
            .objects
            .lock()
            .unwrap()
            .insert(s, ("app".into(), "20261118T000000Z".into()));
    }

    let report = w.prune(1, NOW, false).await.unwrap();

    assert_eq!(
        report.pruned[0].snapshots,
        ["VolumeGroupSnapshot db/g", "VolumeSnapshot db/single"]
    );
    assert!(!w.log().iter().any(|l| l.contains("member-0")), "{:?}", w.log());
}

#[tokio::test]
async fn given_dry_run_then_nothing_is_deleted_and_the_report_says_what_would_be() {
    let w = world();
    w.backup("20261118T000000Z", Some("Completed"), &[vs("db", "a")])
        .await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    let before = w.keys().await;

    let report = w.prune(1, NOW, true).await.unwrap();

    assert!(report.dry_run);
    assert_eq!(report.pruned[0].backup_id, "20261118T000000Z");
    assert_eq!(report.pruned[0].objects, 4, "what would be deleted");
    assert_eq!(w.keys().await, before);
    assert!(w.log().is_empty());
    let again = w.prune(1, NOW, true).await.unwrap();
    assert_eq!(again, report, "a dry run changes nothing");
}

#[tokio::test]
async fn given_an_unreadable_manifest_when_pruning_then_nothing_is_pruned_and_the_error_names_the_fix() {
    let w = world();
    w.backup("20261118T000000Z", Some("Completed"), &[]).await;
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    let keys = w
        .layout
        .backup("app", &BackupId::parse("20261121T000000Z").unwrap());
    store::put_bytes(&w.store, &keys.manifest(), b"{not json")
        .await
        .unwrap();

    let err = w.prune(1, NOW, false).await.unwrap_err();

    let text = chain(&err);
    assert!(text.contains("cannot list the backups of policy app"), "{text}");
    assert!(text.contains("freezeframe prune --policy app"), "{text}");
    assert!(w.log().is_empty());
}

#[tokio::test]
async fn given_retained_contents_in_volumes_json_then_they_are_deleted_after_their_snapshots_and_others_are_left_alone()
 {
    let w = world();
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    let keys = w
        .layout
        .backup("app", &BackupId::parse("20261118T000000Z").unwrap());
    let json = serde_json::json!({"volumes": [
            {"namespace": "db", "name": "member-0", "group": "g", "contentName": "c-member-0"},
            {"namespace": "db", "name": "single", "contentName": "c-single"},
            {"namespace": "db", "name": "gone", "contentName": "c-gone"},
            {"namespace": "db", "name": "reused", "contentName": "c-reused"}],
        "groups": [{"namespace": "db", "name": "g", "contentName": "c-g"}]});
    store::put_bytes(&w.store, &keys.volumes(), json.to_string().as_bytes())
        .await
        .unwrap();
    w.cluster
        .objects
        .lock()
        .unwrap()
        .insert(vs("db", "single"), ("app".into(), "20261118T000000Z".into()));
    {
        let mut contents = w.cluster.contents.lock().unwrap();
        // The namespace was deleted: member-0 and gone have no snapshot object any more, their
        // retained contents stay until pruned.
        contents.insert("c-member-0".into(), vs("db", "member-0"));
        contents.insert("c-single".into(), vs("db", "single"));
        contents.insert("c-gone".into(), vs("db", "gone"));
        contents.insert("c-g".into(), vgs("db", "g"));
        // Same name, bound to another cluster's snapshot: not ours.
        contents.insert("c-reused".into(), vs("other", "reused"));
    }

    let report = w.prune(1, NOW, false).await.unwrap();

    assert!(report.failed.is_empty(), "{report:?}");
    let p = &report.pruned[0];
    assert_eq!(
        p.snapshots,
        [
            "VolumeSnapshot db/single",
            "VolumeGroupSnapshotContent c-g",
            "VolumeSnapshotContent c-gone",
            "VolumeSnapshotContent c-member-0",
            "VolumeSnapshotContent c-single",
        ]
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("VolumeSnapshotContent c-reused was left alone")),
        "{:?}",
        p.notes
    );
    let left: Vec<String> = w.cluster.contents.lock().unwrap().keys().cloned().collect();
    assert_eq!(left, ["c-reused"]);
    let log = w.log();
    let snapshot_at = log
        .iter()
        .position(|l| l == "delete VolumeSnapshot db/single")
        .unwrap();
    let content_at = log
        .iter()
        .position(|l| l == "delete VolumeSnapshotContent c-single")
        .unwrap();
    assert!(
        snapshot_at < content_at,
        "the snapshot goes before its content: {log:?}"
    );
}

#[tokio::test]
async fn given_a_retained_content_that_cannot_be_deleted_then_volumes_json_is_kept_for_a_retry() {
    let w = world();
    w.backup("20261121T000000Z", Some("Completed"), &[]).await;
    let keys = w
        .layout
        .backup("app", &BackupId::parse("20261118T000000Z").unwrap());
    let json =
        serde_json::json!({"volumes": [{"namespace": "db", "name": "single", "contentName": "c-single"}]});
    store::put_bytes(&w.store, &keys.volumes(), json.to_string().as_bytes())
        .await
        .unwrap();
    w.cluster
        .contents
        .lock()
        .unwrap()
        .insert("c-single".into(), vs("db", "single"));
    w.cluster.fail.lock().unwrap().push("c-single".into());

    let report = w.prune(1, NOW, false).await.unwrap();

    assert_eq!(report.failed.len(), 1, "{report:?}");
    let f = &report.failed[0];
    assert!(
        f.errors[0].contains("VolumeSnapshotContent c-single"),
        "{:?}",
        f.errors
    );
    assert!(
        w.keys().await.contains(&keys.volumes()),
        "kept for the next prune"
    );
}
