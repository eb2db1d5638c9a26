//! The temporary objects of one mover: the snapshot exposed in freezeframe's namespace (a
//! VolumeSnapshotContent with the recorded handle and `deletionPolicy: Retain`, a VolumeSnapshot bound to
//! it, a claim from it) and the Job of freezeframe's own image that reads the claim. Pure builders.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::policy::{Mover, SecretKeyRef};
use crate::snapshot::{BACKUP_ID_LABEL, POLICY_LABEL, VolumeRecord};

/// Label on every temporary object of a mover: `backup` or `restore`.
pub const MOVER_LABEL: &str = "freezeframe.dev/mover";
/// Label on a mover Job's pod template: the Job's name (the pod is found by it).
pub const MOVER_JOB_LABEL: &str = "freezeframe.dev/mover-job";
/// Where the claim is mounted in the mover's container.
pub const MOUNT_PATH: &str = "/data";
/// The Job's container name.
pub const CONTAINER: &str = "mover";

/// The kinds of temporary objects, in the order they are created (deleted in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TempKind {
    /// `VolumeSnapshotContent` (cluster-scoped).
    Content,
    /// `VolumeSnapshot`.
    Snapshot,
    /// `PersistentVolumeClaim`.
    Claim,
    /// `Secret`: a restore mover's repository password and S3 keys, in the restored claim's namespace,
    /// owned by its Job (garbage-collected with it, so never deleted by freezeframe itself).
    Secret,
    /// `batch/v1` `Job`.
    Job,
}

impl TempKind {
    /// Every kind freezeframe deletes, in creation order (Secrets go with their Job).
    pub const ALL: [TempKind; 4] = [
        TempKind::Content,
        TempKind::Snapshot,
        TempKind::Claim,
        TempKind::Job,
    ];

    /// The API kind.
    pub fn kind(self) -> &'static str {
        match self {
            TempKind::Content => "VolumeSnapshotContent",
            TempKind::Snapshot => "VolumeSnapshot",
            TempKind::Claim => "PersistentVolumeClaim",
            TempKind::Secret => "Secret",
            TempKind::Job => "Job",
        }
    }
}

/// One object to create.
#[derive(Debug, Clone, PartialEq)]
pub struct TempObject {
    /// Its kind.
    pub kind: TempKind,
    /// Namespace (`None` = cluster-scoped).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The whole object.
    pub body: Value,
}

/// The environment variable of the repository password (`freezeframe mover`).
pub const PASSWORD_ENV: &str = "FREEZEFRAME_REPOSITORY_PASSWORD";
/// The environment variables (and Secret keys) of the S3 keys.
pub const ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
/// See [`ACCESS_KEY_ENV`].
pub const SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";

/// `object` owned by Job `job` (uid `uid`): garbage-collected when the Job is deleted.
pub fn owned_by(mut object: TempObject, job: &str, uid: &str) -> TempObject {
    object.body["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job,
        "uid": uid,
    }]);
    object
}

/// An env var from a Secret key.
fn secret_env(var: &str, secret: &str, key: &str) -> Value {
    json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

/// What differs between a backup mover's Job and a restore mover's.
struct JobParts<'a> {
    name: &'a str,
    namespace: &'a str,
    claim: &'a str,
    read_only: bool,
    env: Vec<Value>,
}

/// Where the repository is and how the mover reaches it: the pieces of a Job that do not depend on the
/// volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryAccess {
    /// The repository in restic's syntax (`s3:http://host:port/bucket/prefix/repository` or a path).
    pub url: String,
    /// The Secret key holding the repository password (in freezeframe's namespace).
    pub password_secret: SecretKeyRef,
    /// The Secret with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; `None` = the pod's default chain.
    pub credentials_secret: Option<String>,
    /// `AWS_REGION`, when the storage names one.
    pub region: Option<String>,
}

/// Everything a backup's movers share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoverSpec {
    /// freezeframe's namespace: every namespaced temporary object lives there.
    pub namespace: String,
    /// freezeframe's own image.
    pub image: String,
    /// The policy.
    pub policy: String,
    /// The backup id.
    pub backup_id: String,
    /// The repository.
    pub repository: RepositoryAccess,
    /// Concurrency, resources, placement and timeout.
    pub mover: Mover,
}

impl MoverSpec {
    /// The labels of every temporary object of this backup.
    pub fn labels(&self, direction: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "freezeframe".to_string(),
            ),
            (POLICY_LABEL.to_string(), self.policy.clone()),
            (BACKUP_ID_LABEL.to_string(), self.backup_id.clone()),
            (MOVER_LABEL.to_string(), direction.to_string()),
        ])
    }

    /// Selects every temporary object of this backup's movers.
    pub fn this_backup(&self) -> String {
        format!(
            "{MOVER_LABEL},{POLICY_LABEL}={},{BACKUP_ID_LABEL}={}",
            self.policy, self.backup_id
        )
    }

    /// Selects the temporary objects of this policy's earlier (crashed) runs.
    pub fn earlier_runs(&self) -> String {
        format!(
            "{MOVER_LABEL},{POLICY_LABEL}={},{BACKUP_ID_LABEL}!={}",
            self.policy, self.backup_id
        )
    }

    /// The name shared by a volume's temporary objects: unique per policy, backup and claim, a DNS label
    /// (a Job's name becomes a pod label value, so at most 63 characters).
    pub fn name(&self, namespace: &str, pvc: &str) -> String {
        self.named("ffm", namespace, pvc)
    }

    /// The name of a restore mover's objects for claim `pvc` restored into `namespace`.
    pub fn restore_name(&self, namespace: &str, pvc: &str) -> String {
        self.named("ffr", namespace, pvc)
    }

    fn named(&self, prefix: &str, namespace: &str, pvc: &str) -> String {
        let digest = Sha256::digest(format!("{}/{}/{namespace}/{pvc}", self.policy, self.backup_id));
        let hash = hex::encode(&digest[..4]);
        let readable: String = format!("{prefix}-{}-{pvc}", self.policy)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(63 - hash.len() - 1)
            .collect();
        format!("{}-{hash}", readable.trim_end_matches('-'))
    }

    /// The four objects that copy `volume` into the repository, in creation order.
    pub fn backup_objects(&self, volume: &VolumeRecord, storage_class: Option<&str>) -> Vec<TempObject> {
        let name = self.name(&volume.namespace, &volume.pvc);
        let mut labels = self.labels("backup");
        labels.insert(MOVER_JOB_LABEL.to_string(), name.clone());
        let content = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "deletionPolicy": "Retain",
                "driver": volume.driver,
                "source": {"snapshotHandle": volume.snapshot_handle},
                "volumeSnapshotRef": {
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshot",
                    "namespace": self.namespace,
                    "name": name,
                },
            },
        });
        let snapshot = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {"source": {"volumeSnapshotContentName": name}},
        });
        let mut claim_spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "dataSource": {
                "apiGroup": "snapshot.storage.k8s.io",
                "kind": "VolumeSnapshot",
                "name": name,
            },
            "resources": {"requests": {"storage": volume.size.clone().unwrap_or_else(|| "1Gi".to_string())}},
        });
        if let Some(class) = storage_class {
            claim_spec["storageClassName"] = json!(class);
        }
        let claim = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": claim_spec,
        });
        let args = vec![
            "mover".to_string(),
            "backup".to_string(),
            "--repository".to_string(),
            self.repository.url.clone(),
            "--source".to_string(),
            MOUNT_PATH.to_string(),
            "--tag".to_string(),
            format!("policy={}", self.policy),
            "--tag".to_string(),
            format!("backup={}", self.backup_id),
            "--tag".to_string(),
            format!("namespace={}", volume.namespace),
            "--tag".to_string(),
            format!("pvc={}", volume.pvc),
            // The same host and path for every backup of a claim: the mover's parent snapshot (and so
            // an unchanged volume's fast second run) is found by them.
            "--host".to_string(),
            volume.namespace.clone(),
            "--path-label".to_string(),
            volume.pvc.clone(),
        ];
        let job = self.job(
            &JobParts {
                name: &name,
                namespace: &self.namespace,
                claim: &name,
                read_only: true,
                env: self.backup_env(),
            },
            &labels,
            args,
        );
        vec![
            TempObject {
                kind: TempKind::Content,
                namespace: None,
                name: name.clone(),
                body: content,
            },
            TempObject {
                kind: TempKind::Snapshot,
                namespace: Some(self.namespace.clone()),
                name: name.clone(),
                body: snapshot,
            },
            TempObject {
                kind: TempKind::Claim,
                namespace: Some(self.namespace.clone()),
                name: name.clone(),
                body: claim,
            },
            TempObject {
                kind: TempKind::Job,
                namespace: Some(self.namespace.clone()),
                name,
                body: job,
            },
        ]
    }

    /// The backup mover's environment: the repository password and S3 keys from their Secrets in
    /// freezeframe's namespace.
    fn backup_env(&self) -> Vec<Value> {
        let mut env = vec![secret_env(
            PASSWORD_ENV,
            &self.repository.password_secret.name,
            &self.repository.password_secret.key,
        )];
        if let Some(secret) = &self.repository.credentials_secret {
            env.push(secret_env(ACCESS_KEY_ENV, secret, ACCESS_KEY_ENV));
            env.push(secret_env(SECRET_KEY_ENV, secret, SECRET_KEY_ENV));
        }
        env
    }

    /// The objects that fill claim `claim` in `namespace` (created empty by the restore) with repository
    /// snapshot `snapshot_id`, in creation order: the Job, mounting the claim read-write, and a Secret
    /// in that namespace holding `secret` (the password and S3 keys: a pod reads Secrets of its own
    /// namespace only). Create the Secret with [`owned_by`] the created Job: its pod waits for it, and
    /// it is garbage-collected with the Job. Only the Job carries [`MOVER_LABEL`] (sweeps delete Jobs).
    pub fn restore_objects(
        &self,
        namespace: &str,
        claim: &str,
        snapshot_id: &str,
        secret: &BTreeMap<String, Vec<u8>>,
    ) -> Vec<TempObject> {
        use base64::Engine as _;
        let name = self.restore_name(namespace, claim);
        let mut labels = self.labels("restore");
        labels.insert(MOVER_JOB_LABEL.to_string(), name.clone());
        let data: BTreeMap<&String, String> = secret
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        let mut secret_labels = labels.clone();
        secret_labels.remove(MOVER_LABEL);
        let secret_object = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": secret_labels},
            "type": "Opaque",
            "data": data,
        });
        let env = secret.keys().map(|key| secret_env(key, &name, key)).collect();
        let args = [
            "mover",
            "restore",
            "--repository",
            &self.repository.url,
            "--snapshot",
            snapshot_id,
            "--target",
            MOUNT_PATH,
        ]
        .map(str::to_string)
        .to_vec();
        let job = self.job(
            &JobParts {
                name: &name,
                namespace,
                claim,
                read_only: false,
                env,
            },
            &labels,
            args,
        );
        vec![
            TempObject {
                kind: TempKind::Job,
                namespace: Some(namespace.to_string()),
                name: name.clone(),
                body: job,
            },
            TempObject {
                kind: TempKind::Secret,
                namespace: Some(namespace.to_string()),
                name,
                body: secret_object,
            },
        ]
    }

    /// A mover Job running `freezeframe <args>` with `parts.claim` mounted at [`MOUNT_PATH`].
    fn job(&self, parts: &JobParts<'_>, labels: &BTreeMap<String, String>, args: Vec<String>) -> Value {
        let JobParts {
            name,
            namespace,
            claim,
            read_only,
            ref env,
        } = *parts;
        let mut env = env.clone();
        if let Some(region) = &self.repository.region {
            env.push(json!({"name": "AWS_REGION", "value": region}));
        }
        let pod_labels = labels;
        let mut resources = serde_json::Map::new();
        if !self.mover.resources.requests.is_empty() {
            resources.insert("requests".into(), json!(self.mover.resources.requests));
        }
        if !self.mover.resources.limits.is_empty() {
            resources.insert("limits".into(), json!(self.mover.resources.limits));
        }
        let tolerations: Vec<Value> = self
            .mover
            .tolerations
            .iter()
            .map(|t| {
                let mut v = serde_json::Map::new();
                for (field, value) in [
                    ("key", &t.key),
                    ("operator", &t.operator),
                    ("value", &t.value),
                    ("effect", &t.effect),
                ] {
                    if let Some(value) = value {
                        v.insert(field.into(), json!(value));
                    }
                }
                if let Some(s) = t.toleration_seconds {
                    v.insert("tolerationSeconds".into(), json!(s));
                }
                Value::Object(v)
            })
            .collect();
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": self.mover.timeout.as_secs().max(1),
                // A safety net for a run killed with SIGKILL: its next run sweeps the rest.
                "ttlSecondsAfterFinished": 86_400,
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": self.mover.node_selector,
                        "tolerations": tolerations,
                        "containers": [{
                            "name": CONTAINER,
                            "image": self.image,
                            "args": args,
                            "env": env,
                            "resources": resources,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "data", "mountPath": MOUNT_PATH, "readOnly": read_only}],
                        }],
                        "volumes": [{
                            "name": "data",
                            "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
                        }],
                    },
                },
            },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::{MoverResources, Toleration};

    pub(crate) fn spec() -> MoverSpec {
        MoverSpec {
            namespace: "freezeframe".into(),
            image: "registry.example/freezeframe:1.2.3".into(),
            policy: "shop".into(),
            backup_id: "20261204T164500Z".into(),
            repository: RepositoryAccess {
                url: "s3:http://127.0.0.1:8333/dr/cluster-a/repository".into(),
                password_secret: SecretKeyRef {
                    name: "freezeframe-repository".into(),
                    key: "password".into(),
                },
                credentials_secret: Some("s3-credentials".into()),
                region: Some("us-east-1".into()),
            },
            mover: Mover {
                concurrency: 2,
                resources: MoverResources {
                    requests: BTreeMap::from([("cpu".into(), "250m".into())]),
                    limits: BTreeMap::from([("memory".into(), "1Gi".into())]),
                },
                node_selector: BTreeMap::from([("pool".into(), "movers".into())]),
                tolerations: vec![Toleration {
                    key: Some("dedicated".into()),
                    operator: Some("Equal".into()),
                    value: Some("movers".into()),
                    effect: Some("NoSchedule".into()),
                    toleration_seconds: None,
                }],
                timeout: std::time::Duration::from_secs(7200),
            },
        }
    }

    pub(crate) fn volume(pvc: &str) -> VolumeRecord {
        VolumeRecord {
            namespace: "shop".into(),
            name: format!("{pvc}-ff"),
            pvc: pvc.into(),
            size: Some("1Gi".into()),
            class: "csi-snapclass".into(),
            driver: "hostpath.csi.k8s.io".into(),
            content_name: format!("snapcontent-{pvc}"),
            snapshot_handle: format!("handle-{pvc}"),
            creation_time: None,
            group: None,
            moved: None,
        }
    }

    #[test]
    fn given_a_volume_when_exposing_then_content_keeps_the_handle_retained_and_binds_our_snapshot() {
        let objects = spec().backup_objects(&volume("data-db-0"), Some("fast"));
        let kinds: Vec<TempKind> = objects.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            [
                TempKind::Content,
                TempKind::Snapshot,
                TempKind::Claim,
                TempKind::Job
            ]
        );
        let name = &objects[0].name;
        assert!(objects.iter().all(|o| &o.name == name));
        let content = &objects[0].body;
        assert_eq!(content["spec"]["deletionPolicy"], "Retain");
        assert_eq!(content["spec"]["source"]["snapshotHandle"], "handle-data-db-0");
        assert_eq!(content["spec"]["volumeSnapshotRef"]["namespace"], "freezeframe");
        assert_eq!(objects[1].namespace.as_deref(), Some("freezeframe"));
        assert_eq!(
            objects[1].body["spec"]["source"]["volumeSnapshotContentName"],
            *name
        );
        let claim = &objects[2].body["spec"];
        assert_eq!(claim["dataSource"]["kind"], "VolumeSnapshot");
        assert_eq!(claim["storageClassName"], "fast");
        assert_eq!(claim["resources"]["requests"]["storage"], "1Gi");
        for o in &objects {
            assert_ne!(
                o.namespace.as_deref(),
                Some("shop"),
                "the app's namespace is never touched"
            );
            assert_eq!(o.body["metadata"]["labels"][BACKUP_ID_LABEL], "20261204T164500Z");
        }
    }

    #[test]
    fn given_mover_settings_when_building_the_job_then_image_secrets_placement_and_deadline_follow_them() {
        let objects = spec().backup_objects(&volume("data-db-0"), None);
        let job = &objects[3].body;
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 7200);
        assert_eq!(job["spec"]["backoffLimit"], 0);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["pool"], "movers");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/freezeframe:1.2.3");
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        assert_eq!(c["resources"]["requests"]["cpu"], "250m");
        assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            &args[..6],
            [
                "mover",
                "backup",
                "--repository",
                "s3:http://127.0.0.1:8333/dr/cluster-a/repository",
                "--source",
                MOUNT_PATH
            ]
        );
        assert!(args.windows(2).any(|w| w == ["--tag", "pvc=data-db-0"]));
        let env = c["env"].as_array().unwrap();
        let password = env
            .iter()
            .find(|e| e["name"] == "FREEZEFRAME_REPOSITORY_PASSWORD")
            .unwrap();
        assert_eq!(
            password["valueFrom"]["secretKeyRef"]["name"],
            "freezeframe-repository"
        );
        assert!(env.iter().any(|e| e["name"] == "AWS_SECRET_ACCESS_KEY"
            && e["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"));
        assert!(!c.to_string().contains("password\":\""), "no secret value inline");
        assert!(objects[2].body["spec"].get("storageClassName").is_none());
    }

    #[test]
    fn given_claims_of_two_backups_when_naming_then_names_differ_and_fit_a_label() {
        let a = spec();
        let mut b = spec();
        b.backup_id = "20261204T164501Z".into();
        assert_ne!(a.name("shop", "data-db-0"), b.name("shop", "data-db-0"));
        assert_ne!(a.name("shop", "data-db-0"), a.name("shop2", "data-db-0"));
        let long = a.name("shop", &"x.y".repeat(120));
        assert!(long.len() <= 63, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(a.name("shop", "data-db-0").starts_with("ffm-shop-data-db-0-"));
    }
}
