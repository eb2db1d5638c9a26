//! `freezeframe demo`, the README's first command: it must run start to finish on a fresh machine and
//! show every part of the story: two backups (the second prunes the first and its snapshots), a restore
//! of the latest with its volume data and its dump replayed, and signed webhook deliveries.

/// The backup ids in the order `backup` printed them (`demo-shop/<id>: Completed, …`).
fn backup_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("demo-shop/")?.split_once(": Completed"))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// The lines of demo step `title` (after its `[n] title…` header, up to the next blank line).
fn step_lines<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|l| !(l.starts_with('[') && l.contains(title)))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

#[tokio::test]
async fn given_fresh_directory_when_demo_runs_then_it_backs_up_prunes_restores_replays_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
        .arg("demo")
        .arg("--dir")
        .arg(dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("FREEZEFRAME_NAMESPACE")
        .env_remove("FREEZEFRAME_POLICY_CONFIGMAP")
        .env_remove("FREEZEFRAME_POLICY_FILE")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("not delivered"),
        "every webhook delivered: {stderr}"
    );

    // Two backups; the second one's retention (keepLast: 1) pruned the first, snapshots included.
    let ids = backup_ids(&stdout);
    let [first, second] = ids.as_slice() else {
        panic!("two Completed backups: {ids:?}\n{stdout}");
    };
    assert!(
        stdout.contains(&format!("pruned {first} (Completed; kept by no rule)")),
        "{stdout}"
    );
    let policy_dir = dir.path().join("backups/backups/demo-shop");
    let stored: Vec<String> = std::fs::read_dir(&policy_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        stored,
        [second.as_str()],
        "only the second backup is left in {}",
        policy_dir.display()
    );
    let backup = policy_dir.join(second);
    assert!(backup.join("manifest.json").exists() && backup.join("resources.tar.zst").exists());
    assert!(
        stdout.contains(&format!("VolumeSnapshots in demo-shop: 3 of backup {second}\n")),
        "the first backup's snapshots are gone: {stdout}"
    );

    // The restore brought back the latest data and replayed the dump taken from db-0 into the restored db-0.
    for pod in ["db-0", "db-1", "db-2"] {
        assert!(
            stdout.contains(&format!(
                "VOLUME demo-shop-restored/data-{pod} <- repository snapshot"
            )),
            "claims filled from the moved data: {stdout}"
        );
    }
    assert!(
        stdout.contains("demo-shop-restored/db-1: order 1 of db-1; order 2 of db-1\n"),
        "volume data of the latest backup restored: {stdout}"
    );
    assert!(
        stdout.contains(
            "DUMP orders demo-shop/db-0 -> demo-shop-restored/db-0: Succeeded, 32 bytes, exit code 0"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "demo-shop-restored/db-0: the dump's restoreCommand wrote var/lib/db/orders.replayed: \
order 1 of db-0; order 2 of db-0\n"
        ),
        "dump replayed: {stdout}"
    );
    assert!(
        !stdout.contains("demo-shop-restored/db-1: the dump's"),
        "{stdout}"
    );

    // The receiver got every event of both backups, the prune and the restore, each signed with the key.
    let deliveries = step_lines(&stdout, "What the webhook receiver got");
    let events: Vec<(&str, &str)> = deliveries
        .iter()
        .map(|l| {
            let mut words = l.split_whitespace();
            (words.next().unwrap(), words.next().unwrap())
        })
        .collect();
    assert_eq!(
        events,
        [
            ("backup.started", "Running"),
            ("backup.succeeded", "Completed"),
            ("backup.started", "Running"),
            ("backup.succeeded", "Completed"),
            ("prune.completed", "Completed"),
            ("restore.started", "Running"),
            ("restore.succeeded", "Completed"),
        ],
        "{stdout}"
    );
    assert!(
        deliveries.iter().all(|l| l.ends_with("signature valid")),
        "{deliveries:#?}"
    );
    assert!(
        deliveries[1].contains(&format!("demo-shop/{first}")),
        "{deliveries:#?}"
    );
    assert!(
        deliveries[6].contains(&format!("demo-shop/{second}")),
        "{deliveries:#?}"
    );
}
