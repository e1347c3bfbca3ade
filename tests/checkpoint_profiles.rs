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
    let checkpoints = folder.path().join("checkpoints");
    let log = run_models(
        &events,
        folder.path(),
        "reference",
        &[
            "--checkpoint-dir",
            arg(&checkpoints),
            "--checkpoint-interval",
            "1ms",
        ],
    );
    // The newest checkpoint is the last one written, on the last day, after the first fit.
    assert!(log.contains("checkpoint written"), "no checkpoint: {log}");
    assert!(
        log.contains("models fitted"),
        "no fit before the checkpoints: {log}"
    );
    let resumed_log = run_models(
        &events,
        folder.path(),
        "resumed",
        &["--resume", arg(&checkpoints), "--checkpoint-interval", "1h"],
    );
    assert!(resumed_log.contains("resumed from"), "{resumed_log}");

    let reference = read_lines(&folder.path().join("reference.profiles"));
    let resumed = read_lines(&folder.path().join("resumed.profiles"));

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
}
