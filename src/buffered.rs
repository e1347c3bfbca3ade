//! Events held between reading a whole input and replaying it.
//!
//! Unless `--order arrival` is given, the replay of a file or of standard input starts once
//! the whole input is read, so the whole input stays in memory. Most inputs (Taobao CSV, and JSON lines with integer ids and no
//! optional fields) carry only a time, three integer ids, a behaviour and a line. Such an
//! event fits a [`CompactEvent`] of 48 bytes instead of an [`Event`] of 152 (on x86-64).
//! Holding the input compactly saves memory and the page faults of first touching it.

use std::borrow::Cow;

use veer_models::{Behavior, Event, Id};

/// An event without a topic, price, brand, dwell time or session, and with integer ids up to
/// `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CompactEvent {
    ts_ms: i64,
    user: u64,
    category: u64,
    item: u64,
    line: u64,
    behavior: Behavior,
}

impl CompactEvent {
    /// Returns the compact form of `event`, or `None` when the event has a field it lacks.
    fn new(event: &Event) -> Option<CompactEvent> {
        let Event {
            ts_ms,
            user,
            category,
            item,
            behavior,
            topic: None,
            price: None,
            brand: None,
            dwell_ms: None,
            session: None,
            line,
        } = event
        else {
            return None;
        };
        Some(CompactEvent {
            ts_ms: *ts_ms,
            user: narrow_id(user)?,
            category: narrow_id(category)?,
            item: narrow_id(item)?,
            line: *line,
            behavior: *behavior,
        })
    }

    /// Rebuilds the event this was made from.
    fn to_event(self) -> Event {
        let mut event = Event::plain(
            self.ts_ms,
            self.user,
            self.category,
            self.item,
            self.behavior,
        );
        event.line = self.line;
        event
    }
}

/// Returns the id's integer value when it is at most `u64::MAX`. `Id::from(u64)` gives back
/// an equal id, because an `Id` stores such values in one form only.
fn narrow_id(id: &Id) -> Option<u64> {
    id.as_int().and_then(|value| u64::try_from(value).ok())
}

/// One batch of the reader's events, held until the replay sends them. Each event is taken
/// once.
#[derive(Debug)]
pub(crate) enum BufferedBatch {
    /// Events of which at least one does not fit the compact form. A taken event leaves
    /// `None`.
    Full(Vec<Option<Event>>),
    Compact(Vec<CompactEvent>),
}

// A batch of events becomes a batch of options in place, without a new allocation, because
// `Option<Event>` uses a niche of `Event`.
const _: () = assert!(std::mem::size_of::<Option<Event>>() == std::mem::size_of::<Event>());

impl BufferedBatch {
    /// Stores `events`: compactly when every one fits, in which case the emptied vector is
    /// returned too, so that the reader can reuse it.
    pub(crate) fn store(mut events: Vec<Event>) -> (BufferedBatch, Option<Vec<Event>>) {
        let compact: Option<Vec<CompactEvent>> = events.iter().map(CompactEvent::new).collect();
        match compact {
            Some(compact) => {
                events.clear();
                (BufferedBatch::Compact(compact), Some(events))
            }
            None => (BufferedBatch::store_full(events), None),
        }
    }

    /// Stores `events` in full, as they are.
    pub(crate) fn store_full(events: Vec<Event>) -> BufferedBatch {
        BufferedBatch::Full(events.into_iter().map(Some).collect())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            BufferedBatch::Full(events) => events.len(),
            BufferedBatch::Compact(events) => events.len(),
        }
    }

    /// Returns the event at `index`, which must not have been taken.
    pub(crate) fn event(&self, index: usize) -> Cow<'_, Event> {
        match self {
            BufferedBatch::Full(events) => {
                Cow::Borrowed(events[index].as_ref().expect("the event is not taken"))
            }
            BufferedBatch::Compact(events) => Cow::Owned(events[index].to_event()),
        }
    }

    /// Returns the time of the event at `index`, taken or not.
    pub(crate) fn ts_ms(&self, index: usize) -> i64 {
        match self {
            BufferedBatch::Full(events) => {
                events[index]
                    .as_ref()
                    .expect("the event is not taken")
                    .ts_ms
            }
            BufferedBatch::Compact(events) => events[index].ts_ms,
        }
    }

    /// Takes the event at `index` out of the batch. Panics if it was taken before from a full
    /// batch.
    pub(crate) fn take(&mut self, index: usize) -> Event {
        match self {
            BufferedBatch::Full(events) => events[index]
                .take()
                .expect("each buffered event is taken once"),
            BufferedBatch::Compact(events) => events[index].to_event(),
        }
    }

    /// Keeps the events whose time `check` accepts. An event it rejects with a value is removed
    /// and passed to `dropped` with that value.
    pub(crate) fn retain_by_time<R>(
        &mut self,
        mut check: impl FnMut(i64) -> Result<(), R>,
        mut dropped: impl FnMut(&Event, R),
    ) {
        match self {
            BufferedBatch::Full(events) => events.retain(|slot| {
                let Some(event) = slot else { return false };
                check(event.ts_ms)
                    .map_err(|value| dropped(event, value))
                    .is_ok()
            }),
            BufferedBatch::Compact(events) => events.retain(|event| {
                check(event.ts_ms)
                    .map_err(|value| dropped(&event.to_event(), value))
                    .is_ok()
            }),
        }
    }

    /// Moves the events of `other` to the end of this batch. A compact batch joined with a full
    /// one becomes full.
    pub(crate) fn append(&mut self, other: BufferedBatch) {
        match (&mut *self, other) {
            (BufferedBatch::Compact(events), BufferedBatch::Compact(mut more)) => {
                events.append(&mut more)
            }
            (BufferedBatch::Full(events), more) => {
                events.extend(more.into_events().into_iter().map(Some))
            }
            (BufferedBatch::Compact(events), BufferedBatch::Full(more)) => {
                let mut full: Vec<Option<Event>> =
                    events.iter().map(|event| Some(event.to_event())).collect();
                full.extend(more);
                *self = BufferedBatch::Full(full);
            }
        }
    }

    /// Returns the batch's events that are not taken, in order.
    pub(crate) fn into_events(self) -> Vec<Event> {
        match self {
            BufferedBatch::Full(events) => events.into_iter().flatten().collect(),
            BufferedBatch::Compact(events) => {
                events.into_iter().map(CompactEvent::to_event).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(user: u64, ts_ms: i64) -> Event {
        let mut event = Event::plain(ts_ms, user, 3u64, 30u64, Behavior::Cart);
        event.line = 17;
        event
    }

    #[test]
    fn compact_batch_rebuilds_events() {
        let events = vec![view(1, 1_000), view(u64::MAX, 2_000), view(0, -5)];
        let (mut batch, emptied) = BufferedBatch::store(events.clone());
        assert!(matches!(batch, BufferedBatch::Compact(_)));
        assert_eq!(emptied.map(|events| events.capacity() >= 3), Some(true));
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.ts_ms(1), 2_000);
        assert_eq!(*batch.event(2), events[2]);
        assert_eq!(batch.take(0), events[0]);
        assert_eq!(batch.into_events(), events);
    }

    #[test]
    fn optional_field_keeps_batch_full() {
        let mut priced = view(2, 3_000);
        priced.price = Some(9.5);
        let mut texted = view(3, 4_000);
        texted.item = Id::text("sku-1");
        let mut wide = view(4, 5_000);
        wide.category = Id::int(u128::from(u64::MAX) + 1);
        for odd in [priced, texted, wide] {
            let events = vec![view(1, 1_000), odd];
            let (mut batch, emptied) = BufferedBatch::store(events.clone());
            assert!(matches!(batch, BufferedBatch::Full(_)), "{:?}", events[1]);
            assert!(emptied.is_none());
            assert_eq!(batch.take(1), events[1]);
            assert_eq!(batch.into_events(), events[..1]);
        }
    }

    #[test]
    fn retain_by_time_reports_dropped() {
        let mut priced = view(9, 1_500);
        priced.price = Some(2.0);
        let events = vec![view(1, 1_000), priced, view(2, 2_000), view(3, 500)];
        let compact = vec![view(1, 1_000), view(2, 2_000), view(3, 500)];
        for events in [events, compact] {
            let (mut batch, _) = BufferedBatch::store(events.clone());
            let mut dropped = Vec::new();
            batch.retain_by_time(
                |ts_ms| {
                    if ts_ms < 1_000 {
                        Err(ts_ms + 1)
                    } else {
                        Ok(())
                    }
                },
                |event, value| dropped.push((event.clone(), value)),
            );
            let kept: Vec<Event> = events
                .iter()
                .filter(|e| e.ts_ms >= 1_000)
                .cloned()
                .collect();
            assert_eq!(dropped, vec![(view(3, 500), 501)]);
            assert_eq!(batch.into_events(), kept);
        }
    }

    #[test]
    fn append_mixes_forms() {
        let mut priced = view(9, 1_500);
        priced.price = Some(2.0);
        let plain = vec![view(1, 1_000), view(2, 2_000)];
        let full = vec![priced, view(3, 3_000)];
        for (first, second) in [
            (plain.clone(), plain.clone()),
            (plain.clone(), full.clone()),
            (full.clone(), plain.clone()),
        ] {
            let (mut batch, _) = BufferedBatch::store(first.clone());
            batch.append(BufferedBatch::store(second.clone()).0);
            assert_eq!(batch.into_events(), [first, second].concat());
        }
    }
}
