//! Turning the loss of another process of the cluster into an error.
//!
//! timely_communication 0.32 reports a broken connection only by panicking
//! (`allocator/zero_copy/tcp.rs`). The network thread of the connection, named
//! `timely:recv-P` or `timely:send-P` for the other process `P`, panics with a message that
//! starts with "timely communication error:". Its queues to the workers are then poisoned, so
//! each worker panics with "MergeQueue poisoned." at its next step, and joining the network
//! threads panics again ("Send thread panic", "Recv thread panic").
//!
//! [`install_hook`] sets a panic hook that records the first such failure with the peer's
//! index, and keeps the panics that follow from it off standard error. Every other panic
//! goes to the previous hook unchanged. The run then reads the failure with [`lost_peer`] and
//! ends with one error that names the peer.
//!
//! NOTE: a worker can still panic a second time while it unwinds, because timely's
//! `SendEndpoint::drop` pushes to the poisoned queue. Rust then aborts the process, which this
//! hook cannot prevent (seen in about 1 of 10 test runs on loopback).

use std::panic::PanicHookInfo;
use std::sync::{Once, OnceLock};

/// Start of the panic message of timely's network threads for a failed read or write.
const NETWORK_ERROR: &str = "timely communication error: ";

/// Panic messages that follow from a network thread's failure: a worker's poisoned queue,
/// and the join of a panicked network thread.
const FOLLOW_UPS: [&str; 3] = [
    "MergeQueue poisoned.",
    "Send thread panic",
    "Recv thread panic",
];

/// Connection of this process to another one that failed during the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLoss {
    /// Index of the other process.
    pub peer: usize,
    /// timely's description of the failure, such as `reading data: socket closed`.
    pub cause: String,
}

static LOSS: OnceLock<PeerLoss> = OnceLock::new();
static HOOK: Once = Once::new();

/// Installs the panic hook that recognises a lost connection. Later calls do nothing.
pub fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !record(info) {
                previous(info);
            }
        }));
    });
}

/// Returns the first connection failure of this process's run, if one happened.
pub fn lost_peer() -> Option<&'static PeerLoss> {
    LOSS.get()
}

/// Returns the error of a run that lost a connection, naming the other process and its
/// address in `cluster`, or `None` when no connection failed.
pub fn error_text(cluster: &super::ClusterSettings) -> Option<String> {
    let loss = lost_peer()?;
    let address = cluster
        .addresses
        .get(loss.peer)
        .map_or("an unknown address", String::as_str);
    Some(format!(
        "lost the connection to process {} at {address} ({}), so the run was cut short and \
         its outputs hold only what was written before the loss",
        loss.peer, loss.cause
    ))
}

/// Records a network thread's failure, and returns whether the panic is one that the loss
/// explains, so that the hook prints nothing for it.
fn record(info: &PanicHookInfo<'_>) -> bool {
    let message = panic_message(info);
    let thread = std::thread::current();
    if let Some(loss) = recognise(thread.name(), message) {
        let first = LOSS.set(loss.clone()).is_ok();
        if first {
            tracing::debug!(peer = loss.peer, cause = %loss.cause, "cluster connection failed");
        }
        return true;
    }
    LOSS.get().is_some() && message.is_some_and(|text| FOLLOW_UPS.contains(&text))
}

/// Returns the failure that a panic of the thread `thread` with `message` reports, when it
/// is a network thread's read or write error.
fn recognise(thread: Option<&str>, message: Option<&str>) -> Option<PeerLoss> {
    let cause = message?.strip_prefix(NETWORK_ERROR)?;
    let thread = thread?;
    let peer = thread
        .strip_prefix("timely:recv-")
        .or_else(|| thread.strip_prefix("timely:send-"))?
        .parse()
        .ok()?;
    Some(PeerLoss {
        peer,
        cause: cause.to_string(),
    })
}

/// Returns a panic's message when it is text, as `panic!` with a format string makes it.
fn panic_message<'a>(info: &'a PanicHookInfo<'_>) -> Option<&'a str> {
    let payload = info.payload();
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_thread_failure_recognised() {
        let loss = recognise(
            Some("timely:recv-3"),
            Some("timely communication error: reading data: socket closed"),
        );
        assert_eq!(
            loss,
            Some(PeerLoss {
                peer: 3,
                cause: "reading data: socket closed".into()
            })
        );
        let loss = recognise(
            Some("timely:send-1"),
            Some("timely communication error: flushing writer: Broken pipe (os error 32)"),
        );
        assert_eq!(loss.map(|loss| loss.peer), Some(1));
    }

    #[test]
    fn other_panics_not_recognised() {
        let message = Some("timely communication error: reading data: socket closed");
        assert_eq!(recognise(Some("timely:work-0"), message), None);
        assert_eq!(recognise(None, message), None);
        assert_eq!(recognise(Some("timely:recv-x"), message), None);
        assert_eq!(
            recognise(Some("timely:recv-1"), Some("MergeQueue poisoned.")),
            None
        );
        assert_eq!(recognise(Some("timely:recv-1"), None), None);
    }
}
