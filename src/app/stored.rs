//! `freezeframe list` (what is stored) and `freezeframe describe` (one stored backup in full, with
//! `--contents` its verified archive's objects). Both find the store the same way ([`StoreArgs`]:
//! `--storage`, else the policy's storage) and print JSON/YAML the same way.

use std::fmt::Write as _;

use super::backup::max_freeze;
use super::{Invocation, UsageError};

use crate::backup::{DumpStatus, StoredBackup};
use crate::config::{ClientArgs, PolicySourceArgs};
use crate::exit::Outcome;
use crate::export::RestoreAction;
use crate::store::{self, BackupId, Layout, ObjectStore, layout};

/// Output format of `freezeframe list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON array.
    Json,
    /// YAML sequence.
    Yaml,
}

/// Output format of `freezeframe describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DescribeFormat {
    /// Sections for people.
    Text,
    /// One JSON object.
    Json,
    /// One YAML document.
    Yaml,
}

/// Which store `list` and `describe` read: `--storage`, else the storage of `--policy`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Only this policy's backups; without --storage, its storage is the one read.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Read this store instead of the policy's: file:///path or s3://bucket[/prefix][?region=..&endpoint=..&forcePathStyle=true].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
}

/// Arguments of `freezeframe list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// Arguments of `freezeframe describe`.
#[derive(Debug, Clone, clap::Args)]
pub struct DescribeArgs {
    /// The backup id (`20261123T120000Z`).
    #[arg(value_name = "BACKUP-ID", value_parser = parse_backup_id)]
    pub backup: BackupId,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: DescribeFormat,
    /// Also verify the archive (every artifact's sha256) and list the objects it holds; an encrypted
    /// backup needs its identities (`--identity-file`, else the policy storage's `identitySecret`).
    #[arg(long)]
    pub contents: bool,
    /// age identities for `--contents` of an encrypted backup.
    #[arg(long, value_name = "PATH", requires = "contents")]
    pub identity_file: Option<std::path::PathBuf>,
}

fn parse_backup_id(text: &str) -> Result<BackupId, String> {
    BackupId::parse(text).ok_or_else(|| format!("{text:?} is not a backup id like 20261123T120000Z"))
}

/// Open the store `args` name: `--storage`, else the storage of `--policy` (with its
/// `credentialsSecret`, read from the cluster; with `--storage` the default AWS chain applies).
async fn open_store(args: &StoreArgs) -> anyhow::Result<(std::sync::Arc<dyn ObjectStore>, Layout)> {
    if let Some(url) = &args.storage {
        return Ok(store::open(&store::backend_from_url(url)?, None).await);
    }
    let Some(name) = &args.policy else {
        return Err(
            UsageError::new("give --storage URL, or --policy NAME to read the policy's storage").into(),
        );
    };
    let invocation = Invocation::from_process(&args.source, &ClientArgs::default());
    let policy = invocation.policy(name).await?;
    invocation.open_store(&policy.storage.backend).await
}

/// Print `value` as pretty JSON or as YAML.
fn print_structured(value: &impl serde::Serialize, yaml: bool) -> anyhow::Result<()> {
    if yaml {
        print!("{}", serde_yaml::to_string(value)?);
    } else {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(())
}

/// A stored backup as `list -o json|yaml` and `describe -o json|yaml` show it.
fn stored_value(b: &StoredBackup) -> serde_json::Value {
    serde_json::json!({
        "policy": b.policy, "backupId": b.id.as_str(), "size": b.size,
        "complete": b.manifest.is_some(),
        "status": b.manifest.as_ref().map_or_else(|| "Incomplete".to_string(), |m| format!("{:?}", m.status)),
        "stored": b.stored, "manifest": b.manifest,
    })
}

/// Run `freezeframe backup`; `cancel` is the process's [`super::turn::cancel_on_signals`] token.
/// Render stored backups as a table. Pure.
pub fn table(backups: &[StoredBackup]) -> String {
    let mut out = String::from("POLICY\tBACKUP\tSTATUS\tOBJECTS\tBYTES\n");
    for b in backups {
        let (status, objects) = match &b.manifest {
            Some(m) => (
                format!("{:?}", m.status),
                m.objects.values().map(|k| k.count).sum::<u64>().to_string(),
            ),
            None => ("Incomplete".to_string(), "-".to_string()),
        };
        writeln!(out, "{}\t{}\t{status}\t{objects}\t{}", b.policy, b.id, b.size).ok();
    }
    out
}

/// Run `freezeframe list`.
pub async fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let (store, layout) = open_store(&args.store).await?;
    let backups = crate::backup::list(store.as_ref(), &layout, args.store.policy.as_deref()).await?;
    match args.output {
        Format::Table => print!("{}", table(&backups)),
        Format::Json | Format::Yaml => {
            let rows: Vec<serde_json::Value> = backups.iter().map(stored_value).collect();
            print_structured(&rows, args.output == Format::Yaml)?;
        }
    }
    Ok(Outcome::Success)
}

/// Run `freezeframe describe`: exit 0 when the backup was found (whatever its status), 1 when not, 2
/// when the id is ambiguous (stored for several policies: pass `--policy`).
pub async fn describe(args: DescribeArgs) -> anyhow::Result<Outcome> {
    let (store, layout) = open_store(&args.store).await?;
    let found = crate::backup::find(
        store.as_ref(),
        &layout,
        args.store.policy.as_deref(),
        &args.backup,
    )
    .await?;
    let backup = match found.as_slice() {
        [one] => one,
        [] => {
            eprintln!("error: no backup {} in {}", args.backup, store.location());
            return Ok(Outcome::Failed);
        }
        many => {
            eprintln!(
                "error: backup {} is stored for several policies ({}): pass --policy",
                args.backup,
                many.iter()
                    .map(|b| b.policy.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(Outcome::InvalidInput);
        }
    };
    let contents = if args.contents {
        Some(contents(&args, store.as_ref(), &layout, &backup.policy).await?)
    } else {
        None
    };
    match args.output {
        DescribeFormat::Text => {
            print!("{}", describe_text(backup));
            if let Some(paths) = &contents {
                println!("Contents:    {} objects (archive verified)", paths.len());
                for p in paths {
                    println!("  {p}");
                }
            }
        }
        DescribeFormat::Json | DescribeFormat::Yaml => {
            let mut value = stored_value(backup);
            if let Some(paths) = contents {
                value["contents"] = serde_json::json!(paths);
            }
            print_structured(&value, args.output == DescribeFormat::Yaml)?;
        }
    }
    Ok(Outcome::Success)
}

/// The archive paths of the backup's objects, after verifying every artifact (decrypting with the
/// identities of `--identity-file` or the policy storage's `identitySecret` when it is encrypted).
async fn contents(
    args: &DescribeArgs,
    store: &dyn ObjectStore,
    layout: &Layout,
    policy: &str,
) -> anyhow::Result<Vec<String>> {
    use crate::store::crypt::Opening;
    let invocation = Invocation::from_process(&args.store.source, &ClientArgs::default());
    let mut located = crate::restore::source::locate(
        store,
        layout,
        Some(policy),
        &crate::restore::BackupRef::Id(args.backup.clone()),
    )
    .await?;
    // The identitySecret is read only for an encrypted backup.
    let policy = match &args.store.policy {
        Some(name) if args.identity_file.is_none() && located.manifest.encryption.is_some() => {
            Some(invocation.policy(name).await?)
        }
        _ => None,
    };
    let identities = invocation
        .decryption_identities(args.identity_file.as_deref(), policy)
        .await?;
    located.opening = Opening::for_backup(
        &format!("{}/{}", located.policy, located.id),
        located.manifest.encryption.as_ref(),
        identities.as_ref(),
    )?;
    let extracted = crate::restore::source::verify_and_extract(store, &located).await?;
    Ok(extracted.paths.clone())
}

/// One claim's moved data: repository snapshot, size, dedup (new vs reused bytes) and duration.
fn moved_line(c: &crate::backup::MovedClaim) -> String {
    let m = &c.mover;
    let claim = format!("{}/{}", c.namespace, c.pvc);
    match m.status {
        crate::snapshot::MoveStatus::Succeeded => {
            let reused = if m.bytes_new + m.bytes_reused > 0 {
                100.0 * m.bytes_reused as f64 / (m.bytes_new + m.bytes_reused) as f64
            } else {
                0.0
            };
            format!(
                "{claim}: snapshot {}, {} files, {} bytes ({} new, {} reused: {reused:.1}% deduplicated), {:.1}s",
                m.snapshot_id.as_deref().unwrap_or("-"),
                m.files,
                m.bytes,
                m.bytes_new,
                m.bytes_reused,
                m.duration_seconds
            )
        }
        crate::snapshot::MoveStatus::Failed => format!(
            "{claim}: Failed (mover Job {}): {}",
            m.job,
            m.error.as_deref().unwrap_or("-")
        ),
    }
}

/// Render one stored backup for people: status, scope, times, counts, artifacts, hooks, dumps, volumes,
/// problems; an incomplete one as such with what it has stored so far. Pure.
pub fn describe_text(b: &StoredBackup) -> String {
    let mut out = format!("Backup:      {}/{}\n", b.policy, b.id);
    let Some(m) = &b.manifest else {
        writeln!(
            out,
            "Status:      Incomplete (no {}: still running, or it crashed before committing)",
            layout::MANIFEST
        )
        .ok();
        writeln!(out, "Started:     {} (from the id)", b.id.time().to_rfc3339()).ok();
        writeln!(out, "Artifacts stored so far:").ok();
        for (path, size) in &b.stored {
            writeln!(out, "  {path}\t{size} bytes").ok();
        }
        if b.stored.is_empty() {
            writeln!(out, "  (none)").ok();
        }
        return out;
    };
    writeln!(out, "Status:      {:?}", m.status).ok();
    writeln!(out, "Policy:      {}", m.policy).ok();
    writeln!(out, "Namespaces:  {}", m.namespaces.join(", ")).ok();
    if let Some(selector) = &m.selector {
        let selector = serde_json::to_string(selector).unwrap_or_default();
        writeln!(out, "Selector:    {selector}").ok();
    }
    writeln!(out, "Cluster:     kube-system uid {}", m.cluster.kube_system_uid).ok();
    writeln!(out, "Started:     {}", m.started_at.to_rfc3339()).ok();
    let took = (m.finished_at - m.started_at).num_milliseconds();
    writeln!(out, "Finished:    {} ({took} ms)", m.finished_at.to_rfc3339()).ok();
    writeln!(
        out,
        "Written by:  freezeframe {} (manifest format {})",
        m.freezeframe_version, m.format_version
    )
    .ok();
    for (title, kinds) in [("Objects", &m.objects), ("Cluster objects", &m.cluster_objects)] {
        let total: u64 = kinds.values().map(|k| k.count).sum();
        writeln!(out, "{title}: {total} in {} kinds", kinds.len()).ok();
        for (id, k) in kinds {
            let skip = match k.restore {
                RestoreAction::Apply => "",
                RestoreAction::Skip => "\t(skipped on restore)",
            };
            writeln!(out, "  {id}\t{}{skip}", k.count).ok();
        }
    }
    writeln!(out, "Artifacts:").ok();
    for (path, a) in &m.artifacts {
        writeln!(out, "  {path}\t{} bytes\tsha256 {}", a.size, a.sha256).ok();
    }
    if let Some(h) = &m.hooks {
        let window = h.freeze_window_millis.map_or_else(
            || "nothing frozen".to_string(),
            |ms| format!("frozen for {ms} ms"),
        ) + &max_freeze(h);
        writeln!(
            out,
            "Hooks:       {:?}, {window}, {} steps",
            h.status,
            h.steps.len()
        )
        .ok();
        for f in &h.failures {
            let i = &f.invocation;
            writeln!(
                out,
                "  failed {} {} on {}/{} [{}]: {} ({})",
                f.stage, f.step, i.namespace, i.pod, i.container, i.result, f.command
            )
            .ok();
            if let Some(line) = f.stderr_tail.lines().last() {
                writeln!(out, "    stderr: {line}").ok();
            }
        }
        for s in &h.skipped {
            writeln!(out, "  skipped {s}").ok();
        }
    }
    if !m.dumps.is_empty() {
        writeln!(out, "Dumps:").ok();
    }
    for d in &m.dumps {
        let frozen = if d.while_frozen { ", while frozen" } else { "" };
        match d.status {
            DumpStatus::Succeeded => writeln!(
                out,
                "  {}: Succeeded{frozen}, {} bytes sha256 {} -> {}",
                d.describe(),
                d.size.unwrap_or(0),
                d.sha256.as_deref().unwrap_or("-"),
                d.artifact
            ),
            DumpStatus::Failed => writeln!(
                out,
                "  {}: Failed{frozen}: {}",
                d.describe(),
                d.error.as_deref().unwrap_or("-")
            ),
        }
        .ok();
    }
    if let Some(v) = &m.volumes {
        writeln!(out, "Volumes:     {} snapshots", v.snapshots.len()).ok();
        for s in &v.snapshots {
            writeln!(out, "  {s}").ok();
        }
        if let Some(note) = &v.note {
            writeln!(out, "  note: {note}").ok();
        }
        if !v.moved.is_empty() {
            writeln!(out, "Moved data:  {} claims into the repository", v.moved.len()).ok();
        }
        for c in &v.moved {
            writeln!(out, "  {}", moved_line(c)).ok();
        }
    }
    for p in &m.problems {
        writeln!(out, "Problem:     {p}").ok();
    }
    out
}
