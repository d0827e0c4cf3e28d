//! What `roster gateway` does to and around the requests it passes on,
//! with real processes throughout (see `gateway.rs`): headers rewritten
//! for the second hop, routes by host and prefix with prefix stripping,
//! protocol upgrades passed through, instances taken out by failing active
//! health checks, routes reloaded from the config file under live
//! keep-alive connections, and the admin port's metrics.
//!
//! `roster echo` answers every request with what it received (path, Host,
//! headers, which instance it is), so each test asserts on what arrived at
//! the instance rather than on the gateway's intentions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{call, empty, sample, Conn, Echo, Gateway};
use crate::roster::Roster;
use crate::wire::{assert_echoes_raw, read_head};
use hyper::{Request, StatusCode};
use roster_testkit::WAIT;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A gateway configuration file in a temporary directory.
struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    fn new(toml: &str) -> ConfigFile {
        let file = ConfigFile {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        file.write(toml);
        file
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// Replaces the contents in one step (write, then rename), as editors
    /// and configuration tools do, so the gateway never reads half a file.
    fn write(&self, toml: &str) {
        let tmp: &Path = &self.dir.path().join("gateway.toml.new");
        std::fs::write(tmp, toml).expect("write config");
        std::fs::rename(tmp, self.path()).expect("rename config");
    }

    fn arg(&self) -> String {
        self.path().to_string_lossy().into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let roster = Roster::start();
    let echo = Echo::start(&roster.endpoint, "web", "w1").await;
    let config = ConfigFile::new(
        r#"
        [[route]]
        service = "web"
        [[route]]
        prefix = "/rewritten"
        service = "web"
        preserve_host = false
        "#,
    );
    let gw = Gateway::start(&roster.endpoint, &["--config", &config.arg()]).await;
    gw.until_instances("/", &[("w1", false)]).await;
    gw.until_instances("/rewritten", &[("w1", false)]).await;

    let mut conn = Conn::open(gw.addr).await;
    let req = Request::get("/kept?x=1")
        .header("host", "shop.test")
        // Hop-by-hop: the ones `Connection` names, and the standard set.
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "for the gateway only")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Z2F0ZXdheTpzZWNyZXQ=")
        // End to end.
        .header("x-request-id", "r-42")
        .header("authorization", "Bearer t")
        // What an earlier proxy said.
        .header("x-forwarded-for", "192.0.2.1")
        .header("forwarded", "for=192.0.2.1;proto=https")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .expect("request");
    let answer = conn.call(req).await;
    assert_eq!(answer.status, StatusCode::OK);
    let got = answer.json();
    let headers = &got["headers"];
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert_eq!(
            headers[hop],
            Value::Null,
            "{hop} reached the instance: {got:#}"
        );
    }
    assert_eq!(headers["x-request-id"], "r-42");
    assert_eq!(headers["authorization"], "Bearer t");
    // The gateway's client (this test, on loopback) is appended to the
    // earlier proxy's entries; the scheme is the gateway's own, plain HTTP.
    assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["forwarded"],
        "for=192.0.2.1;proto=https, for=127.0.0.1;host=shop.test;proto=http"
    );
    // Host is kept by default, so virtual hosts on the instance work...
    assert_eq!(got["host"], "shop.test");
    assert_eq!(got["path"], "/kept?x=1");

    // ...and rewritten to the instance's address where the route says so.
    let answer = conn.get("/rewritten/x", Some("shop.test")).await;
    assert_eq!(answer.json()["host"], echo.addr.to_string());
    assert_eq!(answer.json()["path"], "/rewritten/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix_and_strips_the_prefix() {
    let roster = Roster::start();
    let _web = Echo::start(&roster.endpoint, "web", "web1").await;
    let _api = Echo::start(&roster.endpoint, "api", "api1").await;
    let _shop = Echo::start(&roster.endpoint, "shop", "shop1").await;
    let gw = Gateway::start(
        &roster.endpoint,
        &[
            "--route",
            "/=web",
            "--route",
            "/api=api",
            "--route",
            "shop.test/=shop",
            "--strip-prefix",
        ],
    )
    .await;
    gw.until_instances("/", &[("web1", false)]).await;
    gw.until_instances("/api", &[("api1", false)]).await;
    gw.until_instances("shop.test/", &[("shop1", false)]).await;

    let mut conn = Conn::open(gw.addr).await;
    // (Host, request path) → (instance, path the instance received).
    let cases = [
        ("gw.test", "/api/users?page=2", "api1", "/users?page=2"),
        ("gw.test", "/api", "api1", "/"),
        ("gw.test", "/api/", "api1", "/"),
        // Prefixes match whole path segments.
        ("gw.test", "/apix", "web1", "/apix"),
        ("gw.test", "/web/api", "web1", "/web/api"),
        // A host route comes before any host-less one, longer prefix or not.
        ("shop.test", "/api/users", "shop1", "/api/users"),
        // Hosts match without case and without port.
        ("SHOP.test:8080", "/cart", "shop1", "/cart"),
        ("shop.test.evil", "/cart", "web1", "/cart"),
    ];
    for (host, path, instance, received) in cases {
        let answer = conn.get(path, Some(host)).await;
        assert_eq!(answer.status, StatusCode::OK, "{host} {path}");
        let got = answer.json();
        assert_eq!(
            (got["instance"].as_str(), got["path"].as_str()),
            (Some(instance), Some(received)),
            "Host: {host}, GET {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_as_raw_bytes() {
    let roster = Roster::start();
    let _echo = Echo::start(&roster.endpoint, "web", "w1").await;
    let gw = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    gw.until_instances("/", &[("w1", false)]).await;

    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: test-echo\r\n\r\n",
        )
        .await
        .expect("write request");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: test-echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");

    // From here on the gateway splices bytes both ways, whatever they are:
    // no HTTP framing, nothing buffered until a size is reached.
    let messages: [&[u8]; 4] = [
        &b"hello"[..],
        &[0u8, 255, 13, 10, 0][..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[b'x'; 100_000][..],
    ];
    // A half-close travels through too: the echo sees the end and closes.
    assert_echoes_raw(&mut stream, &messages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_its_health_check_is_taken_out_and_brought_back() {
    let roster = Roster::start();
    let sick = Echo::start(&roster.endpoint, "web", "sick").await;
    let _well = Echo::start(&roster.endpoint, "web", "well").await;
    let config = ConfigFile::new(
        r#"
        [[route]]
        service = "web"
        balancer = "round_robin"
        [route.health_check]
        path = "/healthz"
        interval = "200ms"
        timeout = "1s"
        unhealthy_threshold = 2
        "#,
    );
    let gw = Gateway::start(&roster.endpoint, &["--config", &config.arg()]).await;
    gw.until_instances("/", &[("sick", false), ("well", false)])
        .await;

    // Asked directly: its /healthz answers 503 from now on, while every
    // other request it serves still succeeds, so only the check can tell.
    let flipped = Instant::now();
    let answer = call(
        sick.addr,
        Request::post("/admin/unhealthy")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    gw.until_instances("/", &[("sick", true), ("well", false)])
        .await;
    let out_after = flipped.elapsed();
    // Two failed checks 200 ms apart; 1.5 s of slack for busy CI cores.
    println!("taken out {out_after:?} after /healthz turned 503");
    assert!(
        out_after < Duration::from_secs(2),
        "out after {out_after:?}"
    );
    let mut conn = Conn::open(gw.addr).await;
    for i in 0..20 {
        let answer = conn.get(&format!("/n/{i}"), None).await;
        assert_eq!(answer.instance(), "well", "request {i}");
    }

    let answer = call(
        sick.addr,
        Request::post("/admin/healthy")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    gw.until_instances("/", &[("sick", false), ("well", false)])
        .await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..4 {
        seen.insert(conn.get(&format!("/m/{i}"), None).await.instance());
    }
    assert_eq!(seen.len(), 2, "round robin over both again: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_reload_routes_under_live_connections() {
    let roster = Roster::start();
    let _web = Echo::start(&roster.endpoint, "web", "web1").await;
    let _other = Echo::start(&roster.endpoint, "other", "other1").await;
    let before = "[[route]]\nprefix = \"/a\"\nservice = \"web\"\nstrip_prefix = true\n";
    let config = ConfigFile::new(before);
    let gw = Gateway::start(&roster.endpoint, &["--config", &config.arg()]).await;
    gw.until_instances("/a", &[("web1", false)]).await;

    // Opened before the reload and used across it. A hyper client
    // connection is one TCP connection: had the gateway closed it, the
    // requests after the reload would fail rather than reconnect.
    let mut conn = Conn::open(gw.addr).await;
    assert_eq!(conn.get("/a/1", None).await.instance(), "web1");
    assert_eq!(conn.get("/b/1", None).await.status, StatusCode::NOT_FOUND);
    // In flight across the reload, on a connection of its own: the
    // instance answers it after 3 s, and the file is read every second.
    let mut slow = Conn::open(gw.addr).await;
    let in_flight = tokio::spawn(async move { slow.get("/a/sleep/3000", None).await });
    gw.until_sample("roster_gateway_requests_in_flight", |n| n >= 1.0)
        .await;

    config.write(&format!(
        "{before}[[route]]\nprefix = \"/b\"\nservice = \"other\"\nstrip_prefix = true\n"
    ));
    let edited = Instant::now();
    gw.until_instances("/b", &[("other1", false)]).await;
    let took = edited.elapsed();
    println!("routes reloaded {took:?} after the edit");
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the reload, {took:?} after the edit"
    );
    let answer = conn.get("/b/1", None).await;
    assert_eq!(
        (answer.instance(), answer.json()["path"].clone()),
        ("other1".to_string(), "/1".into())
    );
    assert_eq!(conn.get("/a/2", None).await.instance(), "web1");
    let answer = timeout(WAIT, in_flight)
        .await
        .expect("in-flight request answered")
        .expect("task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["path"], "/sleep/3000");

    // An edit that does not parse is logged and ignored.
    config.write("[[route]]\nprefix = \"/c\"\n");
    gw.proc.until_log("config reload failed").await;
    assert_eq!(conn.get("/b/2", None).await.instance(), "other1");

    // A route removed: 404 from then on, on the same connection.
    config.write("[[route]]\nprefix = \"/b\"\nservice = \"other\"\nstrip_prefix = true\n");
    gw.until_table("only /b", |routes| {
        routes.len() == 1 && routes[0]["name"] == "/b"
    })
    .await;
    assert_eq!(conn.get("/a/3", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(conn.get("/b/3", None).await.json()["path"], "/3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_latency_and_upstream_errors() {
    let roster = Roster::start();
    let web = Echo::start(&roster.endpoint, "web", "w1").await;
    let mut api = Echo::start_with(&roster.endpoint, "api", "a1", &["--ttl", "60"]).await;
    let gw = Gateway::start(
        &roster.endpoint,
        &[
            "--route",
            "/web=web",
            "--route",
            "/api=api",
            "--strip-prefix",
        ],
    )
    .await;
    gw.until_instances("/web", &[("w1", false)]).await;
    gw.until_instances("/api", &[("a1", false)]).await;
    let (web_addr, api_addr) = (web.addr.to_string(), api.addr.to_string());
    api.proc.kill9();

    let mut conn = Conn::open(gw.addr).await;
    for i in 0..10 {
        assert_eq!(
            conn.get(&format!("/web/{i}"), None).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        conn.get("/web/sleep/300", None).await.status,
        StatusCode::OK
    );
    for _ in 0..3 {
        let answer = conn.get("/web/status/503", None).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    for _ in 0..2 {
        let answer = conn.get("/api/x", None).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        conn.get("/nowhere", None).await.status,
        StatusCode::NOT_FOUND
    );

    let m = gw.metrics().await;
    let series = |s: &str| sample(&m, s);
    let requests = |route: &str, code: &str| {
        series(&format!(
            "roster_gateway_requests_total{{route=\"{route}\",code=\"{code}\"}}"
        ))
    };
    assert_eq!(requests("/web", "2xx"), 11.0, "{m}");
    assert_eq!(requests("/web", "5xx"), 3.0, "{m}");
    assert_eq!(requests("/api", "5xx"), 2.0, "{m}");
    assert_eq!(requests("/api", "2xx"), 0.0, "{m}");
    assert_eq!(requests("none", "4xx"), 1.0, "{m}");

    // Latency: every answer is observed, and only the slow one is slower
    // than 256 ms (the histogram's buckets double from 1 ms).
    let duration = "roster_gateway_request_duration_seconds";
    assert_eq!(
        series(&format!("{duration}_count{{route=\"/web\"}}")),
        14.0,
        "{m}"
    );
    let sum = series(&format!("{duration}_sum{{route=\"/web\"}}"));
    assert!((0.3..5.0).contains(&sum), "latency sum {sum}\n{m}");
    let fast = m
        .lines()
        .find(|l| {
            l.starts_with(&format!("{duration}_bucket{{"))
                && l.contains("route=\"/web\"")
                && l.contains("le=\"0.256\"")
        })
        .unwrap_or_else(|| panic!("no 0.256 bucket for /web in\n{m}"));
    assert!(fast.ends_with(" 13"), "{fast}");

    // Upstream errors, by route, instance and kind.
    let errors = |route: &str, instance: &str, kind: &str| {
        series(&format!(
            "roster_gateway_upstream_errors_total{{route=\"{route}\",instance=\"{instance}\",kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(errors("/web", &web_addr, "status_5xx"), 3.0, "{m}");
    assert_eq!(errors("/api", &api_addr, "connect"), 2.0, "{m}");
    assert_eq!(errors("/web", &web_addr, "connect"), 0.0, "{m}");
    // Three failures in a row eject an instance; two do not.
    let ejections = |service: &str, instance: &str| {
        series(&format!(
            "roster_gateway_ejections_total{{service=\"{service}\",instance=\"{instance}\"}}"
        ))
    };
    assert_eq!(ejections("web", &web_addr), 1.0, "{m}");
    assert_eq!(ejections("api", &api_addr), 0.0, "{m}");
    assert!(
        series("roster_gateway_response_bytes_total{route=\"/web\"}") > 0.0,
        "{m}"
    );
    assert_eq!(series("roster_gateway_requests_in_flight"), 0.0, "{m}");
}
