//! The user attribute table (`--users`) joined into the profiles (`--profiles`): the handed
//! attribute-join case through standard input with the table replaced during the run, the
//! duplicate-row winner for 1 and 4 workers, and the model path's attribute features.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CASE: &str = "cases/24-user-attribute-join";

fn case_file(name: &str) -> PathBuf {
    common::shared(&format!("{CASE}/{name}"))
}

fn veer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veer"))
}

/// Returns `veer run` on JSON lines from a piped standard input, processed as they arrive, with
/// standard error piped for [`common::Log`].
fn stdin_run() -> Command {
    let mut command = veer();
    command
        .args([
            "run", "--input", "-", "--format", "jsonl", "--order", "arrival",
        ])
        .arg("--no-progress")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Returns the end-of-input profile line of every user, by user id as printed.
fn final_profiles(lines: &[Value]) -> BTreeMap<String, Value> {
    lines
        .iter()
        .filter(|line| line["reasons"] == serde_json::json!(["end_of_input"]))
        .map(|line| (line["user"].to_string(), line.clone()))
        .collect()
}

/// One user's expected attributes: age, gender, region and vip_level, `None` for unknown.
type Row = [Option<Value>; 4];

fn row(age: Option<Value>, gender: Option<&str>, region: Option<&str>, vip: Option<&str>) -> Row {
    [
        age,
        gender.map(Value::from),
        region.map(Value::from),
        vip.map(Value::from),
    ]
}

/// Checks a profile's attributes; unknown must be `null` or absent, never `0` or `""`.
fn assert_attributes(profile: &Value, has_row: bool, expected: &Row, label: &str) {
    assert_eq!(
        profile["has_attributes"],
        Value::Bool(has_row),
        "{label}: {profile}"
    );
    let attributes = &profile["attributes"];
    if !has_row {
        assert_eq!(attributes, &Value::Null, "{label}: no row, no attributes");
        return;
    }
    for (name, expected) in ["age", "gender", "region", "vip_level"]
        .iter()
        .zip(expected)
    {
        let actual = attributes.get(*name).unwrap_or(&Value::Null);
        match expected {
            Some(value) => assert_eq!(actual, value, "{label}: {name} in {profile}"),
            None => assert_eq!(actual, &Value::Null, "{label}: {name} must be unknown"),
        }
    }
}

/// The profiles that the case expects after part 1 (table v1).
fn expected_v1() -> Vec<(&'static str, bool, Row)> {
    vec![
        (
            "2401",
            true,
            row(Some("25-34".into()), Some("F"), Some("east"), Some("2")),
        ),
        (
            "2402",
            true,
            row(Some(45.into()), Some("M"), Some("north"), Some("3")),
        ),
        ("2403", true, row(None, None, None, None)),
        ("2404", false, row(None, None, None, None)),
        ("2405", true, row(None, Some("M"), Some("south"), None)),
        ("2406", false, row(None, None, None, None)),
        (
            "2407",
            true,
            row(Some(52.into()), Some("F"), Some("west"), Some("0")),
        ),
    ]
}

/// The profiles that the case expects after part 2 (table v2).
fn expected_v2() -> Vec<(&'static str, bool, Row)> {
    let mut expected = expected_v1();
    expected[0].2[2] = Some("west".into());
    expected[5] = (
        "2406",
        true,
        row(Some(19.into()), Some("F"), Some("east"), Some("1")),
    );
    expected[6] = ("2407", false, row(None, None, None, None));
    expected
}

#[test]
fn attribute_join_case_with_table_replaced() {
    let folder = tempfile::tempdir().unwrap();
    let users = folder.path().join("users.csv");
    let profiles = folder.path().join("profiles.jsonl");
    let alerts = folder.path().join("alerts.jsonl");
    std::fs::copy(case_file("users-v1.csv"), &users).unwrap();
    let part1 = std::fs::read_to_string(case_file("part1.jsonl")).unwrap();
    let part2 = std::fs::read_to_string(case_file("part2.jsonl")).unwrap();

    let mut child = stdin_run()
        .arg("--users")
        .arg(&users)
        .arg("--profiles")
        .arg(&profiles)
        .arg("--alerts")
        .arg(&alerts)
        .spawn()
        .expect("veer starts");
    let mut log = common::Log::capture(&mut child);
    let mut stdin = child.stdin.take().unwrap();

    // Step 2: the first table is loaded with its problems reported, and the run goes on.
    let loaded = log.wait_for(&["user table loaded"], Duration::from_secs(20));
    assert_eq!(common::log_field(&loaded, "rows"), 6, "{loaded}");
    assert_eq!(common::log_field(&loaded, "users"), 5, "{loaded}");
    assert_eq!(common::log_field(&loaded, "duplicates"), 1, "{loaded}");
    assert_eq!(common::log_field(&loaded, "invalid"), 1, "{loaded}");
    log.wait_for(
        &[
            "duplicate user",
            "user=2402",
            "earlier_line=3",
            "later_line=4",
        ],
        Duration::from_secs(5),
    );
    log.wait_for(
        &["invalid value", "line=6", "column=age", "value=abc"],
        Duration::from_secs(5),
    );

    // Step 3: part 1 flows through while the run stays alive.
    common::send_copies(&mut stdin, &part1, 6);
    let deadline = Instant::now() + Duration::from_secs(30);
    while final_users_seen(&profiles) < 7 {
        assert!(
            Instant::now() < deadline,
            "no profile of every user after part 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Step 4: the table is replaced in one step and applied within 10 s, without a restart.
    let replaced = Instant::now();
    let staged = folder.path().join("users.tmp");
    std::fs::copy(case_file("users-v2.csv"), &staged).unwrap();
    std::fs::rename(&staged, &users).unwrap();
    let reloaded = log.wait_for(&["user table loaded", "rows=5"], Duration::from_secs(10));
    assert_eq!(common::log_field(&reloaded, "users"), 5, "{reloaded}");
    assert_eq!(common::log_field(&reloaded, "duplicates"), 0, "{reloaded}");
    assert_eq!(common::log_field(&reloaded, "invalid"), 1, "{reloaded}");
    log.wait_for(
        &["invalid value", "line=5", "column=age"],
        Duration::from_secs(5),
    );
    let applied = log.wait_for(
        &["user table applied", "changed_users=3"],
        Duration::from_secs(10),
    );
    assert!(
        replaced.elapsed() < Duration::from_secs(10),
        "applied after {:?}",
        replaced.elapsed()
    );
    let change_ts = (common::log_field(&applied, "event_time_ms") / 1000) as i64;

    // Step 5: part 2, then the end of the input.
    common::send_copies(&mut stdin, &part2, 6);
    drop(stdin);
    let status = child.wait().unwrap();
    let seen = log.finish();
    assert!(status.success(), "veer failed:\n{}", seen.join("\n"));

    // The change applies between the two parts in event time.
    let last_part1 = part1.lines().map(event_ts).max().unwrap();
    let first_part2 = part2.lines().map(event_ts).min().unwrap();
    assert!(
        change_ts <= first_part2,
        "change at {change_ts}, part 2 from {first_part2}"
    );
    assert!(
        change_ts >= last_part1 - 600,
        "change at {change_ts}, part 1 until {last_part1}"
    );

    let lines_written = common::read_json_lines(&profiles);
    for (user, has_row, expected) in expected_v1() {
        let before = lines_written
            .iter()
            .filter(|line| {
                line["user"].to_string() == user && line["ts"].as_i64().unwrap() < change_ts
            })
            .last()
            .unwrap_or_else(|| panic!("no profile of {user} before the change"));
        assert_attributes(before, has_row, &expected, &format!("v1 {user}"));
    }
    let finals = final_profiles(&lines_written);
    assert_eq!(finals.len(), 7, "one end-of-input line per user");
    for (user, has_row, expected) in expected_v2() {
        assert_attributes(&finals[user], has_row, &expected, &format!("v2 {user}"));
        assert!(finals[user]["events"].as_u64().unwrap() > 0);
    }
    // The changed rows got a line of their own at the change, with the new values.
    for user in ["2401", "2406", "2407"] {
        let changed = lines_written.iter().any(|line| {
            line["user"].to_string() == user
                && line["ts"].as_i64() == Some(change_ts)
                && line["reasons"]
                    .as_array()
                    .unwrap()
                    .contains(&Value::from("attributes"))
        });
        assert!(changed, "no attribute change line for {user}");
    }

    // Alerts: one shift each for 2401 and 2404 (who never has attributes), none for others.
    let alert_lines = common::read_json_lines(&alerts);
    for user in ["2401", "2402", "2403", "2404", "2405", "2406", "2407"] {
        let shifts: Vec<&Value> = alert_lines
            .iter()
            .filter(|alert| alert["user"].to_string() == user && alert["kind"] == "interest_shift")
            .collect();
        let expected = usize::from(user == "2401" || user == "2404");
        assert_eq!(shifts.len(), expected, "shift alerts of {user}");
        for shift in shifts {
            let (ts, onset) = (
                shift["ts"].as_i64().unwrap(),
                shift["onset_ts"].as_i64().unwrap(),
            );
            assert!(onset <= ts && ts <= onset + 259_200, "{shift}");
        }
    }
    let shifted = &finals["2404"];
    assert_eq!(shifted["last_alert"]["kind"], "interest_shift", "{shifted}");
    assert_eq!(shifted["interest"][0]["category"], 41, "{shifted}");
}

fn event_ts(line: &str) -> i64 {
    let event: Value = serde_json::from_str(line).unwrap();
    event["ts"].as_i64().unwrap()
}

/// Returns how many distinct users have a profile line in the file so far.
fn final_users_seen(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let users: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|line| line["user"].to_string())
        .collect();
    users.len()
}

#[test]
fn duplicate_winner_same_for_any_workers() {
    let folder = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for workers in ["1", "4"] {
        let profiles = folder.path().join(format!("profiles-{workers}.jsonl"));
        let output = veer()
            .args(["run", "--no-progress", "--workers", workers, "--alerts"])
            .arg(folder.path().join(format!("alerts-{workers}.jsonl")))
            .arg("--input")
            .arg(case_file("part1.jsonl"))
            .arg("--input")
            .arg(case_file("part2.jsonl"))
            .arg("--users")
            .arg(case_file("users-v1.csv"))
            .arg("--profiles")
            .arg(&profiles)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("earlier_line=3 later_line=4"), "{stderr}");
        let finals = final_profiles(&common::read_json_lines(&profiles));
        for (user, has_row, expected) in expected_v1() {
            assert_attributes(
                &finals[user],
                has_row,
                &expected,
                &format!("{workers} workers {user}"),
            );
        }
        // Every field is compared, `ts` too: the previous line of each user, whose time the
        // end-of-input line repeats, does not depend on timing or the worker count.
        outputs.push(finals);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "end-of-input profiles differ between 1 and 4 workers"
    );
}

/// Rewrites the case's CSV table as JSON lines, with the user ids quoted (`"user":"2401"`) or
/// bare (`"user":2401`). Empty values are left out.
fn csv_table_as_json(csv: &str, quoted: bool) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let mut json = String::new();
    for line in lines {
        let mut object = serde_json::Map::new();
        for (column, value) in header.iter().zip(line.split(',')) {
            if value.is_empty() {
                continue;
            }
            let value = match *column {
                "user" if !quoted => Value::from(value.parse::<u64>().expect("a numeric id")),
                _ => Value::from(value),
            };
            object.insert(column.to_string(), value);
        }
        json.push_str(&Value::Object(object).to_string());
        json.push('\n');
    }
    json
}

/// Events with bare and with quoted user ids join the rows of the CSV table and of JSON tables
/// with bare and with quoted ids, for 1 and 3 workers. Profile lines repeat each user id as
/// the events wrote it.
#[test]
fn tables_join_bare_and_quoted_ids() {
    let folder = tempfile::tempdir().unwrap();
    let events = [case_file("part1.jsonl"), case_file("part2.jsonl")]
        .map(|path| std::fs::read_to_string(path).unwrap())
        .concat();
    let bare_events = folder.path().join("events-bare.jsonl");
    let quoted_events = folder.path().join("events-quoted.jsonl");
    std::fs::write(&bare_events, &events).unwrap();
    std::fs::write(&quoted_events, common::quote_users(&events)).unwrap();
    let csv = std::fs::read_to_string(case_file("users-v1.csv")).unwrap();
    let bare_table = folder.path().join("users-bare.jsonl");
    let quoted_table = folder.path().join("users-quoted.jsonl");
    std::fs::write(&bare_table, csv_table_as_json(&csv, false)).unwrap();
    std::fs::write(&quoted_table, csv_table_as_json(&csv, true)).unwrap();

    for (events, quoted) in [(&bare_events, false), (&quoted_events, true)] {
        for table in [
            case_file("users-v1.csv"),
            bare_table.clone(),
            quoted_table.clone(),
        ] {
            for workers in ["1", "3"] {
                let label = format!(
                    "events {}, table {}, {workers} workers",
                    events.display(),
                    table.display()
                );
                let profiles = folder.path().join("profiles.jsonl");
                let output = veer()
                    .args(["run", "--no-progress", "--workers", workers, "--alerts"])
                    .arg(folder.path().join("alerts.jsonl"))
                    .arg("--input")
                    .arg(events)
                    .arg("--users")
                    .arg(&table)
                    .arg("--profiles")
                    .arg(&profiles)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(output.status.success(), "{label}: {stderr}");
                let lines = common::read_json_lines(&profiles);
                assert!(
                    lines.iter().all(|line| line["user"].is_string() == quoted),
                    "{label}: a profile line changed the type of its user id"
                );
                let finals = final_profiles(&lines);
                for (user, has_row, expected) in expected_v1() {
                    let key = if quoted {
                        format!("\"{user}\"")
                    } else {
                        user.to_string()
                    };
                    let profile = finals
                        .get(&key)
                        .unwrap_or_else(|| panic!("{label}: no final profile of {key}"));
                    assert_attributes(profile, has_row, &expected, &format!("{label}: {key}"));
                }
            }
        }
    }
}

#[test]
fn profiles_without_users_table() {
    let folder = tempfile::tempdir().unwrap();
    let profiles = folder.path().join("profiles.jsonl");
    let output = veer()
        .args(["run", "--no-progress", "--alerts"])
        .arg(folder.path().join("alerts.jsonl"))
        .arg("--input")
        .arg(case_file("part1.jsonl"))
        .arg("--profiles")
        .arg(&profiles)
        .env("VEER_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    // Without `--users` there is no table, so the log must not report one as applied.
    assert!(log.contains("INFO"), "no info lines were logged: {log}");
    assert!(!log.contains("user table"), "{log}");
    let finals = final_profiles(&common::read_json_lines(&profiles));
    assert_eq!(finals.len(), 7);
    for profile in finals.values() {
        assert_eq!(profile["has_attributes"], false, "{profile}");
        assert_eq!(profile["attributes"], Value::Null, "{profile}");
        assert_eq!(profile["segment"], Value::Null, "{profile}");
        let shares: f64 = profile["interest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["share"].as_f64().unwrap())
            .sum();
        assert!(shares > 0.5 && shares <= 1.0001, "{profile}");
    }
}

#[test]
fn segment_features_follow_table_change() {
    use std::sync::Arc;
    use veer::replay::{model_windows, ModelRunSettings, ReplaySettings};
    use veer_models::attributes::{AttributeHistory, AttributeTable};

    let paths = ["part1.jsonl", "part2.jsonl"].map(|name| case_file(name).display().to_string());
    let (mut events, _) =
        veer::ingest::read_events(paths.to_vec(), veer::sources::SourceOptions::default()).unwrap();
    events.sort_by(veer_models::Event::processing_cmp);
    let table = |name: &str| {
        let text = std::fs::read_to_string(case_file(name)).unwrap();
        Arc::new(AttributeTable::parse(&text).unwrap().0)
    };
    let part2 = std::fs::read_to_string(case_file("part2.jsonl")).unwrap();
    let change_ms = part2.lines().map(event_ts).min().unwrap() as u64 * 1000;
    let mut history = AttributeHistory::default();
    history.push(0, table("users-v1.csv"));
    history.push(change_ms, table("users-v2.csv"));
    let models = ModelRunSettings {
        attributes: history,
        ..ModelRunSettings::default()
    };
    let settings = ReplaySettings {
        window_ms: 3_600_000,
        ..ReplaySettings::default()
    };
    let windows = model_windows(&events, &settings, &models).unwrap();

    let feature = |user: u64, after: bool, name: &str| -> Vec<f64> {
        windows
            .iter()
            .filter(|(id, _, _)| *id == user.into())
            .filter(|(_, start, _)| match after {
                true => *start >= change_ms,
                false => start + 3_600_000 <= change_ms,
            })
            .map(|(_, _, features)| features.get(name).unwrap())
            .collect()
    };
    // 2406 has no row before the change and a row (19, F) after it.
    assert!(feature(2406, false, "has_attributes")
        .iter()
        .all(|value| *value == 0.0));
    assert!(feature(2406, false, "age_unknown")
        .iter()
        .all(|value| *value == 1.0));
    let after = feature(2406, true, "age_under_25");
    assert!(
        !after.is_empty() && after.iter().all(|value| *value == 1.0),
        "{after:?}"
    );
    assert!(feature(2406, true, "gender_female")
        .iter()
        .all(|value| *value == 1.0));
    // 2407's row (52, F) is removed: unknown afterwards, not a default age.
    let before = feature(2407, false, "age_45_54");
    assert!(
        !before.is_empty() && before.iter().all(|value| *value == 1.0),
        "{before:?}"
    );
    assert!(feature(2407, true, "has_attributes")
        .iter()
        .all(|value| *value == 0.0));
    assert!(feature(2407, true, "age_unknown")
        .iter()
        .all(|value| *value == 1.0));
    assert!(feature(2407, true, "age_45_54")
        .iter()
        .all(|value| *value == 0.0));
}

/// `/users/{id}` shows the attribute row that the profile lines show, for every user of the
/// case's first part. The left join emits a row without attributes and its retraction
/// separately, and the profile store once dropped users whose retraction came last.
#[test]
fn profile_query_shows_attribute_row() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let part1 = std::fs::read_to_string(case_file("part1.jsonl")).unwrap();
    let mut child = stdin_run()
        .args(["--http", "127.0.0.1:0", "--users"])
        .arg(case_file("users-v1.csv"))
        .arg("--alerts")
        .arg(&alerts)
        .env("VEER_LOG", "info")
        .spawn()
        .expect("veer starts");
    let mut log = common::Log::capture(&mut child);
    let address = log.http_address();
    let mut stdin = child.stdin.take().unwrap();
    common::send_copies(&mut stdin, &part1, 6);

    // Users with a row, with their event count in part 1: the query is checked once the
    // detector has seen all of a user's events and the join has had time to catch up.
    let events_in_part1 = [("2401", 112), ("2402", 107), ("2403", 109), ("2405", 109)];
    let expected = expected_v1();
    let profiles = common::poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let mut profiles = Vec::new();
        for (user, events) in events_in_part1 {
            let (status, body) = common::http_get(address, &format!("/users/{user}"));
            if status != 200 {
                return Err(format!("/users/{user} returned {status}: {body}"));
            }
            let profile: Value = serde_json::from_str(&body).expect("profile JSON");
            if profile["events"].as_u64() != Some(events) || !profile["attributes"].is_object() {
                return Err(format!("/users/{user} has no attribute row yet: {profile}"));
            }
            profiles.push((user, profile));
        }
        Ok(profiles)
    });
    for (user, profile) in profiles {
        let (_, has_row, row) = expected
            .iter()
            .find(|(expected_user, _, _)| *expected_user == user)
            .expect("the case lists the user");
        let line = serde_json::json!({"has_attributes": true, "attributes": profile["attributes"]});
        assert_attributes(&line, *has_row, row, &format!("/users/{user}"));
    }

    drop(stdin);
    let status = child.wait().unwrap();
    let seen = log.finish();
    assert!(status.success(), "veer failed:\n{}", seen.join("\n"));
}

/// A user table that disappears during a run is reported once, the previous version stays,
/// and the file is loaded again when it comes back.
#[test]
fn missing_user_table_reported_and_reloaded() {
    let folder = tempfile::tempdir().unwrap();
    let users = folder.path().join("users.csv");
    std::fs::copy(case_file("users-v1.csv"), &users).unwrap();
    let mut child = stdin_run()
        .arg("--users")
        .arg(&users)
        .arg("--alerts")
        .arg(folder.path().join("alerts.jsonl"))
        .spawn()
        .expect("veer starts");
    let mut log = common::Log::capture(&mut child);
    let stdin = child.stdin.take().unwrap();
    log.wait_for(&["user table loaded", "rows=6"], Duration::from_secs(20));

    std::fs::remove_file(&users).unwrap();
    log.wait_for(&["the user table is missing"], Duration::from_secs(10));
    std::fs::copy(case_file("users-v2.csv"), &users).unwrap();
    log.wait_for(&["user table loaded", "rows=5"], Duration::from_secs(10));

    drop(stdin);
    let status = child.wait().unwrap();
    let seen = log.finish();
    assert!(status.success(), "veer failed:\n{}", seen.join("\n"));
    let missing = seen
        .iter()
        .filter(|line| line.contains("the user table is missing"))
        .count();
    assert_eq!(missing, 1, "{}", seen.join("\n"));
}

#[test]
fn bad_table_rows_logged_with_limit() {
    let folder = tempfile::tempdir().unwrap();
    let table = folder.path().join("users.csv");
    // The first invalid value is 5000 digits long, so its log line must cut it.
    let mut text = format!("user,age\n300,{}\n", "9".repeat(5000));
    for user in 0..100 {
        text.push_str(&format!("{user},abc\n"));
    }
    for user in 100..200 {
        text.push_str(&format!("{user}\n"));
    }
    for _ in 0..100 {
        text.push_str("7,30\n");
    }
    std::fs::write(&table, text).unwrap();
    let input = common::shared("cases/01-one-shift-one-alert/input.jsonl");
    let output = veer()
        .args(["run", "--no-progress", "--alerts", "/dev/null", "--input"])
        .arg(&input)
        .arg("--users")
        .arg(&table)
        .env("VEER_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    let count = |text: &str| stderr.lines().filter(|line| line.contains(text)).count();
    assert_eq!(count("invalid value in the user table"), 20, "{stderr}");
    assert_eq!(count("row skipped in the user table"), 20, "{stderr}");
    assert_eq!(count("duplicate user in the user table"), 20, "{stderr}");
    assert_eq!(
        count("more invalid values in the user table"),
        1,
        "{stderr}"
    );
    assert_eq!(count("more skipped rows in the user table"), 1, "{stderr}");
    assert_eq!(count("more duplicates in the user table"), 1, "{stderr}");
    // 101 invalid values (the long one and 100 `abc`), 100 skipped rows and 100 duplicates of
    // user 7.
    assert_eq!(count("more=81"), 1, "{stderr}");
    assert_eq!(count("more=80"), 2, "{stderr}");
    assert!(stderr.contains("... (5000 bytes)"), "{stderr}");
    let longest = stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} bytes");
}

#[test]
fn table_header_with_column_twice_rejected() {
    let folder = tempfile::tempdir().unwrap();
    let table = folder.path().join("users.csv");
    std::fs::write(&table, "user,age,region,age\n101,25,west,40\n").unwrap();
    let input = common::shared("cases/01-one-shift-one-alert/input.jsonl");
    let output = veer()
        .args(["run", "--no-progress", "--alerts", "/dev/null", "--input"])
        .arg(&input)
        .arg("--users")
        .arg(&table)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("column `age` appears more than once in the attribute table header"),
        "{stderr}"
    );
}
