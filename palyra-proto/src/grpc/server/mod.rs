//! The gRPC server machine: an HTTP/2 server connection whose streams are gRPC calls.
//!
//! Events: a call starts (path, metadata, deadline), its messages arrive, the client half-closes
//! or cancels. Commands: send initial metadata, send messages, finish with a status (as trailers,
//! or trailers-only when nothing was sent). Deadlines from `grpc-timeout` are enforced here: an
//! expired call is finished with DEADLINE_EXCEEDED and reset, and the application is told.

use super::codec::{self, Code, MessageDecoder, Status};
use crate::h2::conn::{Config as H2Config, Connection, Event as H2Event, Role};
use crate::h2::frame::{ErrorCode, StreamId};
use crate::h2::hpack::Field;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Identifies a call (its HTTP/2 stream).
pub type CallId = StreamId;

/// Settings of the gRPC server.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// HTTP/2 limits.
    pub h2: H2Config,
    /// Largest message accepted or sent (4 MiB, as the original).
    pub max_message: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            h2: H2Config::default(),
            max_message: codec::DEFAULT_MAX_MESSAGE,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new call to `path` (`/package.Service/Method`).
    Call {
        /// The call.
        call: CallId,
        /// Full method path.
        path: String,
        /// Request metadata (not pseudo-headers or gRPC transport headers).
        metadata: Vec<Field>,
        /// When the client's deadline expires, if it sent one.
        deadline: Option<Instant>,
        /// When the call arrived.
        started: Instant,
    },
    /// One request message.
    Message {
        /// The call.
        call: CallId,
        /// The serialized message.
        message: Bytes,
    },
    /// The client sent all its messages.
    HalfClosed {
        /// The call.
        call: CallId,
    },
    /// The call ended without the application finishing it: the client cancelled, the deadline
    /// passed, or the stream failed. Do not answer it any more.
    Cancelled {
        /// The call.
        call: CallId,
        /// Why.
        status: Status,
    },
    /// The connection is finished.
    Closed {
        /// Why.
        reason: String,
    },
}

struct Call {
    decoder: MessageDecoder,
    deadline: Option<Instant>,
    headers_sent: bool,
    half_closed: bool,
}

/// A gRPC server connection.
pub struct GrpcServer {
    conn: Connection,
    config: ServerConfig,
    calls: HashMap<CallId, Call>,
    events: VecDeque<Event>,
}

/// Errors of server commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The call is finished or unknown.
    #[error("call {0} is not open")]
    NotOpen(CallId),
    /// The message exceeds the limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
}

fn field(name: &'static str, value: impl Into<Bytes>) -> Field {
    Field::new(Bytes::from_static(name.as_bytes()), value)
}

/// Headers a client may not pass as metadata (HTTP/2 and gRPC transport headers).
fn is_transport_header(name: &[u8]) -> bool {
    name.starts_with(b":")
        || matches!(
            name,
            b"content-type"
                | b"te"
                | b"grpc-timeout"
                | b"grpc-encoding"
                | b"grpc-accept-encoding"
                | b"user-agent"
                | b"content-length"
        )
}

impl GrpcServer {
    /// A server connection (it expects the client preface).
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        Self {
            conn: Connection::new(Role::Server, config.h2, now),
            config,
            calls: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Feeds bytes from the transport.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.conn.handle_input(now, bytes);
        self.process(now);
    }

    /// Handles expired HTTP/2 timers and call deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        let expired = super::expired_calls(&self.calls, |c| c.deadline, now);
        for call in expired {
            let status = Status::new(Code::DeadlineExceeded, "deadline exceeded");
            let _ = self.finish(call, &status, &[]);
            self.conn.reset(call, ErrorCode::Cancel);
            self.events.push_back(Event::Cancelled { call, status });
        }
        self.process(now);
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        super::next_deadline(&self.calls, |c| c.deadline, self.conn.poll_timeout())
    }

    /// Bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.conn.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the connection is finished.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Calls in progress.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Graceful shutdown: no new calls; open calls may finish.
    pub fn go_away(&mut self) {
        self.conn
            .go_away(ErrorCode::NoError, "server shutting down");
    }

    /// Sends response headers (`:status 200`, content type, and `metadata`) if not sent yet.
    pub fn send_headers(&mut self, call: CallId, metadata: &[Field]) -> Result<(), CallError> {
        let state = self.calls.get_mut(&call).ok_or(CallError::NotOpen(call))?;
        if state.headers_sent {
            return Ok(());
        }
        state.headers_sent = true;
        let mut fields = vec![
            field(":status", "200"),
            field("content-type", "application/grpc"),
        ];
        fields.extend_from_slice(metadata);
        self.conn
            .send_headers(call, &fields, false)
            .map_err(|_| CallError::NotOpen(call))
    }

    /// Response bytes of `call` queued behind flow control.
    pub fn queued_bytes(&self, call: CallId) -> usize {
        self.conn.queued_len(call)
    }

    /// Sends one response message.
    pub fn send_message(&mut self, call: CallId, message: &[u8]) -> Result<(), CallError> {
        if message.len() > self.config.max_message {
            return Err(CallError::TooLarge {
                len: message.len(),
                max: self.config.max_message,
            });
        }
        self.send_headers(call, &[])?;
        let mut framed = BytesMut::with_capacity(message.len() + 5);
        codec::encode_message(message, &mut framed);
        self.conn
            .send_data(call, framed.freeze(), false)
            .map_err(|_| CallError::NotOpen(call))
    }

    /// Ends the call with `status` and trailing metadata.
    pub fn finish(
        &mut self,
        call: CallId,
        status: &Status,
        trailers: &[Field],
    ) -> Result<(), CallError> {
        let state = self.calls.remove(&call).ok_or(CallError::NotOpen(call))?;
        let mut fields = Vec::with_capacity(4 + trailers.len());
        if !state.headers_sent {
            // Trailers-only response.
            fields.push(field(":status", "200"));
            fields.push(field("content-type", "application/grpc"));
        }
        fields.push(field("grpc-status", (status.code as u8).to_string()));
        if !status.message.is_empty() {
            fields.push(field(
                "grpc-message",
                codec::percent_encode(&status.message),
            ));
        }
        fields.extend_from_slice(trailers);
        let result = self.conn.send_headers(call, &fields, true);
        if !state.half_closed && self.conn.queued_len(call) == 0 {
            // The response is complete but the client may still be sending: ask it to stop
            // without error (RFC 9113 8.1). With data still queued the stream stays open until
            // the queue drains and the client ends its side.
            self.conn.reset(call, ErrorCode::NoError);
        }
        result.map_err(|_| CallError::NotOpen(call))
    }

    fn reject_http(&mut self, stream: StreamId, status: &'static str, end_stream: bool) {
        let _ = self
            .conn
            .send_headers(stream, &[field(":status", status)], true);
        if !end_stream {
            self.conn.reset(stream, ErrorCode::NoError);
        }
    }

    fn process(&mut self, now: Instant) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                H2Event::Headers {
                    stream,
                    fields,
                    end_stream,
                } => {
                    if self.calls.contains_key(&stream) {
                        // Trailers from the client are not part of gRPC; treat as half-close.
                        self.on_half_close(stream);
                        continue;
                    }
                    self.on_call(now, stream, fields, end_stream);
                }
                H2Event::Data {
                    stream,
                    data,
                    end_stream,
                } => {
                    let Some(call) = self.calls.get_mut(&stream) else {
                        continue;
                    };
                    call.decoder.handle_input(&data);
                    loop {
                        match call.decoder.poll_message() {
                            Ok(Some(message)) => self.events.push_back(Event::Message {
                                call: stream,
                                message,
                            }),
                            Ok(None) => break,
                            Err(status) => {
                                let _ = self.finish(stream, &status, &[]);
                                self.events.push_back(Event::Cancelled {
                                    call: stream,
                                    status,
                                });
                                break;
                            }
                        }
                    }
                    if end_stream {
                        self.on_half_close(stream);
                    }
                }
                H2Event::Reset { stream, code, .. } => {
                    if self.calls.remove(&stream).is_some() {
                        self.events.push_back(Event::Cancelled {
                            call: stream,
                            status: Status::new(Code::Cancelled, format!("stream reset ({code})")),
                        });
                    }
                }
                H2Event::HeadersTooLarge { stream } => self.reject_http(stream, "431", false),
                H2Event::Closed { reason, .. } => {
                    for (call, _) in self.calls.drain() {
                        self.events.push_back(Event::Cancelled {
                            call,
                            status: Status::new(Code::Unavailable, reason.clone()),
                        });
                    }
                    self.events.push_back(Event::Closed { reason });
                }
                H2Event::SendCapacity { .. } | H2Event::GoAway { .. } | H2Event::PingAck { .. } => {
                }
            }
        }
    }

    fn on_half_close(&mut self, stream: StreamId) {
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        if call.decoder.has_partial() {
            let status = Status::new(Code::Internal, "stream ended inside a message");
            let _ = self.finish(stream, &status, &[]);
            self.events.push_back(Event::Cancelled {
                call: stream,
                status,
            });
            return;
        }
        call.half_closed = true;
        self.events.push_back(Event::HalfClosed { call: stream });
    }

    fn on_call(&mut self, now: Instant, stream: StreamId, fields: Vec<Field>, end_stream: bool) {
        let get = |name: &[u8]| {
            fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.value.clone())
        };
        if get(b":method").as_deref() != Some(b"POST".as_slice()) {
            return self.reject_http(stream, "405", end_stream);
        }
        let content_type = get(b"content-type").unwrap_or_default();
        if !content_type.starts_with(b"application/grpc") {
            return self.reject_http(stream, "415", end_stream);
        }
        let path = match get(b":path").map(|p| String::from_utf8(p.to_vec())) {
            Some(Ok(path)) if path.starts_with('/') && path[1..].contains('/') => path,
            _ => {
                return self.trailers_only(
                    stream,
                    Status::new(Code::Unimplemented, "malformed :path"),
                    end_stream,
                )
            }
        };
        if let Some(encoding) = get(b"grpc-encoding") {
            if encoding.as_ref() != b"identity" {
                return self.trailers_only(
                    stream,
                    Status::new(
                        Code::Unimplemented,
                        "only identity grpc-encoding is supported",
                    ),
                    end_stream,
                );
            }
        }
        let deadline = match get(b"grpc-timeout") {
            None => None,
            Some(value) => match codec::parse_timeout(&value) {
                Some(timeout) => Some(now + timeout),
                None => {
                    return self.trailers_only(
                        stream,
                        Status::new(Code::Internal, "malformed grpc-timeout"),
                        end_stream,
                    )
                }
            },
        };
        let metadata = fields
            .into_iter()
            .filter(|f| !is_transport_header(&f.name))
            .collect();
        self.calls.insert(
            stream,
            Call {
                decoder: MessageDecoder::new(self.config.max_message),
                deadline,
                headers_sent: false,
                half_closed: false,
            },
        );
        self.events.push_back(Event::Call {
            call: stream,
            path,
            metadata,
            deadline,
            started: now,
        });
        if end_stream {
            self.on_half_close(stream);
        }
    }

    fn trailers_only(&mut self, stream: StreamId, status: Status, end_stream: bool) {
        let mut fields = vec![
            field(":status", "200"),
            field("content-type", "application/grpc"),
            field("grpc-status", (status.code as u8).to_string()),
        ];
        if !status.message.is_empty() {
            fields.push(field(
                "grpc-message",
                codec::percent_encode(&status.message),
            ));
        }
        let _ = self.conn.send_headers(stream, &fields, true);
        if !end_stream {
            self.conn.reset(stream, ErrorCode::NoError);
        }
    }
}

#[cfg(test)]
mod tests;
