//! Pure model code of veer: event types, per-user profiles and change detectors.
//!
//! Nothing here depends on dataflow. The `veer-operators` crate drives these types from timely
//! operators, one user at a time, in event-time order.

pub mod event;

pub use event::{Behavior, Event, Id, IdValue};
pub mod alert;
pub mod attributes;
pub mod baseline;
pub mod behavior;
mod category_graph;
mod decayed_weights;
pub mod detector;
pub mod fusion;
pub mod groups;
mod id_map;
pub mod ml;
pub mod profile;
mod recent_events;
pub mod session;
mod sorted_map;

pub use alert::{Alert, AlertKind, CategoryShare};
pub use detector::{
    BehaviorProfile, Detector, DetectorConfig, ShiftDetector, StepTrace, UserState,
};
pub use groups::{
    DeltaSizes, GroupConfig, GroupKey, GroupMap, PopulationDelta, PopulationInfo, PopulationModel,
};
