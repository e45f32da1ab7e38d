#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a short time (default 5s each),
# one at a time, so a regression found by the corpus or by a few seconds of
# mutation fails `make test`. Longer runs: FUZZTIME=10m make fuzz.
#
# Go's fuzzer sometimes ends a run with "context deadline exceeded" when the
# time limit falls while a worker is busy with a slow input; that is not a
# finding (a finding always says "Failing input written to ..."), so it is
# reported and tolerated.
set -uo pipefail
t="${1:-5s}"
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
while read -r dir; do
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
    echo "fuzz $dir $f ($t)"
    if go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" "$dir" >"$log" 2>&1; then
      tail -n 1 "$log"
      continue
    fi
    if grep -q "context deadline exceeded" "$log" && ! grep -q "Failing input written" "$log"; then
      echo "note: $f stopped with 'context deadline exceeded' at the time limit (no failing input); not a finding"
      continue
    fi
    cat "$log"
    failed=1
  done
done < <(grep -l '^func Fuzz' $(git ls-files '*_test.go') 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|')
exit $failed
