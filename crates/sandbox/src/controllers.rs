//! The sandbox's controllers: what kube-controller-manager and the kubelet would do, as far as a backup
//! tool can see it — workloads get their ReplicaSets, Pods and PVCs (with the names, labels and
//! ownerReferences the real controllers set), claims bind to volumes, namespaces get their default
//! ServiceAccount, Jobs follow their pods (which the `kubelet` really runs for freezeframe's image).
//! (Deleted namespaces and CRDs are finalized in the background: see `lifecycle`.)

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cluster::{Cluster, DeleteOptions, Event, Part, Work, WriteOptions, now, random_suffix};
use super::registry::{ResourceId, ResourceType};
use super::snapshots::{self, Provisioning};
use super::store::ChangeKind;
use freezeframe_selector::LabelSelector;

const MANAGER: &str = "sandbox-controller-manager";

pub(super) fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

pub(super) fn ns(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub(super) fn uid(o: &Value) -> &str {
    o["metadata"]["uid"].as_str().unwrap_or_default()
}

pub(super) fn is_deleting(o: &Value) -> bool {
    o["metadata"].get("deletionTimestamp").is_some()
}

fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name(owner), "uid": uid(owner),
           "controller": true, "blockOwnerDeletion": true})
}

/// The controlling owner reference of an object, if any.
fn controller_of(o: &Value) -> Option<&Value> {
    o["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}

fn rt(cluster: &Cluster, group: &str, version: &str, plural: &str) -> Arc<ResourceType> {
    cluster
        .find_type(group, version, plural)
        .expect("built-in type is always served")
}

/// React to one change (and queue further work through the writes it makes).
pub fn react(cluster: &Cluster, ev: &Event, work: &mut Work) {
    let obj = &ev.object;
    let id = &ev.resource;
    match (id.group.as_str(), id.plural.as_str(), ev.kind) {
        ("", "namespaces", ChangeKind::Added) => namespace_added(cluster, obj, work),
        ("apps", "deployments", ChangeKind::Added | ChangeKind::Modified) => {
            reconcile_deployment(cluster, obj, work)
        }
        ("apps", "replicasets", ChangeKind::Added | ChangeKind::Modified) => {
            reconcile_replicaset(cluster, obj, work)
        }
        ("apps", "statefulsets", ChangeKind::Added | ChangeKind::Modified) => {
            reconcile_statefulset(cluster, obj, work)
        }
        ("apps", "daemonsets", ChangeKind::Added | ChangeKind::Modified) => {
            reconcile_daemonset(cluster, obj, work)
        }
        ("batch", "jobs", ChangeKind::Added | ChangeKind::Modified) => reconcile_job(cluster, obj, work),
        ("", "pods", kind) => {
            if kind == ChangeKind::Added {
                start_pod_dir(cluster, obj);
            }
            if kind == ChangeKind::Deleted {
                release_protected_claims(cluster, ns(obj), work);
            }
            requeue_owner(cluster, obj, work);
        }
        ("", "persistentvolumeclaims", ChangeKind::Modified) if is_deleting(obj) => {
            release_protected_claims(cluster, ns(obj), work)
        }
        ("", "persistentvolumeclaims" | "persistentvolumes", _) => super::binder::react(cluster, ev, work),
        ("snapshot.storage.k8s.io" | "groupsnapshot.storage.k8s.io", _, _) => {
            super::snapshots::react(cluster, ev, work)
        }
        _ => {}
    }
}

/// Re-run the controller of a pod whose state changed (a deleted pod is replaced, readiness counts).
fn requeue_owner(cluster: &Cluster, pod: &Value, work: &mut Work) {
    let Some(r) = controller_of(pod) else { return };
    let kind = r["kind"].as_str().unwrap_or_default();
    let owner_name = r["name"].as_str().unwrap_or_default();
    let (group, plural) = match kind {
        "ReplicaSet" => ("apps", "replicasets"),
        "StatefulSet" => ("apps", "statefulsets"),
        "DaemonSet" => ("apps", "daemonsets"),
        "Job" => ("batch", "jobs"),
        _ => return,
    };
    if let Some(owner) = cluster
        .store
        .get(&ResourceId::new(group, plural), ns(pod), owner_name)
        && owner["metadata"]["uid"] == r["uid"]
    {
        work_on(cluster, group, plural, &owner, work);
    }
}

fn work_on(cluster: &Cluster, group: &str, plural: &str, obj: &Value, work: &mut Work) {
    match (group, plural) {
        ("apps", "replicasets") => reconcile_replicaset(cluster, obj, work),
        ("apps", "statefulsets") => reconcile_statefulset(cluster, obj, work),
        ("apps", "daemonsets") => reconcile_daemonset(cluster, obj, work),
        ("batch", "jobs") => reconcile_job(cluster, obj, work),
        ("apps", "deployments") => reconcile_deployment(cluster, obj, work),
        _ => {}
    }
}

fn namespace_added(cluster: &Cluster, nsobj: &Value, work: &mut Work) {
    let n = name(nsobj).to_string();
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": n}});
    let _ = cluster.create_in(work, &rt(cluster, "", "v1", "serviceaccounts"), &n, sa, &opts);
    let ca = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt", "namespace": n,
                     "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nc2FuZGJveA==\n-----END CERTIFICATE-----\n"}});
    let _ = cluster.create_in(work, &rt(cluster, "", "v1", "configmaps"), &n, ca, &opts);
}

/// Pods in `namespace` controlled by the object with `owner_uid`, not being deleted.
fn owned_pods(cluster: &Cluster, namespace: &str, owner_uid: &str) -> Vec<Arc<Value>> {
    cluster
        .store
        .list(&ResourceId::new("", "pods"), Some(namespace))
        .into_iter()
        .filter(|p| controller_of(p).is_some_and(|r| r["uid"] == owner_uid) && !is_deleting(p))
        .collect()
}

fn pod_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// A short stable hash of a pod template, spelled with the API server's safe alphabet.
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(serde_json::to_vec(template).unwrap_or_default());
    digest
        .iter()
        .take(10)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

fn pod_from_template(
    template: &Value,
    namespace: &str,
    pod_name: &str,
    owner: Value,
    extra_labels: &[(&str, String)],
) -> Value {
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["name"] = json!(pod_name);
    meta["namespace"] = json!(namespace);
    for (k, v) in extra_labels {
        meta["labels"][*k] = json!(v);
    }
    meta["ownerReferences"] = json!([owner]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

fn write_status(cluster: &Cluster, work: &mut Work, rt: &ResourceType, current: &Value, status: Value) {
    let mut merged = current["status"].clone();
    if !merged.is_object() {
        merged = json!({});
    }
    let mut changed = false;
    for (k, v) in status.as_object().into_iter().flatten() {
        if k == "conditions" && conditions_equal(&merged[k.as_str()], v) {
            continue;
        }
        // Null: the field is omitted now (a count that went to zero).
        if v.is_null() {
            if let Some(m) = merged.as_object_mut()
                && m.remove(k.as_str()).is_some()
            {
                changed = true;
            }
            continue;
        }
        if merged[k.as_str()] != *v {
            merged[k.as_str()] = v.clone();
            changed = true;
        }
    }
    if !changed {
        return;
    }
    let mut next = current.clone();
    next["status"] = merged;
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    if let Err(e) = cluster.update_in(work, rt, ns(current), name(current), next, Part::Status, &opts) {
        tracing::debug!(error = %e, object = name(current), "status update lost a race; the next change retries");
    }
}

/// Conditions equal but for their timestamps.
fn conditions_equal(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(a) == strip(b)
}

fn replicas(o: &Value) -> i64 {
    o["spec"]["replicas"].as_i64().unwrap_or(1).max(0)
}

fn reconcile_deployment(cluster: &Cluster, deploy: &Value, work: &mut Work) {
    let deploy = match cluster
        .store
        .get(&ResourceId::new("apps", "deployments"), ns(deploy), name(deploy))
    {
        Some(d) if !is_deleting(&d) => d,
        _ => return,
    };
    let namespace = ns(&deploy).to_string();
    let template = &deploy["spec"]["template"];
    let hash = template_hash(template);
    let rs_rt = rt(cluster, "apps", "v1", "replicasets");
    let owned: Vec<Arc<Value>> = cluster
        .store
        .list(&rs_rt.id(), Some(&namespace))
        .into_iter()
        .filter(|r| controller_of(r).is_some_and(|o| o["uid"] == uid(&deploy)))
        .collect();
    let revision = |r: &Value| -> i64 {
        r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let want = replicas(&deploy);
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let rs_name = format!("{}-{hash}", name(&deploy));
    let current = owned
        .iter()
        .find(|r| r["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
        .cloned();
    match &current {
        None => {
            let next_rev = owned.iter().map(|r| revision(r)).max().unwrap_or(0) + 1;
            let mut tpl = template.clone();
            tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = deploy["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": namespace,
                    "labels": tpl["metadata"]["labels"].clone(),
                    "annotations": {"deployment.kubernetes.io/desired-replicas": want.to_string(),
                                    "deployment.kubernetes.io/max-replicas": (want + 1).to_string(),
                                    "deployment.kubernetes.io/revision": next_rev.to_string()},
                    "ownerReferences": [owner_ref(&deploy, "apps/v1", "Deployment")]},
                "spec": {"replicas": want, "selector": selector, "template": tpl}
            });
            let _ = cluster.create_in(work, &rs_rt, &namespace, rs, &opts);
        }
        Some(rs) if replicas(rs) != want => {
            let mut next = (**rs).clone();
            next["spec"]["replicas"] = json!(want);
            next["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                json!(want.to_string());
            let _ = cluster.update_in(work, &rs_rt, &namespace, name(rs), next, Part::Main, &opts);
        }
        Some(_) => {}
    }
    // A finished rollout leaves old ReplicaSets scaled to zero.
    for old in owned
        .iter()
        .filter(|r| r["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
    {
        if replicas(old) != 0 {
            let mut next = (**old).clone();
            next["spec"]["replicas"] = json!(0);
            let _ = cluster.update_in(work, &rs_rt, &namespace, name(old), next, Part::Main, &opts);
        }
    }
    deployment_status(cluster, &deploy, work);
}

fn deployment_status(cluster: &Cluster, deploy: &Value, work: &mut Work) {
    let namespace = ns(deploy);
    let hash = template_hash(&deploy["spec"]["template"]);
    let mut total = 0;
    let mut ready = 0;
    let mut updated = 0;
    for rs in cluster
        .store
        .list(&ResourceId::new("apps", "replicasets"), Some(namespace))
    {
        if !controller_of(&rs).is_some_and(|o| o["uid"] == uid(deploy)) {
            continue;
        }
        let pods = owned_pods(cluster, namespace, uid(&rs));
        total += pods.len() as i64;
        ready += pods.iter().filter(|p| pod_ready(p)).count() as i64;
        if rs["metadata"]["labels"]["pod-template-hash"] == hash.as_str() {
            updated += pods.len() as i64;
        }
    }
    let want = replicas(deploy);
    let available = ready >= want;
    let t = now();
    let mut status = json!({
        "observedGeneration": deploy["metadata"]["generation"].clone(),
        "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
        "availableReplicas": ready, "unavailableReplicas": (want - ready).max(0),
        "conditions": [
            {"type": "Available", "status": if available { "True" } else { "False" },
             "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
             "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
             "lastUpdateTime": t, "lastTransitionTime": t},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": format!("ReplicaSet \"{}-{hash}\" has successfully progressed.", name(deploy)),
             "lastUpdateTime": t, "lastTransitionTime": t}
        ]
    });
    for k in [
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
        "replicas",
        "updatedReplicas",
    ] {
        if status[k] == 0 {
            status.as_object_mut().expect("status is an object").remove(k);
        }
    }
    let drt = rt(cluster, "apps", "v1", "deployments");
    write_status(cluster, work, &drt, deploy, status);
}

/// Create or delete pods so that `want` of them exist; names come from `name_for`.
fn scale_pods(
    cluster: &Cluster,
    work: &mut Work,
    owner: &Value,
    pods: &[Arc<Value>],
    want: usize,
    mut make: impl FnMut(usize) -> Value,
) {
    let pod_rt = rt(cluster, "", "v1", "pods");
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    if pods.len() < want {
        for i in pods.len()..want {
            let pod = make(i);
            if let Err(e) = cluster.create_in(work, &pod_rt, ns(owner), pod, &opts) {
                tracing::warn!(owner = name(owner), error = %e, "could not create pod");
            }
        }
    } else {
        let mut extra: Vec<&Arc<Value>> = pods.iter().collect();
        extra.sort_by(|a, b| {
            b["metadata"]["creationTimestamp"]
                .as_str()
                .cmp(&a["metadata"]["creationTimestamp"].as_str())
        });
        for p in extra.into_iter().take(pods.len() - want) {
            let _ = cluster.delete_in(work, &pod_rt, ns(p), name(p), &DeleteOptions::default());
        }
    }
}

fn reconcile_replicaset(cluster: &Cluster, rs: &Value, work: &mut Work) {
    let rs = match cluster
        .store
        .get(&ResourceId::new("apps", "replicasets"), ns(rs), name(rs))
    {
        Some(r) if !is_deleting(&r) => r,
        _ => return,
    };
    let pods = owned_pods(cluster, ns(&rs), uid(&rs));
    let want = replicas(&rs) as usize;
    let owner = owner_ref(&rs, "apps/v1", "ReplicaSet");
    scale_pods(cluster, work, &rs, &pods, want, |_| {
        let pod_name = format!("{}-{}", name(&rs), random_suffix(5));
        pod_from_template(&rs["spec"]["template"], ns(&rs), &pod_name, owner.clone(), &[])
    });
    let pods = owned_pods(cluster, ns(&rs), uid(&rs));
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let status = json!({"replicas": pods.len(), "fullyLabeledReplicas": pods.len(), "readyReplicas": ready,
                        "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"].clone()});
    write_status(
        cluster,
        work,
        &rt(cluster, "apps", "v1", "replicasets"),
        &rs,
        status,
    );
    if let Some(owner) = controller_of(&rs).filter(|o| o["kind"] == "Deployment")
        && let Some(d) = cluster.store.get(
            &ResourceId::new("apps", "deployments"),
            ns(&rs),
            owner["name"].as_str().unwrap_or_default(),
        )
    {
        deployment_status(cluster, &d, work);
    }
}

fn reconcile_statefulset(cluster: &Cluster, sts: &Value, work: &mut Work) {
    let sts = match cluster
        .store
        .get(&ResourceId::new("apps", "statefulsets"), ns(sts), name(sts))
    {
        Some(s) if !is_deleting(&s) => s,
        _ => return,
    };
    let namespace = ns(&sts).to_string();
    let sts_name = name(&sts).to_string();
    let want = replicas(&sts) as usize;
    let revision = format!("{sts_name}-{}", template_hash(&sts["spec"]["template"]));
    let pvc_rt = rt(cluster, "", "v1", "persistentvolumeclaims");
    let pod_rt = rt(cluster, "", "v1", "pods");
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let templates: Vec<Value> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let delete_claims = sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete";
    let selector_labels = sts["spec"]["selector"]["matchLabels"].clone();
    let pods = owned_pods(cluster, &namespace, uid(&sts));
    for ordinal in 0..want {
        let pod_name = format!("{sts_name}-{ordinal}");
        if pods.iter().any(|p| name(p) == pod_name) {
            continue;
        }
        // Claims first, as the StatefulSet controller does.
        for t in &templates {
            let claim_name = format!("{}-{pod_name}", name(t));
            if cluster.store.get(&pvc_rt.id(), &namespace, &claim_name).is_some() {
                continue;
            }
            let mut labels = t["metadata"]["labels"].clone();
            for (k, v) in selector_labels.as_object().into_iter().flatten() {
                labels[k.as_str()] = v.clone();
            }
            let mut meta = json!({"name": claim_name, "namespace": namespace, "labels": labels});
            if let Some(a) = t["metadata"].get("annotations") {
                meta["annotations"] = a.clone();
            }
            if delete_claims {
                meta["ownerReferences"] = json!([owner_ref(&sts, "apps/v1", "StatefulSet")]);
            }
            let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": t["spec"].clone()});
            if let Err(e) = cluster.create_in(work, &pvc_rt, &namespace, claim, &opts) {
                tracing::warn!(statefulset = %sts_name, error = %e, "could not create claim");
            }
        }
        let mut pod = pod_from_template(
            &sts["spec"]["template"],
            &namespace,
            &pod_name,
            owner_ref(&sts, "apps/v1", "StatefulSet"),
            &[
                ("controller-revision-hash", revision.clone()),
                ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                ("apps.kubernetes.io/pod-index", ordinal.to_string()),
            ],
        );
        pod["spec"]["hostname"] = json!(pod_name);
        if let Some(svc) = sts["spec"]["serviceName"].as_str() {
            pod["spec"]["subdomain"] = json!(svc);
        }
        for t in &templates {
            let vol = json!({"name": name(t), "persistentVolumeClaim": {"claimName": format!("{}-{pod_name}", name(t))}});
            match pod["spec"]["volumes"].as_array_mut() {
                Some(vs) => vs.push(vol),
                None => pod["spec"]["volumes"] = json!([vol]),
            }
        }
        if let Err(e) = cluster.create_in(work, &pod_rt, &namespace, pod, &opts) {
            tracing::warn!(statefulset = %sts_name, error = %e, "could not create pod");
        }
    }
    for p in &pods {
        let ordinal = p["metadata"]["labels"]["apps.kubernetes.io/pod-index"]
            .as_str()
            .and_then(|s| s.parse::<usize>().ok());
        if ordinal.is_none_or(|o| o >= want) {
            let _ = cluster.delete_in(work, &pod_rt, &namespace, name(p), &DeleteOptions::default());
        }
    }
    let pods = owned_pods(cluster, &namespace, uid(&sts));
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let status = json!({"observedGeneration": sts["metadata"]["generation"].clone(), "replicas": pods.len(),
        "readyReplicas": ready, "currentReplicas": pods.len(), "updatedReplicas": pods.len(),
        "availableReplicas": ready, "currentRevision": revision, "updateRevision": revision, "collisionCount": 0});
    write_status(
        cluster,
        work,
        &rt(cluster, "apps", "v1", "statefulsets"),
        &sts,
        status,
    );
}

fn reconcile_daemonset(cluster: &Cluster, ds: &Value, work: &mut Work) {
    let ds = match cluster
        .store
        .get(&ResourceId::new("apps", "daemonsets"), ns(ds), name(ds))
    {
        Some(d) if !is_deleting(&d) => d,
        _ => return,
    };
    let pods = owned_pods(cluster, ns(&ds), uid(&ds));
    let owner = owner_ref(&ds, "apps/v1", "DaemonSet");
    let hash = template_hash(&ds["spec"]["template"]);
    scale_pods(cluster, work, &ds, &pods, 1, |_| {
        let pod_name = format!("{}-{}", name(&ds), random_suffix(5));
        let mut p = pod_from_template(
            &ds["spec"]["template"],
            ns(&ds),
            &pod_name,
            owner.clone(),
            &[
                ("controller-revision-hash", hash.clone()),
                (
                    "pod-template-generation",
                    ds["metadata"]["generation"].to_string(),
                ),
            ],
        );
        p["spec"]["nodeName"] = json!("sandbox-node");
        p
    });
    let pods = owned_pods(cluster, ns(&ds), uid(&ds));
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let status = json!({"currentNumberScheduled": pods.len(), "desiredNumberScheduled": 1, "numberMisscheduled": 0,
        "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": pods.len(),
        "observedGeneration": ds["metadata"]["generation"].clone()});
    write_status(
        cluster,
        work,
        &rt(cluster, "apps", "v1", "daemonsets"),
        &ds,
        status,
    );
}

/// Defaults the Job API sets on create: selector and controller-uid labels.
pub fn default_job(job: &mut Value) {
    let job_uid = job["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let job_name = job["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let spec = &mut job["spec"];
    for (k, v) in [
        ("parallelism", json!(1)),
        ("completions", json!(1)),
        ("backoffLimit", json!(6)),
    ] {
        if spec.get(k).is_none_or(Value::is_null) {
            spec[k] = v;
        }
    }
    if spec["completionMode"].is_null() {
        spec["completionMode"] = json!("NonIndexed");
    }
    if spec["selector"].is_null() && spec["manualSelector"] != true && !job_uid.is_empty() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": job_uid}});
        let labels = &mut spec["template"]["metadata"]["labels"];
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &job_uid),
            ("controller-uid", &job_uid),
            ("batch.kubernetes.io/job-name", &job_name),
            ("job-name", &job_name),
        ] {
            labels[k] = json!(v);
        }
    }
}

/// Whether a Job has finished: its `Complete` or `Failed` condition is `True`.
fn job_finished(job: &Value) -> Option<&'static str> {
    let conds = job["status"]["conditions"].as_array()?;
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| conds.iter().any(|c| c["type"] == *t && c["status"] == "True"))
}

fn seconds_since(t: &Value) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(t.as_str()?).ok()?;
    Some((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// The Job controller's timers: `activeDeadlineSeconds` of running Jobs, `ttlSecondsAfterFinished` of
/// finished ones (the kubelet task calls this a few times a second).
pub(super) fn job_timers(cluster: &Cluster, work: &mut Work) {
    for job in cluster.store.list(&ResourceId::new("batch", "jobs"), None) {
        if is_deleting(&job) {
            continue;
        }
        let spec = &job["spec"];
        match job_finished(&job) {
            None if spec["activeDeadlineSeconds"].is_i64() => reconcile_job(cluster, &job, work),
            Some(_) => {
                if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64()
                    && seconds_since(&job["status"]["completionTime"])
                        .or_else(|| {
                            job["status"]["conditions"]
                                .as_array()
                                .and_then(|cs| cs.last())
                                .and_then(|c| seconds_since(&c["lastTransitionTime"]))
                        })
                        .is_some_and(|s| s >= ttl)
                {
                    let opts = DeleteOptions {
                        propagation: super::cluster::Propagation::Background,
                        ..Default::default()
                    };
                    let _ = cluster.delete_in(
                        work,
                        &rt(cluster, "batch", "v1", "jobs"),
                        ns(&job),
                        name(&job),
                        &opts,
                    );
                }
            }
            None => {}
        }
    }
}

/// The Job controller: pods until `completions` succeeded (at most `parallelism` at once), failed pods
/// (and container restarts) counted against `backoffLimit`, `activeDeadlineSeconds`; a finished Job keeps
/// its status and its pods, and its running pods are deleted.
fn reconcile_job(cluster: &Cluster, job: &Value, work: &mut Work) {
    let job = match cluster
        .store
        .get(&ResourceId::new("batch", "jobs"), ns(job), name(job))
    {
        Some(j) if !is_deleting(&j) => j,
        _ => return,
    };
    if job["spec"]["suspend"] == true || job_finished(&job).is_some() {
        return;
    }
    let all: Vec<Arc<Value>> = owned_pods(cluster, ns(&job), uid(&job));
    let phase = |p: &Value| p["status"]["phase"].as_str().map(str::to_string);
    let succeeded = all
        .iter()
        .filter(|p| phase(p).as_deref() == Some("Succeeded"))
        .count() as i64;
    let restarts: i64 = all
        .iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut failed = all
        .iter()
        .filter(|p| phase(p).as_deref() == Some("Failed"))
        .count() as i64;
    let active: Vec<Arc<Value>> = all
        .iter()
        .filter(|p| !matches!(phase(p).as_deref(), Some("Succeeded" | "Failed")))
        .cloned()
        .collect();
    let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
    let parallelism = job["spec"]["parallelism"].as_i64().unwrap_or(1);
    let t = now();
    let start_time = job["status"]["startTime"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| t.clone());
    let done = succeeded >= completions;
    let failure = if failed + restarts > job["spec"]["backoffLimit"].as_i64().unwrap_or(6) {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if let Some(deadline) = job["spec"]["activeDeadlineSeconds"].as_i64()
        && seconds_since(&json!(start_time)).is_some_and(|s| s >= deadline)
    {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let pod_rt = rt(cluster, "", "v1", "pods");
    if !done && failure.is_none() {
        let want = parallelism.min(completions - succeeded).max(0) as usize;
        let owner = owner_ref(&job, "batch/v1", "Job");
        let job_name = name(&job).to_string();
        scale_pods(cluster, work, &job, &active, want.max(active.len()), |_| {
            pod_from_template(
                &job["spec"]["template"],
                ns(&job),
                &format!("{job_name}-{}", random_suffix(5)),
                owner.clone(),
                &[],
            )
        });
    } else {
        // A finished Job's running pods are terminated (and counted as failed when the Job failed).
        for p in &active {
            let _ = cluster.delete_in(work, &pod_rt, ns(p), name(p), &DeleteOptions::default());
        }
        if failure.is_some() {
            failed += active.len() as i64;
        }
    }
    let active_now = if done || failure.is_some() {
        0
    } else {
        owned_pods(cluster, ns(&job), uid(&job))
            .iter()
            .filter(|p| !matches!(phase(p).as_deref(), Some("Succeeded" | "Failed")))
            .count()
    };
    let ready = owned_pods(cluster, ns(&job), uid(&job))
        .iter()
        .filter(|p| pod_ready(p))
        .count();
    let mut status = json!({
        "startTime": start_time,
        "active": active_now, "succeeded": succeeded, "failed": failed,
        "ready": if active_now == 0 { 0 } else { ready }, "terminating": 0, "uncountedTerminatedPods": {}
    });
    if done {
        status["completionTime"] = json!(job["status"]["completionTime"].as_str().unwrap_or(&t));
        status["conditions"] = json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t}]);
    } else if let Some((reason, message)) = failure {
        status["conditions"] = json!([
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastProbeTime": t, "lastTransitionTime": t},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastProbeTime": t, "lastTransitionTime": t}]);
    }
    for k in ["active", "succeeded", "failed", "ready"] {
        if status[k] == 0 {
            status[k] = Value::Null;
        }
    }
    write_status(cluster, work, &rt(cluster, "batch", "v1", "jobs"), &job, status);
}

/// The directory a PersistentVolume's data lives in.
pub fn volume_dir(cluster: &Cluster, pv_name: &str) -> std::path::PathBuf {
    cluster.state_dir.join("volumes").join(pv_name)
}

/// The working directory of a pod's exec'd commands.
pub fn pod_dir(cluster: &Cluster, namespace: &str, pod: &str) -> std::path::PathBuf {
    cluster.state_dir.join("pods").join(namespace).join(pod)
}

/// A new pod starts with a fresh directory (what a previous pod of the same name left there is gone, as
/// a container's filesystem would be), its claims' volume directories linked at their mount paths.
/// Idempotent per pod: the controllers and the kubelet both call it for a new pod, in either order.
pub(super) fn start_pod_dir(cluster: &Cluster, pod: &Value) {
    let dir = pod_dir(cluster, ns(pod), name(pod));
    {
        let mut owners = cluster.pod_dirs.lock().unwrap_or_else(|p| p.into_inner());
        if owners.get(&dir).map(String::as_str) != Some(uid(pod)) {
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(pod = name(pod), error = %e, "could not clear the previous pod's directory");
            }
            owners.insert(dir, uid(pod).to_string());
        }
    }
    prepare_pod_dir(cluster, pod);
}

/// Create the pod's directory (if missing) with its bound claims' volume directories linked at their
/// mount paths (links already there are kept).
fn prepare_pod_dir(cluster: &Cluster, pod: &Value) {
    let dir = pod_dir(cluster, ns(pod), name(pod));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(pod = name(pod), error = %e, "could not create pod directory");
        return;
    }
    let volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let Some(vol) = volumes.iter().find(|v| v["name"] == m["name"]) else {
                continue;
            };
            let Some(claim) = vol["persistentVolumeClaim"]["claimName"].as_str() else {
                continue;
            };
            let Some(pvc) = cluster
                .store
                .get(&ResourceId::new("", "persistentvolumeclaims"), ns(pod), claim)
            else {
                continue;
            };
            let Some(pv) = pvc["spec"]["volumeName"].as_str() else {
                continue;
            };
            let mount = m["mountPath"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/');
            if mount.is_empty() || mount.split('/').any(|s| s == "..") {
                continue;
            }
            let link = dir.join(mount);
            if link.exists() {
                continue;
            }
            if let Some(parent) = link.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let target = volume_dir(cluster, pv);
            let _ = std::fs::create_dir_all(&target);
            #[cfg(unix)]
            if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
                tracing::warn!(pod = name(pod), error = %e, "could not link volume into pod directory");
            }
        }
    }
}

/// Dynamic provisioning: a claim whose StorageClass exists gets a new PersistentVolume (filled from its
/// `dataSource` snapshot, if any, once that is ready), pre-bound to it, and is bound to it at once.
pub(super) fn provision_claim(cluster: &Cluster, pvc: &Value, work: &mut Work) {
    if pvc["spec"]["volumeName"].as_str().is_some_and(|s| !s.is_empty()) {
        return;
    }
    let sc_id = ResourceId::new("storage.k8s.io", "storageclasses");
    let class = match super::binder::named_class(pvc) {
        Some(c) => cluster.store.get(&sc_id, "", c),
        None => cluster.store.list(&sc_id, None).into_iter().find(|sc| {
            sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
        }),
    };
    let Some(class) = class else { return };
    let source = match snapshots::provisioning(cluster, pvc) {
        Provisioning::Wait(why) => {
            tracing::debug!(claim = name(pvc), %why, "claim waits for its snapshot");
            return;
        }
        Provisioning::From(dir) => Some(dir),
        Provisioning::Empty => None,
    };
    let pv_name = format!("pvc-{}", uid(pvc));
    let provisioner = class["provisioner"]
        .as_str()
        .unwrap_or("sandbox.freezeframe.dev")
        .to_string();
    let size = pvc["spec"]["resources"]["requests"]["storage"].clone();
    let opts = WriteOptions {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    // The binder announces the provisioner on the claim before the volume exists.
    let pvc_rt = rt(cluster, "", "v1", "persistentvolumeclaims");
    let Some(current) = cluster.store.get(&pvc_rt.id(), ns(pvc), name(pvc)) else {
        return;
    };
    let mut next = (*current).clone();
    for k in [
        "volume.beta.kubernetes.io/storage-provisioner",
        "volume.kubernetes.io/storage-provisioner",
    ] {
        next["metadata"]["annotations"][k] = json!(provisioner);
    }
    if next != *current
        && cluster
            .update_in(work, &pvc_rt, ns(pvc), name(pvc), next, Part::Main, &opts)
            .is_err()
    {
        return;
    }
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": provisioner}},
        "spec": {
            "capacity": {"storage": size}, "accessModes": pvc["spec"]["accessModes"].clone(),
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": name(&class), "volumeMode": pvc["spec"]["volumeMode"].clone(),
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns(pvc),
                         "name": name(pvc), "uid": uid(pvc)},
            "csi": {"driver": provisioner, "volumeHandle": uid(pvc), "fsType": "ext4"}
        }
    });
    let pv_rt = rt(cluster, "", "v1", "persistentvolumes");
    let Ok(pv) = cluster.create_in(work, &pv_rt, "", pv, &opts) else {
        return;
    };
    let _ = std::fs::create_dir_all(volume_dir(cluster, &pv_name));
    if let Some(dir) = source
        && let Err(e) = snapshots::restore_into(&dir, &volume_dir(cluster, &pv_name))
    {
        tracing::warn!(claim = name(pvc), error = %e, "could not fill the volume from its snapshot");
    }
    let Some(current) = cluster.store.get(&pvc_rt.id(), ns(pvc), name(pvc)) else {
        return;
    };
    super::binder::bind(cluster, work, &pv, &current);
}

/// The kubelet's side of a claim being bound: pods of its namespace that use it get its volume linked.
pub(super) fn mount_claim(cluster: &Cluster, claim: &Value) {
    let pods = cluster.store.list(&ResourceId::new("", "pods"), Some(ns(claim)));
    for pod in pods.iter().filter(|p| {
        p["spec"]["volumes"].as_array().is_some_and(|vs| {
            vs.iter()
                .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some(name(claim)))
        })
    }) {
        prepare_pod_dir(cluster, pod);
    }
}

/// `kubernetes.io/pvc-protection`: a deleted claim goes once no pod uses it.
fn release_protected_claims(cluster: &Cluster, namespace: &str, work: &mut Work) {
    let pvc_rt = rt(cluster, "", "v1", "persistentvolumeclaims");
    let deleting: Vec<Arc<Value>> = cluster
        .store
        .list(&pvc_rt.id(), Some(namespace))
        .into_iter()
        .filter(|c| is_deleting(c))
        .collect();
    if deleting.is_empty() {
        return;
    }
    let pods = cluster.store.list(&ResourceId::new("", "pods"), Some(namespace));
    for claim in deleting {
        let in_use = pods.iter().any(|p| {
            p["spec"]["volumes"].as_array().is_some_and(|vs| {
                vs.iter()
                    .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some(name(&claim)))
            })
        });
        let protected = claim["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "kubernetes.io/pvc-protection"));
        if in_use || !protected {
            continue;
        }
        let mut next = (*claim).clone();
        if let Some(f) = next["metadata"]["finalizers"].as_array_mut() {
            f.retain(|x| x != "kubernetes.io/pvc-protection");
        }
        let opts = WriteOptions {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let _ = cluster.update_in(work, &pvc_rt, namespace, name(&claim), next, Part::Main, &opts);
    }
}

/// Whether a label selector (metav1.LabelSelector JSON) matches an object; invalid selectors match nothing.
pub fn selector_matches(selector: &Value, obj: &Value) -> bool {
    LabelSelector::from_label_selector(selector)
        .is_ok_and(|s| s.matches(obj["metadata"]["labels"].as_object()))
}
