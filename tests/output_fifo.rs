//! Outputs that are named pipes (FIFOs): a run waits for their reader without blocking
//! SIGTERM or SIGINT, and writes every alert once a reader comes.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{arg, generate_stream, make_fifo};

/// Starts `veer run` on `input` with `output_args`, logging at info level to a pipe.
fn start_run(input: &Path, output_args: &[&str]) -> (Child, common::Log) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--no-progress", "--input", arg(input)])
        .args(output_args)
        .env("VEER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veer starts");
    let log = common::Log::capture(&mut child);
    (child, log)
}

#[test]
fn fifo_without_reader_stops_on_signal() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = generate_stream(folder.path(), 50, 5, 5);
    let cases = [
        ("--alerts", libc::SIGTERM),
        ("--alerts", libc::SIGINT),
        ("--dead-letter", libc::SIGTERM),
        ("--profiles", libc::SIGINT),
    ];
    for (index, (option, signal)) in cases.into_iter().enumerate() {
        let fifo = folder.path().join(format!("pipe-{index}"));
        make_fifo(&fifo);
        let alerts = folder.path().join(format!("alerts-{index}.jsonl"));
        let mut args = vec![option, arg(&fifo)];
        if option != "--alerts" {
            args.extend(["--alerts", arg(&alerts)]);
        }
        let (mut child, mut log) = start_run(&events, &args);
        log.wait_for(
            &["waiting for a process to open the named pipe", arg(&fifo)],
            Duration::from_secs(60),
        );

        let (code, took) =
            common::signal_and_wait(&mut child, signal, Duration::from_secs(20));
        let lines = log.finish().join("\n");
        assert_eq!(code, 0, "{option}, signal {signal}:\n{lines}");
        assert!(took < Duration::from_secs(5), "{option}: took {took:?}");
        assert!(
            lines.contains("stopped before the run started"),
            "{option}:\n{lines}"
        );
        assert!(lines.contains("no input was read"), "{option}:\n{lines}");
        assert!(!lines.contains("error:"), "{option}:\n{lines}");
    }
}

#[test]
fn fifo_reader_gets_every_alert() {
    let folder = tempfile::tempdir().unwrap();
    // 600 users raise about 140 KB of alerts, more than a pipe buffer holds.
    let (events, _) = generate_stream(folder.path(), 600, 9, 5);
    let reference: PathBuf = folder.path().join("reference.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "--no-progress", "--input", arg(&events)])
        .args(["--alerts", arg(&reference)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let expected = std::fs::read_to_string(&reference).unwrap();
    assert!(expected.len() > 64 * 1024, "{} bytes", expected.len());

    let fifo = folder.path().join("alerts.pipe");
    make_fifo(&fifo);
    let (mut child, mut log) = start_run(&events, &["--alerts", arg(&fifo)]);
    log.wait_for(
        &["waiting for a process to open the named pipe"],
        Duration::from_secs(60),
    );
    let mut reader = std::fs::File::open(&fifo).unwrap();
    // The run fills the pipe before the reader starts, so its writes must wait.
    std::thread::sleep(Duration::from_millis(500));
    let mut received = String::new();
    reader.read_to_string(&mut received).unwrap();

    let status = child.wait().unwrap();
    let lines = log.finish().join("\n");
    assert!(status.success(), "{status}:\n{lines}");
    assert!(lines.contains("a reader opened the named pipe"), "{lines}");
    assert_eq!(received, expected);
}
