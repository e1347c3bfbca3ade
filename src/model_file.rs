//! Model files of `veer run --models-save` and `--models-load`: one fitted model version with
//! the settings it was fitted with, as one JSON document.
//!
//! A file has the fields `format` ([`MODEL_FILE_FORMAT`]), `version` (the model version in the
//! run that fitted it), `trained_from_ms` and `trained_until_ms` (the window starts that
//! trained it, Unix milliseconds), `settings` ([`FitRecord`]), `user_columns` (the columns
//! of the saving run's `--users` table besides `user`, or `null` without one) and `models`
//! (the [`ModelSet`] document, with its own format version). A save replaces the file atomically:
//! the document goes to a temporary file in the same folder, which is synced and renamed over
//! the old file, so a reader sees the old version or the new one, never a mix.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use veer_models::ml::{
    FeatureSpec, MlError, ModelParams, ModelSet, WindowConfig, ENCODED_ATTRIBUTE_COLUMNS,
};
use veer_operators::fit::{FittedVersion, VersionSink};

use crate::replay::ModelRunSettings;

/// Format version of a model file. [`load`] rejects any other, so bump it when the fields
/// around `models` change.
pub const MODEL_FILE_FORMAT: u32 = 2;

/// Settings that decide what fitted models compute. A run that loads models must have the
/// same settings as the run that fitted them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitRecord {
    /// Length of the user windows (`--window`), in milliseconds.
    pub window_ms: u64,
    /// Seed of every model fit (`[models] seed`).
    pub seed: u64,
    /// Settings of each model.
    pub params: ModelParams,
    /// Settings of the window features.
    pub window: WindowConfig,
    /// Per-window decay of a user's reference group weights.
    pub reference_decay: f64,
}

impl FitRecord {
    /// Returns the fit settings of a model run with user windows of `window_ms`.
    pub fn of(models: &ModelRunSettings, window_ms: u64) -> FitRecord {
        FitRecord {
            window_ms: window_ms.max(1),
            seed: models.seed,
            params: models.params.clone(),
            window: models.window.clone(),
            reference_decay: models.reference_decay,
        }
    }
}

/// One model version read from a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// Version number in the run that fitted the models: 0 for the fit on the bootstrap
    /// period, then one more per refit.
    pub version: u64,
    /// Start and end (exclusive) of the window starts that trained the models, in Unix
    /// milliseconds.
    pub trained_from_ms: u64,
    pub trained_until_ms: u64,
    pub settings: FitRecord,
    /// Columns of the saving run's `--users` table besides `user`, sorted, or `None` when that
    /// run had no table.
    pub user_columns: Option<Vec<String>>,
    pub models: ModelSet,
}

/// The document written for a model version, in field order.
#[derive(Serialize)]
struct SavedFile<'a> {
    format: u32,
    version: u64,
    trained_from_ms: u64,
    trained_until_ms: u64,
    settings: &'a FitRecord,
    user_columns: Option<&'a [String]>,
    models: &'a ModelSet,
}

/// The fields of a model file besides `format` and `models`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedHeader {
    version: u64,
    trained_from_ms: u64,
    trained_until_ms: u64,
    settings: FitRecord,
    user_columns: Option<Vec<String>>,
}

/// Failure to read, check or write a model file. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("model file {path} not found; check the path, or write one first with --models-save")]
    NotFound { path: PathBuf },
    /// The cause is part of the message and not a `source`, so an error chain prints it once.
    #[error("failed to read model file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("model file {path} is a folder; give the path of a file that --models-save wrote")]
    IsFolder { path: PathBuf },
    #[error(
        "model file {path} is truncated ({detail}); save the models again, or copy the whole \
         file"
    )]
    Truncated { path: PathBuf, detail: String },
    #[error("model file {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "model file {path} has {part} format version {found}, but this veer reads version \
         {expected}; fit and save the models again with this veer"
    )]
    FormatVersion {
        path: PathBuf,
        /// `file` for the file format, `models` for the format of the models in it.
        part: &'static str,
        found: String,
        expected: u32,
    },
    #[error(
        "model file {path} does not match this run: the models were fitted with {setting} = \
         {saved}, but this run has {run}; run with the settings of the run that saved them, or \
         fit new models without --models-load"
    )]
    SettingMismatch {
        path: PathBuf,
        setting: String,
        saved: String,
        run: String,
    },
    #[error(
        "model file {path} does not match this run's user table: the models were fitted with \
         {saved}, but this run has {run}; run with a --users table that has the saving run's \
         age and gender columns, or none if it had none, or fit new models without \
         --models-load"
    )]
    UserTableMismatch {
        path: PathBuf,
        saved: String,
        run: String,
    },
    /// The cause is part of the message and not a `source`, so an error chain prints it once.
    #[error("failed to write model file {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "folder of model file {path} not found: create it or name a file in an existing folder"
    )]
    MissingFolder { path: PathBuf },
}

/// Reads a model file and checks its format versions. [`ModelFile::check`] then checks its
/// settings against a run's.
pub fn load(path: &Path) -> Result<ModelFile, ModelFileError> {
    if path.is_dir() {
        return Err(ModelFileError::IsFolder {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|cause| match cause.kind() {
        std::io::ErrorKind::NotFound => ModelFileError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ModelFileError::Read {
            path: path.to_path_buf(),
            cause,
        },
    })?;
    let corrupt = |detail: String| ModelFileError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let document: Value = serde_json::from_slice(&bytes).map_err(|error| {
        if error.is_eof() {
            ModelFileError::Truncated {
                path: path.to_path_buf(),
                detail: format!("{} bytes, the JSON ends early: {error}", bytes.len()),
            }
        } else {
            corrupt(format!("invalid JSON: {error}"))
        }
    })?;
    let Value::Object(mut fields) = document else {
        return Err(corrupt("expected a JSON object".into()));
    };

    let format = fields.get("format");
    if format.and_then(Value::as_u64) != Some(u64::from(MODEL_FILE_FORMAT)) {
        return Err(ModelFileError::FormatVersion {
            path: path.to_path_buf(),
            part: "file",
            found: format.map_or_else(|| "missing".into(), ToString::to_string),
            expected: MODEL_FILE_FORMAT,
        });
    }
    fields.remove("format");
    let models = fields
        .remove("models")
        .ok_or_else(|| corrupt("missing field `models`".into()))?;
    let models = ModelSet::from_document(models).map_err(|error| match error {
        MlError::VersionMismatch { found, expected } => ModelFileError::FormatVersion {
            path: path.to_path_buf(),
            part: "models",
            found,
            expected,
        },
        MlError::Load(error) => corrupt(format!("invalid `models`: {error}")),
        other => corrupt(format!("invalid `models`: {other}")),
    })?;
    let header: SavedHeader = serde_json::from_value(Value::Object(fields))
        .map_err(|error| corrupt(format!("invalid header: {error}")))?;
    Ok(ModelFile {
        version: header.version,
        trained_from_ms: header.trained_from_ms,
        trained_until_ms: header.trained_until_ms,
        settings: header.settings,
        user_columns: header.user_columns,
        models,
    })
}

impl ModelFile {
    /// Checks that the models were fitted on the features this veer computes, with the run's
    /// fit settings and with a user table like the run's, and names the first difference.
    ///
    /// `user_columns` are the run's `--users` columns besides `user`, or `None` without a
    /// table. Both runs must have a table or neither, and the tables must agree on the columns
    /// that the features encode ([`ENCODED_ATTRIBUTE_COLUMNS`]); other columns may differ.
    pub fn check(
        &self,
        path: &Path,
        run: &FitRecord,
        user_columns: Option<&[String]>,
    ) -> Result<(), ModelFileError> {
        let mismatch = |setting: String, saved: String, run: String| {
            Err(ModelFileError::SettingMismatch {
                path: path.to_path_buf(),
                setting,
                saved,
                run,
            })
        };
        let expected = FeatureSpec::window();
        if self.models.spec() != &expected {
            let saved = self.models.spec().names();
            let position = saved
                .iter()
                .zip(expected.names())
                .position(|(saved, expected)| saved != expected)
                .unwrap_or(saved.len().min(expected.len()));
            let describe = |names: &[String]| {
                let name = names
                    .get(position)
                    .map_or_else(|| "no feature".to_string(), |name| format!("`{name}`"));
                format!("{name} (of {} features)", names.len())
            };
            return mismatch(
                format!("feature {position}"),
                describe(saved),
                describe(expected.names()),
            );
        }
        let saved = serde_json::to_value(&self.settings).expect("fit settings serialize");
        let current = serde_json::to_value(run).expect("fit settings serialize");
        if let Some((key, saved, current)) = first_difference("", &saved, &current) {
            return mismatch(setting_name(&key), saved, current);
        }
        let saved_columns = self.user_columns.as_deref();
        if saved_columns.map(encoded_columns) != user_columns.map(encoded_columns) {
            return Err(ModelFileError::UserTableMismatch {
                path: path.to_path_buf(),
                saved: describe_user_table(saved_columns),
                run: describe_user_table(user_columns),
            });
        }
        Ok(())
    }

    /// Returns the file's fields and models as [`fit_models`](veer_operators::fit::fit_models)
    /// takes loaded models: version 0, whose scoring span the operator sets.
    pub fn loaded_version(&self) -> FittedVersion {
        FittedVersion {
            version: 0,
            applies_from_ms: 0,
            applies_until_ms: None,
            trained_from_ms: self.trained_from_ms,
            trained_until_ms: self.trained_until_ms,
            models: Ok(self.models.clone()),
        }
    }
}

/// Returns the columns among `columns` that the window features encode.
fn encoded_columns(columns: &[String]) -> Vec<&str> {
    ENCODED_ATTRIBUTE_COLUMNS
        .into_iter()
        .filter(|encoded| columns.iter().any(|column| column == encoded))
        .collect()
}

/// Describes a run's user table for [`ModelFileError::UserTableMismatch`].
fn describe_user_table(columns: Option<&[String]>) -> String {
    match columns {
        None => "no --users table".to_string(),
        Some([]) => "a --users table of no columns besides user".to_string(),
        Some(columns) => format!("a --users table of columns {}", columns.join(", ")),
    }
}

/// Returns the user-facing name of a fit setting from its key in [`FitRecord`].
fn setting_name(key: &str) -> String {
    match key {
        "window_ms" => "--window in milliseconds".to_string(),
        "seed" => "[models] seed".to_string(),
        other => format!("fit setting `{other}`"),
    }
}

/// Returns the dotted key and both values of the first leaf where `saved` and `current`
/// differ, or `None` when they are equal.
fn first_difference(key: &str, saved: &Value, current: &Value) -> Option<(String, String, String)> {
    crate::json_diff::differences(key, saved, current)
        .into_iter()
        .next()
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, synced, then
/// renamed over `path`, and the folder synced so the rename survives a crash.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = folder_of(path);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let temporary = folder.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        sync_folder(&folder)
    })();
    if written.is_err() {
        // The temporary file may be missing already, which leaves nothing to remove.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Returns the folder of `path`, `.` for a bare file name.
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    File::open(folder)?.sync_all()
}

#[cfg(not(unix))]
fn sync_folder(_folder: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Saves each model version of a run to one file, replacing the previous version, so the file
/// contains the latest version. Failures are logged and counted, and [`ModelSaver::finish`]
/// reports them after the run.
#[derive(Debug)]
pub struct ModelSaver {
    path: PathBuf,
    settings: FitRecord,
    user_columns: Option<Vec<String>>,
    saved: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ModelSaver {
    /// Creates a saver for `path` with the run's fit settings and its `--users` columns
    /// besides `user` (`None` without a table). Fails unless a file can be created in the
    /// folder of `path`, so that a run does not fit for hours and then fail to save.
    pub fn new(
        path: &Path,
        settings: FitRecord,
        user_columns: Option<Vec<String>>,
    ) -> Result<ModelSaver, ModelFileError> {
        let write_error = |cause| ModelFileError::Write {
            path: path.to_path_buf(),
            cause,
        };
        if path.is_dir() {
            return Err(write_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is a folder; name a file in it",
            )));
        }
        if !folder_of(path).is_dir() {
            return Err(ModelFileError::MissingFolder {
                path: path.to_path_buf(),
            });
        }
        let probe = folder_of(path).join(format!(".veer-models-probe.{}.tmp", std::process::id()));
        File::create(&probe).map_err(write_error)?;
        std::fs::remove_file(&probe).map_err(write_error)?;
        Ok(ModelSaver {
            path: path.to_path_buf(),
            settings,
            user_columns,
            saved: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Returns the path the versions are saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves one version, replacing the file's previous content.
    pub fn save(
        &self,
        version: u64,
        trained: (u64, u64),
        models: &ModelSet,
    ) -> Result<(), ModelFileError> {
        let document = SavedFile {
            format: MODEL_FILE_FORMAT,
            version,
            trained_from_ms: trained.0,
            trained_until_ms: trained.1,
            settings: &self.settings,
            user_columns: self.user_columns.as_deref(),
            models,
        };
        let bytes = serde_json::to_vec(&document).expect("models serialize to JSON");
        write_atomically(&self.path, &bytes).map_err(|cause| ModelFileError::Write {
            path: self.path.clone(),
            cause,
        })?;
        self.saved.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            version,
            trained_from_ms = trained.0,
            trained_until_ms = trained.1,
            path = %self.path.display(),
            bytes = bytes.len(),
            "saved model version"
        );
        Ok(())
    }

    /// Returns the number of versions saved.
    pub fn saved(&self) -> u64 {
        self.saved.load(Ordering::Relaxed)
    }

    /// Fails when a version could not be saved, naming the file and the last error.
    pub fn finish(&self) -> anyhow::Result<()> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .unwrap_or_default();
        anyhow::bail!(
            "{failed} model versions were not saved to {} (last error: {last_error}); the file \
             contains an older version or none",
            self.path.display()
        )
    }
}

impl VersionSink for ModelSaver {
    fn fitted(&self, fitted: &FittedVersion, models: &ModelSet) {
        let trained = (fitted.trained_from_ms, fitted.trained_until_ms);
        if let Err(error) = self.save(fitted.version, trained, models) {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(version = fitted.version, %error, "failed to save a model version, so the run continues and reports the failure at its end");
            *self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
        }
    }
}

/// Loads the models of `load` into `models` and sets up saving to `save`, before a run
/// starts. Returns the saver, whose [`ModelSaver::finish`] the caller checks after the run.
///
/// Loaded models are checked against the run's fit settings and `user_columns`, the columns of
/// its `--users` table besides `user` (`None` without a table). With both paths, the loaded
/// version is saved to `save` at once (unless both name the same file), so that `save`
/// contains the models in force from the start of the run.
pub fn prepare_run(
    models: &mut ModelRunSettings,
    window_ms: u64,
    user_columns: Option<Vec<String>>,
    load: Option<&Path>,
    save: Option<&Path>,
) -> anyhow::Result<Option<Arc<ModelSaver>>> {
    let record = FitRecord::of(models, window_ms);
    let loaded = match load {
        Some(path) => {
            let file = self::load(path)?;
            file.check(path, &record, user_columns.as_deref())?;
            tracing::info!(
                path = %path.display(),
                version = file.version,
                trained_from_ms = file.trained_from_ms,
                trained_until_ms = file.trained_until_ms,
                features = ?file.models.selected_features(),
                "loaded models; they score every window from the first, without a bootstrap fit"
            );
            Some(Arc::new(file))
        }
        None => None,
    };
    let saver = match save {
        Some(path) => {
            let saver = ModelSaver::new(path, record, user_columns)?;
            if let (Some(file), Some(load)) = (&loaded, load) {
                if !same_file(load, path) {
                    let trained = (file.trained_from_ms, file.trained_until_ms);
                    saver.save(file.version, trained, &file.models)?;
                }
            }
            Some(Arc::new(saver))
        }
        None => None,
    };
    models.loaded = loaded;
    models.sink = saver.clone().map(|saver| saver as Arc<dyn VersionSink>);
    Ok(saver)
}

/// Returns whether two paths name the same existing file.
fn same_file(first: &Path, second: &Path) -> bool {
    match (std::fs::canonicalize(first), std::fs::canonicalize(second)) {
        (Ok(first), Ok(second)) => first == second,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn difference_names_nested_key() {
        let saved = json!({"seed": 7, "params": {"max_rows": 3000, "k": 4}});
        let current = json!({"seed": 7, "params": {"max_rows": 5000, "k": 4}});
        let found = first_difference("", &saved, &current);
        assert_eq!(
            found,
            Some(("params.max_rows".into(), "3000".into(), "5000".into()))
        );
    }

    #[test]
    fn difference_none_when_equal() {
        let value = json!({"seed": 7, "params": {"max_rows": 3000}});
        assert_eq!(first_difference("", &value, &value), None);
    }

    #[test]
    fn difference_finds_removed_setting() {
        let saved = json!({"seed": 7, "old": 1});
        let current = json!({"seed": 7});
        let found = first_difference("", &saved, &current);
        assert_eq!(
            found,
            Some(("old".into(), "1".into(), "no such setting".into()))
        );
    }

    #[test]
    fn atomic_write_replaces_file() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("models.json");
        write_atomically(&path, b"first").expect("first write");
        write_atomically(&path, b"second").expect("second write");
        assert_eq!(std::fs::read(&path).expect("file"), b"second");
        let names: Vec<_> = std::fs::read_dir(folder.path())
            .expect("folder")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("models.json")]);
    }

    #[test]
    fn saver_rejects_missing_folder() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("absent").join("models.json");
        let settings = FitRecord::of(&ModelRunSettings::default(), 3_600_000);
        let error = ModelSaver::new(&path, settings, None).expect_err("no folder");
        assert!(
            matches!(error, ModelFileError::MissingFolder { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("absent"), "{error}");
    }
}
