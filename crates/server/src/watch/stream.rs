//! One gRPC watch stream: its requests, its catch-up, its progress notices.
//!
//! A single task per stream handles requests (create, cancel, progress) and
//! runs catch-up for the stream's unsynced watchers. Catch-up awaits queue
//! space, so a slow client slows only its own stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;
use prost::Message;
use roster_proto::etcdserverpb::watch_create_request::FilterType;
use roster_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use roster_proto::mvccpb::Event;
use roster_proto::roster::EncodedWatchResponse;
use roster_store::index::KeyRange;
use roster_store::StoreError;
use tokio::sync::{mpsc, Notify};
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use crate::error::recv_error;

use super::hub::{
    encode_event, prev_of, queued_len, Hub, Outbound, Queued, Selector, Watcher, FRAGMENT_BYTES,
};

/// Responses queued per stream before live delivery switches a watcher to
/// catch-up.
const QUEUE: usize = 256;
/// Events read from storage per catch-up step.
const CHUNK: usize = 1000;
/// Bytes of history read per catch-up step, about (whole revisions). Each
/// stream catching up holds a step while it reads and sends it, so this
/// bounds what catching up costs: with a thousand streams, the difference
/// between a thousand small events and a thousand large ones is a
/// gigabyte. One HTTP/2 window's worth (64 KiB) is as much as a reading
/// client takes in one go anyway.
const STEP_BYTES: usize = 64 * 1024;
/// The watch id etcd uses for stream-wide progress responses and refused
/// creates.
const PROGRESS_ALL_ID: i64 = -1;
/// etcd's reason for refusing a create whose range holds no key.
const WATCH_RANGE_EMPTY: &str = "mvcc: watcher range is empty";
/// etcd's reason for refusing a client-chosen id already in use.
const WATCH_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The Watch service.
pub struct WatchService {
    hub: Arc<Hub>,
    progress_interval: Duration,
}

impl WatchService {
    /// A Watch service over `hub`, sending progress notices to idle
    /// watchers that asked for them every `progress_interval`.
    pub fn new(hub: Arc<Hub>, progress_interval: Duration) -> Self {
        WatchService {
            hub,
            progress_interval,
        }
    }
}

/// The responses of one watch stream, as the gRPC layer sends them.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

/// A watch for use inside the server (locks, elections): the same machinery
/// as a client's stream, fed one create request. Dropping it ends it.
pub fn local_watch(hub: &Arc<Hub>, create: WatchCreateRequest) -> LocalWatch {
    let first = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    };
    // The request stream yields the create, then stays open.
    let inbound = tokio_stream::once(Ok(first)).chain(tokio_stream::pending());
    // Never used: only idle watchers asking for notices get them.
    let tick = Duration::from_secs(3600);
    LocalWatch {
        rx: spawn_stream(hub, Box::pin(inbound), tick),
    }
}

/// Registers a stream with the hub and spawns the task serving it; returns
/// the stream's outbound queue.
fn spawn_stream<S>(hub: &Arc<Hub>, inbound: S, tick: Duration) -> Outbox
where
    S: Stream<Item = Result<WatchRequest, Status>> + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let wake = Arc::new(Notify::new());
    let queued = Arc::new(Queued::default());
    let id = hub.open_stream(tx.clone(), queued.clone(), wake.clone());
    let task = StreamTask {
        hub: hub.clone(),
        id,
        tx,
        queued: queued.clone(),
        next_auto_id: 0,
        progress_pending: false,
    };
    tokio::spawn(task.run(inbound, wake, tick));
    Outbox { rx, queued }
}

/// The receiving end of a stream's queue, which counts what it takes.
struct Outbox {
    rx: mpsc::Receiver<Result<EncodedWatchResponse, Status>>,
    queued: Arc<Queued>,
}

impl Stream for Outbox {
    type Item = Result<EncodedWatchResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(r)) = &polled {
            self.queued.taken(queued_len(r));
        }
        polled
    }
}

/// The receiving end of a [`local_watch`].
pub struct LocalWatch {
    rx: Outbox,
}

impl LocalWatch {
    /// The next response, its events decoded; `None` once the watch ended.
    pub async fn recv(&mut self) -> Option<Result<WatchResponse, Status>> {
        Some(self.rx.next().await?.and_then(decode))
    }
}

/// Turns a pre-encoded response back into a `WatchResponse`.
fn decode(r: EncodedWatchResponse) -> Result<WatchResponse, Status> {
    let events = r
        .events
        .iter()
        .map(|b| Event::decode(b.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::internal(format!("decoding a watch event: {e}")))?;
    Ok(WatchResponse {
        header: r.header,
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        fragment: r.fragment,
        events,
    })
}

impl WatchService {
    /// Serves one watch stream: its requests come in on `inbound`, its
    /// responses go out on the returned stream.
    pub fn open(&self, inbound: Streaming<WatchRequest>) -> WatchStream {
        Box::pin(spawn_stream(&self.hub, inbound, self.progress_interval))
    }
}

struct StreamTask {
    hub: Arc<Hub>,
    id: u64,
    tx: Outbound,
    queued: Arc<Queued>,
    next_auto_id: i64,
    /// A progress request waits for catch-up to finish.
    progress_pending: bool,
}

impl StreamTask {
    async fn run<S>(mut self, mut inbound: S, wake: Arc<Notify>, tick: Duration)
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Unpin,
    {
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        // A client may half-close its side once it has sent its requests;
        // etcd goes on serving the watchers it made, and so do we, until
        // the client cancels the call.
        let mut reading = true;
        loop {
            tokio::select! {
                msg = inbound.next(), if reading => match msg {
                    Some(Ok(req)) => {
                        if self.handle(req).await.is_err() {
                            break;
                        }
                    }
                    None => reading = false,
                    // A message that does not decode ends the stream with
                    // the error, as etcd's does.
                    Some(Err(status)) => {
                        let _ = self.tx.send(Err(recv_error(status))).await;
                        break;
                    }
                },
                _ = wake.notified() => {
                    if self.catch_up().await.is_err() {
                        break;
                    }
                }
                _ = progress.tick() => {
                    if self.progress_notify().await.is_err() {
                        break;
                    }
                }
                _ = self.tx.closed() => break,
            }
        }
        self.hub.close_stream(self.id);
    }

    async fn send(&self, resp: EncodedWatchResponse) -> Result<(), ()> {
        let len = resp.encoded_len();
        self.queued.add(len);
        let sent = self.tx.send(Ok(resp)).await;
        if sent.is_err() {
            self.queued.taken(len);
        }
        sent.map_err(|_| ())
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), ()> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                let (found, rev) = {
                    let mut st = self.hub.state.lock();
                    let rev = st.last_rev;
                    let found = st.remove_watcher(self.id, c.watch_id).is_some();
                    (found, rev)
                };
                // etcd answers only a cancel of a watcher that exists.
                if found {
                    let resp = EncodedWatchResponse {
                        header: self.hub.header(rev),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // The revision reported must be one every watcher of the
                // stream has seen: answer now if all are caught up, else
                // once catch-up finishes (as etcd 3.5.8+ does).
                self.progress_pending = true;
                self.answer_progress().await
            }
            None => Ok(()),
        }
    }

    /// Sends a pending stream-wide progress response if every watcher of
    /// the stream is synced.
    async fn answer_progress(&mut self) -> Result<(), ()> {
        if !self.progress_pending {
            return Ok(());
        }
        let rev = {
            let st = self.hub.state.lock();
            let all_synced = st.streams.get(&self.id).is_some_and(|s| s.all_synced());
            all_synced.then_some(st.last_rev)
        };
        if let Some(rev) = rev {
            self.progress_pending = false;
            let resp = EncodedWatchResponse {
                header: self.hub.header(rev),
                watch_id: PROGRESS_ALL_ID,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), ()> {
        let range = KeyRange::new(&c.key, &c.range_end);
        if matches!(&range, KeyRange::Span(start, Some(end)) if end <= start) {
            return self.refuse(WATCH_RANGE_EMPTY).await;
        }
        let outcome = {
            let mut st = self.hub.state.lock();
            let rev = st.last_rev;
            let stream = st.streams.get_mut(&self.id).ok_or(())?;
            let id = if c.watch_id != 0 {
                c.watch_id
            } else {
                // Ids are never reused on a stream, even after a cancel.
                while stream.watchers.contains_key(&self.next_auto_id) {
                    self.next_auto_id += 1;
                }
                self.next_auto_id += 1;
                self.next_auto_id - 1
            };
            let filters = |f: FilterType| c.filters.contains(&(f as i32));
            let selector = Selector {
                range,
                no_put: filters(FilterType::Noput),
                no_delete: filters(FilterType::Nodelete),
                prev_kv: c.prev_kv,
                fragment: c.fragment,
            };
            let next_rev = if c.start_revision > 0 {
                c.start_revision
            } else {
                rev + 1
            };
            // Every watcher starts behind, with one catch-up pass, which
            // syncs it at once when there is no history to send.
            let watcher = Watcher::new(selector, c.progress_notify, next_rev);
            st.add_watcher(self.id, id, watcher)
                .map(|()| (id, rev))
                .map_err(|_| ())
        };
        match outcome {
            Ok((id, rev)) => {
                let resp = EncodedWatchResponse {
                    header: self.hub.header(rev),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                self.send(resp).await?;
                self.catch_up().await
            }
            Err(_) => self.refuse(WATCH_DUPLICATE_ID).await,
        }
    }

    /// Answers a create request that cannot be served: etcd marks such a
    /// response created and canceled, with watch id -1.
    async fn refuse(&self, reason: &str) -> Result<(), ()> {
        let rev = self.hub.state.lock().last_rev;
        let resp = EncodedWatchResponse {
            header: self.hub.header(rev),
            watch_id: PROGRESS_ALL_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.into(),
            ..Default::default()
        };
        self.send(resp).await
    }

    /// Brings every unsynced watcher of this stream up to date from storage.
    async fn catch_up(&mut self) -> Result<(), ()> {
        loop {
            let job = {
                let st = self.hub.state.lock();
                let Some(stream) = st.streams.get(&self.id) else {
                    return Err(());
                };
                stream.first_behind().and_then(|id| {
                    let w = stream.watchers.get(&id)?;
                    Some((id, w.selector.clone(), w.next_rev))
                })
            };
            let Some((id, sel, from)) = job else {
                return self.answer_progress().await;
            };
            // What a client has not taken yet stays queued: read no more
            // history until most of it is gone, or the client is.
            tokio::select! {
                _ = self.queued.drained() => {}
                _ = self.tx.closed() => return Err(()),
            }
            let store = self.hub.store().clone();
            let read = {
                let range = sel.range.clone();
                let _turn = self.hub.read_turn().await;
                tokio::task::spawn_blocking(move || store.events(from, &range, CHUNK, STEP_BYTES))
                    .await
                    .map_err(|_| ())?
            };
            match read {
                Ok((events, last)) => {
                    let store = self.hub.store();
                    let mine: Vec<Bytes> = events
                        .into_iter()
                        .filter(|e| sel.wants(e))
                        .map(|mut e| {
                            if sel.prev_kv {
                                e.prev_kv = prev_of(store, &e);
                            }
                            encode_event(&e)
                        })
                        .collect();
                    let sent = !mine.is_empty();
                    if sent {
                        for resp in responses(&self.hub, id, last, mine, sel.fragment) {
                            self.send(resp).await?;
                        }
                    }
                    let mut st = self.hub.state.lock();
                    let last_rev = st.last_rev;
                    let level = st
                        .streams
                        .get_mut(&self.id)
                        .and_then(|s| s.watchers.get_mut(&id))
                        .is_some_and(|w| {
                            w.next_rev = w.next_rev.max(last + 1);
                            w.active |= sent;
                            w.next_rev > last_rev
                        });
                    // Switch to live delivery only once nothing the hub
                    // has published is still owed to this watcher.
                    if level {
                        st.sync(self.id, id);
                    }
                }
                Err(e) => {
                    let compacted = matches!(e, StoreError::Compacted);
                    let (rev, compact_rev) = {
                        let mut st = self.hub.state.lock();
                        st.remove_watcher(self.id, id);
                        (st.last_rev, self.hub.store().compact_revision())
                    };
                    let resp = EncodedWatchResponse {
                        // etcd sends this one with revision 0 in its header.
                        header: self.hub.header(if compacted { 0 } else { rev }),
                        watch_id: id,
                        canceled: true,
                        compact_revision: if compacted { compact_rev } else { 0 },
                        cancel_reason: if compacted {
                            "etcdserver: mvcc: required revision has been compacted".into()
                        } else {
                            format!("etcdserver: {e}")
                        },
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
            }
        }
    }

    /// Tells idle watchers that asked for it how far the store has got.
    async fn progress_notify(&mut self) -> Result<(), ()> {
        let (ids, rev) = {
            let mut st = self.hub.state.lock();
            let rev = st.last_rev;
            let Some(stream) = st.streams.get_mut(&self.id) else {
                return Err(());
            };
            let mut ids = Vec::new();
            for (&id, w) in stream.watchers.iter_mut() {
                if w.progress_notify && w.synced() && !w.active {
                    ids.push(id);
                }
                w.active = false;
            }
            (ids, rev)
        };
        for id in ids {
            let resp = EncodedWatchResponse {
                header: self.hub.header(rev),
                watch_id: id,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }
}

/// Packs encoded events into responses: one, or for a watcher that asked
/// for it, fragments no larger than the limit, all but the last marked
/// `fragment`.
fn responses(
    hub: &Hub,
    id: i64,
    rev: i64,
    events: Vec<Bytes>,
    fragment: bool,
) -> Vec<EncodedWatchResponse> {
    let whole = EncodedWatchResponse {
        header: hub.header(rev),
        watch_id: id,
        events,
        ..Default::default()
    };
    if !fragment || whole.encoded_len() <= FRAGMENT_BYTES {
        return vec![whole];
    }
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut size = 0;
    for e in whole.events {
        // The event, its field tag and its length prefix.
        let n = e.len() + 8;
        if !part.is_empty() && size + n > FRAGMENT_BYTES {
            out.push(std::mem::take(&mut part));
            size = 0;
        }
        size += n;
        part.push(e);
    }
    out.push(part);
    let last = out.len() - 1;
    out.into_iter()
        .enumerate()
        .map(|(i, events)| EncodedWatchResponse {
            header: hub.header(rev),
            watch_id: id,
            events,
            fragment: i < last,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use roster_proto::etcdserverpb::PutRequest;
    use roster_store::CommandKind;

    use super::*;
    use crate::state::tests::{cmd, machine_and_hub};
    use crate::watch::hub::QUEUED_BUDGET;

    /// A watcher from an old revision whose client reads nothing: catch-up
    /// queues about the budget and one step, not a queue full of steps;
    /// once the client reads, every event arrives, in order, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_for_a_client_that_does_not_read_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, _lessor, hub) = machine_and_hub(dir.path());
        let puts = 2000;
        for i in 0..puts {
            let put = CommandKind::Put(PutRequest {
                key: format!("svc/{i:05}").into_bytes(),
                value: vec![b'v'; 1024],
                ..Default::default()
            });
            sm.apply(&[(i + 1, cmd(put))]).unwrap();
        }
        let create = WatchCreateRequest {
            key: b"svc/".to_vec(),
            range_end: b"svc0".to_vec(),
            start_revision: 1,
            ..Default::default()
        };
        let mut watch = local_watch(&hub, create);
        let queued = watch.rx.queued.clone();
        let bound = QUEUED_BUDGET + STEP_BYTES + 2048;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while queued.bytes() <= QUEUED_BUDGET {
            assert!(tokio::time::Instant::now() < deadline, "catch-up stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Catch-up has reached the budget. It must stop there: give it
        // time to run on if it would (2 MiB of history is waiting).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            queued.bytes() <= bound,
            "{} bytes queued for a client that reads nothing",
            queued.bytes()
        );

        let mut next = 2;
        while next <= puts as i64 + 1 {
            let r = watch.recv().await.unwrap().unwrap();
            assert!(queued.bytes() <= bound);
            for e in r.events {
                assert_eq!(e.kv.unwrap().mod_revision, next);
                next += 1;
            }
        }
    }
}
