#!/usr/bin/env bash
# Throughput and latency of real replica processes, measured with `pbft-client bench` against
# `testnet up --detach`, for each f and each client window; one JSON line per run on stdout.
#
#   benches/scripts/latency.sh [F...]            (default: 1 2 3)
#
# Environment: WINDOWS (default "128 32 8 2"), CLIENTS (4), PAYLOAD (512), DURATION (8 s),
# STORAGE (fsync, no-fsync or off: `testnet up --storage`; default fsync), KEYS (unset: every put
# writes a new key; N: `pbft-client bench --keys N`, so the state stays small), BIN (target/release),
# DIR (a temporary directory). Every run gets a fresh cluster, so the
# state the clients' distinct keys accumulate does not carry over from one run to the next.
# Needs `cargo build --release -p pbft-node -p pbft-client -p testnet` first.
set -euo pipefail

BIN=${BIN:-target/release}
WINDOWS=${WINDOWS:-"128 32 8 2"}
CLIENTS=${CLIENTS:-4}
PAYLOAD=${PAYLOAD:-512}
DURATION=${DURATION:-8}
STORAGE=${STORAGE:-fsync}
DIR=${DIR:-$(mktemp -d /tmp/pbft-latency.XXXXXX)}
KEYS_ARG=()
[ -n "${KEYS:-}" ] && KEYS_ARG=(--keys "$KEYS")
FS=("$@")
[ ${#FS[@]} -eq 0 ] && FS=(1 2 3)

# CPU seconds used so far by the replica processes of the testnet in $1.
node_cpu() {
    local total=0 pid
    for pid in $(jq -r '.. | .pid? // empty' "$1/testnet.json" 2>/dev/null); do
        if [ -r "/proc/$pid/stat" ]; then
            total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
        fi
    done
    echo "$total"
}

# "committed_requests batches envelopes" from the view-0 primary's metrics.
primary_counters() {
    local addr
    addr=$(sed -n 's/^metrics = "\(.*\)"/\1/p' "$1/node-0.toml")
    curl -s "http://$addr/metrics" | awk '
        /^pbft_committed_requests_total / {r=$2}
        /^pbft_committed_batches_total / {b=$2}
        /^pbft_request_latency_seconds_count / {e=$2}
        END {print r+0, b+0, e+0}'
}

for f in "${FS[@]}"; do
    for window in $WINDOWS; do
        tn="$DIR/f$f"
        "$BIN/testnet" up --f "$f" --byzantine 0 --storage "$STORAGE" --detach --force \
            --dir "$tn" >/dev/null
        # Connections and the first batches settle before the measurement.
        "$BIN/pbft-client" --config "$tn/client.toml" bench --clients "$CLIENTS" \
            --window "$window" --duration 1 --payload "$PAYLOAD" --json >/dev/null
        read -r r0 b0 e0 < <(primary_counters "$tn")
        cpu0=$(node_cpu "$tn")
        report=$("$BIN/pbft-client" --config "$tn/client.toml" bench --clients "$CLIENTS" \
            --window "$window" --duration "$DURATION" --payload "$PAYLOAD" "${KEYS_ARG[@]}" --json)
        cpu1=$(node_cpu "$tn")
        read -r r1 b1 e1 < <(primary_counters "$tn")
        "$BIN/testnet" down --dir "$tn" >/dev/null
        echo "$report" | jq -c --argjson f "$f" \
            --argjson requests "$((r1 - r0))" --argjson batches "$((b1 - b0))" \
            --argjson envelopes "$((e1 - e0))" --argjson cpu_ticks "$((cpu1 - cpu0))" \
            --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg storage "$STORAGE" '{
                f: $f, n: (3 * $f + 1), storage: $storage, clients, window, payload, keys,
                throughput: (.throughput | round), p50_ms, p99_ms, errors,
                requests_per_batch: (if $batches > 0 then (($requests / $batches * 10 | round) / 10) else null end),
                requests_per_envelope: (if $envelopes > 0 then (($requests / $envelopes * 10 | round) / 10) else null end),
                replica_cpu_cores: ((($cpu_ticks / 100 / .seconds) * 100 | round) / 100),
                loadavg: $load
            }'
    done
done
