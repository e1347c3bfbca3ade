//! Settings of a run: every option of `veer run`, read from `veer.toml` and overridden by the
//! command line. `veer.toml` at the repository root lists every key with its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use veer_models::{DetectorConfig, GroupConfig};

/// Replay order of a file's events into the dataflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayOrder {
    /// Event time for files grouped by user or far out of order, arrival order otherwise.
    Auto,
    /// Sort the whole input by event time before the replay; nothing is late.
    EventTime,
    /// Replay in file order; events behind the watermark are late.
    Arrival,
}

/// Per-user detector that raises `interest_shift` alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorChoice {
    /// The CUSUM group-shift detector.
    Shift,
    /// The "new category comes back in a later session" reference rule.
    Baseline,
}

/// Event-time settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// How far behind the newest event an event may arrive and still be on time.
    #[serde(with = "duration_text")]
    pub out_of_orderness: Duration,
    /// An event further ahead of the newest one than this does not move the watermark
    /// until several such events agree, so one corrupt timestamp cannot make the rest late.
    #[serde(with = "duration_text")]
    pub max_future_skew: Duration,
    /// Length of the population windows (group learning and trends).
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Replay order of a file.
    pub order: ReplayOrder,
    /// Time without events after which a live connection stops holding back event time.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            out_of_orderness: Duration::from_secs(600),
            max_future_skew: Duration::from_secs(24 * 3600),
            window: Duration::from_secs(3600),
            order: ReplayOrder::Auto,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// `[time]`: replay order, out-of-orderness and the population window.
    pub time: TimeConfig,
    /// `[detector]`: settings of the shift detector.
    pub detector: DetectorConfig,
    /// `[groups]`: group learning and population trends.
    pub groups: GroupConfig,
    /// `[run]`: workers, detector choice and dead-letter file.
    pub run: RunFileConfig,
    /// `[models]`: the model path (`--models`).
    pub models: ModelsConfig,
    /// `[state]`: eviction of idle users and checkpoints.
    pub state: StateFileConfig,
    /// `[cluster]`: several processes (`--processes`, `--hostfile`).
    pub cluster: ClusterFileConfig,
    /// `[listen]`: the TCP source of `veer serve`.
    pub listen: crate::listen::ListenConfig,
    /// `[sinks]`: alert sinks besides `--alerts` (subscriber socket, webhooks) and their
    /// queues.
    pub sinks: crate::sinks::SinkConfig,
    /// `[users]`: the user attribute table (`--users`).
    pub users: UsersConfig,
    /// `[profiles]`: when a profile counts as changed (`--profiles`).
    pub profiles: veer_operators::profiles::ProfileSettings,
}

/// `[cluster]`: a run over several processes with timely's cluster mode. The index of each
/// process is given on its command line (`--process`), so that all can share one file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterFileConfig {
    /// Number of processes (`--processes`).
    pub processes: usize,
    /// File with one `host:port` line per process, in process order (`--hostfile`).
    pub hostfile: Option<PathBuf>,
    /// Time to wait for every process to connect (`--connect-timeout`).
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
}

impl Default for ClusterFileConfig {
    fn default() -> Self {
        ClusterFileConfig {
            processes: 1,
            hostfile: None,
            connect_timeout: crate::cluster::DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// `[state]`: eviction of idle users and checkpoints.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateFileConfig {
    /// Event time after which an idle user's state is dropped (`--evict-after`); `0` keeps
    /// every user.
    #[serde(with = "duration_text")]
    pub evict_after: Duration,
    /// Folder for periodic checkpoints (`--checkpoint-dir`); none when absent.
    pub checkpoint_dir: Option<PathBuf>,
    /// Wall-clock time between checkpoints (`--checkpoint-interval`).
    #[serde(with = "duration_text")]
    pub checkpoint_interval: Duration,
    /// Checkpoint files kept in the folder; older ones are removed after each write.
    pub checkpoint_keep: usize,
}

impl Default for StateFileConfig {
    fn default() -> Self {
        let defaults = crate::checkpoint::StateSettings::default();
        StateFileConfig {
            evict_after: defaults.evict_idle.unwrap_or_default(),
            checkpoint_dir: None,
            checkpoint_interval: defaults.checkpoint_interval,
            checkpoint_keep: defaults.checkpoint_keep,
        }
    }
}

/// `[users]`: how the user attribute table is watched.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// How often the table's file is checked for changes.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// `[models]`: learned models that score user windows after a bootstrap period.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Whether the model path runs (`--models` turns it on).
    pub enabled: bool,
    /// Event time from the start of the bootstrap period whose windows train the models.
    #[serde(with = "duration_text")]
    pub bootstrap: Duration,
    /// Density that the start of the bootstrap period needs, in 0..=1 (see
    /// [`veer_models::ml::ScheduleSettings::start_density`]).
    pub bootstrap_start_density: f64,
    /// Event time between two refits; `None` fits once.
    #[serde(with = "optional_duration_text")]
    pub retrain_every: Option<Duration>,
    /// Seed of every model fit.
    pub seed: u64,
    /// File that each fitted model version replaces (`--models-save`). `None` saves nothing.
    pub save: Option<PathBuf>,
    /// Model file whose models score every window instead of a bootstrap fit
    /// (`--models-load`). `None` fits the models.
    pub load: Option<PathBuf>,
    /// Fusion of the detector's alerts with the model signals.
    pub fusion: veer_models::fusion::FusionConfig,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            enabled: false,
            bootstrap: Duration::from_secs(2 * 86_400),
            bootstrap_start_density: 0.25,
            retrain_every: None,
            seed: 7,
            save: None,
            load: None,
            fusion: veer_models::fusion::FusionConfig::default(),
        }
    }
}

impl ModelsConfig {
    /// Returns the settings of the model path of a run.
    pub fn run_settings(&self) -> crate::replay::ModelRunSettings {
        crate::replay::ModelRunSettings {
            bootstrap_ms: self.bootstrap.as_millis() as u64,
            start_density: self.bootstrap_start_density,
            retrain_every_ms: self.retrain_every.map(|every| every.as_millis() as u64),
            seed: self.seed,
            fusion: self.fusion.clone(),
            ..Default::default()
        }
    }
}

/// `[run]` keys that the command line can also set.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunFileConfig {
    /// Worker threads (`--workers`).
    pub workers: usize,
    /// Detector that raises `interest_shift` alerts (`--detector`).
    pub detector: DetectorChoice,
    /// Dead-letter file for bad and late lines (`--dead-letter`).
    pub dead_letter: Option<PathBuf>,
    /// Address of the operations HTTP server (`--http`); `None` runs without it.
    pub http: Option<String>,
}

impl Default for RunFileConfig {
    fn default() -> Self {
        RunFileConfig {
            workers: 1,
            detector: DetectorChoice::Shift,
            dead_letter: None,
            http: None,
        }
    }
}

impl FileConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            anyhow::anyhow!("cannot read config file {}: {error}", path.display())
        })?;
        let config: FileConfig = toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("invalid config file {}: {error}", path.display()))?;
        config
            .detector
            .validate()
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        config
            .models
            .fusion
            .validate()
            .map_err(|error| anyhow::anyhow!("{}: [models.fusion] {error}", path.display()))?;
        config
            .check_ranges()
            .and_then(|()| config.check_paths())
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        Ok(config)
    }

    /// Rejects an empty path in any path key, as the command line rejects an empty path
    /// option. An empty path names no file, and some keys would otherwise be ignored without
    /// a word.
    fn check_paths(&self) -> Result<(), String> {
        let paths = [
            ("run", "dead_letter", &self.run.dead_letter),
            ("models", "save", &self.models.save),
            ("models", "load", &self.models.load),
            ("cluster", "hostfile", &self.cluster.hostfile),
            ("state", "checkpoint_dir", &self.state.checkpoint_dir),
            (
                "sinks.webhook",
                "dead_letter",
                &self.sinks.webhook.dead_letter,
            ),
        ];
        for (section, key, path) in paths {
            if path
                .as_ref()
                .is_some_and(|path| path.as_os_str().is_empty())
            {
                return Err(out_of_range(
                    section,
                    key,
                    "\"\"",
                    "a path that is not empty; remove the key to leave it unset",
                ));
            }
        }
        Ok(())
    }

    /// Checks the `[time]`, `[run]`, `[users]`, `[groups]`, `[profiles]` and `[detector]` keys
    /// whose ranges no `validate` of their own section covers, and returns the first value out
    /// of range.
    fn check_ranges(&self) -> Result<(), String> {
        if self.time.idle_timeout.is_zero() {
            return Err(out_of_range(
                "time",
                "idle_timeout",
                "\"0s\"",
                &format!("a positive duration such as \"30s\", because {ZERO_IDLE_TIMEOUT}"),
            ));
        }
        let workers = self.run.workers;
        if !(1..=crate::pipeline::MAX_WORKERS).contains(&workers) {
            return Err(out_of_range(
                "run",
                "workers",
                workers,
                &format!(
                    "1 to {} worker threads per process",
                    crate::pipeline::MAX_WORKERS
                ),
            ));
        }
        if self.users.poll_interval.is_zero() {
            return Err(out_of_range(
                "users",
                "poll_interval",
                "\"0s\"",
                "a positive duration such as \"1s\", because a zero interval checks the user \
                 table's file without pause",
            ));
        }
        let groups = &self.groups;
        if !(0.0..=1.0).contains(&groups.min_association) {
            return Err(out_of_range(
                "groups",
                "min_association",
                groups.min_association,
                "a cosine association in 0..=1",
            ));
        }
        if groups.links_per_category == 0 {
            return Err(out_of_range(
                "groups",
                "links_per_category",
                0,
                "at least 1, because with no links no category joins a group",
            ));
        }
        if self.detector.refractory_secs < 0 {
            return Err(out_of_range(
                "detector",
                "refractory_secs",
                self.detector.refractory_secs,
                "0 or more seconds",
            ));
        }
        let min_share_change = self.profiles.min_share_change;
        if !(0.0..=1.0).contains(&min_share_change) {
            return Err(out_of_range(
                "profiles",
                "min_share_change",
                min_share_change,
                "a share in 0..=1",
            ));
        }
        Ok(())
    }
}

/// Reason why an idle timeout of zero is rejected, in the config file and on the command line.
pub(crate) const ZERO_IDLE_TIMEOUT: &str = "every connection would be idle at once, so event \
     time would follow the wall clock and make events late";

/// Returns the message for a configuration value out of its range.
fn out_of_range(section: &str, key: &str, value: impl std::fmt::Display, expected: &str) -> String {
    format!("invalid [{section}] {key} = {value}: expected {expected}")
}

/// Largest duration that [`parse_duration`] accepts: 1,000,000 days, about 2,700 years.
///
/// Durations are added to event times and converted to `i64` milliseconds, which a much
/// larger value would overflow or wrap to a negative number.
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000 * 86_400);

/// Parses a duration such as `10s`, `100ms`, `5m`, `2h` or `3d`; a bare number is seconds.
/// Rejects durations above [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number and a unit such as 10s, 100ms, 5m, 2h or 3d"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!(
            "invalid duration {text:?}: must be a non-negative number"
        ));
    }
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "invalid duration {text:?}: the maximum is 1000000d (about 2,700 years)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Reads an optional duration such as `"1d"`. A missing key is `None`, and zero is rejected.
pub(crate) mod optional_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = super::parse_duration(&text).map_err(serde::de::Error::custom)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(format!(
                "invalid duration {text:?}: must be more than 0; remove the key to fit once"
            )));
        }
        Ok(Some(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn durations_above_maximum_rejected() {
        assert_eq!(parse_duration("1000000d"), Ok(MAX_DURATION));
        // Without the limit, 200000000000d wraps to a negative out-of-orderness in
        // milliseconds, and 1e22 days overflows `Duration`.
        for text in ["1000001d", "200000000000d", "9999999999999999999999d"] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains("the maximum is 1000000d"), "{text}: {error}");
        }
    }

    #[test]
    fn out_of_range_values_rejected() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("veer.toml");
        for (text, expected) in [
            (
                "[groups]\nmin_association = 5.0",
                "invalid [groups] min_association = 5: expected a cosine association in 0..=1",
            ),
            (
                "[groups]\nmin_association = -0.1",
                "invalid [groups] min_association = -0.1",
            ),
            (
                "[groups]\nmin_association = nan",
                "invalid [groups] min_association = NaN",
            ),
            (
                "[groups]\nlinks_per_category = 0",
                "invalid [groups] links_per_category = 0: expected at least 1",
            ),
            (
                "[detector]\nrefractory_secs = -5",
                "invalid [detector] refractory_secs = -5: expected 0 or more seconds",
            ),
            (
                "[profiles]\nmin_share_change = -1",
                "invalid [profiles] min_share_change = -1: expected a share in 0..=1",
            ),
            (
                "[profiles]\nmin_share_change = 1.5",
                "invalid [profiles] min_share_change = 1.5",
            ),
            (
                "[time]\nidle_timeout = \"0s\"",
                "invalid [time] idle_timeout = \"0s\": expected a positive duration such as \"30s\"",
            ),
            (
                "[time]\nidle_timeout = \"0ms\"",
                "invalid [time] idle_timeout = \"0s\"",
            ),
            (
                "[run]\nworkers = 0",
                "invalid [run] workers = 0: expected 1 to 1024 worker threads per process",
            ),
            ("[run]\nworkers = 1025", "invalid [run] workers = 1025"),
            (
                "[users]\npoll_interval = \"0s\"",
                "invalid [users] poll_interval = \"0s\": expected a positive duration such as \"1s\"",
            ),
        ] {
            std::fs::write(&path, text).expect("write the config file");
            let error = FileConfig::load(&path).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(
                error.contains(path.to_str().unwrap()),
                "{text}: the error does not name the file: {error}"
            );
        }
    }

    #[test]
    fn empty_paths_rejected() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("veer.toml");
        for (section, key) in [
            ("run", "dead_letter"),
            ("models", "save"),
            ("models", "load"),
            ("cluster", "hostfile"),
            ("state", "checkpoint_dir"),
            ("sinks.webhook", "dead_letter"),
        ] {
            let text = format!("[{section}]\n{key} = \"\"\n");
            std::fs::write(&path, &text).expect("write the config file");
            let error = FileConfig::load(&path).expect_err(&text).to_string();
            let expected = format!("invalid [{section}] {key} = \"\": expected a path");
            assert!(error.contains(&expected), "{text}: {error}");
            assert!(
                error.contains(path.to_str().unwrap()),
                "{text}: the error does not name the file: {error}"
            );

            let text = format!("[{section}]\n{key} = \"x\"\n");
            std::fs::write(&path, &text).expect("write the config file");
            assert!(FileConfig::load(&path).is_ok(), "{text}");
        }
    }

    #[test]
    fn range_edges_accepted() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("veer.toml");
        let text = "[groups]\nmin_association = 1.0\nlinks_per_category = 1\n\
                    [detector]\nrefractory_secs = 0\n[profiles]\nmin_share_change = 0.0\n";
        std::fs::write(&path, text).expect("write the config file");
        let loaded = FileConfig::load(&path).expect("values at the range edges load");
        assert_eq!(loaded.groups.links_per_category, 1);
        assert_eq!(loaded.detector.refractory_secs, 0);
    }

    #[test]
    fn shipped_config_matches_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/veer.toml");
        let loaded = FileConfig::load(Path::new(path)).expect("veer.toml loads");
        assert_eq!(loaded, FileConfig::default());
    }
}
