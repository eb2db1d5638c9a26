//! `freezeframe mover backup|restore`: what a mover Job runs. Logs go to stderr; on success the last
//! stdout line is one JSON object ([`MoverReport`] / [`RestoreReport`]) the backup run reads back.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::exit::Outcome;
use crate::mover::{
    MoverReport, Password, Repository, RepositoryLocation, RestoreReport, S3Credentials, SnapshotSpec,
};

/// The variable holding the repository password.
pub const PASSWORD_ENV: &str = "FREEZEFRAME_REPOSITORY_PASSWORD";

/// `freezeframe mover ...`.
#[derive(Debug, Args)]
pub struct MoverArgs {
    #[command(subcommand)]
    pub command: MoverCommand,
}

/// The mover's commands.
#[derive(Debug, Subcommand)]
pub enum MoverCommand {
    /// Back a directory up into the repository as one snapshot (creates the repository if absent).
    #[command(after_help = BACKUP_HELP)]
    Backup(BackupArgs),
    /// Restore one snapshot of the repository into a directory.
    #[command(after_help = RESTORE_HELP)]
    Restore(RestoreArgs),
}

/// Where the repository is and how to open it.
#[derive(Debug, Args)]
pub struct RepositoryArgs {
    /// The repository, in restic's syntax: s3:http(s)://host[:port]/bucket/prefix, /abs/path or
    /// local:/abs/path. S3 credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN and AWS_REGION.
    #[arg(long, value_name = "REPO")]
    pub repository: String,
    /// Read the password from this file's first line instead of FREEZEFRAME_REPOSITORY_PASSWORD.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// `freezeframe mover backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// The directory to back up (e.g. the read-only mount of a PVC cloned from a VolumeSnapshot).
    #[arg(long, value_name = "DIR")]
    pub source: PathBuf,
    /// A key=value tag on the snapshot (repeatable), e.g. --tag policy=shop --tag backup=<id>.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// The snapshot's host; with --path-label it picks the parent snapshot (use the namespace).
    #[arg(long, value_name = "NAME", default_value = "freezeframe")]
    pub host: String,
    /// The snapshot records the directory as /<NAME>, whatever its mount point (use the PVC name).
    #[arg(long, value_name = "NAME", default_value = "data")]
    pub path_label: String,
}

/// `freezeframe mover restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// The snapshot id (or a unique prefix of it), as `mover backup` printed it.
    #[arg(long, value_name = "ID")]
    pub snapshot: String,
    /// The directory to fill (created if missing; existing files of the snapshot are overwritten,
    /// other files are left alone).
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
}

const BACKUP_HELP: &str = "\
The snapshot records the directory as /<path-label> with the given host and tags. The next backup with
the same host and path label uses it as its parent: files whose size and modification time are
unchanged are not read again, and content the repository already holds (from any volume or backup) is
not stored again. The repository is restic's format 2 (encrypted, compressed): stock restic 0.14+
reads it (`RESTIC_PASSWORD=... restic -r <REPO> snapshots`).

Output: progress and logs on stderr; on success the last line of stdout is one JSON object:
  {\"snapshotId\":\"<64 hex>\",\"files\":N,\"dirs\":N,\"bytes\":N,\"bytesNew\":N,\"bytesReused\":N,\"durationSeconds\":F}

Exit status: 0 the snapshot was written, 1 it was not (stderr's `error: ...` line says what failed).

Examples:
  export FREEZEFRAME_REPOSITORY_PASSWORD=...  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  freezeframe mover backup --repository s3:http://127.0.0.1:8333/backups/prod/repository \\
      --source /mnt/volume --host shop --path-label data-db-0 --tag policy=shop --tag backup=20261123T120000Z

  # A local repository, the password from a file
  freezeframe mover backup --repository /var/lib/repo --password-file /etc/repo-pass --source ./data";

const RESTORE_HELP: &str = "\
Restores the snapshot's recorded directory (/<path-label>) so that its contents become DIR's contents:
file modes, symlinks, empty files, nested directories and times; ownership (numeric ids) where the
process may set it.

Output: logs on stderr; on success the last line of stdout is one JSON object:
  {\"snapshotId\":\"<64 hex>\",\"files\":N,\"bytes\":N,\"durationSeconds\":F}

Exit status: 0 restored, 1 not (stderr's `error: ...` line says what failed).

Examples:
  FREEZEFRAME_REPOSITORY_PASSWORD=... freezeframe mover restore \\
      --repository s3:http://127.0.0.1:8333/backups/prod/repository --snapshot 3f2a9c1e --target /mnt/volume

  # The same with stock restic (the snapshot's files are under /<path-label> in it)
  RESTIC_PASSWORD=... restic -r s3:http://127.0.0.1:8333/backups/prod/repository restore 3f2a9c1e --target /tmp/out";

/// Run `freezeframe mover ...`.
pub async fn run(args: MoverArgs) -> anyhow::Result<Outcome> {
    match args.command {
        MoverCommand::Backup(args) => {
            let report = tokio::task::spawn_blocking(move || backup(&args)).await??;
            print_last_line(&serde_json::to_string(&report)?)?;
        }
        MoverCommand::Restore(args) => {
            let report = tokio::task::spawn_blocking(move || restore(&args)).await??;
            print_last_line(&serde_json::to_string(&report)?)?;
        }
    }
    Ok(Outcome::Success)
}

fn backup(args: &BackupArgs) -> anyhow::Result<MoverReport> {
    let spec = SnapshotSpec::new(&args.host, &args.path_label, args.tags.iter().cloned())?;
    let (location, password) = resolve(&args.repository)?;
    let repository = Repository::open_or_init(&location, &S3Credentials::from_env(), &password)?;
    Ok(repository.backup(&args.source, &spec)?)
}

fn restore(args: &RestoreArgs) -> anyhow::Result<RestoreReport> {
    let (location, password) = resolve(&args.repository)?;
    let repository = Repository::open(&location, &S3Credentials::from_env(), &password)?;
    Ok(repository.restore(&args.snapshot, &args.target)?)
}

fn resolve(args: &RepositoryArgs) -> anyhow::Result<(RepositoryLocation, Password)> {
    let location = RepositoryLocation::parse(&args.repository)?;
    let password = match &args.password_file {
        Some(path) => {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("reading --password-file {}", path.display()))?;
            Password::from_file_content(&content)?
        }
        None => match std::env::var(PASSWORD_ENV) {
            Ok(text) => Password::new(text)?,
            Err(_) => anyhow::bail!("no repository password: set {PASSWORD_ENV} or pass --password-file"),
        },
    };
    Ok((location, password))
}

fn print_last_line(json: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json}")
        .and_then(|()| stdout.flush())
        .context("writing the result to stdout")
}
