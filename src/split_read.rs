//! Parsing one plain input file on several threads, each over its own byte range.
//!
//! The file is cut into ranges that each start right after a newline, so every range contains
//! whole lines. A first pass counts the newlines of each range, which gives every thread the
//! number of its first line. So events and bad records carry the same line numbers as in a
//! sequential read. The caller joins the results in range order, which is file order.
//!
//! A read error ends the input as it does in a sequential read: the range that hit it keeps
//! its lines before the error, its unfinished line becomes a bad record, and the later ranges
//! are dropped.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;

use veer_models::Event;

use crate::ingest::{LineCounts, SourceProgress, DAMAGE_CUT_REASON};
use crate::sources::sized::SizedFile;
use crate::sources::{BadRecord, LineParser, LineSplitter, Pushed};

/// Smallest file worth splitting; smaller files are read by one thread.
const MIN_SPLIT_BYTES: u64 = 4 << 20;

/// Size of each thread's read buffer.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Events per batch of a range's output. The batches go on to the feeder as they are, so
/// worker 0 never copies the events into one vector.
const BATCH_EVENTS: usize = 4096;

/// Output of one thread: the parsed lines of its range.
pub(crate) struct RangeOutput {
    /// Events in file order, in batches of [`BATCH_EVENTS`] (the last one may be shorter),
    /// each with the counts of the range's lines up to its last event.
    pub batches: Vec<(Vec<Event>, LineCounts)>,
    /// Counts of the range's lines alone.
    pub counts: LineCounts,
    /// Bad records in file order, for the dead-letter output.
    pub bad: Vec<BadRecord>,
    /// The read error that ended the range early, if any.
    pub damage: Option<RangeDamage>,
}

/// A read error that ended one range before its end.
pub(crate) struct RangeDamage {
    /// Whole lines of the range read before the error.
    pub lines: u64,
    /// Bytes of the range read before the error, the unfinished line included.
    pub bytes: u64,
    /// The read error.
    pub error: String,
}

/// Opener of readers over byte ranges of input files. [`FileRanges`] reads the files, and a
/// test can pass an opener whose readers fail.
pub(crate) trait RangeSource: Sync {
    /// Reader of one range's bytes.
    type Reader: std::io::BufRead;

    /// Opens a reader of the bytes of `range` of the file at `path` alone. `file_size` is the
    /// file's size when the ranges were planned.
    fn open(&self, path: &str, range: &Range<u64>, file_size: u64)
        -> std::io::Result<Self::Reader>;
}

/// The [`RangeSource`] of a run: each range is read from the file itself.
pub(crate) struct FileRanges;

impl RangeSource for FileRanges {
    type Reader = BufReader<SizedFile>;

    /// Opens a reader of `range` alone. A file that has shrunk below the range's end gives a
    /// read error there.
    fn open(
        &self,
        path: &str,
        range: &Range<u64>,
        file_size: u64,
    ) -> std::io::Result<Self::Reader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(range.start))?;
        Ok(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            SizedFile::new(file, range.start, range.end, file_size),
        ))
    }
}

/// Cuts the file at `path` into at most `threads` ranges of whole lines. The last range ends
/// at the file's size.
///
/// Returns `None` when the file should be read by one thread: standard input, a file that is
/// not a regular file, gzip input (recognised by its magic bytes) or a file under 4 MiB.
pub(crate) fn plan_ranges(path: &str, threads: usize) -> std::io::Result<Option<Vec<Range<u64>>>> {
    if threads < 2 || path == "-" {
        return Ok(None);
    }
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() < MIN_SPLIT_BYTES {
        return Ok(None);
    }
    let mut magic = [0u8; 2];
    let read = file.read(&mut magic)?;
    if read == 2 && magic == [0x1f, 0x8b] {
        return Ok(None);
    }
    let length = metadata.len();
    let mut starts = vec![0u64];
    for part in 1..threads as u64 {
        let nominal = length * part / threads as u64;
        let previous = *starts.last().expect("starts begins with 0");
        let start = line_start_after(&mut file, nominal.max(previous), length)?;
        starts.push(start);
    }
    starts.push(length);
    let ranges = starts
        .windows(2)
        .map(|pair| pair[0]..pair[1])
        .filter(|range| !range.is_empty())
        .collect();
    Ok(Some(ranges))
}

/// Returns the offset of the first line that starts at or after `offset`: `offset` itself
/// when the byte before it is a newline, else the byte after the next newline, or `length`.
fn line_start_after(file: &mut File, offset: u64, length: u64) -> std::io::Result<u64> {
    if offset == 0 || offset >= length {
        return Ok(offset.min(length));
    }
    file.seek(SeekFrom::Start(offset - 1))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut position = offset - 1;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(length);
        }
        if let Some(at) = memchr::memchr(b'\n', &buffer[..read]) {
            return Ok(position + at as u64 + 1);
        }
        position += read as u64;
    }
}

/// Counts the newlines in `range` of the file.
fn count_newlines(
    source: &impl RangeSource,
    path: &str,
    range: &Range<u64>,
    file_size: u64,
) -> std::io::Result<u64> {
    let mut reader = source.open(path, range, file_size)?;
    let mut newlines = 0u64;
    loop {
        let buffer = std::io::BufRead::fill_buf(&mut reader)?;
        if buffer.is_empty() {
            return Ok(newlines);
        }
        newlines += memchr::memchr_iter(b'\n', buffer).count() as u64;
        let consumed = buffer.len();
        std::io::BufRead::consume(&mut reader, consumed);
    }
}

/// Parses every range on its own thread, each with a parser from `parsers`, and returns the
/// outputs in range order.
///
/// `parsers` must contain one parser per range. A line over the limit of [`LineSplitter`] is
/// one bad record, as in a sequential read. The output of a range that a read error ended has
/// its [`RangeOutput::damage`] set and is the last one returned: later ranges are dropped, as
/// a sequential read stops at the error.
pub(crate) fn parse_ranges(
    source: &impl RangeSource,
    path: &str,
    ranges: &[Range<u64>],
    parsers: Vec<Box<dyn LineParser>>,
    progress: &SourceProgress<'_>,
) -> Vec<RangeOutput> {
    assert_eq!(ranges.len(), parsers.len(), "one parser per range");
    // The ranges cover the file as planned, so the last one ends at its size then.
    let file_size = ranges.last().map_or(0, |range| range.end);
    let newlines: Vec<std::io::Result<u64>> = std::thread::scope(|scope| {
        let counters: Vec<_> = ranges
            .iter()
            .map(|range| scope.spawn(move || count_newlines(source, path, range, file_size)))
            .collect();
        counters
            .into_iter()
            .map(|counter| counter.join().expect("a newline counter does not panic"))
            .collect()
    });
    // Ranges after the first one whose newlines could not be counted are not parsed. That
    // range is parsed up to its read error.
    let to_parse = newlines
        .iter()
        .position(Result::is_err)
        .map_or(ranges.len(), |failed| failed + 1);

    let mut outputs: Vec<RangeOutput> = std::thread::scope(|scope| {
        let mut lines_before = 0u64;
        let mut threads = Vec::with_capacity(to_parse);
        let jobs = ranges.iter().zip(parsers).zip(&newlines).take(to_parse);
        for ((range, parser), newlines) in jobs {
            let first_line = lines_before;
            lines_before += newlines.as_ref().map_or(0, |newlines| *newlines);
            threads.push(scope.spawn(move || {
                parse_range(
                    source.open(path, range, file_size),
                    first_line,
                    parser,
                    progress,
                )
            }));
        }
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a range parser does not panic"))
            .collect()
    });

    if let Some(damaged) = outputs.iter().position(|output| output.damage.is_some()) {
        outputs.truncate(damaged + 1);
    } else if let Some(Err(error)) = newlines.iter().take(to_parse).last() {
        // A read error in the count that did not come back in the parse still ends the input
        // at the end of that range.
        let last = outputs
            .last_mut()
            .expect("at least the failed range is parsed");
        last.damage = Some(RangeDamage {
            lines: last.counts.lines,
            bytes: last.counts.bytes,
            error: error.to_string(),
        });
    }
    outputs
}

/// Parses the lines of one range from `reader`, numbering them after `lines_before` lines. A
/// read error, in opening the reader or later, ends the range as damaged.
fn parse_range(
    reader: std::io::Result<impl std::io::BufRead>,
    lines_before: u64,
    mut parser: Box<dyn LineParser>,
    progress: &SourceProgress<'_>,
) -> RangeOutput {
    let mut output = RangeOutput {
        batches: Vec::new(),
        counts: LineCounts::default(),
        bad: Vec::new(),
        damage: None,
    };
    let reader = match reader {
        Ok(reader) => reader,
        Err(error) => {
            output.damage = Some(RangeDamage {
                lines: 0,
                bytes: 0,
                error: error.to_string(),
            });
            return output;
        }
    };
    let mut splitter = LineSplitter::new(reader).with_lines_before(lines_before);
    let limit = splitter.max_line_bytes();
    let counts = &mut output.counts;
    let mut damage = None;
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    let mut published = LineCounts::default();
    let mut bytes_published = 0u64;
    loop {
        let pushed = match splitter.next_line() {
            Ok(None) => break,
            Ok(Some(line)) => {
                crate::ingest::count_and_parse(&mut *parser, line, limit, counts, &mut batch)
            }
            Err(error) => {
                let lines = counts.lines;
                let pushed = splitter
                    .take_unfinished()
                    .map(|line| crate::ingest::cut_line(line, DAMAGE_CUT_REASON, counts));
                damage = Some(RangeDamage {
                    lines,
                    bytes: counts.bytes,
                    error: error.to_string(),
                });
                match pushed {
                    Some(pushed) => pushed,
                    None => break,
                }
            }
        };
        if counts.lines.is_multiple_of(65_536) {
            progress.add_bytes(counts.bytes - bytes_published);
            bytes_published = counts.bytes;
            progress.publish(counts, &mut published);
        }
        match pushed {
            Pushed::Event => {
                counts.events += 1;
                if batch.len() == BATCH_EVENTS {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_EVENTS));
                    output.batches.push((full, counts.clone()));
                }
            }
            Pushed::Skip => counts.skipped += 1,
            Pushed::Bad(record) => {
                counts.bad += 1;
                output.bad.push(record);
            }
        }
        if damage.is_some() {
            break;
        }
    }
    progress.add_bytes(counts.bytes - bytes_published);
    progress.publish(counts, &mut published);
    if !batch.is_empty() {
        output.batches.push((batch, counts.clone()));
    }
    output.damage = damage;
    output
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;
    use crate::ingest::{self, Chunk, DeadLetter, SplitReader};
    use crate::metrics::Metrics;
    use crate::sources::SourceOptions;

    /// Reads `path` with `threads` parse threads and returns the events, the final counts and
    /// the dead-letter file's text.
    fn read(path: &str, threads: usize) -> (Vec<veer_models::Event>, ingest::LineCounts, String) {
        read_through(&[path], threads, FileRanges)
    }

    /// Reads `paths` like [`read`], with the ranges of split files read through `source`.
    fn read_through(
        paths: &[&str],
        threads: usize,
        source: impl RangeSource + Send + 'static,
    ) -> (Vec<veer_models::Event>, ingest::LineCounts, String) {
        let letters = tempfile::NamedTempFile::new().unwrap();
        let reader = SplitReader {
            paths: paths.iter().map(|path| path.to_string()).collect(),
            options: SourceOptions::default(),
            dead_letter: DeadLetter::create(Some(letters.path())).unwrap(),
            progress: Arc::new(AtomicU64::new(0)),
            metrics: Metrics::new(),
            threads,
        };
        let receiver = reader.spawn(ingest::BatchPool::new(), source);
        let mut events = Vec::new();
        for chunk in receiver {
            match chunk {
                Chunk::Events(mut batch, _, _) => events.append(&mut batch),
                Chunk::Done(counts) => {
                    let text = std::fs::read_to_string(letters.path()).unwrap();
                    return (events, counts, text);
                }
                Chunk::Failed(message) => panic!("{message}"),
            }
        }
        panic!("the reader stopped without Done");
    }

    #[test]
    fn split_read_equals_sequential_read() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        // About 6 MB of Taobao rows with blank, bad, CRLF and over-long lines spread through.
        write_rows(file.as_file_mut(), true);
        // A last line without a newline.
        write!(file, "1,2,3,buy,1511900000").unwrap();
        let path = file.path().to_str().unwrap().to_string();
        assert!(super::plan_ranges(&path, 3)
            .unwrap()
            .is_some_and(|ranges| ranges.len() == 3));

        let (events, counts, letters) = read(&path, 1);
        let (split_events, split_counts, split_letters) = read(&path, 3);
        assert_eq!(split_counts, counts);
        assert_eq!(split_events.len(), events.len());
        assert!(
            split_events == events,
            "the events or their line numbers differ"
        );
        assert_eq!(split_letters, letters);
        assert_eq!(counts.lines, 200_001);
        assert_eq!(counts.bad, 22, "21 bad rows and one over-long line");
        assert_eq!(counts.skipped, 21, "blank lines");
        assert!(
            letters.contains("\"line\":19"),
            "bad row reported at its line"
        );
    }

    /// Reads ranges of files like [`FileRanges`], except that a read that reaches byte
    /// `fail_at` of the file at `path` fails, as a read of a bad disk sector does.
    struct FailingRanges {
        path: String,
        fail_at: u64,
    }

    impl RangeSource for FailingRanges {
        type Reader = BufReader<FailAt<std::io::Take<File>>>;

        fn open(&self, path: &str, range: &Range<u64>, _: u64) -> std::io::Result<Self::Reader> {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(range.start))?;
            let readable = (path == self.path && range.contains(&self.fail_at))
                .then(|| self.fail_at - range.start);
            let reader = FailAt {
                inner: file.take(range.end - range.start),
                readable,
            };
            Ok(BufReader::with_capacity(READ_BUFFER_BYTES, reader))
        }
    }

    /// A reader that fails every read once it has returned `readable` bytes.
    struct FailAt<R> {
        inner: R,
        /// Bytes left before the failure, or `None` for a reader that does not fail.
        readable: Option<u64>,
    }

    /// Message of the injected read error.
    const INJECTED_ERROR: &str = "injected read error";

    impl<R: Read> Read for FailAt<R> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            let Some(readable) = self.readable else {
                return self.inner.read(buffer);
            };
            if readable == 0 {
                return Err(std::io::Error::other(INJECTED_ERROR));
            }
            let length = buffer
                .len()
                .min(usize::try_from(readable).unwrap_or(usize::MAX));
            let read = self.inner.read(&mut buffer[..length])?;
            self.readable = Some(readable - read as u64);
            Ok(read)
        }
    }

    /// Writes about 6 MB of Taobao rows with a blank line and a bad row every 9,973 lines.
    /// With `crlf_and_long_line`, a row every 9,973 lines ends in `\r\n` and one line is 2 MiB
    /// long. Without it every line ends in `\n` alone and is whole, so a line's counted bytes
    /// are its bytes in the file.
    fn write_rows(file: &mut std::fs::File, crlf_and_long_line: bool) {
        let mut writer = std::io::BufWriter::new(file);
        for line in 0..200_000u64 {
            let time = 1_511_658_000 + line;
            match line % 9_973 {
                17 => writeln!(writer).unwrap(),
                18 => writeln!(writer, "not,a,row").unwrap(),
                19 if crlf_and_long_line => {
                    write!(writer, "{line},{},{},pv,{time}\r\n", line * 3, line % 97).unwrap()
                }
                20 if crlf_and_long_line && line == 10 * 9_973 + 20 => {
                    writeln!(writer, "{}", "x".repeat(2 << 20)).unwrap()
                }
                _ => writeln!(
                    writer,
                    "{},{},{},pv,{time}",
                    line % 5_000,
                    line * 3,
                    line % 97
                )
                .unwrap(),
            }
        }
    }

    #[test]
    fn split_read_error_is_damage() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write_rows(file.as_file_mut(), false);
        let path = file.path().to_str().unwrap().to_string();
        let text = std::fs::read(&path).unwrap();
        let ranges = plan_ranges(&path, 3).unwrap().expect("the file is split");
        assert_eq!(ranges.len(), 3);
        // A later input, which the damage of the first must not stop.
        let mut later = tempfile::NamedTempFile::new().unwrap();
        writeln!(later, "7,8,9,buy,1511700000").unwrap();
        let later_path = later.path().to_str().unwrap();

        // The 6th byte of the first line that starts at or after `offset`.
        let inside_line = |offset: u64| {
            let newline = text[offset as usize..]
                .iter()
                .position(|&byte| byte == b'\n')
                .unwrap();
            offset + newline as u64 + 6
        };
        // Inside a line of the first, middle and last range, and at the first byte of the last
        // range, where no line is cut.
        for (fail_at, cuts_line) in [
            (inside_line(ranges[0].start + 1_000_000), true),
            (inside_line(ranges[1].start + 100_000), true),
            (ranges[2].start, false),
            (inside_line(ranges[2].end - 10_000), true),
        ] {
            let source = FailingRanges {
                path: path.clone(),
                fail_at,
            };
            let (events, counts, letters) = read_through(&[path.as_str(), later_path], 3, source);

            // The oracle: a sequential read of the whole lines before the failure.
            let prefix = &text[..fail_at as usize];
            let whole = &prefix[..prefix.iter().rposition(|&byte| byte == b'\n').unwrap() + 1];
            let whole_lines = whole.iter().filter(|&&byte| byte == b'\n').count() as u64;
            let mut expected_file = tempfile::NamedTempFile::new().unwrap();
            expected_file.write_all(whole).unwrap();
            let (mut expected, expected_counts, _) =
                read(expected_file.path().to_str().unwrap(), 1);
            let (mut later_events, _, _) = read(later_path, 1);
            expected.append(&mut later_events);

            let cut = u64::from(whole.len() < prefix.len());
            assert_eq!(cut == 1, cuts_line, "fail_at {fail_at}");
            assert!(events == expected, "fail_at {fail_at}: the events differ");
            assert_eq!(counts.lines, whole_lines + cut + 1, "fail_at {fail_at}");
            assert_eq!(counts.bad, expected_counts.bad + cut, "fail_at {fail_at}");
            assert_eq!(
                counts.damaged,
                vec![ingest::InputDamage {
                    input: path.clone(),
                    lines: whole_lines,
                    bytes: fail_at,
                    error: INJECTED_ERROR.to_string(),
                }],
                "fail_at {fail_at}"
            );
            let cut_record = format!("\"line\":{}", whole_lines + 1);
            let cut_reported = letters
                .lines()
                .any(|line| line.contains(&cut_record) && line.contains(DAMAGE_CUT_REASON));
            assert_eq!(cut_reported, cut == 1, "fail_at {fail_at}: {letters}");
        }
    }

    #[test]
    fn range_of_shrunk_file_is_read_error() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let text: String = (0..400_000u64)
            .map(|line| {
                format!(
                    "{},{},{},pv,{}\n",
                    line % 5_000,
                    line,
                    line % 97,
                    1_511_658_000 + line
                )
            })
            .collect();
        file.write_all(text.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let ranges = super::plan_ranges(&path, 2)
            .unwrap()
            .expect("a file to split");
        let last = ranges.last().unwrap().clone();

        // The file loses its second half after the ranges were planned at its size then.
        file.as_file().set_len(last.start + 10).unwrap();
        let error = super::count_newlines(&FileRanges, &path, &last, last.end).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("the file shrank"), "{error}");
        let opened = format!("had {} bytes when it was opened", last.end);
        assert!(error.to_string().contains(&opened), "{error}");
        let now = format!("has {} bytes now", last.start + 10);
        assert!(error.to_string().contains(&now), "{error}");
    }
}
