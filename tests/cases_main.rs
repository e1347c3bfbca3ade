//! The handed cases of the main job, each run through the real binary with default settings.

mod common;

use common::{arg, run_veer, shared};

fn assert_ts_between(alert: &serde_json::Value, low: i64, high: i64) {
    let ts = alert["ts"].as_i64().expect("ts is an integer");
    assert!(
        ts >= low && ts <= high,
        "alert ts {ts} outside {low}..={high}"
    );
}

/// A detector must re-arm after an alarm: one lasting shift gives exactly one alert.
#[test]
fn one_shift_gives_one_alert() {
    let input = shared("cases/01-one-shift-one-alert/input.jsonl");
    let run = run_veer(&["--input", arg(&input)]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("bad"), 0);
    assert_eq!(run.summary_count("late"), 0);

    let shifts = run.shifts_of("101");
    assert_eq!(shifts.len(), 1, "alerts: {}", run.alerts_text);
    assert_ts_between(shifts[0], 1_511_712_000, 1_511_812_974);
    assert_eq!(shifts[0]["from"][0]["category"], 3);
    assert_eq!(shifts[0]["to"][0]["category"], 41);
    assert_eq!(
        run.alerts_of("101").len(),
        1,
        "no further alert after the horizon"
    );
    assert!(run.alerts_of("102").is_empty());
    assert!(run.alerts_of("103").is_empty());

    let again = run_veer(&["--input", arg(&input)]);
    assert_eq!(
        again.alerts_text, run.alerts_text,
        "a second run writes identical bytes"
    );
    let mut ids: Vec<&str> = run
        .alerts
        .iter()
        .map(|alert| alert["alert_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), run.alerts.len(), "alert ids are distinct");
}

/// Late events are counted and written with their line, reason, time and frontier, and
/// ordinary stragglers within the tolerance are processed normally.
#[test]
fn late_events_are_accounted() {
    let input = shared("cases/04-late-events-accounted/input.jsonl");
    for workers in ["1", "2", "4"] {
        let run = run_veer(&["--input", arg(&input), "--workers", workers]);
        assert_eq!(run.status, 0, "{}", run.stderr);
        assert_eq!(run.summary_count("late"), 4, "workers {workers}");
        assert_eq!(run.summary_count("bad"), 0);
        assert_eq!(
            run.dead_lines("late"),
            vec![175, 191, 208, 224],
            "workers {workers}"
        );
        for record in &run.dead_letter {
            assert!(record["reason"].as_str().unwrap().starts_with("late"));
            assert!(record["ts"].is_i64());
            assert!(record["frontier_ms"].is_u64());
        }
        let shifts = run.shifts_of("401");
        assert_eq!(shifts.len(), 1, "workers {workers}: {}", run.alerts_text);
        assert_ts_between(shifts[0], 1_511_798_400, 1_512_057_600);
        assert!(shifts[0]["onset_ts"].as_i64().unwrap() >= 1_511_798_400 - 86_400);
        assert!(run.alerts_of("402").is_empty());
    }

    // The late lines change no alert. Line 191, in user 401's old category after the onset,
    // neither adds an alert nor moves the onset.
    let text = std::fs::read_to_string(&input).unwrap();
    let on_time: String = text
        .lines()
        .enumerate()
        .filter(|(index, _)| ![175, 191, 208, 224].contains(&(index + 1)))
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    let folder = tempfile::tempdir().unwrap();
    let on_time_path = folder.path().join("on-time.jsonl");
    std::fs::write(&on_time_path, on_time).unwrap();
    let without_late = run_veer(&["--input", arg(&on_time_path)]);
    assert_eq!(without_late.summary_count("late"), 0);
    let with_late = run_veer(&["--input", arg(&input)]);
    assert_eq!(with_late.alerts_text, without_late.alerts_text);
}

/// A CSV dialect (BOM, CRLF, final blank line, quoted comma) and a time-varying item to
/// category join must not shift columns or drop rows silently.
#[test]
fn retailrocket_bom_crlf_and_joins() {
    let events = shared("cases/07-retailrocket-bom-crlf/events.csv");
    let run = run_veer(&["--input", arg(&events), "--format", "retailrocket"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("events"), 44);
    assert_eq!(run.summary_count("bad"), 6);
    assert_eq!(run.dead_lines("bad"), vec![17, 23, 29, 34, 35, 44]);
    for record in &run.dead_letter {
        assert!(
            record["reason"].as_str().unwrap().contains("no categoryid"),
            "{record}"
        );
    }
    assert!(
        run.alerts.is_empty(),
        "too short for a profile: {}",
        run.alerts_text
    );
}

/// One malformed line must cost only that line.
#[test]
fn taobao_malformed_lines_cost_one_line_each() {
    let input = shared("cases/08-taobao-malformed-lines/input.csv");
    let run = run_veer(&["--input", arg(&input), "--format", "taobao"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("bad"), 8);
    assert_eq!(run.dead_lines("bad"), vec![1, 15, 30, 45, 60, 75, 90, 105]);
    assert_eq!(run.summary_count("skipped"), 1, "the empty line 120");
    assert_eq!(run.summary_count("events"), 170);
    let shifts = run.shifts_of("801");
    assert_eq!(shifts.len(), 1, "{}", run.alerts_text);
    assert_ts_between(shifts[0], 1_511_798_400, 1_512_057_600);
    assert!(run.shifts_of("802").is_empty());
}

/// Ids beyond 2^53 and u64::MAX keep every digit and stay distinct; string ids stay strings.
#[test]
fn json_ids_keep_every_digit() {
    let input = shared("cases/09-json-ids-and-shapes/input.jsonl");
    let run = run_veer(&["--input", arg(&input)]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary_count("bad"), 4);
    assert_eq!(run.dead_lines("bad"), vec![12, 24, 36, 48]);

    let big = run.shifts_of("9196877626998784");
    assert_eq!(big.len(), 1, "{}", run.alerts_text);
    assert_ts_between(big[0], 1_511_798_400, 1_512_057_600);
    assert!(big[0]["alert_id"]
        .as_str()
        .unwrap()
        .starts_with("9196877626998784-"));
    assert!(run.alerts_text.contains("\"user\":9196877626998784,"));
    assert!(run.shifts_of("9196877626998785").is_empty());

    assert_eq!(
        run.shifts_of("123456789012345678901").len(),
        1,
        "{}",
        run.alerts_text
    );
    assert!(run.alerts_text.contains("\"user\":123456789012345678901,"));
    assert!(run.shifts_of("123456789012345678902").is_empty());
    assert!(!run.alerts_text.contains("e20"), "no id in float form");

    assert_eq!(run.shifts_of("\"u-7f3a\"").len(), 1, "{}", run.alerts_text);
}

/// Exact duplicate rows are dropped and counted, and change no alert.
#[test]
fn rees46_duplicates_change_nothing() {
    let doubled = run_veer(&[
        "--input",
        arg(&shared("cases/12-rees46-duplicate-rows/input.csv")),
    ]);
    let clean = run_veer(&[
        "--input",
        arg(&shared("cases/12-rees46-duplicate-rows/input-dedup.csv")),
    ]);
    for run in [&doubled, &clean] {
        assert_eq!(run.status, 0, "{}", run.stderr);
        assert_eq!(run.summary_count("bad"), 0);
        let shifts = run.shifts_of("1201");
        assert_eq!(shifts.len(), 1, "{}", run.alerts_text);
        assert_ts_between(shifts[0], 1_570_147_200, 1_570_406_400);
        assert!(run.shifts_of("1202").is_empty());
        assert!(
            run.alerts.iter().all(|alert| alert["kind"] != "anomaly"),
            "{}",
            run.alerts_text
        );
    }
    assert_eq!(doubled.summary_count("duplicates"), 132);
    assert_eq!(clean.summary_count("duplicates"), 0);
    assert_eq!(doubled.alerts_text, clean.alerts_text);

    // The 19-digit category ids are printed whole, with the digits the input has.
    let input = std::fs::read_to_string(shared("cases/12-rees46-duplicate-rows/input.csv"))
        .expect("the case input is UTF-8");
    for alert in &doubled.alerts {
        for side in ["from", "to"] {
            let entries = alert[side].as_array().expect("from and to are arrays");
            assert!(!entries.is_empty(), "{side} of {alert}");
            for entry in entries {
                let category = entry["category"].to_string();
                assert_eq!(category.len(), 19, "{side} of {alert}");
                assert!(
                    input.contains(&format!(",{category},")),
                    "category {category} is not in the input"
                );
            }
        }
    }
}
