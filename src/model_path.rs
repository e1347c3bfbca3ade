//! Wiring of the model path of `veer run --models` into the dataflow.
//!
//! ```text
//! detect_shifts_observed -> build_user_windows -> score_windows -> alerts
//!                                  |                    ^
//!                                  +-> fit_models ------+ (worker 0, broadcast)
//! ```

use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, StreamVec};
use veer_models::fusion::FusionRule;
use veer_models::{Alert, Detector, Event, PopulationInfo};
use veer_operators::fit::{fit_models, FitSettings};
use veer_operators::model_state::ModelState;
use veer_operators::profiles::{AttributeRow, ProfileView};
use veer_operators::score::score_windows;
use veer_operators::segments::{split_scored, SegmentUpdate};
use veer_operators::windows::build_user_windows;
use veer_operators::{
    detect_shifts_observed, keep_last_alerts, DetectHandle, DetectSettings, DetectStats,
};

use crate::replay::ModelRunSettings;

/// Runs the detector and fuses its alerts with the models' signals per user window. Returns
/// the fused alerts and the updates of each user's segment, which also go to the segment
/// store of `model_state`. With `emit_segment_updates` false the updates only go to the
/// store, and the returned stream is empty.
///
/// `probe` follows the detector, not the fused alerts, so the feeder does not wait while
/// windows after the bootstrap period are held for the model fit. The operators keep their
/// state in `model_state`, which may come from a checkpoint.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_alerts<'scope, D: Detector>(
    events: StreamVec<'scope, u64, Event>,
    population: StreamVec<'scope, u64, PopulationInfo>,
    attributes: StreamVec<'scope, u64, (AttributeRow, u64, isize)>,
    detector: D,
    detect_settings: DetectSettings,
    state: DetectHandle<D::State>,
    stats: std::rc::Rc<std::cell::RefCell<DetectStats>>,
    models: &ModelRunSettings,
    probe: &ProbeHandle<u64>,
    model_state: &ModelState,
    emit_segment_updates: bool,
) -> (
    StreamVec<'scope, u64, Alert>,
    StreamVec<'scope, u64, SegmentUpdate>,
)
where
    D::State: ProfileView,
{
    let observed = detect_shifts_observed(
        events,
        population.clone(),
        detector,
        detect_settings,
        state.clone(),
        stats,
    )
    .probe_with(probe);
    let windows = build_user_windows(
        observed,
        population,
        attributes,
        detect_settings.window_ms,
        models.window_settings(),
        detect_settings.idle_ms,
        model_state.windows.clone(),
        model_state.traffic.clone(),
    );
    let updates = fit_models(
        windows.clone(),
        FitSettings {
            schedule: models.schedule_settings(detect_settings.window_ms),
            params: models.params.clone(),
            seed: models.seed,
            loaded: models
                .loaded
                .as_ref()
                .map(|file| Box::new(file.loaded_version())),
            sink: models.sink.clone(),
        },
        model_state.fit.clone(),
        model_state.traffic.clone(),
    );
    let rule =
        FusionRule::new(models.fusion.clone()).expect("fusion settings validated before the run");
    let scored = score_windows(
        windows,
        updates,
        rule,
        model_state.score.clone(),
        model_state.windows.clone(),
        model_state.traffic.clone(),
    );
    let (alerts, segment_updates) =
        split_scored(scored, model_state.segments.clone(), emit_segment_updates);
    (keep_last_alerts(alerts, state), segment_updates)
}
