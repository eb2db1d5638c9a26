//! Command-line interface: clap definitions and dispatch to one module per subcommand.

use std::time::Duration;

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
    /// The whole story on one machine: sandbox cluster, example app, group-frozen backup to a local store
    /// (only in builds with the `demo` feature; never in the image).
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// Check policies and print problems (exit 2) or each policy's next fire times.
    Validate(crate::app::validate::ValidateArgs),
    /// List policies: schedule, last and next run, storage and last result (exit 2 if any is invalid).
    #[command(after_help = POLICIES_HELP)]
    Policies(crate::app::policies::PoliciesArgs),
    /// One CronJob tick: back up every policy that is due (or forced with --now), one run at a time.
    #[command(after_help = RUN_HELP)]
    Run(crate::app::run::RunArgs),
    /// Back up one policy now: freeze hooks, dumps, resources export, manifest, then prune, Events,
    /// annotations and webhooks (exit 0/3/1; webhook failures never change it).
    Backup(crate::app::backup::BackupArgs),
    /// Apply a policy's retention now: keep or prune each stored backup, saying why (--dry-run: only say).
    #[command(after_help = crate::app::prune::PRUNE_HELP)]
    Prune(crate::app::prune::PruneArgs),
    /// List the backups in a store, flagging incomplete ones.
    List(crate::app::stored::ListArgs),
    /// Show one stored backup: status, counts, artifacts, hooks, dumps, snapshots (incomplete ones too).
    Describe(crate::app::stored::DescribeArgs),
    /// Verify a stored backup and restore it here, into other namespaces, or into another cluster.
    Restore(crate::app::restore::RestoreArgs),
    /// Move volume data to and from the restic-format repository (what mover Jobs run): `mover backup`
    /// a directory into a snapshot, `mover restore` a snapshot into a directory.
    Mover(crate::app::mover::MoverArgs),
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

const RUN_HELP: &str = "\
What a tick does, in order:
  1. read the policy ConfigMap (freezeframe-policies in FREEZEFRAME_NAMESPACE or the pod's namespace)
  2. mark invalid policies: annotation status.freezeframe.dev/<policy>, a Warning Event on the
     ConfigMap and a policy.invalid webhook; they never run, and the tick exits 2 after running the
     valid ones
  3. take the Lease freezeframe-run in freezeframe's namespace, so two runs never overlap; if another
     live run holds it, print \"another run holds the lease\" and exit 0 without doing anything
  4. for each valid policy: is a fire time of its schedule in (last scheduled, now]? Missed fire times
     coalesce into one run; one later than startingDeadline is skipped with a warning; a new policy
     waits for its first fire time (runOnCreate: true runs it at once); suspend: true skips it
  5. record the fire time (last-scheduled.freezeframe.dev/<policy>), send backup.started, back the
     policy up (freeze hooks, dumps, snapshots, export, manifest), prune its old backups by its
     retention (see `freezeframe prune --help`), report it (an Event on each backed-up Namespace and on
     the ConfigMap, the last-backup.freezeframe.dev/<policy> annotation on each Namespace,
     backup.succeeded|partially_failed|failed and prune.* webhooks; see docs/webhooks.md), record
     last-result.freezeframe.dev/<policy> (the backup's result; a prune failure does not change it)
  6. release the Lease

Exit status: 0 everything that ran succeeded (or nothing was due, or another run holds the Lease),
3 some backup partially failed or some old backup could not be pruned, 1 some backup failed (or
SIGTERM stopped the run), 2 some policy is invalid or --now names no valid policy (checked after the
valid ones ran). Webhooks that cannot be delivered are reported on stderr and never change the exit
status.

Examples:
  # What the CronJob runs every tick
  freezeframe run

  # Run the whole tick now, outside the schedule (a one-off Job from the CronJob's template)
  kubectl -n freezeframe create job --from=cronjob/freezeframe freezeframe-now

  # Back up two policies now whatever their schedules say; other policies still run if due.
  # In the cluster: `kubectl create job --from=cronjob/freezeframe freezeframe-now --dry-run=client -o yaml`,
  # set the container's args to [run, --now, cassandra-ring], then `kubectl create -f` it.
  freezeframe run --now cassandra-ring --now postgres";

/// How long `backup` and `run` may take to thaw and record the result after SIGTERM or SIGINT before
/// the process ends regardless: within Kubernetes' default `terminationGracePeriodSeconds` of 30 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Parse the process arguments and run the chosen subcommand.
pub fn run() -> anyhow::Result<Outcome> {
    let cli = Cli::parse();
    init_tracing();
    crate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        // backup and run thaw on SIGTERM/SIGINT (they watch the token) and get a grace period to do so;
        // every other command simply stops.
        let grace = match cli.command {
            Command::Run(_) | Command::Backup(_) => SHUTDOWN_GRACE,
            _ => Duration::ZERO,
        };
        let cancel = crate::app::turn::cancel_on_signals()?;
        let stopped = cancel.clone();
        let work = async move {
            match cli.command {
                #[cfg(feature = "demo")]
                Command::Demo(args) => crate::demo::run(args).await,
                Command::Validate(args) => crate::app::validate::run(args).await,
                Command::Policies(args) => crate::app::policies::run(args).await,
                Command::Run(args) => crate::app::run::run(args, cancel).await,
                Command::Backup(args) => crate::app::backup::backup(args, cancel).await,
                Command::Prune(args) => crate::app::prune::run(args).await,
                Command::List(args) => crate::app::stored::list(args).await,
                Command::Describe(args) => crate::app::stored::describe(args).await,
                Command::Restore(args) => crate::app::restore::run(args).await,
                Command::Mover(args) => crate::app::mover::run(args).await,
            }
        };
        tokio::select! {
            done = work => done,
            () = async {
                stopped.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                // Dropping the work closes its exec sessions and connections: nothing keeps running.
                anyhow::bail!(
                    "stopped by a signal; work still in progress {}s later was abandoned",
                    grace.as_secs()
                )
            }
        }
    });
    // The one place input errors become exit code 2: what to change, without a cause chain.
    match result {
        Err(err) => match err.downcast::<crate::app::UsageError>() {
            Ok(usage) => {
                eprintln!("error: {usage}");
                Ok(Outcome::InvalidInput)
            }
            Err(other) => Err(other),
        },
        ok => ok,
    }
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
