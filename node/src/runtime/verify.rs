//! The verifier workers: they decode each frame and check its signatures before the protocol
//! task sees it, one task per core, with one cache of signature answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbft_net::{Inbox, Incoming, Peer};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Input, NodeSetup};
use crate::metrics::Metrics;
use pbft_core::committee::Committee;
use pbft_core::messages::{
    self, Limits, Message, Rejection, RememberedAnswers, ReplicaId, Sender, SignatureCache,
    SignatureQuestion,
};

/// The cache the verifier workers share, as a [`SignatureCheck`]: verifications run outside
/// the lock.
struct SharedCheck<'a>(&'a Mutex<SignatureCache>);

impl RememberedAnswers for SharedCheck<'_> {
    fn recall(&self, question: &SignatureQuestion) -> Option<bool> {
        self.0
            .lock()
            .expect("signature cache poisoned")
            .get(question)
    }

    fn remember(&mut self, question: SignatureQuestion, valid: bool) {
        (self.0.lock().expect("signature cache poisoned")).insert(question, valid);
    }
}

/// Rejection labels that only a faulty client earns: an honest client's messages always decode,
/// carry its own key and are signed with it.
const CLIENT_FAULTS: [&str; 3] = ["undecodable", "bad_signature", "wrong_sender"];

/// Counters of refused messages by reason, shared by the verifiers and the protocol task.
pub(super) type Rejections = Arc<Mutex<BTreeMap<String, u64>>>;

pub(super) fn count_rejection(metrics: &Metrics, rejections: &Rejections, reason: &'static str) {
    metrics.rejected(reason);
    *rejections
        .lock()
        .expect("poisoned")
        .entry(reason.to_string())
        .or_default() += 1;
}

/// Decodes and verifies incoming frames on one task per core.
pub(super) fn spawn_verifiers(
    inbox: Inbox,
    inputs: mpsc::Sender<Input>,
    setup: &NodeSetup,
    cache: Arc<Mutex<SignatureCache>>,
    rejections: Rejections,
    metrics: Arc<Metrics>,
) {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
    let limits = setup.protocol.limits.clone();
    let mismatch_warned: MismatchWarnings = Arc::default();
    for _ in 0..workers {
        let inbox = inbox.clone();
        let inputs = inputs.clone();
        let committee = setup.committee.clone();
        let limits = limits.clone();
        let cache = cache.clone();
        let rejections = rejections.clone();
        let metrics = metrics.clone();
        let mismatch_warned = mismatch_warned.clone();
        tokio::spawn(async move {
            loop {
                let incoming = { inbox.lock().await.recv().await };
                let Some(incoming) = incoming else { return };
                let input = check_frame(&incoming, &committee, &limits, &cache);
                match input {
                    Ok(input) => {
                        if inputs.send(input).await.is_err() {
                            return;
                        }
                    }
                    Err(rejection) => {
                        let reason = rejection.label();
                        if let (Rejection::ConfigMismatch(part), Peer::Replica(peer)) =
                            (&rejection, incoming.from)
                        {
                            warn_config_mismatch(&mismatch_warned, peer, part);
                        }
                        if let Peer::Client(key) = incoming.from {
                            if CLIENT_FAULTS.contains(&reason)
                                && inputs
                                    .send(Input::Misbehaved(key, incoming.connection))
                                    .await
                                    .is_err()
                            {
                                return;
                            }
                        }
                        count_rejection(&metrics, &rejections, reason);
                        tracing::debug!(?incoming.from, reason, "message refused");
                    }
                }
            }
        });
    }
}

/// When each peer's configuration difference was last logged.
type MismatchWarnings = Arc<std::sync::Mutex<BTreeMap<ReplicaId, Instant>>>;

/// How often a peer whose configuration differs is named in the log.
const MISMATCH_WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Names a replica whose configuration differs from this one's, at most once per interval:
/// its status messages arrive every retransmission interval.
fn warn_config_mismatch(warned: &MismatchWarnings, peer: ReplicaId, part: &str) {
    let now = Instant::now();
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned
        .get(&peer)
        .is_some_and(|last| now.duration_since(*last) < MISMATCH_WARNING_INTERVAL)
    {
        return;
    }
    warned.insert(peer, now);
    tracing::warn!(
        peer,
        "replica {peer} is configured differently: {part} differs from this replica's; every \
         replica of a cluster needs the same f, replica keys and client list"
    );
}

fn check_frame(
    incoming: &Incoming,
    committee: &Committee,
    limits: &Limits,
    cache: &Mutex<SignatureCache>,
) -> Result<Input, Rejection> {
    let (from, connection) = (incoming.from, incoming.connection);
    let message = Message::decode(&incoming.frame, limits).map_err(|_| Rejection::Undecodable)?;
    if let Message::StatusQuery { nonce } = message {
        return Ok(Input::StatusQuery {
            from,
            connection,
            nonce,
        });
    }
    let sender = match from {
        Peer::Replica(id) => Sender::Replica(id),
        Peer::Client(key) => Sender::Client(key),
    };
    let verified = messages::verify(message, sender, committee, limits, &mut SharedCheck(cache))?;
    Ok(Input::Message(verified, from, connection))
}
