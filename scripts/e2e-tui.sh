#!/usr/bin/env bash
# Drives the real TUI in tmux like a person: a dead-lettering task is retried with `r`, a long
# task is cancelled with `c` `y`, a task printing terminal escape sequences is looked at, the
# terminal title must survive, and `q` `y` must leave no process behind. Then `gaffer tui`
# attaches to a headless server, approves a waiting task with `a`, and detaches with `q`,
# leaving the server running. Last, with the server stopped, `gaffer tui` shows the state dir
# read-only: commands say so, the Schedules view (8) lists the scheduled job.
# Usage: scripts/e2e-tui.sh [path/to/gaffer]   (needs tmux)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/debug/gaffer}
[[ -x $bin ]] || cargo build --quiet --locked
bin=$(realpath "$bin")
command -v tmux >/dev/null || { echo "e2e-tui: tmux is not installed"; exit 1; }

# tmux gives the panes the environment its server starts with: none of ours may leak into the
# check.
unset GAFFER_STATE_DIR
work=$(mktemp -d)
session="gaffer-e2e-$$"
# A tmux server of our own on a socket in $work, kept up between sessions (exit-empty off). A
# shared default server exits when its last session is killed (ours, or another script's), and
# a client meeting it on its way out fails with "server exited unexpectedly" — CI failed once
# with only that message.
tsock="$work/tmux.sock"
# A failing tmux command names itself: under `set -e` tmux's own message alone does not say which.
t() { tmux -S "$tsock" -f /dev/null "$@" || { local rc=$?; echo "e2e-tui: tmux $1 failed (exit $rc)" >&2; return $rc; }; }
t start-server \; set-option -s exit-empty off
cleanup() { t kill-server 2>/dev/null || true; pkill -f "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "e2e-tui: FAIL: $*"; echo "--- screen:"; t capture-pane -t "$session" -p 2>/dev/null || true; exit 1; }
screen() { t capture-pane -t "$session" -p; }
# Waits (bounded) until the screen shows $1.
wait_for() {
  for _ in $(seq 1 100); do screen | grep -q -- "$1" && return 0; sleep 0.1; done
  fail "waited 10 s for: $1"
}

cat > "$work/workflow.toml" <<'TOML'
[settings]
workers = 4

[jobs.demo.tasks.flaky]
retry = { max_attempts = 1 }
run = 'test -e fixed || { echo "upstream down" >&2; exit 3; }'

[jobs.demo.tasks.long]
run = 'echo $$ > long.pid; sleep 300'

[jobs.demo.tasks.evil]
run = '''printf '\033]0;pwned\007\033[2J title attack\n'; printf 'progress \033]0;pwned2\007 sneaky\n' >&3; sleep 300'''
TOML

t new-session -d -s "$session" -x 120 -y 32 -c "$work" "GAFFER_STATE_DIR=$work/.gaffer $bin run workflow.toml; echo EXIT=\$? > $work/exit; sleep 600"
t select-pane -t "$session" -T e2e-title
wait_for "Jobs (1)"
wait_for "1 dead"

# The dead letter: fix its cause, retry it with r.
touch "$work/fixed"
t send-keys -t "$session" 5
wait_for "Dead letters (1)"
t send-keys -t "$session" r
wait_for "Dead letters (0)"

# The long task: cancel with c, confirm with y; its process must die.
t send-keys -t "$session" 3
wait_for "Tasks (3)"
t send-keys -t "$session" /
t send-keys -t "$session" -l "long"
t send-keys -t "$session" Enter
wait_for "long"
t send-keys -t "$session" c
wait_for "y/n"
t send-keys -t "$session" y
wait_for "cancelled"
long_pid=$(cat "$work/long.pid")
for _ in $(seq 1 100); do kill -0 "$long_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$long_pid" 2>/dev/null && fail "the cancelled task's process $long_pid is alive"

# The evil task: its escape sequences must be shown inert and never reach the terminal.
t send-keys -t "$session" Escape Escape 3
wait_for "evil"
t send-keys -t "$session" /
t send-keys -t "$session" -l "evil"
t send-keys -t "$session" Enter Enter
wait_for "title attack"
screen | grep -q '\^\[' || fail "escape sequences were not made visible"
title=$(t display-message -t "$session" -p '#{pane_title}')
[[ $title == e2e-title ]] || fail "the terminal title changed to '$title'"

# Quit: work is running (evil), so it asks; y stops gracefully, and nothing stays behind.
t send-keys -t "$session" Escape q
wait_for "stop gaffer? y/n"
t send-keys -t "$session" y
for _ in $(seq 1 150); do [[ -s $work/exit ]] && break; sleep 0.1; done
[[ -s $work/exit ]] || fail "gaffer did not exit after q y"
# This run's gaffer only (its working directory is $work): another e2e may run beside this one.
for pid in $(pgrep -f "^$bin run workflow.toml"); do
  if [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$work" ]]; then fail "gaffer is still running: $(tr '\0' ' ' <"/proc/$pid/cmdline")"; fi
done
# Every task process carries GAFFER_STATE_DIR in its environment: none may outlive gaffer.
for environ in /proc/[0-9]*/environ; do
  if { tr '\0' '\n' < "$environ"; } 2>/dev/null | grep -qx "GAFFER_STATE_DIR=$work/.gaffer"; then
    fail "a task process outlived gaffer: ${environ%/environ}"
  fi
done

# Attach to a headless server, approve a waiting task with `a`, and detach: the server keeps
# running. (A state dir of its own: the first one holds the demo run, which would resume.)
t kill-session -t "$session"
cat > "$work/approve.toml" <<'TOML'
[jobs.release.tasks.publish]
wait_for = "approval"
run = 'touch published'

[jobs.nightly]
schedule = "0 3 * * *"
timezone = "Asia/Tokyo"
[jobs.nightly.tasks.t]
run = 'true'
TOML
state2="$work/.gaffer2"
GAFFER_STATE_DIR="$state2" "$bin" serve "$work/approve.toml" --headless >/dev/null 2>&1 &
server=$!
for _ in $(seq 1 100); do [[ -S $state2/gaffer.sock ]] && break; sleep 0.1; done
GAFFER_STATE_DIR="$state2" "$bin" submit release >/dev/null || fail "submit to the server failed"
t new-session -d -s "$session" -x 120 -y 32 -c "$work" "GAFFER_STATE_DIR=$state2 $bin tui; echo DETACHED > $work/detached; sleep 600"
wait_for "attached to"
t send-keys -t "$session" 3
wait_for "waiting"
[[ -e $work/published ]] && fail "the task ran before it was approved"
t send-keys -t "$session" a
for _ in $(seq 1 100); do [[ -e $work/published ]] && break; sleep 0.1; done
[[ -e $work/published ]] || fail "a did not release the waiting task"
wait_for "succeeded"
t send-keys -t "$session" 8
wait_for "Asia/Tokyo"
t send-keys -t "$session" q
for _ in $(seq 1 50); do [[ -s $work/detached ]] && break; sleep 0.1; done
[[ -s $work/detached ]] || fail "q did not detach"
kill -0 "$server" 2>/dev/null || fail "the server stopped when the TUI detached"
kill -TERM "$server"
wait "$server" || true

# No instance now: the same state dir, read-only.
t kill-session -t "$session"
t new-session -d -s "$session" -x 120 -y 32 -c "$work" "GAFFER_STATE_DIR=$state2 $bin tui; echo EXIT=\$? > $work/readonly; sleep 600"
wait_for "read-only: no instance running"
t send-keys -t "$session" 2
wait_for "Jobs (1)"
t send-keys -t "$session" r
for _ in $(seq 1 50); do screen | tail -n 2 | head -n 1 | grep -q "read-only" && break; sleep 0.1; done
screen | tail -n 2 | head -n 1 | grep -q "read-only" || fail "r did not say the TUI is read-only"
t send-keys -t "$session" 8
wait_for "0 3 \* \* \*"
t send-keys -t "$session" q
for _ in $(seq 1 50); do [[ -s $work/readonly ]] && break; sleep 0.1; done
grep -q "EXIT=0" "$work/readonly" 2>/dev/null || fail "q did not leave the read-only TUI cleanly"
echo "e2e-tui: ok"
