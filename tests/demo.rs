//! `freezeframe demo`, the README's first command: it must run start to finish on a fresh machine.

#[tokio::test]
async fn given_fresh_directory_when_demo_runs_then_backup_is_committed_to_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
        .arg("demo")
        .arg("--dir")
        .arg(dir.path())
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("db-0: orders of db-0"), "{stdout}");
    assert!(stdout.contains("Completed"), "{stdout}");
    assert!(
        stdout.contains("demo-shop-restored/db-1: orders of db-1"),
        "volume data restored: {stdout}"
    );
    let policy_dir = dir.path().join("backups/backups/demo-shop");
    let backups: Vec<_> = std::fs::read_dir(&policy_dir).unwrap().collect();
    assert_eq!(backups.len(), 1, "one backup under {}", policy_dir.display());
    let backup = backups[0].as_ref().unwrap().path();
    assert!(backup.join("manifest.json").exists() && backup.join("resources.tar.zst").exists());
}
