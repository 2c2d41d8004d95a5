//! The HTTP/1.1 server connection machine.
//!
//! One request at a time is handed to the application ([`Event::Request`]); its body is decoded
//! only once the application asks for it with a limit ([`Http1Server::read_body`], which also
//! sends `100 Continue` when the client expects it). Pipelined requests wait in a bounded buffer
//! until the response is complete ([`Http1Server::wants_input`] tells the driver to stop
//! reading). A response whose request body was not read to the end closes the connection, so
//! unread bytes are never parsed as a request. [`Http1Server::upgrade`] answers 101 and hands the
//! bytes after the head to the next machine.

use super::chunked::{self, Chunk, ChunkedDecoder};
use super::{error_body, json_headers, HttpError};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits of a server connection.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Largest request head (request line and header fields).
    pub max_head: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Time from the first byte of a head to its end.
    pub head_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time a body may go without progress.
    pub body_timeout: Duration,
    /// Input held while a response is pending (pipelining) before reads pause.
    pub max_buffered: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_head: 16 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_buffered: 64 * 1024,
        }
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// Request target.
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body framing.
    pub body: BodyLength,
    /// `Expect: 100-continue` was sent.
    pub expects_continue: bool,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A request arrived; answer it with [`Http1Server::respond`] (after
    /// [`Http1Server::read_body`] if the body is wanted).
    Request(RequestHead),
    /// Body bytes.
    Body(Bytes),
    /// The body is complete.
    BodyEnd,
    /// The machine answered an error itself (the request, if one was announced, is over).
    Rejected(HttpError),
}

/// A response body.
#[derive(Debug, Clone)]
pub enum ResponseBody {
    /// The whole body (sent with `Content-Length`).
    Full(Bytes),
    /// Streamed with [`Http1Server::send_chunk`] and [`Http1Server::finish`] (chunked on 1.1,
    /// close-delimited on 1.0).
    Stream,
}

/// Misuse of the machine by the application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No request is waiting for this command.
    #[error("no request is waiting for this")]
    NoRequest,
    /// The response was already started.
    #[error("a response is already under way")]
    AlreadyResponding,
    /// No streamed response is open.
    #[error("no streamed response is open")]
    NotStreaming,
}

#[derive(Debug)]
enum BodyState {
    /// Not asked for yet.
    Unread,
    Length {
        left: u64,
    },
    Chunked {
        decoder: ChunkedDecoder,
        received: u64,
        limit: u64,
    },
    Done,
}

#[derive(Debug)]
enum State {
    /// Waiting for (or reading) a request head.
    Head,
    /// A request is with the application.
    Request {
        head_method: Method,
        version: Version,
        keep_alive: bool,
        body: BodyState,
        response: Response,
        body_deadline: Option<Instant>,
    },
    /// Switched protocols: the rest belongs to the next machine.
    Upgraded,
    /// Write what is queued, then close.
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    None,
    Streaming { chunked: bool },
    Done,
}

/// An HTTP/1.1 server connection.
pub struct Http1Server {
    config: ServerConfig,
    state: State,
    buf: BytesMut,
    out: BytesMut,
    events: VecDeque<Event>,
    /// When the current head began (first byte) or the connection went idle.
    head_started: Option<Instant>,
    idle_since: Instant,
    eof: bool,
    /// Body framing of the request with the application, until it reads or skips it.
    pending_framing: Option<BodyLength>,
    /// The current request expects `100 Continue` before its body.
    expects_continue: bool,
    /// Added to the answers the machine writes itself (security headers).
    error_headers: HeaderMap,
}

const KNOWN_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

impl Http1Server {
    /// A new connection.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        Self {
            config,
            state: State::Head,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            head_started: None,
            idle_since: now,
            eof: false,
            pending_framing: None,
            expects_continue: false,
            error_headers: HeaderMap::new(),
        }
    }

    /// Header fields added to the error answers the machine writes itself.
    pub fn set_error_headers(&mut self, headers: HeaderMap) {
        self.error_headers = headers;
    }

    /// Bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if matches!(self.state, State::Closing | State::Upgraded) {
            if matches!(self.state, State::Upgraded) {
                self.buf.extend_from_slice(bytes);
            }
            return;
        }
        if !bytes.is_empty() && matches!(self.state, State::Head) && self.head_started.is_none() {
            self.head_started = Some(now);
        }
        self.buf.extend_from_slice(bytes);
        self.process(now);
    }

    /// The peer closed its side.
    pub fn handle_eof(&mut self) {
        self.eof = true;
        match &self.state {
            State::Head => self.state = State::Closing,
            // A body being read can never complete.
            State::Request { body, .. } if !matches!(body, BodyState::Done | BodyState::Unread) => {
                self.state = State::Closing
            }
            _ => {}
        }
    }

    /// Expired timers: slow heads (408), idle keep-alive (silent close), stalled bodies (408).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Head => {
                if let Some(started) = self.head_started {
                    if now >= started + self.config.head_timeout {
                        self.reject(HttpError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            "request head not received in time",
                        ));
                    }
                } else if now >= self.idle_since + self.config.idle_timeout {
                    self.state = State::Closing;
                }
            }
            State::Request {
                body_deadline: Some(deadline),
                response: Response::None,
                ..
            } if now >= *deadline => {
                self.reject(HttpError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "request body stalled",
                ));
            }
            _ => {}
        }
    }

    /// The next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Head => Some(match self.head_started {
                Some(started) => started + self.config.head_timeout,
                None => self.idle_since + self.config.idle_timeout,
            }),
            State::Request {
                body_deadline,
                response: Response::None,
                ..
            } => *body_deadline,
            _ => None,
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Whether the driver should read more (false while pipelined input is held at the limit).
    pub fn wants_input(&self) -> bool {
        match &self.state {
            State::Head => true,
            State::Request { body, .. } => {
                matches!(body, BodyState::Length { .. } | BodyState::Chunked { .. })
                    || self.buf.len() < self.config.max_buffered
            }
            State::Upgraded | State::Closing => false,
        }
    }

    /// Whether the connection waits for a request with nothing of one received (idle between
    /// requests or never used).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head) && self.buf.is_empty() && self.out.is_empty()
    }

    /// Whether the connection is finished (close after writing what [`Self::poll_transmit`] gives).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closing) && self.out.is_empty()
    }

    /// Whether the connection switched protocols.
    pub fn is_upgraded(&self) -> bool {
        matches!(self.state, State::Upgraded)
    }

    /// After an upgrade: the bytes the client sent after the request head (for the next machine).
    pub fn take_upgraded(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// The application wants the body, up to `limit` bytes (more is answered 413 and closes).
    pub fn read_body(&mut self, now: Instant, limit: u64) -> Result<(), CommandError> {
        let State::Request { body, .. } = &mut self.state else {
            return Err(CommandError::NoRequest);
        };
        if !matches!(body, BodyState::Unread) {
            return Ok(());
        }
        // The framing was recorded when the request was announced.
        let framing = self.pending_framing.take().unwrap_or(BodyLength::Empty);
        match framing {
            BodyLength::Empty => {
                *body = BodyState::Done;
                self.events.push_back(Event::BodyEnd);
                return Ok(());
            }
            BodyLength::Length(n) if n > limit => {
                self.reject(too_large(limit));
                return Ok(());
            }
            BodyLength::Length(n) => *body = BodyState::Length { left: n },
            BodyLength::Chunked => {
                *body = BodyState::Chunked {
                    decoder: ChunkedDecoder::new(),
                    received: 0,
                    limit,
                }
            }
        }
        if self.expects_continue {
            self.expects_continue = false;
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if let State::Request { body_deadline, .. } = &mut self.state {
            *body_deadline = Some(now + self.config.body_timeout);
        }
        self.process(now);
        Ok(())
    }

    /// Starts (and with a full body, completes) the response to the current request.
    pub fn respond(
        &mut self,
        now: Instant,
        status: StatusCode,
        headers: &HeaderMap,
        body: ResponseBody,
    ) -> Result<(), CommandError> {
        let State::Request {
            head_method,
            version,
            keep_alive,
            body: request_body,
            response,
            ..
        } = &mut self.state
        else {
            return Err(CommandError::NoRequest);
        };
        if *response != Response::None {
            return Err(CommandError::AlreadyResponding);
        }
        // An unread or partly read body leaves the framing in doubt: close after this response.
        let body_finished = matches!(request_body, BodyState::Done)
            || (matches!(request_body, BodyState::Unread)
                && matches!(self.pending_framing, None | Some(BodyLength::Empty)));
        if !body_finished {
            *keep_alive = false;
        } else if matches!(request_body, BodyState::Unread) {
            // A request without a body needs no reading.
            *request_body = BodyState::Done;
            self.pending_framing = None;
        }
        let head_only = *head_method == Method::HEAD;
        let no_body = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let chunked = matches!(body, ResponseBody::Stream) && *version == Version::HTTP_11;
        if matches!(body, ResponseBody::Stream) && !chunked {
            // HTTP/1.0: the end of the body is the end of the connection.
            *keep_alive = false;
        }
        // Framing fields are ours: the caller's are written without them.
        let mut length = [0u8; 20];
        let mut framing: [(&str, &[u8]); 2] = [("", b""), ("", b"")];
        match &body {
            ResponseBody::Full(bytes) if !no_body => {
                framing[0] = ("content-length", format_len(&mut length, bytes.len()));
            }
            ResponseBody::Stream if chunked && !no_body => {
                framing[0] = ("transfer-encoding", b"chunked");
            }
            _ => {}
        }
        if !*keep_alive {
            framing[1] = ("connection", b"close");
        } else if *version == Version::HTTP_10 {
            framing[1] = ("connection", b"keep-alive");
        }
        write_head(&mut self.out, *version, status, headers, &framing);
        match body {
            ResponseBody::Full(bytes) => {
                if !head_only && !no_body {
                    self.out.extend_from_slice(&bytes);
                }
                *response = Response::Done;
            }
            ResponseBody::Stream => {
                *response = Response::Streaming {
                    chunked: chunked && !head_only && !no_body,
                };
                if head_only || no_body {
                    *response = Response::Done;
                }
            }
        }
        self.after_response(now);
        Ok(())
    }

    /// Sends part of a streamed response body.
    pub fn send_chunk(&mut self, data: &[u8]) -> Result<(), CommandError> {
        match &self.state {
            State::Request {
                response: Response::Streaming { chunked },
                ..
            } => {
                if *chunked {
                    chunked::encode_chunk(&mut self.out, data);
                } else {
                    self.out.extend_from_slice(data);
                }
                Ok(())
            }
            _ => Err(CommandError::NotStreaming),
        }
    }

    /// Ends a streamed response body.
    pub fn finish(&mut self, now: Instant) -> Result<(), CommandError> {
        let State::Request { response, .. } = &mut self.state else {
            return Err(CommandError::NotStreaming);
        };
        let Response::Streaming { chunked } = *response else {
            return Err(CommandError::NotStreaming);
        };
        if chunked {
            chunked::encode_last(&mut self.out);
        }
        *response = Response::Done;
        self.after_response(now);
        Ok(())
    }

    /// Answers `101 Switching Protocols` with `headers`; the connection now belongs to the
    /// protocol named there (see [`Self::take_upgraded`]).
    pub fn upgrade(&mut self, headers: &HeaderMap) -> Result<(), CommandError> {
        let State::Request { response, .. } = &self.state else {
            return Err(CommandError::NoRequest);
        };
        if *response != Response::None {
            return Err(CommandError::AlreadyResponding);
        }
        write_head(
            &mut self.out,
            Version::HTTP_11,
            StatusCode::SWITCHING_PROTOCOLS,
            headers,
            &[("connection", b"Upgrade")],
        );
        self.state = State::Upgraded;
        Ok(())
    }

    /// Once the response is complete and the body consumed: next request, or close.
    fn after_response(&mut self, now: Instant) {
        let State::Request {
            keep_alive,
            body,
            response: Response::Done,
            ..
        } = &self.state
        else {
            return;
        };
        if !*keep_alive {
            self.state = State::Closing;
            return;
        }
        if !matches!(body, BodyState::Done) {
            // Still reading the body the app asked for: wait for it.
            return;
        }
        self.state = State::Head;
        self.pending_framing = None;
        self.expects_continue = false;
        self.idle_since = now;
        self.head_started = (!self.buf.is_empty()).then_some(now);
        self.process(now);
    }

    fn reject(&mut self, error: HttpError) {
        let version = match &self.state {
            State::Request { version, .. } => *version,
            _ => Version::HTTP_11,
        };
        let responding = matches!(
            self.state,
            State::Request {
                response: Response::Streaming { .. } | Response::Done,
                ..
            }
        );
        if !responding {
            let body = error_body(error.code, &error.message);
            let mut fields = self.error_headers.clone();
            fields.extend(json_headers());
            let mut length = [0u8; 20];
            let framing = [
                ("content-length", format_len(&mut length, body.len())),
                ("connection", b"close".as_slice()),
            ];
            write_head(&mut self.out, version, error.status, &fields, &framing);
            self.out.extend_from_slice(&body);
        }
        self.events.push_back(Event::Rejected(error));
        self.buf.clear();
        self.state = State::Closing;
    }

    fn process(&mut self, now: Instant) {
        loop {
            match &mut self.state {
                State::Head => {
                    if self.buf.is_empty() {
                        if self.eof {
                            self.state = State::Closing;
                        }
                        return;
                    }
                    match self.parse_head() {
                        Ok(None) => return,
                        Ok(Some(head)) => {
                            self.head_started = None;
                            self.pending_framing = Some(head.body);
                            self.expects_continue = head.expects_continue;
                            self.state = State::Request {
                                head_method: head.method.clone(),
                                version: head.version,
                                keep_alive: head.keep_alive,
                                body: BodyState::Unread,
                                response: Response::None,
                                body_deadline: None,
                            };
                            self.events.push_back(Event::Request(head));
                            return;
                        }
                        Err(error) => {
                            self.reject(error);
                            return;
                        }
                    }
                }
                State::Request {
                    body,
                    body_deadline,
                    ..
                } => {
                    let progressed = match body {
                        BodyState::Length { left } => {
                            if self.buf.is_empty() {
                                false
                            } else {
                                let take = (*left).min(self.buf.len() as u64) as usize;
                                let data = self.buf.split_to(take).freeze();
                                *left -= take as u64;
                                self.events.push_back(Event::Body(data));
                                if *left == 0 {
                                    *body = BodyState::Done;
                                    self.events.push_back(Event::BodyEnd);
                                }
                                true
                            }
                        }
                        BodyState::Chunked {
                            decoder,
                            received,
                            limit,
                        } => match decoder.decode(&mut self.buf) {
                            Ok(None) => false,
                            Ok(Some(Chunk::Data(data))) => {
                                *received += data.len() as u64;
                                if *received > *limit {
                                    let limit = *limit;
                                    self.reject(too_large(limit));
                                    return;
                                }
                                self.events.push_back(Event::Body(data));
                                true
                            }
                            Ok(Some(Chunk::End)) => {
                                *body = BodyState::Done;
                                self.events.push_back(Event::BodyEnd);
                                true
                            }
                            Err(e) => {
                                self.reject(HttpError::bad_request(e.to_string()));
                                return;
                            }
                        },
                        BodyState::Unread | BodyState::Done => false,
                    };
                    if !progressed {
                        return;
                    }
                    if matches!(body, BodyState::Done) {
                        *body_deadline = None;
                        self.after_response(now);
                        if !matches!(self.state, State::Head) {
                            return;
                        }
                    } else {
                        *body_deadline = Some(now + self.config.body_timeout);
                    }
                }
                State::Upgraded | State::Closing => return,
            }
        }
    }

    fn parse_head(&mut self) -> Result<Option<RequestHead>, HttpError> {
        let mut headers = vec![httparse::EMPTY_HEADER; self.config.max_headers];
        let mut request = httparse::Request::new(&mut headers);
        let status = match request.parse(&self.buf) {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "header_too_large",
                    format!("more than {} header fields", self.config.max_headers),
                ))
            }
            Err(e) => {
                return Err(HttpError::bad_request(format!(
                    "malformed request head: {e}"
                )))
            }
        };
        let httparse::Status::Complete(len) = status else {
            if self.buf.len() > self.config.max_head {
                return Err(header_too_large(self.config.max_head));
            }
            return Ok(None);
        };
        if len > self.config.max_head {
            return Err(header_too_large(self.config.max_head));
        }
        let method_text = request.method.unwrap_or_default();
        let method = KNOWN_METHODS
            .iter()
            .find(|m| m.as_str() == method_text)
            .cloned()
            .ok_or_else(|| {
                HttpError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    format!("method {method_text:?} is not implemented"),
                )
            })?;
        let version = match request.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let uri: Uri = request
            .path
            .unwrap_or_default()
            .parse()
            .map_err(|_| HttpError::bad_request("malformed request target"))?;
        let mut map = HeaderMap::with_capacity(request.headers.len());
        for h in request.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| HttpError::bad_request(format!("invalid header name {:?}", h.name)))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| HttpError::bad_request(format!("invalid value of {}", h.name)))?;
            map.append(name, value);
        }
        let body = body_length(&map, version)?;
        if version == Version::HTTP_11 && map.get_all(http::header::HOST).iter().count() != 1 {
            return Err(HttpError::bad_request(
                "HTTP/1.1 requests need exactly one Host",
            ));
        }
        let connection = |token: &str| {
            map.get_all(http::header::CONNECTION).iter().any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        let keep_alive = match version {
            Version::HTTP_10 => connection("keep-alive"),
            _ => !connection("close"),
        };
        let expects_continue = version == Version::HTTP_11
            && map
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        self.buf.advance(len);
        Ok(Some(RequestHead {
            method,
            uri,
            version,
            headers: map,
            body,
            expects_continue,
            keep_alive,
        }))
    }
}

fn header_too_large(max: usize) -> HttpError {
    HttpError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header_too_large",
        format!("request head exceeds {max} bytes"),
    )
}

fn too_large(limit: u64) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {limit} bytes"),
    )
}

/// Body framing per RFC 9112 section 6, refusing every ambiguity that could smuggle a request.
fn body_length(map: &HeaderMap, version: Version) -> Result<BodyLength, HttpError> {
    let lengths: Vec<&HeaderValue> = map.get_all(http::header::CONTENT_LENGTH).iter().collect();
    let codings: Vec<&HeaderValue> = map
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(HttpError::bad_request(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let all: Vec<String> = codings
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        if all.len() == 1 && all[0] == "chunked" {
            return Ok(BodyLength::Chunked);
        }
        if all.last().is_some_and(|t| t == "chunked") {
            return Err(HttpError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                "transfer codings other than chunked are not implemented",
            ));
        }
        return Err(HttpError::bad_request(
            "Transfer-Encoding must end with chunked",
        ));
    }
    match lengths.as_slice() {
        [] => Ok(BodyLength::Empty),
        [one] => {
            let text = one.as_bytes();
            if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::bad_request("malformed Content-Length"));
            }
            let n: u64 = std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| HttpError::bad_request("malformed Content-Length"))?;
            Ok(if n == 0 {
                BodyLength::Empty
            } else {
                BodyLength::Length(n)
            })
        }
        _ => Err(HttpError::bad_request("duplicate Content-Length")),
    }
}

/// Decimal digits of `n` in `buf`.
fn format_len(buf: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes the status line, the caller's fields except framing ones, then `framing`.
fn write_head(
    out: &mut BytesMut,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    framing: &[(&str, &[u8])],
) {
    let version = if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let framing_names = [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::CONNECTION,
    ];
    let fields = headers
        .iter()
        .filter(|(name, _)| !framing_names.contains(name))
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .chain(framing.iter().copied().filter(|(name, _)| !name.is_empty()));
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
