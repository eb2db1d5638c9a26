//! `freezeframe demo`: the whole story on one machine — a sandbox cluster with a stateful app, a policy
//! with group freeze hooks, a dump and signed webhooks, two backups to a local directory (retention
//! prunes the first, with its snapshots), the stored result, a restore of the latest backup into a new
//! namespace with the volume data back and the dump replayed, and what the webhook receiver got.
//!
//! The demo drives freezeframe through its public command line (`backup`, `list`, `restore`) against the
//! sandbox's kubeconfig, exactly as a CronJob would run it, so what it shows is what users get.

mod receiver;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, AttachParams, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::io::AsyncReadExt;

use crate::exit::Outcome;
use crate::exit::worst;
use crate::snapshot::BACKUP_ID_LABEL;
use freezeframe_sandbox::{Sandbox, SandboxOptions};
use receiver::{Receiver, Signature};

/// Run the demo: sandbox cluster, example app, two backups with group freeze hooks to a local store (the
/// second prunes the first), a restore of the latest with its dump replayed, and the signed webhooks a
/// receiver on 127.0.0.1 got, each signature checked.
///
/// Everything stays under --dir (a temporary directory if omitted): the sandbox's state (pod and volume
/// directories), the policy file and the backups. With --keep-running the sandbox keeps serving after the
/// demo so you can look around with kubectl; stop it with Ctrl-C. Exits non-zero when a step failed or a
/// webhook delivery did not arrive with a valid signature.
///
/// Example:
///   freezeframe demo --dir /tmp/ff-demo --keep-running
///   kubectl --kubeconfig /tmp/ff-demo/kubeconfig -n demo-shop get pods,pvc
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Directory for the sandbox state, the policy file and the local backup store.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the sandbox serving after the demo (until SIGINT/SIGTERM).
    #[arg(long)]
    pub keep_running: bool,
}

/// The example application: a three-node database (StatefulSet with claims), a web tier, config.
pub const APP: &str = include_str!("../../policies/demo/app.yaml");
/// The policy that backs it up: group freeze of all database pods, a dump with a restore command,
/// keep the last backup, a signed webhook; local filesystem store.
pub const POLICY: &str = include_str!("../../policies/demo/policy.yaml");
/// The store path in [`POLICY`] the demo replaces with its own directory.
const STORE_PLACEHOLDER: &str = "/tmp/freezeframe-demo/backups";
/// The webhook URL in [`POLICY`] the demo replaces with its receiver's.
const URL_PLACEHOLDER: &str = "http://127.0.0.1:9/freezeframe";
/// freezeframe's namespace in the sandbox (`FREEZEFRAME_NAMESPACE` of every command the demo runs):
/// where the webhook's Secret is read.
const FREEZEFRAME_NAMESPACE: &str = "freezeframe";
/// The Secret and key [`POLICY`]'s webhook `secretRef` names.
const WEBHOOK_SECRET: &str = "demo-webhook";
const WEBHOOK_KEY: &str = "hmac-key";
/// The Secret (in freezeframe's namespace) and key holding the repository password.
const REPOSITORY_SECRET: &str = "demo-repository";
const REPOSITORY_KEY: &str = "password";

fn step(n: usize, text: &str) {
    println!("\n[{n}] {text}");
}

pub async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let (dir, _temp) = match args.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("freezeframe-demo-")
                .tempdir()
                .context("creating a temp dir")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store_dir = dir.join("backups");
    std::fs::create_dir_all(&store_dir).with_context(|| format!("creating {}", store_dir.display()))?;

    step(1, "Starting the sandbox Kubernetes API server");
    let sandbox = Sandbox::start(SandboxOptions {
        state_dir: Some(dir.join("state")),
        kubeconfig: Some(dir.join("kubeconfig")),
        ..Default::default()
    })
    .await
    .context("starting the sandbox")?;
    println!(
        "    serving {} (kubeconfig {})",
        sandbox.url(),
        sandbox.kubeconfig_path().display()
    );

    step(
        2,
        "Deploying the example app (namespace demo-shop: 3-node database, web tier, config)",
    );
    let n = sandbox
        .apply_text(Path::new("policies/demo/app.yaml"), APP)
        .context("applying the demo app")?;
    let client = sandbox
        .client()
        .await
        .context("building a client for the sandbox")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo-shop");
    let db_pods = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .context("listing database pods")?;
    let db_names = names(&db_pods.items);
    println!("    {n} objects applied; database pods: {}", db_names.join(", "));

    step(
        3,
        "Starting a webhook receiver; the HMAC key that signs deliveries goes into a Secret",
    );
    let key = hex::encode(rand::random::<[u8; 32]>());
    let receiver = Receiver::start(key.as_bytes())
        .await
        .context("starting the demo's webhook receiver on 127.0.0.1")?;
    create_webhook_secret(&client, &key).await?;
    println!(
        "    listening on {}; key in Secret {FREEZEFRAME_NAMESPACE}/{WEBHOOK_SECRET} (key {WEBHOOK_KEY})",
        receiver.url()
    );
    let policy_file = dir.join("policy.yaml");
    // Mover pods see their volume at /data through a private mount namespace (needs CAP_SYS_ADMIN).
    let move_data = freezeframe_sandbox::mountns::available();
    let mut policy_text = fill_policy(&store_dir, receiver.url())?;
    if !move_data {
        println!(
            "    note: this process may not create mount namespaces (run as root to see it), so the demo \
does not move volume data off-site; restores use the snapshots"
        );
        policy_text = policy_text.replace("moveData: true", "moveData: false");
    }
    std::fs::write(&policy_file, policy_text)
        .with_context(|| format!("writing {}", policy_file.display()))?;

    step(
        4,
        "Writing data into each database pod's volume (through kubectl-style exec)",
    );
    write_orders(&pods, &db_names, 1).await?;

    step(
        5,
        "Backing up policy demo-shop: pre hooks freeze all database pods at once, post hooks thaw",
    );
    let backup = ["backup", "--policy", "demo-shop", "--policy-file"];
    let mut outcome = outcome_of(freezeframe(&sandbox, &backup, &policy_file).await?);

    step(
        6,
        "A second order, a second backup: retention (keepLast: 1) prunes the first backup and its snapshots",
    );
    write_orders(&pods, &db_names, 2).await?;
    outcome = worst([
        outcome,
        outcome_of(freezeframe(&sandbox, &backup, &policy_file).await?),
    ]);

    step(7, "What the store and the cluster hold");
    let url = format!("file://{}", store_dir.display());
    freezeframe(&sandbox, &["list", "--storage", &url], Path::new("")).await?;
    println!(
        "    VolumeSnapshots in demo-shop: {}",
        snapshots_by_backup(&client, "demo-shop").await?
    );
    for name in &db_names {
        let marks = exec(&pods, name, "cat frozen-at thawed-at 2>/dev/null | tr '\\n' ' '").await?;
        println!("    {name} hook marks: {}", marks.trim());
    }

    step(
        8,
        "Restoring the latest backup into namespace demo-shop-restored: claims are filled from the \
repository (the moved data, as after losing the site's storage), the orders dump is replayed into the \
restored pods",
    );
    let restored = freezeframe(
        &sandbox,
        &[
            "restore",
            "--backup",
            "latest",
            "--policy",
            "demo-shop",
            "--namespace-map",
            "demo-shop=demo-shop-restored",
            "--volumes-from",
            if move_data { "repository" } else { "auto" },
            "--wait",
            "--policy-file",
        ],
        &policy_file,
    )
    .await?;
    if restored != 0 {
        outcome = Outcome::Failed;
    }
    let restored_pods: Api<Pod> = Api::namespaced(client.clone(), "demo-shop-restored");
    for name in &db_names {
        let data = exec(&restored_pods, name, "cat var/lib/db/orders").await?;
        println!("    demo-shop-restored/{name}: {}", one_line(&data));
    }
    for name in &db_names {
        let replayed = exec(
            &restored_pods,
            name,
            "cat var/lib/db/orders.replayed 2>/dev/null || true",
        )
        .await?;
        if !replayed.is_empty() {
            println!(
                "    demo-shop-restored/{name}: the dump's restoreCommand wrote var/lib/db/orders.replayed: {}",
                one_line(&replayed)
            );
        }
    }

    step(
        9,
        "What the webhook receiver got (signatures checked with the key)",
    );
    let received = receiver.received();
    for r in &received {
        println!("    {r}");
    }
    if received.is_empty() || received.iter().any(|r| r.signature != Signature::Valid) {
        eprintln!(
            "error: the webhook receiver got {} delivery(ies), not all with a valid signature; see the \
warnings above",
            received.len()
        );
        outcome = Outcome::Failed;
    }

    println!(
        "\nBackups are in {}; the sandbox state is in {}.",
        store_dir.display(),
        sandbox.state_dir().display()
    );

    if args.keep_running {
        println!(
            "sandbox ready: {} — try: kubectl --kubeconfig {} get pods -A (Ctrl-C stops)",
            sandbox.url(),
            sandbox.kubeconfig_path().display()
        );
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    Ok(outcome)
}

/// The demo policy with its store in `store_dir` and its webhook posting to `url`; an error if the
/// policy file lost a placeholder (the demo would silently use the wrong store or receiver).
pub fn fill_policy(store_dir: &Path, url: &str) -> anyhow::Result<String> {
    for placeholder in [STORE_PLACEHOLDER, URL_PLACEHOLDER] {
        if !POLICY.contains(placeholder) {
            bail!("policies/demo/policy.yaml no longer contains {placeholder:?}, which the demo replaces");
        }
    }
    Ok(POLICY
        .replace(STORE_PLACEHOLDER, &store_dir.display().to_string())
        .replace(URL_PLACEHOLDER, url))
}

/// Namespace `freezeframe` with the Secrets holding the webhook's HMAC `key` and a fresh repository
/// password.
async fn create_webhook_secret(client: &kube::Client, key: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(FREEZEFRAME_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating namespace freezeframe"),
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), FREEZEFRAME_NAMESPACE);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_SECRET.into()),
            ..Default::default()
        },
        data: Some([(WEBHOOK_KEY.to_string(), ByteString(key.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the webhook's Secret")?;
    let password = hex::encode(rand::random::<[u8; 32]>());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(REPOSITORY_SECRET.into()),
            ..Default::default()
        },
        data: Some([(REPOSITORY_KEY.to_string(), ByteString(password.into_bytes()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the repository password's Secret")?;
    Ok(())
}

/// Append order `n` to each database pod's orders file, printing the file.
async fn write_orders(pods: &Api<Pod>, names: &[String], n: u32) -> anyhow::Result<()> {
    for name in names {
        let out = exec(
            pods,
            name,
            &format!("echo \"order {n} of $POD_NAME\" >> var/lib/db/orders && cat var/lib/db/orders"),
        )
        .await?;
        println!("    {name}: {}", one_line(&out));
    }
    Ok(())
}

/// The VolumeSnapshots in `namespace`, counted by their backup: `3 of backup 20261124T000000Z`.
async fn snapshots_by_backup(client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing VolumeSnapshots in {namespace}"))?;
    let mut by_backup = std::collections::BTreeMap::<String, usize>::new();
    for s in &list.items {
        let id = s
            .labels()
            .get(BACKUP_ID_LABEL)
            .cloned()
            .unwrap_or_else(|| "?".into());
        *by_backup.entry(id).or_default() += 1;
    }
    if by_backup.is_empty() {
        return Ok("none".into());
    }
    Ok(by_backup
        .iter()
        .map(|(id, n)| format!("{n} of backup {id}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// A file's lines joined with `; `.
fn one_line(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("; ")
}

fn outcome_of(status: i32) -> Outcome {
    match status {
        0 => Outcome::Success,
        3 => Outcome::PartiallyFailed,
        2 => Outcome::InvalidInput,
        _ => Outcome::Failed,
    }
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

/// `sh -c script` in a pod's only container; its stdout, or an error naming the pod and exit status.
async fn exec(pods: &Api<Pod>, pod: &str, script: &str) -> anyhow::Result<String> {
    let mut proc = pods
        .exec(pod, ["sh", "-c", script], &AttachParams::default().stderr(false))
        .await
        .with_context(|| format!("exec in pod {pod}"))?;
    let status = proc.take_status();
    let mut out = String::new();
    if let Some(mut stdout) = proc.stdout() {
        stdout
            .read_to_string(&mut out)
            .await
            .with_context(|| format!("reading output of pod {pod}"))?;
    }
    if let Some(status) = status
        && let Some(s) = status.await
        && s.status.as_deref() == Some("Failure")
    {
        bail!("command in pod {pod} failed: {}", s.message.unwrap_or_default());
    }
    Ok(out)
}

/// Run this binary's subcommand against the sandbox as if in freezeframe's namespace there, streaming its
/// output; returns its exit code.
async fn freezeframe(sandbox: &Sandbox, args: &[&str], extra: &Path) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locating the freezeframe binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args);
    if !extra.as_os_str().is_empty() {
        cmd.arg(extra);
    }
    let status = cmd
        .env("KUBECONFIG", sandbox.kubeconfig_path())
        .env("FREEZEFRAME_NAMESPACE", FREEZEFRAME_NAMESPACE)
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running freezeframe {}", args.join(" ")))?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Backend, Exec, SecretKeyRef};

    #[test]
    fn given_demo_policy_when_filled_then_it_stores_in_the_dir_signs_webhooks_replays_dumps_and_keeps_one() {
        let text = fill_policy(
            Path::new("/tmp/ff-demo/backups"),
            "http://127.0.0.1:4242/freezeframe",
        )
        .unwrap();
        let set = crate::policy::parse_str("policies/demo/policy.yaml", &text);
        assert!(set.is_valid(), "{:#?}", set.problems);
        let policy = set.policy("demo-shop").unwrap();
        assert_eq!(
            policy.storage.backend,
            Backend::Filesystem {
                path: "/tmp/ff-demo/backups".into()
            }
        );
        let [webhook] = policy.webhooks.as_slice() else {
            panic!("one webhook: {:#?}", policy.webhooks);
        };
        assert_eq!(webhook.url, "http://127.0.0.1:4242/freezeframe");
        assert_eq!(
            webhook.secret_ref,
            Some(SecretKeyRef {
                name: WEBHOOK_SECRET.into(),
                key: WEBHOOK_KEY.into()
            })
        );
        assert_eq!(
            policy.dumps[0].restore_command,
            Some(Exec::Shell("cat > var/lib/db/orders.replayed".into()))
        );
        assert_eq!(policy.retention.keep_last, Some(1));
    }
}
