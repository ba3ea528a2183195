#!/usr/bin/env bash
# Hub memory per idle AMQP device connection: CONNECTIONS (default 2000) SAS devices open an
# AMQP connection each with the Node.js SDK's Amqp transport (bench/amqp/idle.js, the pinned
# SDK of tests/interop/node: run scripts/test or `npm ci` there first) and stay idle; the hub's
# RSS is read before (after one warm-up connection) and once all are open and settled.
#
#   bench/amqp-idle.sh                                   # this checkout's release build
#   CONNECTIONS=5000 CERTHUB_BIN=/path/to/certhub bench/amqp-idle.sh
#
# The SDK dials port 5671 of the host name; the Node test port map sends it to the free port
# this hub listens on (a hub of yours on 5671 is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
N="${CONNECTIONS:-2000}"
WORK="${WORK:-/tmp/certhub-amqp-idle}"
ADDR=127.0.0.41
NODE_DIR="$PWD/tests/interop/node"
[ -d "$NODE_DIR/node_modules/azure-iot-device-amqp" ] || { echo "run scripts/test (or npm ci in $NODE_DIR) first" >&2; exit 1; }
. bench/lib/hub.sh
certhub_bin
HUB_PID=""
LOAD_PID=""
cleanup() {
    [ -z "$LOAD_PID" ] || kill "$LOAD_PID" 2>/dev/null || true
    [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
rm -rf "$WORK"
mkdir -p "$WORK"
DATA="$WORK/data"
start_hub "$ADDR" "$DATA" "$WORK/hub.log"
KEY=$(head -c 32 /dev/urandom | base64)
python3 - "$N" "$KEY" >"$WORK/devices.jsonl" <<'PY'
import json, sys
n, key = int(sys.argv[1]), sys.argv[2]
for i in range(n + 1):
    print(json.dumps({"deviceId": f"d{i:05d}", "authentication": {"type": "sas",
          "symmetricKey": {"primaryKey": key, "secondaryKey": key}}}))
PY
"$C" device import --data-dir "$DATA" "$WORK/devices.jsonl" >/dev/null 2>&1
rss() { awk '/VmRSS/ {print $2}' "/proc/$HUB_PID/status"; }
node_load() { # connections; stdin held open by the caller
    NODE_OPTIONS="--require $NODE_DIR/portmap.js" CERTHUB_TEST_PORT_MAP="5671=$AMQP_PORT,443=$HTTPS_PORT" \
        NODE_PATH="$NODE_DIR/node_modules" CERTHUB_HOST="$ADDR" CERTHUB_CA="$DATA/tls/server-ca.pem" \
        CERTHUB_KEY="$KEY" CONNECTIONS="$1" node bench/amqp/idle.js 2>"$WORK/node.err"
}
# Warm-up: one connection opened and closed, so that idle includes what any session first allocates.
(sleep 30 | node_load 1 >"$WORK/warm.out") &
for _ in $(seq 300); do grep -q "^open" "$WORK/warm.out" 2>/dev/null && break; sleep 0.1; done
kill %% 2>/dev/null || true
sleep 2
idle=$(rss)
mkfifo "$WORK/hold"
node_load "$N" <"$WORK/hold" >"$WORK/load.out" &
LOAD_PID=$!
exec 3>"$WORK/hold"
start=$(date +%s.%N)
for _ in $(seq 6000); do grep -q "^open" "$WORK/load.out" 2>/dev/null && break; sleep 0.1; done
grep -q "^open $N" "$WORK/load.out" || { echo "not all connections opened:" >&2; cat "$WORK/load.out" "$WORK/node.err" >&2; exit 1; }
end=$(date +%s.%N)
sleep 5
held=$(rss)
sessions=$(grep -c "over amqp" <("$C" audit list --data-dir "$DATA" --top $((N + 10)) 2>/dev/null) || true)
python3 - "$N" "$idle" "$held" "$start" "$end" "$sessions" <<'PY'
import sys
n, idle, held, start, end, sessions = sys.argv[1:]
n, idle, held = int(n), int(idle), int(held)
print(f"{n} idle AMQP connections (Node.js Amqp, SAS via CBS) opened in {float(end) - float(start):.1f} s; "
      f"audited sessions {sessions}; hub RSS {idle / 1024:.1f} -> {held / 1024:.1f} MiB: "
      f"{(held - idle) / n:.2f} KiB per connection")
PY
exec 3>&-
