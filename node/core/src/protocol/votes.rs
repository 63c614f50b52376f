//! Collecting signed votes into certificates: PREPAREs into a prepared certificate, COMMITs into a
//! commit certificate, CHECKPOINTs into a stable-checkpoint proof. One rule for all three: one
//! vote per signer counts, a signer's second vote for another choice is proof of equivocation
//! and does not count, and a certificate is yielded once.

use pbft_crypto::Digest;

use super::Conflict;
use crate::messages::{Checkpoint, ReplicaId, Vote};
use crate::tally::Tally;

/// A signed vote: who signed it and what it chose.
pub trait Ballot: Clone {
    fn signer(&self) -> ReplicaId;
    /// The digest voted for (a batch, or a state).
    fn choice(&self) -> Digest;
    /// The proof that the signer of both voted twice on one question.
    fn conflict(earlier: Self, later: Self) -> Conflict;
}

impl Ballot for Vote {
    fn signer(&self) -> ReplicaId {
        self.replica
    }

    fn choice(&self) -> Digest {
        self.digest
    }

    fn conflict(earlier: Vote, later: Vote) -> Conflict {
        Conflict::Votes(earlier, later)
    }
}

impl Ballot for Checkpoint {
    fn signer(&self) -> ReplicaId {
        self.replica
    }

    fn choice(&self) -> Digest {
        self.state_digest
    }

    fn conflict(earlier: Checkpoint, later: Checkpoint) -> Conflict {
        Conflict::Checkpoints(earlier, later)
    }
}

/// The votes on one question (the PREPAREs of one slot in one view, its COMMITs, the CHECKPOINTs
/// of one sequence number), at most one per signer. The caller checks signatures and that each
/// vote is about this question.
#[derive(Clone, Debug)]
pub struct VoteSet<B> {
    votes: Tally<B>,
    certified: bool,
}

impl<B> Default for VoteSet<B> {
    fn default() -> Self {
        VoteSet {
            votes: Tally::new(),
            certified: false,
        }
    }
}

/// What [`VoteSet::add`] did with a vote.
#[allow(clippy::large_enum_variant)] // returned and consumed at once, never stored
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Added {
    /// The signer's first vote: it counts.
    New,
    /// The same vote again: nothing changes.
    Repeat,
    /// The signer already voted for another choice: proof of equivocation; the first vote
    /// stays and this one does not count.
    Conflict(Conflict),
}

impl<B: Ballot> VoteSet<B> {
    pub fn new() -> VoteSet<B> {
        VoteSet::default()
    }

    /// Adds one vote.
    pub fn add(&mut self, vote: B) -> Added {
        match self.votes.get(vote.signer()) {
            Some(earlier) if earlier.choice() != vote.choice() => {
                Added::Conflict(B::conflict(earlier.clone(), vote))
            }
            Some(_) => Added::Repeat,
            None => {
                self.votes.insert(vote.signer(), vote);
                Added::New
            }
        }
    }

    /// The vote `signer` cast, if any.
    pub fn get(&self, signer: ReplicaId) -> Option<&B> {
        self.votes.get(signer)
    }

    /// Forgets the vote of `signer` (to bound what one signer holds across questions).
    pub fn remove(&mut self, signer: ReplicaId) {
        self.votes.remove(signer);
    }

    /// How many signers voted.
    pub fn len(&self) -> usize {
        self.votes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.votes.is_empty()
    }

    /// Whether a certificate was yielded.
    pub fn is_certified(&self) -> bool {
        self.certified
    }

    /// Once `threshold` distinct signers voted for `choice` (or, with `None`, for any one
    /// choice), their votes, in signer order; `None` before, and after a certificate was yielded.
    pub fn certificate(&mut self, threshold: usize, choice: Option<Digest>) -> Option<Vec<B>> {
        if self.certified {
            return None;
        }
        let votes: Vec<B> = match choice {
            Some(choice) => self
                .votes
                .pick(threshold, None, |v| v.choice() == choice)?
                .into_iter()
                .cloned()
                .collect(),
            None => {
                let (_, votes) = self.votes.agreed(threshold, B::choice)?;
                votes.into_iter().cloned().collect()
            }
        };
        self.certified = true;
        Some(votes)
    }
}

#[cfg(test)]
mod tests {
    use pbft_crypto::{ClusterId, Digest, Domain, KeyPair, Signer};

    use super::*;
    use crate::messages::Phase;

    fn key() -> Signer {
        KeyPair::from_seed(&[5; 32])
            .unwrap()
            .for_cluster(ClusterId::default())
    }

    fn digest(tag: u8) -> Digest {
        Digest::of(Domain::Content, &[tag])
    }

    fn commit(replica: ReplicaId, tag: u8) -> Vote {
        Vote::new(&key(), Phase::Commit, 0, 1, digest(tag), replica)
    }

    #[test]
    fn counts_distinct_signers_only() {
        let mut set = VoteSet::new();
        assert_eq!(set.add(commit(0, 1)), Added::New);
        assert_eq!(set.add(commit(0, 1)), Added::Repeat);
        assert_eq!(set.add(commit(1, 1)), Added::New);
        assert_eq!(set.len(), 2);
        assert_eq!(set.certificate(3, None), None, "a repeat counted twice");
        assert_eq!(set.add(commit(2, 1)), Added::New);
        let cert = set.certificate(3, None).unwrap();
        let signers: Vec<ReplicaId> = cert.iter().map(|v| v.replica).collect();
        assert_eq!(signers, vec![0, 1, 2]);
    }

    #[test]
    fn yields_a_certificate_once() {
        let mut set = VoteSet::new();
        for replica in 0..4 {
            set.add(commit(replica, 1));
        }
        assert!(set.certificate(3, Some(digest(1))).is_some());
        assert!(set.is_certified());
        assert_eq!(set.certificate(3, Some(digest(1))), None);
        assert_eq!(set.certificate(3, None), None);
    }

    #[test]
    fn a_second_choice_is_evidence_and_does_not_count() {
        let mut set = VoteSet::new();
        set.add(commit(0, 1));
        set.add(commit(1, 1));
        match set.add(commit(1, 2)) {
            Added::Conflict(Conflict::Votes(earlier, later)) => {
                assert_eq!((earlier.replica, later.replica), (1, 1));
                assert_eq!((earlier.digest, later.digest), (digest(1), digest(2)));
            }
            other => panic!("no evidence: {other:?}"),
        }
        assert_eq!(
            set.get(1).unwrap().digest,
            digest(1),
            "the first vote stays"
        );
        set.add(commit(2, 2));
        set.add(commit(3, 2));
        // Choice 2 has two signers (2 and 3), not three: replica 1's second vote is not counted.
        assert_eq!(set.certificate(3, Some(digest(2))), None);
        assert_eq!(set.certificate(3, None), None);
    }

    #[test]
    fn a_certificate_holds_only_votes_for_its_choice() {
        let mut set = VoteSet::new();
        set.add(commit(0, 2));
        set.add(commit(1, 1));
        set.add(commit(2, 1));
        set.add(commit(3, 1));
        let cert = set.certificate(3, None).unwrap();
        assert!(cert.iter().all(|v| v.digest == digest(1)));
        assert_eq!(cert.len(), 3);
    }

    #[test]
    fn checkpoints_conflict_as_checkpoints() {
        let mut set = VoteSet::new();
        set.add(Checkpoint::new(&key(), 8, digest(1), 2));
        let added = set.add(Checkpoint::new(&key(), 8, digest(2), 2));
        assert!(matches!(added, Added::Conflict(Conflict::Checkpoints(..))));
    }
}
