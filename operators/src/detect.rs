//! The drift/alert operator: per-user detectors fed in event-time order.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Inspect;
use timely::dataflow::StreamVec;
use veer_models::ml::WindowEvent;
use veer_models::{Alert, Detector, Event, Id, PopulationInfo};

use crate::capability::HeldCapability;
use crate::profiles::ProfileView;
use crate::state::{DetectHandle, DetectState, TrackedUser};

/// Per-worker counts that the run summary reports.
#[derive(Clone, Debug, Default)]
pub struct DetectStats {
    /// Events fed to detectors.
    pub events: u64,
    /// User states created: the distinct users seen, plus one for each return of an evicted
    /// user.
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
/// use veer_operators::state::{CooccurrenceState, DetectState, PopulationState};
/// use veer_operators::{detect_shifts, population_groups, session_cooccurrence, DetectSettings};
/// use veer_operators::DetectStats;
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
/// let view = |user: u64, category: u64, ts_ms: i64| {
///     Event::plain(ts_ms, user, category, category * 100, Behavior::View)
/// };
/// let (alerts, stats) = timely::execute_directly(move |worker| {
///     let stats = Rc::new(RefCell::new(DetectStats::default()));
///     let alerts = Rc::new(RefCell::new(Vec::new()));
///     let (counts, seen) = (stats.clone(), alerts.clone());
///     worker.dataflow::<u64, _, _>(move |scope| {
///         let buy = Event { behavior: Behavior::Buy, ..view(2, 7, 9_000) };
///         let events = vec![view(1, 5, 1_000), buy, view(2, 7, 3_000)].to_stream(scope);
///         let sessions = Rc::new(RefCell::new(CooccurrenceState::new(veer_models::session::SessionRule::default())));
///         let deltas = session_cooccurrence(events.clone(), 3_600_000, sessions);
///         let model = Rc::new(RefCell::new(PopulationState::new(GroupConfig::default())));
///         let population = population_groups(deltas, model);
///         let settings = DetectSettings { window_ms: 3_600_000, idle_ms: None };
///         let users = Rc::new(RefCell::new(DetectState::default()));
///         detect_shifts(events, population, EveryBuy, settings, users, counts)
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
    settings: DetectSettings,
    state: DetectHandle<D::State>,
    stats: Rc<RefCell<DetectStats>>,
) -> StreamVec<'scope, u64, Alert> {
    let emit =
        |_: Event, _: bool, _: &D::State, alerts: &mut Vec<Alert>, output: &mut Vec<Alert>| {
            output.append(alerts);
        };
    detect_and_emit(
        events, population, detector, settings, state, stats, true, emit,
    )
}

/// Runs [`detect_shifts`] and emits every event with the detector's view of it, for the
/// model path that cuts events into user windows (see [`crate::windows`]). Users' latest
/// alerts are left to [`keep_last_alerts`] on the fused alerts.
pub fn detect_shifts_observed<'scope, D: Detector>(
    events: StreamVec<'scope, u64, Event>,
    population: StreamVec<'scope, u64, PopulationInfo>,
    detector: D,
    settings: DetectSettings,
    state: DetectHandle<D::State>,
    stats: Rc<RefCell<DetectStats>>,
) -> StreamVec<'scope, u64, Observation> {
    let emit = |event: Event,
                new_stay: bool,
                state: &D::State,
                alerts: &mut Vec<Alert>,
                output: &mut Vec<Observation>| {
        let Event {
            ts_ms,
            user,
            category,
            behavior,
            topic,
            session,
            ..
        } = event;
        output.push(Observation {
            user,
            event: WindowEvent {
                ts_ms,
                behavior,
                category,
                topic,
                session,
            },
            burst: D::in_burst(state),
            new_stay,
            alerts: std::mem::take(alerts),
        });
    };
    detect_and_emit(
        events, population, detector, settings, state, stats, false, emit,
    )
}

/// Keeps each user's latest alert for `/users/{id}` as the alerts pass. The model path needs
/// this because its alerts are not the detector's own: fusion with the model scores may drop
/// an alert, change its kind or raise one from a candidate.
///
/// Runs on the worker that owns the alerts' users. An alert raised before the first event of
/// the user's state belongs to an earlier stay, one that ended when the state was reset for
/// inactivity, and is not kept. A state that keeps no first event time keeps every alert.
pub fn keep_last_alerts<'scope, S: ProfileView + 'static>(
    alerts: StreamVec<'scope, u64, Alert>,
    state: DetectHandle<S>,
) -> StreamVec<'scope, u64, Alert> {
    alerts.inspect(move |alert: &Alert| {
        let mut state = state.borrow_mut();
        let Some(tracked) = state.users.get_mut(&alert.user) else {
            return;
        };
        let earlier_stay = tracked
            .state
            .first_ts()
            .is_some_and(|first_ts| alert.ts < first_ts);
        if !earlier_stay {
            tracked.last_alert = Some(Box::new(alert.clone()));
        }
    })
}

/// One event after its detector has seen it, with the fields that the model path's windows
/// read.
#[derive(Clone, Debug)]
pub struct Observation {
    pub user: Id,
    pub event: WindowEvent,
    /// Whether the detector counted the event as part of a burst.
    pub burst: bool,
    /// Whether the event started a stay of the user: it is the user's first event, or the
    /// first after an eviction (`--evict-after`) dropped or reset the user's state.
    pub new_stay: bool,
    /// Alerts the event raised.
    pub alerts: Vec<Alert>,
}

/// The operator behind [`detect_shifts`]: after each event, `emit` moves the event, whether it
/// started a stay of the user ([`Observation::new_stay`]), the user's state and the alerts it
/// raised into output records. With `keep_last_alert`, each
/// user's latest alert is kept for `/users/{id}`; without it, the caller keeps the alerts it
/// finally sends with [`keep_last_alerts`].
#[allow(clippy::too_many_arguments)]
fn detect_and_emit<'scope, D: Detector, R: Clone + 'static>(
    events: StreamVec<'scope, u64, Event>,
    population: StreamVec<'scope, u64, PopulationInfo>,
    detector: D,
    settings: DetectSettings,
    state: DetectHandle<D::State>,
    stats: Rc<RefCell<DetectStats>>,
    keep_last_alert: bool,
    emit: impl Fn(Event, bool, &D::State, &mut Vec<Alert>, &mut Vec<R>) + 'static,
) -> StreamVec<'scope, u64, R> {
    let window_ms = settings.window_ms;
    events.binary_frontier(
        population,
        Pipeline,
        Pipeline,
        "DetectShifts",
        move |initial, _| {
            let mut held = HeldCapability::restored(initial, state.borrow().pending.earliest());
            let mut alerts: Vec<Alert> = Vec::new();
            let mut records: Vec<R> = Vec::new();
            move |(events_in, events_frontier), (population_in, population_frontier), output| {
                let port = output.output_index();
                let mut guard = state.borrow_mut();
                let state = &mut *guard;
                events_in.for_each_stamp(|capability, data| {
                    held.hold(&capability, port);
                    for batch in data {
                        state.pending.extend(batch.drain(..));
                    }
                });
                population_in.for_each_stamp(|_, data| {
                    for batch in data {
                        for info in batch.drain(..) {
                            state.infos.insert(info.window_end, info);
                        }
                    }
                });

                // An event may go once its own time is complete and the population info of
                // every window before its own has arrived.
                let events_bound = events_frontier.frontier().first().copied();
                let population_bound = population_frontier.frontier().first().copied();
                // Drained, not collected, because at the end of the input every buffered
                // event is ready at once.
                let ready = state.pending.drain_ready(|time| {
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
                    while let Some(info) = state.infos.first_entry() {
                        if *info.key() > window_start {
                            break;
                        }
                        let info = info.remove();
                        state.groups.apply(&info);
                        state.applied_window_end = info.window_end;
                        stats.population_updates += 1;
                    }
                    stats.events += 1;
                    if let Some(timeline) = &mut stats.timeline {
                        timeline.push((event.user.clone(), event.ts_secs()));
                    }
                    let mut new_stay = false;
                    let tracked = state.users.get_or_insert_with(&event.user, || {
                        new_stay = true;
                        stats.users += 1;
                        Box::new(TrackedUser {
                            user: event.user.clone(),
                            last_event_ms: event.ts_ms,
                            state: D::State::default(),
                            last_alert: None,
                        })
                    });
                    // A user idle for longer than the eviction time starts afresh, whether or
                    // not a sweep has removed the entry yet, so alerts do not depend on when
                    // sweeps run.
                    if settings
                        .idle_ms
                        .is_some_and(|idle| event.ts_ms - tracked.last_event_ms > idle)
                    {
                        tracked.state = D::State::default();
                        tracked.last_alert = None;
                        state.evicted += 1;
                        stats.users += 1;
                        new_stay = true;
                    }
                    tracked.last_event_ms = event.ts_ms;
                    let earlier_alerts = alerts.len();
                    detector.observe(&mut tracked.state, &event, &state.groups, &mut alerts);
                    if let Some(recorder) = state.cores.as_mut() {
                        recorder.record(time, &event.user, &tracked.state);
                    }
                    if keep_last_alert {
                        if let Some(alert) = alerts[earlier_alerts..].last() {
                            tracked.last_alert = Some(Box::new(alert.clone()));
                        }
                    }
                    emit(event, new_stay, &tracked.state, &mut alerts, &mut records);
                }
                if !records.is_empty() {
                    if let Some(capability) = held.get() {
                        output.session(capability).give_iterator(records.drain(..));
                    }
                }
                if let Some(idle) = settings.idle_ms {
                    // Every later event is at or after both the frontier and the earliest
                    // event still waiting.
                    let now = match (events_bound, state.pending.earliest()) {
                        (Some(bound), Some(earliest)) => Some(bound.min(earliest)),
                        (bound, None) => bound,
                        (None, earliest) => earliest,
                    };
                    match now {
                        Some(now) => sweep_idle(state, now as i64, idle),
                        // The sweeps above run at frontiers that depend on timing, so the
                        // input's end evicts at a time every run and worker count agree on.
                        None if population_bound.is_none() => sweep_idle_at_end(state, idle),
                        None => {}
                    }
                }
                held.settle(state.pending.earliest());
            }
        },
    )
}

/// Settings of [`detect_shifts`].
#[derive(Clone, Copy, Debug)]
pub struct DetectSettings {
    /// Length of the population windows, in milliseconds.
    pub window_ms: u64,
    /// Event time after which an inactive user's state is dropped, in milliseconds; `None`
    /// keeps every user for the whole run.
    pub idle_ms: Option<i64>,
}

/// Event time between two eviction sweeps, at most, in milliseconds.
pub(crate) const SWEEP_EVERY_MS: i64 = 3_600_000;

/// Returns the event time between two sweeps for the eviction time `idle_ms`:
/// [`SWEEP_EVERY_MS`], or a quarter of `idle_ms` when that is shorter, and at least 1 ms.
pub(crate) fn sweep_interval_ms(idle_ms: i64) -> i64 {
    SWEEP_EVERY_MS.min(idle_ms / 4).max(1)
}

/// Removes the users idle for longer than `idle_ms` at event time `now_ms`, at most once per
/// [`sweep_interval_ms`] of event time.
fn sweep_idle<S>(state: &mut DetectState<S>, now_ms: i64, idle_ms: i64) {
    if now_ms.saturating_sub(state.swept_at_ms) < sweep_interval_ms(idle_ms) {
        return;
    }
    remove_idle(state, now_ms, idle_ms);
}

/// Removes the users idle for longer than `idle_ms` at the end of the last population window,
/// once the input has ended.
///
/// Every worker receives every window's population info, so that end is the end of the window
/// of the newest event of the whole input, whatever the worker. A user idle at any earlier
/// sweep is idle then too, so the evicted and tracked counts at the end depend only on the
/// input and the settings.
fn sweep_idle_at_end<S>(state: &mut DetectState<S>, idle_ms: i64) {
    let last_window_end = state.last_window_end();
    // A live run advances event time by the wall clock, so an earlier sweep may be later.
    let end_ms = (last_window_end.min(i64::MAX as u64) as i64).max(state.swept_at_ms);
    remove_idle(state, end_ms, idle_ms);
}

/// Removes the users idle for longer than `idle_ms` at event time `now_ms`, and counts them.
fn remove_idle<S>(state: &mut DetectState<S>, now_ms: i64, idle_ms: i64) {
    state.swept_at_ms = now_ms;
    let before = state.users.len();
    state
        .users
        .retain(|tracked| now_ms - tracked.last_event_ms <= idle_ms);
    let removed = before - state.users.len();
    if removed > 0 {
        state.evicted += removed as u64;
        tracing::debug!(
            removed,
            remaining = state.users.len(),
            now_ms,
            "evicted idle users"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::{InputHandleVec, StreamVec};
    use timely::worker::Worker;
    use veer_models::{Alert, Behavior, Detector, Event, GroupConfig, GroupMap};

    use super::{detect_shifts, DetectSettings, DetectStats};
    use crate::state::{CooccurrenceState, DetectHandle, DetectState, PopulationState};
    use crate::{population_groups, session_cooccurrence};

    pub(crate) const HOUR_MS: i64 = 3_600_000;
    pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

    struct NoAlerts;

    impl Detector for NoAlerts {
        type State = ();
        fn observe(&self, _: &mut (), _: &Event, _: &GroupMap, _: &mut Vec<Alert>) {}
    }

    /// Builds the session, population and detect operators on `events` with hour windows and
    /// the eviction time `idle_ms`, and returns the alerts.
    pub(crate) fn detect_hourly<'scope, D: Detector>(
        events: StreamVec<'scope, u64, Event>,
        detector: D,
        idle_ms: i64,
        state: DetectHandle<D::State>,
    ) -> StreamVec<'scope, u64, Alert> {
        let sessions = Rc::new(RefCell::new(CooccurrenceState::new(
            veer_models::session::SessionRule::default(),
        )));
        let deltas = session_cooccurrence(events.clone(), HOUR_MS as u64, sessions);
        let model = Rc::new(RefCell::new(PopulationState::new(GroupConfig::default())));
        let population = population_groups(deltas, model);
        let settings = DetectSettings {
            window_ms: HOUR_MS as u64,
            idle_ms: Some(idle_ms),
        };
        let stats = Rc::new(RefCell::new(DetectStats::default()));
        detect_shifts(events, population, detector, settings, state, stats)
    }

    /// Sends `events` to `input`, closes it and steps `worker` until the dataflow ends. With
    /// `stepwise`, the input advances to each event's time and the dataflow steps in between.
    /// Otherwise every event is sent at time 0 before the input closes, so the operators see
    /// no frontier before the empty one.
    pub(crate) fn feed_events(
        worker: &mut Worker,
        mut input: InputHandleVec<u64, Event>,
        events: Vec<Event>,
        stepwise: bool,
    ) {
        for event in events {
            if stepwise {
                input.advance_to(event.ts_ms as u64);
                worker.step();
            }
            input.send(event);
            if stepwise {
                worker.step();
            }
        }
        drop(input);
        while worker.step() {}
    }

    /// Runs the detect operator on `events` with a 7-day eviction time and returns the evicted
    /// and tracked counts, feeding the events as [`feed_events`] does.
    fn evicted_and_tracked(events: Vec<Event>, stepwise: bool) -> (u64, usize) {
        timely::execute_directly(move |worker| {
            let users = Rc::new(RefCell::new(DetectState::default()));
            let handle = users.clone();
            let input = worker.dataflow::<u64, _, _>(move |scope| {
                let (input, events) = scope.new_input::<Event>();
                detect_hourly(events, NoAlerts, 7 * DAY_MS, handle);
                input
            });
            feed_events(worker, input, events, stepwise);
            let state = users.borrow();
            (state.evicted_users(), state.tracked_users())
        })
    }

    #[test]
    fn eviction_counts_ignore_frontier_steps() {
        let view = |user: u64, ts_ms: i64| Event::plain(ts_ms, user, 5, 500, Behavior::View);
        // User 1 is idle for 9 days before the input ends, user 2 for 4 days, and user 3 for
        // an hour.
        let events = vec![
            view(1, HOUR_MS),
            view(2, 5 * DAY_MS),
            view(3, 9 * DAY_MS),
            view(3, 10 * DAY_MS),
        ];
        let stepwise = evicted_and_tracked(events.clone(), true);
        let at_once = evicted_and_tracked(events, false);
        assert_eq!(stepwise, (1, 2), "frontier advanced event by event");
        assert_eq!(at_once, (1, 2), "frontier empty at the first step");
    }
}
