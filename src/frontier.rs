//! Event time of a live run fed by many sources (TCP connections).
//!
//! Each source keeps its own [`Watermark`]: its newest event time less the allowed
//! out-of-orderness. The input frontier of the whole run is the minimum over the sources that
//! are not idle, so a slow source is never made late by a fast one. A source whose watermark
//! has not started yet (before its eighth event, see [`Watermark`]) holds the frontier where it
//! is, because its first events may be old, or far in the future and followed by older ones.
//!
//! A source that delivers no event for the idle timeout stops holding the frontier back. When
//! every source is idle (or none is connected), event time advances by processing time: the
//! newest watermark seen plus the wall-clock time since the last event arrived. It never
//! jumps to the end of time, and it does not move at all before the first event.
//!
//! The frontier only moves forward. An event behind its source's watermark, or behind the
//! frontier, is late.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ingest::Watermark;

/// Per-source watermarks, idleness and the input frontier that follows from them.
#[derive(Debug)]
pub struct InputFrontier {
    out_of_orderness_ms: i64,
    max_future_skew_ms: i64,
    idle_timeout: Duration,
    sources: BTreeMap<u64, SourceClock>,
    /// The frontier in Unix milliseconds; never decreases.
    current: u64,
    /// Highest watermark of any source so far, the base of the processing-time advance.
    newest_watermark: Option<u64>,
    /// Wall-clock time of the last event of any source.
    last_event_at: Option<Instant>,
    /// Before this instant the frontier does not move, so that clients connecting together at
    /// startup all register before one of them moves event time past the others' first events.
    hold_until: Option<Instant>,
}

#[derive(Debug)]
struct SourceClock {
    watermark: Watermark,
    last_active: Instant,
    idle: bool,
}

/// Changes made by [`InputFrontier::advance`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advance {
    /// The frontier after the call, in Unix milliseconds.
    pub frontier: u64,
    /// Sources that became idle in this call.
    pub became_idle: Vec<u64>,
    /// Whether event time now advances by processing time because no source is active.
    pub by_processing_time: bool,
}

impl InputFrontier {
    /// Creates a frontier with the lateness tolerances (as in [`Watermark::new`]) and the
    /// idle timeout.
    pub fn new(out_of_orderness_ms: i64, max_future_skew_ms: i64, idle_timeout: Duration) -> Self {
        InputFrontier {
            out_of_orderness_ms,
            max_future_skew_ms,
            idle_timeout,
            sources: BTreeMap::new(),
            current: 0,
            newest_watermark: None,
            last_event_at: None,
            hold_until: None,
        }
    }

    /// Holds the frontier in place until `until`.
    pub fn hold_until(mut self, until: Instant) -> Self {
        self.hold_until = Some(until);
        self
    }

    /// Ends the startup hold, so the next [`advance`](Self::advance) may move the frontier.
    /// Returns whether the hold was still in force at `now`.
    pub fn end_hold(&mut self, now: Instant) -> bool {
        let holding = self.hold_until.is_some_and(|until| now < until);
        self.hold_until = None;
        holding
    }

    /// Returns the frontier in Unix milliseconds (0 before the first event).
    pub fn current(&self) -> u64 {
        self.current
    }

    /// Returns the number of sources that are open and not idle.
    pub fn active_sources(&self) -> usize {
        self.sources.values().filter(|source| !source.idle).count()
    }

    /// Returns the number of open sources.
    pub fn open_sources(&self) -> usize {
        self.sources.len()
    }

    /// Registers a new source. Until its watermark starts it holds the frontier in place,
    /// unless it stays silent for the idle timeout.
    pub fn open(&mut self, source: u64, now: Instant) {
        let clock = self.new_source(now);
        self.sources.insert(source, clock);
    }

    fn new_source(&self, now: Instant) -> SourceClock {
        SourceClock {
            watermark: Watermark::new(self.out_of_orderness_ms, self.max_future_skew_ms),
            last_active: now,
            idle: false,
        }
    }

    /// Removes a closed source; it no longer holds the frontier.
    pub fn close(&mut self, source: u64) {
        self.sources.remove(&source);
    }

    /// Returns the watermark of a source in Unix milliseconds, or 0 before it starts.
    pub fn source_watermark(&self, source: u64) -> u64 {
        self.sources
            .get(&source)
            .map_or(0, |clock| clock.watermark.current())
    }

    /// Takes an event of `source` into account. Returns `Some(bound)` when the event is late,
    /// with the watermark or frontier (Unix milliseconds) that it is behind.
    pub fn observe(&mut self, source: u64, ts_ms: i64, now: Instant) -> Option<u64> {
        self.source_events(source, now).observe(ts_ms)
    }

    /// Returns the observer of a batch of events that `source` delivered at `now`, which
    /// looks the source up once instead of once per event. Opens the source when it is new.
    pub fn source_events(&mut self, source: u64, now: Instant) -> SourceEvents<'_> {
        if !self.sources.contains_key(&source) {
            self.open(source, now);
        }
        let clock = self.sources.get_mut(&source).expect("opened above");
        clock.last_active = now;
        clock.idle = false;
        self.last_event_at = Some(now);
        SourceEvents {
            clock,
            frontier: self.current,
            newest_watermark: &mut self.newest_watermark,
        }
    }

    /// Marks sources silent for the idle timeout as idle and moves the frontier to what the
    /// active sources allow, or by processing time when none is active.
    pub fn advance(&mut self, now: Instant) -> Advance {
        let mut advance = Advance::default();
        for (&id, clock) in self.sources.iter_mut() {
            if !clock.idle && now.saturating_duration_since(clock.last_active) >= self.idle_timeout
            {
                clock.idle = true;
                advance.became_idle.push(id);
            }
        }
        let mut active = self.sources.values().filter(|clock| !clock.idle).peekable();
        let candidate = if active.peek().is_some() {
            let mut lowest = Some(u64::MAX);
            for clock in active {
                lowest = match clock.watermark.is_started() {
                    true => lowest.map(|low| low.min(clock.watermark.current())),
                    // A source before its watermark starts may still send old events: hold
                    // the frontier.
                    false => None,
                };
            }
            lowest.unwrap_or(self.current)
        } else {
            advance.by_processing_time = true;
            match (self.newest_watermark, self.last_event_at) {
                (Some(watermark), Some(at)) => {
                    let elapsed = now.saturating_duration_since(at).as_millis() as u64;
                    watermark.saturating_add(elapsed)
                }
                _ => self.current,
            }
        };
        if self.hold_until.is_none_or(|until| now >= until) {
            self.current = self.current.max(candidate);
        }
        advance.frontier = self.current;
        advance
    }

    /// Returns how long the caller may wait before [`advance`](Self::advance) can change
    /// something without a new event: the next idle deadline, or `max` when none is sooner.
    pub fn next_deadline(&self, now: Instant, max: Duration) -> Duration {
        self.sources
            .values()
            .filter(|clock| !clock.idle)
            .map(|clock| (clock.last_active + self.idle_timeout).saturating_duration_since(now))
            .min()
            .unwrap_or(max)
            .min(max)
    }
}

/// The events of one source in one batch, observed by [`InputFrontier::source_events`].
pub struct SourceEvents<'a> {
    clock: &'a mut SourceClock,
    /// The run's frontier, which does not move while a batch is observed.
    frontier: u64,
    newest_watermark: &'a mut Option<u64>,
}

impl SourceEvents<'_> {
    /// Takes the next event of the batch into account. Returns `Some(bound)` when the event
    /// is late, with the watermark or frontier (Unix milliseconds) that it is behind.
    pub fn observe(&mut self, ts_ms: i64) -> Option<u64> {
        if ts_ms < self.frontier as i64 {
            return Some(self.frontier);
        }
        let bound = self.clock.watermark.current();
        if self.clock.watermark.observe(ts_ms) {
            return Some(bound.max(self.frontier));
        }
        if !self.clock.watermark.is_started() {
            return None;
        }
        let watermark = self.clock.watermark.current();
        *self.newest_watermark = Some(
            self.newest_watermark
                .map_or(watermark, |newest| newest.max(watermark)),
        );
        None
    }

    /// Returns the source's watermark in Unix milliseconds, or 0 before it starts, as
    /// [`InputFrontier::source_watermark`] does.
    pub fn watermark(&self) -> u64 {
        self.clock.watermark.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::FAR_STREAK;

    const MINUTE: i64 = 60_000;

    fn frontier() -> (InputFrontier, Instant) {
        (
            InputFrontier::new(10 * MINUTE, 86_400_000, Duration::from_secs(30)),
            Instant::now(),
        )
    }

    /// Starts the watermark of `source` with `FAR_STREAK` events at `ts_ms`.
    fn start_source(clock: &mut InputFrontier, source: u64, ts_ms: i64, now: Instant) {
        for _ in 0..FAR_STREAK {
            assert_eq!(clock.observe(source, ts_ms, now), None);
        }
    }

    #[test]
    fn frontier_is_minimum_of_active_sources() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        clock.open(2, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        start_source(&mut clock, 2, 500 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 90 * MINUTE as u64);
    }

    #[test]
    fn ended_hold_lets_frontier_move() {
        let (clock, start) = frontier();
        let mut clock = clock.hold_until(start + Duration::from_secs(30));
        clock.open(1, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 0, "the hold is in force");
        assert!(clock.end_hold(start));
        assert_eq!(clock.advance(start).frontier, 90 * MINUTE as u64);
        assert!(!clock.end_hold(start), "the hold has already ended");
    }

    #[test]
    fn source_without_events_holds_frontier() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        clock.open(2, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 0);
        let later = start + Duration::from_secs(31);
        clock.observe(1, 101 * MINUTE, later);
        let advance = clock.advance(later);
        assert_eq!(advance.became_idle, vec![2]);
        assert_eq!(advance.frontier, 91 * MINUTE as u64);
    }

    #[test]
    fn idle_source_stops_holding_and_later_events_are_late() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        clock.open(2, start);
        start_source(&mut clock, 2, 10 * MINUTE, start);
        start_source(&mut clock, 1, 1000 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 0);
        let later = start + Duration::from_secs(20);
        clock.observe(1, 1001 * MINUTE, later);
        assert_eq!(clock.advance(later).frontier, 0, "source 2 is not idle yet");
        let idle = start + Duration::from_secs(31);
        assert_eq!(clock.advance(idle).frontier, 991 * MINUTE as u64);
        assert_eq!(
            clock.observe(2, 70 * MINUTE, idle),
            Some(991 * MINUTE as u64),
            "behind the frontier"
        );
    }

    #[test]
    fn all_idle_advances_by_processing_time_only() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 90 * MINUTE as u64);
        let idle = start + Duration::from_secs(40);
        let advance = clock.advance(idle);
        assert!(advance.by_processing_time);
        assert_eq!(advance.frontier, 90 * MINUTE as u64 + 40_000);
        let much_later = start + Duration::from_secs(100);
        assert_eq!(
            clock.advance(much_later).frontier,
            90 * MINUTE as u64 + 100_000
        );
    }

    #[test]
    fn no_events_never_moves_the_frontier() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        assert_eq!(clock.advance(start + Duration::from_secs(3600)).frontier, 0);
        clock.close(1);
        assert_eq!(clock.advance(start + Duration::from_secs(7200)).frontier, 0);
    }

    #[test]
    fn closed_source_releases_the_frontier() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        clock.open(2, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        start_source(&mut clock, 2, 200 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 90 * MINUTE as u64);
        clock.close(1);
        assert_eq!(clock.advance(start).frontier, 190 * MINUTE as u64);
    }

    #[test]
    fn frontier_never_moves_back() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        clock.advance(start);
        clock.open(2, start);
        start_source(&mut clock, 2, 95 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 90 * MINUTE as u64);
        assert_eq!(
            clock.observe(2, 80 * MINUTE, start),
            Some(90 * MINUTE as u64)
        );
    }

    #[test]
    fn batch_observer_matches_single_observe() {
        // Seven events start the watermark together with the first of the listed ones.
        let listed = [100, 130, 95, 80, 170, 120, 400, 389, 391];
        let times: Vec<i64> = std::iter::repeat_n(100, 7)
            .chain(listed)
            .map(|minutes| minutes * MINUTE)
            .collect();
        let (mut single, start) = frontier();
        let (mut batched, _) = frontier();
        single.open(1, start);
        batched.open(1, start);
        let one_by_one: Vec<_> = times
            .iter()
            .map(|&time| single.observe(1, time, start))
            .collect();
        let mut events = batched.source_events(1, start);
        let in_batch: Vec<_> = times.iter().map(|&time| events.observe(time)).collect();
        assert_eq!(events.watermark(), single.source_watermark(1));
        assert_eq!(in_batch, one_by_one);
        assert_eq!(
            one_by_one.iter().filter(|late| late.is_some()).count(),
            4,
            "95, 80, 120 and 389 are late"
        );
        assert_eq!(batched.advance(start), single.advance(start));
    }

    #[test]
    fn batch_observer_sees_frontier_as_late_bound() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        start_source(&mut clock, 1, 100 * MINUTE, start);
        clock.advance(start);
        let mut events = clock.source_events(2, start);
        assert_eq!(events.watermark(), 0, "no event of source 2 yet");
        assert_eq!(events.observe(85 * MINUTE), Some(90 * MINUTE as u64));
        for _ in 0..FAR_STREAK {
            assert_eq!(events.watermark(), 0, "source 2 has not started");
            assert_eq!(events.observe(95 * MINUTE), None);
        }
        assert_eq!(events.watermark(), 85 * MINUTE as u64);
    }

    #[test]
    fn far_future_first_event_leaves_frontier() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        let far_future = 99_999_999_999_000;
        assert_eq!(clock.observe(1, far_future, start), None);
        assert_eq!(clock.advance(start).frontier, 0);
        for minute in 0..2_000 {
            assert_eq!(clock.observe(1, (100 + minute) * MINUTE, start), None);
        }
        assert_eq!(clock.advance(start).frontier, 2_089 * MINUTE as u64);
    }

    #[test]
    fn unstarted_source_holds_frontier() {
        let (mut clock, start) = frontier();
        start_source(&mut clock, 1, 100 * MINUTE, start);
        assert_eq!(clock.advance(start).frontier, 90 * MINUTE as u64);
        for _ in 0..FAR_STREAK - 1 {
            assert_eq!(clock.observe(2, 200 * MINUTE, start), None);
        }
        assert_eq!(clock.observe(1, 150 * MINUTE, start), None);
        assert_eq!(
            clock.advance(start).frontier,
            90 * MINUTE as u64,
            "source 2 has 7 events, one short of starting"
        );
        assert_eq!(clock.observe(2, 200 * MINUTE, start), None);
        assert_eq!(clock.advance(start).frontier, 140 * MINUTE as u64);
    }

    #[test]
    fn unstarted_source_idle_advances_from_zero() {
        let (mut clock, start) = frontier();
        clock.observe(1, 100 * MINUTE, start);
        let idle = start + Duration::from_secs(40);
        let advance = clock.advance(idle);
        assert!(advance.by_processing_time);
        assert_eq!(
            advance.frontier, 0,
            "one event gives no watermark to advance from"
        );
    }

    #[test]
    fn deadline_is_next_idle_time() {
        let (mut clock, start) = frontier();
        clock.open(1, start);
        let wait = clock.next_deadline(start + Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(wait, Duration::from_secs(20));
        let none = InputFrontier::new(0, 0, Duration::from_secs(30));
        assert_eq!(
            none.next_deadline(start, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
