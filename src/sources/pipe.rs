//! Standard input and other pipes that end when a shutdown is requested.
//!
//! A read on a pipe whose writer is silent blocks without limit. This reader waits for data
//! with `poll(2)` in short steps and, once a shutdown is requested, reports the end of the
//! input instead of reading on. The lines already read are then parsed and processed like
//! those of an input that ended, so nothing taken from the pipe is lost. Named pipes,
//! character devices and sockets given by path are read the same way; only regular files
//! are read to their end.

use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How long one wait for data lasts before the shutdown flag is checked again, in milliseconds.
const POLL_MS: libc::c_int = 200;

/// Whether file descriptor 0 was closed when the process started. Rust's runtime opens
/// `/dev/null` on a closed standard descriptor before `main` (`sanitize_standard_fds` in std's
/// Unix `init`, Rust 1.95), so a read could not tell a closed standard input from an empty one.
static STDIN_CLOSED_AT_START: AtomicBool = AtomicBool::new(false);

/// Records whether file descriptor 0 is closed. The C runtime calls it from `.init_array`
/// before `main`, so before Rust's runtime replaces a closed descriptor.
///
/// NOTE: only on Linux. Elsewhere a closed standard input reads as an empty one.
#[cfg(target_os = "linux")]
extern "C" fn record_stdin_at_start() {
    // SAFETY: F_GETFD only reads the flags of descriptor 0, and fails with EBADF when it is
    // closed.
    let flags = unsafe { libc::fcntl(libc::STDIN_FILENO, libc::F_GETFD) };
    if flags == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
        STDIN_CLOSED_AT_START.store(true, Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static RECORD_STDIN_AT_START: extern "C" fn() = record_stdin_at_start;

/// The mark a [`PipeUntilShutdown`] sets when a shutdown, not its writer, ended the input.
#[derive(Clone, Debug, Default)]
pub struct ShutdownCut(Arc<AtomicBool>);

impl ShutdownCut {
    /// Returns whether a shutdown ended the input before its writer closed it.
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A pipe read without the buffer of [`std::io::Stdin`], so that `poll(2)` reports every byte
/// not yet read.
pub(super) struct PipeUntilShutdown {
    /// The pipe. Standard input is never closed, so its `File` is not dropped.
    file: ManuallyDrop<File>,
    /// Whether `file` is this reader's own, to be closed on drop.
    owned: bool,
    cut: ShutdownCut,
}

impl PipeUntilShutdown {
    /// Reads standard input (file descriptor 0). Fails with EBADF when the descriptor was
    /// closed when the process started or is not open now.
    pub(super) fn stdin() -> io::Result<Self> {
        if STDIN_CLOSED_AT_START.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let mut status = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes at most one `stat` into `status`, which is only checked for
        // the call's result and then dropped.
        if unsafe { libc::fstat(libc::STDIN_FILENO, status.as_mut_ptr()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: descriptor 0 is open and stays open for the life of the process, and
        // `ManuallyDrop` keeps this `File` from closing it.
        let file = unsafe { File::from_raw_fd(libc::STDIN_FILENO) };
        Ok(PipeUntilShutdown {
            file: ManuallyDrop::new(file),
            owned: false,
            cut: ShutdownCut::default(),
        })
    }

    /// Reads an opened pipe or device, and closes it when dropped. The file may be
    /// non-blocking: a named pipe without a writer then waits in `poll(2)` like a silent one.
    pub(super) fn file(file: File) -> Self {
        PipeUntilShutdown {
            file: ManuallyDrop::new(file),
            owned: true,
            cut: ShutdownCut::default(),
        }
    }

    /// Returns the mark of a shutdown that ends this input.
    pub(super) fn cut(&self) -> ShutdownCut {
        self.cut.clone()
    }
}

impl Drop for PipeUntilShutdown {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: `file` is not used after this, and only an owned descriptor is closed here.
            unsafe { ManuallyDrop::drop(&mut self.file) };
        }
    }
}

impl Read for PipeUntilShutdown {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            if crate::shutdown::requested() {
                self.cut.0.store(true, Ordering::Release);
                return Ok(0);
            }
            let mut descriptor = libc::pollfd {
                fd: self.file.as_raw_fd(),
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
            // Readable, closed by the writer or in error: the read reports which. A named pipe
            // is opened without blocking, so its read may still find nothing to read.
            if ready > 0 {
                match self.file.read(buffer) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            }
        }
    }
}
