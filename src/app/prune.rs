//! `freezeframe prune` (apply a policy's retention now, or show with `--dry-run` what it would do), and
//! the prune step `freezeframe run` and `freezeframe backup` take after committing a manifest.

use std::fmt::Write as _;

use anyhow::Context as _;

use super::repository::{Moved, StorageRepository};
use super::{Invocation, UsageError};
use crate::config::{ClientArgs, PolicySourceArgs};
use crate::exit::Outcome;
use crate::policy::{Backend, Policy, Storage};
use crate::retention::cluster::KubeSnapshots;
use crate::retention::repository::{MovedData, RepositoryPrune, prune_if_due};
use crate::retention::{Error, Mode, PruneReport, Target};
use crate::store::{self, Layout, ObjectStore};

/// Output format of `freezeframe prune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per backup: keep or prune, and why.
    Table,
    /// A JSON array with one report per policy.
    Json,
}

/// Arguments of `freezeframe prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Prune this policy's backups by its `retention` rules (repeatable).
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub policy: Vec<String>,
    /// Prune every valid policy.
    #[arg(long)]
    pub all: bool,
    /// Print what would be kept and pruned, and why; delete nothing. With --policy-file and a
    /// filesystem or plain S3 store, no cluster is needed.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Prune this store instead of the policy's: file:///path or s3://bucket[/prefix][?region=..&endpoint=..&forcePathStyle=true].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `--help` text after the options.
pub const PRUNE_HELP: &str = "\
A backup is kept if any rule of the policy's `retention` keeps it (restic/k8up semantics);
the reason printed for it is on the right:
  keepLast: N        the N newest good backups                                  last N
  keepHourly|Daily|Weekly|Monthly|Yearly: N
                     the newest good backup of each of the last N UTC hours,    daily 2026-11-20
                     days, ISO weeks, months, years that have one
  keepWithin: D      good backups started less than D before the newest one    within 7d
Good = Completed or PartiallyFailed. Whatever the rules say:
  - the newest Completed backup is kept (else the newest PartiallyFailed one):  newest good backup
  - Failed backups count toward no rule; kept while no good backup is newer, then pruned
  - a backup without manifest.json is kept for 1d after it started (a run in progress), then pruned

A pruned backup is deleted in this order: manifest.json first (it leaves `list` and `restore` at
once, so a crash leaves an incomplete backup, never a half one), then its VolumeGroupSnapshots and
VolumeSnapshots (from volumes.json and by label), then its other objects, volumes.json last.
`freezeframe run` and `freezeframe backup` (unless --no-prune) prune the policy after each backup.

Exit status: 0 done (or nothing to prune), 3 some backup could not be pruned (the others were),
1 a policy's backups could not be listed (nothing of it was pruned), 2 unknown or invalid policy.

Examples:
  # What would go, and why, without deleting anything
  freezeframe prune --policy shop --dry-run

  # Prune every policy in the ConfigMap now, as JSON for scripts
  freezeframe prune --all -o json | jq '.[] | {policy, pruned: [.pruned[].backupId]}'

  # Try new rules from a file against the real store before applying them
  freezeframe prune --policy shop --policy-file new-policies.yaml --dry-run";

/// Prune `policy` right after one of its backups was committed: every pruned backup is deleted, its
/// snapshots through the cluster and its moved data in the storage's repository, whose own prune then
/// runs when due (`repository.pruneEvery`). The manifest just written is never changed by this.
pub async fn after_backup(
    client: &kube::Client,
    invocation: &Invocation,
    policy: &Policy,
    store: &dyn ObjectStore,
    layout: &Layout,
) -> Result<PruneReport, Error> {
    let snapshots = KubeSnapshots::new(client.clone()).await.map_err(Error::Cluster)?;
    let repository = open_repository(invocation, &policy.storage).await;
    let target = Target {
        store,
        layout,
        repository: repository.as_ref().map(|r| r as &dyn MovedData),
    };
    let report = crate::retention::prune(
        target,
        &policy.name,
        &policy.retention,
        invocation.now(),
        Mode::Delete(&snapshots),
    )
    .await;
    if let (Some(repository), Some(settings)) = (&repository, &policy.storage.repository) {
        prune_repository(store, layout, repository, settings.prune_every, invocation.now()).await;
    }
    report
}

/// The storage's repository, when it has one; `None` (with a warning) when its Secrets cannot be read:
/// pruned backups with moved data then keep their record and a later prune retries.
async fn open_repository(invocation: &Invocation, storage: &Storage) -> Option<Moved> {
    match StorageRepository::for_storage(invocation, storage).await {
        Ok(repository) => repository.map(Moved),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the storage's repository cannot be opened: moved data of pruned backups is not forgotten");
            None
        }
    }
}

/// The repository's own prune when due; returns the line that says what happened.
async fn prune_repository(
    store: &dyn ObjectStore,
    layout: &Layout,
    repository: &Moved,
    every: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let location = repository.0.location();
    let line = match prune_if_due(store, layout, repository, every, now).await {
        Ok(RepositoryPrune::Pruned) => format!("repository {location}: pruned"),
        Ok(RepositoryPrune::NotDue { last }) => format!(
            "repository {location}: last pruned {}, next prune after {}",
            last.to_rfc3339(),
            (last + chrono::Duration::from_std(every).unwrap_or_default()).to_rfc3339()
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the repository's prune failed; the next prune retries");
            format!("repository {location}: prune failed (the next prune retries): {e}")
        }
    };
    tracing::info!("{line}");
    line
}

/// Print what pruning after a backup did (pruned backups on stdout, failures on stderr) and return the
/// outcome it adds to the run: PartiallyFailed when anything could not be pruned.
pub fn report_after_backup(policy: &str, result: &Result<PruneReport, Error>) -> Outcome {
    match result {
        Ok(report) => {
            print!("{}", after_backup_summary(report));
            for f in &report.failed {
                for e in &f.errors {
                    eprintln!("error: {policy}: pruning backup {} failed: {e}", f.backup_id);
                }
            }
            report.outcome()
        }
        Err(e) => {
            eprintln!(
                "error: {policy}: retention was not applied: {}",
                crate::retention::prune::chain(e)
            );
            Outcome::PartiallyFailed
        }
    }
}

/// The lines `run` and `backup` print after pruning: a count, then one line per pruned or failed
/// backup. Pure.
pub fn after_backup_summary(r: &PruneReport) -> String {
    let mut out = format!(
        "  retention: kept {}, pruned {}, failed {}\n",
        r.kept.len(),
        r.pruned.len(),
        r.failed.len()
    );
    for p in &r.pruned {
        writeln!(
            out,
            "    pruned {} ({}; {}): {} snapshot objects, {} store objects deleted",
            p.backup_id,
            p.status,
            p.reason,
            p.snapshots.len(),
            p.objects
        )
        .ok();
    }
    for p in &r.failed {
        writeln!(
            out,
            "    prune FAILED for {} ({}; {}): {}",
            p.backup_id,
            p.status,
            p.reason,
            p.errors.join("; ")
        )
        .ok();
    }
    for p in &r.locked {
        writeln!(
            out,
            "    not pruned yet {} ({}): {}",
            p.backup_id,
            p.reason,
            p.notes.join("; ")
        )
        .ok();
    }
    out
}

/// One line per backup of every report, oldest first per policy, in aligned columns. Pure.
pub fn table(reports: &[PruneReport]) -> String {
    let mut rows = vec![[
        "POLICY".to_string(),
        "BACKUP".into(),
        "STATUS".into(),
        "ACTION".into(),
        "WHY".into(),
    ]];
    let mut details: Vec<Vec<String>> = vec![Vec::new()];
    for r in reports {
        let mut lines: Vec<([String; 5], Vec<String>)> = Vec::new();
        for k in &r.kept {
            let row = [
                r.policy.clone(),
                k.backup_id.clone(),
                k.status.clone(),
                "keep".into(),
                k.reasons.join(", "),
            ];
            lines.push((row, Vec::new()));
        }
        let action = if r.dry_run { "would prune" } else { "pruned" };
        for (p, action) in r
            .pruned
            .iter()
            .map(|p| (p, action))
            .chain(r.failed.iter().map(|p| (p, "PRUNE FAILED")))
            .chain(r.locked.iter().map(|p| (p, "locked")))
        {
            let row = [
                r.policy.clone(),
                p.backup_id.clone(),
                p.status.clone(),
                action.into(),
                p.reason.clone(),
            ];
            let mut more: Vec<String> = Vec::new();
            if !r.dry_run {
                more.push(format!(
                    "deleted {} snapshot objects, {} store objects",
                    p.snapshots.len(),
                    p.objects
                ));
            }
            more.extend(p.notes.iter().map(|n| format!("note: {n}")));
            more.extend(p.errors.iter().map(|e| format!("error: {e}")));
            lines.push((row, more));
        }
        lines.sort_by(|a, b| a.0[1].cmp(&b.0[1]));
        for (row, more) in lines {
            rows.push(row);
            details.push(more);
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (row, more) in rows.iter().zip(details) {
        for (c, width) in widths.iter().enumerate() {
            write!(out, "{:<width$}  ", row[c]).ok();
        }
        writeln!(out, "{}", row[4]).ok();
        for line in more {
            writeln!(out, "    {line}").ok();
        }
    }
    out
}

/// Run `freezeframe prune`.
pub async fn run(args: PruneArgs) -> anyhow::Result<Outcome> {
    let invocation = Invocation::from_process(&args.source, &ClientArgs::default());
    let set = invocation.policy_set().await?;
    let unknown: Vec<&String> = args.policy.iter().filter(|n| set.policy(n).is_none()).collect();
    if !unknown.is_empty() {
        if !set.is_valid() {
            eprint!("{}", super::validate::report(set, invocation.now()).0);
        }
        let valid: Vec<&String> = set.policies.iter().map(|p| &p.name).collect();
        let lines: Vec<String> = unknown
            .iter()
            .map(|n| format!("--policy {n}: no valid policy of that name; valid policies: {valid:?}"))
            .collect();
        return Err(UsageError::new(lines.join("\nerror: ")).into());
    }
    let policies: Vec<&Policy> = if args.all {
        set.policies.iter().collect()
    } else {
        args.policy.iter().filter_map(|n| set.policy(n)).collect()
    };
    let needs_cluster = |backend: &Backend| {
        !args.dry_run || matches!(backend, Backend::S3(s3) if s3.credentials_secret.is_some())
    };
    let override_backend = args.storage.as_deref().map(store::backend_from_url).transpose()?;
    let backend_of = |p: &Policy| {
        override_backend
            .clone()
            .unwrap_or_else(|| p.storage.backend.clone())
    };
    let client = if policies.iter().any(|p| needs_cluster(&backend_of(p))) {
        Some(invocation.client().await?)
    } else {
        None
    };
    let snapshots = match (&client, args.dry_run) {
        (Some(c), false) => Some(
            KubeSnapshots::new(c.clone())
                .await
                .context("discovering the snapshot APIs to delete pruned backups' snapshots")?,
        ),
        _ => None,
    };
    let mode = match &snapshots {
        Some(s) => Mode::Delete(s),
        None => Mode::DryRun,
    };

    // A real prune is reported like the one after a backup (prune.* webhooks); a dry run is not.
    let reporter = match (&client, args.dry_run) {
        (Some(c), false) => Some(crate::report::Reporter::for_settings(
            c.clone(),
            invocation.settings()?,
        )),
        _ => None,
    };

    let mut reports = Vec::new();
    let mut outcomes = Vec::new();
    let mut repository_lines: Vec<String> = Vec::new();
    let mut repositories_pruned: Vec<String> = Vec::new();
    for policy in policies {
        let backend = backend_of(policy);
        let (store, layout) = match &client {
            Some(_) => invocation.open_store(&backend).await?,
            None => store::open(&backend, None).await,
        };
        let storage = Storage {
            backend: backend.clone(),
            ..policy.storage.clone()
        };
        let repository = match &mode {
            Mode::Delete(_) => open_repository(&invocation, &storage).await,
            Mode::DryRun => None,
        };
        let target = Target {
            store: store.as_ref(),
            layout: &layout,
            repository: repository.as_ref().map(|r| r as &dyn MovedData),
        };
        let result =
            crate::retention::prune(target, &policy.name, &policy.retention, invocation.now(), mode).await;
        if let Some(reporter) = &reporter {
            reporter.prune_finished(policy, &result).await;
        }
        // Each storage's repository once, after its policies' backups were forgotten.
        if let (Some(repository), Some(settings)) = (&repository, &storage.repository) {
            let location = store.location();
            if !repositories_pruned.contains(&location) {
                repositories_pruned.push(location);
                repository_lines.push(
                    prune_repository(
                        store.as_ref(),
                        &layout,
                        repository,
                        settings.prune_every,
                        invocation.now(),
                    )
                    .await,
                );
            }
        }
        match result {
            Ok(report) => {
                outcomes.push(report.outcome());
                reports.push(report);
            }
            Err(e) => {
                eprintln!("error: {:#}", anyhow::Error::from(e));
                outcomes.push(Outcome::Failed);
            }
        }
    }
    match args.output {
        Format::Table => {
            print!("{}", table(&reports));
            for line in &repository_lines {
                println!("{line}");
            }
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    if args.all && !set.is_valid() {
        return Err(UsageError::new(format!(
            "invalid policies were not pruned: {}; `freezeframe validate` says why",
            set.invalid_policies.join(", ")
        ))
        .into());
    }
    Ok(crate::exit::worst(outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::prune::{KeptBackup, PrunedBackup};

    fn report(dry_run: bool) -> PruneReport {
        PruneReport {
            policy: "shop".into(),
            dry_run,
            kept: vec![KeptBackup {
                backup_id: "20261122T140000Z".into(),
                status: "Completed".into(),
                reasons: vec!["last 2".into(), "newest good backup".into()],
            }],
            pruned: vec![PrunedBackup {
                backup_id: "20261116T020000Z".into(),
                status: "Completed".into(),
                reason: "kept by no rule".into(),
                snapshots: vec!["VolumeSnapshot shop/data-db-0".into()],
                objects: 4,
                notes: vec![],
                errors: vec![],
            }],
            failed: vec![PrunedBackup {
                backup_id: "20261120T020000Z".into(),
                status: "Failed".into(),
                reason: "failed, and a newer good backup exists".into(),
                snapshots: vec![],
                objects: 1,
                notes: vec![],
                errors: vec!["deleting VolumeSnapshot shop/x: forbidden".into()],
            }],
            locked: vec![],
        }
    }

    #[test]
    fn given_a_report_when_tabled_then_rows_are_oldest_first_with_action_and_why() {
        let text = table(&[report(false)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("POLICY  BACKUP"), "{text}");
        assert!(
            lines[1].contains("20261116T020000Z") && lines[1].contains("pruned"),
            "{text}"
        );
        assert_eq!(lines[2].trim(), "deleted 1 snapshot objects, 4 store objects");
        assert!(lines[3].contains("PRUNE FAILED"), "{text}");
        assert_eq!(
            lines[5].trim(),
            "error: deleting VolumeSnapshot shop/x: forbidden"
        );
        assert!(
            lines[6].contains("keep") && lines[6].ends_with("last 2, newest good backup"),
            "{text}"
        );
        let dry = table(&[report(true)]);
        assert!(dry.contains("would prune"), "{dry}");
        assert!(!dry.contains("deleted"), "{dry}");
    }

    #[test]
    fn given_failures_when_summarised_after_backup_then_counts_and_errors_are_shown() {
        let r = report(false);
        let text = after_backup_summary(&r);
        assert!(
            text.starts_with("  retention: kept 1, pruned 1, failed 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "pruned 20261116T020000Z (Completed; kept by no rule): 1 snapshot objects, 4 store objects deleted"
            ),
            "{text}"
        );
        assert!(text.contains("prune FAILED for 20261120T020000Z"), "{text}");
        assert_eq!(r.outcome(), Outcome::PartiallyFailed);
    }
}
