#!/usr/bin/env bash
# Cluster soak (issue 11 item 9): three `gaffer serve` nodes on a private durable PostgreSQL
# (scripts/pg-local.sh, its own dir and port) under a steady workload for MINUTES, checking that
# the queue tables' sequential scans (pg_stat_user_tables.seq_scan) do not grow as the tables
# do: every statement of the claim/complete/mail/adoption path must stay on its index
# (pg-probe RESULTS.md, "plan traps"). Prints the figures at the start and the end; exit 1 if
# a queue table was scanned sequentially in between, or a job run did not succeed.
#
#   scripts/soak-cluster.sh                    # 30 minutes (release build)
#   MINUTES=3 scripts/soak-cluster.sh          # a short one
#
# Knobs: MINUTES=30, WARMUP=60 (s before the first reading: the nodes joined, the tables hold
# rows and were analyzed once), EVERY=1 (s between submits), TASKS=20 (tasks `true` per job
# run, 4 workers per node), GAFFER=PATH (a binary, instead of building the tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-30}"
WARMUP="${WARMUP:-60}"
EVERY="${EVERY:-1}"
TASKS="${TASKS:-20}"

log() { printf '[soak] %s\n' "$*" >&2; }
# shellcheck source=scripts/cluster-lib.sh
. scripts/cluster-lib.sh
if [ -z "$(cl_pg_bin)" ]; then
  echo "soak-cluster: skipped: PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 0
fi
if [ -z "${GAFFER:-}" ]; then
  log "building (cargo build --release)"
  cargo build --release --quiet
  GAFFER="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/gaffer"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gaffer-soak-cluster.XXXXXX")"
cleanup() {
  cl_stop_nodes
  cl_pg_stop
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

cl_pg_start
DB=$(cl_new_db)
URL=$(cl_url "$DB")
awk -v n="$TASKS" 'BEGIN { printf "[settings]\nworkers = 4\nlease = \"10s\"\n\n"
  for (i = 0; i < n; i++) printf "[jobs.steady.tasks.t%d]\nrun = \"true\"\n", i }' >"$WORK/soak.toml"
for i in 1 2 3; do cl_serve "$DB" "$WORK/soak.toml" "n$i" 4 "$WORK/n$i"; done
log "3 nodes on $URL; a job run of $TASKS tasks \`true\` submitted every ${EVERY}s, round robin over the nodes, for $MINUTES min"

submitted=0
submit() { # through node i's socket (it owns the job run; any node's workers run its tasks)
  local i=$((submitted % 3 + 1))
  "$GAFFER" submit steady --state-dir "$WORK/n$i" --store "$URL" >/dev/null 2>>"$WORK/submit.err" &&
    submitted=$((submitted + 1))
}
rows() { cl_sql "$DB" "SELECT string_agg(relname || '=' || n_live_tup, ' ' ORDER BY relname) FROM pg_stat_user_tables WHERE relname IN ($CL_QUEUE_TABLES)"; }

end=$((SECONDS + WARMUP))
while [ $SECONDS -lt $end ]; do submit; sleep "$EVERY"; done
START_SCANS=$(cl_seq_scans "$DB"); START_TOTAL=$(cl_seq_scan_total "$DB")
log "start ($(date -u +%H:%M:%S), $submitted job runs, load $(cl_load)): seq scans (scans/rows read) $START_SCANS; live rows $(rows)"

end=$((SECONDS + MINUTES * 60)); next_report=$((SECONDS + 300))
while [ $SECONDS -lt $end ]; do
  submit; sleep "$EVERY"
  if [ $SECONDS -ge $next_report ]; then
    log "$(date -u +%H:%M:%S): $submitted job runs, seq scans $(cl_seq_scans "$DB"); live rows $(rows); load $(cl_load)"
    next_report=$((SECONDS + 300))
  fi
done

# Let the last job runs end.
deadline=$((SECONDS + 120))
while [ $SECONDS -lt $deadline ]; do
  open=$(cl_sql "$DB" "SELECT count(*) FROM job_runs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')")
  [ "$open" = 0 ] && break
  sleep 1
done
END_SCANS=$(cl_seq_scans "$DB"); END_TOTAL=$(cl_seq_scan_total "$DB")
stop_hung=0
cl_stop_nodes 2>"$WORK/stop.err" || stop_hung=1
states=$(cl_sql "$DB" "SELECT string_agg(state || '=' || n, ' ') FROM (SELECT state, count(*) n FROM job_runs GROUP BY state ORDER BY state) s")
spread=$(cl_sql "$DB" "SELECT string_agg(coalesce(n.name, '?') || '=' || c, ' ') FROM (SELECT a.node, count(*) c FROM attempts a GROUP BY a.node) x LEFT JOIN nodes n ON n.id = x.node")
log "end ($(date -u +%H:%M:%S), load $(cl_load)): seq scans $END_SCANS; live rows $(rows)"
echo "soak-cluster: $MINUTES min, $submitted job runs × $TASKS tasks submitted, job runs by state: $states; attempts by recording node (NULL = the owner's own): ${spread:-none}"
echo "soak-cluster: queue-table sequential scans (scans/rows read) at start: $START_SCANS"
echo "soak-cluster: at end:   $END_SCANS"
fail=0
if [ "$END_TOTAL" -gt "$START_TOTAL" ]; then
  echo "soak-cluster: FAIL: $((END_TOTAL - START_TOTAL)) sequential scans of the queue tables during the soak"
  fail=1
else
  echo "soak-cluster: ok: no sequential scan of the queue tables grew"
fi
if [ "$(cl_sql "$DB" "SELECT count(*) FROM job_runs WHERE state <> 'succeeded'")" != 0 ]; then
  echo "soak-cluster: FAIL: not every job run succeeded ($states)"; fail=1
fi
if [ "$stop_hung" = 1 ]; then
  echo "soak-cluster: FAIL: a graceful stop (SIGTERM) hung: $(cat "$WORK/stop.err")"; fail=1
fi
[ -s "$WORK/submit.err" ] && { echo "soak-cluster: submit errors:"; sort "$WORK/submit.err" | uniq -c | head; }
exit "$fail"
