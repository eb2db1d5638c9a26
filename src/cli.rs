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
    /// Run the embedded Kubernetes API server (for demos and tests).
    Sandbox(crate::sandbox::cli::SandboxArgs),
    /// Check policies and print problems (exit 2) or each policy's next fire times.
    Validate(crate::policy::command::ValidateArgs),
    /// Back up one policy now (resources export; hooks and snapshots join as they land).
    Backup(crate::backup::command::BackupArgs),
    /// List the backups in a store, flagging incomplete ones.
    List(crate::backup::command::ListArgs),
}

/// Parse the process arguments and run the chosen subcommand.
pub fn run() -> anyhow::Result<Outcome> {
    let cli = Cli::parse();
    init_tracing();
    crate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Sandbox(args) => crate::sandbox::cli::run(args).await,
            Command::Validate(args) => crate::policy::command::run(args).await,
            Command::Backup(args) => crate::backup::command::backup(args).await,
            Command::List(args) => crate::backup::command::list(args).await,
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
