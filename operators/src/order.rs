//! Routing by user and release of each user's events in a stable event-time order.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::Event;

use crate::capability::HeldCapability;
use crate::route::user_owner;
use crate::state::OrderState;

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
            let mut ready = state
                .pending
                .release(|time| bound.is_none_or(|bound| time < bound));
            let before = ready.len();
            ready.dedup_by(|later, earlier| later.same_content(earlier));
            state.duplicates += (before - ready.len()) as u64;
            if !ready.is_empty() {
                if let Some(capability) = held.get() {
                    output.session(capability).give_container(&mut ready);
                }
            }
            held.settle(state.pending.earliest());
        }
    })
}
