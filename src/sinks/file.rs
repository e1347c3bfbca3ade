//! An alert file of JSON lines that survives a kill at any moment and can be reopened
//! idempotently.
//!
//! Lines are only ever appended, and each line goes to the operating system in one write
//! together with its newline. A kill (even `kill -9`) therefore leaves the file as a prefix
//! of what was written: whole lines, possibly followed by one torn last line.
//! [`AlertFile::open_append`] cuts that torn line, loads the `alert_id` of every line, and
//! from then on skips alerts with those ids. A run resumed from a checkpoint can thus send
//! again every alert after the checkpoint, and the file still contains each alert once.
//!
//! A write that fails part way (a full disk, a file size limit) is cut back at once to the end
//! of the last whole line it wrote, so the file contains whole lines only. After a failed
//! write the file takes no more lines: a later line that fits in space freed meanwhile would
//! leave a gap, and the file would no longer be a prefix of the alerts. The file counts
//! exactly the lines that reached it ([`AlertFile::lines_written`]) and the lines it dropped
//! ([`AlertFile::lines_dropped`]).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes of lines buffered before they are written out, as `std::io::BufWriter` buffers.
const BUFFER_BYTES: usize = 8 * 1024;

/// Findings of [`AlertFile::open_append`] in an existing file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reopened {
    /// Whole lines kept.
    pub lines: u64,
    /// Distinct alert ids among them; later alerts with these ids are skipped.
    pub ids: u64,
    /// Lines kept that carry no readable `alert_id` (logged; they cannot be deduplicated).
    pub unreadable: u64,
    /// Bytes of a torn last line (no trailing newline) that were cut off.
    pub truncated_bytes: u64,
}

/// An alert file open for appending whole JSON lines.
///
/// # Examples
///
/// ```
/// use veer::sinks::file::AlertFile;
///
/// let folder = tempfile::tempdir()?;
/// let path = folder.path().join("alerts.jsonl");
/// let mut file = AlertFile::create(&path)?;
/// file.append("7-100-interest_shift", r#"{"alert_id":"7-100-interest_shift"}"#)?;
/// file.flush()?;
/// drop(file);
///
/// // A kill left half a line behind.
/// std::fs::write(&path, "{\"alert_id\":\"7-100-interest_shift\"}\n{\"alert_id\":\"8-1")?;
/// let (mut file, reopened) = AlertFile::open_append(&path)?;
/// assert_eq!(reopened.truncated_bytes, 16);
/// assert_eq!(reopened.ids, 1);
/// assert!(!file.append("7-100-interest_shift", r#"{"alert_id":"7-100-interest_shift"}"#)?);
/// assert!(file.append("8-120-interest_shift", r#"{"alert_id":"8-120-interest_shift"}"#)?);
/// file.flush()?;
/// assert_eq!(std::fs::read_to_string(&path)?.lines().count(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AlertFile {
    path: PathBuf,
    file: File,
    /// Length of the file: whole lines only, unless `torn` is set.
    length: u64,
    /// Lines not yet written out, each with its newline.
    buffer: Vec<u8>,
    /// End offset in `buffer` of each line in it.
    line_ends: Vec<usize>,
    /// Lines written to the file by this process.
    written: u64,
    /// Lines dropped by failed writes.
    dropped: u64,
    /// Whether a failed write left a torn line that could not be cut, so that later lines
    /// would be joined to it.
    torn: bool,
    /// Whether a write failed. Every later line is then dropped, so the file stays a prefix
    /// of the alerts.
    stopped: bool,
    /// Ids already in the file, tracked only in append mode.
    seen: Option<HashSet<String>>,
    skipped: u64,
}

impl AlertFile {
    /// Creates the file, or truncates it when it exists (the default of `veer run`). A named
    /// pipe is waited for as [`crate::output_file::open`] describes.
    pub fn create(path: &Path) -> std::io::Result<AlertFile> {
        let file = crate::output_file::create(path)?;
        Ok(AlertFile::with_file(path, file, 0, None))
    }

    fn with_file(path: &Path, file: File, length: u64, seen: Option<HashSet<String>>) -> AlertFile {
        AlertFile {
            path: path.to_path_buf(),
            file,
            length,
            buffer: Vec::with_capacity(BUFFER_BYTES),
            line_ends: Vec::new(),
            written: 0,
            dropped: 0,
            torn: false,
            stopped: false,
            seen,
            skipped: 0,
        }
    }

    /// Opens the file for appending, creating it when missing: cuts a torn last line, loads
    /// the `alert_id` of every whole line, and returns what it found.
    ///
    /// Only the start of an alert line (what a killed run leaves) is cut. A file whose last
    /// line has no newline and is not the start of an alert line is not an alert file. It is
    /// left unchanged, and the error kind is `InvalidData`.
    ///
    /// From then on [`append`](Self::append) skips any alert whose id is in the file or was
    /// appended since. The ids are held in memory, about 40 bytes plus the id per alert.
    ///
    /// A path that exists and is not a regular file, such as a named pipe or `/dev/null`, has
    /// nothing to read back: it is opened for writing only, as [`create`](Self::create) opens
    /// it, and no id is skipped.
    pub fn open_append(path: &Path) -> std::io::Result<(AlertFile, Reopened)> {
        if std::fs::metadata(path).is_ok_and(|metadata| !metadata.is_file()) {
            let mut options = OpenOptions::new();
            options.append(true);
            let file = crate::output_file::open(path, &options)?;
            let alert_file = AlertFile::with_file(path, file, 0, Some(HashSet::new()));
            return Ok((alert_file, Reopened::default()));
        }
        let mut reopened = Reopened::default();
        let mut seen = HashSet::new();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;

        let mut whole_end = 0u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                if !is_torn_alert_line(&line) {
                    return Err(not_an_alert_file(&line));
                }
                reopened.truncated_bytes = read as u64;
                break;
            }
            whole_end += read as u64;
            reopened.lines += 1;
            match alert_id_of(&line) {
                Some(id) => {
                    seen.insert(id);
                }
                None if line.iter().all(u8::is_ascii_whitespace) => {}
                None => reopened.unreadable += 1,
            }
        }
        drop(reader);

        if reopened.truncated_bytes > 0 {
            file.set_len(whole_end)?;
            tracing::warn!(
                path = %path.display(),
                bytes = reopened.truncated_bytes,
                "cut a torn last line off the alert file"
            );
        }
        if reopened.unreadable > 0 {
            tracing::warn!(
                path = %path.display(),
                lines = reopened.unreadable,
                "alert file lines without a readable alert_id are kept but cannot be deduplicated"
            );
        }
        reopened.ids = seen.len() as u64;
        drop(file);

        let file = OpenOptions::new().append(true).open(path)?;
        let alert_file = AlertFile::with_file(path, file, whole_end, Some(seen));
        Ok((alert_file, reopened))
    }

    /// Appends one alert line (without its newline) unless its id is already in the file.
    /// Returns whether the line was taken.
    ///
    /// Lines are buffered and written out when the buffer is full or on [`flush`](Self::flush).
    /// An error is that of the write the line started, and the lines it dropped are counted in
    /// [`lines_dropped`](Self::lines_dropped).
    pub fn append(&mut self, id: &str, line: &str) -> std::io::Result<bool> {
        if let Some(seen) = self.seen.as_mut() {
            if seen.contains(id) {
                self.skipped += 1;
                return Ok(false);
            }
            seen.insert(id.to_string());
        }
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.push(b'\n');
        self.line_ends.push(self.buffer.len());
        if self.buffer.len() >= BUFFER_BYTES {
            self.flush()?;
        }
        Ok(true)
    }

    /// Hands the buffered lines to the operating system, so they survive a kill of veer.
    ///
    /// When the write fails part way, the file is cut back to the end of the last whole line
    /// written, and the lines not written are dropped and counted. After a failed write every
    /// later flush drops its lines and returns an error.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.line_ends.is_empty() {
            return Ok(());
        }
        if self.stopped {
            self.drop_buffer(0);
            let reason = if self.torn {
                "left a torn line at its end"
            } else {
                "stopped it, so that it stays a prefix of the alerts"
            };
            return Err(std::io::Error::other(format!(
                "an earlier failed write to {} {reason}",
                self.path.display()
            )));
        }
        let mut done = 0;
        let failure = loop {
            if done == self.buffer.len() {
                break None;
            }
            match self.file.write(&self.buffer[done..]) {
                Ok(0) => break Some(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(bytes) => done += bytes,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => break Some(error),
            }
        };
        let Some(error) = failure else {
            self.length += done as u64;
            self.written += self.line_ends.len() as u64;
            self.buffer.clear();
            self.line_ends.clear();
            return Ok(());
        };

        let whole_lines = self.line_ends.partition_point(|&end| end <= done);
        let whole_bytes = match whole_lines {
            0 => 0,
            lines => self.line_ends[lines - 1],
        };
        self.written += whole_lines as u64;
        self.drop_buffer(whole_lines);
        self.stopped = true;
        if done > whole_bytes {
            let whole_end = self.length + whole_bytes as u64;
            let cut = self
                .file
                .set_len(whole_end)
                .and_then(|()| self.file.seek(SeekFrom::Start(whole_end)).map(|_| ()));
            if let Err(cut_error) = cut {
                self.torn = true;
                self.length += done as u64;
                return Err(std::io::Error::new(
                    error.kind(),
                    format!(
                        "{error}, and cutting the torn last line of {} failed: {cut_error}",
                        self.path.display()
                    ),
                ));
            }
        }
        self.length += whole_bytes as u64;
        Err(error)
    }

    /// Counts the buffered lines after the first `written_lines` as dropped and empties the
    /// buffer.
    fn drop_buffer(&mut self, written_lines: usize) {
        self.dropped += (self.line_ends.len() - written_lines) as u64;
        self.buffer.clear();
        self.line_ends.clear();
    }

    /// Flushes and syncs the file to disk (`fdatasync`), so the lines also survive a crash
    /// of the machine.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    /// Returns the lines this process wrote to the file. Lines still in the buffer are not
    /// counted.
    pub fn lines_written(&self) -> u64 {
        self.written
    }

    /// Returns the lines dropped by failed writes.
    pub fn lines_dropped(&self) -> u64 {
        self.dropped
    }

    /// Returns whether the file ends in a torn line that a failed write left and that could not
    /// be cut; the next [`open_append`](Self::open_append) cuts it.
    pub fn is_torn(&self) -> bool {
        self.torn
    }

    /// Returns the alerts skipped because their ids were already in the file.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Returns the file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// First bytes of every alert line that veer writes ([`veer_models::Alert::to_json_line`]).
const ALERT_LINE_START: &[u8] = b"{\"alert_id\":\"";

/// Returns whether `line`, the unfinished last line of a file, can be the start of an alert
/// line that a kill tore: it begins with [`ALERT_LINE_START`], or is a shorter part of it.
fn is_torn_alert_line(line: &[u8]) -> bool {
    let shared = line.len().min(ALERT_LINE_START.len());
    line[..shared] == ALERT_LINE_START[..shared]
}

/// Returns the error of an append to a file whose unfinished last line `line` is not a torn
/// alert line.
fn not_an_alert_file(line: &[u8]) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "not an alert file: the last {} bytes have no final newline and are not the start of \
             an alert line ({{\"alert_id\":\"...), so nothing was cut and the file is unchanged; \
             give --alerts a new file, or an alert file that veer wrote",
            line.len()
        ),
    )
}

/// Returns the `alert_id` of one JSON line, or `None` when the line is not an alert object.
fn alert_id_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        alert_id: String,
    }
    serde_json::from_slice::<IdOnly>(line)
        .ok()
        .map(|record| record.alert_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> String {
        format!(r#"{{"alert_id":"{id}","user":1}}"#)
    }

    #[test]
    fn reopen_cuts_torn_line() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("a.jsonl");
        std::fs::write(
            &path,
            format!("{}\n{}\n{{\"alert_id\":\"3-", line("1"), line("2")),
        )
        .unwrap();

        let (mut file, reopened) = AlertFile::open_append(&path).unwrap();
        assert_eq!(reopened.lines, 2);
        assert_eq!(reopened.ids, 2);
        assert_eq!(reopened.truncated_bytes, 15);
        assert!(file.append("3", &line("3")).unwrap());
        file.flush().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{}\n{}\n{}\n", line("1"), line("2"), line("3"))
        );
    }

    #[test]
    fn reopen_rejects_unfinished_other_line() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("data.bin");
        let contents = b"\x00\x01binary\nno newline at the end \xff".to_vec();
        std::fs::write(&path, &contents).unwrap();

        let error = AlertFile::open_append(&path)
            .err()
            .expect("not an alert file");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            error.to_string().starts_with("not an alert file"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), contents);
    }

    #[test]
    fn reopen_cuts_short_torn_start() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("a.jsonl");
        std::fs::write(&path, format!("{}\n{{\"al", line("1"))).unwrap();

        let (_, reopened) = AlertFile::open_append(&path).unwrap();
        assert_eq!(reopened.truncated_bytes, 4);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", line("1"))
        );
    }

    #[test]
    fn reopen_skips_known_ids() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("a.jsonl");
        std::fs::write(&path, format!("{}\n", line("1"))).unwrap();

        let (mut file, reopened) = AlertFile::open_append(&path).unwrap();
        assert_eq!(reopened.truncated_bytes, 0);
        assert!(!file.append("1", &line("1")).unwrap());
        assert!(file.append("2", &line("2")).unwrap());
        assert!(!file.append("2", &line("2")).unwrap());
        assert_eq!(file.skipped(), 2);
        file.flush().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn reopen_creates_missing_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("new.jsonl");
        let (_, reopened) = AlertFile::open_append(&path).unwrap();
        assert_eq!(reopened, Reopened::default());
        assert!(path.exists());
    }

    #[test]
    fn reopen_keeps_unreadable_lines() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("a.jsonl");
        std::fs::write(&path, format!("not json\n{}\n", line("1"))).unwrap();

        let (_, reopened) = AlertFile::open_append(&path).unwrap();
        assert_eq!(reopened.lines, 2);
        assert_eq!(reopened.unreadable, 1);
        assert_eq!(reopened.ids, 1);
    }

    #[test]
    fn create_truncates() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("a.jsonl");
        std::fs::write(&path, format!("{}\n", line("1"))).unwrap();

        let mut file = AlertFile::create(&path).unwrap();
        assert!(file.append("1", &line("1")).unwrap());
        file.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
