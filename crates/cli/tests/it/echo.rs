//! `roster echo`, the gateway's test backend, as a real process against a
//! real `roster serve`: it answers over HTTP/1.1 keep-alive, registers
//! itself, streams in both directions without buffering, passes upgrades,
//! flips its health on request, leaves the registry before it stops on
//! SIGTERM, and stays registered until its lease expires after SIGKILL.

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use crate::procs::{roster, Echo};
use crate::roster::Roster;
use crate::wire::{
    assert_echoes_raw, chunk_arrivals, produce_upload, read_head, MIB, UPLOAD_CHUNKS,
};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roster_client::{Client, Instance, Registry};
use roster_testkit::{until, WAIT};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An HTTP/1.1 connection to `addr`.
async fn connect<B>(addr: SocketAddr) -> SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Sends a bodiless request on `conn`; returns the status and the body.
async fn get(
    conn: &mut SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "echo.test")
        .header("x-forwarded-for", "192.0.2.1")
        .body(Empty::new())
        .expect("request");
    // The connection takes the next request once the last answer is read.
    let response = timeout(WAIT, async {
        conn.ready().await?;
        conn.send_request(req).await
    })
    .await
    .expect("answer in time")
    .expect("answer");
    let status = response.status();
    let body = timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

fn registry(roster: &Roster) -> Registry {
    Registry::new(Client::connect([roster.endpoint.as_str()]).expect("client"))
}

fn has(instances: &[Instance], id: &str) -> bool {
    instances.iter().any(|i| i.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_on_keep_alive_and_registers() {
    let roster = Roster::start();
    let echo = Echo::run(
        "echo",
        &[
            "--service",
            "web",
            "--id",
            "e1",
            "--weight",
            "3",
            "--endpoints",
            &roster.endpoint,
        ],
    );

    let found = registry(&roster).discover("web").await.expect("discover");
    let instances = found.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].id, "e1");
    assert_eq!(instances[0].addr, echo.addr.to_string());
    assert_eq!(instances[0].weight, 3);

    // All of these travel on one connection: keep-alive holds.
    let mut conn = connect(echo.addr).await;
    let (status, body) = get(&mut conn, "GET", "/api/users?page=2").await;
    assert_eq!(status, StatusCode::OK);
    let answer = json(&body);
    assert_eq!(answer["instance"], "e1");
    assert_eq!(answer["method"], "GET");
    assert_eq!(answer["path"], "/api/users?page=2");
    assert_eq!(answer["host"], "echo.test");
    assert_eq!(answer["headers"]["x-forwarded-for"], "192.0.2.1");
    assert_eq!(answer["bytes"], 0);

    let (status, body) = get(&mut conn, "DELETE", "/status/503").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["method"], "DELETE");
    let (status, body) = get(&mut conn, "GET", "/status/204").await;
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let (status, _) = get(&mut conn, "GET", "/status/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let started = Instant::now();
    let (status, body) = get(&mut conn, "GET", "/sleep/300").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(json(&body)["path"], "/sleep/300");

    assert_eq!(get(&mut conn, "GET", "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(&mut conn, "POST", "/admin/unhealthy").await.0,
        StatusCode::OK
    );
    let (status, body) = get(&mut conn, "GET", "/healthz").await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"unhealthy\n"[..])
    );
    get(&mut conn, "POST", "/admin/healthy").await;
    let (status, body) = get(&mut conn, "GET", "/healthz").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_chunks_as_they_are_produced() {
    let echo = Echo::run("echo", &["--no-register"]);
    let mut conn = connect(echo.addr).await;
    let req = Request::get("/stream?chunks=5&delay_ms=200&size=1000")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response: Response<Incoming> = timeout(WAIT, conn.send_request(req))
        .await
        .expect("headers in time")
        .expect("headers");
    assert_eq!(response.status(), StatusCode::OK);
    // When each chunk's letter was first seen, and how many bytes came.
    let (seen, total) = chunk_arrivals(response.into_body(), Instant::now()).await;
    assert_eq!(total, 5000);
    let letters: Vec<u8> = seen.iter().map(|&(l, _)| l).collect();
    assert_eq!(letters, b"abcde");
    // Produced 200 ms apart: had the answer been buffered, all five would
    // have arrived together once the last was produced.
    let spread = seen[4].1 - seen[0].1;
    assert!(
        spread >= Duration::from_millis(600),
        "chunks {spread:?} apart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_a_large_upload_as_a_stream() {
    let echo = Echo::run("echo", &["--no-register"]);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    // Generated as it is sent: the test never holds the 64 MiB either.
    let producer = produce_upload(tx);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut conn = connect(echo.addr).await;
    let req = Request::post("/upload").body(body).expect("request");
    let upload = async {
        let response = conn.send_request(req).await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    };
    let body = timeout(Duration::from_secs(120), upload)
        .await
        .expect("upload answered in time");
    let sum = producer.await.expect("producer");
    let answer = json(&body);
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["bytes"], (UPLOAD_CHUNKS * MIB) as u64);
    assert_eq!(answer["fnv1a64"], format!("{sum:016x}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_echoes_raw_bytes() {
    let echo = Echo::run("echo", &["--no-register"]);
    let mut stream = TcpStream::connect(echo.addr).await.expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: test-echo\r\n\r\n")
        .await
        .expect("write request");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: test-echo"), "{head}");

    let messages: [&[u8]; 3] = [
        &b"hello"[..],
        &[0u8, 255, 13, 10, 0][..],
        &[b'x'; 100_000][..],
    ];
    assert_echoes_raw(&mut stream, &messages).await;

    // Without the upgrade headers, /ws says what it wants.
    let mut conn = connect(echo.addr).await;
    assert_eq!(
        get(&mut conn, "GET", "/ws").await.0,
        StatusCode::UPGRADE_REQUIRED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_first_then_finishes_requests_in_flight() {
    let roster = Roster::start();
    let mut echo = Echo::run(
        "echo",
        &[
            "--service",
            "web",
            "--id",
            "e1",
            "--endpoints",
            &roster.endpoint,
        ],
    );
    let found = registry(&roster).discover("web").await.expect("discover");
    until("e1 registered", || async {
        (has(&found.instances(), "e1")).then_some(())
    })
    .await;

    let mut conn = connect(echo.addr).await;
    let in_flight = tokio::spawn(async move { get(&mut conn, "GET", "/sleep/1500").await });
    // Let the request reach the server before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo.proc.terminate();
    until("e1 deregistered", || async {
        (!has(&found.instances(), "e1")).then_some(())
    })
    .await;
    assert!(
        echo.proc.running(),
        "exited before the request in flight was answered"
    );
    let (status, body) = timeout(WAIT, in_flight)
        .await
        .expect("answer in time")
        .expect("request task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["instance"], "e1");
    let status = echo.proc.exited().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_record_until_the_lease_expires() {
    let roster = Roster::start();
    let mut echo = Echo::run(
        "echo",
        &[
            "--service",
            "web",
            "--id",
            "e1",
            "--ttl",
            "3",
            "--endpoints",
            &roster.endpoint,
        ],
    );
    let found = registry(&roster).discover("web").await.expect("discover");
    until("e1 registered", || async {
        (has(&found.instances(), "e1")).then_some(())
    })
    .await;

    echo.proc.kill9();
    let killed = Instant::now();
    // The lease is renewed every TTL/3, so at least 2 s of it remain.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        has(&found.instances(), "e1"),
        "removed right after the kill"
    );
    until("e1 expired", || async {
        (!has(&found.instances(), "e1")).then_some(())
    })
    .await;
    let gone = killed.elapsed();
    assert!(gone >= Duration::from_secs(1), "removed after {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors_are_reported() {
    // Nothing listens there.
    let nowhere = format!("127.0.0.1:{}", roster_testkit::free_port());
    let out = tokio::task::spawn_blocking(move || {
        roster(&["echo", "--service", "web", "--listen", "127.0.0.1:0"])
            .args(["--endpoints", &nowhere])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run roster echo")
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().filter(|l| l.starts_with("roster: error: "));
    assert_eq!(error.count(), 1, "{stderr}");
    assert!(
        stderr.contains("roster: error: registering web at"),
        "{stderr}"
    );
    assert!(!stderr.contains("serving"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_accepting_after_deregistering() {
    let roster = Roster::start();
    let mut echo = Echo::run(
        "echo",
        &[
            "--service",
            "web",
            "--id",
            "e1",
            "--drain-delay-ms",
            "1500",
            "--endpoints",
            &roster.endpoint,
        ],
    );
    let found = registry(&roster).discover("web").await.expect("discover");
    until("e1 registered", || async {
        (has(&found.instances(), "e1")).then_some(())
    })
    .await;
    let signalled = Instant::now();
    echo.proc.terminate();
    until("e1 deregistered", || async {
        (!has(&found.instances(), "e1")).then_some(())
    })
    .await;
    // A router that has not yet seen the removal still gets an answer.
    let mut conn = connect(echo.addr).await;
    let (status, body) = get(&mut conn, "GET", "/late").await;
    assert_eq!(
        (status, &json(&body)["instance"]),
        (StatusCode::OK, &"e1".into())
    );
    drop(conn);
    assert!(echo.proc.exited().await.success());
    assert!(signalled.elapsed() >= Duration::from_millis(1500));
}
