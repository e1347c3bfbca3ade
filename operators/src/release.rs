//! The buffer in which operators keep events until the frontier lets them go.

use veer_models::Event;

/// Events waiting for the frontier, released in the engine's processing order.
///
/// Arrivals are appended unsorted. A release moves out every event whose time passes a test,
/// sorts them by [`Event::processing_cmp`] (time, then the event's own fields) and leaves the
/// rest. Events mostly arrive just ahead of the frontier, so the buffer stays small and a
/// release costs about one pass over it plus the sort of what leaves; an ordered map keyed by
/// time cost a tree search and an allocation per event.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReleaseBuffer {
    events: Vec<Event>,
    /// Earliest event time in `events`, kept up to date on every change.
    earliest: Option<u64>,
}

impl ReleaseBuffer {
    /// Adds events in any order.
    pub fn extend(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            let time = event.ts_ms as u64;
            self.earliest = Some(self.earliest.map_or(time, |earliest| earliest.min(time)));
            self.events.push(event);
        }
    }

    /// Removes and returns, sorted, every event whose time satisfies `ready`.
    ///
    /// `ready` must be monotone in time: if it accepts a time, it accepts every earlier one.
    pub fn release(&mut self, ready: impl Fn(u64) -> bool) -> Vec<Event> {
        let mut released = Vec::new();
        if self.earliest.is_none_or(|earliest| !ready(earliest)) {
            return released;
        }
        let mut earliest = None;
        // Extracting in arrival order, unlike `swap_remove`, keeps the runs that arrived
        // sorted, and the standard library's sort detects such runs and merges them.
        released.extend(self.events.extract_if(.., |event| {
            let time = event.ts_ms as u64;
            if ready(time) {
                return true;
            }
            earliest = Some(earliest.map_or(time, |low: u64| low.min(time)));
            false
        }));
        self.earliest = earliest;
        released.sort_by(Event::processing_cmp);
        released
    }

    /// Returns every buffered event, in no particular order.
    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    /// Returns the earliest buffered time, or `None` when the buffer is empty.
    pub fn earliest(&self) -> Option<u64> {
        self.earliest
    }
}
