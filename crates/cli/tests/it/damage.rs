//! Damage at start: a data directory left by `kill -9`, then damaged on
//! purpose, must either start holding every acknowledged write or refuse
//! to start with an error — never serve less, never reuse a revision,
//! never panic.
//!
//! The directory is written once (acknowledged puts through etcd-client,
//! some checkpointed into the database and the last ones only in the
//! write-ahead log, then `kill -9`) and kept in memory. Each case writes a
//! fresh copy, damages it and starts `roster serve` on it:
//!
//! - one byte flipped at offsets spread with a stride over the newest log
//!   segment's header and records, with every late record hit;
//! - that segment truncated at many lengths;
//! - one byte flipped at offsets over every page of `roster.redb` that
//!   holds anything;
//! - `roster.redb` deleted (the log still starts at entry 1 here, so it
//!   is replayed in full).
//!
//! A refusal must print `roster: error: ...` and no panic. A server that
//! starts must hold every acknowledged key with its value and mod
//! revision, no other key, and give a new put a revision above them all.
//!
//! The segment size is not a flag (64 MiB, preallocated), so copies are
//! written sparse: what a file holds up to its last nonzero byte, then its
//! length. Cases run one after another.
//!
//! A second test deletes `roster.redb` just after the log moved to a new
//! segment (the old one released): that must be refused, twice, with the
//! directory left as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use roster_testkit::etcd_api::connect;

use crate::roster::Roster;

/// An acknowledged put: key, value, revision.
type Acked = Vec<(String, String, i64)>;

/// Keys written before the checkpoint the test waits for, and per round
/// after it (concurrently, then `kill -9`).
const SETTLED_KEYS: usize = 40;
const LOGGED_KEYS: usize = 30;

/// Bytes of a log segment's header, and the alignment of its records.
const SEGMENT_HEADER: usize = 64;
const RECORD_ALIGN: usize = 32;

/// A data directory held in memory: each file's bytes up to its last
/// nonzero one, and its length.
#[derive(Clone)]
struct Image {
    files: Vec<(PathBuf, Vec<u8>, u64)>,
}

impl Image {
    fn read(dir: &Path) -> Image {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>, u64)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                    continue;
                }
                let mut bytes = std::fs::read(&path).unwrap();
                let len = bytes.len() as u64;
                let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                bytes.truncate(used);
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes, len));
            }
        }
        let mut files = Vec::new();
        walk(dir, dir, &mut files);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Image { files }
    }

    fn write(&self, dir: &Path) {
        for (rel, bytes, len) in &self.files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let f = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut &f, bytes).unwrap();
            f.set_len(*len).unwrap();
        }
    }

    fn file(&mut self, rel: &Path) -> (&mut Vec<u8>, &mut u64) {
        let (_, bytes, len) = self
            .files
            .iter_mut()
            .find(|(r, _, _)| r == rel)
            .unwrap_or_else(|| panic!("no {}", rel.display()));
        (bytes, len)
    }

    /// The newest log segment.
    fn newest_segment(&self) -> PathBuf {
        self.files
            .iter()
            .map(|(rel, _, _)| rel)
            .filter(|rel| rel.extension().is_some_and(|e| e == "wal"))
            .max()
            .expect("a log segment")
            .clone()
    }

    fn flip(&self, rel: &Path, at: usize) -> Image {
        let mut img = self.clone();
        let (bytes, _) = img.file(rel);
        if bytes.len() <= at {
            bytes.resize(at + 1, 0);
        }
        bytes[at] ^= 0xff;
        img
    }

    fn truncate(&self, rel: &Path, to: u64) -> Image {
        let mut img = self.clone();
        let (bytes, len) = img.file(rel);
        bytes.truncate(to as usize);
        *len = to;
        img
    }

    fn without(&self, rel: &Path) -> Image {
        let mut img = self.clone();
        img.files.retain(|(r, _, _)| r != rel);
        img
    }
}

async fn put(c: &mut Client, key: String, value: String) -> (String, String, i64) {
    let resp = c.put(key.clone(), value.clone(), None).await.unwrap();
    (key, value, resp.header().unwrap().revision())
}

/// Puts `n` keys from `first` on, all at once, so they share few commits.
async fn put_together(c: &Client, first: usize, n: usize, acked: &mut Acked) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in first..first + n {
        let mut c = c.clone();
        tasks.spawn(async move { put(&mut c, format!("k/{i:04}"), format!("value {i}")).await });
    }
    while let Some(done) = tasks.join_next().await {
        acked.push(done.unwrap());
    }
}

/// The revision the database alone holds (opened on a scratch copy, as
/// opening it checks and commits).
fn database_revision(image: &Image) -> i64 {
    let scratch = tempfile::tempdir().unwrap();
    image.write(scratch.path());
    let store = roster_store::Store::open(&scratch.path().join("roster.redb")).unwrap();
    store.revision()
}

/// Writes the directory the cases damage: keys the database holds, then
/// keys only the log holds, and `kill -9`.
async fn build(dir: &Path) -> (Image, Acked) {
    let mut acked = Acked::new();
    let mut server = Roster::start_in(dir, &[]);
    let mut c = connect(&server.endpoint).await;
    for i in 0..SETTLED_KEYS {
        acked.push(put(&mut c, format!("k/{i:04}"), format!("value {i}")).await);
    }
    // The checkpointer writes the database 100 ms after the first commit.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut next = SETTLED_KEYS;
    for _round in 0..5 {
        put_together(&c, next, LOGGED_KEYS, &mut acked).await;
        next += LOGGED_KEYS;
        server.kill();
        let image = Image::read(dir);
        let last = acked.iter().map(|a| a.2).max().unwrap();
        if database_revision(&image) < last {
            return (image, acked);
        }
        // A checkpoint came before the kill: once more.
        server = Roster::start_in(dir, &[]);
        c = connect(&server.endpoint).await;
    }
    panic!("every round was checkpointed before the kill");
}

enum Outcome {
    Refused(String),
    Served,
}

/// Starts `roster serve` on `dir`: a refusal must be an error, not a
/// panic; a server must hold `acked` exactly and go on above it.
async fn start_and_check(dir: &Path, acked: &Acked) -> Result<Outcome, String> {
    let mut server = match Roster::try_start_in(dir, &[]) {
        Err(lines) => {
            let text = lines.join("\n");
            if text.contains("panicked") {
                return Err(format!("panicked:\n{text}"));
            }
            return match lines.iter().find(|l| l.starts_with("roster: error: ")) {
                Some(l) => Ok(Outcome::Refused(l.clone())),
                None => Err(format!("exited without an error:\n{text}")),
            };
        }
        Ok(server) => server,
    };
    let result = check_served(&server, acked).await;
    server.kill();
    result.map(|()| Outcome::Served)
}

async fn check_served(server: &Roster, acked: &Acked) -> Result<(), String> {
    let mut c = connect(&server.endpoint).await;
    let got = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("get: {e}"))?;
    let got: BTreeMap<String, (String, i64)> = got
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().unwrap().to_string();
            (
                key,
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();
    for (key, value, rev) in acked {
        match got.get(key) {
            Some((v, r)) if v == value && r == rev => {}
            Some((v, r)) => {
                return Err(format!(
                    "{key} is {v:?} at {r}, acknowledged as {value:?} at {rev}"
                ))
            }
            None => return Err(format!("{key}, acknowledged at {rev}, is gone")),
        }
    }
    if got.len() != acked.len() {
        return Err(format!("{} keys, {} acknowledged", got.len(), acked.len()));
    }
    let last = acked.iter().map(|a| a.2).max().unwrap_or(1);
    let probe = c
        .put("probe", "after", None)
        .await
        .map_err(|e| format!("put after the start: {e}"))?;
    let rev = probe.header().unwrap().revision();
    if rev <= last {
        return Err(format!(
            "a new put got revision {rev}, acknowledged writes reach {last}"
        ));
    }
    Ok(())
}

/// Offsets in the newest segment: its header, then a stride over the
/// records, then every 8th byte of the last 12 records (the entries the
/// database does not hold yet), then just past the end.
fn log_offsets(used: usize) -> Vec<usize> {
    let end = used.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    let mut at: Vec<usize> = (0..SEGMENT_HEADER).step_by(13).collect();
    let stride = ((end - SEGMENT_HEADER) / 40).max(1);
    at.extend((0..40).map(|i| SEGMENT_HEADER + i * stride + (i * 7) % RECORD_ALIGN));
    let late = end.saturating_sub(12 * 96).max(SEGMENT_HEADER);
    at.extend((late..end).step_by(24));
    at.extend([end, end + 1, end + 31]);
    at.retain(|&a| a < end + RECORD_ALIGN);
    at.sort_unstable();
    at.dedup();
    at
}

/// Offsets in the database: a stride over redb's header page, and a few
/// in every other page that holds anything.
fn db_offsets(bytes: &[u8]) -> Vec<usize> {
    const PAGE: usize = 4096;
    let mut at: Vec<usize> = (0..PAGE.min(bytes.len())).step_by(97).collect();
    for (n, page) in bytes.chunks(PAGE).enumerate().skip(1) {
        if page.iter().all(|&b| b == 0) {
            continue;
        }
        for o in [0, 9, 40, 777, 2048, 4095] {
            if o < page.len() {
                at.push(n * PAGE + o);
            }
        }
    }
    at
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_data_is_refused_or_harmless() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let (image, acked) = build(&work.path().join("built")).await;

    let segment = image.newest_segment();
    let db = PathBuf::from("roster.redb");
    let mut cases: Vec<(String, Image)> = Vec::new();
    let (seg_bytes, seg_len) = {
        let (_, b, l) = image.files.iter().find(|(r, _, _)| *r == segment).unwrap();
        (b.len(), *l)
    };
    for at in log_offsets(seg_bytes) {
        cases.push((format!("log byte {at} flipped"), image.flip(&segment, at)));
    }
    let mut lengths: Vec<u64> = vec![0, 1, 63, 64, 65, 96, seg_len / 2, seg_len - 1];
    let used = seg_bytes as u64;
    lengths.extend((1..=20).map(|i| SEGMENT_HEADER as u64 + (used - 64) * i / 20));
    lengths.extend([used + 1, used + 512]);
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        cases.push((
            format!("log cut to {len} bytes"),
            image.truncate(&segment, len),
        ));
    }
    let db_bytes = image
        .files
        .iter()
        .find(|(r, _, _)| *r == db)
        .unwrap()
        .1
        .clone();
    for at in db_offsets(&db_bytes) {
        cases.push((format!("database byte {at} flipped"), image.flip(&db, at)));
    }
    cases.push(("database deleted".to_string(), image.without(&db)));

    let mut failures = Vec::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut served = 0;
    for (n, (name, img)) in cases.iter().enumerate() {
        let dir = work.path().join(format!("case{n}"));
        img.write(&dir);
        match start_and_check(&dir, &acked).await {
            Ok(Outcome::Served) => served += 1,
            Ok(Outcome::Refused(line)) => {
                // Counted by the kind of refusal, offsets and paths aside.
                let kind: String = line
                    .replace(&*dir.to_string_lossy(), "DIR")
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect();
                *refusals.entry(kind).or_default() += 1;
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{} cases in {:?}: {served} served, refused:",
        cases.len(),
        started.elapsed()
    );
    for (kind, count) in &refusals {
        eprintln!("  {count} × {kind}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_deleted_after_the_log_moved_on_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data");
    let mut server = Roster::start_in(&dir, &[]);
    let mut c = connect(&server.endpoint).await;
    // Over 8 MiB of log, all of it checkpointed: the log starts a fresh
    // segment and deletes the old one (`roster_raft::log`, release).
    // One key written over and over, so a read of it all stays small.
    let big = "x".repeat(100 << 10);
    let mut last = None;
    for i in 0..90 {
        last = Some(put(&mut c, "k/big".to_string(), format!("{i} {big}")).await);
    }
    let mut acked: Acked = last.into_iter().collect();
    let wal = dir.join("wal");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n == "00000000000000000001.wal") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log never moved on: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        acked.push(put(&mut c, format!("k/{i:04}"), format!("value {i}")).await);
    }
    server.kill();

    let image = Image::read(&dir);
    let deleted = image.without(Path::new("roster.redb"));
    let case = work.path().join("case");
    deleted.write(&case);
    for attempt in 1..=2 {
        match start_and_check(&case, &acked).await {
            Ok(Outcome::Refused(line)) => assert!(
                line.contains("missing or older than the log"),
                "attempt {attempt}: {line}"
            ),
            Ok(Outcome::Served) => panic!("attempt {attempt}: served without its database"),
            Err(e) => panic!("attempt {attempt}: {e}"),
        }
        // Nothing created, changed or deleted.
        let after = Image::read(&case);
        assert!(
            after.files == deleted.files,
            "attempt {attempt}: the directory changed"
        );
    }
    // With its database back, it serves everything.
    image.write(&case);
    match start_and_check(&case, &acked).await {
        Ok(Outcome::Served) => {}
        Ok(Outcome::Refused(line)) => panic!("refused with its database: {line}"),
        Err(e) => panic!("with its database: {e}"),
    }
}
