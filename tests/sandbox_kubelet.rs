//! Jobs of freezeframe's own image run the real `freezeframe` binary in the sandbox: a ConfigMap mounted
//! at `/config`, output served by `kubectl logs`, exit codes in the pod status and the Job's conditions.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};

use crate::harness::TestEnv;

const TIMEOUT: Duration = Duration::from_secs(60);

fn finished(job: Option<&Job>) -> bool {
    job.and_then(|j| j.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Run a Job of `image` with `args` (and the ConfigMap `cfg` at /config) to its end; the Job's status
/// and the logs of its last pod.
async fn run_job(env: &TestEnv, name: &str, image: &str, args: &[&str], backoff: i32) -> (Value, String) {
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
        "spec": {"backoffLimit": backoff, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "mover", "image": image, "args": args,
                "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": true}]}],
            "volumes": [{"name": "config", "configMap": {"name": "cfg"}}]}}}});
    env.apply(&serde_json::to_string(&job).unwrap()).unwrap();
    let jobs: Api<Job> = Api::namespaced(env.client(), "default");
    let done = tokio::time::timeout(TIMEOUT, await_condition(jobs, name, finished))
        .await
        .expect("the Job finishes")
        .unwrap()
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client(), "default");
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .unwrap();
    let pod = list.items.last().expect("the Job made a pod");
    let logs = pods
        .logs(pod.metadata.name.as_deref().unwrap(), &LogParams::default())
        .await
        .unwrap();
    (serde_json::to_value(done.status).unwrap(), logs)
}

fn config_map(policy: &str) -> String {
    serde_json::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "default"}, "data": {"policy.yaml": policy}}))
    .unwrap()
}

/// The PolicySet of a shipped example (the `policies.yaml` key of its ConfigMap).
fn example_policy_set() -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/postgresql.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find_map(|v: Value| v["data"]["policies.yaml"].as_str().map(str::to_string))
        .expect("the example has a policies.yaml key")
}

#[tokio::test]
async fn given_freezeframe_image_job_when_validating_mounted_policy_then_job_completes_and_kubectl_logs_show_it()
 {
    let env = TestEnv::new().await.unwrap();
    env.apply(&config_map(&example_policy_set())).unwrap();
    let (status, logs) = run_job(
        &env,
        "validate",
        "ghcr.io/example/freezeframe:v1",
        &["validate", "--policy-file", "/config/policy.yaml"],
        0,
    )
    .await;
    assert_eq!(status["succeeded"], 1, "{status} {logs}");
    assert!(!logs.is_empty());

    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.sandbox().kubeconfig_path())
        .arg("--cache-dir")
        .arg(env.dir().join("kube-cache"))
        .args(["logs", "job/validate"])
        .env("HOME", env.dir())
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), logs, "{out:?}");
}

#[tokio::test]
async fn given_freezeframe_image_job_when_policy_is_invalid_then_each_attempt_fails_until_backoff_limit() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&config_map("this: is not a policy set\n")).unwrap();
    let (status, logs) = run_job(
        &env,
        "invalid",
        "freezeframe",
        &["validate", "--policy-file", "/config/policy.yaml"],
        1,
    )
    .await;
    assert_eq!(status["failed"], 2, "{status} {logs}");
    let failed = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{status}");
    assert!(!logs.is_empty(), "the failure is explained in the logs");
}

#[tokio::test]
async fn given_freezeframe_image_when_version_is_asked_then_pod_succeeds_with_the_binary_version() {
    let env = TestEnv::new().await.unwrap();
    env.apply(&config_map("")).unwrap();
    let (status, logs) = run_job(&env, "version", "freezeframe:latest", &["--version"], 0).await;
    assert_eq!(status["succeeded"], 1, "{status}");
    assert!(logs.contains(env!("CARGO_PKG_VERSION")), "{logs}");
}
