//! The gateway over time: reloads (by handle and by file) that keep
//! connections, active health checks, metrics, graceful shutdown.

use std::time::{Duration, Instant};

use crate::support::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use roster_gateway::{Config, StaticSource};

/// Polls `check` every 50 ms for up to `limit`.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn config(routes: &str) -> Config {
    Config::parse(&format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{routes}"
    ))
    .unwrap()
}

#[tokio::test]
async fn reload_swaps_routes_on_a_live_keep_alive_connection() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    source.set("api", vec![b.instance()]);
    let gw = RunningGateway::start("[[route]]\nservice = \"web\"\n", &source).await;

    // One client connection, kept open across the reload.
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ask = async |path: &str| {
        let req = Request::get(path)
            .header("host", "gw")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["backend"].clone()
    };
    assert_eq!(ask("/x").await, "a");

    let bad = gw
        .handle
        .reload(Config {
            routes: vec![roster_gateway::RouteConfig::new("nope", "api")],
            ..gw.handle.config()
        })
        .await;
    assert!(bad.unwrap_err().to_string().contains("prefix"));
    assert_eq!(ask("/x").await, "a", "a failed reload changes nothing");

    gw.handle
        .reload(config(
            "[[route]]\nservice = \"web\"\n[[route]]\nprefix = \"/x\"\nservice = \"api\"\n",
        ))
        .await
        .unwrap();
    assert_eq!(ask("/x").await, "b");
    assert_eq!(ask("/y").await, "a");
}

#[tokio::test]
async fn file_changes_reload_and_bad_files_are_ignored() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    source.set("api", vec![b.instance()]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let head = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    std::fs::write(&path, format!("{head}[[route]]\nservice = \"web\"\n")).unwrap();
    let gw = RunningGateway::start_with(
        Config::from_file(&path).unwrap(),
        &source,
        Some(path.clone()),
    )
    .await;
    let url = gw.url("/");
    let backend = || async { get(&url).await.json()["backend"].clone() };
    assert_eq!(backend().await, "a");

    std::fs::write(&path, format!("{head}[[route]]\nservice = \"api\"\n")).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { backend().await == "b" }).await);

    // A broken file keeps the routes in force.
    std::fs::write(
        &path,
        format!("{head}[[route]]\nservice = \"web\"\nbalancer = \"nope\"\n"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(backend().await, "b");
    std::fs::write(&path, format!("{head}[[route]]\nservice = \"web\"\n")).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { backend().await == "a" }).await);
}

#[tokio::test]
async fn active_checks_take_sick_instances_out_and_bring_them_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let source = StaticSource::new();
    source.set("web", vec![a.instance(), b.instance()]);
    let gw = RunningGateway::start(
        r#"
        [[route]]
        service = "web"
        balancer = "round_robin"
        [route.health_check]
        path = "/healthz"
        interval = "100ms"
        timeout = "1s"
        unhealthy_threshold = 2
        "#,
        &source,
    )
    .await;
    let routes_url = format!("http://{}/routes", gw.admin);
    let out_of = |id: &'static str| {
        let url = routes_url.clone();
        async move {
            let routes = get(&url).await.json();
            let list = routes[0]["instances"].as_array().unwrap().clone();
            list.iter().any(|i| i["id"] == id && i["out"] == true)
        }
    };
    a.set_healthy(false);
    assert!(eventually(Duration::from_secs(5), || out_of("a")).await);
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/")).await.json()["backend"], "b");
    }
    a.set_healthy(true);
    assert!(eventually(Duration::from_secs(5), || async { !out_of("a").await }).await);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(get(&gw.url("/")).await.json()["backend"].to_string());
    }
    assert_eq!(seen.len(), 2, "both instances serve again: {seen:?}");
}

#[tokio::test]
async fn admin_port_serves_metrics_and_health() {
    let a = Backend::start("a").await;
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    let gw =
        RunningGateway::start("[[route]]\nprefix = \"/web\"\nservice = \"web\"\n", &source).await;
    for _ in 0..3 {
        get(&gw.url("/web/x")).await;
    }
    get(&gw.url("/nowhere")).await;
    let admin = |p: &str| format!("http://{}{p}", gw.admin);
    let health = get(&admin("/healthz")).await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    let m = get(&admin("/metrics")).await;
    assert!(m.headers["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    for want in [
        "roster_gateway_requests_total{route=\"/web\",code=\"2xx\"} 3",
        "roster_gateway_requests_total{route=\"none\",code=\"4xx\"} 1",
        "roster_gateway_request_duration_seconds_count{route=\"/web\"} 3",
        "roster_gateway_response_bytes_total{route=\"/web\"}",
        "roster_gateway_requests_in_flight 0",
    ] {
        assert!(m.body.contains(want), "{want} missing from\n{}", m.body);
    }
    assert_eq!(get(&admin("/nope")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let a = Backend::start("a").await;
    let source = StaticSource::new();
    source.set("web", vec![a.instance()]);
    let mut gw = RunningGateway::start("[[route]]\nservice = \"web\"\n", &source).await;
    let url = gw.url("/slow");
    let slow = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.shutdown();
    let ans = slow.await.unwrap();
    assert_eq!((ans.status, ans.body.as_str()), (StatusCode::OK, "slow"));
    tokio::time::timeout(Duration::from_secs(5), &mut gw.task)
        .await
        .expect("run returns once drained")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "no longer accepting"
    );
}
