//! Certificate profiles of the gateway PKI: an Ed25519 CA, server leaves and device leaves.
//!
//! Certificates are built with `x509-cert` types and signed with `ed25519-dalek`; nothing here reads
//! a clock or an OS RNG: times and randomness are passed in.

use const_oid::db::{rfc5280, rfc8410};
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString, UtcTime};
use der::{Decode, DecodePem, Encode, EncodePem};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

/// Common name of the gateway's node-plane server certificate.
pub const SERVER_COMMON_NAME: &str = "palyrad-node-rpc";

/// Prefix of the SAN URI that names the device in a device certificate.
pub const DEVICE_URI_PREFIX: &str = "urn:palyra:device:";

/// notBefore is set this far in the past to tolerate clock skew between gateway and devices.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// Errors building or reading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// DER or PEM encoding/decoding failed.
    #[error("certificate encoding failed: {0}")]
    Der(#[from] der::Error),
    /// A private key could not be parsed or encoded.
    #[error("private key is not a valid PKCS#8 key of the expected algorithm: {0}")]
    Key(String),
    /// The certificate is not one of ours (wrong algorithm, missing fields).
    #[error("unsupported certificate: {0}")]
    Unsupported(String),
    /// A host name cannot be put in a certificate.
    #[error("invalid host name {0:?} for a certificate")]
    InvalidHost(String),
}

/// A certificate with its DER and PEM forms.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// DER encoding.
    pub der: Vec<u8>,
    /// PEM encoding.
    pub pem: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// Start of validity (already back-dated for clock skew).
    pub not_before: SystemTime,
    /// SHA-256 of the SubjectPublicKeyInfo, the peer identity used everywhere.
    pub spki_sha256: [u8; 32],
}

/// Which key a server certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKeyKind {
    /// Ed25519: the node plane (QUIC), where both ends are ours or modern TLS stacks.
    Ed25519,
    /// ECDSA P-256: TCP listeners reached by stacks without Ed25519 in TLS (BoringSSL in gRPC
    /// C-core, browsers).
    EcdsaP256,
}

/// A server certificate's private key.
pub enum ServerKey {
    /// Ed25519.
    Ed25519(SigningKey),
    /// ECDSA P-256.
    EcdsaP256(p256::SecretKey),
}

impl ServerKey {
    /// A new key of `kind` from the injected RNG.
    pub fn generate(kind: ServerKeyKind, rng: &mut impl CryptoRngCore) -> Self {
        match kind {
            ServerKeyKind::Ed25519 => Self::Ed25519(generate_key(rng)),
            ServerKeyKind::EcdsaP256 => Self::EcdsaP256(p256::SecretKey::random(rng)),
        }
    }

    /// Reads a PKCS#8 PEM key of `kind`.
    pub fn from_pem(kind: ServerKeyKind, pem: &str) -> Result<Self, CertError> {
        use p256::pkcs8::DecodePrivateKey as _;
        match kind {
            ServerKeyKind::Ed25519 => Ok(Self::Ed25519(key_from_pem(pem)?)),
            ServerKeyKind::EcdsaP256 => p256::SecretKey::from_pkcs8_pem(pem)
                .map(Self::EcdsaP256)
                .map_err(|e| CertError::Key(e.to_string())),
        }
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<String, CertError> {
        use p256::pkcs8::EncodePrivateKey as _;
        match self {
            Self::Ed25519(key) => key_to_pem(key),
            Self::EcdsaP256(key) => key
                .to_pkcs8_pem(der::pem::LineEnding::LF)
                .map(|pem| pem.to_string())
                .map_err(|e| CertError::Key(e.to_string())),
        }
    }

    /// PKCS#8 DER (what rustls loads).
    pub fn pkcs8_der(&self) -> Result<Vec<u8>, CertError> {
        use p256::pkcs8::EncodePrivateKey as _;
        match self {
            Self::Ed25519(key) => key_to_der(key),
            Self::EcdsaP256(key) => key
                .to_pkcs8_der()
                .map(|doc| doc.as_bytes().to_vec())
                .map_err(|e| CertError::Key(e.to_string())),
        }
    }

    /// The public key as a SubjectPublicKeyInfo.
    pub fn spki(&self) -> Result<SubjectPublicKeyInfoOwned, CertError> {
        use p256::pkcs8::EncodePublicKey as _;
        match self {
            Self::Ed25519(key) => spki_of(key),
            Self::EcdsaP256(key) => {
                let doc = key
                    .public_key()
                    .to_public_key_der()
                    .map_err(|e| CertError::Key(e.to_string()))?;
                Ok(SubjectPublicKeyInfoOwned::from_der(doc.as_bytes())?)
            }
        }
    }
}

/// Generates an Ed25519 key from the injected RNG.
pub fn generate_key(rng: &mut impl CryptoRngCore) -> SigningKey {
    SigningKey::generate(rng)
}

/// Encodes a key as PKCS#8 v1 PEM (RFC 8410 `PrivateKeyInfo`, no embedded public key): the form
/// OpenSSL and every TLS stack read.
pub fn key_to_pem(key: &SigningKey) -> Result<String, CertError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    v1_keypair(key)
        .to_pkcs8_pem(der::pem::LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| CertError::Key(e.to_string()))
}

fn v1_keypair(key: &SigningKey) -> ed25519_dalek::pkcs8::KeypairBytes {
    ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
}

/// Decodes a PKCS#8 PEM Ed25519 key.
pub fn key_from_pem(pem: &str) -> Result<SigningKey, CertError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| CertError::Key(e.to_string()))
}

/// Encodes a key as PKCS#8 v1 DER (what rustls wants).
pub fn key_to_der(key: &SigningKey) -> Result<Vec<u8>, CertError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    v1_keypair(key)
        .to_pkcs8_der()
        .map(|doc| doc.as_bytes().to_vec())
        .map_err(|e| CertError::Key(e.to_string()))
}

fn ed25519_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: rfc8410::ID_ED_25519,
        parameters: None,
    }
}

/// The SubjectPublicKeyInfo of an Ed25519 key.
pub fn spki_of(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: ed25519_algorithm(),
        subject_public_key: BitString::from_bytes(key.verifying_key().as_bytes())?,
    })
}

/// The SubjectPublicKeyInfo of a raw Ed25519 public key (a device's own key).
pub fn spki_of_public(public_key: &[u8; 32]) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: ed25519_algorithm(),
        subject_public_key: BitString::from_bytes(public_key)?,
    })
}

/// The raw Ed25519 public key of a certificate (None for other key types).
pub fn cert_ed25519_public(cert_der: &[u8]) -> Result<Option<[u8; 32]>, CertError> {
    let cert = Certificate::from_der(cert_der)?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != rfc8410::ID_ED_25519 {
        return Ok(None);
    }
    Ok(spki.subject_public_key.raw_bytes().try_into().ok())
}

/// SHA-256 of a DER-encoded SubjectPublicKeyInfo.
pub fn spki_fingerprint(spki: &SubjectPublicKeyInfoOwned) -> Result<[u8; 32], CertError> {
    Ok(Sha256::digest(spki.to_der()?).into())
}

/// SHA-256 of the SubjectPublicKeyInfo of a DER certificate: the peer identity.
pub fn cert_spki_fingerprint(cert_der: &[u8]) -> Result<[u8; 32], CertError> {
    let cert = Certificate::from_der(cert_der)?;
    spki_fingerprint(&cert.tbs_certificate.subject_public_key_info)
}

/// Lowercase hex of a fingerprint.
pub fn hex_fingerprint(fingerprint: &[u8; 32]) -> String {
    hex::encode(fingerprint)
}

/// Device ID named by a device certificate's SAN URI (`urn:palyra:device:<ULID>`).
pub fn device_id_from_cert(cert_der: &[u8]) -> Result<Option<String>, CertError> {
    let cert = Certificate::from_der(cert_der)?;
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id != rfc5280::ID_CE_SUBJECT_ALT_NAME {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())?;
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                if let Some(id) = uri.as_str().strip_prefix(DEVICE_URI_PREFIX) {
                    return Ok(Some(id.to_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// Whether `cert_der` carries a valid Ed25519 signature by the key of `issuer_der`.
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<bool, CertError> {
    let cert = Certificate::from_der(cert_der)?;
    let issuer = Certificate::from_der(issuer_der)?;
    let key_bytes: [u8; 32] = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .try_into()
        .map_err(|_| CertError::Unsupported("issuer key is not Ed25519".into()))?;
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes) else {
        return Ok(false);
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(cert.signature.raw_bytes()) else {
        return Ok(false);
    };
    let tbs = cert.tbs_certificate.to_der()?;
    Ok(key.verify_strict(&tbs, &signature).is_ok())
}

/// Parses the first certificate of a PEM document to DER.
pub fn cert_pem_to_der(pem: &str) -> Result<Vec<u8>, CertError> {
    Ok(Certificate::from_pem(pem.as_bytes())?.to_der()?)
}

/// End of validity of a DER certificate.
pub fn cert_not_after(cert_der: &[u8]) -> Result<SystemTime, CertError> {
    let cert = Certificate::from_der(cert_der)?;
    Ok(cert.tbs_certificate.validity.not_after.to_system_time())
}

/// Start and end of validity of a DER certificate.
pub fn cert_validity(cert_der: &[u8]) -> Result<(SystemTime, SystemTime), CertError> {
    let cert = Certificate::from_der(cert_der)?;
    let validity = &cert.tbs_certificate.validity;
    Ok((
        validity.not_before.to_system_time(),
        validity.not_after.to_system_time(),
    ))
}

fn x509_time(t: SystemTime) -> Result<Time, CertError> {
    // RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    let generalized = GeneralizedTime::from_system_time(t)?;
    let year = generalized.to_date_time().year();
    Ok(if year < 2050 {
        Time::UtcTime(UtcTime::from_system_time(t)?)
    } else {
        Time::GeneralTime(generalized)
    })
}

fn random_serial(rng: &mut impl CryptoRngCore) -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01; // positive, and no leading zero byte
    Ok(SerialNumber::new(&bytes)?)
}

fn extension<T: Encode + AssociatedOid>(value: &T, critical: bool) -> Result<Extension, CertError> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Result<OctetString, CertError> {
    let digest = Sha256::digest(spki.subject_public_key.raw_bytes());
    Ok(OctetString::new(&digest[..20])?)
}

/// What kind of certificate to issue.
pub enum Profile<'a> {
    /// Self-signed gateway CA.
    Ca,
    /// Server leaf with the standard SANs plus `hosts`.
    Server {
        /// Extra DNS names or IP addresses.
        hosts: &'a [String],
    },
    /// Device (client) leaf naming `device_id`.
    Device {
        /// The device's canonical ID.
        device_id: &'a str,
    },
}

/// The issuing side: a CA key and its certificate.
pub struct CertAuthority {
    key: SigningKey,
    cert: Certificate,
    cert_der: Vec<u8>,
}

impl CertAuthority {
    /// Creates a new self-signed CA valid for `validity` from `now`.
    pub fn generate(
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
        validity: Duration,
        common_name: &str,
    ) -> Result<Self, CertError> {
        let key = generate_key(rng);
        let subject = Name::from_str(&format!("CN={common_name},O=Palyra"))?;
        let spki = spki_of(&key)?;
        let tbs = build_tbs(
            rng,
            &Profile::Ca,
            subject.clone(),
            subject,
            spki.clone(),
            &spki,
            now,
            validity,
        )?;
        let cert = sign(tbs, &key)?;
        let cert_der = cert.to_der()?;
        Ok(Self {
            key,
            cert,
            cert_der,
        })
    }

    /// Loads a CA from its PEM certificate and PKCS#8 PEM key, checking that they match.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert = Certificate::from_pem(cert_pem.as_bytes())?;
        let key = key_from_pem(key_pem)?;
        if cert.tbs_certificate.subject_public_key_info != spki_of(&key)? {
            return Err(CertError::Unsupported(
                "CA certificate does not match the CA key".into(),
            ));
        }
        let cert_der = cert.to_der()?;
        Ok(Self {
            key,
            cert,
            cert_der,
        })
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> Result<String, CertError> {
        Ok(self.cert.to_pem(der::pem::LineEnding::LF)?)
    }

    /// The CA key in PKCS#8 PEM.
    pub fn key_pem(&self) -> Result<String, CertError> {
        key_to_pem(&self.key)
    }

    /// SHA-256 of the CA's SubjectPublicKeyInfo (what devices pin).
    pub fn fingerprint(&self) -> Result<[u8; 32], CertError> {
        spki_fingerprint(&self.cert.tbs_certificate.subject_public_key_info)
    }

    /// Issues a leaf certificate for `subject_key`'s public key.
    pub fn issue(
        &self,
        rng: &mut impl CryptoRngCore,
        profile: &Profile<'_>,
        subject_spki: SubjectPublicKeyInfoOwned,
        now: SystemTime,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let subject = match profile {
            Profile::Ca => {
                return Err(CertError::Unsupported(
                    "use CertAuthority::generate for CA certificates".into(),
                ))
            }
            Profile::Server { .. } => Name::from_str(&format!("CN={SERVER_COMMON_NAME},O=Palyra"))?,
            Profile::Device { device_id } => {
                if !super::is_canonical_device_id(device_id) {
                    return Err(CertError::Unsupported(format!(
                        "device ID {device_id:?} is not a canonical ULID"
                    )));
                }
                Name::from_str(&format!("CN=Palyra Device {device_id},O=Palyra"))?
            }
        };
        let tbs = build_tbs(
            rng,
            profile,
            self.cert.tbs_certificate.subject.clone(),
            subject,
            subject_spki,
            &self.cert.tbs_certificate.subject_public_key_info,
            now,
            validity,
        )?;
        let cert = sign(tbs, &self.key)?;
        finish(cert)
    }
}

fn finish(cert: Certificate) -> Result<IssuedCert, CertError> {
    let der = cert.to_der()?;
    let pem = cert.to_pem(der::pem::LineEnding::LF)?;
    let validity = cert.tbs_certificate.validity;
    Ok(IssuedCert {
        spki_sha256: spki_fingerprint(&cert.tbs_certificate.subject_public_key_info)?,
        der,
        pem,
        not_after: validity.not_after.to_system_time(),
        not_before: validity.not_before.to_system_time(),
    })
}

fn sign(tbs: TbsCertificate, key: &SigningKey) -> Result<Certificate, CertError> {
    let tbs_der = tbs.to_der()?;
    let signature = key.sign(&tbs_der);
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ed25519_algorithm(),
        signature: BitString::from_bytes(&signature.to_bytes())?,
    })
}

fn host_name(host: &str) -> Result<GeneralName, CertError> {
    let host = host.trim();
    if let Ok(ip) = IpAddr::from_str(host) {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        return Ok(GeneralName::IpAddress(OctetString::new(bytes)?));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(CertError::InvalidHost(host.to_owned()));
    }
    Ok(GeneralName::DnsName(Ia5String::new(
        &host.to_ascii_lowercase(),
    )?))
}

#[allow(clippy::too_many_arguments)]
fn build_tbs(
    rng: &mut impl CryptoRngCore,
    profile: &Profile<'_>,
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    now: SystemTime,
    validity: Duration,
) -> Result<TbsCertificate, CertError> {
    let not_before = now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now);
    let not_after = now + validity;
    let mut extensions = Vec::new();
    match profile {
        Profile::Ca => {
            extensions.push(extension(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: Some(0),
                },
                true,
            )?);
            extensions.push(extension(
                &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
                true,
            )?);
            extensions.push(extension(&SubjectKeyIdentifier(key_id(&spki)?), false)?);
        }
        Profile::Server { hosts } => {
            let mut names = vec![
                GeneralName::DnsName(Ia5String::new("localhost")?),
                GeneralName::DnsName(Ia5String::new(SERVER_COMMON_NAME)?),
                GeneralName::IpAddress(OctetString::new([127u8, 0, 0, 1])?),
            ];
            for host in hosts.iter() {
                let name = host_name(host)?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            push_leaf_extensions(
                &mut extensions,
                &spki,
                issuer_spki,
                rfc5280::ID_KP_SERVER_AUTH,
            )?;
            extensions.push(extension(&SubjectAltName(names), false)?);
        }
        Profile::Device { device_id } => {
            let uri = Ia5String::new(&format!("{DEVICE_URI_PREFIX}{device_id}"))?;
            push_leaf_extensions(
                &mut extensions,
                &spki,
                issuer_spki,
                rfc5280::ID_KP_CLIENT_AUTH,
            )?;
            extensions.push(extension(
                &SubjectAltName(vec![GeneralName::UniformResourceIdentifier(uri)]),
                false,
            )?);
        }
    }
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: random_serial(rng)?,
        signature: ed25519_algorithm(),
        issuer,
        validity: Validity {
            not_before: x509_time(not_before)?,
            not_after: x509_time(not_after)?,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

fn push_leaf_extensions(
    extensions: &mut Vec<Extension>,
    spki: &SubjectPublicKeyInfoOwned,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    purpose: ObjectIdentifier,
) -> Result<(), CertError> {
    extensions.push(extension(
        &BasicConstraints {
            ca: false,
            path_len_constraint: None,
        },
        true,
    )?);
    extensions.push(extension(
        &KeyUsage(KeyUsages::DigitalSignature.into()),
        true,
    )?);
    extensions.push(extension(&ExtendedKeyUsage(vec![purpose]), false)?);
    extensions.push(extension(&SubjectKeyIdentifier(key_id(spki)?), false)?);
    extensions.push(extension(
        &AuthorityKeyIdentifier {
            key_identifier: Some(key_id(issuer_spki)?),
            ..Default::default()
        },
        false,
    )?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    use rand_chacha::ChaCha20Rng as TestRng;

    const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    #[test]
    fn device_certificate_names_the_device_and_its_key() {
        let mut rng = TestRng::seed_from_u64(7);
        let now = SystemTime::now();
        let ca =
            CertAuthority::generate(&mut rng, now, Duration::from_secs(3600), "Test CA").unwrap();
        let device_key = generate_key(&mut rng);
        let issued = ca
            .issue(
                &mut rng,
                &Profile::Device { device_id: DEVICE },
                spki_of(&device_key).unwrap(),
                now,
                Duration::from_secs(600),
            )
            .unwrap();
        assert_eq!(
            device_id_from_cert(&issued.der).unwrap().as_deref(),
            Some(DEVICE)
        );
        assert_eq!(
            cert_spki_fingerprint(&issued.der).unwrap(),
            spki_fingerprint(&spki_of(&device_key).unwrap()).unwrap()
        );
        assert_eq!(
            issued.spki_sha256,
            cert_spki_fingerprint(&issued.der).unwrap()
        );
        assert!(issued.not_before < now && issued.not_after > now);
        assert_eq!(cert_pem_to_der(&issued.pem).unwrap(), issued.der);
    }

    #[test]
    fn ca_round_trips_through_pem_and_rejects_a_foreign_key() {
        let mut rng = TestRng::seed_from_u64(9);
        let now = SystemTime::now();
        let ca =
            CertAuthority::generate(&mut rng, now, Duration::from_secs(3600), "Test CA").unwrap();
        let loaded =
            CertAuthority::from_pem(&ca.cert_pem().unwrap(), &ca.key_pem().unwrap()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        let other = key_to_pem(&generate_key(&mut rng)).unwrap();
        assert!(CertAuthority::from_pem(&ca.cert_pem().unwrap(), &other).is_err());
    }

    #[test]
    fn server_certificate_rejects_bad_host_names() {
        let mut rng = TestRng::seed_from_u64(3);
        let now = SystemTime::now();
        let ca =
            CertAuthority::generate(&mut rng, now, Duration::from_secs(3600), "Test CA").unwrap();
        let key = generate_key(&mut rng);
        let hosts = vec!["gw.example.net".to_owned(), "10.0.0.7".to_owned()];
        assert!(ca
            .issue(
                &mut rng,
                &Profile::Server { hosts: &hosts },
                spki_of(&key).unwrap(),
                now,
                Duration::from_secs(60)
            )
            .is_ok());
        let bad = vec!["bad host".to_owned()];
        assert!(matches!(
            ca.issue(
                &mut rng,
                &Profile::Server { hosts: &bad },
                spki_of(&key).unwrap(),
                now,
                Duration::from_secs(60)
            ),
            Err(CertError::InvalidHost(_))
        ));
    }

    #[test]
    fn keys_are_written_as_pkcs8_v1_and_read_back() {
        let mut rng = TestRng::seed_from_u64(5);
        let key = generate_key(&mut rng);
        let der = key_to_der(&key).unwrap();
        // RFC 8410 section 10.3: version 0, no public key, 48 bytes in all.
        assert_eq!(der.len(), 48);
        assert_eq!(
            &der[..16],
            &hex::decode("302e020100300506032b657004220420").unwrap()[..]
        );
        let pem = key_to_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(key_from_pem(&pem).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn garbage_certificates_are_errors() {
        assert!(cert_spki_fingerprint(b"\x30\x03\x02\x01\x01").is_err());
        assert!(device_id_from_cert(&[]).is_err());
    }
}
