//! Prometheus metrics, served as text on the admin port's `/metrics`.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `roster_gateway_requests_total` | `route`, `code` (`2xx`…`5xx`) | requests answered, by status class |
//! | `roster_gateway_request_duration_seconds` | `route` | time to the response headers (histogram) |
//! | `roster_gateway_response_bytes_total` | `route` | response body bytes sent |
//! | `roster_gateway_upstream_responses_total` | `route`, `instance`, `code` | answers from each instance, by status class |
//! | `roster_gateway_upstream_duration_seconds` | `route`, `instance` | each instance's time to response headers (histogram) |
//! | `roster_gateway_upstream_errors_total` | `route`, `instance`, `kind` | failed calls to an instance: `connect`, `timeout`, `protocol` (broke after sending) or `status_5xx` |
//! | `roster_gateway_ejections_total` | `service`, `instance` | passive ejections |
//! | `roster_gateway_requests_in_flight` | | requests waiting for response headers |
//!
//! Requests that match no route count under `route="none"`. `instance` is
//! the instance's address, which is what an operator recognizes; its
//! cardinality is bounded by the instances a route has seen since the
//! gateway started.
//!
//! Each route looks its series up once, when its table is built
//! ([`RouteMetrics`]), so counting a request is a few atomic additions and
//! the histogram's short lock, with no label to allocate or hash; an
//! instance's series are looked up once per route and kept in a small map
//! read under a shared lock. A route's
//! series appear at zero as soon as the route exists, which is what
//! Prometheus' `rate()` wants.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCode {
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteInstance {
    route: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteInstanceCode {
    route: String,
    instance: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamError {
    route: String,
    instance: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceInstance {
    service: String,
    instance: String,
}

/// Why a call to an instance failed, for the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made.
    Connect,
    /// No response headers within the route's timeout.
    Timeout,
    /// The connection broke after the request was sent.
    Protocol,
    /// The instance answered 5xx.
    Status5xx,
}

impl ErrorKind {
    fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteCode, Counter>,
    duration: Family<RouteLabel, Histogram>,
    bytes: Family<RouteLabel, Counter>,
    upstream_responses: Family<RouteInstanceCode, Counter>,
    upstream_duration: Family<RouteInstance, Histogram>,
    upstream_errors: Family<UpstreamError, Counter>,
    ejections: Family<ServiceInstance, Counter>,
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("roster_gateway");
        let requests = Family::<RouteCode, Counter>::default();
        // 1 ms to ~33 s, doubling.
        let duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let bytes = Family::<RouteLabel, Counter>::default();
        let upstream_responses = Family::<RouteInstanceCode, Counter>::default();
        let upstream_duration = Family::<RouteInstance, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        let ejections = Family::<ServiceInstance, Counter>::default();
        let in_flight = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            duration.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent, by route",
            bytes.clone(),
        );
        registry.register(
            "upstream_responses",
            "Answers from instances, by route, instance address and status class",
            upstream_responses.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending to an instance to its response headers, by route and instance",
            upstream_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed calls to instances, by route, instance address and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "ejections",
            "Passive ejections of instances",
            ejections.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests waiting for response headers",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            bytes,
            upstream_responses,
            upstream_duration,
            upstream_errors,
            ejections,
            in_flight,
        }
    }

    /// The handles of `route`'s series, to count its requests without a
    /// label lookup each time; creates the series (at zero) if needed.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: route.to_string(),
        };
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
            self.requests.get_or_create_owned(&RouteCode {
                route: route.to_string(),
                code: code.to_string(),
            })
        });
        RouteMetrics {
            requests,
            duration: self.duration.get_or_create_owned(&label),
            bytes: self.bytes.get_or_create_owned(&label),
            instances: Arc::new(InstanceSeries {
                route: route.to_string(),
                responses: self.upstream_responses.clone(),
                duration: self.upstream_duration.clone(),
                known: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Counts a failed call to an instance.
    pub fn upstream_error(&self, route: &str, instance: &str, kind: ErrorKind) {
        self.upstream_errors
            .get_or_create(&UpstreamError {
                route: route.to_string(),
                instance: instance.to_string(),
                kind: kind.label().to_string(),
            })
            .inc();
    }

    /// Counts a passive ejection.
    pub fn ejection(&self, service: &str, instance: &str) {
        self.ejections
            .get_or_create(&ServiceInstance {
                service: service.to_string(),
                instance: instance.to_string(),
            })
            .inc();
    }

    /// Marks a request as waiting; the guard unmarks it when dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Every metric in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One route's series (see [`Metrics::route`]); cheap to clone.
#[derive(Clone)]
pub struct RouteMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    bytes: Counter,
    instances: Arc<InstanceSeries>,
}

/// The per-instance series of one route, created on an instance's first
/// answer and kept for the life of the route's table.
struct InstanceSeries {
    route: String,
    responses: Family<RouteInstanceCode, Counter>,
    duration: Family<RouteInstance, Histogram>,
    known: RwLock<HashMap<String, ([Counter; 5], Histogram)>>,
}

impl InstanceSeries {
    fn series(&self, instance: &str) -> ([Counter; 5], Histogram) {
        if let Some(s) = self.known.read().get(instance) {
            return s.clone();
        }
        let codes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
            self.responses.get_or_create_owned(&RouteInstanceCode {
                route: self.route.clone(),
                instance: instance.to_string(),
                code: code.to_string(),
            })
        });
        let duration = self.duration.get_or_create_owned(&RouteInstance {
            route: self.route.clone(),
            instance: instance.to_string(),
        });
        let s = (codes, duration);
        self.known.write().insert(instance.to_string(), s.clone());
        s
    }
}

impl RouteMetrics {
    /// Counts an answered request and its time to headers.
    pub fn request(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(seconds);
    }

    /// Counts an instance's answer and its time to headers.
    pub fn upstream_response(&self, instance: &str, status: u16, seconds: f64) {
        let (codes, duration) = self.instances.series(instance);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        codes[class].inc();
        duration.observe(seconds);
    }

    /// Counts response body bytes.
    pub fn response_bytes(&self, n: u64) {
        self.bytes.inc_by(n);
    }
}

/// A request counted in `roster_gateway_requests_in_flight`.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_was_counted() {
        let m = Metrics::new();
        let api = m.route("/api");
        api.request(200, 0.003);
        api.request(503, 0.0001);
        m.route("/api").request(204, 0.001);
        m.upstream_error("/api", "127.0.0.1:9", ErrorKind::Connect);
        m.ejection("web", "127.0.0.1:9");
        api.response_bytes(42);
        api.upstream_response("127.0.0.1:8", 200, 0.002);
        api.upstream_response("127.0.0.1:8", 500, 0.002);
        let guard = m.in_flight();
        let text = m.encode();
        drop(guard);
        for want in [
            "roster_gateway_requests_total{route=\"/api\",code=\"2xx\"} 2",
            "roster_gateway_requests_total{route=\"/api\",code=\"5xx\"} 1",
            "roster_gateway_requests_total{route=\"/api\",code=\"4xx\"} 0",
            "roster_gateway_request_duration_seconds_count{route=\"/api\"} 3",
            "roster_gateway_upstream_errors_total{route=\"/api\",instance=\"127.0.0.1:9\",kind=\"connect\"} 1",
            "roster_gateway_ejections_total{service=\"web\",instance=\"127.0.0.1:9\"} 1",
            "roster_gateway_response_bytes_total{route=\"/api\"} 42",
            "roster_gateway_upstream_responses_total{route=\"/api\",instance=\"127.0.0.1:8\",code=\"2xx\"} 1",
            "roster_gateway_upstream_responses_total{route=\"/api\",instance=\"127.0.0.1:8\",code=\"5xx\"} 1",
            "roster_gateway_upstream_duration_seconds_count{route=\"/api\",instance=\"127.0.0.1:8\"} 2",
            "roster_gateway_requests_in_flight 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(m.encode().contains("roster_gateway_requests_in_flight 0"));
    }
}
