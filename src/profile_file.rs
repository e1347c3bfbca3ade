//! The `--profiles` output file and what was lost when it could not be written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The profile file. After its first write or flush error it logs the error once, writes
/// nothing more and counts the lines it drops, so that a full disk neither floods the log nor
/// goes unnoticed. [`ProfileFileStatus::failure`] reports the loss after the run.
pub struct ProfileFile {
    /// `None` after the first error, when the lines still buffered have been dropped.
    writer: Option<BufWriter<File>>,
    status: ProfileFileStatus,
}

/// A handle on a [`ProfileFile`]'s failure, readable after the file has been moved into the
/// dataflow.
#[derive(Clone)]
pub struct ProfileFileStatus {
    path: PathBuf,
    failure: Arc<Mutex<Option<ProfileFileFailure>>>,
}

/// A profile file that could not be written: the run ends with an error naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFileFailure {
    pub path: PathBuf,
    pub error: String,
    /// Lines not written: those in the write buffer when the error came, and every later one.
    /// This is an upper bound, because a failed write can have stored part of the buffer.
    pub unwritten: u64,
}

impl std::fmt::Display for ProfileFileFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "the profile file {} could not be written ({}): up to {} profile lines are missing \
             from it",
            self.path.display(),
            self.error,
            self.unwritten
        )
    }
}

impl ProfileFile {
    /// Creates or truncates the file at `path`.
    pub fn create(path: &Path) -> anyhow::Result<ProfileFile> {
        let file = crate::output_file::create(path).map_err(|error| {
            crate::output_file::describe_error(error, || {
                format!("cannot create profile file {}", path.display())
            })
        })?;
        Ok(ProfileFile {
            writer: Some(BufWriter::new(file)),
            status: ProfileFileStatus {
                path: path.to_path_buf(),
                failure: Arc::new(Mutex::new(None)),
            },
        })
    }

    /// Returns a handle that reports a write failure after the run.
    pub fn status(&self) -> ProfileFileStatus {
        self.status.clone()
    }

    /// Logs and stores the first error, drops the buffered lines and cuts a torn last line
    /// that the failed write left. The failure counts the buffered lines and the newlines of
    /// `rejected`, the bytes of the failed call.
    fn fail(&mut self, error: std::io::Error, rejected: &[u8]) {
        tracing::error!(
            path = %self.status.path.display(),
            %error,
            "cannot write the profile file; later profile lines are counted but not written"
        );
        let mut buffered = 0;
        // `into_parts` drops the buffer without the write that dropping a `BufWriter` tries.
        if let Some((file, buffer)) = self.writer.take().map(BufWriter::into_parts) {
            buffered = buffer.map_or(0, |buffer| newlines(&buffer));
            if let Err(cut_error) = crate::output_file::cut_torn_line(&self.status.path, &file) {
                tracing::error!(
                    path = %self.status.path.display(),
                    error = %cut_error,
                    "cannot cut the torn last line of the profile file"
                );
            }
        }
        *self.status.lock() = Some(ProfileFileFailure {
            path: self.status.path.clone(),
            error: error.to_string(),
            unwritten: buffered + newlines(rejected),
        });
    }
}

impl ProfileFileStatus {
    fn lock(&self) -> MutexGuard<'_, Option<ProfileFileFailure>> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the write failure, if the file could not be written.
    pub fn failure(&self) -> Option<ProfileFileFailure> {
        self.lock().clone()
    }
}

/// Returns the number of newlines in `buffer`. A line counts as lost when its newline was not
/// written, and `write` returns success for every call, so each newline reaches it.
fn newlines(buffer: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', buffer).count() as u64
}

impl Write for ProfileFile {
    /// Writes `buffer`, or after an error counts its newlines. Always reports success, so the
    /// profile writer goes on and every later line reaches the count.
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        let Some(writer) = self.writer.as_mut() else {
            if let Some(failure) = self.status.lock().as_mut() {
                failure.unwritten += newlines(buffer);
            }
            return Ok(buffer.len());
        };
        match writer.write(buffer) {
            Ok(written) => Ok(written),
            Err(error) => {
                self.fail(error, buffer);
                Ok(buffer.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        if let Err(error) = writer.flush() {
            self.fail(error, &[]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_counts_large_lines() {
        let mut file = ProfileFile::create(Path::new("/dev/full")).expect("open /dev/full");
        let status = file.status();
        // Each line is larger than the write buffer, so the first write already fails.
        let line = "x".repeat(64 * 1024);
        for _ in 0..3 {
            writeln!(file, "{line}").expect("errors are kept, not returned");
        }
        file.flush().expect("errors are kept, not returned");

        let failure = status.failure().expect("the write failed");
        assert_eq!(failure.path, Path::new("/dev/full"));
        assert_eq!(failure.unwritten, 3);
        assert!(failure.to_string().contains("/dev/full"), "{failure}");
    }

    #[test]
    fn full_disk_counts_buffered_lines() {
        let mut file = ProfileFile::create(Path::new("/dev/full")).expect("open /dev/full");
        let status = file.status();
        for user in 0..3 {
            writeln!(file, "{{\"user\":{user}}}").expect("buffered");
        }
        assert_eq!(status.failure(), None, "small lines wait in the buffer");

        file.flush().expect("errors are kept, not returned");
        writeln!(file, "{{\"user\":3}}").expect("errors are kept, not returned");
        file.flush().expect("errors are kept, not returned");

        let failure = status.failure().expect("the flush failed");
        assert_eq!(failure.unwritten, 4);
    }

    #[test]
    fn writable_file_has_no_failure() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("profiles.jsonl");
        let mut file = ProfileFile::create(&path).expect("create");
        let status = file.status();
        writeln!(file, "{{\"user\":1}}").expect("write");
        file.flush().expect("flush");

        assert_eq!(status.failure(), None);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"user\":1}\n"
        );
    }
}
