//! roster-gateway: an HTTP reverse proxy that routes to the instances of
//! services discovered in a Roster or etcd registry.
//!
//! Requests are matched to routes by host and path prefix; each route names
//! a service, whose live instance list comes from roster-client discovery,
//! and a balancer (p2c by default) picks the instance for each request.
//! The proxy is built on hyper and hyper-util: bodies stream both ways,
//! upstream connections are pooled and kept alive, hop-by-hop headers are
//! dropped and `X-Forwarded-*` / `Forwarded` added, WebSocket upgrades pass
//! through. Failing instances are ejected for a cool-down (passive health)
//! and optionally probed (active health); an idempotent request whose call
//! failed before an answer (no connection, or a broken one) is retried on
//! another instance. When the gateway cannot serve, it says why in a short
//! JSON answer (404, 502, 503, 504). The route table reloads from its file
//! without touching connections, and an admin port serves Prometheus
//! metrics.
//!
//! ```no_run
//! use roster_gateway::{Config, Gateway};
//!
//! # async fn run() -> roster_gateway::Result<()> {
//! let config = Config::parse(r#"
//!     listen = "127.0.0.1:8080"
//!     [registry]
//!     endpoints = ["127.0.0.1:2379"]
//!     [[route]]
//!     prefix = "/api"
//!     service = "api.http"
//!     strip_prefix = true
//! "#)?;
//! let gateway = Gateway::bind(config).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.run(async { tokio::signal::ctrl_c().await.unwrap() }).await;
//! # Ok(()) }
//! ```
//!
//! The layers, each using only those below it:
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the TOML configuration, defaults and validation |
//! | [`routes`] | route matching (host, longest prefix on segment boundaries), prefix stripping |
//! | [`health`] | passive ejection and active-check state per instance |
//! | [`upstream`] | one service's discovered instances and their health |
//! | [`checks`] | active HTTP health checks |
//! | [`table`] | the immutable route table a reload swaps |
//! | [`headers`], [`body`], [`reply`] | header rewriting, streamed bodies with access logging, the gateway's own answers |
//! | [`proxy`], [`upgrade`] | the request path, retries, WebSocket pass-through |
//! | [`metrics`], [`admin`] | Prometheus metrics, the admin listener |
//! | [`server`], [`reload`] | listeners, graceful shutdown, config-file reloads |
//!
//! Access logs are `tracing` events at INFO with target
//! `roster_gateway::access`, one per request, written when its response
//! body ends; silence them with `RUST_LOG=info,roster_gateway::access=off`.

pub mod admin;
pub mod body;
pub mod checks;
pub mod config;
pub mod error;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod reply;
pub mod routes;
pub mod server;
pub mod table;
pub mod upgrade;
pub mod upstream;

pub use config::{Config, RouteConfig};
pub use error::{Error, Result};
pub use server::{Gateway, Handle};
pub use upstream::{Source, StaticSource};
