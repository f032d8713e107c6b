#!/usr/bin/env bash
# Ingest throughput: the gateway (fsync = "batch", single events and NDJSON batches of 100) beside a
# bare axum handler that answers 202 without storing, over keep-alive connections, in one run.
# FSYNC=always|batch|never picks the sync policy (default batch).
# Needs wrk (apt-get install wrk). Usage: benches/ingest/run.sh [seconds] [connections]
# With connections "sweep", both servers run at 16, 32, 64, 128 and 256 connections, and the ratio
# is printed at each count and peak against peak (each server at its own best count).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p floodway-gateway
bin=target/release/floodway
. benches/lib.sh

bench() { # label url script
  local rps
  rps=$(wrk -t2 -c"$conns" -d"${secs}s" -s "benches/ingest/$3" "$2" | awk '/Requests\/sec/ {print $2}')
  echo "$1 $rps"
}

# The disk's sync latency, printed beside the figures: every `202` waits for a sync, so a slower
# disk lowers the gateway's figure (most at low connection counts) and not the bare handler's.
dd if=/dev/zero of="$tmp/probe" bs=4k count=500 2>/dev/null
sync
# A probe that fails (a dd without oflag=dsync) says so and does not stop the benchmark.
{ LC_ALL=C dd if=/dev/zero of="$tmp/probe" bs=4k count=500 oflag=dsync conv=notrunc 2>&1 ||
  echo "disk: the sync latency probe failed"; } |
  awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1)
    printf "disk: one synced 4 KiB write takes %.0f us (dd oflag=dsync, 500 writes)\n", s * 2000 }
    /probe failed/ { print }'
rm -f "$tmp/probe"

cat > "$tmp/gw.toml" <<TOML
[storage]
fsync = "${FSYNC:-batch}"
[topics.bench]
sink = { type = "file", path = "$tmp/out.jsonl" }
max_backlog_events = 100000000
max_backlog_bytes = "64GiB"
# Delivery held to a trickle, so the figure is ingest alone (durable accept), not ingest plus
# delivery competing for the same two cores.
rate_limit = { per_second = 1 }
TOML
# Each run starts from a written-back disk (`sync`): without it, a run pays for the writeback of
# the one before it, which was seen to cost the second of two back-to-back gateway runs 10-20%.
if [ "$conns" = sweep ]; then
  best_b=0; best_g=0
  for c in 16 32 64 128 256; do
    conns=$c
    start bare bare
    b=$(bench bare "$(url bare)/v1/topics/bench/events" post-event.lua)
    kill "${pids[-1]}"
    sync
    rm -rf "$tmp/data"
    start gw serve --config "$tmp/gw.toml" --listen 127.0.0.1:0 --data-dir "$tmp/data"
    g=$(bench gateway "$(url gw)/v1/topics/bench/events" post-event.lua)
    kill "${pids[-1]}"
    wait "${pids[-1]}" 2>/dev/null || true
    sync
    awk -v c="$c" -v b="${b#* }" -v g="${g#* }" 'BEGIN {
      printf "%4d connections: gateway %.0f, bare %.0f req/s, %.2fx\n", c, g, b, g / b }'
    best_b=$(awk -v a="$best_b" -v b="${b#* }" 'BEGIN { print (b > a) ? b : a }')
    best_g=$(awk -v a="$best_g" -v b="${g#* }" 'BEGIN { print (b > a) ? b : a }')
  done
  awk -v b="$best_b" -v g="$best_g" 'BEGIN {
    printf "peak against peak: %.2fx (gateway %.0f, bare %.0f req/s)\n", g / b, g, b }'
  exit 0
fi
start bare bare
b=$(bench bare "$(url bare)/v1/topics/bench/events" post-event.lua)
kill "${pids[0]}"
sync
start gw serve --config "$tmp/gw.toml" --listen 127.0.0.1:0 --data-dir "$tmp/data"
gw=$(url gw)
g=$(bench gateway "$gw/v1/topics/bench/events" post-event.lua)
sync
n=$(bench gateway-ndjson100 "$gw/v1/topics/bench/events" post-batch.lua)
echo "$b"; echo "$g"; echo "$n"
awk -v b="${b#* }" -v g="${g#* }" -v n="${n#* }" 'BEGIN {
  printf "single-event ingest: %.2fx the bare handler (%s vs %s req/s)\n", g / b, g, b
  printf "NDJSON batches of 100: %.0f events/s (%.2fx the bare handler'"'"'s requests/s)\n", n * 100, n * 100 / b
}'
