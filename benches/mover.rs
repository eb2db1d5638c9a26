//! Mover benchmark: `freezeframe mover backup` against stock `restic backup` on the same directory tree
//! (1 GiB by default, mixed file sizes, part random and part compressible), each into its own local
//! repository: a first run into an empty repository, then an unchanged second run. Prints wall time,
//! throughput and each process's peak RSS (from `wait4`'s rusage), and the two ratios the README
//! records: first-run throughput against restic's, and first-run time over the unchanged second run's.
//!
//! Run: `cargo bench --bench mover` (release binary; needs `restic` on the PATH, Debian's package).
//! `FREEZEFRAME_BENCH_MIB=256` makes a smaller tree. Linux only.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rand::{Rng, SeedableRng};

const PASSWORD: &str = "benchmark password";

/// One finished run of a tool.
struct Run {
    wall: Duration,
    peak_rss_mib: f64,
}

/// Spawn `command`, wait for it with `wait4` and return its wall time and peak RSS.
fn measure(mut command: Command) -> anyhow::Result<Run> {
    let started = Instant::now();
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let pid = i32::try_from(child.id())?;
    // Read stderr on a thread so a chatty child cannot block on a full pipe.
    let mut stderr = child.stderr.expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let mut status = 0;
    // SAFETY: plain syscall on our own child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    let stderr = reader.join().unwrap_or_default();
    ensure!(waited == pid, "wait4 failed: {}", std::io::Error::last_os_error());
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{command:?} failed ({status}):\n{stderr}"
    );
    Ok(Run {
        wall,
        // ru_maxrss is in KiB on Linux.
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

/// About `mib` MiB in nested directories: many small files (4-64 KiB), some medium (256 KiB-4 MiB)
/// and a few large (16-64 MiB) ones; 70 % random bytes, 30 % compressible text.
fn write_tree(root: &Path, mib: u64) -> anyhow::Result<(u64, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let total = mib * 1024 * 1024;
    let (mut written, mut files) = (0u64, 0u64);
    let text: Vec<u8> = (0..)
        .map(|i| format!("{i:08} INFO request served path=/api/v1/items status=200\n"))
        .take(20_000)
        .collect::<String>()
        .into_bytes();
    while written < total {
        let bucket = rng.random_range(0..100);
        let size: u64 = if bucket < 80 {
            rng.random_range(4 * 1024..64 * 1024)
        } else if bucket < 98 {
            rng.random_range(256 * 1024..4 * 1024 * 1024)
        } else {
            rng.random_range(16 * 1024 * 1024..64 * 1024 * 1024)
        };
        let size = size.min(total - written);
        let dir = root.join(format!("d{:02}/e{:02}", files % 37, files % 11));
        std::fs::create_dir_all(&dir)?;
        let mut data = vec![0u8; usize::try_from(size)?];
        if rng.random_range(0..10) < 7 {
            rng.fill(&mut data[..]);
        } else {
            for (i, b) in data.iter_mut().enumerate() {
                *b = text[i % text.len()];
            }
        }
        std::fs::write(dir.join(format!("f{files:06}")), &data)?;
        written += size;
        files += 1;
    }
    Ok((written, files))
}

fn freezeframe(repo: &Path, tree: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freezeframe"));
    command
        .args(["mover", "backup", "--repository"])
        .arg(repo)
        .arg("--source")
        .arg(tree)
        .args(["--host", "bench", "--path-label", "data"])
        .env("FREEZEFRAME_REPOSITORY_PASSWORD", PASSWORD)
        .env("FREEZEFRAME_LOG", "warn");
    command
}

fn restic(repo: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("restic");
    command
        .arg("-r")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD);
    command
}

fn restic_backup(repo: &Path, cache: &Path, tree: &Path) -> Command {
    let mut command = restic(repo, cache, &["backup", "--host", "bench", "-q"]);
    command.arg(tree);
    command
}

fn du(path: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("FREEZEFRAME_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::Builder::new().prefix("ff-bench-mover-").tempdir()?;
    let tree = dir.path().join("tree");
    let t = Instant::now();
    let (bytes, files) = write_tree(&tree, mib)?;
    let mib_f = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "tree: {mib_f:.0} MiB in {files} files, written in {:.1} s; 2 cores; page cache warm for both tools",
        t.elapsed().as_secs_f64()
    );
    let restic_version = Command::new("restic").arg("version").output()?;
    println!(
        "restic: {}",
        String::from_utf8_lossy(&restic_version.stdout).trim()
    );

    let ff_repo = dir.path().join("ff-repo");
    let restic_repo = dir.path().join("restic-repo");
    let cache = dir.path().join("restic-cache");
    measure(restic(&restic_repo, &cache, &["init"]))?;

    // Warm the page cache so neither tool pays the first read of the tree.
    measure({
        let mut c = Command::new("tar");
        c.arg("cf").arg("/dev/null").arg(&tree);
        c
    })?;

    let ff_first = measure(freezeframe(&ff_repo, &tree))?;
    let restic_first = measure(restic_backup(&restic_repo, &cache, &tree))?;
    let ff_second = measure(freezeframe(&ff_repo, &tree))?;
    let restic_second = measure(restic_backup(&restic_repo, &cache, &tree))?;

    let rate = |run: &Run| mib_f / run.wall.as_secs_f64();
    println!();
    println!("| tool | first run | MiB/s | peak RSS | unchanged second run | peak RSS | repository |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, first, second, repo) in [
        ("freezeframe mover backup", &ff_first, &ff_second, &ff_repo),
        ("restic 0.14 backup", &restic_first, &restic_second, &restic_repo),
    ] {
        println!(
            "| {name} | {:.1} s | {:.0} | {:.0} MiB | {:.2} s | {:.0} MiB | {:.0} MiB |",
            first.wall.as_secs_f64(),
            rate(first),
            first.peak_rss_mib,
            second.wall.as_secs_f64(),
            second.peak_rss_mib,
            du(repo)? as f64 / (1024.0 * 1024.0)
        );
    }
    println!();
    println!(
        "first-run throughput vs restic: {:.2}x (target >= 1.0x)",
        rate(&ff_first) / rate(&restic_first)
    );
    println!(
        "unchanged second run: {:.1}x faster than the first (target >= 5x); restic: {:.1}x",
        ff_first.wall.as_secs_f64() / ff_second.wall.as_secs_f64(),
        restic_first.wall.as_secs_f64() / restic_second.wall.as_secs_f64()
    );
    Ok(())
}
