//! Helpers shared by the integration tests: paths to the shared samples and a way to run the
//! real `veer` binary and read what it wrote.

#![allow(dead_code)]
// Users are compared as printed JSON, so that `42` and `"42"` stay different ids.
#![allow(clippy::cmp_owned)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Returns the path of a file under the shared folder beside the repository, failing the test
/// when it is missing.
pub fn shared(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(relative);
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
        self.alerts
            .iter()
            .filter(|alert| alert["user"].to_string() == user)
            .collect()
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

    /// Collects a finished run's exit code, output, alerts file and dead-letter file.
    fn read(output: std::process::Output, alerts_path: &Path, dead_path: &Path) -> RunOutput {
        let alerts_text = std::fs::read_to_string(alerts_path).unwrap_or_default();
        let dead_text = std::fs::read_to_string(dead_path).unwrap_or_default();
        let parse = |text: &str| -> Vec<Value> {
            text.lines()
                .map(|line| serde_json::from_str(line).expect("a JSON line"))
                .collect()
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
    RunOutput::read(output, &alerts_path, &dead_path)
}

/// Returns a path as a `&str` for command arguments.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Exit code and output of one run of the `veer` binary.
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}
/// Creates a named pipe at `path`, readable and writable by the owner only.
pub fn make_fifo(path: &Path) {
    let name = std::ffi::CString::new(arg(path)).unwrap();
    // SAFETY: `name` is a valid NUL-terminated path for the whole call.
    let status = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(status, 0, "mkfifo {}", path.display());
}


/// Runs the `veer` binary with exactly `args`: no alert, dead-letter or progress option is
/// added, and standard input is empty.
pub fn run_veer_exact(args: &[&str]) -> CommandOutput {
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(args)
        .env("VEER_LOG", "warn")
        .output()
        .expect("the veer binary runs");
    CommandOutput {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `veer run` like [`run_veer`], with `input` written to the child's standard input.
pub fn run_veer_with_stdin(args: &[&str], input: &[u8]) -> RunOutput {
    run_veer_with_stdin_parts(args, &[input], std::time::Duration::ZERO)
}

/// Runs `veer run` like [`run_veer_with_stdin`], writing `parts` to its standard input with
/// `pause` between them, as a slow writer into a pipe does.
pub fn run_veer_with_stdin_parts(
    args: &[&str],
    parts: &[&[u8]],
    pause: std::time::Duration,
) -> RunOutput {
    let folder = tempfile::tempdir().expect("temporary folder");
    let alerts_path = folder.path().join("alerts.jsonl");
    let dead_path = folder.path().join("dead.jsonl");
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command
        .arg("run")
        .args(args)
        .arg("--alerts")
        .arg(&alerts_path)
        .arg("--dead-letter")
        .arg(&dead_path)
        .arg("--no-progress");
    let output = output_with_stdin(command, parts, pause);
    RunOutput::read(output, &alerts_path, &dead_path)
}

/// Runs the `veer` binary with exactly `args`, like [`run_veer_exact`], with `input` written
/// to its standard input.
pub fn run_veer_exact_with_stdin(args: &[&str], input: &[u8]) -> CommandOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command.args(args);
    let output = output_with_stdin(command, &[input], std::time::Duration::ZERO);
    CommandOutput {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `command` with warnings logged and `parts` written to its standard input, with
/// `pause` before each part after the first, and returns its output.
fn output_with_stdin(
    mut command: Command,
    parts: &[&[u8]],
    pause: std::time::Duration,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;

    let mut child = command
        .env("VEER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the veer binary starts");
    // A separate thread writes standard input, so that a child that fills its output pipes
    // before reading all of its input cannot block the test.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let parts: Vec<Vec<u8>> = parts.iter().map(|part| part.to_vec()).collect();
    let writer = std::thread::spawn(move || {
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                std::thread::sleep(pause);
            }
            // A child that exits early closes the pipe, and its exit code reports why.
            if stdin.write_all(part).and_then(|()| stdin.flush()).is_err() {
                return;
            }
        }
    });
    let output = child.wait_with_output().expect("the veer binary finishes");
    writer.join().expect("the stdin writer thread finishes");
    output
}

/// Prefixes of the summary lines that differ between runs of the same input: timing, latency,
/// the worker count itself, and the sink lines, which name each run's temporary alert file.
const TIMING_SUMMARY_LINES: [&str; 6] = [
    "wall time",
    "lines per second",
    "events per second",
    "workers",
    "latency",
    "sink ",
];

impl RunOutput {
    /// Returns the end-of-run summary, from `lines read` on, without the lines about wall
    /// time, throughput, latency and the worker count.
    pub fn summary_without_timing(&self) -> Vec<String> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let start = lines
            .iter()
            .position(|line| line.starts_with("lines read"))
            .unwrap_or_else(|| panic!("no summary in the output:\n{}", self.stderr));
        lines[start..]
            .iter()
            .filter(|line| {
                !TIMING_SUMMARY_LINES
                    .iter()
                    .any(|prefix| line.trim_start().starts_with(prefix))
            })
            .map(|line| line.to_string())
            .collect()
    }
}

/// Writes a labelled stream into `folder` with `veer generate` and returns the paths of the
/// events file and the truth file.
pub fn generate_stream(folder: &Path, users: usize, days: u32, seed: u64) -> (PathBuf, PathBuf) {
    let events = folder.join("events.jsonl");
    let truth = folder.join("truth.jsonl");
    let users = users.to_string();
    let days = days.to_string();
    let seed = seed.to_string();
    let output = run_veer_exact(&[
        "generate",
        "--users",
        &users,
        "--days",
        &days,
        "--seed",
        &seed,
        "--out",
        arg(&events),
        "--truth",
        arg(&truth),
    ]);
    assert_eq!(output.status, 0, "veer generate failed:\n{}", output.stderr);
    (events, truth)
}

/// Parses the last non-empty line of a command's standard output as JSON: the score line of
/// `veer run --truth` and `veer eval`.
pub fn score_line(stdout: &str) -> Value {
    let last = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_else(|| panic!("no output line in:\n{stdout}"));
    serde_json::from_str(last)
        .unwrap_or_else(|error| panic!("last output line is not JSON ({error}): {last}"))
}

/// Returns the settings of an in-memory run of `events` with hourly windows, the shift
/// detector, no output files and the alerts kept in the summary.
pub fn memory_run_settings(
    events: Vec<veer_models::Event>,
    workers: usize,
) -> veer::pipeline::RunSettings {
    use std::time::Duration;
    use veer::config::{DetectorChoice, ReplayOrder};
    use veer::pipeline::{AlertOutput, EventSource, RunSettings};
    use veer_models::{DetectorConfig, GroupConfig};

    RunSettings {
        source: EventSource::Memory(events),
        alerts: AlertOutput::Discard,
        sinks: Default::default(),
        dead_letter: None,
        workers,
        order: ReplayOrder::Auto,
        out_of_orderness: Duration::from_secs(600),
        max_future_skew: Duration::from_secs(86_400),
        window: Duration::from_secs(3600),
        detector: DetectorChoice::Shift,
        detector_config: DetectorConfig::default(),
        groups: GroupConfig::default(),
        progress: false,
        keep_alerts: true,
        metrics: Default::default(),
        state: veer::checkpoint::StateSettings::default(),
        cluster: None,
        http: None,
        users: None,
        profiles: None,
        profile_settings: Default::default(),
    }
}

/// Compares alert lists by id first, so a failure names the first alert that differs.
pub fn assert_same_alerts(
    actual: &[veer_models::Alert],
    expected: &[veer_models::Alert],
    context: &str,
) {
    let ids = |alerts: &[veer_models::Alert]| {
        alerts
            .iter()
            .map(veer_models::Alert::alert_id)
            .collect::<Vec<_>>()
    };
    let (actual_ids, expected_ids) = (ids(actual), ids(expected));
    if let Some(at) = (0..actual_ids.len().max(expected_ids.len()))
        .find(|&at| actual_ids.get(at) != expected_ids.get(at))
    {
        panic!(
            "{context}: first difference at alert {at}: dataflow {:?}, replay {:?} ({} vs {} alerts)",
            actual_ids.get(at),
            expected_ids.get(at),
            actual_ids.len(),
            expected_ids.len()
        );
    }
    for (left, right) in actual.iter().zip(expected) {
        assert!(
            left == right,
            "{context}: alert {} differs in its fields",
            left.alert_id()
        );
    }
}

/// Reads a JSON-lines file that a run wrote; a file not yet written reads as no lines.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each written line is JSON"))
        .collect()
}

/// Rewrites JSON lines so that each integer `user` becomes the string of its digits, as an
/// input that quotes its ids writes it (`"user":42` becomes `"user":"42"`).
pub fn quote_users(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + text.len() / 10);
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let mut record: Value = serde_json::from_str(line).expect("each line is JSON");
        if record["user"].is_u64() {
            record["user"] = Value::String(record["user"].to_string());
        }
        quoted.push_str(&record.to_string());
        quoted.push('\n');
    }
    quoted
}

/// Returns the number after `name=` in a log line.
pub fn log_field(line: &str, name: &str) -> u64 {
    let start = line.find(&format!("{name}=")).expect("the field is logged") + name.len() + 1;
    line[start..]
        .split(|character: char| !character.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .expect("a number")
}

/// Writes `text` `copies` times to a child's standard input. Standard input is read in
/// batches of 4,096 lines, so a short text is sent several times to fill a batch. The copies
/// are duplicates, which the run drops.
pub fn send_copies(stdin: &mut impl Write, text: &str, copies: usize) {
    for _ in 0..copies {
        stdin
            .write_all(text.as_bytes())
            .expect("veer reads standard input");
    }
    stdin.flush().unwrap();
}

/// Standard error of a running `veer`, read line by line on a thread, with the lines seen so
/// far.
pub struct Log {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    reader: JoinHandle<()>,
}

impl Log {
    /// Takes the child's piped standard error and starts reading it.
    pub fn capture(child: &mut Child) -> Log {
        let stderr = child.stderr.take().expect("standard error is piped");
        let (sender, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Log {
            lines,
            seen: Vec::new(),
            reader,
        }
    }

    /// Waits up to `limit` for a line that contains every one of `needles`, and returns it.
    pub fn wait_for(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .seen
                .iter()
                .find(|line| needles.iter().all(|needle| line.contains(needle)));
            if let Some(line) = found {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no log line with {needles:?} within {limit:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the `--http` server's log line and returns the address it listens on.
    pub fn http_address(&mut self) -> SocketAddr {
        let listening = self.wait_for(&["HTTP server listening"], Duration::from_secs(30));
        listening
            .split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("no address in {listening:?}"))
    }

    /// Reads the rest of the log once the child has exited, and returns every line.
    pub fn finish(mut self) -> Vec<String> {
        self.reader
            .join()
            .expect("the log reader ends with the child");
        self.seen.extend(self.lines.try_iter());
        self.seen
    }

    /// Returns the lines seen so far, without waiting.
    pub fn lines_now(&mut self) -> &[String] {
        self.seen.extend(self.lines.try_iter());
        &self.seen
    }
}

/// Sends one GET request to a `--http` server and returns the status and the body.
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Calls `probe` every `every` until it returns `Ok`, and returns that value. Fails the test
/// after `limit` with the last `Err`, which describes what was still missing.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(missing) => {
                assert!(Instant::now() < deadline, "not within {limit:?}: {missing}");
            }
        }
        std::thread::sleep(every);
    }
}

/// Sends `signal` to `child` and waits up to `limit` for it to exit. Returns the exit code and
/// the time from the signal to the exit; fails the test, after killing the child, past `limit`.
pub fn signal_and_wait(child: &mut Child, signal: i32, limit: Duration) -> (i32, Duration) {
    let sent = Instant::now();
    // SAFETY: kill(2) with the id of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return (status.code().unwrap_or(-1), sent.elapsed());
        }
        if sent.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit within {limit:?} of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
