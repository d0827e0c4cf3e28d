//! Opening a log directory whose segments were forged or damaged at random.
//!
//! `tests.rs` damages a real log byte by byte; here proptest builds the
//! segment files themselves: headers valid or not, naming any first index
//! (up to `u64::MAX`), records whose checksums are right but whose index,
//! term, kind or length are hostile, zeros and garbage between and after.
//! A log directory is input the node reads at every start, so whatever it
//! holds, [`Log::open`] must return: never a panic, and on refusal a
//! [`LogError::Corrupt`] or [`LogError::Mismatch`] that says where and why.
//! What it accepts must be entries that were written as whole records.

use proptest::prelude::*;

use super::format::{encode_record, SegmentHeader, RECORD_HEADER, SEGMENT_HEADER};
use super::*;

/// One piece of a forged segment, after its header.
#[derive(Debug, Clone)]
enum Piece {
    /// A whole valid record.
    Record { term: u64, index: Idx, len: usize },
    /// A record with checksums made to match, then `kind` and the length
    /// field set to what is given.
    Forged {
        term: u64,
        index: Idx,
        kind: u8,
        len: u32,
    },
    /// Zeros, in 32-byte units.
    Zeros(usize),
    /// Arbitrary bytes.
    Garbage(Vec<u8>),
}

/// An entry index: the one expected next, or any other.
#[derive(Debug, Clone, Copy)]
enum Idx {
    Next,
    Any(u64),
}

/// A forged segment file.
#[derive(Debug, Clone)]
struct Forged {
    /// The first index in its name.
    first: u64,
    /// Its header: `None` for arbitrary bytes instead.
    header: Option<(u64, Option<u64>, Size)>,
    raw_header: Vec<u8>,
    pieces: Vec<Piece>,
}

/// What the header says the file size is.
#[derive(Debug, Clone, Copy)]
enum Size {
    Actual,
    Any(u64),
}

fn index() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..6,
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(0),
        any::<u64>()
    ]
}

fn term() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, Just(u64::MAX), any::<u64>()]
}

fn idx() -> impl Strategy<Value = Idx> {
    prop_oneof![4 => Just(Idx::Next), 1 => index().prop_map(Idx::Any)]
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (term(), idx(), 0usize..700).prop_map(|(term, index, len)| Piece::Record {
            term,
            index,
            len
        }),
        2 => (term(), idx(), any::<u8>(), prop_oneof![0u32..700, any::<u32>()]).prop_map(
            |(term, index, kind, len)| Piece::Forged {
                term,
                index,
                kind,
                len
            }
        ),
        1 => (0usize..20).prop_map(Piece::Zeros),
        1 => proptest::collection::vec(any::<u8>(), 0..100).prop_map(Piece::Garbage),
    ]
}

fn forged() -> impl Strategy<Value = Forged> {
    let size = prop_oneof![3 => Just(Size::Actual), 1 => any::<u64>().prop_map(Size::Any)];
    let header = (index(), proptest::option::of(term()), size);
    (
        index(),
        proptest::option::weighted(0.85, header),
        proptest::collection::vec(any::<u8>(), 0..80),
        proptest::collection::vec(piece(), 0..8),
    )
        .prop_map(|(first, header, raw_header, pieces)| Forged {
            first,
            header,
            raw_header,
            pieces,
        })
}

/// Replaces both checksums of the record at the start of `b` after its
/// kind or length were changed, as a forger would.
fn reseal(b: &mut [u8]) {
    let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let body = &b[RECORD_HEADER as usize..];
    let mut h = crc32fast::Hasher::new();
    h.update(&b[8..16]);
    h.update(&b[16..24]);
    h.update(&[b[1]]);
    h.update(&body[..len.min(body.len())]);
    let crc = h.finalize();
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// Writes `f` as a segment file in `dir`; the segment names follow on
/// from `next`. Returns the whole records it holds.
fn write(dir: &Path, f: &Forged) -> Vec<Entry> {
    let mut body = Vec::new();
    let mut next = f.first;
    let mut whole = Vec::new();
    for p in &f.pieces {
        match *p {
            Piece::Record { term, index, len } => {
                let index = match index {
                    Idx::Next => next,
                    Idx::Any(i) => i,
                };
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
                encode_record(
                    &mut body,
                    &Record {
                        id: LogId { term, index },
                        kind: EntryKind::Command,
                        payload: &payload,
                    },
                );
                whole.push(Entry {
                    id: LogId { term, index },
                    kind: EntryKind::Command,
                    payload,
                });
                next = index.wrapping_add(1);
            }
            Piece::Forged {
                term,
                index,
                kind,
                len,
            } => {
                let index = match index {
                    Idx::Next => next,
                    Idx::Any(i) => i,
                };
                let at = body.len();
                let payload = vec![0x55; (len as usize).min(700)];
                encode_record(
                    &mut body,
                    &Record {
                        id: LogId { term, index },
                        kind: EntryKind::Blank,
                        payload: &payload,
                    },
                );
                let b = &mut body[at..];
                b[1] = kind;
                b[4..8].copy_from_slice(&len.to_le_bytes());
                reseal(b);
                if let Some(kind) = EntryKind::from_u8(kind).filter(|_| len as usize <= 700) {
                    whole.push(Entry {
                        id: LogId { term, index },
                        kind,
                        payload,
                    });
                }
                next = index.wrapping_add(1);
            }
            Piece::Zeros(n) => body.resize(body.len() + 32 * n, 0),
            Piece::Garbage(ref g) => body.extend_from_slice(g),
        }
    }
    let mut file = match f.header {
        Some((first, prev_term, size)) => {
            let size = match size {
                Size::Actual => SEGMENT_HEADER + body.len() as u64,
                Size::Any(s) => s,
            };
            SegmentHeader {
                first,
                prev_term,
                size,
            }
            .encode()
            .to_vec()
        }
        None => f.raw_header.clone(),
    };
    file.extend_from_slice(&body);
    std::fs::write(dir.join(segment_name(f.first)), file).unwrap();
    whole
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_forged_log_opens_or_is_refused_as_corrupt(
        segments in proptest::collection::vec(forged(), 1..4),
        after in prop_oneof![Just(0u64), index()],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut whole = Vec::new();
        for s in &segments {
            whole.extend(write(dir.path(), s));
        }
        match Log::open_sized(dir.path(), after, 4096) {
            Ok((log, replay)) => {
                for e in &replay {
                    prop_assert!(e.id.index > after);
                    prop_assert!(whole.contains(e), "replayed what was not written: {:?}", e.id);
                }
                for w in replay.windows(2) {
                    prop_assert_eq!(w[0].id.index + 1, w[1].id.index);
                    prop_assert!(w[0].id.term <= w[1].id.term);
                }
                if let Some(last) = replay.last() {
                    prop_assert_eq!(log.next_index(), last.id.index + 1);
                }
            }
            Err(LogError::Corrupt { reason, .. }) | Err(LogError::Mismatch { reason, .. }) => {
                prop_assert!(!reason.is_empty());
            }
            Err(e) => prop_assert!(false, "neither opened nor refused as damage: {e}"),
        }
    }
}

/// The newest segment's only entry carries index `u64::MAX`: there is no
/// index after it for the log to continue at.
#[test]
fn an_entry_at_the_last_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = Forged {
        first: u64::MAX,
        header: Some((u64::MAX, None, Size::Actual)),
        raw_header: Vec::new(),
        pieces: vec![Piece::Record {
            term: 1,
            index: Idx::Next,
            len: 3,
        }],
    };
    write(dir.path(), &f);
    let err = Log::open_sized(dir.path(), u64::MAX - 1, 4096)
        .err()
        .unwrap();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("no entry can follow"), "{err}");
}

/// A store that claims to have applied entry `u64::MAX` leaves the log no
/// index to start at (found by the property above: `after + 1` overflowed).
#[test]
fn a_store_at_the_last_index_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let err = Log::open_sized(dir.path(), u64::MAX, 4096).err().unwrap();
    assert!(matches!(err, LogError::Mismatch { .. }), "{err}");
}
