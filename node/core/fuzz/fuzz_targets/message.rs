//! Arbitrary bytes through the wire decoder and the boundary checks.
//!
//! Every frame a replica receives goes through `Message::decode` and then `messages::verify`
//! before the protocol core sees it. Neither may panic, allocate without bound or loop on any
//! input. A decoded message must also re-encode to exactly the bytes it came from (the codec is
//! canonical), and that encoding must decode to an equal message.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pbft_core::fixtures::{client_key, TestCluster};
use pbft_core::messages::{self, Limits, Message, Sender, StrictCheck};

fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| TestCluster::new(1))
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(message) = Message::decode(data, &limits) else {
        return;
    };

    let encoded = message.encode();
    assert_eq!(
        encoded,
        data,
        "a decoded {} re-encodes to other bytes",
        message.kind()
    );
    let again = Message::decode(&encoded, &limits).expect("an encoded message decodes");
    assert_eq!(again, message, "decoding the encoding changes the message");

    let cluster = cluster();
    // Ids 0 to 3 are the cluster's replicas; 4 is unknown.
    let replica = u32::from(data.first().copied().unwrap_or(0) % 5);
    // A client sending its own request or read is the case that passes the sender check; any
    // other message from a client is refused.
    let client = match &message {
        Message::Request(envelope) => envelope.client,
        Message::Read(read) => read.client,
        _ => client_key(0).public(),
    };
    for sender in [Sender::Replica(replica), Sender::Client(client)] {
        let _ = messages::verify(
            message.clone(),
            sender,
            &cluster.committee,
            &limits,
            &mut StrictCheck,
        );
    }
});
