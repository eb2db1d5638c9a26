//! The resource types the sandbox serves: built-in kinds plus kinds defined by CRDs at run time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// Identity of stored data: one table per group and plural, shared by every served version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    pub group: String,
    pub plural: String,
}

impl ResourceId {
    pub fn new(group: &str, plural: &str) -> Self {
        ResourceId {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// One served group/version/resource and what the API server knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: the main resource ignores status changes and vice versa.
    pub status: bool,
    /// Has a `/scale` subresource: (spec replicas path, status replicas path, label selector path).
    pub scale: Option<ScalePaths>,
    /// Extra subresources served by special handlers (`exec`, `log`).
    pub extra_subresources: Vec<&'static str>,
    /// Defined by a CustomResourceDefinition (named `<plural>.<group>`).
    pub crd: Option<String>,
    /// A create-only review (SelfSubjectAccessReview and friends): answered, never stored.
    pub review: bool,
}

/// JSON pointers of the fields the scale subresource reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

impl ScalePaths {
    fn standard() -> Self {
        ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: Some("/status/selector".into()),
        }
    }
}

impl ResourceType {
    pub fn id(&self) -> ResourceId {
        ResourceId::new(&self.group, &self.plural)
    }

    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The verbs served for the resource, as discovery reports them.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.review {
            return vec!["create"];
        }
        let mut v = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        if self.group.is_empty() && self.plural == "namespaces" {
            v.retain(|x| *x != "deletecollection");
        }
        v
    }

    /// Subresource names (without the resource prefix).
    pub fn subresources(&self) -> Vec<&str> {
        let mut s: Vec<&str> = Vec::new();
        if self.status {
            s.push("status");
        }
        if self.scale.is_some() {
            s.push("scale");
        }
        s.extend(self.extra_subresources.iter().copied());
        s
    }

    /// Kinds whose objects carry a generation bumped on spec changes.
    pub fn tracks_generation(&self) -> bool {
        self.crd.is_some() || self.status
    }
}

struct B {
    rt: ResourceType,
}

fn b(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> B {
    B {
        rt: ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: vec![],
            categories: vec![],
            status: false,
            scale: None,
            extra_subresources: vec![],
            crd: None,
            review: false,
        },
    }
}

impl B {
    fn short(mut self, names: &[&str]) -> Self {
        self.rt.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    fn all(mut self) -> Self {
        self.rt.categories = vec!["all".into()];
        self
    }
    fn status(mut self) -> Self {
        self.rt.status = true;
        self
    }
    fn scale(mut self) -> Self {
        self.rt.scale = Some(ScalePaths::standard());
        self
    }
    fn review(mut self) -> Self {
        self.rt.review = true;
        self
    }
    fn extra(mut self, subs: &[&'static str]) -> Self {
        self.rt.extra_subresources = subs.to_vec();
        self
    }
}

/// Every built-in kind the sandbox serves (CRD-backed kinds such as VolumeSnapshots are installed as
/// CRDs at start, as a real cluster with the external snapshotter has them).
pub fn builtin() -> Vec<ResourceType> {
    let core = "";
    let list = vec![
        b(core, "v1", "Namespace", "namespaces", false)
            .short(&["ns"])
            .status()
            .extra(&["finalize"]),
        b(core, "v1", "Node", "nodes", false).short(&["no"]).status(),
        b(core, "v1", "Pod", "pods", true)
            .short(&["po"])
            .all()
            .status()
            .extra(&["exec", "log"]),
        b(core, "v1", "Service", "services", true)
            .short(&["svc"])
            .all()
            .status(),
        b(core, "v1", "Endpoints", "endpoints", true).short(&["ep"]),
        b(core, "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
        b(core, "v1", "Secret", "secrets", true),
        b(core, "v1", "ServiceAccount", "serviceaccounts", true)
            .short(&["sa"])
            .extra(&["token"]),
        b(
            core,
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
        )
        .short(&["pvc"])
        .status(),
        b(core, "v1", "PersistentVolume", "persistentvolumes", false)
            .short(&["pv"])
            .status(),
        b(core, "v1", "Event", "events", true).short(&["ev"]),
        b(core, "v1", "LimitRange", "limitranges", true).short(&["limits"]),
        b(core, "v1", "ResourceQuota", "resourcequotas", true)
            .short(&["quota"])
            .status(),
        b(
            core,
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            true,
        )
        .short(&["rc"])
        .all()
        .status()
        .scale(),
        b(core, "v1", "PodTemplate", "podtemplates", true),
        b("apps", "v1", "Deployment", "deployments", true)
            .short(&["deploy"])
            .all()
            .status()
            .scale(),
        b("apps", "v1", "StatefulSet", "statefulsets", true)
            .short(&["sts"])
            .all()
            .status()
            .scale(),
        b("apps", "v1", "DaemonSet", "daemonsets", true)
            .short(&["ds"])
            .all()
            .status(),
        b("apps", "v1", "ReplicaSet", "replicasets", true)
            .short(&["rs"])
            .all()
            .status()
            .scale(),
        b("apps", "v1", "ControllerRevision", "controllerrevisions", true),
        b("batch", "v1", "Job", "jobs", true).all().status(),
        b("batch", "v1", "CronJob", "cronjobs", true)
            .short(&["cj"])
            .all()
            .status(),
        b("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        b("coordination.k8s.io", "v1", "Lease", "leases", true),
        b("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]),
        b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
        b("networking.k8s.io", "v1", "Ingress", "ingresses", true)
            .short(&["ing"])
            .status(),
        b(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        )
        .short(&["netpol"]),
        b("networking.k8s.io", "v1", "IngressClass", "ingressclasses", false),
        b(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        )
        .short(&["pdb"])
        .status(),
        b(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
        )
        .short(&["hpa"])
        .all()
        .status(),
        b(
            "autoscaling",
            "v1",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
        )
        .short(&["hpa"])
        .all()
        .status(),
        b("storage.k8s.io", "v1", "StorageClass", "storageclasses", false).short(&["sc"]),
        b("storage.k8s.io", "v1", "CSIDriver", "csidrivers", false),
        b(
            "storage.k8s.io",
            "v1",
            "VolumeAttachment",
            "volumeattachments",
            false,
        )
        .status(),
        b(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
        )
        .review(),
        b(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            false,
        )
        .review(),
        b(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
        )
        .review(),
        b(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            false,
        )
        .short(&["pc"]),
        b(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .short(&["crd", "crds"])
        .status(),
    ];
    list.into_iter().map(|b| b.rt).collect()
}

/// Resource types derived from a CustomResourceDefinition object: one per served version, in the CRD's
/// order with the storage version first (the preferred version in discovery).
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return vec![];
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut versions: Vec<&Value> = spec["versions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|v| v["served"].as_bool().unwrap_or(true))
                .collect()
        })
        .unwrap_or_default();
    // Discovery lists versions by Kubernetes version priority; the storage version is a good stand-in
    // for "preferred" and keeps the CRD author's intent.
    versions.sort_by_key(|v| !v["storage"].as_bool().unwrap_or(false));
    let name = format!("{plural}.{group}");
    versions
        .into_iter()
        .filter_map(|v| {
            let version = v["name"].as_str()?;
            let subs = &v["subresources"];
            let scale = subs.get("scale").map(|s| ScalePaths {
                spec_replicas: dotted_to_pointer(s["specReplicasPath"].as_str().unwrap_or(".spec.replicas")),
                status_replicas: dotted_to_pointer(
                    s["statusReplicasPath"].as_str().unwrap_or(".status.replicas"),
                ),
                label_selector: s["labelSelectorPath"].as_str().map(dotted_to_pointer),
            });
            Some(ResourceType {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                singular: singular.clone(),
                namespaced,
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                status: subs.get("status").is_some(),
                scale,
                extra_subresources: vec![],
                crd: Some(name.clone()),
                review: false,
            })
        })
        .collect()
}

fn dotted_to_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut acc, seg| {
            acc.push('/');
            acc.push_str(seg);
            acc
        })
}

/// The set of served resource types, looked up by group/version/plural or by kind.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        Registry {
            types: builtin().into_iter().map(Arc::new).collect(),
        }
    }

    pub fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The type for an object's `apiVersion` + `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        let (group, version) = split_api_version(api_version);
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
    }

    /// The preferred (first registered) version of a stored resource.
    pub fn preferred(&self, id: &ResourceId) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == id.group && t.plural == id.plural)
            .cloned()
    }

    /// Groups in registration order, each with its versions in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut order: Vec<String> = Vec::new();
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &self.types {
            if !versions.contains_key(&t.group) {
                order.push(t.group.clone());
            }
            let vs = versions.entry(t.group.clone()).or_default();
            if !vs.contains(&t.version) {
                vs.push(t.version.clone());
            }
        }
        order
            .into_iter()
            .map(|g| {
                let vs = versions.remove(&g).unwrap_or_default();
                (g, vs)
            })
            .collect()
    }

    /// Replace the types defined by the CRD named `crd_name` (`<plural>.<group>`) with `types`.
    /// Returns an error message when the CRD's names clash with a built-in or another CRD.
    pub fn set_crd(&mut self, crd_name: &str, types: Vec<ResourceType>) -> Result<(), String> {
        for t in &types {
            if let Some(clash) = self
                .types
                .iter()
                .find(|x| x.group == t.group && x.plural == t.plural && x.crd.as_deref() != Some(crd_name))
            {
                return Err(format!(
                    "{} is already served by {}",
                    t.plural,
                    clash.crd.as_deref().unwrap_or("a built-in")
                ));
            }
        }
        self.types.retain(|t| t.crd.as_deref() != Some(crd_name));
        self.types.extend(types.into_iter().map(Arc::new));
        Ok(())
    }

    pub fn remove_crd(&mut self, crd_name: &str) {
        self.types.retain(|t| t.crd.as_deref() != Some(crd_name));
    }
}

/// `apps/v1` → (`apps`, `v1`); `v1` → (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// CRDs the sandbox installs at start, as a cluster with the CSI external-snapshotter has them.
pub fn bootstrap_crds() -> Vec<Value> {
    let crd = |group: &str, version: &str, kind: &str, plural: &str, short: &[&str], namespaced: bool| {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}"),
                         "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-csi/external-snapshotter/pull/955"}},
            "spec": {
                "group": group,
                "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                          "singular": kind.to_lowercase(), "shortNames": short},
                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                "versions": [{
                    "name": version, "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }]
            }
        })
    };
    let snap = "snapshot.storage.k8s.io";
    let group = "groupsnapshot.storage.k8s.io";
    vec![
        crd(snap, "v1", "VolumeSnapshot", "volumesnapshots", &["vs"], true),
        crd(
            snap,
            "v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            &["vsc", "vscs"],
            false,
        ),
        crd(
            snap,
            "v1",
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            &["vsclass", "vsclasses"],
            false,
        ),
        crd(
            group,
            "v1beta1",
            "VolumeGroupSnapshot",
            "volumegroupsnapshots",
            &["vgs"],
            true,
        ),
        crd(
            group,
            "v1beta1",
            "VolumeGroupSnapshotContent",
            "volumegroupsnapshotcontents",
            &["vgsc", "vgscs"],
            false,
        ),
        crd(
            group,
            "v1beta1",
            "VolumeGroupSnapshotClass",
            "volumegroupsnapshotclasses",
            &["vgsclass", "vgsclasses"],
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_builtins_then_every_kind_the_brief_names_is_served() {
        let r = Registry::with_builtins();
        for (g, v, p) in [
            ("", "v1", "pods"),
            ("", "v1", "persistentvolumeclaims"),
            ("apps", "v1", "statefulsets"),
            ("batch", "v1", "cronjobs"),
            ("coordination.k8s.io", "v1", "leases"),
            ("events.k8s.io", "v1", "events"),
            ("policy", "v1", "poddisruptionbudgets"),
            ("autoscaling", "v2", "horizontalpodautoscalers"),
            ("storage.k8s.io", "v1", "storageclasses"),
            ("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
        ] {
            assert!(r.find(g, v, p).is_some(), "{g}/{v}/{p} missing");
        }
    }

    #[test]
    fn given_crd_when_registered_then_kind_is_served_with_its_scope_and_removed_on_delete() {
        let mut r = Registry::with_builtins();
        let crd = &bootstrap_crds()[1];
        let types = from_crd(crd);
        assert_eq!(types.len(), 1);
        assert!(!types[0].namespaced);
        r.set_crd("volumesnapshotcontents.snapshot.storage.k8s.io", types)
            .unwrap();
        assert!(
            r.find("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents")
                .is_some()
        );
        r.remove_crd("volumesnapshotcontents.snapshot.storage.k8s.io");
        assert!(
            r.find("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents")
                .is_none()
        );
    }

    #[test]
    fn given_crd_reusing_builtin_plural_when_registered_then_rejected() {
        let mut r = Registry::with_builtins();
        let mut t = from_crd(&bootstrap_crds()[0]).remove(0);
        t.group = "apps".into();
        t.plural = "deployments".into();
        assert!(r.set_crd("deployments.apps", vec![t]).is_err());
    }

    #[test]
    fn given_scale_subresource_path_then_converted_to_json_pointer() {
        assert_eq!(dotted_to_pointer(".spec.replicas"), "/spec/replicas");
    }
}
