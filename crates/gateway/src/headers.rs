//! Header rewriting between the client and an instance.
//!
//! A proxy is two HTTP hops, so the headers that describe one hop must not
//! leak into the other (RFC 9110 §7.6.1): `Connection`, every header it
//! names, and the classic hop-by-hop set (`Keep-Alive`, `Proxy-Connection`,
//! `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
//! `Proxy-Authorization`) are removed in both directions. hyper frames each
//! hop's body itself, so dropping `Transfer-Encoding` loses nothing. The one
//! exception is a protocol upgrade (WebSocket): there `Connection: upgrade`
//! and `Upgrade` are the request itself and are passed on
//! ([`crate::upgrade`]).
//!
//! Towards the instance the gateway says who the client was:
//! `X-Forwarded-For` gets the client's address appended (earlier proxies'
//! entries kept), `X-Forwarded-Proto` is set to the scheme the gateway
//! accepted (always `http`: it does not terminate TLS), and an RFC 7239
//! `Forwarded` element `for=…;host=…;proto=…` is appended. None of these can
//! be trusted further than the first proxy a client could reach directly;
//! instances behind the gateway should read the last entry.
//!
//! `Host` is kept by default, so virtual hosting on the instance keeps
//! working; a route with `preserve_host = false` sends the instance's own
//! address instead.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only describe one connection (besides those `Connection` names).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// The `Upgrade` header of a request or response that asks for a protocol
/// upgrade (its `Connection` lists `upgrade`), if it does.
pub fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes hop-by-hop headers; with `upgrade` set, puts back exactly
/// `Connection: upgrade` and that `Upgrade` value.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets
/// `X-Forwarded-Proto`; `host` is the host the client asked for.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&str>, proto: &str) {
    let ip = client.to_canonical();
    append_list(
        headers,
        header::FORWARDED,
        &forwarded_element(ip, host, proto),
    );
    append_list(
        headers,
        HeaderName::from_static("x-forwarded-for"),
        &ip.to_string(),
    );
    if let Ok(v) = HeaderValue::from_str(proto) {
        headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
}

/// One RFC 7239 element, quoting what is not a token (IPv6, `host:port`).
fn forwarded_element(ip: IpAddr, host: Option<&str>, proto: &str) -> String {
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut out = format!("for={node}");
    if let Some(h) = host {
        out.push_str(";host=");
        out.push_str(&quote_unless_token(h));
    }
    out.push_str(";proto=");
    out.push_str(proto);
    out
}

fn quote_unless_token(s: &str) -> String {
    let token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        s.to_string()
    } else {
        let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

/// Folds every value of a list header into one and appends `item`.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut all: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    all.push(item);
    if let Ok(v) = HeaderValue::from_str(&all.join(", ")) {
        headers.insert(name, v);
    }
}

/// Sets the `Host` sent to the instance: the client's own `host` when
/// preserving it (and the client sent one), else the instance's address.
pub fn set_host(headers: &mut HeaderMap, preserve: bool, host: Option<&str>, instance_addr: &str) {
    let value = match (preserve, host) {
        (true, Some(h)) => HeaderValue::from_str(h),
        _ => HeaderValue::from_str(instance_addr),
    };
    if let Ok(v) = value {
        headers.insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn pairs(m: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = m
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn removes_hop_by_hop_and_what_connection_names() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
            ("x-request-id", "7"),
        ]);
        remove_hop_by_hop(&mut h, None);
        assert_eq!(
            pairs(&h),
            [
                ("accept".into(), "*/*".into()),
                ("x-request-id".into(), "7".into())
            ]
        );
    }

    #[test]
    fn keeps_the_upgrade_it_is_asked_to() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let up = upgrade_of(&h);
        assert_eq!(up, Some(HeaderValue::from_static("websocket")));
        remove_hop_by_hop(&mut h, up.as_ref());
        assert_eq!(
            pairs(&h),
            [
                ("connection".into(), "upgrade".into()),
                ("sec-websocket-key".into(), "k".into()),
                ("upgrade".into(), "websocket".into()),
            ]
        );
        // An Upgrade header alone, without Connection: upgrade, asks nothing.
        assert_eq!(upgrade_of(&map(&[("upgrade", "websocket")])), None);
    }

    #[test]
    fn forwarded_headers_append_to_earlier_proxies() {
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: [(Pairs, IpAddr, Option<&str>, Pairs); 3] = [
            (
                &[],
                "192.0.2.1".parse().unwrap(),
                Some("example.com"),
                &[
                    ("forwarded", "for=192.0.2.1;host=example.com;proto=http"),
                    ("x-forwarded-for", "192.0.2.1"),
                    ("x-forwarded-proto", "http"),
                ],
            ),
            (
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "198.51.100.2"),
                    ("forwarded", "for=203.0.113.9"),
                    ("x-forwarded-proto", "https"),
                ],
                "2001:db8::1".parse().unwrap(),
                Some("example.com:8080"),
                &[
                    (
                        "forwarded",
                        "for=203.0.113.9, for=\"[2001:db8::1]\";host=\"example.com:8080\";proto=http",
                    ),
                    ("x-forwarded-for", "203.0.113.9, 198.51.100.2, 2001:db8::1"),
                    ("x-forwarded-proto", "http"),
                ],
            ),
            (
                // An IPv4 client on a dual-stack socket shows as plain IPv4.
                &[],
                "::ffff:10.1.2.3".parse().unwrap(),
                None,
                &[
                    ("forwarded", "for=10.1.2.3;proto=http"),
                    ("x-forwarded-for", "10.1.2.3"),
                    ("x-forwarded-proto", "http"),
                ],
            ),
        ];
        for (before, ip, host, after) in cases {
            let mut h = map(before);
            add_forwarded(&mut h, ip, host, "http");
            let want: Vec<_> = after
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(pairs(&h), want, "client {ip}");
        }
    }

    #[test]
    fn host_is_kept_or_rewritten() {
        let cases = [
            (true, Some("shop.example"), "shop.example"),
            (false, Some("shop.example"), "10.0.0.7:8080"),
            (true, None, "10.0.0.7:8080"),
        ];
        for (preserve, host, want) in cases {
            let mut h = map(&[("host", "stale")]);
            set_host(&mut h, preserve, host, "10.0.0.7:8080");
            assert_eq!(h.get(header::HOST).unwrap(), want);
        }
    }
}
