//! One policy's turn, shared by `freezeframe backup` and `freezeframe run`: `backup.started` →
//! back up (selection, freeze plan, hook engine, then [`crate::backup::backup`]) → prune by the policy's
//! retention → report (Events, annotations, webhooks), and the exit code they make together.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::Invocation;
use crate::backup::{Context, Freeze, Manifest, Request};
use crate::exit::Outcome;
use crate::export::{ExportOptions, Selection};
use crate::hooks::{Engine, KubeExecutor};
use crate::policy::{Backend, Policy};
use crate::report::Reporter;
use crate::retention::PruneReport;
use crate::store::{Layout, ObjectStore};

/// What one policy's backup came to: the backup, the prune after it, the exit code they make.
#[derive(Debug)]
pub struct PolicyRun {
    /// The committed manifest; `None` = the backup failed before writing one.
    pub manifest: Option<Manifest>,
    /// The prune after the backup; `None` = not attempted (no manifest, `--no-prune`, or the run was
    /// stopped).
    pub prune: Option<Result<PruneReport, crate::retention::Error>>,
    /// The backup's exit code, made at least PartiallyFailed by a prune failure (never by reporting).
    pub outcome: Outcome,
}

/// One policy's turn, shared by `freezeframe backup` and `freezeframe run`: `backup.started` → open the
/// store → back up (manifest committed) → prune by the policy's retention (when `prune`, and not after
/// SIGTERM) → report (Events, annotations, `backup.*` and `prune.*` webhooks). Prints the backup's
/// summary, the prune's and every failure; never fails itself: a backup that wrote no manifest is
/// `Failed`.
pub async fn back_up_prune_report(
    invocation: &Invocation,
    policy: &Policy,
    backend: &Backend,
    cancel: &CancellationToken,
    reporter: &Reporter,
    prune: bool,
) -> PolicyRun {
    let started_at = reporter.backup_started(policy).await;
    let backed_up = async {
        let client = invocation.client().await?;
        let (store, layout) = invocation.open_store(backend).await?;
        // Refused before anything is written: a bucket that cannot lock what the storage asks to lock.
        store.check_ready().await?;
        // Preflight: a store that cannot be written fails the run before any pod is frozen.
        crate::store::probe_writable(store.as_ref(), &layout)
            .await
            .context("preflight: the store cannot be written; nothing was frozen")?;
        let m = back_up_policy(invocation, policy, store.as_ref(), &layout, cancel).await?;
        anyhow::Ok((m, store, layout, client))
    }
    .await;
    let (m, store, layout, client) = match backed_up {
        Ok(done) => done,
        Err(e) => {
            eprintln!(
                "error: {}: backup failed before a manifest was written: {e:#}",
                policy.name
            );
            reporter.backup_error(policy, started_at, &format!("{e:#}")).await;
            return PolicyRun {
                manifest: None,
                prune: None,
                outcome: Outcome::Failed,
            };
        }
    };
    print!("{}", super::backup::summary(&m));
    let mut outcome = m.status.outcome();
    // Commit manifest → prune (not after SIGTERM: stop as soon as possible) → report.
    let pruned = if prune && !cancel.is_cancelled() {
        let pruned = super::prune::after_backup(&client, invocation, policy, store.as_ref(), &layout).await;
        outcome = crate::exit::worst([outcome, super::prune::report_after_backup(&policy.name, &pruned)]);
        Some(pruned)
    } else {
        None
    };
    reporter.backup_finished(policy, &m).await;
    if let Some(pruned) = &pruned {
        reporter.prune_finished(policy, pruned).await;
    }
    PolicyRun {
        manifest: Some(m),
        prune: pruned,
        outcome,
    }
}

/// One backup of `policy` into `store` with the real cluster and wall clock: selection, freeze plan and
/// hook engine, then [`crate::backup::backup`]. `cancel` is the process's [`cancel_on_signals`] token.
pub async fn back_up_policy(
    invocation: &Invocation,
    policy: &Policy,
    store: &dyn ObjectStore,
    layout: &Layout,
    cancel: &CancellationToken,
) -> anyhow::Result<Manifest> {
    let client = &invocation.client().await?;
    let selection = Selection::for_policy(client, policy).await?;
    let mut freeze = Freeze::for_policy(client, policy).await?;
    let settings = invocation.settings()?;
    freeze.moves =
        crate::offsite::MovePlan::for_policy(policy, settings.namespace.as_deref(), &settings.image)?;
    let ctx = Context {
        client: client.clone(),
        store,
        layout,
        clock: invocation.clock(),
        // The policy's storage says whether artifacts are encrypted, even when `--storage` overrides
        // where they go: an override never turns encryption off.
        sealing: crate::store::crypt::Sealing::for_storage(policy.storage.encryption.as_ref())?,
    };
    let request = Request {
        policy: &policy.name,
        selection: &selection,
        options: &ExportOptions {
            limits: invocation.settings()?.client,
            ..ExportOptions::default()
        },
        freeze: &freeze,
    };
    let engine = Engine::new(KubeExecutor::new(client.clone()));
    Ok(crate::backup::backup(&ctx, &engine, request, cancel).await?)
}

/// A token cancelled by the first SIGTERM or SIGINT (the Job deleted, `activeDeadlineSeconds`, Ctrl-C):
/// work in progress stops, the thaw runs, the manifest says `Failed`. Later signals are logged and
/// ignored, so a second Ctrl-C cannot leave the application frozen (each thaw action has its timeout).
pub fn cancel_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if cancel.is_cancelled() {
                tracing::warn!(signal = name, "already stopping: the thaw runs to its end");
            } else {
                tracing::warn!(
                    signal = name,
                    "stopping work in progress; thawing, then exiting non-zero"
                );
                cancel.cancel();
            }
        }
    });
    Ok(token)
}
