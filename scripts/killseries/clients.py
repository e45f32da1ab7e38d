#!/usr/bin/python3
"""MQTT test clients for the kill series (paho-mqtt 1.6, MQTT v5).

  clients.py sub RUNDIR START_NODE
      persistent subscriber (client ID ks-sub, clean_start False, session
      expiry 3600, QoS 1 on ks/#). Writes RUNDIR/sub.jsonl (one line per
      message and per connect attempt), touches RUNDIR/sub.ready once
      subscribed, runs until SIGTERM.
  clients.py pub RUNDIR NAME START_NODE START_TIME DURATION RATE
      QoS 1 publisher of "NAME:n" on ks/NAME from START_TIME for DURATION s
      at RATE msgs/s. Writes RUNDIR/pub-NAME.json.

Nodes 1..3 have MQTT ports BASE+1..3 on 127.0.0.1. With KS_V311=1 the
clients speak MQTT 3.1.1 instead (the subscriber with clean session 0,
which keeps its session until it connects clean).
"""
import json
import os
import signal
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
MQTT_BASE = int(os.environ.get("KS_MQTT_BASE", "27610"))
NODES = [1, 2, 3]
V311 = os.environ.get("KS_V311") == "1"


def port(node):
    return MQTT_BASE + node


def order_after(node):
    """Nodes to try after losing `node`: the other nodes, alternating."""
    others = [n for n in NODES if n != node]
    i = 0
    while True:
        yield others[i % len(others)]
        i += 1


class AckClient(mqtt.Client):
    """paho client that keeps the PUBACK reason code (1.6 drops it)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.puback_cb = None

    def _handle_pubackcomp(self, cmd):
        try:
            if cmd == "PUBACK" and self.puback_cb is not None:
                pkt = self._in_packet["packet"]
                mid, = struct.unpack("!H", pkt[:2])
                rc = pkt[2] if self._in_packet["remaining_length"] > 2 else 0
                self.puback_cb(mid, rc)
        except Exception as e:  # never break the network loop
            sys.stderr.write("puback hook: %r\n" % (e,))
        return super()._handle_pubackcomp(cmd)


class Conn:
    """One connection attempt; .ok tells whether CONNACK was success."""

    def __init__(self, cid, node, clean_start, expiry, on_message=None,
                 puback_cb=None, timeout=10.0):
        self.cid, self.node = cid, node
        self.connack = threading.Event()
        self.lost = threading.Event()
        self.rc = None
        self.session_present = None
        self.recv_max = 65535
        self.err = None
        if V311:
            c = AckClient(client_id=cid, protocol=mqtt.MQTTv311,
                          clean_session=clean_start)
        else:
            c = AckClient(client_id=cid, protocol=mqtt.MQTTv5)
        c.puback_cb = puback_cb
        c.reconnect_delay_set(3600, 3600)  # never reconnect on its own
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        if on_message:
            c.on_message = on_message
        self.c = c
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.t_attempt = time.time()
        try:
            if V311:
                c.connect(HOST, port(node), keepalive=10)
            else:
                c.connect(HOST, port(node), keepalive=10,
                          clean_start=clean_start, properties=props)
        except Exception as e:
            self.err = repr(e)
            self.ok = False
            self.t_done = time.time()
            return
        c.loop_start()
        if not self.connack.wait(timeout):
            self.err = "no CONNACK in %.0fs" % timeout
        self.t_done = time.time()
        self.ok = self.rc == 0 and not self.lost.is_set()
        if not self.ok:
            self.close()

    def _on_connect(self, client, userdata, flags, rc, props=None):
        self.rc = rc.value if hasattr(rc, "value") else int(rc)
        self.session_present = int(flags.get("session present", 0))
        rm = getattr(props, "ReceiveMaximum", None) if props else None
        if rm:
            self.recv_max = rm
            client.max_inflight_messages_set(min(100, rm))
        self.connack.set()

    def _on_disconnect(self, client, userdata, rc, props=None):
        self.disc_rc = rc.value if hasattr(rc, "value") else rc
        self.t_lost = time.time()
        self.lost.set()
        self.connack.set()
        try:
            client.disconnect()  # makes paho's loop thread end
        except Exception:
            pass

    def record(self):
        return {"ev": "connect", "t": self.t_attempt, "t_done": self.t_done,
                "node": self.node, "cid": self.cid, "ok": self.ok, "rc": self.rc,
                "session_present": self.session_present, "err": self.err}

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        try:
            self.c.loop_stop()
        except Exception:
            pass
        try:
            self.c._sock_close()  # do not leave a half-open attempt behind
        except Exception:
            pass


# ---------------------------------------------------------------- subscriber

def run_sub(rundir, start_node):
    out = open(os.path.join(rundir, "sub.jsonl"), "a", buffering=1)
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    move = threading.Event()  # SIGUSR1: leave the node cleanly, go to the next
    signal.signal(signal.SIGUSR1, lambda *a: move.set())
    cur = {"node": start_node}

    def write(rec):
        with lock:
            out.write(json.dumps(rec) + "\n")

    def on_message(client, userdata, msg):
        write({"ev": "msg", "t": time.time(), "topic": msg.topic,
               "payload": msg.payload.decode(errors="replace"),
               "dup": int(msg.dup), "qos": msg.qos, "node": cur["node"]})

    def connect(node):
        c = Conn("ks-sub", node, clean_start=False, expiry=3600,
                 on_message=on_message)
        write(c.record())
        return c

    # First connection: retry on the start node (0x88 until the quorum).
    deadline = time.time() + 60
    conn = None
    while not stop.is_set() and time.time() < deadline:
        conn = connect(start_node)
        if conn.ok:
            break
        time.sleep(0.5)
    if conn is None or not conn.ok:
        write({"ev": "fatal", "t": time.time(), "err": "no first connection"})
        return 1
    mid_ev = threading.Event()
    conn.c.on_subscribe = lambda *a: mid_ev.set()
    conn.c.subscribe("ks/#", qos=1)
    if not mid_ev.wait(10):
        write({"ev": "fatal", "t": time.time(), "err": "no SUBACK"})
        return 1
    write({"ev": "subscribed", "t": time.time(), "node": start_node})
    open(os.path.join(rundir, "sub.ready"), "w").close()

    while not stop.is_set():
        if move.is_set():
            move.clear()
            write({"ev": "move", "t": time.time(), "node": conn.node})
            try:
                conn.c.disconnect()
            except Exception:
                pass
        if not conn.lost.wait(0.2):
            continue
        write({"ev": "lost", "t": conn.t_lost, "node": conn.node,
               "rc": str(conn.disc_rc)})
        conn.close()
        lost_node = conn.node
        for node in order_after(lost_node):
            if stop.is_set():
                break
            cur["node"] = node
            conn = connect(node)
            if conn.ok:
                if conn.session_present != 1:
                    # no session: subscribe again so the run goes on
                    ev = threading.Event()
                    conn.c.on_subscribe = lambda *a: ev.set()
                    conn.c.subscribe("ks/#", qos=1)
                    ev.wait(10)
                    write({"ev": "resubscribed", "t": time.time(), "node": node})
                break
            time.sleep(0.5)
    conn.close()
    write({"ev": "end", "t": time.time()})
    out.close()
    return 0


# ----------------------------------------------------------------- publisher

def run_pub(rundir, name, start_node, start_time, duration, rate):
    recs = {}          # n -> record
    events = []
    lock = threading.Lock()
    state = {"k": 0, "conn": None, "inflight": {}}  # mid -> n of current conn
    topic = "ks/" + name

    def make_puback_cb(inflight):
        def cb(mid, rc):
            t = time.time()
            with lock:
                n = inflight.pop(mid, None)
                if n is not None and recs[n].get("ack") is None:
                    recs[n]["ack"] = t
                    recs[n]["rc"] = rc
        return cb

    def connect(node):
        state["k"] += 1
        cid = "ks-pub%s-%d-%d" % (name, os.getpid(), state["k"])
        inflight = {}
        c = Conn(cid, node, clean_start=True, expiry=0,
                 puback_cb=make_puback_cb(inflight))
        events.append(c.record())
        if c.ok:
            state["inflight"] = inflight
        return c

    while time.time() < start_time + 20:
        conn = connect(start_node)
        if conn.ok:
            break
        time.sleep(0.5)
    else:
        conn = None
    end_time = start_time + duration
    n = 0
    interval = 1.0 / rate
    while time.time() < start_time:
        time.sleep(0.001)
    nxt = time.time()
    while time.time() < end_time and conn is not None:
        if conn.lost.is_set():
            events.append({"ev": "lost", "t": conn.t_lost, "node": conn.node,
                           "cid": conn.cid, "rc": str(conn.disc_rc)})
            conn.close()
            lost_node = conn.node
            newc = None
            for node in order_after(lost_node):
                if time.time() >= end_time:
                    break
                newc = connect(node)
                if newc.ok:
                    break
                time.sleep(0.5)
            if newc is None or not newc.ok:
                break
            conn = newc
            nxt = time.time()
            continue
        now = time.time()
        if now < nxt:
            time.sleep(min(nxt - now, 0.005))
            continue
        if now - nxt > 0.2:  # fell behind: do not burst
            nxt = now
        n += 1
        t = time.time()
        with lock:
            recs[n] = {"n": n, "sent": t, "cid": conn.cid, "node": conn.node,
                       "ack": None, "rc": None}
            info = conn.c.publish(topic, "%s:%d" % (name, n), qos=1)
            recs[n]["mid"] = info.mid
            recs[n]["pub_rc"] = info.rc
            state["inflight"][info.mid] = n
        nxt += interval
    # wait up to 5 s for the last PUBACKs of the live connection
    t_end = time.time()
    while time.time() < t_end + 5 and conn is not None and not conn.lost.is_set():
        with lock:
            if not state["inflight"]:
                break
        time.sleep(0.05)
    if conn is not None:
        conn.close()
    with lock:
        data = {"name": name, "start": start_time, "end": t_end,
                "events": events, "msgs": [recs[k] for k in sorted(recs)]}
    tmp = os.path.join(rundir, "pub-%s.json.tmp" % name)
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, os.path.join(rundir, "pub-%s.json" % name))
    return 0


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "sub":
        sys.exit(run_sub(sys.argv[2], int(sys.argv[3])))
    elif role == "pub":
        sys.exit(run_pub(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                         float(sys.argv[5]), float(sys.argv[6]),
                         float(sys.argv[7])))
    sys.exit("unknown role " + role)
