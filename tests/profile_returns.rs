//! Profile lines (`--profiles`) of users who return after the eviction time
//! (`--evict-after`): a returning user is new, whatever the number of workers and however the
//! frontier steps through the idle time.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// 2017-11-27 00:00:00 UTC, in Unix seconds.
const START: i64 = 1_511_740_800;
const HOUR: i64 = 3_600;
const DAY: i64 = 24 * HOUR;
/// The eviction time of the runs, as `--evict-after` takes it.
const EVICT_AFTER: &str = "1d";

/// Users that keep event time moving with one event a minute.
const BACKGROUND_USERS: i64 = 40;
/// Users with a burst of events at 10:00 on day 0 and a second burst after an idle gap.
const RETURNING_FIRST_ID: i64 = 5_000;

/// The idle gaps between the last event of the first burst and the first of the second, in
/// seconds. Gaps up to one day keep the user, and longer ones evict it. The short excesses return
/// before any whole hour passes the eviction time, the longer ones after several.
const GAPS: [i64; 8] = [
    DAY - 60,
    DAY,
    DAY + 1,
    DAY + 59,
    DAY + 30 * 60,
    DAY + 4 * HOUR + 17,
    DAY + 11 * HOUR,
    DAY + 23 * HOUR + 30 * 60,
];

fn event_line(user: i64, category: i64, ts: i64) -> String {
    let item = category * 100 + user % 97;
    format!(r#"{{"user":{user},"item":{item},"category":{category},"behavior":"view","ts":{ts}}}"#)
}

/// One returning user: the user id, the time of the first event after the gap and the gap.
struct Return {
    user: i64,
    at: i64,
    gap: i64,
}

/// Writes three days of background traffic and, for every gap in [`GAPS`] and three start
/// minutes, a user whose first burst is in categories 1-2 and whose second is in 3-4, so the
/// return changes the interest. Returns the file and the returns.
fn write_stream(folder: &Path) -> (PathBuf, Vec<Return>) {
    let mut events: Vec<(i64, String)> = Vec::new();
    for minute in 0..3 * 24 * 60 {
        let ts = START + minute * 60;
        let user = 1 + minute % BACKGROUND_USERS;
        events.push((ts, event_line(user, 50 + minute % 7, ts)));
    }
    let mut returns = Vec::new();
    let mut user = RETURNING_FIRST_ID;
    for gap in GAPS {
        for start_minute in [0, 7, 45] {
            let first = START + 10 * HOUR + start_minute * 60;
            for (offset, category) in [(0, 1), (20, 2), (40, 1)] {
                events.push((first + offset, event_line(user, category, first + offset)));
            }
            let last = first + 40;
            let at = last + gap;
            for (offset, category) in [(0, 3), (30, 4), (50, 3)] {
                events.push((at + offset, event_line(user, category, at + offset)));
            }
            returns.push(Return { user, at, gap });
            user += 1;
        }
    }
    events.sort();
    let path = folder.join("events.jsonl");
    let text: String = events.iter().map(|(_, line)| format!("{line}\n")).collect();
    std::fs::write(&path, text).unwrap();
    (path, returns)
}

/// Runs `veer run` on `input` with `workers` workers and returns the profile file's text.
/// With `chunked`, the events come through standard input in chunks with pauses between them,
/// so the frontier stops at other times than when the whole file is read at once.
fn profile_text(folder: &Path, input: &Path, workers: usize, chunked: bool, label: &str) -> String {
    let profiles = folder.join(format!("profiles-{label}.jsonl"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command
        .args(["run", "--no-progress", "--evict-after", EVICT_AFTER])
        .args(["--workers", &workers.to_string()])
        .arg("--alerts")
        .arg(folder.join(format!("alerts-{label}.jsonl")))
        .arg("--profiles")
        .arg(&profiles)
        .env("VEER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if chunked {
        command
            .args(["--input", "-", "--format", "jsonl", "--order", "arrival"])
            .stdin(Stdio::piped());
    } else {
        command.arg("--input").arg(input).stdin(Stdio::null());
    }
    let mut child = command.spawn().expect("the veer binary runs");
    if chunked {
        let text = std::fs::read_to_string(input).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut stdin = child.stdin.take().unwrap();
        for chunk in lines.chunks(250) {
            for line in chunk {
                writeln!(stdin, "{line}").unwrap();
            }
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{label}: {stderr}");
    std::fs::read_to_string(&profiles).unwrap()
}

/// Returns each user's profile lines in file order, by user id as printed.
fn lines_by_user(text: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).expect("each profile line is JSON");
        by_user
            .entry(value["user"].to_string())
            .or_default()
            .push(value);
    }
    by_user
}

/// Checks the lines of every returning user. An evicted user's first line after the return
/// has the reason `new_user`, the event count of the return alone and no alert from before.
/// A user idle for at most the eviction time has no second `new_user` line.
fn assert_returns(text: &str, returns: &[Return], label: &str) {
    let by_user = lines_by_user(text);
    for Return { user, at, gap } in returns {
        let lines = &by_user[&user.to_string()];
        let case = format!("{label}: user {user}, gap {gap} s");
        let new_user_lines = lines
            .iter()
            .filter(|line| line["reasons"] == serde_json::json!(["new_user"]))
            .count();
        if *gap <= DAY {
            assert_eq!(new_user_lines, 1, "{case}: kept, so new once: {lines:?}");
            continue;
        }
        let first_after = lines
            .iter()
            .find(|line| line["ts"].as_i64().unwrap() >= *at)
            .unwrap_or_else(|| panic!("{case}: no line after the return: {lines:?}"));
        assert_eq!(
            new_user_lines, 2,
            "{case}: evicted, so new twice: {lines:?}"
        );
        assert_eq!(first_after["ts"], *at, "{case}: {first_after}");
        assert_eq!(
            first_after["reasons"],
            serde_json::json!(["new_user"]),
            "{case}: {first_after}"
        );
        assert_eq!(first_after["events"], 1, "{case}: {first_after}");
        let alert_ts = first_after["last_alert"]["ts"].as_i64();
        assert!(
            alert_ts.is_none_or(|ts| ts >= *at),
            "{case}: an alert from before the return: {first_after}"
        );
    }
}

#[test]
fn returning_users_same_in_every_run() {
    let folder = tempfile::tempdir().unwrap();
    let (input, returns) = write_stream(folder.path());
    let reference = profile_text(folder.path(), &input, 1, false, "file-1");
    assert_returns(&reference, &returns, "file, 1 worker");

    let runs = [
        (2, false, "file-2"),
        (2, false, "file-2-again"),
        (1, true, "stdin-1"),
        (2, true, "stdin-2"),
        (2, true, "stdin-2-again"),
    ];
    for (workers, chunked, label) in runs {
        let text = profile_text(folder.path(), &input, workers, chunked, label);
        assert_returns(&text, &returns, label);
        // Lines of one time are sorted by user and times come in order, so the files match
        // line for line.
        let differing = reference
            .lines()
            .zip(text.lines())
            .filter(|(left, right)| left != right)
            .count();
        assert_eq!(
            reference.lines().count(),
            text.lines().count(),
            "{label}: line count"
        );
        assert_eq!(differing, 0, "{label}: lines differing from 1 worker");
    }
}
