//! Keys, signatures and digests for the PBFT replica.
//!
//! Every signed protocol message is signed over a [`Digest`] that was computed with a
//! [`DigestBuilder`] started from a [`Domain`]. The domain is hashed first and is part of the
//! signed bytes again, so a signature made for one kind of message never validates as another.
//! The signed bytes also carry a [`ClusterId`]: only a [`Signer`], a key bound to one cluster,
//! signs, so a key reused in two clusters signs nothing that is valid in both.
//!
//! Validity is decided by one rule only: ed25519-dalek's `verify_strict`, with weak (small-order)
//! public keys refused when they are parsed. Batch verification is deliberately not offered: its
//! result for a signature whose `R` has a small-order component depends on the rest of the batch,
//! so two correct replicas could disagree on the same signature (see the tests).
//! This crate does no IO other than key files, and uses no async runtime.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
pub use zeroize::Zeroizing;

/// Errors from key handling and verification.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("public key is not a valid curve point")]
    InvalidPublicKey,
    #[error("public key is weak (small order) and is refused")]
    WeakPublicKey,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("invalid hex: {0}")]
    Hex(String),
}

/// What a signature is for. The tag byte is hashed first into every signing digest and signed
/// again beside it, so signatures never cross kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Domain {
    Request = 1,
    PrePrepare = 2,
    Prepare = 3,
    Commit = 4,
    Reply = 5,
    Checkpoint = 6,
    ViewChange = 7,
    NewView = 8,
    /// Digests of data that is never signed by itself (batches, state, envelopes' contents).
    Content = 9,
    /// Digests of a cluster's configuration (its replicas, f, its client list).
    Configuration = 10,
}

/// The prefix of every signed byte string; changing the protocol's signing rules changes it.
const SIGNING_CONTEXT: &[u8; 12] = b"pbft-sig-v2\0";

/// A SHA-256 digest.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes` under `domain`.
    pub fn of(domain: Domain, bytes: &[u8]) -> Digest {
        DigestBuilder::new(domain).bytes(bytes).finish()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first bytes in hex, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Builds a canonical digest from explicit fields: a domain tag first, then fixed-endian
/// integers and length-prefixed byte strings, so that no two different field lists hash the same
/// way and nothing depends on a serializer's choices.
#[derive(Clone)]
pub struct DigestBuilder(Sha256);

impl DigestBuilder {
    pub fn new(domain: Domain) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"pbft-digest-v1\0");
        hasher.update([domain as u8]);
        DigestBuilder(hasher)
    }

    pub fn u8(mut self, value: u8) -> Self {
        self.0.update([value]);
        self
    }

    pub fn u32(mut self, value: u32) -> Self {
        self.0.update(value.to_le_bytes());
        self
    }

    pub fn u64(mut self, value: u64) -> Self {
        self.0.update(value.to_le_bytes());
        self
    }

    /// A length-prefixed byte string.
    pub fn bytes(mut self, value: &[u8]) -> Self {
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    pub fn digest(mut self, value: &Digest) -> Self {
        self.0.update(value.0);
        self
    }

    pub fn public_key(mut self, value: &PublicKey) -> Self {
        self.0.update(value.bytes);
        self
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// Which cluster a signature belongs to: a digest of what identifies the cluster (its replicas'
/// keys and f). It is part of every signed byte string.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub Digest);

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({})", hex::encode(&self.0 .0[..4]))
    }
}

const SIGNED_BYTES: usize = SIGNING_CONTEXT.len() + 32 + 1 + 32;

/// The byte string that is actually signed for `digest` under `domain` in `cluster`.
fn signed_bytes(cluster: &ClusterId, domain: Domain, digest: &Digest) -> [u8; SIGNED_BYTES] {
    let mut out = [0u8; SIGNED_BYTES];
    let (context, rest) = out.split_at_mut(SIGNING_CONTEXT.len());
    context.copy_from_slice(SIGNING_CONTEXT);
    rest[..32].copy_from_slice(&cluster.0 .0);
    rest[32] = domain as u8;
    rest[33..].copy_from_slice(&digest.0);
    out
}

/// An ed25519 public key that is a valid, non-weak curve point.
#[derive(Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; 32],
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses a key, refusing invalid encodings and weak (small-order) keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, CryptoError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(CryptoError::WeakPublicKey);
        }
        Ok(PublicKey { bytes: *bytes, key })
    }

    pub fn from_hex(text: &str) -> Result<PublicKey, CryptoError> {
        let bytes: [u8; 32] = hex::decode(text.trim())
            .map_err(|e| CryptoError::Hex(e.to_string()))?
            .try_into()
            .map_err(|_| CryptoError::Hex("a public key is 32 bytes (64 hex digits)".into()))?;
        PublicKey::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// Checks `signature` on `digest` under `domain` in `cluster` with the strict rule: canonical
    /// `s`, non-small-order `R`, and the exact equation `R = [s]B - [k]A` on encodings.
    pub fn verify(
        &self,
        cluster: &ClusterId,
        domain: Domain,
        digest: &Digest,
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.key
            .verify_strict(&signed_bytes(cluster, domain, digest), &signature)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.bytes[..4]))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.bytes.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(deserializer)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signature as transmitted. Whether it is valid is only known after
/// [`PublicKey::verify`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// A signature of all zeros; never valid. Used where a message is built before signing.
    pub const EMPTY: Signature = Signature([0; 64]);
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde implements arrays only up to 32 elements: write two halves.
        let (a, b) = self.0.split_at(32);
        let a: &[u8; 32] = a.try_into().expect("split at 32");
        let b: &[u8; 32] = b.try_into().expect("split at 32");
        (a, b).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(deserializer)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&a);
        out[32..].copy_from_slice(&b);
        Ok(Signature(out))
    }
}

/// An ed25519 signing key with its public key. The secret is wiped from memory when the pair
/// (or a clone of it) is dropped.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

const KEY_FILE_HEADER: &str = "pbft-ed25519-secret-key-v1";

impl KeyPair {
    /// A new key from the operating system's randomness.
    pub fn generate() -> KeyPair {
        loop {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut *seed).expect("the operating system has no randomness source");
            if let Ok(pair) = KeyPair::from_seed(&seed) {
                return pair;
            }
        }
    }

    /// The key derived from a 32-byte seed (deterministic; for simulations and tests).
    pub fn from_seed(seed: &[u8; 32]) -> Result<KeyPair, CryptoError> {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicKey::from_bytes(signing.verifying_key().as_bytes())?;
        Ok(KeyPair { signing, public })
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The 32-byte secret seed, for building a TLS identity from this key. Keep it secret; the
    /// copy is wiped when dropped.
    pub fn secret_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// This key, signing for `cluster` only.
    pub fn for_cluster(self, cluster: ClusterId) -> Signer {
        Signer { key: self, cluster }
    }

    /// Writes the secret key to `path` (mode 0600 on unix), refusing to overwrite a file.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let key_error = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = Zeroizing::new(format!(
            "{KEY_FILE_HEADER}\n{}\n",
            Zeroizing::new(hex::encode(*self.secret_seed())).as_str()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| key_error(e.to_string()))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| key_error(e.to_string()))
    }

    /// Reads a key written by [`KeyPair::save`]. On unix, a file that group or others may
    /// access (mode bits 077, as ssh checks) is refused: the key may have been read.
    pub fn load(path: &Path) -> Result<KeyPair, CryptoError> {
        let key_error = |reason: &str| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(|e| key_error(&e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The open file's mode, so that no rename in between can swap it.
            let mode = file
                .metadata()
                .map_err(|e| key_error(&e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(key_error(&format!(
                    "mode {:04o} lets group or others access the secret key; make it readable \
                     by its owner only (chmod 600)",
                    mode & 0o7777
                )));
            }
        }
        let mut text = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut file, &mut text)
            .map_err(|e| key_error(&e.to_string()))?;
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(key_error("not a key file (missing header line)"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        let line = lines.next().unwrap_or("").trim();
        hex::decode_to_slice(line, &mut *seed)
            .map_err(|_| key_error("the second line must be 64 hex digits"))?;
        KeyPair::from_seed(&seed).map_err(|e| key_error(&e.to_string()))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public)
    }
}

/// A key pair bound to one cluster: the only way to sign, so every signature names its cluster.
#[derive(Clone, Debug)]
pub struct Signer {
    key: KeyPair,
    cluster: ClusterId,
}

impl Signer {
    pub fn public(&self) -> PublicKey {
        self.key.public
    }

    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    pub fn sign(&self, domain: Domain, digest: &Digest) -> Signature {
        let bytes = signed_bytes(&self.cluster, domain, digest);
        Signature(self.key.signing.sign(&bytes).to_bytes())
    }
}

#[cfg(test)]
mod tests;
