//! Fusion of the shift detector's alerts with the model signals of the same user window.
//!
//! The CUSUM detector in [`crate::detector`] decides whether a user's interests moved. The
//! models in [`crate::ml`] judge the user's window against the population: how unusual it
//! is (isolation forest and one-class SVM), which segment it falls in, and how far the user's
//! shares were from the interest model's prediction (surprise). [`FusionRule::fuse`] combines
//! them with three rules, applied per user window:
//!
//! 1. A shift alert raised inside a burst is replaced by one `anomaly` alert when its window's
//!    anomaly score is at least [`FusionConfig::anomaly_threshold`]. The anomaly score is the
//!    smaller of the two model scores, so both models must agree.
//! 2. Any other shift alert is kept. Its score rises by at most
//!    [`FusionConfig::surprise_weight`], in proportion to the surprise above
//!    [`FusionConfig::surprise_floor`], capped at 1. It carries the model signals and the
//!    segments of the window before and of its own window.
//! 3. A window with no shift alert whose anomaly score is at least the threshold, and whose
//!    user raised no other alert in it, gives one `anomaly` alert.
//!
//! NOTE: the rule adjusts alerts after the detector has raised them. It does not yet lower the
//! CUSUM threshold when surprise is high, so models cannot make an alert earlier.

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertKind};
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
        if !(self.surprise_floor.is_finite() && self.surprise_floor >= 0.0) {
            return Err(FusionConfigError {
                name: "surprise_floor",
                value: self.surprise_floor,
                expected: "a finite number >= 0",
            });
        }
        Ok(())
    }
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

    /// Applies the rules of the module documentation to one window's detector alerts and
    /// returns the alerts to write.
    pub fn fuse(&self, window: &WindowVerdict, detector_alerts: Vec<Alert>) -> Vec<Alert> {
        let Some(signals) = window.signals else {
            return detector_alerts;
        };
        let anomalous =
            self.config.use_anomaly && signals.anomaly() >= self.config.anomaly_threshold;
        let mut fused = Vec::with_capacity(detector_alerts.len() + 1);
        let mut suppressed: Option<Alert> = None;
        for mut alert in detector_alerts {
            if alert.kind == AlertKind::InterestShift {
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
    fn without_models_alerts_pass_unchanged() {
        let mut verdict = window(true, 0.9, None);
        verdict.signals = None;
        assert_eq!(rule().fuse(&verdict, vec![shift(0.6)]), vec![shift(0.6)]);
    }

    #[test]
    fn burst_shift_becomes_anomaly() {
        let fused = rule().fuse(&window(true, 0.9, Some(2.0)), vec![shift(0.6)]);
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].kind, AlertKind::Anomaly);
        assert_eq!(fused[0].score, 0.9);
    }

    #[test]
    fn shift_outside_burst_is_kept_and_annotated() {
        let fused = rule().fuse(&window(false, 0.9, Some(1.5)), vec![shift(0.6)]);
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
        let fused = rule().fuse(&window(false, 0.1, Some(1e9)), vec![shift(0.95)]);
        assert_eq!(fused[0].score, 1.0);
        let low = rule().fuse(&window(false, 0.1, Some(0.2)), vec![shift(0.6)]);
        assert_eq!(low[0].score, 0.6);
    }

    #[test]
    fn anomalous_quiet_window_raises_anomaly() {
        let fused = rule().fuse(&window(false, 0.8, None), Vec::new());
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].kind, AlertKind::Anomaly);
        assert_eq!(fused[0].ts, 120);
        assert_eq!(fused[0].events_since_onset, 6);
        assert!(rule()
            .fuse(&window(false, 0.5, None), Vec::new())
            .is_empty());
    }

    #[test]
    fn one_model_alone_is_not_anomalous() {
        let mut verdict = window(false, 0.99, None);
        if let Some(signals) = verdict.signals.as_mut() {
            signals.one_class_svm = 0.2;
        }
        assert!(rule().fuse(&verdict, Vec::new()).is_empty());
    }

    #[test]
    fn disabled_anomaly_signal_raises_nothing() {
        let config = FusionConfig {
            use_anomaly: false,
            ..FusionConfig::default()
        };
        let rule = FusionRule::new(config).unwrap();
        assert!(rule.fuse(&window(false, 0.99, None), Vec::new()).is_empty());
        let kept = rule.fuse(&window(true, 0.99, None), vec![shift(0.6)]);
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
}
