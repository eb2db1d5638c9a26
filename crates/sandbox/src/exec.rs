//! `pods/exec`: validates an exec request like the API server and kubelet do, then runs the command as a
//! host process in the pod's directory and speaks the `channel.k8s.io` WebSocket protocols over it.
//!
//! Wire behaviour, and where it comes from:
//! - Validation (container choice, unscheduled pod) is the API server's `streamLocation`: no container
//!   defaulting beyond "the only container" (kubectl resolves the `default-container` annotation and the
//!   "first container" notice on the client side and always sends `container=`).
//! - A container that does not run (pod pending on a node, waiting/terminated container, completed pod)
//!   is the kubelet's `container not found ("<c>")`, which a real API server wraps as an `InternalError`
//!   `unable to upgrade connection: ...`. It is rejected here before the upgrade (a real v5 server sends it
//!   on channel 3 after the 101); kubectl prints the same line either way.
//! - After the upgrade an empty frame opens the lowest writable channel (kubelet), output is streamed in
//!   chunks as it is produced, and one status frame on channel 3 follows all output, then a Close frame.
//!   Client frames are still read (and dropped) after it until the client closes or [`CLOSE_GRACE`]
//!   passes, the WebSocket closing handshake: a client still sending stdin to a command that ended is
//!   never reset before it read the status.
//!   The status wording depends on the protocol: `v5` goes through the API server's stream translator
//!   (client-go re-wraps the kubelet's error), `v4` and the unversioned `channel.k8s.io` come straight
//!   from kubelet + containerd.
//! - A command that cannot be started is containerd's/runc's `InternalError` (`OCI runtime exec failed:
//!   ... executable file not found in $PATH`), not an exit code: kubectl prints `error: Internal error
//!   occurred: ...` and exits 1, kube-rs sees a `Failure` status with reason `InternalError`, code 500.
//! - When the client goes away, the child's stdin is closed and its stdout/stderr pipes are dropped (a
//!   later write gets SIGPIPE), but the process is not killed, as with a real kubelet.
//! - The route should run [`ExecRequest::from_query`] and [`resolve`] before requiring the upgrade
//!   (extract `Result<WebSocketUpgrade, _>`): kubectl retries a non-101 answer as a SPDY `POST`, and that
//!   retry must get the same `Status` to print.
//! - The command runs in its own process group, in a private mount namespace that shows the pod's
//!   volumes at their absolute mount paths (see `mountns`; the route prepares it), with the pod
//!   directory as working directory, so relative paths such as `var/lib/data` work too. The sandbox
//!   shutting down kills the group.
//! - Simplified: `tty=true` allocates no terminal (stderr is merged into the stdout channel, resize
//!   frames are ignored); the base64 protocols and SPDY are not served.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio_util::sync::CancellationToken;

use crate::status::ApiError;

/// Subprotocols served, in the server's order of preference. `channel.k8s.io` is the kubelet's
/// pre-v4 protocol (status as plain text, nothing on success); a client offering no subprotocol at all
/// gets it too, as from a kubelet.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// v5 only: a client frame `[255, channel]` closes that channel (only stdin is closable).
const CLOSE: u8 = 255;
/// Bytes read from the child per frame: small enough to stream, large enough for throughput.
const CHUNK: usize = 32 * 1024;

/// Failures of the exec module that are not an API answer of their own.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The pod object lacks a field every stored pod has.
    #[error("pod object has no {0}")]
    PodField(&'static str),
    /// The pod's working directory could not be created.
    #[error("cannot create pod directory {path}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// Reading the child's stdout or stderr failed.
    #[error("reading the command's output")]
    Output(#[source] std::io::Error),
    /// Waiting for the child to exit failed.
    #[error("waiting for the command")]
    Wait(#[source] std::io::Error),
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// The query of a `pods/exec` request (`PodExecOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A query boolean as the API server converts it: absent, `0` or `false` is false, anything else true.
fn query_bool(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

impl ExecRequest {
    /// Parses the decoded query pairs: repeated `command`, first value wins for the others, empty and
    /// unknown keys are ignored. `tty` drops `stderr` as the kubelet does.
    // `ApiError` is the API layer's shared error type and this signature its contract.
    #[allow(clippy::result_large_err)]
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut req = ExecRequest {
            command: Vec::new(),
            container: None,
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        };
        let mut seen = std::collections::HashSet::new();
        for (key, value) in pairs {
            if key == "command" {
                req.command.push(value.clone());
                continue;
            }
            if !seen.insert(key.as_str()) {
                continue;
            }
            match key.as_str() {
                "container" if !value.is_empty() => req.container = Some(value.clone()),
                "stdin" => req.stdin = query_bool(value),
                "stdout" => req.stdout = query_bool(value),
                "stderr" => req.stderr = query_bool(value),
                "tty" => req.tty = query_bool(value),
                _ => {}
            }
        }
        if req.tty {
            req.stderr = false;
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        if req.command.is_empty() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        Ok(req)
    }
}

/// A validated exec: which container of which pod, and where the host process runs.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub workdir: PathBuf,
    pub request: ExecRequest,
    /// The mount namespace showing the pod's volumes at their mount paths (none: the host's).
    pub mounts: Option<std::sync::Arc<crate::mountns::MountPlan>>,
    /// Where the command's process group is recorded, to be killed when the sandbox shuts down.
    pub tracker: Option<crate::kubelet::ProcessTracker>,
}

/// Names of all containers of the pod spec, in the API server's visiting order (init, regular, ephemeral).
fn container_names(pod: &Value) -> Vec<&str> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|field| pod["spec"][field].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect()
}

/// Whether the kubelet would find `container` running. Without a status entry for it (a sandbox pod
/// whose controller fills in only the phase) the pod phase decides.
fn container_running(pod: &Value, container: &str) -> bool {
    let entry = [
        "initContainerStatuses",
        "containerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .flat_map(|field| pod["status"][field].as_array().into_iter().flatten())
    .find(|s| s["name"].as_str() == Some(container));
    match entry {
        Some(status) => status["state"].get("running").is_some(),
        None => pod["status"]["phase"].as_str() == Some("Running"),
    }
}

/// The kubelet's answer for a container it has no running instance of, as the API server relays it.
fn container_not_found(container: &str) -> ApiError {
    let cause = format!("unable to upgrade connection: container not found (\"{container}\")");
    let mut e = ApiError::internal(format!("Internal error occurred: {cause}"));
    e.details = Some(Box::new(json!({"causes": [{"message": cause}]})));
    e
}

/// Validates `req` against `pod` as the API server (container, node) and the kubelet (container
/// running) would, picks the container and creates `<state_dir>/pods/<namespace>/<pod>`.
// `ApiError` is the API layer's shared error type and this signature its contract.
#[allow(clippy::result_large_err)]
pub fn resolve(pod: &Value, req: ExecRequest, state_dir: &Path) -> Result<ExecTarget, ApiError> {
    let name = pod["metadata"]["name"]
        .as_str()
        .ok_or(ExecError::PodField("metadata.name"))?;
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .ok_or(ExecError::PodField("metadata.namespace"))?;
    let names = container_names(pod);
    let container = match &req.container {
        Some(c) if names.contains(&c.as_str()) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => match pod["spec"]["containers"].as_array().map(Vec::as_slice) {
            Some([only]) => only["name"]
                .as_str()
                .ok_or(ExecError::PodField("spec.containers[0].name"))?
                .to_string(),
            Some([]) | None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}"
                )));
            }
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                )));
            }
        },
    };
    if pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    if !container_running(pod, &container) {
        return Err(container_not_found(&container));
    }
    let workdir = state_dir.join("pods").join(namespace).join(name);
    std::fs::create_dir_all(&workdir).map_err(|source| ExecError::WorkDir {
        path: workdir.clone(),
        source,
    })?;
    Ok(ExecTarget {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        container,
        workdir,
        request: req,
        mounts: None,
        tracker: None,
    })
}

/// The negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `v5.channel.k8s.io`: served by the API server's stream translator; stdin can be closed.
    V5,
    /// `v4.channel.k8s.io`: kubelet, JSON status on channel 3.
    V4,
    /// `channel.k8s.io` (or none offered): kubelet, plain-text error on channel 3, nothing on success.
    V1,
}

/// Accepts the WebSocket upgrade with the preferred common subprotocol and runs the exec session.
/// A client that offers subprotocols but none of [`PROTOCOLS`] gets the kubelet's 403.
pub fn upgrade(ws: WebSocketUpgrade, target: ExecTarget) -> Response {
    let ws = ws.protocols(PROTOCOLS.iter().copied());
    let protocol = match ws.selected_protocol().map(|p| p.as_bytes()) {
        Some(b"v5.channel.k8s.io") => Protocol::V5,
        Some(b"v4.channel.k8s.io") => Protocol::V4,
        Some(_) => Protocol::V1,
        None if ws.requested_protocols().any(|p| !p.is_empty()) => {
            return StatusCode::FORBIDDEN.into_response();
        }
        None => Protocol::V1,
    };
    ws.on_upgrade(move |socket| session(socket, protocol, target))
}

type Sink = SplitSink<WebSocket, Message>;

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// How the command ended, if the client stayed to hear it.
enum Outcome {
    Exited(ExitStatus),
    NotStarted(std::io::Error),
}

async fn session(socket: WebSocket, protocol: Protocol, target: ExecTarget) {
    let (mut sink, stream) = socket.split();
    let req = &target.request;
    // The kubelet opens the lowest writable channel with an empty frame.
    let opening = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        ERROR
    };
    if sink.send(frame(opening, &[])).await.is_err() {
        return;
    }
    let (outcome, reader) = match run(&mut sink, stream, protocol, &target).await {
        Ok(Some(ended)) => ended,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, pod = %target.pod, "exec session failed");
            return;
        }
    };
    if let Some(payload) = status_payload(protocol, &req.command, &outcome)
        && sink.send(frame(ERROR, &payload)).await.is_err()
    {
        return;
    }
    // client-go reads the error stream to EOF, which only a 1000 (normal) close gives it.
    let normal = CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    // Closing the socket now would reset a client still sending stdin, and with it the status frame
    // it has not read yet.
    let _ = tokio::time::timeout(CLOSE_GRACE, reader.wait()).await;
}

/// How long a session waits, after its Close frame, for the client to close.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the command and streams its output; then how it ended and the task still reading the client.
/// `Ok(None)`: the client went away first.
async fn run(
    sink: &mut Sink,
    stream: SplitStream<WebSocket>,
    protocol: Protocol,
    target: &ExecTarget,
) -> Result<Option<(Outcome, AbortOnDrop)>, ExecError> {
    let req = &target.request;
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut cmd = Command::new(&req.command[0]);
    crate::kubelet::prepare_command(&mut cmd, target.mounts.clone());
    let spawned = cmd
        .args(&req.command[1..])
        .current_dir(&target.workdir)
        .env("POD_NAME", &target.pod)
        .env("POD_NAMESPACE", &target.namespace)
        .env("CONTAINER_NAME", &target.container)
        .stdin(piped(req.stdin))
        .stdout(piped(req.stdout))
        .stderr(piped(req.stderr || (req.tty && req.stdout)))
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let reader = AbortOnDrop(tokio::spawn(read_client(
                stream,
                None,
                protocol,
                CancellationToken::new(),
            )));
            return Ok(Some((Outcome::NotStarted(e), reader)));
        }
    };
    let _tracked = target
        .tracker
        .as_ref()
        .zip(child.id())
        .map(|(t, pid)| t.track(pid as i32));
    // Cancelled when the client side ends: closed, disconnected, or the reader task is gone.
    let client_gone = CancellationToken::new();
    let reader = tokio::spawn(read_client(
        stream,
        child.stdin.take(),
        protocol,
        client_gone.clone(),
    ));
    // Aborts the reader (and so drops the child's stdin) however the session ends.
    let reader = AbortOnDrop(reader);

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // With a tty both streams share the terminal, i.e. the stdout channel.
    let err_channel = if req.tty { STDOUT } else { STDERR };
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    while stdout.is_some() || stderr.is_some() {
        let (channel, data) = tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match r {
                Ok(0) => { stdout = None; continue; }
                Ok(n) => (STDOUT, &out_buf[..n]),
                Err(e) => return Err(ExecError::Output(e)),
            },
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match r {
                Ok(0) => { stderr = None; continue; }
                Ok(n) => (err_channel, &err_buf[..n]),
                Err(e) => return Err(ExecError::Output(e)),
            },
            _ = client_gone.cancelled() => return Ok(None),
        };
        if sink.send(frame(channel, data)).await.is_err() {
            return Ok(None);
        }
    }
    tokio::select! {
        status = child.wait() => Ok(Some((Outcome::Exited(status.map_err(ExecError::Wait)?), reader))),
        _ = client_gone.cancelled() => Ok(None),
    }
}

async fn read_some<R: AsyncRead + Unpin>(reader: &mut Option<R>, buf: &mut [u8]) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Until the task ends by itself.
    async fn wait(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds channel-0 frames to the child's stdin until the client closes stdin (v5), closes the
/// connection or disconnects; dropping `stdin` on return is what ends a command reading it.
async fn read_client(
    mut stream: SplitStream<WebSocket>,
    mut stdin: Option<ChildStdin>,
    protocol: Protocol,
    client_gone: CancellationToken,
) {
    let _gone = client_gone.drop_guard();
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(data) => match data.first() {
                Some(&STDIN) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data[1..]).await.is_err()
                    {
                        // The command closed its stdin or exited; later input has nowhere to go.
                        stdin = None;
                    }
                }
                Some(&CLOSE) if protocol == Protocol::V5 && data.get(1) == Some(&STDIN) => stdin = None,
                // Resize (4) and anything else: ignored.
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// Go's `%v` of a `[]string`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// What runc says when `execve` of `program` fails.
fn runc_exec_error(program: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound if program.contains('/') => {
            format!("exec: \"{program}\": stat {program}: no such file or directory")
        }
        std::io::ErrorKind::NotFound => format!("exec: \"{program}\": executable file not found in $PATH"),
        std::io::ErrorKind::PermissionDenied => format!("exec: \"{program}\": permission denied"),
        _ => format!("exec: \"{program}\": {e}"),
    }
}

fn internal_error(cause: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {cause}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": cause}]},
        "code": 500,
    })
}

/// The channel-3 payload a real server sends for `outcome`, field order as Go's `json.Marshal`.
/// `None`: nothing is sent (success on the unversioned protocol).
fn status_payload(protocol: Protocol, command: &[String], outcome: &Outcome) -> Option<Vec<u8>> {
    let status = match outcome {
        Outcome::Exited(status) if status.success() => {
            if protocol == Protocol::V1 {
                return None;
            }
            json!({"metadata": {}, "status": "Success"})
        }
        Outcome::Exited(status) => {
            // Killed by a signal: runc reports 128 + signal, as a shell does.
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            // containerd's CodeExitError; through the v5 translator it is client-go's re-wrapped one.
            let exit_err = match protocol {
                Protocol::V5 => format!("command terminated with exit code {code}"),
                Protocol::V4 | Protocol::V1 => {
                    format!("error executing command {}, exit code {code}", go_list(command))
                }
            };
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: {exit_err}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Outcome::NotStarted(e) => {
            let exec_id = hex::encode(rand::random::<[u8; 32]>());
            let kubelet_cause = format!(
                "error executing command in container: failed to exec in container: failed to start exec \
                 \"{exec_id}\": OCI runtime exec failed: exec failed: unable to start container process: \
                 {}: unknown",
                runc_exec_error(&command[0], e)
            );
            match protocol {
                // client-go turns the kubelet's status into a plain error, which the translator wraps again.
                Protocol::V5 => internal_error(&format!("Internal error occurred: {kubelet_cause}")),
                Protocol::V4 | Protocol::V1 => internal_error(&kubelet_cause),
            }
        }
    };
    if protocol == Protocol::V1 {
        return Some(status["message"].as_str().unwrap_or_default().as_bytes().to_vec());
    }
    Some(serde_json::to_vec(&status).expect("a JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Path as UrlPath, Query, State};
    use axum::routing::get;
    use futures::TryStreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, AttachParams};
    use tokio_tungstenite::tungstenite;

    const NS: &str = "shop";
    const POD: &str = "db-0";

    fn running_pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": NS, "uid": "0b7c5a4e-6d3f-4e0a-9a43-5d5f0f0c1a01"},
            "spec": {"nodeName": "sandbox", "containers": [{"name": "postgres", "image": "postgres:16"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "postgres", "ready": true, "restartCount": 0, "image": "postgres:16",
                    "imageID": "", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
                }]
            }
        })
    }

    fn two_container_pod() -> Value {
        let mut pod = running_pod();
        pod["spec"]["initContainers"] = json!([{"name": "migrate"}]);
        pod["spec"]["containers"] = json!([{"name": "postgres"}, {"name": "exporter"}]);
        pod["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": "exporter"});
        pod
    }

    fn request(command: &[&str]) -> ExecRequest {
        ExecRequest {
            command: command.iter().map(|s| s.to_string()).collect(),
            container: None,
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        }
    }

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    struct Sandbox {
        pod: Value,
        dir: tempfile::TempDir,
    }

    async fn get_pod(State(sb): State<Arc<Sandbox>>) -> axum::Json<Value> {
        axum::Json(sb.pod.clone())
    }

    /// The route as the API layer should write it: validation answers first, so that a request that
    /// is no WebSocket upgrade (kubectl's SPDY fallback after a non-101) gets the same Status.
    #[allow(clippy::result_large_err)]
    async fn exec_route(
        State(sb): State<Arc<Sandbox>>,
        UrlPath((_ns, _name)): UrlPath<(String, String)>,
        Query(query): Query<Vec<(String, String)>>,
        ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    ) -> Response {
        let target = ExecRequest::from_query(&query).and_then(|req| resolve(&sb.pod, req, sb.dir.path()));
        match (target, ws) {
            (Ok(target), Ok(ws)) => upgrade(ws, target),
            (Ok(_), Err(rejection)) => rejection.into_response(),
            (Err(e), _) => e.into_response(),
        }
    }

    /// Serves the pod and its exec subresource on an ephemeral port; the state dir lives in the sandbox.
    async fn serve(pod: Value) -> (SocketAddr, Arc<Sandbox>) {
        let sb = Arc::new(Sandbox {
            pod,
            dir: tempfile::tempdir().unwrap(),
        });
        let app = Router::new()
            .route(
                "/version",
                get(|| async {
                    axum::Json(json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                        "platform": "linux/amd64"}))
                }),
            )
            // Legacy discovery, just enough for kubectl to resolve `pods`.
            .route(
                "/api",
                get(|| async {
                    axum::Json(json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}))
                }),
            )
            .route(
                "/apis",
                get(|| async { axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})) }),
            )
            .route(
                "/api/v1",
                get(|| async {
                    axum::Json(json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                         "verbs": ["get", "list"], "shortNames": ["po"]},
                        {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions",
                         "verbs": ["create", "get"]}
                    ]}))
                }),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/exec",
                get(exec_route).post(exec_route),
            )
            .with_state(sb.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, sb)
    }

    fn pods(addr: SocketAddr) -> Api<Pod> {
        // Both rustls providers are in the dependency tree, so none is chosen by itself.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        Api::namespaced(kube::Client::try_from(config).unwrap(), NS)
    }

    async fn read_all(reader: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
        let mut out = Vec::new();
        reader.unwrap().read_to_end(&mut out).await.unwrap();
        out
    }

    /// Runs `command` to completion: (stdout, stderr, status).
    async fn exec_to_end(
        api: &Api<Pod>,
        command: &[&str],
        ap: &AttachParams,
    ) -> (
        String,
        String,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
    ) {
        let mut proc = api.exec(POD, command.to_vec(), ap).await.unwrap();
        let (out, err) = tokio::join!(read_all(proc.stdout()), read_all(proc.stderr()));
        let status = proc.take_status().unwrap().await.expect("a status frame");
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            status,
        )
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    // ---------------------------------------------------------------- query and validation

    #[test]
    fn given_repeated_command_params_when_parsing_query_then_argv_keeps_their_order() {
        let q = pairs(&[
            ("", ""),
            ("stdout", "true"),
            ("stderr", "1"),
            ("stdin", "false"),
            ("container", "postgres"),
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo a b"),
        ]);
        let req = ExecRequest::from_query(&q).unwrap();
        assert_eq!(req.command, ["sh", "-c", "echo a b"]);
        assert_eq!(req.container.as_deref(), Some("postgres"));
        assert!(req.stdout && req.stderr && !req.stdin && !req.tty);
    }

    #[test]
    fn given_tty_and_stderr_when_parsing_query_then_stderr_is_dropped_like_the_kubelet() {
        let q = pairs(&[
            ("stdout", "true"),
            ("stderr", "true"),
            ("tty", "true"),
            ("command", "sh"),
        ]);
        let req = ExecRequest::from_query(&q).unwrap();
        assert!(req.tty && !req.stderr);
    }

    #[test]
    fn given_no_command_when_parsing_query_then_bad_request() {
        let e = ExecRequest::from_query(&pairs(&[("stdout", "true")])).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert!(e.message.contains("command"), "{}", e.message);
    }

    #[test]
    fn given_no_stream_when_parsing_query_then_bad_request() {
        let e = ExecRequest::from_query(&pairs(&[("command", "ls"), ("stdout", "false")])).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.message, "you must specify at least 1 of stdin, stdout, stderr");
    }

    #[test]
    fn given_single_container_pod_when_resolving_without_container_then_it_is_chosen_and_dir_created() {
        let dir = tempfile::tempdir().unwrap();
        let t = resolve(&running_pod(), request(&["true"]), dir.path()).unwrap();
        assert_eq!((t.namespace.as_str(), t.pod.as_str()), (NS, POD));
        assert_eq!(t.container, "postgres");
        assert_eq!(t.workdir, dir.path().join("pods").join(NS).join(POD));
        assert!(t.workdir.is_dir());
    }

    #[test]
    fn given_multi_container_pod_when_resolving_without_container_then_bad_request_lists_all() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve(&two_container_pod(), request(&["true"]), dir.path()).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod db-0, choose one of: [migrate postgres exporter]"
        );
    }

    #[test]
    fn given_named_container_when_resolving_then_it_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(&["true"]);
        req.container = Some("exporter".into());
        assert_eq!(
            resolve(&two_container_pod(), req, dir.path()).unwrap().container,
            "exporter"
        );
    }

    #[test]
    fn given_unknown_container_when_resolving_then_bad_request_not_valid_for_pod() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(&["true"]);
        req.container = Some("redis".into());
        let e = resolve(&running_pod(), req, dir.path()).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(e.message, "container redis is not valid for pod db-0");
    }

    #[test]
    fn given_unscheduled_pod_when_resolving_then_no_host_assigned() {
        let dir = tempfile::tempdir().unwrap();
        let mut pod = running_pod();
        pod["spec"].as_object_mut().unwrap().remove("nodeName");
        pod["status"] = json!({"phase": "Pending"});
        let e = resolve(&pod, request(&["true"]), dir.path()).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(e.message, "pod db-0 does not have a host assigned");
    }

    #[test]
    fn given_container_not_running_when_resolving_then_kubelet_container_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut waiting = running_pod();
        waiting["status"]["containerStatuses"][0]["state"] =
            json!({"waiting": {"reason": "ContainerCreating"}});
        let mut completed = running_pod();
        completed["status"] = json!({"phase": "Succeeded"});
        for pod in [waiting, completed] {
            let e = resolve(&pod, request(&["true"]), dir.path()).unwrap_err();
            assert_eq!((e.code, e.reason), (500, "InternalError"));
            assert_eq!(
                e.message,
                "Internal error occurred: unable to upgrade connection: container not found (\"postgres\")"
            );
        }
    }

    // ---------------------------------------------------------------- through kube-rs (v5)

    #[tokio::test]
    async fn given_command_writing_both_streams_when_exec_then_client_gets_each_and_success() {
        let (addr, _sb) = serve(running_pod()).await;
        let (out, err, status) = exec_to_end(
            &pods(addr),
            &["sh", "-c", "echo out; echo err >&2"],
            &AttachParams::default(),
        )
        .await;
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");
        assert_eq!(status.status.as_deref(), Some("Success"));
    }

    #[tokio::test]
    async fn given_nonzero_exit_when_exec_then_client_sees_exit_code() {
        let (addr, _sb) = serve(running_pod()).await;
        let (out, _, status) = exec_to_end(
            &pods(addr),
            &["sh", "-c", "echo partial; exit 3"],
            &AttachParams::default(),
        )
        .await;
        assert_eq!(out, "partial\n");
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(
            status.message.as_deref(),
            Some("command terminated with non-zero exit code: command terminated with exit code 3")
        );
        let cause = &status.details.unwrap().causes.unwrap()[0];
        assert_eq!(cause.reason.as_deref(), Some("ExitCode"));
        assert_eq!(cause.message.as_deref(), Some("3"));
    }

    #[tokio::test]
    async fn given_stdin_when_exec_cat_then_input_round_trips_and_closing_stdin_ends_it() {
        let (addr, _sb) = serve(running_pod()).await;
        let ap = AttachParams::default().stdin(true).stderr(false);
        let mut proc = pods(addr).exec(POD, ["cat"], &ap).await.unwrap();
        let mut stdin = proc.stdin().unwrap();
        let stdout = proc.stdout();
        let writer = async move {
            stdin.write_all(b"hello\n").await.unwrap();
            stdin.write_all(b"world\n").await.unwrap();
            stdin.shutdown().await.unwrap();
        };
        let ((), out) = tokio::join!(writer, read_all(stdout));
        assert_eq!(out, b"hello\nworld\n");
        let status = proc.take_status().unwrap().await.unwrap();
        assert_eq!(status.status.as_deref(), Some("Success"));
    }

    #[tokio::test]
    async fn given_pod_when_exec_then_command_runs_in_pod_dir_with_pod_env() {
        let (addr, sb) = serve(running_pod()).await;
        let (out, _, _) = exec_to_end(
            &pods(addr),
            &[
                "sh",
                "-c",
                "pwd -P; echo $POD_NAME $POD_NAMESPACE $CONTAINER_NAME",
            ],
            &AttachParams::default(),
        )
        .await;
        let dir = sb
            .dir
            .path()
            .join("pods")
            .join(NS)
            .join(POD)
            .canonicalize()
            .unwrap();
        assert_eq!(out, format!("{}\n{POD} {NS} postgres\n", dir.display()));
    }

    #[tokio::test]
    async fn given_unknown_container_when_exec_then_client_gets_bad_request() {
        let (addr, _sb) = serve(running_pod()).await;
        let ap = AttachParams::default().container("redis");
        let err = match pods(addr).exec(POD, ["true"], &ap).await {
            Err(e) => e,
            Ok(_) => panic!("exec into an unknown container succeeded"),
        };
        let kube::Error::Api(status) = err else {
            panic!("not an API error: {err}")
        };
        assert_eq!(status.code, 400);
        assert_eq!(status.reason, "BadRequest");
        assert_eq!(status.message, "container redis is not valid for pod db-0");
    }

    #[tokio::test]
    async fn given_missing_program_when_exec_then_internal_error_like_runc() {
        let (addr, _sb) = serve(running_pod()).await;
        let (_, _, status) =
            exec_to_end(&pods(addr), &["no-such-tool", "--dump"], &AttachParams::default()).await;
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.reason.as_deref(), Some("InternalError"));
        assert_eq!(status.code, Some(500));
        let message = status.message.unwrap();
        assert!(
            message.starts_with("Internal error occurred: Internal error occurred: error executing command"),
            "{message}"
        );
        assert!(
            message.ends_with(
                "OCI runtime exec failed: exec failed: unable to start container process: \
                 exec: \"no-such-tool\": executable file not found in $PATH: unknown"
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn given_large_output_when_exec_then_every_byte_arrives_before_the_status() {
        let (addr, _sb) = serve(running_pod()).await;
        let size = 8 * 1024 * 1024 + 17;
        let ap = AttachParams::default().stderr(false);
        let mut proc = pods(addr)
            .exec(POD, ["head", "-c", &size.to_string(), "/dev/urandom"], &ap)
            .await
            .unwrap();
        let out = read_all(proc.stdout()).await;
        assert_eq!(out.len(), size);
        let status = proc.take_status().unwrap().await.unwrap();
        assert_eq!(status.status.as_deref(), Some("Success"));
    }

    #[tokio::test]
    async fn given_running_command_when_it_writes_then_output_arrives_before_it_exits() {
        let (addr, _sb) = serve(running_pod()).await;
        let ap = AttachParams::default().stdin(true).stderr(false);
        let mut proc = pods(addr)
            .exec(POD, ["sh", "-c", "echo first; read line; echo got $line"], &ap)
            .await
            .unwrap();
        let mut stdout = proc.stdout().unwrap();
        let mut first = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), stdout.read_exact(&mut first))
            .await
            .expect("output streamed while the command still runs")
            .unwrap();
        assert_eq!(&first, b"first\n");
        let mut stdin = proc.stdin().unwrap();
        stdin.write_all(b"more\n").await.unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "got more\n");
    }

    #[tokio::test]
    async fn given_client_disconnects_when_command_reads_stdin_then_its_stdin_is_closed() {
        let (addr, sb) = serve(running_pod()).await;
        let ap = AttachParams::default().stdin(true).stderr(false);
        let mut proc = pods(addr)
            .exec(
                POD,
                ["sh", "-c", "echo ready; cat >/dev/null; touch stdin-closed"],
                &ap,
            )
            .await
            .unwrap();
        let _stdin = proc.stdin().unwrap(); // kept open: only the disconnect may end `cat`
        let mut ready = [0u8; 6];
        proc.stdout().unwrap().read_exact(&mut ready).await.unwrap();
        let marker = sb.dir.path().join("pods").join(NS).join(POD).join("stdin-closed");
        assert!(!marker.exists());
        drop(proc); // aborts kube's connection task: the socket goes away without a close handshake
        eventually("the command to see EOF on stdin", || marker.exists()).await;
    }

    // ---------------------------------------------------------------- kubectl 1.32

    /// Runs the real kubectl against the sandbox: (exit code, stdout, stderr).
    async fn kubectl(addr: SocketAddr, dir: &Path, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: sandbox\n\
                 clusters: [{{name: sandbox, cluster: {{server: 'http://{addr}'}}}}]\n\
                 users: [{{name: sandbox, user: {{}}}}]\n\
                 contexts: [{{name: sandbox, context: {{cluster: sandbox, user: sandbox, namespace: {NS}}}}}]\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl on PATH");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).await.unwrap();
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[tokio::test]
    async fn given_kubectl_when_exec_then_output_stdin_and_exit_code_pass_through() {
        let (addr, sb) = serve(running_pod()).await;
        let script = "cat; echo to-stderr >&2; exit 7";
        let args = ["exec", "-i", POD, "--", "sh", "-c", script];
        let (code, out, err) = kubectl(addr, sb.dir.path(), &args, b"piped in\n").await;
        assert_eq!(out, "piped in\n", "stderr: {err}");
        assert_eq!(err, "to-stderr\ncommand terminated with exit code 7\n");
        assert_eq!(code, 7);
    }

    #[tokio::test]
    async fn given_kubectl_when_program_is_missing_then_it_prints_the_runtime_error() {
        let (addr, sb) = serve(running_pod()).await;
        let (code, _, err) = kubectl(addr, sb.dir.path(), &["exec", POD, "--", "no-such-tool"], b"").await;
        assert_eq!(code, 1);
        assert!(
            err.starts_with("error: Internal error occurred: Internal error occurred: "),
            "{err}"
        );
        assert!(
            err.contains("exec: \"no-such-tool\": executable file not found in $PATH"),
            "{err}"
        );
    }

    // ---------------------------------------------------------------- raw WebSocket clients

    async fn raw_exec(
        addr: SocketAddr,
        protocol: &str,
        query: &str,
    ) -> Result<
        (
            tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
            tungstenite::handshake::client::Response,
        ),
        tungstenite::Error,
    > {
        use tungstenite::client::IntoClientRequest;
        let url = format!("ws://{addr}/api/v1/namespaces/{NS}/pods/{POD}/exec?{query}");
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        tokio_tungstenite::connect_async(request).await
    }

    #[tokio::test]
    async fn given_client_offering_only_v4_when_exec_then_v4_is_spoken_with_kubelet_status() {
        let (addr, _sb) = serve(running_pod()).await;
        let query = "stdout=true&stderr=true&command=sh&command=-c&command=echo%20hi%3B%20exit%202";
        let (ws, response) = raw_exec(addr, "v4.channel.k8s.io", query).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "v4.channel.k8s.io");
        let frames: Vec<Vec<u8>> = ws
            .try_filter_map(|m| async move {
                Ok(match m {
                    tungstenite::Message::Binary(b) => Some(b.to_vec()),
                    _ => None,
                })
            })
            .try_collect()
            .await
            .unwrap();
        assert_eq!(frames[0], [STDOUT], "opening frame");
        assert_eq!(frames[1], b"\x01hi\n");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2][0], ERROR);
        let status: Value = serde_json::from_slice(&frames[2][1..]).unwrap();
        assert_eq!(
            status,
            json!({
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: \
                            error executing command [sh -c echo hi; exit 2], exit code 2",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "2"}]},
            })
        );
    }

    #[tokio::test]
    async fn given_client_offering_only_unknown_protocols_when_exec_then_forbidden() {
        let (addr, _sb) = serve(running_pod()).await;
        let err = raw_exec(addr, "v9.channel.k8s.io", "stdout=true&command=true")
            .await
            .unwrap_err();
        let tungstenite::Error::Http(response) = err else {
            panic!("not an HTTP rejection: {err}")
        };
        assert_eq!(response.status(), 403);
    }
}
