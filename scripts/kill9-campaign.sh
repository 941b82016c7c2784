#!/usr/bin/env bash
# A long kill -9 campaign: the two `kill_9_campaign_*` tests of tests/faults.rs (a DAG of `needs`,
# and a workflow with a loop, a join, a 50-item fan-out and a saga) over and over, each time with a
# new seed and more rounds than CI runs (CI: GAFFER_KILL9_ROUNDS=6).
# A failure prints its GAFFER_KILL9_SEED; rerun just that one with
#   GAFFER_KILL9_SEED=<seed> GAFFER_KILL9_ROUNDS=<rounds> cargo nextest run --test faults kill_9 --no-capture
#
# --cluster: the cluster mode instead (issue #11 §8): three `gaffer serve` nodes on a private
# PostgreSQL (tests/cluster_nodes.rs, `kill_9_campaign_across_three_nodes_*`), 8 job runs of 25
# short tasks submitted to all of them, a random node killed with kill -9 and started again each
# round; then every job run succeeded, none lost, each task run has one accepted attempt (its
# last, the others interrupted, no gaps) and no process ran an attempt the store does not know.
# Needs PostgreSQL (apt-get install postgresql); about 6 s a round. Rerun one with
#   GAFFER_KILL9_SEED=<seed> GAFFER_KILL9_CLUSTER_ROUNDS=<rounds> cargo nextest run --retries 0 \
#     --test cluster_nodes kill_9_campaign --no-capture
#
#   scripts/kill9-campaign.sh [--cluster] [CAMPAIGNS=20] [ROUNDS=25]
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=false
if [ "${1:-}" = "--cluster" ]; then
  cluster=true
  shift
fi
campaigns=${1:-20}
rounds=${2:-25}
cargo build --quiet --tests
for i in $(seq 1 "$campaigns"); do
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  log="/tmp/kill9-$seed.log"
  if $cluster; then
    run() {
      GAFFER_KILL9_SEED=$seed GAFFER_KILL9_CLUSTER_ROUNDS=$rounds \
        cargo nextest run --retries 0 --test cluster_nodes kill_9_campaign --no-capture
    }
    rerun="GAFFER_KILL9_CLUSTER_ROUNDS=$rounds"
  else
    run() { GAFFER_KILL9_SEED=$seed GAFFER_KILL9_ROUNDS=$rounds cargo nextest run --test faults kill_9_campaign --no-capture; }
    rerun="GAFFER_KILL9_ROUNDS=$rounds"
  fi
  if ! run >"$log" 2>&1; then
    echo "kill9-campaign: campaign $i FAILED (GAFFER_KILL9_SEED=$seed $rerun); log: $log"
    grep -E "panicked|assert|skipped" -A3 "$log" | head -20
    exit 1
  fi
  if grep -q '^skipped' "$log"; then
    echo "kill9-campaign: $(grep -m1 '^skipped' "$log")"
    exit 2
  fi
  echo "kill9-campaign: campaign $i of $campaigns ok (seed $seed, $(grep -c '^round' "$log") kills)$(grep -m1 -o '[0-9]* task runs.*started' "$log" | sed 's/^/; /')"
  rm -f "$log"
done
echo "kill9-campaign: all $campaigns campaigns passed"
