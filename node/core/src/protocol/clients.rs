//! Per-client bookkeeping that is part of the replicated state (at-most-once execution and the
//! reply cache), and the bounded set of requests a replica is waiting to see executed.

use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};

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

impl ClientRecord {
    fn cached_bytes(&self) -> usize {
        self.results.values().map(Vec::len).sum()
    }
}

/// What every replica remembers of one client key, across its sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeyRecord {
    /// Sessions of this key in the table.
    sessions: usize,
    /// Bytes of cached results of this key's sessions.
    cached_bytes: usize,
    /// The highest session id of this key that expired: a session of this key that is not in
    /// the table with an id at or below it is refused.
    expired_up_to: SessionId,
    /// The sequence number at which one of its sessions last expired.
    last_expiry: Seq,
}

/// The bounds of the client table; replicas must agree on them (they shape the replicated
/// state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientBounds {
    /// How many timestamps below its highest executed one a session's request may carry.
    pub window: u64,
    /// Most sessions remembered over all keys.
    pub max_sessions: usize,
    /// Most sessions remembered of one key.
    pub max_sessions_per_key: usize,
    /// Most bytes of cached results over all sessions.
    pub max_cached_bytes: usize,
    /// Most bytes of cached results of one key's sessions.
    pub max_cached_bytes_per_key: usize,
    /// A session that executed within this many sequence numbers is active: no other key's
    /// new session may expire it.
    pub active_interval: Seq,
}

/// The client table: decides at-most-once execution and answers retransmissions.
///
/// Each client session (see [`SessionKey`]) may have up to `window` requests outstanding. A
/// request executes if its timestamp is inside the window below the session's highest executed
/// one and has not executed yet; older timestamps are refused, so each timestamp executes at
/// most once.
///
/// The table is bounded, with rules every replica applies at the same point of the log, so all
/// of them keep and drop the same entries. Every bound applies to one key first, then to all:
/// - A key has at most `max_sessions_per_key` sessions: a new session beyond it expires that
///   key's least recently active session, whatever its activity. What one key does costs that
///   key alone.
/// - There are at most `max_sessions` sessions: after each batch, idle sessions (none executed
///   within `active_interval`) expire until 15/16 of the bound remain, taken from the key that
///   holds the most sessions first, its least recently active first. A new session that finds
///   the table full of active sessions is refused ([`Outcome::SessionsFull`]) without
///   executing, and may try again later.
/// - Expiry is remembered per key: the key's highest expired session id. A session that is not
///   in the table with an id at or below its key's mark is refused as expired, so an expired
///   session never executes again. Clients number their sessions by time (see
///   `pbft_client::session::new_session_id`), so a key's new sessions are above its mark; a
///   client whose clock runs far ahead or behind refuses only its own key's sessions.
/// - Marks of keys without sessions are kept up to `max_sessions` keys. Beyond that (a cluster
///   open to any key), the lowest mark is forgotten into `forgotten_up_to`, the mark of every
///   key the table does not know; dropping the lowest first keeps that common mark below every
///   mark still held.
/// - Cached results take at most `max_cached_bytes_per_key` per key and `max_cached_bytes` in
///   all: beyond either, the oldest results of the key holding the most bytes go first (the
///   requests stay marked executed, and a retransmission is answered [`Outcome::Forgotten`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTable {
    bounds: ClientBounds,
    sessions: BTreeMap<SessionKey, ClientRecord>,
    keys: BTreeMap<PublicKey, KeyRecord>,
    forgotten_up_to: SessionId,
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

/// Whether a session may execute a request now (see [`ClientTable::admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The table is full of active sessions: not executed, may be sent again later.
    Full,
}

impl ClientTable {
    pub fn new(bounds: ClientBounds) -> ClientTable {
        ClientTable {
            bounds,
            sessions: BTreeMap::new(),
            keys: BTreeMap::new(),
            forgotten_up_to: 0,
            cached_bytes: 0,
        }
    }

    pub fn status(&self, session: &SessionKey, timestamp: Timestamp) -> RequestStatus<'_> {
        let Some(record) = self.sessions.get(session) else {
            return if session.session <= self.expired_up_to(&session.client) {
                RequestStatus::Expired
            } else {
                RequestStatus::New
            };
        };
        if timestamp > record.max_timestamp {
            return RequestStatus::New;
        }
        if record.max_timestamp - timestamp >= self.bounds.window {
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

    /// Makes room for `session` before one of its requests executes at `seq` (its status was
    /// `New`): a session already in the table is admitted as it is; a new one may expire
    /// sessions of its own key, then idle sessions of the keys holding the most. Call it at
    /// the same point of the log at every replica.
    pub fn admit(&mut self, session: SessionKey, seq: Seq) -> Admission {
        if self.sessions.contains_key(&session) {
            return Admission::Admitted;
        }
        let per_key = self.bounds.max_sessions_per_key;
        if self.key_record(&session.client).sessions >= per_key {
            let excess = self.key_record(&session.client).sessions + 1 - (per_key - per_key / 16);
            for old in self.least_recently_active_of(&session.client, excess) {
                self.expire(old, seq);
            }
        }
        let max = self.bounds.max_sessions;
        if self.sessions.len() >= max {
            // Room for at least the newcomer, however small the bound.
            self.expire_idle(seq, (max - max / 16).min(max - 1));
            if self.sessions.len() >= max {
                return Admission::Full;
            }
        }
        self.open(session, seq);
        Admission::Admitted
    }

    /// Records the result of a request executed at `seq` (whose status was `New` and whose
    /// session was admitted).
    pub fn record(&mut self, session: SessionKey, timestamp: Timestamp, result: Vec<u8>, seq: Seq) {
        if !self.sessions.contains_key(&session) {
            self.open(session, seq);
        }
        let window = self.bounds.window;
        let record = self.sessions.get_mut(&session).expect("opened above");
        let key = self.keys.get_mut(&session.client).expect("opened with it");
        record.last_active = seq;
        if timestamp > record.max_timestamp {
            // The new timestamps reuse the ring bits of those leaving the window: clear them.
            // `fresh` is at least 1 and at most `timestamp`, so nothing overflows.
            let fresh = (timestamp - record.max_timestamp).min(record.executed.bits());
            for reused in (timestamp - fresh + 1)..=timestamp {
                record.executed.set(reused, false);
            }
            record.max_timestamp = timestamp;
            let floor = timestamp.saturating_sub(window);
            let kept = record.results.split_off(&(floor + 1));
            let dropped = record.cached_bytes();
            record.results = kept;
            key.cached_bytes -= dropped;
            self.cached_bytes -= dropped;
        }
        record.executed.set(timestamp, true);
        key.cached_bytes += result.len();
        self.cached_bytes += result.len();
        if let Some(replaced) = record.results.insert(timestamp, result) {
            key.cached_bytes -= replaced.len();
            self.cached_bytes -= replaced.len();
        }
        let per_key = self.bounds.max_cached_bytes_per_key;
        if key.cached_bytes > per_key {
            let client = session.client;
            self.drop_results(&client, |key_bytes, _| key_bytes <= per_key - per_key / 16);
        }
    }

    /// Applies the byte budgets of cached results and the bound on remembered keys (see the
    /// type's documentation). Call after every batch, at every replica alike.
    pub fn enforce_bounds(&mut self) {
        let max = self.bounds.max_cached_bytes;
        if self.cached_bytes > max {
            let target = max - max / 16;
            let mut by_bytes: BinaryHeap<(usize, PublicKey)> = (self.keys.iter())
                .filter(|(_, key)| key.cached_bytes > 0)
                .map(|(client, key)| (key.cached_bytes, *client))
                .collect();
            while self.cached_bytes > target {
                let Some((_, client)) = by_bytes.pop() else {
                    break;
                };
                // The key holding the most gives way until it no longer does.
                let next = by_bytes.peek().map_or(0, |(bytes, _)| *bytes);
                let left = self.drop_results(&client, |key_bytes, total| {
                    key_bytes < next || total <= target
                });
                if left > 0 {
                    by_bytes.push((left, client));
                }
            }
        }
        self.forget_keys();
    }

    /// Drops the oldest cached results of `client`'s sessions, least recently active session
    /// first, at least one, until `done(its bytes, all bytes)`. Returns the bytes it has left.
    fn drop_results(&mut self, client: &PublicKey, done: impl Fn(usize, usize) -> bool) -> usize {
        let sessions = self.least_recently_active_of(client, usize::MAX);
        let key = self.keys.get_mut(client).expect("a key of the table");
        'sessions: for session in sessions {
            let record = self.sessions.get_mut(&session).expect("listed above");
            while let Some((_, result)) = record.results.pop_first() {
                key.cached_bytes -= result.len();
                self.cached_bytes -= result.len();
                if done(key.cached_bytes, self.cached_bytes) {
                    break 'sessions;
                }
            }
        }
        key.cached_bytes
    }

    /// Beyond `max_sessions` remembered keys (checked after every batch), forgets the marks of keys without sessions, the
    /// lowest first, into the mark of every unknown key.
    fn forget_keys(&mut self) {
        let max = self.bounds.max_sessions;
        if self.keys.len() <= max {
            return;
        }
        let mut idle: Vec<(SessionId, PublicKey)> = (self.keys.iter())
            .filter(|(_, key)| key.sessions == 0)
            .map(|(client, key)| (key.expired_up_to, *client))
            .collect();
        idle.sort_unstable();
        let excess = self.keys.len() - (max - max / 16);
        for (mark, client) in idle.into_iter().take(excess) {
            self.keys.remove(&client);
            self.forgotten_up_to = self.forgotten_up_to.max(mark);
        }
    }

    /// Expires idle sessions until `target` remain, each time from the key holding the most
    /// sessions, its least recently active first.
    fn expire_idle(&mut self, seq: Seq, target: usize) {
        let active_since = seq.saturating_sub(self.bounds.active_interval);
        let mut idle: BTreeMap<PublicKey, Vec<(Seq, SessionKey)>> = BTreeMap::new();
        for (session, record) in &self.sessions {
            if record.last_active <= active_since {
                idle.entry(session.client)
                    .or_default()
                    .push((record.last_active, *session));
            }
        }
        let mut by_count: BinaryHeap<(usize, PublicKey)> = BinaryHeap::new();
        for (client, sessions) in &mut idle {
            // Oldest last, to be popped first.
            sessions.sort_unstable_by(|a, b| b.cmp(a));
            by_count.push((self.key_record(client).sessions, *client));
        }
        while self.sessions.len() > target {
            let Some((_, client)) = by_count.pop() else {
                break;
            };
            let sessions = idle.get_mut(&client).expect("queued with its sessions");
            let Some((_, session)) = sessions.pop() else {
                continue;
            };
            self.expire(session, seq);
            if !sessions.is_empty() {
                by_count.push((self.key_record(&client).sessions, client));
            }
        }
    }

    fn open(&mut self, session: SessionKey, seq: Seq) {
        let floor = self.forgotten_up_to;
        let key = self
            .keys
            .entry(session.client)
            .or_insert_with(|| KeyRecord {
                expired_up_to: floor,
                ..KeyRecord::default()
            });
        key.sessions += 1;
        self.sessions.insert(
            session,
            ClientRecord {
                max_timestamp: 0,
                executed: ExecutedWindow::new(self.bounds.window),
                results: BTreeMap::new(),
                last_active: seq,
            },
        );
    }

    fn expire(&mut self, session: SessionKey, seq: Seq) {
        let Some(record) = self.sessions.remove(&session) else {
            return;
        };
        let bytes = record.cached_bytes();
        let key = self
            .keys
            .get_mut(&session.client)
            .expect("a key of the table");
        key.sessions -= 1;
        key.cached_bytes -= bytes;
        key.expired_up_to = key.expired_up_to.max(session.session);
        key.last_expiry = seq;
        self.cached_bytes -= bytes;
    }

    fn key_record(&self, client: &PublicKey) -> KeyRecord {
        self.keys.get(client).cloned().unwrap_or_default()
    }

    /// The `count` least recently active sessions of `client`, oldest first.
    fn least_recently_active_of(&self, client: &PublicKey, count: usize) -> Vec<SessionKey> {
        let range = SessionKey {
            client: *client,
            session: 0,
        }..=SessionKey {
            client: *client,
            session: SessionId::MAX,
        };
        let mut by_activity: Vec<(Seq, SessionKey)> = (self.sessions.range(range))
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

    /// The highest expired session id of `client`: its sessions not in the table at or below
    /// it are refused.
    pub fn expired_up_to(&self, client: &PublicKey) -> SessionId {
        self.keys
            .get(client)
            .map_or(self.forgotten_up_to, |key| key.expired_up_to)
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

    fn client(index: u8) -> PublicKey {
        KeyPair::from_seed(&[index; 32]).unwrap().public()
    }

    fn session_of(index: u8, id: SessionId) -> SessionKey {
        SessionKey {
            client: client(index),
            session: id,
        }
    }

    fn session(id: SessionId) -> SessionKey {
        session_of(3, id)
    }

    fn bounds(max_sessions: usize, max_cached_bytes: usize) -> ClientBounds {
        ClientBounds {
            window: 100,
            max_sessions,
            max_sessions_per_key: usize::MAX,
            max_cached_bytes,
            max_cached_bytes_per_key: usize::MAX,
            active_interval: 10,
        }
    }

    fn table(max_sessions: usize, max_cached_bytes: usize) -> ClientTable {
        ClientTable::new(bounds(max_sessions, max_cached_bytes))
    }

    /// Executes one request of `session` at `seq` as a replica does; false if refused.
    fn execute(t: &mut ClientTable, session: SessionKey, timestamp: Timestamp, seq: Seq) -> bool {
        if t.status(&session, timestamp) != RequestStatus::New
            || t.admit(session, seq) == Admission::Full
        {
            return false;
        }
        t.record(session, timestamp, b"ok".to_vec(), seq);
        t.enforce_bounds();
        true
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
    fn the_largest_timestamps_and_session_ids_do_not_overflow() {
        let mut t = table(4, 1 << 20);
        let s = session(SessionId::MAX);
        assert!(execute(&mut t, s, Timestamp::MAX - 1, 1));
        assert!(execute(&mut t, s, Timestamp::MAX, 2));
        assert_eq!(
            t.status(&s, Timestamp::MAX),
            RequestStatus::Executed(Some(b"ok"))
        );
        assert_eq!(t.status(&s, 1), RequestStatus::TooOld);
    }

    #[test]
    fn idle_sessions_expire_when_the_table_is_full_and_never_execute_again() {
        let mut t = table(16, 1 << 20);
        for id in 1..=16 {
            assert!(execute(&mut t, session(id), 1, id));
        }
        assert_eq!(t.len(), 16);
        // Session 1 is active again; 17 is new and finds the table full at seq 40, when all
        // but 1 are idle: the least recently active (2) goes.
        assert!(execute(&mut t, session(1), 2, 35));
        assert!(execute(&mut t, session(17), 1, 40));
        assert_eq!(t.len(), 16);
        assert_eq!(t.expired_up_to(&client(3)), 2);
        assert_eq!(t.status(&session(2), 2), RequestStatus::Expired);
        assert_eq!(
            t.status(&session(1), 2),
            RequestStatus::Executed(Some(b"ok"))
        );
        assert_eq!(
            t.status(&session(3), 1),
            RequestStatus::Executed(Some(b"ok"))
        );
        // A new session above the key's mark starts afresh.
        assert_eq!(t.status(&session(18), 1), RequestStatus::New);
        // Another key has a mark of its own.
        assert_eq!(t.expired_up_to(&client(4)), 0);
        assert_eq!(t.status(&session_of(4, 1), 1), RequestStatus::New);
    }

    #[test]
    fn a_key_that_churns_sessions_expires_only_its_own() {
        let mut t = ClientTable::new(ClientBounds {
            max_sessions_per_key: 8,
            ..bounds(32, 1 << 20)
        });
        let honest = session_of(1, 1_000);
        assert!(execute(&mut t, honest, 1, 1));
        // The attacker opens a session with the largest id, then many more, all at once.
        assert!(execute(&mut t, session_of(2, SessionId::MAX), 1, 2));
        for id in 1..=1_000 {
            execute(&mut t, session_of(2, id), 1, 3);
        }
        assert!(t.len() <= 8 + 1);
        // Its own first session gave way, and its mark now refuses its own later sessions.
        assert_eq!(t.expired_up_to(&client(2)), SessionId::MAX);
        assert_eq!(t.status(&session_of(2, 5_000), 1), RequestStatus::Expired);
        // The honest key is untouched, and its new sessions and fresh keys start.
        assert_eq!(t.status(&honest, 1), RequestStatus::Executed(Some(b"ok")));
        assert!(execute(&mut t, honest, 2, 4));
        assert!(execute(&mut t, session_of(1, 1_001), 1, 4));
        assert!(execute(&mut t, session_of(5, 7), 1, 4));
    }

    #[test]
    fn a_table_full_of_active_sessions_refuses_new_ones_until_some_go_idle() {
        let mut t = table(16, 1 << 20);
        for index in 0..16 {
            assert!(execute(&mut t, session_of(index, 1), 1, 100));
        }
        // Every session executed within the active interval: a new key is refused, and no one
        // expires.
        let newcomer = session_of(200, 1);
        assert_eq!(t.admit(newcomer, 105), Admission::Full);
        assert_eq!(t.status(&newcomer, 1), RequestStatus::New);
        assert_eq!(t.len(), 16);
        // Later, all idle: it gets in, and one idle session gave way.
        assert!(execute(&mut t, newcomer, 1, 200));
        assert_eq!(t.status(&newcomer, 1), RequestStatus::Executed(Some(b"ok")));
    }

    #[test]
    fn the_key_holding_the_most_sessions_gives_way_first() {
        let mut t = table(16, 1 << 20);
        for id in 1..=12 {
            assert!(execute(&mut t, session_of(1, id), 1, 1));
        }
        for id in 1..=4 {
            assert!(execute(&mut t, session_of(2, id), 1, 1));
        }
        // Full and all idle at seq 50: one newcomer makes 1 session go (16 - 16/16 = 15
        // remain before it joins), from key 1 with 12, not key 2 with 4.
        assert!(execute(&mut t, session_of(3, 1), 1, 50));
        assert_eq!(t.expired_up_to(&client(2)), 0);
        assert!(t.expired_up_to(&client(1)) >= 1);
        for id in 1..=4 {
            assert_eq!(
                t.status(&session_of(2, id), 1),
                RequestStatus::Executed(Some(b"ok"))
            );
        }
    }

    #[test]
    fn marks_of_forgotten_keys_keep_the_lowest_mark_for_unknown_keys() {
        let mut t = ClientTable::new(ClientBounds {
            max_sessions_per_key: 1,
            ..bounds(16, 1 << 20)
        });
        // Each of 40 keys opens two sessions: the second expires the first, leaving a mark.
        // The high key's mark is the largest.
        for index in 0..40u8 {
            let high = if index == 0 {
                SessionId::MAX - 1
            } else {
                10 + u64::from(index)
            };
            let seq = 100 * (u64::from(index) + 1);
            assert!(execute(&mut t, session_of(index, high), 1, seq));
            assert!(execute(&mut t, session_of(index, high + 1), 1, seq));
        }
        // Forgotten marks are the lowest ones, so the unknown keys' mark stays far below the
        // high key's; the high key still refuses its own expired session.
        assert!(t.expired_up_to(&client(250)) < 100);
        assert_eq!(
            t.status(&session_of(0, SessionId::MAX - 1), 1),
            RequestStatus::Expired
        );
        assert_eq!(t.status(&session_of(250, 1_000), 1), RequestStatus::New);
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
    fn cached_results_go_from_the_key_holding_the_most_bytes() {
        let mut t = ClientTable::new(ClientBounds {
            max_cached_bytes_per_key: 600,
            ..bounds(10, 1000)
        });
        // Key 1 goes over its own budget alone and is trimmed at once.
        for ts in 1..=7 {
            t.record(session_of(1, 1), ts, vec![0; 100], ts);
        }
        assert_eq!(t.cached_bytes(), 500);
        for ts in 1..=4 {
            t.record(session_of(2, 1), ts, vec![0; 100], 10 + ts);
        }
        for ts in 1..=3 {
            t.record(session_of(3, 1), ts, vec![0; 100], 20 + ts);
        }
        // Over the global budget the key holding the most gives way until it no longer does,
        // then the next: the key holding the least keeps everything.
        t.enforce_bounds();
        assert_eq!(t.cached_bytes(), 900);
        assert_eq!(
            t.status(&session_of(1, 1), 4),
            RequestStatus::Executed(None)
        );
        assert!(matches!(
            t.status(&session_of(1, 1), 5),
            RequestStatus::Executed(Some(_))
        ));
        for ts in 1..=3 {
            assert_eq!(
                t.status(&session_of(3, 1), ts),
                RequestStatus::Executed(Some(&[0; 100][..]))
            );
        }
    }

    #[test]
    fn the_table_is_the_same_whatever_the_replica() {
        let build = || {
            let mut t = table(8, 500);
            for round in 0..40u64 {
                let s = session_of((round % 3) as u8, round % 11 + 1);
                execute(&mut t, s, round / 11 + 1, round * 4);
            }
            t
        };
        let (a, b) = (build(), build());
        assert_eq!(crate::codec::encode(&a), crate::codec::encode(&b));
    }
}
