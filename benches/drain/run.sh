#!/usr/bin/env bash
# Delivery drain rate to the file sink, synced (the default) and not: a backlog is filled with
# delivery held to a trickle, then the gateway is started again with delivery free and timed until
# the backlog is empty. Needs wrk (apt-get install wrk). Usage: benches/drain/run.sh [fill-seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-4}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p floodway-gateway
bin=target/release/floodway
. benches/lib.sh

backlog() { curl -s "$1/v1/topics/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backlog_events"])'; }

for sync in true false; do
  dir="$tmp/data-$sync"
  config() { # extra topic keys
    printf '[topics.bench]\nsink = { type = "file", path = "%s/out-%s.jsonl", sync = %s }\n' "$tmp" "$sync" "$sync"
    printf 'max_backlog_events = 100000000\nmax_backlog_bytes = "64GiB"\n%s\n' "$1"
  }
  config 'rate_limit = { per_second = 1 }' > "$tmp/fill.toml"
  config '' > "$tmp/drain.toml"
  start fill serve --config "$tmp/fill.toml" --listen 127.0.0.1:0 --data-dir "$dir"
  wrk -t2 -c32 -d"${secs}s" -s benches/ingest/post-event.lua "$(url fill)/v1/topics/bench/events" > /dev/null
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  sync
  t0=$(date +%s.%N)
  start drain serve --config "$tmp/drain.toml" --listen 127.0.0.1:0 --data-dir "$dir"
  gw=$(url drain)
  n=$(backlog "$gw")
  while [ "$(backlog "$gw")" != 0 ]; do sleep 0.1; done
  t1=$(date +%s.%N)
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  awk -v n="$n" -v a="$t0" -v b="$t1" -v s="$sync" \
    'BEGIN { printf "file sink, sync = %s: %d events drained in %.1f s (start included): %.0f events/s\n", s, n, b - a, n / (b - a) }'
done
