//! Parsing one plain input file on several threads, each over its own byte range.
//!
//! The file is cut into ranges that each start right after a newline, so every range contains
//! whole lines. A first pass counts the newlines of each range, which gives every thread the
//! number of its first line. So events and bad records carry the same line numbers as in a
//! sequential read. The caller joins the results in range order, which is file order.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;

use veer_models::Event;

use crate::ingest::{LineCounts, SourceProgress};
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
}

/// Cuts the file at `path` into at most `threads` ranges of whole lines.
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

/// Opens `path` and returns a reader of the bytes of `range` alone.
fn open_range(path: &str, range: &Range<u64>) -> std::io::Result<impl std::io::BufRead> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(range.start))?;
    Ok(BufReader::with_capacity(
        READ_BUFFER_BYTES,
        file.take(range.end - range.start),
    ))
}

/// Counts the newlines in `range` of the file.
fn count_newlines(path: &str, range: &Range<u64>) -> std::io::Result<u64> {
    let mut reader = open_range(path, range)?;
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
/// one bad record, as in a sequential read.
pub(crate) fn parse_ranges(
    path: &str,
    ranges: &[Range<u64>],
    parsers: Vec<Box<dyn LineParser>>,
    progress: &SourceProgress<'_>,
) -> Result<Vec<RangeOutput>, String> {
    assert_eq!(ranges.len(), parsers.len(), "one parser per range");
    let name = crate::ingest::input_name(path);
    let newlines: Vec<u64> = std::thread::scope(|scope| {
        let counters: Vec<_> = ranges
            .iter()
            .map(|range| scope.spawn(move || count_newlines(path, range)))
            .collect();
        counters
            .into_iter()
            .map(|counter| counter.join().expect("a newline counter does not panic"))
            .collect::<std::io::Result<Vec<u64>>>()
    })
    .map_err(|error| format!("failed reading {name}: {error}"))?;

    std::thread::scope(|scope| {
        let mut lines_before = 0u64;
        let mut threads = Vec::with_capacity(ranges.len());
        for ((range, parser), newlines) in ranges.iter().zip(parsers).zip(&newlines) {
            let first_line = lines_before;
            lines_before += newlines;
            threads.push(scope.spawn(move || {
                parse_range(path, range, first_line, parser, progress)
                    .map_err(|error| format!("failed reading {name}: {error}"))
            }));
        }
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a range parser does not panic"))
            .collect()
    })
}

/// Parses the lines of one range; `lines_before` is the number of lines before it.
fn parse_range(
    path: &str,
    range: &Range<u64>,
    lines_before: u64,
    mut parser: Box<dyn LineParser>,
    progress: &SourceProgress<'_>,
) -> std::io::Result<RangeOutput> {
    let mut splitter = LineSplitter::new(open_range(path, range)?).with_lines_before(lines_before);
    let limit = splitter.max_line_bytes();
    let mut output = RangeOutput {
        batches: Vec::new(),
        counts: LineCounts::default(),
        bad: Vec::new(),
    };
    let counts = &mut output.counts;
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    let mut published = LineCounts::default();
    let mut bytes_published = 0u64;
    while let Some(line) = splitter.next_line()? {
        let pushed = crate::ingest::count_and_parse(&mut *parser, line, limit, counts, &mut batch);
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
    }
    progress.add_bytes(counts.bytes - bytes_published);
    progress.publish(counts, &mut published);
    if !batch.is_empty() {
        output.batches.push((batch, counts.clone()));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use crate::ingest::{self, Chunk, DeadLetter};
    use crate::metrics::Metrics;
    use crate::sources::SourceOptions;

    /// Reads `path` with `threads` parse threads and returns the events, the final counts and
    /// the dead-letter file's text.
    fn read(path: &str, threads: usize) -> (Vec<veer_models::Event>, ingest::LineCounts, String) {
        let letters = tempfile::NamedTempFile::new().unwrap();
        let dead_letter = DeadLetter::create(Some(letters.path())).unwrap();
        let receiver = ingest::spawn_split_reader(
            vec![path.to_string()],
            SourceOptions::default(),
            dead_letter,
            Arc::new(AtomicU64::new(0)),
            Metrics::new(),
            threads,
            ingest::BatchPool::new(),
        );
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
        let mut writer = std::io::BufWriter::new(file.as_file_mut());
        // About 6 MB of Taobao rows with blank, bad, CRLF and over-long lines spread through.
        for line in 0..200_000u64 {
            let time = 1_511_658_000 + line;
            match line % 9_973 {
                17 => writeln!(writer).unwrap(),
                18 => writeln!(writer, "not,a,row").unwrap(),
                19 => write!(writer, "{line},{},{},pv,{time}\r\n", line * 3, line % 97).unwrap(),
                20 if line == 10 * 9_973 + 20 => {
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
        // A last line without a newline.
        write!(writer, "1,2,3,buy,1511900000").unwrap();
        drop(writer);
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
}
