//! The client's protocol state without IO: timestamps, envelopes, read-only requests,
//! retransmission and reply matching. Time is an input (a duration since the driver's origin);
//! the async [`crate::Client`] drives it, and so does the simulator.
//!
//! Call order for the driver: [`Session::admit`] (or [`Session::admit_read`]) requests while
//! [`Session::has_room`], then [`Session::poll_envelopes`] to get what to send; feed replies to
//! [`Session::on_reply`]; at [`Session::next_deadline`] call [`Session::poll_retransmits`];
//! forget requests whose caller gave up with [`Session::abandon`].
//!
//! # Sessions
//! A session is one process's run with the client's key: its requests carry the session id
//! ([`new_session_id`]), and replicas keep at-most-once state per session, so any number of
//! processes may share one key and one configuration file. A reply names the session and each
//! timestamp it answers, and answers for other sessions are ignored.
//!
//! # When a result is accepted
//! A result is accepted once 2f+1 distinct replicas sent the same one, for ordered and read-only
//! requests alike. f+1 would be enough to trust the value (one of them is correct), but reads
//! that skip ordering are linearizable only if every operation waits for 2f+1 (TOCS 2002,
//! section 5.1.3): a write that completed was executed by at least f+1 correct replicas, and any
//! 2f+1 replicas that agree on a later read include one of them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use pbft_core::messages::{
    check_reply, ClientRequest, Message, Outcome, ReadRequest, ReplicaId, Reply, RequestEnvelope,
    SessionId, Timestamp, View,
};
use pbft_core::Committee;
use pbft_crypto::{KeyPair, Signer};

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

/// Random low bits of a session id.
const SESSION_RANDOM_BITS: u32 = 20;

/// A session id for a session starting `millis` milliseconds after the Unix epoch, with 20
/// random low bits so that processes starting in the same millisecond differ. Ids grow with
/// time and do not wrap before the year 2527 (44 bits of milliseconds), so a key's new sessions
/// stay above the ids of its expired ones (see `pbft_core::protocol::ClientTable`).
pub fn new_session_id(millis: u64, random: u32) -> SessionId {
    let random = u64::from(random) & ((1 << SESSION_RANDOM_BITS) - 1);
    (millis << SESSION_RANDOM_BITS) | random
}

/// Where a frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary of the view the client believes in.
    Replica(ReplicaId),
    /// Every replica: a retransmission, a read-only request, or a request sent before the
    /// client knows the view.
    All,
}

/// A read-only attempt at a request: sent to every replica, and ordered instead if 2f+1 matching
/// answers do not come in time.
#[derive(Debug)]
struct ReadAttempt {
    op: Vec<u8>,
    quorum: ReplyQuorum<Outcome>,
    /// When to give up and order it; `None` until it is sent.
    give_up_at: Option<Duration>,
}

/// A request admitted and not finished.
#[derive(Debug)]
struct Pending {
    quorum: ReplyQuorum<Outcome>,
    /// The envelope that carries it, once signed.
    envelope: Option<u64>,
    /// Set while it is being tried as a read-only request.
    read: Option<ReadAttempt>,
}

/// A signed envelope that still has unfinished requests.
#[derive(Debug)]
struct InFlight {
    frame: Bytes,
    open: usize,
    next_send: Duration,
    interval: Duration,
}

/// One client session's requests in progress.
#[derive(Debug)]
pub struct Session {
    key: Signer,
    id: SessionId,
    committee: Committee,
    next_timestamp: Timestamp,
    /// Admitted, not yet signed into an envelope.
    queued: VecDeque<ClientRequest>,
    /// Read-only requests admitted and not yet sent.
    reads: VecDeque<Timestamp>,
    requests: BTreeMap<Timestamp, Pending>,
    envelopes: BTreeMap<u64, InFlight>,
    next_envelope: u64,
    views: ViewTracker,
    retransmit_min: Duration,
    retransmit_max: Duration,
}

impl Session {
    /// Session `id` (see [`new_session_id`]) of the holder of `key`. Its timestamps start at 1.
    pub fn new(
        key: KeyPair,
        committee: Committee,
        id: SessionId,
        retransmit_min: Duration,
        retransmit_max: Duration,
    ) -> Session {
        let f = committee.f();
        Session {
            key: committee.signer(key),
            id,
            committee,
            next_timestamp: 1,
            queued: VecDeque::new(),
            reads: VecDeque::new(),
            requests: BTreeMap::new(),
            envelopes: BTreeMap::new(),
            next_envelope: 0,
            views: ViewTracker::new(f),
            retransmit_min,
            retransmit_max: retransmit_max.max(retransmit_min),
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
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
        let timestamp = self.take_timestamp(None);
        self.queued.push_back(ClientRequest { timestamp, op });
        timestamp
    }

    /// Gives the read-only `op` the next timestamp and queues it to be sent to every replica
    /// unordered; if 2f+1 matching answers do not come within the first retransmission
    /// interval, it is ordered like [`Session::admit`]ted requests, under the same timestamp.
    pub fn admit_read(&mut self, op: Vec<u8>) -> Timestamp {
        let read = ReadAttempt {
            op,
            quorum: ReplyQuorum::new(self.committee.quorum()),
            give_up_at: None,
        };
        let timestamp = self.take_timestamp(Some(read));
        self.reads.push_back(timestamp);
        timestamp
    }

    fn take_timestamp(&mut self, read: Option<ReadAttempt>) -> Timestamp {
        let timestamp = self.next_timestamp;
        self.next_timestamp += 1;
        self.requests.insert(
            timestamp,
            Pending {
                quorum: ReplyQuorum::new(self.committee.quorum()),
                envelope: None,
                read,
            },
        );
        timestamp
    }

    /// Signs queued requests into envelopes and returns them with the read-only requests to
    /// send. Envelopes go to the primary once f+1 replicas have told the view, to every replica
    /// before. Holds requests back while [`MAX_ENVELOPES_IN_FLIGHT`] envelopes are unanswered,
    /// unless a full envelope is waiting.
    pub fn poll_envelopes(&mut self, now: Duration) -> Vec<(Target, Bytes)> {
        let mut out = self.poll_reads(now);
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
            let envelope = RequestEnvelope::new(&self.key, self.id, requests);
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
            let target = if self.views.is_known() {
                Target::Replica(self.primary())
            } else {
                Target::All
            };
            out.push((target, frame));
        }
    }

    /// The read-only requests not sent yet, each for every replica.
    fn poll_reads(&mut self, now: Duration) -> Vec<(Target, Bytes)> {
        let mut out = Vec::new();
        while let Some(timestamp) = self.reads.pop_front() {
            let Some(read) = self
                .requests
                .get_mut(&timestamp)
                .and_then(|p| p.read.as_mut())
            else {
                continue;
            };
            read.give_up_at = Some(now + self.retransmit_min);
            let message = Message::Read(ReadRequest {
                client: self.key.public(),
                session: self.id,
                timestamp,
                op: read.op.clone(),
            });
            out.push((Target::All, Bytes::from(message.encode())));
        }
        out
    }

    /// Orders a read-only request that could not get 2f+1 matching answers.
    fn order_read(&mut self, timestamp: Timestamp) {
        if let Some(read) = self
            .requests
            .get_mut(&timestamp)
            .and_then(|p| p.read.take())
        {
            // The ordered attempt keeps its place: envelopes are signed in timestamp order.
            let at = self
                .queued
                .iter()
                .position(|r| r.timestamp > timestamp)
                .unwrap_or(self.queued.len());
            self.queued.insert(
                at,
                ClientRequest {
                    timestamp,
                    op: read.op,
                },
            );
        }
    }

    fn drop_abandoned_queued(&mut self) {
        let requests = &self.requests;
        self.queued.retain(|r| requests.contains_key(&r.timestamp));
    }

    /// Handles a reply that arrived on the channel authenticated as replica `from`. Returns the
    /// requests that now have 2f+1 matching outcomes, with those outcomes.
    pub fn on_reply(&mut self, from: ReplicaId, reply: Reply) -> Vec<(Timestamp, Outcome)> {
        if check_reply(&reply, from, &self.committee).is_err()
            || reply.client != self.key.public()
            || reply.session != self.id
        {
            return Vec::new();
        }
        self.views.observe(from, reply.view);
        let n = self.committee.n();
        let mut done = Vec::new();
        let mut to_order = Vec::new();
        for result in reply.results {
            let Some(pending) = self.requests.get_mut(&result.timestamp) else {
                continue;
            };
            let accepted = if reply.read_only {
                let Some(read) = pending.read.as_mut() else {
                    continue;
                };
                if result.outcome == Outcome::NotReadOnly {
                    to_order.push(result.timestamp);
                    continue;
                }
                let accepted = read.quorum.add(from, result.outcome);
                if accepted.is_none() && !read.quorum.possible(n) {
                    to_order.push(result.timestamp);
                }
                accepted
            } else {
                pending.quorum.add(from, result.outcome)
            };
            if let Some(outcome) = accepted {
                self.finish(result.timestamp);
                done.push((result.timestamp, outcome));
            }
        }
        for timestamp in to_order {
            self.order_read(timestamp);
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
    /// signature, so replicas recognise it); each envelope's interval doubles up to the maximum.
    /// Read-only requests whose time ran out are ordered instead (they go out with the next
    /// [`Session::poll_envelopes`]).
    pub fn poll_retransmits(&mut self, now: Duration) -> Vec<(Target, Bytes)> {
        let expired: Vec<Timestamp> = (self.requests.iter())
            .filter(|(_, p)| {
                p.read
                    .as_ref()
                    .and_then(|r| r.give_up_at)
                    .is_some_and(|at| at <= now)
            })
            .map(|(t, _)| *t)
            .collect();
        for timestamp in expired {
            self.order_read(timestamp);
        }
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
        let reads = self
            .requests
            .values()
            .filter_map(|p| p.read.as_ref().and_then(|r| r.give_up_at));
        self.envelopes
            .values()
            .map(|e| e.next_send)
            .chain(reads)
            .min()
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

    const SESSION: SessionId = 7 << 16;

    fn session() -> Session {
        Session::new(
            KeyPair::from_seed(&[99; 32]).unwrap(),
            TestCluster::new(1).committee,
            SESSION,
            Duration::from_secs(1),
            Duration::from_secs(8),
        )
    }

    fn decode(frame: &Bytes) -> Message {
        Message::decode(frame, &Limits::default()).unwrap()
    }

    fn envelope_of(frame: &Bytes) -> RequestEnvelope {
        match decode(frame) {
            Message::Request(envelope) => envelope,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn done(result: &[u8]) -> Outcome {
        Outcome::Done(result.to_vec())
    }

    fn reply(session: &Session, from: ReplicaId, view: View, results: &[(u64, &[u8])]) -> Reply {
        Reply {
            view,
            replica: from,
            client: session.key.public(),
            session: session.id,
            read_only: false,
            results: results
                .iter()
                .map(|(timestamp, result)| RequestResult {
                    timestamp: *timestamp,
                    outcome: done(result),
                })
                .collect(),
        }
    }

    fn read_reply(session: &Session, from: ReplicaId, timestamp: u64, outcome: Outcome) -> Reply {
        Reply {
            read_only: true,
            results: vec![RequestResult { timestamp, outcome }],
            ..reply(session, from, 0, &[])
        }
    }

    /// Tells the session that f+1 = 2 replicas are in view 0, so envelopes go to the primary.
    fn learn_view(s: &mut Session) {
        s.observe_view(1, 0);
        s.observe_view(2, 0);
    }

    #[test]
    fn session_ids_grow_with_time_and_differ_within_a_millisecond() {
        assert!(new_session_id(1_000, u32::MAX) < new_session_id(1_001, 0));
        assert_ne!(new_session_id(1_000, 1), new_session_id(1_000, 2));
        // Milliseconds of the year 2500 still grow without wrapping.
        let year_2500 = 16_725_225_600_000;
        assert!(new_session_id(year_2500, u32::MAX) < new_session_id(year_2500 + 1, 0));
        assert!(new_session_id(year_2500, 0) > new_session_id(1_800_000_000_000, u32::MAX));
    }

    #[test]
    fn requests_are_batched_into_one_signed_envelope_for_the_primary() {
        let mut s = session();
        learn_view(&mut s);
        let a = s.admit(b"a".to_vec());
        let b = s.admit(b"b".to_vec());
        assert_eq!((a, b), (1, 2));
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, Target::Replica(0));
        let envelope = envelope_of(&sent[0].1);
        assert_eq!(envelope.requests.len(), 2);
        assert_eq!(envelope.session, SESSION);
        assert!(pbft_core::messages::verify_envelope(
            envelope,
            s.committee().cluster_id(),
            &Limits::default(),
            &mut pbft_core::messages::StrictCheck
        )
        .is_ok());
        assert!(s.poll_envelopes(Duration::ZERO).is_empty());
    }

    #[test]
    fn before_the_view_is_known_envelopes_go_to_every_replica() {
        let mut s = session();
        s.admit(b"a".to_vec());
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(sent[0].0, Target::All);
        // One replica alone does not tell the view.
        s.observe_view(3, 5);
        s.admit(b"b".to_vec());
        assert_eq!(s.poll_envelopes(Duration::ZERO)[0].0, Target::All);
        s.observe_view(2, 5);
        s.admit(b"c".to_vec());
        assert_eq!(s.poll_envelopes(Duration::ZERO)[0].0, Target::Replica(1));
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
    fn completes_on_2f_plus_1_matching_replies_only() {
        let mut s = session();
        let t = s.admit(b"x".to_vec());
        s.poll_envelopes(Duration::ZERO);
        // A liar, then a replica repeating itself: not enough.
        assert!(s.on_reply(3, reply(&s, 3, 0, &[(t, b"bad")])).is_empty());
        assert!(s.on_reply(1, reply(&s, 1, 0, &[(t, b"good")])).is_empty());
        assert!(s.on_reply(1, reply(&s, 1, 0, &[(t, b"good")])).is_empty());
        // A reply claiming another replica's id on replica 2's channel does not count.
        assert!(s.on_reply(2, reply(&s, 1, 0, &[(t, b"good")])).is_empty());
        assert!(s.on_reply(2, reply(&s, 2, 0, &[(t, b"good")])).is_empty());
        assert_eq!(
            s.on_reply(0, reply(&s, 0, 0, &[(t, b"good")])),
            vec![(t, done(b"good"))]
        );
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.envelopes_in_flight(), 0);
    }

    #[test]
    fn replies_for_another_client_session_or_from_strangers_are_ignored() {
        let mut s = session();
        let t = s.admit(b"x".to_vec());
        s.poll_envelopes(Duration::ZERO);
        let mut other_client = reply(&s, 0, 0, &[(t, b"r")]);
        other_client.client = KeyPair::from_seed(&[7; 32]).unwrap().public();
        let mut other_session = reply(&s, 1, 0, &[(t, b"r")]);
        other_session.session = SESSION + 1;
        for (from, r) in [
            (0, other_client),
            (1, other_session.clone()),
            (2, other_session),
        ] {
            assert!(s.on_reply(from, r).is_empty());
        }
        assert!(s.on_reply(9, reply(&s, 9, 0, &[(t, b"r")])).is_empty());
        assert!(s.on_reply(0, reply(&s, 0, 0, &[(t, b"r")])).is_empty());
        assert!(s.on_reply(1, reply(&s, 1, 0, &[(t, b"r")])).is_empty());
        assert_eq!(s.outstanding(), 1, "other sessions' replies counted");
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
        for _ in 0..MAX_ENVELOPES_IN_FLIGHT {
            s.admit(b"x".to_vec());
            assert_eq!(s.poll_envelopes(Duration::ZERO).len(), 1);
        }
        let waiting = s.admit(b"y".to_vec());
        assert!(s.poll_envelopes(Duration::ZERO).is_empty());
        // One envelope finishing releases the waiting requests.
        let first = *s.requests.keys().next().unwrap();
        for from in 0..3 {
            s.on_reply(from, reply(&s, from, 0, &[(first, b"r")]));
        }
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(sent.len(), 1);
        assert_eq!(envelope_of(&sent[0].1).requests[0].timestamp, waiting);
    }

    #[test]
    fn a_read_goes_to_every_replica_and_completes_on_2f_plus_1_matching_answers() {
        let mut s = session();
        let t = s.admit_read(b"get".to_vec());
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, Target::All);
        match decode(&sent[0].1) {
            Message::Read(read) => {
                assert_eq!((read.session, read.timestamp), (SESSION, t));
                assert_eq!(read.op, b"get");
            }
            other => panic!("not a read: {other:?}"),
        }
        assert!(s.on_reply(0, read_reply(&s, 0, t, done(b"v"))).is_empty());
        assert!(s.on_reply(1, read_reply(&s, 1, t, done(b"v"))).is_empty());
        // An ordered reply does not count for a read-only attempt.
        assert!(s.on_reply(2, reply(&s, 2, 0, &[(t, b"v")])).is_empty());
        assert_eq!(
            s.on_reply(3, read_reply(&s, 3, t, done(b"v"))),
            vec![(t, done(b"v"))]
        );
    }

    #[test]
    fn a_read_without_2f_plus_1_matching_answers_is_ordered_under_its_timestamp() {
        let mut s = session();
        learn_view(&mut s);
        let t = s.admit_read(b"get".to_vec());
        s.poll_envelopes(Duration::ZERO);
        // Two stale answers and one fresh: 3 matching are out of reach once a fourth differs.
        s.on_reply(0, read_reply(&s, 0, t, done(b"old")));
        s.on_reply(1, read_reply(&s, 1, t, done(b"new")));
        assert!(s.poll_envelopes(Duration::ZERO).is_empty());
        s.on_reply(2, read_reply(&s, 2, t, done(b"other")));
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, Target::Replica(0));
        let envelope = envelope_of(&sent[0].1);
        assert_eq!(envelope.requests[0].timestamp, t);
        assert_eq!(envelope.requests[0].op, b"get");
        // Late read-only answers no longer count; ordered ones do.
        assert!(s.on_reply(3, read_reply(&s, 3, t, done(b"new"))).is_empty());
        for from in 0..2 {
            assert!(s
                .on_reply(from, reply(&s, from, 0, &[(t, b"new")]))
                .is_empty());
        }
        assert_eq!(
            s.on_reply(2, reply(&s, 2, 0, &[(t, b"new")])),
            vec![(t, done(b"new"))]
        );
    }

    #[test]
    fn a_read_is_ordered_when_its_time_runs_out_or_it_is_not_read_only() {
        let mut s = session();
        let t = s.admit_read(b"get".to_vec());
        s.poll_envelopes(Duration::ZERO);
        assert_eq!(s.next_deadline(), Some(Duration::from_secs(1)));
        assert!(s.poll_retransmits(Duration::from_millis(999)).is_empty());
        s.poll_retransmits(Duration::from_secs(1));
        let sent = s.poll_envelopes(Duration::from_secs(1));
        assert_eq!(envelope_of(&sent[0].1).requests[0].timestamp, t);

        let mut s = session();
        let t = s.admit_read(b"put".to_vec());
        s.poll_envelopes(Duration::ZERO);
        s.on_reply(0, read_reply(&s, 0, t, Outcome::NotReadOnly));
        let sent = s.poll_envelopes(Duration::ZERO);
        assert_eq!(envelope_of(&sent[0].1).requests[0].timestamp, t);
    }
}
