//! The admin listener: `/metrics`, `/healthz` and `/routes`.
//!
//! Kept on its own address so that metrics and liveness are never exposed
//! on the public port and never routed to a service by a catch-all route.
//!
//! - `GET /metrics`: every metric in Prometheus' text format ([`crate::metrics`]).
//! - `GET /healthz`: `ok` while the gateway runs.
//! - `GET /routes`: the route table in force, as JSON, with each route's
//!   discovered instances and whether each is out of rotation — the first
//!   thing to look at when a route answers 503.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::metrics::CONTENT_TYPE;
use crate::server::Shared;

/// Serves admin requests on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, shared.metrics.encode()),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/routes" => text(StatusCode::OK, "application/json", routes(shared)),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /routes\n".into(),
        ),
    }
}

fn routes(shared: &Shared) -> String {
    let table = shared.table();
    let list: Vec<_> = table
        .routes()
        .iter()
        .map(|r| {
            let out = r.upstream.out_ids();
            let instances: Vec<_> = r
                .upstream
                .instances()
                .iter()
                .map(|i| json!({"id": i.id, "addr": i.addr, "out": out.contains(&i.id)}))
                .collect();
            json!({
                "name": &*r.name,
                "host": r.config.host,
                "prefix": r.config.prefix,
                "service": &**r.upstream.service(),
                "balancer": r.config.balancer,
                "discovered": r.upstream.loaded(),
                "instances": instances,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
    s.push('\n');
    s
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
