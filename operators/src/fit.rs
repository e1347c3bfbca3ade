//! The model fit of the model path: training windows gathered on worker 0, fitted on a
//! background thread, and the models broadcast to every worker.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Exchange;
use timely::dataflow::StreamVec;
use veer_models::ml::{training_rows, ClosedWindow, ModelParams, ModelSet};

use crate::windows::WindowRecord;

/// A message of [`fit_models`] to every worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ModelUpdate {
    /// End of the bootstrap period, in Unix milliseconds. Windows that start earlier train the
    /// models and pass their alerts on unchanged, and later windows wait for the models.
    Bootstrap { end_ms: u64 },
    /// The fitted models, or the reason none were fitted.
    Fitted(Box<Result<ModelSet, String>>),
}

/// Settings of [`fit_models`].
#[derive(Clone, Debug)]
pub struct FitSettings {
    /// Event time from the first event whose windows train the models, in milliseconds.
    pub bootstrap_ms: u64,
    /// Length of the user windows, in milliseconds.
    pub window_ms: u64,
    pub params: ModelParams,
    /// Seed of every model fit.
    pub seed: u64,
}

/// Gathers the bootstrap windows of every worker on worker 0, fits the models once on them
/// and broadcasts the result.
///
/// The bootstrap period runs from the first event of the whole stream for
/// `settings.bootstrap_ms`. Its end is broadcast as soon as the first event is known. The fit
/// starts once every window that starts before the end of the period, and the window after
/// each, has arrived: a training row's target is the user's next window. It runs on its own
/// thread, so the worker goes on stepping the dataflow, and wakes the operator when done.
/// Rows are sorted by user and window start first, so the models do not depend on the number
/// of workers. A stream that ends earlier is fitted on the windows it has.
///
/// `windows` must be the output of [`crate::build_user_windows`], which emits each window at or
/// before its first event time.
pub fn fit_models<'scope>(
    windows: StreamVec<'scope, u64, WindowRecord>,
    settings: FitSettings,
) -> StreamVec<'scope, u64, ModelUpdate> {
    let scope = windows.scope();
    let window_ms = settings.window_ms.max(1);
    // Each worker sends only windows that may belong to the bootstrap period: the global first
    // event is at or before the first one this worker receives.
    let mut local_first: Option<u64> = None;
    let bootstrap_ms = settings.bootstrap_ms;
    let candidates = windows
        .flat_map(move |record: WindowRecord| {
            let window = record.window?;
            let first = *local_first.get_or_insert(window.first_ms as u64);
            let bound = first
                .saturating_add(bootstrap_ms)
                .saturating_add(window_ms);
            (window.start_ms < bound).then_some(window)
        })
        .exchange(|_: &ClosedWindow| 0);
    let updates = candidates.unary_frontier(Pipeline, "FitModels", move |initial, info| {
        let mut capability = (scope.index() == 0).then_some(initial);
        let mut windows: Vec<ClosedWindow> = Vec::new();
        let mut bootstrap_end: Option<u64> = None;
        let mut running: Option<Receiver<Result<ModelSet, String>>> = None;
        let mut fit_started = false;
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        move |(input, frontier), output| {
            input.for_each(|_, data| windows.append(data));
            let Some(held) = capability.as_ref() else {
                windows.clear();
                return;
            };
            let bound = frontier.frontier().first().copied();

            if bootstrap_end.is_none() {
                // Windows go out at or before their first event, so once the frontier has
                // passed the earliest first event seen, no earlier one can come.
                let first = windows.iter().map(|window| window.first_ms as u64).min();
                match first {
                    Some(first) if bound.is_none_or(|bound| first < bound) => {
                        let end_ms = first.saturating_add(bootstrap_ms);
                        tracing::info!(first_event_ms = first, end_ms, "bootstrap period set");
                        bootstrap_end = Some(end_ms);
                        output
                            .session(held)
                            .give(ModelUpdate::Bootstrap { end_ms });
                    }
                    None if bound.is_none() => {
                        capability = None;
                        return;
                    }
                    _ => {}
                }
            }

            // A window goes out at or before its first event, which is before its end, so at
            // this frontier every window that starts before `end_ms + window_ms` is here.
            if let (Some(end_ms), false) = (bootstrap_end, fit_started) {
                let complete = end_ms.saturating_add(2 * window_ms);
                if bound.is_none_or(|bound| bound >= complete) {
                    fit_started = true;
                    running = Some(spawn_fit(
                        std::mem::take(&mut windows),
                        end_ms,
                        settings.clone(),
                        activator.clone(),
                    ));
                }
            }

            if let Some(receiver) = &running {
                let result = match receiver.try_recv() {
                    Ok(result) => result,
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => {
                        Err("the model fit thread stopped without a result".to_string())
                    }
                };
                output
                    .session(held)
                    .give(ModelUpdate::Fitted(Box::new(result)));
                running = None;
                capability = None;
            }
        }
    });
    updates.broadcast()
}

/// Fits the models on `windows` on a new thread and returns the channel of its result.
fn spawn_fit(
    mut windows: Vec<ClosedWindow>,
    bootstrap_end_ms: u64,
    settings: FitSettings,
    activator: timely::scheduling::SyncActivator,
) -> Receiver<Result<ModelSet, String>> {
    let (sender, receiver) = mpsc::channel();
    let work = move || {
        let started = Instant::now();
        windows.sort_by(|a, b| (&a.user, a.start_ms).cmp(&(&b.user, b.start_ms)));
        let rows = training_rows(&windows, settings.window_ms.max(1), bootstrap_end_ms);
        drop(windows);
        tracing::info!(training_windows = rows.len(), "fitting models");
        let result = if rows.is_empty() {
            Err("no training windows in the bootstrap period".to_string())
        } else {
            ModelSet::fit_with(&rows, &settings.params, settings.seed)
                .map_err(|error| error.to_string())
        };
        match &result {
            Ok(models) => {
                for warning in models.warnings() {
                    tracing::warn!(%warning, "model setting reduced");
                }
                tracing::info!(
                    training_windows = rows.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    features = ?models.selected_features(),
                    "models fitted"
                );
            }
            Err(reason) => tracing::warn!(
                %reason,
                training_windows = rows.len(),
                "no models fitted; alerts come from the detector alone"
            ),
        }
        // The operator may be gone when the dataflow was dropped; nothing is left to do then.
        let _ = sender.send(result);
        let _ = activator.activate();
    };
    if let Err(error) = std::thread::Builder::new()
        .name("veer-model-fit".into())
        .spawn(work)
    {
        tracing::error!(%error, "failed to start the model fit thread");
    }
    receiver
}
