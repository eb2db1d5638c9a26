//! Engine behaviour against the recording fake, under paused tokio time (timings are exact).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::hooks::exec::Target;
use crate::hooks::fake::{EventKind, FakeExecutor, Script};
use crate::hooks::plan::Step;
use crate::policy::{Action, Exec};

const SEC: Duration = Duration::from_secs(1);

fn action(cmd: &str) -> Action {
    Action {
        exec: Exec::Shell(cmd.into()),
        timeout: Duration::from_secs(60),
        on_error: OnError::Abort,
        run_in_single_pod: false,
        background: false,
    }
}

fn step(cmd: &str, pods: &[&str], tweak: impl Fn(&mut Action)) -> Step {
    let mut a = action(cmd);
    tweak(&mut a);
    Step {
        name: format!("step `{cmd}`"),
        invocations: pods
            .iter()
            .map(|p| Invocation {
                target: Target::new("db", *p, "main"),
                action: a.clone(),
            })
            .collect(),
    }
}

fn plain(_: &mut Action) {}

fn pods(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("db-{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn given_20_pods_when_freezing_then_every_pre_action_overlaps_and_window_is_one_action_long() {
    let names = pods(20);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let plan = Plan {
        pre: vec![step("freeze", &refs, plain)],
        post: vec![step("thaw", &refs, plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::succeeding(SEC);
    let engine = Engine::new(fake.clone());
    let (report, snap) = engine
        .with_freeze(&plan, &CancellationToken::new(), |_| async { "snapshot" })
        .await;
    assert_eq!(snap, Some("snapshot"));
    assert_eq!(report.status, GroupStatus::Succeeded);
    let starts = fake.when("freeze", &EventKind::Started);
    let ends = fake.when("freeze", &EventKind::Ended(Termination::Exited(0)));
    assert_eq!((starts.len(), ends.len()), (20, 20));
    let last_start = starts.iter().map(|(_, t)| *t).max().unwrap();
    let first_end = ends.iter().map(|(_, t)| *t).min().unwrap();
    assert!(last_start < first_end, "every pre start precedes every pre end");
    // One second of pre actions plus one of post actions: concurrency, not 20 × 2 s.
    assert_eq!(report.freeze_window, Some(2 * SEC));
}

#[tokio::test(start_paused = true)]
async fn given_failed_pre_hook_when_freezing_then_no_snapshot_and_post_runs_on_pods_that_started_pre() {
    let plan = Plan {
        pre: vec![
            step("flush", &["a", "b", "c"], plain),
            step("lock", &["a", "b"], plain),
            step("later", &["d"], plain),
        ],
        post: vec![step("unlock", &["a", "b", "c", "d"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|t, cmd| match (t.pod.as_str(), cmd) {
        ("b", "lock") => Script::Exit {
            code: 3,
            after: Duration::ZERO,
            stdout: "partial".into(),
            stderr: "ERROR 1205: lock wait timeout".into(),
        },
        _ => Script::ok_after(Duration::from_millis(10)),
    });
    let engine = Engine::new(fake.clone());
    let snapshot_ran = AtomicBool::new(false);
    let (report, out) = engine
        .with_freeze(&plan, &CancellationToken::new(), |_| async {
            snapshot_ran.store(true, Ordering::SeqCst)
        })
        .await;
    assert!(
        !snapshot_ran.load(Ordering::SeqCst) && out.is_none(),
        "no snapshot after abort"
    );
    assert_eq!(report.status, GroupStatus::Failed);
    assert!(
        fake.pods_started("later").is_empty(),
        "steps after the abort do not run"
    );
    assert_eq!(fake.pods_started("unlock"), ["a", "b", "c"]);
    let not_run = &report.post[0].invocations[3];
    assert_eq!(not_run.target.pod, "d");
    assert!(matches!(not_run.result, InvocationResult::NotRun(_)));
    let cause = report.abort_cause().expect("abort cause");
    assert_eq!(
        (
            cause.invocation.target.pod.as_str(),
            cause.step.as_str(),
            cause.invocation.result.exit_code()
        ),
        ("b", "step `lock`", Some(3))
    );
    assert_eq!(
        cause.to_string(),
        "pre action step `lock` `lock` on pod db/b container main: exit code 3; \
         stderr tail: ERROR 1205: lock wait timeout; stdout tail: partial"
    );
    assert_eq!(report.status.outcome(), crate::exit::Outcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn given_continue_on_error_when_action_fails_then_snapshot_runs_and_status_is_partially_failed() {
    let plan = Plan {
        pre: vec![step("flush", &["a", "b"], |a| a.on_error = OnError::Continue)],
        post: vec![step("thaw", &["a", "b"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|t, cmd| {
        if t.pod == "a" && cmd == "flush" {
            Script::fail(1, "boom")
        } else {
            Script::ok_after(SEC)
        }
    });
    let (report, out) = Engine::new(fake.clone())
        .with_freeze(&plan, &CancellationToken::new(), |_| async { 42 })
        .await;
    assert_eq!(out, Some(42));
    assert_eq!(report.status, GroupStatus::PartiallyFailed);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.status.outcome(), crate::exit::Outcome::PartiallyFailed);
    assert_eq!(fake.pods_started("thaw"), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn given_hanging_pre_action_when_timeout_expires_then_reported_timed_out_and_thaw_runs() {
    let plan = Plan {
        pre: vec![step("hang", &["a"], |a| a.timeout = 5 * SEC)],
        post: vec![step("thaw", &["a"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|_, cmd| {
        if cmd == "hang" {
            Script::Hang
        } else {
            Script::ok_after(SEC)
        }
    });
    let (report, out) = Engine::new(fake.clone())
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    assert!(out.is_none());
    assert_eq!(report.status, GroupStatus::Failed);
    let cause = report.abort_cause().unwrap();
    assert_eq!(cause.invocation.result, InvocationResult::TimedOut(5 * SEC));
    assert!(cause.to_string().contains("timed out after 5s"), "{cause}");
    assert!(cause.to_string().contains("may still be running"), "{cause}");
    assert_eq!(fake.pods_started("thaw"), ["a"]);
    assert_eq!(report.freeze_window, Some(6 * SEC));
}

#[tokio::test(start_paused = true)]
async fn given_cancellation_during_pre_step_when_freezing_then_streams_close_and_thaw_runs_on_started_pods() {
    let plan = Plan {
        pre: vec![
            step("flush", &["a", "b"], plain),
            step("next", &["a", "b"], plain),
        ],
        post: vec![step("thaw", &["a", "b"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|t, cmd| match (t.pod.as_str(), cmd) {
        ("b", "flush") => Script::Hang,
        _ => Script::ok_after(SEC),
    });
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(3 * SEC).await;
        trigger.cancel();
    });
    let (report, out) = Engine::new(fake.clone())
        .with_freeze(&plan, &cancel, |_| async {})
        .await;
    assert!(out.is_none());
    assert_eq!(report.status, GroupStatus::Cancelled);
    assert_eq!(report.pre[0].invocations[1].result, InvocationResult::Cancelled);
    assert_eq!(
        fake.when("flush", &EventKind::StreamClosed),
        [("b".to_string(), tokio::time::Instant::now() - SEC)],
        "the hanging exec stream was closed at cancellation"
    );
    assert!(fake.pods_started("next").is_empty());
    assert_eq!(fake.pods_started("thaw"), ["a", "b"], "thaw is not cancelled");
    assert_eq!(report.status.outcome(), crate::exit::Outcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn given_cancellation_during_snapshot_step_then_snapshot_stops_and_thaw_runs() {
    let plan = Plan {
        pre: vec![step("flush", &["a"], plain)],
        post: vec![step("thaw", &["a"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::succeeding(SEC);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let finished = AtomicBool::new(false);
    let (report, out) = Engine::new(fake.clone())
        .with_freeze(&plan, &cancel, |_| async {
            trigger.cancel();
            tokio::time::sleep(60 * SEC).await;
            finished.store(true, Ordering::SeqCst);
        })
        .await;
    assert!(out.is_none() && !finished.load(Ordering::SeqCst));
    assert_eq!(report.status, GroupStatus::Cancelled);
    assert_eq!(fake.pods_started("thaw"), ["a"]);
    assert_eq!(report.freeze_window, Some(2 * SEC));
}

#[tokio::test(start_paused = true)]
async fn given_held_lock_when_frozen_then_acquired_before_snapshot_and_released_before_post() {
    let plan = Plan {
        pre: vec![step("lock ${WAIT_CMD}", &["a", "b"], |a| a.background = true)],
        post: vec![step("after", &["a", "b"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|_, cmd| {
        if cmd.starts_with("lock") {
            Script::Hold { after: SEC }
        } else {
            Script::ok_after(SEC)
        }
    });
    let held_cmd = "lock echo FREEZEFRAME_ACQUIRED && cat >/dev/null";
    let engine = Engine::new(fake.clone());
    let (report, at) = engine
        .with_freeze(&plan, &CancellationToken::new(), |_| async {
            tokio::time::sleep(10 * SEC).await;
            tokio::time::Instant::now()
        })
        .await;
    let snapshot_end = at.unwrap();
    assert_eq!(report.status, GroupStatus::Succeeded);
    assert!(
        report.pre[0]
            .invocations
            .iter()
            .all(|i| i.result == InvocationResult::Held)
    );
    let acquired = fake.when(held_cmd, &EventKind::Acquired);
    let released = fake.when(held_cmd, &EventKind::Released);
    let post_start = fake.when("after", &EventKind::Started);
    assert_eq!((acquired.len(), released.len()), (2, 2));
    assert!(acquired.iter().all(|(_, t)| *t + 10 * SEC == snapshot_end));
    assert!(released.iter().all(|(_, t)| *t >= snapshot_end));
    assert!(
        released
            .iter()
            .all(|(_, r)| post_start.iter().all(|(_, p)| r <= p))
    );
    assert_eq!(report.releases.len(), 2);
    assert!(fake.when(held_cmd, &EventKind::StreamClosed).is_empty());
}

#[tokio::test(start_paused = true)]
async fn given_held_command_ending_before_marker_then_lock_not_held_is_an_aborting_failure() {
    let plan = Plan {
        pre: vec![step("lock ${WAIT_CMD}", &["a"], |a| a.background = true)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|_, _| Script::ok_after(SEC));
    let (report, out) = Engine::new(fake)
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    assert!(out.is_none());
    let cause = report.abort_cause().unwrap();
    assert!(
        cause.to_string().contains("before printing FREEZEFRAME_ACQUIRED"),
        "{cause}"
    );
}

#[tokio::test(start_paused = true)]
async fn given_snapshot_step_panics_then_thaw_runs_before_the_panic_resumes() {
    let plan = Plan {
        pre: vec![step("flush", &["a"], plain)],
        post: vec![step("thaw", &["a"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::succeeding(SEC);
    let engine = Engine::new(fake.clone());
    let cancel = CancellationToken::new();
    let caught = AssertUnwindSafe(engine.with_freeze(&plan, &cancel, |_| async { panic!("snapshot bug") }))
        .catch_unwind()
        .await;
    assert!(caught.is_err());
    assert_eq!(fake.pods_started("thaw"), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn given_frozen_group_dropped_without_thaw_then_held_sessions_are_closed() {
    let plan = Plan {
        pre: vec![step("lock ${WAIT_CMD}", &["a"], |a| a.background = true)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|_, _| Script::Hold { after: SEC });
    let engine = Engine::new(fake.clone());
    let frozen = engine.freeze(&plan, &CancellationToken::new()).await;
    assert!(frozen.is_frozen());
    drop(frozen);
    let cmd = "lock echo FREEZEFRAME_ACQUIRED && cat >/dev/null";
    assert_eq!(fake.when(cmd, &EventKind::StreamClosed).len(), 1);
    assert!(fake.when(cmd, &EventKind::Released).is_empty());
}

#[tokio::test(start_paused = true)]
async fn given_post_action_fails_then_later_post_steps_still_run_and_status_is_partially_failed() {
    let plan = Plan {
        pre: vec![step("flush", &["a"], plain)],
        post: vec![step("thaw-1", &["a"], plain), step("thaw-2", &["a"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|_, cmd| {
        if cmd == "thaw-1" {
            Script::Refuse
        } else {
            Script::ok_after(SEC)
        }
    });
    let (report, _) = Engine::new(fake.clone())
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    assert_eq!(report.status, GroupStatus::PartiallyFailed);
    assert_eq!(fake.pods_started("thaw-2"), ["a"]);
    let f = &report.failures[0];
    assert_eq!(f.stage, crate::hooks::report::Stage::Post);
    assert!(
        f.to_string()
            .contains("cannot exec in pod db/a container main: BadRequest: pod is not running"),
        "{f}"
    );
}

#[tokio::test(start_paused = true)]
async fn given_two_steps_then_second_starts_only_after_slowest_pod_of_first_ends() {
    let plan = Plan {
        pre: vec![step("one", &["a", "b"], plain), step("two", &["a", "b"], plain)],
        ..Default::default()
    };
    let fake = FakeExecutor::new(|t, _| Script::ok_after(if t.pod == "a" { SEC } else { 3 * SEC }));
    let (report, _) = Engine::new(fake.clone())
        .with_freeze(&plan, &CancellationToken::new(), |_| async {})
        .await;
    let last_one_end = fake
        .when("one", &EventKind::Ended(Termination::Exited(0)))
        .into_iter()
        .map(|(_, t)| t)
        .max()
        .unwrap();
    assert!(
        fake.when("two", &EventKind::Started)
            .iter()
            .all(|(_, t)| *t >= last_one_end)
    );
    assert_eq!(report.freeze_window, Some(6 * SEC));
}

#[tokio::test(start_paused = true)]
async fn given_capture_slower_than_max_freeze_when_frozen_then_thawed_at_the_budget_naming_what_it_waited_for()
 {
    let plan = Plan {
        pre: vec![step("lock", &["a", "b"], |a| a.background = true)],
        post: vec![step("thaw", &["a", "b"], plain)],
        max_freeze: Some(2 * SEC),
        ..Default::default()
    };
    let fake = FakeExecutor::new(|_, cmd| match cmd {
        "lock" => Script::Hold {
            after: Duration::from_millis(500),
        },
        _ => Script::ok_after(Duration::from_millis(100)),
    });
    let start = Instant::now();
    let (report, out) = Engine::new(fake.clone())
        .with_freeze(&plan, &CancellationToken::new(), |budget| async move {
            let _quick = budget.track("the snapshot cut");
            drop(_quick);
            let _slow = budget.track("dump `all` on db/a");
            // The work stops at the cut-off, and winds down (a second) while the thaw runs.
            tokio::select! {
                _ = budget.cut_off() => {}
                _ = tokio::time::sleep(3600 * SEC) => panic!("never cut off"),
            }
            tokio::time::sleep(SEC).await;
            "wound down"
        })
        .await;
    assert_eq!(
        out,
        Some("wound down"),
        "the capture's output survives the cut-off"
    );
    assert_eq!(report.status, GroupStatus::PartiallyFailed);
    let exceeded = report.exceeded.as_ref().expect("budget exceeded");
    assert_eq!(
        exceeded.to_string(),
        "freeze exceeded maxFreeze (2s): waiting for dump `all` on db/a"
    );
    // The locks are released and the post actions start exactly at the budget, not after the wind-down.
    for (_, at) in fake.when("lock", &EventKind::Released) {
        assert_eq!(at - start, 2 * SEC);
    }
    let thaws = fake.when("thaw", &EventKind::Started);
    assert_eq!(thaws.len(), 2, "post actions always run");
    assert!(thaws.iter().all(|(_, at)| *at - start == 2 * SEC));
    assert_eq!(report.freeze_window, Some(2 * SEC + Duration::from_millis(100)));
    assert_eq!(report.max_freeze, Some(2 * SEC));
}

#[tokio::test(start_paused = true)]
async fn given_pre_action_slower_than_max_freeze_when_freezing_then_cut_off_nothing_captured_and_post_runs() {
    let plan = Plan {
        pre: vec![step("flush", &["a", "b"], |a| a.timeout = 90 * SEC)],
        post: vec![step("thaw", &["a", "b"], plain)],
        max_freeze: Some(5 * SEC),
        ..Default::default()
    };
    let fake = FakeExecutor::new(|t, cmd| match (t.pod.as_str(), cmd) {
        ("b", "flush") => Script::Hang,
        _ => Script::ok_after(SEC),
    });
    let captured = AtomicBool::new(false);
    let (report, out) = Engine::new(fake.clone())
        .with_freeze(&plan, &CancellationToken::new(), |_| async {
            captured.store(true, Ordering::SeqCst)
        })
        .await;
    assert!(out.is_none() && !captured.load(Ordering::SeqCst));
    assert_eq!(report.status, GroupStatus::Failed);
    assert_eq!(
        report.exceeded.as_ref().unwrap().to_string(),
        "freeze exceeded maxFreeze (5s): waiting for pre action step `flush` on pod db/b container main"
    );
    let cause = report.abort_cause().unwrap();
    assert_eq!(cause.invocation.result, InvocationResult::CutOff(5 * SEC));
    assert_eq!(fake.when("flush", &EventKind::StreamClosed).len(), 1);
    assert_eq!(fake.pods_started("thaw"), ["a", "b"]);
    assert_eq!(report.freeze_window, Some(6 * SEC));
}

#[tokio::test(start_paused = true)]
async fn given_freeze_within_max_freeze_then_nothing_is_cut_and_the_budget_is_reported() {
    let plan = Plan {
        pre: vec![step("flush", &["a"], plain)],
        post: vec![step("thaw", &["a"], plain)],
        max_freeze: Some(60 * SEC),
        ..Default::default()
    };
    let (report, out) = Engine::new(FakeExecutor::succeeding(SEC))
        .with_freeze(&plan, &CancellationToken::new(), |budget| async move {
            tokio::time::sleep(50 * SEC).await;
            budget.is_cut_off()
        })
        .await;
    assert_eq!(out, Some(false));
    assert_eq!(report.status, GroupStatus::Succeeded);
    assert_eq!(report.exceeded, None);
    assert_eq!(report.max_freeze, Some(60 * SEC));
    assert_eq!(report.freeze_window, Some(52 * SEC));
}
