//! The burst check's queue of a user's latest events.

use serde::{Deserialize, Serialize};

use crate::event::Id;

/// Event times (Unix seconds) and categories of a user's latest events, oldest first.
///
/// A user who browses at a person's pace has at most one entry, which is stored inline. A
/// longer queue is boxed. The queue is 24 bytes, because the tag of the inline entry's category
/// id also marks which form is in use. Its serde form is a sequence of pairs, as a `Vec`'s is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<(i64, Id)>", into = "Vec<(i64, Id)>")]
pub(crate) struct RecentEvents(Queue);

/// The storage of [`RecentEvents`]. `Many` contains at least two entries.
#[derive(Clone, Debug, Default, PartialEq)]
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

    /// Removes the `count` oldest entries, as [`RecentEvents::remove_oldest`] does, then
    /// appends `entry`.
    ///
    /// A boxed queue that keeps an entry stays boxed, so a user whose events come closer than
    /// the burst span does not free the box and allocate a new one for every event.
    pub(crate) fn push_after_removing(&mut self, count: usize, entry: (i64, Id)) {
        if let Queue::Many(entries) = &mut self.0 {
            if count < entries.len() {
                entries.drain(..count);
                entries.push(entry);
                return;
            }
        }
        self.remove_oldest(count);
        self.push(entry);
    }

    /// Removes the `count` oldest entries (all of them when there are fewer), and frees the
    /// box once at most one entry is left.
    pub(crate) fn remove_oldest(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        // Taking the storage leaves the queue empty, which is the result for one entry.
        let mut entries = match std::mem::take(&mut self.0) {
            Queue::Empty | Queue::One(_) => return,
            Queue::Many(entries) => entries,
        };
        entries.drain(..count.min(entries.len()));
        self.0 = match entries.len() {
            0 => Queue::Empty,
            1 => Queue::One(entries.pop().expect("one entry")),
            _ => Queue::Many(entries),
        };
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.0 = Queue::Empty;
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
    fn push_and_remove_keep_order() {
        let mut recent = RecentEvents::default();
        for ts in 1..=4 {
            recent.push(entry(ts));
        }
        assert_eq!(times(&recent), vec![1, 2, 3, 4]);
        recent.remove_oldest(2);
        assert_eq!(times(&recent), vec![3, 4]);
        recent.remove_oldest(1);
        assert!(matches!(recent.0, Queue::One(_)), "one entry moves inline");
        assert_eq!(times(&recent), vec![4]);
        recent.push(entry(5));
        assert_eq!(times(&recent), vec![4, 5]);
        recent.remove_oldest(9);
        assert_eq!(recent.len(), 0);
        assert!(matches!(recent.0, Queue::Empty));
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

        // Removing every entry leaves the new one inline, as push alone would.
        recent.push_after_removing(2, entry(6));
        assert_eq!(times(&recent), vec![6]);
        assert!(matches!(recent.0, Queue::One(_)));
        recent.push_after_removing(5, entry(7));
        assert_eq!(times(&recent), vec![7]);
        assert!(matches!(recent.0, Queue::One(_)));
    }

    #[test]
    fn remove_from_inline_entry() {
        let mut recent = RecentEvents::default();
        recent.push(entry(1));
        recent.remove_oldest(0);
        assert_eq!(times(&recent), vec![1]);
        recent.remove_oldest(1);
        assert_eq!(recent.len(), 0);
        assert!(matches!(recent.0, Queue::Empty));
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
