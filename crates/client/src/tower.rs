//! The tower adapter: a discovered instance set as a
//! [`tower::discover::Discover`], so any tower balancer — and a tonic
//! [`Channel`] — follows a service's instances.
//!
//! A [`Discovery`] publishes whole snapshots of the instance set; tower's
//! balancers want a stream of `Insert(key, service)` / `Remove(key)`.
//! [`InstanceDiscover`] bridges the two: it follows the snapshots
//! ([`Discovery::updates`]) and diffs each against what it has already
//! told the balancer, keyed by instance id. An instance seen for the first
//! time, or whose record changed in any field, is passed to a mapping
//! function `&Instance -> Option<S>`; `Some(service)` becomes an `Insert`
//! (which replaces the old service of that id), `None` means "do not
//! balance over this one" (and a `Remove` if it was balanced over before).
//! An id that left the set becomes a `Remove`. Working from snapshots
//! rather than from [`Discovery::changes`] means a slow consumer can never
//! miss a change: it simply diffs against a later snapshot.
//!
//! The stream ends when the `Discovery` is dropped. A balancer keeps the
//! services it has when its discover stream ends, just as discovery keeps
//! its last-known list while the registry is unreachable.
//!
//! [`balanced_channel`] is the convenience for tonic: tonic's
//! [`Channel::balance_channel`] takes changes on an mpsc sender, so a task
//! feeds it from an `InstanceDiscover` of [`Endpoint`]s. The task ends when
//! the channel (every clone) or the discovery is dropped.
//!
//! Caveat: tonic connects to each endpoint lazily and never evicts one
//! whose connection fails, so a process killed without deregistering gets
//! calls — which fail fast with `Unavailable`, or `Cancelled` when one was
//! queued on the connection as it broke — until its lease expires and
//! discovery removes it. Callers should retry idempotent calls that fail so
//! ([`is_transport_status`](crate::is_transport_status)); the lease TTL
//! bounds how long that lasts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::tower::discover::Change;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{channel, Channel, Endpoint};

use crate::discover::Discovery;
use crate::instance::Instance;

/// How many changes may wait for a tonic channel to take them; the feeding
/// task waits when the channel is this far behind.
const CHANNEL_CAPACITY: usize = 1024;

/// A [`tower::discover::Discover`] over a discovered instance set: a stream
/// of `Insert` / `Remove` changes keyed by instance id, with services made
/// by a mapping function.
pub struct InstanceDiscover<S, F> {
    make: F,
    /// What has been reported so far, by instance id.
    seen: BTreeMap<String, Seen>,
    /// Changes computed but not yet yielded.
    pending: VecDeque<Change<String, S>>,
    /// The wait for the next snapshot; `None` once the discovery is gone.
    next: Option<NextSnapshot>,
}

type Updates = watch::Receiver<Arc<[Instance]>>;
type NextSnapshot = Pin<Box<dyn Future<Output = Option<Updates>> + Send>>;

/// One instance id as last reported.
#[derive(Debug)]
struct Seen {
    record: Instance,
    /// Whether the balancer holds a service for it.
    inserted: bool,
}

impl<S, F> InstanceDiscover<S, F>
where
    F: FnMut(&Instance) -> Option<S>,
{
    /// Follows `discovery`, making a service for each instance with `make`
    /// (`None` leaves the instance out). The first poll reports the
    /// current set.
    pub fn new(discovery: &Discovery, make: F) -> Self {
        Self::from_updates(discovery.updates(), make)
    }

    /// Follows a snapshot channel such as [`Discovery::updates`]; the
    /// snapshot current at the first poll is reported in full.
    pub fn from_updates(mut updates: Updates, make: F) -> Self {
        updates.mark_changed();
        InstanceDiscover {
            make,
            seen: BTreeMap::new(),
            pending: VecDeque::new(),
            next: Some(next_snapshot(updates)),
        }
    }
}

/// Resolves with the receiver once it has an unseen snapshot, or `None`
/// once the sender (the discovery) is gone.
fn next_snapshot(mut updates: Updates) -> NextSnapshot {
    Box::pin(async move {
        updates.changed().await.ok()?;
        Some(updates)
    })
}

// Nothing in the adapter is pinned in place: the future is boxed.
impl<S, F> Unpin for InstanceDiscover<S, F> {}

impl<S, F> Stream for InstanceDiscover<S, F>
where
    F: FnMut(&Instance) -> Option<S>,
{
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let Some(next) = this.next.as_mut() else {
                return Poll::Ready(None);
            };
            let Some(mut updates) = std::task::ready!(next.as_mut().poll(cx)) else {
                this.next = None;
                return Poll::Ready(None);
            };
            let snapshot = updates.borrow_and_update().clone();
            this.pending
                .extend(diff(&mut this.seen, &snapshot, &mut this.make));
            this.next = Some(next_snapshot(updates));
        }
    }
}

/// The changes that bring a balancer from `seen` to `now`, updating `seen`.
/// Removals come first (in id order), then inserts in snapshot order. When
/// two records share an id, the later one counts.
fn diff<S>(
    seen: &mut BTreeMap<String, Seen>,
    now: &[Instance],
    make: &mut impl FnMut(&Instance) -> Option<S>,
) -> Vec<Change<String, S>> {
    let current: HashMap<&str, &Instance> = now.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut out = Vec::new();
    seen.retain(|id, s| {
        let stays = current.contains_key(id.as_str());
        if !stays && s.inserted {
            out.push(Change::Remove(id.clone()));
        }
        stays
    });
    for i in now {
        if !std::ptr::eq(current[i.id.as_str()], i) {
            continue; // shadowed by a later record with the same id
        }
        if seen.get(&i.id).is_some_and(|s| s.record == *i) {
            continue;
        }
        let service = make(i);
        let seen_now = Seen {
            record: i.clone(),
            inserted: service.is_some(),
        };
        let was_inserted = seen
            .insert(i.id.clone(), seen_now)
            .is_some_and(|s| s.inserted);
        match service {
            Some(s) => out.push(Change::Insert(i.id.clone(), s)),
            None if was_inserted => out.push(Change::Remove(i.id.clone())),
            None => {}
        }
    }
    out
}

/// The plaintext endpoint `http://<addr>` of an instance (an address that
/// already has a scheme is used as is), or `None` if it is not a valid URI.
pub fn http_endpoint(instance: &Instance) -> Option<Endpoint> {
    let url = if instance.addr.contains("://") {
        instance.addr.clone()
    } else {
        format!("http://{}", instance.addr)
    };
    Endpoint::from_shared(url).ok().map(|e| e.tcp_nodelay(true))
}

/// A tonic channel that balances over `discovery`'s instances at
/// [`http_endpoint`]s, following the set as it changes. Must be called
/// within a tokio runtime.
pub fn balanced_channel(discovery: &Discovery) -> Channel {
    balanced_channel_with(discovery, http_endpoint)
}

/// Like [`balanced_channel`], with the endpoint of each instance made by
/// `endpoint` (to set TLS, timeouts, or leave instances out with `None`).
pub fn balanced_channel_with<F>(discovery: &Discovery, endpoint: F) -> Channel
where
    F: FnMut(&Instance) -> Option<Endpoint> + Send + 'static,
{
    feed_channel(InstanceDiscover::new(discovery, endpoint))
}

/// Makes a balanced channel and spawns the task that feeds it `changes`.
fn feed_channel<F>(mut changes: InstanceDiscover<Endpoint, F>) -> Channel
where
    F: FnMut(&Instance) -> Option<Endpoint> + Send + 'static,
{
    let (channel, tx) = Channel::balance_channel::<String>(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        loop {
            // The channel closes its receiver when its last clone is
            // dropped; watching for that ends the task even when the
            // instance set never changes again.
            let change = tokio::select! {
                change = changes.next() => change,
                () = tx.closed() => return,
            };
            let change = match change {
                Some(Ok(Change::Insert(id, e))) => channel::Change::Insert(id, e),
                Some(Ok(Change::Remove(id))) => channel::Change::Remove(id),
                None => return,
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    });
    channel
}

#[cfg(test)]
mod tests;
