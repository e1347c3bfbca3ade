//! Alerts on the profile lines (`--profiles`) of users evicted (`--evict-after`) and back
//! again, with `--models`: an alert shows only on the lines of the stay whose events raised
//! it, for 1 and 2 workers.
//!
//! The eviction time is 500 ms, shorter than the second that an alert's `ts` names. Each
//! returning user's burst raises an anomaly alert at its last event, and the user is evicted
//! before that second ends, so the alert reaches the profile operator after the eviction.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::arg;
use serde_json::Value;

/// 2017-11-27 00:00:00 UTC, in Unix seconds.
const START: i64 = 1_511_740_800;
const EVICT_AFTER: &str = "500ms";
/// Users that keep event time moving, one event every 20 seconds in turn.
const BACKGROUND_USERS: i64 = 5;
/// Idle gaps in whole seconds between a returning user's burst and its return.
const GAPS: [i64; 4] = [2, 5, 600, 3_600];
const RETURNING_FIRST_ID: i64 = 100;
/// A user whose burst is followed by more events of the same stay.
const STAYING_USER: i64 = 200;

/// One user's burst: the alert's second and, for a returning user, the return's second.
struct Burst {
    user: i64,
    alert_ts: i64,
    return_ts: Option<i64>,
}

fn event_line(user: i64, category: i64, ts_ms: i64) -> String {
    let item = category * 10;
    format!(
        r#"{{"user":{user},"item":{item},"category":{category},"behavior":"view","ts":{ts_ms}}}"#
    )
}

/// Appends a burst of 12 events 80 ms apart from `first_ms` on, which crosses into the next
/// second, and returns the time of its last event in milliseconds.
fn push_burst(events: &mut Vec<(i64, String)>, user: i64, first_ms: i64) -> i64 {
    for step in 0..12 {
        let ts_ms = first_ms + 80 * step;
        events.push((ts_ms, event_line(user, 7_000 + step, ts_ms)));
    }
    first_ms + 80 * 11
}

/// Writes three hours of events with millisecond times and returns the file and the bursts.
fn write_stream(folder: &Path) -> (PathBuf, Vec<Burst>) {
    let mut events: Vec<(i64, String)> = Vec::new();
    for step in 0..3 * 180 {
        let ts_ms = (START + step * 20) * 1000;
        let user = 1 + step % BACKGROUND_USERS;
        events.push((ts_ms, event_line(user, 50 + step % 7, ts_ms)));
    }

    let mut bursts = Vec::new();
    for (index, gap) in GAPS.into_iter().enumerate() {
        let user = RETURNING_FIRST_ID + index as i64;
        let first_ms = (START + 600 + 60 * index as i64) * 1000 + 400;
        let last_ms = push_burst(&mut events, user, first_ms);
        let return_ts = last_ms / 1000 + gap;
        for step in 0..3 {
            let ts_ms = return_ts * 1000 + 200 * step;
            events.push((ts_ms, event_line(user, 8_000 + step % 2, ts_ms)));
        }
        bursts.push(Burst {
            user,
            alert_ts: last_ms / 1000,
            return_ts: Some(return_ts),
        });
    }

    // The staying user's events after the burst are 300 ms apart, so the stay goes on.
    let last_ms = push_burst(&mut events, STAYING_USER, (START + 900) * 1000 + 400);
    for step in 1..=8 {
        let ts_ms = last_ms + 300 * step;
        events.push((ts_ms, event_line(STAYING_USER, 8_000 + step % 2, ts_ms)));
    }
    bursts.push(Burst {
        user: STAYING_USER,
        alert_ts: last_ms / 1000,
        return_ts: None,
    });

    events.sort();
    let path = folder.join("events.jsonl");
    let text: String = events.iter().map(|(_, line)| format!("{line}\n")).collect();
    std::fs::write(&path, text).unwrap();
    (path, bursts)
}

/// The alert and profile files of one run.
struct Run {
    alerts: String,
    profiles: String,
}

/// Runs `veer run --models` on `input` with `workers` workers.
fn run(folder: &Path, input: &Path, workers: usize, label: &str) -> Run {
    let alerts = folder.join(format!("alerts-{label}.jsonl"));
    let profiles = folder.join(format!("profiles-{label}.jsonl"));
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--input", arg(input), "--models", "--no-progress"])
        .args([
            "--evict-after",
            EVICT_AFTER,
            "--workers",
            &workers.to_string(),
        ])
        .args(["--alerts", arg(&alerts), "--profiles", arg(&profiles)])
        .env("VEER_LOG", "warn")
        .output()
        .expect("the veer binary runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{label}: {log}");
    Run {
        alerts: std::fs::read_to_string(&alerts).unwrap(),
        profiles: std::fs::read_to_string(&profiles).unwrap(),
    }
}

/// Returns each user's profile lines in file order.
fn lines_by_user(text: &str) -> BTreeMap<i64, Vec<Value>> {
    let mut by_user: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).expect("each profile line is JSON");
        let user = value["user"].as_i64().expect("numeric user ids");
        by_user.entry(user).or_default().push(value);
    }
    by_user
}

/// Checks that no line of a returning user from its return on shows the alert of the burst
/// before it. `label` names the run in failures.
fn assert_no_earlier_stay_alert(profiles: &str, bursts: &[Burst], label: &str) {
    let by_user = lines_by_user(profiles);
    for burst in bursts {
        let Some(return_ts) = burst.return_ts else {
            continue;
        };
        let lines = by_user.get(&burst.user).map_or(&[][..], Vec::as_slice);
        for line in lines
            .iter()
            .filter(|line| line["ts"].as_i64() >= Some(return_ts))
        {
            let alert_ts = line["last_alert"]["ts"].as_i64();
            assert!(
                alert_ts.is_none_or(|ts| ts >= return_ts),
                "{label}: user {} returned at {return_ts}, line shows an earlier alert: {line}",
                burst.user
            );
        }
    }
}

/// Returns the alert ids of `alerts`, one per line, in file order.
fn alert_ids(alerts: &str) -> Vec<String> {
    alerts
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("each alert line is JSON");
            value["alert_id"].as_str().expect("alert_id").to_string()
        })
        .collect()
}

#[test]
fn earlier_stay_alert_not_on_return() {
    let folder = tempfile::tempdir().unwrap();
    let (input, bursts) = write_stream(folder.path());
    let reference = run(folder.path(), &input, 1, "one-worker");

    // Every burst's alert is in the alert file, including those of evicted users.
    let ids = alert_ids(&reference.alerts);
    for burst in &bursts {
        let id = format!("{}-{}-anomaly", burst.user, burst.alert_ts);
        assert!(ids.contains(&id), "alert {id} missing: {ids:?}");
    }

    assert_no_earlier_stay_alert(&reference.profiles, &bursts, "1 worker");
    let by_user = lines_by_user(&reference.profiles);
    for burst in &bursts {
        let Some(return_ts) = burst.return_ts else {
            continue;
        };
        let lines = &by_user[&burst.user];
        let first_after = lines
            .iter()
            .find(|line| line["ts"].as_i64() >= Some(return_ts))
            .unwrap_or_else(|| panic!("user {}: no line after the return", burst.user));
        assert_eq!(
            first_after["reasons"],
            serde_json::json!(["new_user"]),
            "user {}: {first_after}",
            burst.user
        );
    }

    // The staying user's alert belongs to its current stay, so its later lines show it.
    let staying = &by_user[&STAYING_USER];
    let alert_ts = bursts.last().unwrap().alert_ts;
    let shown = staying
        .iter()
        .any(|line| line["last_alert"]["ts"].as_i64() == Some(alert_ts));
    assert!(
        shown,
        "the staying user's alert is on none of its lines: {staying:?}"
    );
}

#[test]
fn alert_stays_same_for_two_workers() {
    let folder = tempfile::tempdir().unwrap();
    let (input, bursts) = write_stream(folder.path());
    let one = run(folder.path(), &input, 1, "one-worker");
    let two = run(folder.path(), &input, 2, "two-workers");
    assert_no_earlier_stay_alert(&two.profiles, &bursts, "2 workers");
    assert_eq!(one.alerts, two.alerts, "alert files differ");
    assert_eq!(
        one.profiles.lines().count(),
        two.profiles.lines().count(),
        "profile line counts differ"
    );
    let differing = one
        .profiles
        .lines()
        .zip(two.profiles.lines())
        .filter(|(left, right)| left != right)
        .count();
    assert_eq!(differing, 0, "profile lines differ between 1 and 2 workers");
}
