//! The wire format and the boundary checks, from the outside: every message kind round-trips,
//! hostile bytes never panic the decoder or the verifier, and each rule of `verify` refuses the
//! message that breaks it with the expected reason.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pbft_core::fixtures::{client_key as client, request, state_digest, TestCluster as Cluster};
use pbft_core::messages::{
    check_reply, verify_envelope, Batch, Checkpoint, Limits, Message, NewView, Outcome, Phase,
    PreparedCert, Rejection, ReplicaId, Reply, RequestEnvelope, RequestResult, Sender, StrictCheck,
    View, ViewChange, Vote,
};
use pbft_crypto::{Digest, Domain, KeyPair, Signature};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// What these tests add to the shared fixtures: checks that keep only the verdict, and full
/// VIEW-CHANGE and NEW-VIEW samples.
trait Samples {
    fn check(&self, sender: Sender, message: Message) -> Result<(), Rejection>;
    fn check_with(
        &self,
        sender: Sender,
        message: Message,
        limits: &Limits,
    ) -> Result<(), Rejection>;
    fn sample_view_change(&self, new_view: View, replica: ReplicaId) -> ViewChange;
    fn sample_new_view(&self, view: View) -> NewView;
}

impl Samples for Cluster {
    fn check(&self, sender: Sender, message: Message) -> Result<(), Rejection> {
        self.verify(sender, message).map(|_| ())
    }

    fn check_with(
        &self,
        sender: Sender,
        message: Message,
        limits: &Limits,
    ) -> Result<(), Rejection> {
        self.verify_with(sender, message, limits).map(|_| ())
    }

    /// A view change into `new_view` from a stable checkpoint at 128, with two prepared
    /// certificates from the view before.
    fn sample_view_change(&self, new_view: View, replica: ReplicaId) -> ViewChange {
        self.sign_view_change(ViewChange {
            new_view,
            stable_seq: 128,
            checkpoint_proof: self.proof(128),
            prepared: vec![
                self.prepared(new_view - 1, 129, self.batch(1).digest()),
                self.prepared(new_view - 1, 130, self.batch(2).digest()),
            ],
            replica,
            signature: Signature::EMPTY,
        })
    }

    fn sample_new_view(&self, view: View) -> NewView {
        let view_changes = (0..self.committee.quorum() as ReplicaId)
            .map(|i| self.sample_view_change(view, i))
            .collect();
        self.new_view(
            view,
            view_changes,
            &[(129, self.batch(1).digest()), (130, self.batch(2).digest())],
        )
    }
}

/// The position of each variant; a new variant fails to compile here until it has a sample.
fn variant(message: &Message) -> usize {
    match message {
        Message::Request(_) => 0,
        Message::PrePrepare { .. } => 1,
        Message::Prepare { .. } => 2,
        Message::Commit(_) => 3,
        Message::Reply(_) => 4,
        Message::Checkpoint(_) => 5,
        Message::ViewChange(_) => 6,
        Message::NewView(_) => 7,
        Message::FetchBatch { .. } => 8,
        Message::BatchData { .. } => 9,
        Message::FetchState { .. } => 10,
        Message::StateManifest { .. } => 11,
        Message::Status { .. } => 12,
        Message::Committed { .. } => 13,
        Message::StatusQuery { .. } => 14,
        Message::StatusReport(_) => 15,
        Message::Read(_) => 16,
        Message::FetchStateChunk { .. } => 17,
        Message::StateChunk { .. } => 18,
    }
}

const VARIANTS: usize = 19;

/// The f = 1 cluster the samples are signed in.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::new(1))
}

/// One valid message of every variant (two of some), with who may send it.
fn samples() -> &'static [(Sender, Message)] {
    static SAMPLES: OnceLock<Vec<(Sender, Message)>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let c = cluster();
        let digest = c.batch(2).digest();
        let envelope = RequestEnvelope::new(
            &c.client(7),
            1,
            vec![request(3, b"op"), request(9, &[0xff; 100])],
        );
        let commits = (1..=3)
            .map(|i| c.vote(Phase::Commit, 0, 4, digest, i))
            .collect();
        vec![
            (
                Sender::Client(client(7).public()),
                Message::Request(envelope.clone()),
            ),
            (Sender::Replica(2), Message::Request(envelope)),
            (Sender::Replica(0), c.pre_prepare(0, 4, c.batch(2))),
            (Sender::Replica(1), c.pre_prepare(1, 5, Batch::null())),
            (Sender::Replica(2), c.prepare(0, 4, digest, 2)),
            (
                Sender::Replica(3),
                Message::Commit(c.vote(Phase::Commit, 0, 4, digest, 3)),
            ),
            (
                Sender::Replica(1),
                Message::Reply(Reply {
                    view: 0,
                    replica: 1,
                    client: client(7).public(),
                    session: 1,
                    read_only: false,
                    results: vec![RequestResult {
                        timestamp: 3,
                        outcome: Outcome::Done(b"ok".to_vec()),
                    }],
                }),
            ),
            (
                Sender::Replica(2),
                Message::Checkpoint(c.checkpoint(256, 2)),
            ),
            (
                Sender::Replica(3),
                Message::ViewChange(c.sample_view_change(2, 3)),
            ),
            (Sender::Replica(2), Message::NewView(c.sample_new_view(2))),
            (
                Sender::Replica(0),
                Message::FetchBatch {
                    seq: 4,
                    digest,
                    replica: 0,
                },
            ),
            (
                Sender::Replica(1),
                Message::BatchData {
                    seq: 4,
                    batch: c.batch(2),
                },
            ),
            (
                Sender::Replica(3),
                Message::FetchState {
                    seq: 128,
                    replica: 3,
                },
            ),
            (
                Sender::Replica(0),
                c.manifest(128, vec![Digest::of(Domain::Content, &[7; 300])]),
            ),
            (
                Sender::Replica(1),
                Message::Status {
                    replica: 1,
                    view: 3,
                    last_executed: 17,
                    fingerprint: *c.committee.fingerprint(),
                },
            ),
            (
                Sender::Replica(2),
                Message::Committed {
                    batch: c.batch(2),
                    commits,
                },
            ),
            (
                Sender::Client(client(7).public()),
                Message::StatusQuery { nonce: 5 },
            ),
            (
                Sender::Client(client(7).public()),
                Message::Read(pbft_core::messages::ReadRequest {
                    client: client(7).public(),
                    session: 9,
                    timestamp: 4,
                    op: b"get a".to_vec(),
                }),
            ),
            (
                Sender::Replica(3),
                Message::StatusReport(pbft_core::messages::NodeStatus {
                    nonce: 5,
                    replica: 3,
                    view: 2,
                    view_active: true,
                    connected_peers: vec![0, 1, 2],
                    rejected: vec![("bad_signature".into(), 4)],
                    behavior: Some("silent".into()),
                    ..Default::default()
                }),
            ),
            (
                Sender::Replica(3),
                Message::FetchStateChunk {
                    seq: 128,
                    partition: 2,
                    piece: 1,
                    replica: 3,
                },
            ),
            (
                Sender::Replica(0),
                Message::StateChunk {
                    seq: 128,
                    replica: 0,
                    partition: 2,
                    piece: 1,
                    len: (1 << 20) + 300,
                    data: vec![9; 300],
                },
            ),
        ]
    })
}

#[test]
fn samples_cover_every_variant() {
    let mut seen = [false; VARIANTS];
    for (_, message) in samples() {
        seen[variant(message)] = true;
    }
    assert_eq!(seen, [true; VARIANTS]);
}

#[test]
fn every_variant_round_trips() {
    for (_, message) in samples() {
        let bytes = message.encode();
        let decoded = Message::decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(&decoded, message, "{}", message.kind());
        assert_eq!(
            decoded.encode(),
            bytes,
            "{} re-encodes to the same bytes",
            message.kind()
        );
    }
}

#[test]
fn valid_samples_pass_verification() {
    let c = cluster();
    for (sender, message) in samples() {
        match message {
            Message::Reply(reply) => {
                assert_eq!(
                    c.check(*sender, message.clone()),
                    Err(Rejection::Malformed("replicas do not accept replies"))
                );
                check_reply(reply, 1, &c.committee).unwrap();
                assert_eq!(
                    check_reply(reply, 2, &c.committee),
                    Err(Rejection::WrongSender)
                );
                assert_eq!(
                    check_reply(reply, 9, &c.committee),
                    Err(Rejection::UnknownReplica)
                );
            }
            Message::StatusReport(_) => assert_eq!(
                c.check(*sender, message.clone()),
                Err(Rejection::Malformed("replicas do not accept replies"))
            ),
            _ => c
                .check(*sender, message.clone())
                .unwrap_or_else(|e| panic!("valid {} refused: {e}", message.kind())),
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for (_, message) in samples() {
        for extra in [&[0u8][..], &[1, 2, 3], &[0; 64]] {
            let mut bytes = message.encode();
            bytes.extend_from_slice(extra);
            assert!(
                Message::decode(&bytes, &Limits::default()).is_err(),
                "{}",
                message.kind()
            );
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    for (_, message) in samples() {
        let bytes = message.encode();
        for len in 0..bytes.len() {
            assert!(
                Message::decode(&bytes[..len], &Limits::default()).is_err(),
                "{} cut to {len} bytes decoded",
                message.kind()
            );
        }
    }
}

#[test]
fn messages_over_the_byte_limit_are_rejected() {
    let limits = Limits {
        max_message_bytes: 256,
        ..Limits::default()
    };
    let (_, state) = &samples()[13];
    assert!(matches!(state, Message::StateManifest { .. }));
    let bytes = state.encode();
    assert!(bytes.len() > 256);
    assert!(Message::decode(&bytes, &limits).is_err());
}

/// Decodes `bytes` and, if that works, runs the boundary checks from several senders; neither
/// may panic.
fn decode_and_verify(bytes: &[u8]) -> Option<Message> {
    let message = Message::decode(bytes, &Limits::default()).ok()?;
    let c = cluster();
    let senders = [
        Sender::Replica(0),
        Sender::Replica(1),
        Sender::Replica(3),
        Sender::Replica(4),
        Sender::Replica(ReplicaId::MAX),
        Sender::Client(client(7).public()),
    ];
    for sender in senders {
        let _ = c.check(sender, message.clone());
    }
    if let Message::Reply(reply) = &message {
        let _ = check_reply(reply, reply.replica, &c.committee);
    }
    Some(message)
}

/// Values that, written over a length prefix, claim far more data than is there.
const HUGE: [u64; 6] = [
    u64::MAX,
    1 << 63,
    1 << 40,
    1 << 32,
    (64 << 20) + 1,
    64 << 20,
];

#[test]
fn huge_length_prefixes_fail_fast_at_every_offset() {
    // Writing a huge value at every offset hits every length prefix of every variant. A decoder
    // that trusted one would try to allocate terabytes or read far past the input.
    let mut slowest = Duration::ZERO;
    for (_, message) in samples() {
        let bytes = message.encode();
        for offset in 0..bytes.len().saturating_sub(7) {
            for value in HUGE {
                let mut mutated = bytes.clone();
                mutated[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
                let started = Instant::now();
                let decoded = Message::decode(&mutated, &Limits::default());
                slowest = slowest.max(started.elapsed());
                // Most offsets fall inside digests and signatures and decode; verifying those is
                // the mutation property's job.
                if let Ok(decoded) = decoded {
                    assert_eq!(decoded.encode(), mutated, "decoding is canonical");
                }
            }
        }
    }
    // Microseconds each; a generous bound that only an allocation-sized stall could break.
    assert!(
        slowest < Duration::from_secs(1),
        "one decode took {slowest:?}"
    );
}

#[test]
fn a_request_claiming_2_pow_60_requests_is_refused_without_reading_them() {
    let (_, message) = &samples()[0];
    let mut bytes = message.encode();
    // Variant tag (u32), client key (32 bytes), session (u64), then the number of requests (u64).
    let at = 4 + 32 + 8;
    assert_eq!(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()), 2);
    bytes[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let started = Instant::now();
    assert!(Message::decode(&bytes, &Limits::default()).is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// One edit of an encoding.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Insert(Index, u8),
    Remove(Index),
    /// Writes a little-endian u64 at the position, as a length prefix would be.
    Length(Index, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge = prop_oneof![
        proptest::sample::select(HUGE.to_vec()),
        (1u64 << 20)..(1u64 << 62),
        0u64..64
    ];
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), huge).prop_map(|(i, v)| Mutation::Length(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::Extend(extra) => bytes.extend_from_slice(extra),
        _ if len == 0 => {}
        Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) => bytes[i.index(len)] = *b,
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
        Mutation::Remove(i) => {
            bytes.remove(i.index(len));
        }
        Mutation::Length(i, value) if len >= 8 => {
            let at = i.index(len - 7);
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Length(..) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        decode_and_verify(&bytes);
    }

    #[test]
    fn random_bodies_after_a_valid_tag_never_panic(
        tag in 0u32..VARIANTS as u32,
        body in vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = tag.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        decode_and_verify(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        sample in any::<Index>(),
        mutations in vec(mutation(), 1..6),
    ) {
        let (_, message) = sample.get(samples());
        let mut bytes = message.encode();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if let Some(decoded) = decode_and_verify(&bytes) {
            // bincode's fixed-width encoding is canonical: whatever decodes encodes back the same.
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }
}

// ----- the boundary rules, one by one -----

#[test]
fn a_vote_from_another_sender_is_refused() {
    let c = cluster();
    let digest = c.batch(1).digest();
    let commit = Message::Commit(c.vote(Phase::Commit, 0, 1, digest, 2));
    assert_eq!(
        c.check(Sender::Replica(1), commit.clone()),
        Err(Rejection::WrongSender)
    );
    assert_eq!(c.check(Sender::Replica(2), commit.clone()), Ok(()));
    assert_eq!(
        c.check(Sender::Client(client(0).public()), commit),
        Err(Rejection::NotFromReplica)
    );
    let prepare = c.prepare(0, 1, digest, 2);
    assert_eq!(
        c.check(Sender::Replica(3), prepare),
        Err(Rejection::WrongSender)
    );
    let fetch = Message::FetchState {
        seq: 128,
        replica: 3,
    };
    assert_eq!(
        c.check(Sender::Replica(2), fetch),
        Err(Rejection::WrongSender)
    );
    let envelope = RequestEnvelope::new(&c.client(0), 1, vec![request(1, b"x")]);
    assert_eq!(
        c.check(
            Sender::Client(client(1).public()),
            Message::Request(envelope)
        ),
        Err(Rejection::WrongSender)
    );
}

#[test]
fn replica_ids_outside_the_committee_are_refused() {
    let c = cluster();
    let n = c.committee.n() as ReplicaId;
    let digest = c.batch(1).digest();
    // A vote by a key the committee does not hold, claiming id n.
    let outsider = c.committee.signer(KeyPair::from_seed(&[200; 32]).unwrap());
    let commit = Message::Commit(Vote::new(&outsider, Phase::Commit, 0, 1, digest, n));
    assert_eq!(
        c.check(Sender::Replica(n), commit.clone()),
        Err(Rejection::UnknownReplica)
    );
    assert_eq!(
        c.check(Sender::Replica(ReplicaId::MAX), commit),
        Err(Rejection::UnknownReplica)
    );

    // Inside certificates: a prepared certificate and a checkpoint proof naming replica n.
    let mut cert = c.prepared(1, 129, digest);
    cert.prepares[1] = Vote::new(&outsider, Phase::Prepare, 1, 129, digest, n);
    let mut view_change = c.sample_view_change(2, 3);
    view_change.prepared = vec![cert];
    let view_change = c.sign_view_change(view_change);
    assert_eq!(
        c.check(Sender::Replica(3), Message::ViewChange(view_change)),
        Err(Rejection::UnknownReplica)
    );

    let mut proof = c.proof(128);
    proof[2] = Checkpoint::new(&outsider, 128, state_digest(128), n);
    let state = Message::StateManifest {
        seq: 128,
        proof,
        partitions: vec![state_digest(1)],
    };
    assert_eq!(
        c.check(Sender::Replica(0), state),
        Err(Rejection::UnknownReplica)
    );
}

#[test]
fn a_pre_prepare_not_from_the_primary_is_refused() {
    let c = cluster();
    let batch = c.batch(2);
    let backup = c.backup(0, 0);
    let header = c.vote(Phase::PrePrepare, 0, 1, batch.digest(), backup);
    let message = Message::PrePrepare { header, batch };
    assert_eq!(
        c.check(Sender::Replica(backup), message),
        Err(Rejection::NotFromPrimary)
    );

    let mut new_view = c.sample_new_view(2);
    new_view.replica = 3;
    new_view.pre_prepares.clear();
    let new_view = c.sign_new_view(new_view);
    assert_eq!(
        c.check(Sender::Replica(3), Message::NewView(new_view)),
        Err(Rejection::NotFromPrimary)
    );
}

#[test]
fn a_batch_that_does_not_match_its_digest_is_refused() {
    let c = cluster();
    let header = c.header(0, 1, c.batch(2).digest());
    let message = Message::PrePrepare {
        header,
        batch: c.batch(3),
    };
    assert_eq!(
        c.check(Sender::Replica(0), message),
        Err(Rejection::DigestMismatch)
    );

    let commits = (0..3)
        .map(|i| c.vote(Phase::Commit, 0, 1, c.batch(2).digest(), i))
        .collect();
    let committed = Message::Committed {
        batch: c.batch(1),
        commits,
    };
    assert_eq!(
        c.check(Sender::Replica(0), committed),
        Err(Rejection::DigestMismatch)
    );
}

#[test]
fn a_prepare_must_answer_the_primary_header_it_carries() {
    let c = cluster();
    let digest = c.batch(2).digest();
    let Message::Prepare { vote, .. } = c.prepare(0, 1, digest, 2) else {
        unreachable!()
    };
    let other_header = c.header(0, 1, c.batch(1).digest());
    let mismatched = Message::Prepare {
        vote: vote.clone(),
        pre_prepare: other_header,
    };
    assert!(matches!(
        c.check(Sender::Replica(2), mismatched),
        Err(Rejection::Malformed(_))
    ));
    let from_primary = c.prepare(0, 1, digest, 0);
    assert!(matches!(
        c.check(Sender::Replica(0), from_primary),
        Err(Rejection::Malformed(_))
    ));
    let wrong_phase = Message::Commit(vote);
    assert!(matches!(
        c.check(Sender::Replica(2), wrong_phase),
        Err(Rejection::Malformed(_))
    ));
}

/// A view change from replica 3 into view 2 with `edit` applied to its first prepared
/// certificate, signed again so that only the certificate is wrong.
fn view_change_with(c: &Cluster, edit: impl FnOnce(&mut PreparedCert)) -> Message {
    let mut view_change = c.sample_view_change(2, 3);
    edit(&mut view_change.prepared[0]);
    Message::ViewChange(c.sign_view_change(view_change))
}

#[test]
fn a_view_change_with_a_forged_prepared_certificate_is_refused() {
    let c = cluster();
    let send = |message| c.check(Sender::Replica(3), message);
    assert_eq!(send(view_change_with(c, |_| {})), Ok(()));

    let flipped = view_change_with(c, |cert| cert.prepares[1].signature.0[5] ^= 0x10);
    assert_eq!(send(flipped), Err(Rejection::BadSignature));
    let flipped_header = view_change_with(c, |cert| cert.pre_prepare.signature.0[40] ^= 1);
    assert_eq!(send(flipped_header), Err(Rejection::BadSignature));

    let duplicate = view_change_with(c, |cert| cert.prepares[1] = cert.prepares[0].clone());
    assert!(matches!(
        send(duplicate),
        Err(Rejection::InvalidCertificate(_))
    ));
    let short = view_change_with(c, |cert| {
        cert.prepares.pop();
    });
    assert!(matches!(send(short), Err(Rejection::InvalidCertificate(_))));
    let primary_prepares = view_change_with(c, |cert| {
        let (view, seq, digest) = (cert.view(), cert.seq(), cert.digest());
        cert.prepares[0] = c.vote(Phase::Prepare, view, seq, digest, c.primary(view));
    });
    assert!(matches!(
        send(primary_prepares),
        Err(Rejection::InvalidCertificate(_))
    ));
    let other_digest = view_change_with(c, |cert| {
        let (view, seq, replica) = (cert.view(), cert.seq(), cert.prepares[0].replica);
        cert.prepares[0] = c.vote(Phase::Prepare, view, seq, c.batch(3).digest(), replica);
    });
    assert!(matches!(
        send(other_digest),
        Err(Rejection::InvalidCertificate(_))
    ));
    let wrong_primary = view_change_with(c, |cert| {
        let (view, seq, digest) = (cert.view(), cert.seq(), cert.digest());
        cert.pre_prepare = c.vote(Phase::PrePrepare, view, seq, digest, c.backup(view, 99));
    });
    assert!(matches!(
        send(wrong_primary),
        Err(Rejection::InvalidCertificate(_))
    ));
    let current_view = view_change_with(c, |cert| *cert = c.prepared(2, 129, c.batch(1).digest()));
    assert!(matches!(
        send(current_view),
        Err(Rejection::InvalidCertificate(_))
    ));
    let outside_window = view_change_with(c, |cert| {
        *cert = c.prepared(1, 128 + 257, c.batch(1).digest())
    });
    assert!(matches!(
        send(outside_window),
        Err(Rejection::InvalidCertificate(_))
    ));

    // The certificates are part of what the view change's signature covers.
    let Message::ViewChange(mut unsigned) = view_change_with(c, |_| {}) else {
        unreachable!()
    };
    unsigned.prepared.pop();
    assert_eq!(
        send(Message::ViewChange(unsigned)),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn a_view_change_with_a_bad_checkpoint_proof_is_refused() {
    let c = cluster();
    let send = |view_change: ViewChange| {
        c.check(
            Sender::Replica(3),
            Message::ViewChange(c.sign_view_change(view_change)),
        )
    };
    let mut short = c.sample_view_change(2, 3);
    short.checkpoint_proof.pop();
    assert!(matches!(send(short), Err(Rejection::InvalidCertificate(_))));
    let mut repeated = c.sample_view_change(2, 3);
    repeated.checkpoint_proof[2] = repeated.checkpoint_proof[0].clone();
    assert!(matches!(
        send(repeated),
        Err(Rejection::InvalidCertificate(_))
    ));
    let mut mixed = c.sample_view_change(2, 3);
    mixed.checkpoint_proof[2] = Checkpoint::new(c.key(2), 128, state_digest(1), 2);
    assert!(matches!(send(mixed), Err(Rejection::InvalidCertificate(_))));
    let mut into_view_zero = c.sample_view_change(2, 3);
    into_view_zero.new_view = 0;
    into_view_zero.prepared.clear();
    assert!(matches!(
        send(into_view_zero),
        Err(Rejection::InvalidCertificate(_))
    ));
}

#[test]
fn a_new_view_needs_a_quorum_of_distinct_view_changes() {
    let c = cluster();
    let primary = c.primary(2);
    let send = |new_view: NewView| {
        c.check(
            Sender::Replica(primary),
            Message::NewView(c.sign_new_view(new_view)),
        )
    };
    assert_eq!(send(c.sample_new_view(2)), Ok(()));

    let mut too_few = c.sample_new_view(2);
    too_few.view_changes.pop();
    assert_eq!(too_few.view_changes.len(), 2 * c.f());
    assert!(matches!(
        send(too_few),
        Err(Rejection::InvalidCertificate(_))
    ));
    let mut repeated = c.sample_new_view(2);
    repeated.view_changes[2] = repeated.view_changes[0].clone();
    assert!(matches!(
        send(repeated),
        Err(Rejection::InvalidCertificate(_))
    ));
    let mut other_view = c.sample_new_view(2);
    other_view.view_changes[1] = c.sample_view_change(3, 1);
    assert!(matches!(
        send(other_view),
        Err(Rejection::InvalidCertificate(_))
    ));
    let mut foreign_pre_prepare = c.sample_new_view(2);
    foreign_pre_prepare.pre_prepares[0] = c.header(1, 129, c.batch(1).digest());
    assert!(matches!(
        send(foreign_pre_prepare),
        Err(Rejection::InvalidCertificate(_))
    ));
    let mut forged_view_change = c.sample_new_view(2);
    forged_view_change.view_changes[1].signature.0[0] ^= 1;
    assert_eq!(send(forged_view_change), Err(Rejection::BadSignature));
}

#[test]
fn request_envelopes_must_have_increasing_timestamps_and_bounded_size() {
    let c = cluster();
    let limits = Limits::default();
    let sender = Sender::Client(client(0).public());
    let envelope = |requests| Message::Request(RequestEnvelope::new(&c.client(0), 1, requests));
    assert_eq!(
        c.check(sender, envelope(vec![request(1, b"a"), request(2, b"b")])),
        Ok(())
    );
    for bad in [
        vec![request(2, b"a"), request(2, b"b")],
        vec![request(3, b"a"), request(2, b"b")],
        vec![request(0, b"a")],
        vec![],
    ] {
        assert!(matches!(
            c.check(sender, envelope(bad)),
            Err(Rejection::Malformed(_))
        ));
    }
    let oversized = vec![request(1, &vec![0; limits.max_op_bytes + 1])];
    assert!(matches!(
        c.check(sender, envelope(oversized.clone())),
        Err(Rejection::TooLarge(_))
    ));
    let signed = RequestEnvelope::new(&c.client(0), 1, oversized);
    assert!(matches!(
        verify_envelope(signed, c.committee.cluster_id(), &limits, &mut StrictCheck),
        Err(Rejection::TooLarge(_))
    ));
    let many = (1..=limits.max_envelope_requests as u64 + 1)
        .map(|t| request(t, b""))
        .collect();
    assert!(matches!(
        c.check(sender, envelope(many)),
        Err(Rejection::TooLarge(_))
    ));

    // The same rules hold for envelopes inside a batch.
    let mut bad_batch = c.batch(2);
    bad_batch.envelopes[1] =
        RequestEnvelope::new(&c.client(1), 1, vec![request(5, b"a"), request(4, b"b")]);
    let message = c.pre_prepare(0, 1, bad_batch);
    assert!(matches!(
        c.check(Sender::Replica(0), message),
        Err(Rejection::Malformed(_))
    ));
    let small = Limits {
        max_batch_envelopes: 1,
        ..Limits::default()
    };
    let message = c.pre_prepare(0, 1, c.batch(2));
    assert!(matches!(
        c.check_with(Sender::Replica(0), message, &small),
        Err(Rejection::TooLarge(_))
    ));
}

#[test]
fn envelope_size_is_its_encoding_and_an_envelope_larger_than_a_batch_is_refused() {
    let c = cluster();
    for requests in [
        vec![request(1, b"")],
        vec![request(1, b"a"), request(2, &[7; 300])],
        (1..=40).map(|t| request(t, &[1; 17])).collect(),
    ] {
        let envelope = RequestEnvelope::new(&c.client(0), 9, requests);
        assert_eq!(
            envelope.encoded_len(),
            pbft_core::codec::encode(&envelope).len()
        );
    }

    // Many operations, each within its own limit, that together exceed a batch: the attack
    // that once made every primary propose a batch that every backup refused.
    let c = cluster();
    let limits = Limits::default();
    let op = vec![0; limits.max_op_bytes];
    let count = limits.max_batch_bytes / op.len() + 1;
    let requests: Vec<_> = (1..=count as u64).map(|t| request(t, &op)).collect();
    let envelope = RequestEnvelope::new(&c.client(0), 1, requests);
    assert!(envelope.requests.len() <= limits.max_envelope_requests);
    assert_eq!(
        c.check(
            Sender::Client(client(0).public()),
            Message::Request(envelope)
        ),
        Err(Rejection::TooLarge("envelope larger than a batch may be"))
    );
}

#[test]
fn the_largest_envelope_a_batch_holds_fits_the_client_message_limit() {
    let c = cluster();
    let limits = Limits {
        max_batch_bytes: 1000,
        max_op_bytes: 4096,
        ..Limits::default()
    };
    let fits = |op_len: usize| {
        let envelope = RequestEnvelope::new(&c.client(0), 1, vec![request(1, &vec![3; op_len])]);
        (
            envelope.encoded_len(),
            Message::Request(envelope).encode().len() as u64,
        )
    };
    let op_len = (0..limits.max_batch_bytes)
        .rev()
        .find(|&len| fits(len).0 <= limits.max_batch_bytes)
        .unwrap();
    let (envelope_len, message_len) = fits(op_len);
    assert_eq!(envelope_len, limits.max_batch_bytes);
    assert!(
        message_len <= limits.max_client_message_bytes(),
        "{message_len}"
    );
    assert!(limits.max_client_message_bytes() < limits.max_message_bytes);

    let read = Message::Read(pbft_core::messages::ReadRequest {
        client: client(7).public(),
        session: u64::MAX,
        timestamp: u64::MAX,
        op: vec![1; limits.max_op_bytes],
    });
    assert!(read.encode().len() as u64 <= limits.max_client_message_bytes());
}

#[test]
fn a_forged_client_signature_is_refused_even_inside_a_batch() {
    let c = cluster();
    let mut forged = c.batch(2);
    forged.envelopes[0].signature.0[9] ^= 4;
    let message = c.pre_prepare(0, 1, forged.clone());
    assert_eq!(
        c.check(Sender::Replica(0), message),
        Err(Rejection::BadSignature)
    );
    let data = Message::BatchData {
        seq: 1,
        batch: forged.clone(),
    };
    assert_eq!(
        c.check(Sender::Replica(1), data),
        Err(Rejection::BadSignature)
    );
    // Client 0's signed requests claimed by client 1.
    let stolen = RequestEnvelope {
        client: client(1).public(),
        ..c.batch(1).envelopes[0].clone()
    };
    assert_eq!(
        c.check(Sender::Client(client(1).public()), Message::Request(stolen)),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn a_signature_for_one_kind_is_invalid_for_another() {
    let c = cluster();
    let digest = c.batch(2).digest();
    let prepare = c.vote(Phase::Prepare, 0, 1, digest, 2);
    let commit = Vote {
        phase: Phase::Commit,
        ..prepare.clone()
    };
    assert_eq!(
        c.check(Sender::Replica(2), Message::Commit(commit)),
        Err(Rejection::BadSignature)
    );

    // A backup's commit passed off as its pre-prepare, in a view where it is the primary.
    let view = 2;
    let commit = c.vote(Phase::Commit, view, 1, digest, c.primary(view));
    let header = Vote {
        phase: Phase::PrePrepare,
        ..commit
    };
    let message = Message::PrePrepare {
        header,
        batch: c.batch(2),
    };
    assert_eq!(
        c.check(Sender::Replica(c.primary(view)), message),
        Err(Rejection::BadSignature)
    );

    // A checkpoint's signature does not make a commit: both cover a number, a digest and an id.
    let checkpoint = c.checkpoint(1, 2);
    let commit = Vote {
        phase: Phase::Commit,
        view: 0,
        seq: 1,
        digest: checkpoint.state_digest,
        replica: 2,
        signature: checkpoint.signature,
    };
    assert_eq!(
        c.check(Sender::Replica(2), Message::Commit(commit)),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn checkpoints_and_commit_certificates_verify_their_signatures() {
    let c = cluster();
    let mut checkpoint = c.checkpoint(128, 1);
    checkpoint.signature.0[63] ^= 0x80;
    assert_eq!(
        c.check(Sender::Replica(1), Message::Checkpoint(checkpoint)),
        Err(Rejection::BadSignature)
    );
    let mut checkpoint = c.checkpoint(128, 1);
    checkpoint.seq = 256;
    assert_eq!(
        c.check(Sender::Replica(1), Message::Checkpoint(checkpoint)),
        Err(Rejection::BadSignature)
    );

    let digest = c.batch(2).digest();
    let commits = |ids: &[ReplicaId]| {
        ids.iter()
            .map(|&i| c.vote(Phase::Commit, 0, 4, digest, i))
            .collect::<Vec<_>>()
    };
    let committed = |commits| Message::Committed {
        batch: c.batch(2),
        commits,
    };
    assert_eq!(
        c.check(Sender::Replica(0), committed(commits(&[0, 1, 3]))),
        Ok(())
    );
    assert!(matches!(
        c.check(Sender::Replica(0), committed(commits(&[0, 1]))),
        Err(Rejection::InvalidCertificate(_))
    ));
    assert!(matches!(
        c.check(Sender::Replica(0), committed(commits(&[0, 1, 1]))),
        Err(Rejection::InvalidCertificate(_))
    ));
    let mut forged = commits(&[0, 1, 2]);
    forged[2].signature.0[1] ^= 1;
    assert_eq!(
        c.check(Sender::Replica(0), committed(forged)),
        Err(Rejection::BadSignature)
    );

    let state = Message::StateManifest {
        seq: 0,
        proof: Vec::new(),
        partitions: Vec::new(),
    };
    assert!(matches!(
        c.check(Sender::Replica(0), state),
        Err(Rejection::Malformed(_))
    ));
}

#[test]
fn a_state_layout_must_match_its_proof_and_pieces_their_partition() {
    let c = cluster();
    let partitions: Vec<Digest> = (0..3u8)
        .map(|i| Digest::of(Domain::Content, &[i]))
        .collect();
    let good = c.manifest(128, partitions.clone());
    c.check(Sender::Replica(0), good.clone()).unwrap();
    let Message::StateManifest { seq, proof, .. } = good else {
        unreachable!()
    };
    let mut swapped = partitions.clone();
    swapped.swap(0, 1);
    let wrong = Message::StateManifest {
        seq,
        proof: proof.clone(),
        partitions: swapped,
    };
    assert_eq!(
        c.check(Sender::Replica(0), wrong),
        Err(Rejection::DigestMismatch)
    );
    let short = Message::StateManifest {
        seq,
        proof: proof.clone(),
        partitions: partitions[..2].to_vec(),
    };
    assert_eq!(
        c.check(Sender::Replica(0), short),
        Err(Rejection::DigestMismatch)
    );
    let none = Message::StateManifest {
        seq,
        proof,
        partitions: Vec::new(),
    };
    assert!(matches!(
        c.check(Sender::Replica(0), none),
        Err(Rejection::Malformed(_))
    ));
    let piece = |replica, piece, len, data: usize| Message::StateChunk {
        seq,
        replica,
        partition: 0,
        piece,
        len,
        data: vec![0; data],
    };
    let full = pbft_core::messages::state::STATE_PIECE_BYTES;
    c.check(Sender::Replica(0), piece(0, 1, full as u64 + 5, 5))
        .unwrap();
    assert!(matches!(
        c.check(Sender::Replica(0), piece(0, 0, full as u64 + 1, full + 1)),
        Err(Rejection::TooLarge(_))
    ));
    assert!(matches!(
        c.check(Sender::Replica(0), piece(0, 1, full as u64 + 5, 4)),
        Err(Rejection::Malformed(_))
    ));
    assert!(matches!(
        c.check(Sender::Replica(0), piece(0, 2, full as u64 + 5, 0)),
        Err(Rejection::Malformed(_))
    ));
    assert!(matches!(
        c.check(Sender::Replica(0), piece(0, 0, 1 << 40, full)),
        Err(Rejection::Malformed(_))
    ));
    // The channel names the sender: a replica cannot pass its pieces off as another's.
    assert_eq!(
        c.check(Sender::Replica(0), piece(1, 1, full as u64 + 5, 5)),
        Err(Rejection::WrongSender)
    );
}

/// The client list is replicated configuration: an envelope of a key it does not list is
/// refused wherever it appears, whoever relays it, and a replica whose list differs is named.
#[test]
fn envelopes_of_unlisted_clients_are_refused_in_every_message_that_carries_them() {
    use pbft_core::committee::ClientPolicy;
    let open = Cluster::new(1);
    // `batch` signs with client keys 0.., so listing only client 0 leaves client 1 out.
    let listed = std::iter::once(client(0).public()).collect();
    let mut c = Cluster::new(1);
    c.committee = c
        .committee
        .clone()
        .with_clients(ClientPolicy::Allow(listed));
    let unlisted = RequestEnvelope::new(&c.client(1), 1, vec![request(1, b"put")]);
    let two = c.batch(2);
    assert!(two.envelopes.iter().any(|e| e.client == client(1).public()));

    let carriers = [
        (
            Sender::Client(client(1).public()),
            Message::Request(unlisted.clone()),
        ),
        // A faulty replica relaying it as if it were a client's forward.
        (Sender::Replica(1), Message::Request(unlisted)),
        (Sender::Replica(0), c.pre_prepare(0, 1, two.clone())),
        (
            Sender::Replica(2),
            Message::BatchData {
                seq: 1,
                batch: two.clone(),
            },
        ),
        (Sender::Replica(2), c.committed(0, 1, &two)),
    ];
    for (sender, message) in carriers {
        let kind = message.kind();
        assert_eq!(
            c.check(sender, message.clone()),
            Err(Rejection::ClientNotAdmitted),
            "{kind}"
        );
        assert_eq!(
            open.check(sender, message),
            Ok(()),
            "{kind} in an open cluster"
        );
    }
    // The listed client's own envelope passes.
    let own = RequestEnvelope::new(&c.client(0), 1, vec![request(1, b"put")]);
    assert_eq!(
        c.check(Sender::Client(client(0).public()), Message::Request(own)),
        Ok(())
    );

    // A status from a replica configured with another list names the difference.
    let status = |fingerprint| Message::Status {
        replica: 1,
        view: 0,
        last_executed: 0,
        fingerprint,
    };
    assert_eq!(
        c.check(Sender::Replica(1), status(*open.committee.fingerprint())),
        Err(Rejection::ConfigMismatch("the client list"))
    );
    let other_f = Cluster::new(2);
    assert_eq!(
        c.check(Sender::Replica(1), status(*other_f.committee.fingerprint())),
        Err(Rejection::ConfigMismatch("the replicas' keys or f"))
    );
    assert_eq!(
        c.check(Sender::Replica(1), status(*c.committee.fingerprint())),
        Ok(())
    );
}

/// A key reused in another cluster signs nothing valid here: the cluster id is in every signed
/// byte string, so votes, checkpoints and client envelopes signed for the other cluster are
/// refused, while the same messages signed for this one pass.
#[test]
fn messages_signed_for_another_cluster_are_refused() {
    let c = cluster();
    // The same keys of replicas 0 to 3 and of the clients, in a cluster of seven.
    let other = Cluster::new(2);
    assert_ne!(c.committee.cluster_id(), other.committee.cluster_id());
    let digest = c.batch(1).digest();
    // A COMMIT, a CHECKPOINT, a REQUEST and a PRE-PREPARE, signed for `signing`'s cluster.
    let signed_for = |signing: &Cluster| {
        [
            (
                Sender::Replica(1),
                Message::Commit(signing.vote(Phase::Commit, 0, 1, digest, 1)),
            ),
            (
                Sender::Replica(2),
                Message::Checkpoint(signing.checkpoint(128, 2)),
            ),
            (
                Sender::Client(client(0).public()),
                Message::Request(RequestEnvelope::new(
                    &signing.client(0),
                    1,
                    vec![request(1, b"put")],
                )),
            ),
            (Sender::Replica(0), signing.pre_prepare(0, 1, c.batch(1))),
        ]
    };
    let (elsewhere, here) = (signed_for(&other), signed_for(c));
    for ((sender, foreign), (_, own)) in elsewhere.into_iter().zip(here) {
        let kind = own.kind();
        assert_eq!(c.check(sender, own), Ok(()), "{kind} signed here");
        assert_eq!(
            c.check(sender, foreign),
            Err(Rejection::BadSignature),
            "{kind} signed for another cluster"
        );
    }
}
