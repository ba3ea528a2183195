#!/usr/bin/env bash
# File upload through certhub's blob endpoint: throughput to the local store and the hub's
# memory while it streams. One SAS device uploads a file of SIZE_MIB MiB (default 1024) with
# curl, as the storage SDKs do: once in a single Put Blob (Python's azure-storage-blob below
# 64 MiB, any size here), once as 4 MiB Put Block requests and a Put Block List (what Node's
# uploadToBlob always sends, and Python above 64 MiB). The hub's resident memory is sampled
# every 20 ms; CPU time comes from /proc.
#
#   bench/upload.sh                          # 1 GiB, this checkout's release build
#   SIZE_MIB=256 CERTHUB_BIN=/path/to/certhub bench/upload.sh
#
# Throughput counts from the first byte sent to the 201 (the block path: every Put Block and
# the Put Block List, which copies the blocks into the published file). The file comes from
# the page cache; the hub writes to $WORK on this machine's disk and syncs before it answers.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certhub-target}"
SIZE_MIB="${SIZE_MIB:-1024}"
WORK="${WORK:-/tmp/certhub-upload}"
ADDR=127.0.0.8
# Extra curl options for the uploads (e.g. --http1.1; curl picks HTTP/2 by default).
read -r -a CURL_OPTS <<<"${CURL_OPTS:-}"
C="${CERTHUB_BIN:-}"
if [ -z "$C" ]; then
    echo "building certhub (release)" >&2
    cargo build --release --locked -p certhub >&2
    C="$CARGO_TARGET_DIR/release/certhub"
fi

HUB_PID=""
SAMPLER=""
cleanup() {
    [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
    [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
DATA="$WORK/data"

# The AMQP listener by variable, which builds from before it ignore.
CERTHUB_AMQP_ADDR="$ADDR:0" CERTHUB_LOG=warn "$C" serve --data-dir "$DATA" --hostname "$ADDR" \
    --https-addr "$ADDR:0" --mqtt-addr "$ADDR:0" >"$WORK/hub.log" 2>&1 &
HUB_PID=$!
# Ready once it printed its device listener (the last line of its start-up).
for _ in $(seq 300); do
    grep -q "devices (MQTT)" "$WORK/hub.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "devices (MQTT)" "$WORK/hub.log" || { echo "the hub did not start:" >&2; cat "$WORK/hub.log" >&2; exit 1; }
cs=$("$C" hub connection-string --data-dir "$DATA")
HOSTPORT=$(sed 's/.*HostName=\([^;]*\);.*/\1/' <<<"$cs")
for _ in $(seq 100); do
    curl -s -o /dev/null --cacert "$DATA/tls/server-ca.pem" "https://$HOSTPORT/openapi.json" && break
    sleep 0.1
done
CA="$DATA/tls/server-ca.pem"
"$C" device create --id uploader --data-dir "$DATA" >/dev/null
TOKEN=$("$C" device token --id uploader --data-dir "$DATA" --duration 3600 | tail -1)
"$C" hub set --file-upload-max-concurrent 1000 --file-upload-max-bytes $((SIZE_MIB * 2 * 1048576)) \
    --data-dir "$DATA" >/dev/null

echo "writing a $SIZE_MIB MiB test file" >&2
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >"$WORK/file.bin"
BLOCKS="$WORK/blocks"
mkdir -p "$BLOCKS"
split -b 4M -d -a 5 "$WORK/file.bin" "$BLOCKS/b"
# Block ids as the SDKs make them (base64 of equal-length names), made before the clock runs.
BLOCK_IDS=()
for i in $(seq 0 $(($(ls "$BLOCKS" | wc -l) - 1))); do
    BLOCK_IDS+=("$(printf 'block-%08d' "$i" | base64)")
done
cat "$WORK/file.bin" >/dev/null

rss() { awk '/VmRSS/ {print $2}' "/proc/$HUB_PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$HUB_PID/stat"; }
now() { date +%s.%N; }

# One upload grant: prints "url correlationId".
grant() {
    curl -s --cacert "$CA" -H "Authorization: $TOKEN" -H "Content-Type: application/json" \
        --data-binary "{\"blobName\":\"$1\"}" "https://$HOSTPORT/devices/uploader/files" \
        | python3 -c 'import json,sys; i=json.load(sys.stdin); print("https://%s/%s/%s%s %s" % (i["hostName"], i["containerName"], i["blobName"], i["sasToken"], i["correlationId"]))'
}
notify() {
    curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" -H "Authorization: $TOKEN" \
        -H "Content-Type: application/json" \
        --data-binary "{\"correlationId\":\"$1\",\"isSuccess\":true,\"statusCode\":201}" \
        "https://$HOSTPORT/devices/uploader/files/notifications"
}

# Warm-up: one small upload, so that idle memory includes what any upload first allocates.
read -r url cid < <(grant warmup.bin)
curl -s -o /dev/null --cacert "$CA" -X PUT -H "x-ms-blob-type: BlockBlob" --data-binary "warm" "$url"
notify "$cid" >/dev/null
sleep 1

measure() { # name, then the command that uploads
    local name=$1
    shift
    local idle before_cpu start end after_cpu peak
    idle=$(rss)
    : >"$WORK/rss-$name"
    (while true; do rss >>"$WORK/rss-$name"; sleep 0.02; done) &
    SAMPLER=$!
    before_cpu=$(cpu_ticks)
    start=$(now)
    "$@"
    end=$(now)
    after_cpu=$(cpu_ticks)
    kill "$SAMPLER"
    SAMPLER=""
    peak=$(sort -n "$WORK/rss-$name" | tail -1)
    python3 - "$name" "$SIZE_MIB" "$start" "$end" "$before_cpu" "$after_cpu" "$idle" "$peak" \
        "$(getconf CLK_TCK)" <<'PY'
import sys
name, size, start, end, c0, c1, idle, peak, tck = sys.argv[1:]
seconds = float(end) - float(start)
cpu = (int(c1) - int(c0)) / int(tck)
print(f"{name:<10} {size} MiB in {seconds:.2f} s = {int(size) / seconds:.0f} MiB/s; "
      f"hub CPU {cpu:.2f} s; hub RSS idle {int(idle) / 1024:.1f} MiB, peak {int(peak) / 1024:.1f} MiB "
      f"(+{(int(peak) - int(idle)) / 1024:.1f} MiB)")
PY
}

put_blob() {
    read -r url cid < <(grant put-blob.bin)
    code=$(curl "${CURL_OPTS[@]}" -s -o "$WORK/put.out" -w '%{http_code}' --cacert "$CA" -X PUT \
        -H "x-ms-blob-type: BlockBlob" -T "$WORK/file.bin" "$url")
    [ "$code" = 201 ] || { echo "Put Blob answered $code: $(cat "$WORK/put.out")" >&2; exit 1; }
    [ "$(notify "$cid")" = 204 ] || { echo "notification refused" >&2; exit 1; }
}

put_blocks() {
    read -r url cid < <(grant blocks.bin)
    local list="" n=0 id
    # One connection for every block, as a storage client keeps its connection alive.
    local args=()
    for f in "$BLOCKS"/b*; do
        id=${BLOCK_IDS[$n]}
        args+=(--next -s -o /dev/null -w '%{http_code}\n' --cacert "$CA" -X PUT
            -T "$f" "$url&comp=block&blockid=${id//=/%3D}")
        list="$list<Latest>$id</Latest>"
        n=$((n + 1))
    done
    local t0 c0
    t0=$(now)
    c0=$(cpu_ticks)
    curl "${CURL_OPTS[@]}" "${args[@]:1}" >"$WORK/blocks.codes"
    echo "  the Put Blocks: $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f} s')" "$t0" "$(now)"), hub CPU $(( ($(cpu_ticks) - c0) * 100 / $(getconf CLK_TCK) ))/100 s" >&2
    if grep -v '^201$' "$WORK/blocks.codes" >/dev/null; then
        echo "a Put Block failed: $(sort | uniq -c <"$WORK/blocks.codes")" >&2
        exit 1
    fi
    code=$(curl -s -o "$WORK/list.out" -w '%{http_code}' --cacert "$CA" -X PUT \
        -H "Content-Type: application/xml" \
        --data-binary "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>$list</BlockList>" \
        "$url&comp=blocklist")
    [ "$code" = 201 ] || { echo "Put Block List answered $code: $(cat "$WORK/list.out")" >&2; exit 1; }
    [ "$(notify "$cid")" = 204 ] || { echo "notification refused" >&2; exit 1; }
}

echo "certhub $("$C" --version 2>/dev/null | head -1), $(nproc) cores, $(uname -sr)"
# The disk the hub writes to, as fast as it is right now (1 GiB, synced): uploads cannot beat it.
echo "disk: $(dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=1024 conv=fsync 2>&1 | tail -1 | sed 's/.*copied, //')"
rm -f "$WORK/dd.bin"
measure put-blob put_blob
measure blocks put_blocks
for f in put-blob.bin blocks.bin; do
    cmp "$WORK/file.bin" "$DATA/files/blobs/uploader/$f" || { echo "$f differs" >&2; exit 1; }
done
echo "both files read back identical from $DATA/files"
