//! Checkpoints of `veer run --models` through the real binary. A run killed after a checkpoint
//! taken before the first fit, or after it, and resumed writes the alerts of a run that was
//! never stopped. A run with the other `--models` setting rejects the checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{arg, generate_stream};
use veer::checkpoint::file;
use veer::checkpoint::snapshot::CheckpointFile;

/// What one run of `veer run` wrote.
struct Run {
    ok: bool,
    stderr: String,
}

/// Runs `veer run` on `events` with alerts to `alerts`, logging at info level.
fn run(events: &Path, alerts: &Path, extra: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--input", arg(events), "--alerts", arg(alerts)])
        .arg("--no-progress")
        .args(extra)
        .env("VEER_LOG", "info")
        .output()
        .expect("veer starts");
    Run {
        ok: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Returns the value of `name=` in a log line.
fn log_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()
}

/// A checkpoint that a run wrote: its file and its cut in Unix milliseconds.
struct Written {
    file: PathBuf,
    cut_ms: u64,
}

fn checkpoints_written(log: &str) -> Vec<Written> {
    log.lines()
        .filter(|line| line.contains("checkpoint written"))
        .map(|line| Written {
            file: PathBuf::from(log_value(line, "file").expect("file= in the log line")),
            cut_ms: log_value(line, "cut_ms")
                .and_then(|cut| cut.parse().ok())
                .expect("cut_ms= in the log line"),
        })
        .collect()
}

/// A stream long enough for checkpoints on both sides of the first fit, with the alerts of a
/// model run that took a checkpoint at every input step and kept all of them.
struct Checkpointed {
    folder: tempfile::TempDir,
    events: PathBuf,
    config: PathBuf,
    /// Options of the checkpointed run besides the checkpoints, which the resume repeats.
    options: Vec<String>,
    /// The alerts of the checkpointed run.
    alerts: String,
    checkpoints: Vec<Written>,
    /// End of the bootstrap period, in Unix milliseconds.
    bootstrap_end_ms: u64,
}

fn checkpointed(workers: &str, options: &[&str]) -> Checkpointed {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 1500, 6, 7);
    let config = folder.path().join("keep.toml");
    std::fs::write(&config, "[state]\ncheckpoint_keep = 1000\n").expect("config file");
    let alerts = folder.path().join("checkpointed.jsonl");
    let checkpoints = folder.path().join("checkpoints");
    let mut first_options = vec![
        "--models",
        "--workers",
        workers,
        "--config",
        arg(&config),
        "--checkpoint-dir",
        arg(&checkpoints),
        "--checkpoint-interval",
        "1ms",
    ];
    first_options.extend_from_slice(options);
    let first = run(&events, &alerts, &first_options);
    assert!(first.ok, "checkpointed run failed: {}", first.stderr);
    let bootstrap_end_ms = first
        .stderr
        .lines()
        .find(|line| line.contains("bootstrap period set"))
        .and_then(|line| log_value(line, "end_ms"))
        .and_then(|end| end.parse().ok())
        .expect("the bootstrap period in the log");
    Checkpointed {
        events,
        config,
        options: options.iter().map(|option| option.to_string()).collect(),
        alerts: std::fs::read_to_string(&alerts).expect("alerts"),
        checkpoints: checkpoints_written(&first.stderr),
        bootstrap_end_ms,
        folder,
    }
}

/// Resumes from `checkpoint` alone, as after a kill that left the alerts written before its
/// cut and three more in the alert file, and checks that the file then equals `expected`.
fn assert_resume_matches(
    run_with: &Checkpointed,
    checkpoint: &Path,
    workers: &str,
    expected: &str,
) {
    let name = checkpoint
        .file_name()
        .expect("a file name")
        .to_string_lossy();
    let folder = run_with
        .folder
        .path()
        .join(format!("resume-{name}-{workers}"));
    std::fs::create_dir(&folder).expect("resume folder");
    std::fs::copy(checkpoint, folder.join(&*name)).expect("copy of the checkpoint");
    let contents: CheckpointFile = file::read(checkpoint).expect("the checkpoint reads");
    let before_cut = contents.meta.alerts_written as usize;

    // The killed run had also written a few alerts after the cut.
    let expected_lines: Vec<&str> = expected.lines().collect();
    let written = (before_cut + 3).min(expected_lines.len());
    let alerts = folder.join("alerts.jsonl");
    let mut left_behind = expected_lines[..written].join("\n");
    left_behind.push('\n');
    std::fs::write(&alerts, left_behind).expect("alert file");

    let mut options = vec![
        "--models",
        "--workers",
        workers,
        "--config",
        arg(&run_with.config),
        "--resume",
        arg(&folder),
        "--checkpoint-interval",
        "1h",
    ];
    options.extend(run_with.options.iter().map(String::as_str));
    let resumed = run(&run_with.events, &alerts, &options);
    assert!(resumed.ok, "resume from {name} failed: {}", resumed.stderr);
    assert!(
        resumed.stderr.contains("resumed from"),
        "the summary names no checkpoint: {}",
        resumed.stderr
    );
    let after = std::fs::read_to_string(&alerts).expect("alerts after the resume");
    assert!(
        after == expected,
        "resumed from {name} (cut {} alerts in) with {workers} workers: {} alert lines, expected {}",
        before_cut,
        after.lines().count(),
        expected_lines.len()
    );
}

/// Runs the checkpointed run's options without checkpoints, checks that the checkpoints
/// changed no alert, and returns the alerts and the log of that run.
fn run_uninterrupted(run_with: &Checkpointed) -> (String, String) {
    let plain_alerts = run_with.folder.path().join("plain.jsonl");
    let mut options = vec!["--models"];
    options.extend(run_with.options.iter().map(String::as_str));
    let plain = run(&run_with.events, &plain_alerts, &options);
    assert!(plain.ok, "run without checkpoints failed: {}", plain.stderr);
    let expected = std::fs::read_to_string(&plain_alerts).expect("alerts");
    assert!(expected.lines().count() > 20, "too few alerts to test");
    assert!(
        run_with.alerts == expected,
        "checkpoints changed the alerts"
    );
    (expected, plain.stderr)
}

/// Returns the last checkpoint before the end of the bootstrap period.
fn last_before_fit(run_with: &Checkpointed) -> &Written {
    run_with
        .checkpoints
        .iter()
        .filter(|written| written.cut_ms < run_with.bootstrap_end_ms)
        .last()
        .expect("a checkpoint before the end of the bootstrap period")
}

#[test]
fn models_resume_before_and_after_fit() {
    let run_with = checkpointed("2", &[]);
    let (expected, _) = run_uninterrupted(&run_with);
    let before_fit = last_before_fit(&run_with);
    let after_fit = run_with
        .checkpoints
        .last()
        .filter(|written| written.cut_ms > run_with.bootstrap_end_ms + 3_600_000)
        .expect("a checkpoint after the first fit");
    assert_resume_matches(&run_with, &before_fit.file, "1", &expected);
    assert_resume_matches(&run_with, &after_fit.file, "3", &expected);
}

/// Returns the value of a count in a summary printed on standard error.
fn summary_count(stderr: &str, name: &str) -> u64 {
    stderr
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` count in the summary:\n{stderr}"))
}

#[test]
fn models_resume_with_eviction() {
    // Users idle for 12 hours are evicted, so some leave and return on both sides of a cut,
    // and the resume must restore who is tracked with the model path's per-user state.
    let run_with = checkpointed("2", &["--evict-after", "12h"]);
    let (expected, log) = run_uninterrupted(&run_with);
    assert!(
        summary_count(&log, "evicted") > 100,
        "too few evictions to test:\n{log}"
    );
    let before_fit = last_before_fit(&run_with);
    let after_fit: Vec<&Written> = run_with
        .checkpoints
        .iter()
        .filter(|written| written.cut_ms > run_with.bootstrap_end_ms + 3_600_000)
        .collect();
    assert!(
        after_fit.len() >= 2,
        "too few checkpoints after the first fit"
    );
    assert_resume_matches(&run_with, &before_fit.file, "1", &expected);
    assert_resume_matches(
        &run_with,
        &after_fit[after_fit.len() / 2].file,
        "2",
        &expected,
    );
    assert_resume_matches(
        &run_with,
        &after_fit[after_fit.len() - 1].file,
        "3",
        &expected,
    );
}

#[test]
fn models_setting_mismatch_rejected() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 300, 6, 11);
    let plain = folder.path().join("plain");
    let first = run(
        &events,
        &folder.path().join("a.jsonl"),
        &[
            "--checkpoint-dir",
            arg(&plain),
            "--checkpoint-interval",
            "1ms",
        ],
    );
    assert!(first.ok, "checkpointed run failed: {}", first.stderr);
    assert!(!checkpoints_written(&first.stderr).is_empty());

    let with_models = run(
        &events,
        &folder.path().join("b.jsonl"),
        &["--models", "--resume", arg(&plain)],
    );
    assert!(!with_models.ok, "a checkpoint without models was resumed");
    assert!(
        with_models
            .stderr
            .contains("written by a run without --models, but this run has --models"),
        "{}",
        with_models.stderr
    );
    assert!(
        with_models.stderr.contains("checkpoint-"),
        "the error names no file: {}",
        with_models.stderr
    );

    let truth = folder.path().join("truth.jsonl");
    let scored = run(
        &events,
        &folder.path().join("c.jsonl"),
        &["--truth", arg(&truth), "--resume", arg(&plain)],
    );
    assert!(!scored.ok, "--truth was resumed");
    assert!(
        scored.stderr.contains("do not work with --truth"),
        "{}",
        scored.stderr
    );
}

#[test]
fn models_checkpoint_needs_models() {
    let run_with = checkpointed("1", &[]);
    let last = run_with.checkpoints.last().expect("a checkpoint");
    let folder = run_with.folder.path().join("without-models");
    std::fs::create_dir(&folder).expect("folder");
    let name = last.file.file_name().expect("a file name");
    std::fs::copy(&last.file, folder.join(name)).expect("copy of the checkpoint");

    let resumed = run(
        &run_with.events,
        &run_with.folder.path().join("d.jsonl"),
        &["--resume", arg(&folder)],
    );
    assert!(
        !resumed.ok,
        "a model checkpoint was resumed without --models"
    );
    assert!(
        resumed
            .stderr
            .contains("written by a run with --models, but this run has none"),
        "{}",
        resumed.stderr
    );
    assert!(
        resumed.stderr.contains(&*name.to_string_lossy()),
        "the error names no file: {}",
        resumed.stderr
    );
}
