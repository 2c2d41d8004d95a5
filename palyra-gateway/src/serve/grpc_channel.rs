//! The gRPC client channel the CLI and nodes use: one reused HTTP/2 connection (h2c or TLS) to
//! one target, run by one task over any runtime; callers hold a [`GrpcChannel`].

use crate::runtime::{self, Rt, TcpIo};
use palyra_proto::grpc::client::{ClientMachine, Event as ClientEvent, GrpcClient};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::h2::hpack::Field;
use palyra_proto::transport::tls::TlsStream;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Bytes read per call: one maximum-size HTTP/2 frame.
const READ_BUFFER: usize = 16 * 1024;

/// What a streaming call reports.
#[derive(Debug)]
pub enum CallEvent {
    /// Response headers (initial metadata).
    Headers(Vec<Field>),
    /// One response message.
    Message(bytes::Bytes),
    /// The call ended, with its trailing metadata.
    Finished(Status, Vec<Field>),
}

/// A client channel: one reused HTTP/2 connection (h2c or TLS) to one target, a deadline on
/// every call, keepalive PINGs every 30 s.
pub struct GrpcChannel {
    commands: async_channel::Sender<Command>,
}

type UnaryReply = async_channel::Sender<Result<bytes::Bytes, Status>>;

enum Command {
    Unary {
        path: String,
        metadata: Vec<Field>,
        request: Vec<u8>,
        timeout: Duration,
        reply: UnaryReply,
    },
    Open {
        path: String,
        metadata: Vec<Field>,
        timeout: Option<Duration>,
        events: async_channel::Sender<CallEvent>,
        reply: async_channel::Sender<Result<u32, Status>>,
    },
    Send {
        call: u32,
        message: Vec<u8>,
    },
    CloseSend {
        call: u32,
    },
    Cancel {
        call: u32,
    },
}

/// The keepalive interval of client channels.
const KEEPALIVE: Duration = Duration::from_secs(30);

fn closed() -> Status {
    Status::new(Code::Unavailable, "connection closed")
}

impl GrpcChannel {
    /// Connects to `addr` over cleartext HTTP/2.
    pub async fn connect(rt: &Rt, addr: SocketAddr) -> io::Result<Self> {
        let stream = rt.connect_tcp(addr).await?;
        let _ = stream.socket().set_tcp_nodelay(true);
        let client = GrpcClient::new(&addr.to_string(), Some(KEEPALIVE), rt.now());
        Ok(Self::spawn(rt, stream, client))
    }

    /// Connects to `addr` over TLS, verifying the server as `server_name` with `tls`.
    pub async fn connect_tls(
        rt: &Rt,
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> io::Result<Self> {
        let stream = rt.connect_tcp(addr).await?;
        let _ = stream.socket().set_tcp_nodelay(true);
        let now = rt.now();
        let client = GrpcClient::new(&addr.to_string(), Some(KEEPALIVE), now).with_tls();
        let machine = TlsStream::client(tls, server_name, client, now).map_err(io::Error::other)?;
        Ok(Self::spawn(rt, stream, machine))
    }

    fn spawn<M: ClientMachine + 'static>(rt: &Rt, stream: Box<dyn TcpIo>, machine: M) -> Self {
        let (commands, rx) = async_channel::bounded(64);
        rt.spawn(Box::pin(run_channel(Rt::clone(rt), stream, machine, rx)));
        Self { commands }
    }

    /// A unary call: the serialized request in, the serialized response or the status out.
    pub async fn unary(
        &self,
        path: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, Status> {
        self.unary_with(path, Vec::new(), request, timeout).await
    }

    /// [`GrpcChannel::unary`] with request metadata (credentials, say).
    pub async fn unary_with(
        &self,
        path: &str,
        metadata: Vec<Field>,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, Status> {
        let (reply, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Unary {
                path: path.to_owned(),
                metadata,
                request,
                timeout,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.recv().await.unwrap_or_else(|_| Err(closed()))
    }

    /// Opens a streaming call (client, server or bidi streaming).
    pub async fn open(
        &self,
        path: &str,
        metadata: Vec<Field>,
        timeout: Option<Duration>,
    ) -> Result<StreamingCall, Status> {
        let (events, rx_events) = async_channel::unbounded();
        let (reply, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Open {
                path: path.to_owned(),
                metadata,
                timeout,
                events,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        let call = rx.recv().await.unwrap_or_else(|_| Err(closed()))?;
        Ok(StreamingCall {
            call,
            commands: self.commands.clone(),
            events: rx_events,
        })
    }
}

/// One open streaming call.
pub struct StreamingCall {
    call: u32,
    commands: async_channel::Sender<Command>,
    events: async_channel::Receiver<CallEvent>,
}

impl StreamingCall {
    /// Sends one request message.
    pub async fn send(&self, message: Vec<u8>) -> Result<(), Status> {
        self.commands
            .send(Command::Send {
                call: self.call,
                message,
            })
            .await
            .map_err(|_| closed())
    }

    /// Half-closes: no more request messages.
    pub async fn close_send(&self) -> Result<(), Status> {
        self.commands
            .send(Command::CloseSend { call: self.call })
            .await
            .map_err(|_| closed())
    }

    /// Cancels the call.
    pub async fn cancel(&self) {
        let _ = self
            .commands
            .send(Command::Cancel { call: self.call })
            .await;
    }

    /// The next response message or the end of the call (`None` once it was reported).
    pub async fn next(&mut self) -> Option<CallEvent> {
        self.events.recv().await.ok()
    }
}

enum Waiter {
    Unary(UnaryReply, Option<bytes::Bytes>),
    Stream(async_channel::Sender<CallEvent>),
}

impl Waiter {
    /// Nobody can receive this call's answer any more.
    fn is_abandoned(&self) -> bool {
        match self {
            Waiter::Unary(reply, _) => reply.is_closed(),
            Waiter::Stream(events) => events.is_closed(),
        }
    }
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Command(Option<Command>),
}

async fn run_channel<M: ClientMachine>(
    rt: Rt,
    stream: Box<dyn TcpIo>,
    mut machine: M,
    commands: async_channel::Receiver<Command>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut waiting: HashMap<u32, Waiter> = HashMap::new();
    let far = || rt.now() + Duration::from_secs(86_400);
    let mut timer = rt.new_timer(far());
    let mut commands_open = true;
    loop {
        while let Some(bytes) = machine.poll_transmit() {
            if runtime::write_all(&*stream, &bytes).await.is_err() {
                machine.handle_eof();
                break;
            }
        }
        while let Some(event) = machine.client().poll_event() {
            deliver(&mut waiting, event);
        }
        if machine.is_closed() {
            for (_, waiter) in waiting.drain() {
                fail(waiter, closed());
            }
            return;
        }
        timer
            .as_mut()
            .reset(machine.poll_timeout().unwrap_or_else(far));
        let mut next = std::pin::pin!(commands.recv());
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(read) = stream.poll_read(cx, &mut buf) {
                return Poll::Ready(Wake::Read(read));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if commands_open {
                if let Poll::Ready(command) = next.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Command(command.ok()));
                }
            }
            Poll::Pending
        })
        .await;
        match woke {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => {
                machine.handle_eof();
                while let Some(event) = machine.client().poll_event() {
                    deliver(&mut waiting, event);
                }
                for (_, waiter) in waiting.drain() {
                    fail(
                        waiter,
                        Status::new(Code::Unavailable, "connection closed by the server"),
                    );
                }
                return;
            }
            Wake::Read(Ok(n)) => machine.handle_input(rt.now(), &buf[..n]),
            Wake::Timer => machine.handle_timeout(rt.now()),
            Wake::Command(Some(command)) => {
                run_command(machine.client(), &mut waiting, command, rt.now())
            }
            Wake::Command(None) => {
                // Every handle is gone: finish what is open, then close; when nobody waits for
                // any open call's answer either, the connection closes now.
                if waiting.values().all(Waiter::is_abandoned) {
                    return;
                }
                commands_open = false;
                machine.go_away();
            }
        }
    }
}

fn fail(waiter: Waiter, status: Status) {
    match waiter {
        Waiter::Unary(reply, _) => {
            let _ = reply.try_send(Err(status));
        }
        Waiter::Stream(events) => {
            let _ = events.try_send(CallEvent::Finished(status, Vec::new()));
        }
    }
}

fn deliver(waiting: &mut HashMap<u32, Waiter>, event: ClientEvent) {
    match event {
        ClientEvent::Message { call, message } => match waiting.get_mut(&call) {
            Some(Waiter::Unary(_, slot)) => {
                slot.get_or_insert(message);
            }
            Some(Waiter::Stream(events)) => {
                let _ = events.try_send(CallEvent::Message(message));
            }
            None => {}
        },
        ClientEvent::Finished {
            call,
            status,
            trailers,
        } => match waiting.remove(&call) {
            Some(Waiter::Unary(reply, message)) => {
                let result = match (status.code, message) {
                    (Code::Ok, Some(message)) => Ok(message),
                    (Code::Ok, None) => Err(Status::new(
                        Code::Internal,
                        "unary call returned no message",
                    )),
                    _ => Err(status),
                };
                let _ = reply.try_send(result);
            }
            Some(Waiter::Stream(events)) => {
                let _ = events.try_send(CallEvent::Finished(status, trailers));
            }
            None => {}
        },
        ClientEvent::Headers { call, metadata } => {
            if let Some(Waiter::Stream(events)) = waiting.get(&call) {
                let _ = events.try_send(CallEvent::Headers(metadata));
            }
        }
        ClientEvent::Closed { .. } => {}
    }
}

fn run_command(
    client: &mut GrpcClient,
    waiting: &mut HashMap<u32, Waiter>,
    command: Command,
    now: Instant,
) {
    match command {
        Command::Unary {
            path,
            metadata,
            request,
            timeout,
            reply,
        } => match client.start_call(now, &path, &metadata, Some(timeout)) {
            Ok(call) => {
                let sent = client
                    .send_message(call, &request)
                    .and_then(|()| client.close_send(call));
                match sent {
                    Ok(()) => {
                        waiting.insert(call, Waiter::Unary(reply, None));
                    }
                    Err(status) => {
                        client.cancel(call);
                        let _ = reply.try_send(Err(status));
                    }
                }
            }
            Err(status) => {
                let _ = reply.try_send(Err(status));
            }
        },
        Command::Open {
            path,
            metadata,
            timeout,
            events,
            reply,
        } => match client.start_call(now, &path, &metadata, timeout) {
            Ok(call) => {
                waiting.insert(call, Waiter::Stream(events));
                let _ = reply.try_send(Ok(call));
            }
            Err(status) => {
                let _ = reply.try_send(Err(status));
            }
        },
        Command::Send { call, message } => {
            if let Err(status) = client.send_message(call, &message) {
                client.cancel(call);
                if let Some(waiter) = waiting.remove(&call) {
                    fail(waiter, status);
                }
            }
        }
        Command::CloseSend { call } => {
            let _ = client.close_send(call);
        }
        Command::Cancel { call } => client.cancel(call),
    }
}
