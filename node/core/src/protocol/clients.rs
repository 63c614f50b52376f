//! Per-client bookkeeping that is part of the replicated state (at-most-once execution and the
//! reply cache), and the bounded set of requests a replica is waiting to see executed.

use std::collections::{BTreeMap, HashSet, VecDeque};

use pbft_crypto::{Digest, PublicKey};
use serde::{Deserialize, Serialize};

use crate::messages::{RequestEnvelope, RequestResult, Timestamp, Verified};

/// What every replica remembers of one client. Part of the checkpointed state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The highest timestamp executed.
    pub max_timestamp: Timestamp,
    /// Results of the executed timestamps in `(max_timestamp - window, max_timestamp]`.
    pub recent: BTreeMap<Timestamp, Vec<u8>>,
}

/// The client table: decides at-most-once execution and answers retransmissions.
///
/// A client may have up to `window` requests outstanding. A request executes if its timestamp is
/// inside the window below the highest executed one and has not executed yet; older timestamps
/// are refused, so each timestamp executes at most once. Replicas must agree on `window`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTable {
    window: u64,
    clients: BTreeMap<PublicKey, ClientRecord>,
}

/// What the client table says about one timestamp.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestStatus<'a> {
    /// Not executed yet and inside the window.
    New,
    /// Executed; its result is cached.
    Executed(&'a [u8]),
    /// Below the window: refused for ever.
    TooOld,
}

impl ClientTable {
    pub fn new(window: u64) -> ClientTable {
        ClientTable {
            window,
            clients: BTreeMap::new(),
        }
    }

    pub fn status(&self, client: &PublicKey, timestamp: Timestamp) -> RequestStatus<'_> {
        let Some(record) = self.clients.get(client) else {
            return RequestStatus::New;
        };
        if let Some(result) = record.recent.get(&timestamp) {
            return RequestStatus::Executed(result);
        }
        if timestamp.saturating_add(self.window) <= record.max_timestamp {
            RequestStatus::TooOld
        } else {
            RequestStatus::New
        }
    }

    /// Whether no request of `envelope` is left to execute.
    pub fn is_settled(&self, envelope: &RequestEnvelope) -> bool {
        envelope
            .requests
            .iter()
            .all(|r| self.status(&envelope.client, r.timestamp) != RequestStatus::New)
    }

    /// The cached results of those requests of `envelope` that executed.
    pub fn cached_results(&self, envelope: &RequestEnvelope) -> Vec<RequestResult> {
        envelope
            .requests
            .iter()
            .filter_map(|r| match self.status(&envelope.client, r.timestamp) {
                RequestStatus::Executed(result) => Some(RequestResult {
                    timestamp: r.timestamp,
                    result: result.to_vec(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Records the result of an executed request (whose status was `New`).
    pub fn record(&mut self, client: PublicKey, timestamp: Timestamp, result: Vec<u8>) {
        let window = self.window;
        let record = self.clients.entry(client).or_default();
        record.recent.insert(timestamp, result);
        if timestamp > record.max_timestamp {
            record.max_timestamp = timestamp;
            let floor = record.max_timestamp.saturating_sub(window);
            record.recent = record.recent.split_off(&(floor + 1));
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
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
