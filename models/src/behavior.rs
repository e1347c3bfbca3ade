//! A user's behaviour profile: decayed counts per behaviour and the current window's counts.

use serde::{Deserialize, Serialize};

use crate::event::{Behavior, Event};

/// Length of the per-user behaviour window, in seconds.
const PROFILE_WINDOW_SECS: i64 = 3600;

/// A user's behaviour profile, kept beside the interest reference.
///
/// Every tracked user has one, so it stores nothing that it can derive, and its counters are
/// narrow: the decayed counts and amount are `f32` (about seven significant digits), and the
/// window counts are `u16`, saturating at 65,535. No alert depends on them. The purchase count
/// is the decayed count of `buy` events. The current window is the one that contains the
/// latest event, because a user's events come in time order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BehaviorProfile {
    /// Decayed event counts per behaviour, indexed by [`Behavior::index`].
    pub rates: [f32; 6],
    /// Decayed purchase amount (price times one per `buy` event, where the input has prices).
    pub amount: f32,
    /// Event times of the user's first and latest events, in Unix seconds, both
    /// `NO_EVENT_TS` before the first event.
    first_ts: i64,
    last_ts: i64,
    /// Counts per behaviour in the hour-long window that contains the latest event.
    pub window_counts: [u16; 6],
}

/// Event time that marks a profile without events. No event has it, because event times are
/// Unix milliseconds divided by 1,000.
const NO_EVENT_TS: i64 = i64::MIN;

impl Default for BehaviorProfile {
    fn default() -> Self {
        BehaviorProfile {
            rates: [0.0; 6],
            amount: 0.0,
            first_ts: NO_EVENT_TS,
            last_ts: NO_EVENT_TS,
            window_counts: [0; 6],
        }
    }
}

impl BehaviorProfile {
    /// Adds one event, decaying the long-term counts by `decay` and starting a new window
    /// when the event falls outside the current one.
    pub(crate) fn record(&mut self, event: &Event, decay: f64) {
        let ts = event.ts_secs();
        let same_window = self
            .window_start()
            .is_some_and(|start| start == window_start(ts));
        let decay = decay as f32;
        for rate in &mut self.rates {
            *rate *= decay;
        }
        self.amount *= decay;
        let index = event.behavior.index();
        self.rates[index] += 1.0;
        if event.behavior == Behavior::Buy {
            self.amount += event.price.unwrap_or(0.0) as f32;
        }
        if self.first_ts == NO_EVENT_TS {
            self.first_ts = ts;
        }
        self.last_ts = ts;
        if !same_window {
            self.window_counts = [0; 6];
        }
        self.window_counts[index] = self.window_counts[index].saturating_add(1);
    }

    /// Returns the decayed number of purchases: the count of `buy` events in `rates`.
    pub fn purchases(&self) -> f64 {
        f64::from(self.rates[Behavior::Buy.index()])
    }

    /// Returns the start of the window of the latest event, in Unix seconds, the window that
    /// `window_counts` counts.
    pub fn window_start(&self) -> Option<i64> {
        self.last_ts().map(window_start)
    }

    /// Returns the share of each behaviour in the long-term counts.
    pub fn behavior_shares(&self) -> [f64; 6] {
        let total: f64 = self.rates.iter().copied().map(f64::from).sum();
        let mut shares = [0.0; 6];
        if total > 0.0 {
            for (share, rate) in shares.iter_mut().zip(self.rates) {
                *share = f64::from(rate) / total;
            }
        }
        shares
    }

    /// Returns the event time of the user's first event, in Unix seconds.
    pub fn first_ts(&self) -> Option<i64> {
        (self.first_ts != NO_EVENT_TS).then_some(self.first_ts)
    }

    /// Returns the event time of the user's latest event, in Unix seconds.
    pub fn last_ts(&self) -> Option<i64> {
        (self.last_ts != NO_EVENT_TS).then_some(self.last_ts)
    }

    /// Returns purchases per day over the user's active span (at least one day).
    pub fn purchases_per_day(&self) -> f64 {
        let span_days = match (self.first_ts(), self.last_ts()) {
            (Some(first), Some(last)) => ((last - first) as f64 / 86_400.0).max(1.0),
            _ => 1.0,
        };
        self.purchases() / span_days
    }
}

/// Returns the start of the behaviour window that contains `ts`, in Unix seconds.
fn window_start(ts: i64) -> i64 {
    ts - ts.rem_euclid(PROFILE_WINDOW_SECS)
}
