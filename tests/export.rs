//! Export and the object store end to end: the shop namespace (26+ kinds) exported to a directory and to
//! SeaweedFS, pagination, failures that must leave no manifest, and the closure of selected pods.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use freezeframe::backup::{self, Context, Manifest, Status};
use freezeframe::clock::ManualClock;
use freezeframe::export::{ExportOptions, ResourceFilter, Selection};
use freezeframe::store::fs::FsStore;
use freezeframe::store::s3::{MIN_PART_SIZE, S3Store};
use freezeframe::store::{self, BackupId, ByteReader, Layout, ObjectInfo, ObjectStore, Written};
use freezeframe_sandbox::cluster::RandomFaults;
use freezeframe_sandbox::{ApiError, Fault};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{ApiResource, Discovery, Scope, verbs};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::harness::TestEnv;

const SHOP: &str = include_str!("fixtures/shop.yaml");

/// Kinds the shop fixture lacks, so that one namespace holds more than 25 kinds; a RoleBinding to a
/// ClusterRole makes the ClusterRole a cluster-scoped dependency.
const SHOP_EXTRAS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: runner, namespace: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: shop}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: runner, namespace: shop}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: shop-viewer}
rules: [{apiGroups: [""], resources: [pods], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: shop-viewer}
subjects: [{kind: ServiceAccount, name: runner, namespace: shop}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: busybox}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: shop}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: migrate, image: busybox}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: shop}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: Never, containers: [{name: report, image: busybox}]}
---
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: shop}
spec: {limits: [{type: Container, default: {cpu: 500m}}]}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: quota, namespace: shop}
spec: {hard: {pods: "50"}}
---
apiVersion: v1
kind: ReplicationController
metadata: {name: legacy, namespace: shop}
spec:
  replicas: 1
  selector: {app: legacy}
  template:
    metadata: {labels: {app: legacy}}
    spec: {containers: [{name: legacy, image: busybox}]}
---
apiVersion: v1
kind: PodTemplate
metadata: {name: tpl, namespace: shop}
template:
  metadata: {labels: {app: tpl}}
  spec: {containers: [{name: tpl, image: busybox}]}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: leader, namespace: shop}
spec: {holderIdentity: web-1}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  rules:
    - host: shop.example.com
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: db, namespace: shop}
spec: {minAvailable: 1, selector: {matchLabels: {app: db}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
---
apiVersion: v1
kind: Endpoints
metadata: {name: external, namespace: shop}
subsets: [{addresses: [{ip: 10.1.2.3}], ports: [{port: 5432}]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: external-1, namespace: shop, labels: {kubernetes.io/service-name: external}}
addressType: IPv4
endpoints: [{addresses: [10.1.2.3]}]
ports: [{port: 5432}]
---
apiVersion: v1
kind: Event
metadata: {name: noise, namespace: shop}
involvedObject: {kind: Pod, name: web, namespace: shop}
reason: Testing
message: events are not exported
type: Normal
"#;

/// Kinds the shop namespace must have in its backup (events must not be there).
pub(crate) const SHOP_KINDS: &[&str] = &[
    "configmaps",
    "secrets",
    "serviceaccounts",
    "services",
    "persistentvolumeclaims",
    "pods",
    "endpoints",
    "limitranges",
    "resourcequotas",
    "replicationcontrollers",
    "podtemplates",
    "deployments.apps",
    "replicasets.apps",
    "statefulsets.apps",
    "daemonsets.apps",
    "jobs.batch",
    "cronjobs.batch",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "leases.coordination.k8s.io",
    "ingresses.networking.k8s.io",
    "networkpolicies.networking.k8s.io",
    "poddisruptionbudgets.policy",
    "horizontalpodautoscalers.autoscaling",
    "endpointslices.discovery.k8s.io",
    "carts.shop.example.com",
];

pub(crate) fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(crate) fn selection(namespace: &str) -> Selection {
    Selection {
        namespaces: vec![namespace.into()],
        selector: None,
        filter: ResourceFilter::default_policy(),
    }
}

pub(crate) fn kind_id(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

/// Every object of `resource` in `namespace`, read independently of the exporter (small pages).
pub(crate) async fn list_all(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: &str,
) -> anyhow::Result<Vec<Value>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(100);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list(&params).await?;
        out.extend(page.items.into_iter().map(|o| serde_json::to_value(o).unwrap()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The archive's entries: path → parsed YAML.
async fn unpack(store: &dyn ObjectStore, key: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let compressed = store::get_bytes(store, key).await?;
    let tar = zstd::decode_all(&compressed[..])?;
    let mut archive = tar::Archive::new(&tar[..]);
    let mut out = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text)?;
        out.insert(path, serde_yaml::from_str(&text)?);
    }
    Ok(out)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(crate) async fn shop_env(env: &TestEnv) -> anyhow::Result<()> {
    env.apply(SHOP)?;
    env.apply(SHOP_EXTRAS)?;
    Ok(())
}

/// Back up the shop namespace into `store` and check everything the issue asks of the result.
async fn back_up_shop_and_check(
    env: &TestEnv,
    store: &dyn ObjectStore,
    layout: &Layout,
) -> anyhow::Result<()> {
    let clock = ManualClock::new(start_time());
    let ctx = Context {
        client: env.client(),
        store,
        layout,
        clock: &clock,
        sealing: Default::default(),
    };

    let manifest = backup::run(&ctx, "shop", &selection("shop"), &ExportOptions::default()).await?;

    let id = BackupId::parse(&manifest.backup_id).unwrap();
    assert_eq!(id.as_str(), "20261123T120000Z");
    let keys = layout.backup("shop", &id);
    let archive = unpack(store, &keys.resources()).await?;

    // Every served namespaced kind but events: what the cluster has is exactly what the archive has.
    let discovery = Discovery::new(env.client()).run().await?;
    let mut expected_paths = BTreeSet::new();
    for (resource, caps) in discovery.groups().flat_map(|g| g.recommended_resources()) {
        if caps.scope != Scope::Namespaced
            || !caps.supports_operation(verbs::LIST)
            || resource.plural == "events"
        {
            continue;
        }
        let objects = list_all(&env.client(), &resource, "shop").await?;
        let recorded = manifest.objects.get(&kind_id(&resource)).map_or(0, |k| k.count);
        assert_eq!(recorded, objects.len() as u64, "count of {}", kind_id(&resource));
        for mut obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            let group = if resource.group.is_empty() {
                "core"
            } else {
                &resource.group
            };
            let path = format!(
                "resources/{group}/{}/{}/shop/{name}.yaml",
                resource.version, resource.plural
            );
            let exported = archive
                .get(&path)
                .unwrap_or_else(|| panic!("{path} missing from the archive"));
            obj["apiVersion"] = resource.api_version.clone().into();
            obj["kind"] = resource.kind.clone().into();
            freezeframe::export::sanitize::sanitize(&mut obj, false);
            assert_eq!(exported, &obj, "{path}");
            expected_paths.insert(path);
        }
    }
    let namespaced: BTreeSet<String> = archive
        .keys()
        .filter(|p| p.starts_with("resources/"))
        .cloned()
        .collect();
    assert_eq!(namespaced, expected_paths);

    // Sanitised: nothing server-owned is left anywhere.
    for (path, obj) in &archive {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            assert!(
                obj["metadata"].get(field).is_none(),
                "{path} kept metadata.{field}"
            );
        }
        assert!(obj.get("status").is_none(), "{path} kept status");
    }
    assert!(
        archive["resources/core/v1/services/shop/web.yaml"]["spec"]
            .get("clusterIP")
            .is_none()
    );
    assert!(archive["resources/apps/v1/deployments/shop/web.yaml"]["spec"]["template"].is_object());
    let pod = archive
        .iter()
        .find(|(p, _)| p.starts_with("resources/core/v1/pods/shop/web-"))
        .unwrap()
        .1;
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet",
        "owner references are kept"
    );

    for kind in SHOP_KINDS {
        assert!(
            manifest.objects.get(*kind).is_some_and(|k| k.count > 0),
            "{kind} missing"
        );
    }
    assert!(manifest.objects.len() >= 25, "{} kinds", manifest.objects.len());
    assert!(
        !manifest.objects.contains_key("events") && !manifest.objects.contains_key("events.events.k8s.io")
    );
    assert_eq!(
        manifest.objects["endpoints"].restore,
        freezeframe::export::RestoreAction::Skip
    );
    assert_eq!(
        manifest.objects["endpointslices.discovery.k8s.io"].restore,
        freezeframe::export::RestoreAction::Skip
    );

    // Cluster-scoped dependencies.
    let cluster: BTreeSet<&str> = archive
        .keys()
        .filter(|p| p.starts_with("cluster/"))
        .map(String::as_str)
        .collect();
    for path in [
        "cluster/core/v1/namespaces/shop.yaml",
        "cluster/storage.k8s.io/v1/storageclasses/sandbox.yaml",
        "cluster/apiextensions.k8s.io/v1/customresourcedefinitions/carts.shop.example.com.yaml",
        "cluster/rbac.authorization.k8s.io/v1/clusterroles/shop-viewer.yaml",
    ] {
        assert!(cluster.contains(path), "{path} missing: {cluster:?}");
    }
    let claims = &manifest.objects["persistentvolumeclaims"];
    let volumes = cluster
        .iter()
        .filter(|p| p.starts_with("cluster/core/v1/persistentvolumes/"))
        .count();
    assert_eq!(volumes as u64, claims.count, "one bound PV per claim");
    assert_eq!(manifest.cluster_objects["persistentvolumes"].count, claims.count);

    // The manifest: identity, checksums that match the stored bytes, written last.
    let kube_system = Api::<Namespace>::all(env.client()).get("kube-system").await?;
    assert_eq!(
        Some(manifest.cluster.kube_system_uid.clone()),
        kube_system.metadata.uid
    );
    assert_eq!(manifest.status, Status::Completed);
    assert_eq!(manifest.namespaces, ["shop"]);
    assert_eq!(manifest.policy, "shop");
    let bytes = store::get_bytes(store, &keys.resources()).await?;
    let artifact = &manifest.artifacts["resources.tar.zst"];
    assert_eq!(artifact.size, bytes.len() as u64);
    assert_eq!(artifact.sha256, sha256(&bytes));
    let stored = Manifest::from_json(&store::get_bytes(store, &keys.manifest()).await?)?;
    assert_eq!(stored, manifest);
    let listed = backup::list(store, layout, None).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].manifest.as_ref(), Some(&manifest));
    Ok(())
}

#[tokio::test]
async fn given_shop_namespace_when_backed_up_to_a_directory_then_archive_matches_cluster_sanitised_and_checksummed()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let store = FsStore::new(env.dir().join("store"));

    back_up_shop_and_check(&env, &store, &Layout::new("")).await
}

#[tokio::test]
async fn given_shop_namespace_when_backed_up_to_seaweedfs_then_archive_matches_cluster_sanitised_and_checksummed()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    shop_env(&env).await?;
    let store = S3Store::new(env.s3().client().clone(), env.s3().bucket());

    back_up_shop_and_check(&env, &store, &Layout::new("clusters/test")).await
}

#[tokio::test]
async fn given_1200_configmaps_when_exported_with_pages_of_500_then_every_one_is_in_the_archive()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bulk}\n");
    for i in 0..1200 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:04}, namespace: bulk}}\ndata: {{n: \"{i}\"}}\n"
        ));
    }
    env.apply(&yaml)?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let clock = ManualClock::new(start_time());
    let ctx = Context {
        client: env.client(),
        store: &store,
        layout: &layout,
        clock: &clock,
        sealing: Default::default(),
    };
    let mut chosen = selection("bulk");
    chosen.filter = ResourceFilter::new(&["configmaps".into()], &[]);

    let manifest = backup::run(&ctx, "bulk", &chosen, &ExportOptions::default()).await?;

    let archive = unpack(
        &store,
        &layout
            .backup("bulk", &BackupId::parse(&manifest.backup_id).unwrap())
            .resources(),
    )
    .await?;
    let names: BTreeSet<String> = archive
        .keys()
        .filter_map(|p| p.strip_prefix("resources/core/v1/configmaps/bulk/"))
        .map(|p| p.trim_end_matches(".yaml").to_string())
        .collect();
    for i in 0..1200 {
        assert!(names.contains(&format!("cm-{i:04}")), "cm-{i:04} missing");
    }
    // The 1,200 plus the namespace's kube-root-ca.crt.
    assert_eq!(names.len(), 1201);
    assert_eq!(manifest.objects["configmaps"].count, 1201);
    assert_eq!(manifest.objects.len(), 1, "only configmaps were included");
    Ok(())
}

/// A store that passes everything through but fails uploads of keys ending in `fail_suffix` after
/// `after` bytes, as a network or disk failure in the middle of an upload would.
#[derive(Debug)]
struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    fail_suffix: &'static str,
    after: usize,
}

#[async_trait::async_trait]
impl ObjectStore for FailingStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, body: &mut (dyn AsyncRead + Send + Unpin)) -> store::Result<Written> {
        if !key.ends_with(self.fail_suffix) {
            return self.inner.put(key, body).await;
        }
        let mut first = vec![0; self.after];
        body.read_exact(&mut first)
            .await
            .map_err(|e| store::Error::Other(e.to_string()))?;
        Err(store::Error::Other(format!(
            "injected failure after {} bytes of {key}",
            self.after
        )))
    }

    async fn get(&self, key: &str) -> store::Result<ByteReader> {
        self.inner.get(key).await
    }

    async fn head(&self, key: &str) -> store::Result<Option<u64>> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> store::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, keys: &[String]) -> store::Result<()> {
        self.inner.delete(keys).await
    }
}

#[tokio::test]
async fn given_store_failing_in_the_middle_of_the_archive_upload_when_backing_up_then_error_and_no_manifest()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let inner: Arc<dyn ObjectStore> = Arc::new(FsStore::new(env.dir().join("store")));
    let failing = FailingStore {
        inner: inner.clone(),
        fail_suffix: "resources.tar.zst",
        after: 1024,
    };
    let layout = Layout::new("");
    let clock = ManualClock::new(start_time());
    let ctx = Context {
        client: env.client(),
        store: &failing,
        layout: &layout,
        clock: &clock,
        sealing: Default::default(),
    };

    let error = backup::run(&ctx, "shop", &selection("shop"), &ExportOptions::default())
        .await
        .unwrap_err();

    assert!(format!("{:#}", anyhow::Error::from(error)).contains("injected failure"));
    assert!(inner.list("").await?.is_empty(), "nothing may be committed");
    assert!(backup::list(inner.as_ref(), &layout, None).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn given_api_failing_while_listing_a_kind_when_backing_up_then_partial_archive_is_not_committed()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let clock = ManualClock::new(start_time());
    let ctx = Context {
        client: env.client(),
        store: &store,
        layout: &layout,
        clock: &clock,
        sealing: Default::default(),
    };
    env.sandbox().cluster().inject_fault(Fault {
        verb: Some("list".into()),
        resource: Some("secrets".into()),
        name: None,
        error: ApiError::forbidden("secrets is forbidden for the test"),
        times: 1,
    });

    let error = backup::run(&ctx, "shop", &selection("shop"), &ExportOptions::default())
        .await
        .unwrap_err();

    assert!(format!("{:#}", anyhow::Error::from(error)).contains("secrets"));
    assert!(
        store.list("").await?.is_empty(),
        "a partial archive was committed"
    );
    let mut leftovers = Vec::new();
    let mut dirs = vec![env.dir().join("store")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path)
            } else {
                leftovers.push(path)
            }
        }
    }
    assert!(leftovers.is_empty(), "the aborted upload left {leftovers:?}");
    Ok(())
}

/// One namespace, three apps: a Cassandra ring (the one selected) and two MySQL instances.
const THREE_APPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mixed}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cassandra, namespace: mixed}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cassandra-config, namespace: mixed}
data: {cluster: ring}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cassandra-rack, namespace: mixed}
data: {rack: r1}
---
apiVersion: v1
kind: Secret
metadata: {name: cassandra-keystore, namespace: mixed}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: registry, namespace: mixed}
stringData: {k: v}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cassandra-seeds, namespace: mixed}
rules: [{apiGroups: [""], resources: [endpoints], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cassandra-seeds, namespace: mixed}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cassandra-seeds}
subjects: [{kind: ServiceAccount, name: cassandra}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: cassandra-nodes}
rules: [{apiGroups: [""], resources: [nodes], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cassandra-nodes, namespace: mixed}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cassandra-nodes}
subjects: [{kind: ServiceAccount, name: cassandra, namespace: mixed}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: cassandra, namespace: mixed}
spec:
  serviceName: cassandra
  replicas: 2
  selector: {matchLabels: {app: cassandra}}
  template:
    metadata: {labels: {app: cassandra}}
    spec:
      serviceAccountName: cassandra
      imagePullSecrets: [{name: registry}]
      containers:
        - name: cassandra
          image: cassandra:5
          envFrom: [{configMapRef: {name: cassandra-config}}]
          env: [{name: RACK, valueFrom: {configMapKeyRef: {name: cassandra-rack, key: rack}}}]
          volumeMounts: [{name: data, mountPath: /var/lib/cassandra}, {name: keystore, mountPath: /keys}]
      volumes: [{name: keystore, secret: {secretName: cassandra-keystore}}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Service
metadata: {name: cassandra, namespace: mixed}
spec: {clusterIP: None, selector: {app: cassandra}, ports: [{port: 9042}]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: cassandra, namespace: mixed}
spec: {maxUnavailable: 1, selector: {matchLabels: {app: cassandra}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cassandra, namespace: mixed}
spec: {podSelector: {matchLabels: {app: cassandra}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: mixed}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: cassandra, namespace: mixed}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: StatefulSet, name: cassandra}
  minReplicas: 2
  maxReplicas: 4
---
apiVersion: v1
kind: ConfigMap
metadata: {name: mysql-a-config, namespace: mixed}
data: {my.cnf: "[mysqld]"}
---
apiVersion: v1
kind: Secret
metadata: {name: mysql-a-root, namespace: mixed}
stringData: {password: a}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: mysql-a-data, namespace: mixed}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mysql-a, namespace: mixed}
spec:
  replicas: 1
  selector: {matchLabels: {app: mysql, instance: a}}
  template:
    metadata: {labels: {app: mysql, instance: a}}
    spec:
      containers:
        - name: mysql
          image: mysql:8
          envFrom: [{configMapRef: {name: mysql-a-config}}, {secretRef: {name: mysql-a-root}}]
          volumeMounts: [{name: data, mountPath: /var/lib/mysql}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: mysql-a-data}}]
---
apiVersion: v1
kind: Service
metadata: {name: mysql-a, namespace: mixed}
spec: {selector: {app: mysql, instance: a}, ports: [{port: 3306}]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: mysql-b-data, namespace: mixed}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mysql-b, namespace: mixed}
spec:
  replicas: 1
  selector: {matchLabels: {app: mysql, instance: b}}
  template:
    metadata: {labels: {app: mysql, instance: b}}
    spec:
      containers: [{name: mysql, image: "mysql:8", volumeMounts: [{name: data, mountPath: /var/lib/mysql}]}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: mysql-b-data}}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: mysql, namespace: mixed}
spec: {maxUnavailable: 1, selector: {matchLabels: {app: mysql}}}
"#;

#[tokio::test]
async fn given_three_apps_in_one_namespace_when_selector_picks_cassandra_then_exactly_its_closure_is_exported()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.apply(THREE_APPS)?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let clock = ManualClock::new(start_time());
    let ctx = Context {
        client: env.client(),
        store: &store,
        layout: &layout,
        clock: &clock,
        sealing: Default::default(),
    };
    let selector: LabelSelector =
        serde_json::from_value(serde_json::json!({"matchLabels": {"app": "cassandra"}}))?;
    let mut chosen = selection("mixed");
    chosen.selector = Some(selector);

    let manifest = backup::run(&ctx, "cassandra", &chosen, &ExportOptions::default()).await?;

    let archive = unpack(
        &store,
        &layout
            .backup("cassandra", &BackupId::parse(&manifest.backup_id).unwrap())
            .resources(),
    )
    .await?;
    let namespaced: BTreeSet<&str> = archive
        .keys()
        .filter_map(|p| p.strip_prefix("resources/"))
        .collect();
    let expected: BTreeSet<&str> = [
        "core/v1/pods/mixed/cassandra-0.yaml",
        "core/v1/pods/mixed/cassandra-1.yaml",
        "apps/v1/statefulsets/mixed/cassandra.yaml",
        "core/v1/persistentvolumeclaims/mixed/data-cassandra-0.yaml",
        "core/v1/persistentvolumeclaims/mixed/data-cassandra-1.yaml",
        "core/v1/configmaps/mixed/cassandra-config.yaml",
        "core/v1/configmaps/mixed/cassandra-rack.yaml",
        "core/v1/secrets/mixed/cassandra-keystore.yaml",
        "core/v1/secrets/mixed/registry.yaml",
        "core/v1/serviceaccounts/mixed/cassandra.yaml",
        "rbac.authorization.k8s.io/v1/roles/mixed/cassandra-seeds.yaml",
        "rbac.authorization.k8s.io/v1/rolebindings/mixed/cassandra-seeds.yaml",
        "rbac.authorization.k8s.io/v1/rolebindings/mixed/cassandra-nodes.yaml",
        "core/v1/services/mixed/cassandra.yaml",
        "policy/v1/poddisruptionbudgets/mixed/cassandra.yaml",
        "networking.k8s.io/v1/networkpolicies/mixed/cassandra.yaml",
        "networking.k8s.io/v1/networkpolicies/mixed/default-deny.yaml",
        "autoscaling/v2/horizontalpodautoscalers/mixed/cassandra.yaml",
    ]
    .into();
    assert_eq!(namespaced, expected);
    let cluster: BTreeSet<&str> = archive
        .keys()
        .filter(|p| p.starts_with("cluster/"))
        .map(String::as_str)
        .collect();
    assert!(cluster.contains("cluster/rbac.authorization.k8s.io/v1/clusterroles/cassandra-nodes.yaml"));
    assert!(cluster.contains("cluster/core/v1/namespaces/mixed.yaml"));
    assert_eq!(
        manifest.cluster_objects["persistentvolumes"].count, 2,
        "{cluster:?}"
    );
    assert_eq!(manifest.selector, chosen.selector);
    assert_eq!(
        archive["resources/core/v1/services/mixed/cassandra.yaml"]["spec"]["clusterIP"],
        "None"
    );
    Ok(())
}

#[tokio::test]
async fn given_seaweedfs_when_large_object_streamed_then_multipart_upload_round_trips_and_lists_and_deletes()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let store =
        S3Store::new(env.s3().client().clone(), env.s3().bucket()).with_upload_limits(MIN_PART_SIZE, 2);
    let payload: Vec<u8> = (0..(2 * MIN_PART_SIZE + 12345) as u32)
        .map(|i| (i % 251) as u8)
        .collect();

    let written = store::put_bytes(&store, "p/big.bin", &payload).await?;
    store::put_bytes(&store, "p/small.txt", b"tiny").await?;
    store::put_bytes(&store, "q/other.txt", b"other").await?;

    assert_eq!(
        written,
        Written {
            size: payload.len() as u64,
            sha256: sha256(&payload)
        }
    );
    assert!(
        store::get_bytes(&store, "p/big.bin").await? == payload,
        "multipart object differs"
    );
    store::verify(&store, "p/big.bin", &written).await?;
    assert_eq!(store.head("p/big.bin").await?, Some(payload.len() as u64));
    assert_eq!(store.head("p/missing").await?, None);
    assert!(matches!(
        store.get("p/missing").await,
        Err(store::Error::NotFound { .. })
    ));
    let listed = store.list("p/").await?;
    assert_eq!(
        listed,
        vec![
            ObjectInfo {
                key: "p/big.bin".into(),
                size: payload.len() as u64
            },
            ObjectInfo {
                key: "p/small.txt".into(),
                size: 4
            },
        ]
    );
    store
        .delete(&["p/big.bin".into(), "p/small.txt".into(), "p/never-was".into()])
        .await?;
    assert!(store.list("p/").await?.is_empty());
    assert_eq!(store.list("").await?.len(), 1);
    Ok(())
}

/// A reader yielding `good` bytes, then an error.
struct BreaksAfter(usize);

impl AsyncRead for BreaksAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("source broke")));
        }
        let n = self.0.min(buf.remaining());
        buf.put_slice(&vec![1; n]);
        self.0 -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn given_seaweedfs_when_body_fails_after_some_parts_then_no_object_and_no_pending_upload()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let store =
        S3Store::new(env.s3().client().clone(), env.s3().bucket()).with_upload_limits(MIN_PART_SIZE, 2);

    let error = store
        .put("p/broken", &mut BreaksAfter(2 * MIN_PART_SIZE + 10))
        .await
        .unwrap_err();

    assert!(matches!(error, store::Error::Body { .. }), "{error:?}");
    assert_eq!(store.head("p/broken").await?, None);
    let uploads = env
        .s3()
        .client()
        .list_multipart_uploads()
        .bucket(env.s3().bucket())
        .send()
        .await?;
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    Ok(())
}

#[tokio::test]
async fn given_more_than_one_listing_page_of_objects_when_listed_from_seaweedfs_then_all_are_returned()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let store = S3Store::new(env.s3().client().clone(), env.s3().bucket());
    let keys: Vec<String> = (0..1100).map(|i| format!("many/{i:05}")).collect();
    futures::future::try_join_all(keys.iter().map(|k| store::put_bytes(&store, k, b"x"))).await?;

    let listed = store.list("many/").await?;

    assert_eq!(listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(), keys);
    store.delete(&keys).await?;
    assert!(
        store.list("many/").await?.is_empty(),
        "batch delete of more than 1000 keys"
    );
    Ok(())
}

/// Runs the freezeframe binary against the test's sandbox; returns (exit code, stdout, stderr).
async fn freezeframe(env: &TestEnv, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = env.freezeframe(args).output().await?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A policy file with policy `shop` (namespace shop) storing into `<test dir>/backups`; returns (file, store dir).
fn shop_policy_file(env: &TestEnv) -> anyhow::Result<(String, std::path::PathBuf)> {
    let store_dir = env.dir().join("backups");
    let policy_file = env.dir().join("policies.yaml");
    std::fs::write(
        &policy_file,
        format!(
            concat!(
                "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n",
                "storages: {{local: {{filesystem: {{path: {}}}}}}}\n",
                "defaults: {{storage: local}}\n",
                "policies:\n",
                "  - name: shop\n",
                "    schedule: \"0 * * * *\"\n",
                "    namespaces: [shop]\n",
                "    retention: {{keepLast: 3}}\n",
            ),
            store_dir.display()
        ),
    )?;
    Ok((policy_file.display().to_string(), store_dir))
}

#[tokio::test]
async fn given_policy_file_when_backup_command_runs_then_list_shows_a_complete_backup_and_a_broken_store_exits_1()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let (policy_file, store_dir) = shop_policy_file(&env)?;
    let not_a_dir = env.dir().join("plain-file");
    std::fs::write(&not_a_dir, "x")?;

    let (code, out, err) = freezeframe(
        &env,
        &["backup", "--policy", "shop", "--policy-file", &policy_file],
    )
    .await?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("shop/"), "{out}");
    let url = format!("file://{}", store_dir.display());
    let (code, listed, err) = freezeframe(&env, &["list", "--storage", &url, "-o", "json"]).await?;
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&listed)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["policy"], "shop");
    assert_eq!(listed[0]["complete"], true);
    assert_eq!(listed[0]["manifest"]["status"], "Completed");

    let broken = format!("file://{}/sub", not_a_dir.display());
    let (code, _, err) = freezeframe(
        &env,
        &[
            "backup",
            "--policy",
            "shop",
            "--policy-file",
            &policy_file,
            "--storage",
            &broken,
        ],
    )
    .await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error:"), "{err}");
    let (code, missing, _) = freezeframe(
        &env,
        &["backup", "--policy", "nope", "--policy-file", &policy_file],
    )
    .await?;
    assert_eq!(code, 2, "unknown policy is invalid input: {missing}");
    Ok(())
}

#[tokio::test]
async fn given_complete_and_incomplete_backups_when_described_then_manifest_details_or_stored_artifacts_are_shown()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let (policy_file, store_dir) = shop_policy_file(&env)?;
    let (code, out, err) = freezeframe(
        &env,
        &["backup", "--policy", "shop", "--policy-file", &policy_file],
    )
    .await?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let url = format!("file://{}", store_dir.display());
    let listed = backup::list(&FsStore::new(&store_dir), &Layout::new(""), None).await?;
    let id = listed[0].id.to_string();
    let manifest = listed[0].manifest.clone().expect("complete");

    // Text, the store found through the policy.
    let (code, text, err) = freezeframe(
        &env,
        &["describe", &id, "--policy", "shop", "--policy-file", &policy_file],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with(&format!("Backup:      shop/{id}\n")), "{text}");
    assert!(text.contains("Status:      Completed"), "{text}");
    assert!(text.contains("Namespaces:  shop"), "{text}");
    let archive = &manifest.artifacts["resources.tar.zst"];
    assert!(
        text.contains(&format!(
            "resources.tar.zst\t{} bytes\tsha256 {}",
            archive.size, archive.sha256
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("  configmaps\t{}", manifest.objects["configmaps"].count)),
        "{text}"
    );
    assert!(
        text.contains("(skipped on restore)"),
        "endpoints are marked: {text}"
    );

    // JSON through --storage carries the whole manifest; YAML the same document.
    let (code, json, err) = freezeframe(&env, &["describe", &id, "--storage", &url, "-o", "json"]).await?;
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&json)?;
    assert_eq!(json["status"], "Completed");
    assert_eq!(json["complete"], true);
    assert_eq!(
        serde_json::from_value::<Manifest>(json["manifest"].clone())?,
        manifest
    );
    let (code, yaml, err) = freezeframe(&env, &["describe", &id, "--storage", &url, "-o", "yaml"]).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_yaml::from_str::<Value>(&yaml)?, json);

    // A backup that never got its manifest: shown as incomplete, with what it stored.
    let incomplete = "20200101T000000Z";
    let dir = store_dir.join("backups/shop").join(incomplete);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("resources.tar.zst"), b"partial")?;
    let (code, text, err) = freezeframe(&env, &["describe", incomplete, "--storage", &url]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("Status:      Incomplete"), "{text}");
    assert!(text.contains("resources.tar.zst\t7 bytes"), "{text}");
    assert!(!text.contains("sha256"), "{text}");
    let (_, json, _) = freezeframe(&env, &["describe", incomplete, "--storage", &url, "-o", "json"]).await?;
    let json: Value = serde_json::from_str(&json)?;
    assert_eq!(json["complete"], false);
    assert_eq!(json["stored"]["resources.tar.zst"], 7);

    // Unknown id: exit 1 and say where it looked; no store given: invalid input.
    let (code, _, err) = freezeframe(&env, &["describe", "20190101T000000Z", "--storage", &url]).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no backup 20190101T000000Z"), "{err}");
    let (code, _, err) = freezeframe(&env, &["describe", &id]).await?;
    assert_eq!(code, 2, "{err}");
    Ok(())
}

/// The product's client (retries, timeouts) for the sandbox of `env`, with `retries` per call.
async fn product_client(env: &TestEnv, retries: u32) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(env.sandbox().kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let settings = freezeframe::k8s::ClientSettings {
        retries,
        ..Default::default()
    };
    freezeframe::k8s::client(config, settings).unwrap()
}

#[tokio::test]
async fn given_a_sandbox_failing_a_fifth_of_requests_when_backed_up_ten_times_then_every_archive_equals_a_clean_one()
 {
    let env = TestEnv::new().await.unwrap();
    shop_env(&env).await.unwrap();
    let client = product_client(&env, 8).await;
    let store = FsStore::new(env.dir().join("backups"));
    let layout = Layout::new("");
    let back_up = |hours: i64| {
        let client = client.clone();
        let (store, layout) = (&store, &layout);
        async move {
            let clock = ManualClock::new(start_time() + chrono::Duration::hours(hours));
            let ctx = Context {
                client,
                store,
                layout,
                clock: &clock,
                sealing: Default::default(),
            };
            let manifest = backup::run(&ctx, "shop", &selection("shop"), &ExportOptions::default())
                .await
                .map_err(|e| freezeframe::report::chain(&e))?;
            assert_eq!(manifest.status, Status::Completed);
            let id = BackupId::parse(&manifest.backup_id).unwrap();
            unpack(store, &layout.backup("shop", &id).resources())
                .await
                .map_err(|e| e.to_string())
        }
    };
    let clean = back_up(0).await.unwrap();
    assert!(clean.len() > 20, "{:?}", clean.keys());

    env.sandbox().cluster().set_random_faults(Some(RandomFaults {
        rate: 0.2,
        seed: 13,
        latency: std::time::Duration::ZERO,
        verbs: Vec::new(),
        after: 0,
    }));
    // All ten at once: each waits out its own Retry-Afters, the test does not wait them out in turn.
    let archives = futures::future::join_all((1..=10).map(&back_up)).await;
    for (n, archive) in (1..=10).zip(archives) {
        let archive = archive.unwrap_or_else(|e| panic!("backup {n} under faults: {e}"));
        assert_eq!(
            archive.keys().collect::<Vec<_>>(),
            clean.keys().collect::<Vec<_>>(),
            "backup {n}: object set"
        );
        assert!(archive == clean, "backup {n}: bodies differ from the clean run's");
    }
    let injected = env.sandbox().cluster().random_faults_injected();
    assert!(injected >= 20, "only {injected} faults were injected");
}
