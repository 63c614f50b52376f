//! Rejoining after a lost disk (after TOCS 2002, section 4.3, recovery).
//!
//! A replica whose durable state is gone does not know what it signed. Were it to vote as a
//! fresh replica, it could sign a PREPARE, COMMIT, CHECKPOINT, VIEW-CHANGE or NEW-VIEW that
//! contradicts one it sent before: equivocation, with no attacker involved. So it comes back
//! silent: it follows the cluster (takes others' certificates, fetches state and batches,
//! executes, replies, reports its unsigned status) but casts no vote and signs nothing, and its
//! own votes never count toward its own certificates, which thus hold 2f+1 real signatures.
//!
//! # The rejoin point
//! Its peers report their view and last executed sequence number in `Status` messages. From
//! 2f+1 of them, all sent after the loss, it takes H = the highest last executed plus the log
//! window L, and V = the highest view plus one, and writes them down ([`Durable::Rejoin`]).
//!
//! *Sequence numbers.* Before the loss it signed nothing above h + L, h its stable checkpoint
//! then. 2f+1 replicas signed that checkpoint, so at least f correct replicas other than itself
//! executed to h, and any 2f+1 of its 3f peers include one of them: the highest report is at
//! least h, and H bounds every PRE-PREPARE, PREPARE, COMMIT and CHECKPOINT it signed. It stays
//! silent until a checkpoint above H is stable, and signs only above that checkpoint afterwards.
//!
//! *Views.* The sequence rule does not cover them: a VIEW-CHANGE it sent for v+1 may have gone
//! unanswered while the cluster stayed in v and moved far past H; back in v, it could time out
//! and sign another VIEW-CHANGE for v+1. A correct replica signs a VIEW-CHANGE for w only once
//! 2f+1 replicas entered or asked for w-1 (a NEW-VIEW for w-1, the quorum that arms the timer,
//! or by induction the f+1 it joins), so at least f correct peers are in view w-1 or later, and
//! one of them is among the 2f+1 that report: w <= V. A NEW-VIEW for w needs 2f+1 VIEW-CHANGEs
//! for w, so the same holds. Hence it never signs a VIEW-CHANGE or NEW-VIEW for a view at or
//! below V; it moves through such views without a word, as it does while silent.
//!
//! The argument assumes the peers that report still hold their data: a second replica that
//! lost its disk counts among the f faulty. A faulty peer can report a position far ahead and
//! keep this replica silent: that costs liveness as one more fault would, never safety.

use pbft_crypto::{Digest, KeyPair};

use super::Replica;
use crate::app::StateMachine;
use crate::committee::Committee;
use crate::messages::{Message, ReplicaId, Seq, View, Vote};
use crate::protocol::{Durable, ProtocolConfig, Rejoin, RejoinPoint, ReplicaError};

/// What one signed statement in a message binds its signer to: no correct replica signs two
/// different digests under the same signer, kind, view and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Statement {
    pub replica: ReplicaId,
    pub kind: &'static str,
    pub view: View,
    pub seq: Seq,
    pub digest: Digest,
}

/// The statements `message` carries that its sender signed itself (certificates of others that
/// it passes on are not its own).
pub fn signed_statements(message: &Message) -> Vec<Statement> {
    let vote = |kind, vote: &Vote| Statement {
        replica: vote.replica,
        kind,
        view: vote.view,
        seq: vote.seq,
        digest: vote.digest,
    };
    match message {
        Message::PrePrepare { header, .. } => vec![vote("pre-prepare", header)],
        Message::Prepare { vote: own, .. } => vec![vote("prepare", own)],
        Message::Commit(own) => vec![vote("commit", own)],
        Message::Checkpoint(checkpoint) => vec![Statement {
            replica: checkpoint.replica,
            kind: "checkpoint",
            view: 0,
            seq: checkpoint.seq,
            digest: checkpoint.state_digest,
        }],
        Message::ViewChange(view_change) => vec![Statement {
            replica: view_change.replica,
            kind: "view-change",
            view: view_change.new_view,
            seq: 0,
            digest: view_change.signing_digest(),
        }],
        Message::NewView(new_view) => {
            let mut statements = vec![Statement {
                replica: new_view.replica,
                kind: "new-view",
                view: new_view.view,
                seq: 0,
                digest: new_view.signing_digest(),
            }];
            statements.extend(
                new_view
                    .pre_prepares
                    .iter()
                    .filter(|pp| pp.replica == new_view.replica)
                    .map(|pp| vote("pre-prepare", pp)),
            );
            statements
        }
        _ => Vec::new(),
    }
}

impl Replica {
    /// A replica that lost its durable state: like [`Replica::new`], but silent until it has
    /// caught up past everything it could have signed before (see the module documentation).
    /// Its first output is the [`Durable::Created`] record that marks it so across restarts.
    pub fn rejoining(
        id: ReplicaId,
        committee: Committee,
        config: ProtocolConfig,
        key: KeyPair,
        app: Box<dyn StateMachine>,
    ) -> Result<Replica, ReplicaError> {
        let mut replica = Replica::new(id, committee, config, key, app)?;
        replica.rejoin = Some(Rejoin::started());
        replica
            .ready
            .persist
            .push(Durable::Created { rejoining: true });
        Ok(replica)
    }

    /// Where this replica stands if it rejoined after a lost disk.
    pub fn rejoin(&self) -> Option<&Rejoin> {
        self.rejoin.as_ref()
    }

    /// Whether the replica is rejoining and may sign nothing yet.
    pub(super) fn silent(&self) -> bool {
        self.rejoin.is_some_and(|rejoin| rejoin.silent)
    }

    /// Whether the replica may sign a VIEW-CHANGE or NEW-VIEW for `view`.
    pub(super) fn may_sign_view(&self, view: View) -> bool {
        match self.rejoin {
            None => true,
            Some(rejoin) => !rejoin.silent && rejoin.point.is_some_and(|p| view > p.view),
        }
    }

    /// Whether `message` may leave: what this replica signed only above its rejoin point. This
    /// is the safety rule itself; the silence is stricter, and a replica that restarts silent
    /// may still resend what it signed above the point before.
    pub(super) fn may_send(&self, message: &Message) -> bool {
        let Some(rejoin) = self.rejoin else {
            return true;
        };
        signed_statements(message)
            .iter()
            .filter(|s| s.replica == self.id)
            .all(|s| match (s.kind, rejoin.point) {
                (_, None) => false,
                ("view-change" | "new-view", Some(point)) => s.view > point.view,
                (_, Some(point)) => s.seq > point.seq,
            })
    }

    /// A peer's reported position, while the rejoin point is still being learned.
    pub(super) fn note_position(&mut self, from: ReplicaId, view: View, last_executed: Seq) {
        let Some(rejoin) = self.rejoin.filter(|r| r.point.is_none()) else {
            return;
        };
        let report = match self.rejoin_reports.get(from) {
            Some(&(v, s)) => (v.max(view), s.max(last_executed)),
            None => (view, last_executed),
        };
        self.rejoin_reports.insert(from, report);
        if self.rejoin_reports.len() < self.committee.quorum() {
            return;
        }
        let view = self.rejoin_reports.values().map(|r| r.0).max().unwrap_or(0);
        let seq = self.rejoin_reports.values().map(|r| r.1).max().unwrap_or(0);
        let point = RejoinPoint {
            seq: seq.saturating_add(self.config.log_window),
            view: view.saturating_add(1),
        };
        self.rejoin_reports.clear();
        tracing::info!(
            replica = self.id,
            h = point.seq,
            view = point.view,
            "rejoin point learned; silent until a checkpoint above it is stable"
        );
        let rejoin = Rejoin {
            point: Some(point),
            ..rejoin
        };
        self.rejoin = Some(rejoin);
        self.ready.persist.push(Durable::Rejoin(rejoin));
        self.maybe_end_silence();
    }

    /// Ends the silence once a checkpoint above the rejoin point is stable, and casts the votes
    /// held back for slots above it.
    pub(super) fn maybe_end_silence(&mut self) {
        let Some(rejoin) = self.rejoin.filter(|r| r.silent) else {
            return;
        };
        let Some(point) = rejoin.point else { return };
        if self.checkpoints.stable_seq <= point.seq {
            return;
        }
        tracing::info!(
            replica = self.id,
            stable = self.checkpoints.stable_seq,
            h = point.seq,
            "rejoined: past everything it may have signed before; voting again"
        );
        let rejoin = Rejoin {
            silent: false,
            ..rejoin
        };
        self.rejoin = Some(rejoin);
        self.ready.persist.push(Durable::Rejoin(rejoin));
        if self.view_active {
            let seqs: Vec<Seq> = self.log.range(self.low() + 1..).map(|(s, _)| *s).collect();
            for seq in seqs {
                self.maybe_send_prepare(seq);
                self.check_prepared(seq);
            }
        }
    }

    /// Whether the rejoin record must be carried into a new segment: while it still restrains
    /// the replica. Past view V, views only grow, so the view rule holds by itself.
    pub(super) fn rejoin_to_carry(&self) -> Option<Rejoin> {
        self.rejoin
            .filter(|r| r.silent || r.point.is_some_and(|p| self.view <= p.view))
    }
}

impl Rejoin {
    /// Silent, its point not learned yet.
    pub fn started() -> Rejoin {
        Rejoin {
            point: None,
            silent: true,
        }
    }
}
