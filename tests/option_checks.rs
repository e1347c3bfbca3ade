//! Options of `veer run` that are checked before anything is read: a value that would make
//! the run misbehave later is rejected at start with exit code 2, and a device as an output
//! is accepted.

mod common;

use common::{arg, run_veer_exact, shared};

const CASE_ONE_SHIFT: &str = "cases/01-one-shift-one-alert/input.jsonl";

#[test]
fn checkpoint_interval_without_folder_rejected() {
    let input = shared(CASE_ONE_SHIFT);
    let run = run_veer_exact(&[
        "run",
        "--input",
        arg(&input),
        "--alerts",
        "/dev/null",
        "--checkpoint-interval",
        "1s",
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("add --checkpoint-dir DIR"),
        "{}",
        run.stderr
    );
}

#[test]
fn malformed_webhook_url_rejected_at_start() {
    let input = shared(CASE_ONE_SHIFT);
    let folder = tempfile::tempdir().unwrap();
    let dead_letter = folder.path().join("webhook-dead.jsonl");
    let run = run_veer_exact(&[
        "run",
        "--input",
        arg(&input),
        "--alerts",
        "/dev/null",
        "--webhook",
        "http://[::1/x",
        "--webhook-dead-letter",
        arg(&dead_letter),
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no closing `]`"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("lines read"),
        "the run started: {}",
        run.stderr
    );
}

#[test]
fn zero_line_timeout_rejected() {
    let run = run_veer_exact(&["run", "--listen", "127.0.0.1:0", "--line-timeout", "0s"]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("invalid --line-timeout 0s"),
        "{}",
        run.stderr
    );
}

#[test]
fn dev_null_as_input_and_outputs_accepted() {
    let run = run_veer_exact(&[
        "run",
        "--no-progress",
        "--input",
        "/dev/null",
        "--alerts",
        "/dev/null",
        "--dead-letter",
        "/dev/null",
    ]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stderr.contains("lines read"), "{}", run.stderr);
}
