#!/usr/bin/env bash
# usage: bench/reconnects-ab.sh N BIN_A BIN_B
#
# Two release binaries side by side on reconnections, for changes smaller than what one run of
# bench/connects.sh varies: a hub of each (A on 127.0.0.6, B on 127.0.0.7, every port free),
# both with the 19 000 Company-X device chains of `certhub pki demo supply-chain` registered
# (made once, in $WORK/pki) and restarted; every device connected once on each; then N rounds
# of `certhub bench connect-rate --duration 8 --workers 16 --tls 1.3 --kx x25519`, A then B.
# Each run prints its connects, connects per hub CPU-second and the hub's thread switches per
# connection (voluntary and not, summed over its threads from /proc); the end gives each
# binary's median and mean, and the mean of the N ratios B/A of the rounds.
#
# With STRACE=1, one more 5 s run per hub (4 workers) under `strace -ff` prints the hub's
# system calls per connection, thread by thread (strace slows the hub: read the counts, not
# the rate).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/hub.sh
[ $# -eq 3 ] || { sed -n 2p "$0" >&2; exit 2; }
WORK="${WORK:-/tmp/certhub-connects}"
N=$1
BINS=("$2" "$3")
ADDRS=(127.0.0.6 127.0.0.7)
ulimit -n "$(ulimit -Hn)"
mkdir -p "$WORK"
company_x_devices "$2"

PIDS=()
PORTS=()
DIRS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
for i in 0 1; do
    C=${BINS[$i]}
    D="$WORK/ab-$i"
    rm -rf "$D" "$D.log"
    start_hub "${ADDRS[$i]}" "$D" "$D.log" --max-device-sessions 100000
    "$C" ca upload --name company-x --file "$WORK/pki/company-x/cert.pem" --verified \
        --data-dir "$D" >/dev/null
    "$C" device import "$WORK/devices.jsonl" --data-dir "$D" >/dev/null 2>&1
    kill "$HUB_PID"
    wait "$HUB_PID" 2>/dev/null || true
    start_hub "${ADDRS[$i]}" "$D" "$D.log" --max-device-sessions 100000
    PIDS[i]=$HUB_PID
    PORTS[i]=$MQTT_PORT
    DIRS[i]=$D
done
sleep 6

switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
run() { # HUB_INDEX SECONDS WORKERS
    "${BINS[$1]}" bench connect-rate --devices "$WORK/pki/devices" --host "${ADDRS[$1]}" \
        --port "${PORTS[$1]}" --ca "${DIRS[$1]}/tls/server-ca.pem" \
        --source-addrs 127.0.1.1-127.0.1.40 --json --server-pid "${PIDS[$1]}" \
        --duration "$2" --workers "$3" --tls 1.3 --kx x25519
}
# Every device once, untimed: what follows are reconnections only.
for i in 0 1; do run "$i" 10 16 >/dev/null; done

for _ in $(seq "$N"); do
    for i in 0 1; do
        before=$(switches "${PIDS[$i]}")
        run "$i" 8 16 >"$WORK/ab-run.json"
        after=$(switches "${PIDS[$i]}")
        python3 - "$WORK/ab-run.json" "$i" "$before" "$after" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["counts"]["connects"]
switched = int(sys.argv[4]) - int(sys.argv[3])
print("AB"[int(sys.argv[2])], n, round(r["server"]["ops_per_cpu_s"]), f"{switched / max(n, 1):.2f}",
      r["counts"]["errors"])
PY
    done
done | tee "$WORK/ab-results.txt"
python3 - "$WORK/ab-results.txt" "${BINS[@]}" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
for side, name in zip("AB", sys.argv[2:]):
    rate = [float(r[2]) for r in rows if r[0] == side]
    sw = [float(r[3]) for r in rows if r[0] == side]
    print(f"{side} {name}: per hub CPU-s median {st.median(rate):.0f}, mean {st.mean(rate):.0f} "
          f"({min(rate):.0f} to {max(rate):.0f}); thread switches per connection median {st.median(sw):.2f}")
a = [float(r[2]) for r in rows if r[0] == "A"]
b = [float(r[2]) for r in rows if r[0] == "B"]
ratios = [y / x for x, y in zip(a, b)]
print(f"B/A per round: mean {st.mean(ratios):.3f}, " + " ".join(f"{x:.3f}" for x in ratios))
PY

if [ "${STRACE:-0}" = 1 ]; then
    for i in 0 1; do
        rm -rf "$WORK/strace-$i"
        mkdir -p "$WORK/strace-$i"
        for t in /proc/"${PIDS[$i]}"/task/*; do echo "$(basename "$t") $(cat "$t/comm")"; done \
            >"$WORK/strace-$i/names"
        strace -ff -o "$WORK/strace-$i/t" -p "${PIDS[$i]}" 2>/dev/null &
        tracer=$!
        sleep 1
        run "$i" 5 4 >"$WORK/strace-$i/run.json"
        kill -INT "$tracer"
        wait "$tracer" 2>/dev/null || true
        echo "${BINS[$i]}, system calls per connection:"
        python3 - "$WORK/strace-$i" <<'PY'
import collections, json, os, re, sys
d = sys.argv[1]
names = dict(l.split(None, 1) for l in open(f"{d}/names").read().splitlines())
n = json.load(open(f"{d}/run.json"))["counts"]["connects"]
total = collections.Counter()
for f in sorted(os.listdir(d)):
    if not f.startswith("t."):
        continue
    calls = collections.Counter(m.group(1) for line in open(f"{d}/{f}")
                                if (m := re.match(r"(\w+)\(", line)))
    if sum(calls.values()) < n / 100:
        continue
    total.update(calls)
    print(f"  {names.get(f[2:], '?'):>16}: " + ", ".join(f"{k} {v / n:.2f}" for k, v in calls.most_common(8)))
print(f"  {'all':>16}: " + ", ".join(f"{k} {v / n:.2f}" for k, v in total.most_common(12)) + f" ({n} connects)")
PY
    done
fi
