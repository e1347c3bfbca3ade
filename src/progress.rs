//! The progress display of long runs: a bar on standard error while a terminal watches.

use std::cell::Cell;
use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::Metrics;

/// A progress display that does nothing when disabled or when standard error is not a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The run's metrics, for the users tracked shown beside the bar.
    metrics: Option<Arc<Metrics>>,
    /// Whether the bar counts events (after [`Progress::processing`]) rather than bytes.
    counts_events: Cell<bool>,
}

impl Progress {
    /// Creates the display; `enabled` is the user's choice, and a terminal is required too.
    ///
    /// With `total_bytes` (plain files of known size) the reading phase shows a bar and an ETA;
    /// without it (standard input, gzip), a spinner with the bytes and rate so far.
    pub fn new(enabled: bool, total_bytes: Option<u64>) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                metrics: None,
                counts_events: Cell::new(false),
            };
        }
        let bar = ProgressBar::with_draw_target(total_bytes, ProgressDrawTarget::stderr_with_hz(4));
        let template = match total_bytes {
            Some(_) => "{bar:30} reading {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
            None => "{spinner} reading {bytes} ({bytes_per_sec}) {elapsed} {msg}",
        };
        bar.set_style(ProgressStyle::with_template(template).expect("the template is valid"));
        Progress {
            bar: Some(bar),
            metrics: None,
            counts_events: Cell::new(false),
        }
    }

    /// Shows the users tracked, read from `metrics`, beside the bar.
    pub fn with_users(mut self, metrics: Arc<Metrics>) -> Progress {
        self.metrics = Some(metrics);
        self
    }

    /// Returns the total size of `paths` when every one is a plain file, so that its bytes
    /// are the bytes read; `None` for standard input, a pipe or other special file, or a gzip
    /// file.
    ///
    /// Only regular files are opened, because a read from a named pipe such as `/dev/stdin`
    /// or `<(zcat …)` would consume bytes before the input reader reads them.
    pub fn plain_size(paths: &[String]) -> Option<u64> {
        let mut total = 0;
        for path in paths {
            if path == "-" {
                return None;
            }
            let metadata = std::fs::metadata(path).ok()?;
            if !metadata.is_file() {
                return None;
            }
            let mut magic = [0u8; 2];
            let mut file = std::fs::File::open(path).ok()?;
            let read = std::io::Read::read(&mut file, &mut magic).ok()?;
            if read == 2 && magic == [0x1f, 0x8b] {
                return None;
            }
            total += metadata.len();
        }
        Some(total)
    }

    /// Shows the bytes read so far.
    pub fn reading(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Switches to the processing phase over `total` events, with rate and ETA.
    pub fn processing(&self, total: u64) {
        self.counts_events.set(true);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(0);
            bar.reset_eta();
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {human_pos}/{human_len} events ({per_sec}, ETA {eta}) {msg}",
                )
                .expect("the template is valid"),
            );
        }
    }

    /// Shows the events processed so far (in the processing phase) and the users tracked.
    ///
    /// While the input is still read (arrival-order replay), the bar keeps counting bytes.
    pub fn processed(&self, events: u64) {
        let Some(bar) = &self.bar else { return };
        if self.counts_events.get() {
            bar.set_position(events);
        }
        if let Some(metrics) = &self.metrics {
            bar.set_message(format!("{} users tracked", metrics.users_tracked()));
        }
    }

    /// Removes the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn plain_size_counts_plain_files_only() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let plain = folder.path().join("events.csv");
        std::fs::write(&plain, b"1,2,3,pv,1511658000\n").expect("write");
        let gzip = folder.path().join("events.csv.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder
            .write_all(b"1,2,3,pv,1511658000\n")
            .expect("compress");
        std::fs::write(&gzip, encoder.finish().expect("compress")).expect("write");
        let name = |path: &std::path::Path| path.to_str().expect("UTF-8 path").to_string();

        assert_eq!(Progress::plain_size(&[name(&plain)]), Some(20));
        assert_eq!(
            Progress::plain_size(&[name(&plain), name(&plain)]),
            Some(40)
        );
        assert_eq!(Progress::plain_size(&[name(&plain), name(&gzip)]), None);
        assert_eq!(Progress::plain_size(&["-".to_string()]), None);
        assert_eq!(
            Progress::plain_size(&[name(&folder.path().join("missing"))]),
            None
        );
    }
}
