//! Hostile input on loopback: 64 concurrent clients, one of them slow, one sending a 10 MB
//! line and one sending binary garbage. Every other client's events arrive and are processed
//! (the alerts equal a file run of the same events), and the hostile clients are cut off with
//! a log line naming them.

mod common;
mod serving;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serving::{alert_ids, summary_count, Server};

const NORMAL_CLIENTS: usize = 61;

/// Sends `lines` in chunks of `per_chunk` lines with `pause` between chunks, and returns the
/// open connection.
fn send_lines(
    address: SocketAddr,
    lines: &[String],
    per_chunk: usize,
    pause: Duration,
) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    for chunk in lines.chunks(per_chunk) {
        stream.write_all(chunk.concat().as_bytes()).unwrap();
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    stream
}

/// Sends as many bytes as the server takes, ignoring the error when it cuts the client off.
fn send_until_cut(address: SocketAddr, bytes: Vec<u8>) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    let _ = stream.write_all(&bytes);
    stream
}

/// Bytes of a fixed pseudo-random sequence (xorshift), never starting with `{`.
fn garbage(length: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes: Vec<u8> = (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    bytes[0] = 0xFF;
    bytes
}

#[test]
fn hostile_clients_cut_off_others_processed() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 620, 9, 7);

    // The reference: the same events from a file.
    let reference = folder.path().join("reference.jsonl");
    let args = [
        "run",
        "--input",
        events.to_str().unwrap(),
        "--alerts",
        reference.to_str().unwrap(),
    ];
    let (code, _) = Server::start(&args, 0).wait_exit(60);
    assert_eq!(code, 0);

    // Each user's events go to one client, in time order; client NORMAL_CLIENTS is the slow one.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut clients: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let user = value["user"].as_u64().unwrap() as usize;
        clients
            .entry(user % (NORMAL_CLIENTS + 1))
            .or_default()
            .push(format!("{line}\n"));
    }
    let total_events = text.lines().count() as u64;

    let alerts = folder.path().join("alerts.jsonl");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    let mut server = Server::start(&args, 1);
    let address = server.addresses[0];

    let mut threads = Vec::new();
    for (index, lines) in clients {
        let (per_chunk, pause) = if index == NORMAL_CLIENTS {
            (5, Duration::from_millis(30))
        } else {
            (200, Duration::ZERO)
        };
        threads.push(std::thread::spawn(move || {
            send_lines(address, &lines, per_chunk, pause)
        }));
    }
    let long_line = std::thread::spawn(move || send_until_cut(address, vec![b'x'; 10 << 20]));
    let binary = std::thread::spawn(move || send_until_cut(address, garbage(1 << 20)));

    let hostile = [long_line.join().unwrap(), binary.join().unwrap()];
    let normal: Vec<TcpStream> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    assert_eq!(normal.len() + hostile.len(), 64);
    let long_peer = hostile[0].local_addr().unwrap().to_string();
    let binary_peer = hostile[1].local_addr().unwrap().to_string();
    server.wait_for(
        |log| {
            log.contains("line longer than max_line_bytes")
                && log.contains("cannot detect the format")
        },
        20,
    );
    drop(normal);
    server.wait_for(|log| log.matches("connection closed").count() >= 64, 30);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(20);
    assert_eq!(code, 0);

    let log = server.log();
    let cut_line = |needle: &str| {
        log.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no log line {needle:?}"))
            .to_string()
    };
    let long_log = cut_line("line longer than max_line_bytes");
    assert!(long_log.contains(&long_peer), "{long_log}");
    assert!(long_log.contains("max_line_bytes=1048576"), "{long_log}");
    let binary_log = cut_line("cannot detect the format");
    assert!(binary_log.contains(&binary_peer), "{binary_log}");

    assert_eq!(summary_count(&log, "events"), total_events);
    assert_eq!(summary_count(&log, "late"), 0);
    assert_eq!(summary_count(&log, "bad"), 2);
    assert_eq!(summary_count(&log, "lines read"), total_events + 2);
    let ids = alert_ids(&alerts);
    assert!(!ids.is_empty());
    assert_eq!(ids, alert_ids(&reference));
}
