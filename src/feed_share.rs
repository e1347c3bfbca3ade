//! Feeding a fully read input from every worker at once.
//!
//! Worker 0 reads the whole input, chooses the replay order and finds the late events, exactly
//! as when it feeds alone. It then puts the events it keeps into blocks in sending order: the
//! reader's batches in arrival order, or cuts of the sorted input. Each block is sent at one
//! timely time: its first event time when the input is replayed sorted,
//! or the watermark before its first event in arrival order. Every
//! event of a block is at or after that time, and the times never decrease, so a worker may
//! send a block once its input has advanced to the block's time. Worker `k` of `W` sends
//! blocks `k`, `k + W`, `k + 2W`, ... through its own input handle. The exchange by user and
//! the release in processing order downstream make the alerts independent of which worker sent
//! what and of how far the frontier moves at each step.
//!
//! No worker waits for the dataflow after each block. Before it sends block `j`, a worker steps
//! the dataflow only until the probe has passed the time of block `j - IN_FLIGHT_BLOCKS`, which
//! bounds the events in flight. This cannot deadlock: each worker advances its input to a
//! block's time before it waits, so the worker with the lowest next block always waits for a
//! time that every input has reached.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::{InputHandleVec as InputHandle, ProbeHandle};
use veer_models::Event;

use crate::buffered::BufferedBatch;
use crate::ingest::Watermark;
use crate::live::WorkerHooks;

/// Events per block.
const BLOCK_EVENTS: usize = 4096;

/// Blocks sent beyond the probe's frontier before a worker waits for the dataflow.
const IN_FLIGHT_BLOCKS: usize = 8;

/// Maximum park time of a worker waiting for the dataflow. Timely wakes it sooner when
/// messages arrive.
const PARK_WHILE_IN_FLIGHT: Duration = Duration::from_millis(1);

/// How long a worker waiting for worker 0's decision parks between steps.
const DECISION_POLL: Duration = Duration::from_millis(1);

/// Events to be sent from every worker, cut into blocks in sending order.
pub(crate) struct FeedPlan {
    blocks: Vec<Block>,
    /// The events of a sorted plan's blocks, which stay in the reader's batches until sent.
    sorted: Option<SortedEvents>,
    workers: usize,
    /// Events sent so far by all workers, for the progress display.
    sent: AtomicU64,
}

struct Block {
    /// Timely time the block's events are sent at: at or before each of their times.
    time: u64,
    /// Latest event time in this block and the ones before it.
    newest_ms: i64,
    events: BlockEvents,
}

/// Storage of a block's events until the worker that sends them takes them.
enum BlockEvents {
    /// A batch of the block's own, taken whole.
    Owned(Mutex<BufferedBatch>),
    /// A range of [`SortedEvents::order`].
    Sorted(Range<usize>),
}

/// The reader's batches of a sorted plan and the order in which their events are sent.
///
/// Sorting positions instead of events leaves the events in their compact form until they are
/// sent. It also saves three copies: joining the whole input into one vector, a stable sort
/// that moves every event several times, and cutting each block out of that vector.
struct SortedEvents {
    /// The reader's batches. The worker that sends an event's block takes the event.
    batches: Mutex<Vec<SortedBatch>>,
    /// Every event's time and position in `batches`, in processing order.
    order: Vec<Slot>,
}

/// A batch of the reader's events, freed once every event is taken.
struct SortedBatch {
    events: BufferedBatch,
    /// Events not yet taken.
    remaining: usize,
}

/// An event's time and position in the reader's batches.
#[derive(Clone, Copy)]
struct Slot {
    ts_ms: i64,
    batch: u32,
    index: u32,
}

impl FeedPlan {
    /// Plans the events of the reader's `batches` for `workers` workers, in the order of a
    /// stable sort of the batches joined by [`Event::processing_cmp`].
    pub(crate) fn sorted(batches: Vec<BufferedBatch>, workers: usize) -> FeedPlan {
        let order = sending_order(&batches);
        let mut cuts = Cuts::default();
        for (at, slot) in order.iter().enumerate() {
            cuts.keep(at, slot.ts_ms, slot.ts_ms.max(0) as u64);
        }
        let batches = batches
            .into_iter()
            .map(|events| SortedBatch {
                remaining: events.len(),
                events,
            })
            .collect();
        let events = SortedEvents {
            batches: Mutex::new(batches),
            order,
        };
        cuts.into_plan(events, workers)
    }

    /// Plans batches of events in arrival (file) order for `workers` workers. Events behind
    /// the watermark are left out and passed to `late` with the index of their batch in
    /// `batches` and the watermark they missed.
    ///
    /// Each batch becomes a block as it is, without copying its events, unless the block
    /// before it holds fewer than half of [`BLOCK_EVENTS`]; small batches are joined so that
    /// the bound on blocks in flight still bounds events.
    pub(crate) fn arrival(
        batches: Vec<BufferedBatch>,
        watermark: &mut Watermark,
        workers: usize,
        mut late: impl FnMut(usize, &Event, u64),
    ) -> FeedPlan {
        let mut blocks: Vec<Block> = Vec::with_capacity(batches.len());
        let mut newest_ms = i64::MIN;
        for (index, mut batch) in batches.into_iter().enumerate() {
            let mut time = None;
            batch.retain_by_time(
                |ts_ms| {
                    let current = watermark.current();
                    if watermark.observe(ts_ms) {
                        return Err(current);
                    }
                    time.get_or_insert(current);
                    newest_ms = newest_ms.max(ts_ms);
                    Ok(())
                },
                |event, frontier| late(index, event, frontier),
            );
            let Some(time) = time else { continue };
            if let Some(Block {
                newest_ms: last_newest_ms,
                events: BlockEvents::Owned(events),
                ..
            }) = blocks.last_mut()
            {
                let events = events
                    .get_mut()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if events.len() < BLOCK_EVENTS / 2 {
                    events.append(batch);
                    *last_newest_ms = newest_ms;
                    continue;
                }
            }
            blocks.push(Block {
                time,
                newest_ms,
                events: BlockEvents::Owned(Mutex::new(batch)),
            });
        }
        FeedPlan {
            blocks,
            sorted: None,
            workers: workers.max(1),
            sent: AtomicU64::new(0),
        }
    }

    /// Returns the number of events sent so far by all workers.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Returns the latest event time of the whole plan, or `i64::MIN` when it is empty.
    pub(crate) fn newest_ms(&self) -> i64 {
        self.blocks.last().map_or(i64::MIN, |block| block.newest_ms)
    }

    /// Sends worker `index`'s blocks through `input`, stepping the dataflow while more than
    /// [`IN_FLIGHT_BLOCKS`] blocks are ahead of `probe`. `advanced` runs after each advance
    /// of the input, with the new time.
    pub(crate) fn send_share(
        &self,
        worker: &mut timely::worker::Worker,
        index: usize,
        input: &mut InputHandle<u64, Event>,
        probe: &ProbeHandle<u64>,
        hooks: &WorkerHooks,
        advanced: &mut dyn FnMut(u64),
    ) {
        let lag = IN_FLIGHT_BLOCKS.max(self.workers);
        for at in (index..self.blocks.len()).step_by(self.workers) {
            let block = &self.blocks[at];
            if block.time > *input.time() {
                input.advance_to(block.time);
                advanced(block.time);
            }
            if at >= lag {
                let bound = self.blocks[at - lag].time;
                // Parking, not spinning, leaves the core to a thread that still has work,
                // such as the one that rebuilds the category groups.
                while probe.less_than(&bound) {
                    worker.step_or_park(Some(PARK_WHILE_IN_FLIGHT));
                    hooks.between_steps();
                }
            }
            let started = Instant::now();
            let mut events = self.take_events(block);
            let count = events.len() as u64;
            // The block goes on as one message, so its events are not copied one by one into
            // the input's buffer.
            input.send_batch(&mut events);
            self.sent.fetch_add(count, Ordering::Relaxed);
            hooks.mark_sent(block.newest_ms, started);
        }
    }

    /// Takes `block`'s events out of the plan, in sending order.
    fn take_events(&self, block: &Block) -> Vec<Event> {
        match &block.events {
            BlockEvents::Owned(events) => {
                let empty = BufferedBatch::Compact(Vec::new());
                std::mem::replace(&mut *lock(events), empty).into_events()
            }
            BlockEvents::Sorted(range) => {
                let sorted = self
                    .sorted
                    .as_ref()
                    .expect("a plan with sorted blocks keeps their events");
                let slots = &sorted.order[range.clone()];
                let mut batches = lock(&sorted.batches);
                let mut events = Vec::with_capacity(slots.len());
                for slot in slots {
                    let batch = &mut batches[slot.batch as usize];
                    events.push(batch.events.take(slot.index as usize));
                    batch.remaining -= 1;
                    if batch.remaining == 0 {
                        batch.events = BufferedBatch::Compact(Vec::new());
                    }
                }
                events
            }
        }
    }
}

/// Returns the time and position of every event of `batches`, sorted stably by
/// [`Event::processing_cmp`] as if the batches were joined in order.
///
/// The comparison reads the events only for equal times, because the processing order
/// compares times first.
fn sending_order(batches: &[BufferedBatch]) -> Vec<Slot> {
    let count = batches.iter().map(BufferedBatch::len).sum();
    let mut order = Vec::with_capacity(count);
    for (batch, events) in batches.iter().enumerate() {
        let batch_index = u32::try_from(batch).expect("fewer than 2^32 batches");
        for index in 0..events.len() {
            order.push(Slot {
                ts_ms: events.ts_ms(index),
                batch: batch_index,
                index: u32::try_from(index).expect("fewer than 2^32 events in a batch"),
            });
        }
    }
    let event = |slot: &Slot| batches[slot.batch as usize].event(slot.index as usize);
    order.sort_by(|a, b| {
        a.ts_ms
            .cmp(&b.ts_ms)
            .then_with(|| event(a).processing_cmp(&event(b)))
    });
    order
}

/// Block boundaries of a sorted plan, found in one pass over the events in sending order.
#[derive(Default)]
struct Cuts {
    /// Index of each block's first event, its time and the latest event time up to it.
    starts: Vec<(usize, u64, i64)>,
    kept_in_block: usize,
    newest_ms: Option<i64>,
}

impl Cuts {
    /// Keeps the event at index `at`, of time `ts_ms`, which may be sent at `time` or earlier.
    fn keep(&mut self, at: usize, ts_ms: i64, time: u64) {
        let newest = self.newest_ms.map_or(ts_ms, |newest| newest.max(ts_ms));
        self.newest_ms = Some(newest);
        if self.kept_in_block == 0 {
            self.starts.push((at, time, newest));
        }
        let last = self.starts.last_mut().expect("a block was started");
        last.2 = newest;
        self.kept_in_block += 1;
        if self.kept_in_block == BLOCK_EVENTS {
            self.kept_in_block = 0;
        }
    }

    /// Cuts the sending order of `events` into blocks.
    fn into_plan(self, events: SortedEvents, workers: usize) -> FeedPlan {
        let ends = self.starts.iter().skip(1).map(|&(start, ..)| start);
        let ends = ends.chain([events.order.len()]);
        let blocks = self
            .starts
            .iter()
            .zip(ends)
            .map(|(&(start, time, newest_ms), end)| Block {
                time,
                newest_ms,
                events: BlockEvents::Sorted(start..end),
            })
            .collect();
        FeedPlan {
            blocks,
            sorted: Some(events),
            workers: workers.max(1),
            sent: AtomicU64::new(0),
        }
    }
}

/// Worker 0's decision on how the input is fed, which the other workers wait for.
#[derive(Default)]
pub(crate) struct FeedBoard {
    /// `None` until worker 0 decides; then `Some(None)` when it feeds alone, or the plan.
    decision: Mutex<Option<Option<Arc<FeedPlan>>>>,
}

impl FeedBoard {
    /// Tells the other workers that worker 0 feeds alone. Must come before worker 0 advances
    /// its input, because a waiting worker holds the frontier back. Does nothing once a
    /// decision is made.
    pub(crate) fn feed_alone(&self) {
        lock(&self.decision).get_or_insert(None);
    }

    /// Publishes a plan that every worker sends its share of.
    pub(crate) fn share(&self, plan: Arc<FeedPlan>) {
        let mut decision = lock(&self.decision);
        assert!(decision.is_none(), "worker 0 decides how to feed once");
        *decision = Some(Some(plan));
    }

    /// Waits, stepping the dataflow, for worker 0's decision, then sends this worker's share
    /// of a shared plan, if any. The input is closed on return.
    pub(crate) fn join(
        &self,
        worker: &mut timely::worker::Worker,
        mut input: InputHandle<u64, Event>,
        probe: &ProbeHandle<u64>,
        hooks: &WorkerHooks,
    ) {
        let plan = loop {
            if let Some(decision) = lock(&self.decision).clone() {
                break decision;
            }
            worker.step_or_park(Some(DECISION_POLL));
            hooks.between_steps();
        };
        if let Some(plan) = plan {
            let index = worker.index();
            plan.send_share(worker, index, &mut input, probe, hooks, &mut |_| {});
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veer_models::Behavior;

    fn view(user: u64, ts_ms: i64) -> Event {
        Event::plain(ts_ms, user, 1u64, 2u64, Behavior::View)
    }

    /// Cuts `events` into batches of `size`, as the reader sends them, and stores them as
    /// the feeder does.
    fn batches(events: Vec<Event>, size: usize) -> Vec<BufferedBatch> {
        events
            .chunks(size)
            .map(|batch| BufferedBatch::store(batch.to_vec()).0)
            .collect()
    }

    fn block_sizes(plan: &FeedPlan) -> Vec<usize> {
        plan.blocks
            .iter()
            .map(|block| match &block.events {
                BlockEvents::Owned(events) => events.lock().unwrap().len(),
                BlockEvents::Sorted(range) => range.len(),
            })
            .collect()
    }

    /// Returns `count` views of 7 users, one per millisecond from 1,000,000.
    fn spread_views(count: usize) -> Vec<Event> {
        (0..count)
            .map(|at| view(at as u64 % 7, 1_000_000 + at as i64))
            .collect()
    }

    #[test]
    fn arrival_plan_joins_small_batches() {
        let events = spread_views(5_000);
        let mut watermark = Watermark::new(600_000, 86_400_000);
        let plan = FeedPlan::arrival(batches(events, 1_000), &mut watermark, 2, |_, _, _| {});
        assert_eq!(block_sizes(&plan), vec![3_000, 2_000]);
        assert_eq!(plan.newest_ms(), 1_000_000 + 4_999);
        assert_eq!(plan.blocks[1].newest_ms, 1_000_000 + 4_999);
    }

    #[test]
    fn arrival_plan_keeps_full_batches_whole() {
        let events = spread_views(9_000);
        let mut watermark = Watermark::new(600_000, 86_400_000);
        let plan = FeedPlan::arrival(batches(events, 4_096), &mut watermark, 2, |_, _, _| {});
        assert_eq!(block_sizes(&plan), vec![4_096, 4_096, 808]);
    }

    #[test]
    fn arrival_plan_skips_a_batch_of_late_events() {
        let early: Vec<Event> = (0..4_096)
            .map(|at| view(1, 10_000_000 + at as i64))
            .collect();
        let late: Vec<Event> = (0..4_096).map(|at| view(2, at as i64)).collect();
        let after: Vec<Event> = (0..10).map(|at| view(3, 10_005_000 + at as i64)).collect();
        let mut watermark = Watermark::new(600_000, 86_400_000);
        let mut dropped = Vec::new();
        let stored = [early, late, after].map(|batch| BufferedBatch::store(batch).0);
        let plan = FeedPlan::arrival(stored.into(), &mut watermark, 2, |batch, _, _| {
            dropped.push(batch)
        });
        assert_eq!(dropped.len(), 4_096);
        assert!(
            dropped.iter().all(|&batch| batch == 1),
            "late events are in batch 1"
        );
        assert_eq!(block_sizes(&plan), vec![4_096, 10]);
    }

    #[test]
    fn arrival_plan_drops_late_events() {
        let events: Vec<Event> = (0..10_000)
            .map(|at| view(at % 7, 1_000_000 + at as i64 * 1000))
            .chain([view(1, 0)])
            .collect();
        let mut watermark = Watermark::new(600_000, 86_400_000);
        let mut late = Vec::new();
        let plan = FeedPlan::arrival(
            batches(events, 4096),
            &mut watermark,
            2,
            |_, event, frontier| late.push((event.ts_ms, frontier)),
        );
        assert_eq!(late, vec![(0, 1_000_000 + 9_999_000 - 600_000)]);
        let kept: usize = block_sizes(&plan).iter().sum();
        assert_eq!(kept, 10_000);
        assert_eq!(plan.newest_ms(), 1_000_000 + 9_999_000);
    }

    #[test]
    fn block_times_bound_their_events() {
        let events: Vec<Event> = (0..20_000)
            .map(|at| {
                view(
                    at % 13,
                    5_000_000 + ((at * 7919) % 500) as i64 * 1000 + at as i64 * 100,
                )
            })
            .collect();
        let mut watermark = Watermark::new(600_000, 86_400_000);
        let plan = FeedPlan::arrival(batches(events, 4096), &mut watermark, 3, |_, _, _| {});
        let mut previous = 0;
        for block in &plan.blocks {
            assert!(block.time >= previous, "block times never decrease");
            previous = block.time;
            for event in plan.take_events(block) {
                assert!(
                    event.ts_ms as u64 >= block.time,
                    "{} < {}",
                    event.ts_ms,
                    block.time
                );
            }
        }
        assert!(plan.blocks.len() > 3);
    }

    /// Takes every block's events in block order, as the workers send them.
    fn sent_events(plan: &FeedPlan) -> Vec<Event> {
        plan.blocks
            .iter()
            .flat_map(|block| plan.take_events(block))
            .collect()
    }

    #[test]
    fn sorted_plan_matches_stable_sort() {
        // Users in runs of 300 events out of time order, many equal times across users,
        // events that differ only in their line, and one priced event, which keeps its batch
        // in the full form.
        let mut events = Vec::new();
        for user in 0..30u64 {
            for at in 0..300i64 {
                let mut event = view(user % 11, 2_000_000 + (at * 37 + user as i64) % 900);
                event.line = (at % 3) as u64;
                events.push(event);
            }
        }
        events[5_000].price = Some(1.5);
        let mut expected = events.clone();
        expected.sort_by(Event::processing_cmp);

        let stored = batches(events, 4_096);
        assert!(matches!(stored[1], BufferedBatch::Full(_)));
        assert!(matches!(stored[2], BufferedBatch::Compact(_)));
        let plan = FeedPlan::sorted(stored, 2);
        assert_eq!(block_sizes(&plan), vec![4_096, 4_096, 808]);
        assert_eq!(plan.newest_ms(), 2_000_000 + 899);
        for (at, block) in plan.blocks.iter().enumerate() {
            assert_eq!(block.time, expected[at * 4_096].ts_ms as u64, "block {at}");
        }
        assert_eq!(sent_events(&plan), expected);
    }

    #[test]
    fn sorted_plan_frees_taken_batches() {
        let events = spread_views(10_000);
        let plan = FeedPlan::sorted(batches(events.clone(), 4_096), 1);
        assert_eq!(sent_events(&plan), events);
        let sorted = plan.sorted.as_ref().unwrap();
        for batch in lock(&sorted.batches).iter() {
            assert_eq!(batch.remaining, 0);
            assert_eq!(batch.events.len(), 0, "a batch is freed once taken");
        }
    }

    #[test]
    fn sorted_plan_of_no_events() {
        let plan = FeedPlan::sorted(batches(Vec::new(), 4_096), 2);
        assert!(plan.blocks.is_empty());
        assert_eq!(plan.newest_ms(), i64::MIN);
    }
}
