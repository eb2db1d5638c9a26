//! The whole backup run against the sandbox's real pods/exec: freeze, dumps, thaw, export, manifest, exit
//! code; and the `freezeframe backup` process under SIGTERM and SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use freezeframe::backup::{self, DumpStatus, HooksStatus, Manifest, Status};
use freezeframe::exit::Outcome;
use freezeframe::policy::{Policy, parse_str};
use freezeframe::store::{self, Layout, ObjectStore, fs::FsStore, s3::S3Store};
use sha2::Digest;

use crate::harness::TestEnv;

/// A PolicySet text with one policy `app` over namespace `db`, storing into `store_dir`, with extra
/// policy fields (YAML, indented by four spaces).
fn policy_text(store_dir: &Path, fields: &str) -> String {
    format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: {}}}}}}}\n\
         defaults: {{storage: local}}\n\
         policies:\n  - name: app\n    schedule: \"@daily\"\n    namespaces: [db]\n\
         \x20   retention: {{keepLast: 3}}\n    volumes: {{snapshot: none}}\n{fields}",
        store_dir.display()
    )
}

fn policy(store_dir: &Path, fields: &str) -> Policy {
    let set = parse_str("test", &policy_text(store_dir, fields));
    assert!(set.is_valid(), "{:#?}", set.problems);
    set.policies.into_iter().next().unwrap()
}

/// Namespace `db` and a StatefulSet `db` of `replicas` single-container pods.
fn statefulset(replicas: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: db}}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db, namespace: db}}\n\
         spec:\n  replicas: {replicas}\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n\
         \x20 template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: busybox}}]}}\n"
    )
}

fn pod_dir(env: &TestEnv, pod: &str) -> PathBuf {
    env.sandbox().state_dir().join("pods").join("db").join(pod)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Plan and run one backup of `policy` through the library, into a directory store.
async fn back_up(env: &TestEnv, policy: &Policy, store: &dyn ObjectStore) -> Manifest {
    env.back_up(policy, store, &Layout::new(""), start_time())
        .await
        .unwrap()
}

async fn stored_manifest(store: &dyn ObjectStore, m: &Manifest) -> Manifest {
    let id = store::BackupId::parse(&m.backup_id).unwrap();
    let key = Layout::new("").backup(&m.policy, &id).manifest();
    Manifest::from_json(&store::get_bytes(store, &key).await.unwrap()).unwrap()
}

#[tokio::test]
async fn given_hooks_and_a_5mb_dump_when_backed_up_then_dump_streamed_inside_freeze_and_checksummed() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(2)).unwrap();
    let store = FsStore::new(env.dir().join("backups"));
    let p = policy(
        &env.dir().join("backups"),
        r#"    rules:
      pre: [{podSelector: {app: db}, actions: [{value: "date +%s.%N > frozen-at"}]}]
      post: [{podSelector: {app: db}, actions: [{value: "date +%s.%N > thawed-at"}]}]
    dumps:
      - name: data
        podSelector: {app: db}
        command: "date +%s.%N > dump-at; head -c 5000000 /dev/urandom | tee dump.bin"
"#,
    );
    let m = back_up(&env, &p, &store).await;
    assert_eq!(m.status, Status::Completed, "{:?}", m.problems);
    assert_eq!(m.status.outcome(), Outcome::Success);
    let hooks = m.hooks.as_ref().unwrap();
    assert_eq!(hooks.status, HooksStatus::Succeeded);
    assert!(hooks.freeze_window_millis.is_some());
    assert_eq!(
        hooks.steps.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(),
        ["pre", "post"]
    );
    assert_eq!(m.dumps.len(), 2);
    for (d, pod) in m.dumps.iter().zip(["db-0", "db-1"]) {
        let dir = pod_dir(&env, pod);
        let local = std::fs::read(dir.join("dump.bin")).unwrap();
        assert_eq!(local.len(), 5_000_000);
        assert_eq!((d.pod.as_str(), d.status), (pod, DumpStatus::Succeeded), "{d:?}");
        assert!(d.while_frozen);
        assert_eq!(d.size, Some(5_000_000));
        assert_eq!(d.sha256.as_deref(), Some(sha256(&local).as_str()));
        assert_eq!(m.artifacts[&d.artifact].sha256, sha256(&local));
        let id = store::BackupId::parse(&m.backup_id).unwrap();
        let key = Layout::new("").backup("app", &id).dump("data", "db", pod);
        assert_eq!(store::get_bytes(&store, &key).await.unwrap(), local);
        let t = |f: &str| -> f64 {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert!(
            t("frozen-at") < t("dump-at") && t("dump-at") < t("thawed-at"),
            "{pod}: the dump ran inside the freeze"
        );
    }
    assert!(m.artifacts.contains_key("resources.tar.zst"));
    assert_eq!(stored_manifest(&store, &m).await, m, "the manifest in the store");
}

#[tokio::test]
async fn given_failing_dump_when_backed_up_then_partially_failed_and_nothing_stored_for_it() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(2)).unwrap();
    let store = FsStore::new(env.dir().join("backups"));
    let p = policy(
        &env.dir().join("backups"),
        r#"    dumps:
      - name: data
        podSelector: {app: db}
        whileFrozen: false
        command: "head -c 100000 /dev/zero; if [ \"$POD_NAME\" = db-1 ]; then echo 'disk full' >&2; exit 4; fi"
"#,
    );
    let m = back_up(&env, &p, &store).await;
    assert_eq!(m.status, Status::PartiallyFailed);
    assert_eq!(m.status.outcome(), Outcome::PartiallyFailed);
    let (ok, failed) = (&m.dumps[0], &m.dumps[1]);
    assert_eq!((ok.status, ok.size), (DumpStatus::Succeeded, Some(100_000)));
    assert_eq!(failed.status, DumpStatus::Failed);
    assert_eq!(failed.exit_code, Some(4));
    assert_eq!(failed.stderr_tail, "disk full\n");
    assert_eq!(failed.size, None);
    assert!(!m.artifacts.contains_key(&failed.artifact));
    assert!(
        m.problems
            .iter()
            .any(|p| p.contains("dump data of db/db-1 failed") && p.contains("exit code 4")),
        "{:?}",
        m.problems
    );
    let objects = store.list("").await.unwrap();
    assert!(
        !objects.iter().any(|o| o.key.ends_with("dumps/data/db/db-1")),
        "a failed dump leaves no object: {objects:?}"
    );
    assert!(
        m.artifacts.contains_key("resources.tar.zst"),
        "the export still ran"
    );
}

#[tokio::test]
async fn given_pre_hook_failure_when_backed_up_then_failed_manifest_names_it_and_nothing_captured() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(3)).unwrap();
    let store = FsStore::new(env.dir().join("backups"));
    let p = policy(
        &env.dir().join("backups"),
        r#"    rules:
      pre: [{podSelector: {app: db}, actions: [
        {value: "if [ \"$POD_NAME\" = db-2 ]; then echo 'cannot lock tables' >&2; exit 3; fi"}]}]
      post: [{podSelector: {app: db}, actions: [{value: "touch post-ran"}]}]
    dumps: [{name: data, podSelector: {app: db}, command: "touch dumped; echo x"}]
"#,
    );
    let m = back_up(&env, &p, &store).await;
    assert_eq!(m.status, Status::Failed);
    assert_eq!(m.status.outcome(), Outcome::Failed);
    assert!(m.artifacts.is_empty(), "no export after an aborted freeze");
    assert!(m.dumps.is_empty());
    let hooks = m.hooks.as_ref().unwrap();
    assert_eq!(hooks.status, HooksStatus::Failed);
    let cause = &hooks.failures[0];
    assert_eq!(
        (cause.invocation.pod.as_str(), cause.invocation.exit_code),
        ("db-2", Some(3))
    );
    assert_eq!(cause.step, "rules.pre[0].actions[0]");
    assert_eq!(cause.stderr_tail, "cannot lock tables\n");
    assert!(m.problems[0].contains("freeze aborted"), "{:?}", m.problems);
    for pod in ["db-0", "db-1", "db-2"] {
        assert!(pod_dir(&env, pod).join("post-ran").exists(), "{pod}: thawed");
        assert!(!pod_dir(&env, pod).join("dumped").exists(), "{pod}: no dump");
    }
    assert_eq!(stored_manifest(&store, &m).await.status, Status::Failed);
}

#[tokio::test]
async fn given_seaweedfs_when_dumps_stream_in_parts_then_whole_dump_committed_and_failed_one_left_out() {
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&statefulset(2)).unwrap();
    // Parts of 5 MiB: the 12 MB dump is a three-part upload; the failing one fails after a part went up.
    let store = S3Store::new(env.s3().client().clone(), env.s3().bucket()).with_upload_limits(5 << 20, 2);
    let p = policy(
        env.dir(),
        r#"    dumps:
      - name: data
        podSelector: {app: db}
        command: "if [ \"$POD_NAME\" = db-1 ]; then head -c 7000000 /dev/urandom; exit 9; fi; head -c 12000000 /dev/urandom | tee dump.bin"
"#,
    );
    let m = back_up(&env, &p, &store).await;
    assert_eq!(m.status, Status::PartiallyFailed, "{:?}", m.problems);
    let local = std::fs::read(pod_dir(&env, "db-0").join("dump.bin")).unwrap();
    let (ok, failed) = (&m.dumps[0], &m.dumps[1]);
    assert_eq!(ok.size, Some(12_000_000));
    assert_eq!(ok.sha256.as_deref(), Some(sha256(&local).as_str()));
    let id = store::BackupId::parse(&m.backup_id).unwrap();
    let key = Layout::new("").backup("app", &id).dump("data", "db", "db-0");
    assert_eq!(
        sha256(&store::get_bytes(&store, &key).await.unwrap()),
        sha256(&local)
    );
    assert_eq!((failed.status, failed.exit_code), (DumpStatus::Failed, Some(9)));
    let failed_key = Layout::new("").backup("app", &id).dump("data", "db", "db-1");
    assert_eq!(
        store.head(&failed_key).await.unwrap(),
        None,
        "no truncated object"
    );
}

#[tokio::test]
async fn given_frozen_dump_slower_than_max_freeze_when_backed_up_then_thawed_at_the_budget_and_failed() {
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&statefulset(1)).unwrap();
    // Parts of 5 MiB: the slow dump has a part uploaded when it is cut off, so its upload must be aborted.
    let store = S3Store::new(env.s3().client().clone(), env.s3().bucket()).with_upload_limits(5 << 20, 2);
    let p = policy(
        env.dir(),
        r#"    rules:
      maxFreeze: 2s
      pre: [{podSelector: {app: db}, actions: [{value: "date +%s.%N > frozen-at"}]}]
      post: [{podSelector: {app: db}, actions: [{value: "date +%s.%N > thawed-at"}]}]
    dumps:
      - {name: slow, podSelector: {app: db}, command: "head -c 6000000 /dev/zero; sleep 60"}
"#,
    );
    let started = std::time::Instant::now();
    let m = back_up(&env, &p, &store).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the backup did not wait for the slow dump: {:?}",
        started.elapsed()
    );
    // Nothing was captured inside the freeze (the unit tests cover the PartiallyFailed side of the rule).
    assert_eq!(m.status, Status::Failed, "{:?}", m.problems);
    assert_eq!(
        m.problems[0],
        "freeze exceeded maxFreeze (2s): waiting for dump `slow` on db/db-0"
    );
    let hooks = m.hooks.as_ref().unwrap();
    assert_eq!(hooks.max_freeze_millis, Some(2_000));
    assert_eq!(hooks.exceeded.as_deref(), Some(m.problems[0].as_str()));
    let window = hooks.freeze_window_millis.unwrap();
    assert!((2_000..10_000).contains(&window), "frozen for {window} ms");
    let dir = pod_dir(&env, "db-0");
    let t = |f: &str| -> f64 {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let thawed_after = t("thawed-at") - t("frozen-at");
    assert!(
        (1.9..10.0).contains(&thawed_after),
        "post hook ran {thawed_after:.3}s after the pre hook"
    );

    let [slow] = &m.dumps[..] else {
        panic!("one dump: {:?}", m.dumps)
    };
    assert_eq!((slow.name.as_str(), slow.status), ("slow", DumpStatus::Failed));
    assert_eq!(
        slow.error.as_deref(),
        Some("cut off: the freeze exceeded maxFreeze (2s); nothing was stored")
    );
    let id = store::BackupId::parse(&m.backup_id).unwrap();
    let keys = Layout::new("").backup("app", &id);
    assert_eq!(store.head(&keys.dump("slow", "db", "db-0")).await.unwrap(), None);
    let uploads = env
        .s3()
        .client()
        .list_multipart_uploads()
        .bucket(env.s3().bucket())
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the cut-off upload was aborted: {:?}",
        uploads.uploads()
    );
    assert!(m.artifacts.is_empty(), "a failed backup exports nothing");
    assert_eq!(stored_manifest(&store, &m).await, m);
}

/// `freezeframe backup --policy app --policy-file <file>` against the sandbox, not yet awaited.
fn spawn_backup(env: &TestEnv, fields: &str) -> tokio::process::Child {
    let file = env.dir().join("policies.yaml");
    std::fs::write(&file, policy_text(&env.dir().join("backups"), fields)).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
        .args(["backup", "--policy", "app", "--policy-file"])
        .arg(&file)
        .env("KUBECONFIG", env.sandbox().kubeconfig_path())
        .env_remove("FREEZEFRAME_NAMESPACE")
        .env_remove("FREEZEFRAME_POLICY_CONFIGMAP")
        .env_remove("FREEZEFRAME_POLICY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_for_files(paths: &[PathBuf], within: Duration) {
    tokio::time::timeout(within, async {
        while !paths.iter().all(|p| p.exists()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("waiting for {paths:?}"));
}

fn signal(child: &tokio::process::Child, signal: i32) {
    let pid = child.id().expect("still running") as i32;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test]
async fn given_backup_process_frozen_when_sigterm_then_every_pod_thawed_and_exit_non_zero() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(3)).unwrap();
    let mut child = spawn_backup(
        &env,
        r#"    rules:
      pre: [{podSelector: {app: db}, actions: [{value: "touch pre-started; sleep 30"}]}]
      post: [{podSelector: {app: db}, actions: [{value: "touch post-ran"}]}]
"#,
    );
    let dirs: Vec<PathBuf> = ["db-0", "db-1", "db-2"].map(|p| pod_dir(&env, p)).into();
    let started: Vec<PathBuf> = dirs.iter().map(|d| d.join("pre-started")).collect();
    wait_for_files(&started, Duration::from_secs(30)).await;
    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within seconds of SIGTERM, not after the 30 s pre action")
        .unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut err)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    for d in &dirs {
        assert!(d.join("post-ran").exists(), "{d:?}: thawed before exit\n{err}");
    }
    let listed = backup::list(&FsStore::new(env.dir().join("backups")), &Layout::new(""), None)
        .await
        .unwrap();
    let m = listed[0]
        .manifest
        .as_ref()
        .expect("a Failed manifest records the cancelled freeze");
    assert_eq!(m.status, Status::Failed);
    assert_eq!(m.hooks.as_ref().unwrap().status, HooksStatus::Cancelled);
}

#[tokio::test]
async fn given_held_lock_when_backup_process_is_killed_then_held_command_ends() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(1)).unwrap();
    let mut child = spawn_backup(
        &env,
        r#"    rules:
      pre: [{podSelector: {app: db}, actions: [
        {value: "${WAIT_CMD}; touch released", background: true, timeout: 20s}]}]
    dumps: [{name: slow, podSelector: {app: db}, command: "touch dump-started; sleep 30"}]
"#,
    );
    let dir = pod_dir(&env, "db-0");
    wait_for_files(&[dir.join("dump-started")], Duration::from_secs(30)).await;
    assert!(!dir.join("released").exists(), "the lock is held during the dump");
    signal(&child, libc::SIGKILL);
    let _ = child.wait().await;
    wait_for_files(&[dir.join("released")], Duration::from_secs(10)).await;
}

#[tokio::test]
async fn given_backup_command_when_it_succeeds_or_a_dump_fails_then_summary_and_exit_0_or_3() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(1)).unwrap();
    let child = spawn_backup(
        &env,
        r#"    rules:
      pre: [{podSelector: {app: db}, actions: [{value: "true"}]}]
    dumps: [{name: small, podSelector: {app: db}, command: "echo hello"}]
"#,
    );
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("app/") && stdout.contains("Completed"),
        "{stdout}"
    );
    assert!(stdout.contains("hooks: Succeeded, frozen for"), "{stdout}");
    assert!(stdout.contains("dump small of db/db-0: 6 bytes"), "{stdout}");

    let failing = spawn_backup(
        &env,
        r#"    dumps: [{name: small, podSelector: {app: db}, command: "echo half; exit 5"}]
"#,
    );
    let out = failing.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "PartiallyFailed: {stdout}");
    assert!(
        stdout.contains("PartiallyFailed") && stdout.contains("problem: dump small of db/db-0 failed"),
        "{stdout}"
    );
}

#[tokio::test]
async fn given_a_store_that_cannot_be_written_when_backed_up_then_preflight_fails_before_any_pod_is_frozen() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&statefulset(1)).unwrap();
    let file = env.dir().join("policies.yaml");
    std::fs::write(
        &file,
        policy_text(
            Path::new("/proc/freezeframe-unwritable"),
            "    rules:\n      pre: [{podSelector: {app: db}, actions: [{value: \"touch pre-ran\"}]}]\n",
        ),
    )
    .unwrap();

    let out = crate::harness::logged_output(&mut env.freezeframe(&[
        "backup",
        "--policy",
        "app",
        "--policy-file",
        file.to_str().unwrap(),
    ]))
    .await;

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("preflight") && stderr.contains("/proc/freezeframe-unwritable"),
        "{stderr}"
    );
    assert!(
        !pod_dir(&env, "db-0").join("pre-ran").exists(),
        "nothing was frozen"
    );
}
