//! Ground truth of a labelled stream, in the contract's JSON-lines form.

use serde_json::{Map, Value};
use veer_models::alert::id_from_json;
use veer_models::Id;

/// The kind of a decoy: a change that is not a lasting shift of interest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DecoyKind {
    /// A single session in unrelated categories, such as a gift.
    OneOff,
    /// An unusually high-rate burst of events, bot-like.
    Burst,
    /// Many users move towards the same categories for a limited time.
    Seasonal,
}

impl DecoyKind {
    /// Returns the contract's name of the decoy kind.
    pub fn name(self) -> &'static str {
        match self {
            DecoyKind::OneOff => "one_off",
            DecoyKind::Burst => "burst",
            DecoyKind::Seasonal => "seasonal",
        }
    }

    /// Parses the contract's name of a decoy kind.
    pub fn parse(name: &str) -> Option<DecoyKind> {
        match name {
            "one_off" => Some(DecoyKind::OneOff),
            "burst" => Some(DecoyKind::Burst),
            "seasonal" => Some(DecoyKind::Seasonal),
            _ => None,
        }
    }
}

/// One line of a truth file.
#[derive(Clone, Debug, PartialEq)]
pub enum TruthRecord {
    /// From `onset_ts` (Unix seconds) on, the user's preferences are replaced.
    InterestShift {
        /// The user whose interests shift.
        user: Id,
        /// Start of the shift, in Unix seconds.
        onset_ts: i64,
        /// Dominant categories before the shift.
        from: Vec<Id>,
        /// Dominant categories after the shift.
        to: Vec<Id>,
    },
    /// A change that an engine should not report as a shift, at `ts` (Unix seconds).
    Decoy {
        /// The user the decoy is planted on.
        user: Id,
        /// Kind of change.
        decoy: DecoyKind,
        /// When it happens, in Unix seconds.
        ts: i64,
        /// Categories the decoy's events fall in.
        categories: Vec<Id>,
    },
}

impl TruthRecord {
    /// Returns the user the record is about.
    pub fn user(&self) -> &Id {
        match self {
            TruthRecord::InterestShift { user, .. } | TruthRecord::Decoy { user, .. } => user,
        }
    }

    /// Encodes the record as one line of JSON, without the trailing newline.
    pub fn to_json_line(&self) -> String {
        let ids = |list: &[Id]| Value::Array(list.iter().map(Id::to_json).collect());
        let mut object = Map::new();
        match self {
            TruthRecord::InterestShift {
                user,
                onset_ts,
                from,
                to,
            } => {
                object.insert("user".into(), user.to_json());
                object.insert("kind".into(), Value::String("interest_shift".into()));
                object.insert("onset_ts".into(), Value::from(*onset_ts));
                object.insert("from".into(), ids(from));
                object.insert("to".into(), ids(to));
            }
            TruthRecord::Decoy {
                user,
                decoy,
                ts,
                categories,
            } => {
                object.insert("user".into(), user.to_json());
                object.insert("kind".into(), Value::String("decoy".into()));
                object.insert("decoy".into(), Value::String(decoy.name().into()));
                object.insert("ts".into(), Value::from(*ts));
                object.insert("categories".into(), ids(categories));
            }
        }
        Value::Object(object).to_string()
    }

    /// Parses one line of a truth file, returning a message that names the problem on failure.
    pub fn parse_line(line: &str) -> Result<TruthRecord, String> {
        let value: Value =
            serde_json::from_str(line).map_err(|error| format!("invalid JSON: {error}"))?;
        let object = value.as_object().ok_or("not a JSON object")?;
        let user = object
            .get("user")
            .and_then(id_from_json)
            .ok_or("missing or invalid `user`")?;
        let int = |name: &str| {
            object
                .get(name)
                .and_then(|value| value.as_i64().or_else(|| value.as_str()?.parse().ok()))
                .ok_or(format!("missing or invalid `{name}`"))
        };
        let id_list = |name: &str| -> Vec<Id> {
            object
                .get(name)
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(id_from_json).collect())
                .unwrap_or_default()
        };
        match object.get("kind").and_then(Value::as_str) {
            Some("interest_shift") => Ok(TruthRecord::InterestShift {
                user,
                onset_ts: int("onset_ts")?,
                from: id_list("from"),
                to: id_list("to"),
            }),
            Some("decoy") => {
                let name = object.get("decoy").and_then(Value::as_str).unwrap_or("");
                let decoy = DecoyKind::parse(name).ok_or(format!(
                    "unknown decoy kind {name:?}; expected one_off, burst or seasonal"
                ))?;
                Ok(TruthRecord::Decoy {
                    user,
                    decoy,
                    ts: int("ts")?,
                    categories: id_list("categories"),
                })
            }
            other => Err(format!(
                "unknown kind {other:?}; expected interest_shift or decoy"
            )),
        }
    }
}
