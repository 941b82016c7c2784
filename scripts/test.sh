#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit + property + integration tests.
# Usage: scripts/test.sh            (everything)
#        scripts/test.sh --quick    (tests only, no fmt/clippy)
#        scripts/test.sh --fuzz     (everything, then a short libFuzzer run of each fuzz target;
#                                    needs nightly: see scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--quick" ]]; then
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  echo "== cargo clippy"
  cargo clippy --all-targets --locked -- -D warnings
fi

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

echo "== TUI end to end (tmux)"
if command -v tmux >/dev/null 2>&1; then
  scripts/e2e-tui.sh "${CARGO_TARGET_DIR:-target}/debug/gaffer"
else
  echo "tmux is not installed: skipped (.ci/run installs it)"
fi

echo "== README quickstart"
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
cargo run --quiet --locked -- run examples/quickstart.toml --headless --state-dir "$state/.gaffer" >/dev/null 2>"$state/err" || { cat "$state/err"; exit 1; }
for example in examples/*.toml; do
  cargo run --quiet --locked -- validate "$example" >/dev/null
done
if [[ "${1:-}" == "--fuzz" ]]; then
  echo "== fuzz smoke (scripts/fuzz.sh --smoke)"
  scripts/fuzz.sh --smoke
fi
echo "all tests passed"
