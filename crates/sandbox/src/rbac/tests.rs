//! Unit tests of the RBAC authorizer: request attributes, rule matching, bindings, aggregation, messages.

use super::*;
use crate::store::{Precondition, StoreLimits};

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn res(verb: &str, group: &str, resource: &str, sub: &str, name: &str, ns: &str) -> Attributes {
    Attributes::Resource(ResourceAttributes {
        verb: verb.into(),
        group: group.into(),
        version: if group.is_empty() {
            "v1".into()
        } else {
            String::new()
        },
        resource: resource.into(),
        subresource: sub.into(),
        name: name.into(),
        namespace: ns.into(),
    })
}

fn without_version(a: Attributes) -> Attributes {
    match a {
        Attributes::Resource(mut r) => {
            r.version.clear();
            Attributes::Resource(r)
        }
        other => other,
    }
}

#[test]
fn given_paths_when_parsed_then_attributes_are_those_of_the_api_servers_request_info() {
    let attrs =
        |m: &str, p: &str, query: &[(&str, &str)]| without_version(request_attributes(m, p, &q(query)));
    let r = |verb, group, resource, sub, name, ns| without_version(res(verb, group, resource, sub, name, ns));
    assert_eq!(
        attrs("GET", "/api/v1/namespaces/app/pods", &[]),
        r("list", "", "pods", "", "", "app")
    );
    assert_eq!(
        attrs("GET", "/api/v1/namespaces/app/pods", &[("watch", "true")]),
        r("watch", "", "pods", "", "", "app")
    );
    assert_eq!(
        attrs("GET", "/api/v1/pods", &[("fieldSelector", "metadata.name=db-0")]),
        r("list", "", "pods", "", "db-0", "")
    );
    assert_eq!(
        attrs("GET", "/api/v1/namespaces/app/pods/db-0/exec", &[]),
        r("get", "", "pods", "exec", "db-0", "app")
    );
    assert_eq!(
        attrs("POST", "/api/v1/namespaces/app/pods/db-0/exec", &[]),
        r("create", "", "pods", "exec", "db-0", "app")
    );
    assert_eq!(
        attrs("DELETE", "/apis/batch/v1/namespaces/ff/jobs", &[]),
        r("deletecollection", "batch", "jobs", "", "", "ff")
    );
    assert_eq!(
        attrs("PUT", "/api/v1/namespaces/gone/finalize", &[]),
        r("update", "", "namespaces", "finalize", "gone", "gone")
    );
    assert_eq!(
        attrs("PATCH", "/api/v1/namespaces/app", &[]),
        r("patch", "", "namespaces", "", "app", "app")
    );
    assert_eq!(
        attrs(
            "PATCH",
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/c-1",
            &[]
        ),
        r(
            "patch",
            "snapshot.storage.k8s.io",
            "volumesnapshotcontents",
            "",
            "c-1",
            ""
        )
    );
    assert_eq!(
        attrs(
            "PUT",
            "/api/v1/namespaces/app/persistentvolumeclaims/data/status",
            &[]
        ),
        r("update", "", "persistentvolumeclaims", "status", "data", "app")
    );
    for discovery in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/version",
        "/openapi/v3",
    ] {
        assert_eq!(
            attrs("GET", discovery, &[]),
            Attributes::NonResource {
                verb: "get".into(),
                path: discovery.into()
            }
        );
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        non_resource_urls: None,
    }
}

#[test]
fn given_rules_when_matched_then_wildcards_subresources_and_resource_names_behave_as_rbac() {
    let get_cm = res("get", "", "configmaps", "", "freezeframe-policies", "ff");
    assert!(rule_allows(&get_cm, &rule(&[""], &["configmaps"], &["get"], &[])));
    assert!(rule_allows(&get_cm, &rule(&["*"], &["*"], &["*"], &[])));
    assert!(rule_allows(
        &get_cm,
        &rule(&[""], &["configmaps"], &["get"], &["freezeframe-policies"])
    ));
    assert!(!rule_allows(
        &get_cm,
        &rule(&[""], &["configmaps"], &["get"], &["other"])
    ));
    assert!(!rule_allows(
        &get_cm,
        &rule(&["apps"], &["configmaps"], &["get"], &[])
    ));
    assert!(!rule_allows(
        &get_cm,
        &rule(&[""], &["configmaps"], &["list"], &[])
    ));
    let list_cm = res("list", "", "configmaps", "", "", "ff");
    assert!(
        !rule_allows(
            &list_cm,
            &rule(&[""], &["configmaps"], &["list"], &["freezeframe-policies"])
        ),
        "a list names no object, so resourceNames never match it"
    );
    let exec = res("create", "", "pods", "exec", "db-0", "app");
    assert!(
        !rule_allows(&exec, &rule(&[""], &["pods"], &["create"], &[])),
        "pods is not pods/exec"
    );
    assert!(rule_allows(&exec, &rule(&[""], &["pods/exec"], &["create"], &[])));
    assert!(rule_allows(&exec, &rule(&[""], &["*/exec"], &["create"], &[])));
    assert!(rule_allows(&exec, &rule(&[""], &["*"], &["create"], &[])));
    let discovery = |path: &str| Attributes::NonResource {
        verb: "get".into(),
        path: path.into(),
    };
    let urls = PolicyRule {
        verbs: vec!["get".into()],
        non_resource_urls: Some(vec!["/apis/*".into(), "/version".into()]),
        ..Default::default()
    };
    assert!(rule_allows(&discovery("/apis/apps/v1"), &urls));
    assert!(rule_allows(&discovery("/version"), &urls));
    assert!(!rule_allows(&discovery("/api"), &urls));
    assert!(!rule_allows(&discovery("/metrics"), &urls));
}

fn store(objects: &str) -> Store {
    let store = Store::new(StoreLimits::default());
    for (_, object) in bootstrap_policy() {
        put(&store, object);
    }
    for doc in objects.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        put(&store, serde_yaml::from_str(doc).unwrap());
    }
    store
}

fn put(store: &Store, object: Value) {
    let plural = match object["kind"].as_str().unwrap() {
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "ServiceAccount" => "serviceaccounts",
        other => panic!("no plural for {other}"),
    };
    let group = if plural == "serviceaccounts" {
        ""
    } else {
        RBAC_GROUP
    };
    store
        .put(&ResourceId::new(group, plural), object, Precondition::Absent)
        .unwrap();
}

const SA_RBAC: &str = "
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: app}
rules: [{apiGroups: [''], resources: [pods, pods/log], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: backup}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: snapshots}
rules: [{apiGroups: [snapshot.storage.k8s.io], resources: [volumesnapshotcontents], verbs: [patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: snapshots}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: snapshots}
subjects: [{kind: Group, name: 'system:serviceaccounts:ops'}]
";

fn backup_user() -> User {
    User::service_account("app", "backup", "u-1")
}

#[test]
fn given_role_binding_when_authorized_then_allowed_only_in_its_namespace_and_reason_names_it() {
    let store = store(SA_RBAC);
    let user = backup_user();
    let d = authorize(&store, &user, &res("get", "", "pods", "log", "db-0", "app"));
    assert!(d.allowed);
    assert_eq!(
        d.reason,
        "RBAC: allowed by RoleBinding \"reader/app\" of Role \"reader\" to ServiceAccount \"backup/app\""
    );
    assert!(!authorize(&store, &user, &res("get", "", "pods", "", "db-0", "other")).allowed);
    assert!(!authorize(&store, &user, &res("list", "", "pods", "", "", "")).allowed);
    assert!(!authorize(&store, &user, &res("delete", "", "pods", "", "db-0", "app")).allowed);
    let stranger = User::service_account("app", "other", "u-2");
    assert!(!authorize(&store, &stranger, &res("get", "", "pods", "", "db-0", "app")).allowed);
}

#[test]
fn given_group_subject_when_authorized_then_every_service_account_of_the_namespace_is_allowed() {
    let store = store(SA_RBAC);
    let patch = res(
        "patch",
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        "",
        "c",
        "",
    );
    let d = authorize(&store, &User::service_account("ops", "any", "u"), &patch);
    assert_eq!(
        d.reason,
        "RBAC: allowed by ClusterRoleBinding \"snapshots\" of ClusterRole \"snapshots\" to Group \"system:serviceaccounts:ops\""
    );
    assert!(!authorize(&store, &backup_user(), &patch).allowed);
}

#[test]
fn given_default_policy_when_authorized_then_discovery_and_self_reviews_allowed_for_any_account() {
    let store = store("");
    let user = backup_user();
    let get = |path: &str| Attributes::NonResource {
        verb: "get".into(),
        path: path.into(),
    };
    for path in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps/v1",
        "/version",
        "/openapi/v3/apis/apps/v1",
    ] {
        assert!(authorize(&store, &user, &get(path)).allowed, "{path}");
    }
    assert!(!authorize(&store, &user, &get("/metrics")).allowed);
    assert!(
        authorize(
            &store,
            &user,
            &res(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                "",
                ""
            )
        )
        .allowed
    );
    assert!(authorize(&store, &User::anonymous(), &get("/version")).allowed);
    assert!(!authorize(&store, &User::anonymous(), &get("/api")).allowed);
    assert!(authorize(&store, &User::admin(), &res("delete", "", "nodes", "", "n", "")).allowed);
}

#[test]
fn given_aggregated_cluster_role_when_authorized_then_rules_of_matching_roles_apply() {
    let store = store(
        "
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: monitoring}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {example.com/aggregate-to-monitoring: 'true'}}]
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: monitoring-endpoints, labels: {example.com/aggregate-to-monitoring: 'true'}}
rules: [{apiGroups: [''], resources: [endpoints], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: unrelated, labels: {example.com/aggregate-to-monitoring: 'false'}}
rules: [{apiGroups: [''], resources: [secrets], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: monitoring, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: monitoring}
subjects: [{kind: ServiceAccount, name: backup, namespace: app}]
",
    );
    let user = backup_user();
    let d = authorize(&store, &user, &res("list", "", "endpoints", "", "", "app"));
    assert_eq!(
        d.reason,
        "RBAC: allowed by RoleBinding \"monitoring/app\" of ClusterRole \"monitoring\" to ServiceAccount \"backup/app\""
    );
    assert!(!authorize(&store, &user, &res("list", "", "secrets", "", "", "app")).allowed);
}

#[test]
fn given_denied_requests_when_refused_then_message_and_details_are_the_api_servers() {
    let user = backup_user();
    let e = forbidden(&user, &res("create", "", "pods", "exec", "db-0", "shop"), "");
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert_eq!(
        e.message,
        "pods \"db-0\" is forbidden: User \"system:serviceaccount:app:backup\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"shop\""
    );
    assert_eq!(*e.details.unwrap(), json!({"name": "db-0", "kind": "pods"}));
    let e = forbidden(
        &user,
        &res("list", "snapshot.storage.k8s.io", "volumesnapshots", "", "", ""),
        "",
    );
    assert_eq!(
        e.message,
        "volumesnapshots.snapshot.storage.k8s.io is forbidden: User \"system:serviceaccount:app:backup\" cannot list resource \"volumesnapshots\" in API group \"snapshot.storage.k8s.io\" at the cluster scope"
    );
    assert_eq!(
        *e.details.unwrap(),
        json!({"group": "snapshot.storage.k8s.io", "kind": "volumesnapshots"})
    );
    let e = forbidden(
        &User::anonymous(),
        &Attributes::NonResource {
            verb: "get".into(),
            path: "/api".into(),
        },
        "",
    );
    assert_eq!(
        e.message,
        "forbidden: User \"system:anonymous\" cannot get path \"/api\""
    );
}

#[test]
fn given_websocket_exec_when_checked_then_create_is_needed_as_well_as_get() {
    let exec = res("get", "", "pods", "exec", "db-0", "app");
    assert_eq!(
        checks(exec.clone(), true),
        vec![exec.clone(), exec.with_verb("create")]
    );
    assert_eq!(checks(exec.clone(), false), vec![exec]);
    let log = res("get", "", "pods", "log", "db-0", "app");
    assert_eq!(checks(log.clone(), true), vec![log]);
}

#[test]
fn given_access_reviews_when_answered_then_they_report_the_authorizers_decision() {
    let store = store(SA_RBAC);
    let user = backup_user();
    let review = |spec: Value| {
        answer_review(
            &store,
            &user,
            "SelfSubjectAccessReview",
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec}),
        )
    };
    let yes = review(json!({"resourceAttributes": {"namespace": "app", "verb": "get", "resource": "pods", "subresource": "log"}})).unwrap();
    assert_eq!(yes["status"]["allowed"], true);
    let no = review(json!({"resourceAttributes": {"namespace": "app", "verb": "create", "resource": "pods", "subresource": "exec"}})).unwrap();
    assert_eq!(no["status"]["allowed"], false);
    let discovery = review(json!({"nonResourceAttributes": {"path": "/apis", "verb": "get"}})).unwrap();
    assert_eq!(discovery["status"]["allowed"], true);
    assert_eq!(review(json!({})).unwrap_err().code, 422);

    let rules = answer_review(
        &store,
        &user,
        "SelfSubjectRulesReview",
        json!({"spec": {"namespace": "app"}}),
    )
    .unwrap();
    let resource_rules = rules["status"]["resourceRules"].as_array().unwrap();
    assert!(
        resource_rules
            .iter()
            .any(|r| r["resources"] == json!(["pods", "pods/log"])),
        "{rules}"
    );
    let me = answer_review(&store, &user, "SelfSubjectReview", json!({})).unwrap();
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:app:backup"
    );
}
