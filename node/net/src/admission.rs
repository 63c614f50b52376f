//! Who gets a connection, and for how long.
//!
//! - Connections from the cluster's replicas (recognised by their listed address, which is the
//!   address they dial from) have room of their own, so no number of other connections can
//!   lock out a replica, a restarting one included. A source address is easily forged, so a
//!   replica's room is taken only by a connection that proved its address with a QUIC Retry:
//!   forged Initials from a replica's address get a Retry they cannot answer, and no place.
//! - Everyone else shares [`TransportConfig::max_connections`], at most
//!   [`TransportConfig::max_connections_per_address`] from one IP address, handshakes in
//!   progress included. When that room is full, the client connection that has been silent the
//!   longest (at least [`TransportConfig::client_idle_eviction`]) makes way for the newcomer.
//! - A client caught sending what no correct client sends (undecodable frames, bad
//!   signatures) is disconnected and refused for [`TransportConfig::client_ban`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pbft_crypto::PublicKey;

use crate::TransportConfig;

/// Clients refused at once at most; beyond it the ban ending soonest is forgotten.
const MAX_BANS: usize = 4096;

/// Connection counts, shared by the accept loop and the connections' slots.
#[derive(Debug)]
pub(crate) struct Admission {
    max_others: usize,
    max_per_address: usize,
    per_replica: usize,
    retry_above: usize,
    replica_addrs: HashSet<SocketAddr>,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Connections not from a replica's address, handshakes included.
    others: usize,
    /// Those still in their handshake.
    handshaking: usize,
    per_address: HashMap<IpAddr, usize>,
    per_replica: HashMap<SocketAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every replica slot for this replica's address is taken.
    Replica,
    /// The room shared by everyone else is full.
    Total,
    /// This address holds its share.
    Address(IpAddr),
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    remote: SocketAddr,
    from_replica: bool,
    handshaking: bool,
}

impl Admission {
    pub(crate) fn new(cfg: &TransportConfig, replica_addrs: HashSet<SocketAddr>) -> Admission {
        Admission {
            max_others: cfg.max_connections,
            max_per_address: cfg.max_connections_per_address,
            per_replica: cfg.connections_per_replica,
            retry_above: cfg.retry_above_handshakes,
            replica_addrs,
            counts: Mutex::default(),
        }
    }

    /// Whether `remote` is a replica's listed address.
    pub(crate) fn is_replica_address(&self, remote: &SocketAddr) -> bool {
        self.replica_addrs.contains(remote)
    }

    /// Handshakes in progress from addresses other than the replicas'.
    pub(crate) fn handshaking(&self) -> usize {
        self.counts.lock().expect("admission lock").handshaking
    }

    /// Whether a new connection from `remote` must first prove its address with a Retry:
    /// always from a replica's address (else forged packets could take the replica's room),
    /// and from elsewhere once [`TransportConfig::retry_above_handshakes`] are in progress.
    /// `validated` is whether it already did. Decide this before [`Admission::admit`].
    pub(crate) fn needs_retry(&self, remote: &SocketAddr, validated: bool) -> bool {
        !validated && (self.is_replica_address(remote) || self.handshaking() >= self.retry_above)
    }

    /// A place for a connection from `remote`, unless its room is full. With `force`, a place
    /// even so: another connection was just closed to make room.
    pub(crate) fn admit(self: &Arc<Self>, remote: SocketAddr, force: bool) -> Result<Slot, Full> {
        let from_replica = self.is_replica_address(&remote);
        let mut counts = self.counts.lock().expect("admission lock");
        if from_replica {
            let taken = counts.per_replica.entry(remote).or_default();
            if *taken >= self.per_replica {
                return Err(Full::Replica);
            }
            *taken += 1;
        } else {
            let ip = remote.ip();
            let at_address = counts.per_address.get(&ip).copied().unwrap_or(0);
            if !force {
                if counts.others >= self.max_others {
                    return Err(Full::Total);
                }
                if at_address >= self.max_per_address {
                    return Err(Full::Address(ip));
                }
            }
            counts.others += 1;
            counts.handshaking += 1;
            counts.per_address.insert(ip, at_address + 1);
        }
        Ok(Slot {
            admission: self.clone(),
            remote,
            from_replica,
            handshaking: !from_replica,
        })
    }
}

impl Slot {
    /// The handshake is over; the place stays taken.
    pub(crate) fn established(&mut self) {
        if self.handshaking {
            self.handshaking = false;
            let mut counts = self.admission.counts.lock().expect("admission lock");
            counts.handshaking -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().expect("admission lock");
        if self.from_replica {
            if let Some(taken) = counts.per_replica.get_mut(&self.remote) {
                *taken -= 1;
                if *taken == 0 {
                    counts.per_replica.remove(&self.remote);
                }
            }
            return;
        }
        counts.others -= 1;
        if self.handshaking {
            counts.handshaking -= 1;
        }
        let ip = self.remote.ip();
        if let Some(at_address) = counts.per_address.get_mut(&ip) {
            *at_address -= 1;
            if *at_address == 0 {
                counts.per_address.remove(&ip);
            }
        }
    }
}

/// Clients refused until a deadline, shared with the TLS verifier.
#[derive(Debug, Default)]
pub(crate) struct Bans {
    until: Mutex<HashMap<PublicKey, Instant>>,
}

impl Bans {
    /// Refuses `key` until `until`.
    pub(crate) fn ban(&self, key: PublicKey, until: Instant) {
        let mut bans = self.until.lock().expect("bans lock");
        if bans.len() >= MAX_BANS && !bans.contains_key(&key) {
            let now = Instant::now();
            bans.retain(|_, end| *end > now);
            if bans.len() >= MAX_BANS {
                if let Some(soonest) = bans.iter().min_by_key(|(_, end)| **end).map(|(k, _)| *k) {
                    bans.remove(&soonest);
                }
            }
        }
        let end = bans.entry(key).or_insert(until);
        *end = (*end).max(until);
    }

    /// Whether `key` is refused now.
    pub(crate) fn is_banned(&self, key: &PublicKey) -> bool {
        let mut bans = self.until.lock().expect("bans lock");
        match bans.get(key) {
            Some(end) if *end > Instant::now() => true,
            Some(_) => {
                bans.remove(key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn admission(max: usize, per_address: usize) -> Arc<Admission> {
        let cfg = TransportConfig {
            max_connections: max,
            max_connections_per_address: per_address,
            connections_per_replica: 2,
            retry_above_handshakes: 2,
            ..TransportConfig::default()
        };
        Arc::new(Admission::new(&cfg, [addr("10.0.0.1:9000")].into()))
    }

    #[test]
    fn replicas_keep_their_room_when_everyone_else_is_full() {
        let admission = admission(2, 2);
        let held = [
            admission.admit(addr("10.0.0.9:1"), false).unwrap(),
            admission.admit(addr("10.0.0.8:1"), false).unwrap(),
        ];
        assert_eq!(
            admission.admit(addr("10.0.0.7:1"), false).unwrap_err(),
            Full::Total
        );
        let replica = [
            admission.admit(addr("10.0.0.1:9000"), false).unwrap(),
            admission.admit(addr("10.0.0.1:9000"), false).unwrap(),
        ];
        assert_eq!(
            admission.admit(addr("10.0.0.1:9000"), false).unwrap_err(),
            Full::Replica
        );
        // The same host on another port is not the replica.
        assert_eq!(
            admission.admit(addr("10.0.0.1:9001"), false).unwrap_err(),
            Full::Total
        );
        drop(replica);
        drop(held);
        assert!(admission.admit(addr("10.0.0.7:1"), false).is_ok());
    }

    #[test]
    fn a_replica_address_is_validated_before_it_gets_a_place() {
        let admission = admission(10, 10);
        let replica = addr("10.0.0.1:9000");
        assert!(admission.needs_retry(&replica, false), "unproven");
        assert!(!admission.needs_retry(&replica, true), "proven by a Retry");
        // Others are asked only once enough handshakes are in progress.
        let client = addr("10.0.0.9:1");
        assert!(!admission.needs_retry(&client, false));
        let _held = [
            admission.admit(addr("10.0.0.8:1"), false).unwrap(),
            admission.admit(addr("10.0.0.7:1"), false).unwrap(),
        ];
        assert!(admission.needs_retry(&client, false));
        assert!(!admission.needs_retry(&client, true));
    }

    #[test]
    fn one_address_gets_its_share_and_places_come_back() {
        let admission = admission(10, 2);
        let mut first = admission.admit(addr("10.0.0.9:1"), false).unwrap();
        let _second = admission.admit(addr("10.0.0.9:2"), false).unwrap();
        let ip = addr("10.0.0.9:3").ip();
        assert_eq!(
            admission.admit(addr("10.0.0.9:3"), false).unwrap_err(),
            Full::Address(ip)
        );
        assert!(admission.admit(addr("10.0.0.8:1"), false).is_ok());
        assert_eq!(admission.handshaking(), 2);
        first.established();
        assert_eq!(admission.handshaking(), 1);
        drop(first);
        assert!(admission.admit(addr("10.0.0.9:3"), false).is_ok());
        assert!(admission.admit(addr("10.0.0.9:4"), true).is_ok(), "forced");
    }

    #[test]
    fn bans_end_and_stay_bounded() {
        let bans = Bans::default();
        let key = |seed: u8| {
            pbft_crypto::KeyPair::from_seed(&[seed; 32])
                .unwrap()
                .public()
        };
        let now = Instant::now();
        bans.ban(key(1), now + Duration::from_secs(60));
        bans.ban(key(2), now);
        assert!(bans.is_banned(&key(1)));
        assert!(!bans.is_banned(&key(2)), "its ban is over");
        assert!(!bans.is_banned(&key(3)));
        for i in 0..MAX_BANS + 10 {
            let pair = pbft_crypto::KeyPair::from_seed(&{
                let mut seed = [7u8; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                seed
            })
            .unwrap();
            bans.ban(pair.public(), now + Duration::from_secs(60));
        }
        assert!(bans.until.lock().unwrap().len() <= MAX_BANS);
    }
}
