//! Unit tests for label selector parsing, conversion, matching and rendering.

use super::*;
use serde_json::json;

fn labels(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn typed(v: Value) -> BTreeMap<String, String> {
    serde_json::from_value(v).unwrap()
}

fn k8s(v: Value) -> metav1::LabelSelector {
    serde_json::from_value(v).unwrap()
}

/// A `metav1.LabelSelector` using matchLabels and each of the four expression operators.
fn web_selector() -> Value {
    json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "edge"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}
        ]
    })
}

/// A minimal object with `metadata.labels`.
fn object(lbls: Value) -> Value {
    json!({"metadata": {"name": "p", "labels": lbls}})
}

#[test]
fn given_empty_string_when_parsed_then_selects_everything() {
    let s = LabelSelector::parse("").unwrap();
    assert!(s.is_empty());
    assert!(s.matches(None));
    assert!(s.matches(Some(&labels(json!({"a": "b"})))));
    assert_eq!(s.to_string(), "");
    assert!(LabelSelector::parse("   ").unwrap().is_empty());
}

#[test]
fn given_equality_operators_when_matching_then_compare_values() {
    let l = labels(json!({"app": "web", "tier": "front"}));
    assert!(LabelSelector::parse("app=web").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("app==web").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("app=db").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("app!=db").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("app!=web").unwrap().matches(Some(&l)));
    assert!(
        LabelSelector::parse(" app = web , tier == front ")
            .unwrap()
            .matches(Some(&l))
    );
    assert!(
        !LabelSelector::parse("app=web,tier=back")
            .unwrap()
            .matches(Some(&l))
    );
}

#[test]
fn given_not_equals_when_label_missing_then_matches() {
    let s = LabelSelector::parse("app!=web").unwrap();
    assert!(s.matches(None));
    assert!(s.matches(Some(&labels(json!({"other": "x"})))));
}

#[test]
fn given_set_based_selector_when_label_missing_then_notin_matches() {
    let s = LabelSelector::parse("env notin (prod, staging)").unwrap();
    assert!(s.matches(Some(&labels(json!({"app": "x"})))));
    assert!(s.matches(Some(&labels(json!({"env": "dev"})))));
    assert!(!s.matches(Some(&labels(json!({"env": "prod"})))));
    let s = LabelSelector::parse("env in (prod,staging)").unwrap();
    assert!(!s.matches(Some(&labels(json!({"app": "x"})))));
    assert!(s.matches(Some(&labels(json!({"env": "staging"})))));
}

#[test]
fn given_exists_and_does_not_exist_when_matching_then_check_presence() {
    let with = labels(json!({"canary": ""}));
    let without = labels(json!({"app": "x"}));
    let exists = LabelSelector::parse("canary").unwrap();
    let absent = LabelSelector::parse("!canary").unwrap();
    assert!(exists.matches(Some(&with)) && !exists.matches(Some(&without)));
    assert!(!absent.matches(Some(&with)) && absent.matches(Some(&without)) && absent.matches(None));
}

#[test]
fn given_gt_and_lt_when_matching_then_compare_as_integers() {
    let l = labels(json!({"replicas": "10", "name": "abc"}));
    assert!(LabelSelector::parse("replicas>9").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("replicas>10").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("replicas<11").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("name>1").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("missing<100").unwrap().matches(Some(&l)));
}

#[test]
fn given_gt_with_non_integer_when_parsed_then_error_says_value_must_be_integer() {
    let e = LabelSelector::parse("a>b").unwrap_err().to_string();
    assert_eq!(
        e,
        "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, \
         the value must be an integer"
    );
}

#[test]
fn given_mixed_requirements_when_displayed_then_canonical_form_sorted_by_key() {
    let s = LabelSelector::parse("z in (b, a), !y,x, w!=1 ,v==2,u>3,t notin (c),s=").unwrap();
    assert_eq!(s.to_string(), "s=,t notin (c),u>3,v==2,w!=1,x,!y,z in (a,b)");
    assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
}

#[test]
fn given_empty_values_in_set_when_parsed_then_empty_string_is_a_value() {
    let s = LabelSelector::parse("a in ()").unwrap();
    assert_eq!(s.to_string(), "a in ()");
    assert!(s.matches(Some(&labels(json!({"a": ""})))));
    let s = LabelSelector::parse("a in (x,,y)").unwrap();
    assert_eq!(
        s.requirements()[0].values().collect::<Vec<_>>(),
        vec!["", "x", "y"]
    );
    let s = LabelSelector::parse("a=").unwrap();
    assert!(s.matches(Some(&labels(json!({"a": ""})))));
}

#[test]
fn given_prefixed_keys_when_parsed_then_accepted() {
    let s = LabelSelector::parse("app.kubernetes.io/name=web,example.com/Tier_1.x in (A-1)").unwrap();
    let l = labels(json!({"app.kubernetes.io/name": "web", "example.com/Tier_1.x": "A-1"}));
    assert!(s.matches(Some(&l)));
}

#[test]
fn given_malformed_syntax_when_parsed_then_api_server_messages() {
    let cases = [
        (
            "a b",
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
        ),
        ("a,", "found '', expected: identifier after ','"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("=a", "found '=', expected: !, identifier, or 'end of string'"),
        ("a in b", "unable to parse requirement: found 'b' expected: '('"),
        (
            "a in (b",
            "unable to parse requirement: found '', expected: ',' or ')'",
        ),
        ("!=a", "found '!=', expected: !, identifier, or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        (
            "a=(b)",
            "unable to parse requirement: found '(', expected: identifier",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            LabelSelector::parse(input).unwrap_err().to_string(),
            want,
            "input {input:?}"
        );
    }
}

#[test]
fn given_invalid_key_or_value_when_parsed_then_validation_message() {
    let e = LabelSelector::parse("-bad=x").unwrap_err().to_string();
    assert!(
        e.starts_with("unable to parse requirement: key: Invalid value: \"-bad\": name part must consist of"),
        "{e}"
    );
    let long = "a".repeat(64);
    let e = LabelSelector::parse(&long).unwrap_err().to_string();
    assert!(e.contains("name part must be no more than 63 characters"), "{e}");
    let e = LabelSelector::parse("Example.com/a=b").unwrap_err().to_string();
    assert!(e.contains("prefix part a lowercase RFC 1123 subdomain"), "{e}");
    let e = LabelSelector::parse("a/b/c").unwrap_err().to_string();
    assert!(e.contains("a qualified name must consist of"), "{e}");
    let e = LabelSelector::parse("a=b*c").unwrap_err().to_string();
    assert!(
        e.contains("Invalid value: \"b*c\": a valid label must be an empty string"),
        "{e}"
    );
    let e = LabelSelector::parse(&format!("a={long}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be no more than 63 characters"), "{e}");
}

#[test]
fn given_metav1_label_selector_when_converted_then_match_labels_and_expressions_apply() {
    let s = LabelSelector::from_label_selector(&web_selector()).unwrap();
    assert_eq!(
        s.to_string(),
        "app=web,env notin (prod),!legacy,team,tier in (edge,front)"
    );
    assert!(s.matches(Some(&labels(json!({"app": "web", "tier": "edge", "team": "a"})))));
    assert!(!s.matches(Some(&labels(
        json!({"app": "web", "tier": "edge", "team": "a", "legacy": "1"})
    ))));
    assert!(!s.matches(Some(&labels(
        json!({"app": "web", "tier": "edge", "env": "prod", "team": "a"})
    ))));
}

#[test]
fn given_empty_metav1_label_selector_when_converted_then_selects_everything() {
    let s = LabelSelector::from_label_selector(&json!({})).unwrap();
    assert!(s.is_empty());
    assert!(s.matches_object(&object(json!({"a": "b"}))));
}

#[test]
fn given_bad_metav1_label_selector_when_converted_then_error() {
    let e = LabelSelector::from_label_selector(&json!({"matchExpressions": [
        {"key": "a", "operator": "Gt", "values": ["1"]}]}))
    .unwrap_err();
    assert_eq!(e.to_string(), "\"Gt\" is not a valid label selector operator");
    let e = LabelSelector::from_label_selector(&json!({"matchExpressions": [
        {"key": "a", "operator": "In", "values": []}]}))
    .unwrap_err();
    assert!(e.to_string().contains("values set can't be empty"), "{e}");
    let e = LabelSelector::from_label_selector(&json!({"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}))
    .unwrap_err();
    assert!(e.to_string().contains("values set must be empty"), "{e}");
}

#[test]
fn given_object_when_matching_label_selector_then_reads_metadata_labels() {
    let s = LabelSelector::parse("app=web").unwrap();
    assert!(s.matches_object(&object(json!({"app": "web"}))));
    assert!(!s.matches_object(&json!({"metadata": {"name": "no-labels"}})));
}

#[test]
fn given_does_not_exist_when_parsed_then_matches_only_objects_without_the_key() {
    let s = LabelSelector::parse("!legacy").unwrap();
    assert_eq!(s.requirements()[0].operator(), Operator::DoesNotExist);
    assert_eq!(s.to_string(), "!legacy");
    assert!(s.matches(None));
    assert!(s.matches_map(&typed(json!({"app": "x"}))));
    assert!(!s.matches_map(&typed(json!({"legacy": ""}))));
    assert!(!s.matches(Some(&labels(json!({"legacy": "1"})))));
}

#[test]
fn given_in_with_two_values_when_matching_then_either_value_matches_and_missing_key_does_not() {
    let s = LabelSelector::parse("tier in (b,a)").unwrap();
    assert_eq!(s.to_string(), "tier in (a,b)");
    assert!(s.matches_map(&typed(json!({"tier": "a"}))));
    assert!(s.matches_map(&typed(json!({"tier": "b"}))));
    assert!(!s.matches_map(&typed(json!({"tier": "c"}))));
    assert!(!s.matches_map(&BTreeMap::new()));
}

#[test]
fn given_notin_with_empty_parens_when_matching_then_only_the_empty_value_is_excluded() {
    // `()` is the set {""} (apimachinery), so `notin ()` keeps every object whose label is not empty.
    let s = LabelSelector::parse("env notin ()").unwrap();
    assert_eq!(s.to_string(), "env notin ()");
    assert_eq!(s.requirements()[0].values().collect::<Vec<_>>(), vec![""]);
    assert!(s.matches(None));
    assert!(s.matches_map(&typed(json!({"env": "prod"}))));
    assert!(!s.matches_map(&typed(json!({"env": ""}))));
}

#[test]
fn given_non_string_label_value_when_matching_json_labels_then_it_counts_as_absent() {
    let l = labels(json!({"replicas": 3}));
    assert!(!LabelSelector::parse("replicas").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("!replicas").unwrap().matches(Some(&l)));
}

#[test]
fn given_typed_selector_when_converted_then_same_as_json_form() {
    let v = web_selector();
    let typed_sel = LabelSelector::from_k8s(&k8s(v.clone())).unwrap();
    assert_eq!(typed_sel, LabelSelector::from_label_selector(&v).unwrap());
    assert!(typed_sel.matches_map(&typed(json!({"app": "web", "tier": "edge", "team": "a"}))));
    assert!(!typed_sel.matches_map(&typed(json!({"app": "web", "tier": "edge"}))));
    assert!(
        LabelSelector::from_k8s(&metav1::LabelSelector::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn given_invalid_typed_selector_when_converted_then_error_names_the_problem() {
    let e = LabelSelector::from_k8s(&k8s(json!({"matchExpressions": [
        {"key": "a", "operator": "Maybe"}]})))
    .unwrap_err();
    assert_eq!(
        e,
        Error::Object("\"Maybe\" is not a valid label selector operator".into())
    );
    let e = LabelSelector::from_k8s(&k8s(json!({"matchExpressions": [
        {"key": "a", "operator": "NotIn", "values": []}]})))
    .unwrap_err();
    assert!(e.to_string().contains("values set can't be empty"), "{e}");
    let e = LabelSelector::from_k8s(&k8s(json!({"matchLabels": {"bad key": "v"}}))).unwrap_err();
    assert!(
        e.to_string().starts_with("key: Invalid value: \"bad key\""),
        "{e}"
    );
}

#[test]
fn given_selector_when_rendered_then_query_syntax_matches_kubernetes() {
    let sel = k8s(json!({
        "matchLabels": {"app": "db"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                             {"key": "legacy", "operator": "DoesNotExist"}]
    }));
    assert_eq!(query(&sel), "app=db,tier in (a,b),!legacy");
    assert_eq!(query(&metav1::LabelSelector::default()), "");
}

#[test]
fn given_rendered_query_when_parsed_back_then_same_selector_as_the_typed_one() {
    let sel = k8s(json!({
        "matchLabels": {"z": "1", "app": "db"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a", "b"]},
                             {"key": "team", "operator": "Exists"},
                             {"key": "legacy", "operator": "DoesNotExist"}]
    }));
    assert_eq!(
        LabelSelector::parse(&query(&sel)).unwrap(),
        LabelSelector::from_k8s(&sel).unwrap()
    );
}
