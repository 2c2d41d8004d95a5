//! The gRPC server machine driven by the HTTP/2 client machine in memory.

use super::*;
use crate::h2::conn::Event as H2;
use std::time::Duration;

fn f(n: &str, v: &str) -> Field {
    Field::new(n.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn grpc_request(path: &str, extra: &[(&str, &str)]) -> Vec<Field> {
    let mut fields = vec![
        f(":method", "POST"),
        f(":scheme", "http"),
        f(":path", path),
        f(":authority", "localhost"),
        f("content-type", "application/grpc"),
        f("te", "trailers"),
    ];
    fields.extend(extra.iter().map(|(n, v)| f(n, v)));
    fields
}

fn framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    codec::encode_message(message, &mut out);
    out.freeze()
}

struct Pair {
    now: Instant,
    client: Connection,
    server: GrpcServer,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let mut pair = Self {
            now,
            client: Connection::new(Role::Client, H2Config::default(), now),
            server: GrpcServer::new(ServerConfig::default(), now),
        };
        pair.pump();
        pair
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.client.poll_transmit() {
                self.server.handle_input(self.now, &bytes);
                moved = true;
            }
            while let Some(bytes) = self.server.poll_transmit() {
                self.client.handle_input(self.now, &bytes);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn server_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    fn client_events(&mut self) -> Vec<H2> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }
}

fn value<'a>(fields: &'a [Field], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|x| x.name == name.as_bytes())
        .map(|x| x.value.as_ref())
}

/// Collects the response: initial headers, messages, trailers (or trailers-only).
fn response(events: &[H2]) -> (Vec<Field>, Vec<Bytes>, Vec<Field>) {
    let mut headers = Vec::new();
    let mut trailers = Vec::new();
    let mut decoder = MessageDecoder::new(1 << 24);
    let mut messages = Vec::new();
    for event in events {
        match event {
            H2::Headers {
                fields, end_stream, ..
            } => {
                if *end_stream {
                    trailers = fields.clone();
                } else {
                    headers = fields.clone();
                }
            }
            H2::Data { data, .. } => {
                decoder.handle_input(data);
                while let Some(m) = decoder.poll_message().unwrap() {
                    messages.push(m);
                }
            }
            _ => {}
        }
    }
    (headers, messages, trailers)
}

#[test]
fn unary_call_with_metadata_and_trailers() {
    let mut p = Pair::new();
    let id = p
        .client
        .open_stream(
            &grpc_request(
                "/pkg.Echo/Say",
                &[
                    ("grpc-timeout", "5S"),
                    ("x-user", "ada"),
                    ("trace-bin", "q6ur"),
                ],
            ),
            false,
        )
        .unwrap();
    p.client.send_data(id, framed(b"hello"), true).unwrap();
    p.pump();
    let events = p.server_events();
    match &events[0] {
        Event::Call {
            call,
            path,
            metadata,
            deadline,
            ..
        } => {
            assert_eq!(*call, id);
            assert_eq!(path, "/pkg.Echo/Say");
            assert_eq!(value(metadata, "x-user"), Some(&b"ada"[..]));
            assert_eq!(value(metadata, "trace-bin"), Some(&b"q6ur"[..]));
            assert!(
                value(metadata, "grpc-timeout").is_none() && value(metadata, ":path").is_none()
            );
            assert_eq!(*deadline, Some(p.now + Duration::from_secs(5)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events[1],
        Event::Message {
            call: id,
            message: Bytes::from_static(b"hello")
        }
    );
    assert_eq!(events[2], Event::HalfClosed { call: id });
    p.server.send_message(id, b"hello back").unwrap();
    p.server
        .finish(id, &Status::ok(), &[f("x-served-by", "palyra")])
        .unwrap();
    p.pump();
    let (headers, messages, trailers) = response(&p.client_events());
    assert_eq!(value(&headers, ":status"), Some(&b"200"[..]));
    assert_eq!(
        value(&headers, "content-type"),
        Some(&b"application/grpc"[..])
    );
    assert_eq!(messages, vec![Bytes::from_static(b"hello back")]);
    assert_eq!(value(&trailers, "grpc-status"), Some(&b"0"[..]));
    assert_eq!(value(&trailers, "x-served-by"), Some(&b"palyra"[..]));
    assert_eq!(p.server.open_calls(), 0);
}

#[test]
fn errors_are_trailers_only_with_percent_encoded_messages() {
    let mut p = Pair::new();
    let id = p
        .client
        .open_stream(&grpc_request("/pkg.Echo/Say", &[]), true)
        .unwrap();
    p.pump();
    p.server_events();
    p.server
        .finish(id, &Status::new(Code::InvalidArgument, "bad ✓\n100%"), &[])
        .unwrap();
    p.pump();
    let events = p.client_events();
    let H2::Headers {
        fields,
        end_stream: true,
        ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!(value(fields, ":status"), Some(&b"200"[..]));
    assert_eq!(value(fields, "grpc-status"), Some(&b"3"[..]));
    let message = value(fields, "grpc-message").unwrap();
    assert!(message.is_ascii());
    assert_eq!(codec::percent_decode(message), "bad ✓\n100%");
}

#[test]
fn deadlines_are_enforced_by_the_server() {
    let mut p = Pair::new();
    let id = p
        .client
        .open_stream(
            &grpc_request("/pkg.Slow/Sleep", &[("grpc-timeout", "100m")]),
            true,
        )
        .unwrap();
    p.pump();
    p.server_events();
    let deadline = p.server.poll_timeout().unwrap();
    assert_eq!(deadline, p.now + Duration::from_millis(100));
    p.now = deadline;
    p.server.handle_timeout(deadline);
    p.pump();
    assert!(
        matches!(&p.server_events()[..], [Event::Cancelled { call, status }] if *call == id && status.code == Code::DeadlineExceeded)
    );
    let (_, _, trailers) = response(&p.client_events());
    assert_eq!(value(&trailers, "grpc-status"), Some(&b"4"[..]));
    // The application can no longer answer it.
    assert_eq!(
        p.server.send_message(id, b"late"),
        Err(CallError::NotOpen(id))
    );
}

#[test]
fn oversized_messages_end_the_call_with_out_of_range() {
    let mut p = Pair::new();
    let id = p
        .client
        .open_stream(&grpc_request("/pkg.Big/Put", &[]), false)
        .unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(4 * 1024 * 1024 + 1u32).to_be_bytes());
    p.client.send_data(id, Bytes::from(prefix), false).unwrap();
    p.pump();
    let events = p.server_events();
    assert!(
        matches!(&events[1], Event::Cancelled { status, .. } if status.code == Code::OutOfRange)
    );
    let (_, _, trailers) = response(&p.client_events());
    assert_eq!(value(&trailers, "grpc-status"), Some(&b"11"[..]));
}

#[test]
fn non_grpc_requests_get_http_errors() {
    let mut p = Pair::new();
    let mut get = grpc_request("/pkg.Echo/Say", &[]);
    get[0] = f(":method", "GET");
    p.client.open_stream(&get, true).unwrap();
    let mut json = grpc_request("/pkg.Echo/Say", &[]);
    json[4] = f("content-type", "application/json");
    p.client.open_stream(&json, true).unwrap();
    p.client
        .open_stream(&grpc_request("/nopath", &[]), true)
        .unwrap();
    p.client
        .open_stream(
            &grpc_request("/pkg.Echo/Say", &[("grpc-encoding", "gzip")]),
            true,
        )
        .unwrap();
    p.client
        .open_stream(
            &grpc_request("/pkg.Echo/Say", &[("grpc-timeout", "soon")]),
            true,
        )
        .unwrap();
    p.pump();
    assert!(p.server_events().is_empty());
    let statuses: Vec<(String, Option<String>)> = p
        .client_events()
        .iter()
        .filter_map(|e| match e {
            H2::Headers { fields, .. } => Some((
                String::from_utf8(value(fields, ":status").unwrap().to_vec()).unwrap(),
                value(fields, "grpc-status").map(|v| String::from_utf8(v.to_vec()).unwrap()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("405".into(), None),
            ("415".into(), None),
            ("200".into(), Some("12".into())),
            ("200".into(), Some("12".into())),
            ("200".into(), Some("13".into())),
        ]
    );
}

#[test]
fn client_cancellation_reaches_the_application() {
    let mut p = Pair::new();
    let id = p
        .client
        .open_stream(&grpc_request("/pkg.Stream/Watch", &[]), false)
        .unwrap();
    p.pump();
    p.server_events();
    p.client.reset(id, crate::h2::frame::ErrorCode::Cancel);
    p.pump();
    assert!(
        matches!(&p.server_events()[..], [Event::Cancelled { call, status }] if *call == id && status.code == Code::Cancelled)
    );
    assert_eq!(p.server.open_calls(), 0);
}

#[test]
fn bidirectional_streaming_interleaves() {
    let mut p = Pair::new();
    let id = p
        .client
        .open_stream(&grpc_request("/pkg.Chat/Talk", &[]), false)
        .unwrap();
    for round in 0..3u8 {
        p.client.send_data(id, framed(&[round]), false).unwrap();
        p.pump();
        let events = p.server_events();
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Message { message, .. } if message[..] == [round])));
        p.server.send_message(id, &[round + 100]).unwrap();
        p.pump();
        let (_, messages, _) = response(&p.client_events());
        assert_eq!(messages, vec![Bytes::from(vec![round + 100])]);
    }
    p.client.send_data(id, Bytes::new(), true).unwrap();
    p.pump();
    assert!(p.server_events().contains(&Event::HalfClosed { call: id }));
    p.server.finish(id, &Status::ok(), &[]).unwrap();
    p.pump();
    let (_, _, trailers) = response(&p.client_events());
    assert_eq!(value(&trailers, "grpc-status"), Some(&b"0"[..]));
}
