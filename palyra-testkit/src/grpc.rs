//! A blocking gRPC-over-h2c client for the suite: std `TcpStream` driving the HTTP/2 client
//! machine, so the servers of both drivers are called over real sockets.

use bytes::{Bytes, BytesMut};
use palyra_proto::grpc::codec::{self, MessageDecoder};
use palyra_proto::h2::conn::{Config, Connection, Event, Role};
use palyra_proto::h2::hpack::Field;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The outcome of a call.
#[derive(Debug, Default)]
pub struct CallResult {
    /// Response messages.
    pub messages: Vec<Bytes>,
    /// `grpc-status`, if the call ended.
    pub status: Option<u32>,
    /// `grpc-message`, decoded.
    pub message: String,
    /// `:status` of the response.
    pub http_status: Option<String>,
}

/// Calls `path` with `requests` (half-closing after them) and waits for the end of the call.
pub fn call(addr: SocketAddr, path: &str, requests: &[Vec<u8>]) -> std::io::Result<CallResult> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let now = Instant::now();
    let mut conn = Connection::new(Role::Client, Config::default(), now);
    let fields: Vec<Field> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| Field::new(n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    let id = conn
        .open_stream(&fields, false)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut body = BytesMut::new();
    for request in requests {
        codec::encode_message(request, &mut body);
    }
    conn.send_data(id, body.freeze(), true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut result = CallResult::default();
    let mut decoder = MessageDecoder::new(1 << 24);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = now + Duration::from_secs(10);
    while Instant::now() < deadline {
        while let Some(bytes) = conn.poll_transmit() {
            stream.write_all(&bytes)?;
        }
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Headers {
                    stream: s,
                    fields,
                    end_stream,
                } if s == id => {
                    for f in &fields {
                        match &f.name[..] {
                            b":status" => {
                                result.http_status =
                                    Some(String::from_utf8_lossy(&f.value).into_owned())
                            }
                            b"grpc-status" => {
                                result.status = String::from_utf8_lossy(&f.value).parse().ok()
                            }
                            b"grpc-message" => result.message = codec::percent_decode(&f.value),
                            _ => {}
                        }
                    }
                    if end_stream {
                        return Ok(result);
                    }
                }
                Event::Data {
                    stream: s, data, ..
                } if s == id => {
                    decoder.handle_input(&data);
                    while let Some(m) = decoder
                        .poll_message()
                        .map_err(|e| std::io::Error::other(e.to_string()))?
                    {
                        result.messages.push(m);
                    }
                }
                Event::Reset { stream: s, .. } if s == id => return Ok(result),
                Event::Closed { reason, .. } => return Err(std::io::Error::other(reason)),
                _ => {}
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(result),
            Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "call did not finish in 10 s",
    ))
}
