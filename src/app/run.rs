//! `freezeframe run`: what the CronJob executes every tick, as one sequence of named steps:
//!
//! load policies → report invalid ones (annotation, Event, `policy.invalid` webhooks) → take the run
//! Lease → for each valid policy: due? → record the scheduled time → back up, prune and report it
//! ([`crate::app::turn::back_up_prune_report`]: `backup.started` → backup → commit manifest →
//! prune by its retention → Events, annotations, webhooks) → record the result → release the Lease →
//! exit code.
//!
//! This module only sequences the steps and adds context to their errors; each step lives in its own
//! module ([`crate::policy::store`], [`crate::policy::status`], [`lease`], [`crate::policy::decide`],
//! [`crate::backup::command`], [`crate::retention`], [`crate::report`]).
//!
//! Reporting never changes the exit code. A prune failure never changes the committed manifest or the
//! last-result annotation (they describe the backup); it prints the failure and makes the tick's exit
//! code at least PartiallyFailed (3).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::{Invocation, UsageError};
use crate::backup::{Manifest, Status};
use crate::config::{ClientArgs, PolicySource, PolicySourceArgs};
use crate::exit::{Outcome, worst};
use crate::lease;
use crate::policy::store::{self, LastResult, ResultPhase};
use crate::policy::{Decision, DueInput, Policy, decide};
use crate::report::Reporter;

/// Arguments of `freezeframe run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Run this policy now, whatever its schedule says (repeatable; the schedule is not moved).
    #[arg(long = "now", value_name = "POLICY")]
    pub now: Vec<String>,
}

/// The schedule input for `policy` at `now`. Pure.
pub fn due_input(
    policy: &Policy,
    last_scheduled: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    force: bool,
) -> DueInput {
    DueInput {
        last_scheduled,
        now,
        force,
        run_on_create: policy.run_on_create,
        suspend: policy.suspend,
        starting_deadline: policy.starting_deadline,
    }
}

/// The last-result annotation for a finished backup. Pure.
pub fn last_result(m: &Manifest) -> LastResult {
    LastResult {
        phase: match m.status {
            Status::Completed => ResultPhase::Completed,
            Status::PartiallyFailed => ResultPhase::PartiallyFailed,
            Status::Failed => ResultPhase::Failed,
        },
        finished_at: m.finished_at,
        backup_id: m.backup_id.clone(),
    }
}

/// One line saying what the tick does with a policy that does not run. Pure.
fn describe_wait(policy: &str, decision: &Decision) -> String {
    let at = |t: &Option<DateTime<Utc>>| {
        t.map_or_else(
            || "never".to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    match decision {
        Decision::Run { .. } => format!("{policy}: due"),
        Decision::Wait { next, first_seen } => format!(
            "{policy}: not due{}; next run {}",
            if *first_seen { " (first seen now)" } else { "" },
            at(next)
        ),
        Decision::SkipTooLate {
            scheduled_at,
            late_by,
            next,
        } => format!(
            "{policy}: skipped the run scheduled at {} ({}s late, past its startingDeadline); next run {}",
            scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            late_by.as_secs(),
            at(next)
        ),
        Decision::Suspended => format!("{policy}: suspended"),
    }
}

/// Run one CronJob tick; `cancel` is the process's [`super::turn::cancel_on_signals`] token.
pub async fn run(args: RunArgs, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let invocation = Invocation::from_process(&args.source, &ClientArgs::default());
    let settings = invocation.settings()?;
    let PolicySource::ConfigMap { namespace, name } = &settings.policy_source else {
        return Err(UsageError::new(
            "freezeframe run needs the policy ConfigMap (it stores each policy's schedule state); \
             use --policies <namespace>/<name> or FREEZEFRAME_POLICY_CONFIGMAP, not a policy file",
        )
        .into());
    };
    let lease_namespace = settings.namespace.clone().unwrap_or_else(|| namespace.clone());
    let client = invocation.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);

    // Load policies.
    let cm = cms
        .get(name)
        .await
        .with_context(|| format!("reading the policy ConfigMap {namespace}/{name}"))?;
    let loaded = store::from_configmap(&cm);
    let set = &loaded.set;
    let now = invocation.now();

    // Report invalid policies (and clear the marks of fixed ones); a failure here must not stop backups.
    if !set.is_valid() {
        eprint!("{}", crate::app::validate::report(set, now).0);
    }
    // Webhooks hear of a policy when it becomes invalid (or invalid for another reason), not every tick:
    // the status annotation remembers what was last reported.
    let newly_invalid = crate::policy::status::newly_invalid(set, cm.metadata.annotations.as_ref());
    if let Err(e) = crate::policy::status::report(&client, &cm, set, now).await {
        tracing::warn!(error = %format!("{e:#}"), "could not record policy status");
    }
    let reporter = Reporter::for_settings(client.clone(), settings);
    reporter.policies_invalid(set, &newly_invalid).await;
    let unknown: Vec<&String> = args.now.iter().filter(|n| set.policy(n).is_none()).collect();
    for n in &unknown {
        eprintln!("error: --now {n}: no valid policy of that name");
    }
    let invalid = !set.is_valid() || !unknown.is_empty();

    // Take the run Lease.
    let me = lease::identity();
    let held = match lease::acquire(&client, &lease_namespace, &me, cancel.clone())
        .await
        .context("taking the run lease")?
    {
        lease::Acquired::Held(h) => h,
        lease::Acquired::Busy { holder, expires_at } => {
            println!(
                "another run holds the lease {lease_namespace}/{} ({holder}, until {} unless renewed); \
                 nothing to do this tick",
                lease::LEASE_NAME,
                expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            return Ok(Outcome::Success);
        }
    };

    // Each valid policy: due? → record scheduled time → back up → record result.
    let tick = Tick {
        invocation: &invocation,
        cms: &cms,
        configmap: (namespace, name),
        cancel: &cancel,
        reporter: &reporter,
    };
    let mut outcomes = Vec::new();
    for policy in &set.policies {
        if cancel.is_cancelled() {
            eprintln!("{}: not started: the run was stopped", policy.name);
            outcomes.push(Outcome::Failed);
            continue;
        }
        let force = args.now.contains(&policy.name);
        let input = due_input(
            policy,
            loaded.last_scheduled.get(&policy.name).copied(),
            invocation.now(),
            force,
        );
        let decision = decide(&policy.schedule, &input);
        // Recorded before the run starts, so a crash cannot make the next tick serve this fire time again;
        // a policy whose time cannot be recorded is not run (and the Lease is still released below).
        if let Some(at) = decision.record(&input)
            && let Err(e) = store::record_last_scheduled(&cms, namespace, name, &policy.name, at).await
        {
            eprintln!(
                "{}: not run: cannot record its scheduled time: {:#}",
                policy.name,
                anyhow::Error::from(e)
            );
            outcomes.push(Outcome::Failed);
            continue;
        }
        if !matches!(decision, Decision::Run { .. }) {
            println!("{}", describe_wait(&policy.name, &decision));
            continue;
        }
        outcomes.push(back_up(&tick, policy, &decision).await);
    }

    // Release the Lease, then exit.
    if let Err(e) = held.release().await {
        tracing::warn!(error = %format!("{e:#}"), "could not release the run lease; it expires by itself");
    }
    let outcome = worst(outcomes);
    Ok(if invalid { Outcome::InvalidInput } else { outcome })
}

/// What every backup of one tick shares.
struct Tick<'a> {
    invocation: &'a Invocation,
    /// ConfigMaps in the policy ConfigMap's namespace.
    cms: &'a Api<ConfigMap>,
    /// The policy ConfigMap: `(namespace, name)`.
    configmap: (&'a str, &'a str),
    cancel: &'a CancellationToken,
    reporter: &'a Reporter,
}

/// Back up one due policy, prune and report it, and record its result; a backup that produced no
/// manifest counts as Failed (and nothing is pruned).
async fn back_up(tick: &Tick<'_>, policy: &Policy, decision: &Decision) -> Outcome {
    tracing::info!(policy = %policy.name, ?decision, "running backup");
    let ran = super::turn::back_up_prune_report(
        tick.invocation,
        policy,
        &policy.storage.backend,
        tick.cancel,
        tick.reporter,
        true,
    )
    .await;
    let result = match &ran.manifest {
        Some(m) => last_result(m),
        None => LastResult {
            phase: ResultPhase::Failed,
            finished_at: tick.invocation.now(),
            backup_id: "-".to_string(),
        },
    };
    let (namespace, name) = tick.configmap;
    if let Err(e) = store::record_last_result(tick.cms, namespace, name, &policy.name, &result).await {
        tracing::warn!(policy = %policy.name, error = %format!("{e:#}"), "could not record the last result");
    }
    ran.outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_skipped_run_when_described_then_line_says_late_and_next() {
        let d = Decision::SkipTooLate {
            scheduled_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            late_by: std::time::Duration::from_secs(7200),
            next: Some("2026-01-02T00:00:00Z".parse().unwrap()),
        };
        let line = describe_wait("db", &d);
        assert!(line.contains("7200s late"), "{line}");
        assert!(line.contains("next run 2026-01-02T00:00:00Z"), "{line}");
    }
}
