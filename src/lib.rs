//! veer: real-time detection of abrupt shifts in e-commerce users' interests.
//!
//! The library facade behind the `veer` binary: input readers ([`sources`]), the replay and
//! late-data policy ([`ingest`]), the dataflow wiring ([`pipeline`]), the labelled-stream
//! generator ([`generate`]) and the scorer ([`eval`]). Operators live in `veer-operators` and
//! the pure detectors in `veer-models`.

mod buffered;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod embed;
pub mod eval;
pub mod explain;
mod feed_share;
pub mod frontier;
pub mod generate;
pub mod http;
pub mod ingest;
mod json_diff;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod model_file;
pub mod output_file;
mod model_path;
pub mod pipeline;
pub mod plot;
pub mod profile_file;
pub mod progress;
pub mod query;
mod rate_limit;
pub mod replay;
pub mod report;
pub mod scan;
pub mod shutdown;
pub mod sinks;
mod socket_option;
pub mod sources;
mod split_read;
pub mod stats;
pub mod truth;
pub mod users;
