//! State transitions of namespace and CRD deletion, driven pass by pass (no background task runs here).

use serde_json::{Value, json};

use super::*;
use crate::cluster::{ClusterOptions, Part, WriteOptions};
use crate::store::StoreLimits;

struct Fixture {
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(ClusterOptions {
        state_dir: dir.path().to_path_buf(),
        limits: StoreLimits::default(),
        own_image: Default::default(),
        random_faults: None,
    });
    Fixture { cluster, _dir: dir }
}

fn opts() -> WriteOptions {
    WriteOptions {
        field_manager: Some("test".into()),
        ..Default::default()
    }
}

impl Fixture {
    fn rt(&self, api_version: &str, kind: &str) -> Arc<ResourceType> {
        self.cluster.type_by_kind(api_version, kind).unwrap()
    }

    fn create(&self, obj: Value) -> Result<Value, crate::ApiError> {
        let rt = self.rt(obj["apiVersion"].as_str().unwrap(), obj["kind"].as_str().unwrap());
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.cluster.create(&rt, &ns, obj, &opts())
    }

    fn namespace(&self, name: &str) -> Value {
        self.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .unwrap()
    }

    fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.cluster.get(&self.rt(api_version, kind), ns, name).ok()
    }

    fn get_ns(&self, name: &str) -> Option<Value> {
        self.get("v1", "Namespace", "", name)
    }

    fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Result<Value, crate::ApiError> {
        self.cluster
            .delete(&self.rt(api_version, kind), ns, name, &DeleteOptions::default())
    }

    /// Drop every metadata finalizer of an object (as its controller would when done).
    fn release(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        let rt = self.rt(api_version, kind);
        let mut obj = self.cluster.get(&rt, ns, name).unwrap();
        obj["metadata"]["finalizers"] = json!([]);
        self.cluster
            .update(&rt, ns, name, obj, Part::Main, &opts())
            .unwrap();
    }

    fn widgets_crd(&self) {
        self.create(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"kind": "Widget", "plural": "widgets"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))
        .unwrap();
    }

    fn widget(&self, ns: &str, name: &str, finalizers: &[&str]) -> Result<Value, crate::ApiError> {
        self.create(json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": name, "namespace": ns, "finalizers": finalizers}}))
    }
}

fn condition<'a>(obj: &'a Value, kind: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[test]
fn given_new_namespace_then_it_is_active_with_the_kubernetes_finalizer_whatever_the_client_sent() {
    let f = fixture();
    let plain = f.namespace("plain");
    assert_eq!(plain["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(plain["status"]["phase"], "Active");
    let custom = f
        .create(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "custom"}, "spec": {"finalizers": ["example.com/x"]},
            "status": {"phase": "Terminating"}}))
        .unwrap();
    assert_eq!(
        custom["spec"]["finalizers"],
        json!(["example.com/x", "kubernetes"])
    );
    assert_eq!(custom["status"]["phase"], "Active");
}

#[test]
fn given_namespace_with_content_when_deleted_then_terminating_until_the_controller_finalizes_it() {
    let f = fixture();
    f.namespace("shop");
    f.create(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"}}),
    )
    .unwrap();

    let marked = f.delete("v1", "Namespace", "", "shop").unwrap();

    assert_eq!(marked["status"]["phase"], "Terminating");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(marked["metadata"].get("deletionGracePeriodSeconds").is_none());
    assert_eq!(marked["spec"]["finalizers"], json!(["kubernetes"]));
    assert!(f.get_ns("shop").is_some(), "only the controller removes it");
    assert!(f.get("v1", "ConfigMap", "shop", "cfg").is_some());
    let again = f.delete("v1", "Namespace", "", "shop").unwrap();
    assert_eq!(
        again["metadata"]["resourceVersion"], marked["metadata"]["resourceVersion"],
        "deleting a Terminating namespace changes nothing"
    );

    assert_eq!(sync_namespace(&f.cluster, "shop"), Progress::Finalized);

    assert!(f.get_ns("shop").is_none());
    assert!(f.get("v1", "ConfigMap", "shop", "cfg").is_none());
    assert_eq!(sync_namespace(&f.cluster, "shop"), Progress::Idle);
}

#[test]
fn given_content_held_by_a_finalizer_when_namespace_syncs_then_conditions_say_so_and_it_waits() {
    let f = fixture();
    f.namespace("shop");
    f.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": "shop", "finalizers": ["example.com/hold"]}}))
        .unwrap();
    f.delete("v1", "Namespace", "", "shop").unwrap();

    assert_eq!(
        sync_namespace(&f.cluster, "shop"),
        Progress::Waiting { remaining: 1 }
    );

    let ns = f.get_ns("shop").unwrap();
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    let content = condition(&ns, "NamespaceContentRemaining");
    assert_eq!(content["status"], "True");
    assert_eq!(content["reason"], "SomeResourcesRemain");
    assert_eq!(
        content["message"],
        "Some resources are remaining: configmaps. has 1 resource instances"
    );
    let finalizers = condition(&ns, "NamespaceFinalizersRemaining");
    assert_eq!(finalizers["status"], "True");
    assert_eq!(
        finalizers["message"],
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionContentFailure")["reason"],
        "ContentDeleted"
    );
    let rv = ns["metadata"]["resourceVersion"].clone();
    assert_eq!(
        sync_namespace(&f.cluster, "shop"),
        Progress::Waiting { remaining: 1 }
    );
    assert_eq!(
        f.get_ns("shop").unwrap()["metadata"]["resourceVersion"],
        rv,
        "a pass that finds nothing new writes nothing"
    );

    f.release("v1", "ConfigMap", "shop", "held");
    assert_eq!(sync_namespace(&f.cluster, "shop"), Progress::Finalized);
    assert!(f.get_ns("shop").is_none());
}

#[test]
fn given_terminating_namespace_when_creating_then_forbidden_naming_the_object_or_its_generate_name() {
    let f = fixture();
    f.namespace("shop");
    f.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": "shop", "finalizers": ["example.com/hold"]}}))
        .unwrap();
    f.delete("v1", "Namespace", "", "shop").unwrap();

    let named = f
        .create(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}))
        .unwrap_err();
    assert_eq!(named.code, 403);
    assert_eq!(named.reason, "Forbidden");
    assert_eq!(
        named.message,
        "deployments.apps \"web\" is forbidden: unable to create new content in namespace shop because it is being terminated"
    );
    let generated = f
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-", "namespace": "shop"}}))
        .unwrap_err();
    assert_eq!(
        generated.message,
        "configmaps \"cfg-\" is forbidden: unable to create new content in namespace shop because it is being terminated"
    );
    let rt = f.rt("v1", "ConfigMap");
    let apply = f.cluster.patch(
        &rt,
        "shop",
        "applied",
        crate::cluster::PatchKind::Apply,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}}),
        Part::Main,
        &opts(),
    );
    assert_eq!(
        apply.unwrap_err().code,
        403,
        "server-side apply of a new object is a create"
    );
}

#[test]
fn given_spec_finalizers_then_only_the_finalize_subresource_changes_them() {
    let f = fixture();
    f.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop"}, "spec": {"finalizers": ["example.com/x"]}}))
        .unwrap();
    let rt = f.rt("v1", "Namespace");
    let mut body = f.get_ns("shop").unwrap();
    body["spec"]["finalizers"] = json!([]);
    body["metadata"]["labels"]["team"] = json!("a");
    let main = f
        .cluster
        .update(&rt, "", "shop", body.clone(), Part::Main, &opts())
        .unwrap();
    assert_eq!(main["spec"]["finalizers"], json!(["example.com/x", "kubernetes"]));
    assert_eq!(main["metadata"]["labels"]["team"], "a");

    f.delete("v1", "Namespace", "", "shop").unwrap();
    assert_eq!(sync_namespace(&f.cluster, "shop"), Progress::Finalized);
    let ns = f.get_ns("shop").expect("another finalizer still holds it");
    assert_eq!(ns["spec"]["finalizers"], json!(["example.com/x"]));
    assert_eq!(ns["status"]["phase"], "Terminating");

    let mut body = ns;
    body["spec"]["finalizers"] = json!([]);
    body["status"]["phase"] = json!("Active");
    let last = f
        .cluster
        .update(&rt, "", "shop", body, Part::Finalize, &opts())
        .unwrap();
    assert_eq!(
        last["status"]["phase"], "Terminating",
        "finalize keeps the status"
    );
    assert!(
        f.get_ns("shop").is_none(),
        "no finalizer left: the update is the deletion"
    );
}

#[test]
fn given_namespace_with_metadata_finalizer_when_finalized_then_it_stays_until_that_finalizer_goes() {
    let f = fixture();
    f.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "finalizers": ["example.com/meta"]}}))
        .unwrap();
    f.delete("v1", "Namespace", "", "shop").unwrap();
    assert_eq!(sync_namespace(&f.cluster, "shop"), Progress::Finalized);
    let ns = f.get_ns("shop").unwrap();
    assert_eq!(ns["spec"]["finalizers"], json!([]));
    f.release("v1", "Namespace", "", "shop");
    assert!(f.get_ns("shop").is_none());
}

#[test]
fn given_deletion_when_update_removes_the_last_finalizer_then_watchers_see_only_deleted_with_the_last_stored_state()
 {
    let f = fixture();
    f.namespace("shop");
    f.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": "shop", "finalizers": ["example.com/hold"]}}))
        .unwrap();
    f.delete("v1", "ConfigMap", "shop", "held").unwrap();
    let from = f.cluster.store.revision();
    f.release("v1", "ConfigMap", "shop", "held");
    let changes = f.cluster.store.watch(Some(from)).unwrap().backlog;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::Deleted);
    assert_eq!(
        changes[0].object["metadata"]["finalizers"],
        json!(["example.com/hold"])
    );
}

#[test]
fn given_immortal_namespace_when_deleted_then_forbidden() {
    let f = fixture();
    f.namespace("default");
    let err = f.delete("v1", "Namespace", "", "default").unwrap_err();
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
    assert_eq!(f.get_ns("default").unwrap()["status"]["phase"], "Active");
}

#[test]
fn given_crd_with_custom_resources_when_deleted_then_served_until_they_are_gone_and_then_not() {
    let f = fixture();
    f.namespace("shop");
    f.widgets_crd();
    f.widget("shop", "plain", &[]).unwrap();
    f.widget("shop", "held", &["example.com/hold"]).unwrap();

    let marked = f
        .delete(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "widgets.example.com",
        )
        .unwrap();

    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["finalizers"], json!([CRD_FINALIZER]));
    let terminating = condition(&marked, "Terminating");
    assert_eq!(terminating["status"], "True");
    assert_eq!(terminating["reason"], "InstanceDeletionPending");
    assert_eq!(condition(&marked, "Established")["status"], "True");
    assert!(f.cluster.find_type("example.com", "v1", "widgets").is_some());
    let refused = f.widget("shop", "late", &[]).unwrap_err();
    assert_eq!(refused.code, 405);
    assert_eq!(
        refused.message,
        "create not allowed while custom resource definition is terminating"
    );

    assert_eq!(
        sync_crd(&f.cluster, "widgets.example.com"),
        Progress::Waiting { remaining: 1 }
    );
    assert!(f.get("example.com/v1", "Widget", "shop", "plain").is_none());
    assert!(f.get("example.com/v1", "Widget", "shop", "held").is_some());
    let crd = f
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "widgets.example.com",
        )
        .unwrap();
    assert_eq!(
        condition(&crd, "Terminating")["reason"],
        "InstanceDeletionInProgress"
    );
    assert!(f.cluster.find_type("example.com", "v1", "widgets").is_some());

    f.release("example.com/v1", "Widget", "shop", "held");
    assert_eq!(sync_crd(&f.cluster, "widgets.example.com"), Progress::Finalized);

    assert!(
        f.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "widgets.example.com"
        )
        .is_none()
    );
    assert!(f.cluster.find_type("example.com", "v1", "widgets").is_none());
}

#[test]
fn given_terminating_crd_when_its_spec_is_updated_then_the_terminating_condition_stays() {
    let f = fixture();
    f.widgets_crd();
    f.namespace("shop");
    f.widget("shop", "held", &["example.com/hold"]).unwrap();
    f.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        "widgets.example.com",
    )
    .unwrap();
    let rt = f.rt("apiextensions.k8s.io/v1", "CustomResourceDefinition");
    let mut crd = f.cluster.get(&rt, "", "widgets.example.com").unwrap();
    crd["metadata"]["labels"] = json!({"touched": "yes"});
    let updated = f
        .cluster
        .update(&rt, "", "widgets.example.com", crd, Part::Main, &opts())
        .unwrap();
    assert_eq!(condition(&updated, "Terminating")["status"], "True");
    assert!(crd_is_terminating(&updated));
}

#[test]
fn given_changes_then_the_tracker_queues_only_terminating_namespaces_and_crds() {
    let f = fixture();
    f.namespace("live");
    f.namespace("doomed");
    let mut tracker = Tracker::new(Duration::ZERO);
    let from = f.cluster.store.revision();
    f.create(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "live"}}),
    )
    .unwrap();
    f.delete("v1", "Namespace", "", "doomed").unwrap();
    for change in f.cluster.store.watch(Some(from)).unwrap().backlog {
        tracker.observe(&change);
    }
    assert_eq!(tracker.dirty_namespaces.iter().collect::<Vec<_>>(), ["doomed"]);
    assert!(tracker.dirty_crds.is_empty());
    assert_eq!(
        tracker.take_due(Instant::now()),
        (vec!["doomed".to_string()], vec![])
    );
    let mut fresh = Tracker::default();
    fresh.rescan(&f.cluster);
    assert!(fresh.namespaces.contains("doomed") && !fresh.namespaces.contains("live"));
}

#[test]
fn given_namespace_delay_then_a_newly_terminating_namespace_is_held_back_until_due() {
    let f = fixture();
    f.namespace("doomed");
    let from = f.cluster.store.revision();
    f.delete("v1", "Namespace", "", "doomed").unwrap();
    let mut tracker = Tracker::new(Duration::from_secs(5));
    for change in f.cluster.store.watch(Some(from)).unwrap().backlog {
        tracker.observe(&change);
    }
    let now = Instant::now();
    assert!(!tracker.has_work(now));
    assert_eq!(tracker.take_due(now), (vec![], vec![]));
    let due = tracker.next_due().expect("held");
    assert!(due > now + Duration::from_secs(4));
    assert!(tracker.has_work(due));
    assert_eq!(tracker.take_due(due), (vec!["doomed".to_string()], vec![]));
    assert_eq!(tracker.next_due(), None);
}
