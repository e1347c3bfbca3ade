//! State growth under user churn: a scaled-down run of the churn case's own generator.
//!
//! A group of 50 users starts every 10 minutes, and each user makes 25 views over 2 days and
//! never returns. With `--evict-after 6h`, the users tracked must follow the users seen within
//! the last 2 days and 6 hours, plus up to one hour between eviction sweeps. They must not
//! climb towards the 40,000 users of the stream, and memory must stop growing once eviction
//! starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const USERS: u64 = 40_000;
/// First event of the generated stream, in Unix seconds.
const START_TS: f64 = 1_511_539_200.0;
const DAY: f64 = 86_400.0;
/// Users started per second of event time by the generator.
const USERS_PER_SECOND: f64 = 50.0 / 600.0;
/// Event time a user stays active (25 events, 6,912 s apart) plus `--evict-after` and the
/// maximum time between two eviction sweeps, in seconds.
const RETAINED_SECONDS: f64 = 24.0 * 6_912.0 + 6.0 * 3_600.0 + 3_600.0;

/// One sample of the running process.
struct Sample {
    watermark: f64,
    users_tracked: f64,
    rss_kib: u64,
}

fn get_metrics(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn generate(folder: &Path) {
    let script = common::shared("cases/17-state-growth-long-run/generate.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(USERS.to_string())
        .current_dir(folder)
        .status()
        .expect("python3 runs the case's generator");
    assert!(status.success(), "{} failed", script.display());
}

#[test]
fn churn_state_plateaus() {
    let folder = tempfile::tempdir().unwrap();
    generate(folder.path());
    let alerts = folder.path().join("alerts.jsonl");
    let profiles = folder.path().join("profiles.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--input"])
        .arg(folder.path().join("churn.jsonl"))
        .args(["--order", "arrival", "--workers", "2", "--no-progress"])
        .args(["--evict-after", "6h", "--http", "127.0.0.1:0", "--alerts"])
        .arg(&alerts)
        .arg("--profiles")
        .arg(&profiles)
        .env("VEER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veer starts");
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let address: SocketAddr = loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(read > 0, "veer ended before its HTTP server listened:\n{log}");
        log.push_str(&line);
        if line.contains("HTTP server listening") {
            let rest = line.split("address=").nth(1).expect("the address is logged");
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let rest = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });

    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run took over 120 s");
        let body = get_metrics(address).unwrap_or_default();
        let watermark = metric(&body, "veer_watermark_seconds");
        let users_tracked = metric(&body, "veer_users_tracked");
        if let (Some(watermark), Some(users_tracked), Some(rss_kib)) =
            (watermark, users_tracked, rss_kib(pid))
        {
            samples.push(Sample {
                watermark,
                users_tracked,
                rss_kib,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let summary = rest.join().unwrap();
    assert!(status.success(), "veer exited with {status}:\n{summary}");
    assert_eq!(std::fs::read_to_string(&alerts).unwrap(), "", "no user shifts");

    let bound = USERS_PER_SECOND * RETAINED_SECONDS;
    let day = |sample: &Sample| (sample.watermark - START_TS) / DAY;
    let peak = samples
        .iter()
        .map(|sample| sample.users_tracked)
        .fold(0.0, f64::max);
    assert!(samples.len() >= 10, "only {} samples", samples.len());
    assert!(
        peak <= bound,
        "users tracked reached {peak}, above the {bound:.0} seen within the retention"
    );
    assert!(peak >= 0.8 * bound, "users tracked peaked at {peak} only");

    // Memory: eviction starts at day 2.3; the last users start at day 5.6.
    let max_rss = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|sample| (from..to).contains(&day(sample)))
            .map(|sample| sample.rss_kib)
            .max()
    };
    let early = max_rss(2.3, 3.0).expect("samples in days 2.3-3");
    let late = max_rss(4.5, 5.6).expect("samples in days 4.5-5.6");
    assert!(
        late as f64 <= 1.25 * early as f64,
        "RSS grew from {early} KiB to {late} KiB after eviction began"
    );

    let output = common::RunOutput {
        status: 0,
        stdout: String::new(),
        stderr: summary,
        alerts: Vec::new(),
        alerts_text: String::new(),
        dead_letter: Vec::new(),
    };
    let tracked_at_end = output.summary_count("tracked at end");
    let evicted = output.summary_count("evicted");
    assert!(tracked_at_end as f64 <= bound, "{tracked_at_end} tracked at end");
    assert!(
        evicted as f64 >= USERS as f64 - bound,
        "only {evicted} users evicted"
    );

    // Profiles are evicted with the detector's state: the end-of-input lines cover the
    // retained users only, and the first user (idle since day 2) has none.
    let profile_text = std::fs::read_to_string(&profiles).unwrap();
    let final_users: Vec<serde_json::Value> = profile_text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["reasons"][0] == "end_of_input")
        .map(|line| line["user"].clone())
        .collect();
    assert!(!final_users.is_empty(), "no end-of-input profiles");
    assert!(
        final_users.len() as f64 <= bound,
        "{} end-of-input profiles",
        final_users.len()
    );
    assert!(!final_users.contains(&serde_json::json!(0)));
    assert!(final_users.contains(&serde_json::json!(USERS - 1)));
}
