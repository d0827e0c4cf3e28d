//! Distributed locks on etcd's v3lock service.
//!
//! `client.lock("jobs/nightly").await` grants a session lease, keeps it
//! alive ([`KeptLease`]) and asks the server's Lock service for the lock
//! under it; the call returns once the lock is held, however long that
//! takes. The server represents the claim as an ownership key attached to
//! the lease, so the lock is released by whichever comes first: an explicit
//! [`LockGuard::unlock`], dropping the guard (which revokes the lease), or
//! the holder's death (the lease expires after its TTL).
//!
//! A lock is only as good as its lease. If renewals stop getting through —
//! a partition longer than the TTL — the server expires the lease and hands
//! the lock to the next waiter while this holder may still believe it owns
//! it. [`LockGuard::lost`] resolves when that happens, so work done under
//! the lock can be cut short; work that must never overlap should also
//! fence its writes, e.g. compare the guard's [`LockGuard::key`] revision in
//! a txn.
//!
//! A connection lost while waiting is retried with backoff under the same
//! lease; the server removes an abandoned claim itself.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use roster_proto::v3lockpb::{LockRequest, UnlockRequest};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::lease::KeptLease;

/// Default TTL, in seconds, of the session lease a lock is held with.
pub const DEFAULT_SESSION_TTL: i64 = 10;

/// How a lock is to be taken; await it to wait for the lock.
pub struct LockBuilder {
    client: Client,
    name: Vec<u8>,
    ttl: i64,
}

impl Client {
    /// Starts describing the acquisition of the lock `name`.
    pub fn lock(&self, name: impl Into<Vec<u8>>) -> LockBuilder {
        LockBuilder {
            client: self.clone(),
            name: name.into(),
            ttl: DEFAULT_SESSION_TTL,
        }
    }
}

impl LockBuilder {
    /// TTL of the session lease in seconds (default 10): how long a dead
    /// holder keeps the lock.
    pub fn ttl(mut self, secs: i64) -> Self {
        self.ttl = secs;
        self
    }

    async fn acquire(self) -> Result<LockGuard> {
        let lease = self.client.grant_kept(self.ttl).await?;
        let key = wait_under(&self.client, &lease, |id| {
            let mut api = self.client.lock_service();
            let req = LockRequest {
                name: self.name.clone(),
                lease: id,
            };
            async move { Ok(api.lock(req).await?.into_inner().key) }
        })
        .await?;
        Ok(LockGuard {
            client: self.client,
            key,
            lease,
        })
    }
}

impl IntoFuture for LockBuilder {
    type Output = Result<LockGuard>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

/// Runs a blocking coordination call (`call(lease id)`) until it succeeds,
/// retrying it with backoff when the connection fails (the server drops
/// the claim of an abandoned call itself), and giving up if
/// `lease` is lost meanwhile. Shared by locks and campaigns.
pub(crate) async fn wait_under<T, F, Fut>(client: &Client, lease: &KeptLease, call: F) -> Result<T>
where
    F: Fn(i64) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let lost = lease.lost();
    tokio::pin!(lost);
    let backoff = client.options().backoff;
    let mut attempt = 0;
    loop {
        tokio::select! {
            reason = &mut lost => return Err(Error::LeaseLost(reason)),
            r = call(lease.id()) => match r {
                Err(e) if e.is_transport() => {
                    tracing::debug!(error = %e, "coordination call cut off; retrying");
                }
                r => return r,
            }
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = (attempt + 1).min(16);
    }
}

/// A held lock. Unlock it, or drop it, to release it.
pub struct LockGuard {
    client: Client,
    key: Vec<u8>,
    lease: KeptLease,
}

impl LockGuard {
    /// The ownership key; its existence is the lock.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The session lease the lock is held with.
    pub fn lease_id(&self) -> i64 {
        self.lease.id()
    }

    /// A future that resolves if the lock is lost because its lease was,
    /// with the reason.
    pub fn lost(&self) -> impl Future<Output = String> + Send + 'static {
        self.lease.lost()
    }

    /// Releases the lock and ends its session.
    pub async fn unlock(self) -> Result<()> {
        let unlock = UnlockRequest {
            key: self.key.clone(),
        };
        let released = self
            .client
            .unary(self.client.lock_service().unlock(unlock))
            .await;
        // Revoking the session deletes the key as well, so the lock is free
        // even if the Unlock call failed.
        let revoked = self.lease.revoke().await;
        released.and(revoked)
    }
}
