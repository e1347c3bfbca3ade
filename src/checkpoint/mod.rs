//! State that survives: eviction of idle users, periodic checkpoints and resume.

use std::path::PathBuf;
use std::time::Duration;

/// Default event time after which an idle user's state is dropped: 7 days.
pub const DEFAULT_EVICT_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings of eviction, checkpoints and resume.
#[derive(Clone, Debug)]
pub struct StateSettings {
    /// Event time after which an idle user's state is dropped; `None` keeps every user.
    pub evict_idle: Option<Duration>,
    /// Folder that checkpoints are written to; `None` writes none.
    pub checkpoint_dir: Option<PathBuf>,
    /// Wall-clock time between two checkpoints.
    pub checkpoint_interval: Duration,
    /// Folder of the checkpoint to resume from.
    pub resume_dir: Option<PathBuf>,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            evict_idle: Some(DEFAULT_EVICT_IDLE),
            checkpoint_dir: None,
            checkpoint_interval: Duration::from_secs(10),
            resume_dir: None,
        }
    }
}

impl StateSettings {
    /// Returns the eviction time in milliseconds, if eviction is on.
    pub fn evict_idle_ms(&self) -> Option<i64> {
        self.evict_idle
            .map(|idle| i64::try_from(idle.as_millis()).unwrap_or(i64::MAX))
    }
}
