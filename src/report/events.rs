//! Kubernetes Events freezeframe writes: the one builder every Event goes through ([`event`]; restores
//! use it from [`crate::report::restore_events`]) and the Events of a finished backup — one on each backed-up
//! Namespace and one on the policy ConfigMap: `Normal BackupSucceeded`, `Warning
//! BackupPartiallyFailed` or `Warning BackupFailed`, with the one-line summary as message. Pure.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::summary::{MESSAGE_BYTES, bounded};
use crate::backup::Status;

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Involved {
    /// A Namespace (the Event lives in it).
    Namespace(String),
    /// A ConfigMap (the policy ConfigMap).
    ConfigMap {
        /// Its namespace (the Event lives there).
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Involved {
    /// The namespace the Event is created in.
    pub fn event_namespace(&self) -> &str {
        match self {
            Involved::Namespace(name) => name,
            Involved::ConfigMap { namespace, .. } => namespace,
        }
    }

    /// `involvedObject` with `uid` when known.
    fn reference(&self, uid: Option<&str>) -> Value {
        match self {
            Involved::Namespace(name) => {
                json!({"apiVersion": "v1", "kind": "Namespace", "name": name, "uid": uid})
            }
            Involved::ConfigMap { namespace, name } => json!({
                "apiVersion": "v1", "kind": "ConfigMap", "namespace": namespace, "name": name, "uid": uid
            }),
        }
    }
}

/// What an Event says.
#[derive(Debug, Clone, Copy)]
pub struct EventSpec<'a> {
    /// `Normal` or `Warning`.
    pub type_: &'a str,
    /// CamelCase reason (`BackupSucceeded`).
    pub reason: &'a str,
    /// What freezeframe did (`Backup`, `Restore`).
    pub action: &'a str,
    /// The message (cut to 1 KiB).
    pub message: &'a str,
    /// Prefix of the generated name (`freezeframe-backup.`).
    pub generate_name: &'a str,
}

/// A core v1 Event about `involved` (whose uid is `uid`, when known), reported by `freezeframe`.
pub fn event(involved: &Involved, uid: Option<&str>, spec: &EventSpec<'_>, now: DateTime<Utc>) -> Value {
    let time = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": spec.generate_name, "namespace": involved.event_namespace()},
        "involvedObject": involved.reference(uid),
        "reason": spec.reason,
        "type": spec.type_,
        "message": bounded(spec.message, MESSAGE_BYTES),
        "source": {"component": "freezeframe"},
        "reportingComponent": "freezeframe",
        "reportingInstance": "freezeframe",
        "action": spec.action,
        "firstTimestamp": time, "lastTimestamp": time, "count": 1
    })
}

/// The Event's `type` and `reason` for a backup that ended with `status` (`None`: failed before a
/// manifest was written).
pub fn backup_reason(status: Option<Status>) -> (&'static str, &'static str) {
    match status {
        Some(Status::Completed) => ("Normal", "BackupSucceeded"),
        Some(Status::PartiallyFailed) => ("Warning", "BackupPartiallyFailed"),
        Some(Status::Failed) | None => ("Warning", "BackupFailed"),
    }
}

/// The Event of a finished backup about `involved`.
pub fn backup_event(
    involved: &Involved,
    uid: Option<&str>,
    status: Option<Status>,
    message: &str,
    now: DateTime<Utc>,
) -> Value {
    let (type_, reason) = backup_reason(status);
    let spec = EventSpec {
        type_,
        reason,
        action: "Backup",
        message,
        generate_name: "freezeframe-backup.",
    };
    event(involved, uid, &spec, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_statuses_then_succeeded_is_normal_and_the_rest_are_warnings() {
        assert_eq!(
            backup_reason(Some(Status::Completed)),
            ("Normal", "BackupSucceeded")
        );
        assert_eq!(
            backup_reason(Some(Status::PartiallyFailed)),
            ("Warning", "BackupPartiallyFailed")
        );
        assert_eq!(backup_reason(Some(Status::Failed)), ("Warning", "BackupFailed"));
        assert_eq!(backup_reason(None), ("Warning", "BackupFailed"));
    }

    #[test]
    fn given_configmap_and_long_message_then_event_is_in_its_namespace_and_message_is_bounded() {
        let cm = Involved::ConfigMap {
            namespace: "freezeframe".into(),
            name: "freezeframe-policies".into(),
        };
        let e = backup_event(
            &cm,
            Some("u-1"),
            Some(Status::PartiallyFailed),
            &"x".repeat(3000),
            "2026-11-23T12:00:00Z".parse().unwrap(),
        );
        assert_eq!(e["metadata"]["namespace"], "freezeframe");
        assert_eq!(
            e["involvedObject"],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "freezeframe",
                   "name": "freezeframe-policies", "uid": "u-1"})
        );
        assert_eq!(
            (&e["type"], &e["reason"]),
            (&json!("Warning"), &json!("BackupPartiallyFailed"))
        );
        assert!(e["message"].as_str().unwrap().len() <= MESSAGE_BYTES);
        assert_eq!(e["firstTimestamp"], "2026-11-23T12:00:00Z");
    }
}
