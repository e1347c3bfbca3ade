//! Opening of output files that may be named pipes, without blocking a stop.
//!
//! Opening a named pipe (FIFO) for writing blocks until a process opens it for reading. The
//! signal thread of [`crate::shutdown`] only sets a flag, so a run blocked in such an open
//! would ignore SIGTERM and SIGINT. [`open`] therefore opens with `O_NONBLOCK`: a FIFO without
//! a reader then fails at once with `ENXIO`, and the open is tried again every
//! [`READER_POLL`] until a reader comes or a shutdown is requested. The descriptor is put back
//! in blocking mode once open, so writes wait for a slow reader as before.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Interval between two opens of a named pipe that has no reader yet.
pub const READER_POLL: Duration = Duration::from_millis(100);

/// A shutdown requested while an output named pipe waited for its reader. The run has not
/// read any input yet.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "stopped before the run started: no process opened the named pipe {} for reading, so no \
     input was read and no alert was written",
    path.display()
)]
pub struct StoppedWaitingForReader {
    /// The named pipe.
    pub path: PathBuf,
}

/// Opens `path` with `options`. A named pipe without a reader is waited for, logged once, and
/// a shutdown request ends the wait with an error of kind `Interrupted` that carries
/// [`StoppedWaitingForReader`] (see [`describe_error`]).
pub fn open(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        open_unix(path, options)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// Creates or truncates the output file `path` for writing, as [`File::create`] does, waiting
/// for the reader of a named pipe as [`open`] does.
pub fn create(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    open(path, &options)
}

/// Returns the error for a failed [`open`] of an output: [`StoppedWaitingForReader`] itself
/// after a shutdown request, so the caller can tell a stop from a failure, or else the
/// `context` message followed by the error.
pub fn describe_error(error: std::io::Error, context: impl FnOnce() -> String) -> anyhow::Error {
    let stopped = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<StoppedWaitingForReader>());
    match stopped {
        Some(stopped) => anyhow::Error::new(stopped.clone()),
        None => anyhow::anyhow!("{}: {error}", context()),
    }
}

/// Cuts the regular file `file`, opened for writing at `path`, back to the end of its last
/// whole line, and moves its write position there. A write that fails part way, such as on a
/// full disk, then leaves no torn line for a JSON-lines reader to trip on. Returns the bytes
/// cut. A named pipe or a device cannot be cut and is left alone, and so is a file that `path`
/// no longer names.
pub fn cut_torn_line(path: &Path, file: &File) -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        cut_torn_line_unix(path, file)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, file);
        Ok(0)
    }
}

#[cfg(unix)]
fn cut_torn_line_unix(path: &Path, file: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    use std::os::unix::fs::{FileExt, MetadataExt};

    // The writer's descriptor may be write-only, so the tail is read through a second one.
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Ok(0);
    }
    let reader = File::open(path)?;
    let reader_metadata = reader.metadata()?;
    if (reader_metadata.dev(), reader_metadata.ino()) != (metadata.dev(), metadata.ino()) {
        return Ok(0);
    }
    let length = metadata.len();
    const CHUNK_BYTES: u64 = 64 * 1024;
    let mut buffer = vec![0u8; CHUNK_BYTES as usize];
    let mut end = length;
    let mut whole_end = 0;
    while end > 0 {
        let start = end.saturating_sub(CHUNK_BYTES);
        let chunk = &mut buffer[..(end - start) as usize];
        reader.read_exact_at(chunk, start)?;
        if let Some(newline) = memchr::memrchr(b'\n', chunk) {
            whole_end = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    if whole_end < length {
        file.set_len(whole_end)?;
    }
    let mut position = file;
    position.seek(std::io::SeekFrom::Start(whole_end))?;
    Ok(length - whole_end)
}

#[cfg(unix)]
fn open_unix(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;

    let mut options = options.clone();
    options.custom_flags(libc::O_NONBLOCK);
    let mut waiting = false;
    loop {
        match options.open(path) {
            Ok(file) => {
                set_blocking(&file)?;
                if waiting {
                    tracing::info!(path = %path.display(), "a reader opened the named pipe");
                }
                return Ok(file);
            }
            Err(error) if error.raw_os_error() == Some(libc::ENXIO) && is_fifo(path) => {
                if crate::shutdown::requested() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        StoppedWaitingForReader {
                            path: path.to_path_buf(),
                        },
                    ));
                }
                if !waiting {
                    waiting = true;
                    crate::shutdown::wake_on_request(std::thread::current());
                    tracing::warn!(
                        path = %path.display(),
                        "waiting for a process to open the named pipe for reading; SIGTERM or \
                         SIGINT stops the run"
                    );
                }
                std::thread::park_timeout(READER_POLL);
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(unix)]
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;

    std::fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_fifo())
}

/// Clears `O_NONBLOCK`, which [`open`] set only so that opening a named pipe cannot block.
#[cfg(unix)]
fn set_blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;

    let descriptor = file.as_raw_fd();
    // SAFETY: `descriptor` belongs to `file`, which is open for the whole call.
    let flags = unsafe { libc::fcntl(descriptor, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the status flags of the descriptor.
    if unsafe { libc::fcntl(descriptor, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn make_fifo(path: &Path) {
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path for the whole call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn regular_file_opens_blocking() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("out.jsonl");
        let mut file = open(&path, OpenOptions::new().write(true).create(true)).unwrap();
        file.write_all(b"line\n").unwrap();
        // SAFETY: the descriptor belongs to `file`, which is open.
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line\n");
    }

    #[test]
    fn fifo_opens_once_reader_comes() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("pipe");
        make_fifo(&path);
        let reader_path = path.clone();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut text = String::new();
            std::fs::File::open(reader_path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        });
        // More than a pipe buffer (64 KiB), so a write must wait for the reader.
        let line = "x".repeat(1023) + "\n";
        let mut file = open(&path, OpenOptions::new().write(true)).unwrap();
        for _ in 0..256 {
            file.write_all(line.as_bytes()).unwrap();
        }
        drop(file);
        assert_eq!(reader.join().unwrap().len(), 256 * 1024);
    }

    #[test]
    fn missing_folder_fails_at_once() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("missing").join("out.jsonl");
        let error = open(&path, OpenOptions::new().write(true).create(true)).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        let message = describe_error(error, || "cannot create x".to_string()).to_string();
        assert!(message.starts_with("cannot create x: "), "{message}");
    }

    #[test]
    fn stop_error_keeps_its_type() {
        let error = std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            StoppedWaitingForReader {
                path: PathBuf::from("/tmp/pipe"),
            },
        );
        let described = describe_error(error, || unreachable!("a stop has no context"));
        assert!(described.is::<StoppedWaitingForReader>());
        assert!(described.to_string().contains("/tmp/pipe"), "{described}");
    }
}
