# Shared by the benchmark scripts (sourced): waiting for a quiet machine.
#
# wait_quiet [MAX_SECONDS]: returns once every core was < QUIET_PCT (5) % busy
# over a 2 s sample, or after MAX_SECONDS (default QUIET_WAIT, 120) of
# waiting, saying so; QUIET_WAITED then holds the seconds waited and
# QUIET_LAST the last sample ("cpu0 1.0% cpu1 0.5%"). The wait is bounded: a
# machine that never quiets down still gets its run, and the run's "other CPU"
# column (bench/src/load.rs) marks it noisy.

QUIET_PCT=${QUIET_PCT:-5}
QUIET_WAIT=${QUIET_WAIT:-120}

# Per-core busy and total jiffies: "cpuN busy total" lines.
_cpu_ticks() {
  awk '/^cpu[0-9]+ / { busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6; print $1, busy, total }' /proc/stat
}

# Samples every core over 2 s: sets BUSIEST (the busiest core, whole %) and
# QUIET_LAST ("cpu0 1.0% cpu1 0.5%").
sample_cores() {
  local a b
  a=$(_cpu_ticks)
  sleep 2
  b=$(_cpu_ticks)
  read -r BUSIEST QUIET_LAST < <(paste -d' ' <(echo "$a") <(echo "$b") | awk '{
    db = $5 - $2; dt = $6 - $3; pct = (dt > 0) ? 100 * db / dt : 0;
    if (pct > max) max = pct; line = line sprintf("%s %.1f%% ", $1, pct) }
    END { printf "%d %s\n", max + 0.5, line }')
}

wait_quiet() {
  local max=${1:-$QUIET_WAIT} start=$SECONDS
  QUIET_WAITED=0
  while :; do
    sample_cores
    QUIET_WAITED=$((SECONDS - start))
    if (( BUSIEST < QUIET_PCT )); then return 0; fi
    if (( QUIET_WAITED >= max )); then
      echo "  machine not quiet after ${QUIET_WAITED}s (${QUIET_LAST}); running anyway, the run will be marked noisy" >&2
      return 1
    fi
    echo "  waiting for a quiet machine: ${QUIET_LAST}" >&2
  done
}
