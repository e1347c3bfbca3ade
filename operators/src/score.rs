//! Model scoring of user windows and fusion of the model signals with the detector's alerts.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::fusion::ModelSignals;
use veer_models::fusion::{FusionRule, UserFusion};
use veer_models::ml::{score_window_batch, verdict, ClosedWindow, MlError, ModelSet};
use veer_models::{Alert, Id};

use crate::capability::HeldCapability;
use crate::fit::ModelUpdate;
use crate::segments::{Scored, WindowSegment};
use crate::versions::{Lookup, ModelVersions};
use crate::windows::WindowRecord;

/// Scores the ready windows that have models, one batch per run of windows with the same
/// models, and returns their signals in order. A window without models gets `None`, and so
/// does a window whose scoring failed, after `failed` is called with the error.
fn score_ready(
    ready: &[(WindowRecord, Option<Arc<ModelSet>>)],
    failed: &mut impl FnMut(&MlError, &ClosedWindow),
) -> Vec<Option<ModelSignals>> {
    let mut signals: Vec<Option<ModelSignals>> = vec![None; ready.len()];
    let mut position = 0;
    while position < ready.len() {
        let Some(models) = &ready[position].1 else {
            position += 1;
            continue;
        };
        // The run of records scored by the same models, and the windows of those records.
        let end = position
            + ready[position..]
                .iter()
                .take_while(|(_, other)| {
                    other
                        .as_ref()
                        .is_some_and(|other| Arc::ptr_eq(other, models))
                })
                .count();
        let batch: Vec<(usize, &ClosedWindow)> = (position..end)
            .filter_map(|index| ready[index].0.window.as_ref().map(|window| (index, window)))
            .collect();
        let windows: Vec<&ClosedWindow> = batch.iter().map(|(_, window)| *window).collect();
        for ((index, window), result) in batch.iter().zip(score_window_batch(models, &windows)) {
            match result {
                Ok(scored) => signals[*index] = Some(scored),
                Err(error) => failed(&error, window),
            }
        }
        position = end;
    }
    signals
}

/// Fuses each window's detector alerts with the models' signals, by [`FusionRule::fuse`].
///
/// `windows` come from [`crate::build_user_windows`] on the same worker and `updates` from
/// [`crate::fit_models`]. A window of the bootstrap period passes its alerts on unchanged. A
/// later window is held, with its capability, until the model version for its start arrives
/// ([`ModelVersions`]), so every window is scored by the same models whatever the timing of
/// the fits. Windows without model
/// signals (the bootstrap period, a failed fit or score) go through
/// [`FusionRule::pass_unscored`]. Each user's windows arrive, and are fused, in time order.
///
/// Each scored window also sends its segment.
///
/// NOTE: the rule's state is kept for every user with an alerted candidate whose run has not
/// ended in an alarm, for the whole run.
pub fn score_windows<'scope>(
    windows: StreamVec<'scope, u64, WindowRecord>,
    updates: StreamVec<'scope, u64, ModelUpdate>,
    rule: FusionRule,
) -> StreamVec<'scope, u64, Scored> {
    let windows_scope_index = windows.scope().index();
    windows.binary_frontier(
        updates,
        Pipeline,
        Pipeline,
        "ScoreWindows",
        move |_, _| {
            let mut held = HeldCapability::default();
            let mut pending: Vec<(u64, WindowRecord)> = Vec::new();
            let mut versions = ModelVersions::default();
            let logs = windows_scope_index == 0;
            let mut failures = 0u64;
            let mut users: HashMap<Id, UserFusion> = HashMap::new();
            move |(windows_in, windows_frontier), (updates_in, updates_frontier), output| {
                let port = output.output_index();
                windows_in.for_each_stamp(|capability, data| {
                    held.hold(&capability, port);
                    let Some(time) = capability.least().copied() else {
                        return;
                    };
                    for batch in data {
                        pending.extend(batch.drain(..).map(|record| (time, record)));
                    }
                });
                updates_in.for_each_stamp(|_, data| {
                    for batch in data {
                        for update in batch.drain(..) {
                            let Some(version) = versions.apply(update) else {
                                continue;
                            };
                            if logs {
                                tracing::info!(version, "model version received; it scores windows from its start time");
                            }
                        }
                    }
                });
                // Without more updates, waiting windows take the latest version, if any.
                if updates_frontier.is_empty() {
                    versions.close();
                }

                let mut alerts: Vec<Alert> = Vec::new();
                let mut segments: Vec<WindowSegment> = Vec::new();
                // Alerts of a window without model signals.
                let pass = |users: &mut HashMap<Id, UserFusion>, raised: Vec<Alert>| {
                    let Some(first) = raised.first() else {
                        return Vec::new();
                    };
                    let user = users.entry(first.user.clone()).or_default();
                    rule.pass_unscored(user, raised)
                };
                // Windows whose version is known leave `pending`, in arrival order, with the
                // models that score them, or `None` to pass their alerts on unchanged.
                let mut ready: Vec<(WindowRecord, Option<Arc<ModelSet>>)> = Vec::new();
                let mut waiting = Vec::new();
                for (time, record) in pending.drain(..) {
                    let models = match record.window.as_ref().map(|window| versions.lookup(window.start_ms)) {
                        Some(Lookup::Wait) => {
                            waiting.push((time, record));
                            continue;
                        }
                        Some(Lookup::Score(models)) => Some(Arc::clone(models)),
                        Some(Lookup::Pass) | None => None,
                    };
                    ready.push((record, models));
                }
                pending = waiting;

                let signals = score_ready(&ready, &mut |error, window| {
                    failures += 1;
                    if failures == 1 {
                        tracing::error!(%error, user = %window.user, start_ms = window.start_ms, "failed to score a window; its alerts go on without model signals");
                    }
                });
                for ((record, models), signals) in ready.into_iter().zip(signals) {
                    let raised = record.alerts;
                    match (record.window, models, signals) {
                        (Some(window), Some(models), Some(signals)) => {
                            segments.push(WindowSegment::of(&window, &signals, &models));
                            let user = users.entry(window.user.clone()).or_default();
                            alerts.extend(rule.fuse(user, &verdict(&window, Some(signals)), raised));
                        }
                        _ => alerts.extend(pass(&mut users, raised)),
                    }
                }
                if !alerts.is_empty() || !segments.is_empty() {
                    if let Some(capability) = held.get() {
                        let mut session = output.session(capability);
                        session.give_iterator(alerts.drain(..).map(Scored::Alert));
                        session.give_iterator(segments.drain(..).map(Scored::Segment));
                    }
                }
                held.settle(pending.iter().map(|(time, _)| *time).min());
                // A window that arrives later starts at or after its time, so at or after the
                // frontier.
                let earliest_start = pending
                    .iter()
                    .filter_map(|(_, record)| record.window.as_ref().map(|window| window.start_ms))
                    .chain(windows_frontier.frontier().first().copied())
                    .min();
                if let Some(earliest_start) = earliest_start {
                    versions.forget_before(earliest_start);
                }
            }
        },
    )
}
