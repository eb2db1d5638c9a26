//! The sandbox's authentication and RBAC as the installed kubectl sees them: `kubectl create token`,
//! a ServiceAccount kubeconfig, Forbidden messages, `kubectl auth can-i`, exec needing `create`, 401 for
//! unknown tokens.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use freezeframe_sandbox::{Sandbox, SandboxOptions};

/// A sandbox with namespace `app`, ServiceAccount `app/backup` and a running pod `app/db`, plus a
/// private kubectl cache.
struct Cluster {
    sb: Sandbox,
    home: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let sb = Sandbox::start(SandboxOptions::default())
            .await
            .expect("sandbox starts");
        sb.apply_text(
            Path::new("<test>"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: backup, namespace: app}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: app}\n\
             spec: {containers: [{name: db, image: busybox}]}\n",
        )
        .unwrap();
        Cluster {
            sb,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn admin(&self) -> PathBuf {
        self.sb.kubeconfig_path().to_path_buf()
    }

    /// A kubeconfig with `token` for the sandbox's HTTPS listener, as a user would write one from
    /// `kubectl create token` (kubectl sends tokens only over TLS).
    fn kubeconfig_with_token(&self, token: &str) -> PathBuf {
        let path = self
            .home
            .path()
            .join(format!("kubeconfig-{}", uuid::Uuid::new_v4().simple()));
        let ca = self.home.path().join("ca.crt");
        std::fs::write(&ca, self.sb.ca_pem()).unwrap();
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: sa\n\
                 clusters: [{{name: sandbox, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: sa, user: {{token: \"{}\"}}}}]\n\
                 contexts: [{{name: sa, context: {{cluster: sandbox, user: sa, namespace: app}}}}]\n",
                self.sb.https_url(),
                ca.display(),
                token.trim()
            ),
        )
        .unwrap();
        path
    }

    async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(
                self.home
                    .path()
                    .join(format!("cache-{}", kubeconfig.display()).replace('/', "_")),
            )
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl runs");
        eprintln!(
            "kubectl {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    async fn ok(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let out = self.kubectl(kubeconfig, args).await;
        assert!(out.status.success(), "kubectl {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Apply RBAC objects as the admin.
    fn grant(&self, yaml: &str) {
        self.sb.apply_text(Path::new("<rbac>"), yaml).unwrap();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const EXEC_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
    metadata: {name: exec, namespace: app}\n\
    rules:\n- {apiGroups: [''], resources: [pods], verbs: [get]}\n\
    - {apiGroups: [''], resources: [pods/exec], verbs: [VERBS]}\n---\n\
    apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
    metadata: {name: exec, namespace: app}\n\
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: exec}\n\
    subjects: [{kind: ServiceAccount, name: backup, namespace: app}]\n";

#[tokio::test]
async fn given_token_from_kubectl_create_token_when_used_then_identity_discovery_and_forbidden_are_as_on_a_cluster()
 {
    let c = Cluster::start().await;
    let token = c
        .ok(&c.admin(), &["create", "token", "backup", "-n", "app"])
        .await;
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    let sa = c.kubeconfig_with_token(&token);

    let whoami = c
        .ok(
            &sa,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        )
        .await;
    assert_eq!(whoami, "system:serviceaccount:app:backup");
    // Discovery (system:discovery) works, so kubectl resolves kinds; the objects are not readable.
    c.ok(&sa, &["api-resources", "--api-group=apps"]).await;
    let denied = c.kubectl(&sa, &["get", "pods", "-n", "app"]).await;
    assert!(!denied.status.success());
    assert_eq!(
        stderr(&denied).trim(),
        "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:app:backup\" \
         cannot list resource \"pods\" in API group \"\" in the namespace \"app\""
    );
    let denied = c.kubectl(&sa, &["get", "namespace", "app"]).await;
    assert!(
        stderr(&denied).contains(
            "namespaces \"app\" is forbidden: User \"system:serviceaccount:app:backup\" \
             cannot get resource \"namespaces\" in API group \"\" in the namespace \"app\""
        ),
        "{}",
        stderr(&denied)
    );
}

#[tokio::test]
async fn given_role_for_exec_when_kubectl_auth_can_i_then_it_answers_truthfully() {
    let c = Cluster::start().await;
    let sa = c.home.path().join("sa-kubeconfig");
    c.sb.write_service_account_kubeconfig("app", "backup", &sa)
        .unwrap();

    let can_exec = [
        "auth",
        "can-i",
        "create",
        "pods",
        "--subresource=exec",
        "-n",
        "app",
    ];
    let no = c.kubectl(&sa, &can_exec).await;
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    assert_eq!(no.status.code(), Some(1));

    c.grant(&EXEC_ROLE.replace("VERBS", "get, create"));
    assert_eq!(c.ok(&sa, &can_exec).await.trim(), "yes");
    let mut elsewhere = can_exec;
    elsewhere[6] = "default";
    let other_namespace = c.kubectl(&sa, &elsewhere).await;
    assert_eq!(String::from_utf8_lossy(&other_namespace.stdout).trim(), "no");
    // As on a real server, `pods/exec` in can-i's TYPE/NAME form asks about a pod named "exec".
    let pod_named_exec = c
        .kubectl(&sa, &["auth", "can-i", "create", "pods/exec", "-n", "app"])
        .await;
    assert_eq!(String::from_utf8_lossy(&pod_named_exec.stdout).trim(), "no");
    let list = c.ok(&sa, &["auth", "can-i", "--list", "-n", "app"]).await;
    assert!(list.contains("pods/exec"), "{list}");
}

#[tokio::test]
async fn given_exec_granted_get_only_when_kubectl_exec_then_create_is_required_too() {
    let c = Cluster::start().await;
    let sa = c.home.path().join("sa-kubeconfig");
    c.sb.write_service_account_kubeconfig("app", "backup", &sa)
        .unwrap();

    c.grant(&EXEC_ROLE.replace("VERBS", "get"));
    let refused = c
        .kubectl(&sa, &["exec", "-n", "app", "db", "--", "echo", "hi"])
        .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            "pods \"db\" is forbidden: User \"system:serviceaccount:app:backup\" cannot create resource \
             \"pods/exec\" in API group \"\" in the namespace \"app\""
        ),
        "{}",
        stderr(&refused)
    );

    c.grant(&EXEC_ROLE.replace("VERBS", "get, create"));
    let out = c.ok(&sa, &["exec", "-n", "app", "db", "--", "echo", "hi"]).await;
    assert_eq!(out, "hi\n");
}

#[tokio::test]
async fn given_unknown_or_revoked_token_when_used_then_401_unauthorized() {
    let c = Cluster::start().await;
    let unknown = c.kubeconfig_with_token("not-a-token-of-this-sandbox");
    let out = c.kubectl(&unknown, &["get", "pods", "-n", "app"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "error: You must be logged in to the server (the server has asked for the client to provide credentials)"
        ),
        "{}",
        stderr(&out)
    );

    let sa = c.home.path().join("sa-kubeconfig");
    c.sb.write_service_account_kubeconfig("app", "backup", &sa)
        .unwrap();
    c.ok(&sa, &["auth", "whoami"]).await;
    c.ok(&c.admin(), &["delete", "serviceaccount", "backup", "-n", "app"])
        .await;
    let out = c.kubectl(&sa, &["auth", "whoami"]).await;
    assert!(
        stderr(&out).contains("error: You must be logged in to the server (Unauthorized)"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn given_no_credentials_over_https_when_requested_then_anonymous_sees_only_public_info() {
    let c = Cluster::start().await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(c.sb.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let version = https
        .get(format!("{}/version", c.sb.https_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), 200);
    let pods = https
        .get(format!("{}/api/v1/namespaces/app/pods", c.sb.https_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(pods.status(), 403);
    let status: serde_json::Value = pods.json().await.unwrap();
    assert_eq!(
        status,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"app\"",
            "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403})
    );
}
