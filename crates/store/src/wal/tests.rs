use std::io::{Seek, SeekFrom, Write};

use roster_proto::etcdserverpb::PutRequest;
use roster_proto::roster::command::Kind;

use super::*;

fn put(i: u64) -> Command {
    Command {
        kind: Some(Kind::Put(PutRequest {
            key: format!("key-{i}").into_bytes(),
            value: vec![b'v'; 100],
            ..Default::default()
        })),
    }
}

fn entries(from: u64, to: u64) -> Vec<(u64, Command)> {
    (from..=to).map(|i| (i, put(i))).collect()
}

fn indexes(replay: &[(u64, Command)]) -> Vec<u64> {
    replay.iter().map(|(i, _)| *i).collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn replays_what_the_store_has_not_got() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
    assert!(replay.is_empty());
    wal.append(&entries(1, 3)).unwrap();
    wal.append(&entries(4, 5)).unwrap();
    drop(wal);

    let (wal, replay) = Wal::open(dir.path(), 2).unwrap();
    assert_eq!(indexes(&replay), vec![3, 4, 5]);
    assert_eq!(replay[0].1, put(3), "entries come back as written");
    assert_eq!(wal.next_index(), 6);
}

#[test]
fn appends_must_follow_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
    wal.append(&entries(1, 2)).unwrap();
    let err = wal.append(&entries(4, 4)).unwrap_err();
    assert!(err.is_fatal(), "{err}");
}

#[test]
fn a_torn_tail_is_dropped_and_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
    wal.append(&entries(1, 3)).unwrap();
    let end_of_two = {
        let mut buf = Vec::new();
        for (_, c) in entries(1, 2) {
            buf.resize(buf.len() + HEADER, 0);
            c.encode(&mut buf).unwrap();
        }
        buf.len() as u64
    };
    drop(wal);
    // Damage the last byte of entry 3, as a write cut short would.
    let path = dir.path().join(segment_name(1));
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    let len3 = (HEADER + put(3).encoded_len()) as u64;
    f.seek(SeekFrom::Start(end_of_two + len3 - 1)).unwrap();
    f.write_all(&[0xff]).unwrap();
    drop(f);

    let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2]);
    assert_eq!(wal.next_index(), 3);
    wal.append(&entries(3, 4)).unwrap();
    drop(wal);
    let (_, replay) = Wal::open(dir.path(), 0).unwrap();
    assert_eq!(indexes(&replay), vec![1, 2, 3, 4]);
}

#[test]
fn segments_roll_and_are_released_once_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about three entries per segment.
    let size = 3 * (HEADER + put(1).encoded_len()) as u64 + 8;
    let (mut wal, _) = Wal::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=10 {
        wal.append(&entries(i, i)).unwrap();
    }
    assert_eq!(
        segment_files(dir.path()),
        vec![
            segment_name(1),
            segment_name(4),
            segment_name(7),
            segment_name(10)
        ]
    );
    // The store holds up to 6: the first segment (1..=3) can go, the
    // second (4..=6) too; 7..=9 still matters.
    wal.release(6).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        vec![segment_name(7), segment_name(10)]
    );
    assert_eq!(wal.segments(), 2);
    drop(wal);

    let (wal, replay) = Wal::open_sized(dir.path(), 6, size).unwrap();
    assert_eq!(indexes(&replay), vec![7, 8, 9, 10]);
    assert_eq!(wal.next_index(), 11);
}

/// A log of entries 1 to 6, two per segment.
fn three_segments_of_two() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * (HEADER + put(1).encoded_len()) as u64 + 8;
    let (mut wal, _) = Wal::open_sized(dir.path(), 0, size).unwrap();
    for i in 1..=6 {
        wal.append(&entries(i, i)).unwrap();
    }
    dir
}

#[test]
fn a_log_that_misses_entries_the_store_needs_is_refused() {
    let dir = three_segments_of_two();
    std::fs::remove_file(dir.path().join(segment_name(1))).unwrap();
    let err = Wal::open(dir.path(), 0)
        .err()
        .expect("entries 1 and 2 are gone");
    assert!(err.to_string().contains("the store needs 1"), "{err}");
}

#[test]
fn a_damaged_older_segment_is_refused() {
    let dir = three_segments_of_two();
    let path = dir.path().join(segment_name(1));
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(HEADER as u64 + 2)).unwrap();
    f.write_all(b"xx").unwrap();
    drop(f);
    let err = Wal::open(dir.path(), 0).err().expect("entry 1 is damaged");
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn a_store_ahead_of_the_log_starts_a_fresh_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
    wal.append(&entries(1, 2)).unwrap();
    drop(wal);
    // The store is at 9, for instance a data directory older than the log.
    let (mut wal, replay) = Wal::open(dir.path(), 9).unwrap();
    assert!(replay.is_empty());
    assert_eq!(wal.next_index(), 10);
    wal.append(&entries(10, 11)).unwrap();
    wal.release(11).unwrap();
    drop(wal);
    assert_eq!(segment_files(dir.path()), vec![segment_name(10)]);
    let (_, replay) = Wal::open(dir.path(), 9).unwrap();
    assert_eq!(indexes(&replay), vec![10, 11]);
}

#[test]
fn releasing_everything_starts_afresh_once_the_segment_is_large() {
    let dir = tempfile::tempdir().unwrap();
    let entry = (HEADER + put(1).encoded_len()) as u64;
    // Half a segment is the threshold here: 4 entries of a 10-entry segment
    // stay, 6 roll over.
    let size = 10 * entry;
    let (mut wal, _) = Wal::open_sized(dir.path(), 0, size).unwrap();
    wal.append(&entries(1, 4)).unwrap();
    wal.release(4).unwrap();
    assert_eq!(segment_files(dir.path()), vec![segment_name(1)]);
    wal.append(&entries(5, 6)).unwrap();
    // Not everything is released: nothing rolls.
    wal.release(5).unwrap();
    assert_eq!(segment_files(dir.path()), vec![segment_name(1)]);
    wal.release(6).unwrap();
    assert_eq!(segment_files(dir.path()), vec![segment_name(7)]);
    drop(wal);
    let (mut wal, replay) = Wal::open_sized(dir.path(), 6, size).unwrap();
    assert!(replay.is_empty());
    assert_eq!(wal.next_index(), 7);
    wal.append(&entries(7, 7)).unwrap();
    drop(wal);
    let (_, replay) = Wal::open_sized(dir.path(), 6, size).unwrap();
    assert_eq!(indexes(&replay), vec![7]);
}
