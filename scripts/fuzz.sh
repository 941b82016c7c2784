#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo fuzz (libFuzzer) of the parsers that take untrusted input:
# the workflow file, the fd-3 control protocol, the agent JSON results on stdout and the
# control API's request decoding. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); the normal build and CI do not.
#
# Usage: scripts/fuzz.sh [RUNS] [TARGET...]     (default: 10000000 runs of every target)
#        scripts/fuzz.sh --smoke                (a short run of each target: scripts/test.sh --fuzz)
#
# The corpus lives in fuzz/corpus/<target> and grows with every run; a crash leaves its input in
# fuzz/artifacts/<target>/ — keep it there as a reproducer and add a regression test.
# Without a sanitizer (`-s none`) a run is about 3× faster; CHECK=address turns ASan back on.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000000
if [[ "${1:-}" == "--smoke" ]]; then runs=20000; shift; elif [[ -n "${1:-}" ]]; then runs=$1; shift; fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(workflow_parse control_protocol agent_json api_request)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is not installed (rustup toolchain install nightly)"; exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

sanitizer=${CHECK:-none}
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "== fuzz $target: $runs runs (sanitizer: $sanitizer)"
  start=$(date +%s)
  cargo +nightly fuzz run -O -s "$sanitizer" "$target" "fuzz/corpus/$target" -- \
    -runs="$runs" -max_len=8192 -print_final_stats=1 2>"target/fuzz-$target.log" \
    || { tail -40 "target/fuzz-$target.log"; echo "fuzz $target: CRASH (input in fuzz/artifacts/$target/)"; exit 1; }
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/fuzz-$target.log" | grep -o '[0-9]*$')
  echo "fuzz $target: ${execs:-?} executions in $(( $(date +%s) - start )) s, no crash"
done
