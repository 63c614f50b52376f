#!/usr/bin/env bash
# Per-request CPU budget of `pbft-client bench` against `testnet up` processes: samples every
# CPU with call chains while the load runs, then splits the replicas' and the client's CPU time
# by component (benches/scripts/cpu_budget.py) per committed request.
#
#   benches/scripts/cpu_budget.sh [F]            (default 1)
#
# Environment: CLIENTS (16), WINDOW (64), PAYLOAD (512), KEYS (unset: every put writes a new key;
# N: `pbft-client bench --keys N`), SAMPLE (seconds sampled, 6), HZ (perf's sampling rate, 199),
# BIN (target/release), DIR (a temporary directory). Needs perf, python3, jq, curl
# and `cargo build --release -p pbft-node -p pbft-client -p testnet`.
set -euo pipefail

F=${1:-1}
BIN=${BIN:-target/release}
CLIENTS=${CLIENTS:-16}
WINDOW=${WINDOW:-64}
PAYLOAD=${PAYLOAD:-512}
SECONDS_SAMPLED=${SAMPLE:-6}
HZ=${HZ:-199}
DIR=${DIR:-$(mktemp -d /tmp/pbft-budget.XXXXXX)}
HERE=$(cd "$(dirname "$0")" && pwd)
KEYS_ARG=()
[ -n "${KEYS:-}" ] && KEYS_ARG=(--keys "$KEYS")

committed() {
    local addr
    addr=$(sed -n 's/^metrics = "\(.*\)"/\1/p' "$DIR/node-0.toml")
    curl -s "http://$addr/metrics" | awk '/^pbft_committed_requests_total / {print $2}'
}

"$BIN/testnet" up --f "$F" --byzantine 0 --detach --force --dir "$DIR" >/dev/null
"$BIN/pbft-client" --config "$DIR/client.toml" bench --clients "$CLIENTS" --window "$WINDOW" \
    --duration $((SECONDS_SAMPLED + 6)) --payload "$PAYLOAD" "${KEYS_ARG[@]}" --json \
    >"$DIR/bench.json" &
client=$!
sleep 3
replicas=$(jq -r '[.. | .pid? // empty] | map(tostring) | join(",")' "$DIR/testnet.json")
before=$(committed)
perf record -a -F "$HZ" --call-graph dwarf,16384 -o "$DIR/perf.data" -- sleep "$SECONDS_SAMPLED" \
    2>/dev/null
after=$(committed)
wait "$client"
"$BIN/testnet" down --dir "$DIR" >/dev/null
perf script -i "$DIR/perf.data" -F comm,pid,ip,sym 2>/dev/null |
    python3 "$HERE/cpu_budget.py" "$client" "$replicas" $((after - before)) "$SECONDS_SAMPLED" "$HZ"
echo "bench: $(cat "$DIR/bench.json")"
