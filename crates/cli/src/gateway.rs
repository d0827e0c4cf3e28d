//! `roster gateway`: the HTTP gateway, from a config file or from flags.
//!
//! With `--config gateway.toml` everything comes from the file (format:
//! `docs/gateway.example.toml`), which is then watched: edits to the routes
//! apply without a restart. For the simple case no file is needed:
//!
//! ```text
//! roster gateway --endpoints 127.0.0.1:2379 --route /=web --route /api=api --strip-prefix
//! ```
//!
//! `--route` takes `PREFIX=SERVICE`, or `HOST/PREFIX=SERVICE` for a route
//! limited to one host; `--strip-prefix`, `--balancer` and `--timeout` apply
//! to every flag route. `--listen`, `--admin-listen` and `--endpoints` also
//! override the file's values when given with `--config`; routes come from
//! one place only, so `--route` and `--config` do not mix.
//!
//! Once bound it prints one line to stderr, which scripts and tests wait
//! for (with the real ports when port 0 was asked for):
//! `roster: gateway listening on http://ADDR (admin http://ADDR)`.
//! SIGINT or SIGTERM stop it gracefully: no new connections, requests in
//! flight finish (up to `shutdown_grace`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use roster_gateway::config::parse_duration;
use roster_gateway::{Config, Gateway, RouteConfig};

/// Flags of `roster gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// A TOML configuration (see docs/gateway.example.toml); its routes are
    /// reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for proxied traffic [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address for /metrics, /healthz and /routes [default: 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Registry endpoints, comma-separated [default: 127.0.0.1:2379].
    #[arg(long, value_delimiter = ',', value_name = "ENDPOINTS")]
    endpoints: Vec<String>,
    /// A route, `PREFIX=SERVICE` or `HOST/PREFIX=SERVICE`; repeatable.
    #[arg(long = "route", value_name = "[HOST]PREFIX=SERVICE")]
    routes: Vec<String>,
    /// Remove the prefix from the path before forwarding (flag routes).
    #[arg(long)]
    strip_prefix: bool,
    /// Balancer for flag routes: p2c, round_robin, random, weighted,
    /// consistent_hash.
    #[arg(long, default_value = "p2c")]
    balancer: String,
    /// Limit on an instance's response headers for flag routes (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

/// Parses a `--route` value.
fn parse_route(spec: &str) -> Result<RouteConfig, String> {
    let (target, service) = spec
        .split_once('=')
        .ok_or_else(|| format!("--route {spec:?}: expected PREFIX=SERVICE"))?;
    let (host, prefix) = match target.find('/') {
        Some(0) => (None, target),
        Some(i) => (Some(target[..i].to_string()), &target[i..]),
        None => return Err(format!("--route {spec:?}: the prefix must start with /")),
    };
    let mut route = RouteConfig::new(prefix, service);
    route.host = host;
    Ok(route)
}

/// Builds the configuration from the file and the flags.
fn config(args: &GatewayArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => {
            if !args.routes.is_empty() {
                return Err("give routes either in --config or with --route, not both".into());
            }
            Config::from_file(path).map_err(|e| e.to_string())?
        }
        None => {
            if args.routes.is_empty() {
                return Err("no routes: give --route PREFIX=SERVICE or --config FILE".into());
            }
            Config::default()
        }
    };
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    if let Some(l) = &args.admin_listen {
        config.admin_listen = l.clone();
    }
    if !args.endpoints.is_empty() {
        config.registry.endpoints = args.endpoints.clone();
    }
    for spec in &args.routes {
        let mut route = parse_route(spec)?;
        route.strip_prefix = args.strip_prefix;
        route.balancer = args.balancer.clone();
        if let Some(t) = args.timeout {
            route.timeout = t;
        }
        config.routes.push(route);
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(args: GatewayArgs) -> Result<(), String> {
    let config = config(&args)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("starting runtime: {e}"))?;
    runtime.block_on(async move {
        // Caught before the ready line: a script may signal right after it.
        let stop = stop_signal()?;
        let mut gateway = Gateway::bind(config).await.map_err(|e| e.to_string())?;
        if let Some(path) = args.config {
            gateway = gateway.watch_config(path);
        }
        // Tests and scripts wait for this exact line.
        eprintln!(
            "roster: gateway listening on http://{} (admin http://{})",
            gateway.local_addr(),
            gateway.admin_addr()
        );
        gateway.run(stop).await;
        tracing::info!("gateway stopped");
        Ok(())
    })
}

/// A future that resolves on the first SIGINT or SIGTERM; the handlers are
/// installed when this is called, not when the future is first polled.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let catch = |kind| signal(kind).map_err(|e| format!("catching signals: {e}"));
        let (mut int, mut term) = (
            catch(SignalKind::interrupt())?,
            catch(SignalKind::terminate())?,
        );
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_flags() {
        let r = parse_route("/api=api.http").unwrap();
        assert_eq!(
            (r.host, r.prefix.as_str(), r.service.as_str()),
            (None, "/api", "api.http")
        );
        let r = parse_route("shop.example/=shop").unwrap();
        assert_eq!(
            (r.host.as_deref(), r.prefix.as_str()),
            (Some("shop.example"), "/")
        );
        assert!(parse_route("/api").unwrap_err().contains("PREFIX=SERVICE"));
        assert!(parse_route("api=x")
            .unwrap_err()
            .contains("must start with /"));
    }
}
