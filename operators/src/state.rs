//! Operator state held outside the operators, so the worker loop can read, snapshot, restore
//! and evict it between steps.
//!
//! Each stateful operator of the `veer run` graph takes one handle ([`Rc<RefCell<_>>`]) to its
//! state. The operator borrows it mutably only while it runs; the worker borrows it between
//! `step` calls. Both run on the worker's thread, so the borrows never overlap.
//!
//! A handle may be created with restored content (see [`WorkerState`]): each operator then
//! keeps its initial capability at the earliest time of what it buffers, so buffered records
//! can still be sent on after a restore.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use veer_models::groups::SessionCounter;
use veer_models::session::SessionRule;
use veer_models::{
    Alert, DeltaSizes, Event, GroupConfig, GroupMap, Id, PopulationDelta, PopulationInfo,
    PopulationModel,
};

use crate::profiles::CoreRecorder;
use crate::release::ReleaseBuffer;
use crate::user_map::UserMap;

/// One user's entry in the detect operator: the detector's state and the user's activity.
///
/// The user map keeps each entry boxed, so that a map slot is a pointer and its free slots
/// cost no state (a detector state is hundreds of bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackedUser<S> {
    /// The user's id, the key of the entry in [`UserMap`]. It is the first field so that the
    /// map's bincode form is that of a map from id to the other fields.
    pub user: Id,
    /// Event time of the user's latest event, in Unix milliseconds.
    pub last_event_ms: i64,
    /// The detector's per-user state.
    pub state: S,
    /// The user's latest alert, for `GET /users/{id}`; boxed because few users have one.
    pub last_alert: Option<Box<Alert>>,
}

/// State of [`crate::detect_shifts`] on one worker: the per-user detector states and the
/// population view the detectors read.
///
/// Read API for other parts of the program: [`DetectState::user`] looks up one user,
/// [`DetectState::users`] iterates the users this worker owns (in no particular order),
/// [`DetectState::tracked_users`] and [`DetectState::evicted_users`] count them, and
/// [`DetectState::groups`] is the group map applied so far.
#[derive(Debug, Serialize, Deserialize)]
pub struct DetectState<S> {
    /// Per-user entries of the users this worker owns.
    pub users: UserMap<S>,
    /// Learned groups and trends applied so far, in window order.
    pub groups: GroupMap,
    /// End of the latest population window applied to `groups`, in Unix milliseconds.
    pub applied_window_end: u64,
    /// Population infos received but not yet applied, by window end.
    pub infos: BTreeMap<u64, PopulationInfo>,
    /// Events waiting for the frontiers.
    pub pending: ReleaseBuffer,
    /// Users removed for inactivity since the start of the run.
    pub evicted: u64,
    /// Event time of the latest eviction sweep, in Unix milliseconds.
    pub swept_at_ms: i64,
    /// Each user's profile core after each event, when profiles are on.
    #[serde(skip, default = "no_recorder")]
    pub cores: Option<CoreRecorder<S>>,
}

/// Returns no recorder, for a restored state: the profile operator installs one.
fn no_recorder<S>() -> Option<CoreRecorder<S>> {
    None
}

impl<S> Default for DetectState<S> {
    fn default() -> Self {
        DetectState {
            users: UserMap::default(),
            groups: GroupMap::default(),
            applied_window_end: 0,
            infos: BTreeMap::new(),
            pending: ReleaseBuffer::default(),
            evicted: 0,
            swept_at_ms: i64::MIN,
            cores: None,
        }
    }
}

impl<S> DetectState<S> {
    /// Returns the detector state of `user`, if this worker tracks that user.
    pub fn user(&self, user: &Id) -> Option<&S> {
        self.users.get(user).map(|tracked| &tracked.state)
    }

    /// Returns the tracked entry of `user`, with the time of the user's latest event.
    pub fn tracked(&self, user: &Id) -> Option<&TrackedUser<S>> {
        self.users.get(user)
    }

    /// Iterates the users this worker tracks, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = (&Id, &S)> {
        self.users
            .iter()
            .map(|tracked| (&tracked.user, &tracked.state))
    }

    /// Returns the number of users this worker tracks now.
    pub fn tracked_users(&self) -> usize {
        self.users.len()
    }

    /// Returns the number of users removed for inactivity on this worker.
    pub fn evicted_users(&self) -> u64 {
        self.evicted
    }

    /// Returns the end of the last population window this worker has received, applied or
    /// not, in Unix milliseconds. Every worker receives every window's info, so once the input
    /// has ended this is the end of the newest event's window on every worker.
    pub fn last_window_end(&self) -> u64 {
        last_window_end(&self.infos, self.applied_window_end)
    }

    /// Returns the group map that the detectors on this worker read.
    pub fn groups(&self) -> &GroupMap {
        &self.groups
    }
}

/// Returns the end of the last population window received, in Unix milliseconds: the latest
/// key of `infos` (infos not yet applied), or `applied_window_end` when that is later.
pub(crate) fn last_window_end(
    infos: &BTreeMap<u64, PopulationInfo>,
    applied_window_end: u64,
) -> u64 {
    infos
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        .max(applied_window_end)
}

/// Shared handle to a worker's [`DetectState`].
pub type DetectHandle<S> = Rc<RefCell<DetectState<S>>>;

/// State of [`crate::order_by_event_time`]: events waiting for the frontier.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OrderState {
    /// Events not yet released.
    pub pending: ReleaseBuffer,
    /// Exact duplicates dropped so far.
    pub duplicates: u64,
}

/// State of [`crate::session_cooccurrence`]: open sessions and the counts of open windows.
#[derive(Debug, Serialize, Deserialize)]
pub struct CooccurrenceState {
    /// Each user's open session.
    pub counter: SessionCounter,
    /// Counts of windows that the frontier has not passed yet, by window end.
    pub open: BTreeMap<u64, PopulationDelta>,
    /// Sizes of the latest closed window's counts, for the maps of the next window. Checkpoints
    /// leave it out, so a restored state starts with empty maps.
    #[serde(skip)]
    last_sizes: DeltaSizes,
}

impl CooccurrenceState {
    /// Creates an empty state that splits sessions by `rule`.
    pub fn new(rule: SessionRule) -> Self {
        CooccurrenceState {
            counter: SessionCounter::new(rule),
            open: BTreeMap::new(),
            last_sizes: DeltaSizes::default(),
        }
    }

    /// Adds one event, in its user's time order, to the counts of its window of `window_ms`.
    pub fn count(&mut self, event: &Event, window_ms: u64) {
        let end = crate::window_end(event.ts_ms as u64, window_ms);
        let sizes = self.last_sizes;
        let delta = self
            .open
            .entry(end)
            .or_insert_with(|| PopulationDelta::with_sizes(end, sizes));
        self.counter.count(event, delta);
    }

    /// Removes and returns the counts of the earliest window that ends at or before `bound`
    /// (a frontier's time, `None` once the input is complete).
    pub fn pop_closed(&mut self, bound: Option<u64>) -> Option<PopulationDelta> {
        let entry = self.open.first_entry()?;
        if bound.is_some_and(|bound| bound < *entry.key()) {
            return None;
        }
        let delta = entry.remove();
        self.last_sizes = delta.sizes();
        Some(delta)
    }

    /// Returns the end of the earliest window with counts.
    pub fn earliest_open(&self) -> Option<u64> {
        self.open.keys().next().copied()
    }
}

/// State of [`crate::population_groups`]: the population model (on the last worker only) and
/// the window counts that wait for the frontier.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PopulationState {
    /// Cumulative co-occurrence and trend history.
    pub model: PopulationModel,
    /// Summed counts of windows not yet added to the model, by window end.
    pub pending: BTreeMap<u64, PopulationDelta>,
}

impl PopulationState {
    /// Creates an empty state with the given group settings.
    pub fn new(config: GroupConfig) -> Self {
        PopulationState {
            model: PopulationModel::new(config),
            pending: BTreeMap::new(),
        }
    }

    /// Returns whether no window has reached this state, as on every worker but the one that
    /// keeps the model.
    pub fn is_empty(&self) -> bool {
        self.model.windows_seen() == 0 && self.pending.is_empty()
    }
}

/// State of [`crate::write_alerts`]: alerts waiting for their second to complete.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SinkState {
    /// Alerts by the last millisecond of their event-time second.
    pub pending: BTreeMap<u64, Vec<Alert>>,
}

/// Handles to the state of every stateful operator on one worker.
pub struct WorkerState<S> {
    pub order: Rc<RefCell<OrderState>>,
    pub cooccurrence: Rc<RefCell<CooccurrenceState>>,
    pub population: Rc<RefCell<PopulationState>>,
    pub detect: DetectHandle<S>,
    pub sink: Rc<RefCell<SinkState>>,
}

impl<S> WorkerState<S> {
    /// Creates empty state for a worker.
    pub fn new(session_rule: SessionRule, groups: GroupConfig) -> Self {
        WorkerState {
            order: Rc::default(),
            cooccurrence: Rc::new(RefCell::new(CooccurrenceState::new(session_rule))),
            population: Rc::new(RefCell::new(PopulationState::new(groups))),
            detect: Rc::new(RefCell::new(DetectState::default())),
            sink: Rc::default(),
        }
    }
}

impl<S> Clone for WorkerState<S> {
    fn clone(&self) -> Self {
        WorkerState {
            order: self.order.clone(),
            cooccurrence: self.cooccurrence.clone(),
            population: self.population.clone(),
            detect: self.detect.clone(),
            sink: self.sink.clone(),
        }
    }
}
