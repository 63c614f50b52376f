//! Per-client bookkeeping that is part of the replicated state (at-most-once execution and the
//! reply cache), and the bounded set of requests a replica is waiting to see executed.

use std::collections::{BTreeMap, HashSet, VecDeque};

use pbft_crypto::{Digest, PublicKey};
use serde::{Deserialize, Serialize};

use crate::messages::{
    Outcome, RequestEnvelope, RequestResult, Seq, SessionId, SessionKey, Timestamp, Verified,
};

/// Which timestamps of a session executed, for the `window` timestamps up to the highest one: a
/// ring of bits, so a session costs `window / 8` bytes however many requests it sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ExecutedWindow {
    words: Vec<u64>,
}

impl ExecutedWindow {
    fn new(window: u64) -> ExecutedWindow {
        ExecutedWindow {
            words: vec![0; window.div_ceil(64) as usize],
        }
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    fn get(&self, timestamp: Timestamp) -> bool {
        let bit = timestamp % self.bits();
        self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    fn set(&mut self, timestamp: Timestamp, value: bool) {
        let bit = timestamp % self.bits();
        let word = &mut self.words[(bit / 64) as usize];
        if value {
            *word |= 1 << (bit % 64);
        } else {
            *word &= !(1 << (bit % 64));
        }
    }
}

/// What every replica remembers of one client session. Part of the checkpointed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The highest timestamp executed.
    pub max_timestamp: Timestamp,
    executed: ExecutedWindow,
    /// Cached results of executed timestamps in the window, while the byte budget allows.
    pub results: BTreeMap<Timestamp, Vec<u8>>,
    /// The sequence number at which this session last executed a request.
    pub last_active: Seq,
}

/// The bounds of the client table; replicas must agree on them (they shape the replicated
/// state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientBounds {
    /// How many timestamps below its highest executed one a session's request may carry.
    pub window: u64,
    /// Most sessions remembered; beyond it the least recently active expire.
    pub max_sessions: usize,
    /// Most bytes of cached results over all sessions; beyond it the results of the least
    /// recently active sessions are dropped first.
    pub max_cached_bytes: usize,
}

/// The client table: decides at-most-once execution and answers retransmissions.
///
/// Each client session (see [`SessionKey`]) may have up to `window` requests outstanding. A
/// request executes if its timestamp is inside the window below the session's highest executed
/// one and has not executed yet; older timestamps are refused, so each timestamp executes at
/// most once.
///
/// The table is bounded, with rules every replica applies at the same point of the log (after
/// each batch), so all of them keep and drop the same entries:
/// - at most `max_sessions` sessions: when there are more, the least recently active ones (by
///   the sequence number of their last execution, then by key) expire until 15/16 of the bound
///   remain. `expired_up_to` becomes the highest expired session id, and a session that is not
///   in the table with an id at or below it is refused as expired: an expired session never
///   executes again, so no request of it can execute twice. Session ids grow with time, so new
///   sessions are above the mark;
/// - at most `max_cached_bytes` of cached results: beyond it, the results of the least recently
///   active sessions are dropped (the requests stay marked executed, and a retransmission is
///   answered [`Outcome::Forgotten`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTable {
    bounds: ClientBounds,
    sessions: BTreeMap<SessionKey, ClientRecord>,
    expired_up_to: SessionId,
    cached_bytes: usize,
}

/// What the client table says about one timestamp of a session.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestStatus<'a> {
    /// Not executed yet and inside the window.
    New,
    /// Executed; its result, if still cached.
    Executed(Option<&'a [u8]>),
    /// Below the window: refused for ever.
    TooOld,
    /// The session expired: refused for ever.
    Expired,
}

impl ClientTable {
    pub fn new(bounds: ClientBounds) -> ClientTable {
        ClientTable {
            bounds,
            sessions: BTreeMap::new(),
            expired_up_to: 0,
            cached_bytes: 0,
        }
    }

    pub fn status(&self, session: &SessionKey, timestamp: Timestamp) -> RequestStatus<'_> {
        let Some(record) = self.sessions.get(session) else {
            return if session.session <= self.expired_up_to {
                RequestStatus::Expired
            } else {
                RequestStatus::New
            };
        };
        if timestamp > record.max_timestamp {
            return RequestStatus::New;
        }
        if timestamp.saturating_add(self.bounds.window) <= record.max_timestamp {
            return RequestStatus::TooOld;
        }
        if record.executed.get(timestamp) {
            RequestStatus::Executed(record.results.get(&timestamp).map(Vec::as_slice))
        } else {
            RequestStatus::New
        }
    }

    /// Whether no request of `envelope` is left to execute.
    pub fn is_settled(&self, envelope: &RequestEnvelope) -> bool {
        let session = envelope.session_key();
        envelope
            .requests
            .iter()
            .all(|r| self.status(&session, r.timestamp) != RequestStatus::New)
    }

    /// What to answer for the requests of `envelope` that will not execute again: cached
    /// results, forgotten ones, and those of an expired session.
    pub fn settled_outcomes(&self, envelope: &RequestEnvelope) -> Vec<RequestResult> {
        let session = envelope.session_key();
        envelope
            .requests
            .iter()
            .filter_map(|r| {
                let outcome = match self.status(&session, r.timestamp) {
                    RequestStatus::Executed(Some(result)) => Outcome::Done(result.to_vec()),
                    RequestStatus::Executed(None) => Outcome::Forgotten,
                    RequestStatus::Expired => Outcome::SessionExpired,
                    RequestStatus::New | RequestStatus::TooOld => return None,
                };
                Some(RequestResult {
                    timestamp: r.timestamp,
                    outcome,
                })
            })
            .collect()
    }

    /// Records the result of a request executed at `seq` (whose status was `New`).
    pub fn record(&mut self, session: SessionKey, timestamp: Timestamp, result: Vec<u8>, seq: Seq) {
        let window = self.bounds.window;
        let record = self
            .sessions
            .entry(session)
            .or_insert_with(|| ClientRecord {
                max_timestamp: 0,
                executed: ExecutedWindow::new(window),
                results: BTreeMap::new(),
                last_active: seq,
            });
        record.last_active = seq;
        if timestamp > record.max_timestamp {
            // The new timestamps reuse the ring bits of those leaving the window: clear them.
            let fresh = (timestamp - record.max_timestamp).min(record.executed.bits());
            for reused in timestamp + 1 - fresh..=timestamp {
                record.executed.set(reused, false);
            }
            record.max_timestamp = timestamp;
            let floor = timestamp.saturating_sub(window);
            let kept = record.results.split_off(&(floor + 1));
            let dropped: usize = record.results.values().map(Vec::len).sum();
            record.results = kept;
            self.cached_bytes -= dropped;
        }
        record.executed.set(timestamp, true);
        self.cached_bytes += result.len();
        record.results.insert(timestamp, result);
    }

    /// Applies the bounds (see the type's documentation). Call after every batch, at every
    /// replica alike.
    pub fn enforce_bounds(&mut self) {
        let bounds = self.bounds;
        if self.sessions.len() > bounds.max_sessions {
            let keep = bounds.max_sessions - bounds.max_sessions / 16;
            for session in self.least_recently_active(self.sessions.len() - keep) {
                if let Some(record) = self.sessions.remove(&session) {
                    self.cached_bytes -= record.results.values().map(Vec::len).sum::<usize>();
                }
                self.expired_up_to = self.expired_up_to.max(session.session);
            }
        }
        if self.cached_bytes > bounds.max_cached_bytes {
            let target = bounds.max_cached_bytes - bounds.max_cached_bytes / 16;
            for session in self.least_recently_active(self.sessions.len()) {
                if self.cached_bytes <= target {
                    break;
                }
                if let Some(record) = self.sessions.get_mut(&session) {
                    while self.cached_bytes > target {
                        let Some((_, result)) = record.results.pop_first() else {
                            break;
                        };
                        self.cached_bytes -= result.len();
                    }
                }
            }
        }
    }

    /// The `count` least recently active sessions, oldest first.
    fn least_recently_active(&self, count: usize) -> Vec<SessionKey> {
        let mut by_activity: Vec<(Seq, SessionKey)> = self
            .sessions
            .iter()
            .map(|(key, record)| (record.last_active, *key))
            .collect();
        by_activity.sort_unstable();
        by_activity
            .into_iter()
            .take(count)
            .map(|(_, key)| key)
            .collect()
    }

    /// Sessions remembered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Bytes of cached results.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// The highest session id that expired.
    pub fn expired_up_to(&self) -> SessionId {
        self.expired_up_to
    }
}

/// Requests this replica has received and is waiting to see executed: the primary's queue of
/// requests to order, and every backup's reason to suspect the primary. Bounded per client and in
/// total; what does not fit is dropped (the client retransmits).
#[derive(Debug, Default)]
pub struct PendingRequests {
    /// In arrival order; entries whose digest is no longer in `queued` were removed.
    queue: VecDeque<(Verified<RequestEnvelope>, Digest)>,
    queued: HashSet<Digest>,
    per_client: BTreeMap<PublicKey, usize>,
    max_total: usize,
    max_per_client: usize,
}

impl PendingRequests {
    pub fn new(max_total: usize, max_per_client: usize) -> PendingRequests {
        PendingRequests {
            max_total,
            max_per_client,
            ..Default::default()
        }
    }

    /// Queues `envelope` unless it is already queued or a bound is reached. Returns whether it
    /// was added.
    pub fn push(&mut self, envelope: Verified<RequestEnvelope>, digest: Digest) -> bool {
        if self.queued.contains(&digest) || self.queued.len() >= self.max_total {
            return false;
        }
        let count = self.per_client.entry(envelope.client).or_default();
        if *count >= self.max_per_client {
            return false;
        }
        *count += 1;
        self.queued.insert(digest);
        self.queue.push_back((envelope, digest));
        self.compact();
        true
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.queued.contains(digest)
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// The oldest envelope still queued.
    pub fn front(&mut self) -> Option<&(Verified<RequestEnvelope>, Digest)> {
        while let Some((_, digest)) = self.queue.front() {
            if self.queued.contains(digest) {
                break;
            }
            self.queue.pop_front();
        }
        self.queue.front()
    }

    /// The queued envelopes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Verified<RequestEnvelope>, Digest)> {
        self.queue
            .iter()
            .filter(|(_, digest)| self.queued.contains(digest))
    }

    pub fn pop_front(&mut self) -> Option<(Verified<RequestEnvelope>, Digest)> {
        self.front()?;
        let (envelope, digest) = self.queue.pop_front()?;
        self.forget(&envelope.client, &digest);
        Some((envelope, digest))
    }

    /// Removes the envelope with `digest`, if queued.
    pub fn remove(&mut self, client: &PublicKey, digest: &Digest) {
        if self.queued.contains(digest) {
            self.forget(client, digest);
            self.compact();
        }
    }

    /// Keeps only the envelopes for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&RequestEnvelope, &Digest) -> bool) {
        let mut kept = VecDeque::with_capacity(self.queued.len());
        for (envelope, digest) in std::mem::take(&mut self.queue) {
            if !self.queued.contains(&digest) {
                continue;
            }
            if keep(&envelope, &digest) {
                kept.push_back((envelope, digest));
            } else {
                self.forget(&envelope.client, &digest);
            }
        }
        self.queue = kept;
    }

    fn forget(&mut self, client: &PublicKey, digest: &Digest) {
        self.queued.remove(digest);
        if let Some(count) = self.per_client.get_mut(client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(client);
            }
        }
    }

    /// Drops removed entries once they outnumber live ones, so the queue stays bounded.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.queued.len() + 64 {
            let queued = &self.queued;
            self.queue.retain(|(_, digest)| queued.contains(digest));
        }
    }
}

#[cfg(test)]
mod tests {
    use pbft_crypto::KeyPair;

    use super::*;

    fn session(id: SessionId) -> SessionKey {
        SessionKey {
            client: KeyPair::from_seed(&[3; 32]).unwrap().public(),
            session: id,
        }
    }

    fn table(max_sessions: usize, max_cached_bytes: usize) -> ClientTable {
        ClientTable::new(ClientBounds {
            window: 100,
            max_sessions,
            max_cached_bytes,
        })
    }

    #[test]
    fn each_timestamp_of_a_session_executes_once_inside_the_window() {
        let mut t = table(10, 1 << 20);
        let s = session(1);
        assert_eq!(t.status(&s, 5), RequestStatus::New);
        t.record(s, 5, b"five".to_vec(), 1);
        assert_eq!(t.status(&s, 5), RequestStatus::Executed(Some(&b"five"[..])));
        assert_eq!(
            t.status(&s, 4),
            RequestStatus::New,
            "an earlier gap still executes"
        );
        t.record(s, 4, b"four".to_vec(), 2);
        // Far ahead: 5 and 4 leave the window; the ring bits they used are reused.
        t.record(s, 205, b"x".to_vec(), 3);
        assert_eq!(t.status(&s, 5), RequestStatus::TooOld);
        assert_eq!(t.status(&s, 105), RequestStatus::TooOld);
        assert_eq!(t.status(&s, 106), RequestStatus::New);
        assert_eq!(t.status(&s, 204), RequestStatus::New);
        assert_eq!(t.status(&s, 205), RequestStatus::Executed(Some(&b"x"[..])));
        // Another session of the same key is independent.
        assert_eq!(t.status(&session(2), 5), RequestStatus::New);
    }

    #[test]
    fn the_window_slides_one_timestamp_at_a_time_without_losing_executions() {
        let mut t = table(10, 1 << 20);
        let s = session(1);
        for ts in (1..400).step_by(2) {
            t.record(s, ts, Vec::new(), ts);
        }
        for ts in 300..399 {
            let expected = if ts % 2 == 1 {
                RequestStatus::Executed(Some(&[][..]))
            } else {
                RequestStatus::New
            };
            assert_eq!(t.status(&s, ts), expected, "timestamp {ts}");
        }
    }

    #[test]
    fn the_least_recently_active_sessions_expire_and_never_execute_again() {
        let mut t = table(16, 1 << 20);
        for id in 1..=16 {
            t.record(session(id), 1, Vec::new(), id);
        }
        t.enforce_bounds();
        assert_eq!(t.len(), 16);
        // Session 3 is active again; 17 is new and goes over the bound.
        t.record(session(3), 2, Vec::new(), 17);
        t.record(session(17), 1, Vec::new(), 18);
        t.enforce_bounds();
        // Down to 15/16 of the bound: the two least recently active (1 and 2) expire.
        assert_eq!(t.len(), 15);
        assert_eq!(t.expired_up_to(), 2);
        assert_eq!(t.status(&session(1), 2), RequestStatus::Expired);
        assert_eq!(t.status(&session(2), 1), RequestStatus::Expired);
        assert_eq!(
            t.status(&session(3), 2),
            RequestStatus::Executed(Some(&[][..]))
        );
        // A new session above the mark starts afresh.
        assert_eq!(t.status(&session(18), 1), RequestStatus::New);
    }

    #[test]
    fn cached_results_stay_within_the_byte_budget_and_executions_are_kept() {
        let mut t = table(10, 1000);
        for ts in 1..=8 {
            t.record(session(1), ts, vec![0; 100], ts);
        }
        for ts in 1..=5 {
            t.record(session(2), ts, vec![0; 100], 8 + ts);
        }
        assert_eq!(t.cached_bytes(), 1300);
        t.enforce_bounds();
        assert!(t.cached_bytes() <= 1000 - 1000 / 16, "{}", t.cached_bytes());
        // The older session's oldest results went first; they still count as executed.
        assert_eq!(t.status(&session(1), 1), RequestStatus::Executed(None));
        assert_eq!(
            t.status(&session(2), 5),
            RequestStatus::Executed(Some(&[0; 100][..]))
        );
    }

    #[test]
    fn the_table_is_the_same_whatever_the_replica() {
        let build = || {
            let mut t = table(8, 500);
            for round in 0..40u64 {
                t.record(session(round % 11 + 1), round / 11 + 1, vec![1; 30], round);
                t.enforce_bounds();
            }
            t
        };
        let (a, b) = (build(), build());
        assert_eq!(crate::codec::encode(&a), crate::codec::encode(&b));
    }
}
