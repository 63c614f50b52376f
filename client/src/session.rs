//! The client's protocol state without IO: timestamps, envelopes, retransmission and reply
//! matching. Time is an input (a duration since the driver's origin); the async
//! [`crate::Client`] drives it, and so does the simulator.
//!
//! Call order for the driver: [`Session::admit`] requests while [`Session::has_room`], then
//! [`Session::poll_envelopes`] to get what to send; feed replies to [`Session::on_reply`]; at
//! [`Session::next_deadline`] call [`Session::poll_retransmits`]; forget requests whose caller
//! gave up with [`Session::abandon`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use pbft_core::messages::{
    check_reply, ClientRequest, Message, ReplicaId, Reply, RequestEnvelope, Timestamp, View,
};
use pbft_core::Committee;
use pbft_crypto::KeyPair;

use crate::quorum::{ReplyQuorum, ViewTracker};

/// Most requests signed together in one envelope.
pub const MAX_ENVELOPE_REQUESTS: usize = 256;

/// Most operation bytes in one envelope, well below the replicas' batch byte limit so that an
/// envelope always fits in a batch.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// How far the newest timestamp may run ahead of the oldest unfinished one. Replicas refuse
/// timestamps more than their client window (1024) below the highest executed one, so this
/// stays well inside it.
pub const MAX_TIMESTAMP_SPREAD: u64 = 512;

/// Envelopes in flight (sent, not fully answered) before new requests wait to be batched with
/// others: under load the client signs fewer, larger envelopes.
pub const MAX_ENVELOPES_IN_FLIGHT: usize = 4;

/// Where a frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary of the view the client believes in.
    Replica(ReplicaId),
    /// Every replica: a retransmission.
    All,
}

/// A request admitted and not finished.
#[derive(Debug)]
struct Pending {
    quorum: ReplyQuorum,
    /// The envelope that carries it, once signed.
    envelope: Option<u64>,
}

/// A signed envelope that still has unfinished requests.
#[derive(Debug)]
struct InFlight {
    frame: Bytes,
    open: usize,
    next_send: Duration,
    interval: Duration,
}

/// One client's requests in progress.
#[derive(Debug)]
pub struct Session {
    key: KeyPair,
    committee: Committee,
    next_timestamp: Timestamp,
    /// Admitted, not yet signed into an envelope.
    queued: VecDeque<ClientRequest>,
    requests: BTreeMap<Timestamp, Pending>,
    envelopes: BTreeMap<u64, InFlight>,
    next_envelope: u64,
    views: ViewTracker,
    retransmit_min: Duration,
    retransmit_max: Duration,
}

impl Session {
    /// A session for the holder of `key`. `first_timestamp` must exceed every timestamp this key
    /// used before (the wall clock in microseconds does), or replicas answer new requests with
    /// the results of old ones.
    pub fn new(
        key: KeyPair,
        committee: Committee,
        first_timestamp: Timestamp,
        retransmit_min: Duration,
        retransmit_max: Duration,
    ) -> Session {
        let f = committee.f();
        Session {
            key,
            committee,
            next_timestamp: first_timestamp.max(1),
            queued: VecDeque::new(),
            requests: BTreeMap::new(),
            envelopes: BTreeMap::new(),
            next_envelope: 0,
            views: ViewTracker::new(f),
            retransmit_min,
            retransmit_max: retransmit_max.max(retransmit_min),
        }
    }

    /// Whether another request may be admitted without its timestamp running too far ahead of
    /// the oldest unfinished one.
    pub fn has_room(&self) -> bool {
        match self.requests.keys().next() {
            Some(oldest) => self.next_timestamp - oldest < MAX_TIMESTAMP_SPREAD,
            None => true,
        }
    }

    /// The timestamp the next admitted request gets.
    pub fn next_timestamp(&self) -> Timestamp {
        self.next_timestamp
    }

    /// Gives `op` the next timestamp and queues it for the next envelope. The caller must have
    /// checked [`Session::has_room`].
    pub fn admit(&mut self, op: Vec<u8>) -> Timestamp {
        let timestamp = self.next_timestamp;
        self.next_timestamp += 1;
        self.queued.push_back(ClientRequest { timestamp, op });
        self.requests.insert(
            timestamp,
            Pending {
                quorum: ReplyQuorum::new(self.committee.f()),
                envelope: None,
            },
        );
        timestamp
    }

    /// Signs queued requests into envelopes and returns them, each for the primary. Holds
    /// requests back while [`MAX_ENVELOPES_IN_FLIGHT`] envelopes are unanswered, unless a full
    /// envelope is waiting.
    pub fn poll_envelopes(&mut self, now: Duration) -> Vec<(Target, Bytes)> {
        let mut out = Vec::new();
        loop {
            self.drop_abandoned_queued();
            if self.queued.is_empty()
                || (self.envelopes.len() >= MAX_ENVELOPES_IN_FLIGHT
                    && self.queued.len() < MAX_ENVELOPE_REQUESTS)
            {
                return out;
            }
            let mut requests = Vec::new();
            let mut bytes = 0;
            while let Some(request) = self.queued.front() {
                let fits = requests.len() < MAX_ENVELOPE_REQUESTS
                    && (requests.is_empty() || bytes + request.op.len() <= MAX_ENVELOPE_BYTES);
                if !fits {
                    break;
                }
                let request = self.queued.pop_front().expect("front exists");
                if !self.requests.contains_key(&request.timestamp) {
                    continue;
                }
                bytes += request.op.len();
                requests.push(request);
            }
            if requests.is_empty() {
                continue;
            }
            let id = self.next_envelope;
            self.next_envelope += 1;
            for request in &requests {
                if let Some(pending) = self.requests.get_mut(&request.timestamp) {
                    pending.envelope = Some(id);
                }
            }
            let open = requests.len();
            let envelope = RequestEnvelope::new(&self.key, requests);
            let frame = Bytes::from(Message::Request(envelope).encode());
            self.envelopes.insert(
                id,
                InFlight {
                    frame: frame.clone(),
                    open,
                    next_send: now + self.retransmit_min,
                    interval: self.retransmit_min,
                },
            );
            out.push((Target::Replica(self.primary()), frame));
        }
    }

    fn drop_abandoned_queued(&mut self) {
        while let Some(front) = self.queued.front() {
            if self.requests.contains_key(&front.timestamp) {
                break;
            }
            self.queued.pop_front();
        }
    }

    /// Handles a reply that arrived on the channel authenticated as replica `from`. Returns the
    /// requests that now have f+1 matching results, with those results.
    pub fn on_reply(&mut self, from: ReplicaId, reply: Reply) -> Vec<(Timestamp, Vec<u8>)> {
        if check_reply(&reply, from, &self.committee).is_err() || reply.client != self.key.public()
        {
            return Vec::new();
        }
        self.views.observe(from, reply.view);
        let mut done = Vec::new();
        for result in reply.results {
            let Some(pending) = self.requests.get_mut(&result.timestamp) else {
                continue;
            };
            if let Some(accepted) = pending.quorum.add(from, result.result) {
                self.finish(result.timestamp);
                done.push((result.timestamp, accepted));
            }
        }
        done
    }

    /// Records a view that replica `from` reported outside a reply (a status report).
    pub fn observe_view(&mut self, from: ReplicaId, view: View) {
        if self.committee.key(from).is_some() {
            self.views.observe(from, view);
        }
    }

    /// Forgets a request whose caller stopped waiting. It may still execute.
    pub fn abandon(&mut self, timestamp: Timestamp) {
        self.finish(timestamp);
    }

    fn finish(&mut self, timestamp: Timestamp) {
        let Some(pending) = self.requests.remove(&timestamp) else {
            return;
        };
        if let Some(id) = pending.envelope {
            if let Some(envelope) = self.envelopes.get_mut(&id) {
                envelope.open -= 1;
                if envelope.open == 0 {
                    self.envelopes.remove(&id);
                }
            }
        }
    }

    /// The envelopes whose retransmission is due, each to go to every replica unchanged (same
    /// signature, so replicas recognise it). Each envelope's interval doubles up to the maximum.
    pub fn poll_retransmits(&mut self, now: Duration) -> Vec<(Target, Bytes)> {
        let mut out = Vec::new();
        for envelope in self.envelopes.values_mut() {
            if envelope.next_send <= now {
                envelope.interval = (envelope.interval * 2).min(self.retransmit_max);
                envelope.next_send = now + envelope.interval;
                out.push((Target::All, envelope.frame.clone()));
            }
        }
        out
    }

    /// When [`Session::poll_retransmits`] has something to do next.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.envelopes.values().map(|e| e.next_send).min()
    }

    /// The view the client believes in.
    pub fn view(&self) -> View {
        self.views.view()
    }

    /// The primary of that view.
    pub fn primary(&self) -> ReplicaId {
        self.committee.primary(self.views.view())
    }

    /// Requests admitted and not finished.
    pub fn outstanding(&self) -> usize {
        self.requests.len()
    }

    /// Signed envelopes with unfinished requests.
    pub fn envelopes_in_flight(&self) -> usize {
        self.envelopes.len()
    }

    /// The committee this session talks to.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::fixtures::TestCluster;
    use pbft_core::messages::{Limits, RequestResult};

    fn session() -> Session {
        Session::new(
            KeyPair::from_seed(&[99; 32]).unwrap(),
            TestCluster::new(1).committee,
            1_000,
            Duration::from_secs(1),
            Duration::from_secs(8),
        )
    }

    fn envelope_of(frame: &Bytes) -> RequestEnvelope {
        match Message::decode(frame, &Limits::default()).unwrap() {
            Message::Request(envelope) => envelope,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn reply(session: &Session, from: ReplicaId, view: View, results: &[(u64, &[u8])]) -> Reply {
        Reply {
            view,
            replica: from,
            client: session.key.public(),
            results: results
                .iter()
                .map(|(timestamp, result)| RequestResult {
                    timestamp: *timestamp,
                    result: result.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn requests_are_batched_into_one_signed_envelope_for_the_primary() {
        let mut s = session();
        let now = Duration::ZERO;
        let a = s.admit(b"a".to_vec());
        let b = s.admit(b"b".to_vec());
        assert_eq!((a, b), (1_000, 1_001));
        let sent = s.poll_envelopes(now);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, Target::Replica(0));
        let envelope = envelope_of(&sent[0].1);
        assert_eq!(envelope.requests.len(), 2);
        assert!(pbft_core::messages::verify_envelope(
            envelope,
            &Limits::default(),
            &mut pbft_core::messages::StrictCheck
        )
        .is_ok());
        assert!(s.poll_envelopes(now).is_empty());
    }

    #[test]
    fn envelopes_are_capped() {
        let mut s = session();
        for _ in 0..MAX_ENVELOPE_REQUESTS + 10 {
            s.admit(vec![0; 8]);
        }
        let sent = s.poll_envelopes(Duration::ZERO);
        let sizes: Vec<usize> = sent
            .iter()
            .map(|(_, f)| envelope_of(f).requests.len())
            .collect();
        assert_eq!(sizes, vec![MAX_ENVELOPE_REQUESTS, 10]);

        // Requests over half the byte cap each travel alone.
        let mut s = session();
        for _ in 0..MAX_ENVELOPES_IN_FLIGHT {
            s.admit(vec![0; MAX_ENVELOPE_BYTES / 2 + 1]);
        }
        assert_eq!(
            s.poll_envelopes(Duration::ZERO).len(),
            MAX_ENVELOPES_IN_FLIGHT
        );
    }

    #[test]
    fn completes_on_f_plus_one_matching_replies_only() {
        let mut s = session();
        let t = s.admit(b"x".to_vec());
        s.poll_envelopes(Duration::ZERO);
        // A liar, then a replica repeating itself: not enough.
        assert!(s.on_reply(3, reply(&s, 3, 0, &[(t, b"bad")])).is_empty());
        assert!(s.on_reply(1, reply(&s, 1, 0, &[(t, b"good")])).is_empty());
        assert!(s.on_reply(1, reply(&s, 1, 0, &[(t, b"good")])).is_empty());
        // A reply claiming another replica's id on replica 2's channel does not count.
        assert!(s.on_reply(2, reply(&s, 1, 0, &[(t, b"good")])).is_empty());
        assert_eq!(
            s.on_reply(2, reply(&s, 2, 0, &[(t, b"good")])),
            vec![(t, b"good".to_vec())]
        );
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.envelopes_in_flight(), 0);
        assert!(s.on_reply(0, reply(&s, 0, 0, &[(t, b"good")])).is_empty());
    }

    #[test]
    fn replies_for_another_client_or_from_strangers_are_ignored() {
        let mut s = session();
        let t = s.admit(b"x".to_vec());
        s.poll_envelopes(Duration::ZERO);
        let mut other = reply(&s, 0, 0, &[(t, b"r")]);
        other.client = KeyPair::from_seed(&[7; 32]).unwrap().public();
        assert!(s.on_reply(0, other.clone()).is_empty());
        other.replica = 1;
        assert!(s.on_reply(1, other).is_empty());
        assert!(s.on_reply(9, reply(&s, 9, 0, &[(t, b"r")])).is_empty());
        assert!(s.on_reply(0, reply(&s, 0, 0, &[(t, b"r")])).is_empty());
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn retransmits_the_same_envelope_to_all_with_doubling_intervals() {
        let mut s = session();
        let start = Duration::ZERO;
        s.admit(b"x".to_vec());
        let (_, first) = s.poll_envelopes(start).remove(0);
        assert!(s.poll_retransmits(start).is_empty());
        let mut at = start;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let deadline = s.next_deadline().unwrap();
            gaps.push((deadline - at).as_secs());
            at = deadline;
            let resent = s.poll_retransmits(at);
            assert_eq!(resent, vec![(Target::All, first.clone())]);
        }
        assert_eq!(gaps, vec![1, 2, 4, 8, 8]);
    }

    #[test]
    fn new_envelopes_go_to_the_primary_of_the_learned_view() {
        let mut s = session();
        let t = s.admit(b"x".to_vec());
        s.poll_envelopes(Duration::ZERO);
        // f+1 = 2 replicas report view 6: primary 6 mod 4 = 2.
        s.on_reply(0, reply(&s, 0, 6, &[(t, b"r")]));
        assert_eq!(s.primary(), 0);
        s.on_reply(3, reply(&s, 3, 6, &[(t, b"r")]));
        assert_eq!(s.view(), 6);
        s.admit(b"y".to_vec());
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(sent[0].0, Target::Replica(2));
    }

    #[test]
    fn timestamps_stay_inside_the_replicas_window() {
        let mut s = session();
        let mut admitted = Vec::new();
        while s.has_room() {
            admitted.push(s.admit(Vec::new()));
        }
        assert_eq!(admitted.len() as u64, MAX_TIMESTAMP_SPREAD);
        // Finishing a later request does not make room: the oldest still pins the window.
        s.abandon(admitted[5]);
        assert!(!s.has_room());
        s.abandon(admitted[0]);
        assert!(s.has_room());
        s.admit(Vec::new());
        assert!(!s.has_room());
    }

    #[test]
    fn abandoned_requests_are_not_sent_and_do_not_hold_envelopes() {
        let mut s = session();
        let a = s.admit(b"a".to_vec());
        let b = s.admit(b"b".to_vec());
        s.abandon(a);
        let sent = s.poll_envelopes(Duration::ZERO);
        let envelope = envelope_of(&sent[0].1);
        assert_eq!(envelope.requests.len(), 1);
        assert_eq!(envelope.requests[0].timestamp, b);
        s.abandon(b);
        assert_eq!(s.envelopes_in_flight(), 0);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn holds_requests_while_many_envelopes_are_in_flight() {
        let mut s = session();
        let now = Duration::ZERO;
        for _ in 0..MAX_ENVELOPES_IN_FLIGHT {
            s.admit(b"x".to_vec());
            assert_eq!(s.poll_envelopes(now).len(), 1);
        }
        let waiting = s.admit(b"y".to_vec());
        assert!(s.poll_envelopes(now).is_empty());
        // One envelope finishing releases the waiting requests.
        let first = *s.requests.keys().next().unwrap();
        s.on_reply(0, reply(&s, 0, 0, &[(first, b"r")]));
        s.on_reply(1, reply(&s, 1, 0, &[(first, b"r")]));
        let sent = s.poll_envelopes(now);
        assert_eq!(sent.len(), 1);
        assert_eq!(envelope_of(&sent[0].1).requests[0].timestamp, waiting);
    }
}
