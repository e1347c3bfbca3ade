#!/usr/bin/env bash
# Event-to-alert latency at a fixed offered load: a generated Taobao-CSV stream is paced onto
# the standard input of `veer run` (arrival order), open loop, and the run summary's latency
# percentiles are printed.
# Usage: bash benches/latency.sh [EVENTS_PER_SECOND] [USERS] [WORK_DIR]
# Environment: VEER, a veer binary to measure instead of building one (benches/common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-100000}
users=${2:-2000}
work=${3:-$(mktemp -d)}
mkdir -p "$work"
source benches/common.sh
events="$work/events-$users.csv"
[ -f "$events" ] || "$veer" generate --users "$users" --format taobao --out "$events" --truth "$work/truth-$users.jsonl"
# Writes the file in slices every 10 ms so the offered load is `rate` lines per second,
# whatever veer's speed; a slice that cannot be written in time delays the following ones.
pace() {
    python3 - "$1" "$2" <<'PY'
import sys, time
path, rate = sys.argv[1], float(sys.argv[2])
lines = open(path, 'rb').read().splitlines(keepends=True)
per_tick = max(1, int(rate / 100))
out = sys.stdout.buffer
start = time.monotonic()
for tick, first in enumerate(range(0, len(lines), per_tick)):
    delay = start + tick / 100 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    out.write(b''.join(lines[first:first + per_tick]))
    out.flush()
elapsed = time.monotonic() - start
print(f"offered {len(lines)} lines in {elapsed:.2f} s: {len(lines) / elapsed:.0f} lines/s", file=sys.stderr)
PY
}
pace "$events" "$rate" | "$veer" run --input - --format taobao --order arrival --no-progress \
    --alerts "$work/alerts.jsonl" 2>&1 | grep -E "offered|^latency|^alerts|events per second|wall time"
