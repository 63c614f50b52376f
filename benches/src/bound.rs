//! The crypto-bound limit: the most requests per second a machine could commit if it did nothing
//! but the signing and verifying the protocol requires.
//!
//! Counted per batch over the whole cluster and its clients (all on one machine), with n = 3f+1,
//! each signature verified once per replica that receives it (the runtime caches answers):
//!
//! | what | signs | verifications |
//! |---|---|---|
//! | PRE-PREPARE | 1 (primary) | n-1 (backups) + 1 (primary, its own header inside the first PREPARE) |
//! | PREPARE | n-1 (backups) | (n-1)(n-1): every other replica |
//! | COMMIT | n | n(n-1) |
//! | client envelope of k requests | 1 per envelope (client) | n per envelope |
//! | CHECKPOINT every K batches | n / K | n(n-1) / K |
//!
//! Replies are not signed.

/// Signatures and verifications per committed batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CryptoWork {
    pub signs: f64,
    pub verifies: f64,
}

/// What a configuration and an observed batching look like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Batching {
    pub f: usize,
    /// Requests per batch.
    pub requests_per_batch: f64,
    /// Requests per client envelope (one client signature each).
    pub requests_per_envelope: f64,
    /// Batches between checkpoints (K).
    pub checkpoint_interval: f64,
}

impl Batching {
    /// The cryptographic operations one committed batch costs.
    pub fn work_per_batch(&self) -> CryptoWork {
        let n = (3 * self.f + 1) as f64;
        let envelopes = self.requests_per_batch / self.requests_per_envelope;
        let k = self.checkpoint_interval;
        CryptoWork {
            signs: 1.0 + (n - 1.0) + n + envelopes + n / k,
            verifies: n + (n - 1.0) * (n - 1.0) + n * (n - 1.0) + n * envelopes + n * (n - 1.0) / k,
        }
    }

    /// Requests per second `cores` could commit doing only this work, given the cost of one
    /// signature and one strict verification in seconds.
    pub fn limit(&self, cores: f64, sign_s: f64, verify_s: f64) -> f64 {
        let work = self.work_per_batch();
        let per_batch = work.signs * sign_s + work.verifies * verify_s;
        cores * self.requests_per_batch / per_batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_for_four_replicas() {
        let b = Batching {
            f: 1,
            requests_per_batch: 64.0,
            requests_per_envelope: 16.0,
            checkpoint_interval: 1e18,
        };
        let work = b.work_per_batch();
        // 1 pre-prepare + 3 prepares + 4 commits + 4 envelopes.
        assert!((work.signs - 12.0).abs() < 1e-9);
        // 4 for the pre-prepare, 9 prepares, 12 commits, 4 envelopes at 4 replicas each.
        assert!((work.verifies - 41.0).abs() < 1e-9);
        // 12 signs of 1 s and 41 verifications of 1 s per 64 requests, on 2 cores.
        assert!((b.limit(2.0, 1.0, 1.0) - 128.0 / 53.0).abs() < 1e-9);
    }
}
