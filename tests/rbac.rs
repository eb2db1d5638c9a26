//! freezeframe under the identities of `manifests/`, with exactly their RBAC, in a sandbox that enforces
//! it: `backup` (with freeze hooks, single and group snapshots, and mover Jobs copying a snapshot into a
//! repository in SeaweedFS), `run`, `prune` (ServiceAccount `freezeframe`, `manifests/rbac.yaml`) and `restore`
//! (ServiceAccount `freezeframe-restore`, `manifests/restore-job.yaml`) all succeed; and every rule is
//! needed: with any one rule removed, some command is refused with a Forbidden naming it.

use std::path::PathBuf;
use std::process::Output;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::{TestEnv, logged_output, test_credentials};

const RBAC: &str = include_str!("../manifests/rbac.yaml");
const RESTORE_JOB: &str = include_str!("../manifests/restore-job.yaml");
/// freezeframe's namespace in the manifests.
const NAMESPACE: &str = "freezeframe";
const BACKUP_ACCOUNT: &str = "freezeframe";
const RESTORE_ACCOUNT: &str = "freezeframe-restore";
const CONFIGMAP: &str = "freezeframe-policies";

/// The objects of a manifest file, without Jobs (the restore Job is the template a user copies).
fn objects(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null() && v["kind"] != "Job")
        .collect()
}

/// Namespace `db`: a StatefulSet of one pod with a claim (snapshotted), and in freezeframe's namespace
/// the webhook's Secret, the S3 keys and the repository password.
fn app() -> String {
    let creds = test_credentials();
    format!(
        "{APP}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s3-credentials, namespace: freezeframe}}\n\
         stringData: {{AWS_ACCESS_KEY_ID: \"{}\", AWS_SECRET_ACCESS_KEY: \"{}\"}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: freezeframe-repository, namespace: freezeframe}}\n\
         stringData: {{password: \"correct horse battery staple\"}}\n",
        creds.access_key_id, creds.secret_access_key
    )
}

const APP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
    apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: db}\n\
    spec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n\
    \x20 template:\n    metadata: {labels: {app: db}}\n\
    \x20   spec: {containers: [{name: db, image: busybox, volumeMounts: [{name: data, mountPath: /var/lib/data}]}]}\n\
    \x20 volumeClaimTemplates:\n    - metadata: {name: data}\n\
    \x20     spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n---\n\
    apiVersion: v1\nkind: Secret\nmetadata: {name: webhook-hmac, namespace: freezeframe}\n\
    data: {key: czNjcmV0}\n";

/// Some data on the claim, for the movers to copy and restore.
async fn write_data(env: &TestEnv) {
    use freezeframe::hooks::{KubeExecutor, PodExecutor, Target, Termination};
    let argv = ["sh", "-c", "echo data > var/lib/data/file"].map(String::from);
    let out = KubeExecutor::new(env.client())
        .run(
            &Target::new("db", "db-0", "db"),
            &argv,
            None,
            std::time::Duration::from_secs(60),
        )
        .await
        .expect("exec");
    assert!(matches!(out.termination, Termination::Exited(0)), "{out:?}");
}

/// Three policies over `db` (single snapshots with freeze hooks; a group snapshot; snapshots moved off
/// site by mover Jobs into S3), a signed webhook, and retention keeping `keep` backups.
fn policies(env: &TestEnv, keep: u32) -> String {
    format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages:\n\
         \x20 local: {{filesystem: {{path: {store}}}}}\n\
         \x20 offsite:\n\
         \x20   s3: {{bucket: {bucket}, endpoint: \"{endpoint}\", forcePathStyle: true, region: us-east-1, credentialsSecret: s3-credentials}}\n\
         \x20   repository: {{passwordSecret: {{name: freezeframe-repository, key: password}}}}\n\
         webhooks:\n  - {{name: ops, url: \"{url}\", secretRef: {{name: webhook-hmac, key: key}}, timeout: 5s}}\n\
         defaults: {{storage: local}}\n\
         policies:\n\
         \x20 - name: single\n    schedule: \"@daily\"\n    namespaces: [db]\n    retention: {{keepLast: {keep}}}\n\
         \x20   rules:\n\
         \x20     pre: [{{podSelector: {{app: db}}, actions: [{{value: \"echo frozen\"}}]}}]\n\
         \x20     post: [{{podSelector: {{app: db}}, actions: [{{value: \"echo thawed\"}}]}}]\n\
         \x20 - name: group\n    schedule: \"@daily\"\n    namespaces: [db]\n    retention: {{keepLast: {keep}}}\n\
         \x20   volumes: {{group: true}}\n\
         \x20 - name: moved\n    schedule: \"@daily\"\n    namespaces: [db]\n    retention: {{keepLast: {keep}}}\n\
         \x20   storage: offsite\n    volumes: {{moveData: true}}\n",
        store = env.dir().join("backups").display(),
        url = env.webhook().url_for("/ops"),
        bucket = env.s3().bucket(),
        endpoint = env.s3().endpoint(),
    )
}

/// One command of the scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    BackupSingle,
    BackupGroup,
    /// A backup whose snapshot a mover Job copies into the repository.
    BackupMoved,
    /// `run --now single --now group`: the CronJob tick (Lease, schedule annotations).
    Run,
    /// `prune` of both policies after their retention was lowered to one backup.
    Prune,
    /// `restore` of the latest `single` backup into a new namespace.
    Restore,
    /// `restore` of the latest `moved` backup, its claim filled from the repository by a restore mover.
    RestoreMoved,
}

const SCENARIO: [Step; 7] = [
    Step::BackupSingle,
    Step::BackupGroup,
    Step::BackupMoved,
    Step::Run,
    Step::Prune,
    Step::Restore,
    Step::RestoreMoved,
];

/// A sandbox with the app, the manifests' RBAC and the policy ConfigMap, and a kubeconfig per identity.
struct World {
    env: TestEnv,
    backup: PathBuf,
    restore: PathBuf,
    restores: std::cell::Cell<usize>,
}

impl World {
    async fn new() -> World {
        let env = TestEnv::with_s3().await.unwrap();
        for object in objects(RBAC).into_iter().chain(objects(RESTORE_JOB)) {
            env.apply(&serde_yaml::to_string(&object).unwrap()).unwrap();
        }
        env.apply(&app()).unwrap();
        write_data(&env).await;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.into()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            data: Some([("policies.yaml".to_string(), policies(&env, 2))].into()),
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(env.client(), NAMESPACE)
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
        let backup = env.service_account_kubeconfig(NAMESPACE, BACKUP_ACCOUNT).unwrap();
        let restore = env
            .service_account_kubeconfig(NAMESPACE, RESTORE_ACCOUNT)
            .unwrap();
        World {
            env,
            backup,
            restore,
            restores: std::cell::Cell::new(0),
        }
    }

    /// `freezeframe <args>` as the pod of `kubeconfig`'s ServiceAccount runs it.
    async fn freezeframe(&self, kubeconfig: &PathBuf, args: &[&str]) -> Output {
        logged_output(
            self.env
                .freezeframe(args)
                .env("KUBECONFIG", kubeconfig)
                .env("FREEZEFRAME_NAMESPACE", NAMESPACE),
        )
        .await
    }

    async fn set_retention(&self, keep: u32) {
        let patch = json!({"data": {"policies.yaml": policies(&self.env, keep)}});
        Api::<ConfigMap>::namespaced(self.env.client(), NAMESPACE)
            .patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Run one step as its identity: the outputs of its commands (the ServiceAccount's user name).
    async fn step(&self, step: Step) -> (Output, &'static str) {
        let backup =
            |args: &'static [&'static str]| async move { self.freezeframe(&self.backup, args).await };
        let out = match step {
            Step::BackupSingle => backup(&["backup", "--policy", "single"]).await,
            Step::BackupGroup => backup(&["backup", "--policy", "group"]).await,
            Step::BackupMoved => backup(&["backup", "--policy", "moved"]).await,
            Step::Run => backup(&["run", "--now", "single", "--now", "group"]).await,
            Step::Prune => {
                self.set_retention(1).await;
                let out = backup(&["prune", "--policy", "single", "--policy", "group"]).await;
                self.set_retention(2).await;
                out
            }
            Step::Restore | Step::RestoreMoved => {
                let n = self.restores.get() + 1;
                self.restores.set(n);
                let map = format!("db=db-copy-{n}");
                let (policy, volumes) = match step {
                    Step::Restore => ("single", "snapshot"),
                    _ => ("moved", "repository"),
                };
                let creds = test_credentials();
                let out = logged_output(
                    self.env
                        .freezeframe(&[
                            "restore",
                            "--backup",
                            "latest",
                            "--policy",
                            policy,
                            "--volumes-from",
                            volumes,
                            "--namespace-map",
                            &map,
                        ])
                        .env("KUBECONFIG", &self.restore)
                        .env("FREEZEFRAME_NAMESPACE", NAMESPACE)
                        // As the restore Job maps the storage Secret into its environment.
                        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
                        .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
                        .env("AWS_REGION", "us-east-1"),
                )
                .await;
                return (out, RESTORE_ACCOUNT);
            }
        };
        (out, BACKUP_ACCOUNT)
    }
}

fn text(out: &Output) -> String {
    let raw = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Log fields may carry the API's message Debug-escaped.
    raw.replace("\\\\\\\"", "\"").replace("\\\"", "\"")
}

/// A Forbidden as the API server words it: (verb, resource[/subresource], API group).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Denial {
    verb: String,
    resource: String,
    group: String,
}

/// Every `User "system:serviceaccount:freezeframe:<account>" cannot <verb> resource "<r>" in API group
/// "<g>"` in `text`.
fn denials(text: &str, account: &str) -> Vec<Denial> {
    let prefix = format!("User \"system:serviceaccount:{NAMESPACE}:{account}\" cannot ");
    text.match_indices(&prefix)
        .filter_map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let (verb, rest) = rest.split_once(" resource \"")?;
            let (resource, rest) = rest.split_once("\" in API group \"")?;
            let (group, _) = rest.split_once('"')?;
            Some(Denial {
                verb: verb.into(),
                resource: resource.into(),
                group: group.into(),
            })
        })
        .collect()
}

/// Does `rule` grant what `denial` was refused?
fn names_rule(denial: &Denial, rule: &Value) -> bool {
    let has = |field: &str, value: &str| {
        rule[field]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "*" || x == value))
    };
    has("verbs", &denial.verb) && has("resources", &denial.resource) && has("apiGroups", &denial.group)
}

#[tokio::test]
async fn given_manifests_rbac_when_backup_run_prune_and_restore_run_as_their_service_accounts_then_all_succeed_without_a_forbidden()
 {
    let world = World::new().await;
    for step in SCENARIO {
        let (out, account) = world.step(step).await;
        assert_eq!(out.status.code(), Some(0), "{step:?} failed");
        let denied = denials(&text(&out), account);
        assert!(denied.is_empty(), "{step:?} was refused: {denied:?}");
    }
    let copy: Namespace = Api::all(world.env.client()).get("db-copy-1").await.unwrap();
    assert_eq!(copy.metadata.name.as_deref(), Some("db-copy-1"));
    assert_eq!(
        world.env.webhook().requests().len() % 2,
        0,
        "started/finished pairs"
    );
}

/// The Role or ClusterRole objects of the manifests, each with the identity it is bound to.
fn roles() -> Vec<(Value, &'static str)> {
    let of = |text: &str, account: &'static str| {
        objects(text)
            .into_iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
            .map(move |o| (o, account))
            .collect::<Vec<_>>()
    };
    [of(RBAC, BACKUP_ACCOUNT), of(RESTORE_JOB, RESTORE_ACCOUNT)].concat()
}

#[tokio::test]
async fn given_any_one_rule_of_the_manifests_removed_when_the_commands_run_then_one_is_refused_naming_it() {
    let world = World::new().await;
    // A baseline: each policy has backups to prune and restore from.
    for step in [Step::BackupSingle, Step::BackupGroup, Step::BackupMoved] {
        assert_eq!(world.step(step).await.0.status.code(), Some(0), "{step:?}");
    }
    let mut unneeded = Vec::new();
    for (role, account) in roles() {
        let name = format!(
            "{} {}",
            role["kind"].as_str().unwrap(),
            role["metadata"]["name"].as_str().unwrap()
        );
        let rules = role["rules"].as_array().unwrap().clone();
        for (index, rule) in rules.iter().enumerate() {
            let mut without = role.clone();
            without["rules"].as_array_mut().unwrap().remove(index);
            world
                .env
                .apply(&serde_yaml::to_string(&without).unwrap())
                .unwrap();
            let mut refused = None;
            let steps = SCENARIO
                .into_iter()
                .filter(|s| matches!(s, Step::Restore | Step::RestoreMoved) == (account == RESTORE_ACCOUNT));
            for step in steps {
                let (out, _) = world.step(step).await;
                if let Some(d) = denials(&text(&out), account)
                    .into_iter()
                    .find(|d| names_rule(d, rule))
                {
                    refused = Some((step, d));
                    break;
                }
            }
            world.env.apply(&serde_yaml::to_string(&role).unwrap()).unwrap();
            match refused {
                Some((step, denial)) => eprintln!("{name} rule {index} {rule}: {step:?} refused {denial:?}"),
                None => unneeded.push(format!("{name} rule {index}: {rule}")),
            }
        }
    }
    assert!(
        unneeded.is_empty(),
        "no command needed these rules:\n{}",
        unneeded.join("\n")
    );
}

/// A rule as docs/rbac.md's table and the manifests both describe it: role, kind, API groups,
/// resources, resourceNames, verbs.
type RuleRow = (String, String, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// The `| role | kind | API groups | resources | resourceNames | verbs | needed by |` rows of docs/rbac.md.
fn documented_rules(text: &str) -> Vec<RuleRow> {
    let list = |cell: &str| -> Vec<String> {
        cell.split(',')
            .map(|s| s.trim().trim_matches('`').trim_matches('"').to_string())
            .filter(|s| !s.is_empty() || cell.contains("\"\""))
            .collect()
    };
    text.lines()
        .filter(|l| l.starts_with("| `freezeframe-"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 7, "docs/rbac.md: a rule row has 7 cells: {l}");
            (
                cells[0].trim_matches('`').to_string(),
                cells[1].to_string(),
                list(cells[2]),
                list(cells[3]),
                list(cells[4]),
                list(cells[5]),
            )
        })
        .collect()
}

fn manifest_rules() -> Vec<RuleRow> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    roles()
        .into_iter()
        .flat_map(|(role, _)| {
            let name = role["metadata"]["name"].as_str().unwrap().to_string();
            let kind = role["kind"].as_str().unwrap().to_string();
            role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        name.clone(),
                        kind.clone(),
                        strings(&r["apiGroups"]),
                        strings(&r["resources"]),
                        strings(&r["resourceNames"]),
                        strings(&r["verbs"]),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn given_docs_rbac_table_then_it_lists_exactly_the_manifests_rules() {
    let doc = include_str!("../docs/rbac.md");
    assert_eq!(documented_rules(doc), manifest_rules());
}

#[test]
fn given_docs_naming_freezeframe_roles_then_each_exists_in_the_manifests() {
    let known: std::collections::BTreeSet<String> = manifest_rules().into_iter().map(|r| r.0).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut unknown = Vec::new();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("`freezeframe-") {
            let name: String = text[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            let before = &text[at.saturating_sub(200)..at];
            let is_role = ["Role", "role", "RBAC", "rbac"]
                .iter()
                .any(|w| before.contains(w));
            // Other freezeframe-* names (the policy ConfigMap, the Lease, the restore Job) are not roles.
            let not_a_role = [
                "freezeframe-policies`",
                "freezeframe-run`",
                "freezeframe-restore`",
            ]
            .iter()
            .any(|n| text[at + 1..].starts_with(n));
            if is_role && !not_a_role && !known.contains(&name) {
                unknown.push(format!("{}: `{name}`", file.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "roles named in docs but not in manifests/: {unknown:?}"
    );
}
