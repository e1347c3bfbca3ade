//! The model operators of `veer run --models` against their single-threaded reference.

mod common;

use veer::generate::{generate, GenerateConfig};
use veer::pipeline;
use veer::replay::{replay, replay_with_models, ModelRunSettings, ReplaySettings};
use veer_models::detector::CANDIDATE_SIGNAL;
use veer_models::{Alert, DetectorConfig, Event};

/// Window length of [`common::memory_run_settings`].
const WINDOW_MS: u64 = 3_600_000;

fn dataflow_alerts(events: Vec<Event>, workers: usize, models: &ModelRunSettings) -> Vec<Alert> {
    pipeline::run_with_models(common::memory_run_settings(events, workers), models.clone())
        .expect("the pipeline runs")
        .kept_alerts
}

fn replay_settings() -> ReplaySettings {
    ReplaySettings {
        window_ms: WINDOW_MS,
        ..ReplaySettings::default()
    }
}

/// Returns how many alerts carry model signals.
fn annotated(alerts: &[Alert]) -> usize {
    alerts
        .iter()
        .filter(|alert| alert.segment_after.is_some())
        .count()
}

#[test]
fn model_operators_match_replay_on_generated_stream() {
    let stream = generate(&GenerateConfig {
        users: 600,
        days: 6,
        seed: 23,
        ..GenerateConfig::default()
    });
    let models = ModelRunSettings::default();
    let expected = replay_with_models(&stream.events, &replay_settings(), &models)
        .expect("the reference runs");
    assert_eq!(expected.skipped, None, "the reference fitted no models");
    assert!(expected.scored_windows > 1000, "{}", expected.scored_windows);
    assert!(
        annotated(&expected.alerts) > 5,
        "too few alerts with model signals to compare"
    );
    let detector_only = replay(&stream.events, &replay_settings(), |_, _, _, _| {}).unwrap();
    assert_ne!(
        expected.alerts, detector_only,
        "the models change no alert, so the comparison proves little"
    );
    assert_eq!(marked_candidates(&expected.alerts), 0);
    for workers in [1, 2] {
        let actual = dataflow_alerts(stream.events.clone(), workers, &models);
        common::assert_same_alerts(&actual, &expected.alerts, &format!("workers {workers}"));
    }
}

#[test]
fn model_operators_match_replay_on_taobao_sample() {
    let path = common::shared("data/taobao_ub_usersorted/UserBehavior.csv");
    let (mut events, _) =
        veer::ingest::read_events(vec![common::arg(&path).to_string()], Default::default())
            .expect("the sample reads");
    // The sample contains a few events months before the rest. The bootstrap start skips them
    // (tests/model_retraining.rs), and this comparison leaves them out to keep its 3-day period.
    let start_ms = 1_511_481_600_000; // 2017-11-24 00:00 UTC
    events.retain(|event| event.ts_ms >= start_ms);
    events.sort_by(Event::processing_cmp);
    let models = ModelRunSettings {
        bootstrap_ms: 3 * 86_400_000,
        ..ModelRunSettings::default()
    };
    let expected =
        replay_with_models(&events, &replay_settings(), &models).expect("the reference runs");
    assert_eq!(expected.skipped, None, "the reference fitted no models");
    assert!(annotated(&expected.alerts) > 0, "no alert carries model signals");
    let actual = dataflow_alerts(events, 2, &models);
    common::assert_same_alerts(&actual, &expected.alerts, "Taobao sample");
}

/// Returns how many alerts still carry the detector's candidate mark, which only the fusion
/// rule reads.
fn marked_candidates(alerts: &[Alert]) -> usize {
    alerts
        .iter()
        .filter(|alert| alert.signals.iter().any(|(name, _)| name == CANDIDATE_SIGNAL))
        .count()
}

/// A stream shorter than the bootstrap period fits on what it has and scores nothing: every
/// candidate is alerted, as the detector alone would alert it.
#[test]
fn short_stream_alerts_unscored_candidates() {
    let stream = generate(&GenerateConfig {
        users: 300,
        days: 5,
        seed: 5,
        ..GenerateConfig::default()
    });
    let models = ModelRunSettings {
        bootstrap_ms: 6 * 86_400_000,
        ..ModelRunSettings::default()
    };
    let expected = replay_with_models(&stream.events, &replay_settings(), &models).unwrap();
    assert_eq!(expected.scored_windows, 0);
    assert!(!expected.alerts.is_empty(), "no alerts to compare");
    assert_eq!(annotated(&expected.alerts), 0);
    assert_eq!(marked_candidates(&expected.alerts), 0);
    let actual = dataflow_alerts(stream.events, 2, &models);
    common::assert_same_alerts(&actual, &expected.alerts, "short stream");
}

/// Candidates leave the detector's state unchanged, so its alarms are those of the same
/// detector without candidates. Candidates come either with fewer sessions or with fewer
/// recurring events than an alarm needs.
#[test]
fn candidates_leave_alarms_unchanged() {
    let stream = generate(&GenerateConfig {
        users: 600,
        days: 6,
        seed: 23,
        ..GenerateConfig::default()
    });
    let strict = DetectorConfig {
        min_sessions: 3,
        ..DetectorConfig::default()
    };
    let cases = [
        (strict.clone(), 2, strict.min_recurring_events),
        (DetectorConfig::default(), 2, 1),
    ];
    for (alarm_config, candidate_sessions, candidate_recurring_events) in cases {
        let with_candidates = DetectorConfig {
            candidate_sessions,
            candidate_recurring_events,
            ..alarm_config.clone()
        };
        let settings = |detector| ReplaySettings {
            detector,
            ..replay_settings()
        };
        let alarms = replay(&stream.events, &settings(alarm_config), |_, _, _, _| {}).unwrap();
        let all = replay(&stream.events, &settings(with_candidates), |_, _, _, _| {}).unwrap();
        let (candidates, rest): (Vec<Alert>, Vec<Alert>) = all.into_iter().partition(|alert| {
            alert
                .signals
                .iter()
                .any(|(name, _)| name == CANDIDATE_SIGNAL)
        });
        assert_eq!(rest, alarms, "candidates at {candidate_sessions} sessions");
        assert!(candidates.len() > 10, "{} candidates", candidates.len());
    }
}
