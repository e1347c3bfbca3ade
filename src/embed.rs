//! Running the detection job from Rust code, without the command line.
//!
//! [`Engine`] wraps the same dataflow as `veer run` ([`crate::pipeline::run`]) over events
//! held in memory. Build one with [`Engine::builder`], then either pass all events at once
//! with [`Engine::run`], or start it on a thread with [`Engine::spawn`] and send events over
//! a channel from any number of producers.
//!
//! Both forms are batch runs: the events are sorted by event time and replayed once the input
//! is complete, so nothing is late and the alerts are the same for any worker count. Alerts
//! arrive when the run ends, in the order `veer run` writes them.
//!
//! ```
//! use veer::embed::{event, Engine};
//! use veer_models::Behavior;
//!
//! let engine = Engine::builder().workers(2).build()?;
//! let events = (0..30u64).map(|i| event(7u64, 100 + i, 5u64, Behavior::View, 1_511_700_000 + 60 * i as i64));
//! let alerts = engine.run(events)?;
//! assert!(alerts.is_empty(), "thirty views of one category are no shift");
//! # Ok::<(), veer::embed::EngineError>(())
//! ```

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use veer_models::detector::ConfigError;
use veer_models::{Alert, Behavior, DetectorConfig, Event, GroupConfig, Id};

use crate::config::{DetectorChoice, ReplayOrder, TimeConfig};
use crate::pipeline::{self, AlertOutput, EventSource, RunSettings, RunSummary};

/// An error of an embedded run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A detector setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The builder was given zero workers.
    #[error("invalid worker count 0: at least one worker thread is needed")]
    NoWorkers,
    /// An event has a time before 1970, which the dataflow's unsigned clock cannot hold.
    #[error("invalid event {index}: event time {ts_ms} ms is before 1970-01-01")]
    NegativeTime {
        /// Position of the event in the input, from 0.
        index: usize,
        /// The event's time in Unix milliseconds.
        ts_ms: i64,
    },
    /// The dataflow failed.
    #[error("the run failed: {0:#}")]
    Run(anyhow::Error),
    /// The thread started by [`Engine::spawn`] panicked.
    #[error("the engine thread panicked")]
    Panicked,
}

/// Settings of an [`Engine`], each starting at the default of `veer run`.
#[derive(Clone, Debug)]
pub struct EngineBuilder {
    workers: usize,
    detector: DetectorChoice,
    detector_config: DetectorConfig,
    groups: GroupConfig,
    window: Duration,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            workers: 1,
            detector: DetectorChoice::Shift,
            detector_config: DetectorConfig::default(),
            groups: GroupConfig::default(),
            window: TimeConfig::default().window,
        }
    }
}

impl EngineBuilder {
    /// Sets the number of worker threads (default 1), across which users are partitioned.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Chooses the shift detector (default) or the baseline rule.
    pub fn detector(mut self, detector: DetectorChoice) -> Self {
        self.detector = detector;
        self
    }

    /// Sets the shift detector's settings (the `[detector]` table of `veer.toml`).
    pub fn detector_config(mut self, config: DetectorConfig) -> Self {
        self.detector_config = config;
        self
    }

    /// Sets group learning and trend settings (the `[groups]` table of `veer.toml`).
    pub fn group_config(mut self, config: GroupConfig) -> Self {
        self.groups = config;
        self
    }

    /// Sets the population window of group learning and trends (default 1 hour).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Checks the settings and returns the engine.
    pub fn build(self) -> Result<Engine, EngineError> {
        self.detector_config.validate()?;
        if self.workers == 0 {
            return Err(EngineError::NoWorkers);
        }
        Ok(Engine { settings: self })
    }
}

/// The detection job, ready to run on events in memory.
#[derive(Clone, Debug)]
pub struct Engine {
    settings: EngineBuilder,
}

impl Engine {
    /// Returns a builder with the defaults of `veer run`.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Runs the job on `events`, in any order, and returns the alerts in output order.
    pub fn run(&self, events: impl IntoIterator<Item = Event>) -> Result<Vec<Alert>, EngineError> {
        self.run_with_summary(events).map(|(alerts, _)| alerts)
    }

    /// Runs the job and returns the alerts with the run's summary (counts, users, wall time).
    pub fn run_with_summary(
        &self,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<(Vec<Alert>, RunSummary), EngineError> {
        let events: Vec<Event> = events.into_iter().collect();
        if let Some((index, event)) = events.iter().enumerate().find(|(_, e)| e.ts_ms < 0) {
            return Err(EngineError::NegativeTime {
                index,
                ts_ms: event.ts_ms,
            });
        }
        let settings = &self.settings;
        let time = TimeConfig::default();
        let run = RunSettings {
            source: EventSource::Memory(events),
            alerts: AlertOutput::Discard,
            sinks: Default::default(),
            dead_letter: None,
            workers: settings.workers,
            order: ReplayOrder::EventTime,
            out_of_orderness: time.out_of_orderness,
            max_future_skew: time.max_future_skew,
            window: settings.window,
            detector: settings.detector,
            detector_config: settings.detector_config.clone(),
            groups: settings.groups.clone(),
            progress: false,
            keep_alerts: true,
            metrics: Default::default(),
            state: crate::checkpoint::StateSettings::default(),
            cluster: None,
            http: None,
            users: None,
            profiles: None,
            profile_settings: Default::default(),
        };
        let mut summary = pipeline::run(run).map_err(EngineError::Run)?;
        let alerts = std::mem::take(&mut summary.kept_alerts);
        summary.timeline = Vec::new();
        Ok((alerts, summary))
    }

    /// Starts the job on its own thread, fed by the returned handle's channel.
    ///
    /// The run starts once every sender of the handle is dropped, through
    /// [`EngineHandle::finish`]. A clone of [`EngineHandle::sender`] kept elsewhere delays it.
    pub fn spawn(&self) -> EngineHandle {
        let (sender, receiver) = crossbeam_channel::unbounded::<Event>();
        let engine = self.clone();
        let thread = std::thread::Builder::new()
            .name("veer-engine".into())
            .spawn(move || engine.run(receiver))
            .expect("the engine thread starts");
        EngineHandle {
            sender: Some(sender),
            thread,
        }
    }
}

/// A job started by [`Engine::spawn`]: send events, then [`finish`](EngineHandle::finish).
pub struct EngineHandle {
    sender: Option<Sender<Event>>,
    thread: JoinHandle<Result<Vec<Alert>, EngineError>>,
}

impl EngineHandle {
    /// Returns a sender for another producer thread; drop it when that producer is done.
    pub fn sender(&self) -> Sender<Event> {
        self.sender.clone().expect("the sender lives until finish")
    }

    /// Sends one event.
    pub fn send(&self, event: Event) {
        if let Some(sender) = &self.sender {
            // The receiver lives in the engine thread until every sender is dropped.
            let _ = sender.send(event);
        }
    }

    /// Closes this handle's sender, waits for the run and returns its alerts.
    pub fn finish(mut self) -> Result<Vec<Alert>, EngineError> {
        drop(self.sender.take());
        self.thread.join().map_err(|_| EngineError::Panicked)?
    }
}

/// Builds a minimal event: no topic, price, brand, dwell time or session id.
///
/// `ts_secs` is the event time in Unix seconds.
pub fn event(
    user: impl Into<Id>,
    item: impl Into<Id>,
    category: impl Into<Id>,
    behavior: Behavior,
    ts_secs: i64,
) -> Event {
    Event::plain(ts_secs.saturating_mul(1000), user, category, item, behavior)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_workers_are_rejected() {
        let error = Engine::builder().workers(0).build().unwrap_err();
        assert!(matches!(error, EngineError::NoWorkers));
    }

    #[test]
    fn invalid_detector_setting_is_rejected() {
        let config = DetectorConfig {
            threshold: -1.0,
            ..DetectorConfig::default()
        };
        let error = Engine::builder()
            .detector_config(config)
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("threshold"), "{error}");
    }

    #[test]
    fn negative_time_is_rejected() {
        let engine = Engine::builder().build().unwrap();
        let error = engine
            .run([event(1u64, 1u64, 1u64, Behavior::View, -5)])
            .unwrap_err();
        assert!(matches!(error, EngineError::NegativeTime { index: 0, .. }));
    }
}
