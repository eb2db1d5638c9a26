//! Restore end to end against the sandbox: the shop namespace (26 kinds incl. a CR) backed up, deleted
//! and restored; restored into another namespace; into a fresh sandbox from SeaweedFS (the DR cluster);
//! dry runs write nothing; corrupt, tampered and unsafe backups are refused; a second restore changes
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use freezeframe::backup::{self, Context as BackupContext, DumpStatus, Manifest};
use freezeframe::clock::ManualClock;
use freezeframe::exit::Outcome;
use freezeframe::export::ExportOptions;
use freezeframe::hooks::KubeExecutor;
use freezeframe::policy::{Backend, Policy};
use freezeframe::restore::apply::KubeTarget;
use freezeframe::restore::dumps::{Replay, ReplayStatus, Replayer};
use freezeframe::restore::plan::Action;
use freezeframe::restore::{
    self, BackupRef, Context, Error, Existing, Plan, PlanOptions, Report, RestoreOptions,
};
use freezeframe::store::fs::FsStore;
use freezeframe::store::{self, Layout, ObjectStore};
use freezeframe_sandbox::{Sandbox, SandboxOptions};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod};
use kube::api::{Api, AttachParams, DeleteParams, Patch, PatchParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

use crate::export::{SHOP_KINDS, kind_id, list_all, selection, shop_env, start_time};
use crate::harness::{TestEnv, test_credentials};

/// Back up the shop namespace as policy `shop`.
async fn back_up(client: kube::Client, store: &dyn ObjectStore, layout: &Layout) -> anyhow::Result<Manifest> {
    let clock = ManualClock::new(start_time());
    let ctx = BackupContext {
        client,
        store,
        layout,
        clock: &clock,
        sealing: Default::default(),
    };
    Ok(backup::run(&ctx, "shop", &selection("shop"), &ExportOptions::default()).await?)
}

pub(crate) fn options() -> RestoreOptions {
    RestoreOptions {
        backup: BackupRef::Latest,
        policy: None,
        plan: PlanOptions::default(),
        dry_run: false,
        wait: None,
    }
}

async fn restore(
    client: kube::Client,
    store: &dyn ObjectStore,
    layout: &Layout,
    options: &RestoreOptions,
) -> Result<(Plan, Report), Error> {
    let target = KubeTarget::new(client);
    let ctx = Context {
        store,
        layout,
        target: &target,
        dumps: None,
        fill: None,
        identities: None,
    };
    restore::run(&ctx, options).await
}

pub(crate) async fn delete_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let uid = api.get(name).await?.metadata.uid.unwrap_or_default();
    api.delete(name, &DeleteParams::default()).await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, name, conditions::is_deleted(&uid)),
    )
    .await??;
    Ok(())
}

async fn namespace_exists(client: &kube::Client, name: &str) -> anyhow::Result<bool> {
    Ok(Api::<Namespace>::all(client.clone())
        .get_opt(name)
        .await?
        .is_some())
}

/// Every object in `namespace` (events excepted), by (kind id, name).
pub(crate) async fn objects(
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<BTreeMap<(String, String), Value>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = BTreeMap::new();
    for (resource, caps) in discovery.groups().flat_map(|g| g.recommended_resources()) {
        if caps.scope != Scope::Namespaced
            || !caps.supports_operation(verbs::LIST)
            || resource.plural == "events"
        {
            continue;
        }
        for mut obj in list_all(client, &resource, namespace).await? {
            obj["apiVersion"] = resource.api_version.clone().into();
            obj["kind"] = resource.kind.clone().into();
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            out.insert((kind_id(&resource), name), obj);
        }
    }
    Ok(out)
}

/// Every object of the cluster, namespaced (all namespaces) and cluster-scoped, with its
/// resourceVersion: (kind id, namespace, name) → resourceVersion. Events only `with_events`.
pub(crate) async fn cluster_state(
    client: &kube::Client,
    with_events: bool,
) -> anyhow::Result<BTreeMap<(String, String, String), String>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = BTreeMap::new();
    for (resource, caps) in discovery.groups().flat_map(|g| g.recommended_resources()) {
        if !caps.supports_operation(verbs::LIST) || (!with_events && resource.plural == "events") {
            continue;
        }
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        for obj in api.list(&Default::default()).await? {
            let meta = obj.metadata;
            out.insert(
                (
                    kind_id(&resource),
                    meta.namespace.unwrap_or_default(),
                    meta.name.unwrap_or_default(),
                ),
                meta.resource_version.unwrap_or_default(),
            );
        }
    }
    Ok(out)
}

/// Assert two [`cluster_state`]s are equal, naming the objects that differ.
#[track_caller]
pub(crate) fn assert_same_state(
    now: &BTreeMap<(String, String, String), String>,
    before: &BTreeMap<(String, String, String), String>,
    what: &str,
) {
    let changed: Vec<String> = before
        .keys()
        .chain(now.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| now.get(*k) != before.get(*k))
        .map(|k| format!("{k:?}: {:?} -> {:?}", before.get(k), now.get(k)))
        .collect();
    assert!(changed.is_empty(), "{what}:\n{}", changed.join("\n"));
}

/// An object without what the server (and only the server) sets differently for a new object.
fn normalize(kind: &str, mut obj: Value, namespace: &str) -> Value {
    freezeframe::export::sanitize::sanitize(&mut obj, false);
    obj["metadata"]["namespace"] = json!(namespace);
    for r in obj["metadata"]["ownerReferences"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        r.as_object_mut().map(|r| r.remove("uid"));
    }
    match kind {
        "persistentvolumeclaims" => {
            // Which volume, how it was provisioned, and who bound it are the target's (and the plan's
            // `volume` choice, asserted separately).
            if let Some(spec) = obj["spec"].as_object_mut() {
                for k in ["volumeName", "dataSource", "dataSourceRef"] {
                    spec.remove(k);
                }
            }
            if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
                a.retain(|k, _| !k.starts_with("pv.kubernetes.io/") && !k.starts_with("volume."));
                if a.is_empty() {
                    obj["metadata"].as_object_mut().map(|m| m.remove("annotations"));
                }
            }
        }
        "jobs.batch" => {
            obj["spec"].as_object_mut().map(|s| s.remove("selector"));
            if let Some(labels) = obj["spec"]["template"]["metadata"]["labels"].as_object_mut() {
                labels.remove("controller-uid");
                labels.remove("batch.kubernetes.io/controller-uid");
            }
        }
        "rolebindings.rbac.authorization.k8s.io" => {
            for s in obj["subjects"].as_array_mut().into_iter().flatten() {
                if s["namespace"].is_string() {
                    s["namespace"] = json!(namespace);
                }
            }
        }
        _ => {}
    }
    obj
}

/// Assert every object the plan restored into `to` equals its original in `before`, modulo server fields.
fn assert_restored_equal(
    plan: &Plan,
    before: &BTreeMap<(String, String), Value>,
    after: &BTreeMap<(String, String), Value>,
    to: &str,
) -> usize {
    let mut compared = 0;
    for step in plan.steps.iter().filter(|s| s.action == Action::Create) {
        let key = (step.kind.clone(), step.name.clone());
        let original = before
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not in the original"));
        let restored = after.get(&key).unwrap_or_else(|| panic!("{key:?} not restored"));
        assert_eq!(
            normalize(&step.kind, restored.clone(), to),
            normalize(&step.kind, original.clone(), to),
            "{key:?}"
        );
        compared += 1;
    }
    compared
}

/// `sh -c script` in `namespace/pod` through `pods/exec`, as kubectl exec runs it; its stdout.
pub(crate) async fn sh(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    script: &str,
) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut proc = pods
        .exec(pod, ["sh", "-c", script], &AttachParams::default().stderr(false))
        .await?;
    let status = proc.take_status();
    let mut out = String::new();
    if let Some(mut stdout) = proc.stdout() {
        stdout.read_to_string(&mut out).await?;
    }
    if let Some(status) = status
        && let Some(s) = status.await
    {
        anyhow::ensure!(
            s.status.as_deref() != Some("Failure"),
            "{script:?} in {namespace}/{pod}: {}",
            s.message.unwrap_or_default()
        );
    }
    Ok(out)
}

/// Back up `namespace` as policy `name` into `store`, through the whole backup run (hooks, CSI
/// snapshots unless `extra` turns them off, dumps); `extra` is appended to the policy (rules, dumps,
/// volumes). Returns the policy and the committed manifest.
pub(crate) async fn back_up_policy(
    env: &TestEnv,
    store: &dyn ObjectStore,
    layout: &Layout,
    name: &str,
    namespace: &str,
    extra: &str,
) -> anyhow::Result<(Policy, Manifest)> {
    // The policy's own storage is not used: the run writes into `store`.
    let text = format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: /unused}}}}}}\n\
         defaults: {{storage: local}}\n\
         policies:\n  - name: {name}\n    schedule: \"@daily\"\n    namespaces: [{namespace}]\n\
         \x20   retention: {{keepLast: 3}}\n{extra}",
    );
    let policy = crate::harness::policy(&text);
    let manifest = env.back_up(&policy, store, layout, start_time()).await?;
    Ok((policy, manifest))
}

/// Restore from `store` into the cluster of `client` with `opts`, replaying `policy`'s dumps unless `None`.
pub(crate) async fn restore_with(
    client: &kube::Client,
    store: &dyn ObjectStore,
    layout: &Layout,
    opts: &RestoreOptions,
    policy: Option<&Policy>,
) -> Result<(Plan, Report), Error> {
    let target = KubeTarget::new(client.clone());
    let replayer =
        policy.map(|p| Replayer::new(KubeExecutor::new(client.clone()), client.clone(), p.dumps.clone()));
    let ctx = Context {
        store,
        layout,
        target: &target,
        dumps: replayer.as_ref().map(|r| r as &dyn Replay),
        fill: None,
        identities: None,
    };
    restore::run(&ctx, opts).await
}

/// The shop's orders, as the tests write them into db-0's volume ([`write_orders`]).
pub(crate) const ORDERS: &str = "order 1: 2 apples\norder 2: 1 pear\n";

/// A dump of db-0's orders whose `restoreCommand` writes `replayed.sql` in the pod.
pub(crate) const SHOP_ORDERS_DUMP: &str = r#"    dumps:
      - name: orders
        podSelector: {app: db}
        container: db
        runInSinglePod: true
        command: "cat var/lib/postgresql/data/orders"
        restoreCommand: "cat > replayed.sql"
"#;

/// Write `text` into the orders file of `namespace/pod`'s volume through exec.
pub(crate) async fn write_orders(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    text: &str,
) -> anyhow::Result<()> {
    let script = format!(
        "printf '{}' > var/lib/postgresql/data/orders",
        text.replace('\n', "\\n")
    );
    sh(client, namespace, pod, &script).await?;
    Ok(())
}

/// The orders file of `namespace/pod`'s volume, read through exec.
pub(crate) async fn read_orders(client: &kube::Client, namespace: &str, pod: &str) -> anyhow::Result<String> {
    sh(client, namespace, pod, "cat var/lib/postgresql/data/orders").await
}

/// Assert a restore of the shop that replayed [`SHOP_ORDERS_DUMP`] brought back, in `namespace` of
/// `client`'s cluster: every object of the original (`before`) restored or skipped with a reason, every
/// restored object equal to its original modulo server-set fields (all kinds of the shop), claims bound
/// from their snapshots, db-0's volume data, and the dump's replay.
pub(crate) async fn assert_shop_restored(
    client: &kube::Client,
    namespace: &str,
    before: &BTreeMap<(String, String), Value>,
    plan: &Plan,
    report: &Report,
) -> anyhow::Result<()> {
    assert_eq!(report.failures, [], "{}", report.table());
    assert_eq!(report.outcome(), Outcome::Success);
    let after = objects(client, namespace).await?;
    for (kind, name) in before.keys() {
        assert!(
            plan.steps.iter().any(|s| &s.kind == kind && &s.name == name),
            "{kind} {name} is neither restored nor skipped"
        );
    }
    let compared = assert_restored_equal(plan, before, &after, namespace);
    let kinds: std::collections::BTreeSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.action == Action::Create)
        .map(|s| s.kind.as_str())
        .collect();
    for kind in SHOP_KINDS
        .iter()
        .filter(|k| !["pods", "replicasets.apps"].contains(k))
    {
        assert!(kinds.contains(kind), "{kind} not restored: {kinds:?}");
    }
    assert!(compared >= 25, "{compared} objects compared");
    // Controllers recreated what restore skipped as theirs.
    assert!(
        after.keys().any(|(k, n)| k == "pods" && n.starts_with("web-")),
        "web pods"
    );
    for claim in ["data-db-0", "data-db-1", "data-db-2", "uploads"] {
        let obj = &after[&("persistentvolumeclaims".to_string(), claim.to_string())];
        assert_eq!(obj["status"]["phase"], "Bound", "{obj}");
        let step = plan.steps.iter().find(|s| s.name == claim).unwrap();
        assert!(
            step.claim.to_string().starts_with("new volume from snapshot"),
            "{claim}: {}",
            step.claim
        );
    }
    assert_eq!(
        report.kinds["serviceaccounts"]
            .skipped_because
            .get("clusterManaged"),
        Some(&1),
        "the cluster's own objects are left to the cluster"
    );
    // The volume's data is back, read through exec in the restored pod.
    assert_eq!(read_orders(client, namespace, "db-0").await?, ORDERS);
    // The dump was replayed by its restoreCommand into the restored pod.
    let [replay] = &report.dumps[..] else {
        panic!("one replay: {:?}", report.dumps)
    };
    assert_eq!(replay.status, ReplayStatus::Succeeded, "{replay:?}");
    assert_eq!(sh(client, namespace, "db-0", "cat replayed.sql").await?, ORDERS);
    Ok(())
}

#[tokio::test]
async fn given_shop_with_volume_data_and_a_dump_when_namespace_is_deleted_and_restored_then_objects_data_and_dump_come_back()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let client = env.client();
    write_orders(&client, "shop", "db-0", ORDERS).await?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let (policy, manifest) = back_up_policy(&env, &store, &layout, "shop", "shop", SHOP_ORDERS_DUMP).await?;
    assert_eq!(
        manifest.status,
        backup::Status::Completed,
        "{:?}",
        manifest.problems
    );
    for kind in SHOP_KINDS {
        assert!(manifest.objects.contains_key(*kind), "{kind} not backed up");
    }
    let before = objects(&client, "shop").await?;
    delete_namespace(&client, "shop").await?;

    let mut opts = options();
    opts.wait = Some(Duration::from_secs(60));
    let (plan, report) = restore_with(&client, &store, &layout, &opts, Some(&policy)).await?;

    assert_shop_restored(&client, "shop", &before, &plan, &report).await
}

#[tokio::test]
async fn given_namespace_map_when_restored_then_a_copy_lives_beside_the_untouched_original()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    back_up(env.client(), &store, &layout).await?;
    let before = objects(&env.client(), "shop").await?;
    let mut opts = options();
    opts.plan.namespace_map = PlanOptions::parse_namespace_map(&["shop=shop-copy".into()])?;

    let (plan, report) = restore(env.client(), &store, &layout, &opts).await?;

    assert_eq!(report.failures, [], "{}", report.table());
    let copy = objects(&env.client(), "shop-copy").await?;
    assert_restored_equal(&plan, &before, &copy, "shop-copy");
    let binding = &copy[&(
        "rolebindings.rbac.authorization.k8s.io".to_string(),
        "reader".to_string(),
    )];
    assert_eq!(binding["subjects"][0]["namespace"], "shop-copy");
    let service = &copy[&("services".to_string(), "web".to_string())];
    let original = &before[&("services".to_string(), "web".to_string())];
    assert!(service["spec"]["clusterIP"].is_string());
    assert_ne!(
        service["spec"]["clusterIP"], original["spec"]["clusterIP"],
        "cluster IP reset"
    );
    assert_eq!(
        Api::<Namespace>::all(env.client())
            .get("shop-copy")
            .await?
            .metadata
            .labels
            .unwrap_or_default()["kubernetes.io/metadata.name"],
        "shop-copy"
    );
    // The original is untouched: same objects, same resource versions.
    let now = objects(&env.client(), "shop").await?;
    for (key, obj) in &before {
        assert_eq!(
            now.get(key).map(|o| &o["metadata"]["resourceVersion"]),
            Some(&obj["metadata"]["resourceVersion"]),
            "{key:?} changed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn given_backup_in_seaweedfs_when_restored_into_a_fresh_sandbox_then_the_shop_runs_there()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    shop_env(&env).await?;
    let backend = Backend::S3(freezeframe::policy::S3Storage {
        bucket: env.s3().bucket().to_string(),
        prefix: "clusters/prod".into(),
        region: Some(crate::harness::TEST_REGION.into()),
        endpoint: Some(env.s3().endpoint()),
        force_path_style: true,
        credentials_secret: None,
        server_side_encryption: None,
        kms_key_id: None,
        object_lock: None,
    });
    let (source_store, layout) = store::open(&backend, Some(&test_credentials())).await;
    write_orders(&env.client(), "shop", "db-0", ORDERS).await?;
    let (policy, manifest) = back_up_policy(
        &env,
        source_store.as_ref(),
        &layout,
        "shop",
        "shop",
        SHOP_ORDERS_DUMP,
    )
    .await?;
    assert_eq!(
        manifest.status,
        backup::Status::Completed,
        "{:?}",
        manifest.problems
    );
    let before = objects(&env.client(), "shop").await?;

    // The DR cluster: another sandbox that has never seen the shop, reading the same bucket. Its CSI
    // driver reaches the same storage (as a DR cluster in the same cloud account would), so the
    // recorded snapshot handles resolve there: its snapshot directory is the source's.
    let dr_state = env.dir().join("dr-state");
    std::fs::create_dir_all(&dr_state)?;
    std::os::unix::fs::symlink(
        env.sandbox().state_dir().join("snapshots"),
        dr_state.join("snapshots"),
    )?;
    let dr = Sandbox::start(SandboxOptions {
        state_dir: Some(dr_state),
        ..Default::default()
    })
    .await?;
    let dr_client = dr.client().await?;
    let (dr_store, dr_layout) = store::open(&backend, Some(&test_credentials())).await;
    let mut opts = options();
    opts.backup = BackupRef::Id(store::BackupId::parse(&manifest.backup_id).unwrap());
    opts.wait = Some(Duration::from_secs(60));

    let (plan, report) =
        restore_with(&dr_client, dr_store.as_ref(), &dr_layout, &opts, Some(&policy)).await?;

    assert_shop_restored(&dr_client, "shop", &before, &plan, &report).await?;
    assert_eq!(
        report.kinds["customresourcedefinitions.apiextensions.k8s.io"].created,
        1
    );
    assert_eq!(report.kinds["clusterroles.rbac.authorization.k8s.io"].created, 1);
    assert_ne!(report.source_cluster, "");
    Ok(())
}

#[tokio::test]
async fn given_dry_run_and_then_two_restores_through_the_cli_then_only_the_first_real_one_writes()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let dir = env.dir().join("store");
    let store = FsStore::new(&dir);
    let manifest = back_up(env.client(), &store, &Layout::new("")).await?;
    delete_namespace(&env.client(), "shop").await?;
    let url = format!("file://{}", dir.display());
    let kubeconfig = env.sandbox().kubeconfig_path().to_path_buf();
    let cli = |args: &[&str]| {
        let kubeconfig = kubeconfig.clone();
        let mut all = vec!["restore", "--storage", url.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"))
                .args(&all)
                .env("KUBECONFIG", kubeconfig)
                .stdin(std::process::Stdio::null())
                .output()
                .await?;
            anyhow::Ok((
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        }
    };

    let untouched = cluster_state(&env.client(), true).await?;
    let (code, out, err) = cli(&["--backup", "latest", "--dry-run"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("nothing was written"), "{out}");
    assert!(
        out.contains("carts.shop.example.com\tshop/cart-1\tcreate"),
        "{out}"
    );
    assert!(
        out.contains(
            "persistentvolumeclaims\tshop/uploads\tcreate (existing: skip); volume: new empty volume"
        ),
        "{out}"
    );
    assert_same_state(
        &cluster_state(&env.client(), true).await?,
        &untouched,
        "a dry run wrote something (objects or Events, anywhere in the cluster)",
    );
    let (code, out, err) = cli(&["--backup", "latest", "--dry-run", "-o", "json"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    let planned: Value = serde_json::from_str(&out)?;
    assert_eq!(planned["report"]["dryRun"], true, "{planned}");
    assert_same_state(
        &cluster_state(&env.client(), true).await?,
        &untouched,
        "the cluster changed",
    );

    let (code, out, err) = cli(&["--backup", &manifest.backup_id, "-o", "json"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    let first: Value = serde_json::from_str(&out)?;
    assert_eq!(first["report"]["kinds"]["configmaps"]["created"], 1, "{first}");
    let uploads = first["plan"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "uploads")
        .unwrap();
    assert_eq!(uploads["volume"], "new empty volume", "{uploads}");
    let before = cluster_state(&env.client(), false).await?;

    let (code, out, err) = cli(&["--backup", "latest", "--existing", "skip", "-o", "json"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    let second: Value = serde_json::from_str(&out)?;
    for (kind, k) in second["report"]["kinds"].as_object().unwrap() {
        assert_eq!(k["created"], 0, "{kind}");
        assert_eq!(k["updated"], 0, "{kind}");
    }
    assert_eq!(
        second["report"]["kinds"]["deployments.apps"]["skippedBecause"]["exists"],
        1
    );
    // Nothing anywhere in the cluster changed (the second restore's own Event aside).
    assert_same_state(
        &cluster_state(&env.client(), false).await?,
        &before,
        "a second restore changed objects",
    );

    let (code, _, err) = cli(&["--backup", "latest", "--namespace-map", "nope"]).await?;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&["--backup", "20200101T000000Z"]).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no complete backup"), "{err}");
    Ok(())
}

#[tokio::test]
async fn given_existing_update_when_an_object_drifted_then_server_side_apply_brings_the_backup_back()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    back_up(env.client(), &store, &layout).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client(), "shop");
    configmaps
        .patch(
            "web-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "drifted"}})),
        )
        .await?;
    let mut opts = options();
    opts.plan.existing = Existing::Update;
    opts.plan.include = vec!["configmaps".into()];

    let (_, report) = restore(env.client(), &store, &layout, &opts).await?;

    assert_eq!(report.failures, [], "{}", report.table());
    assert_eq!(report.kinds["configmaps"].updated, 1, "{}", report.table());
    let cm = configmaps.get("web-config").await?;
    assert_eq!(cm.data.unwrap_or_default()["greeting"], "hello");

    opts.plan.existing = Existing::Fail;
    let (_, report) = restore(env.client(), &store, &layout, &opts).await?;
    assert_eq!(report.kinds["configmaps"].failed, 1);
    assert_eq!(report.outcome(), Outcome::PartiallyFailed);
    Ok(())
}

#[tokio::test]
async fn given_existing_update_or_fail_over_the_whole_namespace_then_drift_is_undone_claims_keep_their_spec_or_nothing_is_written()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let client = env.client();
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let (_, manifest) = back_up_policy(&env, &store, &layout, "shop", "shop", "").await?;
    assert_eq!(
        manifest.status,
        backup::Status::Completed,
        "{:?}",
        manifest.problems
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    configmaps
        .patch(
            "web-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "drifted"}})),
        )
        .await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), "shop");
    let claim_specs = |list: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>| {
        list.into_iter()
            .map(|c| {
                (
                    c.metadata.name.unwrap_or_default(),
                    serde_json::to_value(c.spec).unwrap(),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let specs_before = claim_specs(claims.list(&Default::default()).await?.items);

    let mut opts = options();
    opts.plan.existing = Existing::Update;
    let (plan, report) = restore_with(&client, &store, &layout, &opts, None).await?;

    assert_eq!(report.failures, [], "{}", report.table());
    assert_eq!(report.outcome(), Outcome::Success);
    assert_eq!(
        configmaps.get("web-config").await?.data.unwrap_or_default()["greeting"],
        "hello"
    );
    assert_eq!(deployments.get("web").await?.spec.replicas, Some(2));
    // Claims were planned from their snapshots, but an existing claim's spec is immutable: only its
    // metadata is applied, so it keeps its volume and gets no dataSource.
    let claim_step = plan.steps.iter().find(|s| s.name == "uploads").unwrap();
    assert!(
        claim_step
            .claim
            .to_string()
            .starts_with("new volume from snapshot")
    );
    assert_eq!(
        report.kinds["persistentvolumeclaims"].updated,
        4,
        "{}",
        report.table()
    );
    assert_eq!(
        claim_specs(claims.list(&Default::default()).await?.items),
        specs_before
    );
    let updated: u64 = report.kinds.values().map(|k| k.updated).sum();
    assert!(updated >= 25, "{}", report.table());

    // --existing fail: every existing object fails, and nothing is written.
    let untouched = cluster_state(&client, false).await?;
    opts.plan.existing = Existing::Fail;
    let (_, report) = restore_with(&client, &store, &layout, &opts, None).await?;
    assert_eq!(report.outcome(), Outcome::PartiallyFailed, "{}", report.table());
    assert_eq!(report.kinds["configmaps"].failed, 1);
    assert_eq!(report.kinds["persistentvolumeclaims"].failed, 4);
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.message.contains("already exists (--existing fail)")),
        "{}",
        report.table()
    );
    let created: u64 = report.kinds.values().map(|k| k.created + k.updated).sum();
    assert_eq!(created, 0, "{}", report.table());
    assert_same_state(
        &cluster_state(&client, false).await?,
        &untouched,
        "--existing fail wrote something",
    );
    Ok(())
}

/// Flip one byte of a stored artifact, keeping its size.
fn tamper(path: &std::path::Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(path, bytes)?;
    Ok(())
}

#[tokio::test]
async fn given_tampered_truncated_or_incomplete_backup_when_restoring_then_refused_before_anything_is_written()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    shop_env(&env).await?;
    let dir = env.dir().join("store");
    let store = FsStore::new(&dir);
    let layout = Layout::new("");
    let manifest = back_up(env.client(), &store, &layout).await?;
    delete_namespace(&env.client(), "shop").await?;
    let keys = layout.backup("shop", &store::BackupId::parse(&manifest.backup_id).unwrap());
    let archive = dir.join(keys.resources());
    let original = std::fs::read(&archive)?;
    let untouched = cluster_state(&env.client(), true).await?;

    tamper(&archive)?;
    let err = restore(env.client(), &store, &layout, &options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tampered { .. }), "{err:?}");
    assert!(err.to_string().contains("resources.tar.zst"), "{err}");

    std::fs::write(&archive, &original[..original.len() - 100])?;
    let err = restore(env.client(), &store, &layout, &options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tampered { .. }), "{err:?}");

    std::fs::write(&archive, &original)?;
    let manifest_file = dir.join(keys.manifest());
    std::fs::remove_file(&manifest_file)?;
    let mut by_id = options();
    by_id.backup = BackupRef::Id(store::BackupId::parse(&manifest.backup_id).unwrap());
    let err = restore(env.client(), &store, &layout, &by_id).await.unwrap_err();
    assert!(matches!(err, Error::Incomplete { .. }), "{err:?}");
    let err = restore(env.client(), &store, &layout, &options())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }),
        "latest skips incomplete backups: {err:?}"
    );

    assert_same_state(
        &cluster_state(&env.client(), true).await?,
        &untouched,
        "something was written (objects or Events, anywhere in the cluster)",
    );
    Ok(())
}

/// A backup whose manifest matches its archive, but whose archive holds `entry` (built by hand).
async fn backup_with_entry(
    store: &dyn ObjectStore,
    layout: &Layout,
    header: tar::Header,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut tar = Vec::new();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let compressed = zstd::encode_all(&tar[..], 3)?;
    let id = store::BackupId::at(start_time());
    let keys = layout.backup("evil", &id);
    let written = store::put_bytes(store, &keys.resources(), &compressed).await?;
    let now = start_time();
    let manifest = Manifest {
        format_version: backup::FORMAT_VERSION,
        freezeframe_version: "test".into(),
        backup_id: id.to_string(),
        policy: "evil".into(),
        cluster: backup::ClusterIdentity {
            kube_system_uid: "x".into(),
        },
        namespaces: vec!["evil".into()],
        selector: None,
        started_at: now,
        finished_at: now,
        status: backup::Status::Completed,
        objects: BTreeMap::new(),
        cluster_objects: BTreeMap::new(),
        artifacts: BTreeMap::from([("resources.tar.zst".to_string(), written)]),
        problems: vec![],
        hooks: None,
        dumps: vec![],
        volumes: None,
        encryption: None,
    };
    store::put_bytes(store, &keys.manifest(), &serde_json::to_vec(&manifest)?).await?;
    Ok(())
}

#[tokio::test]
async fn given_archive_with_links_or_escaping_paths_when_restoring_then_refused_and_nothing_is_written_outside()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let layout = Layout::new("");
    let cases: Vec<(&str, tar::EntryType, &str)> = vec![
        (
            "resources/core/v1/configmaps/evil/x.yaml",
            tar::EntryType::Symlink,
            "/etc/passwd",
        ),
        (
            "resources/core/v1/configmaps/evil/../../../../../../tmp/ff-evil.yaml",
            tar::EntryType::Regular,
            "",
        ),
        ("/tmp/ff-evil-absolute.yaml", tar::EntryType::Regular, ""),
        (
            "resources/core/v1/configmaps/evil/h.yaml",
            tar::EntryType::Link,
            "resources/x",
        ),
    ];
    for (i, (path, kind, link)) in cases.into_iter().enumerate() {
        let store = FsStore::new(env.dir().join(format!("store-{i}")));
        let data = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: evil}\n";
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        let body: &[u8] = if kind == tar::EntryType::Regular {
            data
        } else {
            b""
        };
        header.set_size(body.len() as u64);
        if !link.is_empty() {
            header.set_link_name(link)?;
        }
        header.set_cksum();
        backup_with_entry(&store, &layout, header, body).await?;

        let err = restore(env.client(), &store, &layout, &options())
            .await
            .unwrap_err();

        assert!(matches!(err, Error::UnsafeEntry { .. }), "{path}: {err:?}");
        assert!(!namespace_exists(&env.client(), "evil").await?);
    }
    assert!(!std::path::Path::new("/tmp/ff-evil.yaml").exists());
    assert!(!std::path::Path::new("/tmp/ff-evil-absolute.yaml").exists());
    Ok(())
}

#[tokio::test]
async fn given_restore_job_manifest_when_applied_with_the_rbac_then_job_and_its_identity_exist()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.apply(include_str!("../manifests/rbac.yaml"))?;

    let applied = env.apply(include_str!("../manifests/restore-job.yaml"))?;

    assert_eq!(applied, 4);
    let job: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client(), "freezeframe");
    let job = job.get("freezeframe-restore").await?;
    let spec = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("freezeframe-restore"));
    assert_eq!(spec.containers[0].args.as_ref().unwrap()[0], "restore");
    Ok(())
}

/// Whether `rules` grant `verb` on `group`/`resource` (`pods/exec` for a subresource), by RBAC's rules:
/// `*` matches every group, every resource and subresource, every verb.
fn rbac_allows(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| {
        list.as_ref()
            .is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
    };
    rules.iter().any(|r| {
        r.verbs.iter().any(|v| v == "*" || v == verb)
            && has(&r.api_groups, group)
            && has(&r.resources, resource)
    })
}

#[tokio::test]
async fn given_restore_job_cluster_role_then_it_grants_every_permission_restore_needs() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    env.apply(include_str!("../manifests/rbac.yaml"))?;
    env.apply(include_str!("../manifests/restore-job.yaml"))?;
    let role = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(env.client())
        .get("freezeframe-restore")
        .await?;
    let rules = role.rules.unwrap_or_default();
    // As src/restore/mod.rs lists them.
    let mut needed: Vec<(&str, &str, &str)> = Vec::new();
    for (group, resource) in [
        ("", "configmaps"),
        ("", "persistentvolumeclaims"),
        ("apps", "statefulsets"),
        ("shop.example.com", "carts"),
    ] {
        for verb in ["create", "get", "patch"] {
            needed.push((group, resource, verb));
        }
    }
    for (group, resource) in [
        ("", "namespaces"),
        ("", "persistentvolumes"),
        ("storage.k8s.io", "storageclasses"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents"),
        ("snapshot.storage.k8s.io", "volumesnapshots"),
    ] {
        needed.extend([(group, resource, "create"), (group, resource, "get")]);
    }
    needed.extend([
        ("", "persistentvolumes", "patch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("apps", "deployments", "list"),
        ("apps", "deployments", "watch"),
        ("", "pods", "list"),
        ("", "pods/exec", "create"),
        ("", "pods/exec", "get"),
        ("", "events", "create"),
        // Restore movers (claims filled from the repository).
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("", "secrets", "create"),
        ("", "pods/log", "get"),
    ]);
    for (group, resource, verb) in needed {
        assert!(
            rbac_allows(&rules, group, resource, verb),
            "restore ClusterRole lacks {verb} {resource} in group {group:?}"
        );
    }
    assert!(
        !rbac_allows(&rules, "", "secrets", "delete"),
        "restore never deletes Secrets (a restore mover's goes with its Job)"
    );
    Ok(())
}

/// Namespace `db` with a one-pod StatefulSet `db`, and policy `app` whose dump `data` (`cat data.txt`, a
/// file a pre hook writes) has `restoreCommand: cat > restored.txt`; backed up into a directory store.
async fn back_up_dump(env: &TestEnv, store_dir: &std::path::Path) -> anyhow::Result<(Policy, Manifest)> {
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: db}\n\
         spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n\
         \x20 template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: busybox}]}\n",
    )?;
    let extra = r#"    volumes: {snapshot: none}
    rules:
      pre: [{podSelector: {app: db}, actions: [{value: "printf 'id,name\\n1,alpha\\n2,beta\\n' > data.txt"}]}]
    dumps:
      - name: data
        podSelector: {app: db}
        command: "cat data.txt"
        restoreCommand: "cat > restored.txt"
"#;
    let store = FsStore::new(store_dir);
    let (policy, manifest) = back_up_policy(env, &store, &Layout::new(""), "app", "db", extra).await?;
    assert_eq!(manifest.dumps.len(), 1, "{:?}", manifest.problems);
    assert_eq!(
        manifest.dumps[0].status,
        DumpStatus::Succeeded,
        "{:?}",
        manifest.dumps
    );
    Ok((policy, manifest))
}

/// Restore the latest backup with `db` mapped to `to`, waiting, replaying `policy`'s dumps unless `None`.
async fn restore_db(
    env: &TestEnv,
    store: &FsStore,
    to: &str,
    policy: Option<&Policy>,
) -> Result<(Plan, Report), Error> {
    let client = env.client();
    let target = KubeTarget::new(client.clone());
    let replayer = policy.map(|p| Replayer::new(KubeExecutor::new(client.clone()), client, p.dumps.clone()));
    let ctx = Context {
        store,
        layout: &Layout::new(""),
        target: &target,
        dumps: replayer.as_ref().map(|r| r as &dyn Replay),
        fill: None,
        identities: None,
    };
    let mut opts = options();
    opts.plan.namespace_map = [("db".to_string(), to.to_string())].into();
    opts.wait = Some(Duration::from_secs(60));
    let (plan, report) = restore::run(&ctx, &opts).await?;
    // Events are the reporter's part, as `freezeframe restore` emits them after the run.
    freezeframe::report::restore_events::emit(&target, &plan, &report).await;
    Ok((plan, report))
}

fn pod_file(env: &TestEnv, namespace: &str, pod: &str, file: &str) -> std::path::PathBuf {
    env.sandbox()
        .state_dir()
        .join("pods")
        .join(namespace)
        .join(pod)
        .join(file)
}

#[tokio::test]
async fn given_dump_with_restore_command_when_restored_into_another_namespace_with_wait_then_replayed_into_the_new_pod()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let store_dir = env.dir().join("store");
    let (policy, _) = back_up_dump(&env, &store_dir).await?;
    let original = std::fs::read(pod_file(&env, "db", "db-0", "data.txt"))?;
    let store = FsStore::new(&store_dir);

    let (_, report) = restore_db(&env, &store, "db-copy", Some(&policy)).await?;

    assert_eq!(report.failures, [], "{}", report.table());
    assert_eq!(report.outcome(), Outcome::Success);
    let [replay] = &report.dumps[..] else {
        panic!("one replay: {:?}", report.dumps)
    };
    assert_eq!(replay.status, ReplayStatus::Succeeded, "{replay:?}");
    assert_eq!(
        (replay.source.as_str(), replay.target.as_str()),
        ("db/db-0", "db-copy/db-0")
    );
    assert_eq!((replay.bytes, replay.exit_code), (original.len() as u64, Some(0)));
    assert_eq!(
        std::fs::read(pod_file(&env, "db-copy", "db-0", "restored.txt"))?,
        original
    );
    let json = serde_json::to_value(&report)?;
    assert_eq!(json["dumps"][0]["status"], "Succeeded", "{json}");
    let [event] = &restore_events(&env.client(), "db-copy").await?[..] else {
        panic!("one restore Event in db-copy")
    };
    assert_eq!(
        (event.type_.as_deref(), event.reason.as_deref()),
        (Some("Normal"), Some("RestoreCompleted"))
    );
    let message = event.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with(&format!("restore of app/{}: Success:", report.backup_id))
            && message.contains("0 failed; dumps replayed 1/1"),
        "{message}"
    );
    assert!(
        restore_events(&env.client(), "db").await?.is_empty(),
        "the source namespace got none"
    );

    // --skip-dumps: the same restore elsewhere without a replayer replays nothing.
    let (_, skipped) = restore_db(&env, &store, "db-skip", None).await?;
    assert_eq!(skipped.outcome(), Outcome::Success, "{}", skipped.table());
    assert!(skipped.dumps.is_empty());
    assert!(
        pod_file(&env, "db-skip", "db-0", "data.txt")
            .parent()
            .unwrap()
            .exists()
    );
    assert!(!pod_file(&env, "db-skip", "db-0", "restored.txt").exists());
    Ok(())
}

#[tokio::test]
async fn given_tampered_dump_object_when_restoring_then_restore_or_replay_refused_and_reported()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let store_dir = env.dir().join("store");
    let (policy, manifest) = back_up_dump(&env, &store_dir).await?;
    let store = FsStore::new(&store_dir);
    let layout = Layout::new("");
    let id = store::BackupId::parse(&manifest.backup_id).unwrap();
    let object = store_dir.join(layout.backup("app", &id).dump("data", "db", "db-0"));
    let original = std::fs::read(&object)?;

    // Tampered before the restore: the whole backup is refused before anything is written.
    tamper(&object)?;
    let err = restore_db(&env, &store, "db-copy", Some(&policy))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tampered { .. }), "{err:?}");
    assert!(err.to_string().contains("dumps/data/db/db-0"), "{err}");
    assert!(
        !namespace_exists(&env.client(), "db-copy").await?,
        "something was written"
    );

    // Tampered after the restore verified it: the replay itself refuses, reports, and fails the restore.
    std::fs::write(&object, &original)?;
    let (plan, restored) = restore_db(&env, &store, "db-copy", None).await?;
    assert_eq!(restored.outcome(), Outcome::Success, "{}", restored.table());
    let located = restore::source::locate(&store, &layout, Some("app"), &BackupRef::Latest).await?;
    let replayer = Replayer::new(
        KubeExecutor::new(env.client()),
        env.client(),
        policy.dumps.clone(),
    );
    for (bytes, stage) in [
        (&original[..original.len() - 3], "before the pod is touched"),
        (&[][..], ""),
    ] {
        let mut report = Report::new(&located, false);
        if stage.is_empty() {
            // Same size, other bytes: found at the end of the stream.
            std::fs::write(&object, &original)?;
            tamper(&object)?;
        } else {
            std::fs::write(&object, bytes)?;
        }
        replayer.replay(&store, &located, &plan, &mut report).await;
        let [replay] = &report.dumps[..] else {
            panic!("one replay: {:?}", report.dumps)
        };
        assert_eq!(replay.status, ReplayStatus::Refused, "{replay:?}");
        assert!(
            replay
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("corrupt or tampered"),
            "{replay:?}"
        );
        assert_eq!(report.failures.len(), 1, "{}", report.table());
        assert_eq!(report.failures[0].kind, "dumps");
        assert!(report.table().contains("Refused"), "{}", report.table());
        if !stage.is_empty() {
            assert_eq!(replay.bytes, 0, "{stage}");
            assert!(
                !pod_file(&env, "db-copy", "db-0", "restored.txt").exists(),
                "nothing reached the pod {stage}"
            );
        }
    }
    Ok(())
}

/// The restore Events in `namespace` (reason `Restore...`), each checked to be on the Namespace.
async fn restore_events(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<Event>> {
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await?;
    let namespace_uid = Api::<Namespace>::all(client.clone())
        .get(namespace)
        .await?
        .metadata
        .uid;
    let mine: Vec<Event> = events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Restore")))
        .collect();
    for e in &mine {
        let o = &e.involved_object;
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref(), &o.uid),
            (Some("Namespace"), Some(namespace), &namespace_uid),
            "{e:?}"
        );
        assert_eq!(e.reporting_component.as_deref(), Some("freezeframe"));
    }
    Ok(mine)
}

#[tokio::test]
async fn given_objects_failing_with_existing_fail_when_restored_again_then_a_warning_event_names_the_partial_failure()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let store_dir = env.dir().join("store");
    back_up_dump(&env, &store_dir).await?;
    let store = FsStore::new(&store_dir);
    restore_db(&env, &store, "db-copy", None).await?;

    let client = env.client();
    let target = KubeTarget::new(client.clone());
    let ctx = Context {
        store: &store,
        layout: &Layout::new(""),
        target: &target,
        dumps: None,
        fill: None,
        identities: None,
    };
    let mut again = options();
    again.plan.namespace_map = [("db".to_string(), "db-copy".to_string())].into();
    again.plan.existing = Existing::Fail;
    let (plan, report) = restore::run(&ctx, &again).await?;
    freezeframe::report::restore_events::emit(&target, &plan, &report).await;

    assert_eq!(report.outcome(), Outcome::PartiallyFailed, "{}", report.table());
    let events = restore_events(&client, "db-copy").await?;
    let reasons: Vec<(Option<&str>, Option<&str>)> = events
        .iter()
        .map(|e| (e.type_.as_deref(), e.reason.as_deref()))
        .collect();
    assert!(
        reasons.contains(&(Some("Normal"), Some("RestoreCompleted"))),
        "{reasons:?}"
    );
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("RestorePartiallyFailed"))
        .unwrap_or_else(|| panic!("no RestorePartiallyFailed: {reasons:?}"));
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let message = warning.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("PartiallyFailed")
            && message.contains(&format!("{} failed", report.failed()))
            && message.contains("already exists (--existing fail)"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn given_claim_whose_class_is_only_the_beta_annotation_when_backed_up_and_restored_then_its_storage_class_comes_along()
-> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    let env = TestEnv::new().await?;
    env.apply(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: legacy}\n\
         provisioner: sandbox.freezeframe.dev\nreclaimPolicy: Delete\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: cassandra}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: cassandra\n\
         \x20 annotations: {volume.beta.kubernetes.io/storage-class: legacy}\n\
         spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n",
    )?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "cassandra");
    tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(claims.clone(), "data", |c: Option<&PersistentVolumeClaim>| {
            c.and_then(|c| c.status.as_ref()?.phase.as_deref()) == Some("Bound")
        }),
    )
    .await??;
    let store = FsStore::new(env.dir().join("store"));
    let (_, manifest) = back_up_policy(
        &env,
        &store,
        &Layout::new(""),
        "legacy",
        "cassandra",
        "    volumes: {snapshot: none}\n",
    )
    .await?;
    assert_eq!(
        manifest
            .cluster_objects
            .get("storageclasses.storage.k8s.io")
            .map(|k| k.count),
        Some(1),
        "the annotation's class is a dependency: {:?}",
        manifest.cluster_objects
    );

    env.delete_namespace_and_wait("cassandra").await?;
    let classes: Api<StorageClass> = Api::all(env.client());
    classes.delete("legacy", &DeleteParams::default()).await?;
    crate::harness::wait_until_gone(&classes, "legacy", Duration::from_secs(10)).await?;

    let mut opts = options();
    opts.wait = Some(Duration::from_secs(30));
    let (_, report) = restore_with(&env.client(), &store, &Layout::new(""), &opts, None).await?;
    assert_eq!(report.outcome(), Outcome::Success, "{}", report.table());
    classes.get("legacy").await?;
    let claim = claims.get("data").await?;
    assert_eq!(
        claim.metadata.annotations.as_ref().unwrap()["volume.beta.kubernetes.io/storage-class"],
        "legacy"
    );
    let volume = claim.spec.as_ref().unwrap().volume_name.clone().expect("bound");
    let pv = Api::<PersistentVolume>::all(env.client()).get(&volume).await?;
    assert_eq!(
        pv.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("legacy")
    );
    Ok(())
}
