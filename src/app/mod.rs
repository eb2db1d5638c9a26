//! The app layer: one module per command. Each turns its parsed arguments into one [`Invocation`]
//! (process settings, the policy set, the chosen policy, the store with its credentials, the cluster
//! client, the clock), resolved once, then calls the domain modules — which never import this layer.
//!
//! Input the user got wrong is a [`UsageError`]: [`crate::cli::run`] prints it and exits 2, in one place.

pub mod backup;
pub mod mover;
pub mod policies;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod run;
pub mod stored;
pub mod turn;
pub mod validate;

use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use tokio::sync::OnceCell;

use crate::clock::{Clock, SystemClock};
use crate::config::{ClientArgs, ConfigError, PolicySource, PolicySourceArgs, Settings};
use crate::policy::store::Loaded;
use crate::policy::{Backend, Error as PolicyError, Policy, PolicySet};
use crate::store::crypt::Identities;
use crate::store::{self, Layout, ObjectStore, s3::StaticCredentials};

/// Input the user got wrong (a flag, a policy name, a combination): printed as `error: <message>` and
/// exit code 2 by [`crate::cli::run`]. The message says what to change.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    message: String,
}

impl UsageError {
    /// A usage error saying `message`.
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError {
            message: message.into(),
        }
    }
}

/// Everything a command resolves once: settings from flags and the environment (read once), then,
/// when first asked for, the cluster client and the policies. The clock is injected here only.
pub struct Invocation {
    settings: Result<Settings, ConfigError>,
    clock: Arc<dyn Clock>,
    client: OnceCell<kube::Client>,
    policies: OnceCell<Loaded>,
}

impl Invocation {
    /// Resolve settings from `source` and `client` flags and the process environment (read here, once).
    pub fn from_process(source: &PolicySourceArgs, client: &ClientArgs) -> Invocation {
        Invocation::new(
            Settings::from_process_with_client(source, client),
            Arc::new(SystemClock),
        )
    }

    /// An invocation over already-resolved settings and a clock (tests inject both).
    pub fn new(settings: Result<Settings, ConfigError>, clock: Arc<dyn Clock>) -> Invocation {
        Invocation {
            settings,
            clock,
            client: OnceCell::new(),
            policies: OnceCell::new(),
        }
    }

    /// The process settings; an error when they could not be resolved (says which variable or flag).
    pub fn settings(&self) -> anyhow::Result<&Settings> {
        self.settings.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// freezeframe's own namespace, when known.
    pub fn namespace(&self) -> Option<&str> {
        self.settings.as_ref().ok()?.namespace.as_deref()
    }

    /// Now, by the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The clock, for domain code that takes one.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The cluster client from `KUBECONFIG` or the in-cluster config (with the retries and timeouts of
    /// [`crate::k8s`]), built once.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let client = self
            .client
            .get_or_try_init(crate::k8s::connect)
            .await
            .context("connecting to the cluster (KUBECONFIG or the in-cluster config)")?;
        Ok(client.clone())
    }

    /// The policies (a local file, or the ConfigMap with its run state), read once.
    pub async fn policies(&self) -> anyhow::Result<&Loaded> {
        self.policies
            .get_or_try_init(|| async {
                match &self.settings()?.policy_source {
                    PolicySource::File(path) => {
                        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::ReadFile {
                            path: path.display().to_string(),
                            source,
                        })?;
                        Ok(Loaded {
                            set: crate::policy::parse_str(&path.display().to_string(), &text),
                            last_scheduled: Default::default(),
                            last_results: Default::default(),
                        })
                    }
                    PolicySource::ConfigMap { namespace, name } => {
                        let api = kube::Api::namespaced(self.client().await?, namespace);
                        Ok(crate::policy::store::load(&api, namespace, name).await?)
                    }
                }
            })
            .await
    }

    /// The policy set, read once.
    pub async fn policy_set(&self) -> anyhow::Result<&PolicySet> {
        Ok(&self.policies().await?.set)
    }

    /// The valid policy `name`; a [`UsageError`] naming the valid ones otherwise (after printing why
    /// the invalid ones are invalid).
    pub async fn policy(&self, name: &str) -> anyhow::Result<&Policy> {
        let set = self.policy_set().await?;
        Ok(pick(set, name, self.now())?)
    }

    /// Open the store `backend` describes, with the S3 credentials of its `credentialsSecret` (read
    /// from freezeframe's namespace) when it names one, else the default AWS chain.
    pub async fn open_store(&self, backend: &Backend) -> anyhow::Result<(Arc<dyn ObjectStore>, Layout)> {
        let creds = match backend {
            Backend::S3(s3) => match &s3.credentials_secret {
                Some(name) => Some(self.s3_credentials(name).await?),
                None => None,
            },
            _ => None,
        };
        Ok(store::open(backend, creds.as_ref()).await)
    }

    /// Read S3 credentials from Secret `name` (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, optional
    /// `AWS_SESSION_TOKEN`) in freezeframe's namespace.
    pub(crate) async fn s3_credentials(&self, name: &str) -> anyhow::Result<StaticCredentials> {
        let namespace = self
            .namespace()
            .context("credentialsSecret needs freezeframe's namespace (FREEZEFRAME_NAMESPACE)")?;
        let secret = kube::Api::<Secret>::namespaced(self.client().await?, namespace)
            .get(name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{name}"))?;
        let data = secret.data.unwrap_or_default();
        let value = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned());
        Ok(StaticCredentials {
            access_key_id: value("AWS_ACCESS_KEY_ID")
                .with_context(|| format!("Secret {namespace}/{name} has no AWS_ACCESS_KEY_ID"))?,
            secret_access_key: value("AWS_SECRET_ACCESS_KEY")
                .with_context(|| format!("Secret {namespace}/{name} has no AWS_SECRET_ACCESS_KEY"))?,
            session_token: value("AWS_SESSION_TOKEN"),
        })
    }

    /// Read age identities from a Secret key in freezeframe's namespace (`encryption.identitySecret`).
    pub async fn identities(&self, secret: &crate::policy::SecretKeyRef) -> anyhow::Result<Identities> {
        let value = self
            .secret_value(&secret.name, &secret.key)
            .await
            .context("identitySecret")?;
        let namespace = self.namespace().unwrap_or_default();
        let origin = format!("Secret {namespace}/{} key {}", secret.name, secret.key);
        Ok(Identities::parse(&String::from_utf8_lossy(&value), origin)?)
    }

    /// The identities that decrypt an encrypted backup: the age identity file `file` when given, else
    /// the `encryption.identitySecret` of `policy`'s storage; `None` when neither is given (an
    /// unencrypted backup needs none; an encrypted one is then refused before anything is read).
    pub async fn decryption_identities(
        &self,
        file: Option<&std::path::Path>,
        policy: Option<&Policy>,
    ) -> anyhow::Result<Option<Arc<Identities>>> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the identity file {}", path.display()))?;
            let origin = format!("file {}", path.display());
            return Ok(Some(Arc::new(Identities::parse(&text, origin)?)));
        }
        let Some(secret) = policy
            .and_then(|p| p.storage.encryption.as_ref())
            .and_then(|e| e.identity_secret.as_ref())
        else {
            return Ok(None);
        };
        Ok(Some(Arc::new(self.identities(secret).await?)))
    }

    /// Key `key` of Secret `name` in freezeframe's namespace.
    pub async fn secret_value(&self, name: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        let namespace = self
            .namespace()
            .context("reading a Secret needs freezeframe's namespace (FREEZEFRAME_NAMESPACE)")?;
        let found = kube::Api::<Secret>::namespaced(self.client().await?, namespace)
            .get(name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{name}"))?;
        let mut data = found.data.unwrap_or_default();
        let value = data
            .remove(key)
            .with_context(|| format!("Secret {namespace}/{name} has no key {key}"))?;
        Ok(value.0)
    }
}

/// The valid policy `name` of `set`, or a [`UsageError`] naming the valid ones (printing first why the
/// invalid ones are invalid, as `validate` would).
pub fn pick<'a>(set: &'a PolicySet, name: &str, now: DateTime<Utc>) -> Result<&'a Policy, UsageError> {
    set.policy(name).ok_or_else(|| {
        if !set.is_valid() {
            eprint!("{}", validate::report(set, now).0);
        }
        UsageError::new(format!(
            "no valid policy named {name:?}; valid policies: {:?}",
            set.policies.iter().map(|p| &p.name).collect::<Vec<_>>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_unknown_policy_when_picked_then_usage_error_names_the_valid_ones() {
        let set = crate::policy::parse_str("redis.yaml", include_str!("../../policies/redis.yaml"));
        assert!(set.is_valid(), "{:?}", set.problems);
        let err = pick(&set, "nope", Utc::now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no valid policy named \"nope\"; valid policies: [\"redis-cache\"]"
        );
        assert_eq!(pick(&set, "redis-cache", Utc::now()).unwrap().name, "redis-cache");
    }
}
