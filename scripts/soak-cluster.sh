#!/usr/bin/env bash
# Cluster soak (issue 11 item 9): three `gaffer serve` nodes on a private durable PostgreSQL
# (scripts/pg-local.sh, its own dir and port) under a steady workload for MINUTES, checking that
# the queue tables' sequential scans do not keep growing as the tables do: every statement of
# the claim/complete/mail/adoption path must stay on its index once a table is more than a few
# pages (pg-probe RESULTS.md, "plan traps"), and that the cluster ends clean.
#
#   scripts/soak-cluster.sh                    # 30 minutes (release build)
#   MINUTES=3 scripts/soak-cluster.sh          # a short one
#
# It samples pg_stat_user_tables (seq_scan, seq_tup_read, idx_scan, n_live_tup) and each queue
# table's size in pages every SAMPLE seconds, prints the figures per table (start, half-way,
# end), and exits 1 when
#  - a queue table's sequential scans keep growing in the late half of the run: they grew in at
#    least half of the sample intervals of the second half in which the table was not tiny.
#    Tiny, at the interval's end: under TINY_PAGES = 8 pages (64 kB), or under TINY_ROWS = 200
#    live rows. Why: for a table of a few pages PostgreSQL rightly prefers a sequential scan
#    (reading 8 pages in order costs about what one index descent and its heap fetch cost at
#    random_page_cost 4), and a table of a few hundred live rows at most is one whose size does
#    not grow with the run: `node_mail` holds the letters in flight (tens), its pages are churn
#    that vacuum reclaims, and the drain reads every letter to an owner by design. A plan that
#    scans a table that grows with the run (job_runs, task_runs, attempts) gets slower with every
#    job run, and shows up as scans in most intervals of the late half, when those tables are
#    past both marks. A scan now and then (someone's ad-hoc query, a plan chosen once after an
#    ANALYZE) is not a plan that keeps growing and does not fail the soak; the early half, when
#    every table is small, is not judged;
#  - a job run did not succeed, a task run is still `running` after the job runs ended, or a
#    node's graceful stop (SIGTERM) hung (cluster-lib.sh `cl_stop_nodes`: killed after 30 s).
# On failure the nodes' logs and the samples are kept in KEEP (default /tmp/soak-cluster-<time>).
#
# Knobs: MINUTES=30, WARMUP=60 (s before the first reading: the nodes joined, the tables hold
# rows and were analyzed once), EVERY=1 (s between submits), TASKS=20 (tasks `true` per job
# run, 4 workers per node), SAMPLE=30 (s between samples), TINY_PAGES=8, TINY_ROWS=200, GAFFER=PATH (a binary,
# instead of building the tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-30}"
WARMUP="${WARMUP:-60}"
EVERY="${EVERY:-1}"
TASKS="${TASKS:-20}"
SAMPLE="${SAMPLE:-30}"
TINY_PAGES="${TINY_PAGES:-8}"
TINY_ROWS="${TINY_ROWS:-200}"
KEEP="${KEEP:-/tmp/soak-cluster-$(date -u +%Y%m%dT%H%M%S)}"

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

# One sample of every queue table: "t|table|seq_scan|seq_tup_read|idx_scan|n_live_tup|pages",
# t in seconds since the first reading.
T0=$SECONDS
sample() {
  cl_sql "$DB" "SELECT $((SECONDS - T0)), relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0), n_live_tup,
                       pg_relation_size(relid) / 8192
                FROM pg_stat_user_tables WHERE relname IN ($CL_QUEUE_TABLES) ORDER BY relname" >>"$WORK/samples"
}

end=$((SECONDS + WARMUP))
while [ $SECONDS -lt $end ]; do submit; sleep "$EVERY"; done
T0=$SECONDS
sample
log "start ($(date -u +%H:%M:%S), $submitted job runs, load $(cl_load)): seq scans (scans/rows read) $(cl_seq_scans "$DB"); live rows $(rows)"
loads="$(cl_load | cut -d' ' -f1)"

end=$((SECONDS + MINUTES * 60)); next_report=$((SECONDS + 300)); next_sample=$((SECONDS + SAMPLE))
while [ $SECONDS -lt $end ]; do
  submit; sleep "$EVERY"
  if [ $SECONDS -ge $next_sample ]; then
    sample; loads="$loads $(cl_load | cut -d' ' -f1)"; next_sample=$((SECONDS + SAMPLE))
  fi
  if [ $SECONDS -ge $next_report ]; then
    log "$(date -u +%H:%M:%S): $submitted job runs, seq scans $(cl_seq_scans "$DB"); live rows $(rows); load $(cl_load)"
    next_report=$((SECONDS + 300))
  fi
done
sample # the last reading, before this script's own end-of-run queries
SOAK_END=$(date -u +%H:%M:%S)

# Let the last job runs end.
deadline=$((SECONDS + 120))
while [ $SECONDS -lt $deadline ]; do
  open=$(cl_sql "$DB" "SELECT count(*) FROM job_runs WHERE state = 'running'")
  [ "$open" = 0 ] && break
  sleep 1
done
stuck_tasks=$(cl_sql "$DB" "SELECT count(*) FROM task_runs WHERE state = 'running'")
stuck_list=$(cl_sql "$DB" "SELECT string_agg(format('t%s (j%s, node %s, attempt %s)', id, job_run, coalesce(node::text, '-'), attempt), ', ')
                           FROM (SELECT * FROM task_runs WHERE state = 'running' ORDER BY id LIMIT 10) t")
open_list=$(cl_sql "$DB" "SELECT string_agg(format('j%s (owner %s, epoch %s)', id, coalesce(owner_node::text, '-'), owner_epoch), ', ')
                          FROM (SELECT * FROM job_runs WHERE state = 'running' ORDER BY id LIMIT 10) j")
stop_hung=0
cl_stop_nodes 2>"$WORK/stop.err" || stop_hung=1
states=$(cl_sql "$DB" "SELECT string_agg(state || '=' || n, ' ') FROM (SELECT state, count(*) n FROM job_runs GROUP BY state ORDER BY state) s")
spread=$(cl_sql "$DB" "SELECT string_agg(coalesce(n.name, 'NULL') || '=' || c, ' ') FROM (SELECT a.node, count(*) c FROM attempts a GROUP BY a.node) x LEFT JOIN nodes n ON n.id = x.node")
log "end ($SOAK_END, load $(cl_load)): seq scans $(cl_seq_scans "$DB"); live rows $(rows)"
echo "soak-cluster: $MINUTES min ($(date -u +%F) until $SOAK_END UTC), $submitted job runs × $TASKS tasks submitted, load (1-min, per sample) $(echo "$loads" | tr ' ' '\n' | sort -g | sed -n '1p;$p' | paste -sd'-')"
echo "soak-cluster: job runs by state: $states; attempts by recording node: ${spread:-none}"

# The verdict on the samples (the rule is the header's).
fail=0
python3 - "$WORK/samples" "$TINY_PAGES" "$TINY_ROWS" >"$WORK/verdict" <<'EOF' || fail=1
import sys
rows = [line.split("|") for line in open(sys.argv[1]) if line.strip()]
tiny_pages, tiny_rows = int(sys.argv[2]), int(sys.argv[3])
by_table = {}
for t, rel, seq, seq_rows, idx, live, pages in rows:
    by_table.setdefault(rel, []).append((int(t), int(seq), int(seq_rows), int(idx), int(live), int(pages)))
failed = False
for rel, s in sorted(by_table.items()):
    half = s[-1][0] / 2
    mid = next(x for x in s if x[0] >= half)
    late = [(a, b) for a, b in zip(s, s[1:]) if a[0] >= half]
    judged = [(a, b) for a, b in late if b[5] >= tiny_pages and b[4] >= tiny_rows]
    grew = [(a, b) for a, b in judged if b[1] > a[1]]
    def at(x):
        return f"seq {x[1]}/{x[2]} rows, idx {x[3]}, live {x[4]}, {x[5]} pages"
    print(f"{rel}: start {at(s[0])}; half-way ({mid[0]} s) {at(mid)}; end ({s[-1][0]} s) {at(s[-1])}")
    verdict = (f"late half: seq scans +{s[-1][1] - mid[1]}, idx scans +{s[-1][3] - mid[3]}; "
               f"seq scans grew in {len(grew)} of {len(judged)} intervals judged ({len(late)} late, "
               f"{len(late) - len(judged)} with the table tiny: under {tiny_pages} pages or {tiny_rows} live rows)")
    if judged and 2 * len(grew) >= len(judged):
        print(f"  FAIL: {verdict}: sequential scans keep growing")
        failed = True
    else:
        print(f"  ok: {verdict}")
sys.exit(1 if failed else 0)
EOF
sed 's/^/soak-cluster: /' "$WORK/verdict"
if [ "$(cl_sql "$DB" "SELECT count(*) FROM job_runs WHERE state <> 'succeeded'")" != 0 ]; then
  echo "soak-cluster: FAIL: not every job run succeeded ($states; still running: ${open_list:-none})"; fail=1
fi
if [ "$stuck_tasks" != 0 ]; then
  echo "soak-cluster: FAIL: $stuck_tasks task runs still \`running\` after the job runs ended: $stuck_list"; fail=1
fi
if [ "$stop_hung" = 1 ]; then
  echo "soak-cluster: FAIL: a graceful stop (SIGTERM) hung: $(cat "$WORK/stop.err")"; fail=1
fi
[ -s "$WORK/submit.err" ] && { echo "soak-cluster: submit errors:"; sort "$WORK/submit.err" | uniq -c | head; }
if [ "$fail" = 1 ]; then
  mkdir -p "$KEEP" && cp "$WORK"/*.log "$WORK/samples" "$WORK/soak.toml" "$KEEP/" 2>/dev/null || true
  echo "soak-cluster: FAIL; the nodes' logs and the samples are in $KEEP"
else
  echo "soak-cluster: PASS"
fi
exit "$fail"
