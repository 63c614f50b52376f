#!/usr/bin/env bash
# One `pbft-client bench` run against a fresh `testnet up --f 1` (no Byzantine replica), printed
# as one line: the time, a label and the bench's JSON. Run it for several builds or settings in
# turn, minutes apart, to compare them on this machine's moving figures.
#
#   benches/scripts/compare.sh BIN LABEL CLIENTS WINDOW [testnet up arguments...]
#
# BIN holds testnet, pbft-node and pbft-client (e.g. target/release). Puts of 512 B to new keys
# for 20 s, durability on.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n 2,9p "$0" >&2
    exit 2
fi
BIN=$1 LABEL=$2 CLIENTS=$3 WINDOW=$4
shift 4
DIR=$(mktemp -d /tmp/pbft-compare.XXXXXX)
trap '"$BIN/testnet" down --dir "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
"$BIN/testnet" up --f 1 --byzantine 0 --detach --force --dir "$DIR" "$@" >/dev/null
out=$("$BIN/pbft-client" --config "$DIR/client.toml" bench --clients "$CLIENTS" \
    --window "$WINDOW" --payload 512 --duration 20 --json)
echo "$(date -u +%H:%M:%S) $LABEL clients=$CLIENTS window=$WINDOW $out"
