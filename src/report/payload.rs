//! What a webhook delivery says: the event names ([`WebhookEvent`]) and the JSON fields a caller fills
//! ([`Payload`]), built from a policy, a manifest, a restore report or an invalid policy. Pure.
//!
//! The delivery adds `event`, `deliveryId` and `time` around these fields (see [`super::webhook`]); the
//! whole body is documented in `docs/webhooks.md`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::summary::{self, MESSAGE_BYTES, bounded};
use crate::backup::{ClusterIdentity, Manifest, Status};
use crate::exit::Outcome;
use crate::policy::{Namespaces, Policy, PolicySet};
use crate::restore::Report;

/// Most problems a payload lists; the rest are counted in `problemsOmitted`.
pub const MAX_PROBLEMS: usize = 20;
/// Longest problem line sent.
pub const MAX_PROBLEM_BYTES: usize = 512;

/// A webhook event: what happened. The names are [`crate::policy::WEBHOOK_EVENTS`], the values of a
/// webhook's `events` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// A backup is about to start (nothing done yet).
    BackupStarted,
    /// A backup ended `Completed`.
    BackupSucceeded,
    /// A backup ended `PartiallyFailed`.
    BackupPartiallyFailed,
    /// A backup ended `Failed`, or failed before a manifest was written.
    BackupFailed,
    /// Retention pruned a policy's backups.
    PruneCompleted,
    /// Retention could not prune.
    PruneFailed,
    /// A policy became invalid (or invalid for another reason).
    PolicyInvalid,
    /// A restore is about to write (not sent for `--dry-run`).
    RestoreStarted,
    /// Every object was restored.
    RestoreSucceeded,
    /// Some objects failed.
    RestorePartiallyFailed,
    /// The restore was refused or nothing could be restored.
    RestoreFailed,
}

impl WebhookEvent {
    /// Every event, in [`crate::policy::WEBHOOK_EVENTS`] order.
    pub const ALL: [WebhookEvent; 11] = [
        WebhookEvent::BackupStarted,
        WebhookEvent::BackupSucceeded,
        WebhookEvent::BackupPartiallyFailed,
        WebhookEvent::BackupFailed,
        WebhookEvent::PruneCompleted,
        WebhookEvent::PruneFailed,
        WebhookEvent::PolicyInvalid,
        WebhookEvent::RestoreStarted,
        WebhookEvent::RestoreSucceeded,
        WebhookEvent::RestorePartiallyFailed,
        WebhookEvent::RestoreFailed,
    ];

    /// The name in `events`, the body's `event` and the `X-Freezeframe-Event` header.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::BackupStarted => "backup.started",
            WebhookEvent::BackupSucceeded => "backup.succeeded",
            WebhookEvent::BackupPartiallyFailed => "backup.partially_failed",
            WebhookEvent::BackupFailed => "backup.failed",
            WebhookEvent::PruneCompleted => "prune.completed",
            WebhookEvent::PruneFailed => "prune.failed",
            WebhookEvent::PolicyInvalid => "policy.invalid",
            WebhookEvent::RestoreStarted => "restore.started",
            WebhookEvent::RestoreSucceeded => "restore.succeeded",
            WebhookEvent::RestorePartiallyFailed => "restore.partially_failed",
            WebhookEvent::RestoreFailed => "restore.failed",
        }
    }

    /// The event a finished backup with `status` sends.
    pub fn backup_finished(status: Status) -> WebhookEvent {
        match status {
            Status::Completed => WebhookEvent::BackupSucceeded,
            Status::PartiallyFailed => WebhookEvent::BackupPartiallyFailed,
            Status::Failed => WebhookEvent::BackupFailed,
        }
    }

    /// The event a finished restore with `outcome` sends.
    pub fn restore_finished(outcome: Outcome) -> WebhookEvent {
        match outcome {
            Outcome::Success => WebhookEvent::RestoreSucceeded,
            Outcome::PartiallyFailed => WebhookEvent::RestorePartiallyFailed,
            Outcome::Failed | Outcome::InvalidInput => WebhookEvent::RestoreFailed,
        }
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a run is, in a payload's `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Started, not finished (`*.started`).
    Running,
    /// Everything asked for was done.
    Completed,
    /// Some parts failed.
    PartiallyFailed,
    /// Nothing usable was produced.
    Failed,
    /// The policy is invalid (`policy.invalid`).
    Invalid,
}

impl From<Status> for Phase {
    fn from(s: Status) -> Phase {
        match s {
            Status::Completed => Phase::Completed,
            Status::PartiallyFailed => Phase::PartiallyFailed,
            Status::Failed => Phase::Failed,
        }
    }
}

impl From<Outcome> for Phase {
    fn from(o: Outcome) -> Phase {
        match o {
            Outcome::Success => Phase::Completed,
            Outcome::PartiallyFailed => Phase::PartiallyFailed,
            Outcome::Failed | Outcome::InvalidInput => Phase::Failed,
        }
    }
}

/// The fields of a delivery's body that describe what happened (every key is always present; unknown
/// values are `null` or empty).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// The policy.
    pub policy: String,
    /// The backup (`null` before it has an id, or when none was produced).
    pub backup_id: Option<String>,
    /// Where the run is.
    pub phase: Phase,
    /// When the backup or restore started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished (`null` for `*.started`).
    pub finished_at: Option<DateTime<Utc>>,
    /// Namespaces backed up or restored into.
    pub namespaces: Vec<String>,
    /// The cluster it happened in (`kubeSystemUid`); `null` when it could not be read.
    pub cluster: Option<ClusterIdentity>,
    /// Restores only: the cluster the backup came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_cluster: Option<ClusterIdentity>,
    /// One line for people, at most 1 KiB.
    pub message: String,
    /// Why it is not `Completed`: at most [`MAX_PROBLEMS`] lines of at most [`MAX_PROBLEM_BYTES`].
    pub problems: Vec<String>,
    /// Problems left out of `problems`.
    pub problems_omitted: usize,
}

impl Payload {
    /// A payload about `policy` with only a phase and a message (bounded to 1 KiB); fill the rest with
    /// struct update syntax or [`Payload::with_problems`].
    pub fn new(policy: &str, phase: Phase, message: &str) -> Payload {
        Payload {
            policy: policy.to_string(),
            backup_id: None,
            phase,
            started_at: None,
            finished_at: None,
            namespaces: Vec::new(),
            cluster: None,
            source_cluster: None,
            message: bounded(message, MESSAGE_BYTES),
            problems: Vec::new(),
            problems_omitted: 0,
        }
    }

    /// Set the problems, keeping the first [`MAX_PROBLEMS`], each bounded to [`MAX_PROBLEM_BYTES`].
    pub fn with_problems(mut self, problems: impl IntoIterator<Item = String>) -> Payload {
        let mut all = problems.into_iter();
        self.problems = all
            .by_ref()
            .take(MAX_PROBLEMS)
            .map(|p| bounded(&p, MAX_PROBLEM_BYTES))
            .collect();
        self.problems_omitted = all.count();
        self
    }

    /// `backup.started` for `policy`: the namespaces it lists (empty for a `namespaceSelector`).
    pub fn backup_started(
        policy: &Policy,
        started_at: DateTime<Utc>,
        cluster: Option<ClusterIdentity>,
    ) -> Payload {
        Payload {
            started_at: Some(started_at),
            namespaces: listed_namespaces(policy),
            cluster,
            ..Payload::new(
                &policy.name,
                Phase::Running,
                &format!("backup of {} started", policy.name),
            )
        }
    }

    /// `backup.succeeded|partially_failed|failed` for a backup that wrote its manifest.
    pub fn backup_finished(m: &Manifest) -> Payload {
        Payload {
            backup_id: Some(m.backup_id.clone()),
            started_at: Some(m.started_at),
            finished_at: Some(m.finished_at),
            namespaces: m.namespaces.clone(),
            cluster: Some(m.cluster.clone()),
            ..Payload::new(&m.policy, m.status.into(), &summary::backup(m))
        }
        .with_problems(m.problems.iter().cloned())
    }

    /// `backup.failed` for a backup that failed before a manifest was written (`error` is the whole
    /// error chain, also the one problem).
    pub fn backup_error(
        policy: &Policy,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        cluster: Option<ClusterIdentity>,
        error: &str,
    ) -> Payload {
        Payload {
            started_at: Some(started_at),
            finished_at: Some(finished_at),
            namespaces: listed_namespaces(policy),
            cluster,
            ..Payload::new(
                &policy.name,
                Phase::Failed,
                &summary::backup_error(&policy.name, error),
            )
        }
        .with_problems([error.to_string()])
    }

    /// `policy.invalid` for the invalid policy `name` of `set`: every problem of that policy.
    pub fn policy_invalid(set: &PolicySet, name: &str, cluster: Option<ClusterIdentity>) -> Payload {
        let problems: Vec<String> = set
            .problems
            .iter()
            .filter(|p| p.policy.as_deref() == Some(name))
            .map(|p| p.to_string())
            .collect();
        let message = format!(
            "policy {name} is invalid ({} problem(s)); it is not run or pruned until fixed; \
             run `freezeframe validate` for every problem",
            problems.len()
        );
        Payload {
            cluster,
            ..Payload::new(name, Phase::Invalid, &message)
        }
        .with_problems(problems)
    }
    /// `restore.started`: the backup of `manifest` is about to be restored into `namespaces` of this
    /// cluster (`cluster`); `sourceCluster` is the backup's.
    pub fn restore_started(
        manifest: &Manifest,
        namespaces: Vec<String>,
        started_at: DateTime<Utc>,
        cluster: Option<ClusterIdentity>,
    ) -> Payload {
        let message = format!(
            "restore of {}/{} into {} started",
            manifest.policy,
            manifest.backup_id,
            namespaces.join(", ")
        );
        Payload {
            backup_id: Some(manifest.backup_id.clone()),
            started_at: Some(started_at),
            namespaces,
            cluster,
            source_cluster: Some(manifest.cluster.clone()),
            ..Payload::new(&manifest.policy, Phase::Running, &message)
        }
    }

    /// `restore.succeeded|partially_failed|failed` after `started`: the report's summary and failures,
    /// the namespaces written into.
    pub fn restore_finished(
        started: &Payload,
        report: &Report,
        namespaces: Vec<String>,
        finished_at: DateTime<Utc>,
    ) -> Payload {
        Payload {
            phase: report.outcome().into(),
            finished_at: Some(finished_at),
            namespaces,
            message: crate::report::restore_events::summary(report),
            ..started.clone()
        }
        .with_problems(
            report
                .failures
                .iter()
                .map(|f| format!("{} {}: {}", f.kind, f.object, f.message)),
        )
    }

    /// `restore.failed` after `started`: the restore was refused (`error`: the whole chain).
    pub fn restore_error(started: &Payload, error: &str, finished_at: DateTime<Utc>) -> Payload {
        Payload {
            phase: Phase::Failed,
            finished_at: Some(finished_at),
            message: bounded(
                &format!(
                    "restore of {}/{} failed: {error}",
                    started.policy,
                    started.backup_id.as_deref().unwrap_or("-")
                ),
                MESSAGE_BYTES,
            ),
            ..started.clone()
        }
        .with_problems([error.to_string()])
    }
}

/// The namespaces a policy names (empty for a selector, resolved only by the backup).
pub fn listed_namespaces(policy: &Policy) -> Vec<String> {
    match &policy.namespaces {
        Namespaces::Names(names) => names.clone(),
        Namespaces::Selector(_) => Vec::new(),
    }
}

/// The webhook a prune of `policy` sends and its payload (cluster not set), or `None` when it neither
/// pruned nor failed anything. `message` names the pruned backups; `problems` are the failures.
pub fn prune(
    policy: &str,
    result: &Result<crate::retention::PruneReport, crate::retention::Error>,
    now: DateTime<Utc>,
) -> Option<(WebhookEvent, Payload)> {
    let (event, payload) = match result {
        Err(e) => {
            let error = super::chain(e);
            let payload = Payload::new(policy, Phase::Failed, &format!("{policy}: prune failed: {error}"))
                .with_problems([error]);
            (WebhookEvent::PruneFailed, payload)
        }
        Ok(r) if r.pruned.is_empty() && r.failed.is_empty() => return None,
        Ok(r) => {
            let ids = |list: &[crate::retention::PrunedBackup]| {
                list.iter()
                    .map(|p| p.backup_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut message = format!("{policy}: kept {}, pruned {}", r.kept.len(), r.pruned.len());
            if !r.pruned.is_empty() {
                message.push_str(&format!(" ({})", ids(&r.pruned)));
            }
            if !r.failed.is_empty() {
                message.push_str(&format!(
                    ", could not prune {} ({})",
                    r.failed.len(),
                    ids(&r.failed)
                ));
            }
            let problems = r
                .failed
                .iter()
                .flat_map(|f| f.errors.iter().map(move |e| format!("{}: {e}", f.backup_id)));
            let (event, phase) = if r.failed.is_empty() {
                (WebhookEvent::PruneCompleted, Phase::Completed)
            } else {
                (WebhookEvent::PruneFailed, Phase::PartiallyFailed)
            };
            (
                event,
                Payload::new(policy, phase, &message).with_problems(problems),
            )
        }
    };
    Some((
        event,
        Payload {
            finished_at: Some(now),
            ..payload
        },
    ))
}

#[cfg(test)]
mod tests {

    fn pruned(id: &str, errors: &[&str]) -> crate::retention::PrunedBackup {
        crate::retention::PrunedBackup {
            backup_id: id.to_string(),
            status: "Completed".to_string(),
            reason: "not kept by any rule".to_string(),
            snapshots: Vec::new(),
            objects: 3,
            notes: Vec::new(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn prune_report(
        pruned: Vec<crate::retention::PrunedBackup>,
        failed: Vec<crate::retention::PrunedBackup>,
    ) -> crate::retention::PruneReport {
        crate::retention::PruneReport {
            policy: "app".to_string(),
            dry_run: false,
            kept: Vec::new(),
            pruned,
            failed,
            locked: Vec::new(),
        }
    }

    #[test]
    fn given_prune_that_deleted_nothing_when_reported_then_no_webhook_is_sent() {
        let now = "2026-11-24T10:00:00Z".parse().unwrap();
        assert_eq!(prune("app", &Ok(prune_report(vec![], vec![])), now), None);
    }

    #[test]
    fn given_pruned_and_failed_backups_when_reported_then_prune_failed_names_both_with_each_error() {
        let now = "2026-11-24T10:00:00Z".parse().unwrap();
        let ok = Ok(prune_report(vec![pruned("20261120T000000Z", &[])], vec![]));
        let (event, payload) = prune("app", &ok, now).unwrap();
        assert_eq!(event, WebhookEvent::PruneCompleted);
        assert_eq!(payload.phase, Phase::Completed);
        assert_eq!(payload.message, "app: kept 0, pruned 1 (20261120T000000Z)");
        assert_eq!(payload.finished_at, Some(now));

        let partial = Ok(prune_report(
            vec![pruned("20261120T000000Z", &[])],
            vec![pruned(
                "20261121T000000Z",
                &["delete VolumeSnapshot db/x: forbidden"],
            )],
        ));
        let (event, payload) = prune("app", &partial, now).unwrap();
        assert_eq!(event, WebhookEvent::PruneFailed);
        assert_eq!(payload.phase, Phase::PartiallyFailed);
        assert!(
            payload.message.ends_with("could not prune 1 (20261121T000000Z)"),
            "{}",
            payload.message
        );
        assert_eq!(
            payload.problems,
            ["20261121T000000Z: delete VolumeSnapshot db/x: forbidden"]
        );
    }
    use super::*;
    use crate::report::fake;

    #[test]
    fn given_event_names_then_they_are_exactly_the_policy_language_names() {
        let names: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(names, crate::policy::WEBHOOK_EVENTS);
    }

    #[test]
    fn given_partially_failed_manifest_then_payload_has_every_documented_field() {
        let m = fake::manifest(Status::PartiallyFailed);
        let value = serde_json::to_value(Payload::backup_finished(&m)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "policy": "app",
                "backupId": "20261123T120000Z",
                "phase": "PartiallyFailed",
                "startedAt": "2026-11-23T12:00:00Z",
                "finishedAt": "2026-11-23T12:00:05Z",
                "namespaces": ["db"],
                "cluster": {"kubeSystemUid": "ks-uid"},
                "message": summary::backup(&m),
                "problems": ["dump data of db/db-0 failed: exit code 5"],
                "problemsOmitted": 0
            })
        );
    }

    #[test]
    fn given_many_long_problems_then_payload_keeps_twenty_bounded_lines_and_counts_the_rest() {
        let p = Payload::new("app", Phase::Failed, &"m".repeat(4000))
            .with_problems((0..25).map(|i| format!("{i}: {}", "x".repeat(2000))));
        assert_eq!(p.problems.len(), MAX_PROBLEMS);
        assert!(p.problems.iter().all(|l| l.len() <= MAX_PROBLEM_BYTES));
        assert!(p.problems[0].starts_with("0: xx") && p.problems[0].ends_with("..."));
        assert_eq!(p.problems_omitted, 5);
        assert!(p.message.len() <= MESSAGE_BYTES);
    }

    #[test]
    fn given_restore_with_failures_then_finished_payload_keeps_start_and_lists_failures() {
        let m = fake::manifest(Status::Completed);
        let started = Payload::restore_started(
            &m,
            vec!["db-copy".into()],
            "2026-11-24T08:00:00Z".parse().unwrap(),
            Some(ClusterIdentity {
                kube_system_uid: "dr".into(),
            }),
        );
        assert_eq!(
            started.message,
            "restore of app/20261123T120000Z into db-copy started"
        );
        assert_eq!(started.source_cluster.as_ref().unwrap().kube_system_uid, "ks-uid");
        let report = Report {
            policy: "app".into(),
            backup_id: "20261123T120000Z".into(),
            source_cluster: "ks-uid".into(),
            dry_run: false,
            kinds: [(
                "configmaps".to_string(),
                crate::restore::KindSummary {
                    created: 2,
                    failed: 1,
                    ..Default::default()
                },
            )]
            .into(),
            failures: vec![crate::restore::apply::Failure {
                kind: "configmaps".into(),
                object: "db-copy/cm".into(),
                message: "forbidden".into(),
            }],
            dumps: Vec::new(),
            volumes: Vec::new(),
        };
        let done = Payload::restore_finished(
            &started,
            &report,
            vec!["db-copy".into()],
            "2026-11-24T08:01:00Z".parse().unwrap(),
        );
        assert_eq!(done.phase, Phase::PartiallyFailed);
        assert_eq!(done.started_at, started.started_at);
        assert_eq!(done.problems, ["configmaps db-copy/cm: forbidden"]);
        let value = serde_json::to_value(&done).unwrap();
        assert_eq!(value["sourceCluster"]["kubeSystemUid"], "ks-uid");
        assert_eq!(value["cluster"]["kubeSystemUid"], "dr");
        let failed = Payload::restore_error(
            &started,
            "backup artifact x is missing",
            started.started_at.unwrap(),
        );
        assert_eq!(
            failed.message,
            "restore of app/20261123T120000Z failed: backup artifact x is missing"
        );
        assert_eq!(failed.phase, Phase::Failed);
    }

    #[test]
    fn given_invalid_policy_then_payload_lists_its_problems_and_no_backup() {
        let text =
            include_str!("../../policies/redis.yaml").replace("schedule: \"*/30 * * * *\"", "schedule: 30");
        let set = crate::policy::parse_str("redis.yaml", &text);
        let p = Payload::policy_invalid(&set, "redis-cache", None);
        assert_eq!(p.phase, Phase::Invalid);
        assert_eq!(p.backup_id, None);
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].contains("policies[0].schedule"), "{:?}", p.problems);
        assert!(
            p.message
                .starts_with("policy redis-cache is invalid (1 problem(s))")
        );
    }
}
