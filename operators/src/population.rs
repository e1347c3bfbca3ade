//! Population-wide state: category co-occurrence per window, learned groups and trends.
//!
//! Every worker counts, for the users it owns, which categories each session touches
//! ([`session_cooccurrence`]). Once the frontier passes the end of a window, the window's
//! counts travel to worker 0, where [`population_groups`] adds them to one
//! [`PopulationModel`] in window order and emits the resulting [`PopulationInfo`] at the
//! window's end time. Broadcast to every worker, that info is what the detector reads for
//! events of later windows. Its cost is paid per window, not per event.

use std::collections::{BTreeMap, HashMap};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::{Event, GroupConfig, Id, PopulationDelta, PopulationInfo, PopulationModel};

use crate::capability::HeldCapability;

/// Categories of one session kept for pair counting; later ones still count per category.
const SESSION_CATEGORIES: usize = 16;

/// The part of a user's session that co-occurrence counting needs.
struct OpenSession {
    last_ts_ms: i64,
    session_id: Option<Box<str>>,
    categories: Vec<Id>,
}

/// Returns the exclusive end, in milliseconds, of the window that contains `ts_ms`.
pub fn window_end(ts_ms: u64, window_ms: u64) -> u64 {
    (ts_ms / window_ms + 1) * window_ms
}

/// Counts, per window, the sessions touching each category and each pair of categories.
///
/// Expects each user's events in time order on one worker, as [`crate::order_by_event_time`]
/// releases them. A session ends after `session_gap_ms` without events or when the input's
/// session id changes.
pub fn session_cooccurrence<'scope>(
    events: StreamVec<'scope, u64, Event>,
    window_ms: u64,
    session_gap_ms: i64,
) -> StreamVec<'scope, u64, PopulationDelta> {
    events.unary_frontier(Pipeline, "SessionCooccurrence", move |_, _| {
        let mut sessions: HashMap<Id, OpenSession> = HashMap::new();
        let mut open: BTreeMap<u64, PopulationDelta> = BTreeMap::new();
        let mut held = HeldCapability::default();
        move |(input, frontier), output| {
            let port = output.output_index();
            input.for_each_stamp(|capability, data| {
                held.hold(&capability, port);
                for batch in data {
                    for event in batch.drain(..) {
                        if event.behavior.interest_weight() <= 0.0 {
                            continue;
                        }
                        let end = window_end(event.ts_ms as u64, window_ms);
                        let delta = open.entry(end).or_insert_with(|| PopulationDelta {
                            window_end: end,
                            ..Default::default()
                        });
                        count_event(&mut sessions, delta, event, session_gap_ms);
                    }
                }
            });

            while let Some(entry) = open.first_entry() {
                if frontier.less_than(entry.key()) {
                    break;
                }
                let end = *entry.key();
                let delta = entry.remove();
                if let Some(capability) = held.at(end) {
                    output.session(&capability).give(delta);
                }
            }
            held.settle(open.keys().next().copied());
        }
    })
}

fn count_event(
    sessions: &mut HashMap<Id, OpenSession>,
    delta: &mut PopulationDelta,
    event: Event,
    session_gap_ms: i64,
) {
    *delta.events.entry(event.category.clone()).or_default() += 1;
    let session = sessions.entry(event.user).or_insert_with(|| OpenSession {
        last_ts_ms: i64::MIN,
        session_id: None,
        categories: Vec::new(),
    });
    let gap_exceeded = event.ts_ms.saturating_sub(session.last_ts_ms) > session_gap_ms;
    let id_changed = event.session.is_some() && event.session != session.session_id;
    if gap_exceeded || id_changed {
        session.categories.clear();
        session.session_id = event.session;
    }
    session.last_ts_ms = event.ts_ms;
    if session.categories.contains(&event.category) {
        return;
    }
    *delta.sessions.entry(event.category.clone()).or_default() += 1;
    if session.categories.len() >= SESSION_CATEGORIES {
        return;
    }
    for other in &session.categories {
        let pair = if *other < event.category {
            (other.clone(), event.category.clone())
        } else {
            (event.category.clone(), other.clone())
        };
        *delta.pairs.entry(pair).or_default() += 1;
    }
    session.categories.push(event.category);
}

/// Sums every worker's window counts on worker 0 and emits the groups and trends after each
/// window, at the window's end time.
pub fn population_groups<'scope>(
    deltas: StreamVec<'scope, u64, PopulationDelta>,
    config: GroupConfig,
) -> StreamVec<'scope, u64, PopulationInfo> {
    deltas.unary_frontier(Exchange::new(|_: &PopulationDelta| 0), "PopulationGroups", move |_, _| {
        let mut model = PopulationModel::new(config);
        let mut pending: BTreeMap<u64, PopulationDelta> = BTreeMap::new();
        let mut held = HeldCapability::default();
        move |(input, frontier), output| {
            let port = output.output_index();
            input.for_each_stamp(|capability, data| {
                held.hold(&capability, port);
                for batch in data {
                    for delta in batch.drain(..) {
                        match pending.entry(delta.window_end) {
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

            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let end = *entry.key();
                let delta = entry.remove();
                let info = model.add_window(&delta).clone();
                let mut sizes: HashMap<&Id, usize> = HashMap::new();
                for (_, representative) in &info.groups {
                    *sizes.entry(representative).or_default() += 1;
                }
                tracing::debug!(
                    window_end = end,
                    grouped_categories = info.groups.len(),
                    groups = sizes.len(),
                    largest_group = sizes.values().max().copied().unwrap_or(0),
                    trending = info.trending.len(),
                    "population groups rebuilt"
                );
                if let Some(capability) = held.at(end) {
                    output.session(&capability).give(info);
                }
            }
            held.settle(pending.keys().next().copied());
        }
    })
}
