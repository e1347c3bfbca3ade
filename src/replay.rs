//! A single-threaded replay of the main job: the reference model of the dataflow.
//!
//! [`replay`] runs the same steps as the timely pipeline (ordering, duplicate removal,
//! per-window co-occurrence, group learning, per-user detection) in one loop over events
//! sorted by time. It is slower than the dataflow and keeps nothing across windows that the
//! dataflow would not, and it exists for two reasons: tests compare the dataflow's alerts with
//! it, and explanations use it to trace one user's events with the detector's state after
//! each of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use veer_models::attributes::AttributeHistory;
use veer_models::fusion::{FusionConfig, FusionRule, UserFusion};
use veer_models::groups::SessionCounter;
use std::sync::Arc;

use veer_models::ml::{
    fit_version, score_window, split_users, training_rows, tune_interest, verdict, version_rows,
    BootstrapStart, ClosedWindow, Evaluation, InterestGrid, InterestPredictor, InterestTuning,
    ModelParams, ModelSet, Schedule, ScheduleSettings, TrainingRow, UserHistory, WindowConfig,
    WindowEvent, WindowFeatures, WindowSettings,
};
use veer_models::{
    Alert, DetectorConfig, Event, GroupConfig, GroupMap, Id, PopulationDelta, PopulationModel,
    ShiftDetector, StepTrace, UserState,
};

/// Settings of a replay, the same as the pipeline's.
#[derive(Clone, Debug)]
pub struct ReplaySettings {
    /// Settings of the shift detector.
    pub detector: DetectorConfig,
    /// Settings of group learning and trends.
    pub groups: GroupConfig,
    /// Population window in milliseconds (the pipeline's `--window`).
    pub window_ms: u64,
    /// Event time after which an idle user starts afresh, in milliseconds; `None` never.
    pub evict_idle_ms: Option<i64>,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings {
            detector: DetectorConfig::default(),
            groups: GroupConfig::default(),
            window_ms: 0,
            evict_idle_ms: crate::checkpoint::StateSettings::default().evict_idle_ms(),
        }
    }
}

/// Replays `events` and returns all alerts in output order (time, user, kind).
///
/// `observe` is called after each event with the event, the user's detector state, the
/// record of the detector's work on the event and the alerts that event raised, which is how
/// explanations trace one user.
pub fn replay(
    events: &[Event],
    settings: &ReplaySettings,
    mut observe: impl FnMut(&Event, &UserState, &StepTrace, &[Alert]),
) -> Result<Vec<Alert>, veer_models::detector::ConfigError> {
    let (alerts, _) = replay_traced(events, settings, |event, state, trace, raised, _, _| {
        observe(event, state, trace, raised)
    })?;
    Ok(alerts)
}

/// Runs [`replay`] and returns the alerts with the last group map. `observe` also gets the
/// group map that the event was judged with, and whether the event started a stay of its
/// user: the user's first event, or the first after an eviction.
fn replay_traced(
    events: &[Event],
    settings: &ReplaySettings,
    mut observe: impl FnMut(&Event, &UserState, &StepTrace, &[Alert], &GroupMap, bool),
) -> Result<(Vec<Alert>, GroupMap), veer_models::detector::ConfigError> {
    let detector = ShiftDetector::new(settings.detector.clone())?;
    let window_ms = settings.window_ms.max(1);
    let mut sorted: Vec<&Event> = events.iter().collect();
    crate::ingest::drop_exact_duplicates(&mut sorted);

    let mut counter = SessionCounter::new(settings.detector.session_rule());
    let mut model = PopulationModel::new(settings.groups.clone());
    let mut open: BTreeMap<u64, PopulationDelta> = BTreeMap::new();
    let mut groups = GroupMap::default();
    let mut users: HashMap<Id, (i64, UserState)> = HashMap::new();
    let mut alerts = Vec::new();
    let mut raised = Vec::new();

    for event in sorted {
        let time = event.ts_ms as u64;
        let window_start = time - time % window_ms;
        // Windows that ended at or before this event's window start are complete: the
        // dataflow applies them before any event of this window.
        while let Some(entry) = open.first_entry() {
            if *entry.key() > window_start {
                break;
            }
            groups.apply(model.add_window(&entry.remove()));
        }

        let end = (time / window_ms + 1) * window_ms;
        let delta = open.entry(end).or_insert_with(|| PopulationDelta {
            window_end: end,
            ..Default::default()
        });
        counter.count(&event, delta);

        let mut new_stay = false;
        let (last_ts_ms, state) = users.entry(event.user.clone()).or_insert_with(|| {
            new_stay = true;
            (event.ts_ms, UserState::default())
        });
        if settings
            .evict_idle_ms
            .is_some_and(|idle| event.ts_ms - *last_ts_ms > idle)
        {
            *state = UserState::default();
            new_stay = true;
        }
        *last_ts_ms = event.ts_ms;
        raised.clear();
        let trace = detector.observe_traced(state, event, &groups, &mut raised);
        observe(event, state, &trace, &raised, &groups, new_stay);
        alerts.append(&mut raised);
    }
    alerts.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
    Ok((alerts, groups))
}

/// Settings of the model path of a replay: windows, bootstrap, fitting and fusion.
#[derive(Clone, Debug)]
pub struct ModelRunSettings {
    /// Length of the bootstrap period, during which windows only train the models, in
    /// milliseconds. Windows that start later are scored.
    pub bootstrap_ms: u64,
    /// See [`ScheduleSettings::start_density`].
    pub start_density: f64,
    /// Event time between two refits in milliseconds, or `None` to fit once.
    pub retrain_every_ms: Option<u64>,
    /// Seed of every model fit.
    pub seed: u64,
    /// Settings of the fitted models.
    pub params: ModelParams,
    /// Settings of the window features.
    pub window: WindowConfig,
    /// Settings of the fusion rule.
    pub fusion: FusionConfig,
    /// Per-window decay of a user's reference group weights, in 0..=1.
    pub reference_decay: f64,
    /// Versions of the user attribute table; each window's attribute features come from the
    /// version in force at the window's last event. Empty: every user has unknown attributes.
    pub attributes: AttributeHistory,
    /// Models loaded from a file (`--models-load`). They replace the fit on the bootstrap
    /// period as version 0 and score every window from the first one on (with retraining,
    /// until version 1 applies). `None` fits version 0.
    pub loaded: Option<Arc<crate::model_file::ModelFile>>,
    /// Receives each fitted version in the dataflow (`--models-save`). The replay does not
    /// call it.
    pub sink: Option<Arc<dyn veer_operators::fit::VersionSink>>,
}

impl Default for ModelRunSettings {
    fn default() -> Self {
        ModelRunSettings {
            bootstrap_ms: 2 * 86_400_000,
            start_density: 0.25,
            retrain_every_ms: None,
            seed: 7,
            params: ModelParams::default(),
            window: WindowConfig::default(),
            fusion: FusionConfig::default(),
            reference_decay: 0.9,
            attributes: AttributeHistory::default(),
            loaded: None,
            sink: None,
        }
    }
}

/// Output of a replay with models.
#[derive(Clone, Debug, Default)]
pub struct ModelRunOutput {
    /// Fused alerts in output order (time, user, kind).
    pub alerts: Vec<Alert>,
    /// Settings that fitting lowered, as log lines.
    pub warnings: Vec<String>,
    /// Reason no models were fitted, when none were. Alerts are then the detector's alone.
    pub skipped: Option<String>,
    /// Training windows of the first version, and scored windows.
    pub training_windows: usize,
    pub scored_windows: usize,
    /// Model versions fitted (failed refits included), and the first event of the bootstrap
    /// period in Unix milliseconds.
    pub versions: usize,
    pub bootstrap_start_ms: Option<u64>,
}

impl ModelRunSettings {
    /// Checks the settings that a run cannot check by type.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.window.validate()?;
        if !(0.0..=1.0).contains(&self.start_density) {
            anyhow::bail!(
                "invalid [models] bootstrap_start_density {}: must be in 0..=1",
                self.start_density
            );
        }
        if self.bootstrap_ms == 0 {
            anyhow::bail!("invalid [models] bootstrap 0s: must be more than 0");
        }
        Ok(())
    }

    /// Returns the settings of the fit schedule for windows of `window_ms`.
    pub fn schedule_settings(&self, window_ms: u64) -> ScheduleSettings {
        ScheduleSettings {
            bootstrap_ms: self.bootstrap_ms,
            window_ms: window_ms.max(1),
            retrain_every_ms: self.retrain_every_ms,
            start_density: self.start_density,
        }
    }

    /// Returns the settings of [`UserHistory::close`].
    pub fn window_settings(&self) -> WindowSettings {
        WindowSettings {
            features: self.window.clone(),
            reference_decay: self.reference_decay,
        }
    }
}

/// Replays `events` with the model path: per-user windows of `settings.window_ms`, model
/// versions fitted on the windows of all users by the fit schedule ([`Schedule`]), and the
/// detector's alerts fused with the model signals of each later window by [`FusionRule`].
///
/// This is the single-threaded reference of the model operators. Training rows are sorted by
/// user and window before each fit, so the models depend only on the events and the seed.
pub fn replay_with_models(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
) -> anyhow::Result<ModelRunOutput> {
    models.validate()?;
    let rule = FusionRule::new(models.fusion.clone())?;
    let settings = &ReplaySettings {
        detector: models.fusion.detector_config(&settings.detector),
        ..settings.clone()
    };
    let window_ms = settings.window_ms.max(1);
    let (closed, detector_alerts, new_stays) = user_windows(events, settings, models)?;
    let mut output = ModelRunOutput::default();
    let schedule = decide_schedule(&closed, models.schedule_settings(window_ms));
    output.bootstrap_start_ms = schedule.as_ref().map(|schedule| schedule.start_ms);
    let versions = match &schedule {
        Some(schedule) => fit_versions(&closed, schedule, models, &mut output),
        None => {
            output.skipped = Some("no windows to train on".to_string());
            Vec::new()
        }
    };

    // Detector alerts by user window. Each goes through the fusion rule of its window, with
    // each user's windows in time order.
    let mut by_window: BTreeMap<(Id, u64), Vec<Alert>> = BTreeMap::new();
    for alert in detector_alerts {
        let time = (alert.ts * 1000) as u64;
        let start = time - time % window_ms;
        by_window
            .entry((alert.user.clone(), start))
            .or_default()
            .push(alert);
    }
    let mut alerts = Vec::new();
    let mut users: HashMap<Id, UserFusion> = HashMap::new();
    for window in &closed {
        // A user back after an eviction starts the rule afresh, as in the pipeline.
        if new_stays.contains(&(window.user.clone(), window.start_ms)) {
            users.remove(&window.user);
        }
        let raised = by_window
            .remove(&(window.user.clone(), window.start_ms))
            .unwrap_or_default();
        // Loaded models score the windows before the end of the bootstrap period as well.
        let version = schedule
            .as_ref()
            .and_then(|schedule| schedule.version_for(window.start_ms))
            .or(models.loaded.as_ref().map(|_| 0));
        let model_set = version.and_then(|version| versions.get(version as usize)?.as_ref());
        let user = users.entry(window.user.clone()).or_default();
        match model_set {
            Some(model_set) => {
                output.scored_windows += 1;
                let signals = score_window(model_set, window)?;
                alerts.extend(rule.fuse(user, &verdict(window, Some(signals)), raised));
            }
            None => alerts.extend(rule.pass_unscored(user, raised)),
        }
    }
    // Alerts without a closed window pass unscored, as in the pipeline.
    for ((user, _), raised) in by_window {
        alerts.extend(rule.pass_unscored(users.entry(user).or_default(), raised));
    }
    alerts.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
    output.alerts = alerts;
    Ok(output)
}

/// Share of the users whose bootstrap windows validate the interest settings in
/// [`evaluate_interest`]. The other users' bootstrap windows fit the candidates.
pub const VALIDATION_USERS: f64 = 0.25;

/// The interest settings chosen on the bootstrap windows, and every interest predictor's
/// error on the later, held-out windows.
#[derive(Clone, Debug)]
pub struct InterestBenchmark {
    /// Bootstrap windows of the fit part and of the validation part.
    pub fit_windows: usize,
    pub validation_windows: usize,
    pub tuning: InterestTuning,
    /// Each predictor's error on the held-out windows, fitted with the chosen settings on
    /// every bootstrap window.
    pub held_out: Vec<(InterestPredictor, Evaluation)>,
}

/// Chooses the interest settings from `grid` and evaluates each interest predictor on the
/// windows that start after the bootstrap period (held out from the fit and the choice).
///
/// The bootstrap windows are split by user: [`VALIDATION_USERS`] of the users validate
/// candidates fitted on the rest's windows ([`tune_interest`]). The chosen settings are then
/// fitted on every bootstrap window, and only that fit uses the held-out windows.
pub fn evaluate_interest(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
    grid: &InterestGrid,
) -> anyhow::Result<InterestBenchmark> {
    let window_ms = settings.window_ms.max(1);
    let (closed, _, _) = user_windows(events, settings, models)?;
    let schedule = decide_schedule(&closed, models.schedule_settings(window_ms))
        .ok_or_else(|| anyhow::anyhow!("no windows to evaluate on"))?;
    let bootstrap_end = schedule.applies_from(0);

    let validation_users = split_users(
        closed.iter().map(|window| &window.user),
        VALIDATION_USERS,
        models.seed,
    )?;
    let (validation, fit): (Vec<ClosedWindow>, Vec<ClosedWindow>) = closed
        .iter()
        .cloned()
        .partition(|window| validation_users.contains(&window.user));
    let fit_rows = version_rows(&fit, &schedule, 0);
    let validation_rows = version_rows(&validation, &schedule, 0);
    let tuning = tune_interest(
        &fit_rows,
        &validation_rows,
        &models.params,
        grid,
        models.seed,
    )?;

    let training = version_rows(&closed, &schedule, 0);
    let all_rows = training_rows(&closed, window_ms, u64::MAX);
    let held_out: Vec<TrainingRow> = closed
        .iter()
        .zip(all_rows)
        .filter(|(window, _)| window.start_ms >= bootstrap_end)
        .map(|(_, row)| row)
        .collect();
    let params = ModelParams {
        interest: tuning.chosen.clone(),
        ..models.params.clone()
    };
    let model_set = ModelSet::fit_with(&training, &params, models.seed)?;
    let mut evaluations = Vec::new();
    for predictor in [
        InterestPredictor::Forest,
        InterestPredictor::Linear,
        InterestPredictor::SameAsLast,
        InterestPredictor::SmoothedLast,
    ] {
        evaluations.push((predictor, model_set.evaluate(&held_out, predictor)?));
    }
    Ok(InterestBenchmark {
        fit_windows: fit_rows.len(),
        validation_windows: validation_rows.len(),
        tuning,
        held_out: evaluations,
    })
}

/// Returns the features of every user window of the model path, sorted by user and window
/// start (Unix milliseconds), as the models see them.
pub fn model_windows(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
) -> anyhow::Result<Vec<(Id, u64, WindowFeatures)>> {
    let (closed, _, _) = user_windows(events, settings, models)?;
    Ok(closed
        .into_iter()
        .map(|window| (window.user, window.start_ms, window.features))
        .collect())
}

/// The events of one user window, whether any was part of a burst, and whether one started a
/// stay of the user.
#[derive(Default)]
struct WindowEvents {
    events: Vec<WindowEvent>,
    burst: bool,
    new_stay: bool,
}

/// Decides the start of the bootstrap period from every window, as the fit operator does at
/// the end of a stream. Returns `None` without windows.
fn decide_schedule(closed: &[ClosedWindow], settings: ScheduleSettings) -> Option<Schedule> {
    let mut start = BootstrapStart::new(settings);
    for window in closed {
        start.add(window);
    }
    start.decide(None)
}

/// Fits every model version that a window needs, in order, and returns each version's models.
/// A refit that fails keeps the previous version's models, and a failed first fit leaves its
/// windows unscored, as in the dataflow.
fn fit_versions(
    closed: &[ClosedWindow],
    schedule: &Schedule,
    models: &ModelRunSettings,
    output: &mut ModelRunOutput,
) -> Vec<Option<Arc<ModelSet>>> {
    let latest = closed.iter().map(|window| window.start_ms).max().unwrap_or(0);
    let last_version = schedule.version_for(latest).unwrap_or(0);
    let mut versions: Vec<Option<Arc<ModelSet>>> = Vec::new();
    if let Some(loaded) = &models.loaded {
        versions.push(Some(Arc::new(loaded.models.clone())));
    }
    for version in versions.len() as u64..=last_version {
        let rows = version_rows(closed, schedule, version);
        let fitted = fit_version(&rows, &models.params, models.seed);
        if version == 0 {
            output.training_windows = rows.len();
        }
        match fitted {
            Ok(model_set) => {
                if version == 0 {
                    output.warnings = model_set.warnings().iter().map(ToString::to_string).collect();
                }
                versions.push(Some(Arc::new(model_set)));
            }
            Err(reason) => {
                if version == 0 {
                    output.skipped = Some(reason);
                }
                let previous = versions.last().cloned().flatten();
                versions.push(previous);
            }
        }
    }
    output.versions = versions.len();
    versions
}

/// Builds every user window of the replay, sorted by user and window start, and returns them
/// with the detector's alerts and the windows (user and start) whose events started a stay of
/// their user.
///
/// Each window is closed with the group map that its own events were judged with, and with
/// the attribute row in force at its last event.
fn user_windows(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
) -> anyhow::Result<(Vec<ClosedWindow>, Vec<Alert>, BTreeSet<(Id, u64)>)> {
    models.window.validate()?;
    let window_ms = settings.window_ms.max(1);
    let mut by_user: BTreeMap<Id, BTreeMap<u64, WindowEvents>> = BTreeMap::new();
    let mut groups_by_window: HashMap<u64, GroupMap> = HashMap::new();
    let mut detector_alerts: Vec<Alert> = Vec::new();
    replay_traced(
        events,
        settings,
        |event, _, trace, raised, groups, new_stay| {
            let time = event.ts_ms as u64;
            let start = time - time % window_ms;
            groups_by_window
                .entry(start)
                .or_insert_with(|| groups.clone());
            let window = by_user
                .entry(event.user.clone())
                .or_default()
                .entry(start)
                .or_default();
            window.events.push(WindowEvent::from(event));
            window.burst |= trace.in_burst;
            window.new_stay |= new_stay;
            detector_alerts.extend_from_slice(raised);
        },
    )?;

    let window_settings = models.window_settings();
    let mut closed = Vec::new();
    let mut new_stays = BTreeSet::new();
    for (user, windows) in by_user {
        let mut history = UserHistory::default();
        for (start, window) in windows {
            if window.new_stay {
                new_stays.insert((user.clone(), start));
                history = UserHistory::default();
            }
            let last_ms = window.events.last().map_or(0, |event| event.ts_ms as u64);
            let closed_window = history.close(
                &user,
                start,
                &window.events,
                window.burst,
                &groups_by_window[&start],
                models.attributes.row(&user, last_ms),
                &window_settings,
            )?;
            closed.extend(closed_window);
        }
    }
    Ok((closed, detector_alerts, new_stays))
}
