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
