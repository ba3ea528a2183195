"""Reads the JSON results of bench/compare.sh and prints one Markdown table, Mosquitto beside
certhub, with the ratio (certhub / Mosquitto; for times and memory, lower is better), and an
older certhub build (baseline) with certhub / baseline when the run had one.

The WebSocket rows (scenarios named *-ws) have their own peer, Aedes (target `aedes`), since
Mosquitto runs only MQTT over TLS there: when the run had it, the peer column is headed "peer",
the WebSocket rows show Aedes's figures and certhub / Aedes in it, and a line under the table says
so."""

import json
import pathlib
import sys

results = pathlib.Path(sys.argv[1])


def load(target, name):
    p = results / f"{target}-{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def get(doc, *path):
    for key in path:
        if not isinstance(doc, dict) or doc.get(key) is None:
            return None
        doc = doc[key]
    return doc


ROWS = [
    ("connect TLS 1.3 x25519: handshakes per server-CPU-s", "connect-tls13", ("server", "ops_per_cpu_s"), "higher"),
    ("connect TLS 1.3 x25519: connects/s", "connect-tls13", ("rates", "connects_per_s"), "higher"),
    ("connect TLS 1.3: cycle p99 ms", "connect-tls13", ("latency_ms", "cycle", "p99"), "lower"),
    ("connect TLS 1.2 P-256: handshakes per server-CPU-s", "connect-tls12", ("server", "ops_per_cpu_s"), "higher"),
    ("connect TLS 1.2 P-256: connects/s", "connect-tls12", ("rates", "connects_per_s"), "higher"),
    ("hold: connections held", "hold", ("counts", "established"), "higher"),
    ("hold: seconds to establish all", "hold", ("seconds", "until_last_established"), "lower"),
    ("hold: server KiB per idle connection", "hold", ("server", "rss_per_connection_kib"), "lower"),
    ("telemetry QoS 1, 50 clients, 256 B: msgs per server-CPU-s", "telemetry", ("server", "ops_per_cpu_s"), "higher"),
    ("telemetry: msgs/s acknowledged", "telemetry", ("rates", "messages_per_s"), "higher"),
    ("telemetry: ack p99 ms", "telemetry", ("latency_ms", "ack", "p99"), "lower"),
    ("storm: seconds until all are back", "storm", ("seconds", "until_last_back"), "lower"),
    ("storm: reconnected", "storm", ("counts", "reconnected"), "higher"),
    # A session closed before the API answered counts as 0 ms after the answer; the time from
    # the request says how fast it was.
    ("revoke: close after the API's answer, p99 ms", "revoke", ("latency_ms", "close_after_answer", "p99"), "lower"),
    ("revoke: sessions closed before the API answered", "revoke", ("counts", "closed_before_answer"), "higher"),
    ("revoke: close after the request was sent, p50 ms", "revoke", ("latency_ms", "close_after_request", "p50"), "lower"),
    ("revoke: close after the request was sent, p99 ms", "revoke", ("latency_ms", "close_after_request", "p99"), "lower"),
    # MQTT over WebSockets (certhub's 443 listener; Aedes's, when the run had it).
    ("WebSockets: connects (TLS 1.3 x25519) per server-CPU-s", "connect-ws", ("server", "ops_per_cpu_s"), "higher"),
    ("WebSockets: connects/s", "connect-ws", ("rates", "connects_per_s"), "higher"),
    ("WebSockets: connect cycle p99 ms", "connect-ws", ("latency_ms", "cycle", "p99"), "lower"),
    ("WebSockets: connections held", "hold-ws", ("counts", "established"), "higher"),
    ("WebSockets: server KiB per idle connection", "hold-ws", ("server", "rss_per_connection_kib"), "lower"),
    ("WebSockets: telemetry msgs per server-CPU-s", "telemetry-ws", ("server", "ops_per_cpu_s"), "higher"),
    ("WebSockets: telemetry msgs/s acknowledged", "telemetry-ws", ("rates", "messages_per_s"), "higher"),
    ("WebSockets: telemetry ack p99 ms", "telemetry-ws", ("latency_ms", "ack", "p99"), "lower"),
]

# The peer each row is measured against: Mosquitto (MQTT over TLS), Aedes (MQTT over WebSockets).
WS_PEER = "aedes"


def peer_of(name):
    return WS_PEER if name.endswith("-ws") else "mosquitto"


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
    return f"{x:,}"


def ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


# With a baseline build (BASELINE_BIN), its column and certhub / baseline come too.
baseline = any(results.glob("baseline-*.json"))
ws_peer = any(results.glob(f"{WS_PEER}-*.json"))
peer = "peer" if ws_peer else "Mosquitto"
if baseline:
    print(f"| scenario | {peer} | baseline | certhub | certhub / {peer} | certhub / baseline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
else:
    print(f"| scenario | {peer} | certhub | certhub / {peer} |")
    print("| --- | ---: | ---: | ---: |")
for label, name, path, better in ROWS:
    m = get(load(peer_of(name), name), *path)
    if ws_peer and peer_of(name) == WS_PEER:
        label += " (peer: Aedes)"
    c = get(load("certhub", name), *path)
    if baseline:
        b = get(load("baseline", name), *path)
        print(f"| {label} | {fmt(m)} | {fmt(b)} | {fmt(c)} | {ratio(c, m)} | {ratio(c, b)} |")
    else:
        print(f"| {label} | {fmt(m)} | {fmt(c)} | {ratio(c, m)} |")

errors = []
for p in sorted(results.glob("*.json")):
    doc = json.loads(p.read_text())
    if doc.get("errors"):
        errors.append(f"{p.stem}: {doc['errors']}")
if ws_peer:
    print()
    print("peer: Mosquitto on the MQTT-over-TLS rows, Aedes on the WebSocket rows.")
if errors:
    print()
    print("Errors during the runs (counted, not fatal):")
    for e in errors:
        print(f"- {e}")
