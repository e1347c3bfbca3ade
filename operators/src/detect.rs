//! The drift/alert operator: per-user detectors fed in event-time order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::{Alert, Detector, Event, GroupMap, Id, PopulationInfo};

use rustc_hash::FxHashMap;

use crate::capability::HeldCapability;
use crate::release::ReleaseBuffer;

/// Per-worker counts that the run summary reports.
#[derive(Clone, Debug, Default)]
pub struct DetectStats {
    /// Events fed to detectors.
    pub events: u64,
    /// Distinct users seen.
    pub users: u64,
    /// Group map updates applied.
    pub population_updates: u64,
    /// User and time (Unix seconds) of every event fed to a detector, kept only when set
    /// to `Some` before the run, for scoring delays in events.
    pub timeline: Option<Vec<(Id, i64)>>,
}

/// Feeds each user's events to a detector and emits its alerts.
///
/// `events` must already be routed by user and ordered (see [`crate::order_by_event_time`]);
/// `population` is the broadcast output of [`crate::population_groups`]. An event is
/// processed only once both frontiers have passed what it depends on: its own time on
/// `events`, and on `population` the start of its window, so that it sees exactly the
/// groups and trends of all earlier windows. That makes every alert independent of the number
/// of workers and of how fast each input arrives.
///
/// # Examples
///
/// Any [`Detector`] plugs in; this one alerts on every buy.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use timely::dataflow::operators::{Inspect, ToStream};
/// use veer_models::{Alert, AlertKind, Behavior, Detector, Event, GroupConfig, GroupMap, Id};
/// use veer_operators::{detect_shifts, population_groups, session_cooccurrence, DetectStats};
///
/// struct EveryBuy;
///
/// impl Detector for EveryBuy {
///     type State = ();
///     fn observe(&self, _: &mut (), event: &Event, _: &GroupMap, alerts: &mut Vec<Alert>) {
///         if event.behavior == Behavior::Buy {
///             alerts.push(Alert {
///                 user: event.user.clone(),
///                 kind: AlertKind::Anomaly,
///                 ts: event.ts_secs(),
///                 onset_ts: event.ts_secs(),
///                 score: 1.0,
///                 from: Vec::new(),
///                 to: Vec::new(),
///                 signals: Vec::new(),
///                 events_since_onset: 1,
///                 segment_before: None,
///                 segment_after: None,
///             });
///         }
///     }
/// }
///
/// let view = |user: u64, category: u64, ts_ms: i64| Event {
///     ts_ms,
///     user: Id::from(user),
///     category: Id::from(category),
///     item: Id::from(category * 100),
///     behavior: Behavior::View,
///     topic: None,
///     price: None,
///     brand: None,
///     dwell_ms: None,
///     session: None,
///     line: 0,
/// };
/// let (alerts, stats) = timely::execute_directly(move |worker| {
///     let stats = Rc::new(RefCell::new(DetectStats::default()));
///     let alerts = Rc::new(RefCell::new(Vec::new()));
///     let (counts, seen) = (stats.clone(), alerts.clone());
///     worker.dataflow::<u64, _, _>(move |scope| {
///         let buy = Event { behavior: Behavior::Buy, ..view(2, 7, 9_000) };
///         let events = vec![view(1, 5, 1_000), buy, view(2, 7, 3_000)].to_stream(scope);
///         let deltas = session_cooccurrence(events.clone(), 3_600_000, 1_800_000);
///         let population = population_groups(deltas, GroupConfig::default());
///         detect_shifts(events, population, EveryBuy, 3_600_000, counts)
///             .inspect(move |alert| seen.borrow_mut().push(alert.clone()));
///     });
///     while worker.step() {}
///     let alerts = alerts.borrow().clone();
///     let stats = stats.borrow().clone();
///     (alerts, stats)
/// });
/// assert_eq!(alerts.len(), 1);
/// assert_eq!(alerts[0].user, Id::from(2u64));
/// assert_eq!(stats.users, 2);
/// assert_eq!(stats.events, 3);
/// ```
pub fn detect_shifts<'scope, D: Detector>(
    events: StreamVec<'scope, u64, Event>,
    population: StreamVec<'scope, u64, PopulationInfo>,
    detector: D,
    window_ms: u64,
    stats: Rc<RefCell<DetectStats>>,
) -> StreamVec<'scope, u64, Alert> {
    events.binary_frontier(
        population,
        Pipeline,
        Pipeline,
        "DetectShifts",
        move |_, _| {
            let mut users: FxHashMap<Id, D::State> = FxHashMap::default();
            let mut groups = GroupMap::default();
            let mut pending = ReleaseBuffer::default();
            let mut infos: BTreeMap<u64, PopulationInfo> = BTreeMap::new();
            let mut held = HeldCapability::default();
            let mut alerts: Vec<Alert> = Vec::new();
            move |(events_in, events_frontier), (population_in, population_frontier), output| {
                let port = output.output_index();
                events_in.for_each_stamp(|capability, data| {
                    held.hold(&capability, port);
                    for batch in data {
                        pending.extend(batch.drain(..));
                    }
                });
                population_in.for_each_stamp(|_, data| {
                    for batch in data {
                        for info in batch.drain(..) {
                            infos.insert(info.window_end, info);
                        }
                    }
                });

                // An event may go once its own time is complete and the population info of
                // every window before its own has arrived.
                let events_bound = events_frontier.frontier().first().copied();
                let population_bound = population_frontier.frontier().first().copied();
                let ready = pending.release(|time| {
                    let window_start = time - time % window_ms;
                    events_bound.is_none_or(|bound| time < bound)
                        && population_bound.is_none_or(|bound| window_start < bound)
                });

                let mut stats = stats.borrow_mut();
                for event in ready {
                    let time = event.ts_ms as u64;
                    let window_start = time - time % window_ms;
                    // Infos without new groups keep the previous ones, so each is applied in
                    // window order.
                    while let Some(info) = infos.first_entry() {
                        if *info.key() > window_start {
                            break;
                        }
                        groups.apply(&info.remove());
                        stats.population_updates += 1;
                    }
                    stats.events += 1;
                    if let Some(timeline) = &mut stats.timeline {
                        timeline.push((event.user.clone(), event.ts_secs()));
                    }
                    let state = users.entry(event.user.clone()).or_insert_with(|| {
                        stats.users += 1;
                        D::State::default()
                    });
                    detector.observe(state, &event, &groups, &mut alerts);
                }
                if !alerts.is_empty() {
                    if let Some(capability) = held.get() {
                        output.session(capability).give_iterator(alerts.drain(..));
                    }
                }
                held.settle(pending.earliest());
            }
        },
    )
}
