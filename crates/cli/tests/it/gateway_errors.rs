//! `roster gateway`'s own answers when it cannot pass a request on, and
//! bodies that stream through it both ways; real processes throughout
//! (see `gateway.rs`).
//!
//! Each error answer is short JSON saying which part failed, so these tests
//! check the status *and* the body: 404 names the path no route matched,
//! 503 the route and service that has no instance, 502 and 504 the
//! instance that failed. A 5xx the instance gives itself is not the
//! gateway's to rewrite, and is checked to arrive unchanged.
//!
//! The 502 test uses, besides a killed echo, an "instance" of the test's
//! own: a listener that reads a request and hangs up without answering,
//! registered in the registry like any instance. That is the one failure
//! an echo cannot be asked for, and the one where retrying is subtle: the
//! instance may have seen the request, so only an idempotent request with
//! no body may go to another instance.
//!
//! Streaming is checked by what buffering would change: a body far larger
//! than any buffer goes up while the gateway's peak memory stays flat, and
//! a response produced slowly arrives chunk by chunk, not all at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procs::{call, empty, full, get, Body, Conn, Echo, Gateway};
use crate::roster::Roster;
use crate::wire::{chunk_arrivals, produce_upload, MIB, UPLOAD_CHUNKS};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use roster_client::{Client, Registration, Registry};
use roster_testkit::WAIT;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Asserts that `answer` is one of the gateway's own JSON answers.
fn assert_gateway_json(answer: &crate::procs::Answer) {
    assert_eq!(
        answer.headers["content-type"], "application/json",
        "{answer:?}"
    );
    assert_eq!(answer.headers["cache-control"], "no-store", "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_naming_the_path() {
    let roster = Roster::start();
    let _web = Echo::start(&roster.endpoint, "web", "w1").await;
    let gw = Gateway::start(
        &roster.endpoint,
        &["--route", "/api=web", "--route", "shop.test/=web"],
    )
    .await;
    let mut conn = Conn::open(gw.addr).await;

    let answer = conn.get("/other/x?q=1", Some("gw.test")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_gateway_json(&answer);
    assert_eq!(
        answer.json(),
        json!({"error": "no route", "path": "/other/x"})
    );
    // Prefixes match whole segments: /apix is not under /api.
    let answer = conn.get("/apix", Some("gw.test")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    // The same path is routed for the host that has a route, and on the
    // same connection: a 404 does not close it.
    let answer = conn.get("/other/x", Some("shop.test")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.instance(), "w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_instances_is_a_503_naming_the_route() {
    let roster = Roster::start();
    let _web = Echo::start(&roster.endpoint, "web", "w1").await;
    let gw = Gateway::start(
        &roster.endpoint,
        &["--route", "/=web", "--route", "/api=api"],
    )
    .await;
    gw.until_instances("/", &[("w1", false)]).await;

    let answer = get(gw.addr, "/api/users").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_gateway_json(&answer);
    assert_eq!(
        answer.json(),
        json!({"error": "no instance available", "route": "/api", "service": "api"})
    );
    // The other route is unaffected.
    assert_eq!(get(gw.addr, "/x").await.instance(), "w1");

    // An instance registers: served. It leaves: 503 again.
    let mut a1 = Echo::start(&roster.endpoint, "api", "a1").await;
    gw.until_instances("/api", &[("a1", false)]).await;
    assert_eq!(get(gw.addr, "/api/users").await.instance(), "a1");
    a1.proc.terminate();
    gw.until_instances("/api", &[]).await;
    let answer = get(gw.addr, "/api/users").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["route"], "/api");
    assert!(a1.proc.exited().await.success());
}

/// A registered "instance" that reads each request's head and hangs up
/// without answering; counts the requests it hung up on.
struct HangUp {
    addr: String,
    requests: Arc<AtomicU64>,
    _registrations: Vec<Registration>,
}

impl HangUp {
    /// Listens on a free port and registers as instance `id` of each of
    /// `services`.
    async fn start(registry: &str, id: &str, services: &[&str]) -> HangUp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let requests = Arc::new(AtomicU64::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    // Dropped: the connection closes with no answer.
                });
            }
        });
        let registry = Registry::new(Client::connect([registry]).expect("client"));
        let mut registrations = Vec::new();
        for service in services {
            let r = registry.register(service, &addr).id(id).ttl(30);
            let r = timeout(WAIT, r).await.expect("registered in time");
            registrations.push(r.expect("register"));
        }
        HangUp {
            addr,
            requests,
            _registrations: registrations,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_is_a_502_and_idempotent_requests_go_elsewhere() {
    let roster = Roster::start();
    // A long lease: the killed instance stays registered for the test.
    let mut dead = Echo::start_with(&roster.endpoint, "dead", "d1", &["--ttl", "60"]).await;
    let _live = Echo::start(&roster.endpoint, "flaky", "live").await;
    let hang_up = HangUp::start(&roster.endpoint, "hang-up", &["flaky", "broken"]).await;
    let gw = Gateway::start(
        &roster.endpoint,
        &[
            "--route",
            "/dead=dead",
            "--route",
            "/flaky=flaky",
            "--route",
            "/broken=broken",
            "--balancer",
            "round_robin",
        ],
    )
    .await;
    gw.until_instances("/dead", &[("d1", false)]).await;
    gw.until_instances("/flaky", &[("hang-up", false), ("live", false)])
        .await;
    gw.until_instances("/broken", &[("hang-up", false)]).await;

    // Connection refused, and no other instance to try.
    let dead_addr = dead.addr.to_string();
    dead.proc.kill9();
    let answer = get(gw.addr, "/dead/x").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_gateway_json(&answer);
    assert_eq!(
        answer.json(),
        json!({"error": "upstream connection failed", "route": "/dead",
               "service": "dead", "instance": dead_addr})
    );

    // The connection breaks after the request went out. A GET is retried
    // on the other instance. Round robin makes sure the hang-up instance
    // gets some of these GETs (until three failures in a row eject it).
    for i in 0..20 {
        let answer = get(gw.addr, &format!("/flaky/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {i}: {answer:?}");
        assert_eq!(answer.instance(), "live");
    }
    let hung_up_on = hang_up.requests();
    assert!(hung_up_on >= 1, "the hang-up instance got no GET");

    // Not so a POST, which the instance may have acted on: 502.
    let answer = call(
        gw.addr,
        Request::post("/broken/order")
            .body(full("one order"))
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["instance"], hang_up.addr.as_str());
    assert_eq!(hang_up.requests(), hung_up_on + 1);
    // And a GET with nowhere else to go is a 502 too, after one attempt.
    let answer = get(gw.addr, "/broken/x").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["route"], "/broken");
    assert_eq!(hang_up.requests(), hung_up_on + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_is_a_504_and_its_own_5xx_passes_through() {
    let roster = Roster::start();
    let echo = Echo::start(&roster.endpoint, "web", "w1").await;
    let gw = Gateway::start(
        &roster.endpoint,
        &["--route", "/=web", "--timeout", "500ms"],
    )
    .await;
    gw.until_instances("/", &[("w1", false)]).await;

    let started = Instant::now();
    let answer = get(gw.addr, "/sleep/3000").await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_gateway_json(&answer);
    assert_eq!(
        answer.json(),
        json!({"error": "upstream timed out", "route": "/", "service": "web",
               "instance": echo.addr.to_string()})
    );
    // The route's timeout, not the instance's 3 s; 1.5 s of slack for
    // shared CI cores.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );

    // An instance's own 503 is its answer, passed on unchanged.
    let answer = get(gw.addr, "/status/503").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.instance(), "w1");
    assert_eq!(answer.json()["path"], "/status/503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_body_streams_through() {
    let roster = Roster::start();
    let _echo = Echo::start(&roster.endpoint, "web", "w1").await;
    let gw = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    gw.until_instances("/", &[("w1", false)]).await;
    #[cfg(target_os = "linux")]
    let peak_before = gw.proc.peak_rss();

    // Generated as it is sent: the test never holds the 64 MiB either.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let producer = produce_upload(tx);
    let body: Body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut conn = Conn::open(gw.addr).await;
    let started = Instant::now();
    let upload = async {
        let response = conn
            .send(Request::post("/upload").body(body).expect("request"))
            .await
            .expect("answer");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body");
        (status, body.to_bytes())
    };
    let (status, body) = timeout(Duration::from_secs(120), upload)
        .await
        .expect("upload answered in time");
    let took = started.elapsed();
    let sum = producer.await.expect("producer");
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["bytes"], (UPLOAD_CHUNKS * MIB) as u64);
    assert_eq!(answer["fnv1a64"], format!("{sum:016x}"));
    println!("{UPLOAD_CHUNKS} MiB through the gateway in {took:?}");

    // Had the gateway held the body, its peak memory would have grown by
    // 64 MiB; a streaming proxy holds a few buffers per connection.
    #[cfg(target_os = "linux")]
    {
        let grew = gw.proc.peak_rss().saturating_sub(peak_before);
        println!("gateway peak RSS grew by {} KiB", grew / 1024);
        assert!(
            grew < (16 * MIB) as u64,
            "gateway peak RSS grew by {} MiB",
            grew / MIB as u64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_arrives_as_it_is_produced() {
    let roster = Roster::start();
    let _echo = Echo::start(&roster.endpoint, "web", "w1").await;
    let gw = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    gw.until_instances("/", &[("w1", false)]).await;

    let mut conn = Conn::open(gw.addr).await;
    let started = Instant::now();
    let req = Request::get("/stream?chunks=5&delay_ms=300&size=1000")
        .body(empty())
        .expect("request");
    let response = timeout(WAIT, conn.send(req))
        .await
        .expect("headers in time")
        .expect("headers");
    assert_eq!(response.status(), StatusCode::OK);
    // When each chunk's letter was first seen, and how many bytes came.
    let (seen, total) = chunk_arrivals(response.into_body(), started).await;
    println!("chunks arrived at {seen:?}");
    assert_eq!(total, 5000);
    let letters: Vec<u8> = seen.iter().map(|&(l, _)| l).collect();
    assert_eq!(letters, b"abcde");
    // Produced 300 ms apart, over 1.2 s: a buffering proxy would deliver
    // all five together at the end. Generous slack either way for CI.
    assert!(
        seen[0].1 < Duration::from_millis(600),
        "the first chunk took {:?}",
        seen[0].1
    );
    let spread = seen[4].1 - seen[0].1;
    assert!(
        spread >= Duration::from_millis(900),
        "chunks {spread:?} apart"
    );
}
