//! The policy ConfigMap in the cluster: load it, read and write each policy's last scheduled time.
//!
//! Schedule state lives on the ConfigMap itself as one annotation per policy,
//! `last-scheduled.freezeframe.dev/<policy>` = RFC 3339 UTC time (the annotation name part is the policy
//! name, a DNS label, so it is always a valid key). Edits to the data leave it alone; deleting a policy
//! leaves a stale annotation that is harmless. The kube functions are deliberately thin; everything
//! they feed is pure and unit-tested.
//!
//! RBAC: `get` and `patch` on `configmaps` in freezeframe's namespace.

use std::collections::BTreeMap;

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

/// The policies and their schedule state, as read from one ConfigMap.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Validated policies and problems.
    pub set: PolicySet,
    /// Last scheduled (or first-seen) time per policy.
    pub last_scheduled: BTreeMap<String, DateTime<Utc>>,
}

/// Parse a ConfigMap: data into policies, annotations into schedule state. Pure.
pub fn from_configmap(cm: &ConfigMap) -> Loaded {
    let data = cm.data.clone().unwrap_or_default();
    Loaded {
        set: parse_configmap_data(&data),
        last_scheduled: last_scheduled(cm),
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
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(last_scheduled_patch(policy, at)),
    )
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
}
