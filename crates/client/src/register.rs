//! Registration: an instance that stays in the registry while it lives.
//!
//! `registry.register("user.rpc", "10.0.0.7:8080").ttl(10).await` grants a
//! lease, writes the instance record with it and returns a
//! [`Registration`]. A background task then:
//! - keeps the lease alive with a [`KeptLease`], which renews it every
//!   TTL/3 and rides out broken connections;
//! - when the lease is lost anyway (the registry forgot it, e.g. after a
//!   restart that outlived it, or no renewal got through in time) registers
//!   again under the same instance id, retrying with backoff until it
//!   succeeds;
//! - watches its own key with a resumable watch and writes it back if
//!   someone deletes it.
//!
//! `deregister().await` stops the task and revokes the lease, removing the
//! record at once; dropping the handle does the same on a best-effort basis.
//! What happens is reported as [`RegistrationEvent`]s.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use roster_proto::etcdserverpb::{LeaseRevokeRequest, PutRequest, RangeRequest};
use tokio::sync::broadcast;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::lease::KeptLease;
use crate::registry::Registry;
use crate::watch::{WatchSpec, WatchUpdate, Watcher};

/// Default lease TTL of a registration, in seconds.
pub const DEFAULT_TTL: i64 = 10;

/// What happened to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// The instance was written under a new lease.
    Registered {
        /// The lease.
        lease: i64,
    },
    /// The lease was lost; registering again follows.
    Lost {
        /// Why it is considered lost.
        reason: String,
    },
    /// The instance was written again after a loss.
    Reregistered {
        /// The new lease.
        lease: i64,
    },
    /// Someone deleted the record; it was written back.
    Restored,
}

/// How a registration is to be made; await it to register.
pub struct RegisterBuilder {
    registry: Registry,
    service: String,
    instance: Instance,
    ttl: i64,
}

impl Registry {
    /// Starts describing a registration of `addr` for `service`.
    pub fn register(&self, service: &str, addr: &str) -> RegisterBuilder {
        let id = format!("{:016x}", rand::random::<u64>());
        RegisterBuilder {
            registry: self.clone(),
            service: service.to_string(),
            instance: Instance::new(id, addr),
            ttl: DEFAULT_TTL,
        }
    }
}

impl RegisterBuilder {
    /// Lease TTL in seconds (default 10).
    pub fn ttl(mut self, secs: i64) -> Self {
        self.ttl = secs;
        self
    }
    /// Instance id (default: random).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.instance.id = id.into();
        self
    }
    /// Adds a metadata label.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.instance.metadata.insert(key.into(), value.into());
        self
    }
    /// Weight for weighted balancers (default 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.instance.weight = weight;
        self
    }
    /// Failure domain.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.instance.zone = Some(zone.into());
        self
    }
    /// Service version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.instance.version = Some(version.into());
        self
    }

    async fn start(mut self) -> Result<Registration> {
        self.instance.registered_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64);
        let key = format!(
            "{}{}",
            self.registry.service_prefix(&self.service),
            self.instance.id
        );
        let (events, _) = broadcast::channel(64);
        let keeper = Keeper {
            client: self.registry.client.clone(),
            key: key.clone(),
            value: self.instance.to_json(),
            ttl: self.ttl,
            events: events.clone(),
        };
        let (lease, rev) = keeper.register().await?;
        let _ = events.send(RegistrationEvent::Registered { lease: lease.id() });
        let slot = Arc::new(Mutex::new(lease));
        let task = tokio::spawn(keeper.run(slot.clone(), rev));
        Ok(Registration {
            key,
            instance: self.instance,
            client: self.registry.client.clone(),
            lease: slot,
            events,
            task,
        })
    }
}

impl IntoFuture for RegisterBuilder {
    type Output = Result<Registration>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.start())
    }
}

/// A live registration. Deregister it, or drop it, to leave the registry.
pub struct Registration {
    key: String,
    instance: Instance,
    client: Client,
    /// The lease currently holding the record; the task swaps it when it
    /// registers again.
    lease: Arc<Mutex<KeptLease>>,
    events: broadcast::Sender<RegistrationEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// The record's key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The instance as registered.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }
    /// The lease currently holding the record.
    pub fn lease_id(&self) -> i64 {
        self.lease.lock().id()
    }
    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<RegistrationEvent> {
        self.events.subscribe()
    }

    /// Stops keeping the record alive and revokes its lease, removing it.
    pub async fn deregister(self) -> Result<()> {
        // The task may be inside a call to an unreachable registry; it
        // holds nothing that needs a clean exit.
        self.task.abort();
        let (client, id) = (self.client.clone(), self.lease_id());
        // Dropping `self` lets the kept lease go, which also revokes it;
        // revoking here first is what reports the outcome.
        let revoke = LeaseRevokeRequest { id };
        client.unary(client.lease().lease_revoke(revoke)).await?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The kept lease is dropped with the last reference to it, which
        // revokes it best-effort.
        self.task.abort();
    }
}

/// The part of a registration the background task needs.
struct Keeper {
    client: Client,
    key: String,
    value: String,
    ttl: i64,
    events: broadcast::Sender<RegistrationEvent>,
}

impl Keeper {
    /// Grants a kept lease and writes the record with it.
    async fn register(&self) -> Result<(KeptLease, i64)> {
        let lease = self.client.grant_kept(self.ttl).await?;
        let rev = self.put(lease.id()).await?;
        Ok((lease, rev))
    }

    /// Writes the record under `lease`; returns the write's revision.
    async fn put(&self, lease: i64) -> Result<i64> {
        let put = PutRequest {
            key: self.key.clone().into_bytes(),
            value: self.value.clone().into_bytes(),
            lease,
            ..Default::default()
        };
        let r = self.client.unary(self.client.kv().put(put)).await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// Keeps the registration in place until the task is aborted.
    async fn run(self, slot: Arc<Mutex<KeptLease>>, mut rev: i64) {
        let backoff = self.client.options().backoff;
        loop {
            let reason = self.keep(&slot, rev).await;
            tracing::warn!(key = %self.key, %reason, "registration lost; registering again");
            let _ = self.events.send(RegistrationEvent::Lost { reason });
            let mut attempt = 0;
            let lease = loop {
                tokio::time::sleep(backoff.delay(attempt)).await;
                match self.register().await {
                    Ok(done) => break done,
                    Err(e) => {
                        tracing::debug!(key = %self.key, error = %e, "registering again failed");
                        attempt = (attempt + 1).min(16);
                    }
                }
            };
            let id = lease.0.id();
            rev = lease.1;
            // The old lease, lost already, is revoked as it is dropped.
            *slot.lock() = lease.0;
            let _ = self
                .events
                .send(RegistrationEvent::Reregistered { lease: id });
        }
    }

    /// Keeps the record in place, writing it back whenever it is deleted,
    /// until the lease holding it is lost; returns why it was lost. `rev`
    /// is the revision of the record's last write.
    async fn keep(&self, slot: &Mutex<KeptLease>, rev: i64) -> String {
        let (lost, lease) = {
            let l = slot.lock();
            (l.lost(), l.id())
        };
        tokio::pin!(lost);
        let backoff = self.client.options().backoff;
        let mut attempt = 0;
        // The latest revision at which the record is known to be in place.
        let mut checked = rev;
        let mut watcher = self.deletions(checked);
        loop {
            tokio::select! {
                reason = &mut lost => return reason,
                update = watcher.next() => {
                    // A deletion, or the end of a watch that cannot resume
                    // (compaction): look, and write the record back if it
                    // is missing.
                    let ended = update.as_ref().is_none_or(WatchUpdate::is_final);
                    match self.restore(lease).await {
                        Err(reason) => return reason,
                        Ok(Some(r)) => {
                            checked = r;
                            attempt = 0;
                        }
                        Ok(None) if ended => {
                            tokio::time::sleep(backoff.delay(attempt)).await;
                            attempt = (attempt + 1).min(16);
                        }
                        Ok(None) => {}
                    }
                    if ended {
                        watcher = self.deletions(checked);
                    }
                }
            }
        }
    }

    /// Watches the record for deletion from the revision after `rev`.
    fn deletions(&self, rev: i64) -> Watcher {
        let spec = WatchSpec::key(self.key.clone())
            .from_revision(rev + 1)
            .no_put();
        self.client.watch_resumable(spec)
    }

    /// Writes the record back if it is missing. Ok(Some(rev)) when the
    /// record is in place as of `rev`, Ok(None) when the registry could not
    /// be asked, Err(reason) when the lease turns out to be gone.
    async fn restore(&self, lease: i64) -> std::result::Result<Option<i64>, String> {
        let get = RangeRequest {
            key: self.key.clone().into_bytes(),
            ..Default::default()
        };
        match self.client.unary(self.client.kv().range(get)).await {
            Ok(r) if !r.kvs.is_empty() => return Ok(r.header.map(|h| h.revision)),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        match self.put(lease).await {
            Ok(r) => {
                let _ = self.events.send(RegistrationEvent::Restored);
                Ok(Some(r))
            }
            Err(Error::Status(s)) if s.code() == tonic::Code::NotFound => {
                Err(s.message().to_string())
            }
            Err(_) => Ok(None),
        }
    }
}
