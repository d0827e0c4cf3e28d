//! Configuration parsing and validation: defaults, normalization, and an
//! error message that names the field for each kind of mistake.

use std::time::Duration;

use super::*;

#[test]
fn minimal_file_gets_every_default() {
    let c = Config::parse("[[route]]\nservice = \"web\"\n").unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080");
    assert_eq!(c.admin_listen, "127.0.0.1:9901");
    assert_eq!(c.registry.endpoints, ["127.0.0.1:2379"]);
    assert_eq!(c.ejection.consecutive_failures, 3);
    let r = &c.routes[0];
    assert_eq!(r.prefix, "/");
    assert_eq!(r.name.as_deref(), Some("/"));
    assert_eq!(r.balancer, "p2c");
    assert_eq!(r.retries, 1);
    assert!(r.preserve_host);
    assert_eq!(r.timeout, Duration::from_secs(30));
}

#[test]
fn full_file_parses() {
    let c = Config::parse(
        r#"
        listen = "0.0.0.0:80"
        admin_listen = "127.0.0.1:0"
        shutdown_grace = "3s"
        [registry]
        endpoints = ["10.0.0.1:2379", "http://10.0.0.2:2379"]
        prefix = "/svc/"
        [upstream]
        connect_timeout = "250ms"
        pool_idle_timeout = "1m"
        pool_max_idle_per_host = 8
        [ejection]
        consecutive_failures = 5
        cool_down = "30s"
        [[route]]
        name = "api"
        host = "API.example.com"
        prefix = "/v1/"
        service = "api.http"
        strip_prefix = true
        balancer = "consistent_hash"
        hash_key = "header:x-user"
        preserve_host = false
        timeout = "2s"
        retries = 0
        [route.health_check]
        path = "/healthz"
        interval = "1s"
        timeout = "500ms"
        unhealthy_threshold = 1
        "#,
    )
    .unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(3));
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(60));
    let r = &c.routes[0];
    assert_eq!(r.host.as_deref(), Some("api.example.com"));
    assert_eq!(r.prefix, "/v1");
    assert_eq!(
        r.hash_key,
        HashKey::Header(HeaderName::from_static("x-user"))
    );
    let hc = r.health_check.as_ref().unwrap();
    assert_eq!(hc.timeout, Duration::from_millis(500));
}

#[test]
fn route_names_default_to_host_and_prefix() {
    let c = Config::parse(
        r#"
        [[route]]
        prefix = "/a/"
        service = "a"
        [[route]]
        host = "x.org"
        prefix = "/a"
        service = "a"
        "#,
    )
    .unwrap();
    let names: Vec<_> = c.routes.iter().map(|r| r.name.clone().unwrap()).collect();
    assert_eq!(names, ["/a", "x.org/a"]);
}

/// Each bad config, and a piece its error message must contain.
#[test]
fn errors_name_the_field() {
    let cases = [
        ("[[route]]\nservice = \"w\"\nbalancer = \"least\"", "route[0] (\"/\").balancer: unknown balancer \"least\"; one of round_robin"),
        ("[[route]]\nprefix = \"api\"\nservice = \"w\"", "route[0] (\"api\").prefix: \"api\" must be a path"),
        ("[[route]]\nprefix = \"/a\"", "route[0] (\"/a\").service: missing"),
        ("[[route]]\nservice = \"w\"\ntimeout = \"10 parsecs\"", "unknown unit"),
        ("[[route]]\nservice = \"w\"\ntimeout = \"0s\"", "route[0] (\"/\").timeout: must be more than 0"),
        ("[[route]]\nservice = \"w\"\nhost = \"a.b:80\"", "route[0] (\"a.b:80/\").host: \"a.b:80\" must be a host name without port"),
        ("[[route]]\nservice = \"w\"\nhash_key = \"cookie\"", "unknown hash key \"cookie\""),
        ("[[route]]\nservice = \"w\"\nretries = -1", "retries"),
        ("[[route]]\nservice = \"w\"\nstrip = true", "unknown field `strip`"),
        ("lisen = \"1:2\"", "unknown field `lisen`"),
        ("[registry]\nendpoints = []", "registry.endpoints: at least one"),
        ("[ejection]\ncool_down = \"0ms\"", "ejection.cool_down: must be more than 0"),
        (
            "[[route]]\nservice = \"a\"\n[[route]]\nprefix = \"/\"\nservice = \"b\"\nname = \"b\"",
            "route[1] (\"b\").prefix: another route has the same host and prefix",
        ),
        (
            "[[route]]\nservice = \"a\"\nname = \"x\"\n[[route]]\nprefix = \"/b\"\nservice = \"b\"\nname = \"x\"",
            "route[1] (\"x\").name: \"x\" is used by another route",
        ),
        (
            "[[route]]\nservice = \"a\"\n[route.health_check]\npath = \"healthz\"",
            "route[0] (\"/\").health_check.path: \"healthz\" must start with /",
        ),
    ];
    for (text, want) in cases {
        let err = Config::parse(text).expect_err(text).to_string();
        assert!(
            err.contains(want),
            "config:\n{text}\nerror: {err}\nwanted: {want}"
        );
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("fast").is_err());
    assert!(parse_duration("1d").is_err());
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let err = Config::from_file(&path).unwrap_err().to_string();
    assert!(err.starts_with("cannot read"), "{err}");
    std::fs::write(&path, "[[route]]\n").unwrap();
    let err = Config::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("gw.toml: route[0] (\"/\").service"), "{err}");
}

#[test]
fn the_example_file_is_valid_and_shows_the_defaults() {
    let text = include_str!("../../../../docs/gateway.example.toml");
    let c = Config::parse(text).unwrap();
    let d = Config::default();
    assert_eq!(
        (&c.listen, &c.admin_listen, c.shutdown_grace),
        (&d.listen, &d.admin_listen, d.shutdown_grace)
    );
    assert_eq!(
        (&c.registry, &c.upstream, &c.ejection),
        (&d.registry, &d.upstream, &d.ejection)
    );
    let mut first = RouteConfig::new("/", "web");
    first.name = Some("/".into());
    assert_eq!(c.routes[0], first);
    assert_eq!(
        c.routes[1].health_check,
        Some(HealthCheckConfig {
            path: "/healthz".into(),
            ..HealthCheckConfig::default()
        })
    );
}
