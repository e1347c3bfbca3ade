//! The user attribute table of `veer run --users`: loading, watching the file, and feeding
//! each version into the dataflow's attribute collection.
//!
//! The file is the whole table. A thread polls its size, modification time and inode, and
//! re-reads it when one of them has changed and then stayed the same for one poll interval. [`AttributeFeed`] on worker 0 compares each new
//! version with the one in force. It sends the difference at the current event time, as a
//! retraction of the old row and an insertion of the new one per changed user, so the new
//! values apply from then on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use differential_dataflow::AsCollection;
use timely::dataflow::{InputHandleVec as InputHandle, StreamVec};
use veer_models::attributes::{AttributeHistory, AttributeTable, LoadReport};
use veer_models::{Alert, Id};
use veer_operators::profiles::{
    join_attributes, profile_cores, write_profiles, AttributeRow, ProfileSettings, ProfileStore,
    ProfileView,
};
use veer_operators::segments::SegmentUpdate;
use veer_operators::state::DetectHandle;

/// One update of the attribute collection: a row, its event time and +1 or -1.
pub type AttributeUpdate = (AttributeRow, u64, isize);

/// Reads and parses the table, logging its counts and every duplicate, invalid value and
/// skipped row.
///
/// Returns an error when the file cannot be read or has no `user` column; problems in single
/// rows are logged and never fatal.
pub fn load(path: &Path) -> anyhow::Result<AttributeTable> {
    let (table, report) = read_table(path)?;
    log_report(path, &table, &report);
    Ok(table)
}

/// Returns the table's column names besides `user`, sorted, as a model file records them.
pub fn table_columns(path: &Path) -> anyhow::Result<Vec<String>> {
    let (table, _) = read_table(path)?;
    Ok(table.columns().to_vec())
}

fn read_table(path: &Path) -> anyhow::Result<(AttributeTable, LoadReport)> {
    let bytes = std::fs::read(path).map_err(|error| {
        anyhow::anyhow!("cannot read the user table {}: {error}", path.display())
    })?;
    // Spreadsheet programs on Windows save CSV with a byte order mark, which event files may
    // also have.
    let content = crate::sources::strip_utf8_bom(&bytes);
    let text = std::str::from_utf8(content).map_err(|error| {
        let valid = &content[..error.valid_up_to()];
        let line = valid.iter().filter(|&&byte| byte == b'\n').count() + 1;
        anyhow::anyhow!(
            "user table {}: line {line} is not valid UTF-8; convert the file to UTF-8 \
             (e.g. iconv -f LATIN1 -t UTF-8)",
            path.display()
        )
    })?;
    AttributeTable::parse(text)
        .map_err(|error| anyhow::anyhow!("user table {}: {error}", path.display()))
}

/// Rows of each kind of problem (duplicate, invalid value, skipped row) that are logged one by
/// one at each load. The load line counts them all, so a table with many bad rows, which is
/// read again at each change, does not flood the log.
const LOGGED_ROWS_PER_KIND: usize = 20;

/// Bytes of an invalid value shown in its log line; a longer value is cut.
const LOGGED_VALUE_BYTES: usize = 200;

fn log_report(path: &Path, table: &AttributeTable, report: &LoadReport) {
    let file = path.display().to_string();
    for duplicate in report.duplicates.iter().take(LOGGED_ROWS_PER_KIND) {
        tracing::warn!(
            %file,
            user = %duplicate.user,
            earlier_line = duplicate.earlier_line,
            later_line = duplicate.later_line,
            "duplicate user in the user table; the later row is kept"
        );
    }
    for invalid in report.invalid.iter().take(LOGGED_ROWS_PER_KIND) {
        tracing::warn!(
            %file,
            line = invalid.line,
            column = %invalid.column,
            value = %cut_value(&invalid.value),
            "invalid value in the user table; it is treated as unknown"
        );
    }
    for skipped in report.skipped.iter().take(LOGGED_ROWS_PER_KIND) {
        tracing::warn!(
            %file,
            line = skipped.line,
            reason = %skipped.reason,
            "row skipped in the user table"
        );
    }
    let unlogged = [
        ("duplicates", report.duplicates.len()),
        ("invalid values", report.invalid.len()),
        ("skipped rows", report.skipped.len()),
    ];
    for (kind, count) in unlogged {
        if count > LOGGED_ROWS_PER_KIND {
            tracing::warn!(
                %file,
                more = count - LOGGED_ROWS_PER_KIND,
                "more {kind} in the user table than the first {LOGGED_ROWS_PER_KIND} logged; \
                 the load line counts them all"
            );
        }
    }
    tracing::info!(
        %file,
        rows = report.rows,
        users = table.len(),
        duplicates = report.duplicates.len(),
        invalid = report.invalid.len(),
        skipped = report.skipped.len(),
        "user table loaded"
    );
}

/// Returns `value` cut to [`LOGGED_VALUE_BYTES`] on a character boundary, with the full length
/// after a cut.
fn cut_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= LOGGED_VALUE_BYTES {
        return value.into();
    }
    let mut end = LOGGED_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &value[..end], value.len()).into()
}

/// Size, modification time and inode: the identity of one version of a file, read without
/// opening it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode,
    })
}

/// A thread that re-reads the table whenever its file changes.
///
/// A changed file is read once its size, modification time and inode have stayed the same
/// for one poll interval. The read is dropped when they change during it, so a file that is
/// being rewritten in place is not read part way. A version that cannot be read or parsed
/// is logged and skipped, and the previous one stays in force, because a file seen
/// half-written or briefly missing is more likely than a table meant to be empty. For the same
/// reason an empty file (0 bytes) is not applied: a table with a header and no rows removes
/// every row. Dropping the watch stops the thread at its next poll.
pub struct AttributeWatch {
    receiver: crossbeam_channel::Receiver<AttributeTable>,
    stop: Arc<AtomicBool>,
}

impl AttributeWatch {
    /// Starts watching `path`, whose current version was loaded already.
    pub fn spawn(path: PathBuf, poll_interval: Duration) -> anyhow::Result<AttributeWatch> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let mut poller = FilePoller::new(path);
        std::thread::Builder::new()
            .name("veer-users".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(poll_interval);
                    if let Some(table) = poller.poll() {
                        if sender.send(table).is_err() {
                            break;
                        }
                    }
                }
            })
            .map_err(|error| anyhow::anyhow!("failed to start the user table watcher: {error}"))?;
        Ok(AttributeWatch { receiver, stop })
    }

    /// Returns the latest version read since the last call, if any.
    fn latest(&self) -> Option<AttributeTable> {
        self.receiver.try_iter().last()
    }
}

impl Drop for AttributeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The watch's view of the table's file between two polls.
struct FilePoller {
    path: PathBuf,
    /// Stamp of the version last read, applied or not.
    seen: Option<FileStamp>,
    /// Stamp of a changed version seen on the previous poll, read when it is still the same.
    pending: Option<FileStamp>,
    missing: bool,
    /// Whether the current empty file was logged already.
    empty_logged: bool,
}

impl FilePoller {
    fn new(path: PathBuf) -> FilePoller {
        let seen = stamp(&path);
        FilePoller {
            path,
            seen,
            pending: None,
            missing: false,
            empty_logged: false,
        }
    }

    /// Checks the file once and returns a new version when one was read completely.
    fn poll(&mut self) -> Option<AttributeTable> {
        let current = stamp(&self.path);
        if current.is_none() && !self.missing {
            tracing::warn!(
                file = %self.path.display(),
                "the user table is missing; the previous version stays until the file is back"
            );
        }
        self.missing = current.is_none();
        let current = current?;
        if Some(current) == self.seen {
            self.pending = None;
            return None;
        }
        // A writer that rewrites the file in place changes its size or modification time until
        // it is done, so a changed version is read only on the next poll that finds it the same.
        if Some(current) != self.pending {
            self.pending = Some(current);
            return None;
        }
        if current.len == 0 {
            if !self.empty_logged {
                tracing::warn!(
                    file = %self.path.display(),
                    "the user table is empty (0 bytes); the previous version stays until the \
                     file has at least a header"
                );
                self.empty_logged = true;
            }
            return None;
        }
        self.empty_logged = false;

        let read = read_table(&self.path);
        if stamp(&self.path) != Some(current) {
            // Changed during the read: the new version is read once it stays the same.
            self.pending = None;
            return None;
        }
        self.seen = Some(current);
        match read {
            Ok((table, report)) => {
                log_report(&self.path, &table, &report);
                Some(table)
            }
            Err(error) => {
                tracing::warn!(
                    error = %format!("{error:#}"),
                    "the changed user table was not loaded; the previous version stays"
                );
                None
            }
        }
    }
}

/// Worker 0's side of the attribute collection: the version in force and the watch.
pub struct AttributeFeed {
    current: Arc<AttributeTable>,
    /// The first version, sent on the first poll.
    first: Option<AttributeTable>,
    watch: Option<AttributeWatch>,
    history: AttributeHistory,
}

impl AttributeFeed {
    /// Creates a feed that starts with `table` and, with a watch, follows the file's later
    /// versions.
    pub fn new(table: AttributeTable, watch: Option<AttributeWatch>) -> AttributeFeed {
        AttributeFeed {
            current: Arc::new(AttributeTable::default()),
            first: Some(table),
            watch,
            history: AttributeHistory::default(),
        }
    }

    /// Sends the changes of a new version, if one was read, at event time `time` (or the
    /// input's time, if later), and advances `input` to at least `time`.
    ///
    /// After an update the input moves one millisecond past it, so the join can use the new
    /// rows at once, even while no event moves time on.
    pub fn poll(&mut self, input: &mut InputHandle<u64, AttributeUpdate>, time: u64) {
        let newest = self
            .first
            .take()
            .or_else(|| self.watch.as_ref().and_then(AttributeWatch::latest));
        let Some(table) = newest else {
            if time > *input.time() {
                input.advance_to(time);
            }
            return;
        };
        let at = time.max(*input.time());
        if at > *input.time() {
            input.advance_to(at);
        }
        let changes = self.current.changes(&table);
        for change in &changes {
            // The table's key 7 matches the event ids 7 and "7", but the join and the user
            // windows compare ids exactly, so the row is sent under each form.
            // NOTE: a table of integer ids is therefore held twice in the join's arrangement.
            for user in change.user.join_forms() {
                if let Some(before) = &change.before {
                    input.send(((user.clone(), before.clone()), at, -1));
                }
                if let Some(after) = &change.after {
                    input.send(((user, after.clone()), at, 1));
                }
            }
        }
        // A feed without a watch has no `--users` file: it only starts the join empty, so
        // there is no table to report.
        if self.watch.is_some() {
            tracing::info!(
                changed_users = changes.len(),
                event_time_ms = at,
                "user table applied"
            );
        }
        let table = Arc::new(table);
        self.history.push(at, table.clone());
        self.current = table;
        input.advance_to(at + 1);
    }

    /// Returns every version applied, with the event time from which it applied.
    pub fn into_history(self) -> AttributeHistory {
        self.history
    }
}

/// The `--users` option of a run.
#[derive(Clone, Debug)]
pub struct UsersInput {
    /// The attribute table: CSV with a header, or JSON lines.
    pub path: PathBuf,
    /// How often the file is checked for changes.
    pub poll_interval: Duration,
}

/// A worker's attribute input. Only worker 0 has a feed; the others close their input at once.
pub struct AttributeInput {
    input: InputHandle<u64, AttributeUpdate>,
    feed: Option<AttributeFeed>,
}

impl AttributeInput {
    /// Creates the input, with the feed on worker 0.
    pub fn new(feed: Option<AttributeFeed>) -> AttributeInput {
        AttributeInput {
            input: InputHandle::new(),
            feed,
        }
    }

    /// Returns the timely input handle, for building the dataflow.
    pub fn handle(&mut self) -> &mut InputHandle<u64, AttributeUpdate> {
        &mut self.input
    }

    /// Sends a new table version, if any, and keeps the input at event time `time` or later.
    pub fn poll(&mut self, time: u64) {
        match &mut self.feed {
            Some(feed) => feed.poll(&mut self.input, time),
            None => {
                if time > *self.input.time() {
                    self.input.advance_to(time);
                }
            }
        }
    }

    /// Closes the input and returns the versions applied (empty without a feed).
    pub fn close(self) -> AttributeHistory {
        drop(self.input);
        self.feed
            .map(AttributeFeed::into_history)
            .unwrap_or_default()
    }
}

/// Returns `user`'s attribute row from the latest joined profile in `store` as a JSON object,
/// or `None` when the store has no profile or no row for the user.
pub fn stored_attributes(store: &ProfileStore, user: &Id) -> Option<serde_json::Value> {
    let store = store.read().ok()?;
    let row = store.get(user)?.profile.attributes.as_ref()?;
    Some(serde_json::Value::Object(row.to_json()))
}

/// Builds the profile part of the dataflow: cores from the detector's per-user states, the
/// left joins with the attribute collection and with the segments of the model path (with
/// `--models`), and the profile writer. A user idle for longer than `idle_ms` of event time
/// loses the profile, as the detector loses the state.
#[allow(clippy::too_many_arguments)]
pub fn build_profiles<'scope, S: ProfileView + 'static>(
    alerts: StreamVec<'scope, u64, Alert>,
    attributes: StreamVec<'scope, u64, AttributeUpdate>,
    segments: Option<StreamVec<'scope, u64, SegmentUpdate>>,
    states: DetectHandle<S>,
    settings: ProfileSettings,
    idle_ms: Option<i64>,
    writer: Option<Box<dyn std::io::Write>>,
    store: ProfileStore,
) {
    let cores = profile_cores(alerts, states, settings, idle_ms);
    let segments = segments.map(AsCollection::as_collection);
    let joined = join_attributes(cores, attributes.as_collection(), segments);
    write_profiles(joined, writer, store);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_table_names_its_line() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.csv");
        std::fs::write(&path, b"user,region\n1,north\n2,M\xfcnchen\n").unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(error.contains("line 3 is not valid UTF-8"), "{error}");
        assert!(error.contains("users.csv"), "{error}");
    }

    #[test]
    fn poller_reads_changed_file_once_stable() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.csv");
        std::fs::write(&path, "user,age\n1,30\n").unwrap();
        let mut poller = FilePoller::new(path.clone());
        assert!(
            poller.poll().is_none(),
            "the loaded version is not read again"
        );

        std::fs::write(&path, "user,age\n1,30\n2,40\n").unwrap();
        assert!(poller.poll().is_none(), "a change waits one poll");
        std::fs::write(&path, "user,age\n1,30\n2,40\n3,50\n").unwrap();
        assert!(poller.poll().is_none(), "a file still growing is not read");
        let table = poller.poll().expect("a stable file is read");
        assert_eq!(table.len(), 3);
        assert!(poller.poll().is_none(), "the same version is read once");
    }

    #[test]
    fn poller_keeps_version_over_empty_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.csv");
        std::fs::write(&path, "user,age\n1,30\n").unwrap();
        let mut poller = FilePoller::new(path.clone());

        std::fs::write(&path, "").unwrap();
        for _ in 0..3 {
            assert!(poller.poll().is_none(), "an empty file is not applied");
        }
        std::fs::write(&path, "user,age\n").unwrap();
        assert!(poller.poll().is_none());
        let table = poller.poll().expect("a header without rows is a table");
        assert!(table.is_empty());
    }

    #[test]
    fn table_with_byte_order_mark_loads() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("users.csv");
        std::fs::write(&path, b"\xEF\xBB\xBFuser,age,gender\r\n915564,30,F\r\n").unwrap();
        let table = load(&path).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.columns(), ["age", "gender"]);
    }
}
