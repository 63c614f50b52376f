#!/usr/bin/env bash
# Recovery time of a replica that restarts REQUESTS requests behind the others: a fresh f = 1
# testnet, replica 3 killed (SIGKILL), REQUESTS puts of PAYLOAD bytes committed without it, then
# replica 3 restarted; the time is from `testnet restart` until its last executed sequence
# number reaches what the others had executed when it restarted. One JSON line on stdout.
#
#   benches/scripts/recovery.sh
#
# Environment: REQUESTS (default 100000), PAYLOAD (512), STORAGE (fsync), BIN (target/release),
# DIR (a temporary directory). Needs `cargo build --release -p pbft-node -p pbft-client -p testnet`
# first, and jq.
set -euo pipefail

BIN=${BIN:-target/release}
REQUESTS=${REQUESTS:-100000}
PAYLOAD=${PAYLOAD:-512}
STORAGE=${STORAGE:-fsync}
DIR=${DIR:-$(mktemp -d /tmp/pbft-recovery.XXXXXX)}
tn="$DIR/f1"

"$BIN/testnet" up --f 1 --byzantine 0 --storage "$STORAGE" --detach --force --dir "$tn" >/dev/null
"$BIN/pbft-client" --config "$tn/client.toml" bench --clients 4 --window 64 --requests 2000 \
    --payload "$PAYLOAD" --json >/dev/null
"$BIN/testnet" kill 3 --dir "$tn" >/dev/null
load=$("$BIN/pbft-client" --config "$tn/client.toml" bench --clients 4 --window 128 \
    --requests "$REQUESTS" --payload "$PAYLOAD" --json)

status=$("$BIN/testnet" status --json --dir "$tn" || true)
target=$(echo "$status" | jq '[.nodes[] | select(.alive) | .last_executed] | max')
behind=$(echo "$status" | jq '.nodes[3].last_executed // 0')
start=$(date +%s.%N)
"$BIN/testnet" restart 3 --dir "$tn" >/dev/null
while :; do
    now=$("$BIN/testnet" status --json --dir "$tn" | jq '.nodes[3].last_executed // 0' || echo 0)
    [ "$now" -ge "$target" ] && break
    sleep 0.1
done
end=$(date +%s.%N)
log="$tn/logs/node-3.log"
"$BIN/testnet" down --dir "$tn" >/dev/null
jq -n -c --argjson load "$load" --argjson target "$target" --argjson behind "$behind" \
    --arg seconds "$(echo "$end - $start" | bc)" --arg storage "$STORAGE" \
    --argjson transfers "$(grep -c 'installed state from a peer' "$log" || true)" \
    --arg recovered "$(grep 'recovered from durable state' "$log" | tail -1 | sed 's/.*INFO //')" '{
        storage: $storage, requests_behind: $load.requests, payload: $load.payload,
        batches_behind: ($target - $behind), catch_up_seconds: ($seconds | tonumber),
        state_transfers: $transfers, local_recovery: $recovered,
        load_throughput: ($load.throughput | round)
    }'
