//! Applying a plan: the cluster behind the narrow [`Target`] interface, the per-object outcome
//! (created / updated / skipped / failed), owner references resolved to the new uids, CRDs waited for,
//! and the per-kind [`Report`].
//!
//! One object failing never stops the others: its error is recorded and the restore ends
//! PartiallyFailed. Existing objects: `Ensure` steps (namespaces, cluster-scoped objects) leave them;
//! `Create` steps follow `--existing` (skip, server-side apply with field manager `freezeframe`, or
//! fail). So a second restore with `--existing skip` changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde::Serialize;
use serde_json::Value;

use super::fill::{Fill, fill_created};
use super::plan::{Action, Claim, Existing, Phase, Plan, SkipReason, Step, rewrite};
use super::source::{Extracted, Located};
use crate::exit::Outcome;

/// The field manager of server-side applies.
pub const FIELD_MANAGER: &str = "freezeframe";

/// How long a created CRD may take to become Established.
pub const CRD_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of a create.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// Created; the object as stored.
    New(Value),
    /// An object with that name already exists.
    Exists,
}

/// The cluster a restore writes to: the one side effect of applying a plan.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Create `obj`.
    async fn create(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        obj: &Value,
    ) -> kube::Result<Created>;
    /// Server-side apply `obj` (field manager [`FIELD_MANAGER`], forced).
    async fn apply(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        obj: &Value,
    ) -> kube::Result<Value>;
    /// JSON merge patch `patch` onto an object (a `metadata.resourceVersion` in it is a precondition).
    async fn merge_patch(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> kube::Result<Value>;
    /// One object, or `None`.
    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> kube::Result<Option<Value>>;
    /// Wait until `ready` holds for the object (or `timeout` passes: `Ok(false)`).
    async fn wait_for(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        ready: for<'v> fn(&'v Value) -> bool,
        timeout: Duration,
    ) -> kube::Result<bool>;
}

/// [`Target`] over a kube client.
#[derive(Clone)]
pub struct KubeTarget {
    client: kube::Client,
}

impl KubeTarget {
    /// Write through `client`.
    pub fn new(client: kube::Client) -> KubeTarget {
        KubeTarget { client }
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }
}

fn to_value(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

#[async_trait::async_trait]
impl Target for KubeTarget {
    async fn create(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        obj: &Value,
    ) -> kube::Result<Created> {
        let object: DynamicObject = serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
        match self
            .api(resource, namespace)
            .create(&PostParams::default(), &object)
            .await
        {
            Ok(created) => Ok(Created::New(to_value(created))),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Created::Exists),
            Err(e) => Err(e),
        }
    }

    async fn apply(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        obj: &Value,
    ) -> kube::Result<Value> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api(resource, namespace)
            .patch(name, &params, &Patch::Apply(obj))
            .await
            .map(to_value)
    }

    async fn merge_patch(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> kube::Result<Value> {
        self.api(resource, namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(to_value)
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> kube::Result<Option<Value>> {
        Ok(self.api(resource, namespace).get_opt(name).await?.map(to_value))
    }

    async fn wait_for(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        ready: for<'v> fn(&'v Value) -> bool,
        timeout: Duration,
    ) -> kube::Result<bool> {
        let condition = move |obj: Option<&DynamicObject>| {
            obj.and_then(|o| serde_json::to_value(o).ok())
                .is_some_and(|v| ready(&v))
        };
        let waiting = kube::runtime::wait::await_condition(self.api(resource, namespace), name, condition);
        match tokio::time::timeout(timeout, waiting).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(kube::runtime::wait::Error::ProbeFailed(e))) => Err(kube::Error::Service(Box::new(e))),
            Err(_) => Ok(false),
        }
    }
}

/// Objects of one kind, by what happened to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindSummary {
    /// Created (dry run: would be created or ensured).
    pub created: u64,
    /// Server-side applied over an existing object.
    pub updated: u64,
    /// Not written (why: `skippedBecause`).
    pub skipped: u64,
    /// Failed (see the report's failures).
    pub failed: u64,
    /// Skips by reason: `exists` or a plan reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_because: BTreeMap<String, u64>,
}

/// One object that could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `plural` or `plural.group`.
    pub kind: String,
    /// `namespace/name` in the target.
    pub object: String,
    /// Why.
    pub message: String,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Policy of the backup.
    pub policy: String,
    /// Backup id.
    pub backup_id: String,
    /// The cluster the backup came from (kube-system uid).
    pub source_cluster: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// Per kind.
    pub kinds: BTreeMap<String, KindSummary>,
    /// Objects that failed, workloads not ready in time, and dumps whose replay failed.
    pub failures: Vec<Failure>,
    /// Dumps replayed (or attempted), in manifest order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<super::dumps::DumpReplay>,
    /// Claims filled from the repository (or attempted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<super::fill::FilledClaim>,
}

fn reason_key(reason: &SkipReason) -> &'static str {
    match reason {
        SkipReason::Derived => "derived",
        SkipReason::ControllerOwned(_) => "controllerOwned",
        SkipReason::ClusterManaged => "clusterManaged",
        SkipReason::Excluded => "excluded",
        SkipReason::NotSelected => "notSelected",
        SkipReason::NotNeeded => "notNeeded",
        SkipReason::Reprovisioned => "reprovisioned",
        SkipReason::FreezeframeSnapshot => "freezeframeSnapshot",
    }
}

impl Report {
    /// An empty report for `located`.
    pub fn new(located: &Located, dry_run: bool) -> Report {
        Report {
            policy: located.policy.clone(),
            backup_id: located.id.to_string(),
            source_cluster: located.manifest.cluster.kube_system_uid.clone(),
            dry_run,
            kinds: BTreeMap::new(),
            failures: Vec::new(),
            dumps: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn kind(&mut self, kind: &str) -> &mut KindSummary {
        self.kinds.entry(kind.to_string()).or_default()
    }

    fn skipped(&mut self, kind: &str, why: &str) {
        let k = self.kind(kind);
        k.skipped += 1;
        *k.skipped_because.entry(why.to_string()).or_default() += 1;
    }

    pub(super) fn fail(&mut self, step: &Step, message: String) {
        tracing::warn!(kind = %step.kind, object = %step.display_name(), %message, "restore failed");
        self.kind(&step.kind).failed += 1;
        self.failures.push(Failure {
            kind: step.kind.clone(),
            object: step.display_name(),
            message,
        });
    }

    /// Count a plan as a dry run would: applied steps as created, skips by reason.
    pub fn count_plan(&mut self, plan: &Plan) {
        for step in &plan.steps {
            match &step.action {
                Action::Skip(reason) => self.skipped(&step.kind, reason_key(reason)),
                _ => self.kind(&step.kind).created += 1,
            }
        }
    }

    /// Objects that failed, plus workloads not ready in time.
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// The exit outcome: success, partially failed, or failed when nothing at all succeeded.
    pub fn outcome(&self) -> Outcome {
        let failed = self.failed();
        let succeeded: u64 = self.kinds.values().map(|k| k.created + k.updated).sum();
        let existed: u64 = self
            .kinds
            .values()
            .map(|k| k.skipped_because.get("exists").copied().unwrap_or(0))
            .sum();
        match (failed, succeeded + existed) {
            (0, _) => Outcome::Success,
            (_, 0) => Outcome::Failed,
            _ => Outcome::PartiallyFailed,
        }
    }

    /// A table: one row per kind.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("KIND\tCREATED\tUPDATED\tSKIPPED\tFAILED\n");
        for (kind, k) in &self.kinds {
            let why: Vec<String> = k
                .skipped_because
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            let skipped = if why.is_empty() {
                k.skipped.to_string()
            } else {
                format!("{} ({})", k.skipped, why.join(","))
            };
            writeln!(
                out,
                "{kind}\t{}\t{}\t{skipped}\t{}",
                k.created, k.updated, k.failed
            )
            .ok();
        }
        for d in &self.dumps {
            let code = d
                .exit_code
                .map_or_else(String::new, |c| format!(", exit code {c}"));
            let into = if d.target.is_empty() { "-" } else { &d.target };
            writeln!(
                out,
                "DUMP {} {} -> {}: {:?}, {} bytes{code}",
                d.dump, d.source, into, d.status, d.bytes
            )
            .ok();
        }
        for v in &self.volumes {
            let what = v.filled.as_ref().map_or_else(
                || "failed".to_string(),
                |f| {
                    format!(
                        "{} files, {} bytes in {:.1}s",
                        f.files, f.bytes, f.duration_seconds
                    )
                },
            );
            let id = &v.snapshot_id[..v.snapshot_id.len().min(8)];
            writeln!(out, "VOLUME {} <- repository snapshot {id}: {what}", v.claim).ok();
        }
        for f in &self.failures {
            writeln!(out, "FAILED {} {}: {}", f.kind, f.object, f.message).ok();
        }
        out
    }
}

fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// New uids of restored (or found) objects: (apiVersion, kind, namespace, name) → uid.
type Uids = HashMap<(String, String, String, String), String>;

/// Point `obj`'s owner references at the owners' uids in the target; drop those that cannot be found.
async fn resolve_owners(
    target: &dyn Target,
    obj: &mut Value,
    namespace: &str,
    types: &HashMap<(String, String), ApiResource>,
    uids: &mut Uids,
) {
    let Some(refs) = obj["metadata"]["ownerReferences"].as_array().cloned() else {
        return;
    };
    let mut kept = Vec::new();
    for mut r in refs {
        let (api_version, kind, name) = (
            r["apiVersion"].as_str().unwrap_or_default().to_string(),
            r["kind"].as_str().unwrap_or_default().to_string(),
            r["name"].as_str().unwrap_or_default().to_string(),
        );
        let key = (
            api_version.clone(),
            kind.clone(),
            namespace.to_string(),
            name.clone(),
        );
        let mut uid = uids.get(&key).cloned();
        if uid.is_none()
            && let Some(resource) = types.get(&(api_version, kind))
            && let Ok(Some(owner)) = target.get(resource, Some(namespace), &name).await
        {
            uid = owner["metadata"]["uid"].as_str().map(str::to_string);
        }
        if let Some(uid) = uid {
            uids.insert(key, uid.clone());
            r["uid"] = Value::String(uid);
            kept.push(r);
        }
    }
    match obj["metadata"].as_object_mut() {
        Some(meta) if kept.is_empty() => {
            meta.remove("ownerReferences");
        }
        Some(meta) => {
            meta.insert("ownerReferences".into(), Value::Array(kept));
        }
        None => {}
    }
}

fn crd_established(crd: &Value) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

/// Create the pre-provisioned snapshot objects a claim's `dataSource` needs (when missing).
async fn provision_snapshot(target: &dyn Target, objects: &[Value]) -> Result<(), String> {
    for obj in objects {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let namespace = obj["metadata"]["namespace"].as_str();
        target
            .create(&resource, namespace, obj)
            .await
            .map_err(|e| format!("creating {kind} for the claim's snapshot: {}", error_text(&e)))?;
    }
    Ok(())
}

/// What `--existing update` applies over an existing object: all of it, except for claims, whose spec
/// is immutable once created (Kubernetes refuses any change but a larger `resources.requests`): their
/// labels and annotations only.
fn updatable(step: &Step, obj: Value) -> Value {
    if step.kind != "persistentvolumeclaims" {
        return obj;
    }
    let meta = &obj["metadata"];
    let mut metadata = serde_json::json!({"name": meta["name"], "namespace": meta["namespace"]});
    for k in ["labels", "annotations"] {
        if meta[k].is_object() {
            metadata[k] = meta[k].clone();
        }
    }
    serde_json::json!({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": metadata})
}

/// Apply every step of `plan` in order, recording each outcome in `report`. Claims created from the
/// repository are filled through `fill` once every claim exists, before the first Service or workload.
pub async fn apply(
    target: &dyn Target,
    extracted: &Extracted,
    plan: &Plan,
    fill: Option<&dyn Fill>,
    report: &mut Report,
) {
    let types: HashMap<(String, String), ApiResource> = plan
        .steps
        .iter()
        .map(|s| {
            (
                (s.resource.api_version.clone(), s.resource.kind.clone()),
                s.resource.clone(),
            )
        })
        .collect();
    let mut uids = Uids::new();
    let mut to_fill: Option<Vec<&Step>> = Some(Vec::new());
    for step in &plan.steps {
        if step.phase > Phase::Claims
            && let Some(created) = to_fill.take()
        {
            fill_created(fill, &created, report).await;
        }
        if let Action::Skip(reason) = &step.action {
            report.skipped(&step.kind, reason_key(reason));
            continue;
        }
        let obj = match extracted.object(&step.path) {
            Ok(obj) => obj,
            Err(e) => {
                report.fail(step, format!("{e:#}"));
                continue;
            }
        };
        let mut obj = rewrite(plan, step, obj);
        if let Some(ns) = &step.namespace {
            resolve_owners(target, &mut obj, ns, &types, &mut uids).await;
        }
        let prepared = match &step.claim {
            Claim::FromSnapshot(source) => provision_snapshot(target, &source.provision).await,
            Claim::Rebind(volume) => super::rebind::bind(target, step, volume).await,
            Claim::Keep | Claim::Reprovision | Claim::FromRepository(_) => Ok(()),
        };
        if let Err(message) = prepared {
            report.fail(step, message);
            continue;
        }
        let ns = step.namespace.as_deref();
        let stored = match target.create(&step.resource, ns, &obj).await {
            Ok(Created::New(stored)) => {
                report.kind(&step.kind).created += 1;
                if let Some(created) = to_fill.as_mut() {
                    created.push(step);
                }
                Some(stored)
            }
            Ok(Created::Exists) => match (&step.action, plan.existing) {
                (Action::Ensure, _) | (_, Existing::Skip) => {
                    report.skipped(&step.kind, "exists");
                    None
                }
                (_, Existing::Update) => match target
                    .apply(&step.resource, ns, &step.name, &updatable(step, obj))
                    .await
                {
                    Ok(stored) => {
                        report.kind(&step.kind).updated += 1;
                        Some(stored)
                    }
                    Err(e) => {
                        report.fail(step, format!("server-side apply: {}", error_text(&e)));
                        continue;
                    }
                },
                (_, Existing::Fail) => {
                    report.fail(step, "already exists (--existing fail)".into());
                    continue;
                }
            },
            Err(e) => {
                report.fail(step, error_text(&e));
                continue;
            }
        };
        if let (Some(stored), Some(ns)) = (&stored, ns)
            && let Some(uid) = stored["metadata"]["uid"].as_str()
        {
            let key = (
                step.resource.api_version.clone(),
                step.resource.kind.clone(),
                ns.to_string(),
                step.name.clone(),
            );
            uids.insert(key, uid.to_string());
        }
        if step.kind == "customresourcedefinitions.apiextensions.k8s.io" {
            match target
                .wait_for(&step.resource, None, &step.name, crd_established, CRD_TIMEOUT)
                .await
            {
                Ok(true) => {}
                Ok(false) => report.fail(step, format!("not Established within {CRD_TIMEOUT:?}")),
                Err(e) => report.fail(step, format!("waiting for Established: {}", error_text(&e))),
            }
        }
    }
    if let Some(created) = to_fill.take() {
        fill_created(fill, &created, report).await;
    }
}

/// Whether a restored workload or claim is ready: replicas ready and up to date, claims bound.
pub fn is_ready(obj: &Value) -> bool {
    let status = &obj["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    match obj["kind"].as_str().unwrap_or_default() {
        "Deployment" | "StatefulSet" => {
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            int(&status["readyReplicas"]) >= want
        }
        "DaemonSet" => int(&status["numberReady"]) >= int(&status["desiredNumberScheduled"]),
        "PersistentVolumeClaim" => status["phase"] == "Bound",
        _ => true,
    }
}

/// Wait (up to `timeout` in all) until restored workloads are ready and claims bound; record the
/// ones that are not as failures.
pub async fn wait_ready(target: &dyn Target, plan: &Plan, timeout: Duration, report: &mut Report) {
    const WAITED: &[&str] = &[
        "deployments.apps",
        "statefulsets.apps",
        "daemonsets.apps",
        "persistentvolumeclaims",
    ];
    let deadline = tokio::time::Instant::now() + timeout;
    for step in plan
        .steps
        .iter()
        .filter(|s| s.is_applied() && WAITED.contains(&s.kind.as_str()))
    {
        if report
            .failures
            .iter()
            .any(|f| f.object == step.display_name() && f.kind == step.kind)
        {
            continue;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ns = step.namespace.as_deref();
        match target
            .wait_for(&step.resource, ns, &step.name, is_ready, left)
            .await
        {
            Ok(true) => {}
            Ok(false) => report.failures.push(Failure {
                kind: step.kind.clone(),
                object: step.display_name(),
                message: format!("not ready within {timeout:?}"),
            }),
            Err(e) => report.failures.push(Failure {
                kind: step.kind.clone(),
                object: step.display_name(),
                message: format!("waiting for readiness: {}", error_text(&e)),
            }),
        }
    }
}
