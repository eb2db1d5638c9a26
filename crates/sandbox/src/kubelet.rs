//! The sandbox's kubelet for freezeframe's own image: pods whose container image is freezeframe's really
//! run, as host processes, so that mover Jobs work in tests and in the demo.
//!
//! - Which pods: any container image whose repository's last path segment is [`OwnImage::name`]
//!   (default `freezeframe`: `freezeframe`, `ghcr.io/x/freezeframe:v1`, `reg:5000/freezeframe@sha256:…`).
//!   Pods of other images keep the sandbox's old behaviour: Running at once, nothing runs.
//! - What runs: `command` + `args`; an empty `command` is the image's ENTRYPOINT
//!   `/usr/local/bin/freezeframe`, and `freezeframe` or `/usr/local/bin/freezeframe` as `command[0]` is
//!   [`OwnImage::binary`]. The environment is the pod's (`env` with `value`, `secretKeyRef`,
//!   `configMapKeyRef`, `fieldRef` of `metadata.name|namespace|uid`, `spec.nodeName`; `envFrom`) plus
//!   `PATH`, `HOSTNAME` and `KUBECONFIG` (the sandbox's kubeconfig, standing in for in-cluster config).
//!   A reference to a missing Secret, ConfigMap or key leaves the container waiting with
//!   `CreateContainerConfigError` (retried every second, as the kubelet does).
//! - Volumes (PVC, emptyDir, configMap, secret; `subPath`, `readOnly`) appear at their `mountPath`s in a
//!   private mount namespace (see `mountns`); `terminationMessagePath` (default `/dev/termination-log`) is
//!   a per-container file mounted there, read into `state.terminated.message` (4096 bytes at most;
//!   `FallbackToLogsOnError` uses the log's tail). The working directory is `workingDir`, else the pod
//!   directory (so relative paths such as `var/lib/data` keep working).
//! - stdout and stderr go to `<pod dir>/<container>.log`, which `pods/log` serves.
//! - Status: Pending (`ContainerCreating`) → Running → Succeeded/Failed with
//!   `containerStatuses[].state.terminated.{exitCode,reason,message}`; `restartPolicy` `Always` and
//!   `OnFailure` restart the container in place (`restartCount`, 1 s back-off). Init containers run first,
//!   one after the other.
//! - A deleted pod's processes get SIGTERM, then SIGKILL after `terminationGracePeriodSeconds`; the
//!   sandbox shutting down kills every process group it started (containers and exec'd commands).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, PENDING_ANNOTATION, Part, WriteOptions, now};
use super::controllers::{name, ns, pod_dir, uid, volume_dir};
use super::mountns::{self, Mount, MountPlan};
use super::registry::ResourceId;
use super::store::ChangeKind;

/// The image's ENTRYPOINT.
pub const ENTRYPOINT: &str = "/usr/local/bin/freezeframe";
/// Environment variable naming the binary that freezeframe's image runs.
pub const BINARY_ENV: &str = "FREEZEFRAME_SANDBOX_IMAGE_BINARY";
/// Default repository name of freezeframe's image.
pub const DEFAULT_IMAGE_NAME: &str = "freezeframe";
/// Default `terminationMessagePath`.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// The kubelet's cap on a termination message.
const MESSAGE_LIMIT: usize = 4096;
/// Lines of log a `FallbackToLogsOnError` message takes.
const FALLBACK_LINES: usize = 80;
const MANAGER: &str = "kubelet";

/// Which image runs for real, and which binary it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnImage {
    /// The repository's last path segment (`freezeframe`).
    pub name: String,
    /// The host binary standing for the image's `/usr/local/bin/freezeframe`.
    pub binary: PathBuf,
}

impl Default for OwnImage {
    fn default() -> Self {
        OwnImage::new(None, None)
    }
}

impl OwnImage {
    /// Defaults: name `freezeframe`; binary from [`BINARY_ENV`], else `freezeframe` next to the current
    /// executable.
    pub fn new(name: Option<String>, binary: Option<PathBuf>) -> Self {
        let binary = binary
            .or_else(|| std::env::var_os(BINARY_ENV).map(PathBuf::from))
            .unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("freezeframe")))
                    .unwrap_or_else(|| PathBuf::from("freezeframe"))
            });
        OwnImage {
            name: name.unwrap_or_else(|| DEFAULT_IMAGE_NAME.to_string()),
            binary,
        }
    }

    /// Whether `image` is this image (any registry, tag or digest).
    pub fn matches(&self, image: &str) -> bool {
        repository_name(image) == self.name
    }

    /// Whether any container of `pod` runs this image.
    pub fn runs(&self, pod: &Value) -> bool {
        containers(pod).any(|c| c["image"].as_str().is_some_and(|i| self.matches(i)))
    }

    /// The program and arguments of a container, with the entrypoint and binary mapped.
    pub fn argv(&self, container: &Value) -> Vec<String> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let mut argv = strings(&container["command"]);
        if argv.is_empty() {
            argv.push(ENTRYPOINT.to_string());
        }
        argv.extend(strings(&container["args"]));
        if argv[0] == ENTRYPOINT || argv[0] == "freezeframe" {
            argv[0] = self.binary.to_string_lossy().into_owned();
        }
        argv
    }
}

/// The last path segment of an image reference's repository.
pub fn repository_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
}

/// Why a container could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A Secret, ConfigMap or key the spec refers to does not exist (`CreateContainerConfigError`).
    #[error("{0}")]
    Config(String),
    /// A volume's claim is not bound yet, or a volume cannot be prepared.
    #[error("{0}")]
    Volume(String),
    /// The mount namespace could not be planned.
    #[error("cannot prepare the mounts")]
    Mounts(#[source] mountns::MountError),
    /// A file under the pod directory could not be written.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kubelet's state: what it runs.
pub struct Kubelet {
    pub own_image: OwnImage,
    kubeconfig: Mutex<Option<PathBuf>>,
    /// Process groups started (containers and exec'd commands), killed on shutdown.
    groups: ProcessTracker,
    /// Running pods by uid: cancelled when the pod is deleted.
    pods: Mutex<HashMap<String, CancellationToken>>,
}

impl Kubelet {
    pub fn new(own_image: OwnImage) -> Self {
        Kubelet {
            own_image,
            kubeconfig: Mutex::new(None),
            groups: ProcessTracker::default(),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// The kubeconfig containers get as `KUBECONFIG`.
    pub fn set_kubeconfig(&self, path: PathBuf) {
        *self.kubeconfig.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// Where exec'd commands record their process groups.
    pub fn tracker(&self) -> ProcessTracker {
        self.groups.clone()
    }

    /// SIGKILL every process group still running (the sandbox is going away).
    pub fn kill_all(&self) {
        for token in self.pods.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            token.1.cancel();
        }
        for pgid in self.groups.0.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// The process groups the sandbox started and that still run.
#[derive(Debug, Clone, Default)]
pub struct ProcessTracker(Arc<Mutex<HashSet<i32>>>);

impl ProcessTracker {
    /// Record `pgid` until the returned guard is dropped (the process was waited for).
    pub fn track(&self, pgid: i32) -> Tracked {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(pgid);
        Tracked {
            tracker: self.clone(),
            pgid,
        }
    }
}

/// A recorded process group; dropping it forgets the group.
#[derive(Debug)]
pub struct Tracked {
    tracker: ProcessTracker,
    pgid: i32,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pgid);
    }
}

fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: kill(2) on a process group this sandbox started.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn get_obj(cluster: &Cluster, plural: &str, namespace: &str, obj: &str) -> Option<Arc<Value>> {
    cluster.store.get(&ResourceId::new("", plural), namespace, obj)
}

/// A key of a Secret (base64-decoded) or ConfigMap (`data`, then `binaryData`).
fn key_of(obj: &Value, key: &str, secret: bool) -> Option<Vec<u8>> {
    if secret {
        let b = obj["data"][key].as_str()?;
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    } else if let Some(s) = obj["data"][key].as_str() {
        Some(s.as_bytes().to_vec())
    } else {
        let b = obj["binaryData"][key].as_str()?;
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    }
}

fn all_keys(obj: &Value, secret: bool) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let fields: &[&str] = if secret {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    for f in fields {
        for k in obj[*f].as_object().into_iter().flatten().map(|(k, _)| k) {
            if let Some(v) = key_of(obj, k, secret) {
                out.push((k.clone(), v));
            }
        }
    }
    out
}

/// The container's environment, resolved as the kubelet does (`envFrom` first, then `env`).
pub fn resolve_env(
    cluster: &Cluster,
    pod: &Value,
    container: &Value,
) -> Result<Vec<(String, String)>, ContainerError> {
    let namespace = ns(pod);
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |k: String, v: String, env: &mut Vec<(String, String)>| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (source, secret, what) = if from["secretRef"].is_object() {
            (&from["secretRef"], true, "secret")
        } else {
            (&from["configMapRef"], false, "configmap")
        };
        let obj_name = source["name"].as_str().unwrap_or_default();
        match get_obj(
            cluster,
            if secret { "secrets" } else { "configmaps" },
            namespace,
            obj_name,
        ) {
            Some(obj) => {
                for (k, v) in all_keys(&obj, secret) {
                    set(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                        &mut env,
                    );
                }
            }
            None if source["optional"] == true => {}
            None => return Err(ContainerError::Config(format!("{what} \"{obj_name}\" not found"))),
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(key) = e["name"].as_str() else { continue };
        let from = &e["valueFrom"];
        let value = if !from.is_object() {
            expand(e["value"].as_str().unwrap_or_default(), &env)
        } else if from["fieldRef"].is_object() {
            let path = from["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
            match path {
                "metadata.name" => name(pod).to_string(),
                "metadata.namespace" => namespace.to_string(),
                "metadata.uid" => uid(pod).to_string(),
                "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                "status.podIP" => pod["status"]["podIP"].as_str().unwrap_or_default().to_string(),
                "status.hostIP" => pod["status"]["hostIP"].as_str().unwrap_or_default().to_string(),
                other => match other
                    .strip_prefix("metadata.labels['")
                    .map(|r| ("labels", r))
                    .or_else(|| {
                        other
                            .strip_prefix("metadata.annotations['")
                            .map(|r| ("annotations", r))
                    }) {
                    Some((field, rest)) => pod["metadata"][field][rest.trim_end_matches("']")]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    None => {
                        return Err(ContainerError::Config(format!(
                            "unsupported fieldRef {other} in env {key}"
                        )));
                    }
                },
            }
        } else {
            let (r, secret, what) = if from["secretKeyRef"].is_object() {
                (&from["secretKeyRef"], true, "secret")
            } else if from["configMapKeyRef"].is_object() {
                (&from["configMapKeyRef"], false, "configmap")
            } else {
                continue;
            };
            let obj_name = r["name"].as_str().unwrap_or_default();
            let k = r["key"].as_str().unwrap_or_default();
            let optional = r["optional"] == true;
            match get_obj(
                cluster,
                if secret { "secrets" } else { "configmaps" },
                namespace,
                obj_name,
            ) {
                Some(obj) => match key_of(&obj, k, secret) {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(ContainerError::Config(format!(
                            "couldn't find key {k} in {} {namespace}/{obj_name}",
                            if secret { "Secret" } else { "ConfigMap" }
                        )));
                    }
                },
                None if optional => continue,
                None => return Err(ContainerError::Config(format!("{what} \"{obj_name}\" not found"))),
            }
        };
        set(key.to_string(), value, &mut env);
    }
    Ok(env)
}

/// `$(VAR)` references to earlier variables, as the kubelet expands them (`$$` escapes).
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(")
            && let Some(end) = t.find(')')
            && let Some((_, v)) = env.iter().find(|(k, _)| *k == t[..end])
        {
            out.push_str(v);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The host directory (or file) behind each volume mount of `container`, ready to be mounted.
/// `strict`: an unbound claim is an error (a container waits); otherwise it is left out (exec).
pub fn container_mounts(
    cluster: &Cluster,
    pod: &Value,
    container: &Value,
    strict: bool,
) -> Result<Vec<Mount>, ContainerError> {
    let namespace = ns(pod);
    let dir = pod_dir(cluster, namespace, name(pod));
    let volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let Some(vol) = volumes.iter().find(|v| v["name"] == m["name"]) else {
            continue;
        };
        let vol_name = vol["name"].as_str().unwrap_or_default();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContainerError::Io { path, source }
        };
        let source = if let Some(claim) = vol["persistentVolumeClaim"]["claimName"].as_str() {
            let pv = get_obj(cluster, "persistentvolumeclaims", namespace, claim)
                .and_then(|c| c["spec"]["volumeName"].as_str().map(str::to_string))
                .filter(|v| !v.is_empty());
            match pv {
                Some(pv) => volume_dir(cluster, &pv),
                None if strict => {
                    return Err(ContainerError::Volume(format!(
                        "persistentvolumeclaim \"{claim}\" is not bound"
                    )));
                }
                None => continue,
            }
        } else if vol["emptyDir"].is_object() {
            dir.join(".volumes").join(vol_name)
        } else if vol["configMap"].is_object() || vol["secret"].is_object() {
            let secret = vol["secret"].is_object();
            let spec = if secret { &vol["secret"] } else { &vol["configMap"] };
            let obj_name = spec[if secret { "secretName" } else { "name" }]
                .as_str()
                .unwrap_or_default();
            let target = dir.join(".volumes").join(vol_name);
            let obj = get_obj(
                cluster,
                if secret { "secrets" } else { "configmaps" },
                namespace,
                obj_name,
            );
            let Some(obj) = obj else {
                if spec["optional"] == true {
                    std::fs::create_dir_all(&target).map_err(io(&target))?;
                    mounts.push(Mount {
                        source: target,
                        target: PathBuf::from(m["mountPath"].as_str().unwrap_or_default()),
                        read_only: true,
                    });
                    continue;
                } else if strict {
                    return Err(ContainerError::Volume(format!(
                        "{} \"{obj_name}\" not found",
                        if secret { "secret" } else { "configmap" }
                    )));
                } else {
                    continue;
                }
            };
            let _ = std::fs::remove_dir_all(&target);
            std::fs::create_dir_all(&target).map_err(io(&target))?;
            let keys = all_keys(&obj, secret);
            let items: Vec<(String, String)> = match spec["items"].as_array() {
                Some(items) => items
                    .iter()
                    .filter_map(|i| Some((i["key"].as_str()?.to_string(), i["path"].as_str()?.to_string())))
                    .collect(),
                None => keys.iter().map(|(k, _)| (k.clone(), k.clone())).collect(),
            };
            for (key, rel) in items {
                if rel.split('/').any(|s| s == "..") {
                    continue;
                }
                let Some((_, bytes)) = keys.iter().find(|(k, _)| *k == key) else {
                    continue;
                };
                let file = target.join(&rel);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(&file, bytes).map_err(io(&file))?;
            }
            target
        } else {
            continue;
        };
        std::fs::create_dir_all(&source).map_err(|e| ContainerError::Io {
            path: source.clone(),
            source: e,
        })?;
        let source = match m["subPath"]
            .as_str()
            .filter(|s| !s.is_empty() && !s.contains(".."))
        {
            Some(sub) => {
                let p = source.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(io(&p))?;
                }
                p
            }
            None => source,
        };
        let Some(target) = m["mountPath"].as_str() else {
            continue;
        };
        mounts.push(Mount {
            source,
            target: PathBuf::from(target),
            read_only: m["readOnly"] == true || vol["configMap"].is_object() || vol["secret"].is_object(),
        });
    }
    Ok(mounts)
}

/// The directory every mount namespace's root is built on (empty on the host).
fn namespace_root(cluster: &Cluster) -> Result<PathBuf, ContainerError> {
    let root = cluster.state_dir.join(".mountns-root");
    std::fs::create_dir_all(&root).map_err(|source| ContainerError::Io {
        path: root.clone(),
        source,
    })?;
    Ok(root)
}

/// The mount namespace of a process in `pod`'s `container` (None: namespaces are not available).
pub fn plan_for(
    cluster: &Cluster,
    mounts: &[Mount],
    workdir: &Path,
) -> Result<Option<Arc<MountPlan>>, ContainerError> {
    if !mountns::available() {
        return Ok(None);
    }
    let root = namespace_root(cluster)?;
    MountPlan::new(&root, mounts, workdir)
        .map(|p| Some(Arc::new(p)))
        .map_err(ContainerError::Mounts)
}

/// Make `cmd` enter `plan` (if any) and start a process group of its own.
pub fn prepare_command(cmd: &mut tokio::process::Command, plan: Option<Arc<MountPlan>>) {
    cmd.process_group(0);
    if let Some(plan) = plan {
        // SAFETY: `enter` makes system calls only, on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || plan.enter());
        }
    }
}

/// Start the kubelet: it follows pod changes and also drives the Job controller's timers.
pub fn spawn(cluster: &Arc<Cluster>) {
    let Ok(start) = cluster.store.watch(None) else {
        return;
    };
    let mut live = start.live;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(change) if change.resource == ResourceId::new("", "pods") => {
                        let Some(cluster) = weak.upgrade() else { return };
                        observe(&cluster, change.kind, &change.object);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let Some(cluster) = weak.upgrade() else { return };
                        for pod in cluster.store.list(&ResourceId::new("", "pods"), None) {
                            observe(&cluster, ChangeKind::Added, &pod);
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    let Some(cluster) = weak.upgrade() else { return };
                    cluster.request(|work| super::controllers::job_timers(&cluster, work));
                }
            }
        }
    });
}

fn observe(cluster: &Arc<Cluster>, kind: ChangeKind, pod: &Value) {
    let pod_uid = uid(pod).to_string();
    let gone = kind == ChangeKind::Deleted || pod["metadata"].get("deletionTimestamp").is_some();
    if gone {
        if let Some(token) = cluster
            .kubelet
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pod_uid)
        {
            token.cancel();
        }
        return;
    }
    if kind != ChangeKind::Added
        || !cluster.kubelet.own_image.runs(pod)
        || pod["status"]["phase"] != "Pending"
        || pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        || pod["metadata"]["annotations"][PENDING_ANNOTATION].as_str() == Some("Pending")
    {
        return;
    }
    let token = CancellationToken::new();
    {
        let mut pods = cluster.kubelet.pods.lock().unwrap_or_else(|p| p.into_inner());
        if pods.contains_key(&pod_uid) {
            return;
        }
        pods.insert(pod_uid.clone(), token.clone());
    }
    let weak = Arc::downgrade(cluster);
    let pod = pod.clone();
    tokio::spawn(async move {
        run_pod(weak.clone(), pod, token).await;
        if let Some(cluster) = weak.upgrade() {
            cluster
                .kubelet
                .pods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pod_uid);
        }
    });
}

/// How one run of a container ended.
#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    reason: &'static str,
    message: String,
    started_at: String,
    finished_at: String,
}

/// Write `f`'s changes to the pod's status (if it is still the same pod).
fn update_status(cluster: &Cluster, pod: &Value, f: impl Fn(&mut Value)) {
    let Some(rt) = cluster.find_type("", "v1", "pods") else {
        return;
    };
    for _ in 0..5 {
        let Some(current) = get_obj(cluster, "pods", ns(pod), name(pod)) else {
            return;
        };
        if uid(&current) != uid(pod) {
            return;
        }
        let mut next = (*current).clone();
        f(&mut next["status"]);
        if next == *current {
            return;
        }
        let opts = WriteOptions {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match cluster
            .request(|work| cluster.update_in(work, &rt, ns(pod), name(pod), next, Part::Status, &opts))
        {
            Ok(_) => return,
            Err(e) if e.code == 409 => continue,
            Err(e) => {
                tracing::debug!(pod = name(pod), error = %e, "pod status update failed");
                return;
            }
        }
    }
}

fn container_status<'a>(status: &'a mut Value, field: &str, container: &str) -> Option<&'a mut Value> {
    status[field]
        .as_array_mut()?
        .iter_mut()
        .find(|s| s["name"] == container)
}

fn set_condition(status: &mut Value, kind: &str, value: bool, reason: Option<&str>) {
    let t = now();
    let v = if value { "True" } else { "False" };
    let conds = match status["conditions"].as_array_mut() {
        Some(c) => c,
        None => {
            status["conditions"] = json!([]);
            status["conditions"].as_array_mut().expect("just set")
        }
    };
    match conds.iter_mut().find(|c| c["type"] == kind) {
        Some(c) => {
            if c["status"] != v {
                c["lastTransitionTime"] = json!(t);
            }
            c["status"] = json!(v);
            match reason {
                Some(r) => c["reason"] = json!(r),
                None => {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("reason");
                    }
                }
            }
        }
        None => {
            let mut c = json!({"type": kind, "status": v, "lastTransitionTime": t});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            conds.push(c);
        }
    }
}

fn status_field(init: bool) -> &'static str {
    if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    }
}

async fn run_pod(cluster: Weak<Cluster>, pod: Value, token: CancellationToken) {
    let restart = pod["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_string();
    let own = match cluster.upgrade() {
        Some(c) => c.kubelet.own_image.clone(),
        None => return,
    };
    let init: Vec<Value> = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(c) = cluster.upgrade() {
        update_status(&c, &pod, |s| {
            for (field, list) in [("initContainerStatuses", &init)] {
                if !list.is_empty() {
                    s[field] = json!(
                        list.iter()
                            .map(|c| json!({"name": c["name"], "image": c["image"],
                        "imageID": "", "ready": false, "restartCount": 0, "started": false,
                        "state": {"waiting": {"reason": "PodInitializing"}}}))
                            .collect::<Vec<_>>()
                    );
                }
            }
        });
    }
    for c in &init {
        let ended = run_container(&cluster, &pod, c, true, "OnFailure", &own, &token).await;
        match ended {
            Some(t) if t.exit_code == 0 => {}
            Some(_) => {
                if restart == "Never"
                    && let Some(cl) = cluster.upgrade()
                {
                    update_status(&cl, &pod, |s| {
                        s["phase"] = json!("Failed");
                        set_condition(s, "Ready", false, Some("PodFailed"));
                    });
                }
                return;
            }
            None => return,
        }
    }
    let regular: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let runs = regular
        .iter()
        .filter(|c| c["image"].as_str().is_some_and(|i| own.matches(i)))
        .map(|c| run_container(&cluster, &pod, c, false, &restart, &own, &token));
    let results = futures::future::join_all(runs).await;
    if results.iter().any(Option::is_none) {
        return;
    }
    let failed = results.iter().flatten().any(|t| t.exit_code != 0);
    if let Some(cl) = cluster.upgrade() {
        update_status(&cl, &pod, |s| {
            s["phase"] = json!(if failed { "Failed" } else { "Succeeded" });
            set_condition(s, "Ready", false, Some("PodCompleted"));
            set_condition(s, "ContainersReady", false, Some("PodCompleted"));
        });
    }
}

/// Run one container until it ends for good (per `restart`); `None`: the pod went away first.
async fn run_container(
    cluster: &Weak<Cluster>,
    pod: &Value,
    container: &Value,
    init: bool,
    restart: &str,
    own: &OwnImage,
    token: &CancellationToken,
) -> Option<Terminated> {
    let cname = container["name"].as_str().unwrap_or_default().to_string();
    let field = status_field(init);
    let mut restarts = 0;
    loop {
        let cl = cluster.upgrade()?;
        let prepared = prepare(&cl, pod, container, own);
        let (argv, env, workdir, plan, log, term_file) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    ContainerError::Config(_) => "CreateContainerConfigError",
                    _ => "ContainerCreating",
                };
                let message = e.to_string();
                update_status(&cl, pod, |s| {
                    if let Some(cs) = container_status(s, field, &cname) {
                        cs["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    }
                });
                drop(cl);
                tokio::select! {
                    _ = token.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let kubeconfig = cl
            .kubelet
            .kubeconfig
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOSTNAME", name(pod))
            .env("HOME", "/root")
            .current_dir(&workdir)
            .stdin(Stdio::null());
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        cmd.envs(env);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log);
        let started_at = now();
        let spawned = out.and_then(|f| {
            let err = f.try_clone()?;
            cmd.stdout(f).stderr(err);
            prepare_command(&mut cmd, plan);
            cmd.spawn()
        });
        let outcome = match spawned {
            Err(e) => Terminated {
                exit_code: 128,
                reason: "StartError",
                message: format!(
                    "failed to create containerd task: failed to create shim task: OCI runtime create failed: \
                     runc create failed: unable to start container process: exec: \"{}\": {e}{}",
                    argv[0],
                    start_failure_detail(&log)
                ),
                started_at: started_at.clone(),
                finished_at: now(),
            },
            Ok(mut child) => {
                let pgid = child.id().map(|p| p as i32).unwrap_or(0);
                let tracked = cl.kubelet.groups.track(pgid);
                let cid = format!("sandbox://{}", uuid::Uuid::new_v4().simple());
                update_status(&cl, pod, |s| {
                    if let Some(cs) = container_status(s, field, &cname) {
                        cs["state"] = json!({"running": {"startedAt": started_at}});
                        cs["containerID"] = json!(cid);
                        cs["started"] = json!(true);
                        cs["ready"] = json!(!init);
                        cs["restartCount"] = json!(restarts);
                    }
                    if !init {
                        s["phase"] = json!("Running");
                        set_condition(s, "Initialized", true, None);
                        set_condition(s, "Ready", true, None);
                        set_condition(s, "ContainersReady", true, None);
                    }
                });
                let grace = pod["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30);
                drop(cl);
                let status = tokio::select! {
                    s = child.wait() => s,
                    _ = token.cancelled() => {
                        signal_group(pgid, libc::SIGTERM);
                        if tokio::time::timeout(Duration::from_secs(grace), child.wait()).await.is_err() {
                            signal_group(pgid, libc::SIGKILL);
                            let _ = child.wait().await;
                        }
                        // Anything left in the group (children of the container) goes too.
                        signal_group(pgid, libc::SIGKILL);
                        drop(tracked);
                        return None;
                    }
                };
                signal_group(pgid, libc::SIGKILL);
                drop(tracked);
                cluster.upgrade()?;
                let (exit_code, reason) = match &status {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        let code = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
                        (code, if code == 0 { "Completed" } else { "Error" })
                    }
                    Err(_) => (128, "Error"),
                };
                let mut message = read_limited(&term_file);
                if message.is_empty()
                    && exit_code != 0
                    && container["terminationMessagePolicy"] == "FallbackToLogsOnError"
                {
                    message = log_tail(&log, FALLBACK_LINES);
                }
                Terminated {
                    exit_code,
                    reason,
                    message,
                    started_at,
                    finished_at: now(),
                }
            }
        };
        let again = match restart {
            "Always" => true,
            "OnFailure" => outcome.exit_code != 0,
            _ => false,
        };
        let cl = cluster.upgrade()?;
        let terminated = terminated_json(&outcome);
        update_status(&cl, pod, |s| {
            if let Some(cs) = container_status(s, field, &cname) {
                cs["ready"] = json!(false);
                if again {
                    cs["lastState"] = json!({"terminated": terminated});
                    cs["state"] = json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off restarting failed container {cname}")}});
                    cs["restartCount"] = json!(restarts + 1);
                } else {
                    cs["state"] = json!({"terminated": terminated});
                    cs["started"] = json!(false);
                }
            }
        });
        drop(cl);
        if !again {
            return Some(outcome);
        }
        restarts += 1;
        tokio::select! {
            _ = token.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({"exitCode": t.exit_code, "reason": t.reason, "startedAt": t.started_at,
        "finishedAt": t.finished_at, "containerID": ""});
    if let Some(o) = v.as_object_mut() {
        o.remove("containerID");
    }
    if !t.message.is_empty() {
        v["message"] = json!(t.message);
    }
    v
}

type Prepared = (
    Vec<String>,
    Vec<(String, String)>,
    PathBuf,
    Option<Arc<MountPlan>>,
    PathBuf,
    PathBuf,
);

/// Everything a container start needs: argv, env, working directory, mounts, log and message files.
fn prepare(
    cluster: &Cluster,
    pod: &Value,
    container: &Value,
    own: &OwnImage,
) -> Result<Prepared, ContainerError> {
    // The pod's directory is this pod's before anything is written into it (see `start_pod_dir`).
    super::controllers::start_pod_dir(cluster, pod);
    let env = resolve_env(cluster, pod, container)?;
    let mut mounts = container_mounts(cluster, pod, container, true)?;
    let dir = pod_dir(cluster, ns(pod), name(pod));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let cname = container["name"].as_str().unwrap_or_default();
    let term_dir = dir.join(".termination");
    std::fs::create_dir_all(&term_dir).map_err(io(&term_dir))?;
    let term_file = term_dir.join(cname);
    std::fs::write(&term_file, b"").map_err(io(&term_file))?;
    let namespaces = mountns::available();
    if namespaces && container["image"].as_str().is_some_and(|i| own.matches(i)) && own.binary.is_file() {
        // The image's entrypoint, for commands that call it by name (`sh -c "freezeframe …"`).
        mounts.push(Mount {
            source: own.binary.clone(),
            target: PathBuf::from(ENTRYPOINT),
            read_only: true,
        });
    }
    if namespaces {
        let path = container["terminationMessagePath"]
            .as_str()
            .filter(|p| !p.is_empty())
            .unwrap_or(TERMINATION_LOG);
        mounts.push(Mount {
            source: term_file.clone(),
            target: PathBuf::from(path),
            read_only: false,
        });
    }
    let workdir = container["workingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.clone());
    let plan = plan_for(cluster, &mounts, &workdir)?;
    let workdir = if plan.is_some() || !workdir.is_absolute() || workdir.exists() {
        workdir
    } else {
        dir.clone()
    };
    let log = dir.join(format!("{cname}.log"));
    Ok((own.argv(container), env, workdir, plan, log, term_file))
}

/// What the sandbox wrote to the container log while starting it (a failed mount step), as a suffix.
fn start_failure_detail(log: &Path) -> String {
    let text = read_limited(log);
    text.lines()
        .rev()
        .find(|l| l.starts_with("sandbox: "))
        .map(|l| format!(" ({})", l.trim_start_matches("sandbox: ")))
        .unwrap_or_default()
}

fn read_limited(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let bytes = &bytes[..bytes.len().min(MESSAGE_LIMIT)];
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last `lines` lines of a log file (at most [`MESSAGE_LIMIT`] bytes).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = tail_lines(&text, lines);
    let start = text.len().saturating_sub(MESSAGE_LIMIT);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_image_references_when_matched_then_last_repository_segment_decides() {
        let own = OwnImage::new(None, Some(PathBuf::from("/bin/ff")));
        for yes in [
            "freezeframe",
            "freezeframe:latest",
            "ghcr.io/x/freezeframe:v1",
            "reg:5000/freezeframe@sha256:abc",
            "reg:5000/a/b/freezeframe:1@sha256:abc",
        ] {
            assert!(own.matches(yes), "{yes}");
        }
        for no in [
            "busybox",
            "freezeframe-demo",
            "ghcr.io/freezeframe/app:v1",
            "reg:5000/x/frozen",
        ] {
            assert!(!own.matches(no), "{no}");
        }
    }

    #[test]
    fn given_container_when_argv_built_then_entrypoint_and_binary_are_mapped() {
        let own = OwnImage::new(None, Some(PathBuf::from("/bin/ff")));
        assert_eq!(
            own.argv(&json!({"args": ["mover", "backup"]})),
            ["/bin/ff", "mover", "backup"]
        );
        assert_eq!(
            own.argv(&json!({"command": ["freezeframe"], "args": ["--version"]})),
            ["/bin/ff", "--version"]
        );
        assert_eq!(
            own.argv(&json!({"command": ["/usr/local/bin/freezeframe", "validate"]})),
            ["/bin/ff", "validate"]
        );
        assert_eq!(
            own.argv(&json!({"command": ["sh", "-c", "exit 3"]})),
            ["sh", "-c", "exit 3"]
        );
    }

    #[test]
    fn given_env_values_when_expanded_then_earlier_variables_and_escapes_apply() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)", &env), "x-$(B)-$(A)");
    }

    #[test]
    fn given_log_when_tailed_then_last_lines_are_kept() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 5), b"a\nb\nc");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }
}
