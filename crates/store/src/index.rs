//! The in-memory key index: for every key, the list of its versions.
//!
//! Each key maps to its versions in revision order. A version records what
//! compares, filters and sorts need (revisions, version, lease, tombstone) so
//! that only a value read touches storage. Asking for a key "at revision R"
//! finds the newest version whose main revision is at most R; if that is a
//! tombstone, or there is none, the key does not exist at R.
//!
//! The index may hold versions newer than what readers are allowed to see (the
//! batch being applied); callers always pass the revision they read at, so such
//! versions are invisible to them.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A point in the store's history: `main` counts write transactions, `sub`
/// orders the changes within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The transaction's revision, as seen by clients.
    pub main: i64,
    /// The change's position within its transaction.
    pub sub: i64,
}

impl Revision {
    /// Packs the revision into a storage key that sorts in revision order.
    pub fn to_u128(self) -> u128 {
        ((self.main as u64 as u128) << 64) | (self.sub as u64 as u128)
    }

    /// Unpacks a storage key made by [`Revision::to_u128`].
    pub fn from_u128(v: u128) -> Self {
        Revision {
            main: (v >> 64) as u64 as i64,
            sub: v as u64 as i64,
        }
    }
}

/// One version of a key as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Where this version's record is stored.
    pub rev: Revision,
    /// Revision that created the key's current generation.
    pub create: i64,
    /// Writes since creation, starting at 1.
    pub version: i64,
    /// Attached lease, 0 for none.
    pub lease: i64,
    /// True for a delete marker.
    pub tombstone: bool,
}

/// The range a request addresses, decoded from etcd's `key` / `range_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Vec<u8>),
    /// Every key in `[start, end)`; `end == None` means no upper bound.
    Span(Vec<u8>, Option<Vec<u8>>),
}

impl KeyRange {
    /// Decodes etcd's convention: an empty `range_end` means the single `key`;
    /// `"\0"` means every key at or after `key`; anything else is `[key, end)`.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Span(key.to_vec(), None),
            end => KeyRange::Span(key.to_vec(), Some(end.to_vec())),
        }
    }

    /// True when `key` falls inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::Span(start, end) => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
        }
    }
}

/// Key → versions, ordered by key.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
}

/// The version of `versions` visible at revision `at`, if the key is live then.
fn visible(versions: &[Version], at: i64) -> Option<&Version> {
    let n = versions.partition_point(|v| v.rev.main <= at);
    let v = versions[..n].last()?;
    (!v.tombstone).then_some(v)
}

impl KeyIndex {
    /// The live version of `key` at revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<&Version> {
        visible(self.keys.get(key)?, at)
    }

    /// Every key in `range` that is live at revision `at`, in key order.
    pub fn range<'a>(
        &'a self,
        range: &'a KeyRange,
        at: i64,
    ) -> Box<dyn Iterator<Item = (&'a [u8], &'a Version)> + 'a> {
        match range {
            KeyRange::Single(k) => Box::new(
                self.keys
                    .get_key_value(k.as_slice())
                    .and_then(|(k, vs)| visible(vs, at).map(|v| (k.as_slice(), v)))
                    .into_iter(),
            ),
            // etcd answers an inverted range with nothing, as `scan` does.
            KeyRange::Span(start, end) => Box::new(
                self.scan(Bound::Included(start.as_slice()), end.as_deref(), at)
                    .filter_map(|(k, v)| Some((k, v?))),
            ),
        }
    }

    /// The keys from `from` on and before `end` (no bound when `None`), in
    /// key order, each with its version live at revision `at` (`None` when
    /// it had none then, or was deleted): a walk that can stop at any key
    /// and go on later from just after it.
    pub fn scan<'a>(
        &'a self,
        from: Bound<&'a [u8]>,
        end: Option<&'a [u8]>,
        at: i64,
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a Version>)> + 'a {
        // BTreeMap::range panics on an inverted range; it holds nothing.
        let empty = match (from, end) {
            (Bound::Included(s) | Bound::Excluded(s), Some(e)) => e <= s,
            _ => false,
        };
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        (!empty)
            .then(|| self.keys.range::<[u8], _>((from, upper)))
            .into_iter()
            .flatten()
            .map(move |(k, vs)| (k.as_slice(), visible(vs, at)))
    }

    /// Appends the version `make` builds from the one live at `at` (none
    /// when the key is absent or deleted there), finding the key once, and
    /// returns that live version and the new one. A put of a key that
    /// exists costs one descent of the tree instead of a lookup and then a
    /// second one (`docs/decisions.md`, entry 12). As with
    /// [`KeyIndex::push`], revisions must arrive in increasing order per
    /// key.
    pub fn push_next(
        &mut self,
        key: &[u8],
        at: i64,
        make: impl FnOnce(Option<&Version>) -> Version,
    ) -> (Option<Version>, Version) {
        if let Some(vs) = self.keys.get_mut(key) {
            let prev = visible(vs, at).copied();
            let v = make(prev.as_ref());
            vs.push(v);
            return (prev, v);
        }
        let v = make(None);
        self.keys.insert(key.to_vec(), vec![v]);
        (None, v)
    }

    /// Appends a version; revisions must arrive in increasing order per key.
    pub fn push(&mut self, key: &[u8], v: Version) {
        match self.keys.get_mut(key) {
            Some(vs) => vs.push(v),
            None => {
                self.keys.insert(key.to_vec(), vec![v]);
            }
        }
    }

    /// Drops history that no read at revision `at` or later can need, and
    /// returns the revisions whose stored records may now be deleted.
    ///
    /// For each key the version visible at `at` is kept unless it is a
    /// tombstone; everything older goes.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        self.compact_piece(None, None, at, usize::MAX, &mut dropped);
        dropped
    }

    /// Compacts, as [`KeyIndex::compact`] does, up to `keys` keys after
    /// `after` (from the first when `None`) and up to `upto` included (no
    /// bound when `None`), adding the revisions dropped to `dropped`;
    /// returns how many keys it went over, and the last of them when more
    /// may follow. Versions newer than `at` may arrive between pieces:
    /// they are kept.
    pub fn compact_piece(
        &mut self,
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        at: i64,
        keys: usize,
        dropped: &mut Vec<Revision>,
    ) -> (usize, Option<Vec<u8>>) {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let to = upto.map_or(Bound::Unbounded, Bound::Included);
        // BTreeMap::range panics on an inverted range; it holds nothing.
        if let (Some(after), Some(upto)) = (after, upto) {
            if upto <= after {
                return (0, None);
            }
        }
        let mut gone_over = 0;
        let mut last = None;
        let mut emptied = Vec::new();
        for (key, vs) in self.keys.range_mut::<[u8], _>((from, to)).take(keys) {
            gone_over += 1;
            last = Some(key);
            let n = vs.partition_point(|v| v.rev.main <= at);
            if n == 0 {
                continue;
            }
            let keep_from = if vs[n - 1].tombstone { n } else { n - 1 };
            dropped.extend(vs.drain(..keep_from).map(|v| v.rev));
            if vs.is_empty() {
                emptied.push(key.clone());
            }
        }
        let next = (gone_over == keys)
            .then(|| last.cloned())
            .flatten()
            .filter(|last| upto.is_none_or(|upto| last.as_slice() < upto));
        for key in emptied {
            self.keys.remove(&key);
        }
        (gone_over, next)
    }

    /// Number of keys with any retained history (live or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the index holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, create: i64, version: i64) -> Version {
        Version {
            rev: Revision { main, sub: 0 },
            create,
            version,
            lease: 0,
            tombstone: false,
        }
    }
    fn del(main: i64) -> Version {
        Version {
            rev: Revision { main, sub: 0 },
            create: 0,
            version: 0,
            lease: 0,
            tombstone: true,
        }
    }

    #[test]
    fn get_sees_the_version_at_each_revision() {
        let mut ix = KeyIndex::default();
        ix.push(b"a", put(2, 2, 1));
        ix.push(b"a", put(4, 2, 2));
        ix.push(b"a", del(5));
        ix.push(b"a", put(7, 7, 1));
        let at = |r| ix.get(b"a", r).map(|v| (v.rev.main, v.version));
        assert_eq!(at(1), None);
        assert_eq!(at(3), Some((2, 1)));
        assert_eq!(at(4), Some((4, 2)));
        assert_eq!(at(6), None);
        assert_eq!(at(9), Some((7, 1)));
    }

    #[test]
    fn compaction_keeps_what_later_reads_need() {
        let mut ix = KeyIndex::default();
        ix.push(b"a", put(2, 2, 1));
        ix.push(b"a", put(3, 2, 2));
        ix.push(b"b", put(4, 4, 1));
        ix.push(b"b", del(5));
        ix.push(b"a", put(6, 2, 3));
        let dropped = ix.compact(5);
        let mains: Vec<i64> = dropped.iter().map(|r| r.main).collect();
        assert_eq!(mains, vec![2, 4, 5]);
        assert_eq!(ix.get(b"a", 5).map(|v| v.rev.main), Some(3));
        assert_eq!(ix.get(b"a", 6).map(|v| v.rev.main), Some(6));
        assert!(ix.get(b"b", 5).is_none());
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn key_ranges_decode_as_etcd_defines() {
        let r = |k: &[u8], e: &[u8]| KeyRange::new(k, e);
        let table: &[(KeyRange, &[u8], bool)] = &[
            (r(b"a", b""), b"a", true),
            (r(b"a", b""), b"ab", false),
            (r(b"a", b"c"), b"b", true),
            (r(b"a", b"c"), b"c", false),
            (r(b"a", b"c"), b"a", true),
            (r(b"b", b"\0"), b"zz", true),
            (r(b"b", b"\0"), b"a", false),
            (r(b"c", b"a"), b"b", false),
        ];
        for (range, key, want) in table {
            assert_eq!(range.contains(key), *want, "{range:?} contains {key:?}");
        }
    }

    #[test]
    fn inverted_range_is_empty_not_a_panic() {
        let mut ix = KeyIndex::default();
        ix.push(b"m", put(2, 2, 1));
        assert_eq!(ix.range(&KeyRange::new(b"z", b"a"), 2).count(), 0);
        assert_eq!(ix.range(&KeyRange::new(b"a", b"\0"), 2).count(), 1);
    }
}
