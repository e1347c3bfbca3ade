//! Model scoring of user windows and fusion of the model signals with the detector's alerts.

use std::collections::HashMap;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::fusion::{FusionRule, UserFusion};
use veer_models::ml::{score_window, verdict};
use veer_models::{Alert, Id};

use crate::capability::HeldCapability;
use crate::fit::ModelUpdate;
use crate::segments::{Scored, WindowSegment};
use crate::versions::{Lookup, ModelVersions};
use crate::windows::WindowRecord;

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
                pending.retain_mut(|(_, record)| {
                    let raised = std::mem::take(&mut record.alerts);
                    let Some(window) = &record.window else {
                        alerts.extend(pass(&mut users, raised));
                        return false;
                    };
                    let models = match versions.lookup(window.start_ms) {
                        Lookup::Wait => None,
                        Lookup::Pass => Some(None),
                        Lookup::Score(models) => Some(Some(models)),
                    };
                    let Some(models) = models else {
                        // Waits for the fit.
                        record.alerts = raised;
                        return true;
                    };
                    let signals = models.and_then(|models| {
                        score_window(models, window)
                            .map_err(|error| {
                                failures += 1;
                                if failures == 1 {
                                    tracing::error!(%error, user = %window.user, start_ms = window.start_ms, "failed to score a window; its alerts go on without model signals");
                                }
                            })
                            .ok()
                            .map(|signals| (models, signals))
                    });
                    match signals {
                        Some((models, signals)) => {
                            segments.push(WindowSegment::of(window, &signals, models));
                            let user = users.entry(window.user.clone()).or_default();
                            alerts.extend(rule.fuse(user, &verdict(window, Some(signals)), raised));
                        }
                        None => alerts.extend(pass(&mut users, raised)),
                    }
                    false
                });
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
