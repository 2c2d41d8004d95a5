//! The node-plane QUIC client machine: one connection to a gateway, one bidirectional stream per
//! request, response frames decoded incrementally.

use super::server::Transmit;
use crate::frame::{encode_frame, FrameDecoder};
use crate::node::message::{NodeRequest, RequestFrame, ResponseFrame};
use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamId,
    VarInt, WriteError,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies one request made with [`NodeClient::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What happened on the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server confirmed the handshake (HANDSHAKE_DONE): it accepted our certificate.
    Connected,
    /// One response frame of a request.
    Response {
        /// The request.
        request: RequestId,
        /// The frame.
        frame: ResponseFrame,
    },
    /// The server finished the request's stream: no more frames.
    Done {
        /// The request.
        request: RequestId,
    },
    /// The request failed (stream reset, bad frame, connection lost).
    Failed {
        /// The request.
        request: RequestId,
        /// Why.
        reason: String,
    },
    /// The connection ended.
    ConnectionLost {
        /// Why (for a handshake failure this names the TLS alert).
        reason: String,
    },
}

/// Client settings.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Largest response frame accepted.
    pub max_frame_bytes: usize,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: crate::frame::DEFAULT_MAX_FRAME_BYTES,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
        }
    }
}

/// Errors starting a connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration is not usable for QUIC.
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Tls(String),
    /// quinn refused to start the connection.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

struct Outgoing {
    id: RequestId,
    bytes: Vec<u8>,
}

struct InFlight {
    id: RequestId,
    to_send: Vec<u8>,
    sent: usize,
    decoder: FrameDecoder,
}

/// Client side of a palyra-quic-v1 connection.
pub struct NodeClient {
    endpoint: Endpoint,
    ch: ConnectionHandle,
    conn: quinn_proto::Connection,
    limits: ClientLimits,
    queued: VecDeque<Outgoing>,
    streams: HashMap<StreamId, InFlight>,
    events: VecDeque<ClientEvent>,
    next_id: u64,
    lost: bool,
    established: bool,
    confirmed: bool,
}

impl NodeClient {
    /// Starts a connection to `server` (TLS name `server_name`) with a TLS config from
    /// [`super::tls::client_config`].
    pub fn connect(
        tls: Arc<rustls::ClientConfig>,
        limits: ClientLimits,
        server: SocketAddr,
        server_name: &str,
        now: Instant,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, ClientError> {
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut config = ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn_proto::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn_proto::IdleTimeout::try_from(limits.idle_timeout)
                    .unwrap_or(VarInt::from_u32(30_000).into()),
            ))
            .keep_alive_interval(Some(limits.keep_alive))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        config.transport_config(Arc::new(transport));
        let mut endpoint_config = EndpointConfig::default();
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        endpoint_config.rng_seed(Some(seed));
        let mut endpoint = Endpoint::new(Arc::new(endpoint_config), None, true, None);
        let (ch, conn) = endpoint
            .connect(now, config, server, server_name)
            .map_err(|e| ClientError::Connect {
                addr: server,
                reason: e.to_string(),
            })?;
        Ok(Self {
            endpoint,
            ch,
            conn,
            limits,
            queued: VecDeque::new(),
            streams: HashMap::new(),
            events: VecDeque::new(),
            next_id: 0,
            lost: false,
            established: false,
            confirmed: false,
        })
    }

    /// Sends `request` on a new stream (queued until the handshake and stream credit allow).
    pub fn request(&mut self, request: &NodeRequest) -> RequestId {
        self.request_raw(&RequestFrame::from_request(request).to_json())
    }

    /// Sends an arbitrary frame payload as a request (for conformance tests of the server).
    pub fn request_raw(&mut self, payload: &[u8]) -> RequestId {
        let mut bytes = Vec::with_capacity(payload.len() + 4);
        // The request side has no size limit of its own; the server enforces its limit.
        let _ = encode_frame(payload, u32::MAX as usize, &mut bytes);
        self.request_bytes(bytes)
    }

    /// Sends arbitrary stream bytes as a request (for tests of framing errors).
    pub fn request_bytes(&mut self, bytes: Vec<u8>) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        if self.lost {
            self.events.push_back(ClientEvent::Failed {
                request: id,
                reason: "connection is closed".into(),
            });
        } else {
            self.queued.push_back(Outgoing { id, bytes });
            self.open_streams();
        }
        id
    }

    /// Whether the server confirmed the handshake and the connection is usable.
    pub fn is_connected(&self) -> bool {
        self.confirmed && !self.conn.is_closed()
    }

    /// Closes the connection with application code 0.
    pub fn close(&mut self, now: Instant) {
        self.conn
            .close(now, VarInt::from_u32(0), bytes::Bytes::from_static(b"done"));
        self.drive();
    }

    /// True once the connection is fully closed and drained.
    pub fn is_drained(&self) -> bool {
        self.conn.is_drained()
    }

    /// Processes one received datagram (`ecn`: the ECN bits it arrived with).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        ecn: Option<u8>,
        data: &[u8],
    ) {
        let mut buf = Vec::new();
        let ecn = ecn.and_then(quinn_proto::EcnCodepoint::from_bits);
        match self
            .endpoint
            .handle(now, remote, None, ecn, BytesMut::from(data), &mut buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) if ch == self.ch => {
                self.conn.handle_event(event);
                self.drive();
            }
            _ => {}
        }
    }

    /// Handles expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        self.drive();
    }

    /// The next instant at which [`NodeClient::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// Writes the next datagram(s) into `buf` and says where to send them (up to
    /// `max_datagrams` for segmentation offload).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        buf.clear();
        let t = self.conn.poll_transmit(now, max_datagrams.max(1), buf)?;
        Some(Transmit::from(&t))
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn drive(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.conn.poll() {
                progressed = true;
                self.handle_event(event);
            }
            while let Some(event) = self.conn.poll_endpoint_events() {
                progressed = true;
                if let Some(reply) = self.endpoint.handle_event(self.ch, event) {
                    self.conn.handle_event(reply);
                }
            }
            if !progressed {
                break;
            }
        }
        // In TLS 1.3 the client finishes first; only the server's HANDSHAKE_DONE says that it
        // accepted our certificate.
        if self.established
            && !self.confirmed
            && !self.lost
            && self.conn.stats().frame_rx.handshake_done > 0
        {
            self.confirmed = true;
            self.events.push_back(ClientEvent::Connected);
        }
    }

    fn handle_event(&mut self, event: Event) {
        use quinn_proto::StreamEvent as S;
        match event {
            Event::Connected => {
                self.established = true;
                self.open_streams();
            }
            Event::ConnectionLost { reason } => {
                self.lost = true;
                let reason = reason.to_string();
                for (_, flight) in self.streams.drain() {
                    self.events.push_back(ClientEvent::Failed {
                        request: flight.id,
                        reason: reason.clone(),
                    });
                }
                for out in self.queued.drain(..) {
                    self.events.push_back(ClientEvent::Failed {
                        request: out.id,
                        reason: reason.clone(),
                    });
                }
                self.events
                    .push_back(ClientEvent::ConnectionLost { reason });
            }
            Event::Stream(S::Available { dir: Dir::Bi }) => self.open_streams(),
            Event::Stream(S::Writable { id }) => self.write(id),
            Event::Stream(S::Readable { id }) => self.read(id),
            Event::Stream(S::Stopped { id, error_code }) => {
                if let Some(flight) = self.streams.remove(&id) {
                    self.events.push_back(ClientEvent::Failed {
                        request: flight.id,
                        reason: format!("server stopped the stream (code {error_code})"),
                    });
                }
            }
            Event::Stream(S::Opened { dir }) => {
                // The server never opens streams on this protocol.
                while let Some(id) = self.conn.streams().accept(dir) {
                    let _ = self.conn.recv_stream(id).stop(VarInt::from_u32(0));
                }
            }
            _ => {}
        }
    }

    fn open_streams(&mut self) {
        if self.conn.is_handshaking() {
            return;
        }
        while !self.queued.is_empty() {
            let Some(id) = self.conn.streams().open(Dir::Bi) else {
                return;
            };
            let Some(out) = self.queued.pop_front() else {
                return;
            };
            self.streams.insert(
                id,
                InFlight {
                    id: out.id,
                    to_send: out.bytes,
                    sent: 0,
                    decoder: FrameDecoder::new(self.limits.max_frame_bytes),
                },
            );
            self.write(id);
        }
    }

    fn write(&mut self, id: StreamId) {
        let Some(flight) = self.streams.get_mut(&id) else {
            return;
        };
        if flight.sent == flight.to_send.len() {
            return;
        }
        let mut send = self.conn.send_stream(id);
        while flight.sent < flight.to_send.len() {
            match send.write(&flight.to_send[flight.sent..]) {
                Ok(n) => flight.sent += n,
                Err(WriteError::Blocked) => return,
                Err(_) => return,
            }
        }
        let _ = send.finish();
        flight.to_send = Vec::new();
        flight.sent = 0;
    }

    fn read(&mut self, id: StreamId) {
        let Some(flight) = self.streams.get_mut(&id) else {
            return;
        };
        let mut outcome: Option<Result<(), String>> = None;
        let mut frames = Vec::new();
        if let Ok(mut chunks) = self.conn.recv_stream(id).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => {
                        if let Err(err) = flight.decoder.handle_input(&chunk.bytes) {
                            outcome = Some(Err(format!("bad response frame: {err}")));
                            break;
                        }
                        while let Some(frame) = flight.decoder.poll_frame() {
                            frames.push(frame);
                        }
                    }
                    Ok(None) => {
                        outcome = Some(flight.decoder.finish().map_err(|e| e.to_string()));
                        break;
                    }
                    Err(quinn_proto::ReadError::Blocked) => break,
                    Err(quinn_proto::ReadError::Reset(code)) => {
                        outcome = Some(Err(format!("server reset the stream (code {code})")));
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        let request = flight.id;
        for frame in frames {
            match ResponseFrame::parse(&frame) {
                Ok(frame) => self
                    .events
                    .push_back(ClientEvent::Response { request, frame }),
                Err(err) => {
                    outcome = Some(Err(format!("response is not a valid frame: {err}")));
                    break;
                }
            }
        }
        match outcome {
            None => {}
            Some(Ok(())) => {
                self.streams.remove(&id);
                self.events.push_back(ClientEvent::Done { request });
            }
            Some(Err(reason)) => {
                self.streams.remove(&id);
                let _ = self.conn.recv_stream(id).stop(VarInt::from_u32(0));
                self.events
                    .push_back(ClientEvent::Failed { request, reason });
            }
        }
    }
}

/// One item of a request's response stream, as drivers hand it to the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseItem {
    /// A response frame.
    Frame(ResponseFrame),
    /// The server finished the stream.
    Done,
    /// The request failed.
    Failed(String),
}

/// Routes [`ClientEvent`]s to per-request sinks (a driver's channel senders), so drivers only
/// move items into their channels.
pub struct RequestSinks<S> {
    waiting: HashMap<RequestId, S>,
}

impl<S> Default for RequestSinks<S> {
    fn default() -> Self {
        Self {
            waiting: HashMap::new(),
        }
    }
}

impl<S> RequestSinks<S> {
    /// Registers the sink of a request.
    pub fn insert(&mut self, request: RequestId, sink: S) {
        self.waiting.insert(request, sink);
    }

    /// Delivers `event` through `send`. Returns `Some(Ok(()))` when the connection became ready
    /// and `Some(Err(reason))` when it was lost (every waiting request has been failed then).
    pub fn dispatch(
        &mut self,
        event: ClientEvent,
        mut send: impl FnMut(&S, ResponseItem),
    ) -> Option<Result<(), String>> {
        match event {
            ClientEvent::Connected => return Some(Ok(())),
            ClientEvent::Response { request, frame } => {
                if let Some(sink) = self.waiting.get(&request) {
                    send(sink, ResponseItem::Frame(frame));
                }
            }
            ClientEvent::Done { request } => {
                if let Some(sink) = self.waiting.remove(&request) {
                    send(&sink, ResponseItem::Done);
                }
            }
            ClientEvent::Failed { request, reason } => {
                if let Some(sink) = self.waiting.remove(&request) {
                    send(&sink, ResponseItem::Failed(reason));
                }
            }
            ClientEvent::ConnectionLost { reason } => {
                for (_, sink) in self.waiting.drain() {
                    send(&sink, ResponseItem::Failed(reason.clone()));
                }
                return Some(Err(reason));
            }
        }
        None
    }
}
