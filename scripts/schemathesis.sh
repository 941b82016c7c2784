#!/usr/bin/env bash
# The control API checked by a tool nobody here wrote (issue 9, item 10). Installs schemathesis
# from PyPI into a venv under target/, starts `gaffer serve --listen 127.0.0.1:PORT` on a temp
# state dir with a small workflow (one job run already done, so ids exist), and runs
# schemathesis against the OpenAPI document the instance serves (`/v1/openapi.json`) with its
# default checks and the bearer token. Exits with schemathesis's status. Traffic goes to
# 127.0.0.1 only. A few minutes on 2 cores.
#
#   scripts/schemathesis.sh                     # MAX_EXAMPLES=25 per operation
#   MAX_EXAMPLES=100 scripts/schemathesis.sh    # longer
#
# `/v1/events` is a server-sent event stream that never ends: schemathesis reads it for one
# second per request (`request-timeout` for that operation) and checks what came.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES="${MAX_EXAMPLES:-25}"
VERSION="${SCHEMATHESIS_VERSION:-4.32.5}" # pinned: the same checks on every run
TARGET_DIR="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)"
VENV="$TARGET_DIR/schemathesis-venv"

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "[schemathesis] installing schemathesis $VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi
cargo build --quiet
GAFFER="$TARGET_DIR/debug/gaffer"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gaffer-schemathesis.XXXXXX")"
PID=""
trap '[ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }; rm -rf "$WORK"' EXIT

cat >"$WORK/workflow.toml" <<'EOF'
[queues.slow]
concurrency = 1

[jobs.build.tasks.compile]
run = 'echo compiling; echo "cost usd=0.01 input_tokens=10 output_tokens=5 model=m" >&3'

[jobs.build.tasks.test]
run = 'echo testing'
needs = ["compile"]

[jobs.deploy]
params = { target = "staging" }

[jobs.deploy.tasks.push]
run = 'echo "pushing to {{ params.target }}"'
queue = "slow"
EOF

cd "$WORK"
"$GAFFER" run workflow.toml --headless --state-dir "$WORK/state" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; exit 1; }
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$GAFFER" serve workflow.toml --headless --state-dir "$WORK/state" --listen "127.0.0.1:$PORT" >"$WORK/serve.out" 2>&1 &
PID=$!
for _ in $(seq 100); do
  [ -s "$WORK/state/token" ] && curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/status" && break
  sleep 0.1
done
TOKEN="$(cat "$WORK/state/token")"

# Ids and queues that exist, used half of the time so that requests reach past the 404s.
cat >"$WORK/schemathesis.toml" <<'EOF'
[dictionaries.targets]
values = ["1", "2", "3", "j1", "j2"]

[dictionaries.queues]
values = ["default", "slow"]

[dictionaries.ids]
values = [1, 2, 3]

[parameters]
"path.target" = { dictionary = "targets", probability = 0.5 }
"body.target" = { dictionary = "targets", probability = 0.5 }
"path.queue" = { dictionary = "queues", probability = 0.5 }
"path.id" = { dictionary = "ids", probability = 0.5 }

# An event stream never ends: read it for a second per request.
[[operations]]
include-path = "/v1/events"
request-timeout = 1
EOF

set +e
"$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "http://127.0.0.1:$PORT/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 10 \
  --seed "${SEED:-1}"
status=$?
set -e
if ! kill -0 "$PID" 2>/dev/null; then
  echo "[schemathesis] gaffer serve died during the run:" >&2
  cat "$WORK/serve.out" >&2
  exit 1
fi
exit "$status"
