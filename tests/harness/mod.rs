//! The integration-test harness: [`TestEnv`] bundles everything a test talks to, each part real.
//!
//! - [`WebhookReceiver`]: an HTTP server recording every request (webhooks, fake endpoints).
//! - [`SeaweedFs`] (only with [`TestEnv::with_s3`]): a real S3 server with a fresh bucket.
//! - a temp dir, removed on drop.
//!
//! Everything is torn down on drop, in reverse order of start, also when the test panics.

#![allow(
    dead_code,
    reason = "shared by all test modules; not every test uses every helper"
)]

pub mod databases;
pub mod seaweed;
pub mod webhook;

use freezeframe_sandbox::{Sandbox, SandboxOptions};
use std::fmt::Debug;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use freezeframe::store::s3::{S3Settings, StaticCredentials};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind};
use serde::de::DeserializeOwned;
use tempfile::TempDir;

pub use seaweed::SeaweedFs;
pub use webhook::WebhookReceiver;

/// The region test clients use (SeaweedFS accepts any).
pub const TEST_REGION: &str = "us-east-1";

/// Credentials test clients sign with; SeaweedFS without configured identities accepts any.
pub fn test_credentials() -> StaticCredentials {
    StaticCredentials {
        access_key_id: "FREEZEFRAMETESTKEY".into(),
        secret_access_key: "freezeframe-test-secret".into(),
        session_token: None,
    }
}

/// Settings for an S3-compatible store at `endpoint`, as a policy's `s3:` block would give them.
pub fn s3_settings(endpoint: &str, bucket: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.to_owned(),
        prefix: None,
        region: Some(TEST_REGION.into()),
        endpoint: Some(endpoint.to_owned()),
        force_path_style: true,
    }
}

/// A bucket name no other test uses.
pub fn unique_bucket_name() -> String {
    format!("ff-test-{}", uuid::Uuid::new_v4().simple())
}

/// One test's world. Fields drop in declaration order: receiver, S3 server, then the temp dir.
pub struct TestEnv {
    sandbox: Sandbox,
    client: kube::Client,
    webhook: WebhookReceiver,
    s3: Option<TestS3>,
    dir: TempDir,
}

impl TestEnv {
    /// A sandbox API server (with a client built from its kubeconfig), a webhook receiver and a temp dir.
    pub async fn new() -> anyhow::Result<TestEnv> {
        let sandbox = Sandbox::start(SandboxOptions {
            // Pods of freezeframe's image (mover Jobs) run this build's binary.
            own_image_binary: Some(env!("CARGO_BIN_EXE_freezeframe").into()),
            ..Default::default()
        })
        .await
        .context("starting the sandbox")?;
        let client = sandbox.client().await.context("client for the sandbox")?;
        let dir = tempfile::Builder::new()
            .prefix("ff-test-")
            .tempdir()
            .context("creating test temp dir")?;
        let webhook = WebhookReceiver::start().await?;
        Ok(TestEnv {
            sandbox,
            client,
            webhook,
            s3: None,
            dir,
        })
    }

    /// Lose the cluster and its storage, as in a site disaster: stop the sandbox, delete its state
    /// directory (every volume and snapshot), and start a fresh sandbox with another state directory (and
    /// another `kube-system` uid). The S3 store, the webhook receiver and the temp dir stay.
    pub async fn replace_cluster(&mut self) -> anyhow::Result<()> {
        let fresh = Sandbox::start(SandboxOptions {
            own_image_binary: Some(env!("CARGO_BIN_EXE_freezeframe").into()),
            ..Default::default()
        })
        .await
        .context("starting the new sandbox")?;
        let old_state = self.sandbox.state_dir().to_path_buf();
        let old = std::mem::replace(&mut self.sandbox, fresh);
        drop(old);
        if old_state.exists() {
            std::fs::remove_dir_all(&old_state)
                .with_context(|| format!("deleting the old cluster's state {}", old_state.display()))?;
        }
        self.client = self
            .sandbox
            .client()
            .await
            .context("client for the new sandbox")?;
        Ok(())
    }

    /// Everything [`TestEnv::new`] has, plus an own SeaweedFS with a freshly created, uniquely named bucket.
    pub async fn with_s3() -> anyhow::Result<TestEnv> {
        let mut env = TestEnv::new().await?;
        env.s3 = Some(TestS3::start().await?);
        Ok(env)
    }

    /// The sandbox Kubernetes API server.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// A kube client for the sandbox.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Apply a multi-document YAML text to the sandbox (create or replace), as `kubectl apply -f` would.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<usize> {
        Ok(self.sandbox.apply_text(Path::new("<test>"), yaml)?)
    }

    pub fn webhook(&self) -> &WebhookReceiver {
        &self.webhook
    }

    /// The S3 store; panics unless the env was made with [`TestEnv::with_s3`].
    pub fn s3(&self) -> &TestS3 {
        self.s3
            .as_ref()
            .expect("this TestEnv has no S3: build it with TestEnv::with_s3()")
    }

    /// A temp dir owned by this test, removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One backup of `policy` through the library (freeze, snapshots, dumps, export, manifest) into
    /// `store` under `layout`, with the clock reading `at`: what `freezeframe backup` does, without the
    /// prune and report steps around it.
    pub async fn back_up(
        &self,
        policy: &freezeframe::policy::Policy,
        store: &dyn freezeframe::store::ObjectStore,
        layout: &freezeframe::store::Layout,
        at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<freezeframe::backup::Manifest> {
        use freezeframe::backup::{self, Context, Freeze, Request};
        let clock = freezeframe::clock::ManualClock::new(at);
        let client = self.client();
        let selection = freezeframe::export::Selection::for_policy(&client, policy).await?;
        let freeze = Freeze::for_policy(&client, policy).await?;
        let ctx = Context {
            client: client.clone(),
            store,
            layout,
            clock: &clock,
            sealing: freezeframe::store::crypt::Sealing::for_storage(policy.storage.encryption.as_ref())?,
        };
        let request = Request {
            policy: &policy.name,
            selection: &selection,
            options: &freezeframe::export::ExportOptions::default(),
            freeze: &freeze,
        };
        let engine = freezeframe::hooks::Engine::new(freezeframe::hooks::KubeExecutor::new(client));
        let cancel = tokio_util::sync::CancellationToken::new();
        Ok(backup::backup(&ctx, &engine, request, &cancel).await?)
    }

    /// The `freezeframe` binary with `args`, set up to talk to this sandbox: `KUBECONFIG` points at
    /// it, no `FREEZEFRAME_*` policy/namespace settings leak in from the test process, no stdin, and
    /// killed if the test drops it. Add `.env(..)` for what a test needs, then [`logged_output`].
    pub fn freezeframe(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_freezeframe"));
        command
            .args(args)
            .env("KUBECONFIG", self.sandbox().kubeconfig_path())
            .env_remove("FREEZEFRAME_NAMESPACE")
            .env_remove("FREEZEFRAME_POLICY_CONFIGMAP")
            .env_remove("FREEZEFRAME_POLICY_FILE")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// A kubeconfig (in this test's temp dir) that authenticates as ServiceAccount `namespace/name`
    /// over the sandbox's HTTPS listener: its requests are authorized by the RBAC objects that bind it,
    /// as in a cluster. Use it with [`TestEnv::freezeframe`]`(..).env("KUBECONFIG", path)`.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<std::path::PathBuf> {
        let path = self.dir().join(format!("kubeconfig-{namespace}-{name}"));
        self.sandbox
            .write_service_account_kubeconfig(namespace, name, &path)
            .with_context(|| format!("kubeconfig for ServiceAccount {namespace}/{name}"))?;
        Ok(path)
    }

    /// Delete a namespace and wait until it is gone (404), as `kubectl delete namespace` does. The
    /// sandbox, like a real API server, only marks it Terminating; its controller empties and removes
    /// it a moment later. Fails after [`DELETION_TIMEOUT`] with the namespace's conditions.
    pub async fn delete_namespace_and_wait(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client());
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting namespace {name}"))?;
        wait_until_gone(&api, name, DELETION_TIMEOUT).await
    }

    /// Delete a CustomResourceDefinition and wait until it is gone (its custom resources went first;
    /// once it is gone, discovery no longer lists its kinds).
    pub async fn delete_crd_and_wait(&self, name: &str) -> anyhow::Result<()> {
        let api = crd_api(&self.client());
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting CRD {name}"))?;
        wait_until_gone(&api, name, DELETION_TIMEOUT).await
    }
}

/// How long a deletion that finishes in the background (namespaces, CRDs, objects with finalizers
/// being released) may take in a test; the sandbox usually needs a few milliseconds.
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(30);

/// The first policy of PolicySet `text`, which must be valid (the test fails with every problem if not).
pub fn policy(text: &str) -> freezeframe::policy::Policy {
    let set = freezeframe::policy::parse_str("test", text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    set.policies.into_iter().next().unwrap()
}

/// Run `command` to its end and print its status, stdout and stderr (shown when the test fails).
pub async fn logged_output(command: &mut tokio::process::Command) -> std::process::Output {
    let out = command.output().await.expect("the freezeframe binary runs");
    eprintln!(
        "{:?}: {}\nstdout:\n{}\nstderr:\n{}",
        command.as_std().get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The CustomResourceDefinitions of a cluster, as dynamic objects.
pub fn crd_api(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    Api::all_with(client.clone(), &ar)
}

/// Poll `api` until `name` is 404 (every 10 ms, up to `timeout`): how a test waits for something a
/// real API server deletes asynchronously. On timeout the error shows the object's last status.
pub async fn wait_until_gone<K>(api: &Api<K>, name: &str, timeout: Duration) -> anyhow::Result<()>
where
    K: Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let Some(obj) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading {name} while waiting for it to go"))?
        else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            let last = serde_json::to_value(&obj).unwrap_or_default();
            anyhow::bail!(
                "{name} still exists after {timeout:?}: finalizers {} {}, status {}",
                last["metadata"]["finalizers"],
                last["spec"]["finalizers"],
                last["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running SeaweedFS with one bucket created for this test.
pub struct TestS3 {
    client: aws_sdk_s3::Client,
    bucket: String,
    seaweed: SeaweedFs,
}

impl TestS3 {
    async fn start() -> anyhow::Result<TestS3> {
        let seaweed = SeaweedFs::start().await?;
        let bucket = unique_bucket_name();
        let client = freezeframe::store::s3::client_with_credentials(
            &s3_settings(&seaweed.endpoint(), &bucket),
            &test_credentials(),
        )
        .await;
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .with_context(|| {
                format!(
                    "creating bucket {bucket}; SeaweedFS log tail:\n{}",
                    seaweed.log_tail(20)
                )
            })?;
        Ok(TestS3 {
            client,
            bucket,
            seaweed,
        })
    }

    /// The settings freezeframe would be configured with to write into this test's bucket.
    pub fn settings(&self) -> S3Settings {
        s3_settings(&self.seaweed.endpoint(), &self.bucket)
    }

    /// A client for checking what freezeframe wrote (built by `freezeframe::store::s3` itself).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn endpoint(&self) -> String {
        self.seaweed.endpoint()
    }

    pub fn seaweed(&self) -> &SeaweedFs {
        &self.seaweed
    }
}

/// Set in the environment of a test re-run by [`run_in_child_process`].
pub const CHILD_MARKER: &str = "FREEZEFRAME_TEST_CHILD";

/// True inside a test re-run by [`run_in_child_process`].
pub fn in_child_process() -> bool {
    std::env::var_os(CHILD_MARKER).is_some()
}

/// Re-runs exactly the test `name` (path without the crate, e.g. `s3::given_x_then_y`) in a child
/// process of this test binary, with `env` added to its environment and `remove` taken out.
///
/// For behaviour that depends on process environment variables: changing them in this process would
/// race with the other tests' threads. Fails unless the child ran and passed exactly that one test.
pub fn run_in_child_process(name: &str, env: &[(&str, &str)], remove: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let mut command = Command::new(&exe);
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, "1");
    for variable in remove {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .context("running the child test")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success() && stdout.contains("1 passed"),
        "child run of {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    Ok(())
}
