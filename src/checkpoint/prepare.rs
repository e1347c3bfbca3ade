//! Checks a run's checkpoint options and reads the checkpoint to resume from, before any
//! worker starts.

use std::any::Any;

use veer_models::baseline::BaselineState;
use veer_models::UserState;

use super::snapshot::{CheckpointMeta, FeedPosition, WorkerPart};
use super::{file, load, CheckpointPlan, ResumeInfo};
use crate::config::DetectorChoice;
use crate::pipeline::{EventSource, RunSettings};

/// Checkpoint settings of a run, resolved from its options.
pub struct Prepared {
    pub plan: Option<CheckpointPlan>,
    /// `Vec<Option<WorkerPart<S>>>` for the run's detector state `S`, on a resume.
    pub restored: Option<Box<dyn Any + Send>>,
    pub position: Option<FeedPosition>,
    pub resumed: Option<ResumeInfo>,
}

/// Returns the settings that change a run's results, as JSON, so a resume can compare them.
pub fn settings_fingerprint(settings: &RunSettings) -> String {
    serde_json::json!({
        "detector_config": settings.detector_config,
        "groups": settings.groups,
        "window_ms": settings.window.as_millis() as u64,
        "order": format!("{:?}", settings.order),
        "out_of_orderness_ms": settings.out_of_orderness.as_millis() as u64,
        "max_future_skew_ms": settings.max_future_skew.as_millis() as u64,
        "evict_idle_ms": settings.state.evict_idle_ms(),
    })
    .to_string()
}

fn detector_name(choice: DetectorChoice) -> &'static str {
    match choice {
        DetectorChoice::Shift => "shift",
        DetectorChoice::Baseline => "baseline",
    }
}

fn input_names(source: &EventSource) -> Vec<String> {
    match source {
        EventSource::Inputs { paths, .. } => paths.clone(),
        EventSource::Memory(events) => vec![format!("<generated: {} events>", events.len())],
        EventSource::Listen(_) => vec!["<listen>".to_string()],
    }
}

/// Validates the checkpoint options and, on a resume, reads and splits the checkpoint.
pub fn prepare(settings: &RunSettings, models: bool) -> anyhow::Result<Prepared> {
    let state = &settings.state;
    let dir = state
        .checkpoint_dir
        .clone()
        .or_else(|| state.resume_dir.clone());
    let Some(dir) = dir else {
        return Ok(Prepared {
            plan: None,
            restored: None,
            position: None,
            resumed: None,
        });
    };
    if models || settings.keep_alerts {
        anyhow::bail!(
            "checkpoints and --resume do not work with --models or --truth, which score the \
             whole run in memory; drop one of them"
        );
    }
    if matches!(settings.source, EventSource::Listen(_)) {
        anyhow::bail!(
            "checkpoints and --resume work on file and standard-input sources only, not on \
             sockets; drop --listen or the checkpoint options"
        );
    }
    if settings.cluster.is_some() {
        anyhow::bail!(
            "checkpoints and --resume work within one process only; drop --processes or the \
             checkpoint options"
        );
    }
    if state.checkpoint_interval.is_zero() {
        anyhow::bail!("invalid checkpoint interval 0: give a duration such as 10s or 100ms");
    }
    let fingerprint = settings_fingerprint(settings);
    let inputs = input_names(&settings.source);
    let detector = detector_name(settings.detector);
    let mut plan = CheckpointPlan {
        dir: dir.clone(),
        interval: state.checkpoint_interval,
        after: 0,
        meta: CheckpointMeta {
            sequence: 0,
            created_unix_ms: 0,
            workers: settings.workers as u32,
            detector: detector.to_string(),
            settings: fingerprint.clone(),
            inputs: inputs.clone(),
            feed: FeedPosition {
                cut_ms: 0,
                events_read: 0,
                events_sent: 0,
                sorted: false,
                sent_hash: 0,
            },
            alerts_written: 0,
        },
    };

    let Some(resume_dir) = &state.resume_dir else {
        // A fresh run must not mix its checkpoints with another run's.
        let existing = match file::list(&dir) {
            Ok(files) => files,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => anyhow::bail!("cannot read checkpoint folder {}: {error}", dir.display()),
        };
        if let Some((_, path)) = existing.last() {
            anyhow::bail!(
                "checkpoint folder {} already holds checkpoints (newest {}); resume with --resume {}, or remove them",
                dir.display(),
                path.display(),
                dir.display()
            );
        }
        return Ok(Prepared {
            plan: Some(plan),
            restored: None,
            position: None,
            resumed: None,
        });
    };

    let (restored, path, meta) = match settings.detector {
        DetectorChoice::Shift => load_parts::<UserState>(
            resume_dir,
            &fingerprint,
            &inputs,
            detector,
            settings.workers,
        )?,
        DetectorChoice::Baseline => load_parts::<BaselineState>(
            resume_dir,
            &fingerprint,
            &inputs,
            detector,
            settings.workers,
        )?,
    };
    tracing::info!(
        checkpoint = %path.display(),
        sequence = meta.sequence,
        cut_ms = meta.feed.cut_ms,
        written_by_workers = meta.workers,
        "resuming from checkpoint"
    );
    plan.after = meta.sequence;
    Ok(Prepared {
        plan: Some(plan),
        restored: Some(restored),
        position: Some(meta.feed.clone()),
        resumed: Some(ResumeInfo {
            path,
            sequence: meta.sequence,
            cut_ms: meta.feed.cut_ms,
            alerts_before_cut: meta.alerts_written,
        }),
    })
}

/// Loads the newest checkpoint for detector state `S`, with its parts boxed for the worker
/// closures, which take them out by worker index.
fn load_parts<S: serde::de::DeserializeOwned + Send + 'static>(
    dir: &std::path::Path,
    fingerprint: &str,
    inputs: &[String],
    detector: &str,
    workers: usize,
) -> anyhow::Result<(Box<dyn Any + Send>, std::path::PathBuf, CheckpointMeta)> {
    let loaded = load::<S>(dir, fingerprint, inputs, detector, workers)?;
    let parts: Vec<Option<WorkerPart<S>>> = loaded.parts.into_iter().map(Some).collect();
    Ok((Box::new(parts), loaded.path, loaded.meta))
}
