//! Connection caps of the TCP listeners: at the cap an idle connection is shed to make room for
//! a new one; with none idle the new one is refused with the protocol's own answer (HTTP 503 with
//! `Retry-After`, HTTP/2 GOAWAY) at once.

use crate::{gateway_routers, Driver};
use palyra_gateway::grpc::GrpcListener;
use palyra_gateway::operator::{Operator, OperatorAcceptor};
use palyra_gateway::serve::tcp::{ListenerLimits, TcpHandle};
use palyra_proto::pb::grpc::health::v1::HealthCheckRequest;
use prost::Message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CAP: ListenerLimits = ListenerLimits {
    max_connections: 2,
    max_refusing: 4,
};

/// Everything `stream` sends until it closes or `limit` passes.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn serve_http<D: Driver>() -> (TcpHandle, SocketAddr) {
    let acceptor = Arc::new(OperatorAcceptor {
        operator: Operator::new("test", Instant::now()),
        config: Default::default(),
        tls: None,
    });
    let rt = D::runtime();
    let handle = TcpHandle::serve_with(&rt, crate::loopback(), acceptor, None, CAP).expect("bind");
    let addr = handle.local_addr;
    (handle, addr)
}

/// HTTP: busy connections (a request head arriving) are kept and a new one gets 503 with
/// `Retry-After` at once; idle connections are shed so a new client is served.
pub fn http_cap_refuses_then_sheds<D: Driver>() {
    let (handle, addr) = serve_http::<D>();
    let mut busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .expect("partial head");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut third = TcpStream::connect(addr).expect("connect");
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(3));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 503"),
        "[{}] over the cap: {text:?}",
        D::NAME
    );
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("\"code\":\"overloaded\""), "{text}");
    assert!(closed, "the refused connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    // The busy ones are still served.
    busy[0].write_all(b"\r\n").expect("finish the head");
    let mut head = [0u8; 12];
    busy[0].read_exact(&mut head).expect("answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(busy);
    std::thread::sleep(Duration::from_millis(200));
    // Two idle connections fill the cap; a new client sheds the older and is served.
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fresh = TcpStream::connect(addr).expect("connect");
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let (answer, _) = read_until_closed(&mut fresh, Duration::from_secs(3));
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "[{}] a fresh client is served: {:?}",
        D::NAME,
        String::from_utf8_lossy(&answer)
    );
    let (_, shed) = read_until_closed(&mut idle[0], Duration::from_secs(2));
    assert!(shed, "[{}] the oldest idle connection was shed", D::NAME);
    D::stop_grpc(handle);
}

/// gRPC (HTTP/2): with the cap taken by open calls, a new connection gets the server preface
/// and a GOAWAY that processed no stream.
pub fn grpc_cap_answers_goaway<D: Driver>() {
    let listener = GrpcListener::h2c(gateway_routers());
    let rt = D::runtime();
    let handle = TcpHandle::start_with(&rt, crate::loopback(), listener, CAP).expect("bind");
    let addr = handle.local_addr;
    // Two connections each with a Watch call that stays open: neither is idle.
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut client = crate::grpc::Client::h2c(addr).expect("connect");
        let call = client
            .start("/grpc.health.v1.Health/Watch", None)
            .expect("start");
        client
            .send(call, &HealthCheckRequest::default().encode_to_vec())
            .expect("send");
        assert!(
            client.next(call, Duration::from_secs(5)).is_some(),
            "Watch answers"
        );
        watchers.push(client);
    }
    let started = Instant::now();
    let mut refused = TcpStream::connect(addr).expect("connect");
    let (answer, closed) = read_until_closed(&mut refused, Duration::from_secs(3));
    // Frames: SETTINGS (type 4) then GOAWAY (type 7) with last stream 0.
    let mut frames = Vec::new();
    let mut rest = answer.as_slice();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        frames.push((rest[3], rest[9..9 + len.min(rest.len() - 9)].to_vec()));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    let kinds: Vec<u8> = frames.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [4, 7],
        "[{}] SETTINGS then GOAWAY: {answer:?}",
        D::NAME
    );
    assert_eq!(
        &frames[1].1[..4],
        &[0, 0, 0, 0],
        "last stream 0: nothing processed"
    );
    assert!(
        closed && started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    drop(watchers);
    D::stop_grpc(handle);
}
