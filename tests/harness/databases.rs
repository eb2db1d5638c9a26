//! Real database servers for recipe tests, started by hand on loopback with a private data directory,
//! port and socket directory, and stopped (data removed) on drop. Hooks and dumps in sandbox pods run
//! as host processes, so they reach these servers at `127.0.0.1:<port>`.
//!
//! The servers come from Debian's packages, which `scripts/test` installs when missing; a missing
//! server fails the test with what to install, it never passes silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tempfile::TempDir;

/// Where Debian's PostgreSQL 15 keeps its server programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Run `program args` as `user` (root runs the tests; PostgreSQL refuses to run as root).
fn run_as(user: &str, program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("running {} as {user}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} as {user}: {}\n{}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A PostgreSQL 15 server owned by the test: trust authentication, superuser `postgres`.
pub struct Postgres {
    dir: TempDir,
    port: u16,
}

impl Postgres {
    /// initdb + pg_ctl start on a free port, listening on 127.0.0.1 only.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = Path::new(PG_BIN);
        if !bin.join("initdb").exists() {
            bail!(
                "PostgreSQL 15 is not installed ({PG_BIN}/initdb missing): run scripts/test, which \
                 installs it, or apt-get install -y postgresql"
            );
        }
        let dir = tempfile::Builder::new().prefix("ff-pg-").tempdir()?;
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            bail!("chown postgres {}: {status}", dir.path().display());
        }
        let data = dir.path().join("data");
        let data_arg = data.to_str().context("temp path is UTF-8")?;
        run_as(
            "postgres",
            &bin.join("initdb"),
            &["-D", data_arg, "-U", "postgres", "--auth=trust", "--no-sync"],
        )?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        run_as(
            "postgres",
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_arg,
                "-o",
                &options,
                "-l",
                log.to_str().context("temp path is UTF-8")?,
                "-w",
                "start",
            ],
        )?;
        Ok(Postgres { dir, port })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `psql -h 127.0.0.1 -p PORT -U postgres` as a shell prefix, for commands in pods.
    pub fn psql_prefix(&self) -> String {
        format!("psql -h 127.0.0.1 -p {} -U postgres", self.port)
    }

    /// Run `sql` in `database` and return psql's unaligned, tuples-only output, trimmed.
    pub fn query(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-At", "-d", database, "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = run_as(
            "postgres",
            &Path::new(PG_BIN).join("pg_ctl"),
            &["-D", &data.to_string_lossy(), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// A Redis 7 server owned by the test, on a free port of 127.0.0.1 with its own directory (removed
/// after the server stopped).
pub struct Redis {
    server: std::process::Child,
    _dir: TempDir,
    port: u16,
}

impl Redis {
    /// `redis-server` in the foreground; waits until it answers PING.
    pub fn start() -> anyhow::Result<Redis> {
        let dir = tempfile::Builder::new().prefix("ff-redis-").tempdir()?;
        Self::start_in(dir)
    }

    /// Start on `dir` (its `dump.rdb`, if any, is loaded).
    fn start_in(dir: TempDir) -> anyhow::Result<Redis> {
        let port = free_port()?;
        let server = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--enable-debug-command", "local", "--dir"])
            .arg(dir.path())
            .stdout(std::fs::File::create(dir.path().join("server.log"))?)
            .spawn()
            .context(
                "starting redis-server: is Redis 7 installed? run scripts/test, which installs it, \
                 or apt-get install -y redis-server",
            )?;
        let redis = Redis {
            server,
            _dir: dir,
            port,
        };
        for _ in 0..100 {
            if redis.cli(&["PING"]).is_ok_and(|r| r == "PONG") {
                return Ok(redis);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("redis-server on port {port} did not answer PING within 5 s")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run one `redis-cli` command against it; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        if !out.status.success() {
            bail!("redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stop this server and start a fresh one whose `dump.rdb` is `rdb`: how an RDB file is restored.
    pub fn restart_from(mut self, rdb: &[u8]) -> anyhow::Result<Redis> {
        self.stop();
        let dir = tempfile::Builder::new().prefix("ff-redis-").tempdir()?;
        std::fs::write(dir.path().join("dump.rdb"), rdb)?;
        Self::start_in(dir)
    }

    fn stop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A MariaDB 10.11 server owned by the test: `mariadbd` started by hand (no systemd) as user `mysql`
/// with its own data directory, socket and port on 127.0.0.1; `root` without a password, as
/// `mariadb-install-db` creates it (also for `root@127.0.0.1`). Killed, and its directory removed, on drop.
pub struct Mariadb {
    server: std::process::Child,
    dir: TempDir,
    port: u16,
}

impl Mariadb {
    /// `mariadb-install-db`, then `mariadbd` in the foreground; waits until it answers a query.
    pub fn start() -> anyhow::Result<Mariadb> {
        if Command::new("mariadbd").arg("--version").output().is_err() {
            bail!(
                "MariaDB is not installed (mariadbd missing): run scripts/test, which installs it, or \
                 apt-get install -y mariadb-server"
            );
        }
        let dir = tempfile::Builder::new().prefix("ff-mariadb-").tempdir()?;
        let status = Command::new("chown")
            .arg("mysql:mysql")
            .arg(dir.path())
            .status()?;
        if !status.success() {
            bail!("chown mysql {}: {status}", dir.path().display());
        }
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let install = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", path("data")))
            .output()
            .context("running mariadb-install-db")?;
        if !install.status.success() {
            bail!(
                "mariadb-install-db: {}\n{}{}",
                install.status,
                String::from_utf8_lossy(&install.stdout),
                String::from_utf8_lossy(&install.stderr)
            );
        }
        let port = free_port()?;
        let server = Command::new("mariadbd")
            .args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1"])
            .args([
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", path("data")))
            .arg(format!("--socket={}", path("mysqld.sock")))
            .arg(format!("--pid-file={}", path("mysqld.pid")))
            .arg(format!("--log-error={}", path("error.log")))
            .stdout(std::fs::File::create(dir.path().join("server.out"))?)
            .stderr(std::fs::File::create(dir.path().join("server.err"))?)
            .spawn()
            .context("starting mariadbd")?;
        let db = Mariadb { server, dir, port };
        for _ in 0..300 {
            if db.query("SELECT 1").is_ok_and(|r| r == "1") {
                return Ok(db);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(db.dir.path().join("error.log")).unwrap_or_default();
        bail!("mariadbd on port {port} did not answer within 30 s:\n{log}")
    }

    /// `--no-defaults -h 127.0.0.1 -P PORT -uroot`: the connection options of `mysql` and `mysqldump`,
    /// for commands in pods.
    pub fn client_options(&self) -> String {
        format!("--no-defaults -h 127.0.0.1 -P {} -uroot", self.port)
    }

    /// `mysql` running `sql` (batch mode, no column names), not yet started: for a statement another
    /// session runs concurrently.
    pub fn command(&self, sql: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("mysql");
        command
            .args(self.client_options().split(' '))
            .args(["-N", "-B", "-e", sql]);
        command
    }

    /// Run `sql` and return its output (tab-separated, no column names), trimmed.
    pub fn query(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("mysql")
            .args(self.client_options().split(' '))
            .args(["-N", "-B", "-e", sql])
            .output()
            .context("running mysql")?;
        if !out.status.success() {
            bail!("mysql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
