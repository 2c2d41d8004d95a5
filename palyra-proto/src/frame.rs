//! palyra-quic-v1 frame codec: a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
//!
//! The decoder is incremental: bytes may arrive in any chunking and the same frames come out. A length
//! above the configured limit is rejected as soon as the 4-byte prefix is complete, before any buffer
//! for the payload is allocated.

use std::collections::VecDeque;

/// Largest frame payload the original protocol allows (512 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 524_288;

/// Size of the big-endian length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Errors of the frame layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more bytes than the limit allows.
    #[error("frame payload exceeds limit ({len} bytes > {max} bytes)")]
    TooLarge {
        /// Announced payload length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({received} of {expected} bytes received)")]
    Truncated {
        /// Bytes of the current frame (prefix included) received so far.
        received: usize,
        /// Bytes the current frame needs (prefix included), when known.
        expected: usize,
    },
}

/// Appends one frame carrying `payload` to `out`. Fails without writing if the payload exceeds `max`.
pub fn encode_frame(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max,
        });
    }
    // `max` is at most what fits in the prefix; the cast cannot truncate once the check above passed
    // for any max <= u32::MAX, and larger configured maxima are clamped by `FrameDecoder::new` users.
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len() as u64,
        max,
    })?;
    out.reserve(LENGTH_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

enum State {
    /// Collecting the 4-byte length prefix.
    Prefix {
        buf: [u8; LENGTH_PREFIX_BYTES],
        have: usize,
    },
    /// Collecting `len` payload bytes.
    Payload { buf: Vec<u8>, len: usize },
    /// A fatal error happened; all further input is ignored.
    Failed(FrameError),
}

/// Incremental decoder of palyra-quic-v1 frames.
pub struct FrameDecoder {
    max: usize,
    state: State,
    frames: VecDeque<Vec<u8>>,
}

impl FrameDecoder {
    /// A decoder that rejects payloads longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.min(u32::MAX as usize),
            state: State::Prefix {
                buf: [0; LENGTH_PREFIX_BYTES],
                have: 0,
            },
            frames: VecDeque::new(),
        }
    }

    /// Feeds bytes read from the stream. After an error the decoder stays failed and returns it again.
    pub fn handle_input(&mut self, mut input: &[u8]) -> Result<(), FrameError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Failed(err) => return Err(err.clone()),
                State::Prefix { buf, have } => {
                    let take = (LENGTH_PREFIX_BYTES - *have).min(input.len());
                    buf[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input = &input[take..];
                    if *have == LENGTH_PREFIX_BYTES {
                        let len = u32::from_be_bytes(*buf) as usize;
                        if len > self.max {
                            let err = FrameError::TooLarge {
                                len: len as u64,
                                max: self.max,
                            };
                            self.state = State::Failed(err.clone());
                            return Err(err);
                        }
                        if len == 0 {
                            self.frames.push_back(Vec::new());
                            self.reset_prefix();
                        } else {
                            self.state = State::Payload {
                                buf: Vec::with_capacity(len.min(64 * 1024)),
                                len,
                            };
                        }
                    }
                }
                State::Payload { buf, len } => {
                    let take = (*len - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if buf.len() == *len {
                        let frame = std::mem::take(buf);
                        self.frames.push_back(frame);
                        self.reset_prefix();
                    }
                }
            }
        }
        match &self.state {
            State::Failed(err) => Err(err.clone()),
            _ => Ok(()),
        }
    }

    /// Takes the next complete frame payload, if any.
    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    /// Reports whether the stream may end here: an error if a frame is partially received.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.state {
            State::Failed(err) => Err(err.clone()),
            State::Prefix { have: 0, .. } => Ok(()),
            State::Prefix { have, .. } => Err(FrameError::Truncated {
                received: *have,
                expected: LENGTH_PREFIX_BYTES,
            }),
            State::Payload { buf, len } => Err(FrameError::Truncated {
                received: LENGTH_PREFIX_BYTES + buf.len(),
                expected: LENGTH_PREFIX_BYTES + *len,
            }),
        }
    }

    /// Bytes held for the frame in progress plus complete frames not yet polled.
    pub fn buffered_len(&self) -> usize {
        let partial = match &self.state {
            State::Prefix { have, .. } => *have,
            State::Payload { buf, .. } => buf.len(),
            State::Failed(_) => 0,
        };
        partial + self.frames.iter().map(Vec::len).sum::<usize>()
    }

    fn reset_prefix(&mut self) {
        self.state = State::Prefix {
            buf: [0; LENGTH_PREFIX_BYTES],
            have: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut FrameDecoder) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| decoder.poll_frame()).collect()
    }

    #[test]
    fn original_health_request_bytes_decode() {
        let json = br#"{"protocol_version":1,"method":"node.health","resume_from":null}"#;
        assert_eq!(json.len(), 64);
        let mut wire = Vec::new();
        encode_frame(json, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
        assert_eq!(&wire[..4], &[0, 0, 0, 0x40]);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        decoder.handle_input(&wire).unwrap();
        assert_eq!(decode_all(&mut decoder), vec![json.to_vec()]);
        decoder.finish().unwrap();
    }

    #[test]
    fn oversized_length_is_rejected_from_the_prefix_alone() {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let err = decoder
            .handle_input(&(DEFAULT_MAX_FRAME_BYTES as u32 + 1).to_be_bytes())
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: DEFAULT_MAX_FRAME_BYTES as u64 + 1,
                max: DEFAULT_MAX_FRAME_BYTES
            }
        );
        assert_eq!(decoder.buffered_len(), 0);
        // The decoder stays failed.
        assert!(decoder.handle_input(b"x").is_err());
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted() {
        let payload = vec![b'a'; 16];
        let mut wire = Vec::new();
        encode_frame(&payload, 16, &mut wire).unwrap();
        assert!(encode_frame(&[0; 17], 16, &mut wire).is_err());
        let mut decoder = FrameDecoder::new(16);
        decoder.handle_input(&wire).unwrap();
        assert_eq!(decoder.poll_frame(), Some(payload));
    }

    #[test]
    fn max_u32_length_is_rejected_without_allocation() {
        let mut decoder = FrameDecoder::new(usize::MAX);
        // Configured limit is clamped to u32::MAX; u32::MAX itself is allowed by the prefix, but
        // only a small buffer is reserved up front.
        decoder.handle_input(&[0xff, 0xff, 0xff, 0xff, 1]).unwrap();
        assert_eq!(decoder.buffered_len(), 1);
    }

    #[test]
    fn truncated_frames_are_reported_at_finish() {
        let mut decoder = FrameDecoder::new(64);
        decoder.handle_input(&[0, 0]).unwrap();
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                received: 2,
                expected: 4
            })
        );
        decoder.handle_input(&[0, 3, b'a']).unwrap();
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                received: 5,
                expected: 7
            })
        );
    }

    #[test]
    fn zero_length_frames_are_legal() {
        let mut decoder = FrameDecoder::new(64);
        decoder
            .handle_input(&[0, 0, 0, 0, 0, 0, 0, 1, b'x'])
            .unwrap();
        assert_eq!(decode_all(&mut decoder), vec![vec![], vec![b'x']]);
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_frames(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                encode_frame(p, 1024, &mut wire).unwrap();
            }
            let mut cut_points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
            cut_points.sort_unstable();
            let mut decoder = FrameDecoder::new(1024);
            let mut start = 0;
            for cut in cut_points.into_iter().chain(std::iter::once(wire.len())) {
                decoder.handle_input(&wire[start..cut]).unwrap();
                start = cut;
            }
            prop_assert_eq!(decode_all(&mut decoder), payloads);
            prop_assert!(decoder.finish().is_ok());
        }

        #[test]
        fn byte_at_a_time_equals_all_at_once(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut whole = FrameDecoder::new(128);
            let whole_result = whole.handle_input(&wire);
            let mut single = FrameDecoder::new(128);
            let mut single_result = Ok(());
            for b in &wire {
                single_result = single.handle_input(std::slice::from_ref(b));
                if single_result.is_err() { break; }
            }
            prop_assert_eq!(whole_result, single_result);
            prop_assert_eq!(decode_all(&mut whole), decode_all(&mut single));
            prop_assert_eq!(whole.finish(), single.finish());
        }
    }
}
