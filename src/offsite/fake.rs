//! An in-memory [`MoverCluster`] for unit tests: records every object, ends Jobs as scripted, and
//! deletes by label selector the way the API server does (equality, inequality and existence terms).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::objects::{MOVER_JOB_LABEL, TempObject};
use super::{Error, JobEnd, MoverCluster, Result};

/// How a scripted Job ends.
#[derive(Debug, Clone)]
pub enum Script {
    /// Completes with this output.
    Complete(String),
    /// Fails with this reason and output.
    Fail(String, String),
    /// Never ends (the run must give up or be cancelled).
    Hang,
}

/// The fake cluster.
#[derive(Default)]
pub struct FakeCluster {
    /// Live objects by (kind, name).
    pub live: Mutex<BTreeMap<(String, String), TempObject>>,
    /// Every object ever created, in order.
    pub created: Mutex<Vec<TempObject>>,
    /// How each Job ends, by the claim in its `--tag pvc=` (default: completes with a summary).
    pub scripts: BTreeMap<String, Script>,
    /// Jobs running now and the most at once.
    pub running: Mutex<(usize, usize)>,
    /// Objects left by an earlier, crashed run.
    pub leftovers: Vec<TempObject>,
    /// `create <Kind> <name>` and `end <job>`, in order.
    pub events: Mutex<Vec<String>>,
    /// Secrets of freezeframe's namespace, by name.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl FakeCluster {
    /// With objects left by a crashed run.
    pub fn with_leftovers(leftovers: Vec<TempObject>) -> Self {
        let fake = FakeCluster {
            leftovers,
            ..FakeCluster::default()
        };
        for o in &fake.leftovers {
            fake.live
                .lock()
                .unwrap()
                .insert((o.kind.kind().to_string(), o.name.clone()), o.clone());
        }
        fake
    }

    fn pvc_of(&self, job: &str) -> String {
        let created = self.created.lock().unwrap();
        let job = created
            .iter()
            .find(|o| o.name == job && o.kind == super::TempKind::Job)
            .expect("job created before waited on");
        let args = job.body["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        let tagged = args
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix("pvc="))
            .next();
        // A restore mover has no tags: its claim is the one it mounts.
        tagged
            .or_else(|| {
                job.body["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
                    .as_str()
            })
            .unwrap()
            .to_string()
    }
}

/// Whether `labels` match a selector of `k=v`, `k!=v` and `k` terms.
fn matches(labels: &serde_json::Value, selector: &str) -> bool {
    selector.split(',').all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v)
        } else {
            labels.get(term).is_some()
        }
    })
}

#[async_trait::async_trait]
impl MoverCluster for FakeCluster {
    async fn storage_class(&self, _namespace: &str, _claim: &str) -> Result<Option<String>> {
        Ok(Some("fast".into()))
    }

    async fn secret_data(&self, _namespace: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        Ok(self.secrets.get(name).cloned())
    }

    async fn create(&self, object: &TempObject) -> Result<String> {
        self.created.lock().unwrap().push(object.clone());
        self.events
            .lock()
            .unwrap()
            .push(format!("create {} {}", object.kind.kind(), object.name));
        self.live.lock().unwrap().insert(
            (object.kind.kind().to_string(), object.name.clone()),
            object.clone(),
        );
        Ok(format!("uid-{}-{}", object.kind.kind(), object.name))
    }

    async fn wait_job(&self, _namespace: &str, name: &str, limit: Duration) -> Result<JobEnd> {
        {
            let mut r = self.running.lock().unwrap();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        let pvc = self.pvc_of(name);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let end = match self.scripts.get(&pvc) {
            None => Ok(JobEnd {
                succeeded: true,
                reason: None,
                output: Some(format!(
                    "progress\n{{\"snapshotId\":\"snap-{pvc}\",\"files\":3,\"dirs\":2,\"bytes\":1000,\"bytesNew\":600,\"bytesReused\":400,\"durationSeconds\":1.5}}"
                )),
            }),
            Some(Script::Complete(out)) => Ok(JobEnd {
                succeeded: true,
                reason: None,
                output: Some(out.clone()),
            }),
            Some(Script::Fail(reason, out)) => Ok(JobEnd {
                succeeded: false,
                reason: Some(reason.clone()),
                output: Some(out.clone()),
            }),
            Some(Script::Hang) => {
                tokio::time::sleep(limit).await;
                Err(Error::Timeout {
                    job: name.to_string(),
                    limit,
                })
            }
        };
        self.running.lock().unwrap().0 -= 1;
        self.events.lock().unwrap().push(format!("end {name}"));
        end
    }

    async fn delete_labelled(&self, _namespace: &str, selector: &str) -> Result<usize> {
        let mut live = self.live.lock().unwrap();
        let before = live.len();
        live.retain(|_, o| !matches(&o.body["metadata"]["labels"], selector));
        // Garbage collection: what an object deleted here owned goes with it.
        let uids: Vec<String> = live
            .values()
            .map(|o| format!("uid-{}-{}", o.kind.kind(), o.name))
            .collect();
        live.retain(|_, o| {
            o.body["metadata"]["ownerReferences"]
                .as_array()
                .is_none_or(|refs| refs.iter().any(|r| uids.iter().any(|u| r["uid"] == u.as_str())))
        });
        Ok(before - live.len())
    }
}

#[test]
fn given_selectors_when_matching_then_equality_inequality_and_existence_hold() {
    let labels = serde_json::json!({"a": "1", "b": "2", MOVER_JOB_LABEL: "j"});
    assert!(matches(&labels, "a=1,b!=3,a"));
    assert!(!matches(&labels, "a=1,b!=2"));
    assert!(!matches(&labels, "c"));
}
