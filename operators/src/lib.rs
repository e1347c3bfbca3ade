//! Timely dataflow operators of veer.
//!
//! The graph that `veer run` builds, per worker:
//!
//! ```text
//! input (worker 0 reads) -> order_and_count_sessions (exchange by user; sort, dedupe, count)
//!     -> window counts -> population_groups (last worker) -> broadcast ---+
//!     -> ordered events -> detect_shifts <--------------------------------+
//!     -> write_alerts (worker 0, canonical order)
//! ```
//!
//! `order_and_count_sessions` is `order_by_event_time` and `session_cooccurrence` in one
//! operator, so the ordered events are not copied for the counter.
//!
//! With the model path (`veer run --models`), `detect_shifts_observed` takes the place of
//! `detect_shifts`, and the alerts pass through three more operators before the sink:
//! `build_user_windows` cuts each user's events into windows, `fit_models` fits the models on
//! the bootstrap windows of every worker once (on worker 0, off the worker thread) and
//! broadcasts them, and `score_windows` fuses each later window's alerts with its model
//! signals.
//!
//! Timely time is event time in Unix milliseconds. The input frontier is the watermark: an
//! operator acts on a record only once the frontier has passed the record's event time, and
//! then in a fixed order, so results never depend on arrival order or on the number of
//! workers. Every buffering operator holds one capability at or below its earliest buffered
//! record ([`capability::HeldCapability`]).

pub mod capability;
pub mod detect;
pub mod fit;
pub mod model_state;
pub mod order;
pub mod population;
pub mod profiles;
pub mod release;
pub mod route;
pub mod score;
pub mod segments;
pub mod sink;
pub mod state;
pub mod user_map;
pub mod versions;
pub mod windows;

pub use detect::{
    detect_shifts, detect_shifts_observed, keep_last_alerts, DetectSettings, DetectStats,
    Observation,
};
pub use fit::{fit_models, FitSettings, FittedVersion, ModelUpdate};
pub use order::{order_and_count_sessions, order_by_event_time};
pub use population::{
    population_groups, population_groups_on_thread, session_cooccurrence, window_end,
};
pub use score::score_windows;
pub use sink::{write_alerts, AlertCounter, AlertSink, AlertTally, JsonLines};
pub use state::{DetectHandle, DetectState, TrackedUser, WorkerState};
pub use user_map::UserMap;
pub use windows::{build_user_windows, WindowRecord};
