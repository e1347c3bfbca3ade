//! The assignment of users to workers.

use veer_models::Id;

/// Returns the index of the worker, among `peers`, that owns `user`.
///
/// The exchange of events by user, the split of a checkpoint among workers and the routing
/// of user queries all call this, so they agree. Alerts do not depend on it: each user's
/// events reach one worker in the same order whichever worker that is.
///
/// Every worker gets an equal share of the user hash space. The population model, the one
/// large piece of work that does not follow the users, runs on a thread of its own when
/// several workers run without checkpoints (see [`crate::population_groups_on_thread`]).
///
/// NOTE: with checkpoints the model runs on the last worker's thread besides that worker's
/// share of the users, so the last worker is the busiest one in such a run.
///
/// ```
/// use veer_models::Id;
/// use veer_operators::route::user_owner;
///
/// assert_eq!(user_owner(&Id::from(7u64), 1), 0);
/// let owners: Vec<usize> = (0..7_000u64).map(|user| user_owner(&Id::from(user), 2)).collect();
/// let last = owners.iter().filter(|owner| **owner == 1).count();
/// assert!((3_300..3_700).contains(&last), "{last} of 7,000 users on the last worker");
/// ```
pub fn user_owner(user: &Id, peers: usize) -> usize {
    if peers <= 1 {
        return 0;
    }
    (user.route_hash() % peers as u64) as usize
}
