#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a short time (default 10s each),
# one at a time, so a regression found by the corpus or by a few seconds of
# mutation fails `make test`. Longer runs: FUZZTIME=10m make fuzz.
set -euo pipefail
t="${1:-10s}"
while read -r dir; do
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
    echo "fuzz $dir $f ($t)"
    go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" "$dir"
  done
done < <(grep -l '^func Fuzz' $(git ls-files '*_test.go') 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|')
