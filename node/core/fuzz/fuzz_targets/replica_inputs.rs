//! Well-formed but hostile message sequences into the protocol core.
//!
//! Replica 2 of a four-replica cluster (a backup in view 0) receives up to
//! [`MAX_MESSAGES`] messages decoded from the input. Signatures are not checked (`TrustAll`), so
//! any message that decodes and passes the other boundary checks reaches the state machine, as
//! it would if its signers were faulty. Time moves forward between messages and the replica's
//! timers fire when due, as a driver would fire them. The replica must never panic or loop.
//!
//! Input format, repeated until the input ends:
//!
//! | bytes | field                                                                 |
//! |-------|-----------------------------------------------------------------------|
//! | 1     | control: bits 0-1 pick the sender (replica 0, 1 or 3, or a client),   |
//! |       | bits 2-7 how far the clock moves first, in steps of [`TIME_STEP`]     |
//! | 2     | message length, u16 little-endian (cut to the bytes left)             |
//! | len   | the encoded message                                                   |

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pbft_core::driver::TimerTable;
use pbft_core::fixtures::{client_key, TestCluster, TrustAll};
use pbft_core::messages::{self, Limits, Message, ReplicaId, Sender};
use pbft_core::protocol::{Replica, TimerCommand};

/// The replica under test.
const ID: ReplicaId = 2;
/// Most messages taken from one input, to keep each run short.
const MAX_MESSAGES: usize = 64;
/// The clock moves by up to 63 steps before each message: up to about 3 s, longer than the
/// default view-change timeout, so view changes start too.
const TIME_STEP: Duration = Duration::from_millis(50);
/// Timer firings allowed per message, in case a timer is set again at the current time.
const MAX_FIRINGS: usize = 8;

fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| TestCluster::new(1))
}

/// Fires every timer whose deadline has passed, as the node's driver does.
fn fire_due(replica: &mut Replica, timers: &mut TimerTable, now: Duration) {
    for _ in 0..MAX_FIRINGS {
        let Some((timer, at)) = timers.next() else {
            return;
        };
        if at > now {
            return;
        }
        // The replica sets the timer again if it still wants it.
        timers.apply(&[TimerCommand::Cancel(timer)]);
        replica.handle_timer(now, timer);
        timers.apply(&replica.poll_ready().timers);
    }
}

fuzz_target!(|data: &[u8]| {
    let cluster = cluster();
    let limits = Limits::default();
    let mut replica = cluster.replica(ID);
    let mut timers = TimerTable::default();
    // `TestCluster::replica` started the replica and dropped its first outputs. Starting it
    // again at the same time sets the same timers, which the table then holds.
    replica.start(Duration::ZERO);
    timers.apply(&replica.poll_ready().timers);

    let mut now = Duration::ZERO;
    let mut rest = data;
    for _ in 0..MAX_MESSAGES {
        let Some((&control, after)) = rest.split_first() else {
            break;
        };
        let Some((length, after)) = after.split_first_chunk::<2>() else {
            break;
        };
        let length = usize::from(u16::from_le_bytes(*length)).min(after.len());
        let (bytes, after) = after.split_at(length);
        rest = after;

        now += TIME_STEP * u32::from(control >> 2);
        fire_due(&mut replica, &mut timers, now);

        let Ok(message) = Message::decode(bytes, &limits) else {
            continue;
        };
        // The authenticated channel names the sender; a replica never hears from itself.
        let sender = match control & 3 {
            0 => Sender::Replica(0),
            1 => Sender::Replica(1),
            2 => Sender::Replica(3),
            _ => Sender::Client(match &message {
                Message::Request(envelope) => envelope.client,
                Message::Read(read) => read.client,
                _ => client_key(0).public(),
            }),
        };
        let Ok(verified) =
            messages::verify(message, sender, &cluster.committee, &limits, &mut TrustAll)
        else {
            continue;
        };
        replica.handle_message(now, verified);
        timers.apply(&replica.poll_ready().timers);
    }
});
