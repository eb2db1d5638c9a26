//! One backup of one policy, in order: allocate the id → export resources (streamed upload) → verify
//! every artifact against the store → write `manifest.json` last.
//!
//! Hooks, snapshots and dumps join this sequence as their issues land. Any error before the manifest
//! is written leaves no manifest: the backup shows as incomplete, never as a lie.

pub mod command;
pub mod manifest;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;

use crate::clock::Clock;
use crate::export::{self, ExportOptions, Selection};
use crate::store::{self, BackupId, Layout, ObjectStore, layout};
pub use manifest::{ClusterIdentity, FORMAT_VERSION, Manifest, ManifestError, Status};

/// Errors of a backup run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the cluster identity (`kube-system` uid) failed.
    #[error("cannot read the kube-system namespace (cluster identity)")]
    ClusterIdentity(#[source] Box<kube::Error>),
    /// The export failed.
    #[error("exporting resources")]
    Export(#[source] export::Error),
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
}

/// The cluster's identity: the uid of `kube-system`.
pub async fn cluster_identity(client: &kube::Client) -> Result<ClusterIdentity> {
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns = api
        .get("kube-system")
        .await
        .map_err(|e| Error::ClusterIdentity(Box::new(e)))?;
    Ok(ClusterIdentity {
        kube_system_uid: ns.metadata.uid.unwrap_or_default(),
    })
}

/// Run one backup of `policy` covering `selection`; returns the committed manifest.
pub async fn run(
    ctx: &Context<'_>,
    policy: &str,
    selection: &Selection,
    options: &ExportOptions,
) -> Result<Manifest> {
    let started_at = ctx.clock.now();
    let cluster = cluster_identity(&ctx.client).await?;
    let id = BackupId::allocate(ctx.store, ctx.layout, policy, started_at)
        .await
        .map_err(store_error("choosing a backup id"))?;
    let keys = ctx.layout.backup(policy, &id);
    tracing::info!(policy, backup = %id, store = %ctx.store.location(), "backup started");

    let options = ExportOptions {
        mtime: started_at.timestamp().max(0) as u64,
        ..options.clone()
    };
    let report = export::export(&ctx.client, selection, &options, ctx.store, &keys.resources())
        .await
        .map_err(Error::Export)?;
    store::verify(ctx.store, &keys.resources(), &report.archive)
        .await
        .map_err(store_error(format!("verifying {}", keys.resources())))?;

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        freezeframe_version: env!("CARGO_PKG_VERSION").to_string(),
        backup_id: id.to_string(),
        policy: policy.to_string(),
        cluster,
        namespaces: selection.namespaces.clone(),
        selector: selection.selector.clone(),
        started_at,
        finished_at: ctx.clock.now(),
        status: Status::Completed,
        objects: report.kinds.clone(),
        cluster_objects: report.cluster.clone(),
        artifacts: BTreeMap::from([(layout::RESOURCES.to_string(), report.archive.clone())]),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");
    store::put_bytes(ctx.store, &keys.manifest(), &json)
        .await
        .map_err(store_error(format!("writing {}", keys.manifest())))?;
    tracing::info!(policy, backup = %id, objects = report.total(), bytes = report.archive.size, "backup committed");
    Ok(manifest)
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
    /// The manifest; `None` = incomplete (failed or still running).
    pub manifest: Option<Manifest>,
}

/// Every backup in the store (of `policy`, or of all policies), oldest first.
pub async fn list(
    store: &dyn ObjectStore,
    layout: &Layout,
    policy: Option<&str>,
) -> Result<Vec<StoredBackup>> {
    let prefix = policy.map_or_else(|| layout.backups(), |p| layout.policy(p));
    let objects = store
        .list(&prefix)
        .await
        .map_err(store_error(format!("listing {prefix}")))?;
    let mut found: BTreeMap<(String, BackupId), (u64, bool)> = BTreeMap::new();
    for object in &objects {
        if let Some((policy, id, artifact)) = layout.parse(&object.key) {
            let entry = found.entry((policy.to_string(), id)).or_default();
            entry.0 += object.size;
            entry.1 |= artifact == layout::MANIFEST;
        }
    }
    let mut out = Vec::new();
    for ((policy, id), (size, has_manifest)) in found {
        let manifest = if has_manifest {
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
            size,
            manifest,
        });
    }
    out.sort_by(|a, b| (&a.id, &a.policy).cmp(&(&b.id, &b.policy)));
    Ok(out)
}
