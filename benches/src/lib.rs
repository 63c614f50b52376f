//! Harnesses behind the criterion benchmarks in `benches/benches/`.
//!
//! - [`cluster`]: 3f+1 real replicas talking QUIC on 127.0.0.1 in this process, under closed-loop
//!   load from several clients, for the `throughput_vs_f` and `faults` groups.
//! - [`pure_core`]: the protocol core of 4 replicas driven in one thread, messages handed over
//!   directly, for the cost of the core per committed batch.
//! - [`bound`]: the signatures the protocol needs per batch and the throughput they allow.
//!
//! `benches/README.md` has the figures and the commands that produced them.

pub mod bound;
pub mod cluster;
pub mod pure_core;

/// CPU time the calling thread has run (`CLOCK_THREAD_CPUTIME_ID`; zero where unavailable).
/// Unlike wall time it does not grow while other processes hold the CPU, so costs measured with
/// it hold on a busy machine.
pub fn thread_cpu_time() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(std::time::Duration::ZERO, std::time::Duration::from)
}
