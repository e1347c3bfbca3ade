//! Runs veer as a library: a generated stream with planted shifts goes through an
//! [`Engine`] twice, once as a batch and once over a channel fed by two producer threads,
//! and the alerts are scored against the planted truth.
//!
//! `cargo run --release --example embed`; `cargo test --release --examples` runs it too.

use veer::embed::Engine;
use veer::eval::{self, EvalConfig, ScoredAlert};
use veer::generate::{generate, GenerateConfig};
use veer_models::AlertKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = generate(&GenerateConfig {
        users: 400,
        seed: 3,
        ..GenerateConfig::default()
    });
    let engine = Engine::builder().workers(2).build()?;

    let alerts = engine.run(stream.events.clone())?;
    let shifts = alerts
        .iter()
        .filter(|alert| alert.kind == AlertKind::InterestShift)
        .count();
    println!(
        "{} events of 400 users: {} alerts, {shifts} interest shifts",
        stream.events.len(),
        alerts.len()
    );
    for alert in alerts.iter().take(3) {
        println!("{}", alert.to_json_line());
    }

    // The same events from two producer threads, over the engine's channel.
    let handle = engine.spawn();
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    std::thread::scope(|scope| {
        for part in [first_half, second_half] {
            let sender = handle.sender();
            scope.spawn(move || {
                for event in part {
                    sender.send(event.clone()).expect("the engine is running");
                }
            });
        }
    });
    let from_channel = handle.finish()?;
    assert_eq!(
        from_channel, alerts,
        "the channel run must give the batch run's alerts"
    );

    let scored: Vec<ScoredAlert> = alerts
        .iter()
        .map(|alert| ScoredAlert {
            user: alert.user.clone(),
            kind: alert.kind,
            ts: alert.ts,
        })
        .collect();
    let score = eval::score(&stream.truth, &scored, None, &EvalConfig::default());
    println!(
        "planted shifts {}, detected {}, false positives {}",
        score.shifts, score.detected, score.fp
    );
    assert!(score.shifts > 0, "the generator planted no shift");
    assert!(score.detected > 0, "no planted shift was detected");
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
