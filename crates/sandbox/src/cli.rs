//! The `sandbox` binary's command line: run the embedded API server until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::cluster::RandomFaults;
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
    /// HTTPS port on 127.0.0.1 (0 = pick a free one): the same API over TLS, for ServiceAccount
    /// kubeconfigs (kubectl sends bearer tokens only over TLS).
    #[arg(long, default_value_t = 0)]
    pub https_port: u16,
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
    /// Share of API requests (0.0 to 1.0) answered 429 with Retry-After, 500 or 503, or whose connection
    /// is dropped: a drill for clients' retries. Exec sessions and discovery are never touched.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_rate: f64,
    /// Seed of the random faults: the same seed and requests give the same faults.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fault_seed: u64,
    /// Delay every request of the fault verbs by this long (`50ms`, `1s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_latency)]
    pub fault_latency: Option<Duration>,
    /// Only these verbs fail or wait (get, list, watch, create, update, patch, delete, deletecollection);
    /// all by default.
    #[arg(long, value_name = "VERB,...", value_delimiter = ',')]
    pub fault_verbs: Vec<String>,
    /// Serve the first N requests of the fault verbs normally.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fault_after: u64,
}

impl SandboxArgs {
    /// The random faults the flags ask for, if any.
    pub fn random_faults(&self) -> Option<RandomFaults> {
        (self.fault_rate > 0.0 || self.fault_latency.is_some()).then(|| RandomFaults {
            rate: self.fault_rate,
            seed: self.fault_seed,
            latency: self.fault_latency.unwrap_or_default(),
            verbs: self.fault_verbs.clone(),
            after: self.fault_after,
        })
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("found {text:?}; allowed: a share from 0.0 to 1.0, such as 0.2"))
}

fn parse_latency(text: &str) -> Result<Duration, String> {
    let bad = || format!("found {text:?}; allowed: a duration in ms or s, such as 50ms or 1s");
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(bad()),
    }
}

/// Start the sandbox, apply `--manifests`, print `sandbox ready: …`, serve until SIGINT/SIGTERM.
pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let random_faults = args.random_faults();
    let sandbox = Sandbox::start(SandboxOptions {
        port: args.port,
        https_port: args.https_port,
        state_dir: args.state_dir,
        kubeconfig: Some(args.kubeconfig.clone()),
        own_image_name: args.image_name,
        own_image_binary: args.image_binary,
        random_faults,
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
        "sandbox ready: {} (and {}; kubeconfig {}, state dir {})",
        sandbox.url(),
        sandbox.https_url(),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn given_fault_flags_then_they_become_the_random_faults() {
        let args = SandboxArgs::parse_from([
            "sandbox",
            "--kubeconfig",
            "k",
            "--fault-rate",
            "0.2",
            "--fault-seed",
            "7",
            "--fault-latency",
            "50ms",
            "--fault-verbs",
            "list,get",
            "--fault-after",
            "3",
        ]);
        assert_eq!(
            args.random_faults(),
            Some(RandomFaults {
                rate: 0.2,
                seed: 7,
                latency: Duration::from_millis(50),
                verbs: vec!["list".into(), "get".into()],
                after: 3,
            })
        );
        assert_eq!(
            SandboxArgs::parse_from(["sandbox", "--kubeconfig", "k"]).random_faults(),
            None
        );
    }

    #[test]
    fn given_a_rate_above_one_or_a_latency_without_unit_then_the_flag_is_refused() {
        assert!(SandboxArgs::try_parse_from(["sandbox", "--kubeconfig", "k", "--fault-rate", "2"]).is_err());
        assert!(
            SandboxArgs::try_parse_from(["sandbox", "--kubeconfig", "k", "--fault-latency", "50"]).is_err()
        );
    }
}
