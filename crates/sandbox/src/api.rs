//! The HTTP surface of the sandbox: resource paths, verbs, lists with selectors and pagination, watch
//! streams, subresources (status, scale, finalize, exec, log), discovery and OpenAPI.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::auth::User;
use super::cluster::{Cluster, DeleteOptions, Misbehaviour, Part, PatchKind, WriteOptions, render};
use super::discovery;
use super::exec;
use super::field_selector::FieldSelector;
use super::rbac;
use super::registry::ResourceType;
use super::status::ApiError;
use super::store::{Change, ChangeKind, StoreError, Table, namespace_range};
use freezeframe_selector::LabelSelector;

/// One stored object with its key, as table iterators yield it.
type Entry<'a> = (&'a (String, String), &'a Arc<Value>);

/// Shared state of the HTTP server.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub bookmark_interval: Duration,
}

/// The router serving the whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/apis", get(discovery::groups))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(discovery::openapi_index))
        .route("/openapi/v3/{*path}", get(discovery::openapi_document))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate_and_authorize,
        ))
        .with_state(state)
}

/// What a real API server's filter chain does before any handler: authenticate (401 for a bearer token
/// the sandbox did not issue; see [`super::auth`] for requests without one), then authorize by RBAC (403
/// with the real message). The user rides along in the request's extensions for the reviews.
async fn authenticate_and_authorize(
    State(state): State<AppState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let cluster = &state.cluster;
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match cluster.authenticator.authenticate(
        &cluster.store,
        authorization,
        req.extensions().get::<super::tls::OverTls>().is_some(),
        chrono::Utc::now(),
    ) {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let query = Query::parse(req.uri().query());
    let attributes = rbac::request_attributes(req.method().as_str(), req.uri().path(), &query.0);
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    for check in rbac::checks(attributes, websocket) {
        let decision = rbac::authorize(&cluster.store, &user, &check);
        if !decision.allowed {
            return rbac::forbidden(&user, &check, &decision.reason).into_response();
        }
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// Parsed query string (repeated keys kept in order, empty pairs ignored).
#[derive(Debug, Default, Clone)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            dry_run: self.get("dryRun") == Some("All"),
            field_manager: self
                .get("fieldManager")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            force: self.flag("force"),
        }
    }
}

/// Where a request points.
#[derive(Debug)]
struct Target {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(cluster: &Cluster, segments: &[&str]) -> Result<Target, ApiError> {
    let (group, version, rest) = match segments {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    let find = |plural: &str| cluster.find_type(group, version, plural);
    let namespaced = |plural: &str| find(plural).filter(|t| t.namespaced);
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => {
            (Some((*ns).to_string()), &rest[2..][..1 + tail.len()])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_string()), None),
        [plural, name, sub] => (*plural, Some((*name).to_string()), Some((*sub).to_string())),
        _ => return Err(ApiError::not_found_path()),
    };
    let rt = find(plural).ok_or_else(ApiError::not_found_path)?;
    if rt.namespaced && namespace.is_none() && name.is_some() {
        // A namespaced object addressed without a namespace.
        return Err(ApiError::not_found_path());
    }
    if let Some(s) = &sub
        && !rt.subresources().contains(&s.as_str())
    {
        return Err(ApiError::not_found_path());
    }
    Ok(Target {
        rt,
        namespace,
        name,
        sub,
    })
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = Query::parse(parts.uri.query());
    let cluster = state.cluster.clone();
    // Discovery documents for one group or group/version.
    match segments.as_slice() {
        ["api", "v1"] => return discovery::resource_list(&cluster, "", "v1"),
        ["apis", g] => return discovery::group(&cluster, g),
        ["apis", g, v] => return discovery::resource_list(&cluster, g, v),
        _ => {}
    }
    let target = match parse_target(&cluster, &segments) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if target.sub.as_deref() == Some("exec") {
        let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await;
        return exec_pod(&cluster, &target, &query, ws)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if target.sub.as_deref() == Some("log") && parts.method == Method::GET {
        let ns = target.namespace.as_deref().unwrap_or_default();
        return match cluster.get(&target.rt, ns, target.name.as_deref().unwrap_or_default()) {
            Ok(pod) => pod_log(&cluster, ns, &pod, &query).unwrap_or_else(IntoResponse::into_response),
            Err(e) => e.into_response(),
        };
    }
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let is_watch = query.flag("watch");
    let verb = verb_of(&parts.method, &target, is_watch);
    let (delay, misbehaviour) = cluster.random_fault(verb);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match misbehaviour {
        Some(Misbehaviour::Fail(err)) => return err.into_response(),
        Some(Misbehaviour::Drop) => return dropped_connection(),
        None => {}
    }
    if let Some(err) = cluster.take_fault(verb, &target.rt, target.name.as_deref()) {
        return err.into_response();
    }
    if is_watch && parts.method == Method::GET {
        return match watch(&state, &target, &query) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("reading body: {e}")).into_response(),
    };
    if target.rt.review || target.sub.as_deref() == Some("token") {
        let user = parts
            .extensions
            .get::<User>()
            .cloned()
            .unwrap_or_else(User::anonymous);
        return match for_user(&cluster, &user, &parts.method, &parts.headers, &target, &body) {
            Ok(v) => respond(StatusCode::CREATED, &v, &accept),
            Err(e) => e.into_response(),
        };
    }
    let result = tokio::task::spawn_blocking(move || {
        handle(&cluster, &parts.method, &parts.headers, &target, &query, &body)
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::internal(format!("handler panicked: {e}"))));
    match result {
        Ok((code, v)) => respond(code, &v, &accept),
        Err(e) => e.into_response(),
    }
}

/// Requests answered for the requesting user: the self reviews and TokenRequests (`serviceaccounts/token`).
fn for_user(
    cluster: &Cluster,
    user: &User,
    method: &Method,
    headers: &HeaderMap,
    t: &Target,
    body: &Bytes,
) -> Result<Value, ApiError> {
    if *method != Method::POST || (t.rt.review && t.name.is_some()) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} supports create only)",
            if t.rt.review {
                t.rt.plural.clone()
            } else {
                format!("{}/token", t.rt.plural)
            }
        )));
    }
    let mut request = parse_body(headers, body)?;
    if !request.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    if t.rt.review {
        request["apiVersion"] = json!(t.rt.api_version());
        request["kind"] = json!(t.rt.kind);
        return rbac::answer_review(&cluster.store, user, &t.rt.kind, request);
    }
    let ns = t.namespace.as_deref().unwrap_or_default();
    let account = cluster.get(&t.rt, ns, t.name.as_deref().unwrap_or_default())?;
    super::auth::token_request(&cluster.authenticator, &account, request, chrono::Utc::now())
}

/// A response whose body fails before its first byte: hyper closes the connection without sending the
/// head, as a server dying mid-request does.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("fault injected: connection dropped"))
    });
    Response::new(Body::from_stream(failing))
}

fn verb_of(method: &Method, t: &Target, watch: bool) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn respond(code: StatusCode, v: &Value, accept: &str) -> Response {
    let wants_table = accept.contains("as=Table");
    if wants_table && v.get("items").is_some_and(Value::is_array) {
        return (code, axum::Json(discovery::table(v))).into_response();
    }
    if wants_table && v.get("metadata").is_some() && v.get("kind").is_some_and(|k| k != "Status") {
        return (
            code,
            axum::Json(discovery::table(
                &json!({"kind": "List", "metadata": {}, "items": [v]}),
            )),
        )
            .into_response();
    }
    (code, axum::Json(v)).into_response()
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(ct));
    }
    if ct.contains("protobuf") {
        return super::protobuf::decode(body).map_err(|e| match e {
            super::protobuf::ProtobufError::UnknownKind { .. } | super::protobuf::ProtobufError::Untyped => {
                ApiError::unsupported_media_type(ct)
            }
            e => ApiError::bad_request(format!("error decoding request body: {e}")),
        });
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml::from_slice::<Value>(body)
            .map_err(|_| ApiError::bad_request(format!("error decoding request body: {json_err}"))),
    }
}

fn handle(
    cluster: &Cluster,
    method: &Method,
    headers: &HeaderMap,
    t: &Target,
    q: &Query,
    body: &Bytes,
) -> Result<(StatusCode, Value), ApiError> {
    let rt = &t.rt;
    let ns = t.namespace.as_deref().unwrap_or_default();
    let opts = q.write_options();
    let part = match t.sub.as_deref() {
        Some("status") => Part::Status,
        Some("finalize") => Part::Finalize,
        _ => Part::Main,
    };
    if part == Part::Finalize && *method != Method::PUT {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} namespaces/finalize)"
        )));
    }
    if t.sub.as_deref() == Some("scale") {
        let name = t.name.as_deref().unwrap_or_default();
        return scale(cluster, method, headers, rt, ns, name, body, &opts).map(|v| (StatusCode::OK, v));
    }
    if t.sub.as_deref() == Some("log") {
        return Err(ApiError::method_not_allowed("pods/log supports get only"));
    }
    if rt.review && !(method == Method::POST && t.name.is_none()) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} supports create only)",
            rt.plural
        )));
    }
    match (method.clone(), &t.name) {
        (Method::GET, None) => list(cluster, rt, t.namespace.as_deref(), q).map(|v| (StatusCode::OK, v)),
        (Method::GET, Some(name)) => cluster.get(rt, ns, name).map(|v| (StatusCode::OK, v)),
        (Method::POST, None) => {
            if rt.namespaced && t.namespace.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource: create {} requires a namespace",
                    rt.plural
                )));
            }
            let obj = parse_body(headers, body)?;
            cluster
                .create(rt, ns, obj, &opts)
                .map(|v| (StatusCode::CREATED, v))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_body(headers, body)?;
            cluster
                .update(rt, ns, name, obj, part, &opts)
                .map(|v| (StatusCode::OK, v))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind =
                PatchKind::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
            let patch = parse_body(headers, body)?;
            let existed = cluster.store.get(&rt.id(), ns, name).is_some();
            let v = cluster.patch(rt, ns, name, kind, &patch, part, &opts)?;
            let code = if !existed && kind == PatchKind::Apply {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((code, v))
        }
        (Method::DELETE, Some(name)) => {
            let d = DeleteOptions::parse(body, &q.0)?;
            cluster.delete(rt, ns, name, &d).map(|v| (StatusCode::OK, v))
        }
        (Method::DELETE, None) => delete_collection(cluster, rt, t.namespace.as_deref(), q, body),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m} {})",
            rt.plural
        ))),
    }
}

/// Where a paginated list continues: the snapshot revision, the first key of the next page and, for
/// unfiltered lists, how many objects the list covers and how many came before this page (so
/// `remainingItemCount` needs no scan: the snapshot never changes).
#[derive(Debug, PartialEq)]
struct Continue {
    rv: u64,
    namespace: String,
    name: String,
    position: Option<(u64, u64)>,
}

fn encode_continue(c: &Continue) -> String {
    let mut token =
        json!({"v": "meta.k8s.io/v1", "rv": c.rv, "start": format!("{}/{}", c.namespace, c.name)});
    if let Some((offset, total)) = c.position {
        token["offset"] = json!(offset);
        token["total"] = json!(total);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<Continue, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    let position = v["offset"].as_u64().zip(v["total"].as_u64());
    Ok(Continue {
        rv,
        namespace: ns.to_string(),
        name: name.to_string(),
        position,
    })
}

/// Selectors of a list or watch, checked against the fields the resource supports.
struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(rt: &ResourceType, namespace: Option<&str>, q: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
            // The message is labels.Parse's own, as a real API server returns it (requirement errors
            // already start with "unable to parse requirement: ").
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        for f in fields.fields() {
            if !supported_field(rt, f) {
                return Err(ApiError::bad_request(format!("field label not supported: {f}")));
            }
        }
        Ok(Filter {
            namespace: namespace.map(str::to_string),
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && obj["metadata"]["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        self.labels.matches_object(obj) && self.fields.matches_object(obj)
    }

    fn selects_all(&self) -> bool {
        self.labels.is_empty() && self.fields.fields().next().is_none()
    }
}

/// Field selectors the API server supports per kind (beyond metadata.name and metadata.namespace).
fn supported_field(rt: &ResourceType, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    if rt.crd.is_some() {
        return false;
    }
    let extra: &[&str] = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "persistentvolumes") | ("", "persistentvolumeclaims") => &["status.phase"],
        ("apps", "replicasets") | ("", "replicationcontrollers") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    };
    extra.contains(&field)
}

fn list(cluster: &Cluster, rt: &ResourceType, namespace: Option<&str>, q: &Query) -> Result<Value, ApiError> {
    let filter = Filter::new(rt, namespace, q)?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
        None => 0,
    };
    let mut position = None;
    let (rv, table, start) = match q.get("continue").filter(|s| !s.is_empty()) {
        Some(token) => {
            let Continue {
                rv,
                namespace: ns,
                name,
                position: pos,
            } = decode_continue(token)?;
            position = pos;
            let table = cluster.store.snapshot_at(&rt.id(), rv).map_err(|_| {
                ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                )
            })?;
            (rv, table, Some((ns, name)))
        }
        None => {
            let current = cluster.store.revision();
            match (q.get("resourceVersion"), q.get("resourceVersionMatch")) {
                (Some(v), Some("Exact")) if !v.is_empty() => {
                    let rv = v
                        .parse::<u64>()
                        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?;
                    let table = cluster.store.snapshot_at(&rt.id(), rv).map_err(|e| match e {
                        StoreError::Compacted { requested, oldest } => ApiError::expired(format!(
                            "The resourceVersion for the provided list is too old. ({requested} < {oldest})"
                        )),
                        other => ApiError::internal(other.to_string()),
                    })?;
                    (rv, table, None)
                }
                (Some(v), _) if !v.is_empty() && v != "0" => {
                    let rv = v
                        .parse::<u64>()
                        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?;
                    if rv > current {
                        return Err(ApiError::timeout(format!(
                            "Too large resource version: {rv}, current: {current}"
                        )));
                    }
                    let (rv, table) = cluster.store.snapshot(&rt.id());
                    (rv, table, None)
                }
                _ => {
                    let (rv, table) = cluster.store.snapshot(&rt.id());
                    (rv, table, None)
                }
            }
        }
    };
    let iter: Box<dyn Iterator<Item = Entry<'_>>> = match (namespace, &start) {
        (_, Some(s)) => Box::new(
            table
                .range(s.clone()..)
                .take_while(move |((n, _), _)| namespace.is_none_or(|ns| n == ns)),
        ),
        (Some(ns), None) => Box::new(namespace_range(&table, ns)),
        (None, None) => Box::new(table.iter()),
    };
    let mut items = Vec::new();
    let mut next = None;
    for (key, obj) in iter {
        if !filter.matches(obj) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            next = Some(key.clone());
            break;
        }
        items.push(render(rt, obj));
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some((ns, name)) = next {
        let position = filter.selects_all().then(|| {
            let (offset, total) = position.unwrap_or_else(|| {
                let total = match namespace {
                    Some(ns) => namespace_range(&table, ns).count(),
                    None => table.len(),
                };
                (0, total as u64)
            });
            let offset = offset + items.len() as u64;
            meta["remainingItemCount"] = json!(total.saturating_sub(offset));
            (offset, total)
        });
        meta["continue"] = json!(encode_continue(&Continue {
            rv,
            namespace: ns,
            name,
            position
        }));
    }
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
    )
}

fn delete_collection(
    cluster: &Cluster,
    rt: &ResourceType,
    namespace: Option<&str>,
    q: &Query,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    if rt.namespaced && namespace.is_none() {
        return Err(ApiError::method_not_allowed(
            "deletecollection of a namespaced resource requires a namespace",
        ));
    }
    if !rt.verbs().contains(&"deletecollection") {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            rt.plural
        )));
    }
    let filter = Filter::new(rt, namespace, q)?;
    let opts = DeleteOptions::parse(body, &q.0)?;
    let (_, table) = cluster.store.snapshot(&rt.id());
    let mut deleted = Vec::new();
    for (_, obj) in table.iter().filter(|(_, o)| filter.matches(o)) {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        match cluster.delete(rt, ns, name, &opts) {
            Ok(v) => deleted.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
               "metadata": {"resourceVersion": cluster.store.revision().to_string()}, "items": deleted}),
    ))
}

#[allow(clippy::too_many_arguments)]
fn scale(
    cluster: &Cluster,
    method: &Method,
    headers: &HeaderMap,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let paths = rt.scale.clone().ok_or_else(ApiError::not_found_path)?;
    let render_scale = |obj: &Value| -> Value {
        let selector = paths
            .label_selector
            .as_deref()
            .and_then(|p| obj.pointer(p))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                LabelSelector::from_label_selector(&obj["spec"]["selector"])
                    .ok()
                    .map(|s| s.to_string())
            })
            .unwrap_or_default();
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": ns, "uid": obj["metadata"]["uid"],
                         "resourceVersion": obj["metadata"]["resourceVersion"],
                         "creationTimestamp": obj["metadata"]["creationTimestamp"]},
            "spec": {"replicas": obj.pointer(&paths.spec_replicas).cloned().unwrap_or(json!(0))},
            "status": {"replicas": obj.pointer(&paths.status_replicas).cloned().unwrap_or(json!(0)), "selector": selector}
        })
    };
    let current = cluster.get(rt, ns, name)?;
    if *method == Method::GET {
        return Ok(render_scale(&current));
    }
    let mut scale_obj = render_scale(&current);
    match *method {
        Method::PUT => scale_obj = parse_body(headers, body)?,
        Method::PATCH => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch = parse_body(headers, body)?;
            match PatchKind::from_content_type(ct) {
                Some(PatchKind::Json) => super::patch::json_patch(&mut scale_obj, &patch)
                    .map_err(|e| ApiError::invalid_patch(e.to_string()))?,
                Some(_) => super::patch::merge_patch(&mut scale_obj, &patch),
                None => return Err(ApiError::unsupported_media_type(ct)),
            }
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "scale supports get, update and patch",
            ));
        }
    }
    let replicas = scale_obj["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                &[(
                    "spec.replicas".into(),
                    "Invalid value: must be greater than or equal to 0".into(),
                )],
            )
        })?;
    let mut next = current.clone();
    if let Some(slot) = next.pointer_mut(&paths.spec_replicas) {
        *slot = json!(replicas);
    } else {
        next["spec"]["replicas"] = json!(replicas);
    }
    if let Some(rv) = scale_obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        next["metadata"]["resourceVersion"] = json!(rv);
    }
    let updated = cluster.update(rt, ns, name, next, Part::Main, opts)?;
    let latest = cluster.get(rt, ns, name).unwrap_or(updated);
    Ok(render_scale(&latest))
}

async fn exec_pod(
    cluster: &Cluster,
    t: &Target,
    q: &Query,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ns = t.namespace.as_deref().unwrap_or_default();
    let name = t.name.as_deref().unwrap_or_default();
    let pod = cluster.get(&t.rt, ns, name)?;
    let req = exec::ExecRequest::from_query(&q.0)?;
    let mut target = exec::resolve(&pod, req, &cluster.state_dir)?;
    target.tracker = Some(cluster.kubelet.tracker());
    if let Some(container) = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
        .find(|c| c["name"] == target.container.as_str())
    {
        // Volumes at their mount paths (a mount that cannot be prepared is left out, not fatal).
        let mounts = super::kubelet::container_mounts(cluster, &pod, container, false).unwrap_or_else(|e| {
            tracing::warn!(pod = name, error = %e, "exec without the pod's volumes");
            Vec::new()
        });
        target.mounts = super::kubelet::plan_for(cluster, &mounts, &target.workdir).unwrap_or_else(|e| {
            tracing::warn!(pod = name, error = %e, "exec without a mount namespace");
            None
        });
    }
    let ws = ws.map_err(|_| {
        ApiError::bad_request(
            "Upgrade request required: the sandbox serves exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only",
        )
    })?;
    Ok(exec::upgrade(ws, target))
}

/// Serve `GET .../pods/{name}/log`: the container's log file in the pod's directory (`container`,
/// `tailLines`, `limitBytes`, `follow` until the container is no longer running).
#[allow(clippy::result_large_err)]
pub fn pod_log(cluster: &Arc<Cluster>, ns: &str, pod: &Value, q: &Query) -> Result<Response, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let names: Vec<&str> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if names.contains(&c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => match pod["spec"]["containers"].as_array().map(Vec::as_slice) {
            Some([only]) => only["name"].as_str().unwrap_or_default().to_string(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                )));
            }
        },
    };
    let state = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|f| pod["status"][f].as_array().into_iter().flatten())
        .find(|s| s["name"] == container.as_str())
        .map(|s| s["state"].clone());
    if let Some(reason) = state.as_ref().and_then(|s| s["waiting"]["reason"].as_str())
        && reason != "CrashLoopBackOff"
    {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let path = super::controllers::pod_dir(cluster, ns, &name).join(format!("{container}.log"));
    let mut text = std::fs::read(&path).unwrap_or_default();
    let mut offset = text.len() as u64;
    if let Some(n) = q.get("tailLines").and_then(|s| s.parse::<usize>().ok()) {
        text = super::kubelet::tail_lines(&text, n).to_vec();
    }
    if let Some(n) = q.get("limitBytes").and_then(|s| s.parse::<usize>().ok()) {
        text.truncate(n);
        offset = text.len() as u64;
    }
    let running = state.as_ref().is_some_and(|s| s.get("running").is_some());
    if !q.flag("follow") || !running {
        return Ok(([(header::CONTENT_TYPE, "text/plain")], text).into_response());
    }
    // Follow: what is there, then what is appended, until the container stops running.
    let uid = pod["metadata"]["uid"].clone();
    let weak = Arc::downgrade(cluster);
    let ns = ns.to_string();
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(text)) });
    let rest = futures::stream::unfold(Some(offset), move |offset| {
        let (weak, path, ns, name, container, uid) = (
            weak.clone(),
            path.clone(),
            ns.clone(),
            name.clone(),
            container.clone(),
            uid.clone(),
        );
        async move {
            let mut offset = offset?;
            loop {
                let data = std::fs::read(&path).unwrap_or_default();
                if (data.len() as u64) > offset {
                    let chunk = Bytes::copy_from_slice(&data[offset as usize..]);
                    offset = data.len() as u64;
                    return Some((Ok(chunk), Some(offset)));
                }
                let cluster = weak.upgrade()?;
                let still = cluster
                    .store
                    .get(&super::registry::ResourceId::new("", "pods"), &ns, &name)
                    .filter(|p| p["metadata"]["uid"] == uid)
                    .is_some_and(|p| {
                        ["initContainerStatuses", "containerStatuses"]
                            .iter()
                            .flat_map(|f| p["status"][f].as_array().cloned().unwrap_or_default())
                            .any(|s| s["name"] == container.as_str() && s["state"].get("running").is_some())
                    });
                drop(cluster);
                if !still {
                    // One last read: output written just before the exit.
                    let data = std::fs::read(&path).unwrap_or_default();
                    if (data.len() as u64) > offset {
                        let chunk = Bytes::copy_from_slice(&data[offset as usize..]);
                        return Some((Ok(chunk), None));
                    }
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(futures::StreamExt::chain(first, rest)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Does the watch's filter select this object?
fn watch_event(rt: &ResourceType, filter: &Filter, change: &Change) -> Option<Value> {
    if change.resource != rt.id() {
        return None;
    }
    let new_match = filter.matches(&change.object);
    let old_match = change.old.as_ref().is_some_and(|o| filter.matches(o));
    let kind = match change.kind {
        ChangeKind::Added if new_match => "ADDED",
        ChangeKind::Modified if new_match && old_match => "MODIFIED",
        ChangeKind::Modified if new_match => "ADDED",
        ChangeKind::Modified if old_match => "DELETED",
        ChangeKind::Deleted if new_match || old_match => "DELETED",
        _ => return None,
    };
    Some(json!({"type": kind, "object": render(rt, &change.object)}))
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn watch(state: &AppState, t: &Target, q: &Query) -> Result<Response, ApiError> {
    let cluster = state.cluster.clone();
    let rt = t.rt.clone();
    let filter = Filter::new(&rt, t.namespace.as_deref(), q)?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let rv = q.get("resourceVersion").filter(|s| !s.is_empty());
    let send_initial = q.flag("sendInitialEvents") || rv.is_none() || rv == Some("0");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let start = if send_initial {
        let (rv, table) = cluster.store.snapshot(&rt.id());
        match cluster.store.watch(Some(rv)) {
            Ok(w) => Ok((Some(table), w)),
            Err(_) => cluster.store.watch(None).map(|w| (Some(table), w)),
        }
    } else {
        let from = rv
            .unwrap_or_default()
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("invalid resourceVersion"))?;
        cluster.store.watch(Some(from)).map(|w| (None, w))
    };
    let interval = state.bookmark_interval;
    let initial_end = q.flag("sendInitialEvents");
    tokio::spawn(async move {
        let (table, mut w) = match start {
            Ok(s) => s,
            Err(StoreError::Compacted { requested, oldest }) => {
                let status =
                    ApiError::gone(format!("too old resource version: {requested} ({oldest})")).to_status();
                let _ = tx.send(line(&json!({"type": "ERROR", "object": status}))).await;
                return;
            }
            Err(e) => {
                let _ = tx
                    .send(line(
                        &json!({"type": "ERROR", "object": ApiError::internal(e.to_string()).to_status()}),
                    ))
                    .await;
                return;
            }
        };
        let mut last_rv = w.rv;
        if let Some(table) = table {
            for obj in initial_objects(&table, &filter) {
                if tx
                    .send(line(&json!({"type": "ADDED", "object": render(&rt, &obj)})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if initial_end && bookmarks {
                let bm = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(),
                    "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
                if tx.send(line(&bm)).await.is_err() {
                    return;
                }
            }
        }
        for change in w.backlog.drain(..) {
            last_rv = change.rv;
            if let Some(ev) = watch_event(&rt, &filter, &change)
                && tx.send(line(&ev)).await.is_err()
            {
                return;
            }
        }
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let sleep_until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep_until => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(line(&bm)).await.is_err() { return; }
                }
                msg = w.live.recv() => match msg {
                    Ok(change) => {
                        if change.rv <= last_rv { continue; }
                        if change.resource == rt.id() { last_rv = change.rv; }
                        if let Some(ev) = watch_event(&rt, &filter, &change)
                            && tx.send(line(&ev)).await.is_err() { return; }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let status = ApiError::gone(format!("too old resource version: {last_rv}")).to_status();
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": status}))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
            if cluster.find_type(&rt.group, &rt.version, &rt.plural).is_none() {
                // The CRD went away: the real server ends such watches.
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid"))
}

fn initial_objects(table: &Table, filter: &Filter) -> Vec<Arc<Value>> {
    let iter: Box<dyn Iterator<Item = Entry<'_>>> = match &filter.namespace {
        Some(ns) => Box::new(namespace_range(table, ns)),
        None => Box::new(table.iter()),
    };
    iter.filter(|(_, o)| filter.matches(o))
        .map(|(_, o)| o.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_continue_token_when_decoded_then_round_trips() {
        let c = Continue {
            rv: 42,
            namespace: "ns".into(),
            name: "name-1".into(),
            position: Some((500, 1200)),
        };
        assert_eq!(decode_continue(&encode_continue(&c)).unwrap(), c);
        assert_eq!(decode_continue("%%%").unwrap_err().code, 400);
    }

    #[test]
    fn given_query_with_empty_pairs_when_parsed_then_they_are_ignored() {
        let q = Query::parse(Some("&limit=2&&command=ls&command=-l"));
        assert_eq!(q.get("limit"), Some("2"));
        assert_eq!(q.0.iter().filter(|(k, _)| k == "command").count(), 2);
    }
}
