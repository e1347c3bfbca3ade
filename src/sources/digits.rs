//! Reading runs of ASCII decimal digits eight bytes at a time (SWAR: SIMD within a register).
//!
//! Event ids and timestamps are mostly 6 to 10 digits long. A loop over single bytes takes a
//! multiply-add per digit and a hard-to-predict branch at the end of each number. Here each
//! step loads 8 bytes as one little-endian `u64`, finds the first byte that is not a digit with
//! a few bit operations, and converts up to 8 digits with three multiplications.

/// Returns a word with `byte` in each of its 8 byte lanes.
const fn lanes(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// Powers of ten from 10^0 to 10^8, for appending `n` digits to a value.
const POWERS_OF_TEN: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Returns the 8 bytes of `line` that start at `start` as a little-endian word, so the byte at
/// `start` is the lowest. Bytes past the end of the line are zero, which is not a digit.
#[inline(always)]
pub(crate) fn load_word(line: &[u8], start: usize) -> u64 {
    if let Some(bytes) = line.get(start..start + 8) {
        return u64::from_le_bytes(bytes.try_into().expect("the slice has 8 bytes"));
    }
    let remaining = line.len().saturating_sub(start);
    if remaining == 0 {
        return 0;
    }
    if line.len() >= 8 {
        // Load the line's last 8 bytes and shift out those before `start`, which keeps the
        // read inside the line with a single load.
        let last = &line[line.len() - 8..];
        let word = u64::from_le_bytes(last.try_into().expect("the slice has 8 bytes"));
        return word >> (8 * (8 - remaining));
    }
    let mut bytes = [0u8; 8];
    bytes[..remaining].copy_from_slice(&line[start..]);
    u64::from_le_bytes(bytes)
}

/// Returns how many bytes at the start of `word` (lowest first) are ASCII digits, from 0 to 8.
#[inline(always)]
pub(crate) fn digit_run(word: u64) -> usize {
    // A byte is a digit when its high nibble is 3 and adding 6 keeps it at 3 (0x30..=0x39).
    // Only the first non-digit byte matters: the bytes below it are digits, so no carry of the
    // addition reaches it, and a carry out of it changes only bytes after it.
    let high_nibbles = lanes(0xF0);
    let threes = lanes(0x30);
    let not_three = (word & high_nibbles) ^ threes;
    let above_nine = (word.wrapping_add(lanes(0x06)) & high_nibbles) ^ threes;
    ((not_three | above_nine).trailing_zeros() / 8) as usize
}

/// Returns the value of the first `count` bytes of `word`, which must be ASCII digits, with
/// `count` from 1 to 8.
#[inline(always)]
pub(crate) fn digits_value(word: u64, count: usize) -> u64 {
    debug_assert!((1..=8).contains(&count), "{count} digits");
    // Subtracting '0' may borrow across the bytes after the digits, and the shift drops those
    // bytes. The digits move to the top, so zero bytes below them act as leading zeros.
    let digits = word.wrapping_sub(lanes(b'0')) << (8 * (8 - count));
    eight_digits_value(digits)
}

/// Returns the value of 8 digit values (0 to 9) in the bytes of `word`, the lowest byte the
/// most significant digit.
#[inline(always)]
fn eight_digits_value(word: u64) -> u64 {
    // Combine neighbouring digits into 2-digit values in every second byte, then those into
    // 4-digit values in every fourth byte, then the two halves. Each step multiplies by
    // (power of ten << shift) + 1 to add the scaled left neighbour to each lane.
    let pairs = (word.wrapping_mul(10 << 8 | 1) >> 8) & lanes_of_16(0x00FF);
    let quads = (pairs.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_FFFF_0000_FFFF;
    quads.wrapping_mul(10_000 << 32 | 1) >> 32
}

/// Returns a word with `lane` in each of its 4 lanes of 16 bits.
const fn lanes_of_16(lane: u16) -> u64 {
    let lane = lane as u64;
    lane | lane << 16 | lane << 32 | lane << 48
}

/// Reads the run of ASCII digits of `line` that starts at `start`.
///
/// Returns the number of digits and their value. The value is exact for up to 19 digits and
/// wraps beyond, so callers reject longer runs.
#[inline(always)]
pub(crate) fn read_digits(line: &[u8], start: usize) -> (usize, u64) {
    let mut value: u64 = 0;
    let mut cursor = start;
    loop {
        let word = load_word(line, cursor);
        let count = digit_run(word);
        if count == 0 {
            break;
        }
        value = value
            .wrapping_mul(POWERS_OF_TEN[count])
            .wrapping_add(digits_value(word, count));
        cursor += count;
        if count < 8 {
            break;
        }
    }
    (cursor - start, value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Reads the digits at `start` one byte at a time: the reference for [`read_digits`].
    fn read_digits_bytewise(line: &[u8], start: usize) -> (usize, u64) {
        let mut value: u64 = 0;
        let mut count = 0;
        while let Some(&byte) = line.get(start + count) {
            if !byte.is_ascii_digit() {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(byte - b'0'));
            count += 1;
        }
        (count, value)
    }

    #[test]
    fn words_past_the_line_end_are_zero() {
        assert_eq!(load_word(b"12345678", 0), u64::from_le_bytes(*b"12345678"));
        assert_eq!(
            load_word(b"123456789", 3),
            u64::from_le_bytes(*b"456789\0\0")
        );
        assert_eq!(load_word(b"123", 1), u64::from_le_bytes(*b"23\0\0\0\0\0\0"));
        assert_eq!(load_word(b"123", 3), 0);
        assert_eq!(load_word(b"123", 9), 0);
        assert_eq!(load_word(b"", 0), 0);
    }

    #[test]
    fn digit_run_stops_at_first_non_digit() {
        for (text, count) in [
            (&b"12345678"[..], 8),
            (b"1234567,", 7),
            (b"0,999999", 1),
            (b",1234567", 0),
            (b"9/345678", 1),
            (b"9:345678", 1),
            (b"12\xff45678", 2),
            (b"12\x0045678", 2),
            (b"1\xfa\xff\xff\xff\xff\xff\xff", 1),
            (b"123456-8", 6),
            (b"\xb0\xb9\x3a\x2f\x40\x20\x00\x7f", 0),
        ] {
            let word = u64::from_le_bytes(text.try_into().unwrap());
            assert_eq!(
                digit_run(word),
                count,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn digit_run_checks_every_byte_value() {
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut text = *b"55555555";
                text[position] = byte;
                let expected = if byte.is_ascii_digit() { 8 } else { position };
                let word = u64::from_le_bytes(text);
                assert_eq!(digit_run(word), expected, "byte {byte:#x} at {position}");
            }
        }
    }

    #[test]
    fn digit_values_of_every_length() {
        let word = u64::from_le_bytes(*b"98765432");
        let expected = [9, 98, 987, 9876, 98765, 987654, 9876543, 98765432];
        for (count, value) in (1..=8).zip(expected) {
            assert_eq!(digits_value(word, count), value, "{count} digits");
        }
        assert_eq!(digits_value(u64::from_le_bytes(*b"00000000"), 8), 0);
        assert_eq!(
            digits_value(u64::from_le_bytes(*b"99999999"), 8),
            99_999_999
        );
        assert_eq!(digits_value(u64::from_le_bytes(*b"00000001"), 8), 1);
        assert_eq!(
            digits_value(u64::from_le_bytes(*b"10000000"), 8),
            10_000_000
        );
        assert_eq!(digits_value(u64::from_le_bytes(*b"7,\0\0\0\0\0\0"), 1), 7);
    }

    #[test]
    fn runs_of_tricky_lengths() {
        let cases: [(&[u8], usize, (usize, u64)); 10] = [
            (b"", 0, (0, 0)),
            (b"x", 0, (0, 0)),
            (b"0", 0, (1, 0)),
            (b"007,", 0, (3, 7)),
            (b"1,1511544070", 2, (10, 1_511_544_070)),
            (b"12345678", 0, (8, 12_345_678)),
            (b"123456789\r", 0, (9, 123_456_789)),
            (b"18446744073709551615", 0, (20, u64::MAX)),
            (b"9999999999999999999,", 0, (19, 9_999_999_999_999_999_999)),
            (b"-5", 0, (0, 0)),
        ];
        for (line, start, expected) in cases {
            let shown = String::from_utf8_lossy(line);
            assert_eq!(read_digits(line, start), expected, "{shown} at {start}");
            assert_eq!(
                read_digits_bytewise(line, start),
                expected,
                "{shown} at {start}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        #[test]
        fn runs_match_bytewise_reading(
            line in prop::collection::vec(
                prop_oneof![6 => b'0'..=b'9', 1 => any::<u8>(), 1 => Just(b',')],
                0..48,
            ),
            start in 0usize..50,
        ) {
            prop_assert_eq!(read_digits(&line, start), read_digits_bytewise(&line, start));
        }
    }
}
