//! Export memory benchmark: N ConfigMaps with 2 KiB payloads in one namespace of an in-process sandbox,
//! exported with the real export (paged lists, tar+zstd, streamed upload) into a filesystem store; prints
//! how much the process's peak RSS grew during each export. Flat growth across N = memory independent
//! of the namespace's size (the sandbox itself holds every object, so only the export is measured:
//! the peak is reset via `/proc/self/clear_refs` just before it starts).
//!
//! Each namespace is exported as stored without encryption (`plain`) and encrypted to an age X25519
//! recipient (`age`, as with a storage's `encryption.recipients`), alternately for
//! `FREEZEFRAME_BENCH_ROUNDS` rounds (default 3); the fastest of each is printed, and the cost of
//! encryption as the ratio of the two.
//!
//! `FREEZEFRAME_BENCH_PAYLOAD=random` gives every object its own pseudo-random hex payload (the archive
//! then compresses only about 2:1, so encryption has real bytes to work on) instead of the same `x…`.
//!
//! Run: `cargo bench --bench export_memory --profile dev` (quick) or `cargo bench --bench export_memory`.
//! `FREEZEFRAME_BENCH_SIZES=1000,10000,50000` (the default; the first export also pays one-time allocations) chooses the object counts. Linux only.

use std::time::Instant;

use sha2::Digest;

use freezeframe::export::{ExportOptions, ResourceFilter, Selection, export};
use freezeframe::store::crypt::{Recipients, Sealing};
use freezeframe::store::fs::FsStore;
use freezeframe_sandbox::cluster::WriteOptions;
use freezeframe_sandbox::{Sandbox, SandboxOptions};
use serde_json::json;

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/self/status"))
}

/// Reset `VmHWM` to the current RSS (Linux >= 4.0).
fn reset_peak() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    freezeframe::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("FREEZEFRAME_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000]);
    let sb = Sandbox::start(SandboxOptions::default()).await?;
    let cluster = sb.cluster().clone();
    let client = sb.client().await?;
    let ns_rt = cluster
        .find_type("", "v1", "namespaces")
        .expect("namespaces served");
    let cm_rt = cluster
        .find_type("", "v1", "configmaps")
        .expect("configmaps served");
    let opts = WriteOptions::default();
    let dir = tempfile::tempdir()?;
    let store = FsStore::new(dir.path());
    let random = std::env::var("FREEZEFRAME_BENCH_PAYLOAD").is_ok_and(|p| p == "random");
    let payload = |i: usize| {
        if !random {
            return "x".repeat(2048);
        }
        // 32 chained sha256 digests in hex: 2048 characters no other object shares.
        let mut digest = sha2::Sha256::digest(i.to_le_bytes());
        let mut text = String::with_capacity(2048);
        for _ in 0..32 {
            text.push_str(&hex::encode(digest));
            digest = sha2::Sha256::digest(digest);
        }
        text
    };
    let rounds: usize = std::env::var("FREEZEFRAME_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let encrypted = Sealing::Age(std::sync::Arc::new(Recipients::parse(&[recipient])?));
    println!(
        "objects\tpayload MiB\tload s\tmode\texport s (best of {rounds})\tarchive KiB\tRSS before MiB\tpeak growth MiB"
    );
    for n in sizes {
        let ns = format!("bench-{n}");
        let t = Instant::now();
        cluster
            .create(&ns_rt, "", json!({"metadata": {"name": ns}}), &opts)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for i in 0..n {
            let obj = json!({"metadata": {"name": format!("cm-{i:06}"), "labels": {"app": "bench"}},
                             "data": {"payload": payload(i)}});
            cluster
                .create(&cm_rt, &ns, obj, &opts)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let load = t.elapsed();
        let selection = Selection {
            namespaces: vec![ns.clone()],
            selector: None,
            filter: ResourceFilter::default_policy(),
        };
        let mut best = [f64::MAX; 2];
        for round in 0..rounds {
            for (m, (mode, sealing)) in [("plain", &Sealing::Plain), ("age", &encrypted)]
                .into_iter()
                .enumerate()
            {
                let key = format!("backups/bench/{ns}/{round}-{mode}/resources.tar.zst");
                reset_peak()?;
                let before = status_kib("VmRSS")?;
                let t = Instant::now();
                let report = export(
                    &client,
                    &selection,
                    &ExportOptions::default(),
                    &store,
                    &key,
                    sealing,
                )
                .await?;
                let took = t.elapsed().as_secs_f64();
                let peak = status_kib("VmHWM")?;
                let exported = report.kinds["configmaps"].count;
                assert!(exported >= n as u64, "{ns}: {exported} of {n} exported");
                best[m] = best[m].min(took);
                if round + 1 == rounds {
                    println!(
                        "{n}\t{:.0}\t{:.1}\t{mode}\t{:.2}\t{}\t{:.0}\t{:.1}",
                        (n * 2048) as f64 / 1048576.0,
                        load.as_secs_f64(),
                        best[m],
                        report.archive.size / 1024,
                        before as f64 / 1024.0,
                        peak.saturating_sub(before) as f64 / 1024.0
                    );
                }
            }
        }
        println!(
            "{n}\tencryption cost: age export took {:+.1}% vs plain",
            (best[1] / best[0] - 1.0) * 100.0
        );
    }
    Ok(())
}
