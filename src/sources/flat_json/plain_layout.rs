//! A reader of flat lines for one common layout: exactly the five required fields, whose
//! values are integers of 1 to 15 digits and a behaviour name.
//!
//! Every step loads the 16 bytes at its position straight from the line, as if the line were
//! followed by zero bytes. Near the end it loads the line's last 16 bytes and shifts out those
//! before the position. A piece of the layout's text is compared with two masked words, an
//! integer's length is the run of digit bytes in the same words, and its value is converted
//! from them. A line that differs in any way gets `None` and goes to [`Layout::read_values`],
//! which reads the same values from the same layout, so both give the same event.
//!
//! The line is not copied. With a padded copy, the loads right after the copy were the slowest
//! instructions in `perf` profiles, likely because an 8-byte load cannot take its bytes from
//! the copy's wider stores while those are still pending.

use veer_models::Behavior;

use super::{Field, Layout, Segment};
use crate::sources::digits;
use crate::sources::row::IntegerRow;
use crate::sources::time;

/// Minimum length of a line read here, in bytes, so that the line's last 16 bytes can be
/// loaded. A line of the five required fields is longer.
const MIN_LINE_BYTES: usize = 16;

/// The layout of the last flat line, when it has the shape read here, and the behaviour names
/// read so far.
#[derive(Default)]
pub(super) struct PlainLayout {
    /// The text before each value and the value's field, in line order, then the text after
    /// the last value. `None` when the last layout has another shape.
    pieces: Option<([Step; 5], Segment)>,
    names: KnownNames,
}

/// Behaviour names read before, so that a repeated name costs one to four masked comparisons
/// instead of a search for its closing quote and a call to [`Behavior::parse_bytes`].
#[derive(Default)]
struct KnownNames {
    /// The names, at most [`KNOWN_NAMES`], in the order they were first read. Files usually
    /// use fewer names, and further names replace the entries in turn.
    names: Vec<KnownName>,
    /// The entry that the next new name replaces once `names` is full.
    next: usize,
}

/// The maximum number of names in [`KnownNames`].
const KNOWN_NAMES: usize = 4;

/// A behaviour name as a JSON string and its behaviour.
#[derive(Clone, Copy)]
struct KnownName {
    /// The string's bytes from the opening to the closing quote as a little-endian number.
    /// The name contains no quote, so 16 bytes that start with these bytes start with the
    /// same string.
    string: u128,
    /// The mask of the string's bytes in `string`.
    mask: u128,
    /// The name's length without the quotes.
    length: usize,
    behavior: Behavior,
}

/// A piece of the layout's text and the field of the value after it.
#[derive(Clone, Copy)]
struct Step {
    before: Segment,
    /// Index of the value in [`PlainLayout::read`]'s integers, or [`BEHAVIOR_SLOT`].
    slot: usize,
}

/// The slot of the behaviour, which is read as a name instead of an integer.
const BEHAVIOR_SLOT: usize = 4;

impl std::fmt::Debug for PlainLayout {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PlainLayout")
            .field("known", &self.pieces.is_some())
            .finish()
    }
}

impl PlainLayout {
    /// Takes the pieces of `layout` when it has exactly the fields `user`, `item`, `category`,
    /// `behavior` and `ts`, once each, and every piece of its text is at most 16 bytes long.
    /// Otherwise lines are left to the general reader until the next layout.
    pub(super) fn update(&mut self, layout: &Layout) {
        self.pieces = plain_pieces(&layout.segments);
    }

    /// Reads `line` if it has the layout and plain values, and returns its values with the
    /// time converted to milliseconds. Returns `None` for any other line.
    #[inline(always)]
    pub(super) fn read(&mut self, line: &[u8]) -> Option<IntegerRow> {
        let (steps, tail) = self.pieces.as_ref()?;
        let length = line.len();
        if length < MIN_LINE_BYTES {
            return None;
        }

        // `at` never passes the line's end: a matched piece and a value end at or before the
        // first of the zero bytes that `load_pair` reads past the end.
        let mut at = 0;
        let mut integers = [0u64; 4];
        let mut behavior = Behavior::View;
        for step in steps {
            if !matches(&step.before, load_pair(line, at)) {
                return None;
            }
            at += step.before.length;
            let (low, high) = load_pair(line, at);
            if step.slot == BEHAVIOR_SLOT {
                let (name_length, name) = self.names.read(line, at, low, high)?;
                behavior = name;
                at += name_length + 2;
                continue;
            }
            let (count, value) = read_integer(low, high)?;
            integers[step.slot & 3] = value;
            at += count;
        }
        if at + tail.length != length || !matches(tail, load_pair(line, at)) {
            return None;
        }

        let [user, item, category, epoch] = integers;
        // An epoch of more than 13 digits takes the full parser, which rejects it with a reason.
        if epoch >= time::EPOCH_END {
            return None;
        }
        let ts_ms = if epoch >= time::MILLIS_FROM {
            epoch
        } else {
            epoch * 1000
        };
        Some(IntegerRow {
            ts_ms: ts_ms as i64,
            user,
            item,
            category,
            behavior,
        })
    }
}

/// Returns the steps and the tail of `segments` when [`PlainLayout::update`] takes them.
fn plain_pieces(segments: &[Segment]) -> Option<([Step; 5], Segment)> {
    let (tail, pieces) = segments.split_last()?;
    if pieces.len() != 5 || segments.iter().any(|segment| segment.length > 16) {
        return None;
    }
    let mut seen = [false; 5];
    let mut steps = [Step {
        before: *tail,
        slot: 0,
    }; 5];
    for (step, segment) in steps.iter_mut().zip(pieces) {
        let slot = match segment.field? {
            Field::User => 0,
            Field::Item => 1,
            Field::Category => 2,
            Field::Ts => 3,
            Field::Behavior => BEHAVIOR_SLOT,
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        *step = Step {
            before: *segment,
            slot,
        };
    }
    Some((steps, *tail))
}

/// Returns the 16 bytes of `line` at `at` as two little-endian words, with zero bytes past the
/// line's end. The line must be at least [`MIN_LINE_BYTES`] long and `at` at most its length.
#[inline(always)]
fn load_pair(line: &[u8], at: usize) -> (u64, u64) {
    let last_start = line.len() - MIN_LINE_BYTES;
    if at <= last_start {
        let bytes = &line[at..at + 16];
        return (digits::exact_word(bytes, 0), digits::exact_word(bytes, 8));
    }
    // Load the line's last 16 bytes and shift out those before `at`, which keeps the load
    // inside the line. A shift of all 16 bytes gives zero.
    let last = u128::from_le_bytes(line[last_start..].try_into().expect("16 bytes"));
    let bytes = last.checked_shr(8 * (at - last_start) as u32).unwrap_or(0);
    (bytes as u64, (bytes >> 64) as u64)
}

/// Returns whether the 16 bytes `low` then `high` start with the piece `segment` (at most 16
/// bytes).
#[inline(always)]
fn matches(segment: &Segment, (low, high): (u64, u64)) -> bool {
    let first = (low ^ segment.words[0]) & segment.masks[0];
    let second = (high ^ segment.words[1]) & segment.masks[1];
    first | second == 0
}

/// Reads a JSON integer of 1 to 15 digits without a sign at the start of the 16 bytes `low`
/// then `high`, and returns its number of digits and its value. Returns `None` for anything
/// else.
///
/// A fraction or an exponent after the digits is left to the next piece of the layout, which
/// starts with whitespace, `,` or `}` and so does not match it.
#[inline(always)]
fn read_integer(low: u64, high: u64) -> Option<(usize, u64)> {
    // JSON allows no leading zero, so a number that starts with 0 is the 0 alone.
    let leading_zero = low as u8 == b'0';
    let count = digits::digit_run(low);
    if count < 8 {
        // Under 8 digits: the second word is not needed.
        if count == 0 || (count > 1 && leading_zero) {
            return None;
        }
        return Some((count, digits::leading_digits_value(low, count)));
    }
    let count = 8 + digits::digit_run(high);
    if count == 16 || leading_zero {
        return None;
    }
    Some((count, digits::sixteen_digits_value(low, high, count)))
}

impl KnownNames {
    /// Reads a string of up to 14 bytes at `at` of `line` that is a behaviour name, and
    /// returns its length without the quotes and the behaviour. `low` and `high` are the 16
    /// bytes at `at`.
    #[inline(always)]
    fn read(&mut self, line: &[u8], at: usize, low: u64, high: u64) -> Option<(usize, Behavior)> {
        let bytes = u128::from(high) << 64 | u128::from(low);
        for known in &self.names {
            if bytes & known.mask == known.string {
                return Some((known.length, known.behavior));
            }
        }
        self.read_new(line, at, bytes)
    }

    /// Reads a name that is not among the known names, as [`KnownNames::read`] does, and
    /// stores it, replacing the entries in turn once [`KNOWN_NAMES`] are stored.
    #[cold]
    fn read_new(&mut self, line: &[u8], at: usize, bytes: u128) -> Option<(usize, Behavior)> {
        let quotes = digits::byte_bits(bytes as u64, b'"')
            | digits::byte_bits((bytes >> 64) as u64, b'"') << 8;
        if quotes & 1 == 0 {
            return None;
        }
        // A name that matches has no escape, so the next quote closes the string.
        let length = (quotes >> 1 | 1 << 15).trailing_zeros() as usize;
        if length == 15 {
            return None;
        }
        let behavior = Behavior::parse_bytes(&line[at + 1..at + 1 + length])?;
        // The string with its quotes is 2 to 16 bytes long.
        let mask = u128::MAX >> (8 * (14 - length));
        let known = KnownName {
            string: bytes & mask,
            mask,
            length,
            behavior,
        };
        if self.names.len() < KNOWN_NAMES {
            self.names.push(known);
        } else {
            self.names[self.next] = known;
            self.next = (self.next + 1) % KNOWN_NAMES;
        }
        Some((length, behavior))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use veer_models::{Event, Id};

    use super::*;
    use crate::sources::flat_json::FlatParser;
    use crate::sources::jsonl::JsonlParser;
    use crate::sources::{LineParser, Parsed};

    /// Returns a line of the generated streams' layout with the given values, written as JSON.
    fn usual(user: &str, item: &str, behavior: &str, ts: &str) -> String {
        format!(
            r#"{{"user":{user},"item":{item},"category":4434995,"behavior":{behavior},"ts":{ts}}}"#
        )
    }

    /// Returns a flat reader that has read `first`, and so stores the layout of `first`.
    fn reader_after(first: &str) -> FlatParser {
        let mut reader = FlatParser::default();
        assert!(reader.parse(first.as_bytes(), 1).is_some(), "{first}");
        reader
    }

    /// Returns the event of the serde_json reader, the reference for every faster path.
    fn full_reader(line: &str) -> Parsed {
        JsonlParser::new().parse_full(2, line.as_bytes())
    }

    #[test]
    fn usual_lines_read_by_plain_layout() {
        let first = usual("1", "2", "\"view\"", "1511539241");
        let mut reader = reader_after(&first);
        let next = usual("915564", "1750863839", "\"cart\"", "1511539242");
        let row = reader
            .plain
            .read(next.as_bytes())
            .expect("the layout is plain");
        let event = row.into_event(2);
        assert_eq!(Parsed::Event(event.clone()), full_reader(&next));
        assert_eq!(event.user, Id::int(915_564));
        assert_eq!(event.item, Id::int(1_750_863_839));
        assert_eq!(event.category, Id::int(4_434_995));
        assert_eq!(event.behavior, Behavior::Cart);
        assert_eq!(event.ts_ms, 1_511_539_242_000);
    }

    #[test]
    fn other_layouts_not_plain() {
        let long_piece = format!(
            r#"{{"user":1,"item":2,"category":3,"behavior":"view",{}"ts":4}}"#,
            " ".repeat(12)
        );
        for first in [
            // A sixth field, a missing item, a repeated key, and a piece of 18 bytes.
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":4,"price":5}"#,
            r#"{"user":1,"category":3,"behavior":"view","ts":4}"#,
            r#"{"user":1,"user":1,"category":3,"behavior":"view","ts":4}"#,
            long_piece.as_str(),
        ] {
            let mut reader = FlatParser::default();
            reader.parse(first.as_bytes(), 1);
            assert!(reader.plain.read(first.as_bytes()).is_none(), "{first}");
        }
    }

    #[test]
    fn values_outside_plain_left_to_layout_reader() {
        let first = usual("1", "2", "\"view\"", "1511539241");
        let declined = [
            usual("1234567890123456", "2", "\"view\"", "1"),
            usual("1", "1234567890123456789", "\"view\"", "1"),
            usual("01", "2", "\"view\"", "1"),
            usual("00", "2", "\"view\"", "1"),
            usual("-1", "2", "\"view\"", "1"),
            usual("-0", "2", "\"view\"", "1"),
            usual("1.5", "2", "\"view\"", "1"),
            usual("1e3", "2", "\"view\"", "1"),
            usual("1E3", "2", "\"view\"", "1"),
            usual("\"7\"", "2", "\"view\"", "1"),
            usual("null", "null", "\"view\"", "1"),
            usual("1", "2", "\"remove_from_cart\"", "1"),
            usual("1", "2", "\"View\"", "1"),
            usual("1", "2", "\"\"", "1"),
            usual("1", "2", "\"vi\\\"ew\"", "1"),
            usual("1", "2", "\"view\"", "1511539241000000"),
            usual("1", "2", "\"view\"", "10000000000000"),
            usual("1", "2", "7", "1"),
            usual("1", "2", "\"view\"", "\"1511539241\""),
            usual("1", "2", "\"view\"", "1511539241 "),
            usual("1", "2", "\"view\"", "1511539241\r"),
            format!("{} ", usual("1", "2", "\"view\"", "1")),
            format!(" {}", usual("1", "2", "\"view\"", "1")),
            usual("1", "2", "\"view\"", "1").replace('}', ""),
            format!("{}}}", usual("1", "2", "\"view\"", "1")),
            format!(
                r#"{{"user":1,"item":2,"category":3,"behavior":"view","ts":1{}}}"#,
                " ".repeat(240)
            ),
        ];
        for next in declined {
            let mut reader = reader_after(&first);
            assert!(reader.plain.read(next.as_bytes()).is_none(), "{next}");
            let mut parser = JsonlParser::new();
            parser.parse(1, first.as_bytes());
            assert_eq!(
                parser.parse(2, next.as_bytes()),
                full_reader(&next),
                "{next}"
            );
        }
    }

    #[test]
    fn load_pair_zero_past_end() {
        let line: Vec<u8> = (1..=40).collect();
        for length in MIN_LINE_BYTES..=line.len() {
            let line = &line[..length];
            for at in 0..=length {
                let mut expected = [0u8; 16];
                let available = (length - at).min(16);
                expected[..available].copy_from_slice(&line[at..at + available]);
                let (low, high) = load_pair(line, at);
                assert_eq!(low.to_le_bytes(), expected[..8], "length {length}, at {at}");
                assert_eq!(
                    high.to_le_bytes(),
                    expected[8..],
                    "length {length}, at {at}"
                );
            }
        }
    }

    #[test]
    fn known_names_match_exact_strings() {
        let first = usual("1", "2", "\"view\"", "1511539241");
        let mut reader = reader_after(&first);
        // More valid names than `KnownNames` keeps, each followed by strings that share its
        // bytes but not its length, and repeats after entries were replaced.
        let names = [
            "view",
            "vie",
            "views",
            "buy",
            "bu",
            "buyy",
            "pv",
            "p",
            "cart",
            "fav",
            "like",
            "order",
            "search",
            "view",
            "buy",
            "detail",
            "click",
            "pv",
            "favorite",
            "purchase",
            "addtocart",
            "add_to_cart",
            "transaction",
            "transactions",
            "cart",
            "fav",
            "v\0",
            "buy\0",
            "b\0y",
        ];
        for name in names {
            let next = usual("3", "4", &format!("\"{name}\""), "1511539242");
            let plain = reader.plain.read(next.as_bytes());
            let expected = full_reader(&next);
            match plain {
                Some(row) => assert_eq!(Parsed::Event(row.into_event(2)), expected, "{name:?}"),
                None => assert!(!matches!(expected, Parsed::Event(_)), "{name:?}"),
            }
        }
    }

    #[test]
    fn edge_values_match_full_reader() {
        let first = usual("1", "2", "\"view\"", "1511539241");
        let accepted = [
            usual("0", "0", "\"view\"", "0"),
            usual("123456789012345", "999999999999999", "\"buy\"", "1"),
            usual("12345678", "123456789", "\"pv\"", "999999999999"),
            usual("1", "2", "\"add_to_cart\"", "1000000000000"),
            usual("1", "2", "\"transaction\"", "9999999999999"),
            usual("1", "2", "\"search\"", "1511539241123"),
        ];
        for next in accepted {
            let mut reader = reader_after(&first);
            let row = reader.plain.read(next.as_bytes());
            let event = row.map(|row| row.into_event(2)).expect("plain values");
            assert_eq!(Parsed::Event(event), full_reader(&next), "{next}");
        }
    }

    /// Returns a strategy for the text of an id or `ts`: mostly plain, with values that the
    /// plain reader leaves to the layout reader.
    fn integer_value() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => (0u64..10_000_000_000).prop_map(|number| number.to_string()),
            2 => "[1-9][0-9]{10,19}",
            1 => "0[0-9]{1,3}",
            1 => "-[0-9]{1,3}",
            1 => "[0-9]{1,3}(\\.[0-9]|e3|E3)",
            1 => "\"[a-z0-9_]{0,17}\"",
            1 => Just("null".to_string()),
        ]
    }

    /// Returns a strategy for the text of a behaviour: mostly names, some of them over 14
    /// bytes or unknown, and other values.
    fn behavior_value() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec![
                "\"view\"", "\"pv\"", "\"cart\"", "\"fav\"", "\"buy\"", "\"search\"",
                "\"remove_from_cart\"", "\"add_to_cart\"", "\"View\"", "\"vi\\\"ew\"",
                "\"\"",
            ])
            .prop_map(str::to_string),
            1 => integer_value(),
        ]
    }

    /// Returns a strategy for two lines of one layout of the five required fields, in any
    /// order and spacing. The first line has plain values and the second any values.
    fn line_pair() -> impl Strategy<Value = (String, String)> {
        let keys = Just(vec!["user", "item", "category", "behavior", "ts"]).prop_shuffle();
        let spaces = prop::collection::vec(prop::sample::select(vec!["", " ", "\t"]), 5);
        let integers = prop::collection::vec(integer_value(), 4);
        let end = prop::sample::select(vec!["", " ", "\r", "  \r"]);
        (keys, spaces, integers, behavior_value(), end).prop_map(
            |(keys, spaces, integers, behavior, end)| {
                let line = |values: &[String]| {
                    let pairs: Vec<String> = keys
                        .iter()
                        .zip(&spaces)
                        .zip(values)
                        .map(|((key, space), value)| format!("\"{key}\":{space}{value}"))
                        .collect();
                    format!("{{{}}}{end}", pairs.join(","))
                };
                let mut integers = integers.into_iter();
                let (plain, values): (Vec<String>, Vec<String>) = keys
                    .iter()
                    .map(|&key| match key {
                        "behavior" => ("\"view\"".to_string(), behavior.clone()),
                        _ => ("7".to_string(), integers.next().expect("four integers")),
                    })
                    .unzip();
                (line(&plain), line(&values))
            },
        )
    }

    #[test]
    fn generated_pairs_often_plain() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let mut runner = TestRunner::deterministic();
        let strategy = line_pair();
        let plain = (0..2000)
            .filter(|_| {
                let (first, second) = strategy.new_tree(&mut runner).unwrap().current();
                reader_after(&first).plain.read(second.as_bytes()).is_some()
            })
            .count();
        assert!(plain >= 200, "only {plain} of 2000 second lines were plain");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn plain_layout_agrees_with_full_reader((first, second) in line_pair()) {
            let mut reader = reader_after(&first);
            if let Some(row) = reader.plain.read(second.as_bytes()) {
                let event: Event = row.into_event(2);
                prop_assert_eq!(Parsed::Event(event), full_reader(&second), "{} after {}", second, first);
            }
            let mut parser = JsonlParser::new();
            parser.parse(1, first.as_bytes());
            prop_assert_eq!(parser.parse(2, second.as_bytes()), full_reader(&second));
        }
    }
}
