//! The assignment of users to workers.

use veer_models::Id;

/// Slots of the user hash space per worker. Every worker but the last gets
/// [`SLOTS_PER_WORKER`] of them and the last one [`SLOTS_OF_LAST_WORKER`], because the last
/// worker also adds every window to the population model (see
/// [`crate::population_groups`]).
///
/// NOTE: the ratio 3 : 4 comes from one profile of 2 workers on a generated Taobao stream of
/// 9,000 users and 5,495 categories, where the model took about a seventh of all CPU time. A
/// stream with fewer categories per event leaves the last worker less busy than the others.
const SLOTS_PER_WORKER: u64 = 4;
const SLOTS_OF_LAST_WORKER: u64 = 3;

/// Returns the index of the worker, among `peers`, that owns `user`.
///
/// The exchange of events by user, the split of a checkpoint among workers and the routing
/// of user queries all call this, so they agree. Alerts do not depend on it: each user's
/// events reach one worker in the same order whichever worker that is.
///
/// ```
/// use veer_models::Id;
/// use veer_operators::route::user_owner;
///
/// assert_eq!(user_owner(&Id::from(7u64), 1), 0);
/// let owners: Vec<usize> = (0..7_000u64).map(|user| user_owner(&Id::from(user), 2)).collect();
/// let last = owners.iter().filter(|owner| **owner == 1).count();
/// assert!((2_800..3_200).contains(&last), "{last} of 7,000 users on the last worker");
/// ```
pub fn user_owner(user: &Id, peers: usize) -> usize {
    if peers <= 1 {
        return 0;
    }
    let last = peers as u64 - 1;
    let slots = SLOTS_PER_WORKER * last + SLOTS_OF_LAST_WORKER;
    let slot = user.route_hash() % slots;
    (slot / SLOTS_PER_WORKER).min(last) as usize
}
