//! Restore and volumes that outlive their namespace: a claim's own volume, left Released with reclaim
//! policy Retain after the namespace was deleted, is re-bound (with its newest data) instead of a new
//! volume from the snapshot; restored elsewhere, the claim comes from the snapshot and the volume is
//! never touched.

use std::time::Duration;

use freezeframe::backup::Status;
use freezeframe::exit::Outcome;
use freezeframe::restore::plan::Claim;
use freezeframe::store::Layout;
use freezeframe::store::fs::FsStore;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use kube::runtime::wait::await_condition;

use crate::harness::TestEnv;
use crate::restore::{back_up_policy, delete_namespace, options, read_orders, restore_with, write_orders};

/// Namespace `vault`: StatefulSet `db` (pod `db-0`) whose claim `data-db-0` is provisioned in
/// StorageClass `keep`, reclaim policy Retain.
const VAULT: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: keep}
provisioner: sandbox.freezeframe.dev
reclaimPolicy: Retain
---
apiVersion: v1
kind: Namespace
metadata: {name: vault}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: vault}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: postgres:17
          volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {storageClassName: keep, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

async fn volume_phase_is(pvs: &Api<PersistentVolume>, name: &str, phase: &'static str) -> anyhow::Result<()> {
    let reached = move |pv: Option<&PersistentVolume>| {
        pv.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pvs.clone(), name, reached),
    )
    .await??;
    Ok(())
}

#[tokio::test]
async fn given_retained_volume_released_by_a_deleted_namespace_when_restored_then_it_is_re_bound_with_its_newest_data()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.apply(VAULT)?;
    let client = env.client();
    write_orders(&client, "vault", "db-0", "snapshotted\n").await?;
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let (_, manifest) = back_up_policy(&env, &store, &layout, "vault", "vault", "").await?;
    assert_eq!(manifest.status, Status::Completed, "{:?}", manifest.problems);
    // Written after the backup: only the volume itself has it.
    write_orders(&client, "vault", "db-0", "newest\n").await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "vault");
    let volume = claims.get("data-db-0").await?.spec.unwrap().volume_name.unwrap();
    delete_namespace(&client, "vault").await?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    volume_phase_is(&pvs, &volume, "Released").await?;
    let released = pvs.get(&volume).await?;

    // A dry run shows the choice and leaves the volume alone.
    let mut dry = options();
    dry.dry_run = true;
    let (plan, _) = restore_with(&client, &store, &layout, &dry, None).await?;
    assert!(
        plan.to_string().contains(&format!(
            "vault/data-db-0\tcreate (existing: skip); volume: re-bind released volume {volume}"
        )),
        "{plan}"
    );
    assert_eq!(
        pvs.get(&volume).await?.metadata.resource_version,
        released.metadata.resource_version
    );

    let mut opts = options();
    opts.wait = Some(Duration::from_secs(60));
    let (plan, report) = restore_with(&client, &store, &layout, &opts, None).await?;

    assert_eq!(report.failures, [], "{}", report.table());
    assert_eq!(report.outcome(), Outcome::Success);
    let step = plan.steps.iter().find(|s| s.name == "data-db-0").unwrap();
    assert_eq!(
        step.claim,
        Claim::Rebind(volume.clone()),
        "wins over the recorded snapshot"
    );
    let claim = claims.get("data-db-0").await?;
    assert_eq!(
        claim.spec.as_ref().unwrap().volume_name.as_deref(),
        Some(volume.as_str())
    );
    assert_eq!(claim.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    volume_phase_is(&pvs, &volume, "Bound").await?;
    let rebound = pvs.get(&volume).await?;
    assert_eq!(rebound.spec.unwrap().claim_ref.unwrap().uid, claim.metadata.uid);
    assert_eq!(read_orders(&client, "vault", "db-0").await?, "newest\n");

    // Restored beside it, the claim comes from the snapshot; the re-bound volume is not touched.
    let mut copy = options();
    copy.wait = Some(Duration::from_secs(60));
    copy.plan.namespace_map = [("vault".to_string(), "vault-copy".to_string())].into();
    let (plan, report) = restore_with(&client, &store, &layout, &copy, None).await?;
    assert_eq!(report.failures, [], "{}", report.table());
    let step = plan.steps.iter().find(|s| s.name == "data-db-0").unwrap();
    assert!(matches!(step.claim, Claim::FromSnapshot(_)), "{:?}", step.claim);
    assert_eq!(read_orders(&client, "vault-copy", "db-0").await?, "snapshotted\n");
    assert_eq!(
        pvs.get(&volume).await?.metadata.resource_version,
        rebound.metadata.resource_version,
        "a volume bound to another claim is never touched"
    );
    Ok(())
}
