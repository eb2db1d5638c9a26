//! `freezeframe backup`: one backup of a policy now (freeze, dumps, export, manifest), then the policy's
//! retention unless `--no-prune`, then the report — Events, annotations, webhooks, see
//! [`crate::report`]; exit 0 Completed, 3 PartiallyFailed or some old backup could not be pruned,
//! 1 Failed or cancelled by SIGTERM/SIGINT, whatever the webhooks answered.

use std::fmt::Write as _;

use tokio_util::sync::CancellationToken;

use super::Invocation;

use crate::backup::{DumpStatus, Manifest};
use crate::config::{ClientArgs, PolicySourceArgs};
use crate::exit::Outcome;
use crate::report::Reporter;
use crate::store;

/// Arguments of `freezeframe backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The policy to back up now.
    #[arg(long, value_name = "NAME")]
    pub policy: String,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Write to this store instead of the policy's: file:///path or s3://bucket[/prefix][?region=..&endpoint=..&forcePathStyle=true].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Do not apply the policy's retention after the backup (by default the policy's old backups are
    /// pruned right after the manifest is written, as `freezeframe run` does; see `freezeframe prune`).
    #[arg(long)]
    pub no_prune: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}
pub async fn backup(args: BackupArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let invocation = Invocation::from_process(&args.source, &args.client);
    let policy = invocation.policy(&args.policy).await?;
    let backend = match &args.storage {
        Some(url) => store::backend_from_url(url)?,
        None => policy.storage.backend.clone(),
    };
    let reporter = Reporter::for_settings(invocation.client().await?, invocation.settings()?);
    let ran =
        super::turn::back_up_prune_report(&invocation, policy, &backend, &cancel, &reporter, !args.no_prune)
            .await;
    Ok(ran.outcome)
}

/// What `freezeframe backup` prints: one line per backup, then the freeze, and every problem. Pure.
pub fn summary(m: &Manifest) -> String {
    let objects: u64 = m.objects.values().map(|k| k.count).sum();
    let mut out = format!(
        "{}/{}: {:?}, {objects} objects in {} kinds, {} bytes\n",
        m.policy,
        m.backup_id,
        m.status,
        m.objects.len(),
        m.artifacts.values().map(|a| a.size).sum::<u64>()
    );
    if let Some(h) = &m.hooks {
        let window = h.freeze_window_millis.map_or_else(
            || "nothing frozen".to_string(),
            |ms| format!("frozen for {ms} ms"),
        ) + &max_freeze(h);
        writeln!(out, "  hooks: {:?}, {window}", h.status).ok();
    }
    for d in &m.dumps {
        if let (DumpStatus::Succeeded, Some(size)) = (d.status, d.size) {
            writeln!(
                out,
                "  {}: {size} bytes sha256 {}",
                d.describe(),
                d.sha256.as_deref().unwrap_or("-")
            )
            .ok();
        }
    }
    for p in &m.problems {
        writeln!(out, "  problem: {p}").ok();
    }
    out
}

/// ` (maxFreeze 60s)`, or nothing for manifests written before the budget existed.
pub(super) fn max_freeze(h: &crate::backup::HooksRecord) -> String {
    h.max_freeze_millis.map_or_else(String::new, |ms| {
        format!(
            " (maxFreeze {})",
            crate::hooks::budget::seconds(std::time::Duration::from_millis(ms))
        )
    })
}
