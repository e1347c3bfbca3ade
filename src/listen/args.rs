//! Command-line options of the TCP source, shared by `veer serve` and `veer run --listen`.

use crate::config::{parse_duration, FileConfig, ZERO_IDLE_TIMEOUT};
use crate::sources::Format;

use super::ListenSettings;

/// Options of the TCP source; each overrides its `veer.toml` key.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ListenArgs {
    /// Address to accept event streams on, HOST:PORT or a bare port (127.0.0.1:PORT); repeat
    /// for several. `veer serve` uses [listen] address (127.0.0.1:7700) when none is given.
    #[arg(long = "listen", value_name = "HOST:PORT")]
    pub listen: Vec<String>,
    /// Time without events after which a connection stops holding back event time, e.g. 30s;
    /// must be positive (default 30s, [time] idle_timeout).
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Time after the start during which event time does not move, so that clients that
    /// connect together all register first, e.g. 2s; 0s turns it off (default: the idle
    /// timeout).
    #[arg(long, value_name = "DURATION")]
    pub startup_hold: Option<String>,
    /// Maximum line length in bytes; a longer line is one bad record and closes its
    /// connection (default 1048576).
    #[arg(long, value_name = "BYTES")]
    pub max_line_bytes: Option<usize>,
    /// Maximum open connections; more are closed at once with a log line (default 256).
    #[arg(long, value_name = "COUNT")]
    pub max_clients: Option<usize>,
    /// Time a line may take from its first byte to its end before the connection is closed,
    /// e.g. 10s; must be positive (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub line_timeout: Option<String>,
    /// Consecutive bad lines after which a connection is closed (default 1000).
    #[arg(long, value_name = "COUNT")]
    pub max_bad_lines: Option<u64>,
    /// Events that may wait for the event-time frontier before connections ahead of it are no
    /// longer read (default 262144).
    #[arg(long, value_name = "COUNT")]
    pub max_buffered_events: Option<u64>,
    /// Interval of the "input status" log line, e.g. 10s; 0s turns it off (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub status_interval: Option<String>,
}

impl ListenArgs {
    /// Returns the TCP source settings: `None` for a run without `--listen` unless `serve` is
    /// set, in which case the configured address is used.
    pub fn settings(
        &self,
        file: &FileConfig,
        format: Option<Format>,
        serve: bool,
    ) -> anyhow::Result<Option<ListenSettings>> {
        if self.listen.is_empty() && !serve {
            if let Some(option) = self.given_options().first() {
                anyhow::bail!(
                    "--{option} sets the TCP input, which this run does not read; add \
                     --listen HOST:PORT or drop --{option}"
                );
            }
            return Ok(None);
        }
        let duration = |name: &str, text: &str| {
            parse_duration(text).map_err(|message| anyhow::anyhow!("--{name}: {message}"))
        };
        let mut limits = file.listen.clone();
        let addresses = if self.listen.is_empty() {
            vec![limits.address.clone()]
        } else {
            self.listen.clone()
        };
        if let Some(bytes) = self.max_line_bytes {
            limits.max_line_bytes = bytes;
        }
        if let Some(count) = self.max_clients {
            limits.max_clients = count;
        }
        if let Some(text) = &self.line_timeout {
            limits.line_timeout = duration("line-timeout", text)?;
        }
        if limits.line_timeout.is_zero() {
            let origin = match self.line_timeout {
                Some(_) => "--line-timeout",
                None => "line_timeout under [listen]",
            };
            anyhow::bail!(
                "invalid {origin} 0s: a line would be cut whenever its sender paused between \
                 two reads; use a positive duration such as 10s"
            );
        }
        if let Some(count) = self.max_bad_lines {
            limits.max_bad_lines = count;
        }
        if let Some(count) = self.max_buffered_events {
            limits.max_buffered_events = count;
        }
        if let Some(text) = &self.status_interval {
            limits.status_interval = duration("status-interval", text)?;
        }
        // `FileConfig::load` rejects a zero `idle_timeout` under [time] for every run, so only
        // the command-line value is checked here.
        let idle_timeout = match &self.idle_timeout {
            Some(text) => {
                let idle_timeout = duration("idle-timeout", text)?;
                if idle_timeout.is_zero() {
                    anyhow::bail!(
                        "invalid --idle-timeout {text}: {ZERO_IDLE_TIMEOUT}; use a positive \
                         duration such as 30s"
                    );
                }
                idle_timeout
            }
            None => file.time.idle_timeout,
        };
        let startup_hold = match &self.startup_hold {
            Some(text) => duration("startup-hold", text)?,
            None => idle_timeout,
        };
        Ok(Some(ListenSettings {
            addresses,
            format,
            limits,
            idle_timeout,
            startup_hold,
        }))
    }
}

impl ListenArgs {
    /// Returns the names of the TCP source options given on the command line, `--listen`
    /// aside.
    fn given_options(&self) -> Vec<&'static str> {
        [
            ("idle-timeout", self.idle_timeout.is_some()),
            ("startup-hold", self.startup_hold.is_some()),
            ("max-line-bytes", self.max_line_bytes.is_some()),
            ("max-clients", self.max_clients.is_some()),
            ("line-timeout", self.line_timeout.is_some()),
            ("max-bad-lines", self.max_bad_lines.is_some()),
            ("max-buffered-events", self.max_buffered_events.is_some()),
            ("status-interval", self.status_interval.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings_of(args: &ListenArgs) -> ListenSettings {
        args.settings(&FileConfig::default(), None, false)
            .expect("valid options")
            .expect("a listening run")
    }

    #[test]
    fn startup_hold_defaults_to_idle_timeout() {
        let args = ListenArgs {
            listen: vec!["127.0.0.1:0".into()],
            idle_timeout: Some("7s".into()),
            ..ListenArgs::default()
        };
        assert_eq!(settings_of(&args).startup_hold, Duration::from_secs(7));
    }

    #[test]
    fn zero_idle_timeout_rejected_by_run_and_serve() {
        // `veer run --listen`, `veer serve --listen` and `veer serve` on its default address.
        for (listen, serve) in [(true, false), (true, true), (false, true)] {
            let args = ListenArgs {
                listen: listen
                    .then(|| "127.0.0.1:0".to_string())
                    .into_iter()
                    .collect(),
                idle_timeout: Some("0s".into()),
                ..ListenArgs::default()
            };
            let error = args
                .settings(&FileConfig::default(), None, serve)
                .expect_err("0s is rejected");
            assert!(
                error.to_string().contains("invalid --idle-timeout 0s"),
                "listen {listen}, serve {serve}: {error}"
            );
        }
    }

    #[test]
    fn tcp_options_rejected_without_listen() {
        let args = ListenArgs {
            idle_timeout: Some("0s".into()),
            ..ListenArgs::default()
        };
        let error = args
            .settings(&FileConfig::default(), None, false)
            .expect_err("a TCP option without --listen is rejected");
        assert!(
            error
                .to_string()
                .contains("--idle-timeout sets the TCP input"),
            "{error}"
        );
        assert!(error.to_string().contains("add --listen"), "{error}");
    }

    #[test]
    fn startup_hold_can_be_turned_off() {
        let args = ListenArgs {
            listen: vec!["127.0.0.1:0".into()],
            startup_hold: Some("0s".into()),
            ..ListenArgs::default()
        };
        let settings = settings_of(&args);
        assert_eq!(settings.startup_hold, Duration::ZERO);
        assert_eq!(settings.idle_timeout, Duration::from_secs(30));
    }
}
