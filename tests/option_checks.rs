//! Options of `veer run` that are checked before anything is read: a value that would make
//! the run misbehave later is rejected at start with exit code 2, and a device as an output
//! is accepted.

mod common;

use common::{arg, run_veer_exact, shared};

const CASE_ONE_SHIFT: &str = "cases/01-one-shift-one-alert/input.jsonl";

/// Runs `veer run` with `args` and checks that it stops before reading any input, with exit
/// code 2 and an error that contains `expected`.
fn assert_rejected(args: &[&str], expected: &str) {
    let run = run_veer_exact(&[&["run"], args].concat());
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains(expected), "{}", run.stderr);
    assert!(
        !run.stderr.contains("lines read"),
        "the run started: {}",
        run.stderr
    );
}

#[test]
fn checkpoint_interval_without_folder_rejected() {
    let input = shared(CASE_ONE_SHIFT);
    let args = [
        "--input",
        arg(&input),
        "--alerts",
        "/dev/null",
        "--checkpoint-interval",
        "1s",
    ];
    assert_rejected(&args, "add --checkpoint-dir DIR");
}

#[test]
fn malformed_webhook_url_rejected_at_start() {
    let input = shared(CASE_ONE_SHIFT);
    let folder = tempfile::tempdir().unwrap();
    let dead_letter = folder.path().join("webhook-dead.jsonl");
    let args = [
        "--input",
        arg(&input),
        "--alerts",
        "/dev/null",
        "--webhook",
        "http://[::1/x",
        "--webhook-dead-letter",
        arg(&dead_letter),
    ];
    assert_rejected(&args, "no closing `]`");
}

#[test]
fn zero_line_timeout_rejected() {
    let args = ["--listen", "127.0.0.1:0", "--line-timeout", "0s"];
    assert_rejected(&args, "invalid --line-timeout 0s");
}

#[test]
fn dev_null_as_input_and_outputs_accepted() {
    let run = run_veer_exact(&[
        "run",
        "--no-progress",
        "--input",
        "/dev/null",
        "--alerts",
        "/dev/null",
        "--dead-letter",
        "/dev/null",
    ]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stderr.contains("lines read"), "{}", run.stderr);
}

#[test]
fn listen_address_mistakes_rejected() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let loopback = format!("127.0.0.1:{port}");
    assert_rejected(
        &["--listen", "::1"],
        "invalid --listen ::1: the address has no port; add one, such as [::1]:7700",
    );
    assert_rejected(
        &["--listen", &port, "--listen", &loopback],
        &format!("the address {loopback} is given twice"),
    );
    assert_rejected(
        &["--listen", "127.0.0.1:0", "--max-clients", "0"],
        "invalid max_clients 0 (--max-clients or max_clients under [listen])",
    );
    assert_rejected(
        &["--listen", "127.0.0.1:0", "--max-line-bytes", "0"],
        "invalid max_line_bytes 0 (--max-line-bytes",
    );
}

#[test]
fn serve_format_lists_only_socket_formats() {
    let help = run_veer_exact(&["serve", "--help"]);
    assert_eq!(help.status, 0, "{}", help.stderr);
    assert!(
        help.stdout
            .contains("[possible values: jsonl, taobao, rees46]"),
        "{}",
        help.stdout
    );
    assert!(!help.stdout.contains("retailrocket"), "{}", help.stdout);

    let run = run_veer_exact(&["serve", "--format", "retailrocket"]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("invalid value 'retailrocket'"),
        "{}",
        run.stderr
    );
}

#[test]
fn unused_options_rejected() {
    // Each option below would be ignored by a run of one process on an input file, without
    // a webhook or alert subscribers.
    let input = shared(CASE_ONE_SHIFT);
    let base = ["--input", arg(&input), "--alerts", "/dev/null"];
    let cases: [(&[&str], &str); 7] = [
        (
            &["--generate-users", "5"],
            "--generate-users sets the users of the built-in stream, but this run reads --input",
        ),
        (
            &["--horizon", "1d"],
            "--horizon sets the scoring horizon, but this run scores nothing; add --truth FILE",
        ),
        (
            &["--hostfile", "hosts.txt"],
            "--hostfile sets up a cluster run, but this run has one process",
        ),
        (
            &["--connect-timeout", "5s"],
            "--connect-timeout sets up a cluster run, but this run has one process",
        ),
        (
            &["--webhook-dead-letter", "webhook-dead.jsonl"],
            "--webhook-dead-letter sets the webhook sink, but this run has no webhook",
        ),
        (
            &["--webhook-timeout", "5s"],
            "--webhook-timeout sets the webhook sink, but this run has no webhook",
        ),
        (
            &["--subscriber-queue", "8"],
            "--subscriber-queue sets the alert subscribers, but this run accepts none",
        ),
    ];
    for (extra, expected) in cases {
        assert_rejected(&[&base[..], extra].concat(), expected);
    }
}

#[test]
fn horizon_accepted_when_scoring() {
    let input = shared(CASE_ONE_SHIFT);
    let truth = shared("cases/01-one-shift-one-alert/truth.jsonl");
    let with_truth = run_veer_exact(&[
        "run",
        "--no-progress",
        "--input",
        arg(&input),
        "--alerts",
        "/dev/null",
        "--truth",
        arg(&truth),
        "--horizon",
        "1d",
    ]);
    assert_eq!(with_truth.status, 0, "{}", with_truth.stderr);
    assert!(
        with_truth.stdout.contains("horizon (seconds)        86400"),
        "{}",
        with_truth.stdout
    );

    let built_in = run_veer_exact(&[
        "run",
        "--no-progress",
        "--generate-users",
        "20",
        "--horizon",
        "1d",
    ]);
    assert_eq!(built_in.status, 0, "{}", built_in.stderr);
    assert!(
        built_in.stdout.contains("horizon (seconds)        86400"),
        "{}",
        built_in.stdout
    );
}
