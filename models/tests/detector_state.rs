//! Behaviour of the compact per-user detector state: the burst queue that drops old events
//! and the count of reference sessions that replaces a set.

use veer_models::{AlertKind, Behavior, Detector, DetectorConfig, Event, GroupMap, Id};
use veer_models::{ShiftDetector, UserState};

fn view(category: u64, ts_secs: i64) -> Event {
    Event::plain(
        ts_secs * 1000,
        7u64,
        category,
        category * 100,
        Behavior::View,
    )
}

fn feed(detector: &ShiftDetector, state: &mut UserState, events: &[Event]) -> Vec<AlertKind> {
    let groups = GroupMap::default();
    let mut alerts = Vec::new();
    for event in events {
        detector.observe(state, event, &groups, &mut alerts);
    }
    alerts.into_iter().map(|alert| alert.kind).collect()
}

#[test]
fn burst_after_slow_browsing() {
    let detector = ShiftDetector::new(DetectorConfig::default()).expect("valid settings");
    let mut state = UserState::default();
    // Slow views, 60 s apart, in one session: each is older than the 45 s burst span when
    // the next arrives, then 12 views 2 s apart make a burst.
    let mut events: Vec<Event> = (0..10).map(|step| view(1, step * 60)).collect();
    let fast_start = 10 * 60;
    events.extend((0..12).map(|step| view(2, fast_start + step * 2)));
    let groups = GroupMap::default();
    let mut alerts = Vec::new();
    for event in &events {
        detector.observe(&mut state, event, &groups, &mut alerts);
    }
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::Anomaly);
    assert_eq!(
        alerts[0].onset_ts, fast_start,
        "the burst starts at the first fast view"
    );
    assert_eq!(alerts[0].events_since_onset, 12);
    assert_eq!(alerts[0].to[0].category, Id::from(2u64));
    assert!(ShiftDetector::in_burst(&state));
}

#[test]
fn slow_views_never_burst() {
    let detector = ShiftDetector::new(DetectorConfig::default()).expect("valid settings");
    let mut state = UserState::default();
    // 12 views 46 s apart span more than the burst span at every point.
    let slow: Vec<Event> = (0..40).map(|step| view(1, step * 46)).collect();
    assert!(feed(&detector, &mut state, &slow).is_empty());
    // 11 fast views are one fewer than a burst needs.
    let start = 40 * 46;
    let fast: Vec<Event> = (0..11).map(|step| view(1, start + step)).collect();
    assert!(feed(&detector, &mut state, &fast).is_empty());
    assert!(!ShiftDetector::in_burst(&state));
}

#[test]
fn judging_waits_for_reference_sessions() {
    let config = DetectorConfig::default();
    let sessions = config.min_reference_sessions as i64;
    let detector = ShiftDetector::new(config).expect("valid settings");

    let groups = GroupMap::default();
    let mut state = UserState::default();
    let mut alerts = Vec::new();
    let hour = 3600;

    // Ten views per session, an hour apart: enough events after the first three sessions,
    // but the user is judged only from the second view of the last required session.
    for session in 0..sessions {
        let views = if session + 1 == sessions { 1 } else { 10 };
        for step in 0..views {
            let trace = detector.observe_traced(
                &mut state,
                &view(1, session * hour + step * 60),
                &groups,
                &mut alerts,
            );
            assert!(
                !trace.judged,
                "session {session}, view {step}: judged before {sessions} sessions"
            );
        }
    }

    let next = view(1, (sessions - 1) * hour + 60);
    let trace = detector.observe_traced(&mut state, &next, &groups, &mut alerts);
    assert!(
        trace.judged,
        "judged once the sessions are reached"
    );
    assert!(alerts.is_empty());
}
