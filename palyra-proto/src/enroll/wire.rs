//! The pairing messages of `palyra.node.v1.NodeService` and the gateway machine's types: the
//! conversions both sides of the wire use, and the gRPC status of each enrollment error.

use super::gateway::{Begun, EnrollError, ErrorKind};
use super::v1::Hello;
use crate::grpc::codec::{Code, Status};
use crate::pb::palyra::node::v1::{BeginPairingSessionResponse, CompletePairingSessionRequest};

/// The gRPC status for an enrollment error.
pub fn status_of(e: &EnrollError) -> Status {
    let code = match e.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Unavailable => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

/// A fixed-size field of a pairing message, or INVALID_ARGUMENT naming it.
pub fn bytes32<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N], Status> {
    bytes.try_into().map_err(|_| {
        Status::new(
            Code::InvalidArgument,
            format!("{field} must be {N} bytes (got {})", bytes.len()),
        )
    })
}

/// The BeginPairingSession answer for a begun session.
pub fn offer_response(v: u32, begun: &Begun) -> BeginPairingSessionResponse {
    BeginPairingSessionResponse {
        v,
        session_id: begun.offer.session_id.clone(),
        client_kind: begun.client_kind.into(),
        gateway_ephemeral_public: begun.offer.gateway_ephemeral_public.to_vec(),
        challenge: begun.offer.challenge.to_vec(),
        expires_at_unix_ms: begun.expires_at_unix_ms,
    }
}

/// The machine's [`Hello`] from a CompletePairingSession request (identifiers trimmed, the
/// client kind normalized; fixed-size fields of another size are INVALID_ARGUMENT).
pub fn hello_of(request: &CompletePairingSessionRequest) -> Result<Hello, Status> {
    Ok(Hello {
        version: request.v,
        session_id: request.session_id.trim().to_owned(),
        device_id: request
            .device_id
            .as_ref()
            .map(|d| d.ulid.clone())
            .unwrap_or_default(),
        client_kind: super::client_kind(&request.client_kind)
            .unwrap_or("")
            .to_owned(),
        proof: request.proof.trim().to_owned(),
        device_signing_public: bytes32("device_signing_public", &request.device_signing_public)?,
        device_x25519_public: bytes32("device_x25519_public", &request.device_x25519_public)?,
        challenge_signature: bytes32("challenge_signature", &request.challenge_signature)?,
        transcript_mac: bytes32("transcript_mac", &request.transcript_mac)?,
    })
}
