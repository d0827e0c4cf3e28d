//! The gateway process: listeners, connections, reloads, shutdown.
//!
//! [`Gateway::bind`] binds the traffic and admin addresses first (so a
//! taken port fails fast, and port 0 works: ask [`Gateway::local_addr`]),
//! then builds the first route table, waiting a bounded time for each
//! service's first discovery. [`Gateway::run`] accepts connections until
//! the injected shutdown future resolves. Each connection is served by
//! hyper-util's auto builder — HTTP/1.1 with keep-alive and upgrades, or
//! HTTP/2 with prior knowledge — in a task of its own, watched by a
//! graceful-shutdown guard.
//!
//! Shutdown: stop accepting, tell every connection to finish (idle
//! keep-alive connections close at once, HTTP/2 sends GOAWAY, requests in
//! flight run to completion), and wait up to `shutdown_grace` for them;
//! whatever is left is dropped when `run` returns.
//!
//! Reloads ([`Handle::reload`], or [`Gateway::watch_config`] polling a
//! file) build a new table and swap it in; see [`crate::table`] for why that
//! leaves connections alone. Settings bound at start — the addresses, the
//! registry, the upstream pool — only change with a restart; the file
//! watcher says so in the log when an edit changes them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::{Mutex, RwLock};
use roster_client::{Client, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::{self, HttpClient};
use crate::table::{Table, Upstreams};
use crate::upstream::Source;
use crate::{admin, reload};

/// What every connection, the admin server and the reloader share.
pub struct Shared {
    table: RwLock<Arc<Table>>,
    upstreams: tokio::sync::Mutex<Upstreams>,
    config: Mutex<Config>,
    /// The pooled client to instances.
    pub client: HttpClient,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The series of requests that match no route.
    pub unmatched: RouteMetrics,
}

impl Shared {
    /// The current route table.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().clone()
    }
}

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    listener: TcpListener,
    admin: TcpListener,
    shared: Arc<Shared>,
    watch: Option<PathBuf>,
}

impl Gateway {
    /// Binds the configured addresses and builds the route table, with
    /// services discovered in the configured registry.
    pub async fn bind(config: Config) -> Result<Gateway> {
        let client = Client::connect(&config.registry.endpoints)?;
        let registry = Registry::new(client).with_prefix(config.registry.prefix.clone());
        Gateway::bind_with(config, Source::Registry(registry)).await
    }

    /// Like [`Gateway::bind`], with instances from `source` (a registry
    /// of the caller's, or a [`crate::StaticSource`]).
    pub async fn bind_with(mut config: Config, source: Source) -> Result<Gateway> {
        config.validate()?;
        let listener = bind(&config.listen).await?;
        let admin = bind(&config.admin_listen).await?;
        let client = proxy::http_client(&config.upstream);
        let metrics = Arc::new(Metrics::new());
        let mut upstreams = Upstreams::new(source, client.clone());
        let table = upstreams.build(&config, &metrics).await;
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(table)),
            upstreams: tokio::sync::Mutex::new(upstreams),
            config: Mutex::new(config),
            client,
            unmatched: metrics.route("none"),
            metrics,
        });
        Ok(Gateway {
            listener,
            admin,
            shared,
            watch: None,
        })
    }

    /// Reloads the routes whenever the file at `path` changes (checked
    /// every second while running).
    pub fn watch_config(mut self, path: impl Into<PathBuf>) -> Gateway {
        self.watch = Some(path.into());
        self
    }

    /// The address traffic is accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of `/metrics` and `/healthz`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// A handle for reloading the routes while the gateway runs.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            listener,
            admin,
            shared,
            watch: watch_path,
        } = self;
        let (stop_admin, stopped) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin, shared.clone(), stopped));
        let reloader = watch_path.map(|path| {
            let handle = Handle {
                shared: shared.clone(),
            };
            tokio::spawn(reload::watch(path, handle))
        });
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually out of file descriptors: back off a little.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (shared, builder, watcher) = (shared.clone(), builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(proxy::handle(shared, peer, req).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if let Some(task) = reloader {
            task.abort();
        }
        let _ = stop_admin.send(true);
        let grace = shared.config.lock().shutdown_grace;
        tracing::info!(
            connections = graceful.count(),
            "shutting down; draining connections"
        );
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still busy after the grace period; closing them"
            );
        }
        let _ = admin_task.await;
    }
}

/// Reloads a running gateway's routes.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Validates `config` and swaps in its routes, ejection policy and
    /// shutdown grace; the settings bound at start (addresses, registry,
    /// upstream pool) are ignored. On error nothing changes.
    pub async fn reload(&self, mut config: Config) -> Result<()> {
        config.validate()?;
        let mut upstreams = self.shared.upstreams.lock().await;
        let table = upstreams.build(&config, &self.shared.metrics).await;
        *self.shared.table.write() = Arc::new(table);
        let mut current = self.shared.config.lock();
        current.routes = config.routes;
        current.ejection = config.ejection;
        current.shutdown_grace = config.shutdown_grace;
        tracing::info!(routes = current.routes.len(), "routes reloaded");
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.shared.config.lock().clone()
    }
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_string(),
        source,
    })
}
