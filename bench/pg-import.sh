#!/usr/bin/env bash
# usage: POSTGRES=postgres://user@host:port bench/pg-import.sh BIN [BIN...]
#
# Filling a PostgreSQL registry through the service API, for one or more release binaries,
# each into a fresh database of its own (certhub_import_N, dropped and made anew; psql must
# reach the server): `certhub bench query --populate N` (bulk creates of 100, each with the
# existence check of its ids, then one tag patch per device, 8 requests in parallel).
# Reported per BIN: devices a second, and what PostgreSQL's statistics say of the `devices`
# table afterwards (sequential scans, and the rows they read): a bulk create whose existence
# check reads the table whole shows there.
#
# The load (`certhub bench query`) comes from the last BIN (or $BENCH), whichever hub runs.
# Defaults: N=200000. The hub listens on 127.0.0.9 with every port free (bench/lib/hub.sh).
# Results: $WORK/results/LABEL.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -ge 1 ] && [ -n "${POSTGRES:-}" ] || { sed -n 2,3p "$0" >&2; exit 2; }
WORK="${WORK:-/tmp/certhub-pg-import}"
N="${N:-200000}"
H=127.0.0.9
B="${BENCH:-${*: -1}}"
mkdir -p "$WORK/results"
HUB_PID=""
stop() { [ -z "$HUB_PID" ] || { kill "$HUB_PID" 2>/dev/null || true; wait "$HUB_PID" 2>/dev/null || true; }; HUB_PID=""; }
trap stop EXIT

n=0
for BIN in "$@"; do
    n=$((n + 1))
    label="$n-$(basename "$BIN")"
    db="certhub_import_$n"
    fresh_database "$db"
    D="$WORK/hub-$label"
    rm -rf "$D"
    C=$BIN
    start_hub $H "$D" "$D.log"
    "$B" bench query --ca "$D/tls/server-ca.pem" \
        --connection-string "$("$C" hub connection-string --data-dir "$D")" \
        --populate "$N" --runs 1 --only deviceId >"$WORK/results/$label.txt"
    stop
    {
        echo "== $label"
        grep populated "$WORK/results/$label.txt"
        psql "$POSTGRES/$db" -At -F ' ' -c "SELECT 'devices: ' || seq_scan || ' sequential scans, ' \
            || seq_tup_read || ' rows read by them, ' || idx_scan || ' index scans' \
            FROM pg_stat_user_tables WHERE relname = 'devices'"
    } | tee -a "$WORK/results/$label.txt"
done
