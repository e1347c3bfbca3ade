//! The profile of one user as the query endpoint (`GET /users/{id}`) returns it.
//!
//! A [`UserProfile`] is a snapshot taken from the live per-user state of the worker that owns
//! the user. It serialises to JSON with ids written as the input wrote them: a decimal id is a
//! JSON number (every digit kept, also beyond 2^64), anything else a string.
//!
//! ```
//! use veer_models::profile::{ProfileShare, UserProfile};
//! use veer_models::Id;
//!
//! let profile = UserProfile {
//!     user: Id::from(42u64),
//!     events: 3,
//!     first_ts: Some(1_700_000_000),
//!     last_ts: Some(1_700_000_600),
//!     interest: vec![ProfileShare { category: Id::from_field("shoes"), share: 1.0 }],
//!     attributes: None,
//!     segment: None,
//!     segment_features: None,
//!     alerts: 0,
//!     last_alert: None,
//! };
//! let json = serde_json::to_string(&profile).unwrap();
//! assert!(json.starts_with(r#"{"user":42,"events":3,"#));
//! assert!(json.contains(r#""interest":[{"category":"shoes","share":1.0}]"#));
//!
//! // Shares are written with four decimals, as profile lines write them.
//! let shares = UserProfile {
//!     interest: vec![ProfileShare { category: Id::from(7u64), share: 2.0 / 3.0 }],
//!     ..profile
//! };
//! let json = serde_json::to_string(&shares).unwrap();
//! assert!(json.contains(r#""interest":[{"category":7,"share":0.6667}]"#));
//! assert!(json.contains(r#""segment":null"#));
//! ```

use serde::{Serialize, Serializer};

use crate::alert::{round_to_four_decimals, CategoryShare};
use crate::detector::UserState;
use crate::event::{Id, IdValue};

/// A user's current profile, read from the live per-user state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UserProfile {
    /// The user, as the input wrote the id.
    #[serde(serialize_with = "serialize_id")]
    pub user: Id,
    /// Events of the user fed to the detector so far.
    pub events: u64,
    /// Event time of the user's first event, in Unix seconds.
    pub first_ts: Option<i64>,
    /// Event time of the user's latest event, in Unix seconds.
    pub last_ts: Option<i64>,
    /// Current interest: the top categories of the user's reference profile with their shares,
    /// largest first. Shares are of the decayed reference, so they sum to at most 1.
    pub interest: Vec<ProfileShare>,
    /// The user's row of the attribute table (`--users`) as a JSON object, as profile lines
    /// write it. `None` without a table or without a row for the user.
    pub attributes: Option<serde_json::Value>,
    /// Segment of the user's latest window scored by the models; `None` without `--models`
    /// and before the first scored window.
    pub segment: Option<usize>,
    /// Values of the attribute columns that the segment model uses, from the window that gave
    /// `segment`, before standardisation; `None` without a segment. Each is written rounded to
    /// four decimals, as shares are.
    #[serde(serialize_with = "serialize_features")]
    pub segment_features: Option<std::collections::BTreeMap<&'static str, f64>>,
    /// Alerts raised for the user so far.
    pub alerts: u64,
    /// The user's latest alert, as written to the alert output.
    pub last_alert: Option<serde_json::Value>,
}

/// A category and its share of a user's interest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileShare {
    /// The category, as the input wrote the id.
    #[serde(serialize_with = "serialize_id")]
    pub category: Id,
    /// Share of the user's interest, in 0..=1. It is written rounded to four decimals, as
    /// profile lines and alerts write shares.
    #[serde(serialize_with = "serialize_share")]
    pub share: f64,
}

/// A number that serialises rounded to four decimals, or as `null` when it is not finite.
struct Rounded(f64);

impl Serialize for Rounded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let rounded = round_to_four_decimals(self.0);
        if rounded.is_finite() {
            serializer.serialize_f64(rounded)
        } else {
            serializer.serialize_none()
        }
    }
}

/// Writes a share rounded to four decimals, or `null` when it is not finite.
fn serialize_share<S: Serializer>(share: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    Rounded(*share).serialize(serializer)
}

/// Writes the segment features with each value rounded as [`serialize_share`] rounds a share.
fn serialize_features<S: Serializer>(
    features: &Option<std::collections::BTreeMap<&'static str, f64>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match features {
        Some(features) => {
            serializer.collect_map(features.iter().map(|(name, value)| (name, Rounded(*value))))
        }
        None => serializer.serialize_none(),
    }
}

impl From<CategoryShare> for ProfileShare {
    fn from(share: CategoryShare) -> ProfileShare {
        ProfileShare {
            category: share.category,
            share: share.share,
        }
    }
}

/// Categories listed in a profile's interest vector.
pub const INTEREST_CATEGORIES: usize = 5;

impl UserProfile {
    /// Creates the profile of a user with no events.
    pub fn empty(user: Id) -> UserProfile {
        UserProfile {
            user,
            events: 0,
            first_ts: None,
            last_ts: None,
            interest: Vec::new(),
            attributes: None,
            segment: None,
            segment_features: None,
            alerts: 0,
            last_alert: None,
        }
    }
}

/// Per-user detector state that can describe the user as a [`UserProfile`].
pub trait ProfileSource {
    /// Builds the profile of `user` from this state; `last_alert` is left for the caller.
    fn profile(&self, user: &Id) -> UserProfile;
}

impl ProfileSource for UserState {
    fn profile(&self, user: &Id) -> UserProfile {
        UserProfile {
            events: u64::from(self.events),
            first_ts: self.behavior.first_ts(),
            last_ts: self.behavior.last_ts(),
            interest: self
                .interest(INTEREST_CATEGORIES)
                .into_iter()
                .map(ProfileShare::from)
                .collect(),
            alerts: u64::from(self.alerts),
            ..UserProfile::empty(user.clone())
        }
    }
}

/// Writes an id as a JSON number when it is decimal and as a string otherwise.
pub fn serialize_id<S: Serializer>(id: &Id, serializer: S) -> Result<S::Ok, S::Error> {
    match id.value() {
        IdValue::Int(value) => serializer.serialize_u128(value),
        IdValue::Text(text) => serializer.serialize_str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_ids_keep_every_digit() {
        let user = Id::from_field("123456789012345678901234567890");
        let profile = UserProfile {
            segment: Some(2),
            ..UserProfile::empty(user)
        };
        let json = serde_json::to_string(&profile).unwrap();
        assert!(
            json.starts_with(r#"{"user":123456789012345678901234567890,"#),
            "{json}"
        );
        assert!(json.contains(r#""segment":2"#), "{json}");
    }

    #[test]
    fn segment_features_rounded_like_shares() {
        let features = [
            ("active_hours", 2.0 / 3.0),
            ("gender_female", 1.0),
            ("spend", f64::NAN),
        ];
        let profile = UserProfile {
            interest: vec![ProfileShare {
                category: Id::from(7u64),
                share: 2.0 / 3.0,
            }],
            segment: Some(1),
            segment_features: Some(features.into_iter().collect()),
            ..UserProfile::empty(Id::from(1u64))
        };
        let json = serde_json::to_string(&profile).unwrap();
        assert!(json.contains(r#""share":0.6667"#), "{json}");
        assert!(
            json.contains(
                r#""segment_features":{"active_hours":0.6667,"gender_female":1.0,"spend":null}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn missing_segment_features_written_as_null() {
        let json = serde_json::to_string(&UserProfile::empty(Id::from(1u64))).unwrap();
        assert!(json.contains(r#""segment_features":null"#), "{json}");
    }
}
