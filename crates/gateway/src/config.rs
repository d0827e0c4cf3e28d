//! The gateway's configuration: a TOML file, or the same structs built by
//! hand (the `roster gateway` flags do that for the simple case).
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! admin_listen = "127.0.0.1:9901"
//!
//! [registry]
//! endpoints = ["127.0.0.1:2379"]
//!
//! [[route]]
//! prefix = "/api"
//! service = "api.http"
//! strip_prefix = true
//! ```
//!
//! Every field but a route's `service` has a default, listed on the field;
//! `docs/gateway.example.toml` shows them all. Durations are strings with a
//! unit: `"250ms"`, `"10s"`, `"5m"`, `"1h"`.
//!
//! Parsing is strict so that a typo is an error rather than a silently
//! ignored setting: unknown keys are refused, and [`Config::validate`]
//! checks what the types cannot (a known balancer, a prefix that starts
//! with `/`, unique route names, positive timeouts), naming the offending
//! field in the message: `route[2] ("/api").balancer: unknown balancer …`.
//! Validation also normalizes: prefixes lose a trailing `/` (so `/api/` and
//! `/api` mean the same route), hosts are lowercased, and every route gets
//! a name (by default its host and prefix), which is how logs, metrics and
//! error answers refer to it.

use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to accept proxied traffic, `host:port` (default `127.0.0.1:8080`;
    /// port 0 picks a free port).
    pub listen: String,
    /// Where to serve `/metrics` and `/healthz` (default `127.0.0.1:9901`).
    pub admin_listen: String,
    /// The registry the services are discovered in.
    pub registry: RegistryConfig,
    /// The pooled HTTP client that talks to instances.
    pub upstream: UpstreamConfig,
    /// Passive ejection of failing instances.
    pub ejection: EjectionConfig,
    /// How long in-flight requests may run on after shutdown begins (default 10s).
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// The routes, written `[[route]]`; order does not matter.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9901".into(),
            registry: RegistryConfig::default(),
            upstream: UpstreamConfig::default(),
            ejection: EjectionConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            routes: Vec::new(),
        }
    }
}

/// Where services are discovered: a Roster or etcd cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Endpoints, `host:port` or `http://host:port` (default `127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The key prefix services live under (default `/roster/services/`).
    pub prefix: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: roster_client::instance::DEFAULT_PREFIX.into(),
        }
    }
}

/// Settings of the connection pool shared by all routes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Limit on opening a connection to an instance (default 1s); a connect
    /// that times out counts as a connection failure, so it is retried.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long an idle keep-alive connection is kept (default 90s).
    #[serde(deserialize_with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per instance (default 64).
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
        }
    }
}

/// When an instance is taken out of rotation for failing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EjectionConfig {
    /// Consecutive failures (connection errors, timeouts, 5xx answers other
    /// than 501 and 505) that eject an instance (default 3; 0 turns ejection
    /// off).
    pub consecutive_failures: u32,
    /// How long an ejected instance stays out (default 10s).
    #[serde(deserialize_with = "duration")]
    pub cool_down: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_secs(10),
        }
    }
}

/// One route: requests matching `host` (if set) and `prefix` go to `service`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name in logs, metrics and error answers (default: host
    /// and prefix, e.g. `api.example.com/v1` or `/v1`).
    pub name: Option<String>,
    /// The path prefix, matched on segment boundaries: `/api` matches `/api`
    /// and `/api/x`, not `/apix` (default `/`).
    pub prefix: String,
    /// Only requests for this host (the `Host` header without its port);
    /// host routes are tried before host-less ones.
    pub host: Option<String>,
    /// The service whose instances serve the route (required).
    pub service: String,
    /// Remove the prefix from the path before forwarding (default false).
    pub strip_prefix: bool,
    /// The balancer's name: `p2c` (default), `round_robin`, `random`,
    /// `weighted` or `consistent_hash`.
    pub balancer: String,
    /// What `consistent_hash` hashes: `client_ip` (default), `path`, or
    /// `header:<name>`.
    pub hash_key: HashKey,
    /// Forward the client's `Host` header (default true); false sends the
    /// instance's address instead.
    pub preserve_host: bool,
    /// Limit on getting the response headers, retries included (default
    /// 30s); exceeding it answers 504. Bodies stream without a limit.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// How many other instances an idempotent request with no body is
    /// tried on when a call fails before its answer: connecting failed, or
    /// the connection broke (default 1).
    pub retries: u32,
    /// Optional active health checking of the service's instances.
    pub health_check: Option<HealthCheckConfig>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: None,
            prefix: "/".into(),
            host: None,
            service: String::new(),
            strip_prefix: false,
            balancer: "p2c".into(),
            hash_key: HashKey::ClientIp,
            preserve_host: true,
            timeout: Duration::from_secs(30),
            retries: 1,
            health_check: None,
        }
    }
}

impl RouteConfig {
    /// A route with default settings from `prefix` to `service`.
    pub fn new(prefix: impl Into<String>, service: impl Into<String>) -> Self {
        RouteConfig {
            prefix: prefix.into(),
            service: service.into(),
            ..RouteConfig::default()
        }
    }

    /// The route's name: as configured, or made from its host and prefix.
    pub fn name(&self) -> String {
        match (&self.name, &self.host) {
            (Some(n), _) => n.clone(),
            (None, Some(h)) => format!("{h}{}", self.prefix),
            (None, None) => self.prefix.clone(),
        }
    }
}

/// Active health checks: a `GET` of `path` on every instance each `interval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The path requested (default `/`); any 2xx or 3xx answer passes.
    pub path: String,
    /// Time between checks of one instance (default 5s).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Limit on one check (default 2s).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed checks that take an instance out (default 2); one
    /// passing check brings it back.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 2,
        }
    }
}

/// What a consistent-hash route hashes to choose an instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
    /// The value of a request header (requests without it hash as empty).
    Header(HeaderName),
}

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "client_ip" => Ok(HashKey::ClientIp),
            "path" => Ok(HashKey::Path),
            _ => match s.strip_prefix("header:") {
                Some(h) => HeaderName::try_from(h)
                    .map(HashKey::Header)
                    .map_err(|_| format!("{h:?} is not a header name")),
                None => Err(format!(
                    "unknown hash key {s:?}; use client_ip, path or header:<name>"
                )),
            },
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates a configuration in TOML.
    pub fn parse(text: &str) -> Result<Config> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what parsing cannot and normalizes prefixes, hosts and route
    /// names (see the module docs); safe to call more than once.
    pub fn validate(&mut self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::Config(format!("{field}: {why}")));
        if self.listen.trim().is_empty() {
            return bad("listen", "must be host:port".into());
        }
        if self.admin_listen.trim().is_empty() {
            return bad("admin_listen", "must be host:port".into());
        }
        if self.registry.endpoints.is_empty() {
            return bad(
                "registry.endpoints",
                "at least one endpoint is needed".into(),
            );
        }
        if self.ejection.consecutive_failures > 0 && self.ejection.cool_down.is_zero() {
            return bad("ejection.cool_down", "must be more than 0".into());
        }
        if self.upstream.connect_timeout.is_zero() {
            return bad("upstream.connect_timeout", "must be more than 0".into());
        }
        let mut seen_names = std::collections::HashSet::new();
        let mut seen_matches = std::collections::HashSet::new();
        for (i, route) in self.routes.iter_mut().enumerate() {
            normalize(route);
            let name = route.name();
            let at = |field: &str| format!("route[{i}] ({name:?}).{field}");
            if let Err((field, why)) = check_route(route) {
                return bad(&at(field), why);
            }
            if !seen_names.insert(name.clone()) {
                return bad(&at("name"), format!("{name:?} is used by another route"));
            }
            if !seen_matches.insert((route.host.clone(), route.prefix.clone())) {
                return bad(
                    &at("prefix"),
                    "another route has the same host and prefix".into(),
                );
            }
            route.name = Some(name);
        }
        Ok(())
    }
}

/// Trims a trailing `/` from the prefix and lowercases the host.
fn normalize(route: &mut RouteConfig) {
    let trimmed = route.prefix.trim_end_matches('/');
    route.prefix = if trimmed.is_empty() && route.prefix.starts_with('/') {
        "/".into()
    } else {
        trimmed.into()
    };
    if let Some(h) = &mut route.host {
        *h = h.to_ascii_lowercase();
    }
}

/// The first problem with a route, as (field, why).
fn check_route(r: &RouteConfig) -> std::result::Result<(), (&'static str, String)> {
    if !r.prefix.starts_with('/') || r.prefix.contains(['?', '#']) {
        return Err((
            "prefix",
            format!("{:?} must be a path starting with /", r.prefix),
        ));
    }
    if r.service.trim().is_empty() {
        return Err(("service", "missing: name the service to route to".into()));
    }
    if let Some(h) = &r.host {
        if h.is_empty() || h.contains(['/', ':', ' ']) {
            return Err(("host", format!("{h:?} must be a host name without port")));
        }
    }
    if matches!(&r.name, Some(n) if n.trim().is_empty()) {
        return Err(("name", "must not be empty".into()));
    }
    if roster_client::balance::by_name(&r.balancer).is_none() {
        let known = roster_client::balance::NAMES.join(", ");
        return Err((
            "balancer",
            format!("unknown balancer {:?}; one of {known}", r.balancer),
        ));
    }
    if r.timeout.is_zero() {
        return Err(("timeout", "must be more than 0".into()));
    }
    if let Some(hc) = &r.health_check {
        if !hc.path.starts_with('/') {
            return Err((
                "health_check.path",
                format!("{:?} must start with /", hc.path),
            ));
        }
        if hc.interval.is_zero() || hc.timeout.is_zero() {
            return Err((
                "health_check.interval",
                "interval and timeout must be more than 0".into(),
            ));
        }
        if hc.unhealthy_threshold == 0 {
            return Err((
                "health_check.unhealthy_threshold",
                "must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// Parses a duration written as a number and a unit: `ms`, `s`, `m` or `h`
/// (`"250ms"`, `"10s"`); a bare number is seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"500ms\" or \"10s\""))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// Serde glue for [`parse_duration`].
fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests;
