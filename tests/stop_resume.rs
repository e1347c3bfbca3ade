//! A shutdown (SIGINT) of a run that writes checkpoints, then `--resume`: the alert file must
//! end byte for byte as an uninterrupted run writes it, with and without `--models`.
//!
//! The input comes through standard input, so the test decides how much of it the stopped run
//! reads: it writes a whole number of the reader's batches, waits for the checkpoint that the
//! last of them leads to, and only then sends SIGINT. The stop point is thus the same in
//! every run.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Log;

/// Events per batch of the input reader, which sends a pipe's events only in full batches
/// until the pipe ends.
const READER_BATCH: usize = 4096;

/// Default allowed out-of-orderness, in milliseconds: the watermark trails the newest event
/// by this much.
const OUT_OF_ORDERNESS_MS: u64 = 600_000;

/// Time limit of each wait for a log line.
const LOG_WAIT: Duration = Duration::from_secs(120);

/// Starts `veer run` on standard input with `extra` options, alerts to `alerts`, and piped
/// standard input and error.
fn start_on_stdin(alerts: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--input", "-", "--order", "arrival", "--no-progress"])
        .args(["--alerts", common::arg(alerts)])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veer starts")
}

/// Runs `veer run` to the end with all of `events` on standard input, and returns its log.
fn run_to_end(events: &Path, alerts: &Path, extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--input", "-", "--order", "arrival", "--no-progress"])
        .args(["--alerts", common::arg(alerts)])
        .args(extra)
        .stdin(std::fs::File::open(events).expect("events file"))
        .output()
        .expect("veer starts");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "run failed: {log}");
    log
}

/// Sends SIGINT to `child`.
fn interrupt(child: &Child) {
    // SAFETY: kill(2) on the pid of a child this test started and has not waited for.
    let result = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(result, 0, "kill failed");
}

/// Returns the cut, in Unix milliseconds, that the watermark reaches after the first `lines`
/// lines of `events`: the newest event time minus the out-of-orderness.
fn watermark_after(events: &str, lines: usize) -> u64 {
    let newest = events
        .lines()
        .take(lines)
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("event line");
            event["ts"].as_u64().expect("ts in seconds")
        })
        .max()
        .expect("some events");
    newest * 1000 - OUT_OF_ORDERNESS_MS
}

/// Returns every file in `folder` with its bytes, sorted by name.
fn folder_contents(folder: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(folder)
        .expect("folder")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("file");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Generates the test stream in `folder`: 600 users over 9 days, about 70,000 events.
fn generate(folder: &Path) -> PathBuf {
    let (events, _) = common::generate_stream(folder, 600, 9, 7);
    events
}

/// Feeds the first `batches` reader batches of `events` to a run with checkpoints, stops it
/// with SIGINT once they are processed, and returns the stopped run's log.
fn stop_after_batches(
    events: &Path,
    alerts: &Path,
    checkpoints: &Path,
    batches: usize,
    extra: &[&str],
) -> Vec<String> {
    let text = std::fs::read_to_string(events).expect("events file");
    let lines = batches * READER_BATCH;
    assert!(text.lines().count() > lines, "the stream is too short");
    let cut = watermark_after(&text, lines);

    let mut options = vec![
        "--checkpoint-dir",
        common::arg(checkpoints),
        "--checkpoint-interval",
        "1ms",
    ];
    options.extend_from_slice(extra);
    let mut child = start_on_stdin(alerts, &options);
    let mut log = Log::capture(&mut child);
    let mut stdin = child.stdin.take().expect("piped standard input");
    for line in text.lines().take(lines) {
        writeln!(stdin, "{line}").expect("write to veer");
    }
    stdin.flush().expect("flush to veer");
    // The checkpoint at this cut follows the last batch, so every line sent is processed.
    log.wait_for(&["checkpoint written", &format!("cut_ms={cut} ")], LOG_WAIT);

    interrupt(&child);
    let status = child.wait().expect("veer exits");
    drop(stdin);
    let lines = log.finish();
    assert!(status.success(), "stopped run failed: {}", lines.join("\n"));
    lines
}

/// Stops a run after `batches` reader batches, resumes it with the whole input, and checks
/// that the alert file equals the uninterrupted run's.
fn stop_and_resume_match_reference(batches: usize, extra: &[&str]) {
    let folder = tempfile::tempdir().expect("temporary folder");
    let events = generate(folder.path());
    let reference = folder.path().join("reference.jsonl");
    run_to_end(&events, &reference, extra);
    let reference_bytes = std::fs::read(&reference).expect("reference alerts");
    assert!(
        reference_bytes
            .iter()
            .filter(|byte| **byte == b'\n')
            .count()
            > 100,
        "too few alerts to test"
    );

    let alerts = folder.path().join("alerts.jsonl");
    let checkpoints = folder.path().join("ck");
    let stopped = stop_after_batches(&events, &alerts, &checkpoints, batches, extra);
    let requested = stopped
        .iter()
        .position(|line| line.contains("shutdown requested"))
        .expect("the run logs the shutdown request");
    let after_request = &stopped[requested..];
    assert!(
        after_request
            .iter()
            .any(|line| line.contains("run interrupted by the shutdown")),
        "no stop message: {}",
        stopped.join("\n")
    );
    // The checkpoint of the last batch is at the stop's cut, so no other is written.
    assert!(
        !after_request
            .iter()
            .any(|line| line.contains("checkpoint written")),
        "checkpoint written after the shutdown request: {}",
        stopped.join("\n")
    );

    let mut options = vec!["--resume", common::arg(&checkpoints)];
    options.extend_from_slice(extra);
    run_to_end(&events, &alerts, &options);
    let resumed_bytes = std::fs::read(&alerts).expect("alert file");
    assert!(
        resumed_bytes == reference_bytes,
        "the stopped and resumed run wrote other alerts than the uninterrupted one:\n{}",
        String::from_utf8_lossy(&resumed_bytes)
    );
}

#[test]
fn sigint_then_resume_with_models() {
    // Nine batches end after the bootstrap period, with scored windows still open.
    stop_and_resume_match_reference(9, &["--models", "--workers", "2"]);
}

#[test]
fn sigint_then_resume_with_models_and_eviction() {
    // Users idle for a day are evicted (about 1,300 times on this stream), so users leave and
    // return on both sides of the stop.
    stop_and_resume_match_reference(9, &["--models", "--workers", "2", "--evict-after", "1d"]);
}

#[test]
fn sigint_then_resume_without_models() {
    stop_and_resume_match_reference(9, &["--workers", "2"]);
}

#[test]
fn sigint_during_resume_replay() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let events = generate(folder.path());
    let alerts = folder.path().join("alerts.jsonl");
    let checkpoints = folder.path().join("ck");
    stop_after_batches(&events, &alerts, &checkpoints, 9, &[]);
    let checkpoints_before = folder_contents(&checkpoints);
    let alerts_before = std::fs::read(&alerts).expect("alert file");

    // The resume gets fewer lines than its checkpoint's run had read, and a SIGINT while it
    // reads them.
    let mut child = start_on_stdin(&alerts, &["--resume", common::arg(&checkpoints)]);
    let mut log = Log::capture(&mut child);
    let mut stdin = child.stdin.take().expect("piped standard input");
    let text = std::fs::read_to_string(&events).expect("events file");
    for line in text.lines().take(READER_BATCH) {
        writeln!(stdin, "{line}").expect("write to veer");
    }
    stdin.flush().expect("flush to veer");
    log.wait_for(&["resuming from checkpoint"], LOG_WAIT);
    interrupt(&child);
    let status = child.wait().expect("veer exits");
    drop(stdin);
    let lines = log.finish();
    let log_text = lines.join("\n");

    assert!(status.success(), "interrupted resume failed: {log_text}");
    assert!(
        log_text.contains("while the resume was still reading"),
        "no interruption message: {log_text}"
    );
    assert!(log_text.contains("lines read"), "no summary: {log_text}");
    assert!(
        folder_contents(&checkpoints) == checkpoints_before,
        "the checkpoint folder changed"
    );
    assert!(
        std::fs::read(&alerts).expect("alert file") == alerts_before,
        "the alert file changed"
    );
}
