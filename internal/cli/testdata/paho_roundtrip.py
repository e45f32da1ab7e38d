#!/usr/bin/python3
"""Round trip through a broker with Debian's python3-paho-mqtt (1.6 API).

Subscribes to TOPIC, publishes MESSAGE to it at QOS, and prints the
received payload. Exit status 0 only when the message came back. Used by
Moat's interop tests; the TLS options mirror the seed's tls_set call.
"""
import argparse
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

ap = argparse.ArgumentParser()
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--transport", default="tcp", choices=["tcp", "websockets"])
ap.add_argument("--version", default="311", choices=["31", "311", "5"])
ap.add_argument("--cafile")
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--client-id", default="")
ap.add_argument("--topic", default="interop/python")
ap.add_argument("--message", default="hello from paho")
ap.add_argument("--qos", type=int, default=1)
args = ap.parse_args()

proto = {"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[args.version]
kw = {"client_id": args.client_id or "py-" + args.version + "-" + args.transport, "protocol": proto, "transport": args.transport}
if proto != mqtt.MQTTv5:
    kw["clean_session"] = True
client = mqtt.Client(**kw)
if args.cafile:
    client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLSv1_2)

got = threading.Event()
result = {}


def on_connect(c, userdata, flags, rc, properties=None):
    if rc != 0:
        print("connect refused:", rc, file=sys.stderr)
        got.set()
        return
    c.subscribe(args.topic, qos=args.qos)


def on_subscribe(c, userdata, mid, granted, properties=None):
    c.publish(args.topic, args.message, qos=args.qos)


def on_message(c, userdata, msg):
    result["payload"] = msg.payload.decode()
    result["qos"] = msg.qos
    got.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(args.host, args.port, 30)
client.loop_start()
ok = got.wait(10)
client.disconnect()
client.loop_stop()
if not ok or "payload" not in result:
    print("no message received", file=sys.stderr)
    sys.exit(1)
print(result["payload"])
