//! The node-plane QUIC server machine: quinn-proto's endpoint and connections, plus ALPN/mTLS
//! identity, connection and handshake limits, live revocation and the node-plane methods.
//!
//! Drive it like any machine here: feed datagrams (`handle_datagram`) and timeouts
//! (`handle_timeout`), then drain `poll_transmit`, `poll_event` and `poll_timeout`. The event log
//! is not the machine's: a publish comes out of `poll_event` as [`ServerEvent::Append`] and is
//! acknowledged once the application reports it durable ([`NodeServer::complete_append`]); a
//! stream that wants events asks with [`ServerEvent::ReadEvents`] and gets them through
//! [`NodeServer::handle_events`]; [`NodeServer::handle_log_grown`] tells following streams that
//! new events were committed.

use super::tls::peer_leaf;
use crate::identity::cert::cert_spki_fingerprint;
use crate::identity::trust::{TrustDecision, TrustIndex};
use crate::node::engine::{self, Resume};
use crate::node::log::{EventBatch, LogUnavailable, NewEvent};
use crate::node::message::{NodeRequest, ResponseFrame};
use crate::node::{ErrorCode, RequestStream, StreamEvent};
use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamId, VarInt,
    WriteError,
};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// QUIC application close codes used by the node plane.
pub mod close_code {
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 0x0;
    /// The device's certificate was revoked.
    pub const REVOKED: u32 = 0x101;
    /// A server limit (connections) was reached.
    pub const OVERLOADED: u32 = 0x102;
    /// The handshake did not complete in time.
    pub const HANDSHAKE_TIMEOUT: u32 = 0x103;
    /// The peer is not authorized (no or unknown certificate).
    pub const UNAUTHORIZED: u32 = 0x104;
}

/// Limits of the node-plane server; defaults are the original's.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Established connections (a slot is taken when the handshake completes).
    pub max_connections: usize,
    /// Handshakes in progress, bounded separately so slow handshakes cannot starve the slots.
    pub max_handshakes: usize,
    /// At the handshake limit, a new connection sheds the oldest handshake that has been
    /// pending at least this long (a half-open flood cannot lock fresh clients out).
    pub shed_handshakes_after: Duration,
    /// A handshake not complete after this is closed.
    pub handshake_timeout: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// Concurrent client-opened bidirectional streams per connection.
    pub max_bidi_streams: u32,
    /// Concurrent client-opened unidirectional streams per connection (refused when opened).
    pub max_uni_streams: u32,
    /// Largest frame payload in either direction.
    pub max_frame_bytes: usize,
    /// Publishes waiting to be made durable; more are answered `overloaded`.
    pub max_pending_publishes: usize,
    /// Events read from the log per batch when filling a stream.
    pub read_batch_events: usize,
    /// Bytes queued per stream before the server waits for the peer to read.
    pub stream_queue_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_handshakes: 64,
            shed_handshakes_after: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_bidi_streams: 32,
            max_uni_streams: 32,
            max_frame_bytes: crate::frame::DEFAULT_MAX_FRAME_BYTES,
            max_pending_publishes: 4096,
            read_batch_events: 512,
            stream_queue_bytes: 256 * 1024,
        }
    }
}

/// Builds quinn's transport configuration from the limits.
pub fn transport_config(limits: &ServerLimits) -> quinn_proto::TransportConfig {
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn_proto::IdleTimeout::try_from(limits.idle_timeout)
                .unwrap_or(VarInt::from_u32(30_000).into()),
        ))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(limits.max_uni_streams))
        .datagram_receive_buffer_size(None);
    transport
}

/// What the server machine reports: work the application must answer (appends and reads of the
/// event log) and things worth logging or counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A handshake completed and the connection took a slot.
    Connected {
        /// Peer address.
        remote: SocketAddr,
        /// Device named by the verified certificate.
        device_id: Option<Arc<str>>,
    },
    /// A connection ended.
    Closed {
        /// Peer address.
        remote: SocketAddr,
        /// Device, if it had authenticated.
        device_id: Option<Arc<str>>,
        /// Why.
        reason: String,
    },
    /// A new connection was refused before or right after its handshake.
    Refused {
        /// Peer address.
        remote: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A request was refused with an error frame.
    RequestRefused {
        /// Device, if authenticated.
        device_id: Option<Arc<str>>,
        /// Error code sent.
        code: ErrorCode,
        /// Message sent.
        message: String,
    },
    /// A publish to make durable: append `event` to the log and answer with
    /// [`NodeServer::complete_append`].
    Append {
        /// The publishing stream.
        stream: StreamKey,
        /// The event as the log stores it.
        event: NewEvent,
    },
    /// A stream wants the events after `after`: answer with [`NodeServer::handle_events`].
    ReadEvents {
        /// The reading stream.
        stream: StreamKey,
        /// The last seq the stream has.
        after: u64,
        /// At most this many events.
        max_events: usize,
        /// About this many bytes.
        max_bytes: usize,
    },
}

/// Names one request stream of one connection, for the answers to [`ServerEvent::Append`] and
/// [`ServerEvent::ReadEvents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    conn: ConnectionHandle,
    stream: StreamId,
}

/// Datagrams to send: `size` bytes of the caller's buffer, one datagram or, with
/// `segment_size`, several of that size (the last may be shorter) for one GSO send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// How many bytes of the caller's buffer it uses.
    pub size: usize,
    /// Size of each datagram when the buffer holds several (segmentation offload).
    pub segment_size: Option<usize>,
    /// ECN codepoint bits to set (RFC 3168), if any.
    pub ecn: Option<u8>,
    /// Source address to use, if the endpoint cares.
    pub src_ip: Option<IpAddr>,
}

impl From<&quinn_proto::Transmit> for Transmit {
    fn from(t: &quinn_proto::Transmit) -> Self {
        Self {
            destination: t.destination,
            size: t.size,
            segment_size: t.segment_size,
            ecn: t.ecn.map(|e| e as u8),
            src_ip: t.src_ip,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Handshaking,
    Established,
    Closing,
}

enum Serving {
    /// Waiting for the request or finishing.
    Idle,
    /// A publish waits to be made durable.
    Publishing,
    /// Streaming events after `after`; `follow` keeps the stream open.
    Events(EventsState),
}

struct EventsState {
    /// The request's cursor (checked against the log's bounds with the first read).
    resume_from: Option<u64>,
    /// The last seq delivered (or skipped as invisible).
    after: u64,
    /// Keep the stream open once caught up.
    follow: bool,
    /// The cursor was checked and the stream started.
    started: bool,
    /// A [`ServerEvent::ReadEvents`] is outstanding.
    reading: bool,
    /// The last read found nothing new: wait for [`NodeServer::handle_log_grown`].
    caught_up: bool,
}

struct NodeStream {
    machine: RequestStream,
    serving: Serving,
}

struct Conn {
    handle: ConnectionHandle,
    conn: quinn_proto::Connection,
    state: ConnState,
    started: Instant,
    remote: SocketAddr,
    device: Option<Arc<str>>,
    fingerprint: Option<[u8; 32]>,
    streams: HashMap<StreamId, NodeStream>,
    close_reason: Option<String>,
}

/// Everything connections share, split from the connection map so both can be borrowed at once.
struct Shared {
    limits: ServerLimits,
    mtls_required: bool,
    trust: Arc<TrustIndex>,
    /// Appends handed out and not completed yet.
    appending: usize,
    events: VecDeque<ServerEvent>,
    now_ms: u64,
    established: usize,
    handshaking: usize,
}

/// The node-plane QUIC server machine.
pub struct NodeServer {
    endpoint: Endpoint,
    conns: HashMap<ConnectionHandle, Conn>,
    order: Vec<ConnectionHandle>,
    rr: usize,
    shared: Shared,
    responses: VecDeque<(Transmit, Vec<u8>)>,
    trust_generation: u64,
    shutting_down: bool,
}

/// Configuration of a [`NodeServer`].
pub struct NodeServerConfig {
    /// TLS configuration from [`super::tls::server_config`].
    pub tls: Arc<rustls::ServerConfig>,
    /// Limits.
    pub limits: ServerLimits,
    /// Whether client certificates are mandatory (reported by `node.health`).
    pub mtls_required: bool,
}

/// Errors creating the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS configuration cannot be used for QUIC.
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Tls(String),
}

impl NodeServer {
    /// A server authenticating devices against `trust`; `rng` seeds quinn's generator
    /// (connection IDs, tokens).
    pub fn new(
        config: NodeServerConfig,
        trust: Arc<TrustIndex>,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, ServerError> {
        let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(config.tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let mut server_config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport_config(&config.limits)));
        server_config.migration(false);
        let mut endpoint_config = EndpointConfig::default();
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        endpoint_config.rng_seed(Some(seed));
        let endpoint = Endpoint::new(
            Arc::new(endpoint_config),
            Some(Arc::new(server_config)),
            true,
            None,
        );
        let trust_generation = trust.generation();
        Ok(Self {
            endpoint,
            conns: HashMap::new(),
            order: Vec::new(),
            rr: 0,
            shared: Shared {
                limits: config.limits,
                mtls_required: config.mtls_required,
                trust,
                appending: 0,
                events: VecDeque::new(),
                now_ms: 0,
                established: 0,
                handshaking: 0,
            },
            responses: VecDeque::new(),
            trust_generation,
            shutting_down: false,
        })
    }

    /// Established connections.
    pub fn connection_count(&self) -> usize {
        self.shared.established
    }

    /// Handshakes in progress.
    pub fn handshake_count(&self) -> usize {
        self.shared.handshaking
    }

    /// Processes one received UDP datagram (`ecn`: the ECN bits it arrived with) at `now`, wall
    /// time `now_ms` (Unix ms: event timestamps, `server_time_unix_ms`).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        now_ms: u64,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<u8>,
        data: &[u8],
    ) {
        self.shared.now_ms = now_ms;
        let mut buf = Vec::new();
        let ecn = ecn.and_then(quinn_proto::EcnCodepoint::from_bits);
        let event =
            self.endpoint
                .handle(now, remote, local_ip, ecn, BytesMut::from(data), &mut buf);
        match event {
            None => {}
            Some(DatagramEvent::Response(t)) => self.queue_response(t, buf),
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(&ch) {
                    conn.conn.handle_event(event);
                    self.drive(ch, now);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let remote = incoming.remote_address();
                if !self.shutting_down
                    && self.shared.handshaking >= self.shared.limits.max_handshakes
                {
                    self.shed_oldest_handshake(now);
                }
                let full = self.shared.established + self.shared.handshaking
                    >= self.shared.limits.max_connections;
                if self.shutting_down
                    || full
                    || self.shared.handshaking >= self.shared.limits.max_handshakes
                {
                    // Refused before any handshake work: CONNECTION_REFUSED.
                    let reason = if self.shutting_down {
                        "server is shutting down"
                    } else if full {
                        "connection limit reached"
                    } else {
                        "too many handshakes in progress"
                    };
                    self.shared.events.push_back(ServerEvent::Refused {
                        remote,
                        reason: reason.into(),
                    });
                    let t = self.endpoint.refuse(incoming, &mut buf);
                    self.queue_response(t, buf);
                    return;
                }
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok((ch, conn)) => {
                        self.shared.handshaking += 1;
                        self.conns.insert(
                            ch,
                            Conn {
                                handle: ch,
                                conn,
                                state: ConnState::Handshaking,
                                started: now,
                                remote,
                                device: None,
                                fingerprint: None,
                                streams: HashMap::new(),
                                close_reason: None,
                            },
                        );
                        self.order.push(ch);
                        self.drive(ch, now);
                    }
                    Err(err) => {
                        self.shared.events.push_back(ServerEvent::Refused {
                            remote,
                            reason: err.cause.to_string(),
                        });
                        if let Some(t) = err.response {
                            self.queue_response(t, buf);
                        }
                    }
                }
            }
        }
    }

    /// Closes the oldest handshake pending longer than `shed_handshakes_after`, if any.
    fn shed_oldest_handshake(&mut self, now: Instant) {
        let after = self.shared.limits.shed_handshakes_after;
        let oldest = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Handshaking && now >= c.started + after)
            .min_by_key(|c| c.started)
            .map(|c| c.handle);
        let Some(ch) = oldest else { return };
        if let Some(conn) = self.conns.get_mut(&ch) {
            close(
                conn,
                &mut self.shared,
                now,
                close_code::OVERLOADED,
                "handshake shed: the server is at its handshake limit",
            );
        }
        self.drive(ch, now);
    }

    fn queue_response(&mut self, t: quinn_proto::Transmit, mut buf: Vec<u8>) {
        buf.truncate(t.size);
        self.responses.push_back((Transmit::from(&t), buf));
    }

    /// Handles expired timers (QUIC loss detection, idle, keep-alive, handshake deadline).
    pub fn handle_timeout(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        let handshake_timeout = self.shared.limits.handshake_timeout;
        for ch in handles {
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            if conn.state == ConnState::Handshaking && now >= conn.started + handshake_timeout {
                close(
                    conn,
                    &mut self.shared,
                    now,
                    close_code::HANDSHAKE_TIMEOUT,
                    "handshake timed out",
                );
            }
            if conn.conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.conn.handle_timeout(now);
            }
            self.drive(ch, now);
        }
    }

    /// The next instant at which [`NodeServer::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let handshake_timeout = self.shared.limits.handshake_timeout;
        self.conns
            .values_mut()
            .filter_map(|c| {
                let quic = c.conn.poll_timeout();
                let handshake =
                    (c.state == ConnState::Handshaking).then_some(c.started + handshake_timeout);
                match (quic, handshake) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Writes the next datagram(s) into `buf` (cleared first) and says where to send them; up to
    /// `max_datagrams` of one connection are batched for segmentation offload.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if let Some((t, bytes)) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Some(t);
        }
        let count = self.order.len();
        for _ in 0..count {
            if self.rr >= self.order.len() {
                self.rr = 0;
            }
            let ch = self.order[self.rr];
            if let Some(conn) = self.conns.get_mut(&ch) {
                buf.clear();
                if let Some(t) = conn.conn.poll_transmit(now, max_datagrams.max(1), buf) {
                    return Some(Transmit::from(&t));
                }
            }
            self.rr += 1;
        }
        None
    }

    /// Takes the next thing that happened: work for the application ([`ServerEvent::Append`],
    /// [`ServerEvent::ReadEvents`]) or something worth logging (connections, refusals).
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.shared.events.pop_front()
    }

    /// Publishes handed out by [`ServerEvent::Append`] and not completed yet.
    pub fn pending_appends(&self) -> usize {
        self.shared.appending
    }

    /// The outcome of an [`ServerEvent::Append`]: the event's seq once durable (the publisher
    /// gets its ack), or why it was not stored (`stream_failure`).
    pub fn complete_append(
        &mut self,
        now: Instant,
        key: StreamKey,
        result: Result<u64, LogUnavailable>,
    ) {
        self.shared.appending = self.shared.appending.saturating_sub(1);
        let Some(conn) = self.conns.get_mut(&key.conn) else {
            return;
        };
        let Some(stream) = conn.streams.get_mut(&key.stream) else {
            return;
        };
        if !matches!(stream.serving, Serving::Publishing) {
            return;
        }
        match result {
            Ok(seq) => {
                let _ = stream.machine.send(&ResponseFrame::ack(seq));
                stream.machine.finish();
            }
            Err(e) => stream.machine.refuse(
                ErrorCode::Unavailable,
                format!("event not stored, retry: {e}"),
            ),
        }
        stream.serving = Serving::Idle;
        pump_stream(conn, key.stream, &mut self.shared);
        self.drive(key.conn, now);
    }

    /// The answer to a [`ServerEvent::ReadEvents`]: the events after the requested seq with the
    /// log's bounds, or why the log could not be read (`stream_failure`).
    pub fn handle_events(
        &mut self,
        now: Instant,
        key: StreamKey,
        result: Result<EventBatch, LogUnavailable>,
    ) {
        let Some(conn) = self.conns.get_mut(&key.conn) else {
            return;
        };
        let device = conn.device.clone();
        let Some(stream) = conn.streams.get_mut(&key.stream) else {
            return;
        };
        let Serving::Events(state) = &mut stream.serving else {
            return;
        };
        state.reading = false;
        let batch = match result {
            Ok(batch) => batch,
            Err(e) => {
                stream.serving = Serving::Idle;
                stream.machine.refuse(
                    ErrorCode::Unavailable,
                    format!("events not read, retry: {e}"),
                );
                let _ = stream.machine.poll_event();
                pump_stream(conn, key.stream, &mut self.shared);
                self.drive(key.conn, now);
                return;
            }
        };
        if !state.started {
            match engine::resume(state.resume_from, batch.bounds) {
                Resume::After(after) => {
                    state.started = true;
                    state.after = after;
                }
                Resume::Refused(frame) => {
                    if frame.first_seq.is_some_and(|first| state.after + 1 < first) {
                        self.shared.events.push_back(ServerEvent::RequestRefused {
                            device_id: device.clone(),
                            code: ErrorCode::ResumeGap,
                            message: format!(
                                "resume_from {} before first_seq {}",
                                state.after, batch.bounds.first_seq
                            ),
                        });
                    }
                    let _ = stream.machine.send(&frame);
                    stream.machine.finish();
                    stream.serving = Serving::Idle;
                    pump_stream(conn, key.stream, &mut self.shared);
                    self.drive(key.conn, now);
                    return;
                }
            }
        }
        let mut delivered = false;
        for event in &batch.events {
            if event.seq <= state.after {
                continue;
            }
            delivered = true;
            state.after = event.seq;
            if engine::visible(event, device.as_deref()) {
                // Cannot fail for events accepted by publish; skip rather than wedge the stream.
                let _ = stream.machine.send_event_raw(event.seq, &event.body);
            }
        }
        if !delivered {
            if state.follow {
                state.caught_up = true;
            } else {
                stream.serving = Serving::Idle;
                stream.machine.finish();
            }
        }
        pump_stream(conn, key.stream, &mut self.shared);
        self.drive(key.conn, now);
    }

    /// New events were committed to the log: following streams that caught up read again.
    pub fn handle_log_grown(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            let waiting: Vec<StreamId> = conn
                .streams
                .iter_mut()
                .filter_map(|(id, s)| match &mut s.serving {
                    Serving::Events(state) if state.caught_up => {
                        state.caught_up = false;
                        Some(*id)
                    }
                    _ => None,
                })
                .collect();
            if waiting.is_empty() {
                continue;
            }
            for id in waiting {
                pump_stream(conn, id, &mut self.shared);
            }
            self.drive(ch, now);
        }
    }

    /// Re-checks open connections against the trust index after it changed (revocation):
    /// connections of revoked or unknown certificates are closed at once.
    pub fn handle_trust_change(&mut self, now: Instant) {
        let generation = self.shared.trust.generation();
        if generation == self.trust_generation {
            return;
        }
        self.trust_generation = generation;
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            let Some(fp) = conn.fingerprint else { continue };
            match self.shared.trust.check(&fp) {
                TrustDecision::Trusted(_) => {}
                TrustDecision::Revoked(_) => close(
                    conn,
                    &mut self.shared,
                    now,
                    close_code::REVOKED,
                    "device certificate revoked",
                ),
                TrustDecision::Unknown => close(
                    conn,
                    &mut self.shared,
                    now,
                    close_code::UNAUTHORIZED,
                    "device certificate no longer known",
                ),
            }
            self.drive(ch, now);
        }
    }

    /// Starts a graceful shutdown: new connections are refused, open ones get an application close.
    pub fn close(&mut self, now: Instant) {
        self.shutting_down = true;
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            if let Some(conn) = self.conns.get_mut(&ch) {
                close(
                    conn,
                    &mut self.shared,
                    now,
                    close_code::SHUTDOWN,
                    "server shutting down",
                );
            }
            self.drive(ch, now);
        }
    }

    /// True when no connection remains (after [`NodeServer::close`], the driver may exit).
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty()
    }

    /// Processes everything a connection has to say, then exchanges endpoint events.
    fn drive(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        loop {
            let mut progressed = false;
            while let Some(event) = conn.conn.poll() {
                progressed = true;
                handle_conn_event(conn, event, now, &mut self.shared);
            }
            while let Some(event) = conn.conn.poll_endpoint_events() {
                progressed = true;
                let drained = event.is_drained();
                if let Some(reply) = self.endpoint.handle_event(ch, event) {
                    conn.conn.handle_event(reply);
                }
                if drained {
                    let conn = self.conns.remove(&ch);
                    self.order.retain(|c| *c != ch);
                    if let Some(conn) = conn {
                        self.release(conn);
                    }
                    return;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn release(&mut self, mut conn: Conn) {
        leave_state(&mut conn, &mut self.shared);
        self.shared.events.push_back(ServerEvent::Closed {
            remote: conn.remote,
            device_id: conn.device,
            reason: conn
                .close_reason
                .unwrap_or_else(|| "connection drained".into()),
        });
    }
}

/// Closes a connection; its slot (handshake or established) is released at once.
fn close(conn: &mut Conn, shared: &mut Shared, now: Instant, code: u32, reason: &str) {
    leave_state(conn, shared);
    if conn.conn.is_closed() {
        return;
    }
    conn.close_reason.get_or_insert_with(|| reason.to_owned());
    conn.conn.close(
        now,
        VarInt::from_u32(code),
        Bytes::copy_from_slice(reason.as_bytes()),
    );
}

fn leave_state(conn: &mut Conn, shared: &mut Shared) {
    match conn.state {
        ConnState::Handshaking => shared.handshaking -= 1,
        ConnState::Established => shared.established -= 1,
        ConnState::Closing => {}
    }
    conn.state = ConnState::Closing;
}

fn handle_conn_event(conn: &mut Conn, event: Event, now: Instant, shared: &mut Shared) {
    match event {
        Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
        Event::Connected => on_connected(conn, now, shared),
        Event::ConnectionLost { reason } => {
            if conn.state == ConnState::Handshaking {
                shared.events.push_back(ServerEvent::Refused {
                    remote: conn.remote,
                    reason: reason.to_string(),
                });
            }
            conn.close_reason.get_or_insert_with(|| reason.to_string());
            leave_state(conn, shared);
            conn.streams.clear();
        }
        Event::DatagramReceived => while conn.conn.datagrams().recv().is_some() {},
        Event::Stream(event) => handle_stream_event(conn, event, shared),
    }
}

fn on_connected(conn: &mut Conn, now: Instant, shared: &mut Shared) {
    let leaf = peer_leaf(conn.conn.crypto_session());
    let mut refusal = None;
    match leaf.as_deref().map(cert_spki_fingerprint) {
        Some(Ok(fp)) => match shared.trust.check(&fp) {
            TrustDecision::Trusted(device) => {
                conn.device = Some(device);
                conn.fingerprint = Some(fp);
            }
            TrustDecision::Revoked(_) => {
                refusal = Some((close_code::REVOKED, "device certificate revoked"))
            }
            TrustDecision::Unknown => {
                refusal = Some((close_code::UNAUTHORIZED, "device certificate not known"))
            }
        },
        Some(Err(_)) => refusal = Some((close_code::UNAUTHORIZED, "unreadable client certificate")),
        None if shared.mtls_required => {
            refusal = Some((close_code::UNAUTHORIZED, "client certificate required"))
        }
        None => {}
    }
    if refusal.is_none() && shared.established >= shared.limits.max_connections {
        refusal = Some((close_code::OVERLOADED, "connection limit reached"));
    }
    if let Some((code, reason)) = refusal {
        shared.events.push_back(ServerEvent::Refused {
            remote: conn.remote,
            reason: reason.into(),
        });
        close(conn, shared, now, code, reason);
        return;
    }
    shared.handshaking -= 1;
    shared.established += 1;
    conn.state = ConnState::Established;
    shared.events.push_back(ServerEvent::Connected {
        remote: conn.remote,
        device_id: conn.device.clone(),
    });
}

fn handle_stream_event(conn: &mut Conn, event: quinn_proto::StreamEvent, shared: &mut Shared) {
    use quinn_proto::StreamEvent as S;
    match event {
        S::Opened { dir: Dir::Bi } => {
            while let Some(id) = conn.conn.streams().accept(Dir::Bi) {
                if conn.state != ConnState::Established {
                    let _ = conn.conn.recv_stream(id).stop(VarInt::from_u32(0));
                    continue;
                }
                conn.streams.insert(
                    id,
                    NodeStream {
                        machine: RequestStream::new(shared.limits.max_frame_bytes),
                        serving: Serving::Idle,
                    },
                );
                read_stream(conn, id, shared);
            }
        }
        S::Opened { dir: Dir::Uni } => {
            // The node plane has no unidirectional streams; refuse them.
            while let Some(id) = conn.conn.streams().accept(Dir::Uni) {
                let _ = conn.conn.recv_stream(id).stop(VarInt::from_u32(0));
            }
        }
        S::Readable { id } => read_stream(conn, id, shared),
        S::Writable { id } => pump_stream(conn, id, shared),
        S::Finished { id } => {
            conn.streams.remove(&id);
        }
        S::Stopped { id, error_code } => {
            let _ = conn.conn.send_stream(id).reset(error_code);
            conn.streams.remove(&id);
        }
        S::Available { .. } => {}
    }
}

fn read_stream(conn: &mut Conn, id: StreamId, shared: &mut Shared) {
    let Some(stream) = conn.streams.get_mut(&id) else {
        // Not ours (e.g. a refused uni stream): discard.
        if let Ok(mut chunks) = conn.conn.recv_stream(id).read(true) {
            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
            let _ = chunks.finalize();
        }
        return;
    };
    let mut reset = false;
    if let Ok(mut chunks) = conn.conn.recv_stream(id).read(true) {
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => stream.machine.handle_input(&chunk.bytes, false),
                Ok(None) => {
                    stream.machine.handle_input(&[], true);
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(quinn_proto::ReadError::Reset(_)) => {
                    reset = true;
                    break;
                }
            }
        }
        let _ = chunks.finalize();
    }
    if reset && stream.machine.wants_input() {
        // The peer abandoned the request before sending it; nothing to answer.
        let _ = conn.conn.send_stream(id).reset(VarInt::from_u32(0));
        conn.streams.remove(&id);
        return;
    }
    match stream.machine.poll_event() {
        Some(StreamEvent::Request(request)) => start_request(
            stream,
            StreamKey {
                conn: conn.handle,
                stream: id,
            },
            request,
            conn.device.clone(),
            shared,
        ),
        Some(StreamEvent::Refused { code, message }) => {
            shared.events.push_back(ServerEvent::RequestRefused {
                device_id: conn.device.clone(),
                code,
                message,
            })
        }
        None => {}
    }
    pump_stream(conn, id, shared);
}

fn start_request(
    stream: &mut NodeStream,
    key: StreamKey,
    request: NodeRequest,
    device: Option<Arc<str>>,
    shared: &mut Shared,
) {
    let machine = &mut stream.machine;
    match request {
        NodeRequest::Health => {
            let _ = machine.send(&engine::health(
                shared.mtls_required,
                device.as_deref(),
                shared.now_ms,
            ));
            machine.finish();
        }
        NodeRequest::PublishEvent(event) => {
            if device.is_some() && shared.appending >= shared.limits.max_pending_publishes {
                refuse(
                    machine,
                    device,
                    ErrorCode::Overloaded,
                    "too many publishes waiting to be stored; retry",
                    shared,
                );
                return;
            }
            match engine::publish(
                device.as_deref(),
                event,
                shared.now_ms,
                shared.limits.max_frame_bytes,
            ) {
                Ok(event) => {
                    shared.appending += 1;
                    shared
                        .events
                        .push_back(ServerEvent::Append { stream: key, event });
                    stream.serving = Serving::Publishing;
                }
                Err(refusal) => refuse(machine, device, refusal.code, &refusal.message, shared),
            }
        }
        NodeRequest::StreamEvents {
            resume_from,
            follow,
        } => {
            stream.serving = Serving::Events(EventsState {
                resume_from,
                after: resume_from.unwrap_or(0),
                follow,
                started: false,
                reading: false,
                caught_up: false,
            });
        }
    }
}

fn refuse(
    machine: &mut RequestStream,
    device: Option<Arc<str>>,
    code: ErrorCode,
    message: &str,
    shared: &mut Shared,
) {
    machine.refuse(code, message);
    let _ = machine.poll_event();
    shared.events.push_back(ServerEvent::RequestRefused {
        device_id: device,
        code,
        message: message.into(),
    });
}

/// Writes what a stream has queued; once it is all written, a streaming request asks for more
/// events ([`ServerEvent::ReadEvents`]).
fn pump_stream(conn: &mut Conn, id: StreamId, shared: &mut Shared) {
    let Some(stream) = conn.streams.get_mut(&id) else {
        return;
    };
    while let Some(chunk) = stream.machine.poll_transmit() {
        let mut chunks = [chunk];
        let result = conn.conn.send_stream(id).write_chunks(&mut chunks);
        let [rest] = chunks;
        match result {
            Ok(_) if rest.is_empty() => {}
            Ok(_) | Err(WriteError::Blocked) => {
                // Flow control: the peer will make room and we get Writable.
                stream.machine.restore_output(rest);
                return;
            }
            Err(WriteError::Stopped(_)) | Err(WriteError::ClosedStream) => {
                conn.streams.remove(&id);
                return;
            }
        }
    }
    if stream.machine.should_finish() {
        let _ = conn.conn.send_stream(id).finish();
        // Nothing more will be written: forget the stream now.
        conn.streams.remove(&id);
        return;
    }
    if let Serving::Events(state) = &mut stream.serving {
        if !state.reading && !state.caught_up {
            state.reading = true;
            shared.events.push_back(ServerEvent::ReadEvents {
                stream: StreamKey {
                    conn: conn.handle,
                    stream: id,
                },
                after: state.after,
                max_events: shared.limits.read_batch_events,
                max_bytes: shared.limits.stream_queue_bytes,
            });
        }
    }
}
