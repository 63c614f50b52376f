#!/usr/bin/env bash
# Throughput and latency of an f = 1 cluster of containers (`testnet compose`) with 0, 10 and 50 ms
# of one-way latency added on every link between replicas (`testnet relay`; the kernel has no
# netem), beside the same load on `testnet up` processes on loopback, minutes apart.
#
#   benches/scripts/containers.sh
#
# Environment: CLIENTS (4), WINDOW (16), PAYLOAD (512), DURATION (seconds per run, 20),
# BIN (target/release), SUBNET (172.30.210.0/24). Needs a Docker engine with Compose, jq, and
# `cargo build --release -p pbft-node -p pbft-client -p testnet`.
# Prints one line per setup: requests/s, p50 and p99 in ms.
set -euo pipefail

BIN=$(cd "${BIN:-target/release}" && pwd)
CLIENTS=${CLIENTS:-4}
WINDOW=${WINDOW:-16}
PAYLOAD=${PAYLOAD:-512}
DURATION=${DURATION:-20}
SUBNET=${SUBNET:-172.30.210.0/24}
WORK=$(mktemp -d /tmp/pbft-containers.XXXXXX)
PROJECT=pbft-bench

if [ -x "$(command -v docker-compose)" ] && ! docker compose version >/dev/null 2>&1; then
    compose() { docker-compose -p "$PROJECT" -f "$1/docker-compose.yml" "${@:2}"; }
else
    compose() { docker compose -p "$PROJECT" -f "$1/docker-compose.yml" "${@:2}"; }
fi

bench() { # CONFIG LABEL
    "$BIN/pbft-client" --config "$1" bench --clients "$CLIENTS" --window "$WINDOW" \
        --payload "$PAYLOAD" --duration "$DURATION" --json \
        | jq -r --arg name "$2" '"\($name): \(.throughput | floor) requests/s, p50 \(.p50_ms * 10 | round / 10) ms, p99 \(.p99_ms * 10 | round / 10) ms, \(.errors) errors"'
}

wait_healthy() { # DIR
    for _ in $(seq 180); do
        if [ "$(compose "$1" ps | grep -c '(healthy)')" = 4 ]; then return 0; fi
        sleep 1
    done
    echo "the containers did not all become healthy" >&2
    compose "$1" ps >&2
    return 1
}

relay=""
cleanup() {
    [ -n "$relay" ] && kill "$relay" 2>/dev/null || true
    for dir in "$WORK/direct" "$WORK/relayed"; do
        [ -f "$dir/docker-compose.yml" ] && compose "$dir" down >/dev/null 2>&1 || true
    done
    [ -f "$WORK/processes/testnet.json" ] && "$BIN/testnet" down --dir "$WORK/processes" >/dev/null || true
}
trap cleanup EXIT

echo "f = 1, $CLIENTS clients x $WINDOW outstanding, $PAYLOAD B puts to new keys, $DURATION s each; $(date -u +%FT%TZ)"

"$BIN/testnet" up --f 1 --detach --dir "$WORK/processes" >/dev/null
bench "$WORK/processes/client.toml" "processes on loopback"
"$BIN/testnet" down --dir "$WORK/processes" >/dev/null

"$BIN/testnet" compose --f 1 --out "$WORK/direct" --subnet "$SUBNET" --project "$PROJECT" \
    --node-bin "$BIN/pbft-node" >/dev/null
compose "$WORK/direct" up -d --build >/dev/null 2>&1
wait_healthy "$WORK/direct"
bench "$WORK/direct/client/client.toml" "containers"
compose "$WORK/direct" down >/dev/null 2>&1

"$BIN/testnet" compose --f 1 --out "$WORK/relayed" --subnet "$SUBNET" --project "$PROJECT" \
    --node-bin "$BIN/pbft-node" --relay >/dev/null
compose "$WORK/relayed" up -d --build >/dev/null 2>&1
for delay in 0 10 50; do
    "$BIN/testnet" relay --config "$WORK/relayed/relay.toml" --delay-ms "$delay" >/dev/null &
    relay=$!
    wait_healthy "$WORK/relayed"
    bench "$WORK/relayed/client/client.toml" "containers, relay +$delay ms one way"
    kill "$relay"; wait "$relay" 2>/dev/null || true
    relay=""
done
