//! One switch between Roster and the real etcd.
//!
//! A test that claims etcd's behaviour starts its server with
//! [`Server::start`]. By default that is an in-process Roster node; with
//! `ROSTER_TEST_AGAINST_ETCD=1` it is the real etcd, and the same body
//! checks that its expectations are etcd's. `scripts/test.sh` runs the
//! portable tests both ways.

use std::time::Duration;

use crate::etcd::Etcd;
use crate::node::TestNode;

/// True when `ROSTER_TEST_AGAINST_ETCD` is set and not empty: then
/// [`Server::start`] starts the real etcd.
fn against_etcd() -> bool {
    std::env::var_os("ROSTER_TEST_AGAINST_ETCD").is_some_and(|v| !v.is_empty())
}

/// A setting both servers take: as a [`roster_server::Config`] field for
/// Roster, as the flag of the same name for etcd.
#[derive(Debug, Clone, Copy)]
pub enum Setting {
    /// `--max-txn-ops`.
    MaxTxnOps(usize),
    /// `--max-request-bytes`.
    MaxRequestBytes(usize),
    /// `--experimental-watch-progress-notify-interval`.
    ProgressNotifyInterval(Duration),
    /// `--quota-backend-bytes`.
    QuotaBackendBytes(u64),
}

impl Setting {
    fn apply(self, config: &mut roster_server::Config) {
        match self {
            Setting::MaxTxnOps(n) => config.max_txn_ops = n,
            Setting::MaxRequestBytes(n) => config.max_request_bytes = n,
            Setting::ProgressNotifyInterval(d) => config.watch_progress_notify_interval = d,
            Setting::QuotaBackendBytes(n) => config.quota_backend_bytes = n,
        }
    }

    fn flag(self) -> String {
        match self {
            Setting::MaxTxnOps(n) => format!("--max-txn-ops={n}"),
            Setting::MaxRequestBytes(n) => format!("--max-request-bytes={n}"),
            Setting::ProgressNotifyInterval(d) => format!(
                "--experimental-watch-progress-notify-interval={}ms",
                d.as_millis()
            ),
            Setting::QuotaBackendBytes(n) => format!("--quota-backend-bytes={n}"),
        }
    }
}

/// The server under test: a Roster node, or the real etcd.
pub enum Server {
    /// Roster, in-process.
    Roster(TestNode),
    /// The real etcd.
    Etcd(Etcd),
}

impl Server {
    /// Starts a fresh server with etcd's defaults.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a fresh server with `settings` changed from etcd's defaults.
    pub fn start_with(settings: &[Setting]) -> Server {
        if against_etcd() {
            Server::Etcd(Etcd::start_with(
                settings.iter().map(|s| s.flag()).collect(),
            ))
        } else {
            let settings = settings.to_vec();
            let node = TestNode::builder().config(move |c| {
                for s in settings {
                    s.apply(c);
                }
            });
            Server::Roster(node.start())
        }
    }

    /// Starts a fresh server whose clock the test moves with
    /// [`Server::pass`]: a paused Roster node, or etcd on real time.
    pub fn start_paused() -> Server {
        if against_etcd() {
            Server::Etcd(Etcd::start())
        } else {
            Server::Roster(TestNode::builder().paused().start())
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        match self {
            Server::Roster(r) => r.endpoint(),
            Server::Etcd(e) => e.endpoint(),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// Kills the server; [`Server::restart`] brings it back.
    pub fn kill(&mut self) {
        match self {
            Server::Roster(r) => r.kill(),
            Server::Etcd(e) => e.kill(),
        }
    }

    /// Kills the server and starts it again on the same data and port.
    pub fn restart(&mut self) {
        match self {
            Server::Roster(r) => r.restart(),
            Server::Etcd(e) => e.restart(),
        }
    }

    /// Lets `d` of the server's time pass: the paused Roster clock is moved
    /// at once; etcd's clock is real, so the test sleeps.
    pub async fn pass(&self, d: Duration) {
        match self {
            Server::Roster(r) => r.advance(d).await,
            // Real time is the only time etcd has.
            Server::Etcd(_) => tokio::time::sleep(d).await,
        }
    }
}
