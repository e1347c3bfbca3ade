//! Summary counts of `veer serve`: lines sent on one connection are counted as a file run with
//! `--order arrival` counts the same lines.

mod common;
mod serving;

use serving::{case_file, connect_and_send, summary_count, Server};

const CASE: &str = "04-late-events-accounted";

/// Runs `veer ARGS` to its end and returns its standard error.
fn file_run_log(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(args)
        .output()
        .expect("veer runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn serve_counts_out_of_order_like_file() {
    let input = case_file(CASE, "input.jsonl");
    let bytes = std::fs::read(&input).unwrap();
    let file_log = file_run_log(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--order",
        "arrival",
        "--alerts",
        "/dev/null",
        "--no-progress",
    ]);
    let file_out_of_order = summary_count(&file_log, "out of order");
    assert!(
        file_out_of_order > 0,
        "the case input is out of order:\n{file_log}"
    );

    let args = ["serve", "--listen", "127.0.0.1:0", "--alerts", "/dev/null"];
    let mut server = Server::start(&args, 1);
    let client = connect_and_send(server.addresses[0], &bytes);
    drop(client);
    server.wait_for(|log| log.contains("connection closed"), 20);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(10);
    let log = server.log();
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        summary_count(&log, "lines read"),
        summary_count(&file_log, "lines read")
    );
    assert_eq!(summary_count(&log, "out of order"), file_out_of_order, "{log}");
}
