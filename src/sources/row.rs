//! Events of lines whose ids are 64-bit integers, and writing events straight into a batch.

use veer_models::{Behavior, Event, Id};

/// The values of a line whose ids are integers of up to 64 bits, kept in registers until the
/// event is written.
pub(crate) struct IntegerRow {
    pub(crate) ts_ms: i64,
    pub(crate) user: u64,
    pub(crate) item: u64,
    pub(crate) category: u64,
    pub(crate) behavior: Behavior,
}

impl IntegerRow {
    /// Returns the event of the row, with no topic, price, brand, dwell time or session.
    #[inline(always)]
    pub(crate) fn into_event(self, line_no: u64) -> Event {
        Event {
            ts_ms: self.ts_ms,
            user: Id::from(self.user),
            category: Id::from(self.category),
            item: Id::from(self.item),
            behavior: self.behavior,
            topic: None,
            price: None,
            brand: None,
            dwell_ms: None,
            session: None,
            line: line_no,
        }
    }

    /// Pushes the row's event onto `events`, written straight into the vector's spare slot.
    #[inline(always)]
    pub(crate) fn push_into(self, line_no: u64, events: &mut Vec<Event>) {
        // Written out instead of calling `push_in_place`: through its closure the event was
        // built on the stack and copied with a `memcpy` call.
        events.reserve(1);
        events.spare_capacity_mut()[0].write(self.into_event(line_no));
        // SAFETY: the slot at `len` is within the capacity reserved above, and the line above
        // initialised it.
        unsafe { events.set_len(events.len() + 1) };
    }
}

/// Pushes the event that `build` returns onto `events` and returns `true`, or returns `false`
/// and leaves `events` unchanged when `build` returns `None`.
///
/// The vector grows before `build` runs, so the compiler can write the event's fields into the
/// vector's spare slot. With `push`, the growth call comes after the event is built, so the
/// event is built on the stack and then copied (152 bytes).
#[inline(always)]
pub(crate) fn push_in_place(
    events: &mut Vec<Event>,
    build: impl FnOnce() -> Option<Event>,
) -> bool {
    events.reserve(1);
    let Some(event) = build() else {
        return false;
    };
    events.spare_capacity_mut()[0].write(event);
    // SAFETY: the slot at `len` is within the capacity reserved above, and the line above
    // initialised it.
    unsafe { events.set_len(events.len() + 1) };
    true
}
