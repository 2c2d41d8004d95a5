use super::*;
use crate::http1::server::BodyLength;
use proptest::prelude::*;

fn head(headers: &[(&str, &str)]) -> RequestHead {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    RequestHead {
        method: Method::GET,
        uri: "/ws".parse().unwrap(),
        version: http::Version::HTTP_11,
        headers: map,
        body: BodyLength::Empty,
        expects_continue: false,
        keep_alive: true,
    }
}

const GOOD: [(&str, &str); 4] = [
    ("upgrade", "websocket"),
    ("connection", "keep-alive, Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[test]
fn upgrade_handshake_follows_rfc6455() {
    let (headers, proto) = accept_upgrade(&head(&GOOD), &[]).unwrap();
    // The RFC 6455 section 1.3 example.
    assert_eq!(
        headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(proto, None);
    let mut with_proto = GOOD.to_vec();
    with_proto.push(("sec-websocket-protocol", "other, palyra.console.v1"));
    let (headers, proto) = accept_upgrade(&head(&with_proto), &["palyra.console.v1"]).unwrap();
    assert_eq!(proto.as_deref(), Some("palyra.console.v1"));
    assert_eq!(headers["sec-websocket-protocol"], "palyra.console.v1");
    assert_eq!(
        accept_upgrade(&head(&GOOD), &["palyra.console.v1"])
            .unwrap_err()
            .status,
        StatusCode::BAD_REQUEST
    );
    let without_upgrade: Vec<_> = GOOD.iter().filter(|h| h.0 != "upgrade").cloned().collect();
    assert_eq!(
        accept_upgrade(&head(&without_upgrade), &[])
            .unwrap_err()
            .status,
        StatusCode::UPGRADE_REQUIRED
    );
    let mut bad_key = GOOD.to_vec();
    bad_key[3] = ("sec-websocket-key", "c2hvcnQ=");
    assert_eq!(
        accept_upgrade(&head(&bad_key), &[]).unwrap_err().status,
        StatusCode::BAD_REQUEST
    );
    let mut old = GOOD.to_vec();
    old[2] = ("sec-websocket-version", "8");
    assert_eq!(
        accept_upgrade(&head(&old), &[]).unwrap_err().status,
        StatusCode::UPGRADE_REQUIRED
    );
}

/// A tungstenite client over memory, as the peer.
fn client() -> WebSocket<Mem> {
    WebSocket::from_raw_socket(Mem::default(), Role::Client, None)
}

fn client_bytes(c: &mut WebSocket<Mem>) -> Bytes {
    c.get_mut().output.split().freeze()
}

fn events(s: &mut WsConnection) -> Vec<WsEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn to_client(s: &mut WsConnection, c: &mut WebSocket<Mem>) -> Vec<Message> {
    while let Some(b) = s.poll_transmit() {
        c.get_mut().input.extend_from_slice(&b);
    }
    let mut got = Vec::new();
    while let Ok(m) = c.read() {
        got.push(m);
    }
    got
}

#[test]
fn messages_round_trip_and_close_handshake() {
    let now = Instant::now();
    let mut c = client();
    c.send(Message::text("hello")).unwrap();
    c.send(Message::Binary(Bytes::from_static(&[1, 2, 3])))
        .unwrap();
    let mut s = WsConnection::new(WsConfig::default(), now, &client_bytes(&mut c));
    assert_eq!(
        events(&mut s),
        [
            WsEvent::Text("hello".into()),
            WsEvent::Binary(Bytes::from_static(&[1, 2, 3]))
        ]
    );
    s.send_text("world");
    assert_eq!(to_client(&mut s, &mut c), [Message::text("world")]);
    c.close(None).unwrap();
    s.handle_input(now, &client_bytes(&mut c));
    assert!(matches!(
        events(&mut s)[..],
        [WsEvent::Closed { code: 1005, .. }]
    ));
    let echoed = to_client(&mut s, &mut c);
    assert!(
        echoed.iter().all(|m| matches!(m, Message::Close(_))),
        "{echoed:?}"
    );
    assert!(s.is_closed());
}

#[test]
fn oversized_messages_and_bad_utf8_close_with_the_rfc_codes() {
    let now = Instant::now();
    let config = WsConfig {
        max_message: 1000,
        max_frame: 1000,
        ..WsConfig::default()
    };
    let mut c = client();
    c.send(Message::text("x".repeat(1001))).unwrap();
    let mut s = WsConnection::new(config, now, &client_bytes(&mut c));
    assert!(matches!(
        events(&mut s)[..],
        [WsEvent::Closed {
            code: close_code::TOO_BIG,
            ..
        }]
    ));
    let got = to_client(&mut s, &mut c);
    assert!(
        matches!(&got[..], [Message::Close(Some(f))] if u16::from(f.code) == 1009),
        "{got:?}"
    );
    assert!(s.is_closed());
    // Exactly at the limit is accepted.
    let mut c = client();
    c.send(Message::text("x".repeat(1000))).unwrap();
    let mut s = WsConnection::new(config, now, &client_bytes(&mut c));
    assert!(matches!(&events(&mut s)[..], [WsEvent::Text(t)] if t.len() == 1000));
    // A masked text frame carrying 0xFF 0xFE.
    let frame = [0x81u8, 0x82, 0, 0, 0, 0, 0xff, 0xfe];
    let mut s = WsConnection::new(WsConfig::default(), now, &frame);
    assert!(matches!(
        events(&mut s)[..],
        [WsEvent::Closed {
            code: close_code::INVALID_DATA,
            ..
        }]
    ));
    // An unmasked client frame is a protocol error.
    let mut s = WsConnection::new(WsConfig::default(), now, &[0x81, 0x01, b'a']);
    assert!(matches!(
        events(&mut s)[..],
        [WsEvent::Closed {
            code: close_code::PROTOCOL,
            ..
        }]
    ));
}

#[test]
fn keepalive_pings_and_closes_a_silent_peer() {
    let now = Instant::now();
    let config = WsConfig::default();
    let mut c = client();
    let mut s = WsConnection::new(config, now, &[]);
    assert_eq!(s.poll_timeout(), Some(now + config.ping_interval));
    let t1 = now + config.ping_interval;
    s.handle_timeout(t1);
    assert!(matches!(to_client(&mut s, &mut c)[..], [Message::Ping(_)]));
    // The client's automatic pong keeps it alive.
    c.flush().unwrap();
    s.handle_input(t1, &client_bytes(&mut c));
    s.handle_timeout(t1 + config.pong_timeout);
    assert!(!s.is_closed());
    // Silence after the next ping closes with 4000.
    let t2 = t1 + config.ping_interval;
    s.handle_timeout(t2);
    s.handle_timeout(t2 + config.pong_timeout);
    assert!(events(&mut s).iter().any(|e| matches!(
        e,
        WsEvent::Closed {
            code: close_code::KEEPALIVE_TIMEOUT,
            ..
        }
    )));
    let _ = to_client(&mut s, &mut c);
    assert!(s.is_closed());
}

#[test]
fn a_reader_that_does_not_read_is_closed_with_4001() {
    let now = Instant::now();
    let config = WsConfig {
        max_queued: 10_000,
        ..WsConfig::default()
    };
    let mut s = WsConnection::new(config, now, &[]);
    for _ in 0..100 {
        s.send_text(&"y".repeat(200));
    }
    assert!(events(&mut s).iter().any(|e| matches!(
        e,
        WsEvent::Closed {
            code: close_code::TOO_SLOW,
            ..
        }
    )));
    assert!(s.queued_bytes() < 1000);
}

proptest! {
    /// Any chunking of the client's bytes gives the same messages.
    #[test]
    fn chunking_invariance(texts in proptest::collection::vec("[a-z\u{e9}\u{1F600}]{0,300}", 1..6),
                           cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let mut c = client();
        for t in &texts {
            c.send(Message::text(t.clone())).unwrap();
        }
        let wire = client_bytes(&mut c);
        let now = Instant::now();
        let mut s = WsConnection::new(WsConfig::default(), now, &[]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut start = 0;
        for p in points {
            s.handle_input(now, &wire[start..p]);
            start = p;
        }
        let got: Vec<WsEvent> = events(&mut s);
        let want: Vec<WsEvent> = texts.into_iter().map(WsEvent::Text).collect();
        prop_assert_eq!(got, want);
    }
}
