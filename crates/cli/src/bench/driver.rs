//! The closed-loop load driver.
//!
//! Each [`Worker`] is one client: it issues one operation, waits for its
//! answer, records the latency, and issues the next, as etcd's benchmark
//! clients do. Workers draw sequence numbers from one shared counter, so
//! `--total N` means exactly N operations however the clients are spread,
//! and a worker can derive its key from the number (`--sequential`).
//!
//! With `--rate R`, operation `n` is not started before `start + n/R`: the
//! schedule is fixed in advance, so a slow answer does not lower the
//! offered rate. Latency is still timed from the actual send; a run whose
//! server cannot keep up shows it as a shortfall in achieved rate.
//!
//! The clients of one connection run in one task, not one task each. When
//! a read brings the answers of several of them, that task resumes them all
//! and each queues its next request before the connection's task runs and
//! writes them, in one write (see `conn.rs`). With a task per client, tokio
//! ran the connection's task, freshly woken, after each client, and every
//! request took a write of its own: on loopback a write also carries the
//! receiver's TCP work, so that cost both the generator and the server
//! measured (`docs/decisions.md`, entry 29).
//!
//! Workers are built, and their connections and streams set up, before
//! [`drive`] is called, so that setting up is never measured. The progress
//! bar goes to stderr and is hidden when stderr is not a terminal, so
//! scripts capturing `--json` see only the report.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use super::report::Recorder;

/// Most distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// Failures tolerated before the half-failed rule may stop a run, so that a
/// few errors at the start do not end it.
const ABORT_MIN_ERRORS: u64 = 100;

/// When a run's measured part ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many operations, over all workers.
    Total(u64),
    /// After this much wall time.
    After(Duration),
}

/// One client of a closed-loop run.
pub trait Worker: Send + 'static {
    /// Runs operation number `seq` to completion.
    fn op(&mut self, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// What a run did, before it becomes a report.
pub struct Outcome {
    /// Operations that succeeded.
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
    /// From the first operation's start to the last one's end.
    pub duration: Duration,
    /// True when the run stopped early because most operations failed.
    pub aborted: bool,
}

/// The plan and counters shared by the workers of one run.
struct Shared {
    stop: Stop,
    /// Operations per second over all workers; 0 for no cap.
    rate: f64,
    start: Instant,
    /// For a timed run, when it ends.
    deadline: Option<Instant>,
    recorder: Arc<Recorder>,
    next: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    abort: AtomicBool,
    samples: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let ok = self.ok.load(Ordering::Relaxed);
        if errors >= ABORT_MIN_ERRORS && errors > ok {
            self.abort.store(true, Ordering::Relaxed);
        }
        let mut s = self.samples.lock();
        if s.len() < MAX_ERROR_SAMPLES && !s.contains(&e) {
            s.push(e);
        }
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(label: &str, len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// Runs `workers` until `stop`, recording each successful operation's
/// latency into `recorder` under the worker's index. Worker `i` runs in
/// task `i % groups`: pass the number of connections the workers were
/// dealt round-robin, so that each task holds one connection's clients.
pub async fn drive<W: Worker>(
    label: &str,
    workers: Vec<W>,
    groups: usize,
    stop: Stop,
    rate: f64,
    recorder: Arc<Recorder>,
) -> Outcome {
    let (len, deadline_ms) = match stop {
        Stop::Total(n) => (n, None),
        Stop::After(d) => (d.as_millis() as u64, Some(d.as_millis() as u64)),
    };
    let pb = progress(label, len);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        stop,
        rate,
        start,
        deadline: match stop {
            Stop::After(d) => Some(start + d),
            Stop::Total(_) => None,
        },
        recorder,
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        samples: Mutex::new(Vec::new()),
    });
    let groups = groups.clamp(1, workers.len().max(1));
    let mut grouped: Vec<Vec<(usize, W)>> = (0..groups).map(|_| Vec::new()).collect();
    for (i, w) in workers.into_iter().enumerate() {
        grouped[i % groups].push((i, w));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for group in grouped {
        let shared = shared.clone();
        tasks.spawn(async move {
            // `FuturesUnordered` wakes its own task after polling as many
            // futures as it holds, to be fair to other tasks: for a lone
            // client, a second task run and often a thread woken per call.
            match <[_; 1]>::try_from(group) {
                Ok([(i, w)]) => client(i, w, &shared).await,
                Err(group) => {
                    let mut clients: FuturesUnordered<_> = group
                        .into_iter()
                        .map(|(i, w)| client(i, w, &shared))
                        .collect();
                    while clients.next().await.is_some() {}
                }
            }
        });
    }
    // The bar is fed by a ticker, not by the workers, so that a thousand
    // clients do not contend on it.
    let ticker = {
        let (shared, pb) = (shared.clone(), pb.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let pos = match deadline_ms {
                    Some(d) => (start.elapsed().as_millis() as u64).min(d),
                    None => {
                        shared.ok.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed)
                    }
                };
                pb.set_position(pos);
            }
        })
    };
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            shared.fail(format!("client task failed: {e}"));
        }
    }
    let duration = start.elapsed();
    ticker.abort();
    pb.finish_and_clear();
    let samples = std::mem::take(&mut *shared.samples.lock());
    Outcome {
        count: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        error_samples: samples,
        duration,
        aborted: shared.abort.load(Ordering::Relaxed),
    }
}

/// Runs `setups` concurrently, a task each, and returns their outputs in
/// the order given: [`drive`] groups workers by their place in the list,
/// so a worker set up on connection `i % conns` must stay at place `i`.
pub async fn set_up_in_order<T, F>(setups: impl IntoIterator<Item = F>) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Future<Output = Result<T, String>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in setups.into_iter().enumerate() {
        tasks.spawn(async move { (i, f.await) });
    }
    let mut slots: Vec<Option<T>> = (0..tasks.len()).map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, out) = r.map_err(|e| e.to_string())?;
        slots[i] = Some(out?);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// One client's closed loop.
async fn client<W: Worker>(i: usize, mut w: W, shared: &Shared) {
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        match shared.stop {
            Stop::Total(n) if seq >= n => break,
            _ => {}
        }
        if shared.rate > 0.0 {
            let at = shared.start + Duration::from_secs_f64(seq as f64 / shared.rate);
            tokio::time::sleep_until(at.into()).await;
        }
        if shared.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let t = Instant::now();
        match w.op(seq).await {
            Ok(()) => {
                shared.recorder.record(i, t.elapsed());
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.fail(e),
        }
    }
}

/// Turns a tonic status into the text the report keeps.
pub fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
