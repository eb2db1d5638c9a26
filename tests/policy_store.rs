//! Policies read from a ConfigMap in the sandbox: loading, schedule annotations, `validate --policies`,
//! `policies --policies`.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use crate::harness::TestEnv;
use freezeframe::policy::store::{self, LastResult, ResultPhase};

const CASSANDRA: &str = include_str!("../policies/cassandra.yaml");

async fn env_with_policies() -> TestEnv {
    let env = TestEnv::new().await.unwrap();
    env.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: freezeframe\n")
        .unwrap();
    env.apply(CASSANDRA).unwrap();
    env
}

#[tokio::test]
async fn given_policy_configmap_when_loaded_then_policies_and_recorded_times_come_back() {
    let env = env_with_policies().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "freezeframe");
    let loaded = store::load(&api, "freezeframe", "freezeframe-policies")
        .await
        .unwrap();
    assert!(loaded.set.is_valid(), "{:?}", loaded.set.problems);
    assert!(loaded.set.policy("cassandra-ring").is_some());
    assert!(loaded.last_scheduled.is_empty());

    let at: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
    store::record_last_scheduled(&api, "freezeframe", "freezeframe-policies", "cassandra-ring", at)
        .await
        .unwrap();
    let again = store::load(&api, "freezeframe", "freezeframe-policies")
        .await
        .unwrap();
    assert_eq!(again.last_scheduled.get("cassandra-ring"), Some(&at));
}

#[tokio::test]
async fn given_user_edits_configmap_when_loaded_again_then_edit_takes_effect() {
    let env = env_with_policies().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "freezeframe");
    let cm = api.get("freezeframe-policies").await.unwrap();
    let text = cm.data.unwrap()["policies.yaml"].replace("\"0 */6 * * *\"", "\"15 3 * * *\"");
    api.patch(
        "freezeframe-policies",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"policies.yaml": text}})),
    )
    .await
    .unwrap();
    let loaded = store::load(&api, "freezeframe", "freezeframe-policies")
        .await
        .unwrap();
    let policy = loaded.set.policy("cassandra-ring").unwrap();
    let from: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
    let next = policy.schedule.after(from).next().unwrap();
    assert_eq!(next, "2026-11-23T03:15:00Z".parse::<DateTime<Utc>>().unwrap());
}

#[tokio::test]
async fn given_invalid_configmap_when_validate_runs_against_cluster_then_exit_2_names_policy_and_field() {
    let env = env_with_policies().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "freezeframe");
    let cm = api.get("freezeframe-policies").await.unwrap();
    let original = cm.data.unwrap()["policies.yaml"].clone();
    let text = original.replace("keepLast: 4", "keepLast: -1");
    assert_ne!(
        text, original,
        "the fixture changed: this test must make the policy invalid"
    );
    api.patch(
        "freezeframe-policies",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"policies.yaml": text}})),
    )
    .await
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
        .args(["validate", "--policies", "freezeframe/freezeframe-policies"])
        .env("KUBECONFIG", env.sandbox().kubeconfig_path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cassandra-ring") && stdout.contains("keepLast"),
        "{stdout}"
    );

    let ok = tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
        .args([
            "validate",
            "--policy-file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies/cassandra.yaml"),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("cassandra-ring: ok;"));
}

#[tokio::test]
async fn given_recorded_run_state_when_policies_runs_against_cluster_then_table_shows_it_and_exit_0() {
    let env = env_with_policies().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "freezeframe");
    let at: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
    store::record_last_scheduled(&api, "freezeframe", "freezeframe-policies", "cassandra-ring", at)
        .await
        .unwrap();
    let result = LastResult {
        phase: ResultPhase::Completed,
        finished_at: "2026-11-23T12:03:30Z".parse().unwrap(),
        backup_id: "cassandra-ring-20261123-120000".into(),
    };
    store::record_last_result(
        &api,
        "freezeframe",
        "freezeframe-policies",
        "cassandra-ring",
        &result,
    )
    .await
    .unwrap();

    let policies = |format: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
            .args([
                "policies",
                "--policies",
                "freezeframe/freezeframe-policies",
                "-o",
                format,
            ])
            .env("KUBECONFIG", env.sandbox().kubeconfig_path())
            .output()
    };
    let out = policies("table").await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0]
            .starts_with("NAME             SCHEDULE            SUSPENDED   LAST SCHEDULED         NEXT RUN"),
        "{stdout}"
    );
    // NEXT RUN depends on the wall clock: check the columns around it.
    assert!(
        lines[1].starts_with("cassandra-ring   0 */6 * * * (UTC)   False       2026-11-23T12:00:00Z   "),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("   primary   Completed 2026-11-23T12:03:30Z cassandra-ring-20261123-120000"),
        "{stdout}"
    );

    let json = policies("json").await.unwrap();
    assert_eq!(json.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let row = &doc["policies"][0];
    assert_eq!(row["lastScheduled"], "2026-11-23T12:00:00Z");
    assert_eq!(
        row["lastResult"],
        serde_json::json!({
            "phase": "Completed",
            "finishedAt": "2026-11-23T12:03:30Z",
            "backupId": "cassandra-ring-20261123-120000"
        })
    );
    let next: DateTime<Utc> = row["nextRun"].as_str().unwrap().parse().unwrap();
    assert!(next > at, "{row}");
}

#[tokio::test]
async fn given_invalid_policy_in_configmap_when_reported_then_status_annotation_and_warning_event_exist() {
    let env = env_with_policies().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "freezeframe");
    let cm = api.get("freezeframe-policies").await.unwrap();
    let text = cm.data.as_ref().unwrap()["policies.yaml"].replace("keepLast: 4", "keepLast: -1");
    api.patch(
        "freezeframe-policies",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"policies.yaml": text}})),
    )
    .await
    .unwrap();
    let cm = api.get("freezeframe-policies").await.unwrap();
    let loaded = store::from_configmap(&cm);
    freezeframe::policy::status::report(&env.client(), &cm, &loaded.set, chrono::Utc::now())
        .await
        .unwrap();

    let annotated = api.get("freezeframe-policies").await.unwrap();
    let status = &annotated.metadata.annotations.unwrap()["status.freezeframe.dev/cassandra-ring"];
    assert!(
        status.starts_with("Invalid: ") && status.contains("keepLast"),
        "{status}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(env.client(), "freezeframe");
    let list = events
        .list(
            &kube::api::ListParams::default()
                .fields("involvedObject.name=freezeframe-policies,reason=InvalidPolicy"),
        )
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].type_.as_deref(), Some("Warning"));
}
