//! The group freeze: each pre step runs on all its pods at once, steps in order; the caller's snapshot
//! step runs inside the freeze; the thaw (held locks released, then post steps) always runs — after
//! success, an aborting failure, a timeout, a failed or panicking snapshot step, and cancellation.
//!
//! [`Engine::with_freeze`] is the safe shape: it runs `inside` only when the freeze completed and thaws
//! whatever happens. [`Engine::freeze`] / [`FrozenGroup::thaw`] are the two halves for callers that need
//! them; a [`FrozenGroup`] dropped without `thaw` closes its held sessions (releasing the locks) and logs
//! an error, but cannot run post actions (there is no async drop).
//!
//! Cancellation (a [`CancellationToken`] a SIGTERM handler triggers) stops pre steps in flight (their
//! streams are closed) and the snapshot step; it never stops the thaw, whose actions have their own
//! timeouts.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::exec::{ACQUIRED_MARKER, HeldSession, Hold, PodExecutor, Termination};
use super::plan::{Invocation, Plan};
use super::report::{
    Failure, GroupReport, GroupStatus, InvocationReport, InvocationResult, Stage, StepReport,
};
use crate::policy::OnError;

/// Runs plans with one executor.
#[derive(Debug, Clone)]
pub struct Engine<E> {
    executor: E,
}

/// A pod as `namespace/name` (a pod is touched once any action started on any of its containers).
type PodKey = (String, String);

fn pod_key(inv: &Invocation) -> PodKey {
    (inv.target.namespace.clone(), inv.target.pod.clone())
}

impl<E: PodExecutor> Engine<E> {
    /// An engine running commands through `executor`.
    pub fn new(executor: E) -> Self {
        Engine { executor }
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// Freeze, run `inside` if the freeze completed (and cancellation has not fired), then thaw. Returns
    /// the report and `inside`'s output (`None` when it did not run or was cancelled). A panic in
    /// `inside` is resumed after the thaw.
    ///
    /// `inside` gets the freeze's [`Budget`]: when `plan.max_freeze` runs out it fires
    /// [`Budget::cut_off`], the thaw starts at once, and `inside` winds down (closing its streams,
    /// removing what it half-wrote) while the thaw runs; its output, with what it did capture, is still
    /// returned, and the report's `exceeded` says what the freeze was waiting for.
    pub async fn with_freeze<T, Fut>(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
        inside: impl FnOnce(Budget) -> Fut,
    ) -> (GroupReport, Option<T>)
    where
        Fut: Future<Output = T>,
    {
        let frozen = self.freeze(plan, cancel).await;
        if !frozen.is_frozen() {
            return (frozen.thaw().await, None);
        }
        let budget = frozen.budget.clone();
        let work = AssertUnwindSafe(inside(budget.clone())).catch_unwind();
        tokio::pin!(work);
        let (report, finished) = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                tracing::warn!("cancelled during the snapshot step; thawing");
                (frozen.thaw().await, None)
            }
            r = &mut work => (frozen.thaw().await, Some(r)),
            _ = budget.expire() => {
                // Thaw now; what was cut off winds down meanwhile.
                let (report, r) = tokio::join!(frozen.thaw(), work);
                (report, Some(r))
            }
        };
        match finished {
            Some(Ok(v)) => (report, Some(v)),
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => (report, None),
        }
    }

    /// Run the pre steps. Always follow with [`FrozenGroup::thaw`]; check [`FrozenGroup::is_frozen`]
    /// before taking the snapshot.
    pub async fn freeze<'a>(&'a self, plan: &'a Plan, cancel: &CancellationToken) -> FrozenGroup<'a, E> {
        let mut group = FrozenGroup {
            engine: self,
            plan,
            cancel: cancel.clone(),
            budget: Budget::new(plan.max_freeze),
            started_at: None,
            touched: BTreeSet::new(),
            pre: Vec::new(),
            held: Vec::new(),
            failures: Vec::new(),
            aborted: false,
            thawed: false,
        };
        for step in &plan.pre {
            if cancel.is_cancelled() {
                break;
            }
            group.started_at.get_or_insert_with(Instant::now);
            group.budget.start();
            group.touched.extend(step.invocations.iter().map(pod_key));
            tracing::info!(step = %step.name, pods = step.invocations.len(), "pre step starts on all pods");
            let budget = &group.budget;
            let running = join_all(
                step.invocations
                    .iter()
                    .map(|inv| self.run_pre(&step.name, inv, cancel, budget)),
            );
            tokio::pin!(running);
            // Past the budget every invocation still running is cut off (its stream closed) and ends
            // at once, so the step still reports every pod and keeps the locks already held for release.
            let results = tokio::select! {
                r = &mut running => r,
                _ = budget.expire() => running.await,
            };
            let mut reports = Vec::with_capacity(results.len());
            for (inv, (report, held)) in step.invocations.iter().zip(results) {
                if let Some(h) = held {
                    group.held.push((inv, h));
                }
                if report.result.is_failure() {
                    let failure = Failure {
                        stage: Stage::Pre,
                        step: step.name.clone(),
                        invocation: report.clone(),
                    };
                    tracing::warn!(%failure, on_error = ?inv.action.on_error, "pre action failed");
                    if inv.action.on_error == OnError::Abort && !group.aborted {
                        group.aborted = true;
                        // The aborting failure goes first.
                        group.failures.insert(0, failure);
                    } else {
                        group.failures.push(failure);
                    }
                }
                reports.push(report);
            }
            group.pre.push(StepReport {
                name: step.name.clone(),
                invocations: reports,
            });
            if group.budget.is_cut_off() {
                group.aborted = true;
            }
            if group.aborted || cancel.is_cancelled() {
                break;
            }
        }
        group
    }

    async fn run_pre(
        &self,
        step: &str,
        inv: &Invocation,
        cancel: &CancellationToken,
        budget: &Budget,
    ) -> (InvocationReport, Option<E::Held>) {
        let _pending = budget.track(format!("pre action {step} on {}", inv.target));
        let start = Instant::now();
        let timeout = inv.action.timeout;
        let argv = inv.argv();
        let run = async {
            if inv.action.background {
                match self.executor.hold(&inv.target, &argv, timeout).await {
                    Ok(Hold::Acquired(h)) => Ok((None, Some(h))),
                    Ok(Hold::Ended(mut out)) => {
                        if out.termination.is_success() {
                            out.termination = Termination::Failed(format!(
                                "ended with exit code 0 before printing {ACQUIRED_MARKER}: the lock was not held"
                            ));
                        }
                        Ok((Some(out), None))
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.executor
                    .run(&inv.target, &argv, None, timeout)
                    .await
                    .map(|out| (Some(out), None))
            }
        };
        let base = |result| InvocationReport {
            target: inv.target.clone(),
            command: inv.command_text(),
            result,
            stdout: String::new(),
            stderr: String::new(),
            duration: start.elapsed(),
        };
        let ran = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            _ = budget.cut_off() => {
                let max = budget.max().unwrap_or_default();
                return (base(InvocationResult::CutOff(max)), None);
            }
            r = run => Some(r),
        };
        match ran {
            None => (base(InvocationResult::Cancelled), None),
            Some(Err(e)) => (base(InvocationResult::Failed(e.summary())), None),
            Some(Ok((_, Some(held)))) => (base(InvocationResult::Held), Some(held)),
            Some(Ok((out, None))) => {
                let out = out.unwrap_or_else(|| super::exec::ExecOutput::bare(Termination::Exited(0)));
                let report = InvocationReport::from_output(
                    &inv.target,
                    inv.command_text(),
                    out,
                    timeout,
                    start.elapsed(),
                );
                (report, None)
            }
        }
    }

    async fn run_post(&self, inv: &Invocation) -> InvocationReport {
        let start = Instant::now();
        match self
            .executor
            .run(&inv.target, &inv.argv(), None, inv.action.timeout)
            .await
        {
            Ok(out) => InvocationReport::from_output(
                &inv.target,
                inv.command_text(),
                out,
                inv.action.timeout,
                start.elapsed(),
            ),
            Err(e) => InvocationReport {
                target: inv.target.clone(),
                command: inv.command_text(),
                result: InvocationResult::Failed(e.summary()),
                stdout: String::new(),
                stderr: String::new(),
                duration: start.elapsed(),
            },
        }
    }
}

/// A group after its pre steps: frozen (or partly frozen after an abort or cancellation). Thaw it.
#[must_use = "a frozen group must be thawed: call .thaw().await"]
pub struct FrozenGroup<'a, E: PodExecutor> {
    engine: &'a Engine<E>,
    plan: &'a Plan,
    cancel: CancellationToken,
    budget: Budget,
    started_at: Option<Instant>,
    touched: BTreeSet<PodKey>,
    pre: Vec<StepReport>,
    held: Vec<(&'a Invocation, E::Held)>,
    failures: Vec<Failure>,
    aborted: bool,
    thawed: bool,
}

impl<E: PodExecutor> FrozenGroup<'_, E> {
    /// True when every pre step ran without an aborting failure and without cancellation: the snapshot
    /// step may run.
    pub fn is_frozen(&self) -> bool {
        !self.aborted && !self.cancel.is_cancelled() && !self.budget.is_cut_off()
    }

    /// The freeze's budget: what runs inside the freeze tracks itself with it and stops at its cut-off.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Release held locks (concurrently), then run every post step on every pod that had a pre action
    /// started (or that no pre step targets); failures are recorded and never stop the thaw.
    pub async fn thaw(mut self) -> GroupReport {
        self.thawed = true;
        let cancelled = self.cancel.is_cancelled();
        let mut failures = std::mem::take(&mut self.failures);

        let held = std::mem::take(&mut self.held);
        let releases = join_all(held.into_iter().map(|(inv, h)| async move {
            let start = Instant::now();
            let out = h.release(inv.action.timeout).await;
            InvocationReport::from_output(
                &inv.target,
                inv.command_text(),
                out,
                inv.action.timeout,
                start.elapsed(),
            )
        }))
        .await;
        for r in &releases {
            if r.result.is_failure() {
                failures.push(Failure {
                    stage: Stage::Release,
                    step: "held lock".into(),
                    invocation: r.clone(),
                });
            }
        }

        let planned_pre: BTreeSet<PodKey> = self
            .plan
            .pre
            .iter()
            .flat_map(|s| s.invocations.iter().map(pod_key))
            .collect();
        let anything_started = self.started_at.is_some() || self.plan.pre.is_empty();
        let engine = self.engine;
        let mut post = Vec::with_capacity(self.plan.post.len());
        for step in &self.plan.post {
            let runs = |inv: &Invocation| {
                let key = pod_key(inv);
                self.touched.contains(&key) || (anything_started && !planned_pre.contains(&key))
            };
            tracing::info!(step = %step.name, "post step starts");
            let reports = join_all(step.invocations.iter().map(|inv| async move {
                if runs(inv) {
                    engine.run_post(inv).await
                } else {
                    InvocationReport {
                        target: inv.target.clone(),
                        command: inv.command_text(),
                        result: InvocationResult::NotRun("no pre action started on this pod".into()),
                        stdout: String::new(),
                        stderr: String::new(),
                        duration: Default::default(),
                    }
                }
            }))
            .await;
            for r in &reports {
                if r.result.is_failure() {
                    tracing::warn!(step = %step.name, target = %r.target, result = %r.result, "post action failed");
                    failures.push(Failure {
                        stage: Stage::Post,
                        step: step.name.clone(),
                        invocation: r.clone(),
                    });
                }
            }
            post.push(StepReport {
                name: step.name.clone(),
                invocations: reports,
            });
        }

        let freeze_window = self.started_at.map(|s| s.elapsed());
        let exceeded = self.budget.exceeded();
        let status = if cancelled {
            GroupStatus::Cancelled
        } else if self.aborted {
            GroupStatus::Failed
        } else if failures.is_empty() && exceeded.is_none() {
            GroupStatus::Succeeded
        } else {
            GroupStatus::PartiallyFailed
        };
        let report = GroupReport {
            status,
            failures,
            pre: std::mem::take(&mut self.pre),
            releases,
            post,
            skipped: self.plan.skipped.clone(),
            freeze_window,
            max_freeze: self.plan.max_freeze,
            exceeded,
        };
        tracing::info!(%report, "group thawed");
        report
    }
}

impl<E: PodExecutor> Drop for FrozenGroup<'_, E> {
    fn drop(&mut self) {
        if !self.thawed && self.started_at.is_some() {
            tracing::error!(
                held = self.held.len(),
                "a frozen group was dropped without thaw: held sessions are closed (locks released), \
                 post actions did NOT run"
            );
        }
    }
}

#[cfg(test)]
mod tests;
