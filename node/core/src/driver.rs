//! Carrying out what a correct replica asks for, in the one order the protocol allows.
//!
//! Every driver of the core (the tokio runtime, the simulator, the benchmarks and the tests)
//! wraps its [`Replica`] in a [`Driver`] and supplies [`Effects`]: where durable records go and
//! how messages reach a replica or a client. After each input to the replica it calls
//! [`Driver::flush`], which
//! 1. makes `persist` durable ([`Effects::persist`]); if that fails, nothing of the step leaves:
//!    a restarted replica that forgot what it signed could contradict itself;
//! 2. sends the messages, "every replica" expanded to the replica's peers, then the replies;
//! 3. applies the timer commands to the [`TimerTable`].
//!
//! The driver's clock is the replica's: durations since the driver's origin. It fires timers
//! with [`Driver::fire_timer`] when their deadline (in [`Driver::timers`]) passes.
//!
//! A faulty replica is this driver wrapped by a behaviour
//! ([`byzantine::Harness`](crate::byzantine::Harness)); nothing here knows of one.

use std::sync::Arc;
use std::time::Duration;

use crate::messages::{Message, ReplicaId, Reply};
use crate::protocol::{
    Destination, Durable, Executed, Halt, Outgoing, Replica, Timer, TimerCommand,
};

/// Where a replica's effects go.
pub trait Effects {
    type Error;

    /// Makes `records` durable. Called on every flush, with no records too, before the step's
    /// sends and replies. Nothing produced in this step or a later one may leave the replica
    /// before `records` are durable: either this returns only once they are, or the effects
    /// hold every later send and reply until they are. After an `Err` nothing of the step is
    /// sent at all.
    fn persist(&mut self, records: Vec<Durable>) -> Result<(), Self::Error>;

    /// Sends `message` to each replica of `to` (never the sender itself).
    fn send(&mut self, to: &[ReplicaId], message: Arc<Message>);

    /// Sends a reply to its client.
    fn reply(&mut self, reply: Reply);
}

/// The replica's timers: at most one deadline each, on the replica's clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    deadlines: [Option<Duration>; Timer::COUNT],
}

impl TimerTable {
    /// Applies a replica's set and cancel commands.
    pub fn apply(&mut self, commands: &[TimerCommand]) {
        for command in commands {
            match *command {
                TimerCommand::Set { timer, at } => self.deadlines[timer.index()] = Some(at),
                TimerCommand::Cancel(timer) => self.deadlines[timer.index()] = None,
            }
        }
    }

    /// The deadline of `timer`, if set.
    pub fn deadline(&self, timer: Timer) -> Option<Duration> {
        self.deadlines[timer.index()]
    }

    /// The timer that is due first, and when.
    pub fn next(&self) -> Option<(Timer, Duration)> {
        Timer::ALL
            .into_iter()
            .filter_map(|timer| self.deadline(timer).map(|at| (timer, at)))
            .min_by_key(|(_, at)| *at)
    }

    /// Forgets every deadline (a crashed replica's timers die with it).
    pub fn clear(&mut self) {
        self.deadlines = Default::default();
    }
}

/// What one flush carried out that its driver may want to know.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Batches the replica executed, in order.
    pub executed: Vec<Executed>,
    /// Set when the replica halted: the driver must stop it.
    pub halt: Option<Halt>,
    /// Timers set in this flush, with their deadlines (for drivers that schedule each one).
    pub timers_set: Vec<(Timer, Duration)>,
}

/// A correct replica and its timers.
pub struct Driver {
    replica: Replica,
    timers: TimerTable,
    /// Every replica but this one, in id order.
    peers: Vec<ReplicaId>,
}

impl Driver {
    pub fn new(replica: Replica) -> Driver {
        let id = replica.id();
        let peers = replica.committee().ids().filter(|&r| r != id).collect();
        Driver {
            replica,
            timers: TimerTable::default(),
            peers,
        }
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The replica, to hand it an input. Call [`Driver::flush`] after every input.
    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// Replaces the replica (after a restart) and forgets its timers; call
    /// [`Replica::start`] on the new one, then flush.
    pub fn replace_replica(&mut self, replica: Replica) {
        self.replica = replica;
        self.timers.clear();
    }

    pub fn timers(&self) -> &TimerTable {
        &self.timers
    }

    /// Forgets every timer, as a crash does.
    pub fn clear_timers(&mut self) {
        self.timers.clear();
    }

    /// The replicas `to` reaches: the peers for every replica, none for the replica itself or
    /// an id outside the committee.
    pub fn recipients(&self, to: Destination) -> &[ReplicaId] {
        match to {
            Destination::AllReplicas => &self.peers,
            Destination::Replica(id) => match self.peers.binary_search(&id) {
                Ok(at) => &self.peers[at..=at],
                Err(_) => &[],
            },
        }
    }

    /// Carries out everything the replica produced since the last flush, in order: persist,
    /// send, reply, timers. On a failed write nothing is sent and no timer changes; the error
    /// is returned.
    pub fn flush<E: Effects>(&mut self, effects: &mut E) -> Result<Flushed, E::Error> {
        let ready = self.replica.poll_ready();
        effects.persist(ready.persist)?;
        for Outgoing { to, message } in ready.messages {
            let to = self.recipients(to);
            if !to.is_empty() {
                effects.send(to, message);
            }
        }
        for reply in ready.replies {
            effects.reply(reply);
        }
        Ok(self.settle(ready.executed, ready.halt, &ready.timers))
    }

    /// Applies the timer commands of a step that was carried out, and says what it did.
    pub fn settle(
        &mut self,
        executed: Vec<Executed>,
        halt: Option<Halt>,
        timers: &[TimerCommand],
    ) -> Flushed {
        self.timers.apply(timers);
        let timers_set = timers
            .iter()
            .filter_map(|command| match *command {
                TimerCommand::Set { timer, at } => Some((timer, at)),
                TimerCommand::Cancel(_) => None,
            })
            .collect();
        Flushed {
            executed,
            halt,
            timers_set,
        }
    }

    /// Hands `timer` to the replica if its deadline is `at` and has come by `now`; a deadline
    /// that moved or was cancelled does not fire. Returns whether it fired: then flush.
    pub fn take_timer(&mut self, timer: Timer, at: Duration, now: Duration) -> bool {
        if self.timers.deadline(timer) != Some(at) || at > now {
            return false;
        }
        self.timers.apply(&[TimerCommand::Cancel(timer)]);
        self.replica.handle_timer(now, timer);
        true
    }

    /// Fires `timer` as [`Driver::take_timer`] does, then flushes. Returns `None` if it did not
    /// fire.
    pub fn fire_timer<E: Effects>(
        &mut self,
        timer: Timer,
        at: Duration,
        now: Duration,
        effects: &mut E,
    ) -> Option<Result<Flushed, E::Error>> {
        self.take_timer(timer, at, now).then(|| self.flush(effects))
    }
}
