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
}

/// Returns whether `group` is the learned group named by `category` itself.
fn is_own_group(category: &Id, group: &GroupKey) -> bool {
    matches!(group, GroupKey::Learned(name) if name == category)
}
