//! [`Replica`]: normal-case ordering, execution, checkpoints, view change and state transfer.
//! Section numbers refer to Castro and Liskov, "Practical Byzantine Fault Tolerance and Proactive
//! Recovery", ACM TOCS 20(4), 2002.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pbft_crypto::{Digest, DigestBuilder, Domain, KeyPair};
use serde::{Deserialize, Serialize};

use super::clients::{ClientTable, PendingRequests, RequestStatus};
use super::view_change::plan_new_view;
use super::{
    Conflict, Destination, Durable, Executed, Halt, Outgoing, ProtocolConfig, Ready,
    RecoveryReport, Status, Timer, TimerCommand,
};
use crate::app::StateMachine;
use crate::codec;
use crate::committee::Committee;
use crate::messages::{
    Batch, Checkpoint, Message, NewView, Phase, PreparedCert, ReplicaId, Reply, RequestEnvelope,
    RequestResult, Seq, Verified, View, ViewChange, Vote,
};

/// The state a checkpoint certifies: the application and the client table. Its encoding is
/// canonical, so the checkpoint digest is the digest of the encoding and a transferred snapshot
/// is checked by hashing it.
#[derive(Serialize, Deserialize)]
struct ReplicatedState {
    #[serde(with = "serde_bytes")]
    app: Vec<u8>,
    clients: ClientTable,
}

/// A batch with its digests, computed once when the batch arrives.
#[derive(Debug)]
struct BatchBody {
    batch: Batch,
    digest: Digest,
    envelope_digests: Vec<Digest>,
}

impl BatchBody {
    fn new(batch: Batch) -> Arc<BatchBody> {
        let envelope_digests = batch.envelope_digests();
        BatchBody::with_digests(batch, envelope_digests)
    }

    /// A batch that arrived in a verified message, with the envelope digests the boundary
    /// computed (hashed again only if they do not fit the batch).
    fn verified(batch: Batch, envelope_digests: Vec<Digest>) -> Arc<BatchBody> {
        if envelope_digests.len() == batch.envelopes.len() {
            BatchBody::with_digests(batch, envelope_digests)
        } else {
            BatchBody::new(batch)
        }
    }

    fn with_digests(batch: Batch, envelope_digests: Vec<Digest>) -> Arc<BatchBody> {
        Arc::new(BatchBody {
            digest: Batch::digest_of(&envelope_digests),
            batch,
            envelope_digests,
        })
    }

    fn has_duplicate_envelopes(&self) -> bool {
        let mut seen = BTreeSet::new();
        self.envelope_digests.iter().any(|d| !seen.insert(*d))
    }
}

/// One sequence number's slot in the log.
#[derive(Debug, Default)]
struct Entry {
    /// The view whose messages the fields below hold.
    view: View,
    /// The primary's PRE-PREPARE accepted for `view`.
    pre_prepare: Option<Vote>,
    /// The batch digest this slot is bound to (from the PRE-PREPARE or a commit certificate).
    digest: Option<Digest>,
    batch: Option<Arc<BatchBody>>,
    prepares: BTreeMap<ReplicaId, Vote>,
    commits: BTreeMap<ReplicaId, Vote>,
    /// 2f+1 matching COMMITs, once committed (to help replicas that missed them).
    commit_cert: Option<Vec<Vote>>,
    /// The certificate from the highest view this slot prepared in; survives view changes.
    prepared_cert: Option<PreparedCert>,
    sent_prepare: bool,
    sent_commit: bool,
    /// A FETCH-BATCH went out in this view.
    fetch_sent: bool,
    /// 2f+1 COMMITs fixed `digest` for good; no later message may bind this slot to another.
    committed: bool,
    /// The view of the COMMITs that fixed `digest`.
    commit_view: View,
    /// The digest of the batch body last written to durable storage for this slot.
    durable_batch: Option<Digest>,
    /// Bodies this replica voted for here (as primary or with a PREPARE), in this view and
    /// earlier ones, newest last. A later NEW-VIEW may name any of them (the one of the highest
    /// prepared certificate), and the replicas that voted for it are the ones sure to hold it.
    voted: Vec<Arc<BatchBody>>,
    /// When this slot last made progress, for retransmission.
    touched: Duration,
}

impl Entry {
    fn reset_for_view(&mut self, view: View) {
        self.view = view;
        self.pre_prepare = None;
        self.prepares.clear();
        self.commits.clear();
        self.sent_prepare = false;
        self.sent_commit = false;
        self.fetch_sent = false;
        if !self.committed {
            self.digest = None;
        }
    }

    fn has_batch_for_digest(&self) -> bool {
        self.batch.is_some() && self.digest.is_some()
    }

    /// Remembers a body this replica voted for; the oldest goes beyond a few.
    fn keep_voted(&mut self, body: Arc<BatchBody>) {
        self.voted.retain(|kept| kept.digest != body.digest);
        self.voted.push(body);
        if self.voted.len() > MAX_VOTED_BODIES {
            self.voted.remove(0);
        }
    }

    /// The body with `digest`, if this slot holds it.
    fn body_for(&self, digest: Digest) -> Option<Arc<BatchBody>> {
        self.batch
            .iter()
            .chain(&self.voted)
            .find(|body| body.digest == digest)
            .cloned()
    }

    /// Makes `batch` the body of `digest` (or none), from what the slot holds.
    fn bind_body(&mut self, digest: Digest) {
        if self.batch.as_ref().map(|b| b.digest) != Some(digest) {
            self.batch = self.body_for(digest);
        }
    }
}

/// Bodies voted for that a slot keeps across views. Each view's primary can propose one body
/// per slot, so this bounds what faulty primaries can make a replica hold.
const MAX_VOTED_BODIES: usize = 4;

/// Own checkpoints, checkpoint votes, and the stable checkpoint (§4.3).
#[derive(Debug, Default)]
struct Checkpoints {
    stable_seq: Seq,
    stable_digest: Digest,
    stable_proof: Vec<Checkpoint>,
    /// Own checkpoints at or above the stable one.
    own: BTreeMap<Seq, OwnCheckpoint>,
    /// Checkpoint votes above the stable checkpoint.
    votes: BTreeMap<Seq, BTreeMap<ReplicaId, Checkpoint>>,
}

/// A checkpoint this replica holds the state of.
#[derive(Debug)]
struct OwnCheckpoint {
    digest: Digest,
    snapshot: Arc<Vec<u8>>,
    /// Its signed CHECKPOINT, if it took the checkpoint itself.
    message: Option<Checkpoint>,
}

/// Help a replica gives a peer on request (catch-up, new views, batches, state). Answers cost
/// far more than the asking, so each peer gets a bounded amount per retransmission interval and
/// a faulty peer cannot turn this replica into an amplifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Help {
    CatchUp,
    NewView,
    Batch,
    State,
}

impl Help {
    fn per_interval(self) -> u32 {
        match self {
            Help::CatchUp | Help::NewView | Help::State => 1,
            Help::Batch => 64,
        }
    }
}

/// A state transfer in progress.
#[derive(Debug)]
struct StateFetch {
    seq: Seq,
    /// Which signer of the proof to ask next.
    next_source: usize,
    sources: Vec<ReplicaId>,
}

/// A PBFT replica. See the module documentation of [`crate::protocol`] for how to drive it.
pub struct Replica {
    id: ReplicaId,
    committee: Committee,
    config: ProtocolConfig,
    key: KeyPair,
    app: Box<dyn StateMachine>,
    clients: ClientTable,

    view: View,
    /// False from sending a VIEW-CHANGE until a valid NEW-VIEW for `view` is processed.
    view_active: bool,
    log: BTreeMap<Seq, Entry>,
    last_executed: Seq,
    /// The primary's next sequence number to assign.
    next_seq: Seq,
    checkpoints: Checkpoints,
    state_fetch: Option<StateFetch>,

    pending: PendingRequests,
    /// Envelopes in log slots above `last_executed` (the primary does not order them twice).
    in_log: HashSet<Digest>,
    /// The envelope whose wait the view-change timer is measuring (§4.5.2).
    watched: Option<Digest>,
    view_change_timeout: Duration,
    /// In a view change, whether the timer for giving up on `view` runs. It starts only once
    /// 2f+1 replicas want the view (§4.5.2), so a replica alone cannot race through views.
    new_view_timer_armed: bool,

    /// The latest VIEW-CHANGE from each replica (own included).
    view_changes: BTreeMap<ReplicaId, ViewChange>,
    /// The NEW-VIEW that started the current view, for replicas that missed it.
    last_new_view: Option<Arc<NewView>>,

    evidence: BTreeMap<ReplicaId, Conflict>,
    /// Per peer and kind of help: the interval it was last given in, and how often then.
    help_given: BTreeMap<(ReplicaId, Help), (u64, u32)>,
    state_transfers: u64,
    ignored: BTreeMap<&'static str, u64>,
    /// The state digest and the sequence number it was computed at (the state is a function of
    /// the last executed sequence number).
    state_digest_cache: Cell<Option<(Seq, Digest)>>,
    /// The highest view of any commit certificate this replica holds. A primary whose view is
    /// below it knows the cluster moved on and proposes nothing more in its own view.
    newest_commit_view: View,
    /// Set when the replica saw proof of more than f faults; it then takes no more input.
    halted: Option<Halt>,
    now: Duration,
    ready: Ready,
}

impl Replica {
    /// A replica at view 0 with the initial state of `app`. `key` must be replica `id`'s key in
    /// `committee`.
    pub fn new(
        id: ReplicaId,
        committee: Committee,
        config: ProtocolConfig,
        key: KeyPair,
        app: Box<dyn StateMachine>,
    ) -> Result<Replica, String> {
        config.validate()?;
        if committee.key(id) != Some(&key.public()) {
            return Err(format!(
                "the key given is not replica {id}'s key in the cluster"
            ));
        }
        let mut replica = Replica {
            id,
            clients: ClientTable::new(config.client_window),
            pending: PendingRequests::new(
                config.max_pending_envelopes,
                config.max_pending_per_client,
            ),
            view_change_timeout: config.view_change_timeout,
            new_view_timer_armed: false,
            committee,
            config,
            key,
            app,
            view: 0,
            view_active: true,
            log: BTreeMap::new(),
            last_executed: 0,
            next_seq: 1,
            checkpoints: Checkpoints::default(),
            state_fetch: None,
            in_log: HashSet::new(),
            watched: None,
            view_changes: BTreeMap::new(),
            last_new_view: None,
            evidence: BTreeMap::new(),
            help_given: BTreeMap::new(),
            state_transfers: 0,
            ignored: BTreeMap::new(),
            state_digest_cache: Cell::new(None),
            newest_commit_view: 0,
            halted: None,
            now: Duration::ZERO,
            ready: Ready::default(),
        };
        let (digest, snapshot) = replica.take_snapshot();
        replica.checkpoints.stable_digest = digest;
        replica.checkpoints.own.insert(
            0,
            OwnCheckpoint {
                digest,
                snapshot,
                message: None,
            },
        );
        Ok(replica)
    }

    /// Rebuilds a replica after a crash from the records it persisted, in the order they were
    /// written. The state comes from the newest stable checkpoint among them, the log and the
    /// view from the records after it, and committed batches above the snapshot execute again.
    /// Call [`Replica::start`] next; the replica then catches up with its peers. The records are
    /// this replica's own and trusted; a snapshot that does not match its proof is an error.
    pub fn recover(
        id: ReplicaId,
        committee: Committee,
        config: ProtocolConfig,
        key: KeyPair,
        app: Box<dyn StateMachine>,
        records: Vec<Durable>,
    ) -> Result<(Replica, RecoveryReport), String> {
        let mut replica = Replica::new(id, committee, config, key, app)?;
        let mut report = RecoveryReport {
            records: records.len(),
            ..RecoveryReport::default()
        };
        let newest_stable = records.iter().rev().find_map(|record| match record {
            Durable::Stable {
                seq,
                proof,
                snapshot,
            } => Some((*seq, proof.clone(), snapshot.clone())),
            _ => None,
        });
        if let Some((seq, proof, snapshot)) = newest_stable {
            let digest = snapshot_digest(&snapshot);
            if proof.first().map(|c| c.state_digest) != Some(digest) {
                return Err(format!(
                    "the stored snapshot at {seq} does not match its checkpoint proof"
                ));
            }
            replica.install_state(seq, digest, snapshot)?;
            let c = &mut replica.checkpoints;
            c.stable_seq = seq;
            c.stable_digest = digest;
            c.stable_proof = proof;
            c.own = c.own.split_off(&seq);
            report.snapshot_seq = seq;
        }
        for record in records {
            replica.replay(record);
        }
        for entry in replica.log.values_mut() {
            // A body of an older view stays among the voted ones; the slot's own is looked up.
            match entry.digest {
                Some(digest) => entry.bind_body(digest),
                None => entry.batch = None,
            }
        }
        let highest = replica.log.keys().next_back().copied().unwrap_or(0);
        replica.next_seq = highest.max(replica.last_executed) + 1;
        replica.rebuild_in_log();
        let before = replica.last_executed;
        replica.execute_committed();
        report.reexecuted = replica.last_executed - before;
        report.view = replica.view;
        report.last_executed = replica.last_executed;
        Ok((replica, report))
    }

    /// Applies one persisted record during [`Replica::recover`].
    fn replay(&mut self, record: Durable) {
        if record
            .slot()
            .is_some_and(|seq| seq <= self.checkpoints.stable_seq)
        {
            return;
        }
        match record {
            Durable::Vote(vote) | Durable::PrePrepare(vote) => {
                let own = vote.replica == self.id;
                let Some(entry) = replay_slot(&mut self.log, vote.view, vote.seq) else {
                    return;
                };
                match vote.phase {
                    Phase::PrePrepare => {
                        if entry.committed && entry.digest != Some(vote.digest) {
                            return;
                        }
                        entry.digest = Some(vote.digest);
                        entry.pre_prepare = Some(vote);
                    }
                    Phase::Prepare if own => {
                        entry.sent_prepare = true;
                        entry.prepares.insert(vote.replica, vote);
                    }
                    Phase::Commit if own => {
                        entry.sent_commit = true;
                        entry.commits.insert(vote.replica, vote);
                    }
                    Phase::Prepare | Phase::Commit => {}
                }
            }
            Durable::Batch { seq, batch } => {
                let body = BatchBody::new(batch);
                // Written before the vote that needed it: a body this replica voted for.
                let entry = self.log.entry(seq).or_default();
                entry.durable_batch = Some(body.digest);
                entry.keep_voted(body.clone());
                entry.batch = Some(body);
            }
            Durable::Prepared(cert) => {
                let entry = self.log.entry(cert.seq()).or_default();
                let newer = entry
                    .prepared_cert
                    .as_ref()
                    .is_none_or(|held| held.pre_prepare.view <= cert.pre_prepare.view);
                if newer {
                    entry.prepared_cert = Some(cert);
                }
            }
            Durable::Committed(commits) => {
                self.commit_slot(commits, "a commit certificate in the log");
            }
            // Executing again signs the same checkpoint; the stable one was loaded first.
            Durable::Checkpoint(_) | Durable::Stable { .. } => {}
            Durable::ViewChange(view_change) => {
                if view_change.new_view > self.view {
                    self.view = view_change.new_view;
                    self.view_active = false;
                }
                self.store_view_change(view_change);
            }
            Durable::NewView(new_view) => {
                // A view is entered once; later copies only carry it past released segments.
                if new_view.view < self.view || (new_view.view == self.view && self.view_active) {
                    return;
                }
                for view_change in &new_view.view_changes {
                    self.store_view_change(view_change.clone());
                }
                let plan = plan_new_view(&new_view.view_changes);
                self.enter_view(new_view, plan);
            }
        }
    }

    // ----- getters -----

    pub fn id(&self) -> ReplicaId {
        self.id
    }

    pub fn view(&self) -> View {
        self.view
    }

    pub fn is_primary(&self) -> bool {
        self.committee.primary(self.view) == self.id
    }

    pub fn last_executed(&self) -> Seq {
        self.last_executed
    }

    pub fn stable_checkpoint(&self) -> Seq {
        self.checkpoints.stable_seq
    }

    pub fn app(&self) -> &dyn StateMachine {
        self.app.as_ref()
    }

    pub fn clients(&self) -> &ClientTable {
        &self.clients
    }

    /// Proof of equivocation this replica holds, by culprit.
    pub fn evidence(&self) -> &BTreeMap<ReplicaId, Conflict> {
        &self.evidence
    }

    /// How many snapshots this replica installed from peers.
    pub fn state_transfers(&self) -> u64 {
        self.state_transfers
    }

    /// Counts of messages dropped by the core, by reason.
    pub fn ignored(&self) -> &BTreeMap<&'static str, u64> {
        &self.ignored
    }

    /// A digest of the application state and the client table. It costs a pass over the whole
    /// state, so it is remembered until the next execution.
    pub fn state_digest(&self) -> Digest {
        if let Some((seq, digest)) = self.state_digest_cache.get() {
            if seq == self.last_executed {
                return digest;
            }
        }
        let digest = DigestBuilder::new(Domain::Content)
            .u8(b'S')
            .digest(&self.app.digest())
            .bytes(&codec::encode(&self.clients))
            .finish();
        self.state_digest_cache
            .set(Some((self.last_executed, digest)));
        digest
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            view: self.view,
            view_active: self.view_active,
            primary: self.committee.primary(self.view),
            last_executed: self.last_executed,
            stable_checkpoint: self.checkpoints.stable_seq,
            state_digest: self.state_digest(),
            pending_requests: self.pending.len(),
            evidence_against: self.evidence.keys().copied().collect(),
        }
    }

    // ----- inputs -----

    /// Arms the timers. Call once after creation, and again after a restart.
    pub fn start(&mut self, now: Duration) {
        self.now = now;
        self.set_timer(Timer::Retransmit, now + self.config.retransmit_interval);
        if !self.view_active {
            self.new_view_timer_armed = false;
            self.maybe_arm_new_view_timer();
        } else if !self.is_primary() {
            let next = self.pending.iter().next().map(|(_, d)| *d);
            self.watch(next);
        }
    }

    /// Handles a message that passed [`crate::messages::verify`].
    pub fn handle_message(&mut self, now: Duration, message: Verified<Message>) {
        if self.halted.is_some() {
            return;
        }
        self.now = now;
        let (message, envelope_digests) = message.into_parts();
        match message {
            Message::Request(envelope) => {
                let digest = envelope_digests
                    .first()
                    .copied()
                    .unwrap_or_else(|| envelope.signing_digest());
                self.on_request(Verified::own(envelope), digest)
            }
            Message::PrePrepare { header, batch } => {
                self.on_pre_prepare(header, Some(BatchBody::verified(batch, envelope_digests)))
            }
            Message::Prepare { vote, pre_prepare } => self.on_prepare(vote, pre_prepare),
            Message::Commit(vote) => self.on_commit(vote),
            Message::Checkpoint(checkpoint) => self.on_checkpoint(checkpoint),
            Message::ViewChange(view_change) => self.on_view_change(view_change),
            Message::NewView(new_view) => self.on_new_view(Arc::new(new_view)),
            Message::FetchBatch {
                seq,
                digest,
                replica,
            } => self.on_fetch_batch(seq, digest, replica),
            Message::BatchData { seq, batch } => {
                self.on_batch_data(seq, BatchBody::verified(batch, envelope_digests))
            }
            Message::FetchState { seq, replica } => self.on_fetch_state(seq, replica),
            Message::Status {
                replica,
                view,
                last_executed,
            } => self.on_status(replica, view, last_executed),
            Message::Committed { batch, commits } => {
                self.on_committed(BatchBody::verified(batch, envelope_digests), commits)
            }
            Message::StateData {
                seq,
                proof,
                snapshot,
            } => self.on_state_data(seq, proof, snapshot),
            Message::Reply(_) | Message::StatusQuery { .. } | Message::StatusReport(_) => {
                self.ignore("not a protocol message")
            }
        }
        self.after_input();
    }

    /// Handles a client request that arrived directly from its client (already verified).
    pub fn handle_request(&mut self, now: Duration, envelope: Verified<RequestEnvelope>) {
        if self.halted.is_some() {
            return;
        }
        self.now = now;
        let (envelope, envelope_digests) = envelope.into_parts();
        let digest = envelope_digests
            .first()
            .copied()
            .unwrap_or_else(|| envelope.signing_digest());
        self.on_request(Verified::own(envelope), digest);
        self.after_input();
    }

    /// Handles a timer firing.
    pub fn handle_timer(&mut self, now: Duration, timer: Timer) {
        if self.halted.is_some() {
            return;
        }
        self.now = now;
        match timer {
            Timer::ViewChange => self.on_view_change_timer(),
            Timer::Retransmit => self.on_retransmit_timer(),
        }
        self.after_input();
    }

    /// The outputs accumulated since the last call. Carry them out in field order.
    pub fn poll_ready(&mut self) -> Ready {
        let mut ready = std::mem::take(&mut self.ready);
        if self.halted.is_some() {
            // Nothing from the step that halted leaves.
            ready.messages.clear();
            ready.replies.clear();
        }
        ready
    }

    /// Why the replica halted, if it did.
    pub fn halted(&self) -> Option<&Halt> {
        self.halted.as_ref()
    }

    // ----- output helpers -----

    fn send(&mut self, to: Destination, message: Message) {
        self.ready.messages.push(Outgoing {
            to,
            message: Arc::new(message),
        });
    }

    fn broadcast(&mut self, message: Message) {
        self.send(Destination::AllReplicas, message);
    }

    fn set_timer(&mut self, timer: Timer, at: Duration) {
        self.ready.timers.push(TimerCommand::Set { timer, at });
    }

    fn cancel_timer(&mut self, timer: Timer) {
        self.ready.timers.push(TimerCommand::Cancel(timer));
    }

    /// Asks every peer for the batch of slot `seq`, once per view; retransmission repeats it.
    fn fetch_batch(&mut self, seq: Seq) {
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        let Some(digest) = entry.digest else { return };
        if entry.batch.is_some() || entry.fetch_sent {
            return;
        }
        entry.fetch_sent = true;
        let replica = self.id;
        self.broadcast(Message::FetchBatch {
            seq,
            digest,
            replica,
        });
    }

    /// Whether `peer` may get another answer of kind `help` in this interval; counts it if so.
    fn may_help(&mut self, peer: ReplicaId, help: Help) -> bool {
        let interval =
            (self.now.as_micros() / self.config.retransmit_interval.as_micros().max(1)) as u64;
        let given = self.help_given.entry((peer, help)).or_insert((interval, 0));
        if given.0 != interval {
            *given = (interval, 0);
        }
        if given.1 >= help.per_interval() {
            self.ignore("help rate-limited");
            return false;
        }
        given.1 += 1;
        true
    }

    fn ignore(&mut self, reason: &'static str) {
        *self.ignored.entry(reason).or_default() += 1;
    }

    fn sign_vote(&mut self, phase: Phase, view: View, seq: Seq, digest: Digest) -> Vote {
        let vote = Vote::new(&self.key, phase, view, seq, digest, self.id);
        self.ready.persist.push(Durable::Vote(vote.clone()));
        vote
    }

    /// Writes the body of slot `seq`'s batch to durable storage, once per digest.
    fn persist_batch(&mut self, seq: Seq) {
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        let Some(body) = &entry.batch else { return };
        if entry.durable_batch == Some(body.digest) {
            return;
        }
        entry.durable_batch = Some(body.digest);
        let batch = body.batch.clone();
        self.ready.persist.push(Durable::Batch { seq, batch });
    }

    fn after_input(&mut self) {
        self.execute_committed();
        self.try_propose();
    }

    /// Stops the replica for good (see [`Halt`]).
    fn halt(&mut self, halt: Halt) {
        if self.halted.is_some() {
            return;
        }
        tracing::error!(replica = self.id, %halt, "replica halted");
        self.ready.halt = Some(halt.clone());
        self.halted = Some(halt);
    }

    fn low(&self) -> Seq {
        self.checkpoints.stable_seq
    }

    fn in_window(&self, seq: Seq) -> bool {
        seq > self.low() && seq <= self.low() + self.config.log_window
    }

    fn primary(&self) -> ReplicaId {
        self.committee.primary(self.view)
    }

    // ----- requests (§4.2, §4.5.2) -----

    /// `digest` is the envelope's signing digest.
    fn on_request(&mut self, envelope: Verified<RequestEnvelope>, digest: Digest) {
        if self.clients.is_settled(&envelope) {
            // A retransmission: answer from the reply cache.
            let results = self.clients.cached_results(&envelope);
            if !results.is_empty() {
                self.ready.replies.push(Reply {
                    view: self.view,
                    replica: self.id,
                    client: envelope.client,
                    results,
                });
            } else {
                self.ignore("request too old");
            }
            return;
        }
        let ordered = self.in_log.contains(&digest);
        if self.is_primary() && (ordered || self.pending.contains(&digest)) {
            return;
        }
        // A backup waits for the request even if it is already ordered: it is not executed yet.
        let forward = envelope.get().clone();
        if !self.pending.contains(&digest) && !self.pending.push(envelope, digest) {
            self.ignore("pending requests full");
            return;
        }
        if !self.is_primary() && self.view_active {
            if !ordered {
                // The client may have sent it only to us, or the primary may have missed it.
                let primary = self.primary();
                self.send(Destination::Replica(primary), Message::Request(forward));
            }
            if self.watched.is_none() {
                self.watch(Some(digest));
            }
        }
    }

    /// Starts or stops the view-change timer that measures how long `digest` waits.
    fn watch(&mut self, digest: Option<Digest>) {
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
    fn try_propose(&mut self) {
        if !self.view_active
            || !self.is_primary()
            || self.state_fetch.is_some()
            || self.halted.is_some()
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
            while self
                .log
                .get(&self.next_seq)
                .is_some_and(|e| e.committed || (e.view == self.view && e.pre_prepare.is_some()))
            {
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
            let mut batch = Batch::default();
            let mut envelope_digests = Vec::new();
            let mut requests = 0;
            let mut bytes = 0;
            while let Some((envelope, _)) = self.pending.front() {
                let size: usize = envelope.requests.iter().map(|r| r.op.len() + 8).sum();
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

    // ----- normal case (§4.2) -----

    /// Checks the view and watermarks of a vote and returns its slot, reset for the current view.
    fn slot_for(&mut self, view: View, seq: Seq) -> Option<&mut Entry> {
        if view != self.view {
            self.ignore(if view < self.view {
                "stale view"
            } else {
                "future view"
            });
            return None;
        }
        if !self.in_window(seq) {
            self.ignore("outside watermarks");
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

    fn on_pre_prepare(&mut self, header: Vote, batch: Option<Arc<BatchBody>>) {
        if !self.view_active {
            self.ignore("pre-prepare during view change");
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
            if entry.committed && entry.digest != Some(header.digest) {
                // A committed slot cannot take another batch; the sender is faulty.
                self.ignore("pre-prepare conflicts with committed batch");
                return;
            }
            if let Some(batch) = &batch {
                if batch.has_duplicate_envelopes() {
                    self.ignore("batch repeats an envelope");
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
    fn maybe_send_prepare(&mut self, seq: Seq) {
        if self.is_primary() {
            return;
        }
        let view = self.view;
        let Some(entry) = self.log.get(&seq) else {
            return;
        };
        if entry.view != view || entry.sent_prepare || !entry.has_batch_for_digest() {
            if entry.view == view && !entry.sent_prepare && entry.pre_prepare.is_some() {
                self.fetch_batch(seq);
            }
            return;
        }
        let Some(pre_prepare) = entry.pre_prepare.clone() else {
            return;
        };
        self.persist_batch(seq);
        self.ready
            .persist
            .push(Durable::PrePrepare(pre_prepare.clone()));
        let vote = self.sign_vote(Phase::Prepare, view, seq, pre_prepare.digest);
        let now = self.now;
        let entry = self.log.get_mut(&seq).expect("checked above");
        entry.sent_prepare = true;
        entry.touched = now;
        entry.prepares.insert(self.id, vote.clone());
        if let Some(batch) = entry.batch.clone() {
            self.in_log.extend(batch.envelope_digests.iter().copied());
            entry.keep_voted(batch);
        }
        self.broadcast(Message::Prepare { vote, pre_prepare });
    }

    fn on_prepare(&mut self, vote: Vote, pre_prepare: Vote) {
        let seq = vote.seq;
        let from = vote.replica;
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
            None if active && !entry.committed => {
                // Learn the PRE-PREPARE from the header the backup carries; fetch the batch.
                entry.pre_prepare = Some(pre_prepare.clone());
                entry.digest = Some(pre_prepare.digest);
                entry.bind_body(pre_prepare.digest);
            }
            None => {}
        }
        match entry.prepares.get(&from) {
            Some(existing) if existing.digest != vote.digest => {
                conflicts.push(Conflict::Votes(existing.clone(), vote));
            }
            Some(_) => {}
            None => {
                entry.prepares.insert(from, vote);
            }
        }
        for conflict in conflicts {
            self.record_evidence(conflict);
        }
        self.maybe_send_prepare(seq);
        self.check_prepared(seq);
    }

    /// prepared(m, v, n, i): the PRE-PREPARE and 2f matching PREPAREs from distinct backups.
    fn check_prepared(&mut self, seq: Seq) {
        let needed = 2 * self.committee.f();
        let view = self.view;
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.view != view || entry.sent_commit {
            return;
        }
        let Some(pre_prepare) = entry.pre_prepare.clone() else {
            return;
        };
        let prepares: Vec<Vote> = entry
            .prepares
            .values()
            .filter(|p| p.digest == pre_prepare.digest)
            .take(needed)
            .cloned()
            .collect();
        if prepares.len() < needed {
            return;
        }
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
        entry.sent_commit = true;
        entry.touched = now;
        entry.commits.insert(self.id, vote.clone());
        self.broadcast(Message::Commit(vote));
        self.check_committed(seq);
    }

    fn on_commit(&mut self, vote: Vote) {
        let seq = vote.seq;
        let from = vote.replica;
        let Some(entry) = self.slot_for(vote.view, seq) else {
            return;
        };
        match entry.commits.get(&from) {
            Some(existing) if existing.digest != vote.digest => {
                let conflict = Conflict::Votes(existing.clone(), vote);
                self.record_evidence(conflict);
                return;
            }
            Some(_) => return,
            None => {
                entry.commits.insert(from, vote);
            }
        }
        self.check_committed(seq);
    }

    /// committed-local: 2f+1 matching COMMITs for the view. At least f+1 correct replicas then
    /// prepared the batch, which is what the safety argument needs (§4.2, Theorem 4.1), so a
    /// replica that missed the PRE-PREPARE may still execute once it fetches the batch.
    fn check_committed(&mut self, seq: Seq) {
        let quorum = self.committee.quorum();
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.committed {
            return;
        }
        let mut counts: BTreeMap<Digest, usize> = BTreeMap::new();
        for commit in entry.commits.values() {
            *counts.entry(commit.digest).or_default() += 1;
        }
        let Some((digest, _)) = counts.into_iter().find(|(_, count)| *count >= quorum) else {
            return;
        };
        let cert: Vec<Vote> = entry
            .commits
            .values()
            .filter(|c| c.digest == digest)
            .take(quorum)
            .cloned()
            .collect();
        self.commit_slot(cert, "2f+1 COMMITs");
        if self.log.get(&seq).is_some_and(|e| e.batch.is_none()) {
            self.fetch_batch(seq);
        }
    }

    /// Fixes a slot for good to the digest that `commits` (2f+1 matching COMMITs) certify
    /// (§4.2): a PRE-PREPARE or body of another digest is dropped. With at most f faults no two
    /// certificates fix different digests at one sequence number, so one that does halts the
    /// replica. Returns whether the slot was newly committed.
    fn commit_slot(&mut self, commits: Vec<Vote>, source: &'static str) -> bool {
        let Some(first) = commits.first() else {
            return false;
        };
        let (seq, view, digest) = (first.seq, first.view, first.digest);
        let now = self.now;
        let entry = self.log.entry(seq).or_default();
        if entry.committed {
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
        entry.committed = true;
        entry.commit_view = view;
        entry.commit_cert = Some(commits);
        entry.touched = now;
        self.newest_commit_view = self.newest_commit_view.max(view);
        true
    }

    // ----- execution (§4.2, §5.1.3) -----

    fn execute_committed(&mut self) {
        if self.state_fetch.is_some() || self.halted.is_some() {
            return;
        }
        loop {
            let seq = self.last_executed + 1;
            let Some(entry) = self.log.get_mut(&seq) else {
                return;
            };
            let (true, Some(digest)) = (entry.committed, entry.digest) else {
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

    fn execute_batch(&mut self, seq: Seq, digest: Digest, body: &BatchBody) {
        let mut replies: BTreeMap<pbft_crypto::PublicKey, Vec<RequestResult>> = BTreeMap::new();
        let mut executed_requests = Vec::new();
        let mut settled_watch = false;
        for (envelope, envelope_digest) in body.batch.envelopes.iter().zip(&body.envelope_digests) {
            let envelope_digest = *envelope_digest;
            for request in &envelope.requests {
                if self.clients.status(&envelope.client, request.timestamp) != RequestStatus::New {
                    continue;
                }
                let result = self.app.execute(&request.op);
                self.clients
                    .record(envelope.client, request.timestamp, result.clone());
                executed_requests.push((envelope.client, request.timestamp));
                replies
                    .entry(envelope.client)
                    .or_default()
                    .push(RequestResult {
                        timestamp: request.timestamp,
                        result,
                    });
            }
            self.in_log.remove(&envelope_digest);
            self.pending.remove(&envelope.client, &envelope_digest);
            if self.watched == Some(envelope_digest) {
                settled_watch = true;
            }
        }
        self.last_executed = seq;
        for (client, results) in replies {
            self.ready.replies.push(Reply {
                view: self.view,
                replica: self.id,
                client,
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
        if seq % self.config.checkpoint_interval == 0 {
            self.take_checkpoint(seq);
        }
    }

    // ----- checkpoints and garbage collection (§4.3) -----

    fn take_snapshot(&self) -> (Digest, Arc<Vec<u8>>) {
        let state = ReplicatedState {
            app: self.app.snapshot(),
            clients: self.clients.clone(),
        };
        let bytes = codec::encode(&state);
        (snapshot_digest(&bytes), Arc::new(bytes))
    }

    fn take_checkpoint(&mut self, seq: Seq) {
        let (digest, snapshot) = self.take_snapshot();
        let checkpoint = Checkpoint::new(&self.key, seq, digest, self.id);
        let own = OwnCheckpoint {
            digest,
            snapshot,
            message: Some(checkpoint.clone()),
        };
        self.checkpoints.own.insert(seq, own);
        self.ready
            .persist
            .push(Durable::Checkpoint(checkpoint.clone()));
        self.broadcast(Message::Checkpoint(checkpoint.clone()));
        self.on_checkpoint(checkpoint);
    }

    fn on_checkpoint(&mut self, checkpoint: Checkpoint) {
        if checkpoint.seq <= self.checkpoints.stable_seq
            || checkpoint.seq % self.config.checkpoint_interval != 0
        {
            self.ignore("stale or misaligned checkpoint");
            return;
        }
        let seq = checkpoint.seq;
        let from = checkpoint.replica;
        // Bound memory: keep a few of each replica's newest checkpoints.
        let per_replica = (self.config.log_window / self.config.checkpoint_interval + 2) as usize;
        let held: Vec<Seq> = self
            .checkpoints
            .votes
            .iter()
            .filter(|(_, by)| by.contains_key(&from))
            .map(|(s, _)| *s)
            .collect();
        if let Some(existing) = self
            .checkpoints
            .votes
            .get(&seq)
            .and_then(|by| by.get(&from))
        {
            if existing.state_digest != checkpoint.state_digest {
                let conflict = Conflict::Checkpoints(existing.clone(), checkpoint);
                self.record_evidence(conflict);
            }
            return;
        }
        if held.len() >= per_replica {
            if held[0] > seq {
                return;
            }
            if let Some(by) = self.checkpoints.votes.get_mut(&held[0]) {
                by.remove(&from);
            }
        }
        let by = self.checkpoints.votes.entry(seq).or_default();
        by.insert(from, checkpoint);
        let quorum = self.committee.quorum();
        let mut groups: BTreeMap<Digest, Vec<Checkpoint>> = BTreeMap::new();
        for c in by.values() {
            groups.entry(c.state_digest).or_default().push(c.clone());
        }
        if let Some((digest, mut proof)) = groups.into_iter().find(|(_, g)| g.len() >= quorum) {
            proof.truncate(quorum);
            self.make_stable(seq, digest, proof);
        }
    }

    /// A checkpoint with a 2f+1 proof becomes stable: move the low watermark, discard the log
    /// below it, and fetch the state if this replica has not reached it.
    fn make_stable(&mut self, seq: Seq, digest: Digest, proof: Vec<Checkpoint>) {
        if seq <= self.checkpoints.stable_seq {
            return;
        }
        tracing::debug!(replica = self.id, seq, "checkpoint stable");
        let sources: Vec<ReplicaId> = proof
            .iter()
            .map(|c| c.replica)
            .filter(|r| *r != self.id)
            .collect();
        let c = &mut self.checkpoints;
        c.stable_seq = seq;
        c.stable_digest = digest;
        c.stable_proof = proof;
        c.votes = c.votes.split_off(&(seq + 1));
        c.own = c.own.split_off(&seq);
        self.log = self.log.split_off(&(seq + 1));
        self.next_seq = self.next_seq.max(seq + 1);
        let own_matches = self
            .checkpoints
            .own
            .get(&seq)
            .map(|own| own.digest == digest);
        match own_matches {
            Some(true) => self.persist_stable(),
            Some(false) => {
                tracing::error!(
                    replica = self.id,
                    seq,
                    "own state differs from the stable checkpoint; fetching it"
                );
                self.checkpoints.own.remove(&seq);
                self.start_state_fetch(seq, sources);
            }
            None if self.last_executed >= seq => {
                // Executed past it without a snapshot at it (after a state transfer): nothing to do.
            }
            None => self.start_state_fetch(seq, sources),
        }
    }

    /// Writes the stable checkpoint and the state at it; older records are then released.
    fn persist_stable(&mut self) {
        let c = &self.checkpoints;
        let Some(own) = c.own.get(&c.stable_seq) else {
            return;
        };
        self.ready.persist.push(Durable::Stable {
            seq: c.stable_seq,
            proof: c.stable_proof.clone(),
            snapshot: own.snapshot.clone(),
        });
        // The records of the current view may sit in segments released after this one; carry
        // them forward so a restart never forgets which views this replica has left.
        if let Some(new_view) = self.last_new_view.clone() {
            self.ready.persist.push(Durable::NewView(new_view));
        }
        if !self.view_active {
            if let Some(own) = self.view_changes.get(&self.id).cloned() {
                self.ready.persist.push(Durable::ViewChange(own));
            }
        }
    }

    // ----- state transfer (§5.3.2) -----

    fn start_state_fetch(&mut self, seq: Seq, sources: Vec<ReplicaId>) {
        if sources.is_empty() {
            return;
        }
        tracing::info!(replica = self.id, seq, "fetching state from peers");
        let first = sources[(self.id as usize) % sources.len()];
        self.state_fetch = Some(StateFetch {
            seq,
            next_source: (self.id as usize + 1) % sources.len(),
            sources,
        });
        let replica = self.id;
        self.send(
            Destination::Replica(first),
            Message::FetchState { seq, replica },
        );
    }

    fn on_fetch_state(&mut self, seq: Seq, requester: ReplicaId) {
        // Only the stable checkpoint is served: it is the one with a proof to send along.
        let stable = self.checkpoints.stable_seq;
        if stable == 0 || seq > stable || !self.checkpoints.own.contains_key(&stable) {
            self.ignore("state not held");
            return;
        }
        if !self.may_help(requester, Help::State) {
            return;
        }
        let own = self.checkpoints.own.get(&stable).expect("checked above");
        let message = Message::StateData {
            seq: stable,
            proof: self.checkpoints.stable_proof.clone(),
            snapshot: (*own.snapshot).clone(),
        };
        self.send(Destination::Replica(requester), message);
    }

    fn on_state_data(&mut self, seq: Seq, proof: Vec<Checkpoint>, snapshot: Vec<u8>) {
        let Some(expected) = proof.first().map(|c| c.state_digest) else {
            return;
        };
        if seq <= self.last_executed || seq < self.checkpoints.stable_seq {
            self.ignore("state not needed");
            return;
        }
        if snapshot_digest(&snapshot) != expected {
            self.ignore("state does not match its proof");
            return;
        }
        let snapshot = Arc::new(snapshot);
        if let Err(error) = self.install_state(seq, expected, snapshot) {
            // The digest matched 2f+1 signed checkpoints, so only a broken application gets
            // here; keep the old state.
            tracing::error!(replica = self.id, seq, %error, "certified snapshot failed to install");
            self.ignore("state undecodable");
            return;
        }
        tracing::info!(replica = self.id, seq, "installed state from a peer");
        self.state_transfers += 1;
        self.state_fetch = None;
        if seq > self.checkpoints.stable_seq {
            self.make_stable(seq, expected, proof);
        } else {
            self.persist_stable();
        }
        let clients = &self.clients;
        self.pending
            .retain(|envelope, _| !clients.is_settled(envelope));
        self.rebuild_in_log();
    }

    /// Replaces the application state and client table with `snapshot`, taken at `seq`, and
    /// drops the log at and below it.
    fn install_state(
        &mut self,
        seq: Seq,
        digest: Digest,
        snapshot: Arc<Vec<u8>>,
    ) -> Result<(), String> {
        // The limit is the snapshot's own length, so a bad length prefix cannot allocate more.
        let state: ReplicatedState = codec::decode(&snapshot, snapshot.len() as u64)
            .map_err(|e| format!("snapshot at {seq} undecodable: {e}"))?;
        self.app
            .restore(&state.app)
            .map_err(|e| format!("snapshot at {seq} rejected by the application: {e}"))?;
        self.clients = state.clients;
        self.last_executed = seq;
        // Vouch for the state now held, so that replicas further behind find a quorum for it
        // even if some of those who signed it first have moved on.
        let checkpoint = Checkpoint::new(&self.key, seq, digest, self.id);
        self.ready
            .persist
            .push(Durable::Checkpoint(checkpoint.clone()));
        let own = OwnCheckpoint {
            digest,
            snapshot,
            message: Some(checkpoint),
        };
        self.checkpoints.own.insert(seq, own);
        self.log = self.log.split_off(&(seq + 1));
        self.next_seq = self.next_seq.max(seq + 1);
        Ok(())
    }

    fn on_fetch_batch(&mut self, seq: Seq, digest: Digest, requester: ReplicaId) {
        let Some(entry) = self.log.get(&seq) else {
            return;
        };
        let Some(batch) = entry.body_for(digest) else {
            return;
        };
        if self.may_help(requester, Help::Batch) {
            let batch = batch.batch.clone();
            self.send(
                Destination::Replica(requester),
                Message::BatchData { seq, batch },
            );
        }
    }

    fn on_batch_data(&mut self, seq: Seq, body: Arc<BatchBody>) {
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.batch.is_some() {
            return;
        }
        let Some(digest) = entry.digest else { return };
        if body.digest != digest {
            self.ignore("batch does not match");
            return;
        }
        entry.batch = Some(body);
        self.maybe_send_prepare(seq);
        self.check_prepared(seq);
    }

    // ----- catching up -----

    /// A peer reports its position: show it the view it missed, or the batches it lacks.
    fn on_status(&mut self, from: ReplicaId, view: View, last_executed: Seq) {
        if from == self.id {
            return;
        }
        if view < self.view && self.view_active {
            self.send_new_view_to(from);
        }
        if last_executed >= self.last_executed || !self.may_help(from, Help::CatchUp) {
            return;
        }
        const MAX_CATCH_UP_BATCHES: usize = 16;
        let mut sent = 0;
        for (_, entry) in self.log.range(last_executed.saturating_add(1)..) {
            if sent >= MAX_CATCH_UP_BATCHES || !entry.committed {
                break;
            }
            if let (Some(batch), Some(commits)) = (&entry.batch, &entry.commit_cert) {
                let message = Message::Committed {
                    batch: batch.batch.clone(),
                    commits: commits.clone(),
                };
                self.ready.messages.push(Outgoing {
                    to: Destination::Replica(from),
                    message: Arc::new(message),
                });
                sent += 1;
            }
        }
    }

    /// A batch with a commit certificate: committed, whatever view it was ordered in.
    fn on_committed(&mut self, body: Arc<BatchBody>, commits: Vec<Vote>) {
        let Some(first) = commits.first() else {
            return;
        };
        let (seq, digest) = (first.seq, first.digest);
        if seq <= self.last_executed || !self.in_window(seq) || body.digest != digest {
            return;
        }
        self.commit_slot(commits, "a peer's commit certificate");
        if let Some(entry) = self.log.get_mut(&seq) {
            if entry.digest == Some(digest) && entry.batch.is_none() {
                entry.batch = Some(body);
            }
        }
    }

    // ----- view change (§4.4, §4.5.2) -----

    fn on_view_change_timer(&mut self) {
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

    fn start_view_change(&mut self, new_view: View) {
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
    fn maybe_arm_new_view_timer(&mut self) {
        if self.view_active || self.new_view_timer_armed {
            return;
        }
        // VIEW-CHANGEs for later views count too: their senders have left this view as well,
        // and without them replicas stranded in different view changes would wait forever.
        let wanting = self
            .view_changes
            .values()
            .filter(|vc| vc.new_view >= self.view)
            .count();
        if wanting < self.committee.quorum() {
            return;
        }
        self.new_view_timer_armed = true;
        let at = self.now + self.view_change_timeout;
        self.set_timer(Timer::ViewChange, at);
        self.view_change_timeout =
            (self.view_change_timeout * 2).min(self.config.max_view_change_timeout);
    }

    fn store_view_change(&mut self, view_change: ViewChange) {
        let replica = view_change.replica;
        match self.view_changes.get(&replica) {
            Some(existing) if existing.new_view >= view_change.new_view => {}
            _ => {
                self.view_changes.insert(replica, view_change);
            }
        }
    }

    fn on_view_change(&mut self, view_change: ViewChange) {
        let from = view_change.replica;
        let target = view_change.new_view;
        if target < self.view || (target == self.view && self.view_active) {
            // The sender is behind: show it how the current view began.
            self.send_new_view_to(from);
            self.ignore("stale view change");
            return;
        }
        self.store_view_change(view_change);
        // §4.5.2: f+1 replicas want a higher view, so at least one correct one does; join the
        // highest view that f+1 of them have reached.
        let mut higher: Vec<View> = self
            .view_changes
            .iter()
            .filter(|(id, vc)| **id != self.id && vc.new_view > self.view)
            .map(|(_, vc)| vc.new_view)
            .collect();
        if higher.len() >= self.committee.weak_quorum() {
            higher.sort_unstable_by(|a, b| b.cmp(a));
            let join = higher[self.committee.weak_quorum() - 1];
            self.start_view_change(join);
            return;
        }
        self.maybe_arm_new_view_timer();
        self.maybe_send_new_view();
    }

    fn send_new_view_to(&mut self, peer: ReplicaId) {
        if let Some(new_view) = self.last_new_view.clone() {
            if self.may_help(peer, Help::NewView) {
                self.send(
                    Destination::Replica(peer),
                    Message::NewView((*new_view).clone()),
                );
            }
        }
    }

    /// The new primary sends NEW-VIEW once it holds 2f+1 VIEW-CHANGEs for its view.
    fn maybe_send_new_view(&mut self) {
        if self.view_active || !self.is_primary() {
            return;
        }
        let view = self.view;
        let mut chosen: Vec<ViewChange> = Vec::new();
        if let Some(own) = self
            .view_changes
            .get(&self.id)
            .filter(|vc| vc.new_view == view)
        {
            chosen.push(own.clone());
        }
        for (id, vc) in &self.view_changes {
            if *id != self.id && vc.new_view == view && chosen.len() < self.committee.quorum() {
                chosen.push(vc.clone());
            }
        }
        if chosen.len() < self.committee.quorum() {
            return;
        }
        let plan = plan_new_view(&chosen);
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

    fn on_new_view(&mut self, new_view: Arc<NewView>) {
        if new_view.view < self.view || (new_view.view == self.view && self.view_active) {
            self.ignore("stale new view");
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
            self.ignore("new view with wrong O");
            return;
        }
        for vc in &new_view.view_changes {
            self.store_view_change(vc.clone());
        }
        self.enter_view(new_view, plan);
    }

    fn enter_view(&mut self, new_view: Arc<NewView>, plan: super::NewViewPlan) {
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
            .filter(|(_, e)| !e.committed)
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
            if entry.committed && entry.digest != Some(pre_prepare.digest) {
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
    fn contradicted_commit(&self, new_view: &NewView) -> Option<Halt> {
        new_view.pre_prepares.iter().find_map(|pre_prepare| {
            let entry = self.log.get(&pre_prepare.seq)?;
            let committed = entry.digest.filter(|_| entry.committed)?;
            (committed != pre_prepare.digest && entry.commit_view < new_view.view).then_some(
                Halt::ConflictingCommit {
                    seq: pre_prepare.seq,
                    committed,
                    other: pre_prepare.digest,
                    from: "a NEW-VIEW",
                },
            )
        })
    }

    fn rebuild_in_log(&mut self) {
        self.in_log.clear();
        for entry in self.log.range(self.last_executed + 1..).map(|(_, e)| e) {
            if let Some(batch) = &entry.batch {
                self.in_log.extend(batch.envelope_digests.iter().copied());
            }
        }
    }

    // ----- retransmission -----

    fn on_retransmit_timer(&mut self) {
        let interval = self.config.retransmit_interval;
        self.set_timer(Timer::Retransmit, self.now + interval);
        if !self.view_active {
            if let Some(own) = self
                .view_changes
                .get(&self.id)
                .filter(|vc| vc.new_view == self.view)
                .cloned()
            {
                self.broadcast(Message::ViewChange(own));
            }
        } else {
            let stale_before = self.now.saturating_sub(interval);
            let mut resend = Vec::new();
            for (seq, entry) in self.log.range(self.last_executed + 1..) {
                if entry.view != self.view || entry.touched > stale_before {
                    continue;
                }
                if entry.committed {
                    if entry.batch.is_none() {
                        let digest = entry.digest.expect("committed");
                        resend.push(Message::FetchBatch {
                            seq: *seq,
                            digest,
                            replica: self.id,
                        });
                    }
                } else if let (true, Some(pp), Some(batch)) =
                    (self.is_primary(), &entry.pre_prepare, &entry.batch)
                {
                    resend.push(Message::PrePrepare {
                        header: pp.clone(),
                        batch: batch.batch.clone(),
                    });
                } else if let (Some(pp), Some(prepare)) =
                    (&entry.pre_prepare, entry.prepares.get(&self.id))
                {
                    resend.push(Message::Prepare {
                        vote: prepare.clone(),
                        pre_prepare: pp.clone(),
                    });
                } else if let (Some(digest), None) = (entry.digest, &entry.batch) {
                    resend.push(Message::FetchBatch {
                        seq: *seq,
                        digest,
                        replica: self.id,
                    });
                }
                if let Some(commit) = entry.commits.get(&self.id) {
                    resend.push(Message::Commit(commit.clone()));
                }
            }
            for message in resend {
                self.broadcast(message);
            }
        }
        let status = Message::Status {
            replica: self.id,
            view: self.view,
            last_executed: self.last_executed,
        };
        self.broadcast(status);
        // The newest own checkpoint tells lagging replicas where the others are.
        let newest = self
            .checkpoints
            .own
            .values()
            .rev()
            .find_map(|own| own.message.clone());
        if let Some(checkpoint) = newest {
            self.broadcast(Message::Checkpoint(checkpoint));
        }
        if let Some(fetch) = &mut self.state_fetch {
            let source = fetch.sources[fetch.next_source % fetch.sources.len()];
            fetch.next_source += 1;
            let seq = fetch.seq;
            let replica = self.id;
            self.send(
                Destination::Replica(source),
                Message::FetchState { seq, replica },
            );
        }
    }

    // ----- evidence -----

    fn record_evidence(&mut self, conflict: Conflict) {
        let culprit = conflict.culprit();
        if culprit == self.id {
            return;
        }
        if !self.evidence.contains_key(&culprit) {
            tracing::warn!(replica = self.id, culprit, "proof of equivocation recorded");
            self.evidence.insert(culprit, conflict);
        }
    }
}

/// The slot a replayed vote of `view` belongs to, reset if the vote is from a newer view than
/// what the slot holds; `None` for a vote from an older view.
fn replay_slot(log: &mut BTreeMap<Seq, Entry>, view: View, seq: Seq) -> Option<&mut Entry> {
    let entry = log.entry(seq).or_default();
    if view < entry.view {
        return None;
    }
    if view > entry.view {
        entry.reset_for_view(view);
    }
    Some(entry)
}

fn snapshot_digest(bytes: &[u8]) -> Digest {
    pbft_crypto::Digest::of(Domain::Content, bytes)
}
