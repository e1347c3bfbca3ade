//! Alert output in a canonical order, on worker 0.

use std::collections::BTreeMap;
use std::io::Write;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::{Alert, AlertKind};

/// What the sink has written: counts by kind, and the alerts themselves when `keep` is set.
#[derive(Debug, Default)]
pub struct AlertTally {
    pub by_kind: BTreeMap<AlertKind, u64>,
    /// Keep a copy of every alert in `kept`, for scoring a run in memory.
    pub keep: bool,
    pub kept: Vec<Alert>,
}

/// The sink's tally, shared with the worker that reads it after the run.
pub type AlertCounter = std::rc::Rc<std::cell::RefCell<AlertTally>>;

/// Writes alerts as JSON lines on worker 0, sorted by (time, user, kind) within each second.
///
/// Alerts of one event-time second are written once the frontier has passed that second, so
/// the file's bytes do not depend on the number of workers. `writer` is only used on worker 0;
/// other workers may pass `None`. A write error is logged and counted, and the run goes on.
pub fn write_alerts<'scope>(
    alerts: StreamVec<'scope, u64, Alert>,
    mut writer: Option<Box<dyn Write>>,
    counter: AlertCounter,
) {
    let mut pending: BTreeMap<u64, Vec<Alert>> = BTreeMap::new();
    alerts.sink(Exchange::new(|_: &Alert| 0), "WriteAlerts", move |(input, frontier)| {
        {
            input.for_each_stamp(|_, data| {
                for batch in data {
                    for alert in batch.drain(..) {
                        let second_end = (alert.ts.max(0) as u64) * 1000 + 999;
                        pending.entry(second_end).or_default().push(alert);
                    }
                }
            });
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let mut batch = entry.remove();
                batch.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
                let mut tally = counter.borrow_mut();
                for alert in batch {
                    *tally.by_kind.entry(alert.kind).or_default() += 1;
                    if let Some(out) = writer.as_mut() {
                        if let Err(error) = writeln!(out, "{}", alert.to_json_line()) {
                            tracing::error!(%error, alert_id = %alert.alert_id(), "failed to write alert");
                        }
                    }
                    if tally.keep {
                        tally.kept.push(alert);
                    }
                }
            }
            if frontier.is_empty() {
                if let Some(out) = writer.as_mut() {
                    if let Err(error) = out.flush() {
                        tracing::error!(%error, "failed to flush the alert output");
                    }
                }
            }
        }
    });
}
