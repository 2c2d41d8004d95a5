//! The operator plane's HTTP/1.1 application: routes served on `palyrad --http-addr`
//! (`127.0.0.1:8080` by default) over the [`Http1Server`] machine.
//!
//! Every answer carries the security headers (`X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`, a restrictive
//! `Content-Security-Policy`) and API answers `Cache-Control: no-store`; errors are the JSON
//! envelope `{"error": ..., "code": ...}`, never a plain-text rejection.

use crate::node::hub::NodeHub;
use crate::util::WallClock;
use palyra_proto::http1::server::{Event, Http1Server, RequestHead, ResponseBody, ServerConfig};
use palyra_proto::http1::{error_body, json_headers, HttpError};
use palyra_proto::transport::{Acceptor, StreamMachine};
use palyra_proto::ws::{accept_upgrade, WsConfig, WsConnection, WsEvent};

pub mod admin;
pub mod api;
/// The admin token (kept in [`crate::access`], re-exported for the operator routes).
pub use crate::access::admin as auth;
pub mod console;
pub mod openai;
pub mod pairing;
pub mod runs;
pub mod tokens;
pub mod webhook;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body any route reads unless it says otherwise.
pub const DEFAULT_BODY_LIMIT: u64 = 64 * 1024;

/// The status class of an answer, as a metric label (`1xx` .. `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClass {
    class: &'static str,
}

/// Counters of the operator plane, exported by `/metrics` in the OpenMetrics text format
/// (prometheus-client).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    uptime: Gauge,
    /// HTTP connections open now.
    pub connections_open: Gauge,
    /// HTTP connections accepted.
    pub connections_total: Counter,
    responses: Family<StatusClass, Counter>,
    /// Requests refused by the HTTP machine itself (malformed, over a limit, too slow).
    pub rejected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let uptime = Gauge::default();
        let connections_open = Gauge::default();
        let connections_total = Counter::default();
        let responses = Family::<StatusClass, Counter>::default();
        let rejected = Counter::default();
        registry.register(
            "palyra_uptime_seconds",
            "Seconds since the daemon started",
            uptime.clone(),
        );
        registry.register(
            "palyra_http_connections_open",
            "Operator-plane HTTP connections open",
            connections_open.clone(),
        );
        registry.register(
            "palyra_http_connections",
            "Operator-plane HTTP connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "palyra_http_responses",
            "Operator-plane HTTP responses by status class",
            responses.clone(),
        );
        registry.register(
            "palyra_http_rejected",
            "Requests refused by the HTTP layer (malformed, over a limit, too slow)",
            rejected.clone(),
        );
        for class in ["2xx", "4xx", "5xx"] {
            let _ = responses.get_or_create(&StatusClass { class });
        }
        Self {
            registry,
            uptime,
            connections_open,
            connections_total,
            responses,
            rejected,
        }
    }
}

impl Metrics {
    fn count_status(&self, status: StatusCode) {
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.responses.get_or_create(&StatusClass { class }).inc();
    }

    /// Answers counted in a status class (`"2xx"`, ...).
    pub fn responses(&self, class: &'static str) -> u64 {
        self.responses.get_or_create(&StatusClass { class }).get()
    }

    /// The text exposition (OpenMetrics), with the uptime as of `uptime_seconds`.
    pub fn render(&self, uptime_seconds: u64) -> String {
        self.uptime
            .set(i64::try_from(uptime_seconds).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What every connection of the operator plane shares.
#[derive(Debug)]
pub struct Operator {
    /// Daemon version.
    pub version: String,
    /// When the daemon started.
    pub started: Instant,
    /// Counters.
    pub metrics: Metrics,
    /// Serve `GET /conformance/ws-echo` (a WebSocket echo for conformance runs only; off in
    /// palyrad).
    pub ws_echo: bool,
    /// WebSocket limits and keepalive.
    pub ws: WsConfig,
    /// The admin API (`/admin/v1/...`) and the console, when the daemon serves them.
    pub admin: Option<Admin>,
    /// The listener speaks TLS (cookies get `Secure`, answers HSTS).
    pub tls: bool,
}

pub use crate::util::RandomFill;
pub use crate::ws_app::WsApp;

/// What the admin API works on.
pub struct Admin {
    /// The admin credential.
    pub auth: Arc<auth::AdminAuth>,
    /// Node registry and event inbox shared with the node listeners.
    pub hub: Arc<NodeHub>,
    /// Wall clock (Unix ms).
    pub clock: WallClock,
    /// Webhook integrations and nonces.
    pub webhooks: Arc<webhook::WebhookStore>,
    /// Fills a buffer with OS randomness (integration secrets, console sessions).
    pub random: RandomFill,
    /// The console log and state.
    pub console: Arc<crate::console::ConsoleHub>,
    /// Console login sessions.
    pub sessions: Arc<crate::console::sessions::ConsoleSessions>,
    /// Origins besides the listener's own allowed to use the console (`https://host:port`).
    pub origins: Vec<String>,
    /// Pairing and device routes, when the daemon enrolls devices.
    pub pairing: Option<pairing::PairingAdmin>,
    /// API tokens (`/admin/v1/tokens`), when the daemon mints them.
    pub tokens: Option<Arc<crate::access::tokens::TokenStore>>,
    /// Agent runs (`/admin/v1/runs`, the console's Runs view), when the daemon runs agents.
    pub runs: Option<Arc<crate::run::engine::RunEngine>>,
    /// The OpenAI-compatible API (`/v1/...`), when the daemon serves it.
    pub openai: Option<Arc<openai::OpenAi>>,
    /// The stores' latency and error counters, exported by `/metrics`.
    pub store_metrics: Option<crate::store::StoreMetrics>,
}

impl Admin {
    /// Opens the stores under `state_dir` (webhooks, console log, console sessions) for a
    /// daemon run; its boot id (console cursors) comes from `random`.
    pub fn open(
        console_log: Arc<dyn crate::store::LogStore>,
        docs: Arc<dyn crate::store::DocStore>,
        auth: Arc<auth::AdminAuth>,
        hub: Arc<NodeHub>,
        clock: WallClock,
        random: RandomFill,
        origins: Vec<String>,
    ) -> Result<Self, crate::store::StoreError> {
        let mut boot = [0u8; 8];
        random(&mut boot);
        let console = crate::console::ConsoleHub::open(
            console_log,
            Arc::clone(&docs),
            hex::encode(boot),
            hub.notifier(),
            Arc::clone(&clock),
        )?;
        Ok(Self {
            auth,
            webhooks: Arc::new(webhook::WebhookStore::open(
                Arc::clone(&docs),
                Some(hub.notifier()),
            )?),
            sessions: Arc::new(crate::console::sessions::ConsoleSessions::open(
                Arc::clone(&docs),
                Some(hub.notifier()),
            )?),
            console,
            hub,
            clock,
            random,
            origins,
            pairing: None,
            tokens: None,
            runs: None,
            openai: None,
            store_metrics: None,
        })
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Operator {
    /// The operator plane of `palyrad`: health, metrics, the admin API and the console; `tls`
    /// tells whether its listener speaks TLS (see [`OperatorAcceptor::tls`]).
    pub fn daemon(
        version: impl Into<String>,
        started: Instant,
        admin: Admin,
        tls: bool,
    ) -> Arc<Self> {
        let mut plain = Self::plain(version.into(), started);
        if let Some(store) = &admin.store_metrics {
            store.register(&mut plain.metrics.registry);
        }
        Arc::new(Self {
            admin: Some(admin),
            tls,
            ..plain
        })
    }

    /// The operator plane of a daemon started at `started`.
    pub fn new(version: impl Into<String>, started: Instant) -> Arc<Self> {
        Arc::new(Self::plain(version.into(), started))
    }

    /// Like [`Operator::new`], with the conformance-only WebSocket echo endpoint enabled.
    pub fn with_ws_echo(version: impl Into<String>, started: Instant, ws: WsConfig) -> Arc<Self> {
        Arc::new(Self {
            ws_echo: true,
            ws,
            ..Self::plain(version.into(), started)
        })
    }

    /// Health and metrics only, cleartext.
    fn plain(version: String, started: Instant) -> Self {
        Self {
            version,
            started,
            metrics: Metrics::default(),
            ws_echo: false,
            ws: WsConfig::default(),
            admin: None,
            tls: false,
        }
    }
}

/// Echoes every message back (conformance only).
struct Echo;

impl WsApp for Echo {
    fn on_text(&mut self, _now: Instant, text: String, ws: &mut WsConnection) {
        ws.send_text(&text);
    }

    fn on_binary(&mut self, _now: Instant, data: Bytes, ws: &mut WsConnection) {
        ws.send_binary(data);
    }
}

enum Phase {
    Http,
    Ws(Box<WsConnection>, Box<dyn WsApp>),
}

/// Headers on every answer.
pub fn security_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    );
    h
}

/// Headers of API answers (security headers, JSON, `Cache-Control: no-store`), built once.
pub(crate) fn api_headers() -> &'static HeaderMap {
    static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        let mut h = security_headers();
        h.extend(json_headers());
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        h
    })
}

/// One operator-plane HTTP connection.
pub struct OperatorConnection {
    http: Http1Server,
    operator: Arc<Operator>,
    phase: Phase,
    /// The client's address (rate limits), when the driver knows it.
    pub peer: Option<std::net::SocketAddr>,
    /// A request being served over several events (body, durable write).
    pending: Option<admin::InFlight>,
    /// Time of the latest event (for pumping the WebSocket app from `poll_transmit`).
    now: Instant,
    /// The `x-request-id` of the OpenAI-compatible request being answered.
    openai_request_id: String,
}

impl OperatorConnection {
    /// A connection accepted at `now`.
    pub fn new(operator: Arc<Operator>, config: ServerConfig, now: Instant) -> Self {
        let mut http = Http1Server::new(config, now);
        let mut errors = security_headers();
        errors.insert("cache-control", HeaderValue::from_static("no-store"));
        http.set_error_headers(errors);
        operator.metrics.connections_open.inc();
        operator.metrics.connections_total.inc();
        Self {
            http,
            operator,
            phase: Phase::Http,
            peer: None,
            pending: None,
            now,
            openai_request_id: String::new(),
        }
    }

    pub(crate) fn respond(
        &mut self,
        now: Instant,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) {
        self.operator.metrics.count_status(status);
        let mut hsts;
        let headers = if self.operator.tls {
            hsts = headers.clone();
            hsts.insert(
                http::header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
            &hsts
        } else {
            headers
        };
        let _ = self
            .http
            .respond(now, status, headers, ResponseBody::Full(body));
    }

    pub(crate) fn error(&mut self, now: Instant, status: StatusCode, code: &str, message: &str) {
        let body = error_body(code, message);
        self.respond(now, status, api_headers(), body);
    }

    fn route(&mut self, now: Instant, head: &RequestHead) {
        let method = &head.method;
        match head.uri.path() {
            "/conformance/ws-echo" if self.operator.ws_echo => match accept_upgrade(head, &[]) {
                Ok((headers, _)) => self.upgrade(now, &headers, Box::new(Echo)),
                Err(e) => self.http_error(now, e),
            },
            "/healthz" => {
                if !matches!(*method, Method::GET | Method::HEAD) {
                    return self.method_not_allowed(now, "GET, HEAD");
                }
                let uptime = now
                    .saturating_duration_since(self.operator.started)
                    .as_secs();
                let body = format!(
                    "{{\"status\":\"ok\",\"service\":\"palyrad\",\"version\":{},\"uptime_seconds\":{uptime}}}",
                    serde_json::Value::from(self.operator.version.as_str())
                );
                self.respond(now, StatusCode::OK, api_headers(), Bytes::from(body));
            }
            "/metrics" => {
                if !matches!(*method, Method::GET | Method::HEAD) {
                    return self.method_not_allowed(now, "GET, HEAD");
                }
                let mut headers = security_headers();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(METRICS_CONTENT_TYPE),
                );
                headers.insert("cache-control", HeaderValue::from_static("no-store"));
                let uptime = now
                    .saturating_duration_since(self.operator.started)
                    .as_secs();
                let text = self.operator.metrics.render(uptime);
                self.respond(now, StatusCode::OK, &headers, Bytes::from(text));
            }
            path if path.starts_with("/admin/") && self.operator.admin.is_some() => {
                self.admin_route(now, head)
            }
            path if path.starts_with("/webhooks/v1/") && self.operator.admin.is_some() => {
                self.webhook_route(now, head)
            }
            path if path.starts_with("/console/v1/") && self.operator.admin.is_some() => {
                self.console_route(now, head)
            }
            path if (path == "/v1" || path.starts_with("/v1/"))
                && self
                    .operator
                    .admin
                    .as_ref()
                    .is_some_and(|a| a.openai.is_some()) =>
            {
                self.openai_route(now, head)
            }
            path if self.operator.admin.is_some() && crate::console::web::find(path).is_some() => {
                if let Some(asset) = crate::console::web::find(path) {
                    self.asset_route(now, head, asset)
                }
            }
            _ => self.error(now, StatusCode::NOT_FOUND, "not_found", "no such route"),
        }
    }

    pub(crate) fn http_error(&mut self, now: Instant, e: HttpError) {
        self.error(now, e.status, e.code, &e.message);
    }

    /// Answers 101 and hands the connection to `app`.
    pub(crate) fn upgrade(&mut self, now: Instant, headers: &HeaderMap, app: Box<dyn WsApp>) {
        if self.http.upgrade(headers).is_err() {
            return;
        }
        self.operator
            .metrics
            .count_status(StatusCode::SWITCHING_PROTOCOLS);
        let leftover = self.http.take_upgraded();
        let ws = WsConnection::new(self.operator.ws, now, &leftover);
        self.phase = Phase::Ws(Box::new(ws), app);
        self.drive_ws(now);
    }

    fn drive_ws(&mut self, now: Instant) {
        let Phase::Ws(ws, app) = &mut self.phase else {
            return;
        };
        while let Some(event) = ws.poll_event() {
            match event {
                WsEvent::Text(text) => app.on_text(now, text, ws),
                WsEvent::Binary(data) => app.on_binary(now, data, ws),
                WsEvent::Closed { .. } => {}
            }
        }
        app.pump(now, ws);
    }

    pub(crate) fn method_not_allowed(&mut self, now: Instant, allow: &'static str) {
        let mut headers = api_headers().clone();
        headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        let body = error_body("method_not_allowed", "method not allowed on this route");
        self.respond(now, StatusCode::METHOD_NOT_ALLOWED, &headers, body);
    }

    fn drive(&mut self, now: Instant) {
        while let Some(event) = self.http.poll_event() {
            match event {
                Event::Request(head) => {
                    self.route(now, &head);
                    if !matches!(self.phase, Phase::Http) {
                        return;
                    }
                }
                Event::Rejected(_) => {
                    self.operator.metrics.rejected.inc();
                }
                Event::Body(data) => self.on_body(data),
                Event::BodyEnd => self.on_body_end(now),
            }
        }
    }
}

impl Drop for OperatorConnection {
    fn drop(&mut self) {
        self.operator.metrics.connections_open.dec();
    }
}

impl StreamMachine for OperatorConnection {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.now = now;
        match &mut self.phase {
            Phase::Http => {
                self.http.handle_input(now, bytes);
                self.drive(now);
            }
            Phase::Ws(ws, _) => {
                ws.handle_input(now, bytes);
                self.drive_ws(now);
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match &mut self.phase {
            Phase::Http => {
                self.http.handle_timeout(now);
                self.openai_timeout(now);
                self.drive(now);
            }
            Phase::Ws(ws, _) => {
                ws.handle_timeout(now);
                self.drive_ws(now);
            }
        }
    }

    fn handle_wake(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.phase, Phase::Http) {
            self.on_wake(now);
            self.drive(now);
        } else {
            self.drive_ws(now);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Http => [self.http.poll_timeout(), self.openai_deadline()]
                .into_iter()
                .flatten()
                .min(),
            Phase::Ws(ws, app) => [ws.poll_timeout(), app.timeout()]
                .into_iter()
                .flatten()
                .min(),
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        // The 101 answer leaves through the HTTP machine before the first WebSocket frame.
        if let Some(bytes) = self.http.poll_transmit() {
            return Some(bytes);
        }
        match &mut self.phase {
            Phase::Http => {
                // Drained: a completion's stream may send what its run has for it since.
                if matches!(self.pending, Some(admin::InFlight::OpenAi(_))) {
                    self.openai_pump(self.now);
                    return self.http.poll_transmit();
                }
                None
            }
            Phase::Ws(ws, app) => {
                if let Some(bytes) = ws.poll_transmit() {
                    return Some(bytes);
                }
                // Drained: let the app refill (it pulls only while the queue is short).
                app.pump(self.now, ws);
                ws.poll_transmit()
            }
        }
    }

    fn is_closed(&self) -> bool {
        match &self.phase {
            Phase::Http => self.http.is_closed(),
            Phase::Ws(ws, _) => ws.is_closed(),
        }
    }

    fn handle_eof(&mut self) {
        match &mut self.phase {
            Phase::Http => self.http.handle_eof(),
            Phase::Ws(ws, _) => ws.handle_eof(),
        }
    }

    fn go_away(&mut self) {
        match &mut self.phase {
            // Finish the request in progress; an idle connection closes now.
            Phase::Http => self.http.handle_eof(),
            Phase::Ws(ws, _) => ws.close(
                palyra_proto::ws::close_code::GOING_AWAY,
                "server shutting down",
            ),
        }
    }

    fn wants_input(&self) -> bool {
        match &self.phase {
            Phase::Http => self.http.wants_input(),
            Phase::Ws(..) => true,
        }
    }

    fn is_idle(&self) -> bool {
        // A WebSocket (a console or an agent) is never idle; an HTTP connection between
        // requests is.
        matches!(self.phase, Phase::Http) && self.pending.is_none() && self.http.is_idle()
    }
}

/// Accepts operator-plane connections.
pub struct OperatorAcceptor {
    /// Shared state.
    pub operator: Arc<Operator>,
    /// HTTP limits.
    pub config: ServerConfig,
    /// TLS configuration (ALPN `http/1.1`); cleartext when absent. Must agree with
    /// [`Operator::tls`], which decides `Secure` cookies, HSTS and the console's own origin.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Acceptor for OperatorAcceptor {
    fn refuse(&self, now: Instant, _peer: std::net::SocketAddr) -> Option<Box<dyn StreamMachine>> {
        let tls = self.tls.is_some();
        let refusal = move |now| {
            let mut headers = security_headers();
            if tls {
                headers.insert(
                    http::header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                );
            }
            palyra_proto::transport::Refusal::new(
                now,
                palyra_proto::http1::overloaded_response(&headers, 1),
            )
        };
        match &self.tls {
            None => Some(Box::new(refusal(now))),
            Some(config) => palyra_proto::transport::tls::TlsStream::server(
                Arc::clone(config),
                now,
                move |_, now| refusal(now),
            )
            .ok()
            .map(|s| Box::new(s) as Box<dyn StreamMachine>),
        }
    }

    fn accept(
        &self,
        now: Instant,
        peer: std::net::SocketAddr,
    ) -> Result<Box<dyn StreamMachine>, String> {
        let operator = Arc::clone(&self.operator);
        let config = self.config;
        let connection = move |now| {
            let mut conn = OperatorConnection::new(operator, config, now);
            conn.peer = Some(peer);
            conn
        };
        match &self.tls {
            None => Ok(Box::new(connection(now))),
            Some(tls) => {
                let stream = palyra_proto::transport::tls::TlsStream::server(
                    Arc::clone(tls),
                    now,
                    move |_client, now| connection(now),
                )
                .map_err(|e| e.to_string())?;
                Ok(Box::new(stream))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(conn: &mut OperatorConnection, now: Instant, input: &[u8]) -> String {
        conn.handle_input(now, input);
        let mut out = Vec::new();
        while let Some(b) = conn.poll_transmit() {
            out.extend_from_slice(&b);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn healthz_metrics_and_error_envelopes_carry_security_headers() {
        let started = Instant::now();
        let operator = Operator::new("1.2.3", started);
        let now = started + std::time::Duration::from_secs(42);
        let mut conn = OperatorConnection::new(Arc::clone(&operator), ServerConfig::default(), now);
        let out = exchange(&mut conn, now, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        for header in [
            "x-content-type-options: nosniff",
            "x-frame-options: DENY",
            "referrer-policy: no-referrer",
            "content-security-policy: default-src 'self'",
            "cache-control: no-store",
            "content-type: application/json",
        ] {
            assert!(out.contains(header), "{header} missing in {out}");
        }
        let body: serde_json::Value =
            serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status":"ok","service":"palyrad","version":"1.2.3","uptime_seconds":42})
        );
        let out = exchange(&mut conn, now, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            out.starts_with("HTTP/1.1 404") && out.contains("\"code\":\"not_found\""),
            "{out}"
        );
        let out = exchange(
            &mut conn,
            now,
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(
            out.starts_with("HTTP/1.1 405") && out.contains("allow: GET, HEAD"),
            "{out}"
        );
        let out = exchange(&mut conn, now, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            out.contains("palyra_http_responses_total{class=\"2xx\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("palyra_http_responses_total{class=\"4xx\"} 2"),
            "{out}"
        );
        assert!(out.contains("palyra_http_connections_open 1"), "{out}");
        assert!(
            out.contains("content-type: application/openmetrics-text"),
            "{out}"
        );
        assert!(out.trim_end().ends_with("# EOF"), "{out}");
        // The HTTP layer's own refusals carry the same headers and envelope.
        let out = exchange(&mut conn, now, b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            out.starts_with("HTTP/1.1 501") && out.contains("x-frame-options: DENY"),
            "{out}"
        );
        assert!(out.contains("\"code\":\"not_implemented\""));
        assert!(conn.is_closed());
        drop(conn);
        assert_eq!(operator.metrics.connections_open.get(), 0);
        assert_eq!(operator.metrics.rejected.get(), 1);
    }
}
