//! Handed case 22: users who browse without pause, a cohort making the same move one after
//! another, and `kill -9` between an alert and the next checkpoint.
//!
//! The case's own `generate.py` writes the stream and its own `kill_loop.py` kills and
//! resumes the real binary. The reference run must find all 30 planted shifts and nothing
//! else, with 1 and 4 workers alike. Then each trial's alert file must contain exactly the
//! reference's alerts, once each, with no torn line. CI runs fewer trials than the case's 20
//! (`VEER_KILL_TRIALS` sets the number); BENCHMARKS.md records a 20-trial run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CASE: &str = "cases/22-restart-duplicate-alerts";

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Runs the case's generator in `folder` and returns the truth by user.
fn generate(folder: &Path) -> BTreeMap<u64, i64> {
    let script = common::shared(&format!("{CASE}/generate.py"));
    let status = Command::new("python3")
        .arg(&script)
        .current_dir(folder)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs the case's generator");
    assert!(status.success(), "generate.py failed");
    lines(&folder.join("truth.jsonl"))
        .iter()
        .map(|row| {
            (
                row["user"].as_u64().expect("a numeric user"),
                row["onset_ts"].as_i64().expect("an onset"),
            )
        })
        .collect()
}

fn run_reference(folder: &Path, workers: &str) -> Vec<Value> {
    let alerts = folder.join(format!("ref-{workers}.jsonl"));
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "run",
            "--input",
            "input.jsonl",
            "--workers",
            workers,
            "--no-progress",
        ])
        .arg("--alerts")
        .arg(&alerts)
        .current_dir(folder)
        .env("VEER_LOG", "warn")
        .output()
        .expect("veer runs");
    assert!(
        output.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    lines(&alerts)
}

/// Alerts keyed by id, each with the fields that must not change between runs.
fn by_id(alerts: &[Value]) -> BTreeMap<String, String> {
    alerts
        .iter()
        .map(|alert| {
            let id = alert["alert_id"].as_str().expect("an alert_id").to_string();
            let content = format!(
                "{} {} {} {} {}",
                alert["kind"], alert["ts"], alert["onset_ts"], alert["from"], alert["to"]
            );
            (id, content)
        })
        .collect()
}

/// Runs `kill_loop.py` against `workers` workers and returns its last output line.
fn kill_loop(folder: &Path, workers: &str, trials: u32) -> String {
    let veer = env!("CARGO_BIN_EXE_veer");
    let checkpoints = format!("ck-{workers}");
    let alerts = format!("alerts-{workers}.jsonl");
    let common_args = format!(
        "{veer} run --input input.jsonl --workers {workers} --checkpoint-interval 100ms \
         --alerts {alerts} --no-progress"
    );
    let output = Command::new("python3")
        .arg(common::shared(&format!("{CASE}/kill_loop.py")))
        .args([
            "--ref",
            &format!("ref-{workers}.jsonl"),
            "--alerts",
            &alerts,
        ])
        .args(["--clean", &checkpoints])
        .args([
            "--fresh",
            &format!("{common_args} --checkpoint-dir {checkpoints}"),
        ])
        .args(["--resume", &format!("{common_args} --resume {checkpoints}")])
        .args([
            "--trials",
            &trials.to_string(),
            "--kills",
            "3",
            "--seed",
            "22",
        ])
        .current_dir(folder)
        .env("VEER_LOG", "warn")
        .output()
        .expect("python3 runs kill_loop.py");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kill_loop.py with {workers} workers failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_string()
}

#[test]
fn staggered_cohort_is_detected_and_survives_kills() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let truth = generate(folder.path());
    assert_eq!(truth.len(), 30);

    let four_workers = run_reference(folder.path(), "4");
    let one_worker = run_reference(folder.path(), "1");
    assert_eq!(
        by_id(&four_workers),
        by_id(&one_worker),
        "1 and 4 workers disagree"
    );

    // One interest_shift per planted user within 3 days of the onset, and nothing else.
    let mut alerted = BTreeSet::new();
    for alert in &four_workers {
        let user = alert["user"].as_u64().expect("a numeric user");
        assert_eq!(alert["kind"], "interest_shift", "unexpected alert {alert}");
        let onset = truth
            .get(&user)
            .unwrap_or_else(|| panic!("false positive for user {user}: {alert}"));
        let ts = alert["ts"].as_i64().expect("a timestamp");
        assert!(
            (*onset..=onset + 3 * 86_400).contains(&ts),
            "user {user}: alert at {ts}, onset {onset}"
        );
        assert!(alerted.insert(user), "user {user} alerted twice");
    }
    assert_eq!(
        alerted.len(),
        30,
        "missed: {:?}",
        truth
            .keys()
            .filter(|u| !alerted.contains(u))
            .collect::<Vec<_>>()
    );

    let trials: u32 = std::env::var("VEER_KILL_TRIALS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(4);
    for workers in ["4", "1"] {
        let verdict = kill_loop(folder.path(), workers, trials);
        assert_eq!(
            verdict,
            format!("{trials} of {trials} trials ok"),
            "{workers} workers"
        );
        let written = lines(&folder.path().join(format!("alerts-{workers}.jsonl")));
        assert_eq!(
            by_id(&written),
            by_id(&four_workers),
            "{workers} workers: alert content differs"
        );
    }
}
