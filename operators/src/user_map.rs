//! The detect operator's per-user entries, keyed by user id.

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use veer_models::Id;

use crate::state::TrackedUser;

/// A hash table of the tracked users' boxed entries, each of which contains its user's id.
///
/// A slot is one pointer and a control byte, where a map from `Id` to a box takes 24 bytes and
/// a control byte. A table of one million users has 2^21 slots, so the saving is about 32 MiB
/// there. A lookup compares the id inside the box, which the caller reads next anyway.
///
/// The serde form is a sequence of entries, which bincode encodes with the same bytes as a map
/// from id to the entry's other fields, because `TrackedUser::user` is the entry's first field.
pub struct UserMap<S> {
    table: HashTable<Box<TrackedUser<S>>>,
}

/// Hashes a user id as `FxHashMap` does.
fn hash_of(user: &Id) -> u64 {
    FxBuildHasher.hash_one(user)
}

impl<S> Default for UserMap<S> {
    fn default() -> Self {
        UserMap {
            table: HashTable::new(),
        }
    }
}

impl<S> UserMap<S> {
    /// Returns the entry of `user`, if present.
    pub fn get(&self, user: &Id) -> Option<&TrackedUser<S>> {
        self.table
            .find(hash_of(user), |tracked| tracked.user == *user)
            .map(|tracked| &**tracked)
    }

    /// Returns the entry of `user` mutably, if present.
    pub fn get_mut(&mut self, user: &Id) -> Option<&mut TrackedUser<S>> {
        self.table
            .find_mut(hash_of(user), |tracked| tracked.user == *user)
            .map(|tracked| &mut **tracked)
    }

    /// Returns the entry of `user`, inserting the one that `create` returns when it is missing.
    /// The created entry must be `user`'s.
    pub fn get_or_insert_with(
        &mut self,
        user: &Id,
        create: impl FnOnce() -> Box<TrackedUser<S>>,
    ) -> &mut TrackedUser<S> {
        let entry = self.table.entry(
            hash_of(user),
            |tracked| tracked.user == *user,
            |tracked| hash_of(&tracked.user),
        );
        let tracked = entry
            .or_insert_with(|| {
                let created = create();
                debug_assert!(
                    created.user == *user,
                    "an entry is stored under its own user"
                );
                created
            })
            .into_mut();
        &mut **tracked
    }

    /// Inserts `tracked` under its user, replacing any entry of the same user.
    pub fn insert(&mut self, tracked: Box<TrackedUser<S>>) {
        let hash = hash_of(&tracked.user);
        match self.table.find_mut(hash, |old| old.user == tracked.user) {
            Some(old) => *old = tracked,
            None => {
                self.table
                    .insert_unique(hash, tracked, |entry| hash_of(&entry.user));
            }
        }
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Returns whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Iterates over the entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TrackedUser<S>> {
        self.table.iter().map(|tracked| &**tracked)
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&TrackedUser<S>) -> bool) {
        self.table.retain(|tracked| keep(tracked));
    }

    /// Removes every entry and returns them, in no particular order.
    pub fn drain(&mut self) -> impl Iterator<Item = Box<TrackedUser<S>>> + '_ {
        self.table.drain()
    }
}

impl<S: fmt::Debug> fmt::Debug for UserMap<S> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

impl<S: Serialize> Serialize for UserMap<S> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de, S: Deserialize<'de>> Deserialize<'de> for UserMap<S> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        let entries = Vec::<Box<TrackedUser<S>>>::deserialize(deserializer)?;
        let mut map = UserMap::default();
        for tracked in entries {
            map.insert(tracked);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: u64, state: u32) -> Box<TrackedUser<u32>> {
        Box::new(TrackedUser {
            user: Id::from(user),
            last_event_ms: 0,
            state,
            last_alert: None,
        })
    }

    #[test]
    fn lookups_find_inserted_users() {
        let mut map = UserMap::default();
        for user in 0..1000u64 {
            map.insert(entry(user, user as u32));
        }
        map.insert(entry(7, 70));

        assert_eq!(map.len(), 1000);
        assert_eq!(
            map.get(&Id::from(7u64)).map(|tracked| tracked.state),
            Some(70)
        );
        assert_eq!(
            map.get(&Id::from(999u64)).map(|tracked| tracked.state),
            Some(999)
        );
        assert!(map.get(&Id::from(1000u64)).is_none());
        assert!(
            map.get(&Id::text("7")).is_none(),
            "a text id differs from the integer"
        );
    }

    #[test]
    fn get_or_insert_keeps_existing_entry() {
        let mut map = UserMap::default();
        map.insert(entry(3, 30));

        let existing = map.get_or_insert_with(&Id::from(3u64), || entry(3, 99));
        assert_eq!(existing.state, 30);
        let created = map.get_or_insert_with(&Id::from(4u64), || entry(4, 40));
        assert_eq!(created.state, 40);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn retain_and_drain_remove_entries() {
        let mut map = UserMap::default();
        for user in 0..10u64 {
            map.insert(entry(user, user as u32));
        }
        map.retain(|tracked| tracked.state % 2 == 0);

        assert_eq!(map.len(), 5);
        assert!(map.get(&Id::from(3u64)).is_none());
        let mut drained: Vec<u32> = map.drain().map(|tracked| tracked.state).collect();
        drained.sort_unstable();
        assert_eq!(drained, vec![0, 2, 4, 6, 8]);
        assert!(map.is_empty());
    }

    #[test]
    fn serde_round_trip_keeps_entries() {
        let mut map = UserMap::default();
        map.insert(entry(5, 50));

        let json = serde_json::to_value(&map).expect("the map encodes");
        let user = serde_json::to_value(Id::from(5u64)).expect("the id encodes");
        assert_eq!(json[0]["user"], user);
        assert_eq!(json[0]["state"], 50);
        let restored: UserMap<u32> = serde_json::from_value(json).expect("the map decodes");
        assert_eq!(restored.len(), 1);
        assert_eq!(
            restored.get(&Id::from(5u64)).map(|tracked| tracked.state),
            Some(50)
        );
    }
}
