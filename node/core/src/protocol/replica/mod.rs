//! [`Replica`]: its state, its inputs and its outputs. The rules live in one file per section of
//! Castro and Liskov, "Practical Byzantine Fault Tolerance and Proactive Recovery", ACM TOCS
//! 20(4), 2002, whose section numbers the comments cite:
//! - [`normal_case`]: requests, PRE-PREPARE, PREPARE, COMMIT and execution (4.2);
//! - [`checkpoints`]: checkpoints and garbage collection (4.3);
//! - [`view_change`]: VIEW-CHANGE, NEW-VIEW and entering a view (4.4, 4.5.2);
//! - [`state_transfer`]: fetching and installing a stable checkpoint's state (5.3.2);
//! - [`recovery`]: rebuilding a replica from its durable records after a crash;
//! - [`rejoin`]: coming back silent after losing them (4.3, recovery);
//! - [`retransmission`]: resending, fetching batch bodies and helping peers catch up.
//!
//! The quorum rules (distinct signers, one certificate, conflicting votes as evidence) are
//! [`super::votes::VoteSet`]'s.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use pbft_crypto::{Digest, KeyPair, Signer};

mod checkpoints;
mod normal_case;
mod recovery;
mod rejoin;
mod retransmission;
mod state_transfer;
mod view_change;

use checkpoints::{Checkpoints, OwnCheckpoint, Saved};
pub use rejoin::{signed_statements, Statement};
use retransmission::Help;
use state_transfer::StateFetch;

use super::{
    clients::{ClientTable, PendingRequests},
    state_image::current_digest,
    votes::VoteSet,
    Conflict, Destination, Durable, Halt, Ignored, Outgoing, ProtocolConfig, Ready, Rejoin,
    ReplicaError, Status, Timer, TimerCommand,
};
use crate::{
    app::StateMachine,
    committee::Committee,
    messages::{
        Batch, Message, NewView, Phase, PreparedCert, ReplicaId, RequestEnvelope, Seq, Verified,
        View, ViewChange, Vote,
    },
    tally::Tally,
};

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
    prepares: VoteSet<Vote>,
    commits: VoteSet<Vote>,
    /// 2f+1 matching COMMITs, once committed (to help replicas that missed them).
    commit_cert: Option<Vec<Vote>>,
    /// The certificate from the highest view this slot prepared in; survives view changes.
    prepared_cert: Option<PreparedCert>,
    /// What this replica signed in `view`.
    signed: Signed,
    /// A FETCH-BATCH went out in this view.
    fetch_sent: bool,
    /// The view of the 2f+1 COMMITs that fixed `digest` for good; no later message may bind
    /// this slot to another. `None` while the slot is open.
    committed_in: Option<View>,
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
        self.prepares = VoteSet::new();
        self.commits = VoteSet::new();
        self.signed = Signed::Nothing;
        self.fetch_sent = false;
        if !self.is_committed() {
            self.digest = None;
        }
    }

    fn is_committed(&self) -> bool {
        self.committed_in.is_some()
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

/// The votes this replica signed for a slot in one view, each at most once. The primary's
/// PRE-PREPARE stands for its PREPARE, and a backup commits on 2f PREPAREs even before it holds
/// the batch to prepare with, so a COMMIT may come without, or before, a PREPARE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Signed {
    #[default]
    Nothing,
    Prepare,
    Commit,
    PrepareAndCommit,
}

impl Signed {
    fn has_prepare(self) -> bool {
        matches!(self, Signed::Prepare | Signed::PrepareAndCommit)
    }

    fn has_commit(self) -> bool {
        matches!(self, Signed::Commit | Signed::PrepareAndCommit)
    }

    fn with_prepare(self) -> Signed {
        if self.has_commit() {
            Signed::PrepareAndCommit
        } else {
            Signed::Prepare
        }
    }

    fn with_commit(self) -> Signed {
        if self.has_prepare() {
            Signed::PrepareAndCommit
        } else {
            Signed::Commit
        }
    }
}

/// Bodies voted for that a slot keeps across views. Each view's primary can propose one body
/// per slot, so this bounds what faulty primaries can make a replica hold.
const MAX_VOTED_BODIES: usize = 4;

/// A PBFT replica. See the module documentation of [`crate::protocol`] for how to drive it.
pub struct Replica {
    id: ReplicaId,
    committee: Committee,
    config: ProtocolConfig,
    key: Signer,
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
    /// `last_executed` at the previous retransmission tick, to tell a stranded replica.
    executed_at_last_probe: Seq,

    pending: PendingRequests,
    /// When the batch the primary holds back to fill began to wait.
    filling_since: Option<Duration>,
    /// Envelopes in log slots above `last_executed` (the primary does not order them twice).
    in_log: HashSet<Digest>,
    /// The envelope whose wait the view-change timer is measuring (§4.5.2).
    watched: Option<Digest>,
    view_change_timeout: Duration,
    /// In a view change, whether the timer for giving up on `view` runs. It starts only once
    /// 2f+1 replicas want the view (§4.5.2), so a replica alone cannot race through views.
    new_view_timer_armed: bool,

    /// The latest VIEW-CHANGE from each replica (own included).
    view_changes: Tally<ViewChange>,
    /// The NEW-VIEW that started the current view, for replicas that missed it.
    last_new_view: Option<Arc<NewView>>,

    evidence: BTreeMap<ReplicaId, Conflict>,
    /// Per peer and kind of help: the interval it was last given in, and how often then.
    help_given: BTreeMap<(ReplicaId, Help), (u64, u32)>,
    /// Per peer: the interval it was last sent batches or state in, and how many bytes then.
    help_bytes: BTreeMap<ReplicaId, (u64, usize)>,
    state_transfers: u64,
    ignored: BTreeMap<Ignored, u64>,
    /// The state digest and the sequence number it was computed at (the state is a function of
    /// the last executed sequence number).
    state_digest_cache: Cell<Option<(Seq, Digest)>>,
    /// What the storage holds of the state.
    saved: Saved,
    /// The highest view of any commit certificate this replica holds. A primary whose view is
    /// below it knows the cluster moved on and proposes nothing more in its own view.
    newest_commit_view: View,
    /// Set when the replica saw proof of more than f faults; it then takes no more input.
    halted: Option<Halt>,
    /// Set for a replica that lost its data and rejoined ([`rejoin`]).
    rejoin: Option<Rejoin>,
    /// While the rejoin point is unknown: each peer's highest reported view and last executed
    /// sequence number.
    rejoin_reports: Tally<(View, Seq)>,
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
    ) -> Result<Replica, ReplicaError> {
        config.validate()?;
        if committee.key(id) != Some(&key.public()) {
            return Err(ReplicaError::WrongKey { id });
        }
        let mut replica = Replica {
            id,
            clients: ClientTable::new(config.client_bounds()),
            filling_since: None,
            pending: PendingRequests::new(
                config.max_pending_envelopes,
                config.max_pending_per_client,
            ),
            view_change_timeout: config.view_change_timeout,
            new_view_timer_armed: false,
            key: committee.signer(key),
            committee,
            config,
            app,
            view: 0,
            view_active: true,
            log: BTreeMap::new(),
            last_executed: 0,
            next_seq: 1,
            checkpoints: Checkpoints::default(),
            state_fetch: None,
            executed_at_last_probe: 0,
            in_log: HashSet::new(),
            watched: None,
            view_changes: Tally::new(),
            last_new_view: None,
            evidence: BTreeMap::new(),
            help_given: BTreeMap::new(),
            help_bytes: BTreeMap::new(),
            state_transfers: 0,
            ignored: BTreeMap::new(),
            state_digest_cache: Cell::new(None),
            saved: Saved::default(),
            newest_commit_view: 0,
            halted: None,
            rejoin: None,
            rejoin_reports: Tally::new(),
            now: Duration::ZERO,
            ready: Ready::default(),
        };
        let image = replica.take_image();
        replica.checkpoints.stable_digest = image.digest();
        let own = OwnCheckpoint {
            image,
            message: None,
        };
        replica.checkpoints.own.insert(0, own);
        Ok(replica)
    }

    pub fn id(&self) -> ReplicaId {
        self.id
    }

    pub fn view(&self) -> View {
        self.view
    }

    pub fn committee(&self) -> &Committee {
        &self.committee
    }

    /// The replica's key, signing for its cluster.
    pub fn signer(&self) -> &Signer {
        &self.key
    }

    /// False while a view change is in progress.
    pub fn is_view_active(&self) -> bool {
        self.view_active
    }

    /// Whether a state transfer is under way.
    pub fn is_fetching_state(&self) -> bool {
        self.state_fetch.is_some()
    }

    /// About how many bytes the state at the stable checkpoint holds, when this replica holds
    /// it.
    pub fn stable_state_bytes(&self) -> Option<u64> {
        (self.checkpoints.own)
            .get(&self.checkpoints.stable_seq)
            .map(|own| own.image.bytes())
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
    pub fn ignored(&self) -> &BTreeMap<Ignored, u64> {
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
        let digest = current_digest(self.app.as_ref(), &self.clients);
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
            silent: self.silent(),
        }
    }

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
                ..
            } => self.on_status(replica, view, last_executed),
            Message::Committed { batch, commits } => {
                self.on_committed(BatchBody::verified(batch, envelope_digests), commits)
            }
            Message::StateManifest {
                seq,
                proof,
                partitions,
            } => self.on_state_manifest(seq, proof, partitions),
            Message::FetchStateChunk {
                seq,
                partition,
                piece,
                replica,
            } => self.on_fetch_state_chunk(seq, partition, piece, replica),
            Message::StateChunk {
                seq,
                replica,
                partition,
                piece,
                len,
                data,
            } => self.on_state_chunk(seq, replica, partition, piece, len, data),
            Message::Read(read) => self.on_read(read),
            Message::Reply(_) | Message::StatusQuery { .. } | Message::StatusReport(_) => {
                self.ignore(Ignored::NotProtocolMessage)
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
            // Proposing is what every input ends with.
            Timer::Batch => {}
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

    fn send(&mut self, to: Destination, message: Message) {
        if !self.may_send(&message) {
            // Every path that signs checks first; this only guards against one that forgot.
            debug_assert!(
                false,
                "a {} signed at or below the rejoin point",
                message.kind()
            );
            self.ignore(Ignored::SilentWhileRejoining);
            return;
        }
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

    /// The retransmission interval `now` falls in: help is metered per interval.
    fn help_interval(&self) -> u64 {
        (self.now.as_micros() / self.config.retransmit_interval.as_micros().max(1)) as u64
    }

    /// Whether `peer` may be sent `bytes` more of batches or state in this interval (the first
    /// answer of an interval always may, however large); counts them if so. The budget is one
    /// message's worth, `limits.max_message_bytes`.
    fn may_send_help_bytes(&mut self, peer: ReplicaId, bytes: usize) -> bool {
        let interval = self.help_interval();
        let budget = usize::try_from(self.config.limits.max_message_bytes).unwrap_or(usize::MAX);
        let given = self.help_bytes.entry(peer).or_insert((interval, 0));
        if given.0 != interval {
            *given = (interval, 0);
        }
        if given.1 > 0 && given.1.saturating_add(bytes) > budget {
            self.ignore(Ignored::HelpRateLimited);
            return false;
        }
        given.1 = given.1.saturating_add(bytes);
        true
    }

    /// Whether `peer` may get another answer of kind `help` in this interval; counts it if so.
    fn may_help(&mut self, peer: ReplicaId, help: Help) -> bool {
        let interval = self.help_interval();
        let given = self.help_given.entry((peer, help)).or_insert((interval, 0));
        if given.0 != interval {
            *given = (interval, 0);
        }
        if given.1 >= help.per_interval() {
            self.ignore(Ignored::HelpRateLimited);
            return false;
        }
        given.1 += 1;
        true
    }

    fn ignore(&mut self, reason: Ignored) {
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
