#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a short time (default 5s each),
# so a regression found by the corpus or by a few seconds of mutation fails
# `make test`. Longer runs: FUZZTIME=10m make fuzz.
#
# The targets run FUZZJOBS at a time (default: the number of CPUs), each
# with one fuzzing worker: a target's start (building the instrumented
# binary, running its corpus) leaves CPUs idle that another target's
# mutation uses. Each target's output is printed once it has finished.
#
# Go's fuzzer sometimes ends a run with "context deadline exceeded" when the
# time limit falls while a worker is busy with a slow input; that is not a
# finding (a finding always says "Failing input written to ..."), so it is
# reported and tolerated.
set -uo pipefail
t="${1:-5s}"
jobs="${FUZZJOBS:-$(nproc 2>/dev/null || echo 1)}"

# fuzz_one DIR TARGET TIME: prints what happened, exits 1 on a finding.
fuzz_one() {
  local dir=$1 f=$2 t=$3 log
  log=$(mktemp)
  trap 'rm -f "$log"' RETURN
  if go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" -parallel 1 "$dir" >"$log" 2>&1; then
    printf 'fuzz %s %s (%s)\n%s\n' "$dir" "$f" "$t" "$(tail -n 1 "$log")"
    return 0
  fi
  if grep -q "context deadline exceeded" "$log" && ! grep -q "Failing input written" "$log"; then
    printf 'fuzz %s %s (%s)\nnote: %s stopped with %s at the time limit (no failing input); not a finding\n' \
      "$dir" "$f" "$t" "$f" "'context deadline exceeded'"
    return 0
  fi
  printf 'fuzz %s %s (%s): FAILED\n%s\n' "$dir" "$f" "$t" "$(cat "$log")"
  return 1
}
export -f fuzz_one

# One line per target: DIR TARGET.
targets() {
  grep -l '^func Fuzz' $(git ls-files '*_test.go') 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|' |
    while read -r dir; do
      for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
        echo "$dir $f"
      done
    done
}

# xargs exits non-zero when any target did.
targets | xargs -r -P "$jobs" -L 1 bash -c 'fuzz_one "$2" "$3" "$1"' _ "$t"
