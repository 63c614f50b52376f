//! Twins: a second process with a replica's key and a state of its own. Each node's link to a
//! twinned replica reaches one of its two processes, in both directions, as a shared UDP port
//! does.

use pbft_core::byzantine::{BehaviorKind, Harness};
use pbft_core::messages::ReplicaId;
use pbft_core::protocol::Replica;
use rand::Rng;

use super::disk::SimDisk;
use super::network::Node;
use super::{SimReplica, Simulation};

impl Simulation {
    pub(super) fn start_twin(&mut self, id: ReplicaId) {
        let key = self.replicas[id as usize].key.clone();
        let replica = Replica::new(
            id,
            self.committee.clone(),
            self.config.protocol.clone(),
            key.clone(),
            self.app.state_machine(),
        )
        .expect("valid replica");
        let behavior = Some(BehaviorKind::Twin.build_with(&self.config.protocol));
        let place = self.replicas.len() as ReplicaId;
        self.replicas.push(SimReplica {
            identity: id,
            driver: Harness::new(replica, behavior),
            key,
            crashed: false,
            disk: SimDisk::default(),
            crash_in_write: None,
            wake_at: None,
        });
        self.twins.insert(id, place);
        let now = self.now;
        self.replicas[place as usize]
            .driver
            .replica_mut()
            .start(now);
        // A twin is faulty: what it does is not checked, only carried out.
        let _ = self.flush(place);
    }

    /// Where a message from `from` to `to` arrives, if anywhere. A node's link to a twinned
    /// replica reaches one of its two processes, in both directions, as a shared UDP port does:
    /// messages to the replica go to that process, and the other one's messages to the node are
    /// lost (its handshake answers reach the wrong process).
    pub(super) fn twin_route(&mut self, from: Node, to: Node) -> Option<Node> {
        if let Node::Replica(place) = from {
            let identity = self.replicas[place as usize].identity;
            if let Some(&twin) = self.twins.get(&identity) {
                if self.reaches_twin(to, identity) != (place == twin) {
                    return None;
                }
            }
        }
        let Node::Replica(id) = to else {
            return Some(to);
        };
        let Some(&twin) = self.twins.get(&id) else {
            return Some(to);
        };
        Some(if self.reaches_twin(from, id) {
            Node::Replica(twin)
        } else {
            to
        })
    }

    /// The replicas whose link to twinned replica `id` reaches the first process, and those
    /// whose link reaches the twin (links are drawn when first used).
    pub fn twin_links(&self, id: ReplicaId) -> (Vec<ReplicaId>, Vec<ReplicaId>) {
        let mut sides = (Vec::new(), Vec::new());
        for (&(node, to), &reaches_twin) in &self.twin_sides {
            if let (Node::Replica(from), true) = (node, to == id) {
                if reaches_twin {
                    sides.1.push(from);
                } else {
                    sides.0.push(from);
                }
            }
        }
        sides
    }

    /// Whether `node`'s link to twinned replica `id` reaches the twin; drawn once per link.
    fn reaches_twin(&mut self, node: Node, id: ReplicaId) -> bool {
        // A process of a twinned replica links as the replica it runs for.
        let node = match node {
            Node::Replica(place) => Node::Replica(self.replicas[place as usize].identity),
            other => other,
        };
        let rng = &mut self.rng;
        *self
            .twin_sides
            .entry((node, id))
            .or_insert_with(|| rng.random_bool(0.5))
    }
}
