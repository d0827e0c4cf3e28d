//! The registry of watchers and live delivery of published events.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
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

use super::index::{Slot, WatchIndex, WatcherId};

/// What flows to a watch stream's client: responses whose events are
/// already encoded (see `proto/roster/watch.proto`).
pub type Outbound = mpsc::Sender<Result<EncodedWatchResponse, tonic::Status>>;

/// The bytes a stream has queued and its client has not yet taken.
///
/// The queue is bounded in responses, which bounds live delivery (its
/// responses share their events' bytes) but not catch-up, whose responses
/// are each a step of history. Catch-up waits for the bytes queued to fall
/// under a budget before it reads its next step ([`Queued::drained`]), so
/// that a slow client holds at most the budget and a step. Whoever sends
/// adds ([`Queued::add`]) before sending; whoever takes subtracts.
#[derive(Default)]
pub struct Queued {
    bytes: AtomicUsize,
    drained: Notify,
}

/// Bytes a response holds in the queue: about its encoded size.
pub fn queued_len(r: &Result<EncodedWatchResponse, tonic::Status>) -> usize {
    r.as_ref().map_or(0, |r| r.encoded_len())
}

impl Queued {
    /// Counts `n` bytes about to be queued.
    pub fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Relaxed);
    }

    /// Counts `n` bytes taken off the queue (or that failed to go on it).
    pub fn taken(&self, n: usize) {
        let before = self.bytes.fetch_sub(n, Relaxed);
        if before.saturating_sub(n) <= QUEUED_BUDGET {
            self.drained.notify_one();
        }
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    /// Waits until no more than [`QUEUED_BUDGET`] bytes are queued.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.bytes() <= QUEUED_BUDGET {
                return;
            }
            notified.await;
        }
    }
}

/// Bytes a stream may have queued before its catch-up waits.
pub const QUEUED_BUDGET: usize = 64 * 1024;

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
    /// True if something was sent since the last progress tick.
    pub active: bool,
    /// Where it sits in the hub's key index while it is synced (live
    /// delivery serves it); `None` while it is behind and its stream's
    /// catch-up serves it.
    slot: Option<Slot>,
}

impl Watcher {
    /// A watcher that has been sent nothing below `next_rev`. It starts
    /// behind: its stream's catch-up syncs it.
    pub fn new(selector: Selector, progress_notify: bool, next_rev: i64) -> Watcher {
        Watcher {
            selector,
            progress_notify,
            next_rev,
            active: false,
            slot: None,
        }
    }

    /// True while live delivery serves this watcher.
    pub fn synced(&self) -> bool {
        self.slot.is_some()
    }
}

/// One watch stream's share of the hub.
pub struct StreamEntry {
    /// The stream's watchers by watch id. Add and remove them through
    /// [`HubState`]'s methods, which keep the key index in step.
    pub watchers: HashMap<i64, Watcher>,
    /// The ids of the watchers that are behind, for its catch-up: a stream
    /// may hold many watchers and only some of them be behind.
    behind: BTreeSet<i64>,
    /// The stream's outbound queue.
    pub tx: Outbound,
    /// The bytes in it.
    pub queued: Arc<Queued>,
    /// Wakes the stream's catch-up task.
    pub wake: Arc<Notify>,
}

impl StreamEntry {
    /// A watcher of this stream that is behind, if any.
    pub fn first_behind(&self) -> Option<i64> {
        self.behind.first().copied()
    }

    /// True when no watcher of this stream is behind.
    pub fn all_synced(&self) -> bool {
        self.behind.is_empty()
    }
}

/// Hub state, behind one lock.
///
/// A watcher is in exactly one of two places: synced, in the key index
/// where publishing finds it; or behind, in its stream's `behind` set where
/// catch-up finds it. The methods here are the only way between them.
pub struct HubState {
    /// Highest revision handed to the hub.
    pub last_rev: i64,
    /// Streams by id.
    pub streams: HashMap<u64, StreamEntry>,
    next_stream: u64,
    /// The synced watchers by the keys they watch.
    index: WatchIndex,
}

impl HubState {
    /// Adds watcher `watch_id` to stream `stream`, behind. Gives the
    /// watcher back if the stream is gone or already has that id.
    pub fn add_watcher(
        &mut self,
        stream: u64,
        watch_id: i64,
        mut w: Watcher,
    ) -> Result<(), Watcher> {
        let Some(entry) = self.streams.get_mut(&stream) else {
            return Err(w);
        };
        if entry.watchers.contains_key(&watch_id) {
            return Err(w);
        }
        w.slot = None;
        entry.behind.insert(watch_id);
        entry.watchers.insert(watch_id, w);
        Ok(())
    }

    /// Removes watcher `watch_id` of stream `stream`, if it is there.
    pub fn remove_watcher(&mut self, stream: u64, watch_id: i64) -> Option<Watcher> {
        let entry = self.streams.get_mut(&stream)?;
        let w = entry.watchers.remove(&watch_id)?;
        entry.behind.remove(&watch_id);
        if let Some(slot) = w.slot {
            self.unindex(&w.selector.range, (stream, watch_id), slot);
        }
        Some(w)
    }

    /// Moves a watcher that is behind to live delivery. Answers false if
    /// it is gone.
    pub fn sync(&mut self, stream: u64, watch_id: i64) -> bool {
        let Some(entry) = self.streams.get_mut(&stream) else {
            return false;
        };
        let Some(w) = entry.watchers.get_mut(&watch_id) else {
            return false;
        };
        if w.slot.is_none() {
            w.slot = Some(self.index.insert(&w.selector.range, (stream, watch_id)));
            entry.behind.remove(&watch_id);
        }
        true
    }

    /// Moves a synced watcher behind and wakes its stream's catch-up.
    fn fall_behind(&mut self, stream: u64, watch_id: i64) {
        let Some(entry) = self.streams.get_mut(&stream) else {
            return;
        };
        let Some(w) = entry.watchers.get_mut(&watch_id) else {
            return;
        };
        entry.behind.insert(watch_id);
        entry.wake.notify_one();
        if let Some(slot) = w.slot.take() {
            let range = w.selector.range.clone();
            self.unindex(&range, (stream, watch_id), slot);
        }
    }

    /// Takes a watcher out of the index, updating the slot of the one that
    /// took its place.
    fn unindex(&mut self, range: &KeyRange, id: WatcherId, slot: Slot) {
        if let Some(((s, w), at)) = self.index.remove(range, id, slot) {
            if let Some(moved) = self
                .streams
                .get_mut(&s)
                .and_then(|e| e.watchers.get_mut(&w))
            {
                moved.slot = Some(at);
            }
        }
    }
}

/// Every watcher, and live delivery to them.
pub struct Hub {
    /// The state; the stream module takes the lock too.
    pub state: Mutex<HubState>,
    store: Arc<Store>,
    /// Cluster id, member id and term, for response headers.
    member: (u64, u64, u64),
    /// Catch-up reads running at once, over all streams.
    reads: tokio::sync::Semaphore,
}

/// Catch-up reads of history that may run at once. They are CPU work on
/// blocking threads: more at once than there are cores would only add
/// threads, each with a step of history in hand, and finish no sooner.
pub const CATCH_UP_READS: usize = 4;

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
            reads: tokio::sync::Semaphore::new(CATCH_UP_READS),
        }
    }

    /// The store, for catch-up reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Waits for a turn to read history for catch-up; the turn lasts as
    /// long as the permit.
    pub async fn read_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.reads
            .acquire()
            .await
            .expect("the hub never closes its semaphore")
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
    pub fn open_stream(&self, tx: Outbound, queued: Arc<Queued>, wake: Arc<Notify>) -> u64 {
        let mut st = self.state.lock();
        let id = st.next_stream;
        st.next_stream += 1;
        st.streams.insert(
            id,
            StreamEntry {
                watchers: HashMap::new(),
                behind: BTreeSet::new(),
                tx,
                queued,
                wake,
            },
        );
        id
    }

    /// Forgets a stream and its watchers.
    pub fn close_stream(&self, id: u64) {
        let mut st = self.state.lock();
        let ids: Vec<i64> = match st.streams.get(&id) {
            Some(stream) => stream.watchers.keys().copied().collect(),
            None => return,
        };
        for watch_id in ids {
            st.remove_watcher(id, watch_id);
        }
        st.streams.remove(&id);
    }

    /// The store was replaced by a snapshot at revision `rev`: every
    /// watcher catches up from storage from where it stands, since what
    /// it would have heard in between never passed through here.
    pub fn resync(&self, rev: i64) {
        let mut st = self.state.lock();
        st.last_rev = rev;
        st.index = WatchIndex::default();
        for stream in st.streams.values_mut() {
            for (&id, w) in stream.watchers.iter_mut() {
                w.slot = None;
                stream.behind.insert(id);
            }
            stream.wake.notify_one();
        }
    }

    /// Delivers one durable batch's events, all at revisions up to `rev`.
    /// Called by the writer, in revision order, after the store published
    /// them. Never blocks: a watcher that cannot take its events now falls
    /// behind, out of the index, so that it costs later batches nothing
    /// until catch-up has brought it level.
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
        let mut fell_behind = Vec::new();
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
            debug_assert!(w.synced(), "only synced watchers are indexed");
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
            let len = resp.encoded_len();
            let too_big = w.selector.fragment && len > FRAGMENT_BYTES;
            stream.queued.add(len);
            let sent = !too_big && stream.tx.try_send(Ok(resp)).is_ok();
            if !sent {
                stream.queued.taken(len);
                // A watcher's cursor moves only when it is sent something,
                // so catch-up starts from this batch at the latest.
                w.next_rev = w.next_rev.max(first_rev);
                fell_behind.push((stream_id, watch_id));
            } else {
                w.next_rev = rev + 1;
                w.active = true;
            }
        }
        for (stream, watch_id) in fell_behind {
            st.fall_behind(stream, watch_id);
        }
    }
}

/// Size above which a response to a watcher that asked for fragments is
/// split: etcd's request limit plus its gRPC overhead, with the defaults.
pub const FRAGMENT_BYTES: usize =
    crate::config::DEFAULT_MAX_REQUEST_BYTES + crate::config::GRPC_OVERHEAD_BYTES;

#[cfg(test)]
mod tests {
    use super::*;
    use roster_proto::mvccpb::event::EventType;

    fn put_at(key: &[u8], rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                value: b"v".to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    /// A crowd of watchers on one prefix whose streams are not read: after
    /// the first batches fill the queues, every watcher is behind, out of
    /// the index, and later batches find no one to visit; each is owed
    /// exactly what it was not sent.
    #[test]
    fn watchers_that_cannot_take_events_leave_the_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let hub = Hub::new(store, 1, 1, 1);
        let range = KeyRange::new(b"/svc/", b"/svc0");
        let (streams, per_stream) = (10u64, 500i64);
        let mut queues = Vec::new();
        for _ in 0..streams {
            // Room for one response per stream.
            let (tx, rx) = mpsc::channel(1);
            let id = hub.open_stream(tx, Arc::default(), Arc::new(Notify::new()));
            queues.push(rx);
            let mut st = hub.state.lock();
            for w in 0..per_stream {
                let sel = Selector {
                    range: range.clone(),
                    no_put: false,
                    no_delete: false,
                    prev_kv: false,
                    fragment: false,
                };
                assert!(st.add_watcher(id, w, Watcher::new(sel, false, 2)).is_ok());
                assert!(st.sync(id, w));
            }
        }
        let total = (streams as usize) * per_stream as usize;
        assert_eq!(hub.state.lock().index.len(), total);

        hub.publish(&[put_at(b"/svc/a", 2)], 2);
        {
            let st = hub.state.lock();
            // One watcher per stream got the one place in its queue.
            assert_eq!(st.index.len(), streams as usize);
            for s in st.streams.values() {
                assert_eq!(s.behind.len(), per_stream as usize - 1);
                for (id, w) in &s.watchers {
                    assert_eq!(w.synced(), !s.behind.contains(id));
                    let owed = if w.synced() { 3 } else { 2 };
                    assert_eq!(w.next_rev, owed, "cursor of a behind watcher");
                }
            }
        }
        hub.publish(&[put_at(b"/svc/b", 3)], 3);
        hub.publish(&[put_at(b"/svc/c", 4)], 4);
        let st = hub.state.lock();
        assert!(st.index.is_empty(), "no stalled watcher is visited again");
        for s in st.streams.values() {
            assert!(!s.all_synced());
            assert_eq!(s.behind.len(), per_stream as usize);
            assert!(s.watchers.values().all(|w| (2..=3).contains(&w.next_rev)));
        }
        drop(st);

        // Cancelling behind watchers and closing streams leaves nothing.
        hub.state.lock().remove_watcher(0, 0);
        for id in 0..streams {
            hub.close_stream(id);
        }
        let st = hub.state.lock();
        assert!(st.index.is_empty() && st.streams.is_empty());
        drop(queues);
    }
}
