//! The `sandbox` binary's command line: run the embedded API server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;

use super::{Sandbox, SandboxOptions};

/// Start an in-memory Kubernetes API server on 127.0.0.1 and write a kubeconfig for it.
///
/// kubectl and kube-rs clients reach it through the kubeconfig; workloads applied to it get their
/// ReplicaSets, Pods and PVCs, and `kubectl exec` runs commands as host processes in the pod's directory
/// under the state dir (with POD_NAME, POD_NAMESPACE and CONTAINER_NAME set), the pod's volumes at their
/// mount paths. Pods of freezeframe's own image (--image-name) really run, as --image-binary.
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
    /// Repository name (last path segment) of freezeframe's image: pods of it run for real as host
    /// processes [default: freezeframe].
    #[arg(long, value_name = "NAME")]
    pub image_name: Option<String>,
    /// The binary that image's /usr/local/bin/freezeframe maps to [default: env
    /// FREEZEFRAME_SANDBOX_IMAGE_BINARY, else freezeframe next to this executable].
    #[arg(long, value_name = "PATH")]
    pub image_binary: Option<PathBuf>,
}

/// Start the sandbox, apply `--manifests`, print `sandbox ready: …`, serve until SIGINT/SIGTERM.
pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(SandboxOptions {
        port: args.port,
        state_dir: args.state_dir,
        kubeconfig: Some(args.kubeconfig.clone()),
        own_image_name: args.image_name,
        own_image_binary: args.image_binary,
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
