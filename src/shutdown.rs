//! Graceful shutdown on SIGTERM and SIGINT.
//!
//! The first signal sets a process-wide flag: sources stop accepting and reading, the events
//! already read are processed, the last windows close as at the end of the input, outputs are
//! flushed and the run exits 0. A run that writes checkpoints stops differently, because a
//! `--resume` continues it: it sends no more events, writes a last checkpoint at the cut it
//! has reached, and writes none of the alerts that closing the open windows early releases.
//! Code that must act on shutdown reads [`requested`]; threads that park register with
//! [`wake_on_request`] so the signal wakes them. A second SIGINT ends the process at once with exit code 130, because a
//! shutdown that stalls must still be stoppable; results in flight are then lost, but the alert
//! writer only ever writes whole lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Instant;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Exit code of a forced exit after a second SIGINT (128 + SIGINT, as shells report it).
pub const FORCED_EXIT_CODE: i32 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static REQUESTED_AT: OnceLock<Instant> = OnceLock::new();
static WAKERS: Mutex<Vec<Thread>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Returns whether a shutdown was requested (by a signal or by [`request`]).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Acquire)
}

/// Returns when the first shutdown request came, or `None` before one.
pub fn requested_at() -> Option<Instant> {
    REQUESTED_AT.get().copied()
}

/// Requests a shutdown, as the first SIGTERM or SIGINT does, and wakes registered threads.
pub fn request() {
    REQUESTED_AT.get_or_init(Instant::now);
    REQUESTED.store(true, Ordering::Release);
    let wakers = WAKERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for thread in wakers.iter() {
        thread.unpark();
    }
}

/// Registers a thread to be unparked when a shutdown is requested.
pub fn wake_on_request(thread: Thread) {
    WAKERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(thread);
}

/// Installs the SIGTERM and SIGINT handlers and the thread that acts on them. Calling it
/// again does nothing.
pub fn install() -> anyhow::Result<()> {
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|error| anyhow::anyhow!("failed to install the signal handlers: {error}"))?;
    std::thread::Builder::new()
        .name("veer-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if !requested() {
                    tracing::info!(
                        signal = name,
                        "shutdown requested: no new input is read; finishing the events \
                         already read (send SIGINT again to exit at once)"
                    );
                    request();
                } else if signal == SIGINT {
                    // Written directly: the process exits before a log writer could run.
                    eprintln!(
                        "error: second SIGINT: exiting at once with code {FORCED_EXIT_CODE}; \
                         alerts and events in flight may be lost"
                    );
                    std::process::exit(FORCED_EXIT_CODE);
                } else {
                    tracing::warn!(
                        signal = name,
                        "shutdown already in progress; send SIGINT to exit at once"
                    );
                }
            }
        })
        .map_err(|error| anyhow::anyhow!("failed to start the signal thread: {error}"))?;
    let _ = INSTALLED.set(());
    Ok(())
}
