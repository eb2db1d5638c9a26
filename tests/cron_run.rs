//! `freezeframe run`, the CronJob tick, as a process against the sandbox: due policies run and are
//! recorded, others wait, `--now` forces, invalid policies are reported next to running valid ones, and a
//! Lease held by another run makes the tick a no-op.

use std::collections::BTreeMap;
use std::process::Output;

use chrono::{Duration, SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use crate::harness::{TestEnv, logged_output};
use freezeframe::backup;
use freezeframe::policy::store::{
    LastResult, ResultPhase, last_result_annotation, last_scheduled_annotation,
};
use freezeframe::store::{Layout, fs::FsStore};

const CM: &str = "freezeframe-policies";

/// Namespaces `freezeframe` and `db`, one pod in `db`, and the policy ConfigMap: `due` (every minute,
/// last scheduled two minutes ago), `later` (once a year, last scheduled two minutes ago), plus `extra`
/// policy entries (YAML list items, indented by two spaces).
async fn setup(extra: &str) -> (TestEnv, String) {
    let env = TestEnv::new().await.unwrap();
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: freezeframe}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: db}\n\
         spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n\
         \x20 template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: busybox}]}\n",
    )
    .unwrap();
    let store = env.dir().join("backups");
    let two_minutes_ago = (Utc::now() - Duration::minutes(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let policies = format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: {}}}}}}}\n\
         defaults: {{storage: local}}\n\
         policies:\n\
         \x20 - {{name: due, schedule: \"* * * * *\", namespaces: [db], retention: {{keepLast: 3}}, volumes: {{snapshot: none}}}}\n\
         \x20 - {{name: later, schedule: \"0 0 1 1 *\", namespaces: [db], retention: {{keepLast: 3}}, volumes: {{snapshot: none}}}}\n\
         {extra}",
        store.display()
    );
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CM.into()),
            namespace: Some("freezeframe".into()),
            annotations: Some(BTreeMap::from([
                (last_scheduled_annotation("due"), two_minutes_ago.clone()),
                (last_scheduled_annotation("later"), two_minutes_ago.clone()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("policies.yaml".to_string(), policies)])),
        ..Default::default()
    };
    configmaps(&env)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    (env, two_minutes_ago)
}

fn configmaps(env: &TestEnv) -> Api<ConfigMap> {
    Api::namespaced(env.client(), "freezeframe")
}

async fn annotations(env: &TestEnv) -> BTreeMap<String, String> {
    configmaps(env)
        .get(CM)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

/// `freezeframe run <args>` as the CronJob's pod runs it.
async fn tick(env: &TestEnv, args: &[&str]) -> Output {
    let args: Vec<&str> = std::iter::once("run").chain(args.iter().copied()).collect();
    logged_output(env.freezeframe(&args).env("FREEZEFRAME_NAMESPACE", "freezeframe")).await
}

async fn stored(env: &TestEnv, policy: &str) -> usize {
    let store = FsStore::new(env.dir().join("backups"));
    backup::list(&store, &Layout::new(""), Some(policy))
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn given_due_and_not_due_policies_when_ticked_then_only_the_due_one_runs_and_is_recorded() {
    let (env, two_minutes_ago) = setup("").await;
    let before = Utc::now();
    let out = tick(&env, &[]).await;
    assert_eq!(out.status.code(), Some(0));

    let a = annotations(&env).await;
    let scheduled: chrono::DateTime<Utc> = a[&last_scheduled_annotation("due")].parse().unwrap();
    assert!(
        scheduled > before - Duration::minutes(1),
        "moved to the latest fire time"
    );
    let result = LastResult::parse(&a[&last_result_annotation("due")]).unwrap();
    assert_eq!(result.phase, ResultPhase::Completed);
    let store = FsStore::new(env.dir().join("backups"));
    let backups = backup::list(&store, &Layout::new(""), Some("due")).await.unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        backups[0].id.as_str(),
        result.backup_id,
        "the result names the stored backup"
    );

    assert_eq!(a[&last_scheduled_annotation("later")], two_minutes_ago);
    assert!(!a.contains_key(&last_result_annotation("later")));
    assert_eq!(stored(&env, "later").await, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("later: not due"));
}

#[tokio::test]
async fn given_now_flag_when_ticked_then_the_policy_runs_without_moving_its_schedule() {
    let (env, two_minutes_ago) = setup("").await;
    let out = tick(&env, &["--now", "later"]).await;
    assert_eq!(out.status.code(), Some(0));
    let a = annotations(&env).await;
    let result = LastResult::parse(&a[&last_result_annotation("later")]).unwrap();
    assert_eq!(result.phase, ResultPhase::Completed);
    assert_eq!(stored(&env, "later").await, 1);
    assert_eq!(a[&last_scheduled_annotation("later")], two_minutes_ago);
}

#[tokio::test]
async fn given_invalid_policy_next_to_valid_one_when_ticked_then_valid_runs_and_exit_is_2_with_status_and_event()
 {
    let (env, _) =
        setup("  - {name: broken, schedule: \"61 * * * *\", namespaces: [db], retention: {keepLast: 3}}\n")
            .await;
    let out = tick(&env, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stored(&env, "due").await, 1, "the valid policy still ran");
    let a = annotations(&env).await;
    assert!(a.contains_key(&last_result_annotation("due")));
    assert!(a["status.freezeframe.dev/broken"].starts_with("Invalid"), "{a:?}");
    let events: Api<Event> = Api::namespaced(env.client(), "freezeframe");
    let events = events.list(&ListParams::default()).await.unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidPolicy")
                && e.message.as_deref().is_some_and(|m| m.contains("broken"))),
        "{:?}",
        events.items
    );
}

#[tokio::test]
async fn given_lease_held_by_a_live_run_when_ticked_then_nothing_runs_and_exit_is_0() {
    let (env, two_minutes_ago) = setup("").await;
    let leases: Api<Lease> = Api::namespaced(env.client(), "freezeframe");
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("freezeframe-run".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("freezeframe-other-run".into()),
            lease_duration_seconds: Some(300),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();

    let out = tick(&env, &["--now", "later"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("another run holds the lease"));
    let a = annotations(&env).await;
    assert_eq!(a[&last_scheduled_annotation("due")], two_minutes_ago);
    assert!(!a.keys().any(|k| k.starts_with("last-result.")), "{a:?}");
    assert_eq!(stored(&env, "due").await + stored(&env, "later").await, 0);
    let held = leases.get("freezeframe-run").await.unwrap();
    assert_eq!(
        held.spec.unwrap().holder_identity.as_deref(),
        Some("freezeframe-other-run")
    );
}

#[tokio::test]
async fn given_finished_tick_then_lease_is_released_for_the_next_one() {
    let (env, _) = setup("").await;
    assert_eq!(tick(&env, &[]).await.status.code(), Some(0));
    let leases: Api<Lease> = Api::namespaced(env.client(), "freezeframe");
    let spec = leases.get("freezeframe-run").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, None);
    assert_eq!(tick(&env, &["--now", "due"]).await.status.code(), Some(0));
    assert_eq!(stored(&env, "due").await, 2);
}

/// A policy `slow` whose pre hook holds the run for `seconds` (the lease is held meanwhile).
fn slow(seconds: u32) -> String {
    format!(
        "  - {{name: slow, schedule: \"0 0 1 1 *\", namespaces: [db], retention: {{keepLast: 3}}, \
         volumes: {{snapshot: none}}, rules: {{pre: [{{podSelector: {{app: db}}, \
         actions: [{{value: \"sleep {seconds}\", timeout: 60s}}]}}]}}}}\n"
    )
}

#[tokio::test]
async fn given_two_runs_racing_when_ticked_at_once_then_exactly_one_backs_up() {
    let (env, _) = setup(&slow(3)).await;

    let (a, b) = tokio::join!(tick(&env, &["--now", "slow"]), tick(&env, &["--now", "slow"]));

    assert_eq!((a.status.code(), b.status.code()), (Some(0), Some(0)));
    let declined = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("another run holds the lease"))
        .count();
    assert_eq!(declined, 1, "one run takes the lease, the other declines");
    assert_eq!(stored(&env, "slow").await, 1);
}

#[tokio::test]
async fn given_a_holder_killed_mid_run_when_its_lease_expires_then_the_next_tick_takes_it_over_and_runs() {
    let (env, _) = setup(&slow(30)).await;
    let leases: Api<Lease> = Api::namespaced(env.client(), "freezeframe");
    let mut holder = env
        .freezeframe(&["run", "--now", "slow"])
        .env("FREEZEFRAME_NAMESPACE", "freezeframe")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Ok(l) = leases.get("freezeframe-run").await
                && let Some(h) = l.spec.and_then(|s| s.holder_identity)
            {
                return h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the run takes the lease");
    holder.kill().await.unwrap(); // SIGKILL: no release, no thaw of its own
    holder.wait().await.unwrap();

    // Within the lease's duration the dead holder's lease is still honoured.
    let early = tick(&env, &["--now", "due"]).await;
    assert!(String::from_utf8_lossy(&early.stdout).contains("another run holds the lease"));
    // Its duration passes (the clock is moved by aging the holder's last renewal).
    let mut lease = leases.get("freezeframe-run").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    let aged = k8s_openapi::jiff::Timestamp::now()
        - k8s_openapi::jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap()) + 1);
    spec.renew_time = Some(MicroTime(aged));
    spec.acquire_time = Some(MicroTime(aged));
    leases
        .replace("freezeframe-run", &PostParams::default(), &lease)
        .await
        .unwrap();

    let late = tick(&env, &["--now", "due"]).await;

    assert_eq!(late.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&late.stdout).contains("another run holds the lease"));
    assert_eq!(
        stored(&env, "due").await,
        1,
        "the expired lease of {held} was taken over"
    );
}
