//! Client-side encryption end to end (docs/security.md): a namespace whose Secret holds one unique
//! marker and whose dump prints another is backed up with `encryption.recipients`; no stored byte holds
//! either marker (nor its base64), in a directory store and in SeaweedFS; restore with the identity brings
//! both back; restore without it is refused before anything is written; the `age` CLI decrypts what
//! freezeframe stored; and backups written before encryption existed still restore.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use age::secrecy::ExposeSecret;
use base64::Engine;
use freezeframe::backup::{DumpStatus, Manifest};
use freezeframe::exit::Outcome;
use freezeframe::hooks::KubeExecutor;
use freezeframe::policy::{Backend, Policy};
use freezeframe::restore::apply::KubeTarget;
use freezeframe::restore::dumps::{Replay, ReplayStatus, Replayer};
use freezeframe::restore::{self, Context, Error};
use freezeframe::store::crypt::Identities;
use freezeframe::store::{self, Layout, ObjectStore, fs::FsStore};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;

use crate::export::start_time;
use crate::harness::{TestEnv, logged_output, test_credentials};
use crate::restore::options;

/// The markers and keys of one test.
struct Vault {
    secret_marker: String,
    dump_marker: String,
    identity: age::x25519::Identity,
    identity_file: PathBuf,
    policy: Policy,
}

impl Vault {
    /// Namespace `vault`: Secret `creds` (`password` = the secret marker) and a one-pod StatefulSet
    /// `db`; policy `vault` dumps `echo <dump marker>` (replayed by `cat > restored.txt`), encrypted to
    /// a fresh X25519 key whose identity is written to a file.
    fn new(env: &TestEnv) -> anyhow::Result<Vault> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let secret_marker = format!("secret-marker-{unique}");
        let dump_marker = format!("dump-marker-{unique}");
        let identity = age::x25519::Identity::generate();
        let identity_file = env.dir().join("identity.txt");
        std::fs::write(
            &identity_file,
            format!(
                "# created: by the test\n# public key: {}\n{}\n",
                identity.to_public(),
                identity.to_string().expose_secret()
            ),
        )?;
        env.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: vault}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: vault}}\n\
             data: {{password: {}}}\n---\n\
             apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db, namespace: vault}}\n\
             spec:\n  replicas: 1\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n\
             \x20 template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: busybox}}]}}\n",
            b64(&secret_marker)
        ))?;
        let policy = crate::harness::policy(&format!(
            "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
             storages:\n  local:\n    filesystem: {{path: /unused}}\n\
             \x20   encryption: {{recipients: [\"{}\"], identitySecret: {{name: freezeframe-identity, key: identities}}}}\n\
             defaults: {{storage: local}}\n\
             policies:\n  - name: vault\n    schedule: \"@daily\"\n    namespaces: [vault]\n\
             \x20   retention: {{keepLast: 3}}\n    volumes: {{snapshot: none}}\n\
             \x20   dumps:\n      - name: data\n        podSelector: {{app: db}}\n\
             \x20       command: \"echo {dump_marker}\"\n        restoreCommand: \"cat > restored.txt\"\n",
            identity.to_public()
        ));
        Ok(Vault {
            secret_marker,
            dump_marker,
            identity,
            identity_file,
            policy,
        })
    }

    fn identities(&self) -> Arc<Identities> {
        Arc::new(Identities::parse(self.identity.to_string().expose_secret(), "the test's identity").unwrap())
    }

    /// Back up `vault` into `store` (the policy's encryption applies) and check the run went well.
    async fn back_up(
        &self,
        env: &TestEnv,
        store: &dyn ObjectStore,
        layout: &Layout,
    ) -> anyhow::Result<Manifest> {
        let manifest = env.back_up(&self.policy, store, layout, start_time()).await?;
        assert!(manifest.problems.is_empty(), "{:?}", manifest.problems);
        assert_eq!(manifest.dumps[0].status, DumpStatus::Succeeded);
        assert_eq!(manifest.format_version, 2);
        let recorded = manifest.encryption.as_ref().expect("encryption recorded");
        assert_eq!(recorded.recipients, [self.identity.to_public().to_string()]);
        Ok(manifest)
    }

    /// Every byte of every object in `store` (decompressed, where it is a zstd frame): neither marker
    /// appears, plainly or base64-encoded.
    async fn assert_nothing_readable(&self, store: &dyn ObjectStore) -> anyhow::Result<()> {
        let objects = store.list("").await?;
        assert!(objects.len() >= 3, "archive, dump and manifest: {objects:?}");
        for object in objects {
            let stored = store::get_bytes(store, &object.key).await?;
            // zstd's entropy coding could hide a marker from a byte search: look inside any zstd frame too.
            let inflated = zstd::decode_all(&stored[..]).unwrap_or_default();
            let bytes = [stored, inflated].concat();
            for marker in [&self.secret_marker, &self.dump_marker] {
                for needle in [marker.clone(), b64(marker)] {
                    assert!(
                        !contains(&bytes, needle.as_bytes()),
                        "{} holds {needle:?} readable",
                        object.key
                    );
                }
            }
        }
        Ok(())
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn s3_store_backend(env: &TestEnv) -> Backend {
    Backend::S3(freezeframe::policy::S3Storage {
        bucket: env.s3().bucket().to_string(),
        prefix: "clusters/prod".into(),
        region: Some(crate::harness::TEST_REGION.into()),
        endpoint: Some(env.s3().endpoint()),
        force_path_style: true,
        credentials_secret: None,
        server_side_encryption: None,
        kms_key_id: None,
        object_lock: None,
    })
}

/// Restore the latest backup in `store` with `vault` mapped to `to`, replaying the dump, with
/// `identities`.
async fn restore_vault(
    env: &TestEnv,
    store: &dyn ObjectStore,
    layout: &Layout,
    vault: &Vault,
    to: &str,
    identities: Option<Arc<Identities>>,
) -> Result<restore::Report, Error> {
    let client = env.client();
    let target = KubeTarget::new(client.clone());
    let replayer = Replayer::new(
        KubeExecutor::new(client.clone()),
        client,
        vault.policy.dumps.clone(),
    );
    let ctx = Context {
        store,
        layout,
        target: &target,
        dumps: Some(&replayer as &dyn Replay),
        fill: None,
        identities,
    };
    let mut opts = options();
    opts.plan.namespace_map = [("vault".to_string(), to.to_string())].into();
    opts.wait = Some(std::time::Duration::from_secs(60));
    restore::run(&ctx, &opts).await.map(|(_, report)| report)
}

fn pod_file(env: &TestEnv, namespace: &str, pod: &str, file: &str) -> PathBuf {
    env.sandbox()
        .state_dir()
        .join("pods")
        .join(namespace)
        .join(pod)
        .join(file)
}

/// Restored into `namespace`: the Secret holds the secret marker, the replayed dump the dump marker.
async fn assert_both_back(
    env: &TestEnv,
    vault: &Vault,
    namespace: &str,
    report: &restore::Report,
) -> anyhow::Result<()> {
    assert_eq!(report.outcome(), Outcome::Success, "{}", report.table());
    let [replay] = &report.dumps[..] else {
        panic!("one replay: {:?}", report.dumps)
    };
    assert_eq!(replay.status, ReplayStatus::Succeeded, "{replay:?}");
    let secret = Api::<Secret>::namespaced(env.client(), namespace)
        .get("creds")
        .await?;
    let password = &secret.data.unwrap_or_default()["password"].0;
    assert_eq!(String::from_utf8_lossy(password), vault.secret_marker);
    assert_eq!(
        std::fs::read_to_string(pod_file(env, namespace, "db-0", "restored.txt"))?,
        format!("{}\n", vault.dump_marker)
    );
    Ok(())
}

#[tokio::test]
async fn given_encrypted_policy_when_backed_up_to_a_directory_and_seaweedfs_then_no_stored_byte_is_readable_and_the_identity_restores_both_markers()
-> anyhow::Result<()> {
    let env = TestEnv::with_s3().await?;
    let vault = Vault::new(&env)?;
    let fs_store = FsStore::new(env.dir().join("store"));
    let fs_layout = Layout::new("");
    let (s3_store, s3_layout) = store::open(&s3_store_backend(&env), Some(&test_credentials())).await;

    vault.back_up(&env, &fs_store, &fs_layout).await?;
    vault.back_up(&env, s3_store.as_ref(), &s3_layout).await?;

    vault.assert_nothing_readable(&fs_store).await?;
    vault.assert_nothing_readable(s3_store.as_ref()).await?;
    let report = restore_vault(
        &env,
        &fs_store,
        &fs_layout,
        &vault,
        "vault-fs",
        Some(vault.identities()),
    )
    .await?;
    assert_both_back(&env, &vault, "vault-fs", &report).await?;
    let report = restore_vault(
        &env,
        s3_store.as_ref(),
        &s3_layout,
        &vault,
        "vault-s3",
        Some(vault.identities()),
    )
    .await?;
    assert_both_back(&env, &vault, "vault-s3", &report).await?;
    Ok(())
}

/// What a restore could have written: every namespace and Secret, with their resourceVersions.
async fn cluster_state(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let lp = kube::api::ListParams::default();
    let mut state: Vec<String> = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|n| {
            format!(
                "ns {} {:?}",
                n.metadata.name.unwrap_or_default(),
                n.metadata.resource_version
            )
        })
        .collect();
    state.extend(
        Api::<Secret>::all(client.clone())
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(|s| {
                format!(
                    "secret {}/{} {:?}",
                    s.metadata.namespace.unwrap_or_default(),
                    s.metadata.name.unwrap_or_default(),
                    s.metadata.resource_version
                )
            }),
    );
    Ok(state)
}

#[tokio::test]
async fn given_encrypted_backup_when_restored_without_or_with_a_wrong_identity_then_refused_before_anything_is_written()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let vault = Vault::new(&env)?;
    let store_dir = env.dir().join("store");
    let store = FsStore::new(&store_dir);
    let layout = Layout::new("");
    let manifest = vault.back_up(&env, &store, &layout).await?;
    let before = cluster_state(&env.client()).await?;
    let wrong = Arc::new(Identities::parse(
        age::x25519::Identity::generate().to_string().expose_secret(),
        "file wrong.txt",
    )?);
    let backup = format!("vault/{}", manifest.backup_id);

    let missing = restore_vault(&env, &store, &layout, &vault, "vault-copy", None)
        .await
        .unwrap_err()
        .to_string();
    let mismatched = restore_vault(&env, &store, &layout, &vault, "vault-copy", Some(wrong))
        .await
        .unwrap_err()
        .to_string();
    let out = logged_output(&mut env.freezeframe(&[
        "restore",
        "--backup",
        "latest",
        "--storage",
        &format!("file://{}", store_dir.display()),
        "--namespace-map",
        "vault=vault-cli",
    ]))
    .await;

    let recipient = vault.identity.to_public().to_string();
    assert!(
        missing.contains(&format!("backup {backup} is encrypted to {recipient}"))
            && missing.contains("--identity-file"),
        "{missing}"
    );
    assert!(
        mismatched.contains(&format!(
            "backup {backup} is encrypted to {recipient}; no matching identity in file wrong.txt"
        )),
        "{mismatched}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("is encrypted to {recipient}")),
        "the CLI names the recipients"
    );
    assert_eq!(cluster_state(&env.client()).await?, before, "nothing was written");
    Ok(())
}

#[tokio::test]
async fn given_identity_file_when_the_cli_restores_an_encrypted_backup_then_it_is_decrypted_and_applied()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let vault = Vault::new(&env)?;
    let store_dir = env.dir().join("store");
    vault
        .back_up(&env, &FsStore::new(&store_dir), &Layout::new(""))
        .await?;

    let out = logged_output(&mut env.freezeframe(&[
        "restore",
        "--backup",
        "latest",
        "--storage",
        &format!("file://{}", store_dir.display()),
        "--namespace-map",
        "vault=vault-cli",
        "--skip-dumps",
        "--identity-file",
        vault.identity_file.to_str().unwrap(),
    ]))
    .await;

    assert_eq!(out.status.code(), Some(0));
    let secret = Api::<Secret>::namespaced(env.client(), "vault-cli")
        .get("creds")
        .await?;
    assert_eq!(
        String::from_utf8_lossy(&secret.data.unwrap_or_default()["password"].0),
        vault.secret_marker
    );
    Ok(())
}

#[tokio::test]
async fn given_an_encrypted_backup_when_described_with_contents_then_the_identity_lists_its_objects_and_none_refuses()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let vault = Vault::new(&env)?;
    let store_dir = env.dir().join("store");
    let manifest = vault
        .back_up(&env, &FsStore::new(&store_dir), &Layout::new(""))
        .await?;
    let storage = format!("file://{}", store_dir.display());
    let id = manifest.backup_id.to_string();

    let listed = logged_output(&mut env.freezeframe(&[
        "describe",
        &id,
        "--storage",
        &storage,
        "--contents",
        "--identity-file",
        vault.identity_file.to_str().unwrap(),
    ]))
    .await;
    let refused =
        logged_output(&mut env.freezeframe(&["describe", &id, "--storage", &storage, "--contents"])).await;

    assert_eq!(listed.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(stdout.contains("(archive verified)"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("secrets") && l.contains("vault") && l.contains("creds")),
        "the Secret is listed: {stdout}"
    );
    assert!(!stdout.contains(&vault.secret_marker), "names only, never values");
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("identit"),
        "says an identity is needed"
    );
    Ok(())
}

/// `age --decrypt -i identity file`: the Debian `age` tool (scripts/test installs it).
fn age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    let out = std::process::Command::new("age")
        .args(["--decrypt", "-i"])
        .arg(identity)
        .arg(file)
        .output()
        .expect("the `age` CLI is installed (scripts/test installs the Debian package `age`)");
    assert!(
        out.status.success(),
        "age: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn given_encrypted_backup_when_the_age_cli_decrypts_it_with_the_identity_file_then_archive_and_dump_are_plain()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let vault = Vault::new(&env)?;
    let store_dir = env.dir().join("store");
    let layout = Layout::new("");
    let manifest = vault.back_up(&env, &FsStore::new(&store_dir), &layout).await?;
    let id = store::BackupId::parse(&manifest.backup_id).unwrap();
    let keys = layout.backup("vault", &id);

    let archive = age_decrypt(&vault.identity_file, &store_dir.join(keys.resources()));
    let dump = age_decrypt(
        &vault.identity_file,
        &store_dir.join(keys.artifact(&manifest.dumps[0].artifact)),
    );

    assert_eq!(String::from_utf8(dump)?, format!("{}\n", vault.dump_marker));
    let tar = zstd::decode_all(&archive[..])?;
    let mut entries = tar::Archive::new(&tar[..]);
    let mut secret_yaml = None;
    for entry in entries.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        if path == "resources/core/v1/secrets/vault/creds.yaml" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)?;
            secret_yaml = Some(text);
        }
    }
    let secret_yaml = secret_yaml.expect("the Secret is in the archive");
    assert!(secret_yaml.contains(&b64(&vault.secret_marker)), "{secret_yaml}");
    Ok(())
}

#[tokio::test]
async fn given_backup_written_before_encryption_existed_when_restored_without_identity_then_it_restores()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let vault = Vault::new(&env)?;
    let mut plain_policy = vault.policy.clone();
    plain_policy.storage.encryption = None;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let manifest = env.back_up(&plain_policy, &store, &layout, start_time()).await?;
    assert_eq!(manifest.encryption, None);
    // As format 1 wrote it: the same manifest without `encryption`, `formatVersion: 1`.
    let key = layout
        .backup("vault", &store::BackupId::parse(&manifest.backup_id).unwrap())
        .manifest();
    let mut json: serde_json::Value = serde_json::from_slice(&store::get_bytes(&store, &key).await?)?;
    json["formatVersion"] = 1.into();
    assert!(json.get("encryption").is_none());
    store::put_bytes(&store, &key, &serde_json::to_vec(&json)?).await?;

    let report = restore_vault(&env, &store, &layout, &vault, "vault-old", None).await?;

    assert_both_back(&env, &vault, "vault-old", &report).await?;
    Ok(())
}
