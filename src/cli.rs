//! Command-line interface: clap definitions and dispatch to one module per subcommand.

use clap::{Parser, Subcommand};

use crate::exit::Outcome;

/// Application-consistent disaster recovery for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "freezeframe", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole story on one machine: sandbox cluster, example app, group-frozen backup to a local store.
    Demo(crate::demo::DemoArgs),
    /// Run the embedded Kubernetes API server (for demos and tests).
    Sandbox(crate::sandbox::cli::SandboxArgs),
    /// Check policies and print problems (exit 2) or each policy's next fire times.
    Validate(crate::policy::command::ValidateArgs),
    /// List policies: schedule, last and next run, storage and last result (exit 2 if any is invalid).
    #[command(after_help = POLICIES_HELP)]
    Policies(crate::policy::list::PoliciesArgs),
    /// Back up one policy now: freeze hooks, dumps, resources export, manifest (exit 0/3/1).
    Backup(crate::backup::command::BackupArgs),
    /// List the backups in a store, flagging incomplete ones.
    List(crate::backup::command::ListArgs),
    /// Show one stored backup: status, counts, artifacts, hooks, dumps, snapshots (incomplete ones too).
    Describe(crate::backup::command::DescribeArgs),
    /// Verify a stored backup and restore it here, into other namespaces, or into another cluster.
    Restore(crate::restore::command::RestoreArgs),
}

const POLICIES_HELP: &str = "\
Columns:
  SCHEDULE        the schedule as written and the time zone it is read in
  LAST SCHEDULED  the fire time last served (or when the policy was first seen), from the ConfigMap
                  annotation last-scheduled.freezeframe.dev/<policy>
  NEXT RUN        the next fire time a CronJob tick will run; `due now` when the next tick runs it;
                  `-` when suspended
  LAST RESULT     <phase> <finished at> <backup id>, from last-result.freezeframe.dev/<policy>

Invalid policies are listed as INVALID and never run; `freezeframe validate` prints why.

Exit status: 0 all policies valid, 2 some policy or shared part invalid, 1 the policies could not be read.

Examples:
  # The default ConfigMap (freezeframe-policies in FREEZEFRAME_NAMESPACE or the pod's namespace)
  freezeframe policies

  # A ConfigMap in another namespace, as JSON for scripts
  freezeframe policies --policies dr/freezeframe-policies -o json
  freezeframe policies -o json | jq '.policies[] | select(.due) | .name'   # due at the next tick

  # A local file before applying it (a file has no run state: LAST SCHEDULED and LAST RESULT show -)
  freezeframe policies --policy-file policies/cassandra.yaml";

/// Parse the process arguments and run the chosen subcommand.
pub fn run() -> anyhow::Result<Outcome> {
    let cli = Cli::parse();
    init_tracing();
    crate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo(args) => crate::demo::run(args).await,
            Command::Sandbox(args) => crate::sandbox::cli::run(args).await,
            Command::Validate(args) => crate::policy::command::run(args).await,
            Command::Policies(args) => crate::policy::list::run(args).await,
            Command::Backup(args) => crate::backup::command::backup(args).await,
            Command::List(args) => crate::backup::command::list(args).await,
            Command::Describe(args) => crate::backup::command::describe(args).await,
            Command::Restore(args) => crate::restore::command::run(args).await,
        }
    })
}

fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("FREEZEFRAME_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FREEZEFRAME_LOG_FORMAT").is_ok_and(|v| v == "json");
    if json {
        let _ = fmt()
            .with_env_filter(filter)
            .json()
            .with_writer(std::io::stderr)
            .try_init();
    } else {
        let _ = fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
