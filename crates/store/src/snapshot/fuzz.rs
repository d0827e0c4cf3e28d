//! Snapshot files are input from outside (`roster snapshot restore`, and a
//! peer's snapshot once there is Raft): proptest gives the reader random
//! bytes, random bbolt files that pass the hash and meta checks, and real
//! snapshots cut short or changed with their hash made to match. Each
//! must restore or be refused as [`SnapshotError::Invalid`], leaving no
//! database behind — never a panic. The page and value decoders
//! underneath get arbitrary bytes directly.

use proptest::prelude::*;
use roster_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};
use roster_proto::roster::{command::Kind, Command};

use super::bolt::{branch_elems, leaf_elems, read_header, Meta};
use super::*;
use crate::backend;
use crate::lease::Lease;

/// A small real snapshot: some keys, some on a lease; made once.
fn real_snapshot() -> &'static [u8] {
    static SNAPSHOT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SNAPSHOT.get_or_init(make_snapshot)
}

fn make_snapshot() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let mut cmds = vec![Command {
        kind: Some(Kind::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 })),
    }];
    for i in 0..40u64 {
        cmds.push(Command {
            kind: Some(Kind::Put(PutRequest {
                key: format!("k{:02}", i % 25).into_bytes(),
                value: vec![b'v'; (i * 37 % 300) as usize],
                lease: if i % 9 == 0 { 7 } else { 0 },
                ..Default::default()
            })),
        });
    }
    let numbered: Vec<(u64, Command)> = (1..).zip(cmds).collect();
    store.apply_logged(&numbered).unwrap();
    let mut out = Vec::new();
    save(&store, &mut out).unwrap();
    out
}

/// `body` with its SHA-256 after it, as a snapshot file holds.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let hash = Sha256::digest(&body);
    body.extend_from_slice(&hash);
    body
}

/// Restores `bytes`; asserts it restored or was refused as invalid, with
/// nothing left at the target when refused.
fn restores_or_refuses(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap");
    let target = dir.path().join("db");
    std::fs::write(&file, bytes).unwrap();
    match restore(&file, &target) {
        Ok(_) => prop_assert!(Store::open(&target).is_ok()),
        Err(SnapshotError::Invalid { reason, .. }) => {
            prop_assert!(!reason.is_empty());
            prop_assert!(!target.exists(), "a refused restore left a database");
            prop_assert!(!target.with_extension("restoring").exists());
        }
        Err(e) => prop_assert!(false, "neither restored nor invalid: {}", e),
    }
    Ok(())
}

/// Pages of random bytes after a valid meta page naming them, so the
/// reader gets past the hash and meta checks into the page walk.
fn forged_bolt() -> impl Strategy<Value = Vec<u8>> {
    (
        3u64..8,
        0u64..10,
        proptest::collection::vec(any::<u8>(), 0..4096),
    )
        .prop_map(|(pages, root, noise)| {
            let mut body = vec![0u8; pages as usize * bolt::PAGE_SIZE];
            let meta = Meta {
                page_size: bolt::PAGE_SIZE as u32,
                root,
                freelist: 2,
                pages,
                txid: 1,
            };
            body[..bolt::PAGE_SIZE].copy_from_slice(&meta.page(0));
            // Scatter the noise over pages 2.., with page headers that
            // often look right (their own id, a leaf or branch flag).
            for (i, chunk) in noise.chunks(97).enumerate() {
                let page = 2 + (i as u64 % (pages - 2));
                let start = page as usize * bolt::PAGE_SIZE + (i * 13) % 200;
                body[start..start + chunk.len()].copy_from_slice(chunk);
                if i % 3 == 0 {
                    let p = page as usize * bolt::PAGE_SIZE;
                    body[p..p + 8].copy_from_slice(&page.to_le_bytes());
                    let flags = [bolt::LEAF, bolt::BRANCH][i % 2];
                    body[p + 8..p + 10].copy_from_slice(&flags.to_le_bytes());
                    body[p + 12..p + 16].copy_from_slice(&0u32.to_le_bytes());
                }
            }
            sealed(body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        restores_or_refuses(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_with_a_matching_hash_are_refused(
        pages in 1usize..6,
        fill in any::<u8>(),
        noise in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..64),
    ) {
        let mut body = vec![fill; pages * 512];
        for (at, b) in noise {
            let len = body.len();
            body[at as usize % len] = b;
        }
        restores_or_refuses(&sealed(body))?;
    }

    #[test]
    fn random_pages_under_a_valid_meta_page_never_panic(file in forged_bolt()) {
        restores_or_refuses(&file)?;
    }

    #[test]
    fn real_snapshots_cut_or_changed_never_panic(
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
        rehash in any::<bool>(),
    ) {
        let good = real_snapshot();
        let mut body = good[..good.len() - HASH_LEN].to_vec();
        for (at, x) in flips {
            let i = at.index(body.len());
            body[i] ^= x;
        }
        let keep = cut.index(body.len() + 1);
        if rehash {
            // Cut to whole 512-byte units, or the length check alone refuses.
            body.truncate(keep / 512 * 512);
            restores_or_refuses(&sealed(body))?;
        } else {
            let mut file = sealed(body);
            file.truncate(keep + HASH_LEN);
            restores_or_refuses(&file)?;
        }
    }

    #[test]
    fn page_and_value_decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_header(&bytes);
        let _ = leaf_elems(&bytes);
        let _ = branch_elems(&bytes);
        let _ = Meta::read(&bytes, 0);
        let _ = etcd::parse_rev_key(&bytes);
        let _ = etcd::parse_lease(&bytes);
        let _ = backend::decode(&bytes);
        let _ = Lease::decode(&bytes);
    }

    #[test]
    fn value_encodings_read_back(
        main in any::<i64>(),
        sub in any::<i64>(),
        tombstone in any::<bool>(),
        id in any::<i64>(),
        ttl in any::<i64>(),
        remaining in any::<i64>(),
    ) {
        let k = etcd::rev_key(main, sub, tombstone);
        prop_assert_eq!(etcd::parse_rev_key(&k), Some((main, sub, tombstone)));
        let v = etcd::lease_value(id, ttl, remaining);
        prop_assert_eq!(etcd::parse_lease(&v), Some((id, ttl, remaining)));
        let lease = Lease { ttl, remaining, keys: Default::default() };
        prop_assert_eq!(Lease::decode(&lease.encode()), Some(lease));
    }
}
