//! Velero backup hook annotations (`pre.hook.backup.velero.io/*`, `post.hook.backup.velero.io/*`) read
//! from pods and turned into [`Invocation`]s, honoured when a policy sets `honorVeleroAnnotations`.
//!
//! Semantics follow Velero: `command` is a JSON argv array (any other text is a one-element argv, run
//! without a shell), `on-error` is `Continue` or `Fail` (default `Fail`, our `abort`), `timeout` a Go
//! duration (default 30s), and hooks run on Running pods whether or not they are ready. One difference:
//! without a `container` annotation the container is chosen like for rules (the only one, or the
//! default-container annotation); Velero's "first container" would silently pick a sidecar.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::exec::Target;
use super::plan::{Invocation, Phase};
use super::select;
use crate::policy::values::parse_duration;
use crate::policy::{Action, Exec, OnError};

/// Velero's default hook timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Step name of the Velero pre hooks.
pub const PRE_STEP: &str = "Velero pre.hook.backup.velero.io annotations";
/// Step name of the Velero post hooks.
pub const POST_STEP: &str = "Velero post.hook.backup.velero.io annotations";

/// Errors of reading the annotations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An annotation value is not valid.
    #[error("pod {pod}: annotation {annotation}: found {found}; allowed: {allowed}")]
    Invalid {
        /// `namespace/pod`.
        pod: String,
        /// The annotation key.
        annotation: String,
        /// What was written.
        found: String,
        /// What is accepted.
        allowed: &'static str,
    },
    /// No container could be chosen for the pod's hook.
    #[error("pod {pod}: Velero {phase} hook")]
    Container {
        /// `namespace/pod`.
        pod: String,
        /// `pre` or `post`.
        phase: Phase,
        /// Why.
        #[source]
        source: select::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The hooks found on a set of pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VeleroHooks {
    /// One invocation per pod with a pre hook.
    pub pre: Vec<Invocation>,
    /// One invocation per pod with a post hook.
    pub post: Vec<Invocation>,
}

/// Read the hook annotations of `pods` (pods that are not Running are left out, as Velero does).
pub fn hooks(pods: &[Pod]) -> Result<VeleroHooks> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    let mut out = VeleroHooks::default();
    for pod in pods {
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if let Some(inv) = hook(pod, Phase::Pre)? {
            out.pre.push(inv);
        }
        if let Some(inv) = hook(pod, Phase::Post)? {
            out.post.push(inv);
        }
    }
    Ok(out)
}

fn hook(pod: &Pod, phase: Phase) -> Result<Option<Invocation>> {
    let prefix = format!("{phase}.hook.backup.velero.io");
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let get = |name: &str| {
        let key = format!("{prefix}/{name}");
        annotations.get(&key).map(|v| (key, v.trim().to_owned()))
    };
    let Some((command_key, command)) = get("command") else {
        return Ok(None);
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pod_ref = format!("{namespace}/{name}");
    let invalid = |annotation: String, found: &str, allowed| Error::Invalid {
        pod: pod_ref.clone(),
        annotation,
        found: format!("{found:?}"),
        allowed,
    };
    let argv: Vec<String> = if command.starts_with('[') {
        serde_json::from_str(&command).map_err(|_| {
            invalid(
                command_key.clone(),
                &command,
                "a JSON array of strings, or a plain command",
            )
        })?
    } else {
        vec![command.clone()]
    };
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid(command_key, &command, "a non-empty command"));
    }
    let on_error = match get("on-error") {
        None => OnError::Abort,
        Some((_, v)) if v.eq_ignore_ascii_case("fail") => OnError::Abort,
        Some((_, v)) if v.eq_ignore_ascii_case("continue") => OnError::Continue,
        Some((k, v)) => return Err(invalid(k, &v, "Continue or Fail")),
    };
    let timeout = match get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some((k, v)) => {
            parse_duration(&v).map_err(|_| invalid(k, &v, "a duration with units, such as 30s or 2m"))?
        }
    };
    let explicit = get("container").map(|(_, c)| c);
    let container =
        select::choose_container(pod, explicit.as_deref()).map_err(|source| Error::Container {
            pod: pod_ref.clone(),
            phase,
            source,
        })?;
    Ok(Some(Invocation {
        target: Target::new(namespace, name, container),
        action: Action {
            exec: Exec::Argv(argv),
            timeout,
            on_error,
            run_in_single_pod: false,
            background: false,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, containers: &[&str], annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "db", "annotations": annotations},
            "spec": {"containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    #[test]
    fn given_velero_annotations_then_pre_and_post_invocations_with_their_settings() {
        let p = pod(
            "mysql-0",
            &["mysql", "istio-proxy"],
            json!({
                "pre.hook.backup.velero.io/container": "mysql",
                "pre.hook.backup.velero.io/command": r#"["/bin/sh", "-c", "mysql -e 'FLUSH TABLES'"]"#,
                "pre.hook.backup.velero.io/on-error": "Continue",
                "pre.hook.backup.velero.io/timeout": "2m",
                "post.hook.backup.velero.io/container": "mysql",
                "post.hook.backup.velero.io/command": "/unfreeze",
            }),
        );
        let h = hooks(&[p]).unwrap();
        assert_eq!(h.pre.len(), 1);
        let pre = &h.pre[0];
        assert_eq!(pre.target, Target::new("db", "mysql-0", "mysql"));
        assert_eq!(
            pre.action.exec,
            Exec::Argv(vec![
                "/bin/sh".into(),
                "-c".into(),
                "mysql -e 'FLUSH TABLES'".into()
            ])
        );
        assert_eq!(pre.action.on_error, OnError::Continue);
        assert_eq!(pre.action.timeout, Duration::from_secs(120));
        let post = &h.post[0];
        assert_eq!(post.action.exec, Exec::Argv(vec!["/unfreeze".into()]));
        assert_eq!(post.action.on_error, OnError::Abort);
        assert_eq!(post.action.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn given_velero_hook_on_pod_with_sidecar_and_no_container_then_error_lists_containers() {
        let p = pod(
            "mysql-0",
            &["mysql", "istio-proxy"],
            json!({"pre.hook.backup.velero.io/command": "[\"true\"]"}),
        );
        let err = hooks(&[p]).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("[mysql, istio-proxy]"), "{chain}");
    }

    #[test]
    fn given_bad_on_error_or_unitless_timeout_then_invalid_names_the_annotation() {
        let p = pod(
            "a",
            &["m"],
            json!({"pre.hook.backup.velero.io/command": "true", "pre.hook.backup.velero.io/on-error": "Ignore"}),
        );
        assert!(hooks(&[p]).unwrap_err().to_string().contains("on-error"));
        let p = pod(
            "a",
            &["m"],
            json!({"pre.hook.backup.velero.io/command": "true", "pre.hook.backup.velero.io/timeout": "30"}),
        );
        assert!(
            hooks(&[p])
                .unwrap_err()
                .to_string()
                .contains("timeout: found \"30\"")
        );
    }

    #[test]
    fn given_pod_without_annotations_then_no_hooks() {
        assert_eq!(
            hooks(&[pod("a", &["m"], json!({}))]).unwrap(),
            VeleroHooks::default()
        );
    }
}
