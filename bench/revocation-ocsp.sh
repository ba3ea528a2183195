#!/usr/bin/env bash
# OCSP on the connect path (issue 16): what asking OCSP costs a connect once the answers are
# cached, against the same fleet with OCSP off.
#
#   CERTHUB_BIN=<release build> [DEVICES=1000] [RUNS=3] [DURATION=10] bench/revocation-ocsp.sh
#
# A fresh hub on 127.0.0.9 (ports 18443/18883). `certhub pki demo supply-chain` makes Company-X
# down to Technician-Z; DEVICES widgets are then signed by Technician-Z with `--ocsp-url
# http://127.0.0.1:18890`, where `openssl ocsp` answers good for every one of them (answers
# valid a day). Then, RUNS times: `certhub bench connect-rate` with OCSP off, and with OCSP on
# for Company-X, after a warm-up run in which every widget's first connect asks the responder
# (so the measured runs find every answer cached: they stay a day, or `crl_refresh`, an hour).
# Prints one line per run, and how many connects were refused.
set -euo pipefail
BIN=${CERTHUB_BIN:?give CERTHUB_BIN, a release build of certhub}
N=${DEVICES:-1000}; RUNS=${RUNS:-3}; DUR=${DURATION:-10}
D=$(mktemp -d); H=127.0.0.9; PKI=$D/pki; OCSP=18890
$BIN pki demo supply-chain --out "$PKI" --devices 1 > /dev/null
rm -rf "$PKI/devices"; mkdir "$PKI/devices"
: > $D/index.txt
for i in $(seq -f "%05g" 1 "$N"); do
  id=ocsp-widget-$i
  $BIN pki request --subject "CN=$id" --out "$PKI/devices/$id" > /dev/null
  $BIN pki sign --issuer "$PKI/technician-z" --csr "$PKI/devices/$id/request.csr" --profile device \
    --ocsp-url "http://127.0.0.1:$OCSP" --out "$PKI/devices/$id" > /dev/null
  serial=$(openssl x509 -in "$PKI/devices/$id/cert.pem" -noout -serial | cut -d= -f2)
  printf 'V\t491231235959Z\t\t%s\tunknown\t/CN=%s\n' "$serial" "$id" >> $D/index.txt
done
openssl ocsp -index $D/index.txt -port $OCSP -rsigner "$PKI/technician-z/cert.pem" \
  -rkey "$PKI/technician-z/key.pem" -CA "$PKI/technician-z/cert.pem" -ndays 1 -ignore_err \
  > $D/ocsp.out 2>&1 &
OPID=$!
$BIN serve --data-dir $D/hub --hostname $H --https-addr $H:18443 --mqtt-addr $H:18883 --amqp-addr $H:0 > $D/out 2>&1 &
PID=$!
trap 'kill $PID $OPID 2>/dev/null; wait $PID $OPID 2>/dev/null; rm -rf $D' EXIT
for i in $(seq 100); do grep -q "devices (MQTT)" $D/out 2>/dev/null && break; sleep 0.1; done
$BIN ca upload --name company-x --file "$PKI/company-x/cert.pem" --verified --data-dir $D/hub > /dev/null
ls "$PKI/devices" | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' > $D/devices.jsonl
$BIN device import $D/devices.jsonl --data-dir $D/hub > /dev/null 2>&1
bench() { # LABEL
  $BIN bench connect-rate --devices "$PKI/devices" --host $H --port 18883 --ca $D/hub/tls/server-ca.pem \
    --server-pid $PID --duration $DUR --workers 16 --source-addrs 127.0.1.1-127.0.1.40 --json > $D/run.json
  python3 - "$1" $D/run.json <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
lat = r.get("latency_ms", {})
def p(name, q):
    return lat.get(name, {}).get(q)
print(sys.argv[1], "connects/s", r.get("rates"), "per-server-cpu-s", r.get("server", {}).get("ops_per_cpu_s"),
      "handshake p50/p99", p("handshake", "p50"), p("handshake", "p99"),
      "connack p50/p99/max", p("connack", "p50"), p("connack", "p99"), p("connack", "max"),
      "errors", r.get("errors"))
PY
}
policy() { $BIN ca crl policy --name company-x --ocsp "$1" --data-dir $D/hub > /dev/null; }
bench "warm-up, OCSP off"
policy on
bench "warm-up, OCSP on: each widget's first connect asks the responder"
for run in $(seq $RUNS); do
  policy off
  bench "run $run: OCSP off"
  policy on
  bench "run $run: OCSP on, answers cached"
done
refused=$($BIN audit list --json --top 10000 --data-dir $D/hub | python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r["operation"]=="device.connect" and r["outcome"]!="ok"))')
echo "refused connects in the audit trail: $refused"
