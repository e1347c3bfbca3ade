//! The per-user window feature vector.
//!
//! A *window* is one user's events in one time window (an hour or a day of event time, as the
//! caller chooses). [`ReferenceProfile::window_features`] turns it into a fixed vector of
//! [`FEATURE_NAMES`]: activity, behaviour mix, how spread and how new the window's interest
//! groups are, the window's and the reference's shares of the user's top groups, and the
//! user's attributes (age band and gender, one-hot with an explicit unknown column).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::error::{check_row, check_unit_open, invalid, MlError};
use crate::attributes::{Age, UserAttributes};
use crate::detector::DetectorConfig;
use crate::event::{Behavior, Event, Id};
use crate::groups::{GroupKey, GroupMap};
use crate::session::{SessionMark, SessionRule};

/// Top interest groups of a user that the interest model predicts shares for.
pub const TOP_GROUPS: usize = 3;

/// Slots of a [`Shares`] vector: the user's top groups, then all other groups together.
pub const SHARE_SLOTS: usize = TOP_GROUPS + 1;

/// Events of a window that [`ReferenceProfile::window_features_of`] lists without allocating.
const INLINE_EVENTS: usize = 16;

/// Interest-weighted shares of a user's top groups (by reference weight, largest first) and,
/// in the last slot, of every other group. The slots sum to 1, or are all 0 for no activity.
pub type Shares = [f64; SHARE_SLOTS];

/// Names of the window features, in vector order.
///
/// Counts are over events with interest weight, and `log_` features are `ln(1 + count)`.
/// Shares of groups are interest-weighted (a buy weighs 3 views), shares of behaviours are
/// counts (`view_share` includes searches).
///
/// - `events_per_session`: events over sessions, where a session ends after the configured
///   gap or when the input's session id changes.
/// - `group_entropy`: Shannon entropy of the window's group shares, in nats.
/// - `novel_share`: share of the window in groups that hold less than
///   [`WindowConfig::novel_share`] of the reference (1 for a user with no reference).
/// - `divergence`: Jensen-Shannon divergence between the window's and the reference's group
///   shares, in nats (`ln 2` for a user with no reference).
/// - `peak_events_per_minute`: the most events inside any 60-second span.
/// - `window_share_*` and `reference_share_*`: the window's and the reference's [`Shares`].
/// - `has_attributes` and the `age_*` and `gender_*` columns: see [`attribute_values`].
pub const FEATURE_NAMES: [&str; 21 + ATTRIBUTE_FEATURE_COUNT] = [
    "log_events",
    "log_sessions",
    "events_per_session",
    "log_distinct_categories",
    "log_distinct_groups",
    "view_share",
    "fav_share",
    "cart_share",
    "buy_share",
    "group_entropy",
    "novel_share",
    "divergence",
    "peak_events_per_minute",
    "window_share_top1",
    "window_share_top2",
    "window_share_top3",
    "window_share_other",
    "reference_share_top1",
    "reference_share_top2",
    "reference_share_top3",
    "reference_share_other",
    "has_attributes",
    "age_under_25",
    "age_25_34",
    "age_35_44",
    "age_45_54",
    "age_55_plus",
    "age_unknown",
    "gender_female",
    "gender_male",
    "gender_other",
    "gender_unknown",
];

/// Columns of the user attribute table that [`attribute_values`] encodes.
pub const ENCODED_ATTRIBUTE_COLUMNS: [&str; 2] = ["age", "gender"];

/// Number of attribute columns at the end of [`FEATURE_NAMES`].
pub const ATTRIBUTE_FEATURE_COUNT: usize = 11;

/// Number of window features.
pub const FEATURE_COUNT: usize = FEATURE_NAMES.len();

/// Column of `window_share_top1`, the first of the window's four share slots.
const WINDOW_SHARES_AT: usize = 13;
/// Column of `reference_share_top1`, the first of the reference's four share slots.
const REFERENCE_SHARES_AT: usize = 17;
/// Column of `has_attributes`, the first attribute column.
const ATTRIBUTES_AT: usize = 21;

/// The feature vector's definition: column names in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    names: Vec<String>,
}

impl FeatureSpec {
    /// Returns the window feature definition, [`FEATURE_NAMES`].
    pub fn window() -> FeatureSpec {
        FeatureSpec {
            names: FEATURE_NAMES.iter().map(|name| name.to_string()).collect(),
        }
    }

    /// Returns the column names in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Returns the number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Returns whether the definition has no columns.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Returns the column of a feature name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|known| known == name)
    }
}

/// Settings for computing window features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Gap that ends a session, in seconds, when the input has no session ids.
    pub session_gap_secs: i64,
    /// Maximum span of a session, in seconds.
    #[serde(default = "default_max_span_secs")]
    pub session_max_span_secs: i64,
    /// A group with less than this share of the reference is novel to the user.
    pub novel_share: f64,
}

impl Default for WindowConfig {
    /// Takes both settings from the shift detector's defaults, so the two read windows alike.
    fn default() -> Self {
        let detector = DetectorConfig::default();
        WindowConfig {
            session_gap_secs: detector.session_gap_secs,
            session_max_span_secs: detector.session_max_span_secs,
            novel_share: detector.novel_share,
        }
    }
}

fn default_max_span_secs() -> i64 {
    crate::session::DEFAULT_MAX_SPAN_SECS
}

impl WindowConfig {
    /// Returns the rule that splits a window's events into sessions.
    pub fn session_rule(&self) -> SessionRule {
        SessionRule {
            gap_secs: self.session_gap_secs,
            max_span_secs: self.session_max_span_secs,
        }
    }

    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), MlError> {
        if let Some(field) = self.session_rule().invalid_field() {
            let value = if field == "session_gap_secs" {
                self.session_gap_secs
            } else {
                self.session_max_span_secs
            };
            return Err(invalid(
                "window features",
                field,
                value,
                "a positive number of seconds",
            ));
        }
        check_unit_open("window features", "novel_share", self.novel_share)
    }
}

/// One window's features, in the order of [`FEATURE_NAMES`].
///
/// Deserialising checks the width and the values as [`WindowFeatures::from_values`] does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct WindowFeatures {
    /// Stored inline, so closing, cloning and dropping a window allocate nothing for it.
    values: [f64; FEATURE_COUNT],
}

impl TryFrom<Vec<f64>> for WindowFeatures {
    type Error = MlError;

    fn try_from(values: Vec<f64>) -> Result<Self, Self::Error> {
        WindowFeatures::from_values(values)
    }
}

impl From<WindowFeatures> for Vec<f64> {
    fn from(features: WindowFeatures) -> Self {
        features.values.to_vec()
    }
}

impl WindowFeatures {
    /// Wraps a vector given in [`FEATURE_NAMES`] order, rejecting a wrong width or a NaN or
    /// infinite value.
    pub fn from_values(values: Vec<f64>) -> Result<WindowFeatures, MlError> {
        let Ok(array) = <[f64; FEATURE_COUNT]>::try_from(values.as_slice()) else {
            return Err(MlError::WidthMismatch {
                model: "window features",
                expected: FEATURE_COUNT,
                found: values.len(),
            });
        };
        WindowFeatures::from_array(array)
    }

    /// Wraps an array given in [`FEATURE_NAMES`] order, rejecting a NaN or infinite value.
    fn from_array(values: [f64; FEATURE_COUNT]) -> Result<WindowFeatures, MlError> {
        // The feature names are only needed for the error message, so they are built only
        // for an invalid row.
        if !values.iter().all(|value| value.is_finite()) {
            let names = FeatureSpec::window();
            check_row(
                "window features",
                &values,
                FEATURE_COUNT,
                Some(names.names()),
            )?;
        }
        Ok(WindowFeatures { values })
    }

    /// Returns the values in [`FEATURE_NAMES`] order.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Returns one feature by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        FEATURE_NAMES
            .iter()
            .position(|known| *known == name)
            .map(|column| self.values[column])
    }

    /// Returns the features with the attribute columns set from the user's row, `None` for a
    /// user without a row (see [`attribute_values`]).
    pub fn with_attributes(mut self, attributes: Option<&UserAttributes>) -> WindowFeatures {
        self.values[ATTRIBUTES_AT..].copy_from_slice(&attribute_values(attributes));
        self
    }

    /// Returns the window's shares of the user's top groups.
    pub fn window_shares(&self) -> Shares {
        share_slots(&self.values[WINDOW_SHARES_AT..WINDOW_SHARES_AT + SHARE_SLOTS])
    }

    /// Returns the reference's shares of the user's top groups.
    pub fn reference_shares(&self) -> Shares {
        share_slots(&self.values[REFERENCE_SHARES_AT..REFERENCE_SHARES_AT + SHARE_SLOTS])
    }
}

/// Encodes a user's attributes as the attribute columns of [`FEATURE_NAMES`].
///
/// Each attribute is one-hot with its own unknown column, so an unknown value never looks
/// like a real one (no age 0, no imputed mean). `has_attributes` is 1 when the table has a
/// row for the user, even an empty one. An age band counts in the band of its middle year.
/// Gender `F`/`female` and `M`/`male` (any case) are recognised, any other text is `other`.
///
/// NOTE: region and other text columns are not encoded, because their values are open-ended.
pub fn attribute_values(attributes: Option<&UserAttributes>) -> [f64; ATTRIBUTE_FEATURE_COUNT] {
    let mut values = [0.0; ATTRIBUTE_FEATURE_COUNT];
    let age = attributes.and_then(|attributes| attributes.age);
    let age_slot = match age.map(Age::years) {
        None => 6,
        Some(years) if years < 25.0 => 1,
        Some(years) if years < 35.0 => 2,
        Some(years) if years < 45.0 => 3,
        Some(years) if years < 55.0 => 4,
        Some(_) => 5,
    };
    let gender = attributes.and_then(|attributes| attributes.gender.as_deref());
    let gender_slot = match gender.map(str::to_ascii_lowercase).as_deref() {
        None => 10,
        Some("f" | "female") => 7,
        Some("m" | "male") => 8,
        Some(_) => 9,
    };
    values[0] = f64::from(u8::from(attributes.is_some()));
    values[age_slot] = 1.0;
    values[gender_slot] = 1.0;
    values
}

fn share_slots(values: &[f64]) -> Shares {
    let mut shares = [0.0; SHARE_SLOTS];
    shares.copy_from_slice(values);
    shares
}

/// The fields of an event that window features and a user's reference read, kept for each
/// event of an open window in place of the whole [`Event`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowEvent {
    /// Event time in Unix milliseconds.
    pub ts_ms: i64,
    pub behavior: Behavior,
    pub category: Id,
    pub topic: Option<Id>,
    pub session: Option<Box<str>>,
}

impl WindowEvent {
    /// Returns the event time in Unix seconds, rounded down, as [`Event::ts_secs`] does.
    pub fn ts_secs(&self) -> i64 {
        self.ts_ms.div_euclid(1000)
    }
}

impl From<Event> for WindowEvent {
    /// Moves the fields out of `event` and drops the rest.
    fn from(event: Event) -> WindowEvent {
        WindowEvent {
            ts_ms: event.ts_ms,
            behavior: event.behavior,
            category: event.category,
            topic: event.topic,
            session: event.session,
        }
    }
}

impl From<&Event> for WindowEvent {
    fn from(event: &Event) -> WindowEvent {
        WindowEvent {
            ts_ms: event.ts_ms,
            behavior: event.behavior,
            category: event.category.clone(),
            topic: event.topic.clone(),
            session: event.session.clone(),
        }
    }
}

/// Converts events for the functions that take [`WindowEvent`]s.
fn window_events(events: &[Event]) -> Vec<WindowEvent> {
    events.iter().map(WindowEvent::from).collect()
}

/// A user's reference interest over groups, with its top groups fixed for one window.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use veer_models::ml::{ReferenceProfile, WindowConfig};
/// use veer_models::{Behavior, Event, GroupKey, GroupMap, Id};
///
/// let group = |id: u64| GroupKey::Learned(Id::from(id));
/// let reference = BTreeMap::from([(group(1), 6.0), (group(2), 3.0), (group(3), 1.0)]);
/// let profile = ReferenceProfile::new(&reference).unwrap();
/// assert_eq!(profile.top_groups(), &[group(1), group(2), group(3)]);
///
/// let event = |ts: i64, category: u64| Event {
///     line: 1,
///     ..Event::plain(ts * 1000, 7u64, category, 100u64, Behavior::View)
/// };
/// let window = [event(0, 1), event(60, 1), event(120, 9), event(180, 2)];
/// let groups = GroupMap::default();
/// let shares = profile.slot_shares(&window, &groups).unwrap();
/// assert_eq!(shares, [0.5, 0.25, 0.0, 0.25]);
///
/// let features = profile.window_features(&window, &groups, &WindowConfig::default()).unwrap();
/// assert_eq!(features.get("novel_share"), Some(0.25));
/// assert_eq!(features.window_shares(), shares);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceProfile {
    /// Group shares of the reference, summing to 1, sorted by group (empty for a user with no
    /// history).
    shares: Vec<(GroupKey, f64)>,
    /// Up to [`TOP_GROUPS`] groups by share, largest first, ties broken by group order.
    top: Vec<GroupKey>,
    /// The reference's shares of the top groups, returned by
    /// [`ReferenceProfile::reference_shares`].
    top_shares: Shares,
}

impl ReferenceProfile {
    /// Builds a profile from reference weights per group (any positive scale).
    ///
    /// Rejects a negative or non-finite weight. Zero weights are ignored, and an empty or
    /// all-zero reference gives a profile with no top groups.
    pub fn new(weights: &BTreeMap<GroupKey, f64>) -> Result<ReferenceProfile, MlError> {
        ReferenceProfile::from_sorted(weights.iter())
    }

    /// Builds a profile as [`ReferenceProfile::new`] does, from weights per group given in
    /// group order.
    pub(crate) fn from_sorted<'a>(
        weights: impl Iterator<Item = (&'a GroupKey, &'a f64)> + Clone,
    ) -> Result<ReferenceProfile, MlError> {
        let total = checked_total(weights.clone())?;
        let shares: Vec<(GroupKey, f64)> = if total > 0.0 {
            // Room for every group, so the vector is not grown while it is filled.
            let mut shares = Vec::with_capacity(weights.size_hint().0);
            shares.extend(
                weights
                    .filter(|(_, weight)| **weight > 0.0)
                    .map(|(group, weight)| (group.clone(), weight / total)),
            );
            shares
        } else {
            Vec::new()
        };
        let mut top = Vec::new();
        let top_shares = rank_top_groups(
            shares.iter().map(|(group, share)| (group, *share)),
            &mut top,
        );
        Ok(ReferenceProfile {
            shares,
            top,
            top_shares,
        })
    }

    /// Returns the profile as a view, whose shares are its own over a total of 1.
    fn view(&self) -> ReferenceView<'_> {
        ReferenceView {
            weights: &self.shares,
            total: 1.0,
            top: &self.top,
            top_shares: self.top_shares,
        }
    }

    /// Returns the top groups, largest reference share first.
    pub fn top_groups(&self) -> &[GroupKey] {
        &self.top
    }

    /// Returns the reference's own shares of the top groups.
    pub fn reference_shares(&self) -> Shares {
        self.top_shares
    }

    /// Returns the interest-weighted shares of the top groups in `events`, or `None` when no
    /// event carries interest weight (an empty window). This is the interest model's target.
    pub fn slot_shares(&self, events: &[Event], groups: &GroupMap) -> Option<Shares> {
        self.slot_shares_of(&GroupDistribution::of(&window_events(events), groups))
    }

    /// Returns [`ReferenceProfile::slot_shares`] from the window's group distribution.
    pub fn slot_shares_of(&self, distribution: &GroupDistribution) -> Option<Shares> {
        slot_shares_of(&self.top, distribution)
    }

    /// Computes the features of one user's window of events, with the attribute columns of a
    /// user without a row ([`WindowFeatures::with_attributes`] sets them).
    ///
    /// Events without interest weight (`remove_from_cart`) are left out. The events may come
    /// in any order, because they are sorted by time first. An empty window gives zero
    /// activity, zero window shares and the reference shares.
    pub fn window_features(
        &self,
        events: &[Event],
        groups: &GroupMap,
        config: &WindowConfig,
    ) -> Result<WindowFeatures, MlError> {
        let events = window_events(events);
        self.window_features_of(&events, &GroupDistribution::of(&events, groups), config)
    }

    /// Computes [`ReferenceProfile::window_features`] from the events and their group
    /// distribution, which must come from the same events.
    pub fn window_features_of(
        &self,
        events: &[WindowEvent],
        distribution: &GroupDistribution,
        config: &WindowConfig,
    ) -> Result<WindowFeatures, MlError> {
        self.view().window_features_of(events, distribution, config)
    }
}

/// Sums reference weights per group, rejecting a negative or non-finite weight.
pub(crate) fn checked_total<'a>(
    weights: impl Iterator<Item = (&'a GroupKey, &'a f64)> + Clone,
) -> Result<f64, MlError> {
    if let Some((group, weight)) = weights
        .clone()
        .find(|(_, weight)| !weight.is_finite() || **weight < 0.0)
    {
        return Err(MlError::InvalidShares {
            input: "reference profile",
            detail: format!("group {group:?} has weight {weight}; expected a finite weight >= 0"),
        });
    }
    Ok(weights.map(|(_, weight)| weight).sum())
}

/// Ranks groups with shares, given in group order, and keeps in `top` the first
/// [`TOP_GROUPS`] by share, largest first, then by group. Returns the shares of these groups
/// and of all others together, or all 0 without groups.
pub(crate) fn rank_top_groups<'a>(
    shares: impl Iterator<Item = (&'a GroupKey, f64)>,
    top: &mut Vec<GroupKey>,
) -> Shares {
    // Kept in order by insertion, and inline because it never contains more than
    // TOP_GROUPS + 1 entries.
    let mut ranked: SmallVec<[(&GroupKey, f64); TOP_GROUPS + 1]> = SmallVec::new();
    let before = |a: &(&GroupKey, f64), b: &(&GroupKey, f64)| {
        b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)).is_lt()
    };
    for entry in shares {
        if ranked.len() == TOP_GROUPS && !before(&entry, &ranked[TOP_GROUPS - 1]) {
            continue;
        }
        let at = ranked.partition_point(|known| before(known, &entry));
        ranked.insert(at, entry);
        ranked.truncate(TOP_GROUPS);
    }
    top.clear();
    top.extend(ranked.iter().map(|(group, _)| (*group).clone()));

    let mut top_shares = [0.0; SHARE_SLOTS];
    if !ranked.is_empty() {
        for (slot, (_, share)) in ranked.iter().enumerate() {
            top_shares[slot] = *share;
        }
        top_shares[TOP_GROUPS] = (1.0 - top_shares[..TOP_GROUPS].iter().sum::<f64>()).max(0.0);
    }
    top_shares
}

/// Returns the window's shares of the `top` groups and of all others together, as
/// [`ReferenceProfile::slot_shares_of`] does.
pub(crate) fn slot_shares_of(top: &[GroupKey], distribution: &GroupDistribution) -> Option<Shares> {
    distribution
        .shares
        .as_ref()
        .map(|shares| slots_of(top, shares))
}

fn slots_of(top: &[GroupKey], distribution: &[(GroupKey, f64)]) -> Shares {
    let mut shares = [0.0; SHARE_SLOTS];
    for (slot, group) in top.iter().enumerate() {
        shares[slot] = match distribution.binary_search_by(|(known, _)| known.cmp(group)) {
            Ok(index) => distribution[index].1,
            Err(_) => 0.0,
        };
    }
    shares[TOP_GROUPS] = (1.0 - shares[..TOP_GROUPS].iter().sum::<f64>()).max(0.0);
    shares
}

/// Returns the groups with a weight greater than 0 and their shares of `total`, in the order
/// of `weights`.
pub(crate) fn positive_shares(
    weights: &[(GroupKey, f64)],
    total: f64,
) -> impl Iterator<Item = (&GroupKey, f64)> + '_ {
    weights
        .iter()
        .filter(|(_, weight)| *weight > 0.0)
        .map(move |(group, weight)| (group, weight / total))
}

/// A reference read in place, where each group's share is its weight over `total`. A user's
/// decayed weights serve without a normalised copy, and a [`ReferenceProfile`] is the view of
/// its own shares over a total of 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReferenceView<'a> {
    /// Weights by group, sorted by group, or empty for a reference without weight.
    pub(crate) weights: &'a [(GroupKey, f64)],
    /// Sum of all weights, greater than 0 when `weights` is not empty.
    pub(crate) total: f64,
    /// Up to [`TOP_GROUPS`] groups by share, as [`rank_top_groups`] keeps them.
    pub(crate) top: &'a [GroupKey],
    /// The shares that [`rank_top_groups`] returned with `top`.
    pub(crate) top_shares: Shares,
}

impl ReferenceView<'_> {
    /// Returns the groups with a share greater than 0 and their shares, in group order.
    fn shares(&self) -> impl Iterator<Item = (&GroupKey, f64)> + '_ {
        positive_shares(self.weights, self.total)
    }

    /// Returns the reference's share of `group`, 0 for a group outside it.
    fn share_of(&self, group: &GroupKey) -> f64 {
        match self.weights.binary_search_by(|(known, _)| known.cmp(group)) {
            Ok(index) if self.weights[index].1 > 0.0 => self.weights[index].1 / self.total,
            _ => 0.0,
        }
    }

    /// Computes [`ReferenceProfile::window_features`] from the events and their group
    /// distribution, which must come from the same events.
    pub(crate) fn window_features_of(
        &self,
        events: &[WindowEvent],
        distribution: &GroupDistribution,
        config: &WindowConfig,
    ) -> Result<WindowFeatures, MlError> {
        config.validate()?;
        // Both lists stay inline for windows of up to INLINE_EVENTS events, which are most.
        let mut weighted_events: SmallVec<[&WindowEvent; INLINE_EVENTS]> = events
            .iter()
            .filter(|event| event.behavior.interest_weight() > 0.0)
            .collect();
        weighted_events.sort_by_key(|event| event.ts_ms);

        let mut values = [0.0; FEATURE_COUNT];
        values[REFERENCE_SHARES_AT..REFERENCE_SHARES_AT + SHARE_SLOTS]
            .copy_from_slice(&self.top_shares);
        values[ATTRIBUTES_AT..].copy_from_slice(&attribute_values(None));
        let Some(distribution) = &distribution.shares else {
            return WindowFeatures::from_array(values);
        };

        let count = weighted_events.len() as f64;
        let sessions = count_sessions(&weighted_events, config.session_rule()) as f64;
        let mut categories: SmallVec<[&Id; INLINE_EVENTS]> = weighted_events
            .iter()
            .map(|event| &event.category)
            .collect();
        categories.sort();
        categories.dedup();
        let mut behaviour_counts = [0.0; 4];
        for event in &weighted_events {
            let slot = match event.behavior {
                Behavior::View | Behavior::Search => 0,
                Behavior::Fav => 1,
                Behavior::Cart => 2,
                Behavior::Buy => 3,
                Behavior::RemoveFromCart => continue,
            };
            behaviour_counts[slot] += 1.0;
        }

        let entropy: f64 = distribution
            .iter()
            .map(|(_, share)| *share)
            .filter(|share| *share > 0.0)
            .map(|share| -share * share.ln())
            .sum();
        let (novel, divergence) = if self.weights.is_empty() {
            // A user with no history: every group is new, and the windows share nothing.
            (1.0, std::f64::consts::LN_2)
        } else {
            let novel = distribution
                .iter()
                .filter(|(group, _)| self.share_of(group) < config.novel_share)
                .map(|(_, share)| share)
                .sum();
            (novel, jensen_shannon_sorted(self.shares(), distribution))
        };

        values[0] = count.ln_1p();
        values[1] = sessions.ln_1p();
        values[2] = count / sessions;
        values[3] = (categories.len() as f64).ln_1p();
        values[4] = (distribution.len() as f64).ln_1p();
        for (slot, behaviour_count) in behaviour_counts.iter().enumerate() {
            values[5 + slot] = behaviour_count / count;
        }
        values[9] = entropy;
        values[10] = novel;
        values[11] = divergence;
        values[12] = peak_events_per_minute(&weighted_events) as f64;
        values[WINDOW_SHARES_AT..WINDOW_SHARES_AT + SHARE_SLOTS]
            .copy_from_slice(&slots_of(self.top, distribution));
        WindowFeatures::from_array(values)
    }
}

/// Returns the Jensen-Shannon divergence of [`crate::detector::jensen_shannon`] for a
/// distribution given as entries sorted by group.
///
/// Both sides are walked in group order, the order in which `jensen_shannon` visits the
/// groups, so the terms and their sum are the same.
fn jensen_shannon_sorted<'a>(
    left: impl Iterator<Item = (&'a GroupKey, f64)>,
    right: &[(GroupKey, f64)],
) -> f64 {
    // A group on one side only has m = p / 2, so its ratio is almost always exactly 2, and
    // the logarithm of 2 is computed once. Other ratios call `ln`, so every term is the same.
    let ln_two = 2f64.ln();
    let term = |p: f64, m: f64| {
        if p > 0.0 {
            let ratio = p / m;
            p * if ratio == 2.0 { ln_two } else { ratio.ln() }
        } else {
            0.0
        }
    };
    let mut divergence = 0.0;
    let mut left = left.peekable();
    let mut right = right
        .iter()
        .map(|(group, share)| (group, *share))
        .peekable();
    loop {
        // Which side has the next group in order: Less for the left, Greater for the right,
        // Equal for both.
        let order = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((group, _)), Some((other, _))) => group.cmp(other),
        };
        let p = if order.is_le() {
            left.next().map_or(0.0, |(_, share)| share)
        } else {
            0.0
        };
        let q = if order.is_ge() {
            right.next().map_or(0.0, |(_, share)| share)
        } else {
            0.0
        };
        let m = (p + q) / 2.0;
        divergence += 0.5 * term(p, m) + 0.5 * term(q, m);
    }
    divergence
}

/// The interest-weighted group shares of one window's events, computed once for its
/// features and for its shares of each reference's top groups.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDistribution {
    /// Shares by group, sorted by group and summing to 1, or `None` when no event carries
    /// interest weight.
    shares: Option<Vec<(GroupKey, f64)>>,
}

impl GroupDistribution {
    /// Computes the distribution of `events` over the groups of `groups`.
    pub fn of(events: &[WindowEvent], groups: &GroupMap) -> GroupDistribution {
        GroupDistribution::with_event_groups(events, groups, &mut Vec::new())
    }

    /// Computes [`GroupDistribution::of`] and stores in `event_groups`, for each event with
    /// interest weight in order, the index of its group in [`GroupDistribution::groups`].
    pub(crate) fn with_event_groups(
        events: &[WindowEvent],
        groups: &GroupMap,
        event_groups: &mut Vec<usize>,
    ) -> GroupDistribution {
        GroupDistribution {
            shares: group_distribution(events, groups, event_groups),
        }
    }

    /// Returns the window's groups with their shares, sorted by group (empty without
    /// interest weight).
    pub(crate) fn groups(&self) -> &[(GroupKey, f64)] {
        self.shares.as_deref().unwrap_or_default()
    }
}

/// Returns interest-weighted group shares of the events, sorted by group, or `None` without
/// interest weight, and fills `event_groups` as [`GroupDistribution::with_event_groups`]
/// describes.
///
/// Each group's weights are summed in event order, and so is the total, so the shares are
/// those of summing into a map keyed by group.
fn group_distribution(
    events: &[WindowEvent],
    groups: &GroupMap,
    event_groups: &mut Vec<usize>,
) -> Option<Vec<(GroupKey, f64)>> {
    event_groups.clear();
    // Groups in order of first appearance. A window has few groups, so a linear search is
    // cheaper than a map.
    let mut weights: Vec<(GroupKey, f64)> = Vec::new();
    let mut total = 0.0;
    for event in events {
        let weight = event.behavior.interest_weight();
        if weight <= 0.0 {
            continue;
        }
        let group = groups.group_of(&event.category, event.topic.as_ref());
        let index = match weights.iter().position(|(known, _)| *known == group) {
            Some(index) => index,
            None => {
                weights.push((group, 0.0));
                weights.len() - 1
            }
        };
        weights[index].1 += weight;
        event_groups.push(index);
        total += weight;
    }
    if total <= 0.0 {
        return None;
    }
    if weights.len() > 1 {
        // The groups are distinct, so an unstable sort gives one order.
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_unstable_by(|a, b| weights[*a].0.cmp(&weights[*b].0));
        let mut position_of = vec![0; order.len()];
        for (position, index) in order.iter().enumerate() {
            position_of[*index] = position;
        }
        for index in event_groups.iter_mut() {
            *index = position_of[*index];
        }
        weights.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    weights.iter_mut().for_each(|(_, weight)| *weight /= total);
    Some(weights)
}

/// Counts sessions in time-ordered events, split by `rule`.
fn count_sessions(events: &[&WindowEvent], rule: SessionRule) -> usize {
    let mut mark = SessionMark::default();
    events
        .iter()
        .filter(|event| rule.advance(&mut mark, event.ts_secs(), event.session.as_deref()))
        .count()
}

/// Returns the largest number of time-ordered events inside any 60-second span.
fn peak_events_per_minute(events: &[&WindowEvent]) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for end in 0..events.len() {
        while events[end].ts_ms - events[start].ts_ms >= 60_000 {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::jensen_shannon;
    use crate::event::Id;

    /// Reference weights over `groups` groups, from a scrambled sequence, with ties and zeros.
    fn weights(groups: u64, step: u64) -> BTreeMap<GroupKey, f64> {
        (0..groups)
            .map(|group| {
                let weight = ((group * step + 3) % 7) as f64 * 0.5;
                (GroupKey::Learned(Id::from(group * 13 % 29)), weight)
            })
            .collect()
    }

    #[test]
    fn sorted_divergence_matches_detector() {
        for (left_groups, right_groups) in [(0, 3), (3, 0), (1, 1), (5, 9), (12, 4), (20, 20)] {
            let left = ReferenceProfile::new(&weights(left_groups, 3)).unwrap();
            let right_profile = ReferenceProfile::new(&weights(right_groups, 5)).unwrap();
            let right: BTreeMap<GroupKey, f64> = right_profile.shares.iter().cloned().collect();
            let left_map: BTreeMap<GroupKey, f64> = left.shares.iter().cloned().collect();
            assert_eq!(
                jensen_shannon_sorted(left.view().shares(), &right_profile.shares).to_bits(),
                jensen_shannon(&left_map, &right).to_bits(),
                "{left_groups} and {right_groups} groups"
            );
        }
    }

    #[test]
    fn top_groups_follow_full_sort() {
        for (groups, step) in [(0, 1), (1, 2), (2, 3), (3, 3), (4, 5), (9, 2), (25, 4)] {
            let reference = weights(groups, step);
            let profile = ReferenceProfile::new(&reference).unwrap();
            let total: f64 = reference.values().sum();
            let mut ranked: Vec<(&GroupKey, f64)> = reference
                .iter()
                .filter(|(_, weight)| **weight > 0.0)
                .map(|(group, weight)| (group, weight / total))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let expected: Vec<GroupKey> = ranked
                .iter()
                .take(TOP_GROUPS)
                .map(|(group, _)| (*group).clone())
                .collect();
            assert_eq!(profile.top_groups(), expected.as_slice(), "{groups} groups");
            for (slot, (_, share)) in ranked.iter().take(TOP_GROUPS).enumerate() {
                assert_eq!(profile.reference_shares()[slot], *share, "{groups} groups");
            }
        }
    }

    #[test]
    fn peak_counts_events_inside_a_minute() {
        let make = |ts_ms: i64| {
            WindowEvent::from(Event::plain(
                ts_ms,
                1u64,
                1u64,
                1u64,
                crate::event::Behavior::View,
            ))
        };
        let events: Vec<WindowEvent> = [0, 10_000, 59_999, 60_000, 200_000]
            .into_iter()
            .map(make)
            .collect();
        let refs: Vec<&WindowEvent> = events.iter().collect();
        assert_eq!(peak_events_per_minute(&refs), 3);
        assert_eq!(
            count_sessions(
                &refs,
                SessionRule {
                    gap_secs: 60,
                    max_span_secs: 3600
                }
            ),
            2
        );
    }
}
