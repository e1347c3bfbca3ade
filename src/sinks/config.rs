//! `[sinks]` settings of `veer.toml`, which the command line overrides.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration_text;

/// `[sinks]`: the alert sinks besides `--alerts`, and the queues between them and worker 0.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Capacity of each sink's queue, in alerts; when it is full, worker 0 waits for the sink
    /// (backpressure).
    pub queue: usize,
    /// Append to the `--alerts` file, cutting a torn last line and skipping alerts whose
    /// ids it already holds, instead of truncating it.
    pub append: bool,
    /// `[sinks.subscribers]`: the TCP subscriber socket.
    pub subscribers: SubscriberConfig,
    /// `[sinks.webhook]`: HTTP webhooks.
    pub webhook: WebhookConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            queue: 1024,
            append: false,
            subscribers: SubscriberConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

/// `[sinks.subscribers]`: a TCP socket that streams alerts as JSON lines to its clients.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Address to listen on, such as `127.0.0.1:7300`; a bare port binds 127.0.0.1, and
    /// port 0 picks a free port (logged). `None` turns the socket off.
    pub listen: Option<String>,
    /// Alerts queued per subscriber; a subscriber whose queue is full is disconnected.
    pub queue: usize,
    /// Time one write to a subscriber may block before the subscriber is disconnected.
    #[serde(with = "duration_text")]
    pub write_timeout: Duration,
    /// Subscribers connected at once; further connections are closed with a log line.
    pub max_clients: usize,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            listen: None,
            queue: 1024,
            write_timeout: Duration::from_secs(5),
            max_clients: 64,
        }
    }
}

/// `[sinks.webhook]`: HTTP POST of each alert (or batch) with retries and a dead-letter file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receiver URLs (`http://host:port/path`); each gets every alert.
    pub urls: Vec<String>,
    /// File that keeps, one JSON line each, the alerts a receiver did not accept within the
    /// retry budget. Required when a URL is set; appended to, never truncated.
    pub dead_letter: Option<PathBuf>,
    /// Time one request may take, from connecting to reading the status line.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Alerts per POST: 1 sends each alert alone as a JSON object, more sends JSON arrays.
    pub batch: usize,
    /// Time a batch waits for more alerts before it is sent when it is not full.
    #[serde(with = "duration_text")]
    pub batch_wait: Duration,
    /// Delay before the first retry; it doubles with every further retry.
    #[serde(with = "duration_text")]
    pub backoff: Duration,
    /// Maximum delay between two attempts of one alert.
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
    /// Attempts per alert (or batch), the first one included.
    pub max_attempts: u32,
    /// Time from an alert's first attempt after which no new attempt starts.
    #[serde(with = "duration_text")]
    pub retry_budget: Duration,
    /// Alerts (or batches) being retried at once; later alerts wait in the queue.
    pub retry_window: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            urls: Vec::new(),
            dead_letter: None,
            timeout: Duration::from_secs(10),
            batch: 1,
            batch_wait: Duration::from_millis(200),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 8,
            retry_budget: Duration::from_secs(60),
            retry_window: 16,
        }
    }
}

impl SinkConfig {
    /// Rejects values that would make a sink unbounded or unable to send anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("sinks.queue", self.queue),
            ("sinks.subscribers.queue", self.subscribers.queue),
            (
                "sinks.subscribers.max_clients",
                self.subscribers.max_clients,
            ),
            ("sinks.webhook.batch", self.webhook.batch),
            (
                "sinks.webhook.max_attempts",
                self.webhook.max_attempts as usize,
            ),
            ("sinks.webhook.retry_window", self.webhook.retry_window),
        ];
        for (name, value) in positive {
            if value == 0 {
                anyhow::bail!("invalid {name} 0: it must be at least 1");
            }
        }
        if self.webhook.timeout.is_zero() {
            anyhow::bail!("invalid sinks.webhook.timeout 0: a request needs time to complete");
        }
        if self.webhook.backoff > self.webhook.max_backoff {
            anyhow::bail!(
                "invalid sinks.webhook.backoff {:?}: it is above max_backoff {:?}",
                self.webhook.backoff,
                self.webhook.max_backoff
            );
        }
        if !self.webhook.urls.is_empty() && self.webhook.dead_letter.is_none() {
            anyhow::bail!(
                "a webhook needs a dead-letter file for the alerts its receiver does not \
                 accept: add --webhook-dead-letter PATH (or sinks.webhook.dead_letter)"
            );
        }
        Ok(())
    }
}
