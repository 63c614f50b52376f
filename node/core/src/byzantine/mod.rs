//! Named faulty behaviours that wrap a correct replica.
//!
//! A faulty replica runs the unmodified [`Replica`](crate::protocol::Replica) and its honest
//! [`Driver`](crate::driver::Driver), and passes every [`Ready`] through a [`Behavior`], which
//! decides what actually leaves: the honest messages, altered or extra ones, raw bytes, or
//! nothing. Neither the protocol nor the driver is forked or told, so the misbehaviour is exactly
//! the strategy's and nothing else. [`Harness`] drives a behaviour for the simulator and the node
//! process alike:
//!
//! 1. after each input, take the replica's `Ready` (its `executed` list first: a behaviour
//!    ignores it);
//! 2. call [`Behavior::transform`] with a [`Context`] holding the replica's key and a seeded RNG;
//! 3. carry out the [`FaultyOutput`] like a `Ready`: persist, then send, reply and set timers;
//! 4. wake up at [`Behavior::next_wakeup`] even without input, and send what
//!    [`Behavior::poll_delayed`] releases (behaviours that delay messages hold them until then).
//!
//! Behaviours draw randomness only from [`Context::rng`] and read no clock, so a simulation with a
//! faulty replica still replays from its seed.

pub mod clients;
pub mod corrupt;
pub mod crafted;
pub mod equivocating_backup;
pub mod equivocating_primary;
pub mod equivocator;
pub mod forged_signatures;
mod harness;
pub mod replay;
pub mod shun;
pub mod silent;
pub mod slow;
pub mod stale_view;
pub mod twin;
pub mod unlisted;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pbft_crypto::{Digest, Domain, Signature, Signer};
use rand::{Rng, RngCore};

pub use clients::{AttackMessage, ClientAttack, FaultyClient, UnknownAttack};
pub use corrupt::Corrupt;
pub use crafted::{FarFuture, SelectiveViewChange, Unsolicited, WrongNewView};
pub use equivocating_backup::EquivocatingBackup;
pub use equivocating_primary::{EquivocatingPrimary, EquivocationMode};
pub use equivocator::Equivocator;
pub use forged_signatures::ForgedSignatures;
pub use harness::{Harness, RawEffects};
pub use replay::Replay;
pub use shun::Shun;
pub use silent::Silent;
pub use slow::Slow;
pub use stale_view::StaleView;
pub use twin::Twin;
pub use unlisted::UnlistedClients;

use crate::committee::Committee;
use crate::messages::{Message, ReplicaId, Reply};
use crate::protocol::{Destination, Durable, Outgoing, ProtocolConfig, Ready, TimerCommand};

/// A message or raw bytes to send.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A message; the driver encodes it as usual.
    Message(Arc<Message>),
    /// Bytes sent as they are, in place of an encoded message.
    Garbage(Vec<u8>),
}

/// One thing a faulty replica sends.
#[derive(Clone, Debug)]
pub struct FaultySend {
    pub to: Destination,
    pub payload: Payload,
}

impl FaultySend {
    /// Sends `message` to `to`.
    pub fn message(to: Destination, message: Arc<Message>) -> FaultySend {
        FaultySend {
            to,
            payload: Payload::Message(message),
        }
    }
}

impl From<Outgoing> for FaultySend {
    fn from(outgoing: Outgoing) -> FaultySend {
        FaultySend::message(outgoing.to, outgoing.message)
    }
}

/// What a faulty replica actually does with one `Ready` of its wrapped correct replica. Carry it
/// out in field order, as a `Ready`: make `persist` durable before anything in `sends` leaves.
#[derive(Debug, Default)]
pub struct FaultyOutput {
    pub persist: Vec<Durable>,
    pub sends: Vec<FaultySend>,
    pub replies: Vec<Reply>,
    pub timers: Vec<TimerCommand>,
}

/// What a behaviour may use besides the `Ready`: the faulty replica's identity and key (to sign
/// conflicting messages), the cluster, the simulated or real time, and the only randomness it may
/// draw from.
pub struct Context<'a> {
    pub id: ReplicaId,
    pub key: &'a Signer,
    pub committee: &'a Committee,
    pub now: Duration,
    /// Seeded by the simulator, so that a run replays from its seed.
    pub rng: &'a mut dyn RngCore,
}

impl Context<'_> {
    /// Every replica but this one, in id order: what [`Destination::AllReplicas`] reaches.
    pub fn peers(&self) -> Vec<ReplicaId> {
        self.committee.ids().filter(|&i| i != self.id).collect()
    }

    /// The replicas `to` reaches.
    pub fn recipients(&self, to: Destination) -> Vec<ReplicaId> {
        match to {
            Destination::AllReplicas => self.peers(),
            Destination::Replica(id) => vec![id],
        }
    }

    /// A digest of random bytes: content no correct replica has seen.
    pub fn random_digest(&mut self) -> Digest {
        let mut bytes = [0u8; 32];
        self.rng.fill_bytes(&mut bytes);
        Digest::of(Domain::Content, &bytes)
    }
}

/// A faulty strategy wrapped around a correct replica's outputs.
pub trait Behavior: Send {
    /// The kebab-case name of the behaviour, as [`BehaviorKind`] spells it.
    fn name(&self) -> &'static str;

    /// Decides what the replica does with `ready` instead of carrying it out faithfully.
    /// `ready.executed` is ignored; take it before the call if the caller needs it.
    fn transform(&mut self, ready: Ready, ctx: &mut Context<'_>) -> FaultyOutput;

    /// Returns the sends this behaviour held back whose time has come by `now`, to be sent like
    /// those of [`Behavior::transform`]. Drivers call it once [`Behavior::next_wakeup`] has
    /// passed; calling it earlier returns nothing that is not due.
    fn poll_delayed(&mut self, _now: Duration) -> Vec<FaultySend> {
        Vec::new()
    }

    /// When [`Behavior::poll_delayed`] next has something to release, on the clock of
    /// [`Context::now`]; `None` while nothing is held. Drivers must wake up then even if no input
    /// arrives.
    fn next_wakeup(&self) -> Option<Duration> {
        None
    }
}

/// Carries out `ready` faithfully: what a correct replica does.
pub fn honest(ready: Ready) -> FaultyOutput {
    FaultyOutput {
        persist: ready.persist,
        sends: ready.messages.into_iter().map(FaultySend::from).collect(),
        replies: ready.replies,
        timers: ready.timers,
    }
}

/// Splits `ready` into what is carried out faithfully (persist, replies, timers) and the messages
/// a behaviour decides about.
fn unsent(ready: Ready) -> (FaultyOutput, Vec<Outgoing>) {
    let output = FaultyOutput {
        persist: ready.persist,
        sends: Vec::new(),
        replies: ready.replies,
        timers: ready.timers,
    };
    (output, ready.messages)
}

/// The named behaviours, for command lines and scenario tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BehaviorKind {
    /// [`Silent`].
    Silent,
    /// [`EquivocatingPrimary`] in [`EquivocationMode::Split`], honest as a backup.
    EquivocatePrimarySplit,
    /// [`EquivocatingPrimary`] in [`EquivocationMode::Minority`], honest as a backup.
    EquivocatePrimaryMinority,
    /// [`EquivocatingBackup`].
    EquivocateBackup,
    /// [`ForgedSignatures`].
    ForgeSignatures,
    /// [`Replay`].
    Replay,
    /// [`StaleView`].
    StaleView,
    /// [`Corrupt`].
    Corrupt,
    /// [`Equivocator`] in [`EquivocationMode::Split`]: equivocates as primary and as backup.
    Equivocate,
    /// [`Equivocator`] in [`EquivocationMode::Minority`].
    EquivocateMinority,
    /// [`Slow`].
    Slow,
    /// [`SelectiveViewChange`].
    SelectiveViewChange,
    /// [`WrongNewView`].
    WrongNewView,
    /// [`FarFuture`].
    FarFuture,
    /// [`Unsolicited`].
    Unsolicited,
    /// [`Twin`]: a second process shares the replica's key.
    Twin,
    /// [`Shun`].
    Shun,
    /// [`UnlistedClients`].
    UnlistedClients,
}

impl BehaviorKind {
    /// Every behaviour, in declaration order.
    pub const ALL: [BehaviorKind; 18] = [
        BehaviorKind::Silent,
        BehaviorKind::EquivocatePrimarySplit,
        BehaviorKind::EquivocatePrimaryMinority,
        BehaviorKind::EquivocateBackup,
        BehaviorKind::ForgeSignatures,
        BehaviorKind::Replay,
        BehaviorKind::StaleView,
        BehaviorKind::Corrupt,
        BehaviorKind::Equivocate,
        BehaviorKind::EquivocateMinority,
        BehaviorKind::Slow,
        BehaviorKind::SelectiveViewChange,
        BehaviorKind::WrongNewView,
        BehaviorKind::FarFuture,
        BehaviorKind::Unsolicited,
        BehaviorKind::Twin,
        BehaviorKind::Shun,
        BehaviorKind::UnlistedClients,
    ];

    /// The kebab-case name, which [`FromStr`] parses back.
    pub fn name(self) -> &'static str {
        match self {
            BehaviorKind::Silent => "silent",
            BehaviorKind::EquivocatePrimarySplit => "equivocate-primary-split",
            BehaviorKind::EquivocatePrimaryMinority => "equivocate-primary-minority",
            BehaviorKind::EquivocateBackup => "equivocate-backup",
            BehaviorKind::ForgeSignatures => "forge",
            BehaviorKind::Replay => "replay",
            BehaviorKind::StaleView => "stale-view",
            BehaviorKind::Corrupt => "corrupt",
            BehaviorKind::Equivocate => "equivocate",
            BehaviorKind::EquivocateMinority => "equivocate-minority",
            BehaviorKind::Slow => "slow",
            BehaviorKind::SelectiveViewChange => "selective-view-change",
            BehaviorKind::WrongNewView => "wrong-new-view",
            BehaviorKind::FarFuture => "far-future",
            BehaviorKind::Unsolicited => "unsolicited",
            BehaviorKind::Twin => "twin",
            BehaviorKind::Shun => "shun",
            BehaviorKind::UnlistedClients => "unlisted-clients",
        }
    }

    /// A fresh instance of the behaviour for a replica with the default [`ProtocolConfig`].
    pub fn build(self) -> Box<dyn Behavior> {
        self.build_with(&ProtocolConfig::default())
    }

    /// A fresh instance of the behaviour for a replica running `protocol`; behaviours that play
    /// with time (such as [`Slow`]) take their delays from it.
    pub fn build_with(self, protocol: &ProtocolConfig) -> Box<dyn Behavior> {
        match self {
            BehaviorKind::Silent => Box::new(Silent),
            BehaviorKind::EquivocatePrimarySplit => {
                Box::new(EquivocatingPrimary::new(EquivocationMode::Split))
            }
            BehaviorKind::EquivocatePrimaryMinority => {
                Box::new(EquivocatingPrimary::new(EquivocationMode::Minority))
            }
            BehaviorKind::EquivocateBackup => Box::new(EquivocatingBackup),
            BehaviorKind::ForgeSignatures => Box::new(ForgedSignatures),
            BehaviorKind::Replay => Box::new(Replay::default()),
            BehaviorKind::StaleView => Box::new(StaleView::default()),
            BehaviorKind::Corrupt => Box::new(Corrupt),
            BehaviorKind::Equivocate => Box::new(Equivocator::new(EquivocationMode::Split)),
            BehaviorKind::EquivocateMinority => {
                Box::new(Equivocator::new(EquivocationMode::Minority))
            }
            BehaviorKind::Slow => Box::new(Slow::new(protocol.view_change_timeout)),
            BehaviorKind::SelectiveViewChange => Box::new(SelectiveViewChange),
            BehaviorKind::WrongNewView => Box::new(WrongNewView),
            BehaviorKind::FarFuture => Box::new(FarFuture),
            BehaviorKind::Unsolicited => Box::new(Unsolicited::default()),
            BehaviorKind::Twin => Box::new(Twin),
            BehaviorKind::Shun => Box::new(Shun),
            BehaviorKind::UnlistedClients => Box::new(UnlistedClients),
        }
    }
}

impl fmt::Display for BehaviorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A behaviour name that [`BehaviorKind`] does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownBehavior(pub String);

impl fmt::Display for UnknownBehavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown behaviour {:?}; known:", self.0)?;
        for (i, kind) in BehaviorKind::ALL.iter().enumerate() {
            write!(f, "{}{kind}", if i == 0 { " " } else { ", " })?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownBehavior {}

impl FromStr for BehaviorKind {
    type Err = UnknownBehavior;

    /// Parses a name of [`BehaviorKind::name`]; `equivocate-split` is also accepted for
    /// `equivocate`, whose primary mode it names.
    fn from_str(text: &str) -> Result<BehaviorKind, UnknownBehavior> {
        if text == "equivocate-split" {
            return Ok(BehaviorKind::Equivocate);
        }
        BehaviorKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| UnknownBehavior(text.to_string()))
    }
}

/// Flips one random bit of `signature`. Any change to an ed25519 signature makes it invalid.
fn flip_bit(signature: &mut Signature, rng: &mut dyn RngCore) {
    let bit = rng.random_range(0..512usize);
    signature.0[bit / 8] ^= 1 << (bit % 8);
}

/// `message` with a signature it carries broken, or `None` for messages that carry none (fetches,
/// status and state transfer).
fn with_forged_signature(message: &Message, rng: &mut dyn RngCore) -> Option<Message> {
    let mut forged = message.clone();
    let signature = match &mut forged {
        Message::Request(envelope) => &mut envelope.signature,
        Message::PrePrepare { header, .. } => &mut header.signature,
        Message::Prepare { vote, .. } => &mut vote.signature,
        Message::Commit(vote) => &mut vote.signature,
        Message::Checkpoint(checkpoint) => &mut checkpoint.signature,
        Message::ViewChange(view_change) => &mut view_change.signature,
        Message::NewView(new_view) => &mut new_view.signature,
        Message::Committed { commits, .. } if !commits.is_empty() => &mut commits[0].signature,
        Message::Reply(_)
        | Message::Read(_)
        | Message::Committed { .. }
        | Message::Status { .. }
        | Message::StatusQuery { .. }
        | Message::StatusReport(_)
        | Message::FetchBatch { .. }
        | Message::BatchData { .. }
        | Message::FetchState { .. }
        | Message::FetchStateChunk { .. }
        | Message::StateChunk { .. }
        | Message::StateManifest { .. } => return None,
    };
    flip_bit(signature, rng);
    Some(forged)
}
