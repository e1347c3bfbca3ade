//! Per-user windows of the model path: the features of each closed window, the training rows
//! of a bootstrap period and the model signals of a scored window.
//!
//! A user's events are cut into event-time windows aligned to multiples of the window length.
//! [`UserHistory::close`] turns one window into a [`ClosedWindow`] with the group map in force
//! during that window, then folds the window into the user's decayed reference. Both the
//! dataflow operators and the single-threaded replay close windows through it, so their
//! features agree.

use serde::{Deserialize, Serialize};

use crate::attributes::UserAttributes;
use crate::event::Id;
use crate::fusion::{ModelSignals, WindowVerdict};
use crate::groups::{GroupKey, GroupMap};

use super::features::{
    checked_total, positive_shares, rank_top_groups, slot_shares_of, ReferenceView,
};
use super::{
    surprise, GroupDistribution, InterestPredictor, MlError, ModelSet, ReferenceProfile, Shares,
    TrainingRow, UpdatedShares, WindowConfig, WindowEvent, WindowFeatures, SHARE_SLOTS,
};

/// One closed window of one user, as the models see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClosedWindow {
    pub user: Id,
    /// Start of the window, in Unix milliseconds.
    pub start_ms: u64,
    /// Event time of the window's first and last event, in Unix milliseconds.
    pub first_ms: i64,
    pub last_ms: i64,
    /// Events in the window.
    pub events: u64,
    /// Whether the detector saw any of the window's events as part of a burst.
    pub burst: bool,
    pub features: WindowFeatures,
    /// This window's and the reference's shares over the top groups of the reference after
    /// this window, the input of the next window's interest prediction.
    pub updated_shares: UpdatedShares,
    /// This window's shares of the top groups of the reference before it, or `None` for the
    /// user's first window or a window without interest weight. The surprise signal compares
    /// them with the prediction from the window before.
    pub shares_vs_previous: Option<Shares>,
    /// Start (Unix milliseconds), features and updated shares of the user's previous window
    /// with events.
    pub previous: Option<(u64, WindowFeatures, UpdatedShares)>,
}

/// What a user's earlier windows leave behind: the decayed reference group weights and the
/// previous window.
///
/// Checkpoints keep the layout of the time when the previous window stored a full
/// [`ReferenceProfile`]. Writing one rebuilds the profile from the reference, and reading one
/// keeps only its top groups.
#[derive(Clone, Debug, Default)]
pub struct UserHistory {
    /// Decayed interest weight per group, sorted by group. Serialised as a map would be by
    /// bincode: a length, then the pairs.
    reference: Vec<(GroupKey, f64)>,
    previous: Option<PreviousWindow>,
}

/// The reference's top groups after the user's previous window, and that window's start,
/// features and updated shares. The reference has not changed since, so the top groups and
/// the reference weights give that window's [`ReferenceProfile`].
#[derive(Clone, Debug)]
struct PreviousWindow {
    top: Vec<GroupKey>,
    top_shares: Shares,
    /// Sum of the reference weights.
    total: f64,
    start_ms: u64,
    features: WindowFeatures,
    updated_shares: UpdatedShares,
}

/// The checkpoint layout of [`UserHistory`], with the previous window's profile as `P`.
#[derive(Serialize, Deserialize)]
struct StoredHistory<R, P> {
    reference: R,
    previous: Option<(P, u64, WindowFeatures, UpdatedShares)>,
}

impl Serialize for UserHistory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let previous = match &self.previous {
            Some(previous) => {
                let profile = ReferenceProfile::from_sorted(reference_entries(&self.reference))
                    .map_err(serde::ser::Error::custom)?;
                Some((
                    profile,
                    previous.start_ms,
                    previous.features.clone(),
                    previous.updated_shares,
                ))
            }
            None => None,
        };
        StoredHistory {
            reference: &self.reference,
            previous,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UserHistory {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored =
            StoredHistory::<Vec<(GroupKey, f64)>, ReferenceProfile>::deserialize(deserializer)?;
        let previous = match stored.previous {
            Some((profile, start_ms, features, updated_shares)) => Some(PreviousWindow {
                top: profile.top_groups().to_vec(),
                top_shares: profile.reference_shares(),
                total: checked_total(reference_entries(&stored.reference))
                    .map_err(serde::de::Error::custom)?,
                start_ms,
                features,
                updated_shares,
            }),
            None => None,
        };
        Ok(UserHistory {
            reference: stored.reference,
            previous,
        })
    }
}

/// Settings of [`UserHistory::close`].
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSettings {
    pub features: WindowConfig,
    /// Per-window decay of a user's reference group weights, in 0..=1.
    pub reference_decay: f64,
}

impl UserHistory {
    /// Closes the user's window that starts at `start_ms`, with `groups` as they were during
    /// the window and `attributes` as they were at its last event. Returns `None` for a window
    /// without events, which leaves the history unchanged.
    pub fn close(
        &mut self,
        user: &Id,
        start_ms: u64,
        events: &[WindowEvent],
        burst: bool,
        groups: &GroupMap,
        attributes: Option<&UserAttributes>,
        settings: &WindowSettings,
    ) -> Result<Option<ClosedWindow>, MlError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(None);
        };
        // The reference has not changed since the previous window ranked its top groups, so
        // the profile is read from the weights in place.
        let mut top = Vec::new();
        let (total, top_shares) = match &self.previous {
            Some(previous) => (previous.total, previous.top_shares),
            None => {
                let total = checked_total(reference_entries(&self.reference))?;
                (
                    total,
                    rank_top_groups(positive_shares(&self.reference, total), &mut top),
                )
            }
        };
        let profile = ReferenceView {
            weights: if total > 0.0 { &self.reference } else { &[] },
            total,
            top: self
                .previous
                .as_ref()
                .map_or(&top, |previous| &previous.top),
            top_shares,
        };
        let mut event_groups = Vec::with_capacity(events.len());
        let distribution = GroupDistribution::with_event_groups(events, groups, &mut event_groups);
        let features = profile
            .window_features_of(events, &distribution, &settings.features)?
            .with_attributes(attributes);
        let shares_vs_previous = self
            .previous
            .as_ref()
            .and_then(|previous| slot_shares_of(&previous.top, &distribution));
        self.add_to_reference(events, &distribution, &event_groups);
        for (_, weight) in self.reference.iter_mut() {
            *weight *= settings.reference_decay;
        }

        let total = checked_total(reference_entries(&self.reference))?;
        // The previous window's top groups are replaced, so their vector is reused.
        let previous = match self.previous.take() {
            Some(previous) => {
                top = previous.top;
                Some((
                    previous.start_ms,
                    previous.features,
                    previous.updated_shares,
                ))
            }
            None => None,
        };
        let reference_shares = rank_top_groups(positive_shares(&self.reference, total), &mut top);
        let updated_shares = UpdatedShares {
            window: slot_shares_of(&top, &distribution).unwrap_or([0.0; SHARE_SLOTS]),
            reference: reference_shares,
        };
        self.previous = Some(PreviousWindow {
            top,
            top_shares: reference_shares,
            total,
            start_ms,
            features: features.clone(),
            updated_shares,
        });
        Ok(Some(ClosedWindow {
            user: user.clone(),
            start_ms,
            first_ms: first.ts_ms,
            last_ms: last.ts_ms,
            events: events.len() as u64,
            burst,
            features,
            updated_shares,
            shares_vs_previous,
            previous,
        }))
    }
}

impl UserHistory {
    /// Adds each event's interest weight to its group's reference weight, in event order.
    /// `event_groups` gives each event with interest weight its group's index in
    /// `distribution`, as [`GroupDistribution::with_event_groups`] returns it.
    fn add_to_reference(
        &mut self,
        events: &[WindowEvent],
        distribution: &GroupDistribution,
        event_groups: &[usize],
    ) {
        // A group new to the reference starts at 0. The window's groups come in group order,
        // so an insertion never moves the positions found before it.
        let window_groups = distribution.groups();
        let mut positions = Vec::with_capacity(window_groups.len());
        for (group, _) in window_groups {
            let position = match self
                .reference
                .binary_search_by(|(known, _)| known.cmp(group))
            {
                Ok(position) => position,
                Err(position) => {
                    self.reference.insert(position, (group.clone(), 0.0));
                    position
                }
            };
            positions.push(position);
        }
        let weights = events
            .iter()
            .map(|event| event.behavior.interest_weight())
            .filter(|weight| *weight > 0.0);
        for (weight, group) in weights.zip(event_groups) {
            self.reference[positions[*group]].1 += weight;
        }
    }
}

/// Returns the reference's entries in the form [`ReferenceProfile::from_sorted`] takes.
fn reference_entries(
    reference: &[(GroupKey, f64)],
) -> impl Iterator<Item = (&GroupKey, &f64)> + Clone {
    reference.iter().map(|(group, weight)| (group, weight))
}

/// Builds the training rows of the windows that start before `bootstrap_end_ms`.
///
/// `windows` must be sorted by user and start. A row's target is the next window's shares of
/// its reference's top groups when the user has events in the adjacent window (`start_ms +
/// window_ms`), and `None` otherwise, so every target is known one window after the row's own.
pub fn training_rows(
    windows: &[ClosedWindow],
    window_ms: u64,
    bootstrap_end_ms: u64,
) -> Vec<TrainingRow> {
    training_rows_in(windows, window_ms, (0, bootstrap_end_ms))
}

/// Builds the training rows of the windows whose start is in `span` (start inclusive, end
/// exclusive), as [`training_rows`] does.
pub(super) fn training_rows_in(
    windows: &[ClosedWindow],
    window_ms: u64,
    span: (u64, u64),
) -> Vec<TrainingRow> {
    let (from, until) = span;
    let mut rows = Vec::new();
    for (index, window) in windows.iter().enumerate() {
        if window.start_ms < from || window.start_ms >= until {
            continue;
        }
        let next_shares = windows
            .get(index + 1)
            .filter(|next| next.user == window.user)
            .filter(|next| next.start_ms == window.start_ms + window_ms)
            .and_then(|next| next.shares_vs_previous);
        rows.push(TrainingRow {
            features: window.features.clone(),
            updated_shares: window.updated_shares,
            next_shares,
        });
    }
    rows
}

/// Scores a window: anomaly scores, segments of the window and of the one before, and the
/// surprise of its shares against the interest model's prediction from the window before.
pub fn score_window(model_set: &ModelSet, window: &ClosedWindow) -> Result<ModelSignals, MlError> {
    score_window_batch(model_set, &[window])
        .pop()
        .expect("one result per window")
}

/// Scores windows as [`score_window`] does and returns one result per window, in order.
///
/// Each window's model input is computed once and serves its segment and anomaly scores, and
/// the anomaly scores of all windows are computed at once, which keeps each isolation tree in
/// the cache. Every result is the same as from [`score_window`] alone.
pub fn score_window_batch(
    model_set: &ModelSet,
    windows: &[&ClosedWindow],
) -> Vec<Result<ModelSignals, MlError>> {
    let prepared: Vec<Result<(Vec<f64>, ModelSignals), MlError>> = windows
        .iter()
        .map(|window| prepare_signals(model_set, window))
        .collect();
    batch_over_inputs(prepared, |inputs| {
        model_set.anomaly_scores_of_inputs(inputs)
    })
    .into_iter()
    .map(|result| {
        let (mut signals, scores) = result?;
        signals.isolation_forest = scores.isolation_forest;
        signals.one_class_svm = scores.one_class_svm;
        Ok(signals)
    })
    .collect()
}

/// Runs `batch` once over the model inputs of the prepared windows without an error, and
/// returns each window's value with its batch result, in order.
///
/// An invalid input fails the whole batch, so on failure each input goes through `batch`
/// alone, to keep the error with its window.
fn batch_over_inputs<T, R>(
    prepared: Vec<Result<(Vec<f64>, T), MlError>>,
    batch: impl Fn(&[&[f64]]) -> Result<Vec<R>, MlError>,
) -> Vec<Result<(T, R), MlError>> {
    let inputs: Vec<&[f64]> = prepared
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .map(|(input, _)| input.as_slice())
        .collect();
    let mut results = batch(&inputs).ok().map(Vec::into_iter);
    prepared
        .into_iter()
        .map(|result| {
            let (input, value) = result?;
            let output = match results.as_mut() {
                Some(results) => results.next().expect("one batch result per valid input"),
                None => batch(&[input.as_slice()])?
                    .pop()
                    .expect("one batch result per input"),
            };
            Ok((value, output))
        })
        .collect()
}

/// The outcome of screening one window with [`screen_window_batch`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Screened {
    /// The window is not anomalous: its anomaly score is below the threshold, or no threshold
    /// applies. Only its segment was computed.
    Quiet { segment: usize },
    /// The window's anomaly score reaches the threshold, so the fusion rule needs all its
    /// signals from [`score_window_batch`].
    Anomalous,
}

/// Screens windows that raised no alert: computes each one's segment and whether its anomaly
/// score reaches `anomaly_threshold` (`None` when anomalies are not used), and returns one
/// result per window, in order.
///
/// For such a window the fusion rule only reads the segment and whether the window is
/// anomalous. So the interest prediction and surprise are left out, and the one-class SVM
/// only scores the windows whose isolation forest score reaches the threshold. Both outcomes
/// are the same as from [`score_window_batch`]. Unlike it, screening does not report errors of the
/// steps it leaves out.
pub fn screen_window_batch(
    model_set: &ModelSet,
    windows: &[&ClosedWindow],
    anomaly_threshold: Option<f64>,
) -> Vec<Result<Screened, MlError>> {
    let prepared: Vec<Result<(Vec<f64>, usize), MlError>> = windows
        .iter()
        .map(|window| {
            let input = model_set.model_input(&window.features)?;
            let segment = model_set.segment_of_input(&input)?;
            Ok((input, segment))
        })
        .collect();
    let Some(threshold) = anomaly_threshold else {
        return prepared
            .into_iter()
            .map(|result| result.map(|(_, segment)| Screened::Quiet { segment }))
            .collect();
    };
    batch_over_inputs(prepared, |inputs| {
        model_set.anomalous_inputs(inputs, threshold)
    })
    .into_iter()
    .map(|result| {
        let (segment, anomalous) = result?;
        Ok(if anomalous {
            Screened::Anomalous
        } else {
            Screened::Quiet { segment }
        })
    })
    .collect()
}

/// Returns a window's model input and its signals other than the anomaly scores, which are
/// left at 0.
fn prepare_signals(
    model_set: &ModelSet,
    window: &ClosedWindow,
) -> Result<(Vec<f64>, ModelSignals), MlError> {
    let input = model_set.model_input(&window.features)?;
    let segment = model_set.segment_of_input(&input)?;
    let mut surprise_value = None;
    let mut segment_before = None;
    if let Some((_, previous, previous_shares)) = &window.previous {
        let previous_input = model_set.model_input(previous)?;
        let before = model_set.segment_of_input(&previous_input)?;
        segment_before = Some(before);
        if let Some(observed) = window.shares_vs_previous {
            let predicted = model_set.predict_interest_from_input(
                previous_shares,
                &previous_input,
                before,
                InterestPredictor::Forest,
            )?;
            surprise_value = Some(surprise(&predicted, &observed)?);
        }
    }
    let signals = ModelSignals {
        isolation_forest: 0.0,
        one_class_svm: 0.0,
        surprise: surprise_value,
        segment,
        segment_before,
    };
    Ok((input, signals))
}

/// Returns the fusion rule's view of a window with its signals.
pub fn verdict(window: &ClosedWindow, signals: Option<ModelSignals>) -> WindowVerdict {
    WindowVerdict {
        user: window.user.clone(),
        last_ts: window.last_ms.div_euclid(1000),
        first_ts: window.first_ms.div_euclid(1000),
        events: window.events,
        burst: window.burst,
        signals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Behavior, Event};

    fn view(category: u64, ts_ms: i64) -> WindowEvent {
        WindowEvent::from(Event::plain(
            ts_ms,
            1u64,
            category,
            category * 10,
            Behavior::View,
        ))
    }

    fn settings() -> WindowSettings {
        WindowSettings {
            features: WindowConfig::default(),
            reference_decay: 0.9,
        }
    }

    #[test]
    fn empty_window_closes_to_none() {
        let mut history = UserHistory::default();
        let closed = history
            .close(
                &Id::from(1u64),
                0,
                &[],
                false,
                &GroupMap::default(),
                None,
                &settings(),
            )
            .unwrap();
        assert!(closed.is_none());
        assert!(history.previous.is_none());
    }

    #[test]
    fn second_window_sees_the_first() {
        let mut history = UserHistory::default();
        let user = Id::from(1u64);
        let groups = GroupMap::default();
        let first = history
            .close(
                &user,
                0,
                &[view(5, 10), view(5, 20)],
                false,
                &groups,
                None,
                &settings(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(first.previous, None);
        assert_eq!(first.shares_vs_previous, None);
        assert_eq!((first.first_ms, first.last_ms, first.events), (10, 20, 2));
        let second = history
            .close(
                &user,
                1000,
                &[view(6, 1500)],
                true,
                &groups,
                None,
                &settings(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(second.previous.as_ref().map(|(start, ..)| *start), Some(0));
        let shares = second
            .shares_vs_previous
            .expect("shares against the first window");
        assert_eq!(
            shares[0], 0.0,
            "category 5 is absent from the second window"
        );
        assert!(second.burst);
    }

    /// Windows over categories 1-6 with views, carts, buys and removals, so that a group leaves
    /// the top, ties and new groups occur.
    fn varied_windows() -> Vec<(u64, Vec<WindowEvent>)> {
        let mut windows = Vec::new();
        for index in 0..12u64 {
            let start = index * 1000;
            let mut events = Vec::new();
            for slot in 0..(index % 4 + 1) {
                let category = (index * 7 + slot * 3) % 6 + 1;
                let behavior = match (index + slot) % 5 {
                    0 => Behavior::Cart,
                    1 => Behavior::Buy,
                    2 => Behavior::RemoveFromCart,
                    _ => Behavior::View,
                };
                let ts_ms = (start + slot * 10) as i64;
                events.push(WindowEvent::from(Event::plain(
                    ts_ms,
                    1u64,
                    category,
                    category * 10,
                    behavior,
                )));
            }
            windows.push((start, events));
        }
        windows
    }

    #[test]
    fn features_match_a_copied_profile() {
        // Decay 0 leaves a reference of zero weights, which reads as no history.
        for decay in [0.9, 0.5, 0.0] {
            let settings = WindowSettings {
                features: WindowConfig::default(),
                reference_decay: decay,
            };
            let groups = GroupMap::default();
            let mut history = UserHistory::default();
            for (start, events) in varied_windows() {
                let reference: std::collections::BTreeMap<GroupKey, f64> =
                    history.reference.iter().cloned().collect();
                let profile = ReferenceProfile::new(&reference).unwrap();
                let distribution = GroupDistribution::of(&events, &groups);
                let expected = profile
                    .window_features_of(&events, &distribution, &settings.features)
                    .unwrap();
                let closed = history
                    .close(
                        &Id::from(1u64),
                        start,
                        &events,
                        false,
                        &groups,
                        None,
                        &settings,
                    )
                    .unwrap()
                    .unwrap();
                let bits = |features: &WindowFeatures| -> Vec<u64> {
                    features
                        .values()
                        .iter()
                        .map(|value| value.to_bits())
                        .collect()
                };
                assert_eq!(
                    bits(&closed.features),
                    bits(&expected),
                    "window {start}, decay {decay}"
                );
                let previous = history.previous.as_ref().unwrap();
                let updated =
                    ReferenceProfile::from_sorted(reference_entries(&history.reference)).unwrap();
                assert_eq!(previous.top, updated.top_groups(), "window {start}");
                assert_eq!(
                    previous.top_shares,
                    updated.reference_shares(),
                    "window {start}"
                );
            }
        }
    }

    #[test]
    fn checkpoint_keeps_the_profile_layout() {
        let settings = settings();
        let groups = GroupMap::default();
        let user = Id::from(1u64);
        let windows = varied_windows();
        let (last, earlier) = windows.split_last().unwrap();
        let mut history = UserHistory::default();
        for (start, events) in earlier {
            history
                .close(&user, *start, events, false, &groups, None, &settings)
                .unwrap();
        }

        // The layout of a history that kept its previous window's full profile.
        let previous = history.previous.as_ref().unwrap();
        let reference: std::collections::BTreeMap<GroupKey, f64> =
            history.reference.iter().cloned().collect();
        let stored = StoredHistory {
            reference: &history.reference,
            previous: Some((
                ReferenceProfile::new(&reference).unwrap(),
                previous.start_ms,
                previous.features.clone(),
                previous.updated_shares,
            )),
        };
        let bytes = bincode::serialize(&history).unwrap();
        assert_eq!(bytes, bincode::serialize(&stored).unwrap());

        let mut resumed: UserHistory = bincode::deserialize(&bytes).unwrap();
        let (start, events) = last;
        let expected = history
            .close(&user, *start, events, false, &groups, None, &settings)
            .unwrap();
        let closed = resumed
            .close(&user, *start, events, false, &groups, None, &settings)
            .unwrap();
        assert_eq!(closed, expected);
        assert!(closed.unwrap().previous.is_some());
    }

    #[test]
    fn training_targets_need_the_adjacent_window() {
        let mut history = UserHistory::default();
        let user = Id::from(1u64);
        let groups = GroupMap::default();
        let mut windows = Vec::new();
        for (start, ts) in [(0, 10), (1000, 1010), (3000, 3010)] {
            let closed = history
                .close(
                    &user,
                    start,
                    &[view(5, ts)],
                    false,
                    &groups,
                    None,
                    &settings(),
                )
                .unwrap()
                .unwrap();
            windows.push(closed);
        }
        let rows = training_rows(&windows, 1000, 10_000);
        assert_eq!(rows.len(), 3);
        assert!(
            rows[0].next_shares.is_some(),
            "window 1000 follows window 0"
        );
        assert!(rows[1].next_shares.is_none(), "window 2000 has no events");
        assert!(rows[2].next_shares.is_none(), "no later window");
        assert_eq!(training_rows(&windows, 1000, 1000).len(), 1);
    }
}
