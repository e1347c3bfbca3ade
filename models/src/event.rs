//! Behaviour events as the engine represents them after parsing.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An identifier of a user, item or category, kept exactly as the input wrote it.
///
/// Canonical decimal integers (no sign, no leading zero, at most 38 digits) are integers, so that
/// ids above 2^53 or `u64::MAX` are neither rounded nor merged. Anything else, including JSON
/// strings, is text and compared as text. Integers order before text, and by value.
///
/// An `Id` is 16 bytes: integers up to `u64::MAX` are stored inline, wider integers and text
/// behind one thin pointer. Hashing and serde encoding are those of the earlier two-variant
/// form (`Int(u128)`, `Text(Box<str>)`), so hash-map order and checkpoints do not change.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(IdRepr);

/// The storage of an [`Id`]. `Wide` is used only for values above `u64::MAX`, so each id has
/// one form and the derived comparisons match comparing the values.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum IdRepr {
    Int(u64),
    Wide(Box<u128>),
    /// Boxed twice so that the pointer is thin and the enum stays 16 bytes.
    Text(Box<Box<str>>),
}

/// An [`Id`]'s value, borrowed for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdValue<'a> {
    /// A decimal integer id.
    Int(u128),
    /// Any other id, verbatim.
    Text(&'a str),
}

impl Id {
    /// Builds an integer id.
    pub fn int(value: u128) -> Id {
        match u64::try_from(value) {
            Ok(narrow) => Id(IdRepr::Int(narrow)),
            Err(_) => Id(IdRepr::Wide(Box::new(value))),
        }
    }

    /// Builds a text id, kept verbatim even when it contains only digits.
    pub fn text(text: &str) -> Id {
        Id(IdRepr::Text(Box::new(text.into())))
    }

    /// Parses a field of a text format: canonical decimal digits become an integer, the rest text.
    pub fn from_field(field: &str) -> Id {
        Id::parse_int(field).map_or_else(|| Id::text(field), Id::int)
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

    /// Returns the key under which the id matches ids read from another file.
    ///
    /// Within one stream the integer 7 and the text "7" are two ids. A join of two files
    /// (attributes to events, truth to alerts) compares keys instead, so a text id that
    /// [`Id::parse_int`] accepts becomes the integer of that value. Other ids are their own key.
    ///
    /// ```
    /// use veer_models::Id;
    ///
    /// assert_eq!(*Id::text("7").join_key(), Id::int(7));
    /// assert_eq!(*Id::text("007").join_key(), Id::text("007"));
    /// assert_eq!(*Id::int(7).join_key(), Id::int(7));
    /// ```
    pub fn join_key(&self) -> Cow<'_, Id> {
        match self.as_text().and_then(Id::parse_int) {
            Some(value) => Cow::Owned(Id::int(value)),
            None => Cow::Borrowed(self),
        }
    }

    /// Returns every id whose [`Id::join_key`] is `self`'s key: for an integer, itself and the
    /// text of its digits; for any other id, only itself.
    pub fn join_forms(&self) -> Vec<Id> {
        let key = self.join_key().into_owned();
        match key.as_int() {
            Some(value) => {
                let digits = Id::text(&value.to_string());
                vec![key, digits]
            }
            None => vec![key],
        }
    }

    /// Returns the id's value for matching.
    pub fn value(&self) -> IdValue<'_> {
        match &self.0 {
            IdRepr::Int(value) => IdValue::Int(u128::from(*value)),
            IdRepr::Wide(value) => IdValue::Int(**value),
            IdRepr::Text(text) => IdValue::Text(text),
        }
    }

    /// Returns the integer value, or `None` for a text id.
    pub fn as_int(&self) -> Option<u128> {
        match self.value() {
            IdValue::Int(value) => Some(value),
            IdValue::Text(_) => None,
        }
    }

    /// Returns the value of an integer id that fits in a `u64`, or `None` for any other id.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            IdRepr::Int(value) => Some(*value),
            IdRepr::Wide(_) | IdRepr::Text(_) => None,
        }
    }

    /// Returns the text, or `None` for an integer id.
    pub fn as_text(&self) -> Option<&str> {
        match self.value() {
            IdValue::Int(_) => None,
            IdValue::Text(text) => Some(text),
        }
    }

    /// Returns a 64-bit hash that is the same on every worker and process, used to route users.
    pub fn route_hash(&self) -> u64 {
        // FNV-1a over a tagged byte form: stable across runs, unlike `std::hash`'s SipHash keys.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |byte: u8| {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        };
        match self.value() {
            IdValue::Int(value) => {
                feed(0);
                value.to_le_bytes().into_iter().for_each(&mut feed);
            }
            IdValue::Text(text) => {
                feed(1);
                text.bytes().for_each(&mut feed);
            }
        }
        hash
    }

    /// Writes the id as a JSON value: a number for an integer, a string for text.
    pub fn to_json(&self) -> serde_json::Value {
        match self.value() {
            // `arbitrary_precision` keeps every digit of ids beyond u64.
            IdValue::Int(value) => serde_json::Value::Number(
                serde_json::Number::from_string_unchecked(value.to_string()),
            ),
            IdValue::Text(text) => serde_json::Value::String(text.to_string()),
        }
    }

    /// Returns the wire form that serde encodes, borrowing the text.
    fn wire(&self) -> IdWire<'_> {
        match self.value() {
            IdValue::Int(value) => IdWire::Int(value),
            IdValue::Text(text) => IdWire::Text(Cow::Borrowed(text)),
        }
    }
}

/// The serde form of an [`Id`]: the enum `Id` with variants `Int(u128)` and `Text(str)`, as the
/// earlier derived encoding wrote it into checkpoints and cluster messages.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Id")]
enum IdWire<'a> {
    Int(u128),
    Text(#[serde(borrow)] Cow<'a, str>),
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match IdWire::deserialize(deserializer)? {
            IdWire::Int(value) => Id::int(value),
            IdWire::Text(text) => Id::text(&text),
        })
    }
}

impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The derived hash of the earlier `enum { Int(u128), Text(Box<str>) }`: the variant index
        // as an `isize`, then the value. Keeping it keeps every hash map's iteration order.
        match self.value() {
            IdValue::Int(value) => {
                state.write_isize(0);
                value.hash(state);
            }
            IdValue::Text(text) => {
                state.write_isize(1);
                text.hash(state);
            }
        }
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value() {
            IdValue::Int(value) => formatter.debug_tuple("Int").field(&value).finish(),
            IdValue::Text(text) => formatter.debug_tuple("Text").field(&text).finish(),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value() {
            IdValue::Int(value) => write!(formatter, "{value}"),
            IdValue::Text(text) => formatter.write_str(text),
        }
    }
}

impl From<u64> for Id {
    fn from(value: u64) -> Self {
        Id(IdRepr::Int(value))
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
        Behavior::parse_bytes(name.as_bytes())
    }

    /// Parses the bytes of a behaviour name or alias, as [`Behavior::parse`] does. Readers use
    /// it to skip the UTF-8 check of the name, because every name is ASCII.
    pub fn parse_bytes(name: &[u8]) -> Option<Behavior> {
        Some(match name {
            b"view" | b"pv" | b"click" | b"detail" => Behavior::View,
            b"cart" | b"addtocart" | b"add_to_cart" => Behavior::Cart,
            b"fav" | b"favorite" | b"like" => Behavior::Fav,
            b"buy" | b"purchase" | b"transaction" | b"order" => Behavior::Buy,
            b"search" => Behavior::Search,
            b"remove_from_cart" => Behavior::RemoveFromCart,
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
    /// Returns an event with the fields every input format has, and no topic, price, brand,
    /// dwell time, session or line.
    ///
    /// ```
    /// use veer_models::{Behavior, Event};
    ///
    /// let event = Event::plain(1_000, 7u64, 3u64, 30u64, Behavior::View);
    /// assert_eq!((event.ts_ms, event.line, event.price), (1_000, 0, None));
    /// ```
    pub fn plain(
        ts_ms: i64,
        user: impl Into<Id>,
        category: impl Into<Id>,
        item: impl Into<Id>,
        behavior: Behavior,
    ) -> Event {
        Event {
            ts_ms,
            user: user.into(),
            category: category.into(),
            item: item.into(),
            behavior,
            topic: None,
            price: None,
            brand: None,
            dwell_ms: None,
            session: None,
            line: 0,
        }
    }

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

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    /// The id type before it was shrunk, whose hashes and encodings `Id` must keep.
    #[derive(Debug, Hash, Serialize, Deserialize)]
    #[serde(rename = "Id")]
    enum EarlierId {
        Int(u128),
        Text(Box<str>),
    }

    fn earlier_pairs() -> Vec<(Id, EarlierId)> {
        vec![
            (Id::int(0), EarlierId::Int(0)),
            (Id::int(42), EarlierId::Int(42)),
            (Id::from(u64::MAX), EarlierId::Int(u128::from(u64::MAX))),
            (
                Id::int(u128::from(u64::MAX) + 1),
                EarlierId::Int(u128::from(u64::MAX) + 1),
            ),
            (Id::int(u128::MAX), EarlierId::Int(u128::MAX)),
            (Id::text(""), EarlierId::Text("".into())),
            (Id::text("42"), EarlierId::Text("42".into())),
            (Id::text("u-7f3a"), EarlierId::Text("u-7f3a".into())),
        ]
    }

    #[test]
    fn id_and_event_sizes() {
        assert_eq!(std::mem::size_of::<Id>(), 16);
        assert_eq!(std::mem::size_of::<Option<Id>>(), 16);
        assert_eq!(std::mem::size_of::<Event>(), 152);
    }

    #[test]
    fn id_hash_matches_earlier_form() {
        let fx = rustc_hash::FxBuildHasher;
        let sip = std::collections::hash_map::RandomState::new();
        for (id, earlier) in earlier_pairs() {
            assert_eq!(fx.hash_one(&id), fx.hash_one(&earlier), "{id:?}");
            assert_eq!(sip.hash_one(&id), sip.hash_one(&earlier), "{id:?}");
        }
    }

    #[test]
    fn id_encoding_matches_earlier_form() {
        for (id, earlier) in earlier_pairs() {
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, serde_json::to_string(&earlier).unwrap());
            assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
            assert_eq!(format!("{id:?}"), format!("{earlier:?}"));
        }
    }

    #[test]
    fn id_route_hash_is_stable() {
        // FNV-1a of the tagged byte form, computed independently. A change here moves users
        // between workers and invalidates checkpoints.
        assert_eq!(Id::int(42).route_hash(), 0x17d0_2c31_75c7_ad35);
        assert_eq!(Id::text("42").route_hash(), 0xd05f_d118_66ed_c6ce);
    }

    #[test]
    fn id_order_is_by_value_then_text() {
        let wide = u128::from(u64::MAX) + 1;
        let mut ids = vec![
            Id::text("1"),
            Id::int(wide + 1),
            Id::int(7),
            Id::int(wide),
            Id::from(u64::MAX),
            Id::text("0"),
        ];
        ids.sort();
        let expected = vec![
            Id::int(7),
            Id::from(u64::MAX),
            Id::int(wide),
            Id::int(wide + 1),
            Id::text("0"),
            Id::text("1"),
        ];
        assert_eq!(ids, expected);
        assert_eq!(Id::int(5), Id::from(5));
        assert_ne!(Id::int(5), Id::text("5"));
    }

    #[test]
    fn join_key_merges_only_canonical_digits() {
        let wide = u128::from(u64::MAX) + 1;
        let cases = [
            (Id::text("7"), Id::int(7)),
            (Id::text("0"), Id::int(0)),
            (Id::text(&wide.to_string()), Id::int(wide)),
            (Id::int(7), Id::int(7)),
            (Id::text("007"), Id::text("007")),
            (Id::text("-7"), Id::text("-7")),
            (Id::text("+7"), Id::text("+7")),
            (Id::text(" 7"), Id::text(" 7")),
            (Id::text("7a"), Id::text("7a")),
            (Id::text(&"9".repeat(39)), Id::text(&"9".repeat(39))),
        ];
        for (id, key) in cases {
            assert_eq!(*id.join_key(), key, "{id:?}");
        }
    }

    #[test]
    fn join_forms_list_both_types_of_integers() {
        assert_eq!(Id::int(7).join_forms(), [Id::int(7), Id::text("7")]);
        assert_eq!(Id::text("7").join_forms(), [Id::int(7), Id::text("7")]);
        assert_eq!(Id::text("u-7").join_forms(), [Id::text("u-7")]);
        assert_eq!(Id::text("007").join_forms(), [Id::text("007")]);
        for form in Id::int(42).join_forms() {
            assert_eq!(*form.join_key(), Id::int(42), "{form:?}");
        }
    }
}
