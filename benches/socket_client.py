"""Client side of benches/socket.sh: send a stream, receive alerts, compute their latency.

Usage:
  python3 socket_client.py send EVENTS RATE PORT SLICE_MS SENT_OUT
  python3 socket_client.py subscribe PORT RECEIVED_OUT READY_FILE
  python3 socket_client.py latency EVENTS SENT_OUT RECEIVED_OUT

`send` writes EVENTS (Taobao CSV) to 127.0.0.1:PORT over one TCP connection at RATE lines per
second, open loop, in slices every SLICE_MS milliseconds. RATE 0 sends slices of 65,536 lines
as fast as the socket accepts them. SENT_OUT gets one line per slice: the index of its first
line and its scheduled send time (time.monotonic). A paced slice's time is its place in the
schedule, not the moment it was written, so a client held back by TCP backpressure still
counts the wait in the latency instead of hiding it (no coordinated omission).

`subscribe` connects to veer's --alerts-listen port, creates READY_FILE, and writes each alert
line it receives to RECEIVED_OUT, prefixed by its receive time (time.monotonic).

`latency` matches each received alert to its triggering line by user and event time. When
a user has several lines in that second it takes the earliest, so the figure is an upper
bound. It prints the percentiles of receive time minus that line's scheduled send time.
time.monotonic reads CLOCK_MONOTONIC, which all processes of one Linux machine share.
It also prints the percentiles of the event-time hold: the time from the triggering line's
scheduled send to that of the first line whose event time moves the frontier (the newest
event time less OUT_OF_ORDERNESS_S, 600 by default as in veer.toml) past the alert's second.
No engine can release the alert before that line arrives, so the hold is the part of the
latency set by the stream's pace rather than by veer.

With NODELAY=1 in the environment, `send` sets TCP_NODELAY on its socket. By default it
leaves Nagle's algorithm on, the default of Linux TCP sockets.
"""

import bisect
import json
import os
import socket
import sys
import time


def connect(port, role):
    """Connects to 127.0.0.1:PORT, retrying for up to 10 s while veer starts."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                sys.exit(f"veer serve did not accept {role} on 127.0.0.1:{port} within 10 s")
            time.sleep(0.05)


def send(events, rate, port, slice_ms, sent_out):
    data = open(events, "rb").read()
    lines = data.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    view = memoryview(data)
    connection = connect(port, "an event connection")
    if os.environ.get("NODELAY") == "1":
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    interval = slice_ms / 1000
    per_slice = max(1, int(rate * interval)) if rate > 0 else 65536
    schedule = []
    print(f"start {time.time():.6f}", flush=True)
    start = time.monotonic()
    for tick, first in enumerate(range(0, len(lines), per_slice)):
        last = min(first + per_slice, len(lines))
        if rate > 0:
            planned = start + tick * interval
            delay = planned - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:
            planned = time.monotonic()
        schedule.append((first, planned))
        connection.sendall(view[offsets[first]:offsets[last]])
    elapsed = time.monotonic() - start
    connection.close()
    with open(sent_out, "w") as out:
        for first, planned in schedule:
            out.write(f"{first} {planned:.6f}\n")
    print(f"client sent {len(lines)} lines in {elapsed:.2f} s: {len(lines) / elapsed:.0f} lines/s")


def subscribe(port, received_out, ready_file):
    connection = connect(port, "a subscriber")
    open(ready_file, "w").close()
    pending = b""
    with open(received_out, "w") as out:
        while True:
            chunk = connection.recv(65536)
            now = time.monotonic()
            if not chunk:
                break
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                out.write(f"{now:.6f} {line.decode()}\n")
            out.flush()


def latency(events, sent_out, received_out):
    out_of_orderness_s = int(os.environ.get("OUT_OF_ORDERNESS_S", "600"))
    first_line = {}
    # Newest event time (seconds) up to each data line, and that line's index in the file.
    newest, newest_line = [], []
    with open(events, "rb") as rows:
        for index, row in enumerate(rows):
            fields = row.rstrip(b"\r\n").split(b",")
            if len(fields) < 5 or not fields[4].isdigit():
                continue
            ts = int(fields[4])
            first_line.setdefault((int(fields[0]), ts), index)
            newest.append(max(ts, newest[-1]) if newest else ts)
            newest_line.append(index)
    firsts, times = [], []
    for row in open(sent_out):
        first, planned = row.split()
        firsts.append(int(first))
        times.append(float(planned))
    def sent_at(index):
        return times[bisect.bisect_right(firsts, index) - 1]

    latencies, hold_times, unmatched = [], [], 0
    for row in open(received_out):
        received, line = row.split(" ", 1)
        alert = json.loads(line)
        index = first_line.get((int(alert["user"]), int(alert["ts"])))
        if index is None:
            unmatched += 1
            continue
        latencies.append((float(received) - sent_at(index)) * 1000)
        # The sink releases second S once the frontier reaches (S + 1) * 1000 ms.
        passing = bisect.bisect_left(newest, int(alert["ts"]) + 1 + out_of_orderness_s)
        if passing < len(newest):
            hold_times.append((sent_at(newest_line[passing]) - sent_at(index)) * 1000)
    if not latencies:
        print(f"client latency: no alert received ({unmatched} unmatched)")
        return
    print(
        f"client latency over {len(latencies)} alerts ({unmatched} unmatched): "
        f"{percentiles(latencies)}"
    )
    if hold_times:
        print(
            f"event-time hold over {len(hold_times)} alerts (send of the triggering line to "
            f"send of the line that moves the frontier past it): {percentiles(hold_times)}"
        )


def percentiles(values):
    """Formats the p50, p99, p999 and maximum of VALUES (milliseconds)."""
    values = sorted(values)

    def quantile(q):
        return values[min(len(values) - 1, int(q * len(values)))]

    return (
        f"p50 {quantile(0.5):.1f} ms, p99 {quantile(0.99):.1f} ms, "
        f"p999 {quantile(0.999):.1f} ms, max {values[-1]:.1f} ms"
    )


def main():
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "send":
        events, rate, port, slice_ms, sent_out = arguments
        send(events, float(rate), int(port), float(slice_ms), sent_out)
    elif command == "subscribe":
        port, received_out, ready_file = arguments
        subscribe(int(port), received_out, ready_file)
    elif command == "latency":
        latency(*arguments)
    else:
        sys.exit(f"unknown command {command!r}: expected send, subscribe or latency")


if __name__ == "__main__":
    main()
