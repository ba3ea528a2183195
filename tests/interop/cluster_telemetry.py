"""One widget over paho-mqtt sending numbered QoS 1 telemetry to a certhub cluster, moving to
another node whenever its node stops answering (as a device behind a load balancer does).

usage: cluster_telemetry.py DEVICE HOST:PORT[,HOST:PORT...] CA COUNT PAUSE

Sends "DEVICE n" for n = 0 .. COUNT-1 on devices/DEVICE/messages/events/, one at a time: the
next only once the hub acknowledged (PUBACK) the last and PAUSE seconds passed; a message not acknowledged within 3 s
is sent again on a new connection (at least once, as QoS 1 is). Prints "connected HOST" for
each connection and, at the end, "acked COUNT".
"""

import sys
import time

import paho.mqtt.client as mqtt

device, hosts, ca, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pause = float(sys.argv[5])
hosts = [(h, int(p)) for h, p in (x.rsplit(":", 1) for x in hosts.split(","))]
turn = 0


def connect():
    """A connection to the first node that accepts the device, trying each in turn."""
    global turn
    deadline = time.time() + 60
    while time.time() < deadline:
        host, port = hosts[turn % len(hosts)]
        turn += 1
        c = mqtt.Client(client_id=device, clean_session=True, protocol=mqtt.MQTTv311)
        c.username_pw_set(f"{host}/{device}/?api-version=2021-04-12")
        c.tls_set(
            ca_certs=ca,
            certfile=f"pki/devices/{device}/chain.pem",
            keyfile=f"pki/devices/{device}/key.pem",
        )
        state = {}
        c.on_connect = lambda cl, u, flags, rc: state.update(rc=rc)
        try:
            c.connect(host, port, keepalive=30)
        except OSError:
            time.sleep(0.2)
            continue
        c.loop_start()
        wait = time.time() + 5
        while "rc" not in state and time.time() < wait:
            time.sleep(0.01)
        if state.get("rc") == 0:
            print("connected", host, flush=True)
            return c
        c.loop_stop()
        c.disconnect()
        time.sleep(0.2)
    sys.exit(f"{device}: no node accepted the device for 60 s")


client = connect()
n = 0
while n < count:
    info = client.publish(f"devices/{device}/messages/events/", f"{device} {n}", qos=1)
    try:
        info.wait_for_publish(timeout=3)
        acked = info.is_published()
    except (RuntimeError, ValueError):
        # paho: the connection is gone (the message was not queued or not sent).
        acked = False
    if acked:
        n += 1
        time.sleep(pause)
        continue
    # Not acknowledged: this node is gone (or going); send it again through another.
    client.loop_stop()
    try:
        client.disconnect()
    except Exception:
        pass
    client = connect()
client.disconnect()
client.loop_stop()
print("acked", n, flush=True)
