//! The category co-occurrence graph behind the learned groups, indexed densely.
//!
//! Each category gets a `u32` index when it is first seen. Session counts, pair counts and
//! links are then vectors read by index. The work after each window (adding the window's pair
//! counts, refreshing the strongest partners of the categories it touched, rebuilding the
//! groups) therefore looks up an [`Id`] once per category and pair, not once per partner
//! visited. Indices follow the order in which hash maps yield new categories, which depends on
//! how the window counts were merged, so every result is ordered and tie-broken by [`Id`],
//! never by index.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::event::Id;
use crate::groups::{GroupConfig, GroupKey};
use crate::id_map::IdMap;

/// Session counts, pair counts and links of every category seen so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct CategoryGraph {
    /// Category of each index.
    ids: Vec<Id>,
    /// Every index, sorted by its category's id.
    by_id: Vec<u32>,
    index: IdMap<u32>,
    /// Sessions that touched each category.
    sessions: Vec<u64>,
    /// `1 / sqrt(sessions)` of each category, for the screen in
    /// [`CategoryGraph::offer_strong_partners`]. Checkpoints leave it out, because `sessions`
    /// determines it.
    inverse_sqrt_sessions: Vec<f64>,
    /// Partners of each category with the sessions shared with them, in both directions. The
    /// first `strong_partners[category]` entries share at least `min_pair_sessions`, so a
    /// link refresh reads only those. Counts only grow, so an entry moves there once.
    adjacency: Vec<Vec<(u32, u64)>>,
    strong_partners: Vec<u32>,
    /// Positions of a pair in the adjacency lists of its lower and its higher index, keyed
    /// by [`pair_key`].
    pair_slots: HashMap<u64, (u32, u32)>,
    /// The strongest partners of each category, strongest first, or empty when unlinked.
    links: Vec<Vec<u32>>,
    /// Categories whose links contain each category.
    linked_by: Vec<Vec<u32>>,
    /// Upper bound on the association of each category with every strong partner outside its
    /// links, set by its last full ranking, or infinity when unknown. Associations only fall
    /// while a category's pair counts stay the same, so the bound stays valid until
    /// [`CategoryGraph::add_pair`] resets it. Checkpoints leave it out, so a restored graph
    /// ranks every category in full once.
    unlinked_bound: Vec<f64>,
    /// Categories seen since the links were last refreshed, with a flag per index.
    stale: Vec<u32>,
    is_stale: Vec<bool>,
    /// Group representative of each index (itself when in no group of two or more).
    representative: Vec<u32>,
    /// Link refreshes that kept the links without a full ranking.
    #[cfg(test)]
    skipped_rankings: usize,
}

/// The graph in the shape that checkpoints store, keyed by id.
#[derive(Default)]
pub(crate) struct GraphMaps {
    pub sessions: HashMap<Id, u64>,
    pub adjacency: HashMap<Id, HashMap<Id, u64>>,
    pub links: HashMap<Id, Vec<Id>>,
    pub stale: HashSet<Id>,
}

fn pair_key(low: u32, high: u32) -> u64 {
    (u64::from(low) << 32) | u64::from(high)
}

/// Returns the cosine association of two categories: `shared / sqrt(own * other)`.
///
/// Every ranking computes it here, so that the same counts always give the same bits. It does
/// not rise when `own` or `other` grows.
#[inline]
fn association(shared: u64, own_sessions: u64, other_sessions: u64) -> f64 {
    shared as f64 / ((own_sessions * other_sessions) as f64).sqrt()
}

impl CategoryGraph {
    /// Returns the index of `category`, giving it the next index when it has none.
    ///
    /// `add_window` calls this for every category and pair of every window, and nearly every
    /// call finds an index, so the lookup is inlined and the insertion is not.
    #[inline]
    fn intern(&mut self, category: &Id) -> u32 {
        match self.index.get(category) {
            Some(at) => *at,
            None => self.insert_new(category),
        }
    }

    #[cold]
    #[inline(never)]
    fn insert_new(&mut self, category: &Id) -> u32 {
        let at = u32::try_from(self.ids.len()).expect("more than u32::MAX categories");
        let rank = self
            .by_id
            .partition_point(|other| self.ids[*other as usize] < *category);
        self.by_id.insert(rank, at);
        self.ids.push(category.clone());
        self.index.insert(category.clone(), at);
        self.sessions.push(0);
        self.inverse_sqrt_sessions.push(f64::INFINITY);
        self.adjacency.push(Vec::new());
        self.strong_partners.push(0);
        self.links.push(Vec::new());
        self.linked_by.push(Vec::new());
        self.unlinked_bound.push(f64::INFINITY);
        self.is_stale.push(false);
        self.representative.push(at);
        at
    }

    /// Adds sessions that touched `category` and marks it for the next link refresh.
    pub fn add_sessions(&mut self, category: &Id, count: u64) {
        let at = self.intern(category);
        self.set_sessions(at, self.sessions[at as usize] + count);
        self.mark_stale(at);
    }

    fn set_sessions(&mut self, at: u32, count: u64) {
        self.sessions[at as usize] = count;
        self.inverse_sqrt_sessions[at as usize] = 1.0 / (count as f64).sqrt();
    }

    fn mark_stale(&mut self, at: u32) {
        if !self.is_stale[at as usize] {
            self.is_stale[at as usize] = true;
            self.stale.push(at);
        }
    }

    /// Adds sessions shared by two categories. `strong_at` is the config's `min_pair_sessions`.
    pub fn add_pair(&mut self, left: &Id, right: &Id, count: u64, strong_at: u64) {
        let (left, right) = (self.intern(left), self.intern(right));
        let (low, high) = (left.min(right), left.max(right));
        // A pair count that grows can raise an association above the bound.
        self.unlinked_bound[low as usize] = f64::INFINITY;
        self.unlinked_bound[high as usize] = f64::INFINITY;
        let slots = match self.pair_slots.get(&pair_key(low, high)) {
            Some(slots) => *slots,
            None => {
                let slots = (
                    self.adjacency[low as usize].len() as u32,
                    self.adjacency[high as usize].len() as u32,
                );
                self.adjacency[low as usize].push((high, 0));
                self.adjacency[high as usize].push((low, 0));
                self.pair_slots.insert(pair_key(low, high), slots);
                slots
            }
        };
        let shared = &mut self.adjacency[low as usize][slots.0 as usize].1;
        let was_strong = *shared >= strong_at;
        *shared += count;
        let is_strong = *shared >= strong_at;
        self.adjacency[high as usize][slots.1 as usize].1 += count;
        if is_strong && !was_strong {
            let promoted = (self.promote(low, slots.0), self.promote(high, slots.1));
            self.pair_slots.insert(pair_key(low, high), promoted);
        }
    }

    /// Swaps the entry at `slot` of `category`'s adjacency list with the first weak entry,
    /// makes it strong and returns its new slot. The caller updates the promoted pair's
    /// slots; this updates those of the entry it swapped with.
    fn promote(&mut self, category: u32, slot: u32) -> u32 {
        let first_weak = self.strong_partners[category as usize];
        self.strong_partners[category as usize] += 1;
        if slot != first_weak {
            let list = &mut self.adjacency[category as usize];
            list.swap(slot as usize, first_weak as usize);
            let swapped = list[slot as usize].0;
            let key = pair_key(category.min(swapped), category.max(swapped));
            let slots = self
                .pair_slots
                .get_mut(&key)
                .expect("every adjacency entry has slots");
            if category < swapped {
                slots.0 = slot;
            } else {
                slots.1 = slot;
            }
        }
        first_weak
    }

    /// Refreshes the links of the stale categories and of the categories linked to one of
    /// them, whose association changed with the partner's session count. Returns whether any
    /// link changed.
    pub fn refresh_links(&mut self, config: &GroupConfig) -> bool {
        let stale = std::mem::take(&mut self.stale);
        let mut touched: Vec<u32> = Vec::with_capacity(stale.len());
        let mut is_touched = vec![false; self.ids.len()];
        for &at in &stale {
            self.is_stale[at as usize] = false;
            let linking = self.linked_by[at as usize].iter().copied();
            for category in std::iter::once(at).chain(linking) {
                if !is_touched[category as usize] {
                    is_touched[category as usize] = true;
                    touched.push(category);
                }
            }
        }
        // Links read only session and pair counts, never other links, so the order in which
        // categories are refreshed does not change the result. One ranking serves every
        // category, so a refresh allocates only for links that change.
        let mut top = TopPartners::new(config, &self.ids);
        let mut changed = false;
        for category in touched {
            top.clear();
            if self.rank_links_only(category, config, &mut top) {
                #[cfg(test)]
                {
                    self.skipped_rankings += 1;
                }
            } else {
                top.clear();
                let bound = self.offer_strong_partners(category, config, &mut top);
                self.unlinked_bound[category as usize] = bound;
            }
            if top
                .partners()
                .eq(self.links[category as usize].iter().copied())
            {
                continue;
            }
            changed = true;
            let partners: Vec<u32> = top.partners().collect();
            let previous = std::mem::replace(&mut self.links[category as usize], partners);
            let current = &self.links[category as usize];
            for partner in previous.iter().filter(|partner| !current.contains(partner)) {
                self.linked_by[*partner as usize].retain(|linking| *linking != category);
            }
            for partner in current.iter().filter(|partner| !previous.contains(partner)) {
                self.linked_by[*partner as usize].push(category);
            }
        }
        changed
    }

    /// Returns the categories that `category` co-occurs with most strongly, as
    /// [`CategoryGraph::offer_strong_partners`] ranks them.
    #[cfg(test)]
    fn strongest_partners(&self, category: u32, config: &GroupConfig) -> Vec<u32> {
        let mut top = TopPartners::new(config, &self.ids);
        self.offer_strong_partners(category, config, &mut top);
        top.into_partners()
    }

    /// Offers to `top`, which must be empty, the current links of `category` with their
    /// current associations, and returns whether they are its strongest partners. When it
    /// returns false, `top` must be cleared and [`CategoryGraph::offer_strong_partners`] run.
    ///
    /// The links are the strongest partners when the weakest of them is still stronger than
    /// the category's `unlinked_bound`, or, with fewer links than `links_per_category`, when
    /// the bound is below `min_association`. Associations are computed as in the full
    /// ranking, and the ranking's order and ties are kept, so skipping it changes no link.
    fn rank_links_only(&self, category: u32, config: &GroupConfig, top: &mut TopPartners) -> bool {
        let bound = self.unlinked_bound[category as usize];
        if bound == f64::INFINITY {
            return false;
        }
        let own_sessions = self.sessions[category as usize];
        for &partner in &self.links[category as usize] {
            let association = association(
                self.shared_sessions(category, partner),
                own_sessions,
                self.sessions[partner as usize],
            );
            // A link that falls below the threshold leaves room for other partners.
            if !(association >= config.min_association) || top.offer(association, partner).is_some()
            {
                return false;
            }
        }
        match top.weakest_if_full() {
            Some(weakest) => weakest > bound,
            None => bound < config.min_association,
        }
    }

    /// Returns the sessions shared by `category` and its strong partner `partner`.
    fn shared_sessions(&self, category: u32, partner: u32) -> u64 {
        let (low, high) = (category.min(partner), category.max(partner));
        let slots = self.pair_slots[&pair_key(low, high)];
        self.adjacency[low as usize][slots.0 as usize].1
    }

    /// Offers to `top`, which must be empty, the partners that `category` co-occurs with most
    /// strongly (cosine of session counts). `top` then keeps at most `links_per_category` of
    /// them, strongest first and ties by id. Returns an upper bound on the association of
    /// every strong partner that `top` does not keep, or infinity when the category cannot
    /// be linked.
    ///
    /// NOTE: links are refreshed only for categories seen in a window and for categories
    /// linked to one of those, so a link to a partner outside the current top few may lag. A
    /// full rebuild over every pair after every window cost more than all other work of the
    /// pipeline together.
    fn offer_strong_partners(
        &self,
        category: u32,
        config: &GroupConfig,
        top: &mut TopPartners,
    ) -> f64 {
        let floor = u64::from(config.min_sessions);
        let own_sessions = self.sessions[category as usize];
        if own_sessions < floor || config.links_per_category == 0 {
            return f64::INFINITY;
        }
        // The largest estimate and the largest association of the partners left out. The
        // comparisons are written so that a NaN is kept, and a NaN bound skips no ranking.
        let mut estimate_max = f64::NEG_INFINITY;
        let mut dropped_max = f64::NEG_INFINITY;
        // A running top few, so that a refresh neither collects nor selects among every
        // partner above the threshold.
        let own_scale = self.inverse_sqrt_sessions[category as usize];
        let mut screen = top.screen();
        let strong = self.strong_partners[category as usize] as usize;
        for &(other, shared) in &self.adjacency[category as usize][..strong] {
            // A division and a square root are slow next to a multiplication, so most partners
            // are ruled out by an estimate made of two multiplications.
            let estimate = shared as f64 * own_scale * self.inverse_sqrt_sessions[other as usize];
            if estimate < screen {
                if !(estimate <= estimate_max) {
                    estimate_max = estimate;
                }
                continue;
            }
            let other_sessions = self.sessions[other as usize];
            if other_sessions < floor {
                // The partner may reach the floor later, so it counts towards the bound.
                if !(estimate <= estimate_max) {
                    estimate_max = estimate;
                }
                continue;
            }
            let association = association(shared, own_sessions, other_sessions);
            if let Some(dropped) = top.offer(association, other) {
                if !(dropped <= dropped_max) {
                    dropped_max = dropped;
                }
            }
            screen = top.screen();
        }
        // The estimate is within about 1e-15 (relative) of the association, as for the screen.
        let bound = estimate_max * (1.0 + 1e-9);
        if bound.is_nan() || dropped_max.is_nan() {
            return f64::NAN;
        }
        bound.max(dropped_max)
    }

    /// Rebuilds the groups from the links and returns them as (leaf, representative) pairs
    /// for components of two or more, sorted by leaf. The representative is the smallest id.
    pub fn build_groups(&mut self) -> Vec<(Id, Id)> {
        let ids = &self.ids;
        // Sorted by id, because `by_id` is.
        let members: Vec<u32> = self
            .by_id
            .iter()
            .copied()
            .filter(|at| {
                !self.links[*at as usize].is_empty() || !self.linked_by[*at as usize].is_empty()
            })
            .collect();
        let mut position = vec![u32::MAX; ids.len()];
        for (at, member) in members.iter().enumerate() {
            position[*member as usize] = at as u32;
        }

        let mut parent: Vec<usize> = (0..members.len()).collect();
        for &from in &members {
            for &to in &self.links[from as usize] {
                union(
                    &mut parent,
                    position[from as usize] as usize,
                    position[to as usize] as usize,
                );
            }
        }
        // `union` keeps the smaller root and `members` is sorted by id, so each root is its
        // component's smallest id. Every parent is at most its child, so in one forward pass a
        // parent's entry already contains its root.
        for at in 0..parent.len() {
            parent[at] = parent[parent[at]];
        }
        for (at, representative) in self.representative.iter_mut().enumerate() {
            *representative = at as u32;
        }
        let mut groups = Vec::with_capacity(members.len());
        for at in 0..members.len() {
            let root = members[parent[at]];
            let leaf = members[at];
            self.representative[leaf as usize] = root;
            groups.push((ids[leaf as usize].clone(), ids[root as usize].clone()));
        }
        groups
    }

    /// Returns the group representative of `category`, or `category` itself when it is in
    /// no group of two or more, as of the last [`CategoryGraph::build_groups`].
    pub fn representative<'a>(&'a self, category: &'a Id) -> &'a Id {
        match self.index.get(category) {
            Some(at) => &self.ids[self.representative[*at as usize] as usize],
            None => category,
        }
    }

    /// Sums `counts` per learned group as of the last [`CategoryGraph::build_groups`] and
    /// returns the sums sorted by group, or `None` when a category has no index.
    ///
    /// The sums are kept per representative's index and read out in id order, so no group key
    /// is built per category and none is sorted.
    pub fn group_counts(&self, counts: &HashMap<Id, u32>) -> Option<Vec<(GroupKey, u64)>> {
        let mut sums: Vec<Option<u64>> = vec![None; self.ids.len()];
        for (category, count) in counts {
            let at = *self.index.get(category)?;
            let sum = &mut sums[self.representative[at as usize] as usize];
            *sum = Some(sum.unwrap_or(0) + u64::from(*count));
        }
        let grouped = self
            .by_id
            .iter()
            .filter_map(|&at| {
                let sum = sums[at as usize]?;
                Some((GroupKey::Learned(self.ids[at as usize].clone()), sum))
            })
            .collect();
        Some(grouped)
    }

    /// Sets the representatives from stored groups, as `build_groups` left them.
    pub fn restore_groups(&mut self, groups: &[(Id, Id)]) {
        for (leaf, representative) in groups {
            let leaf = self.intern(leaf);
            let representative = self.intern(representative);
            self.representative[leaf as usize] = representative;
        }
    }

    /// Converts the graph into the id-keyed maps that checkpoints store.
    pub fn to_maps(&self) -> GraphMaps {
        let mut maps = GraphMaps::default();
        for (at, id) in self.ids.iter().enumerate() {
            if self.sessions[at] > 0 {
                maps.sessions.insert(id.clone(), self.sessions[at]);
            }
            if !self.adjacency[at].is_empty() {
                let partners = self.adjacency[at]
                    .iter()
                    .map(|(other, shared)| (self.ids[*other as usize].clone(), *shared))
                    .collect();
                maps.adjacency.insert(id.clone(), partners);
            }
            if !self.links[at].is_empty() {
                let partners = self.links[at]
                    .iter()
                    .map(|other| self.ids[*other as usize].clone())
                    .collect();
                maps.links.insert(id.clone(), partners);
            }
        }
        maps.stale = self
            .stale
            .iter()
            .map(|at| self.ids[*at as usize].clone())
            .collect();
        maps
    }

    /// Builds the graph from the id-keyed maps that checkpoints store.
    /// `strong_at` is the config's `min_pair_sessions`.
    pub fn from_maps(maps: GraphMaps, strong_at: u64) -> Self {
        let mut graph = CategoryGraph::default();
        let mut sessions: Vec<(Id, u64)> = maps.sessions.into_iter().collect();
        sessions.sort_unstable();
        for (category, count) in sessions {
            let at = graph.intern(&category);
            graph.set_sessions(at, count);
        }

        let mut pairs: Vec<(Id, Id, u64)> = Vec::new();
        for (left, partners) in maps.adjacency {
            for (right, shared) in partners {
                if left < right {
                    pairs.push((left.clone(), right, shared));
                }
            }
        }
        pairs.sort_unstable();
        for (left, right, shared) in pairs {
            graph.add_pair(&left, &right, shared, strong_at);
        }

        let mut links: Vec<(Id, Vec<Id>)> = maps.links.into_iter().collect();
        links.sort_unstable();
        for (category, partners) in links {
            let category = graph.intern(&category);
            for partner in partners {
                let partner = graph.intern(&partner);
                graph.links[category as usize].push(partner);
                graph.linked_by[partner as usize].push(category);
            }
        }

        let mut stale: Vec<Id> = maps.stale.into_iter().collect();
        stale.sort_unstable();
        for category in stale {
            let at = graph.intern(&category);
            graph.mark_stale(at);
        }
        graph
    }
}

/// The strongest partners offered so far, at most `links_per_category`, sorted strongest
/// first with ties by id.
struct TopPartners<'a> {
    strongest: Vec<(f64, u32)>,
    keep: usize,
    min_association: f64,
    ids: &'a [Id],
}

impl<'a> TopPartners<'a> {
    fn new(config: &GroupConfig, ids: &'a [Id]) -> Self {
        TopPartners {
            strongest: Vec::with_capacity(config.links_per_category + 1),
            keep: config.links_per_category,
            min_association: config.min_association,
            ids,
        }
    }

    /// Removes every partner offered so far.
    fn clear(&mut self) {
        self.strongest.clear();
    }

    /// Returns whether `a` ranks before `b`: stronger, or as strong with the smaller id.
    #[inline]
    fn ranks_before(&self, a: (f64, u32), b: (f64, u32)) -> bool {
        b.0.total_cmp(&a.0)
            .then_with(|| self.ids[a.1 as usize].cmp(&self.ids[b.1 as usize]))
            .is_lt()
    }

    /// Returns a value below which an estimate of the association rules a partner out: the
    /// association that `offer` requires, lowered by a relative margin of 1e-9.
    ///
    /// The estimate `shared * (1 / sqrt(own)) * (1 / sqrt(other))` and the association
    /// `shared / sqrt(own * other)` are each within a few rounding steps (about 1e-15
    /// relative) of the exact quotient, so a partner whose estimate falls below this value
    /// would also be refused by `offer`. Returns minus infinity, which rules nothing out,
    /// when the required association is not positive.
    #[inline]
    fn screen(&self) -> f64 {
        let mut required = self.min_association;
        if self.strongest.len() == self.keep {
            if let Some(weakest) = self.strongest.last() {
                required = required.max(weakest.0);
            }
        }
        if required > 0.0 {
            required * (1.0 - 1e-9)
        } else {
            f64::NEG_INFINITY
        }
    }

    /// Offers a partner and returns the association of the partner left out, if any: this one,
    /// or the weakest kept so far when this one takes its place.
    #[inline]
    fn offer(&mut self, association: f64, partner: u32) -> Option<f64> {
        // Written so that a NaN association is left out.
        if !(association >= self.min_association) {
            return Some(association);
        }
        let entry = (association, partner);
        if self.strongest.len() == self.keep
            && !self.ranks_before(entry, self.strongest[self.keep - 1])
        {
            return Some(association);
        }
        let position = self
            .strongest
            .partition_point(|ranked| self.ranks_before(*ranked, entry));
        self.strongest.insert(position, entry);
        if self.strongest.len() > self.keep {
            return self.strongest.pop().map(|(dropped, _)| dropped);
        }
        None
    }

    /// Returns the association of the weakest partner kept when `links_per_category` are kept.
    fn weakest_if_full(&self) -> Option<f64> {
        if self.strongest.len() == self.keep {
            self.strongest.last().map(|(association, _)| *association)
        } else {
            None
        }
    }

    /// Iterates over the partners kept, strongest first.
    fn partners(&self) -> impl Iterator<Item = u32> + '_ {
        self.strongest.iter().map(|(_, partner)| *partner)
    }

    #[cfg(test)]
    fn into_partners(self) -> Vec<u32> {
        self.partners().collect()
    }
}

fn find(parent: &mut [usize], mut at: usize) -> usize {
    while parent[at] != at {
        parent[at] = parent[parent[at]];
        at = parent[at];
    }
    at
}

fn union(parent: &mut [usize], left: usize, right: usize) {
    let (left, right) = (find(parent, left), find(parent, right));
    if left != right {
        let (low, high) = if left < right {
            (left, right)
        } else {
            (right, left)
        };
        parent[high] = low;
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::groups::{PopulationDelta, PopulationModel};

    /// Random windows over 40 categories, with ids given out of order so that indices and ids
    /// sort differently.
    fn random_windows(seed: u64, windows: u64) -> Vec<PopulationDelta> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let category = |at: u64| Id::from((at * 7919) % 97);
        (1..=windows)
            .map(|window| {
                let mut delta = PopulationDelta {
                    window_end: window * 3_600_000,
                    ..Default::default()
                };
                for _ in 0..30 {
                    let visited: Vec<Id> = (0..rng.gen_range(1..5))
                        .map(|_| category(rng.gen_range(0..40)))
                        .collect();
                    for (at, leaf) in visited.iter().enumerate() {
                        if visited[..at].contains(leaf) {
                            continue;
                        }
                        *delta.sessions.entry(leaf.clone()).or_default() += 1;
                        *delta.events.entry(leaf.clone()).or_default() += 1;
                        for other in visited[..at].iter().filter(|other| *other != leaf) {
                            let pair = (
                                other.clone().min(leaf.clone()),
                                other.clone().max(leaf.clone()),
                            );
                            *delta.pairs.entry(pair).or_default() += 1;
                        }
                    }
                }
                delta
            })
            .collect()
    }

    fn check_slots(graph: &CategoryGraph, strong_at: u64) {
        for (category, list) in graph.adjacency.iter().enumerate() {
            let strong = graph.strong_partners[category] as usize;
            for (slot, (partner, shared)) in list.iter().enumerate() {
                assert_eq!(
                    slot < strong,
                    *shared >= strong_at,
                    "category index {category}"
                );
                let (low, high) = (
                    (category as u32).min(*partner),
                    (category as u32).max(*partner),
                );
                let slots = graph.pair_slots[&pair_key(low, high)];
                let own = if category as u32 == low {
                    slots.0
                } else {
                    slots.1
                };
                assert_eq!(own as usize, slot, "category index {category}");
            }
        }
    }

    #[test]
    fn strong_partners_and_slots_stay_consistent() {
        let mut model = PopulationModel::new(Default::default());
        for delta in random_windows(3, 60) {
            model.add_window(&delta);
            check_slots(&model.graph, u64::from(model.config().min_pair_sessions));
        }
    }

    #[test]
    fn groups_sorted_by_leaf() {
        let mut model = PopulationModel::new(Default::default());
        let mut grouped_windows = 0;
        for delta in random_windows(7, 40) {
            model.add_window(&delta);
            let graph = &mut model.graph;
            let ids_in_order: Vec<&Id> = graph
                .by_id
                .iter()
                .map(|at| &graph.ids[*at as usize])
                .collect();
            assert!(
                ids_in_order.windows(2).all(|pair| pair[0] < pair[1]),
                "indices out of id order after the window ending at {}",
                delta.window_end
            );
            let groups = graph.build_groups();
            grouped_windows += usize::from(!groups.is_empty());
            assert!(
                groups.windows(2).all(|pair| pair[0].0 < pair[1].0),
                "groups out of leaf order after the window ending at {}",
                delta.window_end
            );
        }
        assert!(
            grouped_windows > 20,
            "groups formed after {grouped_windows} of 40 windows"
        );
    }

    #[test]
    fn checkpoint_round_trip_changes_no_window() {
        // Refreshing links every third window leaves stale categories across a round trip.
        let config = GroupConfig {
            link_refresh_windows: 3,
            ..GroupConfig::default()
        };
        let mut continuous = PopulationModel::new(config.clone());
        let mut restored = PopulationModel::new(config);
        let mut grouped_windows = 0;
        for delta in random_windows(5, 60) {
            let bytes = bincode::serialize(&restored).expect("the model serializes");
            restored = bincode::deserialize(&bytes).expect("the model deserializes");
            assert_eq!(
                restored.add_window(&delta),
                continuous.add_window(&delta),
                "window ending at {}",
                delta.window_end
            );
            grouped_windows += usize::from(continuous.graph.build_groups().len() > 1);
        }
        assert_eq!(continuous.windows_seen(), 60);
        assert!(
            grouped_windows > 30,
            "groups formed after {grouped_windows} of 60 windows"
        );
    }

    #[test]
    fn skipped_rankings_match_full_rankings() {
        let configs = [
            GroupConfig::default(),
            GroupConfig {
                links_per_category: 1,
                min_association: 0.2,
                min_sessions: 1,
                ..GroupConfig::default()
            },
            GroupConfig {
                links_per_category: 5,
                min_association: 0.0,
                min_sessions: 6,
                ..GroupConfig::default()
            },
        ];
        for (seed, config) in configs.into_iter().enumerate() {
            // One model ranks every refreshed category in full, because its bounds are unknown.
            let mut skipping = PopulationModel::new(config.clone());
            let mut full = PopulationModel::new(config);
            let mut linked = 0;
            for delta in random_windows(seed as u64 + 20, 80) {
                full.graph.unlinked_bound.fill(f64::INFINITY);
                assert_eq!(
                    skipping.add_window(&delta),
                    full.add_window(&delta),
                    "config {seed}, window ending at {}",
                    delta.window_end
                );
                assert_eq!(
                    skipping.graph.links, full.graph.links,
                    "config {seed}, window ending at {}",
                    delta.window_end
                );
                linked += skipping
                    .graph
                    .links
                    .iter()
                    .filter(|links| !links.is_empty())
                    .count();
            }
            assert_eq!(full.graph.skipped_rankings, 0, "config {seed}");
            assert!(
                skipping.graph.skipped_rankings > 100,
                "config {seed}: {} rankings skipped",
                skipping.graph.skipped_rankings
            );
            assert!(
                linked > 100,
                "config {seed}: {linked} linked categories over all windows"
            );
        }
    }

    /// Returns the strongest partners of `category` from an association computed exactly for
    /// every strong partner, with no screen.
    fn partners_by_full_scan(
        graph: &CategoryGraph,
        category: u32,
        config: &GroupConfig,
    ) -> Vec<u32> {
        let floor = u64::from(config.min_sessions);
        let own_sessions = graph.sessions[category as usize];
        if own_sessions < floor || config.links_per_category == 0 {
            return Vec::new();
        }
        let mut top = TopPartners::new(config, &graph.ids);
        let strong = graph.strong_partners[category as usize] as usize;
        for &(other, shared) in &graph.adjacency[category as usize][..strong] {
            let other_sessions = graph.sessions[other as usize];
            if other_sessions >= floor {
                let association = shared as f64 / ((own_sessions * other_sessions) as f64).sqrt();
                top.offer(association, other);
            }
        }
        top.into_partners()
    }

    #[test]
    fn screened_partners_equal_a_full_scan() {
        for (links_per_category, min_association) in [(3, 0.1), (1, 0.3), (5, 0.0)] {
            let config = GroupConfig {
                links_per_category,
                min_association,
                min_sessions: 1,
                ..GroupConfig::default()
            };
            let mut model = PopulationModel::new(config.clone());
            let mut linked = 0;
            for delta in random_windows(11, 40) {
                model.add_window(&delta);
                let graph = &model.graph;
                for category in 0..graph.ids.len() as u32 {
                    let screened = graph.strongest_partners(category, &config);
                    linked += usize::from(!screened.is_empty());
                    assert_eq!(
                        screened,
                        partners_by_full_scan(graph, category, &config),
                        "category {:?}, window ending at {}",
                        graph.ids[category as usize],
                        delta.window_end
                    );
                }
            }
            assert!(linked > 50, "{linked} linked categories over all windows");
        }
    }

    #[test]
    fn top_partners_equal_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        // Ids out of index order, and few distinct associations, so that ties are common.
        let ids: Vec<Id> = (0..50u64).map(|at| Id::from((at * 7919) % 101)).collect();
        for keep in [1, 3, 5] {
            let config = GroupConfig {
                links_per_category: keep,
                min_association: 0.2,
                ..GroupConfig::default()
            };
            for _ in 0..200 {
                let offers: Vec<(f64, u32)> = (0..rng.gen_range(0..30))
                    .map(|_| {
                        (
                            f64::from(rng.gen_range(0..8u8)) / 8.0,
                            rng.gen_range(0..50u32),
                        )
                    })
                    .collect();
                let mut unique = offers.clone();
                unique.sort_by_key(|offer| offer.1);
                unique.dedup_by_key(|offer| offer.1);
                let mut top = TopPartners::new(&config, &ids);
                for (association, partner) in &unique {
                    top.offer(*association, *partner);
                }
                let mut expected: Vec<(f64, u32)> = unique
                    .into_iter()
                    .filter(|offer| offer.0 >= config.min_association)
                    .collect();
                expected.sort_by(|a, b| {
                    b.0.total_cmp(&a.0)
                        .then_with(|| ids[a.1 as usize].cmp(&ids[b.1 as usize]))
                });
                expected.truncate(keep);
                let expected: Vec<u32> = expected.into_iter().map(|offer| offer.1).collect();
                assert_eq!(top.into_partners(), expected, "offers {offers:?}");
            }
        }
    }
}
