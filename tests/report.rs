//! Reporting end to end, through the `freezeframe` process against the sandbox and the harness's real
//! webhook receiver: signed deliveries of backup, restore and invalid-policy events, a failing receiver
//! that is retried and never changes the exit code, event filters, and the backup's Kubernetes Events
//! and last-backup annotation.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::webhook::RecordedRequest;
use crate::harness::{TestEnv, logged_output};
use freezeframe::backup;
use freezeframe::store::{Layout, fs::FsStore};

/// The HMAC key in Secret `freezeframe/webhook-hmac`, key `key`.
const KEY: &[u8] = b"s3cret";

/// Namespaces `freezeframe` (with the webhook Secret) and `db` with a one-pod StatefulSet.
fn cluster(env: &TestEnv) {
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: freezeframe}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: webhook-hmac, namespace: freezeframe}\n\
         data: {key: czNjcmV0}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: db}\n\
         spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n\
         \x20 template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: busybox}]}\n",
    )
    .unwrap();
}

/// A PolicySet storing into `store`, with `webhooks` (YAML list items indented by two spaces) and
/// policy `app` over `db` with extra `fields` (indented by four).
fn policy_set(store: &Path, webhooks: &str, fields: &str) -> String {
    format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: {}}}}}}}\n\
         webhooks:\n{webhooks}\
         defaults: {{storage: local}}\n\
         policies:\n  - name: app\n    schedule: \"@daily\"\n    namespaces: [db]\n\
         \x20   retention: {{keepLast: 3}}\n    volumes: {{snapshot: none}}\n{fields}",
        store.display()
    )
}

/// One signed webhook `ops` at `/ops` receiving every event.
fn signed(env: &TestEnv) -> String {
    format!(
        "  - {{name: ops, url: \"{}\", secretRef: {{name: webhook-hmac, key: key}}, timeout: 5s}}\n",
        env.webhook().url_for("/ops")
    )
}

fn write_policies(env: &TestEnv, text: &str) -> PathBuf {
    let file = env.dir().join("policies.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `freezeframe <args>` as a pod in namespace `freezeframe` runs it.
async fn freezeframe(env: &TestEnv, args: &[&str]) -> Output {
    logged_output(env.freezeframe(args).env("FREEZEFRAME_NAMESPACE", "freezeframe")).await
}

async fn back_up(env: &TestEnv, file: &Path) -> Output {
    freezeframe(
        env,
        &[
            "backup",
            "--policy",
            "app",
            "--policy-file",
            file.to_str().unwrap(),
        ],
    )
    .await
}

/// Verify a delivery the way docs/webhooks.md tells receivers to: HMAC-SHA256 with the Secret's key
/// over `<X-Freezeframe-Timestamp>.<raw body>`, compared in constant time, timestamp within 5 minutes.
fn signature_valid(r: &RecordedRequest, key: &[u8]) -> bool {
    let (Some(timestamp), Some(signature)) = (
        r.header("x-freezeframe-timestamp"),
        r.header("x-freezeframe-signature"),
    ) else {
        return false;
    };
    let Some(Ok(expected)) = signature.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (Utc::now().timestamp() - t).abs() <= 300);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    fresh && mac.verify_slice(&expected).is_ok()
}

fn events_of(requests: &[RecordedRequest]) -> Vec<(String, String)> {
    requests
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.header("x-freezeframe-event").unwrap_or("-").to_string(),
            )
        })
        .collect()
}

/// The `X-Freezeframe-Event` of each request, in order.
fn event_names(requests: &[RecordedRequest]) -> Vec<String> {
    events_of(requests).into_iter().map(|(_, e)| e).collect()
}

async fn stored_ids(env: &TestEnv) -> Vec<String> {
    let store = FsStore::new(env.dir().join("backups"));
    backup::list(&store, &Layout::new(""), Some("app"))
        .await
        .unwrap()
        .iter()
        .map(|b| b.id.to_string())
        .collect()
}

async fn kube_system_uid(env: &TestEnv) -> String {
    Api::<Namespace>::all(env.client())
        .get("kube-system")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

async fn events_in(env: &TestEnv, namespace: &str, prefix: &str) -> Vec<Event> {
    Api::<Event>::namespaced(env.client(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with(prefix)))
        .collect()
}

#[tokio::test]
async fn given_signed_webhook_when_backup_succeeds_then_receiver_gets_started_and_succeeded_with_valid_signature()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let file = write_policies(&env, &policy_set(&env.dir().join("backups"), &signed(&env), ""));

    let out = back_up(&env, &file).await;

    assert_eq!(out.status.code(), Some(0));
    let requests = env.webhook().requests();
    assert_eq!(
        events_of(&requests),
        [
            ("/ops".to_string(), "backup.started".to_string()),
            ("/ops".to_string(), "backup.succeeded".to_string())
        ]
    );
    for r in &requests {
        assert!(signature_valid(r, KEY), "{r:?}");
        let mut tampered = r.clone();
        tampered.body = [&r.body[..], b" "].concat().into();
        assert!(
            !signature_valid(&tampered, KEY),
            "a changed body fails verification"
        );
        assert!(!signature_valid(r, b"another key"));
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("user-agent"),
            Some(format!("freezeframe/{}", env!("CARGO_PKG_VERSION")).as_str())
        );
        let body = r.json().unwrap();
        assert_eq!(body["event"], r.header("x-freezeframe-event").unwrap());
        assert_eq!(body["deliveryId"], r.header("x-freezeframe-delivery").unwrap());
        assert!(uuid::Uuid::parse_str(body["deliveryId"].as_str().unwrap()).is_ok());
        assert_eq!(body["policy"], "app");
        assert_eq!(body["namespaces"], json!(["db"]));
        assert_eq!(body["cluster"]["kubeSystemUid"], kube_system_uid(&env).await);
    }
    let started = requests[0].json().unwrap();
    assert_eq!(
        (&started["phase"], &started["backupId"]),
        (&json!("Running"), &Value::Null)
    );
    let done = requests[1].json().unwrap();
    assert_eq!(done["phase"], "Completed");
    assert_eq!(done["backupId"], json!(stored_ids(&env).await[0]));
    assert_eq!(done["problems"], json!([]));
    assert!(
        done["message"].as_str().unwrap().starts_with("backup app/"),
        "{done}"
    );
    assert_ne!(started["deliveryId"], done["deliveryId"]);
}

#[tokio::test]
async fn given_receiver_answering_503_when_backup_succeeds_then_each_event_is_tried_three_times_and_exit_is_still_0()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    env.webhook().respond_with(StatusCode::SERVICE_UNAVAILABLE);
    let file = write_policies(&env, &policy_set(&env.dir().join("backups"), &signed(&env), ""));

    let out = back_up(&env, &file).await;

    assert_eq!(
        out.status.code(),
        Some(0),
        "webhook failures never change the exit code"
    );
    let requests = env.webhook().requests();
    let events = event_names(&requests);
    assert_eq!(
        events,
        ["backup.started"; 3]
            .into_iter()
            .chain(["backup.succeeded"; 3])
            .collect::<Vec<_>>()
    );
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r.header("x-freezeframe-delivery").unwrap())
        .collect();
    assert!(
        ids[0] == ids[1] && ids[1] == ids[2] && ids[3] == ids[5] && ids[0] != ids[3],
        "{ids:?}"
    );
    assert!(requests.iter().all(|r| signature_valid(r, KEY)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for event in ["backup.started", "backup.succeeded"] {
        assert!(
            stderr.contains(&format!(
                "webhook ops: {event} not delivered to {}: HTTP 503 after 3 attempt(s)",
                env.webhook().url_for("/ops")
            )),
            "{stderr}"
        );
    }
    assert_eq!(stored_ids(&env).await.len(), 1, "the backup itself was made");
}

#[tokio::test]
async fn given_event_filters_and_policy_webhook_list_when_backup_succeeds_then_only_listed_events_reach_listed_webhooks()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let webhooks = format!(
        "  - {{name: failures, url: \"{}\", events: [backup.failed]}}\n\
         \x20 - {{name: successes, url: \"{}\", events: [backup.succeeded]}}\n\
         \x20 - {{name: unlisted, url: \"{}\"}}\n",
        env.webhook().url_for("/failures"),
        env.webhook().url_for("/successes"),
        env.webhook().url_for("/unlisted"),
    );
    let file = write_policies(
        &env,
        &policy_set(
            &env.dir().join("backups"),
            &webhooks,
            "    webhooks: [failures, successes]\n",
        ),
    );

    let out = back_up(&env, &file).await;

    assert_eq!(out.status.code(), Some(0));
    let requests = env.webhook().requests();
    assert_eq!(
        events_of(&requests),
        [("/successes".to_string(), "backup.succeeded".to_string())],
        "backup.started is filtered out everywhere; /unlisted is not one of the policy's webhooks"
    );
    assert_eq!(
        requests[0].header("x-freezeframe-signature"),
        None,
        "no secretRef, no signature"
    );
}

#[tokio::test]
async fn given_secret_ref_naming_a_missing_key_when_backup_succeeds_then_that_webhook_gets_nothing_and_stderr_names_webhook_secret_and_key()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let webhooks = format!(
        "  - {{name: misconfigured, url: \"{}\", secretRef: {{name: webhook-hmac, key: nope}}}}\n\
         \x20 - {{name: plain, url: \"{}\", events: [backup.succeeded]}}\n",
        env.webhook().url_for("/misconfigured"),
        env.webhook().url_for("/plain"),
    );
    let file = write_policies(&env, &policy_set(&env.dir().join("backups"), &webhooks, ""));

    let out = back_up(&env, &file).await;

    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        events_of(&env.webhook().requests()),
        [("/plain".to_string(), "backup.succeeded".to_string())],
        "never an unsigned request to a receiver that expects a signature"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for event in ["backup.started", "backup.succeeded"] {
        assert!(
            stderr.contains(&format!(
                "webhook misconfigured: {event} not delivered: Secret freezeframe/webhook-hmac has no key \"nope\""
            )),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn given_unwritable_store_when_backup_fails_before_its_manifest_then_backup_failed_is_delivered_with_the_error()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let not_a_dir = env.dir().join("file");
    std::fs::write(&not_a_dir, "a file where the store's directory should be").unwrap();
    let file = write_policies(&env, &policy_set(&not_a_dir.join("backups"), &signed(&env), ""));

    let out = back_up(&env, &file).await;

    assert_eq!(out.status.code(), Some(1));
    let requests = env.webhook().requests();
    assert_eq!(event_names(&requests), ["backup.started", "backup.failed"]);
    let failed = requests[1].json().unwrap();
    assert_eq!(
        (&failed["phase"], &failed["backupId"]),
        (&json!("Failed"), &Value::Null)
    );
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .starts_with("backup of app failed before a manifest was written: "),
        "{failed}"
    );
    assert_eq!(failed["problems"].as_array().unwrap().len(), 1);
    assert!(signature_valid(&requests[1], KEY));
    let events = events_in(&env, "db", "Backup").await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.reason.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["BackupFailed"]
    );
}

#[tokio::test]
async fn given_backups_when_they_finish_then_the_namespace_has_a_backup_event_each_and_the_last_backup_annotation()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let store = env.dir().join("backups");
    let ok = write_policies(&env, &policy_set(&store, "  []\n", ""));
    assert_eq!(back_up(&env, &ok).await.status.code(), Some(0));
    let partial = write_policies(
        &env,
        &policy_set(
            &store,
            "  []\n",
            "    dumps: [{name: data, podSelector: {app: db}, command: \"exit 5\"}]\n",
        ),
    );
    assert_eq!(back_up(&env, &partial).await.status.code(), Some(3));

    let ns = Api::<Namespace>::all(env.client()).get("db").await.unwrap();
    let mut events = events_in(&env, "db", "Backup").await;
    events.sort_by_key(|e| e.reason.clone());
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.type_.as_deref().unwrap(), e.reason.as_deref().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("Warning", "BackupPartiallyFailed"),
            ("Normal", "BackupSucceeded")
        ]
    );
    let ids = stored_ids(&env).await;
    for (e, id) in events.iter().zip([&ids[1], &ids[0]]) {
        let o = &e.involved_object;
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref(), &o.uid),
            (Some("Namespace"), Some("db"), &ns.metadata.uid)
        );
        assert_eq!(e.reporting_component.as_deref(), Some("freezeframe"));
        assert!(
            e.message
                .as_deref()
                .unwrap()
                .starts_with(&format!("backup app/{id}: ")),
            "{e:?}"
        );
    }
    assert!(
        events[0]
            .message
            .as_deref()
            .unwrap()
            .contains("dump data of db/db-0 failed")
    );
    let annotation = &ns.metadata.annotations.unwrap()["last-backup.freezeframe.dev/app"];
    let value: Value = serde_json::from_str(annotation).unwrap();
    assert_eq!(value["backupId"], json!(ids[1]));
    assert_eq!(value["phase"], "PartiallyFailed");
    assert!(value["finishedAt"].as_str().unwrap().ends_with('Z'), "{value}");
}

#[tokio::test]
async fn given_backup_when_restored_through_the_cli_then_restore_started_and_succeeded_are_delivered_and_dry_run_sends_nothing()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let file = write_policies(&env, &policy_set(&env.dir().join("backups"), &signed(&env), ""));
    assert_eq!(back_up(&env, &file).await.status.code(), Some(0));
    let file = file.to_str().unwrap();
    let restore = [
        "restore",
        "--backup",
        "latest",
        "--policy",
        "app",
        "--policy-file",
        file,
    ];
    let mapped = [&restore[..], &["--namespace-map", "db=db-copy"]].concat();

    let dry = freezeframe(&env, &[&mapped[..], &["--dry-run"]].concat()).await;
    assert_eq!(dry.status.code(), Some(0));
    assert_eq!(env.webhook().requests().len(), 2, "a dry run sends nothing");

    let out = freezeframe(&env, &mapped).await;

    assert_eq!(out.status.code(), Some(0));
    let requests = env
        .webhook()
        .wait_for_requests(4, Duration::from_secs(1))
        .await
        .unwrap();
    let restores = &requests[2..];
    assert_eq!(event_names(restores), ["restore.started", "restore.succeeded"]);
    let id = &stored_ids(&env).await[0];
    for r in restores {
        assert!(signature_valid(r, KEY));
        let body = r.json().unwrap();
        assert_eq!(body["backupId"], json!(id));
        assert_eq!(body["namespaces"], json!(["db-copy"]));
        assert_eq!(
            body["sourceCluster"]["kubeSystemUid"],
            kube_system_uid(&env).await
        );
    }
    let done = restores[1].json().unwrap();
    assert_eq!(done["phase"], "Completed");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("restore of app/{id}: Success: ")),
        "{done}"
    );
}

#[tokio::test]
async fn given_invalid_policy_next_to_a_due_one_when_ticked_then_policy_invalid_is_delivered_and_the_backup_event_is_on_the_configmap()
 {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let policies = policy_set(
        &env.dir().join("backups"),
        &signed(&env),
        "  - {name: broken, schedule: \"61 * * * *\", namespaces: [db], retention: {keepLast: 3}}\n",
    );
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("freezeframe-policies".into()),
            namespace: Some("freezeframe".into()),
            ..Default::default()
        },
        data: Some([("policies.yaml".to_string(), policies)].into()),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(env.client(), "freezeframe")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();

    let out = freezeframe(&env, &["run", "--now", "app"]).await;

    assert_eq!(out.status.code(), Some(2), "the invalid policy");
    let requests = env.webhook().requests();
    assert_eq!(
        event_names(&requests),
        ["policy.invalid", "backup.started", "backup.succeeded"]
    );
    assert!(requests.iter().all(|r| signature_valid(r, KEY)));
    let invalid = requests[0].json().unwrap();
    assert_eq!(
        (&invalid["policy"], &invalid["phase"]),
        (&json!("broken"), &json!("Invalid"))
    );
    assert!(
        invalid["problems"][0].as_str().unwrap().contains("schedule"),
        "{invalid}"
    );
    let on_cm: Vec<Event> = events_in(&env, "freezeframe", "Backup").await;
    assert_eq!(on_cm.len(), 1, "{on_cm:?}");
    assert_eq!(on_cm[0].reason.as_deref(), Some("BackupSucceeded"));
    assert_eq!(
        (
            on_cm[0].involved_object.kind.as_deref(),
            on_cm[0].involved_object.name.as_deref()
        ),
        (Some("ConfigMap"), Some("freezeframe-policies"))
    );
    assert!(on_cm[0].involved_object.uid.is_some());

    // The next tick: still invalid for the same reason, so webhooks are not told again (nothing is due).
    let again = freezeframe(&env, &["run"]).await;
    assert_eq!(again.status.code(), Some(2), "still invalid");
    assert_eq!(
        event_names(&env.webhook().requests()),
        ["policy.invalid", "backup.started", "backup.succeeded"],
        "policy.invalid is sent when a policy becomes invalid, not every tick"
    );
}

#[tokio::test]
async fn given_keep_last_1_when_second_backup_prunes_the_first_then_prune_completed_names_it_signed() {
    let env = TestEnv::new().await.unwrap();
    cluster(&env);
    let text =
        policy_set(&env.dir().join("backups"), &signed(&env), "").replace("keepLast: 3", "keepLast: 1");
    let file = write_policies(&env, &text);

    assert_eq!(back_up(&env, &file).await.status.code(), Some(0));
    let first = stored_ids(&env).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        event_names(&env.webhook().requests()),
        ["backup.started", "backup.succeeded"],
        "a prune that deletes nothing sends nothing"
    );
    // Backup ids have a one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(back_up(&env, &file).await.status.code(), Some(0));

    let requests = env.webhook().requests();
    assert_eq!(
        event_names(&requests),
        [
            "backup.started",
            "backup.succeeded",
            "backup.started",
            "backup.succeeded",
            "prune.completed"
        ]
    );
    let prune = requests.last().unwrap();
    assert!(signature_valid(prune, KEY), "{prune:?}");
    let body = prune.json().unwrap();
    assert_eq!(body["policy"], "app");
    assert_eq!(body["phase"], "Completed");
    assert_eq!(body["problems"], json!([]));
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&format!("pruned 1 ({})", first[0])), "{message}");
    let left = stored_ids(&env).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0], first[0], "the first backup is gone, the second kept");
}
