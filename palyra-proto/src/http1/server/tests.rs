use super::*;
use crate::http1::client::{Event as ClientEvent, Http1Client};
use proptest::prelude::*;

fn server(now: Instant) -> Http1Server {
    Http1Server::new(ServerConfig::default(), now)
}

fn events(s: &mut Http1Server) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn output(s: &mut Http1Server) -> String {
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Feeds `input`; answers each request with its method and path (reading bodies up to 1 KiB).
/// Returns what was written and the request bodies seen.
fn serve(input: &[&[u8]]) -> (String, Vec<(String, Vec<u8>)>, bool) {
    let now = Instant::now();
    let mut s = server(now);
    let mut seen = Vec::new();
    let mut out = String::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for piece in input {
        s.handle_input(now, piece);
        loop {
            let mut progressed = false;
            while let Some(event) = s.poll_event() {
                progressed = true;
                match event {
                    Event::Request(head) => {
                        current = Some((format!("{} {}", head.method, head.uri), Vec::new()));
                        s.read_body(now, 1024).unwrap();
                    }
                    Event::Body(b) => current.as_mut().unwrap().1.extend_from_slice(&b),
                    Event::BodyEnd => {
                        let done = current.take().unwrap();
                        let body = Bytes::from(format!("{} {}", done.0, done.1.len()));
                        s.respond(
                            now,
                            StatusCode::OK,
                            &HeaderMap::new(),
                            ResponseBody::Full(body),
                        )
                        .unwrap();
                        seen.push(done);
                    }
                    Event::Rejected(_) => {}
                }
            }
            out.push_str(&output(&mut s));
            if !progressed {
                break;
            }
        }
    }
    (out, seen, s.is_closed())
}

fn status_of(out: &str) -> &str {
    out.get(9..12).unwrap_or("")
}

#[test]
fn keep_alive_pipelining_and_chunked_bodies() {
    let input: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (out, seen, closed) = serve(&[input]);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["GET /a", "POST /b", "POST /c", "GET /d"]);
    assert_eq!(seen[1].1, b"hello");
    assert_eq!(seen[2].1, b"abcde");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 4);
    assert!(
        out.ends_with("connection: close\r\n\r\nGET /d 0") || out.contains("connection: close")
    );
    assert!(closed, "Connection: close honoured");
}

#[test]
fn every_limit_and_smuggling_case_is_answered() {
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (big_head.into_bytes(), "431", "head just over 16 KiB"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n".to_vec(), "413", "Content-Length over the limit"),
        (
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n{}\r\n0\r\n\r\n", "z".repeat(1025)).into_bytes(),
            "413",
            "chunked body over the limit",
        ),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), "400", "CL and TE"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(), "400", "duplicate CL"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".to_vec(), "400", "signed CL"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), "400", "obs-fold"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), "400", "bad chunk size"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(), "501", "unknown coding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(), "400", "chunked not last"),
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "501", "unknown method"),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "400", "no Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), "400", "two Hosts"),
        (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), "400", "TE on 1.0"),
        (b"\x00\x01garbage\r\n\r\n".to_vec(), "400", "garbage"),
    ];
    for (input, status, what) in cases {
        let (out, seen, closed) = serve(&[&input]);
        assert_eq!(status_of(&out), status, "{what}: {out}");
        assert!(seen.is_empty(), "{what}: no request completed");
        assert!(closed, "{what}: connection closed");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON envelope");
        assert!(
            json["error"].is_string() && json["code"].is_string(),
            "{what}: {body}"
        );
        assert!(out.to_ascii_lowercase().contains("connection: close"));
    }
    // Exactly at the limit is fine.
    let (out, seen, _) = serve(&[format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n{}",
        "q".repeat(1024)
    )
    .as_bytes()]);
    assert_eq!(status_of(&out), "200");
    assert_eq!(seen[0].1.len(), 1024);
}

#[test]
fn slow_heads_get_408_and_idle_connections_close_quietly() {
    let now = Instant::now();
    let mut s = server(now);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
    s.handle_input(now + Duration::from_secs(1), b"GET / HTTP/1.1\r\nHo");
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(11));
    s.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!s.is_closed());
    s.handle_timeout(deadline);
    assert_eq!(status_of(&output(&mut s)), "408");
    assert!(s.is_closed());

    let mut idle = server(now);
    idle.handle_timeout(now + Duration::from_secs(60));
    assert!(
        output(&mut idle).is_empty(),
        "no answer to an idle connection"
    );
    assert!(idle.is_closed());
}

#[test]
fn expect_continue_head_and_unread_bodies() {
    let now = Instant::now();
    let mut s = server(now);
    s.handle_input(
        now,
        b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    assert!(matches!(events(&mut s)[0], Event::Request(ref h) if h.expects_continue));
    assert!(
        output(&mut s).is_empty(),
        "no 100 before the app wants the body"
    );
    s.read_body(now, 10).unwrap();
    assert_eq!(output(&mut s), "HTTP/1.1 100 Continue\r\n\r\n");
    s.handle_input(now, b"ok");
    assert!(matches!(
        events(&mut s).as_slice(),
        [Event::Body(_), Event::BodyEnd]
    ));
    s.respond(
        now,
        StatusCode::CREATED,
        &HeaderMap::new(),
        ResponseBody::Full(Bytes::new()),
    )
    .unwrap();
    assert!(output(&mut s).starts_with("HTTP/1.1 201 Created\r\ncontent-length: 0\r\n"));

    // HEAD: headers with the length, no body bytes.
    s.handle_input(now, b"HEAD /y HTTP/1.1\r\nHost: x\r\n\r\n");
    events(&mut s);
    s.respond(
        now,
        StatusCode::OK,
        &HeaderMap::new(),
        ResponseBody::Full(Bytes::from_static(b"12345")),
    )
    .unwrap();
    let out = output(&mut s);
    assert!(
        out.contains("content-length: 5") && out.ends_with("\r\n\r\n"),
        "{out}"
    );

    // Answering without reading a body closes the connection (its bytes are never parsed).
    s.handle_input(
        now,
        b"POST /z HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nGET /smuggled",
    );
    events(&mut s);
    s.respond(
        now,
        StatusCode::FORBIDDEN,
        &HeaderMap::new(),
        ResponseBody::Full(Bytes::new()),
    )
    .unwrap();
    assert!(output(&mut s).contains("connection: close"));
    assert!(s.is_closed());
    assert!(events(&mut s).is_empty());
}

#[test]
fn streamed_responses_and_http10() {
    let now = Instant::now();
    let mut s = server(now);
    s.handle_input(now, b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
    events(&mut s);
    s.respond(now, StatusCode::OK, &HeaderMap::new(), ResponseBody::Stream)
        .unwrap();
    s.send_chunk(b"abc").unwrap();
    s.send_chunk(b"").unwrap();
    s.finish(now).unwrap();
    let out = output(&mut s);
    assert!(
        out.ends_with("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{out}"
    );
    assert!(!s.is_closed());
    // HTTP/1.0 without keep-alive: close-delimited stream.
    let mut old = server(now);
    old.handle_input(now, b"GET / HTTP/1.0\r\n\r\n");
    events(&mut old);
    old.respond(now, StatusCode::OK, &HeaderMap::new(), ResponseBody::Stream)
        .unwrap();
    old.send_chunk(b"raw").unwrap();
    old.finish(now).unwrap();
    let out = output(&mut old);
    assert!(
        out.starts_with("HTTP/1.0 200 OK") && out.ends_with("\r\n\r\nraw"),
        "{out}"
    );
    assert!(old.is_closed());
}

#[test]
fn upgrade_hands_over_the_leftover_bytes() {
    let now = Instant::now();
    let mut s = server(now);
    s.handle_input(now, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello");
    events(&mut s);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    s.upgrade(&headers).unwrap();
    assert!(output(&mut s).starts_with("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket"));
    s.handle_input(now, b"!");
    assert!(s.is_upgraded());
    assert_eq!(&s.take_upgraded()[..], b"\x81\x05hello!");
}

#[test]
fn pipelined_input_is_bounded() {
    let now = Instant::now();
    let mut s = server(now);
    s.handle_input(now, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
    events(&mut s);
    let more = b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    s.handle_input(now, &more);
    assert!(!s.wants_input(), "the driver is told to stop reading");
    s.respond(
        now,
        StatusCode::OK,
        &HeaderMap::new(),
        ResponseBody::Full(Bytes::new()),
    )
    .unwrap();
    assert!(
        matches!(events(&mut s)[0], Event::Request(_)),
        "next pipelined request"
    );
}

#[test]
fn client_and_server_round_trip() {
    let now = Instant::now();
    let mut s = server(now);
    let mut c = Http1Client::new("localhost");
    c.send_request(Method::POST, "/echo", &HeaderMap::new(), b"payload");
    c.send_request(Method::HEAD, "/h", &HeaderMap::new(), b"");
    c.send_request(Method::GET, "/stream", &HeaderMap::new(), b"");
    let mut got = Vec::new();
    for _ in 0..10 {
        while let Some(b) = c.poll_transmit() {
            s.handle_input(now, &b);
        }
        while let Some(event) = s.poll_event() {
            match event {
                Event::Request(head) => {
                    if head.uri.path() == "/stream" {
                        s.respond(now, StatusCode::OK, &HeaderMap::new(), ResponseBody::Stream)
                            .unwrap();
                        s.send_chunk(b"part1-").unwrap();
                        s.send_chunk(b"part2").unwrap();
                        s.finish(now).unwrap();
                    } else {
                        s.read_body(now, 100).unwrap();
                    }
                }
                Event::BodyEnd => {
                    s.respond(
                        now,
                        StatusCode::OK,
                        &HeaderMap::new(),
                        ResponseBody::Full(Bytes::from_static(b"done")),
                    )
                    .unwrap();
                }
                _ => {}
            }
        }
        while let Some(b) = s.poll_transmit() {
            c.handle_input(&b);
        }
        while let Some(e) = c.poll_event() {
            got.push(e);
        }
    }
    let bodies: Vec<Vec<u8>> = got
        .split(|e| matches!(e, ClientEvent::End))
        .map(|part| {
            part.iter()
                .filter_map(|e| match e {
                    ClientEvent::Body(b) => Some(b.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect()
        })
        .collect();
    assert_eq!(
        bodies[..3],
        [b"done".to_vec(), Vec::new(), b"part1-part2".to_vec()]
    );
    assert_eq!(c.outstanding(), 0);
}

proptest! {
    /// Any chunking of a pipelined conversation gives the same requests, bodies and answers.
    #[test]
    fn chunking_invariance(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20)) {
        let input: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n1\r\ne\r\n0\r\nT: v\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        let whole = serve(&[input]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&input[start..p]);
            start = p;
        }
        let chunked = serve(&pieces);
        prop_assert_eq!(whole, chunked);
    }

    /// Arbitrary bytes never panic, and the connection either waits or ends closed.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, _, _) = serve(&[&bytes]);
    }
}
