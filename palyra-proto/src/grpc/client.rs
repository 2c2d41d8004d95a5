//! The gRPC client machine: calls over one HTTP/2 client connection, with deadlines (sent as
//! `grpc-timeout` and enforced locally), metadata, and the status read from trailers, a
//! trailers-only response, the HTTP status, or a stream reset.

use super::codec::{self, Code, MessageDecoder, Status};
use crate::h2::conn::{Config as H2Config, Connection, Event as H2Event, Role};
use crate::h2::frame::{ErrorCode, StreamId};
use crate::h2::hpack::Field;
use crate::transport::StreamMachine;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Identifies a call (its HTTP/2 stream).
pub type CallId = StreamId;

/// What happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Response headers (initial metadata).
    Headers {
        /// The call.
        call: CallId,
        /// Metadata.
        metadata: Vec<Field>,
    },
    /// One response message.
    Message {
        /// The call.
        call: CallId,
        /// Serialized message.
        message: Bytes,
    },
    /// The call is over.
    Finished {
        /// The call.
        call: CallId,
        /// Its status.
        status: Status,
        /// Trailing metadata.
        trailers: Vec<Field>,
    },
    /// The connection is over; every open call has been finished with UNAVAILABLE.
    Closed {
        /// Why.
        reason: String,
    },
}

struct Call {
    decoder: MessageDecoder,
    deadline: Option<Instant>,
    got_headers: bool,
}

/// A gRPC client connection.
pub struct GrpcClient {
    conn: Connection,
    authority: String,
    scheme: &'static str,
    max_message: usize,
    calls: HashMap<CallId, Call>,
    events: VecDeque<Event>,
}

fn field(name: &str, value: impl Into<Bytes>) -> Field {
    Field::new(Bytes::copy_from_slice(name.as_bytes()), value)
}

/// The gRPC status implied by an HTTP status without `grpc-status` (gRPC HTTP mapping).
fn status_from_http(http: &[u8]) -> Status {
    let code = match http {
        b"400" => Code::Internal,
        b"401" => Code::Unauthenticated,
        b"403" => Code::PermissionDenied,
        b"404" => Code::Unimplemented,
        b"429" | b"502" | b"503" | b"504" => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("HTTP status {}", String::from_utf8_lossy(http)),
    )
}

impl GrpcClient {
    /// A client connection to `authority` (sent as `:authority`); keepalive PINGs every
    /// `keepalive` when set.
    pub fn new(authority: &str, keepalive: Option<Duration>, now: Instant) -> Self {
        let config = H2Config {
            keepalive,
            ..H2Config::default()
        };
        Self {
            conn: Connection::new(Role::Client, config, now),
            authority: authority.to_owned(),
            scheme: "http",
            max_message: codec::DEFAULT_MAX_MESSAGE,
            calls: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Marks the connection as running over TLS (`:scheme https`).
    pub fn with_tls(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// Starts a call to `path` (`/package.Service/Method`).
    pub fn start_call(
        &mut self,
        now: Instant,
        path: &str,
        metadata: &[Field],
        timeout: Option<Duration>,
    ) -> Result<CallId, Status> {
        let mut fields = vec![
            field(":method", "POST"),
            field(":scheme", self.scheme),
            field(":path", Bytes::copy_from_slice(path.as_bytes())),
            field(
                ":authority",
                Bytes::copy_from_slice(self.authority.as_bytes()),
            ),
            field("content-type", "application/grpc"),
            field("te", "trailers"),
        ];
        if let Some(timeout) = timeout {
            fields.push(field("grpc-timeout", codec::format_timeout(timeout)));
        }
        fields.extend_from_slice(metadata);
        let id = self
            .conn
            .open_stream(&fields, false)
            .map_err(|e| Status::new(Code::Unavailable, e.to_string()))?;
        self.calls.insert(
            id,
            Call {
                decoder: MessageDecoder::new(self.max_message),
                deadline: timeout.map(|t| now + t),
                got_headers: false,
            },
        );
        Ok(id)
    }

    /// Sends one request message.
    pub fn send_message(&mut self, call: CallId, message: &[u8]) -> Result<(), Status> {
        if message.len() > self.max_message {
            return Err(Status::new(
                Code::ResourceExhausted,
                "request message too large",
            ));
        }
        let mut framed = BytesMut::with_capacity(message.len() + 5);
        codec::encode_message(message, &mut framed);
        self.conn
            .send_data(call, framed.freeze(), false)
            .map_err(|e| Status::new(Code::Internal, e.to_string()))
    }

    /// Ends the request side (half-close).
    pub fn close_send(&mut self, call: CallId) -> Result<(), Status> {
        self.conn
            .send_data(call, Bytes::new(), true)
            .map_err(|e| Status::new(Code::Internal, e.to_string()))
    }

    /// Cancels a call (RST_STREAM CANCEL).
    pub fn cancel(&mut self, call: CallId) {
        if self.calls.remove(&call).is_some() {
            self.conn.reset(call, ErrorCode::Cancel);
            self.events.push_back(Event::Finished {
                call,
                status: Status::new(Code::Cancelled, "cancelled by the client"),
                trailers: Vec::new(),
            });
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn finish(&mut self, call: CallId, status: Status, trailers: Vec<Field>) {
        if self.calls.remove(&call).is_some() {
            self.events.push_back(Event::Finished {
                call,
                status,
                trailers,
            });
        }
    }

    fn process(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                H2Event::Headers {
                    stream,
                    fields,
                    end_stream,
                } => {
                    let Some(call) = self.calls.get_mut(&stream) else {
                        continue;
                    };
                    let get = |name: &str| {
                        fields
                            .iter()
                            .find(|f| f.name == name.as_bytes())
                            .map(|f| f.value.clone())
                    };
                    if !call.got_headers {
                        call.got_headers = true;
                        let http = get(":status").unwrap_or_default();
                        if http.as_ref() != b"200" {
                            let status = get("grpc-status")
                                .map(|_| status_from_trailers(&fields))
                                .unwrap_or_else(|| status_from_http(&http));
                            self.conn.reset(stream, ErrorCode::Cancel);
                            self.finish(stream, status, Vec::new());
                            continue;
                        }
                        if !end_stream {
                            let metadata = fields
                                .into_iter()
                                .filter(|f| !f.name.starts_with(b":") && f.name != "content-type")
                                .collect();
                            self.events.push_back(Event::Headers {
                                call: stream,
                                metadata,
                            });
                            continue;
                        }
                    }
                    if end_stream {
                        let partial = call.decoder.has_partial();
                        let status = if partial {
                            Status::new(Code::Internal, "response ended inside a message")
                        } else {
                            status_from_trailers(&fields)
                        };
                        let trailers = fields
                            .into_iter()
                            .filter(|f| {
                                !f.name.starts_with(b":")
                                    && f.name != "grpc-status"
                                    && f.name != "grpc-message"
                                    && f.name != "content-type"
                            })
                            .collect();
                        self.finish(stream, status, trailers);
                    }
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
                                self.conn.reset(stream, ErrorCode::Cancel);
                                self.finish(stream, status, Vec::new());
                                break;
                            }
                        }
                    }
                    if end_stream {
                        self.finish(
                            stream,
                            Status::new(Code::Internal, "response ended without trailers"),
                            Vec::new(),
                        );
                    }
                }
                H2Event::Reset { stream, code, .. } => {
                    let status = match code {
                        ErrorCode::RefusedStream => {
                            Status::new(Code::Unavailable, "stream refused by the server")
                        }
                        ErrorCode::Cancel => {
                            Status::new(Code::Cancelled, "stream cancelled by the server")
                        }
                        other => Status::new(
                            Code::Internal,
                            format!("stream reset by the server ({other})"),
                        ),
                    };
                    self.finish(stream, status, Vec::new());
                }
                H2Event::Closed { reason, .. } => {
                    let open: Vec<CallId> = self.calls.keys().copied().collect();
                    for call in open {
                        self.finish(
                            call,
                            Status::new(Code::Unavailable, format!("connection closed: {reason}")),
                            Vec::new(),
                        );
                    }
                    self.events.push_back(Event::Closed { reason });
                }
                H2Event::GoAway { .. }
                | H2Event::HeadersTooLarge { .. }
                | H2Event::SendCapacity { .. }
                | H2Event::PingAck { .. } => {}
            }
        }
    }
}

fn status_from_trailers(fields: &[Field]) -> Status {
    let get = |name: &str| {
        fields
            .iter()
            .find(|f| f.name == name.as_bytes())
            .map(|f| f.value.clone())
    };
    match get("grpc-status").and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok()) {
        Some(code) => Status::new(
            Code::from_u32(code),
            get("grpc-message")
                .map(|m| codec::percent_decode(&m))
                .unwrap_or_default(),
        ),
        None => Status::new(Code::Internal, "response trailers without grpc-status"),
    }
}

impl StreamMachine for GrpcClient {
    /// Feeds bytes from the transport.
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.conn.handle_input(now, bytes);
        self.process();
    }

    /// Handles timers: HTTP/2 keepalive and call deadlines (DEADLINE_EXCEEDED, stream reset).
    fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        let expired = super::expired_calls(&self.calls, |c| c.deadline, now);
        for call in expired {
            self.calls.remove(&call);
            self.conn.reset(call, ErrorCode::Cancel);
            self.events.push_back(Event::Finished {
                call,
                status: Status::new(Code::DeadlineExceeded, "deadline exceeded"),
                trailers: Vec::new(),
            });
        }
        self.process();
    }

    /// The next deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        super::next_deadline(&self.calls, |c| c.deadline, self.conn.poll_timeout())
    }

    /// Bytes to write.
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.conn.poll_transmit()
    }

    /// Whether the connection is over.
    fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn handle_wake(&mut self, _now: Instant) {}

    /// The server closed the transport: every open call fails with UNAVAILABLE.
    fn handle_eof(&mut self) {
        let open: Vec<CallId> = self.calls.keys().copied().collect();
        for call in open {
            self.finish(
                call,
                Status::new(Code::Unavailable, "connection closed by the server"),
                Vec::new(),
            );
        }
        self.conn
            .go_away(ErrorCode::NoError, "server closed the connection");
    }

    /// Closes the connection gracefully.
    fn go_away(&mut self) {
        self.conn.go_away(ErrorCode::NoError, "client done");
    }
}

/// A client connection with or without TLS: the driver reaches the gRPC machine through it.
pub trait ClientMachine: StreamMachine {
    /// The gRPC client machine.
    fn client(&mut self) -> &mut GrpcClient;
}

impl ClientMachine for GrpcClient {
    fn client(&mut self) -> &mut GrpcClient {
        self
    }
}

impl ClientMachine for crate::transport::tls::TlsStream<GrpcClient> {
    fn client(&mut self) -> &mut GrpcClient {
        self.inner_mut()
            .expect("a client TLS stream always holds its machine")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::server::ServerConfig;
    use crate::grpc::service::Router;
    use crate::grpc::service::ServerConnection;
    use crate::grpc::services::HealthService;
    use crate::pb::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
    use prost::Message;

    const CHECK: &str = "/grpc.health.v1.Health/Check";

    fn pair(now: Instant) -> (GrpcClient, ServerConnection) {
        let router = Router::new(vec![Box::new(HealthService::new(&[
            "grpc.health.v1.Health",
        ]))]);
        (
            GrpcClient::new("localhost", None, now),
            ServerConnection::new(ServerConfig::default(), router, now),
        )
    }

    fn pump(now: Instant, client: &mut GrpcClient, server: &mut ServerConnection) {
        loop {
            let mut moved = false;
            while let Some(bytes) = client.poll_transmit() {
                server.handle_input(now, &bytes);
                moved = true;
            }
            while let Some(bytes) = server.poll_transmit() {
                client.handle_input(now, &bytes);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    #[test]
    fn unary_call_against_the_server_machine() {
        let now = Instant::now();
        let (mut client, mut server) = pair(now);
        let call = client
            .start_call(now, CHECK, &[], Some(Duration::from_secs(5)))
            .unwrap();
        client
            .send_message(call, &HealthCheckRequest::default().encode_to_vec())
            .unwrap();
        client.close_send(call).unwrap();
        pump(now, &mut client, &mut server);
        let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
        assert!(matches!(&events[0], Event::Headers { .. }));
        let Event::Message { message, .. } = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(
            HealthCheckResponse::decode(message.as_ref())
                .unwrap()
                .status,
            1,
            "SERVING"
        );
        assert!(matches!(&events[2], Event::Finished { status, .. } if status.code == Code::Ok));
    }

    #[test]
    fn trailers_only_errors_and_local_deadlines() {
        let now = Instant::now();
        let (mut client, mut server) = pair(now);
        let call = client.start_call(now, "/x.Y/Z", &[], None).unwrap();
        client.close_send(call).unwrap();
        pump(now, &mut client, &mut server);
        let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
        assert!(
            matches!(&events[..], [Event::Finished { status, .. }] if status.code == Code::Unimplemented && status.message.contains("x.Y"))
        );
        // A call nobody answers in time: the client gives up on its own.
        let call = client
            .start_call(now, CHECK, &[], Some(Duration::from_millis(200)))
            .unwrap();
        pump(now, &mut client, &mut server);
        assert_eq!(
            client.poll_timeout(),
            Some(now + Duration::from_millis(200))
        );
        client.handle_timeout(now + Duration::from_millis(200));
        let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
        assert!(
            matches!(&events[..], [Event::Finished { call: c, status, .. }] if *c == call && status.code == Code::DeadlineExceeded)
        );
    }
}
