#!/usr/bin/env bash
# Sustained throughput and event-to-alert latency of `veer serve` over a loopback socket.
#
# Generates the Taobao-CSV stream of USERS users, starts `veer serve` on a free port of
# 127.0.0.1, and sends the file over one TCP connection at RATE lines per second (open loop, in
# slices every SLICE_MS milliseconds, 1 by default). RATE 0 sends as fast as the socket
# accepts, so TCP backpressure paces the client at the engine's speed. A subscriber on
# veer's --alerts-listen port stamps each alert as it arrives. After the last line the client
# closes, and once veer's /metrics counts every line read, veer gets SIGTERM: it processes
# what it has read, prints its summary and exits. The script prints the rate the client
# achieved and the sustained rate from the first byte sent to veer's exit. It prints two
# latencies: the summary's percentiles (the engine's own histogram, from the socket read to
# the sinks), and the client's, from the scheduled send of the triggering line to the
# alert's arrival at the subscriber (see benches/socket_client.py). It then checks that the
# alert file contains the same lines as `veer run` on the same file, and exits 1 when it
# does not.
#
# Usage: bash benches/socket.sh [RATE] [USERS] [WORK_DIR]   (default 0, 2000)
# Environment: SLICE_MS (default 1; with 10 ms slices, events near a slice's end wait for the
# next slice, because event time moves only when later lines arrive); VEER, a veer binary to
# run instead of building one;
# SERVE_ARGS, more options of `veer serve` (for example `--workers 2`); NODELAY=1, to send
# with TCP_NODELAY (by default Nagle's algorithm stays on, as in a plain socket).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-0}
users=${2:-2000}
work=${3:-$(mktemp -d)}
mkdir -p "$work"
source benches/common.sh
events="$work/events-$users.csv"
[ -f "$events" ] || "$veer" generate --users "$users" --format taobao --out "$events" \
  --truth "$work/truth-$users.jsonl" 2>/dev/null
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
http_port=$(free_port)
alerts_port=$(free_port)

# One client: no startup hold, so the first 30 s of alerts do not wait for other clients.
"$veer" serve --listen "127.0.0.1:$port" --http "127.0.0.1:$http_port" --startup-hold 0s \
  --alerts "$work/alerts.jsonl" --alerts-listen "127.0.0.1:$alerts_port" ${SERVE_ARGS:-} \
  >"$work/serve.log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT

subscriber_ready="$work/subscriber.ready"
rm -f "$subscriber_ready"
python3 benches/socket_client.py subscribe "$alerts_port" "$work/received.txt" \
  "$subscriber_ready" &
subscriber_pid=$!
trap 'kill "$serve_pid" "$subscriber_pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  [ -f "$subscriber_ready" ] && break
  sleep 0.05
done
python3 benches/socket_client.py send "$events" "$rate" "$port" "${SLICE_MS:-1}" \
  "$work/sent.txt" >"$work/client.out"
lines=$(wc -l <"$events")
# SIGTERM stops reading at once, so wait until veer has read every line the client sent.
for _ in $(seq 600); do
  read_so_far=$(python3 - "$http_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(sum(int(float(line.split()[-1])) for line in text.splitlines()
          if line.startswith("veer_source_lines_total")))
PY
  )
  [ "$read_so_far" -ge "$lines" ] && break
  sleep 0.1
done
kill -TERM "$serve_pid"
wait "$serve_pid" || true
end=$(date +%s.%N)
trap - EXIT
# veer closes the subscriber's connection when it exits.
wait "$subscriber_pid" || true

start=$(awk '$1 == "start" {print $2}' "$work/client.out")
grep -E "^client" "$work/client.out"
awk -v lines="$lines" -v start="$start" -v end="$end" \
  'BEGIN {printf "sustained %d lines in %.2f s, first byte to exit: %.0f lines/s\n", lines, end - start, lines / (end - start)}'
grep -E "^(lines read|  events|  bad|alerts|latency)" "$work/serve.log"
python3 benches/socket_client.py latency "$events" "$work/sent.txt" "$work/received.txt"

# The socket run must alert exactly as a run on the file does.
"$veer" run --input "$events" --format taobao --alerts "$work/file-alerts.jsonl" --no-progress \
  >/dev/null 2>&1
if cmp -s <(sort "$work/alerts.jsonl") <(sort "$work/file-alerts.jsonl"); then
  echo "alerts: the same $(wc -l <"$work/alerts.jsonl") lines as veer run on the file"
else
  echo "alerts differ from veer run on the file: $(wc -l <"$work/alerts.jsonl") lines here," \
    "$(wc -l <"$work/file-alerts.jsonl") there (compare $work/alerts.jsonl and" \
    "$work/file-alerts.jsonl)"
  exit 1
fi
