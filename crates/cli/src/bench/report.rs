//! What a benchmark run found, and how it is shown.
//!
//! Latencies are recorded in nanoseconds into HdrHistograms (three
//! significant digits, so a percentile is within 0.1% of the true value at
//! any scale). A run with a thousand clients must not keep a thousand
//! histograms, nor make them all fight over one, so [`Recorder`] holds a
//! small fixed number of shards, each behind its own mutex, and a client
//! records into shard `client % SHARDS`; the lock is held for the few
//! nanoseconds of one increment. The shards are merged once, at the end.
//!
//! A [`Report`] prints either as text for a person (summary, percentiles
//! and a compact histogram on fixed 1-2-5 bucket bounds, like etcd's
//! `benchmark` prints) or as one JSON object for a script. Both show the
//! same numbers; the JSON keeps full precision.

use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

/// How many independently locked histograms a [`Recorder`] spreads over.
const SHARDS: usize = 16;

/// Upper bounds, in milliseconds, of the buckets of the printed histogram:
/// a 1-2-5 series from 10 µs to 100 s, which any latency here falls in.
const BUCKETS_MS: [f64; 22] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3,
    2e3, 5e3, 1e4, 2e4, 5e4, 1e5,
];

/// Largest latency kept apart, in nanoseconds (an hour); longer ones are
/// recorded as this.
const MAX_NS: u64 = 3_600_000_000_000;

/// A new empty histogram of nanoseconds from 1 ns to [`MAX_NS`] (about
/// 270 KiB).
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid bounds and precision")
}

/// Latency samples from many concurrent clients.
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records one latency on behalf of client number `client`.
    pub fn record(&self, client: usize, latency: Duration) {
        let ns = (latency.as_nanos() as u64).max(1);
        // Saturating: a value past the top is kept as the top, not lost.
        self.shards[client % SHARDS].lock().saturating_record(ns);
    }

    /// All samples in one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            all.add(&*s.lock()).expect("histograms of equal bounds add");
        }
        all
    }
}

/// CPU time (user + system) this process has used so far, from
/// `/proc/self/stat` in Linux's fixed 100 ticks per second; `None` where
/// there is no procfs. On a small machine the load generator's own CPU is
/// taken from the server's, so the report says how much it used.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Nanoseconds to milliseconds.
fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The outcome of one scenario run.
pub struct Report {
    /// Scenario name, e.g. `put`.
    pub scenario: String,
    /// The flags that shaped the run, as given.
    pub params: Map<String, Value>,
    /// Operations that succeeded (each one a latency sample).
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// A few distinct error messages, to tell what failed.
    pub error_samples: Vec<String>,
    /// Wall time of the measured part.
    pub duration: Duration,
    /// Latencies of the successful operations, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Scenario-specific numbers (e.g. the put rate behind a watch run).
    pub extra: Map<String, Value>,
}

impl Report {
    /// Successful operations per second.
    pub fn rps(&self) -> f64 {
        let s = self.duration.as_secs_f64();
        if s > 0.0 {
            self.count as f64 / s
        } else {
            0.0
        }
    }

    /// The latency at percentile `p` (0–100), in milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        ms(self.latency.value_at_percentile(p))
    }

    /// Counts per printed bucket: `(upper bound in ms, count)`. Samples
    /// above the last bound land in the last bucket.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = BUCKETS_MS.iter().map(|&b| (b, 0)).collect();
        for v in self.latency.iter_recorded() {
            let x = ms(self.latency.highest_equivalent(v.value_iterated_to()));
            let i = BUCKETS_MS
                .iter()
                .position(|&b| x <= b)
                .unwrap_or(BUCKETS_MS.len() - 1);
            out[i].1 += v.count_at_value();
        }
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let h = &self.latency;
        let (min, max, mean) = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (ms(h.min()), ms(h.max()), h.mean() / 1e6)
        };
        let buckets: Vec<Value> = self
            .buckets()
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(le, n)| json!({ "le_ms": le, "count": n }))
            .collect();
        json!({
            "scenario": self.scenario,
            "params": self.params,
            "count": self.count,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "duration_s": self.duration.as_secs_f64(),
            "rps": self.rps(),
            "latency_ms": {
                "min": min,
                "mean": mean,
                "p50": self.pct_ms(50.0),
                "p90": self.pct_ms(90.0),
                "p99": self.pct_ms(99.0),
                "p99.9": self.pct_ms(99.9),
                "max": max,
            },
            "histogram": buckets,
            "extra": self.extra,
            "client_cpu_s": process_cpu_seconds(),
        })
    }

    /// The report as text for a person.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(x) => format!("{k}={x}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(s, "{}  ({})", self.scenario, params.join(" "));
        let _ = writeln!(
            s,
            "  {} ok, {} errors in {:.3} s: {:.1} ops/s",
            self.count,
            self.errors,
            self.duration.as_secs_f64(),
            self.rps()
        );
        for e in &self.error_samples {
            let _ = writeln!(s, "  error: {e}");
        }
        if !self.latency.is_empty() {
            let h = &self.latency;
            let _ = writeln!(
                s,
                "  latency ms: min {:.3}  mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                ms(h.min()),
                h.mean() / 1e6,
                self.pct_ms(50.0),
                self.pct_ms(90.0),
                self.pct_ms(99.0),
                self.pct_ms(99.9),
                ms(h.max())
            );
            s.push_str(&self.histogram_text());
        }
        for (k, v) in &self.extra {
            let _ = writeln!(s, "  {k}: {v}");
        }
        s
    }

    /// The non-empty span of buckets, one line each, with a bar scaled to
    /// the fullest bucket.
    fn histogram_text(&self) -> String {
        const WIDTH: u64 = 40;
        let b = self.buckets();
        let (Some(first), Some(last)) = (
            b.iter().position(|&(_, n)| n > 0),
            b.iter().rposition(|&(_, n)| n > 0),
        ) else {
            return String::new();
        };
        let top = b.iter().map(|&(_, n)| n).max().unwrap_or(1).max(1);
        let mut s = String::new();
        for &(le, n) in &b[first..=last] {
            let bar = (n * WIDTH).div_ceil(top) as usize;
            s.push_str(&format!(
                "  <= {le:>8} ms {n:>9} {}\n",
                "#".repeat(bar.min(WIDTH as usize))
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(samples_us: &[u64]) -> Report {
        let r = Recorder::new();
        for (i, &us) in samples_us.iter().enumerate() {
            r.record(i, Duration::from_micros(us));
        }
        Report {
            scenario: "t".into(),
            params: Map::new(),
            count: samples_us.len() as u64,
            errors: 0,
            error_samples: vec![],
            duration: Duration::from_secs(2),
            latency: r.merged(),
            extra: Map::new(),
        }
    }

    #[test]
    fn percentiles_and_rate_come_from_all_shards() {
        let samples: Vec<u64> = (1..=1000).collect();
        let r = report_of(&samples);
        assert_eq!(r.latency.len(), 1000);
        assert!((r.pct_ms(50.0) - 0.5).abs() < 0.001, "{}", r.pct_ms(50.0));
        assert!((r.pct_ms(99.0) - 0.99).abs() < 0.001, "{}", r.pct_ms(99.0));
        assert_eq!(r.rps(), 500.0);
    }

    #[test]
    fn buckets_hold_every_sample_once() {
        let r = report_of(&[5, 15, 90, 900, 3_000, 400_000_000]);
        let b = r.buckets();
        assert_eq!(b.iter().map(|&(_, n)| n).sum::<u64>(), 6);
        let at = |le: f64| b.iter().find(|&&(x, _)| x == le).unwrap().1;
        assert_eq!(at(0.01), 1); // 5 µs
        assert_eq!(at(0.02), 1); // 15 µs
        assert_eq!(at(0.1), 1); // 90 µs
        assert_eq!(at(1.0), 1); // 900 µs
        assert_eq!(at(5.0), 1); // 3 ms
        assert_eq!(at(1e5), 1); // 400 s, past the last bound
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = report_of(&[100, 200]).to_json();
        for f in ["scenario", "params", "count", "errors", "duration_s", "rps"] {
            assert!(v.get(f).is_some(), "{f} missing");
        }
        for p in ["p50", "p90", "p99", "p99.9"] {
            assert!(v["latency_ms"][p].is_f64(), "{p} missing");
        }
        assert_eq!(v["histogram"].as_array().unwrap().len(), 2);
    }
}
