//! The primary's batching: at once with nothing in flight; with a batch in flight, the next one
//! fills until enough is pending or its delay has passed.

use std::time::Duration;

use pbft_core::app::KvOp;
use pbft_core::fixtures::{request, TestCluster};
use pbft_core::messages::{Message, RequestEnvelope, Sender};
use pbft_core::protocol::{ProtocolConfig, Replica, Timer, TimerCommand};

const MS: Duration = Duration::from_millis(1);

/// Client `i` sends one put at `now`; returns the PRE-PREPAREs the primary sent, as
/// (sequence number, envelopes in the batch), and the batch timer's deadline if it set one.
fn submit(
    c: &TestCluster,
    primary: &mut Replica,
    now: Duration,
    i: usize,
) -> (Vec<(u64, usize)>, Option<Duration>) {
    let op = KvOp::Put {
        key: format!("key-{i}").into_bytes(),
        value: vec![7; 100],
    }
    .encode();
    let envelope = RequestEnvelope::new(&c.client(i), 1, vec![request(1, &op)]);
    let sender = Sender::Client(c.client(i).public());
    let verified = c
        .verify(sender, Message::Request(envelope))
        .expect("a valid request");
    primary.handle_message(now, verified);
    proposals(primary)
}

fn proposals(primary: &mut Replica) -> (Vec<(u64, usize)>, Option<Duration>) {
    let ready = primary.poll_ready();
    let proposed = ready
        .messages
        .iter()
        .filter_map(|out| match &*out.message {
            Message::PrePrepare { header, batch } => Some((header.seq, batch.envelopes.len())),
            _ => None,
        })
        .collect();
    let timer = ready.timers.iter().find_map(|command| match *command {
        TimerCommand::Set {
            timer: Timer::Batch,
            at,
        } => Some(at),
        _ => None,
    });
    (proposed, timer)
}

fn primary_with(c: &TestCluster, fill: usize, delay: Duration) -> Replica {
    c.replica_with(
        0,
        ProtocolConfig {
            batch_fill_bytes: fill,
            batch_delay: delay,
            ..ProtocolConfig::default()
        },
    )
}

#[test]
fn with_a_batch_in_flight_the_next_one_fills_until_its_delay() {
    let c = TestCluster::new(1);
    let mut primary = primary_with(&c, 64 << 10, MS);
    // Nothing in flight: proposed at once.
    assert_eq!(submit(&c, &mut primary, MS, 0), (vec![(1, 1)], None));
    // Batch 1 in flight: the next waits, for at most the delay from when it began to fill.
    let (proposed, timer) = submit(&c, &mut primary, 2 * MS, 1);
    assert_eq!((proposed, timer), (vec![], Some(3 * MS)));
    let (proposed, _) = submit(&c, &mut primary, 2 * MS + MS / 2, 2);
    assert!(proposed.is_empty(), "proposed before the batch filled");
    primary.handle_timer(3 * MS, Timer::Batch);
    assert_eq!(
        proposals(&mut primary).0,
        vec![(2, 2)],
        "one batch of both waiting envelopes"
    );
}

#[test]
fn a_batch_that_filled_or_a_delay_of_zero_is_proposed_at_once() {
    let c = TestCluster::new(1);
    // A 100-byte put is past a fill of one byte.
    let mut primary = primary_with(&c, 1, MS);
    assert_eq!(submit(&c, &mut primary, MS, 0).0, vec![(1, 1)]);
    assert_eq!(submit(&c, &mut primary, 2 * MS, 1).0, vec![(2, 1)]);
    let mut primary = primary_with(&c, 64 << 10, Duration::ZERO);
    assert_eq!(submit(&c, &mut primary, MS, 0).0, vec![(1, 1)]);
    assert_eq!(submit(&c, &mut primary, 2 * MS, 1), (vec![(2, 1)], None));
}
