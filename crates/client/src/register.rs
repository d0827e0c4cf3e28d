//! Registration: an instance that stays in the registry while it lives.
//!
//! `registry.register("user.rpc", "10.0.0.7:8080").ttl(10).await` grants a
//! lease, writes the instance record with it and returns a
//! [`Registration`]. A background task then:
//! - renews the lease every TTL/3 on a keepalive stream, reopening the
//!   stream (with backoff) if the connection drops;
//! - declares the lease lost when the server says it is gone (TTL 0 or
//!   "lease not found", e.g. after the registry lost it) or when no renewal
//!   succeeded before the lease would have expired, and registers again
//!   under the same instance id, retrying with backoff until it succeeds;
//! - watches its own key and writes it back if someone deletes it.
//!
//! `deregister().await` stops the task and revokes the lease, removing the
//! record at once; dropping the handle does the same on a best-effort basis.
//! What happens is reported as [`RegistrationEvent`]s.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roster_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::registry::Registry;

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
        let keeper = Keeper {
            client: self.registry.client.clone(),
            key: key.clone(),
            value: self.instance.to_json(),
            ttl: self.ttl,
        };
        let lease = keeper.register().await?;
        let (events, _) = broadcast::channel(64);
        let _ = events.send(RegistrationEvent::Registered { lease });
        let current = Arc::new(AtomicI64::new(lease));
        let task = tokio::spawn(keeper.clone().run(lease, current.clone(), events.clone()));
        Ok(Registration {
            key,
            instance: self.instance,
            client: self.registry.client.clone(),
            lease: current,
            events,
            task: Some(task),
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
    lease: Arc<AtomicI64>,
    events: broadcast::Sender<RegistrationEvent>,
    task: Option<tokio::task::JoinHandle<()>>,
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
        self.lease.load(Ordering::Acquire)
    }
    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<RegistrationEvent> {
        self.events.subscribe()
    }

    /// Stops keeping the record alive and revokes its lease, removing it.
    pub async fn deregister(mut self) -> Result<()> {
        if let Some(task) = self.task.take() {
            // The task may be inside a call to an unreachable registry; it
            // holds nothing that needs a clean exit.
            task.abort();
            let _ = task.await;
        }
        let id = self.lease_id();
        self.client
            .lease()
            .lease_revoke(LeaseRevokeRequest { id })
            .await?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        let id = self.lease_id();
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let revoke = LeaseRevokeRequest { id };
                let _ = client.unary(client.lease().lease_revoke(revoke)).await;
            });
        }
    }
}

/// The part of a registration the background task needs.
#[derive(Clone)]
struct Keeper {
    client: Client,
    key: String,
    value: String,
    ttl: i64,
}

impl Keeper {
    /// Grants a lease and writes the record with it.
    async fn register(&self) -> Result<i64> {
        let grant = self
            .client
            .lease()
            .lease_grant(LeaseGrantRequest {
                ttl: self.ttl,
                id: 0,
            })
            .await?;
        let lease = grant.into_inner().id;
        self.put(lease).await?;
        Ok(lease)
    }

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

    async fn run(
        self,
        mut lease: i64,
        current: Arc<AtomicI64>,
        events: broadcast::Sender<RegistrationEvent>,
    ) {
        let backoff = self.client.options().backoff;
        loop {
            let reason = self.keep(lease, &events).await;
            tracing::warn!(key = %self.key, %reason, "registration lost; registering again");
            let _ = events.send(RegistrationEvent::Lost { reason });
            let mut attempt = 0;
            lease = loop {
                tokio::time::sleep(backoff.delay(attempt)).await;
                match self.register().await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::debug!(key = %self.key, error = %e, "registering again failed");
                        attempt += 1;
                    }
                }
            };
            current.store(lease, Ordering::Release);
            let _ = events.send(RegistrationEvent::Reregistered { lease });
        }
    }

    /// Keeps `lease` alive and the record in place until the lease is lost
    /// (the task is aborted to stop it). Returns why the lease is lost.
    async fn keep(&self, lease: i64, events: &broadcast::Sender<RegistrationEvent>) -> String {
        let ttl = Duration::from_secs(self.ttl.max(1) as u64);
        let mut deadline = Instant::now() + ttl;
        let backoff = self.client.options().backoff;
        let mut attempt = 0;
        loop {
            // (Re)open both streams; a failure costs a backoff, and the lease
            // counts as lost once its deadline has passed unrenewed.
            match self.streams(lease, ttl, &mut deadline, events).await {
                Ok(lost) => return lost,
                Err(e) => tracing::debug!(key = %self.key, error = %e, "registration stream broke"),
            }
            if Instant::now() >= deadline {
                return "no keepalive succeeded before the lease expired".into();
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
            attempt += 1;
        }
    }

    async fn streams(
        &self,
        lease: i64,
        ttl: Duration,
        deadline: &mut Instant,
        events: &broadcast::Sender<RegistrationEvent>,
    ) -> Result<String> {
        // Make sure the record is there (it may have gone while we were
        // cut off), and watch it from the revision seen.
        let got = self
            .client
            .kv()
            .range(RangeRequest {
                key: self.key.clone().into_bytes(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut rev = got.header.map_or(0, |h| h.revision);
        if got.kvs.is_empty() {
            match self.put(lease).await {
                Ok(r) => {
                    rev = r;
                    let _ = events.send(RegistrationEvent::Restored);
                }
                Err(Error::Status(s)) if s.code() == tonic::Code::NotFound => {
                    return Ok(s.message().to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let (wtx, wrx) = mpsc::channel(4);
        let create = WatchCreateRequest {
            key: self.key.clone().into_bytes(),
            start_revision: rev + 1,
            filters: vec![FilterType::Noput as i32],
            ..Default::default()
        };
        wtx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| Error::Closed)?;
        let mut watch = self
            .client
            .watch()
            .watch(ReceiverStream::new(wrx))
            .await?
            .into_inner();

        let (ktx, krx) = mpsc::channel(4);
        // Queue the first renewal before opening the stream: etcd sends the
        // stream's response headers only once a request has arrived, so
        // waiting for them with nothing sent would wait forever.
        ktx.send(LeaseKeepAliveRequest { id: lease })
            .await
            .map_err(|_| Error::Closed)?;
        let mut keepalive = self
            .client
            .lease()
            .lease_keep_alive(ReceiverStream::new(krx))
            .await?
            .into_inner();
        let mut tick = tokio::time::interval_at(Instant::now() + ttl / 3, ttl / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    ktx.send(LeaseKeepAliveRequest { id: lease }).await.map_err(|_| Error::Closed)?;
                }
                resp = keepalive.message() => {
                    let resp = resp?.ok_or(Error::Closed)?;
                    if resp.ttl <= 0 {
                        return Ok("the registry no longer knows the lease".into());
                    }
                    *deadline = Instant::now() + Duration::from_secs(resp.ttl as u64);
                }
                resp = watch.message() => {
                    let resp = resp?.ok_or(Error::Closed)?;
                    if resp.canceled {
                        return Err(Error::Closed);
                    }
                    if !resp.events.is_empty() {
                        match self.put(lease).await {
                            Ok(_) => { let _ = events.send(RegistrationEvent::Restored); }
                            Err(Error::Status(s)) if s.code() == tonic::Code::NotFound => {
                                return Ok(s.message().to_string());
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
    }
}
