//! HTTP/2 frames (RFC 9113 sections 4 and 6): an incremental decoder that checks every frame's
//! shape before the connection machine sees it, and encoders.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The 9-byte frame header.
pub const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial (and minimum) value.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's largest allowed value.
pub const MAX_MAX_FRAME_SIZE: u32 = 16_777_215;
/// Largest flow-control window.
pub const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;
/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream identifier (31 bits).
pub type StreamId = u32;

/// HTTP/2 error codes (RFC 9113 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0x0: graceful shutdown or no error.
    NoError,
    /// 0x1: a protocol error.
    ProtocolError,
    /// 0x2: an implementation fault.
    InternalError,
    /// 0x3: flow-control limits violated.
    FlowControlError,
    /// 0x4: SETTINGS not acknowledged in time.
    SettingsTimeout,
    /// 0x5: frame on a half-closed stream.
    StreamClosed,
    /// 0x6: frame of invalid size.
    FrameSizeError,
    /// 0x7: stream not processed (safe to retry).
    RefusedStream,
    /// 0x8: stream cancelled.
    Cancel,
    /// 0x9: HPACK state broken.
    CompressionError,
    /// 0xa: CONNECT failed.
    ConnectError,
    /// 0xb: peer is generating excessive load.
    EnhanceYourCalm,
    /// 0xc: transport security inadequate.
    InadequateSecurity,
    /// 0xd: HTTP/1.1 required.
    Http11Required,
    /// Any other code (treated as INTERNAL_ERROR by us, RFC 9113 7).
    Other(u32),
}

impl ErrorCode {
    /// The wire value.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::NoError => 0x0,
            ErrorCode::ProtocolError => 0x1,
            ErrorCode::InternalError => 0x2,
            ErrorCode::FlowControlError => 0x3,
            ErrorCode::SettingsTimeout => 0x4,
            ErrorCode::StreamClosed => 0x5,
            ErrorCode::FrameSizeError => 0x6,
            ErrorCode::RefusedStream => 0x7,
            ErrorCode::Cancel => 0x8,
            ErrorCode::CompressionError => 0x9,
            ErrorCode::ConnectError => 0xa,
            ErrorCode::EnhanceYourCalm => 0xb,
            ErrorCode::InadequateSecurity => 0xc,
            ErrorCode::Http11Required => 0xd,
            ErrorCode::Other(code) => code,
        }
    }

    /// From the wire value.
    pub fn from_code(code: u32) -> Self {
        match code {
            0x0 => ErrorCode::NoError,
            0x1 => ErrorCode::ProtocolError,
            0x2 => ErrorCode::InternalError,
            0x3 => ErrorCode::FlowControlError,
            0x4 => ErrorCode::SettingsTimeout,
            0x5 => ErrorCode::StreamClosed,
            0x6 => ErrorCode::FrameSizeError,
            0x7 => ErrorCode::RefusedStream,
            0x8 => ErrorCode::Cancel,
            0x9 => ErrorCode::CompressionError,
            0xa => ErrorCode::ConnectError,
            0xb => ErrorCode::EnhanceYourCalm,
            0xc => ErrorCode::InadequateSecurity,
            0xd => ErrorCode::Http11Required,
            other => ErrorCode::Other(other),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ErrorCode::NoError => "NO_ERROR",
            ErrorCode::ProtocolError => "PROTOCOL_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::FlowControlError => "FLOW_CONTROL_ERROR",
            ErrorCode::SettingsTimeout => "SETTINGS_TIMEOUT",
            ErrorCode::StreamClosed => "STREAM_CLOSED",
            ErrorCode::FrameSizeError => "FRAME_SIZE_ERROR",
            ErrorCode::RefusedStream => "REFUSED_STREAM",
            ErrorCode::Cancel => "CANCEL",
            ErrorCode::CompressionError => "COMPRESSION_ERROR",
            ErrorCode::ConnectError => "CONNECT_ERROR",
            ErrorCode::EnhanceYourCalm => "ENHANCE_YOUR_CALM",
            ErrorCode::InadequateSecurity => "INADEQUATE_SECURITY",
            ErrorCode::Http11Required => "HTTP_1_1_REQUIRED",
            ErrorCode::Other(code) => return write!(f, "0x{code:x}"),
        };
        f.write_str(name)
    }
}

/// A malformed frame: either the whole connection fails or just one stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Connection error: send GOAWAY with this code and close.
    #[error("connection error {code}: {reason}")]
    Connection {
        /// Code for GOAWAY.
        code: ErrorCode,
        /// Explanation (also sent as GOAWAY debug data).
        reason: &'static str,
    },
    /// Stream error: send RST_STREAM with this code on `stream`; the connection goes on.
    #[error("stream {stream} error {code}: {reason}")]
    Stream {
        /// The stream.
        stream: StreamId,
        /// Code for RST_STREAM.
        code: ErrorCode,
        /// Explanation.
        reason: &'static str,
    },
}

fn conn(code: ErrorCode, reason: &'static str) -> FrameError {
    FrameError::Connection { code, reason }
}

/// SETTINGS identifiers (RFC 9113 6.5.2).
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A SETTINGS frame's parameters; `None` means "not sent".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub header_table_size: Option<u32>,
    /// SETTINGS_ENABLE_PUSH.
    pub enable_push: Option<bool>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub initial_window_size: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: Option<u32>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: Option<u32>,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA: `flow_len` counts toward flow control (payload plus padding).
    Data {
        /// Stream.
        stream: StreamId,
        /// END_STREAM.
        end_stream: bool,
        /// Payload without padding.
        data: Bytes,
        /// Bytes counted by flow control.
        flow_len: u32,
    },
    /// HEADERS (priority information is parsed and ignored).
    Headers {
        /// Stream.
        stream: StreamId,
        /// END_STREAM.
        end_stream: bool,
        /// END_HEADERS.
        end_headers: bool,
        /// Header block fragment.
        block: Bytes,
    },
    /// PRIORITY (deprecated; ignored, but a stream may not depend on itself).
    Priority {
        /// Stream.
        stream: StreamId,
    },
    /// RST_STREAM.
    RstStream {
        /// Stream.
        stream: StreamId,
        /// Why.
        code: ErrorCode,
    },
    /// SETTINGS.
    Settings {
        /// ACK flag (then there are no parameters).
        ack: bool,
        /// Parameters.
        settings: Settings,
    },
    /// PUSH_PROMISE (we never enable push, so receiving one is a protocol error).
    PushPromise {
        /// Stream.
        stream: StreamId,
    },
    /// PING.
    Ping {
        /// ACK flag.
        ack: bool,
        /// Opaque data.
        payload: [u8; 8],
    },
    /// GOAWAY.
    GoAway {
        /// Last stream the sender may process.
        last_stream: StreamId,
        /// Why.
        code: ErrorCode,
        /// Debug data.
        debug: Bytes,
    },
    /// WINDOW_UPDATE (stream 0: the connection window).
    WindowUpdate {
        /// Stream or 0.
        stream: StreamId,
        /// Increment, 1..=2^31-1.
        increment: u32,
    },
    /// CONTINUATION.
    Continuation {
        /// Stream.
        stream: StreamId,
        /// END_HEADERS.
        end_headers: bool,
        /// Header block fragment.
        block: Bytes,
    },
    /// A frame of an unknown type (to be ignored, RFC 9113 5.5).
    Unknown {
        /// Its type.
        kind: u8,
        /// Its stream.
        stream: StreamId,
    },
}

mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Incremental frame decoder; frames come out in order whatever the chunking.
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_size: u32,
}

impl FrameDecoder {
    /// A decoder accepting payloads up to `max_frame_size` (our SETTINGS_MAX_FRAME_SIZE).
    pub fn new(max_frame_size: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_size,
        }
    }

    /// Changes the accepted payload size (after our SETTINGS were acknowledged).
    pub fn set_max_frame_size(&mut self, size: u32) {
        self.max_frame_size = size;
    }

    /// Adds received bytes.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (at most one frame header plus one frame payload once errors are acted on).
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error to act on.
    /// After a connection error the caller must stop reading.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]);
        if len > self.max_frame_size {
            return Err(conn(
                ErrorCode::FrameSizeError,
                "frame larger than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total).freeze();
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        frame.advance(FRAME_HEADER_LEN);
        parse(kind, flags, stream, frame).map(Some)
    }
}

fn strip_padding(flags: u8, mut payload: Bytes) -> Result<Bytes, FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let pad = *payload.first().ok_or(conn(
        ErrorCode::FrameSizeError,
        "padded frame without pad length",
    ))? as usize;
    payload.advance(1);
    if pad > payload.len() {
        return Err(conn(
            ErrorCode::ProtocolError,
            "padding longer than the frame",
        ));
    }
    payload.truncate(payload.len() - pad);
    Ok(payload)
}

fn parse(kind: u8, flags: u8, stream: StreamId, payload: Bytes) -> Result<Frame, FrameError> {
    let len = payload.len();
    let needs_stream = |s: StreamId, what: &'static str| {
        if s == 0 {
            Err(conn(ErrorCode::ProtocolError, what))
        } else {
            Ok(())
        }
    };
    let needs_zero = |s: StreamId, what: &'static str| {
        if s != 0 {
            Err(conn(ErrorCode::ProtocolError, what))
        } else {
            Ok(())
        }
    };
    match kind {
        kind::DATA => {
            needs_stream(stream, "DATA on stream 0")?;
            let data = strip_padding(flags, payload)?;
            Ok(Frame::Data {
                stream,
                end_stream: flags & flag::END_STREAM != 0,
                data,
                flow_len: len as u32,
            })
        }
        kind::HEADERS => {
            needs_stream(stream, "HEADERS on stream 0")?;
            let mut block = strip_padding(flags, payload)?;
            if flags & flag::PRIORITY != 0 {
                if block.len() < 5 {
                    return Err(conn(
                        ErrorCode::FrameSizeError,
                        "HEADERS too short for priority",
                    ));
                }
                let dependency =
                    u32::from_be_bytes([block[0], block[1], block[2], block[3]]) & 0x7fff_ffff;
                if dependency == stream {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::ProtocolError,
                        reason: "stream depends on itself",
                    });
                }
                block.advance(5);
            }
            Ok(Frame::Headers {
                stream,
                end_stream: flags & flag::END_STREAM != 0,
                end_headers: flags & flag::END_HEADERS != 0,
                block,
            })
        }
        kind::PRIORITY => {
            needs_stream(stream, "PRIORITY on stream 0")?;
            if len != 5 {
                return Err(FrameError::Stream {
                    stream,
                    code: ErrorCode::FrameSizeError,
                    reason: "PRIORITY must be 5 bytes",
                });
            }
            let dependency =
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
            if dependency == stream {
                return Err(FrameError::Stream {
                    stream,
                    code: ErrorCode::ProtocolError,
                    reason: "stream depends on itself",
                });
            }
            Ok(Frame::Priority { stream })
        }
        kind::RST_STREAM => {
            needs_stream(stream, "RST_STREAM on stream 0")?;
            if len != 4 {
                return Err(conn(
                    ErrorCode::FrameSizeError,
                    "RST_STREAM must be 4 bytes",
                ));
            }
            let code = ErrorCode::from_code(u32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ]));
            Ok(Frame::RstStream { stream, code })
        }
        kind::SETTINGS => {
            needs_zero(stream, "SETTINGS on a stream")?;
            let ack = flags & flag::ACK != 0;
            if ack && len != 0 {
                return Err(conn(
                    ErrorCode::FrameSizeError,
                    "SETTINGS ACK with a payload",
                ));
            }
            if !len.is_multiple_of(6) {
                return Err(conn(
                    ErrorCode::FrameSizeError,
                    "SETTINGS length not a multiple of 6",
                ));
            }
            let mut settings = Settings::default();
            for entry in payload.chunks_exact(6) {
                let id = u16::from_be_bytes([entry[0], entry[1]]);
                let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                match id {
                    setting::HEADER_TABLE_SIZE => settings.header_table_size = Some(value),
                    setting::ENABLE_PUSH => {
                        if value > 1 {
                            return Err(conn(
                                ErrorCode::ProtocolError,
                                "SETTINGS_ENABLE_PUSH must be 0 or 1",
                            ));
                        }
                        settings.enable_push = Some(value == 1);
                    }
                    setting::MAX_CONCURRENT_STREAMS => {
                        settings.max_concurrent_streams = Some(value)
                    }
                    setting::INITIAL_WINDOW_SIZE => {
                        if value > MAX_WINDOW_SIZE {
                            return Err(conn(
                                ErrorCode::FlowControlError,
                                "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                            ));
                        }
                        settings.initial_window_size = Some(value);
                    }
                    setting::MAX_FRAME_SIZE => {
                        if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) {
                            return Err(conn(
                                ErrorCode::ProtocolError,
                                "SETTINGS_MAX_FRAME_SIZE out of range",
                            ));
                        }
                        settings.max_frame_size = Some(value);
                    }
                    setting::MAX_HEADER_LIST_SIZE => settings.max_header_list_size = Some(value),
                    _ => {} // unknown settings are ignored
                }
            }
            Ok(Frame::Settings { ack, settings })
        }
        kind::PUSH_PROMISE => {
            needs_stream(stream, "PUSH_PROMISE on stream 0")?;
            Ok(Frame::PushPromise { stream })
        }
        kind::PING => {
            needs_zero(stream, "PING on a stream")?;
            let payload: [u8; 8] = payload[..]
                .try_into()
                .map_err(|_| conn(ErrorCode::FrameSizeError, "PING must be 8 bytes"))?;
            Ok(Frame::Ping {
                ack: flags & flag::ACK != 0,
                payload,
            })
        }
        kind::GOAWAY => {
            needs_zero(stream, "GOAWAY on a stream")?;
            if len < 8 {
                return Err(conn(
                    ErrorCode::FrameSizeError,
                    "GOAWAY shorter than 8 bytes",
                ));
            }
            let last_stream =
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
            let code = ErrorCode::from_code(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
            Ok(Frame::GoAway {
                last_stream,
                code,
                debug: payload.slice(8..),
            })
        }
        kind::WINDOW_UPDATE => {
            if len != 4 {
                return Err(conn(
                    ErrorCode::FrameSizeError,
                    "WINDOW_UPDATE must be 4 bytes",
                ));
            }
            let increment =
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
            if increment == 0 {
                return Err(if stream == 0 {
                    conn(ErrorCode::ProtocolError, "WINDOW_UPDATE with increment 0")
                } else {
                    FrameError::Stream {
                        stream,
                        code: ErrorCode::ProtocolError,
                        reason: "WINDOW_UPDATE with increment 0",
                    }
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        kind::CONTINUATION => {
            needs_stream(stream, "CONTINUATION on stream 0")?;
            Ok(Frame::Continuation {
                stream,
                end_headers: flags & flag::END_HEADERS != 0,
                block: payload,
            })
        }
        other => Ok(Frame::Unknown {
            kind: other,
            stream,
        }),
    }
}

fn header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: StreamId) {
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & 0x7fff_ffff);
}

/// Appends a DATA frame (the caller respects the peer's max frame size and flow control).
pub fn encode_data(out: &mut BytesMut, stream: StreamId, data: &[u8], end_stream: bool) {
    encode_data_header(out, stream, data.len(), end_stream);
    out.extend_from_slice(data);
}

/// Appends the 9-byte header of a DATA frame whose `len` payload bytes the caller appends next.
pub fn encode_data_header(out: &mut BytesMut, stream: StreamId, len: usize, end_stream: bool) {
    header(
        out,
        len,
        kind::DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        stream,
    );
}

/// Appends a header block as HEADERS plus CONTINUATION frames of at most `max_frame_size`.
pub fn encode_headers(
    out: &mut BytesMut,
    stream: StreamId,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size.max(DEFAULT_MAX_FRAME_SIZE) as usize;
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    header(out, first.len(), kind::HEADERS, flags, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        header(out, chunk.len(), kind::CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// Appends a RST_STREAM frame.
pub fn encode_rst_stream(out: &mut BytesMut, stream: StreamId, code: ErrorCode) {
    header(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(code.code());
}

/// Appends a SETTINGS frame (or its ACK when `ack`).
pub fn encode_settings(out: &mut BytesMut, settings: &Settings, ack: bool) {
    let mut entries: Vec<(u16, u32)> = Vec::new();
    if !ack {
        let s = settings;
        let push = |id, v: Option<u32>, e: &mut Vec<(u16, u32)>| {
            if let Some(v) = v {
                e.push((id, v));
            }
        };
        push(
            setting::HEADER_TABLE_SIZE,
            s.header_table_size,
            &mut entries,
        );
        push(
            setting::ENABLE_PUSH,
            s.enable_push.map(u32::from),
            &mut entries,
        );
        push(
            setting::MAX_CONCURRENT_STREAMS,
            s.max_concurrent_streams,
            &mut entries,
        );
        push(
            setting::INITIAL_WINDOW_SIZE,
            s.initial_window_size,
            &mut entries,
        );
        push(setting::MAX_FRAME_SIZE, s.max_frame_size, &mut entries);
        push(
            setting::MAX_HEADER_LIST_SIZE,
            s.max_header_list_size,
            &mut entries,
        );
    }
    header(
        out,
        entries.len() * 6,
        kind::SETTINGS,
        if ack { flag::ACK } else { 0 },
        0,
    );
    for (id, value) in entries {
        out.put_u16(id);
        out.put_u32(value);
    }
}

/// Appends a PING frame.
pub fn encode_ping(out: &mut BytesMut, payload: [u8; 8], ack: bool) {
    header(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&payload);
}

/// Appends a GOAWAY frame.
pub fn encode_goaway(out: &mut BytesMut, last_stream: StreamId, code: ErrorCode, debug: &[u8]) {
    header(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.put_u32(last_stream & 0x7fff_ffff);
    out.put_u32(code.code());
    out.extend_from_slice(debug);
}

/// Appends a WINDOW_UPDATE frame.
pub fn encode_window_update(out: &mut BytesMut, stream: StreamId, increment: u32) {
    header(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment & 0x7fff_ffff);
}

#[cfg(test)]
mod tests;
