//! Group freeze/thaw against the sandbox's real `pods/exec`: commands run as host processes in each pod's
//! directory, so they leave timestamps and marker files the tests read back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use freezeframe::hooks::engine::Engine;
use freezeframe::hooks::plan::{self, Plan};
use freezeframe::hooks::{GroupStatus, InvocationResult, KubeExecutor};
use freezeframe::policy::{Exec, Policy, parse_str};
use tokio_util::sync::CancellationToken;

use crate::harness::TestEnv;

const CASSANDRA: &str = include_str!("../policies/cassandra.yaml");

/// A policy over namespace `db` with the given `rules` (YAML flow style) and extra policy fields.
fn policy(rules: &str, extra: &str) -> Policy {
    let text = format!(
        r#"
apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages: {{local: {{filesystem: {{path: /backups}}}}}}
defaults: {{storage: local}}
policies:
  - name: hooks
    schedule: "@daily"
    namespaces: [db]
    retention: {{keepLast: 1}}
    rules: {rules}
{extra}
"#
    );
    let set = parse_str("test", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    set.policies.into_iter().next().unwrap()
}

/// Namespace `ns` and a StatefulSet `name` of `replicas` pods labelled `app: name`.
fn statefulset(ns: &str, name: &str, replicas: usize, containers: &[&str]) -> String {
    let containers: Vec<String> = containers
        .iter()
        .map(|c| format!("{{name: {c}, image: busybox}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  replicas: {replicas}\n  serviceName: {name}\n  selector: {{matchLabels: {{app: {name}}}}}\n\
         \x20 template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{}]}}\n",
        containers.join(", ")
    )
}

fn pod_dir(env: &TestEnv, ns: &str, pod: &str) -> PathBuf {
    env.sandbox().state_dir().join("pods").join(ns).join(pod)
}

fn read_time(dir: &Path, file: &str) -> f64 {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{dir:?}/{file}: {e}"));
    text.trim().parse().unwrap()
}

async fn plan_for(env: &TestEnv, policy: &Policy) -> Plan {
    plan::plan(&env.client(), policy).await.expect("plan")
}

#[tokio::test]
async fn given_20_pods_with_1s_pre_action_when_frozen_then_all_pre_actions_overlap() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 20, &["db"])).unwrap();
    let p = policy(
        r#"{pre: [{podSelector: {app: db}, actions: [
              {value: "date +%s.%N > pre-start; sleep 1; date +%s.%N > pre-end"}]}],
            post: [{podSelector: {app: db}, actions: [{value: "date +%s.%N > post-end"}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &p).await;
    assert_eq!(plan.pre[0].invocations.len(), 20);
    let engine = Engine::new(KubeExecutor::new(env.client()));
    let (report, snap) = engine
        .with_freeze(&plan, &CancellationToken::new(), |_| async { "snapshot" })
        .await;
    assert_eq!(report.status, GroupStatus::Succeeded, "{report}");
    assert_eq!(snap, Some("snapshot"));
    let dirs: Vec<PathBuf> = (0..20).map(|i| pod_dir(&env, "db", &format!("db-{i}"))).collect();
    let last_start = dirs
        .iter()
        .map(|d| read_time(d, "pre-start"))
        .fold(f64::MIN, f64::max);
    let first_end = dirs
        .iter()
        .map(|d| read_time(d, "pre-end"))
        .fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "every pre action started before any ended: last start {last_start}, first end {first_end}"
    );
    let first_start = dirs
        .iter()
        .map(|d| read_time(d, "pre-start"))
        .fold(f64::MAX, f64::min);
    let last_post = dirs
        .iter()
        .map(|d| read_time(d, "post-end"))
        .fold(f64::MIN, f64::max);
    assert!(first_start < last_post);
    // One after the other this would take at least 20 s; the bound is loose for a busy 2-core machine.
    let window = report.freeze_window.unwrap();
    assert!(window < Duration::from_secs(5), "freeze window {window:?}");
    eprintln!("20-pod freeze window: {window:?}");
}

#[tokio::test]
async fn given_one_pod_pre_fails_when_freezing_then_no_snapshot_and_post_on_every_started_pod() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 3, &["db"])).unwrap();
    let p = policy(
        r#"{pre: [{podSelector: {app: db}, actions: [
              {value: "touch pre-ran; if [ \"$POD_NAME\" = db-1 ]; then echo 'cannot lock tables' >&2; exit 3; fi"},
              {value: "touch never"}]}],
            post: [{podSelector: {app: db}, actions: [{value: "touch post-ran"}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &p).await;
    let snapshot = AtomicBool::new(false);
    let (report, _) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async {
            snapshot.store(true, Ordering::SeqCst)
        })
        .await;
    assert!(
        !snapshot.load(Ordering::SeqCst),
        "no snapshot after an aborting failure"
    );
    assert_eq!(report.status, GroupStatus::Failed);
    for i in 0..3 {
        let dir = pod_dir(&env, "db", &format!("db-{i}"));
        assert!(
            dir.join("pre-ran").exists() && dir.join("post-ran").exists(),
            "db-{i}"
        );
        assert!(
            !dir.join("never").exists(),
            "db-{i}: the next action does not run after abort"
        );
    }
    let cause = report.abort_cause().unwrap();
    assert_eq!(cause.invocation.target.pod, "db-1");
    assert_eq!(cause.step, "rules.pre[0].actions[0]");
    assert_eq!(cause.invocation.result, InvocationResult::Exited(3));
    assert_eq!(cause.invocation.stderr, "cannot lock tables\n");
    let text = cause.to_string();
    assert!(
        text.contains("pod db/db-1") && text.contains("exit code 3") && text.contains("cannot lock tables"),
        "{text}"
    );
}

#[tokio::test]
async fn given_held_lock_when_frozen_then_command_alive_during_snapshot_and_gone_after_thaw() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 2, &["db"])).unwrap();
    let p = policy(
        r#"{pre: [{podSelector: {app: db}, actions: [
              {value: "echo $$ > held.pid; ${WAIT_CMD}; touch released", background: true, timeout: 10s}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &p).await;
    let dirs = [pod_dir(&env, "db", "db-0"), pod_dir(&env, "db", "db-1")];
    let (report, pids) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async {
            // Still holding a second later: the session is open, not merely slow to close.
            tokio::time::sleep(Duration::from_secs(1)).await;
            dirs.iter()
                .map(|d| {
                    assert!(
                        !d.join("released").exists(),
                        "{d:?}: lock released during the snapshot"
                    );
                    let pid: i32 = std::fs::read_to_string(d.join("held.pid"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    assert!(alive(pid), "{d:?}: held command not running during the snapshot");
                    pid
                })
                .collect::<Vec<_>>()
        })
        .await;
    assert_eq!(report.status, GroupStatus::Succeeded, "{report}");
    assert!(
        report.pre[0]
            .invocations
            .iter()
            .all(|i| i.result == InvocationResult::Held)
    );
    assert!(
        report
            .releases
            .iter()
            .all(|r| r.result == InvocationResult::Succeeded)
    );
    for (d, pid) in dirs.iter().zip(pids.unwrap()) {
        assert!(d.join("released").exists(), "{d:?}: command finished after thaw");
        assert!(!alive(pid), "{d:?}: held command gone after thaw");
    }
}

#[tokio::test]
async fn given_held_lock_when_freezer_drops_the_session_without_thaw_then_held_command_ends() {
    // What happens when freezeframe is killed: its exec streams drop and the lock is released.
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 1, &["db"])).unwrap();
    let p = policy(
        r#"{pre: [{podSelector: {app: db}, actions: [
              {value: "${WAIT_CMD}; touch released", background: true, timeout: 10s}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &p).await;
    let engine = Engine::new(KubeExecutor::new(env.client()));
    let frozen = engine.freeze(&plan, &CancellationToken::new()).await;
    assert!(frozen.is_frozen());
    let released = pod_dir(&env, "db", "db-0").join("released");
    assert!(!released.exists());
    drop(frozen);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !released.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the held command ends once its stream is gone");
}

#[tokio::test]
async fn given_pre_action_exceeding_timeout_when_frozen_then_stream_closed_reported_and_thaw_runs() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 1, &["db"])).unwrap();
    let p = policy(
        r#"{pre: [{podSelector: {app: db}, actions: [{value: "echo started; sleep 30", timeout: 1s}]}],
            post: [{podSelector: {app: db}, actions: [{value: "touch post-ran"}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &p).await;
    let started = std::time::Instant::now();
    let (report, out) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    assert!(out.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout cut the 30 s command short"
    );
    assert_eq!(report.status, GroupStatus::Failed);
    let cause = report.abort_cause().unwrap();
    assert_eq!(
        cause.invocation.result,
        InvocationResult::TimedOut(Duration::from_secs(1))
    );
    assert_eq!(
        cause.invocation.stdout, "started\n",
        "output before the timeout is kept"
    );
    assert!(cause.to_string().contains("may still be running"), "{cause}");
    assert!(pod_dir(&env, "db", "db-0").join("post-ran").exists());
}

#[tokio::test]
async fn given_multi_container_pod_and_no_container_when_planning_then_error_lists_containers() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 1, &["db", "istio-proxy"]))
        .unwrap();
    let p = policy(
        r#"{pre: [{podSelector: {app: db}, actions: [{value: "true"}]}]}"#,
        "",
    );
    let err = plan::plan(&env.client(), &p).await.unwrap_err();
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        text.starts_with("rules.pre[0]: pod db/db-0 has containers [db, istio-proxy]"),
        "{text}"
    );

    let named = policy(
        r#"{pre: [{podSelector: {app: db}, container: db, actions: [{value: "echo $CONTAINER_NAME > c"}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &named).await;
    let (report, _) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    assert_eq!(report.status, GroupStatus::Succeeded, "{report}");
    assert_eq!(
        std::fs::read_to_string(pod_dir(&env, "db", "db-0").join("c")).unwrap(),
        "db\n"
    );
}

#[tokio::test]
async fn given_empty_selection_when_planning_then_fail_errors_and_skip_skips() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("db", "db", 1, &["db"])).unwrap();
    let fail = policy(
        r#"{pre: [{podSelector: {app: nothing}, actions: [{value: "true"}]}]}"#,
        "",
    );
    let err = plan::plan(&env.client(), &fail).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "rules.pre[0]: no usable pod matches `app=nothing` in namespaces [db]"
    );
    let skip = policy(
        r#"{pre: [{podSelector: {app: nothing}, onNoPods: skip, actions: [{value: "true"}]}]}"#,
        "",
    );
    let plan = plan_for(&env, &skip).await;
    assert!(plan.is_empty());
    let (report, out) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async { "snapshot" })
        .await;
    assert_eq!((report.status, out), (GroupStatus::Succeeded, Some("snapshot")));
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.freeze_window, None, "nothing was frozen");
}

#[tokio::test]
async fn given_cassandra_example_with_stork_rule_when_frozen_then_both_rules_run_on_all_three_pods() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset("cassandra", "cassandra", 3, &["cassandra"]))
        .unwrap();
    let set = parse_str("policies/cassandra.yaml", CASSANDRA);
    assert!(set.is_valid(), "{:#?}", set.problems);
    let policy = set.policy("cassandra-ring").unwrap();
    let mut plan = plan_for(&env, policy).await;
    let names: Vec<&str> = plan.pre.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "rules.pre[0].actions[0]",
            "Stork Rule `cassandra-presnap-rule` rules[0].actions[0]"
        ]
    );
    // The sandbox has no Cassandra: a shell function stands in for the nodetool binary, and the
    // example's command runs unchanged after it.
    for inv in plan.pre.iter_mut().flat_map(|s| s.invocations.iter_mut()) {
        assert_eq!(inv.action.exec, Exec::Shell("nodetool flush".into()));
        assert_eq!(inv.target.container, "cassandra");
        inv.action.exec =
            Exec::Shell("nodetool() { echo \"nodetool $*\" >> nodetool.log; }; nodetool flush".into());
    }
    let (report, _) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    assert_eq!(report.status, GroupStatus::Succeeded, "{report}");
    for i in 0..3 {
        let log = std::fs::read_to_string(
            pod_dir(&env, "cassandra", &format!("cassandra-{i}")).join("nodetool.log"),
        )
        .unwrap();
        assert_eq!(
            log, "nodetool flush\nnodetool flush\n",
            "cassandra-{i}: native rule then Stork rule"
        );
    }
}

#[tokio::test]
async fn given_velero_hook_annotations_when_honoured_then_pre_and_post_run_and_otherwise_ignored() {
    let env = TestEnv::new().await.unwrap();
    env.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: Pod
metadata:
  name: mysql-0
  namespace: db
  labels: {app: mysql}
  annotations:
    pre.hook.backup.velero.io/container: mysql
    pre.hook.backup.velero.io/command: '["/bin/sh", "-c", "echo $CONTAINER_NAME > velero-pre"]'
    pre.hook.backup.velero.io/timeout: 20s
    post.hook.backup.velero.io/container: mysql
    post.hook.backup.velero.io/command: '["/bin/sh", "-c", "touch velero-post"]'
spec:
  containers: [{name: mysql, image: mysql}, {name: istio-proxy, image: istio}]
"#,
    )
    .unwrap();
    let ignored = policy("{}", "");
    assert!(plan_for(&env, &ignored).await.is_empty());

    let honoured = policy("{}", "    honorVeleroAnnotations: true");
    let plan = plan_for(&env, &honoured).await;
    assert_eq!((plan.pre.len(), plan.post.len()), (1, 1));
    let snapshot_saw_pre = AtomicBool::new(false);
    let dir = pod_dir(&env, "db", "mysql-0");
    let (report, _) = Engine::new(KubeExecutor::new(env.client()))
        .with_freeze(&plan, &CancellationToken::new(), |_| async {
            snapshot_saw_pre.store(
                dir.join("velero-pre").exists() && !dir.join("velero-post").exists(),
                Ordering::SeqCst,
            )
        })
        .await;
    assert_eq!(report.status, GroupStatus::Succeeded, "{report}");
    assert!(snapshot_saw_pre.load(Ordering::SeqCst));
    assert_eq!(
        std::fs::read_to_string(dir.join("velero-pre")).unwrap(),
        "mysql\n"
    );
    assert!(dir.join("velero-post").exists());
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
