#!/usr/bin/env bash
# Cluster benchmark (docs/performance.md, "Cluster"): three `moat serve`
# nodes on this host (plain loopback routes) against one node, driven by
# `moat bench p2p` at QoS 1, in rounds that interleave the brokers so that
# a change in the machine's load hits all of them:
#
#   base     one node, moat built from BENCH_BASE_REF (main just before
#            the cluster was merged)
#   merged   one node, moat built from BENCH_MERGE_REF (the merge of the
#            cluster, nothing else changed): base against merged is the
#            cost of the cluster code with clustering off
#   single   one node, this tree's moat, no cluster section
#   local    the three-node cluster, publishers and subscribers on node 1
#            (the cluster's cost when nothing crosses)
#   cross    the three-node cluster, publishers on node 1, subscribers on
#            node 3 (--sub-addr): every message crosses one route
#   localref with BENCH_LOCAL_REF: a second three-node cluster of moat
#            built from that revision, publishers and subscribers on its
#            node 1 (local against localref: a change of the cluster's
#            cost when nothing crosses, under the same load)
#
# Each round runs a throughput run (closed loop: publishers pause while
# BENCH_BACKLOG deliveries are outstanding, so the figure is the rate
# sustained without a queue) and a latency run (a fixed BENCH_RATE msgs/s
# per publisher, far below saturation) per broker. The CPU of the
# publishers' node comes from `moat bench --broker-pid`; for cross, the
# subscribers' node's CPU is read from /proc around the run.
#
# Knobs (environment):
#   BENCH_ROUNDS     rounds                                   (3)
#   BENCH_DURATION   publishing time of one run               (5s)
#   BENCH_PAIRS      publisher/subscriber pairs               (10)
#   BENCH_BACKLOG    closed loop's outstanding deliveries     (1000)
#   BENCH_RATE       latency runs: msgs/s per publisher       (100)
#   BENCH_BASE_REF   git revision of base                     (a90e398^1;
#                    "" skips base and merged)
#   BENCH_MERGE_REF  git revision of merged                   (a90e398)
#   BENCH_QOS        QoS of the messages                      (1)
#   BENCH_NAMES      brokers to run, of single local cross
#                    (base and merged follow BENCH_BASE_REF,
#                    localref BENCH_LOCAL_REF)               (single local cross)
#   BENCH_LOCAL_REF  git revision of localref                 ("": none)
#   BENCH_PORT_BASE  ports PORT+1..3 routes, +11..13 MQTT of the nodes,
#                    +21 single, +22 base, +23 merged, +31..33 and
#                    +41..43 localref's routes and MQTT       (27400)
#   BENCH_OUT        results directory                        (bench/results/cluster-DATE)
#
# Everything listens on 127.0.0.1. Nothing here is a steady lab: on a
# shared machine, read the spread between rounds before the medians.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-5s}
PAIRS=${BENCH_PAIRS:-10}
BACKLOG=${BENCH_BACKLOG:-1000}
RATE=${BENCH_RATE:-100}
BASE_REF=${BENCH_BASE_REF-a90e398^1}
MERGE_REF=${BENCH_MERGE_REF:-a90e398}
QOS=${BENCH_QOS:-1}
read -r -a BASE_NAMES <<<"${BENCH_NAMES:-single local cross}"
LOCAL_REF=${BENCH_LOCAL_REF:-}
PB=${BENCH_PORT_BASE:-27400}
OUT=${BENCH_OUT:-bench/results/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "building moat ($(git rev-parse --short HEAD)) ..." >&2
go build -o "$WORK/moat" ./cmd/moat
# build REF NAME: moat of revision REF as $WORK/moat-NAME.
build() {
	echo "building moat $2 ($1) ..." >&2
	mkdir -p "$WORK/$2-src"
	git archive "$1" | tar -x -C "$WORK/$2-src"
	(cd "$WORK/$2-src" && go build -o "$WORK/moat-$2" ./cmd/moat)
}
if [ -n "$BASE_REF" ]; then
	build "$BASE_REF" base
	build "$MERGE_REF" merged
fi
if [ -n "$LOCAL_REF" ]; then
	build "$LOCAL_REF" localref
fi

# conf DIR MQTT_PORT [NODE_INDEX [ROUTE_BASE]]: a node's configuration;
# with an index, a cluster section (routes ROUTE_BASE+1..3, default PB).
conf() {
	local dir=$1 port=$2 i=${3:-} rb=${4:-$PB}
	mkdir -p "$dir"
	cat >"$dir/moat.yaml" <<EOF
data_dir: data
listeners:
  - {address: "127.0.0.1:$port", transport: tcp, allow_anonymous: true}
acl:
  rules:
    - {name: all, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["#"]}
defense:
  message_rate: -1  # the default 10,000 msgs/s per client would cap the run
EOF
	if [ -n "$i" ]; then
		cat >>"$dir/moat.yaml" <<EOF
cluster:
  name: bench
  node: node$i
  listen: "127.0.0.1:$((rb + i))"
  peers: ["127.0.0.1:$((rb + 1))", "127.0.0.1:$((rb + 2))", "127.0.0.1:$((rb + 3))"]
EOF
	fi
}

# start BIN DIR: runs moat serve in DIR and prints its pid.
start() {
	local bin=$1 dir=$2
	(cd "$dir" && exec "$bin" serve -c moat.yaml >serve.log 2>&1) &
	echo $!
}

waitport() {
	for _ in $(seq 1 300); do
		if (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "port $1 did not open" >&2
	return 1
}

for i in 1 2 3; do
	conf "$WORK/node$i" $((PB + 10 + i)) "$i"
	pid=$(start "$WORK/moat" "$WORK/node$i")
	PIDS+=("$pid")
	eval "NODE${i}_PID=$pid"
done
conf "$WORK/single" $((PB + 21))
SINGLE_PID=$(start "$WORK/moat" "$WORK/single")
PIDS+=("$SINGLE_PID")
if [ -n "$BASE_REF" ]; then
	conf "$WORK/base" $((PB + 22))
	BASE_PID=$(start "$WORK/moat-base" "$WORK/base")
	conf "$WORK/merged" $((PB + 23))
	MERGED_PID=$(start "$WORK/moat-merged" "$WORK/merged")
	PIDS+=("$BASE_PID" "$MERGED_PID")
fi
if [ -n "$LOCAL_REF" ]; then
	for i in 1 2 3; do
		conf "$WORK/ref$i" $((PB + 40 + i)) "$i" $((PB + 30))
		pid=$(start "$WORK/moat-localref" "$WORK/ref$i")
		PIDS+=("$pid")
		if [ "$i" = 1 ]; then REF1_PID=$pid; fi
	done
	for p in $((PB + 41)) $((PB + 42)) $((PB + 43)); do waitport "$p"; done
fi
for p in $((PB + 11)) $((PB + 12)) $((PB + 13)) $((PB + 21)); do waitport "$p"; done
if [ -n "$BASE_REF" ]; then waitport $((PB + 22)) && waitport $((PB + 23)); fi
echo "waiting for the cluster's key-value store ..." >&2
for _ in $(seq 1 600); do
	grep -q "key-value store ready" "$WORK/node1/serve.log" && grep -q "key-value store ready" "$WORK/node3/serve.log" &&
		{ [ -z "$LOCAL_REF" ] || grep -q "key-value store ready" "$WORK/ref1/serve.log"; } && break
	sleep 0.1
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# run NAME KIND ROUND: one bench run against broker NAME.
run() {
	local name=$1 kind=$2 round=$3 addr pid extra=()
	case $name in
	base) addr=127.0.0.1:$((PB + 22)) pid=$BASE_PID ;;
	merged) addr=127.0.0.1:$((PB + 23)) pid=$MERGED_PID ;;
	single) addr=127.0.0.1:$((PB + 21)) pid=$SINGLE_PID ;;
	local) addr=127.0.0.1:$((PB + 11)) pid=$NODE1_PID ;;
	localref) addr=127.0.0.1:$((PB + 41)) pid=$REF1_PID ;;
	cross) addr=127.0.0.1:$((PB + 11)) pid=$NODE1_PID extra=(--sub-addr 127.0.0.1:$((PB + 13))) ;;
	esac
	if [ "$kind" = tput ]; then
		extra+=(--max-backlog "$BACKLOG")
	else
		extra+=(--rate "$RATE")
	fi
	local t0 t1
	t0=$(ticks "$NODE3_PID")
	"$WORK/moat" bench p2p --addr "$addr" --pubs "$PAIRS" --subs "$PAIRS" --qos "$QOS" --size 64 -d "$DUR" --drain 3s \
		--broker-pid "$pid" --quiet --topic "bench/$name/$kind/$round" --label "$name" \
		--json "$OUT/$name-$kind-$round.json" "${extra[@]}" >/dev/null
	t1=$(ticks "$NODE3_PID")
	echo "$(( t1 - t0 ))" >"$OUT/$name-$kind-$round.node3ticks"
}

NAMES=("${BASE_NAMES[@]}")
if [ -n "$BASE_REF" ]; then NAMES=(base merged "${NAMES[@]}"); fi
if [ -n "$LOCAL_REF" ]; then NAMES+=(localref); fi
for r in $(seq 1 "$ROUNDS"); do
	order=("${NAMES[@]}")
	if [ $((r % 2)) -eq 0 ]; then # reverse every other round
		order=()
		for ((k = ${#NAMES[@]} - 1; k >= 0; k--)); do order+=("${NAMES[k]}"); done
	fi
	for name in "${order[@]}"; do
		for kind in tput lat; do
			echo "round $r/$ROUNDS: $name $kind" >&2
			run "$name" "$kind" "$r"
		done
	done
done

python3 - "$OUT" "$HZ" "$ROUNDS" "${NAMES[@]}" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, hz, rounds, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def load(name, kind, r):
    with open(f"{out}/{name}-{kind}-{r}.json") as f:
        res = json.load(f)
    with open(f"{out}/{name}-{kind}-{r}.node3ticks") as f:
        ticks = int(f.read())
    return res, ticks
print("| broker | delivered msgs/s (closed loop), each round | median | lost | p50 / p99 latency at %s msgs/s, median of rounds | CPU µs per msg, publishers' node | CPU µs per msg, subscribers' node (cross) |" % "fixed")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name in names:
    tput, lost, p50, p99, cpu1, cpu3, offered = [], 0, [], [], [], [], 0
    for r in range(1, rounds + 1):
        res, ticks = load(name, "tput", r)
        m = res["messages"]
        tput.append(m["delivered_per_s"])
        lost += m["lost"]
        b = res.get("broker") or {}
        if b.get("cpu_per_msg_us"):
            cpu1.append(b["cpu_per_msg_us"])
        if name == "cross" and m["delivered"]:
            cpu3.append(1e6 * ticks / hz / m["delivered"])
        res, _ = load(name, "lat", r)
        lost += res["messages"]["lost"]
        offered = res["params"].get("offered_per_s", 0)
        p50.append(res["latency"]["p50_us"])
        p99.append(res["latency"]["p99_us"])
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    print(f"| {name} | {', '.join(f'{x:,.0f}' for x in tput)} | {med(tput):,.0f} | {lost} | "
          f"{med(p50)/1000:.2f} / {med(p99)/1000:.2f} ms ({offered:,.0f} msgs/s) | {med(cpu1):.1f} | "
          f"{'%.1f' % med(cpu3) if cpu3 else ''} |")
EOF
echo "results in $OUT" >&2
