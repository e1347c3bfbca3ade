//! The dataflow against its single-threaded reference model.

mod common;

use std::time::Duration;

use veer::config::{DetectorChoice, ReplayOrder};
use veer::generate::{generate, GenerateConfig};
use veer::pipeline::{self, AlertOutput, EventSource, RunSettings};
use veer::replay::{replay, ReplaySettings};
use veer_models::{Alert, DetectorConfig, Event, GroupConfig};

fn dataflow_alerts(events: Vec<Event>, workers: usize) -> Vec<Alert> {
    let settings = RunSettings {
        source: EventSource::Memory(events),
        alerts: AlertOutput::Discard,
        sinks: Default::default(),
        dead_letter: None,
        workers,
        order: ReplayOrder::Auto,
        out_of_orderness: Duration::from_secs(600),
        max_future_skew: Duration::from_secs(86_400),
        window: Duration::from_secs(3600),
        detector: DetectorChoice::Shift,
        detector_config: DetectorConfig::default(),
        groups: GroupConfig::default(),
        progress: false,
        keep_alerts: true,
        metrics: Default::default(),
        state: veer::checkpoint::StateSettings::default(),
        cluster: None,
        http: None,
        users: None,
        profiles: None,
        profile_settings: Default::default(),
    };
    pipeline::run(settings)
        .expect("the pipeline runs")
        .kept_alerts
}

/// Compares alert lists by id first, so a failure names the first alert that differs.
fn assert_same_alerts(actual: &[Alert], expected: &[Alert], context: &str) {
    let ids = |alerts: &[Alert]| alerts.iter().map(Alert::alert_id).collect::<Vec<_>>();
    let (actual_ids, expected_ids) = (ids(actual), ids(expected));
    if let Some(at) = (0..actual_ids.len().max(expected_ids.len()))
        .find(|&at| actual_ids.get(at) != expected_ids.get(at))
    {
        panic!(
            "{context}: first difference at alert {at}: dataflow {:?}, replay {:?} ({} vs {} alerts)",
            actual_ids.get(at),
            expected_ids.get(at),
            actual_ids.len(),
            expected_ids.len()
        );
    }
    for (left, right) in actual.iter().zip(expected) {
        assert!(
            left == right,
            "{context}: alert {} differs in its fields",
            left.alert_id()
        );
    }
}

fn reference_alerts(events: &[Event]) -> Vec<Alert> {
    let settings = ReplaySettings {
        window_ms: 3_600_000,
        ..ReplaySettings::default()
    };
    replay(events, &settings, |_, _, _| {}).expect("valid settings")
}

#[test]
fn dataflow_matches_replay_on_generated_stream() {
    let stream = generate(&GenerateConfig {
        users: 800,
        seed: 11,
        ..GenerateConfig::default()
    });
    let expected = reference_alerts(&stream.events);
    assert!(
        expected.len() > 20,
        "too few alerts to compare: {}",
        expected.len()
    );
    for workers in [1, 2] {
        let actual = dataflow_alerts(stream.events.clone(), workers);
        assert_same_alerts(&actual, &expected, &format!("workers {workers}"));
    }
}

#[test]
fn dataflow_matches_replay_on_taobao_sample() {
    let path = common::shared("data/taobao_ub_usersorted/UserBehavior.csv");
    let (events, _) =
        veer::ingest::read_events(vec![common::arg(&path).to_string()], Default::default())
            .expect("the sample reads");
    let expected = reference_alerts(&events);
    assert!(!expected.is_empty());
    assert_same_alerts(&dataflow_alerts(events, 2), &expected, "Taobao sample");
}
