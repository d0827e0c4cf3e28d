//! The gateway's own answers, for when it cannot pass a request on.
//!
//! Each is a short JSON object, so that both a person with curl and a
//! client's error handler can tell *which* part failed:
//!
//! | status | when | body |
//! |---|---|---|
//! | 404 | no route matches | `{"error":"no route","path":"/x"}` |
//! | 503 | the route's service has no instance (or none discovered yet) | `{"error":"no instance available","route":"/api","service":"api"}` |
//! | 502 | no connection could be made, or it broke before an answer | `{"error":"upstream connection failed","route":…,"service":…,"instance":"10.0.0.7:8080"}` |
//! | 504 | no response headers within the route's timeout | `{"error":"upstream timed out",…}` |
//!
//! A 5xx answered by an instance itself is passed through unchanged, not
//! replaced by one of these. Every answer here carries
//! `Cache-Control: no-store`.

use http::{header, Response, StatusCode};
use serde_json::json;

use crate::body::{full, Body};

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut text = value.to_string();
    text.push('\n');
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    resp
}

/// 404: no route matches `path`.
pub fn no_route(path: &str) -> Response<Body> {
    json_reply(
        StatusCode::NOT_FOUND,
        json!({"error": "no route", "path": path}),
    )
}

/// 503: `service`, behind `route`, has no instance to send to.
pub fn no_instance(route: &str, service: &str) -> Response<Body> {
    json_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "no instance available", "route": route, "service": service}),
    )
}

/// 502: the call to `instance` failed before it was answered.
pub fn bad_gateway(route: &str, service: &str, instance: &str) -> Response<Body> {
    json_reply(
        StatusCode::BAD_GATEWAY,
        json!({"error": "upstream connection failed", "route": route, "service": service, "instance": instance}),
    )
}

/// 504: `instance` did not answer within the route's timeout.
pub fn timed_out(route: &str, service: &str, instance: &str) -> Response<Body> {
    json_reply(
        StatusCode::GATEWAY_TIMEOUT,
        json!({"error": "upstream timed out", "route": route, "service": service, "instance": instance}),
    )
}
