//! Checkpoints and resume through the real binary: a resumed run adds exactly the missing
//! alerts, and a corrupt checkpoint is rejected with the file and the reason.

use std::path::Path;
use std::process::Command;

fn veer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veer"))
}

fn run(args: &[&str]) -> (bool, String) {
    let output = veer().args(args).output().expect("veer starts");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn generate(dir: &Path) -> String {
    let events = dir.join("events.jsonl");
    let (ok, stderr) = run(&[
        "generate",
        "--users",
        "600",
        "--days",
        "9",
        "--out",
        events.to_str().unwrap(),
        "--truth",
        dir.join("truth.jsonl").to_str().unwrap(),
    ]);
    assert!(ok, "generate failed: {stderr}");
    events.to_string_lossy().into_owned()
}

/// Runs with checkpoints, stops after checkpoint `stop_after` is written by resuming from a
/// copy of the folder taken then, and checks that the union of both alert files equals the
/// reference.
fn resume_matches_reference(order: &str, workers: &str, resume_workers: &str) {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path());
    let reference = dir.path().join("reference.jsonl");
    let (ok, stderr) = run(&[
        "run",
        "--input",
        &events,
        "--order",
        order,
        "--workers",
        workers,
        "--alerts",
        reference.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(ok, "reference run failed: {stderr}");
    let reference_lines = sorted_lines(&reference);
    assert!(
        reference_lines.len() > 20,
        "too few alerts to test: {}",
        reference_lines.len()
    );

    // A full run with frequent checkpoints writes the same alerts.
    let checkpoints = dir.path().join("ck");
    let first = dir.path().join("first.jsonl");
    let (ok, stderr) = run(&[
        "run",
        "--input",
        &events,
        "--order",
        order,
        "--workers",
        workers,
        "--alerts",
        first.to_str().unwrap(),
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
        "--checkpoint-interval",
        "1ms",
        "--no-progress",
    ]);
    assert!(ok, "checkpointed run failed: {stderr}");
    assert_eq!(sorted_lines(&first), reference_lines);
    assert!(
        stderr.contains("checkpoint written"),
        "no checkpoint: {stderr}"
    );

    // The newest checkpoint cuts the run: alerts before its cut stay in `first`, the resume
    // writes the rest. Keep only the alerts before the cut, as a kill right after it would.
    let newest = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max()
        .unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    assert_eq!(&bytes[..8], b"VEERCKPT");
    let rest = dir.path().join("rest.jsonl");
    let (ok, stderr) = run(&[
        "run",
        "--input",
        &events,
        "--order",
        order,
        "--workers",
        resume_workers,
        "--alerts",
        rest.to_str().unwrap(),
        "--resume",
        checkpoints.to_str().unwrap(),
        "--checkpoint-interval",
        "1h",
        "--no-progress",
    ]);
    assert!(ok, "resume failed: {stderr}");
    assert!(
        stderr.contains("resumed from"),
        "summary names no checkpoint: {stderr}"
    );
    let before_cut: usize = stderr
        .lines()
        .find_map(|line| line.strip_prefix("resumed from"))
        .and_then(|rest| rest.split(", ").nth(2))
        .and_then(|part| part.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("alerts before the cut in the summary");
    let after = sorted_lines(&rest);
    assert_eq!(before_cut + after.len(), reference_lines.len());
    let mut union: Vec<String> = after;
    let first_unsorted = std::fs::read_to_string(&first).unwrap();
    union.extend(first_unsorted.lines().take(before_cut).map(str::to_string));
    union.sort();
    union.dedup();
    assert_eq!(union, reference_lines);
}

#[test]
fn resume_arrival_order_other_workers() {
    resume_matches_reference("arrival", "2", "3");
}

#[test]
fn resume_sorted_replay_one_worker() {
    resume_matches_reference("event-time", "2", "1");
}

#[test]
fn corrupt_checkpoint_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path());
    let checkpoints = dir.path().join("ck");
    let (ok, stderr) = run(&[
        "run",
        "--input",
        &events,
        "--alerts",
        dir.path().join("a.jsonl").to_str().unwrap(),
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
        "--checkpoint-interval",
        "1ms",
        "--no-progress",
    ]);
    assert!(ok, "checkpointed run failed: {stderr}");
    let newest = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&newest, &bytes).unwrap();

    let output = veer()
        .args([
            "run",
            "--input",
            &events,
            "--alerts",
            dir.path().join("b.jsonl").to_str().unwrap(),
            "--resume",
            checkpoints.to_str().unwrap(),
            "--no-progress",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a corrupt checkpoint was accepted"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(
        stderr.contains(newest.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );

    // Cut short, the file is rejected as truncated.
    std::fs::write(&newest, &bytes[..middle]).unwrap();
    let (ok, stderr) = run(&[
        "run",
        "--input",
        &events,
        "--resume",
        checkpoints.to_str().unwrap(),
        "--no-progress",
        "--alerts",
        dir.path().join("c.jsonl").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("truncated"), "{stderr}");

    // An empty folder holds no checkpoint to resume from.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, stderr) = run(&[
        "run",
        "--input",
        &events,
        "--resume",
        empty.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("holds no checkpoint"), "{stderr}");
}
