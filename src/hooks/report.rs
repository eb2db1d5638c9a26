//! What a freeze/thaw did: per step and pod the result, exit code and output tails; the freeze window;
//! and an overall status where a failure that was continued past is a partial failure, never a success.

use std::fmt;
use std::time::Duration;

use super::budget::Exceeded;
use super::exec::{ExecOutput, Target, Termination};
use super::plan::Skipped;
use crate::exit::Outcome;

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationResult {
    /// Exit code 0.
    Succeeded,
    /// A held lock (`background: true`) was acquired; it is released at thaw.
    Held,
    /// Non-zero exit code.
    Exited(i32),
    /// The timeout expired; the stream was closed and the remote command may still be running.
    TimedOut(Duration),
    /// It could not be run or ended without an exit code (refused exec, command not found, lost
    /// stream, a held command that ended before saying "acquired").
    Failed(String),
    /// Stopped by cancellation (SIGTERM): the stream was closed.
    Cancelled,
    /// Still running when the freeze budget (`rules.maxFreeze`, the value here) ran out: the stream was
    /// closed and the group thawed.
    CutOff(Duration),
    /// Not run: the pod had no pre action started, so there is nothing to thaw on it.
    NotRun(String),
}

impl InvocationResult {
    /// From a command's termination (exit 0 = success).
    pub fn from_termination(t: &Termination, timeout: Duration) -> Self {
        match t {
            Termination::Exited(0) => InvocationResult::Succeeded,
            Termination::Exited(c) => InvocationResult::Exited(*c),
            Termination::TimedOut => InvocationResult::TimedOut(timeout),
            Termination::Failed(m) => InvocationResult::Failed(m.clone()),
        }
    }

    /// A failure of the action (cancellation and not running are not failures of the action).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            InvocationResult::Exited(_)
                | InvocationResult::TimedOut(_)
                | InvocationResult::Failed(_)
                | InvocationResult::CutOff(_)
        )
    }

    /// The exit code, when there is one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            InvocationResult::Succeeded => Some(0),
            InvocationResult::Exited(c) => Some(*c),
            _ => None,
        }
    }
}

impl fmt::Display for InvocationResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvocationResult::Succeeded => f.write_str("succeeded"),
            InvocationResult::Held => f.write_str("lock acquired and held"),
            InvocationResult::Exited(c) => write!(f, "exit code {c}"),
            InvocationResult::TimedOut(d) => write!(
                f,
                "timed out after {} (stream closed; the command may still be running in the container)",
                crate::policy::values::format_duration(*d)
            ),
            InvocationResult::Failed(m) => write!(f, "failed: {m}"),
            InvocationResult::Cancelled => f.write_str("cancelled (stream closed)"),
            InvocationResult::CutOff(max) => write!(
                f,
                "cut off: the freeze exceeded maxFreeze ({}) (stream closed)",
                super::budget::seconds(*max)
            ),
            InvocationResult::NotRun(why) => write!(f, "not run: {why}"),
        }
    }
}

/// One action on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationReport {
    /// Where.
    pub target: Target,
    /// The command as written.
    pub command: String,
    /// How it ended.
    pub result: InvocationResult,
    /// Last 4 KiB of stdout.
    pub stdout: String,
    /// Last 4 KiB of stderr.
    pub stderr: String,
    /// How long it ran.
    pub duration: Duration,
}

impl InvocationReport {
    pub(crate) fn from_output(
        target: &Target,
        command: String,
        out: ExecOutput,
        timeout: Duration,
        duration: Duration,
    ) -> Self {
        InvocationReport {
            target: target.clone(),
            command,
            result: InvocationResult::from_termination(&out.termination, timeout),
            stdout: out.stdout,
            stderr: out.stderr,
            duration,
        }
    }
}

/// One step (an action over its pods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The step's name (`rules.pre[0].actions[0]`, ...).
    pub name: String,
    /// One per pod, in plan order.
    pub invocations: Vec<InvocationReport>,
}

/// Which part of the freeze a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A pre action.
    Pre,
    /// Releasing a held lock.
    Release,
    /// A post action.
    Post,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Pre => "pre action",
            Stage::Release => "release of held lock",
            Stage::Post => "post action",
        })
    }
}

/// A failed invocation, with everything needed to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where in the freeze.
    pub stage: Stage,
    /// The step.
    pub step: String,
    /// Pod, container, command, result and output tails.
    pub invocation: InvocationReport,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.invocation;
        write!(
            f,
            "{} {} `{}` on {}: {}",
            self.stage, self.step, i.command, i.target, i.result
        )?;
        for (name, tail) in [("stderr", &i.stderr), ("stdout", &i.stdout)] {
            let tail = tail.trim_end();
            if !tail.is_empty() {
                write!(f, "; {name} tail: {tail}")?;
            }
        }
        Ok(())
    }
}

/// The group's overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// Every action succeeded.
    Succeeded,
    /// The freeze completed but some action failed with `onError: continue`, or a release or post
    /// action failed (the snapshot is usable; the failures are listed).
    PartiallyFailed,
    /// A pre action failed with `onError: abort`: no snapshot, no dump.
    Failed,
    /// Cancelled (SIGTERM/SIGINT): work stopped, thaw ran.
    Cancelled,
}

impl GroupStatus {
    /// The exit code this status maps to.
    pub fn outcome(self) -> Outcome {
        match self {
            GroupStatus::Succeeded => Outcome::Success,
            GroupStatus::PartiallyFailed => Outcome::PartiallyFailed,
            GroupStatus::Failed | GroupStatus::Cancelled => Outcome::Failed,
        }
    }
}

/// Everything a freeze and its thaw did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    /// Overall.
    pub status: GroupStatus,
    /// Every failure; when the status is Failed, the first is the one that aborted the freeze.
    pub failures: Vec<Failure>,
    /// Pre steps that ran (a step after an abort does not appear).
    pub pre: Vec<StepReport>,
    /// Held locks released at thaw.
    pub releases: Vec<InvocationReport>,
    /// Post steps.
    pub post: Vec<StepReport>,
    /// Rules skipped for an empty selection.
    pub skipped: Vec<Skipped>,
    /// First pre action start to last thaw end; `None` when no pre action started.
    pub freeze_window: Option<Duration>,
    /// The freeze budget (`rules.maxFreeze`); `None` = unbounded.
    pub max_freeze: Option<Duration>,
    /// The budget ran out: the freeze was cut short (status `Failed` when it ran out during the pre
    /// steps, else at least `PartiallyFailed`).
    pub exceeded: Option<Exceeded>,
}

impl GroupReport {
    /// The failure that aborted the freeze, if it was aborted.
    pub fn abort_cause(&self) -> Option<&Failure> {
        (self.status == GroupStatus::Failed)
            .then(|| self.failures.first())
            .flatten()
    }
}

impl fmt::Display for GroupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.status)?;
        if let Some(w) = self.freeze_window {
            write!(f, ", frozen for {:.3}s", w.as_secs_f64())?;
        }
        if let Some(e) = &self.exceeded {
            write!(f, "\n  {e}")?;
        }
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        for s in &self.skipped {
            write!(f, "\n  skipped {}: {}", s.rule, s.reason)?;
        }
        Ok(())
    }
}
