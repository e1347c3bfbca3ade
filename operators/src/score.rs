//! Model scoring of user windows and fusion of the model signals with the detector's alerts.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use veer_models::fusion::ModelSignals;
use veer_models::fusion::{FusionRule, UserFusion};
use veer_models::ml::{
    score_window_batch, screen_window_batch, verdict, ClosedWindow, MlError, ModelSet, Screened,
};
use veer_models::{Alert, Id};

use crate::capability::HeldCapability;
use crate::fit::ModelUpdate;
use crate::model_state::ModelTraffic;
use crate::segments::{AttributeColumns, Scored, WindowSegment};
use crate::versions::{Lookup, ModelVersions};
use crate::windows::{WindowRecord, WindowsHandle, WindowsState};

/// The model signals of a window, as much of them as the fusion rule needs.
#[derive(Clone, Copy)]
enum WindowSignals {
    /// Every signal, for a window with detector alerts or an anomalous one.
    Full(ModelSignals),
    /// Only the segment, for a window without detector alerts that is not anomalous: the
    /// fusion rule raises no alert for it.
    Quiet { segment: usize },
}

/// State of [`score_windows`] on one worker that a checkpoint stores. Windows waiting for
/// their version are not part of it: a checkpoint is taken only while none waits.
#[derive(Default)]
pub struct ScoreState {
    /// The model versions in force.
    pub versions: ModelVersions,
    /// The fusion rule's state of each user of this worker.
    pub users: FxHashMap<Id, UserFusion>,
}

/// Shared handle to a worker's [`ScoreState`].
pub type ScoreHandle = std::rc::Rc<std::cell::RefCell<ScoreState>>;

/// Scores the ready windows that have models, one batch per run of windows with the same
/// models, and returns their signals in order. A window without models gets `None`, and so
/// does a window whose scoring failed, after `failed` is called with the error.
///
/// Windows without detector alerts are first screened ([`screen_window_batch`]), and only the
/// anomalous ones among them are scored in full.
fn score_ready(
    ready: &[(WindowRecord, Option<Arc<ModelSet>>)],
    anomaly_threshold: Option<f64>,
    failed: &mut impl FnMut(&MlError, &ClosedWindow),
) -> Vec<Option<WindowSignals>> {
    let mut signals: Vec<Option<WindowSignals>> = vec![None; ready.len()];
    let mut position = 0;
    while position < ready.len() {
        let Some(models) = &ready[position].1 else {
            position += 1;
            continue;
        };
        // The run of records scored by the same models.
        let end = position
            + ready[position..]
                .iter()
                .take_while(|(_, other)| {
                    other
                        .as_ref()
                        .is_some_and(|other| Arc::ptr_eq(other, models))
                })
                .count();
        // The windows of those records, split into those with detector alerts and those
        // without.
        let (mut full, quiet): (Vec<(usize, &ClosedWindow)>, Vec<(usize, &ClosedWindow)>) =
            (position..end)
                .filter_map(|index| {
                    let record = &ready[index].0;
                    record.window.as_deref().map(|window| (index, window))
                })
                .partition(|(index, _)| !ready[*index].0.alerts.is_empty());
        let quiet_windows: Vec<&ClosedWindow> = quiet.iter().map(|(_, window)| *window).collect();
        let screened = screen_window_batch(models, &quiet_windows, anomaly_threshold);
        for ((index, window), result) in quiet.into_iter().zip(screened) {
            match result {
                Ok(Screened::Quiet { segment }) => {
                    signals[index] = Some(WindowSignals::Quiet { segment })
                }
                Ok(Screened::Anomalous) => full.push((index, window)),
                Err(error) => failed(&error, window),
            }
        }
        let full_windows: Vec<&ClosedWindow> = full.iter().map(|(_, window)| *window).collect();
        for ((index, window), result) in full.iter().zip(score_window_batch(models, &full_windows))
        {
            match result {
                Ok(scored) => signals[*index] = Some(WindowSignals::Full(scored)),
                Err(error) => failed(&error, window),
            }
        }
        position = end;
    }
    signals
}

/// Removes `user`'s rule state when it is a new user's, which [`score_windows`] creates again
/// when needed.
fn forget_if_new(users: &mut FxHashMap<Id, UserFusion>, user: &Id) {
    if users.get(user).is_some_and(|fusion| *fusion == UserFusion::default()) {
        users.remove(user);
    }
}

/// Removes the rule state of the users that `windows` has evicted and that have no window in
/// `pending`. Returns whether every evicted user's state is gone; otherwise a later call
/// must check again, after those windows are fused.
fn forget_evicted(
    users: &mut FxHashMap<Id, UserFusion>,
    pending: &[(u64, WindowRecord)],
    windows: &WindowsState,
) -> bool {
    let waiting: FxHashSet<&Id> = pending.iter().map(|(_, record)| &record.user).collect();
    let mut complete = true;
    users.retain(|user, _| {
        if windows.tracks(user) {
            return true;
        }
        let has_waiting_window = waiting.contains(user);
        complete &= !has_waiting_window;
        has_waiting_window
    });
    complete
}

/// Returns the attribute columns of `models`, from `cache` when they were computed for the same
/// model set.
fn attribute_columns<'a>(
    cache: &'a mut Option<(Arc<ModelSet>, AttributeColumns)>,
    models: &Arc<ModelSet>,
) -> &'a AttributeColumns {
    let known = cache
        .as_ref()
        .is_some_and(|(cached, _)| Arc::ptr_eq(cached, models));
    if !known {
        *cache = Some((Arc::clone(models), AttributeColumns::of(models)));
    }
    &cache.as_ref().expect("the cache is set above").1
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
/// Each scored window also sends its segment. `state` may come from a checkpoint. `traffic`
/// counts the updates received and the windows waiting, for checkpoints. A window that starts
/// a stay of its user ([`WindowRecord::new_stay_of`]) drops the user's rule state first, so a
/// user back after an eviction starts the rule afresh, as the detector does.
///
/// A user's rule state is kept only while it differs from a new user's. It is also dropped
/// once `window_state`, the state of the window operator that sends `windows`, has evicted
/// the user and none of the user's windows waits here: the user's next window then starts a
/// stay, which would drop it anyway. With an eviction time shorter than the window, a window
/// can also hold the end of the earlier stay, whose alerts are then fused afresh too.
pub fn score_windows<'scope>(
    windows: StreamVec<'scope, u64, WindowRecord>,
    updates: StreamVec<'scope, u64, ModelUpdate>,
    rule: FusionRule,
    state: ScoreHandle,
    window_state: WindowsHandle,
    traffic: std::sync::Arc<ModelTraffic>,
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
            // Windows at the front of `pending` that wait under the current versions. A lookup
            // depends only on the versions, so they are looked up again only after a change.
            // This keeps a step cheap while many windows wait for a fit.
            let mut waiting_checked = 0;
            let logs = windows_scope_index == 0;
            let mut failures = 0u64;
            let mut columns: Option<(Arc<ModelSet>, AttributeColumns)> = None;
            // The window operator's sweep count at the last complete check for evicted users;
            // `None` checks at the first activation, which covers a restored state.
            let mut checked_sweeps: Option<u64> = None;
            move |(windows_in, windows_frontier), (updates_in, updates_frontier), output| {
                let mut guard = state.borrow_mut();
                let ScoreState { versions, users } = &mut *guard;
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
                            traffic.update_received();
                            waiting_checked = 0;
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
                if updates_frontier.is_empty() && !versions.is_closed() {
                    versions.close();
                    waiting_checked = 0;
                }

                let mut alerts: Vec<Alert> = Vec::new();
                let mut segments: Vec<WindowSegment> = Vec::new();
                // Alerts of a window without model signals.
                let pass = |users: &mut FxHashMap<Id, UserFusion>, raised: Vec<Alert>| {
                    let Some(first) = raised.first() else {
                        return Vec::new();
                    };
                    let user = first.user.clone();
                    let passed = rule.pass_unscored(users.entry(user.clone()).or_default(), raised);
                    forget_if_new(users, &user);
                    passed
                };
                // Windows whose version is known leave `pending`, in arrival order, with the
                // models that score them, or `None` to pass their alerts on unchanged.
                let mut ready: Vec<(WindowRecord, Option<Arc<ModelSet>>)> = Vec::new();
                let unchecked = pending.split_off(waiting_checked);
                for (time, record) in unchecked {
                    let models = match record.window.as_ref().map(|window| versions.lookup(window.start_ms)) {
                        Some(Lookup::Wait) => {
                            pending.push((time, record));
                            continue;
                        }
                        Some(Lookup::Score(models)) => Some(Arc::clone(models)),
                        Some(Lookup::Pass) | None => None,
                    };
                    ready.push((record, models));
                }
                waiting_checked = pending.len();

                traffic.record_waiting(windows_scope_index, pending.len());

                let signals = score_ready(&ready, rule.anomaly_threshold(), &mut |error, window| {
                    failures += 1;
                    if failures == 1 {
                        tracing::error!(%error, user = %window.user, start_ms = window.start_ms, "failed to score a window; its alerts go on without model signals");
                    }
                });
                for ((record, models), signals) in ready.into_iter().zip(signals) {
                    if let Some(user) = &record.new_stay_of {
                        users.remove(user);
                    }
                    let raised = record.alerts;
                    match (record.window, models, signals) {
                        (Some(window), Some(models), Some(WindowSignals::Full(signals))) => {
                            let columns = attribute_columns(&mut columns, &models);
                            segments.push(WindowSegment::with_columns(&window, signals.segment, columns));
                            let user = users.entry(window.user.clone()).or_default();
                            alerts.extend(rule.fuse(user, &verdict(&window, Some(signals)), raised));
                            forget_if_new(users, &window.user);
                        }
                        (Some(window), Some(models), Some(WindowSignals::Quiet { segment })) => {
                            debug_assert!(raised.is_empty(), "only windows without alerts are quiet");
                            let columns = attribute_columns(&mut columns, &models);
                            segments.push(WindowSegment::with_columns(&window, segment, columns));
                        }
                        _ => alerts.extend(pass(users, raised)),
                    }
                }
                if !alerts.is_empty() || !segments.is_empty() {
                    if let Some(capability) = held.get() {
                        let mut session = output.session(capability);
                        session.give_iterator(alerts.drain(..).map(Scored::Alert));
                        session.give_iterator(segments.drain(..).map(Scored::Segment));
                    }
                }
                let sweeps = window_state.borrow().sweeps;
                if checked_sweeps != Some(sweeps)
                    && forget_evicted(users, &pending, &window_state.borrow())
                {
                    checked_sweeps = Some(sweeps);
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
                    if versions.forget_before(earliest_start) {
                        waiting_checked = 0;
                    }
                }
            }
        },
    )
}
