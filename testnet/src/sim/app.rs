//! The application a simulation replicates, as the simulator sees it: its state machine, the
//! operations clients issue, and a sequential model that judges the answers. The key-value
//! store's is [`super::KvApp`]; another application plugs in through [`SimApp`].

use pbft_core::app::StateMachine;
use pbft_core::messages::{Outcome, Seq, Timestamp};

use super::client::{Issued, SimClient};

/// An application under simulation.
pub trait SimApp: Send + Sync {
    /// The application in its initial state, for every replica that starts, recovers or
    /// rejoins.
    fn state_machine(&self) -> Box<dyn StateMachine>;

    /// What client `index` asks for; its random choices come from `seed` alone, so a seed
    /// replays a run exactly.
    fn client_ops(&self, index: usize, seed: u64) -> Box<dyn ClientOps>;

    /// A model in the initial state.
    fn model(&self) -> Box<dyn AppModel>;
}

/// The operations one client issues.
pub trait ClientOps: Send {
    /// The operation of the request with `timestamp`.
    fn next_op(&mut self, timestamp: Timestamp) -> Issued;

    /// The client accepted `outcome` for `op`: what later operations may depend on.
    fn on_accepted(&mut self, op: &[u8], outcome: &Outcome);
}

/// The application applied sequentially, in the order the committed history gives.
pub trait AppModel: Send {
    /// Applies a correct client's `op`, executed at `seq`, and returns the result every correct
    /// replica must have computed.
    fn apply(&mut self, seq: Seq, op: &[u8]) -> Vec<u8>;

    /// Judges the answer to the read-only `op`: linearizable if the state it reflects held at
    /// some sequence number from `floor` (every ordered request accepted before the read was
    /// issued) to the last applied.
    fn check_read(&self, op: &[u8], floor: Seq, outcome: &Outcome) -> Result<(), String>;

    /// Judges the final state of a correct replica, which executed all of the history applied
    /// here if `caught_up`, and what `clients` accepted.
    fn check_final(
        &self,
        state: &dyn StateMachine,
        caught_up: bool,
        clients: &[SimClient],
    ) -> Result<(), String>;
}
