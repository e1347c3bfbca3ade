//! Comparison of two runs' delays on the shifts that both detected.
//!
//! The scorer's median delay is taken over each run's own detected shifts, so a run that
//! finds more shifts, or other ones, can have a later median although it alerts no shift
//! later. [`compare_delays`] pairs the two runs shift by shift: it reports the delays of
//! both on the shifts that both detected, and counts the shifts that each run detected
//! earlier, at the same time, or later than the other.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{percentile_nearest_rank, Score, ShiftDelay};

/// Median and 90th percentile of one run's delays on the shifts that both runs detected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelaySummary {
    /// Nearest-rank median delay in events, `None` without shared shifts or a timeline.
    pub events_median: Option<u64>,
    /// Nearest-rank 90th percentile delay in events.
    pub events_p90: Option<u64>,
    /// Nearest-rank median delay in seconds, `None` without shared shifts.
    pub secs_median: Option<i64>,
    /// Nearest-rank 90th percentile delay in seconds.
    pub secs_p90: Option<i64>,
}

impl DelaySummary {
    fn of<'a>(delays: impl Iterator<Item = &'a ShiftDelay> + Clone) -> DelaySummary {
        let secs: Vec<i64> = delays.clone().map(|delay| delay.secs).collect();
        let events: Vec<u64> = delays.filter_map(|delay| delay.events).collect();
        DelaySummary {
            events_median: percentile_nearest_rank(&events, 50),
            events_p90: percentile_nearest_rank(&events, 90),
            secs_median: percentile_nearest_rank(&secs, 50),
            secs_p90: percentile_nearest_rank(&secs, 90),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "events_median": self.events_median,
            "events_p90": self.events_p90,
            "secs_median": self.secs_median,
            "secs_p90": self.secs_p90,
        })
    }
}

/// Delays of a run against a baseline run, shift by shift, on one truth file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairedDelays {
    /// Shifts that both runs detected.
    pub both: usize,
    /// Shifts that only the run detected.
    pub run_only: usize,
    /// Shifts that only the baseline detected.
    pub baseline_only: usize,
    /// Shared shifts that the run detected with a shorter delay in seconds than the baseline.
    pub earlier: usize,
    /// Shared shifts detected by both at the same alert time.
    pub same: usize,
    /// Shared shifts that the run detected with a longer delay in seconds than the baseline.
    pub later: usize,
    /// The run's delays on the shared shifts.
    pub run: DelaySummary,
    /// The baseline's delays on the shared shifts.
    pub baseline: DelaySummary,
}

/// Compares the delays of `run` with those of `baseline`, shift by shift.
///
/// Both scores must come from the same truth file, so that their shifts are in the same order.
/// Returns `None` when they have different numbers of shifts.
pub fn compare_delays(run: &Score, baseline: &Score) -> Option<PairedDelays> {
    if run.shift_delays.len() != baseline.shift_delays.len() {
        return None;
    }
    let mut paired = PairedDelays::default();
    let mut shared_run = Vec::new();
    let mut shared_baseline = Vec::new();
    for (run_delay, baseline_delay) in run.shift_delays.iter().zip(&baseline.shift_delays) {
        match (run_delay, baseline_delay) {
            (Some(run_delay), Some(baseline_delay)) => {
                paired.both += 1;
                match run_delay.secs.cmp(&baseline_delay.secs) {
                    Ordering::Less => paired.earlier += 1,
                    Ordering::Equal => paired.same += 1,
                    Ordering::Greater => paired.later += 1,
                }
                shared_run.push(*run_delay);
                shared_baseline.push(*baseline_delay);
            }
            (Some(_), None) => paired.run_only += 1,
            (None, Some(_)) => paired.baseline_only += 1,
            (None, None) => {}
        }
    }
    paired.run = DelaySummary::of(shared_run.iter());
    paired.baseline = DelaySummary::of(shared_baseline.iter());
    Some(paired)
}

impl PairedDelays {
    /// Encodes the comparison as one JSON object without the trailing newline, with `null`
    /// for undefined delays.
    pub fn to_json_line(&self) -> String {
        json!({
            "paired_delays": {
                "both": self.both,
                "run_only": self.run_only,
                "baseline_only": self.baseline_only,
                "earlier": self.earlier,
                "same": self.same,
                "later": self.later,
                "run": self.run.to_json(),
                "baseline": self.baseline.to_json(),
            }
        })
        .to_string()
    }

    /// Formats the comparison as an aligned text table, with `n/a` for undefined delays.
    pub fn to_table(&self) -> String {
        let pair = |run: Option<String>, baseline: Option<String>| {
            let text = |value: Option<String>| value.unwrap_or_else(|| "n/a".into());
            format!("{} / {}", text(run), text(baseline))
        };
        let events = |pick: fn(&DelaySummary) -> Option<u64>| {
            pair(
                pick(&self.run).map(|value| value.to_string()),
                pick(&self.baseline).map(|value| value.to_string()),
            )
        };
        let secs = |pick: fn(&DelaySummary) -> Option<i64>| {
            pair(
                pick(&self.run).map(|value| value.to_string()),
                pick(&self.baseline).map(|value| value.to_string()),
            )
        };
        let rows = [
            ("shifts detected by both", self.both.to_string()),
            ("detected only by this run", self.run_only.to_string()),
            (
                "detected only by the baseline",
                self.baseline_only.to_string(),
            ),
            (
                "earlier / same / later than baseline",
                format!("{} / {} / {}", self.earlier, self.same, self.later),
            ),
            (
                "shared delay median (events), run / baseline",
                events(|summary| summary.events_median),
            ),
            (
                "shared delay p90 (events), run / baseline",
                events(|summary| summary.events_p90),
            ),
            (
                "shared delay median (seconds), run / baseline",
                secs(|summary| summary.secs_median),
            ),
            (
                "shared delay p90 (seconds), run / baseline",
                secs(|summary| summary.secs_p90),
            ),
        ];
        let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        let mut table = String::new();
        for (label, value) in rows {
            let _ = writeln!(table, "{label:<label_width$}  {value}");
        }
        table
    }
}
