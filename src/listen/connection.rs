//! One client connection: bounded line assembly, per-connection format detection, parsing,
//! and the limits that close a connection.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use veer_models::Event;

use super::{ListenSettings, ListenShared, SourceMessage, BATCH, POLL, READ_BYTES};
use crate::ingest::DeadLetter;
use crate::sources::{self, BadRecord, Format, LineParser, Parsed, SourceOptions};

/// Sleep between two checks while a connection is held back because it is ahead.
const PAUSE: Duration = Duration::from_millis(20);

/// Length of a pause after which it is logged, with its end. Shorter pauses are the normal
/// backpressure of a fast client and are not logged, so each logged pause lasts at least this.
const PAUSE_LOG_AFTER: Duration = Duration::from_secs(1);

/// Maximum bytes a connection reads after a shutdown request: data the system has already
/// received, which is at most its receive buffer unless the client keeps sending.
const SHUTDOWN_READ_BYTES: usize = 64 << 20;

/// Maximum time a connection reads after a shutdown request.
const SHUTDOWN_READ_TIME: Duration = Duration::from_secs(2);

/// An accepted connection, run on its own thread.
pub(super) struct Connection {
    pub(super) stream: TcpStream,
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) settings: Arc<ListenSettings>,
    pub(super) shared: Arc<ListenShared>,
    pub(super) sender: Sender<SourceMessage>,
    pub(super) dead_letter: DeadLetter,
}

/// Reason the engine closed a connection.
#[derive(Debug)]
enum Cutoff {
    LineTooLong,
    LineTimeout,
    UnknownFormat,
    TooManyBadLines,
}

/// Outcome of a connection's read loop.
enum Ending {
    PeerClosed,
    Shutdown,
    Cut(Cutoff),
    Failed(std::io::Error),
    WorkerGone,
}

/// Line assembly and parsing state of one connection.
struct Lines {
    label: Arc<str>,
    max_line_bytes: usize,
    max_bad_lines: u64,
    format: Option<Format>,
    parser: Option<Box<dyn LineParser>>,
    /// The unfinished last line, at most `max_line_bytes + 1` bytes (a final `\r` may follow).
    partial: Vec<u8>,
    partial_since: Option<Instant>,
    line: u64,
    bad_run: u64,
    events: Vec<Event>,
    /// When the bytes being split were read from the socket.
    read_at: Instant,
    counts: ConnectionCounts,
}

#[derive(Default)]
struct ConnectionCounts {
    lines: u64,
    events: u64,
    bad: u64,
    skipped: u64,
    bytes: u64,
}

impl Connection {
    pub(super) fn run(mut self) {
        let label: Arc<str> = format!("tcp:{}#{}", self.peer, self.id).into();
        let watermark = Arc::new(AtomicU64::new(0));
        tracing::info!(connection = self.id, peer = %self.peer, "connection opened");
        let opened = SourceMessage::Opened {
            source: self.id,
            label: label.clone(),
            watermark: watermark.clone(),
        };
        let mut lines = Lines {
            label,
            max_line_bytes: self.settings.limits.max_line_bytes,
            max_bad_lines: self.settings.limits.max_bad_lines.max(1),
            format: self.settings.format,
            parser: None,
            partial: Vec::new(),
            partial_since: None,
            line: 0,
            bad_run: 0,
            events: Vec::new(),
            read_at: Instant::now(),
            counts: ConnectionCounts::default(),
        };
        let ending = if self.sender.send(opened).is_err() {
            Ending::WorkerGone
        } else {
            self.read_loop(&mut lines, &watermark)
        };
        self.finish(lines, ending);
    }

    fn read_loop(&mut self, lines: &mut Lines, watermark: &AtomicU64) -> Ending {
        if let Err(error) = self.stream.set_read_timeout(Some(POLL)) {
            return Ending::Failed(error);
        }
        let mut buffer = vec![0u8; READ_BYTES];
        let mut pause = PauseLog::default();
        loop {
            if crate::shutdown::requested() {
                return self.read_received(lines, &mut buffer);
            }
            if self.is_ahead(watermark) {
                pause.paused(self);
                std::thread::sleep(PAUSE);
                continue;
            }
            pause.resumed(self);
            let count = match read_some(&mut self.stream, &mut buffer) {
                Ok(Some(0)) => return Ending::PeerClosed,
                Ok(Some(count)) => count,
                Ok(None) => {
                    let timeout = self.settings.limits.line_timeout;
                    if lines
                        .partial_since
                        .is_some_and(|since| since.elapsed() >= timeout)
                    {
                        lines.unfinished_line(
                            &self.shared,
                            &self.dead_letter,
                            format!("line not finished within the line timeout of {timeout:?}"),
                        );
                        return Ending::Cut(Cutoff::LineTimeout);
                    }
                    continue;
                }
                Err(error) => return Ending::Failed(error),
            };
            if let Some(ending) = self.take_bytes(lines, &buffer[..count]) {
                return ending;
            }
        }
    }

    /// Splits `bytes` into lines, parses them and sends the events. Returns the ending when
    /// the connection must close.
    fn take_bytes(&self, lines: &mut Lines, bytes: &[u8]) -> Option<Ending> {
        lines.read_at = Instant::now();
        lines.counts.bytes += bytes.len() as u64;
        self.shared
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let pushed = lines.push(bytes, self);
        if !self.send_events(lines) {
            return Some(Ending::WorkerGone);
        }
        pushed.err().map(Ending::Cut)
    }

    /// Reads what the client sent before the shutdown and the system has already received,
    /// so a stop loses no line that had arrived, then ends the connection. Bytes still
    /// arriving after `SHUTDOWN_READ_BYTES` or `SHUTDOWN_READ_TIME` are left unread.
    fn read_received(&mut self, lines: &mut Lines, buffer: &mut [u8]) -> Ending {
        if let Err(error) = self.stream.set_nonblocking(true) {
            return Ending::Failed(error);
        }
        let started = Instant::now();
        let lines_before = lines.counts.lines;
        let mut read = 0usize;
        let ending = loop {
            if read >= SHUTDOWN_READ_BYTES || started.elapsed() >= SHUTDOWN_READ_TIME {
                tracing::warn!(
                    connection = self.id,
                    peer = %self.peer,
                    bytes = read,
                    "shutdown: the client is still sending, so the rest of its data is not read"
                );
                break Ending::Shutdown;
            }
            let count = match read_some(&mut self.stream, buffer) {
                Ok(Some(0)) => break Ending::PeerClosed,
                Ok(Some(count)) => count,
                Ok(None) => break Ending::Shutdown,
                Err(error) => break Ending::Failed(error),
            };
            read += count;
            if let Some(ending) = self.take_bytes(lines, &buffer[..count]) {
                break ending;
            }
        };
        if read > 0 {
            tracing::info!(
                connection = self.id,
                peer = %self.peer,
                bytes = read,
                lines = lines.counts.lines - lines_before,
                "shutdown: read the data already received from the client"
            );
        }
        ending
    }

    /// Logs that this connection has been paused for `paused_for`, and why.
    fn log_pause(&self, paused_for: Duration) {
        tracing::warn!(
            connection = self.id,
            peer = %self.peer,
            paused_ms = paused_for.as_millis() as u64,
            buffered_events = self.shared.buffered_events.load(Ordering::Relaxed),
            max_buffered_events = self.settings.limits.max_buffered_events,
            "connection paused: more events wait for the frontier than max_buffered_events \
             allows, and this client is ahead of it; reading resumes when slower or idle \
             connections let the frontier move (see --idle-timeout)"
        );
    }

    /// Returns whether this connection must wait: too many events wait for the frontier and
    /// this connection is not among those holding it back.
    fn is_ahead(&self, watermark: &AtomicU64) -> bool {
        let limit = self.settings.limits.max_buffered_events;
        self.shared.buffered_events.load(Ordering::Relaxed) > limit
            && watermark.load(Ordering::Relaxed) > self.shared.frontier_ms.load(Ordering::Relaxed)
    }

    /// Sends the parsed events to worker 0; returns false when worker 0 is gone.
    fn send_events(&self, lines: &mut Lines) -> bool {
        if lines.events.is_empty() {
            return true;
        }
        let events = std::mem::take(&mut lines.events);
        let sent = self
            .sender
            .send(SourceMessage::Events {
                source: self.id,
                events,
                read_at: lines.read_at,
            })
            .is_ok();
        self.shared.wake_worker();
        sent
    }

    fn finish(self, mut lines: Lines, ending: Ending) {
        let limits = &self.settings.limits;
        let reason = match &ending {
            Ending::PeerClosed => {
                // A last line without a final newline is still a line, as in files.
                if !lines.partial.is_empty() {
                    let last = std::mem::take(&mut lines.partial);
                    let _ = lines.line(&last, &self);
                }
                "closed by the client"
            }
            Ending::Shutdown => {
                lines.unfinished_line(
                    &self.shared,
                    &self.dead_letter,
                    "connection closed by shutdown before the line ended".into(),
                );
                "shutdown"
            }
            Ending::Cut(Cutoff::LineTooLong) => {
                tracing::warn!(
                    connection = self.id,
                    peer = %self.peer,
                    max_line_bytes = limits.max_line_bytes,
                    "closing connection: line longer than max_line_bytes (counted as one bad record)"
                );
                "line too long"
            }
            Ending::Cut(Cutoff::LineTimeout) => {
                tracing::warn!(
                    connection = self.id,
                    peer = %self.peer,
                    line_timeout = ?limits.line_timeout,
                    "closing connection: a line was not finished within line_timeout \
                     (counted as one bad record)"
                );
                "line timeout"
            }
            Ending::Cut(Cutoff::UnknownFormat) => {
                tracing::warn!(
                    connection = self.id,
                    peer = %self.peer,
                    "closing connection: cannot detect the format of its first line; send \
                     JSON lines, Taobao or REES46 CSV, or start veer with --format"
                );
                "unknown format"
            }
            Ending::Cut(Cutoff::TooManyBadLines) => {
                tracing::warn!(
                    connection = self.id,
                    peer = %self.peer,
                    max_bad_lines = limits.max_bad_lines,
                    "closing connection: max_bad_lines consecutive bad lines"
                );
                "too many bad lines"
            }
            Ending::Failed(error) => {
                tracing::warn!(connection = self.id, peer = %self.peer, %error, "connection failed");
                lines.unfinished_line(
                    &self.shared,
                    &self.dead_letter,
                    format!("connection failed before the line ended: {error}"),
                );
                "read error"
            }
            Ending::WorkerGone => "engine stopped",
        };
        self.send_events(&mut lines);
        let _ = self.sender.send(SourceMessage::Closed { source: self.id });
        drop(self.sender);
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.wake_worker();
        let counts = &lines.counts;
        tracing::info!(
            connection = self.id,
            peer = %self.peer,
            reason,
            lines = counts.lines,
            events = counts.events,
            bad = counts.bad,
            skipped = counts.skipped,
            bytes = counts.bytes,
            "connection closed"
        );
    }
}

impl Lines {
    /// Splits `bytes` into lines and handles each complete one; keeps the unfinished rest.
    fn push(&mut self, bytes: &[u8], connection: &Connection) -> Result<(), Cutoff> {
        let mut rest = bytes;
        while let Some(position) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..position];
            rest = &rest[position + 1..];
            if self.partial.is_empty() {
                self.line(piece, connection)?;
            } else if self.partial.len() + piece.len() > self.max_line_bytes + 1 {
                let partial = std::mem::take(&mut self.partial);
                return Err(self.too_long(&partial, connection));
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(piece);
                let handled = self.line(&whole, connection);
                whole.clear();
                self.partial = whole;
                handled?;
            }
            self.partial_since = None;
            if self.events.len() >= BATCH && !connection.send_events(self) {
                return Ok(());
            }
        }
        if !rest.is_empty() {
            if self.partial.len() + rest.len() > self.max_line_bytes + 1 {
                let mut head = std::mem::take(&mut self.partial);
                head.extend_from_slice(&rest[..rest.len().min(sources::MAX_RAW_BYTES)]);
                return Err(self.too_long(&head, connection));
            }
            if self.partial.is_empty() {
                self.partial_since = Some(Instant::now());
            }
            self.partial.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Counts a line over the limit as one bad record and returns the cutoff.
    fn too_long(&mut self, head: &[u8], connection: &Connection) -> Cutoff {
        self.line += 1;
        connection.shared.lines.fetch_add(1, Ordering::Relaxed);
        self.counts.lines += 1;
        let reason = format!("line longer than {} bytes", self.max_line_bytes);
        self.bad(
            BadRecord::new(self.line, reason, head),
            &connection.shared,
            &connection.dead_letter,
        );
        Cutoff::LineTooLong
    }

    /// Counts an unfinished last line, if any, as a bad record.
    fn unfinished_line(&mut self, shared: &ListenShared, dead_letter: &DeadLetter, reason: String) {
        if self.partial.is_empty() {
            return;
        }
        let partial = std::mem::take(&mut self.partial);
        self.line += 1;
        self.counts.lines += 1;
        shared.lines.fetch_add(1, Ordering::Relaxed);
        self.bad(
            BadRecord::new(self.line, reason, &partial),
            shared,
            dead_letter,
        );
    }

    /// Handles one complete line, given without its `\n`.
    fn line(&mut self, bytes: &[u8], connection: &Connection) -> Result<(), Cutoff> {
        let shared = &connection.shared;
        // A byte order mark can start any line of files joined with `cat`, as in file input.
        let content = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let content = crate::sources::strip_utf8_bom(content);
        if content.len() > self.max_line_bytes {
            return Err(self.too_long(content, connection));
        }
        self.line += 1;
        self.counts.lines += 1;
        shared.lines.fetch_add(1, Ordering::Relaxed);
        if self.parser.is_none() {
            if content.trim_ascii().is_empty() {
                self.counts.skipped += 1;
                shared.skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            match self.format.or_else(|| sources::detect_format(content)) {
                Some(format) if format != Format::RetailRocket => {
                    let (parser, _) = sources::make_parser(format, &SourceOptions::default(), None)
                        .expect("formats other than retailrocket need no files");
                    tracing::debug!(connection = connection.id, format = %format, "format detected");
                    self.format = Some(format);
                    self.parser = Some(parser);
                }
                _ => {
                    let reason = "cannot detect the format: expected a JSON object, a Taobao or \
                                  REES46 CSV row";
                    self.bad(
                        BadRecord::new(self.line, reason, content),
                        shared,
                        &connection.dead_letter,
                    );
                    return Err(Cutoff::UnknownFormat);
                }
            }
        }
        let parser = self.parser.as_mut().expect("set above");
        match parser.parse(self.line, content) {
            Parsed::Event(event) => {
                self.bad_run = 0;
                self.counts.events += 1;
                self.events.push(event);
            }
            Parsed::Skip => {
                self.counts.skipped += 1;
                shared.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Parsed::Bad(record) => {
                self.bad(record, shared, &connection.dead_letter);
                self.bad_run += 1;
                if self.bad_run >= self.max_bad_lines {
                    return Err(Cutoff::TooManyBadLines);
                }
            }
        }
        Ok(())
    }

    fn bad(&mut self, record: BadRecord, shared: &ListenShared, dead_letter: &DeadLetter) {
        self.counts.bad += 1;
        shared.bad.fetch_add(1, Ordering::Relaxed);
        dead_letter.bad(&self.label, &record);
    }
}

/// Reads from `stream` into `buffer`; returns `Ok(None)` when the read timed out.
fn read_some(stream: &mut TcpStream, buffer: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        match stream.read(buffer) {
            Ok(count) => {
                if count > 0 {
                    ack_at_once(stream);
                }
                return Ok(Some(count));
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Asks the kernel to acknowledge received data at once instead of delaying the ACK.
///
/// Nagle's algorithm, on by default for Linux TCP sockets, delays a segment smaller than the
/// maximum segment size while an earlier small one is unacknowledged. On loopback the maximum
/// segment size is about 64 KiB, so a client sending a few KiB per millisecond waited for the
/// delayed ACK, or for 64 KiB to pile up. At 100,000 lines/s that raised the event-to-alert
/// p99 from about 7 ms to 22 ms (measured with `benches/socket.sh`). Linux leaves quick-ACK mode on its
/// own, so the option is set again after every read.
fn ack_at_once(stream: &TcpStream) {
    // A failure only leaves the ACK delayed, so it is ignored.
    let _ = crate::socket_option::set_int(stream, libc::IPPROTO_TCP, libc::TCP_QUICKACK, 1);
}

/// A connection's current pause, logged once it lasts [`PAUSE_LOG_AFTER`].
#[derive(Default)]
struct PauseLog {
    since: Option<Instant>,
    logged: bool,
}

impl PauseLog {
    fn paused(&mut self, connection: &Connection) {
        let since = *self.since.get_or_insert_with(Instant::now);
        let paused_for = since.elapsed();
        if !self.logged && paused_for >= PAUSE_LOG_AFTER {
            connection.log_pause(paused_for);
            self.logged = true;
        }
    }

    fn resumed(&mut self, connection: &Connection) {
        if let Some(since) = self.since.take() {
            if std::mem::take(&mut self.logged) {
                tracing::info!(
                    connection = connection.id,
                    peer = %connection.peer,
                    paused_ms = since.elapsed().as_millis() as u64,
                    "connection resumed after a pause"
                );
            }
        }
    }
}
