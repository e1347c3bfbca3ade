//! Scoring of a run's alerts against the ground truth of a labelled stream.
//!
//! The rules follow the data contract:
//!
//! - A truth shift `(u, t0)` is detected when an `interest_shift` alert for `u` has
//!   `t0 <= ts <= t0 + H`. The first such alert is a true positive (TP). Further alerts inside
//!   the same window are ignored, so they are neither TP nor false positive (FP).
//! - Every other `interest_shift` alert is a FP: alerts before `t0`, after `t0 + H`, and alerts
//!   for users without a shift.
//! - When one user has several shifts whose windows overlap, an alert inside any of the windows
//!   is never a FP. It is the TP of the earliest undetected shift whose window contains it, or
//!   ignored when all those shifts are already detected. Alerts are taken in time order, so a
//!   later shift cannot take an alert that an earlier, still open shift needs.
//! - The delay of a detected shift is `alert ts - t0` in seconds and, given a [`UserTimeline`],
//!   the number of the user's events with `t0 <= event ts <= alert ts` (both ends count).
//! - A decoy is a false alarm when an `interest_shift` alert for its user has
//!   `decoy ts <= ts <= decoy ts + H`. Seasonal decoys come as one record per affected user, so
//!   they are counted per user.
//! - `anomaly` alerts are scored with the same window rule against `burst` decoys only. The first
//!   anomaly alert in a burst's window is a hit, further ones in that window are ignored, and
//!   all other anomaly alerts are anomaly FPs.
//!
//! The truth file, the alert file and the events are separate files, so users match by
//! [`Id::join_key`]: the JSON string `"42"` and the JSON number `42` are one user, while
//! `"042"` and `"u42"` match only themselves. Large integer ids keep every digit, so
//! `9196877626998784` and `9196877626998785` stay apart.
//!
//! All timestamps here are Unix seconds.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;

use serde_json::{Map, Value};
use veer_models::alert::{id_from_json, round_to_four_decimals, AlertKind};
use veer_models::Id;

use crate::truth::{DecoyKind, TruthRecord};

pub mod paired;

/// Default horizon `H`: 3 days, in seconds.
pub const DEFAULT_HORIZON_SECS: i64 = 3 * 24 * 3600;

/// Minimum number of the user's events in `[t0, t0 + H]` for a shift to count towards the
/// detection ceiling.
// NOTE: a heuristic threshold. A detector that needs fewer or more events after the onset has a
// different true ceiling.
pub const CEILING_MIN_EVENTS: u64 = 3;

/// Decoy kinds in the order in which reports list them.
const DECOY_KINDS: [DecoyKind; 3] = [DecoyKind::OneOff, DecoyKind::Burst, DecoyKind::Seasonal];

/// An error while reading an alert or truth file.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A line that is not a valid record. `line` is 1-based.
    #[error("line {line}: {message}")]
    InvalidLine {
        /// 1-based line number.
        line: u64,
        /// Description of the problem with the line.
        message: String,
    },
    /// The reader failed, for example on invalid UTF-8.
    #[error("line {line}: read failed: {source}")]
    Read {
        /// 1-based number of the line being read.
        line: u64,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
}

/// The fields of an alert line that the scorer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoredAlert {
    /// The user id, exactly as the alert file wrote it.
    pub user: Id,
    /// `interest_shift` or `anomaly`.
    pub kind: AlertKind,
    /// Event time of the triggering event, in Unix seconds.
    pub ts: i64,
}

/// A torn last line of an alert file: bytes after the last newline that are not valid JSON
/// (or not UTF-8), as a run killed in the middle of a write leaves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornLine {
    /// 1-based line number.
    pub line: u64,
    /// Length of the line in bytes.
    pub bytes: u64,
}

impl TornLine {
    /// Logs a warning that the line of the alert file `path` was skipped.
    pub fn warn(&self, path: &std::path::Path) {
        tracing::warn!(
            path = %path.display(),
            line = self.line,
            bytes = self.bytes,
            skipped_lines = 1,
            "skipped a torn last line of the alert file: it has no newline and is not valid \
             JSON, as a run killed while writing leaves it"
        );
    }
}

/// Records read from an alert file, and the torn last line skipped, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertLines<T> {
    /// The alerts, in file order.
    pub alerts: Vec<T>,
    /// The last line, when it has no newline and is not valid JSON.
    pub torn_last_line: Option<TornLine>,
}

/// Reads alerts in the contract's JSON-lines form, skipping blank lines.
///
/// `user` may be a JSON number or string and keeps every digit. `kind` must be `interest_shift`
/// or `anomaly`, and `ts` must be an integer (a JSON number or a string of digits). Other fields
/// are not checked. The first invalid line stops reading with an error that names its number,
/// except a torn last line (see [`for_each_alert_line`]), which is skipped and returned.
pub fn read_alerts(reader: impl BufRead) -> Result<AlertLines<ScoredAlert>, EvalError> {
    let mut alerts = Vec::new();
    let torn_last_line = for_each_alert_line(reader, |line| {
        alerts.push(parse_alert_line(line)?);
        Ok(())
    })?;
    Ok(AlertLines {
        alerts,
        torn_last_line,
    })
}

/// Calls `parse` on every non-blank line of an alert file, adding the 1-based line number to
/// its errors.
///
/// A last line without a newline that is not valid JSON or not UTF-8 is not passed to `parse`
/// but returned, because a run killed while writing leaves such a line. A last line without a
/// newline that is valid JSON is parsed like any other line.
pub fn for_each_alert_line(
    reader: impl BufRead,
    parse: impl FnMut(&str) -> Result<(), String>,
) -> Result<Option<TornLine>, EvalError> {
    for_each_record(reader, true, parse)
}

/// Reads a truth file with [`TruthRecord::parse_line`], skipping blank lines.
///
/// The first invalid line stops reading with an error that names its number.
pub fn read_truth(reader: impl BufRead) -> Result<Vec<TruthRecord>, EvalError> {
    let mut records = Vec::new();
    for_each_record(reader, false, |line| {
        records.push(TruthRecord::parse_line(line)?);
        Ok(())
    })?;
    Ok(records)
}

/// Calls `parse` on every non-blank line, adding the 1-based line number to its errors. With
/// `skip_torn_end`, a torn last line is returned instead of parsed.
fn for_each_record(
    mut reader: impl BufRead,
    skip_torn_end: bool,
    mut parse: impl FnMut(&str) -> Result<(), String>,
) -> Result<Option<TornLine>, EvalError> {
    let mut bytes = Vec::new();
    let mut number = 0u64;
    loop {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .map_err(|source| EvalError::Read {
                line: number + 1,
                source,
            })?;
        if read == 0 {
            return Ok(None);
        }
        number += 1;
        let whole = bytes.last() == Some(&b'\n');
        if whole {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let torn = TornLine {
            line: number,
            bytes: read as u64,
        };
        let line = match std::str::from_utf8(&bytes) {
            Ok(line) => line,
            Err(_) if skip_torn_end && !whole => return Ok(Some(torn)),
            Err(error) => {
                return Err(EvalError::Read {
                    line: number,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
                })
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        if skip_torn_end
            && !whole
            && serde_json::from_str::<serde::de::IgnoredAny>(line).is_err()
        {
            return Ok(Some(torn));
        }
        parse(line).map_err(|message| EvalError::InvalidLine {
            line: number,
            message,
        })?;
    }
}

fn parse_alert_line(line: &str) -> Result<ScoredAlert, String> {
    parse_alert_fields(line).map(|(alert, _)| alert)
}

/// Parses one alert line into its required fields (`user`, `kind`, `ts`) and the whole JSON
/// object, from which callers read the optional fields they need.
pub fn parse_alert_fields(line: &str) -> Result<(ScoredAlert, Map<String, Value>), String> {
    let value: Value =
        serde_json::from_str(line).map_err(|error| format!("invalid JSON: {error}"))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".into());
    };

    let user = object
        .get("user")
        .and_then(id_from_json)
        .ok_or("missing or invalid `user`: expected a number or a string")?;

    let kind_name = object.get("kind").and_then(Value::as_str);
    let kind = kind_name.and_then(AlertKind::parse).ok_or_else(|| {
        format!("invalid alert kind {kind_name:?}: expected \"interest_shift\" or \"anomaly\"")
    })?;

    let ts = object
        .get("ts")
        .and_then(|value| value.as_i64().or_else(|| value.as_str()?.parse().ok()))
        .ok_or("missing or invalid `ts`: expected integer Unix seconds")?;

    Ok((ScoredAlert { user, kind, ts }, object))
}

/// Sorted event times of each user, used to count events between a shift's onset and its alert.
///
/// Users are keyed by [`Id::join_key`], so the truth's `42` finds the events of `"42"`.
#[derive(Clone, Debug, Default)]
pub struct UserTimeline {
    times: HashMap<Id, Vec<i64>>,
}

impl UserTimeline {
    /// Builds the timeline from `(user, event ts in Unix seconds)` pairs in any order.
    ///
    /// Only users that appear in the truth file matter to [`score`], so a caller with a large
    /// stream can filter the pairs by [`truth_users`] first to save memory, comparing each
    /// user's [`Id::join_key`].
    pub fn new(events: impl IntoIterator<Item = (Id, i64)>) -> UserTimeline {
        let mut times: HashMap<Id, Vec<i64>> = HashMap::new();
        for (user, ts) in events {
            let key = match user.join_key() {
                Cow::Borrowed(_) => user,
                Cow::Owned(key) => key,
            };
            times.entry(key).or_default().push(ts);
        }
        for list in times.values_mut() {
            list.sort_unstable();
        }
        UserTimeline { times }
    }

    /// Counts the user's events with `start <= ts <= end`. Unknown users have none.
    pub fn count_between(&self, user: &Id, start: i64, end: i64) -> u64 {
        let Some(list) = self.times.get(&*user.join_key()) else {
            return 0;
        };
        if end < start {
            return 0;
        }
        let first = list.partition_point(|&ts| ts < start);
        let past_last = list.partition_point(|&ts| ts <= end);
        (past_last - first) as u64
    }

    /// Returns the number of user keys with at least one event.
    pub fn user_count(&self) -> usize {
        self.times.len()
    }
}

impl FromIterator<(Id, i64)> for UserTimeline {
    fn from_iter<I: IntoIterator<Item = (Id, i64)>>(events: I) -> Self {
        UserTimeline::new(events)
    }
}

/// Returns the [`Id::join_key`] of every user named by a truth record, shift or decoy.
pub fn truth_users(truth: &[TruthRecord]) -> std::collections::HashSet<Id> {
    truth
        .iter()
        .map(|record| record.user().join_key().into_owned())
        .collect()
}

/// Settings of the scorer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalConfig {
    /// Horizon `H` in seconds: how long after a shift's onset, or a decoy's time, an alert still
    /// counts. A negative horizon matches no alert.
    pub horizon_secs: i64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            horizon_secs: DEFAULT_HORIZON_SECS,
        }
    }
}

/// False alarms on the decoys of one kind.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoyScore {
    /// The decoy kind scored.
    pub kind: DecoyKind,
    /// Number of decoy records of this kind.
    pub count: usize,
    /// Decoys followed by an `interest_shift` alert for their user within the horizon.
    pub false_alarms: usize,
    /// `false_alarms / count`, or `None` when there are no decoys of this kind.
    pub rate: Option<f64>,
}

/// Scores of `anomaly` alerts against `burst` decoys.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyScore {
    /// Number of `burst` decoys.
    pub bursts: usize,
    /// Bursts with an anomaly alert in their window.
    pub hits: usize,
    /// Number of `anomaly` alerts.
    pub alerts: usize,
    /// Anomaly alerts outside every burst window.
    pub fp: usize,
    /// Further anomaly alerts inside windows of bursts that already had a hit.
    pub ignored: usize,
    /// `hits / (hits + fp)`, with the same conventions as [`Score::precision`].
    pub precision: Option<f64>,
    /// `hits / bursts`, or `None` without bursts.
    pub recall: Option<f64>,
}

/// Delay of one detected shift, from its onset to the alert that detected it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShiftDelay {
    /// Seconds from the onset to the alert.
    pub secs: i64,
    /// The user's events from the onset to the alert, both ends included, or `None` without a
    /// timeline.
    pub events: Option<u64>,
}

/// The result of scoring one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// Horizon `H` that the score used, in seconds.
    pub horizon_secs: i64,
    /// Number of `interest_shift` truth records.
    pub shifts: usize,
    /// Shifts with an `interest_shift` alert in their window.
    pub detected: usize,
    /// Number of `interest_shift` alerts.
    pub alerts: usize,
    /// True positives: the first alert of each detected shift, so always equal to `detected`.
    pub tp: usize,
    /// False positives: `interest_shift` alerts outside every shift window of their user.
    pub fp: usize,
    /// Further alerts inside windows of shifts that were already detected.
    pub ignored: usize,
    /// `tp / (tp + fp)`. Without any alert it is 0 when there are shifts (nothing was found) and
    /// `None` when there are none (nothing to measure).
    pub precision: Option<f64>,
    /// `detected / shifts`, or `None` without shifts.
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall, 0 when both are 0, `None` when either is `None`.
    pub f1: Option<f64>,
    /// Delay of each shift, in truth-file order, or `None` when it was not detected.
    pub shift_delays: Vec<Option<ShiftDelay>>,
    /// Delay in events of each detected shift, in truth-file order. Empty without a timeline.
    pub delay_events: Vec<u64>,
    /// Delay in seconds of each detected shift, in truth-file order.
    pub delay_secs: Vec<i64>,
    /// Nearest-rank median of `delay_events`, `None` when it is empty.
    pub delay_events_median: Option<u64>,
    /// Nearest-rank 90th percentile of `delay_events`, `None` when it is empty.
    pub delay_events_p90: Option<u64>,
    /// Nearest-rank median of `delay_secs`, `None` when it is empty.
    pub delay_secs_median: Option<i64>,
    /// Nearest-rank 90th percentile of `delay_secs`, `None` when it is empty.
    pub delay_secs_p90: Option<i64>,
    /// One entry per decoy kind, in the order one_off, burst, seasonal.
    pub decoys: Vec<DecoyScore>,
    /// Scores of `anomaly` alerts against `burst` decoys.
    pub anomaly: AnomalyScore,
    /// Share of shifts with at least [`CEILING_MIN_EVENTS`] of the user's events in
    /// `[t0, t0 + H]`, an estimate of the best recall an event-driven detector can reach.
    /// `None` without a timeline or without shifts.
    pub ceiling: Option<f64>,
}

/// Returns the value at the nearest rank `ceil(percent / 100 * n)` of the values, or `None` when
/// there are none.
///
/// The result is always one of the values, never an interpolation. The median of an even count
/// is therefore the lower of the two middle values.
///
/// ```
/// use veer::eval::percentile_nearest_rank;
/// assert_eq!(percentile_nearest_rank(&[4, 1, 3, 2], 50), Some(2));
/// assert_eq!(percentile_nearest_rank(&[4, 1, 3, 2], 90), Some(4));
/// assert_eq!(percentile_nearest_rank::<u64>(&[], 50), None);
/// ```
pub fn percentile_nearest_rank<T: Copy + Ord>(values: &[T], percent: u32) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let count = sorted.len() as u64;
    let rank = (u64::from(percent.min(100)) * count).div_ceil(100).max(1);
    Some(sorted[(rank - 1) as usize])
}

/// Outcome of matching alerts to windows `[start, start + H]`.
struct Matching {
    /// Time of the alert matched to each window, by window index.
    first_alert: Vec<Option<i64>>,
    false_positives: usize,
    ignored: usize,
}

/// Matches each user's alerts, in time order, to the windows of that user.
///
/// An alert goes to the earliest unmatched window that contains it. It is ignored when every
/// window that contains it is already matched, and a false positive when no window contains it.
/// Because all windows have the same length, taking windows by start time is the same as taking
/// them by end time, which maximises the number of matched windows.
fn match_alerts(
    windows: &[(Cow<'_, Id>, i64)],
    alert_times: &AlertTimes<'_>,
    horizon: i64,
) -> Matching {
    let mut windows_by_user: HashMap<&Id, Vec<usize>> = HashMap::new();
    for (index, (user, _)) in windows.iter().enumerate() {
        windows_by_user.entry(&**user).or_default().push(index);
    }
    for indices in windows_by_user.values_mut() {
        indices.sort_by_key(|&index| (windows[index].1, index));
    }

    let mut matching = Matching {
        first_alert: vec![None; windows.len()],
        false_positives: 0,
        ignored: 0,
    };
    for (user, times) in alert_times {
        let user_windows = windows_by_user.get(&**user).map_or(&[][..], Vec::as_slice);
        for &ts in times {
            let mut inside_any = false;
            let mut matched = false;
            for &index in user_windows {
                let start = windows[index].1;
                if start > ts {
                    break;
                }
                if ts > start.saturating_add(horizon) {
                    continue;
                }
                inside_any = true;
                if matching.first_alert[index].is_none() {
                    matching.first_alert[index] = Some(ts);
                    matched = true;
                    break;
                }
            }
            if matched {
                continue;
            }
            if inside_any {
                matching.ignored += 1;
            } else {
                matching.false_positives += 1;
            }
        }
    }
    matching
}

/// Alert times by the user's [`Id::join_key`].
type AlertTimes<'a> = HashMap<Cow<'a, Id>, Vec<i64>>;

/// Groups the alert times of one kind by user key, each list sorted.
fn alert_times_by_user(alerts: &[ScoredAlert], kind: AlertKind) -> AlertTimes<'_> {
    let mut times: AlertTimes<'_> = HashMap::new();
    for alert in alerts.iter().filter(|alert| alert.kind == kind) {
        times
            .entry(alert.user.join_key())
            .or_default()
            .push(alert.ts);
    }
    for list in times.values_mut() {
        list.sort_unstable();
    }
    times
}

/// Returns `numerator / denominator`, or `None` when the denominator is 0.
fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Returns precision and recall of `matched` windows out of `windows` with `false_positives`.
fn precision_recall(
    matched: usize,
    false_positives: usize,
    windows: usize,
) -> (Option<f64>, Option<f64>) {
    let precision = match matched + false_positives {
        0 if windows > 0 => Some(0.0),
        0 => None,
        claimed => Some(matched as f64 / claimed as f64),
    };
    (precision, ratio(matched, windows))
}

fn harmonic_mean(precision: Option<f64>, recall: Option<f64>) -> Option<f64> {
    let (precision, recall) = (precision?, recall?);
    if precision + recall == 0.0 {
        return Some(0.0);
    }
    Some(2.0 * precision * recall / (precision + recall))
}

/// Scores alerts against the truth records with the rules of the module documentation.
///
/// Without a timeline, `delay_events` stays empty and `ceiling` is `None`.
pub fn score(
    truth: &[TruthRecord],
    alerts: &[ScoredAlert],
    timeline: Option<&UserTimeline>,
    config: &EvalConfig,
) -> Score {
    let horizon = config.horizon_secs;
    let shift_alerts = alert_times_by_user(alerts, AlertKind::InterestShift);
    let anomaly_alerts = alert_times_by_user(alerts, AlertKind::Anomaly);

    let shifts: Vec<(Cow<'_, Id>, i64)> = truth
        .iter()
        .filter_map(|record| match record {
            TruthRecord::InterestShift { user, onset_ts, .. } => {
                Some((user.join_key(), *onset_ts))
            }
            TruthRecord::Decoy { .. } => None,
        })
        .collect();
    let matching = match_alerts(&shifts, &shift_alerts, horizon);

    let shift_delays: Vec<Option<ShiftDelay>> = shifts
        .iter()
        .zip(&matching.first_alert)
        .map(|((user, onset), first_alert)| {
            let alert_ts = (*first_alert)?;
            Some(ShiftDelay {
                secs: alert_ts - onset,
                events: timeline.map(|timeline| timeline.count_between(user, *onset, alert_ts)),
            })
        })
        .collect();
    let delay_secs: Vec<i64> = shift_delays
        .iter()
        .flatten()
        .map(|delay| delay.secs)
        .collect();
    let delay_events: Vec<u64> = shift_delays
        .iter()
        .flatten()
        .filter_map(|delay| delay.events)
        .collect();

    let detected = delay_secs.len();
    let (precision, recall) = precision_recall(detected, matching.false_positives, shifts.len());

    let ceiling = timeline.and_then(|timeline| {
        let reachable = shifts
            .iter()
            .filter(|(user, onset)| {
                let end = onset.saturating_add(horizon);
                timeline.count_between(user, *onset, end) >= CEILING_MIN_EVENTS
            })
            .count();
        ratio(reachable, shifts.len())
    });

    Score {
        horizon_secs: horizon,
        shifts: shifts.len(),
        detected,
        alerts: shift_alerts.values().map(Vec::len).sum(),
        tp: detected,
        fp: matching.false_positives,
        ignored: matching.ignored,
        precision,
        recall,
        f1: harmonic_mean(precision, recall),
        delay_events_median: percentile_nearest_rank(&delay_events, 50),
        delay_events_p90: percentile_nearest_rank(&delay_events, 90),
        delay_secs_median: percentile_nearest_rank(&delay_secs, 50),
        delay_secs_p90: percentile_nearest_rank(&delay_secs, 90),
        shift_delays,
        delay_events,
        delay_secs,
        decoys: score_decoys(truth, &shift_alerts, horizon),
        anomaly: score_anomalies(truth, &anomaly_alerts, horizon),
        ceiling,
    }
}

/// Counts, per decoy kind, the decoys followed by an alert within the horizon.
fn score_decoys(
    truth: &[TruthRecord],
    shift_alerts: &AlertTimes<'_>,
    horizon: i64,
) -> Vec<DecoyScore> {
    DECOY_KINDS
        .iter()
        .map(|&kind| {
            let mut count = 0;
            let mut false_alarms = 0;
            for record in truth {
                let TruthRecord::Decoy {
                    user, decoy, ts, ..
                } = record
                else {
                    continue;
                };
                if *decoy != kind {
                    continue;
                }
                count += 1;
                let times = shift_alerts
                    .get(&*user.join_key())
                    .map_or(&[][..], Vec::as_slice);
                // The first alert at or after the decoy decides, because the times are sorted.
                let first = times.partition_point(|&alert_ts| alert_ts < *ts);
                if times
                    .get(first)
                    .is_some_and(|&alert_ts| alert_ts <= ts.saturating_add(horizon))
                {
                    false_alarms += 1;
                }
            }
            DecoyScore {
                kind,
                count,
                false_alarms,
                rate: ratio(false_alarms, count),
            }
        })
        .collect()
}

fn score_anomalies(
    truth: &[TruthRecord],
    anomaly_alerts: &AlertTimes<'_>,
    horizon: i64,
) -> AnomalyScore {
    let bursts: Vec<(Cow<'_, Id>, i64)> = truth
        .iter()
        .filter_map(|record| match record {
            TruthRecord::Decoy {
                user,
                decoy: DecoyKind::Burst,
                ts,
                ..
            } => Some((user.join_key(), *ts)),
            _ => None,
        })
        .collect();
    let matching = match_alerts(&bursts, anomaly_alerts, horizon);
    let hits = matching
        .first_alert
        .iter()
        .filter(|alert| alert.is_some())
        .count();
    let (precision, recall) = precision_recall(hits, matching.false_positives, bursts.len());
    AnomalyScore {
        bursts: bursts.len(),
        hits,
        alerts: anomaly_alerts.values().map(Vec::len).sum(),
        fp: matching.false_positives,
        ignored: matching.ignored,
        precision,
        recall,
    }
}

/// Rounds to four decimals, writing `null` for `None` or a non-finite value.
fn json_ratio(value: Option<f64>) -> Value {
    value
        .filter(|value| value.is_finite())
        .and_then(|value| serde_json::Number::from_f64(round_to_four_decimals(value)))
        .map_or(Value::Null, Value::Number)
}

fn json_option<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

fn text_ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |value| format!("{value:.4}"))
}

fn text_option<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "n/a".to_string(), |value| value.to_string())
}

impl Score {
    /// Encodes the summary as one JSON object without the trailing newline.
    ///
    /// Keys keep a fixed order, ratios are rounded to four decimals, and undefined values are
    /// `null`. The per-shift delay lists are left out, and only their median and p90 appear.
    pub fn to_json_line(&self) -> String {
        let mut decoys = Map::new();
        for decoy in &self.decoys {
            let mut entry = Map::new();
            entry.insert("count".into(), decoy.count.into());
            entry.insert("false_alarms".into(), decoy.false_alarms.into());
            entry.insert("rate".into(), json_ratio(decoy.rate));
            decoys.insert(decoy.kind.name().into(), Value::Object(entry));
        }

        let mut anomaly = Map::new();
        anomaly.insert("bursts".into(), self.anomaly.bursts.into());
        anomaly.insert("hits".into(), self.anomaly.hits.into());
        anomaly.insert("alerts".into(), self.anomaly.alerts.into());
        anomaly.insert("fp".into(), self.anomaly.fp.into());
        anomaly.insert("ignored".into(), self.anomaly.ignored.into());
        anomaly.insert("precision".into(), json_ratio(self.anomaly.precision));
        anomaly.insert("recall".into(), json_ratio(self.anomaly.recall));

        let mut object = Map::new();
        object.insert("horizon_secs".into(), self.horizon_secs.into());
        object.insert("shifts".into(), self.shifts.into());
        object.insert("detected".into(), self.detected.into());
        object.insert("alerts".into(), self.alerts.into());
        object.insert("tp".into(), self.tp.into());
        object.insert("fp".into(), self.fp.into());
        object.insert("ignored".into(), self.ignored.into());
        object.insert("precision".into(), json_ratio(self.precision));
        object.insert("recall".into(), json_ratio(self.recall));
        object.insert("f1".into(), json_ratio(self.f1));
        object.insert(
            "delay_events_median".into(),
            json_option(self.delay_events_median),
        );
        object.insert(
            "delay_events_p90".into(),
            json_option(self.delay_events_p90),
        );
        object.insert(
            "delay_secs_median".into(),
            json_option(self.delay_secs_median),
        );
        object.insert("delay_secs_p90".into(), json_option(self.delay_secs_p90));
        object.insert("ceiling".into(), json_ratio(self.ceiling));
        object.insert("decoys".into(), Value::Object(decoys));
        object.insert("anomaly".into(), Value::Object(anomaly));
        Value::Object(object).to_string()
    }

    /// Formats the summary as an aligned text table, with `n/a` for undefined values.
    pub fn to_table(&self) -> String {
        let rows = [
            ("horizon (seconds)", self.horizon_secs.to_string()),
            ("shifts", self.shifts.to_string()),
            ("detected", self.detected.to_string()),
            ("interest_shift alerts", self.alerts.to_string()),
            ("true positives", self.tp.to_string()),
            ("false positives", self.fp.to_string()),
            ("ignored repeat alerts", self.ignored.to_string()),
            ("precision", text_ratio(self.precision)),
            ("recall", text_ratio(self.recall)),
            ("F1", text_ratio(self.f1)),
            (
                "delay median (events)",
                text_option(self.delay_events_median),
            ),
            ("delay p90 (events)", text_option(self.delay_events_p90)),
            (
                "delay median (seconds)",
                text_option(self.delay_secs_median),
            ),
            ("delay p90 (seconds)", text_option(self.delay_secs_p90)),
            ("detection ceiling", text_ratio(self.ceiling)),
            ("burst decoys", self.anomaly.bursts.to_string()),
            ("anomaly alerts", self.anomaly.alerts.to_string()),
            ("anomaly hits", self.anomaly.hits.to_string()),
            ("anomaly false positives", self.anomaly.fp.to_string()),
            ("anomaly ignored repeats", self.anomaly.ignored.to_string()),
            ("anomaly precision", text_ratio(self.anomaly.precision)),
            ("anomaly recall", text_ratio(self.anomaly.recall)),
        ];
        let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);

        let mut table = String::new();
        for (label, value) in rows {
            let _ = writeln!(table, "{label:<label_width$}  {value}");
        }

        table.push('\n');
        let _ = writeln!(
            table,
            "{:<10}  {:>8}  {:>12}  {:>8}",
            "decoy", "count", "false alarms", "rate"
        );
        for decoy in &self.decoys {
            let _ = writeln!(
                table,
                "{:<10}  {:>8}  {:>12}  {:>8}",
                decoy.kind.name(),
                decoy.count,
                decoy.false_alarms,
                text_ratio(decoy.rate)
            );
        }
        table
    }
}

/// Parses a duration such as `3d`, `12h`, `90m`, `45s` or a bare number of seconds.
///
/// Returns the duration in seconds. Negative, fractional and overflowing values are rejected
/// with a message that names the value.
///
/// ```
/// use veer::eval::parse_duration;
/// assert_eq!(parse_duration("3d"), Ok(259_200));
/// assert_eq!(parse_duration("90m"), Ok(5_400));
/// assert!(parse_duration("3 days").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: expected a whole number with an optional unit s, m, h \
             or d, such as 3d, 12h, 90m, 45s or 259200 (seconds)"
        )
    };
    let trimmed = text.trim();
    let (digits, unit_secs) = match trimmed.char_indices().last() {
        Some((index, 's')) => (&trimmed[..index], 1),
        Some((index, 'm')) => (&trimmed[..index], 60),
        Some((index, 'h')) => (&trimmed[..index], 3_600),
        Some((index, 'd')) => (&trimmed[..index], 86_400),
        _ => (trimmed, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    digits
        .parse::<i64>()
        .ok()
        .and_then(|count| count.checked_mul(unit_secs))
        .ok_or_else(|| {
            format!(
                "duration {text:?} is too large: the maximum is {} seconds",
                i64::MAX
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shift(user: u64, onset_ts: i64) -> TruthRecord {
        TruthRecord::InterestShift {
            user: user.into(),
            onset_ts,
            from: vec![],
            to: vec![],
        }
    }

    fn decoy(user: u64, decoy: DecoyKind, ts: i64) -> TruthRecord {
        TruthRecord::Decoy {
            user: user.into(),
            decoy,
            ts,
            categories: vec![],
        }
    }

    fn alert(user: u64, kind: AlertKind, ts: i64) -> ScoredAlert {
        ScoredAlert {
            user: user.into(),
            kind,
            ts,
        }
    }

    fn config(horizon_secs: i64) -> EvalConfig {
        EvalConfig { horizon_secs }
    }

    #[test]
    fn default_horizon_is_three_days() {
        assert_eq!(EvalConfig::default().horizon_secs, 259_200);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(percentile_nearest_rank(&values, 50), Some(50));
        assert_eq!(percentile_nearest_rank(&values, 90), Some(90));
        assert_eq!(percentile_nearest_rank(&values, 91), Some(100));
        assert_eq!(percentile_nearest_rank(&values, 0), Some(10));
        assert_eq!(percentile_nearest_rank(&[7], 90), Some(7));
        assert_eq!(percentile_nearest_rank(&[3, 1, 2], 50), Some(2));
    }

    #[test]
    fn timeline_counts_inclusive_bounds() {
        let user = Id::from(1);
        let timeline: UserTimeline = [
            (user.clone(), 30),
            (user.clone(), 10),
            (user.clone(), 20),
            (Id::from(2), 15),
        ]
        .into_iter()
        .collect();
        assert_eq!(timeline.count_between(&user, 10, 30), 3);
        assert_eq!(timeline.count_between(&user, 11, 29), 1);
        assert_eq!(timeline.count_between(&user, 31, 40), 0);
        assert_eq!(timeline.count_between(&user, 30, 10), 0);
        assert_eq!(timeline.count_between(&Id::from(3), 0, 100), 0);
        assert_eq!(timeline.user_count(), 2);
    }

    #[test]
    fn overlapping_shifts_share_alerts_in_order() {
        // Windows [100, 200] and [150, 250]. The alert at 160 lies in both and goes to the
        // earlier shift. The alert at 170 then detects the second shift.
        let truth = [shift(1, 100), shift(1, 150)];
        let alerts = [
            alert(1, AlertKind::InterestShift, 170),
            alert(1, AlertKind::InterestShift, 160),
        ];
        let result = score(&truth, &alerts, None, &config(100));
        assert_eq!(result.detected, 2);
        assert_eq!(result.fp, 0);
        assert_eq!(result.ignored, 0);
        assert_eq!(result.delay_secs, vec![60, 20]);
    }

    #[test]
    fn overlapping_shifts_third_alert_ignored() {
        let truth = [shift(1, 100), shift(1, 150)];
        let alerts = [
            alert(1, AlertKind::InterestShift, 160),
            alert(1, AlertKind::InterestShift, 170),
            alert(1, AlertKind::InterestShift, 240),
        ];
        let result = score(&truth, &alerts, None, &config(100));
        assert_eq!(result.detected, 2);
        assert_eq!(result.fp, 0);
        assert_eq!(result.ignored, 1);
    }

    #[test]
    fn later_window_does_not_take_earlier_alert() {
        // Alert 160 lies only in the first window [100, 200]. Alert 230 lies only in the second.
        let truth = [shift(1, 150), shift(1, 100)];
        let alerts = [
            alert(1, AlertKind::InterestShift, 230),
            alert(1, AlertKind::InterestShift, 160),
        ];
        let result = score(&truth, &alerts, None, &config(100));
        assert_eq!(result.detected, 2);
        assert_eq!(result.delay_secs, vec![80, 60]);
    }

    #[test]
    fn negative_horizon_matches_nothing() {
        let truth = [shift(1, 100)];
        let alerts = [alert(1, AlertKind::InterestShift, 100)];
        let result = score(&truth, &alerts, None, &config(-1));
        assert_eq!(result.detected, 0);
        assert_eq!(result.fp, 1);
    }

    #[test]
    fn decoy_alert_before_decoy_not_counted() {
        let truth = [decoy(1, DecoyKind::OneOff, 100)];
        let alerts = [
            alert(1, AlertKind::InterestShift, 99),
            alert(1, AlertKind::InterestShift, 201),
        ];
        let result = score(&truth, &alerts, None, &config(100));
        assert_eq!(result.decoys[0].count, 1);
        assert_eq!(result.decoys[0].false_alarms, 0);
    }

    #[test]
    fn alert_parse_rejects_float_ts() {
        let error = parse_alert_line(r#"{"user": 1, "kind": "anomaly", "ts": 1.5}"#).unwrap_err();
        assert!(error.contains("`ts`"), "{error}");
    }

    #[test]
    fn alert_parse_accepts_string_ts() {
        let parsed = parse_alert_line(r#"{"user": "u1", "kind": "anomaly", "ts": "100"}"#).unwrap();
        assert_eq!(
            parsed,
            ScoredAlert {
                user: Id::text("u1"),
                kind: AlertKind::Anomaly,
                ts: 100
            }
        );
    }

    #[test]
    fn duration_overflow_rejected() {
        let error = parse_duration("9223372036854775807d").unwrap_err();
        assert!(error.contains("9223372036854775807d"), "{error}");
    }
}
