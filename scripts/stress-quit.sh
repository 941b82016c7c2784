#!/usr/bin/env bash
# Quit-while-busy stress: starts `gaffer run` on a workflow whose tasks keep starting (short
# ones) while others run long (a shell waiting for a child, a background child holding the
# pipes, a setsid escapee), sends SIGTERM at a random moment, and checks AT ONCE that no process
# carrying the state dir in its environment is still alive. Run it on a loaded machine to catch
# a graceful stop that returns before every group it signalled is gone.
# Usage: scripts/stress-quit.sh [ROUNDS] [path/to/gaffer]      (default 50 rounds, debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-50}
bin=${2:-${CARGO_TARGET_DIR:-target}/debug/gaffer}
[[ -x $bin ]] || cargo build --quiet --locked
bin=$(realpath "$bin")

work=$(mktemp -d)
cleanup() { for p in $(survivors); do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
state="$work/.gaffer"
survivors() {
  local e
  for e in /proc/[0-9]*/environ; do
    { tr '\0' '\n' <"$e" | grep -qx "GAFFER_STATE_DIR=$state"; } 2>/dev/null || continue
    e=${e#/proc/}
    grep -q '^State:.*Z' "/proc/${e%/environ}/status" 2>/dev/null || echo "${e%/environ}"
  done
}

{
  echo '[settings]'
  echo 'workers = 16'
  echo '[jobs.busy.tasks]'
  # 12 long tasks take 12 of the 16 workers first; the short ones keep the other 4 starting.
  for i in $(seq 1 400); do
    case $((i > 12 ? 3 : i % 3)) in
      0) echo "t$i = { run = 'echo start; sleep 60; true', priority = 90 }" ;;
      1) echo "t$i = { run = 'sleep 60 & echo start; wait', priority = 90 }" ;;
      2) echo "t$i = { run = 'setsid sleep 60 </dev/null >/dev/null 2>&1 3>&- & sleep 60', priority = 90 }" ;;
      *) echo "t$i = { run = 'echo start; sleep 0.0$((i % 7)); true' }" ;;
    esac
  done
} >"$work/workflow.toml"

fails=0
for round in $(seq 1 "$rounds"); do
  rm -rf "$state"
  (cd "$work" && GAFFER_STATE_DIR="$state" exec "$bin" run workflow.toml --headless >/dev/null 2>&1) &
  pid=$!
  sleep "0.$((RANDOM % 9 + 1))"
  kill -TERM "$pid"
  wait "$pid" || true
  left=$(survivors)
  if [[ -n $left ]]; then
    fails=$((fails + 1))
    echo "round $round: still alive after gaffer exited:"
    for p in $left; do ps -o pid,ppid,pgid,sid,stat,cmd -p "$p" | tail -1; kill -9 "$p" 2>/dev/null || true; done
  fi
done
echo "stress-quit: $fails of $rounds rounds left a task process behind"
[[ $fails -eq 0 ]]
