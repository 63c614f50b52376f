use super::*;
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use sha2::Sha512;

const CLUSTER: ClusterId = ClusterId(Digest([9; 32]));

fn key(n: u8) -> Signer {
    KeyPair::from_seed(&[n; 32]).unwrap().for_cluster(CLUSTER)
}

#[test]
fn sign_and_verify_round_trip() {
    let pair = key(1);
    let digest = Digest::of(Domain::Content, b"hello");
    let signature = pair.sign(Domain::Prepare, &digest);
    pair.public()
        .verify(&CLUSTER, Domain::Prepare, &digest, &signature)
        .unwrap();
}

#[test]
fn signature_for_one_domain_is_invalid_for_another() {
    let pair = key(2);
    let digest = Digest::of(Domain::Content, b"same content");
    let signature = pair.sign(Domain::Prepare, &digest);
    assert!(pair
        .public()
        .verify(&CLUSTER, Domain::Commit, &digest, &signature)
        .is_err());
    assert!(key(3)
        .public()
        .verify(&CLUSTER, Domain::Prepare, &digest, &signature)
        .is_err());
}

#[test]
fn a_signature_for_one_cluster_is_invalid_in_another() {
    let pair = key(2);
    let digest = Digest::of(Domain::Content, b"same content");
    let signature = pair.sign(Domain::Prepare, &digest);
    let other = ClusterId(Digest([8; 32]));
    assert!(pair
        .public()
        .verify(&other, Domain::Prepare, &digest, &signature)
        .is_err());
    let signed_there = pair.key_pair().clone().for_cluster(other);
    assert!(pair
        .public()
        .verify(
            &CLUSTER,
            Domain::Prepare,
            &digest,
            &signed_there.sign(Domain::Prepare, &digest)
        )
        .is_err());
}

#[test]
fn digest_builder_separates_fields_and_domains() {
    let a = DigestBuilder::new(Domain::Content)
        .bytes(b"ab")
        .bytes(b"c")
        .finish();
    let b = DigestBuilder::new(Domain::Content)
        .bytes(b"a")
        .bytes(b"bc")
        .finish();
    assert_ne!(a, b);
    assert_ne!(
        Digest::of(Domain::Content, b"x"),
        Digest::of(Domain::Request, b"x")
    );
}

#[test]
fn weak_public_keys_are_refused() {
    for point in EIGHT_TORSION.iter() {
        let bytes = point.compress().to_bytes();
        assert!(
            PublicKey::from_bytes(&bytes).is_err(),
            "small-order key accepted"
        );
    }
}

#[test]
fn key_files_round_trip_and_refuse_garbage() {
    let dir = std::env::temp_dir().join(format!("pbft-crypto-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    let _ = std::fs::remove_file(&path);
    let pair = KeyPair::generate();
    pair.save(&path).unwrap();
    assert!(pair.save(&path).is_err(), "overwrote an existing key file");
    assert_eq!(KeyPair::load(&path).unwrap().public(), pair.public());
    std::fs::write(&path, "not a key\n").unwrap();
    let error = KeyPair::load(&path).unwrap_err().to_string();
    assert!(error.contains("not a key file"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn key_files_others_may_access_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pbft-crypto-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    let _ = std::fs::remove_file(&path);
    let pair = KeyPair::generate();
    pair.save(&path).unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "saved for its owner only");
    for open in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).unwrap();
        let error = KeyPair::load(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains(&format!("mode {open:04o}")), "{error}");
    }
    for closed in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(closed)).unwrap();
        assert_eq!(KeyPair::load(&path).unwrap().public(), pair.public());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_secret_seed_rebuilds_the_pair() {
    let pair = KeyPair::generate();
    let seed = pair.secret_seed();
    assert_eq!(KeyPair::from_seed(&seed).unwrap().public(), pair.public());
}

#[test]
fn public_key_hex_round_trip() {
    let public = key(4).public();
    assert_eq!(PublicKey::from_hex(&public.to_hex()).unwrap(), public);
    assert!(PublicKey::from_hex("abcd").is_err());
}

/// A signature whose `R` carries an order-8 component: `R = [r]B + T`, `s = r + k·a`.
/// The strict rule rejects it for every message; ed25519-dalek's batch equation only sees
/// `z·T` and so accepts it whenever the transcript-derived `z` is a multiple of 8.
fn torsioned_signature(secret: Scalar, message: &[u8]) -> ([u8; 64], [u8; 32]) {
    let public = (secret * ED25519_BASEPOINT_POINT).compress();
    let nonce = Scalar::from_bytes_mod_order([7u8; 32]);
    let r_point = (nonce * ED25519_BASEPOINT_POINT + EIGHT_TORSION[1]).compress();
    let mut hasher = Sha512::new();
    hasher.update(r_point.as_bytes());
    hasher.update(public.as_bytes());
    hasher.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    let s = nonce + k * secret;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(r_point.as_bytes());
    signature[32..].copy_from_slice(s.as_bytes());
    (signature, public.to_bytes())
}

#[test]
fn batch_verification_disagrees_with_the_strict_rule_but_our_rule_does_not() {
    let secret = Scalar::from_bytes_mod_order([42u8; 32]);
    let mut batch_accepted = 0;
    let mut batch_rejected = 0;
    for attempt in 0u64..200 {
        let digest = DigestBuilder::new(Domain::Content).u64(attempt).finish();
        let message = signed_bytes(&CLUSTER, Domain::Prepare, &digest);
        let (signature, public) = torsioned_signature(secret, &message);
        let public = PublicKey::from_bytes(&public).unwrap();
        let signature = Signature(signature);

        // Our rule rejects it, every time.
        assert!(public
            .verify(&CLUSTER, Domain::Prepare, &digest, &signature)
            .is_err());

        // ed25519-dalek's batch verification accepts it for some messages and not others.
        let dalek_signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        let batch = ed25519_dalek::verify_batch(&[&message[..]], &[dalek_signature], &[public.key]);
        match batch {
            Ok(()) => batch_accepted += 1,
            Err(_) => batch_rejected += 1,
        }
    }
    // About 1 in 8 is accepted by the batch equation.
    assert!(
        batch_accepted > 0,
        "the crafted signature never passed the batch equation"
    );
    assert!(batch_rejected > 0);
}

proptest! {
    #[test]
    fn random_signatures_never_verify(bytes in proptest::collection::vec(any::<u8>(), 64)) {
        let signature = Signature(bytes.try_into().unwrap());
        let digest = Digest::of(Domain::Content, b"m");
        prop_assert!(key(5).public().verify(&CLUSTER, Domain::Commit, &digest, &signature).is_err());
    }

    #[test]
    fn flipping_any_bit_breaks_the_signature(index in 0usize..64, bit in 0u8..8) {
        let pair = key(6);
        let digest = Digest::of(Domain::Content, b"m");
        let mut signature = pair.sign(Domain::Commit, &digest);
        signature.0[index] ^= 1 << bit;
        prop_assert!(pair.public().verify(&CLUSTER, Domain::Commit, &digest, &signature).is_err());
    }
}
