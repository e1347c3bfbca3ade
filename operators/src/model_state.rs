//! State of the model path's operators, held outside them so that a checkpoint can encode it
//! between steps, and the counters a checkpoint reads to know that the model path has caught
//! up with its cut.
//!
//! A checkpoint of a model run cuts at a time T between two population window boundaries,
//! once the detector has passed T. The model path lags behind: each user's window that
//! contains T is still open, and windows wait in the score operator while their model version
//! is fitted. The cut waits for a running fit, and is skipped while windows wait for a version
//! that no running fit brings, because that version may need events after T. The checkpoint
//! is taken when, for the start S of the window that contains T:
//!
//! - every worker's window operator has taken all of its input before T
//!   ([`ModelTraffic::windows_caught_up`]), so the open windows hold every event before T;
//! - no fit is running ([`ModelTraffic::fits_running`]) and every model update sent has been
//!   received ([`ModelTraffic::updates_settled`]);
//! - no window waits for its model version ([`ModelTraffic::waiting_windows`]);
//! - a probe after the alert sink and the segment updates has passed S, so every window
//!   before S has been scored and its alerts are in the sink.
//!
//! Then the state of each operator is exactly that of a run which has seen every event before
//! T and none after, and nothing of the model path is in flight.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::fit::FitState;
use crate::score::ScoreState;
use crate::segments::SegmentStore;
use crate::windows::WindowsState;

/// Counters of the model path shared by every worker of a process.
#[derive(Debug)]
pub struct ModelTraffic {
    /// Input frontier of each worker's window operator after its latest activation;
    /// `u64::MAX` once the input has ended.
    windows_frontier: Vec<AtomicU64>,
    /// Windows waiting for their model version in each worker's score operator.
    waiting: Vec<AtomicU64>,
    /// Model updates sent by the fit operator, counted once per receiving worker.
    updates_sent: AtomicU64,
    /// Model updates taken by the score operators of every worker.
    updates_received: AtomicU64,
    /// Fits sent to the fit thread whose result the fit operator has not taken yet.
    fits_running: AtomicU64,
    /// Whether the fit operator may still read closed windows. It stops once every version
    /// has started, and then no worker copies its windows to it.
    fit_reads_windows: AtomicBool,
}

impl ModelTraffic {
    /// Creates the counters for `workers` workers.
    pub fn new(workers: usize) -> Self {
        ModelTraffic {
            windows_frontier: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            waiting: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            updates_sent: AtomicU64::new(0),
            updates_received: AtomicU64::new(0),
            fits_running: AtomicU64::new(0),
            fit_reads_windows: AtomicBool::new(true),
        }
    }

    /// Records the input frontier of `worker`'s window operator; `None` for an ended input.
    pub fn record_windows_frontier(&self, worker: usize, frontier: Option<u64>) {
        self.windows_frontier[worker].store(frontier.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Returns whether every worker's window operator has taken all of its input before `cut`.
    pub fn windows_caught_up(&self, cut: u64) -> bool {
        self.windows_frontier
            .iter()
            .all(|frontier| frontier.load(Ordering::SeqCst) >= cut)
    }

    /// Records the number of windows waiting in `worker`'s score operator.
    pub fn record_waiting(&self, worker: usize, windows: usize) {
        self.waiting[worker].store(windows as u64, Ordering::SeqCst);
    }

    /// Returns the number of windows waiting for their model version, over all workers.
    pub fn waiting_windows(&self) -> u64 {
        self.waiting
            .iter()
            .map(|waiting| waiting.load(Ordering::SeqCst))
            .sum()
    }

    /// Counts `copies` model updates sent.
    pub fn updates_sent(&self, copies: usize) {
        self.updates_sent.fetch_add(copies as u64, Ordering::SeqCst);
    }

    /// Counts one model update received.
    pub fn update_received(&self) {
        self.updates_received.fetch_add(1, Ordering::SeqCst);
    }

    /// Records the number of fits running.
    pub fn record_fits_running(&self, running: u64) {
        self.fits_running.store(running, Ordering::SeqCst);
    }

    /// Returns the number of fits running.
    pub fn fits_running(&self) -> u64 {
        self.fits_running.load(Ordering::SeqCst)
    }

    /// Records that the fit operator reads no more windows.
    pub fn record_fit_done_with_windows(&self) {
        self.fit_reads_windows.store(false, Ordering::Relaxed);
    }

    /// Returns whether the fit operator may still read closed windows.
    pub fn fit_reads_windows(&self) -> bool {
        self.fit_reads_windows.load(Ordering::Relaxed)
    }

    /// Returns whether every model update sent has been received.
    pub fn updates_settled(&self) -> bool {
        self.updates_sent.load(Ordering::SeqCst) == self.updates_received.load(Ordering::SeqCst)
    }
}

/// Handles to the state of every model path operator on one worker.
#[derive(Clone)]
pub struct ModelState {
    pub windows: Rc<RefCell<WindowsState>>,
    /// Used on worker 0 only, where the fits run.
    pub fit: Rc<RefCell<FitState>>,
    pub score: Rc<RefCell<ScoreState>>,
    pub segments: SegmentStore,
    pub traffic: Arc<ModelTraffic>,
}

impl ModelState {
    /// Creates empty state for a worker, with the process's shared counters.
    pub fn new(traffic: Arc<ModelTraffic>) -> Self {
        ModelState {
            windows: Rc::default(),
            fit: Rc::default(),
            score: Rc::default(),
            segments: SegmentStore::default(),
            traffic,
        }
    }
}
