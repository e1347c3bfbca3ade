//! The `veer` command line: `run`, `generate` and `eval`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use veer::cluster::ClusterSettings;
use veer::config::{parse_duration, DetectorChoice, FileConfig, ReplayOrder};
use veer::eval::{self, EvalConfig, ScoredAlert, UserTimeline};
use veer::generate::{self, GenFormat, GenerateConfig};
use veer::pipeline::{self, AlertOutput, EventSource, RunSettings, RunSummary};
use veer::sources::{Format, MissingCategory, SourceOptions};

/// Real-time detection of abrupt shifts in e-commerce users' interests.
#[derive(Parser)]
#[command(name = "veer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The exit codes of `veer run`, as its help lists them.
const RUN_EXIT_CODES: &str = "\
Exit codes:
  0    success, or a stop by the first SIGTERM or SIGINT (also one that came while an
       output named pipe waited for its reader, before the run started)
  2    an error: the run did not start, or it lost alerts, dead-letter records or profile lines
  3    every alert is safe, but some went only to the webhook's dead-letter file
  4    an input is damaged (such as a truncated gzip file or a disk read error): its lines
       before the damage were processed, the rest was not read
  5    the alerts are complete, but checkpoints failed, so --resume starts from an older
       checkpoint or finds none
  130  a second SIGINT stopped the run at once
Of several outcomes, 2 comes before 4, 4 before 3, and 3 before 5.";

// The command is parsed once, so the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Read behaviour events and write an alert for each user whose interests shift.
    ///
    /// Without --input, generates a labelled stream in memory, runs it and prints the score.
    #[command(after_help = RUN_EXIT_CODES)]
    Run(RunArgs),
    /// Accept events over TCP and write alerts as they happen, until SIGTERM or SIGINT.
    ///
    /// Clients send lines of JSON, Taobao or REES46 CSV (detected per connection from its
    /// first line unless --format is given) to 127.0.0.1:7700 by default. The first SIGTERM or
    /// SIGINT stops reading, processes the events already read, closes the last windows and
    /// exits 0; a second SIGINT exits at once with code 130.
    Serve(ServeArgs),
    /// Write a deterministic labelled stream with planted shifts and decoys.
    Generate(GenerateArgs),
    /// Score an alert file against a truth file with the contract's rule.
    Eval(EvalArgs),
    /// Print per-user statistics of event files as a Markdown table (realism checks).
    Stats(StatsArgs),
    /// Measure how fast a file can be split into lines, and parsed, without the engine.
    Scan(ScanArgs),
    /// Draw one user's interest timeline and the detector's statistic (SVG, HTML or text).
    ///
    /// Replays the whole input (category groups are learned from every user) and traces one
    /// user. Without --out, prints a text view of the user's sessions.
    Explain(ExplainArgs),
    /// Write one self-contained HTML report about a run's alerts.
    Report(ReportArgs),
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The user to explain, as written in the input.
    #[arg(long)]
    user: String,
    /// Alert file to mark instead of the alerts of the replay.
    #[arg(long, value_name = "PATH")]
    alerts: Option<PathBuf>,
    /// Output file: .svg or .html (.png is not supported). Without it, a text view is printed.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Configuration file (TOML) of the run, so the replay uses its detector settings.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Hours east of UTC in which times are shown, e.g. 8 or -5 (default: 8 for Taobao
    /// input, whose times are Beijing time, 0 otherwise).
    #[arg(long, value_name = "HOURS", allow_hyphen_values = true)]
    tz_offset: Option<f64>,
}

#[derive(Args)]
struct ReportArgs {
    /// Alert file of the run (JSON lines). A torn last line, as a killed run leaves it, is
    /// skipped with a warning.
    #[arg(long, value_name = "PATH")]
    alerts: PathBuf,
    /// Event file of the run: adds line counts, delays in events and explain pictures.
    #[arg(long = "events", value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    events: Vec<String>,
    /// Format of --events; detected when absent.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Truth file: adds the contract's score and delay histograms.
    #[arg(long, value_name = "PATH")]
    truth: Option<PathBuf>,
    /// Scoring horizon, e.g. 3d.
    #[arg(long, default_value = "3d", value_name = "DURATION")]
    horizon: String,
    /// Output HTML file.
    #[arg(long, default_value = "report.html", value_name = "FILE")]
    out: PathBuf,
    /// Number of top alerts listed with their pictures.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Configuration file (TOML) of the run, for its replay and detector settings.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Hours east of UTC in which times are shown (default: 8 for Taobao events, 0 otherwise).
    #[arg(long, value_name = "HOURS", allow_hyphen_values = true)]
    tz_offset: Option<f64>,
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Also generate the built-in default stream and add its row.
    #[arg(long)]
    with_generated: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Jsonl,
    Taobao,
    Retailrocket,
    Rees46,
}

impl From<FormatArg> for Format {
    fn from(value: FormatArg) -> Format {
        match value {
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Taobao => Format::Taobao,
            FormatArg::Retailrocket => Format::RetailRocket,
            FormatArg::Rees46 => Format::Rees46,
        }
    }
}

/// Formats that `veer serve` reads from sockets. RetailRocket is not one of them, because its
/// categories are joined from item property files.
#[derive(Clone, Copy, ValueEnum)]
enum StreamFormatArg {
    Jsonl,
    Taobao,
    Rees46,
}

impl From<StreamFormatArg> for FormatArg {
    fn from(value: StreamFormatArg) -> FormatArg {
        match value {
            StreamFormatArg::Jsonl => FormatArg::Jsonl,
            StreamFormatArg::Taobao => FormatArg::Taobao,
            StreamFormatArg::Rees46 => FormatArg::Rees46,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum MissingCategoryArg {
    /// An event whose item has no category is a bad record.
    Bad,
    /// The item id is used as the category.
    Item,
}

#[derive(Args, Default)]
struct InputArgs {
    /// Input file, plain or gzip-compressed; `-` for standard input. Repeat for several files.
    #[arg(long = "input", value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    inputs: Vec<String>,
    /// Input format; detected from the file's first line when absent.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// RetailRocket item_properties files (default: item_properties*.csv beside the events).
    #[arg(long = "item-properties", value_name = "PATH")]
    item_properties: Vec<PathBuf>,
    /// RetailRocket category_tree.csv, whose root categories become topics.
    #[arg(long, value_name = "PATH")]
    category_tree: Option<PathBuf>,
    /// RetailRocket items without a category: bad records, or the item id as the category
    /// (default: bad when item properties are found, item otherwise, with a warning).
    #[arg(long, value_enum)]
    missing_category: Option<MissingCategoryArg>,
}

impl InputArgs {
    fn source_options(&self) -> SourceOptions {
        SourceOptions {
            format: self.format.map(Format::from),
            item_properties: self.item_properties.clone(),
            category_tree: self.category_tree.clone(),
            missing_category: self.missing_category.map(|choice| match choice {
                MissingCategoryArg::Bad => MissingCategory::Bad,
                MissingCategoryArg::Item => MissingCategory::Item,
            }),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Alert output: a file of JSON lines, or `-` for standard output. A named pipe is
    /// waited for until a process opens it for reading; SIGTERM or SIGINT stops the wait.
    #[arg(long, value_name = "PATH|-", value_parser = NonEmptyStringValueParser::new())]
    alerts: Option<String>,
    /// Dead-letter file: one JSON line per bad or late input line, with its line number.
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<PathBuf>,
    /// Worker threads, 1 to 1024; users are partitioned across them (default 1).
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Configuration file (TOML); command-line options override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Replay order of a file: auto sorts by event time when the file is grouped by user or
    /// far out of order (default auto).
    #[arg(long, value_enum)]
    order: Option<ReplayOrder>,
    /// Allowed out-of-orderness before an event is late, e.g. 10m (default 10m).
    #[arg(long, value_name = "DURATION")]
    out_of_orderness: Option<String>,
    /// Population window for group learning and trends, e.g. 1h (default 1h).
    #[arg(long, value_name = "DURATION")]
    window: Option<String>,
    /// Shift detector: shift (CUSUM over groups) or baseline (reference rule).
    #[arg(long, value_enum)]
    detector: Option<DetectorChoice>,
    /// Truth file to score the alerts against after the run.
    #[arg(long, value_name = "PATH")]
    truth: Option<PathBuf>,
    /// Scoring horizon of --truth or of the built-in stream, e.g. 3d (default 3d).
    #[arg(long, value_name = "DURATION")]
    horizon: Option<String>,
    /// Users of the built-in generated stream, which runs when no --input is given (default
    /// 2000).
    #[arg(long, value_name = "COUNT")]
    generate_users: Option<usize>,
    /// Hide the progress display.
    #[arg(long)]
    no_progress: bool,
    /// Serve /metrics, /users/{id} and /healthz over HTTP on this address during the run, e.g.
    /// 127.0.0.1:9464 (port 0 picks a free port, named in the log). Off by default.
    /// /users/7 requests the integer id 7, /users/%227%22 (quoted) the text id "7".
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Folder for periodic checkpoints of all state (default: none).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Wall-clock time between checkpoints, e.g. 10s or 100ms (default 10s); needs
    /// --checkpoint-dir or --resume.
    #[arg(long, value_name = "DURATION")]
    checkpoint_interval: Option<String>,
    /// Resume from the newest checkpoint in DIR, and keep writing checkpoints there; the
    /// input and settings must be those of the run that wrote it.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Event time after which an idle user's state is dropped, e.g. 7d; 0 keeps every user
    /// (default 7d).
    #[arg(long, value_name = "DURATION")]
    evict_after: Option<String>,
    /// User attribute table (CSV with a header, or JSON lines) joined into the profiles; the
    /// file is watched during the run and a changed row applies from then on.
    #[arg(long, value_name = "PATH")]
    users: Option<PathBuf>,
    /// Profile output: one JSON line per material change of a user's profile, and one per
    /// user at the end of the input.
    #[arg(long, value_name = "PATH")]
    profiles: Option<PathBuf>,
    /// Fuse the detector's alerts with learned models fitted on a bootstrap period
    /// (`[models]` in the config file); the fit runs once, on a background thread.
    #[arg(long)]
    models: bool,
    /// With --models: write each fitted model version to this file, replacing the previous
    /// version, so the file contains the latest one.
    #[arg(long, value_name = "PATH")]
    models_save: Option<PathBuf>,
    /// With --models: score every window with the models of this file (from --models-save)
    /// instead of fitting them on a bootstrap period. The run's [models] seed, --window and
    /// model settings must match those of the run that saved the file.
    #[arg(long, value_name = "PATH")]
    models_load: Option<PathBuf>,
    #[command(flatten)]
    listen: veer::listen::ListenArgs,
    #[command(flatten)]
    sinks: veer::sinks::SinkArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    listen: veer::listen::ListenArgs,
    #[command(flatten)]
    sinks: veer::sinks::SinkArgs,
    /// Format of every connection; detected per connection from its first line when absent.
    #[arg(long, value_enum)]
    format: Option<StreamFormatArg>,
    /// Alert output: a file of JSON lines, or `-` for standard output (default `-`). A named
    /// pipe is waited for until a process opens it for reading; SIGTERM or SIGINT stops the
    /// wait.
    #[arg(long, value_name = "PATH|-", value_parser = NonEmptyStringValueParser::new())]
    alerts: Option<String>,
    /// Dead-letter file: one JSON line per bad or late line, with its connection and line.
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<PathBuf>,
    /// Worker threads, 1 to 1024; users are partitioned across them (default 1).
    #[arg(long)]
    workers: Option<usize>,
    /// Configuration file (TOML); command-line options override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Allowed out-of-orderness within a connection before an event is late, e.g. 10m
    /// (default 10m).
    #[arg(long, value_name = "DURATION")]
    out_of_orderness: Option<String>,
    /// Population window for group learning and trends, e.g. 1h (default 1h).
    #[arg(long, value_name = "DURATION")]
    window: Option<String>,
    /// Shift detector: shift (CUSUM over groups) or baseline (reference rule).
    #[arg(long, value_enum)]
    detector: Option<DetectorChoice>,
    /// Serve /metrics, /users/{id} and /healthz over HTTP on this address, e.g.
    /// 127.0.0.1:9464 (port 0 picks a free port, named in the log). Off by default.
    /// /users/7 requests the integer id 7, /users/%227%22 (quoted) the text id "7".
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// User attribute table joined into the profiles; watched while the server runs.
    #[arg(long, value_name = "PATH")]
    users: Option<PathBuf>,
    /// Profile output: one JSON line per material change of a user's profile.
    #[arg(long, value_name = "PATH")]
    profiles: Option<PathBuf>,
}

impl ServeArgs {
    fn into_run_args(self) -> RunArgs {
        RunArgs {
            input: InputArgs {
                format: self.format.map(FormatArg::from),
                ..InputArgs::default()
            },
            alerts: self.alerts,
            dead_letter: self.dead_letter,
            workers: self.workers,
            config: self.config,
            order: None,
            out_of_orderness: self.out_of_orderness,
            window: self.window,
            detector: self.detector,
            truth: None,
            horizon: None,
            generate_users: None,
            no_progress: true,
            models: false,
            models_save: None,
            models_load: None,
            listen: self.listen,
            sinks: self.sinks,
            cluster: ClusterArgs::default(),
            http: self.http,
            checkpoint_dir: None,
            checkpoint_interval: None,
            resume: None,
            evict_after: None,
            users: self.users,
            profiles: self.profiles,
        }
    }
}

/// Options of a run over several processes (timely's cluster mode).
#[derive(Args, Default)]
struct ClusterArgs {
    /// Processes of a cluster run, each started with its own --process (default 1).
    #[arg(long)]
    processes: Option<usize>,
    /// Index of this process in the cluster, from 0; process 0 reads the input and writes
    /// the alerts (default 0).
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// File with one host:port line per process, in process order.
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// Time to wait for every process to connect, e.g. 30s (default 30s).
    #[arg(long, value_name = "DURATION")]
    connect_timeout: Option<String>,
}

impl ClusterArgs {
    fn settings(
        &self,
        file: &veer::config::ClusterFileConfig,
    ) -> anyhow::Result<Option<ClusterSettings>> {
        let timeout = match &self.connect_timeout {
            Some(text) => duration_arg("connect-timeout", text)?,
            None => file.connect_timeout,
        };
        let hostfile = self.hostfile.as_deref().or(file.hostfile.as_deref());
        let processes = self.processes.unwrap_or(file.processes);
        let cluster_option = [
            ("hostfile", self.hostfile.is_some()),
            ("connect-timeout", self.connect_timeout.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name));
        if let (1, Some(option)) = (processes, cluster_option) {
            anyhow::bail!(
                "--{option} sets up a cluster run, but this run has one process; add \
                 --processes N or drop --{option}"
            );
        }
        Ok(ClusterSettings::from_options(
            processes,
            self.process,
            hostfile,
            timeout,
        )?)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Number of users.
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Days of event time (at least 5).
    #[arg(long, default_value_t = 9)]
    days: u32,
    /// Random seed; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Fraction of users with a planted interest shift.
    #[arg(long, default_value_t = 0.2)]
    shift_frac: f64,
    /// Output format of the events.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: GenFormatArg,
    /// Harder stream: more low-activity users and more ramped shifts.
    #[arg(long)]
    harder: bool,
    /// Events output file.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Truth output file.
    #[arg(long, value_name = "PATH")]
    truth: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormatArg {
    Jsonl,
    Taobao,
}

#[derive(Args)]
struct EvalArgs {
    /// Truth file (JSON lines).
    #[arg(long, value_name = "PATH")]
    truth: PathBuf,
    /// Alert file (JSON lines). A torn last line, as a killed run leaves it, is skipped with a
    /// warning.
    #[arg(long, value_name = "PATH")]
    alerts: PathBuf,
    /// Events of the run, for delays in events (optional).
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    events: Option<String>,
    /// Format of --events; detected when absent.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Horizon after the onset within which an alert counts, e.g. 3d.
    #[arg(long, default_value = "3d", value_name = "DURATION")]
    horizon: String,
    /// Alert file of a baseline run on the same stream. Adds both runs' delays on the shifts
    /// that both detected, and how many of those each run detected earlier.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of standard output goes
    // away (`veer run | head`), instead of failing on the broken pipe.
    #[cfg(unix)]
    // SAFETY: setting the action of two signals before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // A write past a file-size limit (RLIMIT_FSIZE) then fails with EFBIG, which the
        // writers report like a full disk, instead of killing the process mid-line.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VEER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args, false),
        Command::Serve(args) => run(args.into_run_args(), true),
        Command::Generate(args) => generate_files(args),
        Command::Eval(args) => eval_files(args),
        Command::Stats(args) => print_stats(args),
        Command::Scan(args) => scan_file(args),
        Command::Explain(args) => explain_user(args),
        Command::Report(args) => write_report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A stop before the run started is still a stop, which exits 0 like any other.
        Err(error) if error.is::<veer::output_file::StoppedWaitingForReader>() => {
            tracing::warn!("{error}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.is::<veer::sinks::SinksDegraded>() {
                ExitCode::from(veer::sinks::SinksDegraded::EXIT_CODE)
            } else if error.is::<InputDamaged>() {
                ExitCode::from(InputDamaged::EXIT_CODE)
            } else if error.is::<CheckpointsFailed>() {
                ExitCode::from(CheckpointsFailed::EXIT_CODE)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// Returns the eviction and checkpoint settings: the command line over `[state]`.
fn state_settings(
    args: &RunArgs,
    file: &FileConfig,
) -> anyhow::Result<veer::checkpoint::StateSettings> {
    let evict_after = match &args.evict_after {
        Some(text) => duration_arg("evict-after", text)?,
        None => file.state.evict_after,
    };
    let checkpoint_interval = match &args.checkpoint_interval {
        Some(text) => duration_arg("checkpoint-interval", text)?,
        None => file.state.checkpoint_interval,
    };
    let checkpoint_dir = args
        .checkpoint_dir
        .clone()
        .or_else(|| file.state.checkpoint_dir.clone());
    if args.checkpoint_interval.is_some() && checkpoint_dir.is_none() && args.resume.is_none() {
        anyhow::bail!(
            "--checkpoint-interval sets how often checkpoints are written, but this run writes \
             none; add --checkpoint-dir DIR or drop --checkpoint-interval"
        );
    }
    Ok(veer::checkpoint::StateSettings {
        evict_idle: (!evict_after.is_zero()).then_some(evict_after),
        checkpoint_dir,
        checkpoint_interval,
        checkpoint_keep: file.state.checkpoint_keep,
        resume_dir: args.resume.clone(),
    })
}

fn duration_arg(name: &str, text: &str) -> anyhow::Result<std::time::Duration> {
    parse_duration(text).map_err(|message| anyhow::anyhow!("--{name}: {message}"))
}

/// Scoring horizon of `veer run` when `--horizon` is absent.
const DEFAULT_HORIZON: &str = "3d";

/// Rejects `--generate-users` when the run reads an input instead of the built-in stream, and
/// `--horizon` when it scores nothing: with an input but without `--truth`.
fn check_generated_stream_options(args: &RunArgs, generated: bool) -> anyhow::Result<()> {
    if args.generate_users.is_some() && !generated {
        anyhow::bail!(
            "--generate-users sets the users of the built-in stream, but this run reads \
             --input or --listen; drop --generate-users"
        );
    }
    if args.horizon.is_some() && !generated && args.truth.is_none() {
        anyhow::bail!(
            "--horizon sets the scoring horizon, but this run scores nothing; add --truth FILE \
             or drop --horizon"
        );
    }
    Ok(())
}

/// Parses `--horizon` into whole seconds. A horizon under one second is rejected, because
/// scoring with it would count every alert as false.
fn horizon_arg(text: &str) -> anyhow::Result<i64> {
    let seconds = duration_arg("horizon", text)?.as_secs();
    if seconds == 0 {
        anyhow::bail!("invalid --horizon {text:?}: must be at least 1s, such as 3d");
    }
    Ok(seconds as i64)
}

/// Rejects an output path that is also an input or another output, because creating the
/// output would empty the other file before it is read. Also rejects `-`, because only
/// `--alerts` and `--input` read it as standard output or input, and these outputs would
/// create a file named `-`. An output that exists and is not a regular file, such as
/// `/dev/null`, may be named more than once.
fn check_distinct_paths(inputs: &[String], outputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    if let Some((name, _)) = outputs.iter().find(|(_, path)| *path == Path::new("-")) {
        anyhow::bail!(
            "invalid --{name} -: this output cannot go to standard output; give a file path \
             (only --alerts - writes to standard output)"
        );
    }
    // A path that does not exist yet is resolved through its folder.
    let canonical = |path: &Path| {
        std::fs::canonicalize(path).ok().or_else(|| {
            let folder = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            Some(std::fs::canonicalize(folder).ok()?.join(path.file_name()?))
        })
    };
    for (index, (name, output)) in outputs.iter().enumerate() {
        // Writing to a device or a named pipe, such as /dev/null, empties no file.
        if std::fs::metadata(output).is_ok_and(|metadata| !metadata.is_file()) {
            continue;
        }
        let Some(output_path) = canonical(output) else {
            continue;
        };
        for input in inputs.iter().filter(|input| input.as_str() != "-") {
            if canonical(Path::new(input)).as_ref() == Some(&output_path) {
                anyhow::bail!(
                    "--{name} {} is also an input; choose another path so the input is not overwritten",
                    output.display()
                );
            }
        }
        for (other_name, other) in &outputs[index + 1..] {
            if canonical(other).as_ref() == Some(&output_path) {
                anyhow::bail!(
                    "--{name} and --{other_name} are the same file {}; choose two paths",
                    output.display()
                );
            }
        }
    }
    Ok(())
}

fn run(args: RunArgs, serve: bool) -> anyhow::Result<()> {
    let mut outputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(path) = args.alerts.as_deref().filter(|path| *path != "-") {
        outputs.push(("alerts", Path::new(path)));
    }
    if let Some(path) = &args.dead_letter {
        outputs.push(("dead-letter", path.as_path()));
    }
    if let Some(path) = &args.profiles {
        outputs.push(("profiles", path.as_path()));
    }
    if let Some(path) = &args.models_save {
        outputs.push(("models-save", path.as_path()));
    }
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut sinks = file.sinks.clone();
    args.sinks.apply(&mut sinks)?;
    if let Some(path) = &sinks.webhook.dead_letter {
        outputs.push(("webhook-dead-letter", path.as_path()));
    }
    let mut inputs = args.input.inputs.clone();
    inputs.extend(args.users.iter().map(|path| path.display().to_string()));
    check_distinct_paths(&inputs, &outputs)?;
    let mut time = file.time.clone();
    if let Some(order) = args.order {
        time.order = order;
    }
    if let Some(text) = &args.out_of_orderness {
        time.out_of_orderness = duration_arg("out-of-orderness", text)?;
    }
    if let Some(text) = &args.window {
        time.window = duration_arg("window", text)?;
    }
    let cluster = args.cluster.settings(&file.cluster)?;
    let reads_input = veer::cluster::reads_input(cluster.as_ref());
    let format = args.input.format.map(Format::from);
    let listen = args.listen.settings(&file, format, serve)?;
    let generated = args.input.inputs.is_empty() && listen.is_none();
    check_generated_stream_options(&args, generated)?;
    let horizon_secs = horizon_arg(args.horizon.as_deref().unwrap_or(DEFAULT_HORIZON))?;
    veer::shutdown::install()?;

    let (source, truth, timeline) = if generated && !reads_input {
        // Process 0 generates the stream and scores the run.
        (EventSource::Memory(Vec::new()), None, None)
    } else if generated {
        let config = GenerateConfig {
            users: args
                .generate_users
                .unwrap_or(GenerateConfig::default().users),
            ..GenerateConfig::default()
        };
        tracing::info!(
            users = config.users,
            days = config.days,
            seed = config.seed,
            "generating the built-in labelled stream"
        );
        let stream = generate::generate(&config);
        let timeline: UserTimeline = stream
            .events
            .iter()
            .map(|event| (event.user.clone(), event.ts_secs()))
            .collect();
        (
            EventSource::Memory(stream.events),
            Some(stream.truth),
            Some(timeline),
        )
    } else if let Some(listen) = listen {
        if !args.input.inputs.is_empty() || args.truth.is_some() || args.models {
            anyhow::bail!("--listen cannot be combined with --input, --truth or --models");
        }
        let source = veer::listen::ListenSource::bind(listen)?;
        (EventSource::Listen(source), None, None)
    } else {
        let truth = match &args.truth {
            Some(path) if reads_input => Some(read_truth(path)?),
            _ => None,
        };
        (
            EventSource::Inputs {
                paths: args.input.inputs.clone(),
                options: args.input.source_options(),
            },
            truth,
            None,
        )
    };

    let alerts = match args.alerts.as_deref() {
        Some("-") => AlertOutput::Stdout,
        Some(path) => AlertOutput::File(PathBuf::from(path)),
        None if generated => AlertOutput::Discard,
        None => AlertOutput::Stdout,
    };
    if sinks.append && !matches!(alerts, AlertOutput::File(_)) {
        anyhow::bail!(
            "--alerts-append (or append = true under [sinks] in the configuration) needs an \
             alert file, but alerts {}; add --alerts PATH",
            match alerts {
                AlertOutput::Stdout => "go to standard output",
                _ => "are discarded",
            }
        );
    }
    // A resumed run re-sends the alerts after its checkpoint. Appending with the id check
    // keeps an alert file free of duplicates and of the line a kill tore.
    if args.resume.is_some() && matches!(alerts, AlertOutput::File(_)) {
        sinks.append = true;
    }
    let settings = RunSettings {
        source,
        alerts,
        sinks,
        dead_letter: args.dead_letter.clone().or(file.run.dead_letter.clone()),
        workers: args.workers.unwrap_or(file.run.workers),
        order: time.order,
        out_of_orderness: time.out_of_orderness,
        max_future_skew: time.max_future_skew,
        window: time.window,
        detector: args.detector.unwrap_or(file.run.detector),
        detector_config: file.detector.clone(),
        groups: file.groups.clone(),
        progress: !args.no_progress && !serve && args.listen.listen.is_empty(),
        metrics: Default::default(),
        // Every process keeps its event times when process 0 scores the run.
        keep_alerts: generated || args.truth.is_some(),
        cluster,
        http: args.http.clone().or(file.run.http.clone()),
        state: state_settings(&args, &file)?,
        users: args.users.clone().map(|path| veer::users::UsersInput {
            path,
            poll_interval: file.users.poll_interval,
        }),
        profiles: args.profiles.clone(),
        profile_settings: file.profiles.clone(),
    };
    let models = args.models || file.models.enabled;
    if models && settings.detector == DetectorChoice::Baseline {
        anyhow::bail!(
            "--models works with the shift detector only; drop --detector baseline or --models"
        );
    }
    if !models {
        if let Some(flag) = [
            ("--models-save", args.models_save.is_some()),
            ("--models-load", args.models_load.is_some()),
        ]
        .iter()
        .find_map(|(flag, given)| given.then_some(flag))
        {
            anyhow::bail!("{flag} works with the model path only; add --models");
        }
    }
    let mut model_saver = None;
    // Every process of a cluster runs the model path, so that their dataflows match, and
    // every process loads the models to score its users. Only process 0 saves them.
    let summary = if models {
        let mut model_settings = file.models.run_settings();
        let user_columns = match &settings.users {
            Some(users) => Some(veer::users::table_columns(&users.path)?),
            None => None,
        };
        model_saver = veer::model_file::prepare_run(
            &mut model_settings,
            settings.window.as_millis() as u64,
            user_columns,
            args.models_load.as_deref().or(file.models.load.as_deref()),
            args.models_save
                .as_deref()
                .or(file.models.save.as_deref())
                .filter(|_| reads_input),
        )?;
        pipeline::run_with_models(settings, model_settings)?
    } else {
        pipeline::run(settings)?
    };
    eprint!("{}", summary.to_text());
    if let Some(reason) = &summary.cut_short {
        anyhow::bail!("{reason}");
    }
    if !summary.accounts_for_every_line() {
        tracing::error!("line counts do not add up; please report this with the input");
    }
    if let Some(truth) = truth {
        // The run's own events, so standard input is not read twice.
        let timeline = match timeline {
            Some(timeline) => Some(timeline),
            None => Some(summary.timeline.iter().cloned().collect::<UserTimeline>()),
        };
        print_score(&summary, &truth, timeline.as_ref(), horizon_secs)?;
    }
    if let Some(saver) = &model_saver {
        saver.finish()?;
    }
    if let Some(failure) = &summary.dead_letter_failure {
        anyhow::bail!("{failure}");
    }
    if let Some(failure) = &summary.profile_failure {
        anyhow::bail!("{failure}");
    }
    if summary.sinks.failed() {
        anyhow::bail!(
            "{} alerts were lost by the alert sinks: {}",
            summary.sinks.lost(),
            summary.sinks.failures()
        );
    }
    if !summary.counts.damaged.is_empty() {
        return Err(InputDamaged {
            damages: summary.counts.damaged.clone(),
        }
        .into());
    }
    if summary.sinks.dead_lettered() > 0 {
        return Err(veer::sinks::SinksDegraded {
            dead_lettered: summary.sinks.dead_lettered(),
        }
        .into());
    }
    if summary.checkpoint_failures > 0 {
        return Err(CheckpointsFailed {
            failed: summary.checkpoint_failures,
            written: summary.checkpoints,
        }
        .into());
    }
    Ok(())
}

/// The error of a run whose alerts are complete, but some of whose checkpoints failed.
/// `veer run` exits with [`CheckpointsFailed::EXIT_CODE`] for it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} checkpoints failed and {written} were written; the alerts are complete, but \
     --resume starts from the newest checkpoint written, if any. The log names the file and \
     the error, such as a full disk"
)]
struct CheckpointsFailed {
    failed: u64,
    written: u64,
}

impl CheckpointsFailed {
    /// Exit code of `veer run` when checkpoints failed.
    const EXIT_CODE: u8 = 5;
}

/// The error of a run that processed every line it could read, but stopped reading at least
/// one input at a read error. `veer run` exits with [`InputDamaged::EXIT_CODE`] for it.
#[derive(Debug)]
struct InputDamaged {
    /// The damaged inputs, in reading order; never empty.
    damages: Vec<veer::ingest::InputDamage>,
}

impl InputDamaged {
    /// Exit code of `veer run` when an input was damaged.
    const EXIT_CODE: u8 = 4;
}

impl std::fmt::Display for InputDamaged {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.damages[0])?;
        if self.damages.len() > 1 {
            write!(
                formatter,
                " ({} more damaged inputs are listed in the summary)",
                self.damages.len() - 1
            )?;
        }
        write!(
            formatter,
            "; the lines before the damage were processed, the rest of the input was not read"
        )
    }
}

impl std::error::Error for InputDamaged {}

fn print_score(
    summary: &RunSummary,
    truth: &[veer::truth::TruthRecord],
    timeline: Option<&UserTimeline>,
    horizon_secs: i64,
) -> anyhow::Result<()> {
    let alerts: Vec<ScoredAlert> = summary
        .kept_alerts
        .iter()
        .map(|alert| ScoredAlert {
            user: alert.user.clone(),
            kind: alert.kind,
            ts: alert.ts,
        })
        .collect();
    let score = eval::score(truth, &alerts, timeline, &EvalConfig { horizon_secs });
    print_stdout(&format!("{}\n{}\n", score.to_table(), score.to_json_line()))
}

/// Writes `text` to standard output. A failed write (such as a full disk) is an error that
/// names standard output, where `print!` would panic.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| anyhow::anyhow!("cannot write to standard output: {error}"))
}

fn read_truth(path: &Path) -> anyhow::Result<Vec<veer::truth::TruthRecord>> {
    let file = std::fs::File::open(path)
        .map_err(|error| anyhow::anyhow!("cannot open truth file {}: {error}", path.display()))?;
    eval::read_truth(std::io::BufReader::new(file))
        .map_err(|error| anyhow::anyhow!("truth file {}: {error}", path.display()))
}

fn generate_files(args: GenerateArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.shift_frac) {
        anyhow::bail!(
            "invalid --shift-frac {}: must be between 0 and 1",
            args.shift_frac
        );
    }
    if args.days < 5 {
        anyhow::bail!(
            "invalid --days {}: at least 5 days are needed to plant shifts",
            args.days
        );
    }
    let config = GenerateConfig {
        users: args.users,
        days: args.days,
        seed: args.seed,
        shift_frac: args.shift_frac,
        harder: args.harder,
        ..GenerateConfig::default()
    };
    check_distinct_paths(
        &[],
        &[("out", args.out.as_path()), ("truth", args.truth.as_path())],
    )?;
    let started = std::time::Instant::now();
    let stream = generate::generate(&config);
    let format = match args.format {
        GenFormatArg::Jsonl => GenFormat::Jsonl,
        GenFormatArg::Taobao => GenFormat::Taobao,
    };
    let create = |path: &Path| {
        std::fs::File::create(path)
            .map(std::io::BufWriter::new)
            .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", path.display()))
    };
    let cannot_write = |path: &Path, error: std::io::Error| {
        anyhow::anyhow!("cannot write {}: {error}", path.display())
    };
    let mut out = create(&args.out)?;
    generate::write_events(&stream.events, format, &mut out)
        .and_then(|()| out.flush())
        .map_err(|error| cannot_write(&args.out, error))?;
    let mut truth = create(&args.truth)?;
    generate::write_truth(&stream.truth, &mut truth)
        .and_then(|()| truth.flush())
        .map_err(|error| cannot_write(&args.truth, error))?;
    eprintln!(
        "wrote {} events of {} users to {} and {} truth records to {} in {:.2}s",
        stream.events.len(),
        config.users,
        args.out.display(),
        stream.truth.len(),
        args.truth.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn eval_files(args: EvalArgs) -> anyhow::Result<()> {
    let horizon_secs = horizon_arg(&args.horizon)?;
    let truth = read_truth(&args.truth)?;
    let alerts = read_alert_file(&args.alerts)?;
    let timeline = match &args.events {
        Some(path) => {
            let options = SourceOptions {
                format: args.format.map(Format::from),
                ..SourceOptions::default()
            };
            let (mut events, _) = veer::ingest::read_events(vec![path.clone()], options)?;
            // Exact duplicates are dropped by `veer run`, so they are not events of the user.
            veer::ingest::drop_exact_duplicates(&mut events);
            Some(
                events
                    .iter()
                    .map(|event| (event.user.clone(), event.ts_secs()))
                    .collect::<UserTimeline>(),
            )
        }
        None => None,
    };
    let config = EvalConfig { horizon_secs };
    let score = eval::score(&truth, &alerts, timeline.as_ref(), &config);
    print_stdout(&format!("{}\n{}\n", score.to_table(), score.to_json_line()))?;
    if let Some(path) = &args.baseline {
        let baseline_alerts = read_alert_file(path)?;
        let baseline = eval::score(&truth, &baseline_alerts, timeline.as_ref(), &config);
        let paired = eval::paired::compare_delays(&score, &baseline)
            .expect("both scores come from the same truth records");
        print_stdout(&format!(
            "\nagainst the baseline {}\n{}\n{}\n",
            path.display(),
            paired.to_table(),
            paired.to_json_line()
        ))?;
    }
    Ok(())
}

fn read_alert_file(path: &Path) -> anyhow::Result<Vec<ScoredAlert>> {
    let file = std::fs::File::open(path)
        .map_err(|error| anyhow::anyhow!("cannot open alert file {}: {error}", path.display()))?;
    let lines = eval::read_alerts(std::io::BufReader::new(file))
        .map_err(|error| anyhow::anyhow!("alert file {}: {error}", path.display()))?;
    if let Some(torn) = &lines.torn_last_line {
        torn.warn(path);
    }
    Ok(lines.alerts)
}

/// Prints the statistics table once every input is read. An input that cannot be read, or whose
/// format cannot be detected, thus fails the command before anything reaches standard output.
fn print_stats(args: StatsArgs) -> anyhow::Result<()> {
    let mut table = format!("{}\n", veer::stats::StreamStats::markdown_header());
    if args.with_generated {
        let stream = generate::generate(&GenerateConfig::default());
        let row = veer::stats::compute(&stream.events).to_markdown_row("generator, default");
        table += &format!("{row}\n");
    }
    for path in &args.input.inputs {
        let (mut events, _) =
            veer::ingest::read_events(vec![path.clone()], args.input.source_options())?;
        // `veer run` drops exact duplicates, so they would only inflate the rates.
        let duplicates = veer::ingest::drop_exact_duplicates(&mut events);
        if duplicates > 0 {
            tracing::info!(
                input = %path,
                duplicates,
                "exact duplicate rows dropped, as veer run drops them"
            );
        }
        let row = veer::stats::compute(&events).to_markdown_row(path);
        table += &format!("{row}\n");
    }
    print_stdout(&table)
}

/// Reads the configuration file, if any, and returns the replay settings it implies.
fn replay_settings(
    config: Option<&PathBuf>,
) -> anyhow::Result<(veer::replay::ReplaySettings, veer::config::TimeConfig)> {
    let file = match config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = veer::replay::ReplaySettings {
        detector: file.detector.clone(),
        groups: file.groups.clone(),
        window_ms: (file.time.window.as_millis() as u64).max(1),
        evict_idle_ms: veer::checkpoint::StateSettings::default().evict_idle_ms(),
    };
    Ok((settings, file.time))
}

fn time_zone(
    hours: Option<f64>,
    inputs: &[String],
    options: &SourceOptions,
) -> anyhow::Result<veer::plot::time::TimeZone> {
    match hours {
        Some(hours) => veer::plot::time::TimeZone::from_hours(hours)
            .map_err(|message| anyhow::anyhow!("--tz-offset: {message}")),
        None => Ok(veer::explain::default_zone(inputs, options)),
    }
}

fn write_output(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))
}

fn explain_user(args: ExplainArgs) -> anyhow::Result<()> {
    if args.input.inputs.is_empty() {
        anyhow::bail!("missing --input: explain replays the events of the run");
    }
    let options = args.input.source_options();
    let zone = time_zone(args.tz_offset, &args.input.inputs, &options)?;
    let extension = args.out.as_ref().map(|path| {
        path.extension()
            .and_then(|extension| extension.to_str())
            .unwrap_or("")
            .to_ascii_lowercase()
    });
    match extension.as_deref() {
        None | Some("svg") | Some("html") | Some("htm") => {}
        Some("png") => anyhow::bail!(
            "PNG output is not supported: rendering text to pixels needs system fonts; write \
             --out FILE.svg and convert it, e.g. with rsvg-convert or a browser"
        ),
        Some(other) => anyhow::bail!(
            "unsupported output {}: the extension {other:?} is not .svg or .html",
            args.out.as_deref().unwrap_or(Path::new("")).display()
        ),
    }
    let (replay, _) = replay_settings(args.config.as_ref())?;
    let request = veer::explain::ExplainRequest {
        inputs: args.input.inputs.clone(),
        options,
        user: args.user.clone(),
        alerts: args.alerts.clone(),
        replay,
    };
    let trace = veer::explain::explain(&request)?;
    match (args.out.as_deref(), extension.as_deref()) {
        (Some(path), Some("svg")) => {
            write_output(path, &veer::plot::timeline::render(&trace, zone))?;
        }
        (Some(path), _) => write_output(path, &veer::explain::html_page(&trace, zone))?,
        (None, _) => print_stdout(&veer::explain::text_view(&trace, zone))?,
    }
    if let Some(path) = &args.out {
        eprintln!(
            "wrote the timeline of user {} ({}, {}) to {}",
            args.user,
            veer::explain::plural(trace.events.len(), "event"),
            veer::explain::plural(trace.alerts.len(), "alert"),
            path.display()
        );
    }
    Ok(())
}

fn write_report(args: ReportArgs) -> anyhow::Result<()> {
    let horizon_secs = horizon_arg(&args.horizon)?;
    let options = SourceOptions {
        format: args.format.map(Format::from),
        ..SourceOptions::default()
    };
    let zone = time_zone(args.tz_offset, &args.events, &options)?;
    let (replay, time) = replay_settings(args.config.as_ref())?;
    let request = veer::report::ReportRequest {
        alerts: args.alerts.clone(),
        events: (!args.events.is_empty()).then(|| args.events.clone()),
        options,
        truth: args.truth.clone(),
        horizon_secs,
        zone,
        top: args.top,
        replay,
        time,
    };
    let html = veer::report::build(&request)?;
    write_output(&args.out, &html)?;
    eprintln!("wrote the report to {}", args.out.display());
    Ok(())
}

#[derive(Args)]
struct ScanArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Rounds of a line scan followed by a parse; the medians are printed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Allocate every batch of 4,096 events anew, as `veer run` does with --order auto or
    /// event-time, instead of reusing the emptied batches as it does with --order arrival.
    #[arg(long)]
    new_batches: bool,
}

fn scan_file(args: ScanArgs) -> anyhow::Result<()> {
    if args.input.inputs.is_empty() {
        anyhow::bail!("veer scan needs at least one --input PATH to measure");
    }
    let options = args.input.source_options();
    for path in &args.input.inputs {
        if veer::scan::scan_lines(path)?.lines == 0 {
            print_stdout(&format!("{path}: empty, nothing to measure\n"))?;
            continue;
        }
        let memory = match args.new_batches {
            true => veer::scan::BatchMemory::New,
            false => veer::scan::BatchMemory::Reused,
        };
        let rounds = veer::scan::scan_rounds(path, &options, memory, args.rounds as usize)?;
        print_stdout(&veer::scan::summary(path, memory, &rounds))?;
    }
    Ok(())
}
