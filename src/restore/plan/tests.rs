//! Unit tests of planning and rewriting: order, skips, namespace map, claims.

use serde_json::json;

use super::*;
use crate::backup::{ClusterIdentity, FORMAT_VERSION, Status};
use crate::export::KindCount;

fn manifest() -> Manifest {
    let now = chrono::Utc::now();
    let count = |api_version: &str, kind: &str, restore| KindCount {
        api_version: api_version.into(),
        kind: kind.into(),
        count: 1,
        restore,
    };
    Manifest {
        format_version: FORMAT_VERSION,
        freezeframe_version: "test".into(),
        backup_id: "20260101T000000Z".into(),
        policy: "shop".into(),
        cluster: ClusterIdentity {
            kube_system_uid: "u".into(),
        },
        namespaces: vec!["shop".into()],
        selector: None,
        started_at: now,
        finished_at: now,
        status: Status::Completed,
        objects: BTreeMap::from([
            ("endpoints".into(), count("v1", "Endpoints", RestoreAction::Skip)),
            (
                "configmaps".into(),
                count("v1", "ConfigMap", RestoreAction::Apply),
            ),
        ]),
        cluster_objects: BTreeMap::new(),
        artifacts: BTreeMap::new(),
        problems: vec![],
        hooks: None,
        dumps: vec![],
        volumes: None,
        encryption: None,
    }
}

fn object(path: &str, obj: Value) -> Item {
    Item::read(path, &obj).unwrap()
}

fn ns_obj(api_version: &str, kind: &str, name: &str, extra: Value) -> Value {
    let mut o = json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"name": name, "namespace": "shop"}});
    if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if k == "metadata" {
                for (mk, mv) in v.as_object().unwrap() {
                    o["metadata"][mk] = mv.clone();
                }
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    o
}

fn shop_items() -> Vec<Item> {
    vec![
        object(
            "resources/shop.example.com/v1/carts/shop/c1.yaml",
            ns_obj("shop.example.com/v1", "Cart", "c1", json!({})),
        ),
        object(
            "resources/apps/v1/deployments/shop/web.yaml",
            ns_obj(
                "apps/v1",
                "Deployment",
                "web",
                json!({"metadata": {"labels": {"app": "web"}}}),
            ),
        ),
        object(
            "resources/apps/v1/replicasets/shop/web-abc.yaml",
            ns_obj(
                "apps/v1",
                "ReplicaSet",
                "web-abc",
                json!({"metadata": {"ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "old", "controller": true}]}}),
            ),
        ),
        object(
            "resources/core/v1/pods/shop/web-abc-x.yaml",
            ns_obj(
                "v1",
                "Pod",
                "web-abc-x",
                json!({"metadata": {"ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "old", "controller": true}]}}),
            ),
        ),
        object(
            "resources/core/v1/services/shop/web.yaml",
            ns_obj(
                "v1",
                "Service",
                "web",
                json!({"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}], "selector": {"app": "web"}}}),
            ),
        ),
        object(
            "resources/core/v1/persistentvolumeclaims/shop/data.yaml",
            ns_obj(
                "v1",
                "PersistentVolumeClaim",
                "data",
                json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"volumeName": "pvc-1", "storageClassName": "fast"}}),
            ),
        ),
        object(
            "resources/core/v1/configmaps/shop/kube-root-ca.crt.yaml",
            ns_obj("v1", "ConfigMap", "kube-root-ca.crt", json!({})),
        ),
        object(
            "resources/core/v1/configmaps/shop/web.yaml",
            ns_obj(
                "v1",
                "ConfigMap",
                "web",
                json!({"metadata": {"labels": {"app": "web"}}}),
            ),
        ),
        object(
            "resources/core/v1/endpoints/shop/web.yaml",
            ns_obj("v1", "Endpoints", "web", json!({})),
        ),
        object(
            "resources/core/v1/endpoints/shop/external.yaml",
            ns_obj("v1", "Endpoints", "external", json!({})),
        ),
        object(
            "resources/rbac.authorization.k8s.io/v1/rolebindings/shop/view.yaml",
            ns_obj(
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
                "view",
                json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "viewer"},
                "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "shop"},
                             {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]}),
            ),
        ),
        object(
            "cluster/core/v1/namespaces/shop.yaml",
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}}),
        ),
        object(
            "cluster/core/v1/persistentvolumes/pvc-1.yaml",
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": "pvc-1", "annotations": {"pv.kubernetes.io/provisioned-by": "csi"}},
                   "spec": {"storageClassName": "fast"}}),
        ),
        object(
            "cluster/storage.k8s.io/v1/storageclasses/fast.yaml",
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}}),
        ),
        object(
            "cluster/rbac.authorization.k8s.io/v1/clusterroles/viewer.yaml",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "viewer"}}),
        ),
        object(
            "cluster/rbac.authorization.k8s.io/v1/clusterroles/unrelated.yaml",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "unrelated"}}),
        ),
        object(
            "cluster/apiextensions.k8s.io/v1/customresourcedefinitions/carts.shop.example.com.yaml",
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": "carts.shop.example.com"}}),
        ),
    ]
}

fn actions(plan: &Plan) -> Vec<(String, String, String)> {
    plan.steps
        .iter()
        .map(|s| {
            let action = match &s.action {
                Action::Skip(r) => format!("skip {r}"),
                a => format!("{a:?}"),
            };
            (s.kind.clone(), s.display_name(), action)
        })
        .collect()
}

#[test]
fn given_shop_objects_when_planned_then_dependency_order_and_skips_are_as_documented() {
    let plan = plan_items(
        shop_items(),
        &manifest(),
        &Snapshots::new(),
        &PlanOptions::default(),
    )
    .unwrap();
    let got = actions(&plan);
    let expected: Vec<(&str, &str, &str)> = vec![
        (
            "customresourcedefinitions.apiextensions.k8s.io",
            "carts.shop.example.com",
            "Ensure",
        ),
        ("namespaces", "shop", "Ensure"),
        (
            "clusterroles.rbac.authorization.k8s.io",
            "unrelated",
            "skip not needed",
        ),
        ("clusterroles.rbac.authorization.k8s.io", "viewer", "Ensure"),
        ("persistentvolumes", "pvc-1", "skip volume re-provisioned"),
        ("storageclasses.storage.k8s.io", "fast", "Ensure"),
        ("configmaps", "shop/kube-root-ca.crt", "skip made by the cluster"),
        ("configmaps", "shop/web", "Create"),
        ("rolebindings.rbac.authorization.k8s.io", "shop/view", "Create"),
        ("persistentvolumeclaims", "shop/data", "Create"),
        ("services", "shop/web", "Create"),
        ("deployments.apps", "shop/web", "Create"),
        ("replicasets.apps", "shop/web-abc", "skip owned by Deployment web"),
        ("pods", "shop/web-abc-x", "skip owned by ReplicaSet web-abc"),
        ("endpoints", "shop/external", "Create"),
        ("endpoints", "shop/web", "skip derived"),
        ("carts.shop.example.com", "shop/c1", "Create"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .into_iter()
        .map(|(a, b, c)| (a.into(), b.into(), c.into()))
        .collect();
    assert_eq!(got, expected);
    let claim = plan
        .steps
        .iter()
        .find(|s| s.kind == "persistentvolumeclaims")
        .unwrap();
    assert_eq!(claim.claim, Claim::Reprovision);
}

#[test]
fn given_namespace_map_when_rewritten_then_namespace_subjects_and_namespace_object_are_mapped() {
    let options = PlanOptions {
        namespace_map: PlanOptions::parse_namespace_map(&["shop=shop-dr".into()]).unwrap(),
        ..Default::default()
    };
    let items = shop_items();
    let plan = plan_items(items.clone(), &manifest(), &Snapshots::new(), &options).unwrap();
    let step = |kind: &str| plan.steps.iter().find(|s| s.kind == kind).unwrap();
    let binding = items.iter().find(|i| i.kind.starts_with("rolebindings")).unwrap();
    let obj = ns_obj(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        &binding.name,
        json!({
        "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "shop"},
                     {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]}),
    );
    let out = rewrite(&plan, step("rolebindings.rbac.authorization.k8s.io"), obj);
    assert_eq!(out["metadata"]["namespace"], "shop-dr");
    assert_eq!(out["subjects"][0]["namespace"], "shop-dr");
    assert_eq!(
        out["subjects"][1]["namespace"], "tools",
        "other namespaces are left"
    );

    let ns = rewrite(
        &plan,
        step("namespaces"),
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}}),
    );
    assert_eq!(ns["metadata"]["name"], "shop-dr");
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "shop-dr");

    let svc = rewrite(
        &plan,
        step("services"),
        ns_obj(
            "v1",
            "Service",
            "web",
            json!({"spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80}]}}),
        ),
    );
    assert!(svc["spec"].get("clusterIP").is_none() && svc["spec"].get("clusterIPs").is_none());

    let pvc = rewrite(
        &plan,
        step("persistentvolumeclaims"),
        ns_obj(
            "v1",
            "PersistentVolumeClaim",
            "data",
            json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes", "keep": "me"}},
               "spec": {"volumeName": "pvc-1", "storageClassName": "fast"}}),
        ),
    );
    assert!(pvc["spec"].get("volumeName").is_none());
    assert_eq!(pvc["metadata"]["annotations"], json!({"keep": "me"}));
}

#[test]
fn given_unknown_source_namespace_or_bad_pair_then_options_are_refused() {
    let options = PlanOptions {
        namespace_map: PlanOptions::parse_namespace_map(&["other=x".into()]).unwrap(),
        ..Default::default()
    };
    assert!(plan_items(shop_items(), &manifest(), &Snapshots::new(), &options).is_err());
    assert!(PlanOptions::parse_namespace_map(&["shop".into()]).is_err());
    assert!(PlanOptions::parse_namespace_map(&["shop=Bad_Name".into()]).is_err());
}

#[test]
fn given_include_and_selector_then_others_are_skipped_but_needed_namespace_is_ensured() {
    let options = PlanOptions {
        include: vec!["configmaps".into(), "deployments".into()],
        selector: Some("app=web".into()),
        ..Default::default()
    };
    let plan = plan_items(shop_items(), &manifest(), &Snapshots::new(), &options).unwrap();
    let applied: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.is_applied())
        .map(|s| format!("{} {}", s.kind, s.display_name()))
        .collect();
    assert_eq!(
        applied,
        [
            "namespaces shop",
            "configmaps shop/web",
            "deployments.apps shop/web"
        ]
    );
    let cart = plan
        .steps
        .iter()
        .find(|s| s.kind == "carts.shop.example.com")
        .unwrap();
    assert_eq!(cart.action, Action::Skip(SkipReason::Excluded));
}

#[test]
fn given_static_volume_then_it_is_ensured_with_claim_ref_mapped_and_claim_keeps_it() {
    let mut items = shop_items();
    items.retain(|i| i.kind != VOLUMES);
    items.push(object(
        "cluster/core/v1/persistentvolumes/pvc-1.yaml",
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-1"},
               "spec": {"storageClassName": "fast"}}),
    ));
    let options = PlanOptions {
        namespace_map: BTreeMap::from([("shop".into(), "b".into())]),
        ..Default::default()
    };
    let plan = plan_items(items, &manifest(), &Snapshots::new(), &options).unwrap();
    let pv = plan.steps.iter().find(|s| s.kind == VOLUMES).unwrap();
    assert_eq!(pv.action, Action::Ensure);
    let claim = plan
        .steps
        .iter()
        .find(|s| s.kind == "persistentvolumeclaims")
        .unwrap();
    assert_eq!(claim.claim, Claim::Keep);
    let out = rewrite(
        &plan,
        pv,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pvc-1"},
        "spec": {"claimRef": {"namespace": "shop", "name": "data", "uid": "old", "resourceVersion": "3"}}}),
    );
    assert_eq!(out["spec"]["claimRef"], json!({"namespace": "b", "name": "data"}));
}

#[test]
fn given_a_recorded_snapshot_then_claim_is_restored_from_it() {
    let snaps =
        super::volumes::parse(br#"[{"namespace": "shop", "pvc": "data", "volumeSnapshot": "snap-1"}]"#);
    let plan = plan_items(shop_items(), &manifest(), &snaps, &PlanOptions::default()).unwrap();
    let claim = plan
        .steps
        .iter()
        .find(|s| s.kind == "persistentvolumeclaims")
        .unwrap();
    let out = rewrite(
        &plan,
        claim,
        ns_obj(
            "v1",
            "PersistentVolumeClaim",
            "data",
            json!({"spec": {"volumeName": "pvc-1"}}),
        ),
    );
    assert_eq!(
        out["spec"]["dataSource"],
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap-1"})
    );
    assert!(out["spec"].get("volumeName").is_none());
}

#[test]
fn given_job_with_generated_selector_when_rewritten_then_selector_and_uid_labels_go() {
    let plan = plan_items(
        vec![object(
            "resources/batch/v1/jobs/shop/migrate.yaml",
            ns_obj("batch/v1", "Job", "migrate", json!({})),
        )],
        &manifest(),
        &Snapshots::new(),
        &PlanOptions::default(),
    )
    .unwrap();
    let job = ns_obj(
        "batch/v1",
        "Job",
        "migrate",
        json!({"spec": {
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "old"}},
        "template": {"metadata": {"labels": {"controller-uid": "old", "batch.kubernetes.io/controller-uid": "old",
                                              "job-name": "migrate"}}}}}),
    );
    let out = rewrite(&plan, &plan.steps[0], job);
    assert!(out["spec"].get("selector").is_none());
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"],
        json!({"job-name": "migrate"})
    );
}

#[test]
fn given_object_whose_metadata_disagrees_with_its_path_then_it_is_refused() {
    let obj = ns_obj("v1", "ConfigMap", "other", json!({}));
    assert!(Item::read("resources/core/v1/configmaps/shop/web.yaml", &obj).is_err());
    let obj = ns_obj("v1", "ConfigMap", "web", json!({}));
    assert!(Item::read("resources/core/v1/configmaps/elsewhere/web.yaml", &obj).is_err());
}

#[test]
fn given_claims_when_rewritten_then_binding_annotations_go_and_volume_name_follows_the_claim_choice() {
    let plan = plan_items(
        shop_items(),
        &manifest(),
        &Snapshots::new(),
        &PlanOptions::default(),
    )
    .unwrap();
    let mut claim = plan
        .steps
        .iter()
        .find(|s| s.kind == "persistentvolumeclaims")
        .unwrap()
        .clone();
    assert_eq!(claim.volume.as_deref(), Some("pvc-1"));
    let archived = ns_obj(
        "v1",
        "PersistentVolumeClaim",
        "data",
        json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                            "pv.kubernetes.io/bound-by-controller": "yes",
                                            "team": "shop"}},
               "spec": {"volumeName": "pvc-1",
                        "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
    );
    for (choice, volume_name, data_source) in [
        (Claim::Keep, Some("pvc-1"), true),
        (Claim::Rebind("pvc-1".into()), Some("pvc-1"), false),
        (Claim::Reprovision, None, false),
    ] {
        claim.claim = choice.clone();
        let out = rewrite(&plan, &claim, archived.clone());
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"team": "shop"}),
            "{choice:?}: a claim arriving with bind-completed on a pre-bound volume would be Lost"
        );
        assert_eq!(out["spec"]["volumeName"].as_str(), volume_name, "{choice:?}");
        assert_eq!(out["spec"].get("dataSource").is_some(), data_source, "{choice:?}");
    }
    assert_eq!(
        Claim::Rebind("pvc-1".into()).to_string(),
        "re-bind released volume pvc-1"
    );
}

#[test]
fn given_snapshots_made_by_freezeframe_then_skipped_and_other_snapshots_restored() {
    let snapshot = |name: &str, labels: Value| {
        object(
            &format!("resources/snapshot.storage.k8s.io/v1/volumesnapshots/shop/{name}.yaml"),
            ns_obj(
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshot",
                name,
                json!({"metadata": {"labels": labels}, "spec": {"source": {"persistentVolumeClaimName": "data"}}}),
            ),
        )
    };
    let items = vec![
        snapshot(
            "data-ff-1",
            json!({"freezeframe.dev/policy": "shop", "freezeframe.dev/backup-id": "1"}),
        ),
        snapshot("freezeframe-data", json!({"freezeframe.dev/restored": "true"})),
        snapshot("manual", json!({"team": "shop"})),
    ];
    let plan = plan_items(items, &manifest(), &Snapshots::new(), &PlanOptions::default()).unwrap();
    let action = |name: &str| plan.steps.iter().find(|s| s.name == name).unwrap().action.clone();
    assert_eq!(action("data-ff-1"), Action::Skip(SkipReason::FreezeframeSnapshot));
    assert_eq!(
        action("freezeframe-data"),
        Action::Skip(SkipReason::FreezeframeSnapshot)
    );
    assert_eq!(action("manual"), Action::Create);
}
