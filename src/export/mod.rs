//! Export: the Kubernetes objects a policy covers, sanitised and streamed into `resources.tar.zst`.
//!
//! What is exported:
//! - without `selector`: every namespaced kind the server serves (preferred version) that supports
//!   `list`, custom resources included, in each of the policy's namespaces, filtered by
//!   `resources.include/exclude` ([`filter`]). Events are excluded by default; Endpoints and
//!   EndpointSlices are exported but marked skip-on-restore in the manifest.
//! - with `selector`: only the [`closure`] of the selected pods.
//! - cluster-scoped objects the namespaces depend on, under `cluster/`: the Namespaces themselves, PVs
//!   bound to exported PVCs, their StorageClasses, CRDs of exported custom resources, ClusterRoles
//!   referenced by exported RoleBindings.
//!
//! Archive paths: `resources/<group or core>/<version>/<plural>/<namespace>/<name>.yaml` and
//! `cluster/<group or core>/<version>/<plural>/<name>.yaml`; objects are [`sanitize`]d.
//!
//! Memory does not grow with the number of objects: lists are paged (`limit`), each page is turned
//! into archive entries that pass through a small bounded channel into the single tar+zstd writer,
//! whose output is piped straight into the object store's streaming upload. At most `concurrency`
//! kinds are listed at once, and every list page and get first takes a token of the client rate limit
//! ([`limit`]: `qps`/`burst`, settings `FREEZEFRAME_KUBE_QPS`/`FREEZEFRAME_KUBE_BURST`).
//!
//! RBAC: `get`, `list` on every exported kind in the policy's namespaces; `get` on namespaces,
//! persistentvolumes, storageclasses, customresourcedefinitions, clusterroles.

pub mod archive;
pub mod closure;
pub mod filter;
pub mod labels;
pub mod limit;
pub mod sanitize;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{ApiResource, Discovery, verbs};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::ClientLimits;
use crate::policy::{Namespaces, Policy};
use crate::store::crypt::Sealing;
use crate::store::{self, ObjectStore, Written};
pub use filter::ResourceFilter;

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// API discovery failed.
    #[error("discovering the API server's resources")]
    Discovery(#[source] Box<kube::Error>),
    /// An API call failed.
    #[error("cannot {verb} {resource} in {scope}")]
    Kube {
        /// `list` or `get`.
        verb: &'static str,
        /// `plural.group` (and name for `get`).
        resource: String,
        /// Namespace, or `the cluster`.
        scope: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An object could not be turned into YAML.
    #[error("serialising {path}")]
    Serialize {
        /// Archive path.
        path: String,
        /// The error.
        #[source]
        source: serde_yaml::Error,
    },
    /// Writing the compressed archive into the upload pipe failed.
    #[error("writing the archive")]
    Archive(#[source] std::io::Error),
    /// The upload of the archive failed.
    #[error("uploading the archive to {key}")]
    Store {
        /// Object key.
        key: String,
        /// The store error.
        #[source]
        source: store::Error,
    },
}

/// Result of export operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tuning of an export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Client-side rate limit of the export's API calls.
    pub limits: ClientLimits,
    /// `limit` of each list call.
    pub page_size: u32,
    /// Kinds listed at once.
    pub concurrency: usize,
    /// Drop `kubectl.kubernetes.io/last-applied-configuration`.
    pub drop_last_applied: bool,
    /// Seconds since the epoch stamped on archive entries (the backup's start).
    pub mtime: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            limits: ClientLimits::default(),
            page_size: 500,
            concurrency: 4,
            drop_last_applied: false,
            mtime: 0,
        }
    }
}

/// What to export: resolved namespaces, the optional pod selector (closure mode) and the kind filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Namespaces, sorted.
    pub namespaces: Vec<String>,
    /// Pods whose closure is exported; `None` = whole namespaces.
    pub selector: Option<LabelSelector>,
    /// Kind filter.
    pub filter: ResourceFilter,
}

impl Selection {
    /// The selection a policy describes; a namespace selector is resolved against the cluster now.
    pub async fn for_policy(client: &kube::Client, policy: &Policy) -> Result<Selection> {
        let namespaces = match &policy.namespaces {
            Namespaces::Names(names) => names.clone(),
            Namespaces::Selector(selector) => {
                let api: Api<Namespace> = Api::all(client.clone());
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|source| Error::Kube {
                        verb: "list",
                        resource: "namespaces".into(),
                        scope: "the cluster".into(),
                        source: Box::new(source),
                    })?;
                let selector = labels::policy_selector(selector);
                list.items
                    .iter()
                    .filter(|ns| {
                        let labels = ns.metadata.labels.clone().unwrap_or_default();
                        selector.as_ref().is_some_and(|s| s.matches_map(&labels))
                    })
                    .filter_map(|ns| ns.metadata.name.clone())
                    .collect()
            }
        };
        let mut namespaces = namespaces;
        namespaces.sort();
        namespaces.dedup();
        Ok(Selection {
            namespaces,
            selector: policy.selector.clone(),
            filter: ResourceFilter::new(&policy.resources.include, &policy.resources.exclude),
        })
    }
}

/// What restore does with a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RestoreAction {
    /// Create the objects.
    Apply,
    /// Recorded only: controllers recreate them (Endpoints, EndpointSlices).
    Skip,
}

/// Objects of one kind in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindCount {
    /// `v1` or `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Objects exported.
    pub count: u64,
    /// What restore does with them.
    pub restore: RestoreAction,
}

/// The outcome of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Namespaced objects per kind (`plural` or `plural.group`).
    pub kinds: BTreeMap<String, KindCount>,
    /// Cluster-scoped objects per kind.
    pub cluster: BTreeMap<String, KindCount>,
    /// The archive as uploaded.
    pub archive: Written,
}

impl ExportReport {
    /// All objects in the archive.
    pub fn total(&self) -> u64 {
        self.kinds
            .values()
            .chain(self.cluster.values())
            .map(|k| k.count)
            .sum()
    }
}

/// A cluster-scoped object an exported object depends on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ClusterRef {
    Volume(String),
    StorageClass(String),
    ClusterRole(String),
}

/// One archive entry on its way to the writer.
struct Entry {
    resource: ApiResource,
    path: String,
    yaml: Vec<u8>,
    refs: Vec<ClusterRef>,
}

/// `<group or core>/<version>/<plural>`.
fn type_dir(resource: &ApiResource) -> String {
    let group = if resource.group.is_empty() {
        "core"
    } else {
        &resource.group
    };
    format!("{group}/{}/{}", resource.version, resource.plural)
}

/// The archive path of an object.
pub fn archive_path(resource: &ApiResource, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("resources/{}/{ns}/{name}.yaml", type_dir(resource)),
        None => format!("cluster/{}/{name}.yaml", type_dir(resource)),
    }
}

/// The legacy annotation that names the StorageClass of a claim or volume (still in many manifests).
pub const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// The StorageClass a PersistentVolumeClaim or PersistentVolume belongs to, as Kubernetes reads it
/// (`GetPersistentVolumeClaimClass`): the [`BETA_STORAGE_CLASS`] annotation when set, else
/// `spec.storageClassName`; `None` for none or `""`.
pub fn storage_class(obj: &Value) -> Option<String> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    match &obj["metadata"]["annotations"][BETA_STORAGE_CLASS] {
        Value::Null => text(&obj["spec"]["storageClassName"]),
        annotated => text(annotated),
    }
}

/// The cluster-scoped objects `obj` depends on.
fn cluster_refs(resource: &ApiResource, obj: &Value) -> Vec<ClusterRef> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let mut refs = Vec::new();
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "PersistentVolumeClaim") => {
            refs.extend(text(&obj["spec"]["volumeName"]).map(ClusterRef::Volume));
            refs.extend(storage_class(obj).map(ClusterRef::StorageClass));
        }
        ("rbac.authorization.k8s.io", "RoleBinding") if obj["roleRef"]["kind"] == "ClusterRole" => {
            refs.extend(text(&obj["roleRef"]["name"]).map(ClusterRef::ClusterRole));
        }
        _ => {}
    }
    refs
}

/// Turn a listed or fetched object into an archive entry (sanitised YAML).
fn entry(resource: &ApiResource, mut obj: Value, drop_last_applied: bool) -> Result<Entry> {
    // List items may lack apiVersion/kind; the archive always has them.
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), resource.api_version.clone().into());
        map.insert("kind".into(), resource.kind.clone().into());
    }
    let namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let path = archive_path(resource, namespace.as_deref(), &name);
    let refs = cluster_refs(resource, &obj);
    sanitize::sanitize(&mut obj, drop_last_applied);
    let yaml = serde_yaml::to_string(&obj)
        .map_err(|source| Error::Serialize {
            path: path.clone(),
            source,
        })?
        .into_bytes();
    Ok(Entry {
        resource: resource.clone(),
        path,
        yaml,
        refs,
    })
}

/// Thin, paging, optionally rate-limited access to the API for the export (one place for error context).
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
    page_size: u32,
    limiter: Option<Arc<limit::RateLimiter>>,
}

impl Kube {
    /// Access through `client`, listing `page_size` objects per call, not rate-limited.
    pub fn new(client: kube::Client, page_size: u32) -> Kube {
        Kube {
            client,
            page_size,
            limiter: None,
        }
    }

    /// The same access, every call first taking a token of a bucket shared by the clones of the result.
    pub fn limited(self, limits: ClientLimits) -> Kube {
        Kube {
            limiter: Some(Arc::new(limit::RateLimiter::new(limits))),
            ..self
        }
    }

    async fn throttle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Call `each` for every object of `resource` in `namespace`, one page in memory at a time.
    pub async fn for_each<F, Fut>(&self, resource: &ApiResource, namespace: &str, mut each: F) -> Result<()>
    where
        F: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let api = self.api(resource, Some(namespace));
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(self.page_size);
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            self.throttle().await;
            let page = api.list(&params).await.map_err(|source| Error::Kube {
                verb: "list",
                resource: filter::kind_id(resource),
                scope: format!("namespace {namespace}"),
                source: Box::new(source),
            })?;
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            for item in page.items {
                each(to_value(item)).await?;
            }
            if token.is_none() {
                return Ok(());
            }
        }
    }

    /// One object, or `None` if it does not exist.
    pub async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        self.throttle().await;
        self.api(resource, namespace)
            .get_opt(name)
            .await
            .map(|o| o.map(to_value))
            .map_err(|source| Error::Kube {
                verb: "get",
                resource: format!("{} {name}", filter::kind_id(resource)),
                scope: namespace.map_or("the cluster".into(), |ns| format!("namespace {ns}")),
                source: Box::new(source),
            })
    }
}

fn to_value(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// Namespaced kinds served in their preferred version that support `list`, filtered.
pub fn namespaced_kinds(discovery: &Discovery, filter: &ResourceFilter) -> Vec<ApiResource> {
    let mut kinds: Vec<ApiResource> = discovery
        .groups()
        .flat_map(|group| group.recommended_resources())
        .filter(|(resource, caps)| {
            caps.scope == kube::discovery::Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && filter.allows(resource)
        })
        .map(|(resource, _)| resource)
        .collect();
    kinds.sort_by_key(filter::kind_id);
    kinds.dedup_by_key(|r| filter::kind_id(r));
    kinds
}

/// Counts per kind and the cluster objects referenced, gathered by the writer.
#[derive(Default)]
struct Tally {
    kinds: BTreeMap<String, KindCount>,
    refs: BTreeSet<ClusterRef>,
}

impl Tally {
    fn add(&mut self, resource: &ApiResource) {
        let restore = if filter::skip_on_restore(resource) {
            RestoreAction::Skip
        } else {
            RestoreAction::Apply
        };
        self.kinds
            .entry(filter::kind_id(resource))
            .or_insert_with(|| KindCount {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
                count: 0,
                restore,
            })
            .count += 1;
    }
}

/// Export `selection` into `key` of `store` as a tar+zstd archive, encrypted as `sealing` says (the
/// report's `archive` is what is stored).
///
/// The archive is complete only if this returns `Ok`: any failure (API, serialisation, upload) aborts
/// the upload, so no object is committed under `key` by backends that commit on completion.
pub async fn export(
    client: &kube::Client,
    selection: &Selection,
    options: &ExportOptions,
    store: &dyn ObjectStore,
    key: &str,
    sealing: &Sealing,
) -> Result<ExportReport> {
    let kube = Kube::new(client.clone(), options.page_size).limited(options.limits);
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| Error::Discovery(Box::new(e)))?;
    let (pipe_writer, mut pipe_reader) = archive::pipe(256 * 1024);
    // The reader moves into the upload so it is dropped as soon as the upload ends: a failed upload
    // then fails the writer's next write instead of leaving it blocked on a full pipe.
    let upload = async move {
        store::crypt::put_artifact(store, key, &mut pipe_reader, sealing)
            .await
            .map(|stored| stored.stored)
            .map_err(|source| Error::Store {
                key: key.to_string(),
                source,
            })
    };
    let produce = async {
        let encoder = async_compression::tokio::write::ZstdEncoder::new(pipe_writer);
        let mut tar = archive::TarWriter::new(encoder, options.mtime);
        let (tx, mut rx) = mpsc::channel::<Entry>(64);
        let producers = produce_entries(&kube, &discovery, selection, options, tx);
        let writing = async {
            let mut tally = Tally::default();
            while let Some(entry) = rx.recv().await {
                tar.append(&entry.path, &entry.yaml)
                    .await
                    .map_err(Error::Archive)?;
                tally.add(&entry.resource);
                tally.refs.extend(entry.refs);
            }
            Ok::<_, Error>(tally)
        };
        let ((), tally) = tokio::try_join!(producers, writing)?;
        let cluster = write_cluster_objects(&kube, selection, options, &tally, &mut tar).await?;
        let mut encoder = tar.finish().await.map_err(Error::Archive)?;
        encoder.shutdown().await.map_err(Error::Archive)?;
        Ok((tally.kinds, cluster))
    };
    // Both sides always run to completion (`join`, not `try_join`): when the producer fails, the
    // upload sees the pipe end without a shutdown, fails, and cleans up (temp file, multipart upload).
    let (uploaded, produced) = tokio::join!(upload, produce);
    let (kinds, cluster) = produced?;
    let archive = uploaded?;
    Ok(ExportReport {
        kinds,
        cluster,
        archive,
    })
}

async fn produce_entries(
    kube: &Kube,
    discovery: &Discovery,
    selection: &Selection,
    options: &ExportOptions,
    tx: mpsc::Sender<Entry>,
) -> Result<()> {
    let drop_last_applied = options.drop_last_applied;
    // A closed channel means the writer failed; its error is the one reported, so stop quietly.
    let send = |tx: mpsc::Sender<Entry>, entry: Entry| async move {
        let _ = tx.send(entry).await;
        Ok::<(), Error>(())
    };
    match &selection.selector {
        None => {
            let kinds = namespaced_kinds(discovery, &selection.filter);
            let jobs: Vec<(String, ApiResource)> = selection
                .namespaces
                .iter()
                .flat_map(|ns| kinds.iter().map(move |k| (ns.clone(), k.clone())))
                .collect();
            futures::stream::iter(jobs.into_iter().map(Ok))
                .try_for_each_concurrent(options.concurrency.max(1), |(ns, resource)| {
                    let tx = tx.clone();
                    async move {
                        kube.for_each(&resource, &ns, |obj| {
                            let tx = tx.clone();
                            let resource = &resource;
                            async move { send(tx, entry(resource, obj, drop_last_applied)?).await }
                        })
                        .await
                    }
                })
                .await
        }
        Some(selector) => {
            for ns in &selection.namespaces {
                let objects = closure::closure(kube, discovery, ns, selector).await?;
                let mut objects = futures::stream::iter(objects);
                while let Some((resource, obj)) = objects.next().await {
                    if selection.filter.allows(&resource) {
                        send(tx.clone(), entry(&resource, obj, drop_last_applied)?).await?;
                    }
                }
            }
            Ok(())
        }
    }
}

/// Fetch and append the cluster-scoped objects the export depends on; returns their counts.
async fn write_cluster_objects<W: tokio::io::AsyncWrite + Unpin>(
    kube: &Kube,
    selection: &Selection,
    options: &ExportOptions,
    tally: &Tally,
    tar: &mut archive::TarWriter<W>,
) -> Result<BTreeMap<String, KindCount>> {
    let namespace = ApiResource::erase::<Namespace>(&());
    let volume = ApiResource::erase::<PersistentVolume>(&());
    let class = ApiResource::erase::<StorageClass>(&());
    let role = ApiResource::erase::<ClusterRole>(&());
    let crd = ApiResource::erase::<CustomResourceDefinition>(&());

    let mut wanted: Vec<(ApiResource, String)> = Vec::new();
    wanted.extend(
        selection
            .namespaces
            .iter()
            .map(|n| (namespace.clone(), n.clone())),
    );
    let mut classes = BTreeSet::new();
    for r in &tally.refs {
        match r {
            ClusterRef::Volume(name) => wanted.push((volume.clone(), name.clone())),
            ClusterRef::StorageClass(name) => {
                classes.insert(name.clone());
            }
            ClusterRef::ClusterRole(name) => wanted.push((role.clone(), name.clone())),
        }
    }
    // Custom resources: a kind whose `plural.group` names a CRD.
    wanted.extend(
        tally
            .kinds
            .keys()
            .filter(|id| id.contains('.'))
            .map(|id| (crd.clone(), id.clone())),
    );

    let mut counts = Tally::default();
    let mut append =
        async |resource: &ApiResource, name: &str, counts: &mut Tally| -> Result<Option<Value>> {
            let Some(obj) = kube.get(resource, None, name).await? else {
                return Ok(None);
            };
            let item = entry(resource, obj.clone(), options.drop_last_applied)?;
            tar.append(&item.path, &item.yaml).await.map_err(Error::Archive)?;
            counts.add(resource);
            Ok(Some(obj))
        };
    for (resource, name) in &wanted {
        let obj = append(resource, name, &mut counts).await?;
        if resource.kind == "PersistentVolume"
            && let Some(sc) = obj.as_ref().and_then(storage_class)
        {
            classes.insert(sc);
        }
    }
    for name in &classes {
        append(&class, name, &mut counts).await?;
    }
    Ok(counts.kinds)
}

#[cfg(test)]
mod storage_class_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_beta_annotation_then_it_names_the_class_over_the_spec_field() {
        let annotated = json!({"metadata": {"annotations": {BETA_STORAGE_CLASS: "legacy"}},
                               "spec": {"storageClassName": "fast"}});
        assert_eq!(storage_class(&annotated).as_deref(), Some("legacy"));
        let spec_only = json!({"metadata": {}, "spec": {"storageClassName": "fast"}});
        assert_eq!(storage_class(&spec_only).as_deref(), Some("fast"));
        let none = json!({"metadata": {}, "spec": {"storageClassName": ""}});
        assert_eq!(storage_class(&none), None);
    }
}
