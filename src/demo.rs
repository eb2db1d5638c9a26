//! `freezeframe demo`: the whole story on one machine — a sandbox cluster with a stateful app, a policy
//! with group freeze hooks, a backup to a local directory, the stored result, and a restore of it into a
//! new namespace with the volume data back.
//!
//! The demo drives freezeframe through its public command line (`backup`, `list`) against the sandbox's
//! kubeconfig, exactly as a CronJob would run it, so what it shows is what users get.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use tokio::io::AsyncReadExt;

use crate::exit::Outcome;
use crate::sandbox::{Sandbox, SandboxOptions};

/// Run the demo: sandbox cluster, example app, a backup with group freeze hooks to a local store.
///
/// Everything stays under --dir (a temporary directory if omitted): the sandbox's state (pod and volume
/// directories), the policy file and the backups. With --keep-running the sandbox keeps serving after the
/// demo so you can look around with kubectl; stop it with Ctrl-C.
///
/// Example:
///   freezeframe demo --dir /tmp/ff-demo --keep-running
///   kubectl --kubeconfig /tmp/ff-demo/kubeconfig -n demo-shop get pods,pvc
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Directory for the sandbox state, the policy file and the local backup store.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the sandbox serving after the demo (until SIGINT/SIGTERM).
    #[arg(long)]
    pub keep_running: bool,
}

/// The example application: a three-node database (StatefulSet with claims), a web tier, config.
pub const APP: &str = include_str!("../policies/demo/app.yaml");
/// The policy that backs it up: group freeze of all database pods, local filesystem store.
pub const POLICY: &str = include_str!("../policies/demo/policy.yaml");

fn step(n: usize, text: &str) {
    println!("\n[{n}] {text}");
}

pub async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let (dir, _temp) = match args.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("freezeframe-demo-")
                .tempdir()
                .context("creating a temp dir")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store_dir = dir.join("backups");
    std::fs::create_dir_all(&store_dir).with_context(|| format!("creating {}", store_dir.display()))?;

    step(1, "Starting the sandbox Kubernetes API server");
    let sandbox = Sandbox::start(SandboxOptions {
        state_dir: Some(dir.join("state")),
        kubeconfig: Some(dir.join("kubeconfig")),
        ..Default::default()
    })
    .await
    .context("starting the sandbox")?;
    println!(
        "    serving {} (kubeconfig {})",
        sandbox.url(),
        sandbox.kubeconfig_path().display()
    );

    step(
        2,
        "Deploying the example app (namespace demo-shop: 3-node database, web tier, config)",
    );
    let n = sandbox
        .apply_text(Path::new("policies/demo/app.yaml"), APP)
        .context("applying the demo app")?;
    let client = sandbox
        .client()
        .await
        .context("building a client for the sandbox")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo-shop");
    let db_pods = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .context("listing database pods")?;
    println!(
        "    {n} objects applied; database pods: {}",
        names(&db_pods.items).join(", ")
    );

    step(
        3,
        "Writing data into each database pod's volume (through kubectl-style exec)",
    );
    for p in &db_pods.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let out = exec(
            &pods,
            &name,
            "echo \"orders of $POD_NAME\" > var/lib/db/orders && cat var/lib/db/orders",
        )
        .await?;
        println!("    {name}: {}", out.trim());
    }

    step(
        4,
        "Backing up policy demo-shop: pre hooks freeze all database pods at once, post hooks thaw",
    );
    let policy_file = dir.join("policy.yaml");
    std::fs::write(
        &policy_file,
        POLICY.replace("/tmp/freezeframe-demo/backups", &store_dir.display().to_string()),
    )
    .with_context(|| format!("writing {}", policy_file.display()))?;
    let status = freezeframe(
        &sandbox,
        &["backup", "--policy", "demo-shop", "--policy-file"],
        &policy_file,
    )
    .await?;
    let outcome = match status {
        0 => Outcome::Success,
        3 => Outcome::PartiallyFailed,
        2 => Outcome::InvalidInput,
        _ => Outcome::Failed,
    };

    step(5, "What the store holds");
    let url = format!("file://{}", store_dir.display());
    freezeframe(&sandbox, &["list", "--storage", &url], Path::new("")).await?;
    for p in &db_pods.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let marks = exec(&pods, &name, "cat frozen-at thawed-at 2>/dev/null | tr '\\n' ' '").await?;
        println!("    {name} hook marks: {}", marks.trim());
    }
    step(
        6,
        "Restoring the backup into namespace demo-shop-restored (claims come back from the snapshots)",
    );
    let restored = freezeframe(
        &sandbox,
        &[
            "restore",
            "--backup",
            "latest",
            "--policy",
            "demo-shop",
            "--namespace-map",
            "demo-shop=demo-shop-restored",
            "--wait",
            "--policy-file",
        ],
        &policy_file,
    )
    .await?;
    let restored_pods: Api<Pod> = Api::namespaced(client.clone(), "demo-shop-restored");
    for name in names(&db_pods.items) {
        let data = exec(&restored_pods, &name, "cat var/lib/db/orders").await?;
        println!("    demo-shop-restored/{name}: {}", data.trim());
    }
    let outcome = if restored == 0 { outcome } else { Outcome::Failed };

    println!(
        "\nBackups are in {}; the sandbox state is in {}.",
        store_dir.display(),
        sandbox.state_dir().display()
    );

    if args.keep_running {
        println!(
            "sandbox ready: {} — try: kubectl --kubeconfig {} get pods -A (Ctrl-C stops)",
            sandbox.url(),
            sandbox.kubeconfig_path().display()
        );
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    Ok(outcome)
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

/// `sh -c script` in a pod's only container; its stdout, or an error naming the pod and exit status.
async fn exec(pods: &Api<Pod>, pod: &str, script: &str) -> anyhow::Result<String> {
    let mut proc = pods
        .exec(pod, ["sh", "-c", script], &AttachParams::default().stderr(false))
        .await
        .with_context(|| format!("exec in pod {pod}"))?;
    let status = proc.take_status();
    let mut out = String::new();
    if let Some(mut stdout) = proc.stdout() {
        stdout
            .read_to_string(&mut out)
            .await
            .with_context(|| format!("reading output of pod {pod}"))?;
    }
    if let Some(status) = status
        && let Some(s) = status.await
        && s.status.as_deref() == Some("Failure")
    {
        bail!("command in pod {pod} failed: {}", s.message.unwrap_or_default());
    }
    Ok(out)
}

/// Run this binary's subcommand against the sandbox, streaming its output; returns its exit code.
async fn freezeframe(sandbox: &Sandbox, args: &[&str], extra: &Path) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locating the freezeframe binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args);
    if !extra.as_os_str().is_empty() {
        cmd.arg(extra);
    }
    let status = cmd
        .env("KUBECONFIG", sandbox.kubeconfig_path())
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running freezeframe {}", args.join(" ")))?;
    Ok(status.code().unwrap_or(1))
}
