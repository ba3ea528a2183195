#!/usr/bin/env bash
# usage: PKI=DIR bench/ab-connect.sh BIN LABEL
# One release binary against itself: a fresh hub on 127.0.0.9 (ports 18443/18883), the CA
# devices of `certhub pki demo supply-chain --out $PKI --devices N` registered, then
# `certhub bench connect-rate` twice (every device's first connection since the start, then
# reconnections), printing connects/s and connects per server-CPU-s. Run two builds
# alternately (A B A B ...) to compare them under the same conditions.
set -euo pipefail
BIN=$1; LABEL=$2; D=$(mktemp -d); H=127.0.0.9
$BIN serve --data-dir $D/hub --hostname $H --https-addr $H:18443 --mqtt-addr $H:18883 --amqp-addr $H:0 > $D/out 2>&1 &
PID=$!
for i in $(seq 100); do grep -q "devices (MQTT)" $D/out 2>/dev/null && break; sleep 0.1; done
$BIN ca upload --name company-x --file ${PKI:-/tmp/benchpki}/company-x/cert.pem --verified --data-dir $D/hub >/dev/null
ls ${PKI:-/tmp/benchpki}/devices | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' > $D/devices.jsonl
$BIN device import $D/devices.jsonl --data-dir $D/hub >/dev/null 2>&1
for run in first second; do
  $BIN bench connect-rate --devices ${PKI:-/tmp/benchpki}/devices --host $H --port 18883 --ca $D/hub/tls/server-ca.pem \
    --server-pid $PID --duration 10 --workers 16 --source-addrs 127.0.1.1-127.0.1.40 --json > $D/$run.json
  python3 -c "
import json,sys
r=json.load(open('$D/$run.json'))
rates=dict(r.get('rates',[])) if isinstance(r.get('rates'),list) else r.get('rates')
print('$LABEL', '$run', json.dumps(rates), 'per-server-cpu-s', r.get('server',{}).get('ops_per_cpu_s'), 'errors', r.get('errors'))
"
done
kill $PID; wait $PID 2>/dev/null || true
rm -rf $D
