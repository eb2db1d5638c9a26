//! Claims whose own volume is still in the target: re-bind a `Released` volume with reclaim policy
//! `Retain` instead of provisioning a new one, and never point a claim at a volume it cannot get.
//!
//! After the plan is made from the backup, [`refine`] looks (read-only, so also on a dry run) at the
//! volume each restored claim was bound to in the backup (`spec.volumeName`), when the claim does not
//! exist in the target:
//!
//! - **Re-bind** ([`Claim::Rebind`]) when all of these hold: the target is the cluster the backup came
//!   from (its `kube-system` uid is the manifest's); the claim lands in the namespace and under the name
//!   it had; the volume is not being deleted, is not `Failed`, has reclaim policy `Retain`, and its
//!   `claimRef` is empty or names that same claim. Such a volume holds the claim's most recent data (newer
//!   than any snapshot), so it wins over restoring from a snapshot. Apply ([`bind`]) then rewrites the
//!   volume's `claimRef` to the restored claim (namespace and name, no uid, no resourceVersion; with
//!   the volume's resourceVersion as precondition) and creates the claim with `volumeName` set; the PV
//!   controller binds them.
//! - Otherwise the plan's choice stands (snapshot, static volume restored, or a new volume) — except a
//!   claim planned to keep its static volume ([`Claim::Keep`]) whose volume exists but is not free for
//!   it (bound to another claim, another cluster's volume of the same name): it gets a new volume
//!   ([`Claim::Reprovision`]), as it would otherwise stay Pending forever.
//!
//! A volume bound to another claim is never touched.
//!
//! RBAC: `get` on namespaces (`kube-system`), persistentvolumes and persistentvolumeclaims; `patch` on
//! persistentvolumes (only to re-bind).

use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::apply::Target;
use super::plan::{Action, Claim, Plan, Step, VolumesFrom, choose};

/// Core v1 `kind`/`plural`.
fn core(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// PersistentVolumes.
pub fn volumes() -> ApiResource {
    core("PersistentVolume", "persistentvolumes")
}

/// Why `volume` cannot be re-bound to claim `namespace/name`, or `None` when it can. Pure.
pub fn refusal(volume: &Value, namespace: &str, name: &str) -> Option<String> {
    let claim_ref = &volume["spec"]["claimRef"];
    let phase = volume["status"]["phase"].as_str().unwrap_or_default();
    let policy = volume["spec"]["persistentVolumeReclaimPolicy"]
        .as_str()
        .unwrap_or_default();
    if volume["metadata"].get("deletionTimestamp").is_some() {
        Some("it is being deleted".into())
    } else if phase == "Failed" {
        Some("it is Failed".into())
    } else if policy != "Retain" {
        Some(format!("its reclaim policy is {policy}, not Retain"))
    } else if !claim_ref.is_null()
        && (claim_ref["namespace"].as_str() != Some(namespace) || claim_ref["name"].as_str() != Some(name))
    {
        Some(format!(
            "it is claimed by {}/{}",
            claim_ref["namespace"].as_str().unwrap_or_default(),
            claim_ref["name"].as_str().unwrap_or_default()
        ))
    } else {
        None
    }
}

/// Whether a claim planned to keep its static volume can get `volume` (free, or pre-bound to it). Pure.
fn free_for(volume: &Value, namespace: &str, name: &str) -> bool {
    let claim_ref = &volume["spec"]["claimRef"];
    claim_ref.is_null()
        || (claim_ref["namespace"].as_str() == Some(namespace)
            && claim_ref["name"].as_str() == Some(name)
            && claim_ref["uid"].as_str().is_none_or(str::is_empty))
}

fn candidates(plan: &Plan) -> impl Iterator<Item = usize> + '_ {
    plan.steps.iter().enumerate().filter_map(|(i, s)| {
        (s.kind == "persistentvolumeclaims" && s.action == Action::Create && s.volume.is_some()).then_some(i)
    })
}

/// Whether the target is the cluster the backup came from (`source_cluster`: its `kube-system` uid).
async fn is_source_cluster(target: &dyn Target, source_cluster: &str) -> bool {
    match target
        .get(&core("Namespace", "namespaces"), None, "kube-system")
        .await
    {
        Ok(Some(ns)) => !source_cluster.is_empty() && ns["metadata"]["uid"] == source_cluster,
        _ => false,
    }
}

/// Choose each restored claim's source by `from` now that the target is known ([`choose`]), then
/// switch claims to [`Claim::Rebind`] (only with [`VolumesFrom::Auto`]) or away from an unavailable
/// static volume by what the target holds. `source_cluster` is the backup's `kube-system` uid. Reads
/// only; lookups that fail leave the plan's choice.
pub async fn refine(target: &dyn Target, source_cluster: &str, from: VolumesFrom, plan: &mut Plan) {
    let claims: Vec<usize> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == "persistentvolumeclaims" && s.action == Action::Create)
        .map(|(i, _)| i)
        .collect();
    if claims.is_empty() {
        return;
    }
    let same_cluster = is_source_cluster(target, source_cluster).await;
    for i in claims {
        let step = &mut plan.steps[i];
        step.claim = choose(&step.recorded, same_cluster, from);
    }
    let indices: Vec<usize> = candidates(plan).collect();
    for i in indices {
        let step = &plan.steps[i];
        let (Some(volume_name), Some(namespace)) = (step.volume.clone(), step.namespace.clone()) else {
            continue;
        };
        let claims = step.resource.clone();
        if !matches!(target.get(&claims, Some(&namespace), &step.name).await, Ok(None)) {
            continue; // exists (handled per --existing) or unknown
        }
        let Ok(Some(volume)) = target.get(&volumes(), None, &volume_name).await else {
            continue;
        };
        let same_place = step.source_namespace.as_deref() == Some(namespace.as_str());
        let step = &mut plan.steps[i];
        match refusal(&volume, &namespace, &step.name) {
            None if same_cluster && same_place && from == VolumesFrom::Auto => {
                tracing::info!(claim = %step.display_name(), volume = %volume_name, "restore: re-binding the claim's released volume");
                step.claim = Claim::Rebind(volume_name);
            }
            _ if step.claim == Claim::Keep && !free_for(&volume, &namespace, &step.name) => {
                tracing::warn!(claim = %step.display_name(), volume = %volume_name,
                    "restore: the claim's static volume exists and is not free for it; provisioning a new one");
                step.claim = Claim::Reprovision;
            }
            _ => {}
        }
    }
}

/// Before creating a [`Claim::Rebind`] claim: point its volume's `claimRef` at it (unless the claim
/// already exists). `Err` says why the volume can no longer be used.
pub async fn bind(target: &dyn Target, step: &Step, volume_name: &str) -> Result<(), String> {
    let namespace = step.namespace.as_deref().unwrap_or_default();
    if let Ok(Some(_)) = target.get(&step.resource, Some(namespace), &step.name).await {
        return Ok(()); // the create reports it as existing; the volume is left alone
    }
    let volume = match target.get(&volumes(), None, volume_name).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(format!(
                "volume {volume_name} to re-bind is gone; run the restore again"
            ));
        }
        Err(e) => return Err(format!("reading volume {volume_name}: {e}")),
    };
    if let Some(why) = refusal(&volume, namespace, &step.name) {
        return Err(format!(
            "volume {volume_name} can no longer be re-bound ({why}); run the restore again"
        ));
    }
    let patch = json!({
        "metadata": {"resourceVersion": volume["metadata"]["resourceVersion"]},
        "spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "namespace": namespace, "name": step.name,
                              "uid": null, "resourceVersion": null}}
    });
    target
        .merge_patch(&volumes(), None, volume_name, &patch)
        .await
        .map(|_| ())
        .map_err(|e| format!("re-binding volume {volume_name}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::restore::apply::Created;
    use crate::restore::plan::{Phase, Plan, Recorded};
    use crate::restore::{Existing, volumes::ClaimSource};

    /// Objects by (plural, namespace, name); records merge patches.
    #[derive(Default)]
    struct Fake {
        objects: BTreeMap<(String, String, String), Value>,
        patches: Mutex<Vec<(String, Value)>>,
    }

    impl Fake {
        fn with(mut self, plural: &str, namespace: &str, obj: Value) -> Fake {
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            self.objects.insert((plural.into(), namespace.into(), name), obj);
            self
        }
    }

    #[async_trait::async_trait]
    impl Target for Fake {
        async fn create(&self, _: &ApiResource, _: Option<&str>, _: &Value) -> kube::Result<Created> {
            unreachable!("refine and bind never create")
        }
        async fn apply(&self, _: &ApiResource, _: Option<&str>, _: &str, _: &Value) -> kube::Result<Value> {
            unreachable!("refine and bind never apply")
        }
        async fn merge_patch(
            &self,
            _: &ApiResource,
            _: Option<&str>,
            name: &str,
            patch: &Value,
        ) -> kube::Result<Value> {
            self.patches.lock().unwrap().push((name.into(), patch.clone()));
            Ok(patch.clone())
        }
        async fn get(&self, r: &ApiResource, ns: Option<&str>, name: &str) -> kube::Result<Option<Value>> {
            let key = (r.plural.clone(), ns.unwrap_or_default().into(), name.into());
            Ok(self.objects.get(&key).cloned())
        }
        async fn wait_for(
            &self,
            _: &ApiResource,
            _: Option<&str>,
            _: &str,
            _: for<'v> fn(&'v Value) -> bool,
            _: Duration,
        ) -> kube::Result<bool> {
            unreachable!("refine and bind never wait")
        }
    }

    fn cluster(uid: &str) -> Fake {
        Fake::default().with(
            "namespaces",
            "",
            json!({"metadata": {"name": "kube-system", "uid": uid}}),
        )
    }

    fn claim_step(from: &str, to: &str, claim: Claim) -> Step {
        Step {
            phase: Phase::Claims,
            kind: "persistentvolumeclaims".into(),
            path: format!("resources/core/v1/persistentvolumeclaims/{from}/data.yaml"),
            resource: core("PersistentVolumeClaim", "persistentvolumeclaims"),
            source_namespace: Some(from.into()),
            namespace: Some(to.into()),
            name: "data".into(),
            action: Action::Create,
            recorded: Recorded {
                snapshot: match &claim {
                    Claim::FromSnapshot(source) => Some(source.clone()),
                    _ => None,
                },
                repository: None,
                without: match &claim {
                    Claim::Keep => Claim::Keep,
                    _ => Claim::Reprovision,
                },
            },
            claim,
            volume: Some("pv-1".into()),
        }
    }

    fn plan_of(step: Step) -> Plan {
        Plan {
            steps: vec![step],
            namespaces: BTreeMap::new(),
            existing: Existing::Skip,
        }
    }

    fn snapshot() -> Claim {
        Claim::FromSnapshot(ClaimSource {
            volume_snapshot: "snap".into(),
            provision: vec![],
        })
    }

    fn released() -> Value {
        volume(
            "Released",
            "Retain",
            json!({"namespace": "shop", "name": "data", "uid": "old"}),
        )
    }

    #[tokio::test]
    async fn given_released_volume_in_the_source_cluster_when_refined_then_it_wins_over_the_snapshot() {
        let target = cluster("src").with("persistentvolumes", "", released());
        let mut plan = plan_of(claim_step("shop", "shop", snapshot()));

        refine(&target, "src", VolumesFrom::Auto, &mut plan).await;

        assert_eq!(plan.steps[0].claim, Claim::Rebind("pv-1".into()));
    }

    #[tokio::test]
    async fn given_other_cluster_mapped_namespace_or_existing_claim_when_refined_then_the_snapshot_stays() {
        for (target, to) in [
            (cluster("dr").with("persistentvolumes", "", released()), "shop"),
            (
                cluster("src").with("persistentvolumes", "", released()),
                "shop-copy",
            ),
            (
                cluster("src").with("persistentvolumes", "", released()).with(
                    "persistentvolumeclaims",
                    "shop",
                    json!({"metadata": {"name": "data"}}),
                ),
                "shop",
            ),
        ] {
            let mut plan = plan_of(claim_step("shop", to, snapshot()));
            refine(&target, "src", VolumesFrom::Auto, &mut plan).await;
            assert_eq!(plan.steps[0].claim, snapshot(), "into {to}");
        }
    }

    #[tokio::test]
    async fn given_static_volume_bound_to_another_claim_when_refined_then_the_claim_gets_a_new_volume() {
        let bound = volume(
            "Bound",
            "Retain",
            json!({"namespace": "shop", "name": "data", "uid": "live"}),
        );
        let target = cluster("src").with("persistentvolumes", "", bound);
        let mut plan = plan_of(claim_step("shop", "shop-copy", Claim::Keep));

        refine(&target, "src", VolumesFrom::Auto, &mut plan).await;

        assert_eq!(plan.steps[0].claim, Claim::Reprovision);
        assert!(target.patches.lock().unwrap().is_empty(), "never touched");
    }

    #[tokio::test]
    async fn given_rebind_when_bound_then_claim_ref_is_rewritten_with_the_volume_version_as_precondition() {
        let target = cluster("src").with("persistentvolumes", "", released());
        let step = claim_step("shop", "shop", Claim::Rebind("pv-1".into()));

        bind(&target, &step, "pv-1").await.unwrap();

        let patches = target.patches.lock().unwrap();
        let [(name, patch)] = &patches[..] else {
            panic!("{patches:?}")
        };
        assert_eq!(name, "pv-1");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let claim_ref = &patch["spec"]["claimRef"];
        assert_eq!(
            (&claim_ref["namespace"], &claim_ref["name"]),
            (&json!("shop"), &json!("data"))
        );
        assert!(
            claim_ref["uid"].is_null() && claim_ref.get("uid").is_some(),
            "uid removed"
        );
    }

    #[tokio::test]
    async fn given_volume_taken_since_planning_when_bound_then_refused_and_untouched() {
        let taken = volume(
            "Bound",
            "Retain",
            json!({"namespace": "other", "name": "x", "uid": "u"}),
        );
        let target = cluster("src").with("persistentvolumes", "", taken);
        let step = claim_step("shop", "shop", Claim::Rebind("pv-1".into()));

        let err = bind(&target, &step, "pv-1").await.unwrap_err();

        assert!(err.contains("claimed by other/x"), "{err}");
        assert!(target.patches.lock().unwrap().is_empty());
    }

    fn volume(phase: &str, policy: &str, claim_ref: Value) -> Value {
        json!({"metadata": {"name": "pv-1", "resourceVersion": "7"},
               "spec": {"persistentVolumeReclaimPolicy": policy, "claimRef": claim_ref},
               "status": {"phase": phase}})
    }

    #[test]
    fn given_released_retained_volume_of_the_same_claim_then_it_can_be_re_bound() {
        let released = volume(
            "Released",
            "Retain",
            json!({"namespace": "shop", "name": "data", "uid": "old"}),
        );
        assert_eq!(refusal(&released, "shop", "data"), None);
        assert_eq!(
            refusal(&volume("Available", "Retain", Value::Null), "shop", "data"),
            None
        );
    }

    #[test]
    fn given_volume_of_another_claim_deleting_failed_or_deleted_on_release_then_it_is_refused() {
        let other = volume(
            "Bound",
            "Retain",
            json!({"namespace": "shop", "name": "other", "uid": "u"}),
        );
        assert!(
            refusal(&other, "shop", "data")
                .unwrap()
                .contains("claimed by shop/other")
        );
        let elsewhere = volume(
            "Released",
            "Retain",
            json!({"namespace": "shop-copy", "name": "data", "uid": "u"}),
        );
        assert!(refusal(&elsewhere, "shop", "data").is_some());
        let delete = volume("Released", "Delete", json!({"namespace": "shop", "name": "data"}));
        assert!(refusal(&delete, "shop", "data").unwrap().contains("Delete"));
        let failed = volume("Failed", "Retain", json!({"namespace": "shop", "name": "data"}));
        assert!(refusal(&failed, "shop", "data").is_some());
        let mut deleting = volume("Released", "Retain", json!({"namespace": "shop", "name": "data"}));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(refusal(&deleting, "shop", "data").is_some());
    }

    #[test]
    fn given_static_volume_then_it_is_free_only_when_unclaimed_or_pre_bound_to_the_claim() {
        assert!(free_for(&volume("Available", "Retain", Value::Null), "b", "data"));
        assert!(free_for(
            &volume("Available", "Retain", json!({"namespace": "b", "name": "data"})),
            "b",
            "data"
        ));
        assert!(!free_for(
            &volume(
                "Bound",
                "Retain",
                json!({"namespace": "shop", "name": "data", "uid": "u"})
            ),
            "b",
            "data"
        ));
        assert!(!free_for(
            &volume(
                "Released",
                "Retain",
                json!({"namespace": "b", "name": "data", "uid": "old"})
            ),
            "b",
            "data"
        ));
    }

    #[tokio::test]
    async fn given_a_repository_copy_when_restored_into_another_cluster_then_it_wins_over_the_snapshot() {
        let mut step = claim_step("shop", "shop", snapshot());
        step.recorded.repository = Some("0123abcdef".into());
        let mut elsewhere = plan_of(step.clone());
        let mut home = plan_of(step.clone());
        let mut forced = plan_of(step);

        refine(&cluster("dr"), "src", VolumesFrom::Auto, &mut elsewhere).await;
        refine(&cluster("src"), "src", VolumesFrom::Auto, &mut home).await;
        refine(&cluster("src"), "src", VolumesFrom::Repository, &mut forced).await;

        assert_eq!(
            elsewhere.steps[0].claim,
            Claim::FromRepository("0123abcdef".into())
        );
        assert_eq!(home.steps[0].claim, snapshot());
        assert_eq!(forced.steps[0].claim, Claim::FromRepository("0123abcdef".into()));
    }

    #[tokio::test]
    async fn given_volumes_from_snapshot_or_repository_when_refined_then_a_released_volume_is_not_re_bound() {
        for from in [VolumesFrom::Snapshot, VolumesFrom::Repository] {
            let target = cluster("src").with("persistentvolumes", "", released());
            let mut plan = plan_of(claim_step("shop", "shop", snapshot()));

            refine(&target, "src", from, &mut plan).await;

            let expected = if from == VolumesFrom::Snapshot {
                snapshot()
            } else {
                Claim::Reprovision
            };
            assert_eq!(plan.steps[0].claim, expected, "{from:?}");
        }
    }
}
