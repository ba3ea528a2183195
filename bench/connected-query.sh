#!/usr/bin/env bash
# usage: bench/connected-query.sh BIN [BIN...]
#
# Twin queries on `connectionState = 'Connected'` at a large registry while devices are
# connected, for one or more release binaries in turn on the same data (name two builds to
# compare them):
#   once   REG devices (1 000 000) made by `certhub bench query --populate`
#          (created, tagged, every 100th disabled), and HOLD (10 000) of Company-X's device
#          chains of `certhub pki demo supply-chain` registered beside them, in $WORK/data;
#          kept for later runs (delete $WORK to start again);
#   each   a hub on that data; `certhub bench hold` connects the HOLD devices and holds them;
#          once the hub counts them all, `certhub bench query --registered REG --only SHAPE
#          --runs RUNS` (20) times each shape in turn: the first page of the connected devices,
#          of the connected and enabled ones, and COUNT() of the connected.
#
# With POSTGRES=postgres://user@host:port the data is kept in the database
# certhub_connected_query there (made once, with $WORK/data-postgres for the rest; psql must
# reach the server) instead of SQLite.
#
# The load (`certhub bench ...`) comes from the last BIN (or $BENCH), whichever hub runs.
# The hub listens on 127.0.0.8 with every port free (bench/lib/hub.sh), the held connections
# come from 127.0.2.1-10: a hub of your own on the defaults is left alone. Results:
# $WORK/results/LABEL.txt, LABEL the binary's position and file name.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -ge 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
WORK="${WORK:-/tmp/certhub-connected-query}"
REG="${REG:-1000000}"
HOLD="${HOLD:-10000}"
RUNS="${RUNS:-20}"
H=127.0.0.8
D="$WORK/data"
B="${BENCH:-${*: -1}}"
ulimit -n "$(ulimit -Hn)"
mkdir -p "$WORK/results"

HUB_PID=""
HOLDER=""
stop() {
    for p in $HOLDER $HUB_PID; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    HOLDER=""
    HUB_PID=""
}
trap stop EXIT
cs() { "$C" hub connection-string --data-dir "$D"; }

MARK="$WORK/populated-$REG-$HOLD"
if [ -n "${POSTGRES:-}" ]; then
    MARK="$MARK-postgres"
    D="$WORK/data-postgres"
    export CERTHUB_DATABASE_URL="$POSTGRES/certhub_connected_query"
fi
if [ ! -f "$MARK" ]; then
    C=$B
    rm -rf "$D"
    if [ -n "${POSTGRES:-}" ]; then
        fresh_database certhub_connected_query
    fi
    echo "making $HOLD device chains and $REG tagged devices in $WORK (once)" >&2
    [ -d "$WORK/pki/devices" ] && [ "$(ls "$WORK/pki/devices" | wc -l)" = "$HOLD" ] ||
        { rm -rf "$WORK/pki"; "$C" pki demo supply-chain --out "$WORK/pki" --devices "$HOLD" >/dev/null; }
    start_hub $H "$D" "$WORK/populate.log" --max-device-sessions 100000
    "$C" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$D" >/dev/null
    ls "$WORK/pki/devices" |
        sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' \
            >"$WORK/devices.jsonl"
    "$C" device import "$WORK/devices.jsonl" --data-dir "$D" >/dev/null
    "$B" bench query --ca "$D/tls/server-ca.pem" --connection-string "$(cs)" \
        --populate "$REG" --runs 1 --only deviceId | tee "$WORK/results/populate.txt"
    stop
    touch "$MARK"
fi

n=0
for BIN in "$@"; do
    n=$((n + 1))
    label="$n-$(basename "$BIN")"
    C=$BIN
    start_hub $H "$D" "$WORK/$label.log" --max-device-sessions 100000
    "$B" bench hold --devices "$WORK/pki/devices" --host $H --port "$MQTT_PORT" \
        --ca "$D/tls/server-ca.pem" --source-addrs 127.0.2.1-127.0.2.10 \
        --connections "$HOLD" --hold 100000 --json >"$WORK/$label-hold.json" 2>&1 &
    HOLDER=$!
    held=0
    for _ in $(seq 600); do
        held=$(curl -sf --max-time 2 --cacert "$D/tls/server-ca.pem" \
            "https://$H:$HTTPS_PORT/metrics" | awk '$1 == "certhub_device_sessions" {print $2}') ||
            held=0 # a slow answer (the hub busy with the connections) is asked again, not fatal
        [ "${held:-0}" -ge "$HOLD" ] && break
        sleep 1
    done
    [ "${held:-0}" -ge "$HOLD" ] || { echo "only ${held:-0} of $HOLD connected" >&2; exit 1; }
    echo "== $label: $held devices connected" | tee "$WORK/results/$label.txt"
    # One shape at a time: a shape that outlasts the client's timeout says so, and the next
    # one runs.
    for shape in "connected, first page" "connected and enabled" "COUNT() of connected"; do
        "$B" bench query --ca "$D/tls/server-ca.pem" --connection-string "$(cs)" \
            --registered "$REG" --only "$shape" --runs "$RUNS" 2>&1 |
            grep -v "^indexed\|was indexed already\|^registry:" | tee -a "$WORK/results/$label.txt" || true
    done
    stop
done
