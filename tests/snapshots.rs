//! Volume snapshots inside the freeze against the sandbox's CSI emulation: data goes in through `pods/exec`,
//! the freeze is the hooks engine's, and a claim restored from a snapshot is read back through a pod.

use std::time::Duration;

use freezeframe::export::Selection;
use freezeframe::hooks::engine::Engine;
use freezeframe::hooks::plan;
use freezeframe::hooks::{GroupReport, GroupStatus, KubeExecutor, PodExecutor, Target, Termination};
use freezeframe::policy::{Policy, parse_str};
use freezeframe::snapshot::{self, BACKUP_ID_LABEL, GROUP_LABEL, Outcome, POLICY_LABEL, Request, Verdict};
use freezeframe_sandbox::snapshots::{ERROR_ANNOTATION, READY_AFTER_ANNOTATION, snapshot_dir};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::harness::TestEnv;

/// Namespace `app`: StatefulSet `db` (pod `db-0`, claims `data-db-0` at /var/lib/data and `logs-db-0` at
/// /var/log/db) and a claim `orphan` that never binds (its StorageClass does not exist).
const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: app}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: busybox
          volumeMounts: [{name: data, mountPath: /var/lib/data}, {name: logs, mountPath: /var/log/db}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
    - metadata: {name: logs}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: orphan, namespace: app}
spec: {storageClassName: none-such, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

/// A policy over namespace `app` freezing `db` (the post action records the thaw time) with `volumes`.
fn policy(volumes: &str) -> Policy {
    let text = format!(
        r#"
apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages: {{local: {{filesystem: {{path: /backups}}}}}}
defaults: {{storage: local}}
policies:
  - name: shop
    schedule: "@daily"
    namespaces: [app]
    retention: {{keepLast: 1}}
    volumes: {volumes}
    rules:
      pre: [{{podSelector: {{app: db}}, actions: [{{value: "date +%s.%N > frozen-at"}}]}}]
      post: [{{podSelector: {{app: db}}, actions: [{{value: "date +%s.%N > thawed-at; echo after >> var/lib/data/file"}}]}}]
"#
    );
    let set = parse_str("test", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    set.policies.into_iter().next().unwrap()
}

async fn exec(env: &TestEnv, pod: &str, container: &str, command: &str) -> String {
    let executor = KubeExecutor::new(env.client());
    let argv = ["sh".to_string(), "-c".to_string(), command.to_string()];
    let out = executor
        .run(
            &Target::new("app", pod, container),
            &argv,
            None,
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert!(
        matches!(out.termination, Termination::Exited(0)),
        "{command}: {out:?}"
    );
    out.stdout
}

/// Freeze the group, take the snapshots inside, thaw, complete: what the backup run does.
async fn backup(env: &TestEnv, policy: &Policy, id: &str) -> (GroupReport, Outcome) {
    let client = env.client();
    let selection = Selection::for_policy(&client, policy).await.expect("selection");
    let prepared = snapshot::prepare(
        &client,
        &selection,
        Request {
            policy: &policy.name,
            backup_id: id,
            volumes: &policy.volumes,
        },
    )
    .await
    .expect("prepare");
    let plan = plan::plan(&client, policy).await.expect("plan");
    let engine = Engine::new(KubeExecutor::new(client));
    let taking = &prepared;
    let (report, cut) = engine
        .with_freeze(&plan, &CancellationToken::new(), |budget| async move {
            taking.take(&budget).await
        })
        .await;
    assert_eq!(report.status, GroupStatus::Succeeded, "{report}");
    (report, prepared.complete(cut).await)
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn snapshots_api(env: &TestEnv) -> Api<DynamicObject> {
    let r = resource(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    );
    Api::namespaced_with(env.client(), "app", &r)
}

async fn snapshots_of(env: &TestEnv, id: &str) -> Vec<DynamicObject> {
    let params = ListParams::default().labels(&format!("{BACKUP_ID_LABEL}={id}"));
    snapshots_api(env).list(&params).await.unwrap().items
}

/// Restore claim `name` from snapshot `snapshot`, mount it in pod `reader` at /restore, read `file`.
async fn read_restored(env: &TestEnv, name: &str, snapshot: &str, file: &str) -> String {
    env.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: app}}\n\
         spec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n\
         \x20 dataSource: {{apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: {snapshot}}}\n"
    ))
    .unwrap();
    let reader = format!("{name}-reader");
    env.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {reader}, namespace: app}}\n\
         spec:\n  containers: [{{name: r, image: busybox, volumeMounts: [{{name: v, mountPath: /restore}}]}}]\n\
         \x20 volumes: [{{name: v, persistentVolumeClaim: {{claimName: {name}}}}}]\n"
    ))
    .unwrap();
    exec(env, &reader, "r", &format!("cat restore/{file}")).await
}

/// A sandbox with [`APP`] applied and `before` written to `db-0`'s data volume (and `log` to its logs).
async fn app_env() -> TestEnv {
    let env = TestEnv::new().await.unwrap();
    env.apply(APP).unwrap();
    exec(
        &env,
        "db-0",
        "db",
        "echo before > var/lib/data/file && echo log > var/log/db/log",
    )
    .await;
    env
}

/// A VolumeSnapshotClass `name` of the sandbox driver whose snapshots become ready `delay` after the cut.
fn slow_class(env: &TestEnv, name: &str, delay: &str) {
    env.apply(&format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\n\
         metadata: {{name: {name}, annotations: {{{READY_AFTER_ANNOTATION}: {delay}}}}}\n\
         driver: sandbox.freezeframe.dev\ndeletionPolicy: Delete\n"
    ))
    .unwrap();
}

/// Make every snapshot of claim `pvc` fail with "disk on fire".
async fn fail_claim(env: &TestEnv, pvc: &str) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "app");
    let patch = serde_json::json!({"metadata": {"annotations": {ERROR_ANNOTATION: "disk on fire"}}});
    claims
        .patch(pvc, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
}

fn time_file(env: &TestEnv, file: &str) -> chrono::DateTime<chrono::Utc> {
    let path = env.sandbox().state_dir().join("pods/app/db-0").join(file);
    let secs: f64 = std::fs::read_to_string(&path).unwrap().trim().parse().unwrap();
    chrono::DateTime::from_timestamp_micros((secs * 1e6) as i64).unwrap()
}

#[tokio::test]
async fn given_data_written_before_the_freeze_when_snapshotted_then_restore_has_it_and_not_what_was_written_after_thaw()
 {
    let env = app_env().await;

    let (_, outcome) = backup(&env, &policy("{}"), "20260101T000000Z").await;

    assert_eq!(outcome.verdict, Verdict::Completed, "{:#?}", outcome.failures);
    let pvcs: Vec<&str> = outcome.volumes.iter().map(|v| v.pvc.as_str()).collect();
    assert_eq!(pvcs, ["data-db-0", "logs-db-0"]);
    assert_eq!(outcome.skipped.len(), 1);
    assert_eq!(outcome.skipped[0].pvc, "orphan");
    assert!(
        outcome.skipped[0].reason.contains("not bound"),
        "{:?}",
        outcome.skipped
    );
    let data = &outcome.volumes[0];
    assert_eq!(data.class, "sandbox-snapclass", "the driver's default class");
    assert_eq!(data.driver, "sandbox.freezeframe.dev");
    assert_eq!(data.size.as_deref(), Some("1Gi"));
    assert!(!data.content_name.is_empty() && !data.snapshot_handle.is_empty());
    // The storage-side copy holds the data as it was at the cut.
    let copy = snapshot_dir(env.sandbox().cluster(), &data.snapshot_handle).join("file");
    assert_eq!(std::fs::read_to_string(copy).unwrap(), "before\n");
    // The live volume got the post-thaw write; a claim restored from the snapshot did not.
    assert_eq!(
        exec(&env, "db-0", "db", "cat var/lib/data/file").await,
        "before\nafter\n"
    );
    assert_eq!(
        read_restored(&env, "restored", &data.name, "file").await,
        "before\n"
    );

    let vs = snapshots_api(&env).get(&data.name).await.unwrap();
    let labels = vs.metadata.labels.unwrap();
    assert_eq!(labels[POLICY_LABEL], "shop");
    assert_eq!(labels[BACKUP_ID_LABEL], "20260101T000000Z");

    let json: Value = serde_json::from_slice(&outcome.volumes_json()).unwrap();
    let v = &json["volumes"][0];
    for field in [
        "namespace",
        "name",
        "pvc",
        "size",
        "class",
        "driver",
        "contentName",
        "snapshotHandle",
    ] {
        assert!(v[field].is_string(), "volumes.json lacks {field}: {v}");
    }
    assert_eq!(json["skipped"][0]["pvc"], "orphan");
    assert_eq!(json["verdict"], "Completed");
}

#[tokio::test]
async fn given_group_true_when_snapshotted_then_one_group_snapshot_covers_every_claim_and_the_label_is_removed()
 {
    let env = app_env().await;

    let (_, outcome) = backup(&env, &policy("{group: true}"), "20260101T000000Z").await;

    assert_eq!(outcome.verdict, Verdict::Completed, "{:#?}", outcome.failures);
    assert_eq!(outcome.groups.len(), 1);
    let group = &outcome.groups[0];
    assert_eq!(group.class, "sandbox-groupsnapclass");
    assert_eq!(group.pvcs, ["data-db-0", "logs-db-0"]);
    assert_eq!(outcome.volumes.len(), 2);
    for v in &outcome.volumes {
        assert_eq!(v.group.as_deref(), Some(group.name.as_str()));
    }
    let copy = snapshot_dir(env.sandbox().cluster(), &outcome.volumes[1].snapshot_handle).join("log");
    assert_eq!(std::fs::read_to_string(copy).unwrap(), "log\n");
    assert_eq!(
        read_restored(&env, "restored", &outcome.volumes[0].name, "file").await,
        "before\n"
    );
    // The selection label was temporary.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "app");
    for c in claims.list(&ListParams::default()).await.unwrap() {
        let labels = c.metadata.labels.unwrap_or_default();
        assert!(
            !labels.contains_key(GROUP_LABEL),
            "{:?} still labelled",
            c.metadata.name
        );
    }
}

/// Two policies over one namespace backed up in the same second (the same backup id), as `run` does with an
/// app policy and a whole-namespace policy on one schedule: every name is the policy's own, both complete.
async fn two_policies_in_one_second(volumes: &str) {
    let env = app_env().await;
    let first = policy(volumes);
    let mut second = policy(volumes);
    second.name = "whole-namespace".into();
    let id = "20260101T000000Z";

    let (_, a) = backup(&env, &first, id).await;
    let (_, b) = backup(&env, &second, id).await;

    assert_eq!(a.verdict, Verdict::Completed, "{:#?}", a.failures);
    assert_eq!(b.verdict, Verdict::Completed, "{:#?}", b.failures);
    assert_eq!(a.volumes.len(), 2);
    assert_eq!(b.volumes.len(), 2);
    let names = |o: &Outcome| o.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    assert!(
        names(&a).iter().all(|n| !names(&b).contains(n)),
        "{:?} / {:?}",
        names(&a),
        names(&b)
    );
    for v in a.volumes.iter().chain(&b.volumes) {
        snapshots_api(&env)
            .get(&v.name)
            .await
            .expect("each policy's snapshot exists");
    }
    for (outcome, name) in [(&a, "shop"), (&b, "whole-namespace")] {
        for g in &outcome.groups {
            assert!(g.name.contains(name), "{} names its policy", g.name);
        }
    }
}

#[tokio::test]
async fn given_two_policies_over_one_namespace_in_the_same_second_when_snapshotted_then_both_complete() {
    two_policies_in_one_second("{}").await;
}

#[tokio::test]
async fn given_two_group_policies_over_one_namespace_in_the_same_second_when_snapshotted_then_both_complete()
{
    two_policies_in_one_second("{group: true}").await;
}

#[tokio::test]
async fn given_group_true_and_no_group_snapshot_api_when_snapshotted_then_one_snapshot_per_claim() {
    let env = app_env().await;
    env.delete_crd_and_wait("volumegroupsnapshots.groupsnapshot.storage.k8s.io")
        .await
        .unwrap();

    let (_, outcome) = backup(&env, &policy("{group: true}"), "20260101T000000Z").await;

    assert_eq!(outcome.verdict, Verdict::Completed, "{:#?}", outcome.failures);
    assert!(outcome.groups.is_empty());
    assert_eq!(outcome.volumes.len(), 2);
    assert!(outcome.volumes.iter().all(|v| v.group.is_none()));
    assert_eq!(snapshots_of(&env, "20260101T000000Z").await.len(), 2);
}

#[tokio::test]
async fn given_policy_class_then_it_is_used_and_a_missing_class_fails_with_a_clear_reason() {
    let env = app_env().await;
    env.apply(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: retained}\n\
         driver: sandbox.freezeframe.dev\ndeletionPolicy: Retain\n---\n\
         apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\n\
         metadata: {name: elsewhere, annotations: {snapshot.storage.kubernetes.io/is-default-class: \"true\"}}\n\
         driver: ebs.csi.aws.com\ndeletionPolicy: Delete\n",
    )
    .unwrap();

    let (_, outcome) = backup(
        &env,
        &policy("{volumeSnapshotClass: retained}"),
        "20260101T000000Z",
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Completed, "{:#?}", outcome.failures);
    assert!(outcome.volumes.iter().all(|v| v.class == "retained"));

    let (_, outcome) = backup(
        &env,
        &policy("{volumeSnapshotClass: missing}"),
        "20260101T000001Z",
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Failed);
    assert_eq!(outcome.failures.len(), 2);
    let reason = &outcome.failures[0].reason;
    assert!(
        reason.contains("\"missing\"") && reason.contains("volumes.volumeSnapshotClass"),
        "{reason}"
    );
    assert!(snapshots_of(&env, "20260101T000001Z").await.is_empty());
}

#[tokio::test]
async fn given_slow_readiness_when_snapshotted_then_the_thaw_comes_at_the_cut_before_ready() {
    let env = app_env().await;
    slow_class(&env, "slow", "1500ms");

    let (report, outcome) = backup(&env, &policy("{volumeSnapshotClass: slow}"), "20260101T000000Z").await;

    assert_eq!(outcome.verdict, Verdict::Completed, "{:#?}", outcome.failures);
    let window = report.freeze_window.expect("a freeze window");
    assert!(
        window < Duration::from_millis(1500),
        "the freeze lasted {window:?}"
    );
    let thawed = time_file(&env, "thawed-at");
    let (cut, ready) = (outcome.cut_at.unwrap(), outcome.ready_at.unwrap());
    assert!(cut <= thawed, "cut {cut} before thaw {thawed}");
    assert!(thawed < ready, "thaw {thawed} before ready {ready}");
    assert!(
        ready - cut >= chrono::Duration::milliseconds(1400),
        "cut {cut}, ready {ready}"
    );
}

#[tokio::test]
async fn given_a_snapshot_not_ready_within_ready_timeout_then_it_fails_and_is_deleted() {
    let env = app_env().await;
    slow_class(&env, "slow", "30s");

    let (_, outcome) = backup(
        &env,
        &policy("{volumeSnapshotClass: slow, readyTimeout: 1s}"),
        "20260101T000000Z",
    )
    .await;

    assert_eq!(outcome.verdict, Verdict::Failed);
    assert!(
        outcome.failures[0].reason.contains("readyTimeout"),
        "{:?}",
        outcome.failures
    );
    assert_eq!(outcome.deleted.len(), 2);
    assert!(snapshots_of(&env, "20260101T000000Z").await.is_empty());
}

#[tokio::test]
async fn given_a_failing_snapshot_and_on_error_fail_then_the_backup_fails_and_its_snapshots_and_copies_go() {
    let env = app_env().await;
    fail_claim(&env, "logs-db-0").await;

    let (_, outcome) = backup(&env, &policy("{}"), "20260101T000000Z").await;

    assert_eq!(outcome.verdict, Verdict::Failed);
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].pvc, "logs-db-0");
    assert!(
        outcome.failures[0].reason.contains("disk on fire"),
        "{:?}",
        outcome.failures
    );
    assert!(snapshots_of(&env, "20260101T000000Z").await.is_empty());
    let handle = &outcome.volumes[0].snapshot_handle;
    assert!(
        !snapshot_dir(env.sandbox().cluster(), handle).exists(),
        "the copy was deleted"
    );
}

#[tokio::test]
async fn given_a_failing_snapshot_and_on_error_partial_then_partially_failed_and_keep_failed_keeps_it() {
    let env = app_env().await;
    fail_claim(&env, "logs-db-0").await;

    let (_, outcome) = backup(&env, &policy("{onError: partial}"), "20260101T000000Z").await;
    assert_eq!(outcome.verdict, Verdict::PartiallyFailed);
    assert_eq!(outcome.volumes.len(), 1);
    let left: Vec<String> = snapshots_of(&env, "20260101T000000Z")
        .await
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(
        left,
        [outcome.volumes[0].name.clone()],
        "the failed snapshot was deleted, the good one kept"
    );

    let (_, outcome) = backup(
        &env,
        &policy("{onError: partial, keepFailed: true}"),
        "20260101T000001Z",
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::PartiallyFailed);
    assert!(outcome.deleted.is_empty());
    let kept = snapshots_of(&env, "20260101T000001Z").await;
    assert_eq!(kept.len(), 2);
    let failed = kept
        .iter()
        .find(|s| !s.data["status"]["error"].is_null())
        .expect("the failed snapshot is kept");
    assert!(
        failed.data["status"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk on fire")
    );
}

#[tokio::test]
async fn given_a_claim_from_a_snapshot_not_yet_ready_then_it_binds_with_the_data_once_the_snapshot_is_ready()
{
    let env = app_env().await;
    slow_class(&env, "slow", "300ms");
    env.apply(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: manual, namespace: app}\n\
         spec: {volumeSnapshotClassName: slow, source: {persistentVolumeClaimName: data-db-0}}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: early, namespace: app}\n\
         spec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n\
         \x20 dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: manual}\n"
    )
    .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "app");
    let bound = |c: Option<&PersistentVolumeClaim>| {
        c.and_then(|c| c.status.as_ref()?.phase.as_deref()) == Some("Bound")
    };
    assert!(
        !bound(Some(&claims.get("early").await.unwrap())),
        "waits for the snapshot"
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        kube::runtime::wait::await_condition(claims, "early", bound),
    )
    .await
    .expect("bound once the snapshot is ready")
    .unwrap();
    env.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: early-reader, namespace: app}\n\
         spec:\n  containers: [{name: r, image: busybox, volumeMounts: [{name: v, mountPath: /restore}]}]\n\
         \x20 volumes: [{name: v, persistentVolumeClaim: {claimName: early}}]\n",
    )
    .unwrap();
    assert_eq!(
        exec(&env, "early-reader", "r", "cat restore/file").await,
        "before\n"
    );
}

#[tokio::test]
async fn given_committed_snapshots_when_retained_and_their_namespace_is_deleted_then_contents_and_data_survive()
 {
    for volumes in ["{}", "{group: true}"] {
        let env = app_env().await;
        let (_, outcome) = backup(&env, &policy(volumes), "20260101T000000Z").await;
        assert_eq!(outcome.verdict, Verdict::Completed, "{:#?}", outcome.failures);

        let problems = snapshot::retain(&env.client(), &outcome).await;

        assert_eq!(problems, Vec::<String>::new(), "{volumes}");
        let contents: Api<DynamicObject> = Api::all_with(
            env.client(),
            &resource(
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshotContent",
                "volumesnapshotcontents",
            ),
        );
        for v in &outcome.volumes {
            let content = contents.get(&v.content_name).await.unwrap();
            assert_eq!(content.data["spec"]["deletionPolicy"], "Retain", "{volumes}");
        }
        // The disaster: the namespace, and the snapshot objects in it, are deleted.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client());
        namespaces.delete("app", &DeleteParams::default()).await.unwrap();
        let gone = |ns: Option<&k8s_openapi::api::core::v1::Namespace>| ns.is_none();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(namespaces.clone(), "app", gone),
        )
        .await
        .expect("namespace app gone")
        .unwrap();
        for v in &outcome.volumes {
            assert!(
                contents.get_opt(&v.content_name).await.unwrap().is_some(),
                "{volumes}: {} kept",
                v.content_name
            );
            let copy = snapshot_dir(env.sandbox().cluster(), &v.snapshot_handle);
            assert!(
                copy.exists(),
                "{volumes}: the storage snapshot of {} survives",
                v.pvc
            );
        }
    }
}
