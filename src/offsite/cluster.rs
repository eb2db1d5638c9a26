//! [`MoverCluster`] against a real API server: dynamic objects for the snapshot kinds, typed Jobs,
//! claims and pods, `await_condition` for the Job's end and `pods/log` for its summary.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, LogParams, PostParams, PropagationPolicy};
use kube::discovery::ApiResource;
use kube::runtime::wait::await_condition;

use super::objects::{CONTAINER, MOVER_JOB_LABEL, TempKind, TempObject};
use super::{Error, JobEnd, MoverCluster, Result};

/// Lines of a failed mover's log kept for the error.
const LOG_TAIL_LINES: i64 = 20;

/// The cluster of the run.
#[derive(Clone)]
pub struct KubeMoverCluster {
    client: kube::Client,
}

impl KubeMoverCluster {
    /// Talk to the cluster through `client`.
    pub fn new(client: kube::Client) -> Self {
        KubeMoverCluster { client }
    }

    fn resource(kind: TempKind) -> ApiResource {
        let (group, version, plural) = match kind {
            TempKind::Content => ("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents"),
            TempKind::Snapshot => ("snapshot.storage.k8s.io", "v1", "volumesnapshots"),
            TempKind::Claim => ("", "v1", "persistentvolumeclaims"),
            TempKind::Secret => ("", "v1", "secrets"),
            TempKind::Job => ("batch", "v1", "jobs"),
        };
        ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.kind().to_string(),
            plural: plural.to_string(),
        }
    }

    fn api(&self, kind: TempKind, namespace: &str) -> Api<DynamicObject> {
        let resource = Self::resource(kind);
        match kind {
            TempKind::Content => Api::all_with(self.client.clone(), &resource),
            _ => Api::namespaced_with(self.client.clone(), namespace, &resource),
        }
    }

    /// The newest pod of the Job, its termination message, else its log's tail.
    async fn output(&self, namespace: &str, job: &str) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("{MOVER_JOB_LABEL}={job}")))
            .await
            .ok()?;
        let pod = list
            .items
            .into_iter()
            .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))?;
        let message = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
            .filter(|m| !m.trim().is_empty());
        if message
            .as_deref()
            .is_some_and(|m| super::MoverSummary::find(m).is_some())
        {
            return message;
        }
        let name = pod.metadata.name?;
        let params = LogParams {
            container: Some(CONTAINER.to_string()),
            tail_lines: Some(LOG_TAIL_LINES),
            ..LogParams::default()
        };
        match pods.logs(&name, &params).await {
            Ok(log) if !log.trim().is_empty() => Some(log),
            _ => message,
        }
    }
}

fn kube_error(verb: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube {
        verb,
        what,
        source: Box::new(source),
    }
}

/// `Complete` or `Failed` with status `True`: (succeeded, reason).
fn job_end(job: &Job) -> Option<(bool, Option<String>)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some((true, None)),
            "Failed" => Some((
                false,
                Some(
                    [c.reason.as_deref(), c.message.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": "),
                )
                .filter(|s| !s.is_empty()),
            )),
            _ => None,
        })
}

#[async_trait::async_trait]
impl MoverCluster for KubeMoverCluster {
    async fn storage_class(&self, namespace: &str, claim: &str) -> Result<Option<String>> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let pvc = api
            .get_opt(claim)
            .await
            .map_err(kube_error("get", format!("claim {namespace}/{claim}")))?;
        Ok(pvc.and_then(|p| p.spec).and_then(|s| s.storage_class_name))
    }

    async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, Vec<u8>>>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(kube_error("get", format!("Secret {namespace}/{name}")))?;
        Ok(secret.map(|s| {
            let mut data: std::collections::BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        }))
    }

    async fn create(&self, object: &TempObject) -> Result<String> {
        let api = self.api(object.kind, object.namespace.as_deref().unwrap_or_default());
        let body: DynamicObject = serde_json::from_value(object.body.clone())
            .expect("temporary objects are built as valid objects");
        let created = api
            .create(&PostParams::default(), &body)
            .await
            .map_err(kube_error(
                "create",
                format!("{} {}", object.kind.kind(), object.name),
            ))?;
        Ok(created.metadata.uid.unwrap_or_default())
    }

    async fn wait_job(&self, namespace: &str, name: &str, limit: Duration) -> Result<JobEnd> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let ended = |job: Option<&Job>| job.and_then(job_end).is_some();
        let job = match tokio::time::timeout(limit, await_condition(api, name, ended)).await {
            Err(_) => {
                return Err(Error::Timeout {
                    job: name.to_string(),
                    limit,
                });
            }
            Ok(Err(e)) => {
                return Err(Error::Kube {
                    verb: "watch",
                    what: format!("Job {namespace}/{name}"),
                    source: Box::new(kube::Error::Service(Box::new(e))),
                });
            }
            Ok(Ok(job)) => job,
        };
        let (succeeded, reason) = job.as_ref().and_then(job_end).unwrap_or((false, None));
        Ok(JobEnd {
            succeeded,
            reason,
            output: self.output(namespace, name).await,
        })
    }

    async fn delete_labelled(&self, namespace: &str, selector: &str) -> Result<usize> {
        let list = ListParams::default().labels(selector);
        let delete = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let mut deleted = 0;
        let mut first_error = None;
        for kind in TempKind::ALL.into_iter().rev() {
            let api = self.api(kind, namespace);
            let items = match api.list(&list).await {
                Ok(l) => l.items,
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => {
                    first_error.get_or_insert(kube_error("list", kind.kind())(e));
                    continue;
                }
            };
            for item in items {
                let name = item.metadata.name.unwrap_or_default();
                match api.delete(&name, &delete).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        first_error.get_or_insert(kube_error("delete", format!("{} {name}", kind.kind()))(e));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn given_job_conditions_when_reading_the_end_then_complete_and_failed_with_reason_are_told_apart() {
        assert_eq!(job_end(&job(serde_json::json!([]))), None);
        assert_eq!(
            job_end(&job(serde_json::json!([{"type": "Complete", "status": "True"}]))),
            Some((true, None))
        );
        assert_eq!(
            job_end(&job(serde_json::json!([{"type": "Failed", "status": "True",
                "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]))),
            Some((
                false,
                Some("DeadlineExceeded: Job was active longer than specified deadline".into())
            ))
        );
        assert_eq!(
            job_end(&job(serde_json::json!([{"type": "Failed", "status": "False"}]))),
            None
        );
    }
}
