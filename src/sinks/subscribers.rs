//! The TCP subscriber sink: a socket that streams every alert as a JSON line to each
//! connected client.
//!
//! A subscriber receives the alerts released after it connected, in canonical order; there
//! is no replay of earlier alerts. Each subscriber has its own bounded queue and writer
//! thread. A subscriber is disconnected with a log line when its queue stays full for 50 ms
//! (it reads more slowly than alerts arrive) or one write to it blocks longer than
//! `write_timeout`. So a slow subscriber holds back the others and the dataflow 50 ms at most. Subscribers are a live feed: an
//! alert counts as delivered by this sink once it is queued to every connected subscriber.
//!
//! A subscriber that closes its connection frees its slot within about 20 ms, even when no
//! alert is written: the accept thread polls every subscriber's socket for end of stream or an
//! error. Bytes a subscriber sends are read and discarded. A subscriber that shuts down only
//! its sending side is dropped too, because that looks the same as a closed connection.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};

use super::{send_all, AlertRecord, Message, SinkStats, SubscriberConfig};
use crate::metrics::SinkMetrics;
use crate::rate_limit::RateLimited;

/// Time a full subscriber queue may take to make room before the subscriber is dropped.
const FULL_QUEUE_GRACE: Duration = Duration::from_millis(50);

/// The sink thread's handle on one connected subscriber.
struct Client {
    peer: SocketAddr,
    queue: Sender<Arc<AlertRecord>>,
    /// A second handle on the socket, to shut it down and unblock a stuck writer.
    stream: TcpStream,
    writer: JoinHandle<()>,
}

/// Counters shared by the accept thread and the writer threads.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    dropped: AtomicU64,
}

/// The subscriber socket and its clients.
pub(crate) struct SubscriberSink {
    address: SocketAddr,
    config: SubscriberConfig,
    clients: Arc<Mutex<Vec<Client>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    stats: SinkStats,
}

/// Parses `listen`: `host:port`, or a bare port on 127.0.0.1.
fn listen_address(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    let full = if text.chars().all(|c| c.is_ascii_digit()) {
        format!("127.0.0.1:{text}")
    } else {
        text.to_string()
    };
    full.parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid --alerts-listen {text:?}: expected host:port such as 127.0.0.1:7300, or a port"
        )
    })
}

impl SubscriberSink {
    /// Binds the socket and starts accepting subscribers.
    pub(crate) fn bind(text: &str, config: &SubscriberConfig) -> anyhow::Result<SubscriberSink> {
        let requested = listen_address(text)?;
        let listener = TcpListener::bind(requested).map_err(|error| {
            anyhow::anyhow!("cannot listen for alert subscribers on {requested}: {error}")
        })?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        tracing::info!(%address, "alert subscriber socket listening");

        let clients = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let clients = clients.clone();
            let counters = counters.clone();
            let stop = stop.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("veer-subscribers".into())
                .spawn(move || accept_loop(listener, &config, &clients, &counters, &stop))?
        };
        Ok(SubscriberSink {
            address,
            config: config.clone(),
            clients,
            counters,
            stop,
            acceptor: Some(acceptor),
            stats: SinkStats::named(&format!("subscribers {address}")),
        })
    }

    pub(crate) fn name(&self) -> String {
        self.stats.name.clone()
    }

    /// Fans alerts out to the subscribers until the queue closes, then lets each subscriber
    /// drain its queue and closes the socket.
    pub(crate) fn run(mut self, receiver: Receiver<Message>, live: Arc<SinkMetrics>) -> SinkStats {
        for message in receiver.iter() {
            match message {
                Message::Alert(record) => {
                    self.stats.received += 1;
                    self.fan_out(record);
                    self.stats.delivered += 1;
                    live.delivered(1);
                }
                // Subscribers are a live feed, so a flush does not wait for them.
                Message::Flush(ack) => {
                    let _ = ack.send(());
                }
            }
        }

        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let clients = std::mem::take(&mut *lock(&self.clients));
        for client in clients {
            drop(client.queue);
            let _ = client.writer.join();
        }
        self.stats.subscribers = self.counters.connected.load(Ordering::Relaxed);
        self.stats.dropped_subscribers = self.counters.dropped.load(Ordering::Relaxed);
        tracing::info!(address = %self.address, subscribers = self.stats.subscribers, "alert subscriber socket closed");
        self.stats
    }

    fn fan_out(&mut self, record: Arc<AlertRecord>) {
        let mut clients = lock(&self.clients);
        let mut index = 0;
        while index < clients.len() {
            // A burst can fill the queue of a subscriber that reads well, so a full queue gets
            // a short grace before the subscriber counts as slow.
            let sent = match clients[index].queue.try_send(record.clone()) {
                Err(TrySendError::Full(record)) => {
                    match clients[index].queue.send_timeout(record, FULL_QUEUE_GRACE) {
                        Ok(()) => Ok(()),
                        Err(SendTimeoutError::Timeout(record)) => Err(TrySendError::Full(record)),
                        Err(SendTimeoutError::Disconnected(record)) => {
                            Err(TrySendError::Disconnected(record))
                        }
                    }
                }
                other => other,
            };
            match sent {
                Ok(()) => index += 1,
                Err(TrySendError::Full(_)) => {
                    let client = clients.swap_remove(index);
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        peer = %client.peer,
                        queue = self.config.queue,
                        alert_id = %record.id,
                        "alert subscriber dropped: its queue is full because it reads too slowly"
                    );
                    let _ = client.stream.shutdown(std::net::Shutdown::Both);
                }
                // The writer ended: the subscriber left or its write timed out (logged there).
                Err(TrySendError::Disconnected(_)) => {
                    clients.swap_remove(index);
                }
            }
        }
    }
}

fn lock(clients: &Mutex<Vec<Client>>) -> std::sync::MutexGuard<'_, Vec<Client>> {
    clients
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Time the accept thread waits for a new subscriber, or for input from a connected one,
/// before it checks the stop flag again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

fn accept_loop(
    listener: TcpListener,
    config: &SubscriberConfig,
    clients: &Mutex<Vec<Client>>,
    counters: &Arc<Counters>,
    stop: &AtomicBool,
) {
    let mut rejections = RateLimited::new(Duration::from_secs(1));
    let mut sockets = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        wait_for_sockets(&listener, clients, &mut sockets);
        let (listener_socket, client_sockets) = sockets.split_first().expect("listener polled");
        let readable: Vec<RawFd> = client_sockets
            .iter()
            .filter(|socket| socket.revents != 0)
            .map(|socket| socket.fd)
            .collect();
        if !readable.is_empty() {
            remove_departed(clients, &readable);
        }
        if listener_socket.revents == 0 {
            continue;
        }

        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
            Err(error) => {
                tracing::warn!(%error, "failed to accept an alert subscriber");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        let mut clients = lock(clients);
        if clients.len() >= config.max_clients {
            if let Some(suppressed) = rejections.allow() {
                tracing::warn!(
                    %peer,
                    max_clients = config.max_clients,
                    suppressed,
                    "alert subscriber rejected: too many subscribers"
                );
            }
            continue;
        }
        match start_client(stream, peer, config, counters) {
            Ok(client) => {
                counters.connected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, "alert subscriber connected");
                clients.push(client);
            }
            Err(error) => tracing::warn!(%peer, %error, "failed to set up an alert subscriber"),
        }
    }
}

/// Waits up to `POLL_INTERVAL` until the listener has a connection to accept or a subscriber
/// has sent bytes, closed its connection or failed. `sockets` gets the listener first, then
/// every subscriber, each with the events that poll(2) reported.
fn wait_for_sockets(
    listener: &TcpListener,
    clients: &Mutex<Vec<Client>>,
    sockets: &mut Vec<libc::pollfd>,
) {
    let readable = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    sockets.clear();
    sockets.push(readable(listener.as_raw_fd()));
    sockets.extend(
        lock(clients)
            .iter()
            .map(|client| readable(client.stream.as_raw_fd())),
    );
    // SAFETY: `sockets` is a live array of as many pollfd entries as passed. A descriptor
    // closed meanwhile is reported as POLLNVAL, and remove_departed ignores it because no
    // listed subscriber has it any more.
    let ready = unsafe {
        libc::poll(
            sockets.as_mut_ptr(),
            sockets.len() as libc::nfds_t,
            POLL_INTERVAL.as_millis() as libc::c_int,
        )
    };
    if ready < 0 {
        // Interrupted by a signal: the next round polls again.
        sockets.iter_mut().for_each(|socket| socket.revents = 0);
    }
}

/// Frees the slots of the subscribers, among those whose sockets in `ready` poll(2) reported,
/// that closed their connection or whose socket failed.
fn remove_departed(clients: &Mutex<Vec<Client>>, ready: &[RawFd]) {
    let mut clients = lock(clients);
    for &fd in ready {
        // The sink thread may have dropped the subscriber since the poll.
        let Some(index) = clients
            .iter()
            .position(|client| client.stream.as_raw_fd() == fd)
        else {
            continue;
        };
        let Some(reason) = read_departure(&clients[index].stream) else {
            continue;
        };
        let client = clients.swap_remove(index);
        tracing::info!(peer = %client.peer, reason = %reason, "alert subscriber disconnected");
        // Dropping the client closes its queue, so its writer thread ends.
        let _ = client.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads, without blocking, what a subscriber sent, and returns why the subscriber is gone
/// when it closed its connection or its socket failed. Subscribers are not expected to send
/// anything, so bytes they send are discarded. A subscriber that only shuts down its sending
/// side also counts as gone, because end of stream looks the same as a closed connection.
fn read_departure(stream: &TcpStream) -> Option<String> {
    let mut discarded = [0u8; 4096];
    // SAFETY: `discarded` is a live buffer of the length passed, and the descriptor belongs
    // to `stream`, which outlives the call.
    let read = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            discarded.as_mut_ptr().cast(),
            discarded.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match read {
        0 => Some("the subscriber closed the connection".to_string()),
        read if read > 0 => None,
        _ => {
            let error = std::io::Error::last_os_error();
            match error.kind() {
                ErrorKind::WouldBlock | ErrorKind::Interrupted => None,
                _ => Some(error.to_string()),
            }
        }
    }
}

fn start_client(
    stream: TcpStream,
    peer: SocketAddr,
    config: &SubscriberConfig,
    counters: &Arc<Counters>,
) -> std::io::Result<Client> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    stream.set_nodelay(true)?;
    limit_send_buffer(&stream, SEND_BUFFER_BYTES)?;
    let (queue, alerts) = bounded::<Arc<AlertRecord>>(config.queue);
    let writer_stream = stream.try_clone()?;
    let counters = counters.clone();
    let writer = std::thread::Builder::new()
        .name("veer-subscriber".into())
        .spawn(move || write_loop(writer_stream, peer, alerts, &counters))?;
    Ok(Client {
        peer,
        queue,
        stream,
        writer,
    })
}

/// Kernel send buffer per subscriber, in bytes. Linux grows a socket's send buffer on its own
/// (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default), which would hide a subscriber that
/// stopped reading. A fixed size keeps the memory per subscriber bounded, so a stalled
/// subscriber soon shows up as a full queue or a write timeout.
const SEND_BUFFER_BYTES: libc::c_int = 32 * 1024;

fn limit_send_buffer(stream: &TcpStream, bytes: libc::c_int) -> std::io::Result<()> {
    crate::socket_option::set_int(stream, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes)
}

/// Writes queued alerts to one subscriber, several lines per write when they pile up.
fn write_loop(
    stream: TcpStream,
    peer: SocketAddr,
    alerts: Receiver<Arc<AlertRecord>>,
    counters: &Counters,
) {
    let mut buffer = Vec::new();
    while let Ok(first) = alerts.recv() {
        buffer.clear();
        for record in std::iter::once(first).chain(alerts.try_iter()) {
            buffer.extend_from_slice(record.line.as_bytes());
            buffer.push(b'\n');
        }
        if let Err(error) = send_all(&stream, &buffer) {
            if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "alert subscriber dropped: a write blocked longer than the write timeout");
            } else {
                tracing::info!(%peer, %error, "alert subscriber disconnected");
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_defaults_to_loopback() {
        assert_eq!(
            listen_address("7300").unwrap(),
            "127.0.0.1:7300".parse().unwrap()
        );
        assert_eq!(
            listen_address("[::1]:0").unwrap(),
            "[::1]:0".parse().unwrap()
        );
        assert!(listen_address("localhost:x").is_err());
    }
}
