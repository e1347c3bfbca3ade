//! Event-time parsing into Unix milliseconds: epoch numbers, RFC 3339 and REES46's `... UTC`.
//!
//! Times are not checked against a plausible range, because the engine's late-data policy
//! decides what to do with events far from the rest. The parsers reject text that cannot be
//! read as a time, a negative time, a time that overflows `i64` milliseconds, and an epoch
//! number with more digits than its unit has. Every reader takes Unix seconds of at most 12
//! digits and Unix milliseconds of at most 13, so a time in microseconds (16 digits) or
//! nanoseconds (19) is a bad record, not a date thousands of years ahead.

/// Epoch numbers from this value up (13 digits) are milliseconds and smaller ones are seconds.
/// As seconds it would be the year 33658, and as milliseconds it is September 2001.
pub(crate) const MILLIS_FROM: u64 = 1_000_000_000_000;

/// Epoch numbers from this value up have more than 13 digits, so they are neither Unix seconds
/// nor Unix milliseconds, and are rejected. As milliseconds it is November 2286.
pub(crate) const EPOCH_END: u64 = 10_000_000_000_000;

/// Reason a time could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeError {
    /// Not in any accepted form.
    Invalid,
    /// Before 1970-01-01T00:00:00Z.
    Negative,
    /// Does not fit in `i64` milliseconds.
    OutOfRange,
    /// An epoch number with more digits than this maximum of its unit.
    TooManyDigits(u32),
}

impl TimeError {
    /// Returns a reason for a bad record about the field `name` with the value `field`.
    pub(crate) fn reason(self, name: &str, field: &[u8], expected: &str) -> String {
        let shown = super::fields::show(field);
        match self {
            TimeError::Invalid => super::fields::invalid_value(name, field, expected),
            TimeError::Negative => format!("{name} {shown} is before 1970 (negative)"),
            TimeError::OutOfRange => format!("{name} {shown} is too large"),
            TimeError::TooManyDigits(max_digits) => format!(
                "{name} {shown} has more than {max_digits} digits, so it is not {expected}. \
                 Convert a time in microseconds or another finer unit before reading it."
            ),
        }
    }
}

/// Parses an epoch number: seconds below 10^12, milliseconds from 10^12 on, and rejected from
/// 10^13 on.
///
/// Accepts decimal digits with an optional fraction, so `1511539200.25` is 1511539200250 ms.
/// Fractions of a millisecond are dropped. An exponent form such as `1.5e9` is accepted too.
pub(crate) fn parse_epoch(text: &[u8]) -> Result<i64, TimeError> {
    if let Some(rest) = text.strip_prefix(b"-") {
        return match parse_epoch(rest) {
            Ok(0) => Ok(0),
            Ok(_) | Err(TimeError::OutOfRange | TimeError::TooManyDigits(_)) => {
                Err(TimeError::Negative)
            }
            Err(error) => Err(error),
        };
    }
    let (integer, fraction) = match memchr::memchr(b'.', text) {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    let all_digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    if !all_digits(integer) || fraction.is_some_and(|part| !all_digits(part)) {
        return parse_epoch_float(text);
    }

    let significant = trim_leading_zeros(integer);
    if significant.len() > 13 {
        return Err(TimeError::TooManyDigits(13));
    }
    let value = super::fields::parse_decimal(significant).unwrap_or(0);
    let Some(digits) = fraction.filter(|_| value < u128::from(MILLIS_FROM)) else {
        return epoch_millis(value);
    };
    let mut sub_second: u128 = 0;
    for position in 0..3 {
        let digit = digits.get(position).map_or(0, |byte| byte - b'0');
        sub_second = sub_second * 10 + u128::from(digit);
    }
    i64::try_from(value * 1000 + sub_second).map_err(|_| TimeError::OutOfRange)
}

/// Returns the Unix milliseconds of a whole epoch number: seconds below 10^12, milliseconds
/// from 10^12 on, and an error from 10^13 on.
pub(crate) fn epoch_millis(value: u128) -> Result<i64, TimeError> {
    if value >= u128::from(EPOCH_END) {
        return Err(TimeError::TooManyDigits(13));
    }
    let millis = if value >= u128::from(MILLIS_FROM) {
        value
    } else {
        value * 1000
    };
    i64::try_from(millis).map_err(|_| TimeError::OutOfRange)
}

/// Parses an epoch number in exponent form, such as `1.5115392e9`.
fn parse_epoch_float(text: &[u8]) -> Result<i64, TimeError> {
    let has_exponent = text.iter().any(|&byte| byte == b'e' || byte == b'E');
    let first_is_digit = text.first().is_some_and(u8::is_ascii_digit);
    if !has_exponent || !first_is_digit {
        return Err(TimeError::Invalid);
    }
    let value: f64 = std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(TimeError::Invalid)?;
    if !value.is_finite() {
        return Err(TimeError::OutOfRange);
    }
    if value >= EPOCH_END as f64 {
        return Err(TimeError::TooManyDigits(13));
    }
    let millis = if value >= MILLIS_FROM as f64 {
        value.floor()
    } else {
        (value * 1000.0).floor()
    };
    Ok(millis as i64)
}

/// Parses whole Unix seconds of at most 12 digits, written as decimal digits only, and returns
/// milliseconds. A longer number would be read as milliseconds by `parse_epoch`.
pub(crate) fn parse_seconds_digits(text: &[u8]) -> Result<i64, TimeError> {
    let seconds = parse_digits_i64(text, 12)?;
    Ok(seconds * 1000)
}

/// Parses Unix milliseconds of at most 13 digits, written as decimal digits only.
pub(crate) fn parse_millis_digits(text: &[u8]) -> Result<i64, TimeError> {
    parse_digits_i64(text, 13)
}

/// Parses an epoch number of at most 13 digits, written as decimal digits only, and returns
/// milliseconds. As in [`parse_epoch`], a value below 10^12 is seconds and a larger one is
/// milliseconds.
///
/// This suits a column documented as milliseconds that some exports fill with seconds, which
/// read as milliseconds would fall in January 1970.
pub(crate) fn parse_epoch_digits(text: &[u8]) -> Result<i64, TimeError> {
    // Never negative: `parse_digits_i64` rejects a minus sign before a non-zero value.
    let value = parse_millis_digits(text)?;
    epoch_millis(u128::from(value.unsigned_abs()))
}

/// Parses a decimal number of at most `max_digits` digits, not counting leading zeros.
fn parse_digits_i64(text: &[u8], max_digits: u32) -> Result<i64, TimeError> {
    let (negative, digits) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(TimeError::Invalid);
    }
    let significant = trim_leading_zeros(digits);
    if negative && !significant.is_empty() {
        return Err(TimeError::Negative);
    }
    if significant.len() > max_digits as usize {
        return Err(TimeError::TooManyDigits(max_digits));
    }
    let value = super::fields::parse_decimal(significant).unwrap_or(0);
    i64::try_from(value).map_err(|_| TimeError::OutOfRange)
}

fn trim_leading_zeros(digits: &[u8]) -> &[u8] {
    let first = digits
        .iter()
        .position(|&byte| byte != b'0')
        .unwrap_or(digits.len());
    &digits[first..]
}

/// Parses an RFC 3339 date-time such as `2017-11-25T08:00:00Z` or `2017-11-25T16:00:00.5+08:00`.
///
/// Also accepts a lower-case `t` or `z` and a space between date and time, which RFC 3339
/// section 5.6 allows. A leap second `:60` counts as the first second of the next minute.
pub(crate) fn parse_rfc3339(text: &[u8]) -> Result<i64, TimeError> {
    let (local_millis, rest) = parse_date_time(text).ok_or(TimeError::Invalid)?;
    let offset_seconds = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = two_digits(*h1, *h2).filter(|&hours| hours <= 23);
            let minutes = two_digits(*m1, *m2).filter(|&minutes| minutes <= 59);
            let (Some(hours), Some(minutes)) = (hours, minutes) else {
                return Err(TimeError::Invalid);
            };
            let seconds = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return Err(TimeError::Invalid),
    };
    finish_millis(local_millis - offset_seconds * 1000)
}

/// Parses REES46's `2019-10-01 00:00:00 UTC`, and RFC 3339 as a fallback.
pub(crate) fn parse_utc_suffixed(text: &[u8]) -> Result<i64, TimeError> {
    let Some(date_time) = text.strip_suffix(b" UTC") else {
        return parse_rfc3339(text);
    };
    match parse_date_time(date_time) {
        Some((millis, b"")) => finish_millis(millis),
        _ => Err(TimeError::Invalid),
    }
}

fn finish_millis(millis: i64) -> Result<i64, TimeError> {
    if millis < 0 {
        Err(TimeError::Negative)
    } else {
        Ok(millis)
    }
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction]` and returns the milliseconds since the epoch as if
/// the time were UTC, plus the text after it.
fn parse_date_time(text: &[u8]) -> Option<(i64, &[u8])> {
    let [y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, separator, h1, h2, b':', mi1, mi2, b':', s1, s2, rest @ ..] =
        text
    else {
        return None;
    };
    if !matches!(separator, b'T' | b't' | b' ') {
        return None;
    }
    let year = i64::from(two_digits(*y1, *y2)? * 100 + two_digits(*y3, *y4)?);
    let month = two_digits(*mo1, *mo2)?;
    let day = two_digits(*d1, *d2)?;
    let hour = two_digits(*h1, *h2)?;
    let minute = two_digits(*mi1, *mi2)?;
    let second = two_digits(*s1, *s2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }

    let mut rest = rest;
    let mut millis_of_second = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let length = fraction
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if length == 0 {
            return None;
        }
        for position in 0..3 {
            let digit = fraction.get(position).filter(|_| position < length);
            millis_of_second =
                millis_of_second * 10 + digit.map_or(0, |byte| i64::from(byte - b'0'));
        }
        rest = &fraction[length..];
    }

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some((seconds * 1000 + millis_of_second, rest))
}

fn two_digits(tens: u8, ones: u8) -> Option<u32> {
    if tens.is_ascii_digit() && ones.is_ascii_digit() {
        Some(u32::from(tens - b'0') * 10 + u32::from(ones - b'0'))
    } else {
        None
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Returns the number of days from 1970-01-01 to the given date of the proleptic Gregorian
/// calendar, with Howard Hinnant's `days_from_civil` algorithm (eras of 400 years).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    // Months counted from March, so that the leap day is the last day of the year.
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_and_millis() {
        assert_eq!(parse_epoch(b"1511539200"), Ok(1_511_539_200_000));
        assert_eq!(parse_epoch(b"1511539200123"), Ok(1_511_539_200_123));
        assert_eq!(parse_epoch(b"999999999999"), Ok(999_999_999_999_000));
        assert_eq!(parse_epoch(b"1000000000000"), Ok(1_000_000_000_000));
        assert_eq!(parse_epoch(b"0"), Ok(0));
        assert_eq!(parse_epoch(b"1511539200.25"), Ok(1_511_539_200_250));
        assert_eq!(parse_epoch(b"1511539200.9999"), Ok(1_511_539_200_999));
        assert_eq!(parse_epoch(b"1511539200123.7"), Ok(1_511_539_200_123));
        assert_eq!(parse_epoch(b"1.5115392e9"), Ok(1_511_539_200_000));
        assert_eq!(parse_epoch(b"1.5115392E12"), Ok(1_511_539_200_000));
    }

    #[test]
    fn epoch_rejections() {
        assert_eq!(parse_epoch(b"-1"), Err(TimeError::Negative));
        assert_eq!(parse_epoch(b"-0"), Ok(0));
        assert_eq!(parse_epoch(b"15116OO200"), Err(TimeError::Invalid));
        assert_eq!(parse_epoch(b""), Err(TimeError::Invalid));
        assert_eq!(parse_epoch(b"1."), Err(TimeError::Invalid));
        assert_eq!(parse_epoch(b".5"), Err(TimeError::Invalid));
        assert_eq!(parse_epoch(b"+5"), Err(TimeError::Invalid));
        assert_eq!(
            parse_epoch(b"99999999999999999999"),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(parse_epoch(&[b'9'; 60]), Err(TimeError::TooManyDigits(13)));
        assert_eq!(parse_epoch(b"1e400"), Err(TimeError::OutOfRange));
        assert_eq!(parse_epoch(b"e9"), Err(TimeError::Invalid));
    }

    #[test]
    fn epoch_digits_seconds_below_boundary() {
        assert_eq!(parse_epoch_digits(b"1433221332"), Ok(1_433_221_332_000));
        assert_eq!(parse_epoch_digits(b"999999999999"), Ok(999_999_999_999_000));
        assert_eq!(parse_epoch_digits(b"1000000000000"), Ok(1_000_000_000_000));
        assert_eq!(parse_epoch_digits(b"1433221332117"), Ok(1_433_221_332_117));
        assert_eq!(parse_epoch_digits(b"0"), Ok(0));
        assert_eq!(
            parse_epoch_digits(b"14332213321170"),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(parse_epoch_digits(b"-1"), Err(TimeError::Negative));
        assert_eq!(parse_epoch_digits(b"1433221332.5"), Err(TimeError::Invalid));
    }

    #[test]
    fn digit_only_forms() {
        assert_eq!(parse_seconds_digits(b"1511658000"), Ok(1_511_658_000_000));
        assert_eq!(
            parse_seconds_digits(b"-1511658000"),
            Err(TimeError::Negative)
        );
        assert_eq!(
            parse_seconds_digits(b"1511658000.0"),
            Err(TimeError::Invalid)
        );
        assert_eq!(
            parse_seconds_digits(b"9223372036854775807"),
            Err(TimeError::TooManyDigits(12))
        );
        assert_eq!(parse_millis_digits(b"1431328072718"), Ok(1_431_328_072_718));
        assert_eq!(parse_millis_digits(b"00012"), Ok(12));
        assert_eq!(
            parse_millis_digits(b"99999999999999999999"),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(parse_millis_digits(b""), Err(TimeError::Invalid));
    }

    #[test]
    fn epoch_digit_limits() {
        let micros = b"1511539241000000";
        let millis = b"1511539241000";
        assert_eq!(parse_epoch(micros), Err(TimeError::TooManyDigits(13)));
        assert_eq!(
            parse_epoch(b"1511539241000000.5"),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(
            parse_epoch(b"1.511539241e15"),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(parse_epoch(b"-1511539241000000"), Err(TimeError::Negative));

        // The largest accepted values, and leading zeros, which do not count.
        assert_eq!(
            epoch_millis(1_511_539_241_000_000),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(
            epoch_millis(u128::from(EPOCH_END) - 1),
            Ok(9_999_999_999_999)
        );
        assert_eq!(parse_epoch(b"9999999999999"), Ok(9_999_999_999_999));
        assert_eq!(parse_epoch(b"00001511539241000"), Ok(1_511_539_241_000));

        // Readers whose format fixes the unit: milliseconds and seconds.
        assert_eq!(parse_millis_digits(millis), Ok(1_511_539_241_000));
        assert_eq!(
            parse_millis_digits(micros),
            Err(TimeError::TooManyDigits(13))
        );
        assert_eq!(
            parse_seconds_digits(b"999999999999"),
            Ok(999_999_999_999_000)
        );
        assert_eq!(
            parse_seconds_digits(millis),
            Err(TimeError::TooManyDigits(12))
        );
        assert_eq!(
            parse_seconds_digits(b"0001511539241"),
            Ok(1_511_539_241_000)
        );
    }

    #[test]
    fn too_many_digits_reason_names_the_units() {
        let reason = TimeError::TooManyDigits(13).reason(
            "ts",
            b"1511539241000000",
            "Unix seconds, Unix milliseconds or an RFC 3339 time",
        );
        assert!(reason.contains("1511539241000000"), "{reason}");
        assert!(reason.contains("more than 13 digits"), "{reason}");
        assert!(reason.contains("microseconds"), "{reason}");
    }

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339(b"2017-11-25T00:00:00Z"),
            Ok(1_511_568_000_000)
        );
        assert_eq!(
            parse_rfc3339(b"2017-11-25T08:00:00+08:00"),
            Ok(1_511_568_000_000)
        );
        assert_eq!(
            parse_rfc3339(b"2017-11-24T19:30:00-04:30"),
            Ok(1_511_568_000_000)
        );
        assert_eq!(
            parse_rfc3339(b"2017-11-25t00:00:00.5z"),
            Ok(1_511_568_000_500)
        );
        assert_eq!(
            parse_rfc3339(b"2017-11-25 00:00:00.123456Z"),
            Ok(1_511_568_000_123)
        );
        assert_eq!(parse_rfc3339(b"2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(
            parse_rfc3339(b"2016-12-31T23:59:60Z"),
            Ok(1_483_228_800_000)
        );
        assert_eq!(
            parse_rfc3339(b"2400-03-01T00:00:00Z"),
            Ok(13_574_649_600_000)
        );
    }

    #[test]
    fn rfc3339_rejections() {
        let invalid: [&[u8]; 10] = [
            b"2017-11-25T00:00:00",
            b"2017-11-25",
            b"2017-13-01T00:00:00Z",
            b"2017-02-29T00:00:00Z",
            b"1900-02-29T00:00:00Z",
            b"2017-11-25T24:00:00Z",
            b"2017-11-25T00:00:00.Z",
            b"2017-11-25T00:00:00+0800",
            b"2017-11-25X00:00:00Z",
            b"2017-11-25T00:00:00Z ",
        ];
        for text in invalid {
            let shown = String::from_utf8_lossy(text);
            assert_eq!(parse_rfc3339(text), Err(TimeError::Invalid), "{shown}");
        }
        assert_eq!(
            parse_rfc3339(b"1969-12-31T23:59:59Z"),
            Err(TimeError::Negative)
        );
    }

    #[test]
    fn rees46_time() {
        assert_eq!(
            parse_utc_suffixed(b"2019-10-01 00:00:00 UTC"),
            Ok(1_569_888_000_000)
        );
        assert_eq!(
            parse_utc_suffixed(b"2019-10-01 02:50:00 UTC"),
            Ok(1_569_898_200_000)
        );
        assert_eq!(
            parse_utc_suffixed(b"2019-10-01T00:00:00Z"),
            Ok(1_569_888_000_000)
        );
        assert_eq!(
            parse_utc_suffixed(b"2019-10-01 00:00:00"),
            Err(TimeError::Invalid)
        );
        assert_eq!(
            parse_utc_suffixed(b"2019-10-01 00:00 UTC"),
            Err(TimeError::Invalid)
        );
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(1600, 1, 1), -135_140);
    }
}
