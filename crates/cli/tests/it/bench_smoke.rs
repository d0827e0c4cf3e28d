//! `roster bench` keeps working: short runs of its scenarios against a real
//! Roster, checking that each `--json` report is one object with sane
//! numbers. Not a performance test: the counts are tiny and nothing is
//! compared, so that the whole file stays within seconds.

use std::process::Command;

use crate::roster::Roster;
use serde_json::Value;

/// Runs `roster bench <args> --json` and returns its report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run roster bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "roster bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

/// Checks the fields every report has, and that `count` is `want`.
fn check(r: &Value, scenario: &str, want: u64) {
    assert_eq!(r["scenario"], scenario, "{r}");
    assert_eq!(r["count"].as_u64(), Some(want), "{r}");
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert!(r["duration_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["rps"].as_f64().unwrap() > 0.0, "{r}");
    let l = &r["latency_ms"];
    let (p50, p99, p999) = (
        l["p50"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["p99.9"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{r}");
    let in_buckets: u64 = r["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(in_buckets, want, "{r}");
}

/// The store's revision, read with an independent client.
fn revision(ep: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        let r = c.get("any", None).await.unwrap();
        r.header().unwrap().revision()
    })
}

#[test]
fn put_range_and_txn_report_every_operation() {
    let server = Roster::start();
    let ep = server.endpoint.as_str();
    // Several clients share each connection, and so a task: every put
    // counted must have happened, and no more.
    let r = bench(&[
        "put",
        "--endpoints",
        ep,
        "--total",
        "200",
        "--clients",
        "7",
        "--conns",
        "2",
    ]);
    check(&r, "put", 200);
    assert_eq!(r["params"]["val_size"], 256);
    assert_eq!(revision(ep), 1 + 200);

    let r = bench(&[
        "range",
        "--endpoints",
        ep,
        "--load-keys",
        "500",
        "--consistency",
        "s",
        "--total",
        "200",
        "--clients",
        "4",
        "--conns",
        "2",
    ]);
    check(&r, "range", 200);
    let r = bench(&[
        "range",
        "--endpoints",
        ep,
        "--key-space",
        "500",
        "--prefix",
        "--total",
        "50",
    ]);
    check(&r, "range", 50);
    let r = bench(&[
        "txn-put",
        "--endpoints",
        ep,
        "--total",
        "50",
        "--txn-ops",
        "3",
    ]);
    check(&r, "txn-put", 50);
}

#[test]
fn streams_and_registry_scenarios_run() {
    let server = Roster::start();
    let ep = server.endpoint.as_str();
    let r = bench(&[
        "lease-keepalive",
        "--endpoints",
        ep,
        "--total",
        "300",
        "--clients",
        "3",
    ]);
    check(&r, "lease-keepalive", 300);

    // 20 puts fan out to 10 watchers: 200 events, none missing.
    let r = bench(&[
        "watch",
        "--endpoints",
        ep,
        "--watchers",
        "10",
        "--streams",
        "2",
        "--total",
        "20",
    ]);
    check(&r, "watch-deliver", 200);
    assert_eq!(r["extra"]["missing_events"], 0);

    let r = bench(&[
        "discover",
        "--endpoints",
        ep,
        "--total",
        "5",
        "--discoverers",
        "3",
    ]);
    check(&r, "discover", 5);
}

#[test]
fn ceilings_run_without_a_registry() {
    let r = bench(&["noop", "--in-process", "--total", "300", "--clients", "2"]);
    check(&r, "noop", 300);
    let dir = tempfile::tempdir().unwrap();
    let r = bench(&[
        "fsync",
        "--dir",
        dir.path().to_str().unwrap(),
        "--total",
        "20",
    ]);
    check(&r, "fsync", 20);
    // Paced: 10 appends at 100 a second cannot take less than 90 ms.
    let r = bench(&[
        "fsync",
        "--dir",
        dir.path().to_str().unwrap(),
        "--total",
        "10",
        "--rate",
        "100",
    ]);
    check(&r, "fsync", 10);
    assert!(r["duration_s"].as_f64().unwrap() >= 0.09, "{r}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "probe file left behind"
    );
}

#[test]
fn a_failing_run_reports_errors_and_exits_non_zero() {
    let server = Roster::start();
    // Values over the request limit are refused: every put fails.
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["bench", "put", "--endpoints", &server.endpoint])
        .args(["--total", "5", "--val-size", "2000000", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["count"].as_u64(), r["errors"].as_u64()),
        (Some(0), Some(5))
    );
    assert!(
        r["error_samples"][0]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{r}"
    );
}

#[test]
fn hold_scenarios_keep_every_watcher_and_lease() {
    let server = Roster::start();
    let ep = server.endpoint.as_str();
    let r = bench(&[
        "hold-watchers",
        "--endpoints",
        ep,
        "--watchers",
        "300",
        "--streams",
        "10",
        "--conns",
        "2",
        "--hold",
        "1s",
    ]);
    check(&r, "hold-watchers", 300);
    assert_eq!(r["extra"]["messages_during_hold"], 0, "{r}");

    // TTL 3: each lease is renewed every second, so about once per lease
    // per second of the hold.
    let r = bench(&[
        "hold-leases",
        "--endpoints",
        ep,
        "--leases",
        "200",
        "--streams",
        "4",
        "--clients",
        "8",
        "--conns",
        "2",
        "--ttl",
        "3",
        "--hold",
        "2s",
    ]);
    assert_eq!(r["scenario"], "hold-leases", "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    let e = &r["extra"];
    assert_eq!(
        (e["granted"].as_u64(), e["revoked"].as_u64()),
        (Some(200), Some(200)),
        "{r}"
    );
    assert_eq!(
        (e["lost_leases"].as_u64(), e["unanswered"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let answered = r["count"].as_u64().unwrap();
    assert!((300..=500).contains(&answered), "{r}");
}

/// A crowd of watchers on the written prefix, unread and then read: every
/// put is served and counted, and reading streams receive events.
#[test]
fn watched_puts_serve_every_put_whether_watchers_read_or_not() {
    let server = Roster::start();
    let ep = server.endpoint.as_str();
    let before = revision(ep);
    let common = [
        "watched-puts",
        "--endpoints",
        ep,
        "--watchers",
        "1000",
        "--streams",
        "20",
        "--conns",
        "2",
        "--clients",
        "2",
        "--total",
        "200",
        "--val-size",
        "1024",
    ];
    let idle = bench(&common);
    check(&idle, "watched-puts", 200);
    assert_eq!(idle["params"]["read"], false, "{idle}");
    let read = bench(&[&common[..], &["--read"]].concat());
    check(&read, "watched-puts", 200);
    assert!(
        read["extra"]["events_delivered"].as_u64().unwrap() > 0,
        "{read}"
    );
    assert_eq!(revision(ep), before + 400);
}
