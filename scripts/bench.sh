#!/usr/bin/env bash
# Side-by-side benchmark of Moat and its peers (`make bench`): Mosquitto,
# mochi-mqtt v2 and nats-server's MQTT side.
#
# Installs Mosquitto 2.x from Debian when missing, builds moat, builds the
# Go peers (bench/peers, their own module) from the Go module proxy into a
# cache directory, writes a throw-away PKI, then for every scenario starts
# each broker fresh: Moat and Mosquitto from the SAME mosquitto.conf (plain,
# TLS and mutual-TLS listeners, same certificates), mochi and nats-server
# with the same certificates and listeners on the same ports. Each is driven
# by the same `moat bench` client, and a markdown table finally gives every
# broker's figures and Moat's ratio to the best peer per metric (also written
# to the results directory). Brokers are interleaved scenario by scenario so
# that a change in machine load hits all. Everything listens on 127.0.0.1.
#
# Throughput scenarios (c, d, e) run closed loop (--max-backlog): publishers
# pause while too many deliveries are outstanding, so "delivered msgs/s" is
# the rate each broker sustains without piling up a queue, not its behaviour
# in overload. Scenarios g and h measure overload: open loop, publishers at
# a fixed offered rate faster than the subscribers can take (Moat and
# Mosquitto with max_queued_messages 100000; mochi and nats with their
# defaults). Scenario i is the mutual-TLS handshake against the crypto floor
# (the null forwarder: a bare crypto/tls server), and the resumption storm.
# Scenario j is the durable store: p2p QoS 1 with persistent sessions over
# mutual TLS, Moat in memory and on its encrypted store in each sync mode
# (moat-always, moat-batch, moat-off), against nats-server's MQTT, whose
# QoS 1 messages and persistent sessions live in JetStream (its defaults:
# a PUBACK after the store write, fsync every 2 minutes).
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
#   BENCH_OPEN_DURATION  scenarios g, h: the open loop's window (10s)
#   BENCH_OPEN_RATE  scenario g: offered msgs/s per publisher,
#                    100 publishers                             (5000)
#   BENCH_FANOUT_RATE  scenario h: msgs/s in, 1 -> BENCH_FAN     (2000)
#   BENCH_HANDSHAKES scenario i: handshakes per broker           (2000)
#   BENCH_DURABLE_DURATION  scenario j, per broker over all rounds (30s)
#   BENCH_PEERS      Go peers built and run: mochi natsmqtt      (both)
#   BENCH_IDLE_PEERS peers in scenario f (mochi holds ~0.4 MiB
#                    per idle connection, 8 GB at 20,000)       (natsmqtt)
#   BENCH_PEER_CACHE where the peers are built
#                    (${XDG_CACHE_HOME:-~/.cache}/moat-bench-peers)
#   BENCH_SCENARIOS  subset to run, e.g. "a c"          (a b c d e f g h i j)
#   BENCH_ROUNDS     scenarios a, c, d, e run in this many rounds that
#                    alternate the brokers, each a share of the
#                    duration; the rounds are merged per broker   (3)
#   BENCH_ADMIN      1 adds "moat-admin" to scenarios c and d: Moat with
#                    its admin listener on and /metrics scraped every
#                    second (HTTPS, a viewer token), compared with Moat
#                    alone; "only" runs those two brokers alone    (0)
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
SCENARIOS=${BENCH_SCENARIOS:-a b c d e f g h i j}
JDUR=${BENCH_DURABLE_DURATION:-30s}
ODUR=${BENCH_OPEN_DURATION:-10s}
OPEN_RATE=${BENCH_OPEN_RATE:-5000}
FANOUT_RATE=${BENCH_FANOUT_RATE:-2000}
HANDSHAKES=${BENCH_HANDSHAKES:-2000}
PEERS=${BENCH_PEERS-mochi natsmqtt}
IDLE_PEERS=${BENCH_IDLE_PEERS-natsmqtt}
PEER_CACHE=${BENCH_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moat-bench-peers}
ROUNDS=${BENCH_ROUNDS:-3}
PORT=${BENCH_PORT:-18830}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${BENCH_OUT:-bench/results/$STAMP}

ADMIN=${BENCH_ADMIN:-0}
P_PLAIN=$PORT P_TLS=$((PORT + 1)) P_MTLS=$((PORT + 2)) P_NULL=$((PORT + 3)) P_NULLTLS=$((PORT + 4)) P_ADMIN=$((PORT + 5))

command -v mosquitto >/dev/null || ./scripts/install-deps.sh mosquitto
go build -o bin/moat ./cmd/moat
MOAT=$PWD/bin/moat

# The Go peers: built from the module proxy (the versions pinned in
# bench/peers/go.mod), incrementally, into the cache directory. A peer that
# does not build (no network, no module cache) is left out, with a warning.
BUILT=""
if [ -n "$PEERS" ]; then
  mkdir -p "$PEER_CACHE"
  for p in $PEERS; do
    if (cd bench/peers && GOFLAGS=-mod=mod go build -o "$PEER_CACHE/$p" "./$p"); then
      BUILT="$BUILT $p"
    else
      echo "bench: building peer $p failed (is the Go module proxy reachable?); it is left out" >&2
    fi
  done
fi
PEERS=${BUILT# }

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
SCRAPER_PID=""
cleanup() {
  if [ -n "$SCRAPER_PID" ]; then kill "$SCRAPER_PID" 2>/dev/null || true; wait "$SCRAPER_PID" 2>/dev/null || true; fi
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$MOAT" bench certs --dir "$WORK/pki" --key-type "$KEYTYPE" >/dev/null
PKI=$WORK/pki
CONF=$WORK/broker.conf

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
# The open loop (scenarios g, h) lets the brokers queue deeply, as in the
# overload the scenarios stand for.
sed 's/^max_queued_messages .*/max_queued_messages 100000/' "$WORK/broker.conf" >"$WORK/broker-open.conf"

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
# No ACL, as the other brokers run without one (docs/performance.md,
# "Access control", measures the cost of a policy).
acl: {allow_all: true}
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

MOAT_CONF=$WORK/moat.yaml
sed 's/max_queued_messages: 1000}/max_queued_messages: 100000}/' "$WORK/moat.yaml" >"$WORK/moat-open.yaml"
# Scenario j: the same with the durable store in each sync mode (its own
# data directory, emptied before every start).
for m in always batch off; do
  sed "s/^persistence: {enabled: false}/persistence: {enabled: true, sync: $m}/" "$WORK/moat.yaml" >"$WORK/moat-$m.yaml"
done

# moat-admin (BENCH_ADMIN): the same Moat with its admin listener, which
# serves HTTPS with the TLS listeners' certificate; a viewer token for the
# scraper.
if [ "$ADMIN" != 0 ]; then
  mkdir -p "$WORK/moat-admin-data"
  "$MOAT" admin token create bench-scraper --role viewer --data "$WORK/moat-admin-data" >"$WORK/admin.token"
fi

# scrape_metrics: GET /metrics every second, as Prometheus would, until
# killed; each answer's status goes to $OUT/scrapes.log.
scrape_metrics() {
  while sleep 1; do
    curl -s -o /dev/null -w '%{http_code}\n' --cacert "$PKI/ca.pem" -H "Authorization: Bearer $(cat "$WORK/admin.token")" \
      "https://127.0.0.1:$P_ADMIN/metrics" >>"$OUT/scrapes.log" 2>/dev/null || echo fail >>"$OUT/scrapes.log"
  done
}

# wait_port PORT: 0 once something listens on PORT, 1 when the broker
# exited or nothing listens within 10 s.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start_broker NAME ID [tls]: starts NAME and waits for its listeners. A
# broker that exits or does not listen (most often a port still held by the
# previous one) is started again, three times at most.
start_broker() {
  local try
  for try in 1 2 3; do
    start_once "$@"
    local ports=($P_PLAIN $P_MTLS)
    case $1 in
    moat-admin) ports=($P_PLAIN $P_MTLS $P_ADMIN) ;;
    nullfwd|floor) if [ "$3" = tls ]; then ports=($P_NULLTLS); else ports=($P_NULL); fi ;;
    natsmqtt) if [ "$3" = tls ]; then ports=($P_MTLS); else ports=($P_PLAIN); fi ;;
    esac
    local ok=1 p
    for p in "${ports[@]}"; do wait_port "$p" || { ok=0; break; }; done
    if [ $ok = 1 ]; then
      if [ "$1" = moat-admin ]; then
        scrape_metrics &
        SCRAPER_PID=$!
      fi
      return 0
    fi
    echo "bench: $1 does not listen on ${ports[*]} (attempt $try); see $OUT/$2.$1.log" >&2
    stop_broker
    sleep 1
  done
  return 1
}

start_once() { # NAME ID [tls]
  # exec: BROKER_PID must be the broker itself (its CPU and RSS are read).
  local log="$OUT/$2.$1.log"
  case $1 in
  moat) exec "$MOAT" serve -c "$MOAT_CONF" --data "$WORK/moat-data" >>"$log" 2>&1 ;;
  moat-always|moat-batch|moat-off)
    rm -rf "$WORK/moat-data-durable"
    exec "$MOAT" serve -c "$WORK/$1.yaml" --data "$WORK/moat-data-durable" >>"$log" 2>&1 ;;
  moat-admin) exec "$MOAT" serve -c "$MOAT_CONF" --data "$WORK/moat-admin-data" --admin 127.0.0.1:$P_ADMIN >>"$log" 2>&1 ;;
  mosquitto) exec mosquitto -c "$CONF" >>"$log" 2>&1 ;;
  mochi) exec "$PEER_CACHE/mochi" -plain 127.0.0.1:$P_PLAIN -mtls 127.0.0.1:$P_MTLS \
    -cafile "$PKI/ca.pem" -cert "$PKI/server.pem" -key "$PKI/server.key" >>"$log" 2>&1 ;;
  natsmqtt)
    if [ "$3" = tls ]; then
      exec "$PEER_CACHE/natsmqtt" -mtls 127.0.0.1:$P_MTLS -cafile "$PKI/ca.pem" -cert "$PKI/server.pem" -key "$PKI/server.key" >>"$log" 2>&1
    else
      exec "$PEER_CACHE/natsmqtt" -plain 127.0.0.1:$P_PLAIN >>"$log" 2>&1
    fi ;;
  nullfwd|floor)
    if [ "$3" = tls ]; then
      exec "$MOAT" bench nullfwd --listen 127.0.0.1:$P_NULLTLS --cert "$PKI/server.pem" --key "$PKI/server.key" --cafile "$PKI/ca.pem" >>"$log" 2>&1
    else
      exec "$MOAT" bench nullfwd --listen 127.0.0.1:$P_NULL >>"$log" 2>&1
    fi ;;
  esac &
  BROKER_PID=$!
}

stop_broker() {
  if [ -n "$SCRAPER_PID" ]; then
    kill "$SCRAPER_PID" 2>/dev/null || true
    wait "$SCRAPER_PID" 2>/dev/null || true
    SCRAPER_PID=""
  fi
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

MTLS=(--cafile "$PKI/ca.pem" --client-ca "$PKI/ca.pem" --client-ca-key "$PKI/ca.key" --kex "$KEX")
# Scenario i: the client offers what Go offers by default
# (X25519MLKEM768 first, X25519 too, which Mosquitto picks).
MTLS_GO=(--cafile "$PKI/ca.pem" --client-ca "$PKI/ca.pem" --client-ca-key "$PKI/ca.key")

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
    nullfwd/plain|floor/plain) port=$P_NULL ;;
    nullfwd/mtls|floor/mtls) port=$P_NULLTLS ;;
    */plain) port=$P_PLAIN ;;
    */mtls) port=$P_MTLS ;;
    esac
    local tls=()
    if [ "$transport" = mtls ]; then
      if [ -n "${GO_KEX:-}" ]; then tls=("${MTLS_GO[@]}"); else tls=("${MTLS[@]}"); fi
    fi
    echo "== $id on $b ($transport): moat bench $*" >&2
    if ! start_broker "$b" "$id" "$([ "$transport" = mtls ] && echo tls)"; then
      echo "bench: $id on $b skipped: the broker did not start" >&2
      continue
    fi
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

BROKERS="moat mosquitto $PEERS"
# Scenarios c and d also run moat-admin with BENCH_ADMIN.
case $ADMIN in
0) CD_BROKERS=$BROKERS ;;
only) BROKERS="moat" CD_BROKERS="moat moat-admin" ;;
*) CD_BROKERS="$BROKERS moat-admin" ;;
esac
IDLE_BROKERS="moat mosquitto"
for p in $IDLE_PEERS; do case " $PEERS " in *" $p "*) IDLE_BROKERS="$IDLE_BROKERS $p" ;; esac; done
OSECS=$(secs "$ODUR")
DSECS=$(secs "$DUR")
JSECS=$(secs "$JDUR")
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
    rounds c-p2p-qos1-mtls mtls "$CD_BROKERS" "$DSECS" -- "${args[@]}"
    nullfwd c-p2p-qos1-mtls mtls nullfwd -- "${args[@]}" -d "$DUR"
    ;;
  d)
    args=(fanout --pubs 1 --subs "$FAN" --qos 0 --size 64 --max-backlog $((FAN * 20)))
    rounds d-fanout-qos0 plain "$CD_BROKERS" "$DSECS" -- "${args[@]}"
    nullfwd d-fanout-qos0 plain nullfwd -- "${args[@]}" -d "$DUR"
    ;;
  e)
    args=(fanin --pubs "$FAN" --subs 1 --qos 1 --size 64 --max-backlog 500)
    rounds e-fanin-qos1 plain "$BROKERS" "$DSECS" -- "${args[@]}"
    nullfwd e-fanin-qos1 plain nullfwd -- "${args[@]}" -d "$DUR"
    ;;
  f) run f-idle-mtls mtls "$IDLE_BROKERS" -- conn -n "$IDLE" -d "$HOLD" --source-addrs 8 --conn-concurrency 128 --connect-timeout 60s ;;
  g)
    CONF=$WORK/broker-open.conf MOAT_CONF=$WORK/moat-open.yaml run g-open-p2p-qos1 plain "$BROKERS" -- \
      p2p --pubs 100 --subs 100 --qos 1 --size 64 --inflight 64 --rate "$OPEN_RATE" -d "${OSECS}s" --drain 5s
    ;;
  h)
    CONF=$WORK/broker-open.conf MOAT_CONF=$WORK/moat-open.yaml run h-open-fanout-qos0 plain "$BROKERS" -- \
      fanout --pubs 1 --subs "$FAN" --qos 0 --size 64 --rate "$FANOUT_RATE" -d "${OSECS}s" --drain 5s
    ;;
  i)
    # The floor is the null forwarder over TLS: crypto/tls doing the same
    # mutual-TLS handshake, with nothing of a broker around it. Results go
    # to their own directory, compared with the floor below.
    mkdir -p "$OUT/handshake"
    GO_KEX=1 RUN_DIR="$OUT/handshake" run i1-handshake-mtls mtls "moat floor $BROKERS" -- conn -n "$HANDSHAKES" -d 1s
    GO_KEX=1 RUN_DIR="$OUT/handshake" run i2-resume-mtls mtls "moat floor" -- conn -n "$HANDSHAKES" -d 1s --resume
    ;;
  j)
    # Results in their own directory: Moat with sync always is compared
    # with nats-server and with Moat in memory below.
    mkdir -p "$OUT/durable"
    DURABLE_BROKERS="moat moat-always moat-batch moat-off"
    case " $PEERS " in *" natsmqtt "*) DURABLE_BROKERS="$DURABLE_BROKERS natsmqtt" ;; esac
    OUT="$OUT/durable" rounds j-durable-p2p-qos1-mtls mtls "$DURABLE_BROKERS" "$JSECS" -- \
      p2p --pubs 100 --subs 100 --qos 1 --size 64 --persistent --max-backlog 1000
    ;;
  *) echo "bench: unknown scenario $s (a-j)" >&2; exit 2 ;;
  esac
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "# moat bench vs Mosquitto${PEERS:+, ${PEERS// /, }}, $STAMP"
  echo
  echo "Command: \`make bench\` (scripts/bench.sh), BENCH_DURATION=$DUR, BENCH_FACTORY_DURATION=$FDUR, BENCH_ROUNDS=$ROUNDS, key type $KEYTYPE, key exchange $KEX;"
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(go version | cut -d' ' -f3), $(mosquitto -h 2>/dev/null | head -1 | sed 's/ is an MQTT.*//');"
  echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER; wall time $(($(date +%s) - START)) s;"
  echo "open-file limit $FDS, so scenario f held $IDLE idle connections ($IDLE_BROKERS)."
  echo "Peers: mochi-mqtt $(sed -n 's/.*mochi-mqtt\/server\/v2 \(v[^ ]*\).*/\1/p' bench/peers/go.mod), nats-server $(sed -n 's/.*nats-server\/v2 \(v[^ ]*\).*/\1/p' bench/peers/go.mod) (MQTT, JetStream); open loop (g, h): ${OSECS} s window, g offers $((OPEN_RATE * 100)) msgs/s, h $FANOUT_RATE msgs/s in."
  echo
} >"$OUT/summary.md"
set +e
PEER_LIST=$(echo mosquitto $PEERS | tr ' ' ,)
status=0
[ "$ADMIN" = only ] || ! ls "$OUT"/*.json >/dev/null 2>&1 || "$MOAT" bench compare "$OUT" --peers "$PEER_LIST" --extra nullfwd \
  --target a1-factory-plain:latency_p99_ms\<=1 --target a2-factory-mtls:latency_p99_ms\<=1 \
  --target a3-factory-mtls-e2e:latency_p99_ms\<=1 \
  --target b-mtls-storm:conn_per_s\>=2 --target b-mtls-storm:cpu_per_conn_ms\<=0.7 \
  --target c-p2p-qos1-mtls:delivered_per_s\>=2 --target d-fanout-qos0:delivered_per_s\>=2 \
  --target e-fanin-qos1:delivered_per_s\>=2 --target f-idle-mtls:rss_per_conn_kib\<=1 \
  --target g-open-p2p-qos1:delivered_per_s\>=2 --target h-open-fanout-qos0:delivered_per_s\>=1 \
  --target h-open-fanout-qos0:cpu_per_msg_us\<=1 >>"$OUT/summary.md" || status=$?
if [ -d "$OUT/handshake" ]; then
  {
    echo
    echo "## Mutual-TLS handshake against the crypto floor (scenario i)"
    echo
    echo "The floor is crypto/tls alone (the null forwarder over TLS) doing the same handshake; the client offers Go's default groups. i2 resumes TLS sessions (tickets) instead of full handshakes."
    echo
    "$MOAT" bench compare "$OUT/handshake" --peers floor --extra "$(echo mosquitto $PEERS | tr ' ' ,)" \
      --target i1-handshake-mtls:cpu_per_conn_ms\<=1.1
  } >>"$OUT/summary.md"
  s2=$?
  [ $status -ne 0 ] || status=$s2
fi
if [ -d "$OUT/durable" ]; then
  s3=0
  {
    echo
    echo "## Durable store (scenario j)"
    echo
    echo "p2p QoS 1, 100 -> 100 persistent sessions, mutual TLS. moat-always, moat-batch and moat-off run on the encrypted store (sync always, batch, off); moat keeps everything in memory; natsmqtt keeps QoS 1 in JetStream (default settings). First against nats-server (target: ahead), then against Moat in memory (target: at least half)."
    echo
    "$MOAT" bench compare "$OUT/durable" --first moat-always --peers natsmqtt --extra moat,moat-batch,moat-off \
      --target j-durable-p2p-qos1-mtls:delivered_per_s\>=1 || s3=$?
    echo
    "$MOAT" bench compare "$OUT/durable" --first moat-always --peers moat \
      --target j-durable-p2p-qos1-mtls:delivered_per_s\>=0.5 || s3=$?
  } >>"$OUT/summary.md"
  [ $status -ne 0 ] || status=$s3
fi
if [ "$ADMIN" != 0 ]; then
  {
    echo
    echo "## Admin listener on and scraped every second (BENCH_ADMIN)"
    echo
    ok=$(grep -c '^200$' "$OUT/scrapes.log" 2>/dev/null || true)
    bad=$(grep -vc '^200$' "$OUT/scrapes.log" 2>/dev/null || true)
    echo "moat-admin is Moat with \`--admin\` and GET /metrics every second over HTTPS; ${ok:-0} scrapes answered 200, ${bad:-0} did not (a scrape under way when the broker stops fails). Target: within 2 %."
    echo
    "$MOAT" bench compare "$OUT" --first moat-admin --second moat \
      --target c-p2p-qos1-mtls:delivered_per_s\>=0.98 --target d-fanout-qos0:delivered_per_s\>=0.98
  } >>"$OUT/summary.md"
  s4=$?
  [ $status -ne 0 ] || status=$s4
fi
set -e
cp "$OUT/summary.md" bench/results/latest.md
cat "$OUT/summary.md"
echo
echo "results: $OUT (JSON, HTML reports, broker logs); table also in bench/results/latest.md"
# A missed target is reported in the table, not as a failure of the run.
[ $status -eq 0 ] || [ $status -eq 3 ]
