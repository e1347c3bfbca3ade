//! Fusion of the shift detector's alerts with the model signals of the same user window.
//!
//! The CUSUM detector in [`crate::detector`] decides whether a user's interests moved. The
//! models in [`crate::ml`] judge the user's window against the population: how unusual it
//! is (isolation forest and one-class SVM), which segment it falls in, and how far the user's
//! shares were from the interest model's prediction (surprise). [`FusionRule::fuse`] combines
//! them with four rules, applied per user window:
//!
//! 1. Confirmation by surprise. The detector's own alarms are those of the detector alone.
//!    With the models on, it also raises a *candidate* (see [`CANDIDATE_SIGNAL`]) for a run
//!    that has [`FusionConfig::candidate_sessions`] mostly-novel sessions in a row (by default
//!    the detector's own `min_sessions`). The candidate needs
//!    only [`FusionConfig::recurring_events`] novel events that return to groups of earlier
//!    sessions, fewer than the alarm needs. A candidate whose window has a surprise of at least
//!    [`FusionConfig::candidate_surprise`], and whose run's CUSUM statistic is at least
//!    [`FusionConfig::candidate_cusum`], becomes a shift alert at once. Otherwise it is
//!    dropped and the shift waits for the detector's alarm, if one comes, because a user who
//!    explores a family for a session or two is less surprising to the interest model than one
//!    whose interests moved. The CUSUM bound, well above the detector's own threshold, drops
//!    most candidates of runs that the detector never alarms on, because their statistic is
//!    lower than that of candidates that find a shift. On the generated streams of
//!    BENCHMARKS.md about nine in ten of those candidates are false alarms. Once a candidate
//!    is alerted, the user's later candidates in the next [`FusionConfig::same_run_secs`] are
//!    dropped, as the detector's refractory period would drop a second alarm. The detector's
//!    alarm of the same run (same onset) is dropped as a repeat when it comes within
//!    [`FusionConfig::same_run_alarm_secs`] of the candidate, and kept when it comes later.
//!    Alarms of other runs pass.
//!
//!    With `same_run_alarm_secs = 0` every alarm is kept (except one in the candidate's
//!    second, which would repeat the candidate's alert id and time). Every alert of the
//!    detector alone is then also an alert of the fusion, so every shift it finds is found
//!    at the same event or earlier. But a run whose candidate and alarm are both false
//!    alarms then gives two false alarms where the detector alone gives one. Such runs are
//!    far more common than runs whose candidate came before the shift's onset and whose
//!    alarm found the shift, so that setting costs F1.
//!
//!    NOTE: an alarm dropped as a repeat loses its shift when the candidate came before the
//!    shift's onset, because the run began with exploring. A longer
//!    `same_run_alarm_secs` drops more repeats of false candidates and risks more such
//!    losses.
//! 2. A shift alert raised inside a burst is replaced by one `anomaly` alert when its window's
//!    anomaly score is at least [`FusionConfig::anomaly_threshold`]. The anomaly score is the
//!    smaller of the two model scores, so both models must agree.
//! 3. Any other shift alert is kept. Its score rises by at most
//!    [`FusionConfig::surprise_weight`], in proportion to the surprise above
//!    [`FusionConfig::surprise_floor`], capped at 1. It carries the model signals and the
//!    segments of the window before and of its own window.
//! 4. A window with no shift alert whose anomaly score is at least the threshold, and whose
//!    user raised no other alert in it, gives one `anomaly` alert.
//!
//! A window without model signals (the bootstrap period, or no models fitted) drops every
//! candidate and keeps the detector's alarms, as the detector alone would.
//!
//! An alerted candidate does not reset the detector's run, as the detector's own alarm does,
//! so the detector's state, and with it every alarm, stays that of the detector alone. The
//! quiet time after an alerted candidate is kept by the rule instead, by dropping candidates.

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertKind};
use crate::detector::{DetectorConfig, CANDIDATE_SIGNAL};
use crate::event::Id;

/// Model signals of one user window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSignals {
    /// Isolation forest score in 0..1, higher is more unusual.
    pub isolation_forest: f64,
    /// One-class SVM score in 0..1, higher is more unusual.
    pub one_class_svm: f64,
    /// Surprise of the window's shares against the prediction from the window before, or
    /// `None` when the user had no earlier window.
    pub surprise: Option<f64>,
    /// Segment of this window.
    pub segment: usize,
    /// Segment of the user's window before, if any.
    pub segment_before: Option<usize>,
}

impl ModelSignals {
    /// Returns the smaller of the two anomaly scores. The one-class SVM alone scores windows
    /// of a population of near-identical profiles close to 1, so one model is not enough.
    pub fn anomaly(&self) -> f64 {
        self.isolation_forest.min(self.one_class_svm)
    }

    /// Returns the signals in the fixed order alerts list them.
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut named = vec![
            ("isolation_forest".to_string(), self.isolation_forest),
            ("one_class_svm".to_string(), self.one_class_svm),
        ];
        if let Some(surprise) = self.surprise {
            named.push(("surprise".to_string(), surprise));
        }
        named
    }
}

/// Settings of the fusion rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// Anomaly score (0..1) at and above which a window counts as anomalous.
    pub anomaly_threshold: f64,
    /// Surprise (nats) below which surprise does not change a shift alert's score.
    pub surprise_floor: f64,
    /// Maximum that surprise adds to a shift alert's score (0..1).
    pub surprise_weight: f64,
    /// Surprise (nats) of a window at and above which the models confirm a candidate, so the
    /// shift is alerted before the detector's alarm.
    pub candidate_surprise: f64,
    /// CUSUM statistic of the run (the alert's `cusum` signal, a natural-log likelihood
    /// ratio like the detector's `threshold`) at and above which the models can confirm a
    /// candidate.
    pub candidate_cusum: f64,
    /// Mostly-novel sessions in a row that a candidate needs, in place of the detector's
    /// `min_sessions`. A value above that setting acts as that setting. With 1, a candidate
    /// can come in the run's first session, and it then needs `recurring_events = 0`,
    /// because a return to an earlier session's group needs a second session.
    pub candidate_sessions: u32,
    /// Novel events that must return to groups of the run's earlier sessions for a candidate,
    /// in place of the detector's `min_recurring_events`. At or above that setting the
    /// detector raises no candidates.
    pub recurring_events: u32,
    /// Time after an alerted candidate, in seconds, during which the user's later candidates
    /// are dropped. The default is the detector's default refractory period, after which it
    /// would alarm again.
    pub same_run_secs: i64,
    /// Time after an alerted candidate, in seconds, during which the detector's alarm of the
    /// same run (same onset) is dropped as a repeat of the candidate's alert. A later alarm
    /// of that run is kept, because its candidate may have come before the shift began.
    /// 0 keeps every alarm except one in the candidate's second, which would repeat its
    /// alert id.
    pub same_run_alarm_secs: i64,
    /// Whether each model signal is used, for ablation.
    pub use_anomaly: bool,
    pub use_surprise: bool,
    pub use_segments: bool,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            anomaly_threshold: 0.75,
            surprise_floor: 0.5,
            surprise_weight: 0.2,
            candidate_surprise: 0.65,
            candidate_cusum: 16.0,
            candidate_sessions: 2,
            recurring_events: 1,
            same_run_secs: 3 * 24 * 3600,
            same_run_alarm_secs: 3 * 24 * 3600,
            use_anomaly: true,
            use_surprise: true,
            use_segments: true,
        }
    }
}

/// An invalid fusion setting, with its value and the accepted range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid fusion setting {name} = {value}; expected {expected}")]
pub struct FusionConfigError {
    pub name: &'static str,
    pub value: f64,
    pub expected: &'static str,
}

impl FusionConfig {
    /// Checks every setting and returns the first invalid one.
    pub fn validate(&self) -> Result<(), FusionConfigError> {
        let unit = |name, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(FusionConfigError {
                    name,
                    value,
                    expected: "a number in 0..=1",
                })
            }
        };
        unit("anomaly_threshold", self.anomaly_threshold)?;
        unit("surprise_weight", self.surprise_weight)?;
        let nats = |name, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(FusionConfigError {
                    name,
                    value,
                    expected: "a finite number >= 0",
                })
            }
        };
        nats("surprise_floor", self.surprise_floor)?;
        nats("candidate_surprise", self.candidate_surprise)?;
        nats("candidate_cusum", self.candidate_cusum)?;
        if self.candidate_sessions == 0 {
            return Err(FusionConfigError {
                name: "candidate_sessions",
                value: 0.0,
                expected: "a number of sessions >= 1",
            });
        }
        for (name, value) in [
            ("same_run_secs", self.same_run_secs),
            ("same_run_alarm_secs", self.same_run_alarm_secs),
        ] {
            if value < 0 {
                return Err(FusionConfigError {
                    name,
                    value: value as f64,
                    expected: "a number of seconds >= 0",
                });
            }
        }
        Ok(())
    }

    /// Returns the detector settings for a run with these fusion settings: `base`, which
    /// sets the alarms, with candidates at `candidate_sessions` sessions and
    /// `recurring_events` recurring events, each at most `base`'s setting. Without the
    /// surprise signal, or when neither is below `base`'s setting, it returns `base`
    /// unchanged.
    pub fn detector_config(&self, base: &DetectorConfig) -> DetectorConfig {
        let mut config = base.clone();
        let sessions = self.candidate_sessions.clamp(1, base.min_sessions.max(1));
        let recurring_events = self.recurring_events.min(base.min_recurring_events);
        let looser = sessions < base.min_sessions || recurring_events < base.min_recurring_events;
        if self.use_surprise && looser {
            config.candidate_sessions = sessions;
            config.candidate_recurring_events = recurring_events;
        }
        config
    }
}

/// Per-user state of the fusion rule, carried from one window of the user to the next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserFusion {
    /// Onset and alert time (Unix seconds) of the detector run last alerted from a candidate.
    alerted_run: Option<(i64, i64)>,
}

impl UserFusion {
    /// Applies rule 1 of the module documentation to a shift alert, removing its candidate
    /// mark, and returns whether the alert goes on. `surprising` is whether the alert's
    /// window has the surprise that confirms a candidate.
    fn admit(&mut self, alert: &mut Alert, surprising: bool, config: &FusionConfig) -> bool {
        if !is_candidate(alert) {
            // An alarm goes on unless it is the alerted run's, soon after its candidate.
            return self.alerted_run.is_none_or(|(onset, alerted_ts)| {
                onset != alert.onset_ts || alert.ts - alerted_ts > config.same_run_alarm_secs
            });
        }
        alert.signals.retain(|(name, _)| name != CANDIDATE_SIGNAL);
        let quiet = self
            .alerted_run
            .is_some_and(|(_, alerted_ts)| alert.ts - alerted_ts <= config.same_run_secs);
        if quiet || !surprising || run_cusum(alert) < config.candidate_cusum {
            return false;
        }
        self.alerted_run = Some((alert.onset_ts, alert.ts));
        true
    }
}

/// Returns the CUSUM statistic that the detector wrote into the alert, or 0 without one.
fn run_cusum(alert: &Alert) -> f64 {
    alert
        .signals
        .iter()
        .find(|(name, _)| name == "cusum")
        .map_or(0.0, |(_, value)| *value)
}

/// Returns whether the detector raised the alert as a candidate, not as an alarm.
fn is_candidate(alert: &Alert) -> bool {
    alert
        .signals
        .iter()
        .any(|(name, _)| name == CANDIDATE_SIGNAL)
}

/// One user window, with the values the fusion rule reads.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowVerdict {
    pub user: Id,
    /// Event time of the window's last event, in Unix seconds.
    pub last_ts: i64,
    /// Event time of the window's first event, in Unix seconds.
    pub first_ts: i64,
    /// Events in the window.
    pub events: u64,
    /// Whether the detector saw any of the window's events as part of a burst.
    pub burst: bool,
    /// Model signals, or `None` while no models are fitted.
    pub signals: Option<ModelSignals>,
}

/// The fusion rule with validated settings.
#[derive(Clone, Debug)]
pub struct FusionRule {
    config: FusionConfig,
}

impl FusionRule {
    /// Creates the rule, rejecting invalid settings.
    pub fn new(config: FusionConfig) -> Result<FusionRule, FusionConfigError> {
        config.validate()?;
        Ok(FusionRule { config })
    }

    /// Returns the anomaly score from which a window is anomalous, or `None` when the rule
    /// does not use the anomaly scores.
    ///
    /// A window without detector alerts gets an alert from [`FusionRule::fuse`] only when it
    /// is anomalous, so its other signals matter only then.
    pub fn anomaly_threshold(&self) -> Option<f64> {
        self.config
            .use_anomaly
            .then_some(self.config.anomaly_threshold)
    }

    /// Applies the rules of the module documentation to one window's detector alerts and
    /// returns the alerts to write. `user` is the rule's state of the window's user, and the
    /// user's windows must come in time order.
    pub fn fuse(
        &self,
        user: &mut UserFusion,
        window: &WindowVerdict,
        detector_alerts: Vec<Alert>,
    ) -> Vec<Alert> {
        let Some(signals) = window.signals else {
            return self.pass_unscored(user, detector_alerts);
        };
        let anomalous =
            self.config.use_anomaly && signals.anomaly() >= self.config.anomaly_threshold;
        let surprising = signals
            .surprise
            .is_some_and(|surprise| surprise >= self.config.candidate_surprise);
        let mut fused = Vec::with_capacity(detector_alerts.len() + 1);
        let mut suppressed: Option<Alert> = None;
        for mut alert in detector_alerts {
            if alert.kind == AlertKind::InterestShift {
                if !user.admit(&mut alert, surprising, &self.config) {
                    continue;
                }
                if anomalous && window.burst {
                    suppressed.get_or_insert(alert);
                    continue;
                }
                self.annotate(&mut alert, &signals);
            }
            fused.push(alert);
        }
        let has_anomaly = fused.iter().any(|alert| alert.kind == AlertKind::Anomaly);
        if let Some(mut alert) = suppressed {
            if !has_anomaly {
                alert.kind = AlertKind::Anomaly;
                alert.score = signals.anomaly();
                alert.signals.extend(signals.named());
                fused.push(alert);
            }
        } else if anomalous && fused.is_empty() {
            fused.push(Alert {
                user: window.user.clone(),
                kind: AlertKind::Anomaly,
                ts: window.last_ts,
                onset_ts: window.first_ts,
                score: signals.anomaly(),
                from: Vec::new(),
                to: Vec::new(),
                signals: signals.named(),
                events_since_onset: window.events,
                segment_before: None,
                segment_after: None,
            });
        }
        fused
    }

    /// Returns the alerts of a window without model signals: every candidate is dropped, as
    /// the detector alone raises none, and the detector's alarms go on as in a scored window.
    pub fn pass_unscored(&self, user: &mut UserFusion, detector_alerts: Vec<Alert>) -> Vec<Alert> {
        detector_alerts
            .into_iter()
            .filter_map(|mut alert| {
                let keep = alert.kind != AlertKind::InterestShift
                    || user.admit(&mut alert, false, &self.config);
                keep.then_some(alert)
            })
            .collect()
    }

    fn annotate(&self, alert: &mut Alert, signals: &ModelSignals) {
        if self.config.use_anomaly {
            alert
                .signals
                .push(("isolation_forest".into(), signals.isolation_forest));
            alert
                .signals
                .push(("one_class_svm".into(), signals.one_class_svm));
        }
        if self.config.use_surprise {
            if let Some(surprise) = signals.surprise {
                alert.signals.push(("surprise".into(), surprise));
                let excess = (surprise - self.config.surprise_floor).max(0.0);
                let boost = self.config.surprise_weight * (excess / (1.0 + excess));
                alert.score = (alert.score + boost).min(1.0);
            }
        }
        if self.config.use_segments {
            alert.segment_before = signals.segment_before;
            alert.segment_after = Some(signals.segment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shift(score: f64) -> Alert {
        Alert {
            user: Id::from(1u64),
            kind: AlertKind::InterestShift,
            ts: 100,
            onset_ts: 50,
            score,
            from: Vec::new(),
            to: Vec::new(),
            signals: vec![("cusum".into(), 9.0)],
            events_since_onset: 4,
            segment_before: None,
            segment_after: None,
        }
    }

    fn window(burst: bool, anomaly: f64, surprise: Option<f64>) -> WindowVerdict {
        WindowVerdict {
            user: Id::from(1u64),
            last_ts: 120,
            first_ts: 10,
            events: 6,
            burst,
            signals: Some(ModelSignals {
                isolation_forest: anomaly,
                one_class_svm: anomaly,
                surprise,
                segment: 2,
                segment_before: Some(0),
            }),
        }
    }

    fn rule() -> FusionRule {
        FusionRule::new(FusionConfig::default()).unwrap()
    }

    #[test]
    fn quiet_window_without_alerts_gives_none() {
        let rule = rule();
        let threshold = rule
            .anomaly_threshold()
            .expect("anomaly scores used by default");
        for burst in [false, true] {
            for surprise in [None, Some(0.0), Some(5.0)] {
                let mut user = UserFusion::default();
                let below = window(burst, threshold - 1e-9, surprise);
                assert!(rule.fuse(&mut user, &below, Vec::new()).is_empty());
                assert_eq!(user, UserFusion::default());
                let at = window(burst, threshold, surprise);
                assert_eq!(rule.fuse(&mut user, &at, Vec::new()).len(), 1);
            }
        }
        let without_anomaly = FusionRule::new(FusionConfig {
            use_anomaly: false,
            ..FusionConfig::default()
        })
        .unwrap();
        assert_eq!(without_anomaly.anomaly_threshold(), None);
    }

    #[test]
    fn without_models_alerts_pass_unchanged() {
        let mut verdict = window(true, 0.9, None);
        verdict.signals = None;
        assert_eq!(
            rule().fuse(&mut UserFusion::default(), &verdict, vec![shift(0.6)]),
            vec![shift(0.6)]
        );
    }

    #[test]
    fn burst_shift_becomes_anomaly() {
        let fused = rule().fuse(
            &mut UserFusion::default(),
            &window(true, 0.9, Some(2.0)),
            vec![shift(0.6)],
        );
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].kind, AlertKind::Anomaly);
        assert_eq!(fused[0].score, 0.9);
    }

    #[test]
    fn shift_outside_burst_is_kept_and_annotated() {
        let fused = rule().fuse(
            &mut UserFusion::default(),
            &window(false, 0.9, Some(1.5)),
            vec![shift(0.6)],
        );
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].kind, AlertKind::InterestShift);
        assert_eq!(fused[0].segment_before, Some(0));
        assert_eq!(fused[0].segment_after, Some(2));
        // excess 1.0 gives half of the 0.2 weight.
        assert!((fused[0].score - 0.7).abs() < 1e-12);
        let names: Vec<&str> = fused[0]
            .signals
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            names,
            ["cusum", "isolation_forest", "one_class_svm", "surprise"]
        );
    }

    #[test]
    fn surprise_boost_is_bounded() {
        let fused = rule().fuse(
            &mut UserFusion::default(),
            &window(false, 0.1, Some(1e9)),
            vec![shift(0.95)],
        );
        assert_eq!(fused[0].score, 1.0);
        let low = rule().fuse(
            &mut UserFusion::default(),
            &window(false, 0.1, Some(0.2)),
            vec![shift(0.6)],
        );
        assert_eq!(low[0].score, 0.6);
    }

    #[test]
    fn anomalous_quiet_window_raises_anomaly() {
        let fused = rule().fuse(
            &mut UserFusion::default(),
            &window(false, 0.8, None),
            Vec::new(),
        );
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].kind, AlertKind::Anomaly);
        assert_eq!(fused[0].ts, 120);
        assert_eq!(fused[0].events_since_onset, 6);
        assert!(rule()
            .fuse(
                &mut UserFusion::default(),
                &window(false, 0.5, None),
                Vec::new()
            )
            .is_empty());
    }

    #[test]
    fn one_model_alone_is_not_anomalous() {
        let mut verdict = window(false, 0.99, None);
        if let Some(signals) = verdict.signals.as_mut() {
            signals.one_class_svm = 0.2;
        }
        assert!(rule()
            .fuse(&mut UserFusion::default(), &verdict, Vec::new())
            .is_empty());
    }

    #[test]
    fn disabled_anomaly_signal_raises_nothing() {
        let config = FusionConfig {
            use_anomaly: false,
            ..FusionConfig::default()
        };
        let rule = FusionRule::new(config).unwrap();
        assert!(rule
            .fuse(
                &mut UserFusion::default(),
                &window(false, 0.99, None),
                Vec::new()
            )
            .is_empty());
        let kept = rule.fuse(
            &mut UserFusion::default(),
            &window(true, 0.99, None),
            vec![shift(0.6)],
        );
        assert_eq!(kept[0].kind, AlertKind::InterestShift);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let config = FusionConfig {
            anomaly_threshold: 1.5,
            ..FusionConfig::default()
        };
        let error = FusionRule::new(config).unwrap_err();
        assert_eq!(error.name, "anomaly_threshold");
        let config = FusionConfig {
            surprise_floor: f64::NAN,
            ..FusionConfig::default()
        };
        assert_eq!(FusionRule::new(config).unwrap_err().name, "surprise_floor");
    }

    /// Returns a surprise above the default `candidate_surprise`, so a candidate is alerted.
    fn confirming_surprise() -> f64 {
        FusionConfig::default().candidate_surprise + 0.5
    }

    /// Returns a candidate whose run has a CUSUM statistic above the default
    /// `candidate_cusum`, so the window's surprise decides whether it is alerted.
    fn candidate(onset_ts: i64) -> Alert {
        let mut alert = shift(0.6);
        alert.onset_ts = onset_ts;
        alert.signals = vec![
            (
                "cusum".into(),
                FusionConfig::default().candidate_cusum + 1.0,
            ),
            (CANDIDATE_SIGNAL.into(), 1.0),
        ];
        alert
    }

    fn alarm(onset_ts: i64) -> Alert {
        let mut alert = shift(0.6);
        alert.onset_ts = onset_ts;
        alert
    }

    fn has_candidate_mark(alert: &Alert) -> bool {
        alert
            .signals
            .iter()
            .any(|(name, _)| name == CANDIDATE_SIGNAL)
    }

    #[test]
    fn surprising_candidate_is_alerted_once() {
        let rule = rule();
        let mut user = UserFusion::default();
        let fused = rule.fuse(
            &mut user,
            &window(false, 0.1, Some(confirming_surprise())),
            vec![candidate(50)],
        );
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].kind, AlertKind::InterestShift);
        assert!(!has_candidate_mark(&fused[0]));
        assert!(fused[0].signals.iter().any(|(name, _)| name == "surprise"));

        let mut again = candidate(50);
        again.ts = 130;
        let fused = rule.fuse(&mut user, &window(false, 0.1, Some(2.0)), vec![again]);
        assert!(fused.is_empty(), "a second candidate of the run: {fused:?}");
    }

    /// Returns the rule with the default settings and `same_run_alarm_secs`.
    fn rule_with_alarm_gap(same_run_alarm_secs: i64) -> FusionRule {
        FusionRule::new(FusionConfig {
            same_run_alarm_secs,
            ..FusionConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn same_run_alarm_soon_after_candidate_is_dropped() {
        let rule = rule_with_alarm_gap(200);
        let mut user = user_with_alerted_candidate(&rule);
        let mut run_alarm = alarm(50);
        run_alarm.ts = 100 + 200;
        let fused = rule.fuse(&mut user, &window(false, 0.1, Some(0.1)), vec![run_alarm]);
        assert!(fused.is_empty(), "the run's alarm: {fused:?}");
    }

    #[test]
    fn same_run_alarm_after_gap_is_kept() {
        // The run starts at 50 with exploring. Its candidate at 100 may come before the true
        // shift, and the detector's alarm of the same run at 301 after it.
        let rule = rule_with_alarm_gap(200);
        let mut user = user_with_alerted_candidate(&rule);
        let mut run_alarm = alarm(50);
        run_alarm.ts = 100 + 201;
        let fused = rule.fuse(
            &mut user,
            &window(false, 0.1, Some(0.1)),
            vec![run_alarm.clone()],
        );
        assert_eq!(fused.len(), 1, "the run's alarm: {fused:?}");
        assert_eq!(fused[0].ts, 301);
        assert_eq!(fused[0].onset_ts, 50);
        assert_eq!(fused[0].score, run_alarm.score);
    }

    #[test]
    fn unscored_alarm_of_alerted_run_is_dropped() {
        let rule = rule();
        let mut user = user_with_alerted_candidate(&rule);
        assert!(rule.pass_unscored(&mut user, vec![alarm(50)]).is_empty());
        assert_eq!(
            rule.pass_unscored(&mut user, vec![alarm(70)]),
            vec![alarm(70)]
        );
    }

    #[test]
    fn unsurprising_candidate_waits_for_alarm() {
        let rule = rule();
        let mut user = UserFusion::default();
        let low = rule.fuse(
            &mut user,
            &window(false, 0.1, Some(0.04)),
            vec![candidate(50)],
        );
        assert!(low.is_empty());
        let unknown = rule.fuse(&mut user, &window(false, 0.1, None), vec![candidate(50)]);
        assert!(unknown.is_empty(), "no surprise is no confirmation");
        assert_eq!(user, UserFusion::default());
        let fused = rule.fuse(&mut user, &window(false, 0.1, Some(0.1)), vec![alarm(50)]);
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].onset_ts, 50);
    }

    #[test]
    fn low_cusum_candidate_waits_for_alarm() {
        let rule = rule();
        let candidate_cusum = FusionConfig::default().candidate_cusum;
        let surprising = window(false, 0.1, Some(confirming_surprise()));
        let mut user = UserFusion::default();

        let mut weak = candidate(50);
        weak.signals[0].1 = candidate_cusum - 0.01;
        let fused = rule.fuse(&mut user, &surprising, vec![weak]);
        assert!(
            fused.is_empty(),
            "a candidate below the CUSUM bound: {fused:?}"
        );
        assert_eq!(user, UserFusion::default());

        let mut without_cusum = candidate(50);
        without_cusum.signals.retain(|(name, _)| name != "cusum");
        let fused = rule.fuse(&mut user, &surprising, vec![without_cusum]);
        assert!(
            fused.is_empty(),
            "a candidate without a CUSUM signal: {fused:?}"
        );

        let mut at_bound = candidate(50);
        at_bound.ts = 110;
        at_bound.signals[0].1 = candidate_cusum;
        let fused = rule.fuse(&mut user, &surprising, vec![at_bound]);
        assert_eq!(fused.len(), 1, "a candidate at the CUSUM bound: {fused:?}");
        assert_eq!(fused[0].ts, 110);

        let fused = rule.fuse(&mut user, &surprising, vec![alarm(50)]);
        assert!(
            fused.is_empty(),
            "the run's alarm after its candidate: {fused:?}"
        );
    }

    #[test]
    fn candidate_and_alarm_in_one_window() {
        let both = || {
            let mut run_alarm = alarm(50);
            run_alarm.ts = 110;
            vec![candidate(50), run_alarm]
        };
        let surprising = window(false, 0.1, Some(confirming_surprise()));
        let fused = rule().fuse(&mut UserFusion::default(), &surprising, both());
        let times: Vec<i64> = fused.iter().map(|alert| alert.ts).collect();
        assert_eq!(times, [100], "the candidate, not the run's alarm");

        let every_alarm = rule_with_alarm_gap(0);
        let fused = every_alarm.fuse(&mut UserFusion::default(), &surprising, both());
        let times: Vec<i64> = fused.iter().map(|alert| alert.ts).collect();
        assert_eq!(times, [100, 110], "the candidate, then the alarm");
        assert!(fused.iter().all(|alert| !has_candidate_mark(alert)));

        // An alarm in the candidate's second would repeat the candidate's alert id.
        let fused = every_alarm.fuse(
            &mut UserFusion::default(),
            &surprising,
            vec![candidate(50), alarm(50)],
        );
        assert_eq!(fused.len(), 1, "one alert per second: {fused:?}");
        assert_eq!(fused[0].alert_id(), candidate(50).alert_id());

        let waited = rule().fuse(
            &mut UserFusion::default(),
            &window(false, 0.1, Some(0.1)),
            both(),
        );
        assert_eq!(waited.len(), 1);
        assert_eq!(waited[0].ts, 110);
        assert!(!has_candidate_mark(&waited[0]));
    }

    #[test]
    fn unscored_windows_drop_candidates() {
        let rule = rule();
        let mut user = UserFusion::default();
        let fused = rule.pass_unscored(&mut user, vec![candidate(50), candidate(50)]);
        assert!(fused.is_empty(), "candidates without signals: {fused:?}");
        assert_eq!(
            rule.pass_unscored(&mut user, vec![alarm(50)]),
            vec![alarm(50)]
        );
        let mut without_models = window(false, 0.1, Some(5.0));
        without_models.signals = None;
        let fused = rule.fuse(
            &mut UserFusion::default(),
            &without_models,
            vec![candidate(80), alarm(80)],
        );
        assert_eq!(fused, vec![alarm(80)]);
    }

    /// Returns the state of a user whose candidate of the run with onset 50 was alerted at 100.
    fn user_with_alerted_candidate(rule: &FusionRule) -> UserFusion {
        let mut user = UserFusion::default();
        let fused = rule.fuse(
            &mut user,
            &window(false, 0.1, Some(confirming_surprise())),
            vec![candidate(50)],
        );
        assert_eq!(fused.len(), 1, "a surprising candidate is alerted");
        user
    }

    #[test]
    fn zero_alarm_gap_keeps_every_alarm() {
        // A user's windows in time order, each with a mix of candidates and alarms and a
        // surprise that confirms its candidates or not. Outside bursts, the fused shift alerts
        // are the detector's alarms plus some candidates, whatever came before.
        let rule = rule_with_alarm_gap(0);
        let mut user = UserFusion::default();
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };

        let mut ts = 0;
        let mut alarms_raised = Vec::new();
        let mut alarms_fused = Vec::new();
        let mut candidates_fused = 0;
        for _ in 0..500 {
            let mut raised = Vec::new();
            for _ in 0..next() % 3 {
                ts += 1 + (next() % (2 * 24 * 3600)) as i64;
                let onset = ts - (next() % 3600) as i64;
                let mut alert = if next() % 2 == 0 {
                    candidate(onset)
                } else {
                    alarm(onset)
                };
                alert.ts = ts;
                if !has_candidate_mark(&alert) {
                    alarms_raised.push(ts);
                }
                raised.push(alert);
            }
            let surprise = [None, Some(0.1), Some(confirming_surprise())][(next() % 3) as usize];
            let fused = rule.fuse(&mut user, &window(false, 0.1, surprise), raised.clone());
            for alert in &fused {
                assert!(!has_candidate_mark(alert));
            }
            let fused_times: Vec<i64> = fused.iter().map(|alert| alert.ts).collect();
            candidates_fused += raised
                .iter()
                .filter(|alert| has_candidate_mark(alert) && fused_times.contains(&alert.ts))
                .count();
            let alarm_times = raised
                .iter()
                .filter(|alert| !has_candidate_mark(alert))
                .map(|alert| alert.ts);
            alarms_fused.extend(alarm_times.filter(|ts| fused_times.contains(ts)));
        }

        assert!(alarms_raised.len() > 100, "too few alarms to test");
        assert!(candidates_fused > 20, "too few alerted candidates to test");
        assert_eq!(alarms_fused, alarms_raised);
    }

    #[test]
    fn alerted_candidate_starts_quiet_time() {
        let rule = rule();
        let same_run_secs = FusionConfig::default().same_run_secs;
        let mut user = user_with_alerted_candidate(&rule);
        let surprising = window(false, 0.1, Some(confirming_surprise()));

        // The run fades, and a new run of the same user raises candidates.
        let mut soon = candidate(150);
        soon.ts = 100 + same_run_secs;
        let fused = rule.fuse(&mut user, &surprising, vec![soon]);
        assert!(fused.is_empty(), "a candidate in the quiet time: {fused:?}");

        let mut other_alarm = alarm(150);
        other_alarm.ts = 200;
        let fused = rule.fuse(&mut user, &surprising, vec![other_alarm.clone()]);
        assert_eq!(fused.len(), 1, "the detector's alarm of another run passes");
        assert_eq!(fused[0].onset_ts, 150);

        let mut later = candidate(150);
        later.ts = 100 + same_run_secs + 1;
        let fused = rule.fuse(&mut user, &surprising, vec![later]);
        assert_eq!(
            fused.len(),
            1,
            "a candidate after the quiet time is alerted"
        );
    }

    #[test]
    fn detector_config_raises_candidates() {
        let base = DetectorConfig::default();
        let config = FusionConfig::default().detector_config(&base);
        assert_eq!(config.candidate_sessions, base.min_sessions);
        assert_eq!(config.candidate_recurring_events, 1);
        assert_eq!(config.min_sessions, base.min_sessions);
        assert_eq!(config.min_recurring_events, base.min_recurring_events);
        assert!(config.validate().is_ok());

        let without_surprise = FusionConfig {
            use_surprise: false,
            ..FusionConfig::default()
        };
        assert_eq!(without_surprise.detector_config(&base), base);
        let same_recurrence = FusionConfig {
            recurring_events: base.min_recurring_events,
            ..FusionConfig::default()
        };
        assert_eq!(same_recurrence.detector_config(&base), base);
    }

    #[test]
    fn detector_config_first_session_candidates() {
        let base = DetectorConfig::default();
        let first_session = FusionConfig {
            candidate_sessions: 1,
            recurring_events: 0,
            ..FusionConfig::default()
        };
        let config = first_session.detector_config(&base);
        assert_eq!(config.candidate_sessions, 1);
        assert_eq!(config.candidate_recurring_events, 0);
        assert_eq!(config.min_sessions, base.min_sessions);
        assert!(config.validate().is_ok());

        // Fewer sessions alone are enough for candidates, and more act as min_sessions.
        let fewer_sessions = FusionConfig {
            candidate_sessions: 1,
            recurring_events: base.min_recurring_events,
            ..FusionConfig::default()
        };
        let config = fewer_sessions.detector_config(&base);
        assert_eq!(config.candidate_sessions, 1);
        assert_eq!(config.candidate_recurring_events, base.min_recurring_events);
        let more_sessions = FusionConfig {
            candidate_sessions: base.min_sessions + 3,
            recurring_events: base.min_recurring_events,
            ..FusionConfig::default()
        };
        assert_eq!(more_sessions.detector_config(&base), base);
    }

    #[test]
    fn zero_candidate_sessions_is_rejected() {
        let config = FusionConfig {
            candidate_sessions: 0,
            ..FusionConfig::default()
        };
        assert_eq!(
            FusionRule::new(config).unwrap_err().name,
            "candidate_sessions"
        );
    }

    #[test]
    fn negative_candidate_surprise_is_rejected() {
        let config = FusionConfig {
            candidate_surprise: -0.1,
            ..FusionConfig::default()
        };
        assert_eq!(
            FusionRule::new(config).unwrap_err().name,
            "candidate_surprise"
        );
    }

    #[test]
    fn invalid_candidate_cusum_is_rejected() {
        for candidate_cusum in [-1.0, f64::NAN, f64::INFINITY] {
            let config = FusionConfig {
                candidate_cusum,
                ..FusionConfig::default()
            };
            let error = FusionRule::new(config).unwrap_err();
            assert_eq!(error.name, "candidate_cusum", "{candidate_cusum}");
        }
    }
}
