//! The numbers the protocol names things by. A leaf: the committee and the messages both use
//! these, and neither needs the other for them.

/// A replica's place in the committee.
pub type ReplicaId = u32;
/// A view: replica `view mod n` is its primary.
pub type View = u64;
/// A sequence number a batch is ordered at.
pub type Seq = u64;
/// A client's request number within its session.
pub type Timestamp = u64;
