//! The request path end to end, in-process: real hyper backends on
//! 127.0.0.1:0 behind a gateway fed by a static instance source.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use roster_client::Instance;
use roster_gateway::StaticSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn routes_by_host_and_prefix_and_rewrites_headers() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    source.set("api", vec![b.instance()]);
    let gw = RunningGateway::start(
        r#"
        [[route]]
        service = "web"
        [[route]]
        prefix = "/api"
        service = "api"
        strip_prefix = true
        [[route]]
        name = "admin"
        host = "admin.example"
        service = "api"
        preserve_host = false
        "#,
        &source,
    )
    .await;

    let req = Request::get(gw.url("/hello?x=1"))
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("x-forwarded-for", "203.0.113.9")
        .body(empty())
        .unwrap();
    let seen = send(req).await.json();
    assert_eq!(seen["backend"], "a");
    assert_eq!(seen["uri"], "/hello?x=1");
    let h = &seen["headers"];
    assert_eq!(h["host"], gw.addr.to_string(), "Host is kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let fwd = format!("for=127.0.0.1;host=\"{}\";proto=http", gw.addr);
    assert_eq!(h["forwarded"], fwd.as_str());
    assert!(
        h.get("x-secret").is_none(),
        "a header named in Connection leaked: {h}"
    );

    let seen = get(&gw.url("/api/users?id=7")).await.json();
    assert_eq!(
        (seen["backend"].as_str(), seen["uri"].as_str()),
        (Some("b"), Some("/users?id=7"))
    );
    let seen = get(&gw.url("/api")).await.json();
    assert_eq!(seen["uri"], "/");
    // Segment boundary: /apix belongs to the root route.
    let seen = get(&gw.url("/apix")).await.json();
    assert_eq!(
        (seen["backend"].as_str(), seen["uri"].as_str()),
        (Some("a"), Some("/apix"))
    );

    let req = Request::get(gw.url("/anything"))
        .header("host", "admin.example:8080")
        .body(empty())
        .unwrap();
    let seen = send(req).await.json();
    assert_eq!(seen["backend"], "b");
    assert_eq!(
        seen["headers"]["host"],
        b.addr.to_string(),
        "Host is rewritten"
    );
}

#[tokio::test]
async fn answers_404_503_with_json_naming_what_is_missing() {
    let source = StaticSource::new();
    let gw =
        RunningGateway::start("[[route]]\nprefix = \"/api\"\nservice = \"api\"\n", &source).await;
    let a = get(&gw.url("/other")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json(),
        serde_json::json!({"error": "no route", "path": "/other"})
    );
    let a = get(&gw.url("/api/x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        a.json(),
        serde_json::json!({"error": "no instance available", "route": "/api", "service": "api"})
    );
}

#[tokio::test]
async fn failed_connects_are_retried_elsewhere_and_the_dead_instance_ejected() {
    let live = Backend::start("live").await;
    let dead = Instance::new("dead", dead_addr().await.to_string());
    let source = StaticSource::new();
    source.set("web", vec![dead.clone(), live.instance()]);
    source.set("gone", vec![dead.clone()]);
    let gw = RunningGateway::start(
        r#"
        [ejection]
        consecutive_failures = 2
        cool_down = "1m"
        [[route]]
        service = "web"
        balancer = "round_robin"
        [[route]]
        prefix = "/gone"
        service = "gone"
        "#,
        &source,
    )
    .await;
    for i in 0..10 {
        let a = get(&gw.url(&format!("/n{i}"))).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {}", a.body);
        assert_eq!(a.json()["backend"], "live");
    }
    let routes = get(&format!("http://{}/routes", gw.admin)).await.json();
    let web = &routes[0]["instances"];
    assert_eq!(web[0]["id"], "dead");
    assert_eq!(web[0]["out"], true, "{routes}");
    assert_eq!(web[1]["out"], false, "{routes}");

    // A POST with a body is not retried: 502 naming the instance.
    let a = send(
        Request::post(gw.url("/gone"))
            .body(body("payload"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["instance"], dead.addr.as_str());
    assert_eq!(a.json()["error"], "upstream connection failed");
    // Neither is a GET once every instance has been tried.
    let a = get(&gw.url("/gone")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);

    let metrics = get(&format!("http://{}/metrics", gw.admin)).await.body;
    let want = format!(
        "roster_gateway_upstream_errors_total{{route=\"/\",instance=\"{}\",kind=\"connect\"}} 2",
        dead.addr
    );
    assert!(metrics.contains(&want), "{want} not in\n{metrics}");
    assert!(
        metrics.contains("roster_gateway_ejections_total{service=\"web\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("roster_gateway_requests_total{route=\"/gone\",code=\"5xx\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_instances_get_504_and_5xx_pass_through() {
    let a = Backend::start("a").await;
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    let gw = RunningGateway::start(
        "[[route]]\nservice = \"web\"\ntimeout = \"300ms\"\n",
        &source,
    )
    .await;
    let started = Instant::now();
    let ans = get(&gw.url("/slow")).await;
    assert_eq!(ans.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(ans.json()["error"], "upstream timed out");
    assert!(started.elapsed() < Duration::from_millis(1500));

    let ans = get(&gw.url("/status/503")).await;
    assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ans.body, "a says 503",
        "the instance's own answer, unchanged"
    );
    let metrics = get(&format!("http://{}/metrics", gw.admin)).await.body;
    assert!(metrics.contains("kind=\"status_5xx\"} 1"), "{metrics}");
    assert!(metrics.contains("kind=\"timeout\"} 1"), "{metrics}");
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let a = Backend::start("a").await;
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    let gw = RunningGateway::start("[[route]]\nservice = \"web\"\n", &source).await;

    // Each chunk sent comes back through the gateway before the next is sent.
    let (mut tx, req_body) = channel_body();
    let resp = client()
        .request(Request::post(gw.url("/echo")).body(req_body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp_body = resp.into_body();
    for chunk in ["ping 1", "ping 2", "ping 3"] {
        tx.send_data(Bytes::from(chunk)).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), resp_body.frame())
            .await
            .expect("the chunk came back before the body ended")
            .unwrap()
            .unwrap();
        assert_eq!(data(frame), chunk);
    }
    drop(tx);
    assert!(resp_body.frame().await.is_none());

    // A response's first chunk arrives while the instance holds the rest.
    let resp = client()
        .request(Request::get(gw.url("/held")).body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    assert_eq!(data(body.frame().await.unwrap().unwrap()), "first\n");
    a.release.notify_one();
    assert_eq!(data(body.frame().await.unwrap().unwrap()), "second\n");

    // A large body arrives whole.
    let big = "x".repeat(4 << 20);
    let ans = send(
        Request::put(gw.url("/echo"))
            .body(crate::support::body(&big))
            .unwrap(),
    )
    .await;
    assert_eq!(ans.body.len(), big.len());
}

#[tokio::test]
async fn upgrades_pass_through() {
    let a = Backend::start("a").await;
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    let gw = RunningGateway::start("[[route]]\nservice = \"web\"\n", &source).await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"hello"[..], b"over the spliced connection"] {
        conn.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}
