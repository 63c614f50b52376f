//! The simulation's event queue: what happens next, in time order, ties broken by the order of
//! scheduling so that a seed replays exactly.

use std::time::Duration;

use pbft_core::byzantine::Payload;
use pbft_core::messages::ReplicaId;
use pbft_core::protocol::Timer;

use super::network::Node;

#[derive(Debug)]
pub(super) enum Event {
    Deliver {
        from: Node,
        to: Node,
        payload: Payload,
    },
    Timer {
        replica: ReplicaId,
        timer: Timer,
        at: Duration,
    },
    ClientTick {
        client: usize,
    },
    AttackTick {
        attacker: usize,
    },
    /// A Byzantine replica's behaviour has held-back sends due.
    Wake {
        replica: ReplicaId,
    },
}

pub(super) struct Queued {
    pub(super) at: Duration,
    pub(super) order: u64,
    pub(super) event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}
