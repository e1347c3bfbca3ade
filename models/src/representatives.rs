//! The representative of each grouped leaf category, keyed so that a lookup is cheap.

use rustc_hash::FxHashMap as HashMap;

use crate::event::Id;

/// Group representative of each leaf category in a learned group of two or more.
///
/// The detector looks up each category of a user after every group map change, so this
/// lookup is on its hot path. Integer ids that fit in a `u64`, such as the category ids of the
/// Taobao files, are keyed by their value, so such a lookup hashes one `u64` and compares
/// integers instead of hashing and comparing an [`Id`]. Other ids are keyed by [`Id`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Representatives {
    narrow: HashMap<u64, Id>,
    other: HashMap<Id, Id>,
}

impl Representatives {
    /// Returns the representative of `leaf`, or `None` when it is in no group of two or more.
    pub(crate) fn get(&self, leaf: &Id) -> Option<&Id> {
        match leaf.as_u64() {
            Some(value) => self.narrow.get(&value),
            None => self.other.get(leaf),
        }
    }

    /// Sets the representative of `leaf`.
    pub(crate) fn insert(&mut self, leaf: Id, representative: Id) {
        match leaf.as_u64() {
            Some(value) => self.narrow.insert(value, representative),
            None => self.other.insert(leaf, representative),
        };
    }

    /// Removes `leaf`, which has left its group.
    pub(crate) fn remove(&mut self, leaf: &Id) {
        match leaf.as_u64() {
            Some(value) => self.narrow.remove(&value),
            None => self.other.remove(leaf),
        };
    }

    /// Returns the number of grouped leaf categories.
    pub(crate) fn len(&self) -> usize {
        self.narrow.len() + self.other.len()
    }

    /// Returns every (leaf, representative) pair, in no particular order.
    pub(crate) fn to_pairs(&self) -> Vec<(Id, Id)> {
        let narrow = self
            .narrow
            .iter()
            .map(|(leaf, representative)| (Id::from(*leaf), representative.clone()));
        let other = self
            .other
            .iter()
            .map(|(leaf, representative)| (leaf.clone(), representative.clone()));
        narrow.chain(other).collect()
    }
}

impl FromIterator<(Id, Id)> for Representatives {
    fn from_iter<I: IntoIterator<Item = (Id, Id)>>(pairs: I) -> Self {
        let mut map = Representatives::default();
        for (leaf, representative) in pairs {
            map.insert(leaf, representative);
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
        let mut map: Representatives = [
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
