//! The progress display of long runs: a bar on standard error while a terminal watches.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display that does nothing when disabled or when standard error is not a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Creates the display; `enabled` is the user's choice, and a terminal is required too.
    pub fn new(enabled: bool) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template("{spinner} reading {bytes} ({bytes_per_sec}) {elapsed}")
                .expect("the template is valid"),
        );
        Progress { bar: Some(bar) }
    }

    /// Shows the bytes read so far.
    pub fn reading(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Switches to the processing phase over `total` events, with rate and ETA.
    pub fn processing(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(0);
            bar.reset_eta();
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {human_pos}/{human_len} events ({per_sec}, ETA {eta})",
                )
                .expect("the template is valid"),
            );
        }
    }

    /// Shows the events processed so far.
    pub fn processed(&self, events: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(events);
        }
    }

    /// Removes the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
