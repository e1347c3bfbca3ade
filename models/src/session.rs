//! The session rule: where one user's session ends and the next begins.
//!
//! The detector, the population's co-occurrence counts, the baseline detector, the window
//! features and `veer explain` all split a user's events into sessions, and all must split
//! them alike. A session ends when the input's session id changes, after a gap without
//! events, or once it has lasted `max_span_secs`. The last bound matters for users who are
//! active without pause, such as a feed that logs an event every few minutes all day.
//! Without it such a user has one session for the whole run. A detector that counts sessions
//! then never judges the user, and the co-occurrence counts link every category they visit.

use serde::{Deserialize, Serialize};

/// The gap and the longest span of a session, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRule {
    /// Gap without events that ends a session, in seconds.
    pub gap_secs: i64,
    /// Maximum span of a session, in seconds: an event this long after the session's first
    /// event starts a new one.
    pub max_span_secs: i64,
}

impl Default for SessionRule {
    fn default() -> Self {
        SessionRule {
            gap_secs: DEFAULT_GAP_SECS,
            max_span_secs: DEFAULT_MAX_SPAN_SECS,
        }
    }
}

/// Default gap that ends a session: 30 minutes.
pub const DEFAULT_GAP_SECS: i64 = 30 * 60;

/// Default maximum span of a session: 4 hours. On the generator's default stream this bound
/// changes no alert (measured against no bound).
pub const DEFAULT_MAX_SPAN_SECS: i64 = 4 * 60 * 60;

/// One user's open session: its first and latest event times (Unix seconds) and the input's
/// session id.
///
/// Every tracked user and every open session has a mark, so it is kept at 24 bytes. A start
/// time of `NOT_STARTED` marks that no event has been seen, in place of a flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMark {
    /// Event time of the session's first event, or `NOT_STARTED`.
    start_ts: i64,
    last_ts: i64,
    /// Boxed twice so that the pointer is thin (8 bytes rather than 16).
    id: Option<Box<Box<str>>>,
}

/// Start time of a mark that has seen no event. No event has it, because event times are Unix
/// milliseconds divided by 1,000.
const NOT_STARTED: i64 = i64::MIN;

impl Default for SessionMark {
    fn default() -> Self {
        SessionMark {
            start_ts: NOT_STARTED,
            last_ts: 0,
            id: None,
        }
    }
}

impl SessionMark {
    /// Time of the latest event in Unix seconds, if any event has been seen.
    pub fn last_ts(&self) -> Option<i64> {
        self.started().then_some(self.last_ts)
    }

    fn started(&self) -> bool {
        self.start_ts != NOT_STARTED
    }
}

impl SessionRule {
    /// Checks that both bounds are positive; returns the name of the first that is not.
    pub fn invalid_field(&self) -> Option<&'static str> {
        if self.gap_secs <= 0 {
            Some("session_gap_secs")
        } else if self.max_span_secs <= 0 {
            Some("session_max_span_secs")
        } else {
            None
        }
    }

    /// Moves `mark` to an event at `ts` (Unix seconds) with the input's session id `id`, and
    /// returns true when that event starts a new session.
    ///
    /// An event without a session id never ends a session by its id; events must come in
    /// time order per user.
    #[inline]
    pub fn advance(&self, mark: &mut SessionMark, ts: i64, id: Option<&str>) -> bool {
        let new_session = !mark.started()
            || id.is_some_and(|id| mark.id.as_deref().map(|kept| &**kept) != Some(id))
            || self.has_ended(mark, ts);
        if new_session {
            mark.start_ts = ts;
            mark.id = id.map(|id| Box::new(Box::from(id)));
        }
        mark.last_ts = ts;
        new_session
    }

    /// Returns true when an event at `now` (Unix seconds) or later would start a new session
    /// after `mark`, whatever its session id, so the mark may be forgotten. A mark that has
    /// seen no event has ended.
    #[inline]
    pub fn has_ended(&self, mark: &SessionMark, now: i64) -> bool {
        !mark.started()
            || now.saturating_sub(mark.last_ts) > self.gap_secs
            || now.saturating_sub(mark.start_ts) >= self.max_span_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60;

    fn rule() -> SessionRule {
        SessionRule {
            gap_secs: 30 * 60,
            max_span_secs: 2 * 60 * 60,
        }
    }

    /// Returns, per event at the given minutes (without session ids), whether it starts a session.
    fn starts(minutes: &[i64]) -> Vec<bool> {
        let mut mark = SessionMark::default();
        minutes
            .iter()
            .map(|minute| rule().advance(&mut mark, minute * MINUTE, None))
            .collect()
    }

    #[test]
    fn session_starts_after_long_gap() {
        assert_eq!(starts(&[0, 30, 61, 200]), [true, false, true, true]);
    }

    #[test]
    fn session_without_pause_cut_at_span() {
        // An event every 15 minutes: 0..105 is one session, 120 starts the next.
        let minutes: Vec<i64> = (0..12).map(|step| step * 15).collect();
        let expected: Vec<bool> = minutes.iter().map(|m| m % 120 == 0).collect();
        assert_eq!(starts(&minutes), expected);
    }

    #[test]
    fn session_id_change_starts_session() {
        let mut mark = SessionMark::default();
        let rule = rule();
        assert!(rule.advance(&mut mark, 0, Some("a")));
        assert!(!rule.advance(&mut mark, MINUTE, Some("a")));
        assert!(!rule.advance(&mut mark, 2 * MINUTE, None));
        assert!(rule.advance(&mut mark, 3 * MINUTE, Some("b")));
        assert_eq!(mark.last_ts(), Some(3 * MINUTE));
    }

    #[test]
    fn session_ended_after_gap_or_span() {
        let mut mark = SessionMark::default();
        let rule = rule();
        for minute in [0, 20, 40, 60, 80, 100] {
            rule.advance(&mut mark, minute * MINUTE, None);
        }
        assert!(!rule.has_ended(&mark, 110 * MINUTE));
        // The span reaches two hours.
        assert!(rule.has_ended(&mark, 120 * MINUTE));
        let mut short = SessionMark::default();
        rule.advance(&mut short, 0, None);
        assert!(!rule.has_ended(&short, 30 * MINUTE));
        // The gap exceeds 30 minutes.
        assert!(rule.has_ended(&short, 31 * MINUTE));
    }

    #[test]
    fn session_mark_size_bounded() {
        // Every tracked user and every open session of the co-occurrence counter has a mark.
        let size = std::mem::size_of::<SessionMark>();
        assert_eq!(size, 24, "SessionMark is {size} bytes");
    }

    #[test]
    fn unstarted_mark_has_ended() {
        let mark = SessionMark::default();
        assert_eq!(mark.last_ts(), None);
        assert!(rule().has_ended(&mark, 0));
        assert!(rule().has_ended(&mark, i64::MIN));
    }

    #[test]
    fn invalid_bound_is_named() {
        assert_eq!(SessionRule::default().invalid_field(), None);
        let zero_gap = SessionRule {
            gap_secs: 0,
            ..SessionRule::default()
        };
        assert_eq!(zero_gap.invalid_field(), Some("session_gap_secs"));
        let zero_span = SessionRule {
            max_span_secs: 0,
            ..SessionRule::default()
        };
        assert_eq!(zero_span.invalid_field(), Some("session_max_span_secs"));
    }
}
