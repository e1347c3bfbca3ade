//! The burst check's queue of a user's latest events.

use serde::{Deserialize, Serialize};

use crate::event::Id;

/// Event times (Unix seconds) and categories of a user's latest events, oldest first.
///
/// A user who browses at a person's pace has at most one entry, which is stored inline. A
/// longer queue is boxed, and the box is kept when entries expire, until [`RecentEvents::clear`]
/// when the user's next session starts. The queue is 24 bytes, because the tag of the inline entry's
/// category id also marks which form is in use. Its serde form is a sequence of pairs, as a
/// `Vec`'s is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<(i64, Id)>", into = "Vec<(i64, Id)>")]
pub(crate) struct RecentEvents(Queue);

/// The storage of [`RecentEvents`]. `Many` contains at least one entry, because it is created
/// with two and every removal is followed by a push.
#[derive(Clone, Debug, Default)]
enum Queue {
    #[default]
    Empty,
    One((i64, Id)),
    Many(Box<Vec<(i64, Id)>>),
}

impl RecentEvents {
    /// Returns the entries, oldest first.
    pub(crate) fn as_slice(&self) -> &[(i64, Id)] {
        match &self.0 {
            Queue::Empty => &[],
            Queue::One(entry) => std::slice::from_ref(entry),
            Queue::Many(entries) => entries,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Appends an entry at the back.
    pub(crate) fn push(&mut self, entry: (i64, Id)) {
        if let Queue::Many(entries) = &mut self.0 {
            entries.push(entry);
            return;
        }
        self.0 = match std::mem::take(&mut self.0) {
            Queue::One(first) => Queue::Many(Box::new(vec![first, entry])),
            Queue::Empty => Queue::One(entry),
            Queue::Many(_) => unreachable!("a boxed queue appends in place"),
        };
    }

    /// Removes the `count` oldest entries (all of them when there are fewer), then appends
    /// `entry`.
    ///
    /// A boxed queue stays boxed even when every old entry is removed. A user whose events come
    /// in pairs closer than the burst span, with longer pauses in between, would otherwise
    /// free the box and allocate a new one for each pair.
    pub(crate) fn push_after_removing(&mut self, count: usize, entry: (i64, Id)) {
        match &mut self.0 {
            Queue::Many(entries) => {
                entries.drain(..count.min(entries.len()));
                entries.push(entry);
            }
            Queue::One(_) if count > 0 => self.0 = Queue::One(entry),
            Queue::One(_) | Queue::Empty => self.push(entry),
        }
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.0 = Queue::Empty;
    }
}

/// Compares the entries, so a boxed queue of one entry equals the inline form of that entry.
impl PartialEq for RecentEvents {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl From<Vec<(i64, Id)>> for RecentEvents {
    fn from(mut entries: Vec<(i64, Id)>) -> Self {
        RecentEvents(match entries.len() {
            0 => Queue::Empty,
            1 => Queue::One(entries.pop().expect("one entry")),
            _ => Queue::Many(Box::new(entries)),
        })
    }
}

impl From<RecentEvents> for Vec<(i64, Id)> {
    fn from(recent: RecentEvents) -> Self {
        match recent.0 {
            Queue::Empty => Vec::new(),
            Queue::One(entry) => vec![entry],
            Queue::Many(entries) => *entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64) -> (i64, Id) {
        (ts, Id::from(ts as u64))
    }

    fn times(recent: &RecentEvents) -> Vec<i64> {
        recent.as_slice().iter().map(|(ts, _)| *ts).collect()
    }

    #[test]
    fn queue_is_24_bytes() {
        assert_eq!(std::mem::size_of::<RecentEvents>(), 24);
    }

    #[test]
    fn push_keeps_order() {
        let mut recent = RecentEvents::default();
        recent.push(entry(1));
        assert!(matches!(recent.0, Queue::One(_)));
        for ts in 2..=4 {
            recent.push(entry(ts));
        }
        assert_eq!(times(&recent), vec![1, 2, 3, 4]);
        assert!(matches!(recent.0, Queue::Many(_)));
    }

    #[test]
    fn push_after_removing_keeps_order() {
        let mut recent = RecentEvents::default();
        recent.push_after_removing(0, entry(1));
        assert!(matches!(recent.0, Queue::One(_)));
        recent.push_after_removing(0, entry(2));
        recent.push_after_removing(0, entry(3));
        assert_eq!(times(&recent), vec![1, 2, 3]);

        recent.push_after_removing(2, entry(4));
        assert_eq!(times(&recent), vec![3, 4]);
        assert!(matches!(recent.0, Queue::Many(_)));
        recent.push_after_removing(1, entry(5));
        assert_eq!(times(&recent), vec![4, 5]);
        recent.push_after_removing(5, entry(6));
        assert_eq!(times(&recent), vec![6]);
    }

    #[test]
    fn boxed_queue_stays_boxed() {
        let mut recent = RecentEvents::default();
        recent.push_after_removing(0, entry(1));
        recent.push_after_removing(0, entry(2));
        let boxed_at = recent.as_slice().as_ptr();
        recent.push_after_removing(2, entry(3));
        assert_eq!(times(&recent), vec![3]);
        assert!(matches!(recent.0, Queue::Many(_)));
        let json = serde_json::to_string(&recent).expect("serialise");
        assert_eq!(json, serde_json::to_string(&vec![entry(3)]).expect("serialise"));
        let back: RecentEvents = serde_json::from_str(&json).expect("deserialise");
        assert!(matches!(back.0, Queue::One(_)), "one entry is read back inline");
        assert_eq!(back, recent);
        recent.push_after_removing(0, entry(4));
        assert_eq!(times(&recent), vec![3, 4]);
        assert_eq!(recent.as_slice().as_ptr(), boxed_at, "no new allocation");
        recent.clear();
        assert_eq!(recent.len(), 0);
        assert!(matches!(recent.0, Queue::Empty));
    }

    #[test]
    fn inline_entry_replaced_or_kept() {
        let mut recent = RecentEvents::default();
        recent.push_after_removing(0, entry(1));
        recent.push_after_removing(1, entry(2));
        assert_eq!(times(&recent), vec![2]);
        assert!(matches!(recent.0, Queue::One(_)), "a replaced entry stays inline");
        recent.push_after_removing(0, entry(3));
        assert_eq!(times(&recent), vec![2, 3]);
    }

    #[test]
    fn serde_form_matches_smallvec() {
        // Checkpoints stored the queue as a `SmallVec` before, a sequence of pairs.
        for count in 0..=3 {
            let entries: Vec<(i64, Id)> = (1..=count).map(entry).collect();
            let recent = RecentEvents::from(entries.clone());
            let json = serde_json::to_string(&recent).expect("serialise");
            let small: smallvec::SmallVec<[(i64, Id); 1]> = entries.into_iter().collect();
            assert_eq!(json, serde_json::to_string(&small).expect("serialise"));
            let back: RecentEvents = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, recent);
        }
    }
}
