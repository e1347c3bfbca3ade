//! End-to-end runs of the real `veer` binary: determinism across workers, line accounting on
//! every shared sample, replay order, stdin and gzip input, scoring, and error messages.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{
    arg, generate_stream, run_veer, run_veer_exact, run_veer_with_stdin, run_veer_with_stdin_parts,
    score_line, shared, RunOutput,
};
use serde_json::Value;

const TAOBAO_USERSORTED: &str = "data/taobao_ub_usersorted/UserBehavior.csv";
const CASE_ONE_SHIFT: &str = "cases/01-one-shift-one-alert/input.jsonl";
const CASE_LATE_EVENTS: &str = "cases/04-late-events-accounted/input.jsonl";

/// Asserts `lines read = events + duplicates + late + bad + skipped`, and that the dead-letter
/// file has one record per bad or late line.
fn assert_every_line_accounted(run: &RunOutput, label: &str) {
    let lines = run.summary_count("lines read");
    let events = run.summary_count("events");
    let duplicates = run.summary_count("duplicates");
    let late = run.summary_count("late");
    let bad = run.summary_count("bad");
    let skipped = run.summary_count("skipped");
    assert_eq!(
        lines,
        events + duplicates + late + bad + skipped,
        "{label}: lines {lines} != events {events} + duplicates {duplicates} + late {late} \
         + bad {bad} + skipped {skipped}"
    );
    assert_eq!(
        run.dead_letter.len() as u64,
        bad + late,
        "{label}: dead-letter records != bad + late"
    );
}

/// Returns the user id as written in an alert id: a string id without quotes, a number as printed.
fn user_in_alert_id(user: &Value) -> String {
    match user.as_str() {
        Some(text) => text.to_string(),
        None => user.to_string(),
    }
}

/// Asserts that an alert has every field the data contract requires, with valid values.
fn assert_alert_follows_contract(alert: &Value) {
    let object = alert
        .as_object()
        .unwrap_or_else(|| panic!("alert is not a JSON object: {alert}"));
    for field in [
        "alert_id", "user", "kind", "ts", "onset_ts", "score", "severity", "from", "to", "signals",
    ] {
        assert!(object.contains_key(field), "alert lacks `{field}`: {alert}");
    }

    let kind = alert["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("kind is not a string: {alert}"));
    assert!(
        ["interest_shift", "anomaly"].contains(&kind),
        "unknown kind {kind}: {alert}"
    );
    let ts = alert["ts"]
        .as_i64()
        .unwrap_or_else(|| panic!("ts is not an integer: {alert}"));
    let onset_ts = alert["onset_ts"]
        .as_i64()
        .unwrap_or_else(|| panic!("onset_ts is not an integer: {alert}"));
    assert!(onset_ts <= ts, "onset_ts {onset_ts} after ts {ts}: {alert}");

    let score = alert["score"]
        .as_f64()
        .unwrap_or_else(|| panic!("score is not a number: {alert}"));
    assert!(
        (0.0..=1.0).contains(&score),
        "score {score} outside 0..1: {alert}"
    );
    let severity = alert["severity"]
        .as_str()
        .unwrap_or_else(|| panic!("severity is not a string: {alert}"));
    assert!(
        ["low", "medium", "high"].contains(&severity),
        "unknown severity {severity}: {alert}"
    );

    for side in ["from", "to"] {
        let shares = alert[side]
            .as_array()
            .unwrap_or_else(|| panic!("`{side}` is not an array: {alert}"));
        for share in shares {
            assert!(
                share.get("category").is_some(),
                "`{side}` entry without category: {alert}"
            );
            assert!(
                share["share"].is_number(),
                "`{side}` entry without a numeric share: {alert}"
            );
        }
    }
    assert!(
        alert["signals"].is_object(),
        "signals is not an object: {alert}"
    );

    let expected_id = format!("{}-{ts}-{kind}", user_in_alert_id(&alert["user"]));
    assert_eq!(
        alert["alert_id"],
        expected_id.as_str(),
        "alert_id is not user-ts-kind: {alert}"
    );
}

/// Runs `input` with each worker count and asserts identical, non-empty alert bytes and
/// identical summary counts.
fn assert_same_output_for_workers(input: &Path, workers: &[&str]) {
    let reference = run_veer(&["--input", arg(input), "--workers", workers[0]]);
    assert_eq!(
        reference.status, 0,
        "workers {}: {}",
        workers[0], reference.stderr
    );
    assert!(
        !reference.alerts_text.is_empty(),
        "no alert from {}",
        input.display()
    );
    for &count in &workers[1..] {
        let run = run_veer(&["--input", arg(input), "--workers", count]);
        assert_eq!(run.status, 0, "workers {count}: {}", run.stderr);
        assert!(
            run.alerts_text == reference.alerts_text,
            "alert bytes differ between {} and {count} workers on {}",
            workers[0],
            input.display()
        );
        assert_eq!(
            run.summary_without_timing(),
            reference.summary_without_timing(),
            "summary differs between {} and {count} workers",
            workers[0]
        );
        assert_eq!(
            run.summary_count("workers").to_string(),
            count,
            "the summary names the worker count"
        );
    }
}

#[test]
fn generated_stream_same_for_any_workers() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _truth) = generate_stream(folder.path(), 600, 9, 3);
    assert_same_output_for_workers(&events, &["1", "2", "4"]);
}

#[test]
fn taobao_sample_same_for_any_workers() {
    assert_same_output_for_workers(&shared(TAOBAO_USERSORTED), &["1", "2"]);
}

#[test]
fn every_sample_accounts_for_every_line() {
    let samples: [(&str, &[&str]); 11] = [
        (TAOBAO_USERSORTED, &[]),
        ("data/taobao_ub_timesorted/UserBehavior.csv", &[]),
        ("data/taobao_ub_subsample_crlf/UserBehavior.csv", &[]),
        ("data/rees46_2019oct/2019-Oct.csv", &[]),
        ("data/retailrocket_events_sample/events.csv", &[]),
        (CASE_ONE_SHIFT, &[]),
        (CASE_LATE_EVENTS, &[]),
        (
            "cases/07-retailrocket-bom-crlf/events.csv",
            &["--format", "retailrocket"],
        ),
        ("cases/08-taobao-malformed-lines/input.csv", &[]),
        ("cases/09-json-ids-and-shapes/input.jsonl", &[]),
        ("cases/12-rees46-duplicate-rows/input.csv", &[]),
    ];
    for (relative, options) in samples {
        let input = shared(relative);
        let mut args = vec!["--input", arg(&input)];
        args.extend_from_slice(options);
        let run = run_veer(&args);
        assert_eq!(run.status, 0, "{relative}: {}", run.stderr);
        assert!(
            run.summary_count("lines read") > 0,
            "{relative}: no line read"
        );
        assert_every_line_accounted(&run, relative);
    }
}

#[test]
fn taobao_sample_end_to_end() {
    let run = run_veer(&["--input", arg(&shared(TAOBAO_USERSORTED))]);
    assert_eq!(run.status, 0, "{}", run.stderr);

    let order_line = run
        .stderr
        .lines()
        .find(|line| line.starts_with("out of order"))
        .unwrap_or_else(|| panic!("no `out of order` line:\n{}", run.stderr));
    assert!(
        order_line.contains("sorted by event time"),
        "a file grouped by user must be replayed sorted: {order_line}"
    );
    assert_eq!(run.summary_count("out of order"), 84_392);

    assert_eq!(run.summary_count("bad"), 1);
    assert_eq!(
        run.dead_lines("bad"),
        vec![84_476],
        "the truncated last line is the bad one"
    );
    assert_eq!(run.summary_count("late"), 0);
    // 815 distinct users; two of them are idle for more than the default eviction time of 7
    // days and come back, so they are counted again.
    assert_eq!(run.summary_count("user states"), 817);
    assert_eq!(run.summary_count("evicted"), 2);
    assert_every_line_accounted(&run, TAOBAO_USERSORTED);

    let shifts = run
        .alerts
        .iter()
        .filter(|alert| alert["kind"] == "interest_shift")
        .count();
    assert!(shifts >= 1, "no interest_shift alert on the Taobao sample");
    assert_eq!(
        run.summary_count("interest_shift"),
        shifts as u64,
        "summary and alert file disagree"
    );
    assert_eq!(
        run.summary_count("alerts"),
        run.alerts.len() as u64,
        "summary and alert file disagree"
    );
    for alert in &run.alerts {
        assert_alert_follows_contract(alert);
    }
}

#[test]
fn generated_alerts_follow_contract() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _truth) = generate_stream(folder.path(), 300, 9, 5);
    let run = run_veer(&["--input", arg(&events)]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(!run.alerts.is_empty(), "no alert on the generated stream");
    for alert in &run.alerts {
        assert_alert_follows_contract(alert);
    }
}

#[test]
fn order_flag_decides_late_events() {
    let input = shared(CASE_LATE_EVENTS);

    let by_time = run_veer(&["--input", arg(&input), "--order", "event-time"]);
    assert_eq!(by_time.status, 0, "{}", by_time.stderr);
    assert_eq!(
        by_time.summary_count("late"),
        0,
        "a sorted replay has no late event"
    );
    assert!(
        by_time.dead_letter.is_empty(),
        "dead letters: {:?}",
        by_time.dead_letter
    );
    assert_every_line_accounted(&by_time, "--order event-time");

    let by_arrival = run_veer(&["--input", arg(&input), "--order", "arrival"]);
    assert_eq!(by_arrival.status, 0, "{}", by_arrival.stderr);
    assert_eq!(by_arrival.summary_count("late"), 4);
    assert_eq!(by_arrival.dead_lines("late"), vec![175, 191, 208, 224]);
    assert_every_line_accounted(&by_arrival, "--order arrival");
}

#[test]
fn taobao_in_arrival_order_is_mostly_late() {
    let run = run_veer(&[
        "--input",
        arg(&shared(TAOBAO_USERSORTED)),
        "--order",
        "arrival",
    ]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let late = run.summary_count("late");
    assert!(
        late > 80_000,
        "only {late} late events in a file grouped by user"
    );
    let order_line = run
        .stderr
        .lines()
        .find(|line| line.starts_with("out of order"))
        .expect("an `out of order` line");
    assert!(order_line.contains("arrival order"), "{order_line}");
    assert_every_line_accounted(&run, "--order arrival");
}

/// Returns `bytes` compressed as one gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

#[test]
fn stdin_and_gzip_give_same_alerts() {
    let input = shared(CASE_ONE_SHIFT);
    let plain = std::fs::read(&input).expect("case input is readable");
    let from_file = run_veer(&["--input", arg(&input)]);
    assert_eq!(from_file.status, 0, "{}", from_file.stderr);
    assert!(!from_file.alerts_text.is_empty(), "no alert from the file");

    let from_stdin = run_veer_with_stdin(&["--input", "-"], &plain);
    assert_eq!(from_stdin.status, 0, "{}", from_stdin.stderr);
    assert_eq!(from_stdin.alerts_text, from_file.alerts_text, "stdin");
    assert_eq!(
        from_stdin.summary_count("lines read"),
        from_file.summary_count("lines read")
    );

    // The `.jsonl` name hides the compression, so only the magic bytes can reveal it.
    let folder = tempfile::tempdir().expect("temporary folder");
    let compressed_path = folder.path().join("input.jsonl");
    let compressed = gzip(&plain);
    std::fs::write(&compressed_path, &compressed).expect("write the gzip copy");
    let from_gzip = run_veer(&["--input", arg(&compressed_path)]);
    assert_eq!(from_gzip.status, 0, "{}", from_gzip.stderr);
    assert_eq!(from_gzip.alerts_text, from_file.alerts_text, "gzip file");
    assert_eq!(from_gzip.summary_count("bad"), 0);

    let from_gzip_stdin = run_veer_with_stdin(&["--input", "-"], &compressed);
    assert_eq!(from_gzip_stdin.status, 0, "{}", from_gzip_stdin.stderr);
    assert_eq!(
        from_gzip_stdin.alerts_text, from_file.alerts_text,
        "gzip on stdin"
    );
}

#[test]
fn pipe_path_input_keeps_first_bytes() {
    // `/dev/stdin` is the child's standard input pipe, read through its path as
    // `<(zcat …)` or a named pipe would be. No probe may take bytes from it before the reader.
    let input = shared(CASE_ONE_SHIFT);
    let plain = std::fs::read(&input).expect("case input is readable");
    let from_file = run_veer(&["--input", arg(&input)]);
    assert_eq!(from_file.status, 0, "{}", from_file.stderr);

    for format in [None, Some("jsonl")] {
        let mut args = vec!["--input", "/dev/stdin"];
        args.extend(format.iter().flat_map(|format| ["--format", *format]));
        let from_pipe = run_veer_with_stdin(&args, &plain);
        assert_eq!(from_pipe.status, 0, "{args:?}: {}", from_pipe.stderr);
        assert_eq!(from_pipe.dead_lines("bad"), Vec::<u64>::new(), "{args:?}");
        assert_eq!(
            from_pipe.summary_count("events"),
            from_file.summary_count("events"),
            "{args:?}"
        );
        assert_eq!(from_pipe.alerts_text, from_file.alerts_text, "{args:?}");
    }
}

#[test]
fn eval_agrees_with_run_truth() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, truth) = generate_stream(folder.path(), 400, 9, 11);
    let alerts = folder.path().join("alerts.jsonl");

    let run = run_veer_exact(&[
        "run",
        "--input",
        arg(&events),
        "--alerts",
        arg(&alerts),
        "--truth",
        arg(&truth),
        "--no-progress",
    ]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let run_score = score_line(&run.stdout);

    let eval = run_veer_exact(&[
        "eval",
        "--truth",
        arg(&truth),
        "--alerts",
        arg(&alerts),
        "--events",
        arg(&events),
    ]);
    assert_eq!(eval.status, 0, "{}", eval.stderr);
    let eval_score = score_line(&eval.stdout);

    assert_eq!(
        eval_score, run_score,
        "veer eval and veer run --truth score the same alerts differently"
    );
    let alert_text = std::fs::read_to_string(&alerts).expect("alert file");
    let shift_alerts = alert_text
        .lines()
        .filter(|line| line.contains("\"kind\":\"interest_shift\""))
        .count();
    assert!(
        shift_alerts > 0,
        "no interest_shift alert, so the comparison proves little"
    );
    assert_eq!(
        run_score["alerts"], shift_alerts,
        "the score counts the interest_shift alerts of the file"
    );
}

#[test]
fn default_run_scores_generated_stream() {
    let run = run_veer_exact(&["run"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let score = score_line(&run.stdout);
    let f1 = score["f1"]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric f1 in {score}"));
    assert!(f1 > 0.0, "F1 {f1} on the built-in stream: {score}");
    assert!(
        score["shifts"].as_u64().unwrap_or(0) > 0,
        "the built-in stream plants shifts: {score}"
    );
}

#[test]
fn missing_input_names_path() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let missing = folder.path().join("no-such-events.jsonl");
    let run = run_veer(&["--input", arg(&missing)]);
    assert_ne!(run.status, 0, "a missing input must fail the run");
    assert!(
        run.stderr.contains(arg(&missing)),
        "the error does not name the path:\n{}",
        run.stderr
    );
}

#[test]
fn zero_workers_rejected() {
    let run = run_veer(&["--input", arg(&shared(CASE_ONE_SHIFT)), "--workers", "0"]);
    assert_ne!(run.status, 0, "--workers 0 must be rejected");
    assert!(
        run.stderr.contains("--workers 0"),
        "the error does not name the option:\n{}",
        run.stderr
    );
}

#[test]
fn too_many_workers_rejected() {
    // 1,025 is the first count rejected. Without the limit it would still start, taking an
    // estimated 6 GB, while 100,000 workers ran until the kernel killed the run for memory.
    let started = std::time::Instant::now();
    let run = run_veer(&["--input", arg(&shared(CASE_ONE_SHIFT)), "--workers", "1025"]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--workers 1025"),
        "the error does not name the value:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("at most 1024"),
        "the error does not give the limit:\n{}",
        run.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the count is rejected before any worker starts: {:?}",
        started.elapsed()
    );
}

#[test]
fn unknown_format_rejected() {
    let run = run_veer(&["--input", arg(&shared(CASE_ONE_SHIFT)), "--format", "xml"]);
    assert_eq!(
        run.status, 2,
        "clap exits with 2 on an invalid value:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("'xml'"), "{}", run.stderr);
    assert!(run.stderr.contains("--format"), "{}", run.stderr);
    assert!(
        run.stderr.contains("retailrocket"),
        "the error lists the valid formats:\n{}",
        run.stderr
    );
}

#[test]
fn unknown_config_key_names_file() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = folder.path().join("veer-typo.toml");
    std::fs::write(
        &config,
        "[time]\nout_of_orderness = \"10m\"\nout_of_ordernes = \"5m\"\n",
    )
    .expect("write config");
    let run = run_veer(&[
        "--input",
        arg(&shared(CASE_ONE_SHIFT)),
        "--config",
        arg(&config),
    ]);
    assert_ne!(run.status, 0, "an unknown config key must be rejected");
    assert!(
        run.stderr.contains(arg(&config)),
        "the error does not name the file:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("out_of_ordernes"),
        "the error does not name the key:\n{}",
        run.stderr
    );
}

#[test]
fn zero_idle_timeout_in_config_rejected() {
    // A run without --listen reads no TCP input, but the file's value is still checked.
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = folder.path().join("veer-idle.toml");
    std::fs::write(&config, "[time]\nidle_timeout = \"0s\"\n").expect("write config");
    let run = run_veer(&[
        "--input",
        arg(&shared(CASE_ONE_SHIFT)),
        "--config",
        arg(&config),
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(arg(&config)),
        "the error does not name the file:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("invalid [time] idle_timeout = \"0s\": expected a positive duration"),
        "the error does not name the key:\n{}",
        run.stderr
    );
    assert!(run.alerts.is_empty(), "the run must not start");
}

#[test]
fn retailrocket_without_properties_warns() {
    let run = run_veer(&[
        "--input",
        arg(&shared("data/retailrocket_events_sample/events.csv")),
    ]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let warnings = run
        .stderr
        .lines()
        .filter(|line| line.contains("--item-properties"))
        .count();
    assert_eq!(
        warnings, 1,
        "expected one warning naming --item-properties:\n{}",
        run.stderr
    );
    assert!(
        run.summary_count("events") > 0,
        "events without a category still run by item id"
    );
}

#[test]
fn veer_beats_baseline_f1() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, truth) = generate_stream(folder.path(), 600, 9, 3);
    let f1_of = |detector: &str| -> f64 {
        let run = run_veer(&[
            "--input",
            arg(&events),
            "--truth",
            arg(&truth),
            "--detector",
            detector,
        ]);
        assert_eq!(run.status, 0, "--detector {detector}: {}", run.stderr);
        let score = score_line(&run.stdout);
        score["f1"]
            .as_f64()
            .unwrap_or_else(|| panic!("no numeric f1 for {detector}: {score}"))
    };
    let shift_f1 = f1_of("shift");
    let baseline_f1 = f1_of("baseline");
    assert!(
        shift_f1 >= 1.5 * baseline_f1,
        "veer F1 {shift_f1:.4} is below 1.5 x baseline F1 {baseline_f1:.4}"
    );
}

/// An empty input must give an empty run that exits 0, not a format error, because it has
/// nothing to detect.
#[test]
fn empty_input_gives_empty_run() {
    let input = shared("cases/13-degenerate-model-inputs/input-empty.jsonl");
    let run = run_veer(&["--input", arg(&input)]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("lines read"), 0);
    assert_eq!(run.summary_count("events"), 0);
    assert!(run.alerts_text.is_empty(), "{}", run.alerts_text);

    let from_stdin = run_veer_with_stdin(&["--input", "-"], b"");
    assert_eq!(from_stdin.status, 0, "{}", from_stdin.stderr);
    assert_eq!(from_stdin.summary_count("events"), 0);
}

/// An input of blank lines (and a byte order mark) contains no record to detect a format from,
/// so it runs like an empty input and counts its lines as skipped.
#[test]
fn blank_lines_only_input_runs_empty() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("blank.csv");
    std::fs::write(&path, b"\xEF\xBB\xBF\r\n\n  \n").unwrap();
    for run in [
        run_veer(&["--input", arg(&path)]),
        run_veer_with_stdin(&["--input", "-"], &std::fs::read(&path).unwrap()),
    ] {
        assert_eq!(run.status, 0, "{}", run.stderr);
        assert_eq!(run.summary_count("lines read"), 3);
        assert_eq!(run.summary_count("skipped"), 3);
        assert_eq!(run.summary_count("bad"), 0);
        assert!(run.alerts_text.is_empty(), "{}", run.alerts_text);
    }
}

/// A pipe whose first read ends inside the first line, or contains only a blank line, must not
/// fail format detection: the format is detected from the first complete line.
#[test]
fn stdin_format_detected_from_whole_line() {
    let sample = std::fs::read_to_string(shared(TAOBAO_USERSORTED)).unwrap();
    let head: String = sample
        .lines()
        .take(300)
        .map(|line| format!("{line}\n"))
        .collect();
    // The reader gets only the first part from its first read when the rest comes this much later.
    let pause = std::time::Duration::from_millis(500);
    for (first, rest) in [(&head[..10], &head[10..]), ("\n", &head[..])] {
        let parts = [first.as_bytes(), rest.as_bytes()];
        let run = run_veer_with_stdin_parts(&["--input", "-"], &parts, pause);
        assert_eq!(run.status, 0, "first read {first:?}: {}", run.stderr);
        assert_eq!(run.summary_count("events"), 300, "first read {first:?}");
        assert_eq!(run.summary_count("bad"), 0, "first read {first:?}");
    }
}

/// Scoring a run read from stdin must use the events of that run, because stdin cannot be
/// read a second time.
#[test]
fn stdin_truth_scores_like_file() {
    let input = shared(CASE_ONE_SHIFT);
    let truth = shared("cases/01-one-shift-one-alert/truth.jsonl");
    let from_file = run_veer(&["--input", arg(&input), "--truth", arg(&truth)]);
    assert_eq!(from_file.status, 0, "{}", from_file.stderr);

    let plain = std::fs::read(&input).expect("case input is readable");
    let detected = run_veer_with_stdin(&["--input", "-", "--truth", arg(&truth)], &plain);
    assert_eq!(detected.status, 0, "format detected: {}", detected.stderr);
    assert_eq!(
        score_line(&detected.stdout),
        score_line(&from_file.stdout),
        "format detected"
    );

    let named = run_veer_with_stdin(
        &["--input", "-", "--format", "jsonl", "--truth", arg(&truth)],
        &plain,
    );
    assert_eq!(named.status, 0, "--format jsonl: {}", named.stderr);
    assert_eq!(
        score_line(&named.stdout),
        score_line(&from_file.stdout),
        "--format jsonl"
    );
}

#[test]
fn output_over_input_rejected() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let input = folder.path().join("input.jsonl");
    std::fs::copy(shared(CASE_ONE_SHIFT), &input).expect("copy the case");
    let size = std::fs::metadata(&input).expect("input exists").len();

    let run = run_veer_exact(&["run", "--input", arg(&input), "--alerts", arg(&input)]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is also an input"), "{}", run.stderr);
    assert_eq!(
        std::fs::metadata(&input).expect("input exists").len(),
        size,
        "input kept"
    );

    let output = folder.path().join("out.jsonl");
    let same = run_veer_exact(&[
        "run",
        "--input",
        arg(&input),
        "--alerts",
        arg(&output),
        "--dead-letter",
        arg(&output),
    ]);
    assert_eq!(same.status, 2, "{}", same.stderr);
    assert!(same.stderr.contains("are the same file"), "{}", same.stderr);
}

/// Runs the `veer` binary with `args` in `folder`, with warnings logged.
fn run_in_folder(folder: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(args)
        .current_dir(folder)
        .env("VEER_LOG", "warn")
        .output()
        .expect("the veer binary runs")
}

#[test]
fn empty_paths_rejected() {
    // Each case is a command with its other required options, and the path option that gets
    // an empty value after them.
    let explain: &[&str] = &["explain", "--user", "1", "--input", "e.jsonl"];
    let report: &[&str] = &["report", "--alerts", "a.jsonl"];
    let eval: &[&str] = &["eval", "--truth", "t.jsonl", "--alerts", "a.jsonl"];
    let cases: [(&[&str], &str); 38] = [
        (&["run"], "input"),
        (&["run", "--input", "e.jsonl"], "input"),
        (&["run"], "alerts"),
        (&["run"], "dead-letter"),
        (&["run"], "config"),
        (&["run"], "truth"),
        (&["run"], "checkpoint-dir"),
        (&["run"], "resume"),
        (&["run"], "users"),
        (&["run"], "profiles"),
        (&["run"], "models-save"),
        (&["run"], "models-load"),
        (&["run"], "item-properties"),
        (&["run"], "category-tree"),
        (&["run"], "hostfile"),
        (&["run"], "webhook-dead-letter"),
        (&["serve"], "alerts"),
        (&["serve"], "dead-letter"),
        (&["serve"], "config"),
        (&["serve"], "users"),
        (&["serve"], "profiles"),
        (&["generate", "--truth", "t.jsonl"], "out"),
        (&["generate", "--out", "e.jsonl"], "truth"),
        (&["eval", "--alerts", "a.jsonl"], "truth"),
        (&["eval", "--truth", "t.jsonl"], "alerts"),
        (eval, "events"),
        (eval, "baseline"),
        (&["stats"], "input"),
        (&["scan"], "input"),
        (&["explain", "--user", "1"], "input"),
        (explain, "alerts"),
        (explain, "out"),
        (explain, "config"),
        (&["report"], "alerts"),
        (report, "events"),
        (report, "truth"),
        (report, "out"),
        (report, "config"),
    ];
    // The commands start in an empty folder, so that no case can read or write a real file.
    let folder = tempfile::tempdir().expect("temporary folder");
    for (command, option) in cases {
        let flag = format!("--{option}");
        let mut args = command.to_vec();
        args.extend([flag.as_str(), ""]);
        let output = run_in_folder(folder.path(), &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("a value is required for '{flag} ")),
            "{args:?}: the error does not name {flag}:\n{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn stats_input_error_prints_nothing() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let unknown = folder.path().join("notes.txt");
    std::fs::write(&unknown, "hello world\nfoo bar\n").expect("write the input");
    let missing = folder.path().join("no-such-events.jsonl");
    let good = shared(CASE_ONE_SHIFT);
    let cases = [
        (vec![arg(&unknown)], "cannot detect the format of", &unknown),
        (
            vec![arg(&good), "--input", arg(&unknown)],
            "cannot detect the format of",
            &unknown,
        ),
        (vec![arg(&missing)], "cannot open", &missing),
    ];
    for (inputs, expected, failed) in cases {
        let mut args = vec!["stats", "--input"];
        args.extend(inputs);
        let run = run_veer_exact(&args);
        // 2 is the exit code of every input error, such as a missing file.
        assert_eq!(run.status, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: stdout:\n{}", run.stdout);
        let error = format!("{expected} {}", arg(failed));
        assert!(run.stderr.contains(&error), "{args:?}: {}", run.stderr);
    }
    let good_run = run_veer_exact(&["stats", "--input", arg(&good)]);
    assert_eq!(good_run.status, 0, "{}", good_run.stderr);
    assert!(
        good_run.stdout.starts_with("| stream |"),
        "{}",
        good_run.stdout
    );
    assert_eq!(
        good_run.stdout.lines().count(),
        3,
        "header, rule and one row"
    );
}

#[test]
fn stats_drop_duplicate_rows() {
    // In input.csv every row of one user appears two or three times. input-dedup.csv has
    // each row once.
    let columns_after_name = |relative: &str| {
        let path = shared(relative);
        let run = run_veer_exact(&["stats", "--input", arg(&path)]);
        assert_eq!(run.status, 0, "{relative}: {}", run.stderr);
        let row = run.stdout.lines().nth(2).expect("a row after the header");
        row.split('|').skip(2).map(str::to_string).collect::<Vec<_>>()
    };
    let with_copies = columns_after_name("cases/12-rees46-duplicate-rows/input.csv");
    let without = columns_after_name("cases/12-rees46-duplicate-rows/input-dedup.csv");
    assert_eq!(with_copies[1].trim(), "215", "events of input.csv");
    assert_eq!(with_copies, without, "statistics differ");
}

#[test]
fn dash_for_file_outputs_rejected() {
    // The runs start in an empty folder, so a file named `-` would show there.
    let folder = tempfile::tempdir().expect("temporary folder");
    let input = shared(CASE_ONE_SHIFT);
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "dead-letter",
            vec!["run", "--input", arg(&input), "--dead-letter", "-"],
        ),
        (
            "profiles",
            vec!["run", "--input", arg(&input), "--profiles", "-"],
        ),
        (
            "out",
            vec![
                "generate", "--users", "50", "--days", "5", "--out", "-", "--truth", "t.jsonl",
            ],
        ),
        (
            "truth",
            vec![
                "generate", "--users", "50", "--days", "5", "--out", "e.jsonl", "--truth", "-",
            ],
        ),
    ];
    for (name, args) in cases {
        let output = run_in_folder(folder.path(), &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--{name}: {stderr}");
        assert!(stderr.contains(&format!("invalid --{name} -")), "{stderr}");
        assert!(
            !folder.path().join("-").exists(),
            "--{name} created a file named -"
        );
    }
}

#[test]
fn tiny_window_rejected() {
    let run = run_veer_exact(&[
        "run",
        "--input",
        arg(&shared(CASE_ONE_SHIFT)),
        "--window",
        "0s",
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("at least 1m"), "{}", run.stderr);
    assert!(
        run.stderr.contains("invalid window 0s"),
        "the error does not repeat the value as written:\n{}",
        run.stderr
    );
}

/// Writes `lines` Taobao rows (`user,item,category,behavior,ts`) to a file in `folder`.
fn write_taobao_rows(folder: &Path, lines: usize) -> std::path::PathBuf {
    let path = folder.join("events.csv");
    let mut file = std::fs::File::create(&path).expect("create the events file");
    for line in 0..lines {
        let user = line % 7 + 1;
        let ts = 1_511_544_070 + line;
        writeln!(file, "{user},{},{},pv,{ts}", 1000 + line, 50 + line % 3).expect("write a row");
    }
    path
}

#[test]
fn wrong_format_warns_at_end() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let csv = write_taobao_rows(folder.path(), 20);
    let run = run_veer(&["--input", arg(&csv), "--format", "jsonl"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("bad"), 20, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("20 of 20 lines are bad records as jsonl"),
        "no warning with the bad share and the format:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("check --format"),
        "the warning does not point at --format:\n{}",
        run.stderr
    );
    assert_eq!(run.dead_letter.len(), 20, "every bad line is dead-lettered");
}

#[test]
fn detected_format_gets_own_advice() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let csv = write_taobao_rows(folder.path(), 1);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&csv)
        .expect("open the events file");
    for _ in 0..20 {
        writeln!(file, "not,a,taobao,row,x").expect("append a bad row");
    }
    drop(file);

    let run = run_veer(&["--input", arg(&csv)]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("bad"), 20, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("20 of 21 lines are bad records as taobao"),
        "no warning with the bad share and the format:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("the format was detected from the first lines"),
        "the warning does not say the format was detected:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("omit it"),
        "the warning tells to omit a --format that was not given:\n{}",
        run.stderr
    );
}

#[test]
fn wrong_format_warns_early() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let csv = write_taobao_rows(folder.path(), 1_500);
    let run = run_veer(&["--input", arg(&csv), "--format", "jsonl"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the first 1000 lines are all bad records as jsonl"),
        "no early warning:\n{}",
        run.stderr
    );
}

#[test]
fn right_format_does_not_warn() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let csv = write_taobao_rows(folder.path(), 1_500);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&csv)
        .expect("open the events file");
    writeln!(file, "1,2,3,pv").expect("append a short row");
    drop(file);

    let run = run_veer(&["--input", arg(&csv), "--format", "taobao"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("bad"), 1, "{}", run.stderr);
    assert!(
        !run.stderr.contains("check --format"),
        "one bad line in 1,501 must not warn about the format:\n{}",
        run.stderr
    );
}

#[test]
fn eval_rejects_zero_horizon() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let alerts = folder.path().join("alerts.jsonl");
    let truth = shared("cases/01-one-shift-one-alert/truth.jsonl");
    std::fs::write(&alerts, "").expect("write the alerts file");
    let eval_with = |horizon: &str| {
        let horizon_option = format!("--horizon={horizon}");
        run_veer_exact(&[
            "eval",
            "--alerts",
            arg(&alerts),
            "--truth",
            arg(&truth),
            &horizon_option,
        ])
    };

    for horizon in ["0s", "0", "500ms"] {
        let run = eval_with(horizon);
        assert_ne!(run.status, 0, "--horizon {horizon} must fail");
        assert!(
            run.stderr
                .contains(&format!("invalid --horizon {horizon:?}")),
            "--horizon {horizon}: the error does not name the value:\n{}",
            run.stderr
        );
    }

    let negative = eval_with("-1d");
    assert_ne!(negative.status, 0, "a negative horizon must fail");
    assert!(
        negative.stderr.contains("--horizon"),
        "the error does not name --horizon:\n{}",
        negative.stderr
    );

    let one_second = eval_with("1s");
    assert_eq!(one_second.status, 0, "{}", one_second.stderr);
}

/// A dead-letter file that cannot be written fails the run with one error naming the file,
/// instead of an error line per record and exit code 0 (found with `--dead-letter /dev/full`).
#[test]
fn unwritable_dead_letter_fails_run() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: this system has no /dev/full");
        return;
    }
    let folder = tempfile::tempdir().expect("temporary folder");
    let csv = write_taobao_rows(folder.path(), 1_500);
    let alerts = folder.path().join("alerts.jsonl");
    let run = run_veer_exact(&[
        "run",
        "--input",
        arg(&csv),
        "--format",
        "jsonl",
        "--alerts",
        arg(&alerts),
        "--dead-letter",
        "/dev/full",
        "--no-progress",
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the dead-letter file /dev/full could not be written"),
        "no error naming the dead-letter file:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .matches("cannot write the dead-letter file")
            .count(),
        1,
        "the write error is not logged exactly once:\n{}",
        run.stderr
    );
}

/// A profile file that cannot be written is logged once and fails the run with an error that
/// names the file and counts the lines lost.
#[test]
fn unwritable_profile_file_fails_run() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: this system has no /dev/full");
        return;
    }
    let folder = tempfile::tempdir().expect("temporary folder");
    let alerts = folder.path().join("alerts.jsonl");
    let run = run_veer_exact(&[
        "run",
        "--input",
        arg(&shared(CASE_ONE_SHIFT)),
        "--alerts",
        arg(&alerts),
        "--profiles",
        "/dev/full",
        "--no-progress",
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the profile file /dev/full could not be written"),
        "no error naming the profile file:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("cannot write the profile file").count(),
        1,
        "the write error is not logged exactly once:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("failed to write a profile line").count(),
        0,
        "the operator logged a write error of its own:\n{}",
        run.stderr
    );
    assert!(
        !std::fs::read_to_string(&alerts).expect("alerts").is_empty(),
        "the alerts were not written"
    );
}

/// A UTF-16 file (as some spreadsheet exports write) gets an error that names the encoding,
/// rather than one that suggests `--format`.
#[test]
fn utf16_input_named_in_error() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let text = std::fs::read_to_string(shared(CASE_ONE_SHIFT)).expect("case input is UTF-8");
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    let input = folder.path().join("input.jsonl");
    std::fs::write(&input, &utf16).expect("write the UTF-16 copy");

    let run = run_veer_exact(&["run", "--input", arg(&input), "--no-progress"]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("UTF-16 byte order mark"),
        "the error does not name the encoding:\n{}",
        run.stderr
    );
}

/// Commands that print to standard output end with an error naming it when it is full,
/// rather than with a panic.
#[test]
fn full_stdout_is_an_error() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: this system has no /dev/full");
        return;
    }
    let input = shared(CASE_ONE_SHIFT);
    let truth = shared("cases/01-one-shift-one-alert/truth.jsonl");
    let folder = tempfile::tempdir().expect("temporary folder");
    let alerts = folder.path().join("alerts.jsonl");
    let run = run_veer(&["--input", arg(&input)]);
    std::fs::write(&alerts, &run.alerts_text).expect("write the alerts");

    let commands: [Vec<&str>; 4] = [
        vec!["eval", "--truth", arg(&truth), "--alerts", arg(&alerts)],
        vec!["stats", "--input", arg(&input)],
        vec!["explain", "--input", arg(&input), "--user", "101"],
        vec![
            "run",
            "--input",
            arg(&input),
            "--truth",
            arg(&truth),
            "--alerts",
            arg(&alerts),
        ],
    ];
    for args in commands {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let output = Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(&args)
            .env("VEER_LOG", "warn")
            .stdout(full)
            .output()
            .expect("the veer binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to standard output"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `veer generate` on a full disk names the file it could not write.
#[test]
fn generate_full_disk_names_file() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: this system has no /dev/full");
        return;
    }
    let folder = tempfile::tempdir().expect("temporary folder");
    let truth = folder.path().join("truth.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args([
            "generate",
            "--users",
            "50",
            "--out",
            "/dev/full",
            "--truth",
            arg(&truth),
        ])
        .output()
        .expect("the veer binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot write /dev/full"), "{stderr}");
}
