//! Splitting an input into physical lines, with a bound on the memory that one line may take.

use std::io::{self, BufRead};

use super::{BadRecord, LineParser, Parsed};

/// Default maximum length of one line, in bytes, before it is cut and reported as a bad record.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

/// The UTF-8 byte order mark, which some Windows tools write at the start of a text file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Returns `bytes` without a UTF-8 byte order mark at its start.
pub fn strip_utf8_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// One physical line of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based physical line number. Blank lines count.
    pub number: u64,
    /// Line content without the `\n` and without one trailing `\r`. When `truncated` is set,
    /// only the first `max_line_bytes` bytes of the line.
    pub bytes: &'a [u8],
    /// Whether the line was longer than the limit and was cut.
    pub truncated: bool,
}

/// Iterator-like reader of physical lines that borrows each line from its own buffers.
///
/// A UTF-8 byte order mark at the start of the input is removed, and a last line without a
/// final newline is still returned. A line longer than the limit is returned cut to the limit
/// with `truncated` set. The rest of that line is read and dropped, so the next call starts at
/// the next line, and memory stays bounded by the limit plus the reader's buffer.
pub struct LineSplitter<R: BufRead> {
    reader: R,
    max_line_bytes: usize,
    line_number: u64,
    /// Number of bytes of the reader's buffer that belong to the last returned line. They are
    /// consumed on the next call, because the returned slice borrows them.
    pending_consume: usize,
    /// Content of a line that spans more than one fill of the reader's buffer.
    spill: Vec<u8>,
    /// Whether a read error interrupted a line after `spill` took its first bytes.
    unfinished: bool,
    finished: bool,
}

impl<R: BufRead> LineSplitter<R> {
    /// Creates a splitter with the default line limit of [`DEFAULT_MAX_LINE_BYTES`].
    pub fn new(reader: R) -> Self {
        LineSplitter {
            reader,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            line_number: 0,
            pending_consume: 0,
            spill: Vec::new(),
            unfinished: false,
            finished: false,
        }
    }

    /// Sets the maximum line length in bytes, not counting the line ending. Must be at least 1.
    pub fn with_max_line_bytes(mut self, max_line_bytes: usize) -> Self {
        assert!(
            max_line_bytes > 0,
            "the maximum line length must be at least 1 byte"
        );
        self.max_line_bytes = max_line_bytes;
        self
    }

    /// Numbers the lines from `lines_before + 1`, for a reader that starts after
    /// `lines_before` lines of the input.
    pub fn with_lines_before(mut self, lines_before: u64) -> Self {
        self.line_number = lines_before;
        self
    }

    /// Returns the maximum line length in bytes.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Returns the number of the last line returned, or 0 before the first.
    pub fn line_number(&self) -> u64 {
        self.line_number
    }

    /// Reads the next physical line, or returns `None` at the end of the input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        if self.pending_consume > 0 {
            self.reader.consume(self.pending_consume);
            self.pending_consume = 0;
        }
        if self.finished {
            return Ok(None);
        }

        // Fast path: the whole line is already in the reader's buffer and is returned in place.
        // The buffer is fetched twice because a slice returned from inside the loop below
        // would keep `self.reader` borrowed for the rest of the function.
        let newline = loop {
            match self.reader.fill_buf() {
                Ok(buffer) => break memchr::memchr(b'\n', buffer),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        };
        if let Some(position) = newline {
            let buffer = self.reader.fill_buf()?;
            self.pending_consume = position + 1;
            self.line_number += 1;
            let content = &buffer[..position];
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            return Ok(Some(cut_line(
                content,
                self.line_number,
                self.max_line_bytes,
            )));
        }

        // Slow path: gather the line across buffer fills, keeping at most one byte more than
        // the limit so that a final `\r` can still be distinguished from content.
        self.spill.clear();
        let keep = self.max_line_bytes.saturating_add(1);
        let mut total: u64 = 0;
        let mut ends_with_cr = false;
        loop {
            let buffer = match self.reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.unfinished = total > 0;
                    return Err(error);
                }
            };
            if buffer.is_empty() {
                self.finished = true;
                if total == 0 {
                    return Ok(None);
                }
                break;
            }
            let (chunk, consumed, complete) = match memchr::memchr(b'\n', buffer) {
                Some(position) => (&buffer[..position], position + 1, true),
                None => (buffer, buffer.len(), false),
            };
            if let Some(&last) = chunk.last() {
                ends_with_cr = last == b'\r';
            }
            total += chunk.len() as u64;
            let room = keep.saturating_sub(self.spill.len());
            self.spill
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.reader.consume(consumed);
            if complete {
                break;
            }
        }

        self.line_number += 1;
        let content_length = total - u64::from(ends_with_cr);
        if content_length <= self.max_line_bytes as u64 {
            // The whole line fits, so `spill` contains all of it, plus the `\r` if there was one.
            self.spill.truncate(content_length as usize);
        }
        Ok(Some(cut_line(
            &self.spill,
            self.line_number,
            self.max_line_bytes,
        )))
    }

    /// Returns the line that the last read error interrupted, as far as it was read, once.
    ///
    /// A caller that knows why the input ended early (a shutdown that cut a compressed
    /// stream) can then report the line instead of dropping it unseen.
    pub fn take_unfinished(&mut self) -> Option<Line<'_>> {
        if !std::mem::take(&mut self.unfinished) {
            return None;
        }
        self.line_number += 1;
        Some(cut_line(&self.spill, self.line_number, self.max_line_bytes))
    }

    /// Reads the next line and parses it, turning a line over the limit into a bad record.
    ///
    /// Returns `None` at the end of the input.
    pub fn next_parsed(
        &mut self,
        parser: &mut (impl LineParser + ?Sized),
    ) -> io::Result<Option<Parsed>> {
        let max_line_bytes = self.max_line_bytes;
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        if line.truncated {
            let reason = format!("line longer than {max_line_bytes} bytes");
            return Ok(Some(Parsed::Bad(BadRecord::new(
                line.number,
                reason,
                line.bytes,
            ))));
        }
        Ok(Some(parser.parse(line.number, line.bytes)))
    }
}

/// Builds a line from its content without the line ending: cuts the content to the limit and
/// removes a UTF-8 byte order mark from its start. A mark starts line 1 of a file saved with
/// one, and the first line of every such file in a concatenation (`cat a.csv b.csv`).
fn cut_line(mut content: &[u8], number: u64, max_line_bytes: usize) -> Line<'_> {
    let truncated = content.len() > max_line_bytes;
    if truncated {
        content = &content[..max_line_bytes];
    }
    content = strip_utf8_bom(content);
    Line {
        number,
        bytes: content,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its bytes and then fails, as a compressed stream cut short does.
    struct FailsAfter(io::Cursor<Vec<u8>>);

    impl io::Read for FailsAfter {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buffer)? {
                0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut")),
                read => Ok(read),
            }
        }
    }

    #[test]
    fn read_error_keeps_unfinished_line() {
        let reader =
            io::BufReader::with_capacity(4, FailsAfter(io::Cursor::new(b"ab\ncde".to_vec())));
        let mut splitter = LineSplitter::new(reader);
        assert_eq!(splitter.next_line().unwrap().unwrap().bytes, b"ab");
        assert!(splitter.next_line().is_err());
        let line = splitter.take_unfinished().expect("the unfinished line");
        assert_eq!(line.number, 2);
        assert_eq!(line.bytes, b"cde");
        assert!(splitter.take_unfinished().is_none());
    }

    #[test]
    fn read_error_between_lines_leaves_none() {
        let reader = io::BufReader::new(FailsAfter(io::Cursor::new(b"ab\n".to_vec())));
        let mut splitter = LineSplitter::new(reader);
        assert_eq!(splitter.next_line().unwrap().unwrap().bytes, b"ab");
        assert!(splitter.next_line().is_err());
        assert!(splitter.take_unfinished().is_none());
    }

    /// Collects (number, content, truncated) for every line, reading through a small buffer so
    /// that lines span several buffer fills.
    fn split(input: &[u8], capacity: usize, max: usize) -> Vec<(u64, Vec<u8>, bool)> {
        let reader = io::BufReader::with_capacity(capacity, input);
        let mut splitter = LineSplitter::new(reader).with_max_line_bytes(max);
        let mut lines = Vec::new();
        while let Some(line) = splitter.next_line().unwrap() {
            lines.push((line.number, line.bytes.to_vec(), line.truncated));
        }
        lines
    }

    fn contents(lines: &[(u64, Vec<u8>, bool)]) -> Vec<&[u8]> {
        lines.iter().map(|(_, bytes, _)| bytes.as_slice()).collect()
    }

    #[test]
    fn crlf_blank_and_unterminated_lines() {
        for capacity in [1, 2, 3, 7, 8192] {
            let lines = split(b"a,b\r\n\r\n\nlast\r", capacity, 100);
            assert_eq!(
                contents(&lines),
                vec![&b"a,b"[..], b"", b"", b"last"],
                "{capacity}"
            );
            let numbers: Vec<u64> = lines.iter().map(|line| line.0).collect();
            assert_eq!(numbers, vec![1, 2, 3, 4]);
        }
    }

    #[test]
    fn final_newline_adds_no_line() {
        assert_eq!(split(b"x\n", 4, 10).len(), 1);
        assert!(split(b"", 4, 10).is_empty());
        assert_eq!(contents(&split(b"\n", 4, 10)), vec![&b""[..]]);
    }

    #[test]
    fn bom_removed_from_every_line() {
        for capacity in [1, 2, 8192] {
            let lines = split(
                b"\xEF\xBB\xBFa\n\xEF\xBB\xBFb\nc\xEF\xBB\xBF",
                capacity,
                100,
            );
            assert_eq!(
                contents(&lines),
                vec![&b"a"[..], b"b", b"c\xEF\xBB\xBF"],
                "{capacity}"
            );
        }
    }

    #[test]
    fn long_line_cut_and_next_line_intact() {
        for capacity in [1, 3, 8192] {
            let lines = split(b"12345678\nabc\n1234\r\n12345\r\n1234\rX", capacity, 4);
            assert_eq!(lines[0], (1, b"1234".to_vec(), true), "{capacity}");
            assert_eq!(lines[1], (2, b"abc".to_vec(), false), "{capacity}");
            // The `\r` does not count towards the limit.
            assert_eq!(lines[2], (3, b"1234".to_vec(), false), "{capacity}");
            assert_eq!(lines[3], (4, b"1234".to_vec(), true), "{capacity}");
            // A `\r` inside a long line is content, not a line ending.
            assert_eq!(lines[4], (5, b"1234".to_vec(), true), "{capacity}");
            assert_eq!(lines.len(), 5);
        }
    }

    #[test]
    fn spill_buffer_stays_bounded() {
        let mut input = vec![b'7'; 100_000];
        input.extend_from_slice(b"\nok\n");
        let reader = io::BufReader::with_capacity(64, input.as_slice());
        let mut splitter = LineSplitter::new(reader).with_max_line_bytes(10);
        let first = splitter.next_line().unwrap().unwrap();
        assert!(first.truncated);
        assert_eq!(first.bytes.len(), 10);
        assert!(
            splitter.spill.capacity() < 1000,
            "{}",
            splitter.spill.capacity()
        );
        let second = splitter.next_line().unwrap().unwrap();
        assert_eq!(second.bytes, b"ok");
        assert_eq!(second.number, 2);
    }
}
