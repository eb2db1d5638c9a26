//! Unit and property tests of the retention decision.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;

use super::*;

fn id(text: &str) -> BackupId {
    BackupId::parse(text).unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn candidates(list: &[(&str, State)]) -> Vec<Candidate> {
    list.iter()
        .map(|(text, state)| Candidate {
            id: id(text),
            state: *state,
        })
        .collect()
}

/// `id → reasons` (keep) or `id → "PRUNE: reason"`.
fn outcome(decisions: &[Decision]) -> BTreeMap<String, String> {
    decisions
        .iter()
        .map(|d| {
            let text = if d.is_prune() {
                format!("PRUNE: {}", d.reasons())
            } else {
                d.reasons()
            };
            (d.id.to_string(), text)
        })
        .collect()
}

use State::{Completed as C, Failed as F, Incomplete as I, PartiallyFailed as P};

#[test]
fn given_the_docs_example_when_decided_then_every_reason_is_as_documented() {
    // docs/retention.md "Example": keepLast 2, keepDaily 3, keepWeekly 2, at 2026-11-24T03:30:00Z.
    let rules = Retention {
        keep_last: Some(2),
        keep_daily: Some(3),
        keep_weekly: Some(2),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261101T020000Z", C),
        ("20261116T020000Z", C),
        ("20261120T020000Z", C),
        ("20261121T020000Z", P),
        ("20261121T120000Z", I),
        ("20261122T020000Z", C),
        ("20261122T140000Z", C),
        ("20261123T020000Z", F),
        ("20261124T020000Z", F),
        ("20261124T030000Z", I),
    ]);
    let decisions = decide(&list, &rules, at("2026-11-24T03:30:00Z"));
    let expected: BTreeMap<String, String> = [
        ("20261101T020000Z", "weekly 2026-W44"),
        ("20261116T020000Z", "PRUNE: kept by no rule"),
        ("20261120T020000Z", "daily 2026-11-20"),
        ("20261121T020000Z", "daily 2026-11-21"),
        (
            "20261121T120000Z",
            "PRUNE: incomplete (no manifest), started 2d15h30m ago; grace 1d",
        ),
        ("20261122T020000Z", "last 2"),
        (
            "20261122T140000Z",
            "last 2, daily 2026-11-22, weekly 2026-W47, newest good backup",
        ),
        (
            "20261123T020000Z",
            "failed after the newest good backup (kept for diagnosis)",
        ),
        (
            "20261124T020000Z",
            "failed after the newest good backup (kept for diagnosis)",
        ),
        (
            "20261124T030000Z",
            "in progress/too recent (no manifest, started 30m ago; grace 1d)",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(outcome(&decisions), expected);
    let order: Vec<&str> = decisions.iter().map(|d| d.id.as_str()).collect();
    assert!(order.is_sorted(), "oldest first: {order:?}");
}

#[test]
fn given_keep_last_2_and_four_backups_then_the_oldest_two_are_pruned() {
    let rules = Retention {
        keep_last: Some(2),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261120T000000Z", C),
        ("20261121T000000Z", C),
        ("20261122T000000Z", C),
        ("20261123T000000Z", C),
    ]);
    let d = outcome(&decide(&list, &rules, at("2026-11-23T01:00:00Z")));
    assert_eq!(d["20261120T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20261121T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20261122T000000Z"], "last 2");
    assert_eq!(d["20261123T000000Z"], "last 2, newest good backup");
}

#[test]
fn given_every_recent_backup_failed_when_decided_then_failures_do_not_use_up_keep_last() {
    // Velero #9061: keepLast counted failed backups and deleted the last good ones.
    let rules = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261120T000000Z", C),
        ("20261121T000000Z", C),
        ("20261122T000000Z", F),
        ("20261123T000000Z", F),
    ]);
    let d = outcome(&decide(&list, &rules, at("2026-11-23T01:00:00Z")));
    assert_eq!(d["20261120T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20261121T000000Z"], "last 1, newest good backup");
    assert!(!d["20261122T000000Z"].starts_with("PRUNE"), "{d:?}");
    assert!(!d["20261123T000000Z"].starts_with("PRUNE"), "{d:?}");
}

#[test]
fn given_a_newer_good_backup_when_decided_then_older_failed_ones_are_pruned() {
    let rules = Retention {
        keep_last: Some(5),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261120T000000Z", F),
        ("20261121T000000Z", C),
        ("20261122T000000Z", F),
    ]);
    let d = outcome(&decide(&list, &rules, at("2026-11-23T01:00:00Z")));
    assert_eq!(
        d["20261120T000000Z"],
        "PRUNE: failed, and a newer good backup exists"
    );
    assert_eq!(
        d["20261122T000000Z"],
        "failed after the newest good backup (kept for diagnosis)"
    );
}

#[test]
fn given_rules_that_keep_only_recent_ones_when_newest_completed_is_old_then_it_is_still_kept() {
    // keepWithin is relative to the newest good backup, and keepLast counts PartiallyFailed ones, so
    // only the safety rule keeps the newest Completed backup here.
    let rules = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261110T000000Z", C),
        ("20261120T000000Z", P),
        ("20261121T000000Z", P),
    ]);
    let d = outcome(&decide(&list, &rules, at("2026-11-23T00:00:00Z")));
    assert_eq!(d["20261110T000000Z"], "newest good backup");
    assert_eq!(d["20261120T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20261121T000000Z"], "last 1");
}

#[test]
fn given_only_partially_failed_backups_then_the_newest_is_always_kept() {
    let rules = Retention {
        keep_hourly: Some(1),
        ..Retention::default()
    };
    let list = candidates(&[("20261120T000000Z", P), ("20261121T000000Z", P)]);
    let d = outcome(&decide(&list, &rules, at("2026-11-23T00:00:00Z")));
    assert_eq!(d["20261120T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(
        d["20261121T000000Z"],
        "hourly 2026-11-21T00, newest good backup (partially failed; no completed backup exists)"
    );
}

#[test]
fn given_keep_within_then_it_counts_back_from_the_newest_good_backup_not_from_now() {
    let rules = Retention {
        keep_within: Some(Duration::from_secs(2 * 86_400)),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261101T000000Z", C),
        ("20261102T000001Z", C),
        ("20261103T000000Z", C),
    ]);
    // A month later (backups stopped): the last two days of backups are still kept.
    let d = outcome(&decide(&list, &rules, at("2026-12-03T00:00:00Z")));
    assert_eq!(d["20261101T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20261102T000001Z"], "within 2d");
    assert_eq!(d["20261103T000000Z"], "within 2d, newest good backup");
}

#[test]
fn given_periods_without_backups_then_they_are_not_counted() {
    let rules = Retention {
        keep_monthly: Some(3),
        ..Retention::default()
    };
    // Nothing in February to April: the three months kept are January, May and June.
    let list = candidates(&[
        ("20261210T000000Z", C),
        ("20260105T000000Z", C),
        ("20260120T000000Z", C),
        ("20260510T000000Z", C),
        ("20260601T000000Z", C),
    ]);
    let d = outcome(&decide(&list, &rules, at("2026-12-11T00:00:00Z")));
    assert_eq!(d["20260105T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20260120T000000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20260510T000000Z"], "monthly 2026-05");
    assert_eq!(d["20260601T000000Z"], "monthly 2026-06");
    assert_eq!(d["20261210T000000Z"], "monthly 2026-12, newest good backup");
}

#[test]
fn given_times_near_midnight_and_new_year_then_buckets_are_utc_calendar_periods() {
    let t = at("2027-01-01T00:30:00+02:00"); // 2026-12-31T22:30Z
    assert_eq!(Period::Hourly.bucket(t), "2026-12-31T22");
    assert_eq!(Period::Daily.bucket(t), "2026-12-31");
    assert_eq!(Period::Weekly.bucket(t), "2026-W53");
    assert_eq!(Period::Monthly.bucket(t), "2026-12");
    assert_eq!(Period::Yearly.bucket(t), "2026");
    // ISO week-years: 2027-01-03 (a Sunday) is still in 2026's week 53.
    assert_eq!(Period::Weekly.bucket(at("2027-01-03T12:00:00Z")), "2026-W53");
    assert_eq!(Period::Weekly.bucket(at("2027-01-04T00:00:00Z")), "2027-W01");
}

#[test]
fn given_incomplete_backups_then_only_those_older_than_the_grace_period_are_pruned() {
    let rules = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let list = candidates(&[
        ("20261121T000000Z", I),
        ("20261122T000001Z", I),
        ("20261122T120000Z", C),
        ("20261122T233000Z", I),
    ]);
    let d = outcome(&decide(&list, &rules, at("2026-11-23T00:00:00Z")));
    assert_eq!(
        d["20261121T000000Z"],
        "PRUNE: incomplete (no manifest), started 2d ago; grace 1d"
    );
    assert_eq!(
        d["20261122T000001Z"],
        "in progress/too recent (no manifest, started 23h59m ago; grace 1d)"
    );
    assert_eq!(
        d["20261122T233000Z"],
        "in progress/too recent (no manifest, started 30m ago; grace 1d)"
    );
    // A backup from a clock ahead of ours is not "older than the grace".
    let ahead = candidates(&[("20261125T000000Z", I)]);
    assert!(!decide(&ahead, &rules, at("2026-11-24T00:00:00Z"))[0].is_prune());
}

#[test]
fn given_no_rules_then_nothing_is_pruned() {
    let list = candidates(&[
        ("20261101T000000Z", C),
        ("20261102T000000Z", F),
        ("20261103T000000Z", I),
    ]);
    for rules in [
        Retention::default(),
        Retention {
            keep_last: Some(0),
            keep_within: Some(Duration::ZERO),
            ..Retention::default()
        },
    ] {
        let decisions = decide(&list, &rules, at("2026-12-01T00:00:00Z"));
        assert_eq!(decisions.len(), 3);
        for d in decisions {
            assert_eq!(d.verdict, Verdict::Keep(vec![KeepReason::NoRules]));
        }
    }
}

#[test]
fn given_backups_in_the_same_second_then_the_suffixed_id_is_the_newer_one() {
    let rules = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let list = candidates(&[("20261123T120000Z-1", C), ("20261123T120000Z", C)]);
    let d = outcome(&decide(&list, &rules, at("2026-11-24T00:00:00Z")));
    assert_eq!(d["20261123T120000Z"], "PRUNE: kept by no rule");
    assert_eq!(d["20261123T120000Z-1"], "last 1, newest good backup");
}

// ---- properties ----

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        4 => Just(State::Completed),
        2 => Just(State::PartiallyFailed),
        2 => Just(State::Failed),
        1 => Just(State::Incomplete),
    ]
}

/// Up to 40 backups at distinct seconds within ~3 years before 2027 (so every period rule matters).
fn backups() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::btree_map(0i64..100_000_000, state(), 0..40).prop_map(|m| {
        let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        m.into_iter()
            .map(|(offset, state)| Candidate {
                id: BackupId::at(base + chrono::Duration::seconds(offset)),
                state,
            })
            .collect()
    })
}

fn rules() -> impl Strategy<Value = Retention> {
    let count = || prop::option::of(0u32..5);
    (
        count(),
        count(),
        count(),
        count(),
        count(),
        count(),
        prop::option::of(0u64..400 * 86_400),
    )
        .prop_map(
            |(last, hourly, daily, weekly, monthly, yearly, within)| Retention {
                keep_last: last,
                keep_hourly: hourly,
                keep_daily: daily,
                keep_weekly: weekly,
                keep_monthly: monthly,
                keep_yearly: yearly,
                keep_within: within.map(Duration::from_secs),
            },
        )
}

/// A "now" after every backup, up to two days later (so the grace period matters).
fn now_after(list: &[Candidate], extra: i64) -> DateTime<Utc> {
    let newest = list
        .iter()
        .map(|c| c.id.time())
        .max()
        .unwrap_or_else(|| Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    newest + chrono::Duration::seconds(extra)
}

fn kept<'a>(decisions: &'a [Decision], id: &BackupId) -> &'a Decision {
    decisions.iter().find(|d| d.id == *id).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn newest_good_backup_is_never_pruned(list in backups(), rules in rules(), extra in 0i64..200_000) {
        let decisions = decide(&list, &rules, now_after(&list, extra));
        prop_assert_eq!(decisions.len(), list.len());
        let newest = |pred: fn(State) -> bool| list.iter().filter(|c| pred(c.state)).map(|c| &c.id).max();
        let guarded = newest(|s| s == State::Completed).or_else(|| newest(|s| s == State::PartiallyFailed));
        if let Some(id) = guarded {
            prop_assert!(!kept(&decisions, id).is_prune(), "{} pruned: {:?}", id, decisions);
        }
    }

    #[test]
    fn every_rule_keeps_exactly_its_count(list in backups(), rules in rules(), extra in 0i64..200_000) {
        prop_assume!(has_rules(&rules));
        let decisions = decide(&list, &rules, now_after(&list, extra));
        let mut good: Vec<&Candidate> = list.iter().filter(|c| c.state.is_good()).collect();
        good.sort_by(|a, b| b.id.cmp(&a.id));
        let with = |pred: &dyn Fn(&KeepReason) -> bool| -> Vec<BackupId> {
            decisions.iter().filter(|d| match &d.verdict {
                Verdict::Keep(r) => r.iter().any(pred),
                Verdict::Prune(_) => false,
            }).map(|d| d.id.clone()).collect()
        };
        // keepLast: exactly the N newest good backups carry it.
        let n = rules.keep_last.unwrap_or(0) as usize;
        let mut expected: Vec<BackupId> = good.iter().take(n).map(|c| c.id.clone()).collect();
        expected.sort();
        prop_assert_eq!(with(&|r| matches!(r, KeepReason::Last(_))), expected);
        // keep<Period>: the newest good backup of each of the N most recent periods having one.
        for period in Period::ALL {
            let n = period.count(&rules).unwrap_or(0) as usize;
            let mut seen = Vec::new();
            let mut expected = Vec::new();
            for c in &good {
                let b = period.bucket(c.id.time());
                if !seen.contains(&b) {
                    seen.push(b);
                    expected.push(c.id.clone());
                }
            }
            expected.truncate(n);
            expected.sort();
            prop_assert_eq!(with(&|r| matches!(r, KeepReason::Period(p, _) if *p == period)), expected);
        }
        // keepWithin: every good backup less than D behind the newest good one.
        if let (Some(d), Some(newest)) = (rules.keep_within.filter(|d| !d.is_zero()), good.first()) {
            let mut expected: Vec<BackupId> = good.iter()
                .filter(|c| (newest.id.time() - c.id.time()).to_std().unwrap() < d)
                .map(|c| c.id.clone()).collect();
            expected.sort();
            prop_assert_eq!(with(&|r| matches!(r, KeepReason::Within(_))), expected);
        }
        // Failed and incomplete backups never count toward a rule.
        for d in &decisions {
            if !d.state.is_good() {
                prop_assert!(!matches!(&d.verdict, Verdict::Keep(r) if r.iter().any(|r| matches!(r,
                    KeepReason::Last(_) | KeepReason::Period(..) | KeepReason::Within(_)))), "{:?}", d);
            }
        }
    }

    #[test]
    fn deciding_again_over_the_kept_backups_prunes_nothing(list in backups(), rules in rules(), extra in 0i64..200_000) {
        let now = now_after(&list, extra);
        let decisions = decide(&list, &rules, now);
        let kept: Vec<Candidate> = decisions.iter().filter(|d| !d.is_prune())
            .map(|d| Candidate { id: d.id.clone(), state: d.state }).collect();
        let again = decide(&kept, &rules, now);
        prop_assert!(again.iter().all(|d| !d.is_prune()), "{:?}", again);
        // And keeps them for the same reasons.
        let first: Vec<&Decision> = decisions.iter().filter(|d| !d.is_prune()).collect();
        prop_assert_eq!(first, again.iter().collect::<Vec<_>>());
    }
}
