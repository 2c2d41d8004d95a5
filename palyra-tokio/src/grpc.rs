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
    let mut buf = vec![0u8; 64 * 1024];
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
