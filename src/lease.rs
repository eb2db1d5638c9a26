//! The run Lease (`coordination.k8s.io/v1`): one CronJob tick at a time, even when a manual Job
//! (`kubectl create job --from=cronjob/freezeframe`) and a scheduled one start together.
//!
//! Whether we may take the Lease is the pure [`decide`]; the kube functions only read it, write it with
//! its `resourceVersion` (a 409 means someone else wrote first: read again and decide again) and keep
//! renewing it while backups run. If a renewal finds the Lease taken by someone else, the run's
//! cancellation token is cancelled: work stops, the thaw runs, nothing runs twice in parallel.
//!
//! RBAC: `get`, `create`, `update` on `leases` (coordination.k8s.io) in freezeframe's namespace.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

/// The Lease's name.
pub const LEASE_NAME: &str = "freezeframe-run";
/// How long a holder that stops renewing keeps the Lease (a crashed run blocks the next tick this long).
pub const LEASE_DURATION: Duration = Duration::from_secs(300);
/// How often a running holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Attempts when writes conflict (409) before giving up.
const ATTEMPTS: usize = 5;

/// Why the Lease could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused a read or write (other than a conflict we retry).
    #[error("cannot {action} Lease {namespace}/{LEASE_NAME}")]
    Kube {
        /// What was attempted.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Every attempt lost a write race.
    #[error("Lease {namespace}/{LEASE_NAME} kept changing under us ({ATTEMPTS} conflicting writes)")]
    Contended {
        /// Namespace.
        namespace: String,
    },
}

/// What to do with the Lease as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease exists: create it.
    Create,
    /// Free (never held, released, or expired): take it over.
    Acquire,
    /// We already hold it: renew it.
    Renew,
    /// Another holder renewed it recently: leave it alone.
    Busy {
        /// Who holds it.
        holder: String,
        /// When it expires unless renewed.
        expires_at: DateTime<Utc>,
    },
}

fn to_chrono(t: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.0.as_microsecond())
}

fn to_micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Decide what `me` may do with `lease` at `now`. Pure. A Lease is held while its holder identity is set
/// and `renewTime` (else `acquireTime`) plus `leaseDurationSeconds` lies after `now`; one without either
/// time or duration is treated as expired.
pub fn decide(lease: Option<&Lease>, me: &str, now: DateTime<Utc>) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() {
        return LeaseDecision::Acquire;
    }
    if holder == me {
        return LeaseDecision::Renew;
    }
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .and_then(to_chrono);
    let expires_at = last
        .zip(spec.lease_duration_seconds)
        .map(|(t, secs)| t + chrono::Duration::seconds(i64::from(secs.max(0))));
    match expires_at {
        Some(expires_at) if expires_at > now => LeaseDecision::Busy { holder, expires_at },
        _ => LeaseDecision::Acquire,
    }
}

/// The Lease `me` writes for `decision` (from `current`, keeping its `resourceVersion`). Pure.
pub fn held_by(current: Option<&Lease>, me: &str, decision: &LeaseDecision, now: DateTime<Utc>) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.to_string()),
            ..Default::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_else(LeaseSpec::default);
    if *decision != LeaseDecision::Renew {
        spec.acquire_time = Some(to_micro(now));
        if *decision == LeaseDecision::Acquire {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    spec.renew_time = Some(to_micro(now));
    lease.spec = Some(spec);
    lease
}

/// This process's holder identity: the pod name (`HOSTNAME`) plus a random suffix, so two processes in
/// one pod (or a restarted container) never mistake each other for the holder.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "freezeframe".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// A Lease we hold; [`Held::release`] it when done.
#[derive(Debug)]
pub struct Held {
    api: Api<Lease>,
    namespace: String,
    me: String,
    renewal: tokio::task::JoinHandle<()>,
}

/// The outcome of [`acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// We hold it; renewals run until released.
    Held(Box<Held>),
    /// Someone else does.
    Busy {
        /// Who.
        holder: String,
        /// Until when, unless renewed.
        expires_at: DateTime<Utc>,
    },
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Write the Lease as `me` if [`decide`] allows it. `Ok(Ok(()))`: we hold it now.
async fn try_take(api: &Api<Lease>, namespace: &str, me: &str) -> Result<Result<(), Acquired>, Error> {
    let err = |action, source| Error::Kube {
        action,
        namespace: namespace.to_string(),
        source,
    };
    for _ in 0..ATTEMPTS {
        let current = match api.get(LEASE_NAME).await {
            Ok(l) => Some(l),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(err("read", e)),
        };
        let now = Utc::now();
        let decision = decide(current.as_ref(), me, now);
        if let LeaseDecision::Busy { holder, expires_at } = decision {
            return Ok(Err(Acquired::Busy { holder, expires_at }));
        }
        let lease = held_by(current.as_ref(), me, &decision, now);
        let written = match decision {
            LeaseDecision::Create => api.create(&PostParams::default(), &lease).await,
            _ => api.replace(LEASE_NAME, &PostParams::default(), &lease).await,
        };
        match written {
            Ok(_) => return Ok(Ok(())),
            // Someone wrote between our read and write: read again and decide again.
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(err("write", e)),
        }
    }
    Err(Error::Contended {
        namespace: namespace.to_string(),
    })
}

/// Take the run Lease in `namespace`, or report who holds it. While held, a task renews it every
/// [`RENEW_EVERY`]; if a renewal finds another holder (we were too slow and lost it), `lost` is
/// cancelled so the run stops.
pub async fn acquire(
    client: &kube::Client,
    namespace: &str,
    me: &str,
    lost: CancellationToken,
) -> Result<Acquired, Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    if let Err(busy) = try_take(&api, namespace, me).await? {
        return Ok(busy);
    }
    tracing::info!(lease = LEASE_NAME, holder = me, "run lease acquired");
    let renewal = {
        let (api, namespace, me) = (api.clone(), namespace.to_string(), me.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                match try_take(&api, &namespace, &me).await {
                    Ok(Ok(())) => tracing::debug!(holder = %me, "run lease renewed"),
                    Ok(Err(_)) => {
                        tracing::error!(holder = %me, "run lease taken by another run; stopping this run");
                        lost.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the run lease failed; retrying"),
                }
            }
        })
    };
    Ok(Acquired::Held(Box::new(Held {
        api,
        namespace: namespace.to_string(),
        me: me.to_string(),
        renewal,
    })))
}

impl Held {
    /// Stop renewing and clear the holder, so the next tick need not wait for expiry. A Lease someone
    /// else took meanwhile is left alone.
    pub async fn release(self) -> Result<(), Error> {
        self.renewal.abort();
        let err = |action, source| Error::Kube {
            action,
            namespace: self.namespace.clone(),
            source,
        };
        for _ in 0..ATTEMPTS {
            let mut lease = self.api.get(LEASE_NAME).await.map_err(|e| err("read", e))?;
            if decide(Some(&lease), &self.me, Utc::now()) != LeaseDecision::Renew {
                return Ok(());
            }
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            match self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
                Ok(_) => {
                    tracing::info!(lease = LEASE_NAME, "run lease released");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(err("release", e)),
            }
        }
        Err(Error::Contended {
            namespace: self.namespace.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<&str>, secs: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(|r| to_micro(t(r))),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn given_no_lease_when_deciding_then_create() {
        assert_eq!(
            decide(None, "me", t("2026-01-01T00:00:00Z")),
            LeaseDecision::Create
        );
    }

    #[test]
    fn given_other_holder_renewed_recently_when_deciding_then_busy_until_expiry() {
        let l = lease(Some("other"), Some("2026-01-01T00:00:00Z"), Some(300));
        assert_eq!(
            decide(Some(&l), "me", t("2026-01-01T00:04:59Z")),
            LeaseDecision::Busy {
                holder: "other".into(),
                expires_at: t("2026-01-01T00:05:00Z")
            }
        );
    }

    #[test]
    fn given_other_holder_expired_when_deciding_then_acquire() {
        let l = lease(Some("other"), Some("2026-01-01T00:00:00Z"), Some(300));
        assert_eq!(
            decide(Some(&l), "me", t("2026-01-01T00:05:00Z")),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn given_released_or_timeless_lease_when_deciding_then_acquire() {
        let released = lease(None, Some("2026-01-01T00:00:00Z"), Some(300));
        let timeless = lease(Some("other"), None, Some(300));
        let now = t("2026-01-01T00:01:00Z");
        assert_eq!(decide(Some(&released), "me", now), LeaseDecision::Acquire);
        assert_eq!(decide(Some(&timeless), "me", now), LeaseDecision::Acquire);
    }

    #[test]
    fn given_our_own_lease_when_deciding_then_renew() {
        let l = lease(Some("me"), Some("2026-01-01T00:00:00Z"), Some(300));
        assert_eq!(
            decide(Some(&l), "me", t("2026-01-01T00:01:00Z")),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn given_expired_lease_when_taken_then_holder_times_and_transitions_are_set_and_version_kept() {
        let l = lease(Some("other"), Some("2026-01-01T00:00:00Z"), Some(300));
        let now = t("2026-01-01T01:00:00Z");
        let taken = held_by(Some(&l), "me", &LeaseDecision::Acquire, now);
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(300));
        assert_eq!(spec.renew_time.as_ref().and_then(to_chrono), Some(now));
        assert_eq!(spec.acquire_time.as_ref().and_then(to_chrono), Some(now));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn given_renewal_then_acquire_time_is_kept_and_renew_time_moves() {
        let mut l = lease(Some("me"), Some("2026-01-01T00:00:00Z"), Some(300));
        l.spec.as_mut().unwrap().acquire_time = Some(to_micro(t("2026-01-01T00:00:00Z")));
        let now = t("2026-01-01T00:01:00Z");
        let spec = held_by(Some(&l), "me", &LeaseDecision::Renew, now).spec.unwrap();
        assert_eq!(
            spec.acquire_time.as_ref().and_then(to_chrono),
            Some(t("2026-01-01T00:00:00Z"))
        );
        assert_eq!(spec.renew_time.as_ref().and_then(to_chrono), Some(now));
    }
}
