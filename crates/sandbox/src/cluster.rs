//! Kubernetes object semantics over the store: defaults, validation, optimistic concurrency, status
//! subresources, patches, deletion with finalizers and propagation, CRDs, and the controller queue.
//!
//! Every public write runs in a [`Work`] context: the changes it makes are queued, and before the call
//! returns the sandbox's controllers react to them (and to the changes they make in turn). So when
//! `kubectl apply` returns, the Deployment's ReplicaSet and Pods exist, as they would a moment later in a
//! real cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Value, json};

use super::controllers;
use super::patch;
use super::registry::{Registry, ResourceId, ResourceType, from_crd};
use super::status::ApiError;
use super::store::{ChangeKind, Precondition, Store, StoreError, StoreLimits, object_rv};

/// A change the controllers react to.
#[derive(Debug, Clone)]
pub struct Event {
    pub resource: ResourceId,
    pub kind: ChangeKind,
    pub object: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

/// The queue of changes made by one request (and by the controllers reacting to it).
#[derive(Debug, Default)]
pub struct Work {
    pending: std::collections::VecDeque<Event>,
}

impl Work {
    fn push(&mut self, e: Event) {
        self.pending.push_back(e);
    }
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and return the result without storing it.
    pub dry_run: bool,
    /// `fieldManager`, recorded in managedFields.
    pub field_manager: Option<String>,
    /// `force` for server-side apply.
    pub force: bool,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// `namespaces/{name}/finalize`: like the main resource, but `spec.finalizers` may change (the main
    /// resource keeps them as they are).
    Finalize,
}

/// The patch formats the API server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

/// `DeleteOptions` as far as the sandbox honours them.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl DeleteOptions {
    /// Read `DeleteOptions` from a request body (JSON) and query parameters.
    pub fn parse(body: &[u8], query: &[(String, String)]) -> Result<Self, ApiError> {
        let mut o = DeleteOptions::default();
        let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let mut prop = v["propagationPolicy"].as_str().map(str::to_string);
        if v["orphanDependents"].as_bool() == Some(true) {
            prop = Some("Orphan".into());
        }
        for (k, val) in query {
            match k.as_str() {
                "propagationPolicy" => prop = Some(val.clone()),
                "dryRun" => o.dry_run = val == "All",
                _ => {}
            }
        }
        o.propagation = match prop.as_deref() {
            None | Some("Background") => Propagation::Background,
            Some("Foreground") => Propagation::Foreground,
            Some("Orphan") => Propagation::Orphan,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
        };
        if v["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            o.dry_run = true;
        }
        o.precondition_uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        o.precondition_rv = v["preconditions"]["resourceVersion"].as_str().map(str::to_string);
        Ok(o)
    }
}

/// An injected failure: the next `times` requests that match get `error`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`), or any.
    pub verb: Option<String>,
    /// Plural (optionally `plural.group`), or any.
    pub resource: Option<String>,
    pub name: Option<String>,
    pub error: ApiError,
    pub times: usize,
}

/// Random misbehaviour for drills and chaos tests: a share of the requests fails the way an overloaded or
/// upgrading API server fails them. Exec sessions and discovery are never touched.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    /// Share of the matching requests that fail (0.0 to 1.0).
    pub rate: f64,
    /// Seed of the choice of requests and failures (the same seed and requests give the same faults).
    pub seed: u64,
    /// Delay before every matching request is handled.
    pub latency: std::time::Duration,
    /// Verbs that may fail (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`); empty: all.
    pub verbs: Vec<String>,
    /// The first this many matching requests are served normally.
    pub after: u64,
}

/// What [`Cluster::random_fault`] chose for one request.
#[derive(Debug, Clone)]
pub enum Misbehaviour {
    /// Answer with this error (429 with `Retry-After`, 500 or 503).
    Fail(ApiError),
    /// Close the connection without an answer.
    Drop,
}

struct RandomState {
    faults: RandomFaults,
    rng: rand::rngs::StdRng,
    seen: u64,
    injected: u64,
}

impl RandomState {
    fn new(faults: RandomFaults) -> RandomState {
        use rand::SeedableRng;
        RandomState {
            rng: rand::rngs::StdRng::seed_from_u64(faults.seed),
            faults,
            seen: 0,
            injected: 0,
        }
    }
}

/// Sandbox behaviour knobs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub state_dir: PathBuf,
    pub limits: StoreLimits,
    /// The image whose pods really run (see `kubelet`).
    pub own_image: super::kubelet::OwnImage,
    /// Random faults, if any.
    pub random_faults: Option<RandomFaults>,
}

/// The sandbox cluster: store, served types, controllers.
pub struct Cluster {
    pub store: Store,
    registry: RwLock<Registry>,
    pub state_dir: PathBuf,
    /// The node agent for pods of freezeframe's own image.
    pub kubelet: super::kubelet::Kubelet,
    faults: Mutex<Vec<Fault>>,
    random: Mutex<Option<RandomState>>,
    ip_counter: std::sync::atomic::AtomicU32,
    /// Which pod (uid) each pod directory belongs to: the controllers and the kubelet both react to a new
    /// pod, and whichever comes first clears a previous pod's directory — never the other's fresh files.
    pub(crate) pod_dirs: Mutex<HashMap<PathBuf, String>>,
    /// Issues and checks bearer tokens (the admin's and ServiceAccounts').
    pub authenticator: super::auth::Authenticator,
}

/// The annotation that keeps a created pod Pending (tests of not-ready pods).
pub const PENDING_ANNOTATION: &str = "sandbox.freezeframe.dev/phase";

pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn obj_name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn obj_ns(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// Random suffix as the API server generates it for `generateName`.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// DNS-1123 subdomain check (most object names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// DNS-1123 label check (namespaces, services).
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns1123_subdomain(s)
}

fn strip_for_compare(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl Cluster {
    pub fn new(options: ClusterOptions) -> Self {
        Cluster {
            store: Store::new(options.limits),
            registry: RwLock::new(Registry::with_builtins()),
            state_dir: options.state_dir,
            kubelet: super::kubelet::Kubelet::new(options.own_image),
            faults: Mutex::new(Vec::new()),
            random: Mutex::new(options.random_faults.map(RandomState::new)),
            ip_counter: std::sync::atomic::AtomicU32::new(10),
            pod_dirs: Mutex::new(HashMap::new()),
            authenticator: super::auth::Authenticator::new(),
        }
    }

    /// A copy of the served types (cheap: the registry holds `Arc`s).
    pub fn registry(&self) -> Registry {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(group, version, plural)
    }

    pub fn type_by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_kind(api_version, kind)
    }

    /// Make the next matching requests fail.
    pub fn inject_fault(&self, fault: Fault) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).push(fault);
    }

    /// The injected error for this request, if any (consumes one use).
    pub fn take_fault(&self, verb: &str, rt: &ResourceType, name: Option<&str>) -> Option<ApiError> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let gr = super::status::group_resource(&rt.group, &rt.plural);
        let idx = faults.iter().position(|f| {
            f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == rt.plural || r == gr)
                && f.name.as_deref().is_none_or(|n| Some(n) == name)
        })?;
        let f = &mut faults[idx];
        let err = f.error.clone();
        f.times = f.times.saturating_sub(1);
        if f.times == 0 {
            faults.remove(idx);
        }
        Some(err)
    }

    /// Start (from a fresh seed) or stop random faults on a running cluster.
    pub fn set_random_faults(&self, faults: Option<RandomFaults>) {
        *self.random.lock().unwrap_or_else(|p| p.into_inner()) = faults.map(RandomState::new);
    }

    /// How many requests the random faults failed since they were set.
    pub fn random_faults_injected(&self) -> u64 {
        let state = self.random.lock().unwrap_or_else(|p| p.into_inner());
        state.as_ref().map_or(0, |s| s.injected)
    }

    /// The delay and, for the chosen share of requests, the failure [`RandomFaults`] give a `verb` request.
    pub fn random_fault(&self, verb: &str) -> (std::time::Duration, Option<Misbehaviour>) {
        let mut state = self.random.lock().unwrap_or_else(|p| p.into_inner());
        let Some(RandomState {
            faults,
            rng,
            seen,
            injected,
        }) = &mut *state
        else {
            return (std::time::Duration::ZERO, None);
        };
        if !faults.verbs.is_empty() && !faults.verbs.iter().any(|v| v == verb) {
            return (std::time::Duration::ZERO, None);
        }
        *seen += 1;
        if *seen <= faults.after || !rng.random_bool(faults.rate.clamp(0.0, 1.0)) {
            return (faults.latency, None);
        }
        *injected += 1;
        // Server errors carry `Retry-After` as a real server's often do, which is what makes client-go
        // (kubectl) retry them.
        let with_retry_after = |mut e: ApiError| {
            e.retry_after = Some(1);
            Misbehaviour::Fail(e)
        };
        let chosen = match rng.random_range(0..4) {
            0 => Misbehaviour::Fail(ApiError::too_many_requests(1)),
            1 => with_retry_after(ApiError::internal("fault injected: internal error")),
            2 => with_retry_after(ApiError::new(
                503,
                "ServiceUnavailable",
                "fault injected: the server is currently unable to handle the request",
            )),
            _ => Misbehaviour::Drop,
        };
        tracing::debug!(verb, fault = ?chosen, "random fault");
        (faults.latency, Some(chosen))
    }

    /// Run the controllers on everything a request changed.
    fn drain(&self, mut work: Work) {
        let mut steps = 0usize;
        while let Some(ev) = work.pending.pop_front() {
            steps += 1;
            if steps > 1_000_000 {
                tracing::error!("controller queue did not settle; dropping remaining work");
                return;
            }
            controllers::react(self, &ev, &mut work);
        }
    }

    /// Run `f` as one request: its changes are reconciled before returning.
    pub fn request<T>(&self, f: impl FnOnce(&mut Work) -> T) -> T {
        let mut work = Work::default();
        let out = f(&mut work);
        self.drain(work);
        out
    }

    /// Get an object, rendered for the requested version.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&rt.id(), ns, name)
            .map(|o| render(rt, &o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// The NamespaceLifecycle admission plugin: creates need a namespace that exists and is not
    /// Terminating. `name` is the object's name or, before one is generated, its `generateName`.
    fn namespace_check(&self, rt: &ResourceType, name: &str, ns: &str) -> Result<(), ApiError> {
        match self.store.get(&ResourceId::new("", "namespaces"), "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if n["status"]["phase"] == "Terminating" => {
                Err(ApiError::namespace_terminating(&rt.group, &rt.plural, name, ns))
            }
            Some(_) => Ok(()),
        }
    }

    /// The apiextensions server refuses to create custom resources while their CRD is terminating
    /// (only `create`: updates, patches and server-side apply still go through, as on a real server).
    fn crd_accepts_creates(&self, rt: &ResourceType) -> Result<(), ApiError> {
        let Some(crd_name) = &rt.crd else { return Ok(()) };
        let terminating = self
            .store
            .get(&crd_id(), "", crd_name)
            .is_some_and(|crd| super::lifecycle::crd_is_terminating(&crd));
        if terminating {
            return Err(ApiError::crd_terminating(&rt.group, &rt.plural));
        }
        Ok(())
    }

    /// Create an object (POST).
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.request(|w| self.create_in(w, rt, ns, obj, opts))
    }

    pub fn create_in(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.crd_accepts_creates(rt)?;
        self.create_object(work, rt, ns, obj, opts)
    }

    /// Create, whether by POST or by a server-side apply of a missing object.
    fn create_object(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        check_type(rt, &mut obj)?;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if rt.review {
            // Reviews are about the requesting user: the HTTP layer answers them (rbac::answer_review).
            return Err(ApiError::method_not_allowed(format!(
                "{} are answered for the requesting user only",
                rt.plural
            )));
        }
        if rt.namespaced {
            // Admission runs before a name is generated: it names the object by its generateName.
            let meta = &obj["metadata"];
            let admission_name = meta["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .or_else(|| meta["generateName"].as_str())
                .unwrap_or_default()
                .to_string();
            self.namespace_check(rt, &admission_name, ns)?;
        }
        let meta = obj["metadata"].as_object_mut().expect("metadata is an object");
        if rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let name_missing = meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty);
        if name_missing {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{}", random_suffix(5));
                    meta.insert("name".into(), json!(name));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rt.group,
                        &rt.kind,
                        "",
                        &[(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            }
        }
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if rt.tracks_generation() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        self.apply_defaults(rt, &mut obj);
        if is_namespace(rt) {
            prepare_namespace_create(&mut obj);
        }
        validate(rt, &obj)?;
        if rt.id() == crd_id() {
            self.admit_crd(&mut obj, None)?;
        }
        if let Some(m) = &opts.field_manager {
            patch::record_update(None, &mut obj, m, "Update", &now());
        }
        if opts.dry_run {
            if self.store.get(&rt.id(), obj_ns(&obj), obj_name(&obj)).is_some() {
                return Err(ApiError::already_exists(&rt.group, &rt.plural, obj_name(&obj)));
            }
            return Ok(render(rt, &obj));
        }
        let name = obj_name(&obj).to_string();
        let stored = self
            .store
            .put(&rt.id(), obj, Precondition::Absent)
            .map_err(|e| match e {
                StoreError::AlreadyExists => ApiError::already_exists(&rt.group, &rt.plural, &name),
                other => ApiError::internal(other.to_string()),
            })?;
        work.push(Event {
            resource: rt.id(),
            kind: ChangeKind::Added,
            object: stored.clone(),
            old: None,
        });
        Ok(render(rt, &stored))
    }

    /// Replace an object (PUT), honouring `metadata.resourceVersion` as a precondition.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.request(|w| self.update_in(w, rt, ns, name, obj, part, opts))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn update_in(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        check_type(rt, &mut obj)?;
        let body_name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced {
            let body_ns = obj_ns(&obj);
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
        }
        let current = self
            .store
            .get(&rt.id(), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let wanted_rv = match &obj["metadata"]["resourceVersion"] {
            Value::String(s) if !s.is_empty() => Some(
                s.parse::<u64>()
                    .map_err(|_| ApiError::conflict(&rt.group, &rt.plural, name))?,
            ),
            _ => None,
        };
        if wanted_rv.is_some_and(|rv| Some(rv) != object_rv(&current)) {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let mut next = match part {
            Part::Main | Part::Finalize => {
                if rt.status {
                    match current.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            if let Some(m) = obj.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                obj
            }
            Part::Status => {
                let mut n = (*current).clone();
                match obj.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                n
            }
        };
        if is_namespace(rt) && part == Part::Main {
            // A namespace's spec.finalizers change only through its `finalize` subresource.
            match current["spec"].get("finalizers") {
                Some(f) => next["spec"]["finalizers"] = f.clone(),
                None => {
                    if let Some(spec) = next["spec"].as_object_mut() {
                        spec.remove("finalizers");
                    }
                }
            }
        }
        // System-owned metadata is not the client's to change.
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match current["metadata"].get(k) {
                Some(v) => next["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if rt.tracks_generation() && strip_for_compare(&next) != strip_for_compare(&current) {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            next["metadata"]["generation"] = json!(g);
        }
        self.apply_defaults(rt, &mut next);
        validate(rt, &next)?;
        validate_update(rt, &current, &next)?;
        if rt.id() == crd_id() && part != Part::Status {
            self.admit_crd(&mut next, current.get("status"))?;
        }
        if let Some(m) = &opts.field_manager {
            patch::record_update(Some(&current), &mut next, m, "Update", &now());
        } else if next["metadata"].get("managedFields").is_none()
            && let Some(mf) = current["metadata"].get("managedFields")
        {
            next["metadata"]["managedFields"] = mf.clone();
        }
        if opts.dry_run {
            return Ok(render(rt, &next));
        }
        self.commit_update(work, rt, &current, next)
    }

    /// Store `next` in place of `current` (whose revision is the precondition), or remove the object when
    /// it was being deleted and `next` has no finalizers left (a namespace also needs empty
    /// `spec.finalizers`). Such an update becomes the deletion, as `ShouldDeleteDuringUpdate` makes it on a
    /// real server: watchers see one DELETED event carrying the object as it was last stored; the caller
    /// gets `next`.
    pub(super) fn commit_update(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        current: &Arc<Value>,
        next: Value,
    ) -> Result<Value, ApiError> {
        let name = obj_name(current).to_string();
        let ns = obj_ns(current).to_string();
        let deleting = current["metadata"].get("deletionTimestamp").is_some();
        let no_finalizers = next["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
            && (!is_namespace(rt) || next["spec"]["finalizers"].as_array().is_none_or(Vec::is_empty));
        if **current == next {
            // A no-op write does not bump resourceVersion, as on a real server.
            return Ok(render(rt, current));
        }
        let map_err = |e: StoreError| match e {
            StoreError::NotFound => ApiError::not_found(&rt.group, &rt.plural, &name),
            StoreError::Conflict => ApiError::conflict(&rt.group, &rt.plural, &name),
            other => ApiError::internal(other.to_string()),
        };
        if deleting && no_finalizers {
            let gone = if rt.id() == crd_id() {
                // Stop serving the kinds in the same step the CRD disappears: once a client sees the CRD
                // gone, discovery no longer lists them (and never stops listing them before).
                let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
                let gone = self
                    .store
                    .remove(&rt.id(), &ns, &name, object_rv(current))
                    .map_err(map_err)?;
                registry.remove_crd(&name);
                gone
            } else {
                self.store
                    .remove(&rt.id(), &ns, &name, object_rv(current))
                    .map_err(map_err)?
            };
            self.after_remove(work, rt, gone.clone(), Propagation::Background);
            let mut last = next;
            last["metadata"]["resourceVersion"] = json!(self.store.revision().to_string());
            return Ok(render(rt, &last));
        }
        let stored = self.put_modified(work, rt, current, next).map_err(map_err)?;
        Ok(render(rt, &stored))
    }

    /// Store `next` over `current` (which must still be the stored version) and record the MODIFIED
    /// watch event.
    fn put_modified(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        current: &Arc<Value>,
        next: Value,
    ) -> Result<Arc<Value>, StoreError> {
        let stored = self
            .store
            .put(&rt.id(), next, Precondition::Present(object_rv(current)))?;
        work.push(Event {
            resource: rt.id(),
            kind: ChangeKind::Modified,
            object: stored.clone(),
            old: Some(current.clone()),
        });
        Ok(stored)
    }

    /// Patch an object (PATCH). Server-side apply creates a missing object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.request(|w| self.patch_in(w, rt, ns, name, kind, body, part, opts))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch_in(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        // The API server retries patches internally when a concurrent write wins the race.
        for _ in 0..10 {
            let current = self.store.get(&rt.id(), ns, name);
            let Some(current) = current else {
                if kind == PatchKind::Apply {
                    return self.apply_create(work, rt, ns, name, body, opts);
                }
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            };
            let rendered = render(rt, &current);
            let mut next = rendered.clone();
            match kind {
                PatchKind::Merge => patch::merge_patch(&mut next, body),
                PatchKind::Json => patch::json_patch(&mut next, body).map_err(patch_error)?,
                PatchKind::Strategic => {
                    if rt.crd.is_some() {
                        return Err(ApiError::unsupported_media_type(
                            "application/strategic-merge-patch+json is not supported for custom resources",
                        ));
                    }
                    patch::strategic_merge_patch(&mut next, body).map_err(patch_error)?
                }
                PatchKind::Apply => {
                    let manager = opts.field_manager.as_deref().ok_or_else(|| {
                        ApiError::bad_request(
                            "PATCH, application/apply-patch+yaml requests must have a fieldManager",
                        )
                    })?;
                    check_apply_body(rt, body, name)?;
                    next = patch::apply(Some(&rendered), body, manager, opts.force, &now()).map_err(|c| {
                        ApiError::conflict_message(&rt.group, &rt.plural, name, c.message(), c.causes())
                    })?;
                }
            }
            if next
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                != Some(name)
            {
                return Err(ApiError::bad_request(
                    "metadata.name: the name of an object cannot be changed",
                ));
            }
            let precondition = match &next["metadata"]["resourceVersion"] {
                Value::String(s)
                    if s != rendered["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default() =>
                {
                    return Err(ApiError::conflict(&rt.group, &rt.plural, name));
                }
                _ => object_rv(&current),
            };
            let mut upd_opts = opts.clone();
            if kind == PatchKind::Apply {
                // managedFields were maintained by `apply` itself.
                upd_opts.field_manager = None;
            }
            next["metadata"]["resourceVersion"] =
                json!(precondition.map(|r| r.to_string()).unwrap_or_default());
            match self.update_in(work, rt, ns, name, next, part, &upd_opts) {
                Err(e) if e.reason == "Conflict" && body_has_no_rv(body) => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(&rt.group, &rt.plural, name))
    }

    fn apply_create(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: &Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let manager = opts.field_manager.as_deref().ok_or_else(|| {
            ApiError::bad_request("PATCH, application/apply-patch+yaml requests must have a fieldManager")
        })?;
        check_apply_body(rt, body, name)?;
        let obj = patch::apply(None, body, manager, true, &now())
            .map_err(|c| ApiError::conflict_message(&rt.group, &rt.plural, name, c.message(), c.causes()))?;
        let mut create_opts = opts.clone();
        create_opts.field_manager = None;
        self.create_object(work, rt, ns, obj, &create_opts)
    }

    /// Delete an object (DELETE). Returns the object as last seen (or being finalized).
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.request(|w| self.delete_in(w, rt, ns, name, opts))
    }

    pub fn delete_in(
        &self,
        work: &mut Work,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let is_namespace = is_namespace(rt);
        if is_namespace && super::lifecycle::IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden_object(
                "",
                "namespaces",
                name,
                "this namespace may not be deleted",
            ));
        }
        let current = self
            .store
            .get(&rt.id(), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if let Some(uid) = &opts.precondition_uid
            && current["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict_message(
                &rt.group,
                &rt.plural,
                name,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    super::status::group_resource(&rt.group, &rt.plural),
                    current["metadata"]["uid"].as_str().unwrap_or_default()
                ),
                json!([]),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && current["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        if opts.dry_run {
            return Ok(render(rt, &current));
        }
        let is_crd = rt.id() == crd_id();
        if is_namespace || is_crd {
            // Both are finalized in the background (see `lifecycle`): DELETE only marks them. Their
            // storage sets no deletionGracePeriodSeconds and ignores the propagation policy.
            if current["metadata"].get("deletionTimestamp").is_some() {
                return Ok(render(rt, &current));
            }
            let mut next = (*current).clone();
            next["metadata"]["deletionTimestamp"] = json!(now());
            if is_namespace {
                next["status"]["phase"] = json!("Terminating");
            } else {
                super::lifecycle::mark_crd_terminating(&mut next);
            }
            let stored = self
                .put_modified(work, rt, &current, next)
                .map_err(|_| ApiError::conflict(&rt.group, &rt.plural, name))?;
            return Ok(render(rt, &stored));
        }
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers || opts.propagation == Propagation::Foreground {
            if current["metadata"].get("deletionTimestamp").is_some() {
                return Ok(render(rt, &current));
            }
            let mut next = (*current).clone();
            next["metadata"]["deletionTimestamp"] = json!(now());
            next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if opts.propagation == Propagation::Foreground {
                // Dependents go first; the owner follows once they are gone.
                self.delete_dependents(work, &current, Propagation::Foreground);
                if !has_finalizers {
                    let gone = self
                        .store
                        .remove(&rt.id(), ns, name, None)
                        .map_err(|_| ApiError::not_found(&rt.group, &rt.plural, name))?;
                    work.push(Event {
                        resource: rt.id(),
                        kind: ChangeKind::Deleted,
                        object: gone.clone(),
                        old: None,
                    });
                    return Ok(render(rt, &gone));
                }
            }
            let stored = self
                .put_modified(work, rt, &current, next)
                .map_err(|_| ApiError::conflict(&rt.group, &rt.plural, name))?;
            return Ok(render(rt, &stored));
        }
        let gone = self
            .store
            .remove(&rt.id(), ns, name, None)
            .map_err(|_| ApiError::not_found(&rt.group, &rt.plural, name))?;
        self.after_remove(work, rt, gone.clone(), opts.propagation);
        Ok(render(rt, &gone))
    }

    fn after_remove(&self, work: &mut Work, rt: &ResourceType, gone: Arc<Value>, propagation: Propagation) {
        match propagation {
            Propagation::Orphan => self.orphan_dependents(work, &gone),
            _ => self.delete_dependents(work, &gone, Propagation::Background),
        }
        if rt.id() == crd_id() {
            self.forget_crd(work, &gone);
        }
        work.push(Event {
            resource: rt.id(),
            kind: ChangeKind::Deleted,
            object: gone,
            old: None,
        });
    }

    /// Objects whose ownerReferences name `owner`.
    pub fn dependents_of(&self, owner: &Value) -> Vec<(Arc<ResourceType>, Arc<Value>)> {
        let Some(uid) = owner["metadata"]["uid"].as_str() else {
            return vec![];
        };
        let reg = self.registry();
        self.store
            .dependents(uid)
            .into_iter()
            .filter_map(|(id, ns, name)| Some((reg.preferred(&id)?, self.store.get(&id, &ns, &name)?)))
            .collect()
    }

    fn delete_dependents(&self, work: &mut Work, owner: &Value, propagation: Propagation) {
        let uid = owner["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        for (rt, dep) in self.dependents_of(owner) {
            let refs = dep["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let remaining: Vec<Value> = refs
                .into_iter()
                .filter(|r| r["uid"].as_str() != Some(&uid))
                .collect();
            if remaining.is_empty() {
                let opts = DeleteOptions {
                    propagation,
                    ..Default::default()
                };
                let _ = self.delete_in(work, &rt, obj_ns(&dep), obj_name(&dep), &opts);
            } else {
                let mut next = (*dep).clone();
                next["metadata"]["ownerReferences"] = Value::Array(remaining);
                let _ = self.commit_update(work, &rt, &dep, next);
            }
        }
    }

    fn orphan_dependents(&self, work: &mut Work, owner: &Value) {
        let uid = owner["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        for (rt, dep) in self.dependents_of(owner) {
            let mut next = (*dep).clone();
            if let Some(refs) = next["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(&uid));
                if refs.is_empty()
                    && let Some(m) = next["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
            }
            let _ = self.commit_update(work, &rt, &dep, next);
        }
    }

    /// Set the defaults a real API server (and its admission plugins) would.
    fn apply_defaults(&self, rt: &ResourceType, obj: &mut Value) {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                let name = obj_name(obj).to_string();
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            ("", "pods") => self.default_pod(obj),
            ("", "secrets") => {
                if obj.get("type").is_none_or(|t| t.is_null() || t == "") {
                    obj["type"] = json!("Opaque");
                }
                merge_string_data(obj);
            }
            ("", "services") => self.default_service(obj),
            ("", "persistentvolumes") => {
                if obj["spec"]["volumeMode"].is_null() {
                    obj["spec"]["volumeMode"] = json!("Filesystem");
                }
                if obj["spec"]["persistentVolumeReclaimPolicy"].is_null() {
                    obj["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
                }
                if obj["status"]["phase"].is_null() {
                    obj["status"]["phase"] = json!("Pending");
                }
            }
            ("", "persistentvolumeclaims") => {
                if obj["spec"]["volumeMode"].is_null() {
                    obj["spec"]["volumeMode"] = json!("Filesystem");
                }
                if obj["status"]["phase"].is_null() {
                    obj["status"]["phase"] = json!("Pending");
                }
            }
            ("apps", "deployments") => {
                let s = &mut obj["spec"];
                default_field(s, "replicas", json!(1));
                default_field(s, "revisionHistoryLimit", json!(10));
                default_field(s, "progressDeadlineSeconds", json!(600));
                default_field(
                    s,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
            }
            ("apps", "statefulsets") => {
                let s = &mut obj["spec"];
                default_field(s, "replicas", json!(1));
                default_field(s, "podManagementPolicy", json!("OrderedReady"));
                default_field(s, "revisionHistoryLimit", json!(10));
                default_field(
                    s,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                default_field(
                    s,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            ("apps", "replicasets") => default_field(&mut obj["spec"], "replicas", json!(1)),
            ("batch", "jobs") => controllers::default_job(obj),
            ("batch", "cronjobs") => {
                let s = &mut obj["spec"];
                default_field(s, "concurrencyPolicy", json!("Allow"));
                default_field(s, "suspend", json!(false));
                default_field(s, "successfulJobsHistoryLimit", json!(3));
                default_field(s, "failedJobsHistoryLimit", json!(1));
            }
            _ => {}
        }
    }

    fn next_ip(&self, prefix: &str) -> String {
        let n = self.ip_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}.{}.{}", (n / 250) % 250, n % 250 + 2)
    }

    fn default_pod(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        default_field(spec, "restartPolicy", json!("Always"));
        default_field(spec, "dnsPolicy", json!("ClusterFirst"));
        default_field(spec, "schedulerName", json!("default-scheduler"));
        default_field(spec, "terminationGracePeriodSeconds", json!(30));
        default_field(spec, "serviceAccountName", json!("default"));
        let sa = spec["serviceAccountName"].clone();
        default_field(spec, "serviceAccount", sa);
        if obj["status"]["phase"].is_string() {
            return;
        }
        let pending = obj["metadata"]["annotations"][PENDING_ANNOTATION].as_str() == Some("Pending");
        if pending {
            obj["status"] = json!({"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "held Pending by the sandbox annotation", "lastTransitionTime": now()}]});
            return;
        }
        obj["spec"]["nodeName"] = json!("sandbox-node");
        if self.kubelet.own_image.runs(obj) {
            // The kubelet starts it (see `kubelet`): scheduled, containers being created.
            let t = now();
            let waiting = |cs: &Value| -> Vec<Value> {
                cs.as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        json!({"name": c["name"], "image": c["image"],
                            "imageID": format!("sandbox://{}", c["image"].as_str().unwrap_or_default()),
                            "ready": false, "started": false, "restartCount": 0,
                            "state": {"waiting": {"reason": "ContainerCreating"}}})
                    })
                    .collect()
            };
            let statuses = waiting(&obj["spec"]["containers"]);
            let cond = |t2: &str, v: &str| json!({"type": t2, "status": v, "lastTransitionTime": t});
            let ip = self.next_ip("10.244");
            obj["status"] = json!({"phase": "Pending",
                "conditions": [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"),
                               cond("Ready", "False"), cond("ContainersReady", "False"), cond("PodScheduled", "True")],
                "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}], "podIP": ip, "podIPs": [{"ip": ip}],
                "qosClass": "BestEffort", "startTime": t, "containerStatuses": statuses});
            return;
        }
        let started = now();
        let statuses: Vec<Value> = obj["spec"]["containers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        json!({
                            "name": c["name"], "image": c["image"],
                            "imageID": format!("sandbox://{}", c["image"].as_str().unwrap_or_default()),
                            "containerID": format!("sandbox://{}", uuid::Uuid::new_v4().simple()),
                            "ready": true, "started": true, "restartCount": 0,
                            "state": {"running": {"startedAt": started}}
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ip = self.next_ip("10.244");
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": started});
        obj["status"] = json!({
            "phase": "Running",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                           cond("ContainersReady"), cond("PodScheduled")],
            "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "qosClass": "BestEffort", "startTime": started,
            "containerStatuses": statuses,
        });
    }

    fn default_service(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        default_field(spec, "type", json!("ClusterIP"));
        default_field(spec, "sessionAffinity", json!("None"));
        default_field(spec, "ipFamilies", json!(["IPv4"]));
        default_field(spec, "ipFamilyPolicy", json!("SingleStack"));
        default_field(spec, "internalTrafficPolicy", json!("Cluster"));
        if spec["clusterIP"].is_null() || spec["clusterIP"] == "" {
            let ip = self.next_ip("10.96");
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        } else if spec["clusterIPs"].is_null() {
            spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                default_field(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                default_field(p, "targetPort", port);
            }
        }
        if obj["status"].is_null() {
            obj["status"] = json!({"loadBalancer": {}});
        }
    }

    /// Validate a CRD and set its status as the apiextensions controllers would; serve its kinds.
    /// `previous` is the stored status on update: its conditions (e.g. `Terminating`) and their
    /// transition times are kept.
    fn admit_crd(&self, crd: &mut Value, previous: Option<&Value>) -> Result<(), ApiError> {
        let spec = crd["spec"].clone();
        let group = spec["group"].as_str().unwrap_or_default();
        let plural = spec["names"]["plural"].as_str().unwrap_or_default();
        let name = obj_name(crd).to_string();
        let mut causes = Vec::new();
        if group.is_empty() {
            causes.push(("spec.group".to_string(), "Required value".to_string()));
        }
        if plural.is_empty() {
            causes.push(("spec.names.plural".to_string(), "Required value".to_string()));
        }
        if spec["names"]["kind"].as_str().unwrap_or_default().is_empty() {
            causes.push(("spec.names.kind".to_string(), "Required value".to_string()));
        }
        if !causes.is_empty() || name != format!("{plural}.{group}") {
            if causes.is_empty() {
                causes.push((
                    "metadata.name".into(),
                    format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
                ));
            }
            return Err(ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &name,
                &causes,
            ));
        }
        let types = from_crd(crd);
        if types.is_empty() {
            return Err(ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &name,
                &[(
                    "spec.versions".into(),
                    "Invalid value: must have exactly one version marked as storage version".into(),
                )],
            ));
        }
        let t = now();
        let names = &crd["spec"]["names"];
        let mut accepted = names.clone();
        if accepted["singular"].is_null() {
            accepted["singular"] = json!(names["kind"].as_str().unwrap_or_default().to_lowercase());
        }
        if accepted["listKind"].is_null() {
            accepted["listKind"] = json!(format!("{}List", names["kind"].as_str().unwrap_or_default()));
        }
        let stored: Vec<Value> = crd["spec"]["versions"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["storage"] == true)
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut conditions = previous
            .and_then(|p| p["conditions"].as_array().cloned())
            .unwrap_or_default();
        for (kind, reason, message) in [
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            (
                "Established",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ] {
            if !conditions
                .iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
            {
                conditions.retain(|c| c["type"] != kind);
                conditions.push(json!({"type": kind, "status": "True", "reason": reason,
                    "message": message, "lastTransitionTime": t}));
            }
        }
        crd["status"] = json!({
            "acceptedNames": accepted,
            "conditions": conditions,
            "storedVersions": stored,
        });
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_crd(&name, types)
            .map_err(|m| {
                ApiError::invalid(
                    "apiextensions.k8s.io",
                    "CustomResourceDefinition",
                    &name,
                    &[(
                        "spec.names.plural".into(),
                        format!("Invalid value: \"{plural}\": {m}"),
                    )],
                )
            })
    }

    /// Stop serving a removed CRD's kinds and drop what is left of its objects (nothing, unless someone
    /// removed the cleanup finalizer by hand: a real server keeps such objects in etcd, unserved).
    fn forget_crd(&self, work: &mut Work, crd: &Value) {
        let name = obj_name(crd).to_string();
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_crd(&name);
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        let id = ResourceId::new(group, plural);
        for o in self.store.list(&id, None) {
            if let Ok(gone) = self.store.remove(&id, obj_ns(&o), obj_name(&o), None) {
                work.push(Event {
                    resource: id.clone(),
                    kind: ChangeKind::Deleted,
                    object: gone,
                    old: None,
                });
            }
        }
    }
}

/// A patch that could not be read (400) or applied (422).
fn patch_error(e: patch::PatchError) -> ApiError {
    if e.status_code() == 400 {
        ApiError::bad_request(e.to_string())
    } else {
        ApiError::invalid_patch(e.to_string())
    }
}

fn body_has_no_rv(body: &Value) -> bool {
    body.get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .is_none()
}

fn default_field(target: &mut Value, key: &str, value: Value) {
    if target.is_null() {
        *target = json!({});
    }
    if target.get(key).is_none_or(Value::is_null) {
        target[key] = value;
    }
}

/// The table of CustomResourceDefinitions.
pub fn crd_id() -> ResourceId {
    ResourceId::new("apiextensions.k8s.io", "customresourcedefinitions")
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "namespaces"
}

/// What the namespace strategy does on create: the phase starts Active and `spec.finalizers` always
/// holds `kubernetes` (the namespace controller's finalizer).
fn prepare_namespace_create(ns: &mut Value) {
    ns["status"] = json!({"phase": "Active"});
    let finalizer = json!(super::lifecycle::NAMESPACE_FINALIZER);
    match ns["spec"]["finalizers"].as_array_mut() {
        Some(f) if f.contains(&finalizer) => {}
        Some(f) => f.push(finalizer),
        None => ns["spec"]["finalizers"] = json!([finalizer]),
    }
}

/// The object as served for `rt`'s version (one stored version, served under every version).
pub fn render(rt: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(rt.api_version());
    o["kind"] = json!(rt.kind);
    o
}

fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    if !kind.is_empty() && kind != rt.kind {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if !api_version.is_empty() {
        let (g, _) = super::registry::split_api_version(api_version);
        if g != rt.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
    }
    obj["kind"] = json!(rt.kind);
    obj["apiVersion"] = json!(rt.api_version());
    Ok(())
}

fn check_apply_body(rt: &ResourceType, body: &Value, name: &str) -> Result<(), ApiError> {
    if body["kind"].as_str().unwrap_or_default().is_empty()
        || body["apiVersion"].as_str().unwrap_or_default().is_empty()
    {
        return Err(ApiError::bad_request(
            "invalid object type: apply patches must set apiVersion and kind",
        ));
    }
    if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            body["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    let _ = rt;
    Ok(())
}

/// The validation a real API server does that matters to freezeframe's users and tests.
fn validate(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let name = obj_name(obj);
    let mut causes: Vec<(String, String)> = Vec::new();
    let label_names = matches!(
        (rt.group.as_str(), rt.plural.as_str()),
        ("", "namespaces") | ("", "services")
    );
    let ok = if label_names {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name) || rt.group == "rbac.authorization.k8s.io"
    };
    if !ok {
        causes.push((
            "metadata.name".into(),
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                if label_names { "label" } else { "subdomain" }
            ),
        ));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if freezeframe_selector::LabelSelector::parse(&format!("{k}={}", v.as_str().unwrap_or("\u{0}")))
                .is_err()
            {
                causes.push((
                    "metadata.labels".to_string(),
                    format!("Invalid value: \"{k}\": {v} is not a valid label"),
                ));
            }
        }
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => validate_pod_spec(&obj["spec"], "spec", &mut causes),
        ("apps", "deployments")
        | ("apps", "statefulsets")
        | ("apps", "replicasets")
        | ("apps", "daemonsets") => {
            validate_selector_matches_template(obj, &mut causes);
            validate_pod_spec(
                &obj["spec"]["template"]["spec"],
                "spec.template.spec",
                &mut causes,
            );
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.group, &rt.kind, name, &causes))
    }
}

/// Fields an update may not change (ValidatePersistentVolumeClaimUpdate): a claim's spec, except a
/// larger `resources.requests`, `volumeAttributesClassName`, and the binder filling in an empty
/// `volumeName` or an unset `storageClassName`.
fn validate_update(rt: &ResourceType, current: &Value, next: &Value) -> Result<(), ApiError> {
    if (rt.group.as_str(), rt.plural.as_str()) != ("", "persistentvolumeclaims") {
        return Ok(());
    }
    let (mut old, mut new) = (current["spec"].clone(), next["spec"].clone());
    for spec in [&mut old, &mut new] {
        if let Some(s) = spec.as_object_mut() {
            s.remove("volumeAttributesClassName");
            if let Some(r) = s.get_mut("resources").and_then(Value::as_object_mut) {
                r.remove("requests");
            }
        }
    }
    if old["volumeName"].as_str().is_none_or(str::is_empty) {
        old["volumeName"] = new["volumeName"].clone();
    }
    if old["storageClassName"].is_null() {
        old["storageClassName"] = new["storageClassName"].clone();
    }
    let drop_nulls = |v: &mut Value| {
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
    };
    drop_nulls(&mut old);
    drop_nulls(&mut new);
    if old == new {
        return Ok(());
    }
    Err(ApiError::invalid(
        &rt.group,
        &rt.kind,
        obj_name(next),
        &[(
            "spec".into(),
            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into(),
        )],
    ))
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<(String, String)>) {
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                if c["name"].as_str().is_none_or(str::is_empty) {
                    causes.push((format!("{path}.containers[{i}].name"), "Required value".into()));
                }
                if c["image"].as_str().is_none_or(str::is_empty) {
                    causes.push((format!("{path}.containers[{i}].image"), "Required value".into()));
                }
            }
        }
        _ => causes.push((format!("{path}.containers"), "Required value".into())),
    }
}

fn validate_selector_matches_template(obj: &Value, causes: &mut Vec<(String, String)>) {
    let sel = &obj["spec"]["selector"];
    if sel.is_null() {
        causes.push(("spec.selector".into(), "Required value".into()));
        return;
    }
    match freezeframe_selector::LabelSelector::from_label_selector(sel) {
        Ok(s) => {
            if s.is_empty() {
                causes.push((
                    "spec.selector".into(),
                    "Invalid value: empty selector is invalid for deployment".into(),
                ));
            } else if !s.matches(obj["spec"]["template"]["metadata"]["labels"].as_object()) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        serde_json::to_string(&obj["spec"]["template"]["metadata"]["labels"])
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        Err(e) => causes.push(("spec.selector".into(), format!("Invalid value: {e}"))),
    }
}

/// `stringData` is write-only, as in a real API server: its entries are base64-encoded into `data`
/// (winning over the same keys there) and the field is dropped.
fn merge_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = secret.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (key, value) in string_data {
        let text = value.as_str().unwrap_or_default();
        secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_names_then_dns1123_rules_apply() {
        assert!(is_dns1123_subdomain("web-0.db"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(is_dns1123_label("cassandra"));
        assert!(!is_dns1123_label("a.b"));
    }

    #[test]
    fn given_delete_options_then_propagation_and_preconditions_are_read() {
        let o = DeleteOptions::parse(
            br#"{"propagationPolicy":"Foreground","preconditions":{"uid":"u"}}"#,
            &[],
        )
        .unwrap();
        assert_eq!(o.propagation, Propagation::Foreground);
        assert_eq!(o.precondition_uid.as_deref(), Some("u"));
        assert!(DeleteOptions::parse(br#"{"propagationPolicy":"Later"}"#, &[]).is_err());
        assert_eq!(
            DeleteOptions::parse(b"", &[]).unwrap().propagation,
            Propagation::Background
        );
    }
}

#[cfg(test)]
mod random_fault_tests {
    use super::*;

    fn cluster(faults: RandomFaults) -> (tempfile::TempDir, Cluster) {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(ClusterOptions {
            state_dir: dir.path().to_path_buf(),
            limits: StoreLimits::default(),
            random_faults: Some(faults),
            own_image: Default::default(),
        });
        (dir, cluster)
    }

    fn faults(rate: f64, verbs: &[&str], after: u64) -> RandomFaults {
        RandomFaults {
            rate,
            seed: 1,
            latency: std::time::Duration::from_millis(5),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            after,
        }
    }

    #[test]
    fn given_verbs_and_after_then_only_later_requests_of_those_verbs_fail_or_wait() {
        let (_d, c) = cluster(faults(1.0, &["list"], 2));
        let (latency, fault) = c.random_fault("get");
        assert!(latency.is_zero() && fault.is_none(), "other verbs are untouched");
        for _ in 0..2 {
            assert!(c.random_fault("list").1.is_none(), "served before --fault-after");
        }
        let (latency, fault) = c.random_fault("list");
        assert_eq!(latency, std::time::Duration::from_millis(5));
        assert!(fault.is_some());
        assert_eq!(c.random_faults_injected(), 1);
    }

    #[test]
    fn given_the_same_seed_then_the_same_requests_fail() {
        let pattern = || {
            let (_d, c) = cluster(faults(0.3, &[], 0));
            (0..200)
                .map(|_| c.random_fault("get").1.is_some())
                .collect::<Vec<_>>()
        };
        let first = pattern();
        assert_eq!(first, pattern());
        let failed = first.iter().filter(|f| **f).count();
        assert!((30..=90).contains(&failed), "{failed} of 200 at rate 0.3");
    }
}
