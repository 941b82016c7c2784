#!/usr/bin/env bash
# A throw-away PostgreSQL for trying a gaffer cluster on one machine (README "Running on several
# machines"), the partition script and the cluster benchmarks. Debian's `postgresql` package
# only (installed if missing, as root); the server runs as user `postgres` (it refuses root).
#
#   scripts/pg-local.sh start     # prints the store URL: postgres://postgres@127.0.0.1:54331/gaffer
#   scripts/pg-local.sh url       # the same URL, if it runs
#   scripts/pg-local.sh stop      # stops it (the data stays under $BASE for the next start)
#   scripts/pg-local.sh destroy   # stops it and removes $BASE
#
# BASE (default ${TMPDIR:-/tmp}/gaffer-pg-local), PORT (54331), LISTEN (127.0.0.1; a comma-
# separated list, e.g. "127.0.0.1,10.231.0.1" for the partition script), TRUST_NET (a CIDR that
# may connect without a password besides loopback, e.g. 10.231.0.0/24).
set -euo pipefail
BASE="${BASE:-${TMPDIR:-/tmp}/gaffer-pg-local}"
PORT="${PORT:-54331}"
LISTEN="${LISTEN:-127.0.0.1}"
TRUST_NET="${TRUST_NET:-}"
URL="postgres://postgres@127.0.0.1:$PORT/gaffer"

pgbin() {
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 2; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin
  bin="$(pgbin)"
  mkdir -p "$BASE"
  chmod 755 "$BASE"
  if [ ! -s "$BASE/data/PG_VERSION" ]; then
    if [ "$(id -u)" = 0 ]; then install -d -o postgres -g postgres -m 700 "$BASE/data"; else install -d -m 700 "$BASE/data"; fi
    as_pg "$bin/initdb" -D "$BASE/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  # Rewritten at each start, so LISTEN/TRUST_NET/PORT take effect.
  as_pg sh -c "cat > '$BASE/data/gaffer.conf'" <<CONF
listen_addresses = '$LISTEN'
port = $PORT
unix_socket_directories = '$BASE/data'
max_connections = 200
CONF
  grep -q "include_if_exists = 'gaffer.conf'" "$BASE/data/postgresql.conf" ||
    as_pg sh -c "echo \"include_if_exists = 'gaffer.conf'\" >> '$BASE/data/postgresql.conf'"
  if [ -n "$TRUST_NET" ] && ! grep -q "$TRUST_NET" "$BASE/data/pg_hba.conf"; then
    as_pg sh -c "echo 'host all all $TRUST_NET trust' >> '$BASE/data/pg_hba.conf'"
  fi
  if ! as_pg "$bin/pg_ctl" -D "$BASE/data" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$BASE/data" -l "$BASE/data/server.log" -w -t 60 start >/dev/null
  fi
  "$bin/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'gaffer'" postgres |
    grep -q 1 || "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U postgres gaffer
  echo "$URL"
}

stop() {
  local bin
  bin="$(pgbin)"
  [ -s "$BASE/data/PG_VERSION" ] || return 0
  as_pg "$bin/pg_ctl" -D "$BASE/data" -m fast stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  url) "$(pgbin)/pg_isready" -h 127.0.0.1 -p "$PORT" >/dev/null && echo "$URL" ;;
  stop) stop ;;
  destroy) stop; rm -rf "$BASE" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
