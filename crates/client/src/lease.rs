//! The lease keeper: a lease that stays alive while its holder does.
//!
//! [`Client::grant_kept`] grants a lease and spawns a task that renews it on
//! a keepalive stream every TTL/3, the rhythm etcd's own client uses: two
//! renewals can be missed before the lease is in danger. When the stream
//! breaks (connection lost, registry restarting) the task reopens it with
//! backoff and goes on renewing; nothing is lost as long as one renewal gets
//! through before the lease's deadline.
//!
//! The lease is *lost* when the registry says so (a renewal answered with
//! TTL 0: the lease expired or was revoked) or when the deadline of the last
//! successful renewal passes with no renewal since: the registry will have
//! expired it by then, or will as soon as it can. Loss is final; the keeper
//! reports it through [`KeptLease::lost`] and stops. Whoever holds something
//! under the lease (a registration, a lock, a leadership) decides what to do
//! about it, typically grant a new lease and start over.
//!
//! Dropping a [`KeptLease`] stops renewing and revokes the lease on a
//! best-effort basis, so whatever was attached to it goes at once instead of
//! after its TTL; [`KeptLease::revoke`] does the same and reports the
//! outcome.

use std::time::Duration;

use roster_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};

/// The shortest pause between two attempts to reopen a keepalive stream.
const RETRY_FLOOR: Duration = Duration::from_millis(20);

/// A granted lease kept alive by a background task until it is dropped,
/// revoked, or lost.
pub struct KeptLease {
    id: i64,
    ttl: i64,
    client: Client,
    state: watch::Receiver<Option<String>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Client {
    /// Grants a lease of `ttl` seconds and keeps it alive.
    pub async fn grant_kept(&self, ttl: i64) -> Result<KeptLease> {
        let grant = LeaseGrantRequest { ttl, id: 0 };
        let granted = self.unary(self.lease().lease_grant(grant)).await?;
        Ok(self.keep_alive(granted.id, granted.ttl))
    }

    /// Keeps an existing lease of `ttl` seconds alive (its TTL as granted;
    /// it sets the renewal rhythm).
    pub fn keep_alive(&self, id: i64, ttl: i64) -> KeptLease {
        let (lost_tx, state) = watch::channel(None);
        let renewer = Renewer {
            client: self.clone(),
            id,
            ttl: Duration::from_secs(ttl.max(1) as u64),
        };
        let task = tokio::spawn(async move {
            let reason = renewer.run().await;
            tracing::debug!(lease = id, %reason, "lease lost");
            let _ = lost_tx.send(Some(reason));
        });
        KeptLease {
            id,
            ttl,
            client: self.clone(),
            state,
            task: Some(task),
        }
    }
}

impl KeptLease {
    /// The lease id, to attach keys to.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the lease was granted with, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Why the lease was lost, if it has been.
    pub fn lost_reason(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// A future that resolves once the lease is lost, with the reason. It
    /// borrows nothing, so it can be held across a `select!` loop while the
    /// lease itself is kept elsewhere.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            match state.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // The sender lives in the task; it is gone only if the task
                // was aborted, which happens when the lease is let go.
                Err(_) => "lease keeper stopped".into(),
            }
        }
    }

    /// Stops renewing and revokes the lease, deleting every key attached.
    pub async fn revoke(mut self) -> Result<()> {
        self.stop();
        let revoke = LeaseRevokeRequest { id: self.id };
        self.client
            .unary(self.client.lease().lease_revoke(revoke))
            .await?;
        Ok(())
    }

    /// Stops renewing without revoking: the lease lives out its TTL. For a
    /// process that hands its keys over to a successor, or for tests that
    /// play a crashed holder.
    pub fn forget(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        let (id, client) = (self.id, self.client.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let revoke = LeaseRevokeRequest { id };
                let _ = client.unary(client.lease().lease_revoke(revoke)).await;
            });
        }
    }
}

/// The background task's state.
struct Renewer {
    client: Client,
    id: i64,
    ttl: Duration,
}

impl Renewer {
    /// Renews until the lease is lost; returns why.
    async fn run(self) -> String {
        // The lease was granted (or last known alive) just now; counting
        // its deadline from here errs late by at most one round trip.
        let mut deadline = Instant::now() + self.ttl;
        let backoff = self.client.options().backoff;
        let mut attempt = 0;
        loop {
            match self.stream(&mut deadline, &mut attempt).await {
                Ok(lost) => return lost,
                Err(e) => tracing::debug!(lease = self.id, error = %e, "keepalive stream broke"),
            }
            let now = Instant::now();
            if now >= deadline {
                return "no renewal got through before the lease expired".into();
            }
            // Never sleep through the time left: a partition that heals
            // before the deadline must get a renewal in. Near the deadline
            // the tries come closer together, down to a floor.
            let pause = backoff
                .delay(attempt)
                .min((deadline - now) / 2)
                .max(RETRY_FLOOR);
            attempt = (attempt + 1).min(16);
            tokio::time::sleep(pause).await;
        }
    }

    /// One keepalive stream: renews every TTL/3 and moves `deadline` with
    /// every answer. Ok(reason) when the lease is gone, Err when the stream
    /// broke and should be reopened.
    async fn stream(&self, deadline: &mut Instant, attempt: &mut u32) -> Result<String> {
        let (tx, rx) = mpsc::channel(2);
        // Queue the first renewal before opening the stream: etcd sends the
        // stream's response headers only once a request has arrived, so
        // waiting for them with nothing sent would wait forever.
        tx.send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Error::Closed)?;
        let mut api = self.client.lease();
        let open = api.lease_keep_alive(ReceiverStream::new(rx));
        let mut answers = self.client.unary(open).await?;
        let period = self.ttl / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if tx.send(LeaseKeepAliveRequest { id: self.id }).await.is_err() {
                        return Err(Error::Closed);
                    }
                }
                answer = answers.message() => {
                    let answer = answer?.ok_or(Error::Closed)?;
                    if answer.ttl <= 0 {
                        return Ok("the registry no longer has the lease".into());
                    }
                    *attempt = 0;
                    *deadline = Instant::now() + Duration::from_secs(answer.ttl as u64);
                }
                _ = tokio::time::sleep_until(*deadline) => {
                    return Ok("no renewal got through before the lease expired".into());
                }
            }
        }
    }
}
