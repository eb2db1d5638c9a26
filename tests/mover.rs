//! The mover's repository against real storage: SeaweedFS S3 and a local directory, read back by
//! freezeframe and by stock `restic` (Debian's package; `scripts/test` installs it).

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use freezeframe::mover::{
    MoverReport, Password, PruneMode, Repository, RepositoryLocation, RestoreReport, S3Credentials,
    SnapshotSpec,
};
use freezeframe::policy::{Backend, S3Storage};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::harness::{self, TestEnv, logged_output};

const PASSWORD: &str = "correct horse battery staple";
/// Appears in one file of every test tree; must never appear in plaintext in a repository.
const MARKER: &str = "FREEZEFRAME-PLAINTEXT-MARKER-7d1c";

fn password() -> Password {
    Password::new(PASSWORD).unwrap()
}

fn s3_credentials() -> S3Credentials {
    let c = harness::test_credentials();
    S3Credentials {
        access_key_id: Some(c.access_key_id),
        secret_access_key: Some(c.secret_access_key),
        session_token: None,
        region: Some(harness::TEST_REGION.into()),
    }
}

/// The repository of the test's bucket, located as the backup run locates it: `<prefix>/repository`.
fn s3_repository(env: &TestEnv) -> RepositoryLocation {
    RepositoryLocation::for_storage(&Backend::S3(S3Storage {
        bucket: env.s3().bucket().to_string(),
        prefix: "clusters/test".into(),
        region: Some(harness::TEST_REGION.into()),
        endpoint: Some(env.s3().endpoint()),
        force_path_style: true,
        credentials_secret: None,
        server_side_encryption: None,
        kms_key_id: None,
        object_lock: None,
    }))
}

/// A volume-like tree of about `random_kib` KiB of random data plus repeated content: nested
/// directories, a symlink, an empty file, several modes, and the [`MARKER`].
fn write_tree(root: &Path, random_kib: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("db/base/16384"))?;
    std::fs::create_dir_all(root.join("logs/2026/11"))?;
    std::fs::create_dir_all(root.join("empty-dir"))?;
    let mut remaining = random_kib * 1024;
    let mut n = 0;
    while remaining > 0 {
        let size = rng.random_range(1..=256 * 1024).min(remaining);
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        let dir = if n % 2 == 0 {
            "db/base/16384"
        } else {
            "logs/2026/11"
        };
        std::fs::write(root.join(dir).join(format!("segment-{n:03}")), &data)?;
        remaining -= size;
        n += 1;
    }
    let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let repeated = block.repeat(16);
    std::fs::write(root.join("db/repeated-a.bin"), &repeated)?;
    std::fs::write(root.join("logs/repeated-b.bin"), &repeated)?;
    std::fs::write(root.join("secret.txt"), format!("user data {MARKER} end\n"))?;
    std::fs::write(root.join("empty-file"), b"")?;
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n")?;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(root.join("secret.txt"), std::fs::Permissions::from_mode(0o600))?;
    std::fs::set_permissions(root.join("db"), std::fs::Permissions::from_mode(0o700))?;
    symlink("db/repeated-a.bin", root.join("current"))?;
    symlink("missing-target", root.join("dangling"))?;
    Ok(())
}

/// Every path under `root` (root excluded) with its kind, permission bits and content hash or link target.
fn describe_tree(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            let relative = path.strip_prefix(root)?.to_path_buf();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path)?.display())
            } else if meta.is_dir() {
                walk(root, &path, out)?;
                format!("dir {mode:o}")
            } else {
                let hash = hex::encode(Sha256::digest(std::fs::read(&path)?));
                format!("file {mode:o} {} {hash}", meta.len())
            };
            out.insert(relative, what);
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn assert_same_tree(source: &Path, restored: &Path) -> anyhow::Result<()> {
    let expected = describe_tree(source)?;
    let actual = describe_tree(restored)?;
    ensure!(
        expected.len() > 10,
        "the source tree is too small to prove anything"
    );
    for (path, what) in &expected {
        assert_eq!(actual.get(path), Some(what), "{} differs", path.display());
    }
    assert_eq!(actual.len(), expected.len(), "extra paths restored: {actual:#?}");
    Ok(())
}

/// The last stdout line of a successful `freezeframe mover` run, parsed.
fn last_json_line<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    assert!(
        out.status.success(),
        "mover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("stdout has a line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last stdout line {line:?}: {e}"))
}

fn mover(env: &TestEnv, args: &[&str]) -> tokio::process::Command {
    let credentials = harness::test_credentials();
    let mut command = env.freezeframe(&["mover"]);
    command
        .args(args)
        .env("FREEZEFRAME_REPOSITORY_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key)
        .env("AWS_REGION", harness::TEST_REGION)
        .env_remove("AWS_SESSION_TOKEN");
    command
}

/// Stock restic, with the repository password and S3 credentials, no cache and no lock.
fn restic(repository: &RepositoryLocation, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let credentials = harness::test_credentials();
    let out = Command::new("restic")
        .arg("-r")
        .arg(repository.to_string())
        .arg("--no-cache")
        // Reading takes no lock: restic's lock upload uses a streaming signature that SeaweedFS without
        // configured identities refuses ("Signed request requires setting up SeaweedFS S3 authentication").
        .arg("--no-lock")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key)
        .env("AWS_DEFAULT_REGION", harness::TEST_REGION)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running restic (Debian package `restic`; scripts/test installs it)")?;
    eprintln!(
        "restic {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "restic {args:?} failed");
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn given_volume_tree_when_mover_cli_backs_up_to_s3_and_restores_then_paths_modes_and_sha256_match()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let source = env.dir().join("volume");
    write_tree(&source, 4 * 1024, 1)?;
    let repository = s3_repository(&env).to_string();
    assert!(repository.ends_with("/clusters/test/repository"), "{repository}");

    let out = logged_output(&mut mover(
        &env,
        &[
            "backup",
            "--repository",
            &repository,
            "--source",
            source.to_str().unwrap(),
            "--host",
            "shop",
            "--path-label",
            "data-db-0",
            "--tag",
            "policy=shop",
        ],
    ))
    .await;
    let report: MoverReport = last_json_line(&out);
    assert_eq!(report.snapshot_id.len(), 64);
    let expected_bytes: u64 = describe_tree(&source)?
        .keys()
        .map(|p| std::fs::symlink_metadata(source.join(p)).unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert_eq!(report.bytes, expected_bytes);
    assert_eq!(report.bytes_new + report.bytes_reused, report.bytes);
    assert!(
        report.bytes_reused >= 1024 * 1024,
        "the repeated 1 MiB file is stored once: {report:?}"
    );

    let target = env.dir().join("restored");
    let out = logged_output(&mut mover(
        &env,
        &[
            "restore",
            "--repository",
            &repository,
            "--snapshot",
            &report.snapshot_id[..12],
            "--target",
            target.to_str().unwrap(),
        ],
    ))
    .await;
    let restored: RestoreReport = last_json_line(&out);
    assert_eq!(restored.snapshot_id, report.snapshot_id);
    assert_eq!(restored.bytes, report.bytes);
    assert_same_tree(&source, &target)
}

#[tokio::test]
async fn given_local_repository_when_backed_up_and_restored_then_tree_matches_and_no_plaintext_is_stored()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let source = env.dir().join("volume");
    write_tree(&source, 2 * 1024, 2)?;
    let location = RepositoryLocation::parse(&format!("local:{}", env.dir().join("repo").display()))?;
    let spec = SnapshotSpec::new("shop", "data", ["backup=1"])?;

    let repository = Repository::open_or_init(&location, &S3Credentials::default(), &password())?;
    let report = repository.backup(&source, &spec)?;
    let target = env.dir().join("restored");
    Repository::open(&location, &S3Credentials::default(), &password())?
        .restore(&report.snapshot_id, &target)?;

    assert_same_tree(&source, &target)?;
    let mut files = 0;
    for path in describe_tree(&env.dir().join("repo"))?.keys() {
        let path = env.dir().join("repo").join(path);
        if path.is_file() {
            files += 1;
            let bytes = std::fs::read(&path)?;
            assert!(
                !contains(&bytes, MARKER.as_bytes()),
                "{} holds the marker",
                path.display()
            );
            assert!(
                !contains(&bytes, b"segment-0"),
                "{} holds a file name",
                path.display()
            );
        }
    }
    assert!(files >= 4, "config, key, index, pack and snapshot files: {files}");
    Ok(())
}

#[tokio::test]
async fn given_an_empty_volume_when_backed_up_and_restored_then_the_target_is_an_empty_directory()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let source = env.dir().join("volume");
    std::fs::create_dir_all(&source)?;
    let location = RepositoryLocation::parse(&format!("local:{}", env.dir().join("repo").display()))?;
    let spec = SnapshotSpec::new("shop", "data-db-0", ["backup=1"])?;
    let report = Repository::open_or_init(&location, &S3Credentials::default(), &password())?
        .backup(&source, &spec)?;
    let target = env.dir().join("restored");

    let restored = Repository::open(&location, &S3Credentials::default(), &password())?
        .restore(&report.snapshot_id, &target)?;

    assert_eq!((restored.files, restored.bytes), (0, 0));
    assert!(target.is_dir() && std::fs::read_dir(&target)?.next().is_none());
    Ok(())
}

#[tokio::test]
async fn given_unchanged_volume_when_backed_up_again_then_repository_grows_less_than_one_percent()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let source = env.dir().join("volume");
    write_tree(&source, 8 * 1024, 3)?;
    let location = s3_repository(&env);
    let copy = env.dir().join("clone");
    // rustic_core blocks (and its S3 backend runs its own runtime): off the test's async thread.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let spec = SnapshotSpec::new("shop", "data-db-0", ["backup=1"])?;
        let repository = Repository::open_or_init(&location, &s3_credentials(), &password())?;

        let first = repository.backup(&source, &spec)?;
        let after_first = repository.stats()?;
        // A fresh copy of the volume (as a PVC cloned from a snapshot is): new inodes and ctimes, same
        // content and mtimes.
        let status = Command::new("cp").arg("-a").arg(&source).arg(&copy).status()?;
        ensure!(status.success(), "cp -a failed");
        let second = repository.backup(&copy, &SnapshotSpec::new("shop", "data-db-0", ["backup=2"])?)?;
        let after_second = repository.stats()?;

        let growth = after_second.total_bytes - after_first.total_bytes;
        assert!(
            growth * 100 < first.bytes,
            "second backup added {growth} bytes for {} bytes of data",
            first.bytes
        );
        assert!(second.bytes >= first.bytes - 1024, "{first:?} {second:?}");
        assert_eq!(second.bytes_new, 0, "{second:?}");
        assert_eq!(second.bytes_reused, second.bytes);
        assert_eq!(after_second.snapshots, 2);
        let snapshots = repository.snapshots()?;
        assert_eq!(snapshots.len(), 2);
        assert_eq!(snapshots[1].tags, vec!["backup=2".to_string()]);
        assert_eq!(snapshots[1].paths, vec!["/data-db-0".to_string()]);
        assert_eq!(snapshots[1].host, "shop");
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test]
async fn given_s3_repository_when_stock_restic_reads_it_then_it_lists_snapshots_and_restores_one()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let source = env.dir().join("volume");
    write_tree(&source, 2 * 1024, 4)?;
    let location = s3_repository(&env);
    let (first, second) = {
        let (location, source) = (location.clone(), source.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let repository = Repository::open_or_init(&location, &s3_credentials(), &password())?;
            let first = repository.backup(&source, &SnapshotSpec::new("shop", "data-db-0", ["backup=1"])?)?;
            let second =
                repository.backup(&source, &SnapshotSpec::new("shop", "data-db-1", ["backup=1"])?)?;
            Ok((first, second))
        })
        .await??
    };

    let listed = restic(&location, &["snapshots", "--json"])?;
    let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout)?;
    let ids: Vec<&str> = snapshots.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids.len(), 2, "{snapshots:#?}");
    assert!(ids.contains(&first.snapshot_id.as_str()));
    assert!(ids.contains(&second.snapshot_id.as_str()));

    let target = env.dir().join("restic-restore");
    restic(
        &location,
        &[
            "restore",
            &second.snapshot_id,
            "--target",
            target.to_str().unwrap(),
        ],
    )?;
    assert_same_tree(&source, &target.join("data-db-1"))
}

#[tokio::test]
async fn given_forgotten_snapshot_when_pruned_then_its_data_goes_and_the_kept_one_still_restores()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let location = RepositoryLocation::parse(&env.dir().join("repo").display().to_string())?;
    let repository = Repository::open_or_init(&location, &S3Credentials::default(), &password())?;
    let kept_source = env.dir().join("kept");
    let gone_source = env.dir().join("gone");
    write_tree(&kept_source, 1024, 5)?;
    write_tree(&gone_source, 4 * 1024, 6)?;
    let kept = repository.backup(&kept_source, &SnapshotSpec::new("a", "kept", ["k=v"])?)?;
    let gone = repository.backup(&gone_source, &SnapshotSpec::new("a", "gone", ["k=v"])?)?;
    let before = repository.stats()?;

    repository.forget(std::slice::from_ref(&gone.snapshot_id))?;
    repository.prune(PruneMode::Instant)?;
    let after = repository.stats()?;

    assert!(
        before.pack_bytes - after.pack_bytes >= gone.bytes_new / 2,
        "prune freed {} of {} bytes (packs {} -> {})",
        before.pack_bytes - after.pack_bytes,
        gone.bytes_new,
        before.packs,
        after.packs
    );
    assert_eq!(after.snapshots, 1);
    let target = env.dir().join("restored");
    repository.restore(&kept.snapshot_id, &target)?;
    assert_same_tree(&kept_source, &target)?;
    let error = repository.restore(&gone.snapshot_id, &target).unwrap_err();
    assert!(error.to_string().contains("no snapshot"), "{error}");
    Ok(())
}

#[tokio::test]
async fn given_wrong_password_or_bad_repository_when_mover_runs_then_exit_1_says_what_failed()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let source = env.dir().join("volume");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("f"), b"x")?;
    let repo = env.dir().join("repo");
    let repo = repo.to_str().unwrap();
    let out = logged_output(&mut mover(
        &env,
        &[
            "backup",
            "--repository",
            repo,
            "--source",
            source.to_str().unwrap(),
        ],
    ))
    .await;
    let report: MoverReport = last_json_line(&out);

    let wrong = logged_output(
        mover(
            &env,
            &[
                "restore",
                "--repository",
                repo,
                "--snapshot",
                &report.snapshot_id,
                "--target",
                env.dir().join("t").to_str().unwrap(),
            ],
        )
        .env("FREEZEFRAME_REPOSITORY_PASSWORD", "not the password"),
    )
    .await;
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("error: repository"), "{stderr}");
    assert!(stderr.contains("password opens none of its keys"), "{stderr}");

    let unsupported = logged_output(&mut mover(
        &env,
        &[
            "backup",
            "--repository",
            "sftp:host:/srv",
            "--source",
            source.to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(unsupported.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unsupported.stderr);
    assert!(stderr.contains("\"sftp\" backend is not supported"), "{stderr}");

    let no_password = logged_output(
        mover(
            &env,
            &[
                "backup",
                "--repository",
                repo,
                "--source",
                source.to_str().unwrap(),
            ],
        )
        .env_remove("FREEZEFRAME_REPOSITORY_PASSWORD"),
    )
    .await;
    assert_eq!(no_password.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&no_password.stderr).contains("FREEZEFRAME_REPOSITORY_PASSWORD"),
        "the error says how to give the password"
    );
    Ok(())
}
