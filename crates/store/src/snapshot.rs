//! Snapshots: the store's durable state as one stream of bytes, and back.
//!
//! A snapshot is what a member needs to become this store: every stored
//! record (history above the compaction included), every lease, the raised alarms and the
//! counters that place them (current and compacted revision, applied log
//! index). Node identity (cluster and member ids, term) is not part of it:
//! a restored data directory is a new member.
//!
//! [`Store::snapshot`] makes the store durable (a checkpoint) and opens a
//! redb read transaction on what it wrote. A [`SnapshotWriter`] then walks
//! that transaction a piece at a time, so a snapshot costs the writers one
//! checkpoint and its reader a bounded buffer, whatever the database size:
//! redb's transactions are isolated, and commits go on beside it.
//!
//! The format is a magic and version, then frames of `tag (u8) | length
//! (u32 LE) | payload`: meta counters (name, value), records (revision as
//! a 16-byte LE `u128`, then the stored record), lease rows (id as 8-byte
//! LE `i64`, then the row), and an end frame holding the number of frames
//! before it; then zeros up to a multiple of [`ALIGN`] bytes. Whoever
//! stores the bytes appends a SHA-256 of them, as etcd does for `etcdctl
//! snapshot save` (etcdctl 3.4 finds that hash by the file's length, 32
//! more than a multiple of 512, hence the padding); [`restore`] refuses a
//! file whose hash, end frame or any frame is wrong, before it writes
//! anything in place.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};

use crate::backend::{ALARMS, KV, META, META_APPLIED_INDEX, META_COMPACT_REV, META_CURRENT_REV};
use crate::error::StoreError;
use crate::lease::LEASES;
use crate::store::Store;

/// The first bytes of a snapshot.
pub const MAGIC: &[u8; 8] = b"RSTRSNAP";
/// The format version after the magic.
pub const VERSION: u32 = 1;
/// Length of the SHA-256 that follows a stored snapshot.
pub const HASH_LEN: usize = 32;
/// A snapshot's length before its hash is a multiple of this.
pub const ALIGN: u64 = 512;
/// The meta counters a snapshot carries: what places the data, not who
/// holds it.
pub const CARRIED_META: &[&str] = &[META_CURRENT_REV, META_COMPACT_REV, META_APPLIED_INDEX];

const TAG_META: u8 = 1;
const TAG_KV: u8 = 2;
const TAG_LEASE: u8 = 3;
const TAG_ALARM: u8 = 4;
const TAG_END: u8 = 0xff;
/// Records written per redb transaction while restoring.
const RESTORE_BATCH: usize = 10_000;

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the snapshot or writing the database failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a whole, unchanged snapshot.
    #[error("snapshot {}: {reason}", path.display())]
    Invalid {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The target already holds a database: restore never overwrites one.
    #[error("{} already exists; restore makes a new data directory", path.display())]
    Exists {
        /// The database file that exists.
        path: PathBuf,
    },
    /// The new database could not be written.
    #[error("writing {}: {source}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// What the store said.
        source: StoreError,
    },
}

/// Where a [`SnapshotWriter`] is in the store.
enum Stage {
    Meta,
    Kv(Option<u128>),
    Leases(Option<i64>),
    End,
    Done,
}

/// Produces a snapshot's bytes a piece at a time from a read transaction.
pub struct SnapshotWriter {
    tx: ReadTransaction,
    stage: Stage,
    frames: u64,
    /// Bytes produced so far.
    written: u64,
    /// The store's revision in this snapshot.
    revision: i64,
}

fn frame(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(tag);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

impl Store {
    /// Makes the store durable and opens a snapshot of what it holds.
    pub fn snapshot(&self) -> Result<SnapshotWriter, StoreError> {
        self.checkpoint()?;
        let tx = self.database().begin_read()?;
        let revision = tx
            .open_table(META)?
            .get(META_CURRENT_REV)?
            .map_or(1, |v| v.value() as i64);
        Ok(SnapshotWriter {
            tx,
            stage: Stage::Meta,
            frames: 0,
            written: 0,
            revision,
        })
    }
}

impl SnapshotWriter {
    /// The revision the snapshot holds.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Appends the next bytes of the snapshot to `out`, stopping soon after
    /// it holds `max` bytes. Returns false once the snapshot is complete
    /// and nothing was added.
    pub fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> Result<bool, StoreError> {
        let start = out.len();
        let more = self.fill_frames(out, max, start)?;
        self.written += (out.len() - start) as u64;
        Ok(more)
    }

    fn fill_frames(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
        start: usize,
    ) -> Result<bool, StoreError> {
        loop {
            if out.len() - start >= max {
                return Ok(true);
            }
            match &mut self.stage {
                Stage::Meta => {
                    out.extend_from_slice(MAGIC);
                    out.extend_from_slice(&VERSION.to_le_bytes());
                    let meta = self.tx.open_table(META)?;
                    for name in CARRIED_META {
                        if let Some(v) = meta.get(*name)? {
                            let value = v.value().to_le_bytes();
                            frame(
                                out,
                                TAG_META,
                                &[&[name.len() as u8], name.as_bytes(), &value],
                            );
                            self.frames += 1;
                        }
                    }
                    for item in self.tx.open_table(ALARMS)?.iter()? {
                        let (key, _) = item?;
                        let (member, alarm) = key.value();
                        frame(
                            out,
                            TAG_ALARM,
                            &[&member.to_le_bytes(), &alarm.to_le_bytes()],
                        );
                        self.frames += 1;
                    }
                    self.stage = Stage::Kv(None);
                }
                Stage::Kv(after) => {
                    let table = self.tx.open_table(KV)?;
                    let range = match *after {
                        Some(rev) => table.range(rev + 1..)?,
                        None => table.range::<u128>(..)?,
                    };
                    let mut last = None;
                    for item in range {
                        let (rev, rec) = item?;
                        frame(out, TAG_KV, &[&rev.value().to_le_bytes(), rec.value()]);
                        self.frames += 1;
                        last = Some(rev.value());
                        if out.len() - start >= max {
                            break;
                        }
                    }
                    self.stage = match last {
                        Some(rev) if rev < u128::MAX => Stage::Kv(Some(rev)),
                        _ => Stage::Leases(None),
                    };
                }
                Stage::Leases(after) => {
                    let table = self.tx.open_table(LEASES)?;
                    let range = match *after {
                        Some(id) if id < i64::MAX => table.range(id + 1..)?,
                        Some(_) => table.range(i64::MAX..i64::MAX)?,
                        None => table.range::<i64>(..)?,
                    };
                    let mut last = None;
                    for item in range {
                        let (id, row) = item?;
                        frame(out, TAG_LEASE, &[&id.value().to_le_bytes(), row.value()]);
                        self.frames += 1;
                        last = Some(id.value());
                        if out.len() - start >= max {
                            break;
                        }
                    }
                    self.stage = match last {
                        Some(id) => Stage::Leases(Some(id)),
                        None => Stage::End,
                    };
                }
                Stage::End => {
                    frame(out, TAG_END, &[&self.frames.to_le_bytes()]);
                    let len = self.written + (out.len() - start) as u64;
                    let pad = (ALIGN - len % ALIGN) % ALIGN;
                    out.resize(out.len() + pad as usize, 0);
                    self.stage = Stage::Done;
                }
                Stage::Done => return Ok(out.len() > start),
            }
        }
    }
}

/// What a restored snapshot held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The current revision.
    pub revision: i64,
    /// Records written.
    pub records: u64,
    /// Leases written.
    pub leases: u64,
    /// The applied log index the store starts from.
    pub applied_index: u64,
}

/// Makes the database `db_path` from the snapshot file `snapshot` (its
/// bytes followed by their SHA-256). Checks the whole file first; writes
/// beside the target and renames into place, so a refused or failed
/// restore leaves nothing at `db_path`. An existing `db_path` is refused.
pub fn restore(snapshot: &Path, db_path: &Path) -> Result<Restored, SnapshotError> {
    if db_path.exists() {
        return Err(SnapshotError::Exists {
            path: db_path.to_path_buf(),
        });
    }
    let invalid = |reason: String| SnapshotError::Invalid {
        path: snapshot.to_path_buf(),
        reason,
    };
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    };
    let len = std::fs::metadata(snapshot)
        .map_err(io("reading", snapshot))?
        .len();
    let body_len = len
        .checked_sub(HASH_LEN as u64)
        .filter(|&n| n >= (MAGIC.len() + 4) as u64)
        .ok_or_else(|| invalid(format!("too short to be a snapshot ({len} bytes)")))?;
    if body_len % ALIGN != 0 {
        return Err(invalid(format!(
            "{len} bytes is not a whole snapshot and its hash"
        )));
    }
    verify_hash(snapshot, body_len).map_err(|e| match e {
        Ok(reason) => invalid(reason),
        Err(source) => SnapshotError::Io {
            what: "reading",
            path: snapshot.to_path_buf(),
            source,
        },
    })?;

    let file = File::open(snapshot).map_err(io("opening", snapshot))?;
    let mut r = BufReader::with_capacity(1 << 20, file.take(body_len));
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(io("reading", snapshot))?;
    if &head[..8] != MAGIC {
        return Err(invalid("not a Roster snapshot (bad magic)".into()));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(invalid(format!(
            "format version {version}, expected {VERSION}"
        )));
    }

    let tmp = db_path.with_extension("restoring");
    let _ = std::fs::remove_file(&tmp);
    let written = write_db(&mut r, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        match e {
            Written::Invalid(reason) => invalid(reason),
            Written::Io(source) => SnapshotError::Io {
                what: "reading",
                path: snapshot.to_path_buf(),
                source,
            },
            Written::Store(source) => SnapshotError::Store {
                path: tmp.clone(),
                source,
            },
        }
    })?;
    std::fs::rename(&tmp, db_path).map_err(io("renaming into", db_path))?;
    if let Some(dir) = db_path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))?;
    }
    Ok(written)
}

/// Checks the SHA-256 after the first `body_len` bytes of `path`.
fn verify_hash(path: &Path, body_len: u64) -> Result<(), Result<String, std::io::Error>> {
    let file = File::open(path).map_err(Err)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut left = body_len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        r.read_exact(&mut buf[..n]).map_err(Err)?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; HASH_LEN];
    r.read_exact(&mut want).map_err(Err)?;
    if hasher.finalize().as_slice() != want {
        return Err(Ok(
            "SHA-256 mismatch: the file is damaged or incomplete".into()
        ));
    }
    Ok(())
}

enum Written {
    Invalid(String),
    Io(std::io::Error),
    Store(StoreError),
}

/// A store failure while writing the new database.
fn st<E: Into<StoreError>>(e: E) -> Written {
    Written::Store(e.into())
}

/// Reads frames from `r` into a new database at `path`, synced.
fn write_db(r: &mut impl Read, path: &Path) -> Result<Restored, Written> {
    let db = Database::create(path).map_err(st)?;
    let mut out = Restored {
        revision: 1,
        records: 0,
        leases: 0,
        applied_index: 0,
    };
    let mut frames = 0u64;
    let mut payload = Vec::new();
    let mut pending = 0usize;
    let mut tx = db.begin_write().map_err(st)?;
    tx.set_durability(Durability::None).map_err(st)?;
    loop {
        let mut head = [0u8; 5];
        r.read_exact(&mut head).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                Written::Invalid("ends without its end frame".into())
            }
            _ => Written::Io(e),
        })?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        payload.resize(len, 0);
        r.read_exact(&mut payload).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Written::Invalid("a frame is cut short".into()),
            _ => Written::Io(e),
        })?;
        let bad = |what: &str| Written::Invalid(format!("bad {what} frame at frame {frames}"));
        match head[0] {
            TAG_META => {
                let n = *payload.first().ok_or_else(|| bad("meta"))? as usize;
                if payload.len() != 1 + n + 8 {
                    return Err(bad("meta"));
                }
                let name = std::str::from_utf8(&payload[1..1 + n]).map_err(|_| bad("meta"))?;
                let name = *CARRIED_META
                    .iter()
                    .find(|m| **m == name)
                    .ok_or_else(|| bad("meta"))?;
                let value = u64::from_le_bytes(payload[1 + n..].try_into().expect("8 bytes"));
                match name {
                    META_CURRENT_REV => out.revision = value as i64,
                    META_APPLIED_INDEX => out.applied_index = value,
                    _ => {}
                }
                tx.open_table(META)
                    .map_err(st)?
                    .insert(name, value)
                    .map_err(st)?;
            }
            TAG_KV => {
                if payload.len() < 17 {
                    return Err(bad("record"));
                }
                let rev = u128::from_le_bytes(payload[..16].try_into().expect("16 bytes"));
                crate::backend::decode(&payload[16..]).map_err(|_| bad("record"))?;
                tx.open_table(KV)
                    .map_err(st)?
                    .insert(rev, &payload[16..])
                    .map_err(st)?;
                out.records += 1;
            }
            TAG_LEASE => {
                if payload.len() < 8 || crate::lease::Lease::decode(&payload[8..]).is_none() {
                    return Err(bad("lease"));
                }
                let id = i64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                tx.open_table(LEASES)
                    .map_err(st)?
                    .insert(id, &payload[8..])
                    .map_err(st)?;
                out.leases += 1;
            }
            TAG_ALARM => {
                if payload.len() != 12 {
                    return Err(bad("alarm"));
                }
                let member = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let alarm = i32::from_le_bytes(payload[8..].try_into().expect("4 bytes"));
                tx.open_table(ALARMS)
                    .map_err(st)?
                    .insert((member, alarm), 0)
                    .map_err(st)?;
            }
            TAG_END => {
                if payload.len() != 8 {
                    return Err(bad("end"));
                }
                let count = u64::from_le_bytes(payload[..].try_into().expect("8 bytes"));
                if count != frames {
                    return Err(Written::Invalid(format!(
                        "end frame counts {count} frames, the file holds {frames}"
                    )));
                }
                // Only the padding may follow.
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).map_err(Written::Io)?;
                if rest.len() as u64 >= ALIGN || rest.iter().any(|&b| b != 0) {
                    return Err(Written::Invalid("bytes after the end frame".into()));
                }
                break;
            }
            tag => return Err(Written::Invalid(format!("unknown frame tag {tag:#x}"))),
        }
        frames += 1;
        pending += 1;
        if pending >= RESTORE_BATCH {
            tx.commit().map_err(st)?;
            tx = db.begin_write().map_err(st)?;
            tx.set_durability(Durability::None).map_err(st)?;
            pending = 0;
        }
    }
    tx.set_durability(Durability::Immediate).map_err(st)?;
    tx.commit().map_err(st)?;
    drop(db);
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Written::Io)?;
    Ok(out)
}

/// Writes a whole snapshot of `store`, with its SHA-256 after it, to `out`.
pub fn save(store: &Store, out: &mut impl Write) -> Result<(), StoreError> {
    let mut w = store.snapshot()?;
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(1 << 20);
    while w.fill(&mut buf, 1 << 20)? {
        hasher.update(&buf);
        out.write_all(&buf)
            .map_err(|e| StoreError::Storage(format!("writing a snapshot: {e}")))?;
        buf.clear();
    }
    out.write_all(&hasher.finalize())
        .map_err(|e| StoreError::Storage(format!("writing a snapshot: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests;
