#!/usr/bin/env bash
# Profiles Switchyard under one load-tool scenario with `perf record -e
# cpu-clock` (software sampling: this machine has no hardware counters) and
# prints the hottest functions by self time, user and kernel.
#
# valgrind --tool=callgrind cannot run the server: wasmtime's pooling
# allocator reserves terabytes of address space at start, which valgrind
# refuses (mmap EINVAL), and the plugin runtime is created even without
# plugins.
#
# Usage: bench/profile.sh echo|echo-raw|fanout|idle [--plugins] [--out DIR]
# Needs: perf (linux-perf); target/release/{switchyard,switchyard-bench}.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCENARIO=${1:?usage: bench/profile.sh echo|echo-raw|fanout|idle [--plugins] [--out DIR]}
shift
PLUGINS=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --plugins) PLUGINS=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$ROOT/target/bench/profile-$SCENARIO-$(date -u +%H%M%S)}
mkdir -p "$OUT/plugins" "$OUT/bin"
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
[[ -x target/release/switchyard && -x target/release/switchyard-bench ]] \
  || cargo build --release -p switchyard -p switchyard-bench >&2
cp target/release/switchyard target/release/switchyard-bench "$OUT/bin/"
PORT=19790
SECRET=profile-secret
cat >"$OUT/switchyard.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
node_id = "profile"
[limits]
send_queue_messages = 8192
publish_rate = 4000000
publish_burst = 4000000
handshake_timeout = "60s"
[diagnostics]
echo = true
[log]
level = "warn"
[plugins]
dir = "$OUT/plugins"
watch = false
[tenants.default]
origins = ["*"]
EOF
JWT=()
if [[ $PLUGINS == 1 ]]; then
  for p in jwt-auth token-bucket namespace-router; do cp "target/plugins/$p.wasm" "$OUT/plugins/"; done
  cat >>"$OUT/switchyard.toml" <<EOF
[tenants.default.policies.auth]
plugin = "jwt-auth"
config = { hs256_secret = "$SECRET" }
[tenants.default.policies.rate_limit]
plugin = "token-bucket"
config = { rate = 4000000, burst = 4000000, key = "client" }
[tenants.default.policies.router]
plugin = "namespace-router"
config = { rules = [{ match = "*", to = ["\$channel"] }] }
EOF
  JWT=(--jwt-secret "$SECRET")
fi

taskset -c 0 "$OUT/bin/switchyard" serve --config "$OUT/switchyard.toml" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -INT $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  sleep 0.2
done
# Sample the server for the measured part of the run (after connecting and warm-up).
(sleep "${PERF_DELAY:-4}"; perf record -e cpu-clock -F 1999 --call-graph dwarf,8192 -p "$PID" \
  -o "$OUT/perf.data" -- sleep "${PERF_SECONDS:-6}" >"$OUT/perf-record.log" 2>&1) &
PERF=$!
LOAD=(taskset -c 1 "$OUT/bin/switchyard-bench" --server switchyard-perf --warmup 1s -d 10s)
case $SCENARIO in
  echo) "${LOAD[@]}" "${JWT[@]}" echo --url "ws://127.0.0.1:$PORT/ws" --proto switchyard -c 100 -s 64 ;;
  echo-raw) "${LOAD[@]}" echo --url "ws://127.0.0.1:$PORT/echo" --proto plain -c 100 -s 64 ;;
  fanout) "${LOAD[@]}" "${JWT[@]}" fanout --pub-url "ws://127.0.0.1:$PORT/ws" --proto switchyard -n 1000 -s 100 ;;
  idle) "${LOAD[@]}" "${JWT[@]}" idle --url "ws://127.0.0.1:$PORT/ws" --proto switchyard -c 10000 --server-pid "$PID" ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac | tee "$OUT/load.txt"
wait $PERF || true
kill -INT $PID
wait $PID 2>/dev/null || true
trap - EXIT
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -60 >"$OUT/self.txt"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -80 >"$OUT/inclusive.txt"
echo "== self time (dso, symbol)"; head -40 "$OUT/self.txt"
echo "profile: $OUT/perf.data (perf report -i ...)"
