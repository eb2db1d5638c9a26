//! Moving volume data off-site (`volumes.moveData`): after the snapshot cut and the thaw, each ready
//! snapshot of the backup is exposed in freezeframe's own namespace and copied into the storage's
//! restic-format repository by a Job of freezeframe's own image (`freezeframe mover backup`), at most
//! `volumes.mover.concurrency` at once. Kubernetes is the distributed engine: the heavy work runs in Jobs
//! across the nodes, not in the CronJob's pod.
//!
//! Per volume: VolumeSnapshotContent (the recorded handle, `deletionPolicy: Retain`) → VolumeSnapshot
//! bound to it → claim from it → Job mounting the claim read-only → the Job's result (the pod's
//! termination message, else the last line of its log: the mover's JSON summary) → its objects deleted.
//! The application's namespace is never touched. Every temporary object carries the policy and backup
//! labels ([`objects::MoverSpec::labels`]) and is deleted whatever happens: success, failure, timeout and
//! cancellation (SIGTERM) end with one sweep by label, and each run first sweeps what a crashed earlier
//! run of the same policy left.
//!
//! RBAC needed (mirror in `manifests/`): in freezeframe's namespace `batch` `jobs`
//! create/get/list/watch/delete, `pods` list, `pods/log` get, `persistentvolumeclaims`
//! create/list/delete, `snapshot.storage.k8s.io` `volumesnapshots` create/list/delete; cluster-wide
//! `volumesnapshotcontents` create/list/delete and `persistentvolumeclaims` get (the source claim's
//! class).

pub mod cluster;
#[cfg(test)]
mod fake;
pub mod objects;
pub mod restore;

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use cluster::KubeMoverCluster;
pub use objects::{MoverSpec, RepositoryAccess, TempKind, TempObject};

use crate::k8s::errors::chain;
use crate::policy::{Backend, Policy, Storage};
use crate::snapshot::{MoveRecord, MoveStatus, VolumeRecord};

/// Extra time past a Job's `activeDeadlineSeconds` that the run waits for the Job to report its end.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(120);
pub use crate::config::DEFAULT_IMAGE;

/// Errors talking to the cluster about temporary objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("cannot {verb} {what}")]
    Kube {
        /// The verb.
        verb: &'static str,
        /// The object.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Job did not end in time.
    #[error("mover Job {job} did not finish within {limit:?}")]
    Timeout {
        /// The Job.
        job: String,
        /// How long the run waited.
        limit: Duration,
    },
}

/// Result of cluster operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a mover Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// `Complete` (else `Failed`).
    pub succeeded: bool,
    /// The `Failed` condition's reason and message (`DeadlineExceeded`, `BackoffLimitExceeded`, ...).
    pub reason: Option<String>,
    /// The pod's termination message, else the tail of its log.
    pub output: Option<String>,
}

/// The cluster as the movers need it: one narrow seam, faked in unit tests.
#[async_trait::async_trait]
pub trait MoverCluster: Send + Sync {
    /// The StorageClass of the source claim (read only; `None` = the claim or its class is gone).
    async fn storage_class(&self, namespace: &str, claim: &str) -> Result<Option<String>>;
    /// The data of Secret `name` in `namespace` (`None` = no such Secret).
    async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, Vec<u8>>>>;
    /// Create one temporary object; returns its uid.
    async fn create(&self, object: &TempObject) -> Result<String>;
    /// Wait until the Job `name` in `namespace` is `Complete` or `Failed`, at most `limit`.
    async fn wait_job(&self, namespace: &str, name: &str, limit: Duration) -> Result<JobEnd>;
    /// Delete every temporary object in `namespace` (and cluster-scoped) matching `selector`, Jobs first
    /// (with their pods), then claims, snapshots, contents. Returns how many were deleted.
    async fn delete_labelled(&self, namespace: &str, selector: &str) -> Result<usize>;
}

/// What a mover Job reported: the contract `freezeframe mover backup` prints as its last stdout line.
pub type MoverSummary = crate::mover::MoverReport;

impl MoverSummary {
    /// The last line of `output` that is the mover's JSON summary.
    pub fn find(output: &str) -> Option<MoverSummary> {
        last_json_line(output)
    }
}

/// The last line of a mover's `output` that parses as `T` (`freezeframe mover` prints its result as
/// its last stdout line; logs may follow on stderr).
pub fn last_json_line<T: serde::de::DeserializeOwned>(output: &str) -> Option<T> {
    output
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// The repository's location and access as the mover Job's command line and environment need it:
/// `<storage prefix>/repository` in restic's syntax.
pub fn repository_access(policy: &Policy) -> Option<RepositoryAccess> {
    policy
        .storage
        .repository
        .as_ref()
        .map(|_| access(&policy.storage))
}

fn access(storage: &Storage) -> RepositoryAccess {
    let repository = storage
        .repository
        .as_ref()
        .expect("called for a storage with a repository");
    let (credentials_secret, region) = match &storage.backend {
        Backend::S3(s3) => (s3.credentials_secret.clone(), s3.region.clone()),
        Backend::Filesystem { .. } => (None, None),
    };
    let url = crate::mover::RepositoryLocation::for_storage(&storage.backend).to_string();
    RepositoryAccess {
        url,
        password_secret: repository.password_secret.clone(),
        credentials_secret,
        region,
    }
}

/// The movers of one policy, decided before its backup starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovePlan {
    /// freezeframe's namespace.
    pub namespace: String,
    /// freezeframe's own image.
    pub image: String,
    /// The repository.
    pub repository: RepositoryAccess,
    /// `volumes.mover`.
    pub mover: crate::policy::Mover,
}

/// Why a policy's data cannot be moved.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The mover Jobs run in freezeframe's namespace, which is unknown.
    #[error(
        "policy {policy}: volumes.moveData needs freezeframe's namespace for its mover Jobs: run in a pod or set FREEZEFRAME_NAMESPACE"
    )]
    NoNamespace {
        /// The policy.
        policy: String,
    },
}

impl MovePlan {
    /// The movers of `policy` (`None` = `moveData` is off), running `image` in `namespace`.
    pub fn for_policy(
        policy: &Policy,
        namespace: Option<&str>,
        image: &str,
    ) -> Result<Option<MovePlan>, PlanError> {
        if !policy.volumes.move_data || policy.volumes.snapshot == crate::policy::SnapshotMode::None {
            return Ok(None);
        }
        // Validation guarantees a repository when moveData is on.
        let Some(repository) = repository_access(policy) else {
            return Ok(None);
        };
        let namespace = namespace.ok_or_else(|| PlanError::NoNamespace {
            policy: policy.name.clone(),
        })?;
        Ok(Some(MovePlan {
            namespace: namespace.to_string(),
            image: image.to_string(),
            repository,
            mover: policy.volumes.mover.clone(),
        }))
    }

    /// The movers of one backup.
    pub fn for_backup(&self, policy: &str, backup_id: &str) -> MoverSpec {
        MoverSpec {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            policy: policy.to_string(),
            backup_id: backup_id.to_string(),
            repository: self.repository.clone(),
            mover: self.mover.clone(),
        }
    }
}

/// What moving a backup's volumes came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moved {
    /// One line per failed claim (`namespace/pvc: why`).
    pub failures: Vec<String>,
    /// The run was cancelled while moving.
    pub cancelled: bool,
    /// Temporary objects the sweeps deleted (leftovers of crashed runs and of this one).
    pub swept: usize,
    /// Problems deleting temporary objects (each names the selector).
    pub cleanup_problems: Vec<String>,
}

/// Copy every volume of `volumes` into the repository: sweep what earlier runs left, run the movers
/// (at most `spec.mover.concurrency` at once), record each result in its [`VolumeRecord::moved`], and
/// delete every temporary object, also when `cancel` fires.
///
/// When the repository does not exist yet (`repository_exists` false), the first mover runs alone: a
/// mover creates the repository when it finds none, and two doing so at once would each write their
/// own key and config, leaving snapshots one of them cannot decrypt.
pub async fn move_volumes(
    cluster: &dyn MoverCluster,
    spec: &MoverSpec,
    volumes: &mut [VolumeRecord],
    repository_exists: bool,
    cancel: &CancellationToken,
) -> Moved {
    let mut moved = Moved::default();
    sweep(cluster, spec, &spec.earlier_runs(), &mut moved).await;
    let concurrency = spec.mover.concurrency.max(1) as usize;
    let alone = usize::from(!repository_exists).min(volumes.len());
    let (first, rest) = volumes.split_at_mut(alone);
    let work = async {
        run_batch(cluster, spec, first, 1).await;
        run_batch(cluster, spec, rest, concurrency).await;
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => moved.cancelled = true,
        _ = work => {}
    }
    // Success, failure, timeout or cancellation: nothing of this run stays.
    sweep(cluster, spec, &spec.this_backup(), &mut moved).await;
    for v in volumes.iter_mut() {
        let record = v.moved.get_or_insert_with(|| MoveRecord {
            status: MoveStatus::Failed,
            snapshot_id: None,
            files: 0,
            dirs: 0,
            bytes: 0,
            bytes_new: 0,
            bytes_reused: 0,
            duration_seconds: 0.0,
            job: spec.name(&v.namespace, &v.pvc),
            error: Some("cancelled (SIGTERM/SIGINT) before the mover finished".to_string()),
        });
        if record.status == MoveStatus::Failed {
            moved.failures.push(format!(
                "moving claim {}/{} into the repository failed (mover Job {}): {}",
                v.namespace,
                v.pvc,
                record.job,
                record.error.as_deref().unwrap_or("unknown error")
            ));
        }
    }
    moved
}

/// Move `batch`, `at_once` movers at a time.
async fn run_batch(cluster: &dyn MoverCluster, spec: &MoverSpec, batch: &mut [VolumeRecord], at_once: usize) {
    futures::stream::iter(batch.iter_mut())
        .map(|v| async move {
            let record = move_one(cluster, spec, v).await;
            v.moved = Some(record);
        })
        .buffer_unordered(at_once)
        .collect::<Vec<()>>()
        .await;
}

async fn sweep(cluster: &dyn MoverCluster, spec: &MoverSpec, selector: &str, moved: &mut Moved) {
    match cluster.delete_labelled(&spec.namespace, selector).await {
        Ok(n) => moved.swept += n,
        Err(e) => {
            let why = chain(&e);
            tracing::warn!(selector, error = %why, "could not delete temporary mover objects");
            moved
                .cleanup_problems
                .push(format!("temporary mover objects ({selector}) may be left: {why}"));
        }
    }
}

/// One volume: create its objects, wait for its Job, read the summary, delete its objects.
async fn move_one(cluster: &dyn MoverCluster, spec: &MoverSpec, volume: &VolumeRecord) -> MoveRecord {
    let job = spec.name(&volume.namespace, &volume.pvc);
    let started = tokio::time::Instant::now();
    let failed = |error: String| MoveRecord {
        status: MoveStatus::Failed,
        snapshot_id: None,
        files: 0,
        dirs: 0,
        bytes: 0,
        bytes_new: 0,
        bytes_reused: 0,
        duration_seconds: started.elapsed().as_secs_f64(),
        job: job.clone(),
        error: Some(error),
    };
    tracing::info!(namespace = %volume.namespace, pvc = %volume.pvc, job = %job, "moving volume data");
    let record = async {
        let class = cluster
            .storage_class(&volume.namespace, &volume.pvc)
            .await
            .map_err(|e| chain(&e))?;
        for object in spec.backup_objects(volume, class.as_deref()) {
            cluster.create(&object).await.map_err(|e| chain(&e))?;
        }
        let limit = spec.mover.timeout + DEADLINE_GRACE;
        let end = cluster
            .wait_job(&spec.namespace, &job, limit)
            .await
            .map_err(|e| chain(&e))?;
        let summary = end.output.as_deref().and_then(MoverSummary::find);
        match (end.succeeded, summary) {
            (true, Some(s)) => Ok(MoveRecord {
                status: MoveStatus::Succeeded,
                snapshot_id: Some(s.snapshot_id),
                files: s.files,
                dirs: s.dirs,
                bytes: s.bytes,
                bytes_new: s.bytes_new,
                bytes_reused: s.bytes_reused,
                duration_seconds: s.duration_seconds,
                job: job.clone(),
                error: None,
            }),
            (true, None) => Err("the Job completed but its pod reported no summary line".to_string()),
            (false, _) => Err(failure_text(&end)),
        }
    }
    .await
    .unwrap_or_else(failed);
    // Free the claim (and the node's attachment) now rather than at the end of all movers.
    let selector = format!("{},{}={job}", spec.this_backup(), objects::MOVER_JOB_LABEL);
    if let Err(e) = cluster.delete_labelled(&spec.namespace, &selector).await {
        tracing::warn!(job = %job, error = %chain(&e), "temporary objects of a mover are deleted at the end of the run");
    }
    match record.status {
        MoveStatus::Succeeded => tracing::info!(
            pvc = %volume.pvc, snapshot = record.snapshot_id.as_deref().unwrap_or(""),
            bytes = record.bytes, bytes_new = record.bytes_new, "volume data moved"
        ),
        MoveStatus::Failed => tracing::warn!(
            pvc = %volume.pvc, error = record.error.as_deref().unwrap_or(""), "moving volume data failed"
        ),
    }
    record
}

fn failure_text(end: &JobEnd) -> String {
    let reason = end.reason.as_deref().unwrap_or("the Job failed");
    let tail = end
        .output
        .as_deref()
        .map(|o| {
            let lines: Vec<&str> = o.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(3)..].join(" | ")
        })
        .filter(|t| !t.is_empty());
    match tail {
        Some(t) => format!("{reason}; mover output: {t}"),
        None => reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
