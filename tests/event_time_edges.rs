//! Event-time edge cases of the real binary: a far-future first event, microsecond timestamps,
//! and late records of a run with several inputs.

mod common;
mod serving;

use std::path::{Path, PathBuf};

use common::{arg, run_veer, RunOutput};
use serving::{connect_and_send, summary_count, Server};

/// 2017-11-24T16:00:00Z in Unix seconds.
const START_SECS: i64 = 1_511_539_200;

/// Returns `count` JSON lines of views, one a minute from `first_secs`, of 40 users in turn.
fn views(count: usize, first_secs: i64) -> String {
    (0..count)
        .map(|index| {
            format!(
                "{{\"user\":{},\"item\":{},\"category\":{},\"behavior\":\"view\",\"ts\":{}}}\n",
                index % 40,
                1000 + index,
                index % 12,
                first_secs + index as i64 * 60
            )
        })
        .collect()
}

/// Writes `text` to `name` in `folder` and returns the path.
fn write(folder: &Path, name: &str, text: &str) -> PathBuf {
    let path = folder.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Returns a view at `ts` as a JSON line.
fn view_at(ts: &str) -> String {
    format!("{{\"user\":1,\"item\":1,\"category\":1,\"behavior\":\"view\",\"ts\":{ts}}}\n")
}

/// Far-future first lines: year 5138, and two days ahead of the events after them.
fn far_first_lines() -> [String; 2] {
    [
        view_at("99999999999"),
        view_at(&(START_SECS + 2 * 86_400).to_string()),
    ]
}

fn assert_nothing_late(run: &RunOutput, label: &str, events: u64) {
    assert_eq!(run.status, 0, "{label}: {}", run.stderr);
    assert_eq!(run.summary_count("late"), 0, "{label}: {}", run.stderr);
    assert_eq!(
        run.summary_count("events"),
        events,
        "{label}: {}",
        run.stderr
    );
    assert!(run.dead_letter.is_empty(), "{label}: {:?}", run.dead_letter);
}

#[test]
fn far_future_first_event_makes_nothing_late() {
    let folder = tempfile::tempdir().unwrap();
    for (index, first) in far_first_lines().iter().enumerate() {
        let text = format!("{first}{}", views(2_000, START_SECS));
        let input = write(folder.path(), &format!("far-{index}.jsonl"), &text);
        for workers in ["1", "2"] {
            let run = run_veer(&[
                "--input",
                arg(&input),
                "--order",
                "arrival",
                "--workers",
                workers,
            ]);
            assert_nothing_late(&run, &format!("{first} with {workers} workers"), 2_001);
        }
    }
}

#[test]
fn far_future_first_event_of_each_input() {
    let folder = tempfile::tempdir().unwrap();
    let [far, _] = far_first_lines();
    let earlier = write(folder.path(), "a.jsonl", &views(500, START_SECS));
    let text = format!("{far}{}", views(500, START_SECS + 500 * 60));
    let later = write(folder.path(), "b.jsonl", &text);
    let empty = write(folder.path(), "empty.jsonl", "");
    for inputs in [[&earlier, &later], [&empty, &later]] {
        let events = if inputs[0] == &empty { 501 } else { 1_001 };
        let run = run_veer(&[
            "--input",
            arg(inputs[0]),
            "--input",
            arg(inputs[1]),
            "--order",
            "arrival",
        ]);
        assert_nothing_late(&run, &format!("{inputs:?}"), events);
    }
}

#[test]
fn far_future_streak_moves_watermark() {
    let folder = tempfile::tempdir().unwrap();
    let [far, _] = far_first_lines();
    let text = format!("{}{}", far.repeat(8), views(100, START_SECS));
    let input = write(folder.path(), "streak.jsonl", &text);
    let run = run_veer(&["--input", arg(&input), "--order", "arrival"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("late"), 100, "{}", run.stderr);
}

#[test]
fn far_future_first_event_of_a_connection() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let dead = folder.path().join("dead.jsonl");
    let mut server = Server::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--alerts",
            arg(&alerts),
            "--dead-letter",
            arg(&dead),
        ],
        1,
    );
    let [far, _] = far_first_lines();
    let text = format!("{far}{}", views(2_000, START_SECS));
    let connection = connect_and_send(server.addresses[0], text.as_bytes());
    drop(connection);
    server.wait_for(|log| log.contains("connection closed"), 20);
    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(20);
    let log = server.log();
    assert_eq!(code, 0, "{log}");
    assert_eq!(summary_count(&log, "lines read"), 2_001, "{log}");
    assert_eq!(summary_count(&log, "late"), 0, "{log}");
}

/// Returns the replay order that a run's summary names on its `out of order` line.
fn replay_order(run: &RunOutput) -> &str {
    let line = run
        .stderr
        .lines()
        .find(|line| line.starts_with("out of order"))
        .unwrap_or_else(|| panic!("no `out of order` line:\n{}", run.stderr));
    let (_, order) = line
        .split_once("replay: ")
        .unwrap_or_else(|| panic!("no replay order in {line:?}"));
    order.trim_end_matches(')')
}

#[test]
fn far_future_first_event_keeps_auto_order() {
    let folder = tempfile::tempdir().unwrap();
    let (events, _) = common::generate_stream(folder.path(), 200, 5, 7);
    let text = std::fs::read_to_string(&events).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let [far, _] = far_first_lines();
    let far = far.replace("\"user\":1,", &format!("\"user\":{},", first["user"]));
    let with_far = write(folder.path(), "far.jsonl", &format!("{far}{text}"));

    let plain = run_veer(&["--input", arg(&events)]);
    let far_run = run_veer(&["--input", arg(&with_far)]);
    assert_eq!(plain.status, 0, "{}", plain.stderr);
    assert_eq!(far_run.status, 0, "{}", far_run.stderr);
    assert_eq!(replay_order(&plain), "arrival order", "{}", plain.stderr);
    assert_eq!(
        replay_order(&far_run),
        replay_order(&plain),
        "{}",
        far_run.stderr
    );
    assert!(!plain.alerts.is_empty(), "no alerts to compare");
    assert_eq!(far_run.alerts_text, plain.alerts_text);
    // The far-future line is one more event, and nothing else changes.
    for (name, more) in [("lines read", 1), ("events", 1), ("late", 0), ("bad", 0)] {
        assert_eq!(
            far_run.summary_count(name),
            plain.summary_count(name) + more,
            "{name}: {}",
            far_run.stderr
        );
    }
}

#[test]
fn microsecond_timestamps_are_bad_records() {
    let folder = tempfile::tempdir().unwrap();
    let micros = (START_SECS * 1_000_000).to_string();
    let json_text = format!(
        "{}{}{}{}",
        views(20, START_SECS),
        view_at(&micros),
        view_at(&format!("\"{micros}\"")),
        view_at(&((START_SECS + 20 * 60) * 1000).to_string()),
    );
    let json = write(folder.path(), "events.jsonl", &json_text);
    let taobao_text = format!(
        "1,2,3,pv,{START_SECS}\n1,2,3,pv,{}\n1,2,3,pv,{micros}\n",
        START_SECS * 1000
    );
    let taobao = write(folder.path(), "events.csv", &taobao_text);
    for (input, bad_lines, max_digits) in [(&json, vec![21, 22], 13), (&taobao, vec![2, 3], 12)] {
        let run = run_veer(&["--input", arg(input)]);
        assert_eq!(run.status, 0, "{}", run.stderr);
        assert_eq!(run.dead_lines("bad"), bad_lines, "{input:?}");
        for record in &run.dead_letter {
            let reason = record["reason"].as_str().unwrap();
            let expected = format!("more than {max_digits} digits");
            assert!(reason.contains(&expected), "{input:?}: {reason}");
            assert!(reason.contains("microseconds"), "{input:?}: {reason}");
        }
    }
}

#[test]
fn late_records_name_their_input() {
    let folder = tempfile::tempdir().unwrap();
    let first = write(folder.path(), "late-a.jsonl", &views(1_000, START_SECS));
    // Ten events from the first input's start, so they are late after its end.
    let second = write(folder.path(), "late-b.jsonl", &views(10, START_SECS));
    let runs = [
        ("arrival", "1"),
        ("arrival", "2"),
        ("auto", "1"),
        ("auto", "2"),
    ];
    for (order, workers) in runs {
        let label = format!("--order {order} --workers {workers}");
        let run = run_veer(&[
            "--input",
            arg(&first),
            "--input",
            arg(&second),
            "--order",
            order,
            "--workers",
            workers,
        ]);
        assert_eq!(run.status, 0, "{label}: {}", run.stderr);
        assert_eq!(run.summary_count("late"), 10, "{label}: {}", run.stderr);
        assert_eq!(
            run.dead_lines("late"),
            (1..=10).collect::<Vec<u64>>(),
            "{label}"
        );
        for record in &run.dead_letter {
            assert_eq!(record["file"], arg(&second), "{label}: {record}");
        }
    }
}
