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

/// Reads the run of ASCII digits of `line` that starts at `start`, as [`read_digits`] does.
///
/// In a line of at least 16 bytes, a run of under 16 digits is found from the mask of the 16
/// bytes at `start` (or of the line's last 16 bytes). Its value is then read with one or two
/// word loads and no loop. Longer runs and shorter lines go to [`read_digits`].
#[inline(always)]
pub(crate) fn read_run(line: &[u8], start: usize) -> (usize, u64) {
    if line.len() >= 16 && start <= line.len() {
        let window = start.min(line.len() - 16);
        let skip = start - window;
        let mask = non_digit_bits(exact_word(line, window))
            | non_digit_bits(exact_word(line, window + 8)) << 8;
        // The bit at `16 - skip` marks the end of the window: the end of the line when
        // the window was moved back, otherwise a run of 16 or more digits.
        let count = (mask >> skip | 1 << (16 - skip)).trailing_zeros() as usize;
        if count < 16 {
            let value = match count {
                0 => 0,
                _ => checked_run_value(line, start, start + count),
            };
            return (count, value);
        }
    }
    read_digits(line, start)
}

/// Returns the value of a run of 1 to 19 ASCII digits at `start..end` of `line`.
///
/// The caller must have checked that every byte of the run is a digit, and the line must be at
/// least 16 bytes long, so that each word read here lies inside the line. The run is read as
/// one to three words with no loop: the first word contains the leading digits, and the
/// words that end at `end - 8` and `end` contain the last 8 and 16.
#[inline(always)]
pub(crate) fn checked_run_value(line: &[u8], start: usize, end: usize) -> u64 {
    debug_assert!(line.len() >= 16 && start < end && end - start <= 19 && end <= line.len());
    let count = end - start;
    if count <= 8 {
        if start + 8 <= line.len() {
            return leading_digits_value(exact_word(line, start), count);
        }
        // A short run at the end of the line: its digits are the last bytes of the word.
        return trailing_digits_value(exact_word(line, end - 8), count);
    }
    let last_eight = trailing_digits_value(exact_word(line, end - 8), 8);
    if count <= 16 {
        let high = leading_digits_value(exact_word(line, start), count - 8);
        return high * POWERS_OF_TEN[8] + last_eight;
    }
    let high = leading_digits_value(exact_word(line, start), count - 16);
    let middle = trailing_digits_value(exact_word(line, end - 16), 8);
    (high * POWERS_OF_TEN[8] + middle) * POWERS_OF_TEN[8] + last_eight
}

/// Returns the 8 bytes of `line` at `start..start + 8` as a little-endian word. The range must
/// lie inside the line.
#[inline(always)]
pub(crate) fn exact_word(line: &[u8], start: usize) -> u64 {
    u64::from_le_bytes(
        line[start..start + 8]
            .try_into()
            .expect("the slice has 8 bytes"),
    )
}

/// Returns the value of the first `count` bytes (1 to 8) of `word`, which must be digits.
#[inline(always)]
pub(crate) fn leading_digits_value(word: u64, count: usize) -> u64 {
    // A digit's low nibble is its value. Shifting the digits to the top leaves zero bytes
    // below them, which read as leading zeros.
    eight_digits_value((word & lanes(0x0F)) << (8 * (8 - count)))
}

/// Returns the value of the last `count` bytes (1 to 8) of `word`, which must be digits.
#[inline(always)]
fn trailing_digits_value(word: u64, count: usize) -> u64 {
    eight_digits_value(word & lanes(0x0F) & (u64::MAX << (8 * (8 - count))))
}

/// Returns a mask with bit `i` set when byte `i` of `line` is not an ASCII digit. The line
/// must be 8 to 64 bytes long.
#[inline(always)]
pub(crate) fn non_digit_mask(line: &[u8]) -> u64 {
    debug_assert!((8..=64).contains(&line.len()), "{} bytes", line.len());
    #[cfg(target_arch = "x86_64")]
    if line.len() >= 16 {
        return non_digit_mask_sse2(line);
    }
    // The word at the end of the line overlaps the one before it, which sets the same bits.
    let last = line.len() - 8;
    let mut mask = non_digit_bits(exact_word(line, last)) << last;
    let mut start = 0;
    while start < last {
        mask |= non_digit_bits(exact_word(line, start)) << start;
        start += 8;
    }
    mask
}

/// Returns [`non_digit_mask`] of a line of 16 to 64 bytes, 16 bytes at a time with SSE2
/// instructions, which every x86_64 processor has.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn non_digit_mask_sse2(line: &[u8]) -> u64 {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };

    let chunk_bits = |start: usize| {
        let bytes = &line[start..start + 16];
        // SAFETY: every x86_64 target enables SSE2, and the unaligned load reads the 16 bytes
        // of `bytes`.
        let digits = unsafe {
            let chunk = _mm_loadu_si128(bytes.as_ptr().cast());
            // Adding 0x46 maps the digits 0x30..=0x39 to 0x76..=0x7F, the ten largest signed
            // bytes, and every other byte to a smaller one.
            let shifted = _mm_add_epi8(chunk, _mm_set1_epi8(0x46));
            _mm_movemask_epi8(_mm_cmpgt_epi8(shifted, _mm_set1_epi8(0x75)))
        };
        u64::from(!(digits as u16))
    };
    // The chunk at the end of the line overlaps the one before it, which sets the same bits.
    let last = line.len() - 16;
    let mut mask = chunk_bits(last) << last;
    let mut start = 0;
    while start < last {
        mask |= chunk_bits(start) << start;
        start += 16;
    }
    mask
}

/// Returns a mask with bit `i` set when byte `i` of `word` (lowest first) is not an ASCII
/// digit.
#[inline(always)]
pub(crate) fn non_digit_bits(word: u64) -> u64 {
    // After the XOR a digit byte is 0 to 9. Adding 0x76 to its low 7 bits sets the high bit
    // for 10 and above and never carries into the next byte, and the OR keeps bytes whose high
    // bit was set already. The multiplication gathers the 8 high bits into the top byte.
    let offset = word ^ lanes(b'0');
    let high_bits = (((offset & lanes(0x7F)) + lanes(0x76)) | offset) & lanes(0x80);
    (high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Returns a mask with bit `i` set when byte `i` of `word` (lowest first) equals `byte`.
#[inline(always)]
pub(crate) fn byte_bits(word: u64, byte: u8) -> u64 {
    // After the XOR the matching bytes are zero. Adding 0x7F to the low 7 bits of a byte sets
    // its high bit unless they are all zero, and it never carries into the next byte. The OR
    // adds the bytes whose high bit was set already, so the high bit is clear only for a zero.
    let offset = word ^ lanes(byte);
    let nonzero = (((offset & lanes(0x7F)) + lanes(0x7F)) | offset) & lanes(0x80);
    ((nonzero ^ lanes(0x80)) >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Returns the value of the first `count` bytes (1 to 16) of the 16 bytes `low` then `high`
/// (each a little-endian word), which must be ASCII digits. The bytes after them may be
/// anything.
#[inline(always)]
pub(crate) fn sixteen_digits_value(low: u64, high: u64, count: usize) -> u64 {
    debug_assert!((1..=16).contains(&count), "{count} digits");
    if count <= 8 {
        return leading_digits_value(low, count);
    }
    // Each word is converted on its own, which avoids shifting the 16 bytes as one `u128` by
    // a variable count.
    let high_count = count - 8;
    leading_digits_value(low, 8) * POWERS_OF_TEN[high_count]
        + leading_digits_value(high, high_count)
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
        let cases: [(&[u8], usize, (usize, u64)); 15] = [
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
            (b"{\"ts\":1511539241}", 6, (10, 1_511_539_241)),
            (b"abcdefghijklmnop1234", 16, (4, 1234)),
            (b"abcdefghijklmnop", 16, (0, 0)),
            (b"1234567890123456,", 0, (16, 1_234_567_890_123_456)),
            (b"123456789012345,x", 0, (15, 123_456_789_012_345)),
        ];
        for (line, start, expected) in cases {
            let shown = String::from_utf8_lossy(line);
            assert_eq!(read_digits(line, start), expected, "{shown} at {start}");
            assert_eq!(read_run(line, start), expected, "{shown} at {start}");
            assert_eq!(
                read_digits_bytewise(line, start),
                expected,
                "{shown} at {start}"
            );
        }
    }

    #[test]
    fn non_digit_mask_marks_every_byte_value() {
        for byte in 0..=255u8 {
            for length in [8, 13, 16, 17, 32, 39, 48, 64] {
                for position in [0, length / 2, length - 1] {
                    let mut line = vec![b'7'; length];
                    line[position] = byte;
                    let expected = if byte.is_ascii_digit() {
                        0
                    } else {
                        1 << position
                    };
                    assert_eq!(
                        non_digit_mask(&line),
                        expected,
                        "byte {byte:#x} at {position} of {length}"
                    );
                }
            }
        }
    }

    #[test]
    fn checked_runs_of_every_length() {
        let line = b"1234567890123456789,9876543210987654321";
        for start in [0, 20] {
            for end in start + 1..=start + 19 {
                assert_eq!(
                    checked_run_value(line, start, end),
                    read_digits_bytewise(&line[..end], start).1,
                    "{start}..{end}"
                );
            }
        }
        let short_end = b"1,2,3,pv,1511539,7";
        assert_eq!(checked_run_value(short_end, 9, 16), 1_511_539);
        assert_eq!(checked_run_value(short_end, 17, 18), 7);
        assert_eq!(checked_run_value(b"0000000000000000000,", 0, 19), 0);
    }

    #[test]
    fn byte_bits_mark_every_byte_value() {
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut text = *b"abcdefgh";
                text[position] = byte;
                let word = u64::from_le_bytes(text);
                let expected = text
                    .iter()
                    .enumerate()
                    .filter(|(_, &value)| value == b'"')
                    .fold(0u64, |mask, (index, _)| mask | 1 << index);
                assert_eq!(
                    byte_bits(word, b'"'),
                    expected,
                    "byte {byte:#x} at {position}"
                );
            }
        }
        assert_eq!(byte_bits(0, 0), 0xFF);
        assert_eq!(byte_bits(u64::MAX, 0xFF), 0xFF);
    }

    #[test]
    fn sixteen_digit_values_of_every_length() {
        let text = *b"1234567890123456";
        let low = u64::from_le_bytes(text[..8].try_into().unwrap());
        let high = u64::from_le_bytes(text[8..].try_into().unwrap());
        for count in 1..=16 {
            let expected = read_digits_bytewise(&text[..count], 0).1;
            assert_eq!(sixteen_digits_value(low, high, count), expected, "{count}");
        }
        let zeros = u64::from_le_bytes(*b"00000000");
        assert_eq!(sixteen_digits_value(zeros, zeros, 16), 0);
        let nines = u64::from_le_bytes(*b"99999999");
        assert_eq!(
            sixteen_digits_value(nines, nines, 16),
            9_999_999_999_999_999
        );
        let garbage = u64::from_le_bytes(*b"7,\xff\"}{ab");
        assert_eq!(sixteen_digits_value(garbage, u64::MAX, 1), 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        #[test]
        fn sixteen_digit_values_match_bytewise(
            digits in "[0-9]{1,16}",
            after in prop::collection::vec(any::<u8>(), 16),
        ) {
            let mut bytes = digits.clone().into_bytes();
            bytes.extend_from_slice(&after[..16 - digits.len()]);
            let low = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let high = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
            prop_assert_eq!(
                sixteen_digits_value(low, high, digits.len()),
                digits.parse::<u64>().unwrap()
            );
        }

        #[test]
        fn non_digit_mask_matches_bytewise(
            line in prop::collection::vec(
                prop_oneof![6 => b'0'..=b'9', 1 => any::<u8>(), 1 => Just(b',')],
                8..=64,
            ),
        ) {
            let expected = line
                .iter()
                .enumerate()
                .filter(|(_, byte)| !byte.is_ascii_digit())
                .fold(0u64, |mask, (position, _)| mask | 1 << position);
            prop_assert_eq!(non_digit_mask(&line), expected);
        }

        #[test]
        fn checked_runs_match_bytewise_reading(
            prefix in "[0-9,]{0,30}",
            digits in "[0-9]{1,19}",
            suffix in "[0-9,a-z]{0,30}",
        ) {
            let line = format!("{prefix},{digits},{suffix}");
            prop_assume!(line.len() >= 16);
            let start = prefix.len() + 1;
            let end = start + digits.len();
            prop_assert_eq!(
                checked_run_value(line.as_bytes(), start, end),
                read_digits_bytewise(line.as_bytes(), start).1,
                "{}", line
            );
        }

        #[test]
        fn runs_match_bytewise_reading(
            line in prop::collection::vec(
                prop_oneof![6 => b'0'..=b'9', 1 => any::<u8>(), 1 => Just(b',')],
                0..48,
            ),
            start in 0usize..50,
        ) {
            let expected = read_digits_bytewise(&line, start);
            prop_assert_eq!(read_digits(&line, start), expected);
            prop_assert_eq!(read_run(&line, start), expected);
        }
    }
}
