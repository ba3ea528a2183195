#!/usr/bin/env bash
# Revocation at scale (issue 16): what a 100 000-entry CRL costs a connect, and what loading or
# replacing it does to handshakes in flight.
#
#   CERTHUB_BIN=<release build> [PKI=DIR] [ENTRIES=100000] [RUNS=3] [DURATION=10] \
#       bench/revocation-crl.sh
#
# A fresh hub on 127.0.0.9 (ports 18443/18883), the CA devices of `certhub pki demo
# supply-chain --out $PKI --devices 1000` registered. Technician-Z's CRL is made by
# `openssl ca -gencrl` from an index of ENTRIES random serials (none a device's, so every
# connect is checked and admitted). Then, RUNS times: `certhub bench connect-rate` with no CRL
# held, and with the CRL held (uploaded with `certhub ca crl upload`, deleted between runs).
# Last, a run during which the CRL is replaced every 2 s by a newer one of the same size:
# handshake and CONNACK latency percentiles against the runs without replacement, and how long
# each upload took. Prints one line per run.
set -euo pipefail
BIN=${CERTHUB_BIN:?give CERTHUB_BIN, a release build of certhub}
PKI=${PKI:-/tmp/benchpki}; N=${ENTRIES:-100000}; RUNS=${RUNS:-3}; DUR=${DURATION:-10}
D=$(mktemp -d); H=127.0.0.9
[ -d "$PKI/devices" ] || $BIN pki demo supply-chain --out "$PKI" --devices 1000 > /dev/null
$BIN serve --data-dir $D/hub --hostname $H --https-addr $H:18443 --mqtt-addr $H:18883 --amqp-addr $H:0 > $D/out 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf $D' EXIT
for i in $(seq 100); do grep -q "devices (MQTT)" $D/out 2>/dev/null && break; sleep 0.1; done
$BIN ca upload --name company-x --file "$PKI/company-x/cert.pem" --verified --data-dir $D/hub > /dev/null
ls "$PKI/devices" | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' > $D/devices.jsonl
$BIN device import $D/devices.jsonl --data-dir $D/hub > /dev/null 2>&1

# Technician-Z's CA database for openssl: N revoked entries with random 16-byte serials.
python3 - "$N" > $D/index.txt <<'PY'
import secrets, sys
for i in range(int(sys.argv[1])):
    print(f"R\t351231000000Z\t260101000000Z,keyCompromise\t{secrets.token_hex(16).upper()}\tunknown\t/CN=revoked-{i}")
PY
echo "unique_subject = no" > $D/index.txt.attr
cat > $D/ca.cnf <<CNF
[ca]
default_ca = tz
[tz]
database = $D/index.txt
crlnumber = $D/crlnumber
certificate = $PKI/technician-z/cert.pem
private_key = $PKI/technician-z/key.pem
default_md = sha256
default_crl_days = 7
CNF
crl() { # NUMBER -> $D/crl-NUMBER.pem
  printf '%04X\n' "$1" > $D/crlnumber
  openssl ca -config $D/ca.cnf -gencrl -out $D/crl-$1.pem 2> /dev/null
}
crl 1
echo "CRL: $N entries, $(openssl crl -in $D/crl-1.pem -outform DER | wc -c) bytes DER"
upload() { # NUMBER: prints the upload's wall time in ms
  local t0=$(date +%s%N)
  $BIN ca crl upload --name company-x --file $D/crl-$1.pem --issuer-chain "$PKI/technician-z/chain.pem" --data-dir $D/hub > /dev/null
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
KEY=""
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
      "handshake p50/p99/max", p("handshake", "p50"), p("handshake", "p99"), p("handshake", "max"),
      "connack p50/p99/max", p("connack", "p50"), p("connack", "p99"), p("connack", "max"),
      "errors", r.get("errors"))
PY
}
# Warm: every device's first connection.
bench warm-up > /dev/null

for run in $(seq $RUNS); do
  bench "run $run: no CRL"
  echo "run $run: upload of the CRL: $(upload 1) ms"
  bench "run $run: $N-entry CRL held"
  KEY=$($BIN ca crl list --name company-x --data-dir $D/hub | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"][0]["issuerKey"])')
  $BIN ca crl delete --name company-x --issuer-key $KEY --data-dir $D/hub > /dev/null
done
# Replacement under load: a newer CRL every 2 s while devices connect.
echo "upload of CRL 1 (base): $(upload 1) ms"
for n in $(seq 2 $(( DUR / 2 + 1 ))); do crl $n; done
( sleep 1; for n in $(seq 2 $(( DUR / 2 + 1 ))); do echo "replacement $n: $(upload $n) ms"; sleep 1.5; done ) > $D/uploads.txt &
UP=$!
bench "CRL replaced every 2 s"
wait $UP
cat $D/uploads.txt
