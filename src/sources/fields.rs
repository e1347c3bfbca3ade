//! Byte-level helpers shared by the CSV readers: field splitting, ids and bad-record reasons.

use std::borrow::Cow;

use veer_models::Id;

use super::digits;

/// Splits `line` at every comma into `fields` and returns the number of fields in the line.
///
/// Fields past `fields.len()` are counted but not stored. No quoting is recognised, so use
/// [`split_quoted`] for lines that may contain a `"`.
#[inline]
pub(crate) fn split_plain<'a>(line: &'a [u8], fields: &mut [&'a [u8]]) -> usize {
    let mut count = 0;
    let mut start = 0;
    // A plain loop: event lines are short, and `memchr_iter`'s setup per search costs more
    // than it saves on them.
    for (position, &byte) in line.iter().enumerate() {
        if byte != b',' {
            continue;
        }
        if let Some(slot) = fields.get_mut(count) {
            *slot = &line[start..position];
        }
        count += 1;
        start = position + 1;
    }
    if let Some(slot) = fields.get_mut(count) {
        *slot = &line[start..];
    }
    count + 1
}

/// Returns whether `line` is `header`, written plain or with every field quoted.
pub(crate) fn is_header(line: &[u8], header: &[u8]) -> bool {
    line == header
        || (line.first() == Some(&b'"') && unquoted(line).is_some_and(|plain| plain == header))
}

/// Returns the fields of a line that contains a `"`, without their quotes and joined by
/// commas, or `None` for a line without quotes or with a quote that is not closed.
pub(crate) fn unquoted(line: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(b'"', line)?;
    let fields = split_quoted(line).ok()?;
    Some(fields.join(&b","[..]))
}

/// Splits one CSV line into fields with RFC 4180 quoting: a field that starts with `"` ends at
/// the next lone `"`, and `""` inside it is one quote character.
///
/// Returns an error message for a quote that is never closed (a quoted field that continues on
/// the next line is not supported) or for text between a closing quote and the next comma.
pub(crate) fn split_quoted(line: &[u8]) -> Result<Vec<Cow<'_, [u8]>>, &'static str> {
    let mut fields = Vec::new();
    let mut position = 0;
    loop {
        if line.get(position) == Some(&b'"') {
            let mut value = Vec::new();
            let mut cursor = position + 1;
            loop {
                let Some(offset) = memchr::memchr(b'"', &line[cursor..]) else {
                    return Err("quoted field is not closed on this line");
                };
                value.extend_from_slice(&line[cursor..cursor + offset]);
                cursor += offset + 1;
                if line.get(cursor) == Some(&b'"') {
                    value.push(b'"');
                    cursor += 1;
                } else {
                    break;
                }
            }
            fields.push(Cow::Owned(value));
            match line.get(cursor) {
                None => return Ok(fields),
                Some(b',') => position = cursor + 1,
                Some(_) => return Err("unexpected text after a closing quote"),
            }
        } else {
            match memchr::memchr(b',', &line[position..]) {
                Some(offset) => {
                    fields.push(Cow::Borrowed(&line[position..position + offset]));
                    position += offset + 1;
                }
                None => {
                    fields.push(Cow::Borrowed(&line[position..]));
                    return Ok(fields);
                }
            }
        }
    }
}

/// Reads a field of 1 to 19 decimal digits (leading zeros allowed) at `*position`, and moves
/// `*position` past the comma that ends it, or to the end of the line.
///
/// Returns `None`, with `*position` unspecified, for anything else. This is the fast path of
/// the CSV readers, which fall back to a field-by-field parse with reasons on `None`.
#[inline(always)]
pub(crate) fn take_digits(line: &[u8], position: &mut usize) -> Option<u64> {
    let (length, value) = digits::read_digits(line, *position);
    if length == 0 || length > 19 {
        return None;
    }
    let end = *position + length;
    match line.get(end) {
        Some(b',') | None => {
            *position = end + 1;
            Some(value)
        }
        Some(_) => None,
    }
}

/// Parses canonical decimal digits (no sign, no leading zero, at most 38 digits), with the same
/// rule as [`Id::parse_int`] but on bytes.
pub(crate) fn parse_canonical_int(field: &[u8]) -> Option<u128> {
    if field.len() > 1 && field[0] == b'0' {
        return None;
    }
    parse_decimal(field)
}

/// Parses 1 to 38 decimal digits, leading zeros allowed.
pub(crate) fn parse_decimal(field: &[u8]) -> Option<u128> {
    if field.is_empty() || field.len() > 38 {
        return None;
    }
    if field.len() <= 19 {
        // Up to 19 digits fit in u64, whose arithmetic is cheaper than u128's.
        let mut value: u64 = 0;
        for &byte in field {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value * 10 + u64::from(digit);
        }
        return Some(u128::from(value));
    }
    let mut value: u128 = 0;
    for &byte in field {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + u128::from(digit);
    }
    Some(value)
}

/// Builds an id from a text field like [`Id::from_field`], without an allocation for integers.
///
/// Returns `None` when the field is not valid UTF-8.
pub(crate) fn id_from_bytes(field: &[u8]) -> Option<Id> {
    if let Some(value) = parse_canonical_int(field) {
        return Some(Id::int(value));
    }
    std::str::from_utf8(field).ok().map(Id::text)
}

/// Quotes a field value for a bad-record reason, cut to 40 bytes and with invalid UTF-8 replaced.
pub(crate) fn show(field: &[u8]) -> String {
    const SHOWN: usize = 40;
    if field.len() <= SHOWN {
        return format!("{:?}", String::from_utf8_lossy(field));
    }
    format!(
        "{:?}... ({} bytes)",
        String::from_utf8_lossy(&field[..SHOWN]),
        field.len()
    )
}

/// Returns a reason for an invalid value: a note on invalid UTF-8 when the field has any, because
/// the quoted form would hide those bytes.
pub(crate) fn invalid_value(name: &str, field: &[u8], expected: &str) -> String {
    match std::str::from_utf8(field) {
        Ok(_) => format!("{name} {} is not {expected}", show(field)),
        Err(error) => format!(
            "{name} is not valid UTF-8 (invalid byte at offset {} of the field)",
            error.valid_up_to()
        ),
    }
}

/// Returns the reason for a line with the wrong number of comma-separated fields.
pub(crate) fn wrong_field_count(expected: usize, found: usize) -> String {
    format!("expected {expected} comma-separated fields, found {found}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_plain_and_quoted() {
        assert!(is_header(b"a,b,c", b"a,b,c"));
        assert!(is_header(b"\"a\",\"b\",\"c\"", b"a,b,c"));
        assert!(is_header(b"\"a\",b,\"c\"", b"a,b,c"));
        assert!(!is_header(b"\"a\",\"b\"", b"a,b,c"));
        assert!(!is_header(b"\"a,b,c", b"a,b,c"));
        assert!(!is_header(b"a,b,d", b"a,b,c"));
    }

    #[test]
    fn plain_split_counts_all_fields() {
        let mut fields: [&[u8]; 3] = [b""; 3];
        assert_eq!(split_plain(b"a,,c", &mut fields), 3);
        assert_eq!(fields, [&b"a"[..], b"", b"c"]);
        assert_eq!(split_plain(b"1,2,3,4,5", &mut fields), 5);
        assert_eq!(fields, [&b"1"[..], b"2", b"3"]);
        assert_eq!(split_plain(b"", &mut fields), 1);
    }

    #[test]
    fn quoted_split_keeps_commas_and_quotes() {
        let fields = split_quoted(br#"1,200,283,"n12.000,n5.000""#).unwrap();
        let fields: Vec<&[u8]> = fields.iter().map(|field| field.as_ref()).collect();
        assert_eq!(fields, vec![&b"1"[..], b"200", b"283", b"n12.000,n5.000"]);

        let fields = split_quoted(br#""a ""b""",,x"#).unwrap();
        let fields: Vec<&[u8]> = fields.iter().map(|field| field.as_ref()).collect();
        assert_eq!(fields, vec![&br#"a "b""#[..], b"", b"x"]);

        let fields = split_quoted(br#"a,"""#).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].as_ref(), b"");
    }

    #[test]
    fn quoted_split_rejects_broken_quotes() {
        assert!(split_quoted(br#"a,"open"#).is_err());
        assert!(split_quoted(br#""x"y,z"#).is_err());
    }

    #[test]
    fn byte_ids_match_id_from_field() {
        let samples = [
            "0",
            "7",
            "007",
            "-5",
            "1.0",
            "",
            "abc",
            "9196877626998784",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "100000000000000000000000000000000000000",
            "12345678901234567890",
            "1234567890123456789",
        ];
        for sample in samples {
            assert_eq!(
                id_from_bytes(sample.as_bytes()),
                Some(Id::from_field(sample)),
                "{sample}"
            );
        }
        assert_eq!(id_from_bytes(b"\xff1"), None);
    }

    #[test]
    fn digit_fields_in_place() {
        let line = b"12,007,x,99999999999999999999,";
        let mut position = 0;
        assert_eq!(take_digits(line, &mut position), Some(12));
        assert_eq!(take_digits(line, &mut position), Some(7));
        assert_eq!(take_digits(line, &mut position), None);
        position = 9;
        assert_eq!(take_digits(line, &mut position), None, "20 digits");
        assert_eq!(take_digits(b"5", &mut 0), Some(5));
        assert_eq!(take_digits(b"", &mut 0), None);
        assert_eq!(take_digits(b",", &mut 0), None);
        assert_eq!(take_digits(b"1\r", &mut 0), None);
        assert_eq!(take_digits(b"-1,", &mut 0), None);
        assert_eq!(take_digits(b"+1,", &mut 0), None);

        let line = b"1234567890123456789,123456789012345678901,1511544070";
        let mut position = 0;
        assert_eq!(
            take_digits(line, &mut position),
            Some(1_234_567_890_123_456_789)
        );
        assert_eq!(position, 20);
        assert_eq!(take_digits(line, &mut position), None, "21 digits");
        position = 42;
        assert_eq!(take_digits(line, &mut position), Some(1_511_544_070));
        assert_eq!(position, line.len() + 1);
    }

    #[test]
    fn decimal_allows_leading_zeros() {
        assert_eq!(parse_decimal(b"007"), Some(7));
        assert_eq!(parse_canonical_int(b"007"), None);
        assert_eq!(parse_decimal(b"1a"), None);
        assert_eq!(parse_decimal(&[b'9'; 39]), None);
    }

    #[test]
    fn shown_values_are_cut() {
        assert_eq!(show(b"clk"), "\"clk\"");
        let long = show(&[b'1'; 100]);
        assert!(long.ends_with("... (100 bytes)"), "{long}");
        assert!(invalid_value("item id", b"1\xc3", "an integer").contains("UTF-8"));
    }
}
