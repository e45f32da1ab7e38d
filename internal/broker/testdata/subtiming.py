"""Publish right after another client's SUBSCRIBE, as an independent
conformance suite does: client B writes SUBSCRIBE without waiting for
SUBACK, then client A writes a PUBLISH to the same topic at once. A broker
that lets a subscription take effect as soon as it has read it delivers
every one of these messages to B.

usage: subtiming.py HOST PORT new|connected 3|5 [TRIES]
prints "delivered N of TRIES".

No network thread (loop_start): without one, paho writes each packet from
the calling thread before subscribe() or publish() returns, so B's
SUBSCRIBE is on the wire before A's PUBLISH.
"""
import sys
import time

import paho.mqtt.client as mqtt

host, port, mode, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tries = int(sys.argv[5]) if len(sys.argv) > 5 else 20
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311


def client(cid):
    c = mqtt.Client(client_id=cid, protocol=proto)
    c.connected = False
    c.got = []

    def on_connect(cl, userdata, flags, rc, properties=None):
        cl.connected = True

    def on_message(cl, userdata, msg):
        cl.got.append(msg.topic)

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect(host, port, keepalive=30)
    deadline = time.time() + 5
    while not c.connected and time.time() < deadline:
        c.loop(0.01)
    if not c.connected:
        sys.exit("no CONNACK for " + cid)
    return c


a = client("timing-a")
b = None
delivered = 0
for i in range(tries):
    if mode == "new" or b is None:
        if b is not None:
            b.disconnect()
        b = client("timing-b")
    topic = "paho/%s/%d" % (mode, i)
    b.subscribe(topic, 0)
    a.publish(topic, b"m", 0)
    deadline = time.time() + 2
    while topic not in b.got and time.time() < deadline:
        b.loop(0.01)
        a.loop(0)
    if topic in b.got:
        delivered += 1
    b.got.clear()
print("delivered %d of %d" % (delivered, tries))
