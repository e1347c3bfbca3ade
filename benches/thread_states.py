#!/usr/bin/env python3
"""Split a multi-worker `veer run` into the time its busy threads run, wait for a core or sleep.

Reads the output of `perf sched timehist` (one line per switch-out, with the task's sleep
time, scheduling delay and run time in milliseconds) and follows three threads of one
process: the timely workers `timely:work-0` and `timely:work-1` and the population model
thread `veer-population`. The main phase starts at the population thread's first run longer
than 0.3 ms, taken as the first window handed to the model, and ends with the process. For
that phase the script prints each thread's run time and ready time (runnable, waiting for a
core), and how long 0, 1, 2 or 3 of them ran.

An interval in which exactly one of the three runs and the other two sleep is a dependency
stall: the sleeping threads wait for the running one, and a core is idle unless another
process takes it. The script prints those stalls by the thread that ran alone.

Usage:
    perf sched record -o sched.data veer run --input F --alerts /dev/null --no-progress --workers 2
    perf sched timehist -i sched.data > sched.txt
    python3 benches/thread_states.py sched.txt [PID]

Without PID, the process of the first `timely:work-0` line is used, so give PID when other
veer processes ran during the recording. Only 2-worker runs have
all three threads; with more workers, only workers 0 and 1 are followed.
"""

import collections
import re
import sys

THREADS = {"timely:work-0": "worker 0", "timely:work-1": "worker 1", "veer-population": "model"}
TASK = re.compile(r"(.*)\[(\d+)/?(\d*)\]$")
# Width of the time slots the joint state is sampled in, in seconds.
SLOT = 0.0001


def read_intervals(path, pid):
    """Return each followed thread's (start, end, state) intervals, state 'run' or 'ready'."""
    intervals = collections.defaultdict(list)
    with open(path) as lines:
        for line in lines:
            fields = line.split()
            if len(fields) < 6 or not fields[0][0].isdigit():
                continue
            task = TASK.match(fields[2])
            if not task or task.group(1) not in THREADS:
                continue
            task_pid = task.group(3) or task.group(2)
            if pid is None:
                pid = task_pid
            if task_pid != pid:
                continue
            end = float(fields[0])
            run = float(fields[-1]) / 1000
            delay = float(fields[-2]) / 1000
            name = THREADS[task.group(1)]
            intervals[name].append((end - run, end, "run"))
            intervals[name].append((end - run - delay, end - run, "ready"))
    return intervals, pid


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    pid = sys.argv[2] if len(sys.argv) == 3 else None
    intervals, pid = read_intervals(sys.argv[1], pid)
    if set(intervals) != set(THREADS.values()):
        sys.exit(f"process {pid}: expected threads {sorted(THREADS.values())}, found "
                 f"{sorted(intervals)}; was the run made with 2 workers and no checkpoints?")

    model_runs = [start for start, end, state in intervals["model"]
                  if state == "run" and end - start > 0.0003]
    start = min(model_runs)
    end = max(end for spans in intervals.values() for _, end, _ in spans)
    slots = int((end - start) / SLOT) + 1
    # 0 asleep, 1 running, 2 ready.
    states = {name: bytearray(slots) for name in intervals}
    for name, spans in intervals.items():
        for first, last, state in spans:
            low = max(0, int((first - start) / SLOT))
            high = max(low, min(slots, int((last - start) / SLOT)))
            states[name][low:high] = bytes([1 if state == "run" else 2]) * (high - low)

    print(f"process {pid}: {(end - start) * 1000:.1f} ms from the first window handed to "
          "the model to the end")
    for name in THREADS.values():
        run = states[name].count(1) * SLOT * 1000
        ready = states[name].count(2) * SLOT * 1000
        print(f"  {name:9} run {run:7.1f} ms, ready (waiting for a core) {ready:6.1f} ms")

    joint = collections.Counter()
    stalls = collections.Counter()
    for slot in range(slots):
        running = [name for name in states if states[name][slot] == 1]
        ready = sum(1 for name in states if states[name][slot] == 2)
        joint[(len(running), ready)] += 1
        if len(running) == 1 and ready == 0:
            stalls[running[0]] += 1
    for (running, ready), count in sorted(joint.items()):
        print(f"  {running} running, {ready} ready: {count * SLOT * 1000:7.1f} ms")
    total = sum(stalls.values()) * SLOT * 1000
    print(f"  dependency stalls (one runs, the others sleep): {total:.1f} ms")
    for name in THREADS.values():
        print(f"    {name} alone: {stalls[name] * SLOT * 1000:.1f} ms")


if __name__ == "__main__":
    main()
