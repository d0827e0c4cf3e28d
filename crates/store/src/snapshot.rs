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
//! The format is etcd's: a bbolt database file with etcd 3.4's buckets,
//! so `etcdctl snapshot status` checks it and `etcdctl snapshot restore`
//! (or a real etcd) takes it. Pages are 4096 bytes: two meta pages (0 and
//! 1, the same but for their transaction ids), an empty freelist (page 2),
//! the root bucket's leaf (page 3) naming the ten buckets in bytewise
//! order, then each non-empty bucket's B+tree: its leaf pages in key order
//! (overflow pages after a leaf whose content is bigger than a page), then
//! its branch levels bottom up, the root last. Empty buckets are inline,
//! as bbolt keeps them. What the buckets hold (see `etcd.rs`): `key`,
//! revision (main `_` sub, big-endian, `t` after a tombstone) → the
//! record's `mvccpb.KeyValue`; `lease`, id → `leasepb.Lease`; `alarm`,
//! `AlarmMember` → nothing; `meta`, the applied index as
//! `consistent_index` and the compaction as `finishedCompactRev` and
//! `scheduledCompactRev`. The pages (`bolt.rs`) are laid out by the
//! format's description, not from bbolt's code.
//!
//! The meta pages come first but name every bucket's root, so a writer
//! plans before it writes: one pass over the read transaction keeps each
//! leaf page's first key and size (memory in leaf pages, not records),
//! from which the branch pages and every page id follow; a second pass
//! makes the pages one at a time. Whoever stores the bytes appends a
//! SHA-256 of them, as etcd does for `etcdctl snapshot save` (etcdctl 3.4
//! finds that hash by the file's length, 32 more than a multiple of 512,
//! which whole pages give).
//!
//! [`restore`] checks the hash, then reads the file as bbolt would: the
//! valid meta page with the higher transaction id, the root bucket, and
//! the `meta`, `alarm`, `lease` and `key` buckets' trees, each page at
//! most once (a cycle or a shared page is refused, as are pages out of
//! range, unsorted keys and bad encodings). The current revision is the
//! newest record's, or the compaction's if that is newer, as etcd
//! computes it. It writes beside the target and renames into place, so a
//! refused file leaves nothing behind.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable};
use roster_proto::etcdserverpb::AlarmMember;
use roster_proto::mvccpb::KeyValue;
use sha2::{Digest, Sha256};

use crate::backend::{
    join_record, split_record, ALARMS, KV, META, META_APPLIED_INDEX, META_COMPACT_REV,
    META_CURRENT_REV,
};
use crate::error::StoreError;
use crate::index::Revision;
use crate::lease::{Lease, LEASES};
use crate::store::Store;

mod bolt;
mod etcd;

use bolt::{LeafElem, Meta, PageBuilder, BUCKET_HEADER, BUCKET_LEAF, ELEM, HEADER};
pub use bolt::{MAGIC, PAGE_SIZE, VERSION};

/// Length of the SHA-256 that follows a stored snapshot.
pub const HASH_LEN: usize = 32;
/// A snapshot's length before its hash is a multiple of this (it is whole
/// pages).
pub const ALIGN: u64 = 512;

/// Page of the freelist, which is empty.
const FREELIST_PAGE: u64 = 2;
/// Page of the root bucket's leaf.
const ROOT_PAGE: u64 = 3;
/// The transaction id of meta page 0; page 1 has the next one, and wins.
const TXID: u64 = 2;
/// Deepest B+tree a restore follows.
const MAX_DEPTH: usize = 64;
/// Records written per redb transaction while restoring, and bytes.
const RESTORE_BATCH: usize = 10_000;
const RESTORE_BATCH_BYTES: usize = 16 << 20;

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

/// Where a bucket's entries come from.
enum Source {
    /// Roster's `kv` table, as the `key` bucket.
    Kv,
    /// Roster's `leases` table, as the `lease` bucket.
    Leases,
    /// Entries few enough to hold, sorted.
    Held(Vec<(Vec<u8>, Vec<u8>)>),
}

/// One leaf page of a bucket.
struct LeafPlan {
    id: u64,
    /// Its first key.
    first: Vec<u8>,
    count: usize,
    /// Pages it spans, overflow included.
    pages: usize,
}

/// One branch page: its children's first keys and pages.
struct BranchPlan {
    id: u64,
    children: Vec<(Vec<u8>, u64)>,
}

/// One bucket's B+tree, planned.
struct BucketPlan {
    name: &'static [u8],
    source: Source,
    leaves: Vec<LeafPlan>,
    /// Bottom level first; the last is the root.
    branches: Vec<BranchPlan>,
    /// The root page, 0 for an empty bucket kept inline.
    root: u64,
}

/// Groups leaves into leaf pages as entries are added.
struct LeafPlanner {
    leaves: Vec<LeafPlan>,
    next_id: u64,
    open: Option<(Vec<u8>, usize, usize)>,
}

impl LeafPlanner {
    fn new(next_id: u64) -> Self {
        LeafPlanner {
            leaves: Vec::new(),
            next_id,
            open: None,
        }
    }

    fn add(&mut self, key: &[u8], value_len: usize) {
        let bytes = key.len() + value_len;
        if let Some((_, count, held)) = &self.open {
            if bolt::leaf_size(count + 1, held + bytes) > PAGE_SIZE || *count == u16::MAX as usize {
                self.close();
            }
        }
        let open = self.open.get_or_insert_with(|| (key.to_vec(), 0, 0));
        open.1 += 1;
        open.2 += bytes;
    }

    fn close(&mut self) {
        if let Some((first, count, bytes)) = self.open.take() {
            let pages = bolt::pages_for(bolt::leaf_size(count, bytes));
            self.leaves.push(LeafPlan {
                id: self.next_id,
                first,
                count,
                pages,
            });
            self.next_id += pages as u64;
        }
    }
}

/// Plans the branch levels above `leaves` from page `next_id` on; returns
/// them and the root.
fn plan_branches(leaves: &[LeafPlan], next_id: &mut u64) -> (Vec<BranchPlan>, u64) {
    let mut level: Vec<(Vec<u8>, u64)> = leaves.iter().map(|l| (l.first.clone(), l.id)).collect();
    let mut branches = Vec::new();
    while level.len() > 1 {
        let mut up = Vec::new();
        let mut children = level.into_iter().peekable();
        while children.peek().is_some() {
            let mut page = Vec::new();
            let mut size = HEADER;
            while let Some((key, _)) = children.peek() {
                let more = ELEM + key.len();
                // Two children at least, so every level is smaller.
                if page.len() >= 2 && (size + more > PAGE_SIZE || page.len() == u16::MAX as usize) {
                    break;
                }
                size += more;
                page.push(children.next().expect("peeked"));
            }
            let id = *next_id;
            *next_id += bolt::pages_for(size) as u64;
            up.push((page[0].0.clone(), id));
            branches.push(BranchPlan { id, children: page });
        }
        level = up;
    }
    (branches, level.first().map_or(0, |l| l.1))
}

/// Which page comes next.
#[derive(Debug, Clone, Copy)]
enum Next {
    Meta(u64),
    Freelist,
    Root,
    Leaf(usize, usize),
    Branch(usize, usize),
    Done,
}

/// Produces a snapshot's bytes a piece at a time from a read transaction.
pub struct SnapshotWriter {
    tx: ReadTransaction,
    buckets: Vec<BucketPlan>,
    meta: Meta,
    next: Next,
    /// The page being given out, and how much of it has been.
    page: Vec<u8>,
    sent: usize,
    /// The store's revision in this snapshot.
    revision: i64,
}

/// Calls `f` with each of `source`'s entries in key order from the key
/// `from` on, while it returns true.
fn each(
    tx: &ReadTransaction,
    source: &Source,
    from: Option<&[u8]>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StoreError> {
    match source {
        Source::Kv => {
            let start = match from {
                Some(k) => {
                    let (main, sub, _) = etcd::parse_rev_key(k).expect("a planned key");
                    Revision { main, sub }.to_u128()
                }
                None => 0,
            };
            for item in tx.open_table(KV)?.range(start..)? {
                let (rev, rec) = item?;
                let rev = Revision::from_u128(rev.value());
                let (tombstone, kv) = split_record(rec.value())
                    .ok_or_else(|| StoreError::Storage(format!("empty record at {rev:?}")))?;
                if !f(&etcd::rev_key(rev.main, rev.sub, tombstone), kv) {
                    break;
                }
            }
        }
        Source::Leases => {
            // Bytewise order of big-endian ids: non-negative ones first.
            let from = from.map_or(0, |k| i64::from_be_bytes(k.try_into().expect("8 bytes")));
            let table = tx.open_table(LEASES)?;
            let ranges = if from >= 0 {
                [table.range(from..)?, table.range(..0)?]
            } else {
                [table.range(from..0)?, table.range(0..0)?]
            };
            for item in ranges.into_iter().flatten() {
                let (id, row) = item?;
                let id = id.value();
                let lease = Lease::decode(row.value())
                    .ok_or_else(|| StoreError::Storage(format!("bad lease record {id}")))?;
                // etcd leaves RemainingTTL unset (0) until a checkpoint.
                let remaining = lease.remaining.max(0);
                if !f(
                    &id.to_be_bytes(),
                    &etcd::lease_value(id, lease.ttl, remaining),
                ) {
                    break;
                }
            }
        }
        Source::Held(entries) => {
            let at = from.map_or(0, |k| entries.partition_point(|(e, _)| e.as_slice() < k));
            for (k, v) in &entries[at..] {
                if !f(k, v) {
                    break;
                }
            }
        }
    }
    Ok(())
}

impl Store {
    /// Makes the store durable and opens a snapshot of what it holds.
    pub fn snapshot(&self) -> Result<SnapshotWriter, StoreError> {
        self.checkpoint()?;
        let tx = self.database().begin_read()?;
        SnapshotWriter::plan(tx)
    }
}

impl SnapshotWriter {
    /// Plans every page of the snapshot of `tx`: a pass over its tables
    /// keeping the first key and size of each leaf page.
    fn plan(tx: ReadTransaction) -> Result<Self, StoreError> {
        let (revision, meta_entries) = {
            let meta = tx.open_table(META)?;
            let get =
                |k| -> Result<Option<u64>, StoreError> { Ok(meta.get(k)?.map(|v| v.value())) };
            let revision = get(META_CURRENT_REV)?.map_or(1, |v| v as i64);
            let applied = get(META_APPLIED_INDEX)?.unwrap_or(0);
            let mut entries = vec![(
                etcd::CONSISTENT_INDEX.to_vec(),
                applied.to_be_bytes().to_vec(),
            )];
            if let Some(compact) = get(META_COMPACT_REV)? {
                let rev = etcd::rev_key(compact as i64, 0, false);
                entries.push((etcd::FINISHED_COMPACT.to_vec(), rev.clone()));
                entries.push((etcd::SCHEDULED_COMPACT.to_vec(), rev));
            }
            (revision, entries)
        };
        let mut alarms = BTreeSet::new();
        for item in tx.open_table(ALARMS)?.iter()? {
            let (member_id, alarm) = item?.0.value();
            alarms.insert(AlarmMember { member_id, alarm }.encode_to_vec());
        }
        let alarms = alarms.into_iter().map(|k| (k, Vec::new())).collect();

        let mut next_id = ROOT_PAGE + 1;
        let mut buckets = Vec::new();
        let mut held = Some(alarms);
        for &name in etcd::BUCKETS {
            let source = match name {
                b"alarm" => Source::Held(held.take().unwrap_or_default()),
                b"key" => Source::Kv,
                b"lease" => Source::Leases,
                b"meta" => Source::Held(meta_entries.clone()),
                _ => Source::Held(Vec::new()),
            };
            let mut planner = LeafPlanner::new(next_id);
            each(&tx, &source, None, &mut |k, v| {
                planner.add(k, v.len());
                true
            })?;
            planner.close();
            next_id = planner.next_id;
            let (branches, root) = plan_branches(&planner.leaves, &mut next_id);
            buckets.push(BucketPlan {
                name,
                source,
                leaves: planner.leaves,
                branches,
                root,
            });
        }
        let meta = Meta {
            page_size: PAGE_SIZE as u32,
            root: ROOT_PAGE,
            freelist: FREELIST_PAGE,
            pages: next_id,
            txid: TXID,
        };
        Ok(SnapshotWriter {
            tx,
            buckets,
            meta,
            next: Next::Meta(0),
            page: Vec::new(),
            sent: 0,
            revision,
        })
    }

    /// The revision the snapshot holds.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The snapshot's length without its hash: every page.
    pub fn len(&self) -> u64 {
        self.meta.pages * PAGE_SIZE as u64
    }

    /// Never: a snapshot holds its meta pages at least.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the next bytes of the snapshot to `out`, at most `max`.
    /// Returns false once the snapshot is complete and nothing was added.
    pub fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> Result<bool, StoreError> {
        let start = out.len();
        loop {
            let room = max - (out.len() - start);
            if room == 0 {
                return Ok(true);
            }
            if self.sent == self.page.len() && !self.next_page()? {
                return Ok(out.len() > start);
            }
            let n = room.min(self.page.len() - self.sent);
            out.extend_from_slice(&self.page[self.sent..self.sent + n]);
            self.sent += n;
        }
    }

    /// The first page of the first bucket after `b` that has pages.
    fn bucket_after(&self, b: Option<usize>) -> Next {
        let from = b.map_or(0, |b| b + 1);
        (from..self.buckets.len())
            .find(|&i| self.buckets[i].root != 0)
            .map_or(Next::Done, |i| Next::Leaf(i, 0))
    }

    /// Makes the next page; false when there is none.
    fn next_page(&mut self) -> Result<bool, StoreError> {
        let buf = std::mem::take(&mut self.page);
        self.sent = 0;
        let (page, next) = match self.next {
            Next::Meta(id) => {
                let m = Meta {
                    txid: TXID + id,
                    ..self.meta
                };
                let next = if id == 0 {
                    Next::Meta(1)
                } else {
                    Next::Freelist
                };
                (m.page(id), next)
            }
            Next::Freelist => {
                let mut p = buf;
                p.clear();
                bolt::header(&mut p, FREELIST_PAGE, bolt::FREELIST, 0, 0);
                p.resize(PAGE_SIZE, 0);
                (p, Next::Root)
            }
            Next::Root => {
                let mut p = PageBuilder::leaf(buf, ROOT_PAGE, self.buckets.len());
                for b in &self.buckets {
                    let mut value = Vec::with_capacity(BUCKET_HEADER + HEADER);
                    value.extend_from_slice(&b.root.to_le_bytes());
                    value.extend_from_slice(&0u64.to_le_bytes());
                    if b.root == 0 {
                        bolt::header(&mut value, 0, bolt::LEAF, 0, 0);
                    }
                    p.push_leaf(BUCKET_LEAF, b.name, &value);
                }
                (p.finish(), self.bucket_after(None))
            }
            Next::Leaf(b, i) => {
                let bucket = &self.buckets[b];
                let leaf = &bucket.leaves[i];
                let mut p = PageBuilder::leaf(buf, leaf.id, leaf.count);
                let mut first = true;
                let mut same = true;
                each(&self.tx, &bucket.source, Some(&leaf.first), &mut |k, v| {
                    if first {
                        same = k == leaf.first.as_slice();
                        first = false;
                    }
                    p.push_leaf(0, k, v);
                    p.len() < leaf.count
                })?;
                if !same || p.len() != leaf.count {
                    return Err(changed());
                }
                let page = p.finish();
                if page.len() != leaf.pages * PAGE_SIZE {
                    return Err(changed());
                }
                let next = if i + 1 < bucket.leaves.len() {
                    Next::Leaf(b, i + 1)
                } else if !bucket.branches.is_empty() {
                    Next::Branch(b, 0)
                } else {
                    self.bucket_after(Some(b))
                };
                (page, next)
            }
            Next::Branch(b, j) => {
                let bucket = &self.buckets[b];
                let branch = &bucket.branches[j];
                let mut p = PageBuilder::branch(buf, branch.id, branch.children.len());
                for (key, child) in &branch.children {
                    p.push_branch(key, *child);
                }
                let next = if j + 1 < bucket.branches.len() {
                    Next::Branch(b, j + 1)
                } else {
                    self.bucket_after(Some(b))
                };
                (p.finish(), next)
            }
            Next::Done => {
                self.page = buf;
                self.page.clear();
                return Ok(false);
            }
        };
        self.page = page;
        self.next = next;
        Ok(true)
    }
}

/// The read transaction showed a table other than the one planned.
fn changed() -> StoreError {
    StoreError::Storage("a snapshot's tables changed under its read transaction".into())
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
/// bytes followed by their SHA-256). Checks the hash first; writes beside
/// the target and renames into place, so a refused or failed restore
/// leaves nothing at `db_path`. An existing `db_path` is refused.
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
        .filter(|&n| n >= 2 * bolt::HEADER as u64)
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
    let tmp = db_path.with_extension("restoring");
    let _ = std::fs::remove_file(&tmp);
    let written = write_db(&file, body_len, &tmp).map_err(|e| {
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

impl From<String> for Written {
    fn from(reason: String) -> Self {
        Written::Invalid(reason)
    }
}

impl From<&str> for Written {
    fn from(reason: &str) -> Self {
        Written::Invalid(reason.into())
    }
}

/// A store failure while writing the new database.
fn st<E: Into<StoreError>>(e: E) -> Written {
    Written::Store(e.into())
}

/// Reads the pages of a bbolt file, each at most once.
struct Pages<'a> {
    file: &'a File,
    page_size: u64,
    pages: u64,
    /// A bit per page: reached already.
    seen: Vec<u64>,
}

impl Pages<'_> {
    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<(), Written> {
        self.file.read_exact_at(buf, at).map_err(Written::Io)
    }

    /// The page `id` with its overflow; refused if reached before.
    fn page(&mut self, id: u64) -> Result<Vec<u8>, Written> {
        if id < 2 || id >= self.pages {
            return Err(format!("page {id} out of range (the file has {})", self.pages).into());
        }
        let mut head = [0u8; HEADER];
        self.read_at(&mut head, id * self.page_size)?;
        let (pid, _, _, overflow) = bolt::read_header(&head).expect("a whole header");
        let last = id + overflow as u64;
        if pid != id || last >= self.pages {
            return Err(format!("page {id} has a bad header").into());
        }
        for p in id..=last {
            let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            if self.seen[word] & bit != 0 {
                return Err(format!("page {p} is referenced twice").into());
            }
            self.seen[word] |= bit;
        }
        let mut page = vec![0u8; ((last - id + 1) * self.page_size) as usize];
        self.read_at(&mut page, id * self.page_size)?;
        Ok(page)
    }

    /// Calls `f` with every element of the bucket whose leaf value is
    /// `bucket`, in key order, checking that order.
    fn walk(
        &mut self,
        bucket: &[u8],
        f: &mut dyn FnMut(LeafElem<'_>) -> Result<(), Written>,
    ) -> Result<(), Written> {
        let root = bucket
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or("a bucket value is cut short")?;
        let mut last: Option<Vec<u8>> = None;
        let mut ordered = |e: LeafElem<'_>| -> Result<(), Written> {
            if let Some(l) = &mut last {
                if e.key <= l.as_slice() {
                    return Err("keys out of order".into());
                }
                l.clear();
                l.extend_from_slice(e.key);
            } else {
                last = Some(e.key.to_vec());
            }
            f(e)
        };
        if root == 0 {
            let inline = bucket
                .get(BUCKET_HEADER..)
                .ok_or("an inline bucket is cut short")?;
            for e in bolt::leaf_elems(inline)? {
                ordered(e)?;
            }
            return Ok(());
        }
        let mut stack = vec![(root, 0usize)];
        while let Some((id, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err("a bucket's tree is too deep".into());
            }
            let page = self.page(id)?;
            let (_, flags, _, _) = bolt::read_header(&page).expect("a whole header");
            if flags == bolt::BRANCH {
                let children = bolt::branch_elems(&page)?;
                stack.extend(children.iter().rev().map(|&(_, c)| (c, depth + 1)));
            } else {
                for e in bolt::leaf_elems(&page)? {
                    ordered(e)?;
                }
            }
        }
        Ok(())
    }
}

/// Puts records into the new database in batches.
struct Batches<'a> {
    db: &'a Database,
    kv: Vec<(u128, Vec<u8>)>,
    bytes: usize,
}

impl Batches<'_> {
    fn push(&mut self, rev: u128, record: Vec<u8>) -> Result<(), Written> {
        self.bytes += record.len();
        self.kv.push((rev, record));
        if self.kv.len() >= RESTORE_BATCH || self.bytes >= RESTORE_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Written> {
        let mut tx = self.db.begin_write().map_err(st)?;
        tx.set_durability(Durability::None).map_err(st)?;
        {
            let mut t = tx.open_table(KV).map_err(st)?;
            for (rev, rec) in self.kv.drain(..) {
                t.insert(rev, rec.as_slice()).map_err(st)?;
            }
        }
        tx.commit().map_err(st)?;
        self.bytes = 0;
        Ok(())
    }
}

/// Reads the bbolt file of `body_len` bytes into a new database at `path`,
/// synced.
fn write_db(file: &File, body_len: u64, path: &Path) -> Result<Restored, Written> {
    // Page 0's meta says the page size, as bbolt reads it; if it is
    // damaged, page 1's is looked for at the usual size.
    let mut first = vec![0u8; PAGE_SIZE.min(body_len as usize)];
    file.read_exact_at(&mut first, 0).map_err(Written::Io)?;
    let meta0 = Meta::read(&first, 0);
    let page_size = meta0
        .as_ref()
        .map_or(PAGE_SIZE as u64, |m| m.page_size as u64);
    if !page_size.is_power_of_two() || !(1024..=65536).contains(&page_size) {
        return Err(format!("page size {page_size}").into());
    }
    let meta1 = if body_len >= 2 * page_size {
        let mut second = vec![0u8; page_size as usize];
        file.read_exact_at(&mut second, page_size)
            .map_err(Written::Io)?;
        Meta::read(&second, 1)
    } else {
        Err("no second meta page".into())
    };
    let meta = match (meta0, meta1) {
        (Ok(a), Ok(b)) => {
            if b.txid > a.txid {
                b
            } else {
                a
            }
        }
        (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
        (Err(e), Err(_)) => return Err(e.into()),
    };
    if meta.page_size as u64 != page_size {
        return Err("the meta pages disagree on the page size".into());
    }
    if meta.pages.checked_mul(page_size) != Some(body_len) {
        return Err(format!(
            "{} pages of {page_size} bytes, but {body_len} bytes before the hash",
            meta.pages
        )
        .into());
    }
    let mut pages = Pages {
        file,
        page_size,
        pages: meta.pages,
        seen: vec![0; meta.pages.div_ceil(64) as usize],
    };
    pages.seen[0] |= 0b11;

    let mut buckets: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut root = meta.root.to_le_bytes().to_vec();
    root.extend_from_slice(&[0; 8]);
    pages.walk(&root, &mut |e| {
        if e.flags & BUCKET_LEAF != 0 {
            buckets.push((e.key.to_vec(), e.value.to_vec()));
        }
        Ok(())
    })?;
    let bucket = |name: &[u8]| buckets.iter().find(|(n, _)| n == name).map(|b| &b.1);
    let plain = |e: &LeafElem<'_>| -> Result<(), Written> {
        if e.flags & BUCKET_LEAF != 0 {
            return Err("a bucket inside a data bucket".into());
        }
        Ok(())
    };

    let db = Database::create(path).map_err(st)?;
    let mut out = Restored {
        revision: 1,
        records: 0,
        leases: 0,
        applied_index: 0,
    };
    let mut compact = None;
    if let Some(b) = bucket(b"meta") {
        pages.walk(b, &mut |e| {
            plain(&e)?;
            match e.key {
                k if k == etcd::CONSISTENT_INDEX => {
                    let v: [u8; 8] = e.value.try_into().map_err(|_| "bad consistent_index")?;
                    out.applied_index = u64::from_be_bytes(v);
                }
                k if k == etcd::FINISHED_COMPACT => {
                    let (main, _, _) =
                        etcd::parse_rev_key(e.value).ok_or("bad finishedCompactRev")?;
                    compact = Some(main);
                }
                _ => {}
            }
            Ok(())
        })?;
    }

    let mut tx = db.begin_write().map_err(st)?;
    tx.set_durability(Durability::None).map_err(st)?;
    if let Some(b) = bucket(b"alarm") {
        let mut t = tx.open_table(ALARMS).map_err(st)?;
        pages.walk(b, &mut |e| {
            plain(&e)?;
            let m = AlarmMember::decode(e.key).map_err(|_| "bad alarm key")?;
            t.insert((m.member_id, m.alarm), 0).map_err(st)?;
            Ok(())
        })?;
    }
    if let Some(b) = bucket(b"lease") {
        let mut t = tx.open_table(LEASES).map_err(st)?;
        pages.walk(b, &mut |e| {
            plain(&e)?;
            let id: [u8; 8] = e.key.try_into().map_err(|_| "bad lease key")?;
            let id = i64::from_be_bytes(id);
            let (vid, ttl, remaining) = etcd::parse_lease(e.value).ok_or("bad lease")?;
            if vid != id {
                return Err(format!("lease {id} holds id {vid}").into());
            }
            let lease = Lease {
                ttl,
                remaining: if remaining > 0 { remaining } else { -1 },
                keys: Default::default(),
            };
            t.insert(id, lease.encode().as_slice()).map_err(st)?;
            out.leases += 1;
            Ok(())
        })?;
    }
    tx.commit().map_err(st)?;

    let mut last_main = 0;
    if let Some(b) = bucket(b"key") {
        let mut batches = Batches {
            db: &db,
            kv: Vec::new(),
            bytes: 0,
        };
        pages.walk(b, &mut |e| {
            plain(&e)?;
            let (main, sub, tombstone) = etcd::parse_rev_key(e.key).ok_or("bad revision key")?;
            let mut kv = KeyValue::decode(e.value).map_err(|_| "bad key value")?;
            let record = if tombstone && kv.mod_revision == 0 {
                // etcd's tombstones hold only the key.
                kv.mod_revision = main;
                join_record(&kv.encode_to_vec(), true)
            } else {
                join_record(e.value, tombstone)
            };
            batches.push(Revision { main, sub }.to_u128(), record)?;
            last_main = main;
            out.records += 1;
            Ok(())
        })?;
        batches.flush()?;
    }

    out.revision = last_main.max(compact.unwrap_or(0)).max(1);
    let mut tx = db.begin_write().map_err(st)?;
    {
        let mut t = tx.open_table(META).map_err(st)?;
        t.insert(META_CURRENT_REV, out.revision as u64)
            .map_err(st)?;
        t.insert(META_APPLIED_INDEX, out.applied_index)
            .map_err(st)?;
        if let Some(c) = compact {
            t.insert(META_COMPACT_REV, c as u64).map_err(st)?;
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

#[cfg(test)]
mod fuzz;
