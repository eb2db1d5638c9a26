//! The restore plan: every archived object, in dependency order, with what restore does to it and why.
//!
//! Order (phases): CRDs → Namespaces → cluster dependencies (StorageClasses, PVs, ClusterRoles) →
//! configuration (ServiceAccounts, Secrets, ConfigMaps, Roles, RoleBindings, LimitRanges,
//! ResourceQuotas) → PVCs → Services → workloads (StatefulSets, Deployments, DaemonSets, CronJobs,
//! Jobs, others) → everything else → custom resources.
//!
//! Skipped, with the reason shown in the plan:
//! - derived objects: events, and kinds the manifest marks skip-on-restore (Endpoints, EndpointSlices)
//!   unless they belong to a Service without a selector (users manage those: restored) and, for
//!   EndpointSlices, carry no `endpointslice.kubernetes.io/managed-by` label;
//! - controller-owned objects: Pods and ReplicaSets with a controller, and any object whose controller
//!   is itself in the backup (a CronJob's Jobs, a Job's Pods) — the restored controller recreates them.
//!   PVCs are the exception: their data matters, so they are restored and the workload adopts them;
//! - what every cluster makes itself: the `default` ServiceAccount, the `kube-root-ca.crt` ConfigMap,
//!   service-account token Secrets;
//! - kinds not allowed by `--include`/`--exclude`, namespaced objects not matching `--selector`;
//! - cluster-scoped objects nothing restored needs, and dynamically provisioned PVs (their claims get
//!   a new volume, from the snapshot when one is recorded);
//! - VolumeSnapshots and VolumeGroupSnapshots freezeframe made (labels `freezeframe.dev/policy`,
//!   `freezeframe.dev/restored`): recreated, they would snapshot the restored claims again; their data
//!   comes back inside the claims.
//!
//! Cluster-scoped objects are only ever created when missing ("ensure"), never changed, whatever
//! `--existing` says: they may be shared with other applications of the target cluster.
//!
//! [`rewrite`] turns an archived object into what is sent: namespaces mapped everywhere (metadata,
//! RoleBinding subjects, PV claimRefs, the Namespace itself), Service cluster IPs reset, claims
//! unbound from volumes that are not restored (and stripped of the binder's annotations), Job
//! selectors regenerated.
//!
//! Claims: the plan records what the backup holds for each claim's data ([`Recorded`]: a CSI snapshot,
//! a repository copy). It is made from the backup alone; [`super::rebind`] then looks at the target,
//! chooses each claim's source by `--volumes-from` ([`choose`]: in another cluster the repository
//! comes before a snapshot whose storage may be gone) and switches claims whose own volume was left
//! `Released` there to [`Claim::Rebind`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::discovery::ApiResource;
use serde::Serialize;
use serde_json::{Value, json};

use super::source::Extracted;
use super::volumes::{self, ClaimSource, Snapshots};
use super::{Error, Result};
use crate::backup::Manifest;
use crate::export::{ResourceFilter, RestoreAction, filter};
use freezeframe_selector::LabelSelector;

/// What to do with objects that already exist in the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum Existing {
    /// Leave them as they are (the default; re-running a restore changes nothing).
    #[default]
    Skip,
    /// Server-side apply the backup's version (field manager `freezeframe`, forced).
    Update,
    /// Count them as failures.
    Fail,
}

/// Where restored claims get their data (`--volumes-from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum VolumesFrom {
    /// Per claim, the first that applies: re-bind its released volume (same cluster and namespace),
    /// the snapshot when the target is the backup's own cluster, the repository copy, the snapshot
    /// (another cluster on the same storage), a new empty volume.
    #[default]
    Auto,
    /// Only snapshots (claims without one get a new empty volume).
    Snapshot,
    /// Only the repository (claims without a copy get a new empty volume).
    Repository,
}

/// What the backup recorded for a claim's data, kept on its step so the choice can be made once the
/// target is known ([`choose`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Its CSI snapshot, as the restored claim would use it.
    pub snapshot: Option<ClaimSource>,
    /// Its repository snapshot (`volumes.moveData`).
    pub repository: Option<String>,
    /// The binding without recorded data: keep the restored static volume, or a new empty one.
    pub without: Claim,
}

/// The source of a claim's data by [`VolumesFrom`], knowing whether the target is the backup's own
/// cluster (where its snapshots surely are). Pure.
pub fn choose(recorded: &Recorded, same_cluster: bool, from: VolumesFrom) -> Claim {
    let snapshot = || recorded.snapshot.clone().map(Claim::FromSnapshot);
    let repository = || recorded.repository.clone().map(Claim::FromRepository);
    let chosen = match from {
        VolumesFrom::Snapshot => snapshot(),
        VolumesFrom::Repository => repository(),
        VolumesFrom::Auto if same_cluster => snapshot().or_else(repository),
        VolumesFrom::Auto => repository().or_else(snapshot),
    };
    chosen.unwrap_or_else(|| recorded.without.clone())
}

/// How the plan is made.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Source namespace → target namespace; unmapped namespaces keep their name.
    pub namespace_map: BTreeMap<String, String>,
    /// Kinds to restore (`*`, plural, `plural.group` or Kind); empty = all.
    pub include: Vec<String>,
    /// Kinds not to restore (same forms).
    pub exclude: Vec<String>,
    /// Label selector (kubectl syntax) namespaced objects must match.
    pub selector: Option<String>,
    /// What to do with existing objects.
    pub existing: Existing,
    /// Where claims get their data.
    pub volumes_from: VolumesFrom,
}

impl PlanOptions {
    /// Parse `src=dst` pairs into a namespace map.
    pub fn parse_namespace_map(pairs: &[String]) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let bad = |reason: &str| Error::InvalidOption {
                option: "--namespace-map",
                value: pair.clone(),
                reason: reason.to_string(),
            };
            let (src, dst) = pair.split_once('=').ok_or_else(|| bad("expected src=dst"))?;
            for ns in [src, dst] {
                crate::policy::values::check_dns_label(ns)
                    .map_err(|_| bad("namespaces must be DNS labels"))?;
            }
            if map.insert(src.to_string(), dst.to_string()).is_some() {
                return Err(bad("source namespace mapped twice"));
            }
        }
        Ok(map)
    }
}

/// Restore phases, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Phase {
    /// CustomResourceDefinitions (then wait for Established).
    CustomResourceDefinitions,
    /// Namespaces.
    Namespaces,
    /// StorageClasses, PersistentVolumes, ClusterRoles.
    ClusterDependencies,
    /// ServiceAccounts, Secrets, ConfigMaps, Roles, RoleBindings, LimitRanges, ResourceQuotas.
    Configuration,
    /// PersistentVolumeClaims.
    Claims,
    /// Services.
    Services,
    /// StatefulSets, Deployments, DaemonSets, CronJobs, Jobs and other pod owners.
    Workloads,
    /// Every other built-in kind.
    Other,
    /// Custom resources.
    CustomResources,
}

/// Why an object is not restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "reason", content = "detail")]
pub enum SkipReason {
    /// Recreated by controllers from other objects (Endpoints, EndpointSlices, events).
    Derived,
    /// Recreated by its restored controller (named).
    ControllerOwned(String),
    /// Every cluster makes it itself (default ServiceAccount, kube-root-ca.crt, token Secrets).
    ClusterManaged,
    /// Its kind is not allowed by `--include`/`--exclude`.
    Excluded,
    /// Does not match `--selector`.
    NotSelected,
    /// A cluster-scoped object nothing restored needs.
    NotNeeded,
    /// A dynamically provisioned volume: its claim gets a new one.
    Reprovisioned,
    /// A VolumeSnapshot or VolumeGroupSnapshot freezeframe made (a backup's, or a restore's
    /// pre-provisioned one): its data comes back inside the claims, through `volumes.json`.
    FreezeframeSnapshot,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Derived => f.write_str("derived"),
            SkipReason::ControllerOwned(owner) => write!(f, "owned by {owner}"),
            SkipReason::ClusterManaged => f.write_str("made by the cluster"),
            SkipReason::Excluded => f.write_str("kind excluded"),
            SkipReason::NotSelected => f.write_str("not selected"),
            SkipReason::NotNeeded => f.write_str("not needed"),
            SkipReason::Reprovisioned => f.write_str("volume re-provisioned"),
            SkipReason::FreezeframeSnapshot => f.write_str("freezeframe's snapshot (restored as claim data)"),
        }
    }
}

/// What restore does with one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Create; an existing object is handled per `--existing`.
    Create,
    /// Create if missing, otherwise leave it (cluster-scoped objects and namespaces).
    Ensure,
    /// Not restored.
    Skip(SkipReason),
}

/// How a claim is bound on restore.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Claim {
    /// Not a claim, or its static volume is restored too: keep `volumeName`.
    #[default]
    Keep,
    /// Drop `volumeName`: a new volume is provisioned.
    Reprovision,
    /// Reprovision from a snapshot.
    FromSnapshot(ClaimSource),
    /// A new empty volume, filled from the repository snapshot (id) by a restore mover before any
    /// workload that mounts it is created.
    FromRepository(String),
    /// Re-bind the claim's own volume (named), left `Released` with reclaim policy `Retain` in the
    /// target cluster: its `claimRef` is rewritten to the restored claim first ([`super::rebind`]).
    Rebind(String),
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Keep => write!(f, "restored volume"),
            Claim::Reprovision => write!(f, "new empty volume"),
            Claim::FromSnapshot(source) => write!(f, "new volume from snapshot {}", source.volume_snapshot),
            Claim::FromRepository(id) => write!(
                f,
                "new volume filled from repository snapshot {}",
                &id[..id.len().min(8)]
            ),
            Claim::Rebind(volume) => write!(f, "re-bind released volume {volume}"),
        }
    }
}

/// One object of the archive with what restore does to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When it is applied.
    pub phase: Phase,
    /// `plural` or `plural.group`.
    pub kind: String,
    /// Archive path.
    pub path: String,
    /// Its API type (from the archive path; the object's kind).
    pub resource: ApiResource,
    /// Namespace in the backup (namespaced objects).
    pub source_namespace: Option<String>,
    /// Namespace it is restored into.
    pub namespace: Option<String>,
    /// Name in the target (a mapped Namespace's new name).
    pub name: String,
    /// What happens.
    pub action: Action,
    /// Claim binding (PVCs only).
    pub claim: Claim,
    /// The volume the claim was bound to in the backup (PVCs only).
    pub volume: Option<String>,
    /// What the backup recorded for the claim's data (PVCs only).
    pub recorded: Recorded,
}

impl Step {
    /// `namespace/name` or `name`.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Whether it is created or ensured.
    pub fn is_applied(&self) -> bool {
        !matches!(self.action, Action::Skip(_))
    }
}

/// The ordered steps of a restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps in apply order.
    pub steps: Vec<Step>,
    /// Source → target namespaces (identity entries included).
    pub namespaces: BTreeMap<String, String>,
    /// What to do with existing objects.
    pub existing: Existing,
}

impl Plan {
    /// Steps that create or ensure something.
    pub fn applied(&self) -> usize {
        self.steps.iter().filter(|s| s.is_applied()).count()
    }

    fn map_ns(&self, ns: &str) -> String {
        self.namespaces.get(ns).cloned().unwrap_or_else(|| ns.to_string())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "PHASE\tKIND\tOBJECT\tACTION")?;
        for s in &self.steps {
            let action = match &s.action {
                Action::Create => format!("create (existing: {:?})", self.existing).to_lowercase(),
                Action::Ensure => "create if missing".to_string(),
                Action::Skip(reason) => format!("skip: {reason}"),
            };
            let volume = match (&s.action, s.kind.as_str()) {
                (Action::Create, "persistentvolumeclaims") => format!("; volume: {}", s.claim),
                _ => String::new(),
            };
            writeln!(
                f,
                "{:?}\t{}\t{}\t{action}{volume}",
                s.phase,
                s.kind,
                s.display_name()
            )?;
        }
        Ok(())
    }
}

/// What the plan needs to know of one archived object (the object itself stays on disk).
#[derive(Debug, Clone)]
struct Item {
    path: String,
    resource: ApiResource,
    kind: String,
    namespace: Option<String>,
    name: String,
    labels: Value,
    /// Controlling owner `(Kind, name)`.
    controller: Option<(String, String)>,
    /// Cluster-scoped objects it needs: (kind id, name).
    needs: Vec<(String, String)>,
    secret_type: Option<String>,
    /// PV: dynamically provisioned.
    provisioned: bool,
    /// PVC: bound volume.
    volume_name: Option<String>,
    /// Service: has a selector (its Endpoints/EndpointSlices are then derived).
    selects: bool,
    /// EndpointSlice: managed by a controller (label `endpointslice.kubernetes.io/managed-by`).
    managed_slice: bool,
    /// Endpoints/EndpointSlice: the Service they belong to.
    service: Option<String>,
    /// A (group) snapshot labelled by freezeframe.
    freezeframe_snapshot: bool,
}

const CRD: &str = "customresourcedefinitions.apiextensions.k8s.io";
/// Snapshot kinds whose freezeframe-labelled objects are not restored as objects.
const FREEZEFRAME_SNAPSHOTS: &[&str] = &[
    "volumesnapshots.snapshot.storage.k8s.io",
    "volumegroupsnapshots.groupsnapshot.storage.k8s.io",
];
const NAMESPACES: &str = "namespaces";
const VOLUMES: &str = "persistentvolumes";
const CLASSES: &str = "storageclasses.storage.k8s.io";
const CLUSTER_ROLES: &str = "clusterroles.rbac.authorization.k8s.io";

/// The API type and namespace an archive path names (validated by `source::check_entry_path`).
fn parse_path(path: &str, kind: &str) -> Option<(ApiResource, Option<String>, String)> {
    let parts: Vec<&str> = path.trim_end_matches(".yaml").split('/').collect();
    let (group, version, plural, namespace, name) = match parts.as_slice() {
        ["resources", g, v, p, ns, n] => (*g, *v, *p, Some(ns.to_string()), *n),
        ["cluster", g, v, p, n] => (*g, *v, *p, None, *n),
        _ => return None,
    };
    let group = if group == "core" { "" } else { group };
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some((
        ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version,
            kind: kind.to_string(),
            plural: plural.to_string(),
        },
        namespace,
        name.to_string(),
    ))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

impl Item {
    fn read(path: &str, obj: &Value) -> Result<Item> {
        let inconsistent = |reason: String| Error::Inconsistent {
            path: path.to_string(),
            reason,
        };
        let kind = text(&obj["kind"]).ok_or_else(|| inconsistent("no kind".into()))?;
        let (resource, namespace, name) =
            parse_path(path, &kind).ok_or_else(|| inconsistent("unknown path layout".into()))?;
        if obj["apiVersion"].as_str() != Some(resource.api_version.as_str()) {
            return Err(inconsistent(format!(
                "apiVersion {} does not match the path",
                obj["apiVersion"]
            )));
        }
        if obj["metadata"]["name"].as_str() != Some(name.as_str())
            || obj["metadata"]["namespace"].as_str() != namespace.as_deref()
        {
            return Err(inconsistent(
                "metadata.namespace/name do not match the path".into(),
            ));
        }
        let kind_id = filter::kind_id(&resource);
        let controller = obj["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == true)
            .and_then(|r| Some((text(&r["kind"])?, text(&r["name"])?)));
        let mut needs = Vec::new();
        let mut need = |kind: &str, name: Option<String>| {
            if let Some(n) = name {
                needs.push((kind.to_string(), n));
            }
        };
        let mut volume_name = None;
        match kind_id.as_str() {
            "persistentvolumeclaims" => {
                volume_name = text(&obj["spec"]["volumeName"]);
                need(VOLUMES, volume_name.clone());
                need(CLASSES, crate::export::storage_class(obj));
            }
            VOLUMES => need(CLASSES, crate::export::storage_class(obj)),
            "rolebindings.rbac.authorization.k8s.io" if obj["roleRef"]["kind"] == "ClusterRole" => {
                need(CLUSTER_ROLES, text(&obj["roleRef"]["name"]))
            }
            id if id.contains('.') && namespace.is_some() => need(CRD, Some(id.to_string())),
            _ => {}
        }
        let freezeframe_snapshot = FREEZEFRAME_SNAPSHOTS.contains(&kind_id.as_str())
            && ["freezeframe.dev/policy", "freezeframe.dev/restored"]
                .iter()
                .any(|l| obj["metadata"]["labels"].get(*l).is_some());
        let service = match kind_id.as_str() {
            "endpoints" => Some(name.clone()),
            _ => text(&obj["metadata"]["labels"]["kubernetes.io/service-name"]),
        };
        Ok(Item {
            path: path.to_string(),
            kind: kind_id,
            namespace,
            name,
            labels: obj["metadata"]["labels"].clone(),
            controller,
            needs,
            secret_type: text(&obj["type"]),
            provisioned: obj["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"].is_string(),
            volume_name,
            selects: obj["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty()),
            managed_slice: obj["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"].is_string(),
            service,
            freezeframe_snapshot,
            resource,
        })
    }
}

/// Phase and rank within it.
fn phase(item: &Item, crds: &BTreeSet<String>) -> (Phase, u8) {
    const CONFIG: &[&str] = &[
        "serviceaccounts",
        "secrets",
        "configmaps",
        "roles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "limitranges",
        "resourcequotas",
    ];
    const WORKLOADS: &[&str] = &[
        "statefulsets.apps",
        "deployments.apps",
        "daemonsets.apps",
        "cronjobs.batch",
        "jobs.batch",
        "replicasets.apps",
        "replicationcontrollers",
        "pods",
    ];
    let rank = |list: &[&str]| list.iter().position(|k| *k == item.kind).unwrap_or(0) as u8;
    let kind = item.kind.as_str();
    match kind {
        CRD => (Phase::CustomResourceDefinitions, 0),
        NAMESPACES => (Phase::Namespaces, 0),
        _ if item.namespace.is_none() => (Phase::ClusterDependencies, 0),
        _ if CONFIG.contains(&kind) => (Phase::Configuration, rank(CONFIG)),
        "persistentvolumeclaims" => (Phase::Claims, 0),
        "services" => (Phase::Services, 0),
        _ if WORKLOADS.contains(&kind) => (Phase::Workloads, rank(WORKLOADS)),
        _ if crds.contains(kind)
            || (item.resource.group.contains('.') && !item.resource.group.ends_with(".k8s.io")) =>
        {
            (Phase::CustomResources, 0)
        }
        _ => (Phase::Other, 0),
    }
}

/// Whether an object is made by a controller from others: events, and Endpoints/EndpointSlices
/// (of kinds marked skip-on-restore) unless they belong to a Service without a selector, whose
/// endpoints users manage themselves.
fn is_derived(item: &Item, derived: &BTreeSet<String>, selecting: &BTreeSet<(String, String)>) -> bool {
    let kind = item.kind.as_str();
    if kind == "events" || kind == "events.events.k8s.io" {
        return true;
    }
    if !derived.contains(kind) && !filter::SKIP_ON_RESTORE.contains(&kind) {
        return false;
    }
    let ns = item.namespace.clone().unwrap_or_default();
    let of_selecting_service = item
        .service
        .as_ref()
        .is_some_and(|s| selecting.contains(&(ns.clone(), s.clone())));
    let user_managed = matches!(kind, "endpoints" | "endpointslices.discovery.k8s.io") && !item.managed_slice;
    of_selecting_service || !user_managed
}

fn skip_namespaced(
    item: &Item,
    derived: &BTreeSet<String>,
    selecting: &BTreeSet<(String, String)>,
    present: &BTreeSet<(String, String, String)>,
    filter: &ResourceFilter,
    selector: Option<&LabelSelector>,
) -> Option<SkipReason> {
    let kind = item.kind.as_str();
    if is_derived(item, derived, selecting) {
        return Some(SkipReason::Derived);
    }
    if item.freezeframe_snapshot {
        return Some(SkipReason::FreezeframeSnapshot);
    }
    if (kind == "serviceaccounts" && item.name == "default")
        || (kind == "configmaps" && item.name == "kube-root-ca.crt")
        || (kind == "secrets" && item.secret_type.as_deref() == Some("kubernetes.io/service-account-token"))
    {
        return Some(SkipReason::ClusterManaged);
    }
    if let Some((owner_kind, owner)) = &item.controller
        && kind != "persistentvolumeclaims"
    {
        let ns = item.namespace.clone().unwrap_or_default();
        let owner_present = present.contains(&(owner_kind.clone(), ns, owner.clone()));
        if owner_present || kind == "pods" || kind == "replicasets.apps" {
            return Some(SkipReason::ControllerOwned(format!("{owner_kind} {owner}")));
        }
    }
    if !filter.allows(&item.resource) {
        return Some(SkipReason::Excluded);
    }
    if let Some(selector) = selector
        && !selector.matches(item.labels.as_object())
    {
        return Some(SkipReason::NotSelected);
    }
    None
}

/// Plan the restore of the extracted backup. Reads each object once; keeps only what ordering needs.
pub fn plan(
    extracted: &Extracted,
    manifest: &Manifest,
    snapshots: &Snapshots,
    options: &PlanOptions,
) -> Result<Plan> {
    let mut items = Vec::with_capacity(extracted.paths.len());
    for path in &extracted.paths {
        items.push(Item::read(path, &extracted.object(path)?)?);
    }
    plan_items(items, manifest, snapshots, options)
}

fn plan_items(
    items: Vec<Item>,
    manifest: &Manifest,
    snapshots: &Snapshots,
    options: &PlanOptions,
) -> Result<Plan> {
    for src in options.namespace_map.keys() {
        if !manifest.namespaces.contains(src) {
            return Err(Error::InvalidOption {
                option: "--namespace-map",
                value: src.clone(),
                reason: format!("the backup has namespaces {:?} only", manifest.namespaces),
            });
        }
    }
    let selector = options
        .selector
        .as_deref()
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|e| Error::InvalidOption {
            option: "--selector",
            value: options.selector.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
    let include = if options.include.is_empty() {
        vec!["*".to_string()]
    } else {
        options.include.clone()
    };
    let filter = ResourceFilter::new(&include, &options.exclude);
    let cluster_filter = ResourceFilter::new(&["*".to_string()], &options.exclude);
    let derived: BTreeSet<String> = manifest
        .objects
        .iter()
        .filter(|(_, k)| k.restore == RestoreAction::Skip)
        .map(|(id, _)| id.clone())
        .collect();
    let present: BTreeSet<(String, String, String)> = items
        .iter()
        .filter_map(|i| Some((i.resource.kind.clone(), i.namespace.clone()?, i.name.clone())))
        .collect();
    let selecting: BTreeSet<(String, String)> = items
        .iter()
        .filter(|i| i.kind == "services" && i.selects)
        .filter_map(|i| Some((i.namespace.clone()?, i.name.clone())))
        .collect();
    let crds: BTreeSet<String> = items
        .iter()
        .filter(|i| i.kind == CRD)
        .map(|i| i.name.clone())
        .collect();
    let mut namespaces: BTreeMap<String, String> = manifest
        .namespaces
        .iter()
        .map(|n| (n.clone(), n.clone()))
        .collect();
    namespaces.extend(options.namespace_map.clone());
    let map_ns = |ns: &str| namespaces.get(ns).cloned().unwrap_or_else(|| ns.to_string());
    let dynamic: BTreeSet<&str> = items
        .iter()
        .filter(|i| i.kind == VOLUMES && i.provisioned)
        .map(|i| i.name.as_str())
        .collect();
    let archived_volumes: BTreeSet<&str> = items
        .iter()
        .filter(|i| i.kind == VOLUMES)
        .map(|i| i.name.as_str())
        .collect();

    // Namespaced objects first: they decide which cluster-scoped objects are needed.
    let mut steps = Vec::with_capacity(items.len());
    let mut needed: BTreeSet<(String, String)> = BTreeSet::new();
    for item in items.iter().filter(|i| i.namespace.is_some()) {
        let source_ns = item.namespace.clone().unwrap_or_default();
        let target_ns = map_ns(&source_ns);
        let skip = skip_namespaced(item, &derived, &selecting, &present, &filter, selector.as_ref());
        let mut claim = Claim::Keep;
        let mut recorded = Recorded::default();
        if skip.is_none() {
            needed.insert((NAMESPACES.into(), source_ns.clone()));
            for (kind, name) in &item.needs {
                needed.insert((kind.clone(), name.clone()));
            }
            if item.kind == "persistentvolumeclaims" {
                recorded = Recorded {
                    snapshot: volumes::claim_source(snapshots, &source_ns, &item.name, &target_ns),
                    repository: snapshots
                        .get(&(source_ns.clone(), item.name.clone()))
                        .and_then(|s| s.repository.clone()),
                    without: match item.volume_name.as_deref() {
                        Some(v) if dynamic.contains(v) || !archived_volumes.contains(v) => Claim::Reprovision,
                        _ => Claim::Keep,
                    },
                };
                // Until the target is known (`rebind::refine`), as in the backup's own cluster.
                claim = choose(&recorded, true, options.volumes_from);
                if claim != Claim::Keep
                    && let Some(v) = &item.volume_name
                {
                    needed.remove(&(VOLUMES.to_string(), v.clone()));
                }
            }
        }
        steps.push(Step {
            phase: phase(item, &crds).0,
            kind: item.kind.clone(),
            path: item.path.clone(),
            resource: item.resource.clone(),
            source_namespace: Some(source_ns),
            namespace: Some(target_ns),
            name: item.name.clone(),
            action: skip.map_or(Action::Create, Action::Skip),
            claim,
            volume: item.volume_name.clone(),
            recorded,
        });
    }
    // Static volumes that stay bound need their StorageClass too.
    for item in items.iter().filter(|i| i.kind == VOLUMES) {
        if needed.contains(&(VOLUMES.to_string(), item.name.clone())) {
            needed.extend(item.needs.iter().cloned());
        }
    }
    for item in items.iter().filter(|i| i.namespace.is_none()) {
        let is_needed = needed.contains(&(item.kind.clone(), item.name.clone()));
        let action = if item.kind == VOLUMES && dynamic.contains(item.name.as_str()) {
            Action::Skip(SkipReason::Reprovisioned)
        } else if !is_needed {
            Action::Skip(SkipReason::NotNeeded)
        } else if item.kind != NAMESPACES && !cluster_filter.allows(&item.resource) {
            Action::Skip(SkipReason::Excluded)
        } else {
            Action::Ensure
        };
        let name = if item.kind == NAMESPACES {
            map_ns(&item.name)
        } else {
            item.name.clone()
        };
        steps.push(Step {
            phase: phase(item, &crds).0,
            kind: item.kind.clone(),
            path: item.path.clone(),
            resource: item.resource.clone(),
            source_namespace: None,
            namespace: None,
            name,
            action,
            claim: Claim::Keep,
            volume: None,
            recorded: Recorded::default(),
        });
    }
    let rank: BTreeMap<&str, u8> = items
        .iter()
        .map(|i| (i.path.as_str(), phase(i, &crds).1))
        .collect();
    steps.sort_by(|a, b| {
        let key = |s: &Step| {
            (
                s.phase,
                rank[s.path.as_str()],
                s.kind.clone(),
                s.namespace.clone(),
                s.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(Plan {
        steps,
        namespaces,
        existing: options.existing,
    })
}

const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// Turn an archived object into what is sent for `step` (owner references are resolved by apply). Pure.
pub fn rewrite(plan: &Plan, step: &Step, mut obj: Value) -> Value {
    crate::export::sanitize::sanitize(&mut obj, false);
    let meta = &mut obj["metadata"];
    if let Some(ns) = &step.namespace {
        meta["namespace"] = json!(ns);
    }
    match step.kind.as_str() {
        NAMESPACES => {
            meta["name"] = json!(step.name);
            if meta["labels"].is_object() {
                meta["labels"]["kubernetes.io/metadata.name"] = json!(step.name);
            }
        }
        "rolebindings.rbac.authorization.k8s.io" => {
            for subject in obj["subjects"].as_array_mut().into_iter().flatten() {
                if let Some(ns) = subject["namespace"].as_str() {
                    subject["namespace"] = json!(plan.map_ns(ns));
                }
            }
        }
        VOLUMES => {
            if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
                a.remove("pv.kubernetes.io/bound-by-controller");
            }
            let claim_ref = &mut obj["spec"]["claimRef"];
            if let Some(ns) = claim_ref["namespace"].as_str() {
                claim_ref["namespace"] = json!(plan.map_ns(ns));
            }
            if let Some(r) = claim_ref.as_object_mut() {
                r.remove("uid");
                r.remove("resourceVersion");
            }
        }
        "persistentvolumeclaims" => {
            // The binder sets these again; a claim arriving with `bind-completed` and a volume
            // pre-bound without uid would be Lost for good.
            if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
                for k in BINDING_ANNOTATIONS {
                    a.remove(*k);
                }
                if a.is_empty() {
                    obj["metadata"].as_object_mut().map(|m| m.remove("annotations"));
                }
            }
            let spec = obj["spec"].as_object_mut();
            match (&step.claim, spec) {
                (Claim::Keep, _) | (_, None) => {}
                (Claim::Rebind(volume), Some(spec)) => {
                    spec.remove("dataSourceRef");
                    spec.remove("dataSource");
                    spec.insert("volumeName".into(), json!(volume));
                }
                (Claim::Reprovision | Claim::FromSnapshot(_) | Claim::FromRepository(_), Some(spec)) => {
                    spec.remove("volumeName");
                    spec.remove("dataSourceRef");
                    spec.remove("dataSource");
                    if let Claim::FromSnapshot(source) = &step.claim {
                        spec.insert(
                            "dataSource".into(),
                            json!({"apiGroup": "snapshot.storage.k8s.io",
                                   "kind": "VolumeSnapshot", "name": source.volume_snapshot}),
                        );
                    }
                }
            }
        }
        "jobs.batch" if obj["spec"]["manualSelector"] != true => {
            // The API server generates the selector from the new Job's uid.
            if let Some(spec) = obj["spec"].as_object_mut() {
                spec.remove("selector");
            }
            if let Some(labels) = obj["spec"]["template"]["metadata"]["labels"].as_object_mut() {
                labels.remove("controller-uid");
                labels.remove("batch.kubernetes.io/controller-uid");
            }
        }
        "pods" => {
            if let Some(spec) = obj["spec"].as_object_mut() {
                spec.remove("nodeName");
            }
        }
        _ => {}
    }
    obj
}

#[cfg(test)]
mod tests;
