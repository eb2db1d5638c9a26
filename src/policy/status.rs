//! Telling users about invalid policies where they look: a status annotation per policy on the policy
//! ConfigMap and a Warning Event on it. An invalid policy is never run or pruned; this says why.
//!
//! RBAC: `configmaps` patch (the policy ConfigMap), `events` create in its namespace.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::PolicySet;

/// Prefix of the per-policy status annotation (`status.freezeframe.dev/<policy>`).
pub const STATUS_PREFIX: &str = "status.freezeframe.dev/";
/// Longest annotation value written (the full list is one `freezeframe validate` away).
const MAX_VALUE: usize = 1024;

/// Why reporting failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ConfigMap could not be patched or the Event not created.
    #[error("cannot {action} for policy ConfigMap {namespace}/{name}")]
    Kube {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The annotation key holding `policy`'s status.
pub fn status_annotation(policy: &str) -> String {
    format!("{STATUS_PREFIX}{policy}")
}

/// One line per invalid policy: its first problem, how many more, and what to run.
fn summary(set: &PolicySet, policy: &str) -> String {
    let problems: Vec<_> = set
        .problems
        .iter()
        .filter(|p| p.policy.as_deref() == Some(policy))
        .collect();
    let mut text = match problems.first() {
        Some(first) => format!("Invalid: {}: {}", first.path, first.message),
        None => "Invalid".to_string(),
    };
    if problems.len() > 1 {
        text.push_str(&format!(" (and {} more)", problems.len() - 1));
    }
    text.push_str("; run `freezeframe validate` for every problem");
    if text.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The merge patch that marks each invalid policy and clears the marks of policies that are valid again
/// (or gone). `current` is the ConfigMap's annotations now.
pub fn status_patch(set: &PolicySet, current: Option<&std::collections::BTreeMap<String, String>>) -> Value {
    let mut annotations = serde_json::Map::new();
    for name in &set.invalid_policies {
        annotations.insert(status_annotation(name), json!(summary(set, name)));
    }
    for key in current.into_iter().flatten().map(|(k, _)| k) {
        if let Some(policy) = key.strip_prefix(STATUS_PREFIX)
            && !set.invalid_policies.iter().any(|p| p == policy)
        {
            annotations.insert(key.clone(), Value::Null);
        }
    }
    json!({"metadata": {"annotations": annotations}})
}

/// The invalid policies whose status annotation is new or changes with this set (first seen invalid, or
/// invalid for another reason): the ones worth telling webhooks about. `current` is the ConfigMap's
/// annotations before [`status_patch`] is applied. Pure.
pub fn newly_invalid(
    set: &PolicySet,
    current: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<String> {
    set.invalid_policies
        .iter()
        .filter(|name| {
            current
                .and_then(|a| a.get(&status_annotation(name)))
                .map(String::as_str)
                != Some(summary(set, name).as_str())
        })
        .cloned()
        .collect()
}

/// A Warning Event on the ConfigMap for each invalid policy.
pub fn invalid_policy_events(set: &PolicySet, cm: &ConfigMap, now: DateTime<Utc>) -> Vec<Event> {
    let ns = cm.metadata.namespace.clone().unwrap_or_default();
    let cm_name = cm.metadata.name.clone().unwrap_or_default();
    let time = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    set.invalid_policies
        .iter()
        .filter_map(|policy| {
            serde_json::from_value(json!({
                "metadata": {"generateName": format!("{cm_name}."), "namespace": ns},
                "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns, "name": cm_name,
                                   "uid": cm.metadata.uid, "resourceVersion": cm.metadata.resource_version},
                "reason": "InvalidPolicy",
                "type": "Warning",
                "message": format!("policy {policy}: {}", summary(set, policy)),
                "source": {"component": "freezeframe"},
                "reportingComponent": "freezeframe",
                "reportingInstance": "freezeframe",
                "firstTimestamp": time, "lastTimestamp": time, "count": 1
            }))
            .ok()
        })
        .collect()
}

/// Record the status of every policy on its ConfigMap and emit a Warning Event per invalid policy.
pub async fn report(
    client: &kube::Client,
    cm: &ConfigMap,
    set: &PolicySet,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let ns = cm.metadata.namespace.clone().unwrap_or_default();
    let name = cm.metadata.name.clone().unwrap_or_default();
    let err = |action, source| Error::Kube {
        action,
        namespace: ns.clone(),
        name: name.clone(),
        source,
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(status_patch(set, cm.metadata.annotations.as_ref())),
    )
    .await
    .map_err(|e| err("record policy status", e))?;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    for ev in invalid_policy_events(set, cm, now) {
        events
            .create(&PostParams::default(), &ev)
            .await
            .map_err(|e| err("create an InvalidPolicy Event", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn given_policy_already_marked_invalid_for_the_same_reason_when_ticked_again_then_it_is_not_newly_invalid()
     {
        let set = crate::policy::parse_str(
            "policies.yaml",
            "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
             storages: {local: {filesystem: {path: /b}}}\ndefaults: {storage: local}\npolicies:\n\
             \x20 - {name: broken, schedule: \"61 * * * *\", namespaces: [db], retention: {keepLast: 3}}\n",
        );
        assert_eq!(newly_invalid(&set, None), ["broken"], "first seen");
        let marked: std::collections::BTreeMap<String, String> =
            status_patch(&set, None)["metadata"]["annotations"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
        assert!(
            newly_invalid(&set, Some(&marked)).is_empty(),
            "same problem, next tick"
        );
        let other_reason = marked
            .keys()
            .map(|k| (k.clone(), "Invalid: something else".to_string()))
            .collect();
        assert_eq!(
            newly_invalid(&set, Some(&other_reason)),
            ["broken"],
            "another problem"
        );
    }
    use super::*;

    fn set_with_one_invalid() -> PolicySet {
        let text =
            include_str!("../../policies/redis.yaml").replace("schedule: \"*/30 * * * *\"", "schedule: 30");
        super::super::parse_str("redis.yaml", &text)
    }

    #[test]
    fn given_invalid_policy_when_status_patched_then_annotation_names_field_and_fix() {
        let set = set_with_one_invalid();
        let patch = status_patch(&set, None);
        let value = patch["metadata"]["annotations"]["status.freezeframe.dev/redis-cache"]
            .as_str()
            .unwrap();
        assert!(value.starts_with("Invalid: policies[0].schedule:"), "{value}");
        assert!(
            value.ends_with("run `freezeframe validate` for every problem"),
            "{value}"
        );
    }

    #[test]
    fn given_policy_valid_again_when_status_patched_then_stale_annotation_is_removed() {
        let valid = super::super::parse_str("redis.yaml", include_str!("../../policies/redis.yaml"));
        let current = [(
            "status.freezeframe.dev/redis-cache".to_string(),
            "Invalid: old".to_string(),
        )]
        .into();
        let patch = status_patch(&valid, Some(&current));
        assert_eq!(
            patch["metadata"]["annotations"]["status.freezeframe.dev/redis-cache"],
            Value::Null
        );
    }

    #[test]
    fn given_invalid_policy_then_one_warning_event_on_the_configmap() {
        let set = set_with_one_invalid();
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "freezeframe-policies", "namespace": "ff", "uid": "u1"}}),
        )
        .unwrap();
        let events = invalid_policy_events(&set, &cm, "2026-11-24T00:00:00Z".parse().unwrap());
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.reason.as_deref(), Some("InvalidPolicy"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.involved_object.name.as_deref(), Some("freezeframe-policies"));
        assert!(
            e.message
                .as_deref()
                .unwrap()
                .starts_with("policy redis-cache: Invalid: policies[0].schedule")
        );
    }
}
