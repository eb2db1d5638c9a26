//! Authorization: the RBAC authorizer of a real API server, over the Roles, ClusterRoles, RoleBindings
//! and ClusterRoleBindings the sandbox stores.
//!
//! - Request attributes come from the path as the API server's `RequestInfoFactory` derives them
//!   (verb from method, `list`/`watch`/`deletecollection` for collections, a `metadata.name` field
//!   selector naming the object, namespace objects in their own namespace, subresources).
//! - Rules match verbs (`*`), API groups (`*`), resources (`*`, `pods/exec`, `*/status`), resourceNames
//!   and nonResourceURLs (`/apis/*`) exactly as `rbac/v1` evaluation helpers do. ClusterRoleBindings
//!   apply everywhere, RoleBindings in their namespace; subjects are Users, Groups and ServiceAccounts
//!   (a ServiceAccount subject without a namespace means the RoleBinding's).
//! - A ClusterRole with an `aggregationRule` grants the rules of every ClusterRole its selectors match
//!   (what the aggregation controller writes into it on a real cluster).
//! - `system:masters` is allowed everything, as the privileged-group authorizer allows it.
//! - Denials are `403 Forbidden` with the real message and details; reviews
//!   (SelfSubjectAccessReview, SelfSubjectRulesReview, SelfSubjectReview) answer from the same rules.
//! - A WebSocket upgrade to `pods/exec`, `pods/attach` or `pods/portforward` (a GET) also needs
//!   `create` on it, as API servers with `AuthorizePodWebsocketUpgradeCreatePermission` (default on
//!   since 1.35) check: RBAC that works here works on every server version.

use std::collections::BTreeSet;

use freezeframe_selector::LabelSelector;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde_json::{Value, json};

use super::auth::{
    AUTHENTICATED_GROUP, MASTERS_GROUP, UNAUTHENTICATED_GROUP, User, service_account_username,
};
use super::registry::ResourceId;
use super::status::{ApiError, group_resource};
use super::store::Store;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// What a resource request asks to do (`authorizer.Attributes` of a resource request).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAttributes {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// Empty for cluster-scoped requests (and lists across all namespaces).
    pub namespace: String,
}

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    /// Any other path (discovery, `/version`, `/healthz`): the verb is the lower-case HTTP method.
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// The same request with another verb.
    pub fn with_verb(&self, verb: &str) -> Attributes {
        match self {
            Attributes::Resource(r) => Attributes::Resource(ResourceAttributes {
                verb: verb.into(),
                ..r.clone()
            }),
            Attributes::NonResource { path, .. } => Attributes::NonResource {
                verb: verb.into(),
                path: path.clone(),
            },
        }
    }
}

/// Whether a request is allowed, and by which binding (`RBAC: allowed by ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The attributes of an HTTP request (`RequestInfoFactory.NewRequestInfo`).
pub fn request_attributes(method: &str, path: &str, query: &[(String, String)]) -> Attributes {
    let non_resource = || Attributes::NonResource {
        verb: method.to_ascii_lowercase(),
        path: path.to_string(),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return non_resource();
    }
    let mut rest = &parts[1..];
    let mut group = "";
    if parts[0] == "apis" {
        if rest.len() < 3 {
            return non_resource();
        }
        group = rest[0];
        rest = &rest[1..];
    }
    let version = rest[0];
    rest = &rest[1..];
    let mut verb = if matches!(rest[0], "proxy" | "watch") {
        if rest.len() < 2 {
            return non_resource();
        }
        let special = rest[0];
        rest = &rest[1..];
        special
    } else {
        match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
    };
    let mut namespace = "";
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = rest[1];
        // `namespaces/<ns>/status` and `/finalize` are subresources of the namespace itself.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let resource = rest.first().copied().unwrap_or_default();
    let mut name = rest.get(1).copied().unwrap_or_default().to_string();
    let subresource = if verb != "proxy" {
        rest.get(2).copied().unwrap_or_default()
    } else {
        ""
    };
    let param = |key: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if name.is_empty() && verb == "get" {
        let watch = matches!(param("watch"), Some("1" | "t" | "T" | "true" | "TRUE" | "True"));
        verb = if watch { "watch" } else { "list" };
        if let Some(named) = param("fieldSelector").and_then(exact_name) {
            name = named;
        }
    }
    if name.is_empty() && verb == "delete" {
        verb = "deletecollection";
    }
    Attributes::Resource(ResourceAttributes {
        verb: verb.into(),
        group: group.into(),
        version: version.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        name,
        namespace: namespace.into(),
    })
}

/// The name a field selector requires (`metadata.name=x` or `==x`), as `RequiresExactMatch` finds it.
fn exact_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (key, value) = term
            .split_once("==")
            .or_else(|| term.split_once('=').filter(|(k, _)| !k.ends_with('!')))?;
        (key.trim() == "metadata.name" && !value.is_empty()).then(|| value.trim().to_string())
    })
}

/// The checks a request must pass: its attributes, and `create` too for a WebSocket upgrade of
/// `pods/exec`, `pods/attach` or `pods/portforward`.
pub fn checks(attributes: Attributes, websocket_upgrade: bool) -> Vec<Attributes> {
    let streaming = matches!(&attributes, Attributes::Resource(r)
        if r.verb == "get" && r.group.is_empty() && r.resource == "pods"
            && matches!(r.subresource.as_str(), "exec" | "attach" | "portforward"));
    if websocket_upgrade && streaming {
        let create = attributes.with_verb("create");
        vec![attributes, create]
    } else {
        vec![attributes]
    }
}

/// One binding that applies to a user, with the rules of its role.
struct Grant {
    /// `ClusterRoleBinding "x" of ClusterRole "y" to Group "z"`.
    description: String,
    rules: Vec<PolicyRule>,
}

/// Decide a request by the stored RBAC objects.
pub fn authorize(store: &Store, user: &User, attributes: &Attributes) -> Decision {
    if user.in_group(MASTERS_GROUP) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let namespace = match attributes {
        Attributes::Resource(r) => r.namespace.as_str(),
        Attributes::NonResource { .. } => "",
    };
    let allowed_by = grants(store, user, namespace)
        .into_iter()
        .find(|g| g.rules.iter().any(|rule| rule_allows(attributes, rule)));
    match allowed_by {
        Some(g) => Decision {
            allowed: true,
            reason: format!("RBAC: allowed by {}", g.description),
        },
        None => Decision {
            allowed: false,
            reason: String::new(),
        },
    }
}

fn grants(store: &Store, user: &User, namespace: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    for object in store.list(&ResourceId::new(RBAC_GROUP, "clusterrolebindings"), None) {
        let Ok(binding) = serde_json::from_value::<ClusterRoleBinding>(object.as_ref().clone()) else {
            continue;
        };
        let Some(subject) = applies_to(user, binding.subjects.as_deref(), "") else {
            continue;
        };
        if binding.role_ref.kind != "ClusterRole" {
            continue;
        }
        out.push(Grant {
            description: format!(
                "ClusterRoleBinding \"{}\" of ClusterRole \"{}\" to {}",
                binding.metadata.name.unwrap_or_default(),
                binding.role_ref.name,
                describe_subject(subject, "")
            ),
            rules: cluster_role_rules(store, &binding.role_ref.name),
        });
    }
    if namespace.is_empty() {
        return out;
    }
    for object in store.list(&ResourceId::new(RBAC_GROUP, "rolebindings"), Some(namespace)) {
        let Ok(binding) = serde_json::from_value::<RoleBinding>(object.as_ref().clone()) else {
            continue;
        };
        let Some(subject) = applies_to(user, binding.subjects.as_deref(), namespace) else {
            continue;
        };
        let rules = match binding.role_ref.kind.as_str() {
            "ClusterRole" => cluster_role_rules(store, &binding.role_ref.name),
            "Role" => store
                .get(
                    &ResourceId::new(RBAC_GROUP, "roles"),
                    namespace,
                    &binding.role_ref.name,
                )
                .and_then(|r| serde_json::from_value::<Role>(r.as_ref().clone()).ok())
                .and_then(|r| r.rules)
                .unwrap_or_default(),
            _ => continue,
        };
        out.push(Grant {
            description: format!(
                "RoleBinding \"{}/{namespace}\" of {} \"{}\" to {}",
                binding.metadata.name.unwrap_or_default(),
                binding.role_ref.kind,
                binding.role_ref.name,
                describe_subject(subject, namespace)
            ),
            rules,
        });
    }
    out
}

/// The first subject of a binding (in `namespace`, empty for a ClusterRoleBinding) that is `user`.
fn applies_to<'a>(user: &User, subjects: Option<&'a [Subject]>, namespace: &str) -> Option<&'a Subject> {
    subjects?.iter().find(|s| match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty() && service_account_username(ns, &s.name) == user.name
        }
        _ => false,
    })
}

fn describe_subject(s: &Subject, binding_namespace: &str) -> String {
    match s.kind.as_str() {
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            format!("ServiceAccount \"{}/{ns}\"", s.name)
        }
        kind => format!("{kind} \"{}\"", s.name),
    }
}

/// The rules a ClusterRole grants: its own, or for an aggregated one those of every ClusterRole its
/// selectors match (recursively, each role once).
fn cluster_role_rules(store: &Store, name: &str) -> Vec<PolicyRule> {
    let id = ResourceId::new(RBAC_GROUP, "clusterroles");
    let mut seen = BTreeSet::new();
    let mut pending = vec![name.to_string()];
    let mut rules = Vec::new();
    let mut all: Option<Vec<ClusterRole>> = None;
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(role) = store
            .get(&id, "", &name)
            .and_then(|r| serde_json::from_value::<ClusterRole>(r.as_ref().clone()).ok())
        else {
            continue;
        };
        let selectors: Vec<LabelSelector> = role
            .aggregation_rule
            .as_ref()
            .and_then(|a| a.cluster_role_selectors.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|s| LabelSelector::from_k8s(s).ok())
            .collect();
        if selectors.is_empty() {
            rules.extend(role.rules.unwrap_or_default());
            continue;
        }
        let all = all.get_or_insert_with(|| {
            store
                .list(&id, None)
                .iter()
                .filter_map(|r| serde_json::from_value::<ClusterRole>(r.as_ref().clone()).ok())
                .collect()
        });
        for other in all.iter() {
            let labels = other.metadata.labels.clone().unwrap_or_default();
            if selectors.iter().any(|s| s.matches_map(&labels))
                && let Some(other_name) = &other.metadata.name
            {
                pending.push(other_name.clone());
            }
        }
    }
    rules
}

/// `RuleAllows` of the RBAC authorizer.
pub fn rule_allows(attributes: &Attributes, rule: &PolicyRule) -> bool {
    let verb_matches = |verb: &str| rule.verbs.iter().any(|v| v == "*" || v == verb);
    match attributes {
        Attributes::Resource(r) => {
            let combined = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let groups = rule.api_groups.as_deref().unwrap_or_default();
            let resources = rule.resources.as_deref().unwrap_or_default();
            let names = rule.resource_names.as_deref().unwrap_or_default();
            verb_matches(&r.verb)
                && groups.iter().any(|g| g == "*" || *g == r.group)
                && resources.iter().any(|res| {
                    res == "*"
                        || *res == combined
                        || (!r.subresource.is_empty()
                            && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                })
                && (names.is_empty() || names.contains(&r.name))
        }
        Attributes::NonResource { verb, path } => {
            verb_matches(verb)
                && rule
                    .non_resource_urls
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|url| {
                        url == "*"
                            || url == path
                            || url
                                .strip_suffix('*')
                                .is_some_and(|prefix| path.starts_with(prefix))
                    })
        }
    }
}

/// The 403 a real API server answers (`responsewriters.Forbidden` with `forbiddenMessage`).
pub fn forbidden(user: &User, attributes: &Attributes, reason: &str) -> ApiError {
    let (message, group, resource, name) = match attributes {
        Attributes::NonResource { verb, path } => (
            format!("User \"{}\" cannot {verb} path \"{path}\"", user.name),
            "",
            "",
            "",
        ),
        Attributes::Resource(r) => {
            let combined = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", r.namespace)
            };
            (
                format!(
                    "User \"{}\" cannot {} resource \"{combined}\" in API group \"{}\" {scope}",
                    user.name, r.verb, r.group
                ),
                r.group.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
            )
        }
    };
    let why = if reason.is_empty() {
        message
    } else {
        format!("{message}: {reason}")
    };
    let text = if group.is_empty() && resource.is_empty() {
        format!("forbidden: {why}")
    } else if name.is_empty() {
        format!("{} is forbidden: {why}", group_resource(group, resource))
    } else {
        format!(
            "{} \"{name}\" is forbidden: {why}",
            group_resource(group, resource)
        )
    };
    let mut details = json!({});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if !resource.is_empty() {
        details["kind"] = json!(resource);
    }
    let mut error = ApiError::forbidden(text);
    error.details = Some(Box::new(details));
    error
}

/// Answer a review (`kind` SelfSubjectAccessReview, SelfSubjectRulesReview or SelfSubjectReview) for
/// `user`: the request with its `status` filled.
pub fn answer_review(store: &Store, user: &User, kind: &str, mut review: Value) -> Result<Value, ApiError> {
    let spec = review["spec"].clone();
    review["status"] = match kind {
        "SelfSubjectAccessReview" => {
            let attributes = review_attributes(&spec)?;
            let decision = authorize(store, user, &attributes);
            let mut status = json!({"allowed": decision.allowed});
            if !decision.reason.is_empty() {
                status["reason"] = json!(decision.reason);
            }
            status
        }
        "SelfSubjectRulesReview" => {
            let namespace = spec["namespace"].as_str().unwrap_or_default();
            if namespace.is_empty() {
                return Err(ApiError::bad_request("no namespace on request"));
            }
            rules_review(store, user, namespace)
        }
        "SelfSubjectReview" => json!({"userInfo": user.to_user_info()}),
        other => {
            return Err(ApiError::internal(format!(
                "{other} is not a review the sandbox answers"
            )));
        }
    };
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    Ok(review)
}

/// The attributes a SelfSubjectAccessReview asks about (exactly one of resource or non-resource).
fn review_attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let invalid = |message: &str| {
        ApiError::invalid(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "",
            &[("spec.resourceAttributes".into(), message.into())],
        )
    };
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    match (&spec["resourceAttributes"], &spec["nonResourceAttributes"]) {
        (r, Value::Null) if r.is_object() => Ok(Attributes::Resource(ResourceAttributes {
            verb: text(r, "verb"),
            group: text(r, "group"),
            version: text(r, "version"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            name: text(r, "name"),
            namespace: text(r, "namespace"),
        })),
        (Value::Null, n) if n.is_object() => Ok(Attributes::NonResource {
            verb: text(n, "verb"),
            path: text(n, "path"),
        }),
        (Value::Null, Value::Null) => Err(invalid(
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        _ => Err(invalid(
            "Invalid value: \"resourceAndNonResourceAttributesMutuallyExclusive\": cannot be specified in combination with resourceAttributes",
        )),
    }
}

/// What `user` may do in `namespace` (`kubectl auth can-i --list`).
fn rules_review(store: &Store, user: &User, namespace: &str) -> Value {
    let rules: Vec<PolicyRule> = if user.in_group(MASTERS_GROUP) {
        vec![
            PolicyRule {
                verbs: vec!["*".into()],
                api_groups: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                ..Default::default()
            },
            PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: Some(vec!["*".into()]),
                ..Default::default()
            },
        ]
    } else {
        grants(store, user, namespace)
            .into_iter()
            .flat_map(|g| g.rules)
            .collect()
    };
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rules {
        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
            let mut r = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups.unwrap_or_default(),
                "resources": rule.resources.unwrap_or_default()});
            if let Some(names) = rule.resource_names.filter(|n| !n.is_empty()) {
                r["resourceNames"] = json!(names);
            }
            resource_rules.push(r);
        }
        if let Some(urls) = rule.non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// The default RBAC objects every cluster has (a subset of the API server's bootstrap policy):
/// `cluster-admin` for `system:masters`, discovery and the public info for everyone, and self reviews
/// for every authenticated user. As (kind, object).
pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    let meta = |name: &str| {
        json!({"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    let role = |name: &str, rules: Value| {
        (
            "ClusterRole",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name), "rules": rules}),
        )
    };
    let binding = |name: &str, groups: &[&str]| {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g}))
            .collect();
        (
            "ClusterRoleBinding",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(name),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name}, "subjects": subjects}),
        )
    };
    let public_info = json!(["/healthz", "/livez", "/readyz", "/version", "/version/"]);
    vec![
        role(
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        binding("cluster-admin", &[MASTERS_GROUP]),
        role(
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        binding("system:discovery", &[AUTHENTICATED_GROUP]),
        role(
            "system:basic-user",
            json!([{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        ),
        binding("system:basic-user", &[AUTHENTICATED_GROUP]),
        role(
            "system:public-info-viewer",
            json!([{"nonResourceURLs": public_info, "verbs": ["get"]}]),
        ),
        binding(
            "system:public-info-viewer",
            &[AUTHENTICATED_GROUP, UNAUTHENTICATED_GROUP],
        ),
    ]
}

#[cfg(test)]
mod tests;
