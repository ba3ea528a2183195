#!/usr/bin/env bash
# usage: bench/telemetry-cap.sh BIN [BIN...]
#
# The telemetry size cap under a steady flood, for one or more release binaries, each on a
# fresh hub of its own (issue 18's "retention that keeps the disk bounded at 150 000 messages
# a second"). For each BIN: a fresh data directory with 50 CA devices of
# `certhub pki demo supply-chain` (made once, in $WORK/pki), the hub started with
# `--telemetry-max-bytes $CAP --telemetry-max-messages 1000000000` (so that only the size cap
# cuts), then
#   certhub bench telemetry --clients 50 --window 16 --payload 256 --rate $RATE --duration $DURATION
# while `certhub.db`, its WAL and /metrics (certhub_telemetry_log_bytes,
# certhub_telemetry_dropped_total, certhub_telemetry_segments_*) are sampled every second into
# $WORK/results/LABEL-disk.csv.
#
# Reported: the rate held, per hub CPU-second, the ack p99; the database file and the WAL at
# their largest and at the end; how the file grew over the run's last half (a bounded disk
# stops growing); the log as the cap counts it at its largest; what the cap dropped.
#
# With POSTGRES=postgres://user@host:port each hub keeps its state in a fresh database of its
# own there (certhub_tcap_N, dropped and made anew; psql must reach the server, and this user
# must read the server's pg_wal folder): the database's size (`pg_database_size`) stands for
# certhub.db and the server's pg_wal folder for the WAL.
#
# Defaults: CAP=536870912 (512 MiB), RATE=150000, DURATION=300 (seconds). The hub listens on
# 127.0.0.7 with every port free (bench/lib/hub.sh), sources are 127.0.2.1-40: a hub of your
# own on the defaults is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -ge 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
WORK="${WORK:-/tmp/certhub-telemetry-cap}"
CAP="${CAP:-536870912}"
RATE="${RATE:-150000}"
DURATION="${DURATION:-300}"
H=127.0.0.7
SOURCES=127.0.2.1-127.0.2.40
ulimit -n "$(ulimit -Hn)"
mkdir -p "$WORK/results"
if [ ! -d "$WORK/pki/devices" ]; then
    "$1" pki demo supply-chain --out "$WORK/pki" --devices 50 >/dev/null
fi
ls "$WORK/pki/devices" | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' \
    >"$WORK/devices.jsonl"

HUB=""
SAMPLER=""
start() { # BIN DIR [ARGS...]
    C=$1
    local dir=$2
    shift 2
    start_hub $H "$dir" "$dir.log" "$@"
    HUB=$HUB_PID
}
stop() {
    [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
    [ -z "$HUB" ] || kill "$HUB" 2>/dev/null || true
    [ -z "$HUB" ] || wait "$HUB" 2>/dev/null || true
}
trap stop EXIT

sample() { # DIR CSV: one line a second until killed
    local dir=$1 csv=$2 t=0
    echo "s,db_bytes,wal_bytes,log_bytes,dropped,segments_started,segments_dropped" >"$csv"
    while sleep 1; do
        t=$((t + 1))
        local db wal m
        if [ -n "${POSTGRES:-}" ]; then
            db=$(psql "$CERTHUB_DATABASE_URL" -At -c "SELECT pg_database_size(current_database())" 2>/dev/null || echo 0)
            wal=$(du -sb "$PG_WAL" 2>/dev/null | cut -f1 || echo 0)
        else
            db=$(stat -c %s "$dir/certhub.db" 2>/dev/null || echo 0)
            wal=$(stat -c %s "$dir/certhub.db-wal" 2>/dev/null || echo 0)
        fi
        m=$(curl -sf --max-time 1 --cacert "$dir/tls/server-ca.pem" "https://$H:$HTTPS_PORT/metrics" || true)
        get() { echo "$m" | awk -v n="$1" '$1 == n {print $2}' | head -1; }
        echo "$t,$db,$wal,$(get certhub_telemetry_log_bytes),$(get certhub_telemetry_dropped_total),$(get certhub_telemetry_segments_started_total),$(get certhub_telemetry_segments_dropped_total)" >>"$csv"
    done
}

n=0
for BIN in "$@"; do
    n=$((n + 1))
    label="$n-$(basename "$BIN")"
    D="$WORK/hub-$label"
    rm -rf "$D" "$D.log"
    if [ -n "${POSTGRES:-}" ]; then
        fresh_database "certhub_tcap_$n"
        PG_WAL="$(psql "$POSTGRES/postgres" -At -c "SHOW data_directory")/pg_wal"
    fi
    start "$BIN" "$D" --telemetry-max-bytes "$CAP" --telemetry-max-messages 1000000000
    "$BIN" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$D" >/dev/null
    "$BIN" device import "$WORK/devices.jsonl" --data-dir "$D" >/dev/null 2>&1
    sample "$D" "$WORK/results/$label-disk.csv" &
    SAMPLER=$!
    "$BIN" bench telemetry --devices "$WORK/pki/devices" --host $H --port "$MQTT_PORT" \
        --ca "$D/tls/server-ca.pem" --source-addrs "$SOURCES" --server-pid "$HUB" --json \
        --clients 50 --window 16 --payload 256 --rate "$RATE" --duration "$DURATION" \
        >"$WORK/results/$label-telemetry.json"
    sleep 3
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    python3 - "$WORK/results/$label-telemetry.json" "$WORK/results/$label-disk.csv" "$label" "$CAP" \
        "$([ -n "${POSTGRES:-}" ] && echo "database" || echo "certhub.db")" <<'PY'
import csv, json, sys
r = json.load(open(sys.argv[1]))
rows = [row for row in csv.DictReader(open(sys.argv[2]))]
num = lambda v: int(float(v)) if v else 0
db = [num(x["db_bytes"]) for x in rows]
wal = [num(x["wal_bytes"]) for x in rows]
both = [a + b for a, b in zip(db, wal)]
log = [num(x["log_bytes"]) for x in rows]
half = len(db) // 2
mb = lambda b: f"{b / 1e6:.0f} MB"
s, lat = r["server"], r["latency_ms"]["ack"]
print(f"{sys.argv[3]}: {r['counts']['acked']} acked, {r['rates']['messages_per_s']:.0f}/s, "
      f"{s['ops_per_cpu_s']:.0f} per hub CPU-s, ack p50 {lat['p50']} ms p99 {lat['p99']} ms, "
      f"{r['counts']['errors'] if 'errors' in r['counts'] else 0} errors")
print(f"  cap {mb(int(sys.argv[4]))}: log (as the cap counts) max {mb(max(log))}, end {mb(log[-1])}; "
      f"dropped {rows[-1]['dropped']} messages; segments started {rows[-1]['segments_started']}, "
      f"dropped {rows[-1]['segments_dropped']}")
print(f"  {sys.argv[5]} max {mb(max(db))}, end {mb(db[-1])}; WAL max {mb(max(wal))}, end {mb(wal[-1])}; "
      f"db+WAL max {mb(max(both))}; db growth over the last half ({len(db) - half} s): "
      f"{mb(db[-1] - db[half])}")
PY
    stop
done
