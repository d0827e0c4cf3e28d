//! Micro-benchmarks of watch matching and fan-out: [`Hub::publish`].
//!
//! The writer calls `publish` once per durable batch, under the hub lock,
//! before it answers the batch's proposers, so its cost is paid by every
//! write and grows with the number of watchers. Each case registers
//! watchers straight into the hub (no gRPC, no stream task) and times one
//! publish of one put event:
//!
//! - `one_key_1000_watchers`: 1000 watchers of the same key; all 1000
//!   receive the event (fan-out: a clone and a queue send each).
//! - `distinct_keys_1000_watchers`: 1000 watchers of 1000 different keys;
//!   one receives it (matching: the other 999 are only checked).
//! - `prefix_100_watchers`: 100 watchers of one service prefix, as
//!   discovering callers are; all 100 receive it.
//!
//! Each watcher has a stream of its own, as separate clients do. What is
//! timed must be live delivery, not the fallback a full queue triggers
//! (which marks the watcher unsynced and wakes a catch-up task). So every
//! queue is drained before each publish, untimed (divan's input generation
//! runs outside the timed sample), and after the run each case asserts that
//! every watcher is still synced and received every event.
//!
//! One publish per sample, drained before the next, is also what keeps the
//! figure honest about memory: a server whose clients keep up frees each
//! response soon after it is queued, so the next publish reuses warm memory.
//! Letting 32 publishes pile up per sample (1000 watchers, ~20 MB of
//! responses) made the same code measure 3-4x slower, on cold memory.
//!
//! Run with `cargo bench -p roster-server --bench watch`.

use std::sync::Arc;

use divan::counter::ItemsCount;
use divan::Bencher;
use roster_proto::mvccpb::{event::EventType, Event, KeyValue};
use roster_server::watch::hub::{Hub, Selector, Watcher};
use roster_store::index::KeyRange;
use roster_store::Store;
use tempfile::TempDir;
use tokio::sync::{mpsc, Notify};

/// Publishes per timed sample: one, with the queues drained before it.
const SAMPLE_SIZE: u32 = 1;
/// Timed publishes per case.
const SAMPLES: u32 = 200;
/// Room in each stream's queue, as in a real stream (`stream::QUEUE`).
const QUEUE: usize = 256;

fn main() {
    divan::main();
}

/// Empties one stream's queue and says how many responses it held. A
/// closure, so that this file does not depend on what a response is.
type Drain = Box<dyn FnMut() -> u64>;

/// A hub with one watcher per stream, and the streams' receiving ends.
struct Fanout {
    hub: Hub,
    queues: Vec<Drain>,
    /// Responses taken off the queues so far.
    delivered: u64,
    _dir: TempDir,
}

impl Fanout {
    /// A hub over an empty store with one synced watcher of each range.
    fn new(ranges: impl IntoIterator<Item = KeyRange>) -> Fanout {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        // Only `prev_kv` watchers read the store; these do not.
        let store = Store::open(&dir.path().join("db")).expect("open a fresh store");
        let hub = Hub::new(Arc::new(store), 1, 1, 2);
        let next_rev = hub.state.lock().last_rev + 1;
        let mut queues: Vec<Drain> = Vec::new();
        for range in ranges {
            let (tx, mut rx) = mpsc::channel(QUEUE);
            let id = hub.open_stream(tx, Arc::default(), Arc::new(Notify::new()));
            let selector = Selector {
                range,
                no_put: false,
                no_delete: false,
                prev_kv: false,
                fragment: false,
            };
            let watcher = Watcher::new(selector, false, next_rev);
            let mut st = hub.state.lock();
            let added = st.add_watcher(id, 0, watcher);
            assert!(added.is_ok() && st.sync(id, 0), "the stream just opened");
            queues.push(Box::new(move || {
                let mut n = 0;
                while rx.try_recv().is_ok() {
                    n += 1;
                }
                n
            }));
        }
        Fanout {
            hub,
            queues,
            delivered: 0,
            _dir: dir,
        }
    }

    /// Times publishing a put of `key`, at a new revision each time, then
    /// checks that each publish reached `receivers` watchers live.
    fn bench(mut self, bencher: Bencher, key: &[u8], receivers: u64) {
        let mut event = Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                value: vec![b'v'; 256],
                create_revision: 2,
                version: 1,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let mut rev = self.hub.state.lock().last_rev;
        let mut publishes = 0;
        let hub = &self.hub;
        let (queues, delivered) = (&mut self.queues, &mut self.delivered);
        bencher
            .counter(ItemsCount::new(receivers))
            // Runs before each sample, untimed: every publish finds the
            // queues empty.
            .with_inputs(|| drain(queues, delivered))
            .bench_local_values(|()| {
                rev += 1;
                publishes += 1;
                if let Some(kv) = &mut event.kv {
                    kv.mod_revision = rev;
                }
                hub.publish(std::slice::from_ref(&event), rev);
            });
        drain(&mut self.queues, &mut self.delivered);
        let st = self.hub.state.lock();
        let synced = st.streams.values().all(|s| s.watchers[&0].synced());
        assert!(synced, "a queue filled: the catch-up fallback was measured");
        assert!(publishes > 0);
        assert_eq!(self.delivered, publishes * receivers, "events went missing");
    }
}

/// Empties every queue, counting the responses in `delivered`.
fn drain(queues: &mut [Drain], delivered: &mut u64) {
    *delivered += queues.iter_mut().map(|q| q()).sum::<u64>();
}

/// Watched keys look like a registry's: `svc/<service>/<instance>`.
fn instance_key(service: u32, instance: u32) -> Vec<u8> {
    format!("svc/s{service:04}/i{instance:04}").into_bytes()
}

#[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLES)]
fn one_key_1000_watchers(bencher: Bencher) {
    let key = instance_key(0, 0);
    let fanout = Fanout::new((0..1000).map(|_| KeyRange::Single(key.clone())));
    fanout.bench(bencher, &key, 1000);
}

#[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLES)]
fn distinct_keys_1000_watchers(bencher: Bencher) {
    let fanout = Fanout::new((0..1000).map(|i| KeyRange::Single(instance_key(i, 0))));
    fanout.bench(bencher, &instance_key(0, 0), 1);
}

#[divan::bench(sample_size = SAMPLE_SIZE, sample_count = SAMPLES)]
fn prefix_100_watchers(bencher: Bencher) {
    // `svc/s0000/` up to `svc/s00000`: '0' is the byte after '/'.
    let prefix = || KeyRange::Span(b"svc/s0000/".to_vec(), Some(b"svc/s00000".to_vec()));
    let fanout = Fanout::new((0..100).map(|_| prefix()));
    fanout.bench(bencher, &instance_key(0, 7), 100);
}
