//! Segments of the model path in profile lines and in `GET /users/{id}`. Segments are null
//! before the first scored window and the same for 1 and 2 workers. A user attribute row
//! changed during a live run reaches the user's profile, the query endpoint and the segment
//! features.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const CASE: &str = "cases/24-user-attribute-join";

/// Configuration with a one-day bootstrap period, so short streams get scored windows.
const ONE_DAY_BOOTSTRAP: &str = "[models]\nbootstrap = \"1d\"\n";

fn has_reason(line: &Value, reason: &str) -> bool {
    line["reasons"]
        .as_array()
        .is_some_and(|reasons| reasons.contains(&Value::from(reason)))
}

/// Output of one batch run with models and profiles.
struct ProfileRun {
    lines: Vec<Value>,
    /// End of the bootstrap period from the log, in Unix milliseconds.
    bootstrap_end_ms: u64,
}

fn run_with_profiles(folder: &Path, events: &Path, config: &Path, workers: usize) -> ProfileRun {
    let profiles = folder.join(format!("profiles-{workers}.jsonl"));
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "run",
            "--no-progress",
            "--models",
            "--workers",
            &workers.to_string(),
        ])
        .arg("--input")
        .arg(events)
        .arg("--config")
        .arg(config)
        .arg("--profiles")
        .arg(&profiles)
        .arg("--alerts")
        .arg(folder.join(format!("alerts-{workers}.jsonl")))
        .env("VEER_LOG", "info")
        .output()
        .expect("veer runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "veer failed:\n{stderr}");
    let bootstrap = stderr
        .lines()
        .find(|line| line.contains("bootstrap period set"))
        .unwrap_or_else(|| panic!("no bootstrap line in:\n{stderr}"));
    ProfileRun {
        lines: common::read_json_lines(&profiles),
        bootstrap_end_ms: common::log_field(bootstrap, "end_ms"),
    }
}

/// Returns the (user, ts, segment) of every line written for a segment change, sorted.
fn segment_changes(lines: &[Value]) -> Vec<(String, i64, Value)> {
    let mut changes: Vec<(String, i64, Value)> = lines
        .iter()
        .filter(|line| has_reason(line, "segment"))
        .map(|line| {
            let ts = line["ts"].as_i64().unwrap();
            (line["user"].to_string(), ts, line["segment"].clone())
        })
        .collect();
    changes.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    changes
}

fn final_segments(lines: &[Value]) -> BTreeMap<String, Value> {
    lines
        .iter()
        .filter(|line| has_reason(line, "end_of_input"))
        .map(|line| (line["user"].to_string(), line["segment"].clone()))
        .collect()
}

#[test]
fn profile_segments_same_for_workers() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 200, 5, 11);
    let config = folder.path().join("veer.toml");
    std::fs::write(&config, ONE_DAY_BOOTSTRAP).unwrap();
    let one = run_with_profiles(folder.path(), &events, &config, 1);
    let two = run_with_profiles(folder.path(), &events, &config, 2);
    assert_eq!(one.bootstrap_end_ms, two.bootstrap_end_ms);

    // No line of the bootstrap period has a segment: no window is scored before its end.
    let end_s = (one.bootstrap_end_ms / 1000) as i64;
    for line in &one.lines {
        if line["ts"].as_i64().unwrap() < end_s {
            assert_eq!(line["segment"], Value::Null, "{line}");
        }
    }
    let changes = segment_changes(&one.lines);
    assert!(changes.len() >= 200, "{} segment changes", changes.len());
    for (user, ts, segment) in &changes {
        assert!(
            *ts >= end_s,
            "user {user} got segment {segment} at {ts}, before {end_s}"
        );
        assert!(segment.is_u64(), "user {user} at {ts}: {segment}");
    }
    let finals = final_segments(&one.lines);
    assert_eq!(finals.len(), 200, "one end-of-input line per user");
    let with_segment = finals.values().filter(|segment| segment.is_u64()).count();
    assert!(
        with_segment >= 180,
        "{with_segment} of 200 users have a segment at the end"
    );

    // Segments come from a differential collection, so they do not depend on the workers.
    assert_eq!(changes, segment_changes(&two.lines));
    assert_eq!(finals, final_segments(&two.lines));
    // Nor does any other line, with the model path's alerts waiting for their windows.
    assert_eq!(sorted_lines(&one.lines), sorted_lines(&two.lines));
}

/// Returns the lines as text, sorted, for comparing runs whose writer may interleave users
/// differently.
fn sorted_lines(lines: &[Value]) -> Vec<String> {
    let mut texts: Vec<String> = lines.iter().map(Value::to_string).collect();
    texts.sort();
    texts
}

/// Every profile line, not only the end-of-input ones, is the same for 1, 2 and 3 workers:
/// the detector records each user's core after each event, and an alert shows from the end
/// of its second on.
#[test]
fn profile_lines_same_for_workers() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 300, 5, 13);
    let mut runs = Vec::new();
    for workers in ["1", "2", "3"] {
        let profiles = folder.path().join(format!("core-{workers}.jsonl"));
        let output = common::run_veer(&[
            "--input",
            common::arg(&events),
            "--workers",
            workers,
            "--profiles",
            common::arg(&profiles),
        ]);
        assert_eq!(output.status, 0, "{}", output.stderr);
        runs.push(sorted_lines(&common::read_json_lines(&profiles)));
    }
    let with_alert = runs[0]
        .iter()
        .filter(|line| line.contains("\"reasons\":[\"alert\"]") || line.contains("\"alert\"]"))
        .count();
    assert!(runs[0].len() > 3_000, "{} profile lines", runs[0].len());
    assert!(with_alert > 10, "{with_alert} lines for an alert");
    assert_eq!(runs[0], runs[1], "1 and 2 workers");
    assert_eq!(runs[0], runs[2], "1 and 3 workers");
}

fn case_file(name: &str) -> PathBuf {
    common::shared(&format!("{CASE}/{name}"))
}

fn get_json(address: SocketAddr, path: &str) -> Value {
    let (status, body) = common::http_get(address, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("a JSON body")
}

/// Polls `path` (`/users/{id}`) until `accept` returns true for the profile, and returns it.
fn wait_for_profile(address: SocketAddr, path: &str, accept: impl Fn(&Value) -> bool) -> Value {
    common::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let profile = get_json(address, path);
        if accept(&profile) {
            Ok(profile)
        } else {
            Err(format!("{path} never reached the state: {profile}"))
        }
    })
}

#[test]
fn live_attribute_change_reaches_segment_features() {
    attribute_change_reaches_segment_features(false);
}

/// The CSV table's rows reach users whose events quote their ids (`"user":"2406"`), in the
/// profile join and in the model path's windows, before and after the table changes.
#[test]
fn attribute_change_reaches_quoted_ids() {
    attribute_change_reaches_segment_features(true);
}

/// Runs the case with the table replaced during the run and checks user 2406, whose events
/// write the id quoted when `quoted` is true.
fn attribute_change_reaches_segment_features(quoted: bool) {
    let folder = tempfile::tempdir().unwrap();
    let users = folder.path().join("users.csv");
    let profiles = folder.path().join("profiles.jsonl");
    let config = folder.path().join("veer.toml");
    std::fs::write(&config, ONE_DAY_BOOTSTRAP).unwrap();
    std::fs::copy(case_file("users-v1.csv"), &users).unwrap();
    let mut part1 = std::fs::read_to_string(case_file("part1.jsonl")).unwrap();
    let mut part2 = std::fs::read_to_string(case_file("part2.jsonl")).unwrap();
    let (user, path) = match quoted {
        true => (Value::from("2406"), "/users/%222406%22"),
        false => (Value::from(2406), "/users/2406"),
    };
    if quoted {
        part1 = common::quote_users(&part1);
        part2 = common::quote_users(&part2);
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "run", "--input", "-", "--format", "jsonl", "--order", "arrival",
        ])
        .args([
            "--no-progress",
            "--models",
            "--http",
            "127.0.0.1:0",
            "--users",
        ])
        .arg(&users)
        .arg("--config")
        .arg(&config)
        .arg("--profiles")
        .arg(&profiles)
        .arg("--alerts")
        .arg(folder.path().join("alerts.jsonl"))
        .env("VEER_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veer starts");
    let mut log = common::Log::capture(&mut child);
    let address = log.http_address();
    let mut stdin = child.stdin.take().unwrap();

    // Part 1 covers three days: the models are fitted on the first and score the rest.
    common::send_copies(&mut stdin, &part1, 6);
    let fitted = log.wait_for(&["models fitted"], Duration::from_secs(30));
    // User 2406 has no row in the first table and a row (19, F, east) in the second. The
    // segment features must include a column that this change moves.
    let moved = [
        "has_attributes",
        "age_unknown",
        "gender_female",
        "gender_unknown",
    ];
    let used: Vec<&str> = moved
        .into_iter()
        .filter(|name| fitted.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        !used.is_empty(),
        "no attribute column of 2406's change is selected: {fitted}"
    );
    let before = wait_for_profile(address, path, |profile| profile["segment"].is_u64());
    assert_eq!(before["attributes"], Value::Null, "{before}");
    let expected_before = BTreeMap::from([
        ("has_attributes", 0.0),
        ("age_unknown", 1.0),
        ("gender_female", 0.0),
        ("gender_unknown", 1.0),
    ]);
    for name in &used {
        let value = before["segment_features"][name].as_f64();
        assert_eq!(
            value,
            Some(expected_before[name]),
            "{name} before the change: {before}"
        );
    }

    // The table is replaced in one step and applied without a restart.
    let staged = folder.path().join("users.tmp");
    std::fs::copy(case_file("users-v2.csv"), &staged).unwrap();
    std::fs::rename(&staged, &users).unwrap();
    let applied = log.wait_for(
        &["user table applied", "changed_users=3"],
        Duration::from_secs(10),
    );
    let change_ts = (common::log_field(&applied, "event_time_ms") / 1000) as i64;

    // Part 2: 2406's later windows carry the new row in their segment features.
    common::send_copies(&mut stdin, &part2, 6);
    // The attributes reach the endpoint through the profile store and the segment features
    // through the scored windows, so either may come first.
    let after = wait_for_profile(address, path, |profile| {
        let scored = profile["segment_features"]["has_attributes"].as_f64() == Some(1.0)
            || profile["segment_features"]["gender_female"].as_f64() == Some(1.0);
        scored && !profile["attributes"].is_null()
    });
    assert_eq!(after["attributes"]["age"], 19, "{after}");
    assert_eq!(after["attributes"]["gender"], "F", "{after}");
    assert!(after["segment"].is_u64(), "{after}");
    let expected_after = BTreeMap::from([
        ("has_attributes", 1.0),
        ("age_unknown", 0.0),
        ("gender_female", 1.0),
        ("gender_unknown", 0.0),
    ]);
    for name in &used {
        let value = after["segment_features"][name].as_f64();
        assert_eq!(
            value,
            Some(expected_after[name]),
            "{name} after the change: {after}"
        );
    }

    drop(stdin);
    let status = child.wait().unwrap();
    let seen = log.finish();
    assert!(status.success(), "veer failed:\n{}", seen.join("\n"));

    // The profile lines show the new row from the change on, and segments once scored.
    let written = common::read_json_lines(&profiles);
    let of_2406: Vec<&Value> = written.iter().filter(|line| line["user"] == user).collect();
    let changed = of_2406
        .iter()
        .find(|line| line["ts"].as_i64() == Some(change_ts) && has_reason(line, "attributes"))
        .unwrap_or_else(|| panic!("no attribute change line of 2406 at {change_ts}: {of_2406:?}"));
    assert_eq!(changed["attributes"]["age"], 19, "{changed}");
    for line in &of_2406 {
        let has_row = line["ts"].as_i64().unwrap() >= change_ts;
        assert_eq!(line["has_attributes"], Value::Bool(has_row), "{line}");
    }
    let last = of_2406.last().expect("lines of 2406");
    assert!(has_reason(last, "end_of_input"), "{last}");
    assert!(last["segment"].is_u64(), "{last}");
}
