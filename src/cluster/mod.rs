//! Scale-out over several processes with timely's cluster mode.
//!
//! `veer run --processes N --process I --hostfile FILE` starts process `I` of `N`, each with
//! `--workers` threads, so the cluster has `N × workers` workers numbered across processes.
//! The dataflow is the one of a single process: users are routed to workers by a stable hash
//! of their id, and data that crosses processes is serialized by timely (bincode over serde).
//! Only worker 0 of process 0 reads the input and writes the alerts and the dead-letter
//! file, in the same canonical order as a single process, so the alert file does not depend
//! on the layout. The other processes open no input and no output file.
//!
//! At the end of a run each worker's counts travel through a small dataflow to worker 0
//! ([`totals::sum_on_first_worker`]), so process 0's summary covers the whole cluster. Every
//! other process prints a short summary of its own part.

use std::path::{Path, PathBuf};
use std::time::Duration;

use timely::communication::allocator::zero_copy::initialize::{
    initialize_networking_from_sockets, CommsGuard,
};
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, WorkerGuards};

use crate::pipeline::{AlertOutput, EventSource, RunSettings};
use crate::replay::ModelRunSettings;

mod connect;
mod hostfile;
pub mod peer_loss;
pub mod totals;

pub use hostfile::{parse_hostfile, read_hostfile};
pub use totals::{sum_on_first_worker, WorkerCounts};

/// Default time to wait for every process of the cluster to connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// This process's place in a cluster of several processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Number of processes, at least 2.
    pub processes: usize,
    /// Index of this process, below `processes`.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
    /// Time after which a process that has not connected is an error.
    pub connect_timeout: Duration,
}

/// A cluster that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `--processes 0`.
    #[error("invalid --processes 0: a run needs at least one process")]
    NoProcesses,

    /// `--process` outside `0..processes`.
    #[error(
        "invalid --process {process}: with --processes {processes} the processes are numbered \
         0 to {}",
        processes - 1
    )]
    ProcessOutOfRange {
        /// The index given.
        process: usize,
        /// The number of processes.
        processes: usize,
    },

    /// Several processes but no hostfile.
    #[error(
        "--processes {processes} needs --hostfile FILE (or hostfile in [cluster]) with one \
         host:port line per process"
    )]
    MissingHostfile {
        /// The number of processes.
        processes: usize,
    },

    /// The hostfile cannot be read.
    #[error("cannot read hostfile {}: {error}", path.display())]
    HostfileUnreadable {
        /// The hostfile's path.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// The hostfile has an invalid line or too few addresses.
    #[error("invalid hostfile {}: {message}", path.display())]
    InvalidHostfile {
        /// The hostfile's path.
        path: PathBuf,
        /// The problem, with its line number.
        message: String,
    },

    /// This process cannot listen on its own address.
    #[error(
        "process {process} cannot listen on {address}, its line in the hostfile: {error}; \
         check --process and that no other process uses that port"
    )]
    Listen {
        /// The address of this process in the hostfile.
        address: String,
        /// This process's index.
        process: usize,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// A process did not connect in time.
    #[error(
        "timed out after {timeout:?} waiting to {waiting} process {peer} at {address}; start \
         every process of the cluster with the same hostfile, or raise --connect-timeout"
    )]
    Timeout {
        /// Index of the process that did not connect.
        peer: usize,
        /// Its hostfile address.
        address: String,
        /// The timeout in force.
        timeout: Duration,
        /// `connect to` or `be reached by`.
        waiting: &'static str,
    },

    /// A connected process runs with other settings.
    #[error("process {peer} at {address} does not match this process: {reason}")]
    Mismatch {
        /// The other process's index.
        peer: usize,
        /// Its address.
        address: String,
        /// The setting that differs.
        reason: String,
    },

    /// The address of a process accepts connections, but not as a veer process.
    #[error(
        "{address} accepted the connection, but sent no veer cluster hello; check the hostfile"
    )]
    NotAPeer {
        /// The hostfile address.
        address: String,
    },

    /// A process connected that should not connect to this one.
    #[error(
        "a process at {address} connected as process {peer}, but only processes above \
         {process} connect to process {process}; give every process the same hostfile and its \
         own --process"
    )]
    UnexpectedPeer {
        /// The index it claimed.
        peer: usize,
        /// Its address as seen by this process.
        address: String,
        /// This process's index.
        process: usize,
    },

    /// Two processes claim the same index.
    #[error(
        "a second process at {address} connected as process {peer}; give each process its own \
         --process"
    )]
    DuplicateProcess {
        /// The index claimed twice.
        peer: usize,
        /// The second process's address as seen by this process.
        address: String,
    },

    /// A socket operation failed.
    #[error("cluster socket error: {0}")]
    Socket(std::io::Error),
}

impl ClusterSettings {
    /// Checks the cluster options and reads the hostfile; returns `None` for one process.
    pub fn from_options(
        processes: usize,
        process: usize,
        hostfile: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<Option<ClusterSettings>, ClusterError> {
        if processes == 0 {
            return Err(ClusterError::NoProcesses);
        }
        if process >= processes {
            return Err(ClusterError::ProcessOutOfRange { process, processes });
        }
        if processes == 1 {
            return Ok(None);
        }
        let hostfile = hostfile.ok_or(ClusterError::MissingHostfile { processes })?;
        let addresses = read_hostfile(hostfile, processes)?;
        Ok(Some(ClusterSettings {
            processes,
            process,
            addresses,
            connect_timeout,
        }))
    }

    /// Returns whether this is process 0, which reads the input and writes the outputs.
    pub fn is_first(&self) -> bool {
        self.process == 0
    }
}

/// Returns whether a process with these settings reads the input and writes the outputs.
pub fn reads_input(cluster: Option<&ClusterSettings>) -> bool {
    cluster.is_none_or(ClusterSettings::is_first)
}

/// Returns the settings with which this process runs its part of the job. Process 0 keeps
/// them unchanged. Every other process drops the input, the alert output and the dead-letter
/// file, so that processes started with one command line neither read the input twice nor
/// truncate the files of process 0.
pub fn local_part(mut settings: RunSettings) -> RunSettings {
    if reads_input(settings.cluster.as_ref()) {
        return settings;
    }
    if let EventSource::Inputs { paths, .. } = &settings.source {
        tracing::info!(
            inputs = paths.len(),
            "process 0 reads the input; this process ignores --input"
        );
    }
    settings.source = EventSource::Memory(Vec::new());
    settings.alerts = AlertOutput::Discard;
    // Only process 0 releases alerts, so the other processes run no sinks.
    settings.sinks.subscribers.listen = None;
    settings.sinks.webhook.urls.clear();
    settings.dead_letter = None;
    settings
}

/// Starts `workers` worker threads running `func`: in this process alone, or as one process
/// of a cluster once every other process has connected.
///
/// `fingerprint` summarises the settings that every process must share; a process whose
/// fingerprint differs is rejected when it connects.
pub fn execute<T, F>(
    workers: usize,
    cluster: Option<&ClusterSettings>,
    fingerprint: u64,
    func: F,
) -> anyhow::Result<WorkerGuards<T>>
where
    T: Send + 'static,
    F: Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
{
    let Some(cluster) = cluster else {
        return timely::execute(timely::Config::process(workers), func)
            .map_err(|error| anyhow::anyhow!("failed to start the timely workers: {error}"));
    };
    let sockets = connect::connect_peers(cluster, workers, fingerprint)?;
    peer_loss::install_hook();
    let hooks = Hooks::default();
    let process_allocators =
        ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(
        process_allocators,
        sockets,
        cluster.process,
        workers,
        hooks,
    )
    .map_err(|error| anyhow::anyhow!("failed to start the cluster's network threads: {error}"))?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    timely::execute::execute_from(
        builders,
        Box::new(NetworkThreads(Some(guard))),
        timely::WorkerConfig::default(),
        func,
    )
    .map_err(|error| anyhow::anyhow!("failed to start the timely workers: {error}"))
}

/// The join guard of timely's network threads, which joins them only when no connection
/// failed. After a failure, the threads of the other connections can still wait for a
/// process that is alive, and joining a panicked thread panics, so they are left to end with
/// the process.
struct NetworkThreads(Option<CommsGuard>);

impl Drop for NetworkThreads {
    fn drop(&mut self) {
        let Some(guard) = self.0.take() else {
            return;
        };
        if peer_loss::lost_peer().is_some() {
            std::mem::forget(guard);
            return;
        }
        // A connection that fails while the threads are joined is recorded by the hook.
        let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
        if joined.is_err() {
            let loss = peer_loss::lost_peer();
            tracing::warn!(
                peer = loss.map(|loss| loss.peer),
                cause = loss.map(|loss| loss.cause.as_str()),
                "a cluster network thread failed after the workers had finished"
            );
        }
    }
}

/// Renders the summary of a process other than process 0: its own part of the run.
pub fn part_summary_text(summary: &crate::pipeline::RunSummary) -> String {
    let mut text = format!(
        "process {} of {}: its own part (process 0 reports the totals)\n",
        summary.process, summary.processes
    );
    text.push_str(&format!("  user states     {:>12}\n", summary.users));
    text.push_str(&format!(
        "  duplicates      {:>12}  (dropped)\n",
        summary.duplicates
    ));
    text.push_str(&format!("  workers         {:>12}\n", summary.workers));
    text.push_str(&format!(
        "wall time         {:>11.3}s\n",
        summary.wall.as_secs_f64()
    ));
    text
}

/// Renders the summary of a run that a lost connection cut short, with what is known
/// without the workers' counts. The error that follows the summary gives the reason.
pub fn cut_short_summary_text(summary: &crate::pipeline::RunSummary) -> String {
    let mut text = format!(
        "process {} of {}: cut short, no totals (a connection to another process failed)\n",
        summary.process, summary.processes
    );
    text.push_str(&format!(
        "wall time         {:>11.3}s\n",
        summary.wall.as_secs_f64()
    ));
    text.push_str(&summary.sinks.to_text());
    text
}

/// Returns a fingerprint of the settings that decide alerts or the shape of the dataflow on
/// every worker. These are the detector and its settings, group learning, the window, the
/// eviction time, whether profiles are built (`--profiles` or `--users`), and the model path's
/// settings (`models`, `None` without `--models`).
///
/// The hash is FNV-1a over their text form, so it is the same in every process of one build.
/// Processes whose dataflows differ would wait for each other for ever, and a process with
/// other detector or eviction settings would raise other alerts for its share of the users.
pub fn settings_fingerprint(settings: &RunSettings, models: Option<&ModelRunSettings>) -> u64 {
    let profiles_on = settings.profiles.is_some() || settings.users.is_some();
    let models = models.map(crate::checkpoint::prepare::models_fingerprint);
    let text = format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{profiles_on}|{models:?}",
        env!("CARGO_PKG_VERSION"),
        settings.detector,
        settings.detector_config,
        settings.groups,
        settings.window,
        settings.state.evict_idle_ms(),
    );
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let timeout = DEFAULT_CONNECT_TIMEOUT;
        assert!(matches!(
            ClusterSettings::from_options(0, 0, None, timeout),
            Err(ClusterError::NoProcesses)
        ));
        let error = ClusterSettings::from_options(2, 2, None, timeout).unwrap_err();
        assert!(error.to_string().contains("numbered 0 to 1"), "{error}");
        assert!(matches!(
            ClusterSettings::from_options(2, 1, None, timeout),
            Err(ClusterError::MissingHostfile { processes: 2 })
        ));
        assert_eq!(
            ClusterSettings::from_options(1, 0, None, timeout).unwrap(),
            None
        );
    }
}
