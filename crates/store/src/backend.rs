//! The redb tables and how records are encoded in them.
//!
//! - `kv`: revision (packed into a `u128`, so keys sort by revision) → record.
//!   A record is one tag byte (`PUT` or `TOMBSTONE`) followed by the
//!   protobuf-encoded `mvccpb.KeyValue`. For a tombstone the `KeyValue` holds
//!   only the key and its delete revision.
//! - `alarms`: the raised alarms, (member id, `etcdserverpb.AlarmType`)
//!   → 0. Alarms are state machine state: raised and cleared by commands.
//! - `meta`: named `u64` counters: the current and compacted revision, the
//!   applied log index, and whatever node identity the server keeps here.
//!
//! The key index is not stored: it is rebuilt by scanning `kv` on open.

use std::cell::OnceCell;

use prost::Message;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use roster_proto::mvccpb::KeyValue;

use crate::error::StoreError;
use crate::index::Revision;

/// Revision-ordered records of every retained version.
pub const KV: TableDefinition<u128, &[u8]> = TableDefinition::new("kv");
/// Raised alarms: (member id, alarm type).
pub const ALARMS: TableDefinition<(u64, i32), u8> = TableDefinition::new("alarms");
/// Named counters.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Meta key: the newest revision.
pub const META_CURRENT_REV: &str = "current_rev";
/// Meta key: the revision history was compacted to.
pub const META_COMPACT_REV: &str = "compact_rev";
/// Meta key: the index of the last applied log entry.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// Opaque byte values kept beside the counters; written by the same
/// checkpoint commits as the `meta` table.
pub const META_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_bytes");
/// Bytes key: consensus's mark of where the applied state stands (see
/// [`crate::Store::mark`]).
pub const META_MARK: &str = "consensus_mark";

const PUT: u8 = 0;
const TOMBSTONE: u8 = 1;

/// Encodes a stored record.
pub fn encode(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(if tombstone { TOMBSTONE } else { PUT });
    kv.encode(&mut buf).expect("Vec grows as needed");
    buf
}

/// Decodes a stored record into its `KeyValue` and tombstone flag; bytes
/// that are not a record are an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<(KeyValue, bool), StoreError> {
    let (tag, body) = bytes
        .split_first()
        .ok_or_else(|| StoreError::Storage("empty record".into()))?;
    let tombstone = match *tag {
        PUT => false,
        TOMBSTONE => true,
        other => {
            return Err(StoreError::Storage(format!(
                "a record with unknown tag {other}"
            )))
        }
    };
    let kv = KeyValue::decode(body)?;
    Ok((kv, tombstone))
}

/// A stored record's tombstone flag and `KeyValue` bytes, without decoding
/// them; `None` for an empty record.
pub fn split_record(bytes: &[u8]) -> Option<(bool, &[u8])> {
    let (tag, body) = bytes.split_first()?;
    Some((*tag == TOMBSTONE, body))
}

/// The stored record of already encoded `KeyValue` bytes.
pub fn join_record(kv: &[u8], tombstone: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.len());
    buf.push(if tombstone { TOMBSTONE } else { PUT });
    buf.extend_from_slice(kv);
    buf
}

/// Something records can be read from: a read transaction's table, or the
/// table of the write transaction being applied (which sees its own writes).
pub trait Records {
    /// The stored `KeyValue` at `rev`.
    fn record(&self, rev: Revision) -> Result<KeyValue, StoreError>;
}

impl<T: ReadableTable<u128, &'static [u8]>> Records for T {
    fn record(&self, rev: Revision) -> Result<KeyValue, StoreError> {
        let guard = self
            .get(rev.to_u128())?
            .ok_or_else(|| StoreError::Storage(format!("missing record at {rev:?}")))?;
        Ok(decode(guard.value())?.0)
    }
}

/// The `kv` table of a read transaction begun only when a record is first
/// asked for. Applying a batch of plain puts reads nothing from redb, and
/// beginning a read transaction and opening the table is a cost a lone
/// client would pay on every write (`docs/decisions.md`, entry 11). The
/// caller must keep redb from changing meanwhile (the store's `writing`
/// lock), so the transaction sees what one begun earlier would have.
pub struct LazyKv<'a> {
    db: &'a Database,
    table: OnceCell<ReadOnlyTable<u128, &'static [u8]>>,
}

impl<'a> LazyKv<'a> {
    /// Reads from `db`, once asked to.
    pub fn new(db: &'a Database) -> Self {
        LazyKv {
            db,
            table: OnceCell::new(),
        }
    }

    fn table(&self) -> Result<&ReadOnlyTable<u128, &'static [u8]>, StoreError> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.db.begin_read()?.open_table(KV)?;
        Ok(self.table.get_or_init(|| t))
    }
}

impl Records for LazyKv<'_> {
    fn record(&self, rev: Revision) -> Result<KeyValue, StoreError> {
        self.table()?.record(rev)
    }
}
