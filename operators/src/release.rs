//! The buffer in which operators keep events until the frontier lets them go.

use std::collections::VecDeque;

use veer_models::Event;

/// Events waiting for the frontier, released in the engine's processing order.
///
/// Arrivals are appended. While they arrive in processing order, as they do after
/// [`crate::order_by_event_time`], a release takes a prefix of the buffer without sorting.
/// Otherwise a release first sorts the whole buffer, which stays sorted for the next one.
/// Events mostly arrive just ahead of the frontier, so the buffer stays small. An ordered map
/// keyed by time cost a tree search and an allocation per event.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReleaseBuffer {
    /// Encoded like a `Vec`, so checkpoints written before the deque keep their format.
    events: VecDeque<Event>,
    /// Earliest event time in `events`, kept up to date on every change.
    earliest: Option<u64>,
    /// Whether `events` is sorted by [`Event::processing_cmp`]. A restored buffer starts as
    /// unsorted, because checkpoints do not store the flag.
    #[serde(skip)]
    sorted: bool,
}

impl ReleaseBuffer {
    /// Adds events in any order.
    pub fn extend(&mut self, events: impl IntoIterator<Item = Event>) {
        if self.events.is_empty() {
            self.sorted = true;
        }
        let events = events.into_iter();
        self.events.reserve(events.size_hint().0);
        for event in events {
            let time = event.ts_ms as u64;
            self.earliest = Some(self.earliest.map_or(time, |earliest| earliest.min(time)));
            if self.sorted {
                self.sorted = self
                    .events
                    .back()
                    .is_none_or(|last| last.processing_cmp(&event).is_le());
            }
            self.events.push_back(event);
        }
    }

    /// Removes and returns, sorted, every event whose time satisfies `ready`.
    ///
    /// `ready` must be monotone in time: if it accepts a time, it accepts every earlier one.
    /// Equal events leave in the order they arrived, as a stable sort of the ready events
    /// alone would leave them.
    pub fn release(&mut self, ready: impl Fn(u64) -> bool) -> Vec<Event> {
        self.drain_ready(ready).collect()
    }

    /// Removes the events that [`ReleaseBuffer::release`] would return and yields them in the
    /// same order, without collecting them into a second buffer first.
    ///
    /// A release at the end of the input takes every buffered event, so a collected copy
    /// would double the buffer's memory at that moment. Events the iterator has not yielded
    /// when it is dropped are removed all the same.
    pub fn drain_ready(
        &mut self,
        ready: impl Fn(u64) -> bool,
    ) -> std::collections::vec_deque::Drain<'_, Event> {
        if self.earliest.is_none_or(|earliest| !ready(earliest)) {
            return self.events.drain(..0);
        }
        if !self.sorted {
            // The standard library's stable sort finds the sorted runs that arrived and
            // merges them, so a mostly sorted buffer costs about one pass.
            self.events.make_contiguous().sort_by(Event::processing_cmp);
            self.sorted = true;
        }
        // Sorted by time first, and times are never negative (readers reject them), so the
        // ready events are a prefix.
        let count = self
            .events
            .partition_point(|event| ready(event.ts_ms as u64));
        self.earliest = self.events.get(count).map(|event| event.ts_ms as u64);
        self.events.drain(..count)
    }

    /// Returns every buffered event, in no particular order.
    pub fn into_events(self) -> Vec<Event> {
        self.events.into()
    }

    /// Returns the earliest buffered time, or `None` when the buffer is empty.
    pub fn earliest(&self) -> Option<u64> {
        self.earliest
    }

    /// Returns the number of buffered events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Returns whether no event is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use veer_models::Behavior;

    use super::*;

    /// Events of three users over 2.5 seconds, with equal times, exact duplicates and, from
    /// `seed`, an arrival order that is sorted in stretches and shuffled in others.
    fn arrivals(seed: u64) -> Vec<Event> {
        let mut state = seed;
        let mut next = move |below: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % below
        };
        let mut events: Vec<Event> = (0..400u64)
            .map(|at| {
                let mut event = Event::plain(
                    (at / 4 * 25) as i64,
                    next(3),
                    next(4),
                    next(2),
                    Behavior::View,
                );
                event.line = next(3);
                event
            })
            .collect();
        for stretch in events.chunks_mut(40) {
            if next(2) == 0 {
                for at in (1..stretch.len()).rev() {
                    stretch.swap(at, next(at as u64 + 1) as usize);
                }
            }
        }
        events
    }

    /// Releases with the rule the buffer must match: take every ready event, then sort stably.
    fn reference_release(waiting: &mut Vec<Event>, bound: u64) -> Vec<Event> {
        let mut ready: Vec<Event> = waiting
            .extract_if(.., |event| (event.ts_ms as u64) < bound)
            .collect();
        ready.sort_by(Event::processing_cmp);
        ready
    }

    #[test]
    fn release_matches_stable_sort() {
        for seed in 0..20 {
            let events = arrivals(seed);
            let mut buffer = ReleaseBuffer::default();
            let mut waiting = Vec::new();
            let mut bound = 0;
            for (batch, chunk) in events.chunks(30).enumerate() {
                buffer.extend(chunk.iter().cloned());
                waiting.extend(chunk.iter().cloned());
                if batch % 2 == 1 {
                    bound += 180;
                    let released = buffer.release(|time| time < bound);
                    let expected = reference_release(&mut waiting, bound);
                    assert_eq!(released, expected, "seed {seed}, bound {bound}");
                    let earliest = waiting.iter().map(|event| event.ts_ms as u64).min();
                    assert_eq!(buffer.earliest(), earliest, "seed {seed}, bound {bound}");
                }
            }
            let rest = buffer.release(|_| true);
            assert_eq!(
                rest,
                reference_release(&mut waiting, u64::MAX),
                "seed {seed}"
            );
            assert_eq!(buffer.earliest(), None, "seed {seed}");
        }
    }

    #[test]
    fn drain_ready_matches_release() {
        let events = arrivals(7);
        let mut drained = ReleaseBuffer::default();
        let mut released = ReleaseBuffer::default();
        for (batch, chunk) in events.chunks(50).enumerate() {
            drained.extend(chunk.iter().cloned());
            released.extend(chunk.iter().cloned());
            let bound = (batch as u64 + 1) * 300;
            let by_drain: Vec<Event> = drained.drain_ready(|time| time < bound).collect();
            assert_eq!(
                by_drain,
                released.release(|time| time < bound),
                "bound {bound}"
            );
            assert_eq!(drained.earliest(), released.earliest(), "bound {bound}");
        }
        let rest: Vec<Event> = drained.drain_ready(|_| true).collect();
        assert_eq!(rest, released.release(|_| true));
        assert_eq!(drained.earliest(), None);
    }

    #[test]
    fn release_of_sorted_arrivals_keeps_them() {
        let mut events = arrivals(3);
        events.sort_by(Event::processing_cmp);
        let mut buffer = ReleaseBuffer::default();
        buffer.extend(events.iter().cloned());
        assert!(buffer.sorted, "arrivals in processing order need no sort");
        let first = buffer.release(|time| time < 1_000);
        let second = buffer.release(|_| true);
        assert_eq!([first, second].concat(), events);
    }

    #[test]
    fn restored_buffer_sorts_before_release() {
        let events = arrivals(5);
        let mut buffer = ReleaseBuffer::default();
        buffer.extend(events.iter().cloned());
        let encoded = serde_json::to_string(&buffer).expect("a buffer encodes");
        let mut restored: ReleaseBuffer = serde_json::from_str(&encoded).expect("and decodes");
        assert!(
            !restored.sorted,
            "a restored buffer is not known to be sorted"
        );
        let mut expected = events;
        expected.sort_by(Event::processing_cmp);
        assert_eq!(restored.release(|_| true), expected);
    }
}
