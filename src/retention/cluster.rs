//! The cluster side of pruning: [`Snapshots`] over the Kubernetes API (VolumeSnapshots and
//! VolumeGroupSnapshots labelled with the policy and backup id).
//!
//! Only objects carrying both labels (`freezeframe.dev/policy`, `freezeframe.dev/backup-id`) of the
//! backup being pruned are deleted, and with a uid precondition, so a snapshot of another cluster or run
//! that happens to have the recorded name is never touched. A committed backup sets its contents to
//! `deletionPolicy: Retain` (so the storage snapshots survive the namespace's deletion); pruning sets
//! each recorded content that is still bound to the backup's snapshot back to `Delete` and deletes it,
//! so the CSI driver deletes the storage snapshot.
//!
//! RBAC needed (mirror in `manifests/rbac.yaml`, ClusterRole `freezeframe-retention`):
//! `snapshot.storage.k8s.io` `volumesnapshots` get/list/delete and `groupsnapshot.storage.k8s.io`
//! `volumegroupsnapshots` get/list/delete, in every namespace a policy covers (listed cluster-wide by
//! label); `volumesnapshotcontents` and `volumegroupsnapshotcontents` get/patch/delete (cluster-scoped).

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::discovery::{ApiResource, Discovery};

use super::prune::{ContentRef, Deletion, SnapshotError, SnapshotKind, SnapshotRef, Snapshots};
use crate::snapshot::{BACKUP_ID_LABEL, POLICY_LABEL};
use crate::store::BackupId;

const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
const GROUP_SNAPSHOT_GROUP: &str = "groupsnapshot.storage.k8s.io";

/// Snapshot deletion against a cluster; a kind whose API is not served has no objects.
#[derive(Clone)]
pub struct KubeSnapshots {
    client: kube::Client,
    volume: Option<ApiResource>,
    group: Option<ApiResource>,
    volume_content: Option<ApiResource>,
    group_content: Option<ApiResource>,
}

impl KubeSnapshots {
    /// Discover which snapshot kinds the cluster serves.
    pub async fn new(client: kube::Client) -> Result<KubeSnapshots, SnapshotError> {
        let discovery = Discovery::new(client.clone())
            .filter(&[SNAPSHOT_GROUP, GROUP_SNAPSHOT_GROUP])
            .run()
            .await
            .map_err(|e| SnapshotError::Discovery(Box::new(e)))?;
        let served = |group: &str, kind: &str| {
            discovery
                .get(group)
                .and_then(|g| g.recommended_kind(kind))
                .map(|(resource, _)| resource)
        };
        Ok(KubeSnapshots {
            volume: served(SNAPSHOT_GROUP, "VolumeSnapshot"),
            group: served(GROUP_SNAPSHOT_GROUP, "VolumeGroupSnapshot"),
            volume_content: served(SNAPSHOT_GROUP, "VolumeSnapshotContent"),
            group_content: served(GROUP_SNAPSHOT_GROUP, "VolumeGroupSnapshotContent"),
            client,
        })
    }

    fn resource(&self, kind: SnapshotKind) -> Option<&ApiResource> {
        match kind {
            SnapshotKind::VolumeSnapshot => self.volume.as_ref(),
            SnapshotKind::VolumeGroupSnapshot => self.group.as_ref(),
        }
    }
}

fn api_error(verb: &'static str, what: String) -> impl FnOnce(kube::Error) -> SnapshotError {
    move |source| SnapshotError::Kube {
        verb,
        what,
        source: Box::new(source),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[async_trait::async_trait]
impl Snapshots for KubeSnapshots {
    async fn labelled(&self, policy: &str, backup: &BackupId) -> Result<Vec<SnapshotRef>, SnapshotError> {
        let selector = format!("{POLICY_LABEL}={policy},{BACKUP_ID_LABEL}={backup}");
        let mut out = Vec::new();
        for kind in [SnapshotKind::VolumeGroupSnapshot, SnapshotKind::VolumeSnapshot] {
            let Some(resource) = self.resource(kind) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(api_error(
                    "list",
                    format!("{} labelled {selector}", resource.plural),
                ))?;
            out.extend(list.items.into_iter().map(|o| SnapshotRef {
                kind,
                namespace: o.metadata.namespace.unwrap_or_default(),
                name: o.metadata.name.unwrap_or_default(),
            }));
        }
        Ok(out)
    }

    async fn delete(
        &self,
        snapshot: &SnapshotRef,
        policy: &str,
        backup: &BackupId,
    ) -> Result<Deletion, SnapshotError> {
        let Some(resource) = self.resource(snapshot.kind) else {
            return Ok(Deletion::Gone);
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &snapshot.namespace, resource);
        let Some(current) = api
            .get_opt(&snapshot.name)
            .await
            .map_err(api_error("get", snapshot.to_string()))?
        else {
            return Ok(Deletion::Gone);
        };
        let labels = current.metadata.labels.unwrap_or_default();
        let ours = labels.get(POLICY_LABEL).map(String::as_str) == Some(policy)
            && labels.get(BACKUP_ID_LABEL).map(String::as_str) == Some(backup.as_str());
        if !ours {
            return Ok(Deletion::NotOurs);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: current.metadata.uid,
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&snapshot.name, &params).await {
            Ok(_) => Ok(Deletion::Deleted),
            Err(e) if is_not_found(&e) => Ok(Deletion::Gone),
            Err(e) => Err(api_error("delete", snapshot.to_string())(e)),
        }
    }

    async fn delete_content(&self, content: &ContentRef) -> Result<Deletion, SnapshotError> {
        let (resource, ref_field) = match content.kind {
            SnapshotKind::VolumeSnapshot => (self.volume_content.as_ref(), "volumeSnapshotRef"),
            SnapshotKind::VolumeGroupSnapshot => (self.group_content.as_ref(), "volumeGroupSnapshotRef"),
        };
        let Some(resource) = resource else {
            return Ok(Deletion::Gone);
        };
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let Some(current) = api
            .get_opt(&content.name)
            .await
            .map_err(api_error("get", content.to_string()))?
        else {
            return Ok(Deletion::Gone);
        };
        let bound_to = &current.data["spec"][ref_field];
        if bound_to["namespace"] != content.snapshot.namespace.as_str()
            || bound_to["name"] != content.snapshot.name.as_str()
        {
            return Ok(Deletion::NotOurs);
        }
        if current.data["spec"]["deletionPolicy"] != "Delete" {
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"deletionPolicy": "Delete"}
            });
            api.patch(&content.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_error("patch", format!("{content} to deletionPolicy Delete")))?;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: current.metadata.uid,
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&content.name, &params).await {
            Ok(_) => Ok(Deletion::Deleted),
            Err(e) if is_not_found(&e) => Ok(Deletion::Gone),
            Err(e) => Err(api_error("delete", content.to_string())(e)),
        }
    }
}
