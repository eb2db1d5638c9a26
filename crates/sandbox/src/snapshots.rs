//! The sandbox CSI driver's snapshots: what the snapshot-controller and the external-snapshotter sidecar
//! do, with a directory copy as the storage-side snapshot.
//!
//! - A VolumeSnapshot of a bound claim gets a VolumeSnapshotContent (`snapcontent-<uid>`, handle
//!   `snapshot-<uid>`) and the claim's volume directory is copied to `<state_dir>/snapshots/<handle>`
//!   while the create request is handled: that instant is the cut, `status.creationTime` and
//!   `boundVolumeSnapshotContentName` are set with it.
//! - A VolumeGroupSnapshot copies every claim its `spec.source.selector` matches at one instant and gets
//!   a VolumeGroupSnapshotContent plus, per claim, a member VolumeSnapshot (`snapshot-<hash>`, owned by the
//!   group) bound to a pre-provisioned member content; the group content's
//!   `status.volumeSnapshotHandlePairList` maps each volume handle to its snapshot handle.
//! - `readyToUse` is true at once, or after the delay the annotation [`READY_AFTER_ANNOTATION`] gives on
//!   the snapshot or its class (the bootstrap classes carry [`SandboxOptions::snapshot_ready_delay`]).
//!   A background task ([`spawn_readiness`]) flips it through the cluster API, so requests never wait.
//! - [`ERROR_ANNOTATION`] on the snapshot, its class or a source claim makes the snapshot fail with that
//!   message in `status.error` (tests inject failures this way).
//! - A claim with `dataSource` (or `dataSourceRef`) naming a VolumeSnapshot is provisioned from the
//!   snapshot's copy once the snapshot is ready (it stays Pending until then).
//! - Deleting a snapshot whose content has `deletionPolicy: Delete` deletes the content and its copy.
//!
//! [`SandboxOptions::snapshot_ready_delay`]: super::SandboxOptions::snapshot_ready_delay

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cluster::{Cluster, DeleteOptions, Event, Part, Work, WriteOptions};
use super::controllers::{name, ns, selector_matches, uid, volume_dir};
use super::registry::{ResourceId, ResourceType};
use super::store::ChangeKind;

/// The sandbox CSI driver name (the `sandbox` StorageClass's provisioner).
pub const DRIVER: &str = "sandbox.freezeframe.dev";
/// On a VolumeSnapshot, VolumeGroupSnapshot, their class or a source PVC: fail the snapshot with this
/// message.
pub const ERROR_ANNOTATION: &str = "sandbox.freezeframe.dev/snapshot-error";
/// On a snapshot or its class: a duration (`2s`, `500ms`) after the cut at which it becomes readyToUse.
pub const READY_AFTER_ANNOTATION: &str = "sandbox.freezeframe.dev/ready-after";
/// On a content that is not yet ready: when it becomes ready (RFC 3339).
const READY_AT_ANNOTATION: &str = "sandbox.freezeframe.dev/ready-at";

const MANAGER: &str = "sandbox-snapshot-controller";
const SNAP: &str = "snapshot.storage.k8s.io";
const GROUP: &str = "groupsnapshot.storage.k8s.io";
const DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";
const DEFAULT_GROUP_CLASS: &str = "groupsnapshot.storage.kubernetes.io/is-default-class";

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o["metadata"]["annotations"][key].as_str()
}

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// The served type of a snapshot kind (`None` if a test removed its CRD).
fn kind(cluster: &Cluster, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
    let version = if group == SNAP { "v1" } else { "v1beta1" };
    cluster.find_type(group, version, plural)
}

/// Where the copy behind a snapshot handle lives.
pub fn snapshot_dir(cluster: &Cluster, handle: &str) -> PathBuf {
    cluster.state_dir.join("snapshots").join(handle)
}

/// React to a change of a snapshot kind (called by the controllers' dispatcher).
pub fn react(cluster: &Cluster, ev: &Event, work: &mut Work) {
    let obj = &ev.object;
    match (ev.resource.group.as_str(), ev.resource.plural.as_str(), ev.kind) {
        (SNAP, "volumesnapshots", ChangeKind::Added) => take_snapshot(cluster, obj, work),
        (SNAP, "volumesnapshots", ChangeKind::Modified) => {
            let was_ready = ev.old.as_ref().is_some_and(|o| o["status"]["readyToUse"] == true);
            if obj["status"]["readyToUse"] == true && !was_ready {
                provision_waiting_claims(cluster, obj, work);
            }
        }
        (SNAP, "volumesnapshots", ChangeKind::Deleted) => {
            delete_bound_content(cluster, obj, "volumesnapshotcontents", SNAP, work)
        }
        (SNAP, "volumesnapshotcontents", ChangeKind::Added) => check_preprovisioned(cluster, obj, work),
        (SNAP, "volumesnapshotcontents", ChangeKind::Deleted) => {
            if obj["spec"]["deletionPolicy"] == "Delete"
                && let Some(handle) = obj["status"]["snapshotHandle"].as_str()
            {
                let _ = std::fs::remove_dir_all(snapshot_dir(cluster, handle));
            }
        }
        (GROUP, "volumegroupsnapshots", ChangeKind::Added) => take_group(cluster, obj, work),
        (GROUP, "volumegroupsnapshots", ChangeKind::Deleted) => {
            delete_bound_content(cluster, obj, "volumegroupsnapshotcontents", GROUP, work)
        }
        _ => {}
    }
}

/// Write `status` fields (merged into the current status) of an object.
fn set_status(
    cluster: &Cluster,
    work: &mut Work,
    rt: &ResourceType,
    namespace: &str,
    n: &str,
    status: Value,
) {
    let Some(current) = cluster.store.get(&rt.id(), namespace, n) else {
        return;
    };
    let mut next = (*current).clone();
    if !next["status"].is_object() {
        next["status"] = json!({});
    }
    for (k, v) in status.as_object().into_iter().flatten() {
        next["status"][k] = v.clone();
    }
    if let Err(e) = cluster.update_in(work, rt, namespace, n, next, Part::Status, &opts()) {
        tracing::warn!(kind = %rt.kind, name = n, error = %e, "sandbox snapshot status not written");
    }
}

fn fail(cluster: &Cluster, work: &mut Work, rt: &ResourceType, obj: &Value, message: String) {
    tracing::info!(kind = %rt.kind, name = name(obj), %message, "sandbox snapshot failed");
    set_status(
        cluster,
        work,
        rt,
        ns(obj),
        name(obj),
        json!({"readyToUse": false, "error": {"message": message, "time": super::cluster::now()}}),
    );
}

/// The class named, or the default class of `driver` (by `default_annotation`).
fn class(
    cluster: &Cluster,
    plural: &str,
    group: &str,
    named: Option<&str>,
    default_annotation: &str,
    driver: &str,
) -> Result<Arc<Value>, String> {
    let id = ResourceId::new(group, plural);
    match named {
        Some(n) => cluster
            .store
            .get(&id, "", n)
            .ok_or_else(|| format!("{plural}.{group} \"{n}\" not found")),
        None => cluster
            .store
            .list(&id, None)
            .into_iter()
            .find(|c| annotation(c, default_annotation) == Some("true") && c["driver"] == driver)
            .ok_or_else(|| format!("no default {plural}.{group} for driver {driver}")),
    }
}

/// A bound claim's volume: (PV name, CSI driver, volume handle, capacity).
struct Volume {
    pv: String,
    driver: String,
    handle: String,
    capacity: Value,
}

fn bound_volume(cluster: &Cluster, namespace: &str, claim: &str) -> Result<(Arc<Value>, Volume), String> {
    let pvc = cluster
        .store
        .get(&ResourceId::new("", "persistentvolumeclaims"), namespace, claim)
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
    if pv_name.is_empty() || pvc["status"]["phase"] != "Bound" {
        return Err(format!("persistentvolumeclaim \"{claim}\" is not bound"));
    }
    let pv = cluster
        .store
        .get(&ResourceId::new("", "persistentvolumes"), "", pv_name)
        .ok_or_else(|| format!("persistentvolume \"{pv_name}\" not found"))?;
    let volume = Volume {
        pv: pv_name.to_string(),
        driver: pv["spec"]["csi"]["driver"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        handle: pv["spec"]["csi"]["volumeHandle"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        capacity: pvc["status"]["capacity"]["storage"].clone(),
    };
    Ok((pvc, volume))
}

/// An injected failure on any of `objects`.
fn injected_error(objects: &[&Value]) -> Option<String> {
    objects
        .iter()
        .find_map(|o| annotation(o, ERROR_ANNOTATION))
        .map(|m| format!("sandbox CSI driver: {m}"))
}

/// The readiness delay the snapshot or its class asks for.
fn ready_delay(objects: &[&Value]) -> Duration {
    objects
        .iter()
        .find_map(|o| annotation(o, READY_AFTER_ANNOTATION))
        .and_then(parse_delay)
        .unwrap_or_default()
}

/// A delay as the annotation is written: a whole number with a unit, `1500ms`, `30s` or `2m`.
fn parse_delay(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = text[..split].parse().ok()?;
    match &text[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or_default()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Copy `from` (a directory tree; symlinks copied as links) to `to`; a missing source is empty.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if file_type.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// What a new content records.
struct ContentSpec<'a> {
    name: String,
    snapshot_ref: Value,
    driver: &'a str,
    class: &'a Value,
    source: Value,
    handle: String,
    cut: DateTime<Utc>,
    ready_at: Option<DateTime<Utc>>,
    /// Status fields beyond the common ones.
    extra_status: Value,
}

fn create_content(cluster: &Cluster, work: &mut Work, plural: &str, group: &str, c: ContentSpec) -> bool {
    let Some(rt) = kind(cluster, group, plural) else {
        return false;
    };
    let (ref_field, class_field, handle_field) = if group == SNAP {
        ("volumeSnapshotRef", "volumeSnapshotClassName", "snapshotHandle")
    } else {
        (
            "volumeGroupSnapshotRef",
            "volumeGroupSnapshotClassName",
            "volumeGroupSnapshotHandle",
        )
    };
    let mut meta = json!({"name": c.name});
    if let Some(at) = c.ready_at {
        meta["annotations"] = json!({READY_AT_ANNOTATION: rfc3339(at)});
    }
    let obj = json!({
        "apiVersion": format!("{group}/{}", rt.version), "kind": rt.kind, "metadata": meta,
        "spec": {ref_field: c.snapshot_ref, "driver": c.driver, class_field: name(c.class),
                 "deletionPolicy": c.class["deletionPolicy"].as_str().unwrap_or("Delete"), "source": c.source},
    });
    if let Err(e) = cluster.create_in(work, &rt, "", obj, &opts()) {
        tracing::warn!(content = %c.name, error = %e, "sandbox snapshot content not created");
        return false;
    }
    let mut status =
        json!({handle_field: c.handle, "creationTime": nanos(c.cut), "readyToUse": c.ready_at.is_none()});
    for (k, v) in c.extra_status.as_object().into_iter().flatten() {
        status[k] = v.clone();
    }
    set_status(cluster, work, &rt, "", &c.name, status);
    true
}

fn object_ref(obj: &Value, rt: &ResourceType) -> Value {
    json!({"apiVersion": format!("{}/{}", rt.group, rt.version), "kind": rt.kind,
           "namespace": ns(obj), "name": name(obj), "uid": uid(obj)})
}

fn take_snapshot(cluster: &Cluster, vs: &Value, work: &mut Work) {
    let Some(rt) = kind(cluster, SNAP, "volumesnapshots") else {
        return;
    };
    if let Some(content) = vs["spec"]["source"]["volumeSnapshotContentName"].as_str() {
        return bind_preprovisioned(cluster, &rt, vs, content, work);
    }
    let Some(claim) = vs["spec"]["source"]["persistentVolumeClaimName"].as_str() else {
        return fail(
            cluster,
            work,
            &rt,
            vs,
            "spec.source names neither a claim nor a content".into(),
        );
    };
    let (pvc, volume) = match bound_volume(cluster, ns(vs), claim) {
        Ok(v) => v,
        Err(m) => return fail(cluster, work, &rt, vs, m),
    };
    let class = match class(
        cluster,
        "volumesnapshotclasses",
        SNAP,
        vs["spec"]["volumeSnapshotClassName"].as_str(),
        DEFAULT_CLASS,
        &volume.driver,
    ) {
        Ok(c) => c,
        Err(m) => return fail(cluster, work, &rt, vs, m),
    };
    if class["driver"] != volume.driver.as_str() {
        let m = format!(
            "class {} is for driver {}, the claim's volume is on {}",
            name(&class),
            class["driver"].as_str().unwrap_or_default(),
            volume.driver
        );
        return fail(cluster, work, &rt, vs, m);
    }
    if let Some(m) = injected_error(&[vs, &class, &pvc]) {
        return fail(cluster, work, &rt, vs, m);
    }
    let handle = format!("snapshot-{}", uid(vs));
    let cut = Utc::now();
    if let Err(e) = copy_tree(&volume_dir(cluster, &volume.pv), &snapshot_dir(cluster, &handle)) {
        return fail(cluster, work, &rt, vs, format!("copying the volume: {e}"));
    }
    let delay = ready_delay(&[vs, &class]);
    let ready_at = (!delay.is_zero()).then(|| cut + delay);
    let content = format!("snapcontent-{}", uid(vs));
    let created = create_content(
        cluster,
        work,
        "volumesnapshotcontents",
        SNAP,
        ContentSpec {
            name: content.clone(),
            snapshot_ref: object_ref(vs, &rt),
            driver: &volume.driver,
            class: &class,
            source: json!({"volumeHandle": volume.handle}),
            handle,
            cut,
            ready_at,
            extra_status: json!({"restoreSize": quantity_bytes(&volume.capacity)}),
        },
    );
    if !created {
        return fail(cluster, work, &rt, vs, "content could not be created".into());
    }
    let status = json!({"boundVolumeSnapshotContentName": content, "creationTime": rfc3339(cut),
        "readyToUse": ready_at.is_none(), "restoreSize": volume.capacity});
    if vs["spec"]["volumeSnapshotClassName"].is_null() {
        // The snapshot-controller records the default class it chose in the spec.
        if let Some(current) = cluster.store.get(&rt.id(), ns(vs), name(vs)) {
            let mut next = (*current).clone();
            next["spec"]["volumeSnapshotClassName"] = json!(name(&class));
            let _ = cluster.update_in(work, &rt, ns(vs), name(vs), next, Part::Main, &opts());
        }
    }
    set_status(cluster, work, &rt, ns(vs), name(vs), status);
}

/// A quantity (`1Gi`, `500Mi`, `1G`, `1000`) in bytes; 0 if unparseable.
pub(super) fn quantity_bytes(q: &Value) -> i64 {
    let s = q.as_str().unwrap_or_default();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().unwrap_or(0);
    let mult: i64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => 0,
    };
    n.saturating_mul(mult)
}

/// A pre-provisioned content (`spec.source.snapshotHandle`, as a restore into another cluster creates
/// it): the CSI sidecar asks the driver whether the snapshot exists and reports it ready, or not.
fn check_preprovisioned(cluster: &Cluster, content: &Value, work: &mut Work) {
    let Some(handle) = content["spec"]["source"]["snapshotHandle"].as_str() else {
        return;
    };
    if content["status"]["readyToUse"].is_boolean() {
        return;
    }
    let Some(rt) = kind(cluster, SNAP, "volumesnapshotcontents") else {
        return;
    };
    let dir = snapshot_dir(cluster, handle);
    let status = if dir.is_dir() {
        let created = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        json!({"snapshotHandle": handle, "readyToUse": true, "creationTime": nanos(created)})
    } else {
        json!({"snapshotHandle": handle, "readyToUse": false,
               "error": {"message": format!("snapshot {handle} does not exist on driver {}", content["spec"]["driver"].as_str().unwrap_or_default()), "time": rfc3339(Utc::now())}})
    };
    set_status(cluster, work, &rt, "", name(content), status);
}

/// A snapshot of an existing content (pre-provisioned, or a group member): bind and mirror its status.
fn bind_preprovisioned(
    cluster: &Cluster,
    rt: &ResourceType,
    vs: &Value,
    content_name: &str,
    work: &mut Work,
) {
    let Some(content_rt) = kind(cluster, SNAP, "volumesnapshotcontents") else {
        return;
    };
    let Some(content) = cluster.store.get(&content_rt.id(), "", content_name) else {
        return fail(
            cluster,
            work,
            rt,
            vs,
            format!("volumesnapshotcontent \"{content_name}\" not found"),
        );
    };
    let r = &content["spec"]["volumeSnapshotRef"];
    if r["name"] != name(vs) || r["namespace"] != ns(vs) {
        return fail(
            cluster,
            work,
            rt,
            vs,
            format!("volumesnapshotcontent \"{content_name}\" is for another snapshot"),
        );
    }
    if r["uid"].as_str().is_none_or(str::is_empty) {
        let mut next = (*content).clone();
        next["spec"]["volumeSnapshotRef"] = object_ref(vs, rt);
        let _ = cluster.update_in(work, &content_rt, "", content_name, next, Part::Main, &opts());
    }
    let creation = content["status"]["creationTime"]
        .as_i64()
        .map(|n| rfc3339(DateTime::from_timestamp_nanos(n)));
    let mut status = json!({"boundVolumeSnapshotContentName": content_name, "creationTime": creation,
        "readyToUse": content["status"]["readyToUse"] == true});
    if let Some(size) = content["status"]["restoreSize"].as_i64() {
        status["restoreSize"] = json!(size.to_string());
    }
    if let Some(group) = vs["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["kind"] == "VolumeGroupSnapshot"))
    {
        status["volumeGroupSnapshotName"] = group["name"].clone();
    }
    set_status(cluster, work, rt, ns(vs), name(vs), status);
}

fn short_hash(parts: &[&str]) -> String {
    hex::encode(Sha256::digest(parts.join("/").as_bytes()))
}

fn take_group(cluster: &Cluster, vgs: &Value, work: &mut Work) {
    let (Some(rt), Some(vs_rt)) = (
        kind(cluster, GROUP, "volumegroupsnapshots"),
        kind(cluster, SNAP, "volumesnapshots"),
    ) else {
        return;
    };
    let selector = &vgs["spec"]["source"]["selector"];
    if selector.is_null() {
        let m = "spec.source.selector is required (pre-provisioned group snapshots are not emulated)";
        return fail(cluster, work, &rt, vgs, m.into());
    }
    let mut claims: Vec<Arc<Value>> = cluster
        .store
        .list(&ResourceId::new("", "persistentvolumeclaims"), Some(ns(vgs)))
        .into_iter()
        .filter(|c| selector_matches(selector, c))
        .collect();
    claims.sort_by(|a, b| name(a).cmp(name(b)));
    if claims.is_empty() {
        return fail(
            cluster,
            work,
            &rt,
            vgs,
            "no persistentvolumeclaims match the selector".into(),
        );
    }
    let mut volumes = Vec::with_capacity(claims.len());
    for c in &claims {
        match bound_volume(cluster, ns(vgs), name(c)) {
            Ok((_, v)) => volumes.push(v),
            Err(m) => return fail(cluster, work, &rt, vgs, m),
        }
    }
    let driver = volumes[0].driver.clone();
    if let Some(other) = volumes.iter().find(|v| v.driver != driver) {
        let m = format!("the claims are on different drivers ({driver}, {})", other.driver);
        return fail(cluster, work, &rt, vgs, m);
    }
    let class = match class(
        cluster,
        "volumegroupsnapshotclasses",
        GROUP,
        vgs["spec"]["volumeGroupSnapshotClassName"].as_str(),
        DEFAULT_GROUP_CLASS,
        &driver,
    ) {
        Ok(c) => c,
        Err(m) => return fail(cluster, work, &rt, vgs, m),
    };
    if class["driver"] != driver.as_str() {
        let m = format!("class {} is not for driver {driver}", name(&class));
        return fail(cluster, work, &rt, vgs, m);
    }
    let mut annotated: Vec<&Value> = vec![vgs, &class];
    annotated.extend(claims.iter().map(|c| c.as_ref()));
    if let Some(m) = injected_error(&annotated) {
        return fail(cluster, work, &rt, vgs, m);
    }
    // The cut: every volume copied while this request holds the sandbox's attention.
    let cut = Utc::now();
    let mut members = Vec::with_capacity(claims.len());
    for (claim, volume) in claims.iter().zip(&volumes) {
        let hash = short_hash(&[uid(vgs), uid(claim)]);
        let handle = format!("snapshot-{hash}");
        if let Err(e) = copy_tree(&volume_dir(cluster, &volume.pv), &snapshot_dir(cluster, &handle)) {
            return fail(cluster, work, &rt, vgs, format!("copying {}: {e}", name(claim)));
        }
        members.push((hash, handle, volume));
    }
    let delay = ready_delay(&[vgs, &class]);
    let ready_at = (!delay.is_zero()).then(|| cut + delay);
    let group_content = format!("groupsnapcontent-{}", uid(vgs));
    let pairs: Vec<Value> = members
        .iter()
        .map(|(_, handle, v)| json!({"volumeHandle": v.handle, "snapshotHandle": handle}))
        .collect();
    let created = create_content(
        cluster,
        work,
        "volumegroupsnapshotcontents",
        GROUP,
        ContentSpec {
            name: group_content.clone(),
            snapshot_ref: object_ref(vgs, &rt),
            driver: &driver,
            class: &class,
            source: json!({"volumeHandles": members.iter().map(|(_, _, v)| v.handle.clone()).collect::<Vec<_>>()}),
            handle: format!("group-snapshot-{}", uid(vgs)),
            cut,
            ready_at,
            extra_status: json!({"volumeSnapshotHandlePairList": pairs}),
        },
    );
    if !created {
        return fail(
            cluster,
            work,
            &rt,
            vgs,
            "group content could not be created".into(),
        );
    }
    let owner = json!({"apiVersion": format!("{GROUP}/{}", rt.version), "kind": "VolumeGroupSnapshot",
        "name": name(vgs), "uid": uid(vgs), "controller": true, "blockOwnerDeletion": true});
    for (hash, handle, volume) in &members {
        let snapshot_name = format!("snapshot-{hash}");
        let content_name = format!("snapcontent-{hash}");
        let snapshot_ref = json!({"apiVersion": format!("{SNAP}/v1"), "kind": "VolumeSnapshot",
            "namespace": ns(vgs), "name": snapshot_name});
        create_content(
            cluster,
            work,
            "volumesnapshotcontents",
            SNAP,
            ContentSpec {
                name: content_name.clone(),
                snapshot_ref,
                driver: &driver,
                class: &class,
                source: json!({"snapshotHandle": handle}),
                handle: handle.clone(),
                cut,
                ready_at,
                extra_status: json!({"restoreSize": quantity_bytes(&volume.capacity),
                                     "volumeGroupSnapshotHandle": format!("group-snapshot-{}", uid(vgs))}),
            },
        );
        let member = json!({"apiVersion": format!("{SNAP}/v1"), "kind": "VolumeSnapshot",
            "metadata": {"name": snapshot_name, "namespace": ns(vgs), "ownerReferences": [owner.clone()]},
            "spec": {"source": {"volumeSnapshotContentName": content_name}}});
        if let Err(e) = cluster.create_in(work, &vs_rt, ns(vgs), member, &opts()) {
            tracing::warn!(group = name(vgs), error = %e, "member snapshot not created");
        }
    }
    let status = json!({"boundVolumeGroupSnapshotContentName": group_content, "creationTime": rfc3339(cut),
        "readyToUse": ready_at.is_none()});
    set_status(cluster, work, &rt, ns(vgs), name(vgs), status);
}

/// A deleted snapshot takes its content along when the content's deletionPolicy is Delete.
fn delete_bound_content(
    cluster: &Cluster,
    snapshot: &Value,
    content_plural: &str,
    group: &str,
    work: &mut Work,
) {
    let field = if group == SNAP {
        "boundVolumeSnapshotContentName"
    } else {
        "boundVolumeGroupSnapshotContentName"
    };
    let Some(content_name) = snapshot["status"][field].as_str() else {
        return;
    };
    let Some(rt) = kind(cluster, group, content_plural) else {
        return;
    };
    let Some(content) = cluster.store.get(&rt.id(), "", content_name) else {
        return;
    };
    let ref_field = if group == SNAP {
        "volumeSnapshotRef"
    } else {
        "volumeGroupSnapshotRef"
    };
    let r = &content["spec"][ref_field];
    let ours = r["name"] == name(snapshot) && r["namespace"] == ns(snapshot);
    if ours && content["spec"]["deletionPolicy"] == "Delete" {
        let _ = cluster.delete_in(work, &rt, "", content_name, &DeleteOptions::default());
    }
}

/// Which snapshot a claim is to be provisioned from, if any.
fn snapshot_source(pvc: &Value) -> Option<&str> {
    [&pvc["spec"]["dataSourceRef"], &pvc["spec"]["dataSource"]]
        .into_iter()
        .find(|s| s["kind"] == "VolumeSnapshot" && s["apiGroup"] == SNAP)
        .and_then(|s| s["name"].as_str())
}

/// How a new claim's volume is filled.
pub enum Provisioning {
    /// Empty.
    Empty,
    /// From the copy behind this snapshot directory.
    From(PathBuf),
    /// Its snapshot is not ready (or missing): the claim stays Pending.
    Wait(String),
}

/// How `pvc` is to be provisioned (dynamic provisioning asks before creating the volume).
pub fn provisioning(cluster: &Cluster, pvc: &Value) -> Provisioning {
    let Some(snapshot) = snapshot_source(pvc) else {
        return Provisioning::Empty;
    };
    let Some(vs) = cluster
        .store
        .get(&ResourceId::new(SNAP, "volumesnapshots"), ns(pvc), snapshot)
    else {
        return Provisioning::Wait(format!("volumesnapshot \"{snapshot}\" not found"));
    };
    if vs["status"]["readyToUse"] != true {
        return Provisioning::Wait(format!("volumesnapshot \"{snapshot}\" is not ready"));
    }
    let content = vs["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .and_then(|c| {
            cluster
                .store
                .get(&ResourceId::new(SNAP, "volumesnapshotcontents"), "", c)
        });
    match content
        .as_ref()
        .and_then(|c| c["status"]["snapshotHandle"].as_str())
    {
        Some(handle) => Provisioning::From(snapshot_dir(cluster, handle)),
        None => Provisioning::Wait(format!("volumesnapshot \"{snapshot}\" has no bound content")),
    }
}

/// Fill a new volume directory from a snapshot copy.
pub fn restore_into(from: &Path, volume: &Path) -> std::io::Result<()> {
    copy_tree(from, volume)
}

/// Claims waiting for `vs` to become ready are provisioned now.
fn provision_waiting_claims(cluster: &Cluster, vs: &Value, work: &mut Work) {
    let waiting: Vec<Arc<Value>> = cluster
        .store
        .list(&ResourceId::new("", "persistentvolumeclaims"), Some(ns(vs)))
        .into_iter()
        .filter(|c| c["spec"]["volumeName"].as_str().is_none_or(str::is_empty))
        .filter(|c| snapshot_source(c) == Some(name(vs)))
        .collect();
    for claim in waiting {
        super::controllers::provision_claim(cluster, &claim, work);
    }
}

/// Mark a content ready, and the snapshot bound to it.
fn mark_ready(cluster: &Cluster, work: &mut Work, group: &str, content_name: &str) {
    let (content_plural, snapshot_plural, ref_field, bound_field) = if group == SNAP {
        (
            "volumesnapshotcontents",
            "volumesnapshots",
            "volumeSnapshotRef",
            "boundVolumeSnapshotContentName",
        )
    } else {
        (
            "volumegroupsnapshotcontents",
            "volumegroupsnapshots",
            "volumeGroupSnapshotRef",
            "boundVolumeGroupSnapshotContentName",
        )
    };
    let (Some(content_rt), Some(snapshot_rt)) = (
        kind(cluster, group, content_plural),
        kind(cluster, group, snapshot_plural),
    ) else {
        return;
    };
    let Some(content) = cluster.store.get(&content_rt.id(), "", content_name) else {
        return;
    };
    set_status(
        cluster,
        work,
        &content_rt,
        "",
        content_name,
        json!({"readyToUse": true}),
    );
    let r = &content["spec"][ref_field];
    let (Some(snapshot_ns), Some(snapshot_name)) = (r["namespace"].as_str(), r["name"].as_str()) else {
        return;
    };
    if let Some(snapshot) = cluster.store.get(&snapshot_rt.id(), snapshot_ns, snapshot_name)
        && snapshot["status"][bound_field] == content_name
    {
        set_status(
            cluster,
            work,
            &snapshot_rt,
            snapshot_ns,
            snapshot_name,
            json!({"readyToUse": true}),
        );
    }
}

/// When a not-yet-ready content becomes ready, if it is one.
fn pending_readiness(resource: &ResourceId, content: &Value) -> Option<(&'static str, DateTime<Utc>)> {
    let group = match (resource.group.as_str(), resource.plural.as_str()) {
        (SNAP, "volumesnapshotcontents") => SNAP,
        (GROUP, "volumegroupsnapshotcontents") => GROUP,
        _ => return None,
    };
    if content["status"]["readyToUse"] == true {
        return None;
    }
    let at = DateTime::parse_from_rfc3339(annotation(content, READY_AT_ANNOTATION)?).ok()?;
    Some((group, at.with_timezone(&Utc)))
}

/// Start the task that makes delayed snapshots ready. It follows the store's change stream (subscribed
/// before this returns, so no content created afterwards is missed) and ends with the cluster.
pub fn spawn_readiness(cluster: &Arc<Cluster>) {
    let Ok(start) = cluster.store.watch(None) else {
        return;
    };
    let weak = Arc::downgrade(cluster);
    let mut live = start.live;
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match live.recv().await {
                Ok(change) if change.kind == ChangeKind::Added => {
                    if let Some((group, at)) = pending_readiness(&change.resource, &change.object) {
                        schedule(weak.clone(), group, name(&change.object).to_string(), at);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    let Some(cluster) = weak.upgrade() else { return };
                    for (group, plural) in [
                        (SNAP, "volumesnapshotcontents"),
                        (GROUP, "volumegroupsnapshotcontents"),
                    ] {
                        let id = ResourceId::new(group, plural);
                        for content in cluster.store.list(&id, None) {
                            if let Some((group, at)) = pending_readiness(&id, &content) {
                                schedule(weak.clone(), group, name(&content).to_string(), at);
                            }
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

fn schedule(cluster: Weak<Cluster>, group: &'static str, content: String, at: DateTime<Utc>) {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if let Some(cluster) = cluster.upgrade() {
            cluster.request(|work| mark_ready(&cluster, work, group, &content));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_quantities_when_converted_then_binary_and_decimal_suffixes_are_bytes() {
        assert_eq!(quantity_bytes(&json!("1Gi")), 1 << 30);
        assert_eq!(quantity_bytes(&json!("500M")), 500_000_000);
        assert_eq!(quantity_bytes(&json!("42")), 42);
        assert_eq!(quantity_bytes(&Value::Null), 0);
    }

    #[test]
    fn given_tree_with_nested_dirs_when_copied_then_contents_match() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("a");
        std::fs::create_dir_all(from.join("x/y")).unwrap();
        std::fs::write(from.join("x/y/f"), "data").unwrap();
        copy_tree(&from, &d.path().join("b")).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("b/x/y/f")).unwrap(), "data");
        copy_tree(&d.path().join("missing"), &d.path().join("c")).unwrap();
        assert!(d.path().join("c").is_dir());
    }
}
