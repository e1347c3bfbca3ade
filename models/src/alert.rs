//! Alerts in the contract's JSON-lines form.

use serde_json::{Map, Value};

use crate::event::Id;

/// The kind of an alert.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum AlertKind {
    /// A lasting change of the user's interests.
    InterestShift,
    /// Abnormal behaviour (a burst, a bot) that is not, or not yet, a shift.
    Anomaly,
}

impl AlertKind {
    /// Returns the contract's name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::InterestShift => "interest_shift",
            AlertKind::Anomaly => "anomaly",
        }
    }

    /// Parses the contract's name of a kind.
    pub fn parse(name: &str) -> Option<AlertKind> {
        match name {
            "interest_shift" => Some(AlertKind::InterestShift),
            "anomaly" => Some(AlertKind::Anomaly),
            _ => None,
        }
    }
}

/// A category with its share of a user's interest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CategoryShare {
    pub category: Id,
    pub share: f64,
}

/// One alert, as written to the alert output.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    pub user: Id,
    pub kind: AlertKind,
    /// Event time, in Unix seconds, of the event that triggered the alert.
    pub ts: i64,
    /// Estimated start of the change, in Unix seconds.
    pub onset_ts: i64,
    /// Confidence in 0..1.
    pub score: f64,
    pub from: Vec<CategoryShare>,
    pub to: Vec<CategoryShare>,
    /// Per-signal values that led to the alert, in a fixed order.
    pub signals: Vec<(String, f64)>,
    /// Number of the user's events from the estimated onset to the alert, inclusive.
    pub events_since_onset: u64,
    /// Model segment of the user's window before the alert and of the alert's window, set
    /// only when models score the stream. Written after the contract's fields, and only
    /// when set, so alerts without models keep their exact form.
    #[serde(default)]
    pub segment_before: Option<usize>,
    #[serde(default)]
    pub segment_after: Option<usize>,
}

impl Alert {
    /// Returns the deterministic id `{user}-{ts}-{kind}`.
    pub fn alert_id(&self) -> String {
        format!("{}-{}-{}", self.user, self.ts, self.kind.name())
    }

    /// Returns `low`, `medium` or `high` from the score.
    pub fn severity(&self) -> &'static str {
        if self.score >= 0.8 {
            "high"
        } else if self.score >= 0.5 {
            "medium"
        } else {
            "low"
        }
    }

    /// Encodes the alert as one JSON object in the contract's field order.
    pub fn to_json(&self) -> Value {
        let shares = |list: &[CategoryShare]| {
            Value::Array(
                list.iter()
                    .map(|entry| {
                        let mut object = Map::new();
                        object.insert("category".into(), entry.category.to_json());
                        object.insert("share".into(), round4(entry.share));
                        Value::Object(object)
                    })
                    .collect(),
            )
        };
        let mut signals = Map::new();
        for (name, value) in &self.signals {
            signals.insert(name.clone(), round4(*value));
        }
        let mut object = Map::new();
        object.insert("alert_id".into(), Value::String(self.alert_id()));
        object.insert("user".into(), self.user.to_json());
        object.insert("kind".into(), Value::String(self.kind.name().into()));
        object.insert("ts".into(), Value::from(self.ts));
        object.insert("onset_ts".into(), Value::from(self.onset_ts));
        object.insert("score".into(), round4(self.score));
        object.insert("severity".into(), Value::String(self.severity().into()));
        object.insert("from".into(), shares(&self.from));
        object.insert("to".into(), shares(&self.to));
        object.insert("signals".into(), Value::Object(signals));
        object.insert(
            "events_since_onset".into(),
            Value::from(self.events_since_onset),
        );
        if let Some(segment) = self.segment_before {
            object.insert("segment_before".into(), Value::from(segment));
        }
        if let Some(segment) = self.segment_after {
            object.insert("segment_after".into(), Value::from(segment));
        }
        Value::Object(object)
    }

    /// Encodes the alert as one line of JSON, without the trailing newline.
    pub fn to_json_line(&self) -> String {
        self.to_json().to_string()
    }
}

/// Rounds to four decimals so that alert files compare byte for byte across platforms.
fn round4(value: f64) -> Value {
    if !value.is_finite() {
        return Value::Null;
    }
    let rounded = (value * 10_000.0).round() / 10_000.0;
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

/// Converts a JSON id (number or string) into an [`Id`], keeping every digit.
pub fn id_from_json(value: &Value) -> Option<Id> {
    match value {
        Value::Number(number) => {
            // With `arbitrary_precision` a number keeps its input text, which `as_str` borrows
            // without formatting it into a new string.
            let text = number.as_str();
            Some(Id::parse_int(text).map_or_else(|| Id::text(text), Id::int))
        }
        Value::String(text) => Some(Id::text(text.as_str())),
        _ => None,
    }
}
