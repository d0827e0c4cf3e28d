//! Route matching: which route a request's host and path select, and the
//! path an instance is sent.
//!
//! The rules, in order:
//! 1. Routes with a `host` are tried before routes without one, so a
//!    host-specific route always beats a catch-all for its host.
//! 2. Among those, the longest prefix wins, so `/api/admin` beats `/api`
//!    whichever was written first. The order of routes in the file never
//!    matters; two routes with the same host and prefix are refused by
//!    validation.
//! 3. Prefixes match on path-segment boundaries: `/api` matches `/api`,
//!    `/api/` and `/api/users`, but not `/apix`; `/` matches everything.
//! 4. Hosts compare without the port and without case.
//!
//! The matcher only knows keys and returns the index of the winning route,
//! so it can be tested as the pure function it is; the live table
//! ([`crate::table`]) holds the routes themselves. A linear scan over the
//! sorted keys is plenty for the tens of routes a gateway has.

/// The sorted route keys of one table.
#[derive(Debug, Default)]
pub struct Matcher {
    /// (host, prefix, route index), host routes first, longer prefixes first.
    keys: Vec<(Option<String>, String, usize)>,
}

impl Matcher {
    /// A matcher over `(host, prefix)` keys, numbered in the order given;
    /// hosts are expected lowercase and prefixes normalized (no trailing
    /// `/` except the root), as [`crate::Config::validate`] leaves them.
    pub fn new<I>(keys: I) -> Matcher
    where
        I: IntoIterator<Item = (Option<String>, String)>,
    {
        let mut keys: Vec<_> = keys
            .into_iter()
            .enumerate()
            .map(|(i, (h, p))| (h, p, i))
            .collect();
        keys.sort_by(|a, b| {
            (a.0.is_none(), std::cmp::Reverse(a.1.len()), a.2).cmp(&(
                b.0.is_none(),
                std::cmp::Reverse(b.1.len()),
                b.2,
            ))
        });
        Matcher { keys }
    }

    /// The index of the route for a request to `host` (a `Host` header or
    /// URI authority, port allowed) and `path`, if any matches.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(host_name);
        self.keys.iter().find_map(|(h, prefix, i)| {
            let host_ok = match (h, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            (host_ok && prefix_matches(prefix, path)).then_some(*i)
        })
    }
}

/// Whether `prefix` covers `path` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `path` without `prefix` (which must match it), never empty: stripping
/// `/api` turns `/api/users` into `/users` and `/api` into `/`.
pub fn strip_prefix<'a>(prefix: &str, path: &'a str) -> &'a str {
    if prefix == "/" {
        return path;
    }
    match path.strip_prefix(prefix) {
        Some("") | None => "/",
        Some(rest) => rest,
    }
}

/// The host part of a `Host` value: without the port, brackets kept for
/// IPv6 literals (`[::1]:8080` → `[::1]`).
pub fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> (Matcher, Vec<&'static str>) {
        let routes = [
            (None, "/", "root"),
            (None, "/api", "api"),
            (None, "/api/admin", "admin"),
            (Some("shop.example"), "/", "shop"),
            (Some("shop.example"), "/api", "shop-api"),
            (None, "/static", "static"),
        ];
        let m = Matcher::new(
            routes
                .iter()
                .map(|(h, p, _)| (h.map(String::from), p.to_string())),
        );
        (m, routes.iter().map(|r| r.2).collect())
    }

    #[test]
    fn picks_host_routes_first_then_longest_prefix_on_segment_boundaries() {
        let (m, names) = matcher();
        let cases = [
            (None, "/", "root"),
            (None, "/index.html", "root"),
            (None, "/api", "api"),
            (None, "/api/", "api"),
            (None, "/api/users", "api"),
            (None, "/apix", "root"),
            (None, "/api/admin/x", "admin"),
            (None, "/api/administrator", "api"),
            (Some("shop.example"), "/", "shop"),
            (Some("SHOP.example:8080"), "/api/users", "shop-api"),
            // A host route wins over a longer host-less prefix.
            (Some("shop.example"), "/api/admin", "shop-api"),
            (Some("shop.example"), "/static/a.css", "shop"),
            (Some("other.example"), "/static/a.css", "static"),
            (Some("other.example"), "/api/admin", "admin"),
        ];
        for (host, path, want) in cases {
            let got = m.find(host, path).map(|i| names[i]);
            assert_eq!(got, Some(want), "host {host:?} path {path}");
        }
    }

    #[test]
    fn no_match_without_a_root_route() {
        let m = Matcher::new([(None, "/api".to_string())]);
        assert_eq!(m.find(None, "/api/x"), Some(0));
        assert_eq!(m.find(None, "/"), None);
        assert_eq!(m.find(None, "/ap"), None);
        let m = Matcher::new([(Some("a.example".to_string()), "/".to_string())]);
        assert_eq!(m.find(None, "/"), None);
        assert_eq!(m.find(Some("b.example"), "/"), None);
    }

    #[test]
    fn strips_prefixes() {
        let cases = [
            ("/api", "/api/users", "/users"),
            ("/api", "/api", "/"),
            ("/api", "/api/", "/"),
            ("/", "/x/y", "/x/y"),
            ("/a/b", "/a/b/c", "/c"),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(strip_prefix(prefix, path), want, "{prefix} {path}");
        }
    }

    #[test]
    fn host_names() {
        let cases = [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("10.0.0.1:80", "10.0.0.1"),
        ];
        for (authority, want) in cases {
            assert_eq!(host_name(authority), want);
        }
    }
}
