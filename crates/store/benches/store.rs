//! Micro-benchmarks of the store's hot paths: applying puts, and reading.
//!
//! The end-to-end figures in BENCHMARKS.md (`roster bench` against a running
//! node) mix the network, gRPC, batching and the disk. These isolate the
//! store, so that a regression in one of its paths shows as a number that
//! moved rather than as noise in a throughput run:
//!
//! - `put_apply`: batches of 1 and 100 puts (16-byte keys drawn at random
//!   from 100k, 256-byte values), two ways. The node's writer appends a
//!   batch to the write-ahead log (`roster-raft`'s bench `log::append`:
//!   one write, one `fdatasync`) and then applies it with a storage commit
//!   that is not synced (`logged`, [`Store::apply_logged`]); so a batch
//!   costs about the sum of those two. `durable` is [`Store::apply_batch`], which syncs
//!   redb itself for every batch, as the writer did before the log. A
//!   batch of 100 shows what group commit buys per put.
//! - `index`: the in-memory [`KeyIndex`] alone, no storage: building it from
//!   100k pushes (what `Store::open` does per record), a point `get` and a
//!   100-key prefix `range` over 100k keys.
//! - `range`: [`Store::range`] over 100k keys: one key, a 100-key prefix
//!   (index walk plus one record read per key) and `count_only` over every
//!   key (index walk only).
//!
//! Keys are `key/` and 12 digits, so `key/` and 10 digits is the prefix of
//! exactly 100 keys. Random draws come from a fixed-seed generator, so runs
//! are comparable. Sample counts are kept low: the machine has two shared
//! cores, and the whole file runs in well under a minute. The fast benches
//! fix their sample size (iterations per timed sample), so that one cold
//! first sample cannot make divan settle on timing single lookups.
//!
//! Run with `cargo bench -p roster-store --bench store`.

use std::sync::OnceLock;

use divan::counter::ItemsCount;
use divan::Bencher;
use roster_proto::etcdserverpb::{PutRequest, RangeRequest};
use roster_store::index::{KeyIndex, KeyRange, Version};
use roster_store::{Applied, Command, CommandKind, Revision, Store};
use tempfile::TempDir;

/// Size of the key space, and of the loaded store and index.
const KEYS: u64 = 100_000;
/// Bytes per value.
const VALUE_LEN: usize = 256;

fn main() {
    divan::main();
    // Statics are never dropped, so the loaded store's directory would
    // outlive the run without this.
    if let Some(loaded) = LOADED.get() {
        let _ = std::fs::remove_dir_all(loaded.dir.path());
    }
}

/// How a batch reaches storage.
#[derive(Clone, Copy)]
enum Commit {
    /// Synced by the store: [`Store::apply_batch`].
    Durable,
    /// Not synced, its durability being the log's: [`Store::apply_logged`].
    Logged,
}

/// Applies one batch. Every bench writes through here, so a change to the
/// store's apply calls is a change in one place.
fn apply(store: &Store, batch: &[(u64, Command)], commit: Commit) -> Vec<Applied> {
    match commit {
        Commit::Durable => store.apply_batch(batch),
        Commit::Logged => store.apply_logged(batch),
    }
    .expect("storage failed while applying a batch")
}

/// Key number `i`: `key/` and 12 digits, 16 bytes.
fn key(i: u64) -> Vec<u8> {
    format!("key/{i:012}").into_bytes()
}

/// The range of the 100 keys `key/<j as 10 digits>00..99`: the next such
/// prefix is the end, as etcd's prefix end would be.
fn prefix_100(j: u64) -> (Vec<u8>, Vec<u8>) {
    let p = |j: u64| format!("key/{j:010}").into_bytes();
    (p(j), p(j + 1))
}

fn put(key: Vec<u8>) -> Command {
    Command {
        kind: Some(CommandKind::Put(PutRequest {
            key,
            value: vec![b'v'; VALUE_LEN],
            ..Default::default()
        })),
    }
}

/// SplitMix64: a fixed-seed generator, enough to scatter keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = Store::open(&dir.path().join("db")).expect("open a fresh store");
    (dir, store)
}

/// A store holding keys 0..KEYS, one version each.
struct Loaded {
    dir: TempDir,
    store: Store,
}

/// Loaded once and shared by the `range` benches: loading takes longer than
/// all of them together.
static LOADED: OnceLock<Loaded> = OnceLock::new();

fn loaded() -> &'static Store {
    let loaded = LOADED.get_or_init(|| {
        let (dir, store) = open();
        let mut index = 0;
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(10_000) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    index += 1;
                    (index, put(key(i)))
                })
                .collect();
            // Not synced: nothing here needs the store to survive a crash.
            apply(&store, &batch, Commit::Logged);
        }
        Loaded { dir, store }
    });
    &loaded.store
}

/// An index holding keys 0..KEYS, key `i` put at revision `i + 2`.
fn index_100k() -> KeyIndex {
    let mut ix = KeyIndex::default();
    for i in 0..KEYS {
        ix.push(&key(i), version(i as i64 + 2));
    }
    ix
}

fn version(main: i64) -> Version {
    Version {
        rev: Revision { main, sub: 0 },
        create: main,
        version: 1,
        lease: 0,
        tombstone: false,
    }
}

mod put_apply {
    use super::*;

    /// Batches of `size` puts to random keys, numbered from log index 1.
    fn batches(size: usize) -> impl FnMut() -> Vec<(u64, Command)> {
        let mut rng = Rng(1);
        let mut index = 0;
        move || {
            (0..size)
                .map(|_| {
                    index += 1;
                    (index, put(key(rng.below(KEYS))))
                })
                .collect()
        }
    }

    /// Applies batches to a fresh store, which grows as the samples run, as
    /// a live one does.
    fn bench_apply(bencher: Bencher, size: usize, commit: Commit) {
        let (_dir, store) = open();
        bencher
            .counter(ItemsCount::new(size))
            .with_inputs(batches(size))
            .bench_local_refs(|batch| apply(&store, batch, commit));
        assert!(store.revision() > 1, "no put was applied");
    }

    #[divan::bench(args = [1, 100], sample_count = 50, max_time = 10)]
    fn durable(bencher: Bencher, size: usize) {
        bench_apply(bencher, size, Commit::Durable);
    }

    #[divan::bench(args = [1, 100], sample_count = 100, max_time = 10)]
    fn logged(bencher: Bencher, size: usize) {
        bench_apply(bencher, size, Commit::Logged);
    }
}

mod index {
    use super::*;

    /// Building the index of 100k keys from scratch, one push per key.
    #[divan::bench(sample_count = 20)]
    fn push_100k(bencher: Bencher) {
        let keys: Vec<_> = (0..KEYS).map(key).collect();
        bencher
            .counter(ItemsCount::new(KEYS))
            .with_inputs(KeyIndex::default)
            .bench_local_values(|mut ix| {
                for (i, k) in keys.iter().enumerate() {
                    ix.push(k, version(i as i64 + 2));
                }
                // Returned, so that dropping it is not timed.
                ix
            });
    }

    /// A point lookup of a random key among 100k.
    #[divan::bench(sample_size = 256)]
    fn get(bencher: Bencher) {
        let ix = index_100k();
        let mut rng = Rng(2);
        let keys: Vec<_> = (0..1024).map(|_| key(rng.below(KEYS))).collect();
        assert!(keys.iter().all(|k| ix.get(k, i64::MAX).is_some()));
        let mut n = 0;
        bencher.bench_local(|| {
            n += 1;
            ix.get(&keys[n % keys.len()], i64::MAX).is_some()
        });
    }

    /// Walking a random 100-key prefix among 100k keys.
    #[divan::bench(sample_size = 16)]
    fn range_prefix_100(bencher: Bencher) {
        let ix = index_100k();
        let mut rng = Rng(3);
        let ranges: Vec<_> = (0..1024)
            .map(|_| {
                let (start, end) = prefix_100(rng.below(KEYS / 100));
                KeyRange::Span(start, Some(end))
            })
            .collect();
        assert_eq!(ix.range(&ranges[0], i64::MAX).count(), 100);
        let mut n = 0;
        bencher.bench_local(|| {
            n += 1;
            ix.range(&ranges[n % ranges.len()], i64::MAX).count()
        });
    }
}

mod range {
    use super::*;

    /// One random key, as a serializable read.
    #[divan::bench(sample_size = 32)]
    fn single_key(bencher: Bencher) {
        let store = loaded();
        let mut rng = Rng(4);
        let requests: Vec<_> = (0..1024)
            .map(|_| RangeRequest {
                key: key(rng.below(KEYS)),
                serializable: true,
                ..Default::default()
            })
            .collect();
        let first = store.range(&requests[0]).expect("range one key");
        assert_eq!(first.kvs.len(), 1);
        let mut n = 0;
        bencher.bench_local(|| {
            n += 1;
            store.range(&requests[n % requests.len()])
        });
    }

    /// A random 100-key prefix, values included.
    #[divan::bench]
    fn prefix_100(bencher: Bencher) {
        let store = loaded();
        let mut rng = Rng(5);
        let requests: Vec<_> = (0..1024)
            .map(|_| {
                let (key, range_end) = super::prefix_100(rng.below(KEYS / 100));
                RangeRequest {
                    key,
                    range_end,
                    serializable: true,
                    ..Default::default()
                }
            })
            .collect();
        let first = store.range(&requests[0]).expect("range a prefix");
        assert_eq!(first.kvs.len(), 100);
        let mut n = 0;
        bencher.bench_local(|| {
            n += 1;
            store.range(&requests[n % requests.len()])
        });
    }

    /// Counting every key: `"\0"` to `"\0"` is etcd's "all keys".
    #[divan::bench(sample_count = 50)]
    fn count_only_all(bencher: Bencher) {
        let store = loaded();
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            serializable: true,
            ..Default::default()
        };
        let first = store.range(&request).expect("count every key");
        assert_eq!(first.count, KEYS as i64);
        bencher.bench_local(|| store.range(&request));
    }
}
