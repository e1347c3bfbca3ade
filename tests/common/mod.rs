//! Helpers shared by the integration tests: paths to the shared samples and a way to run the
//! real `veer` binary and read what it wrote.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Returns the path of a file under the shared folder beside the repository, failing the test
/// when it is missing.
pub fn shared(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared").join(relative);
    assert!(path.exists(), "missing shared file {}", path.display());
    path
}

/// What one run of `veer run` produced.
pub struct RunOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub alerts: Vec<Value>,
    pub alerts_text: String,
    pub dead_letter: Vec<Value>,
}

impl RunOutput {
    /// Returns the value of a count in the end-of-run summary, such as `bad` or `late`.
    pub fn summary_count(&self, name: &str) -> u64 {
        for line in self.stderr.lines() {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(name) {
                if let Some(number) = rest.split_whitespace().next() {
                    if let Ok(value) = number.parse() {
                        return value;
                    }
                }
            }
        }
        panic!("no `{name}` count in the summary:\n{}", self.stderr)
    }

    /// Returns the interest_shift alerts of one user (compared as printed JSON).
    pub fn shifts_of(&self, user: &str) -> Vec<&Value> {
        self.alerts
            .iter()
            .filter(|alert| alert["kind"] == "interest_shift" && alert["user"].to_string() == user)
            .collect()
    }

    /// Returns every alert of one user, of any kind.
    pub fn alerts_of(&self, user: &str) -> Vec<&Value> {
        self.alerts.iter().filter(|alert| alert["user"].to_string() == user).collect()
    }

    /// Returns the line numbers of dead-letter records of one kind (`bad` or `late`).
    pub fn dead_lines(&self, kind: &str) -> Vec<u64> {
        let mut lines: Vec<u64> = self
            .dead_letter
            .iter()
            .filter(|record| record["kind"] == kind)
            .map(|record| record["line"].as_u64().expect("line is a number"))
            .collect();
        lines.sort_unstable();
        lines
    }
}

/// Runs `veer run` with `args` plus alert and dead-letter files in a temporary folder.
pub fn run_veer(args: &[&str]) -> RunOutput {
    let folder = tempfile::tempdir().expect("temporary folder");
    let alerts_path = folder.path().join("alerts.jsonl");
    let dead_path = folder.path().join("dead.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .arg("run")
        .args(args)
        .arg("--alerts")
        .arg(&alerts_path)
        .arg("--dead-letter")
        .arg(&dead_path)
        .arg("--no-progress")
        .env("VEER_LOG", "warn")
        .output()
        .expect("the veer binary runs");
    let alerts_text = std::fs::read_to_string(&alerts_path).unwrap_or_default();
    let dead_text = std::fs::read_to_string(&dead_path).unwrap_or_default();
    let parse = |text: &str| -> Vec<Value> {
        text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect()
    };
    RunOutput {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        alerts: parse(&alerts_text),
        alerts_text,
        dead_letter: parse(&dead_text),
    }
}

/// Returns a path as a `&str` for command arguments.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
