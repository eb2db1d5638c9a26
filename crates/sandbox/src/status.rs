//! API errors as `metav1.Status` objects with the reason and code a real API server uses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A failed API request, rendered as a `Status` body with the matching HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human readable message, formatted as the real API server formats it.
    pub message: String,
    /// `details` (name, group, kind, causes), if any.
    pub details: Option<Box<Value>>,
    /// Seconds for `Retry-After` (TooManyRequests).
    pub retry_after: Option<u64>,
}

/// `<plural>` or `<plural>.<group>`, the "group resource" string used in messages.
pub fn group_resource(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": plural});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let gr = group_resource(group, plural);
        let mut e = Self::new(404, "NotFound", format!("{gr} \"{name}\" not found"));
        e.details = Some(Box::new(details(group, plural, name)));
        e
    }

    /// A path that serves nothing (unknown resource or group).
    pub fn not_found_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let gr = group_resource(group, plural);
        let mut e = Self::new(409, "AlreadyExists", format!("{gr} \"{name}\" already exists"));
        e.details = Some(Box::new(details(group, plural, name)));
        e
    }

    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        let gr = group_resource(group, plural);
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gr} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(Box::new(details(group, plural, name)));
        e
    }

    /// A conflict with a custom message (server-side apply field conflicts).
    pub fn conflict_message(group: &str, plural: &str, name: &str, message: String, causes: Value) -> Self {
        let mut e = Self::new(409, "Conflict", message);
        let mut d = details(group, plural, name);
        d["causes"] = causes;
        e.details = Some(Box::new(d));
        e
    }

    /// 422 Invalid: `<Kind> "<name>" is invalid: <field>: <problem>`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: &[(String, String)]) -> Self {
        let joined: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let list = if joined.len() == 1 {
            joined[0].clone()
        } else {
            format!("[{}]", joined.join(", "))
        };
        let mut e = Self::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {list}"));
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        d["causes"] = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        e.details = Some(Box::new(d));
        e
    }

    /// 422 for a patch that cannot be applied (a failed JSON-patch `test`, a path that does not exist).
    pub fn invalid_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 403 about one object: `<plural[.group]> "<name>" is forbidden: <why>` (admission refusals).
    pub fn forbidden_object(group: &str, plural: &str, name: &str, why: &str) -> Self {
        let gr = group_resource(group, plural);
        let mut e = Self::new(403, "Forbidden", format!("{gr} \"{name}\" is forbidden: {why}"));
        e.details = Some(Box::new(details(group, plural, name)));
        e
    }

    /// 403 from the NamespaceLifecycle admission plugin: a create in a Terminating namespace. `name` is
    /// the object's name, or its `generateName` prefix (admission runs before a name is generated).
    pub fn namespace_terminating(group: &str, plural: &str, name: &str, namespace: &str) -> Self {
        let mut e = Self::forbidden_object(
            group,
            plural,
            name,
            &format!("unable to create new content in namespace {namespace} because it is being terminated"),
        );
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!([{"reason": "NamespaceTerminating",
                "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]);
        }
        e
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 405 from the apiextensions server: a custom resource created while its CRD is terminating.
    pub fn crd_terminating(group: &str, plural: &str) -> Self {
        let mut e =
            Self::method_not_allowed("create not allowed while custom resource definition is terminating");
        e.details = Some(Box::new(json!({"group": group, "kind": plural})));
        e
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.details = Some(Box::new(json!({"retryAfterSeconds": retry_after})));
        e.retry_after = Some(retry_after);
        e
    }

    /// 410 `Expired`: a continue token whose snapshot is gone.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 410 `Gone`: a watch resourceVersion older than the retained history.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Gone", message)
    }

    /// 504 `Timeout` (e.g. a resourceVersion newer than the server has seen).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = (**d).clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, axum::Json(self.to_status())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_not_found_then_message_and_details_match_the_api_server() {
        let e = ApiError::not_found("apps", "deployments", "web");
        let s = e.to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["group"], "apps");
        let core = ApiError::not_found("", "pods", "p").to_status();
        assert_eq!(core["message"], "pods \"p\" not found");
        assert!(core["details"].get("group").is_none());
    }

    #[test]
    fn given_create_in_terminating_namespace_then_status_matches_the_namespace_lifecycle_plugin() {
        let s = ApiError::namespace_terminating("apps", "deployments", "web", "shop").to_status();
        assert_eq!(s["code"], 403);
        assert_eq!(s["reason"], "Forbidden");
        assert_eq!(
            s["message"],
            "deployments.apps \"web\" is forbidden: unable to create new content in namespace shop because it is being terminated"
        );
        assert_eq!(s["details"]["name"], "web");
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["causes"][0]["reason"], "NamespaceTerminating");
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.namespace");
        let crd = ApiError::crd_terminating("shop.example.com", "carts").to_status();
        assert_eq!(crd["code"], 405);
        assert_eq!(crd["reason"], "MethodNotAllowed");
        assert_eq!(
            crd["details"],
            json!({"group": "shop.example.com", "kind": "carts"})
        );
    }

    #[test]
    fn given_too_many_requests_then_response_carries_retry_after() {
        let resp = ApiError::too_many_requests(3).into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }
}
