#!/usr/bin/env bash
# The race-enabled test suite (`make unit`). internal/cluster takes far
# longer than any other package and mostly waits (for elections, for
# timeouts) rather than computes, so it runs in two test processes beside
# the other packages: the tests named in cluster-shard2.txt in one, the
# rest in the other. Each process's output is printed as it ends; the
# script fails if any of them failed.
set -uo pipefail
cd "$(dirname "$0")/.."
GO="${GO:-go}"
timeout="${UNIT_TIMEOUT:-30m}"
cluster=./internal/cluster
names=$(grep -v '^#' scripts/cluster-shard2.txt | grep -v '^$' | paste -sd'|' -)
if [ -z "$names" ]; then
  echo "scripts/cluster-shard2.txt names no test" >&2
  exit 1
fi
pattern="^(${names})\$"
others=$($GO list ./... | grep -v '/internal/cluster$')

# Built once (into the build cache) before the processes start, so that
# they do not compile the same packages side by side.
"$GO" test -race -count=1 -run '^$' ./... >/dev/null || { "$GO" test -race -count=1 -run '^$' ./...; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$GO" test -race -count=1 -timeout "$timeout" $others >"$dir/others" 2>&1 &
p1=$!
"$GO" test -race -count=1 -timeout "$timeout" -skip "$pattern" "$cluster" >"$dir/cluster1" 2>&1 &
p2=$!
"$GO" test -race -count=1 -timeout "$timeout" -run "$pattern" "$cluster" >"$dir/cluster2" 2>&1 &
p3=$!
failed=0
for job in "others:$p1" "cluster1:$p2" "cluster2:$p3"; do
  name=${job%%:*}
  if ! wait "${job##*:}"; then
    failed=1
  fi
  case $name in
  cluster1) echo "# internal/cluster, all but the tests of scripts/cluster-shard2.txt" ;;
  cluster2) echo "# internal/cluster, the tests of scripts/cluster-shard2.txt" ;;
  esac
  cat "$dir/$name"
done
exit $failed
