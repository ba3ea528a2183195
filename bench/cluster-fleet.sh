#!/usr/bin/env bash
# Issue 15's fleet figures on the three-node cluster of scripts/cluster (three nats-servers
# with JetStream, three certhub nodes on one PostgreSQL database, HAProxy), on loopback
# addresses of its own (127.0.4.10-13, ports 25xxx-28xxx), so a user's hub and their own
# scripts/cluster are not touched:
#
#   revoke  CONNECTIONS (default 10 000) devices connected, a third on each node: `certhub
#           bench hold` on nodes 1 and 3, `certhub bench revoke` on node 2, which disables
#           REVOKE (default 200) of its devices one after the other through node 1's service
#           API, so every revocation crosses nodes; the figure is the time from each request
#           to the device's connection closing on node 2 (p50/p99/max).
#   hold    HOLD (default 50 000) devices connected directly to the nodes, a third each, by
#           three probe processes (each process here may open 20 000 files, and HAProxy would
#           need two per connection), held 20 s; each node's resident memory per connection
#           (its RSS growth over the connections it took).
#
#   CERTHUB_BIN=/path/to/release/certhub bench/cluster-fleet.sh
#   SCENARIOS=revoke CONNECTIONS=3000 CERTHUB_BIN=... bench/cluster-fleet.sh
#
# Devices: `certhub pki demo supply-chain` (CA-signed chains) for max(CONNECTIONS, HOLD)
# devices, imported once. PostgreSQL: PG_ADMIN (default postgres://postgres@127.0.0.1:5432/
# postgres), a user who may create databases; the database is dropped at the end. Results stay
# in $WORK (default /tmp/certhub-cluster-fleet): results/*.json, the cluster's logs in run/,
# the summary in summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
CONNECTIONS="${CONNECTIONS:-10000}"
REVOKE="${REVOKE:-200}"
HOLD="${HOLD:-50000}"
SCENARIOS="${SCENARIOS:-revoke hold}"
WORK="${WORK:-/tmp/certhub-cluster-fleet}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
DB="certhub_fleet_bench_$$"
LB=127.0.4.10
NODES=(127.0.4.11 127.0.4.12 127.0.4.13)
NODE_HTTPS=26443
NODE_MQTT=26883
SOURCES=(127.0.5.1-127.0.5.20 127.0.5.21-127.0.5.40 127.0.5.41-127.0.5.60)
. bench/lib/hub.sh
certhub_bin
command -v psql >/dev/null || { echo "cluster-fleet.sh: psql is needed" >&2; exit 1; }

export CERTHUB_BIN="$C"
export CERTHUB_CLUSTER_DIR="$WORK/run"
export CERTHUB_CLUSTER_POSTGRES="${PG_ADMIN%/*}/$DB"
export CERTHUB_CLUSTER_LB_ADDR=$LB
export CERTHUB_CLUSTER_HTTPS_PORT=25443
export CERTHUB_CLUSTER_MQTT_PORT=25883
export CERTHUB_CLUSTER_AMQP_PORT=25671
export CERTHUB_CLUSTER_NODE_ADDRS="${NODES[*]}"
export CERTHUB_CLUSTER_NODE_HTTPS_PORT=$NODE_HTTPS
export CERTHUB_CLUSTER_NODE_MQTT_PORT=$NODE_MQTT
export CERTHUB_CLUSTER_NODE_AMQP_PORT=26671
export CERTHUB_CLUSTER_NATS_PORT=27222
export CERTHUB_CLUSTER_NATS_ROUTE_PORT=28222
export CERTHUB_LOG=warn
ulimit -n "$(ulimit -Hn)"

cleanup() { scripts/cluster stop --clean >/dev/null 2>&1 || true; }
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/results"
devices=$((CONNECTIONS > HOLD ? CONNECTIONS : HOLD))
echo "making $devices device chains" >&2
"$C" pki demo supply-chain --out "$WORK/pki" --devices "$devices" >/dev/null
ls "$WORK/pki/devices" >"$WORK/names"
sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' "$WORK/names" \
    >"$WORK/devices.jsonl"

echo "starting the cluster" >&2
scripts/cluster start >"$WORK/start.log" 2>&1 || { cat "$WORK/start.log" >&2; exit 1; }
DATA="$CERTHUB_CLUSTER_DIR/node-1"
CA="$DATA/tls/server-ca.pem"
"$C" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
    --data-dir "$DATA" >/dev/null
"$C" device import "$WORK/devices.jsonl" --data-dir "$DATA" >/dev/null 2>&1
# The other nodes follow the CA through the database's change counter (every 500 ms).
sleep 1
# The owner's connection string names the balancer; node 1's own address instead, so that
# every revocation is made on node 1.
CS=$("$C" hub connection-string --data-dir "$DATA")
CS_NODE_1=$(sed "s/HostName=[^;]*/HostName=${NODES[0]}:$NODE_HTTPS/" <<<"$CS")
pid() { cat "$CERTHUB_CLUSTER_DIR/$1.pid"; }

# slice NAME FROM COUNT: a folder of COUNT device folders (symbolic links), from line FROM of
# the sorted names on (the bench takes the devices of a folder in name order).
slice() {
    local dir="$WORK/$1"
    mkdir -p "$dir"
    tail -n "+$2" "$WORK/names" | head -n "$3" | while read -r d; do
        ln -s "$WORK/pki/devices/$d" "$dir/$d"
    done
    echo "$dir"
}

# probe SCENARIO NODE(0-2) DEVICES_DIR OUT ARGS...: a bench process against one node directly.
probe() {
    local scenario=$1 n=$2 devices=$3 out=$4
    shift 4
    "$C" bench "$scenario" --devices "$devices" --host "${NODES[$n]}" --port "$NODE_MQTT" \
        --ca "$CA" --server-pid "$(pid "node-$((n + 1))")" --source-addrs "${SOURCES[$n]}" \
        --json "$@" >"$out"
}

# sessions: the hub's sessions, from `certhub cluster status`.
sessions() {
    "$C" cluster status --data-dir "$DATA" 2>/dev/null \
        | sed -n 's/.* \([0-9][0-9]*\) device sessions.*/\1/p' | head -1
}

for scenario in $SCENARIOS; do
    case "$scenario" in
    revoke)
        third=$((CONNECTIONS / 3))
        rest=$((CONNECTIONS - 2 * third))
        echo "revoke: $CONNECTIONS connected ($third on nodes 1 and 3, $rest on node 2), $REVOKE revoked through node 1" >&2
        a=$(slice revoke-a 1 "$third")
        c=$(slice revoke-c $((third + 1)) "$third")
        b=$(slice revoke-b $((2 * third + 1)) "$rest")
        probe hold 0 "$a" "$WORK/results/revoke-hold-node-1.json" --connections "$third" --hold 600 &
        hold_a=$!
        probe hold 2 "$c" "$WORK/results/revoke-hold-node-3.json" --connections "$third" --hold 600 &
        hold_c=$!
        for _ in $(seq 600); do
            [ "$(sessions || echo 0)" -ge $((2 * third)) ] 2>/dev/null && break
            sleep 1
        done
        echo "  $(sessions) sessions held on nodes 1 and 3; node 2 now" >&2
        probe revoke 1 "$b" "$WORK/results/revoke.json" --connections "$rest" \
            --revoke "$REVOKE" --connection-string "$CS_NODE_1" --api-ca "$CA"
        kill "$hold_a" "$hold_c" 2>/dev/null || true
        wait "$hold_a" "$hold_c" 2>/dev/null || true
        ;;
    hold)
        third=$((HOLD / 3))
        echo "hold: $HOLD connected, about $third on each node" >&2
        pids=()
        for n in 0 1 2; do
            count=$third
            [ "$n" != 2 ] || count=$((HOLD - 2 * third))
            dir=$(slice "hold-$n" $((n * third + 1)) "$count")
            probe hold "$n" "$dir" "$WORK/results/hold-node-$((n + 1)).json" \
                --connections "$count" --hold 20 &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p"; done
        ;;
    *) echo "cluster-fleet.sh: unknown scenario $scenario" >&2; exit 1 ;;
    esac
done

python3 - "$WORK/results" <<'EOF' | tee "$WORK/summary.txt"
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
def load(name):
    p = d / name
    return json.loads(p.read_text()) if p.exists() else None
r = load("revoke.json")
if r:
    c, lat = r["counts"], r["latency_ms"]["close_after_request"]
    print(f"revoke: {c['revoked']} revoked through node 1 of {c['established']} on node 2 "
          f"(plus the holds on nodes 1 and 3); closed {c['closed']}; close after request "
          f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms; "
          f"errors {sum(r['errors'].values())}")
for n in (1, 2, 3):
    h = load(f"hold-node-{n}.json")
    if h:
        s, c = h["server"], h["counts"]
        print(f"hold node {n}: {c['established']} of {c['connections']} established in "
              f"{h['seconds']['until_last_established']:.1f} s; RSS {s['rss_before_kib']/1024:.0f} -> "
              f"{s['rss_after_kib']/1024:.0f} MiB, {s['rss_per_connection_kib']:.1f} KiB per connection; "
              f"closed while held {c['closed_by_server_while_held']}")
EOF
