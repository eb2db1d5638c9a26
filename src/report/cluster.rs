//! The cluster calls reporting makes, behind one narrow trait ([`Cluster`]): [`KubeCluster`] in
//! production, [`super::fake::FakeCluster`] in unit tests.
//!
//! RBAC: `namespaces` get (kube-system for the cluster identity, Event uids) and patch (the
//! last-backup annotation); `configmaps` get (the policy ConfigMap's uid); `events` create; `secrets`
//! get in freezeframe's namespace (webhook HMAC keys).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::Value;

use super::events::Involved;
use crate::backup::ClusterIdentity;

/// What reporting reads from and writes to the cluster.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// The cluster's identity (the `kube-system` namespace's uid).
    async fn identity(&self) -> kube::Result<ClusterIdentity>;
    /// The uid of the object an Event is about; `None` when it does not exist.
    async fn uid(&self, object: &Involved) -> kube::Result<Option<String>>;
    /// Create `event` (a core v1 Event as JSON) in `namespace`.
    async fn create_event(&self, namespace: &str, event: &Value) -> kube::Result<()>;
    /// Merge-patch the Namespace `name`.
    async fn patch_namespace(&self, name: &str, patch: &Value) -> kube::Result<()>;
    /// The data of the Secret `namespace/name`; `None` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> kube::Result<Option<BTreeMap<String, Vec<u8>>>>;
}

/// [`Cluster`] through a kube client.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
}

impl KubeCluster {
    /// Talk to the cluster of `client`.
    pub fn new(client: kube::Client) -> KubeCluster {
        KubeCluster { client }
    }
}

#[async_trait::async_trait]
impl Cluster for KubeCluster {
    async fn identity(&self) -> kube::Result<ClusterIdentity> {
        let ns = Api::<Namespace>::all(self.client.clone())
            .get("kube-system")
            .await?;
        Ok(ClusterIdentity {
            kube_system_uid: ns.metadata.uid.unwrap_or_default(),
        })
    }

    async fn uid(&self, object: &Involved) -> kube::Result<Option<String>> {
        let meta = match object {
            Involved::Namespace(name) => Api::<Namespace>::all(self.client.clone())
                .get_opt(name)
                .await?
                .map(|o| o.metadata),
            Involved::ConfigMap { namespace, name } => {
                Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
                    .get_opt(name)
                    .await?
                    .map(|o| o.metadata)
            }
        };
        Ok(meta.and_then(|m| m.uid))
    }

    async fn create_event(&self, namespace: &str, event: &Value) -> kube::Result<()> {
        let event: Event = serde_json::from_value(event.clone()).map_err(kube::Error::SerdeError)?;
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await?;
        Ok(())
    }

    async fn patch_namespace(&self, name: &str, patch: &Value) -> kube::Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn secret(&self, namespace: &str, name: &str) -> kube::Result<Option<BTreeMap<String, Vec<u8>>>> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?;
        Ok(secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        }))
    }
}
