//! Restore movers: claims a restore created empty are filled with their repository snapshots by Jobs
//! of freezeframe's own image (`freezeframe mover restore`), each mounting its claim read-write in the
//! claim's own namespace, at most `volumes.mover.concurrency` at once, before any workload that mounts
//! the claim exists.
//!
//! A pod reads Secrets of its own namespace only, so each Job gets a temporary Secret next to it with
//! the repository password and the S3 keys, copied from freezeframe's namespace and owned by the Job:
//! the garbage collector deletes it with the Job, so a restore never needs to delete Secrets. Jobs
//! carry the policy's restore label (`freezeframe.dev/mover=restore`) and are deleted whatever
//! happens: after each claim, and in one sweep per namespace at the start (leftovers of a crashed
//! restore of the same policy) and at the end (also on cancellation).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::objects::{
    ACCESS_KEY_ENV, MOVER_JOB_LABEL, MOVER_LABEL, MoverSpec, PASSWORD_ENV, SECRET_KEY_ENV, owned_by,
};
use super::{DEADLINE_GRACE, MoverCluster};
use crate::k8s::errors::chain;
use crate::mover::RestoreReport;
use crate::snapshot::POLICY_LABEL;

/// One claim to fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The claim's namespace (where its mover runs).
    pub namespace: String,
    /// The claim, created empty by the restore.
    pub claim: String,
    /// The repository snapshot to write into it.
    pub snapshot_id: String,
}

/// What a restore mover reported.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredVolume {
    /// Files restored.
    pub files: u64,
    /// Bytes restored.
    pub bytes: u64,
    /// The mover's own duration.
    pub duration_seconds: f64,
    /// The Job.
    pub job: String,
}

/// Selects every restore mover object of `spec`'s policy.
fn selector(spec: &MoverSpec) -> String {
    format!("{MOVER_LABEL}=restore,{POLICY_LABEL}={}", spec.policy)
}

/// The Secret data every restore mover gets: the password under [`PASSWORD_ENV`] and, when the storage
/// names a credentials Secret, its S3 keys — read from freezeframe's namespace.
async fn secret_data(
    cluster: &dyn MoverCluster,
    spec: &MoverSpec,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let read = |name: String| async move {
        cluster
            .secret_data(&spec.namespace, &name)
            .await
            .map_err(|e| chain(&e))?
            .ok_or_else(|| format!("Secret {}/{name} not found", spec.namespace))
    };
    let password = &spec.repository.password_secret;
    let mut data = BTreeMap::new();
    let secret = read(password.name.clone()).await?;
    let value = secret.get(&password.key).ok_or_else(|| {
        format!(
            "Secret {}/{} has no key {:?} (storage repository.passwordSecret)",
            spec.namespace, password.name, password.key
        )
    })?;
    data.insert(PASSWORD_ENV.to_string(), value.clone());
    if let Some(name) = &spec.repository.credentials_secret {
        let secret = read(name.clone()).await?;
        for key in [ACCESS_KEY_ENV, SECRET_KEY_ENV] {
            let value = secret.get(key).ok_or_else(|| {
                format!(
                    "Secret {}/{name} has no key {key} (storage credentialsSecret)",
                    spec.namespace
                )
            })?;
            data.insert(key.to_string(), value.clone());
        }
    }
    Ok(data)
}

/// Fill every claim of `requests`; one result per request, in order. `Err` says why that claim was not
/// filled (the Job's reason and output tail, a timeout, a cancellation).
pub async fn fill_claims(
    cluster: &dyn MoverCluster,
    spec: &MoverSpec,
    requests: &[RestoreRequest],
    cancel: &CancellationToken,
) -> Vec<Result<RestoredVolume, String>> {
    let secret = match secret_data(cluster, spec).await {
        Ok(s) => s,
        Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
    };
    let namespaces: BTreeSet<&str> = requests.iter().map(|r| r.namespace.as_str()).collect();
    sweep(cluster, &namespaces, &selector(spec)).await;
    let mut results: Vec<Option<Result<RestoredVolume, String>>> = vec![None; requests.len()];
    let concurrency = spec.mover.concurrency.max(1) as usize;
    // The futures are made first: a stream mapping borrowed requests through a closure is not `Send`
    // for every lifetime the callers' `async_trait` futures need.
    let movers: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let secret = &secret;
            async move { (i, fill_one(cluster, spec, r, secret).await) }
        })
        .collect();
    let work = futures::stream::iter(movers).buffer_unordered(concurrency);
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            next = work.next() => match next {
                Some((i, result)) => results[i] = Some(result),
                None => break,
            },
        }
    }
    sweep(cluster, &namespaces, &selector(spec)).await;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("cancelled (SIGTERM/SIGINT) before the mover finished".to_string())))
        .collect()
}

async fn sweep(cluster: &dyn MoverCluster, namespaces: &BTreeSet<&str>, selector: &str) {
    for namespace in namespaces {
        if let Err(e) = cluster.delete_labelled(namespace, selector).await {
            tracing::warn!(namespace, selector, error = %chain(&e), "could not delete temporary restore mover objects");
        }
    }
}

async fn fill_one(
    cluster: &dyn MoverCluster,
    spec: &MoverSpec,
    request: &RestoreRequest,
    secret: &BTreeMap<String, Vec<u8>>,
) -> Result<RestoredVolume, String> {
    let job = spec.restore_name(&request.namespace, &request.claim);
    tracing::info!(namespace = %request.namespace, pvc = %request.claim, snapshot = %request.snapshot_id,
        job = %job, "filling the claim from the repository");
    let result = async {
        let mut objects = spec
            .restore_objects(&request.namespace, &request.claim, &request.snapshot_id, secret)
            .into_iter();
        let (Some(job_object), Some(secret_object)) = (objects.next(), objects.next()) else {
            unreachable!("restore_objects returns a Job and a Secret");
        };
        let uid = cluster.create(&job_object).await.map_err(|e| chain(&e))?;
        cluster
            .create(&owned_by(secret_object, &job, &uid))
            .await
            .map_err(|e| chain(&e))?;
        let end = cluster
            .wait_job(&request.namespace, &job, spec.mover.timeout + DEADLINE_GRACE)
            .await
            .map_err(|e| chain(&e))?;
        let report = end
            .output
            .as_deref()
            .and_then(super::last_json_line::<RestoreReport>);
        match (end.succeeded, report) {
            (true, Some(r)) => Ok(RestoredVolume {
                files: r.files,
                bytes: r.bytes,
                duration_seconds: r.duration_seconds,
                job: job.clone(),
            }),
            (true, None) => Err(format!("mover Job {job} completed but reported no summary line")),
            (false, _) => Err(format!("mover Job {job}: {}", super::failure_text(&end))),
        }
    }
    .await;
    let selector = format!("{},{MOVER_JOB_LABEL}={job}", selector(spec));
    if let Err(e) = cluster.delete_labelled(&request.namespace, &selector).await {
        tracing::warn!(job = %job, error = %chain(&e), "temporary objects of a restore mover are deleted at the end");
    }
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::offsite::fake::{FakeCluster, Script};
    use crate::offsite::objects::TempKind;
    use crate::offsite::objects::tests::spec;

    fn secrets() -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
        BTreeMap::from([
            (
                "freezeframe-repository".to_string(),
                BTreeMap::from([("password".to_string(), b"pw".to_vec())]),
            ),
            (
                "s3-credentials".to_string(),
                BTreeMap::from([
                    (ACCESS_KEY_ENV.to_string(), b"ak".to_vec()),
                    (SECRET_KEY_ENV.to_string(), b"sk".to_vec()),
                ]),
            ),
        ])
    }

    fn request(claim: &str) -> RestoreRequest {
        RestoreRequest {
            namespace: "shop-dr".into(),
            claim: claim.into(),
            snapshot_id: format!("snap-{claim}"),
        }
    }

    const SUMMARY: &str = r#"{"snapshotId":"snap","files":4,"bytes":2048,"durationSeconds":0.25}"#;

    #[tokio::test]
    async fn given_claims_when_filled_then_each_job_mounts_its_claim_in_its_namespace_and_nothing_stays() {
        let mut cluster = FakeCluster {
            secrets: secrets(),
            ..FakeCluster::default()
        };
        cluster
            .scripts
            .insert("data-0".into(), Script::Complete(SUMMARY.into()));
        cluster.scripts.insert(
            "data-1".into(),
            Script::Fail("BackoffLimitExceeded".into(), "error: no such snapshot".into()),
        );

        let results = fill_claims(
            &cluster,
            &spec(),
            &[request("data-0"), request("data-1")],
            &CancellationToken::new(),
        )
        .await;

        assert_eq!(results[0].as_ref().unwrap().bytes, 2048);
        let err = results[1].as_ref().unwrap_err();
        assert!(
            err.contains("BackoffLimitExceeded") && err.contains("no such snapshot"),
            "{err}"
        );
        let created = cluster.created.lock().unwrap().clone();
        let job = created.iter().find(|o| o.kind == TempKind::Job).unwrap();
        assert_eq!(job.namespace.as_deref(), Some("shop-dr"));
        let pod = &job.body["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-0");
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], false);
        let secret = created.iter().find(|o| o.kind == TempKind::Secret).unwrap();
        assert_eq!(secret.namespace.as_deref(), Some("shop-dr"));
        assert_eq!(secret.body["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(
            created[0].kind,
            TempKind::Job,
            "the Job first: the Secret is owned by it"
        );
        assert_eq!(secret.body["data"][PASSWORD_ENV], "cHc=");
        assert!(
            cluster.live.lock().unwrap().is_empty(),
            "{:?}",
            cluster.live.lock().unwrap().keys()
        );
    }

    #[tokio::test]
    async fn given_a_missing_password_key_when_filling_then_every_claim_fails_naming_the_secret_and_nothing_is_created()
     {
        let mut cluster = FakeCluster {
            secrets: secrets(),
            ..FakeCluster::default()
        };
        cluster.secrets.get_mut("freezeframe-repository").unwrap().clear();

        let results = fill_claims(&cluster, &spec(), &[request("data-0")], &CancellationToken::new()).await;

        let err = results[0].as_ref().unwrap_err();
        assert!(
            err.contains("freezeframe-repository") && err.contains("password"),
            "{err}"
        );
        assert!(cluster.created.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn given_cancellation_while_filling_then_the_claim_fails_as_cancelled_and_nothing_stays() {
        let mut cluster = FakeCluster {
            secrets: secrets(),
            ..FakeCluster::default()
        };
        cluster.scripts.insert("data-0".into(), Script::Hang);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.cancel();
        });

        let results = fill_claims(&cluster, &spec(), &[request("data-0")], &cancel).await;

        assert!(results[0].as_ref().unwrap_err().contains("cancelled"));
        assert!(cluster.live.lock().unwrap().is_empty());
    }
}
