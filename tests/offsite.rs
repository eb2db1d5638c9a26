//! `volumes.moveData` end to end: a backup in the sandbox runs real mover Jobs (this build's binary, as
//! the sandbox's kubelet runs freezeframe's image) that copy each snapshot into a repository in SeaweedFS;
//! the data comes back from the repository alone, nothing temporary stays, and a failing mover is named.

use std::path::Path;
use std::time::Duration;

use freezeframe::backup::{Context, Freeze, Manifest, Request, Status};
use freezeframe::hooks::{KubeExecutor, PodExecutor, Target, Termination};
use freezeframe::offsite::MovePlan;
use freezeframe::policy::{Policy, parse_str};
use freezeframe::snapshot::MoveStatus;
use freezeframe::store::{Layout, ObjectStore};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use sha2::{Digest, Sha256};

use crate::harness::{TestEnv, test_credentials};

const PASSWORD: &str = "correct horse battery staple";
const MARKER: &str = "FREEZEFRAME-PLAINTEXT-MARKER-7f3c";

/// Namespace `app` with a StatefulSet of `replicas` (claim `data` at /var/lib/data), and freezeframe's
/// namespace with the repository password and the S3 keys.
fn app(replicas: u32) -> String {
    let creds = test_credentials();
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: app}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: app}}
spec:
  replicas: {replicas}
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
        - name: db
          image: busybox
          volumeMounts: [{{name: data, mountPath: /var/lib/data}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: freezeframe}}
---
apiVersion: v1
kind: Secret
metadata: {{name: freezeframe-repository, namespace: freezeframe}}
stringData: {{password: "{PASSWORD}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s3-credentials, namespace: freezeframe}}
stringData: {{AWS_ACCESS_KEY_ID: "{}", AWS_SECRET_ACCESS_KEY: "{}"}}
"#,
        creds.access_key_id, creds.secret_access_key
    )
}

fn policy(env: &TestEnv, password_key: &str, mover: &str) -> Policy {
    let set = parse_str("test", &policy_text(env, password_key, mover));
    assert!(set.is_valid(), "{:#?}", set.problems);
    set.policies.into_iter().next().unwrap()
}

/// The PolicySet of [`policy`], as a file an operator keeps.
fn policy_text(env: &TestEnv, password_key: &str, mover: &str) -> String {
    format!(
        r#"
apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages:
  primary:
    s3: {{bucket: {bucket}, prefix: cluster-a, endpoint: "{endpoint}", forcePathStyle: true, region: us-east-1,
         credentialsSecret: s3-credentials}}
    repository:
      passwordSecret: {{name: freezeframe-repository, key: {password_key}}}
policies:
  - name: shop
    schedule: "@daily"
    namespaces: [app]
    retention: {{keepLast: 5}}
    storage: primary
    volumes:
      onError: partial
      moveData: true
      mover: {mover}
"#,
        bucket = env.s3().bucket(),
        endpoint = env.s3().endpoint(),
    )
}

async fn exec(env: &TestEnv, pod: &str, command: &str) -> String {
    let executor = KubeExecutor::new(env.client());
    let argv = ["sh".to_string(), "-c".to_string(), command.to_string()];
    let out = executor
        .run(
            &Target::new("app", pod, "db"),
            &argv,
            None,
            Duration::from_secs(60),
        )
        .await
        .expect("exec");
    assert!(
        matches!(out.termination, Termination::Exited(0)),
        "{command}: {out:?}"
    );
    out.stdout
}

/// Random files, repeated content, nested directories, a symlink, an empty file and modes.
async fn fill(env: &TestEnv, pod: &str, mib: u32) {
    exec(
        env,
        pod,
        &format!(
            "cd var/lib/data && mkdir -p a/b/c && head -c {}M /dev/urandom > a/random.bin \
             && for i in 1 2 3 4; do echo '{MARKER} repeated line' ; done > a/b/text.txt \
             && head -c 1M /dev/urandom > a/b/c/chunk && cat a/b/c/chunk a/b/c/chunk a/b/c/chunk > a/b/c/thrice \
             && : > empty && ln -s a/b/text.txt link && chmod 600 a/b/text.txt && chmod 755 a/b",
            mib
        ),
    )
    .await;
}

/// `./path mode what` lines (sorted) of every entry under `root`: octal mode, and `dir`, the sha256 or
/// `-> target` of a symlink (mode 0).
fn tree(root: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = format!("./{}", path.strip_prefix(root).unwrap().to_string_lossy());
            let line = if meta.file_type().is_symlink() {
                format!("{rel} 0 -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("{rel} {:o} dir", meta.permissions().mode() & 0o7777)
            } else {
                let sha = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                format!("{rel} {:o} {sha}", meta.permissions().mode() & 0o7777)
            };
            out.push(line);
        }
    }
    out.sort();
    out.join("\n")
}

/// [`tree`] of the pod's live volume, computed inside the pod.
async fn live_tree(env: &TestEnv, pod: &str) -> String {
    let script = r#"cd var/lib/data && find . -mindepth 1 | while read f; do
        if [ -L "$f" ]; then echo "$f 0 -> $(readlink "$f")";
        elif [ -d "$f" ]; then echo "$f $(stat -c %a "$f") dir";
        else echo "$f $(stat -c %a "$f") $(sha256sum < "$f" | cut -d' ' -f1)"; fi; done | LC_ALL=C sort"#;
    let text = exec(env, pod, script).await;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines.join("\n")
}

async fn back_up(env: &TestEnv, policy: &Policy, store: &dyn ObjectStore, layout: &Layout) -> Manifest {
    let client = env.client();
    let selection = freezeframe::export::Selection::for_policy(&client, policy)
        .await
        .unwrap();
    let mut freeze = Freeze::for_policy(&client, policy).await.unwrap();
    freeze.moves =
        MovePlan::for_policy(policy, Some("freezeframe"), "registry.example/freezeframe:test").unwrap();
    let clock = freezeframe::clock::SystemClock;
    let ctx = Context {
        client: client.clone(),
        store,
        layout,
        clock: &clock,
        sealing: freezeframe::store::crypt::Sealing::for_storage(None).unwrap(),
    };
    let request = Request {
        policy: &policy.name,
        selection: &selection,
        options: &freezeframe::export::ExportOptions::default(),
        freeze: &freeze,
    };
    let engine = freezeframe::hooks::Engine::new(KubeExecutor::new(client));
    freezeframe::backup::backup(
        &ctx,
        &engine,
        request,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// Every temporary mover object still in the cluster.
async fn leftovers(env: &TestEnv) -> Vec<String> {
    let params = ListParams::default().labels(freezeframe::offsite::objects::MOVER_LABEL);
    let mut out = Vec::new();
    for (group, version, kind, plural, namespaced) in [
        ("batch", "v1", "Job", "jobs", true),
        ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
        (
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshot",
            "volumesnapshots",
            true,
        ),
        (
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            false,
        ),
    ] {
        let r = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(env.client(), "freezeframe", &r)
        } else {
            Api::all_with(env.client(), &r)
        };
        for o in api.list(&params).await.unwrap().items {
            out.push(format!("{kind}/{}", o.metadata.name.unwrap_or_default()));
        }
    }
    out
}

/// `freezeframe mover restore` of repository snapshot `id` of `policy`'s storage into `target`, with the
/// password and S3 keys in the environment: the repository read without any cluster.
async fn mover_restore(env: &TestEnv, policy: &Policy, id: &str, target: &Path) -> std::process::Output {
    let repository = freezeframe::mover::RepositoryLocation::for_storage(&policy.storage.backend).to_string();
    let creds = test_credentials();
    crate::harness::logged_output(
        env.freezeframe(&[
            "mover",
            "restore",
            "--repository",
            &repository,
            "--snapshot",
            id,
            "--target",
            target.to_str().unwrap(),
        ])
        .env("FREEZEFRAME_REPOSITORY_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
        .env("AWS_REGION", "us-east-1"),
    )
    .await
}

async fn open_store(policy: &Policy) -> (std::sync::Arc<dyn ObjectStore>, Layout) {
    let creds = test_credentials();
    freezeframe::store::open(&policy.storage.backend, Some(&creds)).await
}

#[tokio::test]
async fn given_move_data_when_backed_up_then_each_claim_is_in_the_repository_restorable_without_the_cluster_and_nothing_stays()
 {
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&app(2)).unwrap();
    for pod in ["db-0", "db-1"] {
        fill(&env, pod, 2).await;
    }
    let policy = policy(&env, "password", "{concurrency: 2, timeout: 5m}");
    let (store, layout) = open_store(&policy).await;

    let manifest = back_up(&env, &policy, store.as_ref(), &layout).await;

    assert_eq!(
        manifest.status,
        Status::Completed,
        "{:#?} {:#?}",
        manifest.problems,
        manifest.volumes
    );
    let moved = &manifest.volumes.as_ref().unwrap().moved;
    assert_eq!(moved.len(), 2, "{moved:#?}");
    assert!(leftovers(&env).await.is_empty(), "{:?}", leftovers(&env).await);
    for claim in moved {
        assert_eq!(claim.mover.status, MoveStatus::Succeeded, "{claim:#?}");
        assert!(claim.mover.bytes >= 2 * 1024 * 1024, "{claim:#?}");
        // Back from the repository alone, with the binary the mover Jobs run.
        let target = env.dir().join(format!("restored-{}", claim.pvc));
        let out = mover_restore(
            &env,
            &policy,
            claim.mover.snapshot_id.as_deref().unwrap(),
            &target,
        )
        .await;
        assert!(out.status.success(), "mover restore failed");
        let pod = claim.pvc.strip_prefix("data-").unwrap();
        let restored = if target.join(&claim.pvc).exists() {
            target.join(&claim.pvc)
        } else {
            target.clone()
        };
        assert_eq!(tree(&restored), live_tree(&env, pod).await, "{}", claim.pvc);
    }
    // No volume content in plaintext anywhere in the bucket.
    let s3 = env.s3().client();
    let listed = s3
        .list_objects_v2()
        .bucket(env.s3().bucket())
        .send()
        .await
        .unwrap();
    assert!(listed.contents().len() > 3);
    for object in listed.contents() {
        let body = s3
            .get_object()
            .bucket(env.s3().bucket())
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert!(
            !body.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "plaintext in {}",
            object.key().unwrap()
        );
    }
}

/// freezeframe's namespace with the repository password and the S3 keys: what an operator installs
/// again on a new site (the second half of [`app`]).
fn freezeframe_namespace() -> String {
    let text = app(0);
    let at = text
        .find("kind: Namespace\nmetadata: {name: freezeframe}")
        .unwrap();
    format!("apiVersion: v1\n{}", &text[at..])
}

/// Restore-mover objects (Jobs, their Secrets) still in namespace `app`.
async fn restore_leftovers(env: &TestEnv) -> Vec<String> {
    let params = ListParams::default().labels(freezeframe::offsite::objects::MOVER_LABEL);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client(), "app");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client(), "app");
    let mut out: Vec<String> = jobs
        .list(&params)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|j| format!("Job/{}", j.metadata.name.unwrap_or_default()))
        .collect();
    // A restore mover's Secret is owned by its Job (and labelled with it only).
    let owned = ListParams::default().labels(freezeframe::offsite::objects::MOVER_JOB_LABEL);
    out.extend(
        secrets
            .list(&owned)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| format!("Secret/{}", s.metadata.name.unwrap_or_default())),
    );
    out
}

#[tokio::test]
async fn given_move_data_when_the_site_and_its_storage_are_lost_then_a_new_cluster_restores_every_file_from_the_repository()
 {
    let mut env = TestEnv::with_s3().await.unwrap();
    env.apply(&app(3)).unwrap();
    let pods = ["db-0", "db-1", "db-2"];
    let mut before = Vec::new();
    for pod in pods {
        fill(&env, pod, 20).await;
        before.push(live_tree(&env, pod).await);
    }
    let text = policy_text(&env, "password", "{concurrency: 2, timeout: 5m}");
    let policy = parse_str("test", &text).policies.remove(0);
    let (store, layout) = open_store(&policy).await;
    let manifest = back_up(&env, &policy, store.as_ref(), &layout).await;
    assert_eq!(manifest.status, Status::Completed, "{:#?}", manifest.problems);

    // The site is lost with its storage; a new cluster gets freezeframe's namespace and Secrets again.
    env.replace_cluster().await.unwrap();
    env.apply(&freezeframe_namespace()).unwrap();
    let policy_file = env.dir().join("policies.yaml");
    std::fs::write(&policy_file, &text).unwrap();
    let creds = test_credentials();
    let restore = |extra: &str| {
        let mut command = env.freezeframe(&[
            "restore",
            "--backup",
            "latest",
            "--policy",
            "shop",
            "--policy-file",
            policy_file.to_str().unwrap(),
            extra,
        ]);
        command
            .env("FREEZEFRAME_NAMESPACE", "freezeframe")
            .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
            .env("AWS_REGION", "us-east-1");
        command
    };
    let plan = crate::harness::logged_output(&mut restore("--dry-run")).await;
    assert!(plan.status.success());
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(
        plan.matches("new volume filled from repository snapshot").count(),
        3,
        "{plan}"
    );
    let out = crate::harness::logged_output(&mut restore("--wait")).await;

    assert!(out.status.success(), "restore failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (pod, expected) in pods.iter().zip(&before) {
        assert!(
            stdout.contains(&format!("VOLUME app/data-{pod} <- repository snapshot")),
            "{stdout}"
        );
        assert_eq!(&live_tree(&env, pod).await, expected, "{pod}");
    }
    assert!(
        restore_leftovers(&env).await.is_empty(),
        "{:?}",
        restore_leftovers(&env).await
    );
}

#[tokio::test]
async fn given_a_mover_that_fails_when_backed_up_then_partially_failed_naming_the_claim_and_nothing_stays() {
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&app(1)).unwrap();
    fill(&env, "db-0", 1).await;
    // The password Secret has no such key: the mover never gets a password.
    let policy = policy(&env, "no-such-key", "{timeout: 5s}");
    let (store, layout) = open_store(&policy).await;

    let manifest = back_up(&env, &policy, store.as_ref(), &layout).await;

    assert_eq!(
        manifest.status,
        Status::PartiallyFailed,
        "{:#?}",
        manifest.problems
    );
    assert!(
        manifest.problems.iter().any(|p| p.contains("app/data-db-0")),
        "{:#?}",
        manifest.problems
    );
    let moved = &manifest.volumes.as_ref().unwrap().moved;
    assert_eq!(moved[0].mover.status, MoveStatus::Failed);
    assert!(leftovers(&env).await.is_empty(), "{:?}", leftovers(&env).await);
    // The snapshot-only data is still recorded.
    assert_eq!(manifest.volumes.as_ref().unwrap().snapshots.len(), 1);
}

#[tokio::test]
async fn given_move_data_when_a_backup_is_pruned_then_its_repository_snapshots_are_forgotten_and_a_kept_one_still_restores()
 {
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&app(1)).unwrap();
    fill(&env, "db-0", 1).await;
    let text = policy_text(&env, "password", "{timeout: 5m}").replace("keepLast: 5", "keepLast: 1");
    let policy = parse_str("test", &text).policies.remove(0);
    let (store, layout) = open_store(&policy).await;
    let first = back_up(&env, &policy, store.as_ref(), &layout).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // backup ids have one-second resolution
    let second = back_up(&env, &policy, store.as_ref(), &layout).await;
    let id = |m: &Manifest| {
        m.volumes.as_ref().unwrap().moved[0]
            .mover
            .snapshot_id
            .clone()
            .unwrap()
    };
    let (old, kept) = (id(&first), id(&second));
    let policy_file = env.dir().join("policies.yaml");
    std::fs::write(&policy_file, &text).unwrap();

    let out = crate::harness::logged_output(
        env.freezeframe(&[
            "prune",
            "--policy",
            "shop",
            "--policy-file",
            policy_file.to_str().unwrap(),
        ])
        .env("FREEZEFRAME_NAMESPACE", "freezeframe"),
    )
    .await;

    assert!(out.status.success(), "prune failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/cluster-a/repository: pruned"),
        "the repository's first prune is due: {stdout}"
    );
    let location = freezeframe::mover::RepositoryLocation::for_storage(&policy.storage.backend);
    let creds = test_credentials();
    let credentials = freezeframe::mover::S3Credentials {
        access_key_id: Some(creds.access_key_id.clone()),
        secret_access_key: Some(creds.secret_access_key.clone()),
        session_token: None,
        region: Some("us-east-1".into()),
    };
    let ids = tokio::task::spawn_blocking(move || {
        let password = freezeframe::mover::Password::new(PASSWORD.to_string()).unwrap();
        let repository = freezeframe::mover::Repository::open(&location, &credentials, &password).unwrap();
        repository
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(ids, std::slice::from_ref(&kept), "forgotten: {old}");
    // The kept backup's data survives the repository's prune.
    let target = env.dir().join("restored");
    let restored = mover_restore(&env, &policy, &kept, &target).await;
    assert!(restored.status.success());
    assert_eq!(tree(&target), live_tree(&env, "db-0").await);
}

#[tokio::test]
async fn given_a_mover_running_when_the_backup_gets_sigterm_then_it_exits_and_no_temporary_object_stays() {
    let env = TestEnv::with_s3().await.unwrap();
    env.apply(&app(1)).unwrap();
    fill(&env, "db-0", 1).await;
    // No such key: the mover pod waits for its Secret until the Job's deadline, so it is still moving.
    let text = policy_text(&env, "no-such-key", "{timeout: 5m}");
    let policy_file = env.dir().join("policies.yaml");
    std::fs::write(&policy_file, &text).unwrap();
    let mut child = env
        .freezeframe(&[
            "backup",
            "--policy",
            "shop",
            "--policy-file",
            policy_file.to_str().unwrap(),
        ])
        .env("FREEZEFRAME_NAMESPACE", "freezeframe")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client(), "freezeframe");
    let movers = ListParams::default().labels(freezeframe::offsite::objects::MOVER_LABEL);
    tokio::time::timeout(Duration::from_secs(60), async {
        while jobs.list(&movers).await.unwrap().items.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a mover Job starts");

    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(
        unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) },
        0
    );
    let status = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exits within the pod's grace period")
        .unwrap();

    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut err)
        .await
        .unwrap();
    assert_ne!(status.code(), Some(0), "{err}");
    assert!(
        leftovers(&env).await.is_empty(),
        "{:?}\n{err}",
        leftovers(&env).await
    );
}
