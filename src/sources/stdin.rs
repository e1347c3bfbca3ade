//! Standard input that ends when a shutdown is requested.
//!
//! A read on a pipe whose writer is silent blocks without limit. This reader waits for data
//! with `poll(2)` in short steps and, once a shutdown is requested, reports the end of the
//! input instead of reading on. The lines already read are then parsed and processed like
//! those of an input that ended, so nothing taken from the pipe is lost.

use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// How long one wait for data lasts before the shutdown flag is checked again, in milliseconds.
const POLL_MS: libc::c_int = 200;

/// Whether a shutdown ended standard input before its writer closed it.
static CUT: AtomicBool = AtomicBool::new(false);

/// Returns whether a shutdown ended standard input before its writer closed it.
pub fn cut_by_shutdown() -> bool {
    CUT.load(Ordering::Acquire)
}

/// Standard input read from file descriptor 0 without the buffer of [`std::io::Stdin`], so
/// that `poll(2)` reports every byte not yet read.
pub(super) struct StdinUntilShutdown {
    file: ManuallyDrop<File>,
}

impl StdinUntilShutdown {
    pub(super) fn new() -> Self {
        // SAFETY: descriptor 0 stays open for the life of the process, and `ManuallyDrop`
        // keeps this `File` from closing it.
        let file = unsafe { File::from_raw_fd(libc::STDIN_FILENO) };
        StdinUntilShutdown {
            file: ManuallyDrop::new(file),
        }
    }
}

impl Read for StdinUntilShutdown {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            if crate::shutdown::requested() {
                CUT.store(true, Ordering::Release);
                return Ok(0);
            }
            let mut descriptor = libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `descriptor` is one valid `pollfd` that outlives the call.
            let ready = unsafe { libc::poll(&mut descriptor, 1, POLL_MS) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            // Readable, closed by the writer or in error: the read reports which.
            if ready > 0 {
                return self.file.read(buffer);
            }
        }
    }
}
