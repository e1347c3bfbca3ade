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
}

/// Reads `path` and splits it into lines, touching nothing else: the line-scan baseline.
pub fn scan_lines(path: &str) -> anyhow::Result<ScanRate> {
    let started = Instant::now();
    let mut splitter = LineSplitter::new(sources::open_input(path)?);
    let mut rate = ScanRate::default();
    while let Some(line) = splitter.next_line()? {
        rate.lines += 1;
        rate.bytes += line.bytes.len() as u64 + 1;
    }
    rate.seconds = started.elapsed().as_secs_f64();
    Ok(rate)
}

/// Reads, splits and parses `path` into events, then drops them: the parse rate.
pub fn scan_parse(path: &str, options: &SourceOptions) -> anyhow::Result<ScanRate> {
    let started = Instant::now();
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
    rate.seconds = started.elapsed().as_secs_f64();
    Ok(rate)
}
