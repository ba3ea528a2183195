#!/usr/bin/env bash
# Issue 15's performance targets, on this machine: durable telemetry into JetStream per
# server-CPU-second, every server process counted, and connects per server-CPU-second of a
# cluster node beside a single node on SQLite. For each of RUNS (default 3) rounds and each
# VARIANT, everything is started fresh:
#
#   cluster      a fresh PostgreSQL database, three nats-server processes clustered with
#                JetStream (127.0.2.101-103, their own temp dirs, routes on port 6222), NODES
#                (default 1) certhub nodes with --store and --nats (127.0.2.111, .112); the
#                telemetry stream is replicated 3 times (the default on a NATS cluster)
#   single-nats  the same with one nats-server (127.0.2.104) and --telemetry-replicas 1
#   sqlite       one certhub node on its own SQLite data directory (127.0.2.120)
#
# Company-X's root is uploaded as verified and DEVICES (default 3000) device chains imported
# (CA-signed devices, as bench/ab-connect.sh does); then a 3 s `certhub bench connect-rate`
# warm-up (it grows the node's PostgreSQL pool to what a busy node holds), then the measured
# `certhub bench telemetry --clients 50 --window 16 --payload 256 --duration 10` (the
# single-node figure's parameters) and `certhub bench connect-rate --workers 16 --duration 10`
# against node A. `--server-pid` counts every server process: the certhub node(s), the
# nats-server(s), the PostgreSQL backends connected to the bench's database and PostgreSQL's
# shared writers (walwriter, checkpointer, background writer: they serve every database of the
# server, so anything else using it at the same time is counted too). PostgreSQL backends that
# appear during a measured run are not counted: the script says so after the run.
#
#   CERTHUB_BIN=/path/to/release/certhub bench/cluster-telemetry.sh
#   RUNS=1 VARIANTS="cluster sqlite" SCENARIOS=telemetry CERTHUB_BIN=... bench/cluster-telemetry.sh
#   NODES=2 CERTHUB_BIN=... bench/cluster-telemetry.sh     # a second node in the cluster (idle:
#                                                          # the bench talks to node A only)
#
# PostgreSQL: PG_ADMIN (default postgres://postgres@127.0.0.1:5432/postgres), a user who may
# create databases; the database is dropped at the end. nats-server: NATS_SERVER (default
# /usr/sbin/nats-server). The generator connects from 127.0.1.1-40. Results stay in $WORK
# (default /tmp/certhub-cluster-bench): results/VARIANT-SCENARIO-RUN.json and the logs; the
# summary at the end is also in $WORK/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
CLIENTS="${CLIENTS:-50}"
WINDOW="${WINDOW:-16}"
PAYLOAD="${PAYLOAD:-256}"
DURATION="${DURATION:-10}"
DEVICES="${DEVICES:-3000}"
RUNS="${RUNS:-3}"
NODES="${NODES:-1}"
VARIANTS="${VARIANTS:-cluster single-nats sqlite}"
SCENARIOS="${SCENARIOS:-telemetry connect-rate}"
WORK="${WORK:-/tmp/certhub-cluster-bench}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
NATS_SERVER="${NATS_SERVER:-/usr/sbin/nats-server}"
NATS_ADDRS=(127.0.2.101 127.0.2.102 127.0.2.103)
NATS_SINGLE=127.0.2.104
NODE_ADDRS=(127.0.2.111 127.0.2.112)
SQLITE_ADDR=127.0.2.120
SOURCES=127.0.1.1-127.0.1.40
DB="certhub_bench_$$"
DB_URL="${PG_ADMIN%/*}/$DB"
. bench/lib/hub.sh
certhub_bin
command -v psql >/dev/null || { echo "cluster-telemetry.sh: psql is needed" >&2; exit 1; }
[ -x "$NATS_SERVER" ] || { echo "cluster-telemetry.sh: no nats-server at $NATS_SERVER" >&2; exit 1; }

PIDS=()        # every server process started by this script (certhub nodes, nats-servers)
NODE_PIDS=()   # certhub nodes of the current variant
NATS_PIDS=()   # nats-servers of the current variant
DB_MADE=""

psql_admin() { psql "$PG_ADMIN" -v ON_ERROR_STOP=1 -qAt -c "$1"; }

stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    NODE_PIDS=()
    NATS_PIDS=()
}
drop_db() {
    [ -z "$DB_MADE" ] || psql_admin "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    DB_MADE=""
}
cleanup() { stop_all; drop_db; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

# start_nats ADDR NAME [ARGS...]: a nats-server with JetStream on ADDR (a free client port),
# its store in a folder of its own; appends to NATS_PIDS and NATS_URLS.
start_nats() {
    local addr=$1 name=$2
    shift 2
    local dir="$RUN_DIR/nats-$name"
    mkdir -p "$dir"
    "$NATS_SERVER" -a "$addr" -p -1 -js -sd "$dir" --server_name "$name" "$@" >"$dir.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    NATS_PIDS+=("$pid")
    local port=""
    for _ in $(seq 100); do
        # (The log may not exist yet: the server's shell opens it.)
        port=$(sed -n 's/.*client connections on [^ ]*:\([0-9]*\).*/\1/p' "$dir.log" 2>/dev/null \
            | head -1 || true)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "nats-server $name did not start:" >&2; cat "$dir.log" >&2; exit 1; }
    NATS_URLS="${NATS_URLS:+$NATS_URLS,}nats://$addr:$port"
}

# setup VARIANT RUN: starts the variant's servers and enrolls the devices; sets HOST, PORT, CA.
setup() {
    local variant=$1 run=$2
    RUN_DIR="$WORK/$variant-$run"
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    NATS_URLS=""
    local cluster_args=()
    case "$variant" in
    cluster)
        psql_admin "CREATE DATABASE $DB"
        DB_MADE=1
        local a routes
        for a in "${NATS_ADDRS[@]}"; do
            routes=$(printf 'nats://%s:6222,' "${NATS_ADDRS[@]/$a/}" | sed 's#nats://:6222,##; s/,$//')
            start_nats "$a" "n${a##*.}" --cluster_name certhub-bench --cluster "nats://$a:6222" \
                --routes "$routes"
        done
        cluster_args=(--store "$DB_URL" --nats "$NATS_URLS")
        ;;
    single-nats)
        psql_admin "CREATE DATABASE $DB"
        DB_MADE=1
        start_nats "$NATS_SINGLE" single
        cluster_args=(--store "$DB_URL" --nats "$NATS_URLS" --telemetry-replicas 1)
        ;;
    sqlite) ;;
    *) echo "cluster-telemetry.sh: unknown variant $variant" >&2; exit 1 ;;
    esac
    local n
    if [ "$variant" = sqlite ]; then
        start_hub "$SQLITE_ADDR" "$RUN_DIR/node-1" "$RUN_DIR/node-1.log"
        HOST=$SQLITE_ADDR
        PIDS+=("$HUB_PID")
        NODE_PIDS=("$HUB_PID")
    else
        for n in $(seq "$NODES"); do
            start_hub "${NODE_ADDRS[$((n - 1))]}" "$RUN_DIR/node-$n" "$RUN_DIR/node-$n.log" \
                "${cluster_args[@]}"
            PIDS+=("$HUB_PID")
            NODE_PIDS+=("$HUB_PID")
            if [ "$n" = 1 ]; then
                HOST=${NODE_ADDRS[0]}
                PORT_A=$MQTT_PORT
                HTTPS_A=$HTTPS_PORT
            fi
        done
        MQTT_PORT=$PORT_A
    fi
    PORT=$MQTT_PORT
    local data="$RUN_DIR/node-1"
    CA="$data/tls/server-ca.pem"
    "$C" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$data" >/dev/null
    "$C" device import "$WORK/devices.jsonl" --data-dir "$data" >/dev/null 2>&1
    # Other nodes follow the CA through the database's change counter (every 500 ms).
    sleep 1
}

# pg_pids: the backends connected to the bench's database and PostgreSQL's shared writers.
pg_pids() {
    [ -n "$DB_MADE" ] || return 0
    psql_admin "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' OR backend_type IN
        ('walwriter', 'checkpointer', 'background writer') ORDER BY pid"
}

# bench SCENARIO OUT ARGS...: one measured run against node A, every server process counted.
bench() {
    local scenario=$1 out=$2
    shift 2
    local before pids
    before=$(pg_pids | tr '\n' ' ')
    pids=$(echo "${NODE_PIDS[@]} ${NATS_PIDS[@]} $before" | tr -s ' ' '\n' | grep . | paste -sd,)
    "$C" bench "$scenario" --devices "$WORK/pki/devices" --host "$HOST" --port "$PORT" --ca "$CA" \
        --server-pid "$pids" --source-addrs "$SOURCES" --json "$@" >"$out"
    local p new=""
    for p in $(pg_pids); do
        [[ " $before " == *" $p "* ]] || new="$new $p"
    done
    [ -z "$new" ] || echo "  note: $(basename "$out" .json): PostgreSQL backends started during the run, not counted:$new" >&2
}

rm -rf "$WORK"
mkdir -p "$WORK/results"
echo "making $DEVICES device chains" >&2
"$C" pki demo supply-chain --out "$WORK/pki" --devices "$DEVICES" >/dev/null
ls "$WORK/pki/devices" \
    | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' \
    >"$WORK/devices.jsonl"
for run in $(seq "$RUNS"); do
    for variant in $VARIANTS; do
        echo "run $run of $RUNS: $variant" >&2
        setup "$variant" "$run"
        bench connect-rate "$WORK/results/$variant-warmup-$run.json" --duration 3 --workers 16
        for scenario in $SCENARIOS; do
            case "$scenario" in
            telemetry) args=(--clients "$CLIENTS" --window "$WINDOW" --payload "$PAYLOAD" --duration "$DURATION") ;;
            connect-rate) args=(--workers 16 --duration "$DURATION") ;;
            *) echo "cluster-telemetry.sh: unknown scenario $scenario" >&2; exit 1 ;;
            esac
            bench "$scenario" "$WORK/results/$variant-$scenario-$run.json" "${args[@]}"
            if [ "$scenario" = telemetry ] && [ "$variant" != sqlite ]; then
                # How many device messages node A put in each JetStream message.
                curl -sS --cacert "$CA" "https://$HOST:$HTTPS_A/metrics" \
                    | grep -E '^certhub_telemetry_(messages|stream_batches)_total ' \
                    >"$WORK/results/$variant-batches-$run.txt" || true
            fi
        done
        stop_all
        drop_db
    done
done
python3 - "$WORK/results" "$RUNS" "$VARIANTS" "$SCENARIOS" <<'PY' | tee "$WORK/summary.txt"
import json, pathlib, statistics, sys
results, runs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
variants, scenarios = sys.argv[3].split(), sys.argv[4].split()
ops = {"telemetry": "messages_per_s", "connect-rate": "connects_per_s"}
means = {}
for scenario in scenarios:
    for variant in variants:
        per_cpu = []
        for run in range(1, runs + 1):
            f = results / f"{variant}-{scenario}-{run}.json"
            if not f.exists():
                continue
            r = json.loads(f.read_text())
            s = r["server"]
            by_name = {}
            for p in s["processes"]:
                name = p["name"] or "?"
                if p["cpu_s"] is not None:
                    by_name[name] = by_name.get(name, 0.0) + p["cpu_s"]
            split = ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_name.items()))
            errors = sum(r["errors"].values()) if r["errors"] else 0
            rate = r["rates"].get(ops[scenario], 0.0)
            per_cpu.append(s["ops_per_cpu_s"] or 0.0)
            batch = ""
            counts = results / f"{variant}-batches-{run}.txt"
            if scenario == "telemetry" and counts.exists():
                c = dict(l.split() for l in counts.read_text().splitlines() if l.strip())
                m, b = float(c.get("certhub_telemetry_messages_total", 0)), float(c.get("certhub_telemetry_stream_batches_total", 0))
                if b:
                    batch = f", {m / b:,.1f} device messages per stream message (node A)"
            print(f"{scenario} {variant} run {run}: {s['ops_per_cpu_s']:,.0f} per server-CPU-s, "
                  f"{rate:,.0f}/s, server CPU {s['cpu_s']:.2f} s ({split}), "
                  f"generator {r['generator']['cpu_s']:.2f} s, errors {errors}{batch}")
        if per_cpu:
            means[(scenario, variant)] = statistics.mean(per_cpu)
            print(f"{scenario} {variant}: mean {means[(scenario, variant)]:,.0f} per server-CPU-s "
                  f"(runs: {', '.join(f'{x:,.0f}' for x in per_cpu)})")
for scenario in scenarios:
    base = means.get((scenario, "sqlite"))
    for variant in variants:
        m = means.get((scenario, variant))
        if base and m and variant != "sqlite":
            print(f"{scenario}: {variant} / sqlite = {m / base:.2f}")
PY
