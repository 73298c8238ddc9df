//! Mutual TLS with self-certifying peers.
//!
//! Each node makes a fresh ECDSA P-256 TLS key at start and a self-signed
//! certificate for it. The certificate carries an extension (OID
//! [`BINDING_OID`]) holding a `TlsKeyBinding`: the node's RSA master public
//! key and a master-key signature (purpose `tls`) over the certificate's
//! SubjectPublicKeyInfo DER, as libp2p-tls does. There are no certificate
//! authorities.
//!
//! The verifiers on both sides require TLS 1.3, accept no intermediates, check
//! the validity period, the self-signature, and the binding, and from it derive
//! the peer's node ID. A client that dials an expected node refuses any other.
//! The TLS handshake itself proves possession of the TLS key, and the binding
//! ties that key to the master key, so the peer is whoever holds the master key.

use std::fmt;
use std::sync::Arc;

use prost::Message;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig,
};

use crate::crypto::{PrivateKey, PublicKey, Purpose};
use crate::id::NodeId;

/// OID of the certificate extension that binds the TLS key to the master
/// key. Provisional: see `docs/design/mtls.md`.
pub const BINDING_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 57700, 1, 1];
const BINDING_OID_STR: &str = "1.3.6.1.4.1.57700.1.1";

/// ALPN protocol for gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// Lifetime of a node's certificate. Certificates are made afresh at every
/// start, so this only bounds how long one process can run on one.
const CERT_LIFETIME: time::Duration = time::Duration::days(365);

/// Why a TLS identity could not be made or a peer certificate was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Making the certificate failed.
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A peer certificate is not a valid Silt certificate.
    #[error("peer certificate refused: {0}")]
    BadCertificate(&'static str),
    /// The peer is not the node that was dialled.
    #[error("peer is node {actual}, expected {expected}")]
    UnexpectedPeer {
        /// The node that was expected.
        expected: NodeId,
        /// The node that answered.
        actual: NodeId,
    },
}

/// The identity a peer proved in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the master public key.
    pub node_id: NodeId,
    /// The master public key.
    pub master_key: PublicKey,
}

/// A node's TLS key and self-signed certificate bound to its master key.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    node_id: NodeId,
}

impl TlsIdentity {
    /// Makes a fresh TLS key and a certificate bound to `master`.
    pub fn generate(master: &PrivateKey) -> Result<Self, TlsError> {
        let key = tls_key()?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let signature = master
            .sign(Purpose::Tls, &spki)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let binding = proto::common::v1::TlsKeyBinding {
            master_public_key: master.public_key().spki_der().to_vec(),
            signature,
        };
        Self::build(
            key,
            Some(binding.encode_to_vec()),
            master.public_key().node_id(),
        )
    }

    fn build(
        key: rcgen::KeyPair,
        binding: Option<Vec<u8>>,
        node_id: NodeId,
    ) -> Result<Self, TlsError> {
        let cert_err = |e: rcgen::Error| TlsError::Certificate(e.to_string());
        let mut params =
            rcgen::CertificateParams::new(vec!["silt".to_owned()]).map_err(cert_err)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CERT_LIFETIME;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id.to_string());
        if let Some(binding) = binding {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    BINDING_OID,
                    binding,
                ));
        }
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            node_id,
        })
    }

    /// The node ID this certificate proves.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A server configuration: TLS 1.3 only, client certificates required and
    /// checked by [`verify_certificate`], ALPN `h2`.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let verifier = Arc::new(PeerVerifier::new(None, &provider));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    /// A client configuration: TLS 1.3 only, presents this certificate, and
    /// accepts only a valid Silt peer, which must be `expected` when given.
    pub fn client_config(&self, expected: Option<NodeId>) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let verifier = Arc::new(PeerVerifier::new(expected, &provider));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        Ok(config)
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsIdentity({}, ..)", self.node_id.fmt_short())
    }
}

/// Checks a peer's end-entity certificate and returns who it proves to be:
/// well-formed, inside its validity period at `now_unix`, correctly
/// self-signed, and carrying exactly one valid master-key binding.
pub fn verify_certificate(der: &[u8], now_unix: i64) -> Result<PeerIdentity, TlsError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| TlsError::BadCertificate("malformed certificate"))?;
    if !rest.is_empty() {
        return Err(TlsError::BadCertificate(
            "trailing bytes after the certificate",
        ));
    }
    let validity = cert.validity();
    if now_unix < validity.not_before.timestamp() || now_unix > validity.not_after.timestamp() {
        return Err(TlsError::BadCertificate("outside its validity period"));
    }
    cert.verify_signature(None)
        .map_err(|_| TlsError::BadCertificate("bad self-signature"))?;
    let mut bindings = cert
        .extensions()
        .iter()
        .filter(|ext| ext.oid.to_id_string() == BINDING_OID_STR);
    let binding = bindings
        .next()
        .ok_or(TlsError::BadCertificate("no master key binding"))?;
    if bindings.next().is_some() {
        return Err(TlsError::BadCertificate("more than one master key binding"));
    }
    let binding = proto::common::v1::TlsKeyBinding::decode(binding.value)
        .map_err(|_| TlsError::BadCertificate("malformed master key binding"))?;
    let master_key = PublicKey::from_spki_der(&binding.master_public_key)
        .map_err(|_| TlsError::BadCertificate("malformed master key"))?;
    master_key
        .verify(Purpose::Tls, cert.public_key().raw, &binding.signature)
        .map_err(|_| TlsError::BadCertificate("master key signature does not verify"))?;
    Ok(PeerIdentity {
        node_id: master_key.node_id(),
        master_key,
    })
}

/// The crypto provider: ring, with no process-wide default needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_key() -> Result<rcgen::KeyPair, TlsError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

/// Verifies Silt peers, as a client (server certificates) and as a server
/// (client certificates).
#[derive(Debug)]
struct PeerVerifier {
    expected: Option<NodeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(expected: Option<NodeId>, provider: &CryptoProvider) -> Self {
        Self {
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let refuse = |e: TlsError| {
            tracing::debug!(error = %e, "refused peer certificate");
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        };
        if !intermediates.is_empty() {
            return Err(refuse(TlsError::BadCertificate(
                "intermediate certificates are not accepted",
            )));
        }
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let peer = verify_certificate(end_entity, now).map_err(refuse)?;
        if let Some(expected) = self.expected
            && expected != peer.node_id
        {
            return Err(refuse(TlsError::UnexpectedPeer {
                expected,
                actual: peer.node_id,
            }));
        }
        Ok(())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Deliberately broken identities, for tests that check they are refused.
#[cfg(any(test, feature = "test-utils"))]
#[allow(clippy::expect_used)]
pub mod danger {
    use super::*;

    /// A certificate whose binding claims `claimed` as master key but is
    /// signed by `signer`.
    pub fn identity_claiming(claimed: &PublicKey, signer: &PrivateKey) -> TlsIdentity {
        let key = tls_key().expect("ring makes P-256 keys");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let binding = proto::common::v1::TlsKeyBinding {
            master_public_key: claimed.spki_der().to_vec(),
            signature: signer.sign(Purpose::Tls, &spki).expect("signing works"),
        };
        TlsIdentity::build(key, Some(binding.encode_to_vec()), claimed.node_id())
            .expect("certificate builds")
    }

    /// A certificate whose binding signature has one bit flipped.
    pub fn identity_with_corrupt_binding(master: &PrivateKey) -> TlsIdentity {
        let key = tls_key().expect("ring makes P-256 keys");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let mut signature = master.sign(Purpose::Tls, &spki).expect("signing works");
        signature[17] ^= 0x01;
        let binding = proto::common::v1::TlsKeyBinding {
            master_public_key: master.public_key().spki_der().to_vec(),
            signature,
        };
        TlsIdentity::build(
            key,
            Some(binding.encode_to_vec()),
            master.public_key().node_id(),
        )
        .expect("certificate builds")
    }

    /// A certificate with no binding at all.
    pub fn identity_without_binding(master: &PrivateKey) -> TlsIdentity {
        let key = tls_key().expect("ring makes P-256 keys");
        TlsIdentity::build(key, None, master.public_key().node_id()).expect("certificate builds")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static ALICE: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());
    static MALLORY: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

    fn now() -> i64 {
        crate::unix_now()
    }

    #[test]
    fn a_fresh_certificate_proves_its_node_id() {
        let identity = TlsIdentity::generate(&ALICE).unwrap();
        let peer = verify_certificate(identity.certificate(), now()).unwrap();
        assert_eq!(peer.node_id, ALICE.public_key().node_id());
        assert_eq!(identity.node_id(), peer.node_id);
        assert_eq!(&peer.master_key, ALICE.public_key());
    }

    #[test]
    fn forged_and_broken_certificates_are_refused() {
        let claiming = danger::identity_claiming(ALICE.public_key(), &MALLORY);
        assert!(verify_certificate(claiming.certificate(), now()).is_err());
        let corrupt = danger::identity_with_corrupt_binding(&ALICE);
        assert!(verify_certificate(corrupt.certificate(), now()).is_err());
        let bare = danger::identity_without_binding(&ALICE);
        assert!(verify_certificate(bare.certificate(), now()).is_err());
        // Outside the validity period.
        let identity = TlsIdentity::generate(&ALICE).unwrap();
        assert!(verify_certificate(identity.certificate(), now() + 400 * 86_400).is_err());
        assert!(verify_certificate(identity.certificate(), now() - 86_400).is_err());
        // A flipped bit anywhere in the signed part breaks the self-signature
        // or the binding; truncation breaks parsing.
        let der = identity.certificate().to_vec();
        for i in (0..der.len()).step_by(7) {
            let mut bad = der.clone();
            bad[i] ^= 0x10;
            if let Ok(peer) = verify_certificate(&bad, now()) {
                // Only bits outside what anything signs can flip harmlessly,
                // and they must not change who the peer is.
                assert_eq!(peer.node_id, ALICE.public_key().node_id(), "byte {i}");
            }
        }
        assert!(verify_certificate(&der[..der.len() - 1], now()).is_err());
        assert!(verify_certificate(b"", now()).is_err());
    }

    #[test]
    fn configs_are_tls13_only_with_h2() {
        let identity = TlsIdentity::generate(&ALICE).unwrap();
        let server = identity.server_config().unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN_H2.to_vec()]);
        let client = identity.client_config(None).unwrap();
        assert!(!client.enable_sni);
    }
}
