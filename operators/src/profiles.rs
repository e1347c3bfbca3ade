//! Per-user profiles joined with the user attribute table, and the profile output.
//!
//! A *profile* is what a recommender reads about one user: the interest vector (the top
//! categories of the detector's reference, with shares), the event count, the last alert, and
//! the user's attributes from the table given with `--users`. Three steps build it:
//!
//! 1. The detect operator records each user's *core* (everything but the attributes) after
//!    each event, in a [`CoreRecorder`]. [`profile_cores`] takes the recorded cores in event
//!    time order and keeps, per user, the last core it sent on. It sends a new core, as a
//!    retraction of the old one and an insertion of the new one, only when the core changed
//!    materially ([`ProfileSettings`]).
//! 2. [`join_attributes`] joins the cores with the attribute table, a differential collection
//!    that the run feeds with one retraction and one insertion per changed row, and with the
//!    users' segments when the model path runs. Both are left joins: a user without a row or
//!    segment keeps a profile with unknown attributes or segment. Any side may change, and the
//!    join sends the affected profiles again, so a changed row reaches the profile without a
//!    restart.
//! 3. [`write_profiles`] gathers the joined profiles on worker 0, writes each change as a JSON
//!    line once the frontier has passed it, and writes every user's profile once more at the
//!    end of the input. It also keeps the latest profile of every user in a [`ProfileStore`]
//!    that other threads can read while the run goes on.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, RwLock};

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use veer_models::attributes::UserAttributes;
use veer_models::{Alert, AlertKind, CategoryShare, Id};

use crate::state::DetectHandle;

/// Time of the final cores sent when the input ends; [`write_profiles`] applies them without
/// a line of their own and then writes every user's end-of-input line. The fixed time tells
/// the writer these cores from changes.
pub const END_OF_INPUT_TIME: u64 = u64::MAX - 1;

/// Shares are kept in units of 1/10,000, so profiles can be compared, ordered and hashed as
/// differential collections require, and print with the four decimals that alerts use.
const SHARE_UNITS: f64 = 10_000.0;

/// The part of a detector's per-user state that a profile shows.
pub trait ProfileView {
    /// Returns the top `count` categories of the user's interest, largest share first.
    fn interest(&self, count: usize) -> Vec<CategoryShare>;
    /// Returns the number of the user's events the detector has seen.
    fn events(&self) -> u64;
    /// Returns the time of the state's first event in Unix seconds, or `None` when the state
    /// keeps no such time. A state reset for inactivity starts again, so this is the first
    /// event of the user's current stay.
    fn first_ts(&self) -> Option<i64>;
}

impl ProfileView for veer_models::UserState {
    fn interest(&self, count: usize) -> Vec<CategoryShare> {
        veer_models::UserState::interest(self, count)
    }

    fn events(&self) -> u64 {
        u64::from(self.events)
    }

    fn first_ts(&self) -> Option<i64> {
        self.behavior.first_ts()
    }
}

impl ProfileView for veer_models::baseline::BaselineState {
    /// Returns an empty vector, because the baseline detector keeps no interest profile.
    fn interest(&self, _count: usize) -> Vec<CategoryShare> {
        Vec::new()
    }

    fn events(&self) -> u64 {
        self.events()
    }

    /// Returns `None`, because the baseline detector keeps only its latest event's time.
    fn first_ts(&self) -> Option<i64> {
        None
    }
}

/// When a profile counts as changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileSettings {
    /// Categories in the interest vector.
    pub top_categories: usize,
    /// A change of a category's share by at least this much (in 0..1) is material.
    pub min_share_change: f64,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            top_categories: 3,
            min_share_change: 0.05,
        }
    }
}

/// The latest alert of a user, as the profile shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LastAlert {
    pub alert_id: String,
    pub kind: AlertKind,
    /// Event time of the alert, in Unix seconds.
    pub ts: i64,
}

/// A user's profile without the attributes: the part that the detector's state gives.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProfileCore {
    /// Top categories with their shares in units of 1/10,000, largest first.
    pub interest: Vec<(Id, u32)>,
    /// Events of the user when this core was made.
    pub events: u64,
    pub last_alert: Option<LastAlert>,
}

impl ProfileCore {
    /// Returns whether `self` differs materially from `earlier`: a category entered or left the
    /// interest vector or changed rank, a share moved by at least `min_share_change`, or a new
    /// alert was raised. The event count alone is not material.
    pub fn differs_materially(&self, earlier: &ProfileCore, min_share_change: f64) -> bool {
        if self.last_alert != earlier.last_alert || self.interest.len() != earlier.interest.len() {
            return true;
        }
        let threshold = (min_share_change * SHARE_UNITS).round() as i64;
        self.interest.iter().zip(&earlier.interest).any(
            |((category, share), (earlier_category, earlier_share))| {
                category != earlier_category
                    || (i64::from(*share) - i64::from(*earlier_share)).abs() >= threshold
            },
        )
    }

    /// Returns the interest vector as JSON: `[{"category": .., "share": ..}, ..]`.
    pub fn interest_json(&self) -> Value {
        let entries = self
            .interest
            .iter()
            .map(|(category, share)| {
                let mut entry = Map::new();
                entry.insert("category".into(), category.to_json());
                entry.insert("share".into(), share_json(*share));
                Value::Object(entry)
            })
            .collect();
        Value::Array(entries)
    }
}

fn share_json(units: u32) -> Value {
    serde_json::Number::from_f64(f64::from(units) / SHARE_UNITS).map_or(Value::Null, Value::Number)
}

/// A user's joined profile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JoinedProfile {
    pub core: ProfileCore,
    /// The user's attribute row, `None` when the table has none.
    pub attributes: Option<UserAttributes>,
    /// Segment of the user's latest window scored by the models, `None` before the first one
    /// and without models.
    pub segment: Option<usize>,
}

/// One row of the attribute table in a differential collection.
pub type AttributeRow = (Id, UserAttributes);

/// The latest profile of a user, with the event time (Unix milliseconds) it applies from.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredProfile {
    pub time_ms: u64,
    pub profile: JoinedProfile,
}

/// The latest profile of every user, shared with readers on other threads.
pub type ProfileStore = Arc<RwLock<FxHashMap<Id, StoredProfile>>>;

/// A user's core after each event, recorded by the detect operator for [`profile_cores`].
///
/// The cores are made from the detector's state right after the event, so a core at time `t`
/// counts exactly the user's events up to `t`, whatever the timing or the number of workers.
#[derive(Debug)]
pub struct CoreRecorder<S> {
    core_of: fn(&S, usize) -> ProfileCore,
    first_ts_of: fn(&S) -> Option<i64>,
    top_categories: usize,
    /// Cores in event time order, one per user and time.
    recorded: Vec<RecordedCore>,
}

/// A user's core after an event, with the times the profile operator needs.
#[derive(Debug)]
struct RecordedCore {
    /// Event time in Unix milliseconds.
    time_ms: u64,
    user: Id,
    core: ProfileCore,
    /// First event of the user's current stay in Unix seconds, as the detector's state keeps
    /// it ([`ProfileView::first_ts`]).
    stay_first_ts: Option<i64>,
}

impl<S: ProfileView> CoreRecorder<S> {
    /// Creates a recorder of cores with `top_categories` categories of interest.
    pub fn new(top_categories: usize) -> Self {
        CoreRecorder {
            core_of: core_of::<S>,
            first_ts_of: S::first_ts,
            top_categories,
            recorded: Vec::new(),
        }
    }
}

impl<S> CoreRecorder<S> {
    /// Records `user`'s core after an event at `time_ms`. Events reach the detector in time
    /// order, then by user, so a later event of the same user and time replaces the core.
    pub fn record(&mut self, time_ms: u64, user: &Id, state: &S) {
        let core = (self.core_of)(state, self.top_categories);
        let stay_first_ts = (self.first_ts_of)(state);
        if let Some(last) = self.recorded.last_mut() {
            if last.time_ms == time_ms && last.user == *user {
                last.core = core;
                last.stay_first_ts = stay_first_ts;
                return;
            }
        }
        self.recorded.push(RecordedCore {
            time_ms,
            user: user.clone(),
            core,
            stay_first_ts,
        });
    }

    fn take(&mut self) -> Vec<RecordedCore> {
        std::mem::take(&mut self.recorded)
    }
}

/// Returns the core that `state` shows, without the last alert.
fn core_of<V: ProfileView>(state: &V, top_categories: usize) -> ProfileCore {
    ProfileCore {
        interest: state
            .interest(top_categories)
            .into_iter()
            .map(|entry| {
                let units = (entry.share * SHARE_UNITS).round();
                (entry.category, units.clamp(0.0, SHARE_UNITS) as u32)
            })
            .collect(),
        events: state.events(),
        last_alert: None,
    }
}

/// Sends a user's profile core whenever it changes materially.
///
/// `alerts` are the alerts sent for this worker's users, and `states` is the detector's state,
/// whose [`CoreRecorder`] this function installs and reads. A core recorded at time `t` is
/// taken on once the `alerts` frontier has passed `t`: the detector has then seen every event
/// up to `t` and every alert up to `t` is known. When the alerts end, every user whose core
/// changed since the last one sent gets a final core, so the end-of-input profiles carry
/// exact counts.
///
/// With `idle_ms`, a user without events for longer than `idle_ms` of event time loses the
/// profile. Its core is retracted at its *eviction time*, the first millisecond at which the
/// user has been idle that long (the latest event's time plus `idle_ms` plus one), once the
/// frontier has passed that time. When the input ends, the users whose eviction time is at or
/// before the end of the last population window (the detector's `last_window_end`) lose the
/// core too. The detector's `--evict-after` uses the same rule, so the users with an
/// end-of-input line are the users the detector tracks at the end. A user who returns after
/// the eviction time gets a `new_user` line without the earlier alert, as the detector starts
/// the user afresh. The retraction carries the eviction time itself, not the time at which
/// the frontier happened to pass it, so the lines depend neither on the timing nor on the
/// number of workers. The collection, the join's arrangements and the profile store hold only
/// the users seen within the eviction time.
pub fn profile_cores<'scope, S: ProfileView + 'static>(
    alerts: StreamVec<'scope, u64, Alert>,
    states: DetectHandle<S>,
    settings: ProfileSettings,
    idle_ms: Option<i64>,
) -> VecCollection<'scope, u64, (Id, ProfileCore)> {
    states.borrow_mut().cores = Some(CoreRecorder::new(settings.top_categories));
    alerts
        .unary_frontier(Pipeline, "ProfileCores", move |initial, _| {
            let mut held: Option<Capability<u64>> = Some(initial);
            let mut touched = TouchedCores::new();
            let mut alerts_waiting: BTreeMap<u64, Vec<(Id, LastAlert)>> = BTreeMap::new();
            let mut tracker = CoreTracker::new(settings, idle_ms);
            move |(alerts_in, alerts_frontier), output| {
                if let Some(recorder) = states.borrow_mut().cores.as_mut() {
                    for recorded in recorder.take() {
                        touched.entry(recorded.time_ms).or_default().push(recorded);
                    }
                }
                // An alert counts from the end of its second of event time. So a core never
                // shows an alert raised after it, and the alerts a core shows have all
                // arrived once the frontier passes the core's time. Both alert paths stamp an
                // alert at or before its event time: the model path's alerts wait for their
                // window in processing time only, stamped at or before the window's first
                // event. The `max` with the stamp only keeps the key at or after the
                // capability, should a stamp ever be later.
                alerts_in.for_each_stamp(|capability, data| {
                    let Some(stamp) = capability.least().copied() else {
                        return;
                    };
                    for batch in data {
                        for alert in batch.drain(..) {
                            let second_end = (alert.ts.max(0) as u64) * 1000 + 999;
                            let last = LastAlert {
                                alert_id: alert.alert_id(),
                                kind: alert.kind,
                                ts: alert.ts,
                            };
                            alerts_waiting
                                .entry(second_end.max(stamp))
                                .or_default()
                                .push((alert.user, last));
                        }
                    }
                });

                let bound = alerts_frontier.frontier().first().copied();
                // A user's core from before its eviction time can still arrive until the
                // frontier has passed that time. Once the input has ended, users are evicted up to the end
                // of the last population window, as in the detector.
                let eviction_limit = match bound {
                    Some(bound) => bound.checked_sub(1),
                    None => Some(states.borrow().last_window_end()),
                };
                let mut updates: Vec<((Id, ProfileCore), u64, isize)> = Vec::new();
                tracker.take_on(
                    &mut touched,
                    &mut alerts_waiting,
                    bound,
                    eviction_limit,
                    &mut updates,
                );
                let Some(capability) = held.as_mut() else {
                    return;
                };
                // Updates carry their own times, none below the capability's, because an
                // eviction time not yet applied is at or after the frontier that set it.
                if !updates.is_empty() {
                    output
                        .session(&*capability)
                        .give_iterator(updates.drain(..));
                }
                if bound.is_none() {
                    tracker.record_alerts_until(&mut alerts_waiting, u64::MAX);
                    capability.downgrade(&END_OF_INPUT_TIME);
                    // A user's latest core, or an alert that came after it, gets a line.
                    let mut users: Vec<Id> = tracker.sent.keys().cloned().collect();
                    users.sort();
                    for user in users {
                        let core = tracker
                            .unsent
                            .remove(&user)
                            .or_else(|| tracker.sent.get(&user).cloned());
                        if let Some(core) = core {
                            tracker.update(&user, core, END_OF_INPUT_TIME, true, &mut updates);
                        }
                    }
                    output
                        .session(&*capability)
                        .give_iterator(updates.drain(..));
                }
                let earliest = touched.keys().next().copied();
                match [earliest, bound].into_iter().flatten().min() {
                    Some(time) => {
                        if *capability.time() < time {
                            capability.downgrade(&time);
                        }
                    }
                    None => held = None,
                }
            }
        })
        .as_collection()
}

/// Cores recorded by the detector but not yet taken on, by event time.
type TouchedCores = BTreeMap<u64, Vec<RecordedCore>>;

/// The last core sent for each user, each user's latest alert, and the users' eviction times.
struct CoreTracker {
    settings: ProfileSettings,
    sent: FxHashMap<Id, ProfileCore>,
    /// The latest core of each user whose change since the core sent was not material.
    unsent: FxHashMap<Id, ProfileCore>,
    latest_alerts: FxHashMap<Id, LastAlert>,
    /// Event time without events after which a user loses the core, in milliseconds; `None`
    /// keeps every user.
    idle_ms: Option<u64>,
    /// Each user's current stay, kept only with `idle_ms`.
    stays: FxHashMap<Id, Stay>,
    /// Each user's eviction time (Unix milliseconds) with the user, in time order.
    evict_at: BTreeSet<(u64, Id)>,
}

impl CoreTracker {
    fn new(settings: ProfileSettings, idle_ms: Option<i64>) -> Self {
        CoreTracker {
            settings,
            sent: FxHashMap::default(),
            unsent: FxHashMap::default(),
            latest_alerts: FxHashMap::default(),
            idle_ms: idle_ms.map(|idle_ms| idle_ms.max(0) as u64),
            stays: FxHashMap::default(),
            evict_at: BTreeSet::new(),
        }
    }

    /// Takes on, in event time order, the cores of `touched` before `bound` (all of them when
    /// `bound` is `None`) and the evictions at or before `eviction_limit`. At each time, the
    /// users whose eviction time it is are evicted first, then the events of its cores extend
    /// or start the users' stays, then the alerts waiting up to it are recorded, and then its
    /// cores are compared with the ones sent. So a user who returns at or after the eviction
    /// time is new, whether or not the frontier passed the eviction time in an earlier step,
    /// and an alert raised by a stay's first event counts for that stay.
    fn take_on(
        &mut self,
        touched: &mut TouchedCores,
        alerts_waiting: &mut BTreeMap<u64, Vec<(Id, LastAlert)>>,
        bound: Option<u64>,
        eviction_limit: Option<u64>,
        updates: &mut Vec<((Id, ProfileCore), u64, isize)>,
    ) {
        loop {
            let next_cores = touched
                .keys()
                .next()
                .copied()
                .filter(|time| bound.is_none_or(|bound| *time < bound));
            let next_eviction = self
                .evict_at
                .first()
                .map(|(time, _)| *time)
                .filter(|time| eviction_limit.is_some_and(|limit| *time <= limit));
            let Some(time) = next_cores.into_iter().chain(next_eviction).min() else {
                return;
            };
            self.evict_until(time, updates);
            let mut cores = if next_cores == Some(time) {
                touched.remove(&time).unwrap_or_default()
            } else {
                Vec::new()
            };
            // Each user has one core per time; the order of users is fixed.
            cores.sort_by(|left, right| left.user.cmp(&right.user));
            for recorded in &cores {
                self.record_event(recorded);
            }
            self.record_alerts_until(alerts_waiting, time);
            for recorded in cores {
                self.update(&recorded.user, recorded.core, time, false, updates);
            }
        }
    }

    /// Records the event of a recorded core and moves the user's eviction time after it. The
    /// event starts a stay when the user has none, and an alert kept from before the stay's
    /// first event is dropped.
    fn record_event(&mut self, recorded: &RecordedCore) {
        let Some(idle_ms) = self.idle_ms else {
            return;
        };
        let RecordedCore { time_ms, user, .. } = recorded;
        match self.stays.get_mut(user) {
            Some(stay) => {
                self.evict_at
                    .remove(&(eviction_time(stay.last_ms, idle_ms), user.clone()));
                stay.last_ms = *time_ms;
            }
            None => {
                // The detector's state keeps the stay's first event across a resume, when
                // this operator starts without stays.
                let first_ts = recorded.stay_first_ts.unwrap_or(second_of(*time_ms));
                let stay = Stay {
                    first_ts,
                    last_ms: *time_ms,
                };
                if let Entry::Occupied(alert) = self.latest_alerts.entry(user.clone()) {
                    if !stay.contains_alert(alert.get().ts) {
                        alert.remove();
                    }
                }
                self.stays.insert(user.clone(), stay);
            }
        }
        self.evict_at
            .insert((eviction_time(*time_ms, idle_ms), user.clone()));
    }

    /// Retracts, each at its eviction time, the cores of the users whose eviction time is at
    /// or before `time`, and drops their latest events, alerts and unsent cores.
    fn evict_until(&mut self, time: u64, updates: &mut Vec<((Id, ProfileCore), u64, isize)>) {
        while self
            .evict_at
            .first()
            .is_some_and(|(evict_ms, _)| *evict_ms <= time)
        {
            let Some((evict_ms, user)) = self.evict_at.pop_first() else {
                return;
            };
            self.stays.remove(&user);
            self.latest_alerts.remove(&user);
            self.unsent.remove(&user);
            if let Some(core) = self.sent.remove(&user) {
                updates.push(((user, core), evict_ms, -1));
            }
        }
    }

    /// Records the alerts waiting with times up to `time`.
    fn record_alerts_until(
        &mut self,
        waiting: &mut BTreeMap<u64, Vec<(Id, LastAlert)>>,
        time: u64,
    ) {
        while let Some(entry) = waiting.first_entry() {
            if *entry.key() > time {
                break;
            }
            for (user, alert) in entry.remove() {
                self.record_alert(user, alert);
            }
        }
    }

    /// Keeps `alert` as `user`'s latest alert unless a later one is kept or the alert was
    /// raised before the first event of the user's stay. The alert of a user without a stay
    /// is kept until the user's next event, and dropped then if that event's stay began
    /// after the alert.
    fn record_alert(&mut self, user: Id, alert: LastAlert) {
        if let Some(stay) = self.stays.get(&user) {
            if !stay.contains_alert(alert.ts) {
                return;
            }
        }
        let newer = self
            .latest_alerts
            .get(&user)
            .is_none_or(|known| (known.ts, known.kind) <= (alert.ts, alert.kind));
        if newer {
            self.latest_alerts.insert(user, alert);
        }
    }

    /// Adds a retraction and an insertion to `updates` when `user`'s `core` differs
    /// materially from the one sent, or at all when `force` is set. A core not sent is kept
    /// for the end of the input.
    fn update(
        &mut self,
        user: &Id,
        mut core: ProfileCore,
        time: u64,
        force: bool,
        updates: &mut Vec<((Id, ProfileCore), u64, isize)>,
    ) {
        core.last_alert = self.latest_alerts.get(user).cloned();
        let changed = match self.sent.get(user) {
            None => true,
            Some(earlier) if force => *earlier != core,
            Some(earlier) => core.differs_materially(earlier, self.settings.min_share_change),
        };
        if !changed {
            if !force {
                self.unsent.insert(user.clone(), core);
            }
            return;
        }
        self.unsent.remove(user);
        if let Some(earlier) = self.sent.insert(user.clone(), core.clone()) {
            updates.push(((user.clone(), earlier), time, -1));
        }
        updates.push(((user.clone(), core), time, 1));
    }
}

/// A user's stay: the events since the user's state was created or last evicted.
#[derive(Clone, Copy, Debug)]
struct Stay {
    /// Time of the stay's first event, in Unix seconds.
    first_ts: i64,
    /// Time of the stay's latest event, in Unix milliseconds.
    last_ms: u64,
}

impl Stay {
    /// Returns whether an alert raised at `alert_ts` (Unix seconds) belongs to this stay,
    /// that is, it was raised in the second of the stay's first event or later. The last
    /// event of an earlier stay is older than the first event by more than the eviction time,
    /// so with an eviction time of one second or more the test is exact.
    ///
    /// NOTE: with an eviction time under one second, an alert raised in the second in which
    /// the next stay starts counts for that stay, because alerts carry whole seconds.
    fn contains_alert(&self, alert_ts: i64) -> bool {
        alert_ts >= self.first_ts
    }
}

/// Returns the Unix second that contains `time_ms`.
fn second_of(time_ms: u64) -> i64 {
    (time_ms / 1000) as i64
}

/// Returns the eviction time of a user whose latest event is at `last_event_ms`: the first
/// millisecond at which the user has been idle for longer than `idle_ms`.
fn eviction_time(last_event_ms: u64, idle_ms: u64) -> u64 {
    last_event_ms.saturating_add(idle_ms).saturating_add(1)
}

/// Joins profile cores with the attribute table and, when given, with the users' segments,
/// keeping users without a row or a segment (left joins).
///
/// `attributes` contains at most one row per user (the table keeps the later of duplicate
/// rows), and `segments` one segment per user, so their keys form sets.
pub fn join_attributes<'scope>(
    cores: VecCollection<'scope, u64, (Id, ProfileCore)>,
    attributes: VecCollection<'scope, u64, AttributeRow>,
    segments: Option<VecCollection<'scope, u64, (Id, usize)>>,
) -> VecCollection<'scope, u64, (Id, JoinedProfile)> {
    // The attribute join comes last: its left side is then already arranged, so a changed row
    // is joined at once, even while the cores' frontier waits for the model fit.
    let with_segments = match segments {
        Some(segments) => left_join(cores, segments),
        None => cores.map(|(user, core)| (user, (core, None))),
    };
    let with_rows = left_join(with_segments, attributes);
    with_rows.map(|(user, ((core, segment), attributes))| {
        let profile = JoinedProfile {
            core,
            attributes,
            segment,
        };
        (user, profile)
    })
}

/// Pairs each left value with its key's right value, or with `None` when the key has none.
///
/// `right` must hold at most one value per key, so the antijoin needs no `distinct`.
fn left_join<'scope, V, W>(
    left: VecCollection<'scope, u64, (Id, V)>,
    right: VecCollection<'scope, u64, (Id, W)>,
) -> VecCollection<'scope, u64, (Id, (V, Option<W>))>
where
    V: differential_dataflow::ExchangeData,
    W: differential_dataflow::ExchangeData,
{
    let arranged = right.clone().arrange_by_key();
    let matched = left.clone().join_core(arranged, |key, value, other| {
        Some((key.clone(), (value.clone(), Some(other.clone()))))
    });
    let keys = right.map(|(key, _)| key);
    let unmatched = left.antijoin(keys).map(|(key, value)| (key, (value, None)));
    matched.concat(unmatched)
}

/// Returns the reasons for a profile line, comparing the user's previous profile with this one.
fn reasons(earlier: Option<&JoinedProfile>, current: &JoinedProfile) -> Vec<&'static str> {
    let Some(earlier) = earlier else {
        return vec!["new_user"];
    };
    let mut reasons = Vec::new();
    if current.core.interest != earlier.core.interest {
        reasons.push("interest");
    }
    if current.core.last_alert != earlier.core.last_alert {
        reasons.push("alert");
    }
    if current.attributes != earlier.attributes {
        reasons.push("attributes");
    }
    if current.segment != earlier.segment {
        reasons.push("segment");
    }
    if reasons.is_empty() {
        reasons.push("events");
    }
    reasons
}

/// Renders one profile line: see the README for the fields.
pub fn profile_line(user: &Id, ts: i64, profile: &JoinedProfile, reasons: &[&str]) -> String {
    let JoinedProfile {
        core,
        attributes: row,
        segment,
    } = profile;
    let mut object = Map::new();
    object.insert("user".into(), user.to_json());
    object.insert("ts".into(), Value::from(ts));
    object.insert(
        "reasons".into(),
        Value::Array(reasons.iter().map(|reason| Value::from(*reason)).collect()),
    );
    object.insert("events".into(), Value::from(core.events));
    object.insert("interest".into(), core.interest_json());
    object.insert("has_attributes".into(), Value::Bool(row.is_some()));
    object.insert(
        "attributes".into(),
        row.as_ref()
            .map_or(Value::Null, |row| Value::Object(row.to_json())),
    );
    object.insert("segment".into(), segment.map_or(Value::Null, Value::from));
    let last_alert = core.last_alert.as_ref().map_or(Value::Null, |alert| {
        let mut entry = Map::new();
        entry.insert("alert_id".into(), Value::from(alert.alert_id.clone()));
        entry.insert("kind".into(), Value::from(alert.kind.name()));
        entry.insert("ts".into(), Value::from(alert.ts));
        Value::Object(entry)
    });
    object.insert("last_alert".into(), last_alert);
    Value::Object(object).to_string()
}

/// Writes profile changes as JSON lines on worker 0 and keeps `store` current.
///
/// Changes of one event time are written once the frontier has passed it, sorted by user.
/// When the input ends, every user's profile is written once more with the reason `end_of_input`, sorted by
/// user, with the exact event count and the time of the user's previous line. `store` is updated as soon as a change arrives, before the frontier passes it, so a
/// reader sees a changed attribute row while the event stream is idle. `writer` is only used
/// on worker 0; write errors are logged and the run goes on.
pub fn write_profiles<'scope>(
    profiles: VecCollection<'scope, u64, (Id, JoinedProfile)>,
    mut writer: Option<Box<dyn Write>>,
    store: ProfileStore,
) {
    let mut pending: PendingUpdates = BTreeMap::new();
    // Each user's profile and the event time (Unix milliseconds) of its latest line.
    let mut current: BTreeMap<Id, (u64, JoinedProfile)> = BTreeMap::new();
    let mut finished = false;
    let exchange = Exchange::new(|_: &((Id, JoinedProfile), u64, isize)| 0);
    profiles
        .inner
        .sink(exchange, "WriteProfiles", move |(input, frontier)| {
            let mut touched: BTreeMap<u64, Vec<Id>> = BTreeMap::new();
            input.for_each_stamp(|_, data| {
                for batch in data {
                    for ((user, profile), time, diff) in batch.drain(..) {
                        touched.entry(time).or_default().push(user.clone());
                        let updates = pending.entry(time).or_default();
                        updates.entry(user).or_default().push((profile, diff));
                    }
                }
            });
            refresh_store(&store, &pending, touched);

            let mut wrote = false;
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let time = *entry.key();
                for (user, updates) in entry.remove() {
                    let Some(profile) = consolidate(&updates) else {
                        continue;
                    };
                    // A retraction without a new profile is an evicted user: no line.
                    let Some(profile) = profile else {
                        current.remove(&user);
                        continue;
                    };
                    let earlier = current.get(&user);
                    if time == END_OF_INPUT_TIME {
                        let written_at = earlier.map_or(0, |(written_at, _)| *written_at);
                        current.insert(user, (written_at, profile));
                        continue;
                    }
                    let reasons = reasons(earlier.map(|(_, profile)| profile), &profile);
                    if let Some(out) = writer.as_mut() {
                        let ts = (time / 1000) as i64;
                        write_line(out.as_mut(), &profile_line(&user, ts, &profile, &reasons));
                        wrote = true;
                    }
                    current.insert(user, (time, profile));
                }
            }
            if frontier.is_empty() && !finished {
                finished = true;
                if let Some(out) = writer.as_mut() {
                    for (user, (written_at, profile)) in &current {
                        let ts = (written_at / 1000) as i64;
                        let line = profile_line(user, ts, profile, &["end_of_input"]);
                        write_line(out.as_mut(), &line);
                    }
                    wrote = true;
                }
            }
            if wrote {
                if let Some(out) = writer.as_mut() {
                    if let Err(error) = out.flush() {
                        tracing::error!(%error, "failed to flush the profile output");
                    }
                }
            }
        });
}

/// Profile updates that the frontier has not passed yet, by event time and user. A time's
/// updates can arrive over several activations, in any order.
type PendingUpdates = BTreeMap<u64, BTreeMap<Id, Vec<(JoinedProfile, isize)>>>;

fn write_line(out: &mut dyn Write, line: &str) {
    if let Err(error) = writeln!(out, "{line}") {
        tracing::error!(%error, "failed to write a profile line");
    }
}

/// Returns the profile that one user's updates of one time leave. That is `Some(Some(profile))`
/// for the greatest profile whose count sums to a positive number, and `Some(None)` when a
/// profile was retracted and none inserted (an evicted user). It is `None` when they cancel out.
fn consolidate(updates: &[(JoinedProfile, isize)]) -> Option<Option<JoinedProfile>> {
    let mut sums: BTreeMap<&JoinedProfile, isize> = BTreeMap::new();
    for (profile, diff) in updates {
        *sums.entry(profile).or_default() += diff;
    }
    let inserted = sums.iter().rev().find(|(_, sum)| **sum > 0);
    if let Some((profile, _)) = inserted {
        return Some(Some((*profile).clone()));
    }
    if sums.values().any(|sum| *sum < 0) {
        return Some(None);
    }
    None
}

/// Moves each user in `touched` to the profile that all its pending updates of that time leave,
/// and removes the users whose latest updates are retractions alone. The updates are
/// consolidated over every activation so far, because a retraction can arrive after the
/// insertion that replaces it.
fn refresh_store(store: &ProfileStore, pending: &PendingUpdates, touched: BTreeMap<u64, Vec<Id>>) {
    if touched.is_empty() {
        return;
    }
    let Ok(mut store) = store.write() else {
        tracing::error!("the profile store is poisoned; profiles are no longer updated");
        return;
    };
    for (time_ms, mut users) in touched {
        users.sort_unstable();
        users.dedup();
        let Some(updates) = pending.get(&time_ms) else {
            continue;
        };
        for user in users {
            let Some(profile) = updates.get(&user).and_then(|updates| consolidate(updates)) else {
                continue;
            };
            let newer = store
                .get(&user)
                .is_none_or(|stored| stored.time_ms <= time_ms);
            if !newer {
                continue;
            }
            match profile {
                Some(profile) => {
                    store.insert(user, StoredProfile { time_ms, profile });
                }
                None => {
                    store.remove(&user);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::{detect_hourly, feed_events, DAY_MS, HOUR_MS};

    fn profile(events: u64, region: Option<&str>) -> JoinedProfile {
        JoinedProfile {
            core: ProfileCore {
                events,
                ..ProfileCore::default()
            },
            attributes: region.map(|region| UserAttributes {
                region: Some(region.to_string()),
                ..UserAttributes::default()
            }),
            segment: None,
        }
    }

    /// Applies `arrivals` to a store one activation at a time, as `write_profiles` does.
    fn store_after(arrivals: &[Vec<(JoinedProfile, isize)>]) -> Option<StoredProfile> {
        let user = Id::from(2401u64);
        let store = ProfileStore::default();
        let mut pending = PendingUpdates::new();
        for arrival in arrivals {
            for (profile, diff) in arrival {
                let updates = pending.entry(5_000).or_default();
                updates
                    .entry(user.clone())
                    .or_default()
                    .push((profile.clone(), *diff));
            }
            let touched = BTreeMap::from([(5_000, vec![user.clone()])]);
            refresh_store(&store, &pending, touched);
        }
        let stored = store.read().unwrap().get(&user).cloned();
        stored
    }

    #[test]
    fn store_keeps_profile_after_late_retraction() {
        // A left join emits the row without attributes and its retraction separately, so the
        // retraction can come one activation after the joined row.
        let stored = store_after(&[
            vec![(profile(3, None), 1), (profile(3, Some("east")), 1)],
            vec![(profile(3, None), -1)],
        ]);
        let stored = stored.expect("the user keeps a stored profile");
        assert_eq!(stored.time_ms, 5_000);
        assert_eq!(stored.profile, profile(3, Some("east")));
    }

    #[test]
    fn store_takes_profile_after_early_retraction() {
        let stored = store_after(&[
            vec![(profile(3, None), -1)],
            vec![(profile(4, Some("east")), 1)],
        ]);
        let stored = stored.expect("the insertion restores the stored profile");
        assert_eq!(stored.profile, profile(4, Some("east")));
    }

    #[test]
    fn store_drops_retracted_user() {
        assert_eq!(store_after(&[vec![(profile(3, None), -1)]]), None);
    }

    /// Counts each user's events and raises no alerts.
    struct CountEvents;

    #[derive(Default, Serialize, Deserialize)]
    struct EventCount(u64);

    impl ProfileView for EventCount {
        fn interest(&self, _count: usize) -> Vec<CategoryShare> {
            Vec::new()
        }

        fn events(&self) -> u64 {
            self.0
        }

        fn first_ts(&self) -> Option<i64> {
            None
        }
    }

    impl veer_models::Detector for CountEvents {
        type State = EventCount;
        fn observe(
            &self,
            state: &mut EventCount,
            _: &veer_models::Event,
            _: &veer_models::GroupMap,
            _: &mut Vec<Alert>,
        ) {
            state.0 += 1;
        }
    }

    /// One update of the profile cores: the user, the core's event count, the time and the
    /// count change.
    type CoreUpdate = (Id, u64, u64, isize);

    /// Runs the detect and profile-core operators on `events` with a 7-day eviction time,
    /// feeding the events as [`feed_events`] does, and returns every update of the cores in
    /// time order, then by user.
    fn core_updates(events: Vec<veer_models::Event>, stepwise: bool) -> Vec<CoreUpdate> {
        use std::cell::RefCell;
        use std::rc::Rc;
        use timely::dataflow::operators::vec::Input;
        use timely::dataflow::operators::Inspect;

        use crate::state::DetectState;

        timely::execute_directly(move |worker| {
            let updates: Rc<RefCell<Vec<CoreUpdate>>> = Rc::default();
            let sink = updates.clone();
            let idle_ms = 7 * DAY_MS;
            let input = worker.dataflow::<u64, _, _>(move |scope| {
                let (input, events) = scope.new_input::<veer_models::Event>();
                let states = Rc::new(RefCell::new(DetectState::default()));
                let alerts = detect_hourly(events, CountEvents, idle_ms, states.clone());
                let settings = ProfileSettings::default();
                let cores = profile_cores(alerts, states, settings, Some(idle_ms));
                cores.inner.inspect(move |((user, core), time, diff)| {
                    sink.borrow_mut()
                        .push((user.clone(), core.events, *time, *diff));
                });
                input
            });
            feed_events(worker, input, events, stepwise);
            let mut updates = updates.borrow().clone();
            updates.sort_by_key(|(user, events, time, diff)| (*time, user.clone(), *diff, *events));
            updates
        })
    }

    /// Returns the users whose cores are left when the input ends.
    fn users_with_cores(events: Vec<veer_models::Event>, stepwise: bool) -> Vec<Id> {
        let mut counts: BTreeMap<Id, isize> = BTreeMap::new();
        for (user, _, _, diff) in core_updates(events, stepwise) {
            *counts.entry(user).or_default() += diff;
        }
        counts
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(user, _)| user)
            .collect()
    }

    #[test]
    fn returning_user_evicted_at_eviction_time() {
        let view = |user: u64, ts_ms: i64| {
            veer_models::Event::plain(ts_ms, user, 5, 500, veer_models::Behavior::View)
        };
        // User 1 returns 7 days and 1 second after its last event, before any whole hour
        // passes its eviction time. User 2 keeps event time moving every 6 hours.
        let last_ms = 2 * HOUR_MS + 10 * 60_000;
        let return_ms = last_ms + 7 * DAY_MS + 1_000;
        let mut events = vec![view(1, HOUR_MS), view(1, last_ms), view(1, return_ms)];
        for step in 0..40 {
            events.push(view(2, step * 6 * HOUR_MS + 1));
        }
        events.sort_by_key(|event| event.ts_ms);
        let stepwise = core_updates(events.clone(), true);
        let at_once = core_updates(events, false);
        assert_eq!(
            stepwise, at_once,
            "updates differ with the frontier's steps"
        );

        let user = Id::from(1u64);
        let returning: Vec<(u64, u64, isize)> = stepwise
            .iter()
            .filter(|(id, ..)| *id == user)
            .filter(|(_, _, time, _)| *time < END_OF_INPUT_TIME)
            .map(|(_, events, time, diff)| (*events, *time, *diff))
            .collect();
        let eviction_ms = (last_ms + 7 * DAY_MS + 1) as u64;
        let expected = vec![
            (1, HOUR_MS as u64, 1),
            (1, eviction_ms, -1),
            (1, return_ms as u64, 1),
        ];
        assert_eq!(returning, expected, "user 1: (events, time, diff)");
    }

    #[test]
    fn end_of_input_eviction_ignores_frontier_steps() {
        let view = |user: u64, ts_ms: i64| {
            veer_models::Event::plain(ts_ms, user, 5, 500, veer_models::Behavior::View)
        };
        // The newest event is at 10 days and 30 minutes, so the last population window ends
        // at 10 days and 1 hour. User 1 is then idle for 9 days and user 2 for 7 days and
        // 50 minutes, although the last whole hour a frontier shows (10 days) finds user 2
        // idle for less than 7 days. User 3 is idle for 30 minutes.
        let events = vec![
            view(1, 1 + DAY_MS + HOUR_MS),
            view(2, 3 * DAY_MS + 10 * 60_000),
            view(3, 9 * DAY_MS),
            view(3, 10 * DAY_MS + 30 * 60_000),
        ];
        let kept = vec![Id::from(3u64)];
        let stepwise = users_with_cores(events.clone(), true);
        let at_once = users_with_cores(events, false);
        assert_eq!(stepwise, kept, "frontier advanced event by event");
        assert_eq!(at_once, kept, "frontier empty at the first step");
    }

    /// Returns the latest alert that `tracker` keeps for `user`, by its time.
    fn kept_alert_ts(tracker: &CoreTracker, user: &Id) -> Option<i64> {
        tracker.latest_alerts.get(user).map(|alert| alert.ts)
    }

    fn alert_at(user: u64, ts: i64) -> LastAlert {
        LastAlert {
            alert_id: format!("{user}-{ts}-anomaly"),
            kind: AlertKind::Anomaly,
            ts,
        }
    }

    fn recorded(user: u64, time_ms: u64, stay_first_ts: Option<i64>) -> RecordedCore {
        RecordedCore {
            time_ms,
            user: Id::from(user),
            core: ProfileCore::default(),
            stay_first_ts,
        }
    }

    #[test]
    fn tracker_drops_alert_of_earlier_stay() {
        let user = Id::from(7u64);
        let mut tracker = CoreTracker::new(ProfileSettings::default(), Some(500));
        tracker.record_event(&recorded(7, 101_000, Some(101)));
        tracker.record_alert(user.clone(), alert_at(7, 100));
        assert_eq!(
            kept_alert_ts(&tracker, &user),
            None,
            "alert before the stay"
        );
        tracker.record_alert(user.clone(), alert_at(7, 101));
        assert_eq!(
            kept_alert_ts(&tracker, &user),
            Some(101),
            "alert of the stay"
        );
    }

    #[test]
    fn tracker_checks_alert_of_user_without_stay() {
        // Alerts that arrive while the user has no stay wait for the user's next event.
        let mut tracker = CoreTracker::new(ProfileSettings::default(), Some(500));
        let (earlier, resumed) = (Id::from(7u64), Id::from(8u64));
        tracker.record_alert(earlier.clone(), alert_at(7, 100));
        tracker.record_alert(resumed.clone(), alert_at(8, 100));
        // User 7 starts a new stay at 102 s. User 8's state began at 90 s, before a resume
        // that left this operator without stays.
        tracker.record_event(&recorded(7, 102_000, Some(102)));
        tracker.record_event(&recorded(8, 102_000, Some(90)));
        assert_eq!(kept_alert_ts(&tracker, &earlier), None, "user 7");
        assert_eq!(kept_alert_ts(&tracker, &resumed), Some(100), "user 8");
    }

    #[test]
    fn consolidate_cases() {
        let kept = profile(4, Some("east"));
        assert_eq!(
            consolidate(&[(profile(3, None), 1), (profile(3, None), -1)]),
            None
        );
        assert_eq!(consolidate(&[(profile(3, None), -1)]), Some(None));
        assert_eq!(
            consolidate(&[(profile(3, None), -1), (kept.clone(), 1)]),
            Some(Some(kept))
        );
    }
}
