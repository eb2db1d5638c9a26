//! Report: tell people how a run went where they look — signed webhooks, Kubernetes Events and
//! annotations — for backups, restores and invalid policies. The last step of a run:
//!
//! ```text
//! backup.started (webhooks) → … backup … → Events (each Namespace, the policy ConfigMap)
//!   → last-backup annotation (each Namespace) → backup.succeeded|partially_failed|failed (webhooks)
//! ```
//!
//! Everything here is best effort: a webhook that cannot be delivered, an Event or annotation that
//! cannot be written is printed on stderr (webhooks) or logged (Events, annotations) and never changes
//! the run's exit code. [`Reporter`] is the one entry point; [`Reporter::send`] delivers any event (prune
//! uses it), the other methods build the payload and Events of a backup or an invalid policy.
//!
//! - [`payload`]: event names and the JSON fields; [`webhook`]: body, headers, signature, retries;
//! - [`events`]: the Event builder shared with restore; [`annotations`]: the last-backup annotation;
//! - [`cluster`]: the cluster calls, behind one trait; [`fake`]: in-memory stand-ins for unit tests.
//!
//! RBAC (mirrored in `manifests/rbac.yaml`, `freezeframe-report`): `events` create and `namespaces` get,
//! patch in the backed-up namespaces; `events` create and `configmaps` get in freezeframe's namespace;
//! `secrets` get in freezeframe's namespace (webhook `secretRef`s); `namespaces` get on `kube-system`.

pub mod annotations;
pub mod cluster;
pub mod events;
#[cfg(test)]
pub mod fake;
pub mod payload;
pub mod restore_events;
pub mod summary;
pub mod webhook;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::backup::{ClusterIdentity, Manifest, Status};
use crate::clock::{Clock, SystemClock};
use crate::config::{PolicySource, Settings};
use crate::policy::{Policy, PolicySet, Webhook};
pub use cluster::{Cluster, KubeCluster};
pub use events::Involved;
pub use payload::{Payload, Phase, WebhookEvent};
pub use webhook::{Delivery, HttpTransport, Retry, Transport};

/// Why a report (or one part of it) was not made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A webhook's `secretRef` cannot be read without knowing freezeframe's namespace.
    #[error(
        "webhook {webhook}: {event} not delivered: its secretRef (Secret {secret}, key {key}) is read \
         from freezeframe's namespace, which is unknown; set FREEZEFRAME_NAMESPACE"
    )]
    NoNamespace {
        /// The webhook.
        webhook: String,
        /// The event.
        event: WebhookEvent,
        /// `secretRef.name`.
        secret: String,
        /// `secretRef.key`.
        key: String,
    },
    /// The Secret of a webhook's `secretRef` could not be read.
    #[error("webhook {webhook}: {event} not delivered: cannot read Secret {namespace}/{secret} (key {key})")]
    ReadSecret {
        /// The webhook.
        webhook: String,
        /// The event.
        event: WebhookEvent,
        /// freezeframe's namespace.
        namespace: String,
        /// `secretRef.name`.
        secret: String,
        /// `secretRef.key`.
        key: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Secret or its key does not exist.
    #[error(
        "webhook {webhook}: {event} not delivered: Secret {namespace}/{secret} {missing}; create it \
         with the HMAC key under {key:?}, or fix the webhook's secretRef"
    )]
    MissingKey {
        /// The webhook.
        webhook: String,
        /// The event.
        event: WebhookEvent,
        /// freezeframe's namespace.
        namespace: String,
        /// `secretRef.name`.
        secret: String,
        /// `secretRef.key`.
        key: String,
        /// `does not exist` or `has no key "k"`.
        missing: String,
    },
    /// The URL is not http(s) (validation refuses such policies; this guards the sender too).
    #[error("webhook {webhook}: {event} not delivered: url {url:?} is not http:// or https://")]
    Scheme {
        /// The webhook.
        webhook: String,
        /// The event.
        event: WebhookEvent,
        /// Its URL.
        url: String,
    },
    /// The receiver did not accept the delivery.
    #[error("webhook {webhook}: {event} not delivered to {url}: {reason}")]
    NotDelivered {
        /// The webhook.
        webhook: String,
        /// The event.
        event: WebhookEvent,
        /// Its URL.
        url: String,
        /// The last answer or why none came, and the attempts made.
        reason: String,
    },
    /// An Event or annotation could not be written.
    #[error("cannot {action}")]
    Kube {
        /// What was attempted.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// `err` and its causes, `: `-separated, for one stderr line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    crate::k8s::errors::chain(err)
}

/// One webhook's delivery of one event.
#[derive(Debug)]
pub struct Sent {
    /// The webhook's name.
    pub webhook: String,
    /// The delivery, or why it was not made or not accepted.
    pub result: Result<Delivery, Error>,
}

/// Sends webhooks and writes Events and annotations. Built once per process ([`Reporter::new`]);
/// unit tests build it from fakes ([`Reporter::with`]).
pub struct Reporter {
    transport: Arc<dyn Transport>,
    cluster: Arc<dyn Cluster>,
    clock: Arc<dyn Clock>,
    /// freezeframe's namespace: where `secretRef` Secrets are read.
    namespace: Option<String>,
    /// The policy ConfigMap, when policies come from one: backup Events are also raised on it.
    policy_configmap: Option<Involved>,
    retry: Retry,
    identity: OnceCell<Option<ClusterIdentity>>,
}

impl Reporter {
    /// The real reporter: HTTP deliveries, the cluster of `client`, the wall clock. `namespace` is
    /// freezeframe's (Settings' `namespace`).
    pub fn new(client: kube::Client, namespace: Option<String>) -> Reporter {
        Reporter::with(
            Arc::new(HttpTransport::new()),
            Arc::new(KubeCluster::new(client)),
            Arc::new(SystemClock),
            namespace,
        )
    }

    /// The real reporter for a process with `settings`: Secrets are read from freezeframe's namespace,
    /// and backup Events also go on the policy ConfigMap when policies come from one.
    pub fn for_settings(client: kube::Client, settings: &Settings) -> Reporter {
        let reporter = Reporter::new(client, settings.namespace.clone());
        match &settings.policy_source {
            PolicySource::ConfigMap { namespace, name } => reporter.with_policy_configmap(namespace, name),
            PolicySource::File(_) => reporter,
        }
    }

    /// A reporter over the given side effects.
    pub fn with(
        transport: Arc<dyn Transport>,
        cluster: Arc<dyn Cluster>,
        clock: Arc<dyn Clock>,
        namespace: Option<String>,
    ) -> Reporter {
        Reporter {
            transport,
            cluster,
            clock,
            namespace,
            policy_configmap: None,
            retry: Retry::default(),
            identity: OnceCell::new(),
        }
    }

    /// Also raise backup Events on the policy ConfigMap `namespace/name`.
    pub fn with_policy_configmap(mut self, namespace: &str, name: &str) -> Reporter {
        self.policy_configmap = Some(Involved::ConfigMap {
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
        self
    }

    /// Use another retry policy (tests).
    pub fn with_retry(mut self, retry: Retry) -> Reporter {
        self.retry = retry;
        self
    }

    /// This cluster's identity, read once; `None` (logged) when it cannot be read.
    pub async fn cluster_identity(&self) -> Option<ClusterIdentity> {
        self.identity
            .get_or_init(|| async {
                self.cluster
                    .identity()
                    .await
                    .inspect_err(
                        |e| tracing::warn!(error = %chain(e), "cannot read the cluster identity for reports"),
                    )
                    .ok()
            })
            .await
            .clone()
    }

    /// Deliver `event` with `payload` to those of `webhooks` whose `events` include it, all at once.
    /// Failures are printed on stderr (webhook, event, reason) and returned; they never fail the run.
    pub async fn send(&self, webhooks: &[Webhook], event: WebhookEvent, payload: &Payload) -> Vec<Sent> {
        let wanted = webhooks
            .iter()
            .filter(|w| w.events.iter().any(|e| e == event.name()));
        let sent = join_all(wanted.map(|w| async move {
            Sent {
                webhook: w.name.clone(),
                result: self.deliver(w, event, payload).await,
            }
        }))
        .await;
        for s in &sent {
            match &s.result {
                Ok(d) => {
                    tracing::info!(webhook = %s.webhook, %event, attempts = d.attempts, "webhook delivered")
                }
                Err(e) => {
                    tracing::warn!(webhook = %s.webhook, %event, error = %chain(e), "webhook not delivered");
                    eprintln!("warning: {}", chain(e));
                }
            }
        }
        sent
    }

    /// One delivery: the key, the body, the POST with retries.
    async fn deliver(
        &self,
        webhook: &Webhook,
        event: WebhookEvent,
        payload: &Payload,
    ) -> Result<Delivery, Error> {
        if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
            return Err(Error::Scheme {
                webhook: webhook.name.clone(),
                event,
                url: webhook.url.clone(),
            });
        }
        let key = self.key(webhook, event).await?;
        let delivery_id = Uuid::new_v4();
        let body = webhook::Body {
            event: event.name(),
            delivery_id: delivery_id.to_string(),
            time: self.clock.now(),
            payload,
        }
        .to_bytes();
        let out = webhook::Outgoing {
            webhook,
            event,
            delivery_id,
            body: &body,
            key: key.as_deref(),
        };
        let now = || self.clock.now();
        let delivery = webhook::deliver(self.transport.as_ref(), self.retry, &now, &out).await;
        if delivery.delivered() {
            Ok(delivery)
        } else {
            Err(Error::NotDelivered {
                webhook: webhook.name.clone(),
                event,
                url: webhook.url.clone(),
                reason: delivery.reason(),
            })
        }
    }

    /// The HMAC key of `webhook`'s `secretRef`, read from freezeframe's namespace; `None` without one.
    /// Read for each delivery (of `event`), so a fixed Secret takes effect at once.
    async fn key(&self, webhook: &Webhook, event: WebhookEvent) -> Result<Option<Vec<u8>>, Error> {
        let Some(r) = &webhook.secret_ref else {
            return Ok(None);
        };
        let Some(namespace) = &self.namespace else {
            return Err(Error::NoNamespace {
                webhook: webhook.name.clone(),
                event,
                secret: r.name.clone(),
                key: r.key.clone(),
            });
        };
        let missing = |missing: String| Error::MissingKey {
            webhook: webhook.name.clone(),
            event,
            namespace: namespace.clone(),
            secret: r.name.clone(),
            key: r.key.clone(),
            missing,
        };
        let data = self
            .cluster
            .secret(namespace, &r.name)
            .await
            .map_err(|source| Error::ReadSecret {
                webhook: webhook.name.clone(),
                event,
                namespace: namespace.clone(),
                secret: r.name.clone(),
                key: r.key.clone(),
                source,
            })?
            .ok_or_else(|| missing("does not exist".to_string()))?;
        match data.get(&r.key) {
            Some(key) if !key.is_empty() => Ok(Some(key.clone())),
            Some(_) => Err(missing(format!("has an empty key {:?}", r.key))),
            None => Err(missing(format!("has no key {:?}", r.key))),
        }
    }

    /// `backup.started` to the policy's webhooks; returns the start time it announced.
    pub async fn backup_started(&self, policy: &Policy) -> DateTime<Utc> {
        let started_at = self.clock.now();
        let payload = Payload::backup_started(policy, started_at, self.cluster_identity().await);
        self.send(&policy.webhooks, WebhookEvent::BackupStarted, &payload)
            .await;
        started_at
    }

    /// A backup that wrote its manifest: an Event on each backed-up Namespace and on the policy
    /// ConfigMap, the last-backup annotation on each Namespace, then the webhook of its status.
    pub async fn backup_finished(&self, policy: &Policy, m: &Manifest) {
        let message = summary::backup(m);
        self.backup_events(&m.namespaces, Some(m.status), &message).await;
        let patch = annotations::last_backup_patch(m);
        for ns in &m.namespaces {
            if let Err(source) = self.cluster.patch_namespace(ns, &patch).await {
                let e = Error::Kube {
                    action: format!("annotate namespace {ns} with its last backup"),
                    source,
                };
                tracing::warn!(policy = %policy.name, error = %chain(&e), "annotation not written");
            }
        }
        self.send(
            &policy.webhooks,
            WebhookEvent::backup_finished(m.status),
            &Payload::backup_finished(m),
        )
        .await;
    }

    /// A backup that failed before a manifest was written (`error`: the whole chain): a `BackupFailed`
    /// Event on each namespace the policy lists and on the policy ConfigMap, then `backup.failed`.
    pub async fn backup_error(&self, policy: &Policy, started_at: DateTime<Utc>, error: &str) {
        let listed = payload::listed_namespaces(policy);
        self.backup_events(&listed, None, &summary::backup_error(&policy.name, error))
            .await;
        let payload = Payload::backup_error(
            policy,
            started_at,
            self.clock.now(),
            self.cluster_identity().await,
            error,
        );
        self.send(&policy.webhooks, WebhookEvent::BackupFailed, &payload)
            .await;
    }

    /// The Events of a finished backup: one per namespace, one on the policy ConfigMap.
    async fn backup_events(&self, namespaces: &[String], status: Option<Status>, message: &str) {
        let now = self.clock.now();
        let targets = namespaces
            .iter()
            .map(|ns| Involved::Namespace(ns.clone()))
            .chain(self.policy_configmap.clone());
        for involved in targets {
            let uid = match self.cluster.uid(&involved).await {
                Ok(Some(uid)) => Some(uid),
                Ok(None) => {
                    tracing::warn!(object = ?involved, "gone: no backup Event on it");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(object = ?involved, error = %chain(&e), "cannot read its uid for the backup Event");
                    None
                }
            };
            let event = events::backup_event(&involved, uid.as_deref(), status, message, now);
            if let Err(source) = self
                .cluster
                .create_event(involved.event_namespace(), &event)
                .await
            {
                let e = Error::Kube {
                    action: format!("create the backup Event about {involved:?}"),
                    source,
                };
                tracing::warn!(error = %chain(&e), "backup Event not written");
            }
        }
    }

    /// The prune after a backup: `prune.completed` when it deleted something, `prune.failed` when some
    /// backup could not be pruned or the prune could not run at all (`error`: its whole chain). A prune
    /// that found nothing to delete sends nothing (it would be every run's noise).
    pub async fn prune_finished(
        &self,
        policy: &Policy,
        result: &Result<crate::retention::PruneReport, crate::retention::Error>,
    ) {
        let Some((event, payload)) = payload::prune(&policy.name, result, self.clock.now()) else {
            return;
        };
        let payload = Payload {
            cluster: self.cluster_identity().await,
            ..payload
        };
        self.send(&policy.webhooks, event, &payload).await;
    }

    /// `policy.invalid` for each of `names` (invalid policies of `set`), to every valid webhook whose
    /// `events` include it (an invalid policy has no valid webhook list of its own).
    pub async fn policies_invalid(&self, set: &PolicySet, names: &[String]) {
        if names.is_empty() || set.webhooks.is_empty() {
            return;
        }
        let cluster = self.cluster_identity().await;
        for name in names {
            let payload = Payload::policy_invalid(set, name, cluster.clone());
            self.send(&set.webhooks, WebhookEvent::PolicyInvalid, &payload)
                .await;
        }
    }
}

#[cfg(test)]
mod tests;
