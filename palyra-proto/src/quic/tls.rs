//! rustls configuration for palyra-quic-v1: TLS 1.3 only, ALPN `palyra-quic-v1`, no 0-RTT,
//! client certificates verified against the gateway CA and the live [`TrustIndex`].

use crate::identity::cert::cert_spki_fingerprint;
use crate::identity::trust::{TrustDecision, TrustIndex};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use std::sync::{Arc, RwLock};

/// The only application protocol of the node plane.
pub const ALPN: &[u8] = b"palyra-quic-v1";

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("failed to configure TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate or key could not be used.
    #[error("invalid certificate or key: {0}")]
    Material(String),
}

/// The process-wide crypto provider: rustls with ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls [`CertifiedKey`] from a DER certificate chain and a PKCS#8 DER key.
pub fn certified_key(
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let signing = provider().key_provider.load_private_key(key)?;
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The server certificate, replaceable while the server runs (renewal without restart).
#[derive(Debug)]
pub struct ServerCertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertSlot {
    /// A slot holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(key),
        })
    }

    /// Installs a renewed certificate; new handshakes use it immediately.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut guard) => *guard = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }

    /// The end-entity certificate (DER) new handshakes are served.
    pub fn current_cert_der(&self) -> Vec<u8> {
        self.get()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

impl ResolvesServerCert for ServerCertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Client-certificate verifier: WebPKI chain validation against the gateway CA, then the live
/// trust index (unknown or revoked certificates fail the handshake).
#[derive(Debug)]
pub struct DeviceCertVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust: Arc<TrustIndex>,
}

impl std::fmt::Debug for TrustIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustIndex")
            .field("generation", &self.generation())
            .finish()
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        let fingerprint = cert_spki_fingerprint(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match self.trust.check(&fingerprint) {
            TrustDecision::Trusted(_) => Ok(verified),
            TrustDecision::Revoked(_) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            // TLS alert 46 (certificate_unknown), as the node plane's documentation promises.
            TrustDecision::Unknown => Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(rustls::OtherError(Arc::new(UnknownCertificate))),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| TlsError::Material(format!("gateway CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// Server TLS configuration for the node plane.
pub fn server_config(
    ca_der: &[u8],
    cert: Arc<ServerCertSlot>,
    trust: Arc<TrustIndex>,
    require_client_cert: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let mut webpki = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone());
    if !require_client_cert {
        webpki = webpki.allow_unauthenticated();
    }
    let webpki = webpki
        .build()
        .map_err(|e| TlsError::Material(e.to_string()))?;
    let verifier = Arc::new(DeviceCertVerifier { webpki, trust });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// ALPN of gRPC over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// Server TLS configuration of the node TCP listener (NodeService over HTTP/2): client
/// certificates are requested but optional, and a presented one must chain to the gateway CA.
/// Whether it belongs to a paired, unrevoked device is decided per call against the live trust
/// index, so a device without a certificate yet can reach the pairing RPCs, and the others get a
/// gRPC status (UNAUTHENTICATED, PERMISSION_DENIED) rather than a bare TLS alert.
pub fn node_tcp_server_config(
    ca_der: &[u8],
    cert: Arc<ServerCertSlot>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Material(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// ALPN of HTTP/1.1 over TLS (the operator listener).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Server TLS configuration of a TCP listener that serves the gateway's ECDSA P-256 server
/// certificate without client authentication: the gateway gRPC listener (ALPN `h2`) or the
/// operator HTTP listener (ALPN `http/1.1`).
pub fn tcp_server_config(
    cert: Arc<ServerCertSlot>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![alpn.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// Client TLS configuration: trusts only the gateway CA; presents `identity` (chain, PKCS#8 key).
pub fn client_config(
    ca_der: &[u8],
    identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_der)?);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Verifies a gateway whose CA the device knows only by the SHA-256 of its
/// SubjectPublicKeyInfo (from an invite or `--ca-fingerprint`): the chain the server sends
/// must carry a CA certificate with that key, and the server certificate must be valid for the
/// server name under that CA. Nothing else is trusted.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_spki_sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier pinned to the CA key `ca_spki_sha256`.
    pub fn new(ca_spki_sha256: [u8; 32]) -> Self {
        Self {
            ca_spki_sha256,
            provider: provider(),
        }
    }

    /// The pinned CA among the certificates `chain` (DER), if present.
    pub fn find_ca<'a>(&self, chain: &'a [CertificateDer<'a>]) -> Option<&'a CertificateDer<'a>> {
        chain.iter().find(|c| {
            cert_spki_fingerprint(c).is_ok_and(|f| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    &f[..],
                    &self.ca_spki_sha256[..],
                ))
            })
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = self.find_ca(intermediates).ok_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(PinMismatch),
            )))
        })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate signed by the gateway CA but not in its trust records.
#[derive(Debug)]
struct UnknownCertificate;

impl std::fmt::Display for UnknownCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gateway does not know this device certificate")
    }
}

impl std::error::Error for UnknownCertificate {}

/// The server's chain carries no CA with the pinned key.
#[derive(Debug)]
struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gateway's CA does not match the pinned CA fingerprint")
    }
}

impl std::error::Error for PinMismatch {}

/// Client TLS configuration for a public HTTPS server (a hosted model provider): the Mozilla
/// roots of `webpki-roots`, plus `extra_ca_der` (a private CA) when given; TLS 1.2 or 1.3,
/// ALPN `http/1.1`.
pub fn web_client_config(extra_ca_der: Option<&[u8]>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(der) = extra_ca_der {
        roots.add(CertificateDer::from(der.to_vec()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// Client TLS configuration (no client certificate) that trusts only the CA with the pinned
/// key: for pairing before the device has the CA certificate.
pub fn pinned_client_config(
    ca_spki_sha256: [u8; 32],
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(ca_spki_sha256)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The verified end-entity certificate of a QUIC peer, if it presented one.
pub fn peer_leaf(session: &dyn quinn_proto::crypto::Session) -> Option<Vec<u8>> {
    let identity = session.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|c| c.as_ref().to_vec())
}
