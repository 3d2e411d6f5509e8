#!/usr/bin/env bash
# Document channel benchmark (DESIGN §2b, issue 9), Switchyard on loopback:
#   patch-lww      N editors patch ONE document (built-in LWW), W patches in flight each
#   patch-plugin   the same with the lww-merge plugin as the tenant's merge policy
#   publish        the same shape as JSON publishes to a normal channel (the ratio's base)
#   snapshot       a ~1 MB LWW document built over HTTP, subscribe -> SNAPSHOT latency
#   memory         D small documents opened over HTTP: server RSS per open document
# Every run starts a fresh gateway pinned to core 0 (taskset -c 0); the load
# tool runs on core 1. Each run is bounded (warm-up + --duration, <= 20 s).
# Results: JSON lines in OUT/results.jsonl, the table in OUT/table.md; a full
# run (not --quick) also copies them to bench/results/docs-latest.{jsonl,md,txt}.
#
# Usage: bench/docs.sh [--quick] [--duration 10s] [--repeat 1] [--editors 100]
#                      [--window 8] [--samples 50] [--documents 2000]
#                      [--cases patch-lww,patch-plugin,publish,snapshot,memory]
#                      [--out DIR] [--no-build] [--doc]
#   --quick  2 s runs, 20 editors, 10 samples, 300 documents; results stay in OUT
#   --doc    also write the table into docs/benchmarks.md between
#            <!-- bench:docs:start --> and <!-- bench:docs:end -->
set -euo pipefail

ARGS_TEXT="$*"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=10s
WARMUP=1s
REPEAT=1
EDITORS=100
WINDOW=8
SIZE=32
SAMPLES=50
DOCUMENTS=2000
SNAP_KEYS=1000
SNAP_VALUE=1000
QUICK=0
UPDATE_DOC=0
NO_BUILD=0
CASES="patch-lww,patch-plugin,publish,snapshot,memory"
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; DURATION=2s; WARMUP=500ms; EDITORS=20; SAMPLES=10; DOCUMENTS=300 ;;
    --duration) DURATION=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --editors) EDITORS=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    --samples) SAMPLES=$2; shift ;;
    --documents) DOCUMENTS=$2; shift ;;
    --cases) CASES=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    --doc) UPDATE_DOC=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# The measured window must keep a run under 20 s (connect + warm-up + window + drain).
case $DURATION in
  *ms) ;;
  *m) echo "--duration $DURATION: each run must stay <= 20 s; use at most 15s" >&2; exit 2 ;;
  *) secs=${DURATION%s}; secs=${secs%.*}
     if [[ ! $secs =~ ^[0-9]+$ ]] || (( secs > 15 )); then
       echo "--duration $DURATION: each run must stay <= 20 s; use at most 15s" >&2; exit 2
     fi ;;
esac

OUT=${OUT:-$ROOT/target/bench/docs-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/logs" "$OUT/plugins" "$OUT/no-plugins"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
LOGS=$OUT/logs
SERVER_CPU=0
CLIENT_CPU=1
if [[ $(nproc) -lt 2 ]]; then CLIENT_CPU=0; fi
API_KEY=docs-bench-key
CASE_PATCH="docs-patch-${EDITORS}e-w${WINDOW}"

say() { printf '\n== %s\n' "$*" >&2; }
has_case() { [[ ",$CASES," == *",$1,"* ]]; }

# ---------------------------------------------------------------- setup
say "setup"
need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi
if [[ $NO_BUILD == 0 ]]; then cargo build --release -p switchyard -p switchyard-bench >&2; fi
# Snapshot the binaries: the shared target dir may be rebuilt during the run.
mkdir -p "$OUT/bin"
for b in switchyard switchyard-bench; do
  [[ -x target/release/$b ]] || { echo "missing target/release/$b (build without --no-build)" >&2; exit 1; }
  cp "target/release/$b" "$OUT/bin/"
done
BIN=$OUT/bin
LWW_WASM=$ROOT/target/plugins/lww-merge.wasm
if has_case patch-plugin && [[ ! -f $LWW_WASM ]] && [[ -x scripts/build-plugins.sh ]]; then
  SWITCHYARD_SKIP_PYTHON=1 scripts/build-plugins.sh >&2 || echo "plugin build failed; the lww-merge row will be n/a" >&2
fi
WITH_PLUGIN=0
if [[ -f $LWW_WASM ]]; then cp "$LWW_WASM" "$OUT/plugins/"; WITH_PLUGIN=1; fi

# ---------------------------------------------------------------- gateway
PID=""
stop_server() {
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=""
}
trap stop_server EXIT

config() { # file port plugin(0|1)
  local file=$1 port=$2 plugin=$3
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:$port"
node_id = "docs-bench"
drain_timeout = "1s"

[limits]
send_queue_messages = 8192
publish_rate = 4000000
publish_burst = 4000000
max_subscriptions = 100000
document_max_bytes = 2000000
documents_max_open = 100000
document_idle_timeout = "10m"

[log]
level = "warn"

[broker]
kind = "memory"

[plugins]
dir = "$OUT/$([[ $plugin == 1 ]] && echo plugins || echo no-plugins)"
cache_dir = "$OUT/plugin-cache"
watch = false

[tenants.default]
origins = ["*"]
api_keys = ["$API_KEY"]
documents = ["doc:*"]
EOF
  if [[ $plugin == 1 ]]; then
    cat >>"$file" <<EOF

[tenants.default.policies.merge]
plugin = "lww-merge"
EOF
  fi
}

SEQ=0
up() { # plugin(0|1): starts a fresh gateway on core 0; sets PID, URL
  SEQ=$((SEQ + 1))
  local port=$((19600 + SEQ % 300)) i
  config "$OUT/gateway.$SEQ.toml" "$port" "$1"
  taskset -c "$SERVER_CPU" "$BIN/switchyard" serve --config "$OUT/gateway.$SEQ.toml" \
    >"$LOGS/gateway.$SEQ.log" 2>&1 &
  PID=$!
  URL="ws://127.0.0.1:$port/ws"
  HTTP_BASE="http://127.0.0.1:$port"
  for i in $(seq 1 600); do
    curl -fsS -o /dev/null "$HTTP_BASE/healthz" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "gateway on port $port did not come up, see $LOGS/gateway.$SEQ.log" >&2
  stop_server
  return 1
}

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# client ARGS... : the load tool on the client core, with a hard stop; the
# gateway's CPU is the run's own, the rest is "other CPU" (⚠ = noisy).
client() {
  timeout --signal=INT --kill-after=5 45 \
    taskset -c "$CLIENT_CPU" "$BIN/switchyard-bench" --warmup "$WARMUP" --json "$RESULTS" --watch-pid "$PID" "$@" \
    2>>"$LOGS/client.log" | tee -a "$OUT/table.txt"
}

not_available() { # scenario case server reason
  printf '{"scenario":"%s","case":"%s","server":"%s","note":"n/a: %s"}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
  echo "$1 $2 $3: n/a ($4)" | tee -a "$OUT/table.txt"
}

# run SCENARIO CASE SERVER PLUGIN ARGS... ({URL} and {PID} are substituted)
run() {
  local scenario=$1 case=$2 server=$3 plugin=$4; shift 4
  if [[ $plugin == 1 && $WITH_PLUGIN == 0 ]]; then
    not_available "$scenario" "$case" "$server" "target/plugins/lww-merge.wasm missing (scripts/build-plugins.sh)"
    return 0
  fi
  wait_quiet || true
  if ! up "$plugin"; then not_available "$scenario" "$case" "$server" "gateway did not start"; return 0; fi
  local args=() a
  for a in "$@"; do a=${a//\{URL\}/$URL}; a=${a//\{PID\}/$PID}; args+=("$a"); done
  echo "-- $scenario $server (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  client "$scenario" --server "$server" --case "$case" "${args[@]}" \
    || not_available "$scenario" "$case" "$server" "client failed, see logs/client.log"
  if [[ $plugin == 1 ]]; then
    # The row must have gone through the plugin, not a fallback.
    local calls
    calls=$(curl -fsS "$HTTP_BASE/metrics" 2>/dev/null \
      | awk '/^switchyard_plugin_calls_total\{.*plugin="lww-merge".*role="merge".*outcome="ok"/ {n += $NF} END {print n + 0}')
    echo "   lww-merge merge calls (ok): $calls" >&2
    [[ $calls -gt 0 ]] || echo "WARNING: no lww-merge calls counted; was the plugin used?" | tee -a "$OUT/table.txt" >&2
  fi
  stop_server
}

PATCH_ARGS=(--url "{URL}" -n "$EDITORS" -w "$WINDOW" -s "$SIZE" -d "$DURATION"
  --ref-server switchyard-publish
  --target "patch throughput vs plain publish, same editors and window")

# ---------------------------------------------------------------- cases
# After the build: its load is not the benchmark's.
echo "load before: $(uptime)" | tee "$OUT/load.txt" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$REPEAT"); do
  say "patch throughput, round $round/$REPEAT ($EDITORS editors, window $WINDOW)"
  if has_case patch-lww; then run docs-patch "$CASE_PATCH" switchyard-lww 0 "${PATCH_ARGS[@]}"; fi
  if has_case patch-plugin; then run docs-patch "$CASE_PATCH" switchyard-lww-merge 1 "${PATCH_ARGS[@]}"; fi
  if has_case publish; then run docs-patch "$CASE_PATCH" switchyard-publish 0 "${PATCH_ARGS[@]}" --plain; fi
done
for round in $(seq 1 "$REPEAT"); do
  if has_case snapshot; then
    say "snapshot latency, round $round/$REPEAT"
    run docs-snapshot "docs-snapshot-1MB" switchyard-lww 0 --url "{URL}" --api-key "$API_KEY" \
      --keys "$SNAP_KEYS" --value-size "$SNAP_VALUE" -k "$SAMPLES" -d "$DURATION" \
      --target "subscribe -> SNAPSHOT of a ~1 MB LWW document, fresh connection each"
  fi
  if has_case memory; then
    say "memory per open document, round $round/$REPEAT"
    run docs-memory "docs-memory-${DOCUMENTS}d" switchyard-lww 0 --url "{URL}" --api-key "$API_KEY" \
      -D "$DOCUMENTS" --server-pid "{PID}" \
      --target "server RSS per open document (a few small keys)"
  fi
done

# ---------------------------------------------------------------- report
say "report"
echo "load after: $(uptime)" | tee -a "$OUT/load.txt" >&2
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
PREAMBLE="Run $(date -u +%Y-%m-%dT%H:%MZ) at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'): \
$(nproc) cores ($CPU), Linux $(uname -r); gateway pinned to core $SERVER_CPU, client to core $CLIENT_CPU; \
$DURATION measured after $WARMUP warm-up per run, $REPEAT round(s), median shown; \
$EDITORS editors, window $WINDOW, $SAMPLES snapshot samples, $DOCUMENTS documents; \
load average at start $LOAD_START, at the end $LOAD. \
Command: \`bench/docs.sh${ARGS_TEXT:+ $ARGS_TEXT}\`."
echo "$PREAMBLE" >"$OUT/preamble.txt"
report_args=("$RESULTS" --preamble "$PREAMBLE")
if [[ $UPDATE_DOC == 1 ]]; then report_args+=(--update docs/benchmarks.md --section docs); fi
"$BIN/switchyard-bench" report "${report_args[@]}" | tee "$OUT/table.md"
if [[ $QUICK == 0 ]]; then
  mkdir -p bench/results
  cp "$RESULTS" bench/results/docs-latest.jsonl
  cp "$OUT/table.md" bench/results/docs-latest.md
  cp "$OUT/preamble.txt" bench/results/docs-latest.txt
  echo "copied to bench/results/docs-latest.{jsonl,md,txt}" >&2
fi
echo "results: $RESULTS" >&2
