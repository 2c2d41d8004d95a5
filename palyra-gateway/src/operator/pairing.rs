//! Pairing and device routes of the admin API (the operator's side of enrollment):
//!
//! | route | answer |
//! |---|---|
//! | `POST /admin/v1/pairing/codes` | `{"method":"pin"\|"qr","ttl_seconds"?}` -> 201 `{"code", "invite"?, "gateway", "ca_fingerprint", ...}` (the code is shown this once) |
//! | `GET /admin/v1/pairing/codes` | active codes (never the codes themselves) |
//! | `DELETE /admin/v1/pairing/codes/{id}` | withdraws a code -> 204 |
//! | `GET /admin/v1/pairing/requests` | pairing requests, newest last |
//! | `POST /admin/v1/pairing/requests/{id}/approve` | `{"replace"?, "reason"?}` -> the request, `approved` (certificate signed) |
//! | `POST /admin/v1/pairing/requests/{id}/reject` | `{"reason"?}` -> the request, `rejected` |
//! | `GET /admin/v1/devices` | paired and revoked devices with their certificates and presence |
//! | `POST /admin/v1/devices/{id}/revoke` | `{"reason"?}` -> `{"revoked", "newly_revoked"}`; the device's connections close within a second |
//! | `POST /admin/v1/devices/{id}/rotate` | asks the device (event `identity.rotate` addressed to it) to rotate its key -> 202 `{"seq"}` |
//!
//! Refusals map the enrollment error classes to statuses: malformed 400, unknown 404, not
//! allowed in the current state 409, a limit 429, storage 503.

use super::admin::{presence, store_failed, Answer, BodyFor, Reply};
use super::{api, OperatorConnection};
use crate::enroll::{Enrolled, EnrollmentStore};
use crate::trust::TrustError;
use http::StatusCode;
use palyra_proto::enroll::codes::DEFAULT_TTL_MS;
use palyra_proto::enroll::device::Invite;
use palyra_proto::enroll::gateway::{EnrollError, ErrorKind, RequestRecord};
use palyra_proto::enroll::Method;
use palyra_proto::identity::trust::TrustSnapshot;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// Name of the event that asks a device to rotate its certificate (addressed to it).
pub use palyra_proto::node::agent::ROTATE_EVENT;

/// What the pairing and device routes work on.
pub struct PairingAdmin {
    /// The daemon's enrollment state.
    pub store: Arc<EnrollmentStore>,
    /// The node TLS address devices dial to pair (`HOST:PORT`), written into invites.
    pub gateway_addr: String,
}

impl std::fmt::Debug for PairingAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingAdmin")
            .field("gateway_addr", &self.gateway_addr)
            .finish_non_exhaustive()
    }
}

impl PairingAdmin {
    /// The routes over `store`; invites name `advertise` when given, else the node TLS
    /// listener's `bound` address (a wildcard address becomes loopback: set `advertise` for
    /// devices on other machines).
    pub fn new(
        store: Arc<EnrollmentStore>,
        advertise: Option<&str>,
        bound: std::net::SocketAddr,
    ) -> Self {
        let gateway_addr = match advertise {
            Some(addr) => addr.to_owned(),
            None if bound.ip().is_unspecified() => {
                let loopback: std::net::IpAddr = if bound.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                tracing::warn!(%bound, "invites name loopback: set [enrollment] advertise_addr for remote devices");
                std::net::SocketAddr::new(loopback, bound.port()).to_string()
            }
            None => bound.to_string(),
        };
        Self {
            store,
            gateway_addr,
        }
    }
}

/// A pairing route that reads a body.
pub(crate) enum PairingBody {
    /// `POST /admin/v1/pairing/codes`.
    Mint,
    /// `POST /admin/v1/pairing/requests/{id}/approve`.
    Approve(String),
    /// `POST /admin/v1/pairing/requests/{id}/reject`.
    Reject(String),
    /// `POST /admin/v1/devices/{id}/revoke`.
    Revoke(String),
}

/// Largest body of a pairing route.
const BODY_LIMIT: u64 = 4096;

type Refusal = (StatusCode, &'static str, String);

fn refusal(e: &EnrollError) -> Refusal {
    let (status, code) = match e.kind() {
        ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::FailedPrecondition | ErrorKind::AlreadyExists => {
            (StatusCode::CONFLICT, "conflict")
        }
        ErrorKind::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "limit_reached"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_failed"),
    };
    (status, code, e.to_string())
}

fn bad(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, "bad_request", message.into())
}

/// A request as listed (the certificate itself is not shown).
pub fn pairing_request(r: &RequestRecord) -> api::PairingRequest {
    api::PairingRequest {
        request_id: r.request_id.clone(),
        device_id: r.device_id.clone(),
        client_kind: r.client_kind.clone(),
        method: r.method,
        state: r.state.as_str().to_owned(),
        reason: r.reason.clone(),
        identity_fingerprint: r.identity_fingerprint.clone(),
        transcript_hash: r.transcript_hash.clone(),
        replaces_device: r.replaces_device,
        requested_at_unix_ms: r.requested_at_unix_ms,
        expires_at_unix_ms: r.expires_at_unix_ms,
        decided_at_unix_ms: r.decided_at_unix_ms,
        delivered_at_unix_ms: r.delivered_at_unix_ms,
        cert_expires_at_unix_ms: (r.cert_expires_at_unix_ms > 0)
            .then_some(r.cert_expires_at_unix_ms),
    }
}

/// Devices of the trust file, each with its certificates, its standing and its presence:
/// `connected` (QUIC connections open now, from `connections`), else the node registry's
/// presence from `last_seen` (`online`, `stale`, `offline`), else `not_registered`.
pub fn devices(
    trust: &TrustSnapshot,
    connections: impl Fn(&str) -> usize,
    last_seen: impl Fn(&str) -> Option<u64>,
    now_ms: u64,
) -> api::Devices {
    let mut ids: Vec<&str> = trust.devices.iter().map(|d| d.device_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let devices = ids
        .into_iter()
        .map(|id| {
            let revoked = trust.revoked.iter().find(|r| r.device_id == id);
            let certificates = trust
                .devices
                .iter()
                .filter(|d| d.device_id == id)
                .map(|d| {
                    let state = if d.revoked_at_unix_ms.is_some() || revoked.is_some() {
                        "revoked"
                    } else if d.expires_at_unix_ms <= now_ms {
                        "expired"
                    } else if d.pending {
                        "pending"
                    } else {
                        "active"
                    };
                    api::DeviceCert {
                        spki_sha256: d.spki_sha256.clone(),
                        issued_at_unix_ms: d.issued_at_unix_ms,
                        expires_at_unix_ms: d.expires_at_unix_ms,
                        state: state.to_owned(),
                    }
                })
                .collect();
            let seen = last_seen(id);
            let open = connections(id);
            let presence = if open > 0 {
                "connected"
            } else {
                seen.map_or("not_registered", |t| presence(t, now_ms))
            };
            api::Device {
                device_id: id.to_owned(),
                state: if revoked.is_some() {
                    "revoked"
                } else {
                    "paired"
                }
                .to_owned(),
                revoked_at_unix_ms: revoked.map(|r| r.revoked_at_unix_ms),
                revocation_reason: revoked.map(|r| r.reason.clone()),
                last_seen_at_unix_ms: seen,
                presence: presence.to_owned(),
                quic_connections: open,
                certificates,
            }
        })
        .collect();
    api::Devices { devices }
}

/// A JSON answer written from one of the shared [`api`] types.
fn typed(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    Reply::Json(status, serde_json::to_value(value).unwrap_or(Value::Null))
}

/// A request body of one of the shared [`api`] types (an empty body is the default).
fn body_of<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))
}

impl OperatorConnection {
    /// `/admin/v1/pairing/...` and `/admin/v1/devices...` (already authenticated).
    pub(crate) fn pairing_route(&mut self, now: Instant, path: &str, method: &http::Method) {
        use http::Method as M;
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let Some(pairing) = &admin.pairing else {
            return self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "this daemon does not enroll devices",
            );
        };
        let store = Arc::clone(&pairing.store);
        let now_ms = (admin.clock)();
        let segments: Vec<&str> = path.trim_start_matches("/admin/v1/").split('/').collect();
        let collect = |purpose| (BodyFor::Pairing(purpose), BODY_LIMIT);
        let body = match (segments.as_slice(), method) {
            (["pairing", "codes"], &M::POST) => Some(collect(PairingBody::Mint)),
            (["pairing", "requests", id, "approve"], &M::POST) => {
                Some(collect(PairingBody::Approve((*id).to_owned())))
            }
            (["pairing", "requests", id, "reject"], &M::POST) => {
                Some(collect(PairingBody::Reject((*id).to_owned())))
            }
            (["devices", id, "revoke"], &M::POST) => {
                Some(collect(PairingBody::Revoke((*id).to_owned())))
            }
            _ => None,
        };
        if let Some((purpose, limit)) = body {
            return self.collect(now, purpose, limit);
        }
        match (segments.as_slice(), method) {
            (["pairing", "codes"], &M::GET) => {
                let listed = store.with(move |machine, _, _| {
                    machine.expire(now_ms);
                    Ok(machine
                        .codes()
                        .iter()
                        .map(|c| {
                            json!({"code_id": c.id, "method": c.method, "issued_by": c.issued_by,
                                   "created_at_unix_ms": c.created_at_unix_ms,
                                   "expires_at_unix_ms": c.expires_at_unix_ms,
                                   "failed_guesses": c.failed_guesses})
                        })
                        .collect::<Vec<_>>())
                });
                self.answer_later(
                    now,
                    enrolled(listed, |c| {
                        Reply::Json(StatusCode::OK, json!({ "codes": c }))
                    }),
                );
            }
            (["pairing", "codes", id], &M::DELETE) => {
                let id = (*id).to_owned();
                let revoked = store.with(move |machine, _, _| Ok(machine.revoke_code(&id)));
                self.answer_later(
                    now,
                    enrolled(revoked, |found| {
                        if found {
                            Reply::Empty(StatusCode::NO_CONTENT)
                        } else {
                            Reply::Error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                "no such active code".into(),
                            )
                        }
                    }),
                );
            }
            (["pairing", "requests"], &M::GET) => {
                let listed = store.with(move |machine, _, _| {
                    machine.expire(now_ms);
                    Ok(machine
                        .requests()
                        .iter()
                        .map(pairing_request)
                        .collect::<Vec<_>>())
                });
                self.answer_later(
                    now,
                    enrolled(listed, |requests| {
                        typed(StatusCode::OK, &api::PairingRequests { requests })
                    }),
                );
            }
            (["devices"], &M::GET) => {
                let trust = store.trust();
                let nodes = admin.hub.nodes();
                let last_seen = |id: &str| {
                    nodes
                        .iter()
                        .find(|n| n.device_id == id)
                        .map(|n| n.last_seen_at_unix_ms)
                };
                let connections = |id: &str| admin.hub.quic_connections(id);
                let listed = devices(&trust, connections, last_seen, now_ms);
                self.json(
                    now,
                    StatusCode::OK,
                    serde_json::to_value(&listed).unwrap_or(Value::Null),
                )
            }
            (["devices", id, "rotate"], &M::POST) => {
                let id = (*id).to_owned();
                if !palyra_proto::identity::is_canonical_device_id(&id) {
                    return self.error(
                        now,
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "device ID must be a canonical ULID",
                    );
                }
                let trust = store.trust();
                let known = trust.devices.iter().any(|d| d.device_id == id)
                    && !trust.revoked.iter().any(|r| r.device_id == id);
                if !known {
                    return self.error(
                        now,
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such paired device",
                    );
                }
                let outcome = self
                    .submit_event(ROTATE_EVENT.into(), json!({"reason": "operator"}), Some(id))
                    .map(|(t, shown)| (t, StatusCode::ACCEPTED, Some(shown)));
                self.await_stored(now, outcome);
            }
            (["pairing", "codes"] | ["pairing", "requests"] | ["devices"], _) => self.not_allowed(
                now,
                if segments == ["pairing", "codes"] {
                    "GET, POST"
                } else {
                    "GET"
                },
            ),
            (["pairing", "codes", _], _) => self.not_allowed(now, "DELETE"),
            (
                ["pairing", "requests", _, "approve" | "reject"]
                | ["devices", _, "revoke" | "rotate"],
                _,
            ) => self.not_allowed(now, "POST"),
            _ => self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such pairing route",
            ),
        }
    }

    /// A pairing route's body arrived.
    pub(crate) fn pairing_body(&mut self, now: Instant, what: PairingBody, body: &[u8]) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let Some(pairing) = &admin.pairing else {
            return;
        };
        let store = Arc::clone(&pairing.store);
        let gateway_addr = pairing.gateway_addr.clone();
        let now_ms = (admin.clock)();
        let answer: Result<Answer, Refusal> = match what {
            PairingBody::Mint => {
                body_of(body).and_then(|request| mint(&store, &gateway_addr, now_ms, request))
            }
            PairingBody::Approve(id) => body_of::<api::Approve>(body).map(|request| {
                let approved = store.with(move |machine, authority, _| {
                    let reason = request.reason.as_deref();
                    machine.approve(authority, now_ms, &id, request.replace, reason)
                });
                enrolled(approved, |r| {
                    let request = pairing_request(&r);
                    typed(StatusCode::OK, &api::Decided { request })
                })
            }),
            PairingBody::Reject(id) => body_of::<api::Reject>(body).map(|request| {
                let rejected = store.with(move |machine, _, _| {
                    machine.reject(now_ms, &id, request.reason.as_deref())
                });
                enrolled(rejected, |r| {
                    let request = pairing_request(&r);
                    typed(StatusCode::OK, &api::Decided { request })
                })
            }),
            PairingBody::Revoke(id) => body_of::<api::RevokeDevice>(body).and_then(|request| {
                let reason = request.reason.as_deref().unwrap_or("revoked_by_operator");
                if reason.len() > palyra_proto::enroll::gateway::MAX_REASON {
                    return Err(bad("reason is too long"));
                }
                if !palyra_proto::identity::is_canonical_device_id(&id) {
                    return Err(bad("device ID must be a canonical ULID"));
                }
                let revoked = store.revoke_device(&id, reason);
                Ok(Box::new(move || {
                    Some(match revoked.take()? {
                        Ok(newly_revoked) => typed(
                            StatusCode::OK,
                            &api::Revoked {
                                device_id: id.clone(),
                                revoked: true,
                                newly_revoked,
                            },
                        ),
                        Err(TrustError::UnknownDevice(_)) => Reply::Error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            format!("device {id} was never paired"),
                        ),
                        Err(TrustError::Store(e)) => store_failed(&e),
                        Err(e) => {
                            Reply::Error(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
                        }
                    })
                }) as Answer)
            }),
        };
        match answer {
            Ok(answer) => self.answer_later(now, answer),
            Err((status, code, message)) => self.error(now, status, code, &message),
        }
    }
}

/// The answer to an enrollment operation once durable: `reply` of its result, or the refusal.
fn enrolled<T: Send + 'static>(
    pending: Enrolled<T>,
    mut reply: impl FnMut(T) -> Reply + Send + 'static,
) -> Answer {
    Box::new(move || {
        Some(match pending.take()? {
            Ok(value) => reply(value),
            Err(e) => {
                let (status, code, message) = refusal(&e);
                Reply::Error(status, code, message)
            }
        })
    })
}

/// Mints a code; the answer carries the code once, with what the device needs to trust the
/// gateway before it sends it.
fn mint(
    store: &EnrollmentStore,
    gateway_addr: &str,
    now_ms: u64,
    request: api::MintCode,
) -> Result<Answer, Refusal> {
    let method = request
        .method
        .ok_or_else(|| bad("method must be \"pin\" or \"qr\""))?;
    let ttl_ms = match request.ttl_seconds {
        None => DEFAULT_TTL_MS,
        Some(seconds) => seconds
            .checked_mul(1000)
            .ok_or_else(|| bad("ttl_seconds is out of range"))?,
    };
    let ca = store
        .ca_spki_sha256()
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, "store_failed", e))?;
    let minted =
        store.with(move |machine, _, random| machine.mint(now_ms, method, ttl_ms, "admin", random));
    let gateway_addr = gateway_addr.to_owned();
    Ok(enrolled(minted, move |(record, code)| {
        let invite = (method == Method::Qr).then(|| {
            Invite {
                addr: gateway_addr.clone(),
                ca_spki_sha256: ca,
                code: code.clone(),
            }
            .to_string()
        });
        typed(
            StatusCode::CREATED,
            &api::MintedCode {
                code_id: record.id,
                method,
                code,
                invite,
                gateway: gateway_addr.clone(),
                ca_fingerprint: format!("sha256:{}", hex::encode(ca)),
                expires_at_unix_ms: record.expires_at_unix_ms,
            },
        )
    }))
}
