//! The one Kubernetes seam: every `kube::Client` of the product is built by [`connect`], which owns the
//! retry and timeout policy of all API calls, and [`describe`] words API errors for people.
//!
//! The client is kube's default stack (kubeconfig or in-cluster config, TLS, auth) with three tower
//! layers around it, outermost first:
//! 1. [`tower::retry`] with [`retry::RetryPolicy`]: 429 (after `Retry-After`), 500, 502, 503, 504, a
//!    dropped or refused connection and an unanswered call are retried with jittered exponential backoff,
//!    at most [`ClientSettings::retries`] times per call and [`RUN_RETRY_BUDGET`] times per client (one
//!    client per run). Exec/attach upgrades and streamed bodies are never re-sent.
//! 2. A map of transport failures to [`Unreachable`], which names the server.
//! 3. [`tower::timeout`]: each attempt gets [`ClientSettings::timeout`] for the server's answer (the
//!    response head; a watch's or exec's stream is not cut by it).
//!
//! Creates are retried too: every object freezeframe creates has a name of its own run, so an
//! `AlreadyExists` after a retry is the first attempt's object, and the callers treat it as theirs.

pub mod errors;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use kube::client::ClientBuilder;
use tower::BoxError;
use tower::buffer::BufferLayer;
use tower::timeout::TimeoutLayer;
use tower::util::MapErrLayer;

pub use errors::describe;

use crate::config::{ConfigError, Env};

/// Retries of one failed call when `FREEZEFRAME_KUBE_RETRIES` is not set.
pub const DEFAULT_RETRIES: u32 = 5;
/// How long one call waits for the server's answer when `FREEZEFRAME_KUBE_TIMEOUT` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries one client (one run) may spend in all: a server failing most calls ends the run instead of
/// stretching it call by call.
pub const RUN_RETRY_BUDGET: u32 = 500;
/// Requests queued in front of the retry layer (it needs a cloneable service).
const QUEUE: usize = 1024;

/// Errors of building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `FREEZEFRAME_KUBE_*` settings are invalid.
    #[error("invalid Kubernetes client settings")]
    Settings(#[source] ConfigError),
    /// Neither a kubeconfig nor the in-cluster configuration was found.
    #[error("no Kubernetes configuration: set KUBECONFIG, or run in a pod with a service account")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client for {server}")]
    Build {
        /// The API server's URL.
        server: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The client's retry and timeout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Retries of one failed call (0: none).
    pub retries: u32,
    /// How long one attempt waits for the answer.
    pub timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            retries: DEFAULT_RETRIES,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl ClientSettings {
    /// `FREEZEFRAME_KUBE_RETRIES` and `FREEZEFRAME_KUBE_TIMEOUT` over the defaults. Pure.
    pub fn resolve(env: &Env) -> Result<ClientSettings, ConfigError> {
        let timeout = match env.kube_timeout.as_deref() {
            None => DEFAULT_TIMEOUT,
            Some(text) => crate::policy::values::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::BadLimit {
                    found: text.to_string(),
                    origin: "FREEZEFRAME_KUBE_TIMEOUT",
                    allowed: "a duration above zero with a unit, such as 30s or 2m",
                })?,
        };
        Ok(ClientSettings {
            retries: env.kube_retries.unwrap_or(DEFAULT_RETRIES),
            timeout,
        })
    }
}

/// The product's Kubernetes client: the kubeconfig (or in-cluster configuration) found as kubectl finds
/// it, with the settings of the `FREEZEFRAME_KUBE_*` environment.
pub async fn connect() -> Result<kube::Client> {
    let env = Env::from_process().map_err(Error::Settings)?;
    let settings = ClientSettings::resolve(&env).map_err(Error::Settings)?;
    let config = kube::Config::infer().await.map_err(Error::Infer)?;
    client(config, settings)
}

/// A client for `config` with the retry and timeout layers of `settings`. Needs a Tokio runtime (the
/// request queue runs as a task).
pub fn client(config: kube::Config, settings: ClientSettings) -> Result<kube::Client> {
    crate::install_crypto_provider();
    let server = config.cluster_url.to_string();
    let builder = ClientBuilder::try_from(config).map_err(|source| Error::Build {
        server: server.clone(),
        source,
    })?;
    let timeout = settings.timeout;
    let named = server.clone();
    let policy = retry::RetryPolicy::new(settings.retries, Arc::new(retry::Budget::new(RUN_RETRY_BUDGET)));
    Ok(builder
        .with_layer(&BufferLayer::new(QUEUE))
        .with_layer(&TimeoutLayer::new(timeout))
        .with_layer(&MapErrLayer::new(move |source: BoxError| -> BoxError {
            Box::new(Unreachable::new(&named, timeout, source))
        }))
        .with_layer(&tower::retry::RetryLayer::new(policy))
        .build())
}

/// A call that got no HTTP answer: the server did not answer in time, or the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// No answer within the timeout.
    #[error("no answer from the API server {server} within {}s", timeout.as_secs_f64())]
    Timeout {
        /// The server's URL.
        server: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The connection could not be made or broke.
    #[error("cannot reach the API server {server}")]
    Connection {
        /// The server's URL.
        server: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl Unreachable {
    fn new(server: &str, timeout: Duration, source: BoxError) -> Unreachable {
        if source.is::<tower::timeout::error::Elapsed>() {
            Unreachable::Timeout {
                server: server.to_string(),
                timeout,
            }
        } else {
            Unreachable::Connection {
                server: server.to_string(),
                source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn given_no_settings_then_the_defaults_apply() {
        assert_eq!(
            ClientSettings::resolve(&env(&[])).unwrap(),
            ClientSettings::default()
        );
    }

    #[test]
    fn given_retries_and_timeout_in_the_environment_then_they_are_used() {
        let s = ClientSettings::resolve(&env(&[
            ("FREEZEFRAME_KUBE_RETRIES", "0"),
            ("FREEZEFRAME_KUBE_TIMEOUT", "2s"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            ClientSettings {
                retries: 0,
                timeout: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn given_a_timeout_without_unit_then_the_error_names_the_variable_and_the_fix() {
        let e = ClientSettings::resolve(&env(&[("FREEZEFRAME_KUBE_TIMEOUT", "30")])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("FREEZEFRAME_KUBE_TIMEOUT") && text.contains("30s"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn given_a_server_that_never_answers_when_called_then_the_error_names_it_within_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let settings = ClientSettings {
            retries: 1,
            timeout: Duration::from_millis(300),
        };
        let client = client(config, settings).unwrap();
        let started = std::time::Instant::now();
        let err = client.apiserver_version().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let text = describe(&err);
        assert!(
            text.contains(&format!("no answer from the API server http://{addr}")),
            "{text}"
        );
        held.abort();
    }
}
