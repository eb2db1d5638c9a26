//! `freezeframe sandbox`: run the embedded API server until SIGINT/SIGTERM.

use std::path::PathBuf;

use crate::exit::Outcome;

/// Start an in-memory Kubernetes API server on 127.0.0.1 and write a kubeconfig for it.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Where to write the kubeconfig that kubectl and kube-rs use to reach the sandbox.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Directory for pod working directories and volume data (a temporary directory if omitted).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Load every *.yaml / *.yml / *.json file in this directory at start (like `kubectl apply -f`).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
}

pub async fn run(_args: SandboxArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("the sandbox server is being assembled")
}
