//! The dataflow against its single-threaded reference model.

mod common;

use veer::generate::{generate, GenerateConfig};
use veer::pipeline;
use veer::replay::{replay, ReplaySettings};
use veer_models::{Alert, Event};

fn dataflow_alerts(events: Vec<Event>, workers: usize) -> Vec<Alert> {
    pipeline::run(common::memory_run_settings(events, workers))
        .expect("the pipeline runs")
        .kept_alerts
}

fn reference_alerts(events: &[Event]) -> Vec<Alert> {
    let settings = ReplaySettings {
        window_ms: 3_600_000,
        ..ReplaySettings::default()
    };
    replay(events, &settings, |_, _, _, _| {}).expect("valid settings")
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
        common::assert_same_alerts(&actual, &expected, &format!("workers {workers}"));
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
    common::assert_same_alerts(&dataflow_alerts(events, 2), &expected, "Taobao sample");
}
