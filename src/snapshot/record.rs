//! What a backup records about its volumes (`volumes.json`): enough to pre-provision the snapshot
//! contents in another cluster with the same storage, and what was skipped or failed, and why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::scope::Skipped;

/// Version of the `volumes.json` format.
pub const VOLUMES_FORMAT_VERSION: u32 = 1;

/// One ready snapshot of one claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    /// Namespace of the claim and the snapshot.
    pub namespace: String,
    /// The VolumeSnapshot.
    pub name: String,
    /// The claim.
    pub pvc: String,
    /// `restoreSize` of the snapshot, else the claim's capacity.
    pub size: Option<String>,
    /// The VolumeSnapshotClass (for a group member: the VolumeGroupSnapshotClass).
    pub class: String,
    /// CSI driver.
    pub driver: String,
    /// The bound VolumeSnapshotContent.
    pub content_name: String,
    /// The storage system's snapshot id.
    pub snapshot_handle: String,
    /// `status.creationTime` (the cut).
    pub creation_time: Option<String>,
    /// The VolumeGroupSnapshot this is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// What the mover made of it (`volumes.moveData`); `None` = not moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<MoveRecord>,
}

/// How a mover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveStatus {
    /// The volume's files are in the repository.
    Succeeded,
    /// They are not (the snapshot still is, when the backup keeps it).
    Failed,
}

/// One volume copied (or not) into the storage's repository by a mover Job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveRecord {
    /// How it ended.
    pub status: MoveStatus,
    /// The repository snapshot (restic's id) holding the volume's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Files copied.
    #[serde(default)]
    pub files: u64,
    /// Directories copied.
    #[serde(default)]
    pub dirs: u64,
    /// Bytes of the files.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes the repository did not have yet (after deduplication).
    #[serde(default)]
    pub bytes_new: u64,
    /// Bytes the repository already had.
    #[serde(default)]
    pub bytes_reused: u64,
    /// How long the mover took (as it measured itself; 0 when it never reported).
    #[serde(default)]
    pub duration_seconds: f64,
    /// The mover Job.
    pub job: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One ready group snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRecord {
    /// Namespace.
    pub namespace: String,
    /// The VolumeGroupSnapshot.
    pub name: String,
    /// The VolumeGroupSnapshotClass.
    pub class: String,
    /// CSI driver.
    pub driver: String,
    /// The bound VolumeGroupSnapshotContent.
    pub content_name: String,
    /// The storage system's group snapshot id.
    pub group_snapshot_handle: String,
    /// Member claims.
    pub pvcs: Vec<String>,
}

/// A claim whose snapshot failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFailure {
    /// Namespace.
    pub namespace: String,
    /// Claim.
    pub pvc: String,
    /// The VolumeSnapshot or VolumeGroupSnapshot, if one was created.
    pub snapshot: Option<String>,
    /// Why (the snapshot's `status.error.message`, a timeout, a missing class, ...).
    pub reason: String,
}

/// What the volumes make of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every claim in scope that could be snapshotted is in a ready snapshot.
    Completed,
    /// Some failed and `volumes.onError: partial`.
    PartiallyFailed,
    /// Some failed and `volumes.onError: fail`.
    Failed,
}

/// The `volumes.json` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumesFile<'a> {
    /// [`VOLUMES_FORMAT_VERSION`].
    pub format_version: u32,
    /// Policy.
    pub policy: &'a str,
    /// Backup id.
    pub backup_id: &'a str,
    /// When every snapshot reported its cut.
    pub cut_at: Option<DateTime<Utc>>,
    /// Verdict.
    pub verdict: Verdict,
    /// Ready snapshots.
    pub volumes: &'a [VolumeRecord],
    /// Ready group snapshots.
    pub groups: &'a [GroupRecord],
    /// Claims not snapshotted, and why.
    pub skipped: &'a [Skipped],
    /// Failed claims.
    pub failures: &'a [VolumeFailure],
}
