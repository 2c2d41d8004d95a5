//! Enrollment in the daemon: the durable store around the [`Enrollment`] machine
//! (`STATE/enroll/state.json`, 0600, written before any answer), the CA and trust file as its
//! [`Authority`], and the pairing RPCs of `palyra.node.v1.NodeService`.
//!
//! Begin, Complete and GetPairingRequestStatus need no client certificate (a device has none
//! yet); RotateDeviceCertificate and RevokeDevicePairing need the certificate of the paired
//! device they name.

use crate::operator::RandomFill;
use crate::store::{write_atomic, IdentityDir, StoreError};
use palyra_proto::enroll::gateway::{
    Authority, Begin, EnrollError, EnrollState, Enrollment, GatewayConfig, SignedCert, Standing,
};
use palyra_proto::enroll::wire::{bytes32, hello_of, offer_response, status_of};
use palyra_proto::enroll::Method;
use palyra_proto::grpc::codec::{Code, Status};
use palyra_proto::grpc::service::decode;
use palyra_proto::identity::cert;
use palyra_proto::pb::palyra::node::v1::{
    pairing_method, BeginPairingSessionRequest, CompletePairingSessionRequest,
    CompletePairingSessionResponse, GetPairingRequestStatusRequest,
    GetPairingRequestStatusResponse, RevokeDevicePairingRequest, RevokeDevicePairingResponse,
    RotateDeviceCertificateRequest, RotateDeviceCertificateResponse,
};
use palyra_proto::transport::PeerIdentity;
use prost::Message;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// The enrollment state of a daemon, durable.
pub struct EnrollmentStore {
    machine: Mutex<Enrollment>,
    config: GatewayConfig,
    path: PathBuf,
    authority: DirAuthority,
    /// The daemon's live index, updated at once when pairing changes the trust file (the
    /// periodic reload would take up to a maintenance interval).
    live: Option<Arc<palyra_proto::identity::trust::TrustIndex>>,
}

/// The CA and trust file of an identity directory as the machine's [`Authority`].
struct DirAuthority {
    ids: IdentityDir,
    random: RandomFill,
}

/// An RNG over the injected random source (certificate serial numbers).
struct FillRng(RandomFill);

impl rand_core::RngCore for FillRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        (self.0)(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        (self.0)(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        (self.0)(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FillRng {}

impl Authority for DirAuthority {
    fn standing(&self, device_id: &str) -> Standing {
        let Ok(trust) = self.ids.load_trust() else {
            // Fail closed: an unreadable trust file pairs nobody.
            return Standing::Revoked;
        };
        if trust.revoked.iter().any(|r| r.device_id == device_id) {
            Standing::Revoked
        } else if trust
            .devices
            .iter()
            .any(|d| d.device_id == device_id && d.revoked_at_unix_ms.is_none())
        {
            Standing::Paired
        } else {
            Standing::Unknown
        }
    }

    fn sign(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
        validity_ms: u64,
    ) -> Result<SignedCert, String> {
        let (issued, ca_pem) = self
            .ids
            .sign_device_key(
                &mut FillRng(Arc::clone(&self.random)),
                UNIX_EPOCH + Duration::from_millis(now_ms),
                device_id,
                public_key,
                Duration::from_millis(validity_ms),
            )
            .map_err(|e| e.to_string())?;
        Ok(SignedCert {
            pem: issued.pem,
            ca_pem,
            expires_at_unix_ms: crate::store::unix_ms(issued.not_after),
        })
    }
}

impl EnrollmentStore {
    /// Opens `STATE/enroll/state.json` (empty at first) over the gateway identity in
    /// `STATE/identity`, and re-applies the trust records of completed pairings (idempotent:
    /// mends a crash between the two writes).
    pub fn open(
        state_dir: &std::path::Path,
        config: GatewayConfig,
        random: RandomFill,
    ) -> Result<Self, crate::store::IdentityError> {
        let ids = IdentityDir::open(state_dir.join("identity"))?;
        let dir = state_dir.join("enroll");
        std::fs::create_dir_all(&dir)
            .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        let path = dir.join("state.json");
        let state: EnrollState = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
                context: format!("reading {}", path.display()),
                source: std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e,
                )),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EnrollState::default(),
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("reading {}", path.display()),
                    source: std::sync::Arc::new(e),
                }
                .into())
            }
        };
        let machine = Enrollment::new(config, state);
        let store = Self {
            config,
            path,
            authority: DirAuthority { ids, random },
            machine: Mutex::new(machine),
            live: None,
        };
        let recovery = store.lock().recovery_effects();
        store.apply(recovery);
        Ok(store)
    }

    /// Keeps `index` (the daemon's live trust index) in step with the trust changes pairing
    /// makes: a new certificate is accepted on the very next handshake.
    pub fn with_trust_index(
        mut self,
        index: Arc<palyra_proto::identity::trust::TrustIndex>,
    ) -> Self {
        self.live = Some(index);
        self
    }

    fn refresh_live(&self) {
        if let Some(index) = &self.live {
            match self.authority.ids.load_trust() {
                Ok(snapshot) => index.replace(&snapshot),
                Err(e) => tracing::warn!(error = %e, "cannot reload the trust file"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Enrollment> {
        match self.machine.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Runs `op` on the machine; whatever it changed (refusals too: a burned session) is made
    /// durable before the result is returned, then its trust effects are applied. If the state
    /// cannot be written, the change is undone and the caller gets `Unavailable`.
    pub fn with<T>(
        &self,
        op: impl FnOnce(
            &mut Enrollment,
            &dyn Authority,
            &mut dyn FnMut(&mut [u8]),
        ) -> Result<T, EnrollError>,
    ) -> Result<T, EnrollError> {
        let mut machine = self.lock();
        let before = machine.state();
        let random = Arc::clone(&self.authority.random);
        let mut fill = move |b: &mut [u8]| random(b);
        let result = op(&mut machine, &self.authority, &mut fill);
        let after = machine.state();
        if after != before {
            let json = serde_json::to_vec_pretty(&after).expect("state serializes");
            if let Err(e) = write_atomic(&self.path, &json) {
                tracing::error!(error = %e, "cannot save the enrollment state; change undone");
                *machine = Enrollment::new(self.config, before);
                return Err(EnrollError::Issue(format!(
                    "enrollment state not saved: {e}"
                )));
            }
        }
        let effects = machine.take_effects();
        drop(machine);
        self.apply(effects);
        result
    }

    fn apply(&self, effects: Vec<palyra_proto::enroll::gateway::Effect>) {
        use palyra_proto::enroll::gateway::Effect;
        let now = std::time::SystemTime::now();
        let applied = !effects.is_empty();
        for effect in effects {
            let outcome = match &effect {
                Effect::RecordCert {
                    device_id,
                    cert_pem,
                    pending,
                } => cert::cert_pem_to_der(cert_pem)
                    .map_err(|e| e.to_string())
                    .and_then(|der| {
                        self.authority
                            .ids
                            .record_device_cert(now, device_id, &der, *pending)
                            .map_err(|e| e.to_string())
                    }),
                Effect::Supersede {
                    device_id,
                    keep_cert_pem,
                } => cert::cert_pem_to_der(keep_cert_pem)
                    .and_then(|der| cert::cert_spki_fingerprint(&der))
                    .map_err(|e| e.to_string())
                    .and_then(|keep| {
                        self.authority
                            .ids
                            .supersede_device_certs(now, device_id, &keep)
                            .map_err(|e| e.to_string())
                    }),
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, ?effect, "trust change not applied");
            }
        }
        if applied {
            self.refresh_live();
        }
    }
}

/// BeginPairingSession.
pub fn begin(
    store: &EnrollmentStore,
    peer: &PeerIdentity,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Vec<u8>, Status> {
    let request: BeginPairingSessionRequest = decode(bytes)?;
    let (method, code) = match request.method.and_then(|m| m.value) {
        Some(pairing_method::Value::PinCode(code)) => (Method::Pin, code),
        Some(pairing_method::Value::QrToken(token)) => (Method::Qr, token),
        None => {
            return Err(Status::new(
                Code::InvalidArgument,
                "method must carry pin_code or qr_token",
            ))
        }
    };
    let replay = request
        .replay
        .as_ref()
        .map(|r| (r.nonce.as_str(), r.timestamp_unix_ms));
    let begun = store
        .with(|machine, _, random| {
            machine.begin(
                now_ms,
                peer.remote.map(|a| a.ip()),
                &Begin {
                    version: request.v,
                    client_kind: &request.client_kind,
                    method,
                    code: code.trim(),
                    replay,
                },
                random,
            )
        })
        .map_err(|e| status_of(&e))?;
    Ok(offer_response(request.v, &begun).encode_to_vec())
}

/// CompletePairingSession.
pub fn complete(store: &EnrollmentStore, now_ms: u64, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let request: CompletePairingSessionRequest = decode(bytes)?;
    let hello = hello_of(&request)?;
    let record = store
        .with(|machine, authority, _| machine.complete(authority, now_ms, &hello))
        .map_err(|e| status_of(&e))?;
    Ok(CompletePairingSessionResponse {
        v: request.v,
        paired: false,
        reason: record.state.as_str().into(),
        identity_fingerprint: record.identity_fingerprint,
        transcript_hash: record.transcript_hash,
        ..Default::default()
    }
    .encode_to_vec())
}

/// GetPairingRequestStatus: the certificate is in the answer once, when first approved.
pub fn status(store: &EnrollmentStore, now_ms: u64, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let request: GetPairingRequestStatusRequest = decode(bytes)?;
    let device_id = request.device_id.map(|d| d.ulid).unwrap_or_default();
    let status = store
        .with(|machine, authority, _| {
            machine.status(authority, now_ms, request.session_id.trim(), &device_id)
        })
        .map_err(|e| status_of(&e))?;
    let r = status.request;
    let (cert, ca, expires) = status
        .delivered
        .map(|d| (d.pem, d.ca_pem, d.expires_at_unix_ms))
        .unwrap_or_default();
    Ok(GetPairingRequestStatusResponse {
        v: request.v,
        status: r.state.as_str().into(),
        reason: r.reason,
        paired: r.state == palyra_proto::enroll::gateway::RequestState::Completed,
        approval_id: r.request_id,
        identity_fingerprint: r.identity_fingerprint,
        transcript_hash: r.transcript_hash,
        mtls_client_certificate_pem: cert,
        mtls_client_private_key_pem: String::new(),
        gateway_ca_certificate_pem: ca,
        cert_expires_at_unix_ms: expires,
    }
    .encode_to_vec())
}

/// Checks a certificate-bound request: its version, that it names the authenticated `device`,
/// and its replay protection when sent.
fn check_device_request(
    store: &EnrollmentStore,
    device: &str,
    now_ms: u64,
    v: u32,
    device_id: Option<&palyra_proto::pb::palyra::common::v1::CanonicalId>,
    replay: Option<&palyra_proto::pb::palyra::common::v1::ReplayProtection>,
) -> Result<(), Status> {
    crate::node::service::check_version(v)?;
    crate::node::service::bind_device(device, device_id)?;
    if let Some(replay) = replay {
        store
            .with(|machine, _, _| {
                machine.check_replay(now_ms, &replay.nonce, replay.timestamp_unix_ms)
            })
            .map_err(|e| status_of(&e))?;
    }
    Ok(())
}

/// RotateDeviceCertificate, for the authenticated device `device`.
pub fn rotate(
    store: &EnrollmentStore,
    device: &str,
    peer: &PeerIdentity,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Vec<u8>, Status> {
    let request: RotateDeviceCertificateRequest = decode(bytes)?;
    check_device_request(
        store,
        device,
        now_ms,
        request.v,
        request.device_id.as_ref(),
        request.replay.as_ref(),
    )?;
    let (Some(leaf), Some(spki)) = (peer.leaf_der.as_deref(), peer.spki_sha256) else {
        return Err(Status::new(
            Code::Unauthenticated,
            "a client certificate is required",
        ));
    };
    let current = cert::cert_ed25519_public(leaf)
        .ok()
        .flatten()
        .ok_or_else(|| {
            Status::new(
                Code::FailedPrecondition,
                "the client certificate is not an Ed25519 device certificate",
            )
        })?;
    let new_key = match (
        request.new_signing_public.is_empty(),
        request.new_key_signature.is_empty(),
    ) {
        (true, true) => None,
        (false, false) => Some((
            bytes32::<32>("new_signing_public", &request.new_signing_public)?,
            bytes32::<64>("new_key_signature", &request.new_key_signature)?,
        )),
        _ => {
            return Err(Status::new(
                Code::InvalidArgument,
                "new_signing_public and new_key_signature go together",
            ))
        }
    };
    let signed = store
        .with(|machine, authority, _| {
            machine.rotate(
                authority,
                now_ms,
                device,
                (&current, &spki),
                new_key.as_ref().map(|(k, s)| (k, s)),
            )
        })
        .map_err(|e| status_of(&e))?;
    Ok(RotateDeviceCertificateResponse {
        v: request.v,
        rotated: true,
        reason: "rotated".into(),
        mtls_client_certificate_pem: signed.pem,
        mtls_client_private_key_pem: String::new(),
        cert_expires_at_unix_ms: signed.expires_at_unix_ms,
    }
    .encode_to_vec())
}

/// RevokeDevicePairing: a device revokes itself (lost or retired); its connections close.
pub fn revoke(
    store: &EnrollmentStore,
    device: &str,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Vec<u8>, Status> {
    let request: RevokeDevicePairingRequest = decode(bytes)?;
    check_device_request(
        store,
        device,
        now_ms,
        request.v,
        request.device_id.as_ref(),
        request.replay.as_ref(),
    )?;
    let reason = request.reason.trim();
    let reason = if reason.is_empty() {
        "revoked_by_device"
    } else {
        reason
    };
    if reason.len() > palyra_proto::enroll::gateway::MAX_REASON {
        return Err(Status::new(Code::InvalidArgument, "reason is too long"));
    }
    store
        .revoke_device(device, reason)
        .map_err(|e| Status::new(Code::Unavailable, e.to_string()))?;
    Ok(RevokeDevicePairingResponse {
        v: request.v,
        revoked: true,
        reason: "revoked".into(),
    }
    .encode_to_vec())
}

impl EnrollmentStore {
    /// Revokes a device in the trust file (every certificate it holds); the daemon closes its
    /// connections when it reloads the file. Returns whether it was newly revoked.
    pub fn revoke_device(
        &self,
        device_id: &str,
        reason: &str,
    ) -> Result<bool, crate::store::IdentityError> {
        let newly =
            self.authority
                .ids
                .revoke_device(std::time::SystemTime::now(), device_id, reason)?;
        self.refresh_live();
        Ok(newly)
    }

    /// The trust file: every device certificate issued and every revocation.
    pub fn trust(
        &self,
    ) -> Result<palyra_proto::identity::trust::TrustSnapshot, crate::store::IdentityError> {
        self.authority.ids.load_trust()
    }

    /// SHA-256 of the gateway CA's SubjectPublicKeyInfo (what devices pin before pairing).
    pub fn ca_spki_sha256(&self) -> Result<[u8; 32], String> {
        let ca = self
            .authority
            .ids
            .load_ca()
            .map_err(|e| e.to_string())?
            .ok_or("the gateway has no CA yet")?;
        cert::cert_spki_fingerprint(ca.cert_der()).map_err(|e| e.to_string())
    }
}
