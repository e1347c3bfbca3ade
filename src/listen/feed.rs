//! The feed loop of a live run on worker 0: events from the TCP source go into the dataflow,
//! event time follows the per-connection watermarks ([`InputFrontier`]), alerts are flushed
//! after every step that wrote some, and the loop ends when a shutdown has stopped every
//! connection.
//!
//! Worker 0 parks between rounds (`step_or_park`), and reader threads unpark it when they send
//! a batch, so a run without data uses almost no CPU.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;

use crate::frontier::InputFrontier;
use crate::ingest::{DeadLetter, LineCounts};
use crate::listen::{ListenShared, ListenSource, SourceMessage};
use crate::metrics::SourceMetrics;
use crate::pipeline::Feeder;

/// Messages taken from the channel before the dataflow gets a step.
const MESSAGES_PER_ROUND: usize = 64;
/// Longest park of worker 0; event time advances by processing time at this granularity when
/// every source is idle.
const MAX_PARK: Duration = Duration::from_secs(1);

/// An alert writer that passes only whole lines to its output, when flushed.
///
/// A forced exit (second SIGINT) can then lose buffered alerts but never leaves a cut line.
#[derive(Clone)]
pub struct WholeLineWriter {
    inner: Arc<Mutex<WholeLines>>,
}

struct WholeLines {
    pending: Vec<u8>,
    out: Box<dyn Write + Send>,
}

impl WholeLineWriter {
    /// Wraps an output.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        WholeLineWriter {
            inner: Arc::new(Mutex::new(WholeLines {
                pending: Vec::new(),
                out,
            })),
        }
    }

    /// Writes every complete line received so far to the output and flushes it.
    pub fn flush_lines(&self) -> std::io::Result<()> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(end) = memchr::memrchr(b'\n', &inner.pending) else {
            return Ok(());
        };
        let WholeLines { pending, out } = &mut *inner;
        out.write_all(&pending[..=end])?;
        out.flush()?;
        pending.drain(..=end);
        Ok(())
    }
}

impl Write for WholeLineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_lines()
    }
}

/// What the live feed loop needs besides the dataflow handles.
pub struct LiveFeed<'a> {
    /// The bound TCP source, started by the loop.
    pub source: ListenSource,
    /// Destination of late records.
    pub dead_letter: &'a DeadLetter,
    /// Allowed out-of-orderness per connection, in milliseconds.
    pub out_of_orderness_ms: i64,
    /// Lead beyond which one event alone does not move a connection's watermark.
    pub max_future_skew_ms: i64,
    /// The alert output, flushed after each step.
    pub alerts: Option<WholeLineWriter>,
}

struct Source {
    label: Arc<str>,
    watermark: Arc<AtomicU64>,
    /// Newest event time the connection has sent, for the out-of-order count.
    newest_ms: i64,
}

/// Feeds the dataflow from the TCP source until a shutdown has ended every connection.
///
/// Returns the line counts of all connections.
pub(crate) fn feed(
    worker: &mut timely::worker::Worker,
    feeder: &mut Feeder<'_>,
    feed: LiveFeed<'_>,
) -> Result<LineCounts, String> {
    let shared = feed.source.shared.clone();
    let source_metrics = feeder.hooks.metrics().source("tcp");
    let mut published = Published::default();
    let settings = feed.source.settings().clone();
    crate::shutdown::wake_on_request(std::thread::current());
    let receiver = feed
        .source
        .start(std::thread::current(), feed.dead_letter.clone())
        .map_err(|error| format!("failed to start the TCP source: {error}"))?;
    tracing::info!(
        idle_timeout = ?settings.idle_timeout,
        startup_hold = ?settings.startup_hold,
        max_line_bytes = settings.limits.max_line_bytes,
        max_clients = settings.limits.max_clients,
        line_timeout = ?settings.limits.line_timeout,
        "live input started"
    );

    let mut clock = InputFrontier::new(
        feed.out_of_orderness_ms,
        feed.max_future_skew_ms,
        settings.idle_timeout,
    )
    .hold_until(Instant::now() + settings.startup_hold);
    let mut sources: HashMap<u64, Source> = HashMap::new();
    let mut buffered = Buffered::default();
    let mut received = 0u64;
    let mut late = 0u64;
    // Events older than an earlier line of the same connection, as a file run counts them
    // against earlier lines of the file.
    let mut out_of_order = 0u64;
    let mut by_processing_time = false;
    let mut status = Status::new(settings.limits.status_interval);

    loop {
        let mut got_messages = false;
        let mut disconnected = false;
        for _ in 0..MESSAGES_PER_ROUND {
            let message = match receiver.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            };
            got_messages = true;
            let now = Instant::now();
            match message {
                SourceMessage::Opened {
                    source,
                    label,
                    watermark,
                } => {
                    clock.open(source, now);
                    sources.insert(
                        source,
                        Source {
                            label,
                            watermark,
                            newest_ms: i64::MIN,
                        },
                    );
                }
                SourceMessage::Events {
                    source,
                    events,
                    read_at,
                } => {
                    received += events.len() as u64;
                    source_metrics.add_events(events.len() as u64);
                    let mut newest = i64::MIN;
                    let label = sources
                        .get(&source)
                        .map_or_else(|| Arc::from("tcp"), |known| known.label.clone());
                    let mut source_newest =
                        sources.get(&source).map_or(i64::MIN, |known| known.newest_ms);
                    let mut observed = clock.source_events(source, now);
                    for event in events {
                        if event.ts_ms < source_newest {
                            out_of_order += 1;
                        }
                        source_newest = source_newest.max(event.ts_ms);
                        if let Some(bound) = observed.observe(event.ts_ms) {
                            late += 1;
                            feeder.hooks.metrics().add_late(1);
                            feed.dead_letter.late(&label, &event, bound);
                            continue;
                        }
                        buffered.add(event.ts_ms);
                        newest = newest.max(event.ts_ms);
                        feeder.send(event);
                    }
                    let watermark = observed.watermark();
                    if newest > i64::MIN {
                        feeder.hooks.mark_sent(newest, read_at);
                    }
                    if let Some(known) = sources.get_mut(&source) {
                        known.watermark.store(watermark, Ordering::Relaxed);
                        known.newest_ms = source_newest;
                    }
                }
                SourceMessage::Closed { source } => {
                    clock.close(source);
                    sources.remove(&source);
                }
            }
        }

        let now = Instant::now();
        // Beyond the buffer limit every connection ahead of the frontier is paused, and during
        // the hold that is every connection with events, so the hold would stall all input.
        let limit = settings.limits.max_buffered_events;
        if buffered.total > limit && clock.end_hold(now) {
            tracing::warn!(
                buffered = buffered.total,
                max_buffered_events = limit,
                "startup hold ended early: more events wait for the frontier than \
                 max_buffered_events allows; events of clients that connect later may be late"
            );
        }
        let advance = clock.advance(now);
        for source in &advance.became_idle {
            let label = sources.get(source).map_or("tcp", |known| &known.label);
            tracing::info!(
                connection = source,
                source = label,
                "connection idle: it no longer holds back event time"
            );
        }
        if advance.by_processing_time && !by_processing_time && clock.current() > 0 {
            tracing::info!("no connection is active: event time advances by processing time");
            by_processing_time = true;
        } else if !advance.by_processing_time && by_processing_time {
            tracing::info!("a connection is active again: event time follows its watermark");
            by_processing_time = false;
        }
        let moved = advance.frontier > *feeder.input.time();
        if moved {
            buffered.release(advance.frontier);
            shared
                .frontier_ms
                .store(advance.frontier, Ordering::Relaxed);
        }
        shared
            .buffered_events
            .store(buffered.total, Ordering::Relaxed);

        if got_messages || moved {
            feeder.advance_and_wait(worker, advance.frontier);
            // One more step lets the alert sink, after the probe, write what reached it.
            worker.step();
            feeder.hooks.between_steps();
        } else {
            let wait = clock.next_deadline(now, MAX_PARK);
            worker.step_or_park(Some(wait));
            feeder.hooks.between_steps();
        }
        published.publish(&shared, &source_metrics);
        if got_messages {
            feed.dead_letter.flush();
        }
        if let Some(alerts) = &feed.alerts {
            if let Err(error) = alerts.flush_lines() {
                tracing::error!(%error, "failed to write alerts");
            }
        }
        status.log(&shared, received, late, &clock);
        if disconnected {
            break;
        }
    }

    tracing::info!(
        events = received - late,
        late,
        "live input ended: every connection is closed"
    );
    Ok(LineCounts {
        lines: shared.lines.load(Ordering::Relaxed),
        events: received - late,
        skipped: shared.skipped.load(Ordering::Relaxed),
        bad: shared.bad.load(Ordering::Relaxed),
        late,
        out_of_order,
        bytes: shared.bytes.load(Ordering::Relaxed),
        damaged: Vec::new(),
    })
}

/// Line counts of the connections already added to the source's metrics.
#[derive(Default)]
struct Published {
    lines: u64,
    bytes: u64,
    bad: u64,
    skipped: u64,
}

impl Published {
    /// Adds the counts that changed since the last call to the source's metrics.
    fn publish(&mut self, shared: &ListenShared, metrics: &SourceMetrics) {
        let lines = shared.lines.load(Ordering::Relaxed);
        let bytes = shared.bytes.load(Ordering::Relaxed);
        if lines != self.lines || bytes != self.bytes {
            metrics.add_lines(lines - self.lines, bytes - self.bytes);
            self.lines = lines;
            self.bytes = bytes;
        }
        let bad = shared.bad.load(Ordering::Relaxed);
        if bad != self.bad {
            metrics.add_bad(bad - self.bad);
            self.bad = bad;
        }
        let skipped = shared.skipped.load(Ordering::Relaxed);
        if skipped != self.skipped {
            metrics.add_skipped(skipped - self.skipped);
            self.skipped = skipped;
        }
    }
}

/// Events sent into the dataflow that still wait for the frontier, by event-time second.
///
/// Live input is mostly in time order, so its seconds are appended to a queue, which
/// allocates only when it grows. An event older than the queue's last second goes to a map.
#[derive(Default)]
struct Buffered {
    in_order: VecDeque<(i64, u64)>,
    older: BTreeMap<i64, u64>,
    total: u64,
}

impl Buffered {
    fn add(&mut self, ts_ms: i64) {
        let second = ts_ms.div_euclid(1000);
        self.total += 1;
        match self.in_order.back_mut() {
            Some((last, count)) if *last == second => *count += 1,
            Some((last, _)) if *last > second => *self.older.entry(second).or_default() += 1,
            _ => self.in_order.push_back((second, 1)),
        }
    }

    /// Forgets the seconds that end at or before the frontier.
    fn release(&mut self, frontier_ms: u64) {
        let first_kept = (frontier_ms / 1000) as i64;
        while let Some(&(second, count)) = self.in_order.front() {
            if second >= first_kept {
                break;
            }
            self.total -= count;
            self.in_order.pop_front();
        }
        if self
            .older
            .first_key_value()
            .is_some_and(|(second, _)| *second < first_kept)
        {
            let kept = self.older.split_off(&first_kept);
            let released: u64 = self.older.values().sum();
            self.older = kept;
            self.total -= released;
        }
    }
}

/// The periodic input status log line.
struct Status {
    interval: Duration,
    last: Instant,
    /// Lines and events at the last log line.
    last_counts: (u64, u64),
}

impl Status {
    fn new(interval: Duration) -> Self {
        Status {
            interval,
            last: Instant::now(),
            last_counts: (u64::MAX, u64::MAX),
        }
    }

    fn log(&mut self, shared: &ListenShared, received: u64, late: u64, clock: &InputFrontier) {
        if self.interval.is_zero() || self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        let lines = shared.lines.load(Ordering::Relaxed);
        if (lines, received) == self.last_counts {
            return;
        }
        self.last_counts = (lines, received);
        tracing::info!(
            connections = clock.open_sources(),
            active = clock.active_sources(),
            lines,
            events = received - late,
            late,
            bad = shared.bad.load(Ordering::Relaxed),
            frontier_ms = clock.current(),
            rejected = shared.rejected.load(Ordering::Relaxed),
            "input status"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Bytes(Arc<Mutex<Vec<u8>>>);

    impl Write for Bytes {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn alert_writer_passes_whole_lines_only() {
        let bytes = Bytes::default();
        let mut writer = WholeLineWriter::new(Box::new(bytes.clone()));
        writer.write_all(b"{\"a\":1}\n{\"b\"").unwrap();
        writer.flush_lines().unwrap();
        assert_eq!(bytes.0.lock().unwrap().as_slice(), b"{\"a\":1}\n");
        writer.write_all(b":2}\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(
            bytes.0.lock().unwrap().as_slice(),
            b"{\"a\":1}\n{\"b\":2}\n"
        );
    }

    #[test]
    fn buffered_events_released_by_frontier() {
        let mut buffered = Buffered::default();
        buffered.add(1_500);
        buffered.add(2_000);
        buffered.add(2_999);
        buffered.add(7_000);
        buffered.release(2_500);
        assert_eq!(buffered.total, 3, "second 2 is not over yet");
        buffered.release(3_000);
        assert_eq!(buffered.total, 1);
    }

    #[test]
    fn buffered_events_out_of_order_released() {
        let mut buffered = Buffered::default();
        for ts_ms in [5_000, 5_400, 9_000, 4_000, 6_500, 9_999, 3_000, 12_000] {
            buffered.add(ts_ms);
        }
        assert_eq!(buffered.total, 8);
        buffered.release(4_000);
        assert_eq!(buffered.total, 7, "only second 3 is over");
        buffered.release(6_000);
        assert_eq!(buffered.total, 4, "seconds 4 and 5 are over");
        buffered.release(10_000);
        assert_eq!(buffered.total, 1, "second 12 is left");
        buffered.add(11_000);
        buffered.release(13_000);
        assert_eq!(buffered.total, 0);
    }
}
