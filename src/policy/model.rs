//! The validated policy model: what the backup run uses. Every reference is resolved, every default
//! applied, every duration and schedule parsed; a value of these types is valid by construction.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use super::raw::{OnError, OnNoPods, SnapshotMode, VolumeOnError};
use super::schedule::Schedule;

/// Default `startingDeadline`.
pub const DEFAULT_STARTING_DEADLINE: Duration = Duration::from_secs(3600);
/// Default action `timeout`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `rules.maxFreeze`: the longest a freeze may last, first pre action to thaw.
pub const DEFAULT_MAX_FREEZE: Duration = Duration::from_secs(60);
/// Default dump `timeout`.
pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `volumes.readyTimeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `volumes.mover.concurrency`.
pub const DEFAULT_MOVER_CONCURRENCY: u32 = 4;
/// Default `volumes.mover.timeout` (a Job's `activeDeadlineSeconds`).
pub const DEFAULT_MOVER_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// Default `repository.pruneEvery`.
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(7 * 86_400);
/// Default webhook `timeout`.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Resources excluded unless `resources.exclude` is given.
pub const DEFAULT_EXCLUDES: &[&str] = &["events", "events.events.k8s.io"];
/// Webhook event names (docs/webhooks.md says when each is sent; `crate::report::WebhookEvent` sends them).
pub const WEBHOOK_EVENTS: &[&str] = &[
    "backup.started",
    "backup.succeeded",
    "backup.partially_failed",
    "backup.failed",
    "prune.completed",
    "prune.failed",
    "policy.invalid",
    "restore.started",
    "restore.succeeded",
    "restore.partially_failed",
    "restore.failed",
];
/// The placeholder a held-lock (`background: true`) command must contain.
pub const WAIT_CMD: &str = "${WAIT_CMD}";

/// A named storage backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// The key under `storages`.
    pub name: String,
    /// The backend.
    pub backend: Backend,
    /// The repository of moved volume data (`None` = this storage takes no moved data).
    pub repository: Option<Repository>,
    /// Client-side encryption of the artifacts (`encryption:`); `None` = stored as produced.
    pub encryption: Option<Encryption>,
}

/// A storage's `encryption:` block (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// age X25519 public keys (`age1…`), each valid: every artifact of a new backup is encrypted to all.
    pub recipients: Vec<String>,
    /// The Secret key (in freezeframe's namespace) holding identities (`AGE-SECRET-KEY-1…` lines) for
    /// restore and verification; backups never read it.
    pub identity_secret: Option<SecretKeyRef>,
}

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// No one can delete a version before its retain-until date.
    Compliance,
}

impl LockMode {
    /// The S3 API's name (`GOVERNANCE`, `COMPLIANCE`).
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// `s3.objectLock`: every object of a backup is written with this retention (docs/retention.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Retention mode.
    pub mode: LockMode,
    /// Days from the write until the object may be deleted (at least 1).
    pub retain_days: u32,
}

/// A restic-format repository under a storage's prefix (`<prefix>/repository/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// Secret key (in freezeframe's namespace) holding the repository password.
    pub password_secret: SecretKeyRef,
    /// How often `prune` also prunes the repository's unreferenced packs.
    pub prune_every: Duration,
}

/// A storage backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// S3 or an S3-compatible store.
    S3(S3Storage),
    /// A directory.
    Filesystem {
        /// Absolute path.
        path: String,
    },
}

/// S3 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Storage {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (empty = bucket root).
    pub prefix: String,
    /// Region; `None` = from the default chain.
    pub region: Option<String>,
    /// Custom endpoint URL (SeaweedFS, MinIO, ...).
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// Secret (in freezeframe's namespace) with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; `None` =
    /// default AWS chain (env, IRSA/web identity, profile).
    pub credentials_secret: Option<String>,
    /// `AES256` or `aws:kms`.
    pub server_side_encryption: Option<String>,
    /// KMS key for `aws:kms`.
    pub kms_key_id: Option<String>,
    /// Object Lock retention for every object written; the bucket must have Object Lock enabled.
    pub object_lock: Option<ObjectLock>,
}

/// A webhook receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Name policies refer to.
    pub name: String,
    /// `http(s)://` URL.
    pub url: String,
    /// Events delivered (all when the field is omitted).
    pub events: Vec<String>,
    /// Secret key holding the HMAC key for `X-Freezeframe-Signature`.
    pub secret_ref: Option<SecretKeyRef>,
    /// Per-delivery timeout.
    pub timeout: Duration,
}

/// A key of a Secret in freezeframe's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret.
    pub key: String,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Unique DNS label: used in object-store keys, Lease and annotation names.
    pub name: String,
    /// When it runs.
    pub schedule: Schedule,
    /// How late a scheduled run may start.
    pub starting_deadline: Duration,
    /// Run as soon as the policy first appears.
    pub run_on_create: bool,
    /// Scheduled runs are off (`--now` still runs).
    pub suspend: bool,
    /// Which namespaces.
    pub namespaces: Namespaces,
    /// Which pods (and their closure); `None` = whole namespace.
    pub selector: Option<LabelSelector>,
    /// Resource include/exclude filters.
    pub resources: Resources,
    /// Volume snapshot settings.
    pub volumes: Volumes,
    /// Freeze hooks (policy rules first, then the referenced Stork rule's items).
    pub pre: Vec<HookRule>,
    /// Thaw hooks.
    pub post: Vec<HookRule>,
    /// The freeze budget (`rules.maxFreeze`): from the first pre action to the thaw; past it, what runs
    /// inside the freeze is cut off and the group thawed.
    pub max_freeze: Duration,
    /// Also run Velero hook annotations found on selected pods.
    pub honor_velero_annotations: bool,
    /// Logical dumps.
    pub dumps: Vec<Dump>,
    /// Retention.
    pub retention: Retention,
    /// Where backups go.
    pub storage: Storage,
    /// Who is told.
    pub webhooks: Vec<Webhook>,
}

/// Namespaces a policy covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Namespaces {
    /// Listed by name.
    Names(Vec<String>),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// Resource filters (plural, `plural.group`, Kind or `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// Included resources (default `*`).
    pub include: Vec<String>,
    /// Excluded resources (default [`DEFAULT_EXCLUDES`]).
    pub exclude: Vec<String>,
}

/// Volume snapshot settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volumes {
    /// CSI snapshots or none.
    pub snapshot: SnapshotMode,
    /// One VolumeGroupSnapshot when the API is served.
    pub group: bool,
    /// Class override; `None` = the default class for the PVC's driver.
    pub volume_snapshot_class: Option<String>,
    /// Group class override.
    pub volume_group_snapshot_class: Option<String>,
    /// What a failed snapshot makes of the backup.
    pub on_error: VolumeOnError,
    /// How long to wait for `readyToUse` (outside the freeze).
    pub ready_timeout: Duration,
    /// Keep snapshots of a failed run.
    pub keep_failed: bool,
    /// Copy every snapshot's files into the storage's repository (Velero's `moveData`).
    pub move_data: bool,
    /// How the mover Jobs run.
    pub mover: Mover,
}

/// How the mover Jobs of `moveData` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mover {
    /// Mover Jobs at once (≥ 1).
    pub concurrency: u32,
    /// The container's requests and limits (resource name → quantity).
    pub resources: MoverResources,
    /// The pods' `nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// The pods' tolerations.
    pub tolerations: Vec<Toleration>,
    /// A Job's `activeDeadlineSeconds`.
    pub timeout: Duration,
}

impl Default for Mover {
    fn default() -> Self {
        Mover {
            concurrency: DEFAULT_MOVER_CONCURRENCY,
            resources: MoverResources::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            timeout: DEFAULT_MOVER_TIMEOUT,
        }
    }
}

/// Container requests and limits, each checked to be a Kubernetes quantity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoverResources {
    /// `requests`.
    pub requests: BTreeMap<String, String>,
    /// `limits`.
    pub limits: BTreeMap<String, String>,
}

/// A pod toleration (Kubernetes' fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toleration {
    /// Taint key (`None` with `Exists` = every taint).
    pub key: Option<String>,
    /// `Equal` or `Exists`.
    pub operator: Option<String>,
    /// Taint value (with `Equal`).
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute` (`None` = all).
    pub effect: Option<String>,
    /// How long a `NoExecute` taint is tolerated.
    pub toleration_seconds: Option<i64>,
}

/// Where a hook rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOrigin {
    /// `rules.pre[i]` / `rules.post[i]` of the policy.
    Policy {
        /// Index in its list.
        index: usize,
    },
    /// Item `index` of the Stork Rule `name` (`preExecRule`/`postExecRule`).
    StorkRule {
        /// The Rule's name.
        name: String,
        /// Index in its `rules`.
        index: usize,
    },
}

/// A pod group and the actions run on it.
#[derive(Debug, Clone, PartialEq)]
pub struct HookRule {
    /// Where it was written.
    pub origin: RuleOrigin,
    /// Pods (within the policy's namespaces).
    pub pod_selector: LabelSelector,
    /// Container; `None` = the only container or the default-container annotation.
    pub container: Option<String>,
    /// What an empty selection means.
    pub on_no_pods: OnNoPods,
    /// Also use pods whose container is not ready.
    pub include_not_ready: bool,
    /// Actions, in order; each runs on all pods at once (or one with `run_in_single_pod`).
    pub actions: Vec<Action>,
}

/// How a command is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exec {
    /// `sh -c <string>` (Stork-compatible `value`).
    Shell(String),
    /// Argv without a shell.
    Argv(Vec<String>),
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The command.
    pub exec: Exec,
    /// Per-action timeout.
    pub timeout: Duration,
    /// Abort the group or continue.
    pub on_error: OnError,
    /// Run on one pod only (deterministic choice).
    pub run_in_single_pod: bool,
    /// Held lock: the command contains `${WAIT_CMD}` and is kept open until thaw (pre only).
    pub background: bool,
}

/// A logical dump.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    /// Name (DNS label), part of the artifact key.
    pub name: String,
    /// Pods.
    pub pod_selector: LabelSelector,
    /// Container.
    pub container: Option<String>,
    /// Command whose stdout is the dump.
    pub command: Exec,
    /// Command that reads the dump on stdin at restore.
    pub restore_command: Option<Exec>,
    /// Dump one pod only.
    pub run_in_single_pod: bool,
    /// Timeout for the whole dump.
    pub timeout: Duration,
    /// Run inside the freeze (default) or after thaw.
    pub while_frozen: bool,
    /// What an empty selection means.
    pub on_no_pods: OnNoPods,
}

/// Retention rules (k8up/restic semantics: a backup is kept if any rule keeps it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N.
    pub keep_last: Option<u32>,
    /// Keep the newest per hour for N hours.
    pub keep_hourly: Option<u32>,
    /// Keep the newest per day for N days.
    pub keep_daily: Option<u32>,
    /// Keep the newest per ISO week for N weeks.
    pub keep_weekly: Option<u32>,
    /// Keep the newest per month for N months.
    pub keep_monthly: Option<u32>,
    /// Keep the newest per year for N years.
    pub keep_yearly: Option<u32>,
    /// Keep everything newer than this.
    pub keep_within: Option<Duration>,
}

/// A validated Stork Rule (its items, with origin set).
pub type StorkRules = BTreeMap<String, Vec<HookRule>>;
