//! The fit schedule of the model path: where the bootstrap period starts, which windows train
//! each model version, and which version scores each window.
//!
//! Version 0 is fitted on the windows of the bootstrap period and scores the windows from its
//! end. With retraining, version `k` is fitted on the windows of the `bootstrap_ms` before
//! `end + k * retrain_every_ms` and scores the windows from that time on. Every boundary is an
//! event time derived from the events alone, so which version scores a window does not depend
//! on the number of workers or on how long a fit takes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::windows::training_rows_in;
use super::{ClosedWindow, ModelParams, ModelSet, TrainingRow};

/// Settings of a [`Schedule`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSettings {
    /// Length of the bootstrap period and of every later training span, in milliseconds.
    pub bootstrap_ms: u64,
    /// Length of the user windows, in milliseconds.
    pub window_ms: u64,
    /// Event time between two refits, in milliseconds, or `None` to fit once.
    pub retrain_every_ms: Option<u64>,
    /// Density that the start of the bootstrap period needs, in 0..=1: the first window must
    /// hold at least this fraction of the mean event count per window of the period it would
    /// start, and at least this fraction of that period's windows must have events. Earlier
    /// windows are stray events and are skipped.
    pub start_density: f64,
}

/// Boundaries of every model version, once the bootstrap period's start is known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Event time of the first event of the bootstrap period, in Unix milliseconds.
    pub start_ms: u64,
    pub settings: ScheduleSettings,
}

impl Schedule {
    /// Returns the event time from which version `version` scores windows.
    pub fn applies_from(&self, version: u64) -> u64 {
        let every = self.settings.retrain_every_ms.unwrap_or(0);
        self.start_ms
            .saturating_add(self.settings.bootstrap_ms)
            .saturating_add(version.saturating_mul(every))
    }

    /// Returns the event time from which the version after `version` scores windows, or `None`
    /// without retraining.
    pub fn applies_until(&self, version: u64) -> Option<u64> {
        self.settings
            .retrain_every_ms
            .map(|_| self.applies_from(version + 1))
    }

    /// Returns the start and end (exclusive) of the window starts that train `version`.
    /// Version 0 starts at the window that contains the bootstrap period's first event.
    pub fn training_span(&self, version: u64) -> (u64, u64) {
        let end = self.applies_from(version);
        if version == 0 {
            let window_ms = self.settings.window_ms.max(1);
            return (self.start_ms - self.start_ms % window_ms, end);
        }
        (end.saturating_sub(self.settings.bootstrap_ms), end)
    }

    /// Returns the version that scores a window starting at `start_ms`, or `None` for a window
    /// before the end of the bootstrap period.
    pub fn version_for(&self, start_ms: u64) -> Option<u64> {
        let first = self.applies_from(0);
        if start_ms < first {
            return None;
        }
        match self.settings.retrain_every_ms {
            Some(every) if every > 0 => Some((start_ms - first) / every),
            _ => Some(0),
        }
    }

    /// Returns the event time from which every window that trains `version`, and the window
    /// after each (a training row's target), has arrived at an operator that receives windows
    /// at or before their first event.
    pub fn complete_at(&self, version: u64) -> u64 {
        self.applies_from(version)
            .saturating_add(2 * self.settings.window_ms.max(1))
    }
}

/// Events and earliest event of one slot of `window_ms`, over all users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Slot {
    events: u64,
    first_ms: u64,
}

/// Finds the start of the bootstrap period from the windows of all users.
///
/// The period starts at the first event of the first slot (of the window length) that is dense
/// by [`ScheduleSettings::start_density`], judged over the `bootstrap_ms` from that slot on.
/// A few stray events days before the rest of a stream therefore do not start it. A slot is
/// judged once every window of the period it would start has arrived, which a caller states
/// with the bound passed to [`BootstrapStart::decide`]. At the end of the stream, a period is
/// judged up to the last slot with events.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootstrapStart {
    settings: ScheduleSettings,
    slots: BTreeMap<u64, Slot>,
    /// Slots before this one were judged too sparse.
    skipped_before: u64,
    /// Slots judged too sparse since the last [`BootstrapStart::take_skipped`].
    skipped: Vec<SkippedSlot>,
}

/// A window slot that was too sparse to start the bootstrap period, for the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedSlot {
    pub start_ms: u64,
    pub events: u64,
    /// Mean events per slot, and the fraction of slots with events, of the period it would
    /// have started.
    pub mean_events: f64,
    pub coverage: f64,
}

impl BootstrapStart {
    /// Creates a finder that has counted no window yet.
    pub fn new(settings: ScheduleSettings) -> BootstrapStart {
        BootstrapStart {
            settings,
            slots: BTreeMap::new(),
            skipped_before: 0,
            skipped: Vec::new(),
        }
    }

    /// Returns the slots skipped since the last call.
    pub fn take_skipped(&mut self) -> Vec<SkippedSlot> {
        std::mem::take(&mut self.skipped)
    }

    /// Counts one closed window.
    pub fn add(&mut self, window: &ClosedWindow) {
        let window_ms = self.settings.window_ms.max(1);
        let slot_start = window.start_ms - window.start_ms % window_ms;
        if slot_start < self.skipped_before {
            return;
        }
        let first_ms = window.first_ms.max(0) as u64;
        let slot = self.slots.entry(slot_start).or_insert(Slot {
            events: 0,
            first_ms,
        });
        slot.events += window.events;
        slot.first_ms = slot.first_ms.min(first_ms);
    }

    /// Returns the earliest event time at which the bootstrap period can end: no window that
    /// starts earlier is scored, whatever the decision. `None` before the first window.
    pub fn earliest_end(&self) -> Option<u64> {
        let (_, slot) = self.slots.first_key_value()?;
        Some(slot.first_ms.saturating_add(self.settings.bootstrap_ms))
    }

    /// Returns the schedule once the start is decided. `complete_before` is the event time
    /// before which every window (by first event) has arrived, or `None` at the end of the
    /// stream, where the start is decided with the windows there are.
    pub fn decide(&mut self, complete_before: Option<u64>) -> Option<Schedule> {
        let window_ms = self.settings.window_ms.max(1);
        let period_ms = self.settings.bootstrap_ms.max(window_ms);
        let data_end = self
            .slots
            .last_key_value()
            .map(|(last, _)| last + window_ms)?;
        loop {
            let (&candidate, slot) = self.slots.first_key_value()?;
            let mut period_end = candidate.saturating_add(period_ms);
            match complete_before {
                Some(bound) if bound < period_end => return None,
                Some(_) => {}
                None => period_end = period_end.min(data_end),
            }
            let slots_in_period = ((period_end - candidate) / window_ms).max(1) as f64;
            let (total, with_events) = self
                .slots
                .range(candidate..period_end)
                .fold((0u64, 0u64), |(total, count), (_, slot)| {
                    (total + slot.events, count + 1)
                });
            let mean = total as f64 / slots_in_period;
            let coverage = with_events as f64 / slots_in_period;
            let density = self.settings.start_density;
            if slot.events as f64 >= density * mean && coverage >= density {
                return Some(Schedule {
                    start_ms: slot.first_ms,
                    settings: self.settings.clone(),
                });
            }
            self.skipped.push(SkippedSlot {
                start_ms: candidate,
                events: slot.events,
                mean_events: mean,
                coverage,
            });
            self.slots.remove(&candidate);
            self.skipped_before = candidate + window_ms;
        }
    }
}

/// Builds the training rows of `version` from `windows`, which must be sorted by user and
/// start and include the window after each training window.
pub fn version_rows(
    windows: &[ClosedWindow],
    schedule: &Schedule,
    version: u64,
) -> Vec<TrainingRow> {
    let span = schedule.training_span(version);
    training_rows_in(windows, schedule.settings.window_ms.max(1), span)
}

/// Fits one model version on its training rows, or returns why none was fitted.
pub fn fit_version(
    rows: &[TrainingRow],
    params: &ModelParams,
    seed: u64,
) -> Result<ModelSet, String> {
    if rows.is_empty() {
        return Err("no training windows in the training span".to_string());
    }
    ModelSet::fit_with(rows, params, seed).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::{WindowFeatures, FEATURE_COUNT};
    use crate::Id;

    const HOUR: u64 = 3_600_000;

    fn settings(retrain: Option<u64>) -> ScheduleSettings {
        ScheduleSettings {
            bootstrap_ms: 24 * HOUR,
            window_ms: HOUR,
            retrain_every_ms: retrain,
            start_density: 0.25,
        }
    }

    fn window(user: u64, start_ms: u64, events: u64) -> ClosedWindow {
        ClosedWindow {
            user: Id::from(user),
            start_ms,
            first_ms: (start_ms + 60_000) as i64,
            last_ms: (start_ms + 120_000) as i64,
            events,
            burst: false,
            features: WindowFeatures::from_values(vec![0.0; FEATURE_COUNT]).unwrap(),
            updated_shares: Default::default(),
            shares_vs_previous: None,
            previous: None,
        }
    }

    #[test]
    fn versions_follow_retrain_interval() {
        let schedule = Schedule {
            start_ms: 1_000,
            settings: settings(Some(6 * HOUR)),
        };
        assert_eq!(schedule.applies_from(0), 1_000 + 24 * HOUR);
        assert_eq!(schedule.applies_from(2), 1_000 + 36 * HOUR);
        assert_eq!(schedule.applies_until(0), Some(1_000 + 30 * HOUR));
        assert_eq!(schedule.version_for(0), None);
        assert_eq!(schedule.version_for(1_000 + 24 * HOUR), Some(0));
        assert_eq!(schedule.version_for(1_000 + 30 * HOUR - 1), Some(0));
        assert_eq!(schedule.version_for(1_000 + 30 * HOUR), Some(1));
        assert_eq!(schedule.training_span(0), (0, 1_000 + 24 * HOUR));
        assert_eq!(
            schedule.training_span(1),
            (1_000 + 6 * HOUR, 1_000 + 30 * HOUR)
        );
    }

    #[test]
    fn single_fit_without_retraining() {
        let schedule = Schedule {
            start_ms: 0,
            settings: settings(None),
        };
        assert_eq!(schedule.applies_until(0), None);
        assert_eq!(schedule.version_for(100 * 24 * HOUR), Some(0));
    }

    #[test]
    fn stray_early_events_skipped() {
        let mut start = BootstrapStart::new(settings(None));
        // Two stray events three days early, then 40 events an hour.
        start.add(&window(1, 0, 1));
        start.add(&window(2, 5 * HOUR, 1));
        for hour in 72..120 {
            start.add(&window(3, hour * HOUR, 40));
        }
        assert_eq!(start.earliest_end(), Some(60_000 + 24 * HOUR));
        assert_eq!(
            start.decide(Some(10 * HOUR)),
            None,
            "the first period is not complete"
        );
        let schedule = start.decide(Some(200 * HOUR)).expect("decided");
        assert_eq!(schedule.start_ms, 72 * HOUR + 60_000);
    }

    #[test]
    fn isolated_stray_event_skipped() {
        let mut start = BootstrapStart::new(settings(None));
        // One event, then nothing for two months: its own period is empty but for itself.
        start.add(&window(1, 0, 1));
        for hour in 1_440..1_500 {
            start.add(&window(3, hour * HOUR, 40));
        }
        let schedule = start.decide(Some(1_500 * HOUR)).expect("decided");
        assert_eq!(schedule.start_ms, 1_440 * HOUR + 60_000);
    }

    #[test]
    fn dense_first_window_starts_period() {
        let mut start = BootstrapStart::new(settings(None));
        for hour in 0..48 {
            start.add(&window(1, hour * HOUR, if hour == 0 { 12 } else { 40 }));
        }
        let schedule = start.decide(Some(24 * HOUR)).expect("decided");
        assert_eq!(schedule.start_ms, 60_000);
    }

    #[test]
    fn stream_end_decides_on_what_arrived() {
        let mut start = BootstrapStart::new(settings(None));
        start.add(&window(1, 3 * HOUR, 2));
        assert_eq!(start.decide(Some(4 * HOUR)), None);
        let schedule = start.decide(None).expect("decided at the end");
        assert_eq!(schedule.start_ms, 3 * HOUR + 60_000);
    }
}
