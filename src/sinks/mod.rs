//! Alert sinks: where alerts go once the dataflow has released them.
//!
//! Worker 0 releases alerts in canonical order and hands each one to a [`Dispatcher`]. The
//! dispatcher encodes the alert once ([`AlertRecord`]) and puts it on the bounded queue of
//! every configured sink. Each sink runs on its own thread:
//!
//! - [`file::AlertFile`]: JSON lines appended to a file, each line written whole; in append
//!   mode a torn last line is cut and alerts whose ids the file contains are skipped.
//! - standard output: JSON lines.
//! - [`subscribers`]: a TCP socket that streams JSON lines to every connected subscriber.
//! - [`webhook`]: an HTTP POST per alert or per batch, retried with backoff, and written to a
//!   dead-letter file when its retry budget is spent.
//!
//! When a sink's queue is full, worker 0 waits until the sink takes the next alert
//! (backpressure). Memory stays bounded by the queue sizes, and the dataflow slows to the
//! pace of the slowest sink instead of dropping alerts. The subscriber sink never waits for a
//! subscriber: a subscriber whose own queue fills up is disconnected and logged.
//!
//! An alert counts as *lost* only when a sink could neither deliver it nor write it to its
//! dead-letter file (a failed disk write, or a sink thread that stopped). The run summary
//! reports lost alerts per sink, and `veer run` then fails.

pub mod backoff;
mod cli;
mod config;
pub mod file;
mod http;
mod lines;
mod report;
pub mod subscribers;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use veer_models::Alert;
use veer_operators::AlertSink;

pub use cli::SinkArgs;
pub use config::{SinkConfig, SubscriberConfig, WebhookConfig};
pub use report::{SinkReport, SinkStats, SinksDegraded};

use crate::metrics::{Metrics, SinkMetrics};
use crate::pipeline::AlertOutput;

/// One alert as the sinks send it: its id and its JSON line, encoded once for every sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    /// The alert's `alert_id`, which is stable across runs on the same input.
    pub id: String,
    /// The alert as one line of JSON, without the trailing newline.
    pub line: String,
}

impl AlertRecord {
    /// Encodes an alert.
    pub fn new(alert: &Alert) -> AlertRecord {
        AlertRecord {
            id: alert.alert_id(),
            line: alert.to_json_line(),
        }
    }
}

/// Message on a sink thread's queue.
pub(crate) enum Message {
    Alert(Arc<AlertRecord>),
    /// Acknowledge once every alert received before this message is written, delivered or
    /// dead-lettered.
    Flush(Sender<()>),
}

/// The dispatcher's handle on the queue of one sink.
struct SinkQueue {
    name: String,
    sender: Sender<Message>,
    /// Alerts that could not be queued because the sink thread had stopped.
    lost: Arc<AtomicU64>,
}

/// The worker-0 side of the sinks: fans each alert out to every sink's bounded queue.
///
/// Dropping the dispatcher, or calling [`AlertSink::close`], closes the queues; each sink
/// then drains its queue and its thread ends. [`SinkThreads::finish`] waits for that.
pub struct Dispatcher {
    queues: Vec<SinkQueue>,
}

impl Dispatcher {
    /// Sends one encoded alert to every sink, waiting while a sink's queue is full.
    pub fn send_record(&mut self, record: Arc<AlertRecord>) {
        for queue in &self.queues {
            if queue.sender.send(Message::Alert(record.clone())).is_err() {
                queue.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink = %queue.name, alert_id = %record.id, "alert lost: the sink has stopped");
            }
        }
    }

    /// Waits until every sink has written, delivered or dead-lettered every alert sent so
    /// far. A webhook whose receiver is down can hold this for up to its retry budget.
    ///
    /// A checkpoint calls this before it records its position, so that after `kill -9` the
    /// alerts before the checkpoint are in the sinks and those after it are sent again (and
    /// skipped by id in an alert file opened with [`file::AlertFile::open_append`]).
    pub fn flush(&self) {
        let mut acks = Vec::new();
        for queue in &self.queues {
            let (ack, done) = bounded(1);
            if queue.sender.send(Message::Flush(ack)).is_ok() {
                acks.push(done);
            }
        }
        for done in acks {
            // An error means the sink stopped; its losses are already counted.
            let _ = done.recv();
        }
    }
}

impl AlertSink for Dispatcher {
    fn send(&mut self, alert: &Alert) {
        self.send_record(Arc::new(AlertRecord::new(alert)));
    }

    fn close(&mut self) {
        self.queues.clear();
    }
}

/// The body of a sink thread: it takes alerts from the queue, updates its live counters, and
/// returns its final counts.
type SinkRun = dyn FnOnce(Receiver<Message>, Arc<SinkMetrics>) -> SinkStats + Send;

/// The sink threads of a run, joined at its end.
pub struct SinkThreads {
    threads: Vec<(String, Arc<AtomicU64>, JoinHandle<SinkStats>)>,
}

impl SinkThreads {
    /// Waits until every sink has drained its queue, and returns what each one did.
    ///
    /// Call it after the dispatcher is closed or dropped, or it waits forever.
    pub fn finish(self) -> SinkReport {
        let mut report = SinkReport::default();
        for (name, lost, thread) in self.threads {
            let mut stats = thread.join().unwrap_or_else(|_| {
                tracing::error!(sink = %name, "the sink thread panicked; its counts are unknown");
                SinkStats {
                    name: name.clone(),
                    failed: true,
                    ..SinkStats::default()
                }
            });
            stats.lost += lost.load(Ordering::Relaxed);
            report.sinks.push(stats);
        }
        report
    }
}

/// Starts the sinks of a run: `primary` (the `--alerts` output) and those in `config`.
///
/// Opening fails early, before any event is read, when a file cannot be created, a socket
/// cannot be bound or a webhook URL is invalid. Each sink also updates its counters in
/// `metrics`, under the sink's name, as it goes.
pub fn start(
    primary: &AlertOutput,
    config: &SinkConfig,
    metrics: &Metrics,
) -> anyhow::Result<(Dispatcher, SinkThreads)> {
    config.validate()?;
    let mut dispatcher = Dispatcher { queues: Vec::new() };
    let mut threads = SinkThreads {
        threads: Vec::new(),
    };
    let mut add = |name: String, run: Box<SinkRun>| {
        let (sender, receiver) = bounded(config.queue);
        let lost = Arc::new(AtomicU64::new(0));
        let live = metrics.sink(&name);
        let thread = std::thread::Builder::new()
            .name(format!("veer-sink-{}", threads.threads.len()))
            .spawn(move || run(receiver, live))
            .map_err(|error| {
                anyhow::anyhow!("failed to start the thread of sink {name}: {error}")
            })?;
        dispatcher.queues.push(SinkQueue {
            name: name.clone(),
            sender,
            lost: lost.clone(),
        });
        threads.threads.push((name, lost, thread));
        anyhow::Ok(())
    };

    match primary {
        AlertOutput::Stdout => {
            let writer = lines::LineSink::stdout();
            add(
                writer.name(),
                Box::new(move |receiver, live| writer.run(receiver, live)),
            )?;
        }
        AlertOutput::File(path) => {
            let writer = lines::LineSink::file(path, config.append)?;
            add(
                writer.name(),
                Box::new(move |receiver, live| writer.run(receiver, live)),
            )?;
        }
        AlertOutput::Discard => {}
    }
    if let Some(address) = &config.subscribers.listen {
        let sink = subscribers::SubscriberSink::bind(address, &config.subscribers)?;
        add(
            sink.name(),
            Box::new(move |receiver, live| sink.run(receiver, live)),
        )?;
    }
    for url in &config.webhook.urls {
        let sink = webhook::WebhookSink::new(url, &config.webhook)?;
        add(
            sink.name(),
            Box::new(move |receiver, live| sink.run(receiver, live)),
        )?;
    }
    Ok((dispatcher, threads))
}

/// Writes all of `bytes` to a socket without raising `SIGPIPE` when the peer has closed it.
///
/// `veer` restores the default `SIGPIPE` action, so that `veer run | head` ends quietly. That
/// default would also kill the process when a subscriber or a webhook receiver closes its
/// socket, so sockets are written with `send(MSG_NOSIGNAL)`, which returns `EPIPE` instead.
/// A write timeout set on the stream applies, and shows as `WouldBlock`.
pub(crate) fn send_all(stream: &std::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        while !bytes.is_empty() {
            // SAFETY: the pointer and length describe a live slice, and the descriptor
            // belongs to `stream`, which outlives the call.
            let sent = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if sent < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            bytes = &bytes[sent as usize..];
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::io::Write;
        // NOTE: without MSG_NOSIGNAL a closed peer can raise SIGPIPE here.
        let mut stream = stream;
        stream.write_all(bytes)
    }
}
