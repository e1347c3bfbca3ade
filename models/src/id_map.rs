//! A hash map keyed by [`Id`] that hashes integer ids as plain `u64` values.

use rustc_hash::FxHashMap as HashMap;

use crate::event::Id;

/// A map from [`Id`] to `V` for lookups on a hot path.
///
/// Integer ids that fit in a `u64`, such as the category ids of the Taobao files, are keyed by
/// their value, so such a lookup hashes one `u64` and compares integers instead of hashing and
/// comparing an [`Id`]. Other ids are keyed by [`Id`]. The iteration order is not that of a
/// `HashMap<Id, V>`, so no result may depend on it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IdMap<V> {
    narrow: HashMap<u64, V>,
    other: HashMap<Id, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            narrow: HashMap::default(),
            other: HashMap::default(),
        }
    }
}

impl<V> IdMap<V> {
    /// Returns the value of `key`, or `None` when the map has no entry for it.
    #[inline]
    pub(crate) fn get(&self, key: &Id) -> Option<&V> {
        match key.as_u64() {
            Some(value) => self.narrow.get(&value),
            None => self.other.get(key),
        }
    }

    /// Returns the value of the integer id `key`, as [`IdMap::get`] does for `Id::from(key)`.
    #[inline]
    pub(crate) fn get_u64(&self, key: u64) -> Option<&V> {
        self.narrow.get(&key)
    }

    /// Sets the value of `key`, replacing any previous one.
    pub(crate) fn insert(&mut self, key: Id, value: V) {
        match key.as_u64() {
            Some(narrow) => self.narrow.insert(narrow, value),
            None => self.other.insert(key, value),
        };
    }

    /// Removes the entry of `key`, if any.
    pub(crate) fn remove(&mut self, key: &Id) {
        match key.as_u64() {
            Some(value) => self.narrow.remove(&value),
            None => self.other.remove(key),
        };
    }

    /// Returns the number of entries.
    pub(crate) fn len(&self) -> usize {
        self.narrow.len() + self.other.len()
    }
}

impl<V: Clone> IdMap<V> {
    /// Returns every (key, value) pair, in no particular order.
    pub(crate) fn to_pairs(&self) -> Vec<(Id, V)> {
        let narrow = self
            .narrow
            .iter()
            .map(|(key, value)| (Id::from(*key), value.clone()));
        let other = self
            .other
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()));
        narrow.chain(other).collect()
    }
}

impl<V> FromIterator<(Id, V)> for IdMap<V> {
    fn from_iter<I: IntoIterator<Item = (Id, V)>>(pairs: I) -> Self {
        let mut map = IdMap::default();
        for (key, value) in pairs {
            map.insert(key, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_cover_every_id_form() {
        let wide = Id::int(u128::from(u64::MAX) + 5);
        let text = Id::text("shoes");
        let digits_as_text = Id::text("7");
        let mut map: IdMap<Id> = [
            (Id::from(7u64), Id::from(3u64)),
            (wide.clone(), Id::from(3u64)),
            (text.clone(), Id::text("boots")),
        ]
        .into_iter()
        .collect();

        assert_eq!(map.get(&Id::from(7u64)), Some(&Id::from(3u64)));
        assert_eq!(map.get(&wide), Some(&Id::from(3u64)));
        assert_eq!(map.get(&text), Some(&Id::text("boots")));
        // Text that reads as a number is another id than the number.
        assert_eq!(map.get(&digits_as_text), None);
        assert_eq!(map.get(&Id::from(8u64)), None);
        assert_eq!(map.len(), 3);

        map.remove(&Id::from(7u64));
        map.remove(&text);
        assert_eq!(map.get(&Id::from(7u64)), None);
        assert_eq!(map.get(&text), None);
        assert_eq!(map.to_pairs(), vec![(wide, Id::from(3u64))]);
    }
}
