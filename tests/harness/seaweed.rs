//! SeaweedFS as a real S3 server for tests: one `weed server` per instance, on free loopback ports.
//!
//! The binary comes from `$FREEZEFRAME_WEED` or `<repo>/.venv/bin/weed` (both set up by `scripts/test`).
//! Every instance gets its own data directory and ports; dropping it stops the server (SIGTERM, then
//! SIGKILL after [`STOP_GRACE`]) and reaps it, also when the test panics. If the test process itself is
//! killed, the kernel sends the server SIGKILL (`PR_SET_PDEATHSIG`, see [`spawn_tied_to_process`]).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long `weed server` may take to answer on its S3 port (observed: about 3.5 s).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping server gets after SIGTERM before SIGKILL. `weed` needs 15-25 s to exit on SIGTERM
/// and its data is thrown away, so this is deliberately short.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// Attempts with fresh ports before giving up (another process may take a port between check and bind).
const START_ATTEMPTS: usize = 5;

/// Ports are drawn below Linux's ephemeral range (32768+), so outgoing connections and `bind(:0)`
/// listeners (webhook receivers, the sandbox) can never hold them.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A running `weed server` with S3 enabled, listening on 127.0.0.1 only.
pub struct SeaweedFs {
    child: Option<Child>,
    ports: Ports,
    dir: TempDir,
    startup: Duration,
}

impl SeaweedFs {
    /// Starts a server and waits until its S3 API answers.
    pub async fn start() -> anyhow::Result<SeaweedFs> {
        // Cargo sets CARGO_MANIFEST_DIR when it runs tests; the compile-time value covers running the
        // test binary by hand.
        let repo = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let weed = weed_binary(std::env::var_os("FREEZEFRAME_WEED"), &repo)?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let ports = Ports::pick()?;
            match Self::start_on(&weed, ports).await {
                Ok(started) => return Ok(started),
                Err(Attempt::PortTaken(error)) => last_error = Some(error),
                Err(Attempt::Failed(error)) => return Err(error),
            }
        }
        Err(last_error.expect("at least one attempt").context(format!(
            "SeaweedFS could not bind its ports in {START_ATTEMPTS} attempts"
        )))
    }

    /// The S3 endpoint URL, e.g. `http://127.0.0.1:23456`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// How long this server took from spawn until its S3 API answered.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The server's process id (for tests of the harness itself).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running until dropped").id()
    }

    /// The unix sockets `weed` creates under /tmp (not configurable), removed on drop.
    pub fn grpc_socket_paths(&self) -> Vec<PathBuf> {
        self.ports.grpc_socket_paths()
    }

    /// The last `lines` lines of the server's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&log_path(self.dir.path()), lines)
    }

    async fn start_on(weed: &Path, ports: Ports) -> Result<SeaweedFs, Attempt> {
        let dir = tempfile::Builder::new()
            .prefix("ff-weed-")
            .tempdir()
            .context("creating SeaweedFS temp dir")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).context("creating SeaweedFS data dir")?;
        let log = File::create(log_path(dir.path())).context("creating SeaweedFS log file")?;

        let mut command = Command::new(weed);
        command
            // glog writes files to $TMPDIR unless told to use stderr.
            .arg("-logtostderr")
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports.master))
            .arg(format!("-master.port.grpc={}", ports.master_grpc))
            .arg(format!("-volume.port={}", ports.volume))
            .arg(format!("-volume.port.grpc={}", ports.volume_grpc))
            .arg("-volume.preStopSeconds=0")
            .arg(format!("-filer.port={}", ports.filer))
            .arg(format!("-filer.port.grpc={}", ports.filer_grpc))
            .arg(format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={}", ports.s3))
            .arg(format!("-s3.port.grpc={}", ports.s3_grpc))
            .arg(format!(
                "-s3.localSocket={}",
                dir.path().join("s3.sock").display()
            ))
            // Fixed default ports (8181, 9101) would collide between parallel servers.
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .env("TMPDIR", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating log file handle")?)
            .stderr(log);
        let spawned_at = Instant::now();
        let child = spawn_tied_to_process(command)
            .with_context(|| format!("spawning {}", weed.display()))
            .map_err(Attempt::Failed)?;

        // From here on, dropping `server` stops the process, whatever happens below.
        let mut server = SeaweedFs {
            child: Some(child),
            ports,
            dir,
            startup: Duration::ZERO,
        };
        server.wait_until_ready(spawned_at).await?;
        server.startup = spawned_at.elapsed();
        Ok(server)
    }

    async fn wait_until_ready(&mut self, spawned_at: Instant) -> Result<(), Attempt> {
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .context("building readiness probe client")?;
        let endpoint = self.endpoint();
        loop {
            let exited = self
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .context("checking SeaweedFS process")?;
            let tail = || self.log_tail(30);
            if let Some(status) = exited {
                let tail = tail();
                let error = anyhow::anyhow!("SeaweedFS exited during startup ({status}); log tail:\n{tail}");
                return Err(if port_taken(&tail) {
                    Attempt::PortTaken(error)
                } else {
                    Attempt::Failed(error)
                });
            }
            if port_taken(&tail()) {
                return Err(Attempt::PortTaken(anyhow::anyhow!(
                    "SeaweedFS could not bind a port; log tail:\n{}",
                    tail()
                )));
            }
            if let Ok(response) = probe.get(&endpoint).send().await
                && !response.status().is_server_error()
            {
                return Ok(());
            }
            if spawned_at.elapsed() > STARTUP_TIMEOUT {
                return Err(Attempt::Failed(anyhow::anyhow!(
                    "SeaweedFS did not answer on {endpoint} within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                    tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, STOP_GRACE);
        }
        // Only after the process is reaped: these are ours, nobody else can have recreated them yet
        // unless they picked the same random port in the last few milliseconds.
        for socket in self.ports.grpc_socket_paths() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// Why one start attempt failed: a port race is retried with new ports, anything else is reported.
enum Attempt {
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Attempt {
    fn from(error: anyhow::Error) -> Self {
        Attempt::Failed(error)
    }
}

fn port_taken(log: &str) -> bool {
    log.contains("address already in use")
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps, so no zombie or server outlives the test.
fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: plain syscall; the child is not reaped yet, so `pid` still names our child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `command` so that the kernel SIGKILLs it when this test process dies without running
/// destructors (Ctrl-C, SIGKILL, abort).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Test
/// threads and tokio workers come and go, so all spawns happen on one dedicated thread that lives as
/// long as the process: the signal then fires exactly when the process exits.
fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

    let parent = libc::pid_t::try_from(std::process::id()).expect("pid fits pid_t");
    // SAFETY: the closure only makes async-signal-safe syscalls and does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The process may have died between fork and prctl; then nobody would ever kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }

    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("test-process-spawner".into())
            .spawn(move || {
                // Never ends: the sender lives in a static.
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the spawner thread");
        requests
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Where the `weed` binary is: `$FREEZEFRAME_WEED`, else `<repo>/.venv/bin/weed`.
fn weed_binary(from_env: Option<OsString>, manifest_dir: &Path) -> anyhow::Result<PathBuf> {
    const HINT: &str = "run `scripts/test` (it installs SeaweedFS into .venv and runs every test)";
    if let Some(path) = from_env {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("FREEZEFRAME_WEED={} does not exist; {HINT}", path.display());
    }
    let fallback = manifest_dir.join(".venv/bin/weed");
    if fallback.is_file() {
        return Ok(fallback);
    }
    bail!(
        "SeaweedFS `weed` not found: FREEZEFRAME_WEED is unset and {} does not exist; {HINT}",
        fallback.display()
    )
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("weed.log")
}

fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(no log at {}: {error})", path.display()),
    }
}

/// The eight ports one `weed server` listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
}

impl Ports {
    /// Eight distinct random ports that are free on 127.0.0.1 right now.
    fn pick() -> anyhow::Result<Ports> {
        let mut held = Vec::new();
        let mut seen = BTreeSet::new();
        let mut tries = 0;
        while held.len() < 8 {
            tries += 1;
            if tries > 1000 {
                bail!("no free loopback ports in {PORT_RANGE:?}");
            }
            let port = rand::random_range(PORT_RANGE);
            if !seen.insert(port) {
                continue;
            }
            // Holding the listeners until all eight are chosen keeps them distinct.
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                held.push((port, listener));
            }
        }
        let p: Vec<u16> = held.iter().map(|(port, _)| *port).collect();
        Ok(Ports {
            s3: p[0],
            s3_grpc: p[1],
            master: p[2],
            master_grpc: p[3],
            volume: p[4],
            volume_grpc: p[5],
            filer: p[6],
            filer_grpc: p[7],
        })
    }

    fn grpc_socket_paths(&self) -> Vec<PathBuf> {
        [
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
        ]
        .into_iter()
        .map(|(service, port)| PathBuf::from(format!("/tmp/seaweedfs-{service}-grpc-{port}.sock")))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_no_weed_anywhere_when_resolving_then_error_tells_user_to_run_scripts_test() {
        let empty = tempfile::tempdir().unwrap();

        let error = weed_binary(None, empty.path()).unwrap_err().to_string();

        assert!(error.contains("scripts/test"), "{error}");
        assert!(error.contains(".venv/bin/weed"), "{error}");
    }

    #[test]
    fn given_freezeframe_weed_pointing_nowhere_when_resolving_then_error_names_it() {
        let empty = tempfile::tempdir().unwrap();
        let missing = empty.path().join("weed");

        let error = weed_binary(Some(missing.clone().into()), empty.path())
            .unwrap_err()
            .to_string();

        assert!(error.contains(&missing.display().to_string()), "{error}");
        assert!(error.contains("scripts/test"), "{error}");
    }

    #[test]
    fn given_venv_weed_when_env_unset_then_it_is_used() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join(".venv/bin")).unwrap();
        std::fs::write(repo.path().join(".venv/bin/weed"), "").unwrap();

        let found = weed_binary(None, repo.path()).unwrap();

        assert_eq!(found, repo.path().join(".venv/bin/weed"));
    }

    #[test]
    fn given_picked_ports_then_all_eight_are_distinct_and_in_range() {
        let ports = Ports::pick().unwrap();
        let all = [
            ports.s3,
            ports.s3_grpc,
            ports.master,
            ports.master_grpc,
            ports.volume,
            ports.volume_grpc,
            ports.filer,
            ports.filer_grpc,
        ];

        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 8, "{ports:?}");
        assert!(all.iter().all(|port| PORT_RANGE.contains(port)), "{ports:?}");
    }
}
