//! Label selector matching for the closure (Services, NetworkPolicies, PDBs selecting pods) and for
//! namespace selectors: which "no selector" means nothing and which means everything, per source. The
//! matching itself is [`freezeframe_selector`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use freezeframe_selector::LabelSelector;

/// An object's labels.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A policy's selector (`selector`, `namespaceSelector`) as a matcher; an empty selector matches
/// everything. Policies are validated when loaded, so `None` (an invalid selector, which then selects
/// nothing rather than everything) is unreachable from a loaded policy.
pub fn policy_selector(selector: &metav1::LabelSelector) -> Option<LabelSelector> {
    LabelSelector::from_k8s(selector).ok()
}

/// A LabelSelector given as JSON (e.g. a NetworkPolicy's `podSelector`) as a matcher: `{}` selects
/// every pod, while `null` or an unparsable selector selects nothing (`None`).
pub fn value_selector(selector: &Value) -> Option<LabelSelector> {
    if selector.is_null() {
        return None;
    }
    LabelSelector::from_label_selector(selector).ok()
}

/// A plain label map selector (a Service's `spec.selector`): a missing or empty map selects nothing.
pub fn map_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    match selector.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn value_matches(selector: Value, labels: &BTreeMap<String, String>) -> bool {
        value_selector(&selector).is_some_and(|s| s.matches_map(labels))
    }

    #[test]
    fn given_match_labels_and_expressions_then_all_must_hold() {
        let selector: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["x"]},
            ]
        }))
        .unwrap();
        let selector = policy_selector(&selector).unwrap();

        assert!(selector.matches_map(&labels(&[("app", "db"), ("tier", "a")])));
        assert!(!selector.matches_map(&labels(&[("app", "db"), ("tier", "c")])));
        assert!(!selector.matches_map(&labels(&[("app", "db"), ("tier", "a"), ("canary", "1")])));
        assert!(!selector.matches_map(&labels(&[("app", "db"), ("tier", "a"), ("zone", "x")])));
        assert!(!selector.matches_map(&labels(&[("tier", "a")])));
    }

    #[test]
    fn given_empty_policy_selector_then_everything_matches() {
        let selector = policy_selector(&metav1::LabelSelector::default()).unwrap();
        assert!(selector.matches_map(&labels(&[("app", "x")])));
        assert!(selector.matches_map(&BTreeMap::new()));
    }

    #[test]
    fn given_empty_selector_then_everything_matches_but_null_and_empty_map_select_nothing() {
        let all = labels(&[("app", "x")]);
        assert!(value_matches(json!({}), &all));
        assert!(!value_matches(Value::Null, &all));
        assert!(!map_matches(&json!({}), &all));
        assert!(map_matches(&json!({"app": "x"}), &all));
        assert!(!map_matches(&json!({"app": "y"}), &all));
    }

    #[test]
    fn given_unparsable_json_selector_then_it_selects_nothing() {
        let all = labels(&[("app", "x")]);
        assert!(!value_matches(json!("app=x"), &all));
        assert!(!value_matches(json!({"matchLabels": {"app": 1}}), &all));
        assert!(!value_matches(
            json!({"matchExpressions": [{"key": "app", "operator": "Maybe"}]}),
            &all
        ));
    }
}
