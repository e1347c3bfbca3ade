//! Failed reads and writes of `veer run`: a gzip input cut in the middle or damaged at its
//! start, a standard input that cannot be read, and an alert file or checkpoints on a disk that
//! fills up. The lines read before the damage are processed, the alert file keeps whole lines
//! only, failed checkpoints leave no file, the summary counts what happened, and the error
//! names the file.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::arg;

/// Compresses `bytes` as one gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Returns what a gzip reader gets out of `compressed` before its first error.
fn readable_prefix(compressed: &[u8]) -> Vec<u8> {
    let mut decoder = flate2::read::GzDecoder::new(compressed);
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match decoder.read(&mut chunk) {
            Ok(0) | Err(_) => return text,
            Ok(read) => text.extend_from_slice(&chunk[..read]),
        }
    }
}

/// Returns the summary line that starts with `name`.
fn summary_line<'a>(stderr: &'a str, name: &str) -> &'a str {
    stderr
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{stderr}"))
}

#[test]
fn truncated_gzip_processes_lines_before_damage() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 300, 9, 5);
    let text = std::fs::read(&events).unwrap();
    let compressed = gzip(&text);
    let cut = folder.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &compressed[..compressed.len() * 7 / 10]).unwrap();

    // The oracle: a plain file of the whole lines that the cut file still holds, and a later
    // input that the damaged run must still read.
    let prefix = readable_prefix(&std::fs::read(&cut).unwrap());
    let whole = &prefix[..=prefix.iter().rposition(|&byte| byte == b'\n').unwrap()];
    let whole_lines = whole.iter().filter(|&&byte| byte == b'\n').count() as u64;
    assert!(whole.len() < prefix.len(), "the cut falls inside a line");
    let plain = folder.path().join("prefix.jsonl");
    std::fs::write(&plain, whole).unwrap();
    let tail = folder.path().join("tail.jsonl");
    let mut tail_text: Vec<u8> = Vec::new();
    for line in text.split(|&byte| byte == b'\n').rev().skip(1).take(50) {
        tail_text.extend_from_slice(line);
        tail_text.push(b'\n');
    }
    std::fs::write(&tail, tail_text).unwrap();

    let damaged = common::run_veer(&["--input", arg(&cut), "--input", arg(&tail)]);
    let expected = common::run_veer(&["--input", arg(&plain), "--input", arg(&tail)]);
    assert_eq!(expected.status, 0, "{}", expected.stderr);
    assert!(!expected.alerts.is_empty(), "the prefix raises alerts");

    assert_eq!(damaged.status, 4, "{}", damaged.stderr);
    assert_eq!(damaged.alerts_text, expected.alerts_text);
    assert_eq!(damaged.summary_count("lines read"), whole_lines + 1 + 50);
    assert_eq!(damaged.summary_count("bad"), 1);
    let bad = &damaged.dead_letter[0];
    assert_eq!(bad["line"], whole_lines + 1);
    assert_eq!(bad["reason"], "line cut off where the input is damaged");
    let position = format!(
        "after line {whole_lines} (uncompressed byte {})",
        prefix.len()
    );
    let line = summary_line(&damaged.stderr, "damaged input");
    assert!(line.contains(arg(&cut)), "{line}");
    assert!(line.contains(&format!("read stopped {position}")), "{line}");
    let error = summary_line(&damaged.stderr, "error:");
    assert!(error.contains(arg(&cut)), "{error}");
    assert!(error.contains(&position), "{error}");
    assert!(
        error.contains("lines before the damage were processed"),
        "{error}"
    );
}

#[test]
fn gzip_damaged_at_start_reads_later_inputs() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 50, 5, 3);
    let compressed = gzip(&std::fs::read(&events).unwrap());
    let cut = folder.path().join("start.jsonl.gz");
    std::fs::write(&cut, &compressed[..20]).unwrap();

    let run = common::run_veer(&["--input", arg(&cut), "--input", arg(&events)]);
    assert_eq!(run.status, 4, "{}", run.stderr);
    let lines = std::fs::read_to_string(&events).unwrap().lines().count() as u64;
    assert_eq!(run.summary_count("lines read"), lines);
    let error = summary_line(&run.stderr, "error:");
    assert!(error.contains(arg(&cut)), "{error}");
    assert!(
        error.contains("after line 0 (uncompressed byte 0)"),
        "{error}"
    );
}

/// How `veer run --input -` finds its standard input.
enum Stdin {
    /// Descriptor 0 closed, as `<&-` in a shell leaves it.
    Closed,
    /// A file opened for writing only, so a read fails with EBADF.
    WriteOnly(std::fs::File),
    /// `/dev/null`.
    Null,
}

/// Runs `veer run --input -` with `stdin` and returns the exit code and standard error.
fn run_with_stdin(stdin: Stdin) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command
        .args(["run", "--no-progress", "--input", "-"])
        .env("VEER_LOG", "warn");
    match stdin {
        Stdin::Closed => {
            // SAFETY: between fork and exec the closure only calls `close`, which is
            // async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    libc::close(libc::STDIN_FILENO);
                    Ok(())
                });
            }
        }
        Stdin::WriteOnly(file) => {
            command.stdin(file);
        }
        Stdin::Null => {
            command.stdin(std::process::Stdio::null());
        }
    }
    let output = command.output().expect("the veer binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn unusable_stdin_is_input_error() {
    let folder = tempfile::tempdir().unwrap();
    let write_only = std::fs::File::create(folder.path().join("write-only")).unwrap();
    for (label, stdin) in [
        ("closed", Stdin::Closed),
        ("write-only", Stdin::WriteOnly(write_only)),
    ] {
        let (status, stderr) = run_with_stdin(stdin);
        assert_eq!(status, 2, "{label}: {stderr}");
        let error = summary_line(&stderr, "error:");
        assert!(
            error.contains("cannot read standard input (--input -)"),
            "{label}: {error}"
        );
        assert!(
            error.contains("file descriptor 0 is closed or not open for reading"),
            "{label}: {error}"
        );
    }
}

#[test]
fn null_or_empty_stdin_is_empty_input() {
    let (status, stderr) = run_with_stdin(Stdin::Null);
    assert_eq!(status, 0, "/dev/null: {stderr}");
    let lines = summary_line(&stderr, "lines read");
    assert_eq!(lines.split_whitespace().last(), Some("0"), "{stderr}");

    let run = common::run_veer_with_stdin(&["--input", "-"], b"");
    assert_eq!(run.status, 0, "empty pipe: {}", run.stderr);
    assert_eq!(run.summary_count("lines read"), 0, "{}", run.stderr);
}

/// Runs `veer run` on `input` with its files limited to `limit_bytes` (`RLIMIT_FSIZE`), so that
/// writing the alert file fails as on a full disk, and returns the exit code and standard
/// error.
fn run_with_file_limit(input: &Path, alerts: &Path, limit_bytes: u64) -> (i32, String) {
    let args = ["--input", arg(input), "--alerts", arg(alerts)];
    run_with_limit(&args, limit_bytes)
}

/// Runs `veer run --no-progress` with `args` and its files limited to `limit_bytes`
/// (`RLIMIT_FSIZE`), and returns the exit code and standard error.
fn run_with_limit(args: &[&str], limit_bytes: u64) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command
        .args(["run", "--no-progress"])
        .args(args)
        .env("VEER_LOG", "warn");
    // SAFETY: between fork and exec the closure only calls `signal` and `setrlimit`, which are
    // async-signal-safe. SIGXFSZ keeps its default action, which kills a process that writes
    // past the limit unless it ignores the signal itself, as veer does.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            let limit = libc::rlimit {
                rlim_cur: limit_bytes,
                rlim_max: limit_bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("the veer binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn full_disk_leaves_whole_alert_lines() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 300, 9, 5);
    let complete = common::run_veer(&["--input", arg(&events)]);
    assert_eq!(complete.status, 0, "{}", complete.stderr);
    let limit = complete.alerts_text.len() as u64 / 3;

    let alerts = folder.path().join("alerts.jsonl");
    let (status, stderr) = run_with_file_limit(&events, &alerts, limit);
    assert_eq!(status, 2, "{stderr}");
    let text = std::fs::read_to_string(&alerts).unwrap();
    assert!(text.ends_with('\n'), "a torn last line is left: {text:?}");
    assert!(
        complete.alerts_text.starts_with(&text),
        "the file is a prefix"
    );
    let written = text.lines().count() as u64;
    assert!(written > 0);

    let sink = summary_line(&stderr, &format!("sink file {}", arg(&alerts)));
    let lost = complete.alerts.len() as u64 - written;
    assert!(
        sink.contains(&format!("delivered {written}, lost {lost}")),
        "{sink}"
    );
    assert!(!sink.contains("FAILED"), "{sink}");
    let error = summary_line(&stderr, "error:");
    assert!(
        error.contains(&format!("{lost} alerts were lost")),
        "{error}"
    );
    assert!(error.contains(arg(&alerts)), "{error}");
}

#[test]
fn failed_checkpoints_exit_5_and_leave_no_files() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 300, 9, 5);
    let checkpoints = folder.path().join("ck");
    // The alerts go to a device, which the file-size limit does not cover, so only the
    // checkpoint files pass the limit.
    let args = [
        "--input",
        arg(&events),
        "--alerts",
        "/dev/null",
        "--checkpoint-dir",
        arg(&checkpoints),
        "--checkpoint-interval",
        "1ms",
    ];
    let (status, stderr) = run_with_limit(&args, 1000);
    assert_eq!(status, 5, "{stderr}");

    let failed: u64 = summary_line(&stderr, "  failed")
        .split_whitespace()
        .nth(1)
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in the `failed` line:\n{stderr}"));
    assert!(failed > 0, "{stderr}");
    assert_eq!(
        summary_line(&stderr, "checkpoints")
            .split_whitespace()
            .nth(1),
        Some("0"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "files left in the checkpoint folder: {left:?}"
    );

    // Every failure has the same cause, so only the 1st, 2nd, 4th, ... failure is logged.
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("checkpoint failed;"))
        .collect();
    assert_eq!(logged.len() as u32, failed.ilog2() + 1, "{stderr}");
    assert!(
        logged[0].contains(".checkpoint-0000000001.veer.tmp"),
        "{}",
        logged[0]
    );
    assert!(logged[0].contains("File too large"), "{}", logged[0]);
    let error = summary_line(&stderr, "error:");
    assert!(
        error.contains(&format!("{failed} checkpoints failed")),
        "{error}"
    );
}

/// Checks that `path` contains whole JSON lines only, as a JSON-lines reader needs, and returns
/// how many.
fn assert_whole_json_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a torn last line is left in {}: {:?}",
        path.display(),
        &text[text.len().saturating_sub(200)..]
    );
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "invalid JSON line in {}: {line}",
            path.display()
        );
    }
    text.lines().count()
}

#[test]
fn full_disk_dead_letter_whole_lines() {
    let folder = tempfile::tempdir().unwrap();
    let input = folder.path().join("events.csv");
    let mut text = String::new();
    for line in 0..2000 {
        text.push_str(&format!("user-{line},1,1,click,1511539200\n"));
    }
    std::fs::write(&input, text).unwrap();
    let dead_letter = folder.path().join("dead.jsonl");
    let args = [
        "--input",
        arg(&input),
        "--format",
        "taobao",
        "--alerts",
        "/dev/null",
        "--dead-letter",
        arg(&dead_letter),
    ];
    let (status, stderr) = run_with_limit(&args, 20_000);
    assert_eq!(status, 2, "{stderr}");

    let written = assert_whole_json_lines(&dead_letter);
    assert!(written > 0, "{stderr}");
    let error = summary_line(&stderr, "error:");
    assert!(error.contains(arg(&dead_letter)), "{error}");
}

#[test]
fn full_disk_profiles_whole_lines() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 300, 9, 5);
    let profiles = folder.path().join("profiles.jsonl");
    let args = [
        "--input",
        arg(&events),
        "--alerts",
        "/dev/null",
        "--profiles",
        arg(&profiles),
    ];
    let (status, stderr) = run_with_limit(&args, 20_000);
    assert_eq!(status, 2, "{stderr}");

    let written = assert_whole_json_lines(&profiles);
    assert!(written > 0, "{stderr}");
    let error = summary_line(&stderr, "error:");
    assert!(error.contains(arg(&profiles)), "{error}");
}

#[test]
fn full_disk_webhook_dead_letter_whole_lines() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 300, 9, 5);
    // A port that was free a moment ago refuses the connection, so every alert is given up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/alerts");
    let dead_letter = folder.path().join("webhook-dead.jsonl");
    let args = [
        "--input",
        arg(&events),
        "--alerts",
        "/dev/null",
        "--webhook",
        &url,
        "--webhook-max-attempts",
        "1",
        "--webhook-dead-letter",
        arg(&dead_letter),
    ];
    let (status, stderr) = run_with_limit(&args, 6_000);
    assert_eq!(status, 2, "{stderr}");

    let written = assert_whole_json_lines(&dead_letter);
    assert!(written > 0, "{stderr}");
    let sink = summary_line(&stderr, "sink webhook");
    assert!(
        sink.contains(&format!("dead-lettered {written},")),
        "the summary does not count the {written} lines of the file: {sink}"
    );
}
