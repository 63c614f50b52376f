//! The invariants of DESIGN.md, checked after every simulation step.

use std::collections::BTreeMap;

use pbft_core::messages::{Outcome, ReplicaId, Seq, SessionKey, Timestamp};
use pbft_core::protocol::Executed;
use pbft_crypto::Digest;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// Tracks what correct replicas executed and what clients accepted.
#[derive(Debug, Default)]
pub struct Checker {
    /// The batch digest each sequence number executed with, and the first replica seen.
    batches: BTreeMap<Seq, (Digest, ReplicaId)>,
    /// The state digest after each sequence number, and the first replica seen.
    states: BTreeMap<Seq, (Digest, ReplicaId)>,
    /// The digest each checkpoint certifies, from correct replicas' own CHECKPOINTs: those they
    /// sign after executing to it and those they sign after installing a transferred state.
    checkpoints: BTreeMap<Seq, (Digest, ReplicaId)>,
    /// The last sequence number each correct replica executed.
    last_executed: BTreeMap<ReplicaId, Seq>,
    /// Requests each correct replica executed, with the sequence number (a repeat is a
    /// violation).
    executions: BTreeMap<ReplicaId, BTreeMap<(SessionKey, Timestamp), Seq>>,
    /// The result correct replicas computed for each request.
    results: BTreeMap<(SessionKey, Timestamp), Outcome>,
    pub accepted_count: usize,
}

impl Checker {
    /// Agreement: no two correct replicas execute different batches at one sequence number;
    /// and no correct replica executes a request twice.
    pub fn on_executed(
        &mut self,
        replica: ReplicaId,
        executed: &Executed,
    ) -> Result<(), Violation> {
        let last = self.last_executed.entry(replica).or_default();
        if executed.seq <= *last {
            return Err(Violation(format!(
                "execution order: replica {replica} executed seq {} after seq {last}",
                executed.seq
            )));
        }
        *last = executed.seq;
        match self.batches.get(&executed.seq) {
            Some((digest, first)) if *digest != executed.digest => {
                return Err(Violation(format!(
                    "agreement: replica {replica} executed {:?} at seq {} but replica {first} executed {digest:?}",
                    executed.digest, executed.seq
                )));
            }
            Some(_) => {}
            None => {
                self.batches
                    .insert(executed.seq, (executed.digest, replica));
            }
        }
        let done = self.executions.entry(replica).or_default();
        for request in &executed.requests {
            if done.insert(*request, executed.seq).is_some() {
                return Err(Violation(format!(
                    "at-most-once: replica {replica} executed timestamp {} of client {:?} twice",
                    request.1, request.0
                )));
            }
        }
        Ok(())
    }

    /// A replica restarted from a snapshot at `seq`: what it executed above that it will execute
    /// again.
    pub fn forget_executions_after(&mut self, replica: ReplicaId, seq: Seq) {
        if let Some(done) = self.executions.get_mut(&replica) {
            done.retain(|_, executed_at| *executed_at <= seq);
        }
        self.last_executed.insert(replica, seq);
    }

    /// State agreement at checkpoints: a correct replica's own CHECKPOINT for `seq`, signed after
    /// executing to it or after installing a transferred state, names the same state as every
    /// other correct replica's.
    pub fn on_checkpoint(
        &mut self,
        replica: ReplicaId,
        seq: Seq,
        digest: Digest,
    ) -> Result<(), Violation> {
        match self.checkpoints.get(&seq) {
            Some((expected, first)) if *expected != digest => Err(Violation(format!(
                "checkpoint agreement: replica {replica} vouches for state {digest:?} at seq {seq} but replica {first} for {expected:?}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.checkpoints.insert(seq, (digest, replica));
                Ok(())
            }
        }
    }

    /// Accountability: a correct replica holds proof of equivocation only against faulty ones.
    pub fn on_evidence(
        &self,
        replica: ReplicaId,
        accused: impl IntoIterator<Item = ReplicaId>,
        is_correct: impl Fn(ReplicaId) -> bool,
    ) -> Result<(), Violation> {
        match accused.into_iter().find(|culprit| is_correct(*culprit)) {
            Some(culprit) => Err(Violation(format!(
                "accountability: replica {replica} holds evidence against correct replica {culprit}"
            ))),
            None => Ok(()),
        }
    }

    /// Equal state: correct replicas at the same sequence number have the same state digest.
    pub fn on_state(
        &mut self,
        replica: ReplicaId,
        seq: Seq,
        digest: Digest,
    ) -> Result<(), Violation> {
        match self.states.get(&seq) {
            Some((expected, first)) if *expected != digest => Err(Violation(format!(
                "equal state: replica {replica} has state {digest:?} after seq {seq} but replica {first} has {expected:?}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.states.insert(seq, (digest, replica));
                Ok(())
            }
        }
    }

    /// Records a result a correct replica computed (or answered from its cache).
    pub fn on_correct_result(
        &mut self,
        client: SessionKey,
        timestamp: Timestamp,
        result: &Outcome,
    ) -> Result<(), Violation> {
        match self.results.get(&(client, timestamp)) {
            Some(expected) if expected != result => Err(Violation(format!(
                "correct replicas disagree on the result of timestamp {timestamp} of client {client:?}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.results.insert((client, timestamp), result.clone());
                Ok(())
            }
        }
    }

    /// Client validity: an accepted result is what the correct replicas computed.
    pub fn on_accepted(
        &mut self,
        client: SessionKey,
        timestamp: Timestamp,
        result: &Outcome,
    ) -> Result<(), Violation> {
        self.accepted_count += 1;
        match self.results.get(&(client, timestamp)) {
            Some(expected) if expected == result => Ok(()),
            Some(_) => Err(Violation(format!(
                "client validity: client {client:?} accepted a result for timestamp {timestamp} that correct replicas did not compute"
            ))),
            None => Err(Violation(format!(
                "client validity: client {client:?} accepted timestamp {timestamp} that no correct replica answered"
            ))),
        }
    }

    /// The highest sequence number any correct replica executed.
    pub fn max_executed(&self) -> Seq {
        self.batches.keys().next_back().copied().unwrap_or(0)
    }
}
