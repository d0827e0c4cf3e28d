//! The live route table, and the upstreams it is built on.
//!
//! A [`Table`] is immutable: the routes of one configuration, each with its
//! balancer and a reference to its service's [`Upstream`]. The gateway
//! holds the current table as an `Arc` behind a lock taken only to clone
//! or swap the pointer; a request clones it once and keeps using that table
//! even if a reload swaps in another meanwhile. Nothing about connections
//! lives here, so a swap cannot disturb a client's keep-alive connection,
//! a pooled upstream connection or a request in flight.
//!
//! [`Upstreams`] builds tables. It keeps the upstreams across reloads, keyed
//! by service: a reload that keeps a service keeps its discovery and its
//! instances' health; a new service starts discovery (the build waits a
//! bounded time for its first load, so a freshly added route does not
//! answer 503 for want of a moment's patience); a service no route uses any
//! more is dropped once the last table using it is gone. Active health
//! checks belong to a configuration, so a build stops the previous ones and
//! starts its own.
//!
//! Balancers are built fresh with each table: their learned state (p2c's
//! latency averages) is cheap to relearn, and a reload may change them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use roster_client::balance::{by_name, Balancer};

use crate::checks;
use crate::config::{Config, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::HttpClient;
use crate::routes::Matcher;
use crate::upstream::{Source, Upstream};

/// How long a build waits for a new service's first load.
const FIRST_LOAD: Duration = Duration::from_secs(5);

/// One route of a table.
pub struct Route {
    /// The route's name (set by validation).
    pub name: Arc<str>,
    /// Its settings.
    pub config: RouteConfig,
    /// Its service's instances.
    pub upstream: Arc<Upstream>,
    /// Chooses an instance per request.
    pub balancer: Box<dyn Balancer>,
    /// Whether the balancer wants a request key (consistent hashing).
    pub keyed: bool,
    /// Its metric series.
    pub metrics: RouteMetrics,
}

/// The routes of one configuration.
#[derive(Default)]
pub struct Table {
    matcher: Matcher,
    routes: Vec<Arc<Route>>,
}

impl Table {
    /// The route for a request to `host` and `path`, if any.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.matcher.find(host, path).map(|i| &self.routes[i])
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// Builds tables and keeps their upstreams (see the module docs).
pub struct Upstreams {
    source: Source,
    client: HttpClient,
    services: HashMap<String, Arc<Upstream>>,
    checks: Vec<tokio::task::JoinHandle<()>>,
}

impl Upstreams {
    /// No upstreams yet; services will be found in `source`, and active
    /// checks sent with `client`.
    pub fn new(source: Source, client: HttpClient) -> Upstreams {
        Upstreams {
            source,
            client,
            services: HashMap::new(),
            checks: Vec::new(),
        }
    }

    /// The table for `config` (which must be validated), its routes
    /// counted in `metrics`.
    pub async fn build(&mut self, config: &Config, metrics: &Metrics) -> Table {
        let mut services = HashMap::new();
        let mut fresh = Vec::new();
        for r in &config.routes {
            if services.contains_key(&r.service) {
                continue;
            }
            let up = match self.services.remove(&r.service) {
                Some(up) => {
                    up.set_policy(config.ejection.clone());
                    up
                }
                None => {
                    let up = Upstream::start(&self.source, &r.service, config.ejection.clone());
                    fresh.push(up.clone());
                    up
                }
            };
            services.insert(r.service.clone(), up);
        }
        // What is left in self.services is no longer routed to.
        self.services = services;
        let deadline = tokio::time::Instant::now() + FIRST_LOAD;
        for up in fresh {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !up.wait_loaded(left).await {
                tracing::warn!(service = %up.service(), "service not discovered yet; its routes answer 503 until it is");
            }
        }
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(Route {
                    name: r.name().into(),
                    config: r.clone(),
                    upstream: self.services[&r.service].clone(),
                    // Validation has checked the name.
                    balancer: by_name(&r.balancer)
                        .unwrap_or_else(|| by_name("p2c").expect("p2c is a balancer")),
                    keyed: r.balancer == "consistent_hash",
                    metrics: metrics.route(&r.name()),
                })
            })
            .collect();
        self.restart_checks(&routes);
        Table {
            matcher: Matcher::new(
                config
                    .routes
                    .iter()
                    .map(|r| (r.host.clone(), r.prefix.clone())),
            ),
            routes,
        }
    }

    fn restart_checks(&mut self, routes: &[Arc<Route>]) {
        for task in self.checks.drain(..) {
            task.abort();
        }
        for up in self.services.values() {
            up.clear_checks();
        }
        for r in routes {
            if let Some(hc) = &r.config.health_check {
                self.checks.push(tokio::spawn(checks::run(
                    r.name.clone(),
                    r.upstream.clone(),
                    self.client.clone(),
                    hc.clone(),
                )));
            }
        }
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for task in &self.checks {
            task.abort();
        }
    }
}
