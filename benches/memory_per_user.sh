#!/usr/bin/env bash
# Memory per tracked user. Runs `veer run` on a Taobao CSV stream with USERS users and on one
# with 1,000 users, both under /usr/bin/time -v. Then prints
# (peak RSS of the large run - peak RSS of the small run) / (difference in tracked users).
#
# Each user has EVENTS events, two hours apart, in three of 5,000 categories. The file is in
# time order and replayed with `--order arrival`, so the input is streamed, not buffered.
#
# Usage: bash benches/memory_per_user.sh [USERS] [EVENTS] [WORK_DIR]   (default 1000000 6)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-1000000}
events=${2:-6}
work=${3:-$(mktemp -d)}
mkdir -p "$work"
source benches/common.sh

write_stream() {
  python3 - "$1" "$events" "$2" <<'PY'
import random, sys
users, events, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
favourites = [[rng.randrange(5000) for _ in range(3)] for _ in range(users)]
start = 1_511_539_200  # 2017-11-25 00:00:00 UTC, the Taobao sample's first day
with open(path, "w") as out:
    for round_index in range(events):
        base = start + round_index * 7200
        for user in range(users):
            ts = base + user * 7200 // users
            category = favourites[user][rng.randrange(3)]
            item = category * 1000 + rng.randrange(1000)
            out.write(f"{user + 1},{item},{category},pv,{ts}\n")
PY
}

measure() {
  local file=$1 log=$2
  /usr/bin/time -v "$veer" run --input "$file" --format taobao --order arrival \
    --alerts /dev/null --no-progress >"$log" 2>&1
  local rss_kib tracked
  rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  tracked=$(tracked_users "$log")
  echo "$rss_kib $tracked"
}

small="$work/users-1000.csv"
large="$work/users-$users.csv"
[ -f "$small" ] || write_stream 1000 "$small"
[ -f "$large" ] || write_stream "$users" "$large"
read -r small_kib small_users < <(measure "$small" "$work/small.log")
read -r large_kib large_users < <(measure "$large" "$work/large.log")
per_user=$(( (large_kib - small_kib) * 1024 / (large_users - small_users) ))
echo "small run: $small_users users, peak RSS $small_kib KiB"
echo "large run: $large_users users, peak RSS $large_kib KiB ($(grep -E '^wall time' "$work/large.log"))"
echo "memory per tracked user: $per_user bytes"
