//! Byte layout of segment headers and records (see the module essay in
//! `log.rs` for the picture).

use super::{EntryKind, LogId, Record};

/// Bytes of the header at the start of every segment file.
pub(crate) const SEGMENT_HEADER: u64 = 64;
/// Bytes of the header in front of every record.
pub(crate) const RECORD_HEADER: u64 = 32;
/// Every record starts and ends on a multiple of this, relative to the
/// file: a record header never straddles a sector.
pub(crate) const ALIGN: u64 = 32;
/// The unit a torn write is assumed to leave whole or not at all.
pub(crate) const SECTOR: u64 = 512;
/// Largest payload a record carries.
pub(crate) const MAX_PAYLOAD: usize = (u32::MAX - 2 * ALIGN as u32) as usize;

const MAGIC: [u8; 8] = *b"RSTRRAFT";
const VERSION: u32 = 1;
/// Segment header flag: `prev_term` holds the term of entry `first - 1`.
const FLAG_PREV: u32 = 1;
/// First byte of every record header.
const START: u8 = 0xa7;
/// Last byte of every record.
const END: u8 = 0x7a;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What the header of a segment file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Index of the first entry the segment holds (or will hold).
    pub first: u64,
    /// Term of entry `first - 1`, when the log held it.
    pub prev_term: Option<u64>,
    /// Bytes the file was created with.
    pub size: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER as usize] {
        let mut b = [0u8; SEGMENT_HEADER as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.prev_term.is_some() {
            FLAG_PREV
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.first.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_term.unwrap_or(0).to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; SEGMENT_HEADER as usize]) -> Result<SegmentHeader, String> {
        if b[0..8] != MAGIC {
            return Err("no segment header (bad magic)".into());
        }
        if u32_at(b, 60) != crc32fast::hash(&b[0..60]) {
            return Err("segment header checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!(
                "segment format version {version}, this build reads {VERSION}"
            ));
        }
        let flags = u32_at(b, 12);
        if flags & !FLAG_PREV != 0 || b[40..60].iter().any(|&x| x != 0) {
            return Err("segment header has unknown flags or fields".into());
        }
        Ok(SegmentHeader {
            first: u64_at(b, 16),
            prev_term: (flags & FLAG_PREV != 0).then(|| u64_at(b, 24)),
            size: u64_at(b, 32),
        })
    }
}

impl EntryKind {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            EntryKind::Blank => 1,
            EntryKind::Command => 2,
            EntryKind::Membership => 3,
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            1 => Some(EntryKind::Blank),
            2 => Some(EntryKind::Command),
            3 => Some(EntryKind::Membership),
            _ => None,
        }
    }
}

/// Bytes a record with a payload of `payload` bytes takes: header,
/// payload, zero padding and the end mark, rounded up to [`ALIGN`].
pub(crate) fn record_len(payload: u64) -> u64 {
    (RECORD_HEADER + payload + 1).div_ceil(ALIGN) * ALIGN
}

fn body_crc(id: LogId, kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.term.to_le_bytes());
    h.update(&id.index.to_le_bytes());
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends the bytes of `r` to `buf`. The payload must be at most
/// [`MAX_PAYLOAD`] bytes.
pub(crate) fn encode_record(buf: &mut Vec<u8>, r: &Record<'_>) {
    let start = buf.len();
    let len = r.payload.len();
    let total = record_len(len as u64) as usize;
    let kind = r.kind.to_u8();
    buf.resize(start + total, 0);
    let b = &mut buf[start..];
    b[0] = START;
    b[1] = kind;
    b[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    b[8..16].copy_from_slice(&r.id.term.to_le_bytes());
    b[16..24].copy_from_slice(&r.id.index.to_le_bytes());
    b[24..28].copy_from_slice(&body_crc(r.id, kind, r.payload).to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b[32..32 + len].copy_from_slice(r.payload);
    b[total - 1] = END;
}

/// A record header that checks out on its own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub id: LogId,
    /// Raw kind byte: an unknown value is found by the caller.
    pub kind: u8,
    pub len: u64,
    body_crc: u32,
}

impl Head {
    /// Bytes of the whole record this header claims.
    pub fn record_len(&self) -> u64 {
        record_len(self.len)
    }
}

/// What a record header turned out to be.
pub(crate) enum Header {
    /// All zero: the preallocated space after the last record.
    Zero,
    /// Damaged or not a record header at all.
    Bad(String),
    Good(Head),
}

pub(crate) fn decode_header(b: &[u8; RECORD_HEADER as usize]) -> Header {
    if b.iter().all(|&x| x == 0) {
        return Header::Zero;
    }
    if b[0] != START || b[2] != 0 || b[3] != 0 {
        return Header::Bad("not a record header".into());
    }
    if u32_at(b, 28) != crc32fast::hash(&b[0..28]) {
        return Header::Bad("record header checksum mismatch".into());
    }
    Header::Good(Head {
        id: LogId {
            term: u64_at(b, 8),
            index: u64_at(b, 16),
        },
        kind: b[1],
        len: u64::from(u32_at(b, 4)),
        body_crc: u32_at(b, 24),
    })
}

/// Checks the bytes after the header of the record `head` introduces:
/// payload, zero padding, end mark.
pub(crate) fn check_body(head: &Head, body: &[u8]) -> Result<(), String> {
    let len = head.len as usize;
    let (payload, rest) = body.split_at(len);
    let (pad, end) = rest.split_at(rest.len() - 1);
    if body_crc(head.id, head.kind, payload) != head.body_crc {
        return Err(format!("entry {} payload checksum mismatch", head.id.index));
    }
    if end[0] != END || pad.iter().any(|&x| x != 0) {
        return Err(format!(
            "entry {} has a damaged end mark or padding",
            head.id.index
        ));
    }
    Ok(())
}
