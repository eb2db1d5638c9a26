//! The raw policy language: exactly what a user writes, as serde structs with `deny_unknown_fields`.
//!
//! Nothing here is interpreted: durations, schedules and selectors stay text/maps so the validator can
//! report them with positions. Field names are the contract documented in `docs/policy.md`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Top-level keys of a PolicySet (decoded one section at a time, see `policy::parse`).
pub const POLICY_SET_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "storages",
    "webhooks",
    "defaults",
    "policies",
];

/// One storage: exactly one backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStorage {
    pub s3: Option<RawS3>,
    pub filesystem: Option<RawFilesystem>,
    pub repository: Option<RawRepository>,
    pub encryption: Option<RawEncryption>,
}

/// Client-side encryption of a storage's artifacts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEncryption {
    pub recipients: Vec<String>,
    pub identity_secret: Option<RawSecretKeyRef>,
}

/// S3 Object Lock retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawObjectLock {
    pub mode: String,
    pub retain_days: i64,
}

/// Where moved volume data lives: a restic-format repository under the storage's prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRepository {
    pub password_secret: Option<RawSecretKeyRef>,
    pub prune_every: Option<String>,
}

/// An S3 (or S3-compatible) bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawS3 {
    pub bucket: String,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub credentials_secret: Option<String>,
    pub server_side_encryption: Option<String>,
    pub kms_key_id: Option<String>,
    pub object_lock: Option<RawObjectLock>,
}

/// A directory on a mounted volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFilesystem {
    pub path: String,
}

/// A webhook receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWebhook {
    pub name: String,
    pub url: String,
    pub events: Option<Vec<String>>,
    pub secret_ref: Option<RawSecretKeyRef>,
    pub timeout: Option<String>,
}

/// A key of a Secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Values used when a policy does not set them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDefaults {
    pub storage: Option<String>,
    pub timezone: Option<String>,
    pub starting_deadline: Option<String>,
    pub retention: Option<RawRetention>,
}

/// One policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    pub name: String,
    pub schedule: String,
    pub timezone: Option<String>,
    pub starting_deadline: Option<String>,
    pub run_on_create: Option<bool>,
    pub suspend: Option<bool>,
    pub namespaces: Option<Vec<String>>,
    pub namespace_selector: Option<RawLabelSelector>,
    pub selector: Option<RawLabelSelector>,
    pub resources: Option<RawResources>,
    pub volumes: Option<RawVolumes>,
    pub rules: Option<RawRules>,
    pub pre_exec_rule: Option<String>,
    pub post_exec_rule: Option<String>,
    pub honor_velero_annotations: Option<bool>,
    pub dumps: Option<Vec<RawDump>>,
    pub retention: Option<RawRetention>,
    pub storage: Option<String>,
    pub webhooks: Option<Vec<String>>,
}

/// A Kubernetes LabelSelector as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLabelSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<RawRequirement>>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRequirement {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

/// Which API resources to export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawResources {
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
}

/// Volume snapshot settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawVolumes {
    pub snapshot: Option<SnapshotMode>,
    pub group: Option<bool>,
    pub volume_snapshot_class: Option<String>,
    pub volume_group_snapshot_class: Option<String>,
    pub on_error: Option<VolumeOnError>,
    pub ready_timeout: Option<String>,
    pub keep_failed: Option<bool>,
    pub move_data: Option<bool>,
    pub mover: Option<RawMover>,
}

/// How the mover Jobs run (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMover {
    pub concurrency: Option<i64>,
    pub resources: Option<RawResourceRequirements>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<RawToleration>>,
    pub timeout: Option<String>,
}

/// A container's `resources`, as Kubernetes writes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawResourceRequirements {
    pub requests: Option<BTreeMap<String, QuantityText>>,
    pub limits: Option<BTreeMap<String, QuantityText>>,
}

/// A quantity as written: `250m`, `1Gi` or a bare number (YAML may read `2` as an integer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityText(pub String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = QuantityText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a quantity such as 250m, 256Mi or 2")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A pod toleration, as Kubernetes writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawToleration {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
    pub toleration_seconds: Option<i64>,
}

/// How volumes are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotMode {
    /// CSI VolumeSnapshots (or a VolumeGroupSnapshot with `group: true`).
    Csi,
    /// No volume data (configuration and dumps only).
    None,
}

/// What a failed snapshot makes of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeOnError {
    /// The backup fails.
    Fail,
    /// The backup is PartiallyFailed; other artifacts are kept.
    Partial,
}

/// Pre and post rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRules {
    pub pre: Option<Vec<RawRuleItem>>,
    pub post: Option<Vec<RawRuleItem>>,
    pub max_freeze: Option<String>,
}

/// One rule item: a pod group and the actions run on it (Stork's shape plus our options).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRuleItem {
    pub pod_selector: BTreeMap<String, serde_json::Value>,
    pub container: Option<String>,
    pub on_no_pods: Option<OnNoPods>,
    pub include_not_ready: Option<bool>,
    pub actions: Vec<RawAction>,
}

/// What an empty pod selection means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnNoPods {
    /// An error (default: an empty group is a mistake worth hearing about).
    Fail,
    /// Skip the rule (or dump) and say so in the report.
    Skip,
}

/// One action of a rule item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAction {
    #[serde(rename = "type")]
    pub kind: Option<ActionType>,
    pub value: Option<String>,
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub on_error: Option<OnError>,
    pub run_in_single_pod: Option<bool>,
    pub background: Option<bool>,
}

/// Action types (Stork has only `command`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionType {
    /// Run a command in the container.
    Command,
}

/// What a failed action does to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnError {
    /// Stop: no snapshot or dump for the group; thaw what was frozen.
    Abort,
    /// Record the failure and go on.
    Continue,
}

/// A logical dump streamed from a pod into the object store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDump {
    pub name: Option<String>,
    pub pod_selector: BTreeMap<String, serde_json::Value>,
    pub container: Option<String>,
    pub command: StringOrList,
    pub restore_command: Option<StringOrList>,
    pub run_in_single_pod: Option<bool>,
    pub timeout: Option<String>,
    pub while_frozen: Option<bool>,
    pub on_no_pods: Option<OnNoPods>,
}

/// A command as a shell string (`sh -c`) or an argv list (no shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringOrList {
    /// Run through `sh -c`.
    String(String),
    /// Run without a shell.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a shell command string or an argv list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::String(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StringOrList::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Retention as written; counts are signed so a negative count gets a precise message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetention {
    pub keep_last: Option<i64>,
    pub keep_hourly: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
    pub keep_yearly: Option<i64>,
    pub keep_within: Option<String>,
}

/// A Stork `Rule` document (`stork.libopenstorage.org/v1alpha1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStorkRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: Option<RawMetadata>,
    pub rules: Vec<RawRuleItem>,
}

/// The part of object metadata we read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawMetadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
}
