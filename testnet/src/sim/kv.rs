//! The key-value store under simulation: the simulator's default application.
//!
//! The [`Workload::UniquePuts`] workload writes keys no other client touches, so every accepted
//! write must be in every correct replica's final state. [`Workload::Mixed`] adds writes,
//! compare-and-swaps and read-only gets of a few keys every client shares, which the model
//! judges against the committed history.

use std::collections::BTreeMap;

use pbft_core::app::{KvOp, KvResult, KvStore, StateMachine};
use pbft_core::codec;
use pbft_core::messages::{Outcome, Seq, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::app::{AppModel, ClientOps, SimApp};
use super::client::{Issued, SimClient};

/// Partitions of the simulated store: few, so that a simulated state of a few hundred keys
/// still has partitions that differ and partitions that match between replicas.
const SIM_PARTITIONS: u32 = 16;

/// Keys every client of a [`Workload::Mixed`] run reads and writes.
const SHARED_KEYS: usize = 4;

/// How the names of shared keys begin.
const SHARED_PREFIX: &str = "shared/";

/// The name of shared key `index`.
fn shared_key(index: usize) -> Vec<u8> {
    format!("{SHARED_PREFIX}{index}").into_bytes()
}

/// What a simulated client of the key-value store asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// A put of a key of its own per request.
    #[default]
    UniquePuts,
    /// Per request: a put of a key of its own (40 %), a put of a shared key (20 %), a
    /// compare-and-swap of a shared key against the value the client last saw there (20 %), or
    /// a read-only get of a shared key (20 %).
    Mixed,
}

/// The key-value store with clients running `workload`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvApp {
    pub workload: Workload,
}

impl SimApp for KvApp {
    fn state_machine(&self) -> Box<dyn StateMachine> {
        Box::new(KvStore::with_partitions(SIM_PARTITIONS))
    }

    fn client_ops(&self, index: usize, seed: u64) -> Box<dyn ClientOps> {
        Box::new(KvOps {
            index,
            workload: self.workload,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9)),
            seen: BTreeMap::new(),
        })
    }

    fn model(&self) -> Box<dyn AppModel> {
        Box::new(KvModel::default())
    }
}

/// One client's operations.
struct KvOps {
    index: usize,
    workload: Workload,
    rng: ChaCha8Rng,
    /// The value this client last saw at each shared key, which its compare-and-swaps expect.
    seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl ClientOps for KvOps {
    fn next_op(&mut self, timestamp: Timestamp) -> Issued {
        let value = format!("c{}/v{timestamp}", self.index).into_bytes();
        let own = KvOp::Put {
            key: format!("c{}/{}", self.index, timestamp).into_bytes(),
            value: value.clone(),
        };
        if self.workload == Workload::UniquePuts {
            return Issued {
                op: own.encode(),
                read_only: false,
            };
        }
        let key = shared_key(self.rng.random_range(0..SHARED_KEYS));
        let (op, read_only) = match self.rng.random_range(0..10) {
            0..4 => (own, false),
            4..6 => (KvOp::Put { key, value }, false),
            6..8 => {
                let expected = self.seen.get(&key).cloned().flatten();
                (
                    KvOp::Cas {
                        key,
                        expected,
                        new: value,
                    },
                    false,
                )
            }
            _ => (KvOp::Get { key }, true),
        };
        Issued {
            op: op.encode(),
            read_only,
        }
    }

    /// Notes what an accepted result says a shared key holds.
    fn on_accepted(&mut self, op: &[u8], outcome: &Outcome) {
        let Outcome::Done(bytes) = outcome else {
            return;
        };
        let (Ok(op), Ok(result)) = (decode_op(op), KvResult::decode(bytes)) else {
            return;
        };
        match (op, result) {
            (KvOp::Put { key, value }, KvResult::Done) => {
                self.seen.insert(key, Some(value));
            }
            (KvOp::Cas { key, new, .. }, KvResult::Done) => {
                self.seen.insert(key, Some(new));
            }
            (KvOp::Cas { key, .. } | KvOp::Get { key }, KvResult::CasFailed(current))
            | (KvOp::Get { key }, KvResult::Value(current)) => {
                self.seen.insert(key, current);
            }
            _ => {}
        }
    }
}

fn decode_op(op: &[u8]) -> Result<KvOp, codec::CodecError> {
    codec::decode(op, op.len() as u64)
}

/// A key's value (`None`: absent) after a sequence number.
type KeyChange = (Seq, Option<Vec<u8>>);

/// The committed history replayed on a store of its own.
#[derive(Debug, Default)]
struct KvModel {
    store: KvStore,
    /// The last sequence number applied.
    seq: Seq,
    /// Each key's value after each sequence number that changed it.
    history: BTreeMap<Vec<u8>, Vec<KeyChange>>,
}

impl AppModel for KvModel {
    fn apply(&mut self, seq: Seq, op: &[u8]) -> Vec<u8> {
        self.seq = seq;
        let op = decode_op(op).expect("correct clients encode their operations");
        let key = match &op {
            KvOp::Put { key, .. }
            | KvOp::Get { key }
            | KvOp::Delete { key }
            | KvOp::Cas { key, .. } => key.clone(),
        };
        let result = self.store.apply(op).encode();
        let value = self.store.get(&key).map(<[u8]>::to_vec);
        let changes = self.history.entry(key).or_default();
        match changes.last_mut() {
            Some((at, last)) if *at == seq => *last = value,
            Some((_, last)) if *last == value => {}
            _ => changes.push((seq, value)),
        }
        result
    }

    /// A read-only get returned a value `key` held after some sequence number from the floor
    /// to the last applied.
    fn check_read(&self, op: &[u8], floor: Seq, outcome: &Outcome) -> Result<(), String> {
        let Ok(KvOp::Get { key }) = decode_op(op) else {
            return Err(format!("read: {op:?} is not a get"));
        };
        let value = match outcome {
            Outcome::Done(bytes) => match KvResult::decode(bytes) {
                Ok(KvResult::Value(value)) => value,
                other => return Err(format!("read: accepted {other:?}")),
            },
            _ => return Ok(()),
        };
        let changes = self.history.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let at_floor = changes
            .iter()
            .rev()
            .find(|(seq, _)| *seq <= floor)
            .and_then(|(_, value)| value.clone());
        let later = changes
            .iter()
            .any(|(seq, held)| *seq > floor && *seq <= self.seq && *held == value);
        if at_floor == value || later {
            return Ok(());
        }
        Err(format!(
            "linearizability: a read returned {:?} for {:?}, which the key did not hold between seq {floor} and seq {}",
            value.as_deref().map(String::from_utf8_lossy),
            String::from_utf8_lossy(&key),
            self.seq
        ))
    }

    /// Every accepted write of a key of one client's own is in the state, and each shared key
    /// holds what the committed history left there if the replica executed all of it.
    fn check_final(
        &self,
        state: &dyn StateMachine,
        caught_up: bool,
        clients: &[SimClient],
    ) -> Result<(), String> {
        let entries: BTreeMap<Vec<u8>, Vec<u8>> =
            codec::decode(&state.snapshot(), u64::MAX).expect("own snapshot decodes");
        if caught_up {
            for index in 0..SHARED_KEYS {
                let key = shared_key(index);
                let expected = self.store.get(&key);
                if entries.get(&key).map(Vec::as_slice) != expected {
                    return Err(format!(
                        "history: {:?} holds {:?}, the committed history {expected:?} after seq {}",
                        String::from_utf8_lossy(&key),
                        entries.get(&key),
                        self.seq
                    ));
                }
            }
        }
        for client in clients {
            for (timestamp, (op, _)) in &client.accepted {
                if let Ok(KvOp::Put { key, value }) = decode_op(op) {
                    if key.starts_with(SHARED_PREFIX.as_bytes()) {
                        continue;
                    }
                    if entries.get(&key) != Some(&value) {
                        return Err(format!(
                            "client validity: accepted write {timestamp} of client {} missing",
                            client.index
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
