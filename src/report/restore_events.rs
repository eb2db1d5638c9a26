//! Kubernetes Events for a finished restore: one per target namespace, on the Namespace, with the
//! summary — `Normal RestoreCompleted`, `Warning RestorePartiallyFailed` or `Warning RestoreFailed`.
//!
//! Events are best effort: one that cannot be created is logged and never changes the outcome. The
//! Event object is built by [`crate::report::events::event`], like a backup's.
//! RBAC: `events` create, `namespaces` get in the target namespaces.

use std::collections::BTreeSet;

use kube::discovery::ApiResource;
use serde_json::Value;

use crate::exit::Outcome;
use crate::report::events::{EventSpec, Involved};
use crate::report::summary::{MESSAGE_BYTES, bounded};
use crate::restore::apply::{Report, Target};
use crate::restore::dumps::ReplayStatus;
use crate::restore::plan::Plan;

/// Core v1 Events.
fn events() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    }
}

fn namespaces() -> ApiResource {
    ApiResource {
        kind: "Namespace".into(),
        plural: "namespaces".into(),
        ..events()
    }
}

/// The Event's `type` and `reason` for a report's outcome.
pub fn reason(report: &Report) -> (&'static str, &'static str) {
    match report.outcome() {
        Outcome::Success => ("Normal", "RestoreCompleted"),
        Outcome::PartiallyFailed => ("Warning", "RestorePartiallyFailed"),
        Outcome::Failed | Outcome::InvalidInput => ("Warning", "RestoreFailed"),
    }
}

/// One line: what was restored, per-object counts, dumps replayed, the first failure.
pub fn summary(report: &Report) -> String {
    let sum = |f: fn(&crate::restore::KindSummary) -> u64| report.kinds.values().map(f).sum::<u64>();
    let mut line = format!(
        "restore of {}/{}: {:?}: {} created, {} updated, {} skipped, {} failed",
        report.policy,
        report.backup_id,
        report.outcome(),
        sum(|k| k.created),
        sum(|k| k.updated),
        sum(|k| k.skipped),
        report.failed(),
    );
    if !report.dumps.is_empty() {
        let ok = report
            .dumps
            .iter()
            .filter(|d| d.status == ReplayStatus::Succeeded)
            .count();
        line.push_str(&format!("; dumps replayed {ok}/{}", report.dumps.len()));
    }
    if let Some(f) = report.failures.first() {
        line.push_str(&format!(
            "; first failure: {} {}: {}",
            f.kind, f.object, f.message
        ));
    }
    bounded(&line, MESSAGE_BYTES)
}

/// The namespaces the plan writes into, sorted.
pub fn target_namespaces(plan: &Plan) -> BTreeSet<String> {
    plan.steps
        .iter()
        .filter(|s| s.is_applied())
        .filter_map(|s| match (&s.namespace, s.kind.as_str()) {
            (Some(ns), _) => Some(ns.clone()),
            (None, "namespaces") => Some(s.name.clone()),
            _ => None,
        })
        .collect()
}

/// The Event for `namespace` (whose uid is `uid`, when known).
pub fn event(
    namespace: &str,
    uid: Option<&str>,
    report: &Report,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let (type_, reason) = reason(report);
    let spec = EventSpec {
        type_,
        reason,
        action: "Restore",
        message: &summary(report),
        generate_name: "freezeframe-restore.",
    };
    crate::report::events::event(&Involved::Namespace(namespace.to_string()), uid, &spec, now)
}

/// Create the restore's Event in every target namespace of `plan`.
pub async fn emit(target: &dyn Target, plan: &Plan, report: &Report) {
    let now = chrono::Utc::now();
    for ns in target_namespaces(plan) {
        let uid = match target.get(&namespaces(), None, &ns).await {
            Ok(Some(obj)) => obj["metadata"]["uid"].as_str().map(str::to_string),
            Ok(None) => {
                tracing::warn!(namespace = %ns, "namespace missing: no restore Event");
                continue;
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "reading the namespace for the restore Event failed");
                None
            }
        };
        let obj = event(&ns, uid.as_deref(), report, now);
        if let Err(e) = target.create(&events(), Some(&ns), &obj).await {
            tracing::warn!(namespace = %ns, error = %e, "creating the restore Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::restore::KindSummary;
    use crate::restore::apply::Failure;
    use serde_json::json;

    fn report(created: u64, failures: usize) -> Report {
        Report {
            policy: "shop".into(),
            backup_id: "20261123T120000Z".into(),
            source_cluster: "uid".into(),
            dry_run: false,
            kinds: BTreeMap::from([(
                "configmaps".to_string(),
                KindSummary {
                    created,
                    failed: failures as u64,
                    ..Default::default()
                },
            )]),
            failures: (0..failures)
                .map(|i| Failure {
                    kind: "configmaps".into(),
                    object: format!("shop/cm-{i}"),
                    message: "é".repeat(700),
                })
                .collect(),
            dumps: Vec::new(),
            volumes: Vec::new(),
        }
    }

    #[test]
    fn given_outcomes_then_normal_completed_or_warning_partially_failed_or_failed() {
        assert_eq!(reason(&report(3, 0)), ("Normal", "RestoreCompleted"));
        assert_eq!(reason(&report(3, 1)), ("Warning", "RestorePartiallyFailed"));
        assert_eq!(reason(&report(0, 2)), ("Warning", "RestoreFailed"));
    }

    #[test]
    fn given_long_failure_then_summary_is_cut_at_1_kib_on_a_char_boundary() {
        let line = summary(&report(3, 1));
        assert!(line.starts_with("restore of shop/20261123T120000Z: PartiallyFailed: 3 created, 0 updated, 0 skipped, 1 failed; first failure: configmaps shop/cm-0: é"), "{line}");
        assert!(
            line.len() <= MESSAGE_BYTES && line.ends_with("..."),
            "{}",
            line.len()
        );
        let event = event("shop", Some("u-1"), &report(3, 0), chrono::Utc::now());
        assert_eq!(
            event["involvedObject"],
            json!({"apiVersion": "v1", "kind": "Namespace", "name": "shop", "uid": "u-1"})
        );
        assert_eq!(event["metadata"]["namespace"], "shop");
    }
}
