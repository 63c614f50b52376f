//! How a replica's state travels: cut into chunks of [`STATE_CHUNK_BYTES`], each with its own
//! digest, and the state digest that checkpoints sign covers the length and the list of chunk
//! digests. A replica fetching state checks the list against the 2f+1 signed digest once, and
//! then each chunk as it arrives, from whichever replica sent it; so a state of any size moves
//! in messages of bounded size, from several replicas, and a faulty one wastes one chunk.

use std::ops::Range;

use pbft_crypto::{Digest, DigestBuilder, Domain};

/// The size of every chunk but the last. Part of the protocol: every replica must agree.
pub const STATE_CHUNK_BYTES: usize = 1 << 20;

/// The number of chunks of a state of `len` bytes.
pub fn chunk_count(len: u64) -> u64 {
    len.div_ceil(STATE_CHUNK_BYTES as u64)
}

/// The bytes of chunk `index` of a state of `len` bytes; `None` past the end.
pub fn chunk_range(len: u64, index: u64) -> Option<Range<usize>> {
    if index >= chunk_count(len) {
        return None;
    }
    let start = index * STATE_CHUNK_BYTES as u64;
    let end = (start + STATE_CHUNK_BYTES as u64).min(len);
    Some(start as usize..end as usize)
}

/// The digest of one chunk.
pub fn chunk_digest(chunk: &[u8]) -> Digest {
    Digest::of(Domain::Content, chunk)
}

/// The digest of each chunk of `state`.
pub fn chunk_digests(state: &[u8]) -> Vec<Digest> {
    state.chunks(STATE_CHUNK_BYTES).map(chunk_digest).collect()
}

/// The state digest checkpoints sign: the length and the chunk digests.
pub fn state_digest(len: u64, chunks: &[Digest]) -> Digest {
    chunks
        .iter()
        .fold(
            DigestBuilder::new(Domain::Content).u64(len),
            |builder, chunk| builder.digest(chunk),
        )
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_state_exactly_and_the_digest_covers_them() {
        for len in [
            0u64,
            1,
            STATE_CHUNK_BYTES as u64,
            STATE_CHUNK_BYTES as u64 + 1,
            3 << 20,
        ] {
            let state: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let chunks = chunk_digests(&state);
            assert_eq!(chunks.len() as u64, chunk_count(len));
            let mut rebuilt = Vec::new();
            for index in 0..chunk_count(len) {
                let range = chunk_range(len, index).unwrap();
                assert_eq!(chunk_digest(&state[range.clone()]), chunks[index as usize]);
                rebuilt.extend_from_slice(&state[range]);
            }
            assert_eq!(rebuilt, state);
            assert_eq!(chunk_range(len, chunk_count(len)), None);
        }
        let state = vec![7u8; 3 << 20];
        let chunks = chunk_digests(&state);
        let digest = state_digest(state.len() as u64, &chunks);
        let mut other = chunks.clone();
        other.swap(0, 1);
        other[0] = chunk_digest(b"x");
        assert_ne!(state_digest(state.len() as u64, &other), digest);
        assert_ne!(state_digest(state.len() as u64 - 1, &chunks), digest);
    }
}
