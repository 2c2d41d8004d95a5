//! Serves gRPC over HTTP/2, cleartext (h2c) or TLS: one task per TCP connection, each running a
//! [`StreamMachine`].

use async_io::{Async, Timer};
use event_listener::EventListener;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
pub use palyra_gateway::grpc::GrpcListener;
use palyra_gateway::notify::Notifier;
use palyra_gateway::WRITE_STALL;
use palyra_proto::transport::{Acceptor, StreamMachine};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read per call: one maximum-size HTTP/2 frame (16 KiB); idle connections stay small.
const READ_BUFFER: usize = 16 * 1024;

/// How long open calls may run after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A running TCP listener (gRPC, HTTP/1.1, ...): one task per connection.
pub struct GrpcHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    shutdown: async_channel::Sender<()>,
    task: smol::Task<()>,
}

impl GrpcHandle {
    /// Binds `addr` and serves gRPC as `listener` says.
    pub fn start(addr: SocketAddr, listener: GrpcListener) -> io::Result<Self> {
        let (acceptor, notifier) = listener.into_parts();
        Self::serve(addr, acceptor, notifier)
    }

    /// Binds `addr` and runs the machine `acceptor` builds on every accepted connection,
    /// waking connections when `notifier` fires.
    pub fn serve(
        addr: SocketAddr,
        acceptor: Arc<dyn Acceptor>,
        notifier: Option<Arc<Notifier>>,
    ) -> io::Result<Self> {
        let socket = Async::<TcpListener>::bind(addr)?;
        let local_addr = socket.get_ref().local_addr()?;
        let (shutdown, signal) = async_channel::bounded(1);
        let task = smol::spawn(accept_loop(socket, acceptor, notifier, signal));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting, asks every connection to finish (GOAWAY, close) and waits (bounded).
    pub async fn shutdown(self) {
        self.shutdown.close();
        let task = self.task;
        future::or(task, async {
            Timer::after(SHUTDOWN_GRACE + Duration::from_secs(1)).await;
        })
        .await;
    }
}

async fn accept_loop(
    socket: Async<TcpListener>,
    acceptor: Arc<dyn Acceptor>,
    notifier: Option<Arc<Notifier>>,
    signal: async_channel::Receiver<()>,
) {
    let mut connections = Vec::new();
    loop {
        let accept = async { Some(socket.accept().await) };
        let stop = async {
            let _ = signal.recv().await;
            None
        };
        match future::or(accept, stop).await {
            Some(Ok((stream, peer))) => {
                let _ = stream.get_ref().set_nodelay(true);
                connections.retain(|t: &smol::Task<()>| !t.is_finished());
                match acceptor.accept(Instant::now(), peer) {
                    Ok(conn) => connections.push(smol::spawn(serve_connection(
                        stream,
                        peer,
                        conn,
                        notifier.clone(),
                        signal.clone(),
                    ))),
                    Err(e) => tracing::warn!(error = %e, "connection setup failed"),
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "accept failed"),
            None => break,
        }
    }
    let all = async {
        for task in connections {
            task.await;
        }
    };
    future::or(all, async {
        Timer::after(SHUTDOWN_GRACE).await;
    })
    .await;
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Notified,
    Stop,
}

async fn serve_connection<M: StreamMachine>(
    mut stream: Async<TcpStream>,
    peer: SocketAddr,
    mut conn: M,
    notifier: Option<Arc<Notifier>>,
    signal: async_channel::Receiver<()>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut stopping = false;
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
            let stalled = async {
                Timer::after(WRITE_STALL).await;
                Err(io::ErrorKind::TimedOut.into())
            };
            if future::or(stream.write_all(&bytes), stalled).await.is_err() {
                tracing::debug!(%peer, "write failed or stalled; dropping the connection");
                return;
            }
        }
        if conn.is_closed() {
            if let Some(reason) = conn.failure() {
                tracing::debug!(%peer, %reason, "connection failed");
            }
            let _ = stream.close().await;
            return;
        }
        let wake = conn.poll_timeout();
        let reading = conn.wants_input();
        let read = async {
            if !reading {
                future::pending::<()>().await;
            }
            Wake::Read(stream.read(&mut buf).await)
        };
        let timer = async {
            match wake {
                Some(deadline) => {
                    Timer::at(deadline).await;
                }
                None => future::pending::<()>().await,
            }
            Wake::Timer
        };
        let notified = async {
            notified(listener).await;
            Wake::Notified
        };
        let stop = async {
            if stopping {
                future::pending::<()>().await;
            }
            let _ = signal.recv().await;
            Wake::Stop
        };
        match future::or(read, future::or(timer, future::or(notified, stop))).await {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => {
                conn.handle_eof();
                while let Some(bytes) = conn.poll_transmit() {
                    let _ = stream.write_all(&bytes).await;
                }
                tracing::debug!(%peer, "gRPC connection closed by peer");
                return;
            }
            Wake::Read(Ok(n)) => conn.handle_input(Instant::now(), &buf[..n]),
            Wake::Timer => conn.handle_timeout(Instant::now()),
            Wake::Notified => {}
            Wake::Stop => {
                stopping = true;
                conn.go_away();
            }
        }
    }
}

async fn notified(listener: Option<EventListener>) {
    match listener {
        Some(listener) => listener.await,
        None => future::pending().await,
    }
}
