#!/usr/bin/env bash
# Event Hubs-compatible read throughput: MESSAGES (default 200000) telemetry messages are
# loaded into a fresh hub over the HTTPS device API (batches of 500, 100-byte bodies with an
# application property), then @azure/event-hubs (bench/amqp/eh-read.js, the pinned package of
# tests/interop/node: run scripts/test or `npm ci` there first) reads them all from the earliest
# position. Prints the hub's CPU time for the read (utime + stime from /proc) and messages per
# hub CPU-second and per second.
#
#   bench/eventhub-read.sh                               # this checkout's release build
#   MESSAGES=500000 CERTHUB_BIN=/path/to/certhub bench/eventhub-read.sh
#
# The SDK dials port 5671 of the host; the Node test port map sends it to the free port this
# hub listens on (a hub of yours on 5671 is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
N="${MESSAGES:-200000}"
WORK="${WORK:-/tmp/certhub-eh-read}"
ADDR=127.0.0.42
NODE_DIR="$PWD/tests/interop/node"
[ -d "$NODE_DIR/node_modules/@azure/event-hubs" ] || { echo "run scripts/test (or npm ci in $NODE_DIR) first" >&2; exit 1; }
. bench/lib/hub.sh
certhub_bin
HUB_PID=""
cleanup() { [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
DATA="$WORK/data"
start_hub "$ADDR" "$DATA" "$WORK/hub.log"
EH=$("$C" hub connection-string --event-hub --data-dir "$DATA")
"$C" device create --id loader --data-dir "$DATA" >/dev/null
TOKEN=$("$C" device token --id loader --duration 3600 --data-dir "$DATA" | tail -1)
echo "loading $N messages" >&2
python3 - "$N" "$ADDR" "$HTTPS_PORT" "$TOKEN" "$DATA/tls/server-ca.pem" <<'PY'
import base64, http.client, json, ssl, sys
n, host, port, token, ca = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection(host, port, context=ctx)
body = base64.b64encode(b"x" * 100).decode()
sent = 0
while sent < n:
    k = min(500, n - sent)
    batch = [{"body": body, "properties": {"seq": str(sent + i)}} for i in range(k)]
    conn.request("POST", "/devices/loader/messages/events?api-version=2021-04-12", json.dumps(batch),
                 {"Authorization": token, "Content-Type": "application/vnd.microsoft.iothub.json"})
    r = conn.getresponse(); r.read()
    if r.status != 204:
        sys.exit(f"batch refused: {r.status}")
    sent += k
PY
cpu() { awk '{print $14 + $15}' "/proc/$HUB_PID/stat"; }
TICKS=$(getconf CLK_TCK)
sleep 1
before=$(cpu)
out=$(NODE_OPTIONS="--require $NODE_DIR/portmap.js" CERTHUB_TEST_PORT_MAP="5671=$AMQP_PORT" \
    NODE_PATH="$NODE_DIR/node_modules" NODE_EXTRA_CA_CERTS="$DATA/tls/server-ca.pem" \
    CERTHUB_EVENT_HUB="$EH" COUNT="$N" node bench/amqp/eh-read.js)
after=$(cpu)
python3 - "$N" "$before" "$after" "$TICKS" "$out" <<'PY'
import sys
n, before, after, ticks, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
secs = float(out.split(" in ")[1].split()[0])
cpu = (after - before) / ticks
print(f"{out}; hub CPU {cpu:.2f} s: {n / cpu:,.0f} messages per hub CPU-s, {n / secs:,.0f} per s")
PY
