//! The live view of a running worker: what each worker does between two dataflow steps
//! (publishing its counts into the shared [`Metrics`] and answering user queries), and the
//! read clock that turns alerts into event-to-alert latencies.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Select};
use veer_models::profile::UserProfile;
use veer_models::{Alert, Id};
use veer_operators::state::OrderState;
use veer_operators::{AlertCounter, DetectStats};

use crate::metrics::Metrics;
use crate::query::UserQuery;

/// Marks kept by a [`ReadClock`]; older ones are dropped first.
const READ_CLOCK_MARKS: usize = 1 << 16;

/// When the feeder handed events of each event time to the dataflow.
///
/// The feeder marks each batch with the newest event time sent so far and the instant it was
/// sent. An alert's read instant is that of the first mark whose newest event time reaches the
/// alert's time. Alert times have one-second resolution and out-of-order input may bring an
/// event after a newer one, so the instant found is never later than the true one, and the
/// latency computed from it is an upper bound.
#[derive(Debug, Default)]
pub struct ReadClock {
    marks: VecDeque<(i64, Instant)>,
}

impl ReadClock {
    /// Records that events up to `newest_ms` (event time, Unix milliseconds) were sent at `at`.
    pub fn mark(&mut self, newest_ms: i64, at: Instant) {
        if self
            .marks
            .back()
            .is_some_and(|(newest, _)| *newest >= newest_ms)
        {
            return;
        }
        if self.marks.len() == READ_CLOCK_MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back((newest_ms, at));
    }

    /// Returns when the first event at or after `event_ms` was sent, or `None` when no mark
    /// reaches it or its mark was already dropped.
    pub fn sent_at(&self, event_ms: i64) -> Option<Instant> {
        let index = self.marks.partition_point(|(newest, _)| *newest < event_ms);
        if index == 0 && self.marks.len() == READ_CLOCK_MARKS {
            // NOTE: the mark may have been dropped, so the oldest one would understate.
            return None;
        }
        self.marks.get(index).map(|(_, at)| *at)
    }
}

/// The read clock of worker 0, shared by its feeder and its alert sink (the same thread).
pub type SharedReadClock = Rc<RefCell<ReadClock>>;

/// Returns the sink observer that counts each alert and records its latency.
pub fn alert_observer(metrics: Arc<Metrics>, clock: SharedReadClock) -> Box<dyn FnMut(&Alert)> {
    Box::new(move |alert: &Alert| {
        metrics.add_alert(alert.kind);
        if let Some(sent) = clock.borrow().sent_at(alert.ts.saturating_mul(1000)) {
            metrics.record_latency(sent.elapsed());
        }
    })
}

/// Reads the profile of a user this worker owns, or `None` when it does not track the user.
pub type ProfileLookup = Box<dyn Fn(&Id) -> Option<UserProfile>>;

/// Per-worker work done between two dataflow steps: publishing counts, answering user queries
/// and marking the read clock.
pub struct WorkerHooks {
    metrics: Arc<Metrics>,
    order: Rc<RefCell<OrderState>>,
    evicted: Box<dyn Fn() -> u64>,
    stats: Rc<RefCell<DetectStats>>,
    published_duplicates: Cell<u64>,
    published_users: Cell<u64>,
    published_evicted: Cell<u64>,
    /// The read clock, on worker 0 only.
    pub clock: Option<SharedReadClock>,
    queries: Option<Receiver<UserQuery>>,
    lookup: Option<ProfileLookup>,
}

impl WorkerHooks {
    /// Creates the hooks of one worker over its operators' tallies; `evicted` returns the
    /// worker's count of evicted users. On worker 0, pass the alert tally so the sink reports
    /// each alert; other workers pass `None`.
    pub fn new(
        metrics: Arc<Metrics>,
        order: Rc<RefCell<OrderState>>,
        evicted: Box<dyn Fn() -> u64>,
        stats: Rc<RefCell<DetectStats>>,
        alerts: Option<&AlertCounter>,
    ) -> WorkerHooks {
        let clock = alerts.map(|tally| {
            let clock = SharedReadClock::default();
            tally.borrow_mut().on_alert = Some(alert_observer(metrics.clone(), clock.clone()));
            clock
        });
        WorkerHooks {
            metrics,
            order,
            evicted,
            stats,
            published_duplicates: Cell::new(0),
            published_users: Cell::new(0),
            published_evicted: Cell::new(0),
            clock,
            queries: None,
            lookup: None,
        }
    }

    /// Answers the queries of `inbox` with `lookup` from now on.
    pub fn serve_queries(&mut self, inbox: Option<Receiver<UserQuery>>, lookup: ProfileLookup) {
        self.queries = inbox;
        self.lookup = Some(lookup);
    }

    /// Waits up to `timeout` for the next message of `receiver`, answering user queries
    /// meanwhile.
    pub fn receive_timeout<T>(
        &self,
        receiver: &Receiver<T>,
        timeout: std::time::Duration,
    ) -> Result<T, RecvTimeoutError> {
        let Some(queries) = &self.queries else {
            return receiver.recv_timeout(timeout);
        };
        let deadline = Instant::now() + timeout;
        loop {
            let mut select = Select::new();
            let message = select.recv(receiver);
            select.recv(queries);
            let Ok(ready) = select.select_deadline(deadline) else {
                return Err(RecvTimeoutError::Timeout);
            };
            if ready.index() == message {
                return ready
                    .recv(receiver)
                    .map_err(|_| RecvTimeoutError::Disconnected);
            }
            if let Ok(query) = ready.recv(queries) {
                self.answer(query);
            }
        }
    }

    fn answer(&self, query: UserQuery) {
        let profile = self.lookup.as_ref().and_then(|lookup| lookup(&query.user));
        query.answer(profile);
    }

    /// Returns the run's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records that events up to `newest_ms` (event time, Unix milliseconds) were handed to
    /// the dataflow in a batch whose sending or reading began at `at`.
    pub fn mark_sent(&self, newest_ms: i64, at: Instant) {
        self.metrics.observe_event_time(newest_ms);
        if let Some(clock) = &self.clock {
            clock.borrow_mut().mark(newest_ms, at);
        }
    }

    /// Runs between two dataflow steps: answers waiting user queries and publishes the counts
    /// that changed since the last call.
    pub fn between_steps(&self) {
        if let Some(queries) = &self.queries {
            while let Ok(query) = queries.try_recv() {
                self.answer(query);
            }
        }
        let duplicates = self.order.borrow().duplicates;
        let new_duplicates = duplicates - self.published_duplicates.replace(duplicates);
        if new_duplicates > 0 {
            self.metrics.add_duplicates(new_duplicates);
        }
        let users = self.stats.borrow().users;
        let new_users = users - self.published_users.replace(users);
        if new_users > 0 {
            self.metrics.add_users(new_users);
        }
        let evicted = (self.evicted)();
        let new_evicted = evicted - self.published_evicted.replace(evicted);
        if new_evicted > 0 {
            self.metrics.add_evicted(new_evicted);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn read_clock_finds_first_mark_reaching_time() {
        let start = Instant::now();
        let mut clock = ReadClock::default();
        clock.mark(1_000, start);
        clock.mark(5_000, start + Duration::from_millis(10));
        clock.mark(4_000, start + Duration::from_millis(20));
        clock.mark(9_000, start + Duration::from_millis(30));
        assert_eq!(clock.sent_at(500), Some(start));
        assert_eq!(clock.sent_at(1_000), Some(start));
        assert_eq!(
            clock.sent_at(3_000),
            Some(start + Duration::from_millis(10))
        );
        assert_eq!(
            clock.sent_at(9_000),
            Some(start + Duration::from_millis(30))
        );
        assert_eq!(clock.sent_at(9_001), None);
    }

    #[test]
    fn read_clock_drops_oldest_marks() {
        let start = Instant::now();
        let mut clock = ReadClock::default();
        for index in 0..READ_CLOCK_MARKS as i64 + 10 {
            clock.mark(index * 10, start);
        }
        assert_eq!(clock.sent_at(0), None, "the mark of time 0 was dropped");
        assert!(clock.sent_at(200).is_some());
    }
}
