#!/usr/bin/env bash
# Kill series: runs FIRST_RUN, FIRST_RUN+1, ... killing node 2, 1, 3, 2,
# 1, 3, ... until KS_UNTIL (HH:MM:SS UTC) is passed; then the analysis.
#   KS_UNTIL=18:30:00 nice -n 5 scripts/killseries/series.sh [FIRST_RUN]
# KS_DIR (default /tmp/moat-killseries) holds the runs and the summary;
# KS_MOAT names the binary (default $KS_DIR/moat).
set -u
here=$(cd "$(dirname "$0")" && pwd)
export KS_DIR=${KS_DIR:-/tmp/moat-killseries}
export KS_MOAT=${KS_MOAT:-$KS_DIR/moat}
UNTIL=${KS_UNTIL:?set KS_UNTIL to the time (HH:MM:SS UTC) after which no run starts}
mkdir -p "$KS_DIR/runs"
n=${1:-1}
# KS_KILLS overrides the nodes killed in turn; 0 moves the subscriber
# instead of killing a node (run.py).
read -r -a kills <<<"${KS_KILLS:-2 1 3}"
# A KS_UNTIL earlier in the day than the start means the next day's.
start=$(date -u +%H:%M:%S)
before_until() {
	local now
	now=$(date -u +%H:%M:%S)
	if [ "$UNTIL" \< "$start" ]; then
		[ ! "$now" \< "$start" ] || [ "$now" \< "$UNTIL" ]
	else
		[ "$now" \< "$UNTIL" ]
	fi
}
while before_until; do
	k=${kills[$(((n - 1) % ${#kills[@]}))]}
	/usr/bin/python3 "$here/run.py" "$n" "$k" || echo "run $n failed: $?"
	left=$(pgrep -f "$KS_MOAT")
	if [ -n "$left" ]; then
		echo "leftover moat processes after run $n: $left"
		break
	fi
	/usr/bin/python3 "$here/analyze.py" "$n" | tail -1
	n=$((n + 1))
done
/usr/bin/python3 "$here/analyze.py" >/dev/null
echo "series done at $(date -u +%H:%M:%S)"
