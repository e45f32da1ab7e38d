#!/usr/bin/env bash
# Side-by-side benchmark of Moat and Mosquitto (`make bench`).
#
# Installs Mosquitto 2.x from Debian when missing, builds moat, writes a
# throw-away PKI, then for every scenario starts each broker fresh from the
# SAME mosquitto.conf (plain, TLS and mutual-TLS listeners, same certificates),
# drives it with the same `moat bench` client, and finally prints a markdown
# table with the Moat/Mosquitto ratio per metric (also written to the results
# directory). Brokers are interleaved scenario by scenario so that a change in
# machine load hits both. Everything listens on 127.0.0.1.
#
# Throughput scenarios (c, d, e) run closed loop (--max-backlog): publishers
# pause while too many deliveries are outstanding, so "delivered msgs/s" is
# the rate each broker sustains without piling up a queue, not its behaviour
# in overload. Drop --max-backlog to measure overload instead.
#
# Knobs (environment):
#   BENCH_DURATION   publishing time per scenario and broker, over
#                    all rounds (whole seconds, e.g. 20s, 1m)   (default 20s)
#   BENCH_FACTORY_DURATION  the same for scenario a, whose p99 needs
#                    enough samples at 200 msg/s                (45s)
#   BENCH_SENSORS    scenario a: sensors at 1 msg/s             (200)
#   BENCH_STORM      scenario b: clients of the mTLS storm      (2000)
#   BENCH_PAIRS      scenario c: publisher/subscriber pairs     (500)
#   BENCH_FAN        scenarios d/e: subscribers / publishers    (1000)
#   BENCH_IDLE       scenario f: idle mTLS connections          (20000)
#   BENCH_HOLD       scenario f: how long they are held         (5s)
#   BENCH_KEY_TYPE   ecdsa (P-256) or rsa (2048)                (ecdsa)
#   BENCH_KEX        TLS key exchange: classical, pq, p256      (classical;
#                    Debian's Mosquitto/OpenSSL 3.0 has no ML-KEM)
#   BENCH_NULLFWD    1 to add the null forwarder as a ceiling   (1)
#   BENCH_SCENARIOS  subset to run, e.g. "a c"                  (a b c d e f)
#   BENCH_ROUNDS     scenarios a, c, d, e run in this many rounds that
#                    alternate the brokers, each a share of the
#                    duration; the rounds are merged per broker   (3)
#   BENCH_PORT       first of the ports used                    (18830)
#   BENCH_OUT        results directory        (bench/results/UTC-TIMESTAMP)
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${BENCH_DURATION:-20s}
FDUR=${BENCH_FACTORY_DURATION:-45s}
SENSORS=${BENCH_SENSORS:-200}
STORM=${BENCH_STORM:-2000}
PAIRS=${BENCH_PAIRS:-500}
FAN=${BENCH_FAN:-1000}
IDLE=${BENCH_IDLE:-20000}
HOLD=${BENCH_HOLD:-5s}
KEYTYPE=${BENCH_KEY_TYPE:-ecdsa}
KEX=${BENCH_KEX:-classical}
NULLFWD=${BENCH_NULLFWD:-1}
SCENARIOS=${BENCH_SCENARIOS:-a b c d e f}
ROUNDS=${BENCH_ROUNDS:-3}
PORT=${BENCH_PORT:-18830}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${BENCH_OUT:-bench/results/$STAMP}

P_PLAIN=$PORT P_TLS=$((PORT + 1)) P_MTLS=$((PORT + 2)) P_NULL=$((PORT + 3)) P_NULLTLS=$((PORT + 4))

command -v mosquitto >/dev/null || ./scripts/install-deps.sh mosquitto
go build -o bin/moat ./cmd/moat
MOAT=$PWD/bin/moat

# Tens of thousands of sockets: raise the open-file limit as far as allowed.
# Where the hard limit is too low for BENCH_IDLE connections (the broker and
# the load generator each need one descriptor per connection, plus a few),
# scenario f is scaled down and says so.
ulimit -n 65535 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)
if [ "$FDS" != unlimited ] && [ "$IDLE" -gt $((FDS - 1000)) ]; then
  echo "bench: open-file limit is $FDS: scenario f runs $((FDS - 1000)) idle connections instead of $IDLE" >&2
  IDLE=$((FDS - 1000))
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/moat-bench.XXXXXX)
chmod 755 "$WORK"
BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$MOAT" bench certs --dir "$WORK/pki" --key-type "$KEYTYPE" >/dev/null
PKI=$WORK/pki

# One configuration for both brokers. `user root` only matters to Mosquitto
# when started as root (Moat ignores it and never switches user).
cat >"$WORK/broker.conf" <<CONF
per_listener_settings false
allow_anonymous true
persistence false
connection_messages false
log_dest stderr
log_type error
log_type warning
set_tcp_nodelay true
max_inflight_messages 20
max_queued_messages 1000
max_packet_size 1048576
user root

listener $P_PLAIN 127.0.0.1

listener $P_TLS 127.0.0.1
certfile $PKI/server.pem
keyfile $PKI/server.key

listener $P_MTLS 127.0.0.1
cafile $PKI/ca.pem
certfile $PKI/server.pem
keyfile $PKI/server.key
require_certificate true
use_identity_as_username true
CONF

# Moat reads the same settings from YAML, plus a defense section: the load
# generator opens every connection from 127.0.0.1 and its publishers send
# far beyond one device's rate, so the per-address and per-client limits
# are raised out of its way. Detection, bans and the rate checks still run
# on every connection and message (docs/performance.md, "Defense, end to end").
cat >"$WORK/moat.yaml" <<CONF
listeners:
  - address: 127.0.0.1:$P_PLAIN
    transport: tcp
    allow_anonymous: true
  - address: 127.0.0.1:$P_TLS
    transport: tls
    allow_anonymous: true
    tls: {cert: $PKI/server.pem, key: $PKI/server.key, client_auth: none}
  - address: 127.0.0.1:$P_MTLS
    transport: tls
    allow_anonymous: true
    tls:
      cert: $PKI/server.pem
      key: $PKI/server.key
      client_ca: $PKI/ca.pem
      client_auth: required
      identity: {username_from: cn}
limits: {max_packet_size: 1048576, max_inflight: 20, max_queued_messages: 1000}
log: {level: warn, dest: stderr, connection_messages: false}
persistence: {enabled: false}
defense:
  conn_rate: 1000000
  conn_burst: 1000000
  listener_conn_rate: 1000000
  listener_conn_burst: 1000000
  max_conns_per_addr: 1000000
  message_rate: 100000000
  message_burst: 100000000
  byte_rate: 1000000000
  byte_burst: 1000000000
CONF

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: nothing listens on port $1; see $OUT/$2.log" >&2
  return 1
}

start_broker() { # NAME ID
  case $1 in
  moat) "$MOAT" serve -c "$WORK/moat.yaml" --data "$WORK/moat-data" >>"$OUT/$2.moat.log" 2>&1 &
    BROKER_PID=$! ;;
  mosquitto) mosquitto -c "$WORK/broker.conf" >>"$OUT/$2.mosquitto.log" 2>&1 &
    BROKER_PID=$! ;;
  nullfwd)
    if [ "$3" = tls ]; then
      "$MOAT" bench nullfwd --listen 127.0.0.1:$P_NULLTLS --cert "$PKI/server.pem" --key "$PKI/server.key" --cafile "$PKI/ca.pem" >>"$OUT/$2.nullfwd.log" 2>&1 &
    else
      "$MOAT" bench nullfwd --listen 127.0.0.1:$P_NULL >>"$OUT/$2.nullfwd.log" 2>&1 &
    fi
    BROKER_PID=$! ;;
  esac
  case $1 in
  nullfwd) if [ "$3" = tls ]; then wait_port $P_NULLTLS "$2.$1"; else wait_port $P_NULL "$2.$1"; fi ;;
  *) wait_port $P_PLAIN "$2.$1" && wait_port $P_MTLS "$2.$1" ;;
  esac
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

MTLS=(--cafile "$PKI/ca.pem" --client-ca "$PKI/ca.pem" --client-ca-key "$PKI/ca.key" --kex "$KEX")

# run ID TRANSPORT BROKERS -- moat bench args...
# Results go to $OUT/ID.BROKER.* unless RUN_DIR and RUN_SUFFIX say otherwise
# (rounds).
run() {
  local id=$1 transport=$2 brokers=$3
  local dir=${RUN_DIR:-$OUT} sfx=${RUN_SUFFIX:-}
  shift 4
  for b in $brokers; do
    local port
    case $b/$transport in
    nullfwd/plain) port=$P_NULL ;;
    nullfwd/mtls) port=$P_NULLTLS ;;
    */plain) port=$P_PLAIN ;;
    */mtls) port=$P_MTLS ;;
    esac
    local tls=()
    [ "$transport" = mtls ] && tls=("${MTLS[@]}")
    echo "== $id on $b ($transport): moat bench $*" >&2
    start_broker "$b" "$id" "$([ "$transport" = mtls ] && echo tls)"
    timeout --kill-after=10s 900 "$MOAT" bench "$@" --addr 127.0.0.1:$port "${tls[@]}" --label "$id $b" --broker-pid "$BROKER_PID" \
      --interval 2s --json "$dir/$id.$b$sfx.json" --html "$dir/$id.$b$sfx.html" >"$dir/$id.$b$sfx.txt" || echo "bench: $id on $b failed" >&2
    stop_broker
    sed 's/^/    /' "$dir/$id.$b$sfx.txt" >&2
  done
}

# rounds ID TRANSPORT BROKERS SECONDS -- moat bench args (without -d)...
# Runs the scenario in $ROUNDS rounds of SECONDS/ROUNDS each, alternating
# the brokers round by round, then merges each broker's rounds into one
# result (`moat bench merge`: counts add up, percentiles come from the
# merged histograms). A burst of load from outside then falls on both
# brokers' figures instead of deciding one of them.
rounds() {
  local id=$1 transport=$2 brokers=$3 secs=$4
  shift 5
  local per=$(((secs + ROUNDS - 1) / ROUNDS))
  mkdir -p "$OUT/rounds"
  for r in $(seq "$ROUNDS"); do
    echo "== $id: round $r of $ROUNDS (${per}s per broker)" >&2
    RUN_DIR="$OUT/rounds" RUN_SUFFIX=".r$r" run "$id" "$transport" "$brokers" -- "$@" -d "${per}s"
  done
  for b in $brokers; do
    "$MOAT" bench merge --json "$OUT/$id.$b.json" --html "$OUT/$id.$b.html" "$OUT/rounds/$id.$b".r*.json \
      >"$OUT/$id.$b.txt" || echo "bench: merging the rounds of $id on $b failed" >&2
    echo "== $id on $b, $ROUNDS rounds merged:" >&2
    sed 's/^/    /' "$OUT/$id.$b.txt" >&2
  done
}

# secs DURATION: whole seconds of "20s", "45s" or "1m30s" style durations.
secs() {
  local d=$1 total=0
  [[ $d =~ ^([0-9]+m)?([0-9]+s)?$ ]] || { echo "bench: duration $d: use e.g. 20s or 1m30s" >&2; exit 2; }
  [ -n "${BASH_REMATCH[1]}" ] && total=$((${BASH_REMATCH[1]%m} * 60))
  [ -n "${BASH_REMATCH[2]}" ] && total=$((total + ${BASH_REMATCH[2]%s}))
  echo "$total"
}

BROKERS="moat mosquitto"
DSECS=$(secs "$DUR")
FSECS=$(secs "$FDUR")
# The null forwarder is a ceiling for reference: one run, not in rounds.
nullfwd() {
  [ "$NULLFWD" = 1 ] || return 0
  run "$@"
}
START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

for s in $SCENARIOS; do
  case $s in
  a)
    rounds a1-factory-plain plain "$BROKERS" "$FSECS" -- fanin --pubs "$SENSORS" --subs 1 --rate 1 --qos 1
    rounds a2-factory-mtls mtls "$BROKERS" "$FSECS" -- fanin --pubs "$SENSORS" --subs 1 --rate 1 --qos 1
    rounds a3-factory-mtls-e2e mtls "$BROKERS" "$FSECS" -- fanin --pubs "$SENSORS" --subs 1 --rate 1 --qos 1 --encrypt
    ;;
  b) run b-mtls-storm mtls "$BROKERS" -- conn -n "$STORM" -d 2s ;;
  c)
    args=(p2p --pubs "$PAIRS" --subs "$PAIRS" --qos 1 --size 64 --max-backlog $((PAIRS * 10)))
    rounds c-p2p-qos1-mtls mtls "$BROKERS" "$DSECS" -- "${args[@]}"
    nullfwd c-p2p-qos1-mtls mtls nullfwd -- "${args[@]}" -d "$DUR"
    ;;
  d)
    args=(fanout --pubs 1 --subs "$FAN" --qos 0 --size 64 --max-backlog $((FAN * 20)))
    rounds d-fanout-qos0 plain "$BROKERS" "$DSECS" -- "${args[@]}"
    nullfwd d-fanout-qos0 plain nullfwd -- "${args[@]}" -d "$DUR"
    ;;
  e)
    args=(fanin --pubs "$FAN" --subs 1 --qos 1 --size 64 --max-backlog 500)
    rounds e-fanin-qos1 plain "$BROKERS" "$DSECS" -- "${args[@]}"
    nullfwd e-fanin-qos1 plain nullfwd -- "${args[@]}" -d "$DUR"
    ;;
  f) run f-idle-mtls mtls "$BROKERS" -- conn -n "$IDLE" -d "$HOLD" --source-addrs 8 --conn-concurrency 128 --connect-timeout 60s ;;
  *) echo "bench: unknown scenario $s (a-f)" >&2; exit 2 ;;
  esac
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "# moat bench vs Mosquitto, $STAMP"
  echo
  echo "Command: \`make bench\` (scripts/bench.sh), BENCH_DURATION=$DUR, BENCH_FACTORY_DURATION=$FDUR, BENCH_ROUNDS=$ROUNDS, key type $KEYTYPE, key exchange $KEX;"
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(go version | cut -d' ' -f3), $(mosquitto -h 2>/dev/null | head -1 | sed 's/ is an MQTT.*//');"
  echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER; wall time $(($(date +%s) - START)) s;"
  echo "open-file limit $FDS, so scenario f held $IDLE idle connections."
  echo
} >"$OUT/summary.md"
set +e
"$MOAT" bench compare "$OUT" --extra nullfwd \
  --target a1-factory-plain:latency_p99_ms\<=1 --target a2-factory-mtls:latency_p99_ms\<=1 \
  --target a3-factory-mtls-e2e:latency_p99_ms\<=1 \
  --target b-mtls-storm:conn_per_s\>=2 --target b-mtls-storm:cpu_per_conn_ms\<=0.7 \
  --target c-p2p-qos1-mtls:delivered_per_s\>=2 --target d-fanout-qos0:delivered_per_s\>=2 \
  --target e-fanin-qos1:delivered_per_s\>=2 --target f-idle-mtls:rss_per_conn_kib\<=1.5 >>"$OUT/summary.md"
status=$?
set -e
cp "$OUT/summary.md" bench/results/latest.md
cat "$OUT/summary.md"
echo
echo "results: $OUT (JSON, HTML reports, broker logs); table also in bench/results/latest.md"
# A missed target is reported in the table, not as a failure of the run.
[ $status -eq 0 ] || [ $status -eq 3 ]
