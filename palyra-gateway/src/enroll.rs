//! Enrollment in the daemon: the [`Enrollment`] machine kept as the document
//! `enroll/state.json` (0600; every change durable before its answer), the CA (in memory) and the
//! live trust index as its [`Authority`], the trust changes pairing implies (applied through the
//! [`TrustService`] once the state is durable), and the pairing RPCs of
//! `palyra.node.v1.NodeService`.
//!
//! Begin, Complete and GetPairingRequestStatus need no client certificate (a device has none
//! yet); RotateDeviceCertificate and RevokeDevicePairing need the certificate of the paired
//! device they name. Each RPC is answered once what it changed is durable.

use crate::grpc::Answer;
use crate::notify::Notifier;
use crate::store::{pending, DocStore, Document, Pending, StoreError};
use crate::trust::{change_of, Applied, TrustChange, TrustError, TrustService};
use crate::util::RandomFill;
use palyra_proto::enroll::gateway::{
    Authority, Begin, EnrollError, EnrollState, Enrollment, GatewayConfig, SignError, SignedCert,
    Standing,
};
use palyra_proto::enroll::wire::{bytes32, hello_of, offer_response, status_of};
use palyra_proto::enroll::Method;
use palyra_proto::grpc::codec::{Code, Status};
use palyra_proto::grpc::service::decode;
use palyra_proto::identity::cert::{self, CertAuthority, Profile};
use palyra_proto::identity::trust::{DeviceStanding, TrustIndex, TrustSnapshot};
use palyra_proto::pb::palyra::node::v1::{
    pairing_method, BeginPairingSessionRequest, CompletePairingSessionRequest,
    CompletePairingSessionResponse, GetPairingRequestStatusRequest,
    GetPairingRequestStatusResponse, RevokeDevicePairingRequest, RevokeDevicePairingResponse,
    RotateDeviceCertificateRequest, RotateDeviceCertificateResponse,
};
use palyra_proto::transport::PeerIdentity;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// The enrollment state's document.
pub const STATE_KEY: &str = "enroll/state.json";

/// An enrollment operation's answer, once durable.
pub type Enrolled<T> = Pending<Result<T, EnrollError>>;

/// The enrollment state of a daemon, durable.
pub struct EnrollmentStore {
    doc: Arc<Document<Enrollment>>,
    authority: Arc<MemoryAuthority>,
    trust: Arc<TrustService>,
    wake: Arc<Notifier>,
}

/// The CA (loaded at start) and the live trust index as the machine's [`Authority`]: no disk
/// is touched while an operation holds the machine.
struct MemoryAuthority {
    ca: CertAuthority,
    ca_pem: String,
    trust: Arc<TrustIndex>,
    random: RandomFill,
}

impl Authority for MemoryAuthority {
    fn standing(&self, device_id: &str) -> Standing {
        match self.trust.device_standing(device_id) {
            DeviceStanding::Paired => Standing::Paired,
            DeviceStanding::Revoked => Standing::Revoked,
            DeviceStanding::Unknown => Standing::Unknown,
        }
    }

    fn sign(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
        validity_ms: u64,
    ) -> Result<SignedCert, SignError> {
        if self.trust.device_standing(device_id) == DeviceStanding::Revoked {
            return Err(SignError::Revoked(device_id.to_owned()));
        }
        let issued = self.ca.issue(
            &mut crate::util::random::rng(&self.random),
            &Profile::Device { device_id },
            cert::spki_of_public(public_key)?,
            palyra_proto::time::from_unix_ms(now_ms),
            Duration::from_millis(validity_ms),
        )?;
        Ok(SignedCert {
            pem: issued.pem,
            ca_pem: self.ca_pem.clone(),
            expires_at_unix_ms: palyra_proto::time::unix_ms(issued.not_after),
        })
    }
}

/// The trust changes of `effects` (logged and skipped when one cannot be read).
fn changes_of(effects: &[palyra_proto::enroll::gateway::Effect]) -> Vec<TrustChange> {
    effects
        .iter()
        .filter_map(|effect| match change_of(effect) {
            Ok(change) => Some(change),
            Err(e) => {
                tracing::warn!(error = %e, ?effect, "trust change not applied");
                None
            }
        })
        .collect()
}

impl EnrollmentStore {
    /// Opens the enrollment state in `docs` over the gateway CA `ca` and the trust records of
    /// `trust`, and re-applies the trust records of completed pairings (idempotent: mends a crash
    /// between the two writes). Answers wake `wake`.
    pub fn open(
        docs: Arc<dyn DocStore>,
        config: GatewayConfig,
        ca: CertAuthority,
        trust: Arc<TrustService>,
        random: RandomFill,
        wake: Arc<Notifier>,
    ) -> Result<Arc<Self>, StoreError> {
        let doc = Document::open(
            docs,
            STATE_KEY,
            move |bytes| {
                let state: EnrollState = match bytes {
                    Some(bytes) => serde_json::from_slice(bytes)
                        .map_err(|e| StoreError::Corrupt(format!("{STATE_KEY}: {e}")))?,
                    None => EnrollState::default(),
                };
                Ok(Enrollment::new(config, state))
            },
            |machine: &Enrollment| serde_json::to_vec_pretty(&machine.state()).unwrap_or_default(),
            Some(Arc::clone(&wake)),
        )?;
        let ca_pem = ca
            .cert_pem()
            .map_err(|e| StoreError::Corrupt(format!("gateway CA: {e}")))?;
        let store = Arc::new(Self {
            doc,
            authority: Arc::new(MemoryAuthority {
                ca,
                ca_pem,
                trust: Arc::clone(trust.index()),
                random,
            }),
            trust,
            wake,
        });
        let recovery = changes_of(&store.doc.read(Enrollment::recovery_effects));
        if !recovery.is_empty() {
            let (applied, done) = pending(None);
            store
                .trust
                .apply(recovery, Box::new(move |r| done.complete(r)));
            if let Some(Ok(results)) = applied.wait_blocking(Duration::from_secs(60)) {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %e, "trust record of a completed pairing not applied");
                }
            }
        }
        Ok(store)
    }

    /// Runs `op` on the machine; whatever it changed (refusals too: a burned session) is made
    /// durable, then its trust changes are applied, and then the result is answered. If the state
    /// cannot be written, the change is rolled back and the answer is `Unsaved`.
    pub fn with<T: Send + 'static>(
        &self,
        op: impl FnOnce(
                &mut Enrollment,
                &dyn Authority,
                &mut dyn rand_core::CryptoRngCore,
            ) -> Result<T, EnrollError>
            + Send
            + 'static,
    ) -> Enrolled<T> {
        let (answer, done) = pending(Some(Arc::clone(&self.wake)));
        let authority = Arc::clone(&self.authority);
        let trust = Arc::clone(&self.trust);
        self.doc.update_then(
            move |machine| {
                let random = Arc::clone(&authority.random);
                let result = op(
                    machine,
                    authority.as_ref(),
                    &mut crate::util::random::rng(&random),
                );
                let effects: Vec<_> = std::iter::from_fn(|| machine.poll_event()).collect();
                (result, effects)
            },
            move |written| match written {
                Ok((result, effects)) => {
                    let changes = changes_of(&effects);
                    if changes.is_empty() {
                        return done.complete(result);
                    }
                    trust.apply(
                        changes,
                        Box::new(move |applied| {
                            let failures: Vec<String> = match applied {
                                Ok(results) => results
                                    .into_iter()
                                    .filter_map(Result::err)
                                    .map(|e| e.to_string())
                                    .collect(),
                                Err(e) => vec![e.to_string()],
                            };
                            for e in failures {
                                tracing::warn!(error = %e, "trust change not applied");
                            }
                            done.complete(result)
                        }),
                    );
                }
                Err(e) => done.complete(Err(EnrollError::Unsaved(e.to_string()))),
            },
        );
        answer
    }

    /// Reads the durable machine.
    pub fn read<R>(&self, f: impl FnOnce(&Enrollment) -> R) -> R {
        self.doc.read(f)
    }

    /// Revokes a device (every certificate it holds); answered once the trust file and the live
    /// index say so (its connections close then). `Ok(false)`: it was revoked already.
    pub fn revoke_device(
        &self,
        device_id: &str,
        reason: &str,
    ) -> Pending<Result<bool, TrustError>> {
        let (answer, done) = pending(Some(Arc::clone(&self.wake)));
        let change = TrustChange::Revoke {
            device_id: device_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.trust.apply(
            vec![change],
            Box::new(move |applied| {
                let result = match applied {
                    Ok(mut results) => results
                        .pop()
                        .unwrap_or(Err(TrustError::Store(StoreError::Closed)))
                        .map(|a| a == Applied::Changed),
                    Err(e) => Err(TrustError::Store(e)),
                };
                done.complete(result)
            }),
        );
        answer
    }

    /// The trust records: every device certificate issued and every revocation.
    pub fn trust(&self) -> Arc<TrustSnapshot> {
        self.trust.snapshot()
    }

    /// SHA-256 of the gateway CA's SubjectPublicKeyInfo (what devices pin before pairing).
    pub fn ca_spki_sha256(&self) -> Result<[u8; 32], String> {
        self.authority.ca.fingerprint().map_err(|e| e.to_string())
    }
}

/// An answer that polls `pending` and encodes the response with `encode`.
fn answer_when<T: Send + 'static>(
    pending: Enrolled<T>,
    mut encode: impl FnMut(T) -> Vec<u8> + Send + 'static,
) -> Answer {
    Box::new(move || Some(pending.take()?.map(&mut encode).map_err(|e| status_of(&e))))
}

/// BeginPairingSession.
pub fn begin(
    store: &EnrollmentStore,
    peer: &PeerIdentity,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Answer, Status> {
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
        .map(|r| (r.nonce.clone(), r.timestamp_unix_ms));
    let source = peer.remote.map(|a| a.ip());
    let (v, client_kind) = (request.v, request.client_kind);
    let begun = store.with(move |machine, _, random| {
        machine.begin(
            now_ms,
            source,
            &Begin {
                version: v,
                client_kind: &client_kind,
                method,
                code: code.trim(),
                replay: replay.as_ref().map(|(n, t)| (n.as_str(), *t)),
            },
            random,
        )
    });
    Ok(answer_when(begun, move |begun| {
        offer_response(v, &begun).encode_to_vec()
    }))
}

/// CompletePairingSession.
pub fn complete(store: &EnrollmentStore, now_ms: u64, bytes: &[u8]) -> Result<Answer, Status> {
    let request: CompletePairingSessionRequest = decode(bytes)?;
    let hello = hello_of(&request)?;
    let record =
        store.with(move |machine, authority, _| machine.complete(authority, now_ms, &hello));
    let v = request.v;
    Ok(answer_when(record, move |record| {
        CompletePairingSessionResponse {
            v,
            paired: false,
            reason: record.state.as_str().into(),
            identity_fingerprint: record.identity_fingerprint,
            transcript_hash: record.transcript_hash,
            ..Default::default()
        }
        .encode_to_vec()
    }))
}

/// GetPairingRequestStatus: the certificate is in the answer once the request is approved (and
/// again on later polls while it is valid).
pub fn status(store: &EnrollmentStore, now_ms: u64, bytes: &[u8]) -> Result<Answer, Status> {
    let request: GetPairingRequestStatusRequest = decode(bytes)?;
    let device_id = request.device_id.map(|d| d.ulid).unwrap_or_default();
    let session_id = request.session_id.trim().to_owned();
    let status = store.with(move |machine, authority, _| {
        machine.status(authority, now_ms, &session_id, &device_id)
    });
    let v = request.v;
    Ok(answer_when(status, move |status| {
        let r = status.request;
        let (cert, ca, expires) = status
            .delivered
            .map(|d| (d.pem, d.ca_pem, d.expires_at_unix_ms))
            .unwrap_or_default();
        GetPairingRequestStatusResponse {
            v,
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
        .encode_to_vec()
    }))
}

/// Checks a certificate-bound request's version and that it names the authenticated `device`.
fn check_device_request(
    device: &str,
    v: u32,
    device_id: Option<&palyra_proto::pb::palyra::common::v1::CanonicalId>,
) -> Result<(), Status> {
    crate::grpc::check_version(v)?;
    crate::grpc::bind_device(device, device_id)
}

/// The request's replay protection, consumed in the same durable change as the request itself.
fn replay_of(
    replay: Option<&palyra_proto::pb::palyra::common::v1::ReplayProtection>,
) -> Option<(String, i64)> {
    replay.map(|r| (r.nonce.clone(), r.timestamp_unix_ms))
}

/// RotateDeviceCertificate, for the authenticated device `device`.
pub fn rotate(
    store: &EnrollmentStore,
    device: &str,
    peer: &PeerIdentity,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Answer, Status> {
    let request: RotateDeviceCertificateRequest = decode(bytes)?;
    check_device_request(device, request.v, request.device_id.as_ref())?;
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
    let replay = replay_of(request.replay.as_ref());
    let device = device.to_owned();
    let signed = store.with(move |machine, authority, _| {
        if let Some((nonce, timestamp)) = &replay {
            machine.check_replay(now_ms, nonce, *timestamp)?;
        }
        machine.rotate(
            authority,
            now_ms,
            &device,
            (&current, &spki),
            new_key.as_ref().map(|(k, s)| (k, s)),
        )
    });
    let v = request.v;
    Ok(answer_when(signed, move |signed| {
        RotateDeviceCertificateResponse {
            v,
            rotated: true,
            reason: "rotated".into(),
            mtls_client_certificate_pem: signed.pem,
            mtls_client_private_key_pem: String::new(),
            cert_expires_at_unix_ms: signed.expires_at_unix_ms,
        }
        .encode_to_vec()
    }))
}

/// RevokeDevicePairing: a device revokes itself (lost or retired); its connections close.
pub fn revoke(
    store: &Arc<EnrollmentStore>,
    device: &str,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Answer, Status> {
    let request: RevokeDevicePairingRequest = decode(bytes)?;
    check_device_request(device, request.v, request.device_id.as_ref())?;
    let reason = request.reason.trim();
    let reason = if reason.is_empty() {
        "revoked_by_device"
    } else {
        reason
    }
    .to_owned();
    if reason.len() > palyra_proto::enroll::gateway::MAX_REASON {
        return Err(Status::new(Code::InvalidArgument, "reason is too long"));
    }
    // The replay protection is consumed (durably) first, then the device is revoked.
    let replay = replay_of(request.replay.as_ref());
    let checked = store.with(move |machine, _, _| match &replay {
        Some((nonce, timestamp)) => machine.check_replay(now_ms, nonce, *timestamp),
        None => Ok(()),
    });
    let (store, device) = (Arc::clone(store), device.to_owned());
    let mut revoking: Option<Pending<Result<bool, TrustError>>> = None;
    let v = request.v;
    Ok(Box::new(move || {
        if revoking.is_none() {
            match checked.take()? {
                Ok(()) => revoking = Some(store.revoke_device(&device, &reason)),
                Err(e) => return Some(Err(status_of(&e))),
            }
        }
        let revoked = revoking.as_ref()?.take()?;
        Some(
            revoked
                .map(|_| {
                    RevokeDevicePairingResponse {
                        v,
                        revoked: true,
                        reason: "revoked".into(),
                    }
                    .encode_to_vec()
                })
                .map_err(|e| Status::new(Code::Unavailable, e.to_string())),
        )
    }))
}
