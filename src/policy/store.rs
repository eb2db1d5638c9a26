//! The policy ConfigMap in the cluster: load it, read and write each policy's last scheduled time and
//! last result.
//!
//! Run state lives on the ConfigMap itself as two annotations per policy (the annotation name part is the
//! policy name, a DNS label, so it is always a valid key):
//! - `last-scheduled.freezeframe.dev/<policy>` = RFC 3339 UTC time;
//! - `last-result.freezeframe.dev/<policy>` = `<phase> <finished RFC 3339 UTC time> <backup id>`, e.g.
//!   `Completed 2026-11-23T12:00:00Z cassandra-ring-20261123-120000` (see [`LastResult`]).
//!
//! Edits to the data leave them alone; deleting a policy leaves stale annotations that are harmless.
//! The kube functions are deliberately thin; everything they feed is pure and unit-tested.
//!
//! RBAC: `get` and `patch` on `configmaps` in freezeframe's namespace.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::{Error, PolicySet, parse_configmap_data};

/// Prefix of the per-policy last-scheduled annotation.
pub const LAST_SCHEDULED_PREFIX: &str = "last-scheduled.freezeframe.dev/";

/// The annotation holding `policy`'s last scheduled time.
pub fn last_scheduled_annotation(policy: &str) -> String {
    format!("{LAST_SCHEDULED_PREFIX}{policy}")
}

/// Prefix of the per-policy last-result annotation.
pub const LAST_RESULT_PREFIX: &str = "last-result.freezeframe.dev/";

/// The annotation holding `policy`'s last result.
pub fn last_result_annotation(policy: &str) -> String {
    format!("{LAST_RESULT_PREFIX}{policy}")
}

/// How a policy's last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultPhase {
    /// Everything asked for was backed up.
    Completed,
    /// Some artifacts were backed up, some failed.
    PartiallyFailed,
    /// Nothing usable was produced.
    Failed,
}

impl ResultPhase {
    /// The phase as written in the annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultPhase::Completed => "Completed",
            ResultPhase::PartiallyFailed => "PartiallyFailed",
            ResultPhase::Failed => "Failed",
        }
    }

    /// The phase written as `text`, if it is one.
    pub fn parse(text: &str) -> Option<ResultPhase> {
        [
            ResultPhase::Completed,
            ResultPhase::PartiallyFailed,
            ResultPhase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// A policy's last result, stored as `<phase> <finished at> <backup id>` in
/// `last-result.freezeframe.dev/<policy>`. The time is written in whole seconds; the backup id must be
/// non-empty (it is everything after the second space, so it round-trips as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastResult {
    /// How the run ended.
    pub phase: ResultPhase,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// The backup it produced.
    pub backup_id: String,
}

impl LastResult {
    /// Read an annotation value; `None` when it is not `<phase> <RFC 3339 time> <backup id>`. Pure.
    pub fn parse(text: &str) -> Option<LastResult> {
        let mut parts = text.trim().splitn(3, ' ');
        let phase = ResultPhase::parse(parts.next()?)?;
        let finished_at = DateTime::parse_from_rfc3339(parts.next()?)
            .ok()?
            .with_timezone(&Utc);
        let backup_id = parts.next()?.trim();
        (!backup_id.is_empty()).then(|| LastResult {
            phase,
            finished_at,
            backup_id: backup_id.to_string(),
        })
    }
}

impl fmt::Display for LastResult {
    /// The annotation value: `Completed 2026-11-23T12:00:00Z <backup id>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.phase.as_str(),
            self.finished_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.backup_id
        )
    }
}

/// The policies and their run state, as read from one ConfigMap.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Validated policies and problems.
    pub set: PolicySet,
    /// Last scheduled (or first-seen) time per policy.
    pub last_scheduled: BTreeMap<String, DateTime<Utc>>,
    /// Last result per policy.
    pub last_results: BTreeMap<String, LastResult>,
}

/// Parse a ConfigMap: data into policies, annotations into schedule state. Pure.
pub fn from_configmap(cm: &ConfigMap) -> Loaded {
    let data = cm.data.clone().unwrap_or_default();
    Loaded {
        set: parse_configmap_data(&data),
        last_scheduled: last_scheduled(cm),
        last_results: last_results(cm),
    }
}

/// Every `last-scheduled.freezeframe.dev/<policy>` annotation that holds a valid time (others are ignored:
/// the policy is then treated as first seen).
pub fn last_scheduled(cm: &ConfigMap) -> BTreeMap<String, DateTime<Utc>> {
    cm.metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let policy = k.strip_prefix(LAST_SCHEDULED_PREFIX)?;
            let t = DateTime::parse_from_rfc3339(v).ok()?.with_timezone(&Utc);
            Some((policy.to_string(), t))
        })
        .collect()
}

/// The merge patch that stores `policy`'s last scheduled time.
pub fn last_scheduled_patch(policy: &str, at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {last_scheduled_annotation(policy): at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}}
    })
}

/// Every `last-result.freezeframe.dev/<policy>` annotation that holds a valid result (others are ignored:
/// the policy then shows no last result).
pub fn last_results(cm: &ConfigMap) -> BTreeMap<String, LastResult> {
    cm.metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix(LAST_RESULT_PREFIX)?.to_string(),
                LastResult::parse(v)?,
            ))
        })
        .collect()
}

/// The merge patch that stores `policy`'s last result.
pub fn last_result_patch(policy: &str, result: &LastResult) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {last_result_annotation(policy): result.to_string()}}
    })
}

/// Read the ConfigMap `name` and parse it.
pub async fn load(api: &Api<ConfigMap>, namespace: &str, name: &str) -> Result<Loaded, Error> {
    let cm = api.get(name).await.map_err(|source| Error::Kube {
        action: "read",
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    Ok(from_configmap(&cm))
}

/// Store `policy`'s last scheduled time on the ConfigMap (a merge patch on one annotation).
pub async fn record_last_scheduled(
    api: &Api<ConfigMap>,
    namespace: &str,
    name: &str,
    policy: &str,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    merge_annotations(api, namespace, name, last_scheduled_patch(policy, at)).await
}

/// Store `policy`'s last result on the ConfigMap (a merge patch on one annotation).
pub async fn record_last_result(
    api: &Api<ConfigMap>,
    namespace: &str,
    name: &str,
    policy: &str,
    result: &LastResult,
) -> Result<(), Error> {
    merge_annotations(api, namespace, name, last_result_patch(policy, result)).await
}

/// Apply one of this module's annotation merge patches to the policy ConfigMap.
async fn merge_annotations(
    api: &Api<ConfigMap>,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| Error::Kube {
            action: "patch",
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    #[test]
    fn given_annotations_when_read_then_only_valid_last_scheduled_times_are_kept() {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (
                        last_scheduled_annotation("db"),
                        "2026-01-01T06:00:00Z".to_string(),
                    ),
                    (last_scheduled_annotation("broken"), "yesterday".to_string()),
                    ("other/annotation".to_string(), "2026-01-01T06:00:00Z".to_string()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        let got = last_scheduled(&cm);
        assert_eq!(got.len(), 1);
        assert_eq!(got["db"].to_rfc3339(), "2026-01-01T06:00:00+00:00");
    }

    #[test]
    fn given_time_when_patch_built_then_it_round_trips_through_the_reader() {
        let at = DateTime::parse_from_rfc3339("2026-02-03T04:05:06Z")
            .unwrap()
            .with_timezone(&Utc);
        let patch = last_scheduled_patch("cassandra-ring", at);
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(patch["metadata"]["annotations"].clone()).unwrap();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(last_scheduled(&cm)["cassandra-ring"], at);
    }

    fn configmap_with(annotations: BTreeMap<String, String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn given_result_when_patch_built_then_value_is_phase_time_id_and_round_trips() {
        let result = LastResult {
            phase: ResultPhase::PartiallyFailed,
            finished_at: "2026-11-23T12:00:00.750Z".parse().unwrap(),
            backup_id: "cassandra-ring-20261123-120000".into(),
        };
        let patch = last_result_patch("cassandra-ring", &result);
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(patch["metadata"]["annotations"].clone()).unwrap();
        assert_eq!(
            annotations,
            BTreeMap::from([(
                "last-result.freezeframe.dev/cassandra-ring".to_string(),
                "PartiallyFailed 2026-11-23T12:00:00Z cassandra-ring-20261123-120000".to_string()
            )])
        );
        let read = last_results(&configmap_with(annotations));
        assert_eq!(
            read["cassandra-ring"],
            LastResult {
                finished_at: "2026-11-23T12:00:00Z".parse().unwrap(),
                ..result
            }
        );
    }

    #[test]
    fn given_malformed_result_annotations_when_read_then_only_well_formed_ones_are_kept() {
        let cm = configmap_with(BTreeMap::from([
            (
                last_result_annotation("ok"),
                "Failed 2026-01-01T06:00:00Z b-1".to_string(),
            ),
            (
                last_result_annotation("phase"),
                "Done 2026-01-01T06:00:00Z b-1".to_string(),
            ),
            (
                last_result_annotation("time"),
                "Completed yesterday b-1".to_string(),
            ),
            (
                last_result_annotation("no-id"),
                "Completed 2026-01-01T06:00:00Z ".to_string(),
            ),
            (
                last_scheduled_annotation("ok"),
                "Completed 2026-01-01T06:00:00Z b-2".to_string(),
            ),
        ]));
        let got = last_results(&cm);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(got["ok"].to_string(), "Failed 2026-01-01T06:00:00Z b-1");
        assert!(last_scheduled(&cm).is_empty());
    }
}
