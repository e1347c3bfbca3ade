//! Idle input: a silent connection must not hold event time back once it is idle, must not be
//! taken for the end of input, and idle workers must park instead of spinning. The handed
//! case runs minutes apart; here the idle timeout is 2 s and the pauses are scaled with it.

mod serving;

use std::io::Write;
use std::time::{Duration, Instant};

use serving::{case_file, connect_and_send, read_json_lines, summary_count, Server};

const CASE: &str = "05-idle-input";
const IDLE_TIMEOUT_SECS: u64 = 2;

fn serve(alerts: &str, dead: &str, listeners: usize) -> Server {
    let mut args = vec!["serve", "--workers", "4", "--idle-timeout", "2s"];
    for _ in 0..listeners {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    args.extend(["--alerts", alerts, "--dead-letter", dead]);
    Server::start(&args, listeners)
}

/// Polls the alert file until it holds an alert, or fails after `seconds`.
fn wait_for_alert(path: &std::path::Path, seconds: u64) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        if !read_json_lines(path).is_empty() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no alert within {seconds} s");
}

#[test]
fn silent_source_does_not_stall_event_time() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let dead = folder.path().join("dead.jsonl");
    let mut server = serve(alerts.to_str().unwrap(), dead.to_str().unwrap(), 2);
    let (active, silent) = (server.addresses[0], server.addresses[1]);

    let mut source_b = connect_and_send(
        silent,
        &std::fs::read(case_file(CASE, "idle.jsonl")).unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let source_a = connect_and_send(
        active,
        &std::fs::read(case_file(CASE, "active.jsonl")).unwrap(),
    );

    // Both sockets stay open and B stays silent.
    let waited = wait_for_alert(&alerts, IDLE_TIMEOUT_SECS + 10);
    assert!(waited < Duration::from_secs(IDLE_TIMEOUT_SECS + 10));
    let found = read_json_lines(&alerts);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["user"], 501);
    assert_eq!(found[0]["kind"], "interest_shift");
    let ts = found[0]["ts"].as_i64().unwrap();
    assert!((1_511_712_000..=1_511_971_200).contains(&ts), "{ts}");

    // No data on either socket: every worker parks.
    std::thread::sleep(Duration::from_secs(1));
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(5));
    let used = server.cpu_time() - before;
    assert!(
        used < Duration::from_millis(250),
        "used {used:?} of CPU in 5 s"
    );

    // B's late events are counted as late, with their connection and line.
    source_b
        .write_all(&std::fs::read(case_file(CASE, "late.jsonl")).unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(source_a);
    drop(source_b);
    server.wait_for(|log| log.matches("connection closed").count() == 2, 10);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());

    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 228);
    assert_eq!(summary_count(&log, "late"), 3);
    assert_eq!(summary_count(&log, "bad"), 0);
    let found = read_json_lines(&alerts);
    assert_eq!(
        found.len(),
        1,
        "no alert for 502 or 503, no second one for 501: {found:?}"
    );
    let late = read_json_lines(&dead);
    assert_eq!(late.len(), 3);
    for (record, line) in late.iter().zip([6, 7, 8]) {
        assert_eq!(record["kind"], "late");
        assert_eq!(record["line"], line);
        assert!(record["file"]
            .as_str()
            .unwrap()
            .starts_with("tcp:127.0.0.1:"));
    }
}

#[test]
fn single_source_workers_park() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let dead = folder.path().join("dead.jsonl");
    let mut server = serve(alerts.to_str().unwrap(), dead.to_str().unwrap(), 1);
    let source = connect_and_send(
        server.addresses[0],
        &std::fs::read(case_file(CASE, "active.jsonl")).unwrap(),
    );
    wait_for_alert(&alerts, IDLE_TIMEOUT_SECS + 10);

    std::thread::sleep(Duration::from_secs(IDLE_TIMEOUT_SECS + 1));
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(5));
    let used = server.cpu_time() - before;
    assert!(
        used < Duration::from_millis(250),
        "used {used:?} of CPU in 5 s"
    );

    drop(source);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());
    assert_eq!(summary_count(&server.log(), "lines read"), 220);
    assert_eq!(read_json_lines(&alerts).len(), 1);
}
