//! The writer's durable step: a batch of entries written to the log and
//! synced, one `fdatasync` per batch. Payloads are the size of an encoded
//! put of a 16-byte key and a 256-byte value, as in `roster-store`'s
//! `put_apply` benches, so the two add up to what a node's commit costs.
//!
//! Run with `cargo bench -p roster-raft --bench log`.

use divan::counter::ItemsCount;
use divan::Bencher;
use roster_raft::{EntryKind, Log, LogId, Record};

fn main() {
    divan::main();
}

/// Bytes of one encoded put command.
const PAYLOAD: usize = 280;

mod log {
    use super::*;

    #[divan::bench(args = [1, 100], sample_count = 50, max_time = 10)]
    fn append(bencher: Bencher, size: usize) {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (mut log, _) = Log::open(dir.path(), 0).expect("open a fresh log");
        let payload = vec![b'v'; PAYLOAD];
        let mut next = 1u64;
        bencher
            .counter(ItemsCount::new(size))
            .with_inputs(|| {
                let first = next;
                next += size as u64;
                first
            })
            .bench_local_values(|first| {
                let records: Vec<Record<'_>> = (first..first + size as u64)
                    .map(|index| Record {
                        id: LogId { term: 1, index },
                        kind: EntryKind::Command,
                        payload: &payload,
                    })
                    .collect();
                log.append(&records).expect("append to the log");
            });
        assert!(log.next_index() > 1, "nothing was appended");
    }
}
