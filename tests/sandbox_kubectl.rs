//! The sandbox as the installed kubectl (1.32, picked by the server's /version) sees it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use freezeframe_sandbox::cluster::RandomFaults;
use freezeframe_sandbox::{Sandbox, SandboxOptions};

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/shop.yaml");

/// A sandbox plus a private HOME/cache so kubectl's discovery cache never leaks between tests.
struct Kubectl {
    sb: Sandbox,
    home: tempfile::TempDir,
}

impl Kubectl {
    async fn start() -> Self {
        Self::start_with(SandboxOptions::default()).await
    }

    async fn start_with(options: SandboxOptions) -> Self {
        let sb = Sandbox::start(options).await.expect("sandbox starts");
        Kubectl {
            sb,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(self.sb.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.home.path().join("cache"))
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl runs")
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Apply the shop fixture as a user would: twice, since its CR needs the CRD served first.
    async fn apply_shop(&self) {
        self.run(&["apply", "-f", SHOP]).await;
        self.ok(&["apply", "-f", SHOP]).await;
    }

    fn kubeconfig(&self) -> PathBuf {
        self.sb.kubeconfig_path().to_path_buf()
    }
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn given_multi_document_manifest_when_applied_twice_then_everything_including_the_cr_exists() {
    let k = Kubectl::start().await;
    let first = k.run(&["apply", "-f", SHOP]).await;
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        !first.status.success(),
        "the CR cannot map before its CRD is served"
    );
    assert!(
        stderr.contains("no matches for kind \"Cart\" in version \"shop.example.com/v1\""),
        "{stderr}"
    );
    let second = k.ok(&["apply", "-f", SHOP]).await;
    assert!(
        second.contains("cart.shop.example.com/cart-1 created"),
        "{second}"
    );
    assert!(second.contains("deployment.apps/web unchanged"), "{second}");

    let pods = k
        .ok(&["get", "pods", "-n", "shop", "-l", "app=db", "-o", "name"])
        .await;
    assert_eq!(
        pods.lines().collect::<Vec<_>>(),
        ["pod/db-0", "pod/db-1", "pod/db-2"]
    );
    let deploy = k
        .ok(&["get", "deployment", "web", "-n", "shop", "-o", "yaml"])
        .await;
    assert!(deploy.contains("readyReplicas: 2"), "{deploy}");
    assert!(
        deploy.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{deploy}"
    );
    let claims = k
        .ok(&[
            "get",
            "pvc",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ])
        .await;
    assert_eq!(claims, "Bound Bound Bound Bound");
    let resources = k.ok(&["api-resources", "--api-group", "shop.example.com"]).await;
    assert!(
        resources.contains("carts") && resources.contains("ct") && resources.contains("Cart"),
        "{resources}"
    );
    let cart = k
        .ok(&[
            "get",
            "carts",
            "-n",
            "shop",
            "cart-1",
            "-o",
            "jsonpath={.spec.items}",
        ])
        .await;
    assert_eq!(cart, r#"["apple","pear"]"#);
    let table = k.ok(&["get", "pods", "-n", "shop"]).await;
    assert!(table.starts_with("NAME") && table.contains("Running"), "{table}");
}

#[tokio::test]
async fn given_pod_when_kubectl_exec_then_output_printed_and_exit_code_returned() {
    let k = Kubectl::start().await;
    k.apply_shop().await;
    let out = k
        .run(&[
            "exec",
            "-n",
            "shop",
            "db-1",
            "--",
            "sh",
            "-c",
            "echo hello from $POD_NAME; exit 3",
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from db-1\n");
    assert_eq!(out.status.code(), Some(3));
    let piped = k
        .command(&["exec", "-i", "-n", "shop", "db-0", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = piped;
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(b"12345").await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
}

#[tokio::test]
async fn given_resources_when_kubectl_patches_and_deletes_then_changes_are_served() {
    let k = Kubectl::start().await;
    k.apply_shop().await;
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "shop",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ])
    .await;
    let pods = k
        .ok(&["get", "pods", "-n", "shop", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(pods.lines().count(), 3);
    k.ok(&[
        "patch",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/color","value":"blue"}]"#,
    ])
    .await;
    let color = k
        .ok(&[
            "get",
            "cm",
            "web-config",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}",
        ])
        .await;
    assert_eq!(color, "blue");
    k.ok(&[
        "patch",
        "carts",
        "cart-1",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"items":["fig"]}}"#,
    ])
    .await;
    k.ok(&["scale", "statefulset", "db", "-n", "shop", "--replicas=1"])
        .await;
    let db = k
        .ok(&["get", "pods", "-n", "shop", "-l", "app=db", "-o", "name"])
        .await;
    assert_eq!(db.trim(), "pod/db-0");

    k.ok(&["delete", "configmap", "web-config", "-n", "shop"]).await;
    let missing = k.run(&["get", "configmap", "web-config", "-n", "shop"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains(r#"Error from server (NotFound): configmaps "web-config" not found"#)
    );
    k.ok(&["delete", "namespace", "shop"]).await;
    let gone = k.run(&["get", "namespace", "shop"]).await;
    assert!(!gone.status.success());
}

#[tokio::test]
async fn given_kubectl_get_watch_when_object_changes_then_the_change_is_printed() {
    let k = Kubectl::start().await;
    let mut child = k
        .command(&["get", "configmaps", "-n", "default", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("configmap/kube-root-ca.crt"));
    let client = k.sb.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "fresh"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.as_deref(), Some("configmap/fresh"));
    child.kill().await.unwrap();
    let _ = text(&k.kubeconfig());
}

#[tokio::test]
async fn given_server_side_apply_when_kubectl_applies_then_object_is_created_and_managed() {
    let k = Kubectl::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cm.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    let out = k.ok(&["apply", "--server-side", "-f", &text(&file)]).await;
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let managers = k
        .ok(&[
            "get",
            "cm",
            "ssa",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await;
    assert!(managers.contains("kubectl"), "{managers}");
}

#[tokio::test]
async fn given_cronjob_when_triggered_with_create_job_from_then_job_runs_a_labelled_pod() {
    let k = Kubectl::start().await;
    k.ok(&[
        "create",
        "cronjob",
        "backup",
        "--image=busybox",
        "--schedule=0 */6 * * *",
        "--",
        "echo",
        "hi",
    ])
    .await;
    k.ok(&["create", "job", "--from=cronjob/backup", "backup-now"])
        .await;
    let owner = k
        .ok(&[
            "get",
            "job",
            "backup-now",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}",
        ])
        .await;
    assert_eq!(owner, "CronJob");
    let pods = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "job-name=backup-now",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences[0].name}",
        ])
        .await;
    assert_eq!(pods, "backup-now");
    let active = k
        .ok(&["get", "job", "backup-now", "-o", "jsonpath={.status.active}"])
        .await;
    assert_eq!(active, "1");
}

#[tokio::test]
async fn given_typed_kubectl_creates_sent_as_protobuf_when_read_back_then_fields_survive() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "team-a"]).await;
    let phase = k
        .ok(&["get", "namespace", "team-a", "-o", "jsonpath={.status.phase}"])
        .await;
    assert_eq!(phase, "Active");
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
    ])
    .await;
    let secret = k
        .ok(&[
            "-n",
            "team-a",
            "get",
            "secret",
            "creds",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await;
    assert_eq!(secret, "aHVudGVyMg==");
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "deployment",
        "idle",
        "--image=nginx",
        "--replicas=0",
    ])
    .await;
    let replicas = k
        .ok(&[
            "-n",
            "team-a",
            "get",
            "deployment",
            "idle",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(replicas, "0");
}

#[tokio::test]
async fn given_admin_kubeconfig_when_kubectl_auth_checks_then_everything_is_allowed_and_identity_is_admin() {
    let k = Kubectl::start().await;
    assert_eq!(
        k.ok(&["auth", "can-i", "create", "pods/exec", "-n", "default"])
            .await
            .trim(),
        "yes"
    );
    let whoami = k
        .ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .await;
    assert_eq!(whoami, "kubernetes-admin");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn given_namespace_with_workloads_when_kubectl_deletes_it_then_kubectl_waits_until_it_is_gone() {
    let k = Kubectl::start().await;
    k.apply_shop().await;

    let out = k.ok(&["delete", "namespace", "shop"]).await;

    assert_eq!(out.trim(), r#"namespace "shop" deleted"#);
    let gone = k.run(&["get", "namespace", "shop"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains(r#"Error from server (NotFound): namespaces "shop" not found"#),
        "kubectl returned only once the namespace was gone: {}",
        stderr(&gone)
    );
    let pods = k.run(&["get", "pods", "-n", "shop", "-o", "name"]).await;
    assert!(
        pods.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&pods.stdout)
    );
}

#[tokio::test]
async fn given_held_namespace_when_kubectl_deletes_without_waiting_then_it_is_terminating_and_refuses_new_content()
 {
    let k = Kubectl::start().await;
    let manifest = k.home.path().join("hold.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: hold}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: hold, finalizers: [example.com/hold]}\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", &text(&manifest)]).await;

    let out = k.ok(&["delete", "namespace", "hold", "--wait=false"]).await;

    assert_eq!(out.trim(), r#"namespace "hold" deleted"#);
    let table = k.ok(&["get", "namespace", "hold"]).await;
    assert!(
        table.starts_with("NAME") && table.contains("Terminating"),
        "{table}"
    );
    let refused = k.run(&["create", "configmap", "late", "-n", "hold"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            r#"configmaps "late" is forbidden: unable to create new content in namespace hold because it is being terminated"#
        ),
        "{}",
        stderr(&refused)
    );
    k.ok(&[
        "wait",
        "--for=condition=NamespaceContentRemaining",
        "namespace/hold",
        "--timeout=30s",
    ])
    .await;
    let conditions = k
        .ok(&[
            "get",
            "namespace",
            "hold",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="NamespaceContentRemaining")].message}"#,
        ])
        .await;
    assert_eq!(
        conditions,
        "Some resources are remaining: configmaps. has 1 resource instances"
    );
    let again = k.ok(&["delete", "namespace", "hold", "--wait=false"]).await;
    assert_eq!(
        again.trim(),
        r#"namespace "hold" deleted"#,
        "a second delete is no error"
    );

    k.ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "hold",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    k.ok(&["wait", "--for=delete", "namespace/hold", "--timeout=30s"])
        .await;
}

#[tokio::test]
async fn given_crd_with_custom_resources_when_kubectl_deletes_it_then_they_go_first_and_new_ones_are_refused()
{
    let k = Kubectl::start().await;
    let crd = k.home.path().join("crd.yaml");
    std::fs::write(
        &crd,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
         metadata: {name: widgets.example.com}\n\
         spec:\n  group: example.com\n  scope: Namespaced\n  names: {kind: Widget, plural: widgets, singular: widget}\n\
         \x20 versions:\n  - name: v1\n    served: true\n    storage: true\n\
         \x20   schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
    )
    .unwrap();
    let widgets = k.home.path().join("widgets.yaml");
    std::fs::write(
        &widgets,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: plain, namespace: default}\n---\n\
         apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: held, namespace: default, finalizers: [example.com/hold]}\n",
    )
    .unwrap();
    let late = k.home.path().join("late.yaml");
    std::fs::write(
        &late,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: late, namespace: default}\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", &text(&crd)]).await;
    k.ok(&["apply", "-f", &text(&widgets)]).await;

    k.ok(&["delete", "crd", "widgets.example.com", "--wait=false"])
        .await;

    k.ok(&[
        "wait",
        "--for=delete",
        "widget/plain",
        "-n",
        "default",
        "--timeout=30s",
    ])
    .await;
    let left = k.ok(&["get", "widgets", "-n", "default", "-o", "name"]).await;
    assert_eq!(left.trim(), "widget.example.com/held");
    let refused = k.run(&["create", "-f", &text(&late)]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("create not allowed while custom resource definition is terminating"),
        "{}",
        stderr(&refused)
    );
    let reason = k
        .ok(&[
            "get",
            "crd",
            "widgets.example.com",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Terminating")].reason}"#,
        ])
        .await;
    assert_eq!(reason, "InstanceDeletionInProgress");

    k.ok(&[
        "patch",
        "widget",
        "held",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    k.ok(&["wait", "--for=delete", "crd/widgets.example.com", "--timeout=30s"])
        .await;
    let resources = k.ok(&["api-resources", "--api-group", "example.com"]).await;
    assert!(!resources.contains("widgets"), "{resources}");
}

#[tokio::test]
async fn given_real_namespace_deletion_grace_when_kubectl_deletes_a_file_with_a_namespace_and_its_contents_then_each_is_reported_deleted()
 {
    // A real namespace controller waits 5 s before emptying a namespace, so kubectl, deleting the file's
    // objects one by one, finds every one of them.
    let k = Kubectl::start_with(SandboxOptions {
        namespace_deletion_delay: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    let manifest = k.home.path().join("app.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: app}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: token, namespace: app}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: app}\n\
         spec: {replicas: 2, selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, \
         spec: {containers: [{name: web, image: nginx}]}}}\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", &text(&manifest)]).await;

    let out = k.run(&["delete", "-f", &text(&manifest)]).await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            r#"namespace "app" deleted"#,
            r#"configmap "settings" deleted"#,
            r#"secret "token" deleted"#,
            r#"deployment.apps "web" deleted"#,
        ]
    );
    let gone = k.run(&["get", "namespace", "app"]).await;
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
}

#[tokio::test]
async fn given_random_faults_on_reads_when_kubectl_gets_then_it_retries_and_every_call_succeeds() {
    let k = Kubectl::start().await;
    k.apply_shop().await;
    k.sb.cluster().set_random_faults(Some(RandomFaults {
        rate: 0.2,
        seed: 5,
        latency: Duration::from_millis(5),
        verbs: vec!["get".into(), "list".into()],
        after: 0,
    }));

    for _ in 0..5 {
        let out = k
            .ok(&["get", "-n", "shop", "deployments,configmaps,services"])
            .await;
        assert!(out.contains("web"), "{out}");
        k.ok(&["get", "-n", "shop", "configmap", "web-config", "-o", "name"])
            .await;
    }

    assert!(
        k.sb.cluster().random_faults_injected() > 0,
        "no fault was injected"
    );
}
