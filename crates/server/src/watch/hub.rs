//! The registry of watchers and live delivery of published events.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::bytes::Bytes;
use prost::Message;
use roster_proto::etcdserverpb::ResponseHeader;
use roster_proto::mvccpb::{event::EventType, Event, KeyValue};
use roster_proto::roster::EncodedWatchResponse;
use roster_store::index::KeyRange;
use roster_store::Store;
use tokio::sync::{mpsc, Notify};

use super::index::{WatchIndex, WatcherId};

/// What flows to a watch stream's client: responses whose events are
/// already encoded (see `proto/roster/watch.proto`).
pub type Outbound = mpsc::Sender<Result<EncodedWatchResponse, tonic::Status>>;

/// Encodes an event once, for every response that carries it.
pub fn encode_event(e: &Event) -> Bytes {
    Bytes::from(e.encode_to_vec())
}

/// What a watcher asks for: which events, and in what shape.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Keys watched.
    pub range: KeyRange,
    /// Drop PUT events.
    pub no_put: bool,
    /// Drop DELETE events.
    pub no_delete: bool,
    /// Attach the previous key-value to each event.
    pub prev_kv: bool,
    /// Split responses larger than the request limit.
    pub fragment: bool,
}

impl Selector {
    /// True when `e` is for this watcher, ignoring revisions.
    pub fn wants(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        let put = e.r#type == EventType::Put as i32;
        let filtered = if put { self.no_put } else { self.no_delete };
        self.range.contains(&kv.key) && !filtered
    }
}

/// One watcher's selector and cursor.
pub struct Watcher {
    /// What it asks for.
    pub selector: Selector,
    /// Send empty responses when idle (see the stream's progress timer).
    pub progress_notify: bool,
    /// The lowest revision not yet sent.
    pub next_rev: i64,
    /// True while live delivery serves this watcher.
    pub synced: bool,
    /// True if something was sent since the last progress tick.
    pub active: bool,
}

/// One watch stream's share of the hub.
pub struct StreamEntry {
    /// The stream's watchers by watch id. Add and remove them through
    /// [`HubState::add_watcher`] and [`HubState::remove_watcher`], which
    /// keep the key index in step.
    pub watchers: HashMap<i64, Watcher>,
    /// The stream's outbound queue.
    pub tx: Outbound,
    /// Wakes the stream's catch-up task.
    pub wake: Arc<Notify>,
}

/// Hub state, behind one lock.
pub struct HubState {
    /// Highest revision handed to the hub.
    pub last_rev: i64,
    /// Streams by id.
    pub streams: HashMap<u64, StreamEntry>,
    next_stream: u64,
    /// Every watcher by the keys it watches.
    index: WatchIndex,
}

impl HubState {
    /// Adds watcher `watch_id` to stream `stream`. Gives the watcher back
    /// if the stream is gone or already has that id.
    pub fn add_watcher(&mut self, stream: u64, watch_id: i64, w: Watcher) -> Result<(), Watcher> {
        let Some(entry) = self.streams.get_mut(&stream) else {
            return Err(w);
        };
        if entry.watchers.contains_key(&watch_id) {
            return Err(w);
        }
        self.index.insert(&w.selector.range, (stream, watch_id));
        entry.watchers.insert(watch_id, w);
        Ok(())
    }

    /// Removes watcher `watch_id` of stream `stream`, if it is there.
    pub fn remove_watcher(&mut self, stream: u64, watch_id: i64) -> Option<Watcher> {
        let w = self.streams.get_mut(&stream)?.watchers.remove(&watch_id)?;
        self.index.remove(&w.selector.range, (stream, watch_id));
        Some(w)
    }
}

/// Every watcher, and live delivery to them.
pub struct Hub {
    /// The state; the stream module takes the lock too.
    pub state: Mutex<HubState>,
    store: Arc<Store>,
    /// Cluster id, member id and term, for response headers.
    member: (u64, u64, u64),
}

/// The key-value an event's key had just before the event.
pub fn prev_of(store: &Store, e: &Event) -> Option<KeyValue> {
    let kv = e.kv.as_ref()?;
    store.kv_at(&kv.key, kv.mod_revision - 1).ok().flatten()
}

impl Hub {
    /// A hub starting at the store's current revision.
    pub fn new(store: Arc<Store>, cluster_id: u64, member_id: u64, term: u64) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                last_rev: store.revision(),
                streams: HashMap::new(),
                next_stream: 0,
                index: WatchIndex::default(),
            }),
            store,
            member: (cluster_id, member_id, term),
        }
    }

    /// The store, for catch-up reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member.0,
            member_id: self.member.1,
            revision,
            raft_term: self.member.2,
        })
    }

    /// Registers a new stream; returns its id.
    pub fn open_stream(&self, tx: Outbound, wake: Arc<Notify>) -> u64 {
        let mut st = self.state.lock();
        let id = st.next_stream;
        st.next_stream += 1;
        st.streams.insert(
            id,
            StreamEntry {
                watchers: HashMap::new(),
                tx,
                wake,
            },
        );
        id
    }

    /// Forgets a stream and its watchers.
    pub fn close_stream(&self, id: u64) {
        let mut st = self.state.lock();
        if let Some(stream) = st.streams.remove(&id) {
            for (watch_id, w) in stream.watchers {
                st.index.remove(&w.selector.range, (id, watch_id));
            }
        }
    }

    /// The store was replaced by a snapshot at revision `rev`: every
    /// watcher catches up from storage from where it stands, since what
    /// it would have heard in between never passed through here.
    pub fn resync(&self, rev: i64) {
        let mut st = self.state.lock();
        st.last_rev = rev;
        for stream in st.streams.values_mut() {
            for w in stream.watchers.values_mut() {
                w.synced = false;
            }
            stream.wake.notify_one();
        }
    }

    /// Delivers one durable batch's events, all at revisions up to `rev`.
    /// Called by the writer, in revision order, after the store published
    /// them. Never blocks: a watcher that cannot take its events now is
    /// switched to catch-up.
    pub fn publish<E: Borrow<Event>>(&self, events: &[E], rev: i64) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if rev <= st.last_rev {
            return;
        }
        let first_rev = st.last_rev + 1;
        st.last_rev = rev;
        // Every (watcher, event) pair the index finds, grouped by watcher
        // with each watcher's events in order (a sort, not a map of vectors:
        // one allocation however many watchers). Sorted even for one event:
        // a watcher id starts with its stream's, so each stream's responses
        // go out back to back, and its task, woken by the first, finds them
        // all and writes them at once rather than one write per watcher
        // (docs/decisions.md, entry 20).
        let mut hits: Vec<(WatcherId, usize)> = Vec::new();
        for (i, e) in events.iter().map(Borrow::borrow).enumerate() {
            if let Some(kv) = &e.kv {
                st.index.matching(&kv.key, |id| hits.push((id, i)));
            }
        }
        if hits.len() > 1 {
            hits.sort_unstable();
        }
        // Each event is encoded at most twice (with and without its previous
        // key-value), however many watchers receive it.
        let mut plain: Vec<Option<Bytes>> = vec![None; events.len()];
        let mut with_prev: Vec<Option<Bytes>> = vec![None; events.len()];
        for group in hits.chunk_by(|a, b| a.0 == b.0) {
            let (stream_id, watch_id) = group[0].0;
            let picks = group.iter().map(|&(_, i)| i);
            let Some(stream) = st.streams.get_mut(&stream_id) else {
                continue;
            };
            let Some(w) = stream.watchers.get_mut(&watch_id) else {
                continue;
            };
            if !w.synced {
                continue;
            }
            let mut mine = Vec::new();
            for i in picks {
                let e = events[i].borrow();
                // Catch-up may already have sent it: the store publishes a
                // batch to readers before the hub hears of it.
                let fresh =
                    e.kv.as_ref()
                        .is_some_and(|kv| kv.mod_revision >= w.next_rev);
                if !fresh || !w.selector.wants(e) {
                    continue;
                }
                let bytes = if w.selector.prev_kv {
                    with_prev[i].get_or_insert_with(|| {
                        let mut e = e.clone();
                        e.prev_kv = prev_of(&self.store, &e);
                        encode_event(&e)
                    })
                } else {
                    plain[i].get_or_insert_with(|| encode_event(e))
                };
                mine.push(bytes.clone());
            }
            if mine.is_empty() {
                continue;
            }
            let resp = EncodedWatchResponse {
                header: self.header(rev),
                watch_id,
                events: mine,
                ..Default::default()
            };
            // Large responses that must be fragmented go the catch-up way,
            // which can send several messages in order.
            let too_big = w.selector.fragment && resp.encoded_len() > FRAGMENT_BYTES;
            if too_big || stream.tx.try_send(Ok(resp)).is_err() {
                // A watcher's cursor moves only when it is sent something,
                // so catch-up starts from this batch at the latest.
                w.synced = false;
                w.next_rev = w.next_rev.max(first_rev);
                stream.wake.notify_one();
            } else {
                w.next_rev = rev + 1;
                w.active = true;
            }
        }
    }
}

/// Size above which a response to a watcher that asked for fragments is
/// split: etcd's request limit plus its gRPC overhead, with the defaults.
pub const FRAGMENT_BYTES: usize =
    crate::config::DEFAULT_MAX_REQUEST_BYTES + crate::config::GRPC_OVERHEAD_BYTES;
