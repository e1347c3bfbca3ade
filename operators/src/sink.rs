//! Alert output in a canonical order, on worker 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::{Alert, AlertKind};

use crate::state::SinkState;

/// Record of the sink's output: counts by kind, and the alerts themselves when `keep` is set.
#[derive(Default)]
pub struct AlertTally {
    pub by_kind: BTreeMap<AlertKind, u64>,
    /// Keep a copy of every alert in `kept`, for scoring a run in memory.
    pub keep: bool,
    pub kept: Vec<Alert>,
    /// Called with each alert just before it is written, for metrics such as latency.
    pub on_alert: Option<Box<dyn FnMut(&Alert)>>,
    /// Whether the run stopped at a checkpoint cut. The alerts released from then on come from
    /// windows closed before their end, so they are counted in `dropped`, not written.
    pub stopped: bool,
    /// Alerts not written because the run had stopped.
    pub dropped: u64,
}

impl std::fmt::Debug for AlertTally {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AlertTally")
            .field("by_kind", &self.by_kind)
            .field("keep", &self.keep)
            .field("kept", &self.kept.len())
            .field("on_alert", &self.on_alert.is_some())
            .field("stopped", &self.stopped)
            .field("dropped", &self.dropped)
            .finish()
    }
}

/// Builder of the sink's output stream, which carries no data.
type NoOutput = timely::container::CapacityContainerBuilder<Vec<()>>;

/// The sink's tally, shared with the worker that reads it after the run.
pub type AlertCounter = std::rc::Rc<std::cell::RefCell<AlertTally>>;

/// Destination of the alerts that [`write_alerts`] releases on worker 0.
pub trait AlertSink {
    /// Takes the next alert, in canonical order.
    fn send(&mut self, alert: &Alert);

    /// Called once, after the last alert, when the input is exhausted.
    fn close(&mut self);
}

/// An [`AlertSink`] that writes each alert as a JSON line to a writer. A write error is
/// logged and the run goes on.
pub struct JsonLines<W: Write>(pub W);

impl<W: Write> AlertSink for JsonLines<W> {
    fn send(&mut self, alert: &Alert) {
        if let Err(error) = writeln!(self.0, "{}", alert.to_json_line()) {
            let alert_id = alert.alert_id();
            tracing::error!(%error, %alert_id, "failed to write alert");
        }
    }

    fn close(&mut self) {
        if let Err(error) = self.0.flush() {
            tracing::error!(%error, "failed to flush the alert output");
        }
    }
}

/// Hands alerts to `sink` on worker 0, sorted by (time, user, kind) within each second.
///
/// Alerts of one event-time second are released once the frontier has passed that second, so
/// the output's bytes do not depend on the number of workers. `sink` is only used on worker
/// 0; other workers may pass `None`. The sink is closed once the frontier is empty. The returned
/// stream carries no data; a probe on it tells when the sink has taken every alert before a
/// time. Once [`AlertTally::stopped`] is set, the alerts released are only counted.
///
/// # Examples
///
/// ```
/// use std::cell::RefCell;
/// use std::io::Write;
/// use std::rc::Rc;
/// use timely::dataflow::operators::ToStream;
/// use veer_models::{Alert, AlertKind, Id};
/// use veer_operators::state::SinkState;
/// use veer_operators::{write_alerts, AlertCounter, JsonLines};
///
/// /// A writer whose bytes the test can read after the run.
/// struct Shared(Rc<RefCell<Vec<u8>>>);
///
/// impl Write for Shared {
///     fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
///         self.0.borrow_mut().extend_from_slice(bytes);
///         Ok(bytes.len())
///     }
///     fn flush(&mut self) -> std::io::Result<()> {
///         Ok(())
///     }
/// }
///
/// let alert = |user: u64, ts: i64| Alert {
///     user: Id::from(user),
///     kind: AlertKind::InterestShift,
///     ts,
///     onset_ts: ts - 60,
///     score: 0.9,
///     from: Vec::new(),
///     to: Vec::new(),
///     signals: Vec::new(),
///     events_since_onset: 3,
///     segment_before: None,
///     segment_after: None,
/// };
/// let text = timely::execute_directly(move |worker| {
///     let bytes = Rc::new(RefCell::new(Vec::new()));
///     let writer = Shared(bytes.clone());
///     let counter = AlertCounter::default();
///     worker.dataflow::<u64, _, _>(move |scope| {
///         let alerts = vec![alert(9, 20), alert(3, 20), alert(5, 10)].to_stream(scope);
///         let state = Rc::new(RefCell::new(SinkState::default()));
///         write_alerts(alerts, Some(Box::new(JsonLines(writer))), counter, state);
///     });
///     while worker.step() {}
///     let text = String::from_utf8(bytes.borrow().clone()).unwrap();
///     text
/// });
/// let ids: Vec<&str> = text.lines().map(|line| &line[13..line.find("\",\"user").unwrap()]).collect();
/// assert_eq!(ids, ["5-10-interest_shift", "3-20-interest_shift", "9-20-interest_shift"]);
/// ```
pub fn write_alerts<'scope>(
    alerts: StreamVec<'scope, u64, Alert>,
    mut sink: Option<Box<dyn AlertSink>>,
    counter: AlertCounter,
    state: Rc<RefCell<SinkState>>,
) -> StreamVec<'scope, u64, ()> {
    let route = Exchange::new(|_: &Alert| 0);
    alerts.unary_frontier::<NoOutput, _, _, _>(route, "WriteAlerts", move |_, _| {
        move |(input, frontier), _output| {
            let mut state = state.borrow_mut();
            input.for_each_stamp(|_, data| {
                for batch in data {
                    for alert in batch.drain(..) {
                        let second_end = (alert.ts.max(0) as u64) * 1000 + 999;
                        state.pending.entry(second_end).or_default().push(alert);
                    }
                }
            });
            while let Some(entry) = state.pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let mut batch = entry.remove();
                batch.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
                let mut tally = counter.borrow_mut();
                if tally.stopped {
                    tally.dropped += batch.len() as u64;
                    continue;
                }
                for alert in batch {
                    *tally.by_kind.entry(alert.kind).or_default() += 1;
                    if let Some(observe) = tally.on_alert.as_mut() {
                        observe(&alert);
                    }
                    if let Some(sink) = sink.as_mut() {
                        sink.send(&alert);
                    }
                    if tally.keep {
                        tally.kept.push(alert);
                    }
                }
            }
            if frontier.is_empty() {
                if let Some(mut sink) = sink.take() {
                    sink.close();
                }
            }
        }
    })
}
