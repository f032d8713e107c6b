#!/usr/bin/env bash
# Ingest and delivery throughput of the nats backend beside the embedded one, in one run.
# For each backend: wrk posts single JSON events (then NDJSON batches of 100) for SECS seconds
# while delivery is held to a trickle, so the figure is durable accept alone; then a gateway with
# delivery unleashed drains the stored backlog to a file sink, timed until the backlog is empty.
# Needs wrk and nats-server (apt-get install wrk nats-server).
# Usage: benches/nats/run.sh [seconds] [connections]   (ONLY=nats-r1 runs one backend)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-32}
for tool in wrk nats-server; do
  command -v "$tool" >/dev/null || { echo "$tool is required: apt-get install $tool" >&2; exit 1; }
done
cargo build --release -q -p floodway-gateway
bin=target/release/floodway
. benches/lib.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats-server -js -a 127.0.0.1 -p "$port" -sd "$tmp/nats" > "$tmp/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "Server is ready" "$tmp/nats.log" && break; sleep 0.1; done

stop_last() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }
rps() { wrk -t2 -c"$conns" -d"${secs}s" -s "benches/ingest/$2" "$1" | awk '/Requests\/sec/ {print $2}'; }
backlog() { curl -s "$1/v1/topics/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backlog_events"])'; }

config() { # storage-section trickle(yes|no)
  # The sink unsynced: the figures are the backends', not the disk's.
  printf '%s\n[topics.bench]\nsink = { type = "file", path = "%s/out.jsonl", sync = false }\n' "$1" "$tmp"
  printf 'max_backlog_events = 100000000\nmax_backlog_bytes = "8GiB"\n'
  if [ "$2" = yes ]; then printf 'rate_limit = { per_second = 1 }\n'; fi
}

run() { # label storage-section
  local label=$1 storage=$2 dir="$tmp/data-$1"
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$label" ]; then return; fi
  config "$storage" yes > "$tmp/$label-ingest.toml"
  config "$storage" no > "$tmp/$label-drain.toml"
  start "$label-ingest" serve --config "$tmp/$label-ingest.toml" --listen 127.0.0.1:0 --data-dir "$dir"
  local gw single batch stored
  gw=$(url "$label-ingest")
  single=$(rps "$gw/v1/topics/bench/events" post-event.lua)
  batch=$(rps "$gw/v1/topics/bench/events" post-batch.lua)
  sleep 1
  stored=$(backlog "$gw")
  stop_last
  start "$label-drain" serve --config "$tmp/$label-drain.toml" --listen 127.0.0.1:0 --data-dir "$dir"
  gw=$(url "$label-drain")
  local t0 t1
  t0=$(date +%s.%N)
  until [ "$(backlog "$gw")" = 0 ]; do sleep 0.2; done
  t1=$(date +%s.%N)
  stop_last
  awk -v l="$label" -v s="$single" -v b="$batch" -v n="$stored" -v t0="$t0" -v t1="$t1" 'BEGIN {
    printf "%-16s ingest %8.0f events/s single, %8.0f events/s in NDJSON batches of 100; drained %d events in %.1f s: %.0f events/s\n", l, s, b * 100, n, t1 - t0, n / (t1 - t0)
  }' | tee -a "$tmp/results"
}

run embedded-batch $'[storage]\nfsync = "batch"'
run embedded-never $'[storage]\nfsync = "never"'
run nats-r1 $'[storage]\nbackend = "nats"\n[storage.nats]\nurl = "nats://127.0.0.1:'"$port"$'"'
