#!/usr/bin/env bash
# usage: bench/connects.sh BIN [BIN...]
#
# First connections, reconnections and idle sessions of one or more release binaries, each on
# a fresh hub of its own, in the order given (name two builds, or the same build twice, and
# repeat to compare): issue 18's connect and memory targets, as docs/performance.md reports
# them.
#
# For each BIN: a fresh data directory, Company-X's 19 000 device chains of
# `certhub pki demo supply-chain` (made once, in $WORK/pki) registered, the hub restarted, then
#   hold   `certhub bench hold --connections 19000 --hold $HOLD` after the start settles: hub
#          memory per idle session ((RSS at the hold's end - RSS before) / 19 000); the hub is
#          restarted after it. HOLD defaults to 3 s (as in stop 28's figures); the wait
#          before the hold is at least SETTLE seconds (5), then until the RSS stops falling;
#          "all in" is (RSS at the hold's end - RSS of the same build's hub with nothing
#          registered) / 19 000: the session and the identity kept in memory, and not moved
#          by when the allocator gives back what the start's registry read used (on
#          PostgreSQL anywhere from 1 to 10 s after the start: docs/performance.md, stop 33);
#   first  `certhub bench connect-rate --duration 4`: every connection a device's first since
#          the start (the bench takes devices in order, and 4 s stays below 19 000);
#   cover  6 s more, untimed for the report, so that every device has connected once;
#   again  `certhub bench connect-rate --duration 10`: reconnections only.
# connect-rate runs 16 workers, TLS 1.3 with X25519, a full handshake with the device's chain
# each time, CONNECT, CONNACK, DISCONNECT. Figures are per second of hub CPU (the generator
# shares the two cores).
#
# With POSTGRES=postgres://user@host:port each hub keeps its state in a database of its own
# there (certhub_connects_N, dropped and made anew; psql must reach the server) instead of
# SQLite.
#
# The hub listens on 127.0.0.6 with every port free (bench/lib/hub.sh), sources are
# 127.0.1.1-40: a hub of your own on the defaults is left alone. Results: $WORK/results/LABEL-*.json, LABEL the binary's
# position and file name.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -ge 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
WORK="${WORK:-/tmp/certhub-connects}"
HOLD="${HOLD:-3}"
H=127.0.0.6
SOURCES=127.0.1.1-127.0.1.40
ulimit -n "$(ulimit -Hn)"
mkdir -p "$WORK/results"
company_x_devices "$1"

HUB=""
start() { # BIN DIR
    C=$1
    start_hub $H "$2" "$2.log" --max-device-sessions 100000
    HUB=$HUB_PID
    # What every bench run here is given (the port is new at each start).
    common=(--devices "$WORK/pki/devices" --host $H --port "$MQTT_PORT"
        --ca "$2/tls/server-ca.pem" --source-addrs "$SOURCES" --json)
}
stop() { [ -z "$HUB" ] || { kill "$HUB" 2>/dev/null || true; wait "$HUB" 2>/dev/null || true; }; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
settle() { # PID: at least 5 s, then until the RSS stops falling (20 s at most)
    sleep "${SETTLE:-5}"
    local last now
    last=$(rss "$1")
    for _ in $(seq 15); do
        sleep 1
        now=$(rss "$1")
        [ "$now" -lt "$last" ] || return 0
        last=$now
    done
}
trap stop EXIT

report() { # FILE LABEL NAME [EMPTY_RSS_KIB]
    python3 - "$@" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["server"]
if sys.argv[3] == "hold":
    held = r['counts']['established']
    empty = int(sys.argv[4])
    print(f"{sys.argv[2]:>24} hold   {held} held, "
          f"{s['rss_per_connection_kib']:.2f} KiB per idle session "
          f"({s['rss_before_kib']} -> {s['rss_after_kib']} KiB); all in "
          f"{(s['rss_after_kib'] - empty) / max(held, 1):.2f} KiB per connected device "
          f"(from {empty} KiB with no device registered)")
else:
    print(f"{sys.argv[2]:>24} {sys.argv[3]:<6} {r['counts']['connects']} connects, "
          f"{r['rates']['connects_per_s']:.0f}/s, {s['ops_per_cpu_s']:.0f} per server-CPU-s "
          f"(hub {s['cpu_s']} CPU-s, generator {r['generator']['cpu_s']}), "
          f"{r['counts']['errors']} errors")
PY
}

n=0
for BIN in "$@"; do
    n=$((n + 1))
    label="$n-$(basename "$BIN")"
    D="$WORK/hub-$label"
    rm -rf "$D" "$D.log"
    if [ -n "${POSTGRES:-}" ]; then
        fresh_database "certhub_connects_$n"
    fi
    start "$BIN" "$D"
    # The hub with nothing registered: what "all in" counts from.
    settle "$HUB"
    empty=$(rss "$HUB")
    "$BIN" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$D" >/dev/null
    "$BIN" device import "$WORK/devices.jsonl" --data-dir "$D" >/dev/null 2>&1
    stop
    start "$BIN" "$D"
    # The RSS before is read once the start's work has settled: the registry read into memory,
    # and the allocator's return of what that read used for a while (3 s or more), so that the
    # sessions are not counted into memory the start left free.
    settle "$HUB"
    "$BIN" bench hold "${common[@]}" --server-pid "$HUB" --connections 19000 --hold "$HOLD" \
        >"$WORK/results/$label-hold.json"
    report "$WORK/results/$label-hold.json" "$label" hold "$empty"
    stop
    start "$BIN" "$D"
    sleep 1
    for run in first:4 cover:6 again:10; do
        name=${run%%:*}
        "$BIN" bench connect-rate "${common[@]}" --server-pid "$HUB" --duration "${run##*:}" \
            --workers 16 --tls 1.3 --kx x25519 >"$WORK/results/$label-$name.json"
        [ "$name" = cover ] || report "$WORK/results/$label-$name.json" "$label" "$name"
    done
    stop
done
