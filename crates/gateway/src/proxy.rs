//! The request path: route, pick, forward, answer.
//!
//! For each request [`handle`] finds the route ([`crate::table`]), then
//! `forward` repeats at most `retries + 1` times: ask the service's
//! upstream for candidates (instances in rotation that this request has not
//! tried), let the route's balancer pick one, rewrite the headers
//! ([`crate::headers`]) and the path (prefix stripping), and send the
//! request on the shared hyper-util client, whose pool keeps connections to
//! each instance alive between requests. The body is handed over as a
//! stream, never buffered.
//!
//! Every attempt's outcome is reported twice: to the balancer's pick (p2c
//! learns latency and failures from it) and to the upstream's health table
//! (passive ejection). A response with a 5xx status (but 501 and 505, which
//! are about the request) counts as a failure but is still passed to the
//! client as the instance sent it.
//!
//! **Retries.** A request is retried on another instance only if its
//! method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and its
//! body is empty, because a streamed body is consumed by the first attempt;
//! and only if the attempt failed before any response headers came back:
//! the connection could not be made, or it broke (an instance killed with
//! requests in flight, or a pooled keep-alive connection it had just
//! closed). The instance may have seen the request in the second case, but
//! repeating an idempotent request is what RFC 9110 §9.2.2 allows, and
//! what keeps a crashed instance from failing every request it held. A
//! broken connection is a 502 for any other request; a missing answer
//! within the route's `timeout` (one deadline for all attempts) is a 504,
//! never retried, since a slow instance is likely still working on it.
//!
//! The response's headers count towards latency (the histogram and p2c's
//! average measure time to headers); its body then streams at the client's
//! pace, and the access-log line is written when it ends ([`crate::body`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use roster_client::balance::Pick;

use crate::body::{empty, stream, Body, Logged};
use crate::config::{HashKey, UpstreamConfig};
use crate::health::Transition;
use crate::metrics::{ErrorKind, RouteMetrics};
use crate::server::Shared;
use crate::table::Route;
use crate::upstream::Candidates;
use crate::{headers, reply, routes, upgrade};

/// The pooled HTTP/1.1 client that carries traffic to instances.
pub type HttpClient = Client<HttpConnector, Body>;

/// Builds the shared client from the `[upstream]` settings.
pub fn http_client(config: &UpstreamConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        // The idle timeout is only enforced with a timer.
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// The URI of `path_and_query` on the instance at `addr` (`host:port`, an
/// `http://` prefix tolerated).
pub fn upstream_uri(addr: &str, path_and_query: &str) -> Result<Uri, http::Error> {
    let authority = addr.strip_prefix("http://").unwrap_or(addr);
    let authority = authority.trim_end_matches('/');
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
}

/// What the access log says about a request, gathered along the way.
struct Access {
    method: Method,
    host: Option<String>,
    path: String,
    route: Option<Arc<str>>,
    instance: Option<String>,
    started: Instant,
}

/// Serves one request from a client at `peer`.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Logged> {
    let host = request_host(&req);
    let mut access = Access {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        host,
        route: None,
        instance: None,
        started: Instant::now(),
    };
    let route = shared
        .table()
        .find(access.host.as_deref(), &access.path)
        .cloned();
    let Some(route) = route else {
        let resp = reply::no_route(&access.path);
        return finish(&shared.unmatched, access, resp);
    };
    access.route = Some(route.name.clone());
    let in_flight = shared.metrics.in_flight();
    let (resp, instance) = forward(&shared, &route, peer, req, access.host.as_deref()).await;
    drop(in_flight);
    access.instance = instance;
    finish(&route.metrics, access, resp)
}

/// The host the client asked for: the `Host` header, else the URI's
/// authority (HTTP/2, absolute-form requests).
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Counts the answer and wraps its body so the access log is written when
/// the body ends.
fn finish(metrics: &RouteMetrics, access: Access, resp: Response<Body>) -> Response<Logged> {
    let status = resp.status().as_u16();
    let to_headers = access.started.elapsed();
    metrics.request(status, to_headers.as_secs_f64());
    let metrics = metrics.clone();
    resp.map(move |body| {
        Logged::new(
            body,
            Box::new(move |bytes, complete| {
                metrics.response_bytes(bytes);
                tracing::info!(
                    target: "roster_gateway::access",
                    method = %access.method,
                    host = access.host.as_deref().unwrap_or("-"),
                    path = %access.path,
                    route = access.route.as_deref().unwrap_or("-"),
                    instance = access.instance.as_deref().unwrap_or("-"),
                    status,
                    ms = %format_args!("{:.3}", to_headers.as_secs_f64() * 1000.0),
                    total_ms = %format_args!("{:.3}", access.started.elapsed().as_secs_f64() * 1000.0),
                    bytes,
                    complete,
                );
            }),
        )
    })
}

/// Sends the request to an instance of the route's service, retrying a
/// call that failed before its answer elsewhere when that is safe; returns
/// the answer and the address of the instance that gave it (or failed
/// last).
async fn forward(
    shared: &Shared,
    route: &Route,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    host: Option<&str>,
) -> (Response<Body>, Option<String>) {
    let upgrade = match req.version() {
        Version::HTTP_11 => headers::upgrade_of(req.headers()),
        _ => None,
    };
    let mut client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let key = route
        .keyed
        .then(|| hash_key(&route.config.hash_key, peer, &parts));
    headers::remove_hop_by_hop(&mut parts.headers, upgrade.as_ref());
    headers::add_forwarded(&mut parts.headers, peer.ip(), host, "http");
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut body = Some(stream(body));
    let path = upstream_path(route, &parts.uri);
    let deadline = tokio::time::Instant::now() + route.config.timeout;
    let attempts = if retryable {
        route.config.retries + 1
    } else {
        1
    };
    let (name, service) = (&route.name, route.upstream.service());
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for _ in 0..attempts {
        let candidates = match route.upstream.candidates(&tried) {
            Candidates::NoInstance => return (reply::no_instance(name, service), None),
            Candidates::Exhausted => break,
            Candidates::Some(list) => list,
        };
        let Some(pick) = route.balancer.pick(&candidates, key.as_deref()) else {
            break;
        };
        let (id, addr) = (pick.instance().id.clone(), pick.instance().addr.clone());
        tried.push(id.clone());
        last = Some(addr.clone());
        let Ok(uri) = upstream_uri(&addr, &path) else {
            tracing::warn!(service = %service, instance = %addr, "instance address is not host:port");
            report(shared, route, &id, &addr, pick, Err(ErrorKind::Connect));
            continue;
        };
        let mut headers = if attempts > 1 {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        headers::set_host(&mut headers, route.config.preserve_host, host, &addr);
        let mut up = Request::new(body.take().unwrap_or_else(empty));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = headers;
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, shared.client.request(up)).await {
            Ok(Ok(resp)) => {
                let took = sent.elapsed().as_secs_f64();
                route
                    .metrics
                    .upstream_response(&addr, resp.status().as_u16(), took);
                let result = match instance_failed(resp.status()) {
                    true => Err(ErrorKind::Status5xx),
                    false => Ok(()),
                };
                report(shared, route, &id, &addr, pick, result);
                let resp = match client_upgrade.take() {
                    Some(on) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        upgrade::splice(on, resp)
                    }
                    _ => passed_on(resp),
                };
                return (resp, Some(addr));
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(route = %name, instance = %addr, error = %e, "connect failed");
                report(shared, route, &id, &addr, pick, Err(ErrorKind::Connect));
            }
            Ok(Err(e)) => {
                tracing::debug!(route = %name, instance = %addr, error = %e, "upstream call failed");
                report(shared, route, &id, &addr, pick, Err(ErrorKind::Protocol));
                if !retryable {
                    return (reply::bad_gateway(name, service, &addr), Some(addr));
                }
            }
            Err(_) => {
                report(shared, route, &id, &addr, pick, Err(ErrorKind::Timeout));
                return (reply::timed_out(name, service, &addr), Some(addr));
            }
        }
    }
    match last {
        Some(addr) => (reply::bad_gateway(name, service, &addr), Some(addr)),
        None => (reply::no_instance(name, service), None),
    }
}

/// An instance's response, minus its hop-by-hop headers, body streamed.
fn passed_on(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, None);
    // The instance's HTTP version is its hop's business; hyper answers the
    // client in the version the client spoke.
    parts.version = Version::default();
    Response::from_parts(parts, stream(body))
}

/// Reports one attempt's outcome to the balancer, the health table and the
/// metrics.
fn report(
    shared: &Shared,
    route: &Route,
    id: &str,
    addr: &str,
    pick: Pick,
    result: Result<(), ErrorKind>,
) {
    match result {
        Ok(()) => {
            pick.success();
            route.upstream.report(id, true);
        }
        Err(kind) => {
            pick.failure();
            shared.metrics.upstream_error(&route.name, addr, kind);
            if route.upstream.report(id, false) == Some(Transition::Ejected) {
                shared.metrics.ejection(route.upstream.service(), addr);
            }
        }
    }
}

/// Whether an answer says the instance is failing: any 5xx except 501 Not
/// Implemented and 505 HTTP Version Not Supported, which are about the
/// request, and which a healthy instance gives to every such request.
fn instance_failed(status: StatusCode) -> bool {
    status.is_server_error()
        && status != StatusCode::NOT_IMPLEMENTED
        && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED
}

/// Methods a request may be repeated with (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The path and query sent to the instance: the client's, with the route
/// prefix removed when the route strips it.
fn upstream_path(route: &Route, uri: &Uri) -> String {
    let path = uri.path();
    let path = match route.config.strip_prefix {
        true => routes::strip_prefix(&route.config.prefix, path),
        false => path,
    };
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// The bytes a consistent-hash route hashes for this request.
fn hash_key(key: &HashKey, peer: SocketAddr, parts: &http::request::Parts) -> Vec<u8> {
    match key {
        HashKey::ClientIp => peer.ip().to_canonical().to_string().into_bytes(),
        HashKey::Path => parts.uri.path().as_bytes().to_vec(),
        HashKey::Header(name) => parts
            .headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uris() {
        let cases = [
            ("10.0.0.7:8080", "/a?b=1", "http://10.0.0.7:8080/a?b=1"),
            ("http://10.0.0.7:8080/", "/", "http://10.0.0.7:8080/"),
            ("[::1]:9000", "/x", "http://[::1]:9000/x"),
        ];
        for (addr, path, want) in cases {
            assert_eq!(upstream_uri(addr, path).unwrap().to_string(), want);
        }
        assert!(upstream_uri("not an address", "/").is_err());
    }

    #[test]
    fn which_answers_count_against_the_instance() {
        for (code, failed) in [
            (200, false),
            (404, false),
            (500, true),
            (501, false),
            (502, true),
            (503, true),
            (504, true),
            (505, false),
            (599, true),
        ] {
            assert_eq!(
                instance_failed(StatusCode::from_u16(code).unwrap()),
                failed,
                "{code}"
            );
        }
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
