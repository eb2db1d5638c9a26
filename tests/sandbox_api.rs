//! The sandbox as kube-rs sees it: discovery, lists, watches, exec, concurrency, lifecycle, controllers.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret};
use kube::api::{
    Api, AttachParams, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, Scope};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use freezeframe_sandbox::{Fault, Sandbox, SandboxOptions};

use crate::harness::{DELETION_TIMEOUT, crd_api, wait_until_gone};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn sandbox() -> (Sandbox, Client) {
    let sb = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts");
    let client = sb.client().await.expect("client from the written kubeconfig");
    (sb, client)
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
}

fn configmap(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn crd(group: &str, kind: &str, plural: &str, scope: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": scope,
                 "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    })
}

#[tokio::test]
async fn given_sandbox_when_discovery_runs_then_builtins_and_crd_kinds_are_found_with_scope() {
    let (_sb, client) = sandbox().await;
    let obj: DynamicObject =
        serde_json::from_value(crd("example.com", "Widget", "widgets", "Cluster")).unwrap();
    crd_api(&client)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();

    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "StatefulSet"))
        .expect("sts");
    assert_eq!(ar.plural, "statefulsets");
    assert_eq!(caps.scope, Scope::Namespaced);
    let (_, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("crd kind");
    assert_eq!(caps.scope, Scope::Cluster);
    let (_, pod_caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Pod"))
        .unwrap();
    assert!(
        pod_caps
            .subresources
            .iter()
            .any(|(sr, _)| sr.plural == "pods/exec" || sr.plural == "exec")
    );

    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    assert!(
        aggregated
            .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
            .is_some()
    );
    assert!(
        aggregated
            .resolve_gvk(&GroupVersionKind::gvk(
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshot"
            ))
            .is_some()
    );

    crd_api(&client)
        .delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    wait_until_gone(&crd_api(&client), "widgets.example.com", DELETION_TIMEOUT)
        .await
        .unwrap();
    let after = Discovery::new(client.clone()).run().await.unwrap();
    assert!(
        after
            .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
            .is_none(),
        "deleted CRD still served"
    );
}

#[tokio::test]
async fn given_more_objects_than_limit_when_listing_dynamic_then_pages_are_complete_and_consistent() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "pages").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "pages");
    for i in 0..25 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("cm-{i:02}"), json!({"batch": "a"})),
        )
        .await
        .unwrap();
    }
    let ar = ApiResource::erase::<ConfigMap>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), "pages", &ar);
    let mut names = Vec::new();
    let mut params = ListParams::default().labels("batch=a").limit(10);
    let mut pages = 0;
    loop {
        let page = dynamic.list(&params).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|o| o.name_any()));
        if pages == 1 {
            // Written after the first page: a consistent list does not show it.
            cms.create(
                &PostParams::default(),
                &configmap("cm-late", json!({"batch": "a"})),
            )
            .await
            .unwrap();
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 25);
    assert!(!names.contains(&"cm-late".to_string()));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "lists come back in key order");
}

#[tokio::test]
async fn given_compacted_store_when_continuing_list_then_410_expired() {
    let (sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &configmap(&format!("c{i}"), json!({})))
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.clone().expect("more pages");
    assert!(first.metadata.remaining_item_count.is_some_and(|n| n >= 3));
    cms.create(&PostParams::default(), &configmap("later", json!({})))
        .await
        .unwrap();
    sb.cluster().store.compact();
    let err = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn given_watcher_when_objects_change_then_add_modify_delete_are_seen() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "watched").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "watched");
    let mut stream = watcher(cms.clone(), watcher::Config::default().labels("w=yes")).boxed();
    // The initial list completes first.
    loop {
        match tokio::time::timeout(TIMEOUT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitDone) => break,
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    }
    cms.create(&PostParams::default(), &configmap("x", json!({"w": "yes"})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &configmap("ignored", json!({"w": "no"})))
        .await
        .unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .unwrap();
    cms.delete("x", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(TIMEOUT, stream.try_next())
            .await
            .expect("event in time")
            .unwrap()
        {
            Some(watcher::Event::Apply(cm)) => seen.push(format!(
                "apply {} {}",
                cm.name_any(),
                cm.data.unwrap_or_default()["k"]
            )),
            Some(watcher::Event::Delete(cm)) => seen.push(format!("delete {}", cm.name_any())),
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    assert_eq!(seen, vec!["apply x v", "apply x changed", "delete x"]);
}

#[tokio::test]
async fn given_watch_from_compacted_revision_then_410_gone_event_and_watcher_relists() {
    let (sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &configmap("old", json!({})))
        .await
        .unwrap();
    let rv = created.resource_version().unwrap();
    cms.create(&PostParams::default(), &configmap("newer", json!({})))
        .await
        .unwrap();
    sb.cluster().store.compact();
    let mut events = cms
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(TIMEOUT, events.next()).await.unwrap() {
        Some(Ok(kube::api::WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn given_bookmarks_allowed_when_watching_then_bookmarks_carry_resource_versions() {
    let sb = Sandbox::start(SandboxOptions {
        bookmark_interval: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sb.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut events = cms
        .watch(
            &kube::api::WatchParams {
                bookmarks: true,
                ..Default::default()
            },
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(TIMEOUT, events.next()).await.unwrap() {
        Some(Ok(kube::api::WatchEvent::Bookmark(b))) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn given_stale_resource_version_when_updating_then_409_conflict() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &configmap("cc", json!({})))
        .await
        .unwrap();
    let mut a = first.clone();
    a.data = Some([("k".to_string(), "a".to_string())].into());
    let updated = cms.replace("cc", &PostParams::default(), &a).await.unwrap();
    assert_ne!(updated.resource_version(), first.resource_version());
    let mut stale = first.clone();
    stale.data = Some([("k".to_string(), "b".to_string())].into());
    match cms
        .replace("cc", &PostParams::default(), &stale)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("expected conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn given_errors_then_status_reason_and_code_match_the_api_server() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let nf = cms.get("missing").await.unwrap_err();
    assert!(
        matches!(&nf, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound" && s.message == "configmaps \"missing\" not found")
    );
    cms.create(&PostParams::default(), &configmap("dup", json!({})))
        .await
        .unwrap();
    let dup = cms
        .create(&PostParams::default(), &configmap("dup", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(&dup, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));
    let bad = cms
        .create(&PostParams::default(), &configmap("Bad_Name", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, kube::Error::Api(s) if s.code == 422 && s.reason == "Invalid"),
        "{bad:?}"
    );
    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let no_ns = elsewhere
        .create(&PostParams::default(), &configmap("x", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&no_ns, kube::Error::Api(s) if s.code == 404 && s.message == "namespaces \"nowhere\" not found")
    );
    let bad_sel = cms
        .list(&ListParams::default().labels("a in (b"))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad_sel, kube::Error::Api(s) if s.code == 400 && s.reason == "BadRequest"),
        "{bad_sel:?}"
    );
    let bad_field = cms
        .list(&ListParams::default().fields("data.k=v"))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad_field, kube::Error::Api(s) if s.code == 400 && s.message.contains("field label not supported"))
    );
}

#[tokio::test]
async fn given_injected_throttling_when_listing_then_429_with_retry_after() {
    let (sb, client) = sandbox().await;
    sb.cluster().inject_fault(Fault {
        verb: Some("list".into()),
        resource: Some("configmaps".into()),
        name: None,
        error: freezeframe_sandbox::ApiError::too_many_requests(2),
        times: 1,
    });
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/namespaces/default/configmaps", sb.url()))
        .bearer_auth(sb.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    assert!(cms.list(&ListParams::default()).await.is_ok(), "fault is used up");
}

#[tokio::test]
async fn given_label_and_field_selectors_when_listing_then_all_operators_filter() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "sel").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "sel");
    for (n, labels) in [
        ("a", json!({"app": "db", "tier": "1"})),
        ("b", json!({"app": "web", "tier": "2"})),
        ("c", json!({"app": "cache"})),
    ] {
        cms.create(&PostParams::default(), &configmap(n, labels))
            .await
            .unwrap();
    }
    let names =
        |l: kube::core::ObjectList<ConfigMap>| l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app in (db,web)"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app notin (db),app"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("!tier")).await.unwrap()),
        ["c", "kube-root-ca.crt"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("tier>1")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app!=db,tier"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    let in_sel = all
        .list(&ListParams::default().fields("metadata.namespace=sel,metadata.name!=a"))
        .await
        .unwrap();
    assert_eq!(names(in_sel), ["b", "c", "kube-root-ca.crt"]);
}

#[tokio::test]
async fn given_set_based_edges_when_listing_then_notin_empty_and_does_not_exist_filter() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "edges").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "edges");
    for (n, labels) in [
        ("a", json!({"env": "", "tier": "x"})),
        ("b", json!({"env": "prod"})),
        ("c", json!({"tier": "y"})),
    ] {
        cms.create(&PostParams::default(), &configmap(n, labels))
            .await
            .unwrap();
    }
    let names =
        |l: kube::core::ObjectList<ConfigMap>| l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    // `()` is the set {""}: `notin ()` drops only objects whose label is empty.
    let notin_empty = cms
        .list(&ListParams::default().labels("env notin ()"))
        .await
        .unwrap();
    assert_eq!(names(notin_empty), ["b", "c", "kube-root-ca.crt"]);
    let in_two = cms
        .list(&ListParams::default().labels("tier in (x,y),!env"))
        .await
        .unwrap();
    assert_eq!(names(in_two), ["c"]);
}

#[tokio::test]
async fn given_malformed_label_selector_when_listing_then_bad_request_message_is_the_label_parsers() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    // Pinned byte for byte, as apimachinery's labels.Parse words them (a real API server returns them
    // as they are: "unable to parse requirement: ..." once, for errors inside a requirement).
    for (selector, want) in [
        (
            "a in (b",
            "unable to parse requirement: found '', expected: ',' or ')'",
        ),
        ("a,", "found '', expected: identifier after ','"),
        (
            "x>a",
            "unable to parse requirement: values[0]: Invalid value: \"a\": \
             for 'Gt', 'Lt' operators, the value must be an integer",
        ),
    ] {
        let err = cms
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"), "{selector:?}");
                assert_eq!(s.message, want, "{selector:?}");
            }
            other => panic!("{selector:?}: {other:?}"),
        }
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": "busybox"}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn given_deployment_when_created_scaled_and_deleted_then_replicaset_and_pods_follow() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "apps").await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "apps");
    let d = deploys
        .create(&PostParams::default(), &deployment("web", 3))
        .await
        .unwrap();
    let rs_list = rss.list(&ListParams::default()).await.unwrap();
    assert_eq!(rs_list.items.len(), 1);
    let rs = &rs_list.items[0];
    let owner = &rs.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Deployment", d.uid().unwrap().as_str(), Some(true))
    );
    let hash = rs.labels()["pod-template-hash"].clone();
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    let listed = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
    assert_eq!(listed.items.len(), 3);
    for p in &listed.items {
        assert!(p.name_any().starts_with(&format!("web-{hash}-")));
        assert_eq!(p.labels()["pod-template-hash"], hash);
        assert_eq!(p.owner_references()[0].kind, "ReplicaSet");
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(running.items.len(), 3);
    let status = deploys.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.ready_replicas, Some(3));

    // A deleted pod is replaced; scaling changes the count.
    pods.delete(&listed.items[0].name_any(), &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 3);
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let scale = deploys.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));

    deploys.delete("web", &DeleteParams::background()).await.unwrap();
    assert!(
        rss.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "GC removes the ReplicaSet"
    );
    assert!(
        pods.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "GC removes the pods"
    );
}

#[tokio::test]
async fn given_statefulset_with_claim_templates_then_ordinal_pods_get_bound_claims() {
    let (sb, client) = sandbox().await;
    namespace(&client, "db").await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "db");
    let s: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "cass"},
        "spec": {"replicas": 3, "serviceName": "cass", "selector": {"matchLabels": {"app": "cassandra"}},
                 "template": {"metadata": {"labels": {"app": "cassandra"}},
                              "spec": {"containers": [{"name": "cassandra", "image": "cassandra:5",
                                       "volumeMounts": [{"name": "data", "mountPath": "/var/lib/cassandra"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))
    .unwrap();
    sts.create(&PostParams::default(), &s).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "db");
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names, ["cass-0", "cass-1", "cass-2"]);
    let pod = pods.get("cass-1").await.unwrap();
    assert_eq!(pod.labels()["statefulset.kubernetes.io/pod-name"], "cass-1");
    assert_eq!(pod.labels()["apps.kubernetes.io/pod-index"], "1");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "db");
    let claim = claims.get("data-cass-1").await.unwrap();
    assert_eq!(claim.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(claim.labels()["app"], "cassandra");
    // The claim's volume is the pod's mount path inside its exec directory.
    let mounted = sb.state_dir().join("pods/db/cass-1/var/lib/cassandra");
    std::fs::write(mounted.join("sstable"), b"rows").unwrap();
    let pv = claim.spec.unwrap().volume_name.unwrap();
    assert_eq!(
        std::fs::read(sb.state_dir().join("volumes").join(pv).join("sstable")).unwrap(),
        b"rows"
    );

    sts.patch(
        "cass",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names, ["cass-0"]);
    assert_eq!(
        claims.list(&ListParams::default()).await.unwrap().items.len(),
        3,
        "scale-down keeps claims"
    );
}

#[tokio::test]
async fn given_namespace_with_pods_when_deleted_then_it_is_terminating_then_gone_with_its_content() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "doomed").await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "doomed");
    deploys
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "doomed");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap();
    claims.create(&PostParams::default(), &pvc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 2);
    let nss: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        nss.get("doomed").await.unwrap().spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );

    let started = std::time::Instant::now();
    let answer = nss.delete("doomed", &DeleteParams::default()).await.unwrap();

    let marked = answer
        .left()
        .expect("the DELETE answers with the namespace itself");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(
        marked.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    wait_until_gone(&nss, "doomed", DELETION_TIMEOUT).await.unwrap();
    let took = started.elapsed();
    assert!(
        pods.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "the namespace controller deleted its pods"
    );
    assert!(
        claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    assert!(
        pvs.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "reclaim policy Delete"
    );
    assert!(
        took < Duration::from_secs(5),
        "the namespace controller acts promptly (took {took:?})"
    );
}

#[tokio::test]
async fn given_terminating_namespace_when_creating_then_refused_with_the_namespace_lifecycle_status() {
    let (sb, client) = sandbox().await;
    namespace(&client, "ending").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ending");
    let held: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}))
            .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("ending", &DeleteParams::default()).await.unwrap();

    let refused = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/ending/configmaps", sb.url()))
        .bearer_auth(sb.admin_token())
        .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "late-"}}))
        .send()
        .await
        .unwrap();

    assert_eq!(refused.status(), 403);
    let status: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "configmaps \"late-\" is forbidden: unable to create new content in namespace ending because it is being terminated"
    );
    assert_eq!(
        status["details"],
        json!({"name": "late-", "kind": "configmaps", "causes": [{"reason": "NamespaceTerminating",
            "message": "namespace ending is being terminated", "field": "metadata.namespace"}]})
    );
    let reported = |ns: Option<&Namespace>| {
        ns.and_then(|n| n.status.as_ref()?.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "NamespaceFinalizersRemaining")
    };
    let ns = tokio::time::timeout(
        TIMEOUT,
        kube::runtime::wait::await_condition(nss.clone(), "ending", move |n: Option<&Namespace>| {
            reported(n).is_some()
        }),
    )
    .await
    .expect("the controller reports what holds the namespace")
    .unwrap();
    let remaining = reported(ns.as_ref()).unwrap();
    assert_eq!(remaining.status, "True");
    assert_eq!(
        remaining.message.as_deref(),
        Some(
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        )
    );
    let again = nss.delete("ending", &DeleteParams::default()).await.unwrap();
    assert!(
        again
            .left()
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some()),
        "deleting a Terminating namespace again is answered with it"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_until_gone(&nss, "ending", DELETION_TIMEOUT).await.unwrap();
}

#[tokio::test]
async fn given_namespace_watch_when_namespace_is_deleted_then_modified_terminating_then_deleted() {
    let (_sb, client) = sandbox().await;
    namespace(&client, "watched").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let rv = nss
        .get("watched")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = nss
        .watch(&WatchParams::default().fields("metadata.name=watched"), &rv)
        .await
        .unwrap()
        .boxed();

    nss.delete("watched", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(TIMEOUT, events.next())
            .await
            .expect("the namespace goes")
            .expect("stream open")
            .unwrap();
        match event {
            WatchEvent::Modified(n) => {
                seen.push(("MODIFIED", n.status.and_then(|s| s.phase).unwrap_or_default()))
            }
            WatchEvent::Deleted(n) => {
                seen.push(("DELETED", n.status.and_then(|s| s.phase).unwrap_or_default()));
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.first(), Some(&("MODIFIED", "Terminating".to_string())));
    assert_eq!(seen.last(), Some(&("DELETED", "Terminating".to_string())));
    assert!(seen.iter().all(|(_, phase)| phase == "Terminating"), "{seen:?}");
}

#[tokio::test]
async fn given_crd_with_custom_resources_when_deleted_then_they_go_then_the_crd_then_its_discovery_entry() {
    let (_sb, client) = sandbox().await;
    let obj: DynamicObject =
        serde_json::from_value(crd("example.com", "Widget", "widgets", "Namespaced")).unwrap();
    crd_api(&client)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let widget = |name: &str, finalizers: &[&str]| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": name, "finalizers": finalizers}}))
        .unwrap()
    };
    widgets
        .create(&PostParams::default(), &widget("plain", &[]))
        .await
        .unwrap();
    widgets
        .create(&PostParams::default(), &widget("held", &["example.com/hold"]))
        .await
        .unwrap();

    crd_api(&client)
        .delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();

    wait_until_gone(&widgets, "plain", DELETION_TIMEOUT)
        .await
        .unwrap();
    let held = widgets.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "the finalizer deleted it"
    );
    let crd = crd_api(&client).get("widgets.example.com").await.unwrap();
    assert_eq!(
        crd.metadata.finalizers,
        Some(vec!["customresourcecleanup.apiextensions.k8s.io".to_string()])
    );
    let terminating = crd.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Terminating")
        .cloned()
        .unwrap();
    assert_eq!(terminating["status"], "True");
    let served = Discovery::new(client.clone()).run().await.unwrap();
    assert!(
        served
            .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
            .is_some(),
        "served while the CRD is terminating"
    );
    let refused = widgets
        .create(&PostParams::default(), &widget("late", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 405 && s.reason == "MethodNotAllowed"
            && s.message == "create not allowed while custom resource definition is terminating"),
        "{refused:?}"
    );

    widgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_until_gone(&crd_api(&client), "widgets.example.com", DELETION_TIMEOUT)
        .await
        .unwrap();
    let after = Discovery::new(client.clone()).run().await.unwrap();
    assert!(
        after
            .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
            .is_none(),
        "a removed CRD's kind is no longer served"
    );
}

#[tokio::test]
async fn given_status_subresource_then_main_writes_ignore_status_and_status_writes_only_status() {
    let (_sb, client) = sandbox().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("s", 1))
        .await
        .unwrap();
    let before = deploys.get("s").await.unwrap();
    assert_eq!(before.metadata.generation, Some(1));
    deploys
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 42}, "metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    let after = deploys.get("s").await.unwrap();
    assert_eq!(after.status.as_ref().unwrap().ready_replicas, Some(1));
    assert_eq!(after.labels()["x"], "y");
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "metadata changes do not bump generation"
    );
    deploys
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"collisionCount": 7}, "spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    let st = deploys.get("s").await.unwrap();
    assert_eq!(st.status.unwrap().collision_count, Some(7));
    assert_eq!(st.spec.replicas, Some(1));
    deploys
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minReadySeconds": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(deploys.get("s").await.unwrap().metadata.generation, Some(2));
}

#[tokio::test]
async fn given_generate_name_and_deletecollection_then_names_are_generated_and_selected_objects_deleted() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "run-", "labels": {"gen": "1"}}}))
            .unwrap();
    let a = cms.create(&PostParams::default(), &cm).await.unwrap();
    let b = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(a.name_any().starts_with("run-") && a.name_any().len() == 9);
    assert_ne!(a.name_any(), b.name_any());
    assert!(a.uid().is_some() && a.creation_timestamp().is_some());
    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("gen=1"))
        .await
        .unwrap();
    assert!(
        cms.list(&ListParams::default().labels("gen=1"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        cms.get("kube-root-ca.crt").await.is_ok(),
        "unselected objects stay"
    );
}

#[tokio::test]
async fn given_finalizer_when_deleted_then_object_waits_until_finalizer_removed() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(matches!(cms.get("held").await.unwrap_err(), kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn given_running_pod_when_exec_then_stdout_and_exit_status_reach_kube_rs() {
    let (_sb, client) = sandbox().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "sh"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let (text, s) = exec_output(&pods, "sh", "echo $POD_NAME/$POD_NAMESPACE/$CONTAINER_NAME").await;
    assert_eq!(text, "sh/default/main\n");
    assert_eq!(s.status.as_deref(), Some("Success"));

    let (text, s) = exec_output(&pods, "sh", "echo out; exit 4").await;
    assert_eq!(text, "out\n");
    assert_eq!(s.reason.as_deref(), Some("NonZeroExitCode"));
    let code = s.details.unwrap().causes.unwrap()[0].message.clone();
    assert_eq!(code.as_deref(), Some("4"));
}

/// Run `sh -c script` in a pod; return its stdout and the exec status.
async fn exec_output(
    pods: &Api<Pod>,
    pod: &str,
    script: &str,
) -> (String, k8s_openapi::apimachinery::pkg::apis::meta::v1::Status) {
    let mut proc = pods
        .exec(pod, ["sh", "-c", script], &AttachParams::default().stderr(false))
        .await
        .unwrap();
    let mut stdout = proc.stdout().unwrap();
    let status = proc.take_status().unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
        .await
        .unwrap();
    let status = tokio::time::timeout(TIMEOUT, status).await.unwrap().unwrap();
    (text, status)
}

#[tokio::test]
async fn given_pending_pod_when_exec_then_error_like_a_real_server() {
    let (_sb, client) = sandbox().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "waiting",
        "annotations": {"sandbox.freezeframe.dev/phase": "Pending"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(
        pods.get("waiting")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending")
    );
    let err = pods
        .exec("waiting", ["true"], &AttachParams::default())
        .await
        .err()
        .expect("exec refused");
    assert!(
        matches!(err, kube::Error::Api(s) if s.code == 400),
        "pending pod has no host"
    );
}

#[tokio::test]
async fn given_terminating_namespace_or_wrong_method_then_forbidden_and_method_not_allowed() {
    let (sb, client) = sandbox().await;
    namespace(&client, "ending").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ending");
    let held: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}))
            .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("ending", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("ending").await.unwrap();
    assert_eq!(
        ns.status.unwrap().phase.as_deref(),
        Some("Terminating"),
        "held by the finalizer"
    );
    let refused = cms
        .create(&PostParams::default(), &configmap("late", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403 && s.reason == "Forbidden" && s.message == "configmaps \"late\" is forbidden: unable to create new content in namespace ending because it is being terminated"),
        "{refused:?}"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_until_gone(&nss, "ending", DELETION_TIMEOUT).await.unwrap();

    let http = reqwest::Client::new();
    let put_collection = http
        .put(format!("{}/api/v1/namespaces/default/configmaps", sb.url()))
        .bearer_auth(sb.admin_token())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put_collection.status(), 405);
    let status: serde_json::Value = put_collection.json().await.unwrap();
    assert_eq!(status["reason"], "MethodNotAllowed");
}

#[tokio::test]
async fn given_secret_with_string_data_when_created_or_replaced_then_it_is_stored_base64_in_data() {
    let (_sb, client) = sandbox().await;
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hmac"},
        "data": {"kept": "a2VwdA==", "key": "b2xk"},
        "stringData": {"key": "s3cret"}
    }))
    .unwrap();
    let created = secrets.create(&PostParams::default(), &secret).await.unwrap();
    let text = |s: &Secret, key: &str| String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap();
    assert_eq!(text(&created, "key"), "s3cret", "stringData wins over data");
    assert_eq!(text(&created, "kept"), "kept");
    assert!(created.string_data.is_none(), "stringData is write-only");
    let read = secrets.get("hmac").await.unwrap();
    assert_eq!(text(&read, "key"), "s3cret");

    let mut changed = read.clone();
    changed.string_data = Some([("key".to_string(), "rotated".to_string())].into());
    let replaced = secrets
        .replace("hmac", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(text(&replaced, "key"), "rotated");
    assert!(replaced.string_data.is_none());
}
