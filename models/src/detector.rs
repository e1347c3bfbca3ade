//! Per-user change detection: a lasting move of a user's activity between interest groups.
//!
//! Each user keeps a *reference* profile: decayed weights of the leaf categories they were
//! active in, read at the level of [`GroupKey`]s (learned category groups or the input's own
//! topics). An event is *novel* when its group holds less than a set share of that reference.
//! Users explore, so novelty alone means little; what matters is novelty well above the
//! user's own exploring rate. A one-sided CUSUM test measures exactly that: each novel event
//! adds `ln(q / p)` and each usual one adds `ln((1 - q) / (1 - p))`, where `p` is the user's
//! measured exploring rate and `q` the novelty rate expected after a shift.
//!
//! While the CUSUM statistic is above zero the events form a *run*, held out of the reference
//! so that a shift cannot teach the reference its new groups before it is judged. An alarm
//! needs more than a high statistic:
//!
//! - at least two mostly-novel sessions in a row, so a single session in unrelated categories
//!   (a gift), or exploring now and then between usual sessions, is not a shift;
//! - novel events in later sessions that return to groups that earlier sessions of the run
//!   visited, so a lasting interest is distinguished from scattered exploration;
//! - no burst: events arriving faster than a person browses are rolled back out of the test
//!   and reported once as an `anomaly` alert;
//! - no population trend: a novel event in a group that the whole population is moving
//!   towards (a seasonal trend) is not evidence about a user who still visits their usual
//!   groups. A user with no usual event in the last `trend_leave_sessions` sessions and the
//!   current one is judged as in any other group, because a trend does not explain leaving.
//!
//! Sessions follow [`SessionRule`]: a gap, a new session id, or the longest span ends one.
//!
//! After an alarm the run becomes the user's new reference and the detector re-arms after a
//! refractory period, so one shift gives one alert.

use std::collections::BTreeMap;

// Fixed-seed hashing, so that sums over these maps run in the same order in every process
// and on every worker, and float results are bit-identical.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use serde::{Deserialize, Serialize};

pub use crate::behavior::BehaviorProfile;

use crate::alert::{Alert, AlertKind, CategoryShare};
use crate::decayed_weights::DecayedWeights;
use crate::event::{Event, Id};
use crate::groups::{GroupKey, GroupMap};
use crate::recent_events::RecentEvents;
use crate::session::{SessionMark, SessionRule};

/// Settings of the shift detector; see the module documentation for their roles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// A group with less than this share of the reference is novel to the user.
    pub novel_share: f64,
    /// Novelty rate expected once a user's interests have shifted.
    pub shift_novelty: f64,
    /// Prior exploring rate of a user with little history.
    pub prior_explore: f64,
    /// Weight, in events, of the prior exploring rate.
    pub prior_weight: f64,
    /// CUSUM alarm threshold (natural-log likelihood ratio).
    pub threshold: f64,
    /// Minimum novel events in a run before an alarm.
    pub min_novel_events: u32,
    /// Minimum novel events after the run's first session that return to the run's groups.
    pub min_recurring_events: u32,
    /// Consecutive mostly-novel sessions, ending with the current one, needed for an alarm.
    pub min_sessions: u32,
    /// Share of a session's judged events that must be novel for it to support an alarm.
    pub session_novel_share: f64,
    /// Minimum time from the run's first novel event to an alarm, in seconds. A user's visit
    /// to a dormant interest is often a cluster of sessions, while a shift lasts.
    pub min_run_span_secs: i64,
    /// Reference events needed before a user is judged.
    pub min_reference_events: u32,
    /// Distinct sessions in the reference needed before a user is judged.
    pub min_reference_sessions: u32,
    /// Per-event decay of the reference weights (half-life of about 70 events at 0.99).
    pub reference_decay: f64,
    /// Sessions in a row without an event in the user's usual groups after which a
    /// population trend no longer explains the user's novel events.
    pub trend_leave_sessions: u32,
    /// Gap that ends a session, in seconds, when the input has no session ids.
    pub session_gap_secs: i64,
    /// Maximum span of a session, in seconds. A user active without pause starts a new
    /// session this long after the current one started.
    pub session_max_span_secs: i64,
    /// Events in `burst_span_secs` that make a burst.
    pub burst_events: usize,
    /// Time span of a burst, in seconds.
    pub burst_span_secs: i64,
    /// Events after an alarm that go straight into the reference, unjudged.
    pub refractory_events: u32,
    /// Time after an alarm, in seconds, during which events go straight into the reference.
    /// Both this and `refractory_events` must pass before the user is judged again.
    pub refractory_secs: i64,
    /// Mostly-novel sessions in a row at which the detector also raises a *candidate* alert
    /// (see [`CANDIDATE_SIGNAL`]), 0 for none. Only the fusion rule of `--models` sets it and
    /// consumes the candidates, so it is not read from a file.
    #[serde(skip)]
    pub candidate_sessions: u32,
    /// Recurring novel events (see `min_recurring_events`) that a candidate needs. A candidate
    /// condition must be looser than the alarm's: at most `min_sessions` sessions and at most
    /// `min_recurring_events` events, with at least one of the two lower.
    #[serde(skip)]
    pub candidate_recurring_events: u32,
}

/// Signal that marks a candidate alert: a run that meets every alarm condition, with
/// `candidate_sessions` supporting sessions in place of `min_sessions` and
/// `candidate_recurring_events` in place of `min_recurring_events`. A candidate leaves the
/// detector's state as it was, so the run goes on towards a full alarm. Candidates are input
/// to [`crate::fusion::FusionRule`] and never written as alerts.
pub const CANDIDATE_SIGNAL: &str = "candidate";

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            novel_share: 0.03,
            shift_novelty: 0.85,
            prior_explore: 0.2,
            prior_weight: 10.0,
            threshold: 6.0,
            min_novel_events: 5,
            min_recurring_events: 2,
            min_sessions: 2,
            min_run_span_secs: 0,
            session_novel_share: 1.0,
            min_reference_events: 25,
            min_reference_sessions: 6,
            reference_decay: 0.99,
            trend_leave_sessions: 3,
            session_gap_secs: crate::session::DEFAULT_GAP_SECS,
            session_max_span_secs: crate::session::DEFAULT_MAX_SPAN_SECS,
            burst_events: 12,
            burst_span_secs: 45,
            refractory_events: 20,
            refractory_secs: 3 * 24 * 3600,
            candidate_sessions: 0,
            candidate_recurring_events: 0,
        }
    }
}

/// An invalid detector setting, named with its value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid detector setting {name} = {value}: {expected}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl DetectorConfig {
    /// Returns the session rule of these settings.
    pub fn session_rule(&self) -> SessionRule {
        SessionRule {
            gap_secs: self.session_gap_secs,
            max_span_secs: self.session_max_span_secs,
        }
    }

    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unit = |name: &'static str, value: f64| {
            if value > 0.0 && value < 1.0 {
                Ok(())
            } else {
                Err(ConfigError {
                    name,
                    value: value.to_string(),
                    expected: "a number strictly between 0 and 1",
                })
            }
        };
        unit("novel_share", self.novel_share)?;
        unit("shift_novelty", self.shift_novelty)?;
        unit("prior_explore", self.prior_explore)?;
        unit("reference_decay", self.reference_decay)?;
        if !(self.session_novel_share > 0.0 && self.session_novel_share <= 1.0) {
            return Err(ConfigError {
                name: "session_novel_share",
                value: self.session_novel_share.to_string(),
                expected: "a share in (0, 1]",
            });
        }
        if self.prior_explore >= self.shift_novelty {
            return Err(ConfigError {
                name: "prior_explore",
                value: self.prior_explore.to_string(),
                expected: "a rate below shift_novelty",
            });
        }
        let positive = |name: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ConfigError {
                    name,
                    value: value.to_string(),
                    expected: "a positive number",
                })
            }
        };
        positive("threshold", self.threshold)?;
        positive("prior_weight", self.prior_weight)?;
        positive("session_gap_secs", self.session_gap_secs as f64)?;
        positive("session_max_span_secs", self.session_max_span_secs as f64)?;
        positive("burst_span_secs", self.burst_span_secs as f64)?;
        if self.candidate_sessions > 0 {
            if self.candidate_sessions > self.min_sessions {
                return Err(ConfigError {
                    name: "candidate_sessions",
                    value: self.candidate_sessions.to_string(),
                    expected: "0 or a number up to min_sessions",
                });
            }
            let looser_sessions = self.candidate_sessions < self.min_sessions;
            if self.candidate_recurring_events > self.min_recurring_events
                || (!looser_sessions
                    && self.candidate_recurring_events == self.min_recurring_events)
            {
                return Err(ConfigError {
                    name: "candidate_recurring_events",
                    value: self.candidate_recurring_events.to_string(),
                    expected: "a number up to min_recurring_events, and below it when \
                               candidate_sessions equals min_sessions",
                });
            }
        }
        if self.burst_events < 3 {
            return Err(ConfigError {
                name: "burst_events",
                value: self.burst_events.to_string(),
                expected: "at least 3",
            });
        }
        Ok(())
    }
}

/// Highest exploring rate used in the test, because above it a shift looks like browsing.
const MAX_EXPLORE: f64 = 0.6;
/// Lowest exploring rate used in the test, so one novel event never decides alone.
const MIN_EXPLORE: f64 = 0.03;
/// Maximum run length kept. Older run events move into the reference.
const MAX_RUN: usize = 256;
/// Categories listed in an alert's `from` and `to`.
const LISTED_CATEGORIES: usize = 3;
/// Reference weight kept after an alarm, as a fraction, so the run becomes the new reference.
const REBASE_KEEP: f64 = 0.25;

/// One event held in a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunEvent {
    category: Id,
    group: GroupKey,
    weight: f64,
    session: u32,
    novel: bool,
}

/// A run: the events held out of the reference while the CUSUM statistic is above zero, and
/// the bookkeeping that only a run needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Run {
    events: Vec<RunEvent>,
    /// Event time of the run's first event, in Unix seconds.
    start_ts: i64,
    /// Run length when the current session started, so a burst can be rolled back.
    len_at_session_start: u32,
    cusum_at_session_start: f64,
}

impl Run {
    /// Creates an empty run that starts at `ts` (Unix seconds).
    fn starting_at(ts: i64) -> Box<Run> {
        Box::new(Run {
            events: Vec::new(),
            start_ts: ts,
            len_at_session_start: 0,
            cusum_at_session_start: 0.0,
        })
    }
}

/// Record of the detector's work on one event, for explanations and plots; see
/// [`ShiftDetector::observe_traced`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    /// The event's interest group.
    pub group: Option<GroupKey>,
    /// Whether the event counted for the test: false while warming up, in a burst, during the
    /// refractory period, for a trending group, or for an event without interest weight.
    pub judged: bool,
    /// Whether the event's group was novel to the user.
    pub novel: bool,
    /// The CUSUM statistic after the event.
    pub cusum: f64,
    /// The user's exploring rate used for the event.
    pub explore_rate: f64,
    /// Whether the event belongs to a burst.
    pub in_burst: bool,
}

/// Everything the shift detector keeps about one user.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserState {
    reference: DecayedWeights,
    /// Topics and the refractory period after an alarm, absent while the user needs neither.
    rare: Option<Box<RareState>>,
    /// Decayed counts of novel and all judged events, for the exploring rate.
    explore_novel: f64,
    explore_total: f64,
    cusum: f64,
    /// The current run, present exactly while `cusum` is above zero. Boxed because most users
    /// have none most of the time.
    run: Option<Box<Run>>,
    /// Number of the current session, counting from 0 and saturating at `u32::MAX`. A session
    /// starts only with an event, so saturation needs 4,294,967,295 events of one user, after
    /// which all later events count as one session.
    session: u32,
    session_mark: SessionMark,
    /// Whether the current session has had an event in a group of the user's reference,
    /// and how many sessions in a row before it had none, for the trend rule.
    usual_in_session: bool,
    sessions_without_usual: u32,
    /// Distinct sessions that have taught the reference, counted up to
    /// `min_reference_sessions` (see [`UserState::count_reference_session`]).
    reference_sessions: u32,
    /// Whether the current session is counted in `reference_sessions`.
    session_in_reference: bool,
    /// Times and categories of the latest events, for burst detection: at most
    /// `burst_events`, and none older than `burst_span_secs` before the latest event. A user
    /// who browses at a person's pace has one, which is stored inline.
    recent: RecentEvents,
    in_burst: bool,
    /// Whether the latest event was part of a burst, for [`Detector::in_burst`].
    latest_in_burst: bool,
    /// Events observed, including skipped ones, saturating at `u32::MAX`. 32 bits, like
    /// `alerts`, so that both pack beside the state's other 4-byte fields.
    pub events: u32,
    /// Alerts raised for this user, saturating at `u32::MAX`.
    pub alerts: u32,
    /// Behaviour profile: decayed counts per behaviour, purchases and amounts, and the
    /// current window's counts.
    pub behavior: BehaviorProfile,
}

/// The parts of a user's state that few users need, kept in one box that is absent while
/// every field has its default value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RareState {
    /// Topic of each category seen with one, so a group map change keeps topics. Empty unless
    /// the input has topics.
    topics: HashMap<Id, Id>,
    /// Events after an alarm that still teach the reference instead of being judged.
    refractory_events: u32,
    /// Event time, in Unix seconds, before which events teach the reference instead of being
    /// judged.
    refractory_until_ts: i64,
}

impl UserState {
    /// Counts the current session as one that has taught the reference, unless it is counted
    /// already or `required` sessions are.
    ///
    /// The detector only checks for at least `min_reference_sessions`, and once that many
    /// sessions have been counted the check stays true. Until then the user is not judged, so
    /// no run exists and every event that teaches the reference comes from the current
    /// session. A flag that a new session clears therefore counts distinct sessions.
    fn count_reference_session(&mut self, required: u32) {
        if self.reference_sessions >= required || self.session_in_reference {
            return;
        }
        self.reference_sessions += 1;
        self.session_in_reference = true;
    }

    /// Returns whether an event at `ts` (Unix seconds) falls in the refractory period after an
    /// alarm, and frees the rare part of the state when the period is over and no topics need
    /// it.
    fn in_refractory(&mut self, ts: i64) -> bool {
        let Some(rare) = &self.rare else {
            // An absent box has the default fields, so no events are left and the period
            // ends at time 0.
            return ts < 0;
        };
        if rare.refractory_events > 0 || ts < rare.refractory_until_ts {
            return true;
        }
        // A user's events come in time order, so from here on the period stays over, as it is
        // for the default fields once `ts` is not negative.
        if rare.topics.is_empty() && ts >= 0 {
            self.rare = None;
        }
        false
    }

    /// Returns the user's current interest: the top categories of the reference with shares.
    pub fn interest(&self, count: usize) -> Vec<CategoryShare> {
        self.reference.top_categories(count)
    }

    /// Returns the user's measured exploring rate, clamped to the range the test uses.
    pub fn explore_rate(&self, config: &DetectorConfig) -> f64 {
        let rate = (self.explore_novel + config.prior_explore * config.prior_weight)
            / (self.explore_total + config.prior_weight);
        rate.clamp(MIN_EXPLORE, MAX_EXPLORE)
    }
}

/// A per-user change detector: reads one user's events in time order and raises alerts.
pub trait Detector: Send + 'static {
    /// Per-user state, created empty for a new user.
    /// It is serializable so that checkpoints can store it.
    type State: Default + Send + Serialize + serde::de::DeserializeOwned + 'static;

    /// Feeds one event of `state`'s user and appends any alerts it raises.
    fn observe(
        &self,
        state: &mut Self::State,
        event: &Event,
        groups: &GroupMap,
        alerts: &mut Vec<Alert>,
    );

    /// Returns whether the user's latest event was part of a burst. Detectors without burst
    /// detection return false.
    fn in_burst(_state: &Self::State) -> bool {
        false
    }
}

/// The CUSUM shift detector described in the module documentation.
///
/// # Examples
///
/// A user who views category 1 in ten sessions an hour apart, then only category 2 in later
/// sessions, raises one `interest_shift` alert once the test is confirmed:
///
/// ```
/// use veer_models::{AlertKind, Behavior, Detector, DetectorConfig, Event, GroupMap, Id};
/// use veer_models::{ShiftDetector, UserState};
///
/// let view = |user: u64, category: u64, ts: i64| {
///     Event::plain(ts * 1000, user, category, category * 100, Behavior::View)
/// };
/// let detector = ShiftDetector::new(DetectorConfig::default()).expect("valid settings");
/// let groups = GroupMap::default();
/// let mut state = UserState::default();
/// let mut alerts = Vec::new();
/// let hour = 3600;
/// for session in 0..10 {
///     for step in 0..3 {
///         detector.observe(&mut state, &view(7, 1, session * hour + step * 60), &groups, &mut alerts);
///     }
/// }
/// assert!(alerts.is_empty(), "a steady interest raises nothing");
/// for session in 10..14 {
///     for step in 0..3 {
///         detector.observe(&mut state, &view(7, 2, session * hour + step * 60), &groups, &mut alerts);
///     }
/// }
/// assert_eq!(alerts.len(), 1);
/// assert_eq!(alerts[0].kind, AlertKind::InterestShift);
/// assert_eq!(alerts[0].onset_ts, 10 * hour, "the first event in category 2");
/// assert_eq!(alerts[0].to[0].category, Id::from(2u64));
/// ```
#[derive(Clone, Debug)]
pub struct ShiftDetector {
    config: DetectorConfig,
}

impl ShiftDetector {
    /// Creates a detector, rejecting invalid settings.
    pub fn new(config: DetectorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(ShiftDetector { config })
    }

    /// Returns the detector's settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Starts a new session after a gap, at the maximum span or on a new session id.
    fn track_session(&self, state: &mut UserState, event: &Event) {
        let new_session = self.config.session_rule().advance(
            &mut state.session_mark,
            event.ts_secs(),
            event.session.as_deref(),
        );
        if new_session {
            let next = state.session.saturating_add(1);
            // At saturation the session stays the same one, and so does its count.
            if next != state.session {
                state.session_in_reference = false;
            }
            state.session = next;
            state.sessions_without_usual = if std::mem::take(&mut state.usual_in_session) {
                0
            } else {
                state.sessions_without_usual.saturating_add(1)
            };
            if let Some(run) = &mut state.run {
                // A run contains at most MAX_RUN events, so its length fits in u32.
                run.len_at_session_start = run.events.len() as u32;
                run.cusum_at_session_start = state.cusum;
            }
            state.in_burst = false;
            state.recent.clear();
        }
    }

    /// Tracks the event rate; on the start of a burst, rolls the session's events out of the
    /// run and returns an anomaly alert.
    fn track_burst(&self, state: &mut UserState, event: &Event) -> Option<Alert> {
        let ts = event.ts_secs();
        // A burst is `burst_events` events within `burst_span_secs`, and a user's events come
        // in time order, so an entry older than the span before this event can never be in a
        // burst. Dropping such entries changes no result and keeps one entry for a user who
        // browses at a person's pace.
        let expired = state
            .recent
            .as_slice()
            .iter()
            .take_while(|entry| ts - entry.0 > self.config.burst_span_secs)
            .count();
        let over = (state.recent.len() + 1).saturating_sub(self.config.burst_events);
        state
            .recent
            .push_after_removing(expired.max(over), (ts, event.category.clone()));
        if state.in_burst || state.recent.len() < self.config.burst_events {
            return None;
        }
        let first_ts = state.recent.as_slice().first().map_or(ts, |entry| entry.0);
        if ts == first_ts {
            // Events that all carry one timestamp are a batched upload with coarse times,
            // not a measured rate.
            return None;
        }
        if ts - first_ts > self.config.burst_span_secs {
            return None;
        }
        state.in_burst = true;
        // The burst's events so far were judged as if a person made them: take them back.
        if let Some(run) = &mut state.run {
            run.events.truncate(run.len_at_session_start as usize);
        }
        match &state.run {
            Some(run) if !run.events.is_empty() => state.cusum = run.cusum_at_session_start,
            _ => {
                state.run = None;
                state.cusum = 0.0;
            }
        }
        let mut counts: BTreeMap<&Id, usize> = BTreeMap::new();
        for (_, category) in state.recent.as_slice() {
            *counts.entry(category).or_default() += 1;
        }
        let span = (ts - first_ts).max(1) as f64;
        let rate_per_minute = state.recent.len() as f64 * 60.0 / span;
        Some(Alert {
            user: event.user.clone(),
            kind: AlertKind::Anomaly,
            ts,
            onset_ts: first_ts,
            score: (rate_per_minute / (rate_per_minute + 20.0)).clamp(0.0, 1.0),
            from: state.reference.top_categories(LISTED_CATEGORIES),
            to: shares_of_counts(counts, state.recent.len()),
            signals: vec![
                ("rate_per_minute".into(), rate_per_minute),
                ("burst_events".into(), state.recent.len() as f64),
            ],
            events_since_onset: state.recent.len() as u64,
            segment_before: None,
            segment_after: None,
        })
    }

    fn add_to_reference(
        &self,
        state: &mut UserState,
        category: &Id,
        group: &GroupKey,
        weight: f64,
    ) {
        state.reference.decay(self.config.reference_decay);
        state.reference.add(category, group, weight);
        state.count_reference_session(self.config.min_reference_sessions);
    }

    /// Adds an event of the run to the reference.
    fn add_run_entry(&self, state: &mut UserState, entry: &RunEvent) {
        self.add_to_reference(state, &entry.category, &entry.group, entry.weight);
    }

    /// Moves a run that ended without an alarm into the reference and the exploring rate.
    fn dissolve_run(&self, state: &mut UserState) {
        let Some(run) = state.run.take() else {
            return;
        };
        for entry in &run.events {
            self.count_exploration(state, entry.novel);
            self.add_run_entry(state, entry);
        }
    }

    fn count_exploration(&self, state: &mut UserState, novel: bool) {
        // Decay the counts so the rate follows the user's recent habits.
        state.explore_novel = state.explore_novel * 0.98 + if novel { 1.0 } else { 0.0 };
        state.explore_total = state.explore_total * 0.98 + 1.0;
    }

    /// Returns whether the run meets every alarm condition besides the statistic.
    ///
    /// The run's latest sessions must each be mostly novel, at least `min_sessions` of them in
    /// a row: a user who explores now and then returns to their usual groups in between, while
    /// a user whose interests moved does not. Among those sessions, novel events after the
    /// first must return to groups that earlier ones visited.
    fn run_confirms(
        &self,
        run: &Run,
        now_secs: i64,
        min_sessions: u32,
        min_recurring_events: u32,
    ) -> bool {
        if now_secs - run.start_ts < self.config.min_run_span_secs {
            return false;
        }
        let novel_total = run.events.iter().filter(|entry| entry.novel).count() as u32;
        if novel_total < self.config.min_novel_events {
            return false;
        }
        // Per session of the run, newest first: (session, judged events, novel events).
        let mut sessions: Vec<(u32, u32, u32)> = Vec::new();
        for entry in run.events.iter().rev() {
            match sessions.last_mut() {
                Some(last) if last.0 == entry.session => {
                    last.1 += 1;
                    last.2 += u32::from(entry.novel);
                }
                _ => sessions.push((entry.session, 1, u32::from(entry.novel))),
            }
        }
        let supporting = sessions
            .iter()
            .take_while(|(_, judged, novel)| {
                f64::from(*novel) >= self.config.session_novel_share * f64::from(*judged)
            })
            .count();
        if supporting == 0 || (supporting as u32) < min_sessions {
            return false;
        }
        let oldest_supporting = sessions[supporting - 1].0;
        // Groups of earlier sessions only: a group repeated inside one session is no return.
        let mut earlier_groups: HashSet<&GroupKey> = HashSet::default();
        let mut session_groups: Vec<&GroupKey> = Vec::new();
        let mut current_session = oldest_supporting;
        let mut recurring = 0u32;
        for entry in run
            .events
            .iter()
            .filter(|entry| entry.novel && entry.session >= oldest_supporting)
        {
            if entry.session != current_session {
                earlier_groups.extend(session_groups.drain(..));
                current_session = entry.session;
            }
            if earlier_groups.contains(&entry.group) {
                recurring += 1;
            }
            session_groups.push(&entry.group);
        }
        recurring >= min_recurring_events
    }

    fn raise_shift(&self, state: &mut UserState, run: &Run, event: &Event, explore: f64) -> Alert {
        let alert = self.shift_alert(state, run, event, explore);

        // The run becomes the new reference, so the same shift does not alarm again.
        state.reference.scale_all(REBASE_KEEP);
        for entry in &run.events {
            self.add_run_entry(state, entry);
        }
        state.cusum = 0.0;
        let rare = state.rare.get_or_insert_with(Box::default);
        rare.refractory_events = self.config.refractory_events;
        rare.refractory_until_ts = event.ts_secs() + self.config.refractory_secs;
        state.alerts = state.alerts.saturating_add(1);
        alert
    }

    /// Builds the `interest_shift` alert of `run`, leaving the state unchanged.
    fn shift_alert(&self, state: &UserState, run: &Run, event: &Event, explore: f64) -> Alert {
        let ts = event.ts_secs();
        let threshold = self.config.threshold;
        let novel: Vec<&RunEvent> = run.events.iter().filter(|entry| entry.novel).collect();
        let mut counts: BTreeMap<&Id, usize> = BTreeMap::new();
        let mut run_groups: BTreeMap<GroupKey, f64> = BTreeMap::new();
        for entry in &novel {
            *counts.entry(&entry.category).or_default() += 1;
            *run_groups.entry(entry.group.clone()).or_default() += 1.0 / novel.len() as f64;
        }
        let sessions: HashSet<u32> = novel.iter().map(|entry| entry.session).collect();
        let reference_groups = state.reference.group_distribution();
        let divergence = jensen_shannon(&reference_groups, &run_groups);
        let entropy_change = entropy(&run_groups) - entropy(&reference_groups);
        let to = shares_of_counts(counts, novel.len());
        Alert {
            user: event.user.clone(),
            kind: AlertKind::InterestShift,
            ts,
            onset_ts: run.start_ts,
            score: 1.0 - 0.5 * (-(state.cusum - threshold) / threshold).exp(),
            from: state.reference.top_categories(LISTED_CATEGORIES),
            to,
            signals: vec![
                ("cusum".into(), state.cusum),
                (
                    "novel_share".into(),
                    novel.len() as f64 / run.events.len() as f64,
                ),
                ("divergence".into(), divergence),
                ("entropy_change".into(), entropy_change),
                ("explore_rate".into(), explore),
                ("sessions".into(), sessions.len() as f64),
            ],
            events_since_onset: run.events.len() as u64,
            segment_before: None,
            segment_after: None,
        }
    }
}

impl Detector for ShiftDetector {
    type State = UserState;

    fn in_burst(state: &UserState) -> bool {
        state.latest_in_burst
    }

    fn observe(
        &self,
        state: &mut UserState,
        event: &Event,
        groups: &GroupMap,
        alerts: &mut Vec<Alert>,
    ) {
        self.observe_traced(state, event, groups, alerts);
    }
}

impl ShiftDetector {
    /// Feeds one event like [`Detector::observe`] and returns the record of the detector's
    /// work on it. The state keeps no trace, because it would cost every tracked user 48 bytes
    /// for a record that only explanations read.
    pub fn observe_traced(
        &self,
        state: &mut UserState,
        event: &Event,
        groups: &GroupMap,
        alerts: &mut Vec<Alert>,
    ) -> StepTrace {
        let mut trace = StepTrace {
            cusum: state.cusum,
            ..StepTrace::default()
        };
        self.step(state, event, groups, alerts, &mut trace);
        state.latest_in_burst = trace.in_burst;
        trace
    }

    /// Feeds one event and records the work in `trace`; see [`ShiftDetector::observe_traced`].
    fn step(
        &self,
        state: &mut UserState,
        event: &Event,
        groups: &GroupMap,
        alerts: &mut Vec<Alert>,
        trace: &mut StepTrace,
    ) {
        state.events = state.events.saturating_add(1);
        state.behavior.record(event, self.config.reference_decay);
        let weight = event.behavior.interest_weight();
        if weight <= 0.0 {
            return;
        }
        if let Some(topic) = &event.topic {
            state
                .rare
                .get_or_insert_with(Box::default)
                .topics
                .insert(event.category.clone(), topic.clone());
        }
        self.track_session(state, event);
        if let Some(alert) = self.track_burst(state, event) {
            state.alerts = state.alerts.saturating_add(1);
            alerts.push(alert);
        }
        if state.in_burst {
            trace.in_burst = true;
            trace.cusum = state.cusum;
            return;
        }

        state
            .reference
            .sync_groups(groups, topics_of(state.rare.as_deref()));
        let group = groups.group_of(&event.category, event.topic.as_ref());
        trace.group = Some(group.clone());
        let session = state.session;
        let warm = state.reference.events >= self.config.min_reference_events
            && state.reference_sessions >= self.config.min_reference_sessions;
        if !warm {
            self.add_to_reference(state, &event.category, &group, weight);
            return;
        }

        let novel = state.reference.group_share(&group) < self.config.novel_share;
        state.usual_in_session |= !novel;
        let keeps_usual = state.usual_in_session
            || state.sessions_without_usual < self.config.trend_leave_sessions;
        if novel && keeps_usual && groups.trend(&group).is_some() {
            // The population moves this way and the user still visits their usual groups:
            // following a trend is no evidence about this user. A user who has left their
            // usual groups for `trend_leave_sessions` sessions is judged even in a trending
            // group, because a trend does not explain leaving. The event does not teach the
            // reference either, so that the group is still novel if the user leaves.
            return;
        }

        if state.in_refractory(event.ts_secs()) {
            // Right after an alarm the new interests are still forming; they teach the
            // reference instead of starting a second alarm for the same shift.
            if let Some(rare) = &mut state.rare {
                rare.refractory_events = rare.refractory_events.saturating_sub(1);
            }
            self.add_to_reference(state, &event.category, &group, weight);
            return;
        }

        let explore = state.explore_rate(&self.config);
        trace.judged = true;
        trace.novel = novel;
        trace.explore_rate = explore;
        let q = self.config.shift_novelty;
        let step = if novel {
            (q / explore).ln()
        } else {
            ((1.0 - q) / (1.0 - explore)).ln()
        };
        let was_active = state.run.is_some();
        state.cusum = (state.cusum + step).max(0.0);
        trace.cusum = state.cusum;

        if state.cusum <= 0.0 {
            if was_active {
                self.dissolve_run(state);
            }
            self.count_exploration(state, novel);
            self.add_to_reference(state, &event.category, &group, weight);
            return;
        }
        // The run is out of the state while this event works on it, and goes back unless an
        // alarm folds it into the reference.
        let mut run = state
            .run
            .take()
            .unwrap_or_else(|| Run::starting_at(event.ts_secs()));
        run.events.push(RunEvent {
            category: event.category.clone(),
            group,
            weight,
            session,
            novel,
        });
        if run.events.len() > MAX_RUN {
            let oldest = run.events.remove(0);
            run.len_at_session_start = run.len_at_session_start.saturating_sub(1);
            self.count_exploration(state, oldest.novel);
            self.add_run_entry(state, &oldest);
        }

        let now_secs = event.ts_secs();
        let config = &self.config;
        if state.cusum >= config.threshold
            && self.run_confirms(
                &run,
                now_secs,
                config.min_sessions,
                config.min_recurring_events,
            )
        {
            let alert = self.raise_shift(state, &run, event, explore);
            alerts.push(alert);
            return;
        }
        if state.cusum >= config.threshold
            && config.candidate_sessions > 0
            && self.run_confirms(
                &run,
                now_secs,
                config.candidate_sessions,
                config.candidate_recurring_events,
            )
        {
            let mut candidate = self.shift_alert(state, &run, event, explore);
            candidate.signals.push((CANDIDATE_SIGNAL.into(), 1.0));
            alerts.push(candidate);
        }
        state.run = Some(run);
    }
}

/// Returns the topics seen with a user's categories, or `None` before the first topic.
fn topics_of(rare: Option<&RareState>) -> Option<&HashMap<Id, Id>> {
    rare.map(|rare| &rare.topics)
        .filter(|topics| !topics.is_empty())
}

/// Turns category counts into shares, largest first, ties by id.
fn shares_of_counts(counts: BTreeMap<&Id, usize>, total: usize) -> Vec<CategoryShare> {
    let mut entries: Vec<(&Id, usize)> = counts.into_iter().collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    entries
        .into_iter()
        .take(LISTED_CATEGORIES)
        .map(|(category, count)| CategoryShare {
            category: category.clone(),
            share: count as f64 / total.max(1) as f64,
        })
        .collect()
}

/// Shannon entropy (natural log) of a distribution over groups.
pub fn entropy(distribution: &BTreeMap<GroupKey, f64>) -> f64 {
    distribution
        .values()
        .filter(|p| **p > 0.0)
        .map(|p| -p * p.ln())
        .sum()
}

/// Jensen-Shannon divergence (natural log, so in 0..ln 2) of two distributions over groups.
pub fn jensen_shannon(left: &BTreeMap<GroupKey, f64>, right: &BTreeMap<GroupKey, f64>) -> f64 {
    let mut keys: Vec<&GroupKey> = left.keys().chain(right.keys()).collect();
    keys.sort();
    keys.dedup();
    let term = |p: f64, m: f64| if p > 0.0 { p * (p / m).ln() } else { 0.0 };
    let mut divergence = 0.0;
    for key in keys {
        let p = left.get(key).copied().unwrap_or(0.0);
        let q = right.get(key).copied().unwrap_or(0.0);
        let m = (p + q) / 2.0;
        divergence += 0.5 * term(p, m) + 0.5 * term(q, m);
    }
    divergence
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Behavior;

    #[test]
    fn user_state_size_bounded() {
        // Every tracked user keeps one boxed entry: the user's id, this state, the latest event
        // time and the latest alert (32 bytes). glibc serves a request of n bytes from a chunk
        // of n + 8 rounded up to 16, so a state of up to 232 bytes takes a 272-byte chunk.
        let size = std::mem::size_of::<UserState>();
        assert!(size <= 232, "UserState is {size} bytes");
    }

    #[test]
    fn rare_state_freed_after_refractory() {
        let mut state = UserState::default();
        assert!(state.in_refractory(-5), "the default period ends at time 0");
        assert!(!state.in_refractory(0));

        state.rare = Some(Box::new(RareState {
            refractory_events: 1,
            refractory_until_ts: 100,
            ..RareState::default()
        }));
        assert!(state.in_refractory(200), "one refractory event is left");
        state.rare.as_mut().expect("present").refractory_events = 0;
        assert!(state.in_refractory(50), "the period lasts until time 100");
        assert!(!state.in_refractory(100));
        assert!(
            state.rare.is_none(),
            "an expired period without topics is freed"
        );
    }

    #[test]
    fn rare_state_kept_for_topics() {
        let detector = ShiftDetector::new(DetectorConfig::default()).expect("valid settings");
        let groups = GroupMap::default();
        let mut state = UserState::default();
        let mut alerts = Vec::new();
        let mut event = Event::plain(1_000_000, 7u64, 3u64, 300u64, Behavior::View);
        event.topic = Some(Id::from(9u64));
        detector.observe(&mut state, &event, &groups, &mut alerts);

        let topics = topics_of(state.rare.as_deref()).expect("the topic is stored");
        assert_eq!(topics.get(&Id::from(3u64)), Some(&Id::from(9u64)));
        assert!(!state.in_refractory(2_000));
        assert!(state.rare.is_some(), "topics keep the box after the period");
    }

    fn with_candidates(candidate_sessions: u32, candidate_recurring_events: u32) -> DetectorConfig {
        DetectorConfig {
            candidate_sessions,
            candidate_recurring_events,
            ..DetectorConfig::default()
        }
    }

    #[test]
    fn candidate_settings_must_be_looser() {
        // The defaults alarm at 2 sessions with 2 recurring events.
        assert!(with_candidates(0, 0).validate().is_ok());
        assert!(with_candidates(2, 1).validate().is_ok());
        assert!(with_candidates(1, 2).validate().is_ok());
        assert!(with_candidates(1, 0).validate().is_ok());

        let same = with_candidates(2, 2).validate().unwrap_err();
        assert_eq!(same.name, "candidate_recurring_events");
        let more_events = with_candidates(1, 3).validate().unwrap_err();
        assert_eq!(more_events.name, "candidate_recurring_events");
        let more_sessions = with_candidates(3, 1).validate().unwrap_err();
        assert_eq!(more_sessions.name, "candidate_sessions");
    }
}
