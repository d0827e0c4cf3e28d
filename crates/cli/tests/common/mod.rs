//! Test harness: real server processes on loopback.
//!
//! [`Roster`] runs the `roster` binary built by this package; [`Etcd`] runs
//! the real etcd from the Debian `etcd-server` package. Both wait for the
//! server's "ready to serve client requests" line, keep draining its output
//! so it never blocks on a full pipe, and kill the process when dropped.
//! [`procs`] does the same for `roster echo` and `roster gateway`, for the
//! gateway's tests.
#![allow(dead_code)]

pub mod discovery;
pub mod procs;
pub mod proxy;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `roster serve`.
pub struct Roster {
    child: Child,
    /// `127.0.0.1:PORT`, what etcd clients take as an endpoint.
    pub endpoint: String,
    /// The data directory (kept on drop when it was passed in).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Spawns `cmd` with stderr piped, waits until a line containing `marker`
/// appears and returns the lines seen so far; the rest of stderr (and stdout)
/// is drained in the background.
fn spawn_until_ready(cmd: Command, marker: &'static str) -> (Child, Vec<String>) {
    try_spawn_until_ready(cmd, marker)
        .unwrap_or_else(|lines| panic!("server exited before it was ready:\n{}", lines.join("\n")))
}

/// [`spawn_until_ready`], with the lines the server wrote if it exited
/// before it was ready.
fn try_spawn_until_ready(
    mut cmd: Command,
    marker: &'static str,
) -> Result<(Child, Vec<String>), Vec<String>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("ROSTER_TEST_VERBOSE").is_some() {
                eprintln!("[server] {line}");
            }
            if let Some(t) = &tx {
                seen.push(line.clone());
                if line.contains(marker) {
                    let _ = t.send(Ok(std::mem::take(&mut seen)));
                    tx = None;
                }
            }
        }
        if let Some(t) = tx {
            let _ = t.send(Err(seen));
        }
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(lines)) => Ok((child, lines)),
        Ok(Err(lines)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(lines)
        }
        Err(_) => {
            let _ = child.kill();
            panic!("server not ready after {READY_TIMEOUT:?}");
        }
    }
}

impl Roster {
    /// Starts a server on a fresh temporary data directory.
    pub fn start() -> Roster {
        Roster::start_with(&[])
    }

    /// Starts a server with extra flags on a fresh temporary data directory.
    pub fn start_with(extra: &[&str]) -> Roster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut r = Roster::start_in(tmp.path(), extra);
        r._tmp = Some(tmp);
        r
    }

    /// Starts a server on `data_dir` with extra flags, listening on a port
    /// chosen by the OS.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Roster {
        Roster::spawn(data_dir, "http://127.0.0.1:0", extra)
    }

    /// Kills the server (SIGKILL) and starts it again on the same data
    /// directory and port, as a crashed registry coming back.
    pub fn restart(&mut self) {
        self.kill();
        let tmp = self._tmp.take();
        let url = self.url();
        let mut again = Roster::spawn(&self.data_dir, &url, &[]);
        again._tmp = tmp;
        // `again` ends up holding the dead, already reaped process.
        std::mem::swap(self, &mut again);
    }

    fn spawn(data_dir: &Path, listen: &str, extra: &[&str]) -> Roster {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roster"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen-client-urls")
            .arg(listen)
            .args(extra)
            .env("RUST_LOG", "warn");
        let marker = "ready to serve client requests on http://";
        let (child, lines) = spawn_until_ready(cmd, marker);
        let line = lines
            .iter()
            .find(|l| l.contains(marker))
            .expect("ready line");
        let endpoint = line
            .rsplit("http://")
            .next()
            .expect("address")
            .trim()
            .to_string();
        Roster {
            child,
            endpoint,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for roster")
    }
}

impl Drop for Roster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Path of the etcd server binary (Debian's `etcd-server` package).
pub fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("etcd is not installed: run ./scripts/test.sh, which installs the Debian etcd-server package");
}

/// A running single-member etcd.
pub struct Etcd {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub endpoint: String,
    peer: String,
    _tmp: tempfile::TempDir,
}

impl Etcd {
    /// Starts a fresh etcd on free loopback ports.
    ///
    /// A probed port can be taken by another test's server before etcd
    /// binds it (etcd cannot be told to pick its own); then etcd exits with
    /// "address already in use" and is started again on other ports.
    pub fn start() -> Etcd {
        const ATTEMPTS: usize = 5;
        let mut last = Vec::new();
        for _ in 0..ATTEMPTS {
            let tmp = tempfile::tempdir().expect("tempdir");
            let client = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            match try_spawn_until_ready(Etcd::command(tmp.path(), &client, &peer), ETCD_READY) {
                Ok((child, _)) => {
                    return Etcd {
                        child,
                        endpoint: client.trim_start_matches("http://").to_string(),
                        peer,
                        _tmp: tmp,
                    }
                }
                Err(lines) if lines.iter().any(|l| l.contains("address already in use")) => {
                    last = lines;
                }
                Err(lines) => panic!("etcd exited before it was ready:\n{}", lines.join("\n")),
            }
        }
        panic!(
            "etcd found its ports taken {ATTEMPTS} times:\n{}",
            last.join("\n")
        );
    }

    /// Kills etcd (SIGKILL) and starts it again on the same data and ports.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let client = format!("http://{}", self.endpoint);
        let cmd = Etcd::command(self._tmp.path(), &client, &self.peer);
        self.child = spawn_until_ready(cmd, ETCD_READY).0;
    }

    fn command(dir: &Path, client: &str, peer: &str) -> Command {
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg("--listen-client-urls")
            .arg(client)
            .arg("--advertise-client-urls")
            .arg(client)
            .arg("--listen-peer-urls")
            .arg(peer)
            .arg("--initial-advertise-peer-urls")
            .arg(peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"));
        cmd
    }
}

/// What etcd writes once it serves clients.
const ETCD_READY: &str = "ready to serve client requests";

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `ROSTER_TEST_AGAINST_ETCD` is set (and not empty): tests that
/// use [`Server`] then run against the real etcd, to check that their
/// expectations are etcd's.
pub fn against_etcd() -> bool {
    std::env::var_os("ROSTER_TEST_AGAINST_ETCD").is_some_and(|v| !v.is_empty())
}

/// The server under test: Roster, or the real etcd (see [`against_etcd`]).
pub enum Server {
    /// Our binary.
    Roster(Roster),
    /// The real etcd.
    Etcd(Etcd),
}

impl Server {
    /// Kills the server and starts it again on the same data and port.
    pub fn restart(&mut self) {
        match self {
            Server::Roster(r) => r.restart(),
            Server::Etcd(e) => e.restart(),
        }
    }

    /// Starts a fresh server.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a fresh server; `flags` go to Roster (etcd takes its
    /// settings from its environment).
    pub fn start_with(flags: &[&str]) -> Server {
        if against_etcd() {
            Server::Etcd(Etcd::start())
        } else {
            Server::Roster(Roster::start_with(flags))
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        match self {
            Server::Roster(r) => &r.endpoint,
            Server::Etcd(e) => &e.endpoint,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }
}
