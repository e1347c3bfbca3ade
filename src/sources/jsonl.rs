//! Reader of JSON lines: one event object per line with the contract's field names.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use veer_models::alert::{input_id, json_type};
use veer_models::{Behavior, Event, Id};

use super::flat_json;
use super::time::{self, TimeError};
use super::{BadRecord, LineParser, Parsed, Pushed};

/// Parser of the `jsonl` format.
#[derive(Debug, Default)]
pub(crate) struct JsonlParser {
    flat: flat_json::FlatParser,
}

impl JsonlParser {
    pub(crate) fn new() -> Self {
        JsonlParser::default()
    }
}

impl LineParser for JsonlParser {
    fn parse(&mut self, line_no: u64, line: &[u8]) -> Parsed {
        if line.trim_ascii().is_empty() {
            return Parsed::Skip;
        }
        match self.flat.parse(line, line_no) {
            Some(event) => Parsed::Event(event),
            None => self.parse_full(line_no, line),
        }
    }

    fn parse_into(&mut self, line_no: u64, line: &[u8], events: &mut Vec<Event>) -> Pushed {
        // An event's line usually starts with its `{`, which saves trimming the line.
        if line.first() != Some(&b'{') && line.trim_ascii().is_empty() {
            return Pushed::Skip;
        }
        if self.flat.parse_into(line, line_no, events) {
            return Pushed::Event;
        }
        self.parse_full(line_no, line).push_into(events)
    }
}

impl JsonlParser {
    /// Parses a non-blank line with serde_json, which checks every field and words the error.
    pub(crate) fn parse_full(&self, line_no: u64, line: &[u8]) -> Parsed {
        let fields: EventFields = match serde_json::from_slice(line) {
            Ok(fields) => fields,
            Err(error) => {
                return Parsed::Bad(BadRecord::new(line_no, json_error_reason(&error), line))
            }
        };
        match fields.into_event(line_no) {
            Ok(event) => Parsed::Event(event),
            Err(reason) => Parsed::Bad(BadRecord::new(line_no, reason, line)),
        }
    }
}

/// Rewords a serde_json error for a one-line document, whose line number is always 1.
fn json_error_reason(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let message = message
        .strip_suffix(&format!(
            " at line {} column {}",
            error.line(),
            error.column()
        ))
        .unwrap_or(&message);
    // serde_json reports column 0 for an error at the first value, before any byte is read.
    match error.column() {
        0 => format!("invalid JSON event: {message}"),
        column => format!("invalid JSON event at column {column}: {message}"),
    }
}

/// The recognised fields of one event object, kept as JSON values until they are checked.
///
/// `query` and unknown fields are skipped without being built. With serde_json's
/// `arbitrary_precision` feature, numbers keep their text, so large ids keep every digit.
#[derive(Default)]
struct EventFields {
    user: Option<Value>,
    item: Option<Value>,
    category: Option<Value>,
    behavior: Option<Value>,
    ts: Option<Value>,
    price: Option<Value>,
    brand: Option<Value>,
    dwell_ms: Option<Value>,
    session: Option<Value>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum FieldName {
    User,
    Item,
    Category,
    Behavior,
    Ts,
    Price,
    Brand,
    DwellMs,
    Session,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for EventFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventFieldsVisitor)
    }
}

struct EventFieldsVisitor;

impl<'de> Visitor<'de> for EventFieldsVisitor {
    type Value = EventFields;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventFields, A::Error> {
        let mut fields = EventFields::default();
        while let Some(name) = map.next_key::<FieldName>()? {
            let (slot, field_name) = match name {
                FieldName::User => (&mut fields.user, "user"),
                FieldName::Item => (&mut fields.item, "item"),
                FieldName::Category => (&mut fields.category, "category"),
                FieldName::Behavior => (&mut fields.behavior, "behavior"),
                FieldName::Ts => (&mut fields.ts, "ts"),
                FieldName::Price => (&mut fields.price, "price"),
                FieldName::Brand => (&mut fields.brand, "brand"),
                FieldName::DwellMs => (&mut fields.dwell_ms, "dwell_ms"),
                FieldName::Session => (&mut fields.session, "session"),
                FieldName::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            // Two values for one field make the event ambiguous, so the line is rejected.
            if slot.is_some() {
                return Err(de::Error::duplicate_field(field_name));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(fields)
    }
}

impl EventFields {
    fn into_event(self, line_no: u64) -> Result<Event, String> {
        let user = required_id(self.user, "user")?;
        let category = required_id(self.category, "category")?;
        let behavior = behavior(self.behavior)?;
        let ts_ms = timestamp(self.ts)?;
        // The contract does not require `item` (a `search` has none), so a missing item is
        // kept as an empty text id.
        let item = match self.item {
            None | Some(Value::Null) => Id::text(""),
            Some(value) => input_id(&value, "item")?,
        };
        Ok(Event {
            ts_ms,
            user,
            category,
            item,
            behavior,
            topic: None,
            price: price(self.price)?,
            brand: optional(self.brand)
                .map(|value| input_id(&value, "brand"))
                .transpose()?,
            dwell_ms: dwell(self.dwell_ms)?,
            session: session(self.session)?,
            line: line_no,
        })
    }
}

/// Drops a JSON `null`, which stands for an absent optional field.
fn optional(value: Option<Value>) -> Option<Value> {
    value.filter(|value| !value.is_null())
}

fn required_id(value: Option<Value>, name: &str) -> Result<Id, String> {
    match value {
        None => Err(format!("missing field {name}")),
        Some(Value::Null) => Err(format!("{name} is null")),
        Some(value) => input_id(&value, name),
    }
}

fn behavior(value: Option<Value>) -> Result<Behavior, String> {
    match value {
        None => Err("missing field behavior".into()),
        Some(Value::String(name)) => Behavior::parse(&name).ok_or_else(|| {
            format!("unknown behavior {name:?}; expected view, cart, fav, buy, search, remove_from_cart or an alias")
        }),
        Some(other) => Err(format!("behavior is {}, expected a string", json_type(&other))),
    }
}

/// Reads `ts`: an epoch number or a string of one (seconds, or milliseconds from 10^12 on),
/// or an RFC 3339 string.
fn timestamp(value: Option<Value>) -> Result<i64, String> {
    const EXPECTED: &str = "Unix seconds, Unix milliseconds or an RFC 3339 time";
    let (text, result) = match &value {
        None => return Err("missing field ts".into()),
        Some(Value::Number(number)) => {
            let text = number.to_string();
            let result = time::parse_epoch(text.as_bytes());
            (text, result)
        }
        Some(Value::String(text)) => {
            let bytes = text.as_bytes();
            let result = if bytes.len() >= 10 && bytes[4] == b'-' {
                time::parse_rfc3339(bytes)
            } else {
                time::parse_epoch(bytes)
            };
            (text.clone(), result)
        }
        Some(other) => return Err(format!("ts is {}, expected {EXPECTED}", json_type(other))),
    };
    result.map_err(|error: TimeError| error.reason("ts", text.as_bytes(), EXPECTED))
}

fn price(value: Option<Value>) -> Result<Option<f64>, String> {
    let Some(value) = optional(value) else {
        return Ok(None);
    };
    let parsed = match &value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    match parsed {
        Some(price) if price.is_finite() => Ok(Some(price)),
        _ => Err(format!("price {} is not a finite number", shown(&value))),
    }
}

/// Returns a JSON value as written, cut to its first 40 bytes when longer.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 40 {
        return text;
    }
    super::fields::show(text.as_bytes())
}

fn dwell(value: Option<Value>) -> Result<Option<u64>, String> {
    let Some(value) = optional(value) else {
        return Ok(None);
    };
    let parsed = match &value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse::<u64>().ok(),
        _ => None,
    };
    match parsed {
        Some(dwell_ms) => Ok(Some(dwell_ms)),
        None => Err(format!(
            "dwell_ms {} is not a non-negative integer",
            shown(&value)
        )),
    }
}

fn session(value: Option<Value>) -> Result<Option<Box<str>>, String> {
    match optional(value) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.into_boxed_str())),
        Some(Value::Number(number)) => Ok(Some(number.to_string().into_boxed_str())),
        Some(other) => Err(format!(
            "session is {}, expected a string",
            json_type(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Parsed {
        JsonlParser::new().parse(7, line.as_bytes())
    }

    fn event(line: &str) -> Event {
        match parse(line) {
            Parsed::Event(event) => event,
            other => panic!("expected an event from {line}, got {other:?}"),
        }
    }

    #[test]
    fn pushed_lines_match_parsed_lines() {
        let lines = [
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1511539241}"#,
            r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1511539241.5}"#,
            r#"{"user":"a\u0041","category":3,"behavior":"buy","ts":"2017-11-25T08:00:00Z"}"#,
            r#"{"user":1,"item":2,"category":3,"behavior":"jump","ts":1}"#,
            r#"{"user":1,"item":2,"#,
            "  \t",
            "",
        ];
        // One parser of each kind reads all lines, so the layout of one line is known when the
        // next is read.
        let mut pushing = JsonlParser::new();
        let mut parsing = JsonlParser::new();
        for line in lines {
            let mut events = vec![Event::plain(0, 9u64, 9u64, 9u64, Behavior::View)];
            let pushed = pushing.parse_into(7, line.as_bytes(), &mut events);
            let mut expected_events = events[..1].to_vec();
            let expected = parsing
                .parse(7, line.as_bytes())
                .push_into(&mut expected_events);
            assert_eq!(pushed, expected, "{line}");
            assert_eq!(events, expected_events, "{line}");
        }
    }

    fn reason(line: &str) -> String {
        match parse(line) {
            Parsed::Bad(record) => {
                assert_eq!(record.line, 7);
                record.reason
            }
            other => panic!("expected a bad record from {line}, got {other:?}"),
        }
    }

    #[test]
    fn full_event() {
        let event = event(
            r#"{"user":1,"item":"i-2","category":3,"behavior":"purchase","ts":1511539200,
            "price":12.5,"brand":"acme","dwell_ms":900,"session":"s1","query":"x","extra":[1]}"#
                .replace('\n', "")
                .as_str(),
        );
        assert_eq!(event.user, Id::int(1));
        assert_eq!(event.item, Id::text("i-2"));
        assert_eq!(event.category, Id::int(3));
        assert_eq!(event.behavior, Behavior::Buy);
        assert_eq!(event.ts_ms, 1_511_539_200_000);
        assert_eq!(event.price, Some(12.5));
        assert_eq!(event.brand, Some(Id::text("acme")));
        assert_eq!(event.dwell_ms, Some(900));
        assert_eq!(event.session.as_deref(), Some("s1"));
        assert_eq!(event.line, 7);
        assert_eq!(event.topic, None);
    }

    #[test]
    fn big_ids_keep_every_digit() {
        let line =
            |user: &str| format!(r#"{{"user":{user},"category":1,"behavior":"view","ts":1}}"#);
        assert_eq!(
            event(&line("9196877626998784")).user,
            Id::int(9_196_877_626_998_784)
        );
        assert_eq!(
            event(&line("123456789012345678901")).user,
            Id::int(123_456_789_012_345_678_901)
        );
        assert_eq!(event(&line("\"42\"")).user, Id::text("42"));
        assert_eq!(
            reason(&line("1.5")),
            "user 1.5 is not an integer; ids are integers or strings"
        );
    }

    #[test]
    fn behavior_aliases() {
        let cases = [
            ("pv", Behavior::View),
            ("click", Behavior::View),
            ("detail", Behavior::View),
            ("addtocart", Behavior::Cart),
            ("add_to_cart", Behavior::Cart),
            ("favorite", Behavior::Fav),
            ("like", Behavior::Fav),
            ("transaction", Behavior::Buy),
            ("order", Behavior::Buy),
            ("search", Behavior::Search),
            ("remove_from_cart", Behavior::RemoveFromCart),
        ];
        for (name, expected) in cases {
            let line = format!(r#"{{"user":1,"category":1,"behavior":"{name}","ts":1}}"#);
            assert_eq!(event(&line).behavior, expected, "{name}");
        }
        let bad = reason(r#"{"user":1,"category":1,"behavior":"View","ts":1}"#);
        assert!(bad.contains("unknown behavior \"View\""), "{bad}");
    }

    #[test]
    fn timestamp_forms() {
        let ts = |value: &str| {
            event(&format!(
                r#"{{"user":1,"category":1,"behavior":"view","ts":{value}}}"#
            ))
            .ts_ms
        };
        assert_eq!(ts("1511539200"), 1_511_539_200_000);
        assert_eq!(ts("1511539200123"), 1_511_539_200_123);
        assert_eq!(ts("\"1511539200\""), 1_511_539_200_000);
        assert_eq!(ts("\"1511539200123\""), 1_511_539_200_123);
        assert_eq!(ts("\"2017-11-24T16:00:00Z\""), 1_511_539_200_000);
        assert_eq!(ts("\"2017-11-25T00:00:00+08:00\""), 1_511_539_200_000);
        assert_eq!(ts("1511539200.5"), 1_511_539_200_500);
        // Far from the rest of the data, but readable: left to the late-data policy.
        assert_eq!(ts("1"), 1000);
    }

    #[test]
    fn timestamp_rejections() {
        let reason_for = |value: &str| {
            reason(&format!(
                r#"{{"user":1,"category":1,"behavior":"view","ts":{value}}}"#
            ))
        };
        assert!(reason_for("-5").contains("negative"));
        assert!(reason_for("\"yesterday\"").contains("is not Unix seconds"));
        assert!(reason_for("\"2017-11-25\"").contains("is not"));
        assert!(reason_for("null").contains("ts is null"));
        assert!(reason_for("99999999999999999999").contains("more than 13 digits"));
    }

    #[test]
    fn microsecond_timestamps_are_bad() {
        for value in [
            "1511539241000000",
            "\"1511539241000000\"",
            "1511539241000000.0",
            "1511539241000000000",
            "15115392410000",
        ] {
            let line = format!(r#"{{"user":1,"category":1,"behavior":"view","ts":{value}}}"#);
            let reason = reason(&line);
            assert!(reason.contains("more than 13 digits"), "{value}: {reason}");
            assert!(reason.contains("microseconds"), "{value}: {reason}");
        }
    }

    #[test]
    fn non_integer_number_ids_rejected() {
        // serde_json writes an exponent as `e+`, so the reason shows `1e3` as `1e+3`.
        for (field, value, shown) in [
            ("user", "3.5", "3.5"),
            ("user", "3.0", "3.0"),
            ("user", "1e3", "1e+3"),
            ("user", "-2.5E1", "-2.5e+1"),
            ("item", "0.5", "0.5"),
            ("category", "3.25", "3.25"),
            ("brand", "7e0", "7e+0"),
        ] {
            let mut fields = vec![
                ("user", "1"),
                ("item", "2"),
                ("category", "3"),
                ("behavior", "\"view\""),
                ("ts", "1511539200"),
                ("brand", "4"),
            ];
            for (name, text) in &mut fields {
                if *name == field {
                    *text = value;
                }
            }
            let pairs: Vec<String> = fields
                .iter()
                .map(|(name, text)| format!("\"{name}\":{text}"))
                .collect();
            let line = format!("{{{}}}", pairs.join(","));
            assert_eq!(
                reason(&line),
                format!("{field} {shown} is not an integer; ids are integers or strings"),
                "{line}"
            );
        }
    }

    #[test]
    fn negative_integer_ids_kept_as_text() {
        let event = event(r#"{"user":-3,"category":-40,"behavior":"view","ts":1}"#);
        assert_eq!(event.user, Id::text("-3"));
        assert_eq!(event.category, Id::text("-40"));
    }

    #[test]
    fn bad_shapes() {
        let cases = [
            (
                r#"{"user":1,"item":1,"category":{"id":41},"behavior":"view","ts":1}"#,
                "category is an object",
            ),
            (
                r#"{"user":1,"category":[4],"behavior":"view","ts":1}"#,
                "category is an array",
            ),
            (
                r#"{"user":1,"category":null,"behavior":"view","ts":1}"#,
                "category is null",
            ),
            (r#"[7777,1,41,"view",1511539800]"#, "expected a JSON object"),
            (
                r#"{"user":1,"category":4,"behavior":"view","ts":1,}"#,
                "trailing comma",
            ),
            (
                r#"{"user":null,"category":4,"behavior":"view","ts":1}"#,
                "user is null",
            ),
            (
                r#"{"category":4,"behavior":"view","ts":1}"#,
                "missing field user",
            ),
            (
                r#"{"user":1,"behavior":"view","ts":1}"#,
                "missing field category",
            ),
            (
                r#"{"user":1,"category":4,"ts":1}"#,
                "missing field behavior",
            ),
            (
                r#"{"user":1,"category":4,"behavior":"view"}"#,
                "missing field ts",
            ),
            (
                r#"{"user":1,"user":2,"category":4,"behavior":"view","ts":1}"#,
                "duplicate field",
            ),
            (
                r#"{"user":"","category":4,"behavior":"view","ts":1}"#,
                "user is an empty string",
            ),
            (
                r#"{"user":true,"category":4,"behavior":"view","ts":1}"#,
                "user is a boolean",
            ),
            (
                r#"{"user":1,"category":4,"behavior":"view","ts":1,"price":"abc"}"#,
                "price",
            ),
            (
                r#"{"user":1,"category":4,"behavior":"view","ts":1,"dwell_ms":-3}"#,
                "dwell_ms -3 is not",
            ),
            (
                r#"{"user":1,"category":4,"behavior":"view","ts":1} x"#,
                "trailing characters",
            ),
            (r#"{"user":1,"#, "EOF"),
        ];
        for (line, expected) in cases {
            let found = reason(line);
            assert!(found.contains(expected), "{line}: {found}");
        }
    }

    #[test]
    fn long_price_cut_in_reason() {
        let digits = format!("1{}", "0".repeat(400));
        let line =
            format!(r#"{{"user":1,"category":4,"behavior":"cart","ts":1,"price":{digits}}}"#);
        let found = reason(&line);
        assert!(found.contains("(401 bytes)"), "{found}");
        assert!(found.len() < 120, "{found}");
    }

    #[test]
    fn optional_fields_may_be_null_or_absent() {
        let event = event(
            r#"{"user":1,"category":4,"behavior":"search","ts":1,"price":null,"brand":null,"session":null,"query":"red shoes"}"#,
        );
        assert_eq!(event.item, Id::text(""));
        assert_eq!(event.price, None);
        assert_eq!(event.brand, None);
        assert_eq!(event.session, None);
    }

    #[test]
    fn blank_lines_are_skipped() {
        assert_eq!(parse(""), Parsed::Skip);
        assert_eq!(parse("  \t"), Parsed::Skip);
    }
}
