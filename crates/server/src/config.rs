//! A node's configuration, with etcd's defaults.

use std::path::PathBuf;

/// Default for `--max-request-bytes`, as in etcd: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Default for `--max-txn-ops`, as in etcd.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Default for `--quota-backend-bytes`, as in etcd: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;
/// Default progress notice interval for idle watchers, as in etcd.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(600);
/// Extra room gRPC gets above the request limit, so that a request slightly
/// over the limit reaches our check and gets etcd's "request is too large"
/// rather than a transport error. etcd uses the same margin.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Human-readable member name, shown by `member list`.
    pub name: String,
    /// Directory holding the node's data.
    pub data_dir: PathBuf,
    /// Client URLs advertised to clients (`member list`); if empty, the
    /// addresses actually listened on are advertised.
    pub advertise_client_urls: Vec<String>,
    /// Peer URLs advertised for this member (shown by `member list`).
    pub advertise_peer_urls: Vec<String>,
    /// Largest accepted request, in bytes.
    pub max_request_bytes: usize,
    /// Most compares, or ops per branch, in one txn.
    pub max_txn_ops: usize,
    /// How often idle watchers that asked for progress notices get one.
    pub watch_progress_notify_interval: std::time::Duration,
    /// Space the store may use before writes that take more are refused
    /// and NOSPACE is raised; 0 means the default, as in etcd.
    pub quota_backend_bytes: u64,
}

impl Config {
    /// A configuration with etcd's defaults and the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            name: "default".into(),
            data_dir: data_dir.into(),
            advertise_client_urls: Vec::new(),
            advertise_peer_urls: vec!["http://localhost:2380".into()],
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            watch_progress_notify_interval: DEFAULT_PROGRESS_NOTIFY_INTERVAL,
            quota_backend_bytes: 0,
        }
    }

    /// The space quota in force: `quota_backend_bytes`, or the default
    /// for 0.
    pub fn quota(&self) -> u64 {
        match self.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BACKEND_BYTES,
            n => n,
        }
    }
}
