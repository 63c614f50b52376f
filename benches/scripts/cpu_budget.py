#!/usr/bin/env python3
"""Turns `perf script` output (samples with call chains) into a CPU budget per request.

    perf script -F comm,pid,ip,sym | cpu_budget.py CLIENT_PID REPLICA_PIDS REQUESTS SECONDS HZ

REPLICA_PIDS is comma-separated. Each sample goes to the component of the innermost frame that
names one (so SHA-512 inside a signature check counts as the check, and a copy inside encoding
counts as encoding), and to the replicas or the client by its process; samples of other
processes (kernel writeback threads among them) are counted apart. Prints a Markdown table of
microseconds of CPU per committed request: all replicas together, their average, and the client.
"""
import re
import sys

# (component, pattern), innermost match wins; order only breaks ties within one frame.
COMPONENTS = [
    ("signature checks", r"verify_strict|PublicKey::verify|vartime_double_base"),
    ("signing", r"KeyPair::sign|SigningKey|EdwardsBasepointTable|ExpandedSecretKey"),
    ("hashing (SHA-256)", r"sha2::|DigestBuilder|Digest::of|signing_digest"),
    ("checkpoint snapshots", r"take_snapshot|StateMachine>::snapshot|ReplicatedState"),
    ("log write and fsync", r"ReplicaStore::persist|storage::wal|fdatasync|ext4_|vfs_write"),
    ("execution", r"KvStore|execute_batch|execute_committed"),
    ("encoding and decoding", r"bincode|codec::|serde"),
    ("QUIC, UDP and copies", r"quinn|udp|sendmsg|recvmsg|ring_core|aes_gcm|__sys_send|__sys_recv|ip_|net_rx|skb|tcp_|__dev_queue"),
    ("allocation", r"malloc|_int_free|cfree|realloc|exc_page_fault|do_anonymous_page|clear_page|munmap|mmap|__rust_alloc|__rust_dealloc"),
    ("scheduling and waking", r"schedule|futex|epoll|tokio::runtime::park|finish_task_switch|try_to_wake_up|pv_native_safe_halt"),
    ("protocol core (the rest)", r"pbft_core::"),
    ("client library (the rest)", r"pbft_client::"),
]
COMPILED = [(name, re.compile(p)) for name, p in COMPONENTS]
OTHER = "other (runtime, kernel, libc)"


def component(frames):
    for sym in frames:  # innermost first
        for name, pattern in COMPILED:
            if pattern.search(sym):
                return name
    return OTHER


def main():
    client_pid = sys.argv[1]
    replica_pids = set(sys.argv[2].split(","))
    requests, seconds, hz = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    elsewhere = 0
    counts = {}
    header = None
    frames = []

    def flush():
        nonlocal elsewhere
        if header is None:
            return
        if header == client_pid:
            side = "client"
        elif header in replica_pids:
            side = "replicas"
        else:
            elsewhere += 1
            return
        key = (component(frames), side)
        counts[key] = counts.get(key, 0) + 1

    for line in sys.stdin:
        if not line.strip():
            flush()
            header, frames = None, []
        elif not line.startswith((" ", "\t")):
            flush()
            m = re.match(r"\s*\S.*?\s+(\d+)", line)
            header = m.group(1) if m else None
            frames = []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "")
    flush()
    # One sample stands for 1/hz seconds of one CPU.
    per_request = lambda n: n / hz / requests * 1e6
    names = [n for n, _ in COMPONENTS] + [OTHER]
    n = len(replica_pids)
    print(f"| component | all {n} replicas | per replica | client | total |")
    print("|---|---|---|---|---|")
    totals = {"replicas": 0, "client": 0}
    for name in names:
        r, c = counts.get((name, "replicas"), 0), counts.get((name, "client"), 0)
        totals["replicas"] += r
        totals["client"] += c
        if r + c:
            print(
                f"| {name} | {per_request(r):.1f} | {per_request(r) / n:.1f} | "
                f"{per_request(c):.1f} | {per_request(r + c):.1f} |"
            )
    r, c = totals["replicas"], totals["client"]
    print(
        f"| **all** | **{per_request(r):.1f}** | **{per_request(r) / n:.1f}** | "
        f"**{per_request(c):.1f}** | **{per_request(r + c):.1f}** |"
    )
    busy = (r + c) / hz / seconds
    print(
        f"\n{requests:.0f} requests committed in the {seconds:.1f} s sampled; the replicas and the "
        f"client kept {busy:.2f} cores busy, other processes {elsewhere / hz / seconds:.2f}"
    )


main()
