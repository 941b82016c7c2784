#!/usr/bin/env bash
# Takes real screenshots of the TUI for the README: runs a demo workflow (jobs that succeed, a
# dead letter, a long task holding a narrow queue, fake agents reporting cost) under `gaffer run`
# in a 120x34 tmux pane, visits the views with the keys a person would press, captures each
# screen with its colours (`tmux capture-pane -e`) and renders it to assets/screenshots/*.png
# with scripts/ansi2png.py (Pillow, installed on demand into a venv under ~/.cache).
#
# Usage: scripts/screenshots.sh [path/to/gaffer]      (needs tmux, python3, DejaVu fonts)
#   KEEP_ANSI=dir   also keep the raw .ansi captures in dir
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${1:-target/debug/gaffer}
[[ -x $bin ]] || cargo build --quiet --locked
bin=$(realpath "$bin")
command -v tmux >/dev/null || { echo "screenshots: tmux is not installed"; exit 1; }
out=$root/assets/screenshots
mkdir -p "$out"

# Pillow, in a venv of its own.
venv=${GAFFER_SHOTS_VENV:-$HOME/.cache/gaffer-shots-venv}
if ! "$venv/bin/python" -c 'import PIL' 2>/dev/null; then
  echo "screenshots: installing Pillow into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pillow
fi

work=$(mktemp -d)
sock="gaffer-shots-$$"          # a tmux server of our own: nobody else's sessions are touched
session=shots
t() { tmux -L "$sock" "$@"; }
cleanup() {
  t kill-server 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
unset GAFFER_STATE_DIR

fail() { echo "screenshots: FAIL: $*"; echo "--- screen:"; t capture-pane -t "$session" -p 2>/dev/null || true; exit 1; }
screen() { t capture-pane -t "$session" -p; }
# Waits (bounded, 15 s) until the screen matches the extended regex $1.
wait_for() {
  for _ in $(seq 1 150); do screen | grep -Eq -- "$1" && return 0; sleep 0.1; done
  fail "waited 15 s for: $1"
}
# Lets the TUI finish the frame it is drawing, then captures it with colours.
shot() {
  sleep 0.4
  t capture-pane -e -p -t "$session" > "$work/$1.ansi"
  echo "screenshots: $1"
}

# The demo workflow. Every task is local and fast except the two that hold the picture steady:
# review.security (45 s on the `slow` queue, so review.tests queues behind it) and crawl.pages.
cp -r examples/scripts "$work/scripts"
cat > "$work/scripts/agent.sh" <<'SH'
#!/bin/sh
# A stand-in for an AI-agent CLI: "thinks" for $3 seconds (progress and heartbeats on fd 3), then
# reports tokens and cost on fd 3 as a real agent wrapper would. $1 names it, $2 is its cost in
# dollars, $4 its model.
name="${1:-agent}"; usd="${2:-0.0100}"; secs="${3:-1}"; model="${4:-claude-sonnet-4-5}"
echo "$name: reading the prompt"
i=0
while [ "$i" -lt "$secs" ]; do
  i=$((i + 1))
  echo "heartbeat" >&3
  echo "progress $i/$secs $name: thinking" >&3
  sleep 1
done
echo "cost usd=$usd input_tokens=$((1200 + ${#name} * 97)) output_tokens=$((300 + ${#name} * 11)) model=$model" >&3
echo "output answer=$name looks fine" >&3
echo "$name: done"
SH
chmod +x "$work"/scripts/*.sh
cat > "$work/workflow.toml" <<'TOML'
[settings]
workers = 4

[queues.default]
concurrency = 4

[queues.llm]
concurrency = 3
rate_limit = "30/min"

[queues.slow]
concurrency = 1

[defaults]
timeout = "5m"
heartbeat_timeout = "2m"
retry = { max_attempts = 3, initial_interval = "1s", backoff = 2.0, max_interval = "30s", jitter = 0.2 }

# The quickstart: fetch → analyze (an agent) → deliver, with a step that succeeds on its retry.
[jobs.report]
params = { topic = "rust" }
budget_usd = 2.00

[jobs.report.tasks.fetch]
run = "./scripts/fetch.sh \"$TOPIC\""
env = { TOPIC = "{{ params.topic }}" }

[jobs.report.tasks.flaky]
run = "test \"$GAFFER_ATTEMPT\" -ge 2 || { echo 'upstream busy' >&2; exit 1; }; echo recovered"

[jobs.report.tasks.analyze]
needs = ["fetch", "flaky"]
queue = "llm"
priority = 80
run = "./scripts/agent.sh analyze 0.0421 1"

[jobs.report.tasks.deliver]
needs = ["analyze"]
run = "echo \"delivering: $ANSWER\""
env = { ANSWER = "{{ tasks.analyze.outputs.answer }}" }

# Agents fanning out from a plan; security holds the one-slot `slow` queue, tests waits for it.
[jobs.review]
budget_usd = 1.00

[jobs.review.tasks.plan]
queue = "llm"
run = "./scripts/agent.sh plan 0.0388 1"

[jobs.review.tasks.security]
needs = ["plan"]
queue = "slow"
run = "./scripts/agent.sh security 0.1240 45"

[jobs.review.tasks.style]
needs = ["plan"]
queue = "llm"
run = "./scripts/agent.sh style 0.0093 1 claude-haiku-4-5"

[jobs.review.tasks.tests]
needs = ["plan"]
queue = "slow"
run = "./scripts/agent.sh tests 0.0870 5"

[jobs.review.tasks.summary]
needs = ["security", "style", "tests"]
run = "echo 'all three reviews are in'"

# A task that cannot succeed: two quick attempts, then the dead-letter queue; load is skipped.
[jobs.import]

[jobs.import.tasks.download]
retry = { max_attempts = 2, initial_interval = "200ms" }
run = "echo 'connecting to db.internal:5432'; echo 'connection refused' >&2; exit 1"

[jobs.import.tasks.load]
needs = ["download"]
run = "echo loading"

[jobs.import.tasks.notify]
run = "echo notifying anyway"

# A long shell task with progress, and one waiting out a long retry backoff.
[jobs.crawl]

[jobs.crawl.tasks.robots]
retry = { max_attempts = 3, initial_interval = "40s", jitter = 0.0 }
run = "test \"$GAFFER_ATTEMPT\" -ge 2 || { echo '503 Service Unavailable' >&2; exit 1; }; echo ok"

[jobs.crawl.tasks.pages]
run = "for i in $(seq 1 60); do echo \"page $i\"; echo \"progress $i/60 crawling page $i\" >&3; sleep 1; done"

[jobs.crawl.tasks.index]
needs = ["robots", "pages"]
run = "echo indexing"
TOML

t new-session -d -s "$session" -x 120 -y 34 -c "$work" \
  "GAFFER_STATE_DIR=$work/.gaffer $bin run workflow.toml; echo EXIT=\$? > $work/exit; sleep 600"

# The picture we want: report done, import failed with its dead letter, review running with
# security on the slow queue and tests queued behind it, crawl running with a retry pending.
wait_for "Jobs \(4\)"
wait_for "report +succeeded"
wait_for "import +failed"
wait_for "review +running .* 2/5"
wait_for "crawl +running"
sleep 2   # a couple of progress ticks and heartbeats

t send-keys -t "$session" 2
wait_for "Jobs \(4\)"
shot jobs

# The review job run's task graph: filter the list to it, then Enter.
t send-keys -t "$session" /
t send-keys -t "$session" -l review
t send-keys -t "$session" Enter
wait_for "Jobs \(1/4\)|Jobs \(1\)"
t send-keys -t "$session" Enter
wait_for "task graph"
wait_for "summary"
shot job-graph
t send-keys -t "$session" Escape Escape

t send-keys -t "$session" 3
wait_for "Tasks \(15\)"
shot tasks

t send-keys -t "$session" 5
wait_for "Dead letters \(1\)"
shot dead-letters

t send-keys -t "$session" 6
wait_for "by model"
shot cost

t send-keys -t "$session" 7
wait_for "Workers \(4\)"
shot workers

t send-keys -t "$session" 2 '?'
wait_for "this help"
shot help
t send-keys -t "$session" Escape

# Quit: work is still running, so it asks first.
t send-keys -t "$session" q
wait_for "y/n"
t send-keys -t "$session" y
for _ in $(seq 1 150); do [[ -s $work/exit ]] && break; sleep 0.1; done
[[ -s $work/exit ]] || fail "gaffer did not exit after q y"

for name in jobs job-graph tasks dead-letters cost workers help; do
  "$venv/bin/python" scripts/ansi2png.py "$work/$name.ansi" "$out/$name.png" --cols 120 --rows 34
done
if [[ -n ${KEEP_ANSI:-} ]]; then mkdir -p "$KEEP_ANSI" && cp "$work"/*.ansi "$KEEP_ANSI"/; fi
ls -l "$out"/*.png
