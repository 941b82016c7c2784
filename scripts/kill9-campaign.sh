#!/usr/bin/env bash
# A long kill -9 campaign: the two `kill_9_campaign_*` tests of tests/faults.rs (a DAG of `needs`,
# and a workflow with a loop, a join, a 50-item fan-out and a saga) over and over, each time with a
# new seed and more rounds than CI runs (CI: GAFFER_KILL9_ROUNDS=6).
# A failure prints its GAFFER_KILL9_SEED; rerun just that one with
#   GAFFER_KILL9_SEED=<seed> GAFFER_KILL9_ROUNDS=<rounds> cargo nextest run --test faults kill_9 --no-capture
#
#   scripts/kill9-campaign.sh [CAMPAIGNS=20] [ROUNDS=25]
set -euo pipefail
cd "$(dirname "$0")/.."
campaigns=${1:-20}
rounds=${2:-25}
cargo build --quiet --tests
for i in $(seq 1 "$campaigns"); do
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  if ! GAFFER_KILL9_SEED=$seed GAFFER_KILL9_ROUNDS=$rounds \
      cargo nextest run --test faults kill_9_campaign --no-capture >"/tmp/kill9-$seed.log" 2>&1; then
    echo "kill9-campaign: campaign $i FAILED (GAFFER_KILL9_SEED=$seed, $rounds rounds); log: /tmp/kill9-$seed.log"
    grep -E "panicked|assert" -A3 "/tmp/kill9-$seed.log" | head -20
    exit 1
  fi
  echo "kill9-campaign: campaign $i of $campaigns ok (seed $seed, $(grep -c '^round' "/tmp/kill9-$seed.log") kills)"
  rm -f "/tmp/kill9-$seed.log"
done
echo "kill9-campaign: all $campaigns campaigns passed"
