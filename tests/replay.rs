//! Dump replay through `freezeframe restore` against the sandbox: a restore command that ends before
//! reading all of a multi-megabyte dump is reported at once, with its exit code and stderr.

use std::time::{Duration, Instant};

use freezeframe::backup::DumpStatus;
use freezeframe::store::Layout;
use freezeframe::store::fs::FsStore;
use serde_json::Value;

use crate::harness::{TestEnv, logged_output};

/// 6 MB of random bytes: far more than the exec stream's buffers hold.
const DUMP_BYTES: u64 = 6_000_000;

fn policy_text(store: &std::path::Path) -> String {
    format!(
        r#"apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages: {{local: {{filesystem: {{path: "{store}"}}}}}}
defaults: {{storage: local}}
policies:
  - name: app
    schedule: "@daily"
    namespaces: [db]
    retention: {{keepLast: 3}}
    volumes: {{snapshot: none}}
    dumps:
      - name: exits-at-once
        podSelector: {{app: db}}
        command: "head -c {DUMP_BYTES} /dev/urandom"
        restoreCommand: "echo 'refusing this dump' >&2; exit 3"
      - name: reads-then-fails
        podSelector: {{app: db}}
        command: "head -c {DUMP_BYTES} /dev/urandom"
        restoreCommand: "head -c 1000 >/dev/null; echo 'ERROR:  syntax error at or near line 1' >&2; exit 3"
"#,
        store = store.display()
    )
}

#[tokio::test]
async fn given_multi_mb_dump_when_restore_command_exits_early_then_exit_code_and_stderr_reported_within_seconds()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: db}\n\
         spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n\
         \x20 template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: busybox}]}\n",
    )?;
    let store_dir = env.dir().join("store");
    let text = policy_text(&store_dir);
    let policy_file = env.dir().join("policy.yaml");
    std::fs::write(&policy_file, &text)?;
    let policy = crate::harness::policy(&text);
    let manifest = env
        .back_up(
            &policy,
            &FsStore::new(&store_dir),
            &Layout::new(""),
            chrono::Utc::now(),
        )
        .await?;
    assert_eq!(manifest.dumps.len(), 2, "{:?}", manifest.problems);
    for dump in &manifest.dumps {
        assert_eq!(dump.status, DumpStatus::Succeeded, "{dump:?}");
        assert_eq!(dump.size, Some(DUMP_BYTES), "{dump:?}");
    }

    let started = Instant::now();
    let mut restore = env.freezeframe(&[
        "restore",
        "--policy-file",
        policy_file.to_str().unwrap(),
        "--policy",
        "app",
        "--backup",
        "latest",
        "--namespace-map",
        "db=db-copy",
        "--wait",
        "-o",
        "json",
    ]);
    // Killed on drop: a hang fails the test instead of lasting the dumps' one-hour timeout.
    let out = tokio::time::timeout(Duration::from_secs(120), logged_output(&mut restore))
        .await
        .expect("restore ended within 120 s");
    let took = started.elapsed();

    assert!(
        took < Duration::from_secs(30),
        "the restore waited on commands that had ended: {took:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "partially failed: objects back, dumps not"
    );
    let json: Value = serde_json::from_slice(&out.stdout)?;
    let replays = json["report"]["dumps"].as_array().expect("dumps in the report");
    assert_eq!(replays.len(), 2, "{json}");
    for replay in replays {
        assert_eq!(replay["status"], "Failed", "{replay}");
        assert_eq!(replay["exitCode"], 3, "{replay}");
        assert_eq!(replay["message"], "restore command exit code 3", "{replay}");
        let bytes = replay["bytes"].as_u64().unwrap();
        assert!(bytes < DUMP_BYTES, "not all of the dump was fed: {replay}");
    }
    let stderr = |name: &str| {
        replays
            .iter()
            .find(|r| r["dump"] == name)
            .map(|r| r["stderr"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(stderr("exits-at-once"), "refusing this dump\n");
    assert_eq!(
        stderr("reads-then-fails"),
        "ERROR:  syntax error at or near line 1\n"
    );
    Ok(())
}
