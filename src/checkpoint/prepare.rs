//! Checks a run's checkpoint options and reads the checkpoint to resume from, before any
//! worker starts.

use std::any::Any;

use veer_models::baseline::BaselineState;
use veer_models::UserState;

use super::snapshot::{CheckpointMeta, FeedPosition, WorkerPart};
use super::{file, load, CheckpointPlan, ResumeInfo};
use crate::config::DetectorChoice;
use crate::pipeline::{EventSource, RunSettings};
use crate::replay::ModelRunSettings;

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

/// Returns the model path settings that change a run's results, as JSON, so a resume can
/// compare them. Loaded models are named by their version and training span, because the
/// checkpoint stores the models themselves.
pub fn models_fingerprint(models: &ModelRunSettings) -> String {
    let loaded = models.loaded.as_ref().map(|file| {
        serde_json::json!({
            "version": file.version,
            "trained_from_ms": file.trained_from_ms,
            "trained_until_ms": file.trained_until_ms,
        })
    });
    serde_json::json!({
        "bootstrap_ms": models.bootstrap_ms,
        "start_density": models.start_density,
        "retrain_every_ms": models.retrain_every_ms,
        "seed": models.seed,
        "params": models.params,
        "window": models.window,
        "fusion": models.fusion,
        "reference_decay": models.reference_decay,
        "loaded": loaded,
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
/// `models` are the model path's settings, with `--models`.
pub fn prepare(
    settings: &RunSettings,
    models: Option<&ModelRunSettings>,
) -> anyhow::Result<Prepared> {
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
    if settings.keep_alerts {
        anyhow::bail!(
            "checkpoints and --resume do not work with --truth, which scores the whole run in \
             memory; drop one of them"
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
    if state.checkpoint_keep == 0 {
        anyhow::bail!(
            "invalid [state] checkpoint_keep = 0: at least the newest checkpoint must be kept"
        );
    }
    if state.checkpoint_interval.is_zero() {
        anyhow::bail!("invalid checkpoint interval 0: give a duration such as 10s or 100ms");
    }
    let fingerprint = settings_fingerprint(settings);
    let inputs = input_names(&settings.source);
    let detector = detector_name(settings.detector);
    let models = models.map(models_fingerprint);
    let mut plan = CheckpointPlan {
        dir: dir.clone(),
        interval: state.checkpoint_interval,
        keep: state.checkpoint_keep,
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
            models: models.clone(),
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

    let expected = super::Expected {
        settings: &fingerprint,
        inputs: &inputs,
        detector,
        models: models.as_deref(),
    };
    let (restored, path, meta) = match settings.detector {
        DetectorChoice::Shift => load_parts::<UserState>(resume_dir, &expected, settings.workers)?,
        DetectorChoice::Baseline => {
            load_parts::<BaselineState>(resume_dir, &expected, settings.workers)?
        }
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
    expected: &super::Expected<'_>,
    workers: usize,
) -> anyhow::Result<(Box<dyn Any + Send>, std::path::PathBuf, CheckpointMeta)> {
    let loaded = load::<S>(dir, expected, workers)?;
    let parts: Vec<Option<WorkerPart<S>>> = loaded.parts.into_iter().map(Some).collect();
    Ok((Box::new(parts), loaded.path, loaded.meta))
}
