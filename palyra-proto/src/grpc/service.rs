//! Services on top of the gRPC server machine: a small handler trait, routing by
//! `/package.Service/Method`, and helpers for unary handlers over prost types.

use super::codec::{Code, Status};
use super::server::{CallId, Event, GrpcServer};
use crate::h2::hpack::Field;
use crate::transport::{PeerIdentity, StreamMachine};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What a handler wants sent after it ran.
#[derive(Debug, Default)]
pub struct Reply {
    /// Initial metadata, sent before the first message (or merged into a trailers-only answer).
    pub headers: Option<Vec<Field>>,
    /// Response messages, in order.
    pub messages: Vec<Bytes>,
    /// Ends the call with this status (and trailers) when set.
    pub finish: Option<(Status, Vec<Field>)>,
}

impl Reply {
    /// Queues one message.
    pub fn message(&mut self, message: impl Into<Bytes>) {
        self.messages.push(message.into());
    }

    /// Ends the call.
    pub fn finish(&mut self, status: Status) {
        self.finish = Some((status, Vec::new()));
    }
}

/// Facts about a call, for handlers.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// Method name (after the last `/`).
    pub method: String,
    /// Request metadata.
    pub metadata: Vec<Field>,
    /// Deadline, if the client set one.
    pub deadline: Option<Instant>,
    /// When the call arrived.
    pub started: Instant,
    /// Who is calling, as far as TLS says (empty on cleartext connections).
    pub peer: Arc<PeerIdentity>,
}

/// What a handler may consult when it is polled.
#[derive(Debug, Clone, Copy)]
pub struct PollContext {
    /// The current time.
    pub now: Instant,
    /// Response bytes of this call still queued behind flow control: a handler producing
    /// unbounded output waits while this is large.
    pub queued_bytes: usize,
}

/// One call in progress.
pub trait CallHandler: Send {
    /// A request message arrived.
    fn on_message(&mut self, message: Bytes, reply: &mut Reply);
    /// The client sent its last message.
    fn on_half_close(&mut self, reply: &mut Reply);
    /// The call ended without the handler finishing it: the client reset the stream (or its
    /// deadline passed), or the connection closed. The handler is dropped after this.
    fn on_end(&mut self, _why: CallEnd) {}
    /// Shared state changed or [`CallHandler::poll_timeout`] passed: produce what is ready.
    fn poll(&mut self, _cx: &PollContext, _reply: &mut Reply) {}
    /// When this handler next wants [`CallHandler::poll`] without outside news.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// Why a call ended before its handler finished it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEnd {
    /// The client reset the stream or the deadline passed (the status says which).
    Reset(Status),
    /// The connection closed.
    Disconnected,
}

/// A gRPC service.
pub trait Service: Send {
    /// Fully qualified name, e.g. `palyra.gateway.v1.GatewayService`.
    fn name(&self) -> &'static str;
    /// Starts a call; `None` if the method does not exist.
    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>>;
}

/// A unary handler: one request in, one response or a status out.
pub struct Unary<F> {
    request: Option<Bytes>,
    handler: Option<F>,
}

impl<F> Unary<F>
where
    F: FnOnce(Bytes) -> Result<Vec<u8>, Status> + Send + 'static,
{
    /// Wraps a function of the encoded request returning the encoded response.
    pub fn boxed(handler: F) -> Box<dyn CallHandler> {
        Box::new(Self {
            request: None,
            handler: Some(handler),
        })
    }
}

impl<F> CallHandler for Unary<F>
where
    F: FnOnce(Bytes) -> Result<Vec<u8>, Status> + Send + 'static,
{
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.request.is_some() {
            reply.finish(Status::new(
                Code::Unimplemented,
                "unary method received more than one request message",
            ));
            return;
        }
        self.request = Some(message);
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        let (Some(request), Some(handler)) = (self.request.take(), self.handler.take()) else {
            reply.finish(Status::new(
                Code::Unimplemented,
                "unary method received no request message",
            ));
            return;
        };
        match handler(request) {
            Ok(response) => {
                reply.message(response);
                reply.finish(Status::ok());
            }
            Err(status) => reply.finish(status),
        }
    }
}

/// Decodes a prost request, answering INVALID_ARGUMENT on malformed bytes.
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes)
        .map_err(|e| Status::new(Code::InvalidArgument, format!("malformed request: {e}")))
}

/// Routes calls of one connection to services.
pub struct Router {
    services: Vec<Box<dyn Service>>,
    calls: HashMap<CallId, Box<dyn CallHandler>>,
    peer: Arc<PeerIdentity>,
}

impl Router {
    /// A router over `services`.
    pub fn new(services: Vec<Box<dyn Service>>) -> Self {
        Self {
            services,
            calls: HashMap::new(),
            peer: Arc::new(PeerIdentity::default()),
        }
    }

    /// Sets the TLS identity of the connection's peer, passed to every call.
    pub fn set_peer(&mut self, peer: PeerIdentity) {
        self.peer = Arc::new(peer);
    }

    /// Polls every open call (shared state changed or a handler timer passed).
    pub fn poll_handlers(&mut self, server: &mut GrpcServer, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for call in ids {
            self.poll_call(server, call, now);
        }
    }

    fn poll_call(&mut self, server: &mut GrpcServer, call: CallId, now: Instant) {
        let Some(handler) = self.calls.get_mut(&call) else {
            return;
        };
        let cx = PollContext {
            now,
            queued_bytes: server.queued_bytes(call),
        };
        let mut reply = Reply::default();
        handler.poll(&cx, &mut reply);
        self.apply(server, call, reply);
    }

    /// The earliest timer of the open calls.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls.values().filter_map(|h| h.poll_timeout()).min()
    }

    /// Names of the routed services (for reflection).
    pub fn service_names(&self) -> Vec<&'static str> {
        self.services.iter().map(|s| s.name()).collect()
    }

    /// Handles everything the server machine reported and applies the handlers' replies; a
    /// handler that got a message or a half-close is then polled at `now`.
    pub fn dispatch(&mut self, server: &mut GrpcServer, now: Instant) {
        while let Some(event) = server.poll_event() {
            let mut reply = Reply::default();
            let call = match event {
                Event::Call {
                    call,
                    path,
                    metadata,
                    deadline,
                    started,
                } => {
                    let (service, method) = path[1..].rsplit_once('/').unwrap_or(("", ""));
                    let Some(svc) = self.services.iter_mut().find(|s| s.name() == service) else {
                        let _ = server.finish(
                            call,
                            &Status::new(Code::Unimplemented, format!("unknown service {service}")),
                            &[],
                        );
                        continue;
                    };
                    let info = CallInfo {
                        method: method.to_owned(),
                        metadata,
                        deadline,
                        started,
                        peer: Arc::clone(&self.peer),
                    };
                    match svc.start(&info) {
                        Some(handler) => {
                            // A first poll lets the handler refuse at once or push what is ready.
                            self.calls.insert(call, handler);
                            self.poll_call(server, call, started);
                        }
                        None => {
                            let _ = server.finish(
                                call,
                                &Status::new(
                                    Code::Unimplemented,
                                    format!("unknown method {method} of service {service}"),
                                ),
                                &[],
                            );
                        }
                    }
                    continue;
                }
                Event::Message { call, message } => {
                    if let Some(handler) = self.calls.get_mut(&call) {
                        handler.on_message(message, &mut reply);
                    }
                    call
                }
                Event::HalfClosed { call } => {
                    if let Some(handler) = self.calls.get_mut(&call) {
                        handler.on_half_close(&mut reply);
                    }
                    call
                }
                Event::Cancelled { call, status } => {
                    if let Some(mut handler) = self.calls.remove(&call) {
                        handler.on_end(CallEnd::Reset(status));
                    }
                    continue;
                }
                Event::Closed { .. } => {
                    for (_, mut handler) in self.calls.drain() {
                        handler.on_end(CallEnd::Disconnected);
                    }
                    continue;
                }
            };
            self.apply(server, call, reply);
            self.poll_call(server, call, now);
        }
    }

    /// Sends what a handler produced.
    fn apply(&mut self, server: &mut GrpcServer, call: CallId, reply: Reply) {
        if let Some(headers) = reply.headers {
            let _ = server.send_headers(call, &headers);
        }
        for message in reply.messages {
            if let Err(e) = server.send_message(call, &message) {
                let _ = server.finish(
                    call,
                    &Status::new(Code::ResourceExhausted, e.to_string()),
                    &[],
                );
                self.calls.remove(&call);
                return;
            }
        }
        if let Some((status, trailers)) = reply.finish {
            let _ = server.finish(call, &status, &trailers);
            self.calls.remove(&call);
        }
    }
}

impl Drop for Router {
    /// Calls still open when the connection goes away end as disconnected.
    fn drop(&mut self) {
        for (_, mut handler) in self.calls.drain() {
            handler.on_end(CallEnd::Disconnected);
        }
    }
}

/// One gRPC server connection with its services: the unit a driver runs per TCP connection.
pub struct ServerConnection {
    server: GrpcServer,
    router: Router,
}

impl ServerConnection {
    /// A connection routing to `router`'s services.
    pub fn new(config: super::server::ServerConfig, router: Router, now: Instant) -> Self {
        Self {
            server: GrpcServer::new(config, now),
            router,
        }
    }

    /// A connection whose calls see `peer` as the caller's TLS identity.
    pub fn with_peer(
        config: super::server::ServerConfig,
        mut router: Router,
        peer: PeerIdentity,
        now: Instant,
    ) -> Self {
        router.set_peer(peer);
        Self::new(config, router, now)
    }
}

impl StreamMachine for ServerConnection {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.server.handle_input(now, bytes);
        self.router.dispatch(&mut self.server, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
        self.router.dispatch(&mut self.server, now);
        if self.router.poll_timeout().is_some_and(|t| t <= now) {
            self.router.poll_handlers(&mut self.server, now);
        }
    }

    fn handle_wake(&mut self, now: Instant) {
        self.router.poll_handlers(&mut self.server, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.server.poll_timeout(), self.router.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.server.poll_transmit()
    }

    fn is_closed(&self) -> bool {
        self.server.is_closed()
    }

    fn handle_eof(&mut self) {
        if !self.server.is_closed() {
            self.server.go_away();
        }
    }

    fn go_away(&mut self) {
        self.server.go_away();
    }

    fn is_idle(&self) -> bool {
        self.server.open_calls() == 0
    }
}

/// The answer of a gRPC listener at its connection cap: the server preface (SETTINGS) and a
/// GOAWAY that processed no stream, so clients retry elsewhere or later (gRPC UNAVAILABLE).
pub fn overloaded_preface() -> Bytes {
    use crate::h2::frame::{encode_goaway, encode_settings, ErrorCode, Settings};
    let mut out = bytes::BytesMut::new();
    encode_settings(&mut out, &Settings::default(), false);
    encode_goaway(
        &mut out,
        0,
        ErrorCode::NoError,
        b"connection limit reached; retry shortly",
    );
    out.freeze()
}

/// Builds the services of a new connection (drivers call it once per accepted connection).
pub type RouterFactory = std::sync::Arc<dyn Fn() -> Router + Send + Sync>;

/// Accepts gRPC connections: h2c, or TLS when a configuration is given (the calls then see the
/// client's certificate identity).
#[derive(Clone)]
pub struct GrpcAcceptor {
    /// HTTP/2 and gRPC limits.
    pub config: super::server::ServerConfig,
    /// Builds the services of each connection.
    pub routers: RouterFactory,
    /// TLS configuration; cleartext HTTP/2 when absent.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl crate::transport::Acceptor for GrpcAcceptor {
    fn refuse(&self, now: Instant, _peer: std::net::SocketAddr) -> Option<Box<dyn StreamMachine>> {
        let refusal = |now| crate::transport::Refusal::new(now, overloaded_preface());
        match &self.tls {
            None => Some(Box::new(refusal(now))),
            Some(tls) => {
                crate::transport::tls::TlsStream::server(Arc::clone(tls), now, move |_, now| {
                    refusal(now)
                })
                .ok()
                .map(|s| Box::new(s) as Box<dyn StreamMachine>)
            }
        }
    }

    fn accept(
        &self,
        now: Instant,
        peer: std::net::SocketAddr,
    ) -> Result<Box<dyn StreamMachine>, String> {
        let config = self.config;
        let routers = Arc::clone(&self.routers);
        match &self.tls {
            None => Ok(Box::new(ServerConnection::with_peer(
                config,
                routers(),
                PeerIdentity {
                    remote: Some(peer),
                    ..PeerIdentity::default()
                },
                now,
            ))),
            Some(tls) => {
                let stream = crate::transport::tls::TlsStream::server(
                    Arc::clone(tls),
                    now,
                    move |identity, now| {
                        let identity = PeerIdentity {
                            remote: Some(peer),
                            ..identity
                        };
                        ServerConnection::with_peer(config, routers(), identity, now)
                    },
                )
                .map_err(|e| e.to_string())?;
                Ok(Box::new(stream))
            }
        }
    }
}
