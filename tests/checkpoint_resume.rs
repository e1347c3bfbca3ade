//! Checkpoints and resume through the real binary: a resumed run adds exactly the missing
//! alerts, and a corrupt checkpoint is rejected with the file and the reason.

mod common;

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
    let (events, _) = common::generate_stream(dir, 600, 9, 7);
    events.to_string_lossy().into_owned()
}

/// Runs `veer run` on `events` with alerts to `alerts`, no progress display, and `extra`.
fn run_job(events: &str, alerts: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "run",
        "--input",
        events,
        "--alerts",
        alerts.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Returns the newest checkpoint file in `folder`.
fn newest_checkpoint(folder: &Path) -> std::path::PathBuf {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max()
        .expect("the checkpoint folder contains no file")
}

/// Runs on `events` with a checkpoint after every input step, alerts to `a.jsonl` in `dir`,
/// and returns the checkpoint folder, `ck` in `dir`.
fn write_checkpoints(events: &str, dir: &Path) -> std::path::PathBuf {
    let checkpoints = dir.join("ck");
    let (ok, stderr) = run_job(
        events,
        &dir.join("a.jsonl"),
        &[
            "--checkpoint-dir",
            checkpoints.to_str().unwrap(),
            "--checkpoint-interval",
            "1ms",
        ],
    );
    assert!(ok, "checkpointed run failed: {stderr}");
    checkpoints
}

/// Runs with checkpoints, resumes from the newest one, and checks that the alerts written
/// before its cut plus the resumed run's alerts equal the reference.
fn resume_matches_reference(order: &str, workers: &str, resume_workers: &str) {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path());
    let reference = dir.path().join("reference.jsonl");
    let (ok, stderr) = run_job(
        &events,
        &reference,
        &["--order", order, "--workers", workers],
    );
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
    let (ok, stderr) = run_job(
        &events,
        &first,
        &[
            "--order",
            order,
            "--workers",
            workers,
            "--checkpoint-dir",
            checkpoints.to_str().unwrap(),
            "--checkpoint-interval",
            "1ms",
        ],
    );
    assert!(ok, "checkpointed run failed: {stderr}");
    assert_eq!(sorted_lines(&first), reference_lines);
    assert!(
        stderr.contains("checkpoint written"),
        "no checkpoint: {stderr}"
    );
    let written = stderr.matches("checkpoint written").count();
    let summary_line = format!("checkpoints {written:>18}");
    assert!(
        stderr.contains(&summary_line),
        "summary lacks `{summary_line}`: {stderr}"
    );

    // The newest checkpoint cuts the run: alerts before its cut stay in `first`, the resume
    // writes the rest. Keep only the alerts before the cut, as a kill right after it would.
    let bytes = std::fs::read(newest_checkpoint(&checkpoints)).unwrap();
    assert_eq!(&bytes[..8], b"VEERCKPT");
    let rest = dir.path().join("rest.jsonl");
    let (ok, stderr) = run_job(
        &events,
        &rest,
        &[
            "--order",
            order,
            "--workers",
            resume_workers,
            "--resume",
            checkpoints.to_str().unwrap(),
            "--checkpoint-interval",
            "1h",
        ],
    );
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
    let checkpoints = write_checkpoints(&events, dir.path());
    let newest = newest_checkpoint(&checkpoints);
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&newest, &bytes).unwrap();

    let (ok, stderr) = run_job(
        &events,
        &dir.path().join("b.jsonl"),
        &["--resume", checkpoints.to_str().unwrap()],
    );
    assert!(!ok, "a corrupt checkpoint was accepted");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(
        stderr.contains(newest.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );

    // Cut short, the file is rejected as truncated.
    std::fs::write(&newest, &bytes[..middle]).unwrap();
    let (ok, stderr) = run_job(
        &events,
        &dir.path().join("c.jsonl"),
        &["--resume", checkpoints.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("truncated"), "{stderr}");

    // An empty folder holds no checkpoint to resume from.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, stderr) = run_job(
        &events,
        &dir.path().join("d.jsonl"),
        &["--resume", empty.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("holds no checkpoint"), "{stderr}");
}

#[test]
fn resume_errors_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path());
    let checkpoints = write_checkpoints(&events, dir.path());
    let resume = |name: &str, folder: &Path, extra: &[&str]| {
        let mut options = vec!["--resume", folder.to_str().unwrap()];
        options.extend_from_slice(extra);
        let (ok, stderr) = run_job(&events, &dir.path().join(name), &options);
        assert!(!ok, "the resume was accepted: {stderr}");
        stderr
    };

    // Another eviction time: the error names the option and both values.
    let stderr = resume("evict.jsonl", &checkpoints, &["--evict-after", "1d"]);
    assert!(
        stderr.contains(
            "--evict-after in milliseconds (null: never): checkpoint 604800000, this run 86400000"
        ),
        "{stderr}"
    );

    // A missing folder is not found, rather than empty.
    let stderr = resume("missing.jsonl", &dir.path().join("absent"), &[]);
    assert!(stderr.contains("absent not found"), "{stderr}");

    // A damaged newest checkpoint: the error names the intact older one and the fix.
    let newest = newest_checkpoint(&checkpoints);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let stderr = resume("damaged.jsonl", &checkpoints, &[]);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(stderr.contains("is intact: move"), "{stderr}");

    // Without an older one, the error advises a start without --resume.
    let older: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| *path != newest)
        .collect();
    assert!(!older.is_empty(), "only one checkpoint was kept");
    for path in older {
        std::fs::remove_file(path).unwrap();
    }
    let stderr = resume("alone.jsonl", &checkpoints, &[]);
    assert!(stderr.contains("no older checkpoint"), "{stderr}");
}
