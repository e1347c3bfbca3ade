#!/usr/bin/env bash
# End-to-end benchmark of `veer run`: generates a labelled stream of a stated size in Taobao
# CSV and in JSON lines, measures the line-scan and parse baselines on each file, then runs
# the engine with 1 and 2 worker threads under /usr/bin/time and prints one Markdown row per
# run: events per second, wall time, peak resident memory and memory per tracked user.
#
# Usage: bash benches/e2e.sh [USERS] [WORK_DIR]     (default 9000 users, about 1 million events)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-9000}
work=${2:-$(mktemp -d)}
mkdir -p "$work"
source benches/common.sh
for format in taobao jsonl; do
  extension=$([ "$format" = taobao ] && echo csv || echo jsonl)
  events="$work/events-$users.$extension"
  [ -f "$events" ] || "$veer" generate --users "$users" --format "$format" --out "$events" --truth "$work/truth-$users.jsonl" 2>/dev/null
  "$veer" scan --input "$events"
done

echo
echo "| date | file | workers | events | wall (s) | events/s | peak RSS (MiB) | users | RSS per user (bytes) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for format in taobao jsonl; do
  extension=$([ "$format" = taobao ] && echo csv || echo jsonl)
  events="$work/events-$users.$extension"
  for workers in 1 2; do
    log="$work/run-$format-$workers.log"
    /usr/bin/time -v "$veer" run --input "$events" --alerts "$work/alerts.jsonl" --workers "$workers" --no-progress >"$log" 2>&1
    unique=$(awk '$1 == "events" && NF == 2 {print $2}' "$log")
    tracked=$(tracked_users "$log")
    wall=$(awk '$1 == "wall" && $2 == "time" {sub("s", "", $3); print $3}' "$log")
    rate=$(awk '$1 == "events" && $2 == "per" {print $4}' "$log")
    rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    echo "| $(date +%F) | $(basename "$events") | $workers | $unique | $wall | $rate | $((rss_kib / 1024)) | $tracked | $((rss_kib * 1024 / tracked)) |"
  done
done
