//! The operator plane's HTTP/1.1 listener over real sockets: health, metrics, keep-alive,
//! pipelining, and the limit answers (431, 413, 400, 501, 408) with the JSON envelope.

use crate::Driver;
use palyra_proto::operator::{Operator, OperatorAcceptor};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes `request` and reads until the server closes or `expect` responses arrived.
fn exchange(addr: SocketAddr, request: &[u8], expect: usize) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                if String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count() >= expect {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Health, metrics, keep-alive with pipelining, and the HTTP layer's limit answers.
pub fn operator_http_basics<D: Driver>() {
    let operator = Operator::new("suite", Instant::now());
    let (server, addr) = D::start_listener(Arc::new(OperatorAcceptor {
        operator,
        config: Default::default(),
    }));
    let out = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        3,
    );
    assert_eq!(
        out.matches("HTTP/1.1 200 OK").count(),
        3,
        "[{}] {out}",
        D::NAME
    );
    assert!(out.contains("\"service\":\"palyrad\""));
    assert!(
        out.contains("palyra_http_responses_total{class=\"2xx\"} 2"),
        "{out}"
    );
    for (request, status, code) in [
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(17_000)), "431", "header_too_large"),
        ("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".into(), "400", "bad_request"),
        ("BREW / HTTP/1.1\r\nHost: x\r\n\r\n".into(), "501", "not_implemented"),
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".into(), "404", "not_found"),
    ] {
        let out = exchange(addr, request.as_bytes(), 1);
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "[{}] {out}", D::NAME);
        assert!(out.contains(&format!("\"code\":\"{code}\"")), "{out}");
        assert!(out.contains("x-content-type-options: nosniff"), "{out}");
    }
    D::stop_grpc(server);
}

/// The WebSocket upgrade on the operator listener: 101, an echoed masked text frame, and the
/// close handshake.
pub fn operator_websocket_echo<D: Driver>() {
    let ws = palyra_proto::ws::WsConfig::default();
    let (server, addr) = D::start_listener(Arc::new(OperatorAcceptor {
        operator: Operator::with_ws_echo("suite", Instant::now(), ws),
        config: Default::default(),
    }));
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut request = b"GET /conformance/ws-echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // A masked text frame "hi" (mask 1,2,3,4), sent together with the upgrade request.
    request.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    stream.write_all(&request).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_until = |got: &mut Vec<u8>, stream: &mut TcpStream, buf: &mut [u8], want: usize| {
        while got.len() < want {
            match stream.read(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    read_until(&mut got, &mut stream, &mut buf, 1);
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let want = got.len() + 1;
        read_until(&mut got, &mut stream, &mut buf, want);
        assert!(
            got.len() >= want,
            "[{}] connection ended before the 101 head",
            D::NAME
        );
    };
    let text = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols"),
        "[{}] {text}",
        D::NAME
    );
    assert!(text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    read_until(&mut got, &mut stream, &mut buf, head_end + 4);
    assert_eq!(
        &got[head_end..head_end + 4],
        &[0x81, 0x02, b'h', b'i'],
        "[{}] echo",
        D::NAME
    );
    // A masked close frame with code 1000: echoed, then the server closes.
    stream
        .write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .expect("write close");
    read_until(&mut got, &mut stream, &mut buf, head_end + 8);
    assert_eq!(
        &got[head_end + 4..head_end + 8],
        &[0x88, 0x02, 0x03, 0xe8],
        "[{}] close echoed",
        D::NAME
    );
    D::stop_grpc(server);
}
