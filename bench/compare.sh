#!/usr/bin/env bash
# Side-by-side benchmark: Switchyard (no plugins, and auth + rate-limit +
# router plugins) against bare Rust servers, Node ws and Socket.IO, with the
# same client for all. Servers run pinned to core 0, the client to core 1;
# within a case the servers take turns (alternated over --repeat rounds).
# Prints the table and, unless --quick or --no-doc, writes it into
# docs/benchmarks.md between the bench markers.
#
# Usage: bench/compare.sh [--quick] [--duration 10s] [--repeat 1]
#                         [--cases echo,echo10k,idle,fanout,fanout-rate,fanout-ch,cross-node,telemetry,shadow]
#                         (telemetry-echo, telemetry-fanout: one of the telemetry rows)
#                         [--out DIR] [--no-doc] [--no-build] [--idle-conns N]
#        bench/compare.sh --report-only DIR [--no-doc]   (table from DIR/results.jsonl again)
# Before each run the script waits (up to QUIET_WAIT=120 s) for both cores to
# be < QUIET_PCT=5 % busy, and each row reports the CPU other processes used
# while it measured ("other CPU", ⚠ = noisy).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=10s
WARMUP=1s
HOLD=3s
REPEAT=1
QUICK=0
UPDATE_DOC=1
CASES="echo,echo10k,idle,fanout,fanout-rate,fanout-ch,cross-node,telemetry,shadow"
OUT=""
IDLE_CONNS=19000
NO_BUILD=0
REPORT_ONLY=""
REDIS_PORT=16379
REDIS_PID=""
NATS_PORT=14222
NATS_PID=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; DURATION=2s; WARMUP=500ms; HOLD=1s; UPDATE_DOC=0 ;;
    --duration) DURATION=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --cases) CASES=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-doc) UPDATE_DOC=0 ;;
    --doc) UPDATE_DOC=1 ;;
    --idle-conns) IDLE_CONNS=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    --report-only) REPORT_ONLY=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

OUT=${OUT:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -n $REPORT_ONLY ]]; then OUT=$REPORT_ONLY; CASES=none; NO_BUILD=1; fi
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
[[ -n $REPORT_ONLY ]] || : > "$RESULTS"
LOGS=$OUT/logs
mkdir -p "$LOGS"
BIN=$ROOT/target/release
SERVER_CPU=0
CLIENT_CPU=1
if [[ $(nproc) -lt 2 ]]; then CLIENT_CPU=0; fi

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NOISY_RUNS=0

say() { printf '\n== %s\n' "$*" >&2; }
has_case() { [[ ",$CASES," == *",$1,"* ]]; }

# ---------------------------------------------------------------- setup
say "setup"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v curl >/dev/null || need_apt+=(curl)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi
if [[ ! -d bench/node/node_modules ]] || [[ bench/node/package-lock.json -nt bench/node/node_modules ]]; then
  (cd bench/node && npm ci --no-audit --no-fund >&2 && touch node_modules)
fi
if [[ $NO_BUILD == 0 ]]; then cargo build --release -p switchyard-bench -p switchyard >&2; fi
# Snapshot the binaries: the shared target dir may be rebuilt during the run.
mkdir -p "$OUT/bin"
for b in switchyard switchyard-bench peer-echo-tungstenite peer-echo-fastws peer-broadcast; do
  if [[ -x $ROOT/target/release/$b ]]; then cp "$ROOT/target/release/$b" "$OUT/bin/"; else echo "missing target/release/$b" >&2; fi
done
BIN=$OUT/bin

PLUGIN_DIR=$ROOT/target/plugins
PLUGINS=(jwt-auth token-bucket namespace-router)
plugins_ready() {
  for p in "${PLUGINS[@]}"; do [[ -f $PLUGIN_DIR/$p.wasm ]] || return 1; done
}
if ! plugins_ready && [[ -x scripts/build-plugins.sh ]]; then
  scripts/build-plugins.sh >&2 || echo "plugin build failed; 'with plugins' rows will be n/a" >&2
fi
WITH_PLUGINS=0
# Only the plugins on the measured path, copied (the folder is watched and
# every *.wasm in it is compiled at start); no-plugin runs get an empty folder.
mkdir -p "$OUT/plugins" "$OUT/no-plugins" "$OUT/plugins-shadow"
if plugins_ready; then
  WITH_PLUGINS=1
  for p in "${PLUGINS[@]}"; do
    cp "$PLUGIN_DIR/$p.wasm" "$OUT/plugins/"
    cp "$PLUGIN_DIR/$p.wasm" "$OUT/plugins-shadow/"
  done
  # The shadow rows run a second copy of the router beside the serving one
  # (same code, so every verdict is "same": what is measured is the cost).
  cp "$PLUGIN_DIR/namespace-router.wasm" "$OUT/plugins-shadow/namespace-router-next.wasm"
fi
JWT_SECRET=bench-secret-0123456789

# ---------------------------------------------------------------- servers
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'cleanup; stop_redis; stop_nats; stop_otlp_sink' EXIT

wait_port() { # port [path]
  local port=$1 path=${2:-} i
  for i in $(seq 1 600); do
    if [[ -n $path ]]; then
      curl -fsS -o /dev/null "http://127.0.0.1:$port$path" 2>/dev/null && return 0
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "server on port $port did not come up" >&2
  return 1
}

# start NAME PORT HEALTHPATH -- CMD... : pinned to the server core; sets PID
start() {
  local name=$1 port=$2 health=$3; shift 4
  taskset -c "$SERVER_CPU" "$@" >"$LOGS/$name.$port.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  wait_port "$port" "$health"
}

switchyard_config() { # file port node plugins(0|1) broker(memory|redis) [otel sample ratio] [shadow sample]
  local file=$1 port=$2 node=$3 plugins=$4 broker=$5 otel=${6:-} shadow=${7:-}
  local pdir=no-plugins
  [[ $plugins == 1 ]] && pdir=plugins
  [[ -n $shadow ]] && pdir=plugins-shadow
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:$port"
node_id = "$node"
drain_timeout = "1s"

[limits]
send_queue_messages = 8192
publish_rate = 4000000
publish_burst = 4000000
max_subscriptions = 100000

[diagnostics]
echo = true

[log]
level = "warn"

[broker]
kind = "$broker"
redis_urls = ["redis://127.0.0.1:$REDIS_PORT"]
nats_urls = ["nats://127.0.0.1:$NATS_PORT"]

[plugins]
dir = "$OUT/$pdir"
cache_dir = "$OUT/plugin-cache"
watch = false

[tenants.default]
origins = ["*"]
history_size = 100
EOF
  if [[ -n $otel ]]; then
    cat >>"$file" <<EOF

[telemetry]
otlp_endpoint = "http://127.0.0.1:$OTLP_PORT"
sample_ratio = $otel
EOF
  fi
  if [[ $plugins == 1 ]]; then
    cat >>"$file" <<EOF

[tenants.default.policies.auth]
plugin = "jwt-auth"
config = { hs256_secret = "$JWT_SECRET" }

[tenants.default.policies.rate_limit]
plugin = "token-bucket"
config = { rate = 4000000, burst = 4000000, key = "client" }

[tenants.default.policies.router]
plugin = "namespace-router"
config = { rules = [{ match = "spam:*", drop = true }, { match = "*", to = ["\$channel"] }] }
EOF
    if [[ -n $shadow ]]; then
      cat >>"$file" <<EOF
shadow = "namespace-router-next"
shadow_sample = $shadow
EOF
    fi
  fi
}

# The OTLP sink the telemetry rows export to, on the client core (a collector
# runs elsewhere in production; its work is not the gateway's).
OTLP_PORT=14318
OTLP_PID=""
start_otlp_sink() {
  [[ -n $OTLP_PID ]] && return 0
  taskset -c "$CLIENT_CPU" node bench/node/otlp-sink.js "$OTLP_PORT" >"$LOGS/otlp-sink.log" 2>&1 &
  OTLP_PID=$!
  wait_port "$OTLP_PORT"
}
stop_otlp_sink() {
  [[ -n $OTLP_PID ]] && { kill "$OTLP_PID" 2>/dev/null; wait "$OTLP_PID" 2>/dev/null || true; }
  OTLP_PID=""
}

# nats-server with JetStream, pinned to the server core like Redis; a fresh
# store per run (stop_nats removes it).
start_nats() {
  [[ -n $NATS_PID ]] && return 0
  command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; return 1; }
  rm -rf "$OUT/nats-store"
  taskset -c "$SERVER_CPU" nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/nats-store" \
    >"$LOGS/nats.log" 2>&1 &
  NATS_PID=$!
  wait_port "$NATS_PORT"
}
stop_nats() {
  [[ -n $NATS_PID ]] && { kill "$NATS_PID" 2>/dev/null; wait "$NATS_PID" 2>/dev/null || true; }
  NATS_PID=""
  rm -rf "$OUT/nats-store"
}

start_redis() {
  [[ -n $REDIS_PID ]] && return 0
  taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --daemonize no >"$LOGS/redis.log" 2>&1 &
  REDIS_PID=$!
  wait_port "$REDIS_PORT"
}
stop_redis() {
  [[ -n $REDIS_PID ]] && { kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null || true; }
  REDIS_PID=""
}

# up SERVER [broker] : starts server kind SERVER on port 19100+; sets URL_BASE, PID, PROTO
SEQ=0
up() {
  local server=$1 broker=${2:-memory}
  SEQ=$((SEQ + 1))
  local port=$((19100 + SEQ % 500))
  URL_BASE="ws://127.0.0.1:$port"
  case $server in
    tungstenite) start "$server" "$port" "" -- "$BIN/peer-echo-tungstenite" "127.0.0.1:$port" || return 1; PROTO=plain; ECHO_PATH=/ ;;
    fastws) start "$server" "$port" "" -- "$BIN/peer-echo-fastws" "127.0.0.1:$port" || return 1; PROTO=plain; ECHO_PATH=/ ;;
    rust-broadcast) start "$server" "$port" "" -- "$BIN/peer-broadcast" "127.0.0.1:$port" || return 1; PROTO=rooms; ECHO_PATH=/ ;;
    node-ws) start "$server" "$port" "" -- node bench/node/ws-server.js "$port" || return 1; PROTO=rooms; ECHO_PATH=/echo ;;
    socketio) start "$server" "$port" "" -- node bench/node/socketio-server.js "$port" || return 1; PROTO=socket-io; ECHO_PATH=/ ;;
    socketio-redis)
      start_redis || return 1
      start "$server" "$port" "" -- env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" node bench/node/socketio-server.js "$port" || return 1
      PROTO=socket-io; ECHO_PATH=/ ;;
    switchyard|switchyard-plugins|switchyard-redis|switchyard-nats|switchyard-otel-1|switchyard-otel-0.01|switchyard-shadow-1|switchyard-shadow-0.1)
      local plugins=0 otel="" shadow=""
      [[ $server == switchyard-plugins ]] && plugins=1
      if [[ $server == switchyard-shadow-* ]]; then plugins=1; shadow=${server#switchyard-shadow-}; fi
      if [[ $server == switchyard-otel-* ]]; then otel=${server#switchyard-otel-}; start_otlp_sink || return 1; fi
      if [[ $broker == redis ]]; then start_redis || return 1; fi
      if [[ $broker == nats ]]; then start_nats || return 1; fi
      switchyard_config "$OUT/$server.$port.toml" "$port" "bench-$SEQ" "$plugins" "$broker" "$otel" "$shadow"
      # /readyz: ready once the broker answers (a NATS client connects after start)
      start "$server" "$port" /readyz -- "$BIN/switchyard" serve --config "$OUT/$server.$port.toml" || return 1
      PROTO=switchyard; ECHO_PATH=/echo ;;
    *) echo "unknown server $server" >&2; return 1 ;;
  esac
}

down() { cleanup; }

# client ARGS... : the load tool pinned to the client core; the servers'
# CPU (and Redis') is theirs, the rest of the machine's is "other CPU".
client() {
  local watch=() pid
  for pid in "${PIDS[@]:-}" $REDIS_PID $NATS_PID; do [[ -n $pid ]] && watch+=(--watch-pid "$pid"); done
  taskset -c "$CLIENT_CPU" "$BIN/switchyard-bench" --warmup "$WARMUP" --json "$RESULTS" "${watch[@]}" "$@" 2>>"$LOGS/client.log" \
    | tee -a "$OUT/table.txt"
}

# quiet : before a server starts, wait (bounded) until both cores are idle.
quiet() {
  if ! wait_quiet; then NOISY_RUNS=$((NOISY_RUNS + 1)); fi
}

# A row that could not run (e.g. plugins not built yet).
not_available() { # case server scenario reason
  printf '{"scenario":"%s","case":"%s","server":"%s","note":"n/a: %s"}\n' "$3" "$1" "$2" "$4" >>"$RESULTS"
  echo "$3 $1 $2: n/a ($4)" | tee -a "$OUT/table.txt"
}

jwt_args() { [[ $1 == switchyard-plugins || $1 == switchyard-shadow-* ]] && echo "--jwt-secret $JWT_SECRET"; true; }

# run_case CASE SCENARIO "SERVERS" -- ARGS... (ARGS may use {URL} {ECHO} {PROTO} {PID})
run_case() {
  local case=$1 scenario=$2 servers=$3; shift 4
  say "$case"
  local round server spec label
  for round in $(seq 1 "$REPEAT"); do
    for spec in $servers; do
      # SERVER or SERVER@LABEL (the same server kind measured another way)
      server=${spec%@*}
      label=${spec#*@}
      if [[ $server == switchyard-plugins || $server == switchyard-shadow-* ]] && [[ $WITH_PLUGINS == 0 ]]; then
        [[ $round == 1 ]] && not_available "$case" "$label" "$scenario" "plugins not built (target/plugins/{jwt-auth,token-bucket,namespace-router}.wasm)"
        continue
      fi
      quiet
      if ! up "$server"; then
        not_available "$case" "$label" "$scenario" "server did not start"; down; continue
      fi
      local args=() a
      for a in "$@"; do
        a=${a//\{URL\}/$URL_BASE}
        a=${a//\{ECHO\}/$URL_BASE$ECHO_PATH}
        a=${a//\{PROTO\}/$PROTO}
        a=${a//\{PID\}/$PID}
        args+=("$a")
      done
      # shellcheck disable=SC2046
      client "$scenario" --server "$label" --case "$case" $(jwt_args "$server") "${args[@]}" \
        || not_available "$case" "$label" "$scenario" "client failed, see logs/client.log"
      down
    done
  done
}

# ---------------------------------------------------------------- cases
SY="switchyard switchyard-plugins"
if has_case echo; then
  # Raw echo for the bare servers and Switchyard's /echo; the switchyard
  # rows below publish to their own channel (protocol + policies on the path).
  run_case echo-100c-64B echo "tungstenite fastws node-ws switchyard@switchyard-/echo" -- \
    --url "{ECHO}" --proto plain -c 100 -s 64 -d "$DURATION" \
    --ref-server fastws --target "Switchyard with plugins ≥ 1.1× bare fastwebsockets echo"
  run_case echo-100c-64B echo "$SY" -- \
    --url "{URL}/ws" --proto switchyard -c 100 -s 64 -d "$DURATION"
fi
# Tracing off, on at 1% and on at 100% (spans per publish, per delivering
# node and per plugin call, exported to a sink): what tracing costs.
# `telemetry` runs both rows; `telemetry-echo` / `telemetry-fanout` one each.
if has_case telemetry || has_case telemetry-echo; then
  run_case telemetry-echo-100c-64B echo "switchyard switchyard-otel-0.01 switchyard-otel-1" -- \
    --url "{URL}/ws" --proto switchyard -c 100 -s 64 -d "$DURATION" \
    --ref-server switchyard --target "sample 0.01 costs ≤ 3% msgs/s"
fi
if has_case telemetry || has_case telemetry-fanout; then
  run_case telemetry-fanout-1x10000s-100B fanout "switchyard switchyard-otel-0.01 switchyard-otel-1" -- \
    --pub-url "{URL}/ws" --proto switchyard -n 10000 -s 100 -d "$DURATION" \
    --ref-server switchyard --target "sample 0.01 costs ≤ 3% deliveries/s"
fi
if has_case telemetry || has_case telemetry-echo || has_case telemetry-fanout; then
  stop_otlp_sink
fi
if has_case shadow; then
  # The three plugins, then the same with a shadow router on 10 % and on
  # every call (issue 14: what a shadow costs the serving path).
  run_case shadow-echo-100c-64B echo "switchyard-plugins switchyard-shadow-0.1 switchyard-shadow-1" -- \
    --url "{URL}/ws" --proto switchyard -c 100 -s 64 -d "$DURATION" \
    --ref-server switchyard-plugins --target "a shadow at sample 0.1 costs ≤ 5% msgs/s"
fi
if has_case echo10k; then
  run_case echo-10000c-64B echo "tungstenite fastws node-ws switchyard@switchyard-/echo" -- \
    --url "{ECHO}" --proto plain -c 10000 -s 64 -d "$DURATION" \
    --ref-server node-ws --target "≥ 2× Node ws msgs/s with p99 < 50 ms"
  run_case echo-10000c-64B echo "$SY" -- \
    --url "{URL}/ws" --proto switchyard -c 10000 -s 64 -d "$DURATION"
fi
if has_case idle; then
  run_case "idle-${IDLE_CONNS}c" idle "tungstenite fastws node-ws socketio switchyard switchyard-plugins" -- \
    --url "{URL}/ws" --proto "{PROTO}" -c "$IDLE_CONNS" --server-pid "{PID}" -d "$HOLD" \
    --target "≤ 4 KiB server RSS per connection"
fi
if has_case fanout; then
  run_case fanout-1x10000s-100B fanout "rust-broadcast node-ws socketio $SY" -- \
    --pub-url "{URL}/ws" --proto "{PROTO}" -n 10000 -s 100 -d "$DURATION" \
    --ref-server socketio --target "≥ 4× Socket.IO deliveries/s"
fi
if has_case fanout-rate; then
  run_case fanout-1x1000s-100msgps fanout "rust-broadcast node-ws socketio $SY" -- \
    --pub-url "{URL}/ws" --proto "{PROTO}" -n 1000 -s 100 --rate 100 -d "$DURATION" \
    --ref-server socketio --target "p99 ≤ 5 ms below saturation"
fi
if has_case fanout-ch; then
  run_case fanout-10000s-100ch fanout "rust-broadcast node-ws socketio $SY" -- \
    --pub-url "{URL}/ws" --proto "{PROTO}" -n 10000 -m 100 --publishers 10 -s 100 -d "$DURATION" \
    --ref-server socketio
fi
if has_case cross-node; then
  for mode in closed rate; do
    if [[ $mode == closed ]]; then
      case_name=cross-node-2000s; rate_args=(); tgt="≥ 2× Socket.IO + redis-adapter deliveries/s at p99 < 50 ms, no crash"
    else
      case_name=cross-node-2000s-100kps; rate_args=(--rate 50); tgt="100k deliveries/s offered: p99 < 50 ms"
    fi
    say "$case_name"
    for round in $(seq 1 "$REPEAT"); do
      for server in socketio-redis switchyard-redis switchyard-nats; do
        urls=()
        ok=1
        broker=redis
        [[ $server == switchyard-nats ]] && broker=nats
        quiet
        for node in a b c; do
          if ! up "$server" "$broker"; then ok=0; break; fi
          urls+=("$URL_BASE/ws")
        done
        if [[ $ok == 0 ]]; then
          not_available "$case_name" "$server" cross-node "a node did not start (see logs)"; down; continue
        fi
        command -v redis-cli >/dev/null && redis-cli -p "$REDIS_PORT" flushall >/dev/null
        client cross-node --server "$server" --case "$case_name" --proto "$PROTO" \
          --pub-url "${urls[0]}" --sub-url "${urls[1]}" --sub-url "${urls[2]}" \
          -n 2000 -s 100 -d "$DURATION" "${rate_args[@]}" --ref-server socketio-redis --target "$tgt" \
          || not_available "$case_name" "$server" cross-node "client failed (is broker.kind = \"$broker\" working?)"
        down
        stop_nats
      done
    done
  done
  stop_redis
fi

# ---------------------------------------------------------------- report
say "report"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
PREAMBLE="Run $(date -u +%Y-%m-%dT%H:%MZ) at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'): \
$(nproc) cores ($CPU), Linux $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB; \
server pinned to core $SERVER_CPU, client to core $CLIENT_CPU; $DURATION measured after $WARMUP warm-up per run, \
$REPEAT round(s), median shown (range = min–max over the rounds); each run started once both cores were < ${QUIET_PCT}% busy (waiting up to ${QUIET_WAIT}s; $NOISY_RUNS run(s) started on a busy machine); \"other CPU\" = CPU used by processes other than the servers and the client during the measuring window, in % of one core, ⚠ above 10% (such a figure is not a result); load average ${LOAD_START:+at start $LOAD_START, }at the end $LOAD. Node $(node --version), ws $(node -p 'require("./bench/node/node_modules/ws/package.json").version'), \
socket.io $(node -p 'require("./bench/node/node_modules/socket.io/package.json").version'), \
redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2), \
nats-server $(nats-server --version 2>/dev/null | awk '{print $NF}'). \
Command: \`bench/compare.sh$( [[ $QUICK == 1 ]] && echo ' --quick' || true)\`."
if [[ -n $REPORT_ONLY && -f $OUT/preamble.txt ]]; then
  PREAMBLE=$(cat "$OUT/preamble.txt")
else
  echo "$PREAMBLE" >"$OUT/preamble.txt"
fi
report_args=("$RESULTS" --preamble "$PREAMBLE")
if [[ $UPDATE_DOC == 1 ]]; then
  report_args+=(--update docs/benchmarks.md)
  # The raw results behind the published table.
  mkdir -p bench/results && cp "$RESULTS" bench/results/latest.jsonl && cp "$OUT/preamble.txt" bench/results/latest.txt
fi
"$BIN/switchyard-bench" report "${report_args[@]}" | tee "$OUT/table.md"
echo "results: $RESULTS" >&2
