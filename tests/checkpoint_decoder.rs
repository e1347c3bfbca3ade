//! The checkpoint decoder on arbitrary and mutated bytes: it returns an error, never panics,
//! and never allocates past what the file holds (bincode reads under a byte limit equal to the
//! payload length).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;
use veer::checkpoint::file::{decode, decode_payload, HEADER_LEN};
use veer::checkpoint::snapshot::{CheckpointFile, WorkerPart};
use veer_models::UserState;

/// Bytes of a real checkpoint of a small generated run.
fn real_checkpoint() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (events, _) = common::generate_stream(dir.path(), 600, 9, 7);
        let checkpoints = dir.path().join("ck");
        let output = Command::new(env!("CARGO_BIN_EXE_veer"))
            .args([
                "run",
                "--no-progress",
                "--checkpoint-interval",
                "1ms",
                "--input",
            ])
            .arg(&events)
            .arg("--checkpoint-dir")
            .arg(&checkpoints)
            .arg("--alerts")
            .arg(dir.path().join("alerts.jsonl"))
            .output()
            .unwrap();
        assert!(output.status.success());
        let newest = std::fs::read_dir(&checkpoints)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .max()
            .expect("a checkpoint was written");
        std::fs::read(newest).unwrap()
    })
}

/// Decodes a whole file and every worker part in it, as a resume does.
fn decode_all(bytes: &[u8]) -> bool {
    match decode::<CheckpointFile>(Path::new("mutated"), bytes) {
        Ok(file) => file
            .parts
            .iter()
            .all(|part| decode_payload::<WorkerPart<UserState>>(part).is_ok()),
        Err(_) => false,
    }
}

/// Rewrites the header's length and checksum so a mutated payload reaches the decoder.
fn reframe(bytes: &mut Vec<u8>) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let payload_len = (bytes.len() - HEADER_LEN) as u64;
    bytes[12..20].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn real_checkpoint_decodes() {
    assert!(decode_all(real_checkpoint()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn mutated_checkpoint_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        fix_checksum in any::<bool>(),
    ) {
        let mut bytes = real_checkpoint().clone();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= value | 1;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if fix_checksum {
            reframe(&mut bytes);
        }
        let _ = decode_all(&bytes);
    }
}
