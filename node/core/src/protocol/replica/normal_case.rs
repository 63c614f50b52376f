//! The normal case (TOCS 2002, section 4.2): requests, PRE-PREPARE, PREPARE and COMMIT,
//! committing, and execution in sequence order.

use std::collections::BTreeMap;
use std::sync::Arc;

use pbft_crypto::Digest;

use super::{BatchBody, Entry, Replica};
use crate::messages::{
    Batch, Message, Outcome, Phase, PreparedCert, ReadRequest, Reply, RequestEnvelope,
    RequestResult, Seq, SessionKey, Verified, View, Vote,
};
use crate::protocol::clients::{Admission, RequestStatus};
use crate::protocol::votes::Added;
use crate::protocol::{Conflict, Destination, Durable, Executed, Halt, Ignored, Timer};

impl Replica {
    /// `digest` is the envelope's signing digest.
    pub(super) fn on_request(&mut self, envelope: Verified<RequestEnvelope>, digest: Digest) {
        if self.clients.is_settled(&envelope) {
            // A retransmission: answer from the reply cache.
            let results = self.clients.settled_outcomes(&envelope);
            if !results.is_empty() {
                self.ready.replies.push(Reply {
                    view: self.view,
                    replica: self.id,
                    client: envelope.client,
                    session: envelope.session,
                    read_only: false,
                    results,
                });
            } else {
                self.ignore(Ignored::RequestTooOld);
            }
            return;
        }
        let ordered = self.in_log.contains(&digest);
        if self.is_primary() && (ordered || self.pending.contains(&digest)) {
            return;
        }
        // A backup waits for the request even if it is already ordered: it is not executed yet.
        let forward = envelope.get().clone();
        let first_seen = !self.pending.contains(&digest);
        if first_seen && !self.pending.push(envelope, digest) {
            self.ignore(Ignored::PendingFull);
            return;
        }
        if !self.is_primary() && self.view_active {
            // The client may have sent it only to us. Forwarded once: two replicas that each
            // take the other for the primary would otherwise pass it back and forth without
            // end. Retransmissions reach the primary from the client, and a new view hands
            // every waiting request to its primary.
            if first_seen && !ordered {
                let primary = self.primary();
                self.send(Destination::Replica(primary), Message::Request(forward));
            }
            if self.watched.is_none() {
                self.watch(Some(digest));
            }
        }
    }

    /// §5.1.3: a read-only request executes at once on the executed state, without ordering.
    /// Only committed batches ever execute here, so the answer never shows uncommitted state.
    pub(super) fn on_read(&mut self, read: ReadRequest) {
        let outcome = match self.app.query(&read.op) {
            Some(result) => Outcome::Done(result),
            None => Outcome::NotReadOnly,
        };
        self.ready.replies.push(Reply {
            view: self.view,
            replica: self.id,
            client: read.client,
            session: read.session,
            read_only: true,
            results: vec![RequestResult {
                timestamp: read.timestamp,
                outcome,
            }],
        });
    }

    /// Starts or stops the view-change timer that measures how long `digest` waits.
    pub(super) fn watch(&mut self, digest: Option<Digest>) {
        self.watched = digest;
        match digest {
            Some(_) => {
                let at = self.now + self.view_change_timeout;
                self.set_timer(Timer::ViewChange, at);
            }
            None => self.cancel_timer(Timer::ViewChange),
        }
    }

    /// The primary orders queued requests while it has room (§4.2; batching as in §5.1.4).
    pub(super) fn try_propose(&mut self) {
        if !self.view_active
            || !self.is_primary()
            || self.state_fetch.is_some()
            || self.halted.is_some()
            || self.silent()
        {
            return;
        }
        if self.newest_commit_view > self.view {
            // Batches committed in a later view: this view is over for the others, and its
            // NEW-VIEW will reach this replica through catching up.
            return;
        }
        loop {
            if self.pending.is_empty() {
                return;
            }
            // A slot already bound (committed, or holding this view's PRE-PREPARE) is never
            // assigned again.
            while self.log.get(&self.next_seq).is_some_and(|e| {
                e.is_committed() || (e.view == self.view && e.pre_prepare.is_some())
            }) {
                self.next_seq += 1;
            }
            let seq = self.next_seq;
            if !self.in_window(seq)
                || seq - 1 - self.last_executed.min(seq - 1) >= self.config.max_outstanding
            {
                return;
            }
            // After a view change, wait for the bodies of re-proposed batches so that no request
            // is ordered twice.
            if self
                .log
                .range(self.last_executed + 1..)
                .take_while(|(s, _)| **s < seq)
                .any(|(_, e)| e.batch.is_none())
            {
                return;
            }
            if self.hold_for_fill(seq) {
                return;
            }
            let mut batch = Batch::default();
            let mut envelope_digests = Vec::new();
            let mut requests = 0;
            let mut bytes = 0;
            while let Some((envelope, _)) = self.pending.front() {
                let size = envelope.encoded_len();
                let count = envelope.requests.len();
                if !batch.envelopes.is_empty()
                    && (requests + count > self.config.max_batch_requests
                        || bytes + size > self.config.max_batch_bytes
                        || batch.envelopes.len() >= self.config.limits.max_batch_envelopes)
                {
                    break;
                }
                let (envelope, digest) = self.pending.pop_front().expect("front exists");
                if self.clients.is_settled(&envelope) || self.in_log.contains(&digest) {
                    continue;
                }
                requests += count;
                bytes += size;
                self.in_log.insert(digest);
                batch.envelopes.push(envelope.into_inner());
                envelope_digests.push(digest);
            }
            if batch.envelopes.is_empty() {
                continue;
            }
            self.filling_since = None;
            let body = BatchBody::with_digests(batch, envelope_digests);
            let digest = body.digest;
            self.ready.persist.push(Durable::Batch {
                seq,
                batch: body.batch.clone(),
            });
            let header = self.sign_vote(Phase::PrePrepare, self.view, seq, digest);
            self.next_seq += 1;
            let view = self.view;
            let now = self.now;
            let entry = self.log.entry(seq).or_default();
            entry.reset_for_view(view);
            entry.pre_prepare = Some(header.clone());
            entry.digest = Some(digest);
            entry.durable_batch = Some(digest);
            entry.touched = now;
            let batch = body.batch.clone();
            entry.keep_voted(body.clone());
            entry.batch = Some(body);
            self.broadcast(Message::PrePrepare { header, batch });
            self.check_prepared(seq);
        }
    }

    /// Whether the batch for `seq` should wait to fill: only while a batch is in flight, until
    /// `batch_fill_bytes` (or `max_batch_requests`) are pending or `batch_delay` has passed
    /// since it began to fill. A timer proposes it then.
    fn hold_for_fill(&mut self, seq: Seq) -> bool {
        let in_flight = seq - 1 > self.last_executed;
        if !in_flight || self.config.batch_delay.is_zero() {
            return false;
        }
        let since = *self.filling_since.get_or_insert(self.now);
        let deadline = since + self.config.batch_delay;
        if self.now >= deadline || self.pending_fills_a_batch() {
            return false;
        }
        self.set_timer(Timer::Batch, deadline);
        true
    }

    fn pending_fills_a_batch(&self) -> bool {
        let fill = self
            .config
            .batch_fill_bytes
            .min(self.config.max_batch_bytes);
        let (mut bytes, mut requests) = (0, 0);
        for (envelope, _) in self.pending.iter() {
            bytes += envelope.encoded_len();
            requests += envelope.requests.len();
            if bytes >= fill || requests >= self.config.max_batch_requests {
                return true;
            }
        }
        false
    }

    /// Checks the view and watermarks of a vote and returns its slot, reset for the current view.
    pub(super) fn slot_for(&mut self, view: View, seq: Seq) -> Option<&mut Entry> {
        if view != self.view {
            self.ignore(if view < self.view {
                Ignored::StaleView
            } else {
                Ignored::FutureView
            });
            return None;
        }
        if !self.in_window(seq) {
            self.ignore(Ignored::OutsideWatermarks);
            return None;
        }
        let now = self.now;
        let entry = self.log.entry(seq).or_default();
        if entry.view != view {
            entry.reset_for_view(view);
            entry.touched = now;
        }
        Some(entry)
    }

    pub(super) fn on_pre_prepare(&mut self, header: Vote, batch: Option<Arc<BatchBody>>) {
        if !self.view_active {
            self.ignore(Ignored::PrePrepareDuringViewChange);
            return;
        }
        let seq = header.seq;
        let Some(entry) = self.slot_for(header.view, seq) else {
            return;
        };
        if let Some(existing) = &entry.pre_prepare {
            if existing.digest != header.digest {
                let conflict = Conflict::Votes(existing.clone(), header);
                self.record_evidence(conflict);
                return;
            }
            if entry.batch.is_none() && batch.is_some() {
                entry.batch = batch;
            }
        } else {
            if entry.is_committed() && entry.digest != Some(header.digest) {
                // A committed slot cannot take another batch; the sender is faulty.
                self.ignore(Ignored::PrePrepareConflictsWithCommit);
                return;
            }
            if let Some(batch) = &batch {
                if batch.has_duplicate_envelopes() {
                    self.ignore(Ignored::BatchRepeatsEnvelope);
                    return;
                }
            }
            entry.pre_prepare = Some(header.clone());
            entry.digest = Some(header.digest);
            entry.bind_body(header.digest);
            if entry.batch.is_none() {
                entry.batch = batch;
            }
        }
        self.maybe_send_prepare(seq);
        self.check_prepared(seq);
    }

    /// A backup prepares once it holds the PRE-PREPARE and the batch it names.
    pub(super) fn maybe_send_prepare(&mut self, seq: Seq) {
        if self.is_primary() {
            return;
        }
        let view = self.view;
        let Some(entry) = self.log.get(&seq) else {
            return;
        };
        if entry.view != view || entry.signed.has_prepare() || !entry.has_batch_for_digest() {
            if entry.view == view && !entry.signed.has_prepare() && entry.pre_prepare.is_some() {
                self.fetch_batch(seq);
            }
            return;
        }
        let Some(pre_prepare) = entry.pre_prepare.clone() else {
            return;
        };
        if self.silent() {
            return;
        }
        self.persist_batch(seq);
        self.ready
            .persist
            .push(Durable::PrePrepare(pre_prepare.clone()));
        let vote = self.sign_vote(Phase::Prepare, view, seq, pre_prepare.digest);
        let now = self.now;
        let entry = self.log.get_mut(&seq).expect("checked above");
        entry.signed = entry.signed.with_prepare();
        entry.touched = now;
        entry.prepares.add(vote.clone());
        if let Some(batch) = entry.batch.clone() {
            self.in_log.extend(batch.envelope_digests.iter().copied());
            entry.keep_voted(batch);
        }
        self.broadcast(Message::Prepare { vote, pre_prepare });
    }

    pub(super) fn on_prepare(&mut self, vote: Vote, pre_prepare: Vote) {
        let seq = vote.seq;
        let active = self.view_active;
        let Some(entry) = self.slot_for(vote.view, seq) else {
            return;
        };
        let mut conflicts = Vec::new();
        match &entry.pre_prepare {
            Some(ours) if ours.digest != pre_prepare.digest => {
                conflicts.push(Conflict::Votes(ours.clone(), pre_prepare.clone()));
            }
            Some(_) => {}
            None if active && !entry.is_committed() => {
                // Learn the PRE-PREPARE from the header the backup carries; fetch the batch.
                entry.pre_prepare = Some(pre_prepare.clone());
                entry.digest = Some(pre_prepare.digest);
                entry.bind_body(pre_prepare.digest);
            }
            None => {}
        }
        if let Added::Conflict(conflict) = entry.prepares.add(vote) {
            conflicts.push(conflict);
        }
        for conflict in conflicts {
            self.record_evidence(conflict);
        }
        self.maybe_send_prepare(seq);
        self.check_prepared(seq);
    }

    /// prepared(m, v, n, i): the PRE-PREPARE and 2f matching PREPAREs from distinct backups.
    pub(super) fn check_prepared(&mut self, seq: Seq) {
        // A silent replica has sent no PREPARE to complete a certificate, nor may it COMMIT.
        if self.silent() {
            return;
        }
        let needed = self.committee.prepared_quorum();
        let view = self.view;
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.view != view || entry.signed.has_commit() {
            return;
        }
        let Some(pre_prepare) = entry.pre_prepare.clone() else {
            return;
        };
        let Some(prepares) = entry.prepares.certificate(needed, Some(pre_prepare.digest)) else {
            return;
        };
        let cert = PreparedCert {
            pre_prepare: pre_prepare.clone(),
            prepares,
        };
        entry.prepared_cert = Some(cert.clone());
        self.persist_batch(seq);
        self.ready.persist.push(Durable::Prepared(cert));
        let vote = self.sign_vote(Phase::Commit, view, seq, pre_prepare.digest);
        let now = self.now;
        let entry = self.log.get_mut(&seq).expect("exists");
        entry.signed = entry.signed.with_commit();
        entry.touched = now;
        entry.commits.add(vote.clone());
        self.broadcast(Message::Commit(vote));
        self.check_committed(seq);
    }

    pub(super) fn on_commit(&mut self, vote: Vote) {
        let seq = vote.seq;
        let Some(entry) = self.slot_for(vote.view, seq) else {
            return;
        };
        match entry.commits.add(vote) {
            Added::New => self.check_committed(seq),
            Added::Repeat => {}
            Added::Conflict(conflict) => self.record_evidence(conflict),
        }
    }

    /// committed-local: 2f+1 matching COMMITs for the view. At least f+1 correct replicas then
    /// prepared the batch, which is what the safety argument needs (§4.2, Theorem 4.1), so a
    /// replica that missed the PRE-PREPARE may still execute once it fetches the batch.
    pub(super) fn check_committed(&mut self, seq: Seq) {
        let quorum = self.committee.quorum();
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.is_committed() {
            return;
        }
        let Some(cert) = entry.commits.certificate(quorum, None) else {
            return;
        };
        self.commit_slot(cert, "2f+1 COMMITs");
        if self.log.get(&seq).is_some_and(|e| e.batch.is_none()) {
            self.fetch_batch(seq);
        }
    }

    /// Fixes a slot for good to the digest that `commits` (2f+1 matching COMMITs) certify
    /// (§4.2): a PRE-PREPARE or body of another digest is dropped. With at most f faults no two
    /// certificates fix different digests at one sequence number, so one that does halts the
    /// replica. Returns whether the slot was newly committed.
    pub(super) fn commit_slot(&mut self, commits: Vec<Vote>, source: &'static str) -> bool {
        let Some(first) = commits.first() else {
            return false;
        };
        let (seq, view, digest) = (first.seq, first.view, first.digest);
        let now = self.now;
        let entry = self.log.entry(seq).or_default();
        if entry.is_committed() {
            if let Some(committed) = entry.digest.filter(|d| *d != digest) {
                self.halt(Halt::ConflictingCommit {
                    seq,
                    committed,
                    other: digest,
                    from: source,
                });
            }
            return false;
        }
        if entry.digest.is_some_and(|d| d != digest) {
            entry.pre_prepare = None;
        }
        entry.bind_body(digest);
        entry.digest = Some(digest);
        entry.committed_in = Some(view);
        entry.commit_cert = Some(commits);
        entry.touched = now;
        self.newest_commit_view = self.newest_commit_view.max(view);
        true
    }

    pub(super) fn execute_committed(&mut self) {
        if self.state_fetch.is_some() || self.halted.is_some() {
            return;
        }
        loop {
            let seq = self.last_executed + 1;
            let Some(entry) = self.log.get_mut(&seq) else {
                return;
            };
            let (true, Some(digest)) = (entry.is_committed(), entry.digest) else {
                return;
            };
            // Only the body the commit certificate names may execute.
            entry.bind_body(digest);
            let Some(batch) = entry.batch.clone() else {
                return;
            };
            let commits = entry.commit_cert.clone();
            self.persist_batch(seq);
            if let Some(commits) = commits {
                self.ready.persist.push(Durable::Committed(commits));
            }
            self.execute_batch(seq, digest, &batch);
        }
    }

    pub(super) fn execute_batch(&mut self, seq: Seq, digest: Digest, body: &BatchBody) {
        let mut replies: BTreeMap<SessionKey, Vec<RequestResult>> = BTreeMap::new();
        let mut executed_requests = Vec::new();
        let mut settled_watch = false;
        for (envelope, envelope_digest) in body.batch.envelopes.iter().zip(&body.envelope_digests) {
            let envelope_digest = *envelope_digest;
            let session = envelope.session_key();
            for request in &envelope.requests {
                let outcome = match self.clients.status(&session, request.timestamp) {
                    RequestStatus::New => None,
                    RequestStatus::Expired => Some(Outcome::SessionExpired),
                    RequestStatus::Executed(_) | RequestStatus::TooOld => continue,
                };
                let outcome = match outcome {
                    Some(refused) => refused,
                    None if self.clients.admit(session, seq) == Admission::Full => {
                        Outcome::SessionsFull
                    }
                    None => {
                        let result = self.app.execute(&request.op);
                        self.clients
                            .record(session, request.timestamp, result.clone(), seq);
                        executed_requests.push((session, request.timestamp));
                        Outcome::Done(result)
                    }
                };
                replies.entry(session).or_default().push(RequestResult {
                    timestamp: request.timestamp,
                    outcome,
                });
            }
            self.in_log.remove(&envelope_digest);
            self.pending.remove(&envelope.client, &envelope_digest);
            if self.watched == Some(envelope_digest) {
                settled_watch = true;
            }
        }
        self.clients.enforce_bounds();
        self.last_executed = seq;
        for (session, results) in replies {
            self.ready.replies.push(Reply {
                view: self.view,
                replica: self.id,
                client: session.client,
                session: session.session,
                read_only: false,
                results,
            });
        }
        let progressed = !executed_requests.is_empty();
        self.ready.executed.push(Executed {
            seq,
            view: self.view,
            digest,
            requests: executed_requests,
        });
        if progressed {
            self.view_change_timeout = self.config.view_change_timeout;
        }
        if settled_watch || self.watched.is_some_and(|d| !self.pending.contains(&d)) {
            // §4.5.2: stop the timer, and restart it if another request is waiting.
            let next = if self.is_primary() {
                None
            } else {
                self.pending.iter().next().map(|(_, d)| *d)
            };
            self.watch(next);
        }
        // Below the stable checkpoint (catching up) nobody needs a checkpoint; at it, the
        // snapshot is compared with the certified digest.
        if seq.is_multiple_of(self.config.checkpoint_interval) && seq >= self.checkpoints.stable_seq
        {
            self.take_checkpoint(seq);
            self.reached_stable(seq);
        }
    }
}
