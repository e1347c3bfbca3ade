//! A fast path for the usual shape of a JSON-lines event: one flat object whose values are
//! plain strings, integers or `null`.
//!
//! serde_json, with the `arbitrary_precision` feature veer needs for exact wide ids, builds
//! a `Value` and allocates a `String` for every field, which made it about 4% of the line
//! scan. A general JSON parser must handle every shape, so this small scanner is written
//! here instead. It accepts only the flat subset and builds the event straight from borrowed
//! bytes. Every other line (escapes, fractions, nested values, duplicate keys, invalid
//! values) gets `None` and goes to the serde_json reader. So both paths give the same event
//! for every line the scanner accepts, and every error comes from serde_json.

use veer_models::{Behavior, Event, Id};

use super::digits;
use super::row::push_in_place;
use super::time;

mod plain_layout;

/// A value of the flat subset, borrowed from the line.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    /// A string without escapes or control characters.
    Text(&'a str),
    /// An integer as written (an optional minus sign and digits without leading zeros), and
    /// its value when it is not negative and has at most 19 digits.
    Integer(&'a [u8], Option<u64>),
    Null,
}

/// The keys of the fields an event uses, in the order of [`Field`].
const FIELD_NAMES: [&[u8]; 9] = [
    b"user",
    b"item",
    b"category",
    b"behavior",
    b"ts",
    b"price",
    b"brand",
    b"dwell_ms",
    b"session",
];

/// A field an event uses, numbered as in [`FIELD_NAMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    User,
    Item,
    Category,
    Behavior,
    Ts,
    Price,
    Brand,
    DwellMs,
    Session,
}

impl Field {
    const ALL: [Field; 9] = [
        Field::User,
        Field::Item,
        Field::Category,
        Field::Behavior,
        Field::Ts,
        Field::Price,
        Field::Brand,
        Field::DwellMs,
        Field::Session,
    ];

    /// Returns the field of a key, or `None` for a key that events do not use.
    fn of_key(key: &[u8]) -> Option<Field> {
        let index = FIELD_NAMES.iter().position(|name| *name == key)?;
        Some(Field::ALL[index])
    }
}

/// The fields of one line, each converted as the full reader converts it when it is read.
#[derive(Default)]
struct EventFields {
    /// Bit `field as u16` is set once the field was read, null or not.
    seen: u16,
    user: Option<Id>,
    item: Option<Id>,
    category: Option<Id>,
    behavior: Option<Behavior>,
    ts_ms: Option<i64>,
    price: Option<f64>,
    brand: Option<Id>,
    dwell_ms: Option<u64>,
    session: Option<Box<str>>,
}

impl EventFields {
    /// Stores `value` as `field`. Returns `None` for a repeated field and for a value that
    /// needs the full reader's checks and messages.
    #[inline(always)]
    fn set(&mut self, field: Field, value: Scalar) -> Option<()> {
        let bit = 1 << field as u16;
        if self.seen & bit != 0 {
            return None;
        }
        self.seen |= bit;
        match (field, value) {
            (Field::User, value) => self.user = Some(id(value)?),
            (Field::Category, value) => self.category = Some(id(value)?),
            (Field::Ts, value) => self.ts_ms = Some(timestamp(value)?),
            (Field::Behavior, Scalar::Text(name)) => self.behavior = Some(Behavior::parse(name)?),
            (Field::Behavior, _) => return None,
            // The item, and every optional field, may be null, which is the same as absent.
            (_, Scalar::Null) => {}
            (Field::Item, value) => self.item = Some(id(value)?),
            (Field::Brand, value) => self.brand = Some(id(value)?),
            (Field::Price, Scalar::Integer(digits, _)) => {
                self.price = Some(finite(ascii(digits)?)?)
            }
            (Field::Price, Scalar::Text(text)) => self.price = Some(finite(text.trim())?),
            (Field::DwellMs, Scalar::Integer(digits, _)) => {
                self.dwell_ms = Some(ascii(digits)?.parse().ok()?)
            }
            (Field::DwellMs, Scalar::Text(text)) => self.dwell_ms = Some(text.parse().ok()?),
            (Field::Session, Scalar::Integer(digits, _)) => {
                self.session = Some(ascii(digits)?.into())
            }
            (Field::Session, Scalar::Text(text)) => self.session = Some(text.into()),
        }
        Some(())
    }

    /// Returns the event, or `None` when a required field is missing. An absent or null item
    /// is an empty text id, as in the full reader.
    #[inline(always)]
    fn into_event(self, line_no: u64) -> Option<Event> {
        Some(Event {
            ts_ms: self.ts_ms?,
            user: self.user?,
            category: self.category?,
            item: self.item.unwrap_or_else(|| Id::text("")),
            behavior: self.behavior?,
            topic: None,
            price: self.price,
            brand: self.brand,
            dwell_ms: self.dwell_ms,
            session: self.session,
            line: line_no,
        })
    }
}

/// A reader of the flat subset that remembers the layout of the last flat line it read.
#[derive(Debug, Default)]
pub(crate) struct FlatParser {
    layout: Layout,
    /// The layout again, prepared for lines of the five required fields with plain values.
    plain: plain_layout::PlainLayout,
}

/// The bytes of a flat line outside its values, and the field of each value.
///
/// The lines of one producer usually repeat the same keys in the same order with the same
/// spacing. A line that has the same bytes between its values is then read by comparing those
/// bytes and reading the values alone. Its values and fields are those that tokenizing it
/// would give: every value ends at its own last byte, and the next byte in both lines is the
/// same space, comma or closing brace.
#[derive(Debug, Default)]
struct Layout {
    /// The line without its values: the text before each value, then the text after the last.
    text: Vec<u8>,
    /// For each value, the end in `text` of the text before it, and its field, or `None` for
    /// a key that events do not use.
    values: Vec<(usize, Option<Field>)>,
    /// The text before each value, in the order of `values`, then the text after the last
    /// value, prepared for comparing. Empty until `text` and `values` describe a line that was
    /// read to its end.
    segments: Vec<Segment>,
}

/// A piece of a layout's text, with its first 16 bytes kept as two words so that it is
/// compared with two word loads instead of a `memcmp` call.
#[derive(Clone, Copy, Debug)]
struct Segment {
    /// Start of the piece in [`Layout::text`].
    start: usize,
    /// Length of the piece in bytes.
    length: usize,
    /// The first 16 bytes of the piece as little-endian words, zero past its end.
    words: [u64; 2],
    /// Masks of the bytes of `words` that belong to the piece.
    masks: [u64; 2],
    /// The field of the value after the piece, or `None` for an unused key and for the text
    /// after the last value.
    field: Option<Field>,
}

impl Segment {
    fn new(text: &[u8], start: usize, end: usize, field: Option<Field>) -> Segment {
        let piece = &text[start..end];
        let mut bytes = [0u8; 16];
        let mut mask_bytes = [0u8; 16];
        let prefix = piece.len().min(16);
        bytes[..prefix].copy_from_slice(&piece[..prefix]);
        mask_bytes[..prefix].fill(0xFF);
        let word = |bytes: &[u8; 16], index: usize| {
            u64::from_le_bytes(bytes[8 * index..8 * index + 8].try_into().expect("8 bytes"))
        };
        Segment {
            start,
            length: piece.len(),
            words: [word(&bytes, 0), word(&bytes, 1)],
            masks: [word(&mask_bytes, 0), word(&mask_bytes, 1)],
            field,
        }
    }

    /// Returns whether `line` contains the piece at `at`.
    #[inline(always)]
    fn matches(&self, text: &[u8], line: &[u8], at: usize) -> bool {
        if self.length > 16 {
            return line.get(at..at + self.length) == Some(&text[self.start..][..self.length]);
        }
        // Bytes past the end of the line load as zero. A layout's text is JSON punctuation,
        // whitespace and keys without control characters, so it has no zero byte, and a
        // line that ends inside the piece does not match.
        let first = (digits::load_word(line, at) ^ self.words[0]) & self.masks[0];
        let second = (digits::load_word(line, at + 8) ^ self.words[1]) & self.masks[1];
        first | second == 0
    }
}

impl FlatParser {
    /// Returns the event of a flat JSON object line, or `None` when the line is outside the
    /// subset or its values need the full reader's checks and messages.
    #[inline]
    pub(crate) fn parse(&mut self, line: &[u8], line_no: u64) -> Option<Event> {
        if let Some(row) = self.plain.read(line) {
            return Some(row.into_event(line_no));
        }
        let mut fields = EventFields::default();
        self.read_fields(line, &mut fields)?;
        fields.into_event(line_no)
    }

    /// Pushes the event of a flat JSON object line onto `events` and returns `true`, or
    /// returns `false` and leaves `events` unchanged where [`FlatParser::parse`] returns `None`.
    #[inline]
    pub(crate) fn parse_into(
        &mut self,
        line: &[u8],
        line_no: u64,
        events: &mut Vec<Event>,
    ) -> bool {
        if let Some(row) = self.plain.read(line) {
            row.push_into(line_no, events);
            return true;
        }
        let mut fields = EventFields::default();
        if self.read_fields(line, &mut fields).is_none() {
            return false;
        }
        push_in_place(events, || fields.into_event(line_no))
    }

    /// Reads the fields of a line into `fields`, which must be empty. Returns `None` where
    /// [`FlatParser::parse`] does.
    #[inline(always)]
    fn read_fields(&mut self, line: &[u8], fields: &mut EventFields) -> Option<()> {
        // The fields are filled in place: moving them (about 150 bytes) took a `memcpy` call.
        match self.layout.read_values(line, fields) {
            Lookup::Fields => Some(()),
            Lookup::Invalid => None,
            Lookup::Other => {
                *fields = EventFields::default();
                let read = scan_object(line, &mut self.layout, fields);
                self.plain.update(&self.layout);
                read
            }
        }
    }
}

/// The outcome of reading one value of a line with a known layout.
enum Read {
    /// The value was stored in the line's fields.
    Stored,
    /// The value is outside the subset, needs the full reader, or repeats its field.
    Invalid,
    /// The value is not a scalar of the subset, so the line may have another layout.
    Other,
}

/// The outcome of reading a line with a known layout.
enum Lookup {
    /// The line has the layout, and its fields were read.
    Fields,
    /// The line has the layout, but a value is outside the subset or needs the full reader.
    Invalid,
    /// The line has another layout, or none is known.
    Other,
}

impl Layout {
    /// Reads the values of `line` into `fields` if the line has this layout.
    #[inline]
    fn read_values(&self, line: &[u8], fields: &mut EventFields) -> Lookup {
        let Some((tail, pieces)) = self.segments.split_last() else {
            return Lookup::Other;
        };
        let mut scanner = Scanner { bytes: line, at: 0 };
        for segment in pieces {
            if !segment.matches(&self.text, line, scanner.at) {
                return Lookup::Other;
            }
            scanner.at += segment.length;
            let Some(field) = segment.field else {
                if scanner.scalar().is_none() {
                    return Lookup::Other;
                }
                continue;
            };
            match scanner.read_field(field, fields) {
                Read::Stored => {}
                Read::Invalid => return Lookup::Invalid,
                Read::Other => return Lookup::Other,
            }
        }
        if line.len() - scanner.at != tail.length || !tail.matches(&self.text, line, scanner.at) {
            return Lookup::Other;
        }
        Lookup::Fields
    }

    /// Prepares the pieces of text of a line that was read to its end, for comparing.
    fn finish(&mut self) {
        self.segments.clear();
        let mut start = 0;
        for &(end, field) in &self.values {
            self.segments
                .push(Segment::new(&self.text, start, end, field));
            start = end;
        }
        self.segments
            .push(Segment::new(&self.text, start, self.text.len(), None));
    }

    fn clear(&mut self) {
        self.text.clear();
        self.values.clear();
        self.segments.clear();
    }
}

/// Tokenizes a flat object line, converting its fields, and records its layout in `layout`.
/// Returns `None` for a line outside the subset, and leaves `layout` incomplete then. A line
/// whose value needs the full reader also returns `None`, but its layout is still recorded.
fn scan_object(line: &[u8], layout: &mut Layout, fields: &mut EventFields) -> Option<()> {
    layout.clear();
    let mut scanner = Scanner { bytes: line, at: 0 };
    let mut valid = true;
    // End of the last value read, where the text before the next value starts.
    let mut text_start = 0;
    scanner.skip_space();
    scanner.expect(b'{')?;
    scanner.skip_space();
    if scanner.peek() == Some(b'}') {
        scanner.at += 1;
    } else {
        loop {
            scanner.skip_space();
            let key = scanner.raw_text()?;
            scanner.skip_space();
            scanner.expect(b':')?;
            scanner.skip_space();
            let value_start = scanner.at;
            let value = scanner.scalar()?;
            let field = Field::of_key(key);
            match field {
                Some(field) => valid &= fields.set(field, value).is_some(),
                None => {
                    std::str::from_utf8(key).ok()?;
                }
            }
            layout
                .text
                .extend_from_slice(&line[text_start..value_start]);
            layout.values.push((layout.text.len(), field));
            text_start = scanner.at;
            scanner.skip_space();
            match scanner.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    scanner.skip_space();
    if scanner.at != line.len() {
        return None;
    }
    layout.text.extend_from_slice(&line[text_start..]);
    layout.finish();
    valid.then_some(())
}

/// Returns the id of a value as the full reader builds it: an integer of at most 38 digits as
/// a number, a negative integer and any non-empty string as text. A longer integer returns
/// `None`, so that the full reader rejects it.
fn id(value: Scalar) -> Option<Id> {
    match value {
        Scalar::Integer(_, Some(value)) => Some(Id::from(value)),
        Scalar::Integer(digits, None) => {
            let text = ascii(digits)?;
            match Id::parse_int(text) {
                Some(value) => Some(Id::int(value)),
                None if text.starts_with('-') => Some(Id::text(text)),
                None => None,
            }
        }
        Scalar::Text(text) if !text.is_empty() => Some(Id::text(text)),
        _ => None,
    }
}

/// Returns the time in Unix milliseconds of a `ts` value, read as the full reader does.
fn timestamp(value: Scalar) -> Option<i64> {
    match value {
        Scalar::Integer(_, Some(value)) => time::epoch_millis(u128::from(value)).ok(),
        Scalar::Integer(digits, None) => time::parse_epoch(digits).ok(),
        Scalar::Text(text) => {
            let bytes = text.as_bytes();
            if bytes.len() >= 10 && bytes[4] == b'-' {
                time::parse_rfc3339(bytes).ok()
            } else {
                time::parse_epoch(bytes).ok()
            }
        }
        Scalar::Null => None,
    }
}

/// Returns the text of an integer's bytes, which are ASCII digits and a minus sign.
fn ascii(digits: &[u8]) -> Option<&str> {
    std::str::from_utf8(digits).ok()
}

fn finite(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|value| value.is_finite())
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// Skips JSON whitespace: space, tab, line feed and carriage return.
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Reads the bytes of a string without escapes or control characters.
    #[inline]
    fn raw_text(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
        Some(&self.bytes[start..self.at - 1])
    }

    /// Reads a string without escapes or control characters, in valid UTF-8.
    #[inline]
    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_text()?).ok()
    }

    #[inline(always)]
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.text().map(Scalar::Text),
            b'n' => {
                let rest = self.bytes.get(self.at..self.at + 4)?;
                self.at += 4;
                (rest == b"null").then_some(Scalar::Null)
            }
            b'-' | b'0'..=b'9' => self.integer(),
            _ => None,
        }
    }

    /// Reads the value of `field` into `fields`. The usual values, a non-negative integer of
    /// at most 19 digits for an id or `ts` and a behaviour name, are read without building a
    /// [`Scalar`]. Others go through [`Scanner::scalar`] and [`EventFields::set`].
    #[inline(always)]
    fn read_field(&mut self, field: Field, fields: &mut EventFields) -> Read {
        let bit = 1 << field as u16;
        if fields.seen & bit == 0 {
            match field {
                Field::User | Field::Item | Field::Category | Field::Ts => {
                    if let Some(value) = self.plain_integer() {
                        fields.seen |= bit;
                        match field {
                            Field::User => fields.user = Some(Id::from(value)),
                            Field::Item => fields.item = Some(Id::from(value)),
                            Field::Category => fields.category = Some(Id::from(value)),
                            _ => match time::epoch_millis(u128::from(value)) {
                                Ok(ts_ms) => fields.ts_ms = Some(ts_ms),
                                Err(_) => return Read::Invalid,
                            },
                        }
                        return Read::Stored;
                    }
                }
                Field::Behavior => {
                    if let Some(behavior) = self.behavior_name() {
                        fields.seen |= bit;
                        fields.behavior = Some(behavior);
                        return Read::Stored;
                    }
                }
                _ => {}
            }
        }
        let Some(value) = self.scalar() else {
            return Read::Other;
        };
        match fields.set(field, value) {
            Some(()) => Read::Stored,
            None => Read::Invalid,
        }
    }

    /// Reads a non-negative integer of 1 to 19 digits without a fraction or an exponent, and
    /// moves past it. Returns `None`, without moving, for any other value.
    #[inline(always)]
    fn plain_integer(&mut self) -> Option<u64> {
        let (count, value) = digits::read_run(self.bytes, self.at);
        // JSON allows no leading zero, so a number that starts with 0 is the 0 alone.
        if count == 0 || count > 19 || (count > 1 && self.bytes[self.at] == b'0') {
            return None;
        }
        if matches!(self.bytes.get(self.at + count), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at += count;
        Some(value)
    }

    /// Reads a string that is one of the behaviour names and moves past it. Returns `None`,
    /// without moving, for any other value.
    #[inline(always)]
    fn behavior_name(&mut self) -> Option<Behavior> {
        /// Length of the longest behaviour name, `remove_from_cart`.
        const MAX_NAME: usize = 16;
        let rest = self.bytes.get(self.at..)?;
        if rest.first() != Some(&b'"') {
            return None;
        }
        let window = &rest[1..rest.len().min(MAX_NAME + 2)];
        let length = window.iter().position(|&byte| byte == b'"')?;
        // A name that matches has no escape or control character, so the quote found is the
        // closing one, and the string is valid UTF-8 because the names are ASCII.
        let behavior = Behavior::parse_bytes(&window[..length])?;
        self.at += length + 2;
        Some(behavior)
    }

    /// Reads an integer; a fraction or an exponent is left to the full reader.
    #[inline(always)]
    fn integer(&mut self) -> Option<Scalar<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let (count, value) = digits::read_digits(self.bytes, self.at);
        // JSON allows no leading zero, so a number that starts with 0 is the 0 alone.
        if count == 0 || (count > 1 && self.bytes[self.at] == b'0') {
            return None;
        }
        self.at += count;
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        // The value wraps from the 20th digit on, so longer numbers keep only their text.
        let value = (!negative && count <= 19).then_some(value);
        Some(Scalar::Integer(&self.bytes[start..self.at], value))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sources::jsonl::JsonlParser;
    use crate::sources::{LineParser, Parsed};

    /// Returns the full reader's event for a line, skipping the fast path.
    fn full_reader(line: &str) -> Option<Event> {
        match JsonlParser::new().parse_full(5, line.as_bytes()) {
            Parsed::Event(event) => Some(event),
            _ => None,
        }
    }

    /// Reads a line with a new parser, which tokenizes it.
    fn parse_flat(line: &[u8], line_no: u64) -> Option<Event> {
        FlatParser::default().parse(line, line_no)
    }

    /// Returns a line of the usual layout with the given values, written as JSON.
    fn usual(user: &str, item: &str, behavior: &str, ts: &str) -> String {
        format!(
            r#"{{"user":{user},"item":{item},"category":4434995,"behavior":{behavior},"ts":{ts}}}"#
        )
    }

    #[test]
    fn usual_line_matches_full_reader() {
        let line = r#"{"user":915564,"item":1750863839,"category":4434995,"behavior":"view","ts":1511539241}"#;
        let event =
            parse_flat(line.as_bytes(), 5).expect("the line is flat, so the fast path accepts it");
        assert_eq!(Some(event.clone()), full_reader(line));
        assert_eq!(event.user, Id::int(915_564));
        assert_eq!(event.ts_ms, 1_511_539_241_000);

        let wide = usual(
            "1234567890123456789",
            "12345678901234567890",
            "\"buy\"",
            "0",
        );
        let event = parse_flat(wide.as_bytes(), 5).expect("19 and 20 digits are flat values");
        assert_eq!(Some(event.clone()), full_reader(&wide));
        assert_eq!(event.user, Id::int(1_234_567_890_123_456_789));
        assert_eq!(event.item, Id::int(12_345_678_901_234_567_890));
        assert_eq!(event.ts_ms, 0);
    }

    #[test]
    fn other_shapes_left_to_full_reader() {
        for line in [
            r#"{"user":1,"category":2,"behavior":"view","ts":1511539241.5}"#,
            r#"{"user":"a\"b","category":2,"behavior":"view","ts":1511539241}"#,
            r#"{"user":1,"user":2,"category":2,"behavior":"view","ts":1511539241}"#,
            r#"{"user":1,"category":2,"behavior":"view","ts":1511539241,"query":{"q":1}}"#,
            r#"{"user":1,"category":2,"behavior":"view","ts":1511539241} x"#,
            r#"{"user":"","category":2,"behavior":"view","ts":1511539241}"#,
            r#"{"user":1,"category":2,"behavior":"jump","ts":1511539241}"#,
            r#"{"user":01,"category":2,"behavior":"view","ts":1511539241}"#,
            r#"{"user":1,"category":2,"behavior":"view","ts":true}"#,
            r#"{"user":1,"category":2,"behavior":"view"}"#,
        ] {
            assert!(parse_flat(line.as_bytes(), 5).is_none(), "{line}");
        }
    }

    #[test]
    fn repeated_layout_skips_tokenizing() {
        let mut parser = FlatParser::default();
        let first = usual("915564", "1750863839", "\"view\"", "1511539241");
        assert!(parser.parse(first.as_bytes(), 1).is_some());
        let next = usual("\"u-7\"", "null", "\"buy\"", "\"2017-11-25T08:00:00Z\"");
        assert!(
            matches!(
                parser
                    .layout
                    .read_values(next.as_bytes(), &mut EventFields::default()),
                Lookup::Fields
            ),
            "{next} has the layout of {first}"
        );
        let event = parser.parse(next.as_bytes(), 5).unwrap();
        assert_eq!(Some(event.clone()), full_reader(&next));
        assert_eq!(event.user, Id::text("u-7"));
        assert_eq!(event.item, Id::text(""));
        assert_eq!(event.behavior, Behavior::Buy);
        assert_eq!(event.line, 5);
    }

    #[test]
    fn lines_after_a_layout_match_full_reader() {
        let first = usual("1", "2", "\"view\"", "1511539241");
        let big = "340282366920938463463374607431768211456";
        let next_lines = [
            // Same layout, values of other types or outside the subset.
            usual("-3", "2", "\"view\"", "1511539241"),
            usual("-0", "2", "\"view\"", "1511539241"),
            usual("007", "2", "\"view\"", "1511539241"),
            usual("1e3", "2", "\"view\"", "1511539241"),
            usual("1.5", "2", "\"view\"", "1511539241"),
            usual("1", "2", "\"view\"", "1511539241.5"),
            usual("1", "2", "\"view\"", "-1511539241"),
            usual("1", "2", "\"view\"", "15115392410000000000000"),
            usual("1", "2", "\"view\"", "1511539241123"),
            usual("1", "2", "\"view\"", "1511539241000000"),
            usual("1", "2", "\"view\"", "\"1511539241000000\""),
            usual(big, "18446744073709551616", "\"view\"", "1"),
            usual("9999999999999999999", "2", "\"view\"", "1"),
            usual(
                "1234567890123456789",
                "12345678901234567890",
                "\"view\"",
                "1",
            ),
            usual(
                "-1234567890123456789",
                "-12345678901234567890",
                "\"view\"",
                "1",
            ),
            usual("0", "00", "\"view\"", "1"),
            usual("1", "-01", "\"view\"", "1"),
            usual("-", "2", "\"view\"", "1"),
            usual("1", "-x", "\"view\"", "1"),
            usual("1", "2", "\"view\"", "1511539241\r"),
            usual("1", "2", "\"view\"", "15115392411511539241"),
            usual("\"caf\u{e9}\"", "\"\u{1F600}\"", "\"view\"", "1"),
            usual("\"a\\u0041\"", "2", "\"view\"", "1"),
            usual("\"a\\\"b\"", "2", "\"view\"", "1"),
            usual("\"\"", "2", "\"view\"", "1"),
            usual("null", "2", "\"view\"", "1"),
            usual("nul", "2", "\"view\"", "1"),
            usual("true", "2", "\"view\"", "1"),
            usual("[1]", "2", "\"view\"", "1"),
            usual("{}", "2", "\"view\"", "1"),
            usual("1", "2", "\"View\"", "1"),
            usual("1", "2", "7", "1"),
            usual("1", "2", "\"view\"", "\"yesterday\""),
            usual("1 ", "2", "\"view\"", "1"),
            usual(" 1", "2", "\"view\"", "1"),
            usual("1", "2", "\"view\"", "1 \r"),
            // Other layouts: spacing, key order, missing, extra and repeated fields.
            r#"{"user": 1,"item":2,"category":3,"behavior":"view","ts":1}"#.to_string(),
            r#"{"item":2,"user":1,"category":3,"behavior":"view","ts":1}"#.to_string(),
            r#"{"user":1,"category":3,"behavior":"view","ts":1}"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view"}"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1,"ts":2}"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1,"q":"x"}"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1} "#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1}}"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1,}"#.to_string(),
            r#"{"user":1,"item":2,"category":3,"behavior":"view","tz":1}"#.to_string(),
            r#"{}"#.to_string(),
            String::new(),
        ];
        for next in next_lines {
            let mut parser = JsonlParser::new();
            let first_parsed = parser.parse(1, first.as_bytes());
            assert!(matches!(first_parsed, Parsed::Event(_)), "{first}");
            let expected = match next.trim().is_empty() {
                true => Parsed::Skip,
                false => JsonlParser::new().parse_full(2, next.as_bytes()),
            };
            assert_eq!(parser.parse(2, next.as_bytes()), expected, "{next}");
        }
    }

    #[test]
    fn non_integer_ids_bad_on_both_paths() {
        let first = usual("1", "2", "\"view\"", "1511539241");
        for value in ["3.5", "3.0", "1e3", "-2.5E1"] {
            for line in [
                usual(value, "2", "\"view\"", "1511539241"),
                usual("1", value, "\"view\"", "1511539241"),
            ] {
                assert!(parse_flat(line.as_bytes(), 5).is_none(), "{line}");

                let mut parser = JsonlParser::new();
                assert!(matches!(
                    parser.parse(1, first.as_bytes()),
                    Parsed::Event(_)
                ));
                let parsed = parser.parse(2, line.as_bytes());
                assert_eq!(
                    parsed,
                    JsonlParser::new().parse_full(2, line.as_bytes()),
                    "{line}"
                );
                let Parsed::Bad(record) = parsed else {
                    panic!("{line} is not a bad record: {parsed:?}");
                };
                assert!(
                    record
                        .reason
                        .ends_with("is not an integer; ids are integers or strings"),
                    "{line}: {}",
                    record.reason
                );
            }
        }
    }

    /// Returns a strategy for the text of a JSON value: mostly the flat subset, with some
    /// values outside it.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u64..2_000_000_000).prop_map(|number| number.to_string()),
            1 => prop_oneof![
                Just("340282366920938463463374607431768211456"),
                Just("18446744073709551616"),
                Just("9999999999999999999"),
                Just("1511539241123"),
                Just("-0"),
            ]
            .prop_map(str::to_string),
            1 => (-5i64..5).prop_map(|number| number.to_string()),
            1 => Just("007".to_string()),
            1 => prop_oneof![
                Just("1.5e3"),
                Just("12.25"),
                Just("3.0"),
                Just("1e3"),
                Just("-3.5"),
                Just("-0.0"),
                Just("2E1"),
            ]
            .prop_map(str::to_string),
            1 => Just("null".to_string()),
            1 => Just("true".to_string()),
            1 => Just("[1]".to_string()),
            3 => "[a-z0-9 :.-]{0,12}".prop_map(|text| format!("\"{text}\"")),
            1 => Just("\"caf\u{e9}\"".to_string()),
            1 => Just("\"a\\u0041\"".to_string()),
            2 => prop_oneof![
                Just("\"view\""),
                Just("\"pv\""),
                Just("\"buy\""),
                Just("\"1511539241\""),
                Just("\"2017-11-25T08:00:00Z\""),
                Just("\"2017-11-25T08:00:00+08:00\""),
                Just("\"1511539241123\""),
            ]
            .prop_map(str::to_string),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(FIELD_NAMES.to_vec())
                .prop_map(|name| String::from_utf8(name.to_vec()).unwrap()),
            1 => Just("query".to_string()),
            1 => Just("User".to_string()),
        ]
    }

    /// Returns a strategy for a line of up to five key-value pairs, with optional spaces. Most
    /// lines start with valid required fields, so that many lines are events.
    fn line() -> impl Strategy<Value = String> {
        (
            prop::bool::weighted(0.8),
            prop::collection::vec((key(), value(), any::<bool>()), 0..6),
            any::<bool>(),
        )
            .prop_map(|(valid_start, pairs, trailing_space)| {
                let mut parts: Vec<String> = Vec::new();
                if valid_start {
                    parts.push(r#""user":7,"category":"c1","behavior":"cart""#.to_string());
                }
                let mut seen: Vec<String> = Vec::new();
                for (key, value, spaced) in pairs {
                    if valid_start && ["user", "category", "behavior"].contains(&key.as_str()) {
                        continue;
                    }
                    seen.push(key.clone());
                    let colon = if spaced { " : " } else { ":" };
                    parts.push(format!("\"{key}\"{colon}{value}"));
                }
                if valid_start && !seen.iter().any(|key| key == "ts") {
                    parts.push(r#""ts":1511539241"#.to_string());
                }
                let space = if trailing_space { " \r" } else { "" };
                format!("{{{}}}{space}", parts.join(","))
            })
    }

    #[test]
    fn generated_lines_often_take_fast_path() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let mut runner = TestRunner::deterministic();
        let strategy = line();
        let accepted = (0..2000)
            .filter(|_| {
                let line = strategy.new_tree(&mut runner).unwrap().current();
                parse_flat(line.as_bytes(), 5).is_some()
            })
            .count();
        assert!(
            accepted >= 500,
            "only {accepted} of 2000 lines were flat events"
        );
    }

    /// Returns a strategy for the text of a value of the flat subset.
    fn flat_value() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..2_000_000_000).prop_map(|number| number.to_string()),
            Just("-7".to_string()),
            Just("null".to_string()),
            "[a-z0-9 :.-]{1,12}".prop_map(|text| format!("\"{text}\"")),
        ]
    }

    /// Returns a strategy for two lines of one layout: the same keys and spacing, with values
    /// drawn separately for each line. The first line's values are of the flat subset, so that
    /// the first line records its layout unless a key repeats.
    fn line_pair() -> impl Strategy<Value = (String, String)> {
        let pair = (
            key(),
            prop::sample::select(vec!["", " ", "\t"]),
            flat_value(),
            value(),
        );
        (
            prop::collection::vec(pair, 1..7),
            prop::sample::select(vec!["", " ", " \r"]),
        )
            .prop_map(|(pairs, end)| {
                let join = |values: Vec<String>| format!("{{{}}}{end}", values.join(","));
                let first = pairs
                    .iter()
                    .map(|(key, space, value, _)| format!("\"{key}\"{space}:{value}"))
                    .collect();
                let second = pairs
                    .iter()
                    .map(|(key, space, _, value)| format!("\"{key}\"{space}:{value}"))
                    .collect();
                (join(first), join(second))
            })
    }

    #[test]
    fn generated_pairs_often_share_layout() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let mut runner = TestRunner::deterministic();
        let strategy = line_pair();
        let shared = (0..2000)
            .filter(|_| {
                let (first, second) = strategy.new_tree(&mut runner).unwrap().current();
                let mut parser = FlatParser::default();
                parser.parse(first.as_bytes(), 1);
                let mut fields = EventFields::default();
                !matches!(
                    parser.layout.read_values(second.as_bytes(), &mut fields),
                    Lookup::Other
                )
            })
            .count();
        assert!(
            shared >= 500,
            "only {shared} of 2000 second lines were read by the layout"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn fast_path_agrees_with_full_reader(line in line()) {
            if let Some(event) = parse_flat(line.as_bytes(), 5) {
                prop_assert_eq!(Some(event), full_reader(&line), "line {}", line);
            }
        }

        #[test]
        fn layout_path_agrees_with_full_reader((first, second) in line_pair()) {
            let mut parser = FlatParser::default();
            parser.parse(first.as_bytes(), 1);
            if let Some(event) = parser.parse(second.as_bytes(), 5) {
                prop_assert_eq!(Some(event), full_reader(&second), "{} after {}", second, first);
            }
        }
    }
}
