//! Child processes: start, wait for the ready line, drain, kill on drop.
//!
//! Every process a test starts — the `roster` binary, the real etcd, a
//! test binary re-run as a helper — goes through [`Proc`]. Its standard
//! error is read on a thread of its own from the start, so a chatty child
//! never blocks on a full pipe; the reader hands over the first line that
//! contains the ready marker, with the moment it was read, and keeps the
//! last [`LOG_LINES`] lines. When a test fails, the dropped `Proc` prints
//! them: a server test that fails without the server's log is hard to
//! read. `ROSTER_TEST_VERBOSE=1` echoes every line as it arrives.
//!
//! Standard input is a pipe the child can watch: a helper process that
//! exits when its stdin closes never outlives a test that died.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wait::WAIT;

/// How long a process may take to print its ready line; longer than
/// [`WAIT`] because a child started while the machine is building or
/// running other tests can be slow to start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many of a child's last lines are kept for the failure report.
const LOG_LINES: usize = 200;

/// A running child process, killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<VecDeque<String>>>,
    ready_line: String,
    ready_at: Instant,
}

impl Proc {
    /// Starts `cmd` and waits until a line of its standard error contains
    /// `ready`; panics with the child's output if it exits first.
    pub fn start(name: &str, cmd: Command, ready: &str) -> Proc {
        Proc::try_start(name, cmd, ready).unwrap_or_else(|lines| {
            panic!("{name} exited before it was ready:\n{}", lines.join("\n"))
        })
    }

    /// Like [`Proc::start`], but a child that exits before it is ready is
    /// an `Err` with every line it wrote, for callers that can try again.
    pub fn try_start(name: &str, mut cmd: Command, ready: &str) -> Result<Proc, Vec<String>> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let (lines, label, marker) = (log.clone(), name.to_string(), ready.to_string());
        std::thread::spawn(move || {
            let verbose = std::env::var_os("ROSTER_TEST_VERBOSE").is_some();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Taken first, as close as can be to when the line was
                // written: time-to-ready figures are measured from it.
                let at = Instant::now();
                if verbose {
                    eprintln!("[{label}] {line}");
                }
                if line.contains(&marker) {
                    if let Some(t) = tx.take() {
                        let _ = t.send((line.clone(), at));
                    }
                }
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() == LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
            // Dropping `tx` unread tells the starter the child is gone.
        });
        let stdin = child.stdin.take();
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok((ready_line, ready_at)) => Ok(Proc {
                name: name.to_string(),
                child,
                stdin,
                log,
                ready_line,
                ready_at,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                let lines = log.lock().unwrap_or_else(|e| e.into_inner());
                Err(lines.iter().cloned().collect())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} not ready after {READY_TIMEOUT:?}");
            }
        }
    }

    /// The line that said the child was ready.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// When the ready line was read (the reading thread may be scheduled a
    /// little after the child wrote it).
    pub fn ready_at(&self) -> Instant {
        self.ready_at
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, a graceful stop, and returns at once.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.name);
    }

    /// Sends SIGKILL (`kill -9`) and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Closes the child's standard input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits, within [`WAIT`], for the process to exit; returns its status.
    pub async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still running", self.name);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The lines kept so far (the last 200).
    pub fn log(&self) -> Vec<String> {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect()
    }

    /// Waits, within [`WAIT`], for a line containing `text`; returns it.
    pub async fn until_log(&self, text: &str) -> String {
        let what = format!("{}: a line with {text:?}", self.name);
        crate::wait::until(&what, || async {
            self.log().into_iter().find(|l| l.contains(text))
        })
        .await
    }

    /// The CPU time the child has used so far, user and system.
    #[cfg(target_os = "linux")]
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // The command name, in parentheses, may hold spaces: count the
        // fields after it. utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')').expect("comm in /proc/PID/stat").1;
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse::<u64>().expect("utime, stime"))
            .sum();
        let hz = rustix::param::clock_ticks_per_second();
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }

    /// The share of one core the child uses over `window`, which the
    /// caller waits out: a measurement, not a wait for an event.
    #[cfg(target_os = "linux")]
    pub async fn cpu_share(&self, window: Duration) -> f64 {
        let (used, at) = (self.cpu_time(), Instant::now());
        tokio::time::sleep(window).await;
        (self.cpu_time() - used).as_secs_f64() / at.elapsed().as_secs_f64()
    }

    /// The child's peak resident memory (`VmHWM`), in bytes.
    #[cfg(target_os = "linux")]
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            eprintln!("--- last {} lines of {} ---", log.len(), self.name);
            for line in log {
                eprintln!("[{}] {line}", self.name);
            }
        }
    }
}
