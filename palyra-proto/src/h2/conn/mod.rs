//! The HTTP/2 connection machine (RFC 9113), server or client role.
//!
//! Input: `handle_input(now, bytes)`, application commands (`open_stream`, `send_headers`,
//! `send_data`, `send_trailers`, `reset`, `go_away`, `ping`) and `handle_timeout(now)`.
//! Output: `poll_transmit()` (bytes to write), `poll_event()`, `poll_timeout()`.
//!
//! Limits a peer cannot push past: concurrent streams, header list size, header block size and
//! CONTINUATION count, frame size, HPACK table size; floods of RST_STREAM (rapid reset,
//! CVE-2023-44487), SETTINGS, PING and empty frames end in GOAWAY ENHANCE_YOUR_CALM; a peer that
//! keeps our data stuck behind a zero window past `stall_timeout` is closed.

use super::frame::{
    self, ErrorCode, Frame, FrameDecoder, FrameError, Settings, StreamId, DEFAULT_MAX_FRAME_SIZE,
    MAX_WINDOW_SIZE, PREFACE,
};
use super::hpack::{self, Field, HpackError};
use super::validate::{self, BlockKind};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Which end of the connection this machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts streams.
    Server,
    /// Opens streams.
    Client,
}

/// Limits and settings of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Streams the peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Our per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// Our connection receive window.
    pub connection_window: u32,
    /// Largest frame payload we accept (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame_size: u32,
    /// Largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_size: u32,
    /// HPACK table size we allow the peer (SETTINGS_HEADER_TABLE_SIZE).
    pub header_table_size: u32,
    /// Largest header block (HEADERS + CONTINUATION) before decoding.
    pub max_header_block: usize,
    /// Most CONTINUATION frames in one header block.
    pub max_continuation_frames: usize,
    /// Time the peer has to acknowledge our SETTINGS.
    pub settings_timeout: Duration,
    /// Send a PING after this much silence; close if it is not answered within the same time.
    pub keepalive: Option<Duration>,
    /// Close if queued data cannot move for this long because the peer's window stays closed.
    pub stall_timeout: Duration,
    /// Window over which the flood counters below are measured.
    pub flood_window: Duration,
    /// Streams the peer may reset (or have refused) per flood window.
    pub max_resets: u32,
    /// SETTINGS and PING frames the peer may send per flood window.
    pub max_control_frames: u32,
    /// Frames without effect (empty DATA, empty CONTINUATION, PRIORITY, unknown) per flood window.
    pub max_empty_frames: u32,
    /// Bytes of output we queue (control frames the peer makes us send) before giving up on it.
    pub max_queued_output: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 16 * 1024,
            header_table_size: 4096,
            max_header_block: 64 * 1024,
            max_continuation_frames: 32,
            settings_timeout: Duration::from_secs(10),
            keepalive: None,
            stall_timeout: Duration::from_secs(30),
            flood_window: Duration::from_secs(10),
            max_resets: 200,
            max_control_frames: 100,
            max_empty_frames: 1000,
            max_queued_output: 1 << 20,
        }
    }
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A header block: a request (server), a response (client), or trailers (`end_stream`).
    Headers {
        /// Stream.
        stream: StreamId,
        /// Decoded fields.
        fields: Vec<Field>,
        /// END_STREAM was set.
        end_stream: bool,
    },
    /// Body data (already released back to the peer's flow-control window).
    Data {
        /// Stream.
        stream: StreamId,
        /// Bytes.
        data: Bytes,
        /// END_STREAM was set.
        end_stream: bool,
    },
    /// The peer reset the stream, or we refused/reset it for a protocol reason.
    Reset {
        /// Stream.
        stream: StreamId,
        /// Code.
        code: ErrorCode,
        /// True if the peer sent RST_STREAM.
        remote: bool,
    },
    /// A request's header list was too large; the stream was refused (a server answers 431).
    HeadersTooLarge {
        /// Stream.
        stream: StreamId,
    },
    /// The peer's flow-control window opened: queued data on `stream` may move.
    SendCapacity {
        /// Stream.
        stream: StreamId,
    },
    /// The peer sent GOAWAY: no new streams above `last_stream`.
    GoAway {
        /// Last stream the peer will process.
        last_stream: StreamId,
        /// Code.
        code: ErrorCode,
        /// Debug data.
        debug: Bytes,
    },
    /// A PING we sent was answered.
    PingAck {
        /// Its payload.
        payload: [u8; 8],
    },
    /// The connection is finished (error or after a graceful GOAWAY); stop reading.
    Closed {
        /// Code we or the peer used.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
}

/// Errors of application commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The stream does not exist or can no longer send.
    #[error("stream {0} cannot send")]
    StreamClosed(StreamId),
    /// No new streams: the peer's concurrency limit is reached or GOAWAY was received.
    #[error("no new streams can be opened now")]
    NoCapacity,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

#[derive(Debug, Default)]
struct Stream {
    /// We received END_STREAM (or reset).
    recv_closed: bool,
    /// We sent END_STREAM (or reset).
    send_closed: bool,
    /// Headers (or trailers) seen from the peer.
    headers_seen: bool,
    /// Peer's window for our data on this stream.
    send_window: i64,
    /// Our window for the peer's data on this stream.
    recv_window: i64,
    /// Bytes consumed on this stream but not yet credited back with WINDOW_UPDATE.
    recv_unacked: u32,
    /// Data waiting for flow control.
    queued: VecDeque<Bytes>,
    queued_len: usize,
    /// END_STREAM (or trailers) to send once `queued` is drained.
    pending_end: Option<Option<Vec<Field>>>,
}

/// Counts events in a sliding-ish window (reset when the window elapses).
#[derive(Debug, Clone, Copy)]
struct Counter {
    count: u32,
    since: Option<Instant>,
}

impl Counter {
    fn new() -> Self {
        Self {
            count: 0,
            since: None,
        }
    }

    /// Adds one event; true if the limit is exceeded within `window`.
    fn hit(&mut self, now: Instant, window: Duration, limit: u32) -> bool {
        match self.since {
            Some(since) if now.duration_since(since) < window => self.count += 1,
            _ => {
                self.since = Some(now);
                self.count = 1;
            }
        }
        self.count > limit
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Server: waiting for the 24-byte client preface.
    AwaitingPreface,
    /// Frames flow.
    Open,
    /// GOAWAY sent or received; existing streams finish.
    Draining,
    /// Done.
    Closed,
}

struct HeaderBlock {
    stream: StreamId,
    end_stream: bool,
    block: BytesMut,
    continuations: usize,
}

/// One HTTP/2 connection.
pub struct Connection {
    role: Role,
    config: Config,
    state: State,
    decoder: FrameDecoder,
    preface_have: usize,
    hpack_decoder: hpack::Decoder,
    hpack_encoder: hpack::Encoder,
    out: BytesMut,
    events: VecDeque<Event>,
    streams: HashMap<StreamId, Stream>,
    /// Peer's settings as they apply to us.
    peer_max_frame_size: u32,
    peer_initial_window: u32,
    peer_max_concurrent: u32,
    peer_max_header_list: u32,
    conn_send_window: i64,
    conn_recv_window: i64,
    /// Bytes consumed on the connection but not yet credited back.
    conn_recv_unacked: u32,
    next_local_stream: StreamId,
    last_peer_stream: StreamId,
    /// Streams we refused or reset recently: late frames on them are ignored.
    recently_reset: VecDeque<StreamId>,
    header_block: Option<HeaderBlock>,
    settings_deadline: Option<Instant>,
    goaway_sent: bool,
    goaway_received: Option<StreamId>,
    resets: Counter,
    control: Counter,
    empty: Counter,
    last_activity: Instant,
    ping_deadline: Option<Instant>,
    stalled_since: Option<Instant>,
}

impl Connection {
    /// A new connection. A client writes its preface and SETTINGS at once; a server writes its
    /// SETTINGS and then expects the client preface.
    pub fn new(role: Role, config: Config, now: Instant) -> Self {
        let mut conn = Self {
            role,
            config,
            state: match role {
                Role::Server => State::AwaitingPreface,
                Role::Client => State::Open,
            },
            decoder: FrameDecoder::new(config.max_frame_size),
            preface_have: 0,
            hpack_decoder: hpack::Decoder::new(config.header_table_size as usize),
            hpack_encoder: hpack::Encoder::new(4096),
            out: BytesMut::new(),
            events: VecDeque::new(),
            streams: HashMap::new(),
            peer_max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            peer_initial_window: 65_535,
            peer_max_concurrent: u32::MAX,
            peer_max_header_list: u32::MAX,
            conn_send_window: 65_535,
            conn_recv_window: 65_535,
            conn_recv_unacked: 0,
            next_local_stream: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            last_peer_stream: 0,
            recently_reset: VecDeque::new(),
            header_block: None,
            settings_deadline: Some(now + config.settings_timeout),
            goaway_sent: false,
            goaway_received: None,
            resets: Counter::new(),
            control: Counter::new(),
            empty: Counter::new(),
            last_activity: now,
            ping_deadline: None,
            stalled_since: None,
        };
        if role == Role::Client {
            conn.out.extend_from_slice(PREFACE);
        }
        let settings = Settings {
            header_table_size: Some(config.header_table_size),
            enable_push: Some(false),
            max_concurrent_streams: Some(config.max_concurrent_streams),
            initial_window_size: Some(config.stream_window),
            max_frame_size: Some(config.max_frame_size),
            max_header_list_size: Some(config.max_header_list_size),
        };
        frame::encode_settings(&mut conn.out, &settings, false);
        let extra = i64::from(config.connection_window) - 65_535;
        if extra > 0 {
            frame::encode_window_update(&mut conn.out, 0, extra as u32);
            conn.conn_recv_window += extra;
        }
        conn
    }

    /// Whether the connection is finished.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Streams currently open (not fully closed).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes to write to the transport, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.flush_streams();
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split().freeze())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next deadline (SETTINGS ACK, keepalive, stall).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let keepalive = self
            .config
            .keepalive
            .map(|k| self.ping_deadline.unwrap_or(self.last_activity + k));
        let stall = self.stalled_since.map(|s| s + self.config.stall_timeout);
        [self.settings_deadline, keepalive, stall]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles expired deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.settings_deadline.is_some_and(|d| now >= d) {
            return self.fail(
                ErrorCode::SettingsTimeout,
                "SETTINGS not acknowledged in time",
            );
        }
        if self
            .stalled_since
            .is_some_and(|s| now >= s + self.config.stall_timeout)
        {
            return self.fail(
                ErrorCode::EnhanceYourCalm,
                "peer kept its flow-control window closed",
            );
        }
        if let Some(keepalive) = self.config.keepalive {
            match self.ping_deadline {
                Some(deadline) if now >= deadline => {
                    self.fail(ErrorCode::NoError, "keepalive PING not answered");
                }
                None if now >= self.last_activity + keepalive => {
                    frame::encode_ping(&mut self.out, *b"palyraka", false);
                    self.ping_deadline = Some(now + keepalive);
                }
                _ => {}
            }
        }
    }

    /// Feeds bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        if matches!(self.state, State::Closed) || bytes.is_empty() {
            return;
        }
        self.last_activity = now;
        if self.state == State::AwaitingPreface {
            let take = (PREFACE.len() - self.preface_have).min(bytes.len());
            if bytes[..take] != PREFACE[self.preface_have..self.preface_have + take] {
                return self.fail(ErrorCode::ProtocolError, "invalid connection preface");
            }
            self.preface_have += take;
            bytes = &bytes[take..];
            if self.preface_have < PREFACE.len() {
                return;
            }
            self.state = State::Open;
        }
        self.decoder.handle_input(bytes);
        loop {
            if self.state == State::Closed {
                return;
            }
            match self.decoder.poll_frame() {
                Ok(Some(frame)) => self.handle_frame(now, frame),
                Ok(None) => break,
                Err(FrameError::Connection { code, reason }) => return self.fail(code, reason),
                Err(FrameError::Stream { stream, code, .. }) => {
                    self.reset_stream(now, stream, code)
                }
            }
        }
        if self.out.len() > self.config.max_queued_output {
            self.fail(
                ErrorCode::EnhanceYourCalm,
                "peer is not reading what it makes us send",
            );
        }
    }

    fn fail(&mut self, code: ErrorCode, reason: &str) {
        if self.state == State::Closed {
            return;
        }
        if !self.goaway_sent {
            frame::encode_goaway(
                &mut self.out,
                self.last_peer_stream,
                code,
                reason.as_bytes(),
            );
            self.goaway_sent = true;
        }
        self.state = State::Closed;
        self.header_block = None;
        for (stream, _) in self.streams.drain() {
            self.events.push_back(Event::Reset {
                stream,
                code,
                remote: false,
            });
        }
        self.events.push_back(Event::Closed {
            code,
            reason: reason.to_owned(),
        });
    }

    fn is_peer_stream(&self, id: StreamId) -> bool {
        match self.role {
            Role::Server => id % 2 == 1,
            Role::Client => id.is_multiple_of(2),
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        // A header block in progress admits only its own CONTINUATION frames.
        if let Some(block) = &self.header_block {
            match &frame {
                Frame::Continuation { stream, .. } if *stream == block.stream => {}
                _ => return self.fail(ErrorCode::ProtocolError, "expected CONTINUATION"),
            }
        }
        match frame {
            Frame::Settings { ack, settings } => self.on_settings(now, ack, settings),
            Frame::Ping { ack, payload } => {
                if ack {
                    self.ping_deadline = None;
                    self.events.push_back(Event::PingAck { payload });
                } else {
                    if self.control.hit(
                        now,
                        self.config.flood_window,
                        self.config.max_control_frames,
                    ) {
                        return self.fail(ErrorCode::EnhanceYourCalm, "PING flood");
                    }
                    frame::encode_ping(&mut self.out, payload, true);
                }
            }
            Frame::GoAway {
                last_stream,
                code,
                debug,
            } => {
                self.goaway_received = Some(last_stream);
                // Our streams above last_stream were not processed.
                let dropped: Vec<StreamId> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|id| !self.is_peer_stream(*id) && *id > last_stream)
                    .collect();
                for stream in dropped {
                    self.streams.remove(&stream);
                    self.events.push_back(Event::Reset {
                        stream,
                        code: ErrorCode::RefusedStream,
                        remote: true,
                    });
                }
                self.events.push_back(Event::GoAway {
                    last_stream,
                    code,
                    debug,
                });
                if code != ErrorCode::NoError || self.streams.is_empty() {
                    self.state = State::Closed;
                    self.events.push_back(Event::Closed {
                        code,
                        reason: "peer sent GOAWAY".into(),
                    });
                } else if self.state == State::Open {
                    self.state = State::Draining;
                }
            }
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                block,
            } => {
                if block.is_empty()
                    && !end_headers
                    && self
                        .empty
                        .hit(now, self.config.flood_window, self.config.max_empty_frames)
                {
                    return self.fail(ErrorCode::EnhanceYourCalm, "empty frame flood");
                }
                let mut buf = BytesMut::with_capacity(block.len());
                buf.extend_from_slice(&block);
                if buf.len() > self.config.max_header_block {
                    return self.fail(ErrorCode::EnhanceYourCalm, "header block too large");
                }
                let pending = HeaderBlock {
                    stream,
                    end_stream,
                    block: buf,
                    continuations: 0,
                };
                if end_headers {
                    self.on_header_block(now, pending);
                } else {
                    self.header_block = Some(pending);
                }
            }
            Frame::Continuation {
                stream,
                end_headers,
                block,
            } => {
                let Some(mut pending) = self.header_block.take() else {
                    return self.fail(ErrorCode::ProtocolError, "CONTINUATION without HEADERS");
                };
                debug_assert_eq!(pending.stream, stream);
                pending.continuations += 1;
                if pending.continuations > self.config.max_continuation_frames
                    || pending.block.len() + block.len() > self.config.max_header_block
                {
                    return self.fail(ErrorCode::EnhanceYourCalm, "CONTINUATION flood");
                }
                if block.is_empty()
                    && !end_headers
                    && self
                        .empty
                        .hit(now, self.config.flood_window, self.config.max_empty_frames)
                {
                    return self.fail(ErrorCode::EnhanceYourCalm, "empty frame flood");
                }
                pending.block.extend_from_slice(&block);
                if end_headers {
                    self.on_header_block(now, pending);
                } else {
                    self.header_block = Some(pending);
                }
            }
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => self.on_data(now, stream, end_stream, data, flow_len),
            Frame::RstStream { stream, code } => {
                if stream > self.max_seen_stream() {
                    return self.fail(ErrorCode::ProtocolError, "RST_STREAM on an idle stream");
                }
                // Only a client's resets of open streams count toward the flood limit: rapid
                // reset costs a server work for streams being served; a reset of a finished
                // one costs nothing, and a server ends every call it answers before the
                // request ended with one (RST_STREAM NO_ERROR).
                if self.role == Role::Server
                    && self.streams.contains_key(&stream)
                    && self
                        .resets
                        .hit(now, self.config.flood_window, self.config.max_resets)
                {
                    return self.fail(
                        ErrorCode::EnhanceYourCalm,
                        "too many stream resets (rapid reset)",
                    );
                }
                if self.streams.remove(&stream).is_some() {
                    self.events.push_back(Event::Reset {
                        stream,
                        code,
                        remote: true,
                    });
                    self.maybe_finish_draining();
                }
            }
            Frame::PushPromise { .. } => self.fail(
                ErrorCode::ProtocolError,
                "PUSH_PROMISE received but push is disabled",
            ),
            Frame::Priority { .. } | Frame::Unknown { .. } => {
                if self
                    .empty
                    .hit(now, self.config.flood_window, self.config.max_empty_frames)
                {
                    self.fail(ErrorCode::EnhanceYourCalm, "frame flood without effect");
                }
            }
        }
    }

    fn max_seen_stream(&self) -> StreamId {
        self.last_peer_stream
            .max(self.next_local_stream.saturating_sub(2))
    }

    fn on_settings(&mut self, now: Instant, ack: bool, settings: Settings) {
        if self.control.hit(
            now,
            self.config.flood_window,
            self.config.max_control_frames,
        ) {
            return self.fail(ErrorCode::EnhanceYourCalm, "SETTINGS flood");
        }
        if ack {
            self.settings_deadline = None;
            return;
        }
        if let Some(size) = settings.header_table_size {
            self.hpack_encoder.set_max_table_size(size as usize);
        }
        if let Some(max) = settings.max_concurrent_streams {
            self.peer_max_concurrent = max;
        }
        if let Some(size) = settings.max_frame_size {
            self.peer_max_frame_size = size;
        }
        if let Some(size) = settings.max_header_list_size {
            self.peer_max_header_list = size;
        }
        if let Some(window) = settings.initial_window_size {
            let delta = i64::from(window) - i64::from(self.peer_initial_window);
            self.peer_initial_window = window;
            for stream in self.streams.values_mut() {
                stream.send_window += delta;
                if stream.send_window > i64::from(MAX_WINDOW_SIZE) {
                    return self.fail(ErrorCode::FlowControlError, "stream window overflow");
                }
            }
        }
        frame::encode_settings(&mut self.out, &Settings::default(), true);
    }

    fn on_window_update(&mut self, stream: StreamId, increment: u32) {
        if stream == 0 {
            self.conn_send_window += i64::from(increment);
            if self.conn_send_window > i64::from(MAX_WINDOW_SIZE) {
                return self.fail(ErrorCode::FlowControlError, "connection window overflow");
            }
            let ready: Vec<StreamId> = self
                .streams
                .iter()
                .filter(|(_, s)| !s.queued.is_empty())
                .map(|(id, _)| *id)
                .collect();
            for id in ready {
                self.events.push_back(Event::SendCapacity { stream: id });
            }
            return;
        }
        if stream > self.max_seen_stream() {
            return self.fail(ErrorCode::ProtocolError, "WINDOW_UPDATE on an idle stream");
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.send_window += i64::from(increment);
        if s.send_window > i64::from(MAX_WINDOW_SIZE) {
            self.streams.remove(&stream);
            frame::encode_rst_stream(&mut self.out, stream, ErrorCode::FlowControlError);
            self.events.push_back(Event::Reset {
                stream,
                code: ErrorCode::FlowControlError,
                remote: false,
            });
            return;
        }
        self.events.push_back(Event::SendCapacity { stream });
    }

    fn on_header_block(&mut self, now: Instant, block: HeaderBlock) {
        let HeaderBlock {
            stream,
            end_stream,
            block,
            ..
        } = block;
        // Decode first, always: the HPACK state must follow every block.
        let decoded = self
            .hpack_decoder
            .decode(&block, self.config.max_header_list_size as usize);
        let fields = match decoded {
            Ok(fields) => Some(fields),
            Err(HpackError::HeaderListTooLarge { .. }) => None,
            Err(_) => return self.fail(ErrorCode::CompressionError, "HPACK decoding failed"),
        };
        let known = self.streams.contains_key(&stream);
        if !known {
            if self.recently_reset.contains(&stream) {
                return; // late frame on a stream we reset
            }
            if !self.is_peer_stream(stream) || stream <= self.last_peer_stream {
                return self.fail(
                    ErrorCode::ProtocolError,
                    "HEADERS on a closed or invalid stream",
                );
            }
            self.last_peer_stream = stream;
            if self.goaway_sent || self.state != State::Open {
                return self.refuse(now, stream, ErrorCode::RefusedStream);
            }
            if self.streams.len() >= self.config.max_concurrent_streams as usize {
                return self.refuse(now, stream, ErrorCode::RefusedStream);
            }
            self.streams.insert(
                stream,
                Stream {
                    send_window: i64::from(self.peer_initial_window),
                    recv_window: i64::from(self.config.stream_window),
                    ..Stream::default()
                },
            );
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.recv_closed {
            self.reset_stream(now, stream, ErrorCode::StreamClosed);
            return;
        }
        let Some(fields) = fields else {
            self.events.push_back(Event::HeadersTooLarge { stream });
            return;
        };
        if s.headers_seen && !end_stream {
            // Trailers must end the stream.
            return self.reset_stream(now, stream, ErrorCode::ProtocolError);
        }
        let kind = match (s.headers_seen, self.role) {
            (true, _) => BlockKind::Trailers,
            (false, Role::Server) => BlockKind::Request,
            (false, Role::Client) => BlockKind::Response,
        };
        if validate::check(kind, &fields).is_err() {
            // A malformed request or response is a stream error (RFC 9113 8.1.1).
            return self.reset_stream(now, stream, ErrorCode::ProtocolError);
        }
        s.headers_seen = true;
        if end_stream {
            s.recv_closed = true;
        }
        self.events.push_back(Event::Headers {
            stream,
            fields,
            end_stream,
        });
        self.maybe_remove(stream);
    }

    fn on_data(
        &mut self,
        now: Instant,
        stream: StreamId,
        end_stream: bool,
        data: Bytes,
        flow_len: u32,
    ) {
        let flow = i64::from(flow_len);
        self.conn_recv_window -= flow;
        if self.conn_recv_window < 0 {
            return self.fail(
                ErrorCode::FlowControlError,
                "peer exceeded the connection window",
            );
        }
        // The application consumes synchronously, so credit goes back as data arrives, batched:
        // one WINDOW_UPDATE once half a window has been used, not one per DATA frame.
        self.conn_recv_unacked += flow_len;
        if self.conn_recv_unacked > 0 && self.conn_recv_unacked >= self.config.connection_window / 2
        {
            frame::encode_window_update(&mut self.out, 0, self.conn_recv_unacked);
            self.conn_recv_window += i64::from(self.conn_recv_unacked);
            self.conn_recv_unacked = 0;
        }
        if data.is_empty()
            && !end_stream
            && self
                .empty
                .hit(now, self.config.flood_window, self.config.max_empty_frames)
        {
            return self.fail(ErrorCode::EnhanceYourCalm, "empty DATA flood");
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            if stream > self.max_seen_stream() {
                return self.fail(ErrorCode::ProtocolError, "DATA on an idle stream");
            }
            if !self.recently_reset.contains(&stream) {
                frame::encode_rst_stream(&mut self.out, stream, ErrorCode::StreamClosed);
            }
            return;
        };
        if s.recv_closed || !s.headers_seen {
            return self.reset_stream(now, stream, ErrorCode::StreamClosed);
        }
        s.recv_window -= flow;
        if s.recv_window < 0 {
            return self.reset_stream(now, stream, ErrorCode::FlowControlError);
        }
        if !end_stream {
            s.recv_unacked += flow_len;
            if s.recv_unacked > 0 && s.recv_unacked >= self.config.stream_window / 2 {
                frame::encode_window_update(&mut self.out, stream, s.recv_unacked);
                s.recv_window += i64::from(s.recv_unacked);
                s.recv_unacked = 0;
            }
        }
        if end_stream {
            s.recv_closed = true;
        }
        self.events.push_back(Event::Data {
            stream,
            data,
            end_stream,
        });
        self.maybe_remove(stream);
    }

    /// Refuses a new stream (REFUSED_STREAM): counts toward the reset flood limit.
    fn refuse(&mut self, now: Instant, stream: StreamId, code: ErrorCode) {
        if self
            .resets
            .hit(now, self.config.flood_window, self.config.max_resets)
        {
            return self.fail(ErrorCode::EnhanceYourCalm, "too many refused streams");
        }
        frame::encode_rst_stream(&mut self.out, stream, code);
        self.remember_reset(stream);
    }

    fn reset_stream(&mut self, _now: Instant, stream: StreamId, code: ErrorCode) {
        frame::encode_rst_stream(&mut self.out, stream, code);
        if self.streams.remove(&stream).is_some() {
            self.events.push_back(Event::Reset {
                stream,
                code,
                remote: false,
            });
        }
        self.remember_reset(stream);
        self.maybe_finish_draining();
    }

    fn remember_reset(&mut self, stream: StreamId) {
        self.recently_reset.push_back(stream);
        if self.recently_reset.len() > 256 {
            self.recently_reset.pop_front();
        }
    }

    fn maybe_remove(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        let sent_all = s.send_closed && s.queued.is_empty() && s.pending_end.is_none();
        if sent_all && s.recv_closed {
            self.streams.remove(&stream);
            self.maybe_finish_draining();
        } else if sent_all && self.role == Role::Server {
            // The response is complete before the request (a gRPC call that ended while its
            // client still streams): RST_STREAM NO_ERROR asks the client to stop sending
            // without error (RFC 9113 section 8.1) and frees the stream on both sides, so
            // finished calls never count against the concurrency limit.
            frame::encode_rst_stream(&mut self.out, stream, ErrorCode::NoError);
            self.streams.remove(&stream);
            self.remember_reset(stream);
            self.maybe_finish_draining();
        }
    }

    fn maybe_finish_draining(&mut self) {
        if self.state == State::Draining && self.streams.is_empty() {
            self.state = State::Closed;
            self.events.push_back(Event::Closed {
                code: ErrorCode::NoError,
                reason: "graceful shutdown complete".into(),
            });
        }
    }

    // ---- application commands ----

    /// Client: opens a stream with a request header block.
    pub fn open_stream(
        &mut self,
        fields: &[Field],
        end_stream: bool,
    ) -> Result<StreamId, SendError> {
        if self.role != Role::Client || self.state != State::Open || self.goaway_received.is_some()
        {
            return Err(SendError::NoCapacity);
        }
        let local_open = self
            .streams
            .keys()
            .filter(|id| !self.is_peer_stream(**id))
            .count();
        if local_open as u32 >= self.peer_max_concurrent || self.next_local_stream > MAX_WINDOW_SIZE
        {
            return Err(SendError::NoCapacity);
        }
        let id = self.next_local_stream;
        self.next_local_stream += 2;
        self.streams.insert(
            id,
            Stream {
                send_window: i64::from(self.peer_initial_window),
                recv_window: i64::from(self.config.stream_window),
                ..Stream::default()
            },
        );
        self.write_headers(id, fields, end_stream);
        if end_stream {
            if let Some(s) = self.streams.get_mut(&id) {
                s.send_closed = true;
            }
        }
        Ok(id)
    }

    /// Sends a header block (a response, or headers before data) on `stream`.
    pub fn send_headers(
        &mut self,
        stream: StreamId,
        fields: &[Field],
        end_stream: bool,
    ) -> Result<(), SendError> {
        let s = self.sendable(stream)?;
        if end_stream {
            if !s.queued.is_empty() {
                s.pending_end = Some(Some(fields.to_vec()));
                return Ok(());
            }
            s.send_closed = true;
        }
        self.write_headers(stream, fields, end_stream);
        self.maybe_remove(stream);
        Ok(())
    }

    /// Queues body data; it is sent as flow control allows (see [`Event::SendCapacity`]).
    pub fn send_data(
        &mut self,
        stream: StreamId,
        data: Bytes,
        end_stream: bool,
    ) -> Result<(), SendError> {
        let s = self.sendable(stream)?;
        if !data.is_empty() {
            s.queued_len += data.len();
            s.queued.push_back(data);
        }
        if end_stream {
            s.pending_end = Some(None);
        }
        Ok(())
    }

    /// Ends the stream with trailers, after any queued data.
    pub fn send_trailers(&mut self, stream: StreamId, fields: &[Field]) -> Result<(), SendError> {
        self.send_headers(stream, fields, true)
    }

    /// Bytes queued on `stream` waiting for flow control.
    pub fn queued_len(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.queued_len)
    }

    /// Resets a stream (nothing is sent for one that is already closed).
    pub fn reset(&mut self, stream: StreamId, code: ErrorCode) {
        if self.state == State::Closed || !self.streams.contains_key(&stream) {
            return;
        }
        frame::encode_rst_stream(&mut self.out, stream, code);
        self.streams.remove(&stream);
        self.remember_reset(stream);
        self.maybe_finish_draining();
    }

    /// Graceful shutdown: GOAWAY with the last stream we will process; open streams finish.
    pub fn go_away(&mut self, code: ErrorCode, debug: &str) {
        if self.goaway_sent || self.state == State::Closed {
            return;
        }
        frame::encode_goaway(&mut self.out, self.last_peer_stream, code, debug.as_bytes());
        self.goaway_sent = true;
        if code != ErrorCode::NoError || self.streams.is_empty() {
            self.state = State::Closed;
            self.events.push_back(Event::Closed {
                code,
                reason: debug.to_owned(),
            });
        } else {
            self.state = State::Draining;
        }
    }

    /// Sends a PING.
    pub fn ping(&mut self, payload: [u8; 8]) {
        if self.state != State::Closed {
            frame::encode_ping(&mut self.out, payload, false);
        }
    }

    fn sendable(&mut self, stream: StreamId) -> Result<&mut Stream, SendError> {
        if self.state == State::Closed {
            return Err(SendError::Closed);
        }
        match self.streams.get_mut(&stream) {
            Some(s) if !s.send_closed && s.pending_end.is_none() => Ok(s),
            _ => Err(SendError::StreamClosed(stream)),
        }
    }

    fn write_headers(&mut self, stream: StreamId, fields: &[Field], end_stream: bool) {
        let mut block = Vec::new();
        self.hpack_encoder.encode(fields, &mut block);
        frame::encode_headers(
            &mut self.out,
            stream,
            &block,
            end_stream,
            self.peer_max_frame_size,
        );
    }

    /// Moves queued data into DATA frames as far as both windows allow.
    fn flush_streams(&mut self) {
        if self.state == State::Closed {
            return;
        }
        let mut blocked = false;
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.queued.is_empty() || s.pending_end.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut finished = Vec::new();
        for id in ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            // Each DATA frame carries as much queued data as the windows and the frame size
            // allow, across message boundaries: many small messages make few frames (peers
            // such as h2 budget the framing overhead of small DATA frames).
            while !s.queued.is_empty() {
                let allowed = s
                    .send_window
                    .min(self.conn_send_window)
                    .min(i64::from(self.peer_max_frame_size));
                if allowed <= 0 {
                    blocked = true;
                    break;
                }
                let n = (allowed as usize).min(s.queued_len);
                s.queued_len -= n;
                s.send_window -= n as i64;
                self.conn_send_window -= n as i64;
                let end = s.queued_len == 0 && matches!(s.pending_end, Some(None));
                frame::encode_data_header(&mut self.out, id, n, end);
                let mut left = n;
                while left > 0 {
                    let Some(chunk) = s.queued.front_mut() else {
                        break;
                    };
                    let take = left.min(chunk.len());
                    self.out.extend_from_slice(&chunk[..take]);
                    if take == chunk.len() {
                        s.queued.pop_front();
                    } else {
                        let _ = chunk.split_to(take);
                    }
                    left -= take;
                }
                if end {
                    s.pending_end = None;
                    s.send_closed = true;
                }
            }
            if s.queued.is_empty() {
                match s.pending_end.take() {
                    Some(None) => {
                        frame::encode_data(&mut self.out, id, &[], true);
                        s.send_closed = true;
                    }
                    Some(Some(trailers)) => {
                        s.send_closed = true;
                        finished.push((id, Some(trailers)));
                        continue;
                    }
                    None => {}
                }
                if s.send_closed {
                    finished.push((id, None));
                }
            }
        }
        for (id, trailers) in finished {
            if let Some(trailers) = trailers {
                self.write_headers(id, &trailers, true);
            }
            self.maybe_remove(id);
        }
        self.stalled_since = if blocked {
            self.stalled_since.or(Some(self.last_activity))
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests;
