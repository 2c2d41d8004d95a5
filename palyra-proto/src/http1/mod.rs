//! HTTP/1.1 (RFC 9112) as sans-IO machines over `httparse` and the `http` types: a server
//! connection ([`server::Http1Server`]) and a client connection ([`client::Http1Client`]).
//!
//! The server answers protocol violations itself, with the JSON error envelope
//! `{"error": message, "code": code}` and `Connection: close` where the framing can no longer be
//! trusted: head over 16 KiB → 431, head not complete within 10 s → 408, body over the route's
//! limit → 413, Content-Length with Transfer-Encoding, duplicate or malformed Content-Length,
//! obs-fold, bad chunk framing → 400 (no request smuggling), unknown method or transfer coding
//! → 501.

pub mod chunked;
pub mod client;
pub mod server;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

/// The body of an error answer: `{"error": message, "code": code}`.
pub fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message, "code": code }).to_string())
}

/// The answer of a listener at its connection cap: `503 Service Unavailable` with
/// `Retry-After`, the JSON error envelope, `extra` headers (security headers), and
/// `Connection: close`.
pub fn overloaded_response(extra: &HeaderMap, retry_after_secs: u32) -> Bytes {
    let body = error_body(
        "overloaded",
        "the server is at its connection limit; retry shortly",
    );
    let mut head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: {retry_after_secs}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Headers of a JSON answer.
pub fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// A machine-generated error: status, code word, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// Status to answer with.
    pub status: StatusCode,
    /// Short machine-readable code (`bad_request`, `payload_too_large`, ...).
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
}

impl HttpError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}
