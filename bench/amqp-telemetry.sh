#!/usr/bin/env bash
# Durable telemetry over AMQP beside MQTT, on one hub: `certhub bench telemetry` with the same
# X.509 devices (Company-X's four-level chains, sent in the TLS handshake), clients, window and
# payload, over MQTT on the device listener (QoS 1: a PUBACK once the message is on disk) and
# over AMQP on the AMQP listener (a transfer accepted once the message is on disk), alternating
# ROUNDS times. Prints messages per hub CPU-second for each run and the AMQP / MQTT ratio of the
# means.
#
#   bench/amqp-telemetry.sh                              # this checkout's release build
#   CLIENTS=50 WINDOW=16 DURATION=10 ROUNDS=3 CERTHUB_BIN=/path/to/certhub bench/amqp-telemetry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
CLIENTS="${CLIENTS:-50}"
WINDOW="${WINDOW:-16}"
PAYLOAD="${PAYLOAD:-256}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
WORK="${WORK:-/tmp/certhub-amqp-telemetry}"
ADDR=127.0.0.43
. bench/lib/hub.sh
certhub_bin
HUB_PID=""
cleanup() { [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK/results"
DATA="$WORK/data"
"$C" pki demo supply-chain --out "$WORK/pki" --devices "$CLIENTS" >/dev/null
ls "$WORK/pki/devices" \
    | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' \
    >"$WORK/devices.jsonl"
start_hub "$ADDR" "$DATA" "$WORK/hub.log"
"$C" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified --data-dir "$DATA" >/dev/null
"$C" device import "$WORK/devices.jsonl" --data-dir "$DATA" >/dev/null 2>&1
for round in $(seq "$ROUNDS"); do
    for t in mqtt amqp; do
        case "$t" in
        mqtt) args=(--transport tls --port "$MQTT_PORT") ;;
        amqp) args=(--transport amqp --port "$AMQP_PORT") ;;
        esac
        "$C" bench telemetry --devices "$WORK/pki/devices" --host "$ADDR" --ca "$DATA/tls/server-ca.pem" \
            --server-pid "$HUB_PID" --clients "$CLIENTS" --window "$WINDOW" --payload "$PAYLOAD" \
            --duration "$DURATION" --json "${args[@]}" >"$WORK/results/$t-$round.json"
    done
done
python3 - "$WORK/results" <<'PY'
import json, pathlib, statistics, sys
runs = {"mqtt": [], "amqp": []}
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    t = f.stem.split("-")[0]
    per_cpu = r["server"]["ops_per_cpu_s"]
    runs[t].append(per_cpu)
    errors = sum(r["errors"].values()) if r["errors"] else 0
    print(f"{f.stem}: {r['counts']['acked']} acked, {r['rates']['messages_per_s']:,.0f}/s, "
          f"{per_cpu:,.0f} per hub CPU-s, errors {errors}")
m, a = statistics.mean(runs["mqtt"]), statistics.mean(runs["amqp"])
print(f"mean per hub CPU-s: MQTT {m:,.0f}, AMQP {a:,.0f}; AMQP / MQTT = {a / m:.2f}")
PY
