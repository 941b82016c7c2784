#!/usr/bin/env bash
# Cluster soak (issue 11 item 9): three `gaffer serve` nodes on a private durable PostgreSQL
# (scripts/pg-local.sh, its own dir and port) under a steady workload for MINUTES, checking that
# the queue tables' sequential scans do not keep growing as the tables do: every statement of
# the claim/complete/mail/adoption path must stay on its index once a table is more than a few
# pages (pg-probe RESULTS.md, "plan traps"), and that the cluster ends clean.
#
#   scripts/soak-cluster.sh                    # 30 minutes (release build)
#   MINUTES=3 scripts/soak-cluster.sh          # a short one
#   KILLS=1 MINUTES=15 scripts/soak-cluster.sh # busier, and a node kill -9'd every 2 minutes
#
# KILLS=1: a busier mix, 2 job runs a second (EVERY=0.5) cycling over `steady` (TASKS=10 tasks
# `true`), `fan` (a list, a fan-out of 8 items over it, a join), `flaky` (fails its first
# attempt, retried), `slow` (twice: `sleep 4` then `sleep 1`: attempts running when a node dies),
# `handled` (a failure a transition handles: succeeds) and `doomed` (meant to fail: `exit 3`,
# one attempt, and a task that needs it, skipped); every KILL_EVERY=120 s one node, in turn,
# is killed with SIGKILL and started again as systemd would (assets/gaffer.service:
# Restart=on-failure, RestartSec=2): the same `--node` name and state dir, RESTART_SEC=2 s
# after it died, and again RESTART_SEC after each start that exits (a refused registration),
# until it serves. Submits go to the nodes that are up. Besides the checks below it fails
# when a killed node is not serving again within RESTART_LIMIT=120 s, a `doomed` run did not
# fail or another did not succeed, an attempt (task run, number) was started twice (two
# `task.started` events), or a task run has more than one succeeded attempt. It prints each
# kill: how long until the node served again and how many of its starts were refused; and how
# many attempt numbers two task processes were started under (each notes its task run and
# attempt in $WORK/marks): a claim whose node died before its owner heard it start is claimed
# again under the same number, nothing of the first having been recorded (at least once, SPEC
# §3; docs/cluster-design.md) — reported, not judged.
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
#  - a job run did not succeed (KILLS=1: a `doomed` one did not fail), a task run is still
#    `running` after the job runs ended, or a node's graceful stop (SIGTERM) hung
#    (cluster-lib.sh `cl_stop_nodes`: killed after 30 s).
# On failure the nodes' logs and the samples are kept in KEEP (default /tmp/soak-cluster-<time>).
#
# Knobs: MINUTES=30, WARMUP=60 (s before the first reading: the nodes joined, the tables hold
# rows and were analyzed once), EVERY=1 (s between submits; 0.5 with KILLS=1), TASKS=20 (tasks
# `true` per `steady` job run, 4 workers per node; 10 with KILLS=1), SAMPLE=30 (s between
# samples), TINY_PAGES=8, TINY_ROWS=200, GAFFER=PATH (a binary, instead of building the tree's),
# KILLS=0, KILL_EVERY=120, RESTART_SEC=2, RESTART_LIMIT=120, LEASE=10s. BASE and PORT: the
# private PostgreSQL's dir and port (scripts/pg-local.sh; default a temp dir and a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-30}"
WARMUP="${WARMUP:-60}"
KILLS="${KILLS:-0}"
if [ "$KILLS" = 1 ]; then EVERY="${EVERY:-0.5}" TASKS="${TASKS:-10}"; fi
EVERY="${EVERY:-1}"
TASKS="${TASKS:-20}"
KILL_EVERY="${KILL_EVERY:-120}"
RESTART_SEC="${RESTART_SEC:-2}"
RESTART_LIMIT="${RESTART_LIMIT:-120}"
LEASE="${LEASE:-10s}"
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
# KILLS=1: every task process notes its task run and attempt number in $WORK/marks first.
STEADY_RUN='"true"'
[ "$KILLS" = 1 ] && STEADY_RUN="'echo \"\$GAFFER_TASK_RUN_ID \$GAFFER_ATTEMPT\" >> $WORK/marks'"
awk -v n="$TASKS" -v lease="$LEASE" -v run="$STEADY_RUN" 'BEGIN { printf "[settings]\nworkers = 4\nlease = \"%s\"\n\n", lease
  for (i = 0; i < n; i++) printf "[jobs.steady.tasks.t%d]\nrun = %s\n", i, run }' >"$WORK/soak.toml"
MIX=(steady)
if [ "$KILLS" = 1 ]; then
  # A kill interrupts the attempts running on the node: each is retried (`interrupted`), so
  # every task has attempts to spare; `doomed` and `handled` fail on purpose, once.
  sed "s|MARK|echo \"\$GAFFER_TASK_RUN_ID \$GAFFER_ATTEMPT\" >> $WORK/marks|" >>"$WORK/soak.toml" <<'TOML'
[defaults]
retry = { max_attempts = 6, initial_interval = "500ms", max_interval = "2s" }

[jobs.fan.tasks.list]
run = 'MARK; echo "output xs=[1,2,3,4,5,6,7,8]" >&3'
[jobs.fan.tasks.each]
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }}"
args = ["sh", "-c", 'MARK; sleep 0.2; test "$1" -ge 1', "sh", "{{ item }}"]
[jobs.fan.tasks.after]
needs = ["each"]
run = 'MARK'

[jobs.flaky.tasks.t]
run = 'MARK; [ "$GAFFER_ATTEMPT" -ge 2 ] || exit 1'

[jobs.slow.tasks.a]
run = 'MARK; sleep 4'
[jobs.slow.tasks.b]
needs = ["a"]
run = 'MARK; sleep 1'

[jobs.handled.tasks.t]
run = 'MARK; exit 4'
retry = { max_attempts = 1 }
next = [{ on = "failure", do = ["recover"] }]
[jobs.handled.tasks.recover]
run = 'MARK'

[jobs.doomed.tasks.t]
run = 'MARK; exit 3'
retry = { max_attempts = 1 }
[jobs.doomed.tasks.then]
needs = ["t"]
run = 'MARK'
TOML
  MIX=(steady fan flaky slow steady handled fan slow flaky doomed)
fi
# PID[i]: node n$i's serve, empty while it is down.
PID=("")
for i in 1 2 3; do cl_serve "$DB" "$WORK/soak.toml" "n$i" 4 "$WORK/n$i"; PID[i]="${CL_NODE_PIDS[-1]}"; done
log "3 nodes on $URL; a job run (${MIX[*]}, in turn; \`steady\`: $TASKS tasks \`true\`) submitted every ${EVERY}s, round robin over the nodes up, for $MINUTES min"
[ "$KILLS" = 1 ] && log "a node kill -9'd every ${KILL_EVERY}s, in turn, started again ${RESTART_SEC}s later under the same name (as systemd's Restart=on-failure)"

submitted=0
submit() { # through node i's socket (it owns the job run; any node's workers run its tasks)
  local k i=1
  for k in 0 1 2; do
    i=$(((submitted + k) % 3 + 1))
    [ -n "${PID[i]}" ] && break
  done
  local job="${MIX[$((submitted % ${#MIX[@]}))]}"
  "$GAFFER" submit "$job" --state-dir "$WORK/n$i" --store "$URL" >/dev/null 2>>"$WORK/submit.err" &&
    submitted=$((submitted + 1))
}

# KILLS=1: the node being restarted (0: none), the serve starting for it, and the figures.
down=0 down_since=0 restart_at=0 starting="" refused=0 kills=0 restarts="" restart_failed=""
next_kill=$((SECONDS + WARMUP + KILL_EVERY))
zombie_or_gone() { ! kill -0 "$1" 2>/dev/null || [ -n "$(awk '$3 == "Z"' "/proc/$1/stat" 2>/dev/null)" ]; }
kill_one() {
  local i=$((kills % 3 + 1))
  kill -KILL "${PID[i]}" 2>/dev/null || true
  wait "${PID[i]}" 2>/dev/null || true
  cl_forget_node "${PID[i]}"
  PID[i]="" down=$i down_since=$SECONDS restart_at=$((SECONDS + RESTART_SEC)) refused=0 kills=$((kills + 1))
  echo "=== $(date -u +%H:%M:%S) killed (SIGKILL) by the soak" >>"$WORK/n$i.log"
  log "$(date -u +%H:%M:%S): kill -9 n$i ($submitted job runs so far)"
}
# One step of the restart of node `down`, as systemd does it: start; a start that exits is
# refused, and tried again RESTART_SEC later; the node is back once its socket answers.
tend_restart() {
  [ "$down" = 0 ] && return 0
  local state="$WORK/n$down"
  if [ -n "$starting" ]; then
    if zombie_or_gone "$starting"; then
      wait "$starting" 2>/dev/null || true
      refused=$((refused + 1)) starting="" restart_at=$((SECONDS + RESTART_SEC))
    elif cl_socket_up "$state"; then
      PID[down]="$starting"; CL_NODE_PIDS+=("$starting")
      restarts="$restarts n$down:$((SECONDS - down_since))s/${refused}refused"
      log "$(date -u +%H:%M:%S): n$down serves again, $((SECONDS - down_since)) s after its kill ($refused starts refused)"
      down=0 starting=""
      return 0
    fi
  elif [ $SECONDS -ge $restart_at ]; then
    "$GAFFER" serve "$WORK/soak.toml" --headless --store "$URL" --node "n$down" --workers 4 \
      --state-dir "$state" >>"$state.log" 2>&1 &
    starting=$!
  fi
  if [ $((SECONDS - down_since)) -ge "$RESTART_LIMIT" ]; then
    restart_failed="n$down not serving ${RESTART_LIMIT}s after its kill ($refused starts refused)"
    log "$restart_failed"
    [ -n "$starting" ] && { kill -KILL "$starting" 2>/dev/null; wait "$starting" 2>/dev/null; }
    down=0 starting=""
  fi
  return 0
}
kills_tick() {
  [ "$KILLS" = 1 ] || return 0
  tend_restart
  if [ "$down" = 0 ] && [ -z "$restart_failed" ] && [ $SECONDS -ge $next_kill ]; then
    kill_one; next_kill=$((SECONDS + KILL_EVERY))
  fi
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
  submit; sleep "$EVERY"; kills_tick
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

# A node still down is brought back first (its runs are adopted meanwhile anyway).
while [ "$KILLS" = 1 ] && [ "$down" != 0 ]; do tend_restart; sleep 0.2; done
# Let the last job runs end.
deadline=$((SECONDS + 180))
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
# KILLS=1: the attempts started twice (two `task.started` events for one task run and number)
# and the task runs with more than one succeeded attempt, from the cluster's event stream.
# Schema 7 keeps the events of one append in a row (`lines`); older rows hold one in `json`.
ev="SELECT json::jsonb AS e FROM events WHERE json IS NOT NULL UNION ALL SELECT l::jsonb FROM events, unnest(lines) AS l"
doubled=$(cl_sql "$DB" "SELECT count(*) || coalesce(': ' || string_agg(format('t%s attempt %s ×%s', tr, a, n), ', '), '')
                        FROM (SELECT e->>'task_run' tr, e->>'attempt' a, count(*) n FROM ($ev) x
                              WHERE e->>'event' = 'task.started' GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1 LIMIT 10) d")
two_wins=$(cl_sql "$DB" "SELECT count(*) || coalesce(': ' || string_agg(format('t%s ×%s', tr, n), ', '), '')
                         FROM (SELECT e->>'task_run' tr, count(*) n FROM ($ev) x
                               WHERE e->>'event' = 'task.succeeded' GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 10) d")
# Attempt numbers started by more than one process (KILLS=1: each task process noted its own):
# none expected since a claim whose node died before its owner heard it start counts as that
# attempt, interrupted (`model::lease::dead_runner`); reported, not judged.
twice_started=0 marked=0
if [ -s "$WORK/marks" ]; then
  marked=$(wc -l <"$WORK/marks")
  twice_started=$(sort "$WORK/marks" | uniq -d | wc -l)
fi
interrupted=$(cl_sql "$DB" "SELECT count(*) FROM ($ev) x WHERE e->>'event' IN ('task.failed', 'task.retrying') AND e->>'reason' = 'interrupted'")
by_job=$(cl_sql "$DB" "SELECT string_agg(job || ':' || state || '=' || n, ' ' ORDER BY job, state) FROM (SELECT job, state, count(*) n FROM job_runs GROUP BY 1, 2) s")
unexpected=$(cl_sql "$DB" "SELECT count(*) || coalesce(': ' || string_agg(format('j%s %s %s', id, job, state), ', '), '')
                           FROM (SELECT id, job, state FROM job_runs
                                 WHERE (job = 'doomed' AND state <> 'failed') OR (job <> 'doomed' AND state <> 'succeeded')
                                 ORDER BY id LIMIT 10) u")
stop_hung=0
cl_stop_nodes 2>"$WORK/stop.err" || stop_hung=1
states=$(cl_sql "$DB" "SELECT string_agg(state || '=' || n, ' ') FROM (SELECT state, count(*) n FROM job_runs GROUP BY state ORDER BY state) s")
spread=$(cl_sql "$DB" "SELECT string_agg(coalesce(n.name, CASE WHEN x.node IS NULL THEN 'NULL' ELSE 'id ' || x.node || ' (gone)' END) || '=' || c, ' ' ORDER BY x.node)
                       FROM (SELECT a.node, count(*) c FROM attempts a GROUP BY a.node) x LEFT JOIN nodes n ON n.id = x.node")
log "end ($SOAK_END, load $(cl_load)): seq scans $(cl_seq_scans "$DB"); live rows $(rows)"
echo "soak-cluster: $MINUTES min ($(date -u +%F) until $SOAK_END UTC), $submitted job runs × $TASKS tasks submitted, load (1-min, per sample) $(echo "$loads" | tr ' ' '\n' | sort -g | sed -n '1p;$p' | paste -sd'-')"
echo "soak-cluster: job runs by state: $states; attempts by recording node: ${spread:-none}"
if [ "$KILLS" = 1 ]; then
  echo "soak-cluster: kills: $kills (every ${KILL_EVERY}s), back after (s since the kill / starts refused):${restarts:- none}"
  echo "soak-cluster: job runs by job and state: $by_job; attempts interrupted: $interrupted; task processes $marked, attempt numbers started by two processes $twice_started"
fi

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
if [ "${unexpected%%:*}" != 0 ]; then
  echo "soak-cluster: FAIL: job runs that did not end as meant (\`doomed\` failed, the rest succeeded): $unexpected ($states; still running: ${open_list:-none})"; fail=1
fi
if [ "${doubled%%:*}" != 0 ]; then
  echo "soak-cluster: FAIL: attempts started twice: $doubled"; fail=1
fi
if [ "${two_wins%%:*}" != 0 ]; then
  echo "soak-cluster: FAIL: task runs with more than one succeeded attempt: $two_wins"; fail=1
fi
if [ -n "$restart_failed" ]; then
  echo "soak-cluster: FAIL: $restart_failed"; fail=1
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
