//! Cluster mode through the real binary: processes on loopback against a single process.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{arg, shared};

/// Maximum time one process of a test may run before it is killed and the test fails.
const PROCESS_LIMIT: Duration = Duration::from_secs(120);

/// Summary counts that process 0 must report for the whole cluster.
const TOTALS: [&str; 11] = [
    "lines read",
    "events",
    "duplicates",
    "late",
    "bad",
    "skipped",
    "out of order",
    "user states",
    "alerts",
    "interest_shift",
    "anomaly",
];

/// Returns the value of a count in a summary printed on standard error.
fn summary_count(stderr: &str, name: &str) -> u64 {
    for line in stderr.lines() {
        if let Some(rest) = line.trim_start().strip_prefix(name) {
            if let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse) {
                return value;
            }
        }
    }
    panic!("no `{name}` count in the summary:\n{stderr}")
}

/// Writes a hostfile of `processes` loopback addresses on ports that were free a moment ago.
fn loopback_hostfile(folder: &Path, processes: usize) -> PathBuf {
    let listeners: Vec<TcpListener> = (0..processes)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    let mut text = String::from("# one line per process\n");
    for listener in &listeners {
        let port = listener.local_addr().expect("bound address").port();
        text.push_str(&format!("127.0.0.1:{port}\n"));
    }
    drop(listeners);
    let path = folder.join("hosts.txt");
    std::fs::write(&path, text).expect("hostfile written");
    path
}

fn veer(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veer"));
    command
        .args(args)
        .env("VEER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a child, killing it after [`PROCESS_LIMIT`] so that a hang fails the test.
fn finish(mut child: Child, label: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("child status").is_none() {
        if started.elapsed() > PROCESS_LIMIT {
            let _ = child.kill();
            let output = child.wait_with_output().expect("killed child output");
            panic!(
                "{label} still ran after {PROCESS_LIMIT:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts every process of a cluster with one command line, differing only in `--process`,
/// and returns their outputs in process order.
fn run_cluster(args: &[&str], hostfile: &Path, processes: usize, workers: usize) -> Vec<Output> {
    let processes_text = processes.to_string();
    let workers_text = workers.to_string();
    // The highest index starts first, so the others find it listening or retry until it is.
    let mut children: Vec<(usize, Child)> = (0..processes)
        .rev()
        .map(|process| {
            let process_text = process.to_string();
            let mut all = vec!["run"];
            all.extend_from_slice(args);
            all.extend_from_slice(&[
                "--no-progress",
                "--workers",
                &workers_text,
                "--processes",
                &processes_text,
                "--process",
                &process_text,
                "--hostfile",
                arg(hostfile),
                "--connect-timeout",
                "60s",
            ]);
            (process, veer(&all).spawn().expect("veer starts"))
        })
        .collect();
    children.sort_by_key(|(process, _)| *process);
    children
        .into_iter()
        .map(|(process, child)| finish(child, &format!("process {process}")))
        .collect()
}

/// Starts process `process` of a 2-process cluster with `options` after the cluster options.
fn start_one_of_two(process: &str, hostfile: &Path, options: &[&str]) -> Child {
    let mut args = vec![
        "run",
        "--processes",
        "2",
        "--process",
        process,
        "--hostfile",
        arg(hostfile),
    ];
    args.extend_from_slice(options);
    veer(&args).spawn().expect("veer starts")
}

/// Runs `args` on one process with one worker and on 2 processes with 2 workers each, with
/// the alert and dead-letter paths in `folder`, and asserts identical outputs and totals.
fn assert_cluster_matches_single(args: &[&str], folder: &Path) {
    let single_alerts = folder.join("single-alerts.jsonl");
    let single_dead = folder.join("single-dead.jsonl");
    let mut single_args = vec!["run", "--no-progress"];
    single_args.extend_from_slice(args);
    single_args.extend_from_slice(&[
        "--alerts",
        arg(&single_alerts),
        "--dead-letter",
        arg(&single_dead),
    ]);
    let single = finish(veer(&single_args).spawn().expect("veer starts"), "single");
    let single_stderr = text(&single.stderr);
    assert!(single.status.success(), "single process: {single_stderr}");

    // Every process gets the same output paths: only process 0 may write them.
    let cluster_alerts = folder.join("cluster-alerts.jsonl");
    let cluster_dead = folder.join("cluster-dead.jsonl");
    let mut cluster_args = args.to_vec();
    cluster_args.extend_from_slice(&[
        "--alerts",
        arg(&cluster_alerts),
        "--dead-letter",
        arg(&cluster_dead),
    ]);
    let hostfile = loopback_hostfile(folder, 2);
    let outputs = run_cluster(&cluster_args, &hostfile, 2, 2);
    let first_stderr = text(&outputs[0].stderr);
    let second_stderr = text(&outputs[1].stderr);
    assert!(outputs[0].status.success(), "process 0: {first_stderr}");
    assert!(outputs[1].status.success(), "process 1: {second_stderr}");

    let single_bytes = std::fs::read(&single_alerts).expect("single-process alerts");
    let cluster_bytes = std::fs::read(&cluster_alerts).expect("cluster alerts");
    assert!(!single_bytes.is_empty(), "the input gives no alert");
    assert!(
        single_bytes == cluster_bytes,
        "alert bytes differ: {} lines on 1 process, {} on the cluster",
        single_bytes.split(|&byte| byte == b'\n').count(),
        cluster_bytes.split(|&byte| byte == b'\n').count()
    );
    assert_eq!(
        std::fs::read(&single_dead).expect("single-process dead letters"),
        std::fs::read(&cluster_dead).expect("cluster dead letters"),
        "dead-letter files differ"
    );
    assert_eq!(
        text(&single.stdout),
        text(&outputs[0].stdout),
        "standard output (the score) differs"
    );
    assert!(outputs[1].stdout.is_empty(), "process 1 wrote to stdout");

    for name in TOTALS {
        assert_eq!(
            summary_count(&first_stderr, name),
            summary_count(&single_stderr, name),
            "summary `{name}` of process 0 is not the single process's:\n{first_stderr}"
        );
    }
    assert_eq!(summary_count(&first_stderr, "workers"), 4);

    // Process 1 owns a share of the users and reports only that.
    assert!(
        second_stderr.contains("process 1 of 2"),
        "no part summary from process 1:\n{second_stderr}"
    );
    let own_users = summary_count(&second_stderr, "user states");
    let all_users = summary_count(&single_stderr, "user states");
    assert!(
        own_users > 0 && own_users < all_users,
        "process 1 owns {own_users} of {all_users} users"
    );
}

#[test]
fn generated_stream_2x2_matches_1x1() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let events = folder.path().join("events.jsonl");
    let truth = folder.path().join("truth.jsonl");
    let generated = veer(&[
        "generate",
        "--users",
        "1500",
        "--days",
        "9",
        "--seed",
        "23",
        "--shift-frac",
        "0.3",
        "--out",
        arg(&events),
        "--truth",
        arg(&truth),
    ])
    .output()
    .expect("veer generate runs");
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    // With --truth, process 0 scores the run, which needs every process's event times.
    assert_cluster_matches_single(
        &["--input", arg(&events), "--truth", arg(&truth)],
        folder.path(),
    );
}

#[test]
fn models_2x2_matches_1x1() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let events = folder.path().join("events.jsonl");
    let generated = veer(&[
        "generate",
        "--users",
        "800",
        "--days",
        "9",
        "--seed",
        "29",
        "--out",
        arg(&events),
        "--truth",
        arg(&folder.path().join("truth.jsonl")),
    ])
    .output()
    .expect("veer generate runs");
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    // Every process runs the model path; worker 0 fits the models and broadcasts them.
    assert_cluster_matches_single(&["--input", arg(&events), "--models"], folder.path());
}

#[test]
fn taobao_sample_2x2_matches_1x1() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let input = shared("data/taobao_ub_usersorted/UserBehavior.csv");
    assert_cluster_matches_single(&["--input", arg(&input)], folder.path());
}

#[test]
fn peer_that_never_connects_times_out() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let hostfile = loopback_hostfile(folder.path(), 2);
    for process in ["0", "1"] {
        let started = Instant::now();
        let child = start_one_of_two(process, &hostfile, &["--connect-timeout", "1s"]);
        let output = finish(child, "lone process");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "process {process}: {stderr}");
        assert!(stderr.contains("timed out after 1s"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "process {process} took {:?} to give up",
            started.elapsed()
        );
    }
}

#[test]
fn mismatched_workers_rejected_by_both() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let hostfile = loopback_hostfile(folder.path(), 2);
    let start = |process: &str, workers: &str| {
        start_one_of_two(
            process,
            &hostfile,
            &["--workers", workers, "--connect-timeout", "30s"],
        )
    };
    let second = start("1", "1");
    let first = start("0", "2");
    for (process, child) in [(0, first), (1, second)] {
        let output = finish(child, &format!("process {process}"));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "process {process}: {stderr}");
        assert!(stderr.contains("does not match this process"), "{stderr}");
        assert!(stderr.contains("--workers"), "{stderr}");
    }
}

#[test]
fn mismatched_dataflow_options_rejected_by_both() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let input = shared("cases/01-one-shift-one-alert/input.jsonl");
    let profiles = folder.path().join("profiles.jsonl");
    // Options given to one process only. Each changes the dataflow or the alerts of that
    // process's users, so the processes would hang or disagree if they ran.
    let cases: [(&[&str], &[&str]); 3] = [
        (&["--profiles", arg(&profiles)], &[]),
        (&[], &["--models"]),
        (&["--evict-after", "1h"], &[]),
    ];
    for (first_only, second_only) in cases {
        let hostfile = loopback_hostfile(folder.path(), 2);
        let start = |process: &str, only: &[&str]| {
            let mut options = vec!["--input", arg(&input), "--alerts", "-"];
            options.extend_from_slice(&["--connect-timeout", "30s"]);
            options.extend_from_slice(only);
            start_one_of_two(process, &hostfile, &options)
        };
        let second = start("1", second_only);
        let first = start("0", first_only);
        let label = format!("{first_only:?} on process 0, {second_only:?} on process 1");
        for (process, child) in [(0, first), (1, second)] {
            let output = finish(child, &format!("process {process}, {label}"));
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "process {process}, {label}: {stderr}");
            assert!(stderr.contains("does not match this process"), "{label}: {stderr}");
            assert!(stderr.contains("--profiles"), "{label}: {stderr}");
        }
    }
}

#[test]
fn invalid_cluster_options_rejected() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let hostfile = loopback_hostfile(folder.path(), 2);
    let short = folder.path().join("short.txt");
    std::fs::write(&short, "127.0.0.1:2101\n").unwrap();
    let no_port = folder.path().join("no-port.txt");
    std::fs::write(&no_port, "127.0.0.1:2101\n127.0.0.1\n").unwrap();
    let missing = folder.path().join("missing.txt");
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec![
                "--processes",
                "2",
                "--process",
                "2",
                "--hostfile",
                arg(&hostfile),
            ],
            "invalid --process 2: with --processes 2 the processes are numbered 0 to 1",
        ),
        (
            vec!["--processes", "2", "--hostfile", arg(&short)],
            "lists 1 addresses, but --processes is 2",
        ),
        (
            vec!["--processes", "2", "--hostfile", arg(&no_port)],
            "line 2: invalid address \"127.0.0.1\": expected host:port",
        ),
        (
            vec!["--processes", "2", "--hostfile", arg(&missing)],
            "cannot read hostfile",
        ),
        (vec!["--processes", "2"], "--processes 2 needs --hostfile"),
    ];
    for (options, expected) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(&options);
        let output = finish(veer(&args).spawn().expect("veer starts"), "invalid options");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{options:?}: {stderr}");
        assert!(stderr.contains(expected), "{options:?}: {stderr}");
    }
}

/// Writes a generated stream of 1,500 users over 9 days to `folder`, in time order.
fn generated_events(folder: &Path) -> PathBuf {
    let events = folder.join("events.jsonl");
    let generated = veer(&[
        "generate",
        "--users",
        "1500",
        "--days",
        "9",
        "--seed",
        "31",
        "--out",
        arg(&events),
        "--truth",
        arg(&folder.join("truth.jsonl")),
    ])
    .output()
    .expect("veer generate runs");
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    events
}

/// A 2-process cluster, 2 workers each, whose process 0 reads standard input in arrival order
/// and writes its alerts to `alerts`.
struct StreamingCluster {
    first: Child,
    second: Child,
    stdin: std::process::ChildStdin,
    hostfile: PathBuf,
}

impl StreamingCluster {
    fn start(folder: &Path, alerts: &Path) -> StreamingCluster {
        let hostfile = loopback_hostfile(folder, 2);
        let options = [
            "--no-progress",
            "--workers",
            "2",
            "--order",
            "arrival",
            "--input",
            "-",
            "--alerts",
            arg(alerts),
            "--connect-timeout",
            "60s",
        ];
        let second = start_one_of_two("1", &hostfile, &options);
        let mut args = vec!["run", "--processes", "2", "--process", "0"];
        args.extend_from_slice(&["--hostfile", arg(&hostfile)]);
        args.extend_from_slice(&options);
        let mut first = veer(&args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("veer starts");
        let stdin = first.stdin.take().expect("standard input is piped");
        StreamingCluster {
            first,
            second,
            stdin,
            hostfile,
        }
    }

    /// Returns the hostfile address of `process`.
    fn address(&self, process: usize) -> String {
        let text = std::fs::read_to_string(&self.hostfile).expect("hostfile");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .nth(process)
            .expect("an address per process")
            .to_string()
    }

    /// Sends the first half of `events`, kills process `killed` once process 0 has written an
    /// alert, and waits for the other process. Returns its output and the hostfile address
    /// of the killed process.
    fn kill_mid_run(mut self, killed: usize, events: &Path, alerts: &Path) -> (Output, String) {
        self.send_half_until_alert(events, alerts);
        let address = self.address(killed);
        let (mut victim, survivor) = match killed {
            0 => (self.first, self.second),
            _ => (self.second, self.first),
        };
        victim.kill().expect("the process is killed");
        victim.wait().expect("the killed process is reaped");
        // Standard input stays open, so process 0 must notice a loss while it waits for input.
        let output = finish(survivor, &format!("the process that lost process {killed}"));
        drop(self.stdin);
        (output, address)
    }

    /// Sends the first half of `events` and waits until process 0 has written an alert, so
    /// that the dataflow runs across both processes.
    fn send_half_until_alert(&mut self, events: &Path, alerts: &Path) {
        use std::io::Write;
        let text = std::fs::read_to_string(events).expect("events");
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[..lines.len() / 2] {
            writeln!(self.stdin, "{line}").expect("process 0 reads standard input");
        }
        self.stdin.flush().expect("standard input flushed");
        common::poll(
            PROCESS_LIMIT,
            Duration::from_millis(50),
            || match std::fs::metadata(alerts).map(|metadata| metadata.len()) {
                Ok(length) if length > 0 => Ok(()),
                _ => Err("process 0 has written no alert".to_string()),
            },
        );
    }
}

/// Asserts that a process that lost `peer` at `address` stopped with one error line naming
/// it, exit code 2, a cut-short summary, and no panic message.
fn assert_stopped_for_lost_peer(output: &Output, peer: usize, address: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic was printed:\n{stderr}"
    );
    assert!(
        !stderr.contains("MergeQueue"),
        "timely's message was printed:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "not one error line:\n{stderr}");
    let expected = format!("error: lost the connection to process {peer} at {address} (");
    assert!(errors[0].starts_with(&expected), "{stderr}");
    assert!(errors[0].contains("cut short"), "{stderr}");
    assert!(
        stderr.contains("cut short, no totals"),
        "no cut-short summary:\n{stderr}"
    );
}

#[test]
#[ignore = "fails in about 1 of 10 runs: timely 0.32 panics again while a worker unwinds after the loss (SendEndpoint::drop on a poisoned MergeQueue), which aborts the process; see README Limits"]
fn lost_process_one_stops_process_zero() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let events = generated_events(folder.path());
    let single_alerts = folder.path().join("single-alerts.jsonl");
    let single = veer(&["run", "--no-progress", "--order", "arrival"])
        .args(["--input", arg(&events), "--alerts", arg(&single_alerts)])
        .output()
        .expect("veer runs");
    assert!(single.status.success(), "{}", text(&single.stderr));

    let alerts = folder.path().join("alerts.jsonl");
    let cluster = StreamingCluster::start(folder.path(), &alerts);
    let (output, address) = cluster.kill_mid_run(1, &events, &alerts);
    assert_stopped_for_lost_peer(&output, 1, &address);

    // The alerts written before the loss are whole lines, flushed, and the start of the
    // alerts of an uninterrupted run.
    let written = std::fs::read(&alerts).expect("alerts of process 0");
    let complete = std::fs::read(&single_alerts).expect("alerts of the single process");
    assert!(!written.is_empty(), "no alert before the loss");
    assert!(written.ends_with(b"\n"), "the last alert line is torn");
    assert!(
        written.len() < complete.len(),
        "the cut-short run wrote every alert"
    );
    assert!(
        complete.starts_with(&written),
        "the alerts written are not the start of the uninterrupted run's"
    );
    let lines = written.iter().filter(|&&byte| byte == b'\n').count();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("delivered {lines}, lost 0")),
        "the summary does not count the {lines} alerts written:\n{stderr}"
    );
}

#[test]
#[ignore = "fails in about 1 of 10 runs: timely 0.32 panics again while a worker unwinds after the loss (SendEndpoint::drop on a poisoned MergeQueue), which aborts the process; see README Limits"]
fn lost_process_zero_stops_process_one() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let events = generated_events(folder.path());
    let alerts = folder.path().join("alerts.jsonl");
    let cluster = StreamingCluster::start(folder.path(), &alerts);
    let (output, address) = cluster.kill_mid_run(0, &events, &alerts);
    assert_stopped_for_lost_peer(&output, 0, &address);
}
