//! Behaviour of the mover orchestration against the in-memory cluster.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fake::{FakeCluster, Script};
use super::objects::tests::{spec, volume};
use super::*;

fn volumes(n: usize) -> Vec<VolumeRecord> {
    (0..n).map(|i| volume(&format!("data-db-{i}"))).collect()
}

#[tokio::test]
async fn given_three_volumes_when_moving_then_each_records_its_repository_snapshot_and_nothing_stays() {
    let cluster = FakeCluster::default();
    let mut vols = volumes(3);
    let moved = move_volumes(&cluster, &spec(), &mut vols, true, &CancellationToken::new()).await;
    assert!(moved.failures.is_empty(), "{moved:?}");
    for v in &vols {
        let m = v.moved.as_ref().unwrap();
        assert_eq!(m.status, MoveStatus::Succeeded);
        assert_eq!(m.snapshot_id.as_deref(), Some(format!("snap-{}", v.pvc).as_str()));
        assert_eq!(
            (m.files, m.dirs, m.bytes, m.bytes_new, m.bytes_reused),
            (3, 2, 1000, 600, 400)
        );
        assert_eq!(m.duration_seconds, 1.5);
    }
    assert_eq!(
        cluster.created.lock().unwrap().len(),
        12,
        "four objects per volume"
    );
    assert!(
        cluster.live.lock().unwrap().is_empty(),
        "every temporary object deleted"
    );
}

#[tokio::test]
async fn given_concurrency_two_when_moving_five_volumes_then_at_most_two_jobs_run_at_once() {
    let cluster = FakeCluster::default();
    let mut vols = volumes(5);
    move_volumes(&cluster, &spec(), &mut vols, true, &CancellationToken::new()).await;
    let (now, most) = *cluster.running.lock().unwrap();
    assert_eq!(now, 0);
    assert_eq!(most, 2);
}

#[tokio::test]
async fn given_a_failing_mover_when_moving_then_the_claim_is_named_and_the_others_are_moved() {
    let mut cluster = FakeCluster::default();
    cluster.scripts.insert(
        "data-db-1".into(),
        Script::Fail(
            "BackoffLimitExceeded".into(),
            "opening the repository\nError: wrong password".into(),
        ),
    );
    let mut vols = volumes(3);
    let moved = move_volumes(&cluster, &spec(), &mut vols, true, &CancellationToken::new()).await;
    assert_eq!(moved.failures.len(), 1, "{moved:?}");
    assert!(
        moved.failures[0].contains("shop/data-db-1"),
        "{}",
        moved.failures[0]
    );
    assert!(
        moved.failures[0].contains("wrong password"),
        "{}",
        moved.failures[0]
    );
    let failed = vols[1].moved.as_ref().unwrap();
    assert_eq!(failed.status, MoveStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .starts_with("BackoffLimitExceeded")
    );
    assert_eq!(vols[0].moved.as_ref().unwrap().status, MoveStatus::Succeeded);
    assert!(cluster.live.lock().unwrap().is_empty());
}

#[tokio::test]
async fn given_a_completed_job_without_summary_when_moving_then_it_is_a_failure_not_a_success() {
    let mut cluster = FakeCluster::default();
    cluster
        .scripts
        .insert("data-db-0".into(), Script::Complete("done, no json".into()));
    let mut vols = volumes(1);
    let moved = move_volumes(&cluster, &spec(), &mut vols, true, &CancellationToken::new()).await;
    assert_eq!(moved.failures.len(), 1);
    assert!(
        moved.failures[0].contains("no summary line"),
        "{}",
        moved.failures[0]
    );
}

#[tokio::test(start_paused = true)]
async fn given_a_claim_that_never_binds_when_moving_then_the_run_gives_up_after_the_timeout_and_cleans_up() {
    let mut cluster = FakeCluster::default();
    cluster.scripts.insert("data-db-0".into(), Script::Hang);
    let mut s = spec();
    s.mover.timeout = Duration::from_secs(60);
    let mut vols = volumes(2);
    let moved = move_volumes(&cluster, &s, &mut vols, true, &CancellationToken::new()).await;
    assert_eq!(moved.failures.len(), 1);
    assert!(
        moved.failures[0].contains("data-db-0") && moved.failures[0].contains("did not finish"),
        "{}",
        moved.failures[0]
    );
    assert!(cluster.live.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn given_sigterm_while_moving_when_cancelled_then_nothing_is_left_and_the_claims_are_failed() {
    let mut cluster = FakeCluster::default();
    cluster.scripts.insert("data-db-0".into(), Script::Hang);
    cluster.scripts.insert("data-db-1".into(), Script::Hang);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        trigger.cancel();
    });
    let mut vols = volumes(2);
    let moved = move_volumes(&cluster, &spec(), &mut vols, true, &cancel).await;
    assert!(moved.cancelled);
    assert_eq!(moved.failures.len(), 2);
    assert!(vols.iter().all(|v| {
        v.moved
            .as_ref()
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("cancelled")
    }));
    assert!(
        cluster.live.lock().unwrap().is_empty(),
        "{:?}",
        cluster.live.lock().unwrap().keys()
    );
}

#[tokio::test]
async fn given_leftovers_of_a_crashed_run_when_moving_then_they_are_swept_first() {
    let mut crashed = spec();
    crashed.backup_id = "20261203T164500Z".into();
    let leftovers = crashed.backup_objects(&volume("data-db-0"), None);
    let mut other_policy = spec();
    other_policy.policy = "billing".into();
    let foreign = other_policy.backup_objects(&volume("data-db-0"), None);
    let mut all = leftovers.clone();
    all.extend(foreign.clone());
    let cluster = FakeCluster::with_leftovers(all);
    let mut vols = volumes(1);
    let moved = move_volumes(&cluster, &spec(), &mut vols, true, &CancellationToken::new()).await;
    assert_eq!(
        moved.swept, 4,
        "the crashed run's four (this run's go as each mover ends)"
    );
    let live = cluster.live.lock().unwrap();
    assert_eq!(live.len(), 4, "another policy's objects are not ours to delete");
    assert!(
        live.values()
            .all(|o| o.body["metadata"]["labels"][crate::snapshot::POLICY_LABEL] == "billing")
    );
}

#[test]
fn given_mover_output_when_finding_the_summary_then_the_last_json_line_wins() {
    let out = "scanning\n{\"snapshotId\":\"a\",\"files\":1}\nnoise\n{\"snapshotId\":\"b\",\"files\":2,\"dirs\":1,\"bytes\":9,\"bytesNew\":9,\"bytesReused\":0,\"durationSeconds\":0.25}\n";
    let s = MoverSummary::find(out).unwrap();
    assert_eq!(s.snapshot_id, "b");
    assert_eq!(s.files, 2);
    assert_eq!(MoverSummary::find("no json here\n{broken"), None);
}

#[test]
fn given_storages_when_locating_the_repository_then_it_is_under_the_prefix_in_restic_syntax() {
    use crate::policy::{Repository, S3Storage, SecretKeyRef, Storage};
    let repo = Repository {
        password_secret: SecretKeyRef {
            name: "pw".into(),
            key: "password".into(),
        },
        prune_every: Duration::from_secs(1),
    };
    let s3 = Backend::S3(S3Storage {
        bucket: "dr".into(),
        prefix: "cluster-a".into(),
        region: Some("eu-west-1".into()),
        endpoint: Some("http://127.0.0.1:8333/".into()),
        force_path_style: true,
        credentials_secret: Some("creds".into()),
        server_side_encryption: None,
        kms_key_id: None,
        object_lock: None,
    });
    let storage = |backend| Storage {
        name: "primary".into(),
        backend,
        repository: Some(repo.clone()),
        encryption: None,
    };
    let a = access(&storage(s3));
    assert_eq!(a.url, "s3:http://127.0.0.1:8333/dr/cluster-a/repository");
    assert_eq!(a.credentials_secret.as_deref(), Some("creds"));
    assert_eq!(a.region.as_deref(), Some("eu-west-1"));
    let fs = access(&storage(Backend::Filesystem {
        path: "/backups/".into(),
    }));
    assert_eq!(fs.url, "/backups/repository");
    assert_eq!(fs.password_secret.name, "pw");
}

#[tokio::test]
async fn given_no_repository_yet_when_moving_then_the_first_mover_creates_it_alone_before_the_others_start() {
    let cluster = FakeCluster::default();
    let mut vols = volumes(3);
    let moved = move_volumes(&cluster, &spec(), &mut vols, false, &CancellationToken::new()).await;
    assert!(moved.failures.is_empty(), "{moved:?}");
    let events = cluster.events.lock().unwrap().clone();
    let first_end = events.iter().position(|e| e.starts_with("end ")).unwrap();
    let second_job = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.starts_with("create Job"))
        .nth(1)
        .unwrap()
        .0;
    assert!(first_end < second_job, "{events:#?}");
    assert_eq!(
        cluster.running.lock().unwrap().1,
        2,
        "the others still run two at once"
    );
}
