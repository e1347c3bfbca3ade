//! Command-line options of the alert sinks, flattened into `veer run`.

use std::path::PathBuf;

use clap::Args;

use super::SinkConfig;
use crate::config::parse_duration;

/// Alert sink options of `veer run`; each overrides the `[sinks]` key of the config file.
#[derive(Args, Clone, Debug, Default)]
pub struct SinkArgs {
    /// Append to the --alerts file instead of truncating it: a torn last line is cut, and
    /// alerts whose alert_id the file already contains are skipped (always on with --resume).
    #[arg(long)]
    pub alerts_append: bool,
    /// Capacity of each sink's queue, in alerts; when it is full the dataflow waits for that
    /// sink (default 1024).
    #[arg(long, value_name = "ALERTS")]
    pub sink_queue: Option<usize>,
    /// Stream alerts as JSON lines to TCP subscribers on this address: host:port, or a port
    /// on 127.0.0.1; port 0 picks a free port and logs it.
    #[arg(long, value_name = "ADDR")]
    pub alerts_listen: Option<String>,
    /// Alerts queued per subscriber; a subscriber whose queue fills up is disconnected
    /// (default 1024).
    #[arg(long, value_name = "ALERTS")]
    pub subscriber_queue: Option<usize>,
    /// POST every alert to this http:// URL (JSON, with an Idempotency-Key header); repeat
    /// for several receivers.
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// File that keeps, one JSON line each, the alerts a webhook did not accept within its
    /// retry budget, or gave up at a stop; appended to, never truncated. Required with
    /// --webhook.
    #[arg(long, value_name = "PATH")]
    pub webhook_dead_letter: Option<PathBuf>,
    /// Time one webhook request may take, connect to reply, e.g. 5s (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub webhook_timeout: Option<String>,
    /// Alerts per webhook POST; above 1 the body is a JSON array (default 1).
    #[arg(long, value_name = "ALERTS")]
    pub webhook_batch: Option<usize>,
    /// Time a webhook batch waits for more alerts before it is sent, e.g. 200ms (default
    /// 200ms).
    #[arg(long, value_name = "DURATION")]
    pub webhook_batch_wait: Option<String>,
    /// Delay before the first webhook retry, doubled per retry with jitter (default 500ms).
    #[arg(long, value_name = "DURATION")]
    pub webhook_backoff: Option<String>,
    /// Maximum delay between two attempts of one webhook delivery (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub webhook_max_backoff: Option<String>,
    /// Attempts per alert (or batch), the first included, before the dead-letter file
    /// (default 8).
    #[arg(long, value_name = "COUNT")]
    pub webhook_max_attempts: Option<u32>,
    /// Time from an alert's first attempt after which no retry starts, e.g. 60s (default 60s).
    /// After SIGTERM or SIGINT, an alert gets one more attempt of at most 2s instead, and a
    /// failed one sends the alerts not yet delivered to the dead-letter file.
    #[arg(long, value_name = "DURATION")]
    pub webhook_retry_budget: Option<String>,
}

impl SinkArgs {
    /// Applies the options given on the command line over `config`.
    pub fn apply(&self, config: &mut SinkConfig) -> anyhow::Result<()> {
        let duration = |name: &str, text: &str| {
            parse_duration(text).map_err(|message| anyhow::anyhow!("--{name}: {message}"))
        };
        config.append |= self.alerts_append;

        if let Some(queue) = self.sink_queue {
            config.queue = queue;
        }
        if let Some(address) = &self.alerts_listen {
            config.subscribers.listen = Some(address.clone());
        }
        if let Some(queue) = self.subscriber_queue {
            config.subscribers.queue = queue;
        }

        let webhook = &mut config.webhook;
        webhook.urls.extend(self.webhooks.iter().cloned());
        if let Some(path) = &self.webhook_dead_letter {
            webhook.dead_letter = Some(path.clone());
        }
        if let Some(text) = &self.webhook_timeout {
            webhook.timeout = duration("webhook-timeout", text)?;
        }
        if let Some(batch) = self.webhook_batch {
            webhook.batch = batch;
        }
        if let Some(text) = &self.webhook_batch_wait {
            webhook.batch_wait = duration("webhook-batch-wait", text)?;
        }
        if let Some(text) = &self.webhook_backoff {
            webhook.backoff = duration("webhook-backoff", text)?;
        }
        if let Some(text) = &self.webhook_max_backoff {
            webhook.max_backoff = duration("webhook-max-backoff", text)?;
        }
        if let Some(attempts) = self.webhook_max_attempts {
            webhook.max_attempts = attempts;
        }
        if let Some(text) = &self.webhook_retry_budget {
            webhook.retry_budget = duration("webhook-retry-budget", text)?;
        }

        self.reject_unused_options(config)?;
        config.validate()
    }

    /// Rejects a webhook option when no webhook is configured, and `--subscriber-queue`
    /// without subscribers, because the run would ignore them.
    fn reject_unused_options(&self, config: &SinkConfig) -> anyhow::Result<()> {
        let webhook_options = [
            ("webhook-dead-letter", self.webhook_dead_letter.is_some()),
            ("webhook-timeout", self.webhook_timeout.is_some()),
            ("webhook-batch", self.webhook_batch.is_some()),
            ("webhook-batch-wait", self.webhook_batch_wait.is_some()),
            ("webhook-backoff", self.webhook_backoff.is_some()),
            ("webhook-max-backoff", self.webhook_max_backoff.is_some()),
            ("webhook-max-attempts", self.webhook_max_attempts.is_some()),
            ("webhook-retry-budget", self.webhook_retry_budget.is_some()),
        ];
        let unused_webhook_option = webhook_options
            .into_iter()
            .find_map(|(name, given)| given.then_some(name));
        if let (true, Some(name)) = (config.webhook.urls.is_empty(), unused_webhook_option) {
            anyhow::bail!(
                "--{name} sets the webhook sink, but this run has no webhook; add --webhook URL \
                 or drop --{name}"
            );
        }
        if self.subscriber_queue.is_some() && config.subscribers.listen.is_none() {
            anyhow::bail!(
                "--subscriber-queue sets the alert subscribers, but this run accepts none; add \
                 --alerts-listen ADDR or drop --subscriber-queue"
            );
        }
        Ok(())
    }
}
