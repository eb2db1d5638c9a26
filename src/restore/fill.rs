//! Claims filled from the storage's repository ([`Claim::FromRepository`]): after the claims are
//! created and before any workload that mounts them, each is filled by a restore mover (a Job of
//! freezeframe's own image running `freezeframe mover restore` with the claim mounted). How the movers
//! run is behind the narrow [`Fill`] seam; this module decides which claims to fill and records what
//! happened in the report.

use serde::Serialize;

use super::apply::Report;
use super::plan::{Claim, Step};

/// One claim to fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillRequest {
    /// Namespace of the restored claim.
    pub namespace: String,
    /// The restored claim.
    pub claim: String,
    /// The repository snapshot holding its files.
    pub snapshot_id: String,
}

/// What a restore mover wrote into a claim.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filled {
    /// Files restored.
    pub files: u64,
    /// Bytes restored.
    pub bytes: u64,
    /// Seconds the mover took.
    pub duration_seconds: f64,
}

/// One claim's line in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilledClaim {
    /// `namespace/claim`.
    pub claim: String,
    /// The repository snapshot.
    pub snapshot_id: String,
    /// What the mover wrote; `None` when it failed (the report's failures say why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled: Option<Filled>,
}

/// Runs restore movers: one narrow seam over the cluster.
#[async_trait::async_trait]
pub trait Fill: Send + Sync {
    /// Fill every claim of `requests` (in any order, some at once); one result per request, in order.
    async fn fill(&self, requests: &[FillRequest]) -> Vec<Result<Filled, String>>;
}

/// The claims of `steps` (created by this restore) whose data comes from the repository.
pub fn requests<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Vec<(&'a Step, FillRequest)> {
    steps
        .into_iter()
        .filter_map(|step| match (&step.claim, &step.namespace) {
            (Claim::FromRepository(id), Some(namespace)) => Some((
                step,
                FillRequest {
                    namespace: namespace.clone(),
                    claim: step.name.clone(),
                    snapshot_id: id.clone(),
                },
            )),
            _ => None,
        })
        .collect()
}

/// Fill the claims `created` (steps this restore just created) through `fill`, recording each outcome;
/// without a `fill` each is a failure that says what is missing.
pub async fn fill_created(fill: Option<&dyn Fill>, created: &[&Step], report: &mut Report) {
    let pending = requests(created.iter().copied());
    if pending.is_empty() {
        return;
    }
    let results = match fill {
        Some(fill) => {
            let asked: Vec<FillRequest> = pending.iter().map(|(_, r)| r.clone()).collect();
            tracing::info!(
                claims = asked.len(),
                "restore: filling claims from the repository"
            );
            fill.fill(&asked).await
        }
        None => pending
            .iter()
            .map(|_| {
                Err(
                    "its data is in the repository, but this restore has no repository access: give \
                     --policy (the storage's repository.passwordSecret) and run where freezeframe's \
                     namespace is known (FREEZEFRAME_NAMESPACE)"
                        .to_string(),
                )
            })
            .collect(),
    };
    for ((step, request), result) in pending.into_iter().zip(results) {
        let filled = match result {
            Ok(filled) => Some(filled),
            Err(message) => {
                report.fail(
                    step,
                    format!(
                        "filling the claim from repository snapshot {} failed: {message}",
                        request.snapshot_id
                    ),
                );
                None
            }
        };
        report.volumes.push(FilledClaim {
            claim: format!("{}/{}", request.namespace, request.claim),
            snapshot_id: request.snapshot_id,
            filled,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::restore::plan::{Action, Phase, Recorded};

    fn step(name: &str, claim: Claim) -> Step {
        Step {
            phase: Phase::Claims,
            kind: "persistentvolumeclaims".into(),
            path: format!("resources/core/v1/persistentvolumeclaims/shop/{name}.yaml"),
            resource: kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(
                &(),
            ),
            source_namespace: Some("shop".into()),
            namespace: Some("shop-dr".into()),
            name: name.into(),
            action: Action::Create,
            claim,
            volume: None,
            recorded: Recorded::default(),
        }
    }

    fn report() -> Report {
        Report {
            policy: "shop".into(),
            backup_id: "20261204T000000Z".into(),
            source_cluster: String::new(),
            dry_run: false,
            kinds: Default::default(),
            failures: Vec::new(),
            dumps: Vec::new(),
            volumes: Vec::new(),
        }
    }

    #[derive(Default)]
    struct Movers {
        asked: Mutex<Vec<FillRequest>>,
    }

    #[async_trait::async_trait]
    impl Fill for Movers {
        async fn fill(&self, requests: &[FillRequest]) -> Vec<Result<Filled, String>> {
            self.asked.lock().unwrap().extend(requests.iter().cloned());
            requests
                .iter()
                .map(|r| match r.claim.as_str() {
                    "bad" => Err("BackoffLimitExceeded".to_string()),
                    _ => Ok(Filled {
                        files: 3,
                        bytes: 42,
                        duration_seconds: 0.5,
                    }),
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn given_repository_claims_when_filled_then_only_they_are_asked_for_and_a_failure_names_the_claim()
    {
        let steps = [
            step("data", Claim::FromRepository("aaaa".into())),
            step("cache", Claim::Reprovision),
            step("bad", Claim::FromRepository("bbbb".into())),
        ];
        let created: Vec<&Step> = steps.iter().collect();
        let movers = Movers::default();
        let mut report = report();

        fill_created(Some(&movers), &created, &mut report).await;

        let asked = movers.asked.lock().unwrap().clone();
        assert_eq!(
            asked.iter().map(|r| r.claim.as_str()).collect::<Vec<_>>(),
            ["data", "bad"]
        );
        assert_eq!(asked[0].namespace, "shop-dr");
        assert_eq!(report.volumes.len(), 2);
        assert_eq!(report.volumes[0].filled.as_ref().unwrap().bytes, 42);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].object, "shop-dr/bad");
        assert!(
            report.failures[0].message.contains("bbbb")
                && report.failures[0].message.contains("BackoffLimitExceeded"),
            "{:?}",
            report.failures
        );
    }

    #[tokio::test]
    async fn given_no_repository_access_when_filling_then_each_claim_fails_saying_what_to_give() {
        let steps = [step("data", Claim::FromRepository("aaaa".into()))];
        let created: Vec<&Step> = steps.iter().collect();
        let mut report = report();

        fill_created(None, &created, &mut report).await;

        assert_eq!(report.failures.len(), 1);
        assert!(
            report.failures[0].message.contains("--policy"),
            "{:?}",
            report.failures
        );
    }
}
