//! A map stored as a vector sorted by key, for the few entries a single user has.
//!
//! A hash map of a handful of entries costs a control-byte array and at least four buckets on
//! the heap plus 32 bytes inline. This map costs 16 bytes inline and exactly one slot per
//! entry, in a boxed slice that is reallocated on each new key, because a user adds a new
//! key rarely. Lookups are binary searches and inserts shift the tail, so it suits maps of
//! tens to a few hundred entries.

use serde::{Deserialize, Serialize};

/// A map from `K` to `V` kept as a vector sorted by key, iterated in key order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<(K, V)>", into = "Vec<(K, V)>")]
#[serde(bound(
    serialize = "K: Serialize + Clone, V: Serialize + Clone",
    deserialize = "K: Deserialize<'de> + Ord, V: Deserialize<'de>"
))]
pub struct SortedVecMap<K, V> {
    entries: Box<[(K, V)]>,
}

impl<K, V> Default for SortedVecMap<K, V> {
    fn default() -> Self {
        SortedVecMap {
            entries: Box::default(),
        }
    }
}

impl<K: Ord, V> SortedVecMap<K, V> {
    /// Returns the value of `key`, if present.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries
            .binary_search_by(|entry| entry.0.cmp(key))
            .ok()
            .map(|index| &self.entries[index].1)
    }

    /// Returns the value of `key`, inserting `V::default()` first when the key is missing.
    pub fn entry_or_default(&mut self, key: &K) -> &mut V
    where
        K: Clone,
        V: Default,
    {
        let index = match self.entries.binary_search_by(|entry| entry.0.cmp(key)) {
            Ok(index) => index,
            Err(index) => {
                self.insert_at(index, (key.clone(), V::default()));
                index
            }
        };
        &mut self.entries[index].1
    }

    /// Sets the value of `key`, replacing any previous one.
    pub fn insert(&mut self, key: K, value: V) {
        match self.entries.binary_search_by(|entry| entry.0.cmp(&key)) {
            Ok(index) => self.entries[index].1 = value,
            Err(index) => self.insert_at(index, (key, value)),
        }
    }

    /// Inserts `entry` at `index`, growing the slice by exactly one slot.
    fn insert_at(&mut self, index: usize, entry: (K, V)) {
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        entries.reserve_exact(1);
        entries.insert(index, entry);
        // The capacity equals the length here, so the conversion does not reallocate.
        self.entries = entries.into_boxed_slice();
    }
}

impl<K, V> SortedVecMap<K, V> {
    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates over the entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(key, value)| (key, value))
    }

    /// Iterates over the values in key order, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, value)| value)
    }

    /// Keeps only the entries for which `keep` returns true, and frees the unused slots.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        entries.retain(|(key, value)| keep(key, value));
        self.entries = entries.into_boxed_slice();
    }

    /// Removes every entry and frees the slice.
    pub fn clear(&mut self) {
        self.entries = Box::default();
    }

    /// Makes the map contain exactly `entries`, which must be sorted by key with each key
    /// once, and leaves `entries` empty with its capacity kept.
    ///
    /// When the map already has exactly those keys, only the values are copied, so the
    /// slice is neither allocated nor freed. Otherwise the map gets a new slice of exactly
    /// `entries.len()` slots.
    pub fn assign_sorted(&mut self, entries: &mut Vec<(K, V)>)
    where
        K: PartialEq,
    {
        self.assign_sorted_by(entries, |new, kept| new == kept, |key| key);
    }

    /// Makes the map contain `entries` with each key converted by `to_key`, as
    /// [`SortedVecMap::assign_sorted`] does. `entries` must be sorted by their converted keys
    /// with each key once, and `same` must return whether an entry's key converts to a kept
    /// key. Keys are converted only when the set of keys changes.
    pub fn assign_sorted_by<E>(
        &mut self,
        entries: &mut Vec<(E, V)>,
        same: impl Fn(&E, &K) -> bool,
        to_key: impl Fn(E) -> K,
    ) where
        K: PartialEq,
    {
        let same_keys = self.entries.len() == entries.len()
            && self
                .entries
                .iter()
                .zip(entries.iter())
                .all(|(kept, new)| same(&new.0, &kept.0));
        if same_keys {
            for (kept, (_, value)) in self.entries.iter_mut().zip(entries.drain(..)) {
                kept.1 = value;
            }
        } else {
            // `drain` reports its exact length, so the collected vector has no spare slot and
            // the conversion to a boxed slice does not reallocate.
            let exact: Vec<(K, V)> = entries
                .drain(..)
                .map(|(key, value)| (to_key(key), value))
                .collect();
            debug_assert!(
                exact.windows(2).all(|pair| pair[0].0 != pair[1].0),
                "entries must contain each key once"
            );
            self.entries = exact.into_boxed_slice();
        }
    }
}

impl<K: Ord, V> From<Vec<(K, V)>> for SortedVecMap<K, V> {
    /// Builds a map from entries in any order. Of entries with equal keys, the last one stays.
    fn from(mut entries: Vec<(K, V)>) -> Self {
        // A stable sort keeps equal keys in input order, so the dedup below can keep the last.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.reverse();
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        entries.reverse();
        SortedVecMap {
            entries: entries.into_boxed_slice(),
        }
    }
}

impl<K: Ord, V> SortedVecMap<K, V> {
    /// Builds a map from entries already sorted by key with no key twice, without sorting
    /// them again.
    ///
    /// # Panics
    ///
    /// In debug builds, if the keys are not strictly increasing.
    pub fn from_sorted(entries: Vec<(K, V)>) -> Self {
        debug_assert!(
            entries.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "entries must be sorted by key, each key once"
        );
        SortedVecMap {
            entries: entries.into_boxed_slice(),
        }
    }
}

/// Sorts `entries` stably by key and replaces each run of equal keys with one entry whose
/// value is the sum of the run's values, added in input order.
pub fn sum_by_key<K: Ord, V: std::ops::AddAssign + Copy>(entries: &mut Vec<(K, V)>) {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 += later.1;
        }
        same
    });
}

impl<K: Clone, V: Clone> From<SortedVecMap<K, V>> for Vec<(K, V)> {
    fn from(map: SortedVecMap<K, V>) -> Self {
        map.entries.into_vec()
    }
}

/// Adds `value` to the entry of `key` in `entries`, which is sorted by key with each key once,
/// and inserts a new entry in key order when `key` is missing.
///
/// Calling it for a sequence of entries gives the same entries, bit for bit, as
/// [`sum_by_key`] on that sequence: each key's sum starts at its first value and adds the later
/// ones in call order. A key above the last entry is appended without a search, so keys that
/// arrive mostly in order cost about one comparison each.
pub fn add_in_key_order<K: Ord, V: std::ops::AddAssign>(
    entries: &mut Vec<(K, V)>,
    key: K,
    value: V,
) {
    if entries.last().is_none_or(|last| last.0 < key) {
        entries.push((key, value));
        return;
    }
    match entries.binary_search_by(|entry| entry.0.cmp(&key)) {
        Ok(index) => entries[index].1 += value,
        Err(index) => entries.insert(index, (key, value)),
    }
}

/// A [`SortedVecMap`] that keeps a map of one entry inline, with no heap chunk.
///
/// A map that grows by one slot per new key frees its previous slice on each growth, and only
/// a request of the same size can reuse that chunk. Most users' first category weight is
/// followed by a second soon after, so without the inline entry one freed 32-byte glibc chunk
/// per user stays unused. With `Id` keys and `f64` values the map is 24 bytes inline, 8 more
/// than a `SortedVecMap`, because the inline key's tag also marks which form is in use. Its
/// serde form is that of a `SortedVecMap`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<(K, V)>", into = "Vec<(K, V)>")]
#[serde(bound(
    serialize = "K: Serialize + Clone, V: Serialize + Clone",
    deserialize = "K: Deserialize<'de> + Ord, V: Deserialize<'de>"
))]
pub struct InlineOneMap<K, V>(Slots<K, V>);

/// The storage of an [`InlineOneMap`]. `Many` contains zero or at least two entries.
#[derive(Clone, Debug, PartialEq)]
enum Slots<K, V> {
    One((K, V)),
    Many(SortedVecMap<K, V>),
}

impl<K, V> Default for InlineOneMap<K, V> {
    fn default() -> Self {
        InlineOneMap(Slots::Many(SortedVecMap::default()))
    }
}

impl<K, V> InlineOneMap<K, V> {
    fn as_slice(&self) -> &[(K, V)] {
        match &self.0 {
            Slots::One(entry) => std::slice::from_ref(entry),
            Slots::Many(map) => &map.entries,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [(K, V)] {
        match &mut self.0 {
            Slots::One(entry) => std::slice::from_mut(entry),
            Slots::Many(map) => &mut map.entries,
        }
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Returns whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Iterates over the entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.as_slice().iter().map(|(key, value)| (key, value))
    }

    /// Iterates over the values in key order, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.as_mut_slice().iter_mut().map(|(_, value)| value)
    }

    /// Keeps only the entries for which `keep` returns true, and frees the unused slots.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        match &mut self.0 {
            Slots::One((key, value)) => {
                if !keep(key, value) {
                    *self = InlineOneMap::default();
                }
            }
            Slots::Many(map) => {
                map.retain(keep);
                if map.len() == 1 {
                    let entries = std::mem::take(&mut map.entries).into_vec();
                    *self = InlineOneMap::from_entries(entries);
                }
            }
        }
    }

    /// Wraps entries already sorted by key with no key twice.
    fn from_entries(mut entries: Vec<(K, V)>) -> Self {
        if entries.len() == 1 {
            let entry = entries.pop().expect("one entry");
            return InlineOneMap(Slots::One(entry));
        }
        InlineOneMap(Slots::Many(SortedVecMap {
            entries: entries.into_boxed_slice(),
        }))
    }
}

impl<K: Ord, V> InlineOneMap<K, V> {
    /// Returns the value of `key`, if present.
    pub fn get(&self, key: &K) -> Option<&V> {
        let entries = self.as_slice();
        entries
            .binary_search_by(|entry| entry.0.cmp(key))
            .ok()
            .map(|index| &entries[index].1)
    }

    /// Returns the value of `key`, inserting `V::default()` first when the key is missing.
    pub fn entry_or_default(&mut self, key: &K) -> &mut V
    where
        K: Clone,
        V: Default,
    {
        let index = match self.as_slice().binary_search_by(|entry| entry.0.cmp(key)) {
            Ok(index) => index,
            Err(index) => {
                self.insert_at(index, (key.clone(), V::default()));
                index
            }
        };
        &mut self.as_mut_slice()[index].1
    }

    /// Inserts `entry` at `index`, inline into an empty map and otherwise into a slice of
    /// exactly the new length.
    fn insert_at(&mut self, index: usize, entry: (K, V)) {
        let slots = std::mem::replace(&mut self.0, Slots::Many(SortedVecMap::default()));
        self.0 = match slots {
            Slots::Many(map) if map.is_empty() => Slots::One(entry),
            Slots::Many(mut map) => {
                map.insert_at(index, entry);
                Slots::Many(map)
            }
            Slots::One(first) => {
                let mut entries = Vec::with_capacity(2);
                entries.push(first);
                entries.insert(index, entry);
                Slots::Many(SortedVecMap {
                    entries: entries.into_boxed_slice(),
                })
            }
        };
    }
}

impl<K: Ord, V> From<Vec<(K, V)>> for InlineOneMap<K, V> {
    /// Builds a map from entries in any order. Of entries with equal keys, the last one stays.
    fn from(entries: Vec<(K, V)>) -> Self {
        let map = SortedVecMap::from(entries);
        InlineOneMap::from_entries(map.entries.into_vec())
    }
}

impl<K: Clone, V: Clone> From<InlineOneMap<K, V>> for Vec<(K, V)> {
    fn from(map: InlineOneMap<K, V>) -> Self {
        match map.0 {
            Slots::One(entry) => vec![entry],
            Slots::Many(map) => map.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_sorted() {
        let mut map: SortedVecMap<u32, f64> = SortedVecMap::default();
        for key in [5, 1, 9, 3, 1] {
            *map.entry_or_default(&key) += 1.0;
        }
        let keys: Vec<u32> = map.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, vec![1, 3, 5, 9]);
        assert_eq!(map.get(&1), Some(&2.0));
        assert_eq!(map.get(&4), None);
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn assign_sorted_replaces_entries() {
        let mut map = SortedVecMap::from(vec![(1u32, 1.0), (4, 4.0)]);
        let kept_slice = map.entries.as_ptr();

        // The same keys: the values change in place.
        let mut entries = vec![(1, 10.0), (4, 40.0)];
        map.assign_sorted(&mut entries);
        assert_eq!(map.get(&1), Some(&10.0));
        assert_eq!(map.get(&4), Some(&40.0));
        assert_eq!(map.entries.as_ptr(), kept_slice);
        assert!(entries.is_empty());

        // Other keys: the map contains exactly the new entries.
        let mut entries = Vec::with_capacity(8);
        entries.extend([(2, 2.0), (4, 4.5), (7, 7.0)]);
        map.assign_sorted(&mut entries);
        let contents: Vec<(u32, f64)> = map.iter().map(|(key, value)| (*key, *value)).collect();
        assert_eq!(contents, vec![(2, 2.0), (4, 4.5), (7, 7.0)]);
        assert!(entries.is_empty());
        assert_eq!(entries.capacity(), 8);

        // No entries: the map becomes empty.
        map.assign_sorted(&mut entries);
        assert!(map.is_empty());
    }

    #[test]
    fn sum_by_key_adds_runs_in_input_order() {
        // 1e16 + 1.0 + 1.0 rounds to 1e16 when added in this order but not as 1e16 + 2.0,
        // so the sum shows the order of the additions.
        let mut entries = vec![(2, 1e16), (1, 5.0), (2, 1.0), (1, 1.0), (2, 1.0), (3, 0.5)];
        sum_by_key(&mut entries);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0], (1, 6.0));
        assert_eq!(entries[1], (2, 1e16));
        assert_eq!(entries[2], (3, 0.5));
    }

    #[test]
    fn add_in_key_order_matches_sum_by_key() {
        // Values of very different sizes, so that a different order of additions would show in
        // the sums' bits.
        let mut state: u64 = 7;
        let mut next = move |below: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % below
        };
        for round in 0..200 {
            let length = next(40) as usize;
            let entries: Vec<(u64, f64)> = (0..length)
                .map(|at| {
                    // Mostly rising keys, as a user's categories give, with some going back.
                    let key = if next(4) == 0 {
                        next(50)
                    } else {
                        at as u64 * 2
                    };
                    let value = 10f64.powi(next(32) as i32 - 16) * (1.0 + next(1000) as f64);
                    (key, value)
                })
                .collect();
            let mut expected = entries.clone();
            sum_by_key(&mut expected);
            let mut added = Vec::new();
            for (key, value) in entries {
                add_in_key_order(&mut added, key, value);
            }
            assert_eq!(added.len(), expected.len(), "round {round}");
            for (at, (got, want)) in added.iter().zip(&expected).enumerate() {
                assert_eq!(got.0, want.0, "round {round}, entry {at}");
                assert_eq!(
                    got.1.to_bits(),
                    want.1.to_bits(),
                    "round {round}, entry {at}"
                );
            }
        }
    }

    #[test]
    fn insert_replaces_value() {
        let mut map: SortedVecMap<u32, &str> = SortedVecMap::default();
        map.insert(2, "a");
        map.insert(2, "b");
        assert_eq!(map.get(&2), Some(&"b"));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn retain_drops_entries() {
        let mut map: SortedVecMap<u32, f64> = SortedVecMap::default();
        for key in 0..6 {
            map.insert(key, f64::from(key));
        }
        map.retain(|_, value| *value >= 3.0);
        let keys: Vec<u32> = map.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, vec![3, 4, 5]);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn from_unsorted_keeps_last_duplicate() {
        let map = SortedVecMap::from(vec![(3, "c"), (1, "a"), (3, "d"), (2, "b")]);
        let entries: Vec<(u32, &str)> = map.iter().map(|(key, value)| (*key, *value)).collect();
        assert_eq!(entries, vec![(1, "a"), (2, "b"), (3, "d")]);
    }

    #[test]
    fn serde_round_trip() {
        let mut map: SortedVecMap<u32, f64> = SortedVecMap::default();
        map.insert(7, 0.5);
        map.insert(2, 1.5);
        let json = serde_json::to_string(&map).expect("serialise");
        assert_eq!(json, "[[2,1.5],[7,0.5]]");
        let back: SortedVecMap<u32, f64> = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, map);
    }

    #[test]
    fn inline_map_keeps_one_entry_inline() {
        let mut map: InlineOneMap<u32, f64> = InlineOneMap::default();
        assert!(map.is_empty());
        *map.entry_or_default(&5) += 1.0;
        assert!(matches!(map.0, Slots::One(_)), "one entry is inline");
        *map.entry_or_default(&5) += 1.0;
        assert_eq!(map.get(&5), Some(&2.0));
        for key in [9, 1, 3] {
            *map.entry_or_default(&key) += 1.0;
        }
        let keys: Vec<u32> = map.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, vec![1, 3, 5, 9]);
        assert_eq!(map.len(), 4);
        assert_eq!(map.get(&4), None);
    }

    #[test]
    fn inline_map_inserts_before_inline_entry() {
        let mut map: InlineOneMap<u32, f64> = InlineOneMap::default();
        *map.entry_or_default(&5) += 1.0;
        *map.entry_or_default(&2) += 3.0;
        let entries: Vec<(u32, f64)> = map.iter().map(|(key, value)| (*key, *value)).collect();
        assert_eq!(entries, vec![(2, 3.0), (5, 1.0)]);
    }

    #[test]
    fn inline_map_retain_down_to_one_and_none() {
        let mut map: InlineOneMap<u32, f64> = InlineOneMap::from(vec![(1, 1.0), (2, 2.0)]);
        map.values_mut().for_each(|value| *value *= 2.0);
        map.retain(|_, value| *value > 3.0);
        assert!(
            matches!(map.0, Slots::One((2, _))),
            "the last entry moves inline"
        );
        assert_eq!(map.get(&2), Some(&4.0));
        map.retain(|_, _| false);
        assert!(map.is_empty());
    }

    #[test]
    fn inline_map_serde_matches_vec_map() {
        let pairs = vec![(7, 0.5), (2, 1.5)];
        for count in 0..=2 {
            let inline = InlineOneMap::from(pairs[..count].to_vec());
            let boxed = SortedVecMap::from(pairs[..count].to_vec());
            let json = serde_json::to_string(&inline).expect("serialise");
            assert_eq!(json, serde_json::to_string(&boxed).expect("serialise"));
            let back: InlineOneMap<u32, f64> = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, inline);
        }
    }
}
