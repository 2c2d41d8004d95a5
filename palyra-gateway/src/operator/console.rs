//! Console routes: the embedded web console (`/`, `/app.js`, `/app.css`), login sessions
//! (`/console/v1/auth/login|session|logout`) and the live stream (`/console/v1/stream`).
//!
//! | route | answer |
//! |---|---|
//! | `POST /console/v1/auth/login` | `{"admin_token"}` (JSON) -> 200 `{"csrf_token","expires_at_unix_ms"}` + session cookie; 401, 429 |
//! | `GET /console/v1/auth/session` | 200 `{"authenticated":true,"csrf_token",...}` or 401 |
//! | `POST /console/v1/auth/logout` | needs `x-palyra-csrf-token`; 200 and the cookie cleared |
//! | `GET /console/v1/stream` | WebSocket `palyra.console.v1`: session cookie + own `Origin` (else 403), or `Authorization: Bearer <admin token>` (agents) |

use super::admin::BodyFor;
use super::admin::{store_failed, Reply};
use super::auth::Denied;
use super::{api_headers, security_headers, OperatorConnection};
use crate::console::sessions::{self, Session};
use crate::console::stream::{ConsoleStream, Role, PROTOCOL};
use crate::console::web;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use palyra_proto::http1::server::RequestHead;
use palyra_proto::ws::accept_upgrade;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// Largest login body.
pub const LOGIN_BODY_LIMIT: u64 = 4 * 1024;

impl OperatorConnection {
    /// Serves an embedded console asset.
    pub(crate) fn asset_route(&mut self, now: Instant, head: &RequestHead, asset: &web::Asset) {
        if !matches!(head.method, Method::GET | Method::HEAD) {
            return self.method_not_allowed(now, "GET, HEAD");
        }
        let etag = asset.etag();
        let mut headers = security_headers();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        if let Ok(v) = HeaderValue::from_str(etag) {
            headers.insert(http::header::ETAG, v);
        }
        let fresh = head
            .headers
            .get(http::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if fresh {
            return self.respond(now, StatusCode::NOT_MODIFIED, &headers, Bytes::new());
        }
        self.respond(
            now,
            StatusCode::OK,
            &headers,
            Bytes::from_static(asset.body),
        );
    }

    /// `/console/v1/...`.
    pub(crate) fn console_route(&mut self, now: Instant, head: &RequestHead) {
        match (head.uri.path(), &head.method) {
            ("/console/v1/auth/login", &Method::POST) => {
                let json = head
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_start().starts_with("application/json"));
                if !json {
                    return self.error(
                        now,
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "login takes application/json",
                    );
                }
                if head.headers.contains_key(http::header::ORIGIN) && !self.origin_allowed(head) {
                    return self.error(
                        now,
                        StatusCode::FORBIDDEN,
                        "forbidden_origin",
                        "this Origin may not log in",
                    );
                }
                self.collect(now, BodyFor::Login, LOGIN_BODY_LIMIT);
            }
            ("/console/v1/auth/session", &Method::GET) => match self.session(head) {
                Some((_, session)) => self.json(
                    now,
                    StatusCode::OK,
                    json!({"authenticated": true, "csrf_token": session.csrf,
                           "expires_at_unix_ms": session.expires_unix_ms}),
                ),
                None => self.error(
                    now,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "no console session; log in",
                ),
            },
            ("/console/v1/auth/logout", &Method::POST) => {
                let Some((token, session)) = self.session(head) else {
                    return self.error(
                        now,
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "no console session",
                    );
                };
                if !self.csrf_ok(head, &session) {
                    return self.csrf_error(now);
                }
                let Some(admin) = &self.operator.admin else {
                    return;
                };
                let removed = admin.sessions.remove(&token);
                let secure = self.operator.tls;
                self.answer_later(
                    now,
                    Box::new(move || {
                        Some(match removed.take()? {
                            Ok(()) => {
                                let mut headers = api_headers().clone();
                                if let Ok(v) =
                                    HeaderValue::from_str(&sessions::clear_cookie(secure))
                                {
                                    headers.insert(http::header::SET_COOKIE, v);
                                }
                                let body = json!({"authenticated": false}).to_string();
                                Reply::Full(StatusCode::OK, headers, Bytes::from(body))
                            }
                            Err(e) => store_failed(&e),
                        })
                    }),
                );
            }
            ("/console/v1/stream", _) => self.stream_route(now, head),
            ("/console/v1/auth/login" | "/console/v1/auth/logout", _) => {
                self.method_not_allowed(now, "POST")
            }
            ("/console/v1/auth/session", _) => self.method_not_allowed(now, "GET"),
            _ => self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such console route",
            ),
        }
    }

    fn stream_route(&mut self, now: Instant, head: &RequestHead) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let hub = Arc::clone(&admin.console);
        let role = if let Some(authorization) = head.headers.get(http::header::AUTHORIZATION) {
            match admin.auth.check(
                Some(authorization.as_bytes()),
                self.peer.map(|p| p.ip()),
                now,
            ) {
                Ok(()) => Role::Agent("agent".into()),
                Err(denied) => return self.denied(now, denied),
            }
        } else {
            if self.session(head).is_none() {
                return self.error(
                    now,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "log in first (session cookie) or send the admin token",
                );
            }
            Role::Console
        };
        // Browsers always send Origin on WebSocket handshakes: a cookie-authenticated stream
        // must come from the console's own origin (cross-site WebSocket hijacking).
        let origin_required = role == Role::Console;
        if (origin_required || head.headers.contains_key(http::header::ORIGIN))
            && !self.origin_allowed(head)
        {
            return self.error(
                now,
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "the Origin of this WebSocket is not the console's",
            );
        }
        match accept_upgrade(head, &[PROTOCOL]) {
            Ok((headers, Some(_))) => {
                let app = ConsoleStream::new(hub, role, now);
                self.upgrade(now, &headers, Box::new(app));
            }
            Ok((_, None)) => self.error(
                now,
                StatusCode::BAD_REQUEST,
                "subprotocol_required",
                "offer the WebSocket subprotocol palyra.console.v1",
            ),
            Err(e) => self.http_error(now, e),
        }
    }

    /// Answers a refused admin token (401 with `WWW-Authenticate`, or 429 with `Retry-After`).
    pub(crate) fn denied(&mut self, now: Instant, denied: Denied) {
        let mut headers = api_headers().clone();
        let (status, body) = match denied {
            Denied::Unauthorized => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                (
                    StatusCode::UNAUTHORIZED,
                    palyra_proto::http1::error_body("unauthorized", "missing or wrong admin token"),
                )
            }
            Denied::RateLimited(wait) => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    palyra_proto::http1::error_body(
                        "rate_limited",
                        "too many failed attempts from this address; retry later",
                    ),
                )
            }
        };
        self.respond(now, status, &headers, body);
    }

    fn session(&self, head: &RequestHead) -> Option<(String, Session)> {
        let admin = self.operator.admin.as_ref()?;
        let token = sessions::cookie_token(&head.headers)?;
        let session = admin.sessions.get(&token, (admin.clock)())?;
        Some((token, session))
    }

    /// A console session may use the admin API from the console page: a valid session cookie,
    /// the session's CSRF token in `x-palyra-csrf-token`, and (when sent) the console's Origin.
    /// `None` when the request carries no session at all.
    pub(crate) fn console_admin_ok(&self, head: &RequestHead) -> Option<bool> {
        let (_, session) = self.session(head)?;
        let origin_ok =
            !head.headers.contains_key(http::header::ORIGIN) || self.origin_allowed(head);
        Some(origin_ok && self.csrf_ok(head, &session))
    }

    fn csrf_ok(&self, head: &RequestHead, session: &Session) -> bool {
        sessions::csrf_matches(
            session,
            head.headers
                .get(sessions::CSRF_HEADER)
                .map(HeaderValue::as_bytes),
        )
    }

    pub(crate) fn csrf_error(&mut self, now: Instant) {
        self.error(
            now,
            StatusCode::FORBIDDEN,
            "csrf",
            "missing or wrong x-palyra-csrf-token",
        )
    }

    /// Whether the request's `Origin` is this listener's own origin or a configured one.
    fn origin_allowed(&self, head: &RequestHead) -> bool {
        let Some(origin) = head
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let scheme = if self.operator.tls { "https" } else { "http" };
        let own = head
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")));
        own || self
            .operator
            .admin
            .as_ref()
            .is_some_and(|a| a.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)))
    }

    /// The login body arrived.
    pub(crate) fn login(&mut self, now: Instant, body: &[u8]) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let token = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.get("admin_token")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let Some(token) = token else {
            return self.error(
                now,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "body must be {\"admin_token\": string}",
            );
        };
        let header = format!("Bearer {token}");
        if let Err(denied) =
            admin
                .auth
                .check(Some(header.as_bytes()), self.peer.map(|p| p.ip()), now)
        {
            return self.denied(now, denied);
        }
        let mut random = [0u8; 64];
        (admin.random)(&mut random);
        let created = admin.sessions.create((admin.clock)(), random);
        let secure = self.operator.tls;
        self.answer_later(
            now,
            Box::new(move || {
                Some(match created.take()? {
                    Ok((cookie, session)) => {
                        let mut headers: HeaderMap = api_headers().clone();
                        if let Ok(v) = HeaderValue::from_str(&sessions::set_cookie(&cookie, secure))
                        {
                            headers.insert(http::header::SET_COOKIE, v);
                        }
                        let body = json!({"csrf_token": session.csrf,
                                          "expires_at_unix_ms": session.expires_unix_ms});
                        Reply::Full(StatusCode::OK, headers, Bytes::from(body.to_string()))
                    }
                    Err(e) => store_failed(&e),
                })
            }),
        );
    }
}
