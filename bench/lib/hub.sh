# Shared by the bench scripts (sourced, not run): the certhub binary to measure, and a fresh
# hub on one loopback address with every listener on a free port.
#
#   certhub_bin                    # sets C: $CERTHUB_BIN, or this checkout's release build
#   start_hub ADDR DATA LOG [ARGS...]  # sets HUB_PID, MQTT_PORT, AMQP_PORT, HTTPS_PORT; ARGS go
#                                      # to `certhub serve` (e.g. --store URL --nats URLS)
#   fresh_database NAME            # drops and makes database NAME on $POSTGRES (psql must reach
#                                  # it) and exports its URL as CERTHUB_DATABASE_URL
#   company_x_devices BIN          # Company-X's 19 000 device chains of `pki demo supply-chain`
#                                  # in $WORK/pki (made by BIN once), and $WORK/devices.jsonl to
#                                  # import them

certhub_bin() {
    C="${CERTHUB_BIN:-}"
    if [ -z "$C" ]; then
        echo "building certhub (release)" >&2
        cargo build --release --locked -p certhub >&2
        C="$CARGO_TARGET_DIR/release/certhub"
    fi
}

start_hub() {
    local addr=$1 data=$2 log=$3
    shift 3
    CERTHUB_LOG=warn "$C" serve --data-dir "$data" --hostname "$addr" --https-addr "$addr:0" \
        --mqtt-addr "$addr:0" --amqp-addr "$addr:0" "$@" >"$log" 2>&1 &
    HUB_PID=$!
    # The banner may be seen half written: wait for the MQTT line's port, which comes last.
    MQTT_PORT=""
    for _ in $(seq 300); do
        MQTT_PORT=$(sed -n 's/.*devices (MQTT) *[^ ]*:\([0-9]*\) .*/\1/p' "$log" 2>/dev/null)
        [ -n "$MQTT_PORT" ] && break
        sleep 0.1
    done
    [ -n "$MQTT_PORT" ] || { echo "the hub did not start:" >&2; cat "$log" >&2; exit 1; }
    AMQP_PORT=$(sed -n 's/.*devices (AMQP) *[^ ]*:\([0-9]*\) .*/\1/p' "$log")
    HTTPS_PORT=$(sed 's/.*HostName=[^;:]*:\([0-9]*\);.*/\1/' <<<"$("$C" hub connection-string --data-dir "$data")")
}

fresh_database() {
    psql "$POSTGRES/postgres" -q -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" \
        >/dev/null 2>"$WORK/psql.err" || { cat "$WORK/psql.err" >&2; exit 1; }
    export CERTHUB_DATABASE_URL="$POSTGRES/$1"
}

company_x_devices() {
    if [ ! -d "$WORK/pki/devices" ]; then
        echo "making 19 000 device chains in $WORK/pki" >&2
        "$1" pki demo supply-chain --out "$WORK/pki" --devices 19000 >/dev/null
    fi
    ls "$WORK/pki/devices" | sed 's/.*/{"deviceId":"&","authentication":{"type":"certificateAuthority"}}/' \
        >"$WORK/devices.jsonl"
}
