//! From a policy's rules to a [`Plan`]: ordered steps, each a set of invocations (pod, container,
//! action) that run concurrently. Pods are selected once, before the freeze starts, so a wrong rule
//! (no pods, ambiguous container) fails before any pod is touched.
//!
//! Order: pre = `rules.pre`, then the `preExecRule` items (already appended by validation), then Velero
//! pre annotations; post = Velero post annotations, then `rules.post` and `postExecRule` items (the
//! innermost freeze is thawed first). Each action of a rule item is one step.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::exec::{Target, expand_wait_cmd};
use super::{select, velero};
use crate::policy::{Action, Exec, HookRule, OnNoPods, Policy, RuleOrigin};
use freezeframe_selector::query as selector_query;

/// Errors of planning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Pods or containers could not be selected for a rule.
    #[error("{rule}")]
    Select {
        /// The rule (`rules.pre[0]`, ...).
        rule: String,
        /// Why.
        #[source]
        source: select::Error,
    },
    /// A rule with `onNoPods: fail` matched no usable pod.
    #[error(
        "{rule}: no usable pod matches `{selector}` in namespaces [{}]{}",
        namespaces.join(", "),
        if excluded.is_empty() { String::new() } else { format!(" (excluded: {})", excluded.join("; ")) }
    )]
    NoPods {
        /// The rule.
        rule: String,
        /// Its selector, in query syntax.
        selector: String,
        /// Where it looked.
        namespaces: Vec<String>,
        /// Matching pods left out, with why.
        excluded: Vec<String>,
    },
    /// A Velero hook annotation is invalid.
    #[error(transparent)]
    Velero(#[from] velero::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One action on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Where.
    pub target: Target,
    /// What (its timeout, onError, background flag).
    pub action: Action,
}

impl Invocation {
    /// The argv sent to the API server: `sh -c <value>` for shell commands, with `${WAIT_CMD}` expanded
    /// for held locks.
    pub fn argv(&self) -> Vec<String> {
        let argv = match &self.action.exec {
            Exec::Shell(s) => vec!["sh".to_owned(), "-c".to_owned(), s.clone()],
            Exec::Argv(a) => a.clone(),
        };
        if self.action.background {
            expand_wait_cmd(&argv)
        } else {
            argv
        }
    }

    /// The command as the user wrote it, for reports.
    pub fn command_text(&self) -> String {
        match &self.action.exec {
            Exec::Shell(s) => s.clone(),
            Exec::Argv(a) => serde_json::to_string(a).unwrap_or_default(),
        }
    }
}

/// Invocations that run at the same time (one action of a rule item, over its pods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Where it was written (`rules.pre[0].actions[1]`, `Stork Rule x rules[0].actions[0]`, ...).
    pub name: String,
    /// What runs.
    pub invocations: Vec<Invocation>,
}

/// A rule left out because it matched no pod and says `onNoPods: skip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The rule.
    pub rule: String,
    /// Why.
    pub reason: String,
}

/// What a freeze runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Freeze steps, in order.
    pub pre: Vec<Step>,
    /// Thaw steps, in order.
    pub post: Vec<Step>,
    /// Rules skipped (empty selection with `onNoPods: skip`).
    pub skipped: Vec<Skipped>,
    /// The freeze budget (`rules.maxFreeze`), from the first pre action to the thaw; `None` = unbounded
    /// (plans not built from a policy).
    pub max_freeze: Option<Duration>,
}

impl Plan {
    /// True when nothing runs.
    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }
}

/// Whether a rule freezes or thaws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Freeze.
    Pre,
    /// Thaw.
    Post,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        })
    }
}

/// How a rule is named in reports and errors.
pub fn rule_name(phase: Phase, origin: &RuleOrigin) -> String {
    match origin {
        RuleOrigin::Policy { index } => format!("rules.{phase}[{index}]"),
        RuleOrigin::StorkRule { name, index } => format!("Stork Rule `{name}` rules[{index}]"),
    }
}

/// The steps of one rule over already-listed `pods` (`namespaces` only names where they were looked
/// for). `Ok(Err(skipped))` when the selection is empty and the rule says `onNoPods: skip`.
pub fn rule_steps(
    phase: Phase,
    rule: &HookRule,
    pods: &[Pod],
    namespaces: &[String],
) -> Result<std::result::Result<Vec<Step>, Skipped>> {
    let name = rule_name(phase, &rule.origin);
    let selection =
        select::select_from(pods, rule.container.as_deref(), rule.include_not_ready).map_err(|source| {
            Error::Select {
                rule: name.clone(),
                source,
            }
        })?;
    if selection.targets.is_empty() {
        let selector = selector_text(&rule.pod_selector);
        let excluded: Vec<String> = selection
            .excluded
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        return match rule.on_no_pods {
            OnNoPods::Fail => Err(Error::NoPods {
                rule: name,
                selector,
                namespaces: namespaces.to_vec(),
                excluded,
            }),
            OnNoPods::Skip => Ok(Err(Skipped {
                reason: format!(
                    "no usable pod matches `{selector}` in namespaces [{}]",
                    namespaces.join(", ")
                ),
                rule: name,
            })),
        };
    }
    let steps = rule
        .actions
        .iter()
        .enumerate()
        .map(|(j, action)| {
            let step = format!("{name}.actions[{j}]");
            let targets: Vec<&Target> = if action.run_in_single_pod {
                // Selection is sorted by namespace/name: the first pod is a stable choice.
                let chosen = &selection.targets[0];
                tracing::info!(step = %step, pod = %chosen.pod_ref(), "runInSinglePod: runs on the first pod by namespace/name");
                vec![chosen]
            } else {
                selection.targets.iter().collect()
            };
            Step {
                name: step,
                invocations: targets
                    .into_iter()
                    .map(|t| Invocation {
                        target: t.clone(),
                        action: action.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Ok(steps))
}

fn selector_text(sel: &LabelSelector) -> String {
    let q = selector_query(sel);
    if q.is_empty() { "(all pods)".into() } else { q }
}

impl Plan {
    fn add_rule(&mut self, phase: Phase, rule: &HookRule, pods: &[Pod], namespaces: &[String]) -> Result<()> {
        match rule_steps(phase, rule, pods, namespaces)? {
            Ok(steps) => match phase {
                Phase::Pre => self.pre.extend(steps),
                Phase::Post => self.post.extend(steps),
            },
            Err(skipped) => {
                tracing::info!(rule = %skipped.rule, reason = %skipped.reason, "rule skipped (onNoPods: skip)");
                self.skipped.push(skipped);
            }
        }
        Ok(())
    }
}

/// Plan a policy's hooks: resolve namespaces, select pods for every rule, and (with
/// `honorVeleroAnnotations`) read Velero hook annotations of the policy's pods.
pub async fn plan(client: &kube::Client, policy: &Policy) -> Result<Plan> {
    let select_err = |rule: &str| {
        let rule = rule.to_owned();
        move |source| Error::Select { rule, source }
    };
    let namespaces = select::namespaces(client, &policy.namespaces)
        .await
        .map_err(select_err("namespaces"))?;
    let mut plan = Plan {
        max_freeze: Some(policy.max_freeze),
        ..Plan::default()
    };
    for rule in &policy.pre {
        let pods = select::list_pods(client, &namespaces, &rule.pod_selector)
            .await
            .map_err(select_err(&rule_name(Phase::Pre, &rule.origin)))?;
        plan.add_rule(Phase::Pre, rule, &pods, &namespaces)?;
    }
    if policy.honor_velero_annotations {
        let selector = policy.selector.clone().unwrap_or_default();
        let pods = select::list_pods(client, &namespaces, &selector)
            .await
            .map_err(select_err("Velero hook annotations"))?;
        let hooks = velero::hooks(&pods)?;
        if !hooks.pre.is_empty() {
            plan.pre.push(Step {
                name: velero::PRE_STEP.into(),
                invocations: hooks.pre,
            });
        }
        if !hooks.post.is_empty() {
            plan.post.push(Step {
                name: velero::POST_STEP.into(),
                invocations: hooks.post,
            });
        }
    }
    for rule in &policy.post {
        let pods = select::list_pods(client, &namespaces, &rule.pod_selector)
            .await
            .map_err(select_err(&rule_name(Phase::Post, &rule.origin)))?;
        plan.add_rule(Phase::Post, rule, &pods, &namespaces)?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::values::selector_from_labels;
    use crate::policy::{DEFAULT_ACTION_TIMEOUT, OnError};
    use serde_json::json;

    fn pods(n: usize) -> Vec<Pod> {
        (0..n)
            .rev()
            .map(|i| {
                serde_json::from_value(json!({
                    "metadata": {"name": format!("db-{i}"), "namespace": "db", "labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "db"}]},
                    "status": {"phase": "Running", "containerStatuses": [
                        {"name": "db", "ready": true, "restartCount": 0, "image": "x", "imageID": "x"}]}
                }))
                .unwrap()
            })
            .collect()
    }

    fn action(cmd: &str, single: bool) -> Action {
        Action {
            exec: Exec::Shell(cmd.into()),
            timeout: DEFAULT_ACTION_TIMEOUT,
            on_error: OnError::Abort,
            run_in_single_pod: single,
            background: false,
        }
    }

    fn rule(actions: Vec<Action>, on_no_pods: OnNoPods) -> HookRule {
        HookRule {
            origin: RuleOrigin::StorkRule {
                name: "cassandra-presnap-rule".into(),
                index: 0,
            },
            pod_selector: selector_from_labels([("app".into(), "db".into())].into()),
            container: None,
            on_no_pods,
            include_not_ready: false,
            actions,
        }
    }

    #[test]
    fn given_rule_with_two_actions_then_one_step_each_and_single_pod_is_first_by_name() {
        let r = rule(vec![action("flush", false), action("mark", true)], OnNoPods::Fail);
        let steps = rule_steps(Phase::Pre, &r, &pods(3), &["db".into()])
            .unwrap()
            .unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[0].name,
            "Stork Rule `cassandra-presnap-rule` rules[0].actions[0]"
        );
        assert_eq!(steps[0].invocations.len(), 3);
        let single: Vec<_> = steps[1]
            .invocations
            .iter()
            .map(|i| i.target.pod.as_str())
            .collect();
        assert_eq!(single, ["db-0"]);
    }

    #[test]
    fn given_empty_selection_then_fail_errors_and_skip_skips() {
        let fail = rule(vec![action("flush", false)], OnNoPods::Fail);
        let err = rule_steps(Phase::Pre, &fail, &[], &["db".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Stork Rule `cassandra-presnap-rule` rules[0]: no usable pod matches `app=db` in namespaces [db]"
        );
        let skip = rule(vec![action("flush", false)], OnNoPods::Skip);
        let skipped = rule_steps(Phase::Pre, &skip, &[], &["db".into()])
            .unwrap()
            .unwrap_err();
        assert!(skipped.reason.contains("no usable pod"));
    }

    #[test]
    fn given_background_action_then_argv_runs_sh_with_wait_cmd_expanded() {
        let mut a = action(
            "mysql -e 'FLUSH TABLES WITH READ LOCK; system ${WAIT_CMD}'",
            false,
        );
        a.background = true;
        let inv = Invocation {
            target: Target::new("db", "db-0", "db"),
            action: a,
        };
        assert_eq!(
            inv.argv(),
            [
                "sh",
                "-c",
                "mysql -e 'FLUSH TABLES WITH READ LOCK; system echo FREEZEFRAME_ACQUIRED && cat >/dev/null'"
            ]
        );
        assert!(inv.command_text().contains("${WAIT_CMD}"));
    }
}
