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
