//! CSI volume snapshots taken inside the freeze: the volumes of a frozen group captured at one instant,
//! with the freeze held only until the storage reports the cut, not until the snapshots are ready.
//!
//! The steps, each a call the backup run makes:
//! 1. [`prepare`] (before the freeze): the claims in scope ([`scope`]: bound CSI claims; the others are
//!    skipped with the reason), the API kinds served, the class of every volume ([`class`]), and for the
//!    group path the temporary selection label on the claims. Everything slow happens here.
//! 2. [`Prepared::take`] (inside the freeze): create every VolumeSnapshot (or one VolumeGroupSnapshot per
//!    namespace and driver) concurrently and return once each reports its cut (`status.creationTime` and a
//!    bound content) or failed. The caller thaws right after.
//! 3. [`Prepared::complete`] (after the thaw): remove the temporary labels, wait for `readyToUse` within
//!    `volumes.readyTimeout`, decide the [`Verdict`] from `volumes.onError`, and delete the snapshots of a
//!    failed run (or the failed ones of a partial run) unless `volumes.keepFailed`. The [`Outcome`]
//!    serialises to `volumes.json` ([`Outcome::volumes_json`]).
//! 4. [`discard`]: the run failed later for another reason; its snapshots go unless kept.
//! 5. [`retain`]: the backup is committed: its snapshot contents get `deletionPolicy: Retain`, so the
//!    snapshots survive the deletion of their namespace (and restore can pre-provision them by handle).
//!
//! **Group selection.** A VolumeGroupSnapshot selects its claims with a label selector only, and the
//! claims in scope need not share a label that selects exactly them. So [`prepare`] labels the claims
//! with [`GROUP_LABEL`]` = <backup-id>-<n>` (a value no other run uses) and [`Prepared::complete`] removes
//! it again; the label is on the claims for the length of the run only. A run killed in between leaves a
//! stale label that matches no later group snapshot.
//!
//! RBAC needed (mirror in `manifests/`): `persistentvolumeclaims` get/list/patch, `persistentvolumes`
//! get, `storageclasses` get; `snapshot.storage.k8s.io`: `volumesnapshots` create/get/list/watch/delete,
//! `volumesnapshotcontents` get/patch, `volumesnapshotclasses` list; `groupsnapshot.storage.k8s.io`:
//! `volumegroupsnapshots` create/get/list/watch/delete, `volumegroupsnapshotcontents` get/patch,
//! `volumegroupsnapshotclasses` list.

pub mod class;
pub mod record;
pub mod scope;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiResource, Discovery};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use tokio::time::Instant;

pub use class::{ClassInfo, ClassKind};
pub use record::{
    GroupRecord, MoveRecord, MoveStatus, VOLUMES_FORMAT_VERSION, Verdict, VolumeFailure, VolumeRecord,
    VolumesFile,
};
pub use scope::{Claim, Skipped};

use crate::export::{self, Selection};
use crate::hooks::Budget;
use crate::policy::{SnapshotMode, VolumeOnError, Volumes};

/// Label on every snapshot: the policy.
pub const POLICY_LABEL: &str = "freezeframe.dev/policy";
/// Label on every snapshot: the backup id.
pub const BACKUP_ID_LABEL: &str = "freezeframe.dev/backup-id";
/// Temporary label selecting a group snapshot's claims.
pub const GROUP_LABEL: &str = "freezeframe.dev/group-snapshot";
/// The longest the freeze waits for the storage to report the cut (`volumes.readyTimeout` if shorter).
pub const MAX_CUT_TIMEOUT: Duration = Duration::from_secs(120);

const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
const GROUP_SNAPSHOT_GROUP: &str = "groupsnapshot.storage.k8s.io";

/// Errors of preparing snapshots (failures of single volumes are [`VolumeFailure`]s, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// API discovery failed.
    #[error("discovering the API server's resources")]
    Discovery(#[source] Box<kube::Error>),
    /// An API call failed.
    #[error("cannot {verb} {what}")]
    Kube {
        /// The verb.
        verb: &'static str,
        /// What, and where.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Finding the selected pods' claims failed.
    #[error("finding the claims of the selected pods")]
    Closure(#[source] Box<export::Error>),
    /// A claim from the closure did not decode.
    #[error("decoding a PersistentVolumeClaim")]
    Decode(#[source] serde_json::Error),
}

/// Result of snapshot preparation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which backup the snapshots belong to.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Policy name (label value).
    pub policy: &'a str,
    /// Backup id (label value, part of the snapshot names).
    pub backup_id: &'a str,
    /// The policy's volume settings.
    pub volumes: &'a Volumes,
}

/// The served snapshot kinds.
#[derive(Debug, Clone)]
struct Kinds {
    snapshot: ApiResource,
    content: ApiResource,
    /// VolumeGroupSnapshot and its content, when the group path is used.
    group: Option<(ApiResource, ApiResource)>,
}

/// Whether a unit is a VolumeSnapshot or a VolumeGroupSnapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitKind {
    Single,
    Group,
}

/// One object created inside the freeze.
#[derive(Debug, Clone)]
struct Unit {
    kind: UnitKind,
    namespace: String,
    name: String,
    class: String,
    /// Indexes into [`Prepared::claims`].
    claims: Vec<usize>,
    /// The [`GROUP_LABEL`] value selecting the group's claims.
    label: Option<String>,
}

/// Everything decided before the freeze.
pub struct Prepared {
    client: kube::Client,
    policy: String,
    backup_id: String,
    volumes: Volumes,
    kinds: Option<Kinds>,
    /// Claims to be snapshotted (or that failed before the freeze).
    pub claims: Vec<Claim>,
    /// Claims in scope that are not snapshotted, and why.
    pub skipped: Vec<Skipped>,
    /// Claims that failed before the freeze (no class, API not served).
    pub failures: Vec<VolumeFailure>,
    units: Vec<Unit>,
    /// Claims carrying [`GROUP_LABEL`]: (namespace, name).
    labelled: Vec<(String, String)>,
    cut_timeout: Duration,
}

/// What [`Prepared::take`] saw of one unit.
#[derive(Debug, Clone)]
struct UnitCut {
    created: bool,
    error: Option<String>,
}

/// The cut: every snapshot reported it was taken (or failed). Thaw now.
#[derive(Debug, Clone)]
pub struct Cut {
    units: Vec<UnitCut>,
    /// When the last snapshot reported its cut.
    pub at: DateTime<Utc>,
    /// From the first create to the last cut (the part of the freeze the snapshots took).
    pub elapsed: Duration,
}

impl Cut {
    /// Whether every snapshot reported its cut.
    pub fn complete(&self) -> bool {
        self.units.iter().all(|u| u.error.is_none())
    }
}

/// A snapshot object the run created.
#[derive(Debug, Clone)]
pub struct Created {
    /// `VolumeSnapshot` or `VolumeGroupSnapshot`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    resource: ApiResource,
    /// Whether this unit yielded no usable snapshot.
    failed: bool,
}

/// Why a snapshot cut off by the freeze budget yields nothing.
fn cut_off_reason(budget: &Budget) -> String {
    format!(
        "no cut reported before the freeze exceeded maxFreeze ({})",
        crate::hooks::budget::seconds(budget.max().unwrap_or_default())
    )
}

/// The volumes of one backup.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Policy.
    pub policy: String,
    /// Backup id.
    pub backup_id: String,
    /// Ready snapshots, by namespace and claim.
    pub volumes: Vec<VolumeRecord>,
    /// Ready group snapshots.
    pub groups: Vec<GroupRecord>,
    /// Claims not snapshotted, and why.
    pub skipped: Vec<Skipped>,
    /// Claims whose snapshot failed.
    pub failures: Vec<VolumeFailure>,
    /// What the volumes make of the backup.
    pub verdict: Verdict,
    /// When every snapshot had reported its cut.
    pub cut_at: Option<DateTime<Utc>>,
    /// When every snapshot was ready (`None` if one never was).
    pub ready_at: Option<DateTime<Utc>>,
    /// Snapshots created (deleted ones included).
    pub created: Vec<Created>,
    /// `namespace/name` of snapshots deleted because the run (or they) failed.
    pub deleted: Vec<String>,
    keep_failed: bool,
    kinds: Option<Kinds>,
}

impl Outcome {
    /// `volumes.json`.
    pub fn volumes_json(&self) -> Vec<u8> {
        let file = VolumesFile {
            format_version: VOLUMES_FORMAT_VERSION,
            policy: &self.policy,
            backup_id: &self.backup_id,
            cut_at: self.cut_at,
            verdict: self.verdict,
            volumes: &self.volumes,
            groups: &self.groups,
            skipped: &self.skipped,
            failures: &self.failures,
        };
        serde_json::to_vec_pretty(&file).expect("volumes.json always serialises")
    }
}

fn api_error(verb: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube {
        verb,
        what,
        source: Box::new(source),
    }
}

fn served(discovery: &Discovery, group: &str, kind: &str) -> Option<ApiResource> {
    discovery
        .get(group)
        .and_then(|g| g.recommended_kind(kind))
        .map(|(r, _)| r)
}

/// The [`GROUP_LABEL`] value of a run's `n`th group: the backup id and a digest of the policy name (a
/// label value holds 63 characters, a policy name alone may), so no other policy's run uses it.
fn group_label(policy: &str, backup_id: &str, n: usize) -> String {
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(policy.as_bytes())[..4]);
    format!("{backup_id}-{digest}-{n}")
}

/// `<base>-<suffix>`, `base` shortened so the name fits the 253 characters of an object name. The suffix
/// (`ff-<policy>-<backup id>`) makes the name unique per policy and backup.
fn object_name(base: &str, suffix: &str) -> String {
    let room = 253 - suffix.len() - 1;
    let base: String = base.chars().take(room).collect();
    format!("{}-{suffix}", base.trim_end_matches(['-', '.']))
}

async fn list_classes(
    client: &kube::Client,
    resource: &ApiResource,
    kind: ClassKind,
) -> Result<Vec<ClassInfo>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(api_error("list", resource.plural.clone()))?;
    Ok(list
        .items
        .iter()
        .map(|o| ClassInfo::from_object(kind, &serde_json::to_value(o).unwrap_or_default()))
        .collect())
}

/// Find the claims in scope and everything the freeze will need; label group members.
pub async fn prepare(client: &kube::Client, selection: &Selection, request: Request<'_>) -> Result<Prepared> {
    let volumes = request.volumes;
    let mut p = Prepared {
        client: client.clone(),
        policy: request.policy.to_string(),
        backup_id: request.backup_id.to_string(),
        volumes: volumes.clone(),
        kinds: None,
        claims: Vec::new(),
        skipped: Vec::new(),
        failures: Vec::new(),
        units: Vec::new(),
        labelled: Vec::new(),
        cut_timeout: volumes.ready_timeout.min(MAX_CUT_TIMEOUT),
    };
    if volumes.snapshot == SnapshotMode::None {
        return Ok(p);
    }
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| Error::Discovery(Box::new(e)))?;
    let (claims, skipped) = scope::claims(client, &discovery, selection).await?;
    p.claims = claims;
    p.skipped = skipped;
    let fail = |claim: &Claim, reason: String| VolumeFailure {
        namespace: claim.namespace.clone(),
        pvc: claim.name.clone(),
        snapshot: None,
        reason,
    };
    let (Some(snapshot), Some(content)) = (
        served(&discovery, SNAPSHOT_GROUP, "VolumeSnapshot"),
        served(&discovery, SNAPSHOT_GROUP, "VolumeSnapshotContent"),
    ) else {
        let why =
            "the snapshot.storage.k8s.io API is not served (install the CSI snapshot controller and CRDs)";
        p.failures = p.claims.iter().map(|c| fail(c, why.into())).collect();
        return Ok(p);
    };
    let group = if volumes.group {
        served(&discovery, GROUP_SNAPSHOT_GROUP, "VolumeGroupSnapshot").zip(served(
            &discovery,
            GROUP_SNAPSHOT_GROUP,
            "VolumeGroupSnapshotContent",
        ))
    } else {
        None
    };
    if volumes.group && group.is_none() {
        tracing::info!("groupsnapshot.storage.k8s.io is not served: one VolumeSnapshot per claim");
    }
    let suffix = format!("ff-{}-{}", request.policy, request.backup_id.to_lowercase());
    match &group {
        Some(_) => {
            let classes = match served(&discovery, GROUP_SNAPSHOT_GROUP, "VolumeGroupSnapshotClass") {
                Some(r) => list_classes(client, &r, ClassKind::Group).await?,
                None => Vec::new(),
            };
            let mut by_ns_driver: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
            for (i, c) in p.claims.iter().enumerate() {
                by_ns_driver.entry((&c.namespace, &c.driver)).or_default().push(i);
            }
            let mut per_ns: BTreeMap<&str, usize> = BTreeMap::new();
            for ((namespace, driver), members) in by_ns_driver {
                let n = per_ns.entry(namespace).or_default();
                *n += 1;
                let chosen = class::choose(
                    ClassKind::Group,
                    &classes,
                    volumes.volume_group_snapshot_class.as_deref(),
                    driver,
                );
                match chosen {
                    Ok(class) => p.units.push(Unit {
                        kind: UnitKind::Group,
                        namespace: namespace.to_string(),
                        name: object_name(&format!("group-{n}"), &suffix),
                        class: class.name.clone(),
                        claims: members,
                        label: Some(group_label(request.policy, request.backup_id, *n)),
                    }),
                    Err(why) => p
                        .failures
                        .extend(members.iter().map(|&i| fail(&p.claims[i], why.clone()))),
                }
            }
        }
        None => {
            let classes = match served(&discovery, SNAPSHOT_GROUP, "VolumeSnapshotClass") {
                Some(r) => list_classes(client, &r, ClassKind::Snapshot).await?,
                None => Vec::new(),
            };
            for (i, c) in p.claims.iter().enumerate() {
                match class::choose(
                    ClassKind::Snapshot,
                    &classes,
                    volumes.volume_snapshot_class.as_deref(),
                    &c.driver,
                ) {
                    Ok(class) => p.units.push(Unit {
                        kind: UnitKind::Single,
                        namespace: c.namespace.clone(),
                        name: object_name(&c.name, &suffix),
                        class: class.name.clone(),
                        claims: vec![i],
                        label: None,
                    }),
                    Err(why) => p.failures.push(fail(c, why)),
                }
            }
        }
    }
    p.kinds = Some(Kinds {
        snapshot,
        content,
        group,
    });
    p.label_group_claims().await;
    Ok(p)
}

fn status_str<'a>(data: &'a Value, field: &str) -> Option<&'a str> {
    data["status"][field].as_str().filter(|s| !s.is_empty())
}

fn error_message(data: &Value) -> Option<String> {
    let e = &data["status"]["error"];
    (!e.is_null()).then(|| e["message"].as_str().unwrap_or("unknown error").to_string())
}

fn bound_field(kind: UnitKind) -> &'static str {
    match kind {
        UnitKind::Single => "boundVolumeSnapshotContentName",
        UnitKind::Group => "boundVolumeGroupSnapshotContentName",
    }
}

fn cut_reported(kind: UnitKind, data: &Value) -> bool {
    status_str(data, "creationTime").is_some() && status_str(data, bound_field(kind)).is_some()
}

fn owned_by(obj: &DynamicObject, uid: &str) -> bool {
    obj.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// Wait until `name` is ready (or failed, or gone) by `deadline`.
async fn await_ready(
    api: Api<DynamicObject>,
    name: &str,
    deadline: Instant,
) -> std::result::Result<DynamicObject, String> {
    let cond = |o: Option<&DynamicObject>| {
        o.is_none_or(|o| o.data["status"]["readyToUse"] == true || error_message(&o.data).is_some())
    };
    match tokio::time::timeout_at(deadline, await_condition(api, name, cond)).await {
        Ok(Ok(Some(o))) if o.data["status"]["readyToUse"] == true => Ok(o),
        Ok(Ok(Some(o))) => Err(error_message(&o.data).unwrap_or_default()),
        Ok(Ok(None)) => Err(format!("{name} was deleted before it was ready")),
        Ok(Err(e)) => Err(format!("watching {name}: {e}")),
        Err(_) => Err(format!("{name} was not readyToUse within volumes.readyTimeout")),
    }
}

/// What waiting for one unit gave.
#[derive(Default)]
struct UnitResult {
    records: Vec<VolumeRecord>,
    group: Option<GroupRecord>,
    failures: Vec<VolumeFailure>,
}

impl Prepared {
    /// Whether there is nothing to snapshot (the freeze step may be skipped).
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    fn unit_failure(&self, unit: &Unit, created: bool, reason: &str) -> Vec<VolumeFailure> {
        unit.claims
            .iter()
            .map(|&i| VolumeFailure {
                namespace: self.claims[i].namespace.clone(),
                pvc: self.claims[i].name.clone(),
                snapshot: created.then(|| unit.name.clone()),
                reason: reason.to_string(),
            })
            .collect()
    }

    async fn patch_label(
        &self,
        namespace: &str,
        claim: &str,
        value: Option<&str>,
    ) -> Result<(), kube::Error> {
        let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), namespace);
        let patch = json!({"metadata": {"labels": {GROUP_LABEL: value}}});
        api.patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Put [`GROUP_LABEL`] on every group member; a unit whose claims cannot be labelled fails.
    async fn label_group_claims(&mut self) {
        let mut failed = Vec::new();
        for (u, unit) in self.units.iter().enumerate() {
            let Some(value) = &unit.label else { continue };
            for &i in &unit.claims {
                let c = &self.claims[i];
                match self.patch_label(&c.namespace, &c.name, Some(value)).await {
                    Ok(()) => self.labelled.push((c.namespace.clone(), c.name.clone())),
                    Err(e) => {
                        failed.push((
                            u,
                            format!("labelling claim {} for the group snapshot: {e}", c.name),
                        ));
                        break;
                    }
                }
            }
        }
        for (u, why) in failed.into_iter().rev() {
            let unit = self.units.remove(u);
            let failures = self.unit_failure(&unit, false, &why);
            self.failures.extend(failures);
        }
    }

    async fn release_labels(&mut self) {
        for (namespace, claim) in std::mem::take(&mut self.labelled) {
            if let Err(e) = self.patch_label(&namespace, &claim, None).await {
                tracing::warn!(namespace, claim, error = %e, "could not remove the temporary group snapshot label");
            }
        }
    }

    fn unit_resource(&self, unit: &Unit) -> Option<&ApiResource> {
        let kinds = self.kinds.as_ref()?;
        match unit.kind {
            UnitKind::Single => Some(&kinds.snapshot),
            UnitKind::Group => kinds.group.as_ref().map(|(g, _)| g),
        }
    }

    /// Create every snapshot at once and return when each has reported its cut (or failed); run this
    /// inside the freeze and thaw right after.
    pub async fn take(&self, budget: &Budget) -> Cut {
        let started = Instant::now();
        let units = join_all(self.units.iter().map(|u| self.take_unit(u, budget))).await;
        let cut = Cut {
            units,
            at: Utc::now(),
            elapsed: started.elapsed(),
        };
        tracing::info!(snapshots = self.units.len(), elapsed = ?cut.elapsed, complete = cut.complete(), "volume snapshots cut");
        cut
    }

    async fn take_unit(&self, unit: &Unit, budget: &Budget) -> UnitCut {
        let _pending = budget.track(format!("the snapshot cut of {}/{}", unit.namespace, unit.name));
        if budget.is_cut_off() {
            return UnitCut {
                created: false,
                error: Some(cut_off_reason(budget)),
            };
        }
        let Some(resource) = self.unit_resource(unit) else {
            return UnitCut {
                created: false,
                error: Some("snapshot API not served".into()),
            };
        };
        let spec = match unit.kind {
            UnitKind::Single => json!({"volumeSnapshotClassName": unit.class,
                "source": {"persistentVolumeClaimName": self.claims[unit.claims[0]].name}}),
            UnitKind::Group => json!({"volumeGroupSnapshotClassName": unit.class,
                "source": {"selector": {"matchLabels": {GROUP_LABEL: unit.label}}}}),
        };
        let mut obj = DynamicObject::new(&unit.name, resource)
            .within(&unit.namespace)
            .data(json!({"spec": spec}));
        obj.metadata.labels = Some(
            [
                (POLICY_LABEL.to_string(), self.policy.clone()),
                (BACKUP_ID_LABEL.to_string(), self.backup_id.clone()),
            ]
            .into(),
        );
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &unit.namespace, resource);
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            // The name is this policy's and backup's alone: an object already there is this run's own
            // create, answered after a retry.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => {
                return UnitCut {
                    created: false,
                    error: Some(format!(
                        "creating {} {}: {}",
                        resource.kind,
                        unit.name,
                        crate::k8s::describe(&e)
                    )),
                };
            }
        }
        let kind = unit.kind;
        let cond = move |o: Option<&DynamicObject>| {
            o.is_none_or(|o| cut_reported(kind, &o.data) || error_message(&o.data).is_some())
        };
        // The create is one call and is never cut short (its object must be known, to be deleted); the
        // wait for the cut is: a snapshot cut off is deleted after the thaw like any failed one.
        let waited = tokio::select! {
            biased;
            _ = budget.cut_off() => return UnitCut { created: true, error: Some(cut_off_reason(budget)) },
            w = tokio::time::timeout(self.cut_timeout, await_condition(api, &unit.name, cond)) => w,
        };
        let error = match waited {
            Ok(Ok(Some(o))) if cut_reported(kind, &o.data) => None,
            Ok(Ok(Some(o))) => error_message(&o.data),
            Ok(Ok(None)) => Some("deleted before the cut".into()),
            Ok(Err(e)) => Some(format!("watching for the cut: {e}")),
            Err(_) => Some(format!("no cut reported within {:?}", self.cut_timeout)),
        };
        UnitCut { created: true, error }
    }

    /// After the thaw: remove temporary labels, wait for readiness, decide the verdict and delete what a
    /// failed run (or failed snapshot) leaves, unless `volumes.keepFailed`. `cut` is `None` when the freeze
    /// did not complete and [`Prepared::take`] never ran.
    pub async fn complete(mut self, cut: Option<Cut>) -> Outcome {
        self.release_labels().await;
        let mut out = Outcome {
            policy: self.policy.clone(),
            backup_id: self.backup_id.clone(),
            volumes: Vec::new(),
            groups: Vec::new(),
            skipped: self.skipped.clone(),
            failures: self.failures.clone(),
            verdict: Verdict::Completed,
            cut_at: cut.as_ref().map(|c| c.at),
            ready_at: None,
            created: Vec::new(),
            deleted: Vec::new(),
            keep_failed: self.volumes.keep_failed,
            kinds: self.kinds.clone(),
        };
        let deadline = Instant::now() + self.volumes.ready_timeout;
        match &cut {
            None => {
                for unit in &self.units {
                    let f = self.unit_failure(unit, false, "not taken: the freeze did not complete");
                    out.failures.extend(f);
                }
            }
            Some(cut) => {
                let this = &self;
                let waits = this.units.iter().zip(&cut.units).map(|(unit, c)| async move {
                    match &c.error {
                        Some(e) => UnitResult {
                            failures: this.unit_failure(unit, c.created, e),
                            ..Default::default()
                        },
                        None => this.wait_unit(unit, deadline).await,
                    }
                });
                let results = join_all(waits).await;
                let all_ready = results.iter().all(|r| r.failures.is_empty());
                out.ready_at = (all_ready && cut.complete()).then(Utc::now);
                for ((unit, c), r) in self.units.iter().zip(&cut.units).zip(results) {
                    if c.created
                        && let Some(resource) = self.unit_resource(unit)
                    {
                        out.created.push(Created {
                            kind: resource.kind.clone(),
                            namespace: unit.namespace.clone(),
                            name: unit.name.clone(),
                            resource: resource.clone(),
                            failed: r.records.is_empty(),
                        });
                    }
                    out.volumes.extend(r.records);
                    out.groups.extend(r.group);
                    out.failures.extend(r.failures);
                }
            }
        }
        out.failures
            .sort_by(|a, b| (&a.namespace, &a.pvc).cmp(&(&b.namespace, &b.pvc)));
        out.volumes
            .sort_by(|a, b| (&a.namespace, &a.pvc).cmp(&(&b.namespace, &b.pvc)));
        out.verdict = match (out.failures.is_empty(), self.volumes.on_error) {
            (true, _) => Verdict::Completed,
            (false, VolumeOnError::Partial) => Verdict::PartiallyFailed,
            (false, VolumeOnError::Fail) => Verdict::Failed,
        };
        for f in &out.failures {
            tracing::warn!(namespace = %f.namespace, pvc = %f.pvc, reason = %f.reason, "volume snapshot failed");
        }
        if !out.keep_failed {
            let run_failed = out.verdict == Verdict::Failed;
            delete_created(&self.client, &mut out, |c| run_failed || c.failed).await;
        }
        out
    }

    async fn wait_unit(&self, unit: &Unit, deadline: Instant) -> UnitResult {
        let Some(kinds) = &self.kinds else {
            return UnitResult::default();
        };
        let fail = |reason: String| UnitResult {
            failures: self.unit_failure(unit, true, &reason),
            ..Default::default()
        };
        match unit.kind {
            UnitKind::Single => {
                let api = Api::namespaced_with(self.client.clone(), &unit.namespace, &kinds.snapshot);
                let vs = match await_ready(api, &unit.name, deadline).await {
                    Ok(vs) => vs,
                    Err(e) => return fail(e),
                };
                match self
                    .record(&vs, &self.claims[unit.claims[0]], &unit.class, None)
                    .await
                {
                    Ok(r) => UnitResult {
                        records: vec![r],
                        ..Default::default()
                    },
                    Err(e) => fail(e),
                }
            }
            UnitKind::Group => self.wait_group(unit, kinds, deadline).await.unwrap_or_else(fail),
        }
    }

    async fn wait_group(
        &self,
        unit: &Unit,
        kinds: &Kinds,
        deadline: Instant,
    ) -> std::result::Result<UnitResult, String> {
        let Some((group_resource, group_content_resource)) = &kinds.group else {
            return Err("group snapshot API not served".into());
        };
        let api = Api::namespaced_with(self.client.clone(), &unit.namespace, group_resource);
        let vgs = await_ready(api, &unit.name, deadline).await?;
        let content_name = status_str(&vgs.data, "boundVolumeGroupSnapshotContentName").unwrap_or_default();
        let content: DynamicObject = Api::all_with(self.client.clone(), group_content_resource)
            .get(content_name)
            .await
            .map_err(|e| format!("reading {content_name}: {e}"))?;
        // volumeHandle → snapshotHandle, as the storage reported the group's members.
        let pairs: BTreeMap<String, String> = content.data["status"]["volumeSnapshotHandlePairList"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["snapshotHandle"].as_str()?.to_string(),
                    p["volumeHandle"].as_str()?.to_string(),
                ))
            })
            .collect();
        let vgs_uid = vgs.metadata.uid.clone().unwrap_or_default();
        let snapshots: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &unit.namespace, &kinds.snapshot);
        let members: Vec<DynamicObject> = snapshots
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing the member snapshots: {e}"))?
            .items
            .into_iter()
            .filter(|s| owned_by(s, &vgs_uid))
            .collect();
        let mut result = UnitResult::default();
        let mut found: Vec<usize> = Vec::new();
        for member in members {
            let name = member.metadata.name.clone().unwrap_or_default();
            let member = match await_ready(snapshots.clone(), &name, deadline).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(member = %name, error = %e, "group member not ready");
                    continue;
                }
            };
            let handle = self.member_handle(&member, kinds).await.unwrap_or_default();
            let Some(volume_handle) = pairs.get(&handle) else {
                continue;
            };
            let Some(&i) = unit
                .claims
                .iter()
                .find(|&&i| &self.claims[i].volume_handle == volume_handle)
            else {
                continue;
            };
            match self
                .record(&member, &self.claims[i], &unit.class, Some(&unit.name))
                .await
            {
                Ok(r) => {
                    found.push(i);
                    result.records.push(r);
                }
                Err(e) => result.failures.extend(self.unit_failure(
                    &Unit {
                        claims: vec![i],
                        ..unit.clone()
                    },
                    true,
                    &e,
                )),
            }
        }
        for &i in unit.claims.iter().filter(|i| !found.contains(i)) {
            if !result.failures.iter().any(|f| f.pvc == self.claims[i].name) {
                result.failures.push(VolumeFailure {
                    namespace: unit.namespace.clone(),
                    pvc: self.claims[i].name.clone(),
                    snapshot: Some(unit.name.clone()),
                    reason: "no ready member snapshot of this claim in the group snapshot".into(),
                });
            }
        }
        found.sort_unstable();
        result.group = Some(GroupRecord {
            namespace: unit.namespace.clone(),
            name: unit.name.clone(),
            class: unit.class.clone(),
            driver: content.data["spec"]["driver"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            content_name: content_name.to_string(),
            group_snapshot_handle: status_str(&content.data, "volumeGroupSnapshotHandle")
                .unwrap_or_default()
                .to_string(),
            pvcs: found.iter().map(|&i| self.claims[i].name.clone()).collect(),
        });
        Ok(result)
    }

    async fn member_handle(&self, member: &DynamicObject, kinds: &Kinds) -> Option<String> {
        let content = status_str(&member.data, "boundVolumeSnapshotContentName")?;
        let content: DynamicObject = Api::all_with(self.client.clone(), &kinds.content)
            .get(content)
            .await
            .ok()?;
        status_str(&content.data, "snapshotHandle").map(str::to_string)
    }

    /// The record of a ready snapshot.
    async fn record(
        &self,
        vs: &DynamicObject,
        claim: &Claim,
        class: &str,
        group: Option<&str>,
    ) -> std::result::Result<VolumeRecord, String> {
        let kinds = self.kinds.as_ref().ok_or("snapshot API not served")?;
        let name = vs.metadata.name.clone().unwrap_or_default();
        let content_name = status_str(&vs.data, "boundVolumeSnapshotContentName")
            .ok_or_else(|| format!("{name} is ready but bound to no content"))?;
        let content: DynamicObject = Api::all_with(self.client.clone(), &kinds.content)
            .get(content_name)
            .await
            .map_err(|e| format!("reading {content_name}: {e}"))?;
        Ok(VolumeRecord {
            namespace: claim.namespace.clone(),
            name,
            pvc: claim.name.clone(),
            size: status_str(&vs.data, "restoreSize")
                .map(str::to_string)
                .or_else(|| claim.capacity.clone()),
            class: class.to_string(),
            driver: content.data["spec"]["driver"]
                .as_str()
                .unwrap_or(&claim.driver)
                .to_string(),
            content_name: content_name.to_string(),
            snapshot_handle: status_str(&content.data, "snapshotHandle")
                .unwrap_or_default()
                .to_string(),
            creation_time: status_str(&vs.data, "creationTime").map(str::to_string),
            group: group.map(str::to_string),
            moved: None,
        })
    }
}

async fn delete_created(client: &kube::Client, out: &mut Outcome, which: impl Fn(&Created) -> bool) {
    for c in out.created.iter().filter(|c| which(c)) {
        let key = format!("{}/{}", c.namespace, c.name);
        if out.deleted.contains(&key) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &c.namespace, &c.resource);
        match api.delete(&c.name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(kind = %c.kind, snapshot = %key, "deleted the snapshot of a failed run");
                out.deleted.push(key);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => out.deleted.push(key),
            Err(e) => {
                tracing::warn!(kind = %c.kind, snapshot = %key, error = %e, "could not delete a snapshot")
            }
        }
    }
}

/// The backup is committed with these snapshots: set `deletionPolicy: Retain` on every recorded
/// VolumeSnapshotContent (group members included) and VolumeGroupSnapshotContent, so the storage
/// snapshots outlive their snapshot objects — deleting the namespace, the disaster a restore recovers
/// from, deletes the VolumeSnapshots in it and, with a class's usual `Delete`, the data with them.
/// Returns a problem per content that could not be changed.
pub async fn retain(client: &kube::Client, outcome: &Outcome) -> Vec<String> {
    let Some(kinds) = &outcome.kinds else {
        return Vec::new();
    };
    let mut targets: Vec<(&ApiResource, &str)> = outcome
        .volumes
        .iter()
        .map(|v| (&kinds.content, v.content_name.as_str()))
        .collect();
    if let Some((_, group_content)) = &kinds.group {
        targets.extend(
            outcome
                .groups
                .iter()
                .map(|g| (group_content, g.content_name.as_str())),
        );
    }
    let patch = json!({"spec": {"deletionPolicy": "Retain"}});
    let mut problems = Vec::new();
    for (resource, name) in targets.into_iter().filter(|(_, n)| !n.is_empty()) {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
        if let Err(e) = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(content = %name, error = %e, "could not retain a snapshot content");
            problems.push(format!(
                "{} {name} keeps its deletionPolicy (deleting its namespace deletes the snapshot): {e}",
                resource.kind
            ));
        }
    }
    problems
}

/// The run failed after the snapshots were taken (export, store, ...): delete its snapshots unless
/// `volumes.keepFailed`. Returns how many are gone.
pub async fn discard(client: &kube::Client, outcome: &mut Outcome) -> usize {
    if outcome.keep_failed {
        return 0;
    }
    delete_created(client, outcome, |_| true).await;
    outcome.deleted.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_long_claim_name_when_naming_the_snapshot_then_name_fits_253() {
        let long = "a".repeat(300);
        let n = object_name(&long, "ff-20261123t120000z");
        assert_eq!(n.len(), 253);
        assert!(n.ends_with("-ff-20261123t120000z"));
        assert_eq!(object_name("data-db-0", "ff-x"), "data-db-0-ff-x");
    }

    #[test]
    fn given_status_when_checking_the_cut_then_creation_time_and_bound_content_are_both_needed() {
        let both = json!({"status": {"creationTime": "t", "boundVolumeSnapshotContentName": "c"}});
        let time_only = json!({"status": {"creationTime": "t"}});
        assert!(cut_reported(UnitKind::Single, &both));
        assert!(!cut_reported(UnitKind::Single, &time_only));
        assert!(!cut_reported(UnitKind::Group, &both));
        assert_eq!(
            error_message(&json!({"status": {"error": {"message": "boom"}}})).as_deref(),
            Some("boom")
        );
        assert_eq!(error_message(&json!({"status": {}})), None);
    }
}
