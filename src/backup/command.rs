//! `freezeframe backup` (one backup of a policy now) and `freezeframe list` (what is stored).

use std::fmt::Write as _;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;

use super::{Context, StoredBackup};
use crate::clock::SystemClock;
use crate::config::{PolicySourceArgs, Settings};
use crate::exit::Outcome;
use crate::export::{ExportOptions, Selection};
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
    let creds = credentials(&client, &settings, &backend).await?;
    let (store, layout) = store::open(&backend, creds.as_ref()).await;
    let selection = Selection::for_policy(&client, policy).await?;
    let ctx = Context {
        client,
        store: store.as_ref(),
        layout: &layout,
        clock: &SystemClock,
    };
    let manifest = super::run(&ctx, &policy.name, &selection, &ExportOptions::default()).await?;
    let objects: u64 = manifest.objects.values().map(|k| k.count).sum();
    println!(
        "{}/{}: {:?}, {objects} objects in {} kinds, {} bytes",
        manifest.policy,
        manifest.backup_id,
        manifest.status,
        manifest.objects.len(),
        manifest.artifacts.values().map(|a| a.size).sum::<u64>()
    );
    Ok(Outcome::Success)
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
