#!/usr/bin/env bash
# usage: bench/auto-index.sh BIN [BIN...]
#
# The hub indexing a twin path on its own, at a large registry, for one or more release
# binaries in turn on copies of the same data:
#   once   REG devices (1 000 000) made by `certhub bench query --populate --no-index`
#          (created, tagged with site and floor, every 100th disabled, nothing indexed) in
#          $WORK/data; kept for later runs (delete $WORK to start again);
#   each   a hub on a fresh copy of that data; `certhub bench query --registered REG
#          --auto-index tags.site --only "tag equality" --runs RUNS` (20): queries on
#          tags.site until the hub answers from an index it built on its own (how many queries,
#          how long, the query's time before and after), then the tag equality page timed; the
#          hub's audit record of the build (its time) is printed after.
#
# With POSTGRES=postgres://user@host:port the data is kept in the database certhub_auto_index
# there (made once; each run on a copy made with CREATE DATABASE ... TEMPLATE; psql must reach
# the server) instead of SQLite.
#
# The load comes from the last BIN (or $BENCH). The hub listens on 127.0.0.9 with every port
# free (bench/lib/hub.sh): a hub of your own on the defaults is left alone. Results:
# $WORK/results/LABEL.txt, LABEL the binary's position and file name.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -ge 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
WORK="${WORK:-/tmp/certhub-auto-index}"
REG="${REG:-1000000}"
RUNS="${RUNS:-20}"
H=127.0.0.9
B="${BENCH:-${*: -1}}"
mkdir -p "$WORK/results"

HUB_PID=""
stop() {
    if [ -n "$HUB_PID" ]; then
        kill "$HUB_PID" 2>/dev/null || true
        wait "$HUB_PID" 2>/dev/null || true
    fi
    HUB_PID=""
}
trap stop EXIT

D="$WORK/data"
MARK="$WORK/populated-$REG"
if [ -n "${POSTGRES:-}" ]; then
    MARK="$MARK-postgres"
    D="$WORK/data-postgres"
fi
if [ ! -f "$MARK" ]; then
    C=$B
    rm -rf "$D"
    if [ -n "${POSTGRES:-}" ]; then
        fresh_database certhub_auto_index
    fi
    echo "making $REG tagged devices in $WORK (once)" >&2
    start_hub $H "$D" "$WORK/populate.log"
    "$B" bench query --ca "$D/tls/server-ca.pem" \
        --connection-string "$("$C" hub connection-string --data-dir "$D")" \
        --populate "$REG" --no-index --runs 1 --only deviceId | tee "$WORK/results/populate.txt"
    stop
    touch "$MARK"
fi

n=0
for BIN in "$@"; do
    n=$((n + 1))
    label="$n-$(basename "$BIN")"
    C=$BIN
    R="$WORK/run"
    rm -rf "$R"
    cp -a "$D" "$R"
    if [ -n "${POSTGRES:-}" ]; then
        psql "$POSTGRES/postgres" -q -c "DROP DATABASE IF EXISTS certhub_auto_index_run" \
            -c "CREATE DATABASE certhub_auto_index_run TEMPLATE certhub_auto_index" >/dev/null
        export CERTHUB_DATABASE_URL="$POSTGRES/certhub_auto_index_run"
    fi
    start_hub $H "$R" "$WORK/$label.log"
    sleep 5
    echo "== $label" | tee "$WORK/results/$label.txt"
    "$B" bench query --ca "$R/tls/server-ca.pem" \
        --connection-string "$("$C" hub connection-string --data-dir "$R")" \
        --registered "$REG" --auto-index tags.site --only "tag equality" --runs "$RUNS" |
        tee -a "$WORK/results/$label.txt"
    # The audit record is written just after the index is in use: ask until it is there.
    for _ in $(seq 20); do
        audit=$("$C" audit list --data-dir "$R" --operation twin.index.auto --top 1)
        [ -n "$audit" ] && break
        sleep 0.5
    done
    echo "$audit" | tee -a "$WORK/results/$label.txt"
    stop
done
