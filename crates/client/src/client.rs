//! The connection: a list of endpoints, one pinned at a time.
//!
//! Each endpoint gets one lazily connected channel, shared by every clone
//! of the client, so a client can be built while the registry is down and
//! starts working when it comes up. Calls go to one endpoint until it fails,
//! then to the next ([`crate::failover`]). Every
//! unary call the SDK makes is bounded by a timeout ([`Client::unary`]);
//! streams are not, since they are meant to live. Retrying is left to the callers that know
//! what is safe to retry (registration, discovery), using [`Backoff`].

use std::time::Duration;

use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::watch_client::WatchClient;
use roster_proto::v3electionpb::election_client::ElectionClient;
use roster_proto::v3lockpb::lock_client::LockClient;
use tonic::transport::Endpoint;

use crate::error::{Error, Result};
use crate::failover::Failover;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limit on each unary call (and on opening a stream).
    pub timeout: Duration,
    /// Limit on establishing a connection to one endpoint.
    pub connect_timeout: Duration,
    /// How retries back off.
    pub backoff: Backoff,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff: Backoff::default(),
        }
    }
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(3),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): a random time up
    /// to `initial * 2^attempt`, capped at `max`, so that many clients
    /// retrying after one outage do not come back in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms))
    }
}

/// A connection to a Roster or etcd cluster. Cheap to clone: clones share
/// the channel.
#[derive(Clone)]
pub struct Client {
    channel: Failover,
    options: Options,
}

impl Client {
    /// Connects (lazily) to `endpoints`, each `host:port` or `http://host:port`.
    /// Must be called within a tokio runtime.
    pub fn connect<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client> {
        Client::connect_with(endpoints, Options::default())
    }

    /// Like [`Client::connect`], with settings.
    pub fn connect_with<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        options: Options,
    ) -> Result<Client> {
        let mut list = Vec::new();
        for e in endpoints {
            let e = e.as_ref();
            let url = if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            };
            let ep = Endpoint::from_shared(url)
                .map_err(|_| Error::Endpoint(e.to_string()))?
                // No channel-wide timeout: it would also cut the long-lived
                // keepalive and watch streams. Unary calls are bounded by
                // `Client::unary` instead.
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            list.push(ep.connect_lazy());
        }
        if list.is_empty() {
            return Err(Error::Endpoint(String::new()));
        }
        Ok(Client {
            channel: Failover::new(list),
            options,
        })
    }

    /// The settings in use.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Runs a unary call, or opens a stream, within the configured timeout.
    pub async fn unary<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.options.timeout, call).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The raw KV API. Calls made on it directly are not bounded by the
    /// client's timeout; wrap them in [`Client::unary`].
    pub fn kv(&self) -> KvClient<Failover> {
        KvClient::new(self.channel.clone())
    }

    /// The raw Lease API.
    pub fn lease(&self) -> LeaseClient<Failover> {
        LeaseClient::new(self.channel.clone())
    }

    /// The raw Watch API.
    pub fn watch(&self) -> WatchClient<Failover> {
        WatchClient::new(self.channel.clone())
    }

    /// The raw v3lock API (see [`Client::lock`] for the helper).
    pub fn lock_service(&self) -> LockClient<Failover> {
        LockClient::new(self.channel.clone())
    }

    /// The raw v3election API (see [`Client::campaign`] for the helper).
    pub fn election_service(&self) -> ElectionClient<Failover> {
        ElectionClient::new(self.channel.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jitters_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..20 {
            let cap = (100u64 << attempt.min(16)).min(1000);
            for _ in 0..50 {
                let d = b.delay(attempt).as_millis() as u64;
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d} ms outside [{}, {cap}]",
                    cap / 2
                );
            }
        }
    }

    #[tokio::test]
    async fn endpoints_are_checked_but_not_dialled() {
        assert!(Client::connect(Vec::<String>::new()).is_err());
        assert!(Client::connect(["bad endpoint with spaces"]).is_err());
        // Nothing listens there: building still works, calls fail later.
        assert!(Client::connect(["127.0.0.1:1", "http://127.0.0.1:2"]).is_ok());
    }
}
