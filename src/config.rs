//! Process settings: environment (`FREEZEFRAME_*`, read with `envy`) and flags, flags winning, resolved
//! into one validated [`Settings`] value passed down explicitly (no global config).

use std::path::PathBuf;

use serde::Deserialize;

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
    /// The ConfigMap's namespace is unknown.
    #[error(
        "cannot tell which namespace holds the policy ConfigMap: set FREEZEFRAME_NAMESPACE, run in a pod, \
or pass --policies <namespace>/<name>"
    )]
    NoNamespace,
}

/// `FREEZEFRAME_*` variables.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Env {
    /// `FREEZEFRAME_NAMESPACE`: freezeframe's own namespace.
    pub namespace: Option<String>,
    /// `FREEZEFRAME_POLICY_CONFIGMAP`: `<ns>/<name>` or `<name>`.
    pub policy_configmap: Option<String>,
    /// `FREEZEFRAME_POLICY_FILE`: a local policy file.
    pub policy_file: Option<PathBuf>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// freezeframe's own namespace, when known.
    pub namespace: Option<String>,
    /// Where policies come from.
    pub policy_source: PolicySource,
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
        })
    }

    /// Resolve from the real environment and the service-account namespace file.
    pub fn from_process(flags: &PolicySourceArgs) -> Result<Settings, ConfigError> {
        let sa = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
        Settings::resolve(&Env::from_process()?, flags, sa.as_deref())
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
        let s = Settings::resolve(&Env::default(), &PolicySourceArgs::default(), Some("dr\n")).unwrap();
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
        let from_env = Settings::resolve(&e, &PolicySourceArgs::default(), Some("ignored")).unwrap();
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
        let from_flag = Settings::resolve(&e, &flags, None).unwrap();
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
            Settings::resolve(&e, &file, None).unwrap().policy_source,
            PolicySource::File("p.yaml".into())
        );
    }

    #[test]
    fn given_no_namespace_anywhere_then_error_says_how_to_set_it() {
        let err = Settings::resolve(&Env::default(), &PolicySourceArgs::default(), None).unwrap_err();
        assert!(err.to_string().contains("FREEZEFRAME_NAMESPACE"), "{err}");
    }

    #[test]
    fn given_malformed_reference_then_error_names_its_origin() {
        let flags = PolicySourceArgs {
            policies: Some("a/b/c".into()),
            policy_file: None,
        };
        let err = Settings::resolve(&Env::default(), &flags, Some("x")).unwrap_err();
        assert!(err.to_string().contains("--policies"), "{err}");
    }
}
