//! Prints the crypto-bound limit (see `pbft_benches::bound`) for given costs and batching.
//!
//! `cargo run --release -p pbft-benches --example crypto_bound -- SIGN_US VERIFY_US CORES
//!  F:REQUESTS_PER_BATCH:REQUESTS_PER_ENVELOPE...`

use pbft_benches::bound::Batching;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> f64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .expect("usage: SIGN_US VERIFY_US CORES F:BATCH:ENVELOPE...")
    };
    let (sign_us, verify_us, cores) = (number(0), number(1), number(2));
    println!("| f | n | requests/batch | requests/envelope | signs/batch | verifications/batch | crypto µs/request | limit (requests/s) |");
    println!("|---|---|---|---|---|---|---|---|");
    for config in &args[3..] {
        let parts: Vec<f64> = config
            .split(':')
            .map(|p| p.parse().expect("F:BATCH:ENVELOPE"))
            .collect();
        let batching = Batching {
            f: parts[0] as usize,
            requests_per_batch: parts[1],
            requests_per_envelope: parts[2],
            checkpoint_interval: 128.0,
        };
        let work = batching.work_per_batch();
        let per_request =
            (work.signs * sign_us + work.verifies * verify_us) / batching.requests_per_batch;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            batching.f,
            3 * batching.f + 1,
            batching.requests_per_batch,
            batching.requests_per_envelope,
            work.signs,
            work.verifies,
            per_request,
            batching.limit(cores, sign_us * 1e-6, verify_us * 1e-6)
        );
    }
}
