//! An in-memory [`PodExecutor`] for unit tests: commands follow a script and every start, end, held
//! lock, release and closed stream is recorded with its (tokio) instant, so tests can assert order and
//! overlap; under `#[tokio::test(start_paused = true)]` the timing is exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::exec::{Error, ExecOutput, HeldSession, Hold, PodExecutor, Result, Target, Termination};

/// What a scripted command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Exit with `code` after `after`, printing the given output.
    Exit {
        /// Exit code.
        code: i32,
        /// Run time.
        after: Duration,
        /// Stdout.
        stdout: String,
        /// Stderr.
        stderr: String,
    },
    /// Never end (until the timeout closes the stream).
    Hang,
    /// The API server refuses the exec (HTTP 400).
    Refuse,
    /// A held command: print the marker after `after`, then wait for stdin to close.
    Hold {
        /// Time to acquire.
        after: Duration,
    },
}

impl Script {
    /// Exit 0 after `after`.
    pub fn ok_after(after: Duration) -> Self {
        Script::Exit {
            code: 0,
            after,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// Exit `code` at once with `stderr`.
    pub fn fail(code: i32, stderr: &str) -> Self {
        Script::Exit {
            code,
            after: Duration::ZERO,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The exec began.
    Started,
    /// The command ended (or timed out).
    Ended(Termination),
    /// A held command said "acquired".
    Acquired,
    /// A held command was released (stdin closed) and exited.
    Released,
    /// The stream was dropped while the command ran (cancellation, or a held session dropped).
    StreamClosed,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub at: Instant,
    /// Where.
    pub target: Target,
    /// The command's last argv element (the script of `sh -c`).
    pub command: String,
    /// What.
    pub kind: EventKind,
}

/// The stdin one feed read in full, with where it went.
type Input = (Target, Vec<u8>);

type ScriptFn = dyn Fn(&Target, &str) -> Script + Send + Sync;

/// The fake executor. Clones share the script and the event log.
#[derive(Clone)]
pub struct FakeExecutor {
    script: Arc<ScriptFn>,
    events: Arc<Mutex<Vec<Event>>>,
    inputs: Arc<Mutex<Vec<Input>>>,
}

impl FakeExecutor {
    /// Commands behave as `script(target, command)` says (`command` = the last argv element).
    pub fn new(script: impl Fn(&Target, &str) -> Script + Send + Sync + 'static) -> Self {
        FakeExecutor {
            script: Arc::new(script),
            events: Arc::default(),
            inputs: Arc::default(),
        }
    }

    /// Every command succeeds after `after`.
    pub fn succeeding(after: Duration) -> Self {
        FakeExecutor::new(move |_, _| Script::ok_after(after))
    }

    /// All events so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Events of `kind` for `command`, as (pod, instant).
    pub fn when(&self, command: &str, kind: &EventKind) -> Vec<(String, Instant)> {
        self.events()
            .into_iter()
            .filter(|e| e.command == command && &e.kind == kind)
            .map(|e| (e.target.pod, e.at))
            .collect()
    }

    /// The stdin each [`feed`](PodExecutor::feed) read in full, in order (aborted feeds are absent).
    pub fn inputs(&self) -> Vec<Input> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pods on which `command` started, sorted.
    pub fn pods_started(&self, command: &str) -> Vec<String> {
        let mut pods: Vec<String> = self
            .when(command, &EventKind::Started)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        pods.sort();
        pods
    }

    fn record(&self, target: &Target, command: &str, kind: EventKind) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(Event {
            at: Instant::now(),
            target: target.clone(),
            command: command.into(),
            kind,
        });
    }

    fn begin(&self, target: &Target, argv: &[String]) -> (Script, StreamGuard) {
        let command = argv.last().cloned().unwrap_or_default();
        self.record(target, &command, EventKind::Started);
        let script = (self.script)(target, &command);
        let guard = StreamGuard {
            fake: self.clone(),
            target: target.clone(),
            command,
            open: true,
        };
        (script, guard)
    }
}

/// Records [`EventKind::StreamClosed`] when dropped while still open.
struct StreamGuard {
    fake: FakeExecutor,
    target: Target,
    command: String,
    open: bool,
}

impl StreamGuard {
    fn end(mut self, kind: EventKind) {
        self.open = false;
        self.fake.record(&self.target, &self.command, kind);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.open {
            self.fake
                .record(&self.target, &self.command, EventKind::StreamClosed);
        }
    }
}

impl PodExecutor for FakeExecutor {
    type Held = FakeHeld;

    async fn run(
        &self,
        target: &Target,
        argv: &[String],
        _stdin: Option<Bytes>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let (script, guard) = self.begin(target, argv);
        let output = match script {
            Script::Exit {
                after,
                code,
                stdout,
                stderr,
            } if after <= timeout => {
                tokio::time::sleep(after).await;
                ExecOutput {
                    termination: Termination::Exited(code),
                    stdout,
                    stderr,
                }
            }
            Script::Exit { .. } | Script::Hang | Script::Hold { .. } => {
                tokio::time::sleep(timeout).await;
                ExecOutput::bare(Termination::TimedOut)
            }
            Script::Refuse => {
                guard.end(EventKind::Ended(Termination::Failed("refused".into())));
                return Err(refused(target));
            }
        };
        guard.end(EventKind::Ended(output.termination.clone()));
        Ok(output)
    }

    /// Scripted like `run`; the script's stdout is written to `stdout` (a write error ends the command as
    /// failed, as a broken stream does).
    async fn stream(
        &self,
        target: &Target,
        argv: &[String],
        stdout: &mut (dyn AsyncWrite + Send + Unpin),
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut out = self.run(target, argv, None, timeout).await?;
        if !out.stdout.is_empty() {
            let written = async {
                stdout.write_all(out.stdout.as_bytes()).await?;
                stdout.flush().await
            };
            if let Err(e) = written.await {
                out.termination = Termination::Failed(format!("streaming stdout broke: {e}"));
            }
        }
        out.stdout.clear();
        Ok(out)
    }

    /// Reads `input` to its end first (a read error aborts: recorded as [`EventKind::StreamClosed`] and
    /// answered as failed), then behaves as scripted like `run`.
    async fn feed(
        &self,
        target: &Target,
        argv: &[String],
        input: &mut (dyn AsyncRead + Send + Unpin),
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut bytes = Vec::new();
        if let Err(e) = input.read_to_end(&mut bytes).await {
            let (_, guard) = self.begin(target, argv);
            drop(guard);
            return Ok(ExecOutput::bare(Termination::Failed(format!(
                "reading the input broke: {e}"
            ))));
        }
        let out = self.run(target, argv, None, timeout).await?;
        self.inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((target.clone(), bytes));
        Ok(out)
    }

    async fn hold(&self, target: &Target, argv: &[String], timeout: Duration) -> Result<Hold<FakeHeld>> {
        let (script, guard) = self.begin(target, argv);
        match script {
            Script::Hold { after } if after <= timeout => {
                tokio::time::sleep(after).await;
                self.record(target, &guard.command, EventKind::Acquired);
                Ok(Hold::Acquired(FakeHeld { guard: Some(guard) }))
            }
            Script::Exit {
                code,
                after,
                stdout,
                stderr,
            } if after <= timeout => {
                tokio::time::sleep(after).await;
                guard.end(EventKind::Ended(Termination::Exited(code)));
                Ok(Hold::Ended(ExecOutput {
                    termination: Termination::Exited(code),
                    stdout,
                    stderr,
                }))
            }
            Script::Refuse => {
                guard.end(EventKind::Ended(Termination::Failed("refused".into())));
                Err(refused(target))
            }
            _ => {
                tokio::time::sleep(timeout).await;
                guard.end(EventKind::Ended(Termination::TimedOut));
                Ok(Hold::Ended(ExecOutput::bare(Termination::TimedOut)))
            }
        }
    }
}

fn refused(target: &Target) -> Error {
    Error::Open {
        target: target.clone(),
        source: kube::Error::Api(
            kube::core::Status::failure("pod is not running", "BadRequest")
                .with_code(400)
                .boxed(),
        ),
    }
}

/// A fake held session; dropping it records [`EventKind::StreamClosed`].
#[derive(Debug)]
pub struct FakeHeld {
    guard: Option<StreamGuard>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.target, self.command)
    }
}

impl HeldSession for FakeHeld {
    async fn release(mut self, _timeout: Duration) -> ExecOutput {
        if let Some(g) = self.guard.take() {
            g.end(EventKind::Released);
        }
        ExecOutput {
            termination: Termination::Exited(0),
            stdout: "FREEZEFRAME_ACQUIRED\n".into(),
            stderr: String::new(),
        }
    }
}
