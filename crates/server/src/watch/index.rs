//! Which watchers an event's key concerns, without asking every watcher.
//!
//! The hub publishes each batch on the writer's thread, so whatever it
//! costs, every write pays. Testing every watcher of every stream against
//! every event would make each write pay for every watcher, interested or
//! not (measured: `docs/decisions.md`, entry 19). The index answers "who
//! watches this key" from what the watchers asked for:
//! - a single key: a hash map from the key;
//! - a prefix (`range_end` is the key's prefix end, what registries and
//!   `etcdctl watch --prefix` use): a hash map from the prefix, probed with
//!   each prefix of the event's key whose length some watcher uses;
//! - any other range (`[start, end)` or from-key): a list tested in full.
//!
//! The hub keeps the index beside its streams and updates it whenever a
//! watcher is added or removed; it holds only ids, the watchers themselves
//! stay in their streams.

use std::collections::{BTreeMap, HashMap};

use roster_store::index::KeyRange;

use roster_proto::prefix_end;

/// A watcher's address: stream id and watch id.
pub type WatcherId = (u64, i64);

/// Watcher ids by what they watch.
#[derive(Default)]
pub struct WatchIndex {
    exact: HashMap<Vec<u8>, Vec<WatcherId>>,
    prefixes: HashMap<Vec<u8>, Vec<WatcherId>>,
    /// Prefix lengths in use, with how many prefixes have each.
    prefix_lens: BTreeMap<usize, usize>,
    others: Vec<(KeyRange, WatcherId)>,
}

/// The prefix a range stands for, if it is one.
fn as_prefix(range: &KeyRange) -> Option<&[u8]> {
    match range {
        KeyRange::Span(start, Some(end)) if *end == prefix_end(start) => Some(start.as_slice()),
        _ => None,
    }
}

fn remove_from(list: &mut Vec<WatcherId>, id: WatcherId) {
    if let Some(at) = list.iter().position(|&w| w == id) {
        list.swap_remove(at);
    }
}

impl WatchIndex {
    /// Records that watcher `id` watches `range`.
    pub fn insert(&mut self, range: &KeyRange, id: WatcherId) {
        if let KeyRange::Single(key) = range {
            // Most keys have one watcher: room for one, not the default four.
            self.exact
                .entry(key.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push(id);
        } else if let Some(prefix) = as_prefix(range) {
            let list = self
                .prefixes
                .entry(prefix.to_vec())
                .or_insert_with(|| Vec::with_capacity(1));
            if list.is_empty() {
                *self.prefix_lens.entry(prefix.len()).or_default() += 1;
            }
            list.push(id);
        } else {
            self.others.push((range.clone(), id));
        }
    }

    /// Forgets that watcher `id` watches `range`.
    pub fn remove(&mut self, range: &KeyRange, id: WatcherId) {
        if let KeyRange::Single(key) = range {
            if let Some(list) = self.exact.get_mut(key) {
                remove_from(list, id);
                if list.is_empty() {
                    self.exact.remove(key);
                }
            }
        } else if let Some(prefix) = as_prefix(range) {
            if let Some(list) = self.prefixes.get_mut(prefix) {
                remove_from(list, id);
                if list.is_empty() {
                    self.prefixes.remove(prefix);
                    if let Some(n) = self.prefix_lens.get_mut(&prefix.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&prefix.len());
                        }
                    }
                }
            }
        } else if let Some(at) = self.others.iter().position(|(_, w)| *w == id) {
            self.others.swap_remove(at);
        }
    }

    /// Calls `f` with every watcher whose range holds `key`, each once.
    pub fn matching(&self, key: &[u8], mut f: impl FnMut(WatcherId)) {
        for &id in self.exact.get(key).into_iter().flatten() {
            f(id);
        }
        for &len in self.prefix_lens.keys() {
            if len > key.len() {
                break;
            }
            for &id in self.prefixes.get(&key[..len]).into_iter().flatten() {
                f(id);
            }
        }
        for (range, id) in &self.others {
            if range.contains(key) {
                f(*id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(ix: &WatchIndex, key: &[u8]) -> Vec<WatcherId> {
        let mut out = Vec::new();
        ix.matching(key, |id| out.push(id));
        out.sort();
        out
    }

    #[test]
    fn finds_exactly_the_watchers_whose_range_holds_the_key() {
        let mut ix = WatchIndex::default();
        let single = KeyRange::new(b"/svc/a/1", b"");
        let prefix = KeyRange::new(b"/svc/a/", b"/svc/a0");
        let all = KeyRange::new(b"\0", b"\0");
        let span = KeyRange::new(b"/svc/a/0", b"/svc/a/2");
        let other_prefix = KeyRange::new(b"/svc/b/", b"/svc/b0");
        ix.insert(&single, (1, 1));
        ix.insert(&prefix, (1, 2));
        ix.insert(&all, (2, 1));
        ix.insert(&span, (2, 2));
        ix.insert(&other_prefix, (3, 1));
        assert_eq!(hits(&ix, b"/svc/a/1"), vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        assert_eq!(hits(&ix, b"/svc/a/3"), vec![(1, 2), (2, 1)]);
        assert_eq!(hits(&ix, b"/svc/b/x"), vec![(2, 1), (3, 1)]);
        assert_eq!(hits(&ix, b"/svc"), vec![(2, 1)]);

        ix.remove(&prefix, (1, 2));
        ix.remove(&single, (1, 1));
        ix.remove(&span, (2, 2));
        assert_eq!(hits(&ix, b"/svc/a/1"), vec![(2, 1)]);
        assert!(ix.exact.is_empty());
        assert_eq!(ix.prefix_lens.len(), 1, "only /svc/b/ is left");
    }

    #[test]
    fn prefixes_of_all_0xff_and_empty_ranges_still_match() {
        let mut ix = WatchIndex::default();
        // "\xff" has no prefix end: it is a from-key range, tested in full.
        ix.insert(&KeyRange::new(b"\xff", b"\0"), (1, 1));
        // An empty prefix with end "\0" watches everything.
        ix.insert(&KeyRange::new(b"", b"\0"), (1, 2));
        assert_eq!(hits(&ix, b"\xff\x01"), vec![(1, 1), (1, 2)]);
        assert_eq!(hits(&ix, b"a"), vec![(1, 2)]);
    }

    #[test]
    fn two_watchers_of_one_prefix_share_its_length() {
        let mut ix = WatchIndex::default();
        let p = KeyRange::new(b"ab", b"ac");
        ix.insert(&p, (1, 1));
        ix.insert(&p, (2, 1));
        ix.remove(&p, (1, 1));
        assert_eq!(hits(&ix, b"abc"), vec![(2, 1)]);
        ix.remove(&p, (2, 1));
        assert!(hits(&ix, b"abc").is_empty());
        assert!(ix.prefix_lens.is_empty());
    }
}
