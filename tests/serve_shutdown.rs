//! Shutdown: end of standard input, SIGTERM in the middle of a TCP stream, SIGTERM with a
//! silent client or a blocked standard input, and a second SIGINT during a stalled shutdown.

mod common;
mod serving;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serving::{alert_ids, case_file, connect_and_send, read_json_lines, summary_count, Server};

const CASE: &str = "16-graceful-shutdown";

#[test]
fn stdin_end_closes_windows() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("a.jsonl");
    let input = std::fs::File::open(case_file(CASE, "input.jsonl")).unwrap();
    let args = [
        "run",
        "--input",
        "-",
        "--workers",
        "4",
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    let mut server = Server::start_with_stdin(&args, 0, Stdio::from(input));
    let (code, took) = server.wait_exit(30);
    assert_eq!(code, 0, "{}", server.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let alerts = read_json_lines(&alerts);
    let truth = read_json_lines(&case_file(CASE, "truth.jsonl"));
    assert_eq!(
        alerts.len(),
        truth.len(),
        "one alert per shift and nothing else: {alerts:?}"
    );
    for shift in &truth {
        let onset = shift["onset_ts"].as_i64().unwrap();
        let found = alerts.iter().any(|alert| {
            let ts = alert["ts"].as_i64().unwrap();
            alert["user"] == shift["user"]
                && alert["kind"] == "interest_shift"
                && (onset..=onset + 259_200).contains(&ts)
        });
        assert!(found, "no alert within the horizon for {shift}");
    }
}

/// Writes the first 2,100 lines of the case input to `folder` and runs `veer run` on them as
/// a file with 4 workers. Returns those lines and the path of the run's alert file.
fn head_and_reference(folder: &std::path::Path) -> (String, std::path::PathBuf) {
    let text = std::fs::read_to_string(case_file(CASE, "input.jsonl")).unwrap();
    let head: String = text
        .lines()
        .take(2100)
        .map(|line| format!("{line}\n"))
        .collect();
    let head_path = folder.join("head.jsonl");
    std::fs::write(&head_path, &head).unwrap();

    let reference = folder.join("ref.jsonl");
    let args = [
        "run",
        "--input",
        head_path.to_str().unwrap(),
        "--workers",
        "4",
        "--alerts",
        reference.to_str().unwrap(),
    ];
    let (code, _) = Server::start(&args, 0).wait_exit(30);
    assert_eq!(code, 0);
    (head, reference)
}

#[test]
fn sigterm_mid_stream_keeps_read_events() {
    let folder = tempfile::tempdir().unwrap();
    let (head, reference) = head_and_reference(folder.path());

    let alerts = folder.path().join("b.jsonl");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--status-interval",
        "100ms",
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    let mut server = Server::start(&args, 1);
    let _client = connect_and_send(server.addresses[0], head.as_bytes());
    server.wait_for(|log| log.contains("events=2100"), 20);
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());
    assert!(took < Duration::from_secs(10));

    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 2100);
    assert_eq!(summary_count(&log, "late"), 0);
    let ids = alert_ids(&alerts);
    assert!(!ids.is_empty());
    assert_eq!(ids, alert_ids(&reference));
}

#[test]
fn sigterm_reads_lines_already_received() {
    let text = std::fs::read_to_string(case_file(CASE, "input.jsonl")).unwrap();
    let lines: Vec<String> = text.lines().map(|line| format!("{line}\n")).collect();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--startup-hold",
        "0s",
        "--max-buffered-events",
        "50",
        "--status-interval",
        "100ms",
        "--alerts",
        "-",
    ];
    let mut server = Server::start(&args, 1);
    let address = server.addresses[0];

    // The first client's one early event holds back the frontier, so the second client's events
    // wait for it, and past 50 waiting events the engine stops reading the second client.
    let _holder = connect_and_send(address, lines[0].as_bytes());
    server.wait_for(|log| log.contains("events=1 "), 10);
    let mut ahead = connect_and_send(address, lines[1..301].concat().as_bytes());
    server.wait_for(|log| log.contains("events=301 "), 10);
    ahead.write_all(lines[301..501].concat().as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !server.log().contains("lines=501 "),
        "the engine read the held-back lines before the signal, so this test checks nothing"
    );

    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 501, "{log}");
    assert!(log.contains("read the data already received"), "{log}");
}

#[test]
fn sigterm_refuses_new_connections() {
    let text = std::fs::read_to_string(case_file(CASE, "input.jsonl")).unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--alerts", "-"];
    let mut server = Server::start(&args, 1);
    let address = server.addresses[0];

    // A client that never stops sending keeps the shutdown busy reading for a while.
    let mut sender = std::net::TcpStream::connect(address).unwrap();
    let writer = std::thread::spawn(move || {
        while sender.write_all(text.as_bytes()).is_ok() {}
    });
    server.wait_for(|log| log.contains("connection opened"), 10);
    server.signal(libc::SIGTERM);
    server.wait_for(|log| log.contains("stopped listening"), 10);
    let late_client = std::net::TcpStream::connect(address);
    let still_running = server.child.try_wait().unwrap().is_none();
    assert!(
        late_client.is_err(),
        "a connection was accepted after the engine stopped listening"
    );
    assert!(
        still_running,
        "the engine exited before the check, so it checks nothing"
    );

    let (code, _) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());
    writer.join().unwrap();
}

#[test]
fn sigterm_with_silent_client_frees_port() {
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--alerts",
        "-",
    ];
    let mut server = Server::start(&args, 1);
    let address = server.addresses[0];
    let _silent = std::net::TcpStream::connect(address).unwrap();
    server.wait_for(|log| log.contains("connection opened"), 10);
    std::thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());
    assert!(took < Duration::from_secs(10));
    assert!(server.log().contains("stopped listening"));
    // The client is still connected, and the port is free at once.
    let again = std::net::TcpListener::bind(address);
    assert!(again.is_ok(), "{again:?}");
}

#[test]
fn sigterm_with_blocked_stdin_exits() {
    let folder = tempfile::tempdir().unwrap();
    let reference = folder.path().join("ref.jsonl");
    let input = case_file(CASE, "input.jsonl");
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--order",
        "arrival",
        "--alerts",
        reference.to_str().unwrap(),
    ];
    let (code, _) = Server::start(&args, 0).wait_exit(30);
    assert_eq!(code, 0);

    let alerts = folder.path().join("alerts.jsonl");
    let args = [
        "run",
        "--input",
        "-",
        "--order",
        "arrival",
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    let mut server = Server::start_with_stdin(&args, 0, Stdio::piped());
    let text = std::fs::read_to_string(&input).unwrap();
    let mut stdin = server.child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(10);
    drop(stdin);
    assert_eq!(code, 0, "{}", server.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let log = server.log();
    assert!(log.contains("input is treated as ended"), "{log}");
    // All 3,000 lines were in the pipe before the signal, fewer than one reader batch of
    // 4,096, and none may be dropped.
    assert_eq!(summary_count(&log, "lines read"), 3000, "{log}");
    assert_eq!(summary_count(&log, "events"), 3000, "{log}");
    let ids = alert_ids(&alerts);
    assert!(!ids.is_empty());
    assert_eq!(ids, alert_ids(&reference));
}

/// A named pipe given by its path ends at a signal like standard input, although its writer
/// keeps it open.
#[test]
fn sigterm_ends_named_pipe_input() {
    let folder = tempfile::tempdir().unwrap();
    let fifo = folder.path().join("events.pipe");
    common::make_fifo(&fifo);
    let text = std::fs::read_to_string(case_file(CASE, "input.jsonl")).unwrap();
    // The writer opens the pipe, which waits for veer to open it, writes every line and
    // keeps the pipe open until the test ends.
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
        pipe
    });

    let alerts = folder.path().join("alerts.jsonl");
    let mut server = start_on_fifo(&fifo, &alerts);
    let pipe = writer.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(10);
    drop(pipe);
    assert_eq!(code, 0, "{}", server.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 3000, "{log}");
    assert_eq!(summary_count(&log, "events"), 3000, "{log}");
}

#[test]
fn sigterm_counts_unfinished_stdin_line() {
    check_unfinished_stdin_line(false);
}

/// A shutdown that cuts a gzip member still counts the decompressed part of its last line.
#[test]
fn sigterm_counts_unfinished_gzip_line() {
    check_unfinished_stdin_line(true);
}

/// Writes 2,100 whole lines and one unfinished line to `veer run --input -`, plain or as one
/// unfinished gzip member, then sends SIGTERM and checks that every line is counted and the
/// unfinished one is a bad record.
fn check_unfinished_stdin_line(gzip: bool) {
    let folder = tempfile::tempdir().unwrap();
    let (head, reference) = head_and_reference(folder.path());
    let mut text = head.into_bytes();
    text.extend_from_slice(br#"{"user":1600,"item":7,"category":4"#);
    let bytes = if gzip {
        // A sync flush makes the whole text decodable while the member stays unfinished.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&text).unwrap();
        encoder.flush().unwrap();
        encoder.get_ref().clone()
    } else {
        text
    };

    // The default order reads standard input to its end before the replay, so the signal
    // ends the input. The 2,100 whole lines are events and the unfinished one is bad.
    let alerts = folder.path().join("alerts.jsonl");
    let dead = folder.path().join("dead.jsonl");
    let args = [
        "run",
        "--input",
        "-",
        "--alerts",
        alerts.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
    ];
    let mut server = Server::start_with_stdin(&args, 0, Stdio::piped());
    let mut stdin = server.child.stdin.take().unwrap();
    stdin.write_all(&bytes).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(10);
    drop(stdin);
    assert_eq!(code, 0, "{}", server.log());
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 2101, "{log}");
    assert_eq!(summary_count(&log, "events"), 2100, "{log}");
    assert_eq!(summary_count(&log, "bad"), 1, "{log}");
    let records = read_json_lines(&dead);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["line"], 2101);
    let reason = records[0]["reason"].as_str().unwrap();
    assert!(reason.contains("not finished"), "{reason}");
    let ids = alert_ids(&alerts);
    assert!(!ids.is_empty());
    assert_eq!(ids, alert_ids(&reference));
}

#[test]
fn second_sigint_exits_at_once() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 8000, 9, 7);

    // Standard input stays open, so the first signal ends the input and the run then replays
    // every event it read; the second signal comes during that replay.
    let alerts = folder.path().join("d.jsonl");
    let args = [
        "run",
        "--input",
        "-",
        "--workers",
        "2",
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    let mut server = Server::start_with_stdin(&args, 0, Stdio::piped());
    let mut stdin = server.child.stdin.take().unwrap();
    stdin.write_all(&std::fs::read(&events).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    server.signal(libc::SIGINT);
    server.wait_for(|log| log.contains("input is treated as ended"), 5);
    server.signal(libc::SIGINT);
    let (code, took) = server.wait_exit(10);
    drop(stdin);
    assert_eq!(code, 130, "{}", server.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(server.log().contains("in flight may be lost"));
    // Only whole lines, whatever was written before the exit.
    read_json_lines(&alerts);
}

/// A named pipe that no writer has opened ends at a signal too: opening it must not block.
#[test]
fn sigterm_ends_named_pipe_without_writer() {
    let folder = tempfile::tempdir().unwrap();
    let fifo = folder.path().join("events.pipe");
    common::make_fifo(&fifo);
    let alerts = folder.path().join("alerts.jsonl");
    let mut server = start_on_fifo(&fifo, &alerts);
    std::thread::sleep(Duration::from_secs(1));
    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(10);
    assert_eq!(code, 0, "{}", server.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 0, "{log}");
}

/// Starts `veer run` reading the named pipe `fifo` in arrival order, with alerts in `alerts`.
fn start_on_fifo(fifo: &std::path::Path, alerts: &std::path::Path) -> Server {
    let args = [
        "run",
        "--input",
        fifo.to_str().unwrap(),
        "--order",
        "arrival",
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    Server::start(&args, 0)
}
