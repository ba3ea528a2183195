#!/usr/bin/env bash
# usage: bench/million.sh BIN
#
# Held connections as their number grows, for projecting one node to a million (issue 18).
# A process here may open 20 000 files, so the node is simulated: HUBS hub processes of BIN
# (default 5), each on its own address (127.0.0.21, .22, ...) and data directory (SQLite) with
# the same PER devices registered (default 19 000, Company-X's chains of
# `certhub pki demo supply-chain`), and one probe process per hub
# (`certhub bench hold --connections PER --keep-alive 60`, sources 127.(3+i).0.1-40) that opens
# its connections and keeps them, each sending an MQTT PINGREQ every 30 s as an idle device
# does. After each probe has all its connections up and 5 s have passed, one line:
#   connections held in all;
#   the hubs' RSS (all hubs, less their RSS before any connection) per connection;
#   the kernel's memory for the sockets of both ends on this machine (Slab and the TCP buffer
#     pages of /proc/net/sockstat, less before) per connection;
#   the probes' RSS per connection (the load generator's, for the record);
#   the hubs' CPU over the next 30 s of idling, per connection per second (µs).
# Results: $WORK/million.tsv. Each hub's listeners take free ports (bench/lib/hub.sh): a hub
# of your own on the defaults is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -eq 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
BIN=$1
C=$BIN
WORK="${WORK:-/tmp/certhub-million}"
HUBS="${HUBS:-5}"
PER="${PER:-19000}"
IDLE="${IDLE:-30}"
ulimit -n "$(ulimit -Hn)"
mkdir -p "$WORK"
if [ ! -d "$WORK/pki/devices" ]; then
    "$BIN" pki demo supply-chain --out "$WORK/pki" --devices "$PER" >/dev/null
fi
ls "$WORK/pki/devices" | head -n "$PER" |
    sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' >"$WORK/devices.jsonl"

PIDS=()
PROBES=()
MQTT=()
HTTPS=()
cleanup() {
    for p in "${PROBES[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

addr() { echo "127.0.0.$((20 + $1))"; }
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
kernel_kib() { # Slab + TCP buffer pages
    local slab tcp
    slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
    tcp=$(awk '/^TCP:/ {for (i = 1; i <= NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
    echo $((slab + tcp * 4))
}
sessions() { # HUB-INDEX
    local d="$WORK/hub-$1"
    curl -sf --max-time 2 --cacert "$d/tls/server-ca.pem" "https://$(addr "$1"):${HTTPS[$1]}/metrics" |
        awk '$1 == "certhub_device_sessions" {print $2}' | head -1
}

for i in $(seq "$HUBS"); do
    d="$WORK/hub-$i"
    rm -rf "$d" "$d.log"
    start_hub "$(addr "$i")" "$d" "$d.log" --max-device-sessions 100000
    PIDS+=("$HUB_PID")
    MQTT[$i]=$MQTT_PORT
    HTTPS[$i]=$HTTPS_PORT
    "$BIN" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$d" >/dev/null
    "$BIN" device import "$WORK/devices.jsonl" --data-dir "$d" >/dev/null 2>&1
done
sleep 5
HUB_RSS0=$(rss_kib "${PIDS[@]}")
KERNEL0=$(kernel_kib)
CLK=$(getconf CLK_TCK)
printf "held\thub_rss_mib\thub_kib_per_conn\tkernel_kib_per_conn\tprobe_kib_per_conn\thub_cpu_us_per_conn_s\n" |
    tee "$WORK/million.tsv"
for i in $(seq "$HUBS"); do
    d="$WORK/hub-$i"
    "$BIN" bench hold --devices "$WORK/pki/devices" --host "$(addr "$i")" --port "${MQTT[$i]}" \
        --ca "$d/tls/server-ca.pem" --source-addrs "127.$((3 + i)).0.1-127.$((3 + i)).0.40" \
        --connections "$PER" --hold 100000 --keep-alive 60 --parallel 256 --json \
        >"$WORK/probe-$i.json" 2>"$WORK/probe-$i.err" &
    PROBES+=($!)
    for _ in $(seq 300); do
        [ "$(sessions "$i")" = "$PER" ] && break
        sleep 1
    done
    [ "$(sessions "$i")" = "$PER" ] || {
        echo "million.sh: hub $i holds $(sessions "$i") of $PER" >&2
        cat "$WORK/probe-$i.err" >&2
        exit 1
    }
    sleep 5
    held=$((i * PER))
    hub=$(rss_kib "${PIDS[@]}")
    kernel=$(kernel_kib)
    probes=$(rss_kib "${PROBES[@]}")
    c0=$(cpu_ticks "${PIDS[@]}")
    sleep "$IDLE"
    c1=$(cpu_ticks "${PIDS[@]}")
    python3 -c "
held, hub, hub0, k, k0, probes = $held, $hub, $HUB_RSS0, $kernel, $KERNEL0, $probes
cpu_us = ($c1 - $c0) / $CLK * 1e6
print(f'{held}\t{hub / 1024:.0f}\t{(hub - hub0) / held:.2f}\t{(k - k0) / held:.2f}\t{probes / held:.2f}\t{cpu_us / held / $IDLE:.2f}')
" | tee -a "$WORK/million.tsv"
done
