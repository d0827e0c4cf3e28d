//! A damaged database file: one flipped byte at many offsets of a redb
//! file, then `Store::open` and a full read. Each must end in an error or
//! in a store that is exactly what was durable at the applied index it
//! reports (redb may fall back to its previous commit when the newest one
//! fails its checksums; the log above the store replays the rest, or
//! refuses when it cannot). Never a panic, never data that was not there.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use roster_proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest};
use roster_proto::mvccpb::KeyValue;
use roster_proto::roster::{command::Kind, Command};
use roster_store::{Store, StoreError};

/// redb's page size.
const PAGE: usize = 4096;
/// The lease some keys are attached to.
const LEASE: i64 = 7;

/// What a reader can see of a store: applied index, revision, every
/// live key, every lease.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    applied: u64,
    revision: i64,
    compacted: i64,
    kvs: Vec<KeyValue>,
    leases: Vec<(i64, i64, i64)>,
}

fn seen(store: &Store) -> Result<Seen, StoreError> {
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    Ok(Seen {
        applied: store.applied_index(),
        revision: store.revision(),
        compacted: store.compact_revision(),
        kvs: store.range(&all)?.kvs,
        leases: store.leases(),
    })
}

fn command(i: u64) -> Command {
    let kind = match i {
        1 => Kind::LeaseGrant(LeaseGrantRequest { ttl: 60, id: LEASE }),
        _ if i.is_multiple_of(37) => Kind::DeleteRange(DeleteRangeRequest {
            key: format!("k{:03}", i - 20).into_bytes(),
            ..Default::default()
        }),
        _ => Kind::Put(PutRequest {
            // Some keys are written twice, so they have versions.
            key: format!("k{:03}", i % 150).into_bytes(),
            value: format!("value {i} {}", "x".repeat((i % 90) as usize)).into_bytes(),
            lease: if i.is_multiple_of(5) { LEASE } else { 0 },
            ..Default::default()
        }),
    };
    Command { kind: Some(kind) }
}

/// Writes a database as the server does (commands applied in memory,
/// checkpoints now and then); returns what was durable after each commit.
fn build(path: &Path) -> Vec<Seen> {
    let store = Store::open(path).unwrap();
    let mut durable = vec![seen(&store).unwrap()];
    for i in 1..=300u64 {
        store.apply_logged(&[(i, command(i))]).unwrap();
        if i.is_multiple_of(40) || i == 300 {
            store.checkpoint().unwrap();
            durable.push(seen(&store).unwrap());
        }
    }
    durable
}

/// Offsets to flip: every 29th byte of the first page (redb's header and
/// commit slots), and in every page that holds anything its first bytes
/// (the page header), a few inside and its last byte.
fn offsets(file: &[u8]) -> Vec<usize> {
    let mut at: Vec<usize> = (0..PAGE.min(file.len())).step_by(29).collect();
    for (n, page) in file.chunks(PAGE).enumerate().skip(1) {
        if page.iter().all(|&b| b == 0) {
            continue;
        }
        let base = n * PAGE;
        for o in [0, 1, 2, 8, 17, 64, 301, 1024, 2047, 3000, page.len() - 1] {
            if o < page.len() {
                at.push(base + o);
            }
        }
    }
    at
}

#[test]
fn a_flipped_byte_in_the_database_is_an_error_or_a_durable_state_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.redb");
    let durable = build(&pristine);
    let bytes = std::fs::read(&pristine).unwrap();
    let offsets = offsets(&bytes);
    assert!(offsets.len() >= 100, "only {} offsets", offsets.len());

    let mut failures = Vec::new();
    let (mut refused, mut served) = (0, 0);
    for &at in &offsets {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xff;
        let path = dir.path().join("damaged.redb");
        std::fs::write(&path, &damaged).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let store = Store::open(&path)?;
            seen(&store)
        }));
        match outcome {
            Err(_) => failures.push(format!("offset {at}: panicked")),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(got)) => {
                served += 1;
                match durable.iter().find(|d| d.applied == got.applied) {
                    Some(want) if *want == got => {}
                    Some(want) => failures.push(format!(
                        "offset {at}: at applied index {} the store holds other data \
                         (revision {}, {} keys; durable was revision {}, {} keys)",
                        got.applied,
                        got.revision,
                        got.kvs.len(),
                        want.revision,
                        want.kvs.len()
                    )),
                    None => failures.push(format!(
                        "offset {at}: applied index {} was never durable",
                        got.applied
                    )),
                }
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} offsets failed ({refused} refused, {served} served):\n{}",
        failures.len(),
        offsets.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} offsets: {refused} refused, {served} served",
        offsets.len()
    );
}
