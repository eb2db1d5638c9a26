//! The retention decision, pure: given the stored backups of one policy, its rules and "now", which
//! backups are kept (and every reason why) and which are pruned (and why). No I/O, no clock.
//!
//! Semantics (restic/k8up): a backup is kept if *any* rule keeps it, each rule counting on its own.
//! - `keepLast: N`: the N newest good backups.
//! - `keepHourly/Daily/Weekly/Monthly/Yearly: N`: the newest good backup of each of the last N hours /
//!   days / ISO weeks / months / years *that have a good backup* (periods without one are not counted).
//!   Periods are UTC calendar periods of the backup's id time (its start), whatever the schedule's zone.
//! - `keepWithin: D`: every good backup started less than D before the newest good backup (restic:
//!   relative to the newest backup, not to now, so backups that stop succeeding are not aged out).
//!
//! Safety, whatever the rules say (Velero #9061: never delete the last good backup while new ones fail):
//! - Only *good* backups (`Completed` or `PartiallyFailed`) count toward the rules.
//! - The newest `Completed` backup is always kept; with no `Completed` backup, the newest
//!   `PartiallyFailed` one is.
//! - A `Failed` backup is kept while no good backup is newer than it (the failures since the last good
//!   backup are the diagnosis of an ongoing outage; a failed run holds a manifest and, with
//!   `volumes.keepFailed`, its snapshots). Once a newer good backup exists it is pruned.
//! - An incomplete backup (no `manifest.json`: still running, crashed, or half pruned) is kept for
//!   [`INCOMPLETE_GRACE`] after it started, so a run in progress (possibly from another cluster writing
//!   to the same store) is never cut; after that it is pruned.
//! - A policy without any rule that keeps something prunes nothing (validation rejects such policies).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use crate::backup::Status;
use crate::policy::Retention;
use crate::policy::values::format_duration;
use crate::store::BackupId;

/// How long after its start an incomplete backup (no manifest) is left alone: a run in progress is never
/// cut, one that crashed (or a prune that crashed half way) is cleaned up a day later.
pub const INCOMPLETE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a stored backup is, as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum State {
    /// Manifest says `Completed`.
    Completed,
    /// Manifest says `PartiallyFailed` (usable: restore warns about what is missing).
    PartiallyFailed,
    /// Manifest says `Failed`: nothing usable.
    Failed,
    /// No manifest (running, crashed, or half pruned).
    Incomplete,
}

impl State {
    /// The state of a backup with this manifest status (`None` = no manifest).
    pub fn from_status(status: Option<Status>) -> State {
        match status {
            Some(Status::Completed) => State::Completed,
            Some(Status::PartiallyFailed) => State::PartiallyFailed,
            Some(Status::Failed) => State::Failed,
            None => State::Incomplete,
        }
    }

    /// Counts toward the rules and can be restored.
    pub fn is_good(self) -> bool {
        matches!(self, State::Completed | State::PartiallyFailed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Completed => "Completed",
            State::PartiallyFailed => "PartiallyFailed",
            State::Failed => "Failed",
            State::Incomplete => "Incomplete",
        })
    }
}

/// One stored backup to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its id (its start time, to the second; ids sort by time).
    pub id: BackupId,
    /// What it is.
    pub state: State,
}

/// A calendar period of a `keep<Period>` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// `keepHourly`.
    Hourly,
    /// `keepDaily`.
    Daily,
    /// `keepWeekly` (ISO 8601 weeks, Monday to Sunday).
    Weekly,
    /// `keepMonthly`.
    Monthly,
    /// `keepYearly`.
    Yearly,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Period; 5] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    /// The UTC period `time` falls in, as shown in reasons: `2026-11-20T13`, `2026-11-20`, `2026-W47`,
    /// `2026-11`, `2026`.
    pub fn bucket(self, time: DateTime<Utc>) -> String {
        match self {
            Period::Hourly => time.format("%Y-%m-%dT%H").to_string(),
            Period::Daily => time.format("%Y-%m-%d").to_string(),
            Period::Weekly => {
                let week = time.iso_week();
                format!("{}-W{:02}", week.year(), week.week())
            }
            Period::Monthly => time.format("%Y-%m").to_string(),
            Period::Yearly => time.format("%Y").to_string(),
        }
    }

    /// The rule's count.
    pub fn count(self, rules: &Retention) -> Option<u32> {
        match self {
            Period::Hourly => rules.keep_hourly,
            Period::Daily => rules.keep_daily,
            Period::Weekly => rules.keep_weekly,
            Period::Monthly => rules.keep_monthly,
            Period::Yearly => rules.keep_yearly,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepReason {
    /// One of the `keepLast: N` newest good backups (`last 3`).
    Last(u32),
    /// The newest good backup of this period (`daily 2026-11-20`).
    Period(Period, String),
    /// Started within `keepWithin` of the newest good backup (`within 7d`).
    Within(Duration),
    /// The newest `Completed` backup: always kept.
    NewestGood,
    /// No backup is `Completed`; this is the newest `PartiallyFailed` one: always kept.
    NewestPartiallyFailed,
    /// `Failed` with no newer good backup: kept for diagnosis.
    FailedSinceLastGood,
    /// No manifest yet and started less than [`INCOMPLETE_GRACE`] ago (`age` ago).
    InProgress {
        /// How long ago it started.
        age: Duration,
    },
    /// The policy has no rule that keeps anything: nothing is pruned.
    NoRules,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Last(n) => write!(f, "last {n}"),
            KeepReason::Period(p, bucket) => write!(f, "{} {bucket}", p.name()),
            KeepReason::Within(d) => write!(f, "within {}", format_duration(*d)),
            KeepReason::NewestGood => f.write_str("newest good backup"),
            KeepReason::NewestPartiallyFailed => {
                f.write_str("newest good backup (partially failed; no completed backup exists)")
            }
            KeepReason::FailedSinceLastGood => {
                f.write_str("failed after the newest good backup (kept for diagnosis)")
            }
            KeepReason::InProgress { age } => write!(
                f,
                "in progress/too recent (no manifest, started {} ago; grace {})",
                minutes(*age),
                format_duration(INCOMPLETE_GRACE)
            ),
            KeepReason::NoRules => f.write_str("no retention rules"),
        }
    }
}

/// Why a backup is pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneReason {
    /// A good backup no rule keeps.
    NotKept,
    /// `Failed`, and a newer good backup exists.
    FailedSuperseded,
    /// No manifest and started `age` ago, more than [`INCOMPLETE_GRACE`].
    Incomplete {
        /// How long ago it started.
        age: Duration,
    },
}

impl fmt::Display for PruneReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PruneReason::NotKept => f.write_str("kept by no rule"),
            PruneReason::FailedSuperseded => f.write_str("failed, and a newer good backup exists"),
            PruneReason::Incomplete { age } => write!(
                f,
                "incomplete (no manifest), started {} ago; grace {}",
                minutes(*age),
                format_duration(INCOMPLETE_GRACE)
            ),
        }
    }
}

/// An age to the minute (`1d6h`, `45m`, `0s`).
fn minutes(d: Duration) -> String {
    format_duration(Duration::from_secs(d.as_secs() / 60 * 60))
}

/// Keep or prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Kept, for these reasons (at least one).
    Keep(Vec<KeepReason>),
    /// Pruned.
    Prune(PruneReason),
}

/// The decision on one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backup.
    pub id: BackupId,
    /// What it is.
    pub state: State,
    /// Keep or prune, and why.
    pub verdict: Verdict,
}

impl Decision {
    /// Whether the backup is pruned.
    pub fn is_prune(&self) -> bool {
        matches!(self.verdict, Verdict::Prune(_))
    }

    /// The reasons as text, joined with `, `.
    pub fn reasons(&self) -> String {
        match &self.verdict {
            Verdict::Keep(reasons) => reasons
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            Verdict::Prune(reason) => reason.to_string(),
        }
    }
}

/// Whether any rule keeps something (a count above 0 or `keepWithin` above 0s).
pub fn has_rules(rules: &Retention) -> bool {
    rules.keep_last.is_some_and(|n| n > 0)
        || Period::ALL.iter().any(|p| p.count(rules).is_some_and(|n| n > 0))
        || rules.keep_within.is_some_and(|d| !d.is_zero())
}

/// Decide on every backup of one policy (module docs). Returns one decision per candidate, oldest first.
pub fn decide(candidates: &[Candidate], rules: &Retention, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted.dedup_by(|a, b| a.id == b.id);
    if !has_rules(rules) {
        return sorted
            .into_iter()
            .map(|c| Decision {
                id: c.id.clone(),
                state: c.state,
                verdict: Verdict::Keep(vec![KeepReason::NoRules]),
            })
            .collect();
    }

    // Indexes into `sorted` of the good backups, newest first.
    let good: Vec<usize> = (0..sorted.len())
        .rev()
        .filter(|&i| sorted[i].state.is_good())
        .collect();
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); sorted.len()];

    if let Some(n) = rules.keep_last {
        for &i in good.iter().take(n as usize) {
            reasons[i].push(KeepReason::Last(n));
        }
    }
    for period in Period::ALL {
        let Some(n) = period.count(rules) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for &i in &good {
            if seen.len() == n as usize {
                break;
            }
            // Newest first: the first backup met in a period is that period's newest.
            let bucket = period.bucket(sorted[i].id.time());
            if seen.insert(bucket.clone()) {
                reasons[i].push(KeepReason::Period(period, bucket));
            }
        }
    }
    if let (Some(within), Some(&newest)) = (rules.keep_within.filter(|d| !d.is_zero()), good.first()) {
        let reference = sorted[newest].id.time();
        for &i in &good {
            let behind = (reference - sorted[i].id.time()).to_std().unwrap_or_default();
            if behind < within {
                reasons[i].push(KeepReason::Within(within));
            }
        }
    }
    // Safety: the newest Completed backup, else the newest PartiallyFailed one.
    if let Some(&i) = good.iter().find(|&&i| sorted[i].state == State::Completed) {
        reasons[i].push(KeepReason::NewestGood);
    } else if let Some(&i) = good.first() {
        reasons[i].push(KeepReason::NewestPartiallyFailed);
    }
    let newest_good = good.first().map(|&i| &sorted[i].id);

    sorted
        .iter()
        .zip(reasons)
        .map(|(c, reasons)| {
            let verdict = match c.state {
                State::Completed | State::PartiallyFailed if reasons.is_empty() => {
                    Verdict::Prune(PruneReason::NotKept)
                }
                State::Completed | State::PartiallyFailed => Verdict::Keep(reasons),
                State::Failed if newest_good.is_some_and(|g| *g > c.id) => {
                    Verdict::Prune(PruneReason::FailedSuperseded)
                }
                State::Failed => Verdict::Keep(vec![KeepReason::FailedSinceLastGood]),
                State::Incomplete => {
                    let age = (now - c.id.time()).to_std().unwrap_or_default();
                    if age < INCOMPLETE_GRACE {
                        Verdict::Keep(vec![KeepReason::InProgress { age }])
                    } else {
                        Verdict::Prune(PruneReason::Incomplete { age })
                    }
                }
            };
            Decision {
                id: c.id.clone(),
                state: c.state,
                verdict,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
