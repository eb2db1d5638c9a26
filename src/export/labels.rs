//! Label selector matching for the closure (Services, NetworkPolicies, PDBs selecting pods).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

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

/// Kubernetes LabelSelector semantics: every `matchLabels` pair and every expression must hold; an
/// empty selector matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// A LabelSelector given as JSON (e.g. a NetworkPolicy's `podSelector`); `null` or unparsable matches
/// nothing.
pub fn value_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_null() {
        return false;
    }
    serde_json::from_value::<LabelSelector>(selector.clone()).is_ok_and(|s| matches(&s, labels))
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

    #[test]
    fn given_match_labels_and_expressions_then_all_must_hold() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["x"]},
            ]
        }))
        .unwrap();

        assert!(matches(&selector, &labels(&[("app", "db"), ("tier", "a")])));
        assert!(!matches(&selector, &labels(&[("app", "db"), ("tier", "c")])));
        assert!(!matches(
            &selector,
            &labels(&[("app", "db"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "db"), ("tier", "a"), ("zone", "x")])
        ));
        assert!(!matches(&selector, &labels(&[("tier", "a")])));
    }

    #[test]
    fn given_empty_selector_then_everything_matches_but_null_and_empty_map_select_nothing() {
        let all = labels(&[("app", "x")]);
        assert!(value_matches(&json!({}), &all));
        assert!(!value_matches(&Value::Null, &all));
        assert!(!map_matches(&json!({}), &all));
        assert!(map_matches(&json!({"app": "x"}), &all));
        assert!(!map_matches(&json!({"app": "y"}), &all));
    }
}
