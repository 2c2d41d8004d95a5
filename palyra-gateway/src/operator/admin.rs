//! The admin API (`/admin/v1/...`, `Authorization: Bearer <admin token>`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/v1/status` | daemon version, uptime, node counts by presence |
//! | `GET /admin/v1/cluster` | gateways with their nodes, the NATS servers and stream health (`palyra cluster status`) |
//! | `GET /admin/v1/nodes` | node inventory: registration, capabilities, `online` / `stale` / `offline` |
//! | `POST /admin/v1/events` | `{"name","payload","to"?}` into the node-plane event log; 201 `{"seq"}` once durable |
//! | `GET/POST /admin/v1/integrations`, `DELETE /admin/v1/integrations/{name}` | webhook integrations |
//! | `GET /admin/v1/chat/sessions` | chat sessions with their recent messages |
//! | `POST /admin/v1/chat/sessions/{session}/messages` | `{"message_id","text","streaming"?,"author"?}` -> 201 |
//! | `POST /admin/v1/chat/messages/{message}/delta` | `{"text"}` appended to a streaming message |
//! | `POST /admin/v1/chat/messages/{message}/done` | ends a streaming message |
//! | `GET /admin/v1/surfaces`, `GET /admin/v1/surfaces/{name}` | A2UI surfaces |
//! | `PUT /admin/v1/surfaces/{name}` | the whole document -> `{"version"}` |
//! | `PATCH /admin/v1/surfaces/{name}` | `{"base_version"?,"ops"}` -> `{"version"}`; 409 when stale |
//!
//! The console page may call these routes with its session cookie and CSRF token
//! (`x-palyra-csrf-token`) instead of the token.
//!
//! 401 `unauthorized` for a missing or wrong token (with `WWW-Authenticate: Bearer`), 429
//! `rate_limited` with `Retry-After` after repeated failures from one address, 413 for a body
//! over 64 KiB, 400 for malformed JSON.

use super::webhook::{Change, Integration, WebhookError};
use super::{api_headers, OperatorConnection, DEFAULT_BODY_LIMIT};
use crate::console::{Command, Publishing};
use crate::store::{pending, NewEvent, Pending, StoreError};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use palyra_proto::http1::server::RequestHead;
use palyra_proto::node::message::{validate_event_name, EventBody};
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
    /// `POST /console/v1/auth/login`.
    Login,
    /// `POST /admin/v1/chat/sessions/{session}/messages`.
    ChatPost(String),
    /// `POST /admin/v1/chat/messages/{message}/delta`.
    ChatDelta(String),
    /// `PUT /admin/v1/surfaces/{name}`.
    SurfacePut(String),
    /// `PATCH /admin/v1/surfaces/{name}`.
    SurfacePatch(String),
    /// A pairing or device route.
    Pairing(super::pairing::PairingBody),
    /// `POST /admin/v1/tokens`.
    MintToken,
    /// `POST /v1/chat/completions` or `POST /v1/responses`.
    OpenAi(Box<super::openai::Reading>),
    /// `POST /webhooks/v1/{name}`, with the signature headers.
    Webhook {
        integration: Box<Integration>,
        signature: Option<Bytes>,
        timestamp: Option<Bytes>,
        nonce: Option<Bytes>,
    },
}

/// A request served over several events.
pub(crate) enum InFlight {
    /// Collecting a request body.
    Body(BodyFor, BytesMut),
    /// Waiting for the event log to make an event durable; answered with this status, then
    /// shown on the console.
    Stored(
        Pending<Result<u64, StoreError>>,
        StatusCode,
        Option<Box<Command>>,
    ),
    /// Waiting for the console log; answered with this status.
    Console(Publishing, StatusCode),
    /// Waiting for a webhook's nonce to be durable; then its payload goes to the event log.
    Nonce(Change<Result<(), WebhookError>>, String, Value),
    /// Waiting for a store change; the closure gives the answer once it arrived.
    Answer(Answer),
    /// An OpenAI-compatible completion being answered from its run's tape.
    OpenAi(Box<super::openai::Running>),
}

/// Polled when the connection is woken: the answer once the change it waits for is durable.
pub(crate) type Answer = Box<dyn FnMut() -> Option<Reply> + Send>;

/// An answer of a route.
pub(crate) enum Reply {
    /// A JSON body with this status.
    Json(StatusCode, Value),
    /// No body.
    Empty(StatusCode),
    /// The error envelope.
    Error(StatusCode, &'static str, String),
    /// A body with its own headers.
    Full(StatusCode, http::HeaderMap, Bytes),
}

/// The answer to a change that failed in the store.
pub(crate) fn store_failed(e: &StoreError) -> Reply {
    Reply::Error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_failed",
        format!("not saved: {e}"),
    )
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
    pub(crate) fn json(&mut self, now: Instant, status: StatusCode, body: Value) {
        self.respond(now, status, api_headers(), Bytes::from(body.to_string()));
    }

    pub(crate) fn admin_route(&mut self, now: Instant, head: &RequestHead) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let authorization = head.headers.get(http::header::AUTHORIZATION);
        match (authorization, self.console_admin_ok(head)) {
            (None, Some(true)) => {}
            (None, Some(false)) => return self.csrf_error(now),
            _ => {
                let auth = admin.auth.check(
                    authorization.map(HeaderValue::as_bytes),
                    self.peer.map(|p| p.ip()),
                    now,
                );
                if let Err(denied) = auth {
                    return self.denied(now, denied);
                }
            }
        }
        let Some(admin) = &self.operator.admin else {
            return;
        };
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
            ("/admin/v1/cluster", &Method::GET) => self.cluster_status(now, &hub, now_ms),
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
                let deleted = admin.webhooks.delete(name);
                self.answer_later(
                    now,
                    Box::new(move || {
                        Some(match deleted.take()? {
                            Ok(true) => Reply::Empty(StatusCode::NO_CONTENT),
                            Ok(false) => Reply::Error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                "no such integration".into(),
                            ),
                            Err(e) => store_failed(&e),
                        })
                    }),
                );
            }
            ("/admin/v1/chat/sessions", &Method::GET) => {
                let sessions: Vec<Value> = admin
                    .console
                    .sessions()
                    .into_iter()
                    .map(|(id, count, last, messages)| {
                        json!({"session_id": id, "message_count": count,
                               "last_at_unix_ms": last, "messages": messages})
                    })
                    .collect();
                self.json(now, StatusCode::OK, json!({ "sessions": sessions }));
            }
            ("/admin/v1/surfaces", &Method::GET) => {
                let surfaces: Vec<Value> = admin
                    .console
                    .surfaces()
                    .into_iter()
                    .map(|s| json!({"surface": s.surface, "version": s.version, "owner": s.owner}))
                    .collect();
                self.json(now, StatusCode::OK, json!({ "surfaces": surfaces }));
            }
            (path, method)
                if path.starts_with("/admin/v1/pairing/")
                    || path == "/admin/v1/devices"
                    || path.starts_with("/admin/v1/devices/") =>
            {
                let method = method.clone();
                self.pairing_route(now, path, &method)
            }
            (path, method)
                if path == "/admin/v1/tokens" || path.starts_with("/admin/v1/tokens/") =>
            {
                let method = method.clone();
                self.tokens_route(now, path, &method)
            }
            (path, method) if path == "/admin/v1/runs" || path.starts_with("/admin/v1/runs/") => {
                let method = method.clone();
                self.runs_route(now, path, &method)
            }
            (path, method)
                if path.starts_with("/admin/v1/chat/")
                    || path.starts_with("/admin/v1/surfaces/") =>
            {
                let method = method.clone();
                self.console_admin_route(now, path, &method)
            }
            (
                "/admin/v1/status"
                | "/admin/v1/nodes"
                | "/admin/v1/chat/sessions"
                | "/admin/v1/surfaces"
                | "/admin/v1/cluster",
                _,
            ) => self.not_allowed(now, "GET"),
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

    pub(crate) fn not_allowed(&mut self, now: Instant, allow: &'static str) {
        let mut headers = api_headers().clone();
        headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        let body = palyra_proto::http1::error_body(
            "method_not_allowed",
            "method not allowed on this route",
        );
        self.respond(now, StatusCode::METHOD_NOT_ALLOWED, &headers, body);
    }

    pub(crate) fn collect(&mut self, now: Instant, purpose: BodyFor, limit: u64) {
        self.pending = Some(InFlight::Body(purpose, BytesMut::new()));
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
        if let Some(InFlight::Body(_, buf)) = &mut self.pending {
            buf.extend_from_slice(&data);
        }
    }

    pub(crate) fn on_body_end(&mut self, now: Instant) {
        let Some(InFlight::Body(purpose, buf)) = self.pending.take() else {
            return;
        };
        let outcome = match purpose {
            BodyFor::Event => self
                .parse_event(&buf)
                .and_then(|(name, payload, to)| self.submit_event(name, payload, to))
                .map(|(t, shown)| (t, StatusCode::CREATED, Some(shown))),
            BodyFor::Integration => return self.create_integration(now, &buf),
            BodyFor::Login => return self.login(now, &buf),
            BodyFor::ChatPost(session) => return self.chat_post(now, session, &buf),
            BodyFor::ChatDelta(message) => {
                let text = match parse_body(&buf).and_then(|v| text_field(&v, "text")) {
                    Ok(t) => t,
                    Err(e) => return self.error(now, StatusCode::BAD_REQUEST, "bad_request", &e),
                };
                let command = Command::Delta {
                    message_id: message,
                    text,
                };
                return self.publish_console(now, command, StatusCode::OK);
            }
            BodyFor::SurfacePut(name) => return self.surface_put(now, name, &buf),
            BodyFor::SurfacePatch(name) => return self.surface_patch(now, name, &buf),
            BodyFor::Pairing(what) => return self.pairing_body(now, what, &buf),
            BodyFor::MintToken => return self.mint_token(now, &buf),
            BodyFor::OpenAi(reading) => return self.openai_body(now, *reading, &buf),
            BodyFor::Webhook {
                integration,
                signature,
                timestamp,
                nonce,
            } => match self.verify_webhook(&integration, signature, timestamp, nonce, &buf) {
                Ok((consumed, payload)) => {
                    self.pending = Some(InFlight::Nonce(consumed, integration.name, payload));
                    return self.on_wake(now);
                }
                Err((status, code, message)) => return self.error(now, status, code, &message),
            },
        };
        self.await_stored(now, outcome);
    }

    /// Answers once the event behind `outcome` is durable (or with its refusal now).
    #[allow(clippy::type_complexity)]
    pub(crate) fn await_stored(
        &mut self,
        now: Instant,
        outcome: Result<
            (
                Pending<Result<u64, StoreError>>,
                StatusCode,
                Option<Command>,
            ),
            (StatusCode, &'static str, String),
        >,
    ) {
        match outcome {
            Ok((stored, status, shown)) => {
                self.pending = Some(InFlight::Stored(stored, status, shown.map(Box::new)));
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
        let created = admin.webhooks.create(name, limit, (admin.clock)(), secret);
        self.answer_later(
            now,
            Box::new(move || {
                Some(match created.take()? {
                    Ok(Ok(i)) => Reply::Json(
                        StatusCode::CREATED,
                        json!({"name": i.name, "secret": i.secret_hex, "max_body_bytes": i.max_body_bytes,
                               "signature": "X-Palyra-Signature: v1=hex(HMAC-SHA256(hex_decode(secret), timestamp \".\" nonce \".\" body))"}),
                    ),
                    Ok(Err(e)) => Reply::Error(StatusCode::BAD_REQUEST, "bad_request", e),
                    Err(e) => store_failed(&e),
                })
            }),
        );
    }

    /// `GET /admin/v1/cluster`: the shared store's report (gateways and their nodes, NATS,
    /// streams), or, on the file backend, this gateway alone.
    fn cluster_status(&mut self, now: Instant, hub: &crate::node::hub::NodeHub, now_ms: u64) {
        let Some(peers) = hub.peers() else {
            let mut nodes: Vec<String> = hub
                .nodes()
                .into_iter()
                .filter(|n| presence(n.last_seen_at_unix_ms, now_ms) == "online")
                .map(|n| n.device_id)
                .collect();
            nodes.sort();
            let body = json!({"backend": "file", "gateways": [
                {"name": "(this gateway)", "this": true, "age_ms": 0, "version": self.operator.version, "nodes": nodes}]});
            return self.json(now, StatusCode::OK, body);
        };
        let (report, done) = pending(Some(hub.notifier()));
        peers.status(Box::new(move |r| done.complete(r)));
        self.answer_later(
            now,
            Box::new(move || {
                Some(match report.take()? {
                    Ok(body) => Reply::Json(StatusCode::OK, body),
                    Err(e) => Reply::Error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("no cluster report: {e}"),
                    ),
                })
            }),
        );
    }

    /// Answers the request once `answer` gives the reply (it is polled on every wake-up).
    pub(crate) fn answer_later(&mut self, now: Instant, answer: Answer) {
        self.pending = Some(InFlight::Answer(answer));
        self.on_wake(now);
    }

    fn reply(&mut self, now: Instant, reply: Reply) {
        match reply {
            Reply::Json(status, body) => self.json(now, status, body),
            Reply::Empty(status) => self.respond(now, status, api_headers(), Bytes::new()),
            Reply::Error(status, code, message) => self.error(now, status, code, &message),
            Reply::Full(status, headers, body) => self.respond(now, status, &headers, body),
        }
    }

    /// Checks a delivery's signature and body, and starts consuming its nonce.
    #[allow(clippy::type_complexity)]
    fn verify_webhook(
        &self,
        integration: &Integration,
        signature: Option<Bytes>,
        timestamp: Option<Bytes>,
        nonce: Option<Bytes>,
        body: &[u8],
    ) -> Result<(Change<Result<(), WebhookError>>, Value), (StatusCode, &'static str, String)> {
        let Some(admin) = &self.operator.admin else {
            return Err((StatusCode::NOT_FOUND, "not_found", "no admin API".into()));
        };
        let now_secs = (admin.clock)() / 1000;
        let payload: Value = serde_json::from_slice(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("webhook body is not JSON: {e}"),
            )
        })?;
        let consumed = admin
            .webhooks
            .verify(
                integration,
                signature.as_deref(),
                timestamp.as_deref(),
                nonce.as_deref(),
                body,
                now_secs,
            )
            .map_err(|e| webhook_refusal(&e))?;
        Ok((consumed, payload))
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
            Some(Value::String(id)) if palyra_proto::identity::is_canonical_device_id(id) => {
                Some(id.clone())
            }
            Some(_) => return Err(bad("to must be a canonical device ID (ULID)".into())),
        };
        let payload = request.get("payload").cloned().unwrap_or(Value::Null);
        Ok((name.to_owned(), payload, to))
    }

    /// Hands an event to the node-plane log; returns its pending seq and what the console will
    /// show once it is stored.
    #[allow(clippy::type_complexity)]
    pub(crate) fn submit_event(
        &self,
        name: String,
        payload: Value,
        to: Option<String>,
    ) -> Result<(Pending<Result<u64, StoreError>>, Command), (StatusCode, &'static str, String)>
    {
        let Some(admin) = &self.operator.admin else {
            return Err((StatusCode::NOT_FOUND, "not_found", "no admin API".into()));
        };
        let shown = Command::NodeEvent {
            name: name.clone(),
            device_id: "gateway".into(),
            node_seq: 0,
            payload: payload.clone(),
            to: to.clone(),
        };
        let event = EventBody {
            name,
            device_id: "gateway".into(),
            occurred_at_unix_ms: (admin.clock)(),
            payload,
            to: to.clone(),
        };
        let encoded = serde_json::to_vec(&event).unwrap_or_default();
        let (stored, done) = pending(Some(admin.hub.notifier()));
        admin.hub.log().append(
            vec![NewEvent {
                to,
                body: encoded.into(),
                id: None,
            }],
            None,
            Box::new(move |result| done.complete(crate::store::only_seq(result))),
        );
        Ok((stored, shown))
    }

    /// Shared state changed: a durable write may have completed.
    pub(crate) fn on_wake(&mut self, now: Instant) {
        match &mut self.pending {
            Some(InFlight::Console(..)) => return self.answer_console(now),
            Some(InFlight::OpenAi(..)) => return self.openai_pump(now),
            Some(InFlight::Answer(answer)) => {
                if let Some(reply) = answer() {
                    self.pending = None;
                    self.reply(now, reply);
                }
                return;
            }
            Some(InFlight::Nonce(consumed, ..)) => {
                let Some(result) = consumed.take() else {
                    return;
                };
                let Some(InFlight::Nonce(_, name, payload)) = self.pending.take() else {
                    return;
                };
                let outcome = match result {
                    Ok(Ok(())) => self
                        .submit_event(format!("webhook.{name}"), payload, None)
                        .map(|(stored, shown)| (stored, StatusCode::ACCEPTED, Some(shown))),
                    Ok(Err(e)) => Err(webhook_refusal(&e)),
                    Err(e) => Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_failed",
                        format!("cannot record the nonce: {e}"),
                    )),
                };
                return self.await_stored(now, outcome);
            }
            _ => {}
        }
        let Some(InFlight::Stored(stored, status, _)) = &self.pending else {
            return;
        };
        let status = *status;
        let Some(result) = stored.take() else {
            return;
        };
        let Some(admin) = &self.operator.admin else {
            return;
        };
        match result {
            Ok(seq) => {
                if let Some(InFlight::Stored(_, _, Some(shown))) = self.pending.take() {
                    if let Command::NodeEvent {
                        name,
                        device_id,
                        payload,
                        to,
                        ..
                    } = *shown
                    {
                        let shown = Command::NodeEvent {
                            name,
                            device_id,
                            node_seq: seq,
                            payload,
                            to,
                        };
                        // Best effort: the event is stored in the node plane already.
                        let _ = admin.console.publish(vec![shown]);
                    }
                }
                self.json(now, status, json!({ "seq": seq }));
            }
            Err(e) => {
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

/// The HTTP status, code and message of a refused webhook delivery.
fn webhook_refusal(e: &WebhookError) -> (StatusCode, &'static str, String) {
    let (status, code) = match e {
        WebhookError::Malformed(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        WebhookError::Stale => (StatusCode::UNAUTHORIZED, "stale_timestamp"),
        WebhookError::BadSignature => (StatusCode::UNAUTHORIZED, "bad_signature"),
        WebhookError::Replayed => (StatusCode::CONFLICT, "replayed_nonce"),
        WebhookError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        WebhookError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_failed"),
    };
    (status, code, e.to_string())
}

fn parse_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

fn text_field(v: &Value, name: &str) -> Result<String, String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{name} must be a string"))
}

impl OperatorConnection {
    /// `/admin/v1/chat/...` and `/admin/v1/surfaces/{name}`.
    fn console_admin_route(&mut self, now: Instant, path: &str, method: &Method) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let segments: Vec<&str> = path.trim_start_matches("/admin/v1/").split('/').collect();
        match (segments.as_slice(), method) {
            (["chat", "sessions", session, "messages"], &Method::POST) => {
                let purpose = BodyFor::ChatPost((*session).to_owned());
                self.collect(now, purpose, DEFAULT_BODY_LIMIT + 4096)
            }
            (["chat", "messages", message, "delta"], &Method::POST) => {
                let purpose = BodyFor::ChatDelta((*message).to_owned());
                self.collect(now, purpose, DEFAULT_BODY_LIMIT + 4096)
            }
            (["chat", "messages", message, "done"], &Method::POST) => {
                let command = Command::Done {
                    message_id: (*message).to_owned(),
                };
                self.publish_console(now, command, StatusCode::OK)
            }
            (["surfaces", name], &Method::GET) => match admin.console.surface(name) {
                Some(s) => self.json(
                    now,
                    StatusCode::OK,
                    json!({"surface": s.surface, "version": s.version, "owner": s.owner,
                           "document": s.document}),
                ),
                None => self.error(now, StatusCode::NOT_FOUND, "not_found", "no such surface"),
            },
            (["surfaces", name], &Method::PUT) => {
                let purpose = BodyFor::SurfacePut((*name).to_owned());
                self.collect(now, purpose, palyra_proto::a2ui::MAX_DOCUMENT_BYTES as u64)
            }
            (["surfaces", name], &Method::PATCH) => {
                let purpose = BodyFor::SurfacePatch((*name).to_owned());
                self.collect(
                    now,
                    purpose,
                    palyra_proto::a2ui::MAX_PATCH_BYTES as u64 + 1024,
                )
            }
            (["surfaces", _], _) => self.not_allowed(now, "GET, PUT, PATCH"),
            (["chat", ..], _) => self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such chat route",
            ),
            _ => self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin route",
            ),
        }
    }

    /// Publishes `command` on the console; answered with `status` once it is durable.
    fn publish_console(&mut self, now: Instant, command: Command, status: StatusCode) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let publishing = admin.console.publish(vec![command]);
        self.pending = Some(InFlight::Console(publishing, status));
        self.on_wake(now);
    }

    /// Answers a console publish that completed.
    fn answer_console(&mut self, now: Instant) {
        let Some(InFlight::Console(publishing, status)) = &self.pending else {
            return;
        };
        let status = *status;
        let Some(mut results) = publishing.take() else {
            return;
        };
        self.pending = None;
        match results.pop() {
            Some(Ok(p)) => self.json(
                now,
                status,
                json!({"id": p.id, "seq": p.seq, "version": p.version}),
            ),
            Some(Err(e)) => self.error(now, e.status(), e.code, &e.message),
            None => {}
        }
    }

    fn chat_post(&mut self, now: Instant, session_id: String, body: &[u8]) {
        let command = parse_body(body).and_then(|v| {
            Ok(Command::Post {
                session_id,
                message_id: text_field(&v, "message_id")?,
                author: v
                    .get("author")
                    .and_then(Value::as_str)
                    .unwrap_or("admin")
                    .to_owned(),
                text: v
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                streaming: v.get("streaming").and_then(Value::as_bool).unwrap_or(false),
            })
        });
        match command {
            Ok(c) => self.publish_console(now, c, StatusCode::CREATED),
            Err(e) => self.error(now, StatusCode::BAD_REQUEST, "bad_request", &e),
        }
    }

    fn surface_put(&mut self, now: Instant, name: String, body: &[u8]) {
        let document = match parse_body(body) {
            Ok(d) => d,
            Err(e) => return self.error(now, StatusCode::BAD_REQUEST, "bad_request", &e),
        };
        if document.get("surface").and_then(Value::as_str) != Some(name.as_str()) {
            return self.error(
                now,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the document's surface must match the URL",
            );
        }
        let command = Command::PutSurface {
            document,
            owner: "admin".into(),
        };
        self.publish_console(now, command, StatusCode::OK)
    }

    fn surface_patch(&mut self, now: Instant, surface: String, body: &[u8]) {
        let command = parse_body(body).and_then(|v| {
            let base_version = match v.get("base_version") {
                None | Some(Value::Null) => None,
                Some(b) => Some(b.as_u64().ok_or("base_version must be an integer")?),
            };
            let ops = v.get("ops").cloned().ok_or("ops is required")?;
            Ok(Command::Patch {
                surface,
                base_version,
                ops,
            })
        });
        match command {
            Ok(c) => self.publish_console(now, c, StatusCode::OK),
            Err(e) => self.error(now, StatusCode::BAD_REQUEST, "bad_request", &e),
        }
    }
}
