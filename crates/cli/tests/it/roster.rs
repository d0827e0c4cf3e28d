//! The `roster serve` process, for the tests that need the process itself:
//! its flags, its signals, its exit, a `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use roster_testkit::Proc;

/// What `roster serve` prints once it serves, followed by its address.
const READY: &str = "ready to serve client requests on http://";

/// A running `roster serve`, killed when dropped.
pub struct Roster {
    proc: Proc,
    /// `127.0.0.1:PORT`, what etcd clients take as an endpoint.
    pub endpoint: String,
    /// The data directory (kept on drop when it was passed in).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
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

    /// Like [`Roster::start_in`], for a server that may refuse to start:
    /// `Err` with every line it wrote if it exits before it serves.
    pub fn try_start_in(data_dir: &Path, extra: &[&str]) -> Result<Roster, Vec<String>> {
        let cmd = Roster::command(data_dir, "http://127.0.0.1:0", extra);
        Proc::try_start("roster", cmd, READY).map(|proc| Roster::from_proc(proc, data_dir))
    }

    fn command(data_dir: &Path, listen: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roster"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen-client-urls")
            .arg(listen)
            .args(extra)
            .env("RUST_LOG", "warn");
        cmd
    }

    fn spawn(data_dir: &Path, listen: &str, extra: &[&str]) -> Roster {
        let cmd = Roster::command(data_dir, listen, extra);
        Roster::from_proc(Proc::start("roster", cmd, READY), data_dir)
    }

    fn from_proc(proc: Proc, data_dir: &Path) -> Roster {
        let endpoint = proc
            .ready_line()
            .rsplit("http://")
            .next()
            .expect("address")
            .trim()
            .to_string();
        Roster {
            proc,
            endpoint,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// Stops the server with SIGTERM and returns its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.proc.terminate();
        self.proc.exited().await
    }
}
