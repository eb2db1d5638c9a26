//! Restore: bring a backup's objects back, into the same namespace, another namespace or another cluster.
//!
//! A restore is a linear list of steps, each a submodule:
//!
//! ```text
//! locate (id or latest) → verify (manifest, every artifact's size and sha256) → extract (validated
//!   archive paths, to a private temp dir) → plan (dependency order, skips, namespace map, filters)
//!   → choose each claim's data source and re-bind released volumes ([`rebind`], reads the target)
//!   → print (dry run stops here) → apply (create / skip / server-side apply; claims from the
//!   repository are filled by restore movers before any workload is created: [`fill`]) → wait
//!   → replay dumps ([`dumps`]) → report (and an Event per target namespace: [`events`])
//! ```
//!
//! Nothing is written to the cluster before the whole backup has been verified: a corrupt or tampered
//! backup is refused with the artifact that failed. Objects are kept on disk between extraction and
//! apply; the plan holds one small `plan::Item` per object, so memory does not grow with object size.
//!
//! RBAC: `create`, `get`, `patch` on every restored kind in the target namespaces; `create`, `get` on
//! namespaces, persistentvolumes, storageclasses, clusterroles, customresourcedefinitions,
//! volumesnapshotcontents; `patch` on persistentvolumes (re-binding a released volume, [`rebind`]);
//! `list`, `watch` to wait for CRDs (and workloads with `--wait`); `pods` list and `pods/exec` create,
//! get to replay dumps; `events` create; for webhooks (in [`command`]), `configmaps` get (the policies)
//! and `secrets` get (HMAC keys) in freezeframe's namespace; to fill claims from the repository
//! ([`fill`]), `jobs` create and delete and `secrets` create (owned by the Job, garbage-collected with
//! it) in the target namespaces, `pods/log` get, and `secrets` get (the repository's) in freezeframe's
//! namespace. Mirrored in `manifests/restore-job.yaml` (checked by a test).

pub mod apply;
pub mod dumps;
pub mod fill;
pub mod plan;
pub mod rebind;
pub mod source;
pub mod volumes;

use std::path::PathBuf;

use crate::backup::ManifestError;
use crate::store;

pub use apply::{KindSummary, Report, Target};
pub use plan::{Existing, Plan, PlanOptions, VolumesFrom};
pub use source::BackupRef;

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backup is encrypted and no identity given matches it, or it cannot be decrypted.
    #[error(transparent)]
    Encryption(store::crypt::Error),
    /// A store operation failed.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// The store error.
        #[source]
        source: store::Error,
    },
    /// No backup matches what was asked for.
    #[error("no complete backup {wanted} in {location}")]
    NotFound {
        /// The id (or `latest`) and policy asked for.
        wanted: String,
        /// The store searched.
        location: String,
    },
    /// The id names backups of several policies.
    #[error("backup {id} exists for policies {policies:?}; choose one with --policy")]
    Ambiguous {
        /// The id.
        id: String,
        /// The policies that have it.
        policies: Vec<String>,
    },
    /// The backup has no manifest: it never finished (or is still running).
    #[error("backup {key} is incomplete (no manifest.json); refusing to restore it")]
    Incomplete {
        /// The backup's root key.
        key: String,
    },
    /// The backup's manifest says it failed.
    #[error("backup {id} has status Failed; refusing to restore it")]
    FailedBackup {
        /// The id.
        id: String,
    },
    /// `manifest.json` is unreadable.
    #[error("backup manifest {key}")]
    Manifest {
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The manifest does not describe the backup it is stored in.
    #[error("manifest {key} describes {found}, not {expected}; refusing a moved or tampered backup")]
    WrongManifest {
        /// Its key.
        key: String,
        /// `policy/id` from the key.
        expected: String,
        /// `policy/id` in the manifest.
        found: String,
    },
    /// An artifact the manifest lists is missing, or the manifest lacks the resources archive.
    #[error("backup artifact {artifact} is missing")]
    MissingArtifact {
        /// Path inside the backup.
        artifact: String,
    },
    /// An artifact's bytes differ from what the manifest recorded.
    #[error(
        "backup artifact {artifact} is corrupt or tampered: manifest says {expected}, store has {actual}"
    )]
    Tampered {
        /// Path inside the backup.
        artifact: String,
        /// Size and sha256 from the manifest.
        expected: String,
        /// Size and sha256 of the stored bytes.
        actual: String,
    },
    /// An archive entry is unsafe or malformed (link, absolute path, `..`, unknown layout).
    #[error("archive entry {path:?} refused: {reason}")]
    UnsafeEntry {
        /// The entry's path as stored.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An archive object is not valid YAML or lacks its identity.
    #[error("archive object {path}")]
    Object {
        /// Archive path.
        path: String,
        /// What is wrong.
        #[source]
        source: serde_yaml::Error,
    },
    /// An archive object's metadata disagrees with its path.
    #[error("archive object {path}: {reason}")]
    Inconsistent {
        /// Archive path.
        path: String,
        /// What disagrees.
        reason: String,
    },
    /// Reading the archive or a local file failed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// File or artifact.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `--namespace-map`, `--selector` or similar option is invalid.
    #[error("{option} {value:?}: {reason}")]
    InvalidOption {
        /// The flag.
        option: &'static str,
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A cluster call outside any one object failed (e.g. waiting for a CRD).
    #[error("{what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Result of restore operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn store_error(what: impl Into<String>) -> impl FnOnce(store::Error) -> Error {
    let what = what.into();
    move |source| Error::Store { what, source }
}

fn io_error(operation: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        operation,
        path,
        source,
    }
}

/// Everything a restore run talks to.
pub struct Context<'a> {
    /// Where the backup is read from.
    pub store: &'a dyn store::ObjectStore,
    /// Key layout of that store.
    pub layout: &'a store::Layout,
    /// The cluster written to.
    pub target: &'a dyn Target,
    /// Identities for encrypted backups (`identitySecret` or `--identity-file`); `None` = none given.
    pub identities: Option<std::sync::Arc<store::crypt::Identities>>,
    /// Replays dumps after the restored pods are ready; `None` replays none (`--skip-dumps`).
    pub dumps: Option<&'a dyn dumps::Replay>,
    /// Fills claims from the storage's repository; `None` = no repository access (such claims fail).
    pub fill: Option<&'a dyn fill::Fill>,
}

/// How long a restore that replays dumps waits for the restored pods when no `wait` was asked for.
pub const DUMPS_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Which backup.
    pub backup: BackupRef,
    /// Its policy; required only when an id exists under several policies.
    pub policy: Option<String>,
    /// Kinds, namespace map, selector, existing-object handling.
    pub plan: PlanOptions,
    /// Print the plan and write nothing.
    pub dry_run: bool,
    /// After applying, wait this long for workloads to be ready and claims bound.
    pub wait: Option<std::time::Duration>,
}

/// Run one restore: verify, plan, then (unless a dry run) apply. Returns the plan and the report.
///
/// `Err` means nothing was attempted (the backup is unusable or an option is invalid); failures of
/// single objects are in the report.
pub async fn run(ctx: &Context<'_>, options: &RestoreOptions) -> Result<(Plan, Report)> {
    let mut located =
        source::locate(ctx.store, ctx.layout, options.policy.as_deref(), &options.backup).await?;
    // An encrypted backup needs a matching identity: refused here, before anything is read or written.
    located.opening = store::crypt::Opening::for_backup(
        &format!("{}/{}", located.policy, located.id),
        located.manifest.encryption.as_ref(),
        ctx.identities.as_ref(),
    )
    .map_err(Error::Encryption)?;
    tracing::info!(policy = %located.policy, backup = %located.id, store = %ctx.store.location(), "restore: verifying");
    let extracted = source::verify_and_extract(ctx.store, &located).await?;
    let snapshots = volumes::read(ctx.store, &located).await;
    let mut plan = plan::plan(&extracted, &located.manifest, &snapshots, &options.plan)?;
    rebind::refine(
        ctx.target,
        &located.manifest.cluster.kube_system_uid,
        options.plan.volumes_from,
        &mut plan,
    )
    .await;
    tracing::info!(
        steps = plan.steps.len(),
        applied = plan.applied(),
        "restore: planned"
    );
    let mut report = Report::new(&located, options.dry_run);
    if options.dry_run {
        report.count_plan(&plan);
        return Ok((plan, report));
    }
    apply::apply(ctx.target, &extracted, &plan, ctx.fill, &mut report).await;
    // Dumps are replayed into ready pods only: replaying implies waiting.
    let wait = match ctx.dumps {
        Some(replay) if replay.replays_any(&located, &plan) => Some(options.wait.unwrap_or(DUMPS_WAIT)),
        _ => options.wait,
    };
    if let Some(timeout) = wait {
        apply::wait_ready(ctx.target, &plan, timeout, &mut report).await;
    }
    if let Some(replay) = ctx.dumps {
        replay.replay(ctx.store, &located, &plan, &mut report).await;
    }
    tracing::info!(failed = report.failed(), "restore: done");
    Ok((plan, report))
}
