//! Unit tests of dumps: the fake executor's scripted output streamed into a directory store.

use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;
use crate::hooks::fake::{FakeExecutor, Script};
use crate::store::fs::FsStore;
use crate::store::{self, BackupId, Layout};

fn target(pod: &str) -> DumpTarget {
    DumpTarget {
        name: "pgdump".into(),
        target: Target::new("db", pod, "postgres"),
        exec: Exec::Shell(format!("dump {pod}")),
        timeout: Duration::from_secs(5),
        while_frozen: true,
    }
}

fn keys() -> BackupKeys {
    Layout::new("").backup(
        "p",
        &BackupId::at(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()),
    )
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn given_successful_command_when_dumped_then_stdout_stored_with_size_and_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let exec = FakeExecutor::new(|t, _| Script::Exit {
        code: 0,
        after: Duration::ZERO,
        stdout: format!("rows of {}\n", t.pod),
        stderr: "progress\n".into(),
    });
    let records = run_all(
        &exec,
        &store,
        &Sealing::Plain,
        &keys(),
        [target("db-1"), target("db-0")].iter(),
        &Budget::default(),
    )
    .await;
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(
        (r.pod.as_str(), r.status),
        ("db-0", DumpStatus::Succeeded),
        "{r:?}"
    );
    assert_eq!(r.artifact, "dumps/pgdump/db/db-0");
    assert_eq!(r.size, Some(13));
    assert_eq!(r.sha256.as_deref(), Some(sha(b"rows of db-0\n").as_str()));
    assert_eq!(r.stderr_tail, "progress\n");
    let stored = store::get_bytes(&store, &keys().dump("pgdump", "db", "db-0"))
        .await
        .unwrap();
    assert_eq!(stored, b"rows of db-0\n");
}

#[tokio::test]
async fn given_command_exiting_non_zero_after_output_when_dumped_then_failed_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let exec = FakeExecutor::new(|_, _| Script::Exit {
        code: 2,
        after: Duration::ZERO,
        stdout: "half a dump".into(),
        stderr: "pg_dump: connection lost\n".into(),
    });
    let record = run_one(
        &exec,
        &store,
        &Sealing::Plain,
        &keys(),
        &target("db-0"),
        &Budget::default(),
    )
    .await;
    assert_eq!(record.status, DumpStatus::Failed);
    assert_eq!(record.exit_code, Some(2));
    assert_eq!(record.size, None, "a truncated dump reports no size");
    let error = record.error.unwrap();
    assert!(
        error.contains("exit code 2") && error.contains("11 bytes"),
        "{error}"
    );
    assert_eq!(record.stderr_tail, "pg_dump: connection lost\n");
    assert_eq!(
        store.head(&keys().dump("pgdump", "db", "db-0")).await.unwrap(),
        None,
        "a failed dump leaves no object"
    );
}

#[tokio::test(start_paused = true)]
async fn given_command_exceeding_timeout_when_dumped_then_failed_as_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let exec = FakeExecutor::new(|_, _| Script::Hang);
    let record = run_one(
        &exec,
        &store,
        &Sealing::Plain,
        &keys(),
        &target("db-0"),
        &Budget::default(),
    )
    .await;
    assert_eq!(record.status, DumpStatus::Failed);
    assert!(record.error.unwrap().contains("timed out"));
    assert_eq!(
        store.head(&keys().dump("pgdump", "db", "db-0")).await.unwrap(),
        None
    );
}

#[test]
fn given_dump_with_single_pod_and_empty_skip_selection_then_targets_are_first_pod_and_skipped() {
    use crate::policy::values::selector_from_labels;
    let pod = |name: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "db", "labels": {"app": "pg"}},
            "spec": {"containers": [{"name": "postgres"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "postgres", "ready": true, "restartCount": 0, "image": "x", "imageID": "x"}]}
        }))
        .unwrap()
    };
    let mut dump = Dump {
        name: "pgdump".into(),
        pod_selector: selector_from_labels([("app".into(), "pg".into())].into()),
        container: None,
        command: Exec::Shell("pg_dumpall".into()),
        restore_command: None,
        run_in_single_pod: true,
        timeout: Duration::from_secs(60),
        while_frozen: false,
        on_no_pods: OnNoPods::Skip,
    };
    let targets = dump_targets(&dump, &[pod("pg-1"), pod("pg-0")], &["db".into()])
        .unwrap()
        .unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].target, Target::new("db", "pg-0", "postgres"));
    assert!(!targets[0].while_frozen);
    let skipped = dump_targets(&dump, &[], &["db".into()]).unwrap().unwrap_err();
    assert_eq!(skipped.rule, "dumps `pgdump`");
    dump.on_no_pods = OnNoPods::Fail;
    let err = dump_targets(&dump, &[], &["db".into()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dumps `pgdump`: no usable pod matches `app=pg` in namespaces [db]"
    );
}

/// A store that reads the whole body but commits only its first half (a store losing bytes).
#[derive(Debug)]
struct HalvingStore(FsStore);

#[async_trait::async_trait]
impl ObjectStore for HalvingStore {
    fn location(&self) -> String {
        self.0.location()
    }
    async fn put(
        &self,
        key: &str,
        body: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    ) -> store::Result<Written> {
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(body, &mut all)
            .await
            .unwrap();
        store::put_bytes(&self.0, key, &all[..all.len() / 2]).await
    }
    async fn get(&self, key: &str) -> store::Result<store::ByteReader> {
        self.0.get(key).await
    }
    async fn head(&self, key: &str) -> store::Result<Option<u64>> {
        self.0.head(key).await
    }
    async fn list(&self, prefix: &str) -> store::Result<Vec<store::ObjectInfo>> {
        self.0.list(prefix).await
    }
    async fn delete(&self, keys: &[String]) -> store::Result<()> {
        self.0.delete(keys).await
    }
}

#[tokio::test]
async fn given_store_committing_fewer_bytes_than_written_when_dumped_then_failed_and_object_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = HalvingStore(FsStore::new(dir.path()));
    let exec = FakeExecutor::new(|_, _| Script::Exit {
        code: 0,
        after: Duration::ZERO,
        stdout: "0123456789".into(),
        stderr: String::new(),
    });
    let record = run_one(
        &exec,
        &store,
        &Sealing::Plain,
        &keys(),
        &target("db-0"),
        &Budget::default(),
    )
    .await;
    assert_eq!(record.status, DumpStatus::Failed);
    let error = record.error.unwrap();
    assert!(
        error.contains("wrote 10 bytes") && error.contains("committed 5 bytes"),
        "{error}"
    );
    assert_eq!(
        store.head(&keys().dump("pgdump", "db", "db-0")).await.unwrap(),
        None,
        "the untrusted object is deleted"
    );
}

fn sealing_and_identities() -> (Sealing, std::sync::Arc<crate::store::crypt::Identities>) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipients = crate::store::crypt::Recipients::parse(&[identity.to_public().to_string()]).unwrap();
    let identities =
        crate::store::crypt::Identities::parse(identity.to_string().expose_secret(), "test").unwrap();
    (
        Sealing::Age(std::sync::Arc::new(recipients)),
        std::sync::Arc::new(identities),
    )
}

#[tokio::test]
async fn given_encryption_when_dumped_then_ciphertext_is_stored_and_recorded_and_decrypts_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let (sealing, identities) = sealing_and_identities();
    let exec = FakeExecutor::new(|_, _| Script::Exit {
        code: 0,
        after: Duration::ZERO,
        stdout: "secret-row-marker\n".into(),
        stderr: String::new(),
    });

    let record = run_one(
        &exec,
        &store,
        &sealing,
        &keys(),
        &target("db-0"),
        &Budget::default(),
    )
    .await;

    assert_eq!(record.status, DumpStatus::Succeeded, "{record:?}");
    let stored = store::get_bytes(&store, &keys().dump("pgdump", "db", "db-0"))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("secret-row-marker"));
    assert_eq!(record.size, Some(stored.len() as u64));
    assert_eq!(record.sha256.as_deref(), Some(sha(&stored).as_str()));
    let opening =
        crate::store::crypt::Opening::for_backup("p/1", sealing.record().as_ref(), Some(&identities))
            .unwrap();
    let mut plain = opening.reader("dump", &stored[..]).await.unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut plain, &mut text)
        .await
        .unwrap();
    assert_eq!(text, "secret-row-marker\n");
}

#[tokio::test]
async fn given_encryption_and_a_failing_command_when_dumped_then_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let (sealing, _) = sealing_and_identities();
    let exec = FakeExecutor::new(|_, _| Script::Exit {
        code: 3,
        after: Duration::ZERO,
        stdout: "partial output".into(),
        stderr: String::new(),
    });

    let record = run_one(
        &exec,
        &store,
        &sealing,
        &keys(),
        &target("db-0"),
        &Budget::default(),
    )
    .await;

    assert_eq!(record.status, DumpStatus::Failed);
    assert_eq!(
        store.head(&keys().dump("pgdump", "db", "db-0")).await.unwrap(),
        None
    );
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn given_frozen_dump_still_running_when_the_freeze_budget_runs_out_then_cut_off_and_nothing_is_stored()
{
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let exec = FakeExecutor::new(|_, _| Script::Hang);
    let budget = Budget::new(Some(Duration::from_millis(200)));
    budget.start();
    let expire = budget.clone();
    tokio::spawn(async move { expire.expire().await });
    let started = tokio::time::Instant::now();
    let record = run_one(&exec, &store, &Sealing::Plain, &keys(), &target("db-0"), &budget).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped at the cut-off, not the timeout"
    );
    assert_eq!(record.status, DumpStatus::Failed);
    assert_eq!(
        record.error.as_deref(),
        Some("cut off: the freeze exceeded maxFreeze (200ms); nothing was stored")
    );
    assert_eq!(
        exec.when("dump db-0", &crate::hooks::fake::EventKind::StreamClosed)
            .len(),
        1,
        "the exec stream was closed"
    );
    assert_eq!(
        budget.exceeded().unwrap().waiting_for,
        ["dump `pgdump` on db/db-0"]
    );
    let left: Vec<_> = walk(dir.path());
    assert!(left.is_empty(), "nothing half-written is left: {left:?}");
}

/// Every file under `dir`, hidden temp files included.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
