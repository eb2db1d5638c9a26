//! `manifest.json`: the commit marker of a backup, written last. A backup without one is incomplete.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use crate::export::KindCount;
use crate::store::Written;

/// The manifest format this build writes; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 1;

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
}

impl Manifest {
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
