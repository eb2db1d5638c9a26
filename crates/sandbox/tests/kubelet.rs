//! The sandbox's kubelet for freezeframe's own image, as clients see it: Jobs of that image really run
//! (logs, exit codes, backoff, deadlines), env from Secrets, volumes at absolute mount paths in a private
//! mount namespace, processes killed on pod deletion and on shutdown; exec'd hooks see the same volumes.
//!
//! The image's binary is a small shell script here (the product's tests run the real `freezeframe`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use freezeframe_sandbox::{Sandbox, SandboxOptions};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

/// A stand-in for the freezeframe binary: `--version`, `fail CODE MSG`, `sleep S`, `write PATH TEXT`,
/// `env NAME`, `message TEXT` (to the termination log).
const FAKE: &str = r#"#!/bin/sh
echo "started $*"
case "$1" in
  --version) echo "freezeframe 9.9.9" ;;
  fail) echo "boom" >&2; exit "$2" ;;
  sleep) echo $$ > "$3"; sleep "$2" ;;
  write) echo "$3" > "$2" && echo "wrote $2" ;;
  env) echo "$2=$(printenv "$2")" ;;
  message) printf '%s' "$2" > /dev/termination-log ;;
esac
"#;

struct Env {
    sandbox: Sandbox,
    client: kube::Client,
    dir: tempfile::TempDir,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("freezeframe-fake");
    std::fs::write(&binary, FAKE).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sandbox = Sandbox::start(SandboxOptions {
        state_dir: Some(dir.path().join("state")),
        own_image_binary: Some(binary),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sandbox.client().await.unwrap();
    Env { sandbox, client, dir }
}

impl Env {
    fn apply(&self, yaml: &str) {
        self.sandbox.apply_text(Path::new("test.yaml"), yaml).unwrap();
    }

    async fn job_condition(&self, job: &str) -> Value {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), "default");
        eventually(|| async {
            let j = jobs.get(job).await.ok()?;
            let v = serde_json::to_value(&j).unwrap();
            let c = v["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")?
                .clone();
            Some(json!({"condition": c, "status": v["status"]}))
        })
        .await
    }

    async fn job_pods(&self, job: &str) -> Vec<Value> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .unwrap();
        list.items
            .into_iter()
            .map(|p| serde_json::to_value(p).unwrap())
            .collect()
    }

    async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.sandbox.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .await
            .unwrap()
    }

    fn volume_of(&self, claim: &str) -> PathBuf {
        let pvc = self
            .sandbox
            .cluster()
            .store
            .get(
                &freezeframe_sandbox::registry::ResourceId::new("", "persistentvolumeclaims"),
                "default",
                claim,
            )
            .unwrap();
        let pv = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
        self.sandbox.state_dir().join("volumes").join(pv)
    }
}

async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("condition reached within 30 s")
}

fn job(name: &str, image: &str, args: &[&str], extra_spec: Value) -> String {
    let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "mover", "image": image, "args": args}]}}}});
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        j["spec"][k] = v.clone();
    }
    serde_json::to_string(&j).unwrap()
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn given_freezeframe_image_job_when_run_then_it_succeeds_and_logs_are_served() {
    let env = start().await;
    env.apply(&job(
        "version",
        "ghcr.io/x/freezeframe:v1",
        &["--version"],
        json!({}),
    ));
    let done = env.job_condition("version").await;
    assert_eq!(done["condition"]["type"], "Complete", "{done}");
    assert_eq!(done["status"]["succeeded"], 1, "{done}");
    let pods = env.job_pods("version").await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0, "{pod}");
    assert_eq!(term["reason"], "Completed", "{pod}");
    assert_eq!(
        pod["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        "version"
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");

    let pod_name = pod["metadata"]["name"].as_str().unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let logs = pods.logs(pod_name, &LogParams::default()).await.unwrap();
    assert_eq!(logs, "started --version\nfreezeframe 9.9.9\n");
    let tail = pods
        .logs(
            pod_name,
            &LogParams {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "freezeframe 9.9.9\n");
    let out = env.kubectl(&["logs", "job/version"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), logs, "{out:?}");

    // Deleting the Job with propagation takes its pods along.
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    jobs.delete("version", &DeleteParams::background()).await.unwrap();
    eventually(|| async { env.job_pods("version").await.is_empty().then_some(()) }).await;
}

#[tokio::test]
async fn given_failing_command_when_job_runs_then_backoff_limit_pods_fail_and_job_fails() {
    let env = start().await;
    env.apply(&job(
        "failing",
        "freezeframe",
        &["fail", "3"],
        json!({"backoffLimit": 2}),
    ));
    let done = env.job_condition("failing").await;
    assert_eq!(done["condition"]["type"], "Failed", "{done}");
    assert_eq!(done["condition"]["reason"], "BackoffLimitExceeded", "{done}");
    assert_eq!(done["status"]["failed"], 3, "{done}");
    assert!(
        done["status"].get("active").is_none(),
        "no pod is active any more: {done}"
    );
    let pods = env.job_pods("failing").await;
    assert_eq!(pods.len(), 3, "backoffLimit 2 = three attempts");
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Failed");
        let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["exitCode"], 3, "{p}");
        assert_eq!(t["reason"], "Error", "{p}");
    }
}

#[tokio::test]
async fn given_termination_message_when_container_writes_it_then_status_carries_it() {
    let env = start().await;
    env.apply(&job(
        "result",
        "reg:5000/freezeframe@sha256:0123",
        &["message", "moved 42 files"],
        json!({}),
    ));
    env.job_condition("result").await;
    let pods = env.job_pods("result").await;
    let t = &pods[0]["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["message"], "moved 42 files", "{t}");
    assert!(
        !Path::new("/dev/termination-log").exists(),
        "nothing left on the host"
    );
}

#[tokio::test]
async fn given_active_deadline_when_exceeded_then_job_fails_and_process_is_killed() {
    let env = start().await;
    let pidfile = env.dir.path().join("pid");
    env.apply(&job(
        "slow",
        "freezeframe",
        &["sleep", "60", pidfile.to_str().unwrap()],
        json!({"activeDeadlineSeconds": 1}),
    ));
    let pid: i32 = eventually(|| async { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() }).await;
    let done = env.job_condition("slow").await;
    assert_eq!(done["condition"]["reason"], "DeadlineExceeded", "{done}");
    eventually(|| async { (!process_alive(pid)).then_some(()) }).await;
}

#[tokio::test]
async fn given_secret_env_when_container_starts_then_value_reaches_process_and_missing_secret_waits() {
    let env = start().await;
    env.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: repo, namespace: default}
stringData: {password: s3cr3t}
"#,
    );
    let spec = |name: &str, secret: &str| {
        format!(
            r#"{{"apiVersion": "batch/v1", "kind": "Job", "metadata": {{"name": "{name}", "namespace": "default"}},
            "spec": {{"backoffLimit": 0, "template": {{"spec": {{"restartPolicy": "Never",
            "containers": [{{"name": "mover", "image": "freezeframe", "args": ["env", "RESTIC_PASSWORD"],
              "env": [{{"name": "RESTIC_PASSWORD", "valueFrom": {{"secretKeyRef": {{"name": "{secret}", "key": "password"}}}}}},
                      {{"name": "POD", "valueFrom": {{"fieldRef": {{"fieldPath": "metadata.name"}}}}}}]}}]}}}}}}}}"#
        )
    };
    env.apply(&spec("with-secret", "repo"));
    env.job_condition("with-secret").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let p = &env.job_pods("with-secret").await[0];
    let logs = pods
        .logs(p["metadata"]["name"].as_str().unwrap(), &LogParams::default())
        .await
        .unwrap();
    assert!(logs.contains("RESTIC_PASSWORD=s3cr3t"), "{logs}");

    env.apply(&spec("without-secret", "missing"));
    let waiting = eventually(|| async {
        let p = env.job_pods("without-secret").await.pop()?;
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "CreateContainerConfigError").then_some(w)
    })
    .await;
    assert_eq!(waiting["message"], "secret \"missing\" not found", "{waiting}");
}

#[tokio::test]
async fn given_claim_mounted_at_data_when_container_writes_then_volume_has_file_and_host_has_nothing() {
    let host_had_data = Path::new("/data").exists();
    let env = start().await;
    env.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: vol, namespace: default}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: default}
data: {policy.yaml: "policies: []\n"}
---
apiVersion: batch/v1
kind: Job
metadata: {name: writer, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: mover
        image: freezeframe
        command: [sh, -c, "freezeframe write /data/x hello && cat /config/policy.yaml && ! touch /config/y"]
        volumeMounts:
        - {name: data, mountPath: /data}
        - {name: config, mountPath: /config}
      volumes:
      - {name: data, persistentVolumeClaim: {claimName: vol}}
      - {name: config, configMap: {name: cfg}}
"#,
    );
    let done = env.job_condition("writer").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let p = &env.job_pods("writer").await[0];
    let logs = pods
        .logs(p["metadata"]["name"].as_str().unwrap(), &LogParams::default())
        .await
        .unwrap();
    assert_eq!(done["condition"]["type"], "Complete", "{done} {logs}");
    assert!(logs.contains("policies: []"), "{logs}");
    assert_eq!(
        std::fs::read_to_string(env.volume_of("vol").join("x")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        Path::new("/data").exists(),
        host_had_data,
        "nothing appears at /data on the host"
    );
    assert!(
        !Path::new("/config").exists(),
        "nothing appears at /config on the host"
    );
}

#[tokio::test]
async fn given_read_only_claim_when_container_writes_then_it_fails() {
    let env = start().await;
    env.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: ro, namespace: default}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: ro-writer, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: mover
        image: freezeframe
        args: [write, /var/lib/data/x, hello]
        volumeMounts: [{name: data, mountPath: /var/lib/data, readOnly: true}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: ro}}]
"#,
    );
    let done = env.job_condition("ro-writer").await;
    assert_eq!(done["condition"]["type"], "Failed", "{done}");
    assert!(!env.volume_of("ro").join("x").exists());
    assert!(
        !Path::new("/var/lib/data").exists(),
        "nothing appears on the host"
    );
}

#[tokio::test]
async fn given_pod_with_claim_when_hook_execs_absolute_path_then_file_lands_in_volume() {
    let env = start().await;
    env.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: db, namespace: default}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default}
spec:
  containers:
  - name: db
    image: postgres:16
    volumeMounts: [{name: data, mountPath: /var/lib/data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: db}}]
"#,
    );
    let out = env
        .kubectl(&[
            "exec",
            "db-0",
            "--",
            "sh",
            "-c",
            "echo absolute > /var/lib/data/x && echo relative > var/lib/data/y && cat /var/lib/data/y",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "relative\n");
    let vol = env.volume_of("db");
    assert_eq!(std::fs::read_to_string(vol.join("x")).unwrap(), "absolute\n");
    assert_eq!(std::fs::read_to_string(vol.join("y")).unwrap(), "relative\n");
    assert!(
        !Path::new("/var/lib/data").exists(),
        "nothing appears on the host"
    );
}

#[tokio::test]
async fn given_running_pod_when_deleted_or_sandbox_stops_then_its_processes_are_killed() {
    let mut env = start().await;
    let (first, second) = (env.dir.path().join("first"), env.dir.path().join("second"));
    for (name, pidfile) in [("first", &first), ("second", &second)] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "freezeframe", "args": ["sleep", "60", pidfile]}]}});
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
            .await
            .unwrap();
    }
    let read = |p: PathBuf| async move { std::fs::read_to_string(&p).ok()?.trim().parse::<i32>().ok() };
    let pid1 = eventually(|| read(first.clone())).await;
    let pid2 = eventually(|| read(second.clone())).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let running = pods.get("first").await.unwrap();
    assert_eq!(running.status.unwrap().phase.as_deref(), Some("Running"));
    pods.delete("first", &DeleteParams::default()).await.unwrap();
    eventually(|| async { (!process_alive(pid1)).then_some(()) }).await;
    assert!(process_alive(pid2));
    env.sandbox.shutdown();
    eventually(|| async { (!process_alive(pid2)).then_some(()) }).await;
}

#[tokio::test]
async fn given_retained_content_of_snapshot_when_exposed_in_another_namespace_then_claim_holds_its_data() {
    let env = start().await;
    env.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: freezeframe}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: app}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#,
    );
    let pvc = env
        .sandbox
        .cluster()
        .store
        .get(
            &freezeframe_sandbox::registry::ResourceId::new("", "persistentvolumeclaims"),
            "app",
            "data",
        )
        .unwrap();
    let source = env
        .sandbox
        .state_dir()
        .join("volumes")
        .join(pvc["spec"]["volumeName"].as_str().unwrap());
    std::fs::write(source.join("file"), "snapshotted").unwrap();
    env.apply(
        r#"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap, namespace: app}
spec: {source: {persistentVolumeClaimName: data}}
"#,
    );
    let snapshots =
        freezeframe_sandbox::registry::ResourceId::new("snapshot.storage.k8s.io", "volumesnapshots");
    let contents =
        freezeframe_sandbox::registry::ResourceId::new("snapshot.storage.k8s.io", "volumesnapshotcontents");
    let handle = eventually(|| async {
        let vs = env.sandbox.cluster().store.get(&snapshots, "app", "snap")?;
        let content = vs["status"]["boundVolumeSnapshotContentName"]
            .as_str()?
            .to_string();
        let c = env.sandbox.cluster().store.get(&contents, "", &content)?;
        c["status"]["snapshotHandle"].as_str().map(str::to_string)
    })
    .await;
    env.apply(&format!(
        r#"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotContent
metadata: {{name: exposed}}
spec:
  deletionPolicy: Retain
  driver: sandbox.freezeframe.dev
  source: {{snapshotHandle: "{handle}"}}
  volumeSnapshotRef: {{name: exposed, namespace: freezeframe}}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {{name: exposed, namespace: freezeframe}}
spec: {{source: {{volumeSnapshotContentName: exposed}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: exposed, namespace: freezeframe}}
spec:
  accessModes: [ReadOnlyMany]
  resources: {{requests: {{storage: 1Gi}}}}
  dataSource: {{apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: exposed}}
"#
    ));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), "freezeframe");
    let pv = eventually(|| async {
        let c = claims.get("exposed").await.ok()?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(())?;
        c.spec?.volume_name
    })
    .await;
    let exposed = env.sandbox.state_dir().join("volumes").join(pv);
    assert_eq!(
        std::fs::read_to_string(exposed.join("file")).unwrap(),
        "snapshotted"
    );

    // Deleting the exposure (Retain) keeps the snapshot's data for the original snapshot.
    let out = env
        .kubectl(&[
            "delete",
            "pvc/exposed",
            "volumesnapshot/exposed",
            "-n",
            "freezeframe",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = env.kubectl(&["delete", "volumesnapshotcontent/exposed"]).await;
    assert!(out.status.success(), "{out:?}");
    let snapshot_dir = eventually(|| async {
        let vs = env.sandbox.cluster().store.get(&snapshots, "app", "snap")?;
        (vs["status"]["readyToUse"] == true).then_some(())?;
        std::fs::read_dir(env.sandbox.state_dir().join("snapshots")).ok()
    })
    .await;
    assert!(snapshot_dir.count() > 0, "the snapshot's data is still there");
    let copy = env.sandbox.state_dir().join("snapshots").join(&handle);
    assert_eq!(std::fs::read_to_string(copy.join("file")).unwrap(), "snapshotted");
}
