//! JSON messages of the palyra-quic-v1 node plane (the original's production dialect, extended).
//!
//! Requests are parsed in two steps so that the protocol version is checked before anything else:
//! a request from a later protocol version gets `protocol_mismatch`, never `invalid_request`, and
//! unknown fields are allowed so later versions can add parameters.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest event name accepted, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 128;

/// Method names of the node plane.
pub mod method {
    /// Liveness and identity check.
    pub const HEALTH: &str = "node.health";
    /// Append one event to the gateway's event log.
    pub const PUBLISH_EVENT: &str = "node.publish_event";
    /// Read (and optionally follow) the event log.
    pub const STREAM_EVENTS: &str = "node.stream_events";
}

/// Error strings carried in `{"kind":"error","error":...}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request frame is not a valid request.
    InvalidRequest,
    /// The request's protocol version is not one the server speaks.
    ProtocolMismatch,
    /// The method is unknown.
    UnsupportedMethod,
    /// The stream failed (read error, reset, truncated frame, internal failure).
    StreamFailure,
    /// The peer is not allowed to do this.
    Unauthorized,
    /// A frame exceeded the size limit.
    FrameTooLarge,
    /// The requested events were dropped by retention; `first_seq` says where the log starts now.
    ResumeGap,
    /// The server is at a limit and refused the work.
    Overloaded,
    /// The event log cannot store or serve events now (a shared store without its quorum, a
    /// failing disk); nothing was stored: retry.
    Unavailable,
    /// Any error string this version does not know (from a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire string of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::UnsupportedMethod => "unsupported_method",
            ErrorCode::StreamFailure => "stream_failure",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::ResumeGap => "resume_gap",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request frame was refused, with the error code to answer and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// Wire error code.
    pub code: ErrorCode,
    /// Explanation for the peer and the logs.
    pub message: String,
}

impl RequestError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
        }
    }
}

/// The event a node asks to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishEvent {
    /// Event name, 1..=128 bytes of printable ASCII.
    pub name: String,
    /// Any JSON value.
    #[serde(default)]
    pub payload: Value,
    /// Optional device the event is addressed to (a ULID); without it every node sees the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Optional ID the node gives this event, the same when it publishes it again after a lost
    /// answer: a log shared by several gateways stores it once and answers the first seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The longest event ID.
pub const MAX_EVENT_ID: usize = 64;

/// Whether `id` is a usable event ID: 1 to [`MAX_EVENT_ID`] letters, digits, `.`, `_`, `:` or `-`.
pub fn valid_event_id(id: &str) -> bool {
    (1..=MAX_EVENT_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A parsed, validated node-plane request.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeRequest {
    /// `node.health`.
    Health,
    /// `node.publish_event`.
    PublishEvent(PublishEvent),
    /// `node.stream_events`: events after `resume_from`, then finish unless `follow`.
    StreamEvents {
        /// Last sequence number the node already has (0 or absent: from the start).
        resume_from: Option<u64>,
        /// Keep the stream open and push new events as they are appended.
        follow: bool,
    },
}

/// Wire form of a request, used by clients to build frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Always [`PROTOCOL_VERSION`] for requests we send.
    pub protocol_version: u16,
    /// Method name.
    pub method: String,
    /// Resume cursor (`null` when absent, as the original sends it).
    pub resume_from: Option<u64>,
    /// Follow flag for `node.stream_events`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// Event for `node.publish_event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<PublishEvent>,
}

impl RequestFrame {
    /// The wire form of `request`.
    pub fn from_request(request: &NodeRequest) -> Self {
        let (method, resume_from, follow, event) = match request {
            NodeRequest::Health => (method::HEALTH, None, false, None),
            NodeRequest::PublishEvent(event) => {
                (method::PUBLISH_EVENT, None, false, Some(event.clone()))
            }
            NodeRequest::StreamEvents {
                resume_from,
                follow,
            } => (method::STREAM_EVENTS, *resume_from, *follow, None),
        };
        Self {
            protocol_version: PROTOCOL_VERSION,
            method: method.to_owned(),
            resume_from,
            follow,
            event,
        }
    }

    /// Serializes this request to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Parses and validates one request frame payload.
pub fn parse_request(payload: &[u8]) -> Result<NodeRequest, RequestError> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| RequestError::invalid(format!("request is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(RequestError::invalid("request must be a JSON object"));
    };
    // Version first: whatever else a later version changes, it gets a clear protocol_mismatch.
    match fields.get("protocol_version") {
        None => return Err(RequestError::invalid("protocol_version is required")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
            Some(v) => {
                return Err(RequestError {
                    code: ErrorCode::ProtocolMismatch,
                    message: format!(
                    "protocol_version {v} is not supported (this server speaks {PROTOCOL_VERSION})"
                ),
                })
            }
            None => {
                return Err(RequestError::invalid(
                    "protocol_version must be a non-negative integer",
                ))
            }
        },
        Some(_) => {
            return Err(RequestError::invalid(
                "protocol_version must be a non-negative integer",
            ))
        }
    }
    let method = match fields.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(RequestError::invalid("method must be a string")),
        None => return Err(RequestError::invalid("method is required")),
    };
    match method.as_str() {
        method::HEALTH => Ok(NodeRequest::Health),
        method::PUBLISH_EVENT => parse_publish(&mut fields).map(NodeRequest::PublishEvent),
        method::STREAM_EVENTS => {
            let resume_from = optional_u64(&fields, "resume_from")?;
            let follow = match fields.get("follow") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(RequestError::invalid("follow must be a boolean")),
            };
            Ok(NodeRequest::StreamEvents {
                resume_from,
                follow,
            })
        }
        other => Err(RequestError {
            code: ErrorCode::UnsupportedMethod,
            message: format!("method {:?} is not supported", truncate(other, 64)),
        }),
    }
}

fn optional_u64(fields: &Map<String, Value>, key: &str) -> Result<Option<u64>, RequestError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| RequestError::invalid(format!("{key} must be a non-negative integer"))),
        Some(_) => Err(RequestError::invalid(format!(
            "{key} must be a non-negative integer or null"
        ))),
    }
}

fn parse_publish(fields: &mut Map<String, Value>) -> Result<PublishEvent, RequestError> {
    let Some(Value::Object(mut event)) = fields.remove("event") else {
        return Err(RequestError::invalid(
            "node.publish_event requires an \"event\" object",
        ));
    };
    let name = match event.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(RequestError::invalid("event.name must be a string")),
    };
    validate_event_name(&name).map_err(|e| RequestError::invalid(e.to_string()))?;
    let payload = event.remove("payload").unwrap_or(Value::Null);
    let to = match event.remove("to") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => {
            if !crate::identity::is_canonical_device_id(&id) {
                return Err(RequestError::invalid(
                    "event.to must be a canonical device ID (26-character ULID)",
                ));
            }
            Some(id)
        }
        Some(_) => return Err(RequestError::invalid("event.to must be a string")),
    };
    let id = match event.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if valid_event_id(&id) => Some(id),
        Some(_) => {
            return Err(RequestError::invalid(format!(
                "event.id must be 1 to {MAX_EVENT_ID} letters, digits, '.', '_', ':' or '-'"
            )))
        }
    };
    Ok(PublishEvent {
        name,
        payload,
        to,
        id,
    })
}

/// Why an event (or capability) name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or longer than [`MAX_EVENT_NAME_BYTES`].
    #[error("event.name must be 1..={MAX_EVENT_NAME_BYTES} bytes long")]
    Length,
    /// Not printable ASCII, or contains a space.
    #[error("event.name must be printable ASCII without spaces")]
    Characters,
}

/// Checks an event name: 1..=128 bytes of printable ASCII without spaces.
pub fn validate_event_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_EVENT_NAME_BYTES {
        return Err(NameError::Length);
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NameError::Characters);
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Kinds of response frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseKind {
    /// Answer to `node.health`.
    Health,
    /// One event of `node.stream_events`.
    Event,
    /// Durable acknowledgement of `node.publish_event`.
    Ack,
    /// An error; the stream finishes after it.
    Error,
}

/// An event as delivered to nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    /// Event name.
    pub name: String,
    /// Device that published it (from its certificate), or `gateway` for the daemon's own events.
    pub device_id: String,
    /// When the gateway sequenced it.
    pub occurred_at_unix_ms: u64,
    /// The event's JSON payload.
    pub payload: Value,
    /// Device the event was addressed to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// One response frame. Fields that do not apply are omitted, in the original's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// What this frame is.
    pub kind: ResponseKind,
    /// False for errors.
    pub ok: bool,
    /// Sequence number of an event or an ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Health: whether the node plane requires client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_rpc_mtls_required: Option<bool>,
    /// Error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    /// Health: the authenticated device ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Health: the server's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time_unix_ms: Option<u64>,
    /// Event frames: the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventBody>,
    /// Errors: a human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `resume_gap`: the first sequence number still in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
}

impl ResponseFrame {
    fn base(kind: ResponseKind, ok: bool) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            kind,
            ok,
            seq: None,
            node_rpc_mtls_required: None,
            error: None,
            device_id: None,
            server_time_unix_ms: None,
            event: None,
            message: None,
            first_seq: None,
        }
    }

    /// A `node.health` answer.
    pub fn health(
        mtls_required: bool,
        device_id: Option<String>,
        server_time_unix_ms: u64,
    ) -> Self {
        Self {
            node_rpc_mtls_required: Some(mtls_required),
            device_id,
            server_time_unix_ms: Some(server_time_unix_ms),
            ..Self::base(ResponseKind::Health, true)
        }
    }

    /// A durable acknowledgement of a published event.
    pub fn ack(seq: u64) -> Self {
        Self {
            seq: Some(seq),
            ..Self::base(ResponseKind::Ack, true)
        }
    }

    /// One streamed event.
    pub fn event(seq: u64, event: EventBody) -> Self {
        Self {
            seq: Some(seq),
            event: Some(event),
            ..Self::base(ResponseKind::Event, true)
        }
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: Some(code),
            message: Some(message.into()),
            ..Self::base(ResponseKind::Error, false)
        }
    }

    /// A `resume_gap` error naming the first sequence number still available.
    pub fn resume_gap(requested_after: u64, first_seq: u64) -> Self {
        Self {
            first_seq: Some(first_seq),
            ..Self::error(
                ErrorCode::ResumeGap,
                format!(
                    "events after {requested_after} are no longer retained; the log starts at seq {first_seq}"
                ),
            )
        }
    }

    /// Serializes this frame to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a response frame (client side).
    pub fn parse(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn original_health_request_parses() {
        let req = br#"{"protocol_version":1,"method":"node.health","resume_from":null}"#;
        assert_eq!(parse_request(req), Ok(NodeRequest::Health));
    }

    #[test]
    fn health_response_keeps_the_original_prefix() {
        let frame = ResponseFrame {
            server_time_unix_ms: None,
            ..ResponseFrame::health(true, None, 0)
        };
        assert_eq!(
            String::from_utf8(frame.to_json()).unwrap(),
            r#"{"protocol_version":1,"kind":"health","ok":true,"node_rpc_mtls_required":true}"#
        );
    }

    #[test]
    fn version_is_checked_before_unknown_fields() {
        let req = br#"{"protocol_version":2,"method":"node.health","brand_new":{"x":1}}"#;
        assert_eq!(
            parse_request(req).unwrap_err().code,
            ErrorCode::ProtocolMismatch
        );
        let req = br#"{"protocol_version":1,"method":"node.health","brand_new":{"x":1}}"#;
        assert_eq!(parse_request(req), Ok(NodeRequest::Health));
    }

    #[test]
    fn bad_requests_get_invalid_request() {
        for bad in [
            &b""[..],
            b"[]",
            b"{}",
            b"{\"protocol_version\":\"1\",\"method\":\"node.health\"}",
            b"{\"protocol_version\":-1,\"method\":\"node.health\"}",
            b"{\"protocol_version\":1}",
            b"{\"protocol_version\":1,\"method\":7}",
            b"{\"protocol_version\":1,\"method\":\"node.stream_events\",\"resume_from\":-3}",
            b"{\"protocol_version\":1,\"method\":\"node.stream_events\",\"follow\":\"yes\"}",
            b"{\"protocol_version\":1,\"method\":\"node.publish_event\"}",
            b"{\"protocol_version\":1,\"method\":\"node.publish_event\",\"event\":{\"name\":\"\"}}",
            b"{\"protocol_version\":1,\"method\":\"node.publish_event\",\"event\":{\"name\":\"a b\"}}",
            b"{\"protocol_version\":1,\"method\":\"node.publish_event\",\"event\":{\"name\":\"a\",\"to\":\"nope\"}}",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{:?}", String::from_utf8_lossy(bad));
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn unknown_method_is_unsupported() {
        let err = parse_request(br#"{"protocol_version":1,"method":"node.reboot"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedMethod);
    }

    #[test]
    fn event_ids_are_short_plain_tokens() {
        let parse = |id: &str| {
            let frame = format!(
                r#"{{"protocol_version":1,"method":"node.publish_event","event":{{"name":"x","id":{id}}}}}"#
            );
            parse_request(frame.as_bytes())
        };
        match parse(r#""n1-k7""#) {
            Ok(NodeRequest::PublishEvent(e)) => assert_eq!(e.id.as_deref(), Some("n1-k7")),
            other => panic!("{other:?}"),
        }
        let long = format!("\"{}\"", "x".repeat(65));
        for bad in [r#""""#, r#""a b""#, r#""a/b""#, "7", long.as_str()] {
            let refused = parse(bad).expect_err(bad);
            assert_eq!(refused.code, ErrorCode::InvalidRequest, "{bad}");
            assert!(refused.message.contains("event.id"), "{}", refused.message);
        }
    }

    #[test]
    fn publish_and_stream_parse() {
        let req = br#"{"protocol_version":1,"method":"node.publish_event","event":{"name":"sensor.temp","payload":{"c":21.5}}}"#;
        match parse_request(req).unwrap() {
            NodeRequest::PublishEvent(e) => {
                assert_eq!(e.name, "sensor.temp");
                assert_eq!(e.payload["c"], 21.5);
                assert_eq!(e.to, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let req = br#"{"protocol_version":1,"method":"node.stream_events","resume_from":7,"follow":true}"#;
        assert_eq!(
            parse_request(req),
            Ok(NodeRequest::StreamEvents {
                resume_from: Some(7),
                follow: true
            })
        );
    }

    #[test]
    fn deep_json_is_rejected_not_overflowed() {
        let mut req = br#"{"protocol_version":1,"method":"node.publish_event","event":{"name":"x","payload":"#.to_vec();
        req.extend(std::iter::repeat_n(b'[', 100_000));
        req.extend(std::iter::repeat_n(b']', 100_000));
        req.extend(b"}}");
        assert_eq!(
            parse_request(&req).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    fn arb_request() -> impl Strategy<Value = NodeRequest> {
        prop_oneof![
            Just(NodeRequest::Health),
            (proptest::option::of(any::<u64>()), any::<bool>()).prop_map(
                |(resume_from, follow)| {
                    NodeRequest::StreamEvents {
                        resume_from,
                        follow,
                    }
                }
            ),
            (
                "[a-z][a-z0-9._-]{0,40}",
                any::<i64>(),
                proptest::option::of(Just("01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned()))
            )
                .prop_map(|(name, n, to)| NodeRequest::PublishEvent(PublishEvent {
                    name,
                    payload: serde_json::json!({ "n": n }),
                    to,
                    id: None,
                })),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(request in arb_request()) {
            let json = RequestFrame::from_request(&request).to_json();
            prop_assert_eq!(parse_request(&json), Ok(request));
        }

        #[test]
        fn responses_round_trip(seq in any::<u64>(), name in "[a-z.]{1,20}", first in any::<u64>()) {
            for frame in [
                ResponseFrame::ack(seq),
                ResponseFrame::resume_gap(seq, first),
                ResponseFrame::event(seq, EventBody {
                    name: name.clone(),
                    device_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
                    occurred_at_unix_ms: seq / 2,
                    payload: serde_json::json!([1, "two"]),
                    to: None,
                }),
            ] {
                prop_assert_eq!(ResponseFrame::parse(&frame.to_json()).unwrap(), frame);
            }
        }

        #[test]
        fn parse_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_request(&bytes);
        }
    }
}
