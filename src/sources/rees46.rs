//! Reader of the REES46 multi-category store CSV:
//! `event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`.
//!
//! `category_code` (for example `electronics.smartphone`), `brand`, `price` and
//! `user_session` may be empty. The first dotted part of `category_code` becomes the event's
//! topic.

use std::borrow::Cow;

use veer_models::{Behavior, Event, Id};

use super::fields::{self, invalid_value, wrong_field_count};
use super::time;
use super::{BadRecord, LineParser, Parsed};

const HEADER: &[u8] =
    b"event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
const FIELD_COUNT: usize = 9;

/// Parser of the `rees46` format.
#[derive(Debug, Default)]
pub(crate) struct Rees46Parser;

impl Rees46Parser {
    pub(crate) fn new() -> Self {
        Rees46Parser
    }
}

impl LineParser for Rees46Parser {
    fn parse(&mut self, line_no: u64, line: &[u8]) -> Parsed {
        if line.is_empty() || fields::is_header(line, HEADER) {
            return Parsed::Skip;
        }
        if line_no == 1 && line.first().is_some_and(u8::is_ascii_alphabetic) {
            let reason = format!(
                "unexpected header; expected {:?} with the columns in that order",
                String::from_utf8_lossy(HEADER)
            );
            return Parsed::Bad(BadRecord::new(line_no, reason, line));
        }
        let result = if memchr::memchr(b'"', line).is_some() {
            match fields::split_quoted(line) {
                Ok(quoted) => parse_fields(line_no, &quoted, quoted.len()),
                Err(reason) => Err(reason.to_string()),
            }
        } else {
            let mut plain: [&[u8]; FIELD_COUNT] = [b""; FIELD_COUNT];
            let count = fields::split_plain(line, &mut plain);
            parse_fields(line_no, &plain, count)
        };
        match result {
            Ok(event) => Parsed::Event(event),
            Err(reason) => Parsed::Bad(BadRecord::new(line_no, reason, line)),
        }
    }
}

fn parse_fields<F: AsRef<[u8]>>(line_no: u64, fields: &[F], count: usize) -> Result<Event, String> {
    if count != FIELD_COUNT {
        return Err(wrong_field_count(FIELD_COUNT, count));
    }
    let field = |index: usize| fields[index].as_ref();
    let event_time = field(0);
    let ts_ms = time::parse_utc_suffixed(event_time).map_err(|error| {
        error.reason(
            "event_time",
            event_time,
            "a time like 2019-10-01 00:00:00 UTC",
        )
    })?;
    let behavior = parse_behavior(field(1))?;
    let item = required_id(field(2), "product_id")?;
    let category = required_id(field(3), "category_id")?;
    let topic = topic(field(4))?;
    let brand = optional_text(field(5), "brand")?.map(|brand| Id::from_field(&brand));
    let price = price(field(6))?;
    let user = required_id(field(7), "user_id")?;
    let session = optional_text(field(8), "user_session")?.map(Cow::into_owned);

    Ok(Event {
        ts_ms,
        user,
        category,
        item,
        behavior,
        topic,
        price,
        brand,
        dwell_ms: None,
        session: session.map(String::into_boxed_str),
        line: line_no,
    })
}

fn parse_behavior(field: &[u8]) -> Result<Behavior, String> {
    std::str::from_utf8(field)
        .ok()
        .and_then(Behavior::parse)
        .ok_or_else(|| {
            invalid_value(
                "event_type",
                field,
                "view, cart, remove_from_cart or purchase",
            )
        })
}

fn required_id(field: &[u8], name: &str) -> Result<Id, String> {
    if field.is_empty() {
        return Err(format!("{name} is empty"));
    }
    fields::id_from_bytes(field).ok_or_else(|| invalid_value(name, field, "valid UTF-8"))
}

fn optional_text<'a>(field: &'a [u8], name: &str) -> Result<Option<Cow<'a, str>>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    match std::str::from_utf8(field) {
        Ok(text) => Ok(Some(Cow::Borrowed(text))),
        Err(_) => Err(invalid_value(name, field, "valid UTF-8")),
    }
}

/// Returns the first part of a dotted `category_code`, or `None` when the code is empty.
fn topic(code: &[u8]) -> Result<Option<Id>, String> {
    let first = match memchr::memchr(b'.', code) {
        Some(dot) => &code[..dot],
        None => code,
    };
    Ok(optional_text(first, "category_code")?.map(|text| Id::text(&text)))
}

fn price(field: &[u8]) -> Result<Option<f64>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    let parsed = std::str::from_utf8(field)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|price| price.is_finite());
    match parsed {
        Some(price) => Ok(Some(price)),
        None => Err(invalid_value("price", field, "a finite decimal number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Parsed {
        Rees46Parser::new().parse(2, line)
    }

    fn reason(line: &[u8]) -> String {
        match parse(line) {
            Parsed::Bad(record) => record.reason,
            other => panic!("expected a bad record, got {other:?}"),
        }
    }

    #[test]
    fn full_row() {
        let Parsed::Event(event) = parse(
            b"2019-10-01 00:00:04 UTC,purchase,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,519107250,566511c2-e2e3-422b-b695-cf8e6e792ca8",
        ) else {
            panic!("expected an event");
        };
        assert_eq!(event.ts_ms, 1_569_888_004_000);
        assert_eq!(event.behavior, Behavior::Buy);
        assert_eq!(event.item, Id::int(17_200_506));
        assert_eq!(event.category, Id::int(2_053_013_559_792_632_471));
        assert_eq!(event.topic, Some(Id::text("furniture")));
        assert_eq!(event.brand, None);
        assert_eq!(event.price, Some(543.10));
        assert_eq!(event.user, Id::int(519_107_250));
        assert_eq!(
            event.session.as_deref(),
            Some("566511c2-e2e3-422b-b695-cf8e6e792ca8")
        );
        assert_eq!(event.line, 2);
    }

    #[test]
    fn empty_optional_fields() {
        let Parsed::Event(event) = parse(b"2019-10-01 00:00:04 UTC,remove_from_cart,1,2,,,0.00,3,")
        else {
            panic!("expected an event");
        };
        assert_eq!(event.behavior, Behavior::RemoveFromCart);
        assert_eq!(event.topic, None);
        assert_eq!(event.brand, None);
        assert_eq!(event.price, Some(0.0));
        assert_eq!(event.session, None);

        let Parsed::Event(event) = parse(b"2019-10-01 00:00:04 UTC,view,1,2,kids,lego,,3,s") else {
            panic!("expected an event");
        };
        assert_eq!(event.topic, Some(Id::text("kids")));
        assert_eq!(event.brand, Some(Id::text("lego")));
        assert_eq!(event.price, None);
    }

    #[test]
    fn header_and_blank_lines_skip() {
        assert_eq!(parse(HEADER), Parsed::Skip);
        assert_eq!(parse(b""), Parsed::Skip);
    }

    #[test]
    fn quoted_header_skips() {
        let quoted = b"\"event_time\",\"event_type\",\"product_id\",\"category_id\",\"category_code\",\"brand\",\"price\",\"user_id\",\"user_session\"";
        assert_eq!(Rees46Parser::new().parse(1, quoted), Parsed::Skip);
        // A quoted line that is not the header is still judged as a row.
        let other = b"\"event_time\",\"event_type\",\"product_id\",\"user_id\"";
        assert!(matches!(Rees46Parser::new().parse(1, other), Parsed::Bad(_)));
    }

    #[test]
    fn other_header_is_reported() {
        let parsed = Rees46Parser::new().parse(1, b"event_time,event_type,product_id,user_id");
        let Parsed::Bad(record) = parsed else {
            panic!("expected a bad record, got {parsed:?}");
        };
        assert!(
            record.reason.starts_with("unexpected header"),
            "{}",
            record.reason
        );
    }

    #[test]
    fn quoted_fields() {
        let Parsed::Event(event) = parse(b"2019-10-01 00:00:04 UTC,view,1,2,,\"a, b\",1.5,3,s")
        else {
            panic!("expected an event");
        };
        assert_eq!(event.brand, Some(Id::text("a, b")));
        assert!(reason(b"2019-10-01 00:00:04 UTC,view,1,2,,\"open,1.5,3,s").contains("quoted"));
    }

    #[test]
    fn malformed_rows() {
        let truncated = b"2019-10-01 02:50:00 UTC,view,10900305,2053013555069845885,appliances.kitchen.mixer,elenberg,25.71,52040330";
        assert!(reason(truncated).contains("expected 9 comma-separated fields, found 8"));
        assert!(reason(b"2019-10-01 00:00:04,view,1,2,,,1,3,s").contains("event_time"));
        assert!(
            reason(b"2019-10-01 00:00:04 UTC,scroll,1,2,,,1,3,s").contains("event_type \"scroll\"")
        );
        assert!(reason(b"2019-10-01 00:00:04 UTC,view,1,2,,,NaN,3,s").contains("price \"NaN\""));
        assert!(reason(b"2019-10-01 00:00:04 UTC,view,1,2,,,abc,3,s").contains("price"));
        assert!(reason(b"2019-10-01 00:00:04 UTC,view,1,,,,1,3,s").contains("category_id is empty"));
        assert!(reason(b"2019-10-01 00:00:04 UTC,view,1,2,,,1,,s").contains("user_id is empty"));
        assert!(reason(b"2019-10-01 00:00:04 UTC,view,1,2,,\xff,1,3,s")
            .contains("brand is not valid UTF-8"));
    }
}
