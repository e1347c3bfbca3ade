//! Per-sink counts of a run, for the summary and the exit code.

/// Counts of one sink. Fields that do not apply to a sink stay 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// The sink's kind and target, such as `file alerts.jsonl` or `webhook http://…`.
    pub name: String,
    /// Alerts the sink took from its queue.
    pub received: u64,
    /// Alerts written (file, stdout) or accepted by the receiver (webhook).
    pub delivered: u64,
    /// Alerts skipped because the alert file already held their ids.
    pub skipped: u64,
    /// Bytes of a torn last line cut off the alert file when it was reopened.
    pub truncated_bytes: u64,
    /// HTTP requests sent (webhook).
    pub attempts: u64,
    /// Requests that failed: an error status, a timeout, a reset or a refused connection.
    pub failed_attempts: u64,
    /// Alerts written to the dead-letter file after the retry budget was spent, or given up at
    /// a stop.
    pub dead_lettered: u64,
    /// Alerts the webhook gave up on because an attempt failed after the run was stopped.
    /// They are written to the dead-letter file too, so `dead_lettered` counts them, or `lost`
    /// when that write failed.
    pub given_up_at_stop: u64,
    /// Alerts neither delivered nor dead-lettered. Must be 0.
    pub lost: u64,
    /// Subscribers that connected (subscriber socket).
    pub subscribers: u64,
    /// Subscribers disconnected because they read too slowly.
    pub dropped_subscribers: u64,
    /// Whether the sink hit an error whose losses it cannot count (a failed flush, a panic).
    pub failed: bool,
    /// The sink's first write error, such as a full disk.
    pub error: Option<String>,
}

impl SinkStats {
    pub(crate) fn named(name: &str) -> SinkStats {
        SinkStats {
            name: name.to_string(),
            ..SinkStats::default()
        }
    }

    /// Renders one summary line.
    pub fn to_text(&self) -> String {
        let mut parts = vec![format!("delivered {}", self.delivered)];
        if self.skipped > 0 || self.truncated_bytes > 0 {
            parts.push(format!(
                "skipped {} (ids already in the file)",
                self.skipped
            ));
            parts.push(format!("torn bytes cut {}", self.truncated_bytes));
        }
        if self.name.starts_with("webhook") {
            parts.push(format!("attempts {}", self.attempts));
            parts.push(format!("failed attempts {}", self.failed_attempts));
            parts.push(format!("dead-lettered {}", self.dead_lettered));
            if self.given_up_at_stop > 0 {
                parts.push(format!("given up at the stop {}", self.given_up_at_stop));
            }
        }
        if self.name.starts_with("subscribers") {
            parts.push(format!("subscribers {}", self.subscribers));
            parts.push(format!("dropped as slow {}", self.dropped_subscribers));
        }
        parts.push(format!("lost {}", self.lost));
        if self.failed {
            parts.push("FAILED (see the log)".to_string());
        }
        format!("sink {}: {}\n", self.name, parts.join(", "))
    }
}

/// Counts of every sink of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// One entry per sink, in the order they were configured.
    pub sinks: Vec<SinkStats>,
}

impl SinkReport {
    /// Returns alerts lost over all sinks.
    pub fn lost(&self) -> u64 {
        self.sinks.iter().map(|sink| sink.lost).sum()
    }

    /// Returns alerts written to dead-letter files over all sinks.
    pub fn dead_lettered(&self) -> u64 {
        self.sinks.iter().map(|sink| sink.dead_lettered).sum()
    }

    /// Returns whether a sink lost alerts or failed in a way it could not count.
    pub fn failed(&self) -> bool {
        self.lost() > 0 || self.sinks.iter().any(|sink| sink.failed)
    }

    /// Describes the sinks that lost alerts or failed: each one's name, lost count and first
    /// error, such as `file alerts.jsonl lost 633 (No space left on device (os error 28))`.
    pub fn failures(&self) -> String {
        let failed = self
            .sinks
            .iter()
            .filter(|sink| sink.lost > 0 || sink.failed);
        let described: Vec<String> = failed
            .map(|sink| {
                let mut text = format!("{} lost {}", sink.name, sink.lost);
                if sink.failed {
                    text.push_str(" or more");
                }
                if let Some(error) = &sink.error {
                    text.push_str(&format!(" ({error})"));
                }
                text
            })
            .collect();
        described.join("; ")
    }

    /// Renders one summary line per sink.
    pub fn to_text(&self) -> String {
        self.sinks.iter().map(SinkStats::to_text).collect()
    }
}

/// The error of a run whose alerts all reached a sink or a dead-letter file, but some only
/// the dead-letter file. `veer run` exits with [`SinksDegraded::EXIT_CODE`] for it.
#[derive(Debug, thiserror::Error)]
#[error("{dead_lettered} alerts were not accepted by a webhook and went to its dead-letter file")]
pub struct SinksDegraded {
    /// Alerts in dead-letter files.
    pub dead_lettered: u64,
}

impl SinksDegraded {
    /// Exit code of `veer run` when alerts went to a dead-letter file ("sink degraded").
    pub const EXIT_CODE: u8 = 3;
}
