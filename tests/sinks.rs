//! Alert sinks through the real binary: the webhook against a scripted receiver that fails
//! first (and one that is down), the TCP subscriber socket with a slow subscriber, and the
//! alert file reopened in append mode after a torn write.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, shared};
use serde_json::Value;

const CASE: &str = "cases/19-webhook-retry-idempotent";

fn veer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command.env("VEER_LOG", "info");
    command
}

/// Returns a loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The case's scripted HTTP receiver, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(out: &Path, mode: &str) -> Receiver {
        let port = free_port();
        let child = Command::new("python3")
            .arg(shared(CASE).join("receiver.py"))
            .arg(port.to_string())
            .arg(out)
            .args(["--mode", mode])
            .spawn()
            .expect("python3 runs the case's receiver");
        let receiver = Receiver {
            child,
            port,
            out: out.to_path_buf(),
        };
        // A bare connection is not a request, so it does not disturb the receiver's script.
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        receiver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/alerts", self.port)
    }

    fn summary(&self) -> Value {
        let text = std::fs::read_to_string(self.out.join("summary.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Waits up to 10 s for at least `expected` whole lines in `requests.jsonl`, because the
    /// receiver logs a request that the sender gave up on (a timeout) only when it handles it.
    /// Returns the count of requests logged.
    fn requests_logged(&self, expected: u64) -> u64 {
        let started = Instant::now();
        loop {
            let path = self.out.join("requests.jsonl");
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let logged = text.matches('\n').count() as u64;
            if logged >= expected || started.elapsed() > Duration::from_secs(10) {
                return logged;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a request record"))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alert_ids(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let alert: Value = serde_json::from_str(line).expect("an alert line");
            alert["alert_id"].as_str().expect("alert_id").to_string()
        })
        .collect()
}

/// Runs the case's reference run and returns its alert ids (the set R), after checking them
/// against the case's truth.
fn reference_ids(folder: &Path) -> BTreeSet<String> {
    let path = folder.join("ref.jsonl");
    let output = veer()
        .args(["run", "--no-progress", "--input"])
        .arg(shared(CASE).join("input.jsonl"))
        .arg("--alerts")
        .arg(&path)
        .output()
        .expect("veer runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let truth: BTreeMap<String, i64> = std::fs::read_to_string(shared(CASE).join("truth.jsonl"))
        .expect("truth file")
        .lines()
        .filter_map(|line| {
            let record: Value = serde_json::from_str(line).expect("a truth line");
            Some((record["user"].to_string(), record["onset_ts"].as_i64()?))
        })
        .collect();
    let alerts: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(alerts.len(), 5, "reference alerts: {alerts:?}");
    for alert in &alerts {
        assert_eq!(alert["kind"], "interest_shift");
        let onset = truth[&alert["user"].to_string()];
        let ts = alert["ts"].as_i64().unwrap();
        assert!(
            onset <= ts && ts <= onset + 259_200,
            "alert outside the horizon: {alert}"
        );
    }
    alert_ids(&path)
}

/// Output of one `veer run` against a receiver.
struct WebhookRun {
    status: i32,
    stderr: String,
    elapsed: Duration,
}

fn run_against(receiver: &Receiver, folder: &Path, dead: &Path, extra: &[&str]) -> WebhookRun {
    let started = Instant::now();
    let output = veer()
        .args(["run", "--no-progress", "--input"])
        .arg(shared(CASE).join("input.jsonl"))
        .arg("--alerts")
        .arg(folder.join("file.jsonl"))
        .args(["--webhook", &receiver.url(), "--webhook-timeout", "5s"])
        .arg("--webhook-dead-letter")
        .arg(dead)
        .args(extra)
        .output()
        .expect("veer runs");
    WebhookRun {
        status: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Returns a count from the webhook's summary line, such as `failed attempts`.
fn webhook_count(stderr: &str, name: &str) -> u64 {
    sink_count(stderr, "sink webhook", name)
}

/// Checks what the flaky receiver recorded: every alert of R, one key per alert, and only the
/// alerts of the held request delivered twice.
fn check_flaky_delivery(receiver: &Receiver, reference: &BTreeSet<String>) {
    let summary = receiver.summary();
    let delivered: BTreeSet<String> = summary["deliveries_per_alert"]
        .as_object()
        .expect("deliveries_per_alert")
        .keys()
        .cloned()
        .collect();
    assert_eq!(&delivered, reference);
    assert_eq!(summary["distinct_alerts"], 5);

    for (id, keys) in summary["keys_per_alert"].as_object().unwrap() {
        let keys = keys.as_array().unwrap();
        assert_eq!(keys.len(), 1, "alert {id} went out under keys {keys:?}");
        assert!(keys[0].is_string(), "alert {id} had no Idempotency-Key");
    }

    let held: BTreeSet<String> = receiver
        .requests()
        .iter()
        .filter(|request| request["request"] == 3)
        .flat_map(|request| request["alert_ids"].as_array().cloned().unwrap_or_default())
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    for (id, count) in summary["deliveries_per_alert"].as_object().unwrap() {
        let allowed = if held.contains(id) { 2 } else { 1 };
        assert!(
            count.as_u64().unwrap() <= allowed,
            "alert {id} delivered {count} times"
        );
    }
}

#[test]
fn webhook_flaky_receiver_gets_each_alert() {
    let folder = tempfile::tempdir().unwrap();
    let reference = reference_ids(folder.path());
    let receiver = Receiver::start(&folder.path().join("flaky"), "flaky");
    let dead = folder.path().join("webhook-dead.jsonl");

    let run = run_against(&receiver, folder.path(), &dead, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    check_flaky_delivery(&receiver, &reference);
    assert_eq!(receiver.summary()["requests"], 9);
    assert_eq!(webhook_count(&run.stderr, "attempts"), 9, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&dead).unwrap_or_default(), "");
    assert_eq!(alert_ids(&folder.path().join("file.jsonl")), reference);
    assert!(
        webhook_count(&run.stderr, "failed attempts") >= 3,
        "{}",
        run.stderr
    );
    assert_eq!(webhook_count(&run.stderr, "lost"), 0);
    assert_eq!(webhook_count(&run.stderr, "delivered"), 5);
}

#[test]
fn webhook_flaky_receiver_gets_batches() {
    let folder = tempfile::tempdir().unwrap();
    let reference = reference_ids(folder.path());
    let receiver = Receiver::start(&folder.path().join("flaky-batch"), "flaky");
    let dead = folder.path().join("webhook-dead.jsonl");

    let run = run_against(&receiver, folder.path(), &dead, &["--webhook-batch", "10"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    check_flaky_delivery(&receiver, &reference);
    let requests = receiver.summary()["requests"].as_u64().unwrap();
    assert!(requests <= 9, "{requests} requests");
    assert_eq!(std::fs::read_to_string(&dead).unwrap_or_default(), "");
    assert_eq!(alert_ids(&folder.path().join("file.jsonl")), reference);
    assert_eq!(webhook_count(&run.stderr, "lost"), 0);
}

#[test]
fn webhook_down_receiver_dead_letters() {
    let folder = tempfile::tempdir().unwrap();
    let reference = reference_ids(folder.path());
    let receiver = Receiver::start(&folder.path().join("down"), "down");
    let dead = folder.path().join("down-dead.jsonl");
    let max_attempts = 4;

    let run = run_against(
        &receiver,
        folder.path(),
        &dead,
        &[
            "--webhook-max-attempts",
            &max_attempts.to_string(),
            "--webhook-backoff",
            "100ms",
            "--webhook-retry-budget",
            "20s",
        ],
    );
    assert_eq!(
        run.status, 3,
        "sink degraded exit code expected:\n{}",
        run.stderr
    );
    assert!(
        run.elapsed < Duration::from_secs(60),
        "took {:?}",
        run.elapsed
    );

    let text = std::fs::read_to_string(&dead).expect("dead-letter file");
    let records: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a whole JSON line"))
        .collect();
    let ids: BTreeSet<String> = records
        .iter()
        .map(|record| record["alert_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(records.len(), 5);
    assert_eq!(ids, reference);
    for record in &records {
        assert_eq!(record["last_error"], "HTTP 503");
        assert_eq!(record["attempts"], max_attempts);
        assert_eq!(record["alert"]["alert_id"], record["alert_id"]);
    }
    assert_eq!(alert_ids(&folder.path().join("file.jsonl")), reference);
    let requests = receiver.summary()["requests"].as_u64().unwrap();
    assert!(requests <= 5 * max_attempts, "{requests} requests");
    // Every attempt the summary counts is a request that reached the receiver.
    let attempts = webhook_count(&run.stderr, "attempts");
    assert_eq!(
        receiver.requests_logged(attempts),
        attempts,
        "{}",
        run.stderr
    );
    assert_eq!(webhook_count(&run.stderr, "dead-lettered"), 5);
    assert_eq!(webhook_count(&run.stderr, "lost"), 0);
}

#[test]
fn webhook_without_dead_letter_is_rejected() {
    let output = veer()
        .args(["run", "--no-progress", "--input"])
        .arg(shared(CASE).join("input.jsonl"))
        .args(["--webhook", "http://127.0.0.1:9/alerts"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--webhook-dead-letter"));
}

#[test]
fn alerts_append_without_file_is_rejected() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("veer.toml");
    std::fs::write(&config, "[sinks]\nappend = true\n").unwrap();
    let input = shared(CASE).join("input.jsonl");
    let cases: [(&str, Vec<&std::ffi::OsStr>); 3] = [
        ("flag, no --alerts", vec!["--alerts-append".as_ref()]),
        (
            "flag, --alerts -",
            vec!["--alerts-append".as_ref(), "--alerts".as_ref(), "-".as_ref()],
        ),
        ("configuration, no --alerts", vec!["--config".as_ref(), config.as_os_str()]),
    ];
    for (case, extra) in cases {
        let output = veer()
            .args(["run", "--no-progress", "--input"])
            .arg(&input)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains("needs an alert file"), "{case}: {stderr}");
        assert!(stderr.contains("standard output"), "{case}: {stderr}");
        assert!(output.stdout.is_empty(), "{case}: no alert may be written");
    }
}

/// Reads a child's standard error on a thread, so the test can wait for log lines.
struct LogWatcher {
    lines: crossbeam_channel::Receiver<String>,
    seen: Vec<String>,
}

impl LogWatcher {
    fn new(child: &mut Child) -> LogWatcher {
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        LogWatcher {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the `count`-th line containing `text`, and returns it.
    fn wait_for(&mut self, text: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let matches: Vec<&String> = self
                .seen
                .iter()
                .filter(|line| line.contains(text))
                .collect();
            if matches.len() >= count {
                return matches[count - 1].clone();
            }
            match self.lines.recv_deadline(deadline) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no {count} lines with {text:?} in:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn rest(&mut self) -> String {
        self.seen.extend(self.lines.iter());
        self.seen.join("\n")
    }
}

#[test]
fn subscriber_socket_drops_slow_client() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 2000, 9, 7);
    let alerts = folder.path().join("alerts.jsonl");

    let mut child = veer()
        .args([
            "run",
            "--no-progress",
            "--input",
            "-",
            "--alerts",
            arg(&alerts),
        ])
        .args([
            "--alerts-listen",
            "127.0.0.1:0",
            "--subscriber-queue",
            "128",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = LogWatcher::new(&mut child);
    let address = subscriber_address(&mut log);

    let mut fast = TcpStream::connect(&address).unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        fast.read_to_string(&mut text).unwrap();
        text
    });
    // A subscriber that never reads, with a small receive buffer set before it connects.
    let (host, port) = address.rsplit_once(':').unwrap();
    let mut slow = Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n\
             s.connect((sys.argv[1], int(sys.argv[2])))\n\
             time.sleep(120)",
            host,
            port,
        ])
        .spawn()
        .unwrap();
    log.wait_for("alert subscriber connected", 2);

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&std::fs::read(&events).unwrap()).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let stderr = log.rest();
    let _ = slow.kill();
    let _ = slow.wait();

    assert!(status.success(), "{stderr}");
    let received = reader.join().unwrap();
    let written = std::fs::read_to_string(&alerts).unwrap();
    assert!(written.lines().count() > 100, "too few alerts for the test");
    assert_eq!(
        received.lines().count(),
        written.lines().count(),
        "{stderr}"
    );
    assert_eq!(received, written);
    assert!(stderr.contains("alert subscriber dropped"), "{stderr}");
    assert!(
        stderr.contains("subscribers 2, dropped as slow 1"),
        "{stderr}"
    );
}

/// Returns the address from the "alert subscriber socket listening" log line.
fn subscriber_address(log: &mut LogWatcher) -> String {
    let line = log.wait_for("alert subscriber socket listening", 1);
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
        .expect("the log line names the address")
        .to_string()
}

#[test]
fn subscriber_slot_freed_on_close() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 600, 9, 7);
    let alerts = folder.path().join("alerts.jsonl");
    let config = folder.path().join("veer.toml");
    std::fs::write(&config, "[sinks.subscribers]\nmax_clients = 2\n").unwrap();

    let mut child = veer()
        .args([
            "run",
            "--no-progress",
            "--input",
            "-",
            "--alerts",
            arg(&alerts),
        ])
        .args(["--config", arg(&config), "--alerts-listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = LogWatcher::new(&mut child);
    let address = subscriber_address(&mut log);

    // Before any alert is written, five subscribers connect and leave one after the other:
    // each must free its slot, or the third one is rejected.
    for round in 1..=5 {
        let subscriber = TcpStream::connect(&address).unwrap();
        log.wait_for("alert subscriber connected", round);
        drop(subscriber);
        let line = log.wait_for("alert subscriber disconnected", round);
        assert!(line.contains("closed the connection"), "{line}");
    }
    let mut last = TcpStream::connect(&address).unwrap();
    log.wait_for("alert subscriber connected", 6);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        last.read_to_string(&mut text).unwrap();
        text
    });

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&std::fs::read(&events).unwrap()).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let stderr = log.rest();

    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("alert subscriber rejected"), "{stderr}");
    let written = std::fs::read_to_string(&alerts).unwrap();
    assert!(!written.is_empty(), "no alerts for the test");
    assert_eq!(reader.join().unwrap(), written);
}

#[test]
fn alert_file_reopen_cuts_torn_line() {
    let folder = tempfile::tempdir().unwrap();
    let input = shared(CASE).join("input.jsonl");
    let reference_path = folder.path().join("ref.jsonl");
    let run = |path: &Path, append: bool| {
        let mut command = veer();
        command
            .args(["run", "--no-progress", "--input"])
            .arg(&input)
            .arg("--alerts")
            .arg(path);
        if append {
            command.arg("--alerts-append");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    run(&reference_path, false);
    let reference = std::fs::read_to_string(&reference_path).unwrap();
    let lines: Vec<&str> = reference.lines().collect();
    assert_eq!(lines.len(), 5);

    // Two whole lines and half of the third, as a kill in the middle of a write leaves them.
    let path = folder.path().join("alerts.jsonl");
    let torn = &lines[2][..lines[2].len() / 2];
    std::fs::write(&path, format!("{}\n{}\n{torn}", lines[0], lines[1])).unwrap();
    let stderr = run(&path, true);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), reference);
    let expected = format!(
        "skipped 2 (ids already in the file), torn bytes cut {}",
        torn.len()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // Reopening a complete file appends nothing.
    let stderr = run(&path, true);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), reference);
    assert!(stderr.contains("delivered 0, skipped 5"), "{stderr}");

    // Without the flag the file is truncated and written again.
    std::fs::write(&path, "old\n").unwrap();
    run(&path, false);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), reference);
}

/// Returns the count `name` (such as `delivered`) from the summary line of the sink whose
/// line starts with `sink`.
fn sink_count(stderr: &str, sink: &str, name: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|line| line.starts_with(sink))
        .unwrap_or_else(|| panic!("no `{sink}` summary line:\n{stderr}"));
    line.split(", ")
        .find_map(|part| {
            part.rsplit_once(": ")
                .map_or(part, |(_, rest)| rest)
                .strip_prefix(name)
        })
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in {line:?}"))
}

/// An alert file on a full disk: no alert counts as delivered, every one as lost, and the
/// write error is logged once, not once per alert.
#[test]
fn alert_file_on_full_disk_counts_lost() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: this system has no /dev/full");
        return;
    }
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = common::generate_stream(folder.path(), 300, 9, 7);
    let output = veer()
        .args(["run", "--no-progress", "--input"])
        .arg(&events)
        .args(["--alerts", "/dev/full"])
        .output()
        .expect("veer runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");

    let sink = "sink file /dev/full";
    let lost = sink_count(&stderr, sink, "lost");
    assert!(lost > 0, "no alert counted lost:\n{stderr}");
    assert_eq!(sink_count(&stderr, sink, "delivered"), 0, "{stderr}");
    let errors = stderr
        .lines()
        .filter(|line| line.contains("ERROR"))
        .count();
    assert_eq!(errors, 1, "the write error is not logged once:\n{stderr}");
}

/// Starts `veer run` on the case input with a webhook at `url`, logging at info level to a
/// pipe, and returns the child and its log.
fn start_webhook_run(folder: &Path, url: &str, extra: &[&str]) -> (Child, common::Log) {
    let mut child = veer()
        .args(["run", "--no-progress", "--input"])
        .arg(shared(CASE).join("input.jsonl"))
        .arg("--alerts")
        .arg(folder.join("file.jsonl"))
        .args(["--webhook", url, "--webhook-dead-letter"])
        .arg(folder.join("dead.jsonl"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veer starts");
    let log = common::Log::capture(&mut child);
    (child, log)
}

/// Sends SIGTERM to the child and waits up to 20 s for its exit. Returns the exit code, the
/// time from the signal to the exit and the whole log.
fn stop_run(mut child: Child, log: common::Log) -> (i32, Duration, String) {
    let (code, took) =
        common::signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(20));
    (code, took, log.finish().join("\n"))
}

/// Checks a run stopped while its webhook failed: exit code 3, every alert of the alert file
/// in the dead-letter file, and all of them counted as given up at the stop.
fn check_given_up(folder: &Path, code: i32, log: &str) {
    assert_eq!(code, 3, "{log}");
    let written = alert_ids(&folder.join("file.jsonl"));
    assert!(!written.is_empty(), "{log}");
    let dead: BTreeSet<String> = std::fs::read_to_string(folder.join("dead.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a whole JSON line"))
        .map(|record| record["alert_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dead, written);
    let count = written.len() as u64;
    assert_eq!(webhook_count(log, "given up at the stop"), count, "{log}");
    assert_eq!(webhook_count(log, "dead-lettered"), count, "{log}");
    assert_eq!(webhook_count(log, "delivered"), 0, "{log}");
    assert_eq!(webhook_count(log, "lost"), 0, "{log}");
    assert!(log.contains("given_up_at_stop="), "{log}");
}

#[test]
fn webhook_refused_stops_without_retries() {
    let folder = tempfile::tempdir().unwrap();
    // Nothing listens on the port, so every connection is refused. The default retry budget
    // would hold the exit for up to 60 s.
    let url = format!("http://127.0.0.1:{}/alerts", free_port());
    let (child, mut log) = start_webhook_run(folder.path(), &url, &[]);
    log.wait_for(&["webhook attempt failed; retrying"], Duration::from_secs(60));

    let (code, took, log) = stop_run(child, log);
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{log}");
    check_given_up(folder.path(), code, &log);
}

#[test]
fn webhook_silent_receiver_stops_in_bounded_time() {
    let folder = tempfile::tempdir().unwrap();
    // A receiver that accepts connections and never replies.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let (accepted, connections) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut open_connections = Vec::new();
        for stream in listener.incoming() {
            open_connections.push(stream);
            if accepted.send(()).is_err() {
                break;
            }
        }
    });
    let (child, log) =
        start_webhook_run(folder.path(), &url, &["--webhook-timeout", "60s"]);
    connections
        .recv_timeout(Duration::from_secs(60))
        .expect("the webhook connects");

    let (code, took, log) = stop_run(child, log);
    // The attempt in flight ends 2 s after the signal; the rest is the run's own stop.
    assert!(took >= Duration::from_secs(2), "took {took:?}:\n{log}");
    assert!(took < Duration::from_secs(12), "took {took:?}:\n{log}");
    check_given_up(folder.path(), code, &log);
}
