//! Retraining of the model path on an event-time schedule, against the single-threaded
//! reference, and the start of the bootstrap period at a dense point of the stream.

mod common;

use veer::generate::{generate, GenerateConfig};
use veer::pipeline;
use veer::replay::{replay_with_models, ModelRunOutput, ModelRunSettings, ReplaySettings};
use veer_models::{Alert, Behavior, Event, Id};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

fn replay_settings() -> ReplaySettings {
    ReplaySettings {
        window_ms: HOUR_MS,
        ..ReplaySettings::default()
    }
}

fn dataflow_alerts(events: Vec<Event>, workers: usize, models: &ModelRunSettings) -> Vec<Alert> {
    pipeline::run_with_models(common::memory_run_settings(events, workers), models.clone())
        .expect("the pipeline runs")
        .kept_alerts
}

/// Returns a generated stream whose users triple their activity from 2.5 days after its first
/// event on: each event then comes with two more views of other items, one and two seconds
/// later.
fn changing_population() -> (Vec<Event>, u64) {
    let stream = generate(&GenerateConfig {
        users: 300,
        days: 6,
        seed: 31,
        ..GenerateConfig::default()
    });
    let first_ms = stream.events.iter().map(|event| event.ts_ms).min().unwrap();
    let change_ms = first_ms + (5 * DAY_MS / 2) as i64;
    let mut events = Vec::with_capacity(stream.events.len() * 2);
    for (index, event) in stream.events.into_iter().enumerate() {
        if event.ts_ms >= change_ms {
            for copy in 1..=2u64 {
                let mut extra = event.clone();
                extra.ts_ms += copy as i64 * 1000;
                extra.item = Id::from(1_000_000_000_000 + 3 * index as u64 + copy);
                extra.behavior = Behavior::View;
                extra.price = None;
                events.push(extra);
            }
        }
        events.push(event);
    }
    events.sort_by(Event::processing_cmp);
    (events, change_ms as u64)
}

fn isolation_score(alert: &Alert) -> Option<f64> {
    alert
        .signals
        .iter()
        .find(|(name, _)| name == "isolation_forest")
        .map(|(_, value)| *value)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn run_reference(events: &[Event], models: &ModelRunSettings) -> ModelRunOutput {
    let output = replay_with_models(events, &replay_settings(), models).expect("the reference runs");
    assert_eq!(output.skipped, None, "the reference fitted no models");
    output
}

#[test]
fn retraining_rescores_changed_population() {
    let (events, change_ms) = changing_population();
    let once = ModelRunSettings {
        bootstrap_ms: DAY_MS,
        ..ModelRunSettings::default()
    };
    let retrained = ModelRunSettings {
        retrain_every_ms: Some(DAY_MS),
        ..once.clone()
    };
    let fitted_once = run_reference(&events, &once);
    let refitted = run_reference(&events, &retrained);
    assert_eq!(fitted_once.versions, 1);
    assert_eq!(refitted.versions, 5, "one version a day from day 1 to day 5");
    let start_ms = refitted.bootstrap_start_ms.expect("a bootstrap start");

    // Version 0 scores the windows before the first refit in both runs.
    let first_refit_s = ((start_ms + 2 * DAY_MS) / 1000) as i64;
    let early = |alerts: &[Alert]| -> Vec<Alert> {
        alerts.iter().filter(|alert| alert.ts < first_refit_s).cloned().collect()
    };
    assert_eq!(early(&fitted_once.alerts), early(&refitted.alerts));

    // From a day after the change on, every refit trained on the new, busier population only,
    // so its windows look less unusual to the retrained models.
    let late_s = ((change_ms + DAY_MS) / 1000) as i64;
    let late_scores = |alerts: &[Alert]| -> Vec<f64> {
        alerts
            .iter()
            .filter(|alert| alert.ts >= late_s)
            .filter_map(isolation_score)
            .collect()
    };
    let (before, after) = (late_scores(&fitted_once.alerts), late_scores(&refitted.alerts));
    assert!(before.len() >= 20, "{} late alerts with scores", before.len());
    assert!(after.len() >= 20, "{} late alerts with scores", after.len());
    assert!(
        mean(&after) < mean(&before),
        "mean isolation forest score {} with retraining, {} without",
        mean(&after),
        mean(&before)
    );

    for workers in [1, 2] {
        let actual = dataflow_alerts(events.clone(), workers, &retrained);
        common::assert_same_alerts(&actual, &refitted.alerts, &format!("workers {workers}"));
    }
}

#[test]
fn bootstrap_skips_stray_early_events() {
    let path = common::shared("data/taobao_ub_usersorted/UserBehavior.csv");
    let (mut events, _) =
        veer::ingest::read_events(vec![common::arg(&path).to_string()], Default::default())
            .expect("the sample reads");
    events.sort_by(Event::processing_cmp);
    // The sample contains a handful of events from 1970, September and the days before its real
    // start, 2017-11-24 16:00 UTC (midnight in China).
    let real_start_ms = 1_511_539_200_000;
    let strays = events.iter().filter(|event| (event.ts_ms as u64) < real_start_ms).count();
    assert!((10..100).contains(&strays), "{strays} events before the real start");
    let models = ModelRunSettings {
        bootstrap_ms: 2 * DAY_MS,
        ..ModelRunSettings::default()
    };
    let expected = run_reference(&events, &models);
    let start_ms = expected.bootstrap_start_ms.expect("a bootstrap start");
    assert!(
        (real_start_ms..real_start_ms + HOUR_MS).contains(&start_ms),
        "bootstrap period starts at {start_ms}"
    );
    assert!(expected.training_windows > 1000, "{} training windows", expected.training_windows);
    let actual = dataflow_alerts(events, 2, &models);
    common::assert_same_alerts(&actual, &expected.alerts, "Taobao sample with stray events");
}
