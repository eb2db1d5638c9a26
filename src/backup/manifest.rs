//! `manifest.json`: the commit marker of a backup, written last. A backup without one is incomplete.
//!
//! Besides what was saved, it records how the run went: the freeze of the pod group (status, freeze
//! window, every step per pod, failures with output tails), every dump with its size and sha256 or why it
//! failed, and `problems` saying why the status is not `Completed`. A run whose freeze aborted or was
//! cancelled still writes a manifest, with status `Failed`: the hook results are the useful part of it,
//! and "failed" is an honest end, unlike a missing manifest, which means "still running or crashed".

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use crate::exit::Outcome;
use crate::export::KindCount;
use crate::hooks::{GroupReport, GroupStatus, InvocationReport};
use crate::store::Written;
use crate::store::crypt::EncryptionRecord;

/// The manifest format this build writes; readers refuse newer ones.
///
/// 1: artifacts stored as produced. 2: adds `encryption` (absent = stored as produced, so format 1
/// manifests read as unencrypted backups).
pub const FORMAT_VERSION: u32 = 2;

/// How a backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Everything asked for was saved.
    Completed,
    /// Some parts failed; the manifest says which.
    PartiallyFailed,
    /// Nothing usable was saved.
    Failed,
}

/// Which cluster a backup came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentity {
    /// The uid of the `kube-system` namespace: stable for a cluster's life, different between clusters.
    pub kube_system_uid: String,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// freezeframe's version that wrote it.
    pub freezeframe_version: String,
    /// The backup id (also in the key).
    pub backup_id: String,
    /// The policy run.
    pub policy: String,
    /// Source cluster.
    pub cluster: ClusterIdentity,
    /// Namespaces covered.
    pub namespaces: Vec<String>,
    /// The pod selector whose closure was exported; absent for whole namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the manifest was written.
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub status: Status,
    /// Namespaced objects per kind (`plural` or `plural.group`).
    pub objects: BTreeMap<String, KindCount>,
    /// Cluster-scoped objects per kind.
    pub cluster_objects: BTreeMap<String, KindCount>,
    /// Every artifact (path inside the backup → size and sha256), verified against the store.
    pub artifacts: BTreeMap<String, Written>,
    /// Why the status is not `Completed` (one line each); empty when it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The freeze and thaw of the policy's pod group; absent when the policy has no hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksRecord>,
    /// Every dump invocation (one per dump and pod), succeeded or not; successful ones are also in
    /// `artifacts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<DumpRecord>,
    /// The volume snapshot step; absent when the policy asks for no snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<VolumesRecord>,
    /// How the resources archive and the dumps are encrypted; absent = stored as produced. The
    /// manifest itself and `volumes.json` (snapshot references only) stay readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
}

impl Status {
    /// The exit code a backup with this status ends with.
    pub fn outcome(self) -> Outcome {
        match self {
            Status::Completed => Outcome::Success,
            Status::PartiallyFailed => Outcome::PartiallyFailed,
            Status::Failed => Outcome::Failed,
        }
    }
}

/// How the freeze of the pod group ended (see [`GroupStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HooksStatus {
    /// Every action succeeded.
    Succeeded,
    /// Frozen, but an action with `onError: continue`, a lock release or a post action failed.
    PartiallyFailed,
    /// A pre action with `onError: abort` failed: nothing was captured while frozen.
    Failed,
    /// Stopped by SIGTERM/SIGINT; the thaw ran.
    Cancelled,
}

impl From<GroupStatus> for HooksStatus {
    fn from(s: GroupStatus) -> Self {
        match s {
            GroupStatus::Succeeded => HooksStatus::Succeeded,
            GroupStatus::PartiallyFailed => HooksStatus::PartiallyFailed,
            GroupStatus::Failed => HooksStatus::Failed,
            GroupStatus::Cancelled => HooksStatus::Cancelled,
        }
    }
}

/// What the freeze and thaw did, as stored in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HooksRecord {
    /// Overall.
    pub status: HooksStatus,
    /// First pre action start to last thaw end, in milliseconds; absent when nothing was frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_window_millis: Option<u64>,
    /// The freeze budget (`rules.maxFreeze`) in milliseconds; absent in manifests written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_freeze_millis: Option<u64>,
    /// Set when the budget ran out: `freeze exceeded maxFreeze (60s): waiting for …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceeded: Option<String>,
    /// Every failure; when the status is `Failed` the first one aborted the freeze.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<HookFailure>,
    /// Every step that ran (pre steps, held-lock releases, post steps), in order.
    pub steps: Vec<HookStep>,
    /// Rules left out because they matched no pod (`onNoPods: skip`): `rule: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// One step over its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookStep {
    /// `pre`, `release` or `post`.
    pub stage: String,
    /// The step (`rules.pre[0].actions[0]`, ...).
    pub name: String,
    /// One per pod.
    pub invocations: Vec<HookInvocation>,
}

/// One action on one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookInvocation {
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Container.
    pub container: String,
    /// How it ended, as text (`succeeded`, `exit code 3`, `timed out after 5s (...)`, ...).
    pub result: String,
    /// The exit code, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How long it ran, in milliseconds.
    pub duration_millis: u64,
}

/// A failed action, with the output needed to act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookFailure {
    /// `pre action`, `release of held lock` or `post action`.
    pub stage: String,
    /// The step.
    pub step: String,
    /// The command as written.
    pub command: String,
    /// Where and how it ended.
    #[serde(flatten)]
    pub invocation: HookInvocation,
    /// Last 4 KiB of stdout.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    /// Last 4 KiB of stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
}

fn invocation(i: &InvocationReport) -> HookInvocation {
    HookInvocation {
        namespace: i.target.namespace.clone(),
        pod: i.target.pod.clone(),
        container: i.target.container.clone(),
        result: i.result.to_string(),
        exit_code: i.result.exit_code(),
        duration_millis: millis(i.duration),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&GroupReport> for HooksRecord {
    fn from(r: &GroupReport) -> Self {
        let step = |stage: &str, name: &str, invocations: &[InvocationReport]| HookStep {
            stage: stage.into(),
            name: name.into(),
            invocations: invocations.iter().map(invocation).collect(),
        };
        let mut steps: Vec<HookStep> = r
            .pre
            .iter()
            .map(|s| step("pre", &s.name, &s.invocations))
            .collect();
        if !r.releases.is_empty() {
            steps.push(step("release", "held locks", &r.releases));
        }
        steps.extend(r.post.iter().map(|s| step("post", &s.name, &s.invocations)));
        HooksRecord {
            status: r.status.into(),
            freeze_window_millis: r.freeze_window.map(millis),
            max_freeze_millis: r.max_freeze.map(millis),
            exceeded: r.exceeded.as_ref().map(ToString::to_string),
            failures: r
                .failures
                .iter()
                .map(|f| HookFailure {
                    stage: f.stage.to_string(),
                    step: f.step.clone(),
                    command: f.invocation.command.clone(),
                    invocation: invocation(&f.invocation),
                    stdout_tail: f.invocation.stdout.clone(),
                    stderr_tail: f.invocation.stderr.clone(),
                })
                .collect(),
            steps,
            skipped: r
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.rule, s.reason))
                .collect(),
        }
    }
}

/// How one dump invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DumpStatus {
    /// Exit code 0, every byte stored and verified.
    Succeeded,
    /// Not stored (or stored but not trusted): see `error`.
    Failed,
}

/// One dump on one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpRecord {
    /// The dump's name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Container.
    pub container: String,
    /// Path inside the backup (`dumps/<dump>/<namespace>/<pod>`).
    pub artifact: String,
    /// Taken while the group was frozen.
    pub while_frozen: bool,
    /// Outcome.
    pub status: DumpStatus,
    /// Bytes stored (Succeeded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// sha256 of the bytes stored (Succeeded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The command's exit code, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Last 4 KiB of the command's stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// How long it ran, in milliseconds.
    pub duration_millis: u64,
}

impl DumpRecord {
    /// `dump <name> of <ns>/<pod>`, for messages.
    pub fn describe(&self) -> String {
        format!("dump {} of {}/{}", self.name, self.namespace, self.pod)
    }
}

/// The volume snapshot step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumesRecord {
    /// Snapshot references (`namespace/name` of each VolumeSnapshot or VolumeGroupSnapshot).
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// What the step has to say (e.g. why no snapshot was taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Claims whose data the movers copied (or failed to copy) into the repository (`volumes.moveData`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<MovedClaim>,
}

/// One claim's data in the storage's repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MovedClaim {
    /// Namespace of the claim.
    pub namespace: String,
    /// The claim.
    pub pvc: String,
    /// What the mover reported.
    #[serde(flatten)]
    pub mover: crate::snapshot::MoveRecord,
}

impl Manifest {
    /// Leave out what commands printed (hook output tails, dump stderr): the manifest stays readable
    /// without an identity, and command output may hold secrets. Used for encrypted backups; the
    /// output is still in the backup Job's log.
    pub fn withhold_output(&mut self) {
        if let Some(hooks) = self.hooks.as_mut() {
            for f in &mut hooks.failures {
                f.stdout_tail.clear();
                f.stderr_tail.clear();
            }
        }
        for d in &mut self.dumps {
            d.stderr_tail.clear();
        }
    }

    /// Parse a manifest, refusing formats newer than this build understands.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(ManifestError::TooNew(manifest.format_version));
        }
        Ok(manifest)
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid manifest JSON.
    #[error("manifest.json is not a valid manifest")]
    Json(#[source] serde_json::Error),
    /// Written by a newer freezeframe.
    #[error("manifest format {0} is newer than this freezeframe understands ({FORMAT_VERSION})")]
    TooNew(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_manifest_written_before_hooks_existed_when_read_then_it_parses_without_hook_fields() {
        let old = br#"{"formatVersion":1,"freezeframeVersion":"0.1.0","backupId":"20261123T120000Z",
            "policy":"shop","cluster":{"kubeSystemUid":"u"},"namespaces":["shop"],
            "startedAt":"2026-11-23T12:00:00Z","finishedAt":"2026-11-23T12:00:05Z","status":"Completed",
            "objects":{},"clusterObjects":{},"artifacts":{}}"#;
        let m = Manifest::from_json(old).unwrap();
        assert_eq!((m.hooks.is_none(), m.dumps.len(), m.problems.len()), (true, 0, 0));
        let json = serde_json::to_value(&m).unwrap();
        assert!(json.get("hooks").is_none() && json.get("dumps").is_none());
    }
}
