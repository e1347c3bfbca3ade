//! Population-wide state: category co-occurrence per window, learned groups and trends.
//!
//! Every worker counts, for the users it owns, which categories each session touches
//! ([`session_cooccurrence`]). Once the frontier passes the end of a window, the window's
//! counts travel to the last worker, where [`population_groups`] adds them to one
//! [`PopulationModel`] in window order and emits the resulting [`PopulationInfo`] at the
//! window's end time. Broadcast to every worker, that info is what the detector reads for
//! events of later windows. Its cost is paid per window, not per event, but on a generated
//! stream of 9,000 users and 5,495 categories it took about a quarter of the run's CPU time.
//! With several workers, [`population_groups_on_thread`] moves it off the worker's thread.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::scheduling::SyncActivator;
use veer_models::{Event, Id, PopulationDelta, PopulationInfo, PopulationModel};

use crate::capability::HeldCapability;
use crate::state::{CooccurrenceState, PopulationState};

/// Returns the exclusive end, in milliseconds, of the window that contains `ts_ms`.
///
/// # Examples
///
/// ```
/// use veer_operators::window_end;
/// assert_eq!(window_end(0, 3_600_000), 3_600_000);
/// assert_eq!(window_end(3_600_000, 3_600_000), 7_200_000);
/// ```
pub fn window_end(ts_ms: u64, window_ms: u64) -> u64 {
    (ts_ms / window_ms + 1) * window_ms
}

/// Counts, per window, the sessions touching each category and each pair of categories.
///
/// Expects each user's events in time order on one worker, as [`crate::order_by_event_time`]
/// releases them. A session ends after the state's session gap without events or when the
/// input's session id changes.
///
/// # Examples
///
/// Four users who visit categories 10 and 11 in one session each: after the first hourly
/// window, 11 belongs to the group of 10.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use timely::dataflow::operators::{Inspect, ToStream};
/// use veer_models::{Behavior, Event, GroupConfig, Id};
/// use veer_operators::state::{CooccurrenceState, PopulationState};
/// use veer_operators::{population_groups, session_cooccurrence};
///
/// let view = |user: u64, category: u64, ts_ms: i64| {
///     Event::plain(ts_ms, user, category, category * 100, Behavior::View)
/// };
/// let infos = timely::execute_directly(move |worker| {
///     let infos = Rc::new(RefCell::new(Vec::new()));
///     let seen = infos.clone();
///     worker.dataflow::<u64, _, _>(move |scope| {
///         let events: Vec<Event> = (1..=4)
///             .flat_map(|user| [view(user, 10, 1_000), view(user, 11, 2_000)])
///             .collect();
///         let sessions = Rc::new(RefCell::new(CooccurrenceState::new(veer_models::session::SessionRule::default())));
///         let deltas = session_cooccurrence(events.to_stream(scope), 3_600_000, sessions);
///         let model = Rc::new(RefCell::new(PopulationState::new(GroupConfig::default())));
///         population_groups(deltas, model)
///             .inspect(move |info| seen.borrow_mut().push(info.clone()));
///     });
///     while worker.step() {}
///     let infos = infos.borrow().clone();
///     infos
/// });
/// assert_eq!(infos.len(), 1);
/// assert_eq!(infos[0].window_end, 3_600_000);
/// let groups = infos[0].groups.as_ref().expect("the first window sets the groups");
/// assert!(groups.contains(&(Id::from(11u64), Id::from(10u64))));
/// ```
pub fn session_cooccurrence<'scope>(
    events: StreamVec<'scope, u64, Event>,
    window_ms: u64,
    state: Rc<RefCell<CooccurrenceState>>,
) -> StreamVec<'scope, u64, PopulationDelta> {
    events.unary_frontier(Pipeline, "SessionCooccurrence", move |initial, _| {
        let mut held = HeldCapability::restored(initial, state.borrow().earliest_open());
        move |(input, frontier), output| {
            let port = output.output_index();
            let mut state = state.borrow_mut();
            input.for_each_stamp(|capability, data| {
                held.hold(&capability, port);
                for batch in data {
                    for event in batch.drain(..) {
                        state.count(&event, window_ms);
                    }
                }
            });

            let bound = frontier.frontier().first().copied();
            while let Some(delta) = state.pop_closed(bound) {
                if let Some(capability) = held.at(delta.window_end) {
                    output.session(&capability).give(delta);
                }
            }
            forget_closed_sessions(&mut state, bound);
            held.settle(state.earliest_open());
        }
    })
}

/// Forgets the open sessions that an event at `bound` (a frontier's time) or later would
/// close anyway.
///
/// Such sessions would be reset by the user's next event, so counts do not change. Dropping
/// them every half gap of event time, rather than once per window, keeps the table to the users
/// active in the last one and a half gaps.
pub(crate) fn forget_closed_sessions(state: &mut CooccurrenceState, bound: Option<u64>) {
    if let Some(now) = bound {
        state.counter.forget_closed_if_due(now as i64);
    }
}

/// Sums every worker's window counts on the last worker and emits the groups and trends after
/// each window, at the window's end time.
///
/// The last worker, not worker 0, keeps the model because worker 0 already reads the input
/// and writes the alerts alone. The model runs on the worker's own thread, between its other
/// operators.
///
/// # Examples
///
/// Four users who visit categories 10 and 11 in one session each: after the first hourly
/// window, 11 belongs to the group of 10.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use timely::dataflow::operators::{Inspect, ToStream};
/// use veer_models::{Behavior, Event, GroupConfig, Id};
/// use veer_operators::state::{CooccurrenceState, PopulationState};
/// use veer_operators::{population_groups, session_cooccurrence};
///
/// let view = |user: u64, category: u64, ts_ms: i64| {
///     Event::plain(ts_ms, user, category, category * 100, Behavior::View)
/// };
/// let infos = timely::execute_directly(move |worker| {
///     let infos = Rc::new(RefCell::new(Vec::new()));
///     let seen = infos.clone();
///     worker.dataflow::<u64, _, _>(move |scope| {
///         let events: Vec<Event> = (1..=4)
///             .flat_map(|user| [view(user, 10, 1_000), view(user, 11, 2_000)])
///             .collect();
///         let sessions = Rc::new(RefCell::new(CooccurrenceState::new(veer_models::session::SessionRule::default())));
///         let deltas = session_cooccurrence(events.to_stream(scope), 3_600_000, sessions);
///         let model = Rc::new(RefCell::new(PopulationState::new(GroupConfig::default())));
///         population_groups(deltas, model)
///             .inspect(move |info| seen.borrow_mut().push(info.clone()));
///     });
///     while worker.step() {}
///     let infos = infos.borrow().clone();
///     infos
/// });
/// assert_eq!(infos.len(), 1);
/// assert_eq!(infos[0].window_end, 3_600_000);
/// let groups = infos[0].groups.as_ref().expect("the first window sets the groups");
/// assert!(groups.contains(&(Id::from(11u64), Id::from(10u64))));
/// assert!(infos[0].trending.is_empty(), "one window sets no trend");
/// ```
pub fn population_groups<'scope>(
    deltas: StreamVec<'scope, u64, PopulationDelta>,
    state: Rc<RefCell<PopulationState>>,
) -> StreamVec<'scope, u64, PopulationInfo> {
    groups_operator(deltas, state, false)
}

/// Runs [`population_groups`] with the model on a thread of its own, which takes the model
/// out of `state` until the input ends.
///
/// With several workers on as many cores, the last worker no longer does the model's work
/// between its other operators. The operating system shares the cores between the model
/// thread and the workers, so every worker can own an equal share of the users. The infos are
/// the same as with [`population_groups`], in the same order.
///
/// The model returns to `state` once the frontier is empty, so a snapshot of `state` taken
/// while the run lasts has no model. Runs that write checkpoints must use
/// [`population_groups`].
pub fn population_groups_on_thread<'scope>(
    deltas: StreamVec<'scope, u64, PopulationDelta>,
    state: Rc<RefCell<PopulationState>>,
) -> StreamVec<'scope, u64, PopulationInfo> {
    groups_operator(deltas, state, true)
}

/// Builds the operator behind [`population_groups`] and [`population_groups_on_thread`].
fn groups_operator<'scope>(
    deltas: StreamVec<'scope, u64, PopulationDelta>,
    state: Rc<RefCell<PopulationState>>,
    own_thread: bool,
) -> StreamVec<'scope, u64, PopulationInfo> {
    let scope = deltas.scope();
    let last_worker = scope.peers() as u64 - 1;
    let on_last_worker = scope.index() as u64 == last_worker;
    deltas.unary_frontier(
        Exchange::new(move |_: &PopulationDelta| last_worker),
        "PopulationGroups",
        move |initial, operator| {
            let earliest = state.borrow().pending.keys().next().copied();
            let mut held = HeldCapability::restored(initial, earliest);
            let mut thread = (own_thread && on_last_worker).then(|| {
                let activator = scope.worker().sync_activator_for(operator.address.to_vec());
                let model = std::mem::take(&mut state.borrow_mut().model);
                ModelThread::spawn(model, activator)
            });
            move |(input, frontier), output| {
                let port = output.output_index();
                let mut guard = state.borrow_mut();
                let state = &mut *guard;
                input.for_each_stamp(|capability, data| {
                    held.hold(&capability, port);
                    for batch in data {
                        for delta in batch.drain(..) {
                            match state.pending.entry(delta.window_end) {
                                std::collections::btree_map::Entry::Vacant(slot) => {
                                    slot.insert(delta);
                                }
                                std::collections::btree_map::Entry::Occupied(mut slot) => {
                                    slot.get_mut().merge(delta);
                                }
                            }
                        }
                    }
                });

                let mut finished = Vec::new();
                while let Some(entry) = state.pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let delta = entry.remove();
                    match &mut thread {
                        Some(thread) => thread.submit(delta),
                        None => finished.push(state.model.add_window(&delta).clone()),
                    }
                }
                if let Some(running) = &mut thread {
                    running.collect(&mut finished);
                }
                for info in finished {
                    log_groups(&info);
                    if let Some(capability) = held.at(info.window_end) {
                        output.session(&capability).give(info);
                    }
                }

                let in_flight = thread.as_ref().and_then(ModelThread::oldest_in_flight);
                let pending = state.pending.keys().next().copied();
                let earliest = match (pending, in_flight) {
                    (Some(pending), Some(in_flight)) => Some(pending.min(in_flight)),
                    (pending, in_flight) => pending.or(in_flight),
                };
                if earliest.is_none() && frontier.is_empty() {
                    if let Some(finished) = thread.take() {
                        state.model = finished.join();
                    }
                }
                held.settle(earliest);
            }
        },
    )
}

/// Logs the sizes of the groups that `info` sets, if it sets any.
fn log_groups(info: &PopulationInfo) {
    let Some(groups) = &info.groups else { return };
    // Counting the group sizes hashes every grouped category after each change (about 4% of
    // the instructions of a 1-worker run on a 1-million-event file), so it is skipped when
    // the line would be filtered out.
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let mut sizes: HashMap<&Id, usize> = HashMap::new();
    for (_, representative) in groups {
        *sizes.entry(representative).or_default() += 1;
    }
    tracing::debug!(
        window_end = info.window_end,
        grouped_categories = groups.len(),
        groups = sizes.len(),
        largest_group = sizes.values().max().copied().unwrap_or(0),
        trending = info.trending.len(),
        "population groups changed"
    );
}

/// A thread that adds windows to a [`PopulationModel`] in the order they are submitted and
/// wakes the operator after each one.
struct ModelThread {
    deltas: Option<Sender<PopulationDelta>>,
    infos: Receiver<PopulationInfo>,
    /// Window ends submitted and not yet collected, oldest first.
    in_flight: VecDeque<u64>,
    handle: Option<JoinHandle<PopulationModel>>,
}

impl ModelThread {
    fn spawn(mut model: PopulationModel, activator: SyncActivator) -> ModelThread {
        let (delta_sender, deltas) = channel::<PopulationDelta>();
        let (info_sender, infos) = channel();
        let handle = std::thread::Builder::new()
            .name("veer-population".into())
            .spawn(move || {
                for delta in deltas {
                    let info = model.add_window(&delta).clone();
                    // A closed channel means the operator is gone: stop and return the model.
                    if info_sender.send(info).is_err() || activator.activate().is_err() {
                        break;
                    }
                }
                model
            })
            .expect("the operating system starts the population model thread");
        ModelThread {
            deltas: Some(delta_sender),
            infos,
            in_flight: VecDeque::new(),
            handle: Some(handle),
        }
    }

    fn submit(&mut self, delta: PopulationDelta) {
        self.in_flight.push_back(delta.window_end);
        let sent = self
            .deltas
            .as_ref()
            .is_some_and(|deltas| deltas.send(delta).is_ok());
        if !sent {
            self.stopped();
        }
    }

    /// Moves every info the thread has finished into `finished`, in window order.
    fn collect(&mut self, finished: &mut Vec<PopulationInfo>) {
        loop {
            match self.infos.try_recv() {
                Ok(info) => {
                    self.in_flight.pop_front();
                    finished.push(info);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    if !self.in_flight.is_empty() {
                        self.stopped();
                    }
                    return;
                }
            }
        }
    }

    fn oldest_in_flight(&self) -> Option<u64> {
        self.in_flight.front().copied()
    }

    /// Closes the thread's input and returns the model once the thread has added every window.
    fn join(mut self) -> PopulationModel {
        self.deltas = None;
        let handle = self.handle.take().expect("the thread is joined once");
        match handle.join() {
            Ok(model) => model,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Re-raises the panic that stopped the thread early.
    fn stopped(&mut self) -> ! {
        self.deltas = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => panic!("the population model thread stopped before adding every window"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use timely::dataflow::operators::{Inspect, ToStream};
    use veer_models::session::SessionRule;
    use veer_models::{Behavior, GroupConfig};

    /// Views of 40 users over 12 hourly windows, each session in two neighbouring
    /// categories of a family of five, so that groups form and change.
    fn events() -> Vec<Event> {
        let mut events = Vec::new();
        for user in 0..40u64 {
            for hour in 0..12i64 {
                let family = (user % 4) * 10 + (hour as u64 % 3) * 100;
                let first = family + (user + hour as u64) % 5;
                let ts_ms = hour * 3_600_000 + (user as i64) * 1_000;
                events.push(Event::plain(ts_ms, user, first, 1u64, Behavior::View));
                let second = family + (user + hour as u64 + 1) % 5;
                events.push(Event::plain(
                    ts_ms + 60_000,
                    user,
                    second,
                    2u64,
                    Behavior::View,
                ));
            }
        }
        events
    }

    /// Runs the population operators on `workers` workers and returns the infos of the last
    /// worker and the windows its model has seen after the run.
    fn run(workers: usize, on_thread: bool) -> (Vec<PopulationInfo>, u64) {
        let (infos, windows, _) = run_ordered(workers, on_thread, false);
        (infos, windows)
    }

    /// Runs [`run`]'s dataflow, ordering and counting with [`crate::order_and_count_sessions`]
    /// when `fused` is true, and also returns each worker's ordered events as (user, time).
    fn run_ordered(
        workers: usize,
        on_thread: bool,
        fused: bool,
    ) -> (Vec<PopulationInfo>, u64, Vec<Vec<(Id, i64)>>) {
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let infos = Rc::new(RefCell::new(Vec::new()));
            let ordered_events = Rc::new(RefCell::new(Vec::new()));
            let model = Rc::new(RefCell::new(PopulationState::new(GroupConfig::default())));
            let (seen, state) = (infos.clone(), model.clone());
            let seen_events = ordered_events.clone();
            worker.dataflow::<u64, _, _>(move |scope| {
                let mine: Vec<Event> = events()
                    .into_iter()
                    .enumerate()
                    .filter(|(at, _)| at % peers == index)
                    .map(|(_, event)| event)
                    .collect();
                let sessions =
                    Rc::new(RefCell::new(CooccurrenceState::new(SessionRule::default())));
                let order = Rc::new(RefCell::new(Default::default()));
                let (ordered, deltas) = if fused {
                    crate::order_and_count_sessions(
                        mine.to_stream(scope),
                        order,
                        3_600_000,
                        sessions,
                    )
                } else {
                    let ordered = crate::order_by_event_time(mine.to_stream(scope), order);
                    let deltas = session_cooccurrence(ordered.clone(), 3_600_000, sessions);
                    (ordered, deltas)
                };
                ordered.inspect(move |event| {
                    seen_events
                        .borrow_mut()
                        .push((event.user.clone(), event.ts_ms))
                });
                let infos = if on_thread {
                    population_groups_on_thread(deltas, state)
                } else {
                    population_groups(deltas, state)
                };
                infos.inspect(move |info| seen.borrow_mut().push(info.clone()));
            });
            while worker.step() {}
            let infos = infos.borrow().clone();
            let windows = model.borrow().model.windows_seen();
            let ordered = ordered_events.borrow().clone();
            (infos, windows, ordered)
        })
        .expect("timely starts");
        let results: Vec<_> = guards
            .join()
            .into_iter()
            .map(|result| result.expect("a worker does not panic"))
            .collect();
        let ordered = results
            .iter()
            .map(|(_, _, ordered)| ordered.clone())
            .collect();
        let (infos, windows, _) = results.last().cloned().expect("one result per worker");
        (infos, windows, ordered)
    }

    #[test]
    fn fused_order_and_count_match_chain() {
        for workers in [1, 2] {
            let (chain, chain_windows, chain_events) = run_ordered(workers, false, false);
            let (fused, fused_windows, fused_events) = run_ordered(workers, false, true);
            assert_eq!(chain.len(), 12, "one info per window");
            assert_eq!(fused, chain, "infos with {workers} workers");
            assert_eq!(fused_windows, chain_windows);
            assert_eq!(
                fused_events, chain_events,
                "ordered events with {workers} workers"
            );
            let released: usize = fused_events.iter().map(Vec::len).sum();
            assert_eq!(released, events().len(), "every event is released once");
        }
    }

    #[test]
    fn model_thread_matches_worker() {
        let (inline, inline_windows) = run(2, false);
        let (threaded, threaded_windows) = run(2, true);
        assert_eq!(inline.len(), 12, "one info per window");
        assert!(
            inline.iter().filter(|info| info.groups.is_some()).count() >= 2,
            "the groups change at least once after the first window"
        );
        assert_eq!(threaded, inline);
        assert_eq!(inline_windows, 12);
        assert_eq!(threaded_windows, 12, "the model returns from its thread");
    }

    #[test]
    fn model_thread_matches_one_worker() {
        let (one, _) = run(1, false);
        let (threaded, _) = run(3, true);
        assert_eq!(threaded, one);
    }
}
