//! Reference rates for benchmarks: how fast a file can merely be split into lines, and how
//! fast it can be parsed, without any dataflow.

use std::time::Instant;

use crate::sources::{self, LineSplitter, Parsed, SourceOptions};

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
}

impl ScanRate {
    /// Returns lines per second.
    pub fn lines_per_second(&self) -> f64 {
        self.lines as f64 / self.seconds.max(f64::MIN_POSITIVE)
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

/// A start point for the wall and CPU time of one scan.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: thread_cpu_seconds(),
        }
    }

    /// Writes the time since the start into `rate`.
    fn stop(&self, rate: &mut ScanRate) {
        rate.seconds = self.wall.elapsed().as_secs_f64();
        rate.cpu_seconds = thread_cpu_seconds() - self.cpu;
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

/// Reads, splits and parses `path` into events, then drops them: the parse rate.
pub fn scan_parse(path: &str, options: &SourceOptions) -> anyhow::Result<ScanRate> {
    let clock = Clock::start();
    let mut reader = sources::open_input(path)?;
    let format = match options.format {
        Some(format) => format,
        None => {
            let head = std::io::BufRead::fill_buf(&mut reader)?;
            sources::detect_format(head).ok_or_else(|| {
                anyhow::anyhow!("cannot detect the format of {path}; pass --format")
            })?
        }
    };
    let (mut parser, _) = sources::make_parser(format, options, Some(std::path::Path::new(path)))?;
    let mut splitter = LineSplitter::new(reader);
    let mut rate = ScanRate::default();
    while let Some(line) = splitter.next_line()? {
        rate.lines += 1;
        rate.bytes += line.bytes.len() as u64 + 1;
        if let Parsed::Event(event) = parser.parse(line.number, line.bytes) {
            rate.events += 1;
            std::hint::black_box(event);
        }
    }
    clock.stop(&mut rate);
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_count_lines_and_cpu_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.csv");
        let text: String = (0..20_000)
            .map(|n| format!("{n},7,3,pv,1511539200\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();

        let lines = scan_lines(path).unwrap();
        assert_eq!(lines.lines, 20_000);
        assert_eq!(lines.events, 0);
        let parsed = scan_parse(path, &SourceOptions::default()).unwrap();
        assert_eq!(parsed.events, 20_000);
        for rate in [&lines, &parsed] {
            // One thread does the whole scan, so its CPU time is positive and at most the
            // wall time (with a margin for the two clocks' separate reads).
            assert!(rate.cpu_seconds > 0.0, "{rate:?}");
            assert!(rate.cpu_seconds <= rate.seconds + 0.001, "{rate:?}");
        }
    }
}
