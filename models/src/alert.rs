//! Alerts in the contract's JSON-lines form.

use serde_json::{Map, Value};

use crate::event::{Id, IdValue};

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
    ///
    /// The line equals `to_json().to_string()` byte for byte, but is written directly instead
    /// of through a `serde_json::Value`, which cost an allocation per field. Strings and
    /// floats go through serde_json's own encoders, so escapes and float digits are the same.
    pub fn to_json_line(&self) -> String {
        let mut line = Vec::with_capacity(512);
        line.extend_from_slice(b"{\"alert_id\":");
        write_json(&mut line, &self.alert_id());
        line.extend_from_slice(b",\"user\":");
        write_id(&mut line, &self.user);
        line.extend_from_slice(b",\"kind\":");
        write_json(&mut line, self.kind.name());
        line.extend_from_slice(b",\"ts\":");
        write_json(&mut line, &self.ts);
        line.extend_from_slice(b",\"onset_ts\":");
        write_json(&mut line, &self.onset_ts);
        line.extend_from_slice(b",\"score\":");
        write_rounded(&mut line, self.score);
        line.extend_from_slice(b",\"severity\":");
        write_json(&mut line, self.severity());
        line.extend_from_slice(b",\"from\":");
        write_shares(&mut line, &self.from);
        line.extend_from_slice(b",\"to\":");
        write_shares(&mut line, &self.to);
        line.extend_from_slice(b",\"signals\":{");
        let mut first = true;
        for (at, (name, _)) in self.signals.iter().enumerate() {
            // A JSON object keeps one value per key: `to_json` keeps the first position of a
            // repeated name and its last value.
            if self.signals[..at]
                .iter()
                .any(|(earlier, _)| earlier == name)
            {
                continue;
            }
            let value = self.signals[at..]
                .iter()
                .rev()
                .find(|(later, _)| later == name)
                .map_or(f64::NAN, |(_, value)| *value);
            if !first {
                line.push(b',');
            }
            first = false;
            write_json(&mut line, name.as_str());
            line.push(b':');
            write_rounded(&mut line, value);
        }
        line.extend_from_slice(b"},\"events_since_onset\":");
        write_json(&mut line, &self.events_since_onset);
        if let Some(segment) = self.segment_before {
            line.extend_from_slice(b",\"segment_before\":");
            write_json(&mut line, &segment);
        }
        if let Some(segment) = self.segment_after {
            line.extend_from_slice(b",\"segment_after\":");
            write_json(&mut line, &segment);
        }
        line.push(b'}');
        String::from_utf8(line).expect("serde_json writes UTF-8 and the keys are ASCII")
    }
}

/// Appends `value` as JSON to `line`.
fn write_json<T: serde::Serialize + ?Sized>(line: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(line, value).expect("strings and numbers encode into memory");
}

/// Appends an id as [`Id::to_json`] encodes it: a number for an integer, a string for text.
fn write_id(line: &mut Vec<u8>, id: &Id) {
    match id.value() {
        IdValue::Int(value) => {
            use std::io::Write;
            write!(line, "{value}").expect("writing into memory does not fail");
        }
        IdValue::Text(text) => write_json(line, text),
    }
}

/// Appends `value` as [`round4`] encodes it: rounded to four decimals, `null` when not finite.
fn write_rounded(line: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        line.extend_from_slice(b"null");
        return;
    }
    // The serializer writes `null` for a rounded value that overflowed, as `round4` does.
    write_json(line, &round_to_four_decimals(value));
}

/// Appends a `from` or `to` list of category shares.
fn write_shares(line: &mut Vec<u8>, shares: &[CategoryShare]) {
    line.push(b'[');
    for (at, entry) in shares.iter().enumerate() {
        if at > 0 {
            line.push(b',');
        }
        line.extend_from_slice(b"{\"category\":");
        write_id(line, &entry.category);
        line.extend_from_slice(b",\"share\":");
        write_rounded(line, entry.share);
        line.push(b'}');
    }
    line.push(b']');
}

/// Rounds a share, score or signal to the four decimals that alerts, profile lines and the
/// `/users/{id}` response write, so that their output compares byte for byte across platforms.
/// A value above about 1.8e304 becomes infinite.
pub fn round_to_four_decimals(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// Encodes `value` rounded to four decimals, or `null` when it is not finite.
fn round4(value: f64) -> Value {
    if !value.is_finite() {
        return Value::Null;
    }
    serde_json::Number::from_f64(round_to_four_decimals(value)).map_or(Value::Null, Value::Number)
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

/// Reads the id field `name` of an input record: an integer or a non-empty string. The
/// error names the field and the value's JSON type.
pub fn input_id(value: &Value, name: &str) -> Result<Id, String> {
    // The contract allows integer or string ids, so a number written with a fraction or an
    // exponent (`3.5`, `3.0`, `1e3`) is rejected rather than kept as the text id "3.5".
    if let Value::Number(number) = value {
        if number.as_str().contains(['.', 'e', 'E']) {
            return Err(format!(
                "{name} {number} is not an integer; ids are integers or strings"
            ));
        }
        // An integer id is stored as a number of at most 38 digits. A longer one kept as text
        // would be printed as a JSON string and merge with the string id of the same digits.
        let digits = number.as_str();
        if !digits.starts_with('-') && Id::parse_int(digits).is_none() {
            return Err(format!(
                "{name} is an integer of {} digits, but integer ids have at most 38; write a \
                 longer id as a JSON string",
                digits.len()
            ));
        }
    }
    match id_from_json(value) {
        Some(id) if id.as_text() == Some("") => Err(format!("{name} is an empty string")),
        Some(id) => Ok(id),
        None => Err(format!(
            "{name} is {}, expected an integer or a string",
            json_type(value)
        )),
    }
}

/// Returns the name of a JSON value's type with its article, such as "an array", for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(category: Id, share: f64) -> CategoryShare {
        CategoryShare { category, share }
    }

    /// Alerts with the values whose encoding could differ between the two writers: text and
    /// wide ids, escapes, floats that are not finite or that overflow when rounded, negative
    /// zero, a repeated signal name and the optional segments.
    fn unusual_alerts() -> Vec<Alert> {
        let plain = Alert {
            user: Id::from(1_000_228u64),
            kind: AlertKind::InterestShift,
            ts: 1_511_758_281,
            onset_ts: 1_511_755_118,
            score: 0.692_54,
            from: vec![
                share(Id::from(1_859_277u64), 0.171_66),
                share(Id::from(2u64), 1.0 / 3.0),
            ],
            to: vec![share(Id::from(3_378_887u64), 1.0)],
            signals: vec![
                ("cusum".into(), 8.916_44),
                ("novel_share".into(), 1.0),
                ("entropy_change".into(), -1.414_25),
            ],
            events_since_onset: 7,
            segment_before: None,
            segment_after: None,
        };
        vec![
            plain.clone(),
            Alert {
                user: Id::text("u\"ser\\\n\u{1}é"),
                kind: AlertKind::Anomaly,
                ts: -5,
                onset_ts: i64::MIN,
                score: f64::NAN,
                from: Vec::new(),
                to: vec![
                    share(Id::text("cat\t"), -0.0),
                    share(Id::int(u128::MAX), 1e300),
                ],
                signals: vec![
                    ("cusum".into(), f64::INFINITY),
                    ("sessions".into(), 2.0),
                    ("cusum".into(), 1e-9),
                    ("na\"me".into(), -1e21),
                ],
                events_since_onset: u64::MAX,
                segment_before: Some(3),
                segment_after: Some(0),
            },
            Alert {
                score: 1e20,
                signals: Vec::new(),
                segment_after: Some(usize::MAX),
                ..plain
            },
        ]
    }

    #[test]
    fn json_line_matches_value_encoding() {
        for alert in unusual_alerts() {
            assert_eq!(alert.to_json_line(), alert.to_json().to_string());
        }
    }

    #[test]
    fn json_line_keeps_contract_form() {
        let line = unusual_alerts()[0].to_json_line();
        let expected = concat!(
            r#"{"alert_id":"1000228-1511758281-interest_shift","user":1000228,"#,
            r#""kind":"interest_shift","ts":1511758281,"onset_ts":1511755118,"score":0.6925,"#,
            r#""severity":"medium","from":[{"category":1859277,"share":0.1717},"#,
            r#"{"category":2,"share":0.3333}],"to":[{"category":3378887,"share":1.0}],"#,
            r#""signals":{"cusum":8.9164,"novel_share":1.0,"entropy_change":-1.4143},"#,
            r#""events_since_onset":7}"#
        );
        assert_eq!(line, expected);
    }
}
