//! The prune executor: delete the backups [`super::decide`] prunes, in an order a crash cannot turn into
//! a backup that looks valid but is not, and report per backup what was deleted or why it failed.
//!
//! Per pruned backup:
//! 1. read `volumes.json` (the record of its snapshots) before anything is deleted; if the store cannot
//!    be read, nothing of this backup is deleted and the next prune retries;
//! 2. delete `manifest.json` FIRST: the backup disappears from `list`/`restore` at once, so a crash from
//!    here on leaves an *incomplete* backup that the grace rule prunes later, never a half backup that
//!    looks restorable;
//! 3. delete its VolumeGroupSnapshots, then its VolumeSnapshots: those recorded in `volumes.json` plus
//!    any still labelled with the policy and backup id (a run that crashed before writing `volumes.json`).
//!    Group members go with their group. An object already gone is fine; an object of the same name
//!    without this backup's labels is left alone (it is not ours);
//! 4. delete every other object under the backup's prefix, and `volumes.json` last, only once every
//!    snapshot is gone, so a failed snapshot deletion is retried by the next prune.
//!
//! Before step 1, a backup any of whose objects is under S3 Object Lock retention is skipped whole
//! ("locked until …", reported in `locked`, not a failure) and deleted by a later prune.
//!
//! A failure is recorded with the backup and the executor goes on with the next step where that is
//! safe and with the next backup in any case.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::rules::{Decision, Verdict};
use super::{Mode, Target};
use crate::backup::StoredBackup;
use crate::exit::Outcome;
use crate::snapshot::{BACKUP_ID_LABEL, POLICY_LABEL};
use crate::store::{self, BackupId, layout};

/// Which snapshot kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum SnapshotKind {
    /// `groupsnapshot.storage.k8s.io` VolumeGroupSnapshot (deleted first: its members go with it).
    VolumeGroupSnapshot,
    /// `snapshot.storage.k8s.io` VolumeSnapshot.
    VolumeSnapshot,
}

/// A snapshot object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotRef {
    /// Kind.
    pub kind: SnapshotKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A snapshot content a committed backup set to `deletionPolicy: Retain` (so the storage snapshot
/// outlives its namespace): pruning sets it back to `Delete` and deletes it, which deletes the storage
/// snapshot. Known from `volumes.json`, with the snapshot it must be bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentRef {
    /// The snapshot kind it belongs to ([`SnapshotKind::VolumeSnapshot`] → VolumeSnapshotContent,
    /// [`SnapshotKind::VolumeGroupSnapshot`] → VolumeGroupSnapshotContent).
    pub kind: SnapshotKind,
    /// The content's name (cluster-scoped).
    pub name: String,
    /// The snapshot its `volumeSnapshotRef` / `volumeGroupSnapshotRef` must name: only then it is ours.
    pub snapshot: SnapshotRef,
}

impl fmt::Display for ContentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SnapshotKind::VolumeSnapshot => "VolumeSnapshotContent",
            SnapshotKind::VolumeGroupSnapshot => "VolumeGroupSnapshotContent",
        };
        write!(f, "{kind} {}", self.name)
    }
}

/// What deleting a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted (its content follows the class's `deletionPolicy`).
    Deleted,
    /// It did not exist (already deleted, or its API is not served).
    Gone,
    /// An object of that name exists but is not labelled as this backup's: left alone.
    NotOurs,
}

/// Errors of the cluster side of pruning.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// API discovery failed.
    #[error("discovering the snapshot APIs")]
    Discovery(#[source] Box<kube::Error>),
    /// An API call failed.
    #[error("cannot {verb} {what}")]
    Kube {
        /// The verb.
        verb: &'static str,
        /// What.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Any other failure (fakes in tests).
    #[error("{0}")]
    Other(String),
}

/// The cluster side of pruning: find and delete a backup's snapshot objects.
#[async_trait::async_trait]
pub trait Snapshots: Send + Sync {
    /// Every VolumeSnapshot and VolumeGroupSnapshot, in any namespace, labelled with
    /// `freezeframe.dev/policy=<policy>` and `freezeframe.dev/backup-id=<backup>`.
    async fn labelled(&self, policy: &str, backup: &BackupId) -> Result<Vec<SnapshotRef>, SnapshotError>;

    /// Delete `snapshot` if it carries those labels.
    async fn delete(
        &self,
        snapshot: &SnapshotRef,
        policy: &str,
        backup: &BackupId,
    ) -> Result<Deletion, SnapshotError>;

    /// Delete `content` and its storage snapshot if it is bound to `content.snapshot`: set its
    /// `deletionPolicy` to `Delete` first (a committed backup set it to `Retain`), then delete it.
    async fn delete_content(&self, content: &ContentRef) -> Result<Deletion, SnapshotError>;
}

/// Why one step of pruning a backup failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("reading {key} failed, so nothing of this backup was deleted; the next prune retries")]
    ReadVolumes {
        key: String,
        #[source]
        source: store::Error,
    },
    #[error("deleting {key} failed, so nothing else of this backup was deleted; the next prune retries")]
    DeleteManifest {
        key: String,
        #[source]
        source: store::Error,
    },
    #[error("deleting {content} (and its storage snapshot) failed; the next prune retries")]
    Content {
        content: ContentRef,
        #[source]
        source: SnapshotError,
    },
    #[error("finding the snapshots labelled {POLICY_LABEL}={policy},{BACKUP_ID_LABEL}={backup}")]
    Labelled {
        policy: String,
        backup: String,
        #[source]
        source: SnapshotError,
    },
    #[error("deleting {snapshot} (check RBAC: delete on volumesnapshots/volumegroupsnapshots)")]
    Snapshot {
        snapshot: SnapshotRef,
        #[source]
        source: SnapshotError,
    },
    #[error("listing the objects under {prefix}")]
    List {
        prefix: String,
        #[source]
        source: store::Error,
    },
    #[error("deleting the objects under {prefix}")]
    Delete {
        prefix: String,
        #[source]
        source: store::Error,
    },
}

/// An error and its causes on one line (`a: b: c`).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::k8s::errors::chain(e)
}

/// A kept backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptBackup {
    /// Id.
    pub backup_id: String,
    /// `Completed`, `PartiallyFailed`, `Failed` or `Incomplete`.
    pub status: String,
    /// Every reason it is kept (`last 3`, `daily 2026-11-20`, `newest good backup`, ...).
    pub reasons: Vec<String>,
}

/// A pruned backup (or one that would be, in a dry run, or whose pruning failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrunedBackup {
    /// Id.
    pub backup_id: String,
    /// What it was.
    pub status: String,
    /// Why it is pruned.
    pub reason: String,
    /// Snapshot objects deleted (`VolumeSnapshot ns/name`).
    pub snapshots: Vec<String>,
    /// Store objects deleted (in a dry run: that would be).
    pub objects: usize,
    /// What else there is to know (a snapshot left alone, `volumes.json` kept for a retry, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Why pruning it failed, one line per failed step; empty when it succeeded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The outcome of pruning one policy: for the summary, `-o json`, and the `prune.completed` /
/// `prune.failed` webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Policy.
    pub policy: String,
    /// Nothing was deleted; `pruned` says what would be.
    pub dry_run: bool,
    /// Kept backups, oldest first, with their reasons.
    pub kept: Vec<KeptBackup>,
    /// Backups pruned completely (in a dry run: that would be), oldest first.
    pub pruned: Vec<PrunedBackup>,
    /// Backups whose pruning failed (possibly half way: see `errors`), oldest first.
    pub failed: Vec<PrunedBackup>,
    /// Backups due for pruning but still under S3 Object Lock retention: nothing of them was deleted,
    /// and a later prune deletes them (a note says until when). Not a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<PrunedBackup>,
}

impl PruneReport {
    /// Success, or PartiallyFailed when some backup could not be pruned.
    pub fn outcome(&self) -> Outcome {
        if self.failed.is_empty() {
            Outcome::Success
        } else {
            Outcome::PartiallyFailed
        }
    }
}

/// The snapshots `volumes.json` records: its groups and the volumes that are not group members (those go
/// with their group). Only the names are read, so later additions to the format do not matter.
fn recorded(bytes: &[u8]) -> Result<(Vec<SnapshotRef>, Vec<ContentRef>), serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Object {
        namespace: String,
        name: String,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        content_name: String,
    }
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        volumes: Vec<Object>,
        #[serde(default)]
        groups: Vec<Object>,
    }
    let file: File = serde_json::from_slice(bytes)?;
    let mut snapshots = Vec::new();
    let mut contents = Vec::new();
    for (kind, list) in [
        (SnapshotKind::VolumeGroupSnapshot, file.groups),
        (SnapshotKind::VolumeSnapshot, file.volumes),
    ] {
        for o in list {
            let snapshot = SnapshotRef {
                kind,
                namespace: o.namespace,
                name: o.name,
            };
            // Group members' contents were retained too: they are released like the others.
            if !o.content_name.is_empty() {
                contents.push(ContentRef {
                    kind,
                    name: o.content_name,
                    snapshot: snapshot.clone(),
                });
            }
            if o.group.is_none() {
                snapshots.push(snapshot);
            }
        }
    }
    Ok((snapshots, contents))
}

/// Carry out `decisions` over `stored` (module docs).
pub(super) async fn execute(
    target: Target<'_>,
    policy: &str,
    stored: &[StoredBackup],
    decisions: Vec<Decision>,
    mode: Mode<'_>,
) -> PruneReport {
    let mut report = PruneReport {
        policy: policy.to_string(),
        dry_run: matches!(mode, Mode::DryRun),
        kept: Vec::new(),
        pruned: Vec::new(),
        failed: Vec::new(),
        locked: Vec::new(),
    };
    for decision in decisions {
        let reason = match &decision.verdict {
            Verdict::Keep(reasons) => {
                report.kept.push(KeptBackup {
                    backup_id: decision.id.to_string(),
                    status: decision.state.to_string(),
                    reasons: reasons.iter().map(ToString::to_string).collect(),
                });
                continue;
            }
            Verdict::Prune(reason) => reason,
        };
        let Some(backup) = stored.iter().find(|b| b.id == decision.id) else {
            continue;
        };
        let mut pruned = PrunedBackup {
            backup_id: decision.id.to_string(),
            status: decision.state.to_string(),
            reason: reason.to_string(),
            snapshots: Vec::new(),
            objects: backup.stored.len(),
            notes: Vec::new(),
            errors: Vec::new(),
        };
        if let Mode::Delete(snapshots) = mode {
            pruned.objects = 0;
            match locked_until(target, policy, backup).await {
                Ok(Some(until)) => {
                    let note = format!(
                        "locked until {} (S3 Object Lock): nothing deleted; a later prune deletes it",
                        until.to_rfc3339()
                    );
                    tracing::info!(policy, backup = %decision.id, "{note}");
                    pruned.notes.push(note);
                    report.locked.push(pruned);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    pruned
                        .errors
                        .push(format!("checking its Object Lock retention: {}", chain(&e)));
                    report.failed.push(pruned);
                    continue;
                }
            }
            prune_backup(target, snapshots, policy, backup, &mut pruned).await;
        }
        tracing::info!(
            policy, backup = %decision.id, reason = %pruned.reason, dry_run = report.dry_run,
            snapshots = pruned.snapshots.len(), objects = pruned.objects, errors = ?pruned.errors,
            "pruned"
        );
        if pruned.errors.is_empty() {
            report.pruned.push(pruned);
        } else {
            report.failed.push(pruned);
        }
    }
    report
}

/// The latest retain-until date of the backup's objects still under Object Lock retention; `None` when
/// every object can be deleted now. Checked before anything is deleted, so a locked backup is never
/// left half deleted.
async fn locked_until(
    target: Target<'_>,
    policy: &str,
    backup: &StoredBackup,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, store::Error> {
    let keys = target.layout.backup(policy, &backup.id);
    let mut latest = None;
    for artifact in backup.stored.keys() {
        if let Some(until) = target.store.locked_until(&keys.artifact(artifact)).await? {
            latest = latest.max(Some(until));
        }
    }
    Ok(latest)
}

/// Delete one backup in the safe order (module docs), recording into `out`.
async fn prune_backup(
    target: Target<'_>,
    snapshots: &dyn Snapshots,
    policy: &str,
    backup: &StoredBackup,
    out: &mut PrunedBackup,
) {
    let store = target.store;
    let keys = target.layout.backup(policy, &backup.id);

    // 1. The snapshot record, before anything is deleted.
    let mut found: BTreeSet<SnapshotRef> = BTreeSet::new();
    let mut contents: BTreeSet<ContentRef> = BTreeSet::new();
    let mut moved: Vec<String> = Vec::new();
    if backup.stored.contains_key(layout::VOLUMES) {
        let key = keys.volumes();
        match store::get_bytes(store, &key).await {
            Ok(bytes) => match recorded(&bytes) {
                Ok((refs, retained)) => {
                    found.extend(refs);
                    contents.extend(retained);
                    moved = super::repository::moved_snapshots(&bytes).unwrap_or_default();
                }
                Err(e) => out.notes.push(format!(
                    "{key} is not valid JSON ({e}); its snapshots were looked up by their labels only"
                )),
            },
            Err(source) => {
                return out_error(&mut out.errors, &StepError::ReadVolumes { key, source });
            }
        }
    }

    // 2. The manifest first: from here on the backup is incomplete, never half valid.
    let manifest = keys.manifest();
    if let Err(source) = store.delete(std::slice::from_ref(&manifest)).await {
        return out_error(
            &mut out.errors,
            &StepError::DeleteManifest {
                key: manifest,
                source,
            },
        );
    }
    if backup.stored.contains_key(layout::MANIFEST) {
        out.objects += 1;
    }

    // 3. Its snapshots: groups first (their members go with them), then volumes.
    let mut snapshots_gone = true;
    match snapshots.labelled(policy, &backup.id).await {
        Ok(labelled) => found.extend(labelled),
        Err(source) => {
            snapshots_gone = false;
            out_error(
                &mut out.errors,
                &StepError::Labelled {
                    policy: policy.to_string(),
                    backup: backup.id.to_string(),
                    source,
                },
            );
        }
    }
    for snapshot in found {
        match snapshots.delete(&snapshot, policy, &backup.id).await {
            Ok(Deletion::Deleted) => out.snapshots.push(snapshot.to_string()),
            Ok(Deletion::Gone) => {}
            Ok(Deletion::NotOurs) => out.notes.push(format!(
                "{snapshot} was left alone: it is not labelled {POLICY_LABEL}={policy}, \
                 {BACKUP_ID_LABEL}={} (an object of another cluster or run with the same name)",
                backup.id
            )),
            Err(source) => {
                snapshots_gone = false;
                out_error(&mut out.errors, &StepError::Snapshot { snapshot, source });
            }
        }
    }
    // Their contents, which the committed backup retained: with them go the storage snapshots.
    for content in contents {
        match snapshots.delete_content(&content).await {
            Ok(Deletion::Deleted) => out.snapshots.push(content.to_string()),
            Ok(Deletion::Gone) => {}
            Ok(Deletion::NotOurs) => out.notes.push(format!(
                "{content} was left alone: it is not bound to {} (another cluster's or run's object with \
                 the same name)",
                content.snapshot
            )),
            Err(source) => {
                snapshots_gone = false;
                out_error(&mut out.errors, &StepError::Content { content, source });
            }
        }
    }

    // 3b. Its moved data: the repository snapshots its movers wrote are forgotten (their packs go at
    // the repository's next prune, unless a kept snapshot shares them).
    if !moved.is_empty() {
        match target.repository {
            Some(repository) => match repository.forget(&moved).await {
                Ok(n) => out.notes.push(format!(
                    "forgot {n} repository snapshot(s) of its moved volume data"
                )),
                Err(message) => {
                    snapshots_gone = false;
                    out.errors.push(format!(
                        "forgetting its repository snapshots {moved:?} failed: {message}"
                    ));
                }
            },
            None => {
                snapshots_gone = false;
                out.errors.push(format!(
                    "its moved volume data (repository snapshots {moved:?}) was not forgotten: the storage's \
                     repository could not be opened (repository.passwordSecret in freezeframe's namespace)"
                ));
            }
        }
    }

    // 4. Everything else under the prefix; volumes.json last, once its snapshots are gone.
    let prefix = keys.root().to_string();
    let objects = match store.list(&prefix).await {
        Ok(objects) => objects,
        Err(source) => {
            return out_error(&mut out.errors, &StepError::List { prefix, source });
        }
    };
    let volumes = keys.volumes();
    let (record, rest): (Vec<String>, Vec<String>) =
        objects.into_iter().map(|o| o.key).partition(|k| *k == volumes);
    if !rest.is_empty() {
        match store.delete(&rest).await {
            Ok(()) => out.objects += rest.len(),
            Err(source) => out_error(
                &mut out.errors,
                &StepError::Delete {
                    prefix: prefix.clone(),
                    source,
                },
            ),
        }
    }
    if record.is_empty() {
        return;
    }
    if !snapshots_gone {
        out.notes.push(format!(
            "{volumes} was kept so the next prune retries deleting its snapshots and moved data"
        ));
        return;
    }
    match store.delete(&record).await {
        Ok(()) => out.objects += 1,
        Err(source) => out_error(&mut out.errors, &StepError::Delete { prefix, source }),
    }
}

fn out_error(errors: &mut Vec<String>, e: &StepError) {
    errors.push(chain(e));
}

#[cfg(test)]
mod tests;
