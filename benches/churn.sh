#!/usr/bin/env bash
# Month-long churn benchmark: 200,000 users, each active for 2 days, 5,000,000 views over
# 30 days of event time. Generates churn.jsonl with the case's own generator, runs
# `veer run` with 4 workers and the progress display, samples RSS, event time and the users
# tracked once per second (benches/churn_sample.py), and checks the case's expectations:
# exit 0, no alerts, RSS max of days 25-30 <= 1.25 x max of days 8-10, last-quarter
# throughput >= 0.8 x first quarter, users tracked bounded by active users plus retention.
#
# Usage: bash benches/churn.sh WORK_DIR [VEER_ARGS...]
#   (needs python3 and ../shared beside the repository; extra arguments go to `veer run`,
#   for example --profiles WORK_DIR/profiles.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash benches/churn.sh WORK_DIR [VEER_ARGS...]" >&2
  exit 2
fi
work=$1
shift
mkdir -p "$work"
cargo build --release --quiet
veer=$PWD/target/release/veer
generator=$PWD/../shared/cases/17-state-growth-long-run/generate.py
[ -f "$work/churn.jsonl" ] || (cd "$work" && python3 "$generator" 200000)

# The stream is in time order, so arrival order replays it as a live feed would deliver it;
# --order auto would first read the whole file into memory to choose the order.
exec python3 benches/churn_sample.py --users 200000 --retention-days 7 \
  "$veer" "$work/churn.jsonl" "$work" -- --workers 4 --order arrival "$@"
