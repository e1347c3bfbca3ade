//! Model scoring of user windows and fusion of the model signals with the detector's alerts.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::fusion::{FusionRule, UserFusion};
use veer_models::ml::{score_window, verdict, ModelSet};
use veer_models::{Alert, Id};

use crate::capability::HeldCapability;
use crate::fit::ModelUpdate;
use crate::segments::{Scored, WindowSegment};
use crate::windows::WindowRecord;

/// State of the models on one worker.
enum Models {
    /// The bootstrap period's end is not known yet.
    Unknown,
    /// Windows that start before `end_ms` pass unchanged; later ones wait for the fit.
    Bootstrap { end_ms: u64 },
    /// The fit finished: `models` is `None` when no models could be fitted.
    Ready {
        end_ms: u64,
        models: Option<Arc<ModelSet>>,
    },
}

/// Fuses each window's detector alerts with the models' signals, by [`FusionRule::fuse`].
///
/// `windows` come from [`crate::build_user_windows`] on the same worker and `updates` from
/// [`crate::fit_models`]. A window of the bootstrap period passes its alerts on unchanged. A
/// later window is held, with its capability, until the models arrive, so every later window
/// is scored by the same models whatever the timing of the fit. Windows without model
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
    windows.binary_frontier(
        updates,
        Pipeline,
        Pipeline,
        "ScoreWindows",
        move |_, _| {
            let mut held = HeldCapability::default();
            let mut pending: Vec<(u64, WindowRecord)> = Vec::new();
            let mut models = Models::Unknown;
            let mut failures = 0u64;
            let mut users: HashMap<Id, UserFusion> = HashMap::new();
            move |(windows_in, _), (updates_in, updates_frontier), output| {
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
                            models = match (update, &models) {
                                (ModelUpdate::Bootstrap { end_ms }, _) => {
                                    Models::Bootstrap { end_ms }
                                }
                                (ModelUpdate::Fitted(fitted), Models::Bootstrap { end_ms }) => {
                                    Models::Ready {
                                        end_ms: *end_ms,
                                        models: (*fitted).ok().map(Arc::new),
                                    }
                                }
                                (ModelUpdate::Fitted(_), _) => {
                                    tracing::error!("models arrived before the bootstrap period's end; they are not used");
                                    Models::Ready {
                                        end_ms: 0,
                                        models: None,
                                    }
                                }
                            };
                        }
                    }
                });
                // Without more updates, windows still waiting will get no models.
                if updates_frontier.is_empty() && !matches!(models, Models::Ready { .. }) {
                    models = Models::Ready {
                        end_ms: 0,
                        models: None,
                    };
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
                    let models = match &models {
                        Models::Unknown => None,
                        Models::Bootstrap { end_ms } if window.start_ms >= *end_ms => None,
                        Models::Bootstrap { .. } => Some(None),
                        Models::Ready { end_ms, models } if window.start_ms >= *end_ms => {
                            Some(models.as_ref())
                        }
                        Models::Ready { .. } => Some(None),
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
            }
        },
    )
}
