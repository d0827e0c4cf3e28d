//! Protocol upgrades (WebSocket, or any HTTP/1.1 `Upgrade`) passed through.
//!
//! An upgrade request travels like any other, except that its
//! `Connection: upgrade` and `Upgrade` headers are kept
//! ([`crate::headers::remove_hop_by_hop`]) and the client side's pending
//! upgrade is taken from the request before it is forwarded. When the
//! instance answers `101 Switching Protocols`, [`splice`] returns the 101
//! to the client and, in a task of its own, waits for both connections to
//! be handed over by hyper and copies bytes both ways until either side
//! closes. Any other answer is passed on as usual and the client's upgrade
//! is abandoned, which is what the client expects from a refusal.
//!
//! An upgraded connection is no longer HTTP, so the gateway stops seeing
//! requests on it: it is not counted in flight, outlives graceful shutdown's
//! drain and is not bounded by the route's timeout. Upgrades over HTTP/2
//! (extended CONNECT) are not supported; such clients fall back to
//! HTTP/1.1.

use http::Response;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{empty, Body};
use crate::headers;

/// Answers the client with the instance's 101 and joins the two upgraded
/// connections once hyper hands them over.
pub fn splice(client: OnUpgrade, mut resp: Response<Incoming>) -> Response<Body> {
    let protocol = headers::upgrade_of(resp.headers());
    let instance = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, instance) = tokio::join!(client, instance);
        let (client, instance) = match (client, instance) {
            (Ok(c), Ok(i)) => (c, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
        match tokio::io::copy_bidirectional(&mut client, &mut instance).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection broke"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, protocol.as_ref());
    parts.version = http::Version::default();
    Response::from_parts(parts, empty())
}
