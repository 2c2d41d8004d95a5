//! The device side of enrollment: its keys, the invite it is given, and the hello it answers
//! Begin with (see [`super::v1::build_hello`]).
//!
//! An invite carries everything a device needs to trust the gateway before it sends a code:
//! `palyra://pair?addr=HOST:PORT&ca=sha256:HEX&code=TOKEN`, where `ca` is the SHA-256 of the
//! gateway CA's SubjectPublicKeyInfo (what `palyrad` logs as `ca_spki_sha256`).

use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

/// Prefix of an invite.
pub const INVITE_PREFIX: &str = "palyra://pair?";
/// Longest invite accepted.
pub const MAX_INVITE: usize = 1024;

/// A device's pairing keys: the Ed25519 identity (its certificate's key, never sent) and the
/// X25519 key of the transcript.
pub struct DeviceKeys {
    /// Ed25519 signing key.
    pub signing: SigningKey,
    /// X25519 secret.
    pub x25519: StaticSecret,
}

impl DeviceKeys {
    /// Fresh keys from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            signing: SigningKey::generate(rng),
            x25519: StaticSecret::random_from_rng(rng),
        }
    }
}

/// A parsed invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Gateway node TLS address (`HOST:PORT`).
    pub addr: String,
    /// SHA-256 of the gateway CA's SubjectPublicKeyInfo.
    pub ca_spki_sha256: [u8; 32],
    /// The QR token.
    pub code: String,
}

/// Why an invite, a CA fingerprint or a pairing's inputs were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Longer than [`MAX_INVITE`].
    #[error("an invite is at most {MAX_INVITE} characters")]
    TooLong,
    /// Not a `palyra://pair?` URL.
    #[error("an invite starts with {INVITE_PREFIX}")]
    NotAnInvite,
    /// `key` without `=value`.
    #[error("invite parameter {0:?} has no value")]
    NoValue(String),
    /// A parameter other than addr, ca and code.
    #[error("unknown invite parameter {0:?}")]
    UnknownParameter(String),
    /// A parameter given twice.
    #[error("invite parameter {0:?} appears twice")]
    Repeated(String),
    /// A required parameter is missing.
    #[error("the invite has no {0}")]
    Missing(&'static str),
    /// `addr` is not `HOST:PORT`.
    #[error("invite addr {0:?} is not HOST:PORT")]
    BadAddr(String),
    /// The CA fingerprint is not `sha256:` and 64 hex digits.
    #[error("CA fingerprint must be sha256: and 64 hex digits (got {0:?})")]
    BadFingerprint(String),
    /// The device ID is not a canonical ULID.
    #[error("device ID {0:?} is not a canonical ULID")]
    BadDeviceId(String),
    /// The code has the wrong form for its method.
    #[error(transparent)]
    BadCode(#[from] super::codes::CodeError),
}

/// Parses a CA fingerprint given as `sha256:HEX` or bare `HEX` (64 hex digits).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], InviteError> {
    let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| InviteError::BadFingerprint(text.to_owned()))?;
    Ok(out)
}

impl Invite {
    /// Parses `palyra://pair?addr=...&ca=sha256:...&code=...` (parameters in any order, each
    /// exactly once).
    pub fn parse(text: &str) -> Result<Self, InviteError> {
        let text = text.trim();
        if text.len() > MAX_INVITE {
            return Err(InviteError::TooLong);
        }
        let query = text
            .strip_prefix(INVITE_PREFIX)
            .ok_or(InviteError::NotAnInvite)?;
        let (mut addr, mut ca, mut code) = (None, None, None);
        for pair in query.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| InviteError::NoValue(pair.to_owned()))?;
            let slot = match key {
                "addr" => &mut addr,
                "ca" => &mut ca,
                "code" => &mut code,
                other => return Err(InviteError::UnknownParameter(other.to_owned())),
            };
            if slot.replace(value).is_some() {
                return Err(InviteError::Repeated(key.to_owned()));
            }
        }
        let addr = addr.ok_or(InviteError::Missing("addr"))?;
        if addr.is_empty() || addr.len() > 255 || !addr.contains(':') {
            return Err(InviteError::BadAddr(addr.to_owned()));
        }
        let code = code.ok_or(InviteError::Missing("code"))?;
        super::codes::validate_form(super::Method::Qr, code)?;
        Ok(Self {
            addr: addr.to_owned(),
            ca_spki_sha256: parse_fingerprint(ca.ok_or(InviteError::Missing("ca"))?)?,
            code: code.to_owned(),
        })
    }
}

impl std::fmt::Display for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{INVITE_PREFIX}addr={}&ca=sha256:{}&code={}",
            self.addr,
            hex::encode(self.ca_spki_sha256),
            self.code
        )
    }
}

/// Why the device side refused a gateway answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The answer is malformed or does not fit the exchange.
    #[error("gateway answer refused: {0}")]
    BadAnswer(String),
    /// The transcript could not be built (a non-contributory gateway key).
    #[error("pairing transcript: {0}")]
    Transcript(#[from] super::v1::V1Error),
    /// The issued certificate is not for this device, its key, or the pinned CA.
    #[error("issued certificate refused: {0}")]
    BadCertificate(String),
    /// The gateway sent a private key: it must never hold one.
    #[error("the gateway sent a private key; refusing a certificate whose key is not our own")]
    KeyFromGateway,
}

/// How the device knows the gateway CA before pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaTrust {
    /// SHA-256 of the CA's SubjectPublicKeyInfo (invite or `--ca-fingerprint`).
    Pinned([u8; 32]),
    /// The CA certificate itself (DER; `--ca-file`).
    Certificate(Vec<u8>),
}

impl CaTrust {
    /// Whether `ca_der` is the trusted CA.
    pub fn accepts(&self, ca_der: &[u8]) -> bool {
        match self {
            CaTrust::Pinned(pin) => crate::identity::cert::cert_spki_fingerprint(ca_der)
                .is_ok_and(|f| bool::from(subtle::ConstantTimeEq::ct_eq(&f[..], &pin[..]))),
            CaTrust::Certificate(der) => der == ca_der,
        }
    }
}

/// Where a pairing stands, from a status answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the operator (or for delivery): poll again.
    Waiting {
        /// `pending_approval` or `approved`.
        state: String,
    },
    /// The certificate, checked: for this device, this key, under the trusted CA.
    Issued(Issued),
    /// Rejected or expired: pairing must start over.
    Refused {
        /// `rejected`, `expired`, or `completed` without a certificate (delivered elsewhere).
        state: String,
        /// The gateway's reason.
        reason: String,
    },
}

/// A certificate issued to this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Device certificate (PEM).
    pub cert_pem: String,
    /// Gateway CA (PEM).
    pub ca_pem: String,
    /// End of validity.
    pub expires_at_unix_ms: u64,
}

/// The device side of one pairing, IO-free: builds Begin, answers the offer with Complete,
/// builds status polls and checks what they return. The Ed25519 key never leaves it.
pub struct DevicePairing {
    keys: DeviceKeys,
    device_id: String,
    client_kind: String,
    method: super::Method,
    code: String,
    ca: CaTrust,
    session_id: Option<String>,
}

impl DevicePairing {
    /// A pairing of `device_id` with `code`.
    pub fn new(
        keys: DeviceKeys,
        device_id: &str,
        method: super::Method,
        code: &str,
        ca: CaTrust,
    ) -> Result<Self, InviteError> {
        if !crate::identity::is_canonical_device_id(device_id) {
            return Err(InviteError::BadDeviceId(device_id.to_owned()));
        }
        super::codes::validate_form(method, code.trim())?;
        Ok(Self {
            keys,
            device_id: device_id.to_owned(),
            client_kind: "node".into(),
            method,
            code: code.trim().to_owned(),
            ca,
            session_id: None,
        })
    }

    /// Resumes waiting for `session_id` (after a restart of the device): only status polls.
    pub fn resume(keys: DeviceKeys, device_id: &str, session_id: &str, ca: CaTrust) -> Self {
        Self {
            keys,
            device_id: device_id.to_owned(),
            client_kind: "node".into(),
            method: super::Method::Qr,
            code: String::new(),
            ca,
            session_id: Some(session_id.to_owned()),
        }
    }

    /// The device ID.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The session (the request ID the operator approves), once begun.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The device's Ed25519 key (stays on the device).
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.keys.signing
    }

    /// BeginPairingSession.
    pub fn begin_request(
        &self,
        replay: Option<crate::pb::palyra::common::v1::ReplayProtection>,
    ) -> crate::pb::palyra::node::v1::BeginPairingSessionRequest {
        use crate::pb::palyra::node::v1::{pairing_method, PairingMethod};
        let value = match self.method {
            super::Method::Pin => pairing_method::Value::PinCode(self.code.clone()),
            super::Method::Qr => pairing_method::Value::QrToken(self.code.clone()),
        };
        crate::pb::palyra::node::v1::BeginPairingSessionRequest {
            v: super::v1::VERSION,
            client_kind: self.client_kind.clone(),
            method: Some(PairingMethod { value: Some(value) }),
            replay,
        }
    }

    /// CompletePairingSession for the gateway's offer.
    pub fn complete_request(
        &mut self,
        offer: &crate::pb::palyra::node::v1::BeginPairingSessionResponse,
    ) -> Result<crate::pb::palyra::node::v1::CompletePairingSessionRequest, DeviceError> {
        if offer.v != super::v1::VERSION {
            return Err(DeviceError::BadAnswer(format!(
                "protocol version {} (expected {})",
                offer.v,
                super::v1::VERSION
            )));
        }
        let fixed = |name: &str, bytes: &[u8]| -> Result<[u8; 32], DeviceError> {
            bytes.try_into().map_err(|_| {
                DeviceError::BadAnswer(format!("{name} is {} bytes, not 32", bytes.len()))
            })
        };
        if offer.session_id.is_empty() || offer.session_id.len() > 64 {
            return Err(DeviceError::BadAnswer(
                "session_id is empty or too long".into(),
            ));
        }
        let offer = super::v1::Offer {
            session_id: offer.session_id.clone(),
            gateway_ephemeral_public: fixed(
                "gateway_ephemeral_public",
                &offer.gateway_ephemeral_public,
            )?,
            challenge: fixed("challenge", &offer.challenge)?,
        };
        let hello = super::v1::build_hello(
            &self.keys.signing,
            &self.keys.x25519,
            &offer,
            &self.device_id,
            &self.client_kind,
            &self.code,
        )?;
        self.session_id = Some(offer.session_id);
        Ok(crate::pb::palyra::node::v1::CompletePairingSessionRequest {
            v: hello.version,
            session_id: hello.session_id,
            device_id: Some(crate::pb::palyra::common::v1::CanonicalId {
                ulid: hello.device_id,
            }),
            client_kind: hello.client_kind,
            proof: hello.proof,
            device_signing_public: hello.device_signing_public.to_vec(),
            device_x25519_public: hello.device_x25519_public.to_vec(),
            challenge_signature: hello.challenge_signature.to_vec(),
            transcript_mac: hello.transcript_mac.to_vec(),
        })
    }

    /// GetPairingRequestStatus for the begun session.
    pub fn status_request(&self) -> crate::pb::palyra::node::v1::GetPairingRequestStatusRequest {
        crate::pb::palyra::node::v1::GetPairingRequestStatusRequest {
            v: super::v1::VERSION,
            session_id: self.session_id.clone().unwrap_or_default(),
            device_id: Some(crate::pb::palyra::common::v1::CanonicalId {
                ulid: self.device_id.clone(),
            }),
        }
    }

    /// Reads a status answer; a certificate is accepted only if it names this device, carries
    /// this device's key, and is signed by the trusted CA.
    pub fn on_status(
        &self,
        answer: &crate::pb::palyra::node::v1::GetPairingRequestStatusResponse,
    ) -> Result<Progress, DeviceError> {
        use crate::identity::cert;
        if !answer.mtls_client_private_key_pem.is_empty() {
            return Err(DeviceError::KeyFromGateway);
        }
        if answer.mtls_client_certificate_pem.is_empty() {
            return Ok(match answer.status.as_str() {
                "pending_approval" | "approved" => Progress::Waiting {
                    state: answer.status.clone(),
                },
                other => Progress::Refused {
                    state: other.to_owned(),
                    reason: answer.reason.clone(),
                },
            });
        }
        let ca = cert::cert_pem_to_der(&answer.gateway_ca_certificate_pem)
            .map_err(|e| DeviceError::BadCertificate(format!("CA certificate: {e}")))?;
        if !self.ca.accepts(&ca) {
            return Err(DeviceError::BadCertificate(
                "the CA is not the one this device trusts".into(),
            ));
        }
        check_issued(
            &answer.mtls_client_certificate_pem,
            &ca,
            &self.device_id,
            &self.keys.signing.verifying_key().to_bytes(),
        )?;
        Ok(Progress::Issued(Issued {
            cert_pem: answer.mtls_client_certificate_pem.clone(),
            ca_pem: answer.gateway_ca_certificate_pem.clone(),
            expires_at_unix_ms: answer.cert_expires_at_unix_ms,
        }))
    }
}

/// Checks a certificate issued to this device: signed by `ca_der`, naming `device_id`, for
/// the Ed25519 key `public_key` (the device's own).
pub fn check_issued(
    cert_pem: &str,
    ca_der: &[u8],
    device_id: &str,
    public_key: &[u8; 32],
) -> Result<(), DeviceError> {
    use crate::identity::cert;
    let bad = |m: &str| DeviceError::BadCertificate(m.to_owned());
    let leaf = cert::cert_pem_to_der(cert_pem)
        .map_err(|e| DeviceError::BadCertificate(format!("certificate: {e}")))?;
    if !cert::verify_signed_by(&leaf, ca_der).unwrap_or(false) {
        return Err(bad("the certificate is not signed by the gateway CA"));
    }
    if cert::cert_ed25519_public(&leaf).ok().flatten().as_ref() != Some(public_key) {
        return Err(bad("the certificate is not for this device's key"));
    }
    if cert::device_id_from_cert(&leaf).ok().flatten().as_deref() != Some(device_id) {
        return Err(bad("the certificate names another device"));
    }
    Ok(())
}

/// A rotation to `new_key` from the certificate `current_cert_der` of `device_id`: the
/// RotateDeviceCertificate request, the new key proven by its signature over
/// [`super::gateway::rotation_payload`].
pub fn rotation_request(
    device_id: &str,
    current_cert_der: &[u8],
    new_key: &SigningKey,
    replay: Option<crate::pb::palyra::common::v1::ReplayProtection>,
) -> Result<crate::pb::palyra::node::v1::RotateDeviceCertificateRequest, DeviceError> {
    use ed25519_dalek::Signer;
    let spki = crate::identity::cert::cert_spki_fingerprint(current_cert_der)
        .map_err(|e| DeviceError::BadCertificate(format!("current certificate: {e}")))?;
    let new_public = new_key.verifying_key().to_bytes();
    let payload = super::gateway::rotation_payload(device_id, &spki, &new_public);
    Ok(
        crate::pb::palyra::node::v1::RotateDeviceCertificateRequest {
            v: super::v1::VERSION,
            device_id: Some(crate::pb::palyra::common::v1::CanonicalId {
                ulid: device_id.to_owned(),
            }),
            replay,
            new_signing_public: new_public.to_vec(),
            new_key_signature: new_key.sign(&payload).to_bytes().to_vec(),
        },
    )
}

/// Checks the rotation answer: no private key, a certificate for `new_key` naming `device_id`
/// under `ca_der`.
pub fn check_rotated(
    answer: &crate::pb::palyra::node::v1::RotateDeviceCertificateResponse,
    ca_der: &[u8],
    device_id: &str,
    new_key: &SigningKey,
) -> Result<(), DeviceError> {
    if !answer.mtls_client_private_key_pem.is_empty() {
        return Err(DeviceError::KeyFromGateway);
    }
    check_issued(
        &answer.mtls_client_certificate_pem,
        ca_der,
        device_id,
        &new_key.verifying_key().to_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_round_trip_and_bad_ones_are_refused() {
        let invite = Invite {
            addr: "127.0.0.1:7444".into(),
            ca_spki_sha256: [0xab; 32],
            code: "01JCODE0000000000000000000".into(),
        };
        let text = invite.to_string();
        assert_eq!(Invite::parse(&text).unwrap(), invite);
        let fp = "ab".repeat(32);
        for bad in [
            "http://pair?addr=a:1".to_owned(),
            format!("palyra://pair?addr=a:1&ca=sha256:{fp}"),
            format!("palyra://pair?addr=a:1&ca=sha256:{fp}&code=short"),
            "palyra://pair?addr=a:1&ca=sha256:abcd&code=01JCODE0000000000000000000".to_owned(),
            format!(
                "palyra://pair?addr=a:1&addr=b:2&ca=sha256:{fp}&code=01JCODE0000000000000000000"
            ),
            format!("palyra://pair?addr=a:1&ca=sha256:{fp}&code=01JCODE0000000000000000000&x=1"),
            format!("palyra://pair?addr=nohost&ca=sha256:{fp}&code=01JCODE0000000000000000000"),
            "x".repeat(MAX_INVITE + 1),
        ] {
            assert!(Invite::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(parse_fingerprint(&fp).unwrap(), [0xab; 32]);
    }
}
