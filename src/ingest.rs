//! Reading inputs: parsing on a reader thread, the replay order, the late-data policy and the
//! dead-letter output.
//!
//! Every physical line of every input ends in exactly one of these counts: an event sent on,
//! a skipped line (blank, or a header of a format that has one), a bad record, or a late
//! event. Exact duplicates are found later, after events are routed by user, and are counted
//! out of the events sent, so that `lines = events + duplicates + late + bad + skipped`.

use std::borrow::Borrow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value};
use veer_models::{Event, Id};

use crate::config::ReplayOrder;
use crate::metrics::{Metrics, SourceMetrics};
use crate::sources::{self, BadRecord, LineSplitter, Pushed, SourceOptions};

/// Events per batch sent from the reader thread.
const BATCH: usize = 4096;

/// Capacity of the reader's channel, in batches.
///
/// The reader parses an order of magnitude faster than the workers detect, so when an input is
/// streamed the channel is full and every slot contains a batch of about 600 KiB. Eight
/// batches (32,768 events) keep the workers fed with 5 MiB in the channel, where 64 took 38 MiB.
pub(crate) const CHANNEL_BATCHES: usize = 8;

/// Emptied batches a [`BatchPool`] keeps for the reader. The reader takes one each time it
/// fills a batch, so a streamed input needs only a few.
const POOLED_BATCHES: usize = 4;

/// Counts of the lines of all inputs, by what became of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Physical lines read from all inputs.
    pub lines: u64,
    /// Lines parsed into events, before duplicates are dropped; late events are subtracted
    /// once the replay has found them.
    pub events: u64,
    /// Blank lines and header lines.
    pub skipped: u64,
    /// Lines that could not be parsed into an event.
    pub bad: u64,
    /// Events behind the watermark of an arrival-order replay.
    pub late: u64,
    /// Events older than an event on an earlier line: how far the input is from time order.
    pub out_of_order: u64,
    /// Bytes of (decompressed) input read.
    pub bytes: u64,
    /// Inputs whose reading failed part way, such as a truncated gzip file. Each was read up
    /// to the damage and its later lines are not counted.
    pub damaged: Vec<InputDamage>,
}

/// A read error that ended one input early, such as a gzip file cut in the middle. The lines
/// before it are processed, and the rest of that input is not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("input {input} is damaged after line {lines} (uncompressed byte {bytes}): {error}")]
pub struct InputDamage {
    /// The input's name, as the log and the dead-letter file give it.
    pub input: String,
    /// Whole lines of this input read before the damage.
    pub lines: u64,
    /// Bytes of this input read before the damage, counted after gzip decompression, the
    /// unfinished line included.
    pub bytes: u64,
    /// The read error.
    pub error: String,
}

impl LineCounts {
    /// Adds the line, byte, event, skipped and bad counts of a later part of the input.
    fn add_lines(&mut self, later: &LineCounts) {
        self.lines += later.lines;
        self.bytes += later.bytes;
        self.events += later.events;
        self.skipped += later.skipped;
        self.bad += later.bad;
    }
}

/// One message from the reader thread.
pub enum Chunk {
    /// Parsed events in file order, the counts of every line read up to the last of them, and
    /// the index of their input in the reader's paths (a batch never mixes inputs).
    Events(Vec<Event>, LineCounts, usize),
    /// The reader finished; its counts of lines, skipped and bad records and bytes.
    Done(LineCounts),
    /// An input could not be opened or read.
    Failed(String),
}

/// Emptied event batches handed back to the reader thread, so that a streamed input reuses a
/// few batches of [`BATCH`] events instead of allocating and freeing one per batch.
///
/// A batch of 4,096 events is about 600 KiB, above glibc's initial mmap threshold. So each freed
/// batch either returns its pages to the kernel, and the next batch faults them in again, or
/// raises glibc's dynamic mmap threshold.
#[derive(Clone)]
pub struct BatchPool {
    sender: Sender<Vec<Event>>,
    receiver: Receiver<Vec<Event>>,
}

impl BatchPool {
    /// Creates an empty pool.
    pub fn new() -> BatchPool {
        let (sender, receiver) = crossbeam_channel::bounded(POOLED_BATCHES);
        BatchPool { sender, receiver }
    }

    /// Returns an empty batch with room for [`BATCH`] events: a pooled one, or a new one when
    /// the pool is empty.
    fn take(&self) -> Vec<Event> {
        self.receiver
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH))
    }

    /// Empties `batch` and keeps it for the reader. A batch smaller than the reader's, or one
    /// that finds the pool full, is freed instead.
    pub fn give_back(&self, mut batch: Vec<Event>) {
        if batch.capacity() < BATCH {
            return;
        }
        batch.clear();
        let _ = self.sender.try_send(batch);
    }
}

impl Default for BatchPool {
    fn default() -> Self {
        BatchPool::new()
    }
}

/// The reader thread's outputs: the channel of its chunks and the pool of its empty batches.
pub(crate) struct ReaderChannel {
    pub(crate) chunks: Sender<Chunk>,
    pub(crate) pool: BatchPool,
    /// Index of the input being read in the reader's paths, sent with each batch.
    pub(crate) input: usize,
}

/// The dead-letter output: one JSON object per bad or late line.
#[derive(Clone)]
pub struct DeadLetter {
    inner: Arc<Mutex<Option<DeadLetterFile>>>,
}

/// An open dead-letter file, and what was lost after it could not be written.
struct DeadLetterFile {
    /// `None` after the first error, when the buffered records have been dropped.
    writer: Option<BufWriter<File>>,
    path: PathBuf,
    /// The first write or flush error; records after it are counted, not written.
    error: Option<String>,
    /// Records not written because of `error`.
    unwritten: u64,
}

impl DeadLetterFile {
    /// Keeps the first error and logs it once, so a full disk does not log one line per record.
    /// Drops the buffered records and cuts a torn last line that the failed write left.
    fn fail(&mut self, error: std::io::Error) {
        if self.error.is_some() {
            return;
        }
        tracing::error!(
            path = %self.path.display(),
            %error,
            "cannot write the dead-letter file; later records are counted but not written"
        );
        self.error = Some(error.to_string());
        // `into_parts` drops the buffer without the write that dropping a `BufWriter` tries.
        let Some((file, _buffer)) = self.writer.take().map(BufWriter::into_parts) else {
            return;
        };
        if let Err(cut_error) = crate::output_file::cut_torn_line(&self.path, &file) {
            tracing::error!(
                path = %self.path.display(),
                error = %cut_error,
                "cannot cut the torn last line of the dead-letter file"
            );
        }
    }
}

/// A dead-letter file that could not be written: the run ends with an error naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFailure {
    pub path: PathBuf,
    pub error: String,
    /// Records not written after the error (records still in the buffer when it happened are
    /// lost as well and not counted here).
    pub unwritten: u64,
}

impl std::fmt::Display for DeadLetterFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "the dead-letter file {} could not be written ({}): {} bad or late records after the \
             error are missing from it, and records buffered before it may be missing too",
            self.path.display(),
            self.error,
            self.unwritten
        )
    }
}

impl DeadLetter {
    /// Creates the dead-letter file, or a sink that only counts when `path` is `None`.
    pub fn create(path: Option<&Path>) -> anyhow::Result<DeadLetter> {
        let file = match path {
            Some(path) => Some(DeadLetterFile {
                writer: Some(BufWriter::new(crate::output_file::create(path).map_err(
                    |error| {
                        crate::output_file::describe_error(error, || {
                            format!("cannot create dead-letter file {}", path.display())
                        })
                    },
                )?)),
                path: path.to_path_buf(),
                error: None,
                unwritten: 0,
            }),
            None => None,
        };
        Ok(DeadLetter {
            inner: Arc::new(Mutex::new(file)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<DeadLetterFile>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, object: Map<String, Value>) {
        let mut guard = self.lock();
        let Some(file) = guard.as_mut() else {
            return;
        };
        let Some(writer) = file.writer.as_mut() else {
            file.unwritten += 1;
            return;
        };
        if let Err(error) = writeln!(writer, "{}", Value::Object(object)) {
            file.unwritten += 1;
            file.fail(error);
        }
    }

    /// Records a line that could not be parsed.
    pub fn bad(&self, file: &str, record: &BadRecord) {
        let mut object = Map::new();
        object.insert("file".into(), Value::from(file));
        object.insert("line".into(), Value::from(record.line));
        object.insert("kind".into(), Value::from("bad"));
        object.insert("reason".into(), Value::from(record.reason.as_str()));
        object.insert("raw".into(), Value::from(record.raw.as_str()));
        self.write(object);
    }

    /// Records an event that arrived behind the watermark.
    pub fn late(&self, file: &str, event: &Event, watermark_ms: u64) {
        let mut object = Map::new();
        object.insert("file".into(), Value::from(file));
        object.insert("line".into(), Value::from(event.line));
        object.insert("kind".into(), Value::from("late"));
        object.insert(
            "reason".into(),
            Value::from(format!(
                "late: event time {} ms is behind the event-time frontier {} ms",
                event.ts_ms, watermark_ms
            )),
        );
        object.insert("ts".into(), Value::from(event.ts_secs()));
        object.insert("ts_ms".into(), Value::from(event.ts_ms));
        object.insert("frontier_ms".into(), Value::from(watermark_ms));
        object.insert("user".into(), event.user.to_json());
        object.insert("category".into(), event.category.to_json());
        object.insert("behavior".into(), Value::from(event.behavior.name()));
        self.write(object);
    }

    /// Flushes buffered records to the file.
    pub fn flush(&self) {
        let mut guard = self.lock();
        let Some(file) = guard.as_mut() else {
            return;
        };
        if let Some(Err(error)) = file.writer.as_mut().map(BufWriter::flush) {
            file.fail(error);
        }
    }

    /// Returns how the file failed, if a write or flush to it failed.
    pub fn failure(&self) -> Option<DeadLetterFailure> {
        let guard = self.lock();
        let file = guard.as_ref()?;
        Some(DeadLetterFailure {
            path: file.path.clone(),
            error: file.error.clone()?,
            unwritten: file.unwritten,
        })
    }
}

/// Returns the display name of an input path.
pub fn input_name(path: &str) -> &str {
    if path == "-" {
        "<stdin>"
    } else {
        path
    }
}

/// Starts the reader thread over `paths` and returns the channel its chunks arrive on.
///
/// `progress` receives the number of bytes read so far, for the progress display, and
/// `metrics` the counts of each input as its batches are sent.
pub fn spawn_reader(
    paths: Vec<String>,
    options: SourceOptions,
    dead_letter: DeadLetter,
    progress: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
) -> Receiver<Chunk> {
    spawn_split_reader(
        paths,
        options,
        dead_letter,
        progress,
        metrics,
        1,
        BatchPool::new(),
    )
}

/// Starts the reader thread like [`spawn_reader`], parsing each plain file of 4 MiB or more on
/// `threads` threads at once (see `split_read.rs`).
///
/// A split file arrives as one chunk per thread, only once the whole file is parsed, so the
/// caller should read it all before it processes any of it. The chunks, counts, line numbers
/// and dead-letter records are those of a sequential read. A file read by one thread fills
/// batches taken from `pool`, so a caller that gives its emptied batches back to `pool` lets
/// the reader reuse them.
pub fn spawn_split_reader(
    paths: Vec<String>,
    options: SourceOptions,
    dead_letter: DeadLetter,
    progress: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
    threads: usize,
    pool: BatchPool,
) -> Receiver<Chunk> {
    let reader = SplitReader {
        paths,
        options,
        dead_letter,
        progress,
        metrics,
        threads,
    };
    reader.spawn(pool, crate::split_read::FileRanges)
}

/// The reader thread of [`spawn_split_reader`]: the inputs it reads, and where it sends their
/// bad records and progress.
pub(crate) struct SplitReader {
    pub(crate) paths: Vec<String>,
    pub(crate) options: SourceOptions,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) progress: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) metrics: Arc<Metrics>,
    /// Parse threads of a plain file of 4 MiB or more.
    pub(crate) threads: usize,
}

impl SplitReader {
    /// Starts the reader thread, which reads the ranges of each split file through `source`,
    /// and returns the channel its chunks arrive on.
    pub(crate) fn spawn(
        self,
        pool: BatchPool,
        source: impl crate::split_read::RangeSource + Send + 'static,
    ) -> Receiver<Chunk> {
        let (sender, receiver) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        std::thread::Builder::new()
            .name("veer-reader".into())
            .spawn(move || self.read_all(&sender, &pool, &source))
            .expect("the reader thread starts");
        receiver
    }

    /// Reads the inputs in order and sends their chunks, then `Done`, or `Failed` at the first
    /// input that cannot be read.
    fn read_all(
        self,
        sender: &crossbeam_channel::Sender<Chunk>,
        pool: &BatchPool,
        source: &impl crate::split_read::RangeSource,
    ) {
        let mut counts = LineCounts::default();
        for (input, path) in self.paths.iter().enumerate() {
            let channel = ReaderChannel {
                chunks: sender.clone(),
                pool: pool.clone(),
                input,
            };
            if crate::shutdown::requested() {
                tracing::info!(
                    input = input_name(path),
                    "shutdown requested: the input is not read"
                );
                continue;
            }
            let progress = SourceProgress {
                bytes: &self.progress,
                metrics: self.metrics.source(input_name(path)),
            };
            let read = match crate::split_read::plan_ranges(path, self.threads) {
                Ok(Some(ranges)) => read_split(
                    path,
                    &ranges,
                    source,
                    &self.options,
                    &self.dead_letter,
                    &channel,
                    &mut counts,
                    &progress,
                ),
                Ok(None) | Err(_) => read_one(
                    path,
                    &self.options,
                    &self.dead_letter,
                    &channel,
                    &mut counts,
                    &progress,
                ),
            };
            if let Err(message) = read {
                let _ = channel.chunks.send(Chunk::Failed(message));
                return;
            }
        }
        self.dead_letter.flush();
        let _ = sender.send(Chunk::Done(counts));
    }
}

/// Destination of the reader's progress on one input.
pub(crate) struct SourceProgress<'a> {
    /// Bytes read of all inputs, for the progress display.
    bytes: &'a std::sync::atomic::AtomicU64,
    /// Counters of this input.
    metrics: Arc<SourceMetrics>,
}

impl SourceProgress<'_> {
    /// Adds to the bytes read that the progress display shows.
    pub(crate) fn add_bytes(&self, bytes: u64) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Adds to the input's metrics what `counts` gained since `published`.
    pub(crate) fn publish(&self, counts: &LineCounts, published: &mut LineCounts) {
        let metrics = &self.metrics;
        metrics.add_lines(
            counts.lines - published.lines,
            counts.bytes - published.bytes,
        );
        metrics.add_events(counts.events - published.events);
        metrics.add_bad(counts.bad - published.bad);
        metrics.add_skipped(counts.skipped - published.skipped);
        *published = counts.clone();
    }
}

/// Reads one input on the calling thread with the reader thread's code for one parse thread,
/// sends its batches on `sender` and returns the input's line counts. Each batch is taken from
/// `pool`, or allocated when the pool is empty.
///
/// Bad records go to no dead-letter file. `veer scan` times this to measure the parse rate.
pub(crate) fn read_input(
    path: &str,
    options: &SourceOptions,
    sender: &Sender<Chunk>,
    pool: &BatchPool,
) -> Result<LineCounts, String> {
    let dead_letter = DeadLetter {
        inner: Arc::new(Mutex::new(None)),
    };
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let progress = SourceProgress {
        bytes: &bytes,
        metrics: Metrics::new().source(input_name(path)),
    };
    let channel = ReaderChannel {
        chunks: sender.clone(),
        pool: pool.clone(),
        input: 0,
    };
    let mut counts = LineCounts::default();
    read_one(
        path,
        options,
        &dead_letter,
        &channel,
        &mut counts,
        &progress,
    )?;
    Ok(counts)
}

fn read_one(
    path: &str,
    options: &SourceOptions,
    dead_letter: &DeadLetter,
    channel: &ReaderChannel,
    counts: &mut LineCounts,
    progress: &SourceProgress<'_>,
) -> Result<(), String> {
    let name = input_name(path);
    let (reader, format, cut) = match open_detected(path, options)? {
        Opened::Ready(input) => input,
        Opened::Empty => return Ok(()),
        Opened::Damaged(error) => {
            record_damage_at_start(name, &error, counts);
            return Ok(());
        }
    };
    let events_path = (path != "-").then(|| PathBuf::from(path));
    let (mut parser, warnings) = sources::make_parser(format, options, events_path.as_deref())
        .map_err(|error| error.to_string())?;
    for warning in warnings {
        tracing::warn!(input = name, "{warning}");
    }
    tracing::info!(input = name, format = %format, "reading input");

    let before = counts.clone();
    let mut published = counts.clone();
    let mut batch = channel.pool.take();
    let mut splitter = LineSplitter::new(reader);
    let limit = splitter.max_line_bytes();
    // On a shutdown, a pipe ends by itself after the last line taken from it (see
    // `sources::ShutdownCut`). A regular file stops at the next batch.
    let is_pipe = cut.is_some();
    let cut_now = || cut.as_ref().is_some_and(sources::ShutdownCut::happened);
    loop {
        let cut_before = cut_now();
        let mut input_ended = false;
        let pushed = match splitter.next_line() {
            Ok(None) => break,
            Ok(Some(line)) if !cut_before && cut_now() => {
                // The shutdown, not a newline, ended this line, so its end may be missing.
                cut_line(line, SHUTDOWN_CUT_REASON, counts)
            }
            Ok(Some(line)) => count_and_parse(&mut *parser, line, limit, counts, &mut batch),
            // A gzip stream cut by the shutdown ends in the middle of a member.
            Err(error) if cut_now() => {
                tracing::warn!(
                    input = name,
                    %error,
                    "shutdown requested: the rest of the compressed input is not read"
                );
                let Some(line) = splitter.take_unfinished() else {
                    break;
                };
                input_ended = true;
                cut_line(line, SHUTDOWN_CUT_REASON, counts)
            }
            Err(error) => {
                let lines = counts.lines - before.lines;
                input_ended = true;
                let pushed = splitter
                    .take_unfinished()
                    .map(|line| cut_line(line, DAMAGE_CUT_REASON, counts));
                let damage = InputDamage {
                    input: name.to_string(),
                    lines,
                    bytes: counts.bytes - before.bytes,
                    error: error.to_string(),
                };
                record_damage(damage, counts);
                match pushed {
                    Some(pushed) => pushed,
                    None => break,
                }
            }
        };
        if counts.lines.is_multiple_of(65_536) {
            progress
                .bytes
                .store(counts.bytes, std::sync::atomic::Ordering::Relaxed);
            if !is_pipe && stop_for_shutdown(name, counts) {
                break;
            }
        }
        match pushed {
            Pushed::Event => {
                counts.events += 1;
                if batch.len() >= BATCH {
                    progress.publish(counts, &mut published);
                    let full = std::mem::replace(&mut batch, channel.pool.take());
                    if channel
                        .chunks
                        .send(Chunk::Events(full, counts.clone(), channel.input))
                        .is_err()
                    {
                        return Ok(());
                    }
                    if !is_pipe && stop_for_shutdown(name, counts) {
                        break;
                    }
                }
            }
            Pushed::Skip => counts.skipped += 1,
            Pushed::Bad(record) => {
                counts.bad += 1;
                dead_letter.bad(name, &record);
                if counts.bad - before.bad == EARLY_BAD_LINES && counts.events == before.events {
                    tracing::warn!(
                        input = name,
                        format = %format,
                        "the first {EARLY_BAD_LINES} lines are all bad records as {format}; {}",
                        format_advice(options.format.is_some())
                    );
                }
            }
        }
        if input_ended {
            break;
        }
    }
    progress
        .bytes
        .store(counts.bytes, std::sync::atomic::Ordering::Relaxed);
    progress.publish(counts, &mut published);
    warn_if_mostly_bad(name, format, options.format.is_some(), &before, counts);
    if !batch.is_empty() {
        let _ = channel
            .chunks
            .send(Chunk::Events(batch, counts.clone(), channel.input));
    }
    Ok(())
}

/// Bad-record reason of a line that a shutdown ended before its newline.
const SHUTDOWN_CUT_REASON: &str = "line not finished when the shutdown was requested";

/// Bad-record reason of a line that a read error ended before its newline.
pub(crate) const DAMAGE_CUT_REASON: &str = "line cut off where the input is damaged";

/// Logs `damage` and adds it to `counts`.
fn record_damage(damage: InputDamage, counts: &mut LineCounts) {
    tracing::error!(
        input = damage.input.as_str(),
        lines = damage.lines,
        bytes = damage.bytes,
        error = damage.error.as_str(),
        "input is damaged: the lines before the damage are processed and the rest of the input \
         is not read"
    );
    counts.damaged.push(damage);
}

/// Logs that the first bytes of input `name` could not be read, and adds the damage to
/// `counts`.
fn record_damage_at_start(name: &str, error: &std::io::Error, counts: &mut LineCounts) {
    tracing::error!(input = name, %error, "input is damaged at its start: not read");
    counts.damaged.push(InputDamage {
        input: name.to_string(),
        lines: 0,
        bytes: 0,
        error: error.to_string(),
    });
}

/// Counts a line that ended before its newline, by a shutdown or by damage to the input, and
/// makes it a bad record with `reason`, because its end may be missing.
pub(crate) fn cut_line(line: sources::Line<'_>, reason: &str, counts: &mut LineCounts) -> Pushed {
    counts.lines += 1;
    counts.bytes += line.bytes.len() as u64;
    Pushed::Bad(BadRecord::new(line.number, reason, line.bytes))
}

/// Returns whether a shutdown was requested, logging where the reader stops reading `name`.
fn stop_for_shutdown(name: &str, counts: &LineCounts) -> bool {
    let requested = crate::shutdown::requested();
    if requested {
        tracing::info!(
            input = name,
            lines = counts.lines,
            "shutdown requested: the rest of the input is not read"
        );
    }
    requested
}

/// Bad records at the start of an input, with no event among them, after which the reader
/// warns at once that the format may be wrong.
const EARLY_BAD_LINES: u64 = 1_000;

/// Share of bad records among an input's events and bad records above which the reader warns
/// at the end of the input that the format may be wrong.
const MOSTLY_BAD_SHARE: f64 = 0.9;

/// Warns when more than [`MOSTLY_BAD_SHARE`] of the lines that one input parsed (events and
/// bad records, not skipped lines) were bad, the usual sign of a wrong `--format`.
/// `format_given` is true for a format given with `--format` and false for a detected one.
/// `before` and `after` are the reader's counts before and after the input.
fn warn_if_mostly_bad(
    name: &str,
    format: sources::Format,
    format_given: bool,
    before: &LineCounts,
    after: &LineCounts,
) {
    let bad = after.bad - before.bad;
    let parsed = bad + (after.events - before.events);
    if bad == 0 || bad as f64 <= MOSTLY_BAD_SHARE * parsed as f64 {
        return;
    }
    tracing::warn!(
        input = name,
        format = %format,
        bad,
        parsed,
        "{bad} of {parsed} lines are bad records as {format}; {}",
        format_advice(format_given)
    );
}

/// Returns the advice for an input of mostly bad records. A given `--format` may be wrong, and
/// a detected one comes from the first lines, which may differ from the rest.
fn format_advice(format_given: bool) -> &'static str {
    if format_given {
        "check --format, or omit it to detect the format"
    } else {
        "the format was detected from the first lines; if the rest is another format, split \
         the input or pass --format"
    }
}

/// An opened input, its format, and for a pipe the mark of a shutdown that ended it.
type DetectedInput = (
    Box<dyn std::io::BufRead + Send>,
    sources::Format,
    Option<sources::ShutdownCut>,
);

/// An input as [`open_detected`] opened it.
enum Opened {
    /// The input and its format.
    Ready(DetectedInput),
    /// An empty input whose format was not given.
    Empty,
    /// An input whose first bytes could not be read or decompressed, such as a gzip file
    /// damaged in its first block.
    Damaged(std::io::Error),
}

/// Opens `path` and returns it with its format: the `--format` given, or the one detected from
/// its first complete lines. An input of blank lines alone is read as JSON lines, which skips
/// them all. An empty input whose format was not given is logged.
fn open_detected(path: &str, options: &SourceOptions) -> Result<Opened, String> {
    let name = input_name(path);
    let (reader, cut) =
        sources::open_input_until_shutdown(path).map_err(|error| error.to_string())?;
    if let Some(format) = options.format {
        return Ok(Opened::Ready((reader, format, cut)));
    }
    let (reader, head) = match sources::detect_input_format(reader) {
        Ok(read) => read,
        Err(error) => return Ok(Opened::Damaged(error)),
    };
    let format = match head {
        sources::InputHead::Detected(format) => format,
        sources::InputHead::Empty => {
            tracing::info!(input = name, "input is empty");
            return Ok(Opened::Empty);
        }
        // Every format skips blank lines, so any parser counts them.
        sources::InputHead::OnlyBlankLines => {
            tracing::info!(input = name, "input has only blank lines");
            sources::Format::Jsonl
        }
        sources::InputHead::Unknown { utf16: true } => {
            return Err(format!(
                "cannot read {name}: it starts with a UTF-16 byte order mark, and veer reads \
                 UTF-8 only; convert it first, e.g. iconv -f UTF-16 -t UTF-8"
            ));
        }
        sources::InputHead::Unknown { utf16: false } => {
            return Err(format!(
                "cannot detect the format of {name}; pass --format \
                 jsonl|taobao|retailrocket|rees46"
            ));
        }
    };
    Ok(Opened::Ready((reader, format, cut)))
}

/// Counts one line in `counts` and parses it, pushing its event onto `events`. A line cut at
/// `limit` bytes is a bad record.
pub(crate) fn count_and_parse(
    parser: &mut dyn sources::LineParser,
    line: sources::Line<'_>,
    limit: usize,
    counts: &mut LineCounts,
    events: &mut Vec<Event>,
) -> Pushed {
    counts.lines += 1;
    counts.bytes += line.bytes.len() as u64 + 1;
    if line.truncated {
        return Pushed::Bad(BadRecord::new(
            line.number,
            format!("line longer than {limit} bytes"),
            line.bytes,
        ));
    }
    parser.parse_into(line.number, line.bytes, events)
}

/// Reads one plain file split into `ranges`, one thread per range, through `source`, and
/// sends its events in file order. Formats whose parser needs more than the line itself
/// (RetailRocket, which loads an item catalog) are read by one thread. A read error ends the
/// input as in [`read_one`]: the lines before it are sent and the damage is added to `counts`.
#[allow(clippy::too_many_arguments)]
fn read_split(
    path: &str,
    ranges: &[std::ops::Range<u64>],
    source: &impl crate::split_read::RangeSource,
    options: &SourceOptions,
    dead_letter: &DeadLetter,
    channel: &ReaderChannel,
    counts: &mut LineCounts,
    progress: &SourceProgress<'_>,
) -> Result<(), String> {
    let name = input_name(path);
    let format = match open_detected(path, options)? {
        Opened::Ready((_, format, _)) => format,
        Opened::Empty => return Ok(()),
        Opened::Damaged(error) => {
            record_damage_at_start(name, &error, counts);
            return Ok(());
        }
    };
    if format == sources::Format::RetailRocket {
        return read_one(path, options, dead_letter, channel, counts, progress);
    }
    let mut parsers = Vec::with_capacity(ranges.len());
    for _ in ranges {
        let (parser, warnings) = sources::make_parser(format, options, Some(Path::new(path)))
            .map_err(|error| error.to_string())?;
        if parsers.is_empty() {
            for warning in warnings {
                tracing::warn!(input = name, "{warning}");
            }
        }
        parsers.push(parser);
    }
    tracing::info!(input = name, format = %format, threads = ranges.len(), "reading input");
    // NOTE: the whole file is parsed before any count arrives here, so a split file gets only
    // the end-of-input warning of `warn_if_mostly_bad`, not the early one of `read_one`.
    let before = counts.clone();
    let outputs = crate::split_read::parse_ranges(source, path, ranges, parsers, progress);
    for output in outputs {
        for record in &output.bad {
            dead_letter.bad(name, record);
        }
        for (batch, in_range) in output.batches {
            let mut so_far = counts.clone();
            so_far.add_lines(&in_range);
            let chunk = Chunk::Events(batch, so_far, channel.input);
            if channel.chunks.send(chunk).is_err() {
                return Ok(());
            }
        }
        let damage = output.damage.map(|damage| InputDamage {
            input: name.to_string(),
            lines: counts.lines - before.lines + damage.lines,
            bytes: counts.bytes - before.bytes + damage.bytes,
            error: damage.error,
        });
        counts.add_lines(&output.counts);
        if let Some(damage) = damage {
            record_damage(damage, counts);
        }
    }
    warn_if_mostly_bad(name, format, options.format.is_some(), &before, counts);
    Ok(())
}

/// Sorts `events` into processing order and drops exact duplicates (every field equal but the
/// line), as `veer run` does. Returns the number of duplicates dropped.
pub fn drop_exact_duplicates<E: Borrow<Event>>(events: &mut Vec<E>) -> u64 {
    fn event<E: Borrow<Event>>(item: &E) -> &Event {
        item.borrow()
    }
    events.sort_by(|a, b| event(a).processing_cmp(event(b)));
    let before = events.len();
    events.dedup_by(|later, earlier| event(later).same_content(event(earlier)));
    (before - events.len()) as u64
}

/// Reads every event of `paths` in file order, without a dead-letter file. A damaged input is
/// an error.
pub fn read_events(
    paths: Vec<String>,
    options: SourceOptions,
) -> anyhow::Result<(Vec<Event>, LineCounts)> {
    let dead_letter = DeadLetter::create(None)?;
    let receiver = spawn_reader(
        paths,
        options,
        dead_letter,
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Metrics::new(),
    );
    let mut events = Vec::new();
    for chunk in receiver {
        match chunk {
            Chunk::Events(mut batch, _, _) => events.append(&mut batch),
            // These callers (explain, report, stats, eval) read every event before they work,
            // so a damaged input fails them rather than give results of part of it.
            Chunk::Done(counts) => match counts.damaged.first() {
                Some(damage) => anyhow::bail!("{damage}"),
                None => return Ok((events, counts)),
            },
            Chunk::Failed(message) => anyhow::bail!(message),
        }
    }
    anyhow::bail!("the reader thread stopped unexpectedly")
}

/// Facts about a whole input that decide how it is replayed.
#[derive(Clone, Debug, Default)]
pub struct OrderProfile {
    /// Events older than an event on an earlier line.
    pub out_of_order: u64,
    /// Events that an arrival-order replay would see out of order: older than the newest event
    /// time its [`Watermark`] follows. Unlike `out_of_order`, this leaves out the first
    /// [`FAR_STREAK`] events and the events behind a far-future event that did not move the
    /// watermark.
    pub out_of_order_in_arrival: u64,
    /// Events that would be late if replayed in arrival order, by the [`Watermark`] of that
    /// replay.
    pub late_in_arrival: u64,
    /// Each user's events form one contiguous block, as in dumps sorted by user.
    pub grouped_by_user: bool,
}

/// Measures how far `events` (in file order) are from time order, with the default
/// `max_future_skew` of [`crate::config::TimeConfig`].
///
/// NOTE: a run with another `max_future_skew` can profile its input differently; use
/// [`OrderProfiler`] with the run's value to decide as that run does.
pub fn profile_order(events: &[Event], out_of_orderness_ms: i64) -> OrderProfile {
    let max_future_skew = crate::config::TimeConfig::default().max_future_skew;
    let mut profiler = OrderProfiler::new(out_of_orderness_ms, max_future_skew.as_millis() as i64);
    profiler.observe(events);
    profiler.finish()
}

/// Builds the [`OrderProfile`] of an input one batch at a time, so the feeder can measure
/// each batch as it arrives instead of the whole input at the end.
#[derive(Debug)]
pub struct OrderProfiler {
    profile: OrderProfile,
    /// The newest event time so far, far-future events included.
    newest: i64,
    /// The watermark of an arrival-order replay of the same events, which judges lateness
    /// with the guard against far-future events.
    watermark: Watermark,
    /// Users whose block of events has ended, while the input may still be grouped by user.
    finished_users: rustc_hash::FxHashSet<Id>,
    current_user: Option<Id>,
}

impl OrderProfiler {
    /// Creates a profiler that judges lateness as an arrival-order replay with these
    /// tolerances in milliseconds does (see [`Watermark::new`]).
    pub fn new(out_of_orderness_ms: i64, max_future_skew_ms: i64) -> Self {
        OrderProfiler {
            profile: OrderProfile {
                grouped_by_user: true,
                ..Default::default()
            },
            newest: i64::MIN,
            watermark: Watermark::new(out_of_orderness_ms, max_future_skew_ms),
            finished_users: Default::default(),
            current_user: None,
        }
    }

    /// Adds the next events of the input, in file order.
    pub fn observe(&mut self, events: &[Event]) {
        for event in events {
            if event.ts_ms < self.newest {
                self.profile.out_of_order += 1;
            }
            self.newest = self.newest.max(event.ts_ms);
            if self
                .watermark
                .newest()
                .is_some_and(|newest| event.ts_ms < newest)
            {
                self.profile.out_of_order_in_arrival += 1;
            }
            if self.watermark.observe(event.ts_ms) {
                self.profile.late_in_arrival += 1;
            }
        }
        if self.profile.grouped_by_user {
            self.check_grouped(events);
        }
    }

    /// Clears `grouped_by_user` when a user's events resume after another user's. Once it is
    /// clear, users are no longer tracked, which saves a set lookup per event on inputs in
    /// time order.
    fn check_grouped(&mut self, events: &[Event]) {
        for event in events {
            if self.current_user.as_ref() == Some(&event.user) {
                continue;
            }
            if let Some(previous) = self.current_user.take() {
                self.finished_users.insert(previous);
            }
            if self.finished_users.contains(&event.user) {
                self.profile.grouped_by_user = false;
                self.finished_users = Default::default();
                return;
            }
            self.current_user = Some(event.user.clone());
        }
    }

    /// Returns the profile of every event observed.
    pub fn finish(self) -> OrderProfile {
        self.profile
    }
}

/// Share of events that may be late in arrival order before `auto` sorts the input instead.
const AUTO_LATE_SHARE: f64 = 0.05;

/// Decides whether a fully read input is replayed sorted by event time.
pub fn replay_sorted(order: ReplayOrder, profile: &OrderProfile, events: usize) -> bool {
    match order {
        ReplayOrder::EventTime => true,
        ReplayOrder::Arrival => false,
        ReplayOrder::Auto => {
            if profile.out_of_order_in_arrival == 0 {
                return false;
            }
            let late_share = profile.late_in_arrival as f64 / events.max(1) as f64;
            profile.grouped_by_user || late_share > AUTO_LATE_SHARE
        }
    }
}

/// The watermark of an arrival-order replay: the newest event time less the allowed
/// out-of-orderness, guarded against far-future timestamps.
///
/// An event more than `max_future_skew_ms` ahead of the newest event moves the watermark only
/// when [`FAR_STREAK`] such events arrive in a row, and then to the earliest of them. Before the
/// first events there is no newest event to compare with, so every event counts as far ahead:
/// the watermark stays at 0 until the `FAR_STREAK`-th event and then starts from the earliest
/// of the first `FAR_STREAK`. A far-future first event thus does not make the events after it
/// late.
#[derive(Clone, Debug)]
pub struct Watermark {
    out_of_orderness_ms: i64,
    max_future_skew_ms: i64,
    /// The newest event time, `None` until the first `FAR_STREAK` events have arrived.
    newest: Option<i64>,
    far_streak: u32,
    far_earliest: i64,
}

/// Consecutive far-ahead events that convince the watermark the stream really jumped, and the
/// number of first events that start it.
pub const FAR_STREAK: u32 = 8;

impl Watermark {
    /// Creates a watermark with the given tolerances in milliseconds.
    pub fn new(out_of_orderness_ms: i64, max_future_skew_ms: i64) -> Self {
        Watermark {
            out_of_orderness_ms,
            max_future_skew_ms,
            newest: None,
            far_streak: 0,
            far_earliest: i64::MAX,
        }
    }

    /// Returns the current watermark in milliseconds (0 before the watermark has started).
    pub fn current(&self) -> u64 {
        self.newest.map_or(0, |newest| {
            newest.saturating_sub(self.out_of_orderness_ms).max(0) as u64
        })
    }

    /// Returns whether the first `FAR_STREAK` events have arrived, so that the watermark follows
    /// the newest event time.
    pub fn is_started(&self) -> bool {
        self.newest.is_some()
    }

    /// Returns the newest event time that the watermark follows, or `None` before it has
    /// started. A far-future event that did not move the watermark is not part of it.
    pub fn newest(&self) -> Option<i64> {
        self.newest
    }

    /// Returns whether an event at `ts_ms` is late, and otherwise takes it into account.
    pub fn observe(&mut self, ts_ms: i64) -> bool {
        let far_ahead = match self.newest {
            None => true,
            Some(_) if (ts_ms as u64) < self.current() => return true,
            Some(newest) => ts_ms > newest.saturating_add(self.max_future_skew_ms),
        };
        if far_ahead {
            self.far_streak += 1;
            self.far_earliest = self.far_earliest.min(ts_ms);
            if self.far_streak >= FAR_STREAK {
                self.newest = Some(self.far_earliest);
                self.far_streak = 0;
                self.far_earliest = i64::MAX;
            }
        } else {
            self.far_streak = 0;
            self.far_earliest = i64::MAX;
            self.newest = self.newest.map(|newest| newest.max(ts_ms));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a watermark started by `FAR_STREAK` events at `ts_ms`.
    fn started_at(ts_ms: i64, out_of_orderness_ms: i64, max_future_skew_ms: i64) -> Watermark {
        let mut watermark = Watermark::new(out_of_orderness_ms, max_future_skew_ms);
        for _ in 0..FAR_STREAK {
            assert!(!watermark.observe(ts_ms));
        }
        watermark
    }

    #[test]
    fn watermark_marks_late_events() {
        let mut watermark = started_at(10_000_000, 600_000, 86_400_000);
        assert!(!watermark.observe(9_970_000), "30 s behind is on time");
        assert!(watermark.observe(9_000_000), "1000 s behind is late");
        assert_eq!(watermark.current(), 9_400_000);
    }

    #[test]
    fn watermark_ignores_one_far_future_event() {
        let mut watermark = started_at(10_000_000, 600_000, 86_400_000);
        watermark.observe(10_000_000 + 400 * 86_400_000);
        assert_eq!(watermark.current(), 9_400_000);
        assert!(!watermark.observe(10_001_000));
    }

    #[test]
    fn watermark_follows_a_real_jump() {
        let mut watermark = started_at(0, 0, 1000);
        for step in 0..FAR_STREAK {
            watermark.observe(1_000_000 + i64::from(step));
        }
        assert_eq!(watermark.current(), 1_000_000);
    }

    #[test]
    fn watermark_starts_at_earliest_first_event() {
        let mut watermark = Watermark::new(600_000, 86_400_000);
        let first = [
            10_000_000, 9_000_000, 10_500_000, 9_500_000, 11_000_000, 10_000_000, 12_000_000,
        ];
        for ts_ms in first {
            assert!(!watermark.observe(ts_ms));
            assert_eq!(
                watermark.current(),
                0,
                "not started before event {FAR_STREAK}"
            );
            assert!(!watermark.is_started());
        }
        assert!(!watermark.observe(11_000_000));
        assert!(watermark.is_started());
        assert_eq!(watermark.current(), 9_000_000 - 600_000);
    }

    #[test]
    fn far_future_first_event_makes_nothing_late() {
        let far_future = 99_999_999_999_000;
        let skew_two_days = 10_000_000 + 2 * 86_400_000;
        for first in [far_future, skew_two_days] {
            let mut watermark = Watermark::new(600_000, 86_400_000);
            assert!(!watermark.observe(first));
            for step in 0..2_000 {
                let ts_ms = 10_000_000 + step * 1000;
                assert!(
                    !watermark.observe(ts_ms),
                    "event {step} after {first} is late"
                );
            }
            assert_eq!(watermark.current(), 10_000_000 + 1_999_000 - 600_000);
        }
    }

    #[test]
    fn far_future_first_events_short_of_a_streak() {
        let mut watermark = Watermark::new(600_000, 86_400_000);
        for _ in 0..FAR_STREAK - 1 {
            watermark.observe(99_999_999_999_000);
        }
        assert!(!watermark.observe(10_000_000));
        assert_eq!(watermark.current(), 10_000_000 - 600_000);
        assert!(!watermark.observe(10_001_000));
    }

    #[test]
    fn far_future_first_streak_moves_watermark() {
        let mut watermark = Watermark::new(600_000, 86_400_000);
        for step in 0..FAR_STREAK {
            watermark.observe(99_999_999_999_000 + i64::from(step));
        }
        assert_eq!(watermark.current(), 99_999_999_999_000 - 600_000);
        assert!(
            watermark.observe(10_000_000),
            "eight far events in a row are the new time"
        );
    }

    /// Returns two inputs of 40 users who view in turn, one event a second: one in time order,
    /// and one grouped by user.
    fn order_cases() -> [(&'static str, Vec<Event>); 2] {
        let view = |index: i64| {
            let user = (index % 40) as u64;
            let ts_ms = 1_511_539_200_000 + index * 1000;
            Event::plain(ts_ms, user, 7u64, 70u64, veer_models::Behavior::View)
        };
        let in_order: Vec<Event> = (0..2_000).map(view).collect();
        let mut grouped = in_order.clone();
        grouped.sort_by_key(|event| event.user.clone());
        [("in time order", in_order), ("grouped by user", grouped)]
    }

    /// Returns the replay decision of `--order auto` and the profile of `events`.
    fn auto_decision(events: &[Event]) -> (bool, OrderProfile) {
        let mut profiler = OrderProfiler::new(600_000, 86_400_000);
        profiler.observe(events);
        let profile = profiler.finish();
        let sorted = replay_sorted(ReplayOrder::Auto, &profile, events.len());
        (sorted, profile)
    }

    #[test]
    fn far_future_event_leaves_auto_decision() {
        let far_future = 99_999_999_999_000;
        for (label, events) in order_cases() {
            let (sorted, profile) = auto_decision(&events);
            // Each far-future event is a view of the user of the line after it, so a grouped
            // input stays grouped.
            let far_view = |of: &Event| Event {
                ts_ms: far_future,
                ..of.clone()
            };
            let mut far_first = vec![far_view(&events[0])];
            far_first.extend(events.iter().cloned());
            let mut far_inside = events.clone();
            far_inside.insert(1_000, far_view(&events[1_000]));
            for (place, with_far) in [("first", far_first), ("at line 1001", far_inside)] {
                let (sorted_with_far, profile_with_far) = auto_decision(&with_far);
                assert_eq!(sorted_with_far, sorted, "{label}, far-future event {place}");
                assert_eq!(
                    profile_with_far.late_in_arrival, profile.late_in_arrival,
                    "{label}, far-future event {place}"
                );
                assert_eq!(
                    profile_with_far.grouped_by_user, profile.grouped_by_user,
                    "{label}, far-future event {place}"
                );
            }
        }
    }

    #[test]
    fn auto_decision_of_order_cases() {
        let [(_, in_order), (_, grouped)] = order_cases();
        let (sorted, profile) = auto_decision(&in_order);
        assert!(
            !sorted,
            "an input in time order is replayed in arrival order"
        );
        assert_eq!(profile.out_of_order, 0);
        let (sorted, profile) = auto_decision(&grouped);
        assert!(sorted, "an input grouped by user is sorted");
        assert!(profile.grouped_by_user);
        assert!(profile.late_in_arrival > 1_000, "{profile:?}");
    }

    #[test]
    fn far_past_first_event_delays_start_only() {
        let base = 1_511_539_200_000;
        let mut watermark = Watermark::new(600_000, 86_400_000);
        assert!(!watermark.observe(1_000));
        // The first eight start the watermark at 1 s, and the next eight jump from there.
        for step in 0..2 * i64::from(FAR_STREAK) - 1 {
            assert!(!watermark.observe(base + step * 1000));
        }
        assert_eq!(watermark.current(), (base + 7_000 - 600_000) as u64);
        assert!(!watermark.observe(base + 15_000));
        assert_eq!(watermark.current(), (base + 15_000 - 600_000) as u64);
    }
}
