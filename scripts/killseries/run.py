#!/usr/bin/python3
"""One kill run against a fresh three-node moat cluster.

  run.py RUN_NUMBER KILL_NODE     (results in $KS_DIR/runs/RUN_NUMBER/)

KILL_NODE 0 kills nothing: the subscriber starts on node 1 and moves to
node 2 (a clean DISCONNECT, then a connection there) at the kill's time.
KILL_NODE 4 kills all three nodes at once and starts them again on their
data KS_DOWN seconds later (default 2): a crash of the whole cluster.

KS_DIR (default /tmp/moat-killseries) holds the runs; KS_MOAT names the
binary (default $KS_DIR/moat).

Node i: routes 127.0.0.1:27600+i, MQTT 27610+i, admin API 27620+i.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import paho.mqtt.client as mqtt

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("KS_DIR", "/tmp/moat-killseries")
MOAT = os.path.abspath(os.environ.get("KS_MOAT", os.path.join(WORK, "moat")))
PY = "/usr/bin/python3"
ROUTE, MQTTP, ADMIN = 27600, 27610, 27620
RATE = float(os.environ.get("KS_RATE", "300"))
DURATION = float(os.environ.get("KS_DURATION", "30"))
KILL_AFTER = float(os.environ.get("KS_KILL_AFTER", "10"))
DOWN = float(os.environ.get("KS_DOWN", "2"))
ALL = 4  # KILL_NODE that kills every node

CONF = """data_dir: data
listeners:
  - {{address: "127.0.0.1:{mqtt}", transport: tcp, allow_anonymous: true}}
acl:
  rules:
    - {{name: all, effect: allow, subjects: {{all: true}}, actions: [publish, subscribe, receive], topics: ["#"]}}
admin:
  listen: "127.0.0.1:{admin}"
cluster:
  name: kill
  node: node{i}
  listen: "127.0.0.1:{route}"
  peers: ["127.0.0.1:{r1}", "127.0.0.1:{r2}", "127.0.0.1:{r3}"]
"""

PROCS = []  # every process this run started


def log(rundir, msg):
    line = "%s %s" % (time.strftime("%H:%M:%S", time.gmtime()), msg)
    print(line, flush=True)
    with open(os.path.join(rundir, "driver.log"), "a") as f:
        f.write(line + "\n")


def start(argv, cwd, out, mode="w"):
    f = open(out, mode)
    p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True)
    PROCS.append(p)
    return p


def port_open(p):
    try:
        socket.create_connection(("127.0.0.1", p), 0.5).close()
        return True
    except OSError:
        return False


def cluster_status(rundir, node):
    tok = open(os.path.join(rundir, "node%d" % node, "token")).read().strip()
    req = urllib.request.Request(
        "http://127.0.0.1:%d/api/v1/cluster" % (ADMIN + node),
        headers={"Authorization": "Bearer " + tok})
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.load(r)


def leader(rundir, node, stream="moat_msgs"):
    try:
        st = cluster_status(rundir, node)
        for s in st.get("streams", []):
            if s.get("name") == stream:
                return s.get("leader") or "none"
        return "absent"
    except Exception as e:
        return "error: %r" % (e,)


def roundtrip(timeout=40):
    """QoS 1 from node 1 and node 3 reaches a subscriber on node 2."""
    got = set()
    sub = mqtt.Client(client_id="ks-ready-sub", protocol=mqtt.MQTTv5)
    subacked = []
    sub.on_message = lambda c, u, m: got.add(m.payload.decode())
    sub.on_subscribe = lambda *a: subacked.append(1)
    sub.connect("127.0.0.1", MQTTP + 2, clean_start=True)
    sub.loop_start()
    sub.subscribe("ready/#", qos=1)
    pubs = []
    for n in (1, 3):
        p = mqtt.Client(client_id="ks-ready-pub%d" % n, protocol=mqtt.MQTTv5)
        p.connect("127.0.0.1", MQTTP + n, clean_start=True)
        p.loop_start()
        pubs.append((n, p))
    deadline = time.time() + timeout
    ok = False
    while time.time() < deadline:
        if subacked:
            for n, p in pubs:
                p.publish("ready/%d" % n, "n%d" % n, qos=1)
        time.sleep(0.5)
        if {"n1", "n3"} <= got:
            ok = True
            break
    for c in [sub] + [p for _, p in pubs]:
        c.disconnect()
        c.loop_stop()
    return ok


def stop_all(rundir):
    for p in PROCS:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 8
    for p in PROCS:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            log(rundir, "pid %d did not stop on SIGTERM: SIGKILL" % p.pid)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main():
    num, kill = int(sys.argv[1]), int(sys.argv[2])
    rundir = os.path.join(WORK, "runs", str(num))
    if os.path.exists(rundir):
        sys.exit("%s exists" % rundir)
    os.makedirs(rundir)
    meta = {"run": num, "kill_node": kill, "rate": RATE, "duration": DURATION,
            "kill_after": KILL_AFTER}
    try:
        run(rundir, kill, meta)
    finally:
        stop_all(rundir)
        meta["stopped"] = time.time()
        with open(os.path.join(rundir, "run.json"), "w") as f:
            json.dump(meta, f, indent=1)
        left = subprocess.run(["pgrep", "-f", MOAT], capture_output=True, text=True).stdout.split()
        if left:
            log(rundir, "LEFTOVER moat processes: %s" % left)
        log(rundir, "run %d done" % num)


def run(rundir, kill, meta):
    nodes = {}
    for i in (1, 2, 3):
        d = os.path.join(rundir, "node%d" % i)
        os.makedirs(d)
        with open(os.path.join(d, "moat.yaml"), "w") as f:
            f.write(CONF.format(mqtt=MQTTP + i, admin=ADMIN + i, i=i, route=ROUTE + i,
                                r1=ROUTE + 1, r2=ROUTE + 2, r3=ROUTE + 3))
        tok = subprocess.run([MOAT, "admin", "token", "create", "kill", "--role", "viewer",
                              "--data", "data"], cwd=d, capture_output=True, text=True, check=True)
        with open(os.path.join(d, "token"), "w") as f:
            f.write(tok.stdout.strip())
    for i in (1, 2, 3):
        d = os.path.join(rundir, "node%d" % i)
        nodes[i] = start([MOAT, "serve", "-c", "moat.yaml"], d, os.path.join(d, "serve.log"))
    meta["node_pids"] = {i: p.pid for i, p in nodes.items()}
    meta["t_nodes_started"] = time.time()
    deadline = time.time() + 60
    while time.time() < deadline:
        logs_ready = all("key-value store ready" in open(os.path.join(rundir, "node%d" % i, "serve.log")).read()
                         for i in (1, 2, 3))
        if logs_ready and all(port_open(MQTTP + i) for i in (1, 2, 3)):
            break
        time.sleep(0.2)
    else:
        meta["error"] = "cluster not ready"
        log(rundir, "cluster not ready")
        return
    if not roundtrip():
        meta["error"] = "round trip failed"
        log(rundir, "round trip failed")
        return
    meta["t_ready"] = time.time()
    log(rundir, "cluster ready after %.1fs" % (meta["t_ready"] - meta["t_nodes_started"]))

    # KILL_NODE 0: no node is killed; the subscriber starts on node 1 (A's)
    # and moves to node 2 at the time of the kill, its old home alive.
    sub_node = "1" if kill == 0 else "2"
    sub = start([PY, os.path.join(HERE, "clients.py"), "sub", rundir, sub_node], rundir,
                os.path.join(rundir, "sub.out"))
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(rundir, "sub.ready")):
        if time.time() > deadline or sub.poll() is not None:
            meta["error"] = "subscriber not ready"
            log(rundir, "subscriber not ready")
            return
        time.sleep(0.1)
    time.sleep(1.0)
    t0 = time.time() + 1.5
    meta["t_pub_start"] = t0
    pubs = {}
    for name, node in (("A", 1), ("B", 3)):
        pubs[name] = start([PY, os.path.join(HERE, "clients.py"), "pub", rundir, name, str(node),
                            repr(t0), str(DURATION), str(RATE)], rundir,
                           os.path.join(rundir, "pub-%s.out" % name))
    # after a kill of every node, node 1 started again answers
    survivor = [i for i in (1, 2, 3) if i != kill][0]
    while time.time() < t0 + KILL_AFTER - 1.5:
        time.sleep(0.05)
    asked = 1 if kill in (0, ALL) else kill
    meta["leader_before"] = leader(rundir, asked)
    meta["sessions_leader_before"] = leader(rundir, asked, "moat_sessions")
    meta["status_before"] = None
    try:
        meta["status_before"] = cluster_status(rundir, survivor)
    except Exception as e:
        meta["status_before"] = repr(e)
    while time.time() < t0 + KILL_AFTER:
        time.sleep(0.001)
    if kill == 0:
        os.kill(sub.pid, signal.SIGUSR1)
        meta["t_kill"] = time.time()
        log(rundir, "moved the subscriber off node1 (moat_msgs leader before: %s)" % meta["leader_before"])
    elif kill == ALL:
        for i in (1, 2, 3):
            os.kill(nodes[i].pid, signal.SIGKILL)
        meta["t_kill"] = time.time()
        log(rundir, "killed every node (moat_msgs leader before: %s, moat_sessions: %s)" % (
            meta["leader_before"], meta["sessions_leader_before"]))
        for i in (1, 2, 3):
            nodes[i].wait()
        time.sleep(DOWN)
        for i in (1, 2, 3):
            d = os.path.join(rundir, "node%d" % i)
            with open(os.path.join(d, "serve.log"), "a") as f:
                f.write("--- started again after the kill of every node ---\n")
            nodes[i] = start([MOAT, "serve", "-c", "moat.yaml"], d, os.path.join(d, "serve.log"), "a")
        meta["t_restarted"] = time.time()
        log(rundir, "started every node again")
    else:
        os.kill(nodes[kill].pid, signal.SIGKILL)
        meta["t_kill"] = time.time()
        log(rundir, "killed node%d (moat_msgs leader before: %s, moat_sessions: %s)" % (
            kill, meta["leader_before"], meta["sessions_leader_before"]))
    time.sleep(8)
    meta["leader_after"] = leader(rundir, survivor)
    log(rundir, "moat_msgs leader 8s after the kill: %s" % meta["leader_after"])
    for name, p in pubs.items():
        try:
            p.wait(max(1, t0 + DURATION + 30 - time.time()))
        except subprocess.TimeoutExpired:
            log(rundir, "publisher %s did not finish" % name)
    meta["t_pub_done"] = time.time()
    meta["leader_end"] = leader(rundir, survivor)
    log(rundir, "moat_msgs leader after publishing: %s" % meta["leader_end"])
    acked = set()
    for name in pubs:
        try:
            d = json.load(open(os.path.join(rundir, "pub-%s.json" % name)))
        except Exception as e:
            log(rundir, "no result of publisher %s: %r" % (name, e))
            continue
        for m in d["msgs"]:
            if m.get("ack") is not None and m.get("rc") is not None and m["rc"] < 0x80:
                acked.add("%s:%d" % (name, m["n"]))
    # wait up to 20 s for the subscriber to have every acknowledged message
    deadline = time.time() + 20
    got, pos = set(), 0
    subfile = os.path.join(rundir, "sub.jsonl")
    while True:
        with open(subfile) as f:
            f.seek(pos)
            chunk = f.read()
        cut = chunk.rfind("\n") + 1
        pos += len(chunk[:cut].encode())
        for line in chunk[:cut].splitlines():
            r = json.loads(line)
            if r.get("ev") == "msg":
                got.add(r["payload"])
        missing = len(acked - got)
        if missing == 0 or time.time() > deadline:
            break
        time.sleep(0.5)
    meta["t_drain_done"] = time.time()
    log(rundir, "acked %d, missing at the end of the wait %d" % (len(acked), missing))
    # How the survivors' publish gates fared: first messages that waited
    # for routing or for a session's catch-up, and those that went on
    # before either was done.
    meta["gate"] = {}
    for i in (1, 2, 3):
        if i == kill:
            continue
        try:
            st = cluster_status(rundir, i)
            meta["gate"][str(i)] = {k: st.get(k, 0) for k in
                                    ("publishers_waited", "publishers_waited_catch_up", "publishers_not_caught_up")}
        except Exception as e:
            meta["gate"][str(i)] = {"error": repr(e)}
    os.kill(sub.pid, signal.SIGTERM)
    try:
        sub.wait(5)
    except subprocess.TimeoutExpired:
        pass


if __name__ == "__main__":
    main()
