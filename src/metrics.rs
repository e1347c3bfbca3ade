//! Run-wide metrics: counters the reader, the workers and the sinks update as they go, read by
//! the `/metrics` endpoint and the end-of-run summary.
//!
//! One [`Metrics`] is shared (`Arc`) by every thread of a run. Counters and gauges are relaxed
//! atomics, so updating them takes no lock. Two parts sit behind a
//! mutex because they are maps or histograms: the per-source and per-sink tables (locked only
//! to look up a handle, which the caller then keeps) and the latency histogram (locked once per
//! alert, on the one thread that hands alerts to the sinks).
//!
//! Who updates what:
//! - readers and listeners: a [`SourceMetrics`] per input, from [`Metrics::source`];
//! - the feeder on worker 0: late events, the watermark and the newest event time;
//! - the dataflow: duplicates, users tracked and evicted, alerts by kind, and latency;
//! - checkpoints: [`Metrics::checkpoint_written`] and [`Metrics::checkpoint_failed`];
//! - alert sinks: a [`SinkMetrics`] per sink, from [`Metrics::sink`].
//!
//! Event-to-alert latency is defined in [`Metrics::record_latency`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use veer_models::AlertKind;

/// Largest latency the histogram resolves: one hour, in microseconds. Longer ones are
/// recorded as one hour.
const LATENCY_MAX_MICROS: u64 = 3_600_000_000;

/// Value of a time gauge that was never set.
const UNSET: i64 = i64::MIN;

/// Counters of one input: a file, standard input or a socket listener.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    lines: AtomicU64,
    events: AtomicU64,
    bad: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
}

impl SourceMetrics {
    /// Adds physical lines read and their bytes, including the line ends.
    pub fn add_lines(&self, lines: u64, bytes: u64) {
        self.lines.fetch_add(lines, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds lines parsed into events (before duplicates and late events are found).
    pub fn add_events(&self, events: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
    }

    /// Adds lines that could not be parsed.
    pub fn add_bad(&self, bad: u64) {
        self.bad.fetch_add(bad, Ordering::Relaxed);
    }

    /// Adds blank and header lines.
    pub fn add_skipped(&self, skipped: u64) {
        self.skipped.fetch_add(skipped, Ordering::Relaxed);
    }

    /// Returns the events parsed so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

/// Counters of one alert sink (file, stdout, socket or webhook).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    attempts: AtomicU64,
    failures: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
}

impl SinkMetrics {
    /// Counts one delivery attempt (a write, or one POST of a batch).
    pub fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed attempt.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds alerts the sink delivered.
    pub fn delivered(&self, alerts: u64) {
        self.delivered.fetch_add(alerts, Ordering::Relaxed);
    }

    /// Adds alerts given up on and written to the sink's dead-letter file.
    pub fn dead_lettered(&self, alerts: u64) {
        self.dead_lettered.fetch_add(alerts, Ordering::Relaxed);
    }
}

/// Percentiles of the event-to-alert latency, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Alerts measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value recorded.
    pub max: u64,
}

/// The metrics of one run; see the module documentation.
#[derive(Debug)]
pub struct Metrics {
    sources: Mutex<BTreeMap<String, Arc<SourceMetrics>>>,
    sinks: Mutex<BTreeMap<String, Arc<SinkMetrics>>>,
    duplicates: AtomicU64,
    late: AtomicU64,
    interest_shift_alerts: AtomicU64,
    anomaly_alerts: AtomicU64,
    users_added: AtomicU64,
    users_evicted: AtomicU64,
    /// Event time of the watermark handed to the dataflow, in Unix milliseconds.
    watermark_ms: AtomicI64,
    /// Newest event time read, in Unix milliseconds.
    newest_event_ms: AtomicI64,
    checkpoints: AtomicU64,
    checkpoint_failures: AtomicU64,
    /// Wall-clock completion of the last checkpoint, in Unix milliseconds.
    checkpoint_at_ms: AtomicI64,
    checkpoint_micros: AtomicU64,
    checkpoint_bytes: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sources: Mutex::default(),
            sinks: Mutex::default(),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            interest_shift_alerts: AtomicU64::new(0),
            anomaly_alerts: AtomicU64::new(0),
            users_added: AtomicU64::new(0),
            users_evicted: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(UNSET),
            newest_event_ms: AtomicI64::new(UNSET),
            checkpoints: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
            checkpoint_at_ms: AtomicI64::new(UNSET),
            checkpoint_micros: AtomicU64::new(0),
            checkpoint_bytes: AtomicU64::new(0),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3)
                    .expect("the latency histogram bounds are valid"),
            ),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl Metrics {
    /// Creates an empty set of metrics to share between threads.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Returns the counters of the source `name`, creating them on first use. Keep the handle
    /// rather than calling this per line.
    pub fn source(&self, name: &str) -> Arc<SourceMetrics> {
        lock(&self.sources)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Returns the counters of the alert sink `name`, creating them on first use.
    pub fn sink(&self, name: &str) -> Arc<SinkMetrics> {
        lock(&self.sinks)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Adds exact duplicates dropped.
    pub fn add_duplicates(&self, duplicates: u64) {
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }

    /// Adds events that arrived behind the watermark.
    pub fn add_late(&self, late: u64) {
        self.late.fetch_add(late, Ordering::Relaxed);
    }

    /// Counts one alert handed to the sinks.
    pub fn add_alert(&self, kind: AlertKind) {
        let counter = match kind {
            AlertKind::InterestShift => &self.interest_shift_alerts,
            AlertKind::Anomaly => &self.anomaly_alerts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the alerts of `kind` handed to the sinks so far.
    pub fn alerts(&self, kind: AlertKind) -> u64 {
        match kind {
            AlertKind::InterestShift => self.interest_shift_alerts.load(Ordering::Relaxed),
            AlertKind::Anomaly => self.anomaly_alerts.load(Ordering::Relaxed),
        }
    }

    /// Adds users whose state was created (first event, or first event after an eviction).
    pub fn add_users(&self, users: u64) {
        self.users_added.fetch_add(users, Ordering::Relaxed);
    }

    /// Adds users whose state was evicted for inactivity.
    pub fn add_evicted(&self, users: u64) {
        self.users_evicted.fetch_add(users, Ordering::Relaxed);
    }

    /// Returns the users whose state is held now: created less evicted.
    pub fn users_tracked(&self) -> u64 {
        let added = self.users_added.load(Ordering::Relaxed);
        added.saturating_sub(self.users_evicted.load(Ordering::Relaxed))
    }

    /// Sets the event time (Unix milliseconds) of the watermark handed to the dataflow.
    pub fn set_watermark(&self, event_ms: i64) {
        self.watermark_ms.store(event_ms, Ordering::Relaxed);
    }

    /// Raises the newest event time read (Unix milliseconds) to `event_ms` if it is newer.
    pub fn observe_event_time(&self, event_ms: i64) {
        self.newest_event_ms.fetch_max(event_ms, Ordering::Relaxed);
    }

    /// Returns the checkpoints written so far.
    pub fn checkpoints_written(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// Returns the checkpoints that failed so far.
    pub fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures.load(Ordering::Relaxed)
    }

    /// Records a checkpoint that was written in `took` and is `bytes` long.
    pub fn checkpoint_written(&self, took: Duration, bytes: u64) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.checkpoint_bytes.store(bytes, Ordering::Relaxed);
        self.checkpoint_at_ms
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    }

    /// Counts a checkpoint that could not be written.
    pub fn checkpoint_failed(&self) {
        self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the event-to-alert latency of one alert.
    ///
    /// The latency is the wall time from the moment the batch carrying the alert's triggering
    /// event reached the feeder on worker 0 to the moment the alert was handed to the sinks.
    /// A TCP source (`veer serve`) starts it earlier, when the connection's reader thread read
    /// the bytes that ended the event's line, so it includes parsing and the channel to
    /// worker 0. It includes the wait for the event-time frontier that ordering needs, so it
    /// grows with the out-of-orderness allowed. For files and standard input it excludes the
    /// reader's batching and its channel (up to 8 batches of 4096 events). It always
    /// excludes the time a sink then takes to deliver.
    pub fn record_latency(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_MICROS);
        lock(&self.latency).saturating_record(micros);
    }

    /// Returns the latency percentiles so far.
    pub fn latency(&self) -> LatencySummary {
        let histogram = lock(&self.latency);
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    /// Renders every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut text = String::new();
        self.write_sources(&mut text);
        counter(
            &mut text,
            "veer_duplicates_total",
            "Exact duplicate events dropped.",
            self.duplicates.load(Ordering::Relaxed),
        );
        counter(
            &mut text,
            "veer_late_events_total",
            "Events that arrived behind the watermark, written to the dead-letter output.",
            self.late.load(Ordering::Relaxed),
        );
        header(
            &mut text,
            "veer_alerts_total",
            "Alerts handed to the sinks.",
            "counter",
        );
        for kind in [AlertKind::InterestShift, AlertKind::Anomaly] {
            let _ = writeln!(
                text,
                "veer_alerts_total{{kind=\"{}\"}} {}",
                kind.name(),
                self.alerts(kind)
            );
        }
        gauge(
            &mut text,
            "veer_users_tracked",
            "Users whose state is held now.",
            self.users_tracked() as f64,
        );
        counter(
            &mut text,
            "veer_users_evicted_total",
            "Users whose state was evicted for inactivity.",
            self.users_evicted.load(Ordering::Relaxed),
        );
        self.write_event_time(&mut text);
        self.write_checkpoints(&mut text);
        self.write_sinks(&mut text);
        self.write_latency(&mut text);
        text
    }

    fn write_sources(&self, text: &mut String) {
        let sources = lock(&self.sources).clone();
        let columns: [(&str, &str, fn(&SourceMetrics) -> u64); 5] = [
            (
                "veer_source_lines_total",
                "Physical input lines read.",
                |s| s.lines.load(Ordering::Relaxed),
            ),
            (
                "veer_source_events_total",
                "Input lines parsed into events, before duplicates and late events are found.",
                |s| s.events.load(Ordering::Relaxed),
            ),
            (
                "veer_source_bad_total",
                "Input lines that could not be parsed.",
                |s| s.bad.load(Ordering::Relaxed),
            ),
            (
                "veer_source_skipped_total",
                "Blank and header lines.",
                |s| s.skipped.load(Ordering::Relaxed),
            ),
            (
                "veer_source_bytes_total",
                "Input bytes read, after decompression.",
                |s| s.bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in columns {
            header(text, name, help, "counter");
            for (source, counters) in &sources {
                let _ = writeln!(
                    text,
                    "{name}{{source=\"{}\"}} {}",
                    escape(source),
                    read(counters)
                );
            }
        }
    }

    fn write_event_time(&self, text: &mut String) {
        let watermark = self.watermark_ms.load(Ordering::Relaxed);
        let newest = self.newest_event_ms.load(Ordering::Relaxed);
        if watermark != UNSET {
            gauge(
                text,
                "veer_watermark_seconds",
                "Event time of the watermark handed to the dataflow, in Unix seconds.",
                watermark as f64 / 1000.0,
            );
            gauge(
                text,
                "veer_watermark_lag_seconds",
                "Wall-clock time now less the watermark's event time; large when replaying history.",
                (unix_millis(SystemTime::now()) - watermark) as f64 / 1000.0,
            );
        }
        if newest != UNSET {
            gauge(
                text,
                "veer_newest_event_seconds",
                "Newest event time read, in Unix seconds.",
                newest as f64 / 1000.0,
            );
        }
    }

    fn write_checkpoints(&self, text: &mut String) {
        counter(
            text,
            "veer_checkpoints_total",
            "Checkpoints written.",
            self.checkpoints.load(Ordering::Relaxed),
        );
        counter(
            text,
            "veer_checkpoint_failures_total",
            "Checkpoints that could not be written.",
            self.checkpoint_failures.load(Ordering::Relaxed),
        );
        let at = self.checkpoint_at_ms.load(Ordering::Relaxed);
        if at == UNSET {
            return;
        }
        gauge(
            text,
            "veer_checkpoint_age_seconds",
            "Wall-clock time since the last checkpoint was written.",
            (unix_millis(SystemTime::now()) - at) as f64 / 1000.0,
        );
        gauge(
            text,
            "veer_checkpoint_duration_seconds",
            "Time the last checkpoint took to write.",
            self.checkpoint_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        gauge(
            text,
            "veer_checkpoint_bytes",
            "Size of the last checkpoint.",
            self.checkpoint_bytes.load(Ordering::Relaxed) as f64,
        );
    }

    fn write_sinks(&self, text: &mut String) {
        let sinks = lock(&self.sinks).clone();
        let columns: [(&str, &str, fn(&SinkMetrics) -> u64); 4] = [
            ("veer_sink_attempts_total", "Delivery attempts.", |s| {
                s.attempts.load(Ordering::Relaxed)
            }),
            (
                "veer_sink_failures_total",
                "Failed delivery attempts.",
                |s| s.failures.load(Ordering::Relaxed),
            ),
            ("veer_sink_delivered_total", "Alerts delivered.", |s| {
                s.delivered.load(Ordering::Relaxed)
            }),
            (
                "veer_sink_dead_lettered_total",
                "Alerts given up on and written to the sink's dead-letter file.",
                |s| s.dead_lettered.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in columns {
            header(text, name, help, "counter");
            for (sink, counters) in &sinks {
                let _ = writeln!(
                    text,
                    "{name}{{sink=\"{}\"}} {}",
                    escape(sink),
                    read(counters)
                );
            }
        }
    }

    fn write_latency(&self, text: &mut String) {
        let name = "veer_event_to_alert_latency_seconds";
        header(
            text,
            name,
            "Wall time from reading the line of an alert's triggering event to handing the alert to the sinks.",
            "summary",
        );
        let histogram = lock(&self.latency);
        if !histogram.is_empty() {
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                let micros = histogram.value_at_quantile(quantile);
                let _ = writeln!(
                    text,
                    "{name}{{quantile=\"{quantile}\"}} {}",
                    micros as f64 / 1e6
                );
            }
        }
        // An integer sum, because a float sum of no values is -0.0, which prints as "-0".
        let sum_micros: u128 = histogram
            .iter_recorded()
            .map(|value| u128::from(value.value_iterated_to()) * u128::from(value.count_at_value()))
            .sum();
        let _ = writeln!(text, "{name}_sum {}", sum_micros as f64 / 1e6);
        let _ = writeln!(text, "{name}_count {}", histogram.len());
    }
}

fn header(text: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}

fn counter(text: &mut String, name: &str, help: &str, value: u64) {
    header(text, name, help, "counter");
    let _ = writeln!(text, "{name} {value}");
}

fn gauge(text: &mut String, name: &str, help: &str, value: f64) {
    header(text, name, help, "gauge");
    let _ = writeln!(text, "{name} {value}");
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_follow_records() {
        let metrics = Metrics::default();
        assert_eq!(metrics.latency().count, 0);
        for millis in 1..=1000u64 {
            metrics.record_latency(Duration::from_millis(millis));
        }
        let summary = metrics.latency();
        assert_eq!(summary.count, 1000);
        assert!((499_000..=501_000).contains(&summary.p50), "{summary:?}");
        assert!((989_000..=991_000).contains(&summary.p99), "{summary:?}");
        assert!(summary.max >= 999_000, "{summary:?}");
    }

    #[test]
    fn prometheus_text_lists_counts() {
        let metrics = Metrics::default();
        let source = metrics.source("a\"b.csv");
        source.add_lines(3, 30);
        source.add_events(2);
        source.add_bad(1);
        metrics.add_duplicates(4);
        metrics.add_alert(AlertKind::Anomaly);
        metrics.add_users(5);
        metrics.add_evicted(2);
        metrics.sink("webhook").failure();
        metrics.record_latency(Duration::from_millis(2));
        let text = metrics.to_prometheus();
        assert!(text.contains("veer_source_events_total{source=\"a\\\"b.csv\"} 2\n"));
        assert!(text.contains("veer_source_bad_total{source=\"a\\\"b.csv\"} 1\n"));
        assert!(text.contains("veer_duplicates_total 4\n"));
        assert!(text.contains("veer_alerts_total{kind=\"anomaly\"} 1\n"));
        assert!(text.contains("veer_alerts_total{kind=\"interest_shift\"} 0\n"));
        assert!(text.contains("veer_users_tracked 3\n"));
        assert!(text.contains("veer_sink_failures_total{sink=\"webhook\"} 1\n"));
        assert!(text.contains("veer_event_to_alert_latency_seconds_count 1\n"));
        assert!(
            !text.contains("veer_checkpoint_age_seconds"),
            "no checkpoint yet"
        );
    }

    #[test]
    fn latency_sum_without_alerts_is_zero() {
        let text = Metrics::default().to_prometheus();
        assert!(
            text.contains("veer_event_to_alert_latency_seconds_sum 0\n"),
            "{text}"
        );
        assert!(!text.contains("-0"), "{text}");
        assert!(text.contains("veer_event_to_alert_latency_seconds_count 0\n"));
    }

    #[test]
    fn checkpoint_gauges_appear_once_written() {
        let metrics = Metrics::default();
        metrics.checkpoint_written(Duration::from_millis(12), 4096);
        let text = metrics.to_prometheus();
        assert!(text.contains("veer_checkpoints_total 1\n"));
        assert!(text.contains("veer_checkpoint_duration_seconds 0.012\n"));
        assert!(text.contains("veer_checkpoint_bytes 4096\n"));
        assert!(text.contains("veer_checkpoint_age_seconds"));
    }
}
