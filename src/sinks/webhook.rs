//! The HTTP webhook sink: at-least-once delivery with a stable identity per alert, retries
//! with backoff, and a dead-letter file instead of silent loss.
//!
//! Each alert (or, with `batch` above 1, each batch of alerts) is one *delivery*: a fixed
//! body and a fixed `Idempotency-Key`, sent again unchanged on every attempt. A single alert
//! is sent as its JSON object with its `alert_id` as the key. A batch is sent as a JSON array,
//! keyed `batch-` followed by a hash of its alert ids. A receiver that stores each key (or
//! each `alert_id`) once keeps every alert once, even when a request landed but its reply was
//! lost and veer sent it again.
//!
//! A delivery is retried after a 5xx, 408 or 429 status, a timeout, a reset or a refused
//! connection, with [`Backoff`] delays, until it succeeds, it has made `max_attempts`
//! attempts, or its next attempt would start later than `retry_budget` after its first. Then
//! each of its alerts goes to the dead-letter file as one JSON line with the number of
//! attempts and the last error. Any other status (such as 400) is not retried, because
//! sending the same body again cannot change the answer.
//!
//! Against a receiver that is down, the load stays bounded: the sink sends one request at a
//! time, at most `retry_window` deliveries are in retry at once, and each waits out its own
//! growing backoff. A receiver therefore sees at most `max_attempts` requests per alert (per
//! batch), and later alerts wait in the queue, which holds back the dataflow when it fills.
//!
//! A stop (SIGTERM or SIGINT) does not wait out the retries. Each delivery in retry gets one
//! more attempt at once, and every attempt after the stop ends within [`STOP_ATTEMPT_TIMEOUT`]
//! of the stop or of its own start, whichever is later. The first attempt that fails after
//! the stop gives up every alert not yet delivered, including those the run releases later:
//! they go to the dead-letter file and are counted as given up at the stop. A receiver that
//! works keeps getting alerts until the run ends.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::backoff::Backoff;
use super::http::{self, Url};
use super::{AlertRecord, Message, SinkStats, WebhookConfig};
use crate::metrics::SinkMetrics;

/// Maximum time an attempt runs after a stop: it ends this long after the stop or after its
/// own start, whichever is later, or sooner at its `timeout`.
pub const STOP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Maximum wait of a sink with deliveries in retry, so that it acts on a stop within this time.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Returns when the run was asked to stop, or `None` before that.
type StopClock = Box<dyn Fn() -> Option<Instant> + Send>;

/// One body sent until it is accepted or dead-lettered.
struct Delivery {
    alerts: Vec<Arc<AlertRecord>>,
    key: String,
    body: Vec<u8>,
    attempts: u32,
    first_attempt: Option<Instant>,
    /// When the next attempt may start.
    due: Instant,
    /// Creation order, so deliveries due at the same time go first come, first served.
    sequence: u64,
    last_error: String,
}

/// Result of one attempt.
enum Outcome {
    Delivered,
    Retry,
    DeadLetter,
    /// The attempt failed after a stop, so the sink gives up every undelivered alert.
    GiveUpAtStop,
}

/// The webhook sink of one receiver URL.
pub(crate) struct WebhookSink {
    url_text: String,
    url: Url,
    config: WebhookConfig,
    backoff: Backoff,
    dead_letter: DeadLetterFile,
    stats: SinkStats,
    /// Live counters, for the metrics endpoint.
    live: Arc<SinkMetrics>,
    sequence: u64,
    stop_requested_at: StopClock,
    /// Whether the sink has seen the stop and moved its retries to now.
    stopping: bool,
    /// Whether an attempt failed after the stop, so no alert is sent any more.
    given_up: bool,
}

impl WebhookSink {
    /// Checks the URL and opens the dead-letter file (appending, never truncating).
    pub(crate) fn new(url_text: &str, config: &WebhookConfig) -> anyhow::Result<WebhookSink> {
        let url =
            Url::parse(url_text).map_err(|message| anyhow::anyhow!("--webhook: {message}"))?;
        let path = config
            .dead_letter
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("a webhook needs --webhook-dead-letter PATH"))?;
        Ok(WebhookSink {
            url_text: url_text.to_string(),
            url,
            config: config.clone(),
            backoff: Backoff::new(config.backoff, config.max_backoff),
            dead_letter: DeadLetterFile::open(path)?,
            stats: SinkStats::named(&format!("webhook {url_text}")),
            live: Arc::default(),
            sequence: 0,
            stop_requested_at: Box::new(crate::shutdown::requested_at),
            stopping: false,
            given_up: false,
        })
    }

    pub(crate) fn name(&self) -> String {
        self.stats.name.clone()
    }

    /// Runs the sink until its queue is closed and every delivery is retired.
    pub(crate) fn run(mut self, receiver: Receiver<Message>, live: Arc<SinkMetrics>) -> SinkStats {
        self.live = live;
        tracing::info!(
            url = %self.url_text,
            max_attempts = self.config.max_attempts,
            retry_budget = ?self.config.retry_budget,
            timeout = ?self.config.timeout,
            batch = self.config.batch,
            "webhook sink started"
        );
        let mut rng = rand::thread_rng();
        let mut waiting: VecDeque<(Instant, Arc<AlertRecord>)> = VecDeque::new();
        let mut active: Vec<Delivery> = Vec::new();
        let mut open = true;
        let mut flush_acks: Vec<Sender<()>> = Vec::new();

        loop {
            if !self.stopping && (self.stop_requested_at)().is_some() {
                self.stopping = true;
                self.retry_now(&mut active);
            }
            if self.given_up {
                self.give_up(&mut waiting, &mut active);
            }
            let draining = !open || !flush_acks.is_empty() || self.stopping;
            self.form_deliveries(&mut waiting, &mut active, draining);
            if waiting.is_empty() && active.is_empty() {
                for ack in flush_acks.drain(..) {
                    let _ = ack.send(());
                }
                if !open {
                    break;
                }
            }

            let now = Instant::now();
            let next = active
                .iter()
                .enumerate()
                .min_by_key(|(_, delivery)| (delivery.due, delivery.sequence))
                .map(|(index, delivery)| (index, delivery.due));
            if let Some((index, due)) = next {
                if due <= now {
                    let mut delivery = active.swap_remove(index);
                    match self.attempt(&mut delivery, &mut rng) {
                        Outcome::Delivered => {}
                        Outcome::Retry => active.push(delivery),
                        Outcome::DeadLetter => self.write_dead_letter(&delivery),
                        Outcome::GiveUpAtStop => {
                            self.given_up = true;
                            active.push(delivery);
                        }
                    }
                    continue;
                }
            }

            // Wait for the next due attempt, the end of a batch's wait, or a new message.
            let batch_due = match waiting.front() {
                Some((arrived, _)) if active.len() < self.config.retry_window => {
                    Some(*arrived + self.config.batch_wait)
                }
                _ => None,
            };
            // Deliveries in retry may wait long; a stop moves their next attempt to now.
            let stop_check = (!self.stopping && !active.is_empty()).then(|| now + STOP_POLL);
            let wake = [next.map(|(_, due)| due), batch_due, stop_check]
                .into_iter()
                .flatten()
                .min();
            let room = active.len() < self.config.retry_window && waiting.len() < self.config.batch;
            if open && flush_acks.is_empty() && room {
                let message = match wake {
                    Some(wake) => receiver.recv_deadline(wake),
                    None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match message {
                    Ok(Message::Alert(record)) => {
                        self.stats.received += 1;
                        waiting.push_back((Instant::now(), record));
                    }
                    Ok(Message::Flush(ack)) => flush_acks.push(ack),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            } else if let Some(wake) = wake {
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            }
        }

        if self.stats.given_up_at_stop > 0 {
            tracing::warn!(
                url = %self.url_text,
                given_up_at_stop = self.stats.given_up_at_stop,
                dead_letter = %self.dead_letter.path,
                "the run was stopped while the webhook receiver failed: alerts not delivered \
                 are in the dead-letter file and in the alert output"
            );
        }
        tracing::info!(
            url = %self.url_text,
            delivered = self.stats.delivered,
            attempts = self.stats.attempts,
            failed_attempts = self.stats.failed_attempts,
            dead_lettered = self.stats.dead_lettered,
            given_up_at_stop = self.stats.given_up_at_stop,
            lost = self.stats.lost,
            "webhook sink stopped"
        );
        self.stats
    }

    /// Moves the next attempt of every delivery in retry to now, because a stop allows one
    /// more attempt each instead of the rest of their backoff.
    fn retry_now(&mut self, active: &mut [Delivery]) {
        let now = Instant::now();
        for delivery in active.iter_mut() {
            delivery.due = delivery.due.min(now);
        }
        tracing::info!(
            url = %self.url_text,
            in_retry = active.len(),
            stop_attempt_timeout = ?STOP_ATTEMPT_TIMEOUT,
            "run stopped: each webhook delivery in retry gets one more attempt; the first \
             failure gives up every alert not yet delivered"
        );
    }

    /// Writes every delivery in retry and every waiting alert to the dead-letter file, after
    /// an attempt failed during a stop.
    fn give_up(
        &mut self,
        waiting: &mut VecDeque<(Instant, Arc<AlertRecord>)>,
        active: &mut Vec<Delivery>,
    ) {
        let now = Instant::now();
        while !waiting.is_empty() {
            let take = waiting.len().min(self.config.batch);
            let alerts: Vec<Arc<AlertRecord>> =
                waiting.drain(..take).map(|(_, record)| record).collect();
            let mut delivery = self.delivery(alerts, now);
            delivery.last_error = "not sent: the receiver failed after the run was stopped".into();
            active.push(delivery);
        }
        for delivery in active.drain(..) {
            self.stats.given_up_at_stop += delivery.alerts.len() as u64;
            self.write_dead_letter(&delivery);
        }
    }

    /// Moves waiting alerts into deliveries while the retry window has room: one alert per
    /// delivery, or a batch once it is full, has waited `batch_wait`, or the sink drains.
    fn form_deliveries(
        &mut self,
        waiting: &mut VecDeque<(Instant, Arc<AlertRecord>)>,
        active: &mut Vec<Delivery>,
        draining: bool,
    ) {
        let now = Instant::now();
        while active.len() < self.config.retry_window {
            let Some((arrived, _)) = waiting.front() else {
                break;
            };
            let ready = self.config.batch == 1
                || waiting.len() >= self.config.batch
                || draining
                || *arrived + self.config.batch_wait <= now;
            if !ready {
                break;
            }
            let take = waiting.len().min(self.config.batch);
            let alerts: Vec<Arc<AlertRecord>> =
                waiting.drain(..take).map(|(_, record)| record).collect();
            active.push(self.delivery(alerts, now));
        }
    }

    fn delivery(&mut self, alerts: Vec<Arc<AlertRecord>>, now: Instant) -> Delivery {
        let (key, body) = if self.config.batch == 1 {
            (alerts[0].id.clone(), alerts[0].line.clone().into_bytes())
        } else {
            let lines: Vec<&str> = alerts.iter().map(|record| record.line.as_str()).collect();
            let ids: Vec<&str> = alerts.iter().map(|record| record.id.as_str()).collect();
            (
                batch_key(&ids),
                format!("[{}]", lines.join(",")).into_bytes(),
            )
        };
        self.sequence += 1;
        Delivery {
            alerts,
            key,
            body,
            attempts: 0,
            first_attempt: None,
            due: now,
            sequence: self.sequence,
            last_error: String::new(),
        }
    }

    /// Sends one attempt of a delivery and decides what comes next.
    fn attempt(&mut self, delivery: &mut Delivery, rng: &mut impl rand::Rng) -> Outcome {
        let started = Instant::now();
        let first_attempt = *delivery.first_attempt.get_or_insert(started);
        delivery.attempts += 1;
        self.stats.attempts += 1;
        self.live.attempt();
        let headers = [("Idempotency-Key", delivery.key.as_str())];
        let timeout = self.config.timeout;
        let stop_requested_at = &self.stop_requested_at;
        let deadline = || attempt_deadline(started, timeout, stop_requested_at());
        let result = http::post(&self.url, &headers, &delivery.body, &deadline);

        let retryable = match result {
            Ok(status) if (200..300).contains(&status) => {
                self.stats.delivered += delivery.alerts.len() as u64;
                self.live.delivered(delivery.alerts.len() as u64);
                tracing::debug!(url = %self.url_text, key = %delivery.key, attempt = delivery.attempts, status, "webhook delivered");
                return Outcome::Delivered;
            }
            Ok(status) => {
                delivery.last_error = format!("HTTP {status}");
                status >= 500 || status == 408 || status == 429
            }
            Err(error) => {
                delivery.last_error = error.to_string();
                true
            }
        };
        self.stats.failed_attempts += 1;
        self.live.failure();

        if retryable && (self.stop_requested_at)().is_some() {
            tracing::warn!(
                url = %self.url_text,
                key = %delivery.key,
                alerts = delivery.alerts.len(),
                attempt = delivery.attempts,
                error = %delivery.last_error,
                "webhook attempt failed after the run was stopped; giving up every alert not \
                 yet delivered"
            );
            return Outcome::GiveUpAtStop;
        }
        let delay = self.backoff.delay(delivery.attempts, rng);
        let now = Instant::now();
        let within_budget = now + delay <= first_attempt + self.config.retry_budget;
        if retryable && delivery.attempts < self.config.max_attempts && within_budget {
            delivery.due = now + delay;
            tracing::warn!(
                url = %self.url_text,
                key = %delivery.key,
                alerts = delivery.alerts.len(),
                attempt = delivery.attempts,
                error = %delivery.last_error,
                retry_in = ?delay,
                "webhook attempt failed; retrying"
            );
            return Outcome::Retry;
        }
        let reason = if !retryable {
            "the receiver rejected it"
        } else if delivery.attempts >= self.config.max_attempts {
            "max attempts reached"
        } else {
            "retry budget spent"
        };
        tracing::error!(
            url = %self.url_text,
            key = %delivery.key,
            alerts = delivery.alerts.len(),
            attempts = delivery.attempts,
            error = %delivery.last_error,
            reason,
            "webhook gave up; writing the alerts to the dead-letter file"
        );
        Outcome::DeadLetter
    }

    fn write_dead_letter(&mut self, delivery: &Delivery) {
        let count = delivery.alerts.len() as u64;
        match self.dead_letter.write(&self.url_text, delivery) {
            Ok(()) => {
                self.stats.dead_lettered += count;
                self.live.dead_lettered(count);
            }
            Err(error) => {
                self.stats.lost += count;
                tracing::error!(
                    url = %self.url_text,
                    key = %delivery.key,
                    path = %self.dead_letter.path,
                    %error,
                    alerts = count,
                    "alerts lost: writing the webhook dead-letter file failed"
                );
            }
        }
    }
}

/// Returns when an attempt that started at `started` must end: after `timeout`, or
/// [`STOP_ATTEMPT_TIMEOUT`] after the stop or the start, whichever is later, once the run was
/// stopped at `stopped_at`.
fn attempt_deadline(started: Instant, timeout: Duration, stopped_at: Option<Instant>) -> Instant {
    let deadline = started + timeout;
    match stopped_at {
        Some(stopped_at) => deadline.min(stopped_at.max(started) + STOP_ATTEMPT_TIMEOUT),
        None => deadline,
    }
}

/// Returns the idempotency key of a batch: `batch-`, the count, and a 64-bit FNV-1a hash of
/// its alert ids. The same alerts in the same order give the same key.
fn batch_key(ids: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for byte in id.bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("batch-{}-{hash:016x}", ids.len())
}

/// The webhook dead-letter file: one JSON line per alert, appended with one write per
/// delivery, so a kill leaves whole lines and at most one torn last line.
struct DeadLetterFile {
    path: String,
    file: File,
}

impl DeadLetterFile {
    fn open(path: &Path) -> anyhow::Result<DeadLetterFile> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        let file = crate::output_file::open(path, &options).map_err(|error| {
            crate::output_file::describe_error(error, || {
                format!("cannot open webhook dead-letter file {}", path.display())
            })
        })?;
        Ok(DeadLetterFile {
            path: path.display().to_string(),
            file,
        })
    }

    fn write(&mut self, url: &str, delivery: &Delivery) -> std::io::Result<()> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        let mut text = String::new();
        for record in &delivery.alerts {
            // The alert line is already JSON, so it is embedded as it is.
            text.push_str(&format!(
                "{{\"sink\":\"webhook\",\"url\":{},\"alert_id\":{},\"idempotency_key\":{},\
                 \"attempts\":{},\"last_error\":{},\"dead_lettered_ms\":{now_ms},\"alert\":{}}}\n",
                serde_json::Value::from(url),
                serde_json::Value::from(record.id.as_str()),
                serde_json::Value::from(delivery.key.as_str()),
                delivery.attempts,
                serde_json::Value::from(delivery.last_error.as_str()),
                record.line
            ));
        }
        // A write that fails part way is cut back to the file's earlier end, so the file keeps
        // whole lines and none of this delivery's alerts, which all count as lost.
        let start = self.file.metadata()?.len();
        let result = self.file.write_all(text.as_bytes());
        if let Err(error) = result {
            if self.file.metadata()?.is_file() {
                if let Err(cut_error) = self.file.set_len(start) {
                    return Err(std::io::Error::new(
                        error.kind(),
                        format!(
                            "{error}, and cutting the torn last line of {} failed: {cut_error}",
                            self.path
                        ),
                    ));
                }
            }
            return Err(error);
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    use super::*;

    fn record(id: &str) -> Arc<AlertRecord> {
        Arc::new(AlertRecord {
            id: id.to_string(),
            line: format!(r#"{{"alert_id":"{id}","user":1}}"#),
        })
    }

    /// Runs a receiver on loopback that replies `status` to every request, and returns its URL
    /// and a counter of requests.
    fn receiver(status: u16) -> (String, Arc<std::sync::atomic::AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        (url, count)
    }

    fn config(dead_letter: &Path) -> WebhookConfig {
        WebhookConfig {
            dead_letter: Some(dead_letter.to_path_buf()),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_attempts: 3,
            timeout: Duration::from_secs(5),
            ..WebhookConfig::default()
        }
    }

    fn run_sink(url: &str, config: &WebhookConfig, ids: &[&str]) -> SinkStats {
        let sink = WebhookSink::new(url, config).unwrap();
        let (sender, receiver) = crossbeam_channel::bounded(8);
        let thread = std::thread::spawn(move || sink.run(receiver, Arc::default()));
        for id in ids {
            sender.send(Message::Alert(record(id))).unwrap();
        }
        drop(sender);
        thread.join().unwrap()
    }

    #[test]
    fn failing_receiver_dead_letters_each_alert() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        let (url, requests) = receiver(503);

        let stats = run_sink(&url, &config(&dead), &["a", "b"]);
        assert_eq!(stats.delivered, 0);
        assert_eq!(stats.dead_lettered, 2);
        assert_eq!(stats.lost, 0);
        assert_eq!(stats.attempts, 6);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 6);

        let text = std::fs::read_to_string(&dead).unwrap();
        let mut lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        // Each alert retries on its own schedule, so they may give up in either order.
        lines.sort_by_key(|line| line["alert_id"].to_string());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["alert_id"], "a");
        assert_eq!(lines[0]["attempts"], 3);
        assert_eq!(lines[0]["last_error"], "HTTP 503");
        assert_eq!(lines[0]["alert"]["alert_id"], "a");
        assert_eq!(lines[1]["alert_id"], "b");
    }

    #[test]
    fn rejected_alert_is_not_retried() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        let (url, requests) = receiver(400);

        let stats = run_sink(&url, &config(&dead), &["a"]);
        assert_eq!(stats.attempts, 1);
        assert_eq!(stats.dead_lettered, 1);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn accepting_receiver_gets_batches() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        let (url, requests) = receiver(200);
        let config = WebhookConfig {
            batch: 2,
            batch_wait: Duration::from_secs(10),
            ..config(&dead)
        };

        let stats = run_sink(&url, &config, &["a", "b", "c"]);
        assert_eq!(stats.delivered, 3);
        assert_eq!(stats.attempts, 2);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(std::fs::read_to_string(&dead).unwrap(), "");
    }

    #[test]
    fn unwritable_dead_letter_counts_lost() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        let (url, _) = receiver(503);
        let mut sink = WebhookSink::new(&url, &config(&dead)).unwrap();
        sink.dead_letter.file = File::open(&dead).unwrap();

        let delivery = sink.delivery(vec![record("a")], Instant::now());
        sink.write_dead_letter(&delivery);
        assert_eq!(sink.stats.lost, 1);
        assert_eq!(sink.stats.dead_lettered, 0);
    }

    /// Starts a sink whose stop is `stop` instead of a signal, and returns its queue and thread.
    fn start_stoppable_sink(
        url: &str,
        config: &WebhookConfig,
        stop: &Arc<std::sync::OnceLock<Instant>>,
    ) -> (
        Sender<Message>,
        std::thread::JoinHandle<SinkStats>,
    ) {
        let mut sink = WebhookSink::new(url, config).unwrap();
        let stop = stop.clone();
        sink.stop_requested_at = Box::new(move || stop.get().copied());
        let (sender, receiver) = crossbeam_channel::bounded(8);
        let thread = std::thread::spawn(move || sink.run(receiver, Arc::default()));
        (sender, thread)
    }

    /// Waits up to 10 s until `count` reaches `expected`.
    fn wait_for_count(count: &std::sync::atomic::AtomicU64, expected: u64) {
        let started = Instant::now();
        while count.load(std::sync::atomic::Ordering::SeqCst) < expected {
            assert!(started.elapsed() < Duration::from_secs(10), "count stayed below {expected}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn stop_gives_up_after_one_more_attempt() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        let (url, requests) = receiver(503);
        // Without a stop, the next attempts would wait 10 s each.
        let config = WebhookConfig {
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
            max_attempts: 8,
            ..config(&dead)
        };
        let stop = Arc::new(std::sync::OnceLock::new());
        let (sender, thread) = start_stoppable_sink(&url, &config, &stop);
        sender.send(Message::Alert(record("a"))).unwrap();
        sender.send(Message::Alert(record("b"))).unwrap();
        wait_for_count(&requests, 2);

        let stopped = Instant::now();
        stop.set(stopped).unwrap();
        sender.send(Message::Alert(record("c"))).unwrap();
        drop(sender);
        let stats = thread.join().unwrap();
        assert!(stopped.elapsed() < Duration::from_secs(5), "{:?}", stopped.elapsed());
        // Two attempts before the stop and at most one after it. The second reply may reach
        // the sink only after the stop, which then counts as that one attempt.
        assert!(stats.attempts <= 3, "{} attempts", stats.attempts);
        assert_eq!(
            requests.load(std::sync::atomic::Ordering::SeqCst),
            stats.attempts
        );
        assert_eq!(stats.given_up_at_stop, 3);
        assert_eq!(stats.dead_lettered, 3);
        assert_eq!(stats.delivered, 0);
        assert_eq!(stats.lost, 0);
        let text = std::fs::read_to_string(&dead).unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|line| line["alert_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn stop_cuts_attempt_in_flight() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        // A receiver that accepts connections and never replies.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            let mut open_connections = Vec::new();
            for stream in listener.incoming() {
                open_connections.push(stream.unwrap());
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let config = WebhookConfig {
            timeout: Duration::from_secs(60),
            ..config(&dead)
        };
        let stop = Arc::new(std::sync::OnceLock::new());
        let (sender, thread) = start_stoppable_sink(&url, &config, &stop);
        sender.send(Message::Alert(record("a"))).unwrap();
        wait_for_count(&accepted, 1);

        let stopped = Instant::now();
        stop.set(stopped).unwrap();
        drop(sender);
        let stats = thread.join().unwrap();
        let took = stopped.elapsed();
        assert!(took >= STOP_ATTEMPT_TIMEOUT, "{took:?}");
        assert!(took < STOP_ATTEMPT_TIMEOUT + Duration::from_secs(3), "{took:?}");
        assert_eq!(stats.attempts, 1);
        assert_eq!(stats.given_up_at_stop, 1);
        assert_eq!(stats.dead_lettered, 1);
    }

    #[test]
    fn working_receiver_gets_alerts_after_stop() {
        let folder = tempfile::tempdir().unwrap();
        let dead = folder.path().join("dead.jsonl");
        let (url, requests) = receiver(200);
        let stop = Arc::new(std::sync::OnceLock::new());
        stop.set(Instant::now()).unwrap();
        let (sender, thread) = start_stoppable_sink(&url, &config(&dead), &stop);
        for id in ["a", "b", "c"] {
            sender.send(Message::Alert(record(id))).unwrap();
        }
        drop(sender);
        let stats = thread.join().unwrap();
        assert_eq!(stats.delivered, 3);
        assert_eq!(stats.given_up_at_stop, 0);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn attempt_deadline_after_stop() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        assert_eq!(attempt_deadline(start, timeout, None), start + timeout);
        // A stop during the attempt ends it STOP_ATTEMPT_TIMEOUT after the stop.
        let stop = start + Duration::from_secs(1);
        assert_eq!(
            attempt_deadline(start, timeout, Some(stop)),
            stop + STOP_ATTEMPT_TIMEOUT
        );
        // An attempt that starts after the stop gets STOP_ATTEMPT_TIMEOUT from its start.
        let later = start + Duration::from_secs(30);
        assert_eq!(
            attempt_deadline(later, timeout, Some(start)),
            later + STOP_ATTEMPT_TIMEOUT
        );
        // A shorter timeout still applies.
        let short = Duration::from_millis(500);
        assert_eq!(attempt_deadline(start, short, Some(start)), start + short);
    }

    #[test]
    fn batch_key_is_stable() {
        assert_eq!(batch_key(&["a", "b"]), batch_key(&["a", "b"]));
        assert_ne!(batch_key(&["a", "b"]), batch_key(&["b", "a"]));
        assert_ne!(batch_key(&["ab"]), batch_key(&["a", "b"]));
        assert!(batch_key(&["a", "b"]).starts_with("batch-2-"));
    }
}
