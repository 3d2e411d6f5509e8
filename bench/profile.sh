#!/usr/bin/env bash
# Profiles Switchyard under one load-tool scenario with valgrind's callgrind
# (instruction counts: repeatable whatever else the machine does) and prints
# the hottest functions, inclusive and exclusive.
#
# Usage: bench/profile.sh echo|echo-raw|fanout|idle [--plugins] [--out DIR]
# Needs: valgrind; target/release/{switchyard,switchyard-bench} (built here).
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
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
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

taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
  "$OUT/bin/switchyard" serve --config "$OUT/switchyard.toml" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -INT $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  sleep 0.2
done
LOAD=(taskset -c 1 "$OUT/bin/switchyard-bench" --server switchyard-callgrind --warmup 2s -d 20s --connect-concurrency 8)
case $SCENARIO in
  echo) "${LOAD[@]}" "${JWT[@]}" echo --url "ws://127.0.0.1:$PORT/ws" --proto switchyard -c 100 -s 64 ;;
  echo-raw) "${LOAD[@]}" echo --url "ws://127.0.0.1:$PORT/echo" --proto plain -c 100 -s 64 ;;
  fanout) "${LOAD[@]}" "${JWT[@]}" fanout --pub-url "ws://127.0.0.1:$PORT/ws" --proto switchyard -n 1000 -s 100 ;;
  idle) "${LOAD[@]}" "${JWT[@]}" idle --url "ws://127.0.0.1:$PORT/ws" --proto switchyard -c 2000 --server-pid "$PID" ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac | tee "$OUT/load.txt"
kill -INT $PID
wait $PID 2>/dev/null || true
trap - EXIT
callgrind_annotate --inclusive=yes "$OUT/callgrind.out" 2>/dev/null | head -60 >"$OUT/inclusive.txt"
callgrind_annotate "$OUT/callgrind.out" 2>/dev/null | head -60 >"$OUT/exclusive.txt"
echo "== exclusive (self) cost" ; sed -n '1,45p' "$OUT/exclusive.txt"
echo "profile: $OUT/callgrind.out"
