//! `freezeframe validate`: print every problem grouped by policy (exit 2), or a one-line summary per
//! policy with its next three fire times (exit 0).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::Invocation;
use crate::config::{ClientArgs, PolicySourceArgs};
use crate::exit::Outcome;
use crate::policy::PolicySet;

/// Arguments of `freezeframe validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub source: PolicySourceArgs,
}

/// Render the report for `set` at `now`, and the outcome it implies. Pure.
pub fn report(set: &PolicySet, now: DateTime<Utc>) -> (String, Outcome) {
    let mut out = String::new();
    if !set.warnings.is_empty() {
        writeln!(out, "warnings (valid, but known to hang or fail):").ok();
        for w in &set.warnings {
            writeln!(out, "  {w}").ok();
        }
    }
    if !set.is_valid() {
        for (policy, problems) in set.problems_by_policy() {
            match policy {
                Some(p) => writeln!(out, "policy `{p}`:").ok(),
                None => writeln!(out, "policy set:").ok(),
            };
            for p in problems {
                writeln!(out, "  {p}").ok();
            }
        }
        writeln!(
            out,
            "{} problem(s); {} valid policy(ies), {} invalid",
            set.problems.len(),
            set.policies.len(),
            set.invalid_policies.len()
        )
        .ok();
        return (out, Outcome::InvalidInput);
    }
    for p in &set.policies {
        let next: Vec<String> = p
            .schedule
            .after(now)
            .take(3)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect();
        writeln!(
            out,
            "{}: ok; schedule {:?} ({}){}; storage {}; next: {}",
            p.name,
            p.schedule.text(),
            p.schedule.timezone(),
            if p.suspend { " suspended" } else { "" },
            p.storage.name,
            next.join(", ")
        )
        .ok();
    }
    if set.policies.is_empty() {
        writeln!(out, "no policies defined").ok();
    }
    (out, Outcome::Success)
}

/// Run `freezeframe validate`.
pub async fn run(args: ValidateArgs) -> anyhow::Result<Outcome> {
    let invocation = Invocation::from_process(&args.source, &ClientArgs::default());
    let set = invocation.policy_set().await?;
    let (text, outcome) = report(set, invocation.now());
    print!("{text}");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:30:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn given_valid_policies_when_reported_then_one_line_each_with_next_three_fire_times() {
        let set = crate::policy::parse_str("redis.yaml", include_str!("../../policies/redis.yaml"));
        let (text, outcome) = report(&set, now());
        assert_eq!(outcome, Outcome::Success);
        assert_eq!(
            text,
            "redis-cache: ok; schedule \"*/30 * * * *\" (UTC); storage local; next: 2026-01-01T01:00:00Z, \
2026-01-01T01:30:00Z, 2026-01-01T02:00:00Z\n"
        );
    }

    #[test]
    fn given_problems_when_reported_then_grouped_by_policy_and_invalid_input() {
        let text =
            include_str!("../../policies/redis.yaml").replace("schedule: \"*/30 * * * *\"", "schedule: 30");
        let set = crate::policy::parse_str("redis.yaml", &text);
        let (out, outcome) = report(&set, now());
        assert_eq!(outcome, Outcome::InvalidInput);
        assert!(
            out.starts_with("policy `redis-cache`:\n  redis.yaml (data.policies.yaml):20:19: "),
            "{out}"
        );
        assert!(out.contains("policies[0].schedule"), "{out}");
    }

    #[test]
    fn given_warnings_when_reported_then_each_is_printed_and_the_outcome_stays_success() {
        let text =
            include_str!("../../policies/mysql.yaml").replace("--single-transaction --skip-lock-tables", "");
        let set = crate::policy::parse_str("mysql.yaml", &text);
        assert!(set.is_valid(), "{:#?}", set.problems);
        let [warning] = &set.warnings[..] else {
            panic!("one warning: {:#?}", set.warnings)
        };
        let (out, outcome) = report(&set, now());
        assert_eq!(outcome, Outcome::Success);
        assert!(
            out.starts_with(&format!(
                "warnings (valid, but known to hang or fail):\n  {warning}\n"
            )),
            "{out}"
        );
    }
}
