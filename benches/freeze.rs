//! Freeze-window benchmark: 20 pods of one group, each pre action `sleep 1`, through the sandbox's real
//! exec. The target is a freeze window (first pre start → last thaw end) under 2 s, where running the
//! actions pod by pod (as Velero does) would take over 20 s.
//!
//! Run: `cargo bench --bench freeze` (release) or `cargo bench --bench freeze --profile dev`.
//! `FREEZEFRAME_BENCH_PODS` and `FREEZEFRAME_BENCH_ROUNDS` override 20 pods and 5 rounds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use freezeframe::hooks::{Engine, KubeExecutor, plan};
use freezeframe_sandbox::{Sandbox, SandboxOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pods = env("FREEZEFRAME_BENCH_PODS", 20);
    let rounds = env("FREEZEFRAME_BENCH_ROUNDS", 5);
    let sb = Sandbox::start(SandboxOptions::default()).await?;
    let client = sb.client().await?;
    sb.apply_text(
        std::path::Path::new("<bench>"),
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n\
             apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db, namespace: bench}}\n\
             spec:\n  replicas: {pods}\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n\
             \x20 template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: busybox}}]}}\n"
        ),
    )?;
    let text = r#"apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages: {local: {filesystem: {path: /tmp/unused}}}
policies:
  - name: bench
    schedule: "@daily"
    namespaces: [bench]
    storage: local
    retention: {keepLast: 1}
    rules:
      pre: [{podSelector: {app: db}, actions: [{value: "sleep 1"}]}]
      post: [{podSelector: {app: db}, actions: [{value: "true"}]}]
"#;
    let set = freezeframe::policy::parse_str("bench", text);
    anyhow::ensure!(set.is_valid(), "bench policy invalid: {:?}", set.problems);
    let policy = &set.policies[0];
    let plan = plan::plan(&client, policy).await?;
    let engine = Engine::new(KubeExecutor::new(client.clone()));
    let mut windows: Vec<Duration> = Vec::new();
    for _ in 0..rounds {
        let (report, _) = engine
            .with_freeze(&plan, &CancellationToken::new(), |_| async {})
            .await;
        anyhow::ensure!(
            report.abort_cause().is_none(),
            "freeze failed: {:?}",
            report.abort_cause()
        );
        windows.push(report.freeze_window.expect("a freeze has a window"));
    }
    windows.sort();
    println!(
        "freeze    {pods} pods × `sleep 1`, {rounds} rounds: min {:?}, median {:?}, max {:?} (target < 2 s; pod by pod ≥ {pods} s)",
        windows[0],
        windows[windows.len() / 2],
        windows[windows.len() - 1]
    );
    Ok(())
}
