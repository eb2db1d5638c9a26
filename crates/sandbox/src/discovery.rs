//! Discovery (legacy and aggregated), `/version`, OpenAPI v3 documents and `Table` rendering, in the
//! shapes kubectl 1.32 and kube-rs 5 expect.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::api::AppState;
use super::cluster::Cluster;
use super::registry::ResourceType;
use super::status::ApiError;

/// The Kubernetes version the sandbox reports (kubectl's dispatcher picks its client by the minor).
pub const MAJOR: &str = "1";
pub const MINOR: &str = "32";

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

pub async fn version() -> Response {
    axum::Json(json!({
        "major": MAJOR, "minor": MINOR, "gitVersion": "v1.32.0-freezeframe-sandbox",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
        "platform": "linux/amd64"
    }))
    .into_response()
}

/// Which aggregated discovery version the client accepts, if any.
fn aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // Accept lists media types in preference order; answer with the first aggregated one offered.
    for part in accept.split(',') {
        let p: String = part.chars().filter(|c| !c.is_whitespace()).collect();
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

fn aggregated_response(version: &str, items: Vec<Value>) -> Response {
    let ct = if version == "v2" {
        AGGREGATED_V2
    } else {
        AGGREGATED_V2BETA1
    };
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"),
                      "metadata": {}, "items": items});
    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body.to_string()).into_response()
}

fn aggregated_group(cluster: &Cluster, group: &str, versions: &[String]) -> Value {
    let reg = cluster.registry();
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = reg
                .all()
                .iter()
                .filter(|t| t.group == group && &t.version == v)
                .map(|t| {
                    let mut r = json!({
                        "resource": t.plural,
                        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": t.singular,
                        "verbs": t.verbs(),
                        "subresources": t.subresources().iter().map(|s| subresource_aggregated(t, s)).collect::<Vec<_>>(),
                    });
                    if !t.short_names.is_empty() {
                        r["shortNames"] = json!(t.short_names);
                    }
                    if !t.categories.is_empty() {
                        r["categories"] = json!(t.categories);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut meta = json!({});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({"metadata": meta, "versions": versions})
}

fn subresource_kind(t: &ResourceType, sub: &str) -> (String, String, String, Vec<&'static str>) {
    match sub {
        "scale" => (
            "autoscaling".into(),
            "v1".into(),
            "Scale".into(),
            vec!["get", "patch", "update"],
        ),
        "status" => (
            t.group.clone(),
            t.version.clone(),
            t.kind.clone(),
            vec!["get", "patch", "update"],
        ),
        "exec" => (
            "".into(),
            "v1".into(),
            "PodExecOptions".into(),
            vec!["create", "get"],
        ),
        "log" => ("".into(), "v1".into(), "Pod".into(), vec!["get"]),
        "token" => (
            "authentication.k8s.io".into(),
            "v1".into(),
            "TokenRequest".into(),
            vec!["create"],
        ),
        "finalize" => (t.group.clone(), t.version.clone(), t.kind.clone(), vec!["update"]),
        _ => (t.group.clone(), t.version.clone(), t.kind.clone(), vec!["get"]),
    }
}

fn subresource_aggregated(t: &ResourceType, sub: &str) -> Value {
    let (g, v, k, verbs) = subresource_kind(t, sub);
    json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
}

pub async fn core_versions(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(v) = aggregated(&headers) {
        return aggregated_response(v, vec![aggregated_group(&state.cluster, "", &["v1".to_string()])]);
    }
    axum::Json(json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))
    .into_response()
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

pub async fn groups(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let groups: Vec<(String, Vec<String>)> = state
        .cluster
        .registry()
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect();
    if let Some(v) = aggregated(&headers) {
        let items = groups
            .iter()
            .map(|(g, vs)| aggregated_group(&state.cluster, g, vs))
            .collect();
        return aggregated_response(v, items);
    }
    let list: Vec<Value> = groups.iter().map(|(g, vs)| group_json(g, vs)).collect();
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})).into_response()
}

/// `GET /apis/{group}`.
pub fn group(cluster: &Cluster, group: &str) -> Response {
    match cluster.registry().groups().into_iter().find(|(g, _)| g == group) {
        Some((g, vs)) => {
            let mut body = group_json(&g, &vs);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            axum::Json(body).into_response()
        }
        None => ApiError::not_found_path().into_response(),
    }
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: an APIResourceList.
pub fn resource_list(cluster: &Cluster, group: &str, version: &str) -> Response {
    let reg = cluster.registry();
    let types: Vec<_> = reg
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .cloned()
        .collect();
    if types.is_empty() {
        return ApiError::not_found_path().into_response();
    }
    let mut resources = Vec::new();
    for t in &types {
        let mut r = json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                           "kind": t.kind, "verbs": t.verbs()});
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for sub in t.subresources() {
            let (g, v, k, verbs) = subresource_kind(t, sub);
            let mut s = json!({"name": format!("{}/{sub}", t.plural), "singularName": "", "namespaced": t.namespaced,
                               "kind": k, "verbs": verbs});
            if sub == "scale" || sub == "token" {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    axum::Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
    .into_response()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn registry_hash(cluster: &Cluster, group: &str, version: &str) -> String {
    let mut h = Sha256::new();
    for t in cluster
        .registry()
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        h.update(format!(
            "{}/{}/{}/{}",
            t.plural,
            t.kind,
            t.namespaced,
            t.crd.as_deref().unwrap_or_default()
        ));
    }
    hex::encode(&h.finalize()[..16]).to_uppercase()
}

/// `GET /openapi/v2`: kubectl's client-side validation falls back to it for kinds missing from v3 (a CR
/// whose CRD is created by the same `apply`). It asks for protobuf; an empty message is a valid, empty
/// `openapi_v2.Document`, so kubectl validates nothing and reports the missing kind by its mapping error,
/// as it does against a real server.
pub async fn openapi_v2(headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("protobuf") {
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            Vec::<u8>::new(),
        )
            .into_response();
    }
    axum::Json(json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {}, "definitions": {}}))
        .into_response()
}

/// `GET /openapi/v3`: one document per group-version.
pub async fn openapi_index(State(state): State<AppState>) -> Response {
    let mut paths = serde_json::Map::new();
    for (g, vs) in state.cluster.registry().groups() {
        for v in vs {
            let p = gv_path(&g, &v);
            let url = format!("/openapi/v3/{p}?hash={}", registry_hash(&state.cluster, &g, &v));
            paths.insert(p, json!({"serverRelativeURL": url}));
        }
    }
    axum::Json(json!({"paths": paths})).into_response()
}

/// `GET /openapi/v3/{api/v1 | apis/g/v}`: enough for kubectl to know the server validates fields
/// (`fieldValidation`) and which kinds exist; schemas are open (`x-kubernetes-preserve-unknown-fields`).
pub async fn openapi_document(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    let segs: Vec<&str> = path.split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return ApiError::not_found_path().into_response(),
    };
    let reg = state.cluster.registry();
    let types: Vec<_> = reg
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .cloned()
        .collect();
    if types.is_empty() {
        return ApiError::not_found_path().into_response();
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for t in &types {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let schema_name = schema_name(t);
        let prefix = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                t.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), t.plural)
        };
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
        ]);
        let op = |action: &str| {
            json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
            "parameters": params, "responses": {"200": {"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}}}})
        };
        paths.insert(
            format!("{prefix}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        paths.insert(prefix, json!({"get": op("list"), "post": op("post")}));
        schemas.insert(
            schema_name,
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                   "x-kubernetes-group-version-kind": [gvk],
                   "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                  "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}),
        );
    }
    axum::Json(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
    .into_response()
}

fn schema_name(t: &ResourceType) -> String {
    let group = if t.group.is_empty() {
        "core".to_string()
    } else {
        t.group.clone()
    };
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("io.k8s.api.{}.{}.{}", reversed.join("."), t.version, t.kind)
}

/// Human age like kubectl prints it (`5s`, `3m`, `2h`, `4d`).
fn age(ts: &str) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = (Utc::now() - t.with_timezone(&Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Turns one object into a table row's cells.
type CellFn = Box<dyn Fn(&Value) -> Vec<Value>>;

/// Render a list as a `meta.k8s.io/v1` Table (what `kubectl get` asks for).
pub fn table(list: &Value) -> Value {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let kind = items
        .first()
        .and_then(|i| i["kind"].as_str())
        .unwrap_or_default()
        .to_string();
    let col = |name: &str, ty: &str, format: &str| json!({"name": name, "type": ty, "format": format, "description": "", "priority": 0});
    let (columns, cells): (Vec<Value>, CellFn) = match kind.as_str() {
        "Pod" => (
            vec![
                col("Name", "string", "name"),
                col("Ready", "string", ""),
                col("Status", "string", ""),
                col("Restarts", "string", ""),
                col("Age", "string", ""),
            ],
            Box::new(|o: &Value| {
                let statuses = o["status"]["containerStatuses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let ready = statuses.iter().filter(|s| s["ready"] == true).count();
                let restarts: i64 = statuses.iter().filter_map(|s| s["restartCount"].as_i64()).sum();
                let phase = if o["metadata"].get("deletionTimestamp").is_some() {
                    "Terminating"
                } else {
                    o["status"]["phase"].as_str().unwrap_or("Pending")
                };
                vec![
                    o["metadata"]["name"].clone(),
                    json!(format!("{ready}/{total}")),
                    json!(phase),
                    json!(restarts.to_string()),
                    json!(age(o["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default())),
                ]
            }),
        ),
        "Deployment" | "StatefulSet" | "ReplicaSet" => (
            vec![
                col("Name", "string", "name"),
                col("Ready", "string", ""),
                col("Age", "string", ""),
            ],
            Box::new(|o: &Value| {
                vec![
                    o["metadata"]["name"].clone(),
                    json!(format!(
                        "{}/{}",
                        o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        o["spec"]["replicas"].as_i64().unwrap_or(0)
                    )),
                    json!(age(o["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default())),
                ]
            }),
        ),
        "Namespace" => (
            vec![
                col("Name", "string", "name"),
                col("Status", "string", ""),
                col("Age", "string", ""),
            ],
            Box::new(|o: &Value| {
                vec![
                    o["metadata"]["name"].clone(),
                    o["status"]["phase"].clone(),
                    json!(age(o["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default())),
                ]
            }),
        ),
        "PersistentVolumeClaim" => (
            vec![
                col("Name", "string", "name"),
                col("Status", "string", ""),
                col("Volume", "string", ""),
                col("StorageClass", "string", ""),
                col("Age", "string", ""),
            ],
            Box::new(|o: &Value| {
                vec![
                    o["metadata"]["name"].clone(),
                    o["status"]["phase"].clone(),
                    o["spec"]["volumeName"].clone(),
                    o["spec"]["storageClassName"].clone(),
                    json!(age(o["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default())),
                ]
            }),
        ),
        _ => (
            vec![col("Name", "string", "name"), col("Age", "string", "")],
            Box::new(|o: &Value| {
                vec![
                    o["metadata"]["name"].clone(),
                    json!(age(o["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default())),
                ]
            }),
        ),
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({"cells": cells(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"].clone(),
           "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn given_kubectl_accept_header_then_aggregated_v2_is_chosen() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert_eq!(aggregated(&h), Some("v2"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(aggregated(&h), None);
    }

    #[test]
    fn given_pod_list_then_table_has_kubectl_columns() {
        let list = json!({"metadata": {}, "items": [{"kind": "Pod", "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 0}]}}]});
        let t = table(&list);
        assert_eq!(t["rows"][0]["cells"][1], "1/1");
        assert_eq!(t["columnDefinitions"][2]["name"], "Status");
    }
}
