//! Hand-made cases that pin each scoring rule of `veer::eval`.

use serde_json::Value;
use veer::eval::paired::compare_delays;
use veer::eval::{
    parse_duration, read_alerts, read_truth, score, EvalConfig, EvalError, Score, ScoredAlert,
    UserTimeline,
};
use veer::truth::{DecoyKind, TruthRecord};
use veer_models::alert::AlertKind;
use veer_models::Id;

const H: i64 = 1_000;
const T0: i64 = 1_511_700_000;

fn shift(user: u64, onset_ts: i64) -> TruthRecord {
    TruthRecord::InterestShift {
        user: user.into(),
        onset_ts,
        from: vec![],
        to: vec![],
    }
}

fn decoy(user: u64, kind: DecoyKind, ts: i64) -> TruthRecord {
    TruthRecord::Decoy {
        user: user.into(),
        decoy: kind,
        ts,
        categories: vec![],
    }
}

fn shift_alert(user: u64, ts: i64) -> ScoredAlert {
    ScoredAlert {
        user: user.into(),
        kind: AlertKind::InterestShift,
        ts,
    }
}

fn anomaly_alert(user: u64, ts: i64) -> ScoredAlert {
    ScoredAlert {
        user: user.into(),
        kind: AlertKind::Anomaly,
        ts,
    }
}

fn run(truth: &[TruthRecord], alerts: &[ScoredAlert]) -> Score {
    score(truth, alerts, None, &EvalConfig { horizon_secs: H })
}

fn json(score: &Score) -> Value {
    serde_json::from_str(&score.to_json_line()).expect("to_json_line writes valid JSON")
}

// --- Window rule ---

#[test]
fn alert_inside_horizon_is_tp() {
    let result = run(&[shift(1, T0)], &[shift_alert(1, T0 + 10)]);
    assert_eq!(result.shifts, 1);
    assert_eq!(result.detected, 1);
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 0);
    assert_eq!(result.precision, Some(1.0));
    assert_eq!(result.recall, Some(1.0));
    assert_eq!(result.f1, Some(1.0));
}

#[test]
fn alert_exactly_at_onset_is_tp() {
    let result = run(&[shift(1, T0)], &[shift_alert(1, T0)]);
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 0);
    assert_eq!(result.delay_secs, vec![0]);
}

#[test]
fn alert_exactly_at_horizon_end_is_tp() {
    let result = run(&[shift(1, T0)], &[shift_alert(1, T0 + H)]);
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 0);
    assert_eq!(result.delay_secs, vec![H]);
}

#[test]
fn alert_one_second_after_horizon_is_fp() {
    let result = run(&[shift(1, T0)], &[shift_alert(1, T0 + H + 1)]);
    assert_eq!(result.detected, 0);
    assert_eq!(result.fp, 1);
    assert_eq!(result.precision, Some(0.0));
    assert_eq!(result.recall, Some(0.0));
    assert_eq!(result.f1, Some(0.0));
}

#[test]
fn alert_before_onset_is_fp() {
    let result = run(
        &[shift(1, T0)],
        &[shift_alert(1, T0 - 1), shift_alert(1, T0 + 5)],
    );
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 1);
    assert_eq!(result.precision, Some(0.5));
    assert_eq!(result.delay_secs, vec![5]);
}

#[test]
fn second_alert_in_horizon_is_ignored() {
    let alerts = [
        shift_alert(1, T0 + 100),
        shift_alert(1, T0 + 50),
        shift_alert(1, T0 + H),
    ];
    let result = run(&[shift(1, T0)], &alerts);
    assert_eq!(result.alerts, 3);
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 0);
    assert_eq!(result.ignored, 2);
    assert_eq!(result.precision, Some(1.0));
    // The earliest alert is the TP, whatever the order of the alert file.
    assert_eq!(result.delay_secs, vec![50]);
}

#[test]
fn alert_for_user_without_shift_is_fp() {
    let result = run(
        &[shift(1, T0)],
        &[shift_alert(1, T0 + 1), shift_alert(2, T0 + 1)],
    );
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 1);
    assert_eq!(result.precision, Some(0.5));
    assert_eq!(result.recall, Some(1.0));
}

#[test]
fn anomaly_alert_does_not_detect_shift() {
    let result = run(&[shift(1, T0)], &[anomaly_alert(1, T0 + 1)]);
    assert_eq!(result.detected, 0);
    assert_eq!(result.alerts, 0);
    assert_eq!(result.fp, 0);
    assert_eq!(result.anomaly.alerts, 1);
    assert_eq!(result.anomaly.fp, 1);
}

#[test]
fn overlapping_shifts_take_alerts_earliest_first() {
    // Windows [T0, T0 + H] and [T0 + 500, T0 + 1500]. The alert at T0 + 600 lies in both and
    // detects the first shift, the one at T0 + 700 the second, and T0 + 800 is ignored.
    let truth = [shift(1, T0), shift(1, T0 + 500)];
    let alerts = [
        shift_alert(1, T0 + 600),
        shift_alert(1, T0 + 700),
        shift_alert(1, T0 + 800),
    ];
    let result = run(&truth, &alerts);
    assert_eq!(result.detected, 2);
    assert_eq!(result.fp, 0);
    assert_eq!(result.ignored, 1);
    assert_eq!(result.delay_secs, vec![600, 200]);
}

#[test]
fn precision_recall_f1_values() {
    // Two of three shifts detected, one FP: precision 2/3, recall 2/3, F1 2/3.
    let truth = [shift(1, T0), shift(2, T0), shift(3, T0)];
    let alerts = [
        shift_alert(1, T0 + 1),
        shift_alert(2, T0 + 1),
        shift_alert(4, T0),
    ];
    let result = run(&truth, &alerts);
    let line = json(&result);
    assert_eq!(line["precision"], serde_json::json!(0.6667));
    assert_eq!(line["recall"], serde_json::json!(0.6667));
    assert_eq!(line["f1"], serde_json::json!(0.6667));

    // One of two shifts detected and no FP: precision 1, recall 0.5, F1 2/3.
    let result = run(&[shift(1, T0), shift(2, T0)], &[shift_alert(1, T0)]);
    assert_eq!(result.precision, Some(1.0));
    assert_eq!(result.recall, Some(0.5));
    let f1 = result.f1.expect("F1 is defined");
    assert!((f1 - 2.0 / 3.0).abs() < 1e-12, "{f1}");
}

// --- Ids ---

#[test]
fn adjacent_large_ids_stay_apart() {
    let truth = read_truth(
        r#"{"user": 9196877626998784, "kind": "interest_shift", "onset_ts": 1511700000}"#
            .as_bytes(),
    )
    .unwrap();
    let alerts = read_alerts(
        r#"{"user": 9196877626998785, "kind": "interest_shift", "ts": 1511700010}"#.as_bytes(),
    )
    .unwrap()
    .alerts;
    assert_eq!(alerts[0].user, Id::int(9_196_877_626_998_785));
    let result = score(&truth, &alerts, None, &EvalConfig::default());
    assert_eq!(result.detected, 0);
    assert_eq!(result.fp, 1);
}

#[test]
fn ids_beyond_u64_keep_every_digit() {
    let text = r#"{"user": 123456789012345678901234567890, "kind": "anomaly", "ts": 5}"#;
    let alerts = read_alerts(text.as_bytes()).unwrap().alerts;
    assert_eq!(
        alerts[0].user,
        Id::int(123_456_789_012_345_678_901_234_567_890)
    );
}

#[test]
fn string_and_number_ids_match() {
    // Truth and alerts are two files, so the truth's "42" matches the alerts' 42 and "42".
    let truth = read_truth(
        r#"{"user": "42", "kind": "interest_shift", "onset_ts": 1511700000}"#.as_bytes(),
    )
    .unwrap();
    let alerts = read_alerts(
        concat!(
            r#"{"user": 42, "kind": "interest_shift", "ts": 1511700010}"#,
            "\n",
            r#"{"user": "42", "kind": "interest_shift", "ts": 1511700020}"#,
        )
        .as_bytes(),
    )
    .unwrap()
    .alerts;
    assert_eq!(alerts[0].user, Id::int(42));
    assert_eq!(alerts[1].user, Id::text("42"));
    let result = score(&truth, &alerts, None, &EvalConfig::default());
    assert_eq!(result.tp, 1);
    assert_eq!(result.fp, 0);
    assert_eq!(result.ignored, 1);
    assert_eq!(result.delay_secs, vec![10]);
}

#[test]
fn bare_truth_ids_match_quoted_alerts_and_events() {
    let truth = read_truth(
        concat!(
            r#"{"user": 42, "kind": "interest_shift", "onset_ts": 1511700000}"#,
            "\n",
            r#"{"user": 43, "kind": "decoy", "decoy": "one_off", "ts": 1511700000}"#,
            "\n",
            r#"{"user": 44, "kind": "decoy", "decoy": "burst", "ts": 1511700000}"#,
        )
        .as_bytes(),
    )
    .unwrap();

    let alerts = read_alerts(
        concat!(
            r#"{"user": "42", "kind": "interest_shift", "ts": 1511700030}"#,
            "\n",
            r#"{"user": "43", "kind": "interest_shift", "ts": 1511700030}"#,
            "\n",
            r#"{"user": "44", "kind": "anomaly", "ts": 1511700030}"#,
        )
        .as_bytes(),
    )
    .unwrap()
    .alerts;
    let events = [0, 10, 20, 30, 40].map(|offset| (Id::text("42"), 1_511_700_000 + offset));
    let timeline = UserTimeline::new(events);
    let result = score(&truth, &alerts, Some(&timeline), &EvalConfig::default());

    assert_eq!(result.tp, 1);
    assert_eq!(
        result.fp, 1,
        "the decoy user's alert is still a false positive"
    );
    assert_eq!(result.delay_events, vec![4]);

    let one_off = &result.decoys[0];
    assert_eq!(one_off.kind, DecoyKind::OneOff);
    assert_eq!(one_off.false_alarms, 1);
    assert_eq!(result.anomaly.hits, 1);
    assert_eq!(result.anomaly.fp, 0);
}

#[test]
fn leading_zero_ids_match_only_themselves() {
    let truth = read_truth(
        r#"{"user": "042", "kind": "interest_shift", "onset_ts": 1511700000}"#.as_bytes(),
    )
    .unwrap();
    let alerts =
        read_alerts(r#"{"user": 42, "kind": "interest_shift", "ts": 1511700010}"#.as_bytes())
            .unwrap()
            .alerts;
    let result = score(&truth, &alerts, None, &EvalConfig::default());
    assert_eq!(result.tp, 0);
    assert_eq!(result.fp, 1);
}

// --- Delay ---

#[test]
fn delay_events_count_both_ends() {
    let user = Id::from(1);
    let times = [T0 - 1, T0, T0 + 10, T0 + 20, T0 + 30, T0 + 31];
    let timeline = UserTimeline::new(times.iter().map(|&ts| (user.clone(), ts)));
    let truth = [shift(1, T0)];
    let alerts = [shift_alert(1, T0 + 30)];
    let result = score(
        &truth,
        &alerts,
        Some(&timeline),
        &EvalConfig { horizon_secs: H },
    );
    // Events at T0, T0 + 10, T0 + 20 and T0 + 30 count. T0 - 1 and T0 + 31 do not.
    assert_eq!(result.delay_events, vec![4]);
    assert_eq!(result.delay_secs, vec![30]);
    assert_eq!(result.delay_events_median, Some(4));
}

#[test]
fn delay_events_ignore_other_users() {
    let timeline = UserTimeline::new([(Id::from(2), T0 + 1), (Id::from(1), T0 + 1)]);
    let result = score(
        &[shift(1, T0)],
        &[shift_alert(1, T0 + 5)],
        Some(&timeline),
        &EvalConfig::default(),
    );
    assert_eq!(result.delay_events, vec![1]);
}

#[test]
fn delay_events_absent_without_timeline() {
    let result = run(&[shift(1, T0)], &[shift_alert(1, T0 + 5)]);
    assert!(result.delay_events.is_empty());
    assert_eq!(result.delay_events_median, None);
    assert_eq!(result.delay_events_p90, None);
    assert_eq!(result.delay_secs_median, Some(5));
    let line = json(&result);
    assert_eq!(line["delay_events_median"], Value::Null);
    assert_eq!(line["delay_secs_median"], serde_json::json!(5));
}

#[test]
fn delay_percentiles_nearest_rank() {
    // Ten shifts detected after 10, 20, ..., 100 seconds, listed out of order.
    let delays = [30, 100, 10, 60, 20, 90, 40, 80, 50, 70];
    let truth: Vec<TruthRecord> = (0..10).map(|user| shift(user, T0)).collect();
    let alerts: Vec<ScoredAlert> = delays
        .iter()
        .zip(0..)
        .map(|(&delay, user)| shift_alert(user, T0 + delay))
        .collect();
    let events = delays.iter().zip(0u64..).flat_map(|(&delay, user)| {
        // delay / 10 events per user between onset and alert.
        (1..=delay / 10).map(move |step| (Id::from(user), T0 + step * 10))
    });
    let timeline = UserTimeline::new(events);
    let result = score(
        &truth,
        &alerts,
        Some(&timeline),
        &EvalConfig { horizon_secs: H },
    );
    assert_eq!(result.delay_secs, delays.to_vec());
    assert_eq!(result.delay_secs_median, Some(50));
    assert_eq!(result.delay_secs_p90, Some(90));
    assert_eq!(result.delay_events_median, Some(5));
    assert_eq!(result.delay_events_p90, Some(9));
}

#[test]
fn delay_median_of_even_count_is_lower_middle() {
    let truth = [shift(1, T0), shift(2, T0)];
    let alerts = [shift_alert(1, T0 + 10), shift_alert(2, T0 + 40)];
    let result = run(&truth, &alerts);
    assert_eq!(result.delay_secs_median, Some(10));
    assert_eq!(result.delay_secs_p90, Some(40));
}

// --- Ceiling ---

#[test]
fn ceiling_needs_three_events_in_window() {
    let events = [
        // User 1: three events in [T0, T0 + H], the last one exactly at the end.
        (Id::from(1), T0),
        (Id::from(1), T0 + 500),
        (Id::from(1), T0 + H),
        // User 2: two events inside, one before and one after the window.
        (Id::from(2), T0 - 1),
        (Id::from(2), T0 + 1),
        (Id::from(2), T0 + 2),
        (Id::from(2), T0 + H + 1),
    ];
    let timeline = UserTimeline::new(events);
    let truth = [shift(1, T0), shift(2, T0)];
    let result = score(
        &truth,
        &[],
        Some(&timeline),
        &EvalConfig { horizon_secs: H },
    );
    assert_eq!(result.ceiling, Some(0.5));
    assert_eq!(run(&truth, &[]).ceiling, None);
}

// --- Decoys ---

#[test]
fn decoy_rates_per_kind() {
    let truth = [
        decoy(1, DecoyKind::OneOff, T0),
        decoy(2, DecoyKind::OneOff, T0),
        decoy(3, DecoyKind::OneOff, T0),
        decoy(4, DecoyKind::OneOff, T0),
        decoy(5, DecoyKind::Burst, T0),
        decoy(6, DecoyKind::Seasonal, T0),
        decoy(7, DecoyKind::Seasonal, T0),
    ];
    let alerts = [
        // One-off decoys: user 1 alerted at the decoy time, user 2 at the window end, user 3
        // just after it and user 4 just before the decoy.
        shift_alert(1, T0),
        shift_alert(2, T0 + H),
        shift_alert(3, T0 + H + 1),
        shift_alert(4, T0 - 1),
        // Burst: only an anomaly alert, which is not a false alarm of a shift detector.
        anomaly_alert(5, T0 + 1),
        // Seasonal: counted per affected user, one of two alerted.
        shift_alert(6, T0 + 3),
    ];
    let result = run(&truth, &alerts);

    let kinds: Vec<DecoyKind> = result.decoys.iter().map(|entry| entry.kind).collect();
    assert_eq!(
        kinds,
        vec![DecoyKind::OneOff, DecoyKind::Burst, DecoyKind::Seasonal]
    );

    assert_eq!(result.decoys[0].count, 4);
    assert_eq!(result.decoys[0].false_alarms, 2);
    assert_eq!(result.decoys[0].rate, Some(0.5));
    assert_eq!(result.decoys[1].count, 1);
    assert_eq!(result.decoys[1].false_alarms, 0);
    assert_eq!(result.decoys[1].rate, Some(0.0));
    assert_eq!(result.decoys[2].count, 2);
    assert_eq!(result.decoys[2].false_alarms, 1);
    assert_eq!(result.decoys[2].rate, Some(0.5));

    // Alerts after decoys are also false positives of the shift score.
    assert_eq!(result.fp, 5);

    let line = json(&result);
    assert_eq!(line["decoys"]["one_off"]["rate"], serde_json::json!(0.5));
    assert_eq!(
        line["decoys"]["seasonal"]["false_alarms"],
        serde_json::json!(1)
    );
}

#[test]
fn decoy_rate_null_without_decoys() {
    let result = run(&[decoy(1, DecoyKind::Burst, T0)], &[]);
    assert_eq!(result.decoys[0].rate, None);
    assert_eq!(result.decoys[2].rate, None);
    let line = json(&result);
    assert_eq!(line["decoys"]["one_off"]["rate"], Value::Null);
    assert_eq!(line["decoys"]["burst"]["rate"], serde_json::json!(0.0));
}

// --- Anomaly alerts against bursts ---

#[test]
fn anomaly_alerts_scored_against_bursts() {
    let truth = [
        decoy(1, DecoyKind::Burst, T0),
        decoy(2, DecoyKind::Burst, T0),
        decoy(3, DecoyKind::Burst, T0),
        decoy(4, DecoyKind::OneOff, T0),
    ];

    let alerts = [
        // Burst of user 1: hit at the window end, then a repeat that is ignored.
        anomaly_alert(1, T0 + H),
        anomaly_alert(1, T0 + 5),
        // Burst of user 2: only an alert before it, a false positive.
        anomaly_alert(2, T0 - 1),
        // Burst of user 3: hit exactly at the burst time.
        anomaly_alert(3, T0),
        // A one-off decoy is not a burst, so this is a false positive.
        anomaly_alert(4, T0 + 1),
        // A shift alert never counts as an anomaly hit.
        shift_alert(2, T0 + 1),
    ];
    let result = run(&truth, &alerts);

    assert_eq!(result.anomaly.bursts, 3);
    assert_eq!(result.anomaly.alerts, 5);
    assert_eq!(result.anomaly.hits, 2);
    assert_eq!(result.anomaly.fp, 2);
    assert_eq!(result.anomaly.ignored, 1);
    assert_eq!(result.anomaly.precision, Some(0.5));
    let recall = result
        .anomaly
        .recall
        .expect("recall is defined with bursts");
    assert!((recall - 2.0 / 3.0).abs() < 1e-12, "{recall}");

    // The shift alert for user 2 has no shift to detect.
    assert_eq!(result.fp, 1);
}

// --- Empty and degenerate inputs ---

#[test]
fn empty_inputs_give_nulls_not_nan() {
    let result = run(&[], &[]);
    assert_eq!(result.precision, None);
    assert_eq!(result.recall, None);
    assert_eq!(result.f1, None);
    assert_eq!(result.ceiling, None);
    assert_eq!(result.anomaly.precision, None);
    assert_eq!(result.anomaly.recall, None);

    let text = result.to_json_line();
    assert!(!text.contains("NaN"), "{text}");
    assert!(!text.contains("inf"), "{text}");
    let line: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(line["shifts"], serde_json::json!(0));
    assert_eq!(line["precision"], Value::Null);
    assert_eq!(line["recall"], Value::Null);
    assert_eq!(line["f1"], Value::Null);
    assert_eq!(line["delay_secs_p90"], Value::Null);
    assert_eq!(line["anomaly"]["precision"], Value::Null);

    let table = result.to_table();
    assert!(table.contains("n/a"), "{table}");
    assert!(!table.contains("NaN"), "{table}");
}

#[test]
fn shifts_without_alerts_score_zero() {
    let result = run(&[shift(1, T0)], &[]);
    assert_eq!(result.precision, Some(0.0));
    assert_eq!(result.recall, Some(0.0));
    assert_eq!(result.f1, Some(0.0));
    let line = json(&result);
    assert_eq!(line["precision"], serde_json::json!(0.0));
    assert_eq!(line["f1"], serde_json::json!(0.0));
}

#[test]
fn alerts_without_shifts_have_no_recall() {
    let result = run(&[], &[shift_alert(1, T0)]);
    assert_eq!(result.fp, 1);
    assert_eq!(result.precision, Some(0.0));
    assert_eq!(result.recall, None);
    assert_eq!(result.f1, None);
}

// --- Output formats ---

#[test]
fn json_line_key_order_is_stable() {
    let result = run(&[shift(1, T0)], &[shift_alert(1, T0)]);
    let line = json(&result);
    let keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        vec![
            "horizon_secs",
            "shifts",
            "detected",
            "alerts",
            "tp",
            "fp",
            "ignored",
            "precision",
            "recall",
            "f1",
            "delay_events_median",
            "delay_events_p90",
            "delay_secs_median",
            "delay_secs_p90",
            "ceiling",
            "decoys",
            "anomaly",
        ]
    );
    let decoy_keys: Vec<&str> = line["decoys"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(decoy_keys, vec!["one_off", "burst", "seasonal"]);
    assert!(!result.to_json_line().contains('\n'));
}

#[test]
fn table_lists_values_aligned() {
    let truth = [shift(1, T0), shift(2, T0)];
    let result = run(&truth, &[shift_alert(1, T0 + 7)]);
    let table = result.to_table();
    assert!(table
        .lines()
        .any(|line| line.starts_with("precision ") && line.ends_with(" 1.0000")));
    assert!(table
        .lines()
        .any(|line| line.starts_with("recall ") && line.ends_with(" 0.5000")));
    assert!(table
        .lines()
        .any(|line| line.starts_with("delay median (seconds) ") && line.ends_with(" 7")));

    // Every row of the first block puts its value in the same column.
    let value_columns: Vec<usize> = table
        .lines()
        .take_while(|line| !line.is_empty())
        .map(|line| line.rfind("  ").expect("label and value are separated") + 2)
        .collect();
    assert!(value_columns.len() > 10);
    assert!(
        value_columns
            .iter()
            .all(|&column| column == value_columns[0]),
        "{table}"
    );
}

// --- Readers ---

#[test]
fn read_alerts_skips_blank_lines() {
    let text = "\n{\"user\": 1, \"kind\": \"interest_shift\", \"ts\": 10, \"score\": 0.5}\r\n   \n\
                {\"user\": \"a\", \"kind\": \"anomaly\", \"ts\": 20}\n";
    let alerts = read_alerts(text.as_bytes()).unwrap().alerts;
    assert_eq!(
        alerts,
        vec![
            ScoredAlert {
                user: Id::from(1),
                kind: AlertKind::InterestShift,
                ts: 10
            },
            ScoredAlert {
                user: Id::text("a"),
                kind: AlertKind::Anomaly,
                ts: 20
            },
        ]
    );
}

fn alert_error(text: &str) -> (u64, String) {
    match read_alerts(text.as_bytes()) {
        Err(EvalError::InvalidLine { line, message }) => (line, message),
        other => panic!("expected an invalid line, got {other:?}"),
    }
}

#[test]
fn read_alerts_errors_name_line() {
    let good = r#"{"user": 1, "kind": "interest_shift", "ts": 10}"#;

    let (line, message) = alert_error(&format!("{good}\n\n{{not json\n"));
    assert_eq!(line, 3);
    assert!(message.contains("invalid JSON"), "{message}");

    let (line, message) = alert_error(&format!("{good}\n{{\"kind\": \"anomaly\", \"ts\": 1}}\n"));
    assert_eq!(line, 2);
    assert!(message.contains("`user`"), "{message}");

    let (line, message) = alert_error(r#"{"user": 1, "kind": "drift", "ts": 1}"#);
    assert_eq!(line, 1);
    assert!(message.contains("drift"), "{message}");

    let (line, message) = alert_error(r#"{"user": 1, "kind": "anomaly"}"#);
    assert_eq!(line, 1);
    assert!(message.contains("`ts`"), "{message}");

    let (line, message) = alert_error("[1, 2]");
    assert_eq!(line, 1);
    assert!(message.contains("not a JSON object"), "{message}");
}

#[test]
fn read_alerts_error_display_names_line() {
    let error = read_alerts("\n\n\n{\"user\": 1}".as_bytes()).unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("line 4: "), "{text}");
}

#[test]
fn read_alerts_skips_torn_last_line() {
    let good = r#"{"user": 1, "kind": "interest_shift", "ts": 10}"#;
    let torn = r#"{"alert_id":"2-20-interest_shift","user":2,"ki"#;
    let text = format!("{good}\n{good}\n{torn}");

    let lines = read_alerts(text.as_bytes()).unwrap();
    assert_eq!(lines.alerts.len(), 2);
    let skipped = lines.torn_last_line.expect("the torn line is reported");
    assert_eq!(skipped.line, 3);
    assert_eq!(skipped.bytes, torn.len() as u64);
}

#[test]
fn read_alerts_skips_last_line_torn_inside_character() {
    // A kill can cut a line inside a multi-byte UTF-8 character.
    let mut bytes = br#"{"user": 1, "kind": "anomaly", "ts": 1}"#.to_vec();
    bytes.extend_from_slice(b"\n{\"user\":\"\xc3");

    let lines = read_alerts(bytes.as_slice()).unwrap();
    assert_eq!(lines.alerts.len(), 1);
    assert_eq!(lines.torn_last_line.map(|torn| torn.line), Some(2));
}

#[test]
fn read_alerts_keeps_valid_last_line_without_newline() {
    let good = r#"{"user": 1, "kind": "interest_shift", "ts": 10}"#;
    let lines = read_alerts(format!("{good}\n{good}").as_bytes()).unwrap();
    assert_eq!(lines.alerts.len(), 2);
    assert_eq!(lines.torn_last_line, None);
}

#[test]
fn read_alerts_rejects_torn_line_in_middle() {
    let good = r#"{"user": 1, "kind": "interest_shift", "ts": 10}"#;
    let (line, message) = alert_error(&format!("{good}\n{{\"user\":2,\"ki\n{good}\n"));
    assert_eq!(line, 2);
    assert!(message.contains("invalid JSON"), "{message}");
}

#[test]
fn read_alerts_rejects_newline_ended_bad_last_line() {
    let good = r#"{"user": 1, "kind": "interest_shift", "ts": 10}"#;
    let (line, _) = alert_error(&format!("{good}\n{{\"user\":2,\"ki\n"));
    assert_eq!(line, 2);
}

#[test]
fn read_truth_rejects_torn_last_line() {
    let text = r#"{"user": 42, "kind": "interest_shift", "onset_ts": 15117"#;
    assert!(read_truth(text.as_bytes()).is_err());
}

#[test]
fn read_alerts_invalid_utf8_names_line() {
    let bytes: &[u8] = b"{\"user\": 1, \"kind\": \"anomaly\", \"ts\": 1}\n\xff\xfe\n";
    match read_alerts(bytes) {
        Err(EvalError::Read { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn read_truth_parses_and_names_bad_line() {
    let text = concat!(
        r#"{"user": 42, "kind": "interest_shift", "onset_ts": 1511700000, "from": [3], "to": [41]}"#,
        "\n\n",
        r#"{"user": 77, "kind": "decoy", "decoy": "one_off", "ts": 1511800000, "categories": [88]}"#,
        "\n",
    );
    let records = read_truth(text.as_bytes()).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0],
        TruthRecord::InterestShift {
            user: Id::from(42),
            onset_ts: 1_511_700_000,
            from: vec![Id::from(3)],
            to: vec![Id::from(41)],
        }
    );

    let bad = format!(
        "{text}{}\n",
        r#"{"user": 1, "kind": "decoy", "decoy": "weekly", "ts": 1}"#
    );
    match read_truth(bad.as_bytes()) {
        Err(EvalError::InvalidLine { line, message }) => {
            assert_eq!(line, 4);
            assert!(message.contains("weekly"), "{message}");
        }
        other => panic!("expected an invalid line, got {other:?}"),
    }
}

// --- parse_duration ---

#[test]
fn parse_duration_units() {
    assert_eq!(parse_duration("3d"), Ok(259_200));
    assert_eq!(parse_duration("12h"), Ok(43_200));
    assert_eq!(parse_duration("90m"), Ok(5_400));
    assert_eq!(parse_duration("45s"), Ok(45));
    assert_eq!(parse_duration("259200"), Ok(259_200));
    assert_eq!(parse_duration("0"), Ok(0));
    assert_eq!(parse_duration(" 2h "), Ok(7_200));
}

#[test]
fn parse_duration_rejects_junk() {
    for text in [
        "",
        "d",
        "3x",
        "-3d",
        "1.5h",
        "3 d",
        "3D",
        "3dd",
        "h3",
        "three days",
        "+5",
    ] {
        let error = parse_duration(text).expect_err(text);
        assert!(
            error.contains(&format!("{text:?}")),
            "message for {text:?}: {error}"
        );
    }
}

// --- Delays paired with a baseline run ---

#[test]
fn paired_delays_compare_shared_shifts() {
    // Shift 1: both, run earlier. Shift 2: both, same alert. Shift 3: both, run later.
    // Shift 4: run only. Shift 5: baseline only. Shift 6: neither.
    let truth: Vec<TruthRecord> = (1..=6).map(|user| shift(user, T0)).collect();
    let events = (1..=6u64).flat_map(|user| {
        (T0..=T0 + 300)
            .step_by(10)
            .map(move |ts| (Id::from(user), ts))
    });
    let timeline = UserTimeline::new(events);
    let config = EvalConfig { horizon_secs: H };
    let run_alerts = [
        shift_alert(1, T0 + 50),
        shift_alert(2, T0 + 100),
        shift_alert(3, T0 + 300),
        shift_alert(4, T0 + 20),
    ];
    let baseline_alerts = [
        shift_alert(1, T0 + 200),
        shift_alert(2, T0 + 100),
        shift_alert(3, T0 + 150),
        shift_alert(5, T0 + 30),
    ];
    let run = score(&truth, &run_alerts, Some(&timeline), &config);
    let baseline = score(&truth, &baseline_alerts, Some(&timeline), &config);

    let paired = compare_delays(&run, &baseline).expect("same truth");
    assert_eq!(paired.both, 3);
    assert_eq!(paired.run_only, 1);
    assert_eq!(paired.baseline_only, 1);
    assert_eq!((paired.earlier, paired.same, paired.later), (1, 1, 1));
    // Run delays on shifts 1-3: 50, 100, 300 s; baseline: 200, 100, 150 s.
    assert_eq!(paired.run.secs_median, Some(100));
    assert_eq!(paired.run.secs_p90, Some(300));
    assert_eq!(paired.baseline.secs_median, Some(150));
    assert_eq!(paired.baseline.secs_p90, Some(200));
    // One event every 10 s from the onset, both ends included.
    assert_eq!(paired.run.events_median, Some(11));
    assert_eq!(paired.baseline.events_median, Some(16));
}

#[test]
fn paired_delays_reject_other_truth() {
    let one = run(&[shift(1, T0)], &[]);
    let two = run(&[shift(1, T0), shift(2, T0)], &[]);
    assert_eq!(compare_delays(&one, &two), None);
}

#[test]
fn paired_delays_json_line() {
    let truth = [shift(1, T0)];
    let paired = compare_delays(
        &run(&truth, &[shift_alert(1, T0 + 50)]),
        &run(&truth, &[shift_alert(1, T0 + 100)]),
    )
    .expect("same truth");
    let value: Value = serde_json::from_str(&paired.to_json_line()).expect("valid JSON");
    let object = &value["paired_delays"];
    assert_eq!(object["both"], 1);
    assert_eq!(object["earlier"], 1);
    assert_eq!(object["run"]["secs_median"], 50);
    assert_eq!(object["baseline"]["secs_median"], 100);
    assert_eq!(object["run"]["events_median"], Value::Null);
}
