#!/usr/bin/env bash
# Skew benchmark: one bot with half of all events among normal users. Generates the two
# one-million-event files of the hot-user scenario, runs `veer run` with 4 workers three times
# on each, and prints the median throughput ratio (hot / uniform) and the peak-RSS ratio.
# Goals: throughput ratio >= 0.5 and RSS ratio <= 2.
#
# Usage: bash benches/hot_user.sh [WORK_DIR]   (needs python3 and ../shared beside the repo)
# Environment: VEER, a veer binary to measure instead of building one (benches/common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
source benches/common.sh
script=$PWD/../shared/cases/14-hot-user-skew/generate.py
[ -f "$work/hot.jsonl" ] || (cd "$work" && python3 "$script" 1000000)

measure() {  # prints "wall_seconds peak_rss_kib" of one run
  /usr/bin/time -f "%e %M" "$veer" run --input "$1" --workers 4 --alerts /dev/null --no-progress 2>&1 >/dev/null | tail -1
}
median() { sort -n | sed -n 2p; }

for file in uniform hot; do
  : >"$work/$file.runs"
  for run in 1 2 3; do measure "$work/$file.jsonl" >>"$work/$file.runs"; done
done
uniform_wall=$(cut -d' ' -f1 "$work/uniform.runs" | median)
hot_wall=$(cut -d' ' -f1 "$work/hot.runs" | median)
uniform_rss=$(cut -d' ' -f2 "$work/uniform.runs" | sort -n | tail -1)
hot_rss=$(cut -d' ' -f2 "$work/hot.runs" | sort -n | tail -1)
echo "uniform: median wall ${uniform_wall}s, $(awk "BEGIN {printf \"%.0f\", 1000000 / $uniform_wall}") events/s, peak RSS $((uniform_rss / 1024)) MiB"
echo "hot:     median wall ${hot_wall}s, $(awk "BEGIN {printf \"%.0f\", 1000000 / $hot_wall}") events/s, peak RSS $((hot_rss / 1024)) MiB"
echo "throughput ratio hot/uniform: $(awk "BEGIN {printf \"%.2f\", $uniform_wall / $hot_wall}") (goal >= 0.5)"
echo "peak RSS ratio hot/uniform:   $(awk "BEGIN {printf \"%.2f\", $hot_rss / $uniform_rss}") (goal <= 2)"
