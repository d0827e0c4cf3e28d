//! The write-ahead log: commands made durable before they are applied.
//!
//! A write is acknowledged once it is durable. Committing redb durably for
//! every batch costs a copy-on-write of every B-tree page the batch touched
//! plus an fsync; appending the batch's commands to a log costs one
//! sequential write and one `fdatasync`. So the writer appends each batch
//! here first, then applies it to the store in memory (its pending writes),
//! and writes the store out durably only now and then (a *checkpoint*):
//!
//! ```text
//! append + fdatasync  ->  log segment     the write is durable
//! apply               ->  pending writes  readers see it; it is answered
//! checkpoint          ->  redb            the log up to here is released
//! ```
//!
//! After a crash the store comes back at its last checkpoint and the log
//! replays what came after, through the same deterministic apply. This is
//! etcd's shape (WAL plus a periodic backend commit), and the shape a Raft
//! log will take. Measured against a durable redb commit per batch, and the
//! ways of appending that were tried: `docs/decisions.md`, entries 1–3.
//!
//! On disk the log is a directory of *segments*, each named after the index
//! of its first entry (`00000000000000000001.wal`) and preallocated with
//! `fallocate` so that appends do not grow the file: an `fdatasync` then has
//! no file size to record. An entry is a 16-byte header — payload length
//! (`u32`), CRC-32 of index and payload (`u32`), log index (`u64`), all
//! little-endian — followed by the protobuf-encoded `Command`.
//!
//! Reading stops at the first entry that is not whole: a zero length (the
//! preallocated tail), a bad checksum (a write torn by a crash), or an index
//! that does not follow the one before. Such a tail was never acknowledged,
//! because an append is answered only after its `fdatasync`; the next append
//! overwrites it. Segments whose entries are all at or below the store's
//! durable index are deleted by [`Wal::release`].

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;
use roster_proto::roster::Command;

use crate::error::StoreError;

/// Bytes preallocated per segment by default; a segment is sealed once an
/// append would run past it (a single larger batch still goes into one
/// segment).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Released data in the active segment above which [`Wal::release`] starts
/// a fresh segment rather than keep reading past it at every start.
pub const ROLL_RELEASED_BYTES: u64 = 8 << 20;

/// Length, checksum and index in front of every entry.
const HEADER: usize = 16;

/// File name suffix of a segment.
const SUFFIX: &str = ".wal";

/// An append-only log of numbered commands.
pub struct Wal {
    dir: PathBuf,
    /// Sealed segments, oldest first, by the index of their first entry.
    sealed: Vec<(u64, PathBuf)>,
    /// The segment appends go to.
    active: File,
    /// Index of the first entry the active segment holds (or will hold).
    active_first: u64,
    /// Where the next entry goes in the active segment.
    pos: u64,
    /// The index the next appended entry must carry.
    next: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// Size at which the active segment is sealed.
    segment_bytes: u64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("{what} {}: {e}", path.display()))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// How reading a segment ended.
struct SegmentEnd {
    /// Where the whole entries end: the next entry goes here.
    at: u64,
    /// True at the end of the file or the preallocated zeros; false at an
    /// entry that is not whole.
    clean: bool,
}

/// Reads the whole entries at the start of the segment `file`, from
/// `expect` on, and hands each to `each`. Reads no further than the first
/// entry that is not whole, so a mostly empty preallocated segment costs
/// what it holds, not its size.
fn read_segment(
    file: File,
    mut expect: Option<u64>,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> std::io::Result<Result<SegmentEnd, StoreError>> {
    let mut r = std::io::BufReader::with_capacity(256 << 10, file);
    let mut at = 0u64;
    let mut head = [0u8; HEADER];
    let mut payload = Vec::new();
    loop {
        if let Err(e) = r.read_exact(&mut head) {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Ok(Ok(SegmentEnd { at, clean: true })),
                _ => Err(e),
            };
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if len == 0 {
            // Preallocated space: zeros from here on, unless a crash tore
            // an entry whose length never reached the disk.
            return Ok(Ok(SegmentEnd {
                at,
                clean: head == [0; HEADER],
            }));
        }
        payload.resize(len, 0);
        if let Err(e) = r.read_exact(&mut payload) {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Ok(Ok(SegmentEnd { at, clean: false })),
                _ => Err(e),
            };
        }
        if crc != checksum(index, &payload) || expect.is_some_and(|e| e != index) {
            return Ok(Ok(SegmentEnd { at, clean: false }));
        }
        if let Err(e) = each(index, &payload) {
            return Ok(Err(e));
        }
        expect = Some(index + 1);
        at += (HEADER + len) as u64;
    }
}

impl Wal {
    /// Opens the log in `dir` (creating it) and returns it with every
    /// entry above `after`, in order, for replay. `after` is the store's
    /// durable applied index; the log must hold every entry above it.
    pub fn open(dir: &Path, after: u64) -> Result<(Wal, Vec<(u64, Command)>), StoreError> {
        Wal::open_sized(dir, after, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments of `segment_bytes`.
    pub fn open_sized(
        dir: &Path,
        after: u64,
        segment_bytes: u64,
    ) -> Result<(Wal, Vec<(u64, Command)>), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
            let entry = entry.map_err(|e| io("listing", dir, e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push((first, entry.path()));
        }
        segments.sort();

        let mut replay = Vec::new();
        let mut next = None;
        let mut tail = None;
        let count = segments.len();
        for (i, (first, path)) in segments.iter().enumerate() {
            let file = File::open(path).map_err(|e| io("opening", path, e))?;
            let mut last = None;
            let end = read_segment(file, next.or(Some(*first)), |index, payload| {
                last = Some(index);
                if index > after {
                    replay.push((index, Command::decode(payload)?));
                }
                Ok(())
            })
            .map_err(|e| io("reading", path, e))??;
            if i + 1 < count && !end.clean {
                // Only the newest segment may end in a torn write: older
                // ones were whole and synced before the next was started.
                return Err(StoreError::Storage(format!(
                    "log segment {} is damaged at byte {}",
                    path.display(),
                    end.at
                )));
            }
            if let Some(last) = last {
                next = Some(last + 1);
            }
            let end = end.at;
            tail = Some((*first, path.clone(), end));
        }
        if let Some(&(first, _)) = replay.first() {
            if first != after + 1 {
                return Err(StoreError::Storage(format!(
                    "log in {} starts at entry {first}, the store needs {}",
                    dir.display(),
                    after + 1
                )));
            }
        }
        let logged_next = next;
        let next = logged_next.unwrap_or(0).max(after + 1);
        let (active_first, active, pos) = match tail {
            // Appends continue the newest segment when it ends where the
            // next entry belongs. Otherwise (the store is ahead of all that
            // is logged, as with a data directory from before the log) a
            // fresh segment starts where the store is.
            Some((first, path, end))
                if logged_next == Some(next) || (logged_next.is_none() && first == next) =>
            {
                segments.pop();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("opening", &path, e))?;
                (first, file, end)
            }
            _ => (next, create_segment(dir, next, segment_bytes)?, 0),
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            sealed: segments,
            active,
            active_first,
            pos,
            next,
            buf: Vec::new(),
            segment_bytes,
        };
        Ok((wal, replay))
    }

    /// The index the next appended entry must carry.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Appends `entries`, which must be numbered from [`Wal::next_index`]
    /// on, and makes them durable before returning.
    pub fn append(&mut self, entries: &[(u64, Command)]) -> Result<(), StoreError> {
        self.buf.clear();
        for (index, cmd) in entries {
            if *index != self.next {
                return Err(StoreError::Storage(format!(
                    "log append out of order: entry {index}, expected {}",
                    self.next
                )));
            }
            let start = self.buf.len();
            self.buf.resize(start + HEADER, 0);
            cmd.encode(&mut self.buf).expect("Vec grows as needed");
            let payload = &self.buf[start + HEADER..];
            let len = u32::try_from(payload.len())
                .map_err(|_| StoreError::Storage("log entry over 4 GiB".into()))?;
            let crc = checksum(*index, payload);
            let head = &mut self.buf[start..start + HEADER];
            head[0..4].copy_from_slice(&len.to_le_bytes());
            head[4..8].copy_from_slice(&crc.to_le_bytes());
            head[8..16].copy_from_slice(&index.to_le_bytes());
            self.next += 1;
        }
        let Some(&(first, _)) = entries.first() else {
            return Ok(());
        };
        if self.pos > 0 && self.pos + self.buf.len() as u64 > self.segment_bytes {
            self.roll(first)?;
        }
        // The segment's path is formatted only for an error: an append
        // is on every write's path.
        self.active
            .write_all_at(&self.buf, self.pos)
            .map_err(|e| io("writing", &self.active_path(), e))?;
        self.active
            .sync_data()
            .map_err(|e| io("syncing", &self.active_path(), e))?;
        self.pos += self.buf.len() as u64;
        Ok(())
    }

    /// Forgets entries up to `upto`, which the store now holds durably:
    /// deletes every sealed segment whose entries all lie at or below it.
    /// When that is every entry and the active segment holds more than
    /// [`ROLL_RELEASED_BYTES`], a fresh segment is started first, so the
    /// old one goes too and a restart does not read through it.
    pub fn release(&mut self, upto: u64) -> Result<(), StoreError> {
        if upto + 1 >= self.next && self.pos > ROLL_RELEASED_BYTES.min(self.segment_bytes / 2) {
            self.roll(self.next)?;
        }
        let mut keep = 0;
        while keep < self.sealed.len() {
            let next_first = self.sealed.get(keep + 1).map_or(self.active_first, |s| s.0);
            if next_first > upto + 1 {
                break;
            }
            keep += 1;
        }
        for (_, path) in self.sealed.drain(..keep) {
            std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
        }
        Ok(())
    }

    /// Number of segment files, the active one included.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(segment_name(self.active_first))
    }

    /// Seals the active segment and starts a new one at entry `first`.
    fn roll(&mut self, first: u64) -> Result<(), StoreError> {
        let file = create_segment(&self.dir, first, self.segment_bytes)?;
        let old = std::mem::replace(&mut self.active, file);
        drop(old);
        self.sealed.push((
            self.active_first,
            self.dir.join(segment_name(self.active_first)),
        ));
        self.active_first = first;
        self.pos = 0;
        Ok(())
    }
}

/// Creates and preallocates the segment starting at `first`, and makes its
/// directory entry durable.
fn create_segment(dir: &Path, first: u64, bytes: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io("creating", &path, e))?;
    // Where the file system cannot preallocate, appends grow the file
    // instead: correct, only slower to sync.
    let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes);
    file.sync_all().map_err(|e| io("syncing", &path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests;
