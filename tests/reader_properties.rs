//! Property tests of the four input readers on hostile input: arbitrary bytes, mutated lines
//! of the real samples, and lines far over the length limit.
//!
//! Each property checks that a reader never panics, accounts for every physical line (lines =
//! events + bad + skipped), and keeps its heap use bounded by the longest line it reads rather
//! than by the input's length. A counting global allocator measures the peak heap use of the
//! reading thread. Case counts are fixed (256 per property) so that the suite stays fast.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use veer::sources::{
    make_parser, Format, LineParser, LineSplitter, MissingCategory, Parsed, SourceOptions,
    DEFAULT_MAX_LINE_BYTES, MAX_RAW_BYTES,
};

use common::shared;

/// Cases per property: enough to reach the readers' error paths, few enough for CI.
const CASES: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Heap use of the current thread.

/// The system allocator, with a per-thread count of live bytes and their peak.
struct CountingAllocator;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn record_allocation(delta: isize) {
    // `try_with` because the allocator also runs while a thread's locals are torn down.
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only add bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        record_allocation(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            record_allocation(new_size as isize - layout.size() as isize);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `work` and returns its result with the peak of extra heap bytes it held on this thread.
fn with_peak_heap<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(start));
    let result = work();
    let peak = PEAK_BYTES.with(Cell::get);
    (result, (peak - start).max(0) as usize)
}

// ---------------------------------------------------------------------------------------------
// Readers and their seed lines.

fn source_options(format: Format) -> SourceOptions {
    let mut options = SourceOptions {
        format: Some(format),
        ..SourceOptions::default()
    };
    if format == Format::RetailRocket {
        let case = "cases/07-retailrocket-bom-crlf";
        options.item_properties = vec![
            shared(&format!("{case}/item_properties_part1.csv")),
            shared(&format!("{case}/item_properties_part2.csv")),
        ];
        options.category_tree = Some(shared("data/retailrocket_category_tree/category_tree.csv"));
        // The sample's items are mostly absent from the case's properties; with `Item` they
        // still become events, so the event path is exercised too.
        options.missing_category = Some(MissingCategory::Item);
    }
    options
}

fn new_parser(format: Format) -> Box<dyn LineParser> {
    let (parser, _warnings) =
        make_parser(format, &source_options(format), None).expect("the parser builds");
    parser
}

/// Returns up to `count` lines of a shared file, each with its `\r` if it had one.
fn first_lines(relative: &str, count: usize) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(shared(relative)).expect("sample opens");
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut line = Vec::new();
    while lines.len() < count && reader.read_until(b'\n', &mut line).expect("sample reads") > 0 {
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        lines.push(std::mem::take(&mut line));
    }
    lines
}

/// Real lines of each format, from the shared samples and handed cases, to mutate.
fn seed_lines(format: Format) -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<(Format, Vec<Vec<u8>>)>> = OnceLock::new();
    let seeds = SEEDS.get_or_init(|| {
        let mut generated = Vec::new();
        let stream = veer::generate::generate(&veer::generate::GenerateConfig {
            users: 20,
            days: 5,
            ..Default::default()
        });
        veer::generate::write_events(
            &stream.events[..200],
            veer::generate::GenFormat::Jsonl,
            &mut generated,
        )
        .expect("generated lines");
        let mut jsonl: Vec<Vec<u8>> = generated
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        jsonl.extend(first_lines("cases/09-json-ids-and-shapes/input.jsonl", 500));

        let mut taobao = first_lines("data/taobao_ub_usersorted/UserBehavior.csv", 200);
        taobao.extend(first_lines(
            "data/taobao_ub_subsample_crlf/UserBehavior.csv",
            50,
        ));
        taobao.extend(first_lines(
            "cases/08-taobao-malformed-lines/input.csv",
            200,
        ));

        let mut retailrocket = first_lines("data/retailrocket_events_sample/events.csv", 200);
        retailrocket.extend(first_lines(
            "cases/07-retailrocket-bom-crlf/events.csv",
            100,
        ));

        let rees46 = first_lines("data/rees46_2019oct/2019-Oct.csv", 200);
        vec![
            (Format::Jsonl, jsonl),
            (Format::Taobao, taobao),
            (Format::RetailRocket, retailrocket),
            (Format::Rees46, rees46),
        ]
    });
    let (_, lines) = seeds
        .iter()
        .find(|(known, _)| *known == format)
        .expect("every format has seeds");
    lines
}

// ---------------------------------------------------------------------------------------------
// Reading and accounting.

/// Counts of what a reader made of an input.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    lines: u64,
    events: u64,
    bad: u64,
    skipped: u64,
}

/// Returns the physical lines of `input` as the readers count them: a final newline adds no
/// line, and a last line without one still counts.
fn physical_lines(input: &[u8]) -> u64 {
    let newlines = memchr_count(input);
    match input.last() {
        None => 0,
        Some(b'\n') => newlines,
        Some(_) => newlines + 1,
    }
}

fn memchr_count(input: &[u8]) -> u64 {
    input.iter().filter(|&&byte| byte == b'\n').count() as u64
}

/// Reads `input` line by line as the engine does, checking each outcome's line number and
/// bounds, and returns the tally.
fn read_through(
    parser: &mut dyn LineParser,
    input: impl Read,
    buffer_bytes: usize,
    max_line_bytes: usize,
) -> Result<Tally, TestCaseError> {
    let reader = BufReader::with_capacity(buffer_bytes, input);
    let mut lines = LineSplitter::new(reader).with_max_line_bytes(max_line_bytes);
    let mut tally = Tally::default();
    while let Some(parsed) = lines
        .next_parsed(parser)
        .map_err(|error| TestCaseError::fail(format!("read error: {error}")))?
    {
        tally.lines += 1;
        let number = lines.line_number();
        prop_assert_eq!(number, tally.lines, "line numbers skip or repeat");
        match parsed {
            Parsed::Event(event) => {
                tally.events += 1;
                prop_assert_eq!(event.line, number);
            }
            Parsed::Skip => tally.skipped += 1,
            Parsed::Bad(record) => {
                tally.bad += 1;
                prop_assert_eq!(record.line, number);
                prop_assert!(!record.reason.is_empty(), "bad record without a reason");
                prop_assert!(
                    record.raw.len() <= MAX_RAW_BYTES,
                    "raw text of {} bytes",
                    record.raw.len()
                );
            }
        }
    }
    Ok(tally)
}

/// Heap that reading may take beyond its buffers: parser scratch and one parsed line.
const HEAP_SLACK: usize = 64 * 1024;

/// Heap bytes allowed per byte of the longest line, for the parsed values of that line.
const HEAP_PER_LINE_BYTE: usize = 64;

fn longest_line(input: &[u8]) -> usize {
    input
        .split(|&byte| byte == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

/// Reads `input` with every reader and checks the accounting and the heap bound.
fn check_all_readers(
    input: &[u8],
    buffer_bytes: usize,
    max_line_bytes: usize,
) -> Result<(), TestCaseError> {
    for format in Format::ALL {
        let mut parser = new_parser(format);
        let (tally, peak) =
            with_peak_heap(|| read_through(parser.as_mut(), input, buffer_bytes, max_line_bytes));
        let tally = tally?;
        prop_assert_eq!(tally.lines, physical_lines(input), "{} lines", format);
        prop_assert_eq!(
            tally.lines,
            tally.events + tally.bad + tally.skipped,
            "{} accounting",
            format
        );
        let held_line = longest_line(input).min(max_line_bytes + 1);
        let allowed = buffer_bytes + HEAP_SLACK + HEAP_PER_LINE_BYTE * held_line;
        prop_assert!(
            peak <= allowed,
            "{} held {} heap bytes, allowed {}",
            format,
            peak,
            allowed
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutations of real lines.

/// Fragments that readers treat specially, inserted by mutations.
const TOKENS: &[&str] = &[
    ",",
    "\"",
    "\r",
    "\t",
    " ",
    "{",
    "}",
    "[",
    "]",
    ":",
    "null",
    "-1",
    "0",
    "1e400",
    "NaN",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "99999999999999999999",
    "1511658000000",
    "2019-10-01 00:00:00 UTC",
    "2019-13-45 25:61:61 UTC",
    "\u{feff}",
    "\\u0000",
    "\\ud800",
    "\u{4e2d}\u{6587}",
    "\"user\":",
    "\"ts\":",
    "pv",
    "view",
    "buy",
];

#[derive(Clone, Debug)]
enum Mutation {
    Replace(Index, u8),
    Insert(Index, u8),
    InsertToken(Index, Index),
    Delete(Index, usize),
    Truncate(Index),
    Repeat(Index, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, token)| Mutation::InsertToken(at, token)),
        (any::<Index>(), 1usize..12).prop_map(|(at, length)| Mutation::Delete(at, length)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..16, 1usize..40)
            .prop_map(|(at, length, times)| Mutation::Repeat(at, length, times)),
    ]
}

fn apply(line: &mut Vec<u8>, mutation: &Mutation) {
    let position = |at: &Index, line: &Vec<u8>| at.index(line.len() + 1);
    match mutation {
        Mutation::Replace(at, byte) if !line.is_empty() => {
            let index = at.index(line.len());
            line[index] = *byte;
        }
        Mutation::Replace(..) => {}
        Mutation::Insert(at, byte) => line.insert(position(at, line), *byte),
        Mutation::InsertToken(at, token) => {
            let index = position(at, line);
            let token = TOKENS[token.index(TOKENS.len())].as_bytes();
            line.splice(index..index, token.iter().copied());
        }
        Mutation::Delete(at, length) => {
            let start = position(at, line).min(line.len());
            let end = (start + length).min(line.len());
            line.drain(start..end);
        }
        Mutation::Truncate(at) => line.truncate(position(at, line)),
        Mutation::Repeat(at, length, times) => {
            let start = position(at, line).min(line.len());
            let end = (start + length).min(line.len());
            let piece = line[start..end].to_vec();
            for _ in 0..*times {
                line.splice(end..end, piece.iter().copied());
            }
        }
    }
}

/// Generates one line of a mutated input: a seed line and the mutations applied to it.
fn mutated_line() -> impl Strategy<Value = (Index, Vec<Mutation>)> {
    (any::<Index>(), prop::collection::vec(mutation(), 0..4))
}

/// Builds an input from mutated seed lines of `format`.
fn build_input(
    format: Format,
    lines: &[(Index, Vec<Mutation>)],
    crlf: bool,
    final_newline: bool,
) -> Vec<u8> {
    let seeds = seed_lines(format);
    let mut input = Vec::new();
    for (number, (seed, mutations)) in lines.iter().enumerate() {
        if number > 0 {
            input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let mut line = seeds[seed.index(seeds.len())].clone();
        for mutation in mutations {
            apply(&mut line, mutation);
        }
        input.extend_from_slice(&line);
    }
    if final_newline && !input.is_empty() {
        input.push(b'\n');
    }
    input
}

/// Reads `input` from a file through the engine's reader thread and checks its line counts.
fn check_engine_counts(format: Format, input: &[u8]) -> Result<(), TestCaseError> {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path: PathBuf = folder.path().join("input");
    std::fs::write(&path, input).expect("input written");
    let path = path.to_str().expect("UTF-8 path").to_string();
    let (events, counts) = veer::ingest::read_events(vec![path], source_options(format))
        .map_err(|error| TestCaseError::fail(format!("{format}: {error:#}")))?;
    prop_assert_eq!(counts.lines, physical_lines(input), "{} lines", format);
    prop_assert_eq!(
        counts.lines,
        counts.events + counts.bad + counts.skipped,
        "{} accounting: {:?}",
        format,
        counts
    );
    prop_assert_eq!(counts.events, events.len() as u64, "{} events", format);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Generates bytes with more line breaks, field separators and quotes than uniform bytes have.
fn hostile_bytes(max_length: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        12 => any::<u8>(),
        2 => Just(b'\n'),
        2 => Just(b','),
        1 => Just(b'\r'),
        1 => Just(b'"'),
        1 => Just(b'{'),
    ];
    prop::collection::vec(byte, 0..max_length)
}

/// Generates a line limit: mostly the engine's own, sometimes small so that cut lines are common.
fn line_limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(DEFAULT_MAX_LINE_BYTES), 1usize..200]
}

/// Generates a read buffer size: mostly large, sometimes tiny so that lines span buffer fills.
fn buffer_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(64 * 1024), 1usize..32]
}

/// Generates a JSON object with the contract's keys and values of every JSON type.
fn json_object() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![
        "user", "item", "category", "behavior", "ts", "price", "brand", "dwell_ms", "query",
        "session", "extra", "",
    ]);
    let value = prop::sample::select(vec![
        "1",
        "-1",
        "0",
        "1.5",
        "1e400",
        "-0",
        "18446744073709551616",
        "340282366920938463463374607431768211456",
        "1511658000",
        "1511658000000",
        "\"1511658000\"",
        "\"2017-11-26T00:00:00Z\"",
        "\"2017-02-30T25:00:00Z\"",
        "\"view\"",
        "\"pv\"",
        "\"buy\"",
        "\"remove_from_cart\"",
        "\"unknown\"",
        "\"\"",
        "null",
        "true",
        "[]",
        "[1,2]",
        "{}",
        "{\"a\":{\"b\":[1]}}",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\u{4e2d}\"",
    ]);
    prop::collection::vec((key, value), 0..12).prop_map(|fields| {
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("\"{key}\":{value}"))
            .collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_accounted(
        input in hostile_bytes(2048),
        buffer_bytes in buffer_size(),
        max_line_bytes in line_limit(),
    ) {
        check_all_readers(&input, buffer_bytes, max_line_bytes)?;
    }

    #[test]
    fn mutated_real_lines_accounted(
        lines in prop::collection::vec(mutated_line(), 0..24),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
        buffer_bytes in buffer_size(),
        max_line_bytes in line_limit(),
    ) {
        for format in Format::ALL {
            let input = build_input(format, &lines, crlf, final_newline);
            check_all_readers(&input, buffer_bytes, max_line_bytes)?;
            check_engine_counts(format, &input)?;
        }
    }

    #[test]
    fn json_objects_accounted(
        objects in prop::collection::vec(json_object(), 0..16),
        buffer_bytes in buffer_size(),
    ) {
        let input = objects.join(&b'\n');
        check_all_readers(&input, buffer_bytes, DEFAULT_MAX_LINE_BYTES)?;
        check_engine_counts(Format::Jsonl, &input)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Lines over the 1 MiB limit, streamed so that the test itself holds none of them.

/// A reader of `length` bytes that repeat `pattern`, then a newline and `tail`.
struct LongLine {
    pattern: Vec<u8>,
    length: usize,
    sent: usize,
    tail: std::io::Cursor<Vec<u8>>,
}

impl Read for LongLine {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.sent < self.length {
            let count = buffer.len().min(self.length - self.sent);
            for (offset, slot) in buffer[..count].iter_mut().enumerate() {
                *slot = self.pattern[(self.sent + offset) % self.pattern.len()];
            }
            self.sent += count;
            return Ok(count);
        }
        self.tail.read(buffer)
    }
}

proptest! {
    // Each case streams several MiB, so this property runs fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn long_lines_cut_with_bounded_heap(
        extra in 1usize..(15 * DEFAULT_MAX_LINE_BYTES),
        seed in any::<Index>(),
        format_index in 0usize..4,
    ) {
        let format = Format::ALL[format_index];
        let seeds = seed_lines(format);
        // A later seed line, so that a format's header is not used as the valid last line, and
        // not an empty one, which would leave no line after the long one.
        let candidates: Vec<&Vec<u8>> = seeds[1..].iter().filter(|line| !line.is_empty()).collect();
        let valid = candidates[seed.index(candidates.len())].clone();
        let input = LongLine {
            pattern: [valid.as_slice(), b","].concat(),
            length: DEFAULT_MAX_LINE_BYTES + extra,
            sent: 0,
            tail: std::io::Cursor::new([b"\n".as_slice(), &valid].concat()),
        };
        let buffer_bytes = 256 * 1024;
        let mut parser = new_parser(format);
        let (outcome, peak) = with_peak_heap(|| {
            let reader = BufReader::with_capacity(buffer_bytes, input);
            let mut lines = LineSplitter::new(reader);
            let first = lines.next_parsed(parser.as_mut()).expect("reads");
            let second = lines.next_parsed(parser.as_mut()).expect("reads");
            let end = lines.next_parsed(parser.as_mut()).expect("reads");
            (first, second, end)
        });
        let (first, second, end) = outcome;
        match first {
            Some(Parsed::Bad(record)) => {
                prop_assert_eq!(record.line, 1);
                prop_assert!(
                    record.reason.contains("longer than 1048576 bytes"),
                    "reason: {}",
                    record.reason
                );
                prop_assert!(record.raw.len() <= MAX_RAW_BYTES);
            }
            other => prop_assert!(false, "the long line gave {:?}", other),
        }
        let reparsed = new_parser(format).parse(2, valid.strip_suffix(b"\r").unwrap_or(&valid));
        prop_assert_eq!(second, Some(reparsed), "the line after the long one");
        prop_assert!(end.is_none());
        // The line is cut at the limit: the heap holds one limit's worth, the read buffer and
        // parser scratch, however long the line is.
        let allowed = DEFAULT_MAX_LINE_BYTES * 2 + buffer_bytes + HEAP_SLACK;
        prop_assert!(peak <= allowed, "held {} heap bytes for a {} byte line", peak, DEFAULT_MAX_LINE_BYTES + extra);
    }
}

#[test]
fn long_line_counted_by_engine() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("long.csv");
    let valid = b"543462,1715,1464116,pv,1511658000";
    let mut input = valid.repeat(DEFAULT_MAX_LINE_BYTES / valid.len() * 3);
    input.push(b'\n');
    input.extend_from_slice(valid);
    std::fs::write(&path, &input).unwrap();
    let (events, counts) = veer::ingest::read_events(
        vec![path.to_str().unwrap().to_string()],
        source_options(Format::Taobao),
    )
    .expect("the input reads");
    assert_eq!(counts.lines, 2);
    assert_eq!(counts.bad, 1);
    assert_eq!(counts.events, 1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].line, 2);
}
