//! Coordination of one checkpoint across the worker threads of a run.
//!
//! Worker 0 decides when to cut: it holds the input at a time T, steps the dataflow until the
//! probe after the alert sink has passed T, and then posts a request on the [`Board`]. Every
//! worker answers between two of its steps with its encoded state. No worker can change its
//! state for times before T any more, and no record at or after T exists yet, so the parts
//! form a consistent cut whenever each worker encodes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Requests and answers of checkpoints, shared by the workers of a run.
pub struct Board {
    requested: AtomicU64,
    parts: Mutex<Vec<Option<Result<Vec<u8>, String>>>>,
}

impl Board {
    /// Creates a board for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Board {
            requested: AtomicU64::new(0),
            parts: Mutex::new((0..workers).map(|_| None).collect()),
        }
    }

    /// Posts a request for checkpoint `sequence`, forgetting any earlier answers.
    pub fn request(&self, sequence: u64) {
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        parts.iter_mut().for_each(|part| *part = None);
        self.requested.store(sequence, Ordering::SeqCst);
    }

    /// Answers the latest request, if worker `index` has not answered it yet; `answered` is
    /// the worker's own record of the last request it answered.
    pub fn serve(
        &self,
        index: usize,
        answered: &mut u64,
        encode: impl FnOnce() -> Result<Vec<u8>, String>,
    ) {
        let requested = self.requested.load(Ordering::SeqCst);
        if requested <= *answered {
            return;
        }
        let part = encode();
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        parts[index] = Some(part);
        *answered = requested;
    }

    /// Takes every worker's answer once all have answered.
    pub fn collect(&self) -> Option<Vec<Result<Vec<u8>, String>>> {
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if parts.iter().any(Option::is_none) {
            return None;
        }
        Some(
            parts
                .iter_mut()
                .map(|part| part.take().expect("checked above"))
                .collect(),
        )
    }
}
