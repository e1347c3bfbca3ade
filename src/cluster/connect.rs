//! Connecting the processes of a cluster, with a deadline and a check that they agree.
//!
//! timely's own `create_sockets` retries forever and prints to standard output, where veer may
//! be writing alerts. This module makes the same sockets itself: process `i` listens on its
//! hostfile address, connects to every process below it and accepts every process above it.
//! Each new connection starts with a hello in both directions (a magic tag, the number of
//! processes, the sender's index, its workers per process and a fingerprint of the settings
//! that decide alerts). timely then takes over the sockets, in the order its
//! `initialize_networking_from_sockets` expects.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{ClusterError, ClusterSettings};

/// Tag that starts every hello; the last byte is the version of the handshake.
const MAGIC: [u8; 8] = *b"veer-cl\x01";

/// Bytes of a hello on the wire: the tag and four big-endian u64 values.
const HELLO_BYTES: usize = 8 + 4 * 8;

/// Pause between two connection attempts to a process that is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Maximum wait for the hello of a connection that was accepted, so that a stray client that
/// sends nothing cannot use up the whole deadline.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// The message that each process sends to each other process when they connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Number of processes in the cluster.
    pub processes: u64,
    /// Index of the sending process.
    pub process: u64,
    /// Worker threads per process.
    pub workers: u64,
    /// Fingerprint of the settings that every process must share.
    pub fingerprint: u64,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut bytes = [0u8; HELLO_BYTES];
        bytes[..8].copy_from_slice(&MAGIC);
        let values = [self.processes, self.process, self.workers, self.fingerprint];
        for (slot, value) in bytes[8..].chunks_exact_mut(8).zip(values) {
            slot.copy_from_slice(&value.to_be_bytes());
        }
        bytes
    }

    /// Decodes a hello, or returns `None` when the bytes do not start with the tag.
    fn decode(bytes: &[u8; HELLO_BYTES]) -> Option<Hello> {
        if bytes[..8] != MAGIC {
            return None;
        }
        let value = |index: usize| {
            let start = 8 + index * 8;
            u64::from_be_bytes(bytes[start..start + 8].try_into().expect("8 bytes"))
        };
        Some(Hello {
            processes: value(0),
            process: value(1),
            workers: value(2),
            fingerprint: value(3),
        })
    }

    /// Returns why a peer's hello does not fit this process's, if it does not.
    fn mismatch(&self, peer: &Hello) -> Option<String> {
        if peer.processes != self.processes {
            return Some(format!(
                "it runs with --processes {}, this process with --processes {}",
                peer.processes, self.processes
            ));
        }
        if peer.workers != self.workers {
            return Some(format!(
                "it runs {} workers, this process {}; give every process the same --workers",
                peer.workers, self.workers
            ));
        }
        if peer.fingerprint != self.fingerprint {
            return Some(
                "it runs with other settings: the detector, groups, window, --evict-after, \
                 --models, and whether --profiles or --users is given, must be the same in \
                 every process; give every process the same configuration file and options"
                    .to_string(),
            );
        }
        None
    }
}

/// Connects to every other process of the cluster, or fails once `settings.connect_timeout`
/// has passed.
///
/// Returns one socket per process in index order, with `None` at this process's own index.
pub fn connect_peers(
    settings: &ClusterSettings,
    workers: usize,
    fingerprint: u64,
) -> Result<Vec<Option<TcpStream>>, ClusterError> {
    let deadline = Instant::now() + settings.connect_timeout;
    let own = Hello {
        processes: settings.processes as u64,
        process: settings.process as u64,
        workers: workers as u64,
        fingerprint,
    };
    let own_address = &settings.addresses[settings.process];
    // Listen before connecting, so that higher processes can connect while this one waits
    // for the lower ones. Connections only go from higher to lower indices, so the waits
    // cannot form a cycle.
    let listener = TcpListener::bind(own_address).map_err(|error| ClusterError::Listen {
        address: own_address.clone(),
        process: settings.process,
        error,
    })?;
    tracing::info!(
        process = settings.process,
        processes = settings.processes,
        address = %own_address,
        timeout = ?settings.connect_timeout,
        "connecting the cluster"
    );

    let mut sockets: Vec<Option<TcpStream>> = (0..settings.processes).map(|_| None).collect();
    for (peer, address) in settings.addresses.iter().enumerate().take(settings.process) {
        let stream = connect_to(address, peer, &own, deadline, settings.connect_timeout)?;
        tracing::info!(process = settings.process, peer, %address, "connected to process");
        sockets[peer] = Some(stream);
    }
    accept_from(&listener, &own, &mut sockets, deadline, settings)?;
    for stream in sockets.iter().flatten() {
        // timely's send and receive threads block on these sockets for the whole run.
        stream
            .set_read_timeout(None)
            .map_err(ClusterError::Socket)?;
        stream
            .set_write_timeout(None)
            .map_err(ClusterError::Socket)?;
        stream
            .set_nonblocking(false)
            .map_err(ClusterError::Socket)?;
    }
    tracing::info!(
        process = settings.process,
        processes = settings.processes,
        "cluster connected"
    );
    Ok(sockets)
}

/// Connects to a lower process and exchanges hellos, retrying until the deadline.
fn connect_to(
    address: &str,
    peer: usize,
    own: &Hello,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, ClusterError> {
    let timed_out = || ClusterError::Timeout {
        peer,
        address: address.to_string(),
        timeout,
        waiting: "connect to",
    };
    let mut last_error: Option<io::Error> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            if let Some(error) = &last_error {
                tracing::warn!(peer, %address, %error, "last connection attempt failed");
            }
            return Err(timed_out());
        }
        match try_connect(address, remaining) {
            Ok(mut stream) => {
                let exchange = (|| {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(remaining))?;
                    stream.set_write_timeout(Some(remaining))?;
                    stream.write_all(&own.encode())?;
                    read_hello(&mut stream)
                })();
                match exchange {
                    Ok(Some(hello)) => {
                        check_peer(own, &hello, peer, address)?;
                        return Ok(stream);
                    }
                    Ok(None) => {
                        return Err(ClusterError::NotAPeer {
                            address: address.to_string(),
                        })
                    }
                    Err(error) if is_timeout(&error) => return Err(timed_out()),
                    // The peer closed the connection during the hello, because it rejected this
                    // process or is restarting. Its own log has the reason.
                    Err(error) => last_error = Some(error),
                }
            }
            Err(error) => {
                tracing::debug!(peer, %address, %error, "process not reachable yet; retrying");
                last_error = Some(error);
            }
        }
        std::thread::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Opens a TCP connection to the first resolved address that accepts it.
fn try_connect(address: &str, remaining: Duration) -> io::Result<TcpStream> {
    let resolved: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    );
    for socket_address in resolved {
        match TcpStream::connect_timeout(&socket_address, remaining.min(Duration::from_secs(2))) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Accepts every higher process and replies to each hello with this process's own.
fn accept_from(
    listener: &TcpListener,
    own: &Hello,
    sockets: &mut [Option<TcpStream>],
    deadline: Instant,
    settings: &ClusterSettings,
) -> Result<(), ClusterError> {
    listener
        .set_nonblocking(true)
        .map_err(ClusterError::Socket)?;
    let own_index = settings.process;
    loop {
        let missing: Vec<usize> = (own_index + 1..settings.processes)
            .filter(|&peer| sockets[peer].is_none())
            .collect();
        let Some(&first_missing) = missing.first() else {
            return Ok(());
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClusterError::Timeout {
                peer: first_missing,
                address: settings.addresses[first_missing].clone(),
                timeout: settings.connect_timeout,
                waiting: "be reached by",
            });
        }
        let (mut stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20).min(remaining));
                continue;
            }
            Err(error) => return Err(ClusterError::Socket(error)),
        };
        let hello = (|| {
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(remaining.min(HELLO_WAIT)))?;
            stream.set_write_timeout(Some(remaining.min(HELLO_WAIT)))?;
            read_hello(&mut stream)
        })();
        let hello = match hello {
            Ok(Some(hello)) => hello,
            Ok(None) => {
                tracing::warn!(%from, "closed a connection that is not from a veer process");
                continue;
            }
            Err(error) => {
                tracing::warn!(%from, %error, "closed a connection that sent no hello");
                continue;
            }
        };
        // Reply first, so that the peer can report a mismatch too.
        if let Err(error) = stream.write_all(&own.encode()) {
            tracing::warn!(%from, %error, "failed to send the hello reply to a connecting process");
            continue;
        }
        let peer = hello.process as usize;
        let address = from.to_string();
        check_peer(own, &hello, peer, &address)?;
        if peer <= own_index || peer >= settings.processes {
            return Err(ClusterError::UnexpectedPeer {
                peer,
                address,
                process: own_index,
            });
        }
        if sockets[peer].is_some() {
            return Err(ClusterError::DuplicateProcess { peer, address });
        }
        tracing::info!(process = own_index, peer, %from, "accepted process");
        sockets[peer] = Some(stream);
    }
}

/// Reads a hello; `Ok(None)` when the first bytes are not a veer hello.
fn read_hello(stream: &mut TcpStream) -> io::Result<Option<Hello>> {
    let mut bytes = [0u8; HELLO_BYTES];
    stream.read_exact(&mut bytes)?;
    Ok(Hello::decode(&bytes))
}

fn check_peer(own: &Hello, peer: &Hello, index: usize, address: &str) -> Result<(), ClusterError> {
    match own.mismatch(peer) {
        Some(reason) => Err(ClusterError::Mismatch {
            peer: index,
            address: address.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let hello = Hello {
            processes: 3,
            process: 2,
            workers: 4,
            fingerprint: u64::MAX - 5,
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        let mut foreign = hello.encode();
        foreign[0] = b'G';
        assert_eq!(Hello::decode(&foreign), None);
    }

    #[test]
    fn mismatch_names_the_setting() {
        let own = Hello {
            processes: 2,
            process: 0,
            workers: 2,
            fingerprint: 9,
        };
        let same = Hello { process: 1, ..own };
        assert_eq!(own.mismatch(&same), None);
        let reason = own.mismatch(&Hello { workers: 3, ..same }).unwrap();
        assert!(reason.contains("3 workers"), "{reason}");
        let reason = own
            .mismatch(&Hello {
                processes: 3,
                ..same
            })
            .unwrap();
        assert!(reason.contains("--processes 3"), "{reason}");
        let reason = own
            .mismatch(&Hello {
                fingerprint: 1,
                ..same
            })
            .unwrap();
        assert!(reason.contains("configuration"), "{reason}");
    }
}
