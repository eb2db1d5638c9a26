//! Authentication: who sent a request, as a real API server decides it.
//!
//! - The token in the kubeconfig the sandbox writes is the cluster admin (`kubernetes-admin`, group
//!   `system:masters`): all-powerful, as a kubeadm/kind admin kubeconfig.
//! - ServiceAccount tokens come from the TokenRequest API (`POST .../serviceaccounts/<name>/token`,
//!   `kubectl create token`): signed JWTs bound to the ServiceAccount's uid, valid until they expire or
//!   the ServiceAccount is deleted. The user is `system:serviceaccount:<ns>:<name>`, with the groups
//!   `system:serviceaccounts`, `system:serviceaccounts:<ns>` and `system:authenticated`.
//! - Over HTTPS, a request without a bearer token is `system:anonymous` (group
//!   `system:unauthenticated`). Over the plain-HTTP listener it is the admin: that listener is what API
//!   servers called the insecure port (local, all-powerful; removed from Kubernetes in 1.20), and it is
//!   what the admin kubeconfig points at, since kubectl sends no credentials over plain HTTP.
//! - Any other bearer token is refused with `401 Unauthorized`.
//!
//! Tokens are signed with HMAC-SHA256 under a key made at start (a real server signs with RS256 under
//! `--service-account-signing-key-file`); clients treat them as opaque either way.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::registry::ResourceId;
use super::status::ApiError;
use super::store::Store;

/// The audience of the API server itself: tokens must name it to authenticate against it.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The admin user of the sandbox's kubeconfig.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The group that bypasses authorization (bound to `cluster-admin` too).
pub const MASTERS_GROUP: &str = "system:masters";
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// Token lifetime when the request names none (a real server's default too).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a TokenRequest may ask for.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime a TokenRequest may ask for.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Who sent a request (`user.Info` of the API server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The admin of the sandbox's kubeconfig.
    pub fn admin() -> User {
        User {
            name: ADMIN_USER.into(),
            uid: String::new(),
            groups: vec![MASTERS_GROUP.into(), AUTHENTICATED_GROUP.into()],
            extra: BTreeMap::new(),
        }
    }

    /// A request without credentials.
    pub fn anonymous() -> User {
        User {
            name: ANONYMOUS_USER.into(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED_GROUP.into()],
            extra: BTreeMap::new(),
        }
    }

    /// The user of ServiceAccount `namespace/name` with uid `uid`.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> User {
        User {
            name: service_account_username(namespace, name),
            uid: uid.into(),
            groups: vec![
                SERVICE_ACCOUNTS_GROUP.into(),
                format!("{SERVICE_ACCOUNTS_GROUP}:{namespace}"),
                AUTHENTICATED_GROUP.into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// `userInfo` as SelfSubjectReview and TokenReview report it.
    pub fn to_user_info(&self) -> Value {
        let mut info = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            info["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            info["extra"] = json!(self.extra);
        }
        info
    }
}

/// `system:serviceaccount:<namespace>:<name>`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Issues and checks the sandbox's credentials.
pub struct Authenticator {
    admin_token: String,
    key: [u8; 32],
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator {
    /// A fresh admin token and signing key.
    pub fn new() -> Authenticator {
        Authenticator {
            admin_token: format!("sandbox-admin-{}", uuid::Uuid::new_v4().simple()),
            key: rand::random(),
        }
    }

    /// The bearer token of the admin kubeconfig.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Who sent a request with this `Authorization` header (over TLS or the plain-HTTP listener), or 401
    /// for a bearer token the sandbox did not issue (or one that expired, or whose ServiceAccount is gone).
    pub fn authenticate(
        &self,
        store: &Store,
        authorization: Option<&str>,
        over_tls: bool,
        now: DateTime<Utc>,
    ) -> Result<User, ApiError> {
        if authorization.is_none() && !over_tls {
            return Ok(User::admin());
        }
        let Some(token) = authorization.and_then(bearer_token) else {
            return Ok(User::anonymous());
        };
        if token == self.admin_token {
            return Ok(User::admin());
        }
        self.verify(store, token, now).ok_or_else(unauthorized)
    }

    /// Sign a token for ServiceAccount `namespace/name` (uid `uid`) valid for `seconds` from `now`.
    pub fn mint(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        now: DateTime<Utc>,
    ) -> (String, DateTime<Utc>) {
        let issued = now.timestamp();
        let expires = issued + seconds;
        let header = json!({"alg": "HS256", "kid": "freezeframe-sandbox", "typ": "JWT"});
        let claims = json!({
            "aud": audiences,
            "exp": expires,
            "iat": issued,
            "nbf": issued,
            "iss": API_AUDIENCE,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
            "sub": service_account_username(namespace, name),
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signed.as_bytes()));
        let expiry = Utc.timestamp_opt(expires, 0).single().unwrap_or(now);
        (format!("{signed}.{signature}"), expiry)
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The ServiceAccount user of a token this sandbox signed, if it is still valid.
    fn verify(&self, store: &Store, token: &str, now: DateTime<Utc>) -> Option<User> {
        let (signed, signature) = token.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let (_, payload) = signed.split_once('.')?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let at = now.timestamp();
        if claims["exp"].as_i64()? <= at || claims["nbf"].as_i64()? > at {
            return None;
        }
        let audiences = claims["aud"].as_array()?;
        if !audiences.iter().any(|a| a == API_AUDIENCE) {
            return None;
        }
        let k8s = &claims["kubernetes.io"];
        let namespace = k8s["namespace"].as_str()?;
        let name = k8s["serviceaccount"]["name"].as_str()?;
        let uid = k8s["serviceaccount"]["uid"].as_str()?;
        // Bound tokens die with their ServiceAccount (a new one of the same name has another uid).
        let account = store.get(&ResourceId::new("", "serviceaccounts"), namespace, name)?;
        if account["metadata"]["uid"] != uid || account["metadata"].get("deletionTimestamp").is_some() {
            return None;
        }
        let mut user = User::service_account(namespace, name, uid);
        if let Some(jti) = claims["jti"].as_str() {
            user.extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={jti}")],
            );
        }
        Some(user)
    }
}

/// The token of an `Authorization: Bearer <token>` header; `None` for other schemes and empty tokens
/// (such requests are anonymous, as on a real server).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What a real API server answers for credentials it does not accept.
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// Answer a TokenRequest for ServiceAccount `account` (the stored object): the request with its spec
/// defaulted and `status.token` / `status.expirationTimestamp` filled.
pub fn token_request(
    authenticator: &Authenticator,
    account: &Value,
    mut request: Value,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let namespace = account["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = account["metadata"]["name"].as_str().unwrap_or_default();
    let uid = account["metadata"]["uid"].as_str().unwrap_or_default();
    if !request.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    let invalid = |field: &str, problem: String| {
        let mut e = ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            &[(field.to_string(), problem)],
        );
        // The message names the qualified kind, as apimachinery's NewInvalid does.
        e.message = e
            .message
            .replacen("TokenRequest", "TokenRequest.authentication.k8s.io", 1);
        e
    };
    let spec = &request["spec"];
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {v}: must be an integer"),
            )
        })?,
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"),
        ));
    }
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
    let (token, expiry) = authenticator.mint(namespace, name, uid, &audiences, seconds, now);
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    let metadata = request["metadata"].as_object().cloned().unwrap_or_default();
    request["metadata"] = Value::Object(metadata);
    request["metadata"]["name"] = json!(name);
    request["metadata"]["namespace"] = json!(namespace);
    request["metadata"]["creationTimestamp"] = json!(now.to_rfc3339_opts(SecondsFormat::Secs, true));
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(seconds);
    if request["spec"].get("boundObjectRef").is_none() {
        request["spec"]["boundObjectRef"] = Value::Null;
    }
    request["status"] = json!({
        "token": token,
        "expirationTimestamp": expiry.to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Precondition, StoreLimits};

    fn store_with_account(uid: &str) -> Store {
        let store = Store::new(StoreLimits::default());
        store
            .put(
                &ResourceId::new("", "serviceaccounts"),
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "backup", "namespace": "ops", "uid": uid}}),
                Precondition::Absent,
            )
            .unwrap();
        store
    }

    fn account(uid: &str) -> Value {
        json!({"metadata": {"name": "backup", "namespace": "ops", "uid": uid}})
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn minted(auth: &Authenticator, request: Value) -> String {
        let answer = token_request(auth, &account("u-1"), request, now()).unwrap();
        answer["status"]["token"].as_str().unwrap().to_string()
    }

    #[test]
    fn given_minted_token_when_authenticated_then_user_is_the_service_account_with_its_groups() {
        let auth = Authenticator::new();
        let store = store_with_account("u-1");
        let token = minted(&auth, json!({"spec": {}}));
        let user = auth
            .authenticate(&store, Some(&format!("Bearer {token}")), true, now())
            .unwrap();
        assert_eq!(user.name, "system:serviceaccount:ops:backup");
        assert_eq!(user.uid, "u-1");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ops",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn given_admin_token_or_no_token_when_authenticated_then_admin_or_anonymous() {
        let auth = Authenticator::new();
        let store = store_with_account("u-1");
        let header = format!("Bearer {}", auth.admin_token());
        assert_eq!(
            auth.authenticate(&store, Some(&header), true, now()).unwrap(),
            User::admin()
        );
        assert_eq!(
            auth.authenticate(&store, None, true, now()).unwrap(),
            User::anonymous()
        );
        assert_eq!(
            auth.authenticate(&store, Some("Basic dTpw"), true, now())
                .unwrap(),
            User::anonymous()
        );
        assert_eq!(
            auth.authenticate(&store, None, false, now()).unwrap(),
            User::admin(),
            "the plain-HTTP listener is the insecure port"
        );
    }

    #[test]
    fn given_unknown_tampered_expired_or_orphaned_token_when_authenticated_then_401() {
        let auth = Authenticator::new();
        let store = store_with_account("u-1");
        let token = minted(&auth, json!({"spec": {"expirationSeconds": 600}}));
        let refused = |store: &Store, token: &str, at: DateTime<Utc>| {
            let err = auth
                .authenticate(store, Some(&format!("Bearer {token}")), false, at)
                .unwrap_err();
            (err.code, err.reason, err.message)
        };
        let expected = (401, "Unauthorized", "Unauthorized".to_string());
        assert_eq!(refused(&store, "sandbox", now()), expected);
        assert_eq!(refused(&store, &format!("{token}x"), now()), expected);
        let other = Authenticator::new();
        assert_eq!(
            refused(&store, &minted(&other, json!({"spec": {}})), now()),
            expected,
            "signed by another sandbox"
        );
        assert_eq!(
            refused(&store, &token, now() + chrono::Duration::seconds(600)),
            expected
        );
        assert_eq!(
            refused(&store_with_account("u-2"), &token, now()),
            expected,
            "the ServiceAccount was re-created"
        );
        assert_eq!(
            refused(&Store::new(StoreLimits::default()), &token, now()),
            expected
        );
        let foreign = minted(&auth, json!({"spec": {"audiences": ["vault"]}}));
        assert_eq!(refused(&store, &foreign, now()), expected, "another audience");
    }

    #[test]
    fn given_token_request_when_answered_then_spec_defaulted_and_expiry_set() {
        let auth = Authenticator::new();
        let answer = token_request(
            &auth,
            &account("u-1"),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {}, "spec": {}}),
            now(),
        )
        .unwrap();
        assert_eq!(answer["spec"]["expirationSeconds"], 3600);
        assert_eq!(answer["spec"]["audiences"], json!([API_AUDIENCE]));
        assert_eq!(answer["status"]["expirationTimestamp"], "2026-12-01T13:00:00Z");
        assert_eq!(answer["metadata"]["name"], "backup");
    }

    #[test]
    fn given_too_short_expiration_when_requested_then_invalid_naming_the_field() {
        let err = token_request(
            &Authenticator::new(),
            &account("u-1"),
            json!({"spec": {"expirationSeconds": 60}}),
            now(),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "TokenRequest.authentication.k8s.io \"backup\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
        );
    }
}
