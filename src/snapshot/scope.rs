//! The claims in scope: every PVC of the policy's namespaces, or only those in the selected pods'
//! closure (the same closure the export uses); bound claims on a CSI volume are snapshotted, the rest
//! are reported as skipped with the reason.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::ListParams;
use kube::discovery::Discovery;
use serde::Serialize;

use super::{Error, Result};
use crate::export::{self, Selection};

/// A bound claim on a CSI volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its PersistentVolume.
    pub volume: String,
    /// `status.capacity.storage`.
    pub capacity: Option<String>,
    /// The StorageClass provisioner, else the volume's CSI driver.
    pub driver: String,
    /// `spec.csi.volumeHandle` of the volume (maps group snapshot members back to claims).
    pub volume_handle: String,
}

/// A claim in scope that is not snapshotted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// Namespace.
    pub namespace: String,
    /// Claim name.
    pub pvc: String,
    /// Why.
    pub reason: String,
}

fn kube_error(verb: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube {
        verb,
        what,
        source: Box::new(source),
    }
}

/// The claims of `selection`, split into snapshot-able ones and skipped ones.
pub async fn claims(
    client: &kube::Client,
    discovery: &Discovery,
    selection: &Selection,
) -> Result<(Vec<Claim>, Vec<Skipped>)> {
    let mut pvcs: Vec<PersistentVolumeClaim> = Vec::new();
    for ns in &selection.namespaces {
        match &selection.selector {
            None => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(kube_error("list", format!("persistentvolumeclaims in {ns}")))?;
                pvcs.extend(list.items);
            }
            Some(selector) => {
                let kube = export::Kube::new(client.clone(), 500);
                let objects = export::closure::closure(&kube, discovery, ns, selector)
                    .await
                    .map_err(|e| Error::Closure(Box::new(e)))?;
                for (resource, obj) in objects {
                    if resource.group.is_empty() && resource.kind == "PersistentVolumeClaim" {
                        let pvc = serde_json::from_value(obj).map_err(Error::Decode)?;
                        pvcs.push(pvc);
                    }
                }
            }
        }
    }
    let mut provisioners: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut claims = Vec::new();
    let mut skipped = Vec::new();
    for pvc in pvcs {
        let namespace = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let skip = |reason: String| Skipped {
            namespace: namespace.clone(),
            pvc: name.clone(),
            reason,
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            skipped.push(skip("being deleted".into()));
            continue;
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        let status = pvc.status.clone().unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
        let volume = spec.volume_name.clone().filter(|v| !v.is_empty());
        let Some(volume) = volume.filter(|_| phase == "Bound") else {
            skipped.push(skip(format!("not bound (phase {phase})")));
            continue;
        };
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get_opt(&volume)
            .await
            .map_err(kube_error("get", format!("persistentvolume {volume}")))?;
        let Some(csi) = pv.and_then(|pv| pv.spec).and_then(|s| s.csi) else {
            skipped.push(skip(format!(
                "volume {volume} is not a CSI volume (only CSI volumes can be snapshotted)"
            )));
            continue;
        };
        let provisioner = match spec.storage_class_name.filter(|c| !c.is_empty()) {
            Some(class) => {
                if !provisioners.contains_key(&class) {
                    let sc = Api::<StorageClass>::all(client.clone())
                        .get_opt(&class)
                        .await
                        .map_err(kube_error("get", format!("storageclass {class}")))?;
                    provisioners.insert(class.clone(), sc.map(|sc| sc.provisioner));
                }
                provisioners[&class].clone()
            }
            None => None,
        };
        claims.push(Claim {
            namespace,
            name,
            volume,
            capacity: status
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.clone()),
            driver: provisioner.unwrap_or(csi.driver),
            volume_handle: csi.volume_handle,
        });
    }
    claims.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    skipped.sort_by(|a, b| (&a.namespace, &a.pvc).cmp(&(&b.namespace, &b.pvc)));
    Ok((claims, skipped))
}
