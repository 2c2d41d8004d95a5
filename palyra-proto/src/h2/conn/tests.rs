//! Client and server machines talking to each other in memory, and hostile peers.

use super::*;
use crate::h2::frame::{
    encode_data, encode_headers, encode_ping, encode_rst_stream, encode_settings,
};
use proptest::prelude::*;

fn field(n: &str, v: &str) -> Field {
    Field::new(n.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn request() -> Vec<Field> {
    vec![
        field(":method", "POST"),
        field(":scheme", "http"),
        field(":path", "/pkg.Svc/Call"),
        field(":authority", "localhost"),
        field("content-type", "application/grpc"),
    ]
}

/// Moves bytes both ways until neither side has anything to say.
fn pump(now: Instant, a: &mut Connection, b: &mut Connection) {
    loop {
        let mut moved = false;
        while let Some(bytes) = a.poll_transmit() {
            b.handle_input(now, &bytes);
            moved = true;
        }
        while let Some(bytes) = b.poll_transmit() {
            a.handle_input(now, &bytes);
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn pair(now: Instant) -> (Connection, Connection) {
    let mut client = Connection::new(Role::Client, Config::default(), now);
    let mut server = Connection::new(Role::Server, Config::default(), now);
    pump(now, &mut client, &mut server);
    (client, server)
}

#[test]
fn request_and_response_with_trailers() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.open_stream(&request(), false).unwrap();
    client
        .send_data(id, Bytes::from_static(b"ping"), true)
        .unwrap();
    pump(now, &mut client, &mut server);
    let got = events(&mut server);
    assert!(
        matches!(&got[0], Event::Headers { stream, fields, end_stream: false } if *stream == id && fields[2].value == "/pkg.Svc/Call")
    );
    assert_eq!(
        got[1],
        Event::Data {
            stream: id,
            data: Bytes::from_static(b"ping"),
            end_stream: true
        }
    );
    server
        .send_headers(id, &[field(":status", "200")], false)
        .unwrap();
    server
        .send_data(id, Bytes::from_static(b"pong"), false)
        .unwrap();
    server
        .send_trailers(id, &[field("grpc-status", "0")])
        .unwrap();
    pump(now, &mut client, &mut server);
    let got = events(&mut client);
    assert!(matches!(
        &got[0],
        Event::Headers {
            end_stream: false,
            ..
        }
    ));
    assert_eq!(
        got[1],
        Event::Data {
            stream: id,
            data: Bytes::from_static(b"pong"),
            end_stream: false
        }
    );
    assert!(
        matches!(&got[2], Event::Headers { end_stream: true, fields, .. } if fields[0].name == "grpc-status")
    );
    assert_eq!(client.open_streams(), 0);
    assert_eq!(server.open_streams(), 0);
}

#[test]
fn large_bodies_flow_through_both_windows() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.open_stream(&request(), false).unwrap();
    let body: Vec<u8> = (0..10_000_000u32).map(|i| i as u8).collect();
    client
        .send_data(id, Bytes::from(body.clone()), true)
        .unwrap();
    pump(now, &mut client, &mut server);
    let mut received = Vec::new();
    for event in events(&mut server) {
        if let Event::Data { data, .. } = event {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(received.len(), body.len());
    assert!(received == body);
}

#[test]
fn small_queued_chunks_share_data_frames() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.open_stream(&request(), false).unwrap();
    pump(now, &mut client, &mut server);
    events(&mut server);
    server
        .send_headers(id, &[field(":status", "200")], false)
        .unwrap();
    // 3000 messages of 10 bytes: 30 000 bytes, so two frames at the 16 KiB frame size.
    for i in 0..3000u32 {
        let chunk: Vec<u8> = (0..10).map(|j| (i + j) as u8).collect();
        server.send_data(id, Bytes::from(chunk), false).unwrap();
    }
    server
        .send_trailers(id, &[field("grpc-status", "0")])
        .unwrap();
    pump(now, &mut client, &mut server);
    let data: Vec<Bytes> = events(&mut client)
        .into_iter()
        .filter_map(|e| match e {
            Event::Data { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(
        data.len(),
        2,
        "frames: {:?}",
        data.iter().map(Bytes::len).collect::<Vec<_>>()
    );
    let joined: Vec<u8> = data.concat();
    let expected: Vec<u8> = (0..3000u32)
        .flat_map(|i| (0..10).map(move |j| (i + j) as u8))
        .collect();
    assert_eq!(joined, expected);
}

#[test]
fn bad_preface_is_a_protocol_error() {
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, Config::default(), now);
    server.handle_input(now, b"GET / HTTP/1.1\r\n\r\n");
    assert!(server.is_closed());
    assert!(events(&mut server).iter().any(|e| matches!(
        e,
        Event::Closed {
            code: ErrorCode::ProtocolError,
            ..
        }
    )));
    let out = server.poll_transmit().unwrap();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.handle_input(&out);
    let mut saw_goaway = false;
    while let Ok(Some(frame)) = decoder.poll_frame() {
        if let Frame::GoAway { code, .. } = frame {
            assert_eq!(code, ErrorCode::ProtocolError);
            saw_goaway = true;
        }
    }
    assert!(saw_goaway);
}

/// A raw client: preface, empty SETTINGS, then whatever the test writes.
fn raw_client(now: Instant, config: Config) -> (Connection, BytesMut) {
    let server = Connection::new(Role::Server, config, now);
    let mut wire = BytesMut::new();
    wire.extend_from_slice(PREFACE);
    encode_settings(&mut wire, &Settings::default(), false);
    (server, wire)
}

fn closed_with(server: &mut Connection) -> Option<ErrorCode> {
    events(server).into_iter().find_map(|e| match e {
        Event::Closed { code, .. } => Some(code),
        _ => None,
    })
}

fn header_block(fields: &[Field]) -> Vec<u8> {
    let mut block = Vec::new();
    hpack::Encoder::new(4096).encode(fields, &mut block);
    block
}

#[test]
fn continuation_flood_is_stopped() {
    let now = Instant::now();
    let (mut server, mut wire) = raw_client(now, Config::default());
    // HEADERS without END_HEADERS, then endless CONTINUATION frames.
    let mut header = BytesMut::new();
    encode_headers(&mut header, 1, &[0x82; 100], false, 100);
    // Clear END_HEADERS on the single frame: byte 4 is the flags.
    header[4] &= !0x4;
    wire.extend_from_slice(&header);
    for _ in 0..100 {
        let mut cont = BytesMut::new();
        cont.extend_from_slice(&[0, 0, 10, 0x9, 0, 0, 0, 0, 1]);
        cont.extend_from_slice(&[0x82; 10]);
        wire.extend_from_slice(&cont);
    }
    server.handle_input(now, &wire);
    assert_eq!(closed_with(&mut server), Some(ErrorCode::EnhanceYourCalm));
}

#[test]
fn rapid_reset_is_stopped() {
    let now = Instant::now();
    let (mut server, mut wire) = raw_client(now, Config::default());
    let block = header_block(&request());
    for i in 0..300u32 {
        let id = 2 * i + 1;
        encode_headers(&mut wire, id, &block, false, 16_384);
        encode_rst_stream(&mut wire, id, ErrorCode::Cancel);
    }
    server.handle_input(now, &wire);
    let got = events(&mut server);
    assert!(got.iter().any(|e| matches!(
        e,
        Event::Closed {
            code: ErrorCode::EnhanceYourCalm,
            ..
        }
    )));
    // It took no more than the limit of streams to notice.
    let opened = got
        .iter()
        .filter(|e| matches!(e, Event::Headers { .. }))
        .count();
    assert!(opened <= 201, "{opened}");
}

#[test]
fn ping_and_settings_floods_are_stopped() {
    let now = Instant::now();
    let (mut server, mut wire) = raw_client(now, Config::default());
    for _ in 0..200 {
        encode_ping(&mut wire, [0; 8], false);
    }
    server.handle_input(now, &wire);
    assert_eq!(closed_with(&mut server), Some(ErrorCode::EnhanceYourCalm));

    let (mut server, mut wire) = raw_client(now, Config::default());
    for _ in 0..200 {
        encode_settings(&mut wire, &Settings::default(), false);
    }
    server.handle_input(now, &wire);
    assert_eq!(closed_with(&mut server), Some(ErrorCode::EnhanceYourCalm));

    let (mut server, mut wire) = raw_client(now, Config::default());
    encode_headers(&mut wire, 1, &header_block(&request()), false, 16_384);
    for _ in 0..2000 {
        encode_data(&mut wire, 1, &[], false);
    }
    server.handle_input(now, &wire);
    assert_eq!(closed_with(&mut server), Some(ErrorCode::EnhanceYourCalm));
}

#[test]
fn a_response_that_ends_before_its_request_frees_the_stream() {
    // A gRPC call that ended while its client still streams: the server's END_STREAM is
    // followed by RST_STREAM NO_ERROR, so finished calls never fill the concurrency limit.
    let now = Instant::now();
    let config = Config {
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, Config::default(), now);
    let mut server = Connection::new(Role::Server, config, now);
    pump(now, &mut client, &mut server);
    for _ in 0..5 {
        let id = client
            .open_stream(&request(), false)
            .expect("a free stream");
        client
            .send_data(id, Bytes::from_static(b"msg"), false)
            .unwrap();
        pump(now, &mut client, &mut server);
        events(&mut server);
        server
            .send_headers(id, &[field(":status", "200")], false)
            .unwrap();
        server
            .send_trailers(id, &[field("grpc-status", "0")])
            .unwrap();
        pump(now, &mut client, &mut server);
        let got = events(&mut client);
        assert!(
            matches!(
                &got[1],
                Event::Headers {
                    end_stream: true,
                    ..
                }
            ),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], Event::Reset { stream, code: ErrorCode::NoError, .. } if *stream == id),
            "{got:?}"
        );
        assert_eq!((client.open_streams(), server.open_streams()), (0, 0));
        // A late message from the client is ignored, not an error.
        assert!(client
            .send_data(id, Bytes::from_static(b"late"), true)
            .is_err());
    }
    assert!(!server.is_closed() && !client.is_closed());
}

#[test]
fn streams_beyond_the_limit_are_refused() {
    let now = Instant::now();
    let config = Config {
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let (mut server, mut wire) = raw_client(now, config);
    let block = header_block(&request());
    for id in [1, 3, 5] {
        encode_headers(&mut wire, id, &block, false, 16_384);
    }
    server.handle_input(now, &wire);
    let opened = events(&mut server)
        .iter()
        .filter(|e| matches!(e, Event::Headers { .. }))
        .count();
    assert_eq!(opened, 2);
    let out = server.poll_transmit().unwrap();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.handle_input(&out);
    let mut refused = Vec::new();
    while let Ok(Some(frame)) = decoder.poll_frame() {
        if let Frame::RstStream { stream, code } = frame {
            refused.push((stream, code));
        }
    }
    assert_eq!(refused, vec![(5, ErrorCode::RefusedStream)]);
}

#[test]
fn oversized_header_lists_are_reported_per_stream() {
    let now = Instant::now();
    let (mut server, mut wire) = raw_client(now, Config::default());
    let mut fields = request();
    fields.push(field("x-big", &"v".repeat(20_000)));
    encode_headers(&mut wire, 1, &header_block(&fields), true, 16_384);
    server.handle_input(now, &wire);
    assert_eq!(
        events(&mut server),
        vec![Event::HeadersTooLarge { stream: 1 }]
    );
    assert!(!server.is_closed());
}

#[test]
fn unacknowledged_settings_time_out() {
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, Config::default(), now);
    let mut wire = BytesMut::new();
    wire.extend_from_slice(PREFACE);
    server.handle_input(now, &wire);
    let deadline = server.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(10));
    server.handle_timeout(deadline);
    assert_eq!(closed_with(&mut server), Some(ErrorCode::SettingsTimeout));
}

#[test]
fn a_peer_that_never_opens_its_window_is_closed() {
    let now = Instant::now();
    let client_config = Config {
        stream_window: 0,
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, client_config, now);
    let mut server = Connection::new(Role::Server, Config::default(), now);
    pump(now, &mut client, &mut server);
    let id = client.open_stream(&request(), true).unwrap();
    pump(now, &mut client, &mut server);
    events(&mut server);
    server
        .send_headers(id, &[field(":status", "200")], false)
        .unwrap();
    server
        .send_data(id, Bytes::from(vec![0u8; 100_000]), true)
        .unwrap();
    pump(now, &mut client, &mut server);
    assert_eq!(server.queued_len(id), 100_000);
    let deadline = server.poll_timeout().unwrap();
    assert!(deadline <= now + Duration::from_secs(30));
    server.handle_timeout(now + Duration::from_secs(31));
    assert_eq!(closed_with(&mut server), Some(ErrorCode::EnhanceYourCalm));
}

#[test]
fn graceful_go_away_lets_open_streams_finish() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.open_stream(&request(), true).unwrap();
    pump(now, &mut client, &mut server);
    events(&mut server);
    server.go_away(ErrorCode::NoError, "shutting down");
    pump(now, &mut client, &mut server);
    assert!(events(&mut client)
        .iter()
        .any(|e| matches!(e, Event::GoAway { last_stream, .. } if *last_stream == id)));
    assert!(client.open_stream(&request(), true).is_err());
    server
        .send_headers(id, &[field(":status", "200")], true)
        .unwrap();
    pump(now, &mut client, &mut server);
    assert!(server.is_closed());
    assert!(events(&mut client).iter().any(|e| matches!(
        e,
        Event::Headers {
            end_stream: true,
            ..
        }
    )));
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16)) {
        let now = Instant::now();
        let mut client = Connection::new(Role::Client, Config::default(), now);
        let id = client.open_stream(&request(), false).unwrap();
        client.send_data(id, Bytes::from(vec![7u8; 40_000]), false).unwrap();
        client.send_trailers(id, &[field("x-end", "1")]).unwrap();
        let mut wire = Vec::new();
        while let Some(bytes) = client.poll_transmit() {
            wire.extend_from_slice(&bytes);
        }
        let mut whole = Connection::new(Role::Server, Config::default(), now);
        whole.handle_input(now, &wire);
        let expected = events(&mut whole);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut split = Connection::new(Role::Server, Config::default(), now);
        let mut start = 0;
        let mut got = Vec::new();
        for cut in points.into_iter().chain(std::iter::once(wire.len())) {
            split.handle_input(now, &wire[start..cut]);
            got.extend(events(&mut split));
            start = cut;
        }
        // DATA may be split differently by chunking only if frames are cut; frames are atomic.
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn garbage_after_the_preface_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let now = Instant::now();
        let mut server = Connection::new(Role::Server, Config::default(), now);
        let mut wire = PREFACE.to_vec();
        wire.extend_from_slice(&bytes);
        server.handle_input(now, &wire);
        while server.poll_transmit().is_some() {}
        let _ = events(&mut server);
    }
}

#[test]
fn keepalive_pings_and_closes_a_silent_peer() {
    let now = Instant::now();
    let config = Config {
        keepalive: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, config, now);
    let mut server = Connection::new(Role::Server, Config::default(), now);
    pump(now, &mut client, &mut server);
    // Quiet for 5 s: the client pings and the server answers.
    let t1 = now + Duration::from_secs(5);
    assert_eq!(client.poll_timeout(), Some(t1));
    client.handle_timeout(t1);
    pump(t1, &mut client, &mut server);
    assert!(events(&mut client)
        .iter()
        .any(|e| matches!(e, Event::PingAck { payload } if payload == b"palyraka")));
    // Now the peer goes silent: the next ping is never answered.
    let t2 = t1 + Duration::from_secs(5);
    client.handle_timeout(t2);
    while client.poll_transmit().is_some() {}
    client.handle_timeout(t2 + Duration::from_secs(5));
    assert!(client.is_closed());
}

#[test]
fn malformed_requests_are_reset_and_the_connection_goes_on() {
    let now = Instant::now();
    let (mut server, mut wire) = raw_client(now, Config::default());
    let mut bad = request();
    bad.push(field("connection", "keep-alive"));
    encode_headers(&mut wire, 1, &header_block(&bad), true, 16_384);
    encode_headers(&mut wire, 3, &header_block(&request()), true, 16_384);
    server.handle_input(now, &wire);
    let got = events(&mut server);
    assert!(
        matches!(
            &got[0],
            Event::Reset {
                stream: 1,
                code: ErrorCode::ProtocolError,
                remote: false
            }
        ),
        "{got:?}"
    );
    assert!(matches!(&got[1], Event::Headers { stream: 3, .. }));
    assert!(!server.is_closed());
}
