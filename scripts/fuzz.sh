#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo fuzz (libFuzzer) of the parsers that take untrusted input:
# the workflow file, the fd-3 control protocol, the agent JSON results on stdout and the
# control API's request decoding. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); the normal build and CI do not.
#
# Usage: scripts/fuzz.sh [RUNS] [TARGET...]     (default: 10000000 runs of every target)
#        scripts/fuzz.sh --smoke                (a short run of each target: scripts/test.sh --fuzz)
#        scripts/fuzz.sh --merge [TARGET...]    (re-minimize the committed seed corpora; CORPUS_MAX=290)
#
# Every run starts from the committed seed corpus, fuzz/corpus/<target> (small, minimized with
# `-merge=1`; only read), and keeps what it finds in fuzz/work/<target> (not committed), so runs
# build on each other without touching the tree. `--merge` folds the work corpus into the seeds:
# the smallest set of inputs with the same coverage, into a fresh directory that then replaces
# fuzz/corpus/<target>. A crash leaves its input in fuzz/artifacts/<target>/ — keep it there as a
# reproducer and add a regression test.
# Without a sanitizer (`-s none`) a run is about 3× faster; CHECK=address turns ASan back on.
# Built as `cargo fuzz build` builds by default: optimized, with debug assertions (overflow
# checks) on, so an arithmetic overflow is a crash too.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000000
mode=run
case "${1:-}" in
  --smoke) runs=20000; shift ;;
  --merge) mode=merge; shift ;;
  [0-9]*) runs=$1; shift ;;
esac
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(workflow_parse control_protocol agent_json api_request)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is not installed (rustup toolchain install nightly)"; exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

sanitizer=${CHECK:-none}
# One build directory per sanitizer: switching does not rebuild everything each time.
target_dir=fuzz/target; [[ "$sanitizer" == none ]] && target_dir=fuzz/target-nosan
fuzz() { cargo +nightly fuzz run -s "$sanitizer" --target-dir "$target_dir" "$@"; }
mkdir -p target
for target in "${targets[@]}"; do
  seeds="fuzz/corpus/$target" work="fuzz/work/$target"
  mkdir -p "$seeds" "$work"
  if [[ "$mode" == merge ]]; then
    # libFuzzer measures what each input covers (edges only: hit counts and compared values
    # would keep thousands); then a greedy set cover keeps at most CORPUS_MAX inputs, each
    # adding the most edges not yet covered, so the committed corpus stays small.
    fresh=$(mktemp -d "fuzz/work/$target-merged.XXXXXX") control="fuzz/work/$target.merge-control"
    rm -f "$control"
    fuzz "$target" "$fresh" "$seeds" "$work" -- -set_cover_merge=1 -use_counters=0 -use_cmp=0 -max_len=8192 \
      -merge_control_file="$control" 2>"target/fuzz-$target.log" || { tail -20 "target/fuzz-$target.log"; exit 1; }
    rm -f "$fresh"/*
    python3 - "$control" "$fresh" "${CORPUS_MAX:-290}" <<'PY'
import shutil, sys
control, out, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(control).read().split("\n")
paths = lines[2 : 2 + int(lines[0])]
covers = {}
for line in lines[2 + len(paths) :]:
    if line.startswith("COV "):
        fields = line.split()
        covers[int(fields[1])] = set(fields[2:])
covered, chosen = set(), []
while len(chosen) < cap:
    best = max(covers, key=lambda i: len(covers[i] - covered), default=None)
    if best is None or not covers[best] - covered:
        break
    covered |= covers.pop(best)
    chosen.append(best)
for i in chosen:
    shutil.copy(paths[i], out)
print(f"{len(chosen)} inputs cover {len(covered)} of {len(covered | set().union(*covers.values()))} edges", file=sys.stderr)
PY
    rm -rf "$seeds" && mv "$fresh" "$seeds"
    echo "fuzz $target: $(find "$seeds" -type f | wc -l) seeds, $(cat "$seeds"/* | wc -c) bytes in $seeds"
    continue
  fi
  echo "== fuzz $target: $runs runs (sanitizer: $sanitizer)"
  start=$(date +%s)
  fuzz "$target" "$work" "$seeds" -- -runs="$runs" -max_len=8192 -print_final_stats=1 2>"target/fuzz-$target.log" \
    || { tail -40 "target/fuzz-$target.log"; echo "fuzz $target: CRASH (input in fuzz/artifacts/$target/)"; exit 1; }
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/fuzz-$target.log" | grep -o '[0-9]*$')
  echo "fuzz $target: ${execs:-?} executions in $(( $(date +%s) - start )) s, no crash"
done
