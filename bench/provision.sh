#!/usr/bin/env bash
# Device provisioning, a first-boot storm (issue 14): WIDGETS (default 10 000) widgets of
# Company-X's four-level supply chain (root -> Factory-Y -> Technician-Z -> widget, ECDSA
# P-256), none of them registered on the hub, register at once through the hub's provisioning
# endpoint (Azure DPS over MQTT over mutual TLS, on the hub's MQTT port) with an X.509
# enrollment group on the verified root, then connect to the hub they were assigned and get
# CONNACK 0: `certhub bench provision`. Each of RUNS (default 3) runs gets a fresh hub (a new
# data directory, the root uploaded as verified, the group created), so every run is a first
# boot. Prints each run's report, then one line per run: registrations per hub CPU-second and
# the time until all were connected.
#
#   bench/provision.sh                                  # this checkout's release build
#   WIDGETS=2000 RUNS=1 CERTHUB_BIN=/path/to/certhub bench/provision.sh
#   PARALLEL=256 EXTRA="--register-only" bench/provision.sh   # the provisioning endpoint alone
#
# The hub listens on 127.0.0.44 (free ports); the generator connects from 127.0.2.1-20 (two
# connections per widget need more ephemeral ports than one address has). Results stay in
# $WORK (default /tmp/certhub-provision): run-N.txt, and hub-N.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
WIDGETS="${WIDGETS:-10000}"
PARALLEL="${PARALLEL:-128}"
RUNS="${RUNS:-3}"
EXTRA="${EXTRA:-}"
WORK="${WORK:-/tmp/certhub-provision}"
ADDR=127.0.0.44
SOURCES=127.0.2.1-127.0.2.20
. bench/lib/hub.sh
certhub_bin
HUB_PID=""
cleanup() { [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null || true; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
rm -rf "$WORK"
mkdir -p "$WORK"
echo "making $WIDGETS widget chains" >&2
"$C" pki demo supply-chain --out "$WORK/pki" --devices "$WIDGETS" >/dev/null
for run in $(seq "$RUNS"); do
    DATA="$WORK/data"
    rm -rf "$DATA"
    start_hub "$ADDR" "$DATA" "$WORK/hub-$run.log"
    "$C" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$DATA" >/dev/null
    "$C" dps enrollment-group create --id widgets --ca company-x --data-dir "$DATA" >/dev/null
    SCOPE=$("$C" dps id-scope --data-dir "$DATA")
    echo "run $run of $RUNS: $WIDGETS widgets, $PARALLEL in flight, hub pid $HUB_PID" >&2
    # shellcheck disable=SC2086 # EXTRA is a list of options
    "$C" bench provision --devices "$WORK/pki/devices" --host "$ADDR" --port "$MQTT_PORT" \
        --ca "$DATA/tls/server-ca.pem" --server-pid "$HUB_PID" --source-addrs "$SOURCES" \
        --id-scope "$SCOPE" --widgets "$WIDGETS" --parallel "$PARALLEL" $EXTRA \
        | tee "$WORK/run-$run.txt"
    kill "$HUB_PID"
    wait "$HUB_PID" 2>/dev/null || true
    HUB_PID=""
done
python3 - "$WORK" "$RUNS" <<'PY'
import pathlib, re, sys
work, runs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
pats = {
    "registered": r"^  registered +(\d+)",
    "connected": r"^  connected +(\d+)",
    "errors": r"^  errors +(\d+)",
    "per_cpu": r"([\d.]+) registrations per CPU-second",
    "cpu": r"server \(pid \d+\): ([\d.]+) s CPU",
    "rate": r"^  registrations_per_s +([\d.]+)",
    "all": r"^  until_all_connected +([\d.]+) s",
}
for run in range(1, runs + 1):
    text = (work / f"run-{run}.txt").read_text()
    f = {}
    for k, p in pats.items():
        m = re.search(p, text, re.M)
        f[k] = m.group(1) if m else "-"
    print(f"run {run}: registered {f['registered']}, connected {f['connected']}, "
          f"errors {f['errors']}; {f['per_cpu']} registrations per hub CPU-s ({f['cpu']} s CPU); "
          f"{f['rate']} registrations/s; all connected after {f['all']} s")
PY
