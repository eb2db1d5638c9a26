//! One backup of one policy, as a linear list of named steps (each a module; this one only sequences
//! them and adds context to errors):
//!
//! ```text
//! identity → allocate id → freeze (pre hooks, all pods at once)
//!   → [snapshot volumes] + dumps marked whileFrozen → thaw (post hooks, always)
//!   → dumps after the thaw → export resources (streamed) → verify → retain snapshots (deletionPolicy
//!   Retain, so they outlive their namespace) → manifest.json LAST → status
//! ```
//!
//! Outcomes:
//! - An aborting pre hook or cancellation (SIGTERM/SIGINT): nothing is captured (no snapshot, dump or
//!   export), the thaw runs, and a manifest with status `Failed` records the hook results (who failed,
//!   exit code, output tails). Choice (issue 5's "a backup without a manifest is incomplete"): a missing
//!   manifest means "running or crashed"; a run that ended knowing it failed says so, with its reasons.
//!   Restore and retention treat only `Completed`/`PartiallyFailed` manifests as backups.
//! - A failed dump, an `onError: continue` hook failure or a failed post action: `PartiallyFailed`.
//! - The freeze budget (`rules.maxFreeze`) ran out: the group is thawed at once, what was cut off stores
//!   nothing; `Failed` when it ran out in the pre steps or nothing was captured inside the freeze, else
//!   `PartiallyFailed` (see [`record_budget`] and docs/policy.md "The freeze budget").
//! - An error of the export or the store: no manifest at all (the artifact could not be committed), as
//!   before hooks existed; the error is returned.

pub mod dump;
pub mod manifest;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::export::{self, ExportOptions, Selection};
use crate::hooks::{Budget, Engine, GroupReport, GroupStatus, KubeExecutor, Plan, PodExecutor};
use crate::policy::{Policy, SnapshotMode, Volumes};
use crate::store::crypt::Sealing;
use crate::store::{self, BackupId, BackupKeys, Layout, ObjectStore, layout};
pub use dump::{DumpPlan, DumpTarget};
pub use manifest::{
    ClusterIdentity, DumpRecord, DumpStatus, FORMAT_VERSION, HooksRecord, HooksStatus, Manifest,
    ManifestError, MovedClaim, Status, VolumesRecord,
};

/// Errors of a backup run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the cluster identity (`kube-system` uid) failed.
    #[error("cannot read the kube-system namespace (cluster identity)")]
    ClusterIdentity(#[source] Box<kube::Error>),
    /// Choosing the pods and containers of the hooks failed (before any pod was touched).
    #[error("planning the freeze hooks")]
    Hooks(#[source] crate::hooks::plan::Error),
    /// Choosing the pods and containers of the dumps failed (before any pod was touched).
    #[error("planning the dumps")]
    Dumps(#[source] dump::Error),
    /// The export failed.
    #[error("exporting resources")]
    Export(#[source] export::Error),
    /// Preparing the volume snapshots failed before the freeze (discovery, listing claims, labels).
    #[error("cannot prepare the volume snapshots")]
    Snapshots(#[source] crate::snapshot::Error),
    /// A store operation failed.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// The store error.
        #[source]
        source: store::Error,
    },
    /// A manifest could not be read.
    #[error("backup {key}")]
    Manifest {
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
}

/// Result of backup operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn store_error(what: impl Into<String>) -> impl FnOnce(store::Error) -> Error {
    let what = what.into();
    move |source| Error::Store { what, source }
}

/// Everything a backup run talks to.
pub struct Context<'a> {
    /// The cluster.
    pub client: kube::Client,
    /// Where backups go.
    pub store: &'a dyn ObjectStore,
    /// Key layout of that store.
    pub layout: &'a Layout,
    /// Time source.
    pub clock: &'a dyn Clock,
    /// How artifacts are written (encrypted to the storage's recipients, or as produced).
    pub sealing: Sealing,
}

/// The cluster's identity: the uid of `kube-system`.
pub async fn cluster_identity(client: &kube::Client) -> Result<ClusterIdentity> {
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns = api
        .get("kube-system")
        .await
        .map_err(|source| Error::ClusterIdentity(Box::new(source)))?;
    Ok(ClusterIdentity {
        kube_system_uid: ns.metadata.uid.unwrap_or_default(),
    })
}

/// What is captured while the pod group is frozen: the hook plan, the dumps, the volume settings.
/// Planned before the run starts, so a wrong selector or container fails before any pod is touched.
#[derive(Debug, Clone, Default)]
pub struct Freeze {
    /// Pre and post hooks over their pods.
    pub plan: Plan,
    /// Dump invocations.
    pub dumps: DumpPlan,
    /// Volume snapshot settings; `None` = no snapshots.
    pub volumes: Option<Volumes>,
    /// The movers that copy the snapshots into the repository after the thaw; `None` = no `moveData`.
    pub moves: Option<crate::offsite::MovePlan>,
}

impl Freeze {
    /// Select the pods of `policy`'s hooks and dumps.
    pub async fn for_policy(client: &kube::Client, policy: &Policy) -> Result<Freeze> {
        Ok(Freeze {
            plan: crate::hooks::plan::plan(client, policy)
                .await
                .map_err(Error::Hooks)?,
            dumps: dump::plan(client, policy).await.map_err(Error::Dumps)?,
            volumes: (policy.volumes.snapshot != SnapshotMode::None).then(|| policy.volumes.clone()),
            moves: None,
        })
    }
}

/// One backup to run.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Policy name (in keys and the manifest).
    pub policy: &'a str,
    /// Resources to export.
    pub selection: &'a Selection,
    /// Export tuning.
    pub options: &'a ExportOptions,
    /// What is captured inside the freeze.
    pub freeze: &'a Freeze,
}

/// Export-only backup of `policy` covering `selection` (no hooks, dumps or snapshots); returns the
/// committed manifest.
pub async fn run(
    ctx: &Context<'_>,
    policy: &str,
    selection: &Selection,
    options: &ExportOptions,
) -> Result<Manifest> {
    let request = Request {
        policy,
        selection,
        options,
        freeze: &Freeze::default(),
    };
    let engine = Engine::new(KubeExecutor::new(ctx.client.clone()));
    backup(ctx, &engine, request, &CancellationToken::new()).await
}

/// Run one backup: the steps of the module documentation, in order. Returns the committed manifest,
/// whose status says how it went (`Failed` after an aborted or cancelled freeze); `Err` = no manifest.
pub async fn backup<E: PodExecutor>(
    ctx: &Context<'_>,
    engine: &Engine<E>,
    req: Request<'_>,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let started_at = ctx.clock.now();
    let cluster = cluster_identity(&ctx.client).await?;
    let id = BackupId::allocate(ctx.store, ctx.layout, req.policy, started_at)
        .await
        .map_err(store_error("choosing a backup id"))?;
    let keys = ctx.layout.backup(req.policy, &id);
    tracing::info!(policy = req.policy, backup = %id, store = %ctx.store.location(), "backup started");
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        freezeframe_version: env!("CARGO_PKG_VERSION").to_string(),
        backup_id: id.to_string(),
        policy: req.policy.to_string(),
        cluster,
        namespaces: req.selection.namespaces.clone(),
        selector: req.selection.selector.clone(),
        started_at,
        finished_at: started_at,
        status: Status::Completed,
        objects: BTreeMap::new(),
        cluster_objects: BTreeMap::new(),
        artifacts: BTreeMap::new(),
        problems: Vec::new(),
        hooks: None,
        dumps: Vec::new(),
        volumes: None,
        encryption: ctx.sealing.record(),
    };

    // Volume snapshots are prepared before the freeze (claims, classes, group labels), so the freeze
    // only has to create them and wait for the cut.
    let prepared = match req.freeze.volumes.as_ref() {
        Some(volumes) => Some(
            crate::snapshot::prepare(
                &ctx.client,
                req.selection,
                crate::snapshot::Request {
                    policy: req.policy,
                    backup_id: id.as_str(),
                    volumes,
                },
            )
            .await
            .map_err(Error::Snapshots)?,
        ),
        None => None,
    };

    // Freeze → snapshot cut + frozen dumps → thaw (the engine thaws whatever happens inside).
    let (hooks, captured) = engine
        .with_freeze(&req.freeze.plan, cancel, |budget| {
            let (prepared, keys) = (&prepared, &keys);
            async move {
                let cut = match prepared {
                    Some(p) => Some(p.take(&budget).await),
                    None => None,
                };
                let dumps = dump::run_all(
                    engine.executor(),
                    ctx.store,
                    &ctx.sealing,
                    keys,
                    req.freeze.dumps.phase(true),
                    &budget,
                )
                .await;
                (cut, dumps)
            }
        })
        .await;
    record_hooks(&mut manifest, &hooks, &req.freeze.dumps);
    let cut = match captured {
        Some((cut, dumps)) => {
            manifest.dumps = dumps;
            cut
        }
        None => None,
    };
    // After the thaw: wait for readyToUse outside the freeze, record volumes.json.
    let mut volumes = match prepared {
        Some(p) => Some(p.complete(cut).await),
        None => None,
    };
    let over_budget = record_budget(&mut manifest, &hooks, volumes.as_ref());
    // After the thaw and the cut, never inside the freeze: the movers copy the ready snapshots into the
    // repository (only when the freeze went through: an aborted freeze captured nothing).
    let moved = match (&req.freeze.moves, volumes.as_mut()) {
        (Some(plan), Some(outcome))
            if matches!(
                hooks.status,
                GroupStatus::Succeeded | GroupStatus::PartiallyFailed
            ) && !over_budget
                && !outcome.volumes.is_empty() =>
        {
            let spec = plan.for_backup(req.policy, id.as_str());
            let cluster = crate::offsite::KubeMoverCluster::new(ctx.client.clone());
            // The repository lives in this store (`<prefix>/repository/`); unknown counts as absent.
            let config = format!("{}config", ctx.layout.repository());
            let exists = matches!(ctx.store.head(&config).await, Ok(Some(_)));
            Some(crate::offsite::move_volumes(&cluster, &spec, &mut outcome.volumes, exists, cancel).await)
        }
        _ => None,
    };
    if let Some(outcome) = &volumes {
        record_volumes(ctx, &keys, &mut manifest, outcome).await?;
    }
    if let Some(moved) = &moved {
        let on_error = req.freeze.volumes.as_ref().map(|v| v.on_error);
        record_moves(&mut manifest, moved, on_error);
    }

    if matches!(
        hooks.status,
        GroupStatus::Succeeded | GroupStatus::PartiallyFailed
    ) && !over_budget
    {
        // Dumps after the thaw, then the export: both stop at cancellation.
        let unbounded = Budget::default();
        let later = dump::run_all(
            engine.executor(),
            ctx.store,
            &ctx.sealing,
            &keys,
            req.freeze.dumps.phase(false),
            &unbounded,
        );
        match cancellable(cancel, later).await {
            Some(dumps) => manifest.dumps.extend(dumps),
            None => cancelled(&mut manifest, "the dumps after the thaw"),
        }
    }
    if !cancel.is_cancelled() && manifest.status != Status::Failed {
        export_resources(ctx, &req, &keys, &mut manifest, cancel).await?;
    }

    settle_status(&mut manifest);
    if manifest.status != Status::Failed
        && let Some(outcome) = volumes.as_ref()
    {
        let problems = crate::snapshot::retain(&ctx.client, outcome).await;
        if !problems.is_empty() && manifest.status == Status::Completed {
            manifest.status = Status::PartiallyFailed;
        }
        manifest.problems.extend(problems);
    }
    if manifest.status == Status::Failed
        && let Some(outcome) = volumes.as_mut()
    {
        let deleted = crate::snapshot::discard(&ctx.client, outcome).await;
        if deleted > 0 {
            manifest
                .problems
                .push(format!("{deleted} snapshot(s) of this failed run were deleted"));
        }
    }
    manifest.finished_at = ctx.clock.now();
    if manifest.encryption.is_some() {
        manifest.withhold_output();
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");
    store::put_bytes(ctx.store, &keys.manifest(), &json)
        .await
        .map_err(store_error(format!("writing {}", keys.manifest())))?;
    tracing::info!(
        policy = req.policy, backup = %id, status = ?manifest.status,
        bytes = manifest.artifacts.values().map(|a| a.size).sum::<u64>(),
        "backup committed"
    );
    Ok(manifest)
}

/// Store `volumes.json`, list it as an artifact, and let the snapshots' verdict shape the status.
async fn record_volumes(
    ctx: &Context<'_>,
    keys: &BackupKeys,
    manifest: &mut Manifest,
    outcome: &crate::snapshot::Outcome,
) -> Result<()> {
    let key = keys.volumes();
    let written = store::put_bytes(ctx.store, &key, &outcome.volumes_json())
        .await
        .map_err(store_error(format!("writing {key}")))?;
    manifest.artifacts.insert(layout::VOLUMES.to_string(), written);
    manifest.volumes = Some(VolumesRecord {
        snapshots: outcome
            .created
            .iter()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect(),
        note: outcome.cut_at.map(|t| format!("cut at {}", t.to_rfc3339())),
        moved: outcome
            .volumes
            .iter()
            .filter_map(|v| {
                Some(MovedClaim {
                    namespace: v.namespace.clone(),
                    pvc: v.pvc.clone(),
                    mover: v.moved.clone()?,
                })
            })
            .collect(),
    });
    for f in &outcome.failures {
        manifest.problems.push(format!(
            "volume snapshot of claim {}/{} failed: {}",
            f.namespace, f.pvc, f.reason
        ));
    }
    match outcome.verdict {
        crate::snapshot::Verdict::Failed => manifest.status = Status::Failed,
        crate::snapshot::Verdict::PartiallyFailed if manifest.status == Status::Completed => {
            manifest.status = Status::PartiallyFailed
        }
        _ => {}
    }
    Ok(())
}

/// The movers' verdict: a failed claim is named, and makes the backup PartiallyFailed
/// (`volumes.onError: partial`) or Failed (`fail`); a cancellation fails it; cleanup problems are told.
fn record_moves(
    manifest: &mut Manifest,
    moved: &crate::offsite::Moved,
    on_error: Option<crate::policy::VolumeOnError>,
) {
    manifest.problems.extend(moved.cleanup_problems.iter().cloned());
    if moved.cancelled {
        manifest.problems.extend(moved.failures.iter().cloned());
        cancelled(manifest, "moving volume data (temporary mover objects deleted)");
        return;
    }
    if moved.failures.is_empty() {
        return;
    }
    manifest.problems.extend(moved.failures.iter().cloned());
    match on_error {
        Some(crate::policy::VolumeOnError::Fail) => manifest.status = Status::Failed,
        _ if manifest.status == Status::Completed => manifest.status = Status::PartiallyFailed,
        _ => {}
    }
}

/// Export the selection's resources into `resources.tar.zst`, verify it, and record it. Cancellation
/// stops it (nothing is committed) and fails the backup.
async fn export_resources(
    ctx: &Context<'_>,
    req: &Request<'_>,
    keys: &BackupKeys,
    manifest: &mut Manifest,
    cancel: &CancellationToken,
) -> Result<()> {
    let options = ExportOptions {
        mtime: manifest.started_at.timestamp().max(0) as u64,
        ..req.options.clone()
    };
    let key = keys.resources();
    let export = export::export(
        &ctx.client,
        req.selection,
        &options,
        ctx.store,
        &key,
        &ctx.sealing,
    );
    let Some(report) = cancellable(cancel, export).await else {
        cancelled(manifest, "the export of resources");
        return Ok(());
    };
    let report = report.map_err(Error::Export)?;
    store::verify(ctx.store, &key, &report.archive)
        .await
        .map_err(store_error(format!("verifying {key}")))?;
    manifest.objects = report.kinds.clone();
    manifest.cluster_objects = report.cluster.clone();
    manifest
        .artifacts
        .insert(layout::RESOURCES.to_string(), report.archive.clone());
    tracing::info!(
        objects = report.total(),
        bytes = report.archive.size,
        "resources exported"
    );
    Ok(())
}

/// `fut`'s output, or `None` when `cancel` fires first (then `fut` is dropped).
async fn cancellable<T>(cancel: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        v = fut => Some(v),
    }
}

fn cancelled(manifest: &mut Manifest, during: &str) {
    tracing::warn!("cancelled during {during}");
    manifest.status = Status::Failed;
    manifest
        .problems
        .push(format!("cancelled (SIGTERM/SIGINT) during {during}"));
}

/// The hook results into the manifest; an aborted or cancelled freeze fails the backup.
fn record_hooks(manifest: &mut Manifest, hooks: &GroupReport, dumps: &DumpPlan) {
    let ran = !hooks.pre.is_empty() || !hooks.post.is_empty() || hooks.exceeded.is_some();
    if ran || !hooks.skipped.is_empty() || !dumps.skipped.is_empty() {
        let mut record = HooksRecord::from(hooks);
        record
            .skipped
            .extend(dumps.skipped.iter().map(|s| format!("{}: {}", s.rule, s.reason)));
        manifest.hooks = Some(record);
    }
    if let Some(exceeded) = &hooks.exceeded {
        manifest.problems.push(exceeded.to_string());
    }
    match hooks.status {
        GroupStatus::Succeeded => {}
        GroupStatus::PartiallyFailed => manifest.problems.extend(
            hooks
                .failures
                .iter()
                .map(|f| format!("hook failed (continued): {f}")),
        ),
        // Cut off in the pre steps: the message above says why, the pre action's own failure follows.
        GroupStatus::Failed if hooks.exceeded.is_some() => {
            manifest.status = Status::Failed;
            let cut: Vec<String> = hooks
                .failures
                .iter()
                .filter(|f| matches!(f.invocation.result, crate::hooks::InvocationResult::CutOff(_)))
                .map(|f| format!("{} on {}", f.step, f.invocation.target))
                .collect();
            manifest.problems.push(format!(
                "freeze aborted in its pre steps, nothing was captured (cut off: {})",
                cut.join(", ")
            ));
        }
        GroupStatus::Failed => {
            manifest.status = Status::Failed;
            let cause = hooks
                .abort_cause()
                .map_or_else(|| "a pre action failed".to_string(), |f| f.to_string());
            manifest
                .problems
                .push(format!("freeze aborted, nothing was captured: {cause}"));
        }
        GroupStatus::Cancelled => cancelled(manifest, "the freeze (thaw ran; nothing was captured)"),
    }
}

/// The freeze budget's verdict (documented in docs/policy.md, "The freeze budget"): a freeze that ran
/// out during its pre steps captured nothing (`Failed`, through the hooks' status). One that ran out
/// during the capture keeps what was captured inside the freeze before the deadline (frozen dumps that
/// completed, snapshots whose cut was reported: consistent, taken while frozen) and is at best
/// `PartiallyFailed`; when nothing was captured it is `Failed`. Returns true when it made the backup
/// `Failed` (nothing more is captured after the thaw).
fn record_budget(
    manifest: &mut Manifest,
    hooks: &GroupReport,
    volumes: Option<&crate::snapshot::Outcome>,
) -> bool {
    if hooks.exceeded.is_none() || hooks.status != GroupStatus::PartiallyFailed {
        return false;
    }
    let captured = manifest
        .dumps
        .iter()
        .any(|d| d.while_frozen && d.status == DumpStatus::Succeeded)
        || volumes.is_some_and(|o| !o.volumes.is_empty() || !o.groups.is_empty());
    if captured {
        return false;
    }
    manifest.status = Status::Failed;
    manifest
        .problems
        .push("nothing was captured inside the freeze before maxFreeze ran out".into());
    true
}

/// Failed stays failed; otherwise any problem (failed dump, hook failure) is a partial failure.
fn settle_status(manifest: &mut Manifest) {
    for d in manifest.dumps.iter().filter(|d| d.status == DumpStatus::Failed) {
        manifest.problems.push(format!(
            "{} failed: {}",
            d.describe(),
            d.error.as_deref().unwrap_or("unknown error")
        ));
    }
    for d in manifest
        .dumps
        .iter()
        .filter(|d| d.status == DumpStatus::Succeeded)
    {
        if let (Some(size), Some(sha256)) = (d.size, &d.sha256) {
            manifest.artifacts.insert(
                d.artifact.clone(),
                store::Written {
                    size,
                    sha256: sha256.clone(),
                },
            );
        }
    }
    if manifest.status == Status::Completed && !manifest.problems.is_empty() {
        manifest.status = Status::PartiallyFailed;
    }
}

/// One stored backup, complete or not.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBackup {
    /// Policy.
    pub policy: String,
    /// Id.
    pub id: BackupId,
    /// Bytes stored under the backup (all artifacts).
    pub size: u64,
    /// Every object stored under the backup: path inside it (`resources.tar.zst`, `dumps/...`) → bytes.
    pub stored: BTreeMap<String, u64>,
    /// The manifest; `None` = incomplete (failed or still running).
    pub manifest: Option<Manifest>,
}

/// Every backup in the store (of `policy`, or of all policies), oldest first.
pub async fn list(
    store: &dyn ObjectStore,
    layout: &Layout,
    policy: Option<&str>,
) -> Result<Vec<StoredBackup>> {
    scan(store, layout, policy, None).await
}

/// The backups with id `id`: one per policy that has it (of `policy` only, when given).
pub async fn find(
    store: &dyn ObjectStore,
    layout: &Layout,
    policy: Option<&str>,
    id: &BackupId,
) -> Result<Vec<StoredBackup>> {
    scan(store, layout, policy, Some(id)).await
}

/// List the keys under the backups (of `policy`), group them per backup (only `id`, when given) and
/// read the manifests of those that have one.
async fn scan(
    store: &dyn ObjectStore,
    layout: &Layout,
    policy: Option<&str>,
    id: Option<&BackupId>,
) -> Result<Vec<StoredBackup>> {
    let prefix = policy.map_or_else(|| layout.backups(), |p| layout.policy(p));
    let objects = store
        .list(&prefix)
        .await
        .map_err(store_error(format!("listing {prefix}")))?;
    let mut found: BTreeMap<(String, BackupId), BTreeMap<String, u64>> = BTreeMap::new();
    for object in &objects {
        if let Some((policy, found_id, artifact)) = layout.parse(&object.key)
            && id.is_none_or(|wanted| *wanted == found_id)
        {
            found
                .entry((policy.to_string(), found_id))
                .or_default()
                .insert(artifact.to_string(), object.size);
        }
    }
    let mut out = Vec::new();
    for ((policy, id), stored) in found {
        let manifest = if stored.contains_key(layout::MANIFEST) {
            let key = layout.backup(&policy, &id).manifest();
            let bytes = store::get_bytes(store, &key)
                .await
                .map_err(store_error(format!("reading {key}")))?;
            Some(Manifest::from_json(&bytes).map_err(|source| Error::Manifest { key, source })?)
        } else {
            None
        };
        out.push(StoredBackup {
            policy,
            id,
            size: stored.values().sum(),
            stored,
            manifest,
        });
    }
    out.sort_by(|a, b| (&a.id, &a.policy).cmp(&(&b.id, &b.policy)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsite::Moved;
    use crate::policy::VolumeOnError;

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            freezeframe_version: "test".into(),
            backup_id: "20261204T170000Z".into(),
            policy: "shop".into(),
            cluster: ClusterIdentity {
                kube_system_uid: "uid".into(),
            },
            namespaces: vec!["shop".into()],
            selector: None,
            started_at: chrono::DateTime::UNIX_EPOCH,
            finished_at: chrono::DateTime::UNIX_EPOCH,
            status: Status::Completed,
            objects: BTreeMap::new(),
            cluster_objects: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            problems: Vec::new(),
            hooks: None,
            dumps: Vec::new(),
            volumes: None,
            encryption: None,
        }
    }

    fn failed_mover() -> Moved {
        Moved {
            failures: vec![
                "moving claim shop/data-db-1 into the repository failed (mover Job j): DeadlineExceeded"
                    .into(),
            ],
            ..Moved::default()
        }
    }

    #[test]
    fn given_failed_mover_and_on_error_partial_when_recording_then_partially_failed_naming_the_claim() {
        let mut m = manifest();
        record_moves(&mut m, &failed_mover(), Some(VolumeOnError::Partial));
        assert_eq!(m.status, Status::PartiallyFailed);
        assert!(m.problems[0].contains("shop/data-db-1"), "{:?}", m.problems);
    }

    #[test]
    fn given_failed_mover_and_on_error_fail_when_recording_then_the_backup_fails() {
        let mut m = manifest();
        record_moves(&mut m, &failed_mover(), Some(VolumeOnError::Fail));
        assert_eq!(m.status, Status::Failed);
    }

    #[test]
    fn given_sigterm_while_moving_when_recording_then_failed_with_cancellation_told() {
        let mut m = manifest();
        let moved = Moved {
            cancelled: true,
            ..failed_mover()
        };
        record_moves(&mut m, &moved, Some(VolumeOnError::Partial));
        assert_eq!(m.status, Status::Failed);
        assert!(
            m.problems.iter().any(|p| p.contains("cancelled")),
            "{:?}",
            m.problems
        );
    }

    #[test]
    fn given_every_mover_succeeded_when_recording_then_status_is_unchanged() {
        let mut m = manifest();
        record_moves(&mut m, &Moved::default(), Some(VolumeOnError::Fail));
        assert_eq!(m.status, Status::Completed);
        assert!(m.problems.is_empty());
    }

    fn over_budget() -> GroupReport {
        GroupReport {
            status: GroupStatus::PartiallyFailed,
            failures: Vec::new(),
            pre: Vec::new(),
            releases: Vec::new(),
            post: Vec::new(),
            skipped: Vec::new(),
            freeze_window: Some(std::time::Duration::from_millis(2_050)),
            max_freeze: Some(std::time::Duration::from_secs(2)),
            exceeded: Some(crate::hooks::Exceeded {
                max: std::time::Duration::from_secs(2),
                waiting_for: vec!["dump `slow` on db/db-0".into()],
            }),
        }
    }

    fn frozen_dump(name: &str, status: DumpStatus) -> DumpRecord {
        DumpRecord {
            name: name.into(),
            namespace: "db".into(),
            pod: "db-0".into(),
            container: "main".into(),
            artifact: format!("dumps/{name}/db/db-0"),
            while_frozen: true,
            status,
            size: None,
            sha256: None,
            exit_code: None,
            error: None,
            stderr_tail: String::new(),
            duration_millis: 0,
        }
    }

    #[test]
    fn given_freeze_over_budget_with_a_frozen_dump_captured_when_recording_then_partially_failed_with_the_message()
     {
        let mut m = manifest();
        let hooks = over_budget();
        record_hooks(&mut m, &hooks, &DumpPlan::default());
        m.dumps = vec![
            frozen_dump("fast", DumpStatus::Succeeded),
            frozen_dump("slow", DumpStatus::Failed),
        ];
        assert!(!record_budget(&mut m, &hooks, None));
        settle_status(&mut m);
        assert_eq!(m.status, Status::PartiallyFailed);
        assert_eq!(
            m.problems[0],
            "freeze exceeded maxFreeze (2s): waiting for dump `slow` on db/db-0"
        );
        let record = m.hooks.as_ref().unwrap();
        assert_eq!(
            (record.freeze_window_millis, record.max_freeze_millis),
            (Some(2_050), Some(2_000))
        );
        assert_eq!(record.exceeded.as_deref(), Some(m.problems[0].as_str()));
    }

    #[test]
    fn given_freeze_over_budget_with_nothing_captured_when_recording_then_the_backup_fails() {
        let mut m = manifest();
        let hooks = over_budget();
        record_hooks(&mut m, &hooks, &DumpPlan::default());
        m.dumps = vec![frozen_dump("slow", DumpStatus::Failed)];
        assert!(record_budget(&mut m, &hooks, None));
        settle_status(&mut m);
        assert_eq!(m.status, Status::Failed);
        assert!(
            m.problems[0].starts_with("freeze exceeded maxFreeze (2s)"),
            "{:?}",
            m.problems
        );
    }
}
