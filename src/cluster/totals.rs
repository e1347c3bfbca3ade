//! Summing each worker's counts on worker 0 of the whole cluster, through a small dataflow.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::InputHandleVec as InputHandle;
use veer_models::{AlertKind, Id};

/// The counts of the run summary that each worker keeps for the users it owns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// Exact duplicates dropped.
    pub duplicates: u64,
    /// User states created: one per user fed to the detectors, one more after each return
    /// from eviction.
    pub users: u64,
    /// Users whose state was evicted after being idle.
    pub users_evicted: u64,
    /// Users tracked at the end of the run.
    pub users_tracked: u64,
    /// With `--models`, users whose window history is kept at the end of the run.
    pub window_histories: u64,
    /// With `--models`, users whose fusion rule state is kept at the end of the run.
    pub fusion_states: u64,
    /// Alerts written, by kind.
    pub alerts: BTreeMap<AlertKind, u64>,
    /// User and time (Unix seconds) of every event fed to a detector, when kept for scoring.
    pub timeline: Vec<(Id, i64)>,
}

impl WorkerCounts {
    /// Adds another worker's counts.
    pub fn add(&mut self, other: WorkerCounts) {
        self.duplicates += other.duplicates;
        self.users += other.users;
        self.users_evicted += other.users_evicted;
        self.users_tracked += other.users_tracked;
        self.window_histories += other.window_histories;
        self.fusion_states += other.fusion_states;
        for (kind, count) in other.alerts {
            *self.alerts.entry(kind).or_default() += count;
        }
        self.timeline.extend(other.timeline);
    }
}

/// Sends every worker's counts to worker 0 of the cluster and returns their sum there.
///
/// Every worker of every process must call this once, after its other dataflows, because
/// timely matches dataflows across workers by the order in which they are built. Returns
/// `None` on every worker but worker 0. In a cluster the counts travel between processes
/// serialized by timely (bincode over serde).
pub fn sum_on_first_worker(
    worker: &mut timely::worker::Worker,
    counts: WorkerCounts,
) -> Option<WorkerCounts> {
    let sum = Rc::new(RefCell::new(WorkerCounts::default()));
    let mut input: InputHandle<u64, WorkerCounts> = InputHandle::new();
    {
        let sum = sum.clone();
        let input = &mut input;
        worker.dataflow::<u64, _, _>(move |scope| {
            input.to_stream(scope).sink(
                Exchange::new(|_: &WorkerCounts| 0),
                "SumWorkerCounts",
                move |(input, _frontier)| {
                    input.for_each_stamp(|_, data| {
                        for batch in data {
                            for counts in batch.drain(..) {
                                sum.borrow_mut().add(counts);
                            }
                        }
                    });
                },
            );
        });
    }
    input.send(counts);
    drop(input);
    while worker.step_or_park(None) {}
    (worker.index() == 0).then(|| sum.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_workers_sum_on_worker_zero() {
        let guards = timely::execute(timely::Config::process(4), |worker| {
            let index = worker.index() as u64;
            let counts = WorkerCounts {
                duplicates: index,
                users: 10 * index,
                users_evicted: 1,
                users_tracked: index,
                window_histories: index,
                fusion_states: 1,
                alerts: BTreeMap::from([(AlertKind::Anomaly, 1)]),
                timeline: vec![(Id::from(index), index as i64)],
            };
            sum_on_first_worker(worker, counts)
        })
        .unwrap();
        let results: Vec<Option<WorkerCounts>> =
            guards.join().into_iter().map(Result::unwrap).collect();
        let total = results[0].clone().expect("worker 0 returns the sum");
        assert!(results[1..].iter().all(Option::is_none));
        assert_eq!(total.duplicates, 6);
        assert_eq!(total.users, 60);
        assert_eq!(total.users_evicted, 4);
        assert_eq!(total.users_tracked, 6);
        assert_eq!(total.window_histories, 6);
        assert_eq!(total.fusion_states, 4);
        assert_eq!(total.alerts[&AlertKind::Anomaly], 4);
        assert_eq!(total.timeline.len(), 4);
    }
}
