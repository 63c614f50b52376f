//! View changes (sections 4.4 and 4.5.2): suspecting the primary, VIEW-CHANGE, the new
//! primary's NEW-VIEW, and entering the new view.

use std::sync::Arc;

use super::retransmission::Help;
use super::{BatchBody, Replica};
use crate::messages::{
    Batch, Message, NewView, Phase, PreparedCert, ReplicaId, RequestEnvelope, Seq, View,
    ViewChange, Vote,
};
use crate::protocol::new_view::{plan_new_view, NewViewPlan};
use crate::protocol::{Destination, Durable, Halt, Ignored, Timer};

impl Replica {
    pub(super) fn on_view_change_timer(&mut self) {
        if self.silent() {
            // No vote to give: it follows the views the others move to.
            return;
        }
        if !self.view_active {
            // The view change did not complete in time: try the next view, waiting longer.
            let next = self.view + 1;
            self.start_view_change(next);
            return;
        }
        let Some(watched) = self.watched else { return };
        let clients = &self.clients;
        self.pending
            .retain(|envelope, _| !clients.is_settled(envelope));
        if self.pending.contains(&watched) || self.in_log.contains(&watched) {
            tracing::info!(
                replica = self.id,
                view = self.view,
                "request timed out; suspecting the primary"
            );
            let next = self.view + 1;
            self.start_view_change(next);
        } else {
            let next = self.pending.iter().next().map(|(_, d)| *d);
            self.watch(next);
        }
    }

    pub(super) fn start_view_change(&mut self, new_view: View) {
        if new_view <= self.view {
            return;
        }
        tracing::info!(
            replica = self.id,
            from = self.view,
            to = new_view,
            "starting view change"
        );
        self.view = new_view;
        self.view_active = false;
        self.watched = None;
        if !self.may_sign_view(new_view) {
            // It may have asked for this view before its data was lost: it moves along with
            // the others, silently.
            self.new_view_timer_armed = false;
            self.cancel_timer(Timer::ViewChange);
            self.maybe_arm_new_view_timer();
            return;
        }
        let prepared: Vec<PreparedCert> = self
            .log
            .range(self.low() + 1..=self.low() + self.config.log_window)
            .filter_map(|(_, e)| e.prepared_cert.clone())
            .collect();
        let mut view_change = ViewChange {
            new_view,
            stable_seq: self.checkpoints.stable_seq,
            checkpoint_proof: self.checkpoints.stable_proof.clone(),
            prepared,
            replica: self.id,
            signature: pbft_crypto::Signature::EMPTY,
        };
        view_change.sign(&self.key);
        self.ready
            .persist
            .push(Durable::ViewChange(view_change.clone()));
        self.broadcast(Message::ViewChange(view_change.clone()));
        self.new_view_timer_armed = false;
        self.cancel_timer(Timer::ViewChange);
        self.store_view_change(view_change);
        self.maybe_arm_new_view_timer();
        self.maybe_send_new_view();
    }

    /// With 2f+1 replicas moving to this replica's view or beyond, wait a while for its
    /// NEW-VIEW; each wait is twice the last until a request executes again.
    pub(super) fn maybe_arm_new_view_timer(&mut self) {
        if self.view_active || self.new_view_timer_armed {
            return;
        }
        // VIEW-CHANGEs for later views count too: their senders have left this view as well,
        // and without them replicas stranded in different view changes would wait forever.
        let wanting = self.view_changes.count(|vc| vc.new_view >= self.view);
        if wanting < self.committee.quorum() {
            return;
        }
        self.new_view_timer_armed = true;
        let at = self.now + self.view_change_timeout;
        self.set_timer(Timer::ViewChange, at);
        self.view_change_timeout =
            (self.view_change_timeout * 2).min(self.config.max_view_change_timeout);
    }

    pub(super) fn store_view_change(&mut self, view_change: ViewChange) {
        let replica = view_change.replica;
        match self.view_changes.get(replica) {
            Some(existing) if existing.new_view >= view_change.new_view => {}
            _ => {
                self.view_changes.insert(replica, view_change);
            }
        }
    }

    pub(super) fn on_view_change(&mut self, view_change: ViewChange) {
        let from = view_change.replica;
        let target = view_change.new_view;
        if target < self.view || (target == self.view && self.view_active) {
            // The sender is behind: show it how the current view began.
            self.send_new_view_to(from);
            self.ignore(Ignored::StaleViewChange);
            return;
        }
        self.store_view_change(view_change);
        // §4.5.2: f+1 replicas want a higher view, so at least one correct one does; join the
        // highest view that f+1 of them have reached.
        let join = self
            .view_changes
            .kth_highest(self.committee.weak_quorum(), |id, vc| {
                (id != self.id && vc.new_view > self.view).then_some(vc.new_view)
            });
        if let Some(join) = join {
            self.start_view_change(join);
            return;
        }
        self.maybe_arm_new_view_timer();
        self.maybe_send_new_view();
    }

    pub(super) fn send_new_view_to(&mut self, peer: ReplicaId) {
        if let Some(new_view) = self.last_new_view.clone() {
            let message = Message::NewView((*new_view).clone());
            // Its own NEW-VIEW from before a lost disk is not passed on while it may not sign.
            if self.may_send(&message) && self.may_help(peer, Help::NewView) {
                self.send(Destination::Replica(peer), message);
            }
        }
    }

    /// The new primary sends NEW-VIEW once it holds 2f+1 VIEW-CHANGEs for its view.
    pub(super) fn maybe_send_new_view(&mut self) {
        if self.view_active || !self.is_primary() || !self.may_sign_view(self.view) {
            return;
        }
        let view = self.view;
        // Its own VIEW-CHANGE first, then the others in replica order.
        let Some(chosen) = self
            .view_changes
            .pick(self.committee.quorum(), Some(self.id), |vc| {
                vc.new_view == view
            })
        else {
            return;
        };
        let chosen: Vec<ViewChange> = chosen.into_iter().cloned().collect();
        let plan = plan_new_view(&chosen);
        // Back from a lost disk without a VIEW-CHANGE of its own among them (it was silent when
        // the view change began), it would re-propose sequence numbers it may have voted on
        // before: it proposes nothing, and the view passes to the next primary.
        let rejoin_seq = self.rejoin.and_then(|rejoin| rejoin.point).map(|p| p.seq);
        if (plan.orders.first()).is_some_and(|(seq, _)| rejoin_seq.is_some_and(|h| *seq <= h)) {
            self.ignore(Ignored::SilentWhileRejoining);
            return;
        }
        let pre_prepares: Vec<Vote> = plan
            .orders
            .iter()
            .map(|(seq, digest)| {
                Vote::new(&self.key, Phase::PrePrepare, view, *seq, *digest, self.id)
            })
            .collect();
        let mut new_view = NewView {
            view,
            view_changes: chosen,
            pre_prepares,
            replica: self.id,
            signature: pbft_crypto::Signature::EMPTY,
        };
        new_view.sign(&self.key);
        let new_view = Arc::new(new_view);
        tracing::info!(
            replica = self.id,
            view,
            orders = plan.orders.len(),
            "sending new view"
        );
        self.broadcast(Message::NewView((*new_view).clone()));
        self.enter_view(new_view, plan);
    }

    pub(super) fn on_new_view(&mut self, new_view: Arc<NewView>) {
        if new_view.view < self.view || (new_view.view == self.view && self.view_active) {
            self.ignore(Ignored::StaleNewView);
            return;
        }
        // Every replica recomputes O from V and rejects a NEW-VIEW that differs (§4.4).
        let plan = plan_new_view(&new_view.view_changes);
        let matches = plan.orders.len() == new_view.pre_prepares.len()
            && plan
                .orders
                .iter()
                .zip(&new_view.pre_prepares)
                .all(|((seq, digest), pp)| pp.seq == *seq && pp.digest == *digest);
        if !matches {
            tracing::warn!(
                replica = self.id,
                view = new_view.view,
                from = new_view.replica,
                "new view with a wrong O rejected"
            );
            self.ignore(Ignored::WrongNewView);
            return;
        }
        for vc in &new_view.view_changes {
            self.store_view_change(vc.clone());
        }
        self.enter_view(new_view, plan);
    }

    pub(super) fn enter_view(&mut self, new_view: Arc<NewView>, plan: NewViewPlan) {
        let view = new_view.view;
        if let Some(halt) = self.contradicted_commit(&new_view) {
            self.halt(halt);
            return;
        }
        tracing::info!(replica = self.id, view, "entering view");
        self.ready.persist.push(Durable::NewView(new_view.clone()));
        self.view = view;
        self.view_active = true;
        self.last_new_view = Some(new_view.clone());
        self.cancel_timer(Timer::ViewChange);
        self.watched = None;

        if plan.min_s > self.checkpoints.stable_seq {
            let digest = plan.checkpoint_proof[0].state_digest;
            self.make_stable(plan.min_s, digest, plan.checkpoint_proof.clone());
        }
        // Slots above max-s were not committed anywhere (else they would be prepared in V).
        let low = self.low();
        let max_s = plan.max_s.max(low);
        let above: Vec<Seq> = self
            .log
            .range(max_s + 1..)
            .filter(|(_, e)| !e.is_committed())
            .map(|(s, _)| *s)
            .collect();
        for seq in above {
            self.log.remove(&seq);
        }
        let now = self.now;
        for entry in self.log.values_mut() {
            entry.reset_for_view(view);
            entry.touched = now;
        }
        let null = BatchBody::new(Batch::null());
        let null_digest = null.digest;
        for pre_prepare in &new_view.pre_prepares {
            let seq = pre_prepare.seq;
            if seq <= low {
                continue;
            }
            let entry = self.log.entry(seq).or_default();
            entry.view = view;
            entry.touched = now;
            if entry.is_committed() && entry.digest != Some(pre_prepare.digest) {
                // A commit from this view or a later one: the NEW-VIEW is older news.
                continue;
            }
            entry.pre_prepare = Some(pre_prepare.clone());
            entry.digest = Some(pre_prepare.digest);
            if pre_prepare.digest == null_digest {
                entry.batch = Some(null.clone());
            } else {
                entry.bind_body(pre_prepare.digest);
            }
        }
        self.next_seq = max_s.max(self.last_executed) + 1;
        self.rebuild_in_log();
        let seqs: Vec<Seq> = self
            .log
            .range(low + 1..)
            .map(|(s, _)| *s)
            .take_while(|s| *s <= max_s)
            .collect();
        for seq in seqs {
            self.maybe_send_prepare(seq);
            if self.is_primary() {
                self.fetch_batch(seq);
            }
            self.check_prepared(seq);
        }
        // Hand waiting requests to the new primary and watch them again.
        let clients = &self.clients;
        self.pending
            .retain(|envelope, _| !clients.is_settled(envelope));
        if !self.is_primary() {
            let primary = self.primary();
            let forward: Vec<RequestEnvelope> =
                self.pending.iter().map(|(e, _)| e.get().clone()).collect();
            for envelope in forward {
                self.send(Destination::Replica(primary), Message::Request(envelope));
            }
            let next = self.pending.iter().next().map(|(_, d)| *d);
            self.watch(next);
        }
    }

    /// Every NEW-VIEW after a commit must carry it (§4.4, Theorem 4.1): one that binds a slot
    /// committed in an earlier view to another batch proves more than f faults.
    pub(super) fn contradicted_commit(&self, new_view: &NewView) -> Option<Halt> {
        new_view.pre_prepares.iter().find_map(|pre_prepare| {
            let entry = self.log.get(&pre_prepare.seq)?;
            let commit_view = entry.committed_in?;
            let committed = entry.digest?;
            (committed != pre_prepare.digest && commit_view < new_view.view).then_some(
                Halt::ConflictingCommit {
                    seq: pre_prepare.seq,
                    committed,
                    other: pre_prepare.digest,
                    from: "a NEW-VIEW",
                },
            )
        })
    }

    pub(super) fn rebuild_in_log(&mut self) {
        self.in_log.clear();
        for entry in self.log.range(self.last_executed + 1..).map(|(_, e)| e) {
            if let Some(batch) = &entry.batch {
                self.in_log.extend(batch.envelope_digests.iter().copied());
            }
        }
    }
}
