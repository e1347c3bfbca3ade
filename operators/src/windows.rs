//! Per-user windows of the model path, built on the worker that owns each user.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concatenate, Exchange};
use timely::dataflow::StreamVec;
use veer_models::attributes::UserAttributes;
use veer_models::ml::{ClosedWindow, UserHistory, WindowEvent, WindowSettings};
use veer_models::{Alert, GroupMap, Id, PopulationInfo};

use crate::capability::HeldCapability;
use crate::detect::Observation;
use crate::model_state::ModelTraffic;
use crate::profiles::AttributeRow;

/// A closed user window with the alerts the detector raised for its events.
#[derive(Clone, Debug)]
pub struct WindowRecord {
    /// The window, or `None` when closing it failed (the error is logged). Shared, because
    /// both the fit and the score operator read each window, and timely clones a record for
    /// every reader but the last.
    pub window: Option<Rc<ClosedWindow>>,
    /// The window's user, also when closing the window failed.
    pub user: Id,
    pub alerts: Vec<Alert>,
    /// The window's user when one of its events started a stay of the user
    /// ([`Observation::new_stay`]), so that the fusion rule starts afresh; `None` otherwise.
    pub new_stay_of: Option<Id>,
}

/// One input of [`build_user_windows`], merged into one stream.
#[derive(Clone, Debug)]
enum WindowInput {
    Observed(Observation),
    Population(PopulationInfo),
    Attributes((AttributeRow, u64, isize)),
}

/// Events, burst flag and alerts of a window that is still open.
#[derive(Default, Serialize, Deserialize)]
pub struct OpenWindow {
    events: Vec<WindowEvent>,
    burst: bool,
    alerts: Vec<Alert>,
    /// Whether one of the events started a stay of the user ([`Observation::new_stay`]).
    new_stay: bool,
}

/// Everything the operator keeps about one user.
#[derive(Default, Serialize, Deserialize)]
pub struct UserWindows {
    history: UserHistory,
    /// Open windows by start (Unix milliseconds), sorted by start. A user usually has one or
    /// two, so a vector is cheaper than a map. It is freed when the last window closes, as a map's
    /// node is. Serialised as a map would be by bincode: a length, then the pairs.
    open: Vec<(u64, OpenWindow)>,
    /// The user's attribute row from each event time (Unix milliseconds) on; `None` after the
    /// row was removed.
    attributes: BTreeMap<u64, Option<UserAttributes>>,
    /// Event time of the user's latest event, in Unix milliseconds. It is `None` before the
    /// user's first event and after an eviction, when the entry keeps only attribute rows.
    last_event_ms: Option<i64>,
}

/// State of [`build_user_windows`] on one worker.
#[derive(Default, Serialize, Deserialize)]
pub struct WindowsState {
    /// The users this worker owns.
    pub users: FxHashMap<Id, UserWindows>,
    /// Users with an open window, by window start.
    pub open: BTreeSet<(u64, Id)>,
    /// Group map updates received but not yet applied, by population window end.
    pub infos: BTreeMap<u64, PopulationInfo>,
    /// The group map as of the latest window closed.
    pub groups: GroupMap,
    /// Population window end of the latest update applied to `groups`, or 0.
    pub applied_window_end: u64,
    /// Whether a window failed to close, so later failures are not logged.
    pub failed: bool,
    /// Emptied event buffers of closed windows, reused by windows that open later. Not in
    /// checkpoints.
    #[serde(skip)]
    pub spare_events: Vec<Vec<WindowEvent>>,
    /// Event time of the latest eviction sweep, in Unix milliseconds, or 0 before the first.
    /// Not in checkpoints, so a restored state sweeps at its first chance.
    #[serde(skip)]
    pub swept_at_ms: i64,
    /// Number of sweeps that evicted at least one user since this state was created. Not in
    /// checkpoints. [`crate::score_windows`] drops evicted users' fusion state when it grows.
    #[serde(skip)]
    pub sweeps: u64,
}

/// Maximum number of emptied event buffers a worker keeps for reuse.
const MAX_SPARE_BUFFERS: usize = 1024;

/// Maximum capacity, in events, of a buffer kept for reuse. Larger buffers are freed, so the
/// spare buffers have room for at most 1024 x 64 events (about 4 MiB).
const MAX_SPARE_CAPACITY: usize = 64;

impl WindowsState {
    /// Returns the start of the earliest open window.
    pub fn earliest_open(&self) -> Option<u64> {
        self.open.first().map(|(start, _)| *start)
    }

    /// Returns whether `user` has a stay here: an event since the user's entry was created
    /// or last evicted.
    pub fn tracks(&self, user: &Id) -> bool {
        self.users
            .get(user)
            .is_some_and(|entry| entry.last_event_ms.is_some())
    }

    /// Returns the number of users with a stay here, whose window history is kept.
    pub fn tracked_users(&self) -> usize {
        self.users
            .values()
            .filter(|entry| entry.last_event_ms.is_some())
            .count()
    }

    /// Returns the end of the last population window received, applied or not, in Unix
    /// milliseconds, as [`crate::state::DetectState::last_window_end`] does.
    fn last_window_end(&self) -> u64 {
        crate::state::last_window_end(&self.infos, self.applied_window_end)
    }

    /// Evicts the users idle for longer than `idle_ms` at event time `now_ms`, at most once per
    /// [`crate::detect::sweep_interval_ms`] of event time, as the detector does. With `now_ms`
    /// `None` (the input has ended), evicts at the end of the last population window.
    fn sweep_idle(&mut self, now_ms: Option<i64>, idle_ms: i64) {
        let now_ms = match now_ms {
            Some(now_ms) => {
                let every = crate::detect::sweep_interval_ms(idle_ms);
                if now_ms.saturating_sub(self.swept_at_ms) < every {
                    return;
                }
                now_ms
            }
            // A live run advances event time by the wall clock, so an earlier sweep may have
            // run at a later time than this window end.
            None => (self.last_window_end().min(i64::MAX as u64) as i64).max(self.swept_at_ms),
        };
        self.swept_at_ms = now_ms;
        let before = self.users.len();
        let mut evicted = 0usize;
        self.users.retain(|_, entry| {
            let idle = entry
                .last_event_ms
                .is_some_and(|last| now_ms - last > idle_ms);
            // A user with an open window keeps it until the frontier passes the window's end.
            // A later sweep evicts the user.
            if !idle || !entry.open.is_empty() {
                return true;
            }
            evicted += 1;
            entry.history = UserHistory::default();
            entry.last_event_ms = None;
            !entry.attributes.is_empty()
        });
        if evicted > 0 {
            self.sweeps += 1;
            tracing::debug!(
                evicted,
                removed = before - self.users.len(),
                remaining = self.users.len(),
                now_ms,
                "evicted the window history of idle users"
            );
        }
    }
}

/// Shared handle to a worker's [`WindowsState`].
pub type WindowsHandle = Rc<std::cell::RefCell<WindowsState>>;

impl UserWindows {
    /// Returns the starts of the user's open windows, in Unix milliseconds.
    pub fn open_starts(&self) -> impl Iterator<Item = u64> + '_ {
        self.open.iter().map(|(start, _)| *start)
    }

    /// Returns the open window that starts at `start`, and whether it was opened now. A new
    /// window takes its event buffer from `spare_events` when one is there.
    fn open_window(
        &mut self,
        start: u64,
        spare_events: &mut Vec<Vec<WindowEvent>>,
    ) -> (&mut OpenWindow, bool) {
        // Events come in time order, so the window is almost always the last one.
        let found = match self.open.last() {
            Some((last, _)) if *last == start => Ok(self.open.len() - 1),
            Some((last, _)) if *last < start => Err(self.open.len()),
            None => Err(0),
            Some(_) => self.open.binary_search_by_key(&start, |(known, _)| *known),
        };
        match found {
            Ok(index) => (&mut self.open[index].1, false),
            Err(index) => {
                let window = OpenWindow {
                    events: spare_events.pop().unwrap_or_default(),
                    ..OpenWindow::default()
                };
                // Room for one window, where the vector's first growth would make room for 4.
                self.open.reserve_exact(1);
                self.open.insert(index, (start, window));
                (&mut self.open[index].1, true)
            }
        }
    }

    /// Removes and returns the open window that starts at `start`.
    fn take_window(&mut self, start: u64) -> Option<OpenWindow> {
        let index = self
            .open
            .binary_search_by_key(&start, |(known, _)| *known)
            .ok()?;
        let window = self.open.remove(index).1;
        if self.open.is_empty() {
            self.open = Vec::new();
        }
        Some(window)
    }

    /// Returns the attribute row in force at `time_ms`, and forgets the versions before it.
    fn attributes_at(&mut self, time_ms: u64) -> Option<UserAttributes> {
        let current = self.attributes.range(..=time_ms).next_back()?.0.to_owned();
        self.attributes = self.attributes.split_off(&current);
        self.attributes.get(&current).cloned().flatten()
    }
}

/// Cuts each user's observed events into windows of `window_ms` and emits each window, closed
/// by [`UserHistory::close`], once the frontier has passed its end.
///
/// `observations` must come from [`crate::detect_shifts_observed`], so that each user's events
/// are on the user's worker in time order. `population` is the broadcast group map update of
/// [`crate::population_groups`]: a window is closed with the groups in force during it, the
/// same ones the detector judged its events with. `attributes` carries the user attribute
/// table's changes as differential updates; a window gets the row in force at its last event.
///
/// Windows are emitted in order of their start, at a time at or before their first event, so
/// a frontier downstream at `t` means every window whose first event is before `t` has
/// arrived.
///
/// `state` may come from a checkpoint; its open windows are then emitted as if the operator
/// had buffered them. After each activation the operator stores its input frontier in
/// `traffic`, so a checkpoint can tell when it has taken every record before its cut.
///
/// A window in which a user starts a stay ([`Observation::new_stay`]) is closed with an empty
/// history, so a user back after an eviction starts afresh, as in the detector. With
/// `idle_ms`, a user without events for longer than `idle_ms` of event time, and without open
/// windows, loses the history (and the entry, unless it contains attribute rows). That user's
/// next event starts a stay, so the eviction changes no window, whenever the sweep runs. When
/// the input ends, the users idle at the end of the last population window are evicted, so
/// the users left are those the detector tracks at the end.
#[allow(clippy::too_many_arguments)]
pub fn build_user_windows<'scope>(
    observations: StreamVec<'scope, u64, Observation>,
    population: StreamVec<'scope, u64, PopulationInfo>,
    attributes: StreamVec<'scope, u64, (AttributeRow, u64, isize)>,
    window_ms: u64,
    settings: WindowSettings,
    idle_ms: Option<i64>,
    state: WindowsHandle,
    traffic: std::sync::Arc<ModelTraffic>,
) -> StreamVec<'scope, u64, WindowRecord> {
    let window_ms = window_ms.max(1);
    let scope = observations.scope();
    let peers = scope.peers();
    let attributes = attributes
        .exchange(move |update: &(AttributeRow, u64, isize)| {
            crate::route::user_owner(&update.0 .0, peers) as u64
        })
        .map(WindowInput::Attributes);
    let inputs = scope.concatenate([
        observations.map(WindowInput::Observed),
        population.map(WindowInput::Population),
        attributes,
    ]);
    let worker = scope.index();
    inputs.unary_frontier(Pipeline, "UserWindows", move |initial, _| {
        let mut held = HeldCapability::restored(initial, state.borrow().earliest_open());
        move |(input, frontier), output| {
            let mut guard = state.borrow_mut();
            let WindowsState {
                users,
                open,
                infos,
                groups,
                applied_window_end,
                failed,
                spare_events,
                ..
            } = &mut *guard;
            let port = output.output_index();
            input.for_each_stamp(|capability, data| {
                held.hold(&capability, port);
                for batch in data {
                    for item in batch.drain(..) {
                        match item {
                            WindowInput::Observed(observed) => {
                                let time = observed.event.ts_ms as u64;
                                let start = time - time % window_ms;
                                let entry = users.entry(observed.user.clone()).or_default();
                                entry.last_event_ms = Some(observed.event.ts_ms);
                                let (window, opened) = entry.open_window(start, spare_events);
                                if opened {
                                    open.insert((start, observed.user));
                                }
                                window.events.push(observed.event);
                                window.burst |= observed.burst;
                                window.new_stay |= observed.new_stay;
                                window.alerts.extend(observed.alerts);
                            }
                            WindowInput::Population(info) => {
                                infos.insert(info.window_end, info);
                            }
                            WindowInput::Attributes(((user, row), time, diff)) => {
                                let versions = &mut users.entry(user).or_default().attributes;
                                if diff > 0 {
                                    versions.insert(time, Some(row));
                                } else {
                                    versions.entry(time).or_insert(None);
                                }
                            }
                        }
                    }
                }
            });

            // Windows that end at or before the frontier are complete, and so are the group
            // map updates before them and the attribute changes up to their last event.
            let bound = frontier.frontier().first().copied();
            let mut closed = Vec::new();
            while let Some((start, _)) = open.first() {
                let start = *start;
                if bound.is_some_and(|bound| start + window_ms > bound) {
                    break;
                }
                while let Some(info) = infos.first_entry() {
                    if *info.key() > start {
                        break;
                    }
                    *applied_window_end = *info.key();
                    groups.apply(&info.remove());
                }
                while let Some((next, _)) = open.first() {
                    if *next != start {
                        break;
                    }
                    let (_, user) = open.pop_first().expect("checked above");
                    let entry = users.get_mut(&user).expect("every open user has an entry");
                    let window = entry.take_window(start).expect("listed as open");
                    let last_ms = window.events.last().map_or(0, |event| event.ts_ms as u64);
                    let row = entry.attributes_at(last_ms);
                    if window.new_stay {
                        entry.history = UserHistory::default();
                    }
                    let result = entry.history.close(
                        &user,
                        start,
                        &window.events,
                        window.burst,
                        groups,
                        row.as_ref(),
                        &settings,
                    );
                    let window_features = result.unwrap_or_else(|error| {
                        if !*failed {
                            tracing::error!(%error, %user, start, "failed to close a user window; its alerts go on without model signals");
                            *failed = true;
                        }
                        None
                    });
                    closed.push(WindowRecord {
                        window: window_features.map(Rc::new),
                        user: user.clone(),
                        alerts: window.alerts,
                        new_stay_of: window.new_stay.then(|| user.clone()),
                    });
                    let mut events = window.events;
                    if events.capacity() <= MAX_SPARE_CAPACITY
                        && spare_events.len() < MAX_SPARE_BUFFERS
                    {
                        events.clear();
                        spare_events.push(events);
                    }
                }
            }
            if !closed.is_empty() {
                if let Some(capability) = held.get() {
                    output.session(capability).give_iterator(closed.drain(..));
                }
            }
            // Every later event is at or after the frontier, because the detector sends each
            // at or before its time.
            if let Some(idle_ms) = idle_ms {
                guard.sweep_idle(bound.map(|bound| bound.min(i64::MAX as u64) as i64), idle_ms);
            }
            // The capability stays at or below every open window's first event, so each window
            // goes out at or before its first event time.
            held.settle(guard.earliest_open());
            traffic.record_windows_frontier(worker, bound);
        }
    })
}
