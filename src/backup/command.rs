//! `freezeframe backup` (one backup of a policy now: freeze, dumps, export, manifest; exit 0 Completed, 3
//! PartiallyFailed, 1 Failed or cancelled by SIGTERM/SIGINT) and `freezeframe list` (what is stored).

use std::fmt::Write as _;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;

use tokio_util::sync::CancellationToken;

use super::{Context, DumpStatus, Freeze, Manifest, Request, StoredBackup};
use crate::clock::SystemClock;
use crate::config::{PolicySourceArgs, Settings};
use crate::exit::Outcome;
use crate::export::{ExportOptions, Selection};
use crate::hooks::{Engine, KubeExecutor};
use crate::policy::{Backend, Policy};
use crate::store::{self, s3::StaticCredentials};

/// Arguments of `freezeframe backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The policy to back up now.
    #[arg(long, value_name = "NAME")]
    pub policy: String,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Write to this store instead of the policy's: file:///path or s3://bucket[/prefix][?region=..&endpoint=..&forcePathStyle=true].
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
}

/// Output format of `freezeframe list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON array.
    Json,
}

/// Arguments of `freezeframe list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this policy's backups.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// The store to list.
    #[arg(long, value_name = "URL")]
    pub storage: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// Read S3 credentials from the policy storage's Secret (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
async fn credentials(
    client: &kube::Client,
    settings: &Settings,
    backend: &Backend,
) -> anyhow::Result<Option<StaticCredentials>> {
    let Backend::S3(s3) = backend else {
        return Ok(None);
    };
    let Some(name) = &s3.credentials_secret else {
        return Ok(None);
    };
    let namespace = settings
        .namespace
        .as_deref()
        .context("credentialsSecret needs freezeframe's namespace (FREEZEFRAME_NAMESPACE)")?;
    let secret = kube::Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading Secret {namespace}/{name}"))?;
    let data = secret.data.unwrap_or_default();
    let value = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    Ok(Some(StaticCredentials {
        access_key_id: value("AWS_ACCESS_KEY_ID")
            .with_context(|| format!("Secret {namespace}/{name} has no AWS_ACCESS_KEY_ID"))?,
        secret_access_key: value("AWS_SECRET_ACCESS_KEY")
            .with_context(|| format!("Secret {namespace}/{name} has no AWS_SECRET_ACCESS_KEY"))?,
        session_token: value("AWS_SESSION_TOKEN"),
    }))
}

/// Run `freezeframe backup`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<Outcome> {
    let settings = Settings::from_process(&args.source)?;
    let set = crate::policy::command::load(&settings).await?;
    let Some(policy): Option<&Policy> = set.policy(&args.policy) else {
        if !set.is_valid() {
            eprint!("{}", crate::policy::command::report(&set, chrono::Utc::now()).0);
        }
        eprintln!(
            "error: no valid policy named {:?}; valid policies: {:?}",
            args.policy,
            set.policies.iter().map(|p| &p.name).collect::<Vec<_>>()
        );
        return Ok(Outcome::InvalidInput);
    };
    let backend = match &args.storage {
        Some(url) => store::backend_from_url(url)?,
        None => policy.storage.backend.clone(),
    };
    let client = kube::Client::try_default().await?;
    let cancel = cancel_on_signals()?;
    let manifest = back_up_policy(&client, &settings, policy, &backend, &cancel).await?;
    print!("{}", summary(&manifest));
    Ok(manifest.status.outcome())
}

/// One backup of `policy` into `backend` with the real cluster and wall clock: the store (with the
/// storage's credentials), selection, freeze plan and hook engine, then [`super::backup`]. Shared by
/// `freezeframe backup` and `freezeframe run`; `cancel` is the process's [`cancel_on_signals`] token.
pub async fn back_up_policy(
    client: &kube::Client,
    settings: &Settings,
    policy: &Policy,
    backend: &Backend,
    cancel: &CancellationToken,
) -> anyhow::Result<Manifest> {
    let creds = credentials(client, settings, backend).await?;
    let (store, layout) = store::open(backend, creds.as_ref()).await;
    let selection = Selection::for_policy(client, policy).await?;
    let freeze = Freeze::for_policy(client, policy).await?;
    let ctx = Context {
        client: client.clone(),
        store: store.as_ref(),
        layout: &layout,
        clock: &SystemClock,
    };
    let request = Request {
        policy: &policy.name,
        selection: &selection,
        options: &ExportOptions::default(),
        freeze: &freeze,
    };
    let engine = Engine::new(KubeExecutor::new(client.clone()));
    Ok(super::backup(&ctx, &engine, request, cancel).await?)
}

/// A token cancelled by the first SIGTERM or SIGINT (the Job deleted, `activeDeadlineSeconds`, Ctrl-C):
/// work in progress stops, the thaw runs, the manifest says `Failed`. Later signals are logged and
/// ignored, so a second Ctrl-C cannot leave the application frozen (each thaw action has its timeout).
pub fn cancel_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if cancel.is_cancelled() {
                tracing::warn!(signal = name, "already stopping: the thaw runs to its end");
            } else {
                tracing::warn!(
                    signal = name,
                    "stopping work in progress; thawing, then exiting non-zero"
                );
                cancel.cancel();
            }
        }
    });
    Ok(token)
}

/// What `freezeframe backup` prints: one line per backup, then the freeze, and every problem. Pure.
pub fn summary(m: &Manifest) -> String {
    let objects: u64 = m.objects.values().map(|k| k.count).sum();
    let mut out = format!(
        "{}/{}: {:?}, {objects} objects in {} kinds, {} bytes\n",
        m.policy,
        m.backup_id,
        m.status,
        m.objects.len(),
        m.artifacts.values().map(|a| a.size).sum::<u64>()
    );
    if let Some(h) = &m.hooks {
        let window = h.freeze_window_millis.map_or_else(
            || "nothing frozen".to_string(),
            |ms| format!("frozen for {ms} ms"),
        );
        writeln!(out, "  hooks: {:?}, {window}", h.status).ok();
    }
    for d in &m.dumps {
        if let (DumpStatus::Succeeded, Some(size)) = (d.status, d.size) {
            writeln!(
                out,
                "  {}: {size} bytes sha256 {}",
                d.describe(),
                d.sha256.as_deref().unwrap_or("-")
            )
            .ok();
        }
    }
    for p in &m.problems {
        writeln!(out, "  problem: {p}").ok();
    }
    out
}

/// Render stored backups as a table. Pure.
pub fn table(backups: &[StoredBackup]) -> String {
    let mut out = String::from("POLICY\tBACKUP\tSTATUS\tOBJECTS\tBYTES\n");
    for b in backups {
        let (status, objects) = match &b.manifest {
            Some(m) => (
                format!("{:?}", m.status),
                m.objects.values().map(|k| k.count).sum::<u64>().to_string(),
            ),
            None => ("Incomplete".to_string(), "-".to_string()),
        };
        writeln!(out, "{}\t{}\t{status}\t{objects}\t{}", b.policy, b.id, b.size).ok();
    }
    out
}

/// Run `freezeframe list`.
pub async fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let backend = store::backend_from_url(&args.storage)?;
    let (store, layout) = store::open(&backend, None).await;
    let backups = super::list(store.as_ref(), &layout, args.policy.as_deref()).await?;
    match args.output {
        Format::Table => print!("{}", table(&backups)),
        Format::Json => {
            let rows: Vec<serde_json::Value> = backups
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "policy": b.policy, "backupId": b.id.as_str(), "size": b.size,
                        "complete": b.manifest.is_some(), "manifest": b.manifest,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
    }
    Ok(Outcome::Success)
}
