#!/usr/bin/env bash
# How long a one-off `pbft-client put` takes (the whole process: start, connect, first request)
# against a testnet whose view-0 primary is silent, after the cluster moved to view 1, compared
# with a healthy testnet. One line per testnet on stdout: median and max of the runs.
#
#   benches/scripts/first_request.sh [RUNS]     (default 20)
#
# Needs `cargo build --release -p pbft-node -p pbft-client -p testnet` first.
set -euo pipefail

BIN=${BIN:-target/release}
RUNS=${1:-20}
DIR=$(mktemp -d /tmp/pbft-first.XXXXXX)
trap '"$BIN/testnet" down --dir "$DIR/silent" >/dev/null 2>&1 || true;
      "$BIN/testnet" down --dir "$DIR/healthy" >/dev/null 2>&1 || true' EXIT

# Milliseconds of each of $RUNS one-off puts against the testnet in $1, median and max.
one_offs() {
    local times=() i start end
    for i in $(seq 1 "$RUNS"); do
        start=$(date +%s%N)
        "$BIN/pbft-client" --config "$1/client.toml" put "one-off-$i" value >/dev/null
        end=$(date +%s%N)
        times+=($(((end - start) / 1000000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms", a[int((NR+1)/2)], a[NR]}'
}

"$BIN/testnet" up --f 1 --byzantine 0 --detach --dir "$DIR/healthy" >/dev/null
"$BIN/pbft-client" --config "$DIR/healthy/client.toml" put warm up >/dev/null
echo "healthy testnet:               $(one_offs "$DIR/healthy")"
"$BIN/testnet" down --dir "$DIR/healthy" >/dev/null

"$BIN/testnet" up --f 1 --byzantine 1 --behavior silent --detach --dir "$DIR/silent" >/dev/null
# The first request makes the backups suspect the silent primary and move to view 1.
"$BIN/pbft-client" --config "$DIR/silent/client.toml" put warm up >/dev/null
echo "view-0 primary silent, view 1: $(one_offs "$DIR/silent")"
