//! The model fits of the model path: training windows gathered on worker 0, fitted on a
//! background thread, and each model version broadcast to every worker.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Exchange;
use timely::dataflow::StreamVec;
use veer_models::ml::{
    fit_version, version_rows, BootstrapStart, ClosedWindow, ModelParams, ModelSet, Schedule,
    ScheduleSettings,
};

use crate::model_state::ModelTraffic;
use crate::windows::WindowRecord;

/// A message of [`fit_models`] to every worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ModelUpdate {
    /// Windows that start before `before_ms` (Unix milliseconds) are not scored and pass their
    /// alerts on unchanged. Later messages may raise the bound, until the first version
    /// arrives.
    Unscored { before_ms: u64 },
    /// One fitted model version, sent in version order.
    Fitted(Box<FittedVersion>),
    /// The latest version scores at least the windows that start before `until_ms` (Unix
    /// milliseconds). Sent for loaded models while the start of the retraining schedule is
    /// not decided yet. Later messages raise the bound.
    ScoresUntil { until_ms: u64 },
}

/// A model version and the windows it scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FittedVersion {
    /// 0 for the fit on the bootstrap period, then one more per refit.
    pub version: u64,
    /// The version scores windows that start at or after `applies_from_ms` and before
    /// `applies_until_ms` (no end without retraining), in Unix milliseconds.
    pub applies_from_ms: u64,
    pub applies_until_ms: Option<u64>,
    /// Start and end (exclusive) of the window starts whose windows trained the version, in
    /// Unix milliseconds.
    pub trained_from_ms: u64,
    pub trained_until_ms: u64,
    /// The models, or the reason none were fitted. A refit that fails leaves the previous
    /// version's models in force.
    pub models: Result<ModelSet, String>,
}

/// Settings of [`fit_models`].
#[derive(Clone, Debug)]
pub struct FitSettings {
    pub schedule: ScheduleSettings,
    pub params: ModelParams,
    /// Seed of every model fit.
    pub seed: u64,
    /// Models that score every window from the first one on, in place of the fit on the
    /// bootstrap period, as version 0. With retraining, they score until version 1 applies.
    /// [`fit_models`] sets their `applies_from_ms` and `applies_until_ms`.
    pub loaded: Option<Box<FittedVersion>>,
    /// Receives each fitted version before the workers do.
    pub sink: Option<Arc<dyn VersionSink>>,
}

/// Receives each model version that [`fit_models`] fits, on the fit thread, before the version
/// is sent to the workers. A failed fit is not passed on.
pub trait VersionSink: Send + Sync + std::fmt::Debug {
    /// Handles one fitted version, such as by saving its models. The sink logs its own errors,
    /// because a failure does not stop the run.
    fn fitted(&self, fitted: &FittedVersion, models: &ModelSet);
}

/// State of [`fit_models`] on worker 0, as of the latest activation.
///
/// A checkpoint stores it only while no fit runs, so it has no record of running fits.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FitState {
    /// Finder of the bootstrap period's start, `None` until the first activation.
    pub start: Option<BootstrapStart>,
    /// Bound of the latest [`ModelUpdate::Unscored`] or [`ModelUpdate::ScoresUntil`] sent
    /// before the schedule was decided.
    pub unscored_before: Option<u64>,
    pub schedule: Option<Schedule>,
    /// Windows kept for the versions not yet started: those that start at or after
    /// `keep_from`, or none once every version has started.
    pub kept: Vec<ClosedWindow>,
    pub keep_from: Option<u64>,
    /// Latest window start seen.
    pub latest_start: Option<u64>,
    /// Version of the next fit to start.
    pub next_version: u64,
    /// Whether the loaded models were sent.
    pub loaded_sent: bool,
}

/// Shared handle to worker 0's [`FitState`].
pub type FitHandle = std::rc::Rc<std::cell::RefCell<FitState>>;

/// A fit to run: the version and its training windows, sorted by user and start.
struct FitJob {
    version: u64,
    schedule: Schedule,
    windows: Vec<ClosedWindow>,
}

/// Gathers the windows of every worker on worker 0, fits the model versions on them and
/// broadcasts each.
///
/// The bootstrap period starts at a dense point of the stream ([`BootstrapStart`]) and lasts
/// `schedule.bootstrap_ms`. Until the start is decided, [`ModelUpdate::Unscored`] informs the
/// workers which windows surely pass unchanged, so their alerts do not wait. A version's fit
/// starts once every window of its training span, and the window after each, has arrived: a
/// training row's target is the user's next window. Fits run one at a time on their own
/// thread, so the worker goes on stepping the dataflow, and wake the operator when done.
/// Rows are sorted by user and window start first, so the models do not depend on the number
/// of workers. At the end of the stream, every version that some window needs is fitted on
/// the windows there are.
///
/// With [`FitSettings::loaded`], the loaded models are sent first as version 0, applying from
/// the first window on, and no bootstrap fit runs. With retraining, [`ModelUpdate::ScoresUntil`]
/// bounds them until the schedule is decided, and versions from 1 on are fitted as above.
///
/// `windows` must be the output of [`crate::build_user_windows`], which emits each window at or
/// before its first event time. `state` may come from a checkpoint taken while no fit ran.
/// `traffic` counts the updates sent and the fits running, for checkpoints.
pub fn fit_models<'scope>(
    windows: StreamVec<'scope, u64, WindowRecord>,
    settings: FitSettings,
    state: FitHandle,
    traffic: std::sync::Arc<ModelTraffic>,
) -> StreamVec<'scope, u64, ModelUpdate> {
    let scope = windows.scope();
    // Loaded models without retraining are the only version, so no fit needs the windows.
    let fits = settings.loaded.is_none() || settings.schedule.retrain_every_ms.is_some();
    let reads = traffic.clone();
    let gathered = windows
        .flat_map(move |record: WindowRecord| {
            record
                .window
                .filter(|_| fits && reads.fit_reads_windows())
                .map(Rc::unwrap_or_clone)
        })
        .exchange(|_: &ClosedWindow| 0);
    let peers = scope.peers();
    let updates = gathered.unary_frontier(Pipeline, "FitModels", move |initial, info| {
        let mut capability = (scope.index() == 0).then_some(initial);
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let retraining = settings.schedule.retrain_every_ms.is_some();
        let retrain_every_ms = settings.schedule.retrain_every_ms.unwrap_or(0);
        let loading = settings.loaded.is_some();
        // Loaded models without retraining need no schedule.
        let needs_schedule = retraining || !loading;
        {
            let mut state = state.borrow_mut();
            if state.start.is_none() {
                state.start = Some(BootstrapStart::new(settings.schedule.clone()));
                state.keep_from = needs_schedule.then_some(0);
                state.next_version = u64::from(loading);
            }
        }
        let mut jobs: Option<Sender<FitJob>> = None;
        let mut results: Option<Receiver<FittedVersion>> = None;
        let mut running = 0u64;
        move |(input, frontier), output| {
            let mut guard = state.borrow_mut();
            let FitState {
                start,
                unscored_before,
                schedule,
                kept,
                keep_from,
                latest_start,
                next_version,
                loaded_sent,
            } = &mut *guard;
            let start = start.as_mut().expect("set when the operator was built");
            let mut sent = 0;
            input.for_each(|_, data| {
                for window in data.drain(..) {
                    *latest_start = (*latest_start).max(Some(window.start_ms));
                    if needs_schedule && schedule.is_none() {
                        start.add(&window);
                    }
                    if keep_from.is_some_and(|from| window.start_ms >= from) {
                        kept.push(window);
                    }
                }
            });
            let Some(held) = capability.as_ref() else {
                kept.clear();
                return;
            };
            let bound = frontier.frontier().first().copied();

            if let Some(loaded) = settings.loaded.as_ref().filter(|_| !*loaded_sent) {
                let mut version = loaded.clone();
                version.applies_from_ms = 0;
                version.applies_until_ms = retraining.then_some(0);
                output.session(held).give(ModelUpdate::Fitted(version));
                *loaded_sent = true;
                sent += 1;
            }

            if needs_schedule && schedule.is_none() {
                // Windows go out at or before their first event, so every window whose first
                // event is before the frontier has arrived.
                *schedule = start.decide(bound);
                for skipped in start.take_skipped() {
                    tracing::info!(
                        slot_start_ms = skipped.start_ms,
                        events = skipped.events,
                        mean_events = skipped.mean_events,
                        coverage = skipped.coverage,
                        "skipped a sparse window at the start of the stream for the bootstrap period"
                    );
                }
                match &*schedule {
                    Some(decided) if loading => {
                        let until_ms = decided.applies_from(1);
                        tracing::info!(
                            first_event_ms = decided.start_ms,
                            until_ms,
                            "retraining schedule set; the loaded models score the windows that start before until_ms"
                        );
                        output.session(held).give(ModelUpdate::ScoresUntil { until_ms });
                        sent += 1;
                        let (next_from, _) = decided.training_span(1);
                        *keep_from = Some(next_from);
                        kept.retain(|window| window.start_ms >= next_from);
                    }
                    Some(decided) => {
                        let before_ms = decided.applies_from(0);
                        tracing::info!(
                            first_event_ms = decided.start_ms,
                            end_ms = before_ms,
                            "bootstrap period set"
                        );
                        output.session(held).give(ModelUpdate::Unscored { before_ms });
                        sent += 1;
                    }
                    None => {
                        let earliest = start.earliest_end();
                        if earliest > *unscored_before {
                            *unscored_before = earliest;
                            if let Some(before_ms) = earliest {
                                // Version 1 applies at least one retraining interval after
                                // the earliest end of the bootstrap period.
                                let update = if loading {
                                    ModelUpdate::ScoresUntil {
                                        until_ms: before_ms.saturating_add(retrain_every_ms),
                                    }
                                } else {
                                    ModelUpdate::Unscored { before_ms }
                                };
                                output.session(held).give(update);
                                sent += 1;
                            }
                        }
                    }
                }
            }

            if let Some(decided) = &*schedule {
                // Start every version whose training span has arrived, and at the end of the
                // stream every version that a window needs.
                loop {
                    if !retraining && *next_version > 0 {
                        break;
                    }
                    let ready = match bound {
                        Some(bound) => bound >= decided.complete_at(*next_version),
                        None => latest_start.is_some_and(|latest| {
                            *next_version == 0
                                || decided.version_for(latest) >= Some(*next_version)
                        }),
                    };
                    if !ready {
                        break;
                    }
                    let (from, until) = decided.training_span(*next_version);
                    let target_end = until.saturating_add(decided.settings.window_ms.max(1));
                    let mut job_windows: Vec<ClosedWindow> = kept
                        .iter()
                        .filter(|window| window.start_ms >= from && window.start_ms <= target_end)
                        .cloned()
                        .collect();
                    job_windows.sort_by(|a, b| (&a.user, a.start_ms).cmp(&(&b.user, b.start_ms)));
                    let sender = jobs.get_or_insert_with(|| {
                        let (sender, receiver) = spawn_fitter(settings.clone(), activator.clone());
                        results = Some(receiver);
                        sender
                    });
                    let job = FitJob {
                        version: *next_version,
                        schedule: decided.clone(),
                        windows: job_windows,
                    };
                    if sender.send(job).is_err() {
                        tracing::error!("the model fit thread stopped; no more model versions");
                        break;
                    }
                    running += 1;
                    *next_version += 1;
                    if retraining {
                        // Later versions train on windows from the next span's start on.
                        let (next_from, _) = decided.training_span(*next_version);
                        *keep_from = Some(next_from);
                        kept.retain(|window| window.start_ms >= next_from);
                    } else {
                        *keep_from = None;
                        *kept = Vec::new();
                    }
                }
            }

            if let Some(receiver) = &results {
                loop {
                    match receiver.try_recv() {
                        Ok(fitted) => {
                            running -= 1;
                            output
                                .session(held)
                                .give(ModelUpdate::Fitted(Box::new(fitted)));
                            sent += 1;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            if running > 0 {
                                tracing::error!("the model fit thread stopped without a result");
                            }
                            running = 0;
                            break;
                        }
                    }
                }
            }

            // The capability follows the frontier, so the score operators downstream are not
            // held back, and goes once no version can come.
            traffic.updates_sent(sent * peers);
            traffic.record_fits_running(running);
            let all_started = !retraining && *next_version > 0;
            if all_started {
                // Later windows would only update `latest_start`, which nothing reads once
                // every version has started.
                traffic.record_fit_done_with_windows();
            }
            if let (Some(bound), Some(held)) = (bound, capability.as_mut()) {
                if *held.time() < bound {
                    held.downgrade(&bound);
                }
            }
            // At the end of the stream every version a window needs has started above.
            if (bound.is_none() || all_started) && running == 0 {
                capability = None;
                jobs = None;
            }
        }
    });
    updates.broadcast()
}

/// Starts the thread that fits the jobs sent to it one at a time, in order, and returns the
/// job sender and the channel of results. The thread ends when the sender is dropped.
fn spawn_fitter(
    settings: FitSettings,
    activator: timely::scheduling::SyncActivator,
) -> (Sender<FitJob>, Receiver<FittedVersion>) {
    let (job_sender, job_receiver) = mpsc::channel::<FitJob>();
    let (sender, receiver) = mpsc::channel();
    let work = move || {
        let mut jobs: VecDeque<FitJob> = VecDeque::new();
        loop {
            if jobs.is_empty() {
                match job_receiver.recv() {
                    Ok(job) => jobs.push_back(job),
                    Err(_) => break,
                }
            }
            let Some(job) = jobs.pop_front() else {
                continue;
            };
            let fitted = run_fit(job, &settings);
            // The operator may be gone when the dataflow was dropped; nothing is left to do then.
            if sender.send(fitted).is_err() {
                break;
            }
            let _ = activator.activate();
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("veer-model-fit".into())
        .spawn(work)
    {
        tracing::error!(%error, "failed to start the model fit thread");
    }
    (job_sender, receiver)
}

/// Fits one version and logs the result.
fn run_fit(job: FitJob, settings: &FitSettings) -> FittedVersion {
    let started = Instant::now();
    let FitJob {
        version,
        schedule,
        windows,
    } = job;
    let rows = version_rows(&windows, &schedule, version);
    drop(windows);
    tracing::info!(version, training_windows = rows.len(), "fitting models");
    let models = fit_version(&rows, &settings.params, settings.seed);
    let applies_from_ms = schedule.applies_from(version);
    let (trained_from_ms, trained_until_ms) = schedule.training_span(version);
    match &models {
        Ok(models) => {
            for warning in models.warnings() {
                tracing::warn!(version, %warning, "model setting reduced");
            }
            tracing::info!(
                version,
                training_windows = rows.len(),
                seconds = started.elapsed().as_secs_f64(),
                applies_from_ms,
                features = ?models.selected_features(),
                "models fitted"
            );
        }
        Err(reason) if version == 0 => tracing::warn!(
            version,
            %reason,
            training_windows = rows.len(),
            "no models fitted; alerts come from the detector alone"
        ),
        Err(reason) => tracing::warn!(
            version,
            %reason,
            training_windows = rows.len(),
            "no models fitted; the previous version stays in force"
        ),
    }
    let fitted = FittedVersion {
        version,
        applies_from_ms,
        applies_until_ms: schedule.applies_until(version),
        trained_from_ms,
        trained_until_ms,
        models,
    };
    if let (Some(sink), Ok(models)) = (&settings.sink, &fitted.models) {
        sink.fitted(&fitted, models);
    }
    fitted
}
