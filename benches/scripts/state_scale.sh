#!/usr/bin/env bash
# Throughput and latency against the size of the replicated state, on one `testnet up --f 1`
# cluster (durability on). At each size it first grows the state with 32 KiB puts to new keys,
# flushes the disk, then measures 512 B overwrites of 4 keys per outstanding request for 20 s,
# printing one line:
# the time, the state size asked for, the replicas' `pbft_state_bytes`, and the bench's JSON.
#
#   benches/scripts/state_scale.sh BIN [SIZE_MB...]      (default sizes: 0 10 100 1000)
#
# BIN holds testnet, pbft-node and pbft-client (e.g. target/release).
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n 2,9p "$0" >&2
    exit 2
fi
BIN=$1
shift
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(0 10 100 1000)
DIR=$(mktemp -d /tmp/pbft-state-scale.XXXXXX)
trap '"$BIN/testnet" down --dir "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
BASE_PORT=17300
"$BIN/testnet" up --f 1 --byzantine 0 --detach --force --dir "$DIR" --base-port "$BASE_PORT" >/dev/null
CLIENT=("$BIN/pbft-client" --config "$DIR/client.toml")
CLIENTS=16 WINDOW=16
VALUE=32768

# The state size replica 0 reports (its metrics listen on the base port + 100).
state_bytes() {
    curl -s "http://127.0.0.1:$((BASE_PORT + 100))/metrics" | awk '/^pbft_state_bytes/ {print $2}'
}

for size in "${SIZES[@]}"; do
    # Each run's keys start again from the same names, so a larger run covers the smaller ones
    # and the state is about the largest run's size.
    requests=$(( size * 1000 * 1000 / VALUE ))
    if [ "$requests" -gt 0 ]; then
        "${CLIENT[@]}" bench --clients "$CLIENTS" --window "$WINDOW" --payload "$VALUE" \
            --requests "$requests" --json >/dev/null
        # The replicas' logs of the fill are flushed first: the measurement is of the state,
        # not of the disk catching up with gigabytes written just before.
        sync
    fi
    out=$("${CLIENT[@]}" bench --clients "$CLIENTS" --window 64 --payload 512 --keys 4 \
        --duration 20 --json)
    echo "$(date -u +%H:%M:%S) state_mb=$size state_bytes=$(state_bytes) $out"
done
