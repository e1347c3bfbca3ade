//! Reader of Alibaba Taobao UserBehavior CSV: `user_id,item_id,category_id,behavior_type,timestamp`.
//!
//! The format has no header, ids are decimal integers, the behaviour is one of `pv`, `cart`,
//! `fav` and `buy`, and the timestamp is in Unix seconds.

use veer_models::{Behavior, Event, Id};

use super::digits;
use super::fields::{self, invalid_value, wrong_field_count};
use super::row::IntegerRow;
use super::time;
use super::{BadRecord, LineParser, Parsed, Pushed};

const FIELD_COUNT: usize = 5;

/// Parser of the `taobao` format.
#[derive(Debug, Default)]
pub(crate) struct TaobaoParser;

impl TaobaoParser {
    pub(crate) fn new() -> Self {
        TaobaoParser
    }
}

impl LineParser for TaobaoParser {
    fn parse(&mut self, line_no: u64, line: &[u8]) -> Parsed {
        match parse_row(line) {
            Some(row) => Parsed::Event(row.into_event(line_no)),
            None => parse_other(line_no, line),
        }
    }

    fn parse_into(&mut self, line_no: u64, line: &[u8], events: &mut Vec<Event>) -> Pushed {
        if let Some(row) = parse_row(line) {
            row.push_into(line_no, events);
            return Pushed::Event;
        }
        parse_other(line_no, line).push_into(events)
    }
}

/// Parses a line that [`parse_common_row`] does not read: a blank line is skipped, and any
/// other line becomes an event or a bad record with a reason.
fn parse_other(line_no: u64, line: &[u8]) -> Parsed {
    if line.is_empty() {
        return Parsed::Skip;
    }
    match parse_event(line_no, line) {
        Ok(event) => Parsed::Event(event),
        Err(reason) => Parsed::Bad(BadRecord::new(line_no, reason, line)),
    }
}

/// Reads a row of the common shape (ids and a timestamp of 1 to 19 digits) with
/// [`parse_masked_row`] or, for lines of under 16 or over 64 bytes, with
/// [`parse_common_row`]. Returns `None` for any other row, which [`parse_event`] then parses or
/// rejects with a reason.
#[inline(always)]
fn parse_row(line: &[u8]) -> Option<IntegerRow> {
    if (16..=64).contains(&line.len()) {
        parse_masked_row(line)
    } else {
        parse_common_row(line)
    }
}

/// Reads a row of 16 to 64 bytes from a mask of its non-digit bytes, so that the field ends
/// are found without a loop over the bytes and each number is read with one to three word
/// loads. Accepts exactly the rows that [`parse_common_row`] accepts, with the same values.
#[inline(always)]
fn parse_masked_row(line: &[u8]) -> Option<IntegerRow> {
    let mut others = digits::non_digit_mask(line);

    // The three lowest non-digit bytes must be the commas after the three ids.
    let user_end = others.trailing_zeros() as usize;
    others &= others.wrapping_sub(1);
    let item_end = others.trailing_zeros() as usize;
    others &= others.wrapping_sub(1);
    let category_end = others.trailing_zeros() as usize;
    others &= others.wrapping_sub(1);

    // The behaviour starts after the third comma, which must lie inside the line.
    let mut position = category_end.checked_add(1)?;
    if position >= line.len() {
        return None;
    }
    if line[user_end] != b',' || line[item_end] != b',' || line[category_end] != b',' {
        return None;
    }
    let behavior = take_behavior(line, &mut position)?;

    // Every byte after the behaviour and its comma is a digit of the timestamp.
    let seconds_start = position;
    if seconds_start >= line.len() || others >> seconds_start != 0 {
        return None;
    }
    let lengths_valid = (1..=19).contains(&user_end)
        && (1..=19).contains(&(item_end - user_end - 1))
        && (1..=19).contains(&(category_end - item_end - 1))
        && line.len() - seconds_start <= 19;
    if !lengths_valid {
        return None;
    }

    // Seconds of 13 digits or more take the full parser, which rejects them with a reason.
    let seconds = digits::checked_run_value(line, seconds_start, line.len());
    if seconds >= time::MILLIS_FROM {
        return None;
    }
    Some(IntegerRow {
        ts_ms: seconds as i64 * 1000,
        user: digits::checked_run_value(line, 0, user_end),
        item: digits::checked_run_value(line, user_end + 1, item_end),
        category: digits::checked_run_value(line, item_end + 1, category_end),
        behavior,
    })
}

/// Reads a row in one pass when every id has at most 19 digits, the common case. Returns
/// `None` for any other row, which [`parse_event`] then parses or rejects with a reason.
#[inline(always)]
fn parse_common_row(line: &[u8]) -> Option<IntegerRow> {
    let mut position = 0;
    let user = fields::take_digits(line, &mut position)?;
    let item = fields::take_digits(line, &mut position)?;
    let category = fields::take_digits(line, &mut position)?;
    let behavior = take_behavior(line, &mut position)?;
    let seconds = fields::take_digits(line, &mut position)?;
    // The timestamp must be the last field. Seconds of 13 digits or more take the full parser,
    // which rejects them with a reason.
    if position != line.len() + 1 || seconds >= time::MILLIS_FROM {
        return None;
    }
    Some(IntegerRow {
        ts_ms: seconds as i64 * 1000,
        user,
        item,
        category,
        behavior,
    })
}

/// Reads a behaviour name and the comma after it at `*position`, and moves `*position` past
/// the comma. Returns `None` for any other text.
#[inline(always)]
fn take_behavior(line: &[u8], position: &mut usize) -> Option<Behavior> {
    /// Returns the first bytes of a word whose low bytes are `text`, and the mask of those.
    const fn prefix(text: &[u8]) -> (u64, u64) {
        let mut word = 0;
        let mut index = 0;
        while index < text.len() {
            word |= (text[index] as u64) << (8 * index);
            index += 1;
        }
        (word, u64::MAX >> (64 - 8 * text.len()))
    }
    const NAMES: [((u64, u64), Behavior); 4] = [
        (prefix(b"pv,"), Behavior::View),
        (prefix(b"cart,"), Behavior::Cart),
        (prefix(b"fav,"), Behavior::Fav),
        (prefix(b"buy,"), Behavior::Buy),
    ];
    let word = digits::load_word(line, *position);
    for ((name, mask), behavior) in NAMES {
        if word & mask == name {
            *position += (mask.count_ones() / 8) as usize;
            return Some(behavior);
        }
    }
    None
}

fn parse_event(line_no: u64, line: &[u8]) -> Result<Event, String> {
    if line.starts_with(b"user_id,") {
        return Err("unexpected header line; the taobao format has no header".into());
    }
    let mut fields: [&[u8]; FIELD_COUNT] = [b""; FIELD_COUNT];
    let count = fields::split_plain(line, &mut fields);
    if count != FIELD_COUNT {
        return Err(wrong_field_count(FIELD_COUNT, count));
    }
    let [user, item, category, behavior, timestamp] = fields;

    let user = integer_id(user, "user id")?;
    let item = integer_id(item, "item id")?;
    let category = integer_id(category, "category id")?;
    let behavior = match behavior {
        b"pv" => Behavior::View,
        b"cart" => Behavior::Cart,
        b"fav" => Behavior::Fav,
        b"buy" => Behavior::Buy,
        other => {
            return Err(invalid_value(
                "behavior_type",
                other,
                "pv, cart, fav or buy",
            ))
        }
    };
    let ts_ms = time::parse_seconds_digits(timestamp).map_err(|error| {
        error.reason("timestamp", timestamp, "an integer number of Unix seconds")
    })?;

    Ok(Event {
        ts_ms,
        user,
        category,
        item,
        behavior,
        topic: None,
        price: None,
        brand: None,
        dwell_ms: None,
        session: None,
        line: line_no,
    })
}

/// Reads an id column, which in this format must be a decimal integer.
///
/// Leading zeros are accepted and dropped, because the column contains numbers. An id of more than
/// 38 digits (which would not fit `u128`) is rejected rather than kept as text.
fn integer_id(field: &[u8], name: &str) -> Result<Id, String> {
    let first_significant = field
        .iter()
        .position(|&byte| byte != b'0')
        .unwrap_or(field.len().saturating_sub(1));
    fields::parse_decimal(&field[first_significant..])
        .map(Id::int)
        .ok_or_else(|| invalid_value(name, field, "an integer of at most 38 digits"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Returns the event of the one-pass reader, numbered as line 5, after checking that the
    /// reader of 16- to 64-byte rows gives the same event.
    fn common_event(line: &[u8]) -> Option<Event> {
        let event = parse_common_row(line).map(|row| row.into_event(5));
        if (16..=64).contains(&line.len()) {
            let masked = parse_masked_row(line).map(|row| row.into_event(5));
            assert_eq!(masked, event, "{}", String::from_utf8_lossy(line));
        }
        event
    }

    fn reason(line: &[u8]) -> String {
        match TaobaoParser::new().parse(4, line) {
            Parsed::Bad(record) => record.reason,
            other => panic!("expected a bad record, got {other:?}"),
        }
    }

    #[test]
    fn row_becomes_event() {
        let Parsed::Event(event) = TaobaoParser::new().parse(9, b"1,2268318,2520377,pv,1511544070")
        else {
            panic!("expected an event");
        };
        assert_eq!(event.user, Id::int(1));
        assert_eq!(event.item, Id::int(2_268_318));
        assert_eq!(event.category, Id::int(2_520_377));
        assert_eq!(event.behavior, Behavior::View);
        assert_eq!(event.ts_ms, 1_511_544_070_000);
        assert_eq!(event.line, 9);
    }

    #[test]
    fn behaviors_are_the_four_taobao_names() {
        let behavior =
            |name: &str| match TaobaoParser::new().parse(1, format!("1,2,3,{name},4").as_bytes()) {
                Parsed::Event(event) => Some(event.behavior),
                _ => None,
            };
        assert_eq!(behavior("pv"), Some(Behavior::View));
        assert_eq!(behavior("cart"), Some(Behavior::Cart));
        assert_eq!(behavior("fav"), Some(Behavior::Fav));
        assert_eq!(behavior("buy"), Some(Behavior::Buy));
        assert_eq!(behavior("view"), None);
        assert_eq!(behavior("clk"), None);
    }

    #[test]
    fn one_pass_parse_matches_field_parse() {
        let lines: [&[u8]; 41] = [
            b"1,2268318,2520377,pv,1511544070",
            b"007,0,00,buy,0",
            b"1234567890123456789,2,3,fav,1",
            b"12345678901234567890,2,3,cart,1",
            b"1,2,3,pv,1511544070,",
            b"1,2,3,pv,",
            b"1,2,3,pv,9007199254740992",
            b"1,2,3,pv, 1",
            b"1,2,3,PV,1",
            b"1,2,3,pv,999999999999",
            b"1,2,3,pv,18446744073709551616",
            b"1,2,3,pv,99999999999999999999",
            b"-1,2,3,pv,1",
            b"+1,2,3,pv,1",
            b"1,2,3,pv,-1",
            b"1,2,3,pv,+1",
            b"1,2,3,pv,1511544070\r",
            b"1,2,3,pv,1511544070 ",
            b"1,2,3,pv",
            b"1,2,3,pv1,1",
            b"1,2,3,pvv,1",
            b"1,2,3,car,1",
            b"1,2,3,cart",
            b"1,2,3,,1",
            b"1,,3,pv,1",
            b",2,3,pv,1",
            b"1,2,3,buy,1\x00",
            b"1\x002,3,pv,1",
            b"00000000000000000000001,2,3,fav,1",
            b"user_id,item_id,category_id,behavior_type,timestamp",
            b"1234567890123456789,1234567890123456789,1,buy,1",
            b"1,2,3,pv,1511544070,1511544070",
            b"1,2,3,pv,pv,1511544070",
            b"1,2,3,4,pv,1511544070",
            b"1;2,3,pv,1511544070",
            b"1,2;3,pv,1511544070",
            b"1,2,3;pv,1511544070",
            b"11111111111111111111111111111111",
            b"1,22222222222222222222222222222222",
            b"1,2,333333333333333333333333333333",
            b"1,2,3,fav,4444444444444444444",
        ];
        for line in lines {
            let shown = String::from_utf8_lossy(line);
            if let Some(event) = common_event(line) {
                assert_eq!(Ok(event), parse_event(5, line), "{shown}");
            }
        }
        for index in [0, 1, 2, 9] {
            let shown = String::from_utf8_lossy(lines[index]);
            assert!(common_event(lines[index]).is_some(), "{shown}");
        }
        assert!(common_event(lines[3]).is_none(), "20 digits");
        assert!(common_event(lines[6]).is_none(), "more than 12 digits");
        assert!(common_event(lines[16]).is_none(), "carriage return");
    }

    /// Returns a strategy for one field: mostly valid ids, behaviours and timestamps, with
    /// signs, spaces, wide numbers and other text mixed in.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => (0u64..20_000_000_000).prop_map(|number| number.to_string()),
            2 => prop::sample::select(vec!["pv", "cart", "fav", "buy"]).prop_map(str::to_string),
            1 => "0{1,3}[0-9]{0,19}",
            1 => "[0-9]{18,21}",
            1 => "[-+ ]?[0-9]{1,4}[ \r]?",
            1 => prop::sample::select(vec!["", "pv ", "PV", "p", "pvv", "cartt", "9007199254740992"])
                .prop_map(str::to_string),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        #[test]
        fn one_pass_parse_agrees_on_generated_rows(
            fields in prop::collection::vec(field(), 3..7),
            ending in prop::sample::select(vec!["", "\r", ","]),
        ) {
            let line = format!("{}{ending}", fields.join(","));
            if let Some(event) = common_event(line.as_bytes()) {
                prop_assert_eq!(Ok(event), parse_event(5, line.as_bytes()), "{}", line);
            }
        }

        #[test]
        fn one_pass_parse_reads_usual_rows(
            ids in prop::array::uniform3(0u64..10_000_000_000_000_000_000),
            behavior in prop::sample::select(vec!["pv", "cart", "fav", "buy"]),
            seconds in 0u64..time::MILLIS_FROM,
        ) {
            let line = format!("{},{},{},{behavior},{seconds}", ids[0], ids[1], ids[2]);
            let event = common_event(line.as_bytes());
            prop_assert!(event.is_some(), "{}", line);
            prop_assert_eq!(Ok(event.unwrap()), parse_event(5, line.as_bytes()), "{}", line);
        }
    }

    #[test]
    fn pushed_rows_match_parsed_rows() {
        let lines: [&[u8]; 6] = [
            b"1,2268318,2520377,pv,1511544070",
            b"12345678901234567890,2,3,cart,1",
            b"1,2,3,pv,1511544070\r",
            b"1,2,3,clk,5",
            b"user_id,item_id,category_id,behavior_type,timestamp",
            b"",
        ];
        for line in lines {
            let shown = String::from_utf8_lossy(line);
            let mut events = vec![Event::plain(0, 9u64, 9u64, 9u64, Behavior::View)];
            let pushed = TaobaoParser::new().parse_into(4, line, &mut events);
            let mut expected_events = events[..1].to_vec();
            let expected = TaobaoParser::new()
                .parse(4, line)
                .push_into(&mut expected_events);
            assert_eq!(pushed, expected, "{shown}");
            assert_eq!(events, expected_events, "{shown}");
        }
    }

    #[test]
    fn leading_zeros_are_the_same_integer() {
        let Parsed::Event(event) = TaobaoParser::new().parse(1, b"007,0,00,pv,1") else {
            panic!("expected an event");
        };
        assert_eq!(event.user, Id::int(7));
        assert_eq!(event.item, Id::int(0));
        assert_eq!(event.category, Id::int(0));
    }

    #[test]
    fn malformed_rows() {
        assert!(reason(b"user_id,item_id,category_id,behavior_type,timestamp").contains("header"));
        assert!(reason(b"1,2,3,pv").contains("expected 5 comma-separated fields, found 4"));
        assert!(reason(b"1,2,3,pv,5,6").contains("found 6"));
        assert!(reason(b"1,2,3,clk,5").contains("behavior_type \"clk\""));
        assert!(reason(b"1,2,3,pv,15116OO200").contains("timestamp \"15116OO200\""));
        assert!(reason(b"1,2,3,pv,-5").contains("negative"));
        for milliseconds in [&b"1,2,3,pv,1511544070000"[..], b"1,2,3,pv,1511544070000000"] {
            let reason = reason(milliseconds);
            assert!(reason.contains("more than 12 digits"), "{reason}");
        }
        assert!(reason(b"1,2,3,\xff\xfe,5").contains("behavior_type is not valid UTF-8"));
        assert!(reason(b"1,2\xc3,3,pv,5").contains("item id is not valid UTF-8"));
        assert!(reason(b"1,,3,pv,5").contains("item id \"\""));
        assert!(reason(b"1,a1,3,pv,5").contains("an integer of at most 38 digits"));
        let long_id = format!("1,{},3,pv,5", "1".repeat(39));
        let found = reason(long_id.as_bytes());
        assert!(
            found.contains("item id") && found.contains("at most 38 digits"),
            "{found}"
        );
    }
}
