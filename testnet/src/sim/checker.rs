//! The invariants of the README's Simulator section, checked after every simulation step.

use std::collections::{BTreeMap, BTreeSet};

use pbft_core::app::StateMachine;
use pbft_core::messages::{Outcome, ReplicaId, Seq, SessionKey, Timestamp};
use pbft_core::protocol::{Executed, Statement};
use pbft_crypto::Digest;

use super::app::AppModel;
use super::client::{Issued, SimClient};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// Tracks what correct replicas executed and what clients accepted.
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
    /// Requests correct replicas refused (session expired or table full), which may also
    /// have a result.
    refusals: BTreeSet<(SessionKey, Timestamp)>,
    /// What each correct replica signed and sent, by signer, kind, view and sequence number,
    /// kept across its crashes and lost disks.
    signed: BTreeMap<(ReplicaId, &'static str, u64, Seq), Digest>,
    pub accepted_count: usize,
    /// The committed history, replayed on the application's model.
    model: Model,
}

/// The correct clients' operations applied in the order correct replicas first executed them:
/// what each ordered request must return.
struct Model {
    /// The operations correct clients issued.
    issued: BTreeMap<(SessionKey, Timestamp), Issued>,
    app: Box<dyn AppModel>,
    /// The last sequence number applied.
    seq: Seq,
    /// Where each applied request executed, and its result.
    results: BTreeMap<(SessionKey, Timestamp), (Seq, Vec<u8>)>,
    /// The highest sequence number of an ordered request some client accepted.
    completed: Seq,
    /// For each read-only request, `completed` when it was issued: the oldest state it may see.
    read_floor: BTreeMap<(SessionKey, Timestamp), Seq>,
}

impl Model {
    fn apply(&mut self, executed: &Executed) -> Result<(), Violation> {
        if executed.seq != self.seq + 1 {
            return Err(Violation(format!(
                "history: seq {} executed first, before any correct replica executed seq {}",
                executed.seq,
                self.seq + 1
            )));
        }
        self.seq = executed.seq;
        for request in &executed.requests {
            let Some(issued) = self.issued.get(request) else {
                continue;
            };
            let result = self.app.apply(executed.seq, &issued.op);
            self.results.insert(*request, (executed.seq, result));
        }
        Ok(())
    }
}

impl Checker {
    /// A checker of a run of the application `app` models.
    pub fn new(app: Box<dyn AppModel>) -> Checker {
        Checker {
            batches: BTreeMap::new(),
            states: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            last_executed: BTreeMap::new(),
            executions: BTreeMap::new(),
            results: BTreeMap::new(),
            refusals: BTreeSet::new(),
            signed: BTreeMap::new(),
            accepted_count: 0,
            model: Model {
                issued: BTreeMap::new(),
                app,
                seq: 0,
                results: BTreeMap::new(),
                completed: 0,
                read_floor: BTreeMap::new(),
            },
        }
    }

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
                self.model.apply(executed)?;
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

    /// No equivocation by a correct replica, whatever it lost: every statement it signs and
    /// sends matches what it signed before under the same kind, view and sequence number, in
    /// this life or an earlier one.
    pub fn on_signed(&mut self, statement: Statement) -> Result<(), Violation> {
        let key = (
            statement.replica,
            statement.kind,
            statement.view,
            statement.seq,
        );
        match self.signed.get(&key) {
            Some(before) if *before != statement.digest => Err(Violation(format!(
                "self-contradiction: correct replica {} signed a {} for view {} seq {} with digest {:?}, and another with {:?} before",
                statement.replica, statement.kind, statement.view, statement.seq, statement.digest, before
            ))),
            Some(_) => Ok(()),
            None => {
                self.signed.insert(key, statement.digest);
                Ok(())
            }
        }
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
        // Refusals are no results: a session refused as full may execute later, and one that
        // expired after a request executed answers its retransmissions "expired".
        if matches!(result, Outcome::SessionsFull | Outcome::SessionExpired) {
            self.refusals.insert((client, timestamp));
            return Ok(());
        }
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

    /// A correct client issued `issued` under `timestamp`.
    pub fn on_issued(&mut self, client: SessionKey, timestamp: Timestamp, issued: Issued) {
        let model = &mut self.model;
        if issued.read_only {
            model
                .read_floor
                .insert((client, timestamp), model.completed);
        }
        model.issued.insert((client, timestamp), issued);
    }

    /// Client validity: an accepted result is what the correct replicas computed, and what the
    /// committed history gives; a read-only result is a value the key held since every ordered
    /// request accepted before the read was issued.
    pub fn on_accepted(
        &mut self,
        client: SessionKey,
        timestamp: Timestamp,
        result: &Outcome,
    ) -> Result<(), Violation> {
        self.accepted_count += 1;
        let request = (client, timestamp);
        if matches!(result, Outcome::SessionsFull | Outcome::SessionExpired) {
            return if self.refusals.contains(&request) {
                Ok(())
            } else {
                Err(Violation(format!(
                    "client validity: client {client:?} accepted a refusal of timestamp {timestamp} that no correct replica gave"
                )))
            };
        }
        let ordered = self.results.get(&request);
        if let Some(issued) = self.model.issued.get(&request).filter(|i| i.read_only) {
            if ordered != Some(result) {
                let floor = self.model.read_floor.get(&request).copied().unwrap_or(0);
                self.model
                    .app
                    .check_read(&issued.op, floor, result)
                    .map_err(|reason| {
                        Violation(format!("{reason}: read {timestamp} of client {client:?}"))
                    })?;
            }
            return Ok(());
        }
        match ordered {
            Some(expected) if expected == result => {}
            Some(_) => {
                return Err(Violation(format!(
                    "client validity: client {client:?} accepted a result for timestamp {timestamp} that correct replicas did not compute"
                )))
            }
            None => {
                return Err(Violation(format!(
                    "client validity: client {client:?} accepted timestamp {timestamp} that no correct replica answered"
                )))
            }
        }
        if !self.model.issued.contains_key(&request) {
            return Ok(());
        }
        let Some((seq, expected)) = self.model.results.get(&request) else {
            return Err(Violation(format!(
                "history: client {client:?} accepted timestamp {timestamp}, which no correct replica executed"
            )));
        };
        if let Outcome::Done(bytes) = result {
            if bytes != expected {
                return Err(Violation(format!(
                    "history: client {client:?} accepted {bytes:?} for timestamp {timestamp}, but the committed history gives {expected:?}"
                )));
            }
        }
        self.model.completed = self.model.completed.max(*seq);
        Ok(())
    }

    /// Judges a correct replica's final state against the committed history, which it executed
    /// all of if `caught_up`, and what `clients` accepted.
    pub fn check_final(
        &self,
        state: &dyn StateMachine,
        caught_up: bool,
        clients: &[SimClient],
    ) -> Result<(), String> {
        self.model.app.check_final(state, caught_up, clients)
    }

    /// The highest sequence number any correct replica executed.
    pub fn max_executed(&self) -> Seq {
        self.batches.keys().next_back().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use pbft_core::app::{KvOp, KvResult};
    use pbft_crypto::KeyPair;

    use super::super::app::SimApp;
    use super::super::kv::KvApp;
    use super::*;

    fn kv_checker() -> Checker {
        Checker::new(KvApp::default().model())
    }

    fn session() -> SessionKey {
        let key = KeyPair::from_seed(&[7; 32]).expect("valid seed");
        SessionKey {
            client: key.public(),
            session: 1,
        }
    }

    fn executed(seq: Seq, timestamps: &[Timestamp]) -> Executed {
        Executed {
            seq,
            view: 0,
            digest: Digest::default(),
            requests: timestamps.iter().map(|t| (session(), *t)).collect(),
        }
    }

    fn put(key: &str, value: &str) -> Issued {
        Issued {
            op: KvOp::Put {
                key: key.into(),
                value: value.into(),
            }
            .encode(),
            read_only: false,
        }
    }

    fn done(result: KvResult) -> Outcome {
        Outcome::Done(result.encode())
    }

    /// Writes x=1 (seq 1), reads, then writes x=2 (seq 2), both accepted before the second read.
    fn history() -> Checker {
        let mut checker = kv_checker();
        checker.on_issued(session(), 1, put("x", "1"));
        checker.on_executed(0, &executed(1, &[1])).unwrap();
        checker
            .on_correct_result(session(), 1, &done(KvResult::Done))
            .unwrap();
        checker
            .on_accepted(session(), 1, &done(KvResult::Done))
            .unwrap();
        let get = Issued {
            op: KvOp::Get { key: "x".into() }.encode(),
            read_only: true,
        };
        checker.on_issued(session(), 2, get.clone());
        checker.on_issued(session(), 3, put("x", "2"));
        checker.on_executed(0, &executed(2, &[3])).unwrap();
        checker
            .on_correct_result(session(), 3, &done(KvResult::Done))
            .unwrap();
        checker
            .on_accepted(session(), 3, &done(KvResult::Done))
            .unwrap();
        checker.on_issued(session(), 4, get);
        checker
    }

    #[test]
    fn a_read_may_return_any_value_since_it_was_issued_but_nothing_older() {
        let mut checker = history();
        let value = |v: &str| done(KvResult::Value(Some(v.into())));
        // Issued between the writes: either value is linearizable.
        checker.on_accepted(session(), 2, &value("1")).unwrap();
        checker.on_accepted(session(), 2, &value("2")).unwrap();
        // Issued after x=2 was accepted: x=1 is stale, and a value never written is invented.
        checker.on_accepted(session(), 4, &value("2")).unwrap();
        assert!(checker.on_accepted(session(), 4, &value("1")).is_err());
        assert!(checker.on_accepted(session(), 4, &value("3")).is_err());
        assert!(checker
            .on_accepted(session(), 4, &done(KvResult::Value(None)))
            .is_err());
    }

    #[test]
    fn an_ordered_result_must_be_what_the_history_gives() {
        let mut checker = kv_checker();
        let cas = Issued {
            op: KvOp::Cas {
                key: "x".into(),
                expected: None,
                new: "1".into(),
            }
            .encode(),
            read_only: false,
        };
        checker.on_issued(session(), 1, cas);
        checker.on_executed(0, &executed(1, &[1])).unwrap();
        // Correct replicas agreeing on a result the history does not give is still caught.
        let wrong = done(KvResult::CasFailed(None));
        checker.on_correct_result(session(), 1, &wrong).unwrap();
        assert!(checker.on_accepted(session(), 1, &wrong).is_err());
    }

    #[test]
    fn a_sequence_number_first_executed_out_of_order_is_a_violation() {
        let mut checker = kv_checker();
        checker.on_executed(0, &executed(1, &[])).unwrap();
        assert!(checker.on_executed(0, &executed(3, &[])).is_err());
    }
}
