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
//! Only watchers that can take events now are here: the hub takes a watcher
//! out when it falls behind and puts it back once catch-up has brought it
//! level, so a crowd of stalled watchers costs a write nothing. Falling
//! behind happens in bursts (a whole stream's watchers at once), so taking
//! one out must not cost a search of a list that may hold a hundred
//! thousand ids: [`WatchIndex::insert`] answers where in its list the id
//! went (its [`Slot`]), the watcher keeps it, and [`WatchIndex::remove`]
//! swaps the list's last id into the hole and says which watcher moved so
//! that its slot can be updated.
//!
//! The hub keeps the index beside its streams; the index holds only ids,
//! the watchers themselves stay in their streams.

use std::collections::{BTreeMap, HashMap};

use roster_store::index::KeyRange;

use roster_proto::prefix_end;

/// A watcher's address: stream id and watch id.
pub type WatcherId = (u64, i64);

/// Where an id sits in the index list its range put it in.
pub type Slot = u32;

/// Watcher ids by what they watch.
#[derive(Default)]
pub struct WatchIndex {
    exact: HashMap<Vec<u8>, Vec<WatcherId>>,
    prefixes: HashMap<Vec<u8>, Vec<WatcherId>>,
    /// Prefix lengths in use, with how many prefixes have each.
    prefix_lens: BTreeMap<usize, usize>,
    others: Vec<(KeyRange, WatcherId)>,
    /// Ids held, over all lists.
    len: usize,
}

/// The prefix a range stands for, if it is one.
fn as_prefix(range: &KeyRange) -> Option<&[u8]> {
    match range {
        KeyRange::Span(start, Some(end)) if *end == prefix_end(start) => Some(start.as_slice()),
        _ => None,
    }
}

/// Takes the entry that `is_id` picks, expected at `slot`, out of `list`,
/// moving the last entry into its place. Answers `None` if it is not there,
/// else where the moved entry now is, if one moved. A slot that does not
/// hold the entry would be a bug in the hub's bookkeeping: then it is
/// looked for, so that the index stays right even so.
fn take<T>(list: &mut Vec<T>, slot: Slot, is_id: impl Fn(&T) -> bool) -> Option<Option<usize>> {
    let mut at = slot as usize;
    if !list.get(at).is_some_and(&is_id) {
        debug_assert!(false, "an index entry is not at its slot {slot}");
        at = list.iter().position(&is_id)?;
    }
    list.swap_remove(at);
    Some((at < list.len()).then_some(at))
}

/// Appends `id` to `list`; answers its slot.
fn push(list: &mut Vec<WatcherId>, id: WatcherId) -> Slot {
    list.push(id);
    (list.len() - 1) as Slot
}

impl WatchIndex {
    /// Records that watcher `id` watches `range`; answers its slot, which
    /// [`WatchIndex::remove`] needs back.
    pub fn insert(&mut self, range: &KeyRange, id: WatcherId) -> Slot {
        self.len += 1;
        if let KeyRange::Single(key) = range {
            // Most keys have one watcher: room for one, not the default four.
            let list = self
                .exact
                .entry(key.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            push(list, id)
        } else if let Some(prefix) = as_prefix(range) {
            let list = self
                .prefixes
                .entry(prefix.to_vec())
                .or_insert_with(|| Vec::with_capacity(1));
            if list.is_empty() {
                *self.prefix_lens.entry(prefix.len()).or_default() += 1;
            }
            push(list, id)
        } else {
            self.others.push((range.clone(), id));
            (self.others.len() - 1) as Slot
        }
    }

    /// Forgets that watcher `id`, at `slot`, watches `range`. Answers the
    /// watcher that moved into `slot` (its slot is now `slot`), if any.
    pub fn remove(
        &mut self,
        range: &KeyRange,
        id: WatcherId,
        slot: Slot,
    ) -> Option<(WatcherId, Slot)> {
        let moved = if let KeyRange::Single(key) = range {
            let list = self.exact.get_mut(key)?;
            let moved = take(list, slot, |w| *w == id)?.map(|at| (list[at], at));
            if list.is_empty() {
                self.exact.remove(key);
            }
            moved
        } else if let Some(prefix) = as_prefix(range) {
            let list = self.prefixes.get_mut(prefix)?;
            let moved = take(list, slot, |w| *w == id)?.map(|at| (list[at], at));
            if list.is_empty() {
                self.prefixes.remove(prefix);
                if let Some(n) = self.prefix_lens.get_mut(&prefix.len()) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefix_lens.remove(&prefix.len());
                    }
                }
            }
            moved
        } else {
            let list = &mut self.others;
            take(list, slot, |(_, w)| *w == id)?.map(|at| (list[at].1, at))
        };
        self.len -= 1;
        moved.map(|(w, at)| (w, at as Slot))
    }

    /// Ids held, over all lists.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    use std::collections::HashMap;

    use super::*;

    /// The index and every watcher's slot, kept as the hub keeps them.
    #[derive(Default)]
    struct Tracked {
        ix: WatchIndex,
        slots: HashMap<WatcherId, (KeyRange, Slot)>,
    }

    impl Tracked {
        fn insert(&mut self, range: &KeyRange, id: WatcherId) {
            let slot = self.ix.insert(range, id);
            self.slots.insert(id, (range.clone(), slot));
        }

        fn remove(&mut self, id: WatcherId) {
            let (range, slot) = self.slots.remove(&id).expect("inserted");
            if let Some((moved, at)) = self.ix.remove(&range, id, slot) {
                self.slots.get_mut(&moved).expect("moved one is there").1 = at;
            }
        }

        fn hits(&self, key: &[u8]) -> Vec<WatcherId> {
            let mut out = Vec::new();
            self.ix.matching(key, |id| out.push(id));
            out.sort();
            out
        }
    }

    #[test]
    fn finds_exactly_the_watchers_whose_range_holds_the_key() {
        let mut t = Tracked::default();
        let single = KeyRange::new(b"/svc/a/1", b"");
        let prefix = KeyRange::new(b"/svc/a/", b"/svc/a0");
        let all = KeyRange::new(b"\0", b"\0");
        let span = KeyRange::new(b"/svc/a/0", b"/svc/a/2");
        let other_prefix = KeyRange::new(b"/svc/b/", b"/svc/b0");
        t.insert(&single, (1, 1));
        t.insert(&prefix, (1, 2));
        t.insert(&all, (2, 1));
        t.insert(&span, (2, 2));
        t.insert(&other_prefix, (3, 1));
        assert_eq!(t.hits(b"/svc/a/1"), vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        assert_eq!(t.hits(b"/svc/a/3"), vec![(1, 2), (2, 1)]);
        assert_eq!(t.hits(b"/svc/b/x"), vec![(2, 1), (3, 1)]);
        assert_eq!(t.hits(b"/svc"), vec![(2, 1)]);

        t.remove((1, 2));
        t.remove((1, 1));
        t.remove((2, 2));
        assert_eq!(t.hits(b"/svc/a/1"), vec![(2, 1)]);
        assert!(t.ix.exact.is_empty());
        assert_eq!(t.ix.prefix_lens.len(), 1, "only /svc/b/ is left");
    }

    #[test]
    fn prefixes_of_all_0xff_and_empty_ranges_still_match() {
        let mut t = Tracked::default();
        // "\xff" has no prefix end: it is a from-key range, tested in full.
        t.insert(&KeyRange::new(b"\xff", b"\0"), (1, 1));
        // An empty prefix with end "\0" watches everything.
        t.insert(&KeyRange::new(b"", b"\0"), (1, 2));
        assert_eq!(t.hits(b"\xff\x01"), vec![(1, 1), (1, 2)]);
        assert_eq!(t.hits(b"a"), vec![(1, 2)]);
    }

    #[test]
    fn two_watchers_of_one_prefix_share_its_length() {
        let mut t = Tracked::default();
        let p = KeyRange::new(b"ab", b"ac");
        t.insert(&p, (1, 1));
        t.insert(&p, (2, 1));
        t.remove((1, 1));
        assert_eq!(t.hits(b"abc"), vec![(2, 1)]);
        t.remove((2, 1));
        assert!(t.hits(b"abc").is_empty());
        assert!(t.ix.prefix_lens.is_empty());
    }

    /// Many watchers of each kind of range, removed in an order unlike
    /// the one they came in: after every removal the slots the index gave
    /// back still find each watcher, and exactly the rest match.
    #[test]
    fn slots_stay_right_through_removals_in_any_order() {
        let ranges = [
            KeyRange::new(b"k", b""),
            KeyRange::new(b"k", b"l"),
            KeyRange::new(b"a", b"z"),
        ];
        let mut t = Tracked::default();
        let mut live = Vec::new();
        for n in 0..300i64 {
            let id = (n as u64 % 7, n);
            t.insert(&ranges[n as usize % 3], id);
            live.push(id);
        }
        // A fixed shuffle: every 7th, then every 7th of what is left...
        let mut order = Vec::new();
        let mut rest = live.clone();
        while !rest.is_empty() {
            let at = (order.len() * 7 + 3) % rest.len();
            order.push(rest.remove(at));
        }
        for id in order {
            t.remove(id);
            live.retain(|&w| w != id);
            let mut want = live.clone();
            want.sort();
            assert_eq!(t.hits(b"k"), want);
        }
        assert!(t.ix.exact.is_empty() && t.ix.prefixes.is_empty() && t.ix.others.is_empty());
        assert!(t.ix.is_empty());
    }
}
