//! TLS identities and peer authentication by pinned ed25519 keys.
//!
//! Every node presents a self-signed certificate made from its ed25519 identity key. Names,
//! issuers and validity dates are ignored: a certificate only carries a public key, and the
//! TLS 1.3 `CertificateVerify` signature proves that the peer holds the matching secret key.
//! The dialing side pins the key it expects; the accepting side accepts any valid ed25519 key and
//! lets the caller decide what that key is (a replica or a client).

use std::collections::HashSet;
use std::sync::Arc;

use pbft_crypto::{KeyPair, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, PeerMisbehaved,
    SignatureScheme,
};

use crate::admission::Bans;
use crate::stats::{bump, Counters};
use crate::{ClientPolicy, NetError, TlsSetupError};

/// The only ALPN protocol spoken: the wire format's version. A peer of another version (its
/// messages, or the bytes its signatures cover, differ) fails the handshake, and the dialer
/// names the cause ([`crate::link::DialError::is_version_mismatch`]).
pub(crate) const ALPN: &[u8] = b"pbft/2";

/// The TLS alert a peer sends when no ALPN protocol matches.
pub(crate) const NO_APPLICATION_PROTOCOL: u8 = 120;

/// The TLS server name sent when dialing. Certificates are matched by key, never by name.
pub(crate) const SERVER_NAME: &str = "pbft";

/// DER of an ed25519 SubjectPublicKeyInfo up to the 32 key bytes (RFC 8410):
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) ... }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER of a version 1 PKCS#8 ed25519 private key up to the 32 seed bytes (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The explicit crypto provider for every config: rustls' ring provider, never a process default.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's certificate and private key, derived from its identity key.
pub(crate) struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A self-signed certificate for `key`.
    pub(crate) fn new(key: &KeyPair) -> Result<Identity, NetError> {
        let mut pkcs8 = Vec::with_capacity(48);
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(key.secret_seed().as_slice());
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
        let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(TlsSetupError::Certificate)?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(TlsSetupError::Certificate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("pbft {}", key.public()));
        let cert = params
            .self_signed(&signer)
            .map_err(TlsSetupError::Certificate)?
            .der()
            .clone();
        // The certificate must carry exactly the identity key, or no peer could ever pin it.
        let carried = public_key_of(&cert).map_err(|e| TlsSetupError::CertificateKey(Some(e)))?;
        if carried != key.public() {
            return Err(TlsSetupError::CertificateKey(None).into());
        }
        Ok(Identity { cert, key: pkcs8 })
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The ed25519 public key in a certificate's SubjectPublicKeyInfo. Anything else (another key
/// type, a malformed certificate, a weak key) is refused.
pub(crate) fn public_key_of(cert: &CertificateDer<'_>) -> Result<PublicKey, TlsError> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    let key: &[u8; 32] = spki
        .as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|rest| rest.try_into().ok())
        .ok_or(TlsError::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))?;
    PublicKey::from_bytes(key)
        .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))
}

/// Checks a TLS 1.3 handshake signature made with the key of `cert`; only ed25519 is accepted.
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, TlsError> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

fn tls12_refused() -> Result<HandshakeSignatureValid, TlsError> {
    Err(TlsError::General("TLS 1.2 is not supported".into()))
}

/// Accepts a server only if its certificate carries the pinned key and it signs the handshake.
#[derive(Debug)]
pub(crate) struct PinnedServerKey {
    expected: PublicKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerKey {
    pub(crate) fn new(expected: PublicKey) -> Self {
        PinnedServerKey {
            expected,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if public_key_of(end_entity)? == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Requires a client certificate with a valid ed25519 key that is a replica's or admitted by
/// the client policy, and a handshake signature by it. Other keys are refused during the
/// handshake, before any stream is accepted, and counted.
#[derive(Debug)]
pub(crate) struct AdmittedPeer {
    algorithms: WebPkiSupportedAlgorithms,
    replicas: HashSet<PublicKey>,
    clients: ClientPolicy,
    bans: Arc<Bans>,
    counters: Arc<Counters>,
}

impl AdmittedPeer {
    pub(crate) fn new(
        replicas: HashSet<PublicKey>,
        clients: ClientPolicy,
        bans: Arc<Bans>,
        counters: Arc<Counters>,
    ) -> Self {
        AdmittedPeer {
            algorithms: provider().signature_verification_algorithms,
            replicas,
            clients,
            bans,
            counters,
        }
    }
}

impl ClientCertVerifier for AdmittedPeer {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let key = public_key_of(end_entity)?;
        if self.replicas.contains(&key) {
            return Ok(ClientCertVerified::assertion());
        }
        if self.bans.is_banned(&key) {
            bump(&self.counters.banned_refused, 1);
            return Err(TlsError::General("client key refused for a while".into()));
        }
        if self.clients.admits(&key) {
            return Ok(ClientCertVerified::assertion());
        }
        bump(&self.counters.clients_refused, 1);
        Err(TlsError::General("client key not admitted".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The rustls server config: TLS 1.3 only, mandatory client certificates, no resumption (a
/// resumed session would skip the client's certificate).
pub(crate) fn server_config(
    identity: &Identity,
    admitted: AdmittedPeer,
) -> Result<rustls::ServerConfig, NetError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Rustls)?
        .with_client_cert_verifier(Arc::new(admitted))
        .with_single_cert(identity.chain(), identity.private_key())
        .map_err(TlsSetupError::Rustls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The rustls client config for dialing the holder of `expected`, presenting `identity`.
pub(crate) fn client_config(
    identity: &Identity,
    expected: PublicKey,
) -> Result<rustls::ClientConfig, NetError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerKey::new(expected)))
        .with_client_auth_cert(identity.chain(), identity.private_key())
        .map_err(TlsSetupError::Rustls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> KeyPair {
        KeyPair::from_seed(&[seed; 32]).unwrap()
    }

    #[test]
    fn certificate_carries_the_identity_key() {
        let pair = key(1);
        let identity = Identity::new(&pair).unwrap();
        assert_eq!(public_key_of(&identity.cert).unwrap(), pair.public());
    }

    #[test]
    fn pinned_verifier_checks_the_key() {
        let identity = Identity::new(&key(1)).unwrap();
        let other = Identity::new(&key(2)).unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let verifier = PinnedServerKey::new(key(1).public());
        assert!(verifier
            .verify_server_cert(&identity.cert, &[], &name, &[], UnixTime::now())
            .is_ok());
        assert!(verifier
            .verify_server_cert(&other.cert, &[], &name, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn garbage_certificates_are_refused() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(public_key_of(&garbage).is_err());
        let verifier = AdmittedPeer::new(
            Default::default(),
            ClientPolicy::Open,
            Default::default(),
            Arc::new(Counters::default()),
        );
        assert!(verifier
            .verify_client_cert(&garbage, &[], UnixTime::now())
            .is_err());
    }
}
