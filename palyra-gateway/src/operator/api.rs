//! The admin API's pairing and device routes as types, shared by the server (which parses the
//! requests and writes the answers with them) and the CLI's operator client (which sends and
//! reads them): a field renamed on one side is renamed on the other.
//!
//! Each request type is an [`Endpoint`]: its method, its path and its answer type.

use http::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One admin API call: the request body is the value itself (fields marked `skip` go in the
/// path).
pub trait Endpoint: Serialize {
    /// The answer's type.
    type Response: DeserializeOwned + Serialize;
    /// The HTTP method.
    const METHOD: Method;
    /// Whether the call carries a JSON body.
    const HAS_BODY: bool = true;
    /// The path (IDs already checked to be one segment).
    fn path(&self) -> String;
}

/// A pairing method on the wire: `pin` or `qr`.
pub use palyra_proto::enroll::Method as CodeMethod;

/// `POST /admin/v1/pairing/codes`: mints a single-use pairing code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintCode {
    /// `pin` (six digits, typed on the node) or `qr` (an invite URL).
    pub method: Option<CodeMethod>,
    /// Lifetime in seconds (default 10 minutes).
    pub ttl_seconds: Option<u64>,
}

/// The minted code (shown this once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedCode {
    /// The code's ID (for revoking it).
    pub code_id: String,
    /// `pin` or `qr`.
    pub method: CodeMethod,
    /// The code itself.
    pub code: String,
    /// The invite URL (QR codes).
    pub invite: Option<String>,
    /// The address devices dial.
    pub gateway: String,
    /// `sha256:` and the gateway CA's SPKI fingerprint (what a PIN pairing pins).
    pub ca_fingerprint: String,
    /// When the code expires (Unix ms).
    pub expires_at_unix_ms: u64,
}

impl Endpoint for MintCode {
    type Response = MintedCode;
    const METHOD: Method = Method::POST;
    fn path(&self) -> String {
        "/admin/v1/pairing/codes".into()
    }
}

/// `GET /admin/v1/pairing/requests`: every pairing request the gateway holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListRequests;

/// A pairing request as listed (the certificate itself is not shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRequest {
    /// Request ID (what an operator approves).
    pub request_id: String,
    /// The device asking.
    pub device_id: String,
    /// `node`, `cli` or `desktop`.
    pub client_kind: String,
    /// How it paired (`pin` or `qr`).
    pub method: CodeMethod,
    /// `pending_approval`, `approved`, `rejected`, `expired`, ...
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
    /// Fingerprint of the device's identity key.
    pub identity_fingerprint: String,
    /// Hash of the pairing transcript (compare with the device's).
    pub transcript_hash: String,
    /// Approving it replaces a paired device with the same ID.
    pub replaces_device: bool,
    /// When it was made (Unix ms).
    pub requested_at_unix_ms: u64,
    /// When it expires (Unix ms).
    pub expires_at_unix_ms: u64,
    /// When it was decided (Unix ms).
    pub decided_at_unix_ms: Option<u64>,
    /// When the device fetched its certificate (Unix ms).
    pub delivered_at_unix_ms: Option<u64>,
    /// When the issued certificate expires (Unix ms).
    pub cert_expires_at_unix_ms: Option<u64>,
}

/// The pairing requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRequests {
    /// Requests, oldest first.
    pub requests: Vec<PairingRequest>,
}

impl Endpoint for ListRequests {
    type Response = PairingRequests;
    const METHOD: Method = Method::GET;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        "/admin/v1/pairing/requests".into()
    }
}

/// `POST /admin/v1/pairing/requests/{id}/approve`: issues the device its certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The request.
    #[serde(skip)]
    pub request_id: String,
    /// Replace a paired device with the same ID.
    #[serde(default)]
    pub replace: bool,
    /// Recorded with the decision.
    pub reason: Option<String>,
}

/// `POST /admin/v1/pairing/requests/{id}/reject`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// The request.
    #[serde(skip)]
    pub request_id: String,
    /// Recorded with the decision.
    pub reason: Option<String>,
}

/// A decided request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The request after the decision.
    pub request: PairingRequest,
}

impl Endpoint for Approve {
    type Response = Decided;
    const METHOD: Method = Method::POST;
    fn path(&self) -> String {
        format!("/admin/v1/pairing/requests/{}/approve", self.request_id)
    }
}

impl Endpoint for Reject {
    type Response = Decided;
    const METHOD: Method = Method::POST;
    fn path(&self) -> String {
        format!("/admin/v1/pairing/requests/{}/reject", self.request_id)
    }
}

/// `GET /admin/v1/devices`: the devices of the trust file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListDevices;

/// One certificate of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCert {
    /// SHA-256 of its SubjectPublicKeyInfo (hex).
    pub spki_sha256: String,
    /// When it was issued (Unix ms).
    pub issued_at_unix_ms: u64,
    /// When it expires (Unix ms).
    pub expires_at_unix_ms: u64,
    /// `active`, `pending` (a rotation not used yet), `expired` or `revoked`.
    pub state: String,
}

/// A device, its standing and its presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Device ID.
    pub device_id: String,
    /// `paired` or `revoked`.
    pub state: String,
    /// When it was revoked (Unix ms).
    pub revoked_at_unix_ms: Option<u64>,
    /// Why.
    pub revocation_reason: Option<String>,
    /// Its last check-in (Unix ms).
    pub last_seen_at_unix_ms: Option<u64>,
    /// `connected`, `online`, `stale`, `offline` or `not_registered`.
    pub presence: String,
    /// QUIC connections open now.
    pub quic_connections: usize,
    /// Its certificates.
    pub certificates: Vec<DeviceCert>,
}

impl Device {
    /// When its newest active certificate expires (Unix ms).
    pub fn active_until(&self) -> Option<u64> {
        self.certificates
            .iter()
            .filter(|c| c.state == "active")
            .map(|c| c.expires_at_unix_ms)
            .max()
    }
}

/// The devices, by ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    /// Devices.
    pub devices: Vec<Device>,
}

impl Endpoint for ListDevices {
    type Response = Devices;
    const METHOD: Method = Method::GET;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        "/admin/v1/devices".into()
    }
}

/// `POST /admin/v1/devices/{id}/revoke`: revokes every certificate of the device at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeDevice {
    /// The device.
    #[serde(skip)]
    pub device_id: String,
    /// Recorded in the trust file (default `revoked_by_operator`).
    pub reason: Option<String>,
}

/// A revocation's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The device.
    pub device_id: String,
    /// It is revoked now.
    pub revoked: bool,
    /// It was not revoked before.
    pub newly_revoked: bool,
}

impl Endpoint for RevokeDevice {
    type Response = Revoked;
    const METHOD: Method = Method::POST;
    fn path(&self) -> String {
        format!("/admin/v1/devices/{}/revoke", self.device_id)
    }
}

/// `POST /admin/v1/devices/{id}/rotate`: publishes `identity.rotate` to the device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RotateDevice {
    /// The device.
    #[serde(skip)]
    pub device_id: String,
}

/// An event stored in the node-plane log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Its seq.
    pub seq: u64,
}

impl Endpoint for RotateDevice {
    type Response = Stored;
    const METHOD: Method = Method::POST;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        format!("/admin/v1/devices/{}/rotate", self.device_id)
    }
}

/// `POST /admin/v1/tokens`: mints an API token (shown once in the answer).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// Whom it proves (`kind:name`, e.g. `user:alice`).
    pub principal: String,
    /// What it may do (`runs:write`, `sessions:read`, ...).
    pub scopes: Vec<String>,
    /// A label for people.
    #[serde(default)]
    pub label: String,
    /// Lifetime in seconds (none: no expiry).
    pub ttl_seconds: Option<u64>,
}

/// A token as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Its ID.
    pub token_id: String,
    /// Whom it proves.
    pub principal: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Its label.
    pub label: String,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// When it was minted.
    pub created_at_unix_ms: u64,
    /// When it expires.
    pub expires_at_unix_ms: Option<u64>,
    /// When it was revoked.
    pub revoked_at_unix_ms: Option<u64>,
}

/// A minted token: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedToken {
    /// The bearer token.
    pub token: String,
    /// Its record.
    #[serde(flatten)]
    pub record: Token,
}

impl Endpoint for MintToken {
    type Response = MintedToken;
    const METHOD: Method = Method::POST;
    fn path(&self) -> String {
        "/admin/v1/tokens".into()
    }
}

/// `GET /admin/v1/tokens`: every token, without secrets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListTokens;

/// The tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tokens {
    /// Oldest first.
    pub tokens: Vec<Token>,
}

impl Endpoint for ListTokens {
    type Response = Tokens;
    const METHOD: Method = Method::GET;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        "/admin/v1/tokens".into()
    }
}

/// `GET /admin/v1/tokens/usage`: provider tokens used through the OpenAI-compatible API, per
/// API key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenUsage;

/// One key's usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyUsage {
    /// The API token.
    pub token_id: String,
    /// Whom it proves (empty for a token since removed).
    pub principal: String,
    /// Its label.
    pub label: String,
    /// Completions that ended.
    pub runs: u64,
    /// Prompt tokens, as the provider counted them.
    pub prompt_tokens: u64,
    /// Completion tokens, as the provider counted them.
    pub completion_tokens: u64,
}

/// Usage per key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    /// Keys with any use, by token ID.
    pub usage: Vec<KeyUsage>,
}

impl Endpoint for TokenUsage {
    type Response = Usage;
    const METHOD: Method = Method::GET;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        "/admin/v1/tokens/usage".into()
    }
}

/// `POST /admin/v1/tokens/{id}/revoke`: the token stops working at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevokeToken {
    /// The token.
    #[serde(skip)]
    pub token_id: String,
}

/// A token revocation's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedToken {
    /// The token.
    pub token_id: String,
    /// It was not revoked before.
    pub newly_revoked: bool,
}

impl Endpoint for RevokeToken {
    type Response = RevokedToken;
    const METHOD: Method = Method::POST;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        format!("/admin/v1/tokens/{}/revoke", self.token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_fields_stay_out_of_the_body() {
        let approve = Approve {
            request_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            replace: true,
            reason: None,
        };
        assert_eq!(
            serde_json::to_value(&approve).unwrap(),
            serde_json::json!({"replace": true, "reason": null})
        );
        assert_eq!(
            approve.path(),
            "/admin/v1/pairing/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV/approve"
        );
        let mint: MintCode = serde_json::from_str(r#"{"method":"qr"}"#).unwrap();
        assert_eq!(mint.method, Some(CodeMethod::Qr));
        assert!(serde_json::from_str::<MintCode>(r#"{"method":"sms"}"#).is_err());
        assert!(serde_json::from_str::<MintCode>(r#"{"ttl":5}"#).is_err());
    }
}

/// `POST /admin/v1/runs/{id}/approve` or `/deny`: the operator's answer to the approval a run
/// waits for (409 when it waits for none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecideApproval {
    /// The run.
    #[serde(skip)]
    pub run_id: String,
    /// Approve (or deny).
    #[serde(skip)]
    pub approve: bool,
}

/// The answer given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalDecided {
    /// The run.
    pub run_id: String,
    /// The tool call's proposal.
    pub proposal_id: String,
    /// The tool.
    pub tool: String,
    /// Whether it was approved.
    pub approved: bool,
}

impl Endpoint for DecideApproval {
    type Response = ApprovalDecided;
    const METHOD: Method = Method::POST;
    const HAS_BODY: bool = false;
    fn path(&self) -> String {
        let verb = if self.approve { "approve" } else { "deny" };
        format!("/admin/v1/runs/{}/{verb}", self.run_id)
    }
}
