//! The gateway on a real registry: instances registered with roster-client
//! are routed to, and leave the routes when deregistered. Each scenario
//! runs against a Roster node in-process and against the real etcd.

use std::time::{Duration, Instant};

use http::StatusCode;
use roster_client::{Client, Registry};
use roster_gateway::{Config, Gateway};
use roster_testkit::{Etcd, Server, TestNode};

use crate::support::*;

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
async fn routes_follow_registrations_on_roster() {
    routes_follow_registrations(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_registrations_on_etcd() {
    routes_follow_registrations(Server::Etcd(Etcd::start())).await;
}

async fn routes_follow_registrations(registry: Server) {
    let endpoint = registry.endpoint();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let registry = Registry::new(Client::connect([endpoint]).unwrap());
    let reg_a = registry
        .register("web", &a.addr.to_string())
        .id("a")
        .ttl(5)
        .await
        .unwrap();

    let gateway = Gateway::bind(config(endpoint)).await.unwrap();
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
async fn starts_while_the_registry_is_down_and_catches_up_on_roster() {
    starts_while_the_registry_is_down(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_registry_is_down_and_catches_up_on_etcd() {
    starts_while_the_registry_is_down(Server::Etcd(Etcd::start())).await;
}

async fn starts_while_the_registry_is_down(mut server: Server) {
    let endpoint = server.endpoint().to_string();
    server.kill();
    let gateway = Gateway::bind(config(&endpoint)).await.unwrap();
    let url = format!("http://{}/web/", gateway.local_addr());
    tokio::spawn(gateway.run(std::future::pending()));
    let a = get(&url).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);

    server.restart();
    let backend = Backend::start("late").await;
    let registry = Registry::new(Client::connect([&endpoint]).unwrap());
    let _reg = registry
        .register("web", &backend.addr.to_string())
        .id("late")
        .await
        .unwrap();
    let a = until(Duration::from_secs(15), &url, StatusCode::OK).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["backend"], "late");
}
