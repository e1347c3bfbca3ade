//! A user's decayed interest weights per category and per group: the detector's reference.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

use crate::alert::CategoryShare;
use crate::event::Id;
use crate::groups::{GroupKey, GroupMap};
use crate::sorted_map::{add_in_key_order, InlineOneMap, SortedVecMap};

/// Decayed category weights, with the decay applied lazily through a shared scale.
///
/// The weights are in sorted vectors, not hash maps, because a user has few categories. No
/// float sum runs over them in map order, so the container does not change any result.
///
/// Most categories form no group with others, so each is the learned group of its own name.
/// While that is true for all of a user's categories, `groups` is `None` instead of a copy of
/// the category weights. The copy would be equal bit for bit, because each group sum is `0.0`
/// plus one category weight and both maps get the same additions and scalings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DecayedWeights {
    /// Weight per category. A single category is stored inline.
    categories: InlineOneMap<Id, f64>,
    /// Weight per group under the group map version `groups_version`, or `None` while each
    /// group is `GroupKey::Learned` of one category with that category's weight.
    groups: Option<SortedVecMap<GroupKey, f64>>,
    /// Low 32 bits of the group map version that `groups` follows. A user would have to miss
    /// exactly 2^32 group map changes (one per population window at most) for a stale
    /// version to match.
    groups_version: u32,
    total: f64,
    scale: f64,
    /// Events added, saturating at `u32::MAX`. The detector only compares it with a `u32`
    /// setting.
    pub(crate) events: u32,
}

impl DecayedWeights {
    pub(crate) fn decay(&mut self, factor: f64) {
        if self.scale == 0.0 {
            self.scale = 1.0;
        }
        self.scale *= factor;
        if self.scale < 1e-9 {
            // Fold the scale into the stored weights before it underflows.
            let scale = self.scale;
            self.categories
                .values_mut()
                .for_each(|weight| *weight *= scale);
            if let Some(groups) = &mut self.groups {
                groups.values_mut().for_each(|weight| *weight *= scale);
            }
            self.total *= scale;
            self.scale = 1.0;
            // Pruning drops categories but keeps their groups, so the groups stop being a copy.
            if self.categories.iter().any(|(_, weight)| *weight <= 1e-6) {
                self.materialize_groups();
            }
            self.categories.retain(|_, weight| *weight > 1e-6);
        }
    }

    pub(crate) fn add(&mut self, category: &Id, group: &GroupKey, weight: f64) {
        if self.scale == 0.0 {
            self.scale = 1.0;
        }
        let stored = weight / self.scale;
        if !is_own_group(category, group) {
            self.materialize_groups();
        }
        *self.categories.entry_or_default(category) += stored;
        if let Some(groups) = &mut self.groups {
            *groups.entry_or_default(group) += stored;
        }
        self.total += stored;
        self.events = self.events.saturating_add(1);
    }

    pub(crate) fn scale_all(&mut self, factor: f64) {
        self.scale = if self.scale == 0.0 {
            factor
        } else {
            self.scale * factor
        };
    }

    /// Stores the group weights explicitly, when they were a copy of the category weights.
    fn materialize_groups(&mut self) {
        if self.groups.is_none() {
            let copy: Vec<(GroupKey, f64)> = self
                .categories
                .iter()
                .map(|(category, weight)| (GroupKey::Learned(category.clone()), *weight))
                .collect();
            self.groups = Some(SortedVecMap::from(copy));
        }
    }

    /// Rebuilds the per-group weights when the group map has changed since the last call.
    pub(crate) fn sync_groups(&mut self, groups: &GroupMap, topics: Option<&HashMap<Id, Id>>) {
        let version = groups.version as u32;
        if self.groups_version == version {
            return;
        }
        self.groups_version = version;
        if topics.is_none() && self.rebuild_integer_groups(groups) {
            return;
        }
        let topic_of = |category: &Id| topics.and_then(|topics| topics.get(category));
        // The scan checks the categories up to the first one in a shared group without
        // building a group key for each.
        let first_shared = self
            .categories
            .iter()
            .position(|(category, _)| !groups.is_own_group(category, topic_of(category)));
        let Some(first_shared) = first_shared else {
            self.groups = None;
            return;
        };
        REBUILT_GROUPS.with_borrow_mut(|sums| {
            sums.clear();
            for (position, (category, weight)) in self.categories.iter().enumerate() {
                // The categories before `first_shared` are their own groups.
                let group = if position < first_shared {
                    GroupKey::Learned(category.clone())
                } else {
                    groups.group_of(category, topic_of(category))
                };
                // Sums in category order (the map's order), so that float results do not
                // depend on the order in which categories arrived. Weights are positive, so
                // starting a sum at the first weight gives the same bits as adding it to
                // 0.0. A group is named by its smallest category, so most groups arrive in
                // key order and are appended.
                add_in_key_order(sums, group, *weight);
            }
            // A rebuild that gives the same groups as the last one reuses their slice.
            self.groups
                .get_or_insert_with(SortedVecMap::default)
                .assign_sorted(sums);
        });
    }

    /// Rebuilds the per-group weights as [`DecayedWeights::sync_groups`] does when every
    /// category and every representative is an integer id that fits in a `u64`, which then
    /// keys the sums. Returns false, with the weights unchanged, for any other id.
    ///
    /// The `u64` values sort like the learned group keys they name, so the sums run in the
    /// same order and give the same bits as the rebuild over `GroupKey`s, without a key built,
    /// compared or dropped per category.
    fn rebuild_integer_groups(&mut self, groups: &GroupMap) -> bool {
        REBUILT_INTEGER_GROUPS.with_borrow_mut(|sums| {
            sums.clear();
            let mut any_shared = false;
            for (category, weight) in self.categories.iter() {
                let Some(leaf) = category.as_u64() else {
                    return false;
                };
                let Some(representative) = groups.learned_representative_u64(leaf) else {
                    return false;
                };
                any_shared |= representative != leaf;
                add_in_key_order(sums, representative, *weight);
            }
            if !any_shared {
                self.groups = None;
                return true;
            }
            self.groups
                .get_or_insert_with(SortedVecMap::default)
                .assign_sorted_by(
                    sums,
                    |representative, kept| {
                        matches!(kept, GroupKey::Learned(id) if id.as_u64() == Some(*representative))
                    },
                    |representative| GroupKey::Learned(Id::from(representative)),
                );
            true
        })
    }

    /// Returns the weight of `group`, 0 for a group the user has no weight in.
    fn group_weight(&self, group: &GroupKey) -> f64 {
        let weight = match (&self.groups, group) {
            (Some(groups), _) => groups.get(group),
            (None, GroupKey::Learned(category)) => self.categories.get(category),
            (None, GroupKey::Topic(_)) => None,
        };
        weight.copied().unwrap_or(0.0)
    }

    pub(crate) fn group_share(&self, group: &GroupKey) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        self.group_weight(group) / self.total
    }

    pub(crate) fn top_categories(&self, count: usize) -> Vec<CategoryShare> {
        if self.total <= 0.0 {
            return Vec::new();
        }
        // Largest share first, then the smaller id: a total order, since ids are unique.
        let ranks_before = |a: &(&Id, f64), b: &(&Id, f64)| {
            b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)) == std::cmp::Ordering::Less
        };
        // Profiles ask for the top few after every event, so keep only `count` entries
        // instead of sorting every category.
        let mut top: Vec<(&Id, f64)> = Vec::with_capacity(count + 1);
        for (category, weight) in self.categories.iter() {
            let entry = (category, *weight / self.total);
            let position = top.partition_point(|kept| ranks_before(kept, &entry));
            if position < count {
                top.insert(position, entry);
                top.truncate(count);
            }
        }
        top.into_iter()
            .map(|(category, share)| CategoryShare {
                category: category.clone(),
                share,
            })
            .collect()
    }

    pub(crate) fn group_distribution(&self) -> BTreeMap<GroupKey, f64> {
        let mut distribution = BTreeMap::new();
        if self.total <= 0.0 {
            return distribution;
        }
        match &self.groups {
            Some(groups) => {
                for (group, weight) in groups.iter() {
                    distribution.insert(group.clone(), weight / self.total);
                }
            }
            None => {
                for (category, weight) in self.categories.iter() {
                    let group = GroupKey::Learned(category.clone());
                    distribution.insert(group, weight / self.total);
                }
            }
        }
        distribution
    }
}

thread_local! {
    /// The group sums of the latest [`DecayedWeights::sync_groups`] rebuild on this thread,
    /// kept so that a rebuild allocates only when a user's set of groups changes.
    static REBUILT_GROUPS: RefCell<Vec<(GroupKey, f64)>> = const { RefCell::new(Vec::new()) };
    /// The sums of the latest [`DecayedWeights::rebuild_integer_groups`] on this thread, keyed
    /// by representative.
    static REBUILT_INTEGER_GROUPS: RefCell<Vec<(u64, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Returns whether `group` is the learned group named by `category` itself.
fn is_own_group(category: &Id, group: &GroupKey) -> bool {
    matches!(group, GroupKey::Learned(name) if name == category)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::groups::PopulationInfo;

    fn id(value: u64) -> Id {
        Id::from(value)
    }

    /// Returns weights with random additions to `categories`, in random order.
    fn weights_over(categories: &[Id], rng: &mut ChaCha8Rng) -> DecayedWeights {
        let mut weights = DecayedWeights::default();
        for _ in 0..200 {
            let category = &categories[rng.gen_range(0..categories.len())];
            weights.decay(0.99);
            let weight = [1.0, 2.0, 3.0][rng.gen_range(0..3)];
            weights.add(category, &GroupKey::Learned(category.clone()), weight);
        }
        weights
    }

    fn map_of(groups: Vec<(Id, Id)>) -> GroupMap {
        let mut map = GroupMap::default();
        map.apply(&PopulationInfo {
            window_end: 3_600_000,
            groups: Some(groups),
            trending: Vec::new(),
        });
        map
    }

    /// Returns the group weights with their bits, so that a comparison is exact.
    fn group_bits(weights: &DecayedWeights) -> Option<Vec<(GroupKey, u64)>> {
        let groups = weights.groups.as_ref()?;
        Some(
            groups
                .iter()
                .map(|(group, weight)| (group.clone(), weight.to_bits()))
                .collect(),
        )
    }

    /// Syncs two copies of `weights`, one through the integer rebuild and one through the
    /// rebuild over group keys (which an empty topic map selects), and checks that they agree
    /// bit for bit.
    fn assert_rebuilds_agree(weights: &DecayedWeights, map: &GroupMap) {
        let no_topics = HashMap::default();
        let mut integer = weights.clone();
        integer.sync_groups(map, None);
        let mut keyed = weights.clone();
        keyed.sync_groups(map, Some(&no_topics));
        assert_eq!(group_bits(&integer), group_bits(&keyed));
        assert_eq!(integer.groups_version, keyed.groups_version);
    }

    #[test]
    fn integer_rebuild_matches_keyed_rebuild() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let categories: Vec<Id> = (0..30).map(|at| id(1_000 + at * 7)).collect();
        for round in 0..20 {
            let mut weights = weights_over(&categories, &mut rng);
            // Leaves join the group of a random smaller id, a category of the user or not, so
            // groups interleave in category order.
            let mut groups = Vec::new();
            for (at, leaf) in categories.iter().enumerate() {
                if rng.gen_bool(0.6) {
                    let offset = if rng.gen_bool(0.5) { 3 } else { 0 };
                    let representative = id(1_000 + rng.gen_range(0..=at as u64) * 7 - offset);
                    groups.push((leaf.clone(), representative));
                }
            }
            let map = map_of(groups);
            assert_rebuilds_agree(&weights, &map);

            // The next version's rebuild starts from group weights that an event added to.
            weights.sync_groups(&map, None);
            let category = &categories[round % categories.len()];
            let group = map.group_of(category, None);
            weights.add(category, &group, 2.0);
            let mut next = map.clone();
            next.version += 1;
            assert_rebuilds_agree(&weights, &next);
        }
    }

    #[test]
    fn integer_rebuild_without_shared_groups_keeps_none() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let categories: Vec<Id> = (1..=5).map(id).collect();
        let mut weights = weights_over(&categories, &mut rng);
        let map = map_of(vec![(id(9), id(8)), (id(3), id(3))]);
        weights.sync_groups(&map, None);
        assert!(weights.groups.is_none());
        assert_eq!(weights.groups_version, 1);
    }

    #[test]
    fn rebuild_with_text_ids_uses_group_keys() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // A text category, and an integer leaf whose representative is text.
        let categories = vec![id(1), id(2), id(3), Id::text("shoes")];
        let weights = weights_over(&categories, &mut rng);
        let map = map_of(vec![(id(2), id(1)), (Id::text("shoes"), id(1))]);
        assert_rebuilds_agree(&weights, &map);
        let text_representative = map_of(vec![(id(2), Id::text("boots")), (id(3), id(1))]);
        assert_rebuilds_agree(&weights, &text_representative);
        let mut synced = weights.clone();
        synced.sync_groups(&text_representative, None);
        let groups = synced.groups.as_ref().expect("shared groups");
        assert!(groups.get(&GroupKey::Learned(Id::text("boots"))).is_some());
    }
}
