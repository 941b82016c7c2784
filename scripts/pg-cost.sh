#!/usr/bin/env bash
# What one no-op task costs on PostgreSQL, client and server (issue 11 item 9; BENCHMARKS.md
# "The CPU and WAL of a no-op task on PostgreSQL"): runs `gaffer run --noop-executor --json
# --workers W --store URL` over WORKFLOW on a fresh database (a copy of a template migrated by the
# same binary, so the schema's creation is not counted) and prints one line of figures per run:
#
#   tasks/s, gaffer CPU µs/task (user+sys of the process), server CPU µs/task (every postgres
#   process: live ones' utime+stime plus the postmaster's reaped children), WAL bytes/task
#   (pg_current_wal_lsn), statements/task and commits/task (pg_stat_statements,
#   pg_stat_database), then the top statements by total time (with TOP=1).
#
#   URL=postgres://postgres@127.0.0.1:54342/gaffer GAFFER=target/release/gaffer \
#     scripts/pg-cost.sh WORKFLOW N [W] [label]
#
# The server must load pg_stat_statements (`shared_preload_libraries`). Linux /proc only.
set -euo pipefail
WF="$1"; N="$2"; W="${3:-64}"; LABEL="${4:-run}"
URL="${URL:?URL=postgres://… of the server}"
GAFFER="${GAFFER:-target/release/gaffer}"
BASEURL="${URL%/*}"
PSQL=(psql "$URL" -X -q -tA -v ON_ERROR_STOP=1)
sql() { psql "$BASEURL/${2:-postgres}" -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
TICK=$(getconf CLK_TCK)

postmaster=$(sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
postmaster=$(awk '{ print $4 }' "/proc/$postmaster/stat")
# Server CPU in ticks: every live postgres process (the postmaster's children and itself) plus
# what the postmaster reaped from children that exited (cutime + cstime).
server_ticks() {
  local total=0 p
  for p in $(pgrep -P "$postmaster") "$postmaster"; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $((total + $(awk '{ print $16 + $17 }' "/proc/$postmaster/stat")))
}

sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
sum=$(sha1sum "$GAFFER" | cut -c1-10)
tmpl="${TMPL:-tmpl_$sum}"
if [ "$(sql "SELECT count(*) FROM pg_database WHERE datname = '$tmpl'")" = 0 ]; then
  sql "CREATE DATABASE $tmpl" >/dev/null
  dir=$(mktemp -d)
  printf '[jobs.warm.tasks.t]\nrun = "true"\n' >"$dir/wf.toml"
  "$GAFFER" run "$dir/wf.toml" --noop-executor --store "$BASEURL/$tmpl" --node warm --state-dir "$dir/s" >/dev/null 2>&1
  sql "DO \$\$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'gaffer_schema' LOOP EXECUTE 'TRUNCATE ' || quote_ident(t) || ' CASCADE'; END LOOP; END \$\$" "$tmpl" >/dev/null
  rm -rf "$dir"
fi
db="c$(date +%s%N)"
sql "CREATE DATABASE $db TEMPLATE $tmpl" >/dev/null
dbid=$(sql "SELECT oid FROM pg_database WHERE datname = '$db'")
state=$(mktemp -d)
sleep 0.3
sql "SELECT pg_stat_statements_reset()" >/dev/null
c0=$(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
w0=$(sql "SELECT pg_current_wal_lsn()")
s0=$(server_ticks)
t0=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o "$state/time" "$GAFFER" run "$WF" --noop-executor --json --workers "$W" \
  --store "$BASEURL/$db" --node n1 --state-dir "$state/s" >"$state/out.jsonl" 2>"$state/err" || {
  tail -20 "$state/err" >&2; exit 1
}
t1=$(date +%s.%N)
sleep 0.6 # the backends' statistics reach the views; their exit reaches the postmaster
s1=$(server_ticks)
w1=$(sql "SELECT pg_current_wal_lsn()")
wal=$(sql "SELECT pg_wal_lsn_diff('$w1', '$w0')")
c1=$(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
ok=$(grep -c '"task.succeeded"' "$state/out.jsonl" || true)
[ "$ok" = "$N" ] || { echo "only $ok/$N task.succeeded" >&2; exit 1; }
read -r cu cs <"$state/time"
stmts=$(sql "SELECT sum(calls) FROM pg_stat_statements WHERE dbid = $dbid")
exec_ms=$(sql "SELECT round(sum(total_exec_time + total_plan_time)::numeric, 1) FROM pg_stat_statements WHERE dbid = $dbid")
awk -v l="$LABEL" -v n="$N" -v t0="$t0" -v t1="$t1" -v cu="$cu" -v cs="$cs" -v s="$((s1 - s0))" -v tick="$TICK" \
  -v wal="$wal" -v st="$stmts" -v c="$((c1 - c0))" -v ex="$exec_ms" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
  wall = t1 - t0
  printf "%-10s %6.0f tasks/s  gaffer %5.1f µs/task (u %.1f s %.1f)  server %5.1f µs/task  total %5.1f  WAL %6.0f B/task  stmts %.3f/task  commits %.3f/task  exec+plan %.1f µs/task  load %s\n",
    l, n / wall, (cu + cs) * 1e6 / n, cu * 1e6 / n, cs * 1e6 / n, s / tick * 1e6 / n, ((cu + cs) + s / tick) * 1e6 / n, wal / n, st / n, c / n, ex * 1000 / n, load
}'
if [ -n "${TOP:-}" ]; then
  sql "SELECT lpad(calls::text, 7) || lpad(round((total_exec_time + total_plan_time)::numeric, 1)::text, 9) || ' ms ' || lpad(round(wal_bytes / 1024.0)::text, 7) || ' KiB  ' || left(regexp_replace(query, '\s+', ' ', 'g'), 110)
       FROM pg_stat_statements WHERE dbid = $dbid ORDER BY total_exec_time + total_plan_time DESC LIMIT ${TOP_N:-14}"
fi
if [ -n "${WALDUMP:-}" ]; then
  # Which records the run's WAL holds (needs the data directory: WALDUMP=/path/to/data).
  "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_waldump" -p "$WALDUMP/pg_wal" -s "$w0" -e "$w1" --stats=record 2>/dev/null |
    awk 'NR <= 2 || $0 ~ /Total/ || ($5 + 0) > 0.5' | sed -n '1,40p'
fi
[ -n "${KEEP:-}" ] || sql "DROP DATABASE $db" >/dev/null
rm -rf "$state"
