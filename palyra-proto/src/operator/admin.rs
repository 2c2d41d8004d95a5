//! The admin API (`/admin/v1/...`, `Authorization: Bearer <admin token>`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/v1/status` | daemon version, uptime, node counts by presence |
//! | `GET /admin/v1/nodes` | node inventory: registration, capabilities, `online` / `stale` / `offline` |
//! | `POST /admin/v1/events` | `{"name","payload","to"?}` into the node-plane event log; 201 `{"seq"}` once durable |
//!
//! 401 `unauthorized` for a missing or wrong token (with `WWW-Authenticate: Bearer`), 429
//! `rate_limited` with `Retry-After` after repeated failures from one address, 413 for a body
//! over 64 KiB, 400 for malformed JSON.

use super::auth::Denied;
use super::webhook::{Integration, WebhookError};
use super::{api_headers, OperatorConnection, DEFAULT_BODY_LIMIT};
use crate::http1::server::RequestHead;
use crate::node::message::{validate_event_name, EventBody};
use crate::store::NewEvent;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::time::Instant;

/// A node is `online` when seen within this many milliseconds.
pub const ONLINE_MS: u64 = 15_000;
/// ... and `stale` (not `offline`) within this many.
pub const STALE_MS: u64 = 60_000;

/// What a collected body is for.
pub(crate) enum BodyFor {
    /// `POST /admin/v1/events`.
    Event,
    /// `POST /admin/v1/integrations`.
    Integration,
    /// `POST /webhooks/v1/{name}`, with the signature headers.
    Webhook {
        integration: Box<Integration>,
        signature: Option<Bytes>,
        timestamp: Option<Bytes>,
        nonce: Option<Bytes>,
    },
}

/// A request served over several events.
pub(crate) enum Pending {
    /// Collecting a request body.
    Body(BodyFor, BytesMut),
    /// Waiting for the event log to make an event durable; answered with this status.
    Stored(u64, StatusCode),
}

/// Presence of a node last seen at `last_seen` (Unix ms), at `now_ms`.
pub fn presence(last_seen: u64, now_ms: u64) -> &'static str {
    let age = now_ms.saturating_sub(last_seen);
    if age <= ONLINE_MS {
        "online"
    } else if age <= STALE_MS {
        "stale"
    } else {
        "offline"
    }
}

impl OperatorConnection {
    fn json(&mut self, now: Instant, status: StatusCode, body: Value) {
        self.respond(now, status, &api_headers(), Bytes::from(body.to_string()));
    }

    pub(crate) fn admin_route(&mut self, now: Instant, head: &RequestHead) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let auth = admin.auth.check(
            head.headers
                .get(http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            self.peer.map(|p| p.ip()),
            now,
        );
        match auth {
            Ok(()) => {}
            Err(Denied::Unauthorized) => {
                let mut headers = api_headers();
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                let body = crate::http1::error_body("unauthorized", "missing or wrong admin token");
                return self.respond(now, StatusCode::UNAUTHORIZED, &headers, body);
            }
            Err(Denied::RateLimited(wait)) => {
                let mut headers = api_headers();
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
                let body = crate::http1::error_body(
                    "rate_limited",
                    "too many failed attempts from this address; retry later",
                );
                return self.respond(now, StatusCode::TOO_MANY_REQUESTS, &headers, body);
            }
        }
        let hub = std::sync::Arc::clone(&admin.hub);
        let now_ms = (admin.clock)();
        match (head.uri.path(), &head.method) {
            ("/admin/v1/status", &Method::GET) => {
                let nodes = hub.nodes();
                let count = |state: &str| {
                    nodes
                        .iter()
                        .filter(|n| presence(n.last_seen_at_unix_ms, now_ms) == state)
                        .count()
                };
                let body = json!({
                    "service": "palyrad",
                    "version": self.operator.version,
                    "uptime_seconds": now.saturating_duration_since(self.operator.started).as_secs(),
                    "nodes": {
                        "registered": nodes.len(),
                        "online": count("online"),
                        "stale": count("stale"),
                        "offline": count("offline"),
                    },
                });
                self.json(now, StatusCode::OK, body);
            }
            ("/admin/v1/nodes", &Method::GET) => {
                let nodes: Vec<Value> = hub
                    .nodes()
                    .into_iter()
                    .map(|n| {
                        json!({
                            "device_id": n.device_id,
                            "platform": n.platform,
                            "capabilities": n.capabilities,
                            "registered_at_unix_ms": n.registered_at_unix_ms,
                            "last_seen_at_unix_ms": n.last_seen_at_unix_ms,
                            "last_event_name": n.last_event_name,
                            "state": presence(n.last_seen_at_unix_ms, now_ms),
                        })
                    })
                    .collect();
                self.json(now, StatusCode::OK, json!({ "nodes": nodes }));
            }
            ("/admin/v1/events", &Method::POST) => {
                self.collect(now, BodyFor::Event, DEFAULT_BODY_LIMIT)
            }
            ("/admin/v1/integrations", &Method::POST) => {
                self.collect(now, BodyFor::Integration, DEFAULT_BODY_LIMIT)
            }
            ("/admin/v1/integrations", &Method::GET) => {
                let list: Vec<Value> = admin
                    .webhooks
                    .list()
                    .into_iter()
                    .map(|i| {
                        json!({"name": i.name, "max_body_bytes": i.max_body_bytes,
                               "created_at_unix_ms": i.created_at_unix_ms})
                    })
                    .collect();
                self.json(now, StatusCode::OK, json!({ "integrations": list }));
            }
            (path, &Method::DELETE) if path.starts_with("/admin/v1/integrations/") => {
                let name = &path["/admin/v1/integrations/".len()..];
                match admin.webhooks.delete(name) {
                    Ok(true) => {
                        self.respond(now, StatusCode::NO_CONTENT, &api_headers(), Bytes::new())
                    }
                    Ok(false) => self.error(
                        now,
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such integration",
                    ),
                    Err(e) => self.error(now, StatusCode::SERVICE_UNAVAILABLE, "store_failed", &e),
                }
            }
            ("/admin/v1/status" | "/admin/v1/nodes", _) => self.not_allowed(now, "GET"),
            ("/admin/v1/events", _) => self.not_allowed(now, "POST"),
            ("/admin/v1/integrations", _) => self.not_allowed(now, "GET, POST"),
            _ => self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin route",
            ),
        }
    }

    fn not_allowed(&mut self, now: Instant, allow: &'static str) {
        let mut headers = api_headers();
        headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        let body =
            crate::http1::error_body("method_not_allowed", "method not allowed on this route");
        self.respond(now, StatusCode::METHOD_NOT_ALLOWED, &headers, body);
    }

    fn collect(&mut self, now: Instant, purpose: BodyFor, limit: u64) {
        self.pending = Some(Pending::Body(purpose, BytesMut::new()));
        if self.http.read_body(now, limit).is_err() {
            self.pending = None;
        }
    }

    /// `POST /webhooks/v1/{integration}`: no admin token; the signature authenticates.
    pub(crate) fn webhook_route(&mut self, now: Instant, head: &RequestHead) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        if head.method != Method::POST {
            return self.not_allowed(now, "POST");
        }
        let name = &head.uri.path()["/webhooks/v1/".len()..];
        let Some(integration) = admin.webhooks.get(name) else {
            return self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such integration",
            );
        };
        let header = |n: &str| {
            head.headers
                .get(n)
                .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        };
        let limit = integration.max_body_bytes;
        let purpose = BodyFor::Webhook {
            signature: header("x-palyra-signature"),
            timestamp: header("x-palyra-timestamp"),
            nonce: header("x-palyra-nonce"),
            integration: Box::new(integration),
        };
        self.collect(now, purpose, limit);
    }

    pub(crate) fn on_body(&mut self, data: Bytes) {
        if let Some(Pending::Body(_, buf)) = &mut self.pending {
            buf.extend_from_slice(&data);
        }
    }

    pub(crate) fn on_body_end(&mut self, now: Instant) {
        let Some(Pending::Body(purpose, buf)) = self.pending.take() else {
            return;
        };
        let outcome = match purpose {
            BodyFor::Event => self
                .parse_event(&buf)
                .and_then(|(name, payload, to)| self.submit_event(name, payload, to))
                .map(|t| (t, StatusCode::CREATED)),
            BodyFor::Integration => return self.create_integration(now, &buf),
            BodyFor::Webhook {
                integration,
                signature,
                timestamp,
                nonce,
            } => self
                .verify_webhook(&integration, signature, timestamp, nonce, &buf)
                .and_then(|payload| {
                    self.submit_event(format!("webhook.{}", integration.name), payload, None)
                })
                .map(|t| (t, StatusCode::ACCEPTED)),
        };
        match outcome {
            Ok((ticket, status)) => {
                self.pending = Some(Pending::Stored(ticket, status));
                self.on_wake(now);
            }
            Err((status, code, message)) => self.error(now, status, code, &message),
        }
    }

    fn create_integration(&mut self, now: Instant, body: &[u8]) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return self.error(
                    now,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("body is not JSON: {e}"),
                )
            }
        };
        let name = request.get("name").and_then(Value::as_str).unwrap_or("");
        let limit = request.get("max_body_bytes").and_then(Value::as_u64);
        let mut secret = [0u8; 32];
        (admin.random)(&mut secret);
        match admin.webhooks.create(name, limit, (admin.clock)(), secret) {
            Ok(i) => self.json(
                now,
                StatusCode::CREATED,
                json!({"name": i.name, "secret": i.secret_hex, "max_body_bytes": i.max_body_bytes,
                       "signature": "X-Palyra-Signature: v1=hex(HMAC-SHA256(hex_decode(secret), timestamp \".\" nonce \".\" body))"}),
            ),
            Err(e) => self.error(now, StatusCode::BAD_REQUEST, "bad_request", &e),
        }
    }

    fn verify_webhook(
        &self,
        integration: &Integration,
        signature: Option<Bytes>,
        timestamp: Option<Bytes>,
        nonce: Option<Bytes>,
        body: &[u8],
    ) -> Result<Value, (StatusCode, &'static str, String)> {
        let Some(admin) = &self.operator.admin else {
            return Err((StatusCode::NOT_FOUND, "not_found", "no admin API".into()));
        };
        let now_secs = (admin.clock)() / 1000;
        admin
            .webhooks
            .verify(
                integration,
                signature.as_deref(),
                timestamp.as_deref(),
                nonce.as_deref(),
                body,
                now_secs,
            )
            .map_err(|e| {
                let (status, code) = match &e {
                    WebhookError::Malformed(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                    WebhookError::Stale => (StatusCode::UNAUTHORIZED, "stale_timestamp"),
                    WebhookError::BadSignature => (StatusCode::UNAUTHORIZED, "bad_signature"),
                    WebhookError::Replayed => (StatusCode::CONFLICT, "replayed_nonce"),
                    WebhookError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                    WebhookError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_failed"),
                };
                (status, code, e.to_string())
            })?;
        serde_json::from_slice(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("webhook body is not JSON: {e}"),
            )
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse_event(
        &self,
        body: &[u8],
    ) -> Result<(String, Value, Option<String>), (StatusCode, &'static str, String)> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, "bad_request", m);
        let request: Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
        let name = request
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("name must be a string".into()))?;
        validate_event_name(name).map_err(|e| bad(format!("name: {e}")))?;
        let to = match request.get("to") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if crate::identity::is_canonical_device_id(id) => {
                Some(id.clone())
            }
            Some(_) => return Err(bad("to must be a canonical device ID (ULID)".into())),
        };
        let payload = request.get("payload").cloned().unwrap_or(Value::Null);
        Ok((name.to_owned(), payload, to))
    }

    fn submit_event(
        &self,
        name: String,
        payload: Value,
        to: Option<String>,
    ) -> Result<u64, (StatusCode, &'static str, String)> {
        let Some(admin) = &self.operator.admin else {
            return Err((StatusCode::NOT_FOUND, "not_found", "no admin API".into()));
        };
        let event = EventBody {
            name,
            device_id: "gateway".into(),
            occurred_at_unix_ms: (admin.clock)(),
            payload,
            to: to.clone(),
        };
        let encoded = serde_json::to_vec(&event).unwrap_or_default();
        admin
            .hub
            .submit_event(NewEvent {
                to,
                body: encoded.into(),
            })
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string()))
    }

    /// Shared state changed: a durable write may have completed.
    pub(crate) fn on_wake(&mut self, now: Instant) {
        let Some(Pending::Stored(ticket, status)) = self.pending else {
            return;
        };
        let Some(admin) = &self.operator.admin else {
            return;
        };
        match admin.hub.take_append_result(ticket) {
            None => {}
            Some(Ok(seq)) => {
                self.pending = None;
                self.json(now, status, json!({ "seq": seq }));
            }
            Some(Err(e)) => {
                self.pending = None;
                self.error(
                    now,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_failed",
                    &format!("event not stored: {e}"),
                );
            }
        }
    }
}
