#!/usr/bin/env bash
# Memory soak of a long-running `gaffer serve` (issue 9, item 7): submits jobs through the
# control socket at a steady rate, samples VmRSS from /proc/PID/status, and ends with one
# PASS/FAIL line on whether RSS stays flat after warm-up.
#
#   scripts/soak-serve.sh [DURATION]      # DURATION: seconds, or 30m / 90s; default 30m
#
# Knobs (environment):
#   RATE=56            tasks per second (56/s × 30 min ≈ 100,000 tasks)
#   TASKS_PER_JOB=8    tasks per submitted job (a → b1..b6 → c; outputs, progress, log lines)
#   WORKERS=4          `settings.workers`
#   SAMPLE_EVERY=5     seconds between RSS samples
#   WARMUP_PCT=20      the first WARMUP_PCT % of the run is warm-up (caches filling)
#   LIMIT_MB=5         allowed RSS spread after warm-up, and allowed growth per 100,000 tasks
#   GAFFER=path        the binary (default: target/release/gaffer, built here)
#   KEEP=1             keep the work dir (state dir, samples) instead of removing it
#
# PASS needs all three: every submitted task succeeded (one `status` at the end); max − min RSS
# after warm-up ≤ LIMIT_MB; the least-squares slope of RSS over submitted tasks after warm-up,
# projected to 100,000 tasks, ≤ LIMIT_MB. The samples are written to $WORK/rss.tsv (seconds, tasks, RSS kB).
set -euo pipefail
cd "$(dirname "$0")/.."

duration_arg="${1:-30m}"
case "$duration_arg" in
  *m) DURATION=$((${duration_arg%m} * 60)) ;;
  *s) DURATION=${duration_arg%s} ;;
  *) DURATION=$duration_arg ;;
esac
RATE="${RATE:-56}"
TASKS_PER_JOB="${TASKS_PER_JOB:-8}"
WORKERS="${WORKERS:-4}"
SAMPLE_EVERY="${SAMPLE_EVERY:-5}"
WARMUP_PCT="${WARMUP_PCT:-20}"
LIMIT_MB="${LIMIT_MB:-5}"

log() { printf '[soak] %s\n' "$*" >&2; }
command -v curl >/dev/null || { echo "soak-serve: needs curl (with --unix-socket)" >&2; exit 2; }

if [ -z "${GAFFER:-}" ]; then
  log "building (cargo build --release)"
  cargo build --release --quiet --bin gaffer
  GAFFER="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/gaffer"
  BUILT="gaffer $(git describe --always --dirty 2>/dev/null || echo '?')"
else
  BUILT="$GAFFER"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gaffer-soak.XXXXXX")"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then kill -KILL "$SERVER" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# One job of TASKS_PER_JOB tasks: every task logs a line; `a` reports progress and an output
# on fd 3 that `c` reads through its env template.
{
  printf '[settings]\nworkers = %s\n\n' "$WORKERS"
  printf '[jobs.soak.tasks.a]\nrun = "echo started; echo progress warming >&3; echo output n=42 >&3"\n\n'
  for i in $(seq 1 $((TASKS_PER_JOB - 2))); do
    printf '[jobs.soak.tasks.b%d]\nrun = "echo b%d"\nneeds = ["a"]\n\n' "$i" "$i"
  done
  printf '[jobs.soak.tasks.c]\nrun = "echo c $N"\nenv = { N = "{{ tasks.a.outputs.n }}" }\nneeds = ['
  for i in $(seq 1 $((TASKS_PER_JOB - 2))); do printf '"b%d"%s' "$i" "$([ "$i" -lt $((TASKS_PER_JOB - 2)) ] && echo ", ")"; done
  printf ']\n'
} >"$WORK/soak.toml"
"$GAFFER" validate "$WORK/soak.toml" >/dev/null

STATE="$WORK/state"
SOCK="$STATE/gaffer.sock"
"$GAFFER" serve "$WORK/soak.toml" --state-dir "$STATE" --headless >/dev/null 2>"$WORK/serve.err" &
SERVER=$!
for _ in $(seq 1 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { cat "$WORK/serve.err" >&2; echo "soak-serve: serve did not start" >&2; exit 1; }

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER/status"; }
usec() { local t=${EPOCHREALTIME/./}; echo $((10#$t)); }

jobs_per_s=$(awk -v r="$RATE" -v k="$TASKS_PER_JOB" 'BEGIN { printf "%.3f", r / k }')
interval_us=$(awk -v r="$RATE" -v k="$TASKS_PER_JOB" 'BEGIN { printf "%d", 1e6 * k / r }')
log "serve pid $SERVER, $DURATION s at $RATE tasks/s ($jobs_per_s jobs/s of $TASKS_PER_JOB tasks, each with an idempotency key); samples every $SAMPLE_EVERY s"
printf 'seconds\ttasks\trss_kb\n' >"$WORK/rss.tsv"

start=$(usec)
end=$((start + DURATION * 1000000))
next_sample=$start
submitted=0
failed_submits=0
while :; do
  now=$(usec)
  [ "$now" -ge "$end" ] && break
  if ! kill -0 "$SERVER" 2>/dev/null; then
    wait "$SERVER" || true
    SERVER=""
    echo "soak-serve: FAIL — serve exited after $((submitted * TASKS_PER_JOB)) tasks: $(tail -1 "$WORK/serve.err")"
    exit 1
  fi
  if [ "$now" -ge "$next_sample" ]; then
    printf '%d\t%d\t%s\n' $(((now - start) / 1000000)) $((submitted * TASKS_PER_JOB)) "$(rss_kb)" >>"$WORK/rss.tsv"
    next_sample=$((next_sample + SAMPLE_EVERY * 1000000))
    if [ $(((now - start) / 1000000 % 60)) -lt "$SAMPLE_EVERY" ]; then
      log "$(((now - start) / 1000000)) s: $((submitted * TASKS_PER_JOB)) tasks submitted, RSS $(($(rss_kb) / 1024)) MB"
    fi
  fi
  code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" -H 'Content-Type: application/json' \
    -d "{\"job\":\"soak\",\"key\":\"soak-$submitted\"}" http://localhost/v1/submit || true)
  if [ "$code" = 200 ]; then submitted=$((submitted + 1)); else failed_submits=$((failed_submits + 1)); fi
  # The next submit is due at start + n × interval: a slow submit does not lower the rate.
  due=$((start + (submitted + failed_submits) * interval_us))
  now=$(usec)
  if [ "$due" -gt "$now" ]; then sleep "$(printf '%d.%06d' $(((due - now) / 1000000)) $(((due - now) % 1000000)))"; fi
done
tasks=$((submitted * TASKS_PER_JOB))
log "submitted $submitted jobs ($tasks tasks, $failed_submits submits refused); waiting for the queue to drain"

# Drained: the queues' live numbers (cheap: no store scan) show nothing ready or running twice
# in a row; then one status call (it reads every task run) must count every task succeeded.
idle=0
for _ in $(seq 1 600); do
  busy=$(curl -s --unix-socket "$SOCK" http://localhost/v1/live | grep -o '"\(ready\|running\)":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }')
  if [ "$busy" = 0 ]; then idle=$((idle + 1)); else idle=0; fi
  [ "$idle" -ge 2 ] && break
  sleep 1
done
final_kb=$(rss_kb)
hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER/status")
status_json=$(curl -s --unix-socket "$SOCK" http://localhost/v1/status || true)
succeeded=$(printf '%s' "$status_json" | grep -o '"succeeded":[0-9]*' | head -1 | cut -d: -f2)
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=""

# Least squares of RSS (MB) over tasks after warm-up; spread = max − min after warm-up.
read -r verdict summary < <(awk -F'\t' -v warm_pct="$WARMUP_PCT" -v dur="$DURATION" -v limit="$LIMIT_MB" \
    -v tasks="$tasks" -v succeeded="${succeeded:-0}" -v refused="$failed_submits" '
  NR == 1 { next }
  { t[NR] = $1; x[NR] = $2; y[NR] = $3 / 1024; n = NR }
  END {
    warm = dur * warm_pct / 100
    for (i = 2; i <= n; i++) if (t[i] >= warm) {
      m++; sx += x[i]; sy += y[i]; sxx += x[i] * x[i]; sxy += x[i] * y[i]
      if (m == 1) { warm_tasks = x[i]; lo = y[i]; hi = y[i]; first = y[i] }
      if (y[i] < lo) lo = y[i]; if (y[i] > hi) hi = y[i]; last = y[i]
    }
    if (m < 3) { print "FAIL", "too few samples after warm-up"; exit }
    d = m * sxx - sx * sx
    slope = (d > 0) ? (m * sxy - sx * sy) / d : 0      # MB per task
    per100k = slope * 100000
    spread = hi - lo
    ok = (spread <= limit) && (per100k <= limit) && (succeeded == tasks) && (refused == 0)
    printf "%s %d tasks in %d s (%.0f/s), %d succeeded; RSS after warm-up (%d s, %d tasks) %.1f → %.1f MB, range %.1f–%.1f MB (spread %.1f MB, limit %s), slope %+.2f MB per 100,000 tasks (limit %s)\n", \
      ok ? "PASS" : "FAIL", tasks, dur, tasks / dur, succeeded, warm, warm_tasks, first, last, lo, hi, spread, limit, per100k, limit
  }' "$WORK/rss.tsv")
echo "soak-serve: $verdict — $summary; peak RSS $((hwm_kb / 1024)) MB, RSS when drained $((final_kb / 1024)) MB; $BUILT, $(date -u '+%Y-%m-%d %H:%M UTC')"
[ "$verdict" = PASS ]
