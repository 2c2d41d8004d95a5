//! WebSocket (RFC 6455) as a sans-IO machine: the upgrade handshake checks on an HTTP/1.1
//! request ([`accept_upgrade`]), and tungstenite's frame and message layer run over in-memory
//! buffers ([`WsConnection`]).
//!
//! Limits and answers: a message over [`WsConfig::max_message`] or a frame over
//! [`WsConfig::max_frame`] closes with 1009; protocol violations with 1002; invalid UTF-8 in a
//! text message with 1007; a peer that does not answer our pings within
//! [`WsConfig::pong_timeout`] is closed with [`close_code::KEEPALIVE_TIMEOUT`] (4000); output the
//! peer does not read beyond [`WsConfig::max_queued`] closes with [`close_code::TOO_SLOW`]
//! (4001). Pings are sent every [`WsConfig::ping_interval`], driven by `poll_timeout`.

use crate::http1::server::RequestHead;
use crate::http1::HttpError;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// Close codes used here (RFC 6455 section 7.4, and 4xxx for our own reasons).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A message of a kind the endpoint does not take (binary where text is expected).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid data (non-UTF-8 text).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (e.g. a message the endpoint does not accept).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL: u16 = 1011;
    /// The peer did not answer pings in time.
    pub const KEEPALIVE_TIMEOUT: u16 = 4000;
    /// The peer reads too slowly: its queue overflowed; resume by cursor.
    pub const TOO_SLOW: u16 = 4001;
}

/// Limits and timers of a WebSocket connection.
#[derive(Debug, Clone, Copy)]
pub struct WsConfig {
    /// Largest message (after reassembly).
    pub max_message: usize,
    /// Largest frame.
    pub max_frame: usize,
    /// Interval between our pings.
    pub ping_interval: Duration,
    /// Time a peer has to show life (any frame) after a ping.
    pub pong_timeout: Duration,
    /// Output queued for a peer that does not read, before it is closed.
    pub max_queued: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message: 1024 * 1024,
            max_frame: 256 * 1024,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            max_queued: 1024 * 1024,
        }
    }
}

/// Checks a WebSocket upgrade request; returns the `101` header fields (with the negotiated
/// subprotocol, the first of `protocols` the client offered) or the HTTP error to answer.
pub fn accept_upgrade(
    head: &RequestHead,
    protocols: &[&str],
) -> Result<(HeaderMap, Option<String>), HttpError> {
    let bad = |m: &str| HttpError::bad_request(format!("WebSocket upgrade: {m}"));
    if head.method != Method::GET {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "WebSocket upgrades use GET",
        ));
    }
    let tokens = |name: http::header::HeaderName| -> Vec<String> {
        head.headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    if !tokens(http::header::UPGRADE)
        .iter()
        .any(|t| t == "websocket")
    {
        return Err(HttpError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket only",
        ));
    }
    if !tokens(http::header::CONNECTION)
        .iter()
        .any(|t| t == "upgrade")
    {
        return Err(bad("Connection must include upgrade"));
    }
    if head
        .headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(HttpError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_version",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = head
        .headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("Sec-WebSocket-Key missing"))?;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| bad("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(bad("Sec-WebSocket-Key must encode 16 bytes"));
    }
    let offered = tokens(http::header::SEC_WEBSOCKET_PROTOCOL);
    let chosen = protocols
        .iter()
        .find(|p| offered.iter().any(|o| o == &p.to_ascii_lowercase()))
        .map(|p| p.to_string());
    if !protocols.is_empty() && chosen.is_none() {
        return Err(bad(&format!(
            "subprotocol required: {}",
            protocols.join(", ")
        )));
    }
    let mut headers = HeaderMap::new();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    headers.insert(
        http::header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|_| bad("accept key"))?,
    );
    if let Some(p) = &chosen {
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(p).map_err(|_| bad("subprotocol"))?,
        );
    }
    Ok((headers, chosen))
}

/// In-memory transport under tungstenite: reads what the driver fed, collects what it writes.
#[derive(Debug, Default)]
struct Mem {
    input: BytesMut,
    output: BytesMut,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input.split_to(n));
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// The connection is closing or closed, with this code and reason (ours or the peer's).
    Closed {
        /// Close code.
        code: u16,
        /// Reason text.
        reason: String,
    },
}

/// A server-side WebSocket connection.
pub struct WsConnection {
    ws: WebSocket<Mem>,
    config: WsConfig,
    events: VecDeque<WsEvent>,
    next_ping: Instant,
    /// Set when a ping is out: the peer must show life before it.
    pong_deadline: Option<Instant>,
    closing: bool,
    closed: bool,
    /// Bytes handed to the driver but possibly not yet read by the peer are not known here;
    /// this counts what is queued in the machine.
    queued: usize,
}

impl WsConnection {
    /// A connection after a successful upgrade; `leftover` are bytes that followed the request.
    pub fn new(config: WsConfig, now: Instant, leftover: &[u8]) -> Self {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message))
            .max_frame_size(Some(config.max_frame))
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let mut mem = Mem::default();
        mem.input.extend_from_slice(leftover);
        let mut conn = Self {
            ws: WebSocket::from_raw_socket(mem, Role::Server, Some(ws_config)),
            config,
            events: VecDeque::new(),
            next_ping: now + config.ping_interval,
            pong_deadline: None,
            closing: false,
            closed: false,
            queued: 0,
        };
        conn.read_all(now);
        conn
    }

    /// Bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed {
            return;
        }
        if !bytes.is_empty() {
            // Any frame is a sign of life.
            self.pong_deadline = None;
        }
        self.ws.get_mut().input.extend_from_slice(bytes);
        self.read_all(now);
    }

    fn read_all(&mut self, _now: Instant) {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => self.events.push_back(WsEvent::Text(text.to_string())),
                Ok(Message::Binary(data)) => self.events.push_back(WsEvent::Binary(data)),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    self.events.push_back(WsEvent::Closed { code, reason });
                    self.closing = true;
                    // tungstenite queued the echo of the close frame.
                    let _ = self.ws.flush();
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.closed = true;
                    break;
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    self.fail(close_code::TOO_BIG, &e.to_string());
                    break;
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    self.fail(close_code::INVALID_DATA, "text message is not valid UTF-8");
                    break;
                }
                Err(e) => {
                    self.fail(close_code::PROTOCOL, &e.to_string());
                    break;
                }
            }
        }
    }

    /// Closes because of the peer's fault: close frame out, then the transport closes.
    fn fail(&mut self, code: u16, reason: &str) {
        self.close(code, reason);
        self.closed_after_flush();
    }

    fn closed_after_flush(&mut self) {
        self.closing = true;
        self.closed = true;
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text));
    }

    /// Sends a text message already encoded (shared, not copied until framing); bytes that are
    /// not UTF-8 are dropped.
    pub fn send_text_shared(&mut self, text: Bytes) {
        if let Ok(text) = tungstenite::Utf8Bytes::try_from(text) {
            self.send(Message::Text(text));
        }
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: Bytes) {
        self.send(Message::Binary(data));
    }

    fn send(&mut self, message: Message) {
        if self.closing || self.closed {
            return;
        }
        if self.ws.send(message).is_err() {
            self.closed = true;
        }
        self.queued = self.ws.get_ref().output.len();
        if self.queued > self.config.max_queued {
            self.ws.get_mut().output.clear();
            self.fail(close_code::TOO_SLOW, "reader too slow; resume by cursor");
        }
    }

    /// Starts a close handshake with `code` and `reason` (at most 123 bytes are sent).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason[..end].to_owned().into(),
        };
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
        self.events.push_back(WsEvent::Closed {
            code,
            reason: reason[..end].to_owned(),
        });
    }

    /// Output bytes waiting in the machine (for slow-reader policies above it).
    pub fn queued_bytes(&self) -> usize {
        self.ws.get_ref().output.len()
    }

    /// Keepalive: sends pings, closes a silent peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            self.fail(close_code::KEEPALIVE_TIMEOUT, "no answer to ping");
            return;
        }
        if now >= self.next_ping && !self.closing {
            let _ = self.ws.send(Message::Ping(Bytes::from_static(b"palyra")));
            self.next_ping = now + self.config.ping_interval;
            self.pong_deadline
                .get_or_insert(now + self.config.pong_timeout);
        }
    }

    /// The next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        [Some(self.next_ping), self.pong_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<WsEvent> {
        self.events.pop_front()
    }

    /// Bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let out = &mut self.ws.get_mut().output;
        self.queued = 0;
        (!out.is_empty()).then(|| out.split().freeze())
    }

    /// Whether the transport should be closed (after writing what is queued).
    pub fn is_closed(&self) -> bool {
        (self.closed || (self.closing && !self.ws.can_write()))
            && self.ws.get_ref().output.is_empty()
    }

    /// The peer closed the transport.
    pub fn handle_eof(&mut self) {
        if !self.closing {
            self.events.push_back(WsEvent::Closed {
                code: 1006,
                reason: "connection closed without a close frame".into(),
            });
        }
        self.closed = true;
        self.ws.get_mut().output.clear();
    }
}

#[cfg(test)]
mod tests;
