//! Named faulty-client strategies.
//!
//! A [`FaultyClient`] produces, at each tick, the messages an attacking client sends to every
//! replica, each with the key of the connection it travels on. The simulator delivers them as
//! from a client authenticated with that key; `testnet attack` sends them over real connections
//! made with that key. Like the replica behaviours, a strategy draws randomness only from the
//! RNG it is given and reads no clock, so simulations with attackers replay from their seed.

use std::fmt;
use std::str::FromStr;

use pbft_crypto::{KeyPair, Signer};
use rand::RngCore;

use crate::app::KvOp;
use crate::messages::{ClientRequest, Limits, Message, RequestEnvelope, SessionId, Timestamp};

/// The faulty-client strategies, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAttack {
    /// Signed envelopes of operations that are each within the limit but together larger than
    /// a batch may be: refused at the boundary, never proposed.
    OversizedEnvelope,
    /// The same timestamp with different operations, and timestamps far below the newest:
    /// at most one operation runs per timestamp.
    ReusedTimestamps,
    /// A fresh key (and session) for every request: refused at the handshake by a cluster that
    /// lists its clients; bounded by session expiry in an open one.
    ManyIdentities,
    /// Many small envelopes per tick without waiting for replies: bounded by the pending
    /// queues per client and in total.
    Flood,
    /// Envelopes whose signature does not verify: refused at the boundary, and the sender's
    /// connections cut off for a while.
    BadSignatures,
    /// One request in the largest session id, then many one-request sessions with fresh ids:
    /// sessions and expiry marks are kept per key, so the churn expires only its own sessions
    /// and every other key's new sessions still start.
    SessionChurn,
}

impl ClientAttack {
    /// Every strategy, in declaration order.
    pub const ALL: [ClientAttack; 6] = [
        ClientAttack::OversizedEnvelope,
        ClientAttack::ReusedTimestamps,
        ClientAttack::ManyIdentities,
        ClientAttack::Flood,
        ClientAttack::BadSignatures,
        ClientAttack::SessionChurn,
    ];

    /// The kebab-case name, which [`FromStr`] parses back.
    pub fn name(self) -> &'static str {
        match self {
            ClientAttack::OversizedEnvelope => "oversized-envelope",
            ClientAttack::ReusedTimestamps => "reused-timestamps",
            ClientAttack::ManyIdentities => "many-identities",
            ClientAttack::Flood => "flood",
            ClientAttack::BadSignatures => "bad-signatures",
            ClientAttack::SessionChurn => "session-churn",
        }
    }
}

impl fmt::Display for ClientAttack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that [`ClientAttack`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown client attack {0:?}; known: oversized-envelope, reused-timestamps, many-identities, flood, bad-signatures, session-churn")]
pub struct UnknownAttack(pub String);

impl FromStr for ClientAttack {
    type Err = UnknownAttack;

    fn from_str(text: &str) -> Result<ClientAttack, UnknownAttack> {
        ClientAttack::ALL
            .into_iter()
            .find(|attack| attack.name() == text)
            .ok_or_else(|| UnknownAttack(text.to_string()))
    }
}

/// A message of an attacking client and the key of the connection it is sent on.
pub struct AttackMessage {
    pub from: KeyPair,
    pub message: Message,
}

/// Fresh identities [`ClientAttack::ManyIdentities`] uses per tick.
const IDENTITIES_PER_TICK: usize = 8;
/// Envelopes [`ClientAttack::Flood`] sends per tick.
const FLOOD_PER_TICK: usize = 64;
/// New sessions [`ClientAttack::SessionChurn`] opens per tick.
const SESSIONS_PER_TICK: usize = 32;

/// One attacking client: its strategy, key, session and the next timestamp it uses.
pub struct FaultyClient {
    attack: ClientAttack,
    key: Signer,
    session: SessionId,
    next_timestamp: Timestamp,
    limits: Limits,
    ticks: u64,
    /// The oversized envelope, signed once and sent again on every tick (signing megabytes on
    /// every tick would only slow the attacker).
    oversized: Option<Message>,
}

impl FaultyClient {
    /// An attacker with `key` and `session`, shaping its messages against `limits` (the
    /// replicas' own).
    pub fn new(attack: ClientAttack, key: Signer, session: SessionId, limits: Limits) -> Self {
        FaultyClient {
            attack,
            key,
            session,
            next_timestamp: 1,
            limits,
            ticks: 0,
            oversized: None,
        }
    }

    pub fn attack(&self) -> ClientAttack {
        self.attack
    }

    /// The messages to send to every replica now.
    pub fn tick(&mut self, rng: &mut dyn RngCore) -> Vec<AttackMessage> {
        self.ticks += 1;
        match self.attack {
            ClientAttack::OversizedEnvelope => vec![self.oversized()],
            ClientAttack::ReusedTimestamps => self.reused(),
            ClientAttack::ManyIdentities => (0..IDENTITIES_PER_TICK)
                .map(|_| {
                    let mut seed = [0; 32];
                    rng.fill_bytes(&mut seed);
                    let key = KeyPair::from_seed(&seed)
                        .expect("any 32 bytes are a seed")
                        .for_cluster(*self.key.cluster());
                    let session = rng.next_u64() >> 1;
                    let op = put(format!("attack/identity/{}", rng.next_u32()), b"x");
                    self.envelope_from(key, session, vec![request(1, op)])
                })
                .collect(),
            ClientAttack::Flood => (0..FLOOD_PER_TICK)
                .map(|_| {
                    let timestamp = self.take_timestamp();
                    let op = put(format!("attack/flood/{timestamp}"), b"x");
                    self.envelope(vec![request(timestamp, op)])
                })
                .collect(),
            ClientAttack::BadSignatures => {
                let timestamp = self.take_timestamp();
                let op = put(format!("attack/forged/{timestamp}"), b"x");
                let mut forged = self.envelope(vec![request(timestamp, op)]);
                if let Message::Request(envelope) = &mut forged.message {
                    envelope.signature.0[0] ^= 1;
                }
                vec![forged]
            }
            ClientAttack::SessionChurn => {
                let mut out = Vec::with_capacity(SESSIONS_PER_TICK + 1);
                if self.ticks == 1 {
                    let op = put("attack/churn/last".into(), b"x");
                    out.push(self.envelope_from(
                        self.key.clone(),
                        SessionId::MAX,
                        vec![request(1, op)],
                    ));
                }
                for _ in 0..SESSIONS_PER_TICK {
                    // Each envelope opens a session of its own: the next id after the last.
                    self.session = self.session.wrapping_add(1).max(1);
                    let op = put(format!("attack/churn/{}", self.session), b"x");
                    out.push(self.envelope(vec![request(1, op)]));
                }
                out
            }
        }
    }

    /// Operations of the largest allowed size, enough of them to exceed a batch (or as many as
    /// an envelope may hold, if that is less).
    fn oversized(&mut self) -> AttackMessage {
        if self.oversized.is_none() {
            let op_bytes = self.limits.max_op_bytes;
            let wanted = self.limits.max_batch_bytes / op_bytes.max(1) + 1;
            let count = wanted.min(self.limits.max_envelope_requests);
            let requests = (0..count)
                .map(|_| request(self.take_timestamp(), vec![0xa5; op_bytes]))
                .collect();
            self.oversized = Some(self.envelope(requests).message);
        }
        AttackMessage {
            from: self.key.key_pair().clone(),
            message: self.oversized.clone().expect("built above"),
        }
    }

    /// A fresh timestamp with one operation, the same timestamp with another, and a timestamp
    /// from long ago.
    fn reused(&mut self) -> Vec<AttackMessage> {
        let timestamp = self.take_timestamp();
        let key = format!("attack/reused/{}", self.ticks % 4);
        let mut out = vec![
            self.envelope(vec![request(timestamp, put(key.clone(), b"first"))]),
            self.envelope(vec![request(timestamp, put(key.clone(), b"second"))]),
        ];
        if timestamp > 8 {
            out.push(self.envelope(vec![request(timestamp - 8, put(key, b"old"))]));
        }
        out
    }

    fn take_timestamp(&mut self) -> Timestamp {
        let timestamp = self.next_timestamp;
        self.next_timestamp += 1;
        timestamp
    }

    fn envelope(&self, requests: Vec<ClientRequest>) -> AttackMessage {
        self.envelope_from(self.key.clone(), self.session, requests)
    }

    fn envelope_from(
        &self,
        key: Signer,
        session: SessionId,
        requests: Vec<ClientRequest>,
    ) -> AttackMessage {
        let envelope = RequestEnvelope::new(&key, session, requests);
        AttackMessage {
            from: key.key_pair().clone(),
            message: Message::Request(envelope),
        }
    }
}

fn request(timestamp: Timestamp, op: Vec<u8>) -> ClientRequest {
    ClientRequest { timestamp, op }
}

fn put(key: String, value: &[u8]) -> Vec<u8> {
    KvOp::Put {
        key: key.into_bytes(),
        value: value.to_vec(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::messages::{verify_envelope, Rejection, StrictCheck};
    use pbft_crypto::{ClusterId, Digest};

    const CLUSTER: ClusterId = ClusterId(Digest([1; 32]));

    fn attacker(attack: ClientAttack) -> FaultyClient {
        let key = KeyPair::from_seed(&[3; 32]).unwrap().for_cluster(CLUSTER);
        FaultyClient::new(attack, key, 7, Limits::default())
    }

    fn envelopes(messages: Vec<AttackMessage>) -> Vec<RequestEnvelope> {
        messages
            .into_iter()
            .map(|m| match m.message {
                Message::Request(envelope) => envelope,
                other => panic!("unexpected {}", other.kind()),
            })
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for attack in ClientAttack::ALL {
            assert_eq!(attack.name().parse::<ClientAttack>(), Ok(attack));
        }
        assert!("nonsense".parse::<ClientAttack>().is_err());
    }

    #[test]
    fn the_oversized_envelope_is_refused_at_the_boundary() {
        let mut rng = StdRng::seed_from_u64(1);
        let sent = envelopes(attacker(ClientAttack::OversizedEnvelope).tick(&mut rng));
        let limits = Limits::default();
        for envelope in sent {
            assert!(envelope.encoded_len() > limits.max_batch_bytes);
            assert!(matches!(
                verify_envelope(envelope, &CLUSTER, &limits, &mut StrictCheck),
                Err(Rejection::TooLarge(_))
            ));
        }
    }

    #[test]
    fn other_attacks_send_validly_signed_envelopes() {
        let limits = Limits::default();
        for attack in [
            ClientAttack::ReusedTimestamps,
            ClientAttack::ManyIdentities,
            ClientAttack::Flood,
            ClientAttack::SessionChurn,
        ] {
            let mut client = attacker(attack);
            let mut rng = StdRng::seed_from_u64(5);
            let mut keys = std::collections::BTreeSet::new();
            for _ in 0..10 {
                for message in client.tick(&mut rng) {
                    keys.insert(message.from.public());
                    let Message::Request(envelope) = message.message else {
                        panic!("{attack} sent something other than a request");
                    };
                    assert_eq!(envelope.client, message.from.public());
                    verify_envelope(envelope, &CLUSTER, &limits, &mut StrictCheck)
                        .unwrap_or_else(|e| panic!("{attack}: {e}"));
                }
            }
            let expected_keys = if attack == ClientAttack::ManyIdentities {
                10 * IDENTITIES_PER_TICK
            } else {
                1
            };
            assert_eq!(keys.len(), expected_keys, "{attack}");
        }
    }
}
