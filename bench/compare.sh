#!/usr/bin/env bash
# Runs the same `certhub bench` scenarios against Mosquitto and certhub on this machine and
# prints one table with the ratios. Both brokers get the same trust: Company-X's root CA, and
# device chains Company-X root -> Factory-Y -> Technician-Z -> leaf (ECDSA P-256), sent by the
# device in the handshake; Mosquitto with `require_certificate true`, certhub with the root
# registered and the devices in its registry.
#
#   bench/compare.sh                 # 19 000 devices, 10 s per timed scenario
#   DEVICES=2000 DURATION=3 bench/compare.sh    # a quicker look
#   BASELINE_BIN=/path/to/older/certhub bench/compare.sh   # an older build too, in the same run
#   TARGETS="baseline certhub" BASELINE_BIN=... bench/compare.sh   # without Mosquitto
#   TARGETS="aedes certhub" bench/compare.sh    # only the WebSocket peer beside certhub
#
# MQTT over WebSockets (hold-ws, connect-ws, telemetry-ws: TLS, then `wss://.../$iothub/websocket`,
# subprotocol mqtt) has a peer too, since Debian's Mosquitto 2.0.11 fails to open a WebSocket
# listener here: Aedes, a Node.js MQTT broker from the npm registry, behind Node's HTTPS server
# with `requestCert` and `rejectUnauthorized` (bench/peer-ws/server.js, versions pinned in its
# package-lock.json, installed with `npm ci` on first use). The target `aedes` runs the WebSocket
# scenarios only, with the same trust as the others (Company-X's root; devices send leaf and
# intermediates) and its node process measured. It is in the default TARGETS when Node.js 20 or
# later is on PATH; otherwise (or without it in TARGETS) the WebSocket rows are certhub's alone.
#
# With BASELINE_BIN, the older build runs every certhub scenario too (its own data directory,
# the same devices, the same load generator: this build's `certhub bench`), and the table gets
# a column for it and the ratio certhub / baseline: a before/after comparison of a change.
#
# Results (one JSON file per run) and the table are left in $WORK (default
# /tmp/certhub-compare). The generator shares the machine with the broker under test, so
# rates per server-CPU-second are the fair comparison; both are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
DEVICES="${DEVICES:-19000}"
DURATION="${DURATION:-10}"
WORK="${WORK:-/tmp/certhub-compare}"
HUB_ADDR=127.0.0.6
MOSQ_ADDR=127.0.0.7
PEER_WS_ADDR=127.0.0.9
PEER_WS_PORT=18443
# The bench's own connections come from many loopback addresses (ephemeral ports).
SOURCES=127.0.1.1-127.0.1.40

need() { command -v "$1" >/dev/null 2>&1; }
if ! need mosquitto && ! [ -x /usr/sbin/mosquitto ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
need openssl || { echo "compare.sh: openssl is needed" >&2; exit 1; }
# Held connections need file descriptors on both sides.
ulimit -n "$(ulimit -Hn)"

# CERTHUB_BIN: a release binary built elsewhere (a worktree at the commit to measure).
C="${CERTHUB_BIN:-}"
if [ -z "$C" ]; then
    echo "building certhub (release)" >&2
    cargo build --release --locked -p certhub >&2
    C="$CARGO_TARGET_DIR/release/certhub"
fi
BASELINE_BIN="${BASELINE_BIN:-}"
# Aedes (bench/peer-ws) needs Node.js 20 or later.
node_ok() { need node && [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -ge 20 ]; }
AEDES_DEFAULT=""
node_ok && AEDES_DEFAULT=aedes
TARGETS="${TARGETS:-mosquitto $AEDES_DEFAULT ${BASELINE_BIN:+baseline} certhub}"
if [[ " $TARGETS " == *" baseline "* ]] && [ ! -x "$BASELINE_BIN" ]; then
    echo "compare.sh: the baseline target needs BASELINE_BIN, an older certhub binary" >&2
    exit 1
fi

if [[ " $TARGETS " == *" aedes "* ]]; then
    node_ok || { echo "compare.sh: the aedes target needs Node.js 20 or later (node)" >&2; exit 1; }
    need npm || { echo "compare.sh: the aedes target needs npm" >&2; exit 1; }
    if ! (cd bench/peer-ws && npm ls --silent >/dev/null 2>&1); then
        echo "installing bench/peer-ws (npm ci)" >&2
        (cd bench/peer-ws && npm ci --silent --no-audit --no-fund >&2)
    fi
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/results" "$WORK/mosquitto"
echo "making $DEVICES device chains" >&2
"$C" pki demo supply-chain --out "$WORK/pki" --devices "$DEVICES" >/dev/null
ls "$WORK/pki/devices" \
    | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' \
    >"$WORK/devices.jsonl"

# Mosquitto and Aedes: a server certificate for each one's address from a CA of their own
# (openssl, in $WORK/mosquitto), the same root for clients.
M="$WORK/mosquitto"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$M/ca.key" -out "$M/ca.pem" -subj "/CN=compare server CA" 2>/dev/null
# server_cert DIR ADDR: DIR/key.pem and DIR/cert.pem for ADDR.
server_cert() {
    mkdir -p "$1"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1/key.pem" -out "$1/server.csr" -subj "/CN=$2" 2>/dev/null
    printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$2" >"$1/server.ext"
    openssl x509 -req -in "$1/server.csr" -CA "$M/ca.pem" -CAkey "$M/ca.key" -CAcreateserial \
        -days 30 -extfile "$1/server.ext" -out "$1/cert.pem" 2>/dev/null
}
server_cert "$M" "$MOSQ_ADDR"
server_cert "$WORK/aedes" "$PEER_WS_ADDR"
cat >"$WORK/mosquitto/mosquitto.conf" <<CONF
# Keep root: the keys under $WORK are root's (mosquitto would switch to its own user).
user root
per_listener_settings false
persistence false
log_dest stderr
log_type error
max_connections -1
listener 18883 $MOSQ_ADDR
cafile $WORK/pki/company-x/cert.pem
certfile $WORK/mosquitto/cert.pem
keyfile $WORK/mosquitto/key.pem
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
# Without it every CONNACK waits ~40 ms (Nagle and delayed ACK).
set_tcp_nodelay true
CONF

start_mosquitto() {
    "$MOSQUITTO" -c "$WORK/mosquitto/mosquitto.conf" 2>>"$WORK/mosquitto/log" &
    MOSQ_PID=$!
    PIDS+=("$MOSQ_PID")
    sleep 0.5
}

# Aedes behind Node's HTTPS server: TLS client certificates required, Company-X's root the
# only client CA; MQTT over WebSockets at /$iothub/websocket.
start_aedes() {
    node bench/peer-ws/server.js --addr "$PEER_WS_ADDR" --port "$PEER_WS_PORT" \
        --key "$WORK/aedes/key.pem" --cert "$WORK/aedes/cert.pem" \
        --client-ca "$WORK/pki/company-x/cert.pem" >"$WORK/aedes/log" 2>&1 &
    AEDES_PID=$!
    PIDS+=("$AEDES_PID")
    for _ in $(seq 100); do
        grep -q "^listening" "$WORK/aedes/log" 2>/dev/null && return
        sleep 0.1
    done
    echo "compare.sh: aedes did not start:" >&2
    cat "$WORK/aedes/log" >&2
    exit 1
}

# start_hub TARGET: certhub (this build) or baseline (BASELINE_BIN), each on its own data
# directory.
start_hub() {
    local bin="$C"
    [ "$1" = baseline ] && bin="$BASELINE_BIN"
    # The AMQP listener by variable, which builds from before it ignore.
    CERTHUB_AMQP_ADDR="$HUB_ADDR:0" CERTHUB_LOG=warn "$bin" serve --data-dir "$WORK/hub-$1" --hostname "$HUB_ADDR" \
        --https-addr "$HUB_ADDR:8443" --mqtt-addr "$HUB_ADDR:8883" \
        --max-device-sessions 100000 >"$WORK/hub.log" 2>&1 &
    HUB_PID=$!
    PIDS+=("$HUB_PID")
    for _ in $(seq 100); do
        grep -q "devices (MQTT)" "$WORK/hub.log" 2>/dev/null && return
        sleep 0.1
    done
    echo "compare.sh: the hub did not start:" >&2
    cat "$WORK/hub.log" >&2
    exit 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# hub_cli TARGET: the CLI of that target's own build (a newer CLI would migrate an older
# hub's database under it).
hub_cli() { if [ "$1" = baseline ]; then echo "$BASELINE_BIN"; else echo "$C"; fi; }

# enroll TARGET: Company-X's root and the devices in that hub's registry.
enroll() {
    start_hub "$1"
    "$(hub_cli "$1")" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$WORK/hub-$1" >/dev/null
    "$(hub_cli "$1")" device import "$WORK/devices.jsonl" --data-dir "$WORK/hub-$1" >/dev/null 2>&1
    stop "$HUB_PID"
}

# bench TARGET NAME SCENARIO ARGS...: one run, its JSON in results/TARGET-NAME.json.
bench() {
    local target=$1 name=$2 scenario=$3
    shift 3
    local where
    case "$target" in
    mosquitto) where=(--host "$MOSQ_ADDR" --port 18883 --ca "$WORK/mosquitto/ca.pem" --server-pid "$MOSQ_PID") ;;
    aedes) where=(--host "$PEER_WS_ADDR" --ca "$WORK/mosquitto/ca.pem" --server-pid "$AEDES_PID") ;;
    *) where=(--host "$HUB_ADDR" --ca "$WORK/hub-$target/tls/server-ca.pem" --server-pid "$HUB_PID") ;;
    esac
    echo "  $target $name" >&2
    "$C" bench "$scenario" --devices "$WORK/pki/devices" "${where[@]}" \
        --source-addrs "$SOURCES" --json "$@" >"$WORK/results/$target-$name.json"
}

HOLD=$((DEVICES < 19000 ? DEVICES : 19000))
REVOKE_N=$((DEVICES < 10000 ? DEVICES : 10000))
# bench_ws TARGET PORT: the WebSocket scenarios, on a freshly started broker.
bench_ws() {
    local ws=(--transport ws --port "$2")
    bench "$1" hold-ws hold --connections "$HOLD" --hold 3 "${ws[@]}"
    bench "$1" connect-ws connect-rate --duration "$DURATION" --workers 16 --tls 1.3 --kx x25519 "${ws[@]}"
    bench "$1" telemetry-ws telemetry --clients 50 --window 16 --payload 256 --duration "$DURATION" "${ws[@]}"
}
for target in $TARGETS; do
    echo "$target:" >&2
    if [ "$target" = aedes ]; then
        # MQTT over WebSockets only.
        start_aedes
        bench_ws aedes "$PEER_WS_PORT"
        stop "$AEDES_PID"
        continue
    fi
    # Memory per connection means something only on a freshly started broker.
    if [ "$target" = mosquitto ]; then
        start_mosquitto
    else
        enroll "$target"
        start_hub "$target"
    fi
    bench "$target" hold hold --connections "$HOLD" --hold 3
    bench "$target" connect-tls13 connect-rate --duration "$DURATION" --workers 16 --tls 1.3 --kx x25519
    bench "$target" connect-tls12 connect-rate --duration "$DURATION" --workers 16 --tls 1.2 --kx p256
    bench "$target" telemetry telemetry --clients 50 --window 16 --payload 256 --duration "$DURATION"
    bench "$target" storm storm --connections "$HOLD"
    if [ "$target" = mosquitto ]; then
        stop "$MOSQ_PID"
    else
        CS="$("$(hub_cli "$target")" hub connection-string --data-dir "$WORK/hub-$target")"
        bench "$target" revoke revoke --connections "$REVOKE_N" --revoke 100 --connection-string "$CS"
        stop "$HUB_PID"
        if [ "$target" = certhub ]; then
            # MQTT over WebSockets on the 443 listener, from a fresh start again.
            start_hub "$target"
            bench_ws "$target" 8443
            stop "$HUB_PID"
        fi
    fi
done

python3 bench/table.py "$WORK/results" | tee "$WORK/table.md"
{
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
    if [[ " $TARGETS " == *" aedes "* ]]; then
        echo "aedes: $(cd bench/peer-ws && node -p "const v = (p) => JSON.parse(require('fs').readFileSync('node_modules/' + p + '/package.json')).version; 'aedes ' + v('aedes') + ', ws ' + v('ws')") on node $(node --version), bench/peer-ws/server.js"
    fi
    echo "certhub: $("$C" --version)"
    [ -z "$BASELINE_BIN" ] || echo "baseline: $BASELINE_BIN ($("$BASELINE_BIN" --version))"
    echo "devices: $DEVICES, timed scenarios: $DURATION s each"
} | tee -a "$WORK/table.md"
