//! The TCP source of `veer serve`: many clients send events as lines (JSON lines, Taobao or
//! REES46 CSV) to one or more listening addresses.
//!
//! One acceptor thread per address accepts clients and starts one reader thread per
//! connection. A reader thread splits its socket's bytes into lines, parses them and sends
//! batches of events to worker 0 through one bounded channel, so that when the engine falls
//! behind, reader threads block, stop reading, and TCP backpressure slows the senders.
//! Each connection is its own event-time source ([`crate::frontier`]).
//!
//! Limits, each enforced with a log line that names the connection and the limit:
//! - a line longer than `max_line_bytes` is one bad record and closes its connection, and
//!   no more than the limit is ever held;
//! - a partial line not finished within `line_timeout` of its first byte is one bad record and
//!   closes its connection (a silent connection without a partial line stays open);
//! - `max_bad_lines` consecutive bad lines close the connection (a client sending another
//!   format or binary data);
//! - beyond `max_clients` open connections, new ones are closed at once;
//! - when more than `max_buffered_events` events wait for the frontier, connections ahead of
//!   the frontier are not read until it catches up; the connections that hold the frontier
//!   back are still read, so they cannot be stalled.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use veer_models::Event;

use crate::ingest::DeadLetter;
use crate::rate_limit::RateLimited;
use crate::sources::{self, Format};

mod args;
mod connection;
pub mod feed;

pub use args::ListenArgs;
pub use feed::WholeLineWriter;

/// How often blocked reads and accepts wake up to check for shutdown and timeouts.
const POLL: Duration = Duration::from_millis(200);
/// Bytes read from a socket at once.
const READ_BYTES: usize = 64 * 1024;
/// Events in one batch sent to worker 0.
const BATCH: usize = 4096;
/// Batches that may wait in the channel to worker 0.
const CHANNEL_BATCHES: usize = 64;

/// `[listen]`: the TCP source of `veer serve` and `veer run --listen`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Address `veer serve` listens on when no `--listen` is given.
    pub address: String,
    /// Maximum length of one line in bytes.
    pub max_line_bytes: usize,
    /// Maximum open connections.
    pub max_clients: usize,
    /// Time from the first byte of a line to its end.
    #[serde(with = "crate::config::duration_text")]
    pub line_timeout: Duration,
    /// Consecutive bad lines that close a connection.
    pub max_bad_lines: u64,
    /// Events waiting for the frontier beyond which connections ahead of it are not read.
    pub max_buffered_events: u64,
    /// Interval of the input status log line; zero turns it off.
    #[serde(with = "crate::config::duration_text")]
    pub status_interval: Duration,
}

/// Default address of `veer serve`: loopback only, port 7700.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:7700";

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: DEFAULT_ADDRESS.into(),
            max_line_bytes: sources::DEFAULT_MAX_LINE_BYTES,
            max_clients: 256,
            line_timeout: Duration::from_secs(10),
            max_bad_lines: 1000,
            max_buffered_events: 262_144,
            status_interval: Duration::from_secs(10),
        }
    }
}

/// Settings of a TCP source.
#[derive(Clone, Debug)]
pub struct ListenSettings {
    /// Addresses to listen on.
    pub addresses: Vec<String>,
    /// Input format, or `None` to detect it per connection from its first line.
    pub format: Option<Format>,
    /// Limits and intervals.
    pub limits: ListenConfig,
    /// Time without events after which a connection stops holding back event time.
    pub idle_timeout: Duration,
    /// Time after the start during which the frontier does not move.
    pub startup_hold: Duration,
}

/// One message from a connection's reader thread to worker 0.
pub enum SourceMessage {
    /// A connection was accepted. `watermark` is written by worker 0 (Unix milliseconds, 0
    /// before the first event) and read by the reader thread to decide whether it is ahead.
    Opened {
        source: u64,
        label: Arc<str>,
        watermark: Arc<AtomicU64>,
    },
    /// Parsed events in arrival order. `read_at` is when the reader thread received the
    /// bytes that ended their lines, the start of their event-to-alert latency.
    Events {
        source: u64,
        events: Vec<Event>,
        read_at: Instant,
    },
    /// The connection ended; its line counts are final.
    Closed { source: u64 },
}

/// State shared by worker 0, the acceptors and the reader threads.
#[derive(Default)]
pub struct ListenShared {
    /// The input frontier (Unix milliseconds), written by worker 0.
    pub frontier_ms: AtomicU64,
    /// Events sent into the dataflow that wait for the frontier, written by worker 0.
    pub buffered_events: AtomicU64,
    /// Lines read from all connections.
    pub lines: AtomicU64,
    /// Blank lines and header lines.
    pub skipped: AtomicU64,
    /// Bad records, including lines over the limit and unfinished lines.
    pub bad: AtomicU64,
    /// Bytes read from all connections.
    pub bytes: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections accepted since the start.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_clients` were open.
    pub rejected: AtomicU64,
    /// Worker 0's thread, unparked when a batch is sent.
    worker: OnceLock<Thread>,
}

impl ListenShared {
    fn wake_worker(&self) {
        if let Some(thread) = self.worker.get() {
            thread.unpark();
        }
    }
}

/// Bound listening sockets, ready to be started on worker 0.
pub struct ListenSource {
    /// The bound sockets until [`ListenSource::start`] moves them to the acceptor threads,
    /// which close them when a shutdown stops accepting.
    listeners: Mutex<Vec<(TcpListener, SocketAddr)>>,
    addresses: Vec<SocketAddr>,
    settings: Arc<ListenSettings>,
    /// Counts and the flow-control state shared with worker 0.
    pub shared: Arc<ListenShared>,
}

impl ListenSource {
    /// Binds every address of `settings`. A bare port number means `127.0.0.1:PORT`.
    pub fn bind(settings: ListenSettings) -> anyhow::Result<ListenSource> {
        if settings.format == Some(Format::RetailRocket) {
            anyhow::bail!(
                "--format retailrocket is not supported on --listen: its item properties are \
                 joined from files; use jsonl, taobao or rees46"
            );
        }
        let limits = [
            ("max_line_bytes", settings.limits.max_line_bytes),
            ("max_clients", settings.limits.max_clients),
        ];
        for (key, value) in limits {
            if value == 0 {
                anyhow::bail!(
                    "invalid {key} 0 (--{} or {key} under [listen]): it must be at least 1",
                    key.replace('_', "-")
                );
            }
        }
        let mut listeners = Vec::new();
        let mut bound: Vec<String> = Vec::new();
        for option in &settings.addresses {
            let address = normalize_address(option);
            check_listen_address(option, &address, &bound)?;
            let listener = TcpListener::bind(&address)
                .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))?;
            let local = listener.local_addr()?;
            listeners.push((listener, local));
            bound.push(address);
        }
        Ok(ListenSource {
            addresses: listeners.iter().map(|(_, address)| *address).collect(),
            listeners: Mutex::new(listeners),
            settings: Arc::new(settings),
            shared: Arc::new(ListenShared::default()),
        })
    }

    /// Returns the bound addresses (useful with port 0).
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        self.addresses.clone()
    }

    /// Returns the source's settings.
    pub fn settings(&self) -> &ListenSettings {
        &self.settings
    }

    /// Starts the acceptor threads and returns the channel that events arrive on. The channel
    /// disconnects once a shutdown is requested and every connection has ended. Only the
    /// first call listens, because the acceptors take the sockets.
    pub fn start(
        &self,
        worker: Thread,
        dead_letter: DeadLetter,
    ) -> anyhow::Result<Receiver<SourceMessage>> {
        let _ = self.shared.worker.set(worker);
        let (sender, receiver) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let next_id = Arc::new(AtomicU64::new(1));
        let listeners = std::mem::take(&mut *self.listeners.lock().expect("listener lock"));
        for (listener, address) in listeners {
            listener.set_nonblocking(true)?;
            let acceptor = Acceptor {
                listener,
                address,
                settings: self.settings.clone(),
                shared: self.shared.clone(),
                sender: sender.clone(),
                dead_letter: dead_letter.clone(),
                next_id: next_id.clone(),
            };
            std::thread::Builder::new()
                .name(format!("veer-accept-{address}"))
                .spawn(move || acceptor.run())?;
            tracing::info!(address = %address, "listening for events");
        }
        Ok(receiver)
    }
}

/// Turns a bare port into a loopback address.
fn normalize_address(address: &str) -> String {
    if !address.is_empty() && address.bytes().all(|byte| byte.is_ascii_digit()) {
        format!("127.0.0.1:{address}")
    } else {
        address.to_string()
    }
}

/// Rejects a `--listen` value (`option`, normalized to `address`) that lacks a port or repeats
/// an address bound already (`bound`), with a message that names the fix. A repeated port 0
/// is allowed, because each picks its own port.
fn check_listen_address(option: &str, address: &str, bound: &[String]) -> anyhow::Result<()> {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        let example = SocketAddr::new(ip, 7700);
        anyhow::bail!(
            "invalid --listen {option}: the address has no port; add one, such as {example}"
        );
    }
    let port_zero = address
        .rsplit_once(':')
        .is_some_and(|(_, port)| port == "0");
    if !port_zero && bound.iter().any(|earlier| earlier == address) {
        anyhow::bail!("invalid --listen {option}: the address {address} is given twice");
    }
    Ok(())
}

struct Acceptor {
    listener: TcpListener,
    address: SocketAddr,
    settings: Arc<ListenSettings>,
    shared: Arc<ListenShared>,
    sender: Sender<SourceMessage>,
    dead_letter: DeadLetter,
    next_id: Arc<AtomicU64>,
}

impl Acceptor {
    fn run(self) {
        let mut rejections = RateLimited::new(Duration::from_secs(1));
        while !crate::shutdown::requested() {
            if !wait_readable(&self.listener, POLL) {
                continue;
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) => {
                    tracing::warn!(address = %self.address, %error, "failed to accept a connection; retrying");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            let limit = self.settings.limits.max_clients;
            if self.shared.open.load(Ordering::Acquire) >= limit {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = rejections.allow() {
                    tracing::warn!(
                        %peer,
                        max_clients = limit,
                        suppressed,
                        "connection rejected: the maximum number of clients is open"
                    );
                }
                drop(stream);
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.shared.open.fetch_add(1, Ordering::AcqRel);
            self.shared.accepted.fetch_add(1, Ordering::Relaxed);
            let connection = connection::Connection {
                stream,
                id,
                peer,
                settings: self.settings.clone(),
                shared: self.shared.clone(),
                sender: self.sender.clone(),
                dead_letter: self.dead_letter.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("veer-conn-{id}"))
                .stack_size(256 * 1024)
                .spawn(move || connection.run());
            if let Err(error) = spawned {
                self.shared.open.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(%peer, connection = id, %error, "failed to start a connection thread; connection closed");
            }
        }
        // Closing the socket makes new connections fail at once instead of waiting unread.
        drop(self.listener);
        tracing::info!(address = %self.address, "stopped listening");
        // Worker 0 ends its feed loop once every sender is gone, so let it look now.
        drop(self.sender);
        self.shared.wake_worker();
    }
}

/// Waits up to `timeout` for the listener to have a connection to accept.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    ready > 0
}
