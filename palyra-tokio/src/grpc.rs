//! Serves gRPC over HTTP/2, cleartext (h2c) or TLS: one task per TCP connection, each running a
//! [`StreamMachine`]; and the client channel the CLI uses.

use event_listener::EventListener;
pub use palyra_gateway::grpc::GrpcListener;
use palyra_gateway::notify::Notifier;
use palyra_gateway::WRITE_STALL;
use palyra_proto::grpc::client::{ClientMachine, Event as ClientEvent, GrpcClient};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::h2::hpack::Field;
use palyra_proto::transport::tls::TlsStream;
use palyra_proto::transport::{Acceptor, StreamMachine};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Bytes read per call: one maximum-size HTTP/2 frame (16 KiB); idle connections stay small.
const READ_BUFFER: usize = 16 * 1024;

/// How long open calls may run after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A running TCP listener (gRPC, HTTP/1.1, ...): one task per connection.
pub struct GrpcHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GrpcHandle {
    /// Binds `addr` and serves gRPC as `listener` says.
    pub async fn start(addr: SocketAddr, listener: GrpcListener) -> io::Result<Self> {
        let (acceptor, notifier) = listener.into_parts();
        Self::serve(addr, acceptor, notifier).await
    }

    /// Binds `addr` and runs the machine `acceptor` builds on every accepted connection,
    /// waking connections when `notifier` fires.
    pub async fn serve(
        addr: SocketAddr,
        acceptor: Arc<dyn Acceptor>,
        notifier: Option<Arc<Notifier>>,
    ) -> io::Result<Self> {
        let socket = TcpListener::bind(addr).await?;
        let local_addr = socket.local_addr()?;
        let (shutdown, signal) = watch::channel(false);
        let task = tokio::spawn(accept_loop(socket, acceptor, notifier, signal));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting, asks every connection to finish (GOAWAY, close) and waits (bounded).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), self.task).await;
    }
}

async fn accept_loop(
    socket: TcpListener,
    acceptor: Arc<dyn Acceptor>,
    notifier: Option<Arc<Notifier>>,
    mut signal: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match acceptor.accept(Instant::now(), peer) {
                        Ok(conn) => {
                            connections.spawn(serve_connection(stream, peer, conn, notifier.clone(), signal.clone()));
                        }
                        Err(e) => tracing::warn!(error = %e, "connection setup failed"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = signal.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_connection<M: StreamMachine>(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut conn: M,
    notifier: Option<Arc<Notifier>>,
    mut signal: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut stopping = *signal.borrow();
    if stopping {
        conn.go_away();
    }
    let mut seen = notifier.as_ref().map_or(0, |n| n.version());
    loop {
        let listener = notifier.as_ref().map(|n| n.listen());
        if notifier
            .as_ref()
            .is_some_and(|n| n.changed_since(&mut seen))
        {
            conn.handle_wake(Instant::now());
        }
        while let Some(bytes) = conn.poll_transmit() {
            let written = tokio::time::timeout(WRITE_STALL, stream.write_all(&bytes)).await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::debug!(%peer, "write failed or stalled; dropping the connection");
                return;
            }
        }
        if conn.is_closed() {
            if let Some(reason) = conn.failure() {
                tracing::debug!(%peer, %reason, "connection failed");
            }
            let _ = stream.shutdown().await;
            return;
        }
        let wake = conn.poll_timeout();
        let reading = conn.wants_input();
        tokio::select! {
            read = stream.read(&mut buf), if reading => match read {
                Ok(0) | Err(_) => {
                    conn.handle_eof();
                    while let Some(bytes) = conn.poll_transmit() {
                        let _ = stream.write_all(&bytes).await;
                    }
                    tracing::debug!(%peer, "connection closed by peer");
                    return;
                }
                Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
            },
            _ = sleep_until(wake) => conn.handle_timeout(Instant::now()),
            _ = notified(listener) => {}
            _ = signal.changed(), if !stopping => {
                stopping = true;
                conn.go_away();
            }
        }
    }
}

async fn notified(listener: Option<EventListener>) {
    match listener {
        Some(listener) => listener.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

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
    commands: mpsc::Sender<Command>,
    _task: JoinHandle<()>,
}

type UnaryReply = oneshot::Sender<Result<bytes::Bytes, Status>>;

enum Command {
    Unary {
        path: String,
        request: Vec<u8>,
        timeout: Duration,
        reply: UnaryReply,
    },
    Open {
        path: String,
        metadata: Vec<Field>,
        timeout: Option<Duration>,
        events: mpsc::UnboundedSender<CallEvent>,
        reply: oneshot::Sender<Result<u32, Status>>,
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
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let client = GrpcClient::new(&addr.to_string(), Some(KEEPALIVE), Instant::now());
        Ok(Self::spawn(stream, client))
    }

    /// Connects to `addr` over TLS, verifying the server as `server_name` with `tls`.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let now = Instant::now();
        let client = GrpcClient::new(&addr.to_string(), Some(KEEPALIVE), now).with_tls();
        let machine = TlsStream::client(tls, server_name, client, now).map_err(io::Error::other)?;
        Ok(Self::spawn(stream, machine))
    }

    fn spawn<M: ClientMachine + 'static>(stream: TcpStream, machine: M) -> Self {
        let (commands, rx) = mpsc::channel(64);
        let task = tokio::spawn(run_channel(stream, machine, rx));
        Self {
            commands,
            _task: task,
        }
    }

    /// A unary call: the serialized request in, the serialized response or the status out.
    pub async fn unary(
        &self,
        path: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, Status> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Unary {
                path: path.to_owned(),
                request,
                timeout,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Opens a streaming call (client, server or bidi streaming).
    pub async fn open(
        &self,
        path: &str,
        metadata: Vec<Field>,
        timeout: Option<Duration>,
    ) -> Result<StreamingCall, Status> {
        let (events, rx_events) = mpsc::unbounded_channel();
        let (reply, rx) = oneshot::channel();
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
        let call = rx.await.unwrap_or_else(|_| Err(closed()))?;
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
    commands: mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<CallEvent>,
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
        self.events.recv().await
    }
}

enum Waiter {
    Unary(UnaryReply, Option<bytes::Bytes>),
    Stream(mpsc::UnboundedSender<CallEvent>),
}

async fn run_channel<M: ClientMachine>(
    mut stream: TcpStream,
    mut machine: M,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut waiting: HashMap<u32, Waiter> = HashMap::new();
    loop {
        while let Some(bytes) = machine.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() {
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
        let wake = machine.poll_timeout();
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    machine.handle_eof();
                    while let Some(event) = machine.client().poll_event() {
                        deliver(&mut waiting, event);
                    }
                    for (_, waiter) in waiting.drain() {
                        fail(waiter, Status::new(Code::Unavailable, "connection closed by the server"));
                    }
                    return;
                }
                Ok(n) => machine.handle_input(Instant::now(), &buf[..n]),
            },
            _ = sleep_until(wake) => machine.handle_timeout(Instant::now()),
            command = commands.recv() => match command {
                Some(command) => run_command(machine.client(), &mut waiting, command),
                None => machine.go_away(),
            },
        }
    }
}

fn fail(waiter: Waiter, status: Status) {
    match waiter {
        Waiter::Unary(reply, _) => {
            let _ = reply.send(Err(status));
        }
        Waiter::Stream(events) => {
            let _ = events.send(CallEvent::Finished(status, Vec::new()));
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
                let _ = events.send(CallEvent::Message(message));
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
                let _ = reply.send(result);
            }
            Some(Waiter::Stream(events)) => {
                let _ = events.send(CallEvent::Finished(status, trailers));
            }
            None => {}
        },
        ClientEvent::Headers { call, metadata } => {
            if let Some(Waiter::Stream(events)) = waiting.get(&call) {
                let _ = events.send(CallEvent::Headers(metadata));
            }
        }
        ClientEvent::Closed { .. } => {}
    }
}

fn run_command(client: &mut GrpcClient, waiting: &mut HashMap<u32, Waiter>, command: Command) {
    let now = Instant::now();
    match command {
        Command::Unary {
            path,
            request,
            timeout,
            reply,
        } => match client.start_call(now, &path, &[], Some(timeout)) {
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
                        let _ = reply.send(Err(status));
                    }
                }
            }
            Err(status) => {
                let _ = reply.send(Err(status));
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
                let _ = reply.send(Ok(call));
            }
            Err(status) => {
                let _ = reply.send(Err(status));
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
