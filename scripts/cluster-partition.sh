#!/usr/bin/env bash
# A real network partition of one gaffer node (issue 11 item 7), as root: node `a` runs in its
# own network namespace, reaching PostgreSQL over a veth pair; nodes `b` and `c` run beside
# the database. While `a` runs attempts, its link is cut for longer than its lease, then
# restored. Checked, through the database and the nodes' own output:
#   - a's attempts are recorded interrupted by the adopter and run again on b or c;
#   - the job run ends succeeded, every task run with exactly one succeeded attempt;
#   - no outcome of a's is accepted after its lease ran out (its attempts stay interrupted);
#   - after the link is back, a finds its lease lost, kills its orphaned processes (none of
#     a's task processes remain) and rejoins under a new node id.
#
#   sudo scripts/cluster-partition.sh          (GAFFER=path/to/gaffer to use another build)
#
# Needs iproute2 (`ip netns`), PostgreSQL (scripts/pg-local.sh installs it). Leaves nothing
# behind: the namespace, the veth pair, the nodes and the database server are removed on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "run as root (ip netns)" >&2; exit 2; }
command -v ip >/dev/null || { echo "iproute2 is missing: apt-get install iproute2" >&2; exit 2; }

NS=gaffer-part HOST_IF=gp-host NS_IF=gp-ns NET=10.231.0
LEASE_S="${LEASE_S:-6}" TASKS="${TASKS:-12}" SLEEP_S="${SLEEP_S:-4}"
if [ -z "${GAFFER:-}" ]; then
  (cd "$ROOT" && cargo build --quiet)
  GAFFER="$ROOT/${CARGO_TARGET_DIR:-target}/debug/gaffer"
fi
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gaffer-partition-XXXXXX")"
chmod 755 "$TMP"
export BASE="$TMP/pg" PORT="${PORT:-54332}" LISTEN="127.0.0.1,$NET.1" TRUST_NET="$NET.0/24"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  "$ROOT/scripts/pg-local.sh" stop || true
  pkill -f "gaffer-partition-marker-$$" 2>/dev/null || true
  if [ "$rc" = 0 ]; then rm -rf "$TMP"; else echo "kept $TMP for a look (node logs: $TMP/*.log)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT

say() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

say "network namespace $NS with $NET.2 ↔ $NET.1"
ip netns del "$NS" 2>/dev/null || true
ip link del "$HOST_IF" 2>/dev/null || true
ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add "$NET.1/24" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip netns exec "$NS" ip addr add "$NET.2/24" dev "$NS_IF"
ip netns exec "$NS" ip link set "$NS_IF" up
ip netns exec "$NS" ip link set lo up

"$ROOT/scripts/pg-local.sh" start >/dev/null
URL_HOST="postgres://postgres@127.0.0.1:$PORT/gaffer"
URL_NS="postgres://postgres@$NET.1:$PORT/gaffer"
sql() { psql "$URL_HOST" -tAc "$1"; }

cat >"$TMP/flow.toml" <<EOF
[settings]
workers = 2
lease = "${LEASE_S}s"

[jobs.spread]
[jobs.spread.tasks.work]
for_each = [$(seq -s, 1 "$TASKS")]
run = "sleep $SLEEP_S # gaffer-partition-marker-$$"
retry = { max_attempts = 3, initial_interval = "100ms" }
EOF

node() { # name, url, netns (optional)
  local name=$1 url=$2 ns=${3:-}
  mkdir -p "$TMP/$name"
  local cmd=("$GAFFER" serve "$TMP/flow.toml" --store "$url" --state-dir "$TMP/$name/.gaffer" --node "$name")
  if [ -n "$ns" ]; then cmd=(ip netns exec "$ns" "${cmd[@]}"); fi
  "${cmd[@]}" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
}
node a "$URL_NS" "$NS"
node b "$URL_HOST"
node c "$URL_HOST"
for _ in $(seq 100); do
  [ "$(sql "SELECT count(*) FROM nodes WHERE lease_until > now()")" = 3 ] && break
  sleep 0.2
done
[ "$(sql "SELECT count(*) FROM nodes WHERE lease_until > now()")" = 3 ] || fail "3 live nodes (see $TMP/*.log)"
A_ID="$(sql "SELECT id FROM nodes WHERE name = 'a'")"
say "3 nodes live; a is node $A_ID"

"$GAFFER" submit spread --store "$URL_HOST" --state-dir "$TMP/b/.gaffer" >/dev/null
for _ in $(seq 100); do
  [ "$(sql "SELECT count(*) FROM task_runs WHERE state = 'running' AND node = $A_ID")" -gt 0 ] && break
  sleep 0.1
done
ON_A="$(sql "SELECT string_agg(id::text, ',') FROM task_runs WHERE state = 'running' AND node = $A_ID")"
[ -n "$ON_A" ] || fail "a never ran an attempt"
say "a runs task runs $ON_A; cutting its link for $((LEASE_S * 2)) s"
ip link set "$HOST_IF" down
sleep $((LEASE_S * 2))
say "link restored"
ip link set "$HOST_IF" up

for _ in $(seq 300); do
  state="$(sql "SELECT state FROM job_runs ORDER BY id DESC LIMIT 1")"
  [ "$state" = succeeded ] && break
  case "$state" in failed|cancelled) fail "the job run ended $state" ;; esac
  sleep 0.2
done
[ "$state" = succeeded ] || fail "the job run did not end (state $state)"
say "the job run succeeded"

bad="$(sql "SELECT count(*) FROM task_runs WHERE kind = 0 AND state <> 'succeeded'")"
[ "$bad" = 0 ] || fail "$bad task runs did not succeed"
# Every task run that was on a when the link went down ran again elsewhere (an attempt the
# owner ran itself has no `node`: only a remote completion records one).
again="$(sql "SELECT count(DISTINCT task_run) FROM attempts WHERE task_run IN ($ON_A) AND n > 1 AND node IS DISTINCT FROM $A_ID")"
[ "$again" = "$(echo "$ON_A" | tr , '\n' | wc -l)" ] || fail "only $again of a's task runs ran again elsewhere"
# No attempt of node a's was accepted after the cut as a success.
accepted="$(sql "SELECT count(*) FROM attempts WHERE task_run IN ($ON_A) AND node = $A_ID AND n = (SELECT max(n) FROM attempts x WHERE x.task_run = attempts.task_run)")"
[ "$accepted" = 0 ] || fail "$accepted outcomes of a were taken after its lease ran out"

for _ in $(seq 50); do
  [ "$(sql "SELECT count(*) FROM nodes WHERE name = 'a' AND id <> $A_ID AND lease_until > now()")" = 1 ] && break
  sleep 0.2
done
[ "$(sql "SELECT count(*) FROM nodes WHERE name = 'a' AND id <> $A_ID AND lease_until > now()")" = 1 ] ||
  fail "a did not rejoin under a new id (see $TMP/a.log)"
sleep 1
if pgrep -f "sleep $SLEEP_S # gaffer-partition-marker-$$" >/dev/null; then
  ps -ef | grep "gaffer-partition-marker-$$" | grep -v grep >&2
  fail "processes of a's orphaned attempts are still running"
fi
say "a rejoined as node $(sql "SELECT id FROM nodes WHERE name = 'a' AND lease_until > now()") and left no orphan running"
say "PASS"
