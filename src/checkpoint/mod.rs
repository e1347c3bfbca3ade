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
    /// Checkpoint files kept in the folder; older ones are removed after each write.
    pub checkpoint_keep: usize,
    /// Folder of the checkpoint to resume from.
    pub resume_dir: Option<PathBuf>,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            evict_idle: Some(DEFAULT_EVICT_IDLE),
            checkpoint_dir: None,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_keep: 2,
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

pub mod board;
pub mod file;
pub mod snapshot;

use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;

use board::Board;
use snapshot::{CheckpointFile, CheckpointMeta, FeedPosition, Restored, WorkerPart};

/// Worker 0's side of checkpointing: when to cut, and writing the file.
pub struct Checkpointer {
    dir: PathBuf,
    interval: Duration,
    keep: usize,
    last: Instant,
    sequence: u64,
    window_ms: u64,
    board: Arc<Board>,
    answered: u64,
    meta: CheckpointMeta,
    /// Run metrics that count each checkpoint written or failed (summary and `/metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// Checkpoints written by this run.
    pub written: u64,
    /// Checkpoints that failed in this run.
    failed: u64,
    /// Cause of the last failed checkpoint, so a repeat of it is logged only now and then.
    last_cause: String,
    /// Cut of the newest checkpoint in the folder, written by this run or resumed from.
    newest_cut_ms: Option<u64>,
}

impl Checkpointer {
    /// Creates the checkpointer from the run's plan; the first checkpoint gets number
    /// `plan.after + 1`. The plan's metadata carries the run's settings; its sequence, time,
    /// feed position and alert count are filled in at each checkpoint.
    pub fn new(
        plan: &CheckpointPlan,
        window_ms: u64,
        board: Arc<Board>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Checkpointer {
            dir: plan.dir.clone(),
            interval: plan.interval,
            keep: plan.keep,
            last: Instant::now(),
            sequence: plan.after,
            window_ms,
            board,
            answered: 0,
            meta: plan.meta.clone(),
            metrics,
            written: 0,
            failed: 0,
            last_cause: String::new(),
            newest_cut_ms: None,
        }
    }

    /// Returns whether a checkpoint is due and `cut_ms` may be a cut. A cut never falls on a
    /// population window boundary: at a boundary the window's counts leave the worker at the
    /// cut time itself, and a probe at that time cannot tell whether they have arrived. No
    /// checkpoint is due at the cut of the newest one, because it would store the same state.
    pub fn due(&self, cut_ms: u64) -> bool {
        self.last.elapsed() >= self.interval
            && self.may_cut(cut_ms)
            && self.newest_cut_ms != Some(cut_ms)
    }

    /// Returns whether `cut_ms` may be a cut: not 0 and not a population window boundary (see
    /// [`due`](Self::due)).
    pub fn may_cut(&self, cut_ms: u64) -> bool {
        cut_ms != 0 && cut_ms % self.window_ms != 0
    }

    /// Returns the cut of the newest checkpoint in the folder: the last one this run wrote, or
    /// the one it resumed from.
    pub fn newest_cut_ms(&self) -> Option<u64> {
        self.newest_cut_ms
    }

    /// Records that the run resumed from a checkpoint at `cut_ms`.
    pub fn resumed_at(&mut self, cut_ms: u64) {
        self.newest_cut_ms = Some(cut_ms);
    }

    /// Returns the sequence number of the newest checkpoint in the folder.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Takes a checkpoint at the cut `position.cut_ms`.
    ///
    /// The caller has advanced the input to the cut, sent nothing at or after it, and stepped
    /// the dataflow until the probe after the alert sink passed it. `flush_alerts` hands the
    /// alerts written so far to the operating system, so none written before the cut can be
    /// lost by a kill after the checkpoint exists. A failed checkpoint is counted and logged,
    /// and the run goes on, because its alerts are still correct. `veer run` reports the
    /// count in its summary and exit code. Returns whether the checkpoint was written.
    pub fn take(
        &mut self,
        worker: &mut timely::worker::Worker,
        position: FeedPosition,
        alerts_written: u64,
        encode_local: &dyn Fn() -> Result<Vec<u8>, String>,
        flush_alerts: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> bool {
        let started = Instant::now();
        self.last = started;
        if let Err(error) = flush_alerts() {
            let error = format!("failed to flush the alerts before it: {error}");
            self.fail(self.sequence + 1, error.clone(), error);
            return false;
        }
        self.sequence += 1;
        self.board.request(self.sequence);
        self.board.serve(0, &mut self.answered, encode_local);
        let parts = loop {
            if let Some(parts) = self.board.collect() {
                break parts;
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
        };
        let parts: Result<Vec<Vec<u8>>, String> = parts.into_iter().collect();
        let parts = match parts {
            Ok(parts) => parts,
            Err(error) => {
                let error = format!("failed to encode it: {error}");
                self.fail(self.sequence, error.clone(), error);
                return false;
            }
        };
        self.meta.sequence = self.sequence;
        self.meta.created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.meta.feed = position;
        self.meta.alerts_written = alerts_written;
        let contents = CheckpointFile {
            meta: self.meta.clone(),
            parts,
        };
        // Each failure carries its cause without the file name, which changes with every
        // sequence number, so that repeats of one cause compare equal.
        let written = file::encode(&contents)
            .map_err(|error| {
                let error = format!("failed to encode it: {error}");
                (error.clone(), error)
            })
            .and_then(|bytes| {
                file::write_atomic(&self.dir, self.sequence, &bytes, self.keep)
                    .map(|path| (path, bytes.len()))
                    .map_err(|error| {
                        let cause = match &error {
                            file::CheckpointError::Unwritable { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        };
                        (error.to_string(), cause)
                    })
            });
        match written {
            Ok((path, bytes)) => {
                self.written += 1;
                self.newest_cut_ms = Some(contents.meta.feed.cut_ms);
                self.metrics
                    .checkpoint_written(started.elapsed(), bytes as u64);
                tracing::info!(
                    sequence = self.sequence,
                    file = %path.display(),
                    bytes,
                    cut_ms = contents.meta.feed.cut_ms,
                    millis = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
                true
            }
            Err((error, cause)) => {
                self.fail(self.sequence, error, cause);
                false
            }
        }
    }

    /// Counts and logs failed checkpoint `sequence`. A failure whose `cause` repeats the
    /// previous one is logged only when the count of failures reaches a power of two, so a full
    /// disk does not flood the log. The summary gives the total.
    fn fail(&mut self, sequence: u64, error: String, cause: String) {
        self.failed += 1;
        self.metrics.checkpoint_failed();
        if cause != self.last_cause || self.failed.is_power_of_two() {
            tracing::error!(
                %error,
                sequence,
                folder = %self.dir.display(),
                failures = self.failed,
                "checkpoint failed; the run goes on, but a --resume starts from an older \
                 checkpoint, if any"
            );
        }
        self.last_cause = cause;
    }
}

/// A checkpoint read for a resume, already split among the new run's workers.
pub struct Loaded<S> {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// One part per new worker, in worker order.
    pub parts: Vec<WorkerPart<S>>,
}

/// The run's settings and inputs that a checkpoint must match to be resumed.
pub struct Expected<'a> {
    /// Settings that change results, as [`prepare::settings_fingerprint`] returns them.
    pub settings: &'a str,
    pub inputs: &'a [String],
    pub detector: &'a str,
    /// Model path settings ([`prepare::models_fingerprint`]), or `None` without `--models`.
    pub models: Option<&'a str>,
}

/// Reads the newest checkpoint in `dir` and checks it against the run's settings and inputs.
///
/// Every failure names the file and the reason; nothing here starts a run from empty.
pub fn load<S: DeserializeOwned>(
    dir: &std::path::Path,
    expected: &Expected<'_>,
    workers: usize,
) -> anyhow::Result<Loaded<S>> {
    let Expected {
        settings,
        inputs,
        detector,
        models,
    } = *expected;
    let (_, path) = file::latest(dir)?;
    let contents: CheckpointFile = file::read(&path)
        .map_err(|error| anyhow::anyhow!("{error}; {}", older_checkpoint_advice(dir, &path)))?;
    let meta = contents.meta;
    check_models(&path, meta.models.as_deref(), models)?;
    if meta.detector != detector {
        anyhow::bail!(
            "checkpoint {}: written by the {} detector, this run uses {detector}; resume with --detector {}",
            path.display(),
            meta.detector,
            meta.detector
        );
    }
    if meta.settings != settings {
        anyhow::bail!(
            "checkpoint {}: written with other settings ({}); resume with the same veer.toml \
             and options, or start without --resume",
            path.display(),
            describe_differences(&meta.settings, settings, run_setting_name)
        );
    }
    if meta.inputs != inputs {
        anyhow::bail!(
            "checkpoint {}: written for inputs {:?}, this run reads {inputs:?}; resume with the same --input",
            path.display(),
            meta.inputs
        );
    }
    let mut parts = Vec::with_capacity(contents.parts.len());
    for (index, bytes) in contents.parts.iter().enumerate() {
        let part: WorkerPart<S> =
            file::decode_payload(bytes).map_err(|error| file::CheckpointError::Invalid {
                path: path.clone(),
                reason: format!("state of worker {index}: {error}"),
            })?;
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(file::CheckpointError::Invalid {
            path,
            reason: "no worker state".into(),
        }
        .into());
    }
    let parts = Restored::merge(parts).split(workers);
    for (index, part) in parts.iter().enumerate() {
        if let Some(models) = &part.models {
            models
                .check()
                .map_err(|error| file::CheckpointError::Invalid {
                    path: path.clone(),
                    reason: format!("model state for worker {index}: {error}"),
                })?;
        }
    }
    Ok(Loaded { path, meta, parts })
}

/// Returns what to do when the newest checkpoint, `newest` in `dir`, cannot be read: resume
/// from the next older checkpoint if it reads, else start again.
fn older_checkpoint_advice(dir: &std::path::Path, newest: &std::path::Path) -> String {
    let older = file::list(dir)
        .ok()
        .and_then(|files| files.into_iter().rev().find(|(_, path)| path != newest));
    let Some((_, older)) = older else {
        return format!(
            "no older checkpoint is in {}, so start without --resume",
            dir.display()
        );
    };
    match file::read::<CheckpointFile>(&older) {
        Ok(_) => format!(
            "the older checkpoint {} is intact: move {} out of {} and resume again to start \
             from it",
            older.display(),
            newest.display(),
            dir.display()
        ),
        Err(error) => format!(
            "the older checkpoint cannot be read either ({error}), so start without --resume"
        ),
    }
}

/// Checks that the checkpoint at `path` was written with `--models` exactly when the run has
/// it, and with the same model settings. Both arguments are [`prepare::models_fingerprint`]
/// values.
fn check_models(
    path: &std::path::Path,
    written: Option<&str>,
    run: Option<&str>,
) -> anyhow::Result<()> {
    match (written, run) {
        (None, None) => Ok(()),
        (Some(written), Some(run)) if written == run => Ok(()),
        (None, Some(_)) => anyhow::bail!(
            "checkpoint {}: written by a run without --models, but this run has --models; \
             resume without --models, or start without --resume",
            path.display()
        ),
        (Some(_), None) => anyhow::bail!(
            "checkpoint {}: written by a run with --models, but this run has none; resume \
             with --models and the same [models] settings, or start without --resume",
            path.display()
        ),
        (Some(written), Some(run)) => anyhow::bail!(
            "checkpoint {}: written with other model settings ({}); resume with the same \
             [models] settings and --models-load file, or start without --resume",
            path.display(),
            describe_differences(written, run, model_setting_name)
        ),
    }
}

/// Describes each setting that differs between the fingerprints `written` (the checkpoint's)
/// and `run` (this run's), as `NAME: checkpoint VALUE, this run VALUE`. `name` turns a
/// fingerprint key into the option or `veer.toml` key that sets it. Fingerprints that are
/// not JSON objects are shown whole.
fn describe_differences(written: &str, run: &str, name: fn(&str) -> String) -> String {
    let parsed = (
        serde_json::from_str::<serde_json::Value>(written),
        serde_json::from_str::<serde_json::Value>(run),
    );
    let (Ok(written_value), Ok(run_value)) = parsed else {
        return format!("checkpoint {written}, this run {run}");
    };
    let found = crate::json_diff::differences("", &written_value, &run_value);
    if found.is_empty() {
        return format!("checkpoint {written}, this run {run}");
    }
    found
        .iter()
        .map(|(key, written, run)| format!("{}: checkpoint {written}, this run {run}", name(key)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Returns the option or `veer.toml` key that sets the run setting with fingerprint key `key`
/// ([`prepare::settings_fingerprint`]).
fn run_setting_name(key: &str) -> String {
    if let Some(field) = key.strip_prefix("detector_config.") {
        return format!("[detector] {field}");
    }
    if let Some(field) = key.strip_prefix("groups.") {
        return format!("[groups] {field}");
    }
    match key {
        "window_ms" => "--window in milliseconds".into(),
        "order" => "--order".into(),
        "out_of_orderness_ms" => "--out-of-orderness in milliseconds".into(),
        "max_future_skew_ms" => "[time] max_future_skew in milliseconds".into(),
        "evict_idle_ms" => "--evict-after in milliseconds (null: never)".into(),
        other => format!("setting `{other}`"),
    }
}

/// Returns how a resume error names the model setting with fingerprint key `key`
/// ([`prepare::models_fingerprint`]): a field of the `--models-load` file, or the key.
fn model_setting_name(key: &str) -> String {
    match key.strip_prefix("loaded.") {
        Some(field) => format!("--models-load file's {field}"),
        None if key == "loaded" => "--models-load file".into(),
        None => format!("model setting `{key}`"),
    }
}

pub mod prepare;

/// Checkpoint settings of a run, with the metadata every checkpoint repeats.
pub struct CheckpointPlan {
    /// Folder of the checkpoint files.
    pub dir: PathBuf,
    /// Wall-clock time between two checkpoints.
    pub interval: Duration,
    /// Checkpoint files kept in the folder.
    pub keep: usize,
    /// Sequence number of the checkpoint this run resumed from, or 0.
    pub after: u64,
    /// Run metadata; the per-checkpoint fields are filled in when each is written.
    pub meta: CheckpointMeta,
}

/// The checkpoint a run resumed from, for the summary.
#[derive(Clone, Debug)]
pub struct ResumeInfo {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Its sequence number.
    pub sequence: u64,
    /// Its cut, in Unix milliseconds of event time.
    pub cut_ms: u64,
    /// Alerts written before its cut.
    pub alerts_before_cut: u64,
}
