# Shell helpers shared by the cluster benchmark (scripts/bench.sh, section `cluster`) and the
# cluster soak (scripts/soak-cluster.sh): a private durable PostgreSQL (scripts/pg-local.sh with
# its own dir and port: PostgreSQL's defaults, fsync on, as pg-probe measured), a fresh database
# per measurement, `gaffer serve` nodes, and the figures read from the server's statistics.
# Sourced, not run. The caller sets GAFFER (the binary) and calls cl_pg_stop at exit.

CL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CL_PG_BASE="" CL_PG_PORT="" CL_PG_BIN=""
CL_NODE_PIDS=()

# The newest installed PostgreSQL's bin dir, or nothing (then the caller skips and says why).
cl_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

cl_free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts the private server: its data under a temp dir of its own on a free port, removed by
# cl_pg_stop; or, with BASE and PORT set (a machine shared with others: each their own port),
# under BASE on PORT, only stopped by cl_pg_stop (the data stays for a look afterwards).
CL_PG_KEEP=0
cl_pg_start() {
  CL_PG_BIN="$(cl_pg_bin)"
  if [ -n "${BASE:-}" ] && [ -n "${PORT:-}" ]; then
    CL_PG_BASE="$BASE" CL_PG_PORT="$PORT" CL_PG_KEEP=1
  else
    CL_PG_BASE="$(mktemp -d "${TMPDIR:-/tmp}/gaffer-cluster-pg.XXXXXX")"
    CL_PG_PORT="$(cl_free_port)"
  fi
  BASE="$CL_PG_BASE" PORT="$CL_PG_PORT" "$CL_ROOT/scripts/pg-local.sh" start >/dev/null
}

cl_pg_stop() {
  [ -n "$CL_PG_BASE" ] || return 0
  local how=destroy
  [ "$CL_PG_KEEP" = 1 ] && how=stop
  BASE="$CL_PG_BASE" PORT="$CL_PG_PORT" "$CL_ROOT/scripts/pg-local.sh" "$how" >/dev/null 2>&1 || true
  CL_PG_BASE=""
}

# cl_sql DB SQL: unaligned, tuples only, `|` between columns.
cl_sql() { "$CL_PG_BIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CL_PG_PORT" -U postgres -d "$1" -c "$2"; }

# A fresh database; prints its name (use cl_url for the --store URL).
# (Often called in a subshell, `db=$(cl_new_db)`: the name cannot come from a counter.)
cl_new_db() {
  local name="b$(date +%s%N)"
  cl_sql postgres "CREATE DATABASE $name" >/dev/null
  echo "$name"
}
cl_url() { echo "postgres://postgres@127.0.0.1:$CL_PG_PORT/$1"; }

# cl_serve DB WORKFLOW NAME WORKERS STATE_DIR [extra args…]: a headless `gaffer serve` node in
# the background (pid appended to CL_NODE_PIDS; output appended to STATE_DIR.log), returning
# once its control socket answers.
cl_serve() {
  local db="$1" wf="$2" name="$3" workers="$4" state="$5"
  shift 5
  "$GAFFER" serve "$wf" --headless --store "$(cl_url "$db")" --node "$name" --workers "$workers" \
    --state-dir "$state" "$@" >>"$state.log" 2>&1 &
  CL_NODE_PIDS+=($!)
  local deadline=$((SECONDS + 30))
  until python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$state/gaffer.sock" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "${CL_NODE_PIDS[-1]}" 2>/dev/null; then
      echo "gaffer serve --node $name did not start:" >&2; sed 's/^/[serve] /' "$state.log" >&2; return 1
    fi
    sleep 0.05
  done
}

# cl_socket_up STATE_DIR: the node's control socket answers.
cl_socket_up() { python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1/gaffer.sock" 2>/dev/null; }

# cl_forget_node PID: a node that is gone (killed, or exited) is no longer one cl_stop_nodes stops.
cl_forget_node() {
  local p kept=()
  for p in "${CL_NODE_PIDS[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
  CL_NODE_PIDS=("${kept[@]}")
}

# Stops every node cl_serve started (SIGTERM: a graceful stop, the lease ends) and waits for
# them; one still there after CL_STOP_WAIT seconds is killed (SIGKILL), said on stderr, and the
# return status is 1.
CL_STOP_WAIT="${CL_STOP_WAIT:-30}"
cl_stop_nodes() {
  local p hung=0 deadline=$((SECONDS + CL_STOP_WAIT))
  for p in "${CL_NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CL_NODE_PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ -z "$(awk '$3 == "Z"' "/proc/$p/stat" 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$p" 2>/dev/null && [ -z "$(awk '$3 == "Z"' "/proc/$p/stat" 2>/dev/null)" ]; then
      echo "cluster: gaffer serve (pid $p) still running ${CL_STOP_WAIT}s after SIGTERM: killed (SIGKILL)" >&2
      kill -KILL "$p" 2>/dev/null || true
      hung=1
    fi
    wait "$p" 2>/dev/null || true
  done
  CL_NODE_PIDS=()
  return "$hung"
}

# Transactions committed in DB so far (pg_stat_database; read after the sessions ended, so
# their counts were flushed).
cl_commits() { cl_sql "$1" "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }

# The queue tables' sequential scans: "table=scans/rows-read …" (pg-probe RESULTS.md, plan traps).
CL_QUEUE_TABLES="'task_runs','job_runs','attempts','node_mail'"
cl_seq_scans() {
  cl_sql "$1" "SELECT string_agg(relname || '=' || seq_scan || '/' || seq_tup_read, ' ' ORDER BY relname)
               FROM pg_stat_user_tables WHERE relname IN ($CL_QUEUE_TABLES)"
}
# Their sum, for a comparison.
cl_seq_scan_total() { cl_sql "$1" "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables WHERE relname IN ($CL_QUEUE_TABLES)"; }

cl_load() { cut -d' ' -f1-3 /proc/loadavg; }
