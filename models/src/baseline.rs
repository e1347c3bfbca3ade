//! A deliberately simple reference detector, used to judge how much the real one adds.
//!
//! Rule: after a user has `warm_up` events, alert when a leaf category that was new to the
//! user in one session comes back in a later session. At most one alert per user per day.

use std::collections::HashMap;

use crate::alert::{Alert, AlertKind, CategoryShare};
use crate::detector::Detector;
use crate::event::{Event, Id};
use crate::groups::GroupMap;
use crate::session::{SessionMark, SessionRule};

/// The baseline detector's per-user state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BaselineState {
    /// Session in which each category was first seen, and whether it has been seen in a later one.
    first_seen: HashMap<Id, (u64, bool, i64)>,
    session: u64,
    session_mark: SessionMark,
    events: u64,
    quiet_until: i64,
}

impl BaselineState {
    /// Returns the number of the user's events seen.
    pub fn events(&self) -> u64 {
        self.events
    }
}

/// The "new category comes back" baseline.
///
/// # Examples
///
/// ```
/// use veer_models::baseline::{BaselineDetector, BaselineState};
/// use veer_models::{Behavior, Detector, Event, GroupMap, Id};
///
/// let view = |user: u64, category: u64, ts: i64| {
///     Event::plain(ts * 1000, user, category, category * 100, Behavior::View)
/// };
/// let detector = BaselineDetector::default();
/// let mut state = BaselineState::default();
/// let mut alerts = Vec::new();
/// let groups = GroupMap::default();
/// for step in 0..20 {
///     detector.observe(&mut state, &view(1, 5, step * 60), &groups, &mut alerts);
/// }
/// // Category 8 is new in one session and comes back in the next one, an hour later.
/// detector.observe(&mut state, &view(1, 8, 1_300), &groups, &mut alerts);
/// assert!(alerts.is_empty());
/// detector.observe(&mut state, &view(1, 8, 5_000), &groups, &mut alerts);
/// assert_eq!(alerts.len(), 1);
/// assert_eq!(alerts[0].onset_ts, 1_300);
/// ```
#[derive(Clone, Debug)]
pub struct BaselineDetector {
    /// Events a user must have before any alert.
    pub warm_up: u64,
    /// The rule that splits a user's events into sessions.
    pub session_rule: SessionRule,
}

impl Default for BaselineDetector {
    fn default() -> Self {
        BaselineDetector {
            warm_up: 15,
            session_rule: SessionRule::default(),
        }
    }
}

impl Detector for BaselineDetector {
    type State = BaselineState;

    fn observe(
        &self,
        state: &mut BaselineState,
        event: &Event,
        _groups: &GroupMap,
        alerts: &mut Vec<Alert>,
    ) {
        let ts = event.ts_secs();
        if self
            .session_rule
            .advance(&mut state.session_mark, ts, event.session.as_deref())
        {
            state.session += 1;
        }
        state.events += 1;
        let warm = state.events > self.warm_up;
        let session = state.session;
        let entry = state.first_seen.entry(event.category.clone());
        match entry {
            std::collections::hash_map::Entry::Vacant(slot) => {
                // Categories of the warm-up period are the user's usual ones, never "new".
                slot.insert((session, !warm, ts));
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let (first_session, returned, first_ts) = slot.get_mut();
                if !*returned && *first_session != session {
                    *returned = true;
                    let onset = *first_ts;
                    if ts >= state.quiet_until {
                        state.quiet_until = ts + 24 * 3600;
                        alerts.push(Alert {
                            user: event.user.clone(),
                            kind: AlertKind::InterestShift,
                            ts,
                            onset_ts: onset,
                            score: 0.5,
                            from: Vec::new(),
                            to: vec![CategoryShare {
                                category: event.category.clone(),
                                share: 1.0,
                            }],
                            signals: vec![("returning_new_category".into(), 1.0)],
                            events_since_onset: 0,
                            segment_before: None,
                            segment_after: None,
                        });
                    }
                }
            }
        }
    }
}

impl crate::profile::ProfileSource for BaselineState {
    /// The baseline keeps no category weights, so its profile has no interest vector.
    fn profile(&self, user: &Id) -> crate::profile::UserProfile {
        crate::profile::UserProfile {
            last_ts: self.session_mark.last_ts(),
            events: self.events,
            ..crate::profile::UserProfile::empty(user.clone())
        }
    }
}
