//! A single-threaded replay of the main job: the reference model of the dataflow.
//!
//! [`replay`] runs the same steps as the timely pipeline (ordering, duplicate removal,
//! per-window co-occurrence, group learning, per-user detection) in one loop over events
//! sorted by time. It is slower than the dataflow and keeps nothing across windows that the
//! dataflow would not, and it exists for two reasons: tests compare the dataflow's alerts with
//! it, and explanations use it to trace one user's events with the detector's state after
//! each of them.

use std::collections::{BTreeMap, HashMap};

use veer_models::groups::SessionCounter;
use veer_models::{
    Alert, Detector, DetectorConfig, Event, GroupConfig, GroupMap, Id, PopulationDelta,
    PopulationModel, ShiftDetector, UserState,
};

/// Settings of a replay, the same as the pipeline's.
#[derive(Clone, Debug, Default)]
pub struct ReplaySettings {
    pub detector: DetectorConfig,
    pub groups: GroupConfig,
    /// Population window in milliseconds (the pipeline's `--window`).
    pub window_ms: u64,
}

/// Replays `events` and returns all alerts in output order (time, user, kind).
///
/// `observe` is called after each event with the event, the user's detector state and the
/// alerts that event raised, which is how explanations trace one user.
pub fn replay(
    events: &[Event],
    settings: &ReplaySettings,
    mut observe: impl FnMut(&Event, &UserState, &[Alert]),
) -> Result<Vec<Alert>, veer_models::detector::ConfigError> {
    let detector = ShiftDetector::new(settings.detector.clone())?;
    let window_ms = settings.window_ms.max(1);
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by(|a, b| a.processing_cmp(b));
    sorted.dedup_by(|later, earlier| later.same_content(earlier));

    let mut counter = SessionCounter::new(settings.detector.session_gap_secs * 1000);
    let mut model = PopulationModel::new(settings.groups.clone());
    let mut open: BTreeMap<u64, PopulationDelta> = BTreeMap::new();
    let mut groups = GroupMap::default();
    let mut users: HashMap<Id, UserState> = HashMap::new();
    let mut alerts = Vec::new();
    let mut raised = Vec::new();

    for event in sorted {
        let time = event.ts_ms as u64;
        let window_start = time - time % window_ms;
        // Windows that ended at or before this event's window start are complete: the
        // dataflow applies them before any event of this window.
        while let Some(entry) = open.first_entry() {
            if *entry.key() > window_start {
                break;
            }
            groups.apply(model.add_window(&entry.remove()));
        }

        let end = (time / window_ms + 1) * window_ms;
        let delta = open.entry(end).or_insert_with(|| PopulationDelta {
            window_end: end,
            ..Default::default()
        });
        counter.count(event.clone(), delta);

        let state = users.entry(event.user.clone()).or_default();
        raised.clear();
        detector.observe(state, event, &groups, &mut raised);
        observe(event, state, &raised);
        alerts.extend(raised.drain(..));
    }
    alerts.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
    Ok(alerts)
}
