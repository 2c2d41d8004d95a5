//! Serves gRPC over cleartext HTTP/2 (h2c): one task per TCP connection, each running a
//! [`ServerConnection`] machine.

use palyra_proto::grpc::server::ServerConfig;
use palyra_proto::grpc::service::{RouterFactory, ServerConnection};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read per call: one maximum-size HTTP/2 frame (16 KiB); idle connections stay small.
const READ_BUFFER: usize = 16 * 1024;

/// How long open calls may run after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A running gRPC listener.
pub struct GrpcHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GrpcHandle {
    /// Binds `addr` and serves connections with the services `routers` builds.
    pub async fn start(
        addr: SocketAddr,
        config: ServerConfig,
        routers: RouterFactory,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown, signal) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, config, routers, signal));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting, sends GOAWAY on every connection and waits (bounded) for them to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), self.task).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
    routers: RouterFactory,
    mut signal: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = ServerConnection::new(config, routers(), Instant::now());
                    connections.spawn(serve_connection(stream, peer, conn, signal.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "gRPC accept failed"),
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

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut conn: ServerConnection,
    mut signal: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut stopping = *signal.borrow();
    if stopping {
        conn.go_away();
    }
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if conn.is_closed() {
            let _ = stream.shutdown().await;
            return;
        }
        let wake = conn.poll_timeout();
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    conn.handle_eof();
                    while let Some(bytes) = conn.poll_transmit() {
                        let _ = stream.write_all(&bytes).await;
                    }
                    tracing::debug!(%peer, "gRPC connection closed by peer");
                    return;
                }
                Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
            },
            _ = sleep_until(wake) => conn.handle_timeout(Instant::now()),
            _ = signal.changed(), if !stopping => {
                stopping = true;
                conn.go_away();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// A gRPC client channel: one reused h2c connection to one target, a deadline on every call,
/// keepalive PINGs every 30 s.
pub struct GrpcChannel {
    commands: tokio::sync::mpsc::Sender<ChannelCommand>,
    _task: JoinHandle<()>,
}

type UnaryReply = tokio::sync::oneshot::Sender<Result<bytes::Bytes, palyra_proto::grpc::Status>>;

struct ChannelCommand {
    path: String,
    request: Vec<u8>,
    timeout: Duration,
    reply: UnaryReply,
}

impl GrpcChannel {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let client = palyra_proto::grpc::client::GrpcClient::new(
            &addr.to_string(),
            Some(Duration::from_secs(30)),
            Instant::now(),
        );
        let (commands, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(run_channel(stream, client, rx));
        Ok(Self {
            commands,
            _task: task,
        })
    }

    /// A unary call: the serialized request in, the serialized response or the status out.
    pub async fn unary(
        &self,
        path: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, palyra_proto::grpc::Status> {
        use palyra_proto::grpc::{Code, Status};
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(ChannelCommand {
                path: path.to_owned(),
                request,
                timeout,
                reply,
            })
            .await
            .map_err(|_| Status::new(Code::Unavailable, "connection closed"))?;
        rx.await
            .unwrap_or_else(|_| Err(Status::new(Code::Unavailable, "connection closed")))
    }
}

async fn run_channel(
    mut stream: TcpStream,
    mut client: palyra_proto::grpc::client::GrpcClient,
    mut commands: tokio::sync::mpsc::Receiver<ChannelCommand>,
) {
    use palyra_proto::grpc::client::Event;
    use palyra_proto::grpc::{Code, Status};
    use std::collections::HashMap;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut waiting: HashMap<u32, (UnaryReply, Option<bytes::Bytes>)> = HashMap::new();
    loop {
        while let Some(bytes) = client.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::Message { call, message } => {
                    if let Some((_, slot)) = waiting.get_mut(&call) {
                        slot.get_or_insert(message);
                    }
                }
                Event::Finished { call, status, .. } => {
                    if let Some((reply, message)) = waiting.remove(&call) {
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
                }
                Event::Closed { .. } | Event::Headers { .. } => {}
            }
        }
        if client.is_closed() {
            return;
        }
        let wake = client.poll_timeout();
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    for (_, (reply, _)) in waiting.drain() {
                        let _ = reply.send(Err(Status::new(Code::Unavailable, "connection closed by the server")));
                    }
                    return;
                }
                Ok(n) => client.handle_input(Instant::now(), &buf[..n]),
            },
            _ = sleep_until(wake) => client.handle_timeout(Instant::now()),
            command = commands.recv() => match command {
                Some(command) => {
                    let now = Instant::now();
                    match client.start_call(now, &command.path, &[], Some(command.timeout)) {
                        Ok(call) => {
                            let sent = client.send_message(call, &command.request).and_then(|()| client.close_send(call));
                            match sent {
                                Ok(()) => {
                                    waiting.insert(call, (command.reply, None));
                                }
                                Err(status) => {
                                    client.cancel(call);
                                    let _ = command.reply.send(Err(status));
                                }
                            }
                        }
                        Err(status) => {
                            let _ = command.reply.send(Err(status));
                        }
                    }
                }
                None => {
                    client.close();
                }
            },
        }
    }
}
