//! Which pods a rule runs on and in which container: Running pods matching the selector in the policy's
//! namespaces whose target container is ready (unless `includeNotReady`), and a container that is named,
//! the only one, or the `kubectl.kubernetes.io/default-container` annotation — never a guess (a guessed
//! "first container" is how hooks end up in an injected sidecar).

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::ListParams;
use kube::core::ObjectList;

use super::exec::Target;
use crate::policy::Namespaces;
use freezeframe_selector::query as selector_query;

/// The annotation kubectl uses to choose a pod's default container.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Page size of pod and namespace lists (never one unbounded list).
const PAGE: u32 = 500;

/// Errors of selecting pods and containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing namespaces by selector failed.
    #[error("cannot list namespaces matching `{selector}`")]
    ListNamespaces {
        /// The selector.
        selector: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing pods failed.
    #[error("cannot list pods matching `{selector}` in namespace {namespace}")]
    ListPods {
        /// Namespace.
        namespace: String,
        /// The selector.
        selector: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The pod has several containers and nothing says which one to use.
    #[error(
        "pod {pod} has containers [{}] and nothing chooses one: set `container` in the rule, or the pod's \
         `{DEFAULT_CONTAINER_ANNOTATION}` annotation",
        containers.join(", ")
    )]
    AmbiguousContainer {
        /// `namespace/pod`.
        pod: String,
        /// Its containers.
        containers: Vec<String>,
    },
    /// The named container is not in the pod.
    #[error("pod {pod} has no container `{container}`; its containers are [{}]", containers.join(", "))]
    UnknownContainer {
        /// `namespace/pod`.
        pod: String,
        /// The name asked for.
        container: String,
        /// Its containers.
        containers: Vec<String>,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pods a rule runs on, in a deterministic order (namespace, name), and the ones left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Where to run.
    pub targets: Vec<Target>,
    /// Matching pods not used, with why (`ns/pod`, reason).
    pub excluded: Vec<(String, String)>,
}

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The container to exec into: `explicit`; else the only container; else the default-container
/// annotation; else [`Error::AmbiguousContainer`] listing them. A name not in the pod is an error too.
pub fn choose_container(pod: &Pod, explicit: Option<&str>) -> Result<String> {
    let containers: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| c.name.clone())
        .collect();
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .map(String::as_str);
    let chosen = match (explicit, &containers[..]) {
        (Some(c), _) => c,
        (None, [only]) => only.as_str(),
        (None, _) => match annotated {
            Some(c) => c,
            None => {
                return Err(Error::AmbiguousContainer {
                    pod: pod_ref(pod),
                    containers,
                });
            }
        },
    };
    if !containers.iter().any(|c| c == chosen) {
        return Err(Error::UnknownContainer {
            pod: pod_ref(pod),
            container: chosen.to_owned(),
            containers,
        });
    }
    Ok(chosen.to_owned())
}

/// Why the pod cannot be used (`None` = usable): it must be Running, not terminating, and (unless
/// `include_not_ready`) its container must be ready.
pub fn unusable_because(pod: &Pod, container: &str, include_not_ready: bool) -> Option<String> {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    if phase != "Running" {
        return Some(format!("phase {phase}"));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("terminating".into());
    }
    if include_not_ready {
        return None;
    }
    let ready = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.name == container)
        .is_some_and(|c| c.ready);
    (!ready).then(|| format!("container {container} not ready"))
}

/// Select among already-listed pods. Pods that cannot be used are excluded (with the reason); a usable
/// pod whose container cannot be chosen is an error (the rule is wrong, not the pod).
pub fn select_from(pods: &[Pod], container: Option<&str>, include_not_ready: bool) -> Result<Selection> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    let mut sel = Selection::default();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Running") {
            let reason = format!("phase {}", phase.unwrap_or("Unknown"));
            sel.excluded.push((pod_ref(pod), reason));
            continue;
        }
        let c = choose_container(pod, container)?;
        if let Some(reason) = unusable_because(pod, &c, include_not_ready) {
            sel.excluded.push((pod_ref(pod), reason));
            continue;
        }
        sel.targets.push(Target::new(
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            c,
        ));
    }
    Ok(sel)
}

/// The namespaces a policy covers, sorted.
pub async fn namespaces(client: &kube::Client, ns: &Namespaces) -> Result<Vec<String>> {
    let mut out = match ns {
        Namespaces::Names(names) => names.clone(),
        Namespaces::Selector(sel) => {
            let query = selector_query(sel);
            let api: Api<Namespace> = Api::all(client.clone());
            let list = list_all(&api, &query)
                .await
                .map_err(|source| Error::ListNamespaces {
                    selector: query.clone(),
                    source: Box::new(source),
                })?;
            list.into_iter().filter_map(|n| n.metadata.name).collect()
        }
    };
    out.sort();
    out.dedup();
    Ok(out)
}

/// Pods matching `selector` in each namespace (server-side label filtering, paged).
pub async fn list_pods(
    client: &kube::Client,
    namespaces: &[String],
    selector: &LabelSelector,
) -> Result<Vec<Pod>> {
    let query = selector_query(selector);
    let mut pods = Vec::new();
    for ns in namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.extend(list_all(&api, &query).await.map_err(|source| Error::ListPods {
            namespace: ns.clone(),
            selector: query.clone(),
            source: Box::new(source),
        })?);
    }
    Ok(pods)
}

async fn list_all<K>(api: &Api<K>, labels: &str) -> kube::Result<Vec<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().labels(labels).limit(PAGE);
    loop {
        let page: ObjectList<K> = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, containers: &[&str], annotations: serde_json::Value, ready: bool, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "db", "annotations": annotations},
            "spec": {"containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()},
            "status": {"phase": phase, "containerStatuses": containers.iter().map(|c| json!({
                "name": c, "ready": ready, "restartCount": 0, "image": "x", "imageID": "x"
            })).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    #[test]
    fn given_single_container_when_none_named_then_it_is_chosen() {
        let p = pod("a", &["mysql"], json!({}), true, "Running");
        assert_eq!(choose_container(&p, None).unwrap(), "mysql");
    }

    #[test]
    fn given_sidecar_and_no_container_named_then_error_lists_containers() {
        let p = pod("a", &["mysql", "istio-proxy"], json!({}), true, "Running");
        let err = choose_container(&p, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::AmbiguousContainer { .. }));
        assert!(
            msg.contains("db/a") && msg.contains("[mysql, istio-proxy]"),
            "{msg}"
        );
    }

    #[test]
    fn given_default_container_annotation_then_it_is_chosen_over_the_first() {
        let p = pod(
            "a",
            &["istio-proxy", "mysql"],
            json!({DEFAULT_CONTAINER_ANNOTATION: "mysql"}),
            true,
            "Running",
        );
        assert_eq!(choose_container(&p, None).unwrap(), "mysql");
        assert_eq!(choose_container(&p, Some("istio-proxy")).unwrap(), "istio-proxy");
    }

    #[test]
    fn given_named_container_missing_then_error_lists_containers() {
        let p = pod("a", &["mysql"], json!({}), true, "Running");
        let err = choose_container(&p, Some("postgres")).unwrap_err();
        assert!(
            err.to_string()
                .contains("no container `postgres`; its containers are [mysql]")
        );
    }

    #[test]
    fn given_pending_and_unready_pods_then_excluded_with_reasons_and_rest_sorted() {
        let pods = vec![
            pod("c", &["m"], json!({}), true, "Running"),
            pod("b", &["m"], json!({}), false, "Running"),
            pod("p", &["m", "side"], json!({}), false, "Pending"),
            pod("a", &["m"], json!({}), true, "Running"),
        ];
        let sel = select_from(&pods, None, false).unwrap();
        let names: Vec<_> = sel.targets.iter().map(|t| t.pod.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(
            sel.excluded,
            [
                ("db/b".to_string(), "container m not ready".to_string()),
                ("db/p".to_string(), "phase Pending".to_string())
            ]
        );
        let with_unready = select_from(&pods, None, true).unwrap();
        assert_eq!(with_unready.targets.len(), 3);
    }
}
