//! The operations HTTP server of a live `veer run`: `/metrics`, `/users/{id}` and `/healthz`
//! queried while events still flow through a pipe held open on standard input.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Events sent: two full reader batches of 4096, so the reader hands all of them on while the
/// pipe stays open.
const EVENTS: usize = 8192;
const START_TS: i64 = 1_700_000_000;
/// The known user: views in category 100 and 200, 7 to 3.
const KNOWN_USER: u64 = 7;
const KNOWN_EVENTS: usize = 60;
/// A user whose 20 events within 20 seconds are a burst, which raises an anomaly alert.
const BURST_USER: u64 = 8;
const BURST_EVENTS: usize = 20;

fn event_line(user: u64, category: u64, ts: i64) -> String {
    format!(
        "{{\"user\":{user},\"item\":{},\"category\":{category},\"behavior\":\"view\",\"ts\":{ts}}}\n",
        category * 1000 + ts as u64 % 7
    )
}

/// Builds the input: the known and burst users early, filler users around them, one exact
/// duplicate and one bad line. Returns the text and the number of events (duplicate included).
fn build_input() -> (String, usize) {
    let mut lines = Vec::new();
    let mut ts = START_TS;
    for index in 0..KNOWN_EVENTS {
        let category = if index % 10 < 7 { 100 } else { 200 };
        lines.push(event_line(KNOWN_USER, category, ts));
        if index == 5 {
            lines.push(event_line(KNOWN_USER, category, ts));
        }
        ts += 30;
    }
    for _ in 0..BURST_EVENTS {
        lines.push(event_line(BURST_USER, 300, ts));
        ts += 1;
    }
    lines.push("{\"user\": 1, this is not JSON\n".to_string());
    let mut filler = 0u64;
    while lines.len() - 1 < EVENTS {
        let user = 1000 + filler % 97;
        lines.push(event_line(user, 400 + filler % 13, ts));
        ts += 1;
        filler += 1;
    }
    (lines.concat(), EVENTS)
}

/// Returns the value of one sample line (name with labels) of a Prometheus text body.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `done` accepts the body, or fails after 60 s.
fn wait_for_metrics(address: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    common::poll(Duration::from_secs(60), Duration::from_millis(50), || {
        let (status, body) = common::http_get(address, "/metrics");
        assert_eq!(status, 200);
        if done(&body) {
            Ok(body)
        } else {
            Err(format!(
                "metrics never reached the expected counts:\n{body}"
            ))
        }
    })
}

/// Starts `veer run` on a stdin pipe with the HTTP server on a free port. Returns the child,
/// the server address and a channel of the remaining standard error lines.
fn start_veer(alerts: &std::path::Path, more: &[&str]) -> (Child, SocketAddr, common::Log) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "run", "--input", "-", "--format", "jsonl", "--order", "arrival",
        ])
        .args([
            "--workers",
            "2",
            "--no-progress",
            "--http",
            "127.0.0.1:0",
            "--alerts",
        ])
        .arg(alerts)
        .args(more)
        .env("VEER_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veer starts");
    let mut log = common::Log::capture(&mut child);
    let address = log.http_address();
    (child, address, log)
}

#[test]
fn live_run_serves_metrics_and_profiles() {
    let folder = tempfile::tempdir().unwrap();
    let alerts_path = folder.path().join("alerts.jsonl");
    let (mut child, address, log) = start_veer(&alerts_path, &[]);
    let (input, events) = build_input();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();

    // The pipe stays open: everything below is read from the running process.
    let events_sample = "veer_source_events_total{source=\"<stdin>\"}";
    let body = wait_for_metrics(address, |body| {
        sample(body, events_sample) == Some(events as f64)
            && sample(body, "veer_duplicates_total") == Some(1.0)
            && sample(body, "veer_alerts_total{kind=\"anomaly\"}") >= Some(1.0)
    });
    assert_eq!(sample(&body, events_sample), Some(events as f64));
    assert_eq!(
        sample(&body, "veer_source_bad_total{source=\"<stdin>\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "veer_source_lines_total{source=\"<stdin>\"}"),
        Some(events as f64 + 1.0)
    );
    assert_eq!(sample(&body, "veer_late_events_total"), Some(0.0));
    let alerts = sample(&body, "veer_alerts_total{kind=\"anomaly\"}").unwrap()
        + sample(&body, "veer_alerts_total{kind=\"interest_shift\"}").unwrap();
    let measured = sample(&body, "veer_event_to_alert_latency_seconds_count").unwrap();
    assert_eq!(measured, alerts, "every alert handed to the sinks is timed");
    let median = sample(
        &body,
        "veer_event_to_alert_latency_seconds{quantile=\"0.5\"}",
    )
    .unwrap();
    assert!(median > 0.0, "median latency {median} s");
    assert!(median < 30.0, "median latency {median} s");
    assert!(sample(&body, "veer_users_tracked").unwrap() >= 2.0);

    let (status, body) = common::http_get(address, &format!("/users/{KNOWN_USER}"));
    assert_eq!(status, 200, "{body}");
    let profile: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(profile["user"], KNOWN_USER);
    assert_eq!(
        profile["events"], KNOWN_EVENTS as u64,
        "the duplicate is dropped"
    );
    assert_eq!(profile["first_ts"], START_TS);
    let interest = profile["interest"].as_array().unwrap();
    let categories: Vec<u64> = interest
        .iter()
        .map(|share| share["category"].as_u64().unwrap())
        .collect();
    assert_eq!(categories, [100, 200], "{body}");
    let first = interest[0]["share"].as_f64().unwrap();
    let second = interest[1]["share"].as_f64().unwrap();
    assert!(first > second, "{body}");
    // Shares are rounded to four decimals, as in profile lines, so they sum to 1 within 1e-4.
    for share in [first, second] {
        assert_eq!((share * 10_000.0).round() / 10_000.0, share, "{body}");
    }
    assert!((first + second - 1.0).abs() <= 1e-4, "{body}");
    assert!(profile["segment"].is_null());
    assert!(profile["last_alert"].is_null());

    let (status, body) = common::http_get(address, &format!("/users/{BURST_USER}"));
    assert_eq!(status, 200, "{body}");
    let profile: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(profile["last_alert"]["kind"], "anomaly", "{body}");
    assert_eq!(profile["last_alert"]["user"], BURST_USER);

    let (status, body) = common::http_get(address, "/users/123456789");
    assert_eq!(status, 404, "{body}");
    // Ids may be text, so a non-numeric id is a well-formed id of an unknown user.
    let (status, body) = common::http_get(address, "/users/abc");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not tracked"), "{body}");
    let (status, body) = common::http_get(address, "/users/%zz");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("percent-encoding"), "{body}");
    let (status, _) = common::http_get(address, "/healthz");
    assert_eq!(status, 200);

    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "veer exited with {status}");
    let rest = log.finish();
    let latency = rest
        .iter()
        .find(|line| line.starts_with("latency"))
        .unwrap_or_else(|| panic!("no latency line in the summary:\n{}", rest.join("\n")));
    assert!(
        latency.contains("p50") && latency.contains("p999"),
        "{latency}"
    );
}

#[test]
fn occupied_port_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "run",
            "--no-progress",
            "--generate-users",
            "20",
            "--http",
            &address,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot start the HTTP server"), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
}

/// With `--models`, alerts are fused with the model scores after the detector, and
/// `/users/{id}` shows the alert that was sent.
#[test]
fn live_run_with_models_serves_the_sent_alert() {
    let folder = tempfile::tempdir().unwrap();
    let alerts_path = folder.path().join("alerts.jsonl");
    let (mut child, address, log) = start_veer(&alerts_path, &["--models"]);
    let (input, _) = build_input();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();

    wait_for_metrics(address, |body| {
        sample(body, "veer_alerts_total{kind=\"anomaly\"}") >= Some(1.0)
    });
    let (status, body) = common::http_get(address, &format!("/users/{BURST_USER}"));
    assert_eq!(status, 200, "{body}");
    let profile: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(profile["last_alert"]["kind"], "anomaly", "{body}");
    assert_eq!(profile["last_alert"]["user"], BURST_USER);

    drop(stdin);
    let status = child.wait().unwrap();
    let log = log.finish();
    assert!(
        status.success(),
        "veer exited with {status}:\n{}",
        log.join("\n")
    );
    let sent: Vec<Value> = common::read_json_lines(&alerts_path)
        .into_iter()
        .filter(|alert| alert["user"] == BURST_USER)
        .collect();
    let last = sent.last().expect("the burst user's alert is written");
    assert_eq!(
        last["alert_id"], profile["last_alert"]["alert_id"],
        "{body}"
    );
}

/// The text id "7" and the integer id 7 are two users of the stream: `/users/7` returns the
/// integer one and the quoted form `/users/%227%22` the text one. The user table is another
/// file, so its row of user 7 joins both.
#[test]
fn text_and_integer_ids_read_apart() {
    let folder = tempfile::tempdir().unwrap();
    let alerts_path = folder.path().join("alerts.jsonl");
    let users_path = folder.path().join("users.csv");
    std::fs::write(&users_path, "user,region\n7,north\n").unwrap();
    let users = users_path.to_str().unwrap();
    let (mut child, address, log) = start_veer(&alerts_path, &["--users", users]);
    let mut lines = Vec::new();
    let mut ts = START_TS;
    for _ in 0..30 {
        lines.push(event_line(7, 100, ts));
        lines.push(format!(
            "{{\"user\":\"7\",\"item\":5001,\"category\":500,\"behavior\":\"view\",\"ts\":{ts}}}\n"
        ));
        ts += 30;
    }
    // Filler users make two full reader batches, so the reader hands every line on while the
    // pipe stays open.
    let mut filler = 0u64;
    while lines.len() < EVENTS {
        lines.push(event_line(1000 + filler % 97, 400 + filler % 13, ts));
        ts += 1;
        filler += 1;
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(lines.concat().as_bytes()).unwrap();
    stdin.flush().unwrap();

    let profile_of = |path: &str| {
        common::poll(Duration::from_secs(60), Duration::from_millis(50), || {
            let (status, body) = common::http_get(address, path);
            let profile: Value = serde_json::from_str(&body).map_err(|error| error.to_string())?;
            if status == 200 && profile["events"] == 30 && profile["attributes"].is_object() {
                Ok(profile)
            } else {
                Err(format!("{path} returned {status}: {body}"))
            }
        })
    };
    let integer = profile_of("/users/7");
    assert_eq!(integer["user"], 7);
    assert_eq!(integer["interest"][0]["category"], 100);
    assert_eq!(integer["attributes"]["region"], "north");
    let text = profile_of("/users/%227%22");
    assert_eq!(text["user"], "7");
    assert_eq!(text["interest"][0]["category"], 500);
    assert_eq!(text["attributes"]["region"], "north");

    let (status, body) = common::http_get(address, "/users/%228%22");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not tracked"), "{body}");
    assert!(body.contains("request /users/8"), "{body}");
    let (status, body) = common::http_get(address, "/users/8");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("user 8 is not tracked"), "{body}");
    assert!(body.contains("request /users/%228%22"), "{body}");
    let (status, body) = common::http_get(address, "/users/%22a%5Cq%22");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid quoted user id"), "{body}");

    drop(stdin);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "veer exited with {status}:\n{}",
        log.finish().join("\n")
    );
}
