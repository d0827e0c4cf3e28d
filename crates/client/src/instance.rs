//! Instance records: what a registered service instance looks like in the
//! registry, and how records written by other ecosystems are read.
//!
//! Roster writes `/roster/services/<service>/<instance-id>` with a JSON
//! [`Instance`]. Discovery also reads, read-only, what others write into
//! etcd under a service prefix:
//! - etcd's naming convention: `{"Addr": "...", "Metadata": ...}`;
//! - go-zero's: the key ends in the lease id and the value is the bare
//!   address;
//! - any bare `host:port` value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where instances of all services live by default.
pub const DEFAULT_PREFIX: &str = "/roster/services/";

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within the service.
    pub id: String,
    /// Where to reach it, usually `host:port`.
    pub addr: String,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic for weighted balancers (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure domain, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Version of the service the instance runs, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Unix time in milliseconds when the instance registered, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<u64>,
}

fn default_weight() -> u32 {
    1
}

impl Instance {
    /// An instance with default weight and no labels.
    pub fn new(id: impl Into<String>, addr: impl Into<String>) -> Self {
        Instance {
            id: id.into(),
            addr: addr.into(),
            metadata: BTreeMap::new(),
            weight: 1,
            zone: None,
            version: None,
            registered_at: None,
        }
    }

    /// The record's JSON, as Roster writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Instance always serializes")
    }

    /// Reads a record found at `key` under `prefix`, in any supported format.
    /// Returns `None` for values that are none of them.
    pub fn parse(prefix: &str, key: &[u8], value: &[u8]) -> Option<Instance> {
        let key = std::str::from_utf8(key).ok()?;
        let id = key
            .strip_prefix(prefix)
            .unwrap_or(key)
            .trim_start_matches('/')
            .to_string();
        let text = std::str::from_utf8(value).ok()?.trim();
        if text.starts_with('{') {
            if let Ok(mut i) = serde_json::from_str::<Instance>(text) {
                if i.id.is_empty() {
                    i.id = id;
                }
                return Some(i);
            }
            let naming: EtcdNaming = serde_json::from_str(text).ok()?;
            let mut i = Instance::new(id, naming.addr);
            if let Some(serde_json::Value::Object(m)) = naming.metadata {
                for (k, v) in m {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    i.metadata.insert(k, v);
                }
            }
            return Some(i);
        }
        // go-zero and plain records: the value is the address itself.
        (!text.is_empty() && !text.contains(char::is_whitespace) && text.contains(':'))
            .then(|| Instance::new(id, text))
    }
}

/// etcd's `naming/endpoints` record.
#[derive(Deserialize)]
struct EtcdNaming {
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_supported_format() {
        let p = "/roster/services/user.rpc/";
        let ours = Instance {
            weight: 3,
            zone: Some("a".into()),
            ..Instance::new("i1", "10.0.0.7:8080")
        };
        assert_eq!(
            Instance::parse(
                p,
                b"/roster/services/user.rpc/i1",
                ours.to_json().as_bytes()
            ),
            Some(ours)
        );

        let etcd = br#"{"Addr":"10.0.0.8:80","Metadata":{"dc":"x"}}"#;
        let got = Instance::parse("svc/", b"svc/abc", etcd).unwrap();
        assert_eq!((got.id.as_str(), got.addr.as_str()), ("abc", "10.0.0.8:80"));
        assert_eq!(got.metadata.get("dc").map(String::as_str), Some("x"));

        let gozero =
            Instance::parse("user.rpc/", b"user.rpc/7587870000000123", b"10.0.0.9:9000").unwrap();
        assert_eq!(
            (gozero.id.as_str(), gozero.addr.as_str(), gozero.weight),
            ("7587870000000123", "10.0.0.9:9000", 1)
        );

        assert_eq!(Instance::parse("s/", b"s/x", b"not an address"), None);
        assert_eq!(Instance::parse("s/", b"s/x", b"{broken"), None);
        assert_eq!(Instance::parse("s/", b"s/x", b""), None);
    }
}
