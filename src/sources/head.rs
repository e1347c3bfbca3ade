//! Format detection on whole lines.
//!
//! A pipe can return a first read that ends inside the first line, or that contains only a
//! blank line, so one look at the read buffer may see too little to detect the format.
//! [`detect_input_format`] reads on until the start of the input contains a complete non-blank
//! line, then returns a reader that replays those bytes first.

use std::io::{self, BufRead, Cursor, Read};

use super::{detect_format, Format, DEFAULT_MAX_LINE_BYTES};

/// Maximum number of bytes read ahead to detect a format: the longest line a reader accepts.
const MAX_HEAD_BYTES: usize = DEFAULT_MAX_LINE_BYTES;

/// Number of non-blank lines that [`detect_format`] looks at.
const DETECTION_LINES: usize = 8;

/// Format detection result for the start of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputHead {
    /// The input has no bytes.
    Empty,
    /// The input has only blank lines (and perhaps a UTF-8 byte order mark), so it contains no
    /// record in any format.
    OnlyBlankLines,
    /// The format detected from the first lines.
    Detected(Format),
    /// No known format: `utf16` is set when the input starts with a UTF-16 byte order mark.
    Unknown { utf16: bool },
}

/// Detects the format of `reader` from its first complete lines.
///
/// Reads until the input contains a line that [`detect_format`] recognises, 8 complete non-blank
/// lines, [`MAX_HEAD_BYTES`] bytes or its end. Returns a reader that yields every byte of the
/// input from the start, with what the head shows.
///
/// # Errors
///
/// Returns the error of a failed read.
pub fn detect_input_format(
    mut reader: Box<dyn BufRead + Send>,
) -> io::Result<(Box<dyn BufRead + Send>, InputHead)> {
    // Fast path: the first read usually contains whole lines, and the reader is returned as is.
    let first = fill(reader.as_mut())?;
    if first.is_empty() {
        return Ok((reader, InputHead::Empty));
    }
    if let Some(format) = detect_format(complete_lines(first)) {
        return Ok((reader, InputHead::Detected(format)));
    }

    let mut head = Vec::new();
    let mut ended = false;
    let mut lines = LineScan::default();
    loop {
        let chunk = fill(reader.as_mut())?;
        if chunk.is_empty() {
            ended = true;
            break;
        }
        let length = chunk.len().min(MAX_HEAD_BYTES - head.len());
        head.extend_from_slice(&chunk[..length]);
        reader.consume(length);
        if head.len() >= MAX_HEAD_BYTES || lines.settled(&head) {
            break;
        }
    }

    // At the end of the input or of the read-ahead, the last line counts even if cut off,
    // as a single look at the buffer counted it before.
    let seen = if ended || head.len() >= MAX_HEAD_BYTES {
        &head[..]
    } else {
        complete_lines(&head)
    };
    let verdict = match detect_format(seen) {
        Some(format) => InputHead::Detected(format),
        None if ended && only_blank(&head) => InputHead::OnlyBlankLines,
        None => InputHead::Unknown {
            utf16: head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF"),
        },
    };
    let replay: Box<dyn BufRead + Send> = Box::new(Cursor::new(head).chain(reader));
    Ok((replay, verdict))
}

/// Returns the buffered bytes of `reader`, reading more when its buffer is empty.
pub(super) fn fill(reader: &mut dyn BufRead) -> io::Result<&[u8]> {
    loop {
        match reader.fill_buf() {
            Ok(_) => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    reader.fill_buf()
}

/// Returns `bytes` up to and including its last newline.
fn complete_lines(bytes: &[u8]) -> &[u8] {
    match memchr::memrchr(b'\n', bytes) {
        Some(last) => &bytes[..=last],
        None => &[],
    }
}

/// Progress through the complete lines of a growing head, so that each byte is scanned once
/// however small the reads are.
#[derive(Default)]
struct LineScan {
    /// Bytes of the head whose lines were checked.
    checked: usize,
    non_blank: usize,
}

impl LineScan {
    /// Checks the lines that `head` completed since the last call. Returns true once one of
    /// them has a known format or [`DETECTION_LINES`] non-blank lines were checked.
    fn settled(&mut self, head: &[u8]) -> bool {
        while let Some(length) = memchr::memchr(b'\n', &head[self.checked..]) {
            let line = &head[self.checked..self.checked + length];
            self.checked += length + 1;
            if !line.trim_ascii().is_empty() {
                self.non_blank += 1;
            }
            if self.non_blank >= DETECTION_LINES || detect_format(line).is_some() {
                return true;
            }
        }
        false
    }
}

fn only_blank(bytes: &[u8]) -> bool {
    let bytes = super::strip_utf8_bom(bytes);
    bytes.trim_ascii().is_empty()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::BufReader;

    use super::*;

    /// A reader that returns each of its chunks from a separate read, as a pipe fed by a slow
    /// writer does.
    struct Chunks(VecDeque<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            let Some(mut chunk) = self.0.pop_front() else {
                return Ok(0);
            };
            let length = chunk.len().min(buffer.len());
            buffer[..length].copy_from_slice(&chunk[..length]);
            if length < chunk.len() {
                self.0.push_front(chunk.split_off(length));
            }
            Ok(length)
        }
    }

    fn chunked(chunks: &[&[u8]]) -> Box<dyn BufRead + Send> {
        let chunks = chunks.iter().map(|chunk| chunk.to_vec()).collect();
        Box::new(BufReader::new(Chunks(chunks)))
    }

    fn detect(chunks: &[&[u8]]) -> (InputHead, Vec<u8>) {
        let (mut reader, head) = detect_input_format(chunked(chunks)).unwrap();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).unwrap();
        (head, bytes)
    }

    #[test]
    fn first_read_inside_first_line() {
        let (head, bytes) = detect(&[b"1,2268318,", b"2520377,pv,1511544070\n1,2,3,pv,9\n"]);
        assert_eq!(head, InputHead::Detected(Format::Taobao));
        assert_eq!(bytes, b"1,2268318,2520377,pv,1511544070\n1,2,3,pv,9\n");
    }

    #[test]
    fn first_read_only_blank_line() {
        let (head, bytes) = detect(&[b"\n", b"{\"user\":1}\n"]);
        assert_eq!(head, InputHead::Detected(Format::Jsonl));
        assert_eq!(bytes, b"\n{\"user\":1}\n");
    }

    #[test]
    fn last_line_without_newline() {
        let (head, bytes) = detect(&[b"1,2,3,", b"pv,1511544070"]);
        assert_eq!(head, InputHead::Detected(Format::Taobao));
        assert_eq!(bytes, b"1,2,3,pv,1511544070");
    }

    #[test]
    fn blank_lines_and_bom_only() {
        let (head, bytes) = detect(&[b"\xEF\xBB\xBF\r\n", b" \n\n"]);
        assert_eq!(head, InputHead::OnlyBlankLines);
        assert_eq!(bytes, b"\xEF\xBB\xBF\r\n \n\n");
    }

    #[test]
    fn empty_and_unknown_inputs() {
        assert_eq!(detect(&[]).0, InputHead::Empty);
        let (head, bytes) = detect(&[b"hello ", b"world\n"]);
        assert_eq!(head, InputHead::Unknown { utf16: false });
        assert_eq!(bytes, b"hello world\n");
        let utf16 = detect(&[b"\xFF\xFE{\x00", b"\n\x00"]).0;
        assert_eq!(utf16, InputHead::Unknown { utf16: true });
    }

    #[test]
    fn unknown_lines_stop_the_read_ahead() {
        let lines = b"a\nb\nc\nd\ne\nf\ng\nh\n";
        let rest = vec![b'x'; 3 * MAX_HEAD_BYTES];
        let (head, bytes) = detect(&[lines, &rest]);
        assert_eq!(head, InputHead::Unknown { utf16: false });
        assert_eq!(bytes.len(), lines.len() + rest.len());
    }

    #[test]
    fn read_ahead_is_bounded() {
        let long = vec![b'x'; 2 * MAX_HEAD_BYTES];
        let (mut reader, head) = detect_input_format(chunked(&[b"x", &long])).unwrap();
        assert_eq!(head, InputHead::Unknown { utf16: false });
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 1 + long.len());
    }
}
