//! Reference rates for benchmarks: how fast a file can merely be read and split into lines, and
//! how fast the reader of `veer run` turns it into events, without any dataflow.
//!
//! Both measurements read the file through the same buffer of [`sources::open_input`] and the
//! same [`LineSplitter`], so the line scan is the cost of the reader's own I/O and splitting. The
//! parse runs the reader thread's loop with one parse thread ([`ingest::read_input`]): line
//! counts, the parser, batches and the channel send. Another thread empties the batches, as the
//! dataflow consumes them in a run. By default it gives them back to the reader, as
//! `veer run --order arrival` does, so the parse writes its events into memory it has used
//! before. With `--order auto` (the default) or `event-time`, `veer run` keeps every batch
//! until the input is read, so there each batch is new memory, whose page faults count in the
//! parse: [`BatchMemory::New`] measures that case.
//!
//! Compare the rates per CPU-second of the measuring thread. Wall time also counts the time the
//! thread waited for a core while other processes ran, which the involuntary context switches
//! show.

use std::time::Instant;

use crate::ingest;
use crate::sources::{self, LineSplitter, SourceOptions};
use crate::stats::median;

/// The memory that the parse writes its event batches into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMemory {
    /// Emptied batches go back to the reader, as with `veer run --order arrival`.
    Reused,
    /// Every batch is allocated and freed, as with `--order auto` or `event-time`, which keep
    /// every batch until the input is read.
    New,
}

/// Measurements of one scan.
#[derive(Clone, Debug, Default)]
pub struct ScanRate {
    /// Physical lines read.
    pub lines: u64,
    /// Events parsed (0 for a line scan).
    pub events: u64,
    /// Bytes read, line ends included.
    pub bytes: u64,
    /// Wall time of the scan.
    pub seconds: f64,
    /// CPU time of the scanning thread, which depends less than wall time on the other
    /// processes that share the machine.
    pub cpu_seconds: f64,
    /// Involuntary context switches of the scanning thread: how often the scheduler gave its
    /// core to another thread, which makes the wall time longer than the CPU time.
    pub involuntary_switches: u64,
}

impl ScanRate {
    /// Returns lines per second.
    pub fn lines_per_second(&self) -> f64 {
        self.lines as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Returns events per second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Returns events per second of the thread's CPU time.
    pub fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(f64::MIN_POSITIVE)
    }

    /// Returns megabytes (10^6 bytes) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Returns megabytes (10^6 bytes) per second of the thread's CPU time.
    pub fn megabytes_per_cpu_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.cpu_seconds.max(f64::MIN_POSITIVE)
    }
}

/// A line scan and a parse of the same file, run one after the other.
#[derive(Clone, Debug)]
pub struct ScanRound {
    /// The line scan.
    pub lines: ScanRate,
    /// The parse.
    pub parse: ScanRate,
}

impl ScanRound {
    /// Returns the parse rate as a percentage of the line-scan rate, both per CPU-second.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.parse.megabytes_per_cpu_second() / self.lines.megabytes_per_cpu_second()
    }

    /// Returns the parse rate as a percentage of the line-scan rate, both by wall time.
    pub fn wall_percent(&self) -> f64 {
        100.0 * self.parse.megabytes_per_second() / self.lines.megabytes_per_second()
    }
}

/// A start point for the wall and CPU time of one scan.
struct Clock {
    wall: Instant,
    cpu: f64,
    involuntary_switches: u64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: thread_cpu_seconds(),
            involuntary_switches: thread_involuntary_switches(),
        }
    }

    /// Writes the time since the start into `rate`.
    fn stop(&self, rate: &mut ScanRate) {
        rate.seconds = self.wall.elapsed().as_secs_f64();
        rate.cpu_seconds = thread_cpu_seconds() - self.cpu;
        rate.involuntary_switches =
            thread_involuntary_switches().saturating_sub(self.involuntary_switches);
    }
}

/// Returns the CPU time the calling thread has used, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec that outlives the call. If the clock is
    // not supported, the call fails and the value stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

/// Returns the involuntary context switches of the calling thread so far.
#[cfg(target_os = "linux")]
fn thread_involuntary_switches() -> u64 {
    // SAFETY: `rusage` is plain data, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage that outlives the call. On failure it stays
    // zero.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    u64::try_from(usage.ru_nivcsw).unwrap_or(0)
}

/// Returns 0: other systems have no per-thread count of involuntary context switches.
#[cfg(not(target_os = "linux"))]
fn thread_involuntary_switches() -> u64 {
    0
}

/// Reads `path` and splits it into lines, touching nothing else: the line-scan baseline.
pub fn scan_lines(path: &str) -> anyhow::Result<ScanRate> {
    let clock = Clock::start();
    let mut splitter = LineSplitter::new(sources::open_input(path)?);
    let mut rate = ScanRate::default();
    while let Some(line) = splitter.next_line()? {
        rate.lines += 1;
        rate.bytes += line.bytes.len() as u64 + 1;
    }
    clock.stop(&mut rate);
    Ok(rate)
}

/// Reads `path` into batches of events with the reader thread's code, and empties them on
/// another thread: the parse rate.
pub fn scan_parse(
    path: &str,
    options: &SourceOptions,
    memory: BatchMemory,
) -> anyhow::Result<ScanRate> {
    let (sender, receiver) = crossbeam_channel::bounded(ingest::CHANNEL_BATCHES);
    let pool = ingest::BatchPool::new();
    let consumer = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            for chunk in receiver {
                if let (ingest::Chunk::Events(batch, ..), BatchMemory::Reused) = (chunk, memory) {
                    pool.give_back(batch);
                }
            }
        })
    };

    // The reader logs the start of each input, which would repeat on every round.
    let quiet = tracing::subscriber::NoSubscriber::default();
    let clock = Clock::start();
    let read = tracing::subscriber::with_default(quiet, || {
        ingest::read_input(path, options, &sender, &pool)
    });
    let mut rate = ScanRate::default();
    clock.stop(&mut rate);

    drop(sender);
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread that drops the parsed events panicked"))?;
    let counts = read.map_err(anyhow::Error::msg)?;
    rate.lines = counts.lines;
    rate.events = counts.events;
    rate.bytes = counts.bytes;
    Ok(rate)
}

/// Runs `rounds` rounds of a line scan followed by a parse of `path`.
///
/// Alternating the two spreads the changes of the machine's load over both, so a round's
/// percentage compares scans made under about the same load.
pub fn scan_rounds(
    path: &str,
    options: &SourceOptions,
    memory: BatchMemory,
    rounds: usize,
) -> anyhow::Result<Vec<ScanRound>> {
    let mut results = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let lines = scan_lines(path)?;
        let parse = scan_parse(path, options, memory)?;
        results.push(ScanRound { lines, parse });
    }
    Ok(results)
}

/// Formats the medians of `rounds` of one file as text lines for the terminal.
///
/// The per-CPU-second line comes first, because it depends least on other load. A note follows
/// when the parse's CPU time was under 90% of its wall time.
pub fn summary(path: &str, memory: BatchMemory, rounds: &[ScanRound]) -> String {
    let median_of = |value: fn(&ScanRound) -> f64| median(rounds.iter().map(value).collect());
    let percents: Vec<String> = rounds
        .iter()
        .map(|round| format!("{:.1}%", round.cpu_percent()))
        .collect();
    let batches = match memory {
        BatchMemory::Reused => "reused batches",
        BatchMemory::New => "new batches",
    };
    let mut text = format!(
        "{path}: per CPU-second, median of {} rounds, {batches}: line scan {:.0} MB; parse {:.0} \
         events ({:.0} MB), {:.1}% of the line scan (rounds: {})\n",
        rounds.len(),
        median_of(|round| round.lines.megabytes_per_cpu_second()),
        median_of(|round| round.parse.events_per_cpu_second()),
        median_of(|round| round.parse.megabytes_per_cpu_second()),
        median_of(ScanRound::cpu_percent),
        percents.join(", "),
    );
    text.push_str(&format!(
        "{path}: by wall time, median: line scan {:.0} lines/s ({:.0} MB/s); parse {:.0} \
         events/s ({:.0} MB/s), {:.1}% of the line scan\n",
        median_of(|round| round.lines.lines_per_second()),
        median_of(|round| round.lines.megabytes_per_second()),
        median_of(|round| round.parse.events_per_second()),
        median_of(|round| round.parse.megabytes_per_second()),
        median_of(ScanRound::wall_percent),
    ));
    let cpu_share = median_of(|round| round.parse.cpu_seconds / round.parse.seconds);
    if cpu_share < 0.9 {
        let switches: u64 = rounds
            .iter()
            .map(|round| round.lines.involuntary_switches + round.parse.involuntary_switches)
            .sum();
        text.push_str(&format!(
            "{path}: note: the parse used a core for {:.0}% of its wall time, and the scans were \
             preempted {switches} times; other processes shared the cores, so compare the \
             per-CPU-second rates\n",
            100.0 * cpu_share
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_count_lines_and_cpu_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.csv");
        let mut text: String = (0..20_000)
            .map(|n| format!("{n},7,3,pv,1511539200\n"))
            .collect();
        text.push_str("\n1,2,3,clk,4\n");
        std::fs::write(&path, &text).unwrap();
        let path = path.to_str().unwrap();

        let lines = scan_lines(path).unwrap();
        assert_eq!(lines.lines, 20_002);
        assert_eq!(lines.events, 0);
        assert_eq!(lines.bytes, text.len() as u64);
        let mut rates = vec![lines.clone()];
        for memory in [BatchMemory::Reused, BatchMemory::New] {
            let parsed = scan_parse(path, &SourceOptions::default(), memory).unwrap();
            assert_eq!(parsed.lines, 20_002, "{memory:?}");
            assert_eq!(
                parsed.events, 20_000,
                "the blank and the bad line are no events"
            );
            assert_eq!(parsed.bytes, text.len() as u64, "{memory:?}");
            rates.push(parsed);
        }
        for rate in &rates {
            // One thread does the whole scan, so its CPU time is positive and at most the
            // wall time (with a margin for the two clocks' separate reads).
            assert!(rate.cpu_seconds > 0.0, "{rate:?}");
            assert!(rate.cpu_seconds <= rate.seconds + 0.001, "{rate:?}");
        }
    }

    #[test]
    fn parse_of_unreadable_input_fails() {
        let options = SourceOptions::default();
        let error = scan_parse("/nonexistent/events.csv", &options, BatchMemory::Reused)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/events.csv"), "{error}");
    }

    #[test]
    fn rounds_pair_line_scans_with_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let line = r#"{"user":1,"item":2,"category":3,"behavior":"view","ts":1511539200}"#;
        std::fs::write(&path, format!("{line}\n").repeat(1000)).unwrap();

        let options = SourceOptions::default();
        let rounds = scan_rounds(path.to_str().unwrap(), &options, BatchMemory::Reused, 2).unwrap();
        assert_eq!(rounds.len(), 2);
        for round in &rounds {
            assert_eq!(round.lines.lines, 1000);
            assert_eq!(round.parse.events, 1000);
            assert!(round.cpu_percent() > 0.0, "{round:?}");
        }
    }

    #[test]
    fn summary_shows_medians_and_preemption() {
        let rate = |bytes: u64, events: u64, cpu_seconds: f64, switches: u64| ScanRate {
            lines: 100,
            events,
            bytes,
            seconds: 1.0,
            cpu_seconds,
            involuntary_switches: switches,
        };
        let round = |parse_bytes: u64| ScanRound {
            lines: rate(1_000_000_000, 0, 1.0, 1),
            parse: rate(parse_bytes, 50, 0.5, 2),
        };
        let rounds = [round(100_000_000), round(300_000_000), round(200_000_000)];
        let text = summary("f", BatchMemory::Reused, &rounds);
        assert!(
            text.contains("median of 3 rounds, reused batches: line scan 1000 MB;"),
            "{text}"
        );
        assert!(text.contains("parse 100 events (400 MB), 40.0%"), "{text}");
        assert!(text.contains("(rounds: 20.0%, 60.0%, 40.0%)"), "{text}");
        assert!(
            text.contains("parse 50 events/s (200 MB/s), 20.0%"),
            "{text}"
        );
        assert!(text.contains("50% of its wall time"), "{text}");
        assert!(text.contains("preempted 9 times"), "{text}");

        let idle = [ScanRound {
            lines: rate(1_000_000_000, 0, 1.0, 0),
            parse: rate(100_000_000, 50, 1.0, 0),
        }];
        let text = summary("f", BatchMemory::New, &idle);
        assert!(text.contains("new batches"), "{text}");
        assert!(!text.contains("note"), "{text}");
    }
}
