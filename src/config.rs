//! Process settings: environment (`FREEZEFRAME_*`, read with `envy`) and flags, flags winning, resolved
//! into one validated [`Settings`] value passed down explicitly (no global config).

use std::path::PathBuf;

use serde::Deserialize;

/// Default image of the mover Jobs when `FREEZEFRAME_IMAGE` is not set.
pub const DEFAULT_IMAGE: &str = "freezeframe:latest";
/// Where the service account's namespace is mounted in a pod.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Errors resolving settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable has an invalid value.
    #[error("invalid FREEZEFRAME_* environment")]
    Env(#[source] envy::Error),
    /// A `<namespace>/<name>` reference is malformed.
    #[error("found {found:?} in {origin}; allowed: <namespace>/<name> or <name>, both DNS labels/subdomains")]
    BadReference {
        /// The value.
        found: String,
        /// Flag or variable it came from.
        origin: &'static str,
    },
    /// A client rate limit is out of range.
    #[error("found {found} in {origin}; allowed: {allowed}")]
    BadLimit {
        /// The value.
        found: String,
        /// Flag or variable it came from.
        origin: &'static str,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The ConfigMap's namespace is unknown.
    #[error(
        "cannot tell which namespace holds the policy ConfigMap: set FREEZEFRAME_NAMESPACE, run in a pod, \
or pass --policies <namespace>/<name>"
    )]
    NoNamespace,
}

/// `FREEZEFRAME_*` variables.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Env {
    /// `FREEZEFRAME_NAMESPACE`: freezeframe's own namespace.
    pub namespace: Option<String>,
    /// `FREEZEFRAME_POLICY_CONFIGMAP`: `<ns>/<name>` or `<name>`.
    pub policy_configmap: Option<String>,
    /// `FREEZEFRAME_POLICY_FILE`: a local policy file.
    pub policy_file: Option<PathBuf>,
    /// `FREEZEFRAME_KUBE_QPS`: API calls a second of the export, sustained.
    pub kube_qps: Option<f64>,
    /// `FREEZEFRAME_KUBE_BURST`: API calls of the export allowed at once after a quiet spell.
    pub kube_burst: Option<u32>,
    /// `FREEZEFRAME_KUBE_RETRIES`: retries of one failed API call (see [`crate::k8s`]).
    pub kube_retries: Option<u32>,
    /// `FREEZEFRAME_KUBE_TIMEOUT`: how long one API call may wait for the server's answer (`30s`).
    pub kube_timeout: Option<String>,
    /// `FREEZEFRAME_IMAGE`: freezeframe's own image, run by the mover Jobs of `volumes.moveData`.
    pub image: Option<String>,
}

impl Env {
    /// Read `FREEZEFRAME_*` from the process environment.
    pub fn from_process() -> Result<Env, ConfigError> {
        envy::prefixed("FREEZEFRAME_")
            .from_env()
            .map_err(ConfigError::Env)
    }

    /// Read from explicit pairs (tests).
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Result<Env, ConfigError> {
        envy::prefixed("FREEZEFRAME_")
            .from_iter(pairs)
            .map_err(ConfigError::Env)
    }
}

/// Flags that choose where policies come from (flattened into subcommands).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicySourceArgs {
    /// Read policies from a local file (a PolicySet or a ConfigMap manifest).
    #[arg(long, value_name = "FILE", conflicts_with = "policies")]
    pub policy_file: Option<PathBuf>,
    /// Read policies from a ConfigMap `<namespace>/<name>` (default: freezeframe-policies in our namespace).
    #[arg(long, value_name = "NS/NAME")]
    pub policies: Option<String>,
}

/// Flags of the Kubernetes client's rate limit (flattened into commands that export).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// API calls a second the export makes, sustained [env: FREEZEFRAME_KUBE_QPS; default 50].
    #[arg(long, value_name = "QPS")]
    pub kube_qps: Option<f64>,
    /// API calls the export may make at once after a quiet spell [env: FREEZEFRAME_KUBE_BURST; default 100].
    #[arg(long, value_name = "N")]
    pub kube_burst: Option<u32>,
}

/// Client-side rate limit of API calls: a token bucket (see [`crate::export::limit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Tokens a second (> 0).
    pub qps: f64,
    /// Bucket size (>= 1).
    pub burst: u32,
}

impl Default for ClientLimits {
    /// 50 calls a second, bursts of 100: a 50-kind namespace lists in about a second without crowding
    /// the API server (client-go's default is 5/10, tuned for controllers that run all the time).
    fn default() -> Self {
        ClientLimits {
            qps: 50.0,
            burst: 100,
        }
    }
}

impl ClientLimits {
    /// Flags win over the environment, which wins over the defaults. Pure.
    pub fn resolve(env: &Env, flags: &ClientArgs) -> Result<ClientLimits, ConfigError> {
        let default = ClientLimits::default();
        let (qps, qps_origin) = match (flags.kube_qps, env.kube_qps) {
            (Some(q), _) => (q, "--kube-qps"),
            (None, Some(q)) => (q, "FREEZEFRAME_KUBE_QPS"),
            (None, None) => (default.qps, "the default"),
        };
        if !(qps.is_finite() && qps > 0.0) {
            return Err(ConfigError::BadLimit {
                found: qps.to_string(),
                origin: qps_origin,
                allowed: "a number of calls a second above 0",
            });
        }
        let (burst, burst_origin) = match (flags.kube_burst, env.kube_burst) {
            (Some(b), _) => (b, "--kube-burst"),
            (None, Some(b)) => (b, "FREEZEFRAME_KUBE_BURST"),
            (None, None) => (default.burst, "the default"),
        };
        if burst == 0 {
            return Err(ConfigError::BadLimit {
                found: burst.to_string(),
                origin: burst_origin,
                allowed: "a whole number of calls, 1 or more",
            });
        }
        Ok(ClientLimits { qps, burst })
    }
}

/// Where policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A local file.
    File(PathBuf),
    /// A ConfigMap in the cluster.
    ConfigMap {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// Validated process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// freezeframe's own namespace, when known.
    pub namespace: Option<String>,
    /// Where policies come from.
    pub policy_source: PolicySource,
    /// Rate limit of the export's API calls.
    pub client: ClientLimits,
    /// freezeframe's own image (`FREEZEFRAME_IMAGE`, default [`DEFAULT_IMAGE`]): the
    /// mover Jobs run it.
    pub image: String,
}

fn parse_ref(
    text: &str,
    origin: &'static str,
    default_ns: Option<&str>,
) -> Result<(String, String), ConfigError> {
    let bad = || ConfigError::BadReference {
        found: text.to_string(),
        origin,
    };
    let (ns, name) = match text.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name),
        None => (default_ns.map(str::to_string), text),
    };
    let label_ok = |s: &str| crate::policy::values::check_dns_label(s).is_ok();
    if crate::policy::values::check_dns_subdomain(name).is_err()
        || ns.as_deref().is_some_and(|n| !label_ok(n))
    {
        return Err(bad());
    }
    Ok((ns.ok_or(ConfigError::NoNamespace)?, name.to_string()))
}

impl Settings {
    /// Resolve settings: flags win over the environment; the namespace comes from
    /// `FREEZEFRAME_NAMESPACE`, else `sa_namespace` (the service-account file's content). Pure.
    pub fn resolve(
        env: &Env,
        flags: &PolicySourceArgs,
        client: &ClientArgs,
        sa_namespace: Option<&str>,
    ) -> Result<Settings, ConfigError> {
        let namespace = env
            .namespace
            .clone()
            .or_else(|| sa_namespace.map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty());
        let policy_source = if let Some(f) = &flags.policy_file {
            PolicySource::File(f.clone())
        } else if let Some(r) = &flags.policies {
            let (namespace, name) = parse_ref(r, "--policies", namespace.as_deref())?;
            PolicySource::ConfigMap { namespace, name }
        } else if let Some(r) = &env.policy_configmap {
            let (namespace, name) = parse_ref(r, "FREEZEFRAME_POLICY_CONFIGMAP", namespace.as_deref())?;
            PolicySource::ConfigMap { namespace, name }
        } else if let Some(f) = &env.policy_file {
            PolicySource::File(f.clone())
        } else {
            PolicySource::ConfigMap {
                namespace: namespace.clone().ok_or(ConfigError::NoNamespace)?,
                name: crate::policy::DEFAULT_CONFIGMAP.to_string(),
            }
        };
        Ok(Settings {
            namespace,
            policy_source,
            client: ClientLimits::resolve(env, client)?,
            image: env
                .image
                .clone()
                .filter(|i| !i.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        })
    }

    /// Resolve from the real environment and the service-account namespace file.
    pub fn from_process(flags: &PolicySourceArgs) -> Result<Settings, ConfigError> {
        Settings::from_process_with_client(flags, &ClientArgs::default())
    }

    /// [`Settings::from_process`] for commands that also take the client rate limit flags.
    pub fn from_process_with_client(
        flags: &PolicySourceArgs,
        client: &ClientArgs,
    ) -> Result<Settings, ConfigError> {
        let sa = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
        Settings::resolve(&Env::from_process()?, flags, client, sa.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn given_nothing_but_service_account_namespace_then_default_configmap_there() {
        let s = Settings::resolve(
            &Env::default(),
            &PolicySourceArgs::default(),
            &ClientArgs::default(),
            Some("dr\n"),
        )
        .unwrap();
        assert_eq!(
            s.policy_source,
            PolicySource::ConfigMap {
                namespace: "dr".into(),
                name: "freezeframe-policies".into()
            }
        );
        assert_eq!(s.namespace.as_deref(), Some("dr"));
    }

    #[test]
    fn given_env_and_flag_when_resolved_then_flag_wins() {
        let e = env(&[
            ("FREEZEFRAME_NAMESPACE", "ops"),
            ("FREEZEFRAME_POLICY_CONFIGMAP", "team/pols"),
        ]);
        let from_env = Settings::resolve(
            &e,
            &PolicySourceArgs::default(),
            &ClientArgs::default(),
            Some("ignored"),
        )
        .unwrap();
        assert_eq!(
            from_env.policy_source,
            PolicySource::ConfigMap {
                namespace: "team".into(),
                name: "pols".into()
            }
        );
        assert_eq!(from_env.namespace.as_deref(), Some("ops"));
        let flags = PolicySourceArgs {
            policies: Some("mine".into()),
            policy_file: None,
        };
        let from_flag = Settings::resolve(&e, &flags, &ClientArgs::default(), None).unwrap();
        assert_eq!(
            from_flag.policy_source,
            PolicySource::ConfigMap {
                namespace: "ops".into(),
                name: "mine".into()
            }
        );
        let file = PolicySourceArgs {
            policies: None,
            policy_file: Some("p.yaml".into()),
        };
        assert_eq!(
            Settings::resolve(&e, &file, &ClientArgs::default(), None)
                .unwrap()
                .policy_source,
            PolicySource::File("p.yaml".into())
        );
    }

    #[test]
    fn given_no_namespace_anywhere_then_error_says_how_to_set_it() {
        let err = Settings::resolve(
            &Env::default(),
            &PolicySourceArgs::default(),
            &ClientArgs::default(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("FREEZEFRAME_NAMESPACE"), "{err}");
    }

    #[test]
    fn given_no_limits_then_defaults_and_env_then_flag_wins() {
        let none = Settings::resolve(
            &Env::default(),
            &PolicySourceArgs::default(),
            &ClientArgs::default(),
            Some("x"),
        )
        .unwrap();
        assert_eq!(none.client, ClientLimits::default());
        let e = env(&[("FREEZEFRAME_KUBE_QPS", "2.5"), ("FREEZEFRAME_KUBE_BURST", "7")]);
        assert_eq!(
            ClientLimits::resolve(&e, &ClientArgs::default()).unwrap(),
            ClientLimits { qps: 2.5, burst: 7 }
        );
        let flags = ClientArgs {
            kube_qps: Some(100.0),
            kube_burst: None,
        };
        assert_eq!(
            ClientLimits::resolve(&e, &flags).unwrap(),
            ClientLimits { qps: 100.0, burst: 7 }
        );
    }

    #[test]
    fn given_zero_qps_or_burst_then_error_names_its_origin() {
        let e = env(&[("FREEZEFRAME_KUBE_QPS", "0")]);
        let err = ClientLimits::resolve(&e, &ClientArgs::default()).unwrap_err();
        assert!(err.to_string().contains("FREEZEFRAME_KUBE_QPS"), "{err}");
        let flags = ClientArgs {
            kube_qps: None,
            kube_burst: Some(0),
        };
        let err = ClientLimits::resolve(&Env::default(), &flags).unwrap_err();
        assert!(err.to_string().contains("--kube-burst"), "{err}");
    }

    #[test]
    fn given_malformed_reference_then_error_names_its_origin() {
        let flags = PolicySourceArgs {
            policies: Some("a/b/c".into()),
            policy_file: None,
        };
        let err = Settings::resolve(&Env::default(), &flags, &ClientArgs::default(), Some("x")).unwrap_err();
        assert!(err.to_string().contains("--policies"), "{err}");
    }
}
