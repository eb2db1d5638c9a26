//! Retention: which backups of a policy to keep ([`rules`], pure math) and deleting the others
//! ([`prune`], behind [`ObjectStore`] and the narrow [`Snapshots`] trait; [`cluster::KubeSnapshots`] is the
//! cluster side). `freezeframe run` and `freezeframe backup` prune a policy right after committing its
//! manifest; `freezeframe prune` ([`command`]) does it on demand, with `--dry-run`.
//!
//! See docs/retention.md for the rules, the safety guarantees and the order of deletion.

pub mod cluster;
pub mod prune;
pub mod repository;
pub mod rules;

use chrono::{DateTime, Utc};

pub use prune::{Deletion, PruneReport, PrunedBackup, SnapshotError, SnapshotKind, SnapshotRef, Snapshots};
pub use rules::{Candidate, Decision, INCOMPLETE_GRACE, KeepReason, PruneReason, State, Verdict, decide};

use crate::policy::Retention;
use crate::store::{Layout, ObjectStore};

/// Errors that stop a prune before anything is deleted (failures of single backups are in the
/// [`PruneReport`] instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy's backups could not be listed (or a manifest could not be read): nothing is pruned,
    /// since deciding on a partial list could delete what a complete one keeps.
    #[error(
        "cannot list the backups of policy {policy} in {location}; nothing was pruned (fix access to the \
         store, or move an unreadable manifest.json away, then run `freezeframe prune --policy {policy}`)"
    )]
    List {
        /// Policy.
        policy: String,
        /// The store.
        location: String,
        /// Why.
        #[source]
        source: crate::backup::Error,
    },
    /// The snapshot APIs could not be discovered, so pruned backups' snapshots could not be deleted:
    /// nothing was pruned.
    #[error("cannot reach the cluster's snapshot APIs; nothing was pruned (the next backup retries)")]
    Cluster(#[source] SnapshotError),
}

/// Result of retention operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a prune deletes or only says what it would delete.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// Decide and report; delete nothing (no cluster needed).
    DryRun,
    /// Delete the pruned backups, their snapshots through this.
    Delete(&'a dyn Snapshots),
}

/// Where a policy's backups live.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The store.
    pub store: &'a dyn ObjectStore,
    /// Its key layout.
    pub layout: &'a Layout,
    /// Its repository, when the storage has one and it could be reached: pruned backups' moved data
    /// is forgotten there (without it, such a backup keeps its `volumes.json` and a later prune retries).
    pub repository: Option<&'a dyn repository::MovedData>,
}

/// Prune one policy: list its backups, [`decide`] at `now`, and (unless [`Mode::DryRun`]) delete the
/// pruned ones in the safe order ([`prune::prune_backup`]). Failures of single backups do not stop the
/// others; they are in the report.
pub async fn prune(
    target: Target<'_>,
    policy: &str,
    rules: &Retention,
    now: DateTime<Utc>,
    mode: Mode<'_>,
) -> Result<PruneReport> {
    let stored = crate::backup::list(target.store, target.layout, Some(policy))
        .await
        .map_err(|source| Error::List {
            policy: policy.to_string(),
            location: target.store.location(),
            source,
        })?;
    let candidates: Vec<Candidate> = stored
        .iter()
        .map(|b| Candidate {
            id: b.id.clone(),
            state: State::from_status(b.manifest.as_ref().map(|m| m.status)),
        })
        .collect();
    let decisions = decide(&candidates, rules, now);
    Ok(prune::execute(target, policy, &stored, decisions, mode).await)
}
