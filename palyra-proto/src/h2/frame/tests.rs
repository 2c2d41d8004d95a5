//! Frame decoder and encoder tests.

use super::*;
use proptest::prelude::*;

fn decode_all(bytes: &[u8], max: u32) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = FrameDecoder::new(max);
    decoder.handle_input(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.poll_frame()? {
        frames.push(frame);
    }
    Ok(frames)
}

fn raw(len: usize, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    header(&mut out, len, kind, flags, stream);
    out.extend_from_slice(payload);
    out.to_vec()
}

#[test]
fn every_encoder_round_trips() {
    let mut out = BytesMut::new();
    encode_settings(
        &mut out,
        &Settings {
            max_concurrent_streams: Some(100),
            initial_window_size: Some(65_535),
            enable_push: Some(false),
            ..Default::default()
        },
        false,
    );
    encode_settings(&mut out, &Settings::default(), true);
    encode_headers(&mut out, 1, &[0x82; 40_000], false, DEFAULT_MAX_FRAME_SIZE);
    encode_data(&mut out, 1, b"hello", true);
    encode_rst_stream(&mut out, 3, ErrorCode::Cancel);
    encode_ping(&mut out, *b"12345678", true);
    encode_goaway(&mut out, 7, ErrorCode::EnhanceYourCalm, b"calm down");
    encode_window_update(&mut out, 0, 1 << 20);
    let frames = decode_all(&out, DEFAULT_MAX_FRAME_SIZE).unwrap();
    assert_eq!(
        frames[0],
        Frame::Settings {
            ack: false,
            settings: Settings {
                max_concurrent_streams: Some(100),
                initial_window_size: Some(65_535),
                enable_push: Some(false),
                ..Default::default()
            }
        }
    );
    assert_eq!(
        frames[1],
        Frame::Settings {
            ack: true,
            settings: Settings::default()
        }
    );
    // 40 000 bytes of header block: HEADERS + 2 CONTINUATION, END_HEADERS on the last only.
    assert!(
        matches!(&frames[2], Frame::Headers { end_headers: false, block, .. } if block.len() == 16_384)
    );
    assert!(matches!(
        &frames[3],
        Frame::Continuation {
            end_headers: false,
            ..
        }
    ));
    assert!(
        matches!(&frames[4], Frame::Continuation { end_headers: true, block, .. } if block.len() == 40_000 - 2 * 16_384)
    );
    assert_eq!(
        frames[5],
        Frame::Data {
            stream: 1,
            end_stream: true,
            data: Bytes::from_static(b"hello"),
            flow_len: 5
        }
    );
    assert_eq!(
        frames[6],
        Frame::RstStream {
            stream: 3,
            code: ErrorCode::Cancel
        }
    );
    assert_eq!(
        frames[7],
        Frame::Ping {
            ack: true,
            payload: *b"12345678"
        }
    );
    assert_eq!(
        frames[8],
        Frame::GoAway {
            last_stream: 7,
            code: ErrorCode::EnhanceYourCalm,
            debug: Bytes::from_static(b"calm down")
        }
    );
    assert_eq!(
        frames[9],
        Frame::WindowUpdate {
            stream: 0,
            increment: 1 << 20
        }
    );
}

#[test]
fn oversized_frames_fail_before_the_payload_arrives() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.handle_input(&raw(
        DEFAULT_MAX_FRAME_SIZE as usize + 1,
        kind::DATA,
        0,
        1,
        &[],
    ));
    assert_eq!(
        decoder.poll_frame(),
        Err(FrameError::Connection {
            code: ErrorCode::FrameSizeError,
            reason: "frame larger than SETTINGS_MAX_FRAME_SIZE"
        })
    );
}

#[test]
fn padding_is_stripped_and_counted() {
    let mut payload = vec![3u8];
    payload.extend_from_slice(b"abc");
    payload.extend_from_slice(&[0, 0, 0]);
    let frames = decode_all(
        &raw(payload.len(), kind::DATA, flag::PADDED, 5, &payload),
        DEFAULT_MAX_FRAME_SIZE,
    )
    .unwrap();
    assert_eq!(
        frames,
        vec![Frame::Data {
            stream: 5,
            end_stream: false,
            data: Bytes::from_static(b"abc"),
            flow_len: 7
        }]
    );
    // Pad length beyond the payload.
    let bad = raw(2, kind::DATA, flag::PADDED, 5, &[9, 0]);
    assert!(matches!(
        decode_all(&bad, DEFAULT_MAX_FRAME_SIZE),
        Err(FrameError::Connection {
            code: ErrorCode::ProtocolError,
            ..
        })
    ));
}

#[test]
fn shape_errors_map_to_the_rfc_codes() {
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (
            raw(0, kind::DATA, 0, 0, &[]),
            conn(ErrorCode::ProtocolError, "DATA on stream 0"),
        ),
        (
            raw(0, kind::HEADERS, 0, 0, &[]),
            conn(ErrorCode::ProtocolError, "HEADERS on stream 0"),
        ),
        (
            raw(4, kind::PRIORITY, 0, 1, &[0; 4]),
            FrameError::Stream {
                stream: 1,
                code: ErrorCode::FrameSizeError,
                reason: "PRIORITY must be 5 bytes",
            },
        ),
        (
            raw(5, kind::PRIORITY, 0, 1, &[0, 0, 0, 1, 0]),
            FrameError::Stream {
                stream: 1,
                code: ErrorCode::ProtocolError,
                reason: "stream depends on itself",
            },
        ),
        (
            raw(3, kind::RST_STREAM, 0, 1, &[0; 3]),
            conn(ErrorCode::FrameSizeError, "RST_STREAM must be 4 bytes"),
        ),
        (
            raw(6, kind::SETTINGS, 0, 1, &[0; 6]),
            conn(ErrorCode::ProtocolError, "SETTINGS on a stream"),
        ),
        (
            raw(6, kind::SETTINGS, flag::ACK, 0, &[0; 6]),
            conn(ErrorCode::FrameSizeError, "SETTINGS ACK with a payload"),
        ),
        (
            raw(5, kind::SETTINGS, 0, 0, &[0; 5]),
            conn(
                ErrorCode::FrameSizeError,
                "SETTINGS length not a multiple of 6",
            ),
        ),
        (
            raw(6, kind::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            conn(
                ErrorCode::ProtocolError,
                "SETTINGS_ENABLE_PUSH must be 0 or 1",
            ),
        ),
        (
            raw(6, kind::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            conn(
                ErrorCode::FlowControlError,
                "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
            ),
        ),
        (
            raw(6, kind::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x10, 0]),
            conn(
                ErrorCode::ProtocolError,
                "SETTINGS_MAX_FRAME_SIZE out of range",
            ),
        ),
        (
            raw(7, kind::PING, 0, 0, &[0; 7]),
            conn(ErrorCode::FrameSizeError, "PING must be 8 bytes"),
        ),
        (
            raw(8, kind::PING, 0, 1, &[0; 8]),
            conn(ErrorCode::ProtocolError, "PING on a stream"),
        ),
        (
            raw(7, kind::GOAWAY, 0, 0, &[0; 7]),
            conn(ErrorCode::FrameSizeError, "GOAWAY shorter than 8 bytes"),
        ),
        (
            raw(4, kind::WINDOW_UPDATE, 0, 0, &[0; 4]),
            conn(ErrorCode::ProtocolError, "WINDOW_UPDATE with increment 0"),
        ),
        (
            raw(4, kind::WINDOW_UPDATE, 0, 3, &[0; 4]),
            FrameError::Stream {
                stream: 3,
                code: ErrorCode::ProtocolError,
                reason: "WINDOW_UPDATE with increment 0",
            },
        ),
        (
            raw(0, kind::CONTINUATION, 0, 0, &[]),
            conn(ErrorCode::ProtocolError, "CONTINUATION on stream 0"),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(decode_all(&bytes, DEFAULT_MAX_FRAME_SIZE), Err(want));
    }
    // Unknown frame types and settings are ignored.
    assert_eq!(
        decode_all(&raw(3, 0xfa, 0xff, 9, b"abc"), DEFAULT_MAX_FRAME_SIZE).unwrap(),
        vec![Frame::Unknown {
            kind: 0xfa,
            stream: 9
        }]
    );
    assert_eq!(
        decode_all(
            &raw(6, kind::SETTINGS, 0, 0, &[0xff, 0xff, 0, 0, 0, 1]),
            DEFAULT_MAX_FRAME_SIZE
        )
        .unwrap(),
        vec![Frame::Settings {
            ack: false,
            settings: Settings::default()
        }]
    );
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_frames(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_data(&mut wire, i as u32 * 2 + 1, p, i % 2 == 0);
            encode_window_update(&mut wire, 0, p.len() as u32 + 1);
        }
        let whole = decode_all(&wire, DEFAULT_MAX_FRAME_SIZE).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut split = Vec::new();
        let mut start = 0;
        for cut in points.into_iter().chain(std::iter::once(wire.len())) {
            decoder.handle_input(&wire[start..cut]);
            while let Some(f) = decoder.poll_frame().unwrap() {
                split.push(f);
            }
            start = cut;
        }
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        decoder.handle_input(&bytes);
        while let Ok(Some(_)) = decoder.poll_frame() {}
        prop_assert!(decoder.buffered_len() <= bytes.len());
    }
}
