//! Category groups learned from the population's sessions, and population interest trends.
//!
//! Real shoppers touch new leaf categories all the time, so a new leaf category is weak evidence
//! of a change of interest. Interest is stable at a coarser level: families of related
//! categories. Where the data has no category tree, veer learns such families from
//! co-occurrence: two categories that the same sessions visit together belong together.
//!
//! The learning is incremental and windowed. Each window (an hour of event time by default)
//! every worker counts, per leaf category, the sessions that touched it, and per pair of
//! categories the sessions that touched both. Those per-window [`PopulationDelta`]s are summed in
//! one place, and after each window a new [`GroupMap`] is derived: each category is linked to
//! the partner it co-occurs with most strongly (cosine of session counts), and the connected
//! components of those links are the groups. Because the deltas are summed in window order and
//! every tie is broken by id, the map is the same whatever the number of workers.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::category_graph::{CategoryGraph, GraphMaps};
use crate::event::{Event, Id};
use crate::id_map::IdMap;
use crate::session::{SessionMark, SessionRule};
use crate::sorted_map::sum_by_key;

/// The unit of interest that the detector compares over time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupKey {
    /// An upper-level category from the input's own category tree.
    Topic(Id),
    /// A learned group, named by its smallest leaf category.
    Learned(Id),
}

/// Per-window population counts from one worker, summed before groups are rebuilt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PopulationDelta {
    /// End of the window in Unix milliseconds (exclusive).
    pub window_end: u64,
    /// Sessions that touched each leaf category.
    pub sessions: HashMap<Id, u32>,
    /// Sessions that touched both categories of a pair, with the smaller id first.
    pub pairs: HashMap<(Id, Id), u32>,
    /// Interest-weighted events per leaf category, for population trends.
    pub events: HashMap<Id, u32>,
}

/// Numbers of entries in the maps of a [`PopulationDelta`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaSizes {
    pub sessions: usize,
    pub pairs: usize,
    pub events: usize,
}

impl PopulationDelta {
    /// Creates empty counts of the window that ends at `window_end` (Unix milliseconds), with
    /// room for `sizes` entries in each map.
    ///
    /// A map that grows from empty rehashes all its entries at each doubling of its capacity.
    /// Neighbouring windows usually count similar numbers of categories and pairs, so maps
    /// sized like the previous window's rarely grow. The capacity changes the maps' iteration
    /// order, which no count depends on.
    pub fn with_sizes(window_end: u64, sizes: DeltaSizes) -> Self {
        PopulationDelta {
            window_end,
            sessions: HashMap::with_capacity_and_hasher(sizes.sessions, Default::default()),
            pairs: HashMap::with_capacity_and_hasher(sizes.pairs, Default::default()),
            events: HashMap::with_capacity_and_hasher(sizes.events, Default::default()),
        }
    }

    /// Returns the number of entries in each map.
    pub fn sizes(&self) -> DeltaSizes {
        DeltaSizes {
            sessions: self.sessions.len(),
            pairs: self.pairs.len(),
            events: self.events.len(),
        }
    }

    /// Adds another worker's counts for the same window.
    pub fn merge(&mut self, other: PopulationDelta) {
        for (category, count) in other.sessions {
            *self.sessions.entry(category).or_default() += count;
        }
        for (pair, count) in other.pairs {
            *self.pairs.entry(pair).or_default() += count;
        }
        for (category, count) in other.events {
            *self.events.entry(category).or_default() += count;
        }
    }
}

/// Settings of group learning and population trends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Minimum sessions on a category before it is linked to a partner.
    pub min_sessions: u32,
    /// Minimum sessions shared by a pair before it can link two categories.
    pub min_pair_sessions: u32,
    /// Minimum cosine association (shared / sqrt(product of session counts)) for a link.
    pub min_association: f64,
    /// Strongest partners each category is linked to.
    pub links_per_category: usize,
    /// Windows between two refreshes of the category links (1: after every window).
    pub link_refresh_windows: u64,
    /// Number of recent windows summed for a group's current population share.
    pub trend_windows: usize,
    /// Current share over baseline share at which a group counts as trending.
    pub trend_ratio: f64,
    /// Minimum Poisson z-score of the recent count against the baseline expectation.
    pub trend_min_z: f64,
    /// Minimum interest-weighted events of a group in the recent windows to judge a trend.
    pub trend_min_events: u32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_sessions: 3,
            min_pair_sessions: 2,
            min_association: 0.1,
            links_per_category: 3,
            link_refresh_windows: 1,
            trend_windows: 6,
            trend_ratio: 2.5,
            trend_min_z: 4.0,
            trend_min_events: 50,
        }
    }
}

/// The current mapping from leaf categories to learned groups, and the trending groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PopulationInfo {
    /// End of the last window included, in Unix milliseconds.
    pub window_end: u64,
    /// Leaf category to group representative, only for categories in a group of two or more;
    /// `None` when the groups are the same as in the previous info.
    pub groups: Option<Vec<(Id, Id)>>,
    /// Groups whose recent population share is well above their long-run share, with the ratio.
    pub trending: Vec<(GroupKey, f64)>,
}

/// A lookup structure built from [`PopulationInfo`] on each worker.
///
/// # Examples
///
/// ```
/// use veer_models::{GroupKey, GroupMap, Id, PopulationInfo};
///
/// let mut map = GroupMap::default();
/// map.apply(&PopulationInfo {
///     window_end: 3_600_000,
///     groups: Some(vec![(Id::from(10u64), Id::from(10u64)), (Id::from(11u64), Id::from(10u64))]),
///     trending: vec![(GroupKey::Learned(Id::from(10u64)), 3.0)],
/// });
/// assert_eq!(map.group_of(&Id::from(11u64), None), GroupKey::Learned(Id::from(10u64)));
/// // A category in no learned group is a group of its own; an input topic wins.
/// assert_eq!(map.group_of(&Id::from(99u64), None), GroupKey::Learned(Id::from(99u64)));
/// let topic = Id::text("toys");
/// assert_eq!(map.group_of(&Id::from(11u64), Some(&topic)), GroupKey::Topic(topic.clone()));
/// assert_eq!(map.trend(&GroupKey::Learned(Id::from(10u64))), Some(3.0));
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "GroupMapRecord", into = "GroupMapRecord")]
pub struct GroupMap {
    representative: IdMap<Id>,
    trending: HashMap<GroupKey, f64>,
    /// Increases on every update, so that per-user caches can tell when to rebuild.
    pub version: u64,
    /// The groups of the latest update, sorted by leaf, for merging with the next update.
    /// Empty when that list was not sorted, and after a checkpoint restore, which does not
    /// store it because `representative` contains the same pairs.
    last_groups: Vec<(Id, Id)>,
}

/// [`GroupMap`] as checkpoints store it, with the representatives in one map keyed by [`Id`]:
/// the fields and types that the derived encoding of `GroupMap` had, so the format is
/// unchanged.
#[derive(Serialize, Deserialize)]
struct GroupMapRecord {
    representative: HashMap<Id, Id>,
    trending: HashMap<GroupKey, f64>,
    version: u64,
}

impl From<GroupMap> for GroupMapRecord {
    fn from(map: GroupMap) -> Self {
        GroupMapRecord {
            representative: map.representative.to_pairs().into_iter().collect(),
            trending: map.trending,
            version: map.version,
        }
    }
}

impl From<GroupMapRecord> for GroupMap {
    fn from(record: GroupMapRecord) -> Self {
        GroupMap {
            representative: record.representative.into_iter().collect(),
            trending: record.trending,
            version: record.version,
            last_groups: Vec::new(),
        }
    }
}

impl GroupMap {
    /// Applies `info`: new groups when it has them, and its trends. Infos must be applied in
    /// window order, because one without groups keeps the previous ones.
    pub fn apply(&mut self, info: &PopulationInfo) {
        if let Some(groups) = &info.groups {
            self.replace_groups(groups);
            self.version += 1;
        }
        self.trending = info.trending.iter().cloned().collect();
    }

    /// Makes the map contain exactly `groups`, as collecting them into a new map would.
    ///
    /// The population model sends every group after each window in which the groups change,
    /// sorted by leaf, and few entries differ from the last list. The new list is therefore
    /// merged with the last one, and only the leaves that joined, moved or left a group
    /// change the map. Without a last list (the first list, or after a checkpoint restore),
    /// or for a list not strictly sorted by leaf, the map is collected anew.
    fn replace_groups(&mut self, groups: &[(Id, Id)]) {
        let sorted = groups.windows(2).all(|pair| pair[0].0 < pair[1].0);
        if !sorted || self.last_groups.is_empty() {
            self.representative = groups.iter().cloned().collect();
        } else {
            self.apply_changes(groups);
        }
        self.last_groups = if sorted { groups.to_vec() } else { Vec::new() };
    }

    /// Changes the map from `last_groups` to `groups`, both sorted by leaf with each leaf once.
    fn apply_changes(&mut self, groups: &[(Id, Id)]) {
        let last = &self.last_groups;
        let (mut at_last, mut at_new) = (0, 0);
        while at_last < last.len() || at_new < groups.len() {
            let order = match (last.get(at_last), groups.get(at_new)) {
                (Some((left, _)), Some((joined, _))) => left.cmp(joined),
                (Some(_), None) => Ordering::Less,
                (None, _) => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    self.representative.remove(&last[at_last].0);
                    at_last += 1;
                }
                Ordering::Greater => {
                    let (leaf, representative) = &groups[at_new];
                    self.representative
                        .insert(leaf.clone(), representative.clone());
                    at_new += 1;
                }
                Ordering::Equal => {
                    let (leaf, representative) = &groups[at_new];
                    if last[at_last].1 != *representative {
                        self.representative
                            .insert(leaf.clone(), representative.clone());
                    }
                    at_last += 1;
                    at_new += 1;
                }
            }
        }
    }

    /// Returns the group of a leaf category, preferring the input's own topic when it has one.
    pub fn group_of(&self, category: &Id, topic: Option<&Id>) -> GroupKey {
        if let Some(topic) = topic {
            return GroupKey::Topic(topic.clone());
        }
        let representative = self.representative.get(category).unwrap_or(category);
        GroupKey::Learned(representative.clone())
    }

    /// Returns the representative of the integer leaf category `category` when it is in a
    /// group of two or more, as an integer, and `Some(category)` when it is a group of its own.
    /// Returns `None` for a representative that is not an integer id fitting in a `u64`.
    ///
    /// It serves callers that key groups by `u64`, for inputs without topics: the group is
    /// then `GroupKey::Learned` of the returned value, as [`GroupMap::group_of`] returns it.
    #[inline]
    pub(crate) fn learned_representative_u64(&self, category: u64) -> Option<u64> {
        match self.representative.get_u64(category) {
            Some(representative) => representative.as_u64(),
            None => Some(category),
        }
    }

    /// Returns whether the group of a leaf category is the learned group of its own name, as
    /// when `group_of(category, topic)` is `GroupKey::Learned(category)`.
    #[inline]
    pub fn is_own_group(&self, category: &Id, topic: Option<&Id>) -> bool {
        topic.is_none()
            && self
                .representative
                .get(category)
                .is_none_or(|representative| representative == category)
    }

    /// Returns the trend ratio of a group, or `None` when it is not trending.
    pub fn trend(&self, group: &GroupKey) -> Option<f64> {
        self.trending.get(group).copied()
    }

    /// Returns the number of leaf categories that belong to a group of two or more.
    pub fn grouped_categories(&self) -> usize {
        self.representative.len()
    }
}

/// Categories of one session kept for pair counting; later ones still count per category.
const SESSION_CATEGORIES: usize = 16;

/// The part of a user's session that co-occurrence counting needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct OpenSession {
    mark: SessionMark,
    /// The session's categories; most sessions visit one, which is stored inline.
    categories: SmallVec<[Id; 1]>,
}

/// Counts, for a stream of events in per-user time order, the sessions touching each category
/// and each pair of categories.
///
/// Sessions follow the [`SessionRule`]: a session ends after a gap, after its longest span,
/// or when the input's session id changes. Events without interest weight
/// (`remove_from_cart`) are ignored.
///
/// # Examples
///
/// ```
/// use veer_models::groups::SessionCounter;
/// use veer_models::session::SessionRule;
/// use veer_models::{Behavior, Event, Id, PopulationDelta};
///
/// let view = |user: u64, category: u64, ts: i64| {
///     Event::plain(ts * 1000, user, category, category * 100, Behavior::View)
/// };
/// let mut counter = SessionCounter::new(SessionRule::default());
/// let mut delta = PopulationDelta::default();
/// // One session visits 10 and 11 (10 twice); a second, 45 minutes later, visits 10 again.
/// for (category, ts) in [(10, 0), (11, 60), (10, 120), (10, 2_900)] {
///     counter.count(&view(1, category, ts), &mut delta);
/// }
/// assert_eq!(delta.sessions[&Id::from(10u64)], 2);
/// assert_eq!(delta.sessions[&Id::from(11u64)], 1);
/// assert_eq!(delta.pairs[&(Id::from(10u64), Id::from(11u64))], 1);
/// assert_eq!(delta.events[&Id::from(10u64)], 3);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionCounter {
    rule: SessionRule,
    sessions: HashMap<Id, OpenSession>,
    /// Event time of the latest [`SessionCounter::forget_closed_if_due`] that forgot, in Unix
    /// milliseconds. It is not stored in checkpoints, so a restored counter forgets at its first
    /// call.
    #[serde(skip, default = "never_forgotten")]
    forgotten_at_ms: i64,
}

/// Returns the forget time of a counter that has not forgotten yet.
fn never_forgotten() -> i64 {
    i64::MIN
}

impl SessionCounter {
    /// Creates a counter that splits sessions by `rule`.
    pub fn new(rule: SessionRule) -> Self {
        SessionCounter {
            rule,
            sessions: HashMap::default(),
            forgotten_at_ms: never_forgotten(),
        }
    }

    /// Adds one event to `delta`, which must be the delta of the event's window.
    pub fn count(&mut self, event: &Event, delta: &mut PopulationDelta) {
        if event.behavior.interest_weight() <= 0.0 {
            return;
        }
        *delta.events.entry(event.category.clone()).or_default() += 1;
        let ts = event.ts_secs();
        // A lookup first, so that the user's id is cloned only for a new entry.
        let session = match self.sessions.get_mut(&event.user) {
            Some(session) => session,
            None => self.sessions.entry(event.user.clone()).or_default(),
        };
        if self
            .rule
            .advance(&mut session.mark, ts, event.session.as_deref())
        {
            // A new session starts with inline storage again, whatever the last one needed.
            session.categories = SmallVec::new();
        }
        if session.categories.contains(&event.category) {
            return;
        }
        *delta.sessions.entry(event.category.clone()).or_default() += 1;
        if session.categories.len() >= SESSION_CATEGORIES {
            return;
        }
        for other in &session.categories {
            let pair = if *other < event.category {
                (other.clone(), event.category.clone())
            } else {
                (event.category.clone(), other.clone())
            };
            *delta.pairs.entry(pair).or_default() += 1;
        }
        // `push` doubles the capacity of a spilled list, so the list grows at most four times
        // up to `SESSION_CATEGORIES`, not once per category. The spare slots live only as long
        // as the open session, which a new session or `forget_closed` drops.
        session.categories.push(event.category.clone());
    }

    /// Returns the number of users with an open session.
    pub fn users(&self) -> usize {
        self.sessions.len()
    }

    /// Returns the rule that splits sessions.
    pub fn session_rule(&self) -> SessionRule {
        self.rule
    }

    /// Moves the open sessions of `other` into this counter; a user in both keeps `other`'s.
    pub fn absorb(&mut self, other: SessionCounter) {
        self.sessions.extend(other.sessions);
    }

    /// Keeps only the open sessions of users for which `keep` returns true.
    pub fn retain_users(&mut self, mut keep: impl FnMut(&Id) -> bool) {
        self.sessions.retain(|user, _| keep(user));
    }

    /// Forgets every session that an event at `now_ms` or later would close anyway, and
    /// returns how many were removed. Counts are unchanged.
    pub fn forget_closed(&mut self, now_ms: i64) -> usize {
        let before = self.sessions.len();
        let rule = self.rule;
        let now = now_ms.div_euclid(1000);
        self.sessions
            .retain(|_, session| !rule.has_ended(&session.mark, now));
        self.shrink_if_sparse();
        before - self.sessions.len()
    }

    /// Forgets the closed sessions as [`SessionCounter::forget_closed`] does, but only once
    /// event time `now_ms` is half a session gap past the latest forget. Returns how many
    /// sessions were removed.
    ///
    /// Every forget scans the whole table, so this method forgets at most once per half gap. The table then
    /// holds at most the users active in the last one and a half gaps.
    pub fn forget_closed_if_due(&mut self, now_ms: i64) -> usize {
        let every_ms = self.rule.gap_secs.saturating_mul(500).max(1);
        if now_ms.saturating_sub(self.forgotten_at_ms) < every_ms {
            return 0;
        }
        self.forgotten_at_ms = now_ms;
        self.forget_closed(now_ms)
    }

    /// Shrinks the table of open sessions when less than a quarter of its capacity is in use,
    /// so a burst of users does not pin its peak size for the rest of the run. It leaves room
    /// for twice the remaining sessions.
    fn shrink_if_sparse(&mut self) {
        let len = self.sessions.len();
        if len < self.sessions.capacity() / 4 {
            self.sessions.shrink_to(len * 2);
        }
    }
}

/// The population state kept in one place: cumulative co-occurrence and trend history.
///
/// # Examples
///
/// Four sessions that visit categories 10 and 11 together link them into one group, named by
/// its smallest category:
///
/// ```
/// use veer_models::groups::SessionCounter;
/// use veer_models::{Behavior, Event, GroupConfig, Id, PopulationDelta, PopulationModel};
///
/// let view = |user: u64, category: u64, ts: i64| {
///     Event::plain(ts * 1000, user, category, category * 100, Behavior::View)
/// };
/// let mut counter = SessionCounter::new(veer_models::session::SessionRule::default());
/// let mut delta = PopulationDelta { window_end: 3_600_000, ..Default::default() };
/// for user in 1..=4 {
///     counter.count(&view(user, 10, 0), &mut delta);
///     counter.count(&view(user, 11, 60), &mut delta);
/// }
/// counter.count(&view(9, 12, 0), &mut delta);
/// let mut model = PopulationModel::new(GroupConfig::default());
/// let info = model.add_window(&delta);
/// assert_eq!(info.window_end, 3_600_000);
/// let groups = info.groups.as_ref().expect("the first window sets the groups");
/// assert!(groups.contains(&(Id::from(11u64), Id::from(10u64))));
/// // Category 12 was seen in one session only, too few to link it.
/// assert!(groups.iter().all(|(leaf, _)| *leaf != Id::from(12u64)));
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "PopulationRecord", into = "PopulationRecord")]
pub struct PopulationModel {
    config: GroupConfig,
    pub(crate) graph: CategoryGraph,
    /// Interest-weighted events per group in the most recent windows, oldest first.
    recent: Vec<BTreeMap<GroupKey, u64>>,
    /// Sums of `recent` per group, updated as windows enter and leave it. A group leaves when
    /// its sum falls to zero. Checkpoints leave it out, because `recent` determines it.
    recent_sums: BTreeMap<GroupKey, u64>,
    /// Long-run events per group, with exponential decay per window.
    baseline: BTreeMap<GroupKey, f64>,
    baseline_total: f64,
    windows_seen: u64,
    current: PopulationInfo,
    /// The groups of the latest window, to send only when they change.
    groups: Vec<(Id, Id)>,
}

/// [`PopulationModel`] as checkpoints store it, with the co-occurrence graph keyed by id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PopulationRecord {
    config: GroupConfig,
    sessions: HashMap<Id, u64>,
    /// Sessions shared with each co-visited category, in both directions.
    adjacency: HashMap<Id, HashMap<Id, u64>>,
    /// The strongest partners of each category.
    links: HashMap<Id, Vec<Id>>,
    /// Categories seen since the links were last refreshed.
    stale: rustc_hash::FxHashSet<Id>,
    recent: Vec<BTreeMap<GroupKey, u64>>,
    baseline: BTreeMap<GroupKey, f64>,
    baseline_total: f64,
    windows_seen: u64,
    current: PopulationInfo,
    groups: Vec<(Id, Id)>,
}

impl From<PopulationModel> for PopulationRecord {
    fn from(model: PopulationModel) -> Self {
        let maps = model.graph.to_maps();
        PopulationRecord {
            config: model.config,
            sessions: maps.sessions,
            adjacency: maps.adjacency,
            links: maps.links,
            stale: maps.stale,
            recent: model.recent,
            baseline: model.baseline,
            baseline_total: model.baseline_total,
            windows_seen: model.windows_seen,
            current: model.current,
            groups: model.groups,
        }
    }
}

impl From<PopulationRecord> for PopulationModel {
    fn from(record: PopulationRecord) -> Self {
        let mut graph = CategoryGraph::from_maps(
            GraphMaps {
                sessions: record.sessions,
                adjacency: record.adjacency,
                links: record.links,
                stale: record.stale,
            },
            u64::from(record.config.min_pair_sessions),
        );
        graph.restore_groups(&record.groups);
        let mut recent_sums = BTreeMap::new();
        for window in &record.recent {
            add_counts(&mut recent_sums, window);
        }
        PopulationModel {
            config: record.config,
            graph,
            recent: record.recent,
            recent_sums,
            baseline: record.baseline,
            baseline_total: record.baseline_total,
            windows_seen: record.windows_seen,
            current: record.current,
            groups: record.groups,
        }
    }
}

/// Per-window decay of the long-run trend baseline (a half-life of about three days of
/// hourly windows).
const BASELINE_DECAY: f64 = 0.99;

impl PopulationModel {
    /// Creates an empty model.
    pub fn new(config: GroupConfig) -> Self {
        PopulationModel {
            config,
            ..Default::default()
        }
    }

    /// Returns the model's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Returns the number of windows added so far.
    pub fn windows_seen(&self) -> u64 {
        self.windows_seen
    }

    /// Adds one window's summed counts, rebuilds the groups and trends, and returns them.
    pub fn add_window(&mut self, delta: &PopulationDelta) -> &PopulationInfo {
        for (category, count) in &delta.sessions {
            self.graph.add_sessions(category, u64::from(*count));
        }
        for ((left, right), count) in &delta.pairs {
            let strong_at = u64::from(self.config.min_pair_sessions);
            self.graph
                .add_pair(left, right, u64::from(*count), strong_at);
        }
        // Every `link_refresh_windows` windows, refresh the links of the categories seen since
        // the last refresh and of the categories linked to one of them.
        let mut groups_changed = false;
        if (self.windows_seen + 1).is_multiple_of(self.config.link_refresh_windows.max(1))
            && self.graph.refresh_links(&self.config)
        {
            let groups = self.graph.build_groups();
            groups_changed = groups != self.groups;
            self.groups = groups;
        }
        // Building the map at once from sums sorted by group costs fewer instructions than one
        // map insert per category.
        let counts = self
            .graph
            .group_counts(&delta.events)
            .unwrap_or_else(|| self.sort_group_counts(&delta.events));
        let window_counts: BTreeMap<GroupKey, u64> = counts.into_iter().collect();
        let trending = self.update_trends(window_counts);
        self.windows_seen += 1;
        let groups = groups_changed.then(|| self.groups.clone());
        self.current = PopulationInfo {
            window_end: delta.window_end,
            groups,
            trending,
        };
        &self.current
    }

    /// Sums `counts` per learned group and returns the sums sorted by group. Unlike
    /// [`CategoryGraph::group_counts`] it accepts categories that the graph has not indexed,
    /// each a group of its own.
    fn sort_group_counts(&self, counts: &HashMap<Id, u32>) -> Vec<(GroupKey, u64)> {
        let mut sums: Vec<(GroupKey, u64)> = counts
            .iter()
            .map(|(category, count)| {
                let representative = self.graph.representative(category);
                (GroupKey::Learned(representative.clone()), u64::from(*count))
            })
            .collect();
        sum_by_key(&mut sums);
        sums
    }

    /// Records a window's per-group counts and returns the groups now trending.
    fn update_trends(&mut self, window_counts: BTreeMap<GroupKey, u64>) -> Vec<(GroupKey, f64)> {
        let config = &self.config;
        add_counts(&mut self.recent_sums, &window_counts);
        self.recent.push(window_counts);
        let mut trending = Vec::new();
        if self.recent.len() > config.trend_windows {
            let oldest = self.recent.remove(0);
            subtract_counts(&mut self.recent_sums, &oldest);
            // Windows leave the recent set into the long-run baseline, so a trend is judged
            // against what came before it, not against itself.
            for value in self.baseline.values_mut() {
                *value *= BASELINE_DECAY;
            }
            self.baseline_total *= BASELINE_DECAY;
            for (group, count) in oldest {
                *self.baseline.entry(group).or_default() += count as f64;
                self.baseline_total += count as f64;
            }
        }
        if self.baseline_total <= 0.0 {
            return trending;
        }
        let recent_total: u64 = self.recent_sums.values().sum();
        if recent_total == 0 {
            return trending;
        }
        for (group, &count) in &self.recent_sums {
            if count < u64::from(config.trend_min_events) {
                continue;
            }
            let recent_share = count as f64 / recent_total as f64;
            let baseline_count = self.baseline.get(group).copied().unwrap_or(0.0);
            // Half an event of prior keeps a group never seen before from an infinite ratio.
            let baseline_share = (baseline_count + 0.5) / (self.baseline_total + 0.5);
            let ratio = recent_share / baseline_share;
            let expected = baseline_share * recent_total as f64;
            let z = (count as f64 - expected) / expected.max(1.0).sqrt();
            if ratio >= config.trend_ratio && z >= config.trend_min_z {
                trending.push((group.clone(), ratio));
            }
        }
        trending
    }
}

/// Adds a window's per-group counts to `sums`.
fn add_counts(sums: &mut BTreeMap<GroupKey, u64>, window: &BTreeMap<GroupKey, u64>) {
    for (group, count) in window {
        match sums.get_mut(group) {
            Some(sum) => *sum += count,
            None => {
                sums.insert(group.clone(), *count);
            }
        }
    }
}

/// Subtracts a window's per-group counts, added before, from `sums` and removes the groups
/// whose sum falls to zero.
fn subtract_counts(sums: &mut BTreeMap<GroupKey, u64>, window: &BTreeMap<GroupKey, u64>) {
    for (group, count) in window {
        let sum = sums
            .get_mut(group)
            .expect("a window leaving the recent set was added to its sums");
        *sum -= count;
        if *sum == 0 {
            sums.remove(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: u64) -> Id {
        Id::from(value)
    }

    #[test]
    fn own_group_matches_group_of() {
        let mut map = GroupMap::default();
        map.apply(&PopulationInfo {
            window_end: 3_600_000,
            groups: Some(vec![(id(10), id(10)), (id(11), id(10))]),
            trending: Vec::new(),
        });
        let topic = Id::text("toys");
        for category in [id(10), id(11), id(12), Id::text("shoes")] {
            for topic in [None, Some(&topic)] {
                let own = matches!(
                    map.group_of(&category, topic),
                    GroupKey::Learned(name) if name == category
                );
                assert_eq!(
                    map.is_own_group(&category, topic),
                    own,
                    "category {category}, topic {topic:?}"
                );
            }
        }
        assert!(
            map.is_own_group(&id(10), None),
            "a representative is its own group"
        );
        assert!(!map.is_own_group(&id(11), None));
    }

    #[test]
    fn delta_with_sizes_starts_empty() {
        let previous = delta_with_sessions(&[&[1, 2, 3], &[2, 3]]);
        let sizes = previous.sizes();
        assert_eq!((sizes.sessions, sizes.pairs, sizes.events), (3, 3, 3));
        let sized = PopulationDelta::with_sizes(3_600_000, sizes);
        assert!(sized.sessions.capacity() >= 3);
        assert!(sized.pairs.capacity() >= 3);
        assert!(sized.events.capacity() >= 3);
        assert_eq!(
            sized,
            PopulationDelta {
                window_end: 3_600_000,
                ..Default::default()
            }
        );
    }

    fn delta_with_sessions(sessions: &[&[u64]]) -> PopulationDelta {
        let mut delta = PopulationDelta {
            window_end: 3_600_000,
            ..Default::default()
        };
        for session in sessions {
            for (at, category) in session.iter().enumerate() {
                *delta.sessions.entry(id(*category)).or_default() += 1;
                *delta.events.entry(id(*category)).or_default() += 1;
                for other in &session[..at] {
                    let pair = if other < category {
                        (id(*other), id(*category))
                    } else {
                        (id(*category), id(*other))
                    };
                    *delta.pairs.entry(pair).or_default() += 1;
                }
            }
        }
        delta
    }

    #[test]
    fn groups_follow_co_visited_categories() {
        let mut model = PopulationModel::new(GroupConfig::default());
        let sessions: Vec<&[u64]> = vec![
            &[1, 2],
            &[2, 3],
            &[1, 3],
            &[1, 2, 3],
            &[7, 8],
            &[7, 8],
            &[8, 9],
            &[7, 9],
            &[9, 8],
        ];
        let info = model.add_window(&delta_with_sessions(&sessions)).clone();
        let mut map = GroupMap::default();
        map.apply(&info);
        assert_eq!(map.group_of(&id(3), None), GroupKey::Learned(id(1)));
        assert_eq!(map.group_of(&id(9), None), GroupKey::Learned(id(7)));
        assert_ne!(map.group_of(&id(1), None), map.group_of(&id(7), None));
        assert_eq!(map.group_of(&id(42), None), GroupKey::Learned(id(42)));
    }

    #[test]
    fn applied_groups_replace_earlier_ones() {
        let pairs = |list: &[(u64, u64)]| -> Vec<(Id, Id)> {
            list.iter()
                .map(|(leaf, representative)| (id(*leaf), id(*representative)))
                .collect()
        };
        // Leaves join, move and leave groups from one list to the next. The map is restored
        // from a checkpoint after the second list, and the last list is not sorted, so both
        // of those updates collect a new map.
        let lists = [
            pairs(&[(1, 1), (2, 1), (5, 5), (6, 5)]),
            pairs(&[(1, 1), (2, 1), (3, 1), (5, 5), (6, 5)]),
            pairs(&[(2, 2), (3, 2), (5, 5), (6, 5), (7, 5)]),
            pairs(&[(5, 5), (6, 6), (7, 6)]),
            pairs(&[(7, 5), (5, 5), (9, 5)]),
        ];
        let mut map = GroupMap::default();
        for (at, list) in lists.iter().enumerate() {
            map.apply(&PopulationInfo {
                window_end: 3_600_000 * (at as u64 + 1),
                groups: Some(list.clone()),
                trending: Vec::new(),
            });
            let expected: IdMap<Id> = list.iter().cloned().collect();
            assert_eq!(map.representative, expected, "list {at}");
            assert_eq!(map.version, at as u64 + 1, "list {at}");
            if at == 1 {
                // A restored map has no last list and is collected anew on the next update.
                let encoded = bincode::serialize(&map).expect("a group map encodes");
                map = bincode::deserialize(&encoded).expect("and decodes");
                assert!(map.last_groups.is_empty());
            }
        }
        assert_eq!(map.grouped_categories(), 3);
        assert_eq!(map.group_of(&id(2), None), GroupKey::Learned(id(2)));
        assert_eq!(map.group_of(&id(9), None), GroupKey::Learned(id(5)));
    }

    #[test]
    fn group_counts_match_sorted_sums() {
        let mut model = PopulationModel::new(GroupConfig::default());
        let sessions: Vec<&[u64]> = vec![
            &[30, 20],
            &[20, 10],
            &[10, 30, 20],
            &[30, 10],
            &[50, 40],
            &[40, 50],
            &[60, 50, 40],
            &[70],
        ];
        model.add_window(&delta_with_sessions(&sessions));
        assert_eq!(model.graph.representative(&id(30)), &id(10));

        let mut next = delta_with_sessions(&[&[30, 40, 70], &[20], &[60, 70]]);
        let indexed = model
            .graph
            .group_counts(&next.events)
            .expect("every category has an index");
        assert_eq!(indexed, model.sort_group_counts(&next.events));
        assert_eq!(indexed[0], (GroupKey::Learned(id(10)), 2));

        // A category the graph has never seen has no index.
        next.events.insert(id(5), 1);
        assert_eq!(model.graph.group_counts(&next.events), None);
        let sorted = model.sort_group_counts(&next.events);
        assert_eq!(sorted[0], (GroupKey::Learned(id(5)), 1));
    }

    #[test]
    fn topic_overrides_learned_group() {
        let map = GroupMap::default();
        let topic = Id::text("electronics");
        assert_eq!(
            map.group_of(&id(5), Some(&topic)),
            GroupKey::Topic(topic.clone())
        );
    }

    #[test]
    fn merged_deltas_equal_one_delta() {
        let sessions_a: Vec<&[u64]> = vec![&[1, 2], &[2, 3]];
        let sessions_b: Vec<&[u64]> = vec![&[1, 3], &[1, 2, 3]];
        let mut merged = delta_with_sessions(&sessions_a);
        merged.merge(delta_with_sessions(&sessions_b));
        let all: Vec<&[u64]> = sessions_a.into_iter().chain(sessions_b).collect();
        assert_eq!(merged, delta_with_sessions(&all));
    }

    #[test]
    fn trend_flags_a_group_that_jumps() {
        let config = GroupConfig {
            trend_windows: 2,
            trend_min_events: 5,
            ..GroupConfig::default()
        };
        let mut model = PopulationModel::new(config);
        let steady: Vec<&[u64]> = vec![&[1], &[1], &[1], &[2], &[2], &[2]];
        for window in 0..6 {
            let mut delta = delta_with_sessions(&steady);
            delta.window_end = (window + 1) * 3_600_000;
            assert!(
                model.add_window(&delta).trending.is_empty(),
                "window {window}"
            );
        }
        let mut jump = delta_with_sessions(&[&[5], &[5], &[5], &[5], &[5], &[5], &[1]]);
        jump.window_end = 7 * 3_600_000;
        let info = model.add_window(&jump).clone();
        assert_eq!(info.trending.len(), 1);
        assert_eq!(info.trending[0].0, GroupKey::Learned(id(5)));
    }

    #[test]
    fn recent_sums_follow_the_recent_windows() {
        let config = GroupConfig {
            trend_windows: 3,
            ..GroupConfig::default()
        };
        let mut model = PopulationModel::new(config);
        for window in 0..10u64 {
            // Category 1 in every window, category 2 in every other and category 3 once, so
            // that groups enter and leave the recent windows.
            let mut sessions: Vec<&[u64]> = vec![&[1][..]; 1 + window as usize % 3];
            if window % 2 == 0 {
                sessions.push(&[2]);
            }
            if window == 4 {
                sessions.push(&[3]);
            }
            let mut delta = delta_with_sessions(&sessions);
            delta.window_end = (window + 1) * 3_600_000;
            model.add_window(&delta);
            let mut expected: BTreeMap<GroupKey, u64> = BTreeMap::new();
            for recent in &model.recent {
                for (group, count) in recent {
                    *expected.entry(group.clone()).or_default() += count;
                }
            }
            assert_eq!(model.recent_sums, expected, "window {window}");
        }
        assert!(!model.recent_sums.contains_key(&GroupKey::Learned(id(3))));
    }

    #[test]
    fn forget_shrinks_sparse_session_table() {
        let mut counter = SessionCounter::new(SessionRule::default());
        let mut delta = PopulationDelta::default();
        for user in 0..10_000u64 {
            let event = Event::plain(0, user, 1u64, 100u64, crate::Behavior::View);
            counter.count(&event, &mut delta);
        }
        // One user stays active; the other sessions have passed their gap a day later.
        let late = Event::plain(86_400_000, 0u64, 1u64, 100u64, crate::Behavior::View);
        counter.count(&late, &mut delta);
        let peak = counter.sessions.capacity();
        assert!(peak >= 10_000);

        let forgotten = counter.forget_closed(86_400_000);

        assert_eq!(forgotten, 9_999);
        assert_eq!(counter.users(), 1);
        assert!(counter.sessions.capacity() < peak / 4);
    }

    #[test]
    fn forget_if_due_waits_half_a_gap() {
        let rule = SessionRule::default();
        let gap_ms = rule.gap_secs * 1000;
        let mut counter = SessionCounter::new(rule);
        let mut delta = PopulationDelta::default();
        let view =
            |user: u64, ts_ms: i64| Event::plain(ts_ms, user, 1u64, 100u64, crate::Behavior::View);
        counter.count(&view(1, 0), &mut delta);

        // Two thirds of a gap in, user 1's session is still open.
        let first_ms = gap_ms * 2 / 3;
        assert_eq!(counter.forget_closed_if_due(first_ms), 0);

        // Past the gap user 1's session has ended, but half a gap has not passed since the
        // first forget, so the session stays.
        let past_gap_ms = gap_ms + 1_000;
        counter.count(&view(2, past_gap_ms), &mut delta);
        assert_eq!(counter.forget_closed_if_due(past_gap_ms), 0);
        assert_eq!(counter.users(), 2);

        // Half a gap after the first forget, user 1's session goes and user 2's stays.
        assert_eq!(counter.forget_closed_if_due(first_ms + gap_ms / 2), 1);
        assert_eq!(counter.users(), 1);
    }
}
