#!/usr/bin/env bash
# Each replica's peak memory and the honest client's latency while each faulty-client strategy
# runs, next to the quiet figures. One testnet (f = 1, no faulty replica, `--open-clients` so
# that the attackers' fresh identities get past the handshake); per phase, an attack process
# (`testnet attack STRATEGY`) and `pbft-client bench` run side by side for SECS seconds while
# the replicas' resident memory is sampled every 200 ms.
#
#   benches/scripts/attack_figures.sh [SECS]     (default 10)
#
# Prints one line per phase: the largest resident set of any replica during it, and the
# bench's throughput, p50 and p99. Needs `cargo build --release -p pbft-node -p pbft-client
# -p testnet` first.
set -euo pipefail

BIN=${BIN:-target/release}
SECS=${1:-10}
DIR=$(mktemp -d /tmp/pbft-attack.XXXXXX)
trap '"$BIN/testnet" down --dir "$DIR" >/dev/null 2>&1 || true' EXIT

"$BIN/testnet" up --f 1 --byzantine 0 --open-clients --detach --dir "$DIR" >/dev/null
"$BIN/pbft-client" --config "$DIR/client.toml" put warm up >/dev/null
PIDS=$(python3 -c 'import json,sys; print(" ".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"] if n.get("pid")))' "$DIR/testnet.json")

# The largest VmRSS (MiB) of the replicas, sampled until the file $1 exists.
sample_rss() {
    local peak=0 pid rss
    while [ ! -e "$1" ]; do
        for pid in $PIDS; do
            rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        done
        sleep 0.2
    done
    echo $((peak / 1024))
}

printf "%-20s %10s %12s %9s %9s %7s\n" phase "peak RSS" "requests/s" "p50 ms" "p99 ms" errors
for phase in quiet oversized-envelope reused-timestamps many-identities flood bad-signatures \
    connection-flood unfinished-frames; do
    done_file="$DIR/$phase.done"
    sample_rss "$done_file" >"$DIR/$phase.rss" &
    sampler=$!
    attacker=""
    if [ "$phase" != quiet ]; then
        "$BIN/testnet" attack "$phase" --dir "$DIR" --duration "$SECS" >"$DIR/$phase.attack" &
        attacker=$!
    fi
    "$BIN/pbft-client" --config "$DIR/client.toml" bench --clients 4 --window 4 \
        --duration "$SECS" --payload 512 --json >"$DIR/$phase.bench" || true
    [ -n "$attacker" ] && wait "$attacker"
    touch "$done_file"
    wait "$sampler"
    python3 - "$phase" "$(cat "$DIR/$phase.rss")" "$DIR/$phase.bench" <<'PY'
import json, sys
phase, rss, path = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    bench = json.load(open(path))
    row = (f"{bench.get('throughput', 0):12.0f} {bench.get('p50_ms', 0):9.2f} "
           f"{bench.get('p99_ms', 0):9.2f} {bench.get('errors', 0):7d}")
except Exception:
    row = f"{'failed':>12}"
print(f"{phase:<20} {rss + ' MiB':>10} {row}")
PY
    # Let bans and evictions of this phase end before the next.
    sleep 11
done
"$BIN/testnet" status --dir "$DIR" --json | python3 -c '
import json, sys
status = json.load(sys.stdin)
views = sorted({n["view"] for n in status["nodes"] if n.get("view") is not None})
agreement = status.get("agreement")
print(f"views after all phases: {views}; agreement: {agreement}")'
