//! How a replica's state travels. The state is cut into partitions: the application's (see
//! [`crate::app::StateMachine::partition_count`]) and, last, the client table. The state digest
//! that checkpoints sign covers the list of partition digests. A replica fetching state checks
//! the list against the 2f+1 signed digest once, fetches only the partitions whose digests
//! differ from its own, and checks each against its digest once it has all of it. A partition
//! moves in pieces of [`STATE_PIECE_BYTES`], all from one replica, so a state of any size moves
//! in messages of bounded size, and a faulty replica wastes one partition's fetch.

use std::ops::Range;

use pbft_crypto::{Digest, DigestBuilder, Domain};

/// The size of every piece of a partition but its last. Part of the protocol: every replica
/// must agree.
pub const STATE_PIECE_BYTES: usize = 1 << 20;

/// The largest encoding of one partition: a helper claiming more is refused at the boundary,
/// so a fetch never asks for more pieces of a partition than this allows.
pub const MAX_PARTITION_BYTES: u64 = 1 << 30;

/// The most partitions a state may have: bounds a layout's message and a fetch's tables.
pub const MAX_STATE_PARTITIONS: usize = 1 << 20;

/// The number of pieces of a partition of `len` bytes (an empty one has one, empty).
pub fn piece_count(len: u64) -> u64 {
    len.div_ceil(STATE_PIECE_BYTES as u64).max(1)
}

/// The bytes of piece `index` of a partition of `len` bytes; `None` past the end.
pub fn piece_range(len: u64, index: u64) -> Option<Range<usize>> {
    if index >= piece_count(len) {
        return None;
    }
    let start = index * STATE_PIECE_BYTES as u64;
    let end = (start + STATE_PIECE_BYTES as u64).min(len);
    Some(start as usize..end as usize)
}

/// The state digest checkpoints sign: the digest of each partition, in order.
pub fn state_digest<'a>(partitions: impl IntoIterator<Item = &'a Digest>) -> Digest {
    let (builder, count) = partitions.into_iter().fold(
        (DigestBuilder::new(Domain::Content).u8(b'S'), 0u64),
        |(builder, count), partition| (builder.digest(partition), count + 1),
    );
    builder.u64(count).finish()
}

/// The digest of the client table's partition, by its encoding (which is canonical).
pub fn clients_digest(encoded: &[u8]) -> Digest {
    DigestBuilder::new(Domain::Content)
        .u8(b'C')
        .bytes(encoded)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_a_partition_exactly() {
        for len in [
            0u64,
            1,
            STATE_PIECE_BYTES as u64,
            STATE_PIECE_BYTES as u64 + 1,
            3 << 20,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut rebuilt = Vec::new();
            for index in 0..piece_count(len) {
                let range = piece_range(len, index).unwrap();
                assert!(range.len() <= STATE_PIECE_BYTES);
                rebuilt.extend_from_slice(&bytes[range]);
            }
            assert_eq!(rebuilt, bytes);
            assert_eq!(piece_range(len, piece_count(len)), None);
        }
    }

    #[test]
    fn the_state_digest_covers_each_partition_and_their_order() {
        let a = Digest::of(Domain::Content, b"a");
        let b = Digest::of(Domain::Content, b"b");
        let digest = state_digest(&[a, b]);
        assert_ne!(state_digest(&[b, a]), digest);
        assert_ne!(state_digest(&[a]), digest);
        assert_ne!(state_digest(&[a, b, b]), digest);
        assert_eq!(state_digest(&[a, b]), digest);
    }
}
