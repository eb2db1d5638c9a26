//! Sandbox scale benchmark: 100k objects, then the calls freezeframe makes (paginated list, selected
//! list, get, watch start, create) timed through the real kube client over HTTP.
//!
//! Run: `cargo bench --bench sandbox` (release). `FREEZEFRAME_BENCH_OBJECTS` overrides the count.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use serde_json::json;

use freezeframe_sandbox::cluster::WriteOptions;
use freezeframe_sandbox::{Sandbox, SandboxOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::var("FREEZEFRAME_BENCH_OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let namespaces = 10;
    let sb = Sandbox::start(SandboxOptions::default()).await?;
    let cluster = sb.cluster().clone();
    let client = sb.client().await?;

    let t = Instant::now();
    let ns_rt = cluster
        .find_type("", "v1", "namespaces")
        .expect("namespaces served");
    let cm_rt = cluster
        .find_type("", "v1", "configmaps")
        .expect("configmaps served");
    let opts = WriteOptions::default();
    for n in 0..namespaces {
        cluster
            .create(
                &ns_rt,
                "",
                json!({"metadata": {"name": format!("ns-{n}")}}),
                &opts,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for i in 0..total {
        let ns = format!("ns-{}", i % namespaces);
        let obj = json!({"metadata": {"name": format!("cm-{i:06}"), "labels": {"app": format!("app-{}", i % 100), "shard": (i % 7).to_string()}},
                         "data": {"payload": "x".repeat(256)}});
        cluster
            .create(&cm_rt, &ns, obj, &opts)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let load = t.elapsed();
    println!(
        "load      {total} configmaps in-process: {load:?} ({:.0}/s)",
        total as f64 / load.as_secs_f64()
    );

    let all: Api<ConfigMap> = Api::all(client.clone());
    let t = Instant::now();
    let mut count = 0;
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = all.list(&lp).await?;
        count += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    let full = t.elapsed();
    println!(
        "list      all {count} in pages of 500 over HTTP: {full:?} ({:.0} objects/s)",
        count as f64 / full.as_secs_f64()
    );

    let one_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "ns-3");
    let mut sel = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let l = one_ns
            .list(&ListParams::default().labels("app=app-3,shard in (1,2,3)"))
            .await?;
        assert!(!l.items.is_empty());
        sel.push(t.elapsed());
    }
    println!(
        "list      label-selected in one namespace (10k scanned): median {:?}",
        median(sel)
    );

    let mut gets = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        one_ns.get(&format!("cm-{:06}", i * 10 + 3)).await?;
        gets.push(t.elapsed());
    }
    println!("get       median of 200: {:?}", median(gets));

    let mut creates = Vec::new();
    for i in 0..200 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("late-{i}")}}))?;
        let t = Instant::now();
        one_ns.create(&PostParams::default(), &cm).await?;
        creates.push(t.elapsed());
    }
    println!(
        "create    median of 200 with {total} objects stored: {:?}",
        median(creates)
    );

    let t = Instant::now();
    let rv = one_ns
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let _stream = one_ns.watch(&WatchParams::default(), &rv).await?;
    println!("watch     start from a list's resourceVersion: {:?}", t.elapsed());
    Ok(())
}
