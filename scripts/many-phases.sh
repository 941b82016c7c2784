#!/usr/bin/env bash
# Where the wall time of N tasks `sleep 2` at once goes (bench row 8): per repetition, xargs's
# wall, gaffer's wall, and gaffer's phases from its event timestamps (seconds since the process
# started): job.started, first/median/last task.started, first/last task.succeeded, exit.
#
# Usage: scripts/many-phases.sh [N=1000] [REPS=3]     (GAFFER=path, default target/release/gaffer)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000} REPS=${2:-3}
GAFFER=${GAFFER:-target/release/gaffer}
[ -x "$GAFFER" ] || cargo build --release --quiet
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gaffer-phases.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
awk -v n="$N" 'BEGIN { printf "[settings]\nworkers = %d\n\n", n
  for (i = 0; i < n; i++) printf "[jobs.many.tasks.t%d]\nrun = \"sleep 2\"\n", i }' >"$WORK/many.toml"
ulimit -n "$(ulimit -Hn)"
for ((r = 1; r <= REPS; r++)); do
  t0=$EPOCHREALTIME; seq "$N" | xargs -P"$N" -n1 sh -c 'sleep 2'; t1=$EPOCHREALTIME
  raw=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  t0=$EPOCHREALTIME
  "$GAFFER" run "$WORK/many.toml" --state-dir "$WORK/state-$r" --json >"$WORK/events.jsonl"
  t1=$EPOCHREALTIME
  python3 - "$t0" "$t1" "$raw" "$WORK/events.jsonl" <<'PY'
import datetime, json, sys
t0, t1, raw = (float(a) for a in sys.argv[1:4])
at = {}
for line in open(sys.argv[4]):
    e = json.loads(line)
    ts = datetime.datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    at.setdefault(e["event"], []).append(ts.timestamp() - t0)
started, succeeded = sorted(at["task.started"]), sorted(at["task.succeeded"])
print(f"gaffer {t1 - t0:.2f} s, xargs {raw:.2f} s, ratio {(t1 - t0) / raw:.2f} | job.started {at['job.started'][0]:.2f}"
      f" | task.started {started[0]:.2f} / {started[len(started) // 2]:.2f} / {started[-1]:.2f}"
      f" | task.succeeded {succeeded[0]:.2f} / {succeeded[-1]:.2f} | exit {t1 - t0:.2f} ({len(succeeded)} succeeded)")
PY
done
