//! The log: numbered, termed entries made durable before anyone relies on
//! them, kept until the store has applied them durably.
//!
//! An append is one `write` and one `fdatasync`; it returns once the
//! entries are on disk. The store applies entries in memory and writes
//! itself out only now and then; after a crash it comes back at its last
//! durable index (`after`), and [`Log::open`] hands back every entry above
//! it to apply again. [`Log::release`] drops what the store holds durably.
//!
//! # Segments
//!
//! The log is a directory of segment files, each named after the index of
//! its first entry (`00000000000000000001.wal`) and preallocated to its
//! full size (`fallocate`, or `set_len` where that is not supported), so
//! that an append never grows the file and its `fdatasync` has no file size
//! to record. A segment is created as `NAME.tmp`, sized, given its header,
//! synced, renamed to `NAME` and the directory synced: a segment under its
//! final name always has a valid header and at least the size the header
//! states. Leftover `*.wal.tmp` files are deleted once `open` has found
//! the log sound.
//!
//! ```text
//! segment header (64 bytes, little-endian)
//!   0  magic "RSTRRAFT"      8  format version (u32) = 1
//!  12  flags (u32): bit 0 = prev_term is known
//!  16  first index (u64)    24  prev_term (u64): term of entry first - 1
//!  32  size the file was created with (u64)
//!  40  zeros                60  CRC-32 of bytes 0..60
//!
//! record (from byte 64 on, each a multiple of 32 bytes)
//!   0  0xa7                  1  kind (u8): 1 blank, 2 command, 3 membership
//!   2  zero (u16)            4  payload length (u32)
//!   8  term (u64)           16  index (u64)
//!  24  CRC-32 of term, index, kind and payload
//!  28  CRC-32 of header bytes 0..28
//!  32  payload, then zeros, then 0x7a as the record's last byte
//! ```
//!
//! The header checksum means a damaged length is recognised as damage
//! before it is believed. The 32-byte alignment means a record header never
//! straddles a 512-byte sector, so writing one is all or nothing. The
//! nonzero first and last byte mean no piece of a whole record, cut at
//! sector boundaries, is all zero unless its payload holds a whole zero
//! sector.
//!
//! Segments chain: a segment starts at the entry after the last one of the
//! segment before, and carries that entry's term as `prev_term`, so the
//! term of the last entry survives a segment that is still empty. A sealed
//! (not newest) segment holds at least one entry. Terms never decrease.
//!
//! # Reading: the end, a torn tail, or corruption
//!
//! Reading a segment stops at the first all-zero record header: the
//! preallocated space. A record is *bad* when its header is not a valid
//! record header (marks, zero field, header checksum), when its kind is
//! unknown, its index does not follow the previous record's (or is not the
//! segment's first index) or is `u64::MAX` (no entry could follow it),
//! its term is lower than the previous term, its
//! length runs past the end of the file, or its payload checksum, padding
//! or end mark is wrong.
//!
//! A bad record is a **torn tail**, the trace of an append cut short by a
//! crash, when all of these hold:
//! - it is in the newest segment;
//! - split at 512-byte sector boundaries of the file, its bytes (the header,
//!   and when the header is valid the whole record it claims, clipped to the
//!   file) include at least one all-zero piece: a sector the write never
//!   reached. A flipped byte leaves none;
//! - every byte after it (after the end its valid header claims, else after
//!   its header) up to the end of the file is zero.
//!
//! Such a record was never acknowledged, since an append returns only after
//! its `fdatasync`. The log ends before it, and `open` zeroes it (header
//! first, then the rest, each synced, so a crash in between leaves a
//! torn tail or an end again) so that a shorter append cannot leave
//! pieces of it behind. Every other bad record is **corruption**:
//! [`LogError::Corrupt`] names the file and byte offset, and `open`
//! changes and deletes nothing. So are a missing or damaged segment
//! header, a file shorter than its header says, a segment whose name and
//! header disagree, a sealed segment with no entries, and segments that do
//! not chain (a gap is a lost segment).
//!
//! Reading stops at a zero header without looking further: a clean open
//! reads what the log holds, not the preallocated size. A crash can
//! persist a later sector of an append and not the one holding a record
//! header, leaving records past that zero header. So every append writes
//! zeros over the next record header's place along with its records (same
//! write, same `fdatasync`): what lies past the end of the log is never
//! reached, even after a shorter append.
//!
//! The rule assumes a torn append leaves a prefix of its sectors written
//! and the rest zero. A crash that persisted a later sector but not an
//! earlier one is reported as corruption (unless the sector missing held a
//! record header whole, which reads as the end, above): the log stops
//! rather than guess.
//! Likewise damage that zeroes a whole sector-aligned piece of the last
//! record (or only its last few bytes when they start a sector) reads as a
//! torn tail: it is indistinguishable from one.
//!
//! # Truncation
//!
//! [`Log::truncate`] drops entries from an index on, as Raft does when a
//! new leader's log disagrees with this one. Whole segments past the cut
//! are deleted newest first; in the segment holding the cut, the record
//! header at the cut is zeroed and synced first (one sector, so the log
//! ends there from that moment), then the rest of the old records are
//! zeroed and synced, so no stale record past the new end can ever be read
//! back, even after a later, shorter append. A cut at a segment's first
//! entry replaces the segment with a fresh one by rename.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod format;

use format::{
    check_body, decode_header, encode_record, Header, SegmentHeader, ALIGN, MAX_PAYLOAD,
    RECORD_HEADER, SECTOR, SEGMENT_HEADER,
};

/// Bytes preallocated per segment by default; a segment is sealed once an
/// append would run past it (a single larger batch still goes into one
/// segment, which then grows).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Released data in the active segment above which [`Log::release`] starts
/// a fresh segment rather than keep reading past it at every open.
pub const ROLL_RELEASED_BYTES: u64 = 8 << 20;

/// File name suffix of a segment.
const SUFFIX: &str = ".wal";
/// Suffix of a segment being created.
const TMP_SUFFIX: &str = ".wal.tmp";

/// Where an entry sits in the log: the leader term that created it and its
/// position. Ordered by term, then index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct LogId {
    pub term: u64,
    pub index: u64,
}

/// What an entry is for; the log stores it and hands it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// No payload meaning: a new leader's first entry.
    Blank,
    /// A command for the state machine.
    Command,
    /// A change of cluster membership.
    Membership,
}

/// An entry to append, borrowing its payload.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub id: LogId,
    pub kind: EntryKind,
    pub payload: &'a [u8],
}

/// An entry read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: LogId,
    pub kind: EntryKind,
    pub payload: Vec<u8>,
}

/// Everything the log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The log on disk is damaged in a way a crash cannot explain.
    #[error("log segment {} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The log and the store do not fit together: the log lacks entries
    /// the store needs, or ends before what the store has applied.
    #[error("log in {} does not fit the store: {reason}", dir.display())]
    Mismatch { dir: PathBuf, reason: String },
    /// An append or truncation the log refuses; nothing was changed.
    #[error("log refused: {0}")]
    Rejected(String),
    /// An earlier write failed, so what is on disk is unknown; the log must
    /// be opened again.
    #[error("log in {} failed earlier; reopen it", dir.display())]
    Failed { dir: PathBuf },
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |source| LogError::Io { what, path, source }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// A segment file the log knows.
#[derive(Clone, Debug)]
struct Segment {
    first: u64,
    prev_term: Option<u64>,
    path: PathBuf,
}

/// An append-only log of numbered, termed entries.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    /// Sealed segments, oldest first.
    sealed: Vec<Segment>,
    /// The segment appends go to.
    active_seg: Segment,
    active: File,
    /// Where the next record goes in the active segment.
    pos: u64,
    /// Length of the active segment's file.
    active_len: u64,
    /// The index the next appended entry must carry.
    next: u64,
    /// The last entry's id, or the one before the active segment.
    last: Option<LogId>,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// Size new segments are created with and sealed at.
    segment_bytes: u64,
    /// Set when a write failed: what is on disk is unknown.
    failed: bool,
}

impl Log {
    /// Opens (creating) the log in `dir`; returns it and every entry with
    /// index > `after` (the store's durable applied index), in order. An
    /// `after` of `u64::MAX` is a [`LogError::Mismatch`]: no entry follows.
    pub fn open(dir: &Path, after: u64) -> Result<(Log, Vec<Entry>), LogError> {
        Log::open_sized(dir, after, SEGMENT_BYTES)
    }

    /// [`Log::open`] creating segments of `segment_bytes` (rounded up to a
    /// multiple of 32, and room for at least one record).
    pub fn open_sized(
        dir: &Path,
        after: u64,
        segment_bytes: u64,
    ) -> Result<(Log, Vec<Entry>), LogError> {
        let segment_bytes = segment_bytes.max(SEGMENT_HEADER + ALIGN).div_ceil(ALIGN) * ALIGN;
        if after == u64::MAX {
            return Err(LogError::Mismatch {
                dir: dir.to_path_buf(),
                reason: format!("the store has applied up to entry {after}: no entry can follow"),
            });
        }
        create_dir(dir)?;
        let (segments, unfinished) = list_segments(dir)?;

        let Some(&(first_retained, _)) = segments.first() else {
            remove_unfinished(dir, &unfinished)?;
            let first = after + 1;
            let active_seg = Segment {
                first,
                prev_term: None,
                path: dir.join(segment_name(first)),
            };
            let active = create_segment(dir, first, None, segment_bytes)?;
            let log = Log {
                dir: dir.to_path_buf(),
                sealed: Vec::new(),
                active_seg,
                active,
                pos: SEGMENT_HEADER,
                active_len: segment_bytes,
                next: first,
                last: None,
                buf: Vec::new(),
                segment_bytes,
                failed: false,
            };
            return Ok((log, Vec::new()));
        };
        if first_retained > after + 1 {
            return Err(LogError::Mismatch {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the log starts at entry {first_retained} but the store has applied \
                     only up to {after}: the store is missing or older than the log"
                ),
            });
        }

        let mut replay = Vec::new();
        let mut sealed = Vec::new();
        // The last entry read so far (or known from a segment header).
        let mut last: Option<LogId> = None;
        let count = segments.len();
        let mut newest = None;
        for (i, (first, path)) in segments.into_iter().enumerate() {
            let is_newest = i + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(is_newest)
                .open(&path)
                .map_err(io("opening", &path))?;
            let header = read_segment_header(&file, &path)?;
            if first == 0 {
                return Err(corrupt(&path, 16, "a segment starting at entry 0"));
            }
            if header.first != first {
                return Err(corrupt(
                    &path,
                    16,
                    format!(
                        "the header says the segment starts at entry {}",
                        header.first
                    ),
                ));
            }
            let file_len = file.metadata().map_err(io("reading", &path))?.len();
            if file_len < header.size {
                return Err(corrupt(
                    &path,
                    file_len,
                    format!(
                        "the file is {file_len} bytes, its header says {}: truncated",
                        header.size
                    ),
                ));
            }
            if i > 0 {
                let before = last.expect("a sealed segment holds an entry");
                if first != before.index + 1 {
                    return Err(corrupt(
                        &path,
                        0,
                        format!(
                            "the segment starts at entry {first} but the one before ends at \
                             entry {}: entries are missing",
                            before.index
                        ),
                    ));
                }
                if header.prev_term != Some(before.term) {
                    return Err(corrupt(
                        &path,
                        24,
                        format!(
                            "the header says entry {} has term {:?}, the segment before says {}",
                            before.index, header.prev_term, before.term
                        ),
                    ));
                }
            }
            let scan = scan(
                &file,
                &path,
                file_len,
                first,
                header.prev_term,
                |_, id, kind, payload| {
                    if id.index > after {
                        replay.push(Entry {
                            id,
                            kind,
                            payload: payload.to_vec(),
                        });
                    }
                },
            )?;
            let mut torn = None;
            if let Some(bad) = &scan.bad {
                if !is_newest {
                    return Err(corrupt(
                        &path,
                        bad.at,
                        format!("{} in a sealed segment", bad.reason),
                    ));
                }
                match torn_end(&file, &path, file_len, bad)? {
                    Ok(end) => torn = Some((bad.at, end, bad.reason.clone())),
                    Err(why) => {
                        return Err(corrupt(&path, bad.at, format!("{}, and {why}", bad.reason)))
                    }
                }
            }
            let seg = Segment {
                first,
                prev_term: header.prev_term,
                path,
            };
            match scan.last {
                Some(id) => last = Some(id),
                None if is_newest => {
                    last = header.prev_term.map(|term| LogId {
                        term,
                        index: first - 1,
                    })
                }
                None => {
                    return Err(corrupt(
                        &seg.path,
                        SEGMENT_HEADER,
                        "a sealed segment holds no entries",
                    ))
                }
            }
            if is_newest {
                let next = scan.last.map_or(first, |id| id.index + 1);
                newest = Some((seg, file, file_len, scan.end, next, torn));
            } else {
                sealed.push(seg);
            }
        }
        let (active_seg, active, active_len, pos, next, torn) =
            newest.expect("at least one segment");
        if next - 1 < after {
            return Err(LogError::Mismatch {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the log ends at entry {} but the store has applied up to {after}: \
                     the log lost entries",
                    next - 1
                ),
            });
        }
        // The log checks out: from here on, open may change files.
        remove_unfinished(dir, &unfinished)?;
        if let Some((at, end, reason)) = torn {
            tracing::warn!(
                segment = %active_seg.path.display(),
                offset = at,
                %reason,
                "log ends in a torn append; erasing it"
            );
            erase(&active, &active_seg.path, at, end)?;
        }
        let log = Log {
            dir: dir.to_path_buf(),
            sealed,
            active_seg,
            active,
            pos,
            active_len,
            next,
            last,
            buf: Vec::new(),
            segment_bytes,
            failed: false,
        };
        Ok((log, replay))
    }

    /// The index the next appended entry must carry.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// The last entry's id; `None` if the log never held one.
    pub fn last_id(&self) -> Option<LogId> {
        self.last
    }

    /// Number of segment files, the active one included.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Appends `records`, durably (`fdatasync`) before returning. Their
    /// indexes must continue from [`Log::next_index`] and their terms must
    /// not decrease; otherwise nothing is written.
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<(), LogError> {
        self.usable()?;
        let r = self.append_inner(records);
        self.note(r)
    }

    fn append_inner(&mut self, records: &[Record<'_>]) -> Result<(), LogError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let mut expect = self.next;
        let mut term = self.last.map_or(0, |id| id.term);
        for r in records {
            if r.id.index != expect {
                return Err(LogError::Rejected(format!(
                    "append out of order: entry {}, expected {expect}",
                    r.id.index
                )));
            }
            if r.id.term < term {
                return Err(LogError::Rejected(format!(
                    "entry {} has term {}, lower than the term {term} before it",
                    r.id.index, r.id.term
                )));
            }
            if r.payload.len() > MAX_PAYLOAD {
                return Err(LogError::Rejected(format!(
                    "entry {} has a payload of {} bytes, over the limit of {MAX_PAYLOAD}",
                    r.id.index,
                    r.payload.len()
                )));
            }
            expect += 1;
            term = r.id.term;
        }
        self.buf.clear();
        for r in records {
            encode_record(&mut self.buf, r);
        }
        let len = self.buf.len() as u64;
        if self.pos > SEGMENT_HEADER && self.pos + len > self.segment_bytes {
            self.roll(first.id.index)?;
        }
        // Zeros over the next record header's place, in the same write:
        // whatever lies beyond a zero header the log ended at (a crash can
        // persist a later sector of an append and not an earlier one) is
        // never read back after a shorter append.
        let zeros = RECORD_HEADER.min(self.active_len.saturating_sub(self.pos + len));
        self.buf.resize((len + zeros) as usize, 0);
        // The path is cloned only for an error: an append is on every
        // write's path.
        self.active
            .write_all_at(&self.buf, self.pos)
            .map_err(|e| io("writing", &self.active_seg.path)(e))?;
        self.active
            .sync_data()
            .map_err(|e| io("syncing", &self.active_seg.path)(e))?;
        self.pos += len;
        self.active_len = self.active_len.max(self.pos);
        self.next = expect;
        self.last = records.last().map(|r| r.id);
        Ok(())
    }

    /// Forgets entries up to `upto`, which the store now holds durably:
    /// deletes every sealed segment whose entries all lie at or below it.
    /// When that is every entry and the active segment holds more than
    /// [`ROLL_RELEASED_BYTES`] (or half a segment), a fresh segment is
    /// started first, so the old one goes too and an open does not read
    /// through it.
    pub fn release(&mut self, upto: u64) -> Result<(), LogError> {
        self.usable()?;
        let r = self.release_inner(upto);
        self.note(r)
    }

    fn release_inner(&mut self, upto: u64) -> Result<(), LogError> {
        let held = self.pos - SEGMENT_HEADER;
        if upto + 1 >= self.next && held > ROLL_RELEASED_BYTES.min(self.segment_bytes / 2) {
            self.roll(self.next)?;
        }
        // Oldest first, each deletion synced: a crash part way leaves a
        // log that starts later, never one with a hole.
        while let Some(seg) = self.sealed.first() {
            let next_first = self.sealed.get(1).unwrap_or(&self.active_seg).first;
            if next_first > upto + 1 {
                break;
            }
            std::fs::remove_file(&seg.path).map_err(io("removing", &seg.path))?;
            self.sealed.remove(0);
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Drops the entries at `from` and above, durably, as Raft does when
    /// this log conflicts with the leader's; appends continue at `from`.
    /// Entries below the first one retained cannot be dropped (they were
    /// released: the store holds them).
    pub fn truncate(&mut self, from: u64) -> Result<(), LogError> {
        self.usable()?;
        let r = self.truncate_inner(from);
        self.note(r)
    }

    fn truncate_inner(&mut self, from: u64) -> Result<(), LogError> {
        if from >= self.next {
            return Ok(());
        }
        let first_retained = self.sealed.first().unwrap_or(&self.active_seg).first;
        if from < first_retained {
            return Err(LogError::Rejected(format!(
                "cannot truncate from entry {from}: the log starts at {first_retained}"
            )));
        }
        // Whole segments after the cut go first, newest first, each
        // deletion synced: a crash part way leaves a shorter log.
        while self.active_seg.first > from {
            let seg = self
                .sealed
                .pop()
                .expect("a segment starts at or below `from`");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&seg.path)
                .map_err(io("opening", &seg.path))?;
            self.active = file;
            let gone = std::mem::replace(&mut self.active_seg, seg);
            std::fs::remove_file(&gone.path).map_err(io("removing", &gone.path))?;
            sync_dir(&self.dir)?;
        }
        let seg = &self.active_seg;
        if seg.first == from {
            // Replaced by rename: the old records vanish at once.
            let prev_term = seg.prev_term;
            self.active = create_segment(&self.dir, from, prev_term, self.segment_bytes)?;
            self.pos = SEGMENT_HEADER;
            self.active_len = self.segment_bytes;
            self.last = prev_term.map(|term| LogId {
                term,
                index: from - 1,
            });
        } else {
            let file_len = self
                .active
                .metadata()
                .map_err(io("reading", &seg.path))?
                .len();
            let mut cut = None;
            let mut before = None;
            let scan = scan(
                &self.active,
                &seg.path,
                file_len,
                seg.first,
                seg.prev_term,
                |at, id, _, _| {
                    if id.index == from {
                        cut = Some(at);
                    } else if id.index + 1 == from {
                        before = Some(id);
                    }
                },
            )?;
            let (Some(cut), Some(before), None) = (cut, before, &scan.bad) else {
                return Err(corrupt(
                    &seg.path,
                    scan.end,
                    format!("entry {from} to truncate from is not where it was written"),
                ));
            };
            erase(&self.active, &seg.path, cut, scan.end)?;
            self.pos = cut;
            self.active_len = file_len;
            self.last = Some(before);
        }
        self.next = from;
        Ok(())
    }

    fn usable(&self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Marks the log failed when `r` is a file system error.
    fn note(&mut self, r: Result<(), LogError>) -> Result<(), LogError> {
        if matches!(r, Err(LogError::Io { .. } | LogError::Corrupt { .. })) {
            self.failed = true;
        }
        r
    }

    /// Seals the active segment and starts a new one at entry `first`.
    fn roll(&mut self, first: u64) -> Result<(), LogError> {
        let prev_term = self
            .last
            .filter(|id| id.index + 1 == first)
            .map(|id| id.term);
        let file = create_segment(&self.dir, first, prev_term, self.segment_bytes)?;
        self.active = file;
        let seg = Segment {
            first,
            prev_term,
            path: self.dir.join(segment_name(first)),
        };
        self.sealed
            .push(std::mem::replace(&mut self.active_seg, seg));
        self.pos = SEGMENT_HEADER;
        self.active_len = self.segment_bytes;
        Ok(())
    }
}

/// Lists the segments in `dir` by first index, and the leftover
/// temporary files of segments never finished.
type Listing = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

fn list_segments(dir: &Path) -> Result<Listing, LogError> {
    let mut segments = Vec::new();
    let mut unfinished = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let entry = entry.map_err(io("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.ends_with(TMP_SUFFIX) {
            unfinished.push(entry.path());
            continue;
        }
        let Some(first) = name
            .strip_suffix(SUFFIX)
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((first, entry.path()));
    }
    segments.sort();
    Ok((segments, unfinished))
}

/// Deletes segments a crash left unfinished (never part of the log).
fn remove_unfinished(dir: &Path, unfinished: &[PathBuf]) -> Result<(), LogError> {
    for path in unfinished {
        tracing::info!(file = %path.display(), "removing an unfinished log segment");
        std::fs::remove_file(path).map_err(io("removing", path))?;
    }
    if !unfinished.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates `dir` and any missing parents, each durably.
fn create_dir(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating", dir)(e)),
    }
    sync_dir(parent)
}

fn read_segment_header(file: &File, path: &Path) -> Result<SegmentHeader, LogError> {
    let mut b = [0u8; SEGMENT_HEADER as usize];
    match file.read_exact_at(&mut b, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(corrupt(path, 0, "no segment header: the file is too short"));
        }
        Err(e) => return Err(io("reading", path)(e)),
    }
    SegmentHeader::decode(&b).map_err(|reason| corrupt(path, 0, reason))
}

/// How reading a segment's records ended.
struct Scan {
    /// Where the good records end: the next record goes here.
    end: u64,
    /// The last good record's id.
    last: Option<LogId>,
    /// The record reading stopped at, unless it stopped at the end.
    bad: Option<Bad>,
}

/// A record that is not valid.
struct Bad {
    at: u64,
    /// The end its header claims, when the header itself is valid.
    claimed_end: Option<u64>,
    reason: String,
}

/// Reads the records of a segment from its start and hands each good one
/// to `each` with its offset. Reads no further than the first record that
/// is not good, so a mostly empty preallocated segment costs what it holds,
/// not its size.
fn scan(
    file: &File,
    path: &Path,
    file_len: u64,
    first: u64,
    prev_term: Option<u64>,
    mut each: impl FnMut(u64, LogId, EntryKind, &[u8]),
) -> Result<Scan, LogError> {
    let mut r = BufReader::with_capacity(256 << 10, file);
    r.seek(SeekFrom::Start(SEGMENT_HEADER))
        .map_err(io("reading", path))?;
    let mut at = SEGMENT_HEADER;
    let mut last: Option<LogId> = None;
    let mut min_term = prev_term.unwrap_or(0);
    let mut body = Vec::new();
    let end = |at, last, bad| Ok(Scan { end: at, last, bad });
    let bad = |at, claimed_end, reason: String| {
        Some(Bad {
            at,
            claimed_end,
            reason,
        })
    };
    loop {
        if at >= file_len {
            return end(at, last, None);
        }
        if file_len - at < RECORD_HEADER {
            let mut rest = vec![0; (file_len - at) as usize];
            r.read_exact(&mut rest).map_err(io("reading", path))?;
            if rest.iter().all(|&b| b == 0) {
                return end(at, last, None);
            }
            let reason = "a record header cut off by the end of the file".to_string();
            return end(at, last, bad(at, None, reason));
        }
        let mut h = [0u8; RECORD_HEADER as usize];
        r.read_exact(&mut h).map_err(io("reading", path))?;
        let head = match decode_header(&h) {
            Header::Zero => return end(at, last, None),
            Header::Bad(reason) => return end(at, last, bad(at, None, reason)),
            Header::Good(head) => head,
        };
        let claimed = at + head.record_len();
        let expect = last.map_or(first, |id| id.index + 1);
        let id = head.id;
        let fault = if id.index == u64::MAX {
            Some(format!("entry {}: no entry can follow it", id.index))
        } else if id.index != expect {
            Some(format!("entry {} where entry {expect} belongs", id.index))
        } else if id.term < min_term {
            Some(format!(
                "entry {} has term {}, after term {min_term}",
                id.index, id.term
            ))
        } else if EntryKind::from_u8(head.kind).is_none() {
            Some(format!("entry {} has unknown kind {}", id.index, head.kind))
        } else if claimed > file_len {
            Some(format!(
                "entry {} runs to byte {claimed}, past the end of the file at {file_len}",
                id.index
            ))
        } else {
            None
        };
        if let Some(reason) = fault {
            return end(at, last, bad(at, Some(claimed), reason));
        }
        body.resize((claimed - at - RECORD_HEADER) as usize, 0);
        r.read_exact(&mut body).map_err(io("reading", path))?;
        if let Err(reason) = check_body(&head, &body) {
            return end(at, last, bad(at, Some(claimed), reason));
        }
        let kind = EntryKind::from_u8(head.kind).expect("checked above");
        each(at, id, kind, &body[..head.len as usize]);
        last = Some(id);
        min_term = id.term;
        at = claimed;
    }
}

/// Decides whether the bad record in the newest segment is a torn tail:
/// `Ok(end of its bytes)` if so, `Err(why not)` otherwise.
fn torn_end(
    file: &File,
    path: &Path,
    file_len: u64,
    bad: &Bad,
) -> Result<Result<u64, &'static str>, LogError> {
    let (region_end, after) = match bad.claimed_end {
        Some(claimed) => (claimed.min(file_len), claimed),
        None => (
            (bad.at + RECORD_HEADER).min(file_len),
            bad.at + RECORD_HEADER,
        ),
    };
    let mut zero_piece = false;
    let mut s = bad.at;
    while s < region_end {
        let e = ((s / SECTOR + 1) * SECTOR).min(region_end);
        if all_zero(file, path, s, e)? {
            zero_piece = true;
            break;
        }
        s = e;
    }
    if !zero_piece {
        return Ok(Err("no sector of it is zero, as a torn write would leave"));
    }
    if after < file_len && !all_zero(file, path, after, file_len)? {
        return Ok(Err("nonzero bytes follow it"));
    }
    Ok(Ok(region_end))
}

/// True when bytes `from..to` of `file` are all zero.
fn all_zero(file: &File, path: &Path, from: u64, to: u64) -> Result<bool, LogError> {
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io("reading", path))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Zeroes bytes `at..end`, where `at` is the start of a record: its header
/// first (one sector, so the log ends at `at` from then on), then the rest,
/// each synced.
fn erase(file: &File, path: &Path, at: u64, end: u64) -> Result<(), LogError> {
    let zeros = vec![0u8; (end - at).min(1 << 20) as usize];
    let head_end = (at + RECORD_HEADER).min(end);
    let mut o = at;
    for stop in [head_end, end] {
        if o >= stop {
            continue;
        }
        while o < stop {
            let n = ((stop - o) as usize).min(zeros.len());
            file.write_all_at(&zeros[..n], o)
                .map_err(io("erasing", path))?;
            o += n as u64;
        }
        file.sync_data().map_err(io("syncing", path))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// Creates the segment starting at entry `first`, full size and with its
/// header, under its final name (replacing any file there), and makes it
/// durable.
fn create_segment(
    dir: &Path,
    first: u64,
    prev_term: Option<u64>,
    size: u64,
) -> Result<File, LogError> {
    let path = dir.join(segment_name(first));
    let tmp = dir.join(format!("{first:020}{TMP_SUFFIX}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).is_err() {
        // Not supported here: the file is still full size, and zero.
        file.set_len(size).map_err(io("sizing", &tmp))?;
    }
    let header = SegmentHeader {
        first,
        prev_term,
        size,
    };
    file.write_all_at(&header.encode(), 0)
        .map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
    sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
