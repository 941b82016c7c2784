#!/usr/bin/env bash
# serve's memory across repeated big answers through the control socket (issue 9, item 7).
# Fills a state dir with N finished task runs (`run --noop-executor`), starts `serve` on it,
# makes CALLS `gaffer tasks --json` calls through the socket and reads VmRSS from
# /proc/PID/status after each. Passes when the last sample is within LIMIT_MB of the sample
# after the first call (big answers are streamed, so nothing of them should stay behind).
#
#   scripts/api-rss.sh                                  # N=20000 CALLS=20, release build
#   GAFFER=target/debug/gaffer N=5000 scripts/api-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-20000}"
CALLS="${CALLS:-20}"
LIMIT_MB="${LIMIT_MB:-5}"
PER_JOB=100

if [ -z "${GAFFER:-}" ]; then
  cargo build --release --quiet
  GAFFER="${CARGO_TARGET_DIR:-target}/release/gaffer"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gaffer-api-rss.XXXXXX")"
PID=""
trap '[ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }; rm -rf "$WORK"' EXIT

awk -v n="$N" -v per="$PER_JOB" 'BEGIN {
  printf "[settings]\nworkers = 4\n\n"
  for (i = 0; i < n; i++) printf "[jobs.j%d.tasks.t%d]\nrun = \"true\"\n", int(i / per), i % per
}' >"$WORK/w.toml"
echo "[api-rss] filling a state dir with $N task runs" >&2
"$GAFFER" run "$WORK/w.toml" --state-dir "$WORK/state" --json --noop-executor >/dev/null

"$GAFFER" serve "$WORK/w.toml" --state-dir "$WORK/state" --headless >/dev/null 2>"$WORK/serve.err" &
PID=$!
for _ in $(seq 100); do
  [ -S "$WORK/state/gaffer.sock" ] && break
  sleep 0.1
done
[ -S "$WORK/state/gaffer.sock" ] || { cat "$WORK/serve.err" >&2; exit 1; }

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$PID/status"; }
idle=$(rss_kb)
samples=()
for _ in $(seq "$CALLS"); do
  "$GAFFER" tasks --json --state-dir "$WORK/state" >"$WORK/out.json"
  samples+=("$(rss_kb)")
done
answer=$(stat -c %s "$WORK/out.json")
first=${samples[0]}
last=${samples[$((CALLS - 1))]}
echo "[api-rss] VmRSS (kB) after each call: ${samples[*]}" >&2
awk -v idle="$idle" -v first="$first" -v last="$last" -v calls="$CALLS" -v n="$N" -v bytes="$answer" -v limit="$LIMIT_MB" 'BEGIN {
  growth = (last - first) / 1024
  verdict = growth <= limit ? "PASS" : "FAIL"
  printf "%s: serve VmRSS with %d task runs: idle %.1f MB, after 1 `tasks --json` %.1f MB, after %d %.1f MB (+%.1f MB; limit %d MB); each answer %.1f MB\n",
    verdict, n, idle / 1024, first / 1024, calls, last / 1024, growth, limit, bytes / 1048576
  exit verdict == "PASS" ? 0 : 1
}'
