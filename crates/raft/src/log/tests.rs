use std::collections::BTreeMap;

use super::format::record_len;
use super::*;

/// A payload of `len` bytes for entry `index`, with no zero byte in it.
fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| 1 + ((index as usize * 31 + i) % 251) as u8)
        .collect()
}

fn entry(term: u64, index: u64, len: usize) -> Entry {
    let kind = match index % 7 {
        0 => EntryKind::Blank,
        3 => EntryKind::Membership,
        _ => EntryKind::Command,
    };
    let len = if kind == EntryKind::Blank { 0 } else { len };
    Entry {
        id: LogId { term, index },
        kind,
        payload: payload(index, len),
    }
}

fn records(entries: &[Entry]) -> Vec<Record<'_>> {
    entries
        .iter()
        .map(|e| Record {
            id: e.id,
            kind: e.kind,
            payload: &e.payload,
        })
        .collect()
}

fn append(log: &mut Log, entries: &[Entry]) {
    log.append(&records(entries)).unwrap();
}

/// Entries `from..=to` in `term`, 100 bytes each.
fn run(term: u64, from: u64, to: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(term, i, 100)).collect()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.id.index).collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn seg(first: u64) -> String {
    segment_name(first)
}

/// Segment size with room for `n` records of 100-byte payloads.
fn room_for(n: u64) -> u64 {
    SEGMENT_HEADER + n * record_len(100)
}

fn id(term: u64, index: u64) -> LogId {
    LogId { term, index }
}

/// Segment size for tests that do not need many segments: small, so
/// creating and deleting files stays cheap.
const SMALL: u64 = 64 << 10;

fn open(dir: &Path, after: u64) -> Result<(Log, Vec<Entry>), LogError> {
    Log::open_sized(dir, after, SMALL)
}

#[test]
fn entries_come_back_as_written_above_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, replay) = Log::open(dir.path(), 0).unwrap();
    assert!(replay.is_empty());
    assert_eq!(log.next_index(), 1);
    assert_eq!(log.last_id(), None);
    let written: Vec<Entry> = (1..=9)
        .map(|i| entry(1 + i / 4, i, i as usize * 97))
        .collect();
    append(&mut log, &written[..3]);
    append(&mut log, &written[3..]);
    assert_eq!(log.last_id(), Some(id(3, 9)));
    drop(log);

    let (log, replay) = Log::open(dir.path(), 0).unwrap();
    assert_eq!(replay, written);
    assert_eq!(log.next_index(), 10);
    assert_eq!(log.last_id(), Some(id(3, 9)));
    let (_, replay) = Log::open(dir.path(), 6).unwrap();
    assert_eq!(replay, written[6..]);
    let (_, replay) = Log::open(dir.path(), 9).unwrap();
    assert!(replay.is_empty());
}

#[test]
fn a_fresh_log_starts_after_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, replay) = open(dir.path(), 7).unwrap();
    assert!(replay.is_empty());
    assert_eq!(log.next_index(), 8);
    assert_eq!(log.last_id(), None);
    assert_eq!(files(dir.path()), vec![seg(8)]);
    append(&mut log, &run(2, 8, 9));
    drop(log);
    let (log, replay) = open(dir.path(), 7).unwrap();
    assert_eq!(indexes(&replay), vec![8, 9]);
    assert_eq!(log.last_id(), Some(id(2, 9)));
}

#[test]
fn appends_must_follow_on_and_terms_never_decrease() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    append(&mut log, &run(3, 1, 2));
    let gap = log.append(&records(&run(3, 4, 4))).unwrap_err();
    assert!(matches!(gap, LogError::Rejected(_)), "{gap}");
    let older = log.append(&records(&run(2, 3, 3))).unwrap_err();
    assert!(
        older.to_string().contains("lower than the term 3"),
        "{older}"
    );
    // Within one batch too, and nothing of a refused batch is written.
    let mut batch = run(3, 3, 4);
    batch[1].id.term = 1;
    log.append(&records(&batch)).unwrap_err();
    assert_eq!(log.next_index(), 3);
    append(&mut log, &run(4, 3, 3));
    drop(log);
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3]);
    assert_eq!(replay[2].id.term, 4);
}

#[test]
fn segments_roll_and_are_released_once_the_store_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(3);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=10 {
        append(&mut log, &run(1, i, i));
    }
    assert_eq!(files(dir.path()), vec![seg(1), seg(4), seg(7), seg(10)]);
    // The store holds up to 6: 1..=3 and 4..=6 can go; 7..=9 still matter.
    log.release(6).unwrap();
    assert_eq!(files(dir.path()), vec![seg(7), seg(10)]);
    assert_eq!(log.segments(), 2);
    drop(log);

    let (log, replay) = Log::open_sized(dir.path(), 6, size).unwrap();
    assert_eq!(indexes(&replay), vec![7, 8, 9, 10]);
    assert_eq!(log.next_index(), 11);
    // The store lost its data (after = 0) or is older than the log.
    for after in [0, 5] {
        let err = Log::open_sized(dir.path(), after, size).err().unwrap();
        assert!(matches!(err, LogError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("starts at entry 7"), "{err}");
    }
}

#[test]
fn a_batch_larger_than_a_segment_goes_into_one() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(2);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    append(&mut log, &run(1, 1, 1));
    append(&mut log, &run(1, 2, 6));
    append(&mut log, &run(1, 7, 7));
    assert_eq!(files(dir.path()), vec![seg(1), seg(2), seg(7)]);
    drop(log);
    let (_, replay) = Log::open_sized(dir.path(), 0, size).unwrap();
    assert_eq!(replay, run(1, 1, 7));
}

#[test]
fn releasing_everything_rolls_and_keeps_the_last_id() {
    let dir = tempfile::tempdir().unwrap();
    // Half a segment is the threshold here: 4 of 10 stay, 6 roll over.
    let size = room_for(10);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    append(&mut log, &run(2, 1, 4));
    log.release(4).unwrap();
    assert_eq!(files(dir.path()), vec![seg(1)]);
    append(&mut log, &run(3, 5, 6));
    log.release(5).unwrap();
    assert_eq!(files(dir.path()), vec![seg(1)], "not everything released");
    log.release(6).unwrap();
    assert_eq!(files(dir.path()), vec![seg(7)]);
    assert_eq!(log.last_id(), Some(id(3, 6)));
    drop(log);

    let (mut log, replay) = Log::open_sized(dir.path(), 6, size).unwrap();
    assert!(replay.is_empty());
    assert_eq!(log.next_index(), 7);
    assert_eq!(log.last_id(), Some(id(3, 6)), "kept in the segment header");
    let err = log.append(&records(&run(2, 7, 7))).unwrap_err();
    assert!(matches!(err, LogError::Rejected(_)), "{err}");
    append(&mut log, &run(3, 7, 7));
    drop(log);
    let (_, replay) = Log::open_sized(dir.path(), 6, size).unwrap();
    assert_eq!(indexes(&replay), vec![7]);
    // The database deleted right after the roll: a fresh store at 0.
    let err = Log::open_sized(dir.path(), 0, size).err().unwrap();
    assert!(err.to_string().contains("missing or older"), "{err}");
}

#[test]
fn a_store_ahead_of_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    append(&mut log, &run(1, 1, 5));
    drop(log);
    let err = open(dir.path(), 9).err().unwrap();
    assert!(matches!(err, LogError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("ends at entry 5"), "{err}");
    // Nothing was changed: the log opens as it was.
    let (_, replay) = open(dir.path(), 5).unwrap();
    assert!(replay.is_empty());
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, run(1, 1, 5));
}

#[test]
fn leftover_temporary_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    append(&mut log, &run(1, 1, 2));
    drop(log);
    let tmp = format!("{:020}.wal.tmp", 3);
    std::fs::write(dir.path().join(&tmp), b"half made").unwrap();
    // A log that does not open is left exactly as it is.
    let path = dir.path().join(seg(1));
    poke(&path, SEGMENT_HEADER + 40, |b| b ^ 1);
    open(dir.path(), 0).err().unwrap();
    assert_eq!(files(dir.path()), vec![seg(1), tmp]);
    poke(&path, SEGMENT_HEADER + 40, |b| b ^ 1);
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2]);
    assert_eq!(files(dir.path()), vec![seg(1)]);
}

#[test]
fn missing_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("data").join("log");
    let (mut log, _) = open(&nested, 0).unwrap();
    append(&mut log, &run(1, 1, 1));
    drop(log);
    let (_, replay) = open(&nested, 0).unwrap();
    assert_eq!(replay, run(1, 1, 1));
}

/// Opens `dir` at 0 and checks it holds exactly `expect`.
fn reopen(dir: &Path, size: u64, expect: &[Entry]) -> Log {
    let (log, replay) = Log::open_sized(dir, 0, size).unwrap();
    assert_eq!(indexes(&replay), indexes(expect));
    assert_eq!(replay, expect);
    assert_eq!(log.last_id(), expect.last().map(|e| e.id));
    log
}

#[test]
fn truncated_entries_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(100);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    // Long entries in term 3, replaced by a shorter tail of term 2 (a
    // leader from an older term that won the election with a log that
    // never saw term 3).
    let old: Vec<Entry> = (1..=8)
        .map(|i| entry(if i < 4 { 1 } else { 3 }, i, 700))
        .collect();
    append(&mut log, &old);
    log.truncate(5).unwrap();
    assert_eq!(log.next_index(), 5);
    assert_eq!(log.last_id(), Some(id(3, 4)));
    drop(log);
    let mut log = reopen(dir.path(), size, &old[..4]);

    log.truncate(4).unwrap();
    assert_eq!(log.last_id(), Some(id(1, 3)));
    let new: Vec<Entry> = (4..=5).map(|i| entry(2, i, 10)).collect();
    append(&mut log, &new);
    drop(log);
    let mut expect = old[..3].to_vec();
    expect.extend(new);
    let mut log = reopen(dir.path(), size, &expect);
    // Truncating nothing, or past the end, changes nothing.
    log.truncate(6).unwrap();
    log.truncate(60).unwrap();
    assert_eq!(log.next_index(), 6);
    // Appends continue where the cut was, with a later term.
    log.truncate(5).unwrap();
    append(&mut log, &run(4, 5, 6));
    drop(log);
    expect.truncate(4);
    expect.extend(run(4, 5, 6));
    reopen(dir.path(), size, &expect);
}

#[test]
fn truncation_crosses_segments() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(3);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=10 {
        append(&mut log, &run(1, i, i));
    }
    assert_eq!(files(dir.path()), vec![seg(1), seg(4), seg(7), seg(10)]);
    // Into a sealed segment: later segments go, the cut one is active.
    log.truncate(5).unwrap();
    assert_eq!(files(dir.path()), vec![seg(1), seg(4)]);
    assert_eq!(log.last_id(), Some(id(1, 4)));
    append(&mut log, &run(2, 5, 6));
    append(&mut log, &run(2, 7, 7));
    assert_eq!(files(dir.path()), vec![seg(1), seg(4), seg(7)]);
    drop(log);
    let mut expect = run(1, 1, 4);
    expect.extend(run(2, 5, 7));
    let mut log = reopen(dir.path(), size, &expect);
    // At a segment's first entry: the segment is replaced.
    log.truncate(4).unwrap();
    assert_eq!(files(dir.path()), vec![seg(1), seg(4)]);
    assert_eq!(log.last_id(), Some(id(1, 3)));
    drop(log);
    let mut log = reopen(dir.path(), size, &run(1, 1, 3));
    append(&mut log, &run(5, 4, 4));
    // Everything: a fresh first segment.
    log.truncate(1).unwrap();
    assert_eq!(files(dir.path()), vec![seg(1)]);
    assert_eq!(log.last_id(), None);
    drop(log);
    let mut log = reopen(dir.path(), size, &[]);
    append(&mut log, &run(6, 1, 1));
    drop(log);
    reopen(dir.path(), size, &run(6, 1, 1));
}

#[test]
fn released_entries_cannot_be_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(2);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=5 {
        append(&mut log, &run(1, i, i));
    }
    log.release(3).unwrap();
    assert_eq!(files(dir.path()), vec![seg(3), seg(5)]);
    let err = log.truncate(2).unwrap_err();
    assert!(matches!(err, LogError::Rejected(_)), "{err}");
    log.truncate(3).unwrap();
    assert_eq!(log.last_id(), Some(id(1, 2)), "from the segment header");
    append(&mut log, &run(2, 3, 3));
    drop(log);
    let (_, replay) = Log::open_sized(dir.path(), 2, size).unwrap();
    assert_eq!(replay, run(2, 3, 3));
}

/// Byte offsets of each record in a segment holding `entries` from its
/// start.
fn offsets(entries: &[Entry]) -> Vec<u64> {
    let mut at = SEGMENT_HEADER;
    entries
        .iter()
        .map(|e| {
            let here = at;
            at += record_len(e.payload.len() as u64);
            here
        })
        .collect()
}

fn zero_range(path: &Path, from: u64, to: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0; (to - from) as usize], from)
        .unwrap();
}

fn poke(path: &Path, at: u64, f: impl FnOnce(u8) -> u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[f(b[0])], at).unwrap();
}

#[test]
fn a_half_written_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    let written: Vec<Entry> = (1..=3).map(|i| entry(1, i, 400 * i as usize)).collect();
    append(&mut log, &written);
    drop(log);
    // Entry 3 (1200 bytes) got its first sectors out, not its last.
    let at = offsets(&written)[2];
    let end = at + record_len(1200);
    let cut = (at / SECTOR + 2) * SECTOR;
    assert!(cut < end);
    let path = dir.path().join(seg(1));
    zero_range(&path, cut, end);

    let (mut log, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, written[..2]);
    assert_eq!(log.next_index(), 3);
    // A shorter append over it leaves nothing of it behind.
    let short = vec![entry(2, 3, 5)];
    append(&mut log, &short);
    drop(log);
    let mut expect = written[..2].to_vec();
    expect.extend(short);
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, expect);
}

#[test]
fn a_torn_batch_keeps_its_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    append(&mut log, &run(1, 1, 2));
    let batch: Vec<Entry> = (3..=12).map(|i| entry(1, i, 150)).collect();
    append(&mut log, &batch);
    drop(log);
    let mut all = run(1, 1, 2);
    all.extend(batch);
    let offs = offsets(&all);
    // The batch's sectors from the one holding the middle of entry 8 on
    // never reached the disk.
    let cut = (offs[7] + 100) / SECTOR * SECTOR;
    let kept = offs.iter().filter(|&&o| o + record_len(150) <= cut).count();
    let path = dir.path().join(seg(1));
    zero_range(&path, cut, offs[11] + record_len(150));
    let (log, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, all[..kept]);
    assert_eq!(log.next_index(), kept as u64 + 1);
}

#[test]
fn a_header_never_written_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    let written = run(1, 1, 3);
    append(&mut log, &written);
    drop(log);
    let at = offsets(&written)[2];
    let path = dir.path().join(seg(1));
    // The header alone, then the whole record.
    zero_range(&path, at, at + RECORD_HEADER);
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, written[..2]);
    zero_range(&path, at, at + record_len(100));
    let (mut log, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, written[..2]);
    append(&mut log, &run(1, 3, 3));
    drop(log);
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, written);
}

#[test]
fn what_lies_past_the_end_is_never_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    append(&mut log, &run(1, 1, 2));
    let lost = run(1, 3, 4);
    append(&mut log, &lost);
    drop(log);
    // A crash persisted entry 4's sector but not entry 3's header.
    let at = offsets(&run(1, 1, 4))[2];
    let path = dir.path().join(seg(1));
    zero_range(&path, at, at + RECORD_HEADER);
    let (mut log, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(replay, run(1, 1, 2));
    // A new entry 3 of the same size ends right where the old, valid
    // entry 4 starts: it must not come back.
    let mut new = entry(1, 3, 100);
    new.payload.reverse();
    append(&mut log, std::slice::from_ref(&new));
    drop(log);
    let (log, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3]);
    assert_eq!(replay[2], new);
    assert_eq!(log.next_index(), 4);
}

#[test]
fn a_torn_tail_in_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(3);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=4 {
        append(&mut log, &run(1, i, i));
    }
    drop(log);
    let written = run(1, 1, 3);
    let at = offsets(&written)[2];
    let path = dir.path().join(seg(1));
    zero_range(&path, at + 64, at + record_len(100));
    let err = Log::open_sized(dir.path(), 0, size).err().unwrap();
    let LogError::Corrupt {
        path: p, offset, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((p, *offset), (&path, at), "{err}");
    assert!(err.to_string().contains("sealed"), "{err}");
}

#[test]
fn damage_before_a_zero_tail_without_a_zero_sector_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    let written = run(1, 1, 3);
    append(&mut log, &written);
    drop(log);
    let at = offsets(&written)[2];
    let path = dir.path().join(seg(1));
    poke(&path, at + 40, |b| b ^ 1);
    let err = open(dir.path(), 0).err().unwrap();
    assert!(
        matches!(&err, LogError::Corrupt { offset, .. } if *offset == at),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("byte {at}")), "{err}");
}

#[test]
fn a_lost_sector_before_good_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    let written: Vec<Entry> = (1..=3).map(|i| entry(1, i, 1500)).collect();
    append(&mut log, &written);
    drop(log);
    // A sector in the middle of entry 2 reads as zeros, entry 3 is whole:
    // not what a torn append leaves.
    let at = offsets(&written)[1];
    let sector = (at / SECTOR + 2) * SECTOR;
    let path = dir.path().join(seg(1));
    zero_range(&path, sector, sector + SECTOR);
    let err = open(dir.path(), 0).err().unwrap();
    assert!(
        matches!(&err, LogError::Corrupt { offset, .. } if *offset == at),
        "{err}"
    );
    assert!(err.to_string().contains("nonzero bytes follow"), "{err}");
}

/// Writes `e` as a well-formed record at byte `at` of `path`, with its
/// kind byte set to `kind` (checksums recomputed).
fn forge(path: &Path, at: u64, e: &Entry, kind: u8) {
    let mut b = Vec::new();
    super::format::encode_record(
        &mut b,
        &Record {
            id: e.id,
            kind: e.kind,
            payload: &e.payload,
        },
    );
    b[1] = kind;
    let mut h = crc32fast::Hasher::new();
    h.update(&e.id.term.to_le_bytes());
    h.update(&e.id.index.to_le_bytes());
    h.update(&[kind]);
    h.update(&e.payload);
    let body = h.finalize();
    b[24..28].copy_from_slice(&body.to_le_bytes());
    let head = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&head.to_le_bytes());
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn whole_records_out_of_order_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 0).unwrap();
    let written = run(2, 1, 2);
    append(&mut log, &written);
    drop(log);
    let path = dir.path().join(seg(1));
    let at = offsets(&run(2, 1, 3))[2];
    let cases = [
        (entry(1, 3, 100), 2, "has term 1, after term 2"),
        (entry(2, 4, 100), 2, "entry 4 where entry 3 belongs"),
        (entry(2, 3, 100), 9, "unknown kind 9"),
    ];
    for (e, kind, why) in cases {
        forge(&path, at, &e, kind);
        let err = open(dir.path(), 0).err().unwrap();
        assert!(
            matches!(&err, LogError::Corrupt { offset, .. } if *offset == at),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{err}");
    }
    // The same record, well formed, is simply the next entry.
    forge(&path, at, &entry(2, 3, 100), 2);
    let (_, replay) = open(dir.path(), 0).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3]);
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let size = room_for(2);
    let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=6 {
        append(&mut log, &run(1, i, i));
    }
    drop(log);
    std::fs::remove_file(dir.path().join(seg(3))).unwrap();
    let err = Log::open_sized(dir.path(), 0, size).err().unwrap();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("entries are missing"), "{err}");
}

/// The files of a log, to damage copies of.
struct Image {
    files: Vec<(String, Vec<u8>)>,
    size: u64,
    written: Vec<Entry>,
}

impl Image {
    /// 24 entries of 1 to 1300 bytes over three segments.
    fn build() -> Image {
        let dir = tempfile::tempdir().unwrap();
        let size = 4096;
        let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
        let sizes = [1, 700, 13, 0, 1300, 64, 97, 520, 3, 33, 800, 5];
        let mut written = Vec::new();
        let mut i = 1u64;
        for chunk in [1, 2, 1, 3, 1, 1, 2, 1, 4, 1, 2, 1, 1, 3] {
            let batch: Vec<Entry> = (i..i + chunk)
                .map(|i| entry(1 + i / 9, i, sizes[i as usize % sizes.len()]))
                .collect();
            append(&mut log, &batch);
            written.extend(batch);
            i += chunk;
        }
        assert_eq!(log.segments(), 3);
        drop(log);
        let mut files: Vec<(String, Vec<u8>)> = files(dir.path())
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(dir.path().join(&n)).unwrap();
                (n, bytes)
            })
            .collect();
        files.sort();
        Image {
            files,
            size,
            written,
        }
    }

    /// Where the records of file `f` end (its last nonzero byte + 1).
    fn used(&self, f: usize) -> usize {
        let b = &self.files[f].1;
        b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1)
    }

    /// Writes the files into `dir`, replacing what is there, with file
    /// `f` changed by `damage`.
    fn restore(&self, dir: &Path, f: usize, mut damage: impl FnMut(&mut Vec<u8>)) {
        for name in files(dir) {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        for (i, (name, bytes)) in self.files.iter().enumerate() {
            if i == f {
                let mut b = bytes.clone();
                damage(&mut b);
                std::fs::write(dir.join(name), b).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    /// Cuts file `f` of the log in `dir` (restored before) to `len`
    /// bytes, checks it, and restores it. Returns whether the damaged log
    /// was refused. (Cut and put back in place: rewriting a file whole
    /// costs milliseconds on some file systems.)
    fn cut(&self, dir: &Path, f: usize, len: usize, what: &str) -> bool {
        let (name, bytes) = &self.files[f];
        let file = OpenOptions::new().write(true).open(dir.join(name)).unwrap();
        file.set_len(len as u64).unwrap();
        let refused = self.check(dir, what);
        file.write_all_at(&bytes[len..], len as u64).unwrap();
        self.restored(dir);
        refused
    }

    /// One flipped byte in file `f`, like [`Image::cut`].
    fn flip(&self, dir: &Path, f: usize, at: usize, what: &str) -> bool {
        let (name, bytes) = &self.files[f];
        let file = OpenOptions::new().write(true).open(dir.join(name)).unwrap();
        file.write_all_at(&[bytes[at] ^ 0xff], at as u64).unwrap();
        let refused = self.check(dir, what);
        file.write_all_at(&[bytes[at]], at as u64).unwrap();
        self.restored(dir);
        refused
    }

    /// Puts the files back if opening the log changed one (by erasing a
    /// torn tail): refusing must change nothing.
    fn restored(&self, dir: &Path) {
        for (name, bytes) in &self.files {
            if std::fs::read(dir.join(name)).unwrap() != *bytes {
                self.restore(dir, usize::MAX, |_| {});
                return;
            }
        }
    }

    /// Opens the damaged log: it must either be refused as corrupt or give
    /// back every entry intact. Returns whether it was refused.
    fn check(&self, dir: &Path, what: &str) -> bool {
        match Log::open_sized(dir, 0, self.size) {
            Ok((_, replay)) => {
                assert!(replay == self.written, "{what}: opened with other entries");
                false
            }
            Err(LogError::Corrupt { .. }) => true,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[test]
fn no_flipped_byte_loses_or_changes_an_entry_silently() {
    let image = Image::build();
    let dir = tempfile::tempdir().unwrap();
    image.restore(dir.path(), usize::MAX, |_| {});
    let mut refused = 0;
    let mut cases = 0;
    for f in 0..image.files.len() {
        // Every byte that holds something, and the zeros where the next
        // record header would go.
        let end = (image.used(f) + 64).min(image.files[f].1.len());
        for at in 0..end {
            let what = format!("{} byte {at} flipped", image.files[f].0);
            cases += 1;
            if image.flip(dir.path(), f, at, &what) {
                refused += 1;
            }
        }
    }
    // Only a flip in the zeros past where a segment's next record header
    // goes is unnoticed (those bytes are never read); all others are caught.
    assert_eq!(
        cases - refused,
        32 * image.files.len(),
        "{refused} of {cases}"
    );
}

#[test]
fn no_shortened_segment_loses_an_entry_silently() {
    let image = Image::build();
    let dir = tempfile::tempdir().unwrap();
    image.restore(dir.path(), usize::MAX, |_| {});
    // The newest segment and a sealed one.
    for f in [image.files.len() - 1, 1] {
        let len = image.files[f].1.len();
        // Every record boundary is a multiple of 32: cut at each, one
        // byte either side, and at a stride in between.
        let cuts = (0..len).step_by(32).flat_map(|c| [c.max(1) - 1, c, c + 1]);
        for cut in cuts.chain((5..len).step_by(37)).chain([len - 1]) {
            let what = format!("{} cut to {cut}", image.files[f].0);
            let refused = image.cut(dir.path(), f, cut, &what);
            assert!(refused, "{what}: a short file is refused");
        }
    }
}

#[test]
fn a_damaged_segment_header_is_corruption() {
    let image = Image::build();
    let dir = tempfile::tempdir().unwrap();
    // A file under a segment name with no header at all.
    image.restore(dir.path(), 2, |b| b.iter_mut().for_each(|x| *x = 0));
    assert!(image.check(dir.path(), "zeroed segment"));
    // A segment renamed: name and header disagree.
    image.restore(dir.path(), usize::MAX, |_| {});
    let (name, _) = &image.files[2];
    std::fs::rename(dir.path().join(name), dir.path().join(seg(1000))).unwrap();
    assert!(image.check(dir.path(), "renamed segment"));
}

/// What a model of the log expects after a sequence of operations.
#[derive(Debug, Clone)]
enum Op {
    Append {
        count: u64,
        term_up: bool,
        len: usize,
    },
    Truncate {
        back: u64,
    },
    Release {
        back: u64,
    },
    Reopen,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1u64..5, any::<bool>(), 0usize..600)
            .prop_map(|(count, term_up, len)| Op::Append { count, term_up, len }),
        1 => (0u64..6).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..6).prop_map(|back| Op::Release { back }),
        1 => Just(Op::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
    #[test]
    fn the_log_matches_a_model(ops in proptest::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let size = 1500;
        let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
        // What the log holds above `released`, by index.
        let mut model: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut released = 0u64;
        let mut term = 1u64;
        for op in ops {
            match op {
                Op::Append { count, term_up, len } => {
                    term += u64::from(term_up);
                    let next = log.next_index();
                    let batch: Vec<Entry> = (next..next + count)
                        .map(|i| entry(term, i, len + i as usize % 5))
                        .collect();
                    append(&mut log, &batch);
                    model.extend(batch.into_iter().map(|e| (e.id.index, e)));
                }
                Op::Truncate { back } => {
                    let from = log.next_index().saturating_sub(back).max(released + 1);
                    log.truncate(from).unwrap();
                    model.retain(|&i, _| i < from);
                    assert_eq!(log.next_index(), from);
                }
                Op::Release { back } => {
                    let upto = log.next_index().saturating_sub(1 + back).max(released);
                    log.release(upto).unwrap();
                    released = upto;
                }
                Op::Reopen => {
                    drop(log);
                    let (l, replay) = Log::open_sized(dir.path(), released, size).unwrap();
                    log = l;
                    let expect: Vec<Entry> = model.range(released + 1..).map(|(_, e)| e.clone()).collect();
                    assert_eq!(replay, expect);
                }
            }
            let last = model.values().next_back().map(|e| e.id);
            if last.is_some() {
                assert_eq!(log.last_id(), last);
            }
            assert_eq!(log.next_index(), last.map_or(log.next_index(), |id| id.index + 1));
        }
        drop(log);
        let (_, replay) = Log::open_sized(dir.path(), released, size).unwrap();
        let expect: Vec<Entry> = model.range(released + 1..).map(|(_, e)| e.clone()).collect();
        assert_eq!(replay, expect);
    }
}

/// How a crash during the last append left its sectors.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// Written up to the `n`th sector boundary of the append, zero after.
    Prefix(u64),
    /// All written but the `n`th sector of the append.
    Hole(u64),
}

fn crash() -> impl proptest::strategy::Strategy<Value = Crash> {
    use proptest::prelude::*;
    prop_oneof![
        (0u64..12).prop_map(Crash::Prefix),
        (0u64..12).prop_map(Crash::Hole),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
    /// A crash during an append loses nothing acknowledged: the log opens
    /// with every earlier entry and a prefix of the interrupted batch, or
    /// (a later sector persisted before an earlier one) refuses as
    /// corrupt. Appending after it and reopening is clean.
    #[test]
    fn a_crash_mid_append_loses_nothing_acknowledged(
        batches in proptest::collection::vec(proptest::collection::vec(0usize..900, 1..5), 1..6),
        crash in crash(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let size = 2048;
        let (mut log, _) = Log::open_sized(dir.path(), 0, size).unwrap();
        let mut acked = Vec::new();
        let mut last = Vec::new();
        let mut span = (0, 0);
        for (b, lens) in batches.iter().enumerate() {
            acked.append(&mut last);
            let next = log.next_index();
            last = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| entry(1 + b as u64, next + i as u64, len))
                .collect();
            let before = (log.active_seg.first, log.pos);
            append(&mut log, &last);
            let start = if log.active_seg.first == before.0 { before.1 } else { SEGMENT_HEADER };
            span = (start, log.pos);
        }
        let path = log.active_seg.path.clone();
        drop(log);
        // The write covered the batch and the zero header after it.
        let (start, end) = (span.0, span.1 + RECORD_HEADER);
        let sector = |n: u64| (start / SECTOR + n) * SECTOR;
        match crash {
            Crash::Prefix(n) => {
                let from = sector(n).max(start);
                if from < end {
                    zero_range(&path, from, end);
                }
            }
            Crash::Hole(n) => {
                let (from, to) = (sector(n).max(start), sector(n + 1).min(end));
                if from < to {
                    zero_range(&path, from, to);
                }
            }
        }
        let (mut log, replay) = match Log::open_sized(dir.path(), 0, size) {
            Ok(opened) => opened,
            Err(LogError::Corrupt { .. }) if matches!(crash, Crash::Hole(_)) => return Ok(()),
            Err(e) => panic!("{crash:?}: {e}"),
        };
        assert!(replay.len() >= acked.len(), "{crash:?}: lost acknowledged entries");
        assert_eq!(&replay[..acked.len()], &acked[..]);
        let kept = &replay[acked.len()..];
        assert_eq!(kept, &last[..kept.len()], "{crash:?}: not a prefix of the batch");
        if let Crash::Prefix(n) = crash {
            // Exactly the records wholly before the cut survive.
            let mut at = start;
            let whole = last
                .iter()
                .take_while(|e| {
                    at += record_len(e.payload.len() as u64);
                    at <= sector(n)
                })
                .count();
            assert_eq!(kept.len(), whole, "{crash:?}");
        }
        // The leader sends the lost entries again, in a later term, but
        // one fewer: the append ends where the old last entry starts.
        let lost = &last[kept.len()..];
        let mut again: Vec<Entry> = lost
            .iter()
            .take(lost.len().saturating_sub(1))
            .map(|e| {
                let mut e = e.clone();
                e.id.term = 99;
                e.payload.reverse();
                e
            })
            .collect();
        if again.is_empty() {
            again.push(entry(99, log.next_index(), 3));
        }
        append(&mut log, &again);
        drop(log);
        let (_, after) = Log::open_sized(dir.path(), 0, size).unwrap();
        let mut expect = replay;
        expect.extend(again);
        assert_eq!(after, expect);
    }
}
