#!/usr/bin/env bash
# Reconnection storm after a node dies (docs/performance.md, "Failover
# storm"): starts three `moat serve` nodes of MOAT on loopback (routes
# 27801-27803, MQTT 27811-27813, profiles 27821-27823), waits until they
# are ready, and runs failoverstorm with N sessions on node 3. With
# STORM_PROFILE=1 it saves a 5 s CPU profile of node 1 from the kill on
# and its goroutines 3 s after the kill. STORM_CONC sets how many
# clients connect at once (64). It prints, for nodes 1 and 2, their RSS
# and the CPU they used from the kill until every client resumed.
#
#   scripts/failoverstorm/run.sh ./moat 2000 /tmp/storm
set -euo pipefail
MOAT=$(realpath "$1"); N=$2; W=$3
cd "$(dirname "$0")/../.."
rm -rf "$W"; mkdir -p "$W"
go build -o "$W/failoverstorm" ./scripts/failoverstorm
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for i in 1 2 3; do
	mkdir -p "$W/n$i"
	cat >"$W/n$i/moat.yaml" <<CONF
data_dir: data
listeners:
  - {address: "127.0.0.1:2781$i", transport: tcp, allow_anonymous: true}
acl:
  rules:
    - {name: all, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["#"]}
defense:
  conn_rate: 1000000
  conn_burst: 1000000
  listener_conn_rate: 1000000
  listener_conn_burst: 1000000
  max_conns_per_addr: 1000000
cluster:
  name: storm
  node: node$i
  listen: "127.0.0.1:2780$i"
  peers: ["127.0.0.1:27801", "127.0.0.1:27802", "127.0.0.1:27803"]
CONF
done
for i in 1 2 3; do
	(cd "$W/n$i" && exec "$MOAT" serve -c moat.yaml --pprof "127.0.0.1:2782$i" >serve.log 2>&1) &
	PIDS+=($!)
done
for _ in $(seq 1 240); do
	ok=1
	for i in 1 2 3; do grep -q "key-value store ready" "$W/n$i/serve.log" || ok=0; done
	[ $ok = 1 ] && break
	sleep 0.5
done
[ $ok = 1 ] || { echo "the cluster did not get ready" >&2; exit 1; }
"$W/failoverstorm" -n "$N" -conc "${STORM_CONC:-64}" -pid3 "${PIDS[2]}" >"$W/storm.out" 2>&1 &
SP=$!
# CPU seconds (user and system) a node has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
until grep -q "node 3 killed" "$W/storm.out" || ! kill -0 $SP 2>/dev/null; do sleep 0.05; done
CPU0=("$(cpu "${PIDS[0]}")" "$(cpu "${PIDS[1]}")")
if [ "${STORM_PROFILE:-}" = 1 ]; then
	curl -s -o "$W/cpu1.prof" "http://127.0.0.1:27821/debug/pprof/profile?seconds=5" &
	CP=$!
	sleep 3
	curl -s -o "$W/goroutines1.txt" "http://127.0.0.1:27821/debug/pprof/goroutine?debug=1"
	wait $CP || true
fi
rc=0
wait $SP || rc=$?
cat "$W/storm.out"
for i in 1 2; do
	p=${PIDS[$((i - 1))]}
	echo "node$i: RSS $(awk '/VmRSS/{print $2, $3}' /proc/$p/status), peak $(awk '/VmHWM/{print $2, $3}' /proc/$p/status)," \
		"CPU from the kill to the end $(awk -v a="${CPU0[$((i - 1))]}" -v b="$(cpu "$p")" 'BEGIN{printf "%.2f", b - a}') s"
done
exit $rc
