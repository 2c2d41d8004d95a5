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

/// A request served over several events.
pub(crate) enum Pending {
    /// Collecting the body of `POST /admin/v1/events`.
    EventBody(BytesMut),
    /// Waiting for the event log to make an event durable.
    Stored(u64),
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
                self.pending = Some(Pending::EventBody(BytesMut::new()));
                if self.http.read_body(now, DEFAULT_BODY_LIMIT).is_err() {
                    self.pending = None;
                }
            }
            ("/admin/v1/status" | "/admin/v1/nodes", _) => self.not_allowed(now, "GET"),
            ("/admin/v1/events", _) => self.not_allowed(now, "POST"),
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

    pub(crate) fn on_body(&mut self, data: Bytes) {
        if let Some(Pending::EventBody(buf)) = &mut self.pending {
            buf.extend_from_slice(&data);
        }
    }

    pub(crate) fn on_body_end(&mut self, now: Instant) {
        let Some(Pending::EventBody(buf)) = self.pending.take() else {
            return;
        };
        match self.submit_event(&buf) {
            Ok(ticket) => {
                self.pending = Some(Pending::Stored(ticket));
                self.on_wake(now);
            }
            Err((status, code, message)) => self.error(now, status, code, &message),
        }
    }

    fn submit_event(&self, body: &[u8]) -> Result<u64, (StatusCode, &'static str, String)> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, "bad_request", m);
        let Some(admin) = &self.operator.admin else {
            return Err((StatusCode::NOT_FOUND, "not_found", "no admin API".into()));
        };
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
        let event = EventBody {
            name: name.to_owned(),
            device_id: "gateway".into(),
            occurred_at_unix_ms: (admin.clock)(),
            payload: request.get("payload").cloned().unwrap_or(Value::Null),
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
        let Some(Pending::Stored(ticket)) = self.pending else {
            return;
        };
        let Some(admin) = &self.operator.admin else {
            return;
        };
        match admin.hub.take_append_result(ticket) {
            None => {}
            Some(Ok(seq)) => {
                self.pending = None;
                self.json(now, StatusCode::CREATED, json!({ "seq": seq }));
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
