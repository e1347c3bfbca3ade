//! Contents of a checkpoint, and the split of N old workers' state among M new ones.
//!
//! Each worker serializes its own operator state ([`WorkerPartRef`]) at the cut; worker 0
//! adds the run's metadata ([`CheckpointMeta`]) and writes one file. On resume,
//! [`Restored::split`] merges the old parts and hands each new worker the users that route to
//! it ([`veer_operators::route::user_owner`], as the exchange by user does), so the worker
//! count may change.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use veer_models::fusion::UserFusion;
use veer_models::session::SessionRule;
use veer_models::{AlertKind, Event, Id, PopulationDelta};
use veer_operators::fit::FitState;
use veer_operators::model_state::{ModelState, ModelTraffic};
use veer_operators::score::ScoreState;
use veer_operators::segments::{restore_segment, save_segments, SavedSegment};
use veer_operators::state::{
    CooccurrenceState, DetectState, OrderState, PopulationState, SinkState, TrackedUser,
};
use veer_operators::versions::{ModelVersions, SavedVersions};
use veer_operators::windows::WindowsState;
use veer_operators::{AlertTally, DetectStats, WorkerState};

/// Where the feeder stood at the cut.
///
/// Every event before `cut_ms` has been processed and no later one has entered the dataflow.
/// The feeder's own buffer (events read but not yet released) is not stored: a resume reads
/// the input again from the start, and replays the first `events_read` events through the
/// same watermark logic without sending those before `cut_ms`, which rebuilds that buffer,
/// the late-event counts and the dead-letter records exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPosition {
    /// Input time at the cut, in Unix milliseconds; never a population window boundary.
    pub cut_ms: u64,
    /// Events taken from the source so far, in source order (arrival replay); for a sorted
    /// replay, the events sent.
    pub events_read: u64,
    /// Events sent into the dataflow so far.
    pub events_sent: u64,
    /// Whether the input is replayed sorted by event time.
    pub sorted: bool,
    /// Hash of the events sent, in order, to detect a different input on resume.
    pub sent_hash: u64,
}

/// Run metadata of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Sequence number, increasing through a run and across resumes.
    pub sequence: u64,
    /// Wall-clock time of writing, in Unix milliseconds.
    pub created_unix_ms: u64,
    /// Worker threads of the run that wrote it.
    pub workers: u32,
    /// Detector name (`shift` or `baseline`).
    pub detector: String,
    /// Settings that change results, as JSON, compared on resume.
    pub settings: String,
    /// Input names, compared on resume.
    pub inputs: Vec<String>,
    /// Where the feeder stood.
    pub feed: FeedPosition,
    /// Alerts written to the alert output before the cut.
    pub alerts_written: u64,
    /// Settings of the model path that change results, as JSON, or `None` for a run without
    /// `--models`; compared on resume.
    pub models: Option<String>,
}

/// A whole checkpoint file's payload: metadata and one encoded part per worker.
#[derive(Serialize, Deserialize)]
pub struct CheckpointFile {
    pub meta: CheckpointMeta,
    /// Each worker's [`WorkerPartRef`], encoded with the checkpoint's bincode options.
    pub parts: Vec<Vec<u8>>,
}

/// Counts of the detect operator kept across a resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatCounts {
    pub events: u64,
    pub users: u64,
    pub population_updates: u64,
}

/// One worker's state, borrowed for writing; [`WorkerPart`] reads the same layout.
#[derive(Serialize)]
pub struct WorkerPartRef<'a, S> {
    pub order: &'a OrderState,
    pub cooccurrence: &'a CooccurrenceState,
    pub population: &'a PopulationState,
    pub detect: &'a DetectState<S>,
    pub sink: &'a SinkState,
    pub stats: StatCounts,
    pub alerts: BTreeMap<AlertKind, u64>,
    pub models: Option<ModelPartRef<'a>>,
}

/// One worker's model path state, borrowed for writing; [`ModelPart`] reads the same layout.
#[derive(Serialize)]
pub struct ModelPartRef<'a> {
    pub windows: &'a WindowsState,
    /// Worker 0's only, where the fits run.
    pub fit: Option<&'a FitState>,
    /// Worker 0's only, because every worker has the same versions at a cut.
    pub versions: Option<SavedVersions>,
    pub fusion: &'a FxHashMap<Id, UserFusion>,
    pub segments: Vec<SavedSegment>,
}

/// One worker's model path state as read back, or as handed to a new worker on resume.
#[derive(Default, Deserialize)]
pub struct ModelPart {
    pub windows: WindowsState,
    pub fit: Option<FitState>,
    pub versions: Option<SavedVersions>,
    pub fusion: FxHashMap<Id, UserFusion>,
    pub segments: Vec<SavedSegment>,
}

impl ModelPart {
    /// Checks that the stored models and segments can be read, as [`ModelPart::into_state`]
    /// reads them.
    pub fn check(&self) -> Result<(), String> {
        if let Some(saved) = &self.versions {
            ModelVersions::from_saved(saved.clone())
                .map_err(|error| format!("stored model versions: {error}"))?;
        }
        for saved in &self.segments {
            restore_segment(saved.clone())?;
        }
        Ok(())
    }

    /// Builds a worker's model path state from its restored part. Fails when the stored
    /// models or segments cannot be read, which [`ModelPart::check`] detects beforehand.
    pub fn into_state(self, traffic: std::sync::Arc<ModelTraffic>) -> Result<ModelState, String> {
        let state = ModelState::new(traffic);
        *state.windows.borrow_mut() = self.windows;
        *state.fit.borrow_mut() = self.fit.unwrap_or_default();
        let versions = match self.versions {
            Some(saved) => ModelVersions::from_saved(saved)
                .map_err(|error| format!("stored model versions: {error}"))?,
            None => ModelVersions::default(),
        };
        *state.score.borrow_mut() = ScoreState {
            versions,
            users: self.fusion,
        };
        let mut segments = state.segments.borrow_mut();
        for saved in self.segments {
            let (user, latest) = restore_segment(saved)?;
            segments.insert(user, latest);
        }
        drop(segments);
        Ok(state)
    }
}

/// One worker's state as read back.
#[derive(Deserialize)]
#[serde(bound = "S: DeserializeOwned")]
pub struct WorkerPart<S> {
    pub order: OrderState,
    pub cooccurrence: CooccurrenceState,
    pub population: PopulationState,
    pub detect: DetectState<S>,
    pub sink: SinkState,
    pub stats: StatCounts,
    pub alerts: BTreeMap<AlertKind, u64>,
    pub models: Option<ModelPart>,
}

/// Encodes one worker's state; `models` is the worker's model path state and whether it is
/// worker 0, with `--models`.
pub fn encode_part<S: Serialize>(
    state: &WorkerState<S>,
    stats: &DetectStats,
    tally: &AlertTally,
    models: Option<(&ModelState, bool)>,
) -> Result<Vec<u8>, String> {
    let order = state.order.borrow();
    let cooccurrence = state.cooccurrence.borrow();
    let population = state.population.borrow();
    let detect = state.detect.borrow();
    let sink = state.sink.borrow();
    let windows;
    let fit;
    let score;
    let model_part = match models {
        Some((models, first)) => {
            windows = models.windows.borrow();
            fit = models.fit.borrow();
            score = models.score.borrow();
            let versions = match first {
                true => Some(
                    score
                        .versions
                        .to_saved()
                        .map_err(|error| format!("model versions: {error}"))?,
                ),
                false => None,
            };
            Some(ModelPartRef {
                windows: &windows,
                fit: first.then_some(&*fit),
                versions,
                fusion: &score.users,
                segments: save_segments(&models.segments.borrow()),
            })
        }
        None => None,
    };
    let part = WorkerPartRef {
        order: &order,
        cooccurrence: &cooccurrence,
        population: &population,
        detect: &detect,
        sink: &sink,
        stats: StatCounts {
            events: stats.events,
            users: stats.users,
            population_updates: stats.population_updates,
        },
        alerts: tally.by_kind.clone(),
        models: model_part,
    };
    super::file::encode_payload(&part).map_err(|error| error.to_string())
}

/// The state of every old worker merged, ready to be split among new workers.
pub struct Restored<S> {
    users: Vec<Box<TrackedUser<S>>>,
    detect_view: DetectState<S>,
    pending: Vec<Event>,
    cooccurrence: CooccurrenceState,
    population: PopulationState,
    sink: SinkState,
    duplicates: u64,
    evicted: u64,
    stats: StatCounts,
    alerts: BTreeMap<AlertKind, u64>,
    models: Option<ModelPart>,
}

impl<S> Restored<S> {
    /// Merges the parts of all old workers.
    ///
    /// Broadcast population infos reach every worker, but each worker applies them lazily,
    /// when an event of a later window arrives. The least advanced worker's group map and
    /// queue of unapplied infos therefore contain everything any worker has seen, and every
    /// new worker starts from them: group map versions count applied infos, so a user whose
    /// cache was built on a more advanced worker is rebuilt exactly when that worker would
    /// have rebuilt it.
    pub fn merge(parts: Vec<WorkerPart<S>>) -> Self {
        let session_rule = parts.first().map_or_else(SessionRule::default, |part| {
            part.cooccurrence.counter.session_rule()
        });
        let mut restored = Restored {
            users: Vec::new(),
            detect_view: DetectState::default(),
            pending: Vec::new(),
            cooccurrence: CooccurrenceState::new(session_rule),
            population: PopulationState::default(),
            sink: SinkState::default(),
            duplicates: 0,
            evicted: 0,
            stats: StatCounts::default(),
            alerts: BTreeMap::new(),
            models: None,
        };
        let mut least_advanced: Option<(u64, usize)> = None;
        let mut least_advanced_windows: Option<u64> = None;
        let mut views = Vec::new();
        for (index, part) in parts.into_iter().enumerate() {
            let WorkerPart {
                order,
                cooccurrence,
                population,
                mut detect,
                sink,
                stats,
                alerts,
                models,
            } = part;
            if let Some(part) = models {
                let merged = restored.models.get_or_insert_with(ModelPart::default);
                merge_models(merged, part, &mut least_advanced_windows);
            }
            restored.pending.extend(order.pending.into_events());
            restored.duplicates += order.duplicates;
            restored.cooccurrence.counter.absorb(cooccurrence.counter);
            for (end, delta) in cooccurrence.open {
                merge_delta(&mut restored.cooccurrence.open, end, delta);
            }
            // One worker keeps the population model: the last one, or worker 0 in checkpoints
            // written before the model moved there.
            if !population.is_empty() {
                restored.population = population;
            }
            // Only worker 0 writes alerts.
            if index == 0 {
                restored.sink = sink;
                restored.alerts = alerts;
            }
            restored.users.extend(detect.users.drain());
            restored
                .pending
                .extend(std::mem::take(&mut detect.pending).into_events());
            restored.evicted += detect.evicted;
            restored.stats.events += stats.events;
            restored.stats.users += stats.users;
            restored.stats.population_updates += stats.population_updates;
            if least_advanced.is_none_or(|(applied, _)| detect.applied_window_end < applied) {
                least_advanced = Some((detect.applied_window_end, index));
            }
            views.push(detect);
        }
        if let Some((_, index)) = least_advanced {
            restored.detect_view = views.swap_remove(index);
        }
        restored
    }

    /// Splits the merged state among `workers` new workers, in worker order.
    pub fn split(mut self, workers: usize) -> Vec<WorkerPart<S>> {
        let mut models = self
            .models
            .take()
            .map(|merged| split_models(merged, workers));
        let owner = |user: &Id| veer_operators::route::user_owner(user, workers);
        let session_rule = self.cooccurrence.counter.session_rule();
        let mut parts: Vec<WorkerPart<S>> = (0..workers)
            .map(|index| {
                let mut counter = self.cooccurrence.counter.clone();
                counter.retain_users(|user| owner(user) == index);
                let mut cooccurrence = CooccurrenceState::new(session_rule);
                cooccurrence.counter = counter;
                let detect = DetectState {
                    groups: self.detect_view.groups.clone(),
                    infos: self.detect_view.infos.clone(),
                    applied_window_end: self.detect_view.applied_window_end,
                    swept_at_ms: self.detect_view.swept_at_ms,
                    ..DetectState::default()
                };
                WorkerPart {
                    order: OrderState::default(),
                    cooccurrence,
                    population: PopulationState::default(),
                    detect,
                    sink: SinkState::default(),
                    stats: StatCounts::default(),
                    alerts: BTreeMap::new(),
                    models: models
                        .as_mut()
                        .map(|parts| std::mem::take(&mut parts[index])),
                }
            })
            .collect();
        for tracked in self.users {
            parts[owner(&tracked.user)].detect.users.insert(tracked);
        }
        // Events still buffered at the cut re-enter where their user's events are ordered.
        for event in self.pending {
            let index = owner(&event.user);
            parts[index].order.pending.extend(std::iter::once(event));
        }
        if let Some(last) = parts.last_mut() {
            last.population = self.population;
        }
        let first = &mut parts[0];
        first.cooccurrence.open = self.cooccurrence.open;
        first.sink = self.sink;
        first.order.duplicates = self.duplicates;
        first.detect.evicted = self.evicted;
        first.stats = self.stats;
        first.alerts = self.alerts;
        parts
    }
}

/// Builds a worker's operator state handles from its restored part.
pub fn into_state<S>(
    part: WorkerPart<S>,
) -> (WorkerState<S>, StatCounts, BTreeMap<AlertKind, u64>) {
    let state = WorkerState {
        order: Rc::new(RefCell::new(part.order)),
        cooccurrence: Rc::new(RefCell::new(part.cooccurrence)),
        population: Rc::new(RefCell::new(part.population)),
        detect: Rc::new(RefCell::new(part.detect)),
        sink: Rc::new(RefCell::new(part.sink)),
    };
    (state, part.stats, part.alerts)
}

/// Adds one old worker's model path state to `merged`. Window histories, fusion state and
/// segments are per user. The group map updates are taken from the least advanced worker, as
/// [`Restored::merge`] does for the detector, and the fit and the versions from worker 0.
fn merge_models(merged: &mut ModelPart, part: ModelPart, least_advanced: &mut Option<u64>) {
    let ModelPart {
        windows,
        fit,
        versions,
        fusion,
        segments,
    } = part;
    let WindowsState {
        users,
        open: _,
        infos,
        groups,
        applied_window_end,
        failed,
        spare_events: _,
        swept_at_ms: _,
        sweeps: _,
    } = windows;
    merged.windows.users.extend(users);
    merged.windows.failed |= failed;
    if least_advanced.is_none_or(|applied| applied_window_end < applied) {
        *least_advanced = Some(applied_window_end);
        merged.windows.infos = infos;
        merged.windows.groups = groups;
        merged.windows.applied_window_end = applied_window_end;
    }
    if fit.is_some() {
        merged.fit = fit;
    }
    if versions.is_some() {
        merged.versions = versions;
    }
    merged.fusion.extend(fusion);
    merged.segments.extend(segments);
}

/// Splits merged model path state among `workers` new workers, each user to its owner.
fn split_models(merged: ModelPart, workers: usize) -> Vec<ModelPart> {
    let owner = |user: &Id| veer_operators::route::user_owner(user, workers);
    let mut parts: Vec<ModelPart> = (0..workers)
        .map(|_| ModelPart {
            windows: WindowsState {
                infos: merged.windows.infos.clone(),
                groups: merged.windows.groups.clone(),
                applied_window_end: merged.windows.applied_window_end,
                failed: merged.windows.failed,
                ..WindowsState::default()
            },
            versions: merged.versions.clone(),
            ..ModelPart::default()
        })
        .collect();
    parts[0].fit = merged.fit;
    for (user, windows) in merged.windows.users {
        let part = &mut parts[owner(&user)].windows;
        for start in windows.open_starts() {
            part.open.insert((start, user.clone()));
        }
        part.users.insert(user, windows);
    }
    for (user, fusion) in merged.fusion {
        parts[owner(&user)].fusion.insert(user, fusion);
    }
    for segment in merged.segments {
        parts[owner(&segment.0)].segments.push(segment);
    }
    parts
}

fn merge_delta(open: &mut BTreeMap<u64, PopulationDelta>, end: u64, delta: PopulationDelta) {
    match open.entry(end) {
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(delta);
        }
        std::collections::btree_map::Entry::Occupied(mut slot) => slot.get_mut().merge(delta),
    }
}

#[cfg(test)]
mod tests {
    use veer_models::{Alert, GroupConfig};

    use super::*;

    #[test]
    fn last_alert_survives_checkpoint() {
        let state: WorkerState<u64> =
            WorkerState::new(SessionRule::default(), GroupConfig::default());
        let alert = Alert {
            user: Id::from(7u64),
            kind: AlertKind::InterestShift,
            ts: 1_511_700_000,
            onset_ts: 1_511_690_000,
            score: 0.5,
            from: Vec::new(),
            to: Vec::new(),
            signals: vec![("cusum".to_string(), 7.0)],
            events_since_onset: 6,
            segment_before: None,
            segment_after: None,
        };
        let tracked = Box::new(TrackedUser {
            user: Id::from(7u64),
            last_event_ms: 1_511_700_000_000,
            state: 42,
            last_alert: Some(Box::new(alert.clone())),
        });
        state
            .detect
            .borrow_mut()
            .users
            .insert(tracked);

        let bytes = encode_part(
            &state,
            &DetectStats::default(),
            &AlertTally::default(),
            None,
        )
        .expect("the state encodes");
        let part: WorkerPart<u64> =
            super::super::file::decode_payload(&bytes).expect("the state decodes");
        // Resumed with three workers, the user lands on one of them with its alert.
        let parts = Restored::merge(vec![part]).split(3);
        let restored: Vec<&TrackedUser<u64>> = parts
            .iter()
            .filter_map(|part| part.detect.tracked(&Id::from(7u64)))
            .collect();

        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].state, 42);
        assert_eq!(restored[0].last_alert.as_deref(), Some(&alert));
    }

    #[test]
    fn user_map_encodes_as_id_map() {
        let mut users = veer_operators::UserMap::default();
        users.insert(Box::new(TrackedUser {
            user: Id::from(7u64),
            last_event_ms: 1_511_700_000_000,
            state: 42u64,
            last_alert: None,
        }));
        let mut by_id = BTreeMap::new();
        by_id.insert(
            Id::from(7u64),
            (1_511_700_000_000i64, 42u64, None::<Box<Alert>>),
        );

        let encoded = super::super::file::encode_payload(&users).expect("the map encodes");
        let expected = super::super::file::encode_payload(&by_id).expect("the map encodes");
        assert_eq!(encoded, expected, "the bincode form of a map from id to entry");
    }
}
