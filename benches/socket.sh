#!/usr/bin/env bash
# Sustained throughput and event-to-alert latency of `veer serve` over a loopback socket.
#
# Generates the Taobao-CSV stream of USERS users, starts `veer serve` on a free port of
# 127.0.0.1, and sends the file over one TCP connection at RATE lines per second (open loop, in
# slices every 10 ms). RATE 0 sends as fast as the socket accepts, so TCP backpressure paces the
# client at the engine's speed. After the last line the client closes, and once veer's /metrics
# counts every line read, veer gets SIGTERM: it processes what it has read, prints its summary
# and exits. The script prints the rate the
# client achieved, the sustained rate from the first byte sent to veer's exit, and the
# summary's latency percentiles (the engine's own histogram).
#
# Usage: bash benches/socket.sh [RATE] [USERS] [WORK_DIR]   (default 0, 2000)
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

# One client: no startup hold, so the first 30 s of alerts do not wait for other clients.
"$veer" serve --listen "127.0.0.1:$port" --http "127.0.0.1:$http_port" --startup-hold 0s \
  --alerts "$work/alerts.jsonl" >"$work/serve.log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT

# Sends the file to the port, retrying the connection for up to 10 s while veer starts, and
# prints the start time (Unix seconds) and the achieved rate.
python3 - "$events" "$rate" "$port" <<'PY' >"$work/client.out"
import socket, sys, time
path, rate, port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
lines = open(path, "rb").read().splitlines(keepends=True)
deadline = time.monotonic() + 10
while True:
    try:
        connection = socket.create_connection(("127.0.0.1", port))
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            sys.exit(f"veer serve did not accept a connection on 127.0.0.1:{port} within 10 s")
        time.sleep(0.05)
per_tick = max(1, int(rate / 100)) if rate > 0 else 65536
print(f"start {time.time():.6f}")
start = time.monotonic()
for tick, first in enumerate(range(0, len(lines), per_tick)):
    if rate > 0:
        delay = start + tick / 100 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    connection.sendall(b"".join(lines[first:first + per_tick]))
elapsed = time.monotonic() - start
connection.close()
print(f"client sent {len(lines)} lines in {elapsed:.2f} s: {len(lines) / elapsed:.0f} lines/s")
PY
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

start=$(awk '$1 == "start" {print $2}' "$work/client.out")
grep -E "^client" "$work/client.out"
awk -v lines="$lines" -v start="$start" -v end="$end" \
  'BEGIN {printf "sustained %d lines in %.2f s, first byte to exit: %.0f lines/s\n", lines, end - start, lines / (end - start)}'
grep -E "^(lines read|  events|  bad|alerts|latency)" "$work/serve.log"
