//! Routing by user and release of each user's events in a stable event-time order.

use std::cell::RefCell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::StreamVec;
use veer_models::{Event, PopulationDelta};

use crate::capability::HeldCapability;
use crate::population::forget_closed_sessions;
use crate::route::user_owner;
use crate::state::{CooccurrenceState, OrderState};

/// Exchanges events by user and releases them once the frontier has passed their time.
///
/// Each released batch is sorted by [`Event::processing_cmp`] (time, then the event's own
/// fields), so every user's events reach later operators in the same order whatever order
/// they arrived in and however many workers run. Exact duplicates (every field equal but the
/// line) are adjacent after the sort; all but the first are dropped and counted in the
/// state's `duplicates`.
///
/// Event timestamps are Unix milliseconds, and each record travels at a timely time at or
/// below its own `ts_ms`.
///
/// # Examples
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use timely::dataflow::operators::{Inspect, ToStream};
/// use veer_models::{Behavior, Event, Id};
/// use veer_operators::order_by_event_time;
/// use veer_operators::state::OrderState;
///
/// let view = |user: u64, category: u64, ts_ms: i64| {
///     Event::plain(ts_ms, user, category, category * 100, Behavior::View)
/// };
/// let (times, dropped) = timely::execute_directly(move |worker| {
///     let state = Rc::new(RefCell::new(OrderState::default()));
///     let times = Rc::new(RefCell::new(Vec::new()));
///     let (counter, seen) = (state.clone(), times.clone());
///     worker.dataflow::<u64, _, _>(move |scope| {
///         let events = vec![view(1, 5, 2_000), view(1, 5, 1_000), view(1, 5, 1_000)];
///         order_by_event_time(events.to_stream(scope), counter)
///             .inspect(move |event| seen.borrow_mut().push(event.ts_ms));
///     });
///     while worker.step() {}
///     let times = times.borrow().clone();
///     let dropped = state.borrow().duplicates;
///     (times, dropped)
/// });
/// assert_eq!(times, vec![1_000, 2_000]);
/// assert_eq!(dropped, 1);
/// ```
pub fn order_by_event_time<'scope>(
    events: StreamVec<'scope, u64, Event>,
    state: Rc<RefCell<OrderState>>,
) -> StreamVec<'scope, u64, Event> {
    let peers = events.scope().peers();
    // The owner's index is below `peers`, so timely's modulo or mask keeps it unchanged.
    let route = Exchange::new(move |event: &Event| user_owner(&event.user, peers) as u64);
    events.unary_frontier(route, "OrderByEventTime", move |initial, _| {
        let mut held = HeldCapability::restored(initial, state.borrow().pending.earliest());
        move |(input, frontier), output| {
            let port = output.output_index();
            let mut state = state.borrow_mut();
            input.for_each_stamp(|capability, data| {
                held.hold(&capability, port);
                for batch in data {
                    state.pending.extend(batch.drain(..));
                }
            });

            let bound = frontier.frontier().first().copied();
            let mut ready = release_deduplicated(&mut state, bound);
            if !ready.is_empty() {
                if let Some(capability) = held.get() {
                    output.session(capability).give_container(&mut ready);
                }
            }
            held.settle(state.pending.earliest());
        }
    })
}

/// Orders events as [`order_by_event_time`] does and counts their sessions as
/// [`crate::session_cooccurrence`] does, in one operator with two outputs: the ordered events
/// and the window counts.
///
/// The counter reads each released event before it leaves, so the ordered stream needs no
/// copy of every batch for a second reader. The outputs are those of the two operators in a
/// row: a window's counts leave once the input frontier has passed the window's end, when
/// every event before that end has been released and counted. Both states keep their types,
/// so checkpoints keep their format.
pub fn order_and_count_sessions<'scope>(
    events: StreamVec<'scope, u64, Event>,
    order: Rc<RefCell<OrderState>>,
    window_ms: u64,
    sessions: Rc<RefCell<CooccurrenceState>>,
) -> (
    StreamVec<'scope, u64, Event>,
    StreamVec<'scope, u64, PopulationDelta>,
) {
    let scope = events.scope();
    let peers = scope.peers();
    let route = Exchange::new(move |event: &Event| user_owner(&event.user, peers) as u64);
    let mut builder = OperatorBuilder::new("OrderAndCountSessions".to_owned(), scope);
    let mut input = builder.new_input(events, route);
    let (ordered_output, ordered) = builder.new_output();
    let (deltas_output, deltas) = builder.new_output();
    let mut ordered_output: OutputBuilder<_, CapacityContainerBuilder<Vec<Event>>> =
        OutputBuilder::from(ordered_output);
    let mut deltas_output: OutputBuilder<_, CapacityContainerBuilder<Vec<PopulationDelta>>> =
        OutputBuilder::from(deltas_output);
    builder.build(move |mut capabilities| {
        let deltas_initial = capabilities.pop().expect("a capability for the counts");
        let ordered_initial = capabilities.pop().expect("a capability for the events");
        let pending_earliest = order.borrow().pending.earliest();
        let mut held_ordered = HeldCapability::restored(ordered_initial, pending_earliest);
        // A window's counts need a capability at or below both the window's end and the times
        // of the events still buffered, whose windows may not have counts yet.
        let counts_earliest = |order: &OrderState, sessions: &CooccurrenceState| {
            let earliest = [order.pending.earliest(), sessions.earliest_open()];
            earliest.into_iter().flatten().min()
        };
        let restored = counts_earliest(&order.borrow(), &sessions.borrow());
        let mut held_deltas = HeldCapability::restored(deltas_initial, restored);
        move |frontiers| {
            let mut ordered_handle = ordered_output.activate();
            let mut deltas_handle = deltas_output.activate();
            let mut order = order.borrow_mut();
            let mut sessions = sessions.borrow_mut();
            input.for_each_stamp(|capability, data| {
                held_ordered.hold(&capability, ORDERED_PORT);
                held_deltas.hold(&capability, DELTAS_PORT);
                for batch in data {
                    order.pending.extend(batch.drain(..));
                }
            });

            let bound = frontiers[0].frontier().first().copied();
            let mut ready = release_deduplicated(&mut order, bound);
            for event in &ready {
                sessions.count(event, window_ms);
            }
            if !ready.is_empty() {
                if let Some(capability) = held_ordered.get() {
                    ordered_handle
                        .session(capability)
                        .give_container(&mut ready);
                }
            }
            held_ordered.settle(order.pending.earliest());

            while let Some(delta) = sessions.pop_closed(bound) {
                if let Some(capability) = held_deltas.at(delta.window_end) {
                    deltas_handle.session(&capability).give(delta);
                }
            }
            forget_closed_sessions(&mut sessions, bound);
            held_deltas.settle(counts_earliest(&order, &sessions));
        }
    });
    (ordered, deltas)
}

/// Output port of [`order_and_count_sessions`] for the ordered events.
const ORDERED_PORT: usize = 0;

/// Output port of [`order_and_count_sessions`] for the window counts.
const DELTAS_PORT: usize = 1;

/// Releases the buffered events before `bound` (a frontier's time, `None` once the input is
/// complete) in processing order, and drops exact duplicates, counting them in `duplicates`.
fn release_deduplicated(state: &mut OrderState, bound: Option<u64>) -> Vec<Event> {
    let mut ready = state
        .pending
        .release(|time| bound.is_none_or(|bound| time < bound));
    let before = ready.len();
    ready.dedup_by(|later, earlier| later.same_content(earlier));
    state.duplicates += (before - ready.len()) as u64;
    ready
}
