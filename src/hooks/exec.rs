//! The one side effect of hooks: run a command in a pod's container ([`PodExecutor`]), either to its end
//! or held open until released ([`PodExecutor::hold`]), with the Kubernetes implementation [`KubeExecutor`].
//!
//! A timeout closes the exec stream; like kubelet, the API server does not kill the remote process, so a
//! timed-out command may linger in the container (the report says so). A held session's command is
//! ended by closing its stdin ([`HeldSession::release`]); when freezeframe dies, the stream drops, the
//! container runtime closes the command's stdin, and the held lock is released just the same.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::{AttachParams, AttachedProcess};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

/// How much of each output stream is kept: the last 4 KiB.
pub const TAIL_BYTES: usize = 4096;

/// The line a held command prints on stdout once its lock is acquired.
pub const ACQUIRED_MARKER: &str = "FREEZEFRAME_ACQUIRED";

/// What `${WAIT_CMD}` becomes: say "acquired", then block until freezeframe closes stdin. One simple
/// command list without `;` or quotes, so it also works where `${WAIT_CMD}` sits inside a quoted string
/// or after mysql's `system` (which ends at `;`).
pub const WAIT_CMD_EXPANSION: &str = "echo FREEZEFRAME_ACQUIRED && cat >/dev/null";

/// Errors of starting a command (a command that ran and failed is an [`ExecOutput`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused the exec request (pod gone, not running, container unknown, RBAC).
    #[error("cannot exec in {target}")]
    Open {
        /// Where.
        target: Target,
        /// The API answer.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// One line for reports: what failed and the API server's own message (not kube-rs's debug dump).
    pub fn summary(&self) -> String {
        crate::k8s::errors::chain(self)
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A container of a pod: where a command runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name (always explicit: never left to the server's defaulting).
    pub container: String,
}

impl Target {
    /// A target.
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>, container: impl Into<String>) -> Self {
        Target {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        }
    }

    /// `namespace/pod`.
    pub fn pod_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {}/{} container {}",
            self.namespace, self.pod, self.container
        )
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this code.
    Exited(i32),
    /// The timeout expired and the stream was closed; the remote process may still be running.
    TimedOut,
    /// The runtime reported a failure without an exit code (command not found, stream lost).
    Failed(String),
}

impl Termination {
    /// Exit code 0.
    pub fn is_success(&self) -> bool {
        *self == Termination::Exited(0)
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Exited(c) => write!(f, "exit code {c}"),
            Termination::TimedOut => write!(f, "timed out (stream closed; the command may still run)"),
            Termination::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

/// A finished (or abandoned) command: how it ended and the last [`TAIL_BYTES`] of each stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub termination: Termination,
    /// Last 4 KiB of stdout.
    pub stdout: String,
    /// Last 4 KiB of stderr.
    pub stderr: String,
}

impl ExecOutput {
    /// An output with empty tails.
    pub fn bare(termination: Termination) -> Self {
        ExecOutput {
            termination,
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// The result of [`PodExecutor::hold`].
#[derive(Debug)]
pub enum Hold<H> {
    /// The command printed [`ACQUIRED_MARKER`] and now waits for its stdin to close.
    Acquired(H),
    /// It ended (or timed out) before saying "acquired": the lock was not taken.
    Ended(ExecOutput),
}

/// Runs commands in containers. Implementations own their timeouts: on expiry they close the stream
/// and answer [`Termination::TimedOut`] with whatever output arrived.
pub trait PodExecutor: Send + Sync {
    /// An acquired held session.
    type Held: HeldSession;

    /// Run `argv` to its end, feeding `stdin` (then closing it) when given.
    fn run(
        &self,
        target: &Target,
        argv: &[String],
        stdin: Option<Bytes>,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Run `argv` to its end, copying its stdout into `stdout` as it arrives (for dumps: never held whole
    /// in memory); the returned stdout tail is empty. A failed write to `stdout` (the consumer is gone) or
    /// a broken stream closes the exec stream at once and ends as [`Termination::Failed`]. `timeout`
    /// covers the whole command.
    fn stream(
        &self,
        target: &Target,
        argv: &[String],
        stdout: &mut (dyn AsyncWrite + Send + Unpin),
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Run `argv` to its end with `input` copied into its stdin, which is closed at the end of `input`.
    ///
    /// A read error of `input` (e.g. a checksum mismatch) aborts the stream without closing stdin first
    /// and ends as [`Termination::Failed`]; the command ending before it read all of `input` is not an
    /// error of ours (its exit code says how it went).
    fn feed(
        &self,
        target: &Target,
        argv: &[String],
        input: &mut (dyn AsyncRead + Send + Unpin),
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Start `argv` with stdin open and wait up to `timeout` for the [`ACQUIRED_MARKER`] line on stdout.
    fn hold(
        &self,
        target: &Target,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<Hold<Self::Held>>> + Send;
}

/// A command kept running with its stdin open. Dropping it closes the stream (the lock is released
/// without waiting for the exit code); [`release`](HeldSession::release) closes stdin and waits.
pub trait HeldSession: Send + 'static {
    /// Close stdin and wait up to `timeout` for the command to end.
    fn release(self, timeout: Duration) -> impl Future<Output = ExecOutput> + Send;
}

/// The last [`TAIL_BYTES`] of a byte stream.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    /// Append bytes, forgetting all but the last [`TAIL_BYTES`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * TAIL_BYTES {
            self.buf.drain(..self.buf.len() - TAIL_BYTES);
        }
    }

    /// The tail as text (invalid UTF-8, including a character cut at the start, is replaced).
    pub fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(&self.buf[start..]).into_owned()
    }
}

/// `argv` with every `${WAIT_CMD}` replaced by [`WAIT_CMD_EXPANSION`].
pub fn expand_wait_cmd(argv: &[String]) -> Vec<String> {
    argv.iter()
        .map(|a| a.replace(crate::policy::WAIT_CMD, WAIT_CMD_EXPANSION))
        .collect()
}

/// The Kubernetes executor: `pods/exec` over WebSocket through kube-rs.
#[derive(Clone)]
pub struct KubeExecutor {
    client: kube::Client,
}

impl KubeExecutor {
    /// An executor using `client`.
    pub fn new(client: kube::Client) -> Self {
        KubeExecutor { client }
    }

    async fn open(&self, target: &Target, argv: &[String], stdin: bool) -> Result<AttachedProcess> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &target.namespace);
        let params = AttachParams::default()
            .container(target.container.clone())
            .stdin(stdin)
            .stdout(true)
            .stderr(true);
        api.exec(&target.pod, argv.to_vec(), &params)
            .await
            .map_err(|source| Error::Open {
                target: target.clone(),
                source,
            })
    }
}

impl PodExecutor for KubeExecutor {
    type Held = KubeHeld;

    async fn run(
        &self,
        target: &Target,
        argv: &[String],
        stdin: Option<Bytes>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        if let Some(bytes) = stdin {
            // The same path as a dump's replay: a command that ends without reading it all is not
            // waited on.
            return self.feed(target, argv, &mut &bytes[..], timeout).await;
        }
        let mut out = Tail::default();
        let mut err = Tail::default();
        let ran = tokio::time::timeout(timeout, async {
            let mut proc = self.open(target, argv, false).await?;
            let (status, ended) = (status_of(&mut proc), Ended::default());
            let (stdout, stderr) = (ended.wrap(proc.stdout()), ended.wrap(proc.stderr()));
            let drains = async {
                tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
            };
            Ok(termination(until_status(status, &ended, drains).await.0))
        })
        .await;
        // On timeout the future above was dropped, and with it the stream.
        let termination = match ran {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(e),
            Err(_) => Termination::TimedOut,
        };
        Ok(ExecOutput {
            termination,
            stdout: out.text(),
            stderr: err.text(),
        })
    }

    async fn stream(
        &self,
        target: &Target,
        argv: &[String],
        stdout: &mut (dyn AsyncWrite + Send + Unpin),
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let err = Arc::new(Mutex::new(Tail::default()));
        let ran = tokio::time::timeout(timeout, async {
            let mut proc = self.open(target, argv, false).await?;
            let (status, ended) = (status_of(&mut proc), Ended::default());
            let mut out = ended.wrap(proc.stdout()).expect("stdout was requested");
            let stderr = ended.wrap(proc.stderr());
            let copy = async {
                let copied = async {
                    tokio::io::copy(&mut out, stdout).await?;
                    stdout.flush().await
                };
                // Stderr is read while stdout is copied (neither may block the other).
                let (copied, ()) = tokio::join!(copied, drain_shared(stderr, err.clone()));
                copied
            };
            let (status, copied) = until_status(status, &ended, copy).await;
            if let Err(e) = copied {
                // Returning drops the stream: the remote command's stdout closes and it gets SIGPIPE.
                return Ok(Termination::Failed(format!("streaming stdout broke: {e}")));
            }
            Ok(termination(status))
        })
        .await;
        let termination = match ran {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(e),
            Err(_) => Termination::TimedOut,
        };
        Ok(ExecOutput {
            termination,
            stdout: String::new(),
            stderr: lock(&err).text(),
        })
    }

    async fn feed(
        &self,
        target: &Target,
        argv: &[String],
        input: &mut (dyn AsyncRead + Send + Unpin),
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut out = Tail::default();
        let mut err = Tail::default();
        let ran = tokio::time::timeout(timeout, async {
            let mut proc = self.open(target, argv, true).await?;
            let (status, ended) = (status_of(&mut proc), Ended::default());
            let (stdout, stderr) = (ended.wrap(proc.stdout()), ended.wrap(proc.stderr()));
            let Some(mut writer) = proc.stdin() else {
                return Ok(Termination::Failed("the exec stream has no stdin".into()));
            };
            let feed = async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = input
                        .read(&mut buf)
                        .await
                        .map_err(|e| format!("reading the input broke: {e}"))?;
                    if n == 0 {
                        // Sends the v5 "close stdin" frame (older protocols close the whole stream).
                        let _ = writer.shutdown().await;
                        return Ok(());
                    }
                    if writer.write_all(&buf[..n]).await.is_err() {
                        // The command stopped reading (it ended): its exit code tells.
                        return Ok(());
                    }
                }
            };
            let mut feed = std::pin::pin!(feed);
            let mut feeding = true;
            let drains = async {
                tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
            };
            let mut drains = std::pin::pin!(drains);
            let mut status = std::pin::pin!(status);
            let mut drained = false;
            // The status can come while input is still pending: the command ended without reading it
            // all. kube-rs then stops reading stdin without failing our writes, so the feed is dropped
            // there and then, never awaited to its end.
            let status = loop {
                tokio::select! {
                    fed = &mut feed, if feeding => {
                        feeding = false;
                        if let Err(message) = fed {
                            // Returning drops the stream unclosed: the input is not passed on as complete.
                            return Ok(Termination::Failed(message));
                        }
                    }
                    s = &mut status => break s,
                    () = &mut drains, if !drained => drained = true,
                }
            };
            ended.set();
            if !drained {
                drains.await;
            }
            Ok(termination(status))
        })
        .await;
        let termination = match ran {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(e),
            Err(_) => Termination::TimedOut,
        };
        Ok(ExecOutput {
            termination,
            stdout: out.text(),
            stderr: err.text(),
        })
    }

    async fn hold(&self, target: &Target, argv: &[String], timeout: Duration) -> Result<Hold<KubeHeld>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut proc = match tokio::time::timeout_at(deadline, self.open(target, argv, true)).await {
            Ok(p) => p?,
            Err(_) => return Ok(Hold::Ended(ExecOutput::bare(Termination::TimedOut))),
        };
        let out = Arc::new(Mutex::new(Tail::default()));
        let err = Arc::new(Mutex::new(Tail::default()));
        let (status, ended) = (status_of(&mut proc), Ended::default());
        let (stdout, stderr) = (ended.wrap(proc.stdout()), ended.wrap(proc.stderr()));
        let stdin = proc.stdin();
        let (acquired_tx, acquired_rx) = tokio::sync::oneshot::channel();
        let (o, e) = (out.clone(), err.clone());
        let mut task = tokio::spawn(async move {
            // The process owns the stream's message loop: it lives as long as this task.
            let _proc = proc;
            let io = async {
                tokio::join!(watch_for_marker(stdout, o, acquired_tx), drain_shared(stderr, e));
            };
            termination(until_status(status, &ended, io).await.0)
        });
        let tails = |t: Termination| ExecOutput {
            termination: t,
            stdout: lock(&out).text(),
            stderr: lock(&err).text(),
        };
        match tokio::time::timeout_at(deadline, acquired_rx).await {
            Ok(Ok(())) => Ok(Hold::Acquired(KubeHeld {
                stdin,
                task: Some(task),
                out,
                err,
            })),
            // Stdout ended without the marker: the command is ending; collect how.
            Ok(Err(_)) => match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(t)) => Ok(Hold::Ended(tails(t))),
                Ok(Err(join)) => Ok(Hold::Ended(tails(Termination::Failed(join.to_string())))),
                Err(_) => {
                    task.abort();
                    Ok(Hold::Ended(tails(Termination::TimedOut)))
                }
            },
            Err(_) => {
                task.abort();
                Ok(Hold::Ended(tails(Termination::TimedOut)))
            }
        }
    }
}

/// The exit status of an exec: `None` when the stream ended without one. It resolves once kube-rs's
/// message loop has stopped, after it handed over all output.
fn status_of(proc: &mut AttachedProcess) -> impl Future<Output = Option<Status>> + Send + use<> {
    proc.take_status().expect("status is taken once")
}

/// Runs `io` (reading the exec's output through readers wrapped by `ended`) until it ends and the
/// status has come; once the status is in, the readers end at the bytes already received.
async fn until_status<T>(
    status: impl Future<Output = Option<Status>>,
    ended: &Ended,
    io: impl Future<Output = T>,
) -> (Option<Status>, T) {
    let mut io = std::pin::pin!(io);
    let mut status = std::pin::pin!(status);
    tokio::select! {
        done = &mut io => (status.await, done),
        s = &mut status => {
            ended.set();
            (s, io.await)
        }
    }
}

/// Marks the end of an exec's output. kube-rs's message loop hands over every output byte before it
/// reports the status, but when the loop fails (the server closed the connection while stdin was
/// still being sent) it drops its pipes' write halves without closing them, so their readers would
/// wait forever. Readers wrapped here end instead of waiting once the status is in.
#[derive(Debug, Clone, Default)]
struct Ended(Arc<std::sync::atomic::AtomicBool>);

impl Ended {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn wrap<R>(&self, reader: Option<R>) -> Option<UntilEnded<R>> {
        reader.map(|inner| UntilEnded {
            inner,
            ended: self.clone(),
        })
    }
}

/// A reader that reports end of stream instead of waiting once its [`Ended`] is set.
struct UntilEnded<R> {
    inner: R,
    ended: Ended,
}

impl<R: AsyncRead + Unpin> AsyncRead for UntilEnded<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            std::task::Poll::Pending if self.ended.0.load(std::sync::atomic::Ordering::Acquire) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// A held Kubernetes exec session. Dropping it aborts the stream (the remote stdin closes).
pub struct KubeHeld {
    stdin: Option<tokio::io::WriteHalf<tokio::io::SimplexStream>>,
    task: Option<JoinHandle<Termination>>,
    out: Arc<Mutex<Tail>>,
    err: Arc<Mutex<Tail>>,
}

impl fmt::Debug for KubeHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeHeld").finish_non_exhaustive()
    }
}

impl HeldSession for KubeHeld {
    async fn release(mut self, timeout: Duration) -> ExecOutput {
        if let Some(mut w) = self.stdin.take() {
            // Sends the v5 "close stdin" frame (older protocols close the whole stream).
            let _ = w.shutdown().await;
        }
        let termination = match self.task.as_mut() {
            Some(task) => match tokio::time::timeout(timeout, task).await {
                Ok(Ok(t)) => t,
                Ok(Err(join)) => Termination::Failed(join.to_string()),
                Err(_) => Termination::TimedOut,
            },
            None => Termination::Failed("session already released".into()),
        };
        if let Some(task) = self.task.take() {
            task.abort();
        }
        ExecOutput {
            termination,
            stdout: lock(&self.out).text(),
            stderr: lock(&self.err).text(),
        }
    }
}

impl Drop for KubeHeld {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn lock(t: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

async fn drain(reader: Option<impl AsyncRead + Unpin>, tail: &mut Tail) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut buf).await
        && n > 0
    {
        tail.push(&buf[..n]);
    }
}

async fn drain_shared(reader: Option<impl AsyncRead + Unpin>, tail: Arc<Mutex<Tail>>) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut buf).await
        && n > 0
    {
        lock(&tail).push(&buf[..n]);
    }
}

/// Drain stdout into `tail`, firing `acquired` at the first line that is exactly [`ACQUIRED_MARKER`].
async fn watch_for_marker(
    reader: Option<impl AsyncRead + Unpin>,
    tail: Arc<Mutex<Tail>>,
    acquired: tokio::sync::oneshot::Sender<()>,
) {
    let Some(mut reader) = reader else { return };
    let mut acquired = Some(acquired);
    let mut line = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut buf).await
        && n > 0
    {
        lock(&tail).push(&buf[..n]);
        if acquired.is_none() {
            continue;
        }
        for &b in &buf[..n] {
            if b != b'\n' {
                if line.len() <= ACQUIRED_MARKER.len() + 2 {
                    line.push(b);
                }
                continue;
            }
            if line.trim_ascii() == ACQUIRED_MARKER.as_bytes()
                && let Some(tx) = acquired.take()
            {
                let _ = tx.send(());
                break;
            }
            line.clear();
        }
    }
}

/// The exit status on the error channel, as the API server reports it.
fn termination(status: Option<Status>) -> Termination {
    let Some(status) = status else {
        return Termination::Failed("the exec stream ended without an exit status".into());
    };
    if status.status.as_deref() == Some("Success") {
        return Termination::Exited(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode")
        && let Some(code) = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse().ok())
    {
        return Termination::Exited(code);
    }
    Termination::Failed(
        status
            .message
            .or(status.reason)
            .unwrap_or_else(|| "unknown exec failure".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn given_long_output_when_tailed_then_only_last_4_kib_kept() {
        let mut t = Tail::default();
        for i in 0..10_000 {
            t.push(format!("{i}\n").as_bytes());
        }
        let text = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("9999\n"));
    }

    #[test]
    fn given_exit_code_status_then_code_is_read_from_causes() {
        let status = Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("7".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(termination(Some(status)), Termination::Exited(7));
        let ok = Status {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(termination(Some(ok)), Termination::Exited(0));
        assert!(matches!(termination(None), Termination::Failed(_)));
    }

    #[test]
    fn given_wait_cmd_in_shell_command_then_expanded_to_marker_and_stdin_wait() {
        let argv = vec!["sh".into(), "-c".into(), "lock && ${WAIT_CMD}; unlock".into()];
        assert_eq!(
            expand_wait_cmd(&argv)[2],
            "lock && echo FREEZEFRAME_ACQUIRED && cat >/dev/null; unlock"
        );
    }

    #[tokio::test]
    async fn given_marker_split_across_chunks_then_acquired_fires() {
        let (r, mut w) = tokio::io::simplex(64);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_for_marker(Some(r), tail.clone(), tx));
        w.write_all(b"locking\nFREEZEFRAME_").await.unwrap();
        w.write_all(b"ACQUIRED\n").await.unwrap();
        rx.await.expect("marker seen");
        w.shutdown().await.unwrap();
        watch.await.unwrap();
        assert_eq!(lock(&tail).text(), "locking\nFREEZEFRAME_ACQUIRED\n");
    }

    #[tokio::test]
    async fn given_pipe_whose_writer_vanished_unclosed_when_status_is_in_then_reader_ends_with_what_was_sent()
    {
        let (r, mut w) = tokio::io::simplex(64);
        w.write_all(b"last words").await.unwrap();
        // Dropped without shutdown, as kube-rs's message loop does when it fails.
        drop(w);
        let ended = Ended::default();
        let mut tail = Tail::default();
        let status = async { Some(Status::default()) };
        let (got, ()) = until_status(status, &ended, drain(ended.wrap(Some(r)), &mut tail)).await;
        assert_eq!(got, Some(Status::default()));
        assert_eq!(tail.text(), "last words");
    }

    #[tokio::test]
    async fn given_marker_only_inside_a_longer_line_then_not_acquired() {
        let (r, mut w) = tokio::io::simplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_for_marker(Some(r), Arc::default(), tx));
        w.write_all(b"+ echo FREEZEFRAME_ACQUIRED\n").await.unwrap();
        w.shutdown().await.unwrap();
        watch.await.unwrap();
        assert!(rx.await.is_err(), "sender dropped without firing");
    }
}
