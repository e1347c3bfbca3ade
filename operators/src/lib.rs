//! Timely dataflow operators of veer.
//!
//! The graph that `veer run` builds, per worker:
//!
//! ```text
//! input (worker 0 reads) -> order_by_event_time (exchange by user; sort, dedupe)
//!     -> session_cooccurrence -> population_groups (worker 0) -> broadcast --+
//!     -> detect_shifts <-------------------------------------------------------+
//!     -> write_alerts (worker 0, canonical order)
//! ```
//!
//! Timely time is event time in Unix milliseconds. The input frontier is the watermark: an
//! operator acts on a record only once the frontier has passed the record's event time, and
//! then in a fixed order, so results never depend on arrival order or on the number of
//! workers. Every buffering operator holds one capability at or below its earliest buffered
//! record ([`capability::HeldCapability`]).

pub mod capability;
pub mod detect;
pub mod order;
pub mod population;
pub mod profiles;
pub mod release;
pub mod sink;
pub mod state;

pub use detect::{detect_shifts, DetectSettings, DetectStats};
pub use order::order_by_event_time;
pub use population::{population_groups, session_cooccurrence, window_end};
pub use sink::{write_alerts, AlertCounter, AlertSink, AlertTally, JsonLines};
pub use state::{DetectHandle, DetectState, TrackedUser, WorkerState};
