//! The checkpoint file: a framed, checksummed, versioned payload, written atomically.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "VEERCKPT"
//!      8     4  format version (FORMAT_VERSION)
//!     12     8  payload length in bytes
//!     20     4  CRC-32 (IEEE) of the payload
//!     24     n  payload: bincode 1.3 of the checkpoint contents
//! ```
//!
//! A reader checks the magic, the version, the length against the file's size and the
//! checksum before it decodes anything, and decodes with a byte limit equal to the payload
//! length, so a corrupt length prefix inside the payload cannot make it allocate more than the
//! file holds.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"VEERCKPT";
/// Version of the layout and of the payload's types; a change to either bumps it.
pub const FORMAT_VERSION: u32 = 11;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// File name prefix of checkpoints; the rest is a zero-padded sequence number.
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".veer";

/// Reason a checkpoint file was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint {path}: cannot read it: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("checkpoint {path}: not a veer checkpoint (the file does not start with VEERCKPT)")]
    NotACheckpoint { path: PathBuf },
    #[error(
        "checkpoint {path}: format version {found} is not supported (this build reads version \
         {expected}); resume with the veer version that wrote it, or start without --resume"
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("checkpoint {path}: truncated: the header gives a payload of {expected} bytes, the file holds {found}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("checkpoint {path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}); the file is corrupt")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("checkpoint {path}: invalid contents: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("checkpoint folder {path}: holds no checkpoint (no {PREFIX}*{SUFFIX} file)")]
    Missing { path: PathBuf },
    #[error("checkpoint folder {path} not found; check the folder given to --resume")]
    FolderNotFound { path: PathBuf },
    #[error("checkpoint {path}: failed to write it: {reason}")]
    Unwritable { path: PathBuf, reason: String },
}

/// Returns the bincode options used for payloads: fixed-width integers, little-endian, and
/// a limit of `limit` bytes on what decoding may read or allocate.
fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(limit)
        .reject_trailing_bytes()
}

/// Encodes `value` with the checkpoint's bincode options, without the file header.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    options(u64::MAX).serialize(value)
}

/// Decodes a value written by [`encode_payload`], reading at most `bytes.len()` bytes.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options(bytes.len() as u64).deserialize(bytes)
}

/// Encodes `value` into a complete checkpoint file image.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    let payload = encode_payload(value)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Decodes a checkpoint file image; `path` only names the file in errors.
pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, CheckpointError> {
    let path = path.to_path_buf();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(CheckpointError::NotACheckpoint { path });
    }
    if bytes.len() < HEADER_LEN {
        return Err(CheckpointError::Truncated {
            path,
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let field = |at: usize, len: usize| &bytes[at..at + len];
    let version = u32::from_le_bytes(field(8, 4).try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path,
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let length = u64::from_le_bytes(field(12, 8).try_into().expect("8 bytes"));
    let stored = u32::from_le_bytes(field(20, 4).try_into().expect("4 bytes"));
    let available = (bytes.len() - HEADER_LEN) as u64;
    if length != available {
        return Err(CheckpointError::Truncated {
            path,
            expected: length,
            found: available,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(CheckpointError::Checksum {
            path,
            stored,
            computed,
        });
    }
    decode_payload(payload).map_err(|error| CheckpointError::Invalid {
        path,
        reason: error.to_string(),
    })
}

/// Reads and decodes the checkpoint at `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let bytes = fs::read(path).map_err(|error| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    decode(path, &bytes)
}

/// Returns the checkpoint files in `dir`, oldest first, with their sequence numbers.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix(SUFFIX))
        else {
            continue;
        };
        if let Ok(sequence) = number.parse::<u64>() {
            found.push((sequence, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Returns the newest checkpoint file in `dir`.
pub fn latest(dir: &Path) -> Result<(u64, PathBuf), CheckpointError> {
    let files = match list(dir) {
        Ok(files) => files,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::FolderNotFound {
                path: dir.to_path_buf(),
            })
        }
        Err(error) => {
            return Err(CheckpointError::Unreadable {
                path: dir.to_path_buf(),
                reason: error.to_string(),
            })
        }
    };
    files.last().cloned().ok_or(CheckpointError::Missing {
        path: dir.to_path_buf(),
    })
}

/// Writes `bytes` as checkpoint number `sequence` in `dir`, atomically: a temporary file is
/// written and synced, renamed into place, and the folder is synced so the rename is durable.
/// Then every checkpoint but the newest `keep` is removed. Returns the new file's path.
///
/// On failure the temporary file is removed, so a run that keeps failing (a full disk) does not
/// fill the folder, and the error names the file or folder that failed.
pub fn write_atomic(
    dir: &Path,
    sequence: u64,
    bytes: &[u8],
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let unwritable = |path: &Path, error: std::io::Error| CheckpointError::Unwritable {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    fs::create_dir_all(dir).map_err(|error| unwritable(dir, error))?;
    let path = dir.join(format!("{PREFIX}{sequence:010}{SUFFIX}"));
    let temporary = dir.join(format!(".{PREFIX}{sequence:010}{SUFFIX}.tmp"));
    let written = write_synced(&temporary, bytes)
        .map_err(|error| unwritable(&temporary, error))
        .and_then(|()| fs::rename(&temporary, &path).map_err(|error| unwritable(&path, error)));
    if let Err(error) = written {
        remove_temporary(&temporary);
        return Err(error);
    }
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|error| unwritable(dir, error))?;

    // The new checkpoint is durable from here on, so a failure to prune is only a warning.
    let files = match list(dir) {
        Ok(files) => files,
        Err(error) => {
            tracing::warn!(%error, folder = %dir.display(), "failed to list old checkpoints to remove");
            return Ok(path);
        }
    };
    let remove = files.len().saturating_sub(keep.max(1));
    for (_, old) in &files[..remove] {
        if let Err(error) = fs::remove_file(old) {
            tracing::warn!(%error, file = %old.display(), "failed to remove an old checkpoint");
        }
    }
    Ok(path)
}

/// Creates `path` with `bytes` as its contents and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes the temporary file of a failed checkpoint write, if it was created.
fn remove_temporary(temporary: &Path) {
    match fs::remove_file(temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(%error, file = %temporary.display(), "failed to remove the temporary file of a failed checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(u64, String)> {
        vec![(1, "one".into()), (2, "two".into())]
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        let back: Vec<(u64, String)> = decode(Path::new("x"), &bytes).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn flipped_byte_fails_checksum() {
        let mut bytes = encode(&sample()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let error = decode::<Vec<(u64, String)>>(Path::new("x"), &bytes).unwrap_err();
        assert!(matches!(error, CheckpointError::Checksum { .. }), "{error}");
    }

    #[test]
    fn other_version_rejected() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[8] = 99;
        let error = decode::<Vec<(u64, String)>>(Path::new("x"), &bytes).unwrap_err();
        assert!(error.to_string().contains("format version 99"), "{error}");
    }

    #[test]
    fn truncated_file_rejected() {
        let bytes = encode(&sample()).unwrap();
        let error =
            decode::<Vec<(u64, String)>>(Path::new("x"), &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(
            matches!(error, CheckpointError::Truncated { .. }),
            "{error}"
        );
    }

    #[test]
    fn huge_inner_length_fails_without_allocating() {
        // A payload whose vector length prefix claims 2^60 elements, with a valid checksum.
        let payload = (1u64 << 60).to_le_bytes();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let error = decode::<Vec<u64>>(Path::new("x"), &bytes).unwrap_err();
        assert!(matches!(error, CheckpointError::Invalid { .. }), "{error}");
    }

    #[test]
    fn write_prunes_old_files() {
        let dir = tempfile::tempdir().unwrap();
        for sequence in 1..=5 {
            write_atomic(dir.path(), sequence, &encode(&sample()).unwrap(), 2).unwrap();
        }
        let files = list(dir.path()).unwrap();
        let numbers: Vec<u64> = files.iter().map(|(number, _)| *number).collect();
        assert_eq!(numbers, vec![4, 5]);
        assert_eq!(latest(dir.path()).unwrap().0, 5);
    }

    #[test]
    fn failed_write_removes_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty folder where the checkpoint file belongs makes the rename fail after
        // the temporary file was written.
        let blocker = dir.path().join(format!("{PREFIX}{:010}{SUFFIX}", 1));
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("inside"), b"x").unwrap();

        let error = write_atomic(dir.path(), 1, &encode(&sample()).unwrap(), 2).unwrap_err();
        assert!(
            matches!(&error, CheckpointError::Unwritable { path, .. } if *path == blocker),
            "{error}"
        );
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("{PREFIX}{:010}{SUFFIX}", 1)]);
    }
}
