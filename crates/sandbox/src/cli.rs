//! The `sandbox` binary's command line: run the embedded API server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;

use super::{Sandbox, SandboxOptions};

/// Start an in-memory Kubernetes API server on 127.0.0.1 and write a kubeconfig for it.
///
/// kubectl and kube-rs clients reach it through the kubeconfig; workloads applied to it get their
/// ReplicaSets, Pods and PVCs, and `kubectl exec` runs commands as host processes in the pod's directory
/// under the state dir (with POD_NAME, POD_NAMESPACE and CONTAINER_NAME set).
///
/// Example:
///   sandbox --kubeconfig /tmp/sandbox.kubeconfig --manifests ./examples &
///   kubectl --kubeconfig /tmp/sandbox.kubeconfig get pods -A
#[derive(Debug, clap::Parser)]
#[command(name = "sandbox", version, verbatim_doc_comment)]
pub struct SandboxArgs {
    /// Where to write the kubeconfig that kubectl and kube-rs use to reach the sandbox.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: PathBuf,
    /// Directory for pod working directories and volume data (a temporary directory if omitted).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Apply every *.yaml / *.yml / *.json file in this directory at start (like `kubectl apply -f`).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
}

/// Start the sandbox, apply `--manifests`, print `sandbox ready: …`, serve until SIGINT/SIGTERM.
pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxOptions {
        port: args.port,
        state_dir: args.state_dir,
        kubeconfig: Some(args.kubeconfig.clone()),
        ..Default::default()
    })
    .await
    .context("starting the sandbox")?;
    if let Some(dir) = &args.manifests {
        let n = sandbox
            .load_manifests(dir)
            .with_context(|| format!("loading manifests from {}", dir.display()))?;
        tracing::info!(objects = n, dir = %dir.display(), "manifests applied");
    }
    println!(
        "sandbox ready: {} (kubeconfig {}, state dir {})",
        sandbox.url(),
        args.kubeconfig.display(),
        sandbox.state_dir().display()
    );
    wait_for_signal().await?;
    tracing::info!("signal received; stopping the sandbox");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
