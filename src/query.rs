//! Routing of user queries from the HTTP server to the worker that owns the user.
//!
//! Per-user state lives inside the dataflow operators of the worker that owns the user, and is
//! only safe to read on that worker's thread between two dataflow steps. A query therefore goes
//! through the owner's inbox (a bounded channel): the HTTP thread sends it, wakes the worker
//! thread with [`std::thread::Thread::unpark`], and waits for the reply. The worker replies in
//! [`crate::live::WorkerHooks::between_steps`], so the stream never waits for a reader.
//!
//! The owner is found with [`veer_operators::route::user_owner`], which the exchange of events
//! by user also uses.

use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use veer_models::profile::UserProfile;
use veer_models::Id;

/// Maximum queries waiting in one inbox; beyond it the HTTP server returns 503.
const INBOX_CAPACITY: usize = 64;

/// One request for a user's profile, served by the worker that owns the user.
pub struct UserQuery {
    /// The user requested.
    pub user: Id,
    reply: Sender<Option<UserProfile>>,
}

impl UserQuery {
    /// Sends the profile back, or `None` when the worker does not track the user.
    pub fn answer(self, profile: Option<UserProfile>) {
        // The requester may have timed out and gone; that is not the worker's concern.
        let _ = self.reply.send(profile);
    }
}

/// Reason a query failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    /// The user's owner runs in another process of the cluster.
    #[error("user is owned by worker {worker}, which runs in another process")]
    Remote {
        /// Global index of the owning worker.
        worker: usize,
    },
    /// The owner's inbox is full.
    #[error("worker {worker} has {INBOX_CAPACITY} queries waiting; retry later")]
    Busy {
        /// Global index of the owning worker.
        worker: usize,
    },
    /// The owner did not reply in time.
    #[error("query to worker {worker} timed out after {millis} ms")]
    TimedOut {
        /// Global index of the owning worker.
        worker: usize,
        /// The time waited, in milliseconds.
        millis: u128,
    },
    /// The owner has finished its run and serves no more queries.
    #[error("worker {worker} has stopped")]
    Stopped {
        /// Global index of the owning worker.
        worker: usize,
    },
}

struct Inbox {
    sender: Sender<UserQuery>,
    /// The worker's thread, once it has started, so a query can wake it.
    thread: Mutex<Option<Thread>>,
}

/// The inboxes of this process's workers.
pub struct QueryRouter {
    peers: usize,
    first_local: usize,
    inboxes: Vec<Inbox>,
    receivers: Mutex<Vec<Option<Receiver<UserQuery>>>>,
}

impl QueryRouter {
    /// Creates inboxes for the `local` workers of this process, whose global indices start at
    /// `first_local`, out of `peers` workers in all processes.
    pub fn new(peers: usize, first_local: usize, local: usize) -> Arc<QueryRouter> {
        let mut inboxes = Vec::with_capacity(local);
        let mut receivers = Vec::with_capacity(local);
        for _ in 0..local {
            let (sender, receiver) = crossbeam_channel::bounded(INBOX_CAPACITY);
            inboxes.push(Inbox {
                sender,
                thread: Mutex::new(None),
            });
            receivers.push(Some(receiver));
        }
        Arc::new(QueryRouter {
            peers: peers.max(1),
            first_local,
            inboxes,
            receivers: Mutex::new(receivers),
        })
    }

    /// Returns the global index of the worker that owns `user`.
    pub fn owner(&self, user: &Id) -> usize {
        veer_operators::route::user_owner(user, self.peers)
    }

    /// Registers the calling thread as worker `index` (global) and returns its inbox, or
    /// `None` when the index is not local or was already taken.
    pub fn attach_worker(&self, index: usize) -> Option<Receiver<UserQuery>> {
        let local = index.checked_sub(self.first_local)?;
        let inbox = self.inboxes.get(local)?;
        *inbox
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(std::thread::current());
        self.receivers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(local)?
            .take()
    }

    /// Sends a query for `user` to its owner and waits up to `timeout` for the profile;
    /// `Ok(None)` means the owner does not track the user.
    pub fn query(&self, user: Id, timeout: Duration) -> Result<Option<UserProfile>, QueryError> {
        let worker = self.owner(&user);
        let inbox = worker
            .checked_sub(self.first_local)
            .and_then(|local| self.inboxes.get(local))
            .ok_or(QueryError::Remote { worker })?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        match inbox.sender.try_send(UserQuery { user, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(QueryError::Busy { worker }),
            Err(TrySendError::Disconnected(_)) => return Err(QueryError::Stopped { worker }),
        }
        if let Some(thread) = inbox
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            thread.unpark();
        }
        answer.recv_timeout(timeout).map_err(|error| match error {
            crossbeam_channel::RecvTimeoutError::Timeout => QueryError::TimedOut {
                worker,
                millis: timeout.as_millis(),
            },
            crossbeam_channel::RecvTimeoutError::Disconnected => QueryError::Stopped { worker },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_reaches_owner_inbox() {
        let router = QueryRouter::new(2, 0, 2);
        let user = Id::from(7u64);
        let owner = router.owner(&user);
        let inbox = router.attach_worker(owner).expect("local worker");
        assert!(
            router.attach_worker(owner).is_none(),
            "an inbox is taken once"
        );
        let worker = std::thread::spawn(move || {
            let query = inbox.recv().expect("one query");
            let user = query.user.clone();
            query.answer(None);
            user
        });
        let answer = router.query(user.clone(), Duration::from_secs(5));
        assert_eq!(answer, Ok(None));
        assert_eq!(worker.join().unwrap(), user);
    }

    #[test]
    fn query_for_remote_owner_fails() {
        // Process 1 of 2, each with one worker: users owned by worker 0 are remote.
        let router = QueryRouter::new(2, 1, 1);
        let user = (0u64..)
            .map(Id::from)
            .find(|user| router.owner(user) == 0)
            .unwrap();
        let answer = router.query(user, Duration::from_millis(10));
        assert_eq!(answer, Err(QueryError::Remote { worker: 0 }));
    }

    #[test]
    fn query_times_out_without_worker() {
        let router = QueryRouter::new(1, 0, 1);
        let answer = router.query(Id::from(1u64), Duration::from_millis(20));
        assert_eq!(
            answer,
            Err(QueryError::TimedOut {
                worker: 0,
                millis: 20
            })
        );
    }
}
