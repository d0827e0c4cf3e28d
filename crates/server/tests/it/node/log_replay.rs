//! Replaying the write-ahead log at start: what the store did not durably
//! hold is applied again, compactions included.

use prost::Message;
use roster_proto::etcdserverpb::{CompactionRequest, PutRequest};
use roster_raft::{EntryKind, Log, LogId, Record};
use roster_server::node::{DB_FILE, WAL_DIR};
use roster_server::{Config, Node};
use roster_store::{Command, CommandKind, Store};

fn put(key: &str, value: &str) -> Command {
    Command {
        kind: Some(CommandKind::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// Three versions of a key and a compaction to the last are only in the
/// log (the store never applied them): after recovery the store holds the
/// last version alone, not the compacted ones waiting for a next write.
#[test]
fn a_replayed_compaction_removes_its_records_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join(WAL_DIR);
    {
        let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
        let (mut log, replay) = Log::open(&wal_dir, store.applied_index()).unwrap();
        assert!(replay.is_empty());
        let compact = Command {
            kind: Some(CommandKind::Compact(CompactionRequest {
                revision: 4,
                physical: true,
            })),
        };
        let entries = [
            (1, put("k", "a")),
            (2, put("k", "b")),
            (3, put("k", "c")),
            (4, compact),
        ];
        let payloads: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|(i, c)| (*i, c.encode_to_vec()))
            .collect();
        let records: Vec<Record<'_>> = payloads
            .iter()
            .map(|(index, payload)| Record {
                id: LogId {
                    term: 2,
                    index: *index,
                },
                kind: EntryKind::Command,
                payload,
            })
            .collect();
        log.append(&records).unwrap();
        assert_eq!(store.record_count().unwrap(), 0);
    }

    let node = Node::open(Config::new(dir.path())).unwrap();
    let store = &node.store;
    assert_eq!(store.applied_index(), 4);
    assert_eq!(store.revision(), 4);
    assert_eq!(store.compact_revision(), 4);
    assert_eq!(
        store.record_count().unwrap(),
        1,
        "the versions at revisions 2 and 3 are still stored"
    );
    node.stop();
}

/// Writes a valid put at index 1 and `payload` as the command at index 2,
/// in a fresh data directory's log; the store applied neither.
fn log_with(dir: &std::path::Path, payload: &[u8]) {
    let store = Store::open(&dir.join(DB_FILE)).unwrap();
    let (mut log, _) = Log::open(&dir.join(WAL_DIR), store.applied_index()).unwrap();
    let first = put("k", "v").encode_to_vec();
    let record = |index, payload| Record {
        id: LogId { term: 2, index },
        kind: EntryKind::Command,
        payload,
    };
    log.append(&[record(1, &first), record(2, payload)])
        .unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(48))]

    /// Whatever bytes a logged command holds (a log written by a newer or
    /// a broken build): the node starts and has applied both entries, or
    /// refuses to start, saying which entry, with nothing applied.
    #[test]
    fn a_logged_command_of_any_bytes_is_replayed_or_refused_whole(
        payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        log_with(dir.path(), &payload);
        match Node::open(Config::new(dir.path())) {
            Ok(node) => {
                proptest::prop_assert_eq!(node.store.applied_index(), 2);
                node.stop();
            }
            Err(e) => {
                let msg = e.to_string();
                let clear = msg.contains("log entry 2 does not decode")
                    || msg.contains("replaying the log");
                proptest::prop_assert!(clear, "not a clear refusal: {}", msg);
                let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
                proptest::prop_assert_eq!(store.applied_index(), 0);
                proptest::prop_assert_eq!(store.record_count().unwrap(), 0);
            }
        }
    }
}
