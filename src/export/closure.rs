//! The closure of selected pods: everything needed to restore just that application.
//!
//! Starting from the pods matching the policy's `selector` in one namespace:
//! - their owner chain, followed through `ownerReferences` (ReplicaSet → Deployment, StatefulSet,
//!   DaemonSet, Job → CronJob, and any other owner kind the server serves);
//! - PVCs mounted by the pods (including generic ephemeral volumes) and all PVCs of their StatefulSets'
//!   `volumeClaimTemplates` (every ordinal, also scaled-down ones);
//! - ConfigMaps and Secrets referenced by `env`, `envFrom`, `volumes`, projected volumes and
//!   `imagePullSecrets`, in the pods and in their owners' pod templates;
//! - the ServiceAccount, RoleBindings with it as a subject and the Roles they bind;
//! - Services whose selector matches a pod; NetworkPolicies and PodDisruptionBudgets selecting a pod;
//!   HorizontalPodAutoscalers targeting an owner.
//!
//! The closure is held in memory: it is one application's objects, not a namespace's.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery};
use serde_json::Value;

use super::labels::{self, labels_of};
use super::{Kube, Result, filter::kind_id};

/// Identity of an object in the closure: (kind id, name).
type Key = (String, String);

#[derive(Default)]
struct Closure {
    objects: BTreeMap<Key, (ApiResource, Value)>,
}

impl Closure {
    /// Add; false if it was already there.
    fn add(&mut self, resource: &ApiResource, obj: Value) -> bool {
        let key = (kind_id(resource), name(&obj).to_string());
        if self.objects.contains_key(&key) {
            return false;
        }
        self.objects.insert(key, (resource.clone(), obj));
        true
    }
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn strings(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The kind a group serves in its preferred version, if served.
fn served(discovery: &Discovery, group: &str, kind: &str) -> Option<ApiResource> {
    discovery
        .get(group)
        .and_then(|g| g.recommended_kind(kind))
        .map(|(r, _)| r)
}

fn resolve(discovery: &Discovery, api_version: &str, kind: &str) -> Option<ApiResource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    discovery
        .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
        .map(|(r, _)| r)
}

/// A kind that selects pods: its resource (if served), where its selector is, and whether that is a
/// plain label map (Service) rather than a LabelSelector.
type Selecting = (Option<ApiResource>, fn(&Value) -> &Value, bool);

/// Names referenced by a pod spec.
#[derive(Default)]
struct SpecRefs {
    config_maps: BTreeSet<String>,
    secrets: BTreeSet<String>,
    claims: BTreeSet<String>,
    service_accounts: BTreeSet<String>,
}

impl SpecRefs {
    /// Collect from a pod spec; `pod_name` resolves generic ephemeral volume claims (`<pod>-<volume>`).
    fn collect(&mut self, spec: &Value, pod_name: Option<&str>) {
        if spec.is_null() {
            return;
        }
        let text = |v: &Value| v.as_str().map(str::to_string);
        let containers = strings(&spec["containers"])
            .chain(strings(&spec["initContainers"]))
            .chain(strings(&spec["ephemeralContainers"]));
        for c in containers {
            for env in strings(&c["env"]) {
                self.config_maps
                    .extend(text(&env["valueFrom"]["configMapKeyRef"]["name"]));
                self.secrets
                    .extend(text(&env["valueFrom"]["secretKeyRef"]["name"]));
            }
            for from in strings(&c["envFrom"]) {
                self.config_maps.extend(text(&from["configMapRef"]["name"]));
                self.secrets.extend(text(&from["secretRef"]["name"]));
            }
        }
        for volume in strings(&spec["volumes"]) {
            self.config_maps.extend(text(&volume["configMap"]["name"]));
            self.secrets.extend(text(&volume["secret"]["secretName"]));
            self.claims
                .extend(text(&volume["persistentVolumeClaim"]["claimName"]));
            if let (Some(pod), false) = (pod_name, volume["ephemeral"].is_null()) {
                self.claims
                    .insert(format!("{pod}-{}", volume["name"].as_str().unwrap_or_default()));
            }
            for source in strings(&volume["projected"]["sources"]) {
                self.config_maps.extend(text(&source["configMap"]["name"]));
                self.secrets.extend(text(&source["secret"]["name"]));
            }
        }
        for pull in strings(&spec["imagePullSecrets"]) {
            self.secrets.extend(text(&pull["name"]));
        }
        let account = spec["serviceAccountName"]
            .as_str()
            .or(spec["serviceAccount"].as_str())
            .unwrap_or("default");
        self.service_accounts.insert(account.to_string());
    }
}

/// The pod template spec inside a workload object, if it has one.
fn template_spec(obj: &Value) -> &Value {
    let spec = &obj["spec"];
    if !spec["template"]["spec"].is_null() {
        &spec["template"]["spec"]
    } else {
        &spec["jobTemplate"]["spec"]["template"]["spec"]
    }
}

/// The closure of the pods in `namespace` matching `selector`, as (resource, object) pairs.
pub async fn closure(
    kube: &Kube,
    discovery: &Discovery,
    namespace: &str,
    selector: &LabelSelector,
) -> Result<Vec<(ApiResource, Value)>> {
    let ns = Some(namespace);
    let core = |kind| served(discovery, "", kind);
    let mut closure = Closure::default();
    let Some(pods) = core("Pod") else {
        return Ok(Vec::new());
    };

    let selector = labels::policy_selector(selector);
    let mut selected: Vec<Value> = Vec::new();
    kube.for_each(&pods, namespace, |pod| {
        if selector.as_ref().is_some_and(|s| s.matches_object(&pod)) {
            selected.push(pod);
        }
        async { Ok(()) }
    })
    .await?;
    let pod_labels: Vec<BTreeMap<String, String>> = selected.iter().map(labels_of).collect();

    // Owner chain, breadth first.
    let mut refs = SpecRefs::default();
    let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
    let mut queue: Vec<Value> = Vec::new();
    for pod in selected {
        refs.collect(&pod["spec"], Some(name(&pod)));
        closure.add(&pods, pod.clone());
        queue.push(pod);
    }
    let mut claim_templates: Vec<(String, String)> = Vec::new();
    while let Some(obj) = queue.pop() {
        for owner in strings(&obj["metadata"]["ownerReferences"]) {
            let (Some(api_version), Some(kind), Some(owner_name)) = (
                owner["apiVersion"].as_str(),
                owner["kind"].as_str(),
                owner["name"].as_str(),
            ) else {
                continue;
            };
            let Some(resource) = resolve(discovery, api_version, kind) else {
                continue;
            };
            let Some(found) = kube.get(&resource, ns, owner_name).await? else {
                continue;
            };
            owners.insert((kind.to_string(), owner_name.to_string()));
            refs.collect(template_spec(&found), None);
            if kind == "StatefulSet" {
                for template in strings(&found["spec"]["volumeClaimTemplates"]) {
                    let t = template["metadata"]["name"].as_str().unwrap_or_default();
                    claim_templates.push((t.to_string(), owner_name.to_string()));
                }
            }
            if closure.add(&resource, found.clone()) {
                queue.push(found);
            }
        }
    }

    // StatefulSet claims: `<template>-<statefulset>-<ordinal>`, every ordinal that exists.
    if let Some(claims) = core("PersistentVolumeClaim") {
        if !claim_templates.is_empty() {
            kube.for_each(&claims, namespace, |pvc| {
                let n = name(&pvc);
                let belongs = claim_templates.iter().any(|(t, sts)| {
                    n.strip_prefix(&format!("{t}-{sts}-")).is_some_and(|ordinal| {
                        !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
                    })
                });
                if belongs {
                    refs.claims.insert(n.to_string());
                }
                async { Ok(()) }
            })
            .await?;
        }
        add_named(kube, &mut closure, &claims, namespace, &refs.claims).await?;
    }
    if let Some(r) = core("ConfigMap") {
        add_named(kube, &mut closure, &r, namespace, &refs.config_maps).await?;
    }
    if let Some(r) = core("Secret") {
        add_named(kube, &mut closure, &r, namespace, &refs.secrets).await?;
    }
    if let Some(r) = core("ServiceAccount") {
        add_named(kube, &mut closure, &r, namespace, &refs.service_accounts).await?;
    }

    // RBAC bound to the service accounts.
    let rbac = "rbac.authorization.k8s.io";
    if let (Some(bindings), Some(roles)) = (
        served(discovery, rbac, "RoleBinding"),
        served(discovery, rbac, "Role"),
    ) {
        let mut bound_roles = BTreeSet::new();
        let mut matched = Vec::new();
        kube.for_each(&bindings, namespace, |binding| {
            let binds_account = strings(&binding["subjects"]).any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"]
                        .as_str()
                        .is_some_and(|n| refs.service_accounts.contains(n))
                    && s["namespace"].as_str().is_none_or(|n| n == namespace)
            });
            if binds_account {
                if binding["roleRef"]["kind"] == "Role" {
                    bound_roles.extend(binding["roleRef"]["name"].as_str().map(str::to_string));
                }
                matched.push(binding);
            }
            async { Ok(()) }
        })
        .await?;
        for binding in matched {
            closure.add(&bindings, binding);
        }
        add_named(kube, &mut closure, &roles, namespace, &bound_roles).await?;
    }

    // Objects selecting the pods or targeting their owners.
    let selects_a_pod = |selects: &dyn Fn(&BTreeMap<String, String>) -> bool| pod_labels.iter().any(selects);
    let selecting: [Selecting; 3] = [
        (core("Service"), |o| &o["spec"]["selector"], true),
        (
            served(discovery, "networking.k8s.io", "NetworkPolicy"),
            |o| &o["spec"]["podSelector"],
            false,
        ),
        (
            served(discovery, "policy", "PodDisruptionBudget"),
            |o| &o["spec"]["selector"],
            false,
        ),
    ];
    for (resource, selector_of, plain_map) in selecting {
        let Some(resource) = resource else { continue };
        let mut matched = Vec::new();
        kube.for_each(&resource, namespace, |obj| {
            let selector = selector_of(&obj);
            let hit = if plain_map {
                selects_a_pod(&|l| labels::map_matches(selector, l))
            } else {
                labels::value_selector(selector).is_some_and(|s| selects_a_pod(&|l| s.matches_map(l)))
            };
            if hit {
                matched.push(obj);
            }
            async { Ok(()) }
        })
        .await?;
        for obj in matched {
            closure.add(&resource, obj);
        }
    }
    if let Some(hpas) = served(discovery, "autoscaling", "HorizontalPodAutoscaler") {
        let mut matched = Vec::new();
        kube.for_each(&hpas, namespace, |hpa| {
            let target = &hpa["spec"]["scaleTargetRef"];
            let key = (
                target["kind"].as_str().unwrap_or_default().to_string(),
                target["name"].as_str().unwrap_or_default().to_string(),
            );
            if owners.contains(&key) {
                matched.push(hpa);
            }
            async { Ok(()) }
        })
        .await?;
        for hpa in matched {
            closure.add(&hpas, hpa);
        }
    }
    Ok(closure.objects.into_values().collect())
}

/// Add the named objects that exist (a reference to a missing optional ConfigMap is not an error).
async fn add_named(
    kube: &Kube,
    closure: &mut Closure,
    resource: &ApiResource,
    namespace: &str,
    names: &BTreeSet<String>,
) -> Result<()> {
    for n in names {
        if let Some(obj) = kube.get(resource, Some(namespace), n).await? {
            closure.add(resource, obj);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_pod_spec_with_every_reference_form_then_all_names_are_collected() {
        let spec = json!({
            "serviceAccountName": "runner",
            "imagePullSecrets": [{"name": "pull"}],
            "initContainers": [{"envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{
                "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-key", "key": "k"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s-key", "key": "k"}}},
                    {"name": "C", "value": "plain"}
                ],
                "envFrom": [{"configMapRef": {"name": "cm-env"}}]
            }],
            "volumes": [
                {"name": "v1", "configMap": {"name": "cm-vol"}},
                {"name": "v2", "secret": {"secretName": "s-vol"}},
                {"name": "v3", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "v4", "projected": {"sources": [{"configMap": {"name": "cm-proj"}}, {"secret": {"name": "s-proj"}}]}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}
            ]
        });
        let mut refs = SpecRefs::default();

        refs.collect(&spec, Some("pod-0"));

        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(refs.config_maps, set(&["cm-env", "cm-key", "cm-proj", "cm-vol"]));
        assert_eq!(
            refs.secrets,
            set(&["init-env", "pull", "s-key", "s-proj", "s-vol"])
        );
        assert_eq!(refs.claims, set(&["data", "pod-0-scratch"]));
        assert_eq!(refs.service_accounts, set(&["runner"]));
    }

    #[test]
    fn given_spec_without_service_account_then_default_is_used() {
        let mut refs = SpecRefs::default();
        refs.collect(&json!({"containers": []}), None);
        assert!(refs.service_accounts.contains("default"));
    }

    #[test]
    fn given_cronjob_then_template_spec_is_the_job_template_pod_spec() {
        let cron =
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"serviceAccountName": "x"}}}}}});
        assert_eq!(template_spec(&cron)["serviceAccountName"], "x");
    }
}
