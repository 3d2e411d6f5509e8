#!/usr/bin/env bash
# Yjs benchmark (issue 10): one room, E editors (50), the same client against
# every server, either
#   rust (default) target/release/yjs-load (bench/src/bin/yjs_load.rs): 50 yrs
#                 documents speaking the y-websocket protocol on one thread, cheap
#                 enough that the server is the limit on a 2-core machine
#   node          bench/yjs/load.mjs: npm yjs + y-websocket WebsocketProvider (one
#                 Node event loop: it saturates its core before any server does)
# (same workload, same JSON line, same delivery and convergence checks) against
#   switchyard    target/release/switchyard, GET /yjs/default/{room}, document
#                 channel yjs:{room} merged by the yjs-merge plugin, memory broker
#   y-websocket   the reference server (npm @y/websocket-server, its bin unmodified)
#   hocuspocus    npm @hocuspocus/server, no extensions (bench/yjs/hocuspocus-server.mjs)
# cases:
#   closed   each editor keeps --window (1) insert(s) in flight until every other
#            editor has it: the saturation throughput of one room
#   rate     --rate (100) inserts/s over all editors (2 per editor per second):
#            latency below saturation
#   merge    yjs-merge's document.apply per small update at 1 KB, 10 KB, 100 KB
#            and 1 MB documents, through switchyard-policy (bench/yjs/merge-cost)
# Every run starts a fresh server pinned to core 0 (taskset -c 0); the client runs
# on core 1; loopback only; within a case the servers take turns (the order
# rotates every round). Each run is bounded (warm-up + --duration <= 15 s, hard
# stop at 45 s). Results: JSON lines in OUT/results.jsonl, the table in
# OUT/table.md; a full run (not --quick) also copies them to
# bench/results/yjs-latest.{jsonl,md,txt}.
#
# Usage: bench/yjs.sh [--quick] [--duration 10s] [--warmup 2s] [--repeat 1]
#                     [--editors 50] [--window 1] [--rate 100] [--client rust|node]
#                     [--full-editors K|all]
#                     [--cases closed,rate,merge] [--servers switchyard,y-websocket,hocuspocus]
#                     [--out DIR] [--no-build] [--doc] [--wait-quiet SECS]
#   --quick  3 s runs after 1 s warm-up, 1000 merge updates; results stay in OUT
#   --client rust (default) or node: the load client (see above)
#   --full-editors K|all  (rust client) only K editors are full yrs documents
#            integrating every update; the others are light: they make their
#            inserts with yrs as before (same updates for the server) and observe
#            the others' from the updates' struct headers instead of integrating
#            them (docs/benchmarks.md, "## Yjs"). Default: 2 in the closed loop
#            (else the client, not the server, is the limit), all at fixed rate;
#            given, it applies to both cases.
#   --wait-quiet SECS  after the build, wait (up to SECS) until both cores are
#            idle (< 5 % busy over 2 s, bench/lib.sh); none within SECS: exit 5, no run.
#            Before every run the script also waits up to RUN_QUIET_WAIT (30) s for
#            idle cores, and each row reports the CPU other processes used while it
#            measured ("other CPU", ⚠ above 10 %).
#   --doc    also write the table into docs/benchmarks.md between
#            <!-- bench:yjs:start --> and <!-- bench:yjs:end -->
set -euo pipefail

ARGS_TEXT="$*"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=10s
WARMUP=2s
REPEAT=1
EDITORS=50
WINDOW=1
RATE=100
MERGE_UPDATES=5000
MERGE_PASSES=3
QUICK=0
UPDATE_DOC=0
NO_BUILD=0
CASES="closed,rate,merge"
CLIENT=rust
FULL_EDITORS=""
WAIT_QUIET=0
RUN_QUIET_WAIT=${RUN_QUIET_WAIT:-30}
NOISY_WAITS=0
SERVERS="switchyard,y-websocket,hocuspocus"
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; DURATION=3s; WARMUP=1s; MERGE_UPDATES=1000; MERGE_PASSES=1 ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --editors) EDITORS=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --cases) CASES=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    --doc) UPDATE_DOC=1 ;;
    --client) CLIENT=$2; shift ;;
    --full-editors) FULL_EDITORS=$2; shift ;;
    --wait-quiet) WAIT_QUIET=$2; shift ;;
    -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
secs() { # 10s / 500ms -> seconds (decimal)
  case $1 in
    *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
case $CLIENT in rust|node) ;; *) echo "--client rust|node" >&2; exit 2 ;; esac
case $FULL_EDITORS in
  ""|all) ;;
  *[!0-9]*|0) echo "--full-editors K (>= 1) or all" >&2; exit 2 ;;
esac
if [[ $CLIENT == node && -n $FULL_EDITORS && $FULL_EDITORS != all ]]; then
  echo "--full-editors: the node client has full editors only" >&2; exit 2
fi
# Full editors per case (the rust client's --full-editors; node: all).
FULL_CLOSED=${FULL_EDITORS:-2}
FULL_RATE=${FULL_EDITORS:-all}
if [[ $CLIENT == node ]]; then FULL_CLOSED=all; FULL_RATE=all; fi
DUR_S=$(secs "$DURATION")
WARM_S=$(secs "$WARMUP")
if ! awk -v d="$DUR_S" -v w="$WARM_S" 'BEGIN { exit !(d > 0 && w >= 0 && d + w <= 15) }'; then
  echo "--warmup + --duration must stay <= 15 s (each run <= 20 s)" >&2; exit 2
fi

OUT=${OUT:-$ROOT/target/bench/yjs-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/logs" "$OUT/plugins" "$OUT/bin"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
LOGS=$OUT/logs
SERVER_CPU=0
CLIENT_CPU=1
if [[ $(nproc) -lt 2 ]]; then CLIENT_CPU=0; fi
JS=$ROOT/bench/yjs

say() { printf '\n== %s\n' "$*" >&2; }
has_case() { [[ ",$CASES," == *",$1,"* ]]; }
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"

# ---------------------------------------------------------------- setup
say "setup"
need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
command -v node >/dev/null || need_apt+=(nodejs npm)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi
if [[ ! -d $JS/node_modules ]] || [[ $JS/package-lock.json -nt $JS/node_modules ]]; then
  (cd "$JS" && npm ci --no-audit --no-fund >&2 && touch node_modules)
fi
YJS_WASM=$ROOT/target/plugins/yjs-merge.wasm
if [[ ! -f $YJS_WASM ]] && [[ $NO_BUILD == 0 ]] && [[ -x scripts/build-plugins.sh ]]; then
  SWITCHYARD_SKIP_PYTHON=1 scripts/build-plugins.sh >&2 || echo "plugin build failed; the switchyard rows will be n/a" >&2
fi
WITH_PLUGIN=0
if [[ -f $YJS_WASM ]]; then cp "$YJS_WASM" "$OUT/plugins/"; WITH_PLUGIN=1; fi
MERGE_DIR=$ROOT/bench/yjs/merge-cost
if [[ $NO_BUILD == 0 ]]; then
  cargo build --release -p switchyard >&2
  if [[ $CLIENT == rust ]]; then cargo build --release -p switchyard-bench --bin yjs-load >&2; fi
  if has_case merge; then
    # Its own workspace; the lock starts as the gateway's (same wasmtime, same host crates).
    [[ -f $MERGE_DIR/Cargo.lock ]] || cp "$ROOT/Cargo.lock" "$MERGE_DIR/Cargo.lock"
    (cd "$MERGE_DIR" && CARGO_TARGET_DIR=$ROOT/target cargo build --release >&2)
  fi
fi
# Snapshot the binaries: the shared target dir may be rebuilt during the run.
for b in switchyard yjs-merge-cost yjs-load; do
  if [[ -x target/release/$b ]]; then cp "target/release/$b" "$OUT/bin/"; fi
done
BIN=$OUT/bin
NODE_VERSION=$(node --version)
pkg_version() { node -p "require('$JS/node_modules/$1/package.json').version" 2>/dev/null || echo '?'; }
if [[ $CLIENT == rust ]]; then
  if [[ ! -x $OUT/bin/yjs-load ]]; then echo "target/release/yjs-load missing (run without --no-build)" >&2; exit 1; fi
  CLIENT_TEXT="client yjs-load (Rust, yrs $(grep -m1 -A1 '^name = "yrs"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p'), one thread)"
else
  CLIENT_TEXT="client load.mjs (Node)"
fi
VERSIONS="$CLIENT_TEXT; yjs $(pkg_version yjs), y-websocket $(pkg_version y-websocket), @y/websocket-server $(pkg_version @y/websocket-server), @hocuspocus/server $(pkg_version @hocuspocus/server), ws $(pkg_version ws), Node $NODE_VERSION"

# ---------------------------------------------------------------- servers
PID=""
stop_server() {
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=""
}
trap stop_server EXIT

switchyard_config() { # file port
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
node_id = "yjs-bench"
drain_timeout = "1s"

[limits]
send_queue_messages = 8192
publish_rate = 4000000
publish_burst = 4000000
max_subscriptions = 100000
document_max_bytes = 64000000
document_idle_timeout = "10m"

[log]
level = "warn"

[broker]
kind = "memory"

[plugins]
dir = "$OUT/plugins"
cache_dir = "$OUT/plugin-cache"
watch = false

[tenants.default]
origins = ["*"]
documents = ["yjs:*"]

[tenants.default.policies.merge]
plugin = "yjs-merge"
# The document lives in the instance's memory: at the default 64 MiB the
# snapshot of a ~8 MB document (reached within a 12 s closed-loop run) trapped
# (2026-12-02); the instance gets room for documents this large.
memory_limit = 536870912
EOF
}

wait_http() { # url
  local i
  for i in $(seq 1 600); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

SEQ=0
up() { # server: a fresh server on core 0; sets PID, URL, HTTP
  local server=$1 port log
  SEQ=$((SEQ + 1))
  port=$((19700 + SEQ % 200))
  log=$LOGS/$server.$SEQ.log
  HTTP=http://127.0.0.1:$port
  case $server in
    switchyard)
      switchyard_config "$OUT/gateway.$SEQ.toml" "$port"
      taskset -c "$SERVER_CPU" "$BIN/switchyard" serve --config "$OUT/gateway.$SEQ.toml" >"$log" 2>&1 &
      PID=$!
      URL=ws://127.0.0.1:$port/yjs/default
      wait_http "$HTTP/healthz" ;;
    y-websocket)
      HOST=127.0.0.1 PORT=$port taskset -c "$SERVER_CPU" \
        node "$JS/node_modules/@y/websocket-server/src/server.js" >"$log" 2>&1 &
      PID=$!
      URL=ws://127.0.0.1:$port
      wait_http "$HTTP/" ;;
    hocuspocus)
      HOST=127.0.0.1 PORT=$port taskset -c "$SERVER_CPU" node "$JS/hocuspocus-server.mjs" >"$log" 2>&1 &
      PID=$!
      URL=ws://127.0.0.1:$port
      wait_http "$HTTP/" ;;
    *) echo "unknown server $server" >&2; return 1 ;;
  esac || { echo "$server on port $port did not come up, see $log" >&2; stop_server; return 1; }
}

not_available() { # scenario case server reason
  printf '{"scenario":"%s","case":"%s","server":"%s","note":"n/a: %s"}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
  echo "$1 $2 $3: n/a ($4)" | tee -a "$OUT/table.txt" >&2
}

plugin_calls() { # outcome filter (ok | !ok) from the gateway's metrics
  curl -fsS "$HTTP/metrics" 2>/dev/null | awk -v want="$1" '
    /^switchyard_plugin_calls_total\{/ && /plugin="yjs-merge"/ && /role="merge"/ {
      ok = ($0 ~ /outcome="ok"/)
      if ((want == "ok" && ok) || (want == "!ok" && !ok)) n += $NF
    } END { print n + 0 }'
}

room_run() { # case server round CLIENT-ARGS...
  local case=$1 server=$2 round=$3; shift 3
  if [[ $server == switchyard && $WITH_PLUGIN == 0 ]]; then
    not_available yjs-room "$case" "$server" "target/plugins/yjs-merge.wasm missing (scripts/build-plugins.sh)"
    return 0
  fi
  # Bounded: a machine that stays busy still gets its run, marked by the "other CPU" column.
  if ! wait_quiet "$RUN_QUIET_WAIT"; then NOISY_WAITS=$((NOISY_WAITS + 1)); fi
  if ! up "$server"; then not_available yjs-room "$case" "$server" "server did not start"; return 0; fi
  echo "-- $case $server round $round (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local rc=0 lines
  lines=$(wc -l <"$RESULTS")
  local client=(node "$JS/load.mjs")
  if [[ $CLIENT == rust ]]; then client=("$BIN/yjs-load"); fi
  timeout --signal=INT --kill-after=5 45 \
    taskset -c "$CLIENT_CPU" "${client[@]}" --kind "$server" --url "$URL" \
      --room "bench-$case-$round" --server "$server" --case "$case" --server-pid "$PID" \
      -n "$EDITORS" --warmup "$WARMUP" --duration "$DURATION" --json "$RESULTS" "$@" \
      2>>"$LOGS/client.log" | tee -a "$OUT/table.txt" >&2 || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "   client exit $rc (3 = undelivered ops, closes or divergence; see the JSON line and logs/)" >&2
    [[ $(wc -l <"$RESULTS") -gt $lines ]] \
      || not_available yjs-room "$case" "$server" "client failed (exit $rc), see logs/client.log"
  fi
  if [[ $server == switchyard ]]; then
    local ok bad
    ok=$(plugin_calls ok); bad=$(plugin_calls '!ok')
    echo "   yjs-merge merge calls: ok $ok, other outcomes $bad" >&2
    printf '{"scenario":"yjs-plugin-calls","case":"%s","server":"switchyard","round":%s,"ok":%s,"not_ok":%s}\n' \
      "$case" "$round" "$ok" "$bad" >>"$RESULTS"
    [[ $ok -gt 0 ]] || echo "WARNING: no yjs-merge calls counted; was the plugin used?" | tee -a "$OUT/table.txt" >&2
    if grep -qiE 'warn|error' "$LOGS/switchyard.$SEQ.log"; then
      echo "   gateway log has warnings/errors: $LOGS/switchyard.$SEQ.log" >&2
      grep -iE 'warn|error' "$LOGS/switchyard.$SEQ.log" | head -5 >&2
    fi
  fi
  stop_server
}

# ---------------------------------------------------------------- quiet?
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
if [[ $WAIT_QUIET != 0 ]]; then
  say "waiting up to ${WAIT_QUIET}s for idle cores (< ${QUIET_PCT} % busy each over 2 s)"
  if ! wait_quiet "$WAIT_QUIET"; then
    echo "no quiet window within ${WAIT_QUIET}s: not running, nothing written" >&2; exit 5
  fi
  echo "   $(date -u +%H:%M:%S) quiet: $QUIET_LAST" >&2
fi
sample_cores
QUIET_BEFORE=$QUIET_LAST

# ---------------------------------------------------------------- cases
# After the build: its load is not the benchmark's.
echo "load before: $(uptime); cores busy over 2 s: $QUIET_BEFORE" | tee "$OUT/load.txt" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
N=${#SERVER_LIST[@]}
for round in $(seq 1 "$REPEAT"); do
  for kind in closed rate; do
    has_case "$kind" || continue
    if [[ $kind == closed ]]; then
      case_name="yjs-${EDITORS}e-w${WINDOW}"; args=(--mode closed --window "$WINDOW")
      full=$FULL_CLOSED
      target="Switchyard ≥ 2× Hocuspocus updates/s with p99 below it"
    else
      case_name="yjs-${EDITORS}e-rate${RATE}"; args=(--mode rate --rate "$RATE")
      full=$FULL_RATE
      target="latency below saturation, same offered load"
    fi
    if [[ $CLIENT == rust ]]; then args+=(--full-editors "$full"); fi
    say "$case_name, round $round/$REPEAT"
    for j in $(seq 0 $((N - 1))); do
      server=${SERVER_LIST[$(((j + round - 1) % N))]}
      room_run "$case_name" "$server" "$round" "${args[@]}" --target "$target"
    done
  done
done
if has_case merge; then
  say "merge cost vs document size"
  if [[ $WITH_PLUGIN == 0 ]]; then
    not_available yjs-merge-cost all switchyard-yjs-merge "target/plugins/yjs-merge.wasm missing"
  elif [[ ! -x $BIN/yjs-merge-cost ]]; then
    not_available yjs-merge-cost all switchyard-yjs-merge "yjs-merge-cost not built (run without --no-build)"
  else
    echo "-- merge cost (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    timeout --kill-after=5 300 taskset -c "$SERVER_CPU" "$BIN/yjs-merge-cost" \
      --plugin "$OUT/plugins/yjs-merge.wasm" --updates "$MERGE_UPDATES" --passes "$MERGE_PASSES" \
      --json "$RESULTS" >/dev/null 2>>"$OUT/table.txt" \
      || not_available yjs-merge-cost all switchyard-yjs-merge "yjs-merge-cost failed, see table.txt"
    grep '^yjs-merge-cost' "$OUT/table.txt" >&2 || true
  fi
fi

# ---------------------------------------------------------------- report
say "report"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
sample_cores
QUIET_AFTER=$QUIET_LAST
echo "load after: $(uptime); cores busy over 2 s: $QUIET_AFTER" | tee -a "$OUT/load.txt" >&2
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
# The gateway is built from the working tree: say so when host/ has uncommitted changes.
if [[ -n $(git status --porcelain -- host 2>/dev/null) ]]; then COMMIT="$COMMIT (gateway built from a working tree with uncommitted changes in host/)"; fi
PREAMBLE="Run $(date -u +%Y-%m-%dT%H:%MZ) at commit $COMMIT: \
$(nproc) cores ($CPU), Linux $(uname -r); server pinned to core $SERVER_CPU, client to core $CLIENT_CPU; \
$DURATION measured after $WARMUP warm-up per run, $REPEAT round(s), median shown; \
$EDITORS editors in one room, window $WINDOW, fixed rate $RATE/s; full editors (the others light, see the method): closed loop $FULL_CLOSED, fixed rate $FULL_RATE; $VERSIONS; \
load average at start $LOAD_START, at the end $LOAD; cores busy (2 s, /proc/stat) just before the runs $QUIET_BEFORE, just after $QUIET_AFTER; $NOISY_WAITS run(s) started without a quiet machine (${RUN_QUIET_WAIT} s wait). \
Command: \`bench/yjs.sh${ARGS_TEXT:+ $ARGS_TEXT}\`."
echo "$PREAMBLE" >"$OUT/preamble.txt"
report_args=("$RESULTS" --preamble "$PREAMBLE")
if [[ $UPDATE_DOC == 1 ]]; then report_args+=(--update "$ROOT/docs/benchmarks.md"); fi
node "$JS/report.mjs" "${report_args[@]}" | tee "$OUT/table.md"
if [[ $QUICK == 0 ]]; then
  mkdir -p bench/results
  cp "$RESULTS" bench/results/yjs-latest.jsonl
  cp "$OUT/table.md" bench/results/yjs-latest.md
  cp "$OUT/preamble.txt" bench/results/yjs-latest.txt
  echo "copied to bench/results/yjs-latest.{jsonl,md,txt}" >&2
fi
echo "results: $RESULTS" >&2
