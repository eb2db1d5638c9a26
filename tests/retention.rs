//! Retention against the sandbox and real stores: `freezeframe backup` and `freezeframe run` prune the
//! policy after committing its manifest (snapshots included), failed backups never cost a good one,
//! `freezeframe prune --dry-run` deletes nothing, and pruning works the same on S3 (SeaweedFS).
//!
//! Older backups are made through the library with a [`ManualClock`] (distinct ids hours apart); the
//! newest through the real binary, as the CronJob would.

use std::path::Path;
use std::process::Output;

use chrono::{DateTime, Utc};
use freezeframe::backup::{self, Manifest, Status};
use freezeframe::policy::Policy;
use freezeframe::retention::cluster::KubeSnapshots;
use freezeframe::retention::{self, Mode, Target};
use freezeframe::snapshot::BACKUP_ID_LABEL;
use freezeframe::store::{self, BackupId, Layout, ObjectStore, fs::FsStore, s3::S3Store};
use freezeframe_sandbox::snapshots::snapshot_dir;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};

use crate::harness::{TestEnv, logged_output, policy};

/// Namespace `db`, a StatefulSet `db` with one pod and (with `claims`) a volume claim template `data`.
fn app(claims: bool) -> String {
    let mut text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: db}\n\
         spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n\
         \x20 template:\n    metadata: {labels: {app: db}}\n\
         \x20   spec: {containers: [{name: db, image: busybox, volumeMounts: VOLUMES}]}\n"
        .to_string();
    if claims {
        text = text.replace("VOLUMES", "[{name: data, mountPath: /var/lib/data}]");
        text.push_str(
            "  volumeClaimTemplates:\n    - metadata: {name: data}\n\
             \x20     spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n",
        );
    } else {
        text = text.replace("VOLUMES", "[]");
    }
    text
}

/// A PolicySet with policy `app` over namespace `db` into directory `store_dir`, with `retention` and
/// extra fields (YAML, indented by four spaces).
fn policy_text(store_dir: &Path, retention: &str, fields: &str) -> String {
    format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: {}}}}}}}\n\
         defaults: {{storage: local}}\n\
         policies:\n  - name: app\n    schedule: \"@daily\"\n    namespaces: [db]\n\
         \x20   retention: {retention}\n{fields}",
        store_dir.display()
    )
}

fn hours_ago(h: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(h)
}

/// One backup of `policy` through the library, started at `at`, into `store` under `layout`.
async fn back_up_at(
    env: &TestEnv,
    policy: &Policy,
    store: &dyn ObjectStore,
    layout: &Layout,
    at: DateTime<Utc>,
) -> Manifest {
    env.back_up(policy, store, layout, at).await.unwrap()
}

async fn stored_ids(store: &dyn ObjectStore, layout: &Layout) -> Vec<String> {
    backup::list(store, layout, Some("app"))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id.to_string())
        .collect()
}

fn snapshot_api(env: &TestEnv, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", kind);
    Api::all_with(env.client(), &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// The `freezeframe.dev/backup-id` label of every VolumeSnapshot, sorted.
async fn snapshot_backup_ids(env: &TestEnv) -> Vec<String> {
    let list = snapshot_api(env, "VolumeSnapshot", "volumesnapshots")
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut ids: Vec<String> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.labels.as_ref()?.get(BACKUP_ID_LABEL).cloned())
        .collect();
    ids.sort();
    ids
}

/// Run the freezeframe binary with `args` against the sandbox (`kubeconfig: false`: against none).
async fn freezeframe(env: &TestEnv, args: &[&str], kubeconfig: bool) -> Output {
    let mut command = env.freezeframe(args);
    if !kubeconfig {
        command.env("KUBECONFIG", env.dir().join("no-such-kubeconfig"));
    }
    logged_output(&mut command).await
}

fn write_policies(env: &TestEnv, text: &str) -> String {
    let file = env.dir().join("policies.yaml");
    std::fs::write(&file, text).unwrap();
    file.display().to_string()
}

#[tokio::test]
async fn given_keep_last_2_when_fourth_backup_runs_then_oldest_two_are_pruned_with_their_snapshots() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&app(true)).unwrap();
    let dir = env.dir().join("backups");
    let text = policy_text(&dir, "{keepLast: 2}", "");
    let p = policy(&text);
    let (store, layout) = (FsStore::new(&dir), Layout::new(""));
    let mut old = Vec::new();
    for h in [3, 2, 1] {
        let m = back_up_at(&env, &p, &store, &layout, hours_ago(h)).await;
        assert_eq!(m.status, Status::Completed, "{:?}", m.problems);
        assert_eq!(m.volumes.as_ref().unwrap().snapshots.len(), 1);
        old.push(m.backup_id);
    }
    assert_eq!(snapshot_backup_ids(&env).await, old, "one snapshot per backup");
    let handles_before: Vec<String> = snapshot_api(&env, "VolumeSnapshotContent", "volumesnapshotcontents")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| {
            assert_eq!(
                c.data["spec"]["deletionPolicy"], "Retain",
                "committed backups retain"
            );
            c.data["status"]["snapshotHandle"].as_str().unwrap().to_string()
        })
        .collect();

    let file = write_policies(&env, &text);
    let out = freezeframe(&env, &["backup", "--policy", "app", "--policy-file", &file], true).await;

    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("retention: kept 2, pruned 2, failed 0"),
        "{stdout}"
    );
    for id in &old[..2] {
        assert!(
            stdout.contains(&format!(
                "pruned {id} (Completed; kept by no rule): 2 snapshot objects, 3 store objects deleted"
            )),
            "{stdout}"
        );
    }
    let ids = stored_ids(&store, &layout).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], old[2], "the newest older backup is kept");
    let mut expected = vec![old[2].clone(), ids[1].clone()];
    expected.sort();
    assert_eq!(
        snapshot_backup_ids(&env).await,
        expected,
        "the pruned backups' snapshots are gone, the kept ones' stay"
    );
    let contents = snapshot_api(&env, "VolumeSnapshotContent", "volumesnapshotcontents")
        .list(&ListParams::default())
        .await
        .unwrap();
    let kept: Vec<&str> = contents
        .items
        .iter()
        .map(|c| c.data["status"]["snapshotHandle"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "the pruned backups' retained contents were deleted: {kept:?}"
    );
    for handle in &handles_before {
        let copy = snapshot_dir(env.sandbox().cluster(), handle);
        assert_eq!(
            copy.exists(),
            kept.contains(&handle.as_str()),
            "storage snapshot {handle}: kept exactly when its content is"
        );
    }
    assert!(
        !dir.join("backups/app").join(&old[0]).exists(),
        "no directory left behind"
    );
}

#[tokio::test]
async fn given_all_recent_backups_failed_when_prune_then_last_good_backup_is_kept() {
    // On S3 (SeaweedFS), under a store prefix.
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&app(false)).unwrap();
    let store = S3Store::new(env.s3().client().clone(), env.s3().bucket());
    let layout = Layout::new("clusters/a");
    let good = policy(&policy_text(
        env.dir(),
        "{keepLast: 1}",
        "    volumes: {snapshot: none}\n",
    ));
    let failing = policy(&policy_text(
        env.dir(),
        "{keepLast: 1}",
        "    volumes: {snapshot: none}\n    rules:\n      pre: [{podSelector: {app: db}, actions: [{value: \"exit 7\"}]}]\n",
    ));
    let older = back_up_at(&env, &good, &store, &layout, hours_ago(6)).await;
    let last_good = back_up_at(&env, &good, &store, &layout, hours_ago(5)).await;
    let mut failed = Vec::new();
    for h in [4, 3, 2] {
        let m = back_up_at(&env, &failing, &store, &layout, hours_ago(h)).await;
        assert_eq!(m.status, Status::Failed);
        failed.push(m.backup_id);
    }
    let snapshots = KubeSnapshots::new(env.client()).await.unwrap();
    let target = Target {
        store: &store,
        layout: &layout,
        repository: None,
    };

    let report = retention::prune(
        target,
        "app",
        &good.retention,
        Utc::now(),
        Mode::Delete(&snapshots),
    )
    .await
    .unwrap();

    let pruned: Vec<&str> = report.pruned.iter().map(|p| p.backup_id.as_str()).collect();
    assert_eq!(pruned, [older.backup_id.as_str()], "{report:#?}");
    let kept: Vec<(&str, &str)> = report
        .kept
        .iter()
        .map(|k| (k.backup_id.as_str(), k.status.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            (last_good.backup_id.as_str(), "Completed"),
            (failed[0].as_str(), "Failed"),
            (failed[1].as_str(), "Failed"),
            (failed[2].as_str(), "Failed"),
        ]
    );
    assert_eq!(report.kept[0].reasons, ["last 1", "newest good backup"]);

    // A good backup again: now the failures and the previous good backup go.
    let newest = back_up_at(&env, &good, &store, &layout, hours_ago(1)).await;
    let report = retention::prune(
        target,
        "app",
        &good.retention,
        Utc::now(),
        Mode::Delete(&snapshots),
    )
    .await
    .unwrap();
    assert_eq!(report.pruned.len(), 4, "{report:#?}");
    assert!(
        report.pruned[1..]
            .iter()
            .all(|p| p.reason == "failed, and a newer good backup exists")
    );
    assert_eq!(stored_ids(&store, &layout).await, [newest.backup_id.as_str()]);
    let objects = store.list("").await.unwrap();
    assert!(
        objects.iter().all(|o| o
            .key
            .starts_with(&format!("clusters/a/backups/app/{}/", newest.backup_id))),
        "nothing else is left in the bucket: {objects:?}"
    );
}

#[tokio::test]
async fn given_prune_dry_run_when_run_then_nothing_is_deleted_and_each_backup_says_why() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&app(false)).unwrap();
    let dir = env.dir().join("backups");
    let text = policy_text(
        &dir,
        "{keepLast: 1, keepDaily: 2}",
        "    volumes: {snapshot: none}\n",
    );
    let p = policy(&text);
    let (store, layout) = (FsStore::new(&dir), Layout::new(""));
    // Fixed hours of whole UTC days, so the daily buckets do not depend on when the test runs.
    let midnight = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let day = |d: i64, h: i64| midnight - chrono::Duration::days(d) + chrono::Duration::hours(h);
    let mut ids = Vec::new();
    for at in [day(4, 1), day(2, 1), day(2, 2), day(1, 1)] {
        ids.push(back_up_at(&env, &p, &store, &layout, at).await.backup_id);
    }
    // A run that crashed three days ago: no manifest.
    let crashed = BackupId::at(day(3, 0));
    store::put_bytes(&store, &layout.backup("app", &crashed).resources(), b"half")
        .await
        .unwrap();
    let before = store.list("").await.unwrap();
    let file = write_policies(&env, &text);

    // No cluster at all: a dry run from a file needs none.
    let out = freezeframe(
        &env,
        &["prune", "--policy", "app", "--policy-file", &file, "--dry-run"],
        false,
    )
    .await;

    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |id: &str| -> String {
        stdout
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(stdout.starts_with("POLICY"), "{stdout}");
    assert!(
        line(&ids[0]).contains("Completed would prune kept by no rule"),
        "{stdout}"
    );
    assert!(
        line(&ids[1]).contains("Completed would prune kept by no rule"),
        "{stdout}"
    );
    assert!(line(&ids[2]).contains("Completed keep daily"), "{stdout}");
    let newest = line(&ids[3]);
    assert!(
        newest.contains("Completed keep last 1, daily ") && newest.ends_with(", newest good backup"),
        "{stdout}"
    );
    assert!(
        line(crashed.as_str()).contains("Incomplete would prune incomplete (no manifest), started 3d"),
        "{stdout}"
    );
    assert_eq!(store.list("").await.unwrap(), before, "a dry run deletes nothing");

    // The same for real, as JSON.
    let out = freezeframe(
        &env,
        &["prune", "--policy", "app", "--policy-file", &file, "-o", "json"],
        true,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pruned: Vec<&str> = reports[0]["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["backupId"].as_str().unwrap())
        .collect();
    assert_eq!(pruned, [ids[0].as_str(), crashed.as_str(), ids[1].as_str()]);
    assert_eq!(reports[0]["dryRun"], false);
    assert_eq!(stored_ids(&store, &layout).await, ids[2..]);
}

#[tokio::test]
async fn given_no_prune_flag_when_backup_runs_then_old_backups_stay() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&app(false)).unwrap();
    let dir = env.dir().join("backups");
    let text = policy_text(&dir, "{keepLast: 1}", "    volumes: {snapshot: none}\n");
    let p = policy(&text);
    let (store, layout) = (FsStore::new(&dir), Layout::new(""));
    back_up_at(&env, &p, &store, &layout, hours_ago(2)).await;
    back_up_at(&env, &p, &store, &layout, hours_ago(1)).await;
    let file = write_policies(&env, &text);

    let out = freezeframe(
        &env,
        &["backup", "--policy", "app", "--policy-file", &file, "--no-prune"],
        true,
    )
    .await;

    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("retention:"));
    assert_eq!(stored_ids(&store, &layout).await.len(), 3);
}

#[tokio::test]
async fn given_a_due_policy_when_ticked_twice_then_run_prunes_after_each_backup() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&app(false)).unwrap();
    env.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: freezeframe}\n")
        .unwrap();
    let dir = env.dir().join("backups");
    let text = policy_text(&dir, "{keepLast: 1}", "    volumes: {snapshot: none}\n");
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "freezeframe-policies", "namespace": "freezeframe"},
        "data": {"policies.yaml": text},
    });
    env.apply(&serde_json::to_string(&cm).unwrap()).unwrap();
    let tick = async || {
        logged_output(
            env.freezeframe(&["run", "--now", "app"])
                .env("FREEZEFRAME_NAMESPACE", "freezeframe"),
        )
        .await
    };
    let (store, layout) = (FsStore::new(&dir), Layout::new(""));

    let first = tick().await;
    assert_eq!(first.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&first.stdout).contains("retention: kept 1, pruned 0, failed 0"));
    let before = stored_ids(&store, &layout).await;
    let second = tick().await;

    assert_eq!(second.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("retention: kept 1, pruned 1, failed 0"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("pruned {}", before[0])), "{stdout}");
    let after = stored_ids(&store, &layout).await;
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
}

#[tokio::test]
async fn given_an_unreadable_old_manifest_when_backup_runs_then_backup_is_committed_and_exit_is_3() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&app(false)).unwrap();
    let dir = env.dir().join("backups");
    let text = policy_text(&dir, "{keepLast: 1}", "    volumes: {snapshot: none}\n");
    let (store, layout) = (FsStore::new(&dir), Layout::new(""));
    let old = layout.backup("app", &BackupId::at(hours_ago(30)));
    store::put_bytes(&store, &old.manifest(), b"{truncated")
        .await
        .unwrap();
    let file = write_policies(&env, &text);

    let out = freezeframe(&env, &["backup", "--policy", "app", "--policy-file", &file], true).await;

    assert_eq!(out.status.code(), Some(3), "the prune failed: PartiallyFailed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("Completed"), "{stdout}");
    assert!(
        stderr.contains("error: app: retention was not applied: cannot list the backups of policy app"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&old.manifest()),
        "names the unreadable manifest: {stderr}"
    );
    let new_manifests: Vec<_> = store
        .list("backups/app/")
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.key.ends_with("manifest.json") && o.key != old.manifest())
        .collect();
    assert_eq!(new_manifests.len(), 1);
    let m = Manifest::from_json(&store::get_bytes(&store, &new_manifests[0].key).await.unwrap()).unwrap();
    assert_eq!(
        m.status,
        Status::Completed,
        "the backup's manifest is not changed by the prune"
    );
    assert!(
        store.head(&old.manifest()).await.unwrap().is_some(),
        "nothing was pruned"
    );
}
