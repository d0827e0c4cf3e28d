//! The gateway on a real registry: instances registered in etcd with
//! roster-client are routed to, and leave the routes when deregistered.
//! (The same against Roster itself runs in `crates/cli/tests`, where the
//! `roster` binary is at hand; etcd is what this crate can reach.)

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use roster_client::{Client, Registry};
use roster_gateway::{Config, Gateway};
use support::*;

/// A single-member etcd on loopback, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    fn start_on(port: u16) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut child = Command::new("etcd")
            .args(["--name", "gw", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("gw={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcd is installed (scripts/test.sh installs Debian's etcd-server)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to serve client requests") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("etcd ready");
        Etcd {
            child,
            endpoint: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(endpoint: &str) -> Config {
    Config::parse(&format!(
        r#"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [registry]
        endpoints = ["{endpoint}"]
        [[route]]
        prefix = "/web"
        service = "web"
        strip_prefix = true
        "#
    ))
    .unwrap()
}

async fn until(limit: Duration, url: &str, want: StatusCode) -> Answer {
    let deadline = Instant::now() + limit;
    loop {
        let a = get(url).await;
        if a.status == want || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_registrations() {
    let etcd = Etcd::start_on(free_port());
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let registry = Registry::new(Client::connect([&etcd.endpoint]).unwrap());
    let reg_a = registry
        .register("web", &a.addr.to_string())
        .id("a")
        .ttl(5)
        .await
        .unwrap();

    let gateway = Gateway::bind(config(&etcd.endpoint)).await.unwrap();
    let url = format!("http://{}/web/hi", gateway.local_addr());
    tokio::spawn(gateway.run(std::future::pending()));
    let seen = get(&url).await.json();
    assert_eq!(
        (seen["backend"].as_str(), seen["uri"].as_str()),
        (Some("a"), Some("/hi"))
    );

    let reg_b = registry
        .register("web", &b.addr.to_string())
        .id("b")
        .ttl(5)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 && Instant::now() < deadline {
        seen.insert(get(&url).await.json()["backend"].to_string());
    }
    assert_eq!(seen.len(), 2, "both instances get traffic: {seen:?}");

    reg_a.deregister().await.unwrap();
    reg_b.deregister().await.unwrap();
    let a = until(
        Duration::from_secs(5),
        &url,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.json()["service"], "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_registry_is_down_and_catches_up() {
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let gateway = Gateway::bind(config(&endpoint)).await.unwrap();
    let url = format!("http://{}/web/", gateway.local_addr());
    tokio::spawn(gateway.run(std::future::pending()));
    let a = get(&url).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);

    let etcd = Etcd::start_on(port);
    let backend = Backend::start("late").await;
    let registry = Registry::new(Client::connect([&etcd.endpoint]).unwrap());
    let _reg = registry
        .register("web", &backend.addr.to_string())
        .id("late")
        .await
        .unwrap();
    let a = until(Duration::from_secs(15), &url, StatusCode::OK).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["backend"], "late");
}
