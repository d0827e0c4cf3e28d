//! Active health checks: a route's optional `GET <path>` on every instance
//! of its service, every `interval`.
//!
//! A 2xx or 3xx answer within `timeout` passes; anything else — refused
//! connection, timeout, 4xx, 5xx — fails. Results go to the upstream's
//! health table under the route's name ([`crate::health`] keeps one count
//! per check), where `unhealthy_threshold` failures in a row take the
//! instance out and one pass brings it back.
//!
//! All instances are checked concurrently, each round waiting for the
//! slowest (bounded by the timeout), and rounds do not overlap. Checks go
//! through the same pooled client as traffic, so a passing check also keeps
//! a warm connection to the instance. The check's body is read and
//! discarded (bounded by the timeout) so that the connection can return to
//! the pool. Checks are sent with `Host` set to the instance's address and
//! `User-Agent: roster-gateway-health`.

use std::sync::Arc;

use http::{header, Request};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::body::empty;
use crate::config::HealthCheckConfig;
use crate::proxy::{upstream_uri, HttpClient};
use crate::upstream::Upstream;

/// Checks `upstream`'s instances for the route `name` until aborted.
pub async fn run(
    name: Arc<str>,
    upstream: Arc<Upstream>,
    client: HttpClient,
    config: HealthCheckConfig,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut round = JoinSet::new();
        for instance in upstream.instances().iter() {
            let (client, config) = (client.clone(), config.clone());
            let (id, addr) = (instance.id.clone(), instance.addr.clone());
            round.spawn(async move {
                let result = probe(&client, &addr, &config).await;
                (id, addr, result)
            });
        }
        while let Some(done) = round.join_next().await {
            let Ok((id, addr, result)) = done else {
                continue;
            };
            if let Err(why) = &result {
                tracing::debug!(route = %name, instance = %addr, %why, "health check failed");
            }
            upstream.report_check(&name, &id, result.is_ok(), config.unhealthy_threshold);
        }
    }
}

/// One check of the instance at `addr`; the error says why it failed.
async fn probe(client: &HttpClient, addr: &str, config: &HealthCheckConfig) -> Result<(), String> {
    let uri = upstream_uri(addr, &config.path).map_err(|e| e.to_string())?;
    let req = Request::get(uri)
        .header(header::HOST, addr)
        .header(header::USER_AGENT, "roster-gateway-health")
        .body(empty())
        .map_err(|e| e.to_string())?;
    let call = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the (small) body so the connection goes back to the pool.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    tokio::time::timeout(config.timeout, call)
        .await
        .map_err(|_| "timed out".to_string())?
}
