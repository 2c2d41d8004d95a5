//! The gateway side of enrollment: codes, Begin/Complete sessions, pairing requests and their
//! states, issuance for the device's own key, and rotation.
//!
//! ```text
//! Complete ok → pending_approval ──approve──▶ approved (certificate signed) ──status──▶ completed
//!                     │    └──reject──▶ rejected          │ └──reject──▶ rejected
//!                     └──(1 h)──▶ expired                 └──(1 h undelivered)──▶ expired
//! ```
//!
//! Every transition is guarded (nothing approves a rejected, expired or completed request), a
//! device revoked meanwhile gets no certificate, and a device ID that is already paired is only
//! re-paired when the operator approves with `replace`. The certificate is signed once, at
//! approval, for the Ed25519 key the device proved during pairing, and delivered once, to the
//! first status poll naming the session and device; it enters the trust file at delivery.
//!
//! The machine does no IO: [`Authority`] answers trust questions and signs, the state is
//! [`EnrollState`] (the caller persists it after each change, before answering), and trust-file
//! changes come out as [`Effect`]s to apply after persisting.

use super::codes::{code_matches, CodeError, CodeRecord, Codes, MintError};
use super::replay::{NonceStore, ReplayError};
use super::v1::{self, Hello, Offer, SessionSecrets, V1Error};
use super::{client_kind, Method};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Time between Begin and Complete.
pub const SESSION_TTL_MS: u64 = 5 * 60 * 1000;
/// Time a request waits for the operator's decision.
pub const APPROVAL_TTL_MS: u64 = 60 * 60 * 1000;
/// Time an approved certificate waits for the device to fetch it.
pub const DELIVERY_TTL_MS: u64 = 60 * 60 * 1000;
/// Sessions between Begin and Complete at once.
pub const MAX_SESSIONS: usize = 1024;
/// Requests awaiting a decision or delivery at once.
pub const MAX_OPEN_REQUESTS: usize = 1024;
/// Finished requests kept for listings (most recent).
pub const MAX_FINISHED_REQUESTS: usize = 256;
/// Rotations per device per hour.
pub const MAX_ROTATIONS_PER_HOUR: usize = 12;
/// Longest operator reason.
pub const MAX_REASON: usize = 256;
/// Domain of the signature a device makes with a new key when rotating.
pub const ROTATE_DOMAIN: &[u8] = b"palyra-rotate-v1";

/// Settings of the gateway side.
#[derive(Debug, Clone, Copy)]
pub struct GatewayConfig {
    /// Device certificate lifetime.
    pub cert_validity_ms: u64,
    /// Approve valid pairings without an operator (never re-pairings of a known device).
    pub auto_approve: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            cert_validity_ms: 30 * 24 * 3600 * 1000,
            auto_approve: false,
        }
    }
}

/// What the trust state says about a device ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Never paired.
    Unknown,
    /// Holds a live certificate.
    Paired,
    /// Revoked: never issued a certificate again.
    Revoked,
}

/// A signed device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    /// Certificate (PEM).
    pub pem: String,
    /// The issuing CA (PEM).
    pub ca_pem: String,
    /// End of validity.
    pub expires_at_unix_ms: u64,
}

/// Trust questions and signing, answered by the caller (the CA and the trust file).
pub trait Authority {
    /// The device's standing now.
    fn standing(&self, device_id: &str) -> Standing;
    /// Signs a certificate naming `device_id` for the Ed25519 `public_key`.
    fn sign(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
        validity_ms: u64,
    ) -> Result<SignedCert, SignError>;
}

/// Why an [`Authority`] did not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The device was revoked meanwhile.
    #[error("device {0} is revoked")]
    Revoked(String),
    /// The certificate could not be built.
    #[error(transparent)]
    Cert(#[from] crate::identity::cert::CertError),
}

/// A trust-file change to apply once the state is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Record this certificate as the device's (`pending`: a rotation, confirmed by use).
    RecordCert {
        /// Device.
        device_id: String,
        /// Certificate (PEM).
        cert_pem: String,
        /// Issued by a rotation with a new key.
        pending: bool,
    },
    /// Revoke every other certificate of the device (a replacing pairing).
    Supersede {
        /// Device.
        device_id: String,
        /// Certificate (PEM) to keep.
        keep_cert_pem: String,
    },
}

/// A begun session, kept until Complete (or expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session ID (a ULID); becomes the request ID.
    pub session_id: String,
    /// Client kind given at Begin.
    pub client_kind: String,
    /// Method of the code.
    pub method: Method,
    /// The code's ID.
    pub code_id: String,
    /// Salt and hash of the code (the proof must match).
    pub code_salt: String,
    /// Hash of the code.
    pub code_hash: String,
    /// Hex challenge.
    pub challenge: String,
    /// Hex X25519 ephemeral secret.
    pub ephemeral_secret: String,
    /// End of the session.
    pub expires_at_unix_ms: u64,
}

/// State of a pairing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for the operator.
    PendingApproval,
    /// Approved; the certificate awaits the device.
    Approved,
    /// The device received its certificate.
    Completed,
    /// Refused.
    Rejected,
    /// Nobody decided or fetched in time.
    Expired,
}

impl RequestState {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::PendingApproval => "pending_approval",
            RequestState::Approved => "approved",
            RequestState::Completed => "completed",
            RequestState::Rejected => "rejected",
            RequestState::Expired => "expired",
        }
    }

    fn is_open(self) -> bool {
        matches!(self, RequestState::PendingApproval | RequestState::Approved)
    }
}

/// A pairing request (after a verified Complete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Request ID (= session ID).
    pub request_id: String,
    /// Device.
    pub device_id: String,
    /// Client kind.
    pub client_kind: String,
    /// Method of the code used.
    pub method: Method,
    /// The code's ID.
    pub code_id: String,
    /// Hex SHA-256 of the device's Ed25519 key.
    pub identity_fingerprint: String,
    /// Hex SHA-256 of the transcript value.
    pub transcript_hash: String,
    /// Hex Ed25519 public key (the certificate's key).
    pub signing_public: String,
    /// The device ID was already paired when the request arrived.
    pub replaces_device: bool,
    /// State.
    pub state: RequestState,
    /// Why it is in that state.
    pub reason: String,
    /// When Complete verified.
    pub requested_at_unix_ms: u64,
    /// When the current state ends (pending / approved).
    pub expires_at_unix_ms: u64,
    /// When the operator (or auto-approval) decided.
    #[serde(default)]
    pub decided_at_unix_ms: Option<u64>,
    /// The signed certificate (PEM), from approval on.
    #[serde(default)]
    pub cert_pem: Option<String>,
    /// The CA (PEM) that signed it.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Certificate end of validity.
    #[serde(default)]
    pub cert_expires_at_unix_ms: u64,
    /// When the device received the certificate.
    #[serde(default)]
    pub delivered_at_unix_ms: Option<u64>,
}

/// The durable record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollState {
    /// Active codes (hashed).
    #[serde(default)]
    pub codes: Vec<CodeRecord>,
    /// Sessions awaiting Complete.
    #[serde(default)]
    pub sessions: Vec<SessionRecord>,
    /// Pairing requests.
    #[serde(default)]
    pub requests: Vec<RequestRecord>,
}

/// The class of an enrollment error (callers map it to gRPC codes or HTTP statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input.
    InvalidArgument,
    /// No such session or request.
    NotFound,
    /// Proof, signature or ownership failed.
    PermissionDenied,
    /// Not allowed in the current state.
    FailedPrecondition,
    /// A limit was reached; retry later.
    ResourceExhausted,
    /// A replay.
    AlreadyExists,
    /// Signing or storage failed.
    Unavailable,
}

/// Why an enrollment operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// Malformed input.
    #[error("{0}")]
    Invalid(String),
    /// The code was refused.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// Minting was refused.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The replay protection was refused.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// No such session (unknown, used, or expired).
    #[error("pairing session not found (unknown, already used, or expired)")]
    SessionNotFound,
    /// The session's time ran out (the session is gone now).
    #[error("pairing session expired")]
    SessionExpired,
    /// The hello did not verify (the session and its code are gone now).
    #[error("pairing verification failed: {0}")]
    Verification(#[from] V1Error),
    /// The device is revoked.
    #[error("device {0} is revoked and cannot pair")]
    Revoked(String),
    /// A capacity limit.
    #[error("{0}")]
    Busy(String),
    /// No such request.
    #[error("pairing request {0} not found")]
    RequestNotFound(String),
    /// The request belongs to another device.
    #[error("pairing request does not belong to device {0}")]
    WrongDevice(String),
    /// The transition is not allowed from the request's state.
    #[error("pairing request is {state}; it cannot be {action}")]
    Transition {
        /// Current state.
        state: &'static str,
        /// Attempted action.
        action: &'static str,
    },
    /// Approving would replace a paired device without the operator saying so.
    #[error(
        "device {0} is already paired; approving this request replaces it (approve with replace)"
    )]
    NeedsReplace(String),
    /// Another request for the device is open.
    #[error("device {0} already has a pairing request awaiting a decision or delivery")]
    AlreadyOpen(String),
    /// The device is not paired (rotation).
    #[error("device {0} is not paired")]
    NotPaired(String),
    /// Signing failed.
    #[error("cannot issue the certificate: {0}")]
    Issue(String),
    /// The change could not be made durable (nothing changed; retry).
    #[error("enrollment state not saved: {0}")]
    Unsaved(String),
}

impl EnrollError {
    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EnrollError::Invalid(_) => ErrorKind::InvalidArgument,
            EnrollError::Code(CodeError::Malformed(_)) => ErrorKind::InvalidArgument,
            EnrollError::Code(CodeError::NoMatch) => ErrorKind::FailedPrecondition,
            EnrollError::Code(CodeError::Throttled { .. }) => ErrorKind::ResourceExhausted,
            EnrollError::Mint(_) | EnrollError::Busy(_) => ErrorKind::ResourceExhausted,
            EnrollError::Replay(ReplayError::Replayed) => ErrorKind::AlreadyExists,
            EnrollError::Replay(ReplayError::Full) => ErrorKind::ResourceExhausted,
            EnrollError::Replay(_) => ErrorKind::InvalidArgument,
            EnrollError::SessionNotFound | EnrollError::RequestNotFound(_) => ErrorKind::NotFound,
            EnrollError::SessionExpired => ErrorKind::FailedPrecondition,
            EnrollError::Verification(V1Error::VersionMismatch { .. }) => {
                ErrorKind::InvalidArgument
            }
            EnrollError::Verification(_)
            | EnrollError::Revoked(_)
            | EnrollError::WrongDevice(_) => ErrorKind::PermissionDenied,
            EnrollError::Transition { .. }
            | EnrollError::NeedsReplace(_)
            | EnrollError::AlreadyOpen(_)
            | EnrollError::NotPaired(_) => ErrorKind::FailedPrecondition,
            EnrollError::Issue(_) | EnrollError::Unsaved(_) => ErrorKind::Unavailable,
        }
    }
}

/// A Begin request.
#[derive(Debug, Clone)]
pub struct Begin<'a> {
    /// Protocol version (`v`).
    pub version: u32,
    /// Client kind (raw).
    pub client_kind: &'a str,
    /// Method and code.
    pub method: Method,
    /// The code (trimmed by the caller).
    pub code: &'a str,
    /// `ReplayProtection` (nonce, timestamp) when sent.
    pub replay: Option<(&'a str, i64)>,
}

/// Begin's answer.
#[derive(Debug, Clone)]
pub struct Begun {
    /// What the device needs.
    pub offer: Offer,
    /// Normalized client kind.
    pub client_kind: &'static str,
    /// End of the session.
    pub expires_at_unix_ms: u64,
}

/// What a status poll returns.
#[derive(Debug, Clone)]
pub struct Status {
    /// The request.
    pub request: RequestRecord,
    /// The certificate and CA (PEM), on the one delivery.
    pub delivered: Option<SignedCert>,
}

/// The gateway's enrollment state machine.
#[derive(Debug, Clone)]
pub struct Enrollment {
    config: GatewayConfig,
    codes: Codes,
    sessions: Vec<SessionRecord>,
    requests: Vec<RequestRecord>,
    nonces: NonceStore,
    rotations: HashMap<String, VecDeque<u64>>,
    effects: Vec<Effect>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok().map(|()| out)
}

fn reason(raw: Option<&str>, default: &str) -> Result<String, EnrollError> {
    let reason = raw
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(default);
    if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(EnrollError::Invalid(format!(
            "reason must be at most {MAX_REASON} bytes without control characters"
        )));
    }
    Ok(reason.to_owned())
}

impl Enrollment {
    /// The machine over a restored state.
    pub fn new(config: GatewayConfig, state: EnrollState) -> Self {
        Self {
            config,
            codes: Codes::from_records(state.codes),
            sessions: state.sessions,
            requests: state.requests,
            nonces: NonceStore::default(),
            rotations: HashMap::new(),
            effects: Vec::new(),
        }
    }

    /// The durable record as it is now.
    pub fn state(&self) -> EnrollState {
        EnrollState {
            codes: self.codes.records().to_vec(),
            sessions: self.sessions.clone(),
            requests: self.requests.clone(),
        }
    }

    /// The next trust-file change to apply (after persisting [`Enrollment::state`]), in order.
    pub fn poll_event(&mut self) -> Option<Effect> {
        if self.effects.is_empty() {
            None
        } else {
            Some(self.effects.remove(0))
        }
    }

    /// The effects that completed requests imply (to re-apply after a crash between
    /// persisting and applying them; applying is idempotent).
    pub fn recovery_effects(&self) -> Vec<Effect> {
        let mut effects = Vec::new();
        for r in &self.requests {
            if let (RequestState::Completed, Some(pem)) = (r.state, &r.cert_pem) {
                effects.push(Effect::RecordCert {
                    device_id: r.device_id.clone(),
                    cert_pem: pem.clone(),
                    pending: false,
                });
            }
        }
        effects
    }

    /// The requests, oldest first.
    pub fn requests(&self) -> &[RequestRecord] {
        &self.requests
    }

    /// The active codes (hashed).
    pub fn codes(&self) -> &[CodeRecord] {
        self.codes.records()
    }

    /// Ends what ran out of time. Returns whether anything changed.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let before = (self.codes.records().len(), self.sessions.len());
        self.codes.expire(now_ms);
        self.sessions.retain(|s| s.expires_at_unix_ms > now_ms);
        let mut changed = before != (self.codes.records().len(), self.sessions.len());
        for r in &mut self.requests {
            if r.state.is_open() && r.expires_at_unix_ms <= now_ms {
                r.reason = match r.state {
                    RequestState::Approved => "certificate not fetched in time",
                    _ => "no decision in time",
                }
                .into();
                r.state = RequestState::Expired;
                r.cert_pem = None;
                changed = true;
            }
        }
        changed | self.prune_finished()
    }

    fn prune_finished(&mut self) -> bool {
        let finished = self.requests.iter().filter(|r| !r.state.is_open()).count();
        let mut excess = finished.saturating_sub(MAX_FINISHED_REQUESTS);
        if excess == 0 {
            return false;
        }
        self.requests.retain(|r| {
            if excess > 0 && !r.state.is_open() {
                excess -= 1;
                false
            } else {
                true
            }
        });
        true
    }

    /// Mints a code; the code itself is returned this once.
    pub fn mint(
        &mut self,
        now_ms: u64,
        method: Method,
        ttl_ms: u64,
        issued_by: &str,
        rng: &mut dyn rand_core::CryptoRngCore,
    ) -> Result<(CodeRecord, String), EnrollError> {
        Ok(self.codes.mint(now_ms, method, ttl_ms, issued_by, rng)?)
    }

    /// Revokes an active code by ID.
    pub fn revoke_code(&mut self, id: &str) -> bool {
        self.codes.revoke(id)
    }

    /// BeginPairingSession: consumes the code, opens a session.
    pub fn begin(
        &mut self,
        now_ms: u64,
        source: Option<IpAddr>,
        request: &Begin<'_>,
        rng: &mut dyn rand_core::CryptoRngCore,
    ) -> Result<Begun, EnrollError> {
        if request.version != v1::VERSION {
            return Err(EnrollError::Invalid(format!(
                "unsupported pairing version v={}; this gateway speaks v={}",
                request.version,
                v1::VERSION
            )));
        }
        let kind = client_kind(request.client_kind).ok_or_else(|| {
            EnrollError::Invalid("client_kind must be one of node|cli|desktop".into())
        })?;
        self.expire(now_ms);
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(EnrollError::Busy(format!(
                "{MAX_SESSIONS} pairing sessions are open; retry shortly"
            )));
        }
        if let Some((nonce, ts)) = request.replay {
            self.nonces.check(now_ms, nonce, ts)?;
        }
        let code = self
            .codes
            .take(now_ms, source, request.method, request.code)?;
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let mut challenge = [0u8; 32];
        rng.fill_bytes(&mut challenge);
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let session_id = ulid::Ulid::from_parts(now_ms, u128::from_be_bytes(id)).to_string();
        let expires_at_unix_ms = now_ms + SESSION_TTL_MS;
        self.sessions.push(SessionRecord {
            session_id: session_id.clone(),
            client_kind: kind.to_owned(),
            method: code.method,
            code_id: code.id,
            code_salt: code.salt,
            code_hash: code.hash,
            challenge: hex::encode(challenge),
            ephemeral_secret: hex::encode(secret),
            expires_at_unix_ms,
        });
        Ok(Begun {
            offer: Offer {
                session_id,
                gateway_ephemeral_public: v1::ephemeral_public(&secret),
                challenge,
            },
            client_kind: kind,
            expires_at_unix_ms,
        })
    }

    /// CompletePairingSession: verifies the hello (the session is used up whatever the
    /// outcome) and opens a pairing request, approved at once in auto-approve mode.
    pub fn complete(
        &mut self,
        authority: &dyn Authority,
        now_ms: u64,
        hello: &Hello,
    ) -> Result<RequestRecord, EnrollError> {
        let Some(i) = self
            .sessions
            .iter()
            .position(|s| s.session_id == hello.session_id)
        else {
            return Err(EnrollError::SessionNotFound);
        };
        let session = self.sessions.remove(i);
        if session.expires_at_unix_ms <= now_ms {
            return Err(EnrollError::SessionExpired);
        }
        if !crate::identity::is_canonical_device_id(&hello.device_id) {
            return Err(EnrollError::Invalid(
                "device_id must be a canonical ULID (26 characters, Crockford base32, upper case)"
                    .into(),
            ));
        }
        let standing = authority.standing(&hello.device_id);
        if standing == Standing::Revoked {
            return Err(EnrollError::Revoked(hello.device_id.clone()));
        }
        let (Some(challenge), Some(secret)) =
            (hex32(&session.challenge), hex32(&session.ephemeral_secret))
        else {
            return Err(EnrollError::Issue("stored session is corrupt".into()));
        };
        let proof_matches =
            |proof: &str| code_matches(&session.code_salt, &session.code_hash, proof);
        let verified = v1::verify_hello(
            &SessionSecrets {
                version: v1::VERSION,
                session_id: &session.session_id,
                client_kind: &session.client_kind,
                proof_matches: &proof_matches,
                challenge: &challenge,
                ephemeral_secret: &secret,
            },
            hello,
        )?;
        if self
            .requests
            .iter()
            .any(|r| r.state.is_open() && r.device_id == hello.device_id)
        {
            return Err(EnrollError::AlreadyOpen(hello.device_id.clone()));
        }
        if self.requests.iter().filter(|r| r.state.is_open()).count() >= MAX_OPEN_REQUESTS {
            return Err(EnrollError::Busy(format!(
                "{MAX_OPEN_REQUESTS} pairing requests await a decision; retry later"
            )));
        }
        let replaces_device = standing == Standing::Paired;
        self.requests.push(RequestRecord {
            request_id: session.session_id.clone(),
            device_id: hello.device_id.clone(),
            client_kind: session.client_kind,
            method: session.method,
            code_id: session.code_id,
            identity_fingerprint: verified.identity_fingerprint,
            transcript_hash: verified.transcript_hash,
            signing_public: hex::encode(verified.signing_public),
            replaces_device,
            state: RequestState::PendingApproval,
            reason: "pending_approval".into(),
            requested_at_unix_ms: now_ms,
            expires_at_unix_ms: now_ms + APPROVAL_TTL_MS,
            decided_at_unix_ms: None,
            cert_pem: None,
            ca_pem: None,
            cert_expires_at_unix_ms: 0,
            delivered_at_unix_ms: None,
        });
        if self.config.auto_approve && !replaces_device {
            return self.approve(
                authority,
                now_ms,
                &session.session_id,
                false,
                Some("auto_approved"),
            );
        }
        Ok(self.requests.last().cloned().expect("just pushed"))
    }

    fn find(&mut self, request_id: &str) -> Result<&mut RequestRecord, EnrollError> {
        self.requests
            .iter_mut()
            .find(|r| r.request_id == request_id)
            .ok_or_else(|| EnrollError::RequestNotFound(request_id.to_owned()))
    }

    /// The operator approves: the certificate is signed now for the device's proven key.
    pub fn approve(
        &mut self,
        authority: &dyn Authority,
        now_ms: u64,
        request_id: &str,
        replace: bool,
        why: Option<&str>,
    ) -> Result<RequestRecord, EnrollError> {
        let why = reason(why, "approved_by_operator")?;
        self.expire(now_ms);
        let validity = self.config.cert_validity_ms;
        let request = self.find(request_id)?;
        if request.state != RequestState::PendingApproval {
            return Err(EnrollError::Transition {
                state: request.state.as_str(),
                action: "approved",
            });
        }
        match authority.standing(&request.device_id) {
            Standing::Revoked => {
                request.state = RequestState::Rejected;
                request.reason = "device revoked".into();
                request.decided_at_unix_ms = Some(now_ms);
                return Err(EnrollError::Revoked(request.device_id.clone()));
            }
            Standing::Paired if !replace => {
                return Err(EnrollError::NeedsReplace(request.device_id.clone()))
            }
            _ => {}
        }
        let key = hex32(&request.signing_public)
            .ok_or_else(|| EnrollError::Issue("stored key is corrupt".into()))?;
        let signed = authority
            .sign(&request.device_id, &key, now_ms, validity)
            .map_err(|e| EnrollError::Issue(e.to_string()))?;
        request.replaces_device |= replace;
        request.state = RequestState::Approved;
        request.reason = why;
        request.decided_at_unix_ms = Some(now_ms);
        request.expires_at_unix_ms = now_ms + DELIVERY_TTL_MS;
        request.cert_expires_at_unix_ms = signed.expires_at_unix_ms;
        request.cert_pem = Some(signed.pem);
        request.ca_pem = Some(signed.ca_pem);
        Ok(request.clone())
    }

    /// The operator rejects a request awaiting a decision or delivery.
    pub fn reject(
        &mut self,
        now_ms: u64,
        request_id: &str,
        why: Option<&str>,
    ) -> Result<RequestRecord, EnrollError> {
        let why = reason(why, "rejected_by_operator")?;
        self.expire(now_ms);
        let request = self.find(request_id)?;
        if !request.state.is_open() {
            return Err(EnrollError::Transition {
                state: request.state.as_str(),
                action: "rejected",
            });
        }
        request.state = RequestState::Rejected;
        request.reason = why;
        request.decided_at_unix_ms = Some(now_ms);
        request.cert_pem = None;
        Ok(request.clone())
    }

    /// GetPairingRequestStatus: the state; an approved certificate is delivered here. The first
    /// delivery completes the request (and records the certificate); later polls naming the same
    /// session and device get the same (public) certificate again while it is valid and the
    /// device is not revoked, so a device whose first answer was lost still finishes pairing.
    pub fn status(
        &mut self,
        authority: &dyn Authority,
        now_ms: u64,
        session_id: &str,
        device_id: &str,
    ) -> Result<Status, EnrollError> {
        self.expire(now_ms);
        let request = self.find(session_id)?;
        if request.device_id != device_id {
            return Err(EnrollError::WrongDevice(device_id.to_owned()));
        }
        if request.state == RequestState::Completed {
            let again = match (&request.cert_pem, &request.ca_pem) {
                (Some(pem), Some(ca_pem))
                    if request.cert_expires_at_unix_ms > now_ms
                        && authority.standing(device_id) != Standing::Revoked =>
                {
                    Some(SignedCert {
                        pem: pem.clone(),
                        ca_pem: ca_pem.clone(),
                        expires_at_unix_ms: request.cert_expires_at_unix_ms,
                    })
                }
                _ => None,
            };
            return Ok(Status {
                request: request.clone(),
                delivered: again,
            });
        }
        if request.state != RequestState::Approved {
            return Ok(Status {
                request: request.clone(),
                delivered: None,
            });
        }
        if authority.standing(device_id) == Standing::Revoked {
            request.state = RequestState::Rejected;
            request.reason = "device revoked".into();
            request.cert_pem = None;
            return Ok(Status {
                request: request.clone(),
                delivered: None,
            });
        }
        let (Some(pem), Some(ca_pem)) = (request.cert_pem.clone(), request.ca_pem.clone()) else {
            return Err(EnrollError::Issue(
                "approved request has no certificate".into(),
            ));
        };
        request.state = RequestState::Completed;
        request.reason = "paired".into();
        request.delivered_at_unix_ms = Some(now_ms);
        let record = Effect::RecordCert {
            device_id: device_id.to_owned(),
            cert_pem: pem.clone(),
            pending: false,
        };
        let supersede = request.replaces_device.then(|| Effect::Supersede {
            device_id: device_id.to_owned(),
            keep_cert_pem: pem.clone(),
        });
        let status = Status {
            request: request.clone(),
            delivered: Some(SignedCert {
                pem,
                ca_pem,
                expires_at_unix_ms: request.cert_expires_at_unix_ms,
            }),
        };
        self.effects.push(record);
        self.effects.extend(supersede);
        Ok(status)
    }

    /// Checks and consumes a request's `ReplayProtection` (nonce, timestamp).
    pub fn check_replay(
        &mut self,
        now_ms: u64,
        nonce: &str,
        timestamp_unix_ms: i64,
    ) -> Result<(), EnrollError> {
        Ok(self.nonces.check(now_ms, nonce, timestamp_unix_ms)?)
    }

    /// RotateDeviceCertificate from an authenticated device: a certificate for `new_key`
    /// (proven by a signature over [`rotation_payload`]) or, without one, for its current key.
    pub fn rotate(
        &mut self,
        authority: &dyn Authority,
        now_ms: u64,
        device_id: &str,
        current: (&[u8; 32], &[u8; 32]),
        new_key: Option<(&[u8; 32], &[u8; 64])>,
    ) -> Result<SignedCert, EnrollError> {
        let (current_public, current_spki_sha256) = current;
        if authority.standing(device_id) != Standing::Paired {
            return Err(EnrollError::NotPaired(device_id.to_owned()));
        }
        let recent = self.rotations.entry(device_id.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= 3_600_000)
        {
            recent.pop_front();
        }
        if recent.len() >= MAX_ROTATIONS_PER_HOUR {
            return Err(EnrollError::Busy(format!(
                "at most {MAX_ROTATIONS_PER_HOUR} rotations per device per hour"
            )));
        }
        let key = match new_key {
            None => *current_public,
            Some((public, signature)) => {
                let key = VerifyingKey::from_bytes(public)
                    .ok()
                    .filter(|k| !k.is_weak())
                    .ok_or(EnrollError::Verification(V1Error::BadSigningKey))?;
                key.verify_strict(
                    &rotation_payload(device_id, current_spki_sha256, public),
                    &Signature::from_bytes(signature),
                )
                .map_err(|_| EnrollError::Verification(V1Error::BadSignature))?;
                *public
            }
        };
        let signed = authority
            .sign(device_id, &key, now_ms, self.config.cert_validity_ms)
            .map_err(|e| EnrollError::Issue(e.to_string()))?;
        recent.push_back(now_ms);
        self.effects.push(Effect::RecordCert {
            device_id: device_id.to_owned(),
            cert_pem: signed.pem.clone(),
            pending: new_key.is_some(),
        });
        Ok(signed)
    }
}

/// What a device signs with its new key when rotating: the domain, its ID, the SPKI
/// fingerprint of the certificate it rotates from, and the new key.
pub fn rotation_payload(
    device_id: &str,
    current_spki_sha256: &[u8; 32],
    new_public: &[u8; 32],
) -> Vec<u8> {
    [
        ROTATE_DOMAIN,
        &(device_id.len() as u32).to_le_bytes(),
        device_id.as_bytes(),
        current_spki_sha256,
        new_public,
    ]
    .concat()
}

#[cfg(test)]
mod tests;
