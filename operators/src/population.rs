//! Population-wide state: category co-occurrence per window, learned groups and trends.
//!
//! Every worker counts, for the users it owns, which categories each session touches
//! ([`session_cooccurrence`]). Once the frontier passes the end of a window, the window's
//! counts travel to the last worker, where [`population_groups`] adds them to one
//! [`PopulationModel`] in window order and emits the resulting [`PopulationInfo`] at the
//! window's end time. Broadcast to every worker, that info is what the detector reads for
//! events of later windows. Its cost is paid per window, not per event.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::{Event, Id, PopulationDelta, PopulationInfo};

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
        let earliest = state.borrow().open.keys().next().copied();
        let mut held = HeldCapability::restored(initial, earliest);
        move |(input, frontier), output| {
            let port = output.output_index();
            let mut guard = state.borrow_mut();
            let state = &mut *guard;
            input.for_each_stamp(|capability, data| {
                held.hold(&capability, port);
                for batch in data {
                    for event in batch.drain(..) {
                        let end = window_end(event.ts_ms as u64, window_ms);
                        let delta = state.open.entry(end).or_insert_with(|| PopulationDelta {
                            window_end: end,
                            ..Default::default()
                        });
                        state.counter.count(event, delta);
                    }
                }
            });

            let mut closed = false;
            while let Some(entry) = state.open.first_entry() {
                if frontier.less_than(entry.key()) {
                    break;
                }
                let end = *entry.key();
                let delta = entry.remove();
                if let Some(capability) = held.at(end) {
                    output.session(&capability).give(delta);
                }
                closed = true;
            }
            // Sessions whose gap has passed would be reset by the next event anyway; dropping
            // them once per window keeps memory to the users active in the last gap.
            if closed {
                if let Some(now) = frontier.frontier().first() {
                    state.counter.forget_closed(*now as i64);
                }
            }
            held.settle(state.open.keys().next().copied());
        }
    })
}

/// Sums every worker's window counts on the last worker and emits the groups and trends after
/// each window, at the window's end time.
///
/// The last worker, not worker 0, keeps the model because worker 0 already reads the input
/// and writes the alerts alone. With 2 workers this spreads the serial work over both.
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
    let last_worker = deltas.scope().peers() as u64 - 1;
    deltas.unary_frontier(
        Exchange::new(move |_: &PopulationDelta| last_worker),
        "PopulationGroups",
        move |initial, _| {
            let earliest = state.borrow().pending.keys().next().copied();
            let mut held = HeldCapability::restored(initial, earliest);
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

                while let Some(entry) = state.pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let end = *entry.key();
                    let delta = entry.remove();
                    let info = state.model.add_window(&delta).clone();
                    if let Some(groups) = &info.groups {
                        let mut sizes: HashMap<&Id, usize> = HashMap::new();
                        for (_, representative) in groups {
                            *sizes.entry(representative).or_default() += 1;
                        }
                        tracing::debug!(
                            window_end = end,
                            grouped_categories = groups.len(),
                            groups = sizes.len(),
                            largest_group = sizes.values().max().copied().unwrap_or(0),
                            trending = info.trending.len(),
                            "population groups changed"
                        );
                    }
                    if let Some(capability) = held.at(end) {
                        output.session(&capability).give(info);
                    }
                }
                held.settle(state.pending.keys().next().copied());
            }
        },
    )
}
