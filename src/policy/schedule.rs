//! Schedules: Kubernetes CronJob syntax translated for the `cron` crate, and the pure "is it due?" logic.
//!
//! Translation notes (checked against cron 0.15's source):
//! - the crate wants 6/7 fields (seconds first): we prepend `0`;
//! - its day-of-week numbers are 1–7 with 1 = Sunday, Kubernetes uses 0–7 with 0 and 7 = Sunday: we expand
//!   the day-of-week field ourselves and hand the crate day *names* (`SUN,MON`), so numbering never leaks;
//! - it ANDs day-of-month and day-of-week, Kubernetes (robfig/cron, like Vixie cron) ORs them when both
//!   are restricted (neither starts with `*` or `?`): we then build two schedules and merge their times;
//! - local times that do not exist (DST spring-forward) are skipped by the crate, as by Kubernetes.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Why a schedule text was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Not 5 fields and not a known `@` macro.
    #[error(
        "found {found:?}; allowed: 5 fields (minute hour day-of-month month day-of-week) or one of {MACROS}"
    )]
    Shape {
        /// The text as written.
        found: String,
    },
    /// A field the cron crate or our day-of-week parser refused.
    #[error("found {found:?} in the {field} field; allowed: {allowed}")]
    Field {
        /// Which field.
        field: &'static str,
        /// The field text.
        found: String,
        /// What this field accepts.
        allowed: &'static str,
    },
    /// The cron crate refused the translated expression.
    #[error("found {found:?}; the schedule is not valid: {source}")]
    Cron {
        /// The text as written.
        found: String,
        /// The crate's reason.
        #[source]
        source: cron::error::Error,
    },
    /// An unknown IANA time zone name.
    #[error("found time zone {found:?}; allowed: an IANA time zone name such as UTC or Europe/Berlin")]
    TimeZone {
        /// The zone as written.
        found: String,
    },
    /// A `CRON_TZ=` prefix and a `timezone` field that disagree.
    #[error(
        "found CRON_TZ={prefix} in the schedule and timezone {field}; allowed: one of them, or both equal"
    )]
    ConflictingTimeZones {
        /// The zone in the schedule prefix.
        prefix: String,
        /// The zone in the `timezone` field.
        field: String,
    },
    /// A schedule that never fires (for example 30 February).
    #[error("found {found:?}, which never fires; allowed: a schedule with at least one future time")]
    Never {
        /// The text as written.
        found: String,
    },
}

const MACROS: &str = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly";

/// A parsed schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    tz: Tz,
    /// One schedule, or two whose times are merged (day-of-month OR day-of-week).
    parts: Vec<cron::Schedule>,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.tz == other.tz
    }
}

fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name).map_err(|_| ScheduleError::TimeZone {
        found: name.to_string(),
    })
}

impl Schedule {
    /// Parse a Kubernetes schedule. `timezone` is the policy's (or the defaults') `timezone` field;
    /// a `CRON_TZ=`/`TZ=` prefix in the text may name the zone instead.
    pub fn parse(text: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let trimmed = text.trim();
        let (prefix_tz, body) = match trimmed.split_once(char::is_whitespace) {
            Some((first, rest)) if first.starts_with("CRON_TZ=") || first.starts_with("TZ=") => (
                Some(first.split_once('=').map(|(_, z)| z).unwrap_or_default()),
                rest.trim(),
            ),
            _ => (None, trimmed),
        };
        let tz = match (prefix_tz, timezone) {
            (Some(p), Some(f)) if parse_tz(p)? != parse_tz(f)? => {
                return Err(ScheduleError::ConflictingTimeZones {
                    prefix: p.into(),
                    field: f.into(),
                });
            }
            (Some(z), _) | (None, Some(z)) => parse_tz(z)?,
            (None, None) => Tz::UTC,
        };
        let expanded = match body {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(ScheduleError::Shape {
                found: text.to_string(),
            });
        };
        let star = |f: &str| f.split(',').any(|p| p.starts_with('*') || p.starts_with('?'));
        let days = expand_dow(dow)?;
        let dow_names = if days.len() == 7 {
            "*".to_string()
        } else {
            days.iter()
                .map(|d| DAY_NAMES[*d as usize])
                .collect::<Vec<_>>()
                .join(",")
        };
        let cron_of = |dom: &str, dow: &str| {
            cron::Schedule::from_str(&format!("0 {minute} {hour} {dom} {month} {dow}")).map_err(|source| {
                ScheduleError::Cron {
                    found: text.to_string(),
                    source,
                }
            })
        };
        let parts = if star(dom) || star(dow) {
            vec![cron_of(dom, &dow_names)?]
        } else {
            vec![cron_of(dom, "*")?, cron_of("*", &dow_names)?]
        };
        let schedule = Schedule {
            text: text.to_string(),
            tz,
            parts,
        };
        if schedule.after(DateTime::<Utc>::UNIX_EPOCH).next().is_none() {
            return Err(ScheduleError::Never {
                found: text.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The schedule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The time zone fire times are computed in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Fire times strictly after `t`, ascending.
    pub fn after(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let local = t.with_timezone(&self.tz);
        let mut iters: Vec<_> = self
            .parts
            .iter()
            .map(|p| p.after(&local).map(|d| d.with_timezone(&Utc)).peekable())
            .collect();
        std::iter::from_fn(move || {
            let next = iters.iter_mut().filter_map(|it| it.peek().copied()).min()?;
            for it in iters.iter_mut() {
                if it.peek() == Some(&next) {
                    it.next();
                }
            }
            Some(next)
        })
    }

    /// The latest fire time in `(since, until]`, and how many fire times that window holds (counted up to
    /// `MAX_COUNTED`, after which the count is a lower bound).
    pub fn latest_in(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Option<(DateTime<Utc>, usize)> {
        let first = self.after(since).next().filter(|f| *f <= until)?;
        // Walk back from `until` in growing windows so an old `since` costs little.
        let mut latest = first;
        for back in [3_600i64, 86_400, 32 * 86_400, 400 * 86_400, 5 * 400 * 86_400] {
            let start = (until - chrono::Duration::seconds(back)).max(since);
            if let Some(l) = self.after(start).take_while(|t| *t <= until).last() {
                latest = l;
                break;
            }
        }
        let mut count = 0;
        for t in self.after(since).take_while(|t| *t <= until).take(MAX_COUNTED) {
            count += 1;
            if t > latest {
                latest = t;
            }
        }
        Some((latest, count))
    }
}

/// Upper bound on fire times counted when reporting coalesced runs.
pub const MAX_COUNTED: usize = 1000;

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const DOW_ALLOWED: &str =
    "*, ?, 0-7 (0 and 7 are Sunday), SUN-SAT, lists (1,3), ranges (1-5) and steps (*/2)";

/// Expand a Kubernetes day-of-week field into weekday numbers 0 (Sunday) to 6.
fn expand_dow(field: &str) -> Result<BTreeSet<u8>, ScheduleError> {
    let bad = || ScheduleError::Field {
        field: "day-of-week",
        found: field.to_string(),
        allowed: DOW_ALLOWED,
    };
    let num = |s: &str| -> Result<u8, ScheduleError> {
        if let Some(i) = DAY_NAMES.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u8);
        }
        s.parse::<u8>().ok().filter(|n| *n <= 7).ok_or_else(bad)
    };
    let mut days = BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u8>().ok().filter(|s| *s > 0).ok_or_else(bad)?),
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None if part.contains('/') => (num(r)?, 6),
                None => (num(r)?, num(r)?),
            },
        };
        if lo > hi {
            return Err(bad());
        }
        days.extend((lo..=hi).step_by(step as usize).map(|d| d % 7));
    }
    Ok(days)
}

/// What the scheduler knows about one policy when deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueInput {
    /// The stored last scheduled time (or first-seen time); `None` for a policy never seen before.
    pub last_scheduled: Option<DateTime<Utc>>,
    /// Now, from the injected clock.
    pub now: DateTime<Utc>,
    /// `--now`: run regardless of the schedule.
    pub force: bool,
    /// The policy's `runOnCreate`.
    pub run_on_create: bool,
    /// The policy's `suspend`.
    pub suspend: bool,
    /// The policy's `startingDeadline`.
    pub starting_deadline: Duration,
}

/// Why a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunReason {
    /// A fire time of the schedule was reached; `coalesced` fire times (≥ 1) were folded into this run.
    Scheduled {
        /// How many fire times lay in the window (capped at [`MAX_COUNTED`]).
        coalesced: usize,
    },
    /// A new policy with `runOnCreate: true`.
    Created,
    /// Forced with `--now`.
    Forced,
}

/// What to do with a policy now, and what to store as its new last scheduled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run now. `scheduled_at` is the fire time being served (now, when created or forced).
    Run {
        /// The fire time this run serves.
        scheduled_at: DateTime<Utc>,
        /// Why.
        reason: RunReason,
    },
    /// A fire time was missed by more than `startingDeadline`: skip it (log a warning).
    SkipTooLate {
        /// The skipped fire time (the latest one in the window).
        scheduled_at: DateTime<Utc>,
        /// How late it would have started.
        late_by: Duration,
        /// The next fire time.
        next: Option<DateTime<Utc>>,
    },
    /// Nothing to do yet.
    Wait {
        /// The next fire time.
        next: Option<DateTime<Utc>>,
        /// True when the policy was seen for the first time now (its first-seen time is recorded).
        first_seen: bool,
    },
    /// `suspend: true`.
    Suspended,
}

impl Decision {
    /// The value to store as the policy's last scheduled time after this decision, if it changes.
    /// Store it when the run *starts*, so a crash does not make the next tick run the same fire time
    /// twice.
    pub fn record(&self, input: &DueInput) -> Option<DateTime<Utc>> {
        match self {
            Decision::Run {
                scheduled_at,
                reason: RunReason::Scheduled { .. } | RunReason::Created,
            }
            | Decision::SkipTooLate { scheduled_at, .. } => Some(*scheduled_at),
            Decision::Run {
                reason: RunReason::Forced,
                ..
            } => input.last_scheduled.is_none().then_some(input.now),
            Decision::Wait { first_seen: true, .. } => Some(input.now),
            Decision::Wait { .. } | Decision::Suspended => None,
        }
    }
}

/// Decide whether a policy is due. Pure: all time comes from `input.now`.
///
/// Due when a fire time lies in (last scheduled, now]; several such times coalesce into one run for the
/// latest; that latest time must be at most `startingDeadline` old, else it is skipped. A policy with no
/// stored time is "first seen" now and waits for its first fire time (or runs with `runOnCreate`).
pub fn decide(schedule: &Schedule, input: &DueInput) -> Decision {
    let now = input.now;
    if input.force {
        return Decision::Run {
            scheduled_at: now,
            reason: RunReason::Forced,
        };
    }
    if input.suspend {
        return Decision::Suspended;
    }
    let next_after_now = || schedule.after(now).next();
    let Some(last) = input.last_scheduled else {
        if input.run_on_create {
            return Decision::Run {
                scheduled_at: now,
                reason: RunReason::Created,
            };
        }
        return Decision::Wait {
            next: next_after_now(),
            first_seen: true,
        };
    };
    match schedule.latest_in(last, now) {
        None => Decision::Wait {
            next: schedule.after(last.max(now)).next(),
            first_seen: false,
        },
        Some((latest, coalesced)) => {
            let late = (now - latest).to_std().unwrap_or_default();
            if late > input.starting_deadline {
                Decision::SkipTooLate {
                    scheduled_at: latest,
                    late_by: late,
                    next: next_after_now(),
                }
            } else {
                Decision::Run {
                    scheduled_at: latest,
                    reason: RunReason::Scheduled { coalesced },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next3(s: &Schedule, from: &str) -> Vec<String> {
        s.after(t(from)).take(3).map(|d| d.to_rfc3339()).collect()
    }

    #[test]
    fn given_five_field_schedule_when_parsed_then_fires_every_six_hours() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        assert_eq!(
            next3(&s, "2026-01-01T01:00:00Z"),
            [
                "2026-01-01T06:00:00+00:00",
                "2026-01-01T12:00:00+00:00",
                "2026-01-01T18:00:00+00:00"
            ]
        );
    }

    #[test]
    fn given_kubernetes_sunday_as_0_and_7_when_parsed_then_both_mean_sunday() {
        // 2026-01-04 is a Sunday.
        for dow in ["0", "7", "SUN", "sun"] {
            let s = Schedule::parse(&format!("0 3 * * {dow}"), None).unwrap();
            assert_eq!(
                next3(&s, "2026-01-01T00:00:00Z")[0],
                "2026-01-04T03:00:00+00:00",
                "{dow}"
            );
        }
        let weekdays = Schedule::parse("0 3 * * 1-5", None).unwrap();
        assert_eq!(
            next3(&weekdays, "2026-01-02T04:00:00Z")[0],
            "2026-01-05T03:00:00+00:00"
        );
        let weekend = Schedule::parse("0 3 * * 6-7", None).unwrap();
        assert_eq!(
            next3(&weekend, "2026-01-01T00:00:00Z")[..2],
            ["2026-01-03T03:00:00+00:00", "2026-01-04T03:00:00+00:00"]
        );
    }

    #[test]
    fn given_day_of_month_and_day_of_week_when_both_restricted_then_either_matches() {
        // The 15th of the month OR any Monday, as in Kubernetes and Vixie cron.
        let s = Schedule::parse("0 0 15 * 1", None).unwrap();
        assert_eq!(
            next3(&s, "2026-01-10T00:00:00Z"),
            [
                "2026-01-12T00:00:00+00:00",
                "2026-01-15T00:00:00+00:00",
                "2026-01-19T00:00:00+00:00"
            ]
        );
    }

    #[test]
    fn given_macros_when_parsed_then_they_match_their_five_field_forms() {
        for (m, f) in [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
        ] {
            let a = Schedule::parse(m, None).unwrap();
            let b = Schedule::parse(f, None).unwrap();
            assert_eq!(
                next3(&a, "2026-03-03T10:10:00Z"),
                next3(&b, "2026-03-03T10:10:00Z"),
                "{m}"
            );
        }
    }

    #[test]
    fn given_cron_tz_prefix_or_timezone_field_when_parsed_then_times_are_local() {
        let a = Schedule::parse("CRON_TZ=Europe/Berlin 0 3 * * *", None).unwrap();
        let b = Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        let c = Schedule::parse("TZ=Europe/Berlin 0 3 * * *", Some("Europe/Berlin")).unwrap();
        // Winter: Berlin is UTC+1.
        for s in [&a, &b, &c] {
            assert_eq!(next3(s, "2026-01-01T00:00:00Z")[0], "2026-01-01T02:00:00+00:00");
        }
        let err = Schedule::parse("CRON_TZ=Europe/Berlin 0 3 * * *", Some("UTC")).unwrap_err();
        assert!(matches!(err, ScheduleError::ConflictingTimeZones { .. }));
        assert!(matches!(
            Schedule::parse("0 3 * * *", Some("Mars/Olympus")),
            Err(ScheduleError::TimeZone { .. })
        ));
    }

    #[test]
    fn given_bad_schedules_when_parsed_then_each_is_refused() {
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "0 0 * * 8",
            "0 0 * * MON-",
            "@every 1h",
            "0 0 31 2 *",
            "0 0 * * 5-1",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad:?} accepted");
        }
    }

    fn input(last: Option<&str>, now: &str) -> DueInput {
        DueInput {
            last_scheduled: last.map(t),
            now: t(now),
            force: false,
            run_on_create: false,
            suspend: false,
            starting_deadline: Duration::from_secs(3600),
        }
    }

    #[test]
    fn given_fire_time_in_window_when_deciding_then_due_for_that_time() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        let i = input(Some("2026-01-01T00:00:00Z"), "2026-01-01T06:00:30Z");
        let d = decide(&s, &i);
        assert_eq!(
            d,
            Decision::Run {
                scheduled_at: t("2026-01-01T06:00:00Z"),
                reason: RunReason::Scheduled { coalesced: 1 }
            }
        );
        assert_eq!(d.record(&i), Some(t("2026-01-01T06:00:00Z")));
    }

    #[test]
    fn given_fire_time_equal_to_last_scheduled_when_deciding_then_not_due_again() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        let i = input(Some("2026-01-01T06:00:00Z"), "2026-01-01T06:30:00Z");
        assert_eq!(
            decide(&s, &i),
            Decision::Wait {
                next: Some(t("2026-01-01T12:00:00Z")),
                first_seen: false
            }
        );
    }

    #[test]
    fn given_missed_fire_times_when_deciding_then_one_run_for_the_latest() {
        let s = Schedule::parse("*/10 * * * *", None).unwrap();
        let i = input(Some("2026-01-01T00:00:00Z"), "2026-01-01T00:55:00Z");
        assert_eq!(
            decide(&s, &i),
            Decision::Run {
                scheduled_at: t("2026-01-01T00:50:00Z"),
                reason: RunReason::Scheduled { coalesced: 5 }
            }
        );
    }

    #[test]
    fn given_run_later_than_starting_deadline_when_deciding_then_skipped_and_recorded() {
        let s = Schedule::parse("0 0 * * *", None).unwrap();
        let i = input(Some("2025-12-31T00:00:00Z"), "2026-01-01T03:00:00Z");
        let d = decide(&s, &i);
        assert_eq!(
            d,
            Decision::SkipTooLate {
                scheduled_at: t("2026-01-01T00:00:00Z"),
                late_by: Duration::from_secs(3 * 3600),
                next: Some(t("2026-01-02T00:00:00Z")),
            }
        );
        assert_eq!(d.record(&i), Some(t("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn given_new_policy_when_deciding_then_first_seen_recorded_and_runs_at_first_fire_time() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        let i = input(None, "2026-01-01T07:00:00Z");
        let d = decide(&s, &i);
        assert_eq!(
            d,
            Decision::Wait {
                next: Some(t("2026-01-01T12:00:00Z")),
                first_seen: true
            }
        );
        let recorded = d.record(&i);
        assert_eq!(recorded, Some(t("2026-01-01T07:00:00Z")));
        let later = DueInput {
            last_scheduled: recorded,
            ..input(None, "2026-01-01T12:00:05Z")
        };
        assert!(matches!(decide(&s, &later), Decision::Run { .. }));
    }

    #[test]
    fn given_new_policy_with_run_on_create_when_deciding_then_runs_now() {
        let s = Schedule::parse("@daily", None).unwrap();
        let i = DueInput {
            run_on_create: true,
            ..input(None, "2026-01-01T07:00:00Z")
        };
        let d = decide(&s, &i);
        assert_eq!(
            d,
            Decision::Run {
                scheduled_at: t("2026-01-01T07:00:00Z"),
                reason: RunReason::Created
            }
        );
        assert_eq!(d.record(&i), Some(t("2026-01-01T07:00:00Z")));
    }

    #[test]
    fn given_force_when_deciding_then_runs_without_moving_the_schedule() {
        let s = Schedule::parse("@daily", None).unwrap();
        let i = DueInput {
            force: true,
            suspend: true,
            ..input(Some("2026-01-01T00:00:00Z"), "2026-01-01T07:00:00Z")
        };
        let d = decide(&s, &i);
        assert_eq!(
            d,
            Decision::Run {
                scheduled_at: i.now,
                reason: RunReason::Forced
            }
        );
        assert_eq!(d.record(&i), None);
    }

    #[test]
    fn given_suspended_policy_when_due_then_not_run_and_nothing_recorded() {
        let s = Schedule::parse("@hourly", None).unwrap();
        let i = DueInput {
            suspend: true,
            ..input(Some("2026-01-01T00:00:00Z"), "2026-01-01T07:00:00Z")
        };
        assert_eq!(decide(&s, &i), Decision::Suspended);
        assert_eq!(decide(&s, &i).record(&i), None);
    }

    #[test]
    fn given_year_old_last_time_with_minutely_schedule_when_deciding_then_latest_is_found_quickly() {
        let s = Schedule::parse("* * * * *", None).unwrap();
        let i = input(Some("2025-01-01T00:00:00Z"), "2026-01-01T00:00:30Z");
        let started = std::time::Instant::now();
        let d = decide(&s, &i);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            d,
            Decision::Run {
                scheduled_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                reason: RunReason::Scheduled {
                    coalesced: MAX_COUNTED
                }
            }
        );
    }

    #[test]
    fn given_spring_forward_in_berlin_when_scheduled_in_gap_then_that_day_is_skipped() {
        // 2026-03-29 02:30 does not exist in Europe/Berlin.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let times = next3(&s, "2026-03-28T00:00:00Z");
        assert_eq!(times[0], "2026-03-28T01:30:00+00:00");
        assert_eq!(times[1], "2026-03-30T00:30:00+00:00");
    }
}
