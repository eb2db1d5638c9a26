//! The sandbox's volumes against a real cluster's rules: the PersistentVolume binder (pre-bound volumes,
//! claims naming a volume, Released volumes that stay Released until their claimRef is changed, Lost
//! claims, reclaim policies, Available volumes matched to claims), claim spec immutability, and the
//! kubelet's side (a bound claim's volume mounted, a recreated pod starting clean).

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use serde_json::{Value, json};

use crate::harness::TestEnv;

const TIMEOUT: Duration = Duration::from_secs(10);

fn volume(name: &str, policy: &str, claim_ref: Value) -> PersistentVolume {
    let mut pv = json!({"metadata": {"name": name},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": policy, "storageClassName": "manual",
                 "hostPath": {"path": format!("/data/{name}")}}});
    if !claim_ref.is_null() {
        pv["spec"]["claimRef"] = claim_ref;
    }
    serde_json::from_value(pv).unwrap()
}

fn claim(name: &str, volume_name: Option<&str>, annotations: Value) -> PersistentVolumeClaim {
    let mut pvc = json!({"metadata": {"name": name, "annotations": annotations},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                 "resources": {"requests": {"storage": "1Gi"}}}});
    if let Some(v) = volume_name {
        pvc["spec"]["volumeName"] = json!(v);
    }
    serde_json::from_value(pvc).unwrap()
}

fn pv_phase(phase: &'static str) -> impl Condition<PersistentVolume> {
    move |pv: Option<&PersistentVolume>| {
        pv.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    }
}

fn pvc_phase(phase: &'static str) -> impl Condition<PersistentVolumeClaim> {
    move |pvc: Option<&PersistentVolumeClaim>| {
        pvc.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    }
}

async fn wait<K, C>(api: &Api<K>, name: &str, condition: C) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    C: Condition<K>,
{
    tokio::time::timeout(TIMEOUT, await_condition(api.clone(), name, condition))
        .await
        .map_err(|_| anyhow::anyhow!("{name} did not reach the expected state within {TIMEOUT:?}"))??;
    Ok(())
}

fn phase_of_pv(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref()?.phase.as_deref()
}

fn phase_of_pvc(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.status.as_ref()?.phase.as_deref()
}

fn annotation<'a>(obj: &'a impl kube::Resource, key: &str) -> Option<&'a str> {
    obj.meta().annotations.as_ref()?.get(key).map(String::as_str)
}

#[tokio::test]
async fn given_volume_pre_bound_without_uid_when_its_claim_is_created_then_both_are_bound()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    pvs.create(
        &PostParams::default(),
        &volume(
            "pv-a",
            "Retain",
            json!({"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data"}),
        ),
    )
    .await?;
    wait(&pvs, "pv-a", pv_phase("Available")).await?;

    let created = pvcs
        .create(&PostParams::default(), &claim("data", Some("pv-a"), json!({})))
        .await?;

    wait(&pvcs, "data", pvc_phase("Bound")).await?;
    wait(&pvs, "pv-a", pv_phase("Bound")).await?;
    let pv = pvs.get("pv-a").await?;
    let claim_ref = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(claim_ref.uid, created.metadata.uid);
    assert_eq!(
        annotation(&pv, "pv.kubernetes.io/bound-by-controller"),
        None,
        "pre-bound by the user"
    );
    let pvc = pvcs.get("data").await?;
    assert_eq!(annotation(&pvc, "pv.kubernetes.io/bind-completed"), Some("yes"));
    assert_eq!(
        annotation(&pvc, "pv.kubernetes.io/bound-by-controller"),
        None,
        "the user chose the volume"
    );
    let status = pvc.status.unwrap();
    assert_eq!(status.capacity.unwrap()["storage"].0, "5Gi");
    Ok(())
}

#[tokio::test]
async fn given_retained_volume_when_its_claim_is_deleted_then_released_until_the_claim_ref_is_rewritten()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    pvs.create(&PostParams::default(), &volume("pv-r", "Retain", Value::Null))
        .await?;
    pvcs.create(&PostParams::default(), &claim("data", Some("pv-r"), json!({})))
        .await?;
    wait(&pvcs, "data", pvc_phase("Bound")).await?;
    let old_uid = pvcs.get("data").await?.metadata.uid;

    pvcs.delete("data", &DeleteParams::default()).await?;
    wait(&pvcs, "data", |c: Option<&PersistentVolumeClaim>| c.is_none()).await?;
    wait(&pvs, "pv-r", pv_phase("Released")).await?;

    // A new claim of the same name, naming the volume, does not get it: the claimRef has the old uid.
    pvcs.create(&PostParams::default(), &claim("data", Some("pv-r"), json!({})))
        .await?;
    let pending = pvcs.get("data").await?;
    assert_eq!(phase_of_pvc(&pending), Some("Pending"));
    let pv = pvs.get("pv-r").await?;
    assert_eq!(phase_of_pv(&pv), Some("Released"));
    assert_eq!(pv.spec.unwrap().claim_ref.unwrap().uid, old_uid);

    // Rewriting the claimRef (no uid, no resourceVersion) lets the new claim bind it.
    pvs.patch(
        "pv-r",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"claimRef": {"uid": null, "resourceVersion": null}}})),
    )
    .await?;

    wait(&pvcs, "data", pvc_phase("Bound")).await?;
    wait(&pvs, "pv-r", pv_phase("Bound")).await?;
    let pv = pvs.get("pv-r").await?;
    assert_eq!(
        pv.spec.unwrap().claim_ref.unwrap().uid,
        pending.metadata.uid,
        "bound to the new claim"
    );
    Ok(())
}

#[tokio::test]
async fn given_claim_carrying_bind_completed_when_its_volume_is_pre_bound_without_uid_then_the_claim_is_lost()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    pvs.create(
        &PostParams::default(),
        &volume(
            "pv-l",
            "Retain",
            json!({"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data"}),
        ),
    )
    .await?;

    // As a naive restore would send it: the binding annotations of the backed-up claim kept.
    pvcs.create(
        &PostParams::default(),
        &claim(
            "data",
            Some("pv-l"),
            json!({"pv.kubernetes.io/bind-completed": "yes"}),
        ),
    )
    .await?;

    wait(&pvcs, "data", pvc_phase("Lost")).await?;
    let pv = pvs.get("pv-l").await?;
    assert_eq!(phase_of_pv(&pv), Some("Available"));
    assert_eq!(pv.spec.unwrap().claim_ref.unwrap().uid, None);
    Ok(())
}

#[tokio::test]
async fn given_volume_with_reclaim_policy_delete_when_its_claim_is_deleted_then_the_volume_is_deleted()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    pvs.create(&PostParams::default(), &volume("pv-d", "Delete", Value::Null))
        .await?;
    pvcs.create(&PostParams::default(), &claim("data", Some("pv-d"), json!({})))
        .await?;
    wait(&pvs, "pv-d", pv_phase("Bound")).await?;

    pvcs.delete("data", &DeleteParams::default()).await?;

    wait(&pvs, "pv-d", |pv: Option<&PersistentVolume>| pv.is_none()).await?;
    Ok(())
}

#[tokio::test]
async fn given_available_volumes_when_a_claim_names_none_then_the_smallest_fitting_one_of_its_class_is_bound()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    let mut big = volume("pv-big", "Retain", Value::Null);
    big.spec.as_mut().unwrap().capacity = Some(
        [(
            "storage".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("50Gi".into()),
        )]
        .into(),
    );
    pvs.create(&PostParams::default(), &big).await?;
    pvs.create(&PostParams::default(), &volume("pv-small", "Retain", Value::Null))
        .await?;
    let mut other_class = volume("pv-other", "Retain", Value::Null);
    other_class.spec.as_mut().unwrap().storage_class_name = Some("fast".into());
    pvs.create(&PostParams::default(), &other_class).await?;

    pvcs.create(&PostParams::default(), &claim("data", None, json!({})))
        .await?;

    wait(&pvcs, "data", pvc_phase("Bound")).await?;
    let pvc = pvcs.get("data").await?;
    assert_eq!(
        pvc.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("pv-small")
    );
    assert_eq!(
        annotation(&pvc, "pv.kubernetes.io/bound-by-controller"),
        Some("yes")
    );
    assert_eq!(phase_of_pv(&pvs.get("pv-big").await?), Some("Available"));
    assert_eq!(phase_of_pv(&pvs.get("pv-other").await?), Some("Available"));
    Ok(())
}

#[tokio::test]
async fn given_bound_claim_when_its_spec_changes_then_refused_but_labels_and_a_larger_request_are_accepted()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    pvs.create(&PostParams::default(), &volume("pv-i", "Retain", Value::Null))
        .await?;
    pvcs.create(&PostParams::default(), &claim("data", None, json!({})))
        .await?;
    wait(&pvcs, "data", pvc_phase("Bound")).await?;

    let refused = pvcs
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                                         "kind": "VolumeSnapshot", "name": "s"}}}),
            ),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.contains("spec is immutable after creation"),
        "{}",
        status.message
    );

    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "shop"}},
                             "spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
    )
    .await?;
    let pvc = pvcs.get("data").await?;
    assert_eq!(pvc.metadata.labels.unwrap()["team"], "shop");
    Ok(())
}

#[tokio::test]
async fn given_pod_recreated_under_the_same_name_then_its_directory_is_fresh_but_its_volume_keeps_the_data()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pvs: Api<PersistentVolume> = Api::all(env.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    let pods: Api<Pod> = Api::namespaced(env.client(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": "busybox",
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}))?;
    // The pod starts before its claim can bind; the volume is mounted once it is.
    pvcs.create(&PostParams::default(), &claim("data", Some("pv-m"), json!({})))
        .await?;
    pods.create(&PostParams::default(), &pod).await?;
    pvs.create(&PostParams::default(), &volume("pv-m", "Retain", Value::Null))
        .await?;
    wait(&pvcs, "data", pvc_phase("Bound")).await?;
    let dir = env.sandbox().state_dir().join("pods/default/app");
    std::fs::write(dir.join("data/kept"), "volume")?;
    std::fs::write(dir.join("scratch"), "container")?;

    pods.delete("app", &DeleteParams::default()).await?;
    wait(&pods, "app", |p: Option<&Pod>| p.is_none()).await?;
    pods.create(&PostParams::default(), &pod).await?;

    assert!(!dir.join("scratch").exists(), "a new container starts clean");
    assert_eq!(std::fs::read_to_string(dir.join("data/kept"))?, "volume");
    Ok(())
}

#[tokio::test]
async fn given_claim_naming_its_class_only_by_the_beta_annotation_then_it_is_provisioned_in_that_class()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.apply(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: legacy}\n\
         provisioner: sandbox.freezeframe.dev\nreclaimPolicy: Delete\n",
    )?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "default");
    let mut pvc = claim(
        "data",
        None,
        json!({"volume.beta.kubernetes.io/storage-class": "legacy"}),
    );
    pvc.spec.as_mut().unwrap().storage_class_name = None;
    pvcs.create(&PostParams::default(), &pvc).await?;

    wait(&pvcs, "data", pvc_phase("Bound")).await?;
    let bound = pvcs.get("data").await?;
    let volume_name = bound.spec.as_ref().unwrap().volume_name.clone().unwrap();
    let pv = Api::<PersistentVolume>::all(env.client())
        .get(&volume_name)
        .await?;
    assert_eq!(
        pv.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("legacy"),
        "not the default class"
    );
    assert_eq!(
        bound.spec.as_ref().unwrap().storage_class_name,
        None,
        "admission leaves a class given by annotation alone"
    );
    Ok(())
}
