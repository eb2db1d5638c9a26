//! Sanitising: strip what the API server owns so an exported object restores cleanly.
//!
//! | What | Why |
//! | --- | --- |
//! | `metadata.uid`, `resourceVersion`, `generation`, `creationTimestamp`, `managedFields`, `selfLink`, `deletionTimestamp`, `deletionGracePeriodSeconds` | assigned by the server; a create with them is refused or meaningless |
//! | `status` (every kind) | written by controllers; they rebuild it after restore |
//! | Service `spec.clusterIP`/`clusterIPs` | allocated per cluster; kept when `None` (headless) |
//! | annotation `kubectl.kubernetes.io/last-applied-configuration` | only with `drop_last_applied` |
//!
//! `ownerReferences` are kept (restore rewrites their uids); PVC `spec.volumeName` is kept (restore
//! decides whether to rebind).

use serde_json::Value;

/// The annotation `kubectl apply` keeps the last applied object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Strip server-owned fields from `obj` in place (see the module table).
pub fn sanitize(obj: &mut Value, drop_last_applied: bool) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    root.remove("status");
    let is_service = root.get("kind").and_then(Value::as_str) == Some("Service")
        && root.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if let Some(metadata) = root.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            metadata.remove(*field);
        }
        if drop_last_applied && let Some(annotations) = metadata.get_mut("annotations") {
            if let Some(map) = annotations.as_object_mut() {
                map.remove(LAST_APPLIED);
            }
            if annotations.as_object().is_some_and(|m| m.is_empty()) {
                metadata.remove("annotations");
            }
        }
    }
    if is_service && let Some(spec) = root.get_mut("spec").and_then(Value::as_object_mut) {
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        if !headless {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(cluster_ip: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "7", "generation": 2,
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}], "selfLink": "/x",
                "labels": {"app": "web"},
                "annotations": {LAST_APPLIED: "{}"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "ou"}]
            },
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}
        })
    }

    #[test]
    fn given_service_when_sanitised_then_server_fields_and_cluster_ip_go_and_the_rest_stays() {
        let mut obj = service("10.96.3.4");

        sanitize(&mut obj, false);

        assert_eq!(
            obj,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {
                    "name": "web", "namespace": "shop", "labels": {"app": "web"},
                    "annotations": {LAST_APPLIED: "{}"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "ou"}]
                },
                "spec": {"ports": [{"port": 80}]}
            })
        );
    }

    #[test]
    fn given_headless_service_when_sanitised_then_cluster_ip_none_is_kept() {
        let mut obj = service("None");
        sanitize(&mut obj, false);
        assert_eq!(obj["spec"]["clusterIP"], "None");
    }

    #[test]
    fn given_drop_last_applied_when_sanitised_then_annotation_and_empty_map_are_removed() {
        let mut obj = service("1.2.3.4");
        sanitize(&mut obj, true);
        assert!(obj["metadata"].get("annotations").is_none(), "{obj}");
    }

    #[test]
    fn given_non_service_with_cluster_ip_field_when_sanitised_then_spec_is_untouched() {
        let mut obj = json!({"apiVersion": "example.com/v1", "kind": "Service", "spec": {"clusterIP": "x"}});
        sanitize(&mut obj, false);
        assert_eq!(obj["spec"]["clusterIP"], "x");
    }
}
