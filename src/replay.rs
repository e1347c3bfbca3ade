//! A single-threaded replay of the main job: the reference model of the dataflow.
//!
//! [`replay`] runs the same steps as the timely pipeline (ordering, duplicate removal,
//! per-window co-occurrence, group learning, per-user detection) in one loop over events
//! sorted by time. It is slower than the dataflow and keeps nothing across windows that the
//! dataflow would not, and it exists for two reasons: tests compare the dataflow's alerts with
//! it, and explanations use it to trace one user's events with the detector's state after
//! each of them.

use std::collections::{BTreeMap, HashMap};

use veer_models::attributes::AttributeHistory;
use veer_models::fusion::{FusionConfig, FusionRule, ModelSignals, WindowVerdict};
use veer_models::groups::SessionCounter;
use veer_models::ml::{
    surprise, Evaluation, InterestPredictor, ModelParams, ModelSet, ReferenceProfile, Shares,
    TrainingRow, WindowConfig, WindowFeatures,
};
use veer_models::{
    Alert, Detector, DetectorConfig, Event, GroupConfig, GroupKey, GroupMap, Id, PopulationDelta,
    PopulationModel, ShiftDetector, UserState,
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
/// `observe` is called after each event with the event, the user's detector state and the
/// alerts that event raised, which is how explanations trace one user.
pub fn replay(
    events: &[Event],
    settings: &ReplaySettings,
    mut observe: impl FnMut(&Event, &UserState, &[Alert]),
) -> Result<Vec<Alert>, veer_models::detector::ConfigError> {
    let (alerts, _) = replay_traced(events, settings, |event, state, raised, _| {
        observe(event, state, raised)
    })?;
    Ok(alerts)
}

/// Runs [`replay`], also passing `observe` the group map that the event was judged with, and
/// returns the alerts with the last group map.
fn replay_traced(
    events: &[Event],
    settings: &ReplaySettings,
    mut observe: impl FnMut(&Event, &UserState, &[Alert], &GroupMap),
) -> Result<(Vec<Alert>, GroupMap), veer_models::detector::ConfigError> {
    let detector = ShiftDetector::new(settings.detector.clone())?;
    let window_ms = settings.window_ms.max(1);
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by(|a, b| a.processing_cmp(b));
    sorted.dedup_by(|later, earlier| later.same_content(earlier));

    let mut counter = SessionCounter::new(settings.detector.session_gap_secs * 1000);
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
        counter.count(event.clone(), delta);

        let (last_ts_ms, state) = users
            .entry(event.user.clone())
            .or_insert_with(|| (event.ts_ms, UserState::default()));
        if settings
            .evict_idle_ms
            .is_some_and(|idle| event.ts_ms - *last_ts_ms > idle)
        {
            *state = UserState::default();
        }
        *last_ts_ms = event.ts_ms;
        raised.clear();
        detector.observe(state, event, &groups, &mut raised);
        observe(event, state, &raised, &groups);
        alerts.append(&mut raised);
    }
    alerts.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
    Ok((alerts, groups))
}

/// Settings of the model path of a replay: windows, bootstrap, fitting and fusion.
#[derive(Clone, Debug)]
pub struct ModelRunSettings {
    /// Event time from the first event during which windows only train the models, in
    /// milliseconds. Windows that start later are scored.
    pub bootstrap_ms: u64,
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
}

impl Default for ModelRunSettings {
    fn default() -> Self {
        ModelRunSettings {
            bootstrap_ms: 2 * 86_400_000,
            seed: 7,
            params: ModelParams::default(),
            window: WindowConfig::default(),
            fusion: FusionConfig::default(),
            reference_decay: 0.9,
            attributes: AttributeHistory::default(),
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
    /// Training windows and scored windows.
    pub training_windows: usize,
    pub scored_windows: usize,
}

/// One closed user window of the model path.
struct UserWindow {
    user: Id,
    start_ms: u64,
    first_ts: i64,
    last_ts: i64,
    events: u64,
    burst: bool,
    features: WindowFeatures,
    /// This window's shares of the previous window's top groups, the surprise target.
    shares_vs_previous: Option<Shares>,
    /// The next window's shares of this window's top groups, the interest model's target.
    next_shares: Option<Shares>,
}

/// The open window of one user and the reference built from the windows before it.
#[derive(Default)]
struct OpenWindow {
    start_ms: u64,
    events: Vec<Event>,
    burst: bool,
    reference: BTreeMap<GroupKey, f64>,
    /// Top groups of the previous window's reference and its index in the closed list.
    previous: Option<(ReferenceProfile, usize)>,
}

/// Replays `events` with the model path: per-user windows of `settings.window_ms`, models
/// fitted once on the bootstrap windows of all users, and the detector's alerts fused with
/// the model signals of each later window by [`FusionRule`].
///
/// This is the single-threaded reference of the model path. Training rows are sorted by user
/// and window before the fit, so the models depend only on the events and the seed.
///
/// NOTE: a user's "next window" is the user's next window with events, which may be days
/// later, not the adjacent time window.
pub fn replay_with_models(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
) -> anyhow::Result<ModelRunOutput> {
    let rule = FusionRule::new(models.fusion.clone())?;
    let window_ms = settings.window_ms.max(1);
    let (closed, mut detector_alerts, first_ms) = user_windows(events, settings, models)?;
    let mut output = ModelRunOutput::default();
    let bootstrap_end = first_ms.unwrap_or(0).saturating_add(models.bootstrap_ms);
    let rows = training_rows(&closed, |start| start < bootstrap_end);
    output.training_windows = rows.len();
    let fit_started = std::time::Instant::now();
    let fitted = if rows.is_empty() {
        Err("no training windows in the bootstrap period".to_string())
    } else {
        ModelSet::fit_with(&rows, &models.params, models.seed).map_err(|error| error.to_string())
    };
    let model_set = match fitted {
        Ok(model_set) => model_set,
        Err(reason) => {
            output.skipped = Some(reason);
            detector_alerts.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
            output.alerts = detector_alerts;
            return Ok(output);
        }
    };
    output.warnings = model_set
        .warnings()
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::debug!(
        seconds = fit_started.elapsed().as_secs_f64(),
        "models fitted"
    );

    // Detector alerts by user window; each goes through the fusion rule of its window.
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
    for (index, window) in closed.iter().enumerate() {
        let raised = by_window
            .remove(&(window.user.clone(), window.start_ms))
            .unwrap_or_default();
        if window.start_ms < bootstrap_end {
            alerts.extend(raised);
            continue;
        }
        output.scored_windows += 1;
        let previous = index
            .checked_sub(1)
            .map(|before| &closed[before])
            .filter(|before| before.user == window.user);
        let signals = score_window(&model_set, window, previous)?;
        let verdict = WindowVerdict {
            user: window.user.clone(),
            last_ts: window.last_ts,
            first_ts: window.first_ts,
            events: window.events,
            burst: window.burst,
            signals: Some(signals),
        };
        alerts.extend(rule.fuse(&verdict, raised));
    }
    alerts.extend(by_window.into_values().flatten());
    alerts.sort_by(|a, b| (a.ts, &a.user, a.kind).cmp(&(b.ts, &b.user, b.kind)));
    output.alerts = alerts;
    Ok(output)
}

fn training_rows(windows: &[UserWindow], keep: impl Fn(u64) -> bool) -> Vec<TrainingRow> {
    windows
        .iter()
        .filter(|window| keep(window.start_ms))
        .map(|window| TrainingRow {
            features: window.features.clone(),
            next_shares: window.next_shares,
        })
        .collect()
}

/// Fits the models on the bootstrap windows and evaluates each interest predictor on the
/// windows that start after the bootstrap period (held out from the fit).
pub fn evaluate_interest(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
) -> anyhow::Result<Vec<(InterestPredictor, Evaluation)>> {
    let (closed, _, first_ms) = user_windows(events, settings, models)?;
    let bootstrap_end = first_ms.unwrap_or(0).saturating_add(models.bootstrap_ms);
    let training = training_rows(&closed, |start| start < bootstrap_end);
    let held_out = training_rows(&closed, |start| start >= bootstrap_end);
    let model_set = ModelSet::fit_with(&training, &models.params, models.seed)?;
    let mut evaluations = Vec::new();
    for predictor in [
        InterestPredictor::Forest,
        InterestPredictor::Linear,
        InterestPredictor::SameAsLast,
    ] {
        evaluations.push((predictor, model_set.evaluate(&held_out, predictor)?));
    }
    Ok(evaluations)
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

/// Builds every user window of the replay, sorted by user and window start, and returns them
/// with the detector's alerts and the time of the first event.
fn user_windows(
    events: &[Event],
    settings: &ReplaySettings,
    models: &ModelRunSettings,
) -> anyhow::Result<(Vec<UserWindow>, Vec<Alert>, Option<u64>)> {
    models.window.validate()?;
    let window_ms = settings.window_ms.max(1);
    let mut open: HashMap<Id, OpenWindow> = HashMap::new();
    let mut closed: Vec<UserWindow> = Vec::new();
    let mut detector_alerts: Vec<Alert> = Vec::new();
    let mut first_ms: Option<u64> = None;
    let close = |window: &mut OpenWindow,
                 user: &Id,
                 groups: &GroupMap,
                 closed: &mut Vec<UserWindow>|
     -> anyhow::Result<()> {
        if window.events.is_empty() {
            return Ok(());
        }
        let profile = ReferenceProfile::new(&window.reference)?;
        let last_ms = window.events[window.events.len() - 1].ts_ms as u64;
        let features = profile
            .window_features(&window.events, groups, &models.window)?
            .with_attributes(models.attributes.row(user, last_ms));
        let shares_vs_previous = match &window.previous {
            Some((previous, index)) => {
                let shares = previous.slot_shares(&window.events, groups);
                closed[*index].next_shares = shares;
                shares
            }
            None => None,
        };
        for event in &window.events {
            let weight = event.behavior.interest_weight();
            if weight > 0.0 {
                let group = groups.group_of(&event.category, event.topic.as_ref());
                *window.reference.entry(group).or_default() += weight;
            }
        }
        for weight in window.reference.values_mut() {
            *weight *= models.reference_decay;
        }
        closed.push(UserWindow {
            user: user.clone(),
            start_ms: window.start_ms,
            first_ts: window.events[0].ts_secs(),
            last_ts: window.events[window.events.len() - 1].ts_secs(),
            events: window.events.len() as u64,
            burst: window.burst,
            features,
            shares_vs_previous,
            next_shares: None,
        });
        window.previous = Some((ReferenceProfile::new(&window.reference)?, closed.len() - 1));
        window.events.clear();
        window.burst = false;
        Ok(())
    };

    let mut failure: Option<anyhow::Error> = None;
    let (_, last_groups) = replay_traced(events, settings, |event, state, raised, groups| {
        if failure.is_some() {
            return;
        }
        let time = event.ts_ms as u64;
        first_ms.get_or_insert(time);
        let start = time - time % window_ms;
        let window = open.entry(event.user.clone()).or_default();
        if window.start_ms != start {
            if let Err(error) = close(window, &event.user, groups, &mut closed) {
                failure = Some(error);
                return;
            }
            window.start_ms = start;
        }
        window.events.push(event.clone());
        window.burst |= state.last_step.in_burst;
        detector_alerts.extend_from_slice(raised);
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    let mut users: Vec<&Id> = open.keys().collect();
    users.sort();
    let users: Vec<Id> = users.into_iter().cloned().collect();
    for user in users {
        let window = open.get_mut(&user).expect("listed above");
        close(window, &user, &last_groups, &mut closed)?;
    }
    closed.sort_by(|a, b| (&a.user, a.start_ms).cmp(&(&b.user, b.start_ms)));
    Ok((closed, detector_alerts, first_ms))
}

fn score_window(
    model_set: &ModelSet,
    window: &UserWindow,
    previous: Option<&UserWindow>,
) -> anyhow::Result<ModelSignals> {
    let scores = model_set.anomaly_scores(&window.features)?;
    let segment = model_set.segment(&window.features)?;
    let mut surprise_value = None;
    let mut segment_before = None;
    if let Some(previous) = previous {
        segment_before = Some(model_set.segment(&previous.features)?);
        if let Some(observed) = window.shares_vs_previous {
            let predicted =
                model_set.predict_interest(&previous.features, InterestPredictor::Forest)?;
            surprise_value = Some(surprise(&predicted, &observed)?);
        }
    }
    Ok(ModelSignals {
        isolation_forest: scores.isolation_forest,
        one_class_svm: scores.one_class_svm,
        surprise: surprise_value,
        segment,
        segment_before,
    })
}
