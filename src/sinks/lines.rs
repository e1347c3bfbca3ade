//! The JSON-lines sinks: the alert file and standard output.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::file::AlertFile;
use super::{Message, SinkStats};
use crate::metrics::SinkMetrics;

enum Target {
    File(AlertFile),
    Stdout(std::io::BufWriter<std::io::Stdout>),
}

/// Writes each alert as one JSON line. It flushes whenever its queue runs empty, so alerts of
/// a long-lived run reach the file at once, and a burst of alerts takes few write calls.
pub(crate) struct LineSink {
    target: Target,
    stats: SinkStats,
    /// Alerts of standard output counted delivered in the summary that are still in the write
    /// buffer. A failed flush may drop them, so they move from delivered to lost. The live
    /// counter counts them only once a flush has written them, because a live counter cannot
    /// go down. The alert file counts its own lines.
    unflushed: u64,
    /// Whether a write or flush failed; later failures are counted without a log line each.
    write_error: bool,
}

impl LineSink {
    pub(crate) fn stdout() -> LineSink {
        LineSink {
            target: Target::Stdout(std::io::BufWriter::new(std::io::stdout())),
            stats: SinkStats::named("stdout"),
            unflushed: 0,
            write_error: false,
        }
    }

    /// Creates (or truncates) the alert file, or with `append` reopens it idempotently.
    pub(crate) fn file(path: &Path, append: bool) -> anyhow::Result<LineSink> {
        let mut stats = SinkStats::named(&format!("file {}", path.display()));
        let file = if append {
            let (file, reopened) = AlertFile::open_append(path).map_err(|error| {
                crate::output_file::describe_error(error, || {
                    format!("cannot open alert file {} to append", path.display())
                })
            })?;
            tracing::info!(
                path = %path.display(),
                lines = reopened.lines,
                ids = reopened.ids,
                truncated_bytes = reopened.truncated_bytes,
                "appending to the alert file; alerts with ids already in it are skipped"
            );
            stats.truncated_bytes = reopened.truncated_bytes;
            file
        } else {
            AlertFile::create(path).map_err(|error| {
                crate::output_file::describe_error(error, || {
                    format!("cannot create alert file {}", path.display())
                })
            })?
        };
        Ok(LineSink {
            target: Target::File(file),
            stats,
            unflushed: 0,
            write_error: false,
        })
    }

    pub(crate) fn name(&self) -> String {
        self.stats.name.clone()
    }

    pub(crate) fn run(mut self, receiver: Receiver<Message>, live: Arc<SinkMetrics>) -> SinkStats {
        for message in receiver.iter() {
            match message {
                Message::Alert(record) => {
                    self.stats.received += 1;
                    live.attempt();
                    match &mut self.target {
                        Target::File(file) => {
                            let result = file.append(&record.id, &record.line);
                            if let Ok(false) = result {
                                self.stats.skipped += 1;
                            }
                            self.settle_file(result.map(|_| ()), &live);
                        }
                        Target::Stdout(out) => {
                            let result = writeln!(out, "{}", record.line);
                            self.settle_stdout(result, &record.id, &live);
                        }
                    }
                    if receiver.is_empty() {
                        self.flush(&live);
                    }
                }
                Message::Flush(ack) => {
                    self.flush(&live);
                    let _ = ack.send(());
                }
            }
        }
        self.flush(&live);
        self.stats
    }

    /// Writes the buffered alerts out and adds them to the live delivered counter.
    fn flush(&mut self, live: &SinkMetrics) {
        match &mut self.target {
            Target::File(file) => {
                let result = file.flush();
                self.settle_file(result, live);
            }
            Target::Stdout(out) => match out.flush() {
                Ok(()) => {
                    live.delivered(self.unflushed);
                    self.unflushed = 0;
                }
                Err(error) => {
                    // The failed write may have written part of the buffer, so the sink is
                    // also marked failed: its lost count is an upper bound.
                    self.stats.failed = true;
                    self.lose_unflushed();
                    self.log_first_error(&error, None);
                }
            },
        }
    }

    /// Takes the delivered and lost counts from the alert file after an append or a flush,
    /// which count exactly the lines that reached the file and the lines a failed write
    /// dropped.
    fn settle_file(&mut self, result: std::io::Result<()>, live: &SinkMetrics) {
        let Target::File(file) = &self.target else {
            return;
        };
        let (written, dropped) = (file.lines_written(), file.lines_dropped());
        live.delivered(written - self.stats.delivered);
        for _ in self.stats.lost..dropped {
            live.failure();
        }
        self.stats.delivered = written;
        self.stats.lost = dropped;
        self.stats.failed |= file.is_torn();
        if let Err(error) = result {
            self.log_first_error(&error, None);
        }
    }

    /// Counts one alert written to the standard output buffer, or lost by a failed write.
    fn settle_stdout(&mut self, result: std::io::Result<()>, id: &str, live: &SinkMetrics) {
        match result {
            Ok(()) => {
                self.stats.delivered += 1;
                self.unflushed += 1;
            }
            Err(error) => {
                self.stats.lost += 1;
                live.failure();
                self.lose_unflushed();
                self.log_first_error(&error, Some(id));
            }
        }
    }

    /// Logs the sink's first write error and keeps it for the summary. Later errors are only
    /// counted.
    fn log_first_error(&mut self, error: &std::io::Error, alert_id: Option<&str>) {
        if self.write_error {
            return;
        }
        self.write_error = true;
        self.stats.error = Some(error.to_string());
        tracing::error!(
            sink = %self.stats.name,
            alert_id,
            %error,
            "failed to write alerts; the lines that reached the sink are counted delivered, \
             the rest lost, and later failures are counted in the summary"
        );
    }

    /// Counts the alerts still in the standard output buffer as lost instead of delivered,
    /// after a write or flush error that may have dropped them.
    fn lose_unflushed(&mut self) {
        self.stats.delivered -= self.unflushed;
        self.stats.lost += self.unflushed;
        self.unflushed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::sinks::AlertRecord;

    /// Sends `alerts` alert lines through a file sink at `path` and returns its summary and
    /// the live metrics' delivered counter.
    fn run_file_sink(path: &Path, alerts: usize) -> (SinkStats, String) {
        let metrics = Metrics::new();
        let sink = LineSink::file(path, false).expect("create the alert file");
        let (sender, receiver) = crossbeam_channel::unbounded();
        for index in 0..alerts {
            let record = AlertRecord {
                id: format!("a{index}"),
                line: format!("{{\"alert_id\":\"a{index}\"}}"),
            };
            sender.send(Message::Alert(Arc::new(record))).unwrap();
        }
        drop(sender);
        let stats = sink.run(receiver, metrics.sink("file"));
        let delivered = metrics
            .to_prometheus()
            .lines()
            .find(|line| line.starts_with("veer_sink_delivered_total{sink=\"file\"}"))
            .expect("a delivered counter for the sink")
            .to_string();
        (stats, delivered)
    }

    #[test]
    fn written_alerts_count_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (stats, delivered) = run_file_sink(&dir.path().join("alerts.jsonl"), 3);
        assert_eq!(stats.delivered, 3);
        assert_eq!(stats.lost, 0);
        assert!(delivered.ends_with(" 3"), "{delivered}");
    }

    /// On a full disk the buffered alerts never reach the file, so neither the summary nor
    /// the live counter counts them delivered.
    #[cfg(target_os = "linux")]
    #[test]
    fn full_disk_counts_none_delivered() {
        let (stats, delivered) = run_file_sink(Path::new("/dev/full"), 20);
        assert_eq!(stats.delivered, 0);
        assert_eq!(stats.lost, 20);
        assert!(delivered.ends_with(" 0"), "{delivered}");
    }
}
