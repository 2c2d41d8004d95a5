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

/// What a call of [`Client`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// One response message.
    Message(Bytes),
    /// The call ended with this status.
    Finished(palyra_proto::grpc::Status),
}

/// A blocking gRPC client over a std `TcpStream`, cleartext or TLS, with several calls open at
/// once (streaming included): the suite's client, the same for every driver under test.
pub struct Client {
    stream: TcpStream,
    machine: Box<dyn palyra_proto::grpc::client::ClientMachine>,
    replies: std::collections::HashMap<u32, std::collections::VecDeque<Reply>>,
    buf: Vec<u8>,
}

impl Client {
    /// Connects over cleartext HTTP/2.
    pub fn h2c(addr: SocketAddr) -> std::io::Result<Self> {
        let client = palyra_proto::grpc::client::GrpcClient::new("localhost", None, Instant::now());
        Self::with(addr, Box::new(client))
    }

    /// Connects over TLS with `tls` (server verified as `localhost`).
    pub fn tls(
        addr: SocketAddr,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let now = Instant::now();
        let client = palyra_proto::grpc::client::GrpcClient::new("localhost", None, now).with_tls();
        let machine =
            palyra_proto::transport::tls::TlsStream::client(tls, "localhost", client, now)
                .map_err(std::io::Error::other)?;
        Self::with(addr, Box::new(machine))
    }

    fn with(
        addr: SocketAddr,
        machine: Box<dyn palyra_proto::grpc::client::ClientMachine>,
    ) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            machine,
            replies: Default::default(),
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Starts a call (deadline `timeout` if set).
    pub fn start(
        &mut self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<u32, palyra_proto::grpc::Status> {
        let call = self
            .machine
            .client()
            .start_call(Instant::now(), path, &[], timeout)?;
        self.replies.insert(call, Default::default());
        Ok(call)
    }

    /// Sends one request message.
    pub fn send(&mut self, call: u32, message: &[u8]) -> Result<(), palyra_proto::grpc::Status> {
        self.machine.client().send_message(call, message)?;
        self.pump(Duration::ZERO).map_err(|e| {
            palyra_proto::grpc::Status::new(palyra_proto::grpc::Code::Unavailable, e.to_string())
        })
    }

    /// Half-closes the call.
    pub fn close_send(&mut self, call: u32) {
        let _ = self.machine.client().close_send(call);
    }

    /// Cancels the call.
    pub fn cancel(&mut self, call: u32) {
        self.machine.client().cancel(call);
        let _ = self.pump(Duration::ZERO);
    }

    /// The next reply of `call` within `timeout` (`None` if nothing came).
    pub fn next(&mut self, call: u32, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.replies.get_mut(&call).and_then(|q| q.pop_front()) {
                return Some(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.pump(left.min(Duration::from_millis(20))).is_err() {
                return self.replies.get_mut(&call).and_then(|q| q.pop_front());
            }
        }
    }

    /// A unary call: the response message or the status.
    pub fn unary(
        &mut self,
        path: &str,
        request: &[u8],
    ) -> Result<Bytes, palyra_proto::grpc::Status> {
        let call = self.start(path, Some(Duration::from_secs(10)))?;
        self.send(call, request)?;
        self.close_send(call);
        let mut message = None;
        loop {
            match self.next(call, Duration::from_secs(15)) {
                Some(Reply::Message(m)) => message = Some(m),
                Some(Reply::Finished(status)) if status.code == palyra_proto::grpc::Code::Ok => {
                    return message.ok_or_else(|| {
                        palyra_proto::grpc::Status::new(
                            palyra_proto::grpc::Code::Internal,
                            "no response message",
                        )
                    })
                }
                Some(Reply::Finished(status)) => return Err(status),
                None => {
                    return Err(palyra_proto::grpc::Status::new(
                        palyra_proto::grpc::Code::DeadlineExceeded,
                        "no answer within 15 s",
                    ))
                }
            }
        }
    }

    /// Writes what is queued, reads for up to `wait`, and files the events.
    fn pump(&mut self, wait: Duration) -> std::io::Result<()> {
        while let Some(bytes) = self.machine.poll_transmit() {
            self.stream.write_all(&bytes)?;
        }
        if self
            .machine
            .poll_timeout()
            .is_some_and(|t| t <= Instant::now())
        {
            self.machine.handle_timeout(Instant::now());
        }
        if !wait.is_zero() {
            self.stream
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            match self.stream.read(&mut self.buf) {
                Ok(0) => self.machine.handle_eof(),
                Ok(n) => self.machine.handle_input(Instant::now(), &self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    self.machine.handle_eof();
                    self.file_events();
                    return Err(e);
                }
            }
            while let Some(bytes) = self.machine.poll_transmit() {
                self.stream.write_all(&bytes)?;
            }
        }
        self.file_events();
        if self.machine.is_closed() {
            return Err(std::io::Error::other("connection closed"));
        }
        Ok(())
    }

    fn file_events(&mut self) {
        use palyra_proto::grpc::client::Event as E;
        while let Some(event) = self.machine.client().poll_event() {
            match event {
                E::Message { call, message } => {
                    if let Some(q) = self.replies.get_mut(&call) {
                        q.push_back(Reply::Message(message));
                    }
                }
                E::Finished { call, status, .. } => {
                    if let Some(q) = self.replies.get_mut(&call) {
                        q.push_back(Reply::Finished(status));
                    }
                }
                E::Headers { .. } | E::Closed { .. } => {}
            }
        }
    }
}
