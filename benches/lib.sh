# Shared by the benchmark scripts: a temp dir, processes stopped on exit, and starting the
# floodway binary ($bin) with its address read from its first line of output.
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

start() { # name args... ; starts "$bin" args in this shell and waits for its address line
  local name=$1; shift
  "$bin" "$@" > "$tmp/$name.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$tmp/$name.out" ] && break; sleep 0.1; done
}
url() { head -1 "$tmp/$1.out" | awk '{print $NF}'; }
