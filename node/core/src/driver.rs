//! Carrying out what a replica asks for, in the one order the protocol allows.
//!
//! Every driver of the core (the tokio runtime, the simulator, the benchmarks and the tests)
//! wraps its [`Replica`] in a [`Driver`] and supplies [`Effects`]: where durable records go and
//! how bytes reach a replica or a client. After each input to the replica it calls
//! [`Driver::flush`], which
//! 1. passes the replica's [`Ready`](crate::protocol::Ready) through its Byzantine behaviour, if it has one;
//! 2. makes `persist` durable ([`Effects::persist`]); if that fails, nothing of the step leaves:
//!    a restarted replica that forgot what it signed could contradict itself;
//! 3. sends the messages, "every replica" expanded to the replica's peers, then the replies;
//! 4. applies the timer commands to the [`TimerTable`].
//!
//! The driver's clock is the replica's: durations since the driver's origin. It fires timers
//! with [`Driver::fire_timer`] when their deadline (in [`Driver::timers`]) passes, and releases
//! what a behaviour held back with [`Driver::release_delayed`] at [`Driver::next_wakeup`].

use std::time::Duration;

use rand::RngCore;

use crate::byzantine::{self, Behavior, Context, FaultyOutput, FaultySend, Payload};
use crate::messages::{ReplicaId, Reply};
use crate::protocol::{Destination, Durable, Executed, Halt, Replica, Timer, TimerCommand};

/// Where a replica's effects go.
pub trait Effects {
    type Error;

    /// Makes `records` durable. Called on every flush, with no records too. Nothing produced in
    /// the same step is sent before this returns `Ok`; after an `Err` nothing of the step is
    /// sent at all.
    fn persist(&mut self, records: &[Durable]) -> Result<(), Self::Error>;

    /// Sends `payload` to each replica of `to` (never the sender itself).
    fn send(&mut self, to: &[ReplicaId], payload: Payload);

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

/// A replica with its behaviour (none for a correct replica) and its timers.
pub struct Driver {
    replica: Replica,
    behavior: Option<Box<dyn Behavior>>,
    timers: TimerTable,
    peers: Vec<ReplicaId>,
}

impl Driver {
    /// Drives `replica` faithfully or through `behavior`.
    pub fn new(replica: Replica, behavior: Option<Box<dyn Behavior>>) -> Driver {
        let id = replica.id();
        let peers = replica.committee().ids().filter(|&r| r != id).collect();
        Driver {
            replica,
            behavior,
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

    pub fn behavior(&self) -> Option<&dyn Behavior> {
        self.behavior.as_deref()
    }

    /// Makes the replica Byzantine with `behavior`, or correct again with `None`.
    pub fn set_behavior(&mut self, behavior: Option<Box<dyn Behavior>>) {
        self.behavior = behavior;
    }

    pub fn timers(&self) -> &TimerTable {
        &self.timers
    }

    /// Forgets every timer, as a crash does.
    pub fn clear_timers(&mut self) {
        self.timers.clear();
    }

    /// Carries out everything the replica produced since the last flush, in order: persist,
    /// send, reply, timers. `now` and `rng` are what a behaviour may use. On a failed write
    /// nothing is sent and no timer changes; the error is returned.
    pub fn flush<E: Effects>(
        &mut self,
        now: Duration,
        rng: &mut dyn RngCore,
        effects: &mut E,
    ) -> Result<Flushed, E::Error> {
        let mut ready = self.replica.poll_ready();
        let executed = std::mem::take(&mut ready.executed);
        let halt = ready.halt.take();
        let output = match &mut self.behavior {
            None => byzantine::honest(ready),
            Some(behavior) => {
                let mut ctx = Context {
                    id: self.replica.id(),
                    key: self.replica.signer(),
                    committee: self.replica.committee(),
                    now,
                    rng,
                };
                behavior.transform(ready, &mut ctx)
            }
        };
        let FaultyOutput {
            persist,
            sends,
            replies,
            timers,
        } = output;
        effects.persist(&persist)?;
        self.send_all(sends, effects);
        for reply in replies {
            effects.reply(reply);
        }
        self.timers.apply(&timers);
        let timers_set = timers
            .iter()
            .filter_map(|command| match *command {
                TimerCommand::Set { timer, at } => Some((timer, at)),
                TimerCommand::Cancel(_) => None,
            })
            .collect();
        Ok(Flushed {
            executed,
            halt,
            timers_set,
        })
    }

    /// Fires `timer` if its deadline is `at` and has come by `now` (a deadline that moved or was
    /// cancelled does not fire), then flushes. Returns `None` if it did not fire.
    pub fn fire_timer<E: Effects>(
        &mut self,
        timer: Timer,
        at: Duration,
        now: Duration,
        rng: &mut dyn RngCore,
        effects: &mut E,
    ) -> Option<Result<Flushed, E::Error>> {
        if self.timers.deadline(timer) != Some(at) || at > now {
            return None;
        }
        self.timers.apply(&[TimerCommand::Cancel(timer)]);
        self.replica.handle_timer(now, timer);
        Some(self.flush(now, rng, effects))
    }

    /// When a behaviour next releases a message it held back.
    pub fn next_wakeup(&self) -> Option<Duration> {
        self.behavior.as_ref().and_then(|b| b.next_wakeup())
    }

    /// Sends what a behaviour held back and is due by `now`.
    pub fn release_delayed<E: Effects>(&mut self, now: Duration, effects: &mut E) {
        let sends = match &mut self.behavior {
            Some(behavior) => behavior.poll_delayed(now),
            None => return,
        };
        self.send_all(sends, effects);
    }

    fn send_all<E: Effects>(&self, sends: Vec<FaultySend>, effects: &mut E) {
        let id = self.replica.id();
        for send in sends {
            match send.to {
                Destination::Replica(to) if to != id => effects.send(&[to], send.payload),
                Destination::Replica(_) => {}
                Destination::AllReplicas => effects.send(&self.peers, send.payload),
            }
        }
    }
}
