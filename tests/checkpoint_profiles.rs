//! Profile segments after a resume of `veer run --models --profiles`, through the real binary.
//! A run resumed from a checkpoint taken after the first fit shows each user's segment on its
//! profile lines as a run that was never stopped does.
//!
//! Only the `segment` field is compared. The profile cores (interest, event counts, last
//! alert) and the writer's previous lines are not stored in a checkpoint, so a resumed run
//! writes a `new_user` line at each user's first change after the cut.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{arg, generate_stream};
use serde_json::Value;

/// Runs `veer run --models --profiles` with one worker, logging at info level, and returns
/// the log. One worker keeps the profile lines free of the timing of the worker threads.
fn run_models(events: &Path, folder: &Path, name: &str, extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--input", arg(events), "--models", "--workers", "1"])
        .args(["--alerts", arg(&folder.join(format!("{name}.jsonl")))])
        .args(["--profiles", arg(&folder.join(format!("{name}.profiles")))])
        .arg("--no-progress")
        .args(extra)
        .env("VEER_LOG", "info")
        .output()
        .expect("veer starts");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{name} run failed: {log}");
    log
}

/// One profile line: user, time in Unix seconds, whether it is an end-of-input line, and
/// the segment (`None` for null).
struct Line {
    user: String,
    ts: i64,
    end_of_input: bool,
    segment: Option<u64>,
    /// Whether the user table had a row for the user.
    has_attributes: bool,
}

fn read_lines(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).expect("profile file");
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("a JSON profile line");
            Line {
                user: value["user"].to_string(),
                ts: value["ts"].as_i64().expect("ts"),
                end_of_input: value["reasons"][0] == "end_of_input",
                segment: value["segment"].as_u64(),
                has_attributes: value["has_attributes"] == true,
            }
        })
        .collect()
}

/// Returns the segment of `user`'s last change line at or before second `ts`, as `lines`
/// (in file order) show it, or `None` when the user has no such line.
fn segment_at(lines: &[Line], user: &str, ts: i64) -> Option<Option<u64>> {
    lines
        .iter()
        .filter(|line| !line.end_of_input && line.user == user && line.ts <= ts)
        .last()
        .map(|line| line.segment)
}

#[test]
fn resumed_profiles_keep_segments() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 1000, 6, 7);
    assert_resume_keeps_segments(folder.path(), &events, &[]);
}

#[test]
fn resumed_text_ids_keep_table_rows() {
    // The events write every user id as text ("7") and the user table as an integer (7),
    // which joins both. A resume sends the table again from event time 0 under both forms,
    // so the rows reach the text ids after the cut as in a run that was never stopped.
    let folder = tempfile::tempdir().expect("temporary folder");
    let (generated, _) = generate_stream(folder.path(), 1000, 6, 7);
    let text = std::fs::read_to_string(&generated).expect("generated events");
    let events = folder.path().join("text-ids.jsonl");
    std::fs::write(&events, common::quote_users(&text)).expect("events with text ids");
    let mut users: Vec<u64> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok()?["user"].as_u64())
        .collect();
    users.sort_unstable();
    users.dedup();
    let mut table = String::from("user,age,gender\n");
    for user in &users {
        let age = ["18-24", "25-34", "35-44"][(*user % 3) as usize];
        let gender = ["F", "M"][(*user % 2) as usize];
        table.push_str(&format!("{user},{age},{gender}\n"));
    }
    let table_path = folder.path().join("users.csv");
    std::fs::write(&table_path, table).expect("user table");

    let resumed =
        assert_resume_keeps_segments(folder.path(), &events, &["--users", arg(&table_path)]);
    let rowless: Vec<&Line> = resumed.iter().filter(|line| !line.has_attributes).collect();
    assert!(
        rowless.is_empty(),
        "{} of {} resumed profile lines have no table row, the first of user {} at {}",
        rowless.len(),
        resumed.len(),
        rowless[0].user,
        rowless[0].ts
    );
    assert!(
        resumed.iter().all(|line| line.user.starts_with('"')),
        "the resumed lines name integer users, not the text ids of the input"
    );
}

/// Runs `veer run --models --profiles` on `events` with a checkpoint at every step, resumes
/// from the newest one, and asserts that the resumed profile lines show the segments of the
/// run that was not stopped. Returns the resumed run's profile lines.
fn assert_resume_keeps_segments(folder: &Path, events: &Path, options: &[&str]) -> Vec<Line> {
    let checkpoints = folder.join("checkpoints");
    let mut first_options = vec![
        "--checkpoint-dir",
        arg(&checkpoints),
        "--checkpoint-interval",
        "1ms",
    ];
    first_options.extend_from_slice(options);
    let log = run_models(events, folder, "reference", &first_options);
    // The newest checkpoint is the last one written, on the last day, after the first fit.
    assert!(log.contains("checkpoint written"), "no checkpoint: {log}");
    assert!(
        log.contains("models fitted"),
        "no fit before the checkpoints: {log}"
    );
    let mut resume_options = vec!["--resume", arg(&checkpoints), "--checkpoint-interval", "1h"];
    resume_options.extend_from_slice(options);
    let resumed_log = run_models(events, folder, "resumed", &resume_options);
    assert!(resumed_log.contains("resumed from"), "{resumed_log}");

    let reference = read_lines(&folder.join("reference.profiles"));
    let resumed = read_lines(&folder.join("resumed.profiles"));

    // A resumed user's last line of a second against the reference's segment at that second.
    let mut last_of_second: BTreeMap<(&str, i64), Option<u64>> = BTreeMap::new();
    for line in resumed.iter().filter(|line| !line.end_of_input) {
        last_of_second.insert((&line.user, line.ts), line.segment);
    }
    let mut with_segment = 0;
    for ((user, ts), segment) in &last_of_second {
        let expected = segment_at(&reference, user, *ts).expect("the user has reference lines");
        assert_eq!(*segment, expected, "segment of user {user} at {ts}");
        with_segment += usize::from(segment.is_some());
    }
    assert!(
        with_segment > 100,
        "too few resumed lines with a segment to test: {with_segment}"
    );

    // Every user of the resumed run ends in the segment the reference ends in.
    let final_segments: BTreeMap<&str, Option<u64>> = reference
        .iter()
        .filter(|line| line.end_of_input)
        .map(|line| (line.user.as_str(), line.segment))
        .collect();
    let resumed_final: Vec<&Line> = resumed.iter().filter(|line| line.end_of_input).collect();
    assert!(
        !resumed_final.is_empty(),
        "the resumed run wrote no end-of-input lines"
    );
    for line in resumed_final {
        assert_eq!(
            Some(&line.segment),
            final_segments.get(line.user.as_str()),
            "final segment of user {}",
            line.user
        );
    }
    resumed
}
