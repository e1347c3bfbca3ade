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

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use veer_models::session::SessionRule;
use veer_models::{AlertKind, Event, Id, PopulationDelta};
use veer_operators::state::{
    CooccurrenceState, DetectState, OrderState, PopulationState, SinkState, TrackedUser,
};
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
}

/// Encodes one worker's state.
pub fn encode_part<S: Serialize>(
    state: &WorkerState<S>,
    stats: &DetectStats,
    tally: &AlertTally,
) -> Result<Vec<u8>, bincode::Error> {
    let order = state.order.borrow();
    let cooccurrence = state.cooccurrence.borrow();
    let population = state.population.borrow();
    let detect = state.detect.borrow();
    let sink = state.sink.borrow();
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
    };
    super::file::encode_payload(&part)
}

/// The state of every old worker merged, ready to be split among new workers.
pub struct Restored<S> {
    users: Vec<(Id, TrackedUser<S>)>,
    detect_view: DetectState<S>,
    pending: Vec<Event>,
    cooccurrence: CooccurrenceState,
    population: PopulationState,
    sink: SinkState,
    duplicates: u64,
    evicted: u64,
    stats: StatCounts,
    alerts: BTreeMap<AlertKind, u64>,
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
        };
        let mut least_advanced: Option<(u64, usize)> = None;
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
            } = part;
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
    pub fn split(self, workers: usize) -> Vec<WorkerPart<S>> {
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
                }
            })
            .collect();
        for (user, tracked) in self.users {
            parts[owner(&user)].detect.users.insert(user, tracked);
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
        let state: WorkerState<u64> = WorkerState::new(SessionRule::default(), GroupConfig::default());
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
        let tracked = TrackedUser {
            last_event_ms: 1_511_700_000_000,
            state: Box::new(42),
            last_alert: Some(Box::new(alert.clone())),
        };
        state
            .detect
            .borrow_mut()
            .users
            .insert(Id::from(7u64), tracked);

        let bytes = encode_part(&state, &DetectStats::default(), &AlertTally::default())
            .expect("the state encodes");
        let part: WorkerPart<u64> =
            super::super::file::decode_payload(&bytes).expect("the state decodes");
        // Resumed with three workers, the user lands on one of them with its alert.
        let parts = Restored::merge(vec![part]).split(3);
        let restored: Vec<&TrackedUser<u64>> = parts
            .iter()
            .filter_map(|part| part.detect.users.get(&Id::from(7u64)))
            .collect();

        assert_eq!(restored.len(), 1);
        assert_eq!(*restored[0].state, 42);
        assert_eq!(restored[0].last_alert.as_deref(), Some(&alert));
    }
}
