//! A replica's driver with a place for a behaviour: what the node and the simulator hold, since
//! either may make a replica faulty. Without a behaviour every call goes straight to the honest
//! [`Driver`]; with one, the replica's output passes through it first.

use std::time::Duration;

use rand::RngCore;

use super::{Behavior, Context, FaultyOutput, FaultySend, Payload};
use crate::driver::{Driver, Effects, Flushed, TimerTable};
use crate::messages::ReplicaId;
use crate::protocol::{Replica, Timer};

/// [`Effects`] that can also put raw bytes on the wire, as some behaviours do.
pub trait RawEffects: Effects {
    /// Sends `bytes` as they are to each replica of `to`, in place of an encoded message.
    fn send_raw(&mut self, to: &[ReplicaId], bytes: Vec<u8>);
}

/// A replica's [`Driver`] and the behaviour it runs under, if any.
pub struct Harness {
    driver: Driver,
    behavior: Option<Box<dyn Behavior>>,
}

impl Harness {
    /// Drives `replica` faithfully or through `behavior`.
    pub fn new(replica: Replica, behavior: Option<Box<dyn Behavior>>) -> Harness {
        Harness {
            driver: Driver::new(replica),
            behavior,
        }
    }

    pub fn replica(&self) -> &Replica {
        self.driver.replica()
    }

    /// The replica, to hand it an input. Call [`Harness::flush`] after every input.
    pub fn replica_mut(&mut self) -> &mut Replica {
        self.driver.replica_mut()
    }

    /// [`Driver::replace_replica`].
    pub fn replace_replica(&mut self, replica: Replica) {
        self.driver.replace_replica(replica);
    }

    pub fn timers(&self) -> &TimerTable {
        self.driver.timers()
    }

    /// Forgets every timer, as a crash does.
    pub fn clear_timers(&mut self) {
        self.driver.clear_timers();
    }

    pub fn behavior(&self) -> Option<&dyn Behavior> {
        self.behavior.as_deref()
    }

    /// Makes the replica Byzantine with `behavior`, or correct again with `None`.
    pub fn set_behavior(&mut self, behavior: Option<Box<dyn Behavior>>) {
        self.behavior = behavior;
    }

    /// [`Driver::flush`], through the behaviour if there is one. `now` and `rng` are what a
    /// behaviour may use.
    pub fn flush<E: RawEffects>(
        &mut self,
        now: Duration,
        rng: &mut dyn RngCore,
        effects: &mut E,
    ) -> Result<Flushed, E::Error> {
        let Some(behavior) = &mut self.behavior else {
            return self.driver.flush(effects);
        };
        let mut ready = self.driver.replica_mut().poll_ready();
        let executed = std::mem::take(&mut ready.executed);
        let halt = ready.halt.take();
        let replica = self.driver.replica();
        let mut ctx = Context {
            id: replica.id(),
            key: replica.signer(),
            committee: replica.committee(),
            now,
            rng,
        };
        let FaultyOutput {
            persist,
            sends,
            replies,
            timers,
        } = behavior.transform(ready, &mut ctx);
        effects.persist(persist)?;
        send_all(&self.driver, sends, effects);
        for reply in replies {
            effects.reply(reply);
        }
        Ok(self.driver.settle(executed, halt, &timers))
    }

    /// [`Driver::fire_timer`], flushing through the behaviour.
    pub fn fire_timer<E: RawEffects>(
        &mut self,
        timer: Timer,
        at: Duration,
        now: Duration,
        rng: &mut dyn RngCore,
        effects: &mut E,
    ) -> Option<Result<Flushed, E::Error>> {
        self.driver
            .take_timer(timer, at, now)
            .then(|| self.flush(now, rng, effects))
    }

    /// When the behaviour next releases a message it held back.
    pub fn next_wakeup(&self) -> Option<Duration> {
        self.behavior.as_ref().and_then(|b| b.next_wakeup())
    }

    /// Sends what the behaviour held back and is due by `now`.
    pub fn release_delayed<E: RawEffects>(&mut self, now: Duration, effects: &mut E) {
        if let Some(behavior) = &mut self.behavior {
            let sends = behavior.poll_delayed(now);
            send_all(&self.driver, sends, effects);
        }
    }
}

fn send_all<E: RawEffects>(driver: &Driver, sends: Vec<FaultySend>, effects: &mut E) {
    for FaultySend { to, payload } in sends {
        let to = driver.recipients(to);
        if to.is_empty() {
            continue;
        }
        match payload {
            Payload::Message(message) => effects.send(to, message),
            Payload::Garbage(bytes) => effects.send_raw(to, bytes),
        }
    }
}
