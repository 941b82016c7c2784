#!/usr/bin/env bash
# gaffer in the peer harness's format (../shared/bench/peers): one JSON line on stdout with the
# fields of the peers' drivers, so `common.py report` can put gaffer in the same table.
#
#   scripts/peers-gaffer.sh --workload shell|noop|latency [-n 2000] [-w 4] [--samples 200]
#                           [--gap-ms 50] [--jitter-ms 300] [--label L] [--keep]
#   PEERS_DIR=../shared/bench/peers (default) must hold common.py (the RSS sampler, emit).
#
#   shell:   `gaffer run --json --workers W` of one job with N independent tasks `run = "true"`.
#            wall = process start (the "enqueue": gaffer has no daemon to submit to yet) → the
#            last task.succeeded event's timestamp (ms); enqueue s = start → last task.queued.
#   noop:    the same with --noop-executor (no process per task: the durable engine alone).
#   latency: benches/latency.rs with the local executor (`true` via sh -c) and the harness's
#            gaps (GAP + U(0, JITTER) ms); from just before `submit` to receiving the task's
#            `task.started` event (after its process exists and its pid is committed).
# peak RSS/PSS: gaffer's own process (the bench process for latency), sampled every 50 ms by
# the harness's sampler at depth 0 (task processes excluded, as for pueued).
# Does not write under PEERS_DIR; the temp dir is removed unless --keep.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
if [ -x "$PEERS_DIR/.venv/bin/python" ]; then PY="$PEERS_DIR/.venv/bin/python"; else PY=python3; fi
COMMON="$PEERS_DIR/common.py"
[ -f "$COMMON" ] || { echo "no $COMMON (set PEERS_DIR)" >&2; exit 1; }

WORKLOAD="" N=2000 W=4 SAMPLES=200 GAP_MS=50 JITTER_MS=300 LABEL="run --workers W" KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --workload|-l) WORKLOAD="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    -w) W="$2"; shift 2 ;;
    --samples) SAMPLES="$2"; shift 2 ;;
    --gap-ms) GAP_MS="$2"; shift 2 ;;
    --jitter-ms) JITTER_MS="$2"; shift 2 ;;
    --label) LABEL="$2"; shift 2 ;;
    --timeout) shift 2 ;; # accepted for compatibility with run_all.sh
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$WORKLOAD" in
  shell|noop|latency) ;;
  *) echo "--workload shell|noop|latency required" >&2; exit 2 ;;
esac

cd "$ROOT"
cargo build --release --quiet
GAFFER="$ROOT/${CARGO_TARGET_DIR:-target}/release/gaffer"
sync # the build's dirty pages would slow the commits measured below
TMP="$(mktemp -d "${TMPDIR:-/tmp}/peerbench-gaffer-XXXXXX")"
GPID="" SPID=""
cleanup() {
  local rc=$?
  trap '' INT TERM HUP
  trap - EXIT
  for p in "$SPID" "$GPID"; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
  if [ "$KEEP" = 1 ]; then echo "[cleanup] kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

VERSION="$("$GAFFER" --version | awk '{ print $2 }')+$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"

if [ "$WORKLOAD" = latency ]; then
  BIN="$(cargo bench --bench latency --no-run --message-format=json 2>/dev/null |
    "$PY" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "latency" and m.get("executable"):
        print(m["executable"])' | tail -1)"
  [ -x "$BIN" ] || { echo "cannot build benches/latency.rs" >&2; exit 1; }
  sync
  T0=$EPOCHREALTIME
  SAMPLES="$SAMPLES" GAP_MS="$GAP_MS" JITTER_MS="$JITTER_MS" EXECUTORS=local "$BIN" --bench >"$TMP/lat.txt" &
  GPID=$!
  "$PY" "$COMMON" rss-sample --pid "$GPID" --max-depth 0 --out "$TMP/rss.json" &
  SPID=$!
  rc=0; wait "$GPID" || rc=$?; GPID=""
  T1=$EPOCHREALTIME
  kill -TERM "$SPID"; wait "$SPID" || true; SPID=""
  "$PY" - "$TMP/lat.txt" "$T0" "$T1" "$SAMPLES" "$rc" >"$TMP/res.json" <<'EOF'
import json, sys
path, t0, t1, n, rc = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = {}
for line in open(path):
    if line.startswith("RESULT "):
        r = dict(kv.split("=", 1) for kv in line.split()[1:])
ok = rc == 0 and int(r.get("samples", 0)) == n
print(json.dumps({"wall_s": t1 - t0, "tasks_per_s": None, "enqueue_s": None,
                  "p50_ms": float(r["p50_us"]) / 1000 if ok else None,
                  "p99_ms": float(r["p99_us"]) / 1000 if ok else None,
                  "max_ms": float(r["max_us"]) / 1000 if ok else None, "completed": ok}))
EOF
  SETTINGS="benches/latency.rs, LocalExecutor (sh -c true), engine workers=4, gaps ${GAP_MS}+U(0,${JITTER_MS}) ms"
  N="$SAMPLES"
else
  {
    printf '[settings]\nworkers = %d\n\n' "$W"
    awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "[jobs.bench.tasks.t%d]\nrun = \"true\"\n", i }'
  } >"$TMP/wf.toml"
  extra=()
  [ "$WORKLOAD" = noop ] && extra=(--noop-executor)
  T0=$EPOCHREALTIME
  "$GAFFER" run "$TMP/wf.toml" --state-dir "$TMP/state" --json --workers "$W" "${extra[@]}" >"$TMP/events.jsonl" 2>"$TMP/err.txt" &
  GPID=$!
  "$PY" "$COMMON" rss-sample --pid "$GPID" --max-depth 0 --out "$TMP/rss.json" &
  SPID=$!
  rc=0; wait "$GPID" || rc=$?; GPID=""
  kill -TERM "$SPID"; wait "$SPID" || true; SPID=""
  [ "$rc" = 0 ] || { echo "gaffer exited $rc:" >&2; tail -20 "$TMP/err.txt" >&2; }
  "$PY" - "$TMP/events.jsonl" "$T0" "$N" "$rc" >"$TMP/res.json" <<'EOF'
import datetime as dt, json, sys
path, t0, n, rc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ts = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
runs, last_end, last_queued = set(), None, None
ok_events = 0
for line in open(path):
    e = json.loads(line)
    if e["event"] == "task.succeeded":
        ok_events += 1; runs.add(e["task_run"]); last_end = ts(e["ts"])
    elif e["event"] == "task.queued":
        last_queued = ts(e["ts"])
done = rc == 0 and ok_events == n and len(runs) == n
wall = (last_end - t0) if done else None
print(json.dumps({"wall_s": wall, "tasks_per_s": (n / wall) if done else None,
                  "enqueue_s": (last_queued - t0) if last_queued else None,
                  "executions": ok_events, "unique": len(runs), "completed": done}))
EOF
  SETTINGS="gaffer run --json --workers $W, 1 job x $N tasks, fresh state dir${extra:+, --noop-executor}"
fi

"$PY" "$COMMON" emit --merge "$TMP/res.json" --merge "$TMP/rss.json" \
  --set peer=gaffer --set "label=$LABEL" --set "workload=$WORKLOAD" --set "n=$N" --set "w=$W" \
  --set broker_rss_mb=null --set "version=$VERSION" --set "settings=$SETTINGS"
