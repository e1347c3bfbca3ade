//! Wiring of `veer run`: the reader thread, the timely workers and the run summary.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleVec as InputHandle, ProbeHandle};
use veer_models::baseline::BaselineDetector;
use veer_models::profile::ProfileSource;
use veer_models::session::SessionRule;
use veer_models::{AlertKind, Detector, DetectorConfig, Event, GroupConfig, ShiftDetector};
use veer_operators::model_state::{ModelState, ModelTraffic};
use veer_operators::profiles::{ProfileSettings, ProfileStore, ProfileView};
use veer_operators::segments::SegmentStore;
use veer_operators::{
    detect_shifts, order_and_count_sessions, population_groups, population_groups_on_thread,
    write_alerts, AlertCounter, AlertSink, DetectSettings, DetectStats, WorkerState,
};

use crate::buffered::BufferedBatch;
use crate::config::{DetectorChoice, ReplayOrder};
use crate::http::HttpServer;
use crate::ingest::{self, Chunk, DeadLetter, LineCounts, Watermark};
use crate::live::WorkerHooks;
use crate::metrics::{LatencySummary, Metrics};
use crate::query::QueryRouter;
use crate::sources::SourceOptions;
use crate::users::{AttributeFeed, AttributeInput};

/// Destination of the alerts.
#[derive(Clone, Debug)]
pub enum AlertOutput {
    /// Standard output.
    Stdout,
    /// A file, created or truncated (appended to with `sinks.append`).
    File(std::path::PathBuf),
    /// Nowhere: alerts are only counted.
    Discard,
}

/// Source of the events.
pub enum EventSource {
    /// Input paths (`-` for standard input), read on a reader thread.
    Inputs {
        /// Input paths in reading order.
        paths: Vec<String>,
        /// Format and RetailRocket join options.
        options: SourceOptions,
    },
    /// Events already in memory, such as a generated stream, sorted by time.
    Memory(Vec<Event>),
    /// A bound TCP source (`veer serve`), read until a shutdown is requested.
    Listen(crate::listen::ListenSource),
}

/// Maximum worker count of one process. Memory grows with the square of the count, because
/// timely 0.32 keeps channels for every pair of workers. Measured on a 2-core machine with a
/// 400-event file: 512 workers took 15 s and 1.6 GB, and 100,000 ran out of 24 GB.
pub const MAX_WORKERS: usize = 1024;

/// Everything a run needs.
pub struct RunSettings {
    /// Source of the events.
    pub source: EventSource,
    /// Destination of the alerts.
    pub alerts: AlertOutput,
    /// Further alert sinks, the alert file's append mode and the sink queues.
    pub sinks: crate::sinks::SinkConfig,
    /// File for bad and late lines; `None` only counts them.
    pub dead_letter: Option<std::path::PathBuf>,
    /// Worker threads, from 1 to [`MAX_WORKERS`].
    pub workers: usize,
    /// Replay order of file inputs.
    pub order: ReplayOrder,
    /// How far behind the newest event an event may arrive and still be on time.
    pub out_of_orderness: Duration,
    /// Lead over the newest event beyond which one event alone does not move the watermark.
    pub max_future_skew: Duration,
    /// Length of the population windows.
    pub window: Duration,
    /// Detector that raises `interest_shift` alerts.
    pub detector: DetectorChoice,
    /// Settings of the shift detector.
    pub detector_config: DetectorConfig,
    /// Settings of group learning and trends.
    pub groups: GroupConfig,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Keep the alerts, and each event's user and time, in the summary, for scoring.
    pub keep_alerts: bool,
    /// Metrics the run updates as it goes.
    pub metrics: Arc<Metrics>,
    /// Eviction of idle users, checkpoints and resume.
    pub state: crate::checkpoint::StateSettings,
    /// This process's place in a cluster of processes; `None` runs in this process alone.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// Address of the operations HTTP server (`/metrics`, `/users/{id}`, `/healthz`); `None`
    /// runs without it.
    pub http: Option<String>,
    /// User attribute table to join into the profiles (`--users`), watched during the run.
    pub users: Option<crate::users::UsersInput>,
    /// File for profile lines (`--profiles`).
    pub profiles: Option<std::path::PathBuf>,
    /// When a profile counts as changed.
    pub profile_settings: ProfileSettings,
}

/// Counts and results of a run, for the end-of-run summary.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Outcome counts of every input line.
    pub counts: LineCounts,
    /// Exact duplicates dropped.
    pub duplicates: u64,
    /// User states created: the distinct users fed to the detectors, plus one for each return
    /// of an evicted user.
    pub users: u64,
    /// Users removed for inactivity.
    pub users_evicted: u64,
    /// Users tracked at the end of the run.
    pub users_tracked: u64,
    /// With `--models`, the users whose model path state is kept at the end of the run.
    pub model_users: Option<ModelUsers>,
    /// Alerts written, by kind.
    pub alerts: BTreeMap<AlertKind, u64>,
    /// Whether the input was replayed sorted by event time rather than in arrival order.
    pub replayed_sorted: bool,
    /// Wall-clock time of the run.
    pub wall: Duration,
    /// Worker threads used in this process.
    pub workers: usize,
    /// Processes of the cluster (1 without cluster mode) and this process's index. The
    /// counts are the whole cluster's on process 0 and this process's own part elsewhere.
    pub processes: usize,
    pub process: usize,
    /// The alerts in output order, when `keep_alerts` was set.
    pub kept_alerts: Vec<veer_models::Alert>,
    /// The user and time (Unix seconds) of every event sent on, when `keep_alerts` was set.
    pub timeline: Vec<(veer_models::Id, i64)>,
    /// Event-to-alert latency percentiles (see [`Metrics::record_latency`]).
    pub latency: LatencySummary,
    /// Delivery counts of each alert sink.
    pub sinks: crate::sinks::SinkReport,
    /// The checkpoint the run resumed from.
    pub resumed: Option<crate::checkpoint::ResumeInfo>,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoints that failed: not written, or written but not synced to disk.
    pub checkpoint_failures: u64,
    /// The dead-letter file's write failure, if it could not be written.
    pub dead_letter_failure: Option<crate::ingest::DeadLetterFailure>,
    /// The profile file's write failure, if it could not be written.
    pub profile_failure: Option<crate::profile_file::ProfileFileFailure>,
    /// Error of a cluster run that stopped before its end because a connection to another
    /// process failed. The counts are then missing, and the outputs hold what was written
    /// before the failure.
    pub cut_short: Option<String>,
}

/// Users whose model path state is kept at the end of a run. With `--evict-after`, both are
/// at most the users tracked at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelUsers {
    /// Users whose window history is kept.
    pub window_histories: u64,
    /// Users whose fusion rule state differs from a new user's.
    pub fusion_states: u64,
}

impl RunSummary {
    /// Returns events processed after duplicates were dropped.
    pub fn unique_events(&self) -> u64 {
        self.counts.events - self.duplicates
    }

    /// Returns whether the line counts add up: lines = events + duplicates + late + bad + skipped.
    pub fn accounts_for_every_line(&self) -> bool {
        let counts = &self.counts;
        counts.lines == counts.events + counts.late + counts.bad + counts.skipped
    }

    /// Renders the end-of-run summary as aligned text.
    pub fn to_text(&self) -> String {
        if self.cut_short.is_some() {
            return crate::cluster::cut_short_summary_text(self);
        }
        if self.process > 0 {
            return crate::cluster::part_summary_text(self);
        }
        let counts = &self.counts;
        let seconds = self.wall.as_secs_f64();
        let alert = |kind| self.alerts.get(&kind).copied().unwrap_or(0);
        let order = if self.replayed_sorted {
            "sorted by event time"
        } else {
            "arrival order"
        };
        let mut text = String::new();
        text.push_str(&format!("lines read        {:>12}\n", counts.lines));
        text.push_str(&format!("  events          {:>12}\n", self.unique_events()));
        text.push_str(&format!(
            "  duplicates      {:>12}  (dropped)\n",
            self.duplicates
        ));
        text.push_str(&format!("  late            {:>12}\n", counts.late));
        text.push_str(&format!("  bad             {:>12}\n", counts.bad));
        text.push_str(&format!(
            "  skipped         {:>12}  (blank or header lines)\n",
            counts.skipped
        ));
        text.push_str(&format!(
            "out of order      {:>12}  (older than an earlier line; replay: {order})\n",
            counts.out_of_order
        ));
        for damage in &counts.damaged {
            text.push_str(&format!(
                "damaged input     {}: read stopped after line {} (uncompressed byte {}): {}\n",
                damage.input, damage.lines, damage.bytes, damage.error
            ));
        }
        text.push_str(&format!(
            "user states       {:>12}  (one per user, one more after each return from eviction)\n",
            self.users
        ));
        text.push_str(&format!(
            "  evicted         {:>12}  (idle longer than the eviction time)\n",
            self.users_evicted
        ));
        text.push_str(&format!("  tracked at end  {:>12}\n", self.users_tracked));
        if let Some(model_users) = &self.model_users {
            text.push_str(&format!(
                "  window history  {:>12}  (at end, --models)\n",
                model_users.window_histories
            ));
            text.push_str(&format!(
                "  fusion state    {:>12}  (at end, --models)\n",
                model_users.fusion_states
            ));
        }
        text.push_str(&format!(
            "alerts            {:>12}\n",
            alert(AlertKind::InterestShift) + alert(AlertKind::Anomaly)
        ));
        text.push_str(&format!(
            "  interest_shift  {:>12}\n",
            alert(AlertKind::InterestShift)
        ));
        text.push_str(&format!(
            "  anomaly         {:>12}\n",
            alert(AlertKind::Anomaly)
        ));
        text.push_str(&self.latency_text());
        if let Some(resumed) = &self.resumed {
            text.push_str(&format!(
                "resumed from      {} (checkpoint {}, cut at {} ms, {} alerts before it)\n",
                resumed.path.display(),
                resumed.sequence,
                resumed.cut_ms,
                resumed.alerts_before_cut
            ));
        }
        if self.checkpoints > 0 || self.checkpoint_failures > 0 {
            text.push_str(&format!("checkpoints       {:>12}\n", self.checkpoints));
        }
        if self.checkpoint_failures > 0 {
            text.push_str(&format!(
                "  failed          {:>12}  (the log names the file and the error)\n",
                self.checkpoint_failures
            ));
        }
        if self.processes > 1 {
            text.push_str(&format!(
                "workers           {:>12}  ({} processes x {})\n",
                self.workers * self.processes,
                self.processes,
                self.workers
            ));
        } else {
            text.push_str(&format!("workers           {:>12}\n", self.workers));
        }
        text.push_str(&format!("wall time         {:>11.3}s\n", seconds));
        // Lines and unique events both, because a stream of duplicates (a client that
        // resends) is read fast but adds few events.
        text.push_str(&format!(
            "lines per second  {:>12}\n",
            format_rate(counts.lines, seconds)
        ));
        text.push_str(&format!(
            "events per second {:>12}  (unique events)\n",
            format_rate(self.unique_events(), seconds)
        ));
        text.push_str(&self.sinks.to_text());
        text
    }
}

/// Formats `count` per second of `seconds`, with two decimals below 10 so that a slow live
/// stream does not read as 0.
fn format_rate(count: u64, seconds: f64) -> String {
    let rate = if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    };
    if rate < 10.0 {
        format!("{rate:.2}")
    } else {
        format!("{rate:.0}")
    }
}

impl RunSummary {
    fn latency_text(&self) -> String {
        let latency = &self.latency;
        if latency.count == 0 {
            return "latency           (no alert measured)\n".to_string();
        }
        let millis = |micros: u64| micros as f64 / 1000.0;
        format!(
            "latency           p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({}, event read to alert handed to the sinks)\n",
            millis(latency.p50),
            millis(latency.p99),
            millis(latency.p999),
            millis(latency.max),
            crate::explain::plural(latency.count as usize, "alert")
        )
    }
}

/// Per-worker results returned when the worker finishes.
#[derive(Default)]
struct WorkerResult {
    duplicates: u64,
    evicted: u64,
    tracked: u64,
    model_users: ModelUsers,
    stats: DetectStats,
    alerts: BTreeMap<AlertKind, u64>,
    kept_alerts: Vec<veer_models::Alert>,
    ingest: Option<(LineCounts, bool)>,
    /// The counts of every worker of the cluster, on worker 0 only.
    cluster_total: Option<crate::cluster::WorkerCounts>,
    error: Option<String>,
}

/// Runs the main job and returns its summary.
pub fn run(settings: RunSettings) -> anyhow::Result<RunSummary> {
    run_job(settings, None)
}

/// Runs the main job with the model path: models fitted on the bootstrap windows score every
/// later user window, and their signals are fused with the detector's alerts (see
/// `model_path.rs`). The alerts equal those of [`crate::replay::replay_with_models`] for any
/// number of workers.
pub fn run_with_models(
    mut settings: RunSettings,
    models: crate::replay::ModelRunSettings,
) -> anyhow::Result<RunSummary> {
    // The fusion rule confirms the detector's candidates, so the detector raises them.
    settings.detector_config = models.fusion.detector_config(&settings.detector_config);
    run_job(settings, Some(models))
}

fn run_job(
    settings: RunSettings,
    models: Option<crate::replay::ModelRunSettings>,
) -> anyhow::Result<RunSummary> {
    settings.detector_config.validate()?;
    if settings.window < Duration::from_secs(60) {
        anyhow::bail!(
            "invalid window {}s (--window or [time] window): population windows must be at least 1m, because groups are rebuilt after each one",
            settings.window.as_secs_f64()
        );
    }
    if settings.workers == 0 {
        anyhow::bail!("invalid --workers 0: at least one worker thread is needed");
    }
    if settings.workers > MAX_WORKERS {
        anyhow::bail!(
            "invalid --workers {}: at most {MAX_WORKERS} worker threads per process, because \
             memory grows with the square of the count; use --processes to scale further",
            settings.workers
        );
    }
    let started = Instant::now();
    if let Some(models) = &models {
        veer_models::fusion::FusionRule::new(models.fusion.clone())?;
        models.validate()?;
    }
    let prepared = crate::checkpoint::prepare::prepare(&settings, models.as_ref())?;
    let with_models = models.is_some();
    let fingerprint = crate::cluster::settings_fingerprint(&settings, models.as_ref());
    let settings = crate::cluster::local_part(settings);
    let dead_letter = DeadLetter::create(settings.dead_letter.as_deref())?;
    let (dispatcher, sink_threads) =
        crate::sinks::start(&settings.alerts, &settings.sinks, &settings.metrics)?;

    // Timely numbers workers process by process, so this process's first is process * workers.
    let (processes, process) = settings
        .cluster
        .as_ref()
        .map_or((1, 0), |cluster| (cluster.processes, cluster.process));
    let router = QueryRouter::new(
        processes * settings.workers,
        process * settings.workers,
        settings.workers,
    );
    let http = match &settings.http {
        Some(address) => Some(HttpServer::start(
            address,
            settings.metrics.clone(),
            router.clone(),
        )?),
        None => None,
    };
    let attributes = match &settings.users {
        Some(users) => {
            let table = crate::users::load(&users.path)?;
            let watch =
                crate::users::AttributeWatch::spawn(users.path.clone(), users.poll_interval)?;
            Some(AttributeFeed::new(table, Some(watch)))
        }
        None if settings.profiles.is_some() => Some(AttributeFeed::new(Default::default(), None)),
        None => None,
    };
    let profile_file = match &settings.profiles {
        Some(path) => Some(crate::profile_file::ProfileFile::create(path)?),
        None => None,
    };
    let profile_status = profile_file.as_ref().map(|file| file.status());
    let profile_writer = profile_file.map(|file| Box::new(file) as Box<dyn Write + Send>);

    let bytes_read = Arc::new(AtomicU64::new(0));
    let input_names = match &settings.source {
        EventSource::Inputs { paths, .. } => paths
            .iter()
            .map(|path| ingest::input_name(path).to_string())
            .collect(),
        EventSource::Memory(_) => vec!["<generated>".to_string()],
        EventSource::Listen(_) => vec!["<tcp>".to_string()],
    };
    let input_bytes = match &settings.source {
        EventSource::Inputs { paths, .. } => crate::progress::Progress::plain_size(paths),
        EventSource::Memory(_) | EventSource::Listen(_) => None,
    };
    // Every worker sends a share of a fully read input, unless checkpoints need worker 0 to
    // choose every cut or other processes take part.
    let share_feed = settings.cluster.is_none() && prepared.plan.is_none();
    // An arrival-order replay streams the input, so only a fully read input is split.
    let parse_threads = match settings.order {
        ReplayOrder::Arrival => 1,
        _ => settings.workers,
    };
    let feed = match settings.source {
        EventSource::Inputs { paths, options } => {
            let pool = ingest::BatchPool::new();
            let receiver = ingest::spawn_split_reader(
                paths,
                options,
                dead_letter.clone(),
                bytes_read.clone(),
                settings.metrics.clone(),
                parse_threads,
                pool.clone(),
            );
            Feed::Reader(receiver, pool)
        }
        EventSource::Memory(events) => Feed::Memory(events),
        EventSource::Listen(source) => Feed::Listen(source),
    };
    let shared = Arc::new(Shared {
        feed: Mutex::new(Some(feed)),
        dispatcher: Mutex::new(Some(dispatcher)),
        // The alert sinks write whole lines and flush whenever their queue runs empty, so
        // live runs need no separate flush of the alert output.
        live_alerts: None,
        dead_letter,
        input_names,
        input_bytes,
        order: settings.order,
        out_of_orderness_ms: settings.out_of_orderness.as_millis() as i64,
        max_future_skew_ms: settings.max_future_skew.as_millis() as i64,
        window_ms: (settings.window.as_millis() as u64).max(1),
        session_rule: settings.detector_config.session_rule(),
        detector: settings.detector,
        detector_config: settings.detector_config,
        groups: settings.groups,
        progress: settings.progress,
        keep_alerts: settings.keep_alerts,
        models,
        bytes_read,
        metrics: settings.metrics.clone(),
        state: settings.state,
        router,
        board: Arc::new(crate::checkpoint::board::Board::new(settings.workers)),
        // Operators record their traffic under their worker index in the whole cluster, so
        // there is a slot for every worker. Those of other processes stay at zero, which only
        // checkpoints read, and checkpoints run in one process only.
        model_traffic: Arc::new(ModelTraffic::new(processes * settings.workers)),
        checkpoints: prepared.plan,
        restored: Mutex::new(prepared.restored),
        resume_position: prepared.position,
        profiles_on: attributes.is_some(),
        attributes: Mutex::new(attributes),
        profile_writer: Mutex::new(profile_writer),
        profile_store: ProfileStore::default(),
        profile_settings: settings.profile_settings.clone(),
        feed_board: share_feed.then(Default::default),
    });

    let worker_shared = shared.clone();
    let cluster = settings.cluster.as_ref();
    let guards = crate::cluster::execute(settings.workers, cluster, fingerprint, move |worker| {
        let shared = worker_shared.clone();
        match shared.detector {
            DetectorChoice::Shift => {
                let detector =
                    ShiftDetector::new(shared.detector_config.clone()).expect("validated above");
                run_worker(worker, &shared, detector)
            }
            DetectorChoice::Baseline => {
                let baseline = BaselineDetector {
                    session_rule: shared.session_rule,
                    ..BaselineDetector::default()
                };
                run_worker(worker, &shared, baseline)
            }
        }
    })?;

    let mut summary = RunSummary {
        workers: settings.workers,
        processes: cluster.map_or(1, |cluster| cluster.processes),
        process: cluster.map_or(0, |cluster| cluster.process),
        model_users: with_models.then(ModelUsers::default),
        ..Default::default()
    };
    let mut cluster_total = None;
    let results = guards.join();
    // A worker that panicked because a connection failed leaves every count incomplete, so
    // none is summed.
    summary.cut_short = cluster
        .filter(|_| results.iter().any(Result::is_err))
        .and_then(crate::cluster::peer_loss::error_text);
    for result in results.into_iter().filter(|_| summary.cut_short.is_none()) {
        let result = result.map_err(|error| anyhow::anyhow!("a worker failed: {error}"))?;
        if let Some(error) = result.error {
            anyhow::bail!(error);
        }
        summary.duplicates += result.duplicates;
        summary.users_evicted += result.evicted;
        summary.users_tracked += result.tracked;
        if let Some(model_users) = &mut summary.model_users {
            model_users.window_histories += result.model_users.window_histories;
            model_users.fusion_states += result.model_users.fusion_states;
        }
        summary.users += result.stats.users;
        for (kind, count) in result.alerts {
            *summary.alerts.entry(kind).or_default() += count;
        }
        summary.kept_alerts.extend(result.kept_alerts);
        cluster_total = cluster_total.or(result.cluster_total);
        if let Some((counts, sorted)) = result.ingest {
            summary.counts = counts;
            summary.replayed_sorted = sorted;
        }
    }
    if let Some(total) = cluster_total {
        summary.duplicates = total.duplicates;
        summary.users = total.users;
        summary.users_evicted = total.users_evicted;
        summary.users_tracked = total.users_tracked;
        if let Some(model_users) = &mut summary.model_users {
            model_users.window_histories = total.window_histories;
            model_users.fusion_states = total.fusion_states;
        }
        summary.alerts = total.alerts;
        summary.timeline = total.timeline;
    }
    if let Some(server) = &http {
        server.set_finished();
    }
    if summary.cut_short.is_some() {
        // Worker 0 may have failed before it took the dispatcher, whose queues keep the sink
        // threads waiting.
        drop(
            shared
                .dispatcher
                .lock()
                .map(|mut dispatcher| dispatcher.take()),
        );
    }
    shared.dead_letter.flush();
    summary.dead_letter_failure = shared.dead_letter.failure();
    summary.profile_failure = profile_status.and_then(|status| status.failure());
    summary.latency = shared.metrics.latency();
    summary.wall = started.elapsed();
    summary.sinks = sink_threads.finish();
    let draining = started.elapsed() - summary.wall;
    if draining > Duration::from_millis(100) {
        tracing::info!(
            ?draining,
            "the alert sinks drained their queues after the dataflow ended"
        );
    }
    summary.resumed = prepared.resumed;
    summary.checkpoints = shared.metrics.checkpoints_written();
    summary.checkpoint_failures = shared.metrics.checkpoint_failures();
    Ok(summary)
}

enum Feed {
    /// The reader thread's chunks, and the pool that takes the emptied batches of a streamed
    /// input back to the reader.
    Reader(crossbeam_channel::Receiver<Chunk>, ingest::BatchPool),
    Memory(Vec<Event>),
    Listen(crate::listen::ListenSource),
}

struct Shared {
    feed: Mutex<Option<Feed>>,
    /// Flush handle of the alert output of a live run.
    live_alerts: Option<crate::listen::WholeLineWriter>,
    /// The alert sinks' dispatcher, taken by worker 0 (or by the model path after the run).
    dispatcher: Mutex<Option<crate::sinks::Dispatcher>>,
    dead_letter: DeadLetter,
    /// Input names for late records, indexed like the reader's paths (`Chunk::Events`).
    input_names: Vec<String>,
    /// Total size of the inputs when all are plain files, for the progress display.
    input_bytes: Option<u64>,
    order: ReplayOrder,
    out_of_orderness_ms: i64,
    max_future_skew_ms: i64,
    window_ms: u64,
    session_rule: SessionRule,
    detector: DetectorChoice,
    detector_config: DetectorConfig,
    groups: GroupConfig,
    progress: bool,
    keep_alerts: bool,
    /// Settings of the model path, when it runs.
    models: Option<crate::replay::ModelRunSettings>,
    bytes_read: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    state: crate::checkpoint::StateSettings,
    router: Arc<QueryRouter>,
    /// Checkpoint requests and replies between the workers.
    board: Arc<crate::checkpoint::board::Board>,
    /// Counters a checkpoint reads to know that the model path has caught up with its cut.
    model_traffic: Arc<ModelTraffic>,
    /// Where and how checkpoints are written, when they are.
    checkpoints: Option<crate::checkpoint::CheckpointPlan>,
    /// Each worker's restored state (`Vec<Option<WorkerPart<S>>>`), on a resume.
    restored: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Position of the checkpoint's feeder, on a resume.
    resume_position: Option<crate::checkpoint::snapshot::FeedPosition>,
    /// Whether the dataflow builds profiles (`--users` or `--profiles`).
    profiles_on: bool,
    /// The attribute feed, taken by worker 0.
    attributes: Mutex<Option<AttributeFeed>>,
    /// The profile file, taken by worker 0.
    profile_writer: Mutex<Option<Box<dyn Write + Send>>>,
    /// Every user's latest profile, readable while the run goes on.
    profile_store: ProfileStore,
    profile_settings: ProfileSettings,
    /// Worker 0's choice of who feeds the input, which the other workers wait for; `None`
    /// when worker 0 always feeds alone.
    feed_board: Option<crate::feed_share::FeedBoard>,
}

/// The alert dispatcher, shared by the sink operator and worker 0's checkpoints, which flush
/// it before they record their position.
#[derive(Clone)]
struct SharedDispatcher(Rc<RefCell<crate::sinks::Dispatcher>>);

impl AlertSink for SharedDispatcher {
    fn send(&mut self, alert: &veer_models::Alert) {
        self.0.borrow_mut().send(alert);
    }

    fn close(&mut self) {
        self.0.borrow_mut().close();
    }
}

/// Takes worker `index`'s restored state out of `shared`, on a resume.
fn take_restored<S: 'static>(
    shared: &Shared,
    index: usize,
) -> Option<crate::checkpoint::snapshot::WorkerPart<S>> {
    let mut guard = shared
        .restored
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let parts = guard.as_mut()?;
    let parts = parts.downcast_mut::<Vec<Option<crate::checkpoint::snapshot::WorkerPart<S>>>>()?;
    parts.get_mut(index)?.take()
}

/// Adapts a `Send` writer for the sink, which lives on one worker thread.
struct WriterOnWorker(Box<dyn Write + Send>);

impl Write for WriterOnWorker {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.0.write(buffer)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn run_worker<D: Detector>(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    detector: D,
) -> WorkerResult
where
    D::State: ProfileSource + ProfileView,
{
    let index = worker.index();
    let mut restored = take_restored::<D::State>(shared, index);
    let restored_models = restored.as_mut().and_then(|part| part.models.take());
    let model_state = shared.models.as_ref().map(|_| match restored_models {
        Some(part) => part
            .into_state(shared.model_traffic.clone())
            .expect("checked when the checkpoint was read"),
        None => ModelState::new(shared.model_traffic.clone()),
    });
    let (state, restored_stats, restored_alerts) = match restored {
        Some(part) => crate::checkpoint::snapshot::into_state(part),
        None => (
            WorkerState::new(shared.session_rule, shared.groups.clone()),
            Default::default(),
            Default::default(),
        ),
    };
    let stats = Rc::new(RefCell::new(DetectStats {
        events: restored_stats.events,
        users: restored_stats.users,
        population_updates: restored_stats.population_updates,
        timeline: shared.keep_alerts.then(Vec::new),
    }));
    let alert_counts: AlertCounter = Default::default();
    alert_counts.borrow_mut().keep = shared.keep_alerts;
    alert_counts.borrow_mut().by_kind = restored_alerts;
    let alert_output = if index == 0 {
        let taken = shared
            .dispatcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        taken.map(|dispatcher| SharedDispatcher(Rc::new(RefCell::new(dispatcher))))
    } else {
        None
    };
    let writer = alert_output
        .clone()
        .map(|output| Box::new(output) as Box<dyn AlertSink>);
    let encode_local = {
        let state = state.clone();
        let stats = stats.clone();
        let alert_counts = alert_counts.clone();
        let model_state = model_state.clone();
        move || {
            crate::checkpoint::snapshot::encode_part(
                &state,
                &stats.borrow(),
                &alert_counts.borrow(),
                model_state.as_ref().map(|models| (models, index == 0)),
            )
        }
    };

    let detect_state = state.detect.clone();
    let mut hooks = WorkerHooks::new(
        shared.metrics.clone(),
        state.order.clone(),
        Box::new(move || detect_state.borrow().evicted_users()),
        stats.clone(),
        (index == 0).then_some(&alert_counts),
    );

    let mut input: InputHandle<u64, Event> = InputHandle::new();
    let (attribute_feed, profile_writer) = if index == 0 {
        (take(&shared.attributes), take(&shared.profile_writer))
    } else {
        (None, None)
    };
    let mut attributes = AttributeInput::new(attribute_feed);
    let probe = ProbeHandle::new();
    // With --models, a probe after the alert sink and the segment updates, for checkpoints.
    let model_probe = ProbeHandle::new();
    let segment_store = model_state
        .as_ref()
        .map_or_else(SegmentStore::default, |models| models.segments.clone());
    {
        let state = state.clone();
        let stats = stats.clone();
        let alert_counts = alert_counts.clone();
        let window_ms = shared.window_ms;
        let detect_settings = DetectSettings {
            window_ms,
            idle_ms: shared.state.evict_idle_ms(),
        };
        let probe = probe.clone();
        let input = &mut input;
        let attribute_updates = attributes.handle();
        let model_probe = model_probe.clone();
        let model_state = model_state.clone();
        worker.dataflow::<u64, _, _>(move |scope| {
            let (events, deltas) = order_and_count_sessions(
                input.to_stream(scope),
                state.order,
                window_ms,
                state.cooccurrence,
            );
            // Checkpoints snapshot the model between steps, so it stays on the worker then.
            let population = if scope.peers() > 1 && shared.checkpoints.is_none() {
                population_groups_on_thread(deltas, state.population)
            } else {
                population_groups(deltas, state.population)
            };
            let population = population.broadcast();
            let attribute_stream = attribute_updates.to_stream(scope);
            let (alerts, segment_updates) = match (&shared.models, &model_state) {
                (Some(models), Some(model_state)) => {
                    let (alerts, segment_updates) = crate::model_path::fused_alerts(
                        events.clone(),
                        population,
                        attribute_stream.clone(),
                        detector,
                        detect_settings,
                        state.detect.clone(),
                        stats,
                        models,
                        &probe,
                        model_state,
                        shared.profiles_on,
                    );
                    (alerts, Some(segment_updates.probe_with(&model_probe)))
                }
                _ => {
                    let alerts = detect_shifts(
                        events.clone(),
                        population,
                        detector,
                        detect_settings,
                        state.detect.clone(),
                        stats,
                    );
                    (alerts, None)
                }
            };
            if shared.profiles_on {
                crate::users::build_profiles(
                    alerts.clone(),
                    attribute_stream,
                    segment_updates,
                    state.detect,
                    shared.profile_settings.clone(),
                    shared.state.evict_idle_ms(),
                    profile_writer.map(|writer| Box::new(WriterOnWorker(writer)) as Box<dyn Write>),
                    shared.profile_store.clone(),
                );
            }
            // The probe follows the sink, so that once it passes a time every alert before
            // that time is in the sink's state or written.
            let written = write_alerts(alerts, writer, alert_counts, state.sink);
            match shared.models {
                Some(_) => written.probe_with(&model_probe),
                None => written.probe_with(&probe),
            };
        });
    }
    let profiles = state.detect.clone();
    let joined_profiles = shared.profile_store.clone();
    hooks.serve_queries(
        shared.router.attach_worker(index),
        Box::new(move |user| {
            let profiles = profiles.borrow();
            profiles.tracked(user).map(|tracked| {
                let mut profile = tracked.state.profile(user);
                profile.last_alert = tracked.last_alert.as_ref().map(|alert| alert.to_json());
                if let Some(latest) = segment_store.borrow().get(user) {
                    profile.segment = Some(latest.segment);
                    profile.segment_features =
                        Some(latest.attribute_features.iter().copied().collect());
                }
                profile.attributes = crate::users::stored_attributes(&joined_profiles, user);
                profile
            })
        }),
    );

    let mut result = WorkerResult::default();
    if index == 0 {
        let feed = shared
            .feed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match feed {
            Some(feed) => {
                let mut flush_alerts = || {
                    if let Some(output) = &alert_output {
                        output.0.borrow().flush();
                    }
                    Ok(())
                };
                let cuts = shared.checkpoints.as_ref().map(|plan| Cuts {
                    checkpointer: crate::checkpoint::Checkpointer::new(
                        plan,
                        shared.window_ms,
                        shared.board.clone(),
                        shared.metrics.clone(),
                    ),
                    encode_local: &encode_local,
                    flush_alerts: &mut flush_alerts,
                    alerts: &alert_counts,
                    models: shared.models.as_ref().map(|_| ModelCut {
                        traffic: &shared.model_traffic,
                        probe: &model_probe,
                        window_ms: shared.window_ms,
                    }),
                });
                let feeder = Feeder {
                    input: &mut input,
                    attributes: &mut attributes,
                    probe: &probe,
                    hooks: &hooks,
                    cuts,
                    resume: shared.resume_position.clone(),
                    tally: FeedTally::default(),
                };
                match feed_input(worker, feeder, shared, feed) {
                    Ok(ingest) => result.ingest = Some(ingest),
                    Err(message) => result.error = Some(message),
                }
            }
            None => result.error = Some("the input was already taken by another worker".into()),
        }
        if let Some(board) = &shared.feed_board {
            board.feed_alone();
        }
        drop(input);
        attributes.close();
    } else {
        attributes.close();
        match &shared.feed_board {
            Some(board) => board.join(worker, input, &probe, &hooks),
            None => drop(input),
        }
    }
    // A query wakes the worker with `unpark`; the timeout only bounds a missed wake-up. With
    // checkpoints, workers also wake up every 5 ms to answer checkpoint requests.
    let park = match shared.checkpoints {
        Some(_) => Duration::from_millis(5),
        None => PARK_TIMEOUT,
    };
    // Worker 0 answers inside its checkpoints, as it takes them.
    let mut answered = if index == 0 { u64::MAX } else { 0 };
    while worker.step_or_park(Some(park)) {
        hooks.between_steps();
        shared.board.serve(index, &mut answered, &encode_local);
    }
    hooks.between_steps();

    result.duplicates = state.order.borrow().duplicates;
    result.evicted = state.detect.borrow().evicted_users();
    result.tracked = state.detect.borrow().tracked_users() as u64;
    if let Some(models) = &model_state {
        result.model_users = ModelUsers {
            window_histories: models.windows.borrow().tracked_users() as u64,
            fusion_states: models.score.borrow().users.len() as u64,
        };
    }
    result.stats = stats.borrow().clone();
    let timeline = result.stats.timeline.take().unwrap_or_default();
    let mut tally = alert_counts.borrow_mut();
    if tally.dropped > 0 {
        tracing::info!(
            alerts = tally.dropped,
            "alerts released after the run stopped at its cut were not written, because they \
             come from windows closed before their end; a --resume writes the alerts of those \
             windows"
        );
    }
    result.alerts = tally.by_kind.clone();
    result.kept_alerts = std::mem::take(&mut tally.kept);
    drop(tally);
    let counts = crate::cluster::WorkerCounts {
        duplicates: result.duplicates,
        users: result.stats.users,
        users_evicted: result.evicted,
        users_tracked: result.tracked,
        window_histories: result.model_users.window_histories,
        fusion_states: result.model_users.fusion_states,
        alerts: result.alerts.clone(),
        timeline,
    };
    result.cluster_total = crate::cluster::sum_on_first_worker(worker, counts);
    result
}

/// Maximum time an idle worker parks before it checks its query inbox again.
const PARK_TIMEOUT: Duration = Duration::from_millis(100);

/// Events sent between two waits for the dataflow to catch up.
const FEED_BATCH: usize = 16_384;

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

/// Worker 0's handles for sending the input: the dataflow's input, the probe after the alert
/// sink, the hooks that run between steps, and checkpointing.
pub(crate) struct Feeder<'a> {
    pub(crate) input: &'a mut InputHandle<u64, Event>,
    /// The user attribute table's input, kept at the events' time.
    pub(crate) attributes: &'a mut AttributeInput,
    pub(crate) probe: &'a ProbeHandle<u64>,
    pub(crate) hooks: &'a WorkerHooks,
    cuts: Option<Cuts<'a>>,
    /// Where a resumed run's checkpoint stood; `None` once the feeder has caught up with it.
    resume: Option<crate::checkpoint::snapshot::FeedPosition>,
    tally: FeedTally,
}

/// Settings and handles worker 0 uses to take checkpoints.
struct Cuts<'a> {
    checkpointer: crate::checkpoint::Checkpointer,
    encode_local: &'a dyn Fn() -> Result<Vec<u8>, String>,
    flush_alerts: &'a mut dyn FnMut() -> std::io::Result<()>,
    alerts: &'a AlertCounter,
    /// With `--models`, what a cut waits for on the model path.
    models: Option<ModelCut<'a>>,
}

/// The model path's side of a checkpoint cut (see `veer_operators::model_state`).
struct ModelCut<'a> {
    traffic: &'a ModelTraffic,
    /// Probe after the alert sink and the segment updates.
    probe: &'a ProbeHandle<u64>,
    window_ms: u64,
}

impl ModelCut<'_> {
    /// Steps the dataflow until the model path has caught up with `cut`, waiting for a fit
    /// that runs. Returns false, and no checkpoint can be taken at `cut`, while windows wait
    /// for a model version that no running fit brings: that version may need events after
    /// the cut.
    fn settle(&self, worker: &mut timely::worker::Worker, hooks: &WorkerHooks, cut: u64) -> bool {
        let window_start = cut - cut % self.window_ms;
        loop {
            if self.traffic.windows_caught_up(cut) && self.traffic.fits_running() == 0 {
                if self.traffic.waiting_windows() > 0 {
                    return false;
                }
                if self.traffic.updates_settled() && !self.probe.less_than(&window_start) {
                    return true;
                }
            }
            // A finished fit wakes the worker.
            worker.step_or_park(Some(Duration::from_millis(1)));
            hooks.between_steps();
        }
    }
}

/// Counts of the feeder, stored in checkpoints.
#[derive(Default)]
struct FeedTally {
    read: u64,
    sent: u64,
    /// Sum of the sent events' hashes: independent of the order of sending, which differs
    /// between a run and its resume.
    sent_hash: u64,
    sorted: bool,
}

/// Returns a hash of an event's identity, for comparing the input of a resumed run.
fn event_hash(event: &Event) -> u64 {
    let mut hash =
        event.user.route_hash() ^ (event.ts_ms as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    hash ^= event.category.route_hash().rotate_left(17);
    hash ^= event.line.rotate_left(41);
    hash.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

impl Feeder<'_> {
    /// Sends one event.
    pub(crate) fn send(&mut self, event: Event) {
        self.tally.sent += 1;
        self.tally.sent_hash = self.tally.sent_hash.wrapping_add(event_hash(&event));
        self.input.send(event);
    }

    /// Advances the input's event time to `time` (if later) and steps the dataflow until the
    /// alerts have caught up, running the hooks between steps.
    ///
    /// The caller must have sent nothing at or after `time`, because a checkpoint may be
    /// taken here with `time` as its cut.
    pub(crate) fn advance_and_wait(&mut self, worker: &mut timely::worker::Worker, time: u64) {
        if time > *self.input.time() {
            self.input.advance_to(time);
            self.hooks.metrics().set_watermark(time as i64);
        }
        self.attributes.poll(time);
        while self.probe.less_than(self.input.time()) {
            worker.step();
            self.hooks.between_steps();
        }
        let cut = *self.input.time();
        let due = self
            .cuts
            .as_ref()
            .is_some_and(|cuts| cuts.checkpointer.due(cut));
        if due {
            self.checkpoint(worker, cut);
        }
    }

    /// Takes a checkpoint at `cut`, the input's time, once the model path has caught up with
    /// it. Returns whether the checkpoint was written.
    fn checkpoint(&mut self, worker: &mut timely::worker::Worker, cut: u64) -> bool {
        let Some(cuts) = self.cuts.as_mut() else {
            return false;
        };
        if let Some(models) = &cuts.models {
            if !models.settle(worker, self.hooks, cut) {
                return false;
            }
        }
        let position = crate::checkpoint::snapshot::FeedPosition {
            cut_ms: cut,
            events_read: self.tally.read,
            events_sent: self.tally.sent,
            sorted: self.tally.sorted,
            sent_hash: self.tally.sent_hash,
        };
        let alerts_written = cuts.alerts.borrow().by_kind.values().sum();
        cuts.checkpointer.take(
            worker,
            position,
            alerts_written,
            cuts.encode_local,
            cuts.flush_alerts,
        )
    }

    /// Returns whether a shutdown that cuts the input short stops this run at a checkpoint
    /// cut ([`stop_at_cut`](Self::stop_at_cut)): true when the run writes checkpoints.
    fn stops_at_cut(&self) -> bool {
        self.cuts.is_some()
    }

    /// Ends the feed of a run that writes checkpoints when a shutdown has cut its input short.
    ///
    /// Closing the input would close every open window as at the end of the input, and the
    /// alerts of those partial windows (their model scores, for example) differ from the ones
    /// an uninterrupted run writes. A resume would then skip the right alerts as already in
    /// the alert file. So the feed stops at the input's time: it writes a last checkpoint
    /// there, and the sink drops every alert released after it. `unsent` counts the events
    /// read but not sent, which a `--resume` processes.
    fn stop_at_cut(&mut self, worker: &mut timely::worker::Worker, unsent: u64) {
        let cut = *self.input.time();
        if let Some(position) = &self.resume {
            tracing::info!(
                checkpoint_cut_ms = position.cut_ms,
                events_read = self.tally.read,
                checkpoint_events_read = position.events_read,
                "run interrupted by the shutdown while the resume was still reading the events \
                 before its checkpoint: no alert and no checkpoint was written, so resume again \
                 with the same input"
            );
        } else {
            self.advance_and_wait(worker, cut);
            let Some(cuts) = self.cuts.as_ref() else {
                return;
            };
            let checkpointer = &cuts.checkpointer;
            if checkpointer.may_cut(cut) && checkpointer.newest_cut_ms() != Some(cut) {
                self.checkpoint(worker, cut);
            }
            let Some(cuts) = self.cuts.as_ref() else {
                return;
            };
            let checkpointer = &cuts.checkpointer;
            match checkpointer.newest_cut_ms() {
                Some(newest) if newest == cut => tracing::info!(
                    sequence = checkpointer.sequence(),
                    cut_ms = cut,
                    unsent,
                    "run interrupted by the shutdown: stopped at the newest checkpoint; \
                     --resume goes on from it with the events not sent and the rest of the input"
                ),
                newest => tracing::info!(
                    cut_ms = cut,
                    newest_checkpoint_cut_ms = newest,
                    unsent,
                    "run interrupted by the shutdown: stopped where no checkpoint could be \
                     taken; --resume goes on from the newest checkpoint, if any"
                ),
            }
        }
        if let Some(cuts) = &self.cuts {
            cuts.alerts.borrow_mut().stopped = true;
        }
    }

    /// Checks the events a resumed run skips against its checkpoint, and moves the input to
    /// the checkpoint's cut. `skipped` are the events the checkpoint's run had sent.
    fn catch_up(&mut self, skipped: &[Event]) -> Result<(), String> {
        let Some(position) = self.resume.take() else {
            return Ok(());
        };
        for event in skipped {
            self.tally.sent += 1;
            self.tally.sent_hash = self.tally.sent_hash.wrapping_add(event_hash(event));
        }
        if self.tally.sent != position.events_sent || self.tally.sent_hash != position.sent_hash {
            return Err(format!(
                "the input differs from the run that wrote the checkpoint: it had sent {} \
                 events before its cut at {} ms, this input has {} there (or other ones); \
                 resume with the same input, or start without --resume",
                position.events_sent, position.cut_ms, self.tally.sent
            ));
        }
        if position.cut_ms > *self.input.time() {
            self.input.advance_to(position.cut_ms);
        }
        if let Some(cuts) = self.cuts.as_mut() {
            cuts.checkpointer.resumed_at(position.cut_ms);
        }
        tracing::info!(
            skipped = skipped.len(),
            cut_ms = position.cut_ms,
            "caught up with the checkpoint"
        );
        Ok(())
    }

    /// Returns whether the events read so far are all before the checkpoint's position, so
    /// the feeder only rebuilds its state and sends nothing.
    fn replaying(&self) -> bool {
        self.resume
            .as_ref()
            .is_some_and(|position| self.tally.read < position.events_read)
    }
}

/// Arrival-order replay: the watermark, and the events waiting for it in the feeder.
///
/// Events are held in the feeder until the watermark passes them, so that after each advance
/// nothing at or after the watermark is inside the dataflow and any advance can be a
/// checkpoint's cut.
struct ArrivalReplay {
    watermark: Watermark,
    held: veer_operators::release::ReleaseBuffer,
    late: u64,
}

impl ArrivalReplay {
    /// Takes one event of the input with index `input` in arrival order; returns false when it
    /// is late.
    fn offer(
        &mut self,
        feeder: &mut Feeder<'_>,
        shared: &Shared,
        event: Event,
        input: usize,
    ) -> bool {
        feeder.tally.read += 1;
        let current = self.watermark.current();
        if self.watermark.observe(event.ts_ms) {
            self.late += 1;
            feeder.hooks.metrics().add_late(1);
            shared
                .dead_letter
                .late(&shared.input_names[input], &event, current);
            return false;
        }
        self.held.extend(std::iter::once(event));
        true
    }

    /// Sends the held events the watermark has passed and advances the input to it; on a
    /// resume, first catches up with the checkpoint once its events have all been read.
    fn release(
        &mut self,
        worker: &mut timely::worker::Worker,
        feeder: &mut Feeder<'_>,
    ) -> Result<(), String> {
        if feeder.replaying() {
            return Ok(());
        }
        if let Some(position) = feeder.resume.clone() {
            let skipped = self.held.release(|time| time < position.cut_ms);
            feeder.catch_up(&skipped)?;
        }
        let watermark = self.watermark.current();
        for event in self.held.drain_ready(|time| time < watermark) {
            feeder.send(event);
        }
        feeder.advance_and_wait(worker, watermark);
        Ok(())
    }

    /// Sends every held event, at the end of the input.
    fn finish(&mut self, feeder: &mut Feeder<'_>) -> Result<(), String> {
        if feeder.replaying() {
            return Err(
                "the input ended before the checkpoint's position; resume with the same input"
                    .to_string(),
            );
        }
        if let Some(position) = feeder.resume.clone() {
            let skipped = self.held.release(|time| time < position.cut_ms);
            feeder.catch_up(&skipped)?;
        }
        // Drained, not collected, because this takes every held event at once.
        for event in self.held.drain_ready(|_| true) {
            feeder.send(event);
        }
        // The empty buffer still has the capacity of its fullest moment, so it is freed
        // before the dataflow takes in those events.
        self.held = veer_operators::release::ReleaseBuffer::default();
        Ok(())
    }
}

/// Sends the input into the dataflow on worker 0, advancing event time as it goes.
fn feed_input(
    worker: &mut timely::worker::Worker,
    mut feeder: Feeder<'_>,
    shared: &Shared,
    feed: Feed,
) -> Result<(LineCounts, bool), String> {
    let progress = crate::progress::Progress::new(shared.progress, shared.input_bytes)
        .with_users(shared.metrics.clone());
    let mut arrival = ArrivalReplay {
        watermark: Watermark::new(shared.out_of_orderness_ms, shared.max_future_skew_ms),
        held: Default::default(),
        late: 0,
    };
    feeder.attributes.poll(0);
    // Checkpoints and resumes need worker 0 to feed alone.
    let board = shared
        .feed_board
        .as_ref()
        .filter(|_| feeder.cuts.is_none() && feeder.resume.is_none());
    let feed_alone = || {
        if let Some(board) = &shared.feed_board {
            board.feed_alone();
        }
    };
    match feed {
        Feed::Listen(source) => {
            feed_alone();
            let live = crate::listen::feed::LiveFeed {
                source,
                dead_letter: &shared.dead_letter,
                out_of_orderness_ms: shared.out_of_orderness_ms,
                max_future_skew_ms: shared.max_future_skew_ms,
                alerts: shared.live_alerts.clone(),
            };
            let counts = crate::listen::feed::feed(worker, &mut feeder, live)?;
            Ok((counts, false))
        }
        Feed::Memory(mut events) => {
            let mut counts = LineCounts {
                lines: events.len() as u64,
                events: events.len() as u64,
                ..Default::default()
            };
            progress.processing(events.len() as u64);
            match board {
                Some(board) => {
                    let (events, _) = BufferedBatch::store(events);
                    let plan = crate::feed_share::FeedPlan::sorted(vec![events], worker.peers());
                    send_shared(worker, &mut feeder, board, plan, &progress);
                }
                None => {
                    feed_alone();
                    events.sort_by(Event::processing_cmp);
                    send_sorted(worker, &mut feeder, events, &progress)?;
                }
            }
            counts.bytes = 0;
            progress.finish();
            Ok((counts, true))
        }
        Feed::Reader(receiver, pool) => {
            // The reader's batches are kept as they arrive, compactly where they fit, and the
            // reader reuses the emptied ones. A fed plan sends them as blocks, so the events are
            // not copied into one vector unless they must be sorted without a plan.
            let mut buffered: Vec<BufferedBatch> = Vec::new();
            // The input index of each buffered batch, for late records.
            let mut buffered_inputs: Vec<usize> = Vec::new();
            let mut profiler =
                ingest::OrderProfiler::new(shared.out_of_orderness_ms, shared.max_future_skew_ms);
            let mut counts;
            let stream_arrival = shared.order == ReplayOrder::Arrival;
            let mut out_of_order = 0u64;
            let mut newest = i64::MIN;
            let mut shutdown_seen = false;
            // Events of the chunks received after a shutdown that stops the run at a cut.
            let mut unsent = 0u64;
            if stream_arrival {
                feed_alone();
            }
            loop {
                let chunk = receive_chunk(worker, &mut feeder, &receiver, &mut shutdown_seen)?;
                let received = Instant::now();
                progress.reading(shared.bytes_read.load(Ordering::Relaxed));
                match chunk {
                    Chunk::Events(events, _, _) if shutdown_seen && feeder.stops_at_cut() => {
                        unsent += events.len() as u64;
                        pool.give_back(events);
                    }
                    Chunk::Events(mut events, _, input) if stream_arrival => {
                        for event in events.drain(..) {
                            if event.ts_ms < newest {
                                out_of_order += 1;
                            }
                            newest = newest.max(event.ts_ms);
                            arrival.offer(&mut feeder, shared, event, input);
                        }
                        pool.give_back(events);
                        feeder.hooks.mark_sent(newest, received);
                        arrival.release(worker, &mut feeder)?;
                        if let Some(alerts) = &shared.live_alerts {
                            if let Err(error) = alerts.flush_lines() {
                                tracing::error!(%error, "failed to write alerts");
                            }
                        }
                        progress.processed(feeder.tally.sent);
                    }
                    Chunk::Events(events, _, input) => {
                        profiler.observe(&events);
                        buffered_inputs.push(input);
                        // With more workers, each would rebuild its blocks' events in its own
                        // allocator arena and another worker would free them: more page faults
                        // and a slower run than keeping the events in full (BENCHMARKS step 41).
                        if worker.peers() == 1 {
                            let (events, emptied) = BufferedBatch::store(events);
                            buffered.push(events);
                            if let Some(emptied) = emptied {
                                pool.give_back(emptied);
                            }
                        } else {
                            buffered.push(BufferedBatch::store_full(events));
                        }
                    }
                    Chunk::Done(done) => {
                        counts = done;
                        break;
                    }
                    Chunk::Failed(message) => return Err(message),
                }
            }
            if shutdown_seen && feeder.stops_at_cut() {
                // Buffered events were not sent yet, and held ones are at or after the cut.
                unsent += arrival.held.len() as u64;
                unsent += buffered.iter().map(BufferedBatch::len).sum::<usize>() as u64;
                feeder.stop_at_cut(worker, unsent);
                counts.late = arrival.late;
                counts.events -= arrival.late;
                counts.out_of_order = out_of_order.max(profiler.finish().out_of_order);
                progress.finish();
                return Ok((counts, false));
            }
            if stream_arrival {
                arrival.finish(&mut feeder)?;
                counts.late = arrival.late;
                counts.events -= arrival.late;
                counts.out_of_order = out_of_order;
                progress.finish();
                return Ok((counts, false));
            }

            let profile = profiler.finish();
            counts.out_of_order = profile.out_of_order;
            let buffered_events = buffered.iter().map(BufferedBatch::len).sum();
            let sorted = ingest::replay_sorted(shared.order, &profile, buffered_events);
            if sorted && profile.out_of_order > 0 {
                tracing::info!(
                    out_of_order = profile.out_of_order,
                    grouped_by_user = profile.grouped_by_user,
                    "input is not in time order; replaying it sorted by event time"
                );
            }
            progress.processing(buffered_events as u64);
            if let Some(board) = board {
                let plan = if sorted {
                    crate::feed_share::FeedPlan::sorted(buffered, worker.peers())
                } else {
                    let plan = crate::feed_share::FeedPlan::arrival(
                        buffered,
                        &mut arrival.watermark,
                        worker.peers(),
                        |batch, event, frontier| {
                            arrival.late += 1;
                            shared.metrics.add_late(1);
                            let input = &shared.input_names[buffered_inputs[batch]];
                            shared.dead_letter.late(input, event, frontier);
                        },
                    );
                    counts.late = arrival.late;
                    counts.events -= arrival.late;
                    plan
                };
                send_shared(worker, &mut feeder, board, plan, &progress);
                progress.finish();
                return Ok((counts, sorted));
            }
            feed_alone();
            if sorted {
                let events = sorted_events(buffered, buffered_events);
                send_sorted(worker, &mut feeder, events, &progress)?;
            } else {
                if feeder
                    .resume
                    .as_ref()
                    .is_some_and(|position| position.sorted)
                {
                    return Err(resume_order_error(false));
                }
                let mut since_step = 0usize;
                let mut batch_started = Instant::now();
                for (batch, input) in buffered.into_iter().zip(buffered_inputs) {
                    for event in batch.into_events() {
                        newest = newest.max(event.ts_ms);
                        if !arrival.offer(&mut feeder, shared, event, input) {
                            continue;
                        }
                        since_step += 1;
                        if since_step >= FEED_BATCH {
                            since_step = 0;
                            feeder.hooks.mark_sent(newest, batch_started);
                            arrival.release(worker, &mut feeder)?;
                            progress.processed(feeder.tally.sent);
                            batch_started = Instant::now();
                        }
                    }
                }
                arrival.finish(&mut feeder)?;
                counts.late = arrival.late;
                counts.events -= arrival.late;
                feeder.hooks.mark_sent(newest, batch_started);
            }
            progress.finish();
            Ok((counts, sorted))
        }
    }
}

/// Joins the reader's batches of `count` events in all and sorts them in processing order.
fn sorted_events(batches: Vec<BufferedBatch>, count: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(count);
    for batch in batches {
        events.append(&mut batch.into_events());
    }
    events.sort_by(Event::processing_cmp);
    events
}

/// Publishes `plan` to the other workers and sends worker 0's share of it.
fn send_shared(
    worker: &mut timely::worker::Worker,
    feeder: &mut Feeder<'_>,
    board: &crate::feed_share::FeedBoard,
    plan: crate::feed_share::FeedPlan,
    progress: &crate::progress::Progress,
) {
    let plan = Arc::new(plan);
    board.share(plan.clone());
    let Feeder {
        input,
        attributes,
        probe,
        hooks,
        ..
    } = feeder;
    let mut advanced = |time: u64| {
        hooks.metrics().set_watermark(time as i64);
        attributes.poll(time);
        progress.processed(plan.sent());
    };
    plan.send_share(worker, 0, input, probe, hooks, &mut advanced);
    hooks.mark_sent(plan.newest_ms(), Instant::now());
    progress.processed(plan.sent());
}

/// Receives the next chunk from the reader thread and steps the dataflow while it waits.
///
/// A shutdown request ends the input at the reader, which then sends what it has read and
/// its counts, so the chunks are received to the reader's last one even after the request.
/// A run that stops at a checkpoint cut counts those chunks but does not send them.
fn receive_chunk(
    worker: &mut timely::worker::Worker,
    feeder: &mut Feeder<'_>,
    receiver: &crossbeam_channel::Receiver<Chunk>,
    shutdown_seen: &mut bool,
) -> Result<Chunk, String> {
    loop {
        // Checked after the wait, so the chunks that a shutdown ended arrive with it seen.
        let received = feeder.hooks.receive_timeout(receiver, SHUTDOWN_POLL);
        if !*shutdown_seen && crate::shutdown::requested() {
            *shutdown_seen = true;
            if feeder.stops_at_cut() {
                tracing::info!(
                    "shutdown requested: the run stops at a checkpoint cut, and a --resume \
                     processes the events read after it"
                );
            } else {
                tracing::info!("shutdown requested: the input is treated as ended");
            }
        }
        match received {
            Ok(chunk) => return Ok(chunk),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // A new user table applies while the input is idle.
                feeder.attributes.poll(*feeder.input.time());
                worker.step();
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err("the reader thread stopped unexpectedly".into())
            }
        }
    }
}

/// How often a feeder waiting for input checks for a shutdown request.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

fn resume_order_error(sorted: bool) -> String {
    let (now, then) = if sorted {
        ("sorted by event time", "in arrival order")
    } else {
        ("in arrival order", "sorted by event time")
    };
    format!(
        "this run replays the input {now}, the checkpoint's run replayed it {then}; resume \
         with the same input and --order"
    )
}

/// Sends events sorted by time, advancing event time every [`FEED_BATCH`] events. On a
/// resume, the events before the checkpoint's cut are checked and skipped.
fn send_sorted(
    worker: &mut timely::worker::Worker,
    feeder: &mut Feeder<'_>,
    events: Vec<Event>,
    progress: &crate::progress::Progress,
) -> Result<(), String> {
    feeder.tally.sorted = true;
    let mut start = 0;
    if let Some(position) = &feeder.resume {
        if !position.sorted {
            return Err(resume_order_error(true));
        }
        let cut = position.cut_ms;
        start = events.partition_point(|event| (event.ts_ms as u64) < cut);
        feeder.catch_up(&events[..start])?;
        feeder.tally.read = start as u64;
    }
    let mut since_step = 0usize;
    let mut batch_started = Instant::now();
    let mut newest = i64::MIN;
    for (sent, event) in events.into_iter().enumerate().skip(start) {
        let time = event.ts_ms as u64;
        // Advance only between two times, so nothing at the new input time is sent yet.
        if since_step >= FEED_BATCH && event.ts_ms > newest && time > *feeder.input.time() {
            since_step = 0;
            feeder.hooks.mark_sent(newest, batch_started);
            feeder.advance_and_wait(worker, time);
            progress.processed(sent as u64);
            batch_started = Instant::now();
        }
        newest = newest.max(event.ts_ms);
        feeder.tally.read += 1;
        feeder.send(event);
        since_step += 1;
    }
    feeder.hooks.mark_sent(newest, batch_started);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RunSummary;
    use crate::ingest::LineCounts;

    fn summary_line<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{text}"))
    }

    #[test]
    fn summary_rates_of_duplicate_stream() {
        // A live run of 20 s that read 100,000 lines, all but 3 of them duplicates.
        let summary = RunSummary {
            counts: LineCounts {
                lines: 100_000,
                events: 100_000,
                ..Default::default()
            },
            duplicates: 99_997,
            wall: Duration::from_secs(20),
            workers: 1,
            processes: 1,
            ..Default::default()
        };
        let text = summary.to_text();
        assert_eq!(
            summary_line(&text, "lines per second"),
            "lines per second          5000"
        );
        assert_eq!(
            summary_line(&text, "events per second"),
            "events per second         0.15  (unique events)"
        );
    }
}
