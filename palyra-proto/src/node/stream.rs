//! The per-stream node-plane machine (server side): one request frame in, response frames out.
//!
//! It knows nothing about QUIC: the connection machine feeds it the bytes read from a stream and
//! takes the bytes it wants written, so it is tested (and fuzzed) on its own.

use super::message::{parse_request, ErrorCode, NodeRequest, ResponseFrame};
use crate::frame::{encode_frame, FrameDecoder, FrameError};
use bytes::Bytes;
use std::collections::VecDeque;

/// Event bodies at least this large are queued as chunks of their own, shared rather than copied
/// into the frame being built.
pub const SHARED_BODY_BYTES: usize = 4096;

/// The start of every event frame's JSON, before the seq.
const EVENT_HEAD: &[u8] = br#"{"protocol_version":1,"kind":"event","ok":true,"seq":"#;
/// Between the seq and the event body.
const EVENT_MID: &[u8] = br#","event":"#;

/// What the stream machine asks its owner to do.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A complete, valid request arrived; the owner serves it.
    Request(NodeRequest),
    /// The request was refused; an error frame is queued and the stream will finish.
    Refused {
        /// The error code sent.
        code: ErrorCode,
        /// The message sent.
        message: String,
    },
}

enum Phase {
    Request(FrameDecoder),
    Serving,
    Done,
}

/// Server side of one node-plane request stream.
pub struct RequestStream {
    phase: Phase,
    max_frame: usize,
    /// Frames being built.
    out: Vec<u8>,
    /// Bytes ready to be written, in order, before `out`: built frames and shared event bodies.
    ready: VecDeque<Bytes>,
    /// Total length of `ready`.
    ready_bytes: usize,
    /// Bytes handed to the transport that it did not accept yet; they go first.
    unsent: Option<Bytes>,
    finish_when_flushed: bool,
    event: Option<StreamEvent>,
}

impl RequestStream {
    /// A stream expecting one request frame of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            phase: Phase::Request(FrameDecoder::new(max_frame)),
            max_frame,
            out: Vec::new(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            unsent: None,
            finish_when_flushed: false,
            event: None,
        }
    }

    /// Feeds bytes read from the stream; `fin` is true once the peer finished its side.
    /// Bytes after the request frame are ignored (the original protocol allows them).
    pub fn handle_input(&mut self, bytes: &[u8], fin: bool) {
        let Phase::Request(decoder) = &mut self.phase else {
            return;
        };
        // A complete request wins over whatever follows it in the same chunk: bytes after the
        // request frame are ignored, even if they would not decode.
        let result = decoder.handle_input(bytes);
        if let Some(frame) = decoder.poll_frame() {
            match parse_request(&frame) {
                Ok(request) => {
                    self.phase = Phase::Serving;
                    self.event = Some(StreamEvent::Request(request));
                }
                Err(err) => self.refuse(err.code, err.message),
            }
            return;
        }
        if let Err(err) = result {
            let code = match err {
                FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                FrameError::Truncated { .. } => ErrorCode::StreamFailure,
            };
            self.refuse(code, err.to_string());
            return;
        }
        if fin {
            let message = match decoder.finish() {
                Err(err) => err.to_string(),
                Ok(()) => "stream finished before a request frame".to_owned(),
            };
            self.refuse(ErrorCode::StreamFailure, message);
        }
    }

    /// Whether the machine still wants request bytes.
    pub fn wants_input(&self) -> bool {
        matches!(self.phase, Phase::Request(_))
    }

    /// Takes what happened, if anything.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.event.take()
    }

    /// Queues one response frame. Fails if the frame exceeds the frame limit.
    pub fn send(&mut self, frame: &ResponseFrame) -> Result<(), FrameError> {
        encode_frame(&frame.to_json(), self.max_frame, &mut self.out)
    }

    /// Queues an event frame built around an already-serialized event body, without re-encoding
    /// it; a body of [`SHARED_BODY_BYTES`] or more is not copied either.
    pub fn send_event_raw(&mut self, seq: u64, body: &Bytes) -> Result<(), FrameError> {
        let mut digits = [0u8; 20];
        let seq_text = decimal(seq, &mut digits);
        let len = EVENT_HEAD.len() + seq_text.len() + EVENT_MID.len() + body.len() + 1;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame,
            });
        }
        // `len` fits in u32: the frame limit does.
        self.out.extend_from_slice(&(len as u32).to_be_bytes());
        self.out.extend_from_slice(EVENT_HEAD);
        self.out.extend_from_slice(seq_text);
        self.out.extend_from_slice(EVENT_MID);
        if body.len() >= SHARED_BODY_BYTES {
            self.seal_out();
            self.ready_bytes += body.len();
            self.ready.push_back(body.clone());
        } else {
            self.out.extend_from_slice(body);
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Queues a final error frame and marks the stream to finish once it is written.
    pub fn refuse(&mut self, code: ErrorCode, message: impl Into<String>) {
        let message = message.into();
        // Error frames are ours and small; they are sent even under a tiny request limit.
        let frame = ResponseFrame::error(code, message.clone()).to_json();
        let _ = encode_frame(&frame, usize::MAX, &mut self.out);
        self.phase = Phase::Done;
        self.finish_when_flushed = true;
        self.event = Some(StreamEvent::Refused { code, message });
    }

    /// Marks the response complete: the stream finishes once the queued bytes are written.
    pub fn finish(&mut self) {
        self.phase = Phase::Done;
        self.finish_when_flushed = true;
    }

    /// Takes the bytes to write next, without copying; give back what the transport did not
    /// accept with [`RequestStream::restore_output`].
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(unsent) = self.unsent.take() {
            return Some(unsent);
        }
        if let Some(chunk) = self.ready.pop_front() {
            self.ready_bytes -= chunk.len();
            return Some(chunk);
        }
        self.seal_out();
        let chunk = self.ready.pop_front()?;
        self.ready_bytes -= chunk.len();
        Some(chunk)
    }

    /// Moves the frames being built to the ready queue; the next frames start in a buffer as
    /// large as this one was, so a batch does not regrow it from nothing.
    fn seal_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let capacity = self.out.capacity();
        let built = std::mem::replace(&mut self.out, Vec::with_capacity(capacity));
        self.ready_bytes += built.len();
        self.ready.push_back(Bytes::from(built));
    }

    /// Returns the unwritten tail of what [`RequestStream::poll_transmit`] gave; it is sent first.
    pub fn restore_output(&mut self, rest: Bytes) {
        if !rest.is_empty() {
            self.unsent = Some(rest);
        }
    }

    /// Whether bytes are waiting to be written.
    pub fn has_output(&self) -> bool {
        self.unsent.is_some() || !self.ready.is_empty() || !self.out.is_empty()
    }

    /// Bytes waiting to be written (frames being built plus what the transport has not taken).
    pub fn queued_bytes(&self) -> usize {
        self.unsent.as_ref().map_or(0, Bytes::len) + self.ready_bytes + self.out.len()
    }

    /// True once everything is written and the response is complete: the owner finishes the stream.
    pub fn should_finish(&self) -> bool {
        self.finish_when_flushed && !self.has_output()
    }

    /// True once the response is complete (written or not).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }
}

/// `n` in decimal, written at the end of `buf` (a u64 has at most 20 digits); per event frame,
/// so without the formatting machinery.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_MAX_FRAME_BYTES;
    use crate::node::message::{RequestFrame, ResponseKind, PROTOCOL_VERSION};
    use proptest::prelude::*;

    #[test]
    fn seqs_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 100, 123_456_789, u64::MAX] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    fn request_bytes(req: &NodeRequest) -> Vec<u8> {
        let mut wire = Vec::new();
        encode_frame(
            &RequestFrame::from_request(req).to_json(),
            1 << 20,
            &mut wire,
        )
        .unwrap();
        wire
    }

    /// Takes everything queued and decodes it.
    fn output_frames(stream: &mut RequestStream) -> Vec<ResponseFrame> {
        let mut decoder = FrameDecoder::new(1 << 20);
        while let Some(bytes) = stream.poll_transmit() {
            decoder.handle_input(&bytes).unwrap();
        }
        std::iter::from_fn(|| decoder.poll_frame())
            .map(|f| ResponseFrame::parse(&f).unwrap())
            .collect()
    }

    #[test]
    fn oversized_request_gets_frame_too_large() {
        let mut stream = RequestStream::new(DEFAULT_MAX_FRAME_BYTES);
        stream.handle_input(&(DEFAULT_MAX_FRAME_BYTES as u32 + 1).to_be_bytes(), false);
        assert!(stream.is_done() && !stream.should_finish());
        let frames = output_frames(&mut stream);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].error, Some(ErrorCode::FrameTooLarge));
        assert!(stream.should_finish());
    }

    #[test]
    fn fin_before_a_frame_is_a_stream_failure() {
        let mut stream = RequestStream::new(64);
        stream.handle_input(&[0, 0, 0, 9, b'{'], true);
        assert!(matches!(
            stream.poll_event(),
            Some(StreamEvent::Refused {
                code: ErrorCode::StreamFailure,
                ..
            })
        ));
        assert_eq!(
            output_frames(&mut stream)[0].kind,
            crate::node::ResponseKind::Error
        );
    }

    #[test]
    fn raw_event_frames_parse_as_event_responses() {
        let mut stream = RequestStream::new(1024);
        stream.handle_input(&request_bytes(&NodeRequest::Health), false);
        let body = br#"{"name":"a","device_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","occurred_at_unix_ms":5,"payload":{"k":[1]}}"#;
        stream
            .send_event_raw(42, &Bytes::from_static(body))
            .unwrap();
        assert!(stream
            .send_event_raw(1, &Bytes::from(vec![b'x'; 2000]))
            .is_err());
        let frames = output_frames(&mut stream);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].seq, Some(42));
        assert_eq!(frames[0].protocol_version, PROTOCOL_VERSION);
        assert_eq!(frames[0].event.as_ref().unwrap().payload["k"][0], 1);
    }

    /// An event body as large as SHARED_BODY_BYTES or larger.
    fn big_body(fill: usize) -> Bytes {
        let payload = "y".repeat(fill);
        Bytes::from(format!(
            r#"{{"name":"big","device_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","occurred_at_unix_ms":5,"payload":"{payload}"}}"#
        ))
    }

    #[test]
    fn large_bodies_are_shared_not_copied_and_frames_stay_in_order() {
        let mut stream = RequestStream::new(1 << 20);
        stream.handle_input(&request_bytes(&NodeRequest::Health), false);
        let big = big_body(SHARED_BODY_BYTES);
        let small = br#"{"name":"s","device_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","occurred_at_unix_ms":5,"payload":1}"#;
        stream
            .send_event_raw(1, &Bytes::from_static(small))
            .unwrap();
        stream.send_event_raw(2, &big).unwrap();
        stream.send_event_raw(3, &big).unwrap();
        stream.send(&ResponseFrame::ack(4)).unwrap();
        let expected = stream.queued_bytes();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.poll_transmit() {
            chunks.push(chunk);
        }
        assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), expected);
        assert_eq!(stream.queued_bytes(), 0);
        // The large bodies went out as the very buffers given, not as copies.
        let shared: Vec<&Bytes> = chunks
            .iter()
            .filter(|c| c.as_ptr() == big.as_ptr())
            .collect();
        assert_eq!(shared.len(), 2);
        let mut decoder = FrameDecoder::new(1 << 20);
        for chunk in &chunks {
            decoder.handle_input(chunk).unwrap();
        }
        let frames: Vec<ResponseFrame> = std::iter::from_fn(|| decoder.poll_frame())
            .map(|f| ResponseFrame::parse(&f).unwrap())
            .collect();
        let seqs: Vec<Option<u64>> = frames.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(frames[3].kind, ResponseKind::Ack);
        assert_eq!(frames[1].event.as_ref().unwrap().name, "big");
    }

    #[test]
    fn unaccepted_output_is_sent_first_and_in_order() {
        let mut stream = RequestStream::new(1024);
        stream.handle_input(&request_bytes(&NodeRequest::Health), false);
        stream.send(&ResponseFrame::ack(1)).unwrap();
        let first = stream.poll_transmit().unwrap();
        // The transport accepted 3 bytes; a new frame is queued meanwhile.
        stream.restore_output(first.slice(3..));
        stream.send(&ResponseFrame::ack(2)).unwrap();
        let mut wire = first[..3].to_vec();
        while let Some(bytes) = stream.poll_transmit() {
            wire.extend_from_slice(&bytes);
        }
        let mut decoder = FrameDecoder::new(1024);
        decoder.handle_input(&wire).unwrap();
        let seqs: Vec<_> = std::iter::from_fn(|| decoder.poll_frame())
            .map(|f| ResponseFrame::parse(&f).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![Some(1), Some(2)]);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_event(
            resume in proptest::option::of(any::<u64>()),
            follow in any::<bool>(),
            trailing in proptest::collection::vec(any::<u8>(), 0..32),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let req = NodeRequest::StreamEvents { resume_from: resume, follow };
            let mut wire = request_bytes(&req);
            wire.extend_from_slice(&trailing);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut stream = RequestStream::new(DEFAULT_MAX_FRAME_BYTES);
            let mut start = 0;
            let mut events = Vec::new();
            for cut in points.into_iter().chain(std::iter::once(wire.len())) {
                stream.handle_input(&wire[start..cut], cut == wire.len());
                events.extend(stream.poll_event());
                start = cut;
            }
            prop_assert_eq!(events, vec![StreamEvent::Request(req)]);
        }

        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), fin in any::<bool>()) {
            let mut stream = RequestStream::new(256);
            stream.handle_input(&bytes, fin);
            let _ = stream.poll_event();
        }
    }
}
