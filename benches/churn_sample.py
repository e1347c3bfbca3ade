"""Run veer on a churn stream, sample it once per interval and check the plateau.

Usage: python3 churn_sample.py VEER INPUT WORK_DIR [--interval S] [--users N] [-- VEER_ARGS...]

Starts `VEER run --input INPUT --http 127.0.0.1:0 VEER_ARGS...`, and once per interval
records the elapsed wall time, VmRSS from /proc/PID/status, and from /metrics the watermark
(event time) and `veer_users_tracked`. Progress is the number of input events at or before
the watermark, counted from INPUT's timestamps (the case's stream is in time order), because
`veer_source_events_total` counts events read, and a sorted replay reads the whole file
before it processes any. Each sample is mapped to an
event-time day: day 1 starts at 2017-11-25 00:00 Beijing time (2017-11-24T16:00Z), the
start of the case's stream. Writes WORK_DIR/samples.tsv and WORK_DIR/days.tsv, prints a
per-day table and the checks, and exits 1 when a check fails.

Checks (the case's expectations):
- veer exits with 0 and writes no alert;
- max RSS of days 25-30 <= 1.25 x max RSS of days 8-10 (with --users 200000);
- events per second over the last quarter of the events >= 0.8 x over the first quarter;
- users tracked never exceed, by more than 5%, the users who started within the last
  2 days (active) plus the retention (`--retention-days`, the run's --evict-after).
"""

import argparse
import bisect
import re
import subprocess
import sys
import time
import urllib.request

DAY1_START = 1511539200  # 2017-11-25T00:00+08:00 in Unix seconds
DAY = 86400
# The case's generator: a group of 50 users starts every 10 minutes and stays 2 days.
USERS_PER_SECOND = 50 / 600
ACTIVE_SECONDS = 2 * DAY


def parse_arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("veer")
    parser.add_argument("input")
    parser.add_argument("work")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--users", type=int, default=200_000, help="users in the stream")
    parser.add_argument(
        "--retention-days", type=float, default=7.0, help="the run's --evict-after, in days"
    )
    parser.add_argument("veer_args", nargs="*")
    return parser.parse_args()


def read_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def scrape(address):
    """Returns the metrics this script reads, or an empty dict when the server is not up."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name in ("veer_watermark_seconds", "veer_users_tracked", "veer_users_evicted_total"):
            values[name] = float(value)
    return values


def read_timestamps(path):
    """Returns the sorted event times (Unix seconds) of a JSON-lines input."""
    pattern = re.compile(rb'"ts":(\d+)')
    with open(path, "rb") as events:
        times = [int(match.group(1)) for match in map(pattern.search, events) if match]
    times.sort()
    return times


def wait_for_address(process, log_path):
    """Returns the HTTP address that veer logs once its server listens."""
    pattern = re.compile(r"HTTP server listening address=(\S+)")
    while process.poll() is None:
        with open(log_path) as log:
            match = pattern.search(log.read())
        if match:
            return match.group(1)
        time.sleep(0.05)
    return None


def rate_between(samples, low, high):
    """Returns events per second between the points where progress passed `low` and `high`."""

    def time_at(events):
        for (t0, e0), (t1, e1) in zip(samples, samples[1:]):
            if e0 <= events <= e1 and e1 > e0:
                return t0 + (t1 - t0) * (events - e0) / (e1 - e0)
        return None

    start, end = time_at(low), time_at(high)
    if start is None or end is None or end <= start:
        return None
    return (high - low) / (end - start)


def main():
    args = parse_arguments()
    log_path = f"{args.work}/veer.log"
    alerts_path = f"{args.work}/alerts.jsonl"
    command = [
        args.veer, "run", "--input", args.input, "--alerts", alerts_path,
        "--http", "127.0.0.1:0", *args.veer_args,
    ]
    print("command:", " ".join(command))
    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stderr=log, stdout=subprocess.DEVNULL)
        address = wait_for_address(process, log_path)
        samples = []
        while process.poll() is None:
            elapsed = time.monotonic() - started
            rss = read_rss_kib(process.pid)
            metrics = scrape(address) if address else {}
            if rss is not None and "veer_watermark_seconds" in metrics:
                samples.append((elapsed, rss, metrics))
            time.sleep(max(0.0, args.interval - (time.monotonic() - started - elapsed)))
        code = process.returncode
        wall = time.monotonic() - started

    timestamps = read_timestamps(args.input)
    rows = []
    with open(f"{args.work}/samples.tsv", "w") as out:
        out.write("elapsed_s\trss_kib\tevents\twatermark\tday\tusers_tracked\tusers_evicted\n")
        for elapsed, rss, metrics in samples:
            watermark = metrics["veer_watermark_seconds"]
            day = int((watermark - DAY1_START) // DAY) + 1
            tracked = int(metrics.get("veer_users_tracked", 0))
            evicted = int(metrics.get("veer_users_evicted_total", 0))
            events = bisect.bisect_right(timestamps, watermark)
            rows.append((elapsed, rss, events, watermark, day, tracked))
            out.write(f"{elapsed:.2f}\t{rss}\t{events}\t{watermark:.0f}\t{day}\t{tracked}\t{evicted}\n")

    by_day = {}
    for elapsed, rss, events, watermark, day, tracked in rows:
        entry = by_day.setdefault(day, {"rss": 0, "tracked": 0, "samples": 0})
        entry["rss"] = max(entry["rss"], rss)
        entry["tracked"] = max(entry["tracked"], tracked)
        entry["samples"] += 1
    with open(f"{args.work}/days.tsv", "w") as out:
        out.write("day\tsamples\tmax_rss_mib\tmax_users_tracked\n")
        print("day  samples  max RSS (MiB)  max users tracked")
        for day in sorted(by_day):
            entry = by_day[day]
            line = f"{day}\t{entry['samples']}\t{entry['rss'] / 1024:.1f}\t{entry['tracked']}"
            out.write(line + "\n")
            print(f"{day:>3}  {entry['samples']:>7}  {entry['rss'] / 1024:>13.1f}  {entry['tracked']:>17}")

    failures = []
    print(f"wall time {wall:.1f}s, exit code {code}, {len(rows)} samples")
    if code != 0:
        failures.append(f"veer exited with {code}; see {log_path}")
    with open(alerts_path) as alerts:
        alert_count = sum(1 for _ in alerts)
    print(f"alerts {alert_count} (expected 0)")
    if alert_count:
        failures.append(f"{alert_count} alerts, expected none")

    early = [by_day[d]["rss"] for d in (8, 9, 10) if d in by_day]
    late = [by_day[d]["rss"] for d in range(25, 31) if d in by_day]
    if args.users >= 200_000:
        if not early or not late:
            failures.append("no samples in days 8-10 or 25-30")
        else:
            ratio = max(late) / max(early)
            print(f"RSS max days 25-30 / max days 8-10: {ratio:.3f} (limit 1.25)")
            if ratio > 1.25:
                failures.append(f"RSS grew by {ratio:.3f}x from days 8-10 to days 25-30")

    total_events = len(timestamps)
    progress = [(elapsed, events) for elapsed, _, events, *_ in rows]
    start = progress[0][1] if progress else 0
    first = rate_between(progress, start, total_events // 4)
    last = rate_between(progress, 3 * total_events // 4, max(e for _, e in progress))
    if first and last:
        print(f"events/s first quarter {first:.0f}, last quarter {last:.0f}, ratio {last / first:.3f} (limit 0.8)")
        if last < 0.8 * first:
            failures.append(f"throughput fell to {last / first:.3f}x of the first quarter")
    else:
        failures.append("too few samples to measure the throughput of the first and last quarters")

    bound = USERS_PER_SECOND * (ACTIVE_SECONDS + args.retention_days * DAY)
    peak = max((tracked for *_, tracked in rows), default=0)
    print(f"users tracked max {peak} (bound for active + retention: {bound:.0f}, users {args.users})")
    if peak > 1.05 * bound:
        failures.append(f"users tracked reached {peak}, above {bound:.0f}")

    for failure in failures:
        print("FAIL:", failure)
    if not failures:
        print("all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
