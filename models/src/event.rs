//! Behaviour events as the engine represents them after parsing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An identifier of a user, item or category, kept exactly as the input wrote it.
///
/// Canonical decimal integers (no sign, no leading zero, at most 38 digits) are stored as
/// `Int`, so that ids above 2^53 or `u64::MAX` are neither rounded nor merged. Anything else,
/// including JSON strings, is stored as `Text` and compared as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Id {
    /// A decimal integer id.
    Int(u128),
    /// Any other id, kept verbatim.
    Text(Box<str>),
}

impl Id {
    /// Parses a field of a text format: canonical decimal digits become `Int`, the rest `Text`.
    pub fn from_field(field: &str) -> Id {
        Id::parse_int(field).map_or_else(|| Id::Text(field.into()), Id::Int)
    }

    /// Parses canonical decimal digits, returning `None` for anything else or on overflow.
    pub fn parse_int(field: &str) -> Option<u128> {
        let bytes = field.as_bytes();
        if bytes.is_empty() || bytes.len() > 38 || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if bytes.len() > 1 && bytes[0] == b'0' {
            return None;
        }
        field.parse().ok()
    }

    /// Returns a 64-bit hash that is the same on every worker and process, used to route users.
    pub fn route_hash(&self) -> u64 {
        // FNV-1a over a tagged byte form: stable across runs, unlike `std::hash`'s SipHash keys.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |byte: u8| {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        };
        match self {
            Id::Int(value) => {
                feed(0);
                value.to_le_bytes().into_iter().for_each(&mut feed);
            }
            Id::Text(text) => {
                feed(1);
                text.bytes().for_each(&mut feed);
            }
        }
        hash
    }

    /// Writes the id as a JSON value: a number for `Int`, a string for `Text`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            // `arbitrary_precision` keeps every digit of ids beyond u64.
            Id::Int(value) => serde_json::Value::Number(serde_json::Number::from_string_unchecked(
                value.to_string(),
            )),
            Id::Text(text) => serde_json::Value::String(text.to_string()),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(value) => write!(formatter, "{value}"),
            Id::Text(text) => formatter.write_str(text),
        }
    }
}

impl From<u64> for Id {
    fn from(value: u64) -> Self {
        Id::Int(u128::from(value))
    }
}

/// The kind of action in an event, after aliases are normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Behavior {
    View,
    Search,
    Fav,
    Cart,
    Buy,
    /// Counted, but carries no interest weight.
    RemoveFromCart,
}

impl Behavior {
    /// Parses a behaviour name or one of the contract's aliases (case-sensitive, lower case).
    pub fn parse(name: &str) -> Option<Behavior> {
        Some(match name {
            "view" | "pv" | "click" | "detail" => Behavior::View,
            "cart" | "addtocart" | "add_to_cart" => Behavior::Cart,
            "fav" | "favorite" | "like" => Behavior::Fav,
            "buy" | "purchase" | "transaction" | "order" => Behavior::Buy,
            "search" => Behavior::Search,
            "remove_from_cart" => Behavior::RemoveFromCart,
            _ => return None,
        })
    }

    /// Returns the contract's name of the behaviour.
    pub fn name(self) -> &'static str {
        match self {
            Behavior::View => "view",
            Behavior::Search => "search",
            Behavior::Fav => "fav",
            Behavior::Cart => "cart",
            Behavior::Buy => "buy",
            Behavior::RemoveFromCart => "remove_from_cart",
        }
    }

    /// Returns the action's weight as evidence of the user's interest, relative to a view.
    pub fn interest_weight(self) -> f64 {
        match self {
            Behavior::View | Behavior::Search => 1.0,
            Behavior::Fav => 2.0,
            Behavior::Cart => 2.0,
            Behavior::Buy => 3.0,
            Behavior::RemoveFromCart => 0.0,
        }
    }

    /// All behaviours, in a fixed order used for per-behaviour counters.
    pub const ALL: [Behavior; 6] = [
        Behavior::View,
        Behavior::Search,
        Behavior::Fav,
        Behavior::Cart,
        Behavior::Buy,
        Behavior::RemoveFromCart,
    ];

    /// Returns the position of the behaviour in [`Behavior::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One action of one user on one item, as parsed from any input format.
///
/// The derived order (time first, then the remaining fields) is the order in which the engine
/// processes a user's events, so that results never depend on arrival order.
#[derive(Clone, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct Event {
    /// Event time in Unix milliseconds.
    pub ts_ms: i64,
    pub user: Id,
    pub category: Id,
    pub item: Id,
    pub behavior: Behavior,
    /// Upper-level category where the input has a category tree (REES46 `category_code`'s first
    /// part, the RetailRocket tree's root), used in place of learned category groups.
    pub topic: Option<Id>,
    /// Unit price for `cart` and `buy`.
    pub price: Option<f64>,
    pub brand: Option<Id>,
    pub dwell_ms: Option<u64>,
    pub session: Option<Box<str>>,
    /// 1-based physical line of the event in its input, for dead-letter and late records.
    pub line: u64,
}

impl Event {
    /// Compares two events in the engine's processing order: time, then the event's own fields.
    ///
    /// The source line is compared last, so that two identical events from different lines
    /// still have a fixed order.
    pub fn processing_cmp(&self, other: &Event) -> std::cmp::Ordering {
        self.partial_cmp(other).unwrap_or_else(|| {
            // Only NaN prices make `partial_cmp` fail; readers reject those, so this is a
            // fallback that still gives a total order.
            (
                self.ts_ms,
                &self.user,
                &self.category,
                &self.item,
                self.line,
            )
                .cmp(&(
                    other.ts_ms,
                    &other.user,
                    &other.category,
                    &other.item,
                    other.line,
                ))
        })
    }

    /// Returns whether two events are exact duplicates: every field equal except the line.
    pub fn same_content(&self, other: &Event) -> bool {
        self.ts_ms == other.ts_ms
            && self.user == other.user
            && self.category == other.category
            && self.item == other.item
            && self.behavior == other.behavior
            && self.topic == other.topic
            && self.price.map(f64::to_bits) == other.price.map(f64::to_bits)
            && self.brand == other.brand
            && self.dwell_ms == other.dwell_ms
            && self.session == other.session
    }

    /// Returns the event time in Unix seconds, rounded down.
    pub fn ts_secs(&self) -> i64 {
        self.ts_ms.div_euclid(1000)
    }
}
