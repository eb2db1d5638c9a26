//! In-memory stand-ins for reporting's side effects, for unit tests (here and in other modules that
//! report, such as prune): [`FakeTransport`] records every webhook request and answers from a script,
//! [`FakeCluster`] records Events and Namespace patches and serves Secrets. Also a sample [`manifest`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use super::cluster::Cluster;
use super::events::Involved;
use super::webhook::{Request, Transport};
use crate::backup::{ClusterIdentity, HooksRecord, HooksStatus, Manifest, Status};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`Transport`] answering from a script (then `200`), recording every request.
#[derive(Debug, Default)]
pub struct FakeTransport {
    answers: Mutex<VecDeque<Result<u16, String>>>,
    requests: Mutex<Vec<Request>>,
}

impl FakeTransport {
    /// Answer the next requests with `answers`, one each, then `200`.
    pub fn answering(answers: impl IntoIterator<Item = Result<u16, String>>) -> FakeTransport {
        FakeTransport {
            answers: Mutex::new(answers.into_iter().collect()),
            requests: Mutex::default(),
        }
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.requests).clone()
    }

    /// The `X-Freezeframe-Event` of every request with its URL, oldest first.
    pub fn events(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .map(|r| {
                let event = r
                    .headers
                    .iter()
                    .find(|(n, _)| *n == "X-Freezeframe-Event")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (r.url.clone(), event)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Transport for FakeTransport {
    async fn post(&self, request: &Request) -> Result<u16, String> {
        lock(&self.requests).push(request.clone());
        lock(&self.answers).pop_front().unwrap_or(Ok(200))
    }
}

/// A [`Cluster`] whose namespaces all exist (uid `uid-<name>`), with the Secrets given.
#[derive(Debug, Default)]
pub struct FakeCluster {
    /// `(namespace, name)` → data.
    pub secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    events: Mutex<Vec<Value>>,
    patches: Mutex<Vec<(String, Value)>>,
}

impl FakeCluster {
    /// A cluster holding one Secret with one key.
    pub fn with_secret(namespace: &str, name: &str, key: &str, value: &[u8]) -> FakeCluster {
        FakeCluster {
            secrets: BTreeMap::from([(
                (namespace.to_string(), name.to_string()),
                BTreeMap::from([(key.to_string(), value.to_vec())]),
            )]),
            ..FakeCluster::default()
        }
    }

    /// Every Event created, oldest first.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.events).clone()
    }

    /// Every Namespace patch `(name, patch)`, oldest first.
    pub fn patches(&self) -> Vec<(String, Value)> {
        lock(&self.patches).clone()
    }
}

#[async_trait::async_trait]
impl Cluster for FakeCluster {
    async fn identity(&self) -> kube::Result<ClusterIdentity> {
        Ok(ClusterIdentity {
            kube_system_uid: "ks-uid".into(),
        })
    }

    async fn uid(&self, object: &Involved) -> kube::Result<Option<String>> {
        Ok(Some(match object {
            Involved::Namespace(n) => format!("uid-{n}"),
            Involved::ConfigMap { name, .. } => format!("uid-{name}"),
        }))
    }

    async fn create_event(&self, namespace: &str, event: &Value) -> kube::Result<()> {
        assert_eq!(event["metadata"]["namespace"], namespace);
        lock(&self.events).push(event.clone());
        Ok(())
    }

    async fn patch_namespace(&self, name: &str, patch: &Value) -> kube::Result<()> {
        lock(&self.patches).push((name.to_string(), patch.clone()));
        Ok(())
    }

    async fn secret(&self, namespace: &str, name: &str) -> kube::Result<Option<BTreeMap<String, Vec<u8>>>> {
        Ok(self
            .secrets
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
}

/// A manifest of policy `app`, backup `20261123T120000Z` of namespace `db` (3 configmaps, 100 bytes,
/// frozen 40 ms), with `status`; not `Completed` ones have one dump problem.
pub fn manifest(status: Status) -> Manifest {
    let value = serde_json::json!({
        "formatVersion": 1,
        "freezeframeVersion": "0.1.0",
        "backupId": "20261123T120000Z",
        "policy": "app",
        "cluster": {"kubeSystemUid": "ks-uid"},
        "namespaces": ["db"],
        "startedAt": "2026-11-23T12:00:00Z",
        "finishedAt": "2026-11-23T12:00:05Z",
        "status": status,
        "objects": {"configmaps": {"apiVersion": "v1", "kind": "ConfigMap", "count": 3, "restore": "apply"}},
        "clusterObjects": {},
        "artifacts": {"resources.tar.zst": {"size": 100, "sha256": "00"}},
    });
    let mut m: Manifest = serde_json::from_value(value).expect("sample manifest");
    m.hooks = Some(HooksRecord {
        status: HooksStatus::Succeeded,
        freeze_window_millis: Some(40),
        max_freeze_millis: Some(60_000),
        exceeded: None,
        failures: Vec::new(),
        steps: Vec::new(),
        skipped: Vec::new(),
    });
    if status != Status::Completed {
        m.problems = vec!["dump data of db/db-0 failed: exit code 5".into()];
    }
    m
}
