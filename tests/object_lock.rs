//! Immutable backups with S3 Object Lock (docs/retention.md#immutable-backups-s3-object-lock), against
//! SeaweedFS: a bucket created with Object Lock enabled is versioned and refuses to delete a locked
//! version, which the first test proves before the others rely on it.

use chrono::{Duration, Utc};
use freezeframe::backup::Status;
use freezeframe::policy::{LockMode, ObjectLock};
use freezeframe::retention::cluster::KubeSnapshots;
use freezeframe::retention::{self, Mode, Target};
use freezeframe::store::{self, Layout, ObjectStore, s3::S3Store};

use crate::harness::{TestEnv, logged_output, policy, unique_bucket_name};

const LOCK: ObjectLock = ObjectLock {
    mode: LockMode::Compliance,
    retain_days: 1,
};

/// A new bucket with Object Lock enabled (and so versioning) in the env's SeaweedFS.
async fn locked_bucket(env: &TestEnv) -> anyhow::Result<String> {
    let bucket = unique_bucket_name();
    env.s3()
        .client()
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await?;
    Ok(bucket)
}

fn locked_store(env: &TestEnv, bucket: &str) -> S3Store {
    S3Store::new(env.s3().client().clone(), bucket).with_object_lock(Some(LOCK))
}

#[tokio::test]
async fn given_locked_object_version_when_deleted_then_the_store_refuses_and_keeps_it() -> anyhow::Result<()>
{
    let env = TestEnv::with_s3().await?;
    let bucket = locked_bucket(&env).await?;
    let store = locked_store(&env, &bucket);
    store.check_ready().await?;
    store::put_bytes(&store, "backups/p/20261123T120000Z/manifest.json", b"{}").await?;
    let until = store
        .locked_until("backups/p/20261123T120000Z/manifest.json")
        .await?
        .expect("written with retention");
    assert!(until > Utc::now() + Duration::hours(23), "{until}");

    let deleted = store
        .delete(&["backups/p/20261123T120000Z/manifest.json".to_string()])
        .await;

    assert!(deleted.is_err(), "a locked version was deleted");
    assert_eq!(
        store.head("backups/p/20261123T120000Z/manifest.json").await?,
        Some(2)
    );
    Ok(())
}

#[tokio::test]
async fn given_bucket_without_object_lock_when_backup_starts_then_it_is_refused_before_writing()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    env.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n")?;
    let policy_file = env.dir().join("policies.yaml");
    std::fs::write(
        &policy_file,
        format!(
            "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
             storages:\n  locked:\n    s3: {{bucket: {}, endpoint: \"{}\", forcePathStyle: true, region: {},\n\
             \x20         objectLock: {{mode: GOVERNANCE, retainDays: 30}}}}\n\
             defaults: {{storage: locked}}\n\
             policies:\n  - name: app\n    schedule: \"@daily\"\n    namespaces: [db]\n    retention: {{keepLast: 3}}\n    volumes: {{snapshot: none}}\n",
            env.s3().bucket(),
            env.s3().endpoint(),
            crate::harness::TEST_REGION,
        ),
    )?;
    let credentials = crate::harness::test_credentials();

    let out = logged_output(
        env.freezeframe(&[
            "backup",
            "--policy",
            "app",
            "--policy-file",
            policy_file.to_str().unwrap(),
        ])
        .env("AWS_ACCESS_KEY_ID", &credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &credentials.secret_access_key),
    )
    .await;

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "bucket {} does not have S3 Object Lock enabled",
            env.s3().bucket()
        )) && stderr.contains("s3.objectLock"),
        "{stderr}"
    );
    let store = S3Store::new(env.s3().client().clone(), env.s3().bucket());
    assert_eq!(store.list("").await?, [], "nothing was written");
    Ok(())
}

#[tokio::test]
async fn given_locked_backup_due_for_pruning_when_pruned_then_reported_locked_kept_and_not_a_failure()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    env.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: db}\ndata: {k: v}\n")?;
    let bucket = locked_bucket(&env).await?;
    let store = locked_store(&env, &bucket);
    let layout = Layout::new("");
    let app = policy(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {local: {filesystem: {path: /unused}}}\ndefaults: {storage: local}\n\
         policies:\n  - name: app\n    schedule: \"@daily\"\n    namespaces: [db]\n\
         \x20   retention: {keepLast: 1}\n    volumes: {snapshot: none}\n",
    );
    let older = env
        .back_up(&app, &store, &layout, Utc::now() - Duration::hours(2))
        .await?;
    let newer = env
        .back_up(&app, &store, &layout, Utc::now() - Duration::hours(1))
        .await?;
    assert_eq!(
        (older.status, newer.status),
        (Status::Completed, Status::Completed)
    );
    let before = store.list("").await?;
    let snapshots = KubeSnapshots::new(env.client()).await?;
    let target = Target {
        store: &store,
        layout: &layout,
        repository: None,
    };

    let report = retention::prune(
        target,
        "app",
        &app.retention,
        Utc::now(),
        Mode::Delete(&snapshots),
    )
    .await?;

    assert_eq!(report.failed, [], "a lock is not a failure");
    assert_eq!(report.pruned, [], "nothing could be deleted");
    let [locked] = &report.locked[..] else {
        panic!("one locked backup: {report:?}")
    };
    assert_eq!(locked.backup_id, older.backup_id);
    assert!(
        locked.notes.iter().any(|n| n.starts_with("locked until ")),
        "{:?}",
        locked.notes
    );
    assert_eq!(report.outcome(), freezeframe::exit::Outcome::Success);
    assert_eq!(
        store.list("").await?,
        before,
        "every object of both backups is still there"
    );
    let summary = freezeframe::app::prune::after_backup_summary(&report);
    assert!(summary.contains("locked until"), "{summary}");
    Ok(())
}
