//! Unit tests of [`Reporter`] over [`fake::FakeTransport`] and [`fake::FakeCluster`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::fake::{FakeCluster, FakeTransport, manifest};
use super::*;
use crate::clock::ManualClock;
use crate::policy::parse_str;

/// A PolicySet with webhooks `ops` (all events, signed with Secret `hmac` key `key`) and `failures`
/// (only `backup.failed`, unsigned), and one policy `app` over namespace `db` with the extra `fields`.
fn set(fields: &str) -> PolicySet {
    let text = format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: /backups}}}}}}\n\
         webhooks:\n\
         \x20 - {{name: ops, url: \"http://ops.example/hook\", secretRef: {{name: hmac, key: key}}}}\n\
         \x20 - {{name: failures, url: \"https://pager.example/hook\", events: [backup.failed], timeout: 3s}}\n\
         defaults: {{storage: local}}\n\
         policies:\n  - name: app\n    schedule: \"@daily\"\n    namespaces: [db]\n\
         \x20   retention: {{keepLast: 3}}\n{fields}"
    );
    let set = parse_str("test", &text);
    assert!(
        set.is_valid() || !set.invalid_policies.is_empty(),
        "{:#?}",
        set.problems
    );
    set
}

fn policy(fields: &str) -> Policy {
    set(fields).policies.remove(0)
}

struct World {
    transport: Arc<FakeTransport>,
    cluster: Arc<FakeCluster>,
    reporter: Reporter,
}

fn world(cluster: FakeCluster, answers: Vec<Result<u16, String>>) -> World {
    let transport = Arc::new(FakeTransport::answering(answers));
    let cluster = Arc::new(cluster);
    let clock = Arc::new(ManualClock::new("2026-11-23T12:00:10Z".parse().unwrap()));
    let reporter = Reporter::with(
        transport.clone(),
        cluster.clone(),
        clock,
        Some("freezeframe".into()),
    )
    .with_retry(Retry {
        attempts: 3,
        backoff: Duration::from_millis(10),
    });
    World {
        transport,
        cluster,
        reporter,
    }
}

fn keyed() -> FakeCluster {
    FakeCluster::with_secret("freezeframe", "hmac", "key", b"s3cret")
}

fn header<'a>(r: &'a webhook::Request, name: &str) -> &'a str {
    &r.headers.iter().find(|(n, _)| *n == name).unwrap().1
}

#[tokio::test]
async fn given_completed_backup_then_only_webhooks_listing_the_event_receive_it() {
    let w = world(keyed(), vec![]);
    w.reporter
        .backup_finished(&policy(""), &manifest(Status::Completed))
        .await;
    assert_eq!(
        w.transport.events(),
        [(
            "http://ops.example/hook".to_string(),
            "backup.succeeded".to_string()
        )],
        "`failures` lists only backup.failed"
    );

    let w = world(keyed(), vec![]);
    w.reporter
        .backup_finished(&policy(""), &manifest(Status::Failed))
        .await;
    let mut got = w.transport.events();
    got.sort();
    assert_eq!(
        got,
        [
            ("http://ops.example/hook".to_string(), "backup.failed".to_string()),
            (
                "https://pager.example/hook".to_string(),
                "backup.failed".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn given_policy_naming_one_webhook_when_started_then_only_that_one_receives() {
    let w = world(keyed(), vec![]);
    w.reporter.backup_started(&policy("    webhooks: [ops]\n")).await;
    assert_eq!(
        w.transport.events(),
        [(
            "http://ops.example/hook".to_string(),
            "backup.started".to_string()
        )]
    );
    let w = world(keyed(), vec![]);
    w.reporter
        .backup_started(&policy("    webhooks: [failures]\n"))
        .await;
    assert_eq!(
        w.transport.events(),
        [],
        "`failures` does not list backup.started"
    );
}

#[tokio::test]
async fn given_secret_ref_when_delivered_then_signature_verifies_over_timestamp_and_body() {
    let w = world(keyed(), vec![]);
    let started = w.reporter.backup_started(&policy("")).await;
    let r = &w.transport.requests()[0];
    let timestamp: i64 = header(r, "X-Freezeframe-Timestamp").parse().unwrap();
    assert_eq!(timestamp, started.timestamp());
    assert_eq!(
        header(r, "X-Freezeframe-Signature"),
        webhook::sign(b"s3cret", timestamp, &r.body)
    );
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["event"], "backup.started");
    assert_eq!(body["deliveryId"], header(r, "X-Freezeframe-Delivery"));
    assert_eq!(body["time"], "2026-11-23T12:00:10Z");
    assert_eq!(body["phase"], "Running");
    assert_eq!(body["namespaces"], serde_json::json!(["db"]));
    assert_eq!(body["cluster"]["kubeSystemUid"], "ks-uid");
    assert_eq!(body["backupId"], Value::Null);
}

#[tokio::test]
async fn given_missing_secret_or_key_then_that_webhook_is_not_delivered_and_the_error_names_both() {
    let w = world(FakeCluster::default(), vec![]);
    let sent = w
        .reporter
        .send(
            &policy("").webhooks,
            WebhookEvent::BackupFailed,
            &Payload::new("app", Phase::Failed, "x"),
        )
        .await;
    assert_eq!(
        w.transport.events(),
        [(
            "https://pager.example/hook".to_string(),
            "backup.failed".to_string()
        )]
    );
    let ops = sent.iter().find(|s| s.webhook == "ops").unwrap();
    let text = chain(ops.result.as_ref().unwrap_err());
    assert!(
        text.contains("webhook ops")
            && text.contains("Secret freezeframe/hmac does not exist")
            && text.contains("\"key\""),
        "{text}"
    );

    let w = world(
        FakeCluster::with_secret("freezeframe", "hmac", "other", b"k"),
        vec![],
    );
    let sent = w
        .reporter
        .send(
            &policy("").webhooks,
            WebhookEvent::BackupStarted,
            &Payload::new("app", Phase::Running, "x"),
        )
        .await;
    let text = chain(sent[0].result.as_ref().unwrap_err());
    assert!(
        text.contains("Secret freezeframe/hmac has no key \"key\""),
        "{text}"
    );
    assert!(w.transport.requests().is_empty());
}

#[tokio::test]
async fn given_receiver_failing_then_failure_is_returned_with_reason_after_three_attempts() {
    let w = world(keyed(), vec![Ok(503), Ok(503), Ok(503)]);
    let sent = w
        .reporter
        .send(
            &policy("    webhooks: [ops]\n").webhooks,
            WebhookEvent::BackupStarted,
            &Payload::new("app", Phase::Running, "x"),
        )
        .await;
    assert_eq!(w.transport.requests().len(), 3);
    let text = chain(sent[0].result.as_ref().unwrap_err());
    assert_eq!(
        text,
        "webhook ops: backup.started not delivered to http://ops.example/hook: HTTP 503 after 3 attempt(s)"
    );
}

#[tokio::test]
async fn given_finished_backup_then_events_on_each_namespace_and_the_configmap_and_annotation_on_the_namespace()
 {
    let mut w = world(keyed(), vec![]);
    w.reporter = w
        .reporter
        .with_policy_configmap("freezeframe", "freezeframe-policies");
    let m = manifest(Status::PartiallyFailed);
    w.reporter.backup_finished(&policy(""), &m).await;

    let events = w.cluster.events();
    let about: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["involvedObject"]["kind"].as_str().unwrap(),
                e["involvedObject"]["uid"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        about,
        [
            ("Namespace", "uid-db", "BackupPartiallyFailed"),
            ("ConfigMap", "uid-freezeframe-policies", "BackupPartiallyFailed")
        ]
    );
    assert_eq!(events[0]["message"], summary::backup(&m));
    assert_eq!(
        w.cluster.patches(),
        [("db".to_string(), annotations::last_backup_patch(&m))]
    );
    assert_eq!(w.transport.events()[0].1, "backup.partially_failed");
}

#[tokio::test]
async fn given_backup_failing_before_its_manifest_then_backup_failed_event_and_webhook_say_why() {
    let w = world(keyed(), vec![]);
    let p = policy("");
    w.reporter
        .backup_error(
            &p,
            "2026-11-23T12:00:00Z".parse().unwrap(),
            "exporting resources: store full",
        )
        .await;
    let events = w.cluster.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "BackupFailed");
    assert_eq!(
        events[0]["message"],
        "backup of app failed before a manifest was written: exporting resources: store full"
    );
    assert!(w.cluster.patches().is_empty(), "no backup, no annotation");
    let bodies: Vec<Value> = w
        .transport
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "ops and failures");
    assert_eq!(bodies[0]["phase"], "Failed");
    assert_eq!(bodies[0]["backupId"], Value::Null);
    assert_eq!(
        bodies[0]["problems"],
        serde_json::json!(["exporting resources: store full"])
    );
    assert_eq!(bodies[0]["startedAt"], "2026-11-23T12:00:00Z");
}

#[tokio::test]
async fn given_invalid_policy_then_policy_invalid_goes_to_every_valid_webhook_listing_it() {
    let w = world(keyed(), vec![]);
    let set =
        set("  - {name: broken, schedule: \"61 * * * *\", namespaces: [db], retention: {keepLast: 3}}\n");
    assert_eq!(set.invalid_policies, ["broken"]);
    w.reporter.policies_invalid(&set, &set.invalid_policies).await;
    assert_eq!(
        w.transport.events(),
        [(
            "http://ops.example/hook".to_string(),
            "policy.invalid".to_string()
        )],
        "`failures` does not list policy.invalid"
    );
    let body: Value = serde_json::from_slice(&w.transport.requests()[0].body).unwrap();
    assert_eq!(body["policy"], "broken");
    assert_eq!(body["phase"], "Invalid");
    assert!(
        body["problems"][0].as_str().unwrap().contains("schedule"),
        "{body}"
    );
}
