//! etcd 3.4's encodings of what its buckets hold, as far as a snapshot
//! needs them.

/// The buckets of an etcd 3.4 backend, in bytewise order.
pub const BUCKETS: &[&[u8]] = &[
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"key",
    b"lease",
    b"members",
    b"members_removed",
    b"meta",
];

/// Meta bucket key: the applied log index (8 bytes, big-endian).
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// Meta bucket key: the revision the last compaction finished at.
pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
/// Meta bucket key: the revision the last compaction was scheduled at.
pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";

/// Length of a revision key without its tombstone mark.
pub const REV_LEN: usize = 17;

/// A revision as the `key` bucket keys it: main and sub big-endian with
/// `_` between, then `t` for a tombstone.
pub fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REV_LEN + 1);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Reads a revision key: (main, sub, tombstone).
pub fn parse_rev_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        REV_LEN => false,
        18 if k[REV_LEN] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..REV_LEN].try_into().ok()?);
    Some((main, sub, tombstone))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// `leasepb.Lease {int64 ID = 1; int64 TTL = 2; int64 RemainingTTL = 3}`;
/// fields at 0 are left out, as protobuf does.
pub fn lease_value(id: i64, ttl: i64, remaining: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for (field, v) in [(1u8, id), (2, ttl), (3, remaining)] {
        if v != 0 {
            out.push(field << 3);
            varint(&mut out, v as u64);
        }
    }
    out
}

/// Reads a `leasepb.Lease`: (ID, TTL, RemainingTTL). Unknown varint and
/// length-delimited fields are skipped; anything else is refused.
pub fn parse_lease(mut b: &[u8]) -> Option<(i64, i64, i64)> {
    let mut fields = [0i64; 3];
    while !b.is_empty() {
        let tag = read_varint(&mut b)?;
        match (tag >> 3, tag & 7) {
            (f @ 1..=3, 0) => fields[f as usize - 1] = read_varint(&mut b)? as i64,
            (_, 0) => {
                read_varint(&mut b)?;
            }
            (_, 2) => {
                let n = usize::try_from(read_varint(&mut b)?).ok()?;
                b = b.get(n..)?;
            }
            _ => return None,
        }
    }
    Some((fields[0], fields[1], fields[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_sort_as_revisions_and_read_back() {
        let a = rev_key(5, 0, false);
        let b = rev_key(5, 1, true);
        let c = rev_key(256, 0, false);
        assert!(a < b && b < c);
        assert_eq!(a.len(), REV_LEN);
        assert_eq!(parse_rev_key(&b), Some((5, 1, true)));
        assert_eq!(parse_rev_key(&c), Some((256, 0, false)));
        assert_eq!(parse_rev_key(&c[..16]), None);
        let mut bad = c.clone();
        bad.push(b'x');
        assert_eq!(parse_rev_key(&bad), None);
    }

    #[test]
    fn lease_values_read_back() {
        for (id, ttl, rem) in [(1, 60, 0), (i64::MAX, 1, -1), (7, 0, 30)] {
            assert_eq!(
                parse_lease(&lease_value(id, ttl, rem)),
                Some((id, ttl, rem))
            );
        }
        // ID 9, TTL 60: as etcd writes it.
        assert_eq!(lease_value(9, 60, 0), vec![0x08, 9, 0x10, 60]);
        assert_eq!(parse_lease(&[0x08]), None);
        assert_eq!(parse_lease(&[0x0d, 0, 0, 0, 0]), None);
    }
}
