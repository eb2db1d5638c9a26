//! `freezeframe policies`: one row per policy with its schedule, run state and last result, as a table or
//! as JSON/YAML; invalid policies are listed as `INVALID` (exit 2) with a pointer to `freezeframe validate`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::Invocation;
use crate::config::{ClientArgs, PolicySourceArgs};
use crate::exit::Outcome;
use crate::policy::schedule::{Decision, DueInput, decide};
use crate::policy::store::LastResult;
use crate::policy::{Policy, PolicySet};

/// Output formats of `freezeframe policies`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document (stable field names) for scripts.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// Arguments of `freezeframe policies`.
#[derive(Debug, Clone, clap::Args)]
pub struct PoliciesArgs {
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The `-o json|yaml` document. Field names are a contract for scripts: add fields, never rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// True when no policy and no shared part (storages, webhooks, rules) has a problem.
    pub valid: bool,
    /// How many problems `freezeframe validate` would print.
    pub problems: usize,
    /// Valid policies in document order, then invalid ones.
    pub policies: Vec<Row>,
}

/// One policy. Times are RFC 3339 UTC in whole seconds; `null` where a value is unknown or does not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Policy name (for an invalid policy without a usable name, its path such as `policies[2]`).
    pub name: String,
    /// False for an invalid policy: it never runs; only `name`, `lastScheduled` and `lastResult` are set.
    pub valid: bool,
    /// The schedule as written.
    pub schedule: Option<String>,
    /// IANA zone the schedule is read in.
    pub timezone: Option<String>,
    /// `suspend: true`.
    pub suspended: Option<bool>,
    /// From `last-scheduled.freezeframe.dev/<policy>`.
    pub last_scheduled: Option<String>,
    /// The next fire time the scheduler will run; when `due`, the (past) fire time the next tick serves.
    /// `null` when suspended or invalid.
    pub next_run: Option<String>,
    /// The next CronJob tick runs the policy.
    pub due: bool,
    /// Storage name.
    pub storage: Option<String>,
    /// From `last-result.freezeframe.dev/<policy>`.
    pub last_result: Option<ResultRow>,
}

/// A policy's last result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultRow {
    /// `Completed`, `PartiallyFailed` or `Failed`.
    pub phase: String,
    /// When the run ended.
    pub finished_at: String,
    /// The backup it produced.
    pub backup_id: String,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn result_row(r: &LastResult) -> ResultRow {
    ResultRow {
        phase: r.phase.as_str().to_string(),
        finished_at: time(r.finished_at),
        backup_id: r.backup_id.clone(),
    }
}

/// When `p` runs next, as the scheduler decides it at `now`: (fire time, due at the next tick).
fn next_run(p: &Policy, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> (Option<DateTime<Utc>>, bool) {
    let input = DueInput {
        last_scheduled: last,
        now,
        force: false,
        run_on_create: p.run_on_create,
        suspend: p.suspend,
        starting_deadline: p.starting_deadline,
    };
    match decide(&p.schedule, &input) {
        Decision::Run { scheduled_at, .. } => (Some(scheduled_at), true),
        Decision::SkipTooLate { next, .. } | Decision::Wait { next, .. } => (next, false),
        Decision::Suspended => (None, false),
    }
}

/// Build the listing of `set` with the run state read from the ConfigMap's annotations, at `now`. Pure.
pub fn listing(
    set: &PolicySet,
    last_scheduled: &BTreeMap<String, DateTime<Utc>>,
    last_results: &BTreeMap<String, LastResult>,
    now: DateTime<Utc>,
) -> Listing {
    let valid = set.policies.iter().map(|p| {
        let last = last_scheduled.get(&p.name).copied();
        let (next, due) = next_run(p, last, now);
        Row {
            name: p.name.clone(),
            valid: true,
            schedule: Some(p.schedule.text().to_string()),
            timezone: Some(p.schedule.timezone().name().to_string()),
            suspended: Some(p.suspend),
            last_scheduled: last.map(time),
            next_run: next.map(time),
            due,
            storage: Some(p.storage.name.clone()),
            last_result: last_results.get(&p.name).map(result_row),
        }
    });
    let invalid = set.invalid_policies.iter().map(|name| Row {
        name: name.clone(),
        valid: false,
        schedule: None,
        timezone: None,
        suspended: None,
        last_scheduled: last_scheduled.get(name).copied().map(time),
        next_run: None,
        due: false,
        storage: None,
        last_result: last_results.get(name).map(result_row),
    });
    Listing {
        valid: set.is_valid(),
        problems: set.problems.len(),
        policies: valid.chain(invalid).collect(),
    }
}

const HEADER: [&str; 7] = [
    "NAME",
    "SCHEDULE",
    "SUSPENDED",
    "LAST SCHEDULED",
    "NEXT RUN",
    "STORAGE",
    "LAST RESULT",
];

fn cells(row: &Row) -> [String; 7] {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let schedule = match (&row.schedule, &row.timezone) {
        (Some(s), Some(tz)) => format!("{s} ({tz})"),
        (Some(s), None) => s.clone(),
        _ => "INVALID".into(),
    };
    let suspended = match row.suspended {
        Some(true) => "True".into(),
        Some(false) => "False".into(),
        None => "-".into(),
    };
    let next = if row.due {
        "due now".into()
    } else {
        or_dash(&row.next_run)
    };
    let result = row.last_result.as_ref().map_or_else(
        || "-".into(),
        |r| format!("{} {} {}", r.phase, r.finished_at, r.backup_id),
    );
    [
        row.name.clone(),
        schedule,
        suspended,
        or_dash(&row.last_scheduled),
        next,
        or_dash(&row.storage),
        result,
    ]
}

/// Aligned columns, three spaces apart, no trailing blanks.
fn table(listing: &Listing) -> String {
    let rows: Vec<[String; 7]> = std::iter::once(HEADER.map(String::from))
        .chain(listing.policies.iter().map(cells))
        .collect();
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    if listing.policies.is_empty() {
        if listing.valid {
            out.push_str("no policies defined\n");
        }
    } else {
        for row in &rows {
            let mut line = String::new();
            for (c, w) in row.iter().zip(widths) {
                write!(line, "{c:w$}   ").ok();
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if !listing.valid {
        let invalid = listing.policies.iter().filter(|r| !r.valid).count();
        writeln!(
            out,
            "{invalid} invalid policy(ies), {} problem(s): invalid policies never run; run `freezeframe \
validate` with the same --policies/--policy-file to see each problem",
            listing.problems
        )
        .ok();
    }
    out
}

/// Render `freezeframe policies` for `set` and the ConfigMap's run state at `now`, and the outcome it
/// implies (invalid input when anything is invalid). Pure.
pub fn report(
    set: &PolicySet,
    last_scheduled: &BTreeMap<String, DateTime<Utc>>,
    last_results: &BTreeMap<String, LastResult>,
    now: DateTime<Utc>,
    format: OutputFormat,
) -> anyhow::Result<(String, Outcome)> {
    let listing = listing(set, last_scheduled, last_results, now);
    let text = match format {
        OutputFormat::Table => table(&listing),
        OutputFormat::Json => serde_json::to_string_pretty(&listing)? + "\n",
        OutputFormat::Yaml => serde_yaml::to_string(&listing)?,
    };
    let outcome = if listing.valid {
        Outcome::Success
    } else {
        Outcome::InvalidInput
    };
    Ok((text, outcome))
}

/// Run `freezeframe policies`.
pub async fn run(args: PoliciesArgs) -> anyhow::Result<Outcome> {
    let invocation = Invocation::from_process(&args.source, &ClientArgs::default());
    let loaded = invocation.policies().await?;
    let (text, outcome) = report(
        &loaded.set,
        &loaded.last_scheduled,
        &loaded.last_results,
        invocation.now(),
        args.output,
    )?;
    print!("{text}");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::ResultPhase;

    const MIXED: &str = "\
apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages:
  primary:
    filesystem: {path: /b}
defaults: {storage: primary}
policies:
  - {name: hourly, schedule: '@hourly', namespaces: [a], retention: {keepLast: 3}}
  - {name: paused, schedule: '0 2 * * *', suspend: true, namespaces: [b], retention: {keepLast: 3}}
  - {name: berlin, schedule: '30 2 * * *', timezone: Europe/Berlin, namespaces: [c], retention: {keepLast: 3}}
  - {name: late, schedule: '0 3 * * *', namespaces: [d], retention: {keepLast: 3}}
  - {name: broken, schedule: 'every day', namespaces: [e], retention: {keepLast: 3}}
";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        t("2026-11-23T13:30:00Z")
    }

    fn result(phase: ResultPhase, at: &str, id: &str) -> LastResult {
        LastResult {
            phase,
            finished_at: t(at),
            backup_id: id.into(),
        }
    }

    /// The mixed set with run state: `hourly` is due, `paused` suspended, `berlin` never scheduled,
    /// `late` missed its deadline, `broken` invalid.
    fn mixed() -> (
        PolicySet,
        BTreeMap<String, DateTime<Utc>>,
        BTreeMap<String, LastResult>,
    ) {
        let set = crate::policy::parse_str("p.yaml", MIXED);
        let scheduled = BTreeMap::from([
            ("hourly".to_string(), t("2026-11-23T12:00:00Z")),
            ("paused".to_string(), t("2026-11-23T02:00:00Z")),
            ("late".to_string(), t("2026-11-22T03:00:00Z")),
        ]);
        let results = BTreeMap::from([
            (
                "hourly".to_string(),
                result(
                    ResultPhase::Completed,
                    "2026-11-23T12:04:10Z",
                    "hourly-20261123-120000",
                ),
            ),
            (
                "paused".to_string(),
                result(
                    ResultPhase::Failed,
                    "2026-11-23T02:01:00Z",
                    "paused-20261123-020000",
                ),
            ),
            (
                "broken".to_string(),
                result(
                    ResultPhase::PartiallyFailed,
                    "2026-11-20T00:00:09Z",
                    "broken-20261120-000000",
                ),
            ),
        ]);
        (set, scheduled, results)
    }

    #[test]
    fn given_cassandra_policy_with_run_state_when_listed_then_table_shows_last_and_next_run() {
        let set = crate::policy::parse_str("cassandra.yaml", include_str!("../../policies/cassandra.yaml"));
        let scheduled = BTreeMap::from([("cassandra-ring".to_string(), t("2026-11-23T12:00:00Z"))]);
        let results = BTreeMap::from([(
            "cassandra-ring".to_string(),
            result(ResultPhase::Completed, "2026-11-23T12:00:00Z", "cassandra-ring-1"),
        )]);
        let (text, outcome) = report(&set, &scheduled, &results, now(), OutputFormat::Table).unwrap();
        assert_eq!(outcome, Outcome::Success);
        assert_eq!(
            text,
            "\
NAME             SCHEDULE            SUSPENDED   LAST SCHEDULED         NEXT RUN               STORAGE   LAST RESULT
cassandra-ring   0 */6 * * * (UTC)   False       2026-11-23T12:00:00Z   2026-11-23T18:00:00Z   primary   \
Completed 2026-11-23T12:00:00Z cassandra-ring-1
"
        );
    }

    #[test]
    fn given_due_suspended_new_late_and_invalid_policies_when_listed_then_each_row_says_so_and_exit_is_2() {
        let (set, scheduled, results) = mixed();
        let (text, outcome) = report(&set, &scheduled, &results, now(), OutputFormat::Table).unwrap();
        assert_eq!(outcome, Outcome::InvalidInput);
        assert_eq!(
            text,
            "\
NAME     SCHEDULE                     SUSPENDED   LAST SCHEDULED         NEXT RUN               STORAGE   LAST RESULT
hourly   @hourly (UTC)                False       2026-11-23T12:00:00Z   due now                primary   \
Completed 2026-11-23T12:04:10Z hourly-20261123-120000
paused   0 2 * * * (UTC)              True        2026-11-23T02:00:00Z   -                      primary   \
Failed 2026-11-23T02:01:00Z paused-20261123-020000
berlin   30 2 * * * (Europe/Berlin)   False       -                      2026-11-24T01:30:00Z   primary   -
late     0 3 * * * (UTC)              False       2026-11-22T03:00:00Z   2026-11-24T03:00:00Z   primary   -
broken   INVALID                      -           -                      -                      -         \
PartiallyFailed 2026-11-20T00:00:09Z broken-20261120-000000
1 invalid policy(ies), 1 problem(s): invalid policies never run; run `freezeframe validate` with the same \
--policies/--policy-file to see each problem
"
        );
    }

    #[test]
    fn given_policies_when_listed_as_json_then_field_names_and_values_are_stable() {
        let (set, scheduled, results) = mixed();
        let (text, outcome) = report(&set, &scheduled, &results, now(), OutputFormat::Json).unwrap();
        assert_eq!(outcome, Outcome::InvalidInput);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["valid"], false);
        assert_eq!(doc["problems"], 1);
        assert_eq!(
            doc["policies"][0],
            serde_json::json!({
                "name": "hourly",
                "valid": true,
                "schedule": "@hourly",
                "timezone": "UTC",
                "suspended": false,
                "lastScheduled": "2026-11-23T12:00:00Z",
                "nextRun": "2026-11-23T13:00:00Z",
                "due": true,
                "storage": "primary",
                "lastResult": {
                    "phase": "Completed",
                    "finishedAt": "2026-11-23T12:04:10Z",
                    "backupId": "hourly-20261123-120000"
                }
            })
        );
        assert_eq!(
            doc["policies"][4],
            serde_json::json!({
                "name": "broken",
                "valid": false,
                "schedule": null,
                "timezone": null,
                "suspended": null,
                "lastScheduled": null,
                "nextRun": null,
                "due": false,
                "storage": null,
                "lastResult": {
                    "phase": "PartiallyFailed",
                    "finishedAt": "2026-11-20T00:00:09Z",
                    "backupId": "broken-20261120-000000"
                }
            })
        );
        assert!(
            text.starts_with("{\n  \"valid\": false,\n  \"problems\": 1,\n  \"policies\": [\n    {\n      \"name\": \"hourly\",\n"),
            "{text}"
        );
    }

    #[test]
    fn given_policies_when_listed_as_yaml_then_it_is_the_json_document() {
        let (set, scheduled, results) = mixed();
        let (json, _) = report(&set, &scheduled, &results, now(), OutputFormat::Json).unwrap();
        let (yaml, outcome) = report(&set, &scheduled, &results, now(), OutputFormat::Yaml).unwrap();
        assert_eq!(outcome, Outcome::InvalidInput);
        let from_yaml: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        let from_json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(from_yaml, from_json);
        assert!(
            yaml.starts_with("valid: false\nproblems: 1\npolicies:\n- name: hourly\n"),
            "{yaml}"
        );
    }

    #[test]
    fn given_no_policies_when_listed_then_it_says_so_and_succeeds() {
        let set = crate::policy::parse_str(
            "p.yaml",
            "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\npolicies: []\n",
        );
        let none = BTreeMap::new();
        let (text, outcome) = report(&set, &none, &BTreeMap::new(), now(), OutputFormat::Table).unwrap();
        assert_eq!(
            (text.as_str(), outcome),
            ("no policies defined\n", Outcome::Success)
        );
    }

    #[test]
    fn given_unreadable_document_when_listed_then_only_the_hint_and_exit_2() {
        let set = crate::policy::parse_str("p.yaml", "policies: [unclosed\n");
        let none = BTreeMap::new();
        let (text, outcome) = report(&set, &none, &BTreeMap::new(), now(), OutputFormat::Table).unwrap();
        assert_eq!(outcome, Outcome::InvalidInput);
        assert_eq!(
            text,
            "0 invalid policy(ies), 1 problem(s): invalid policies never run; run `freezeframe validate` with \
the same --policies/--policy-file to see each problem\n"
        );
    }
}
