//! The PBFT replica as a pure state machine.
//!
//! This module contains no networking code, reads no clock and uses no randomness: "now" is an
//! argument of every input, and every effect is an output. The same code runs under the tokio
//! runtime and under the deterministic simulator.
//!
//! # Driving a replica
//! 1. Create it with [`Replica::new`] and call [`Replica::start`] once.
//! 2. Feed it inputs, one at a time: [`Replica::handle_message`] for every message that passed
//!    [`crate::messages::verify`], and [`Replica::handle_timer`] when a timer it set fires.
//! 3. After each input call [`Replica::poll_ready`] and carry out the [`Ready`] in its field order:
//!    first make `persist` durable, then send `messages` and `replies`, then apply `timers`.
//!    Nothing in `messages` or `replies` may leave before `persist` is durable: a restarted
//!    replica that forgot what it signed could contradict itself, and one that forgot what it
//!    executed could lose a write a client saw acknowledged.
//! 4. After a crash, rebuild the replica from its records with [`Replica::recover`] and call
//!    [`Replica::start`].

mod clients;
mod new_view;
mod replica;
mod state_image;
pub mod votes;

use std::sync::Arc;
use std::time::Duration;

pub use clients::{Admission, ClientBounds, ClientRecord, ClientTable, RequestStatus};
pub use new_view::{plan_new_view, NewViewPlan};
pub use replica::{signed_statements, Replica, Statement};
pub use state_image::{SavedState, SavedStateError, StateImage};

use pbft_crypto::Digest;

use serde::{Deserialize, Serialize};

use crate::messages::{
    Batch, Checkpoint, Limits, Message, NewView, PreparedCert, ReplicaId, Reply, Seq, SessionKey,
    Timestamp, View, ViewChange, Vote,
};

/// Tunable parameters: the `[protocol]` table of a node's configuration, every field optional
/// (absent ones take [`ProtocolConfig::default`]'s value). Replicas of one cluster must agree on
/// `checkpoint_interval`, `log_window`, `client_window` and the client table's bounds
/// (`max_client_sessions`, `max_sessions_per_client`, `max_cached_result_bytes`,
/// `max_cached_result_bytes_per_client`); the rest is local.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolConfig {
    /// K: a checkpoint is taken every K sequence numbers.
    pub checkpoint_interval: u64,
    /// L: sequence numbers must lie in (h, h + L]; a multiple of K, at least 2K.
    pub log_window: u64,
    /// Most requests in one batch.
    pub max_batch_requests: usize,
    /// Most payload bytes in one batch.
    pub max_batch_bytes: usize,
    /// Most sequence numbers the primary has in flight (assigned but not executed).
    pub max_outstanding: u64,
    /// With a batch in flight, the primary lets the next one fill up to this many payload bytes
    /// (or `max_batch_requests`) before proposing it, for at most `batch_delay`. With nothing
    /// in flight it proposes at once. Fuller batches share the cost of their votes.
    pub batch_fill_bytes: usize,
    /// How long a filling batch waits at most; 0 proposes every batch at once.
    #[serde(rename = "batch_delay_us", with = "crate::codec::micros")]
    pub batch_delay: Duration,
    /// How long a backup waits for a request to execute before it suspects the primary; doubles
    /// on each view change that does not complete.
    #[serde(rename = "view_change_timeout_ms", with = "crate::codec::millis")]
    pub view_change_timeout: Duration,
    /// The view-change timeout stops doubling here.
    #[serde(rename = "max_view_change_timeout_ms", with = "crate::codec::millis")]
    pub max_view_change_timeout: Duration,
    /// How often unanswered protocol messages are sent again.
    #[serde(rename = "retransmit_interval_ms", with = "crate::codec::millis")]
    pub retransmit_interval: Duration,
    /// Most request envelopes waiting to be ordered or executed, in total and per client.
    pub max_pending_envelopes: usize,
    pub max_pending_per_client: usize,
    /// How many timestamps below its highest executed one a client session's request may carry.
    pub client_window: u64,
    /// Most client sessions remembered, over all keys (see [`ClientTable`]).
    pub max_client_sessions: usize,
    /// Most sessions remembered of one client key.
    pub max_sessions_per_client: usize,
    /// Most bytes of cached client results, over all sessions (see [`ClientTable`]).
    pub max_cached_result_bytes: usize,
    /// Most bytes of cached results of one client key's sessions.
    pub max_cached_result_bytes_per_client: usize,
    /// Message size limits.
    pub limits: Limits,
}

/// Room for everything in an encoded PRE-PREPARE besides its batch's envelopes: message tag,
/// signed vote header and the envelope count (about 150 bytes), with margin.
const PRE_PREPARE_HEADER_BYTES: u64 = 1024;

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            checkpoint_interval: 128,
            log_window: 256,
            max_batch_requests: 1024,
            max_batch_bytes: 4 << 20,
            max_outstanding: 2,
            batch_fill_bytes: 64 << 10,
            batch_delay: Duration::from_micros(1000),
            view_change_timeout: Duration::from_millis(2000),
            max_view_change_timeout: Duration::from_secs(60),
            retransmit_interval: Duration::from_millis(500),
            max_pending_envelopes: 65_536,
            max_pending_per_client: 256,
            client_window: 1024,
            max_client_sessions: 16_384,
            max_sessions_per_client: 1024,
            max_cached_result_bytes: 64 << 20,
            max_cached_result_bytes_per_client: 8 << 20,
            limits: Limits::default(),
        }
    }
}

/// A protocol parameter that cannot be used, named as in the `[protocol]` table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol.{field}: {reason}")]
pub struct ProtocolConfigError {
    /// The field at fault, such as `log_window` or `limits.max_batch_bytes`.
    pub field: &'static str,
    pub reason: String,
}

impl ProtocolConfig {
    /// The bounds of the replicated client table.
    pub fn client_bounds(&self) -> ClientBounds {
        ClientBounds {
            window: self.client_window,
            max_sessions: self.max_client_sessions,
            max_sessions_per_key: self.max_sessions_per_client,
            max_cached_bytes: self.max_cached_result_bytes,
            max_cached_bytes_per_key: self.max_cached_result_bytes_per_client,
            active_interval: self.checkpoint_interval,
        }
    }

    /// The configuration as read from a file, made whole and checked: the boundary limits take
    /// the log window, then [`ProtocolConfig::validate`].
    pub fn checked(mut self) -> Result<ProtocolConfig, ProtocolConfigError> {
        self.limits.log_window = self.log_window;
        self.validate()?;
        Ok(self)
    }

    /// Checks every parameter and the relations between them.
    pub fn validate(&self) -> Result<(), ProtocolConfigError> {
        let error = |field, reason: String| Err(ProtocolConfigError { field, reason });
        let k = self.checkpoint_interval;
        let l = self.log_window;
        let limits = &self.limits;
        let counts: [(&'static str, u64); 18] = [
            ("checkpoint_interval", k),
            ("max_batch_requests", self.max_batch_requests as u64),
            ("max_batch_bytes", self.max_batch_bytes as u64),
            ("max_outstanding", self.max_outstanding),
            ("batch_fill_bytes", self.batch_fill_bytes as u64),
            ("max_pending_envelopes", self.max_pending_envelopes as u64),
            ("max_pending_per_client", self.max_pending_per_client as u64),
            ("client_window", self.client_window),
            ("max_client_sessions", self.max_client_sessions as u64),
            (
                "max_sessions_per_client",
                self.max_sessions_per_client as u64,
            ),
            (
                "max_cached_result_bytes_per_client",
                self.max_cached_result_bytes_per_client as u64,
            ),
            (
                "max_cached_result_bytes",
                self.max_cached_result_bytes as u64,
            ),
            (
                "view_change_timeout_ms",
                self.view_change_timeout.as_millis() as u64,
            ),
            (
                "retransmit_interval_ms",
                self.retransmit_interval.as_millis() as u64,
            ),
            ("limits.max_message_bytes", limits.max_message_bytes),
            (
                "limits.max_envelope_requests",
                limits.max_envelope_requests as u64,
            ),
            ("limits.max_op_bytes", limits.max_op_bytes as u64),
            (
                "limits.max_batch_envelopes",
                limits.max_batch_envelopes as u64,
            ),
        ];
        for (field, value) in counts {
            if value == 0 {
                return error(field, "must be positive, not 0".into());
            }
        }
        if limits.max_batch_bytes == 0 {
            return error("limits.max_batch_bytes", "must be positive, not 0".into());
        }
        if l < 2 * k || !l.is_multiple_of(k) {
            return error(
                "log_window",
                format!(
                    "{l} must be a multiple of protocol.checkpoint_interval ({k}) and at least \
                     twice it"
                ),
            );
        }
        if limits.log_window != l {
            return error(
                "limits.log_window",
                format!("{} must equal log_window ({l})", limits.log_window),
            );
        }
        if self.batch_delay >= self.view_change_timeout {
            return error(
                "batch_delay_us",
                format!(
                    "{} µs must be below protocol.view_change_timeout_ms ({}): a filling batch \
                     would look like a stalled primary",
                    self.batch_delay.as_micros(),
                    self.view_change_timeout.as_millis()
                ),
            );
        }
        if self.max_view_change_timeout < self.view_change_timeout {
            return error(
                "max_view_change_timeout_ms",
                format!(
                    "{} is below protocol.view_change_timeout_ms ({})",
                    self.max_view_change_timeout.as_millis(),
                    self.view_change_timeout.as_millis()
                ),
            );
        }
        let per_client_bounds = [
            (
                "max_pending_per_client",
                self.max_pending_per_client,
                "max_pending_envelopes",
                self.max_pending_envelopes,
            ),
            (
                "max_sessions_per_client",
                self.max_sessions_per_client,
                "max_client_sessions",
                self.max_client_sessions,
            ),
            (
                "max_cached_result_bytes_per_client",
                self.max_cached_result_bytes_per_client,
                "max_cached_result_bytes",
                self.max_cached_result_bytes,
            ),
        ];
        for (field, per_client, total_field, total) in per_client_bounds {
            if per_client > total {
                return error(
                    field,
                    format!("{per_client} exceeds protocol.{total_field} ({total})"),
                );
            }
        }
        if self.max_batch_bytes > limits.max_batch_bytes {
            return error(
                "max_batch_bytes",
                format!(
                    "{} exceeds protocol.limits.max_batch_bytes ({}): backups would refuse this \
                     replica's batches when it is primary",
                    self.max_batch_bytes, limits.max_batch_bytes
                ),
            );
        }
        // A PRE-PREPARE is its batch plus a signed header; the slack covers the header.
        if limits.max_batch_bytes as u64 + PRE_PREPARE_HEADER_BYTES > limits.max_message_bytes {
            return error(
                "limits.max_batch_bytes",
                format!(
                    "{} plus {PRE_PREPARE_HEADER_BYTES} bytes of PRE-PREPARE header exceeds \
                     protocol.limits.max_message_bytes ({}): a full batch could not be sent",
                    limits.max_batch_bytes, limits.max_message_bytes
                ),
            );
        }
        if limits.max_message_bytes > u64::from(u32::MAX) {
            return error(
                "limits.max_message_bytes",
                format!(
                    "{} exceeds {}, the largest frame the transport carries",
                    limits.max_message_bytes,
                    u32::MAX
                ),
            );
        }
        Ok(())
    }
}

/// Why a replica cannot be built, or rebuilt from its records.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Config(#[from] ProtocolConfigError),
    /// The key does not belong to the replica's id in the committee.
    #[error("the key given is not replica {id}'s key in the cluster")]
    WrongKey { id: ReplicaId },
    /// A stored or transferred snapshot does not hash to the digest its proof certifies.
    #[error("the snapshot at {seq} does not match its checkpoint proof")]
    SnapshotMismatch { seq: Seq },
    /// A stable state in the replica's own records does not apply.
    #[error("the stored state at {seq} does not apply")]
    SavedStateRefused {
        seq: Seq,
        #[source]
        source: SavedStateError,
    },
    /// A snapshot's bytes do not decode.
    #[error("the snapshot at {seq} is undecodable")]
    SnapshotUndecodable {
        seq: Seq,
        #[source]
        source: crate::codec::CodecError,
    },
    /// The application refused a snapshot.
    #[error("the snapshot at {seq} was refused by the application")]
    SnapshotRefused {
        seq: Seq,
        #[source]
        source: crate::app::SnapshotError,
    },
}

/// The replica's timers; the shell keeps at most one deadline per timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// A request waited too long, or a view change did not complete.
    ViewChange,
    /// Time to send unanswered messages again.
    Retransmit,
    /// A filling batch waited `batch_delay`: the primary proposes it.
    Batch,
}

impl Timer {
    /// Every timer, in [`Timer::index`] order.
    pub const ALL: [Timer; 3] = [Timer::ViewChange, Timer::Retransmit, Timer::Batch];
    pub const COUNT: usize = Timer::ALL.len();

    /// A dense index for tables of timers.
    pub fn index(self) -> usize {
        match self {
            Timer::ViewChange => 0,
            Timer::Retransmit => 1,
            Timer::Batch => 2,
        }
    }
}

/// Set or cancel a timer. Setting one that is already set moves its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerCommand {
    Set { timer: Timer, at: Duration },
    Cancel(Timer),
}

/// Where an outgoing message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Replica(ReplicaId),
    /// Every replica but this one.
    AllReplicas,
}

/// A message to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub to: Destination,
    pub message: Arc<Message>,
}

/// What a replica must have on disk before any message of the same step leaves. Replaying
/// these records in order ([`Replica::recover`]) rebuilds everything the replica signed in views
/// it has not left, the log since its stable checkpoint and the state at that checkpoint, so a
/// restarted replica neither loses committed requests nor contradicts itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durable {
    /// A vote this replica signed: its PRE-PREPARE as primary, its PREPARE or its COMMIT.
    Vote(Vote),
    /// The primary's PRE-PREPARE a backup answers with its PREPARE.
    PrePrepare(Vote),
    /// The body of the batch bound to slot `seq`, before any vote for it leaves.
    Batch { seq: Seq, batch: Batch },
    /// A prepared certificate, before this replica's COMMIT leaves: view changes must carry it.
    Prepared(PreparedCert),
    /// 2f+1 matching COMMITs, before the batch's replies leave.
    Committed(Vec<Vote>),
    /// This replica's CHECKPOINT.
    Checkpoint(Checkpoint),
    /// A stable checkpoint and the state at it, whole or as the partitions that changed since
    /// the previous one; records of slots at or below `seq` are no longer needed, but segments
    /// from the newest base on are kept.
    Stable {
        seq: Seq,
        proof: Vec<Checkpoint>,
        state: SavedState,
    },
    /// This replica's VIEW-CHANGE: it has left every view below `new_view`.
    ViewChange(ViewChange),
    /// The NEW-VIEW that started the view this replica entered (its own, as primary, or one it
    /// accepted).
    NewView(Arc<NewView>),
    /// The first record of a data directory, written when it is initialised. `rejoining`: the
    /// replica lost its data and comes back silent (see [`Rejoin`]).
    Created { rejoining: bool },
    /// Where a rejoining replica stands; written when it changes, and again at the start of
    /// every segment while it still restrains the replica.
    Rejoin(Rejoin),
}

/// A replica that lost its durable state may have signed anything up to the point its peers
/// have reached; it comes back silent and learns that point (TOCS 2002, section 4.3). See the
/// replica's `rejoin` module for the rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoin {
    /// Learned from the positions 2f+1 peers report; `None` until then.
    pub point: Option<RejoinPoint>,
    /// No signed message leaves while set: until `point` is known and a stable checkpoint is
    /// above `point.seq`.
    pub silent: bool,
}

/// Bounds on what a replica may have signed before it lost its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinPoint {
    /// H: no PRE-PREPARE, PREPARE, COMMIT or CHECKPOINT it signed is above this.
    pub seq: Seq,
    /// No VIEW-CHANGE or NEW-VIEW it signed is for a view above this.
    pub view: View,
}

impl Durable {
    /// The sequence number a record is about, if it belongs to one log slot.
    pub fn slot(&self) -> Option<Seq> {
        match self {
            Durable::Vote(vote) | Durable::PrePrepare(vote) => Some(vote.seq),
            Durable::Batch { seq, .. } => Some(*seq),
            Durable::Prepared(cert) => Some(cert.seq()),
            Durable::Committed(commits) => commits.first().map(|c| c.seq),
            Durable::Checkpoint(_)
            | Durable::Stable { .. }
            | Durable::ViewChange(_)
            | Durable::NewView(_)
            | Durable::Created { .. }
            | Durable::Rejoin(_) => None,
        }
    }
}

/// Whether durable records kept in segments, a new one started at each stable checkpoint, may
/// forget a segment followed by one that starts at `next_start` once the stable checkpoint is
/// `stable`. Its records are about slots up to the stable checkpoint at the time of writing
/// (below `next_start`) plus the log window L (`retain_window`), and the records that say which
/// view the replica is in are written again at the start of every segment.
pub fn segment_released(next_start: Seq, stable: Seq, retain_window: u64) -> bool {
    stable >= next_start.saturating_add(retain_window)
}

/// The stable checkpoint to release segments by when the newest base of the state was written
/// at `base` ([`Durable::Stable`]): the segment holding the base, and every later one, stay for
/// as long as the base is the newest.
pub fn release_point(stable: Seq, base: Seq, retain_window: u64) -> Seq {
    stable.min(base.saturating_add(retain_window))
}

/// The sequence number of the newest base of the state among `records`, 0 if none.
pub fn newest_base<'a>(records: impl IntoIterator<Item = &'a Durable>) -> Seq {
    records
        .into_iter()
        .filter_map(|record| match record {
            Durable::Stable { seq, state, .. } if state.is_base() => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// What [`Replica::recover`] rebuilt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The sequence number of the snapshot the state was loaded from.
    pub snapshot_seq: Seq,
    /// Records replayed.
    pub records: usize,
    /// Committed batches executed again on top of the snapshot.
    pub reexecuted: u64,
    pub view: View,
    pub last_executed: Seq,
}

/// A batch this replica executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub seq: Seq,
    pub view: View,
    pub digest: Digest,
    /// The requests that executed (those already executed earlier are skipped), in order.
    pub requests: Vec<(SessionKey, Timestamp)>,
}

/// What the replica asks its driver to do, in order: persist, send, reply, set timers.
#[derive(Debug, Default)]
pub struct Ready {
    pub persist: Vec<Durable>,
    pub messages: Vec<Outgoing>,
    pub replies: Vec<Reply>,
    pub timers: Vec<TimerCommand>,
    /// Batches executed during this step, in order (for metrics and checkers).
    pub executed: Vec<Executed>,
    /// Set once, when the replica stops for good: the driver must make `persist` durable and
    /// then stop the replica. Nothing of the halting step is in `messages` or `replies`.
    pub halt: Option<Halt>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.timers.is_empty()
            && self.executed.is_empty()
            && self.halt.is_none()
    }
}

/// Why a replica stopped: it saw proof that more than f replicas are faulty. Going on could
/// only make things worse (execute a batch that contradicts a committed one), so the safe
/// answer is to stop and let an operator look.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// Two certificates fix different batches at one sequence number.
    #[error(
        "more than f replicas are faulty: sequence number {seq} is committed with batch \
         {committed:?}, but {from} fixes batch {other:?} there"
    )]
    ConflictingCommit {
        seq: Seq,
        committed: Digest,
        other: Digest,
        /// What carried the other batch.
        from: &'static str,
    },
}

/// Why the core dropped a verified message: each is counted, and none changes state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ignored {
    /// A reply or status message sent to a replica.
    NotProtocolMessage,
    /// A retransmitted request older than the reply cache.
    RequestTooOld,
    /// No room for another waiting request.
    PendingFull,
    /// A vote for a view this replica has left.
    StaleView,
    /// A vote for a view this replica has not entered.
    FutureView,
    /// A sequence number outside [h, h + L].
    OutsideWatermarks,
    /// A PRE-PREPARE while no view is active.
    PrePrepareDuringViewChange,
    /// A PRE-PREPARE for a committed slot naming another batch.
    PrePrepareConflictsWithCommit,
    /// A batch carrying one envelope twice.
    BatchRepeatsEnvelope,
    /// A batch body whose digest is not the one awaited.
    BatchMismatch,
    /// A CHECKPOINT at or below the stable one, or not at a multiple of K.
    StaleCheckpoint,
    /// A VIEW-CHANGE for a view already entered.
    StaleViewChange,
    /// A NEW-VIEW for a view already entered.
    StaleNewView,
    /// A NEW-VIEW whose O does not follow from V.
    WrongNewView,
    /// A state request for a checkpoint this replica cannot serve.
    StateNotHeld,
    /// A state this replica already has.
    StateNotNeeded,
    /// A snapshot whose digest differs from its proof.
    StateMismatch,
    /// A certified snapshot the application refused.
    StateUndecodable,
    /// A peer asking for more help than its share.
    HelpRateLimited,
    /// A message this replica signed, held back while it rejoins after a lost disk.
    SilentWhileRejoining,
}

impl Ignored {
    /// A stable label for counters and status reports.
    pub fn label(self) -> &'static str {
        match self {
            Ignored::NotProtocolMessage => "not a protocol message",
            Ignored::RequestTooOld => "request too old",
            Ignored::PendingFull => "pending requests full",
            Ignored::StaleView => "stale view",
            Ignored::FutureView => "future view",
            Ignored::OutsideWatermarks => "outside watermarks",
            Ignored::PrePrepareDuringViewChange => "pre-prepare during view change",
            Ignored::PrePrepareConflictsWithCommit => "pre-prepare conflicts with committed batch",
            Ignored::BatchRepeatsEnvelope => "batch repeats an envelope",
            Ignored::BatchMismatch => "batch does not match",
            Ignored::StaleCheckpoint => "stale or misaligned checkpoint",
            Ignored::StaleViewChange => "stale view change",
            Ignored::StaleNewView => "stale new view",
            Ignored::WrongNewView => "new view with wrong O",
            Ignored::StateNotHeld => "state not held",
            Ignored::StateNotNeeded => "state not needed",
            Ignored::StateMismatch => "state does not match its proof",
            Ignored::StateUndecodable => "state undecodable",
            Ignored::HelpRateLimited => "help rate-limited",
            Ignored::SilentWhileRejoining => "signed message held back while rejoining",
        }
    }
}

/// Proof that a replica signed two conflicting messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Two votes of one phase for the same view and sequence number with different digests.
    Votes(Vote, Vote),
    /// Two checkpoints for the same sequence number with different state digests.
    Checkpoints(Checkpoint, Checkpoint),
}

impl Conflict {
    /// The replica both messages are signed by.
    pub fn culprit(&self) -> ReplicaId {
        match self {
            Conflict::Votes(a, _) => a.replica,
            Conflict::Checkpoints(a, _) => a.replica,
        }
    }
}

/// A snapshot of a replica's position, for status queries and checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: ReplicaId,
    pub view: View,
    /// False while a view change is in progress.
    pub view_active: bool,
    pub primary: ReplicaId,
    pub last_executed: Seq,
    pub stable_checkpoint: Seq,
    pub state_digest: Digest,
    pub pending_requests: usize,
    /// Replicas this one holds proof of equivocation against.
    pub evidence_against: Vec<ReplicaId>,
    /// Rejoining after a lost disk, and still silent (see [`Rejoin`]).
    pub silent: bool,
}
