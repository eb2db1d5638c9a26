//! `freezeframe restore`: verify a stored backup and bring its objects back (or print the plan).
//!
//! Exit status: 0 everything restored (or the dry-run plan printed), 3 some objects failed (the
//! summary names them), 1 the backup is unusable (missing, incomplete, corrupt, tampered) or nothing
//! could be restored, 2 invalid flags or policies.
//!
//! Webhooks (not for `--dry-run`): once the backup is found, `restore.started`, then
//! `restore.succeeded|partially_failed|failed`, to the webhooks of the backup's policy when the
//! policies can be read (`--policy-file`, `--policies` or the default ConfigMap; see [`receivers`]).
//! Their failures never change the exit status.

use std::time::Duration;

use super::{Invocation, UsageError};
use crate::config::{ClientArgs, PolicySourceArgs};
use crate::exit::Outcome;
use crate::policy::{Policy, Webhook};
use crate::report::{Payload, Reporter, WebhookEvent};
use crate::store;

use crate::hooks::KubeExecutor;
use crate::restore::apply::KubeTarget;
use crate::restore::dumps::Replayer;
use crate::restore::fill::{Fill, FillRequest, Filled};
use crate::restore::source::Located;
use crate::restore::{
    BackupRef, Context, Error, Existing, Plan, PlanOptions, Report, RestoreOptions, VolumesFrom,
};

/// Output format of `freezeframe restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The plan (dry run) or a per-kind summary, as aligned text.
    Table,
    /// `{plan, report}` as JSON.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::policy::values::parse_duration(text).map_err(|e| e.to_string())
}

/// Arguments of `freezeframe restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backup to restore: an id (`20261123T120000Z`) or `latest` (newest complete backup).
    #[arg(long, value_name = "ID|latest")]
    pub backup: BackupRef,
    /// The backup's policy: finds its storage, and chooses among ids stored for several policies.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Read from this store instead of the policy's (no policy needed): file:///path or s3://bucket[/prefix][?..].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Restore namespace SRC into DST (repeatable); other namespaces keep their names.
    #[arg(long = "namespace-map", value_name = "SRC=DST")]
    pub namespace_map: Vec<String>,
    /// Only these kinds (plural, plural.group or Kind; comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    pub include: Vec<String>,
    /// Not these kinds (same forms).
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    pub exclude: Vec<String>,
    /// Only namespaced objects whose labels match (kubectl syntax: `app=web,tier in (a,b)`).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Objects that already exist: skip them, update them (server-side apply), or fail them.
    #[arg(long, value_enum, default_value = "skip")]
    pub existing: Existing,
    /// Verify the backup and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for restored workloads to be ready and claims bound.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits in all (with a unit: 300s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// Do not replay dumps (by default, dumps whose policy dump has a `restoreCommand` are streamed into
    /// it once the restored pods are ready).
    #[arg(long)]
    pub skip_dumps: bool,
    /// Where claims get their data. auto: per claim, its released volume (same cluster and namespace),
    /// else its snapshot when this is the backup's cluster, else its repository copy (`moveData`), else
    /// its snapshot (another cluster on the same storage), else a new empty volume. snapshot or
    /// repository: only that source. A repository copy needs --policy (its repository.passwordSecret).
    #[arg(long, value_enum, default_value = "auto", value_name = "SOURCE")]
    pub volumes_from: VolumesFrom,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// age identities (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes) for an encrypted backup,
    /// instead of the policy storage's `encryption.identitySecret`.
    #[arg(long, value_name = "PATH")]
    pub identity_file: Option<std::path::PathBuf>,
}

/// The store to read from (`--storage`, else the policy's storage) and the policy, when known (its
/// dumps' `restoreCommand`s are replayed).
///
/// With `--storage`, S3 credentials come from the default AWS chain (environment, web identity,
/// profile); `manifests/restore-job.yaml` maps the storage Secret into the environment. With
/// `--storage`, the policy is read only when `--policy-file` or `--policies` says where from.
async fn backend(
    args: &RestoreArgs,
    invocation: &Invocation,
) -> anyhow::Result<(crate::policy::Backend, Option<Policy>)> {
    let sourced = args.source.policy_file.is_some() || args.source.policies.is_some();
    let policy = match &args.policy {
        Some(name) if args.storage.is_none() || sourced => Some(invocation.policy(name).await?.clone()),
        _ => None,
    };
    if let Some(url) = &args.storage {
        return Ok((store::backend_from_url(url)?, policy));
    }
    let Some(policy) = policy else {
        return Err(
            UsageError::new("give --storage URL, or --policy NAME to read the policy's storage").into(),
        );
    };
    Ok((policy.storage.backend.clone(), Some(policy)))
}

/// Restore movers over the policy storage's repository: [`Fill`] by [`crate::offsite::restore`].
struct RepositoryFill {
    cluster: crate::offsite::KubeMoverCluster,
    spec: crate::offsite::MoverSpec,
    cancel: tokio_util::sync::CancellationToken,
}

impl RepositoryFill {
    /// `None` when the policy's storage has no repository or freezeframe's namespace (where the
    /// repository's Secrets are) is unknown; claims with repository data then fail saying so.
    fn for_policy(
        policy: &Policy,
        located: &Located,
        invocation: &Invocation,
        client: kube::Client,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Option<RepositoryFill> {
        let repository = crate::offsite::repository_access(policy)?;
        let namespace = invocation.namespace()?;
        let image = invocation.settings().ok()?.image.clone();
        Some(RepositoryFill {
            cluster: crate::offsite::KubeMoverCluster::new(client),
            spec: crate::offsite::MoverSpec {
                namespace: namespace.to_string(),
                image,
                policy: located.policy.clone(),
                backup_id: located.id.to_string(),
                repository,
                mover: policy.volumes.mover.clone(),
            },
            cancel,
        })
    }
}

#[async_trait::async_trait]
impl Fill for RepositoryFill {
    async fn fill(&self, requests: &[FillRequest]) -> Vec<Result<Filled, String>> {
        let asked: Vec<crate::offsite::restore::RestoreRequest> = requests
            .iter()
            .map(|r| crate::offsite::restore::RestoreRequest {
                namespace: r.namespace.clone(),
                claim: r.claim.clone(),
                snapshot_id: r.snapshot_id.clone(),
            })
            .collect();
        crate::offsite::restore::fill_claims(&self.cluster, &self.spec, &asked, &self.cancel)
            .await
            .into_iter()
            .map(|r| {
                r.map(|v| Filled {
                    files: v.files,
                    bytes: v.bytes,
                    duration_seconds: v.duration_seconds,
                })
            })
            .collect()
    }
}

/// Run `freezeframe restore`.
pub async fn run(args: RestoreArgs) -> anyhow::Result<Outcome> {
    let invocation = Invocation::from_process(&args.source, &ClientArgs::default());
    let (backend, policy) = backend(&args, &invocation).await?;
    let namespace_map =
        PlanOptions::parse_namespace_map(&args.namespace_map).map_err(|e| UsageError::new(e.to_string()))?;
    let mut options = RestoreOptions {
        backup: args.backup.clone(),
        policy: args.policy.clone(),
        plan: PlanOptions {
            namespace_map,
            include: args.include.clone(),
            exclude: args.exclude.clone(),
            selector: args.selector.clone(),
            existing: args.existing,
            volumes_from: args.volumes_from,
        },
        dry_run: args.dry_run,
        wait: args.wait.then_some(args.wait_timeout),
    };
    let (store, layout) = store::open(&backend, None).await;
    let client = invocation.client().await?;
    let target = KubeTarget::new(client.clone());
    let replayer = match &policy {
        Some(p) if !args.skip_dumps => Some(Replayer::new(
            KubeExecutor::new(client.clone()),
            client.clone(),
            p.dumps.clone(),
        )),
        _ => None,
    };
    if policy.is_none() && !args.skip_dumps {
        tracing::warn!(
            "no policy read (give --policy with --policy-file or --policies): dumps are not replayed"
        );
    }
    let identities = invocation
        .decryption_identities(args.identity_file.as_deref(), policy.as_ref())
        .await?;
    // Find the backup once, so restore.started and the restore name the same one (`latest` moves).
    let located = crate::restore::source::locate(
        store.as_ref(),
        &layout,
        options.policy.as_deref(),
        &options.backup,
    )
    .await
    .map_err(|e| anyhow::Error::new(e).context("restore refused; nothing was written"))?;
    options.backup = BackupRef::Id(located.id.clone());
    options.policy = Some(located.policy.clone());
    let cancel = super::turn::cancel_on_signals()?;
    let fill = policy
        .as_ref()
        .and_then(|p| RepositoryFill::for_policy(p, &located, &invocation, client.clone(), cancel));
    let ctx = Context {
        store: store.as_ref(),
        layout: &layout,
        target: &target,
        dumps: replayer.as_ref().map(|r| r as &dyn crate::restore::dumps::Replay),
        identities,
        fill: fill.as_ref().map(|f| f as &dyn Fill),
    };
    let announced = if args.dry_run {
        None
    } else {
        Some(Announced::start(&invocation, policy.as_ref(), &located, &options, client).await)
    };
    let restored = crate::restore::run(&ctx, &options).await;
    if let Ok((plan, report)) = &restored
        && !options.dry_run
    {
        crate::report::restore_events::emit(ctx.target, plan, report).await;
    }
    if let Some(announced) = &announced {
        announced.finish(&restored, invocation.now()).await;
    }
    let (plan, report) = match restored {
        Ok(done) => done,
        Err(e @ Error::InvalidOption { .. }) => return Err(UsageError::new(e.to_string()).into()),
        Err(e) => return Err(anyhow::Error::new(e).context("restore refused; nothing was written")),
    };
    match args.output {
        Format::Json => {
            let steps: Vec<serde_json::Value> = plan
                .steps
                .iter()
                .map(|s| {
                    let mut step = serde_json::json!({
                        "phase": s.phase, "kind": s.kind, "namespace": s.namespace, "name": s.name,
                        "action": s.action,
                    });
                    if s.kind == "persistentvolumeclaims" && s.is_applied() {
                        step["volume"] = s.claim.to_string().into();
                    }
                    step
                })
                .collect();
            let out = serde_json::json!({"plan": steps, "report": report});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Table if args.dry_run => {
            print!("{plan}");
            println!(
                "dry run of {}/{}: {} of {} objects would be restored; nothing was written",
                report.policy,
                report.backup_id,
                plan.applied(),
                plan.steps.len()
            );
        }
        Format::Table => {
            print!("{}", report.table());
            println!(
                "restored {}/{}: {:?}",
                report.policy,
                report.backup_id,
                report.outcome()
            );
        }
    }
    Ok(report.outcome())
}

/// The webhooks of the backup's policy `name`: those of the policy already read, else of the
/// configured policies (`--policy-file`, `--policies`, or the default ConfigMap, read like `backup`
/// reads them); none, said at debug level, when no policies can be read or none has that name.
async fn receivers(invocation: &Invocation, read: Option<&Policy>, name: &str) -> Vec<Webhook> {
    if let Some(p) = read.filter(|p| p.name == name) {
        return p.webhooks.clone();
    }
    match invocation.policy_set().await {
        Ok(set) => match set.policy(name) {
            Some(p) => p.webhooks.clone(),
            None => {
                tracing::debug!(policy = name, "no valid policy of that name: no restore webhooks");
                Vec::new()
            }
        },
        Err(e) => {
            tracing::debug!(policy = name, error = %format!("{e:#}"), "no policies to read: no restore webhooks");
            Vec::new()
        }
    }
}

/// A restore whose start was announced: who was told, and what.
struct Announced {
    reporter: Reporter,
    webhooks: Vec<Webhook>,
    started: Payload,
}

impl Announced {
    /// Send `restore.started` for `located`, restored with `options`.
    async fn start(
        invocation: &Invocation,
        read: Option<&Policy>,
        located: &Located,
        options: &RestoreOptions,
        client: kube::Client,
    ) -> Announced {
        let webhooks = receivers(invocation, read, &located.policy).await;
        let reporter = Reporter::new(client, invocation.namespace().map(str::to_string));
        let namespaces = located
            .manifest
            .namespaces
            .iter()
            .map(|ns| options.plan.namespace_map.get(ns).unwrap_or(ns).clone())
            .collect();
        let started = Payload::restore_started(
            &located.manifest,
            namespaces,
            invocation.now(),
            reporter.cluster_identity().await,
        );
        reporter
            .send(&webhooks, WebhookEvent::RestoreStarted, &started)
            .await;
        Announced {
            reporter,
            webhooks,
            started,
        }
    }

    /// Send how the restore ended.
    async fn finish(
        &self,
        restored: &crate::restore::Result<(Plan, Report)>,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let (event, payload) = match restored {
            Ok((plan, report)) => (
                WebhookEvent::restore_finished(report.outcome()),
                Payload::restore_finished(
                    &self.started,
                    report,
                    crate::report::restore_events::target_namespaces(plan)
                        .into_iter()
                        .collect(),
                    now,
                ),
            ),
            Err(e) => (
                WebhookEvent::RestoreFailed,
                Payload::restore_error(&self.started, &crate::report::chain(e), now),
            ),
        };
        self.reporter.send(&self.webhooks, event, &payload).await;
    }
}
